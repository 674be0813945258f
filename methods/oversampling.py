"""Oversampling: class-balanced re-sampling with replacement (RS), square-root sampling, and deferred RS (DRS).

Each epoch draws --num-samples training indices with replacement, sample i with probability proportional to
n_{y_i}^(-q): q=1 (default) gives every class the same probability 1/C per draw (class-balanced, "RS"),
q=0.5 square-root sampling (class c drawn with probability proportional to sqrt(n_c)), q=0 the natural
distribution (still drawn with replacement, so not ERM's permutation). Tail images repeat within an epoch; head
images are left out. With --start-epoch E the first
E epochs use the plain shuffle of ERM and re-sampling starts at epoch E: DRS (deferred re-sampling) is
--start-epoch 160, the epoch where DRW switches on (LDAM App. C.4 words it "until the last lr decay"; the schedule
decays at 160 and again at 180, and the official DRW switches at 160, so DRS does here too).

Paper:     Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
           Sec. 4 baselines. Table 2 row CB RS (CIFAR-10-LT R=100: 29.45% error, i.e. 70.55% top-1; CIFAR-100-LT
           R=100: 66.56%), Table 5 DRS with ERM (25.50%, i.e. 74.50%; CIFAR-100: 59.67%), best test epoch.
           Square-root sampling: Mahajan et al. 2018; Kang et al., ICLR 2020 (their p_c ~ n_c^q' is our
           per-class probability n_c^(1-q): their q'=0 is our q=1, their q'=1/2 our q=1/2).
Code:      kaidic/LDAM-DRW @ 2536330, utils.py ImbalancedDatasetSampler (L11-47): per-sample weight
           (1-beta)/(1-beta^n_y) with beta=0.9999, torch.multinomial(weights, len(dataset), replacement=True).
           BUT the official cifar_train.py never uses it: the DataLoader is built before the epoch loop with
           sampler=None (L167-171) and the sampler made inside the loop (L189-191) is thrown away, so
           "--train_rule Resample" trains plain ERM (kaidic/LDAM-DRW issue #7, open; the same bug is in
           Saddle-LongTail, VS-Loss and the MM repo). DRS is not in the released code at all.
           Here the sampler's index order IS the order the batches are cut from (data.batches(order, ...)),
           and the class histogram of every epoch's order is saved in the JSON (extra.sampled_class_counts).
vs ERM:    only the epoch's index order: multinomial draws instead of data.shuffled(). The weights are
           n_y^(-q), i.e. exactly 1/n_y for q=1, not the official beta=0.9999 weights (which draw the head class of
           CIFAR-10-LT R=100 with probability 0.119 instead of 1/C = 0.100, ~2% more on CIFAR-100-LT; --beta
           0.9999 draws with those); the report still compares "oversampling" and "drs"
           with the CB RS / DRS rows. Each draw is i.i.d., so the order needs no extra shuffle.
           common.Data.batches fills a short last batch with indices drawn without replacement from the same
           order, so the images fed in an epoch are the recorded order plus at most batch_size-1 repeats.
Variants:  results folders "oversampling" (--start-epoch 0, q=1), "drs" (--start-epoch > 0, q=1), otherwise
           "oversampling_q<q>" / "drs_q<q>", e.g. "oversampling_q0.5" for square-root sampling, and
           "oversampling_cb" / "drs_cb" with --beta (the official class-balanced sampler weights).
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
           An epoch is --num-samples draws (default len(train set) = 12,406 on CIFAR-10-LT R=100, as the
           official sampler), so an oversampled epoch costs as much as an ERM epoch.
Result:    drs 69.65 (n=1); oversampling 65.16 (n=1) top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final
           epoch, one seed so far (no std yet); NVIDIA H200, torch 2.11.0+cu130 (results/RESULTS.md).
Run:       python methods/oversampling.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
           python methods/oversampling.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100 --start-epoch 160
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
    # METHOD: the sampler's arguments.
    m = parser.add_argument_group("oversampling")
    m.add_argument("--sampling-power", type=float, default=1.0,
                   help="q in [0, 1]: sample i is drawn with probability proportional to n_{y_i}^(-q). 1 = class-"
                        "balanced (LDAM Sec. 4 'RS'), 0.5 = square-root sampling (Kang et al. 2020), 0 = natural")
    m.add_argument("--beta", type=float, default=None,
                   help="instead of n^(-q): the class-balanced weight (1-beta)/(1-beta^n_y) of the official "
                        "ImbalancedDatasetSampler (utils.py, beta 0.9999: LDAM's CB RS row); results folder + '_cb'")
    m.add_argument("--num-samples", type=int, default=None,
                   help="draws per re-sampled epoch (the epoch length); default len(train set), as the official "
                        "ImbalancedDatasetSampler")
    m.add_argument("--start-epoch", type=int, default=0,
                   help="0-based epoch from which batches come from the sampler (before it: the plain shuffle). "
                        "0 = re-sample throughout (RS); 160 = DRS: LDAM App. C.4 says 'until the last lr decay'; "
                        "160 is where the official DRW switches, the first of the decays at 160 and 180")
    args = parser.parse_args(argv)
    common.check(0 <= args.sampling_power <= 1, f"--sampling-power must be in [0, 1], got {args.sampling_power:g}")
    if args.beta is not None:
        common.check(0 <= args.beta < 1, f"--beta must be in [0, 1), got {args.beta:g}")
        common.check(args.sampling_power == 1, "--beta replaces --sampling-power: give one of them")
    common.check(args.num_samples is None or args.num_samples > 0,
                 f"--num-samples must be positive, got {args.num_samples}")
    common.check(args.start_epoch >= 0, f"--start-epoch must be >= 0, got {args.start_epoch}")
    return common.finish_args(args, method=method_name(args.start_epoch, args.sampling_power, args.beta))


def method_name(start_epoch, power, beta=None):
    base = "drs" if start_epoch > 0 else "oversampling"
    return f"{base}_cb" if beta is not None else base if power == 1 else f"{base}_q{power:g}"


# METHOD: the sampler. One weight per SAMPLE (not per class), n_{y_i}^(-q), or with beta the official
# (1-beta)/(1-beta^n_{y_i}); torch.multinomial does not need them normalized. Class c's total probability per
# draw is n_c w_c / sum_k n_k w_k: n_c^(1-q) / sum_k n_k^(1-q) for the power.
def sampling_weights(labels, counts, power=1.0, beta=None):
    counts = torch.as_tensor(counts, dtype=torch.float64, device=labels.device)
    w = (1 - beta) / (1 - beta ** counts) if beta is not None else counts.pow(-power)
    return w[labels].float()


def oversample_order(labels, counts, num_samples, generator, power=1.0, beta=None):
    """One epoch's training indices: num_samples i.i.d. draws with replacement (WeightedRandomSampler)."""
    weights = sampling_weights(labels, counts, power, beta)
    return torch.multinomial(weights, num_samples, replacement=True, generator=generator)


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
    if args.num_samples is None:  # METHOD: fix the epoch length and save it with the run's args
        args.num_samples = len(data)
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
        # METHOD: the sampler drives the batches (from --start-epoch on; before it the plain shuffle).
        if epoch >= args.start_epoch:
            order = oversample_order(data.train_y, data.train_counts, args.num_samples, run.generator,
                                     args.sampling_power, args.beta)
        else:
            order = data.shuffled(run.generator)
        run.extra["sampled_class_counts"].append(class_histogram(data.train_y, order, data.num_classes))
        for x, y in data.batches(order, run.generator):
            loss = step(x, y)
            run.log_step(loss)
        run.end_epoch(epoch, lr, model)  # evaluates every --eval-every epochs, prints progress

    run.finish(model)  # final-epoch evaluation -> results/<setting>/<oversampling|drs...>/seed<k>.json
