"""Class-balanced loss (Cui et al.): weight each class by the inverse of its effective number of samples.

The effective number of n samples is E_n = (1 - beta^n) / (1 - beta): it grows like n for few samples and
saturates at 1/(1-beta), modelling that new images of a large class add little new information. Class c
gets w_c = 1/E_{n_c} = (1-beta)/(1-beta^{n_c}), normalized to sum to C; beta=0 gives uniform weights and
beta -> 1 gives inverse frequency. The weight w_y of a sample's class multiplies one of three losses:
softmax CE, one-vs-all sigmoid CE, or sigmoid focal loss (the default; best on CIFAR-10 in the paper).

Paper:     Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019,
           Eq. 2-7, Table 2: CIFAR-10-LT R=100 best is CB focal, beta=0.9999, gamma=1: 25.43% error, i.e.
           74.57% top-1; CIFAR-100-LT R=100 best is CB focal, beta=0.9, gamma=1: 60.40% error. The report's
           paper column for cb_focal is LDAM Table 2's CB Focal row: 25.43 / 63.98% error, Cui's focal cells at
           beta 0.9999 (CIFAR-10-LT) and 0.999 (CIFAR-100-LT, Cui Fig. 10). So on CIFAR-100-LT the default
           beta 0.9999 (run_all.sh's) matches neither that cell nor Cui's best: add --beta 0.999 --name
           cb_focal_beta0.999 to compare like with like.
Code:      richardaecn/class-balanced-loss @ 1d78572 (TensorFlow 1): src/cifar_main.py weights (L425-430),
           _tower_fn losses and weight decay (L323-356), focal_loss (L226-266); src/model_base.py
           _fully_connected (L188-197, the bias init).
vs ERM:    (1) the loss (--loss softmax | sigmoid | focal), each weighted by w_y and, as Cui's TF code, summed
           and divided by the BATCH SIZE N:
             softmax: sum_i w_yi CE_i / N (tf.losses.softmax_cross_entropy's SUM_BY_NONZERO_WEIGHTS), which is
                      NOT PyTorch's F.cross_entropy(weight=w) = sum_i w_yi CE_i / sum_i w_yi (the LDAM code's
                      CB RW / DRW; for those use methods/ldam_drw.py --loss ce or methods/class_weights.py);
             sigmoid: sum_i w_yi sum_c BCE(z_ic, [c == y_i]) / N, one-vs-all over all C outputs;
             focal:   sum_i w_yi sum_c (1 - p_t,ic)^gamma BCE(z_ic, [c == y_i]) / N, p_t the sigmoid
                      probability of the correct binary outcome, the modulator computed in Cui's stable form
                      exp(-gamma * (y z + softplus(-z))) (softplus for log1p(exp(-z)), which overflows).
           (2) sigmoid / focal only, as Cui's code: the last-layer bias starts at -log(C-1) (prior 1/C per
           output, so the initial loss is not dominated by the C-1 negatives) and gets no weight decay.
           (3) --drw-epoch E > 0 uses uniform weights (beta=0) for the first E epochs, as LDAM's DRW; Cui's paper
           weights from the start (the default, 0).
           Accuracy is the argmax of the logits as Cui's code; the ECE uses softmax(logits) like every method
           here, which for a sigmoid-trained model is not the probability it was trained to output.
Variants:  results folders "cb_softmax", "cb_sigmoid", "cb_focal" (--loss), with "_drw" appended when
           --drw-epoch > 0, e.g. "cb_focal_drw".
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180 (Cui's cifar_im_trainval*.sh uses the
           same multipliers 1, 0.01, 0.0001); final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    cb_softmax 70.35 (n=1); cb_focal 69.54 (n=1) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data),
           final epoch, one seed so far (no std yet); NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md).
Run:       python methods/class_balanced.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
           (CIFAR-100-LT: add --beta 0.999 --name cb_focal_beta0.999 to match the report's paper column, or
           --beta 0.9 --name cb_focal_beta0.9 for Cui's best cell; each in a folder of its own)
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]  # common.py: beside this file (a copy) first, else one folder up
import common  # noqa: E402

LOSSES = ("softmax", "sigmoid", "focal")


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the class-balanced loss arguments, Cui et al.'s CIFAR-10 best as defaults.
    m = parser.add_argument_group("class-balanced loss")
    m.add_argument("--beta", type=float, default=0.9999,
                   help="beta in [0, 1) of the effective number (1-beta^n)/(1-beta); 0 = uniform weights. "
                        "0.9999: Cui Table 2, best on CIFAR-10 ('unanimously'); CIFAR-100-LT R=100 best: 0.9")
    m.add_argument("--loss", default="focal",
                   help="softmax | sigmoid | focal (sigmoid focal). focal: Cui Table 2, best on CIFAR-10/100-LT R=100")
    m.add_argument("--gamma", type=float, default=1.0,
                   help="focusing parameter of --loss focal, >= 0. 1.0: Cui Table 2 (grid 0.5, 1, 2)")
    m.add_argument("--drw-epoch", type=int, default=0,
                   help="0-based epoch from which the class-balanced weights are on (before it: uniform). "
                        "0 = from the start (Cui et al.); 160 = deferred, as LDAM's DRW")
    args = parser.parse_args(argv)
    common.check(0 <= args.beta < 1, f"--beta must be in [0, 1), got {args.beta:g}")
    common.check(args.loss in LOSSES, f"unknown --loss '{args.loss}': use {', '.join(LOSSES)}")
    common.check(math.isfinite(args.gamma) and args.gamma >= 0, f"--gamma must be >= 0, got {args.gamma:g}")
    common.check(args.drw_epoch >= 0, f"--drw-epoch must be >= 0, got {args.drw_epoch}")
    common.note_unused(parser, args, args.loss != "focal", ["gamma"], f"with --loss {args.loss}")
    return common.finish_args(args, method=f"cb_{args.loss}" + ("_drw" if args.drw_epoch > 0 else ""))


# METHOD: the weights, Cui Eq. 2 and cifar_main.py L425-430: (1-beta)/(1-beta^n_c), normalized to sum to C.
def class_balanced_weights(counts, beta):
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - beta ** n)
    return (w / w.sum() * len(w)).float()


# METHOD: the three losses. weights: one per class; each is a sum over the batch divided by N (Cui's TF code).
# Logits are cast to fp32 so the loss never runs in bf16.
def cb_softmax_loss(logits, labels, weights):
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    return (weights.to(ce.device)[labels] * ce).sum() / len(labels)


def cb_sigmoid_loss(logits, labels, weights):
    return cb_focal_loss(logits, labels, weights, gamma=0.0)


def cb_focal_loss(logits, labels, weights, gamma):
    z = logits.float()
    y = F.one_hot(labels, z.shape[1]).to(z.dtype)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")   # -log p_t per output
    modulator = torch.exp(-gamma * (y * z + F.softplus(-z)))            # (1 - p_t)^gamma, Cui's stable form
    per_sample = (modulator * bce).sum(1)
    return (weights.to(z.device)[labels] * per_sample).sum() / len(labels)


def cb_loss(kind, logits, labels, weights, gamma):
    if kind == "softmax":
        return cb_softmax_loss(logits, labels, weights)
    if kind == "sigmoid":
        return cb_sigmoid_loss(logits, labels, weights)
    return cb_focal_loss(logits, labels, weights, gamma)


# METHOD: Cui's model_base.py for sigmoid / focal: bias -log(C-1), i.e. every output starts at p = 1/C. Cui also
# keeps weight decay off this bias (cifar_main.py L348-351): the loop below gives it a parameter group of its own.
def init_prior_bias(linear, num_classes):
    with torch.no_grad():
        linear.bias.fill_(-math.log(num_classes - 1))


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    params = model.parameters()
    if args.loss in ("sigmoid", "focal"):  # METHOD: prior bias, and no weight decay on it (cifar_main.py L348-351)
        common.check(data.num_classes >= 2, "the sigmoid / focal loss needs at least 2 classes")
        init_prior_bias(model.linear, data.num_classes)
        params = [{"params": [p for n, p in model.named_parameters() if n != "linear.bias"]},
                  {"params": [model.linear.bias], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    weights = class_balanced_weights(data.train_counts, args.beta).to(args.device)  # METHOD
    uniform = torch.ones_like(weights)
    run.extra["class_weights"] = weights.tolist()

    def train_step(x, y, class_weight):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = cb_loss(args.loss, logits, y, class_weight, args.gamma)  # METHOD
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step = run.fast_step(train_step, model, optimizer)  # train_step itself, or with --fast on CUDA its CUDA graph

    start = run.restore(model, optimizer)  # 0, or with --resume the epoch after the run's last checkpoint
    for epoch in range(start, args.epochs):
        lr = common.set_lr(optimizer, epoch, args)
        model.train()
        class_weight = weights if epoch >= args.drw_epoch else uniform  # METHOD: optionally deferred
        for x, y in data.batches(data.shuffled(run.generator), run.generator):
            loss = step(x, y, class_weight)
            run.log_step(loss)
        run.end_epoch(epoch, lr, model)  # evaluates every --eval-every epochs, prints progress

    run.finish(model)  # final-epoch evaluation -> results/<setting>/cb_<loss>[_drw]/seed<k>.json
