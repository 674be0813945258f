"""PCNSGD: per-class normalized SGD, each step along the sum of the unit-norm per-class gradients.

Each step draws a mini-batch that holds every class, computes each class's gradient g_l (of the summed cross-entropy
of its samples) and steps along sum_l g_l / (||g_l|| + eps), the norm over all parameters jointly: every class pulls
with the same strength, so the majority no longer drowns the minority. The paper proves that this removes the
"minority initial drop" of full-batch GD, and finds that with mini-batches the minority's larger gradient noise
weakens PCNSGD, which oversampling (+O) restores. Variants (--variant, also the results folder; "_gn" added with
--norm group):
  pcnsgd    per-class batch sizes proportional to the class counts, each at least 1 (the official code computes 0
            for such a class and cannot build its loader). Whole-image rounding and that floor make the classes
            pass through their data at different rates: 0.7 to 1.9 passes per epoch on CIFAR-10-LT R=100; on
            CIFAR-100-LT R=100 47 of 100 classes sit on the floor, up to 17 passes, a batch of 169 (the JSON
            records per_class_batch_sizes and per_class_draws_per_epoch);
  pcnsgd_o  equal per-class batch sizes round(B/C), a class that runs out re-shuffled and drawn again (the paper's
            PCNSGD+O; on CIFAR-100 one image per class, a batch of 100);
  sgd_o     the same balanced batches with the plain step sum_l g_l (the paper's SGD+O).
With one minority image per step the mini-batch version can collapse onto the majority: studies/README.md, "PCNSGD
in the same study" (binary 1:99: pcnsgd with 4 or more majority images per step, pcnsgd_o never; ten classes: no seed).

Paper:     Francazi, Baity-Jesi, Lucchi, "A Theoretical Analysis of the Learning Dynamics under Class Imbalance",
           ICML 2023 (PMLR 202:10285-10322, arXiv 2207.00391). It shows learning curves (per-class loss and accuracy
           over time), no CIFAR-LT ResNet-32 accuracy, so there is no number to match.
Code:      EmanueleFrancazi/PCNGD-Algorithms @ 3eb4ef0 (CodeBlocks.py, MainBlock.py, PythonRunManager.sh).
vs ERM:    per-class batches instead of a plain shuffle; C backward passes per step (one per class), the normalized
           direction written into .grad before the ordinary torch.optim.SGD step (momentum and weight decay from the
           shared flags); steps per epoch ceil(N / B) as ERM (the official +O epoch has n_max / (B/C) steps: 4x on
           CIFAR-10-LT R=100). The JSON's extra, per epoch: per_class_train_loss (each class's mean training loss:
           the minority initial drop), direction_norm and plain_grad_norm (the mean norm of the step direction and
           of the plain gradient sum_l g_l of the same batches).
Choices:   --norm batch (default): one joint forward of the whole batch (BatchNorm statistics as ERM), per-class
           losses L_l = sum_{y_i=l} CE_i / B (their sum is the batch-mean CE; eps on the scale of the official sums),
           one backward per class through the retained graph, so g_l includes the coupling through the batch
           statistics (C times ERM's backward). --class-grads batched computes the C of them in one batched backward
           (the same g_l up to rounding on the CPU; on CUDA it failed at 95e099f, results/logs/gpu-checks.log, and
           the fix has not run on a GPU yet); run_all.sh's PCNSGD rows take it only where studies/benchmark.py
           --class-grads timed it faster on the GPU and its GPU tests passed. --norm group: GroupNorm(channels/4,
           channels) as the official code (GF=4), no cross-sample coupling, each class forwarded alone (exactly the
           same g_l; eager only, --fast does not capture it).
Protocol:  the shared one (momentum 0.9, wd 2e-4, 200 epochs, warm-up, decays at 160/180), so its number compares
           with the other rows'. The paper's regime is --momentum 0 --weight-decay 0 --norm group (MainBlock.py);
           the official runs also use other nets and batch sizes, no augmentation, float64, an lr divided by 10 at
           0-based epochs 7, 79, 799 without warm-up, and sum-reduced CE (which matters here only through eps; sgd_o
           takes the batch mean, as the official plain SGD divides by the batch size).
           The lr is kept as given. The direction's norm lies between 0 and C (about sqrt(C) for orthogonal g_l)
           and does not shrink as the loss falls, while ERM's gradient falls by orders of magnitude: with momentum
           0.9 a late step can be tens of times an ERM step until the decay at epoch 160. For the conv weights,
           each followed by BatchNorm (scale-invariant), that mostly grows their norm until weight decay balances
           it; the longer step acts mainly on the linear head and the BN affine parameters. No lr is published for
           this regime: the table uses the shared 0.1, and direction_norm / plain_grad_norm show the ratio a run had.
           Precision: bf16 autocast on CUDA (the loss and the final evaluation in fp32); --fp32 trains in fp32
           throughout (the official code: float64).
Result:    not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run).
Run:       python methods/pcn_sgd.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100 --variant pcnsgd
"""
import contextlib
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]  # common.py: beside this file (a copy) first, else one folder up
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the variant, the normalization layers and the eps of g / (||g|| + eps).
    m = parser.add_argument_group("PCNSGD (Francazi et al. 2023)")
    m.add_argument("--variant", default="pcnsgd",
                   help="pcnsgd (per-class batches proportional to counts) | pcnsgd_o (balanced per-class batches, "
                        "minority re-drawn = oversampling) | sgd_o (balanced batches, plain update); README of "
                        "EmanueleFrancazi/PCNGD-Algorithms")
    m.add_argument("--norm", default="batch",
                   help="batch: ResNet-32's BatchNorm, one joint forward, per-class backward | group: every "
                        "BatchNorm2d -> GroupNorm as the official code (results folder gets '_gn')")
    m.add_argument("--gn-group-size", type=int, default=4,
                   help="channels per GroupNorm group with --norm group (official GF=4, PythonRunManager.sh)")
    m.add_argument("--eps", type=float, default=1e-6,
                   help="g_l / (||g_l|| + eps), g_l the gradient of class l's summed CE (official CodeBlocks.py: "
                        "1e-6)")
    m.add_argument("--class-grads", default="loop",
                   help="how the C per-class gradients are computed with --norm batch (the same numbers): loop (one "
                        "backward per class) | batched (one backward of the C class masks at once, vmap inside "
                        "autograd: fewer, larger kernels)")
    args = parser.parse_args(argv)
    common.check(args.variant in VARIANTS, f"unknown --variant '{args.variant}': use {', '.join(VARIANTS)}")
    common.check(args.norm in ("batch", "group"), f"unknown --norm '{args.norm}': use batch or group")
    common.check(args.class_grads in ("loop", "batched"),
                 f"unknown --class-grads '{args.class_grads}': use loop or batched")
    common.check(args.gn_group_size >= 1 and 16 % args.gn_group_size == 0,
                 f"--gn-group-size must divide 16 (ResNet-32 has 16/32/64 channels), got {args.gn_group_size}")
    common.check(math.isfinite(args.eps) and args.eps > 0,
                 f"--eps must be > 0 (a zero class gradient would give 0/0), got {args.eps:g}")
    common.check(not (args.class_grads == "batched" and args.norm == "group"),
                 "--class-grads batched needs --norm batch (--norm group forwards each class on its own)")
    common.note_unused(parser, args, args.norm == "batch", ["gn_group_size"], "with --norm batch")
    common.note_unused(parser, args, args.variant == "sgd_o", ["class_grads", "eps"],
                       "with --variant sgd_o, whose plain update needs one joint backward and normalizes nothing")
    if args.fast and args.norm == "group" and args.variant != "sgd_o":
        print("note: --norm group runs one forward per class with data-dependent shapes, which a CUDA graph cannot "
              "replay: this run is eager despite --fast", file=sys.stderr, flush=True)
    name = args.variant + ("_gn" if args.norm == "group" else "")
    return common.finish_args(args, method=name)


