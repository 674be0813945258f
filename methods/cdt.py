"""CDT: class-dependent temperatures, cross-entropy on logits divided by a per-class temperature.

Ye et al. observe that a ConvNet over-fits the rare classes: their test features drift towards low decision
values. CDT simulates that drift during training by dividing class c's logit by the temperature
a_c = (n_max / n_c)^gamma (1 for the head class, largest for the rarest), i.e. multiplying it by
(n_c / n_max)^gamma: CE(z * (n / n_max)^gamma, y). To win, the network must make the rare classes' raw
logits larger, and at test time the raw logits are used.

Paper:     Ye, Chen, Zhan, Chao, "Identifying and Compensating for Feature Deviation in Imbalanced Deep
           Learning", arXiv 2001.01385 (2020). Published top-1 not verified here.
           Behnia, Kini, Vakilian, Thrampoulidis, "On the Implicit Geometry of Cross-Entropy Parameterizations for
           Label-Imbalanced Data", AISTATS 2023 (code valavakilian/Implicit_geometry, train_models/criterion.py
           CDTLoss): the same per-class ratios (majority R^gamma, minority 1 on their step data), rescaled so the
           multipliers sum to C (--normalize sum), and gamma swept over [-1.5, 1.5] on step R=10 (a negative
           gamma reverses the temperatures: the head's becomes the highest, the rarest class's the lowest); they
           publish geometry, not a CIFAR-LT-100 accuracy.
Code:      orparask/VS-Loss @ 7ade9c9, class_imbalance/train.py --loss_type CDT = VSLoss with tau=0
           (L228-230), losses.py VSLoss (L34-53): x / ((1/n)^gamma / min (1/n)^gamma).
vs ERM:    the loss multiplies class c's logit by delta_c = (n_c / n_max)^gamma / max_j (n_j / n_max)^gamma
           (--normalize head: the largest multiplier is 1, as VS-Loss's x / (t / min t); with gamma >= 0 that is
           the head class's) or by C delta_c / sum_j delta_j (--normalize sum: Behnia et al.; the same ratios,
           another overall logit scale, so not the same training). Nothing else changes: plain linear head, no
           re-weighting, raw logits at test time. Results folders "cdt" (head), "cdt_sum" (sum).
gamma:     --gamma 0.3, the default of VS-Loss train.py (`--gamma default=0.3, help='CDT hyperparameter'`,
           L32), the code that runs CDT on this protocol; Saddle-LongTail's VS loss uses the same default.
           Ye et al.'s own per-dataset value was not checked; VS's README value for C10 LT-100 (0.2) was
           tuned together with tau = 1.2 and is kept for vs_loss.py.
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run).
Run:       python methods/cdt.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]  # common.py: beside this file (a copy) first, else one folder up
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    # METHOD: the temperature exponent.
    m = parser.add_argument_group("CDT")
    m.add_argument("--gamma", type=float, default=0.3,
                   help="temperature a_c = (n_max / n_c)^gamma (VS-Loss train.py default 0.3, "
                        "'CDT hyperparameter'); 0 gives plain CE; Behnia et al. sweep -1.5 to 1.5")
    m.add_argument("--normalize", default="head",
                   help="head: multipliers (n_c / n_max)^gamma divided by their largest, so 1 for the head class "
                        "when gamma >= 0 (VS-Loss, Ye et al.) | sum: rescaled to sum to C (Behnia et al.'s "
                        "CDTLoss)")
    args = parser.parse_args(argv)
    common.check(math.isfinite(args.gamma), f"--gamma must be a finite number, got {args.gamma:g}")
    common.check(args.normalize in ("head", "sum"), f"unknown --normalize '{args.normalize}': use head or sum")
    return common.finish_args(args, method="cdt" + ("_sum" if args.normalize == "sum" else ""))


# METHOD: the loss, CE(z * delta, y) in fp32, delta_c = (n_c / n_max)^gamma rescaled so that its largest is 1
# (normalize="head", VS-Loss's form for every gamma) or so that it sums to C (normalize="sum").
# `counts` is a list or a tensor of n_c.
def cdt_loss(logits, labels, counts, gamma, normalize="head"):
    z = logits.float()
    counts = torch.as_tensor(counts, dtype=torch.float32, device=z.device)
    delta = (counts / counts.max()) ** gamma
    delta = delta / delta.max() if normalize == "head" else delta * (len(delta) / delta.sum())
    return F.cross_entropy(z * delta, labels)


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    counts = torch.tensor(data.train_counts, dtype=torch.float32, device=args.device)  # METHOD
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)

    def train_step(x, y):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = cdt_loss(logits, y, counts, args.gamma, args.normalize)  # METHOD
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

    run.finish(model)  # final-epoch evaluation -> results/<setting>/cdt/seed<k>.json
