"""MM-DRW: maximum-margin loss with deferred re-weighting.

The MM loss subtracts from each sample's target logit a margin that depends on how well the sample is
classified: Delta = exp(-|z_y - max_{j!=y} z_j| - delta), with delta+ = beta * delta- for a correctly
classified sample and delta- otherwise, so hard (near-boundary) samples get the largest margin, up to
exp(-delta). The margin is a constant (detached); loss = CE(s * (z - Delta onehot), y) on cosine logits z.
DRW weights the loss by class weights from epoch 160 (Algorithm 1, stage 2, writes n_y^-1; the official
code, as LDAM's, uses the class-balanced weights with beta 0.9999, and so does this file). --ldam gives
MM-LDAM-DRW: as in the official HMM-LDAM, the LDAM margin m_y (n_y^(-1/4), largest 0.5) lowers each
sample's delta- to delta- - m_y (and delta+ to beta * (delta- - m_y)), so tail classes get larger MM
margins; the LDAM margin is not subtracted on top.

Paper:     Kang, Vu, Yoo, "Learning Imbalanced Datasets with Maximum Margin Loss", ICIP 2021 (arXiv 2206.05380),
           slides Table 1 (CIFAR-10-LT R=100: MM-DRW 21.98% error, i.e. 78.02% top-1; MM-LDAM-DRW 21.37%;
           MM 26.56%); Tables 2-3 tune (beta, delta-) per setting (CIFAR-10-LT R=100: 1.5 / 0.6; CIFAR-100-LT
           R=100: 1.3 / 1.2), and --mm-beta / --delta-minus default to the tuned pair of the run's setting (MM_TUNED;
           CIFAR-10-LT R=100's where the slides tuned none). The pairs were tuned for MM-DRW; MM (--no-drw) uses
           them untuned. MM-LDAM-DRW has no published pair: it uses MM-DRW's
           (the official scripts/train_main.sh, too, runs HMM-LDAM with HMM's max_m and gamma). On CIFAR-10-LT
           R=100 that leaves the rarest class delta- - m_y = 0.6 - 0.5 = 0.1: its margin reaches exp(-0.1) = 0.90
           in cosine units (27 logits at s=30), 1.8x LDAM's largest, untuned; a row that falls short of MM-DRW may
           owe it to that.
Code:      ihaeyong/Maximum-Margin-LDAM @ e7ed20d, losses.py HMMLoss (L48-126), cifar_train.py --loss_type
           HMM|HMM-LDAM --train_rule DRW (NormedLinear head, L134; DRW weights L227-234).
vs ERM:    (1) the head is NormedLinear (cosine logits, no bias); (2) the loss is MM with scale --scale;
           (3) from --drw-epoch 160 the loss is weighted by the class-balanced weights (--beta 0.9999).
Deviations from the official code, on purpose (each makes the code match the slides' formulas):
           - each sample's margin uses its OWN label; HMMLoss reads the target column of the first sample's
             label, labels[0], for every row of the batch;
           - max_{j!=y} z_j excludes the target (set to -inf); HMMLoss zeroes the target logit instead, so its
             "max other logit" is never below 0, which changes the gap whenever all other cosines are negative;
           - "correct" means argmax_j z_j = y (the slides); HMMLoss gives a margin of 0 at an exact tie.
Scale:     --scale 30, the official cifar_train.py default (= LDAM's s), in every setting; the slides do not
           give s. The official README's 19 (HMM) and scripts/train_main.sh's 26 (HMM-LDAM) go with that code's
           own max_m 1.29 / gamma 1.528 on CIFAR-100-LT R=100 and its labels[0] loss, so they are not this loss's.
           The cosine head runs in fp32 even under bf16 autocast; evaluation uses softmax(s * cos).
Variants:  results folders "mm_drw" (default), "mm_ldam_drw" (--ldam), "mm" (--no-drw), "mm_ldam" (--ldam --no-drw).
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run).
Run:       python methods/mm_drw.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]  # common.py: beside this file (a copy) first, else one folder up
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the MM and DRW arguments.
    m = parser.add_argument_group("MM-DRW")
    m.add_argument("--mm-beta", type=float, default=None,
                   help="the slides' beta: delta+ = beta * delta- (official --gamma). Default: the slides' best for "
                        "the setting (Table 2 CIFAR-10 / Table 3 CIFAR-100, e.g. 1.5 for CIFAR-10-LT R=100; see "
                        "MM_TUNED)")
    m.add_argument("--delta-minus", type=float, default=None,
                   help="delta- of the wrongly classified samples; the largest margin is exp(-delta-) without --ldam, "
                        "exp(-(delta- - max m_y)) with it (official --max_m). Default: the slides' best for the "
                        "setting (e.g. 0.6 for CIFAR-10-LT R=100)")
    m.add_argument("--scale", type=float, default=30.0,
                   help="logit scale s of the cosine logits (official cifar_train.py default; the slides give none)")
    m.add_argument("--ldam", action="store_true",
                   help="MM-LDAM: per-sample delta- = delta- - m_y with the LDAM margins m (official HMM-LDAM)")
    m.add_argument("--max-m", type=float, default=0.5,
                   help="largest LDAM margin, used with --ldam (HMMLoss hard-codes 0.5)")
    m.add_argument("--beta", type=float, default=0.9999,
                   help="class-balanced weight (1-beta)/(1-beta^n) of DRW, as --beta of the other files. "
                        "cifar_train.py betas=[0, 0.9999]")
    m.add_argument("--drw-epoch", type=int, default=160,
                   help="0-based epoch from which the class-balanced weights are on. cifar_train.py epoch // 160")
    m.add_argument("--drw", action=argparse.BooleanOptionalAction, default=True,
                   help="deferred re-weighting; --no-drw trains the unweighted loss throughout")
    args = parser.parse_args(argv)
    for flag, value in (("--mm-beta", args.mm_beta), ("--delta-minus", args.delta_minus)):
        if value is not None:
            common.check(math.isfinite(value) and value >= 0, f"{flag} must be >= 0, got {value:g}")
    common.check(math.isfinite(args.scale) and args.scale > 0, f"--scale must be positive, got {args.scale:g}")
    common.check(math.isfinite(args.max_m) and args.max_m >= 0, f"--max-m must be >= 0, got {args.max_m:g}")
    common.check(0 <= args.beta < 1, f"--beta must be in [0, 1), got {args.beta:g}")
    common.check(args.drw_epoch >= 0, f"--drw-epoch must be >= 0, got {args.drw_epoch}")
    common.note_unused(parser, args, not args.ldam, ["max_m"], "without --ldam")
    common.note_unused(parser, args, not args.drw, ["beta", "drw_epoch"], "with --no-drw")
    if not args.drw:
        args.drw_epoch = None  # no switch: the report then marks no DRW epoch on the plots
    name = "mm" + ("_ldam" if args.ldam else "") + ("_drw" if args.drw else "")
    args = common.finish_args(args, method=name)
    if args.mm_beta is None or args.delta_minus is None:  # METHOD: the tuned values of the setting
        key = (common.class_count(args), args.imbalance_type, args.imbalance_ratio)
        beta, delta_minus = MM_TUNED.get(key, MM_TUNED[(10, "exp", 100)])
        if key not in MM_TUNED:
            print(f"note: the MM slides tuned no (beta, delta-) for {common.setting_name(args)}: using CIFAR-10-LT "
                  f"R=100's {beta:g} / {delta_minus:g}", file=sys.stderr, flush=True)
        args.mm_beta = beta if args.mm_beta is None else args.mm_beta
        args.delta_minus = delta_minus if args.delta_minus is None else args.delta_minus
    if args.ldam and args.delta_minus < args.max_m:
        print(f"warning: --ldam with --delta-minus {args.delta_minus:g} < --max-m {args.max_m:g}: the tail classes' "
              "delta- - m_y is negative, their margins exceed 1", file=sys.stderr, flush=True)
    return args


# METHOD: the cosine classifier of the official models/resnet_cifar.py, put in place of model.linear.
class NormedLinear(nn.Module):
    """Cosine logits: normalize(x) @ normalize(W, dim=0), W of shape (in, out), no bias. Values in [-1, 1].
    Computed in fp32 even under autocast."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        # Official init: uniform(-1, 1), then every column rescaled to unit norm (renorm to 1e-5, times 1e5).
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(x.float(), dim=1).mm(F.normalize(self.weight.float(), dim=0))