# METHOD: batch composition. Every class sits in every batch, with its own batch size.
VARIANTS = ("pcnsgd", "pcnsgd_o", "sgd_o")


def class_batch_sizes(counts, batch_size, variant):
    """pcnsgd: round(B * n_c / N), at least 1 (the official split by the class ratios); pcnsgd_o / sgd_o: round(B / C)
    for every class (the official OversamplingMode 'ON'). The total may differ from B by rounding and the floor.
    (At 3eb4ef0 the official 'ON' mode also keeps int(n_c / b) * b images of every class, CodeBlocks.py l0, nearly
    all of a balanced source's: its +O runs draw from an almost balanced set. Here, as in the paper, the minority
    classes of the long-tailed subset are oversampled.)"""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'")
    if variant == "pcnsgd":
        total = sum(counts)
        return [max(1, round(batch_size * n / total)) for n in counts]
    return [max(1, round(batch_size / len(counts)))] * len(counts)


class ClassStream:
    """The training indices of one class, drawn without replacement in random order; when they run out they are
    re-shuffled and drawing goes on (the official minority loaders re-built when exhausted). take(k, batch) draws
    k = a whole number of batches; a batch that spans two passes gets the images the old pass left over, then
    images of the new pass that are not among them (those wait until the end of the new pass): no image twice in
    one batch while the class has at least `batch` images, and each pass still holds every image once. A pass goes
    on across epochs (the official code re-creates the minority loaders at each epoch, dropping a pass half used)."""

    def __init__(self, indices, generator):
        self.indices, self.generator = indices, generator
        self.buffer = indices[:0]

    def state_dict(self):  # for a checkpoint (run.restore): the draws left of the current pass
        return {"buffer": self.buffer.cpu()}

    def load_state_dict(self, state):
        self.buffer = state["buffer"].to(self.indices.device)

    def take(self, k, batch=None):
        batch = batch or k
        pool = self.buffer
        while len(pool) < k:
            perm = self.indices[torch.randperm(len(self.indices), device=self.indices.device,
                                               generator=self.generator)]
            held = torch.isin(perm, pool[len(pool) - len(pool) % batch:])  # in the batch the new pass starts in
            pool = torch.cat([pool, perm[~held], perm[held]])
        self.buffer = pool[k:]
        return pool[:k]


