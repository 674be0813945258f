"""Logit adjustment: cross-entropy on logits shifted by tau times the log class prior.

The logit-adjusted loss adds tau * log(pi_c) (pi_c = n_c / n, the training class prior) to every logit during
training only: CE(z + tau * log pi, y). The head classes get the larger additive bonus, which a rare class's sample
must beat, the same as asking the rare classes for a larger margin; the plain logits z that are used at test time,
without the bonus, then estimate the balanced (uniform-prior) posterior. tau = 1 is Fisher-consistent for the
balanced error.

Paper:     Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (arXiv 2007.07314), Eq. 10.
           Published top-1 not verified here; the official README reports 77.89% (CIFAR-10-LT) for its own
           TF protocol (Nesterov SGD, its own data files, 1241 epochs with lr x0.1 at 604, 926 and 1128:
           about 6x this protocol's steps), final epoch.
Code:      google-research/google-research @ ccc94ce, logit_adjustment/utils.py build_loss_fn (logits +
           log(pi^tau + 1e-12)); on this protocol: orparask/VS-Loss @ 7ade9c9, class_imbalance/train.py
           --loss_type LA (VSLoss with gamma=0, L225-227).
vs ERM:    the loss adds tau * log(n_c / n) to the logits (--tau 1.0, the official default). Nothing else
           changes: plain linear head, no re-weighting, raw logits at test time. The official TF code adds
           1e-12 inside the log; here log pi is exact (every class has at least one image).
Protocol:  ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 weight decay 2e-4, linear warm-up over
           5 epochs, lr x0.01 from epoch 160 and x0.0001 from epoch 180; final-epoch accuracy reported.
           Precision: on CUDA the network runs under bf16 autocast (the loss in fp32, the final evaluation in
           fp32); --fp32 trains in fp32 throughout, as the official code.
Result:    not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run).
Run:       python methods/logit_adjust.py --dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100
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
    # METHOD: the temperature of the prior.
    m = parser.add_argument_group("logit adjustment")
    m.add_argument("--tau", type=float, default=1.0,
                   help="weight of log prior added to the logits (Menon et al. and their code: 1.0; "
                        "VS-Loss train.py --tau default 1.0)")
    args = parser.parse_args(argv)
    common.check(math.isfinite(args.tau) and args.tau >= 0, f"--tau must be >= 0, got {args.tau:g}")
    return common.finish_args(args, method="logit_adjust")


# METHOD: log pi_c = log(n_c / n), the training class prior.
def log_prior(counts, device=None):
    counts = torch.as_tensor(counts, dtype=torch.float32, device=device)
    return torch.log(counts / counts.sum())


# METHOD: the loss, CE(z + tau * log pi, y), in fp32.
def logit_adjusted_loss(logits, labels, log_prior, tau):
    z = logits.float()
    return F.cross_entropy(z + tau * log_prior.to(z.device), labels)


if __name__ == "__main__":
    args = parse_args()
    run = common.start(args)  # checks the output path, seeds, loads the long-tailed data onto the device
    data = run.data
    model = common.resnet32(data.num_classes, args.device)
    prior = log_prior(data.train_counts, args.device)  # METHOD
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)

    def train_step(x, y):  # one SGD step on a batch
        with common.autocast(args.device):
            logits = model(x)
        loss = logit_adjusted_loss(logits, y, prior, args.tau)  # METHOD
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

    run.finish(model)  # final-epoch evaluation -> results/<setting>/logit_adjust/seed<k>.json