class Scaled(nn.Module):
    """Evaluation view of a cosine model: s * cos, so that the softmax (and the ECE) is the one the loss trains."""

    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.scale * self.model(x).float()


# METHOD: the slides' hyperparameter ablation (Tables 2-3): the (beta, delta-) of the lowest MM-DRW error in each
# column, {(classes, imbalance type, ratio): (beta, delta-)}. The slides give none for MM-LDAM-DRW, which uses the same.
MM_TUNED = {(10, "exp", 100): (1.5, 0.6), (10, "step", 100): (1.3, 0.6), (10, "exp", 10): (1.2, 0.7),
            (10, "step", 10): (1.0, 2.1), (100, "exp", 100): (1.3, 1.2), (100, "step", 100): (1.8, 1.8),
            (100, "exp", 10): (1.4, 1.5), (100, "step", 10): (1.1, 2.4)}


# METHOD: the LDAM margins (for --ldam), m_c proportional to n_c^(-1/4) with the largest equal to max_m.
def ldam_margins(counts, max_m):
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))
    return torch.tensor(m * (max_m / m.max()), dtype=torch.float32)


# METHOD: the per-sample MM margin (slides Eq. 2-3), detached. gap = z_y - max_{j!=y} z_j;
# correct (argmax = y): Delta+ = exp(-max(gap, 0) - beta * delta-); wrong: Delta- = exp(-max(-gap, 0) - delta-).
# Both are exp(-|gap| - delta). delta_minus is a number or a per-sample tensor (--ldam).
@torch.no_grad()
def mm_margins(logits, labels, beta, delta_minus):
    z = logits.detach().float()
    target = z.gather(1, labels[:, None]).squeeze(1)
    others = z.masked_fill(F.one_hot(labels, z.shape[1]).bool(), float("-inf")).amax(1)
    gap = target - others
    correct = (z.argmax(1) == labels).to(z.dtype)
    delta = delta_minus * (1.0 + (beta - 1.0) * correct)   # beta * delta- if correct, else delta- (no host copy)
    return torch.exp(-gap.abs() - delta)