def epoch_index_matrix(streams, sizes, steps):
    """(steps, sum(sizes)) training indices: row t is batch t, class 0's samples first, then class 1's, ..."""
    return torch.cat([s.take(steps * b, b).view(steps, b) for s, b in zip(streams, sizes)], dim=1)


# METHOD: the per-class gradients and the normalized direction.
def per_sample_ce(logits, labels):
    return F.cross_entropy(logits.float(), labels, reduction="none")


def per_class_grads(model, logits, labels, num_classes, loss_fn=per_sample_ce):
    """g_l = d/dw [sum_{y_i=l} loss_i / B] for every class l, from ONE joint forward (`logits`) and one backward per
    class through the retained graph. A class absent from the batch gets an all-zero gradient, which
    pcn_direction turns into a zero contribution (0 / (0 + eps)); no test of which classes are present, so the
    step never waits for the GPU and can be captured as a CUDA graph (--fast). Returns (grads, per-sample losses)."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = loss_fn(logits, labels)
    grads = []
    for c in range(num_classes):
        class_loss = losses.masked_fill(labels != c, 0).sum() / len(labels)
        grads.append(list(torch.autograd.grad(class_loss, params, retain_graph=c < num_classes - 1, allow_unused=True)))
    return grads, losses.detach()


def per_class_grads_batched(model, logits, labels, num_classes, loss_fn=per_sample_ce):
    """The g_l of per_class_grads from ONE batched backward: row l of the (C, B) matrix of class masks / B is the
    cotangent of class l, and autograd runs all C at once (is_grads_batched=True, i.e. vmap over the backward):
    the same numbers (tests), with about the kernels of one backward, each C times larger, instead of C backwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = loss_fn(logits, labels)
    masks = F.one_hot(labels, num_classes).T.to(losses.dtype) / len(labels)  # (C, B); an absent class: a zero row
    grads = torch.autograd.grad(losses, params, grad_outputs=(masks,), is_grads_batched=True, allow_unused=True)
    return [[None if g is None else g[c] for g in grads] for c in range(num_classes)], losses.detach()


