"""SAM on CE-DRW or LDAM-DRW: sharpness-aware minimization for long-tailed data.

Each step first climbs towards the worst point of a ball of radius rho around the weights, to its first-order
estimate w + e with e = rho * g / ||g|| (g the gradient of the re-weighted loss, the norm over all parameters
jointly), takes the gradient there, and then makes the ordinary SGD step (momentum, weight decay) at w with that
gradient. Rangwani et al. find that the tail classes sit at saddle points, and that SAM with a large rho escapes
them when it is combined with deferred re-weighting (DRW).

Paper:     Rangwani, Aithal, Mishra, Babu, "Escaping Saddle Points for Effective Generalization on Class-Imbalanced
           Data", NeurIPS 2022. CIFAR-10-LT R=100 top-1: CE+DRW+SAM 80.6, LDAM+DRW+SAM 81.9 (CIFAR-100-LT: 44.6,
           45.4; repo README, best test epoch). Its Table 1's CE+SAM (73.1 / 39.6) is not verified here.
Code:      val-iisc/Saddle-LongTail @ 48328fb, cifar_train_sam.py + sam.py (davda54's SAM, adaptive=False).
vs ERM:    two forward/backward passes per step (both count in the wall time); the base loss is CE with DRW class
           weights (--base ce_drw), LDAM with DRW on a NormedLinear head (--base ldam_drw), or plain CE (--base
           ce, the paper's CE+SAM baseline). rho is constant over all epochs from epoch 0 (`--rho_schedule none`):
           0.5 for ce_drw, 0.8 for ldam_drw and 0.1 for ce on CIFAR-10-LT; 0.8, 0.8 and 0.2 on CIFAR-100-LT (run.sh,
           which gives them for R=100 only; used here for every ratio and for step imbalance). Results folders:
           sam_ce_drw, sam_ldam_drw, sam_ce. The logged training loss is the one at w
           (the official code logs the second pass's, at w + e).
BatchNorm: as the official code (no disable_running_stats), both forward passes update the BN running statistics,
           so the statistics used at test time average the weights w and the perturbed w + e. --bn-second-pass
           frozen leaves them to the first pass only (the effect of davda54's recommended `disable_running_stats`,
           which zeroes the BN momentum; here the second forward runs with track_running_stats off, so
           num_batches_tracked counts one pass per step), a deviation from the published runs.
Copies:    the DRW weights (CB weights, beta 0.9999, from --drw-epoch 160) and the LDAM pieces (NormedLinear,
           margins n^-1/4 scaled to max 0.5, s 30) are small copies of kaidic/LDAM-DRW @ 2536330 (losses.py,
           cifar_train.py, models/resnet_cifar.py) kept in this file: method files never import each other.
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run).
Run:       python methods/sam.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100 --base ldam_drw
"""
import contextlib
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

BASES = ("ce_drw", "ldam_drw", "ce")


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the base loss, the SAM radius, and the DRW / LDAM numbers of kaidic/LDAM-DRW.
    m = parser.add_argument_group("SAM (Rangwani et al. 2022) on CE-DRW / LDAM-DRW")
    m.add_argument("--base", default="ldam_drw",
                   help="ce_drw | ldam_drw | ce (no DRW: the paper's CE+SAM) (results folder sam_<base>)")
    m.add_argument("--rho", type=float, default=None,
                   help="SAM radius, constant from epoch 0; None: Saddle-LongTail run.sh's value, given for LT R=100 "
                        "only and used here for every ratio: 0.5 for ce_drw, 0.8 for ldam_drw and 0.1 for ce with 10 "
                        "classes; 0.8, 0.8 and 0.2 with 100")
    m.add_argument("--bn-second-pass", default="update",
                   help="update | frozen: whether the perturbed (second) forward also updates the BatchNorm running "
                        "statistics. update: the official cifar_train_sam.py; frozen: the effect of davda54's "
                        "disable_running_stats")
    m.add_argument("--beta", type=float, default=0.9999, help="DRW class-balanced weights (LDAM-DRW cifar_train.py)")
    m.add_argument("--drw-epoch", type=int, default=160,
                   help="0-based epoch from which DRW weights apply (LDAM-DRW); --base ce has none")
    m.add_argument("--max-m", type=float, default=0.5, help="largest LDAM margin, ldam_drw only (LDAM-DRW)")
    m.add_argument("--scale", type=float, default=30.0,
                   help="LDAM logit scale s, ldam_drw only (LDAM-DRW losses.py; --scale as in ldam_drw.py)")
    args = parser.parse_args(argv)
    common.check(args.base in BASES, f"unknown --base '{args.base}': use {', '.join(BASES[:-1])} or {BASES[-1]}")
    common.check(args.bn_second_pass in ("update", "frozen"),
                 f"unknown --bn-second-pass '{args.bn_second_pass}': use update or frozen")
    if args.rho is not None:
        common.check(math.isfinite(args.rho) and args.rho >= 0, f"--rho must be >= 0 (0 = the SGD step; with "
                 f"--bn-second-pass update the BN statistics still see two passes), got {args.rho:g}")
    common.check(0 <= args.beta < 1, f"--beta must be in [0, 1), got {args.beta:g}")
    common.check(args.drw_epoch >= 0, f"--drw-epoch must be >= 0, got {args.drw_epoch}")
    common.check(math.isfinite(args.max_m) and args.max_m >= 0, f"--max-m must be >= 0, got {args.max_m:g}")
    common.check(math.isfinite(args.scale) and args.scale > 0, f"--scale must be positive, got {args.scale:g}")
    common.note_unused(parser, args, args.base != "ldam_drw", ["max_m", "scale"], f"with --base {args.base}")
    common.note_unused(parser, args, args.base == "ce", ["beta", "drw_epoch"], "with --base ce")
    if args.base == "ce":
        args.drw_epoch = None  # no switch: the report then marks no DRW epoch on the plots
    args = common.finish_args(args, method=f"sam_{args.base}")
    if args.rho is None:  # METHOD: run.sh's rho of the base and the dataset
        classes = common.class_count(args)
        c100 = (classes or 0) >= 100  # CIFAR-100's rho, else CIFAR-10's
        args.rho = {"ce_drw": 0.8 if c100 else 0.5, "ldam_drw": 0.8, "ce": 0.2 if c100 else 0.1}[args.base]
        if classes not in (10, 100):
            print(f"note: the published rho is for CIFAR-10 and CIFAR-100; with {classes or 'an unknown number of'} "
                  f"classes this run takes {'CIFAR-100' if c100 else 'CIFAR-10'}'s, {args.rho:g} (--rho sets one)",
                  file=sys.stderr, flush=True)
    return args


