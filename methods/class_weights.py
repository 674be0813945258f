"""Class weights: cross-entropy weighted by inverse class frequency (RW), optionally deferred (DRW).

Class c gets the weight w_c = (1/n_c) / sum_k (1/n_k) * C, i.e. inverse frequency normalized to sum to C (class
counts 99 : 1 give the weights 0.02 / 1.98). The loss is PyTorch's weighted cross-entropy, which divides by the
batch's weight sum: loss = sum_i w_{y_i} l_i / sum_i w_{y_i}, so a batch of only head images still has a loss of the
usual size, and scaling all weights by a constant changes nothing. The weights therefore act only within batches
that mix classes, and the balance they buy depends on the batch size: a class's expected share of the loss weight is
below its 1/C when its images are few per batch, far below in a binary 1:99 setting at batch 16 (README,
"Oversampling or class weights in mini-batch SGD?", measures it against oversampling). With --drw-epoch E the
weights are off (plain CE) for the first E epochs: DRW, deferred re-weighting, is --drw-epoch 160.

Paper:     Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019:
           Sec. 4 "RW" (inverse class size, re-normalized so the weights average 1 in the mini-batch), Alg. 1
           (the same division by sum of the batch's weights), Table 2 row CB RW (CIFAR-10-LT R=100: 27.63% error,
           i.e. 72.37% top-1; CIFAR-100-LT R=100: 66.01%) and Table 5 ERM-DRW (25.14%, i.e. 74.86%; CIFAR-100:
           59.34%), best test epoch.
Code:      kaidic/LDAM-DRW @ 2536330, cifar_train.py --train_rule Reweight / DRW (L192-206, L211):
           nn.CrossEntropyLoss(weight=w), w_c = (1-beta)/(1-beta^n_c) with beta=0.9999, normalized to sum to C;
           DRW switches on at epoch // 160.
vs ERM:    the loss takes weight=w (from --drw-epoch on). The weights are exactly 1/n, as the paper text says,
           not the official code's beta=0.9999 weights (issue #3: the author calls 0.9999 "already very close
           to inverse of frequency"; the head weight differs by ~25% on CIFAR-10-LT R=100). The official
           CB RW exactly (its weights and PyTorch's division by the weight sum): methods/ldam_drw.py --loss ce
           --drw-epoch 0 --name cb_rw; ERM-DRW: methods/ldam_drw.py --loss ce. (methods/class_balanced.py --loss
           softmax has the same weights but divides by the batch size, as Cui's TF code: another training.)
           The switch compares epoch >= --drw-epoch, so any schedule length works (the official
           epoch // 160 indexes a 2-element list and fails beyond epoch 319).
Variants:  results folders "class_weights" (--drw-epoch 0, weights from the start) and "class_weights_drw"
           (--drw-epoch > 0).
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    class_weights 69.80 (n=1) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final epoch, one seed
           so far (no std yet); NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md).
Run:       python methods/class_weights.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
           python methods/class_weights.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100 --drw-epoch 160
"""
import os
import sys

import torch
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]  # common.py: beside this file (a copy) first, else one folder up
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the re-weighting schedule.
    m = parser.add_argument_group("class weights")
    m.add_argument("--drw-epoch", type=int, default=0,
                   help="0-based epoch from which the class weights are on (before it: plain CE). 0 = re-weight "
                        "throughout (RW); 160 = DRW, as cifar_train.py epoch // 160 (the first lr drop)")
    args = parser.parse_args(argv)
    common.check(args.drw_epoch >= 0, f"--drw-epoch must be >= 0, got {args.drw_epoch}")
    return common.finish_args(args, method="class_weights_drw" if args.drw_epoch > 0 else "class_weights")


# METHOD: the weights. 1/n_c normalized to sum to C (the normalization of Cui et al. and the official code;
# F.cross_entropy's division by the batch's weight sum makes it irrelevant to the loss, but not to readers).
def inverse_frequency_weights(counts):
    inv = 1.0 / torch.as_tensor(counts, dtype=torch.float64)
    return (inv / inv.sum() * len(inv)).float()


# METHOD: the loss. weight=None is plain CE; otherwise PyTorch's weighted mean, sum_i w_yi l_i / sum_i w_yi
# (not / batch size). Logits are cast to fp32 so the loss never runs in bf16.
def weighted_cross_entropy(logits, labels, weight=None):
    return F.cross_entropy(logits.float(), labels, weight=None if weight is None else weight.to(logits.device))


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    weights = inverse_frequency_weights(data.train_counts).to(args.device)  # METHOD
    run.extra["class_weights"] = weights.tolist()

    def train_step(x, y, class_weight):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = weighted_cross_entropy(logits, y, class_weight)  # METHOD
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step = run.fast_step(train_step, model, optimizer)  # train_step itself, or with --fast on CUDA its CUDA graph

    start = run.restore(model, optimizer)  # 0, or with --resume the epoch after the run's last checkpoint
    for epoch in range(start, args.epochs):
        lr = common.set_lr(optimizer, epoch, args)
        model.train()
        class_weight = weights if epoch >= args.drw_epoch else None  # METHOD: (deferred) re-weighting
        for x, y in data.batches(data.shuffled(run.generator), run.generator):
            loss = step(x, y, class_weight)
            run.log_step(loss)
        run.end_epoch(epoch, lr, model)  # evaluates every --eval-every epochs, prints progress

    run.finish(model)  # final-epoch evaluation -> results/<setting>/class_weights[_drw]/seed<k>.json
