"""VS loss: vector-scaling loss, a multiplicative and an additive per-class logit adjustment.

The VS loss trains CE(Delta_c * z_c + iota_c, y) with Delta_c = (n_c / n_max)^gamma (CDT's multiplicative
temperature: 1 for the head class, smaller for the rare ones) and iota_c = tau * log pi_c (the additive
logit adjustment, pi_c = n_c / n). Kini et al. show that in the over-parameterized regime only the
multiplicative part changes the margins, while the additive part helps early in training; the loss
contains CE (gamma = tau = 0), LA (gamma = 0) and CDT (tau = 0). Raw logits are used at test time.

Paper:     Kini, Paraskevas, Oymak, Thrampoulidis, "Label-Imbalanced and Group-Sensitive Classification under
           Overparameterization", NeurIPS 2021. Published CIFAR-10-LT numbers not verified here (~78.6%
           top-1 as quoted by Rangwani et al.; an independent re-run, wang22ti/DDC: 80.29 +- 0.23).
Code:      orparask/VS-Loss @ 7ade9c9, class_imbalance/losses.py VSLoss (L34-53), train.py --loss_type VS.
vs ERM:    the loss rescales and shifts every logit per class (--gamma 0.2, --tau 1.2: the VS-Loss README's
           CIFAR-10 LT-100 command, the only published pair; run_all.sh uses it in every setting, untuned there).
           Nothing else changes: plain linear head (VS-Loss uses NormedLinear only for LDAM), no re-weighting.
           The official code divides by (n_max / n_c)^gamma, the same number.
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run).
Run:       python methods/vs_loss.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
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
    # METHOD: the two adjustments.
    m = parser.add_argument_group("VS loss")
    m.add_argument("--gamma", type=float, default=0.2,
                   help="multiplicative Delta_c = (n_c / n_max)^gamma (VS-Loss README, CIFAR-10 LT-100; "
                        "train.py default 0.3)")
    m.add_argument("--tau", type=float, default=1.2,
                   help="additive iota_c = tau * log(n_c / n) (VS-Loss README, CIFAR-10 LT-100; train.py "
                        "default 1.0)")
    args = parser.parse_args(argv)
    common.check(math.isfinite(args.gamma) and args.gamma >= 0, f"--gamma must be >= 0, got {args.gamma:g}")
    common.check(math.isfinite(args.tau) and args.tau >= 0, f"--tau must be >= 0, got {args.tau:g}")
    return common.finish_args(args, method="vs")


# METHOD: the loss, CE(Delta * z + iota, y) with Delta_c = (n_c / n_max)^gamma and iota_c = tau * log(n_c / n),
# in fp32. `counts` is a list or a tensor of n_c.
def vs_loss(logits, labels, counts, gamma, tau):
    z = logits.float()
    counts = torch.as_tensor(counts, dtype=torch.float32, device=z.device)
    delta = (counts / counts.max()) ** gamma
    iota = tau * torch.log(counts / counts.sum())
    return F.cross_entropy(delta * z + iota, labels)


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
        loss = vs_loss(logits, y, counts, args.gamma, args.tau)  # METHOD
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

    run.finish(model)  # final-epoch evaluation -> results/<setting>/vs/seed<k>.json
