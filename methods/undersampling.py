"""Undersampling: every epoch, each class is randomly cut down to the size of the smallest class.

At the start of each epoch, n_min = min_c n_c images are drawn without replacement from every class (a new
draw each epoch, so over many epochs the head images all get seen), and the C * n_min indices are shuffled.
Each epoch is therefore class-balanced but small: C * n_min images (500 on CIFAR-10-LT R=100, i.e. 4 steps
of 128 instead of ERM's 97), so the same 200 epochs take about 1/25 of ERM's steps on that setting.

Paper:     random undersampling is the oldest remedy (e.g. Japkowicz 2000; Buda, Maki, Mazurowski, "A systematic
           study of the class imbalance problem in convolutional neural networks", Neural Networks 2018, which
           compares it with oversampling on imbalanced MNIST / CIFAR-10 / ImageNet subsets). No CIFAR-LT ResNet-32
           number under this protocol is published.
Code:      not in kaidic/LDAM-DRW; written here. Each epoch does what imbalanced-learn's RandomUnderSampler
           (default sampling_strategy='auto': every class but the smallest cut to its size) does once.
vs ERM:    only the epoch's index order: undersample_order() instead of data.shuffled(). The class histogram
           of each epoch's order is saved in the JSON (extra.sampled_class_counts): exactly n_min per class.
           common.Data.batches fills a short last batch up with indices drawn without replacement from the
           same order (500 = 3 x 128 + 116 on CIFAR-10-LT R=100: 12 images of the epoch are seen twice), so the
           images actually fed are the recorded order plus at most batch_size-1 repeats.
Variants:  results folder "undersampling".
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
           The schedule is kept per epoch, not per step: raise --epochs (and the decay epochs) to spend
           ERM's number of steps.
Result:    undersampling 53.84 ± 4.75 (n=3) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final epoch,
           mean ± std over the n seeds; NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md).
Run:       python methods/undersampling.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
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
    # METHOD: undersampling has no arguments of its own (the per-class quota is n_min).
    args = parser.parse_args(argv)
    return common.finish_args(args, method="undersampling")


# METHOD: the sampler. n_min indices of every class, without replacement, then one shuffle of the whole epoch.
def undersample_order(labels, counts, generator):
    """One epoch's training indices: min(counts) of each class, drawn anew on every call, in random order."""
    n_min = int(min(counts))
    picks = []
    for c in range(len(counts)):
        members = (labels == c).nonzero().squeeze(1)
        keep = torch.randperm(len(members), device=labels.device, generator=generator)[:n_min]
        picks.append(members[keep])
    order = torch.cat(picks)
    return order[torch.randperm(len(order), device=labels.device, generator=generator)]


def class_histogram(labels, order, num_classes):
    return torch.bincount(labels[order], minlength=num_classes).tolist()


# METHOD: the loss is plain cross-entropy. Logits are cast to fp32 so the loss never runs in bf16.
def erm_loss(logits, labels):
    return F.cross_entropy(logits.float(), labels)


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    run.extra["sampled_class_counts"] = []  # METHOD: per epoch, the class histogram of the order fed in

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
        order = undersample_order(data.train_y, data.train_counts, run.generator)  # METHOD: a new draw each epoch
        run.extra["sampled_class_counts"].append(class_histogram(data.train_y, order, data.num_classes))
        for x, y in data.batches(order, run.generator):
            loss = step(x, y)
            run.log_step(loss)
        run.end_epoch(epoch, lr, model)  # evaluates every --eval-every epochs, prints progress

    run.finish(model)  # final-epoch evaluation -> results/<setting>/undersampling/seed<k>.json
