"""LDAM-DRW: label-distribution-aware margin loss with deferred re-weighting.

LDAM subtracts a class-dependent margin m_y, proportional to n_y^(-1/4), from the target logit of a cosine
classifier, so the rare classes must be separated by a wider margin: loss = CE(s * (cos - m_y onehot), y). The
margins are scaled so that the rarest class's is --max-m: with equal counts (ratio 1) every class gets --max-m
(0.5). DRW trains with this loss unweighted until epoch 160 (the first lr drop), then weights each class by the
class-balanced weight w_c = (1-beta)/(1-beta^n_c) (normalized to sum to C), so re-weighting only acts once the
features are learned. `--loss ce` keeps the ordinary linear head and plain CE, which gives ERM-DRW.

Paper:     Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
           Table 2 (CIFAR-10-LT R=100: LDAM-DRW 22.97% error, i.e. 77.03% top-1; LDAM 26.65%) and Table 5
           (ERM-DRW 25.14%), best test epoch.
Code:      kaidic/LDAM-DRW @ 2536330, losses.py LDAMLoss (L23-45), models/resnet_cifar.py NormedLinear (L37-46),
           cifar_train.py --loss_type LDAM|CE --train_rule DRW (Reweight L192-198, DRW L199-206).
vs ERM:    (1) the head is NormedLinear (cosine logits, no bias) for --loss ldam; (2) the loss is LDAM with
           max margin --max-m 0.5 and scale --scale 30; (3) from --drw-epoch 160 the loss is weighted by the
           class-balanced weights (--beta 0.9999). --no-drw gives plain LDAM; --loss ce gives ERM-DRW.
           The official code builds the margins as a CUDA-only float tensor; here they live on any device.
           The cosine head runs in fp32 even under bf16 autocast (a bf16 cosine times s=30 is off by up to ~0.06;
           the head's inputs, the features, still come in bf16).
           Evaluation (top-1, ECE) uses softmax(s * cos), the probabilities the loss trains; top-1 is the
           argmax of the cosines as in the official code, only the ECE depends on s.
Variants:  results folders "ldam_drw" (default), "ldam" (--no-drw), "erm_drw" (--loss ce), "ce" (--loss ce
           --no-drw, which is ERM). --drw-epoch 0 weights from the start (the official CB RW with --loss ce) but
           keeps the folder name: add --name, e.g. --name cb_rw.
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    erm_drw 69.51 (n=1) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final epoch, one seed so far
           (no std yet); NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md). Not measured yet: ldam,
           ldam_drw.
Run:       python methods/ldam_drw.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
"""
import argparse
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
    # METHOD: the LDAM and DRW arguments, with the official values as defaults.
    m = parser.add_argument_group("LDAM-DRW")
    m.add_argument("--loss", default="ldam",
                   help="ldam: LDAM on a cosine head (NormedLinear); ce: plain CE on the linear head (with DRW: "
                        "ERM-DRW). cifar_train.py --loss_type LDAM|CE")
    m.add_argument("--max-m", type=float, default=0.5,
                   help="the largest (rarest-class) margin; margins are proportional to n^(-1/4). losses.py "
                        "LDAMLoss max_m=0.5; the author (issue #2): 0.5 for small datasets, 0.3 for iNaturalist")
    m.add_argument("--scale", type=float, default=30.0,
                   help="logit scale s of the cosine logits, CE(s * (cos - m)). LDAMLoss s=30")
    m.add_argument("--beta", type=float, default=0.9999,
                   help="class-balanced weight (1-beta)/(1-beta^n) of DRW. cifar_train.py betas=[0, 0.9999]")
    m.add_argument("--drw-epoch", type=int, default=160,
                   help="0-based epoch from which the class-balanced weights are on. cifar_train.py epoch // 160")
    m.add_argument("--drw", action=argparse.BooleanOptionalAction, default=True,
                   help="deferred re-weighting; --no-drw trains the unweighted loss throughout")
    args = parser.parse_args(argv)
    common.check(args.loss in ("ldam", "ce"), f"unknown --loss '{args.loss}': use ldam or ce")
    common.check(args.max_m >= 0, f"--max-m must be >= 0, got {args.max_m:g}")
    common.check(args.scale > 0, f"--scale must be positive, got {args.scale:g}")
    common.check(0 <= args.beta < 1, f"--beta must be in [0, 1), got {args.beta:g}")
    common.check(args.drw_epoch >= 0, f"--drw-epoch must be >= 0, got {args.drw_epoch}")
    common.note_unused(parser, args, args.loss == "ce", ["max_m", "scale"], "with --loss ce")
    common.note_unused(parser, args, not args.drw, ["beta", "drw_epoch"], "with --no-drw")
    if not args.drw:
        args.drw_epoch = None  # no switch: the report then marks no DRW epoch on the plots
    name = {("ldam", True): "ldam_drw", ("ldam", False): "ldam", ("ce", True): "erm_drw", ("ce", False): "ce"}
    return common.finish_args(args, method=name[args.loss, args.drw])


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


# METHOD: the margins, m_c = max_m * (n_c / n_min)^(-1/4), so the rarest class gets exactly max_m.
def ldam_margins(counts, max_m):
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))
    return torch.tensor(m * (max_m / m.max()), dtype=torch.float32)


# METHOD: the loss. The margin is subtracted from the target cosine only, then everything is scaled by s;
# `weight` is the DRW class weight (PyTorch's weighted mean, sum_i w_yi l_i / sum_i w_yi, as the official code).
def ldam_loss(cosine_logits, labels, margins, scale, weight=None):
    z = cosine_logits.float()
    onehot = F.one_hot(labels, z.shape[1]).to(z.dtype)
    z = z - onehot * margins.to(z.device)[labels].unsqueeze(1)
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
    if args.loss == "ldam":  # METHOD: cosine head (official: use_norm only for LDAM)
        model.linear = NormedLinear(model.linear.in_features, data.num_classes).to(args.device)
    margins = ldam_margins(data.train_counts, args.max_m).to(args.device)  # METHOD
    eval_model = Scaled(model, args.scale) if args.loss == "ldam" else model  # METHOD: softmax(s * cos)
    run.extra["ldam_margins"] = margins.tolist() if args.loss == "ldam" else None  # METHOD
    if args.drw:  # METHOD: the weights once DRW is on
        weights_on = drw_weights(data.train_counts, args.beta, epoch=args.drw_epoch, drw_epoch=args.drw_epoch)
        run.extra["drw_weights"] = weights_on.tolist()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)

    def train_step(x, y, weight):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        if args.loss == "ldam":  # METHOD: LDAM on the cosines, or plain CE; both weighted by DRW
            loss = ldam_loss(logits, y, margins, args.scale, weight)
        else:
            loss = F.cross_entropy(logits.float(), y, weight=weight)
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

    run.finish(eval_model)  # final-epoch evaluation -> results/<setting>/ldam_drw/seed<k>.json