# METHOD: LDAM-DRW's pieces, copied from methods/ldam_drw.py unchanged (`diff` shows them equal).
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


def ce_loss(logits, labels, weight=None):
    return F.cross_entropy(logits.float(), labels, weight=None if weight is None else weight.to(logits.device))


# METHOD: SAM. With freeze_bn the BatchNorm running statistics are updated by the first forward only.
def disable_bn_running_stats(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m._sam_tracked, m.track_running_stats = m.track_running_stats, False


def enable_bn_running_stats(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and hasattr(m, "_sam_tracked"):
            m.track_running_stats = m._sam_tracked
            del m._sam_tracked


@contextlib.contextmanager
def bn_running_stats_frozen(model):
    """Train-mode BatchNorm still normalizes with the batch statistics, but neither running_mean/var nor
    num_batches_tracked change."""
    disable_bn_running_stats(model)
    try:
        yield
    finally:
        enable_bn_running_stats(model)


def sam_step(model, loss_closure, optimizer, rho, eps=1e-12, freeze_bn=False):
    """One SAM step. `loss_closure()` runs the forward on a fixed batch and returns the loss; unlike a closure
    for torch.optim or the SAM libraries, it must not call backward (sam_step does, once per pass).
    g = grad L(w); e = rho g / (||g|| + eps); the gradient at w + e is then used by optimizer.step() at w.
    freeze_bn: the second forward leaves the BatchNorm running statistics alone. Returns the loss at w (detached)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_closure()
    loss.backward()
    with torch.no_grad():
        live = [p for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in live])  # ||g|| over all parameters (torch >= 2.6)
        scale = rho / (norm + eps)
        saved = [p.detach().clone() for p in live]
        for p in live:
            p.add_(p.grad * scale.to(p.dtype))
    optimizer.zero_grad(set_to_none=True)
    with bn_running_stats_frozen(model) if freeze_bn else contextlib.nullcontext():
        loss_closure().backward()
    with torch.no_grad():
        for p, w in zip(live, saved):
            p.copy_(w)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    if args.base == "ldam_drw":  # METHOD: LDAM's cosine head
        model.linear = NormedLinear(model.linear.in_features, data.num_classes).to(args.device)
        margins = ldam_margins(data.train_counts, args.max_m).to(args.device)
        criterion = lambda logits, y, w: ldam_loss(logits, y, margins, args.scale, w)  # noqa: E731
        evaluated = Scaled(model, args.scale)  # top-1 is the same; the softmax/ECE use the trained scale
    else:
        criterion, evaluated = ce_loss, model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    run.extra["rho"] = args.rho
    if args.drw_epoch is not None:  # METHOD: the weights once DRW is on
        weights_on = drw_weights(data.train_counts, args.beta, epoch=args.drw_epoch, drw_epoch=args.drw_epoch)
        run.extra["drw_weights"] = weights_on.tolist()

    def train_step(x, y, weight):  # one SAM step on a batch
        def closure():
            with common.autocast(args.device):
                logits = model(x)
            return criterion(logits, y, weight)
        return sam_step(model, closure, optimizer, args.rho,  # METHOD: ascent to w + e, SGD step at w
                        freeze_bn=args.bn_second_pass == "frozen")

    step = run.fast_step(train_step, model, optimizer)  # train_step itself, or with --fast on CUDA its CUDA graph

    start = run.restore(model, optimizer)  # 0, or with --resume the epoch after the run's last checkpoint
    for epoch in range(start, args.epochs):
        lr = common.set_lr(optimizer, epoch, args)
        weight = drw_weights(data.train_counts, args.beta, epoch, args.drw_epoch).to(args.device)  # METHOD: DRW
        model.train()
        for x, y in data.batches(data.shuffled(run.generator), run.generator):
            loss = step(x, y, weight)
            run.log_step(loss)
        run.end_epoch(epoch, lr, evaluated)  # evaluates every --eval-every epochs, prints progress

    run.finish(evaluated)  # final-epoch evaluation -> results/<setting>/sam_<base>/seed<k>.json
