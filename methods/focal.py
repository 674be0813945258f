"""Focal loss (softmax form): cross-entropy scaled down on well-classified samples, (1 - p_t)^gamma * CE.

p_t is the softmax probability of the true class. A sample the model already gets right (p_t near 1)
contributes little, so the many easy head-class samples stop dominating the gradient; gamma=0 is plain CE.
Optionally each sample is also weighted by a per-class alpha_{y}: --alpha inverse (1/n_c normalized to sum
to C) or --alpha cb (Cui et al.'s (1-beta)/(1-beta^n_c), normalized to sum to C, with --beta).

Paper:     Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (Eq. 5, there in sigmoid form).
           Cao et al., NeurIPS 2019, Table 2 row Focal (CIFAR-10-LT R=100: 29.62% error, i.e. 70.38% top-1;
           CIFAR-100-LT R=100: 61.59%), gamma=1. That row is Cui et al.'s TensorFlow SIGMOID focal loss
           (Cui Table 2 "Focal (gamma=1.0)"); its exact counterpart here is methods/class_balanced.py
           --loss focal --beta 0 --name sigmoid_focal (uniform weights; --name keeps it out of the cb_focal
           folder). A softmax focal run need not reach 29.62.
Code:      kaidic/LDAM-DRW @ 2536330, losses.py focal_loss / FocalLoss (L7-21): p = exp(-CE), mean((1-p)^gamma
           * CE), with CE = F.cross_entropy(..., reduction='none', weight=w). cifar_train.py L214-215 uses
           gamma=1. That is the softmax focal loss; it is NOT torchvision.ops.sigmoid_focal_loss.
vs ERM:    the loss. With class weights the official code computes p from the WEIGHTED per-sample CE,
           p = exp(-w_y * CE), which is not the true-class probability; here p_t always comes from the
           unweighted CE and alpha_y multiplies afterwards: alpha_y * (1 - p_t)^gamma * CE. The batch is
           averaged over its N samples (a plain mean, as the official code, not / sum of alpha).
           1 - p_t is computed as -expm1(-CE) (exact for p_t near 1) and clamped at 1e-12, so gamma < 1 gives
           no NaN gradient when p_t rounds to 1 (Cui et al.'s code warns of that NaN for gamma < 1).
Variants:  results folders "focal" (--alpha none), "focal_inverse", "focal_cb".
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    focal 65.21 (n=1) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final epoch, one seed so far
           (no std yet); NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md).
Run:       python methods/focal.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]  # common.py: beside this file (a copy) first, else one folder up
import common  # noqa: E402

ALPHAS = ("none", "inverse", "cb")


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the focal-loss arguments.
    m = parser.add_argument_group("focal loss")
    m.add_argument("--gamma", type=float, default=1.0,
                   help="focusing parameter, >= 0 (0 = CE). 1.0: cifar_train.py FocalLoss(gamma=1), the Focal row "
                        "of LDAM Table 2 / Cui Table 2")
    m.add_argument("--alpha", default="none",
                   help="per-class weight alpha_y: none | inverse (1/n_c, normalized to sum to C) | cb ((1-beta)/"
                        "(1-beta^n_c), normalized to sum to C: the weights of LDAM's Reweight; LDAM's weighted "
                        "FocalLoss differs, see the header)")
    m.add_argument("--beta", type=float, default=0.9999,
                   help="beta of --alpha cb, in [0, 1). 0.9999: cifar_train.py Reweight")
    args = parser.parse_args(argv)
    common.check(math.isfinite(args.gamma) and args.gamma >= 0, f"--gamma must be >= 0, got {args.gamma:g}")
    common.check(args.alpha in ALPHAS, f"unknown --alpha '{args.alpha}': use {', '.join(ALPHAS)}")
    common.check(0 <= args.beta < 1, f"--beta must be in [0, 1), got {args.beta:g}")
    common.note_unused(parser, args, args.alpha != "cb", ["beta"], "without --alpha cb")
    return common.finish_args(args, method="focal" if args.alpha == "none" else f"focal_{args.alpha}")


# METHOD: the optional per-class weights (each method file carries its own copy; the tests check they agree).
def inverse_frequency_weights(counts):
    inv = 1.0 / torch.as_tensor(counts, dtype=torch.float64)
    return (inv / inv.sum() * len(inv)).float()


def class_balanced_weights(counts, beta):
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - beta ** n)
    return (w / w.sum() * len(w)).float()


def focal_alpha(kind, counts, beta):
    """alpha_y of --alpha: None (no weights), inverse or cb."""
    if kind == "inverse":
        return inverse_frequency_weights(counts)
    if kind == "cb":
        return class_balanced_weights(counts, beta)
    if kind == "none":
        return None
    raise ValueError(f"unknown alpha '{kind}': use none, inverse or cb")


# METHOD: the loss, mean_i alpha_{y_i} (1 - p_t,i)^gamma CE_i with p_t = exp(-CE) from the UNWEIGHTED CE.
# Logits are cast to fp32 so the loss never runs in bf16.
def focal_loss(logits, labels, gamma, alpha=None):
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    one_minus_pt = (-torch.expm1(-ce)).clamp(min=1e-12)
    loss = one_minus_pt.pow(gamma) * ce
    if alpha is not None:
        loss = alpha.to(loss.device)[labels] * loss
    return loss.mean()


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    alpha = focal_alpha(args.alpha, data.train_counts, args.beta)  # METHOD
    if alpha is not None:
        alpha = alpha.to(args.device)
        run.extra["alpha"] = alpha.tolist()

    def train_step(x, y):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = focal_loss(logits, y, args.gamma, alpha)  # METHOD
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step = run.fast_step(train_step, model, optimizer)  # train_step itself, or with --fast on CUDA its CUDA graph

    start = run.restore(model, optimizer)  # 0, or with --resume the epoch after the run's last checkpoint
    for epoch in range(start, args.epochs):
        lr = common.set_lr(optimizer, epoch, args)
        model.train()
        for x, y in data.batches(data.shuffled(run.generator), run.generator):
            loss = step(x, y)
            run.log_step(loss)
        run.end_epoch(epoch, lr, model)  # evaluates every --eval-every epochs, prints progress

    run.finish(model)  # final-epoch evaluation -> results/<setting>/focal[_inverse|_cb]/seed<k>.json