def per_class_grads_split(model, x, labels, num_classes, loss_fn=per_sample_ce, autocast=contextlib.nullcontext):
    """The same g_l from a separate forward of each class's samples: equal to per_class_grads only for a model
    without cross-sample coupling (GroupNorm, no BatchNorm in train mode), at the cost of one ERM step.
    `autocast()`: the context each forward runs in, as in update_direction."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = torch.zeros(len(labels), device=labels.device)
    grads = [None] * num_classes
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx):
            with autocast():
                logits = model(x[idx])
            loss_c = loss_fn(logits, labels[idx])
            grads[c] = list(torch.autograd.grad(loss_c.sum() / len(labels), params, allow_unused=True))
            losses[idx] = loss_c.detach()
    return grads, losses


def pcn_direction(class_grads, eps=1e-6, stats=None):
    """sum_l g_l / (||g_l|| + eps), per parameter; ||.|| over all parameters jointly. A class absent from the batch
    (an all-zero gradient, or None) contributes nothing; a parameter whose gradient is None for every class (not in
    the graph) gets None. Each g_l is laid out as one flat vector of all its parameters: on a GPU a few kernels per
    class, plus a copy of each channels_last gradient, instead of a few kernels per parameter. `stats` (a dict, if
    given) receives the norms of the direction and of the plain sum_l g_l (the SGD gradient of the same batch)."""
    present = [g for g in class_grads if g is not None]
    if not present:
        raise ValueError("pcn_direction: no class has a gradient")
    used = [i for i, t in enumerate(present[0]) if t is not None]  # the same for every class (one graph)
    direction = plain = None
    for g in present:
        if [i for i, t in enumerate(g) if t is not None] != used:
            raise ValueError("pcn_direction: the classes' gradients cover different parameters")
        flat = torch.cat([g[i].reshape(-1) for i in used]).float()
        unit = flat / (torch.linalg.vector_norm(flat) + eps)
        direction = unit if direction is None else direction + unit
        if stats is not None:
            plain = flat if plain is None else plain + flat
    if stats is not None:
        stats.update(direction_norm=torch.linalg.vector_norm(direction), plain_norm=torch.linalg.vector_norm(plain))
    out = [None] * len(present[0])
    for i, piece in zip(used, direction.split([present[0][i].numel() for i in used])):
        out[i] = piece.view(present[0][i].shape)
    return out


def update_direction(model, x, labels, num_classes, normalize=True, split=False, eps=1e-6, batched=False,
                     stats=None, autocast=contextlib.nullcontext):
    """Forward, then write the update direction into each parameter's .grad: sum_l g_l / (||g_l|| + eps)
    (normalize) or the plain sum_l g_l = the gradient of the batch-mean CE (one backward). `split`: per-class
    forwards (GroupNorm models only); `batched`: the g_l from one batched backward. Returns the per-sample losses
    (detached); `stats` (a dict, if given) receives direction_norm and plain_norm as in pcn_direction.
    `autocast()`: the context the forward runs in (the training loop below passes common.autocast: bf16 on CUDA).
    Only the parameters with requires_grad get a .grad: call optimizer.zero_grad(set_to_none=True) first."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not normalize:  # sgd_o: sum_l g_l is the gradient of sum_l L_l = the batch mean, so one backward suffices
        with autocast():
            logits = model(x)
        losses = per_sample_ce(logits, labels)
        grads = torch.autograd.grad(losses.mean(), params, allow_unused=True)
        losses = losses.detach()
        if stats is not None:
            norm = torch.nn.utils.get_total_norm([g for g in grads if g is not None])
            stats.update(direction_norm=norm, plain_norm=norm)
    else:
        if split:
            class_grads, losses = per_class_grads_split(model, x, labels, num_classes, autocast=autocast)
        else:
            with autocast():
                # batched: vmap over cuDNN's channels_last backward is not implemented (torch 2.11): contiguous
                logits = model(x.contiguous() if batched else x)
            class_grads, losses = (per_class_grads_batched if batched else per_class_grads)(model, logits, labels,
                                                                                            num_classes)
        # eps on the official scale: the g_l here are of the class sums / B, the official ones of the sums
        # (CrossEntropyLoss(reduction='sum')), and g / (||g|| + eps / B) = B g / (||B g|| + eps)
        grads = pcn_direction(class_grads, eps / len(labels), stats)
    for p, g in zip(params, grads):  # in the parameter's own layout (channels_last on CUDA): torch.optim's
        # multi-tensor kernels take a parameter list only where every .grad has its parameter's strides
        p.grad = None if g is None else g.to(p.dtype) if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
    return losses


