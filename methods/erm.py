"""ERM: empirical risk minimization, plain cross-entropy on the long-tailed training set.

The baseline of every table in this field. Each sample counts once; nothing corrects for the imbalance,
so the head classes dominate the gradient and the tail classes are under-predicted.

Paper:     Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
           Table 2, row ERM (CIFAR-10-LT R=100: 29.64% error, i.e. 70.36% top-1, best test epoch).
Code:      kaidic/LDAM-DRW @ 2536330, cifar_train.py --loss_type CE --train_rule None.
vs ERM:    this is the template: every other file in methods/ is a copy of it with its method added,
           so `diff methods/erm.py methods/<name>.py` shows the method and little else.
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    erm 66.37 (n=1) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final epoch, one seed so far (no
           std yet); NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md).
Run:       python methods/erm.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
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
    # METHOD: ERM has no arguments of its own.
    args = parser.parse_args(argv)
    return common.finish_args(args, method="erm")


# METHOD: the loss. Logits are cast to fp32 so the loss never runs in bf16.
def erm_loss(logits, labels):
    return F.cross_entropy(logits.float(), labels)


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)

    def train_step(x, y):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = erm_loss(logits, y)
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

    run.finish(model)  # final-epoch evaluation -> results/<setting>/erm/seed<k>.json