# METHOD: the loss, CE(s * (z - Delta onehot), y), weighted by the DRW class weights (PyTorch's weighted mean,
# as the official code). With `class_margins` (the LDAM margins, --ldam) delta- becomes delta- - m_y per sample.
# beta, delta_minus: MM_TUNED's for the setting (CIFAR-10-LT R=100: 1.5, 0.6); scale: 30 with a cosine head.
def mm_loss(cosine_logits, labels, beta, delta_minus, scale, weight=None, class_margins=None):
    z = cosine_logits.float()
    if class_margins is not None:
        delta_minus = delta_minus - class_margins.to(z.device)[labels]
    delta = mm_margins(z, labels, beta, delta_minus)
    z = z - F.one_hot(labels, z.shape[1]).to(z.dtype) * delta.unsqueeze(1)
    return F.cross_entropy(scale * z, labels, weight=None if weight is None else weight.to(z.device))


# METHOD: deferred re-weighting. Ones before drw_epoch (the official beta=0 gives exactly ones), then the
# class-balanced weights (1-beta)/(1-beta^n_c) normalized to sum to C. drw_epoch None: never switched on.
def drw_weights(counts, beta, epoch, drw_epoch):
    counts = np.asarray(counts, dtype=np.float64)
    if drw_epoch is None or epoch < drw_epoch:
        return torch.ones(len(counts), dtype=torch.float32)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.tensor(w / w.sum() * len(counts), dtype=torch.float32)


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    model.linear = NormedLinear(model.linear.in_features, data.num_classes).to(args.device)  # METHOD: cosine head
    eval_model = Scaled(model, args.scale)  # METHOD: evaluate softmax(s * cos)
    class_margins = ldam_margins(data.train_counts, args.max_m).to(args.device) if args.ldam else None  # METHOD
    run.extra["ldam_margins"] = class_margins.tolist() if args.ldam else None  # METHOD
    if args.drw:  # METHOD: the weights once DRW is on
        weights_on = drw_weights(data.train_counts, args.beta, epoch=args.drw_epoch, drw_epoch=args.drw_epoch)
        run.extra["drw_weights"] = weights_on.tolist()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)

    def train_step(x, y, weight):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = mm_loss(logits, y, args.mm_beta, args.delta_minus, args.scale, weight, class_margins)  # METHOD
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step = run.fast_step(train_step, model, optimizer)  # train_step itself, or with --fast on CUDA its CUDA graph

    start = run.restore(model, optimizer)  # 0, or with --resume the epoch after the run's last checkpoint
    for epoch in range(start, args.epochs):
        lr = common.set_lr(optimizer, epoch, args)
        weight = drw_weights(data.train_counts, args.beta, epoch, args.drw_epoch).to(args.device)  # METHOD
        model.train()
        for x, y in data.batches(data.shuffled(run.generator), run.generator):
            loss = step(x, y, weight)
            run.log_step(loss)
        run.end_epoch(epoch, lr, eval_model)  # evaluates every --eval-every epochs, prints progress

    run.finish(eval_model)  # final-epoch evaluation -> results/<setting>/mm_drw/seed<k>.json