def batchnorm_to_groupnorm(module, group_size=4):
    """Replace every BatchNorm2d by GroupNorm(channels / group_size, channels), in place (official: GF)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            gn = nn.GroupNorm(child.num_features // group_size, child.num_features, eps=child.eps)
            setattr(module, name, gn.to(child.weight.device))
        else:
            batchnorm_to_groupnorm(child, group_size)
    return module


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    C = data.num_classes
    model = common.resnet32(C, args.device)
    if args.norm == "group":  # METHOD: GroupNorm as the official code
        batchnorm_to_groupnorm(model, args.gn_group_size)
    if args.class_grads == "batched":  # (the channels_last weights of CUDA would fail in the batched backward)
        model = model.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    # METHOD: one index stream per class, fixed per-class batch sizes, ERM's number of steps per epoch.
    sizes = class_batch_sizes(data.train_counts, args.batch_size, args.variant)
    if sum(sizes) != args.batch_size:
        print(f"note: the per-class batch sizes sum to {sum(sizes)}, not --batch-size {args.batch_size} (whole images, "
              "every class at least 1; the JSON records per_class_batch_sizes)", file=sys.stderr, flush=True)
    steps = data.steps_per_epoch
    streams = [ClassStream((data.train_y == c).nonzero().squeeze(1), run.generator) for c in range(C)]
    run.extra.update(per_class_batch_sizes=sizes, steps_per_epoch=steps,
                     per_class_draws_per_epoch=[steps * b / n for b, n in zip(sizes, data.train_counts)],
                     per_class_train_loss=[], direction_norm=[], plain_grad_norm=[])
    normalize = args.variant != "sgd_o"
    split = args.norm == "group" and normalize  # per-class forwards; sgd_o needs one joint backward only

    def train_step(x, y):  # one PCNSGD step on a batch; returns the per-sample losses and the two norms
        optimizer.zero_grad(set_to_none=True)
        norms = {}
        losses = update_direction(model, x, y, C, normalize=normalize, split=split, eps=args.eps,  # METHOD
                                  batched=args.class_grads == "batched", stats=norms,
                                  autocast=lambda: common.autocast(args.device))
        optimizer.step()  # momentum and weight decay act on the normalized direction
        return losses, torch.stack([norms["direction_norm"], norms["plain_norm"]])

    # train_step itself, or with --fast on CUDA its CUDA graph (not --norm group: per-class shapes vary)
    step = train_step if split else run.fast_step(train_step, model, optimizer)

    start = run.restore(model, optimizer, *streams)  # METHOD: a checkpoint holds the class streams too
    for epoch in range(start, args.epochs):
        lr = common.set_lr(optimizer, epoch, args)
        model.train()
        loss_sum = torch.zeros(C, device=args.device)
        seen = torch.zeros(C, device=args.device)
        norm_sum = torch.zeros(2, device=args.device)
        for idx in epoch_index_matrix(streams, sizes, steps):
            x, y = data.batch(idx, run.generator)
            losses, norms = step(x, y)
            run.log_step(losses.mean())
            onehot = F.one_hot(y, C).float()  # a matmul, not bincount(weights=): deterministic on CUDA
            loss_sum += losses.float() @ onehot
            seen += onehot.sum(0)
            norm_sum += norms
        run.extra["per_class_train_loss"].append(
            [s / n if n else None for s, n in zip(loss_sum.tolist(), seen.tolist())])
        # the epoch's mean ||step direction|| and ||SGD gradient of the same batches||: the normalized direction does
        # not shrink as the loss falls, so their ratio is how much longer a step is than an SGD step at the same lr
        direction_norm, plain_norm = (norm_sum / steps).tolist()
        run.extra["direction_norm"].append(direction_norm)
        run.extra["plain_grad_norm"].append(plain_norm)
        run.end_epoch(epoch, lr, model)  # evaluates every --eval-every epochs, prints progress

    run.finish(model)  # final-epoch evaluation -> results/<setting>/<variant>/seed<k>.json
