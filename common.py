"""Shared plumbing for every script in methods/: data, ResNet-32, the GPU-resident batch pipeline,
the learning-rate schedule, evaluation, one results JSON per run, and the report.

No algorithm lives here: no loss, sampler or optimizer step. Each method file imports this module and
nothing else of ours, so copying a method into your own project means copying that file and this one.

What a method file calls, in the order its training script does (the rest of this file serves these):
    make_parser(__doc__), finish_args(args, method)   the shared flags (Arguments), checked; the results folder name
    run = start(args)                                 checks the output path, seeds, loads the data (a Run: A run)
    run.data: .shuffled(g), .batches(order, g), .train_counts, .num_classes   the data on the device (Data)
    resnet32(num_classes, device)                     the model (ResNet-32)
    autocast(device), set_lr(optimizer, epoch, args)  bf16 on CUDA; warm-up and decays (Schedule)
    run.fast_step(train_step, model, optimizer)       train_step itself, or with --fast on CUDA its CUDA graph
    run.restore(model, optimizer, ...)                what a checkpoint holds; with --resume the epoch to go on from
    run.log_step(loss), run.end_epoch(epoch, lr, model), run.finish(model)   progress, evaluation, the results JSON
Everything from "The table of run_all.sh" on (the planner, the report, the header lines) is for run_all.sh and the
results pages; a method never calls it.

    python common.py report [results/]      # results/**/seed*.json -> results/RESULTS.md (+ plots)
    python common.py plan ...                # used by run_all.sh: which runs exist, how long the others take
"""
import argparse
import contextlib
import functools
import glob
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.abspath(__file__))

# The normalization constants of kaidic/LDAM-DRW cifar_train.py (not airbench's 0.2470, 0.2435, 0.2616).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
# Many / medium / few shot groups by training count (Liu et al. 2019): >100, 20..100, <20.
MANY_ABOVE, FEW_BELOW = 100, 20
ECE_BINS = 15
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class UserError(SystemExit):
    """A problem with the user's input. Python prints the message, without a traceback, and exits 1."""

    def __init__(self, message):
        super().__init__(f"error: {message}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), like every other input error here, and a --help that gives
    each flag's default."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, then no inf or nan in a float flag (check_finite), before a script checks its ranges."""
        parsed = super().parse_args(args, namespace)
        check_finite(parsed)
        return parsed


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """'(default: ...)' after each flag's help, except a default of None or False: nothing to show there (a None
    default's help says what is used instead)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------

def make_parser(doc):
    """The arguments every method shares, with the protocol's numbers as defaults."""
    p = ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagefolder | synthetic")
    d.add_argument("--data-dir", default=None,
                   help="cifar10/100: the torchvision root (default data/); imagefolder: a folder with "
                        "train/<class>/ and test/<class>/")
    d.add_argument("--download", action="store_true", help="download CIFAR through torchvision (needs internet)")
    d.add_argument("--imbalance-type", default="exp",
                   help="exp | step: the long-tailed subset of a balanced training set, as the official code | none: "
                        "the training set as it is (e.g. your own folder that is already imbalanced; "
                        "--imbalance-ratio is then unused)")
    d.add_argument("--imbalance-ratio", default="100", help="n_max / n_min of exp and step, >= 1 (1 = balanced)")
    d.add_argument("--data-seed", type=int, default=0,
                   help="seed of the long-tailed subset (np.random.RandomState, as the official code)")
    d.add_argument("--cache-dir", default=os.environ.get(
                       "IMBALANCE_REF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "imbalance-ref")),
                   help="where decoded image folders are cached")
    t = p.add_argument_group("training (the kaidic/LDAM-DRW protocol)")
    t.add_argument("--epochs", type=int, default=200, help="training epochs")
    t.add_argument("--batch-size", type=int, default=128, help="images per training step")
    t.add_argument("--lr", type=float, default=0.1, help="SGD learning rate after the warm-up")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=2e-4, help="SGD weight decay (L2, on every parameter)")
    t.add_argument("--warmup-epochs", type=int, default=5, help="linear warm-up, set once per epoch")
    t.add_argument("--lr-decay-epochs", type=int, nargs="*", default=[160, 180],
                   help="0-based epochs from which the lr is multiplied by --lr-decay once more")
    t.add_argument("--lr-decay", type=float, default=0.01, help="the lr factor at each of --lr-decay-epochs")
    t.add_argument("--seed", type=int, default=0, help="training seed (init, batch order, augmentation)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels where PyTorch has them, cuDNN autotuning off (slower on GPU)")
    r.add_argument("--fast", action="store_true",
                   help="CUDA only: capture the whole training step (forward, backward, optimizer step) as one CUDA "
                        "graph and replay it, the same math without the CPU cost of ~600 kernel launches per step "
                        "(see GraphedStep in common.py); ignored on CPU")
    r.add_argument("--fp32", action="store_true",
                   help="CUDA only: train and evaluate in fp32 (no bf16 autocast, no TF32), e.g. to compare --fast "
                        "with the eager path bit for bit")
    r.add_argument("--eval-every", type=int, default=5, help="evaluate every N epochs (and always at the end)")
    r.add_argument("--profile-steps", type=int, default=0,
                   help="profile up to this many training steps of the second epoch (from its 4th to 11th step on, "
                        "past --fast's warm-up and capture; not past its end) with torch.profiler: kernels per step, "
                        "their summed GPU time and the wall time per step (what bounds a step: the CPU launching "
                        "kernels, or the GPU running them), saved as 'profile' in the JSON; 0: off")
    r.add_argument("--checkpoint-every", type=int, default=0,
                   help="save the whole training state every N epochs to <out>/checkpoints/<setting>/<method>/"
                        "seed<k>.pt (removed when the run ends); 0: never")
    r.add_argument("--resume", action="store_true",
                   help="continue from this run's checkpoint where one exists (same arguments and code), else start "
                        "from epoch 0; the resumed run computes what the uninterrupted run would")
    r.add_argument("--out", default=None,
                   help="results root folder (None: results/, or the git-ignored results/scratch/ for --dataset "
                        "synthetic, whose runs are tests of the pipeline, not results for the tables)")
    r.add_argument("--name", default=None, help="name of the run's method folder (None: set by the method)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing result file")
    r.add_argument("--skip-existing", action="store_true", help="exit 0 without training if the result exists")
    return p


def check(condition, message):
    if not condition:
        raise UserError(message)


def note_unused(parser, args, unused, dests, why):
    """Where `unused`: a note for each of the flags `dests` given a value other than its default, which the run
    ignores `why` (e.g. "with --loss ce"); the JSON still records it."""
    given = [f"--{d.replace('_', '-')}" for d in dests if unused and getattr(args, d) != parser.get_default(d)]
    if given:
        print(f"note: {', '.join(given)} {'changes' if len(given) == 1 else 'change'} nothing {why}", file=sys.stderr,
              flush=True)


def check_finite(args):
    """argparse's float() takes 'inf' and 'nan', and no flag of ours means either: stop at the first such value."""
    for name, value in vars(args).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {v:g}")


def finish_args(args, method):
    """Validate the shared arguments and fill in derived ones. `method` names the results folder."""
    check_finite(args)
    if args.dataset not in ("cifar10", "cifar100", "imagefolder", "synthetic"):
        raise UserError(f"unknown dataset '{args.dataset}': use cifar10, cifar100, imagefolder or synthetic")
    check(args.imbalance_type in ("exp", "step", "none"),
          f"unknown --imbalance-type '{args.imbalance_type}': use exp, step or none")
    try:
        args.imbalance_ratio = float(args.imbalance_ratio)
    except ValueError:
        raise UserError(f"--imbalance-ratio must be a number >= 1, got '{args.imbalance_ratio}'")
    check(math.isfinite(args.imbalance_ratio),
          f"--imbalance-ratio must be a finite number, got {args.imbalance_ratio:g}")
    check(args.imbalance_ratio >= 1, f"--imbalance-ratio must be >= 1 (n_max / n_min), got {args.imbalance_ratio:g}")
    if args.imbalance_type == "none" and args.imbalance_ratio != 100:  # (100: the default, given or not)
        print(f"note: --imbalance-ratio {args.imbalance_ratio:g} is not used with --imbalance-type none: the training "
              "set is taken as it is", file=sys.stderr, flush=True)
    check(args.epochs > 0, f"--epochs must be positive, got {args.epochs}")
    check(args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}")
    check(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive number, got {args.lr}")
    check(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    check(math.isfinite(args.weight_decay) and args.weight_decay >= 0,
          f"--weight-decay must be a number >= 0, got {args.weight_decay}")
    check(args.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    check(all(e >= 0 for e in args.lr_decay_epochs), "--lr-decay-epochs must be >= 0 (0-based epochs), got "
                                                     f"{' '.join(map(str, args.lr_decay_epochs))}")
    check(args.eval_every > 0, f"--eval-every must be positive, got {args.eval_every}")
    check(args.profile_steps >= 0, f"--profile-steps must be >= 0, got {args.profile_steps}")
    check(args.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    check(0 < args.lr_decay <= 1, f"--lr-decay must be in (0, 1], got {args.lr_decay}")
    for flag, seed in (("--seed", args.seed), ("--data-seed", args.data_seed)):  # numpy's seed range
        check(0 <= seed < 2 ** 32, f"{flag} must be in [0, 2^32), got {seed}")
    check(args.name is None or (args.name not in ("", ".", "..") and not any(
        sep in args.name for sep in (os.sep, os.altsep, "/") if sep)),
          f"--name must be a plain folder name (no path separators, not '.' or '..'), got '{args.name}'")
    if args.dataset == "imagefolder":
        check(args.data_dir is not None,
              "--dataset imagefolder needs --data-dir pointing at a folder with train/ and test/")
    if args.dataset == "synthetic" and (args.data_dir is not None or args.download):
        print(f"note: {'--data-dir' if args.data_dir is not None else '--download'} is not used with --dataset "
              "synthetic, which makes its images itself", file=sys.stderr, flush=True)
    if args.resume and not args.checkpoint_every:
        print("note: --resume with --checkpoint-every 0: this run goes on from a checkpoint where one exists, but "
              "saves none, so it cannot be resumed itself (--checkpoint-every N saves one every N epochs)",
              file=sys.stderr, flush=True)
    check(not (args.overwrite and args.skip_existing),
          "--overwrite and --skip-existing contradict each other: pass one (replace an existing result, or keep it)")
    if args.out is None:
        args.out = os.path.join(ROOT, "results", *(["scratch"] if args.dataset == "synthetic" else []))
    args.method = args.name or method
    args.device = resolve_device(args.device)
    cuda = torch.device(args.device).type == "cuda"
    if (args.fast or args.fp32) and not cuda:
        print(f"note: {'--fast' if args.fast else '--fp32'} only changes CUDA runs; this {args.device} run is "
              "eager fp32 as always", file=sys.stderr, flush=True)
    set_precision(bf16=cuda and not args.fp32)
    return args


def unreached_switches(args):
    """'--lr-decay-epochs 160 180, --drw-epoch 160' for the schedule's switches a run of --epochs never reaches (a
    quick try, a smoke test): the run's folder name does not say that they did not happen; '' when none."""
    switches = [("--lr-decay-epochs", e) for e in args.lr_decay_epochs] + [
        (f"--{k.replace('_', '-')}", getattr(args, k)) for k in ("drw_epoch", "start_epoch")
        if isinstance(getattr(args, k, None), int) and getattr(args, k) > 0]
    if args.warmup_epochs > args.epochs:  # the lr reaches --lr when the warm-up ends (lr_at)
        switches.append(("--warmup-epochs", args.warmup_epochs))
    late = {}
    for flag, e in switches:
        if e >= args.epochs:
            late.setdefault(flag, []).append(str(e))
    return ", ".join(f"{f} {' '.join(e)}" for f, e in late.items())


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    check(name == "cpu" or (dev is not None and dev.type == "cuda"),
          f"unknown --device '{name}': use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        check(torch.cuda.is_available(),
              f"--device {name} was asked for, but no CUDA GPU is available: use --device cpu")
        check(dev.index is None or dev.index < torch.cuda.device_count(),
              f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
              f"cuda:{torch.cuda.device_count() - 1}")
    return name


def setting_name(args):
    """results/<setting>/<method>/seed<k>.json, e.g. cifar10-exp-r100, cifar10-jpeg-exp-r100 or mydata-asis."""
    data = os.path.basename(os.path.normpath(args.data_dir)) if args.dataset == "imagefolder" else args.dataset
    if args.imbalance_type == "none":
        return f"{data}-asis"
    return f"{data}-{args.imbalance_type}-r{args.imbalance_ratio:g}"


def class_count(args):
    """The number of classes of the run's data, known before it is loaded (None where it cannot be read yet): a
    method whose published hyperparameters differ between CIFAR-10 and CIFAR-100 picks them by it."""
    if args.dataset in ("cifar10", "cifar100"):
        return int(args.dataset[5:])
    if args.dataset == "synthetic":
        return 10
    train = os.path.join(args.data_dir or "", "train")
    return len(class_folders(train)) if os.path.isdir(train) else None


def result_path(args):
    return os.path.join(args.out, setting_name(args), args.method, f"seed{args.seed}.json")


def checkpoint_path(args):
    return os.path.join(args.out, "checkpoints", setting_name(args), args.method, f"seed{args.seed}.pt")


# Arguments a checkpoint may be resumed under with other values: where and how a run is written or sped up.
RESUME_FREE_ARGS = {"resume", "overwrite", "skip_existing", "checkpoint_every", "cache_dir", "out", "download", "fast",
                    "profile_steps", "class_grads"}  # (pcn_sgd.py's: the same g_l from C backward passes or one)
# ... of which these choose how the numbers are computed (the same math, other kernels): a run resumed with another
# value records the switch in its JSON (switched_at_resume)
COMPUTED_WITH = ("fast", "class_grads")


def match_layouts(optimizer):
    """Each optimizer state tensor (SGD's momentum buffer) in its parameter's memory format. A checkpoint made by a run
    whose parameters had another one (on CUDA pcn_sgd.py --class-grads batched trains a contiguous ResNet-32, the loop
    a channels_last one) loads with its saved strides: the same numbers, but torch.optim's multi-tensor kernels keep
    their fast path only where every tensor has its parameter's strides."""
    for p, state in optimizer.state.items():
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                state[k] = torch.empty_like(p).copy_(v)


def checkpoint_key(args, script):
    """What a checkpoint must match to be resumed: every other argument, and the code of the method file and of
    common.py's part that trains (code_sha256, common_code_sha256), so that no run mixes two versions of either.
    Taken from the arguments as parse_args settled them (Run keeps it from its start): a value a method fills in
    later from the data, such as oversampling's epoch length, follows from them, and run_all.sh's planner, which sees
    only parse_args, must find the same key."""
    return {"args": {k: v for k, v in vars(args).items() if k not in RESUME_FREE_ARGS},
            "code": [code_sha256(script), common_code_sha256()]}


def key_difference(old, new):
    """What differs between two checkpoint keys (checkpoint_key), as text: the arguments, each with its old value,
    then the code."""
    a, b = old.get("args", {}), new.get("args", {})
    said = [f"--{k.replace('_', '-')} {a.get(k)!r} (this run: {b.get(k)!r})" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    said += ["other code of the method file or common.py"] if old.get("code") != new.get("code") else []
    return ", ".join(said) or "another key"


def load_checkpoint(args, key):
    """(checkpoint, None) for this run's checkpoint when --resume is given and it was saved under `key`
    (checkpoint_key), else (None, why not); a damaged file is a reason, not a crash."""
    path = checkpoint_path(args)
    if not (args.resume and os.path.exists(path)):
        return None, None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck["key"] != key:
            return None, f"{path} was made with {key_difference(ck['key'], key)}; the next checkpoint replaces it"
        return ck, None
    except Exception as e:  # noqa: BLE001  (a damaged or foreign file: the run starts over)
        return None, f"{path} is not a readable checkpoint ({e.__class__.__name__})"


# ------------------------------------------------------------------------------------------------
# Data: decoded uint8 arrays (N, H, W, 3) and int64 labels, then the long-tailed subset
# ------------------------------------------------------------------------------------------------

def load_arrays(args):
    """(train_x, train_y, test_x, test_y, class_names) as numpy arrays, whatever the source."""
    if args.dataset in ("cifar10", "cifar100"):
        return load_cifar(args.dataset, args.data_dir or os.path.join(ROOT, "data"), args.download)
    if args.dataset == "imagefolder":
        return load_imagefolder(args.data_dir, args.cache_dir)
    return make_synthetic(size=16)  # 16x16: a quarter of the compute of 32x32, for fast tests


def load_cifar(name, root, download):
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    made = None  # the topmost folder a download makes: removed again if it fails
    if download and not os.path.exists(root):
        made = os.path.abspath(root)
        while not os.path.exists(os.path.dirname(made)):
            made = os.path.dirname(made)
    try:
        train, test = (cls(root, train=t, download=download) for t in (True, False))
    except (RuntimeError, OSError) as e:
        if made:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):  # no network
            raise UserError(f"could not download {name} into {root} ({e.__class__.__name__}): no internet? "
                            "use --dataset imagefolder --data-dir <folder>")
        if download:
            raise UserError(f"could not download {name} into {root} ({e}); without internet use "
                            "--dataset imagefolder --data-dir <folder>")
        raise UserError(f"{name} not found in {root}: add --download (needs internet), or pass --data-dir "
                        "with the torchvision files, or use --dataset imagefolder --data-dir <folder>")
    return (train.data, np.array(train.targets, dtype=np.int64), test.data,
            np.array(test.targets, dtype=np.int64), list(train.classes))


def class_folders(d):
    """The class folders of an image-folder split, sorted (= label order); hidden folders are not classes."""
    return sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)) and not c.startswith("."))


def image_files(folder):
    """The images under a class folder, subfolders included (as torchvision's ImageFolder), as paths relative to it;
    hidden files and folders left out."""
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in names:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                yield os.path.relpath(os.path.join(parent, f), folder)


def list_imagefolder(root):
    """Sorted class names and, per split, the sorted image paths and labels. Checks the layout."""
    check(os.path.isdir(root), f"data folder {root} {'is a file' if os.path.exists(root) else 'does not exist'}: "
                               "pass --data-dir pointing at a folder with train/<class>/ and test/<class>/")
    check(os.listdir(root), f"data folder {root} is empty: it needs train/<class>/ and test/<class>/")
    splits = {}
    for split in ("train", "test"):
        d = os.path.join(root, split)
        check(os.path.isdir(d),
              f"{root} has no {split}/ folder: an image folder needs train/<class>/ and test/<class>/")
        splits[split] = class_folders(d)
        check(splits[split], f"{d} has no class folders: put images in {d}/<class>/")
    only_train = sorted(set(splits["train"]) - set(splits["test"]))
    only_test = sorted(set(splits["test"]) - set(splits["train"]))
    check(not only_train and not only_test, "; ".join(
        f"class folder(s) {', '.join(names)} in {a}/ but not in {b}/" for names, a, b in
        ((only_train, "train", "test"), (only_test, "test", "train")) if names) + f" of {root}: both splits need the "
        "same classes")
    classes = splits["train"]
    files = {}
    for split in ("train", "test"):
        paths, labels = [], []
        for c, name in enumerate(classes):
            d = os.path.join(root, split, name)
            imgs = sorted(image_files(d))
            check(imgs, f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += [os.path.join(d, f) for f in imgs]
            labels += [c] * len(imgs)
        files[split] = (paths, np.array(labels, dtype=np.int64))
    return classes, files


def load_imagefolder(root, cache_dir, listing=None):
    """Decode every image once and cache the uint8 arrays; the cache key covers every file's size and mtime.
    `listing`: list_imagefolder(root), where the caller has it already."""
    root = os.path.abspath(root)
    classes, files = listing or list_imagefolder(root)
    h = hashlib.sha256(root.encode())
    for split in ("train", "test"):
        for path in files[split][0]:
            try:
                st = os.stat(path)
            except OSError as e:  # e.g. a symlink whose target moved
                raise UserError(f"cannot read image {path} ({e.__class__.__name__}: {e.strerror}): "
                                "remove or replace the file")
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = os.path.join(cache_dir, f"imagefolder-{h.hexdigest()[:20]}.npz")
    if os.path.exists(cache):
        with np.load(cache) as z:
            return z["train_x"], z["train_y"], z["test_x"], z["test_y"], classes
    try:  # before the decoding: a cache folder that cannot be made costs a note, not the decoded images
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        print(f"note: cannot make the cache folder {cache_dir} ({e.strerror}): the images are decoded again on every "
              "run; --cache-dir (or IMBALANCE_REF_CACHE) names a writable one", file=sys.stderr, flush=True)
        cache = None
    from PIL import Image
    arrays, shape = {}, None
    t0 = time.time()
    print(f"decoding {sum(len(files[s][0]) for s in files)} images of {root}"
          f"{f' (once; cached in {cache_dir})' if cache else ''}", flush=True)
    for split in ("train", "test"):
        paths, labels = files[split]
        out = None
        for i, path in enumerate(paths):
            try:
                with Image.open(path) as im:
                    a = np.asarray(im.convert("RGB"))
            except Exception as e:
                raise UserError(f"cannot read image {path} ({e.__class__.__name__}): remove or replace the file")
            if shape is None:
                shape = a.shape
                check(shape[0] == shape[1], f"image {path} is {shape[1]}x{shape[0]}: ResNet-32's global average pool "
                                            "expects square images (CIFAR's 32x32)")
            check(a.shape == shape, f"image {path} is {a.shape[1]}x{a.shape[0]} but the first image is "
                                    f"{shape[1]}x{shape[0]}: all images must have the same size")
            if out is None:
                out = np.empty((len(paths),) + shape, dtype=np.uint8)
            out[i] = a
        arrays[split] = (out, labels)
    print(f"decoded in {time.time() - t0:.1f}s", flush=True)
    if cache:
        tmp = cache + f".tmp{os.getpid()}.npz"
        try:
            np.savez(tmp, train_x=arrays["train"][0], train_y=arrays["train"][1],
                     test_x=arrays["test"][0], test_y=arrays["test"][1])
            os.replace(tmp, cache)
        except OSError as e:  # a read-only folder, a full disk: the run goes on without the cache
            print(f"note: cannot write the cache {cache} ({e.strerror}): the images are decoded again next run",
                  file=sys.stderr, flush=True)
            if os.path.exists(tmp):
                os.remove(tmp)
    return arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1], classes


def make_synthetic(num_classes=10, train_per_class=100, test_per_class=20, size=32, seed=0):
    """A tiny, learnable, class-conditional image set: each class is a smooth random colour pattern,
    each image that pattern under noise and a random brightness shift. Made from `seed`, no files."""
    rng = np.random.RandomState(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 3, 2, 2))  # 2x2 colour blocks: robust to crops
    templates = coarse.repeat(size // 2, axis=2).repeat(size // 2, axis=3).transpose(0, 2, 3, 1)

    def draw(n):
        y = np.repeat(np.arange(num_classes), n)
        x = 0.6 * templates[y] + 0.4 * rng.uniform(0, 255, size=(len(y), size, size, 3))
        x += rng.normal(0, 20, size=(len(y), 1, 1, 1))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    train_x, train_y = draw(train_per_class)
    test_x, test_y = draw(test_per_class)
    return train_x, train_y, test_x, test_y, [f"class{c}" for c in range(num_classes)]


def long_tail_counts(n_max, num_classes, imbalance_type, ratio):
    """Per-class counts of kaidic/LDAM-DRW imbalance_cifar.get_img_num_per_cls (class 0 is the head). Step with an
    odd number of classes: C // 2 head classes, the rest tail (the official code gives the last class no count)."""
    imb_factor = 1.0 / ratio
    if imbalance_type == "exp":
        return [int(n_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    half = num_classes // 2
    return [int(n_max)] * half + [int(n_max * imb_factor)] * (num_classes - half)


def long_tail_indices(labels, counts, data_seed):
    """The official selection: one legacy-MT19937 stream seeded with data_seed, classes 0..C-1 in turn,
    shuffle the class's indices and keep the first n_c. Returned class by class, as the official code."""
    rng = np.random.RandomState(data_seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)


def make_long_tailed(labels, num_classes, imbalance_type, ratio, data_seed):
    """Indices of the long-tailed training subset and its per-class counts.
    n_max = len(train) / C, as the official code; for an unbalanced folder, the smallest class size.
    imbalance_type "none": every training image, class by class."""
    check(num_classes >= 2, f"the training set has {num_classes} class: class-imbalanced training needs at least 2")
    available = np.bincount(labels, minlength=num_classes)
    if imbalance_type == "none":
        return np.concatenate([np.where(labels == c)[0] for c in range(num_classes)]), available.tolist()
    balanced = available.min() == available.max()
    n_max = len(labels) / num_classes if balanced else int(available.min())
    counts = long_tail_counts(n_max, num_classes, imbalance_type, ratio)
    if min(counts) < 1:
        most = int(n_max)  # the largest whole ratio that leaves every class an image (float rounding: n_max may not)
        while most > 1 and min(long_tail_counts(n_max, num_classes, imbalance_type, most)) < 1:
            most -= 1
        raise UserError(f"--imbalance-ratio {ratio:g} leaves class {counts.index(min(counts))} with 0 images "
                        f"(n_max = {n_max:g}{'' if balanced else ', the smallest class'}): use a ratio of at most "
                        f"{most}")
    if not balanced:  # (after the check: bad input stays one line)
        print(f"note: the training classes are not of one size ({available.min()} to {available.max()} images): "
              f"the {imbalance_type} subset is cut with n_max = {n_max}, the smallest class; --imbalance-type none "
              "trains on the set as it is", file=sys.stderr, flush=True)
    return long_tail_indices(labels, counts, 0 if data_seed is None else data_seed), counts


class Data:
    """The long-tailed training set and the balanced test set as uint8 tensors on the device, plus the
    batch pipeline: gather, random crop (zero pad 4) and flip per image in one batched operation,
    normalize. Batches always have `batch_size` images (shapes stay static for graphs)."""

    def __init__(self, args, device):
        if args.dataset == "imagefolder":  # the subset is cut from the file names first, so that a ratio or a batch
            # size that cannot work stops the run before any image is decoded (or cached)
            listing = list_imagefolder(os.path.abspath(args.data_dir))
            # (the subset's note, if any, is printed once the images are read: an unreadable image's error stays the
            # one line of bad input)
            with contextlib.redirect_stderr(io.StringIO()) as notes:
                keep, self.train_counts = self.subset(args, listing[1]["train"][1], len(listing[0]))
            train_x, train_y, test_x, test_y, self.classes = load_imagefolder(args.data_dir, args.cache_dir, listing)
            print(notes.getvalue(), end="", file=sys.stderr, flush=True)
        else:
            train_x, train_y, test_x, test_y, self.classes = load_arrays(args)
            keep, self.train_counts = self.subset(args, train_y, len(self.classes))
        self.num_classes = len(self.classes)
        self.subset_sha256 = hashlib.sha256(np.ascontiguousarray(keep, dtype=np.int64).tobytes()).hexdigest()
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        self.train_x = to(train_x[keep]).permute(0, 3, 1, 2).contiguous()   # (N, 3, H, W) uint8
        self.train_y = to(train_y[keep])
        self.test_x = to(test_x).permute(0, 3, 1, 2).contiguous()
        self.test_y = to(test_y)
        self.device = torch.device(device)
        self.batch_size = args.batch_size
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    @staticmethod
    def subset(args, train_y, num_classes):
        """The long-tailed subset's indices and per-class counts (make_long_tailed), checked against --batch-size."""
        keep, counts = make_long_tailed(train_y, num_classes, args.imbalance_type, args.imbalance_ratio, args.data_seed)
        check(args.batch_size <= len(keep), f"--batch-size {args.batch_size} is larger than the {len(keep)} training "
                                            f"images of this subset: every batch would repeat images; pass "
                                            f"--batch-size {len(keep)} or less")
        return keep, counts

    def __len__(self):
        return len(self.train_y)

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self) / self.batch_size)

    def normalize(self, x_uint8):
        x = (x_uint8.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def augment(self, x_uint8, generator):
        """RandomCrop(32, padding=4) with zero padding and RandomHorizontalFlip, a fresh draw per image."""
        n, _, h, w = x_uint8.shape
        padded = F.pad(x_uint8, (4, 4, 4, 4))
        i = torch.randint(0, 9, (n,), device=self.device, generator=generator)
        j = torch.randint(0, 9, (n,), device=self.device, generator=generator)
        rows = (i[:, None] + torch.arange(h, device=self.device))[:, None, :, None]
        cols = (j[:, None] + torch.arange(w, device=self.device))[:, None, None, :]
        chans = torch.arange(3, device=self.device)[None, :, None, None]
        out = padded[torch.arange(n, device=self.device)[:, None, None, None], chans, rows, cols]
        flip = torch.rand(n, device=self.device, generator=generator) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(3), out)

    def batch(self, idx, generator):
        """The augmented, normalized images and labels of the training indices `idx`."""
        return self.normalize(self.augment(self.train_x[idx], generator)), self.train_y[idx]

    def shuffled(self, generator):
        """A random permutation of the training set: the order of a plain epoch."""
        return torch.randperm(len(self), device=self.device, generator=generator)

    def batches(self, order, generator):
        """Cut an epoch's index order into full batches. A short last batch is filled up with indices drawn
        without replacement from the same order, so the epoch's class mix is kept in expectation (97 x 128 = 12,416
        draws for 12,406 images on CIFAR-10-LT R=100)."""
        short = -len(order) % self.batch_size
        if short:
            fill = order[torch.randperm(len(order), device=self.device, generator=generator)[:short]]
            while len(fill) < short:  # an order shorter than a batch
                fill = torch.cat([fill, order[:short - len(fill)]])
            order = torch.cat([order, fill])
        for idx in order.view(-1, self.batch_size):
            yield self.batch(idx, generator)

    def test_batches(self, size):
        for s in range(0, len(self.test_y), size):
            yield self.normalize(self.test_x[s:s + size]), self.test_y[s:s + size]


# ------------------------------------------------------------------------------------------------
# ResNet-32 of kaidic/LDAM-DRW models/resnet_cifar.py (He et al. 2016, CIFAR variant, option-A shortcut)
# ------------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: a parameter-free shortcut, subsample by 2 and zero-pad the new channels.
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def shortcut(self, x):
        if not self.pad:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(nn.Module):
    """3 stages x 5 basic blocks, 16/32/64 channels; 464,154 parameters for 10 classes.
    `features(x)` gives the 64-d pooled embedding, `linear` the head (methods may swap it)."""

    def __init__(self, num_classes=10, blocks=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # _weights_init of the official code: Kaiming-normal conv and linear weights
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.avg_pool2d(out, out.shape[3]).flatten(1)  # as the official code (deterministic backward on CUDA)

    def forward(self, x):
        return self.linear(self.features(x))


def resnet32(num_classes, device="cpu"):
    model = ResNet32(num_classes).to(device)
    return model.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else model


# ------------------------------------------------------------------------------------------------
# Schedule, precision, seeding
# ------------------------------------------------------------------------------------------------

def lr_at(epoch, args):
    """kaidic/LDAM-DRW adjust_learning_rate: warm-up lr*(e+1)/W for the first W epochs, then lr, times
    lr_decay once more from each of lr_decay_epochs (0.1 -> 0.001 at 160 -> 0.00001 at 180)."""
    if epoch < args.warmup_epochs:
        return args.lr * (epoch + 1) / args.warmup_epochs
    return args.lr * args.lr_decay ** sum(epoch >= e for e in args.lr_decay_epochs)


def set_lr(optimizer, epoch, args):
    lr = lr_at(epoch, args)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


BF16 = True  # bf16 autocast on CUDA; --fp32 turns it off (set_precision)


def set_precision(bf16):
    """bf16 autocast on CUDA (the default), or fp32 throughout with TF32 off too (--fp32)."""
    global BF16
    BF16 = bf16
    if not bf16:  # PyTorch's defaults otherwise: TF32 convolutions, full-fp32 matmuls (NormedLinear's cosines)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def autocast(device):
    """bf16 autocast on CUDA (unless --fp32), plain fp32 on CPU. Losses take `logits.float()`.
    cache_enabled=False: no cast weights are kept between calls, which CUDA-graph capture (--fast) requires."""
    kind = torch.device(device).type
    if kind == "cuda" and BF16:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return torch.autocast(kind, enabled=False)


def seed_everything(seed, deterministic, device):
    torch.manual_seed(seed)
    np.random.seed(seed)
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))  # streams and graphs (--fast) go to the current device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic kernel warns (naming itself) instead of ending the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    return torch.Generator(device=device).manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# --fast: the whole training step as one CUDA graph
# ------------------------------------------------------------------------------------------------

class GraphedStep:
    """`step(*inputs)` does what `fn(*inputs)` does (one training step: forward, loss, backward, optimizer step),
    but replays it from a CUDA graph. Built by `run.fast_step(fn, model, optimizer)` when --fast is given on CUDA.

    Why: eager PyTorch spends ~13 ms of CPU time per ResNet-32 step launching ~600 small kernels that take ~3 ms
    on an H100. A CUDA graph records the kernels of one call of `fn` once and launches them all with one call.
    What a replay does and does not see (the rules a step must follow):
      - tensor arguments are copied into fixed input buffers before each replay (a new batch, new class weights);
      - the non-tensor arguments (e.g. a class weight of None before DRW), the optimizer's learning rates (Python
        floats, frozen into the kernels), train/eval mode and the inputs' shapes select the graph: when any of
        them changes, the next `warmup` calls run eagerly, then a new graph is captured (7 times in a protocol
        run: every lr value; one more for a DRW switch on an epoch of its own, not at 160). The eager calls
        create the optimizer state and let cuDNN pick its kernels before capture (a captured step without
        momentum buffers would re-create them every replay);
      - anything else `fn` reads that changes between calls (a Python variable of the loop) is NOT seen by a
        replay: pass it as an argument. Host syncs (.item(), .tolist(), data-dependent shapes) cannot be
        captured and fail at capture time.
    Returned tensors are detached copies (a replay overwrites the graph's outputs). The counters in `stats` go into the
    results JSON."""

    def __init__(self, fn, model, optimizer, warmup=2):
        if warmup < 1:
            raise ValueError("warmup must be >= 1: the optimizer state has to exist before a capture")
        self.fn, self.model, self.optimizer, self.warmup = fn, model, optimizer, warmup
        self.side_stream = torch.cuda.Stream()  # eager warm-up runs on a side stream, as PyTorch's capture recipe
        self.key, self.graph, self.eager_left = None, None, 0
        self.static_inputs = self.static_output = None
        self.stats = {"eager_steps": 0, "graph_captures": 0, "graph_replays": 0}

    def configuration(self, inputs):
        """What a graph is specific to (see the class docstring)."""
        return (self.model.training, [group["lr"] for group in self.optimizer.param_groups],
                [(a.shape, a.stride(), a.dtype, a.device) if torch.is_tensor(a) else ("value", a) for a in inputs])

    def __call__(self, *inputs):
        key = self.configuration(inputs)
        if key != self.key:  # drop the old graph (and its memory); warm up, then capture a new one
            self.key, self.eager_left = key, self.warmup
            self.graph = self.static_inputs = self.static_output = None
        if self.eager_left:
            self.eager_left -= 1
            self.stats["eager_steps"] += 1
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                out = _map_tensors(torch.Tensor.detach, self.fn(*inputs))  # (see capture: no autograd graph kept)
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return out
        if self.graph is None:
            self.capture(inputs)
        for buffer, a in zip(self.static_inputs, inputs):
            if torch.is_tensor(a):
                buffer.copy_(a)
        self.graph.replay()
        self.stats["graph_replays"] += 1
        return _map_tensors(torch.Tensor.clone, self.static_output)

    def capture(self, inputs):
        device = next(self.model.parameters()).device
        for a in inputs:
            if torch.is_tensor(a) and a.device != device:
                raise ValueError(f"--fast: every tensor argument of the step must be on {device} (the model's "
                                 f"device), got one on {a.device}")
        self.static_inputs = [a.clone() if torch.is_tensor(a) else a for a in inputs]  # clone keeps channels_last
        self.graph = torch.cuda.CUDAGraph()
        try:
            # on the warm-up's stream, and nothing returned keeps the step's autograd graph alive: else autograd
            # finds its AccumulateGrad nodes made on another stream (a warning, and syncs it adds)
            with torch.cuda.graph(self.graph, stream=self.side_stream):
                self.static_output = _map_tensors(torch.Tensor.detach, self.fn(*self.static_inputs))
        except RuntimeError as e:
            raise RuntimeError("--fast: the training step could not be captured as a CUDA graph (a host sync such "
                               "as .item() or a data-dependent shape inside it?); run without --fast") from e
        self.stats["graph_captures"] += 1


def _map_tensors(fn, out):
    """fn applied to each tensor of a step's output (a tensor, or a tuple/list of them and other values)."""
    if torch.is_tensor(out):
        return fn(out)
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(fn, o) for o in out)
    return out


# ------------------------------------------------------------------------------------------------
# Evaluation on the balanced test set
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model, data, fp32=False, logits=False):
    """Softmax probabilities of the whole test set, in one pass of large batches: in bf16 on CUDA as the training
    (fast, for the curves), or in fp32 (fp32=True: the final evaluation, whose top-1 and ECE are reported; bf16
    logits, 8-bit mantissa, can flip near-ties). logits=True: the logits instead (as float32), for scores that
    rounding would tie (a confident image's probability rounds to 1, an unlikely class's to 0)."""
    was_training = model.training
    model.eval()
    size = 2500 if data.device.type == "cuda" else 500
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if fp32:  # no TF32 either (PyTorch lets cuDNN convolutions use it by default)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    probs = []
    try:
        for x, _ in data.test_batches(size):
            with torch.autocast(data.device.type, enabled=False) if fp32 else autocast(data.device):
                z = model(x).float()
                probs.append(z if logits else z.softmax(1))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        model.train(was_training)
    return torch.cat(probs)


def metrics(probs, labels, train_counts):
    """top-1, per-class accuracy, many/medium/few (None for an empty group) and ECE (15 bins), in %.
    Computed on the CPU: small, and bincount with weights has no deterministic CUDA kernel."""
    num_classes = len(train_counts)
    probs, labels = probs.float().cpu(), labels.cpu()
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    totals = torch.bincount(labels, minlength=num_classes).clamp(min=1)
    per_class = (100 * hits / totals).tolist()
    groups = {"many": [c for c, n in enumerate(train_counts) if n > MANY_ABOVE],
              "medium": [c for c, n in enumerate(train_counts) if FEW_BELOW <= n <= MANY_ABOVE],
              "few": [c for c, n in enumerate(train_counts) if n < FEW_BELOW]}
    bins = (conf * ECE_BINS).ceil().clamp(1, ECE_BINS).long() - 1   # bin b holds (b/15, (b+1)/15]
    gap = torch.bincount(bins, weights=correct - conf, minlength=ECE_BINS)
    out = {"top1": 100 * correct.mean().item(), "per_class_acc": per_class}
    for g, cs in groups.items():
        out[g] = sum(per_class[c] for c in cs) / len(cs) if cs else None
    out["ece"] = 100 * gap.abs().sum().item() / len(labels)
    return out


class Diverged(ArithmeticError):
    """A model whose test-set outputs are not finite (NaN or inf): it diverged, whatever its training loss says."""


def evaluate(model, data, fp32=False):
    """metrics() of the model on the test set; raises Diverged where its outputs are not finite."""
    probs = predict(model, data, fp32)
    if not torch.isfinite(probs).all():
        raise Diverged("its outputs on the test set became non-finite (NaN or inf)")
    return metrics(probs, data.test_y, data.train_counts)


# ------------------------------------------------------------------------------------------------
# A run: start (checks, data, seed), per-epoch bookkeeping, the results JSON
# ------------------------------------------------------------------------------------------------

def git_state():
    """(commit, dirty) of the checkout. A copy without .git (e.g. a working tree sent to a GPU machine) can name its
    commit in IMBALANCE_REF_GIT_COMMIT; whether it was dirty is then unknown (None)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0:
            # the code only: the results and the pages that a report or benchmark rewrites (README's tables,
            # results/) do not make the code that trains differ from the commit
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                         ":(exclude)results", ":(exclude)*.md"], cwd=ROOT,
                                        capture_output=True, text=True, timeout=10).stdout.strip())
            return head.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("IMBALANCE_REF_GIT_COMMIT") or None, None


def write_json(path, obj, compact=False):
    """Atomic (write_atomic): a kill never leaves half a results file. compact: one line, no spaces (a large file:
    less than half the size, which counts where results/ travels to a GPU with the data)."""
    write_atomic(path, lambda f: json.dump(obj, f, **({"separators": (",", ":")} if compact else {"indent": 1})))


def write_atomic(path, write, mode="w"):
    """write(f) into a temporary file in the same folder, then a rename. A kill never leaves half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the dump failed: leave no half file behind
            os.remove(tmp)
    remove_stale_temps(path)


def remove_stale_temps(path):
    """Delete <path>.tmp<pid> files left by a process killed while writing (that pid no longer runs).
    Nothing reads them as results; this only keeps results folders clean."""
    if os.name != "posix":
        return
    for stale in glob.glob(glob.escape(path) + ".tmp*"):
        pid = stale[len(path) + len(".tmp"):]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            try:
                os.remove(stale)
            except OSError:
                pass
        except OSError:  # it exists (another user's process): leave its file alone
            pass


def fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def top_activities(events, steps, n=10):
    """The n GPU activities (kernels, copies; grouped by name) with the most time per step: [{name, per_step (calls),
    ms_per_step, share (of the GPU time)}], the longest first."""
    by_name = {}
    for e in events:
        calls, us = by_name.get(e.name, (0, 0.0))
        by_name[e.name] = calls + 1, us + e.time_range.elapsed_us()
    total = sum(us for _, us in by_name.values()) or 1.0
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:n]
    return [{"name": name[:120], "per_step": calls / steps, "ms_per_step": us / 1e3 / steps, "share": us / total}
            for name, (calls, us) in top]


class StepProfiler:
    """--profile-steps: torch.profiler over `steps` training steps, from the `start`-th call of tick() (one call
    after each step) on. The result says where a step's time goes: GPU activities (kernels, copies) per step, their
    summed GPU time, and the wall time per step between two synchronizations. Wall time far above the GPU time:
    the CPU launching kernels bounds the step (eager PyTorch); about equal: the GPU does (then only fewer or larger
    kernels help). The profiler's own CPU cost inflates eager wall times a little. Never stops a run: a profiler
    failure is recorded as {"error": ...}; close() ends a window the run did not reach the end of."""

    def __init__(self, start, steps, device):
        self.start, self.steps, self.device = start, steps, torch.device(device)
        self.calls, self.prof, self.t0, self.result = 0, None, None, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tick(self):
        self.calls += 1
        if self.result is not None or self.calls < self.start:
            return
        try:
            if self.prof is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if self.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                else:  # (a CUDA build of torch on a machine without a GPU: no "gpuGetDeviceCount failed" line)
                    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
                self._sync()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.t0 = time.perf_counter()
            elif self.calls == self.start + self.steps:
                self._finish(self.steps)
        except Exception as e:  # a diagnostic must not end a long run
            self._fail(e)

    def close(self):
        """At the end of the window's epoch or of the run: a window still open ends here (fewer steps), one never
        reached, or left before a step inside it, says so."""
        if self.result is not None:
            return
        if self.prof is None or self.calls == self.start:
            self._fail(f"step {self.start + 1}, where profiling starts, was never reached")
            return
        try:
            self._finish(self.calls - self.start)
        except Exception as e:
            self._fail(e)

    def _finish(self, steps):
        self._sync()
        wall = time.perf_counter() - self.t0
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        events = prof.events()
        gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu_us = sum(e.time_range.elapsed_us() for e in gpu)
        top = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.cpu_parent is None]
        steps = max(steps, 1)
        self.result = {
            "steps": steps, "first_step": self.start + 1, "device": str(self.device),
            "wall_ms_per_step": 1e3 * wall / steps,
            "cpu_ops_per_step": len(top) / steps,  # top-level operator calls (a graph replay: one)
            "gpu_activities_per_step": len(gpu) / steps,
            "gpu_ms_per_step": gpu_us / 1e3 / steps,
            "mean_gpu_activity_us": gpu_us / len(gpu) if gpu else None,
            "gpu_busy_fraction": gpu_us / 1e6 / wall if wall > 0 else None,
            "top_gpu_kernels": top_activities(gpu, steps),  # where the GPU time goes: the next thing to remove
        }

    def _fail(self, e):  # e: an exception, or what went wrong in words
        self.result = {"error": e if isinstance(e, str) else f"{e.__class__.__name__}: {e}"}
        prof, self.prof = self.prof, None
        if prof is not None:
            try:
                prof.__exit__(None, None, None)
            except Exception:
                pass


PROGRESS_S = 30  # seconds of an epoch without a line, after which Run.log_step prints one (a CPU epoch: ~1 min)


class Run:
    """Bookkeeping of one training run. `start(args)` checks the output path before any work, seeds,
    loads the data; `log_step(loss)` after each step (a line every PROGRESS_S in a long epoch); `end_epoch(...)`
    evaluates every --eval-every epochs, prints progress and stops a diverged run; `finish(model)` writes the JSON.
    Methods put what they want saved besides into `run.extra` (a dict). `restore(model, optimizer, ...)` before the
    loop names what a checkpoint holds (--checkpoint-every) and, with --resume, returns the epoch to go on from."""

    def __init__(self, args):
        self.args = args
        self.path = result_path(args)
        if os.path.exists(self.path) and not args.overwrite:
            if args.skip_existing:
                print(f"skip: {self.path} exists", flush=True)
                raise SystemExit(0)
            raise UserError(f"{self.path} exists: pass --overwrite to replace it, or --skip-existing")
        # The results folder must be creatable now, not after hours of training (nothing is written yet).
        parent = os.path.abspath(os.path.dirname(self.path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        check(os.path.isdir(parent), f"cannot write {self.path}: {parent} is not a folder (see --out)")
        try:  # a real probe (os.access can be wrong on network file systems); the file never shows up
            tempfile.TemporaryFile(dir=parent).close()
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {parent} is not writable ({e.__class__.__name__}); "
                            "see --out")
        self.t0 = time.time()
        self.device = args.device
        self.generator = seed_everything(args.seed, args.deterministic, args.device)
        self.data = Data(args, args.device)
        self.setup_s = time.time() - self.t0  # data loading (the timed part of a benchmark starts after it)
        self.graphed = None
        self.history, self.extra = [], {}
        self._loss_sum, self._steps = 0.0, 0
        self.last_eval = None
        self.state, self.resumed = None, []  # what a checkpoint holds (restore); epochs a run was resumed at
        self.switched = []  # [{"epoch": resumed at, arg: [before, after]}] where a COMPUTED_WITH argument changed there
        self.profiler = None  # --profile-steps: armed at the end of the first epoch (end_epoch)
        self._epoch_steps = None  # the steps of the last epoch ended: its progress line says them the first time
        self._last_print = time.time()  # log_step prints a line in an epoch that goes on for PROGRESS_S without one
        self._first_end = None  # (epoch, elapsed) at the end of this invocation's first epoch: the ETA counts from it
        self.tag = f"[{args.method} seed{args.seed}]"
        self.key = checkpoint_key(args, os.path.abspath(sys.argv[0]))  # before the method settles anything more
        print(f"{self.tag} {setting_name(args)}: {len(self.data)} training images, counts {self.data.train_counts}, "
              f"{len(self.data.test_y)} test images, device {self.device_name()}, batch {args.batch_size} "
              f"-> {self.path}", flush=True)
        late = unreached_switches(args)
        if late:
            print(f"{self.tag} note: a {args.epochs}-epoch run never reaches {late} (0-based epochs): what switches "
                  "on there does not happen in this run", file=sys.stderr, flush=True)

    def device_name(self):
        d = torch.device(self.device)
        return torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu"

    def fast_step(self, fn, model, optimizer):
        """The training step to call: `fn` itself, or with --fast on CUDA a GraphedStep replaying it as one CUDA
        graph (same math; `fn` must take every tensor that changes between steps as an argument)."""
        if not self.args.fast or torch.device(self.device).type != "cuda":
            return fn
        self.graphed = GraphedStep(fn, model, optimizer)
        return self.graphed

    def log_step(self, loss):
        self._loss_sum += loss.detach().float()   # a device tensor: no sync per step
        self._steps += 1
        if self.profiler is not None:
            self.profiler.tick()
        now = time.time()  # (no sync: a long epoch is one of the CPU or a slow eager path, never --fast's)
        if now - self._last_print >= PROGRESS_S:
            self._last_print = now
            of = f"/{self._epoch_steps}" if self._epoch_steps else ""
            print(f"{self.tag} epoch {len(self.history) + 1:3d}/{self.args.epochs}  step {self._steps}{of}  "
                  f"elapsed {fmt_time(now - self.t0)}", flush=True)

    def end_epoch(self, epoch, lr, model):
        args = self.args
        train_loss = (self._loss_sum / max(self._steps, 1)).item() if self._steps else float("nan")
        steps, self._loss_sum, self._steps = self._steps, 0.0, 0
        if epoch == 1 and self.profiler is not None:
            self.profiler.close()  # the window ends with the second epoch at the latest, before its evaluation
        if epoch == 0 and args.profile_steps:  # (a resumed run never ends epoch 0 here: its window is past)
            # --profile-steps: in the second epoch, from its 4th to its 11th step (past --fast's 2 eager warm-up steps
            # and the capture of the epoch's new lr: GraphedStep) as the epoch's length allows, which is the
            # method's (a sampler's), not the training set's
            offset = max(3, min(10, steps // 2))
            self.profiler = StepProfiler(steps + offset, min(args.profile_steps, steps - offset), args.device)
            self.profiler.calls = steps
            if steps <= offset:
                self.profiler.result = {"error": f"an epoch of {steps} steps is too short to profile: the window "
                                                 f"starts after step {offset} of the second epoch"}
        if not math.isfinite(train_loss):
            self.diverged(epoch, lr, f"the training loss became {train_loss}")
        entry = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "test_top1": None}
        last = epoch == args.epochs - 1
        if last or (epoch + 1) % args.eval_every == 0:
            t_eval = time.time()  # (the .item() above waited for the epoch's GPU work: this times the evaluation)
            try:
                self.last_eval = evaluate(model, self.data, fp32=last)  # the reported final evaluation in fp32
            except Diverged as e:  # a finite mean loss over the epoch, and yet a model gone to inf or NaN
                self.diverged(epoch, lr, str(e))
            entry["test_top1"] = self.last_eval["top1"]
            entry["eval_s"] = round(time.time() - t_eval, 3)  # (evaluate ends on the CPU: the GPU work is in it)
        elapsed = time.time() - self.t0
        entry["elapsed_s"] = round(elapsed, 3)  # since the start, including data loading and evaluations
        self.history.append(entry)
        if args.checkpoint_every and (epoch + 1) % args.checkpoint_every == 0 and not last:
            self.checkpoint(epoch)
        # the seconds per epoch since this invocation's first epoch ended (the first one also loads the data, warms
        # up, captures a CUDA graph); until a second has ended, the mean so far
        self._first_end = self._first_end or (epoch, elapsed)
        since, at = self._first_end
        eta = ((elapsed - at) / (epoch - since) if epoch > since else elapsed / (epoch + 1)) * (args.epochs - epoch - 1)
        test = f"  test {entry['test_top1']:5.2f}%" if entry["test_top1"] is not None else ""
        first = "" if self._epoch_steps else f"  ({steps} step{'s' * (steps != 1)})"  # the method's epoch length
        self._epoch_steps = steps
        print(f"{self.tag} epoch {epoch + 1:3d}/{args.epochs}  lr {lr:.5f}  loss {train_loss:.4f}{test}  "
              f"elapsed {fmt_time(elapsed)}  eta {fmt_time(eta)}{first}", flush=True)
        self._last_print = time.time()

    def diverged(self, epoch, lr, what):
        """End a diverged run: its JSON with status 'diverged' (the report counts it, a rerun skips it), no checkpoint,
        a one-line error."""
        self.save(status="diverged", epochs_completed=epoch, diverged_epoch=epoch)
        self.drop_checkpoint()  # its JSON ends it: no later invocation goes on
        raise SystemExit(f"error: {self.tag} {what} in epoch {epoch + 1} (lr {self.args.lr if lr is None else lr:g}): "
                         f"the run diverged; status 'diverged' written to {self.path}")

    def restore(self, model, optimizer, *more):
        """Name what a checkpoint holds: the model, the optimizer and any object with state_dict() and
        load_state_dict() (e.g. a sampler's per-class streams); the run's history, extra, elapsed time and every
        random generator go in too. With --resume and a checkpoint of this run made by the same arguments and
        code, load it and return the epoch after it; else return 0."""
        self.state = (model, optimizer, more)
        path = checkpoint_path(self.args)
        ck, why = load_checkpoint(self.args, self.key)
        if ck is None:
            if why:
                print(f"{self.tag} note: {why}: starting from epoch 1", file=sys.stderr, flush=True)
            elif self.args.resume:  # the first invocation of a run under --resume (run_all.sh passes it to every run)
                print(f"{self.tag} --resume: no checkpoint at {path} yet: starting from epoch 1", flush=True)
            return 0
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        match_layouts(optimizer)
        for obj, state in zip(more, ck["more"]):
            obj.load_state_dict(state)
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        self.generator.set_state(ck["rng"]["generator"])
        if ck["rng"]["cuda"] is not None and torch.device(self.device).type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], torch.device(self.device))
        self.history, self.last_eval, self.resumed = ck["history"], ck["last_eval"], ck["resumed"] + [ck["epoch"] + 1]
        before, now = ck.get("computed_with", {}), self.computed_with()
        changed = {k: [before[k], now[k]] for k in now if k in before and before[k] != now[k]}
        self.switched = ck.get("switched", []) + ([{"epoch": ck["epoch"] + 1, **changed}] if changed else [])
        self.extra.clear()
        self.extra.update(ck["extra"])
        self.t0 = time.time() - ck["elapsed_s"]  # the wall time counts the time trained so far, not the pause
        if self.graphed is not None:
            for k, v in ck["fast_path"].items():
                self.graphed.stats[k] += v
        print(f"{self.tag} resumed from {path}: epoch {ck['epoch'] + 1} done, going on with epoch {ck['epoch'] + 2}",
              flush=True)
        return ck["epoch"] + 1

    def computed_with(self):
        """The COMPUTED_WITH arguments of this invocation (a method without one: None)."""
        return {k: getattr(self.args, k, None) for k in COMPUTED_WITH}

    def checkpoint(self, epoch):
        """The state after `epoch`, written atomically (write_atomic)."""
        if self.state is None:
            return
        model, optimizer, more = self.state
        cuda = torch.device(self.device).type == "cuda"
        ck = {"epoch": epoch, "key": self.key,
              "model": model.state_dict(), "optimizer": optimizer.state_dict(), "more": [o.state_dict() for o in more],
              "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                      "generator": self.generator.get_state(),
                      "cuda": torch.cuda.get_rng_state(torch.device(self.device)) if cuda else None},
              "history": self.history, "last_eval": self.last_eval, "extra": self.extra, "resumed": self.resumed,
              "computed_with": self.computed_with(), "switched": self.switched,
              "elapsed_s": time.time() - self.t0,
              "fast_path": dict(self.graphed.stats) if self.graphed is not None else {}}
        write_atomic(checkpoint_path(self.args), lambda f: torch.save(ck, f), mode="wb")

    def drop_checkpoint(self):
        if os.path.exists(checkpoint_path(self.args)):
            os.remove(checkpoint_path(self.args))

    def finish(self, model):
        if self.last_eval is None or self.history[-1]["test_top1"] is None:
            try:
                self.last_eval = evaluate(model, self.data, fp32=True)
            except Diverged as e:
                self.diverged(len(self.history) - 1, self.history[-1]["lr"] if self.history else None, str(e))
        self.save(status="completed", epochs_completed=len(self.history), final=self.last_eval)
        self.drop_checkpoint()  # the run is whole: its JSON says all
        f = self.last_eval
        groups = "  ".join(f"{g} {f[g]:.2f}" for g in ("many", "medium", "few") if f[g] is not None)
        print(f"{self.tag} final (epoch {len(self.history)}): top-1 {f['top1']:.2f}%  {groups}  "
              f"ECE {f['ece']:.2f}  wall {fmt_time(time.time() - self.t0)}  -> {self.path}", flush=True)

    def _profile(self):
        if self.profiler is None:
            if not self.args.profile_steps:
                return None
            return {"error": "resumed: the second epoch, where profiling happens, ran in an earlier invocation"
                    if self.resumed else "the run ended before its second epoch, where profiling starts"}
        self.profiler.close()
        return self.profiler.result

    def save(self, status, epochs_completed, final=None, **more):
        commit, dirty = git_state()
        args = {k: v for k, v in vars(self.args).items()}
        script = os.path.abspath(sys.argv[0])
        write_json(self.path, {
            "method": self.args.method,
            "status": status,
            **more,
            "setting": setting_name(self.args),
            "args": args,
            "command": " ".join([os.path.relpath(script, ROOT)] + sys.argv[1:]),
            "train_class_counts": self.data.train_counts,
            "subset_sha256": self.data.subset_sha256,
            "final": final,
            "history": self.history,
            "epochs_completed": epochs_completed,
            "wall_time_s": time.time() - self.t0,
            "setup_time_s": self.setup_s,
            "fast_path": self.graphed.stats if self.graphed is not None else None,
            "resumed_at_epochs": self.resumed,  # --resume: the 0-based epochs a killed run went on from
            "switched_at_resume": self.switched,  # ... where it went on with another --fast or --class-grads
            "profile": self._profile(),
            # set by run_all.sh: how many runs shared the device (JOBS), and whether under a CUDA MPS daemon
            "runs_at_once": int(os.environ.get("IMBALANCE_REF_RUNS_AT_ONCE", "1")),
            "mps": os.environ.get("IMBALANCE_REF_MPS") == "1",
            "device_name": self.device_name(),
            # the training forward and backward: bf16 autocast (CUDA, the default there) or fp32 (--fp32, the CPU)
            "precision": "bf16" if BF16 and torch.device(self.device).type == "cuda" else "fp32",
            "torch_version": torch.__version__,
            "git_commit": commit,
            "git_dirty": dirty,
            "script_sha256": hashlib.sha256(open(script, "rb").read()).hexdigest() if os.path.exists(script) else None,
            # the code this run started with (its checkpoint key's: the files may change while it trains)
            "code_sha256": self.key["code"][0],
            "common_code_sha256": self.key["code"][1],  # the shared loop's version (provenance)
            "extra": self.extra,
        })


def start(args):
    return Run(args)


def precision_of(result):
    """The training precision a results JSON records, or for one written before it did: fp32 on the CPU or with
    --fp32, else bf16."""
    return result.get("precision") or ("fp32" if result["device_name"] == "cpu" or result["args"].get("fp32")
                                       else "bf16")


def code_sha256(path, end=None):
    """sha256 of a script's code without its docstring and comments (ast.unparse of the rest): the header's
    generated Result line and comment edits leave it unchanged, a change to what runs does not. With `end`, only
    the statements above the file's first line that starts with `end` count."""
    import ast
    try:
        text = open(path).read()
        tree = ast.parse(text)
    except (OSError, SyntaxError, ValueError):
        return None
    if tree.body and isinstance(tree.body[0], ast.Expr) \
            and isinstance(getattr(tree.body[0], "value", None), ast.Constant) \
            and isinstance(tree.body[0].value.value, str):
        tree.body = tree.body[1:]
    if end is not None:
        stop = next((i for i, line in enumerate(text.splitlines(), 1) if line.startswith(end)), None)
        tree.body = [node for node in tree.body if stop is None or node.lineno < stop]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()


# common.py's code that trains ends at the line that starts with this: the run_all.sh table and the report follow.
# Its hash (in a checkpoint's key, a run's JSON, a GPU check of the code) covers only the part above, so that an edit
# of the report keeps a checkpoint resumable and a GPU check valid; a test checks that nothing above that line, and
# no method file, uses a name defined below it.
TRAINING_CODE_ENDS = "# The table of run_all.sh"


def common_code_sha256(path=os.path.abspath(__file__)):
    """code_sha256 of common.py's code that trains (above TRAINING_CODE_ENDS)."""
    return code_sha256(path, end=TRAINING_CODE_ENDS)


# ------------------------------------------------------------------------------------------------
# The table of run_all.sh: its rows and seeds (read from the script), which runs exist, how long they take
# ------------------------------------------------------------------------------------------------

RUN_ALL = os.path.join(ROOT, "run_all.sh")


def table_rows(path=RUN_ALL):
    """The rows of run_all.sh (script and flags), read from the script itself so the two never differ."""
    text = open(path).read()
    block = text[text.index("ROWS=("):]
    block = block[:block.index("\n)")]
    return [m.group(1) for m in re.finditer(r'^\s*"([^"]+)"', block, re.M)]


def table_seeds(path=RUN_ALL):
    """The seeds of a table run: run_all.sh's default SEEDS (the last default in the script, outside SMOKE=1)."""
    found = re.findall(r"SEEDS=\$\{SEEDS:-([^}]*)\}", open(path).read())
    return [int(s) for s in found[-1].split()]


@functools.lru_cache(maxsize=None)
def _method_module(script):
    path = os.path.join(ROOT, "methods", script)
    check(script.endswith(".py") and os.path.isfile(path), f"methods/{script} does not exist")
    spec = importlib.util.spec_from_file_location(f"_imbalance_ref_{script[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row_args(row, flags=()):
    """The arguments methods/<row> runs with when `flags` are added (its own parse_args: the method name, hence the
    results folder, comes from the method file). Notes the parser prints are swallowed."""
    script, *row_flags = shlex.split(row)
    argv0, sys.argv[0] = sys.argv[0], script  # the parser's name in its errors: the method's, not common.py's
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return _method_module(script).parse_args(row_flags + list(flags))
    except SystemExit as e:  # (the method's common.UserError: another class when this file runs as __main__)
        if not str(e.code).startswith("error: "):
            raise
        raise UserError(f"run_all.sh row '{row}': {str(e.code).removeprefix('error: ')}; SETTINGS, EXTRA and "
                        "DATA_FLAGS go to every row (ONLY='<pattern>' runs only the rows that match)") from None
    finally:
        sys.argv[0] = argv0


def table_methods(path=RUN_ALL):
    """{row of run_all.sh: the method name (results folder) it writes}; rows whose script is missing are left out."""
    return {row: row_args(row, ["--dataset", "synthetic", "--device", "cpu"]).method for row in table_rows(path)
            if os.path.isfile(os.path.join(ROOT, "methods", row.split()[0]))}


def inherent_multiple(script, args, num_classes):
    """(multiple, why): what a step of methods/<script> run with `args` (a dict) costs against ERM's by the passes its
    math needs, in ERM steps (a backward pass counted as two forwards): SAM 2 (two forward-backward passes); PCNSGD
    and PCNSGD+O one forward and C backward passes, (1 + 2C) / 3; with --norm group C forward-backward passes on the
    class subsets, C (small kernels: a step is bound by their number, not by their work); every other row 1 (its
    loss or sampler adds no pass)."""
    if script == "sam.py":
        return 2.0, "two forward-backward passes"
    if script == "pcn_sgd.py" and args.get("variant") != "sgd_o":
        if args.get("norm") == "group":
            return float(num_classes), f"C = {num_classes} forward-backward passes, one per class"
        return (1 + 2 * num_classes) / 3, f"one forward and C = {num_classes} backward passes"
    return 1.0, "one forward-backward pass"


# Rows whose epochs are not ERM's (undersampling: C x n_min images): their runs are no measure of an ERM run's length.
SHORT_EPOCH_SCRIPTS = ("undersampling.py",)


def result_multiple(result):
    """inherent_multiple of the run a results JSON records (its command, arguments and number of classes)."""
    script = os.path.basename(result["command"].split()[0])  # (joined without quoting: no shlex)
    return inherent_multiple(script, result["args"], len(result["train_class_counts"]))


def speed_path(device_name, args):
    """What sets a run's speed besides its method: "cpu", or on a GPU the path and precision it asked for ("cuda
    --fast bf16", "cuda eager fp32"...; --fast and --fp32 do nothing on the CPU); pcn_sgd.py's --class-grads batched
    appended (" --class-grads batched": the same g_l as the default loop's, at another speed). `device_name`: a
    results JSON's, or "cuda"."""
    batched = " --class-grads batched" if args.get("class_grads") == "batched" else ""
    if device_name == "cpu":
        return "cpu" + batched
    return f"cuda {'--fast' if args.get('fast') else 'eager'} {'fp32' if args.get('fp32') else 'bf16'}{batched}"


def run_seconds(result):
    """(fixed, per epoch): a run's wall time (data loading and evaluations included) as fixed seconds (start-up, the
    first epoch's extra) plus seconds per epoch, the mean step of its history's elapsed_s from the first epoch's end
    to the last's (evaluations and the final one included; a resumed run's elapsed_s goes on from its checkpoint's),
    so that a run of E epochs is expected to take fixed + E x per epoch. With one epoch: its setup_time_s fixed, the
    rest per epoch. `result`: a results JSON, or a checkpoint's history and elapsed time as one."""
    wall, history = float(result["wall_time_s"]), result.get("history") or []
    times = [h.get("elapsed_s") for h in history]
    epochs = max(1, len(history) or int(result["args"]["epochs"]))
    if len(history) > 1 and None not in times and times[-1] > times[0]:
        per_epoch = min((times[-1] - times[0]) / (len(times) - 1), wall / epochs)
    else:
        per_epoch = (wall - min(float(result.get("setup_time_s") or 0), wall)) / epochs
    return wall - per_epoch * epochs, per_epoch


def _completed_walls(out, at_once=1):
    """{(setting, method): [(fixed seconds, seconds per epoch, its result_multiple or None, its speed_path) of each
    completed run]} of the results JSON under `out` (others ignored; the multiple None for undersampling, whose epochs
    hold C x n_min images, and for a JSON without its command): its wall time as run_seconds splits it, as if
    `at_once` runs shared the device: a run made beside fewer others counts at_once / its runs_at_once times longer
    (never shorter: a run beside fewer others than it had would not end sooner than it did)."""
    walls = {}
    for path in glob.glob(os.path.join(out, "*", "*", "seed*.json")):
        try:
            with open(path) as f:
                r = json.load(f)
            if r["status"] == "completed":
                scale = max(1.0, at_once / (r.get("runs_at_once") or 1))
                try:
                    script = os.path.basename(r["command"].split()[0])
                    multiple = None if script in SHORT_EPOCH_SCRIPTS else result_multiple(r)[0]
                except (KeyError, TypeError, AttributeError, IndexError):  # a JSON without its command or arguments
                    multiple = None
                fixed, per_epoch = run_seconds(r)
                walls.setdefault((r["setting"], r["method"]), []).append(
                    (fixed * scale, per_epoch * scale, multiple, speed_path(r["device_name"], r["args"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return walls


def arg_differences(run_args, expected):
    """[(name, the run's value, the expected value)] of the training arguments where a run's arguments (a results
    JSON's "args") differ from `expected` (vars() of its row's parse_args): RUN_ONLY_ARGS and the dataset are not
    compared, nor an expected None (a value the run fills in from its data: oversampling's --num-samples), nor an
    argument the run's JSON lacks (one added to the method since, whose default keeps what the run did), nor the
    ratio of --imbalance-type none, which uses none."""
    unused = {"imbalance_ratio"} if expected.get("imbalance_type") == "none" else set()
    return [(k, run_args[k], v) for k, v in sorted(expected.items())
            if k not in RUN_ONLY_ARGS | {"dataset"} | unused and v is not None and k in run_args and run_args[k] != v]


def _show(value):
    """An argument's value as on the command line: a list as its words."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _flag_values(differences, side):
    """"--epochs 200, --lr 0.1" from arg_differences, the run's values (side 1) or the expected ones (side 2)."""
    return ", ".join(f"--{d[0].replace('_', '-')} {_show(d[side])}" for d in differences)


def check_data(args, hint):
    """Before any run starts (run_all.sh's plan, the benchmark): the data of a run's `args` is there (an image
    folder's layout; the torchvision CIFAR files, downloaded here once with --download, not by several runs at once),
    else a UserError ending with `hint`, what to set instead (the data flags of the script checking, not a run's)."""
    if args.dataset == "synthetic":
        return
    try:
        if args.dataset == "imagefolder":
            list_imagefolder(args.data_dir)
        else:
            with contextlib.redirect_stdout(sys.stderr):  # run_all.sh reads the plan from stdout
                load_cifar(args.dataset, args.data_dir or os.path.join(ROOT, "data"), args.download)
    except UserError as e:
        raise UserError(f"{str(e.code).removeprefix('error: ')} ({hint})")


def plan(jobs, flags, out, at_once=1, extra=()):
    """For run_all.sh: for each job "row|imbalance type|ratio|seed", the line
    "<done> <seconds> <epochs done> <epochs> <ERM run> <passes> <measures> <results JSON>": done is 1 when the JSON
    exists (the run is skipped), seconds what the job is expected to take by the same method's completed runs in the
    same setting (else in any setting; else by its own run cut short, where its checkpoint was made on the job's
    path; -1: never run): the longest, each run's fixed seconds plus its seconds per epoch times the job's epochs
    (run_seconds), with `at_once` runs sharing the device (_completed_walls), counting only the runs made on the job's
    speed_path (the CPU, or on a GPU the same --fast or eager and precision: a GPU run says nothing of a CPU run's
    length; and the same --class-grads); epochs done those its checkpoint holds (0 without --resume or a checkpoint
    it can use); for a job still to run, what a run of a method never run is expected to take: ERM run, the seconds
    of an ERM run of the job's epochs by the completed runs of every method in the setting on its path less
    --class-grads batched (whose runs measure none: their step is not inherent_multiple's passes) (else in any
    setting; -1: none), each run's seconds so reckoned over its inherent_multiple, the largest, and passes, the job's
    own inherent_multiple x 1000 (a SAM row takes 2000 / 1000 ERM runs; -1 -1 for a job done); measures 1 where the
    job's run, once ended, measures an ERM run (0: SHORT_EPOCH_SCRIPTS, and --class-grads batched).
    Checks every job's flags first, and the data of each job still to run (check_data), so that missing data stops
    run_all.sh before any run starts. The checkpoint of a run whose JSON exists is deleted: a copy carried from an
    earlier session, where the run was cut short, would otherwise travel to every later one. `flags` go before the
    job's own (run_all.sh's DATA_FLAGS), `extra` after them (its EXTRA), as on a run's command line: a job value
    EXTRA would change is refused, and so is a job whose row's folder holds a run (of any seed) of other training
    arguments (arg_differences; EXTRA="--epochs 5" into a folder of 200-epoch runs): the row would average both, or
    count that run as the job's. Notes on stderr that the runs will train on the CPU where --device auto found no GPU
    (real data only)."""
    walls = _completed_walls(out, at_once)
    lines, checked, paths, here, compared, told_cpu = [], set(), {}, {}, set(), False
    for job in jobs:
        row, itype, ratio, seed = job.split("|")
        args = row_args(row, list(flags) + ["--imbalance-type", itype, "--imbalance-ratio", ratio, "--seed", seed,
                                            "--out", out, "--skip-existing"] + list(extra))
        for name, flag, env, value in (("seed", "--seed", "SEEDS", int(seed)), ("out", "--out", "OUT", out),
                                       ("imbalance_type", "--imbalance-type", "SETTINGS", itype),
                                       ("imbalance_ratio", "--imbalance-ratio", "SETTINGS", float(ratio))):
            check(getattr(args, name) == value,
                  f"run_all.sh: EXTRA sets {flag}, which run_all.sh gives every run itself: use {env}")
        path = result_path(args)
        check(path not in paths, f"run_all.sh: '{paths.get(path)}' and '{job}' would both write {path} (SETTINGS or "
                                 "SEEDS name a setting or seed twice, or EXTRA gives every row one --name)")
        paths[path] = job
        source = (args.dataset, args.data_dir)
        if source not in checked and not os.path.exists(path):
            check_data(args, "run_all.sh: DATA_DIR=<folder>, or DATA_FLAGS for another dataset")
            checked.add(source)
        # a run of the row (any seed) made with other training arguments: the job's own would count as done, and the
        # row would average both (not compared without the data: some defaults come from its number of classes; once
        # per row's folder: its seeds' jobs differ only in the seed)
        folder = os.path.dirname(path)
        for other in sorted(glob.glob(os.path.join(folder, "seed*.json"))) \
                if folder not in compared and class_count(args) is not None else []:
            try:
                with open(other) as f:
                    differ = arg_differences(json.load(f)["args"], vars(args))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):  # (the report says what is wrong)
                differ = []
            check(not differ, f"run_all.sh: {other} holds a run with {_flag_values(differ, 1)}, where this "
                              f"invocation's runs of its row would have {_flag_values(differ, 2)} (SETTINGS, EXTRA, "
                              "DATA_FLAGS or the row): the row would average both, or count that run as done; give "
                              "these runs another OUT=<folder>, or delete that JSON to train it again")
        compared.add(folder)
        setting = setting_name(args)
        device = "cpu" if args.device == "cpu" else "cuda"  # (finish_args resolved "auto")
        # the path this job will take, and the one of its device, --fast and precision that an ERM run takes (a
        # --class-grads batched job's ERM run is measured by the other rows' runs; a batched run measures none, its
        # step not being inherent_multiple's passes)
        speed, base = speed_path(device, vars(args)), speed_path(device, {**vars(args), "class_grads": None})
        asked = any(f.startswith("--dev") for f in [*flags, *extra])  # (--device cpu, --device=cpu, --dev cpu)
        if device == "cpu" and args.dataset != "synthetic" and not asked and not told_cpu:
            told_cpu = True  # (--device auto found no GPU: a user who meant one should know before hours go by)
            print("run_all.sh: note: no CUDA GPU here, so the runs train on the CPU (eager, fp32): an epoch of "
                  "CIFAR-10-LT takes a minute or more on a few cores, a 200-epoch run hours; the table is meant for "
                  "a GPU (EXTRA=\"--device cpu\" silences this note)", file=sys.stderr, flush=True)
        for p in {speed, base} - set(here):  # the runs made on a path: (fixed, per epoch, multiple)
            here[p] = {key: [(f, e, k) for f, e, k, q in ws if q == p] for key, ws in walls.items()}
        same = here[speed].get((setting, args.method)) \
            or [w for (s, m), ws in here[speed].items() if m == args.method for w in ws]
        erm_run, passes = -1, -1
        if not os.path.exists(path):  # (its data was checked above, so its number of classes is known)
            erm_runs = [(f + e * args.epochs) / k for (s, _), ws in here[base].items() if s == setting
                        for f, e, k in ws if k] \
                or [(f + e * args.epochs) / k for ws in here[base].values() for f, e, k in ws if k]
            erm_run = round(max(erm_runs)) if erm_runs else -1
            passes = round(1000 * inherent_multiple(row.split()[0], vars(args), class_count(args))[0])
        if os.path.exists(path) and os.path.exists(checkpoint_path(args)):
            os.remove(checkpoint_path(args))
        ck, _ = load_checkpoint(args, checkpoint_key(args, os.path.join(ROOT, "methods", row.split()[0])))
        done = min(ck["epoch"] + 1, args.epochs) if ck else 0
        if not same and ck and speed == speed_path(device, {**vars(args), "class_grads": None,
                                                            **(ck.get("computed_with") or {}),
                                                            "fast": bool(ck.get("fast_path"))}):
            # a run cut short, on the job's path (its key holds the device, the precision and the epochs; --fast is
            # what its fast_path says, --class-grads its computed_with): what its epochs so far took
            try:
                same = [run_seconds({"wall_time_s": ck["elapsed_s"], "history": ck["history"],
                                     "args": {"epochs": done}})]
            except (KeyError, TypeError, ValueError):
                pass
        seconds = round(max(f + e * args.epochs for f, e, *_ in same)) if same else -1
        measures = row.split()[0] not in SHORT_EPOCH_SCRIPTS and speed == base
        lines.append(f"{int(os.path.exists(path))} {seconds} {done} {args.epochs} {erm_run} {passes} {int(measures)} "
                     f"{path}")
    return lines


# ------------------------------------------------------------------------------------------------
# Report: results/**/seed*.json -> results/RESULTS.md and plots
# ------------------------------------------------------------------------------------------------

# Published top-1 accuracy (%) on the ORIGINAL CIFAR pixels, final-or-best as each paper reports it
# (100 - error of LDAM Tab. 2/5, Cui Tab. 2, the MM slides' Tab. 1, the Saddle-LongTail README);
# each method file's header names its table and row. Keys: (dataset, imbalance type, ratio) -> method -> accuracy.
PAPER_TOP1 = {
    ("cifar10", "exp", 100): {"erm": 70.36, "focal": 70.38, "oversampling": 70.55, "drs": 74.50,
                              "class_weights": 72.37, "erm_drw": 74.86, "cb_focal": 74.57, "ldam": 73.35,
                              "ldam_drw": 77.03, "mm_drw": 78.02, "mm_ldam_drw": 78.63,
                              "sam_ce_drw": 80.6, "sam_ldam_drw": 81.9},
    ("cifar10", "exp", 10): {"erm": 86.39, "focal": 86.66, "oversampling": 86.79, "drs": 86.72,
                             "class_weights": 86.54, "erm_drw": 86.88, "cb_focal": 87.10, "ldam": 86.96,
                             "ldam_drw": 88.16, "mm_drw": 88.56, "mm_ldam_drw": 88.74},
    ("cifar10", "step", 100): {"erm": 63.30, "focal": 63.91, "oversampling": 61.86, "drs": 72.03,
                               "class_weights": 61.94, "erm_drw": 71.60, "cb_focal": 60.27, "ldam": 66.58,
                               "ldam_drw": 76.92, "mm_drw": 77.17, "mm_ldam_drw": 78.18},
    ("cifar100", "exp", 100): {"erm": 38.32, "focal": 38.41, "oversampling": 33.44, "drs": 40.33,
                               "class_weights": 33.99, "erm_drw": 40.66, "cb_focal": 36.02, "ldam": 39.60,
                               "ldam_drw": 42.04, "mm_drw": 42.86, "mm_ldam_drw": 43.47,
                               "sam_ce_drw": 44.6, "sam_ldam_drw": 45.4},
}
# The methods the per-class plot shows when a setting has more than 8 (solid lines in the curves).
MAIN_METHODS = ("erm", "oversampling", "drs", "class_weights", "cb_focal", "erm_drw", "ldam_drw", "mm_drw",
                "logit_adjust", "vs", "pcnsgd_o", "sam_ldam_drw")
PAPER_NOTES = ("Published numbers were measured on the original CIFAR pixels by the papers' own code, which reports "
               "the best test epoch of one run. The JPEG copy should cost every method some accuracy (not "
               "measured here: no run on the original pixels is committed), so compare each method's difference "
               "from ERM with the paper's, not the values. 'focal' (the softmax focal loss of the LDAM code) is "
               "compared with LDAM's Focal row, which is Cui's sigmoid focal loss at gamma 1 (the sigmoid form "
               "runs as class_balanced.py --loss focal --beta 0 --name sigmoid_focal). "
               "'oversampling', 'drs' and 'class_weights' are compared with LDAM's CB-RS / DRS / CB-RW rows "
               "(beta 0.9999 weights, close to 1/n; ours use 1/n). 'cb_focal' is compared with LDAM's CB Focal row: "
               "Cui's focal loss at beta 0.9999, the one run here, on CIFAR-10-LT R=100 (also Cui's best there), "
               "but at beta 0.999 on CIFAR-100-LT R=100 (Cui Fig. 10; Cui's best there, beta 0.9, has 60.40% "
               "error). 'mm_drw' and 'mm_ldam_drw' run the MM loss of the slides, each "
               "sample with its own label; the official HMMLoss reads the first sample's label for the whole "
               "batch, so the published numbers come from a different loss. Rows with no published number: "
               "'pcnsgd' and 'pcnsgd_o' train with this protocol's optimizer (momentum 0.9, weight decay 2e-4, "
               "BatchNorm) and ERM's steps per epoch, where the official code uses momentum 0, no weight decay, "
               "GroupNorm and, for +O, epochs of n_max / (B/C) steps (4x ERM's on CIFAR-10-LT R=100); 'cdt' uses "
               "gamma 0.3, the VS-loss code's default, not a tuned value; 'sam_ce_drw' and 'sam_ldam_drw' use the rho "
               "published for R=100 in every setting.")


def paper_setting(setting):
    """The key of PAPER_TOP1 for a results folder's setting (cifar10-jpeg-exp-r100: ('cifar10', 'exp', 100.0)), None
    for a setting no paper published (synthetic data, <data>-asis, another ratio)."""
    if setting.count("-") < 2:  # (<data>-asis)
        return None
    dataset, itype, ratio = setting.rsplit("-", 2)
    base = "cifar100" if "cifar100" in dataset else "cifar10" if "cifar10" in dataset else None
    try:
        key = (base, itype, float(ratio[1:]))
    except ValueError:
        return None
    return key if key in PAPER_TOP1 else None


def paper_top1(setting, method):
    key = paper_setting(setting)
    return None if key is None else PAPER_TOP1[key].get(method)


def load_results(results_dir):
    """Every results JSON under results_dir, checked against its path. A file whose args disagree with
    where it lies (setting, method, seed) is refused: that is how runs end up in the wrong table."""
    runs = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "*", "seed*.json"))):
        rel = os.path.relpath(path, results_dir).split(os.sep)
        try:
            with open(path) as f:
                r = json.load(f)
            a = argparse.Namespace(**r["args"])
            expected = (setting_name(a), a.method, f"seed{a.seed}.json")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{path} is not a results file of this project ({e.__class__.__name__}: {e})")
        if tuple(rel) != expected:
            raise UserError(f"{path} holds a run of {'/'.join(expected)} (from its args): refusing to report it "
                            "under the wrong setting, method or seed; move or delete the file")
        r["_path"] = path
        runs.append(r)
    return runs


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)  # the std of one seed is unknown (None), not 0
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return m, s


def se_of_difference(std_a, n_a, std_b, n_b):
    """The standard error of the difference of two independent means, each side given by its sample std and its
    number of seeds: sqrt(s_a^2 / n_a + s_b^2 / n_b). None where either std is None (one seed: its spread is
    unknown, so no error bar can be given)."""
    if std_a is None or std_b is None:
        return None
    return math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)


def summarize(runs):
    """{setting: {method: row}} with mean/std over the completed seeds."""
    table = {}
    for r in runs:
        table.setdefault(r["setting"], {}).setdefault(r["method"], []).append(r)
    out = {}
    for setting, methods in table.items():
        for method, rs in methods.items():
            done = [r for r in rs if r["status"] == "completed"]
            row = {"n": len(done), "diverged": [(r["args"]["seed"], r.get("diverged_epoch")) for r in rs
                                                 if r["status"] == "diverged"],
                   "runs": rs, "paper": paper_top1(setting, method)}
            for key in ("top1", "many", "medium", "few", "ece"):
                row[key] = mean_std([r["final"][key] for r in done])
            row["wall"] = mean_std([r["wall_time_s"] for r in done])
            # runs that shared the GPU (run_all.sh JOBS > 1) each took longer than one alone would
            row["at_once"] = max([r.get("runs_at_once") or 1 for r in done], default=1)
            row["mps"] = any(r.get("mps") for r in done)
            made = done or rs  # (a row whose every run diverged: where those ran)
            row["devices"] = sorted({r["device_name"] for r in made})
            row["torch"] = sorted({r["torch_version"] for r in made})
            # which training path made the numbers: one CUDA graph per step (--fast) or plain eager, and in which
            # precision (on CUDA bf16 autocast unless --fp32; on the CPU always fp32)
            row["paths"] = sorted({f"{'--fast' if r.get('fast_path') else 'eager'} "
                                   f"{precision_of(r)}"
                                   for r in made})
            # which version of the method file's code made each seed (a table made over several sessions)
            row["code"] = {}
            for r in done:
                row["code"].setdefault(r.get("code_sha256"), []).append(r["args"]["seed"])
            out.setdefault(setting, {})[method] = row
    return out


def _cell(ms, digits=2, std=True):
    m, s = ms
    if m is None:
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if std and s is not None else f"{m:.{digits}f}"


def direction_lines(rows):
    """Does each method move top-1 away from ERM the way the paper's table does? Markdown lines, generated from the
    mean of our seeds and the published numbers; a difference under 2 standard errors is "within seed noise",
    a published difference under 0.5 points has no direction to reproduce. With one seed of the method or of ERM
    there is no standard error yet: a difference of the published sign is "same sign", not "reproduced", and either
    sign is marked "1 seed"; a difference of exactly 0 has neither sign."""
    erm = rows.get("erm")
    if not erm or not erm["n"] or erm["paper"] is None:
        return []
    lines = ["| method | paper − ERM (orig. CIFAR) | ours − ERM (2 s.e.) | direction |", "|---|---|---|---|"]
    opposite = []
    for method in sorted(rows):
        row = rows[method]
        if method == "erm" or row["paper"] is None or not row["n"]:
            continue
        paper = row["paper"] - erm["paper"]
        ours = row["top1"][0] - erm["top1"][0]
        se = se_of_difference(row["top1"][1], row["n"], erm["top1"][1], erm["n"])
        one = se is None  # a single seed on either side: no error bar
        if abs(paper) < 0.5:
            verdict = "the paper shows no difference"
        elif not one and abs(ours) < 2 * se:
            verdict = "within seed noise"
        elif ours == 0:  # (the same final accuracy to the digit: neither sign; percentages of 10,000 images can tie)
            verdict = "no difference" + (" (1 seed: no error bar yet)" if one else "")
        elif (ours > 0) == (paper > 0):
            verdict = "same sign (1 seed: no error bar yet)" if one else "reproduced"
        else:
            verdict = "**opposite**" + (" (1 seed: no error bar yet)" if one else "")
            opposite.append(method + (" (1 seed)" if one else ""))
        lines.append(f"| {method} | {paper:+.2f} | {ours:+.2f} ({'1 seed' if one else f'{2 * se:.2f}'}) | {verdict} |")
    lines += ["", "Opposite to the published direction: " + (", ".join(opposite) if opposite else "none") + "."]
    return lines


def code_lines(rows):
    """Rows whose seeds were trained by different method files (a run's --name put it in another method's folder)
    or by different versions of their method file's code (code_sha256)."""
    def seeds(groups):  # {label: [seeds]} -> "seeds 0, 1: label; seed 2: other"
        return "; ".join(f"seed{'s' if len(v) > 1 else ''} {', '.join(map(str, sorted(v)))}: {k}"
                         for k, v in sorted(groups.items(), key=lambda kv: min(kv[1])))
    files, versions = [], []
    for method in sorted(rows):
        scripts = {}
        for r in rows[method].get("runs", []):
            if r["status"] == "completed" and r.get("command"):
                scripts.setdefault(r["command"].split()[0], []).append(r["args"]["seed"])
        code = {k[:10]: v for k, v in rows[method]["code"].items() if k is not None}
        if len(scripts) > 1:
            files.append(f"{method} ({seeds(scripts)})")
        elif len(code) > 1:
            versions.append(f"{method} ({seeds(code)})")
    return ([f"Seeds trained by different method files, averaged into one row (a --name that is another method's "
             f"folder; give the run a name of its own): {', '.join(files)}."] if files else []) + \
        ([f"Seeds trained by different versions of their method file's code (code_sha256 of the file without "
          f"docstring and comments; rerun the older seeds to compare like with like): {', '.join(versions)}."]
         if versions else [])


# Arguments that say where and how a run was made, not what it trained: args_lines does not compare them.
RUN_ONLY_ARGS = {"data_dir", "download", "cache_dir", "seed", "device", "deterministic", "fast", "fp32", "eval_every",
                 "profile_steps", "out", "name", "overwrite", "skip_existing", "method", "checkpoint_every", "resume",
                 "class_grads"}  # (pcn_sgd.py's: the same g_l from C backward passes or one batched one)


def args_lines(rows, table):
    """Runs of a setting whose training arguments differ from those their row of run_all.sh trains with (`table`:
    {row: method name}), grouped by the difference: a short or smoke table (--epochs 2), a sweep written into a
    row's folder (--beta 0). The table averages them into the row all the same; this line says so. A default of
    None is a value the run fills in from its data (oversampling's --num-samples): not compared."""
    groups, expected, total, unknown = {}, {}, 0, 0
    for row, method in table.items():
        for r in rows.get(method, {}).get("runs", []):
            a, total = r["args"], total + 1
            data = ["--dataset", a["dataset"]] + (["--data-dir", a["data_dir"]] if a.get("data_dir") else [])
            if a["dataset"] == "imagefolder" and not os.path.isdir(os.path.join(a.get("data_dir") or "", "train")):
                # some defaults depend on the data's class count (class_count: mm_drw, sam); without the folder here,
                # a CIFAR of the run's class count gives the same ones
                n = len(r.get("train_class_counts") or [])
                if n not in (10, 100):
                    unknown += 1
                    continue
                data = ["--dataset", f"cifar{n}"]
            flags = data + ["--imbalance-type", a["imbalance_type"], "--imbalance-ratio", repr(a["imbalance_ratio"]),
                            "--device", "cpu"]
            if (row, tuple(flags)) not in expected:
                expected[row, tuple(flags)] = vars(row_args(row, flags))
            diff = ", ".join(f"{_flag_values([d], 1)} instead of {_show(d[2])}"
                             for d in arg_differences(a, expected[row, tuple(flags)]))
            if diff:
                groups.setdefault(diff, []).append(f"{method} seed {a['seed']}")
    lines = [f"The arguments of {unknown} runs were not compared with their rows: their data folder is not here."] \
        if unknown else []
    if groups:
        parts = [f"{diff} ({'every run' if len(runs) == total else ', '.join(runs)})" for diff, runs in groups.items()]
        lines.append("Runs trained with other arguments than their row of run_all.sh (averaged into the row all the "
                     "same; rerun them with the row's arguments, or give an experiment its own folder with --name): "
                     + "; ".join(parts) + ".")
    return lines


def missing_lines(rows, methods, seeds):
    """The runs of run_all.sh's table (`methods`: its rows' method names, `seeds`) that a setting's `rows` lack,
    as one Markdown line grouped by the missing seeds."""
    have = {m: {r["args"]["seed"] for r in row["runs"]} for m, row in rows.items()}
    by_seeds = {}
    for method in methods:
        lack = tuple(s for s in seeds if s not in have.get(method, set()))
        if lack:
            by_seeds.setdefault(lack, []).append(method)
    total = len(methods) * len(seeds)
    if not by_seeds:
        return [f"Every run of run_all.sh's table is here: {len(methods)} rows x seeds {', '.join(map(str, seeds))}."]
    n = sum(len(lack) * len(ms) for lack, ms in by_seeds.items())
    parts = [f"seed{'s' if len(lack) > 1 else ''} {', '.join(map(str, lack))} of "
             f"{'every row' if len(ms) == len(methods) else ', '.join(ms)}" for lack, ms in by_seeds.items()]
    return [f"Not run yet: {n} of the {total} runs of run_all.sh's table ({len(methods)} rows x seeds "
            f"{', '.join(map(str, seeds))}): {'; '.join(parts)} (run_all.sh skips the runs whose JSON exists)."]


def reproduce_command(session):
    """The run_all.sh command line of one invocation recorded in run_all.jsonl."""
    env = ["SMOKE=1"] if session.get("smoke") else [f"FAST={int(bool(session.get('fast')))}",
                                                    f"MPS={int(bool(session.get('mps')))}", f"JOBS={session['jobs']}"]
    settings, seeds = ("exp:10", "0") if session.get("smoke") else ("exp:100", "0 1 2")  # run_all.sh's defaults
    if session.get("pcn_class_grads", "loop") != "loop":  # (the same numbers as the default loop, faster on a GPU)
        env.append(f"PCN_CLASS_GRADS={session['pcn_class_grads']}")
    if session.get("settings", settings) != settings:
        env.append(f'SETTINGS="{session["settings"]}"')
    if session.get("seeds", seeds) != seeds:
        env.append(f'SEEDS="{session["seeds"]}"')
    return " ".join(env + ["bash run_all.sh"])


def session_lines(results_dir):
    """How the files were made: one line per run_all.sh invocation that wrote results_dir/run_all.jsonl."""
    path = os.path.join(results_dir, "run_all.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        sessions = [json.loads(l) for l in f if l.strip()]
    if not sessions:
        return []
    trained = [s for s in sessions if s.get("runs_finished")]
    if not trained:  # (every invocation found its runs done already: nothing to say how they were made)
        return []
    wall = sum(s["wall_s"] for s in trained)
    # FAST=1, not "--fast": what the invocation asked for; on a CPU it trains eager (each row's device column says)
    kinds = sorted({f"JOBS={s['jobs']}, FAST={int(bool(s.get('fast')))}, MPS={int(bool(s.get('mps')))}"
                    + (f", PCN_CLASS_GRADS={s['pcn_class_grads']}"
                       if s.get("pcn_class_grads", "loop") != "loop" else "")
                    for s in trained})
    cut = sum(s.get("cut_at_deadline", 0) for s in trained)
    failed = sum(s["failed"] for s in trained)
    completed = sum(s["runs_finished"] for s in trained) - failed - cut  # (runs_finished: every run that ended)
    stopped = f"{cut} stopped at a deadline to go on from their checkpoints, " if cut else ""
    return [f"Made by {len(trained)} invocation{'s' if len(trained) != 1 else ''} of run_all.sh that trained "
            f"({completed} runs completed, {failed} failed, {stopped}"
            f"{fmt_time(wall)} of wall time in all; {'; '.join(kinds) or 'none'}), "
            f"{' to '.join(sorted({sessions[0]['date_utc'][:10], sessions[-1]['date_utc'][:10]}))} "
            "(run_all.jsonl in the results folder).", "",
            "Reproduce: " + " or ".join(sorted({f"`{reproduce_command(s)}`" for s in trained}))
            + (" (the built-in synthetic set, 2 epochs on the CPU: a test of the pipeline, not results)."
               if all(s.get("smoke") for s in trained) else
               " with the JPEG CIFAR-10 in data/cifar10-jpeg (DATA_DIR=...; DEADLINE=<seconds> splits it over "
               "several sessions: a run whose JSON exists is skipped, a run cut short goes on from its checkpoint)."),
            ""]


def report(results_dir):
    check(os.path.isdir(results_dir), f"results folder {results_dir} does not exist")
    runs = load_results(results_dir)
    check(runs, f"no results JSON under {results_dir} (expected <setting>/<method>/seed<k>.json)")
    summary = summarize(runs)
    lines = ["# Results", "",
             "Generated by `python common.py report` from the JSON files beside this page; do not edit by hand.",
             "Top-1 is the accuracy of the **final epoch** on the balanced test set (no best-epoch selection), "
             "mean ± std over seeds (n). Many / medium / few: classes with > 100, 20-100, < 20 training images "
             "(n/a: the setting has no such class). ECE: 15 equal-width bins, in %. Wall time / run: from the "
             "start of the script to its JSON, data loading and evaluations included; runs that shared the GPU "
             "with others (k at once) each took longer than one alone. Precision: bf16 = the training forward and "
             "backward under bf16 autocast on CUDA (losses, cosine heads and the final evaluation in fp32), the "
             "default there; fp32 = as the official code (--fp32, and every CPU run).", ""]
    if any(paper_setting(setting) for setting in summary):  # (no published number to explain otherwise)
        lines += [PAPER_NOTES, ""]
    lines += session_lines(results_dir)
    table = table_methods()
    methods, seeds = list(table.values()), table_seeds()
    plotted = 0
    for setting in sorted(summary):
        rows = summary[setting]
        counts = rows[next(iter(rows))]["runs"][0]["train_class_counts"]
        lines += [f"## {setting}", "", f"Training counts per class: {counts}.", "",
                  "| method | top-1 (n) | many | medium | few | ECE | paper (orig. CIFAR) | wall time / run "
                  "| device (torch; training path, precision) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        order = sorted(rows, key=lambda m: -(rows[m]["top1"][0] or -1))
        for method in order:
            row = rows[method]
            top1 = f"{_cell(row['top1'])} ({row['n']})" if row["n"] else "—"
            if row["diverged"]:
                top1 += " " + ", ".join(f"seed {s}: diverged in epoch {e + 1}" for s, e in row["diverged"])
            paper = f"{row['paper']:.2f}" if row["paper"] is not None else "—"
            wall = f"{row['wall'][0]:.0f} s" if row["wall"][0] is not None else "—"
            if row["at_once"] > 1 or row["mps"]:
                wall += f" ({row['at_once']} at once{', MPS' if row['mps'] else ''})"
            lines.append(f"| {method} | {top1} | {_cell(row['many'])} | {_cell(row['medium'])} | "
                         f"{_cell(row['few'])} | {_cell(row['ece'])} | {paper} | {wall} | "
                         f"{', '.join(row['devices'])} (torch {', '.join(row['torch'])}; {', '.join(row['paths'])}) |")
        lines += [""] + missing_lines(rows, methods, seeds) + [""]
        for extra in (args_lines(rows, table), code_lines(rows)):
            if extra:
                lines += extra + [""]
        direction = direction_lines(rows)
        if direction:
            lines += [f"Against ERM ({setting}): does each method change top-1 in the direction of the published "
                      "table? (seed means; n per row above; a published difference under 0.5 points has no direction "
                      "to reproduce, and with 2 or more seeds on each side a difference under 2 standard errors is "
                      "within seed noise)", ""] + direction + [""]
        plots = plot_setting(results_dir, setting, rows)
        plotted += len(plots)
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, results_dir)})" for p in plots] + [""]
    out = os.path.join(results_dir, "RESULTS.md")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    n = lambda k, what: f"{k} {what}{'s' * (k != 1)}"  # noqa: E731
    print(f"wrote {out} ({n(len(runs), 'run')}, {n(len(summary), 'setting')}) and {n(plotted, 'plot')} beside it")
    if os.path.abspath(results_dir) == os.path.join(ROOT, "results"):
        update_readme(lines[3:], results_dir)  # (not the title, nor "the JSON files beside this page")
    return out


def update_readme(lines, results_dir):
    """Put the generated tables into README.md between its results markers (links made relative to ROOT)."""
    rel = os.path.relpath(results_dir, ROOT)
    body = [l.replace("](", f"]({rel}/") if l.startswith("![") else l.replace("## ", "### ", 1) if l.startswith("## ")
            else l for l in lines]
    body = ["Generated from `results/**/*.json` by `python common.py report` "
            "(full page: [results/RESULTS.md](results/RESULTS.md))."] + body
    write_readme_block("results", body)


def write_readme_block(name, lines, path=os.path.join(ROOT, "README.md")):
    """Replace what stands between `<!-- name:start -->` and `<!-- name:end -->` in README.md by `lines`, saying so
    where that changed it (nothing happens where the markers are missing)."""
    if not os.path.exists(path):
        return
    text = open(path).read()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return
    new = text.split(start)[0] + start + "\n" + "\n".join(lines).strip() + "\n" + end + text.split(end)[1]
    if new != text:
        with open(path, "w") as f:
            f.write(new)
        print(f"updated the {name} block of {path}")


def plot_setting(results_dir, setting, rows):
    """Per-class accuracy (head to tail, train counts on a log axis) and test-accuracy curves with the
    lr-decay and DRW epochs marked. Skipped when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    methods = sorted((m for m in rows if rows[m]["n"]), key=lambda m: -(rows[m]["top1"][0] or 0))
    if not methods:
        return []
    done = lambda m: [r for r in rows[m]["runs"] if r["status"] == "completed"]
    colors = {m: plt.cm.tab20(k % 20) for k, m in enumerate(sorted(methods))}
    main = [m for m in methods if m in MAIN_METHODS] if len(methods) > 8 else methods
    main = main or methods[:8]
    counts = done(methods[0])[0]["train_class_counts"]
    C = len(counts)
    paths = []
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * C * len(main) ** 0.5 + 6), 4.5))
    width = 0.8 / len(main)
    for k, m in enumerate(main):
        acc = np.mean([r["final"]["per_class_acc"] for r in done(m)], axis=0)
        ax.bar(np.arange(C) + (k - (len(main) - 1) / 2) * width, acc, width, label=m, color=colors[m])
    ax.set_xlabel("class (head to tail)")
    ax.set_ylabel("test accuracy (%), final epoch, mean over seeds")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(np.arange(C), counts, "k.-", label="train count")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.set_title(f"{setting}: per-class accuracy" + (" (main methods)" if main != methods else ""))
    fig.tight_layout()
    paths.append(os.path.join(results_dir, setting, "per_class_acc.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5))
    marks = set()
    for m in methods:
        rs = done(m)
        epochs = [h["epoch"] + 1 for h in rs[0]["history"] if h["test_top1"] is not None]
        curves = [[h["test_top1"] for h in r["history"] if h["test_top1"] is not None] for r in rs]
        n = min(len(c) for c in curves)
        ax.plot(epochs[:n], np.mean([c[:n] for c in curves], axis=0), label=m, color=colors[m],
                ls="-" if m in main else ":", marker="o" if n < 3 else None, ms=4)  # (one point draws no line)
        a = rs[0]["args"]
        marks.update(("lr decay", e) for e in a.get("lr_decay_epochs", []) if e < a["epochs"])
        if a.get("drw_epoch") and a["drw_epoch"] < a["epochs"]:
            marks.add(("DRW", a["drw_epoch"]))
    for e in sorted({e for _, e in marks}):  # one line and one label per epoch: "lr decay + DRW 160"
        labels = sorted((label for label, at in marks if at == e), key=lambda label: label != "lr decay")
        ax.axvline(e, color="grey" if labels == ["lr decay"] else "red", ls="--", lw=0.8)
        ax.text(e, 2, f" {' + '.join(labels)} {e}", rotation=90, fontsize=7, va="bottom")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{setting}: test accuracy during training")
    fig.tight_layout()
    paths.append(os.path.join(results_dir, setting, "curves.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------------
# The `Result:` line of each method file's header, generated from the committed JSON of the main setting
# ------------------------------------------------------------------------------------------------

HEADER_SETTING = "cifar10-jpeg-exp-r100"
NOT_MEASURED = "not measured yet on a GPU (see results/RESULTS.md once run_all.sh has run)."


def header_result(script, results_dir=os.path.join(ROOT, "results")):
    """What the header of methods/<script> must say under `Result:`, from results/<HEADER_SETTING>/."""
    runs = [r for r in load_results(results_dir) if r["setting"] == HEADER_SETTING
            and r["command"].split()[0] == f"methods/{script}"]
    if not runs:
        return NOT_MEASURED
    rows = summarize(runs)[HEADER_SETTING]
    parts = [f"{m} {_cell(rows[m]['top1'])} (n={rows[m]['n']})"
             for m in sorted(rows, key=lambda m: -(rows[m]["top1"][0] or -1))]
    devices = sorted({d for m in rows for d in rows[m]["devices"]})
    torches = sorted({t for m in rows for t in rows[m]["torch"]})
    missing = sorted({m for row, m in table_methods().items() if row.split()[0] == script} - set(rows))
    spread = "mean ± std over the n seeds" if any(rows[m]["n"] > 1 for m in rows) else "one seed so far (no std yet)"
    return (f"{'; '.join(parts)} top-1 % on JPEG CIFAR-10-LT R=100 (README: Data), final epoch, {spread}; "
            f"{', '.join(devices)}, torch {', '.join(torches)} (results/RESULTS.md)."
            + (f" Not measured yet: {', '.join(missing)}." if missing else ""))


def _result_block(lines):
    """(start, end) of the `Result:` entry among a docstring's lines: its line and the indented ones after it."""
    start = next(i for i, l in enumerate(lines) if l.startswith("Result:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" ") and lines[end].strip():
        end += 1
    return start, end


def read_header_result(path):
    """The text of the `Result:` entry of a method file's docstring, whitespace collapsed."""
    lines = open(path).read().split('"""')[1].splitlines()
    start, end = _result_block(lines)
    return " ".join(" ".join(lines[start:end])[len("Result:"):].split())


def write_headers(results_dir=os.path.join(ROOT, "results"), methods_dir=os.path.join(ROOT, "methods")):
    import textwrap
    for path in sorted(glob.glob(os.path.join(methods_dir, "*.py"))):
        text = open(path).read()
        old = read_header_result(path)
        new = header_result(os.path.basename(path), results_dir)
        if old == new:
            continue
        lines = text.splitlines(keepends=True)
        start, end = _result_block(lines)
        wrapped = textwrap.fill(new, width=110, initial_indent="Result:    ", subsequent_indent=" " * 11)
        with open(path, "w") as f:
            f.write("".join(lines[:start]) + wrapped + "\n" + "".join(lines[end:]))
        print(f"updated the Result line of {path}")


if __name__ == "__main__":
    p = ArgumentParser(description="imbalance-ref shared helpers")
    sub = p.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="results/**/seed*.json -> results/RESULTS.md, plots, README table, "
                                        "and the Result line of each method file's header")
    rep.add_argument("results_dir", nargs="?", default=os.path.join(ROOT, "results"),
                     help="the results root to report on (README and the method headers are written only for results/)")
    pl = sub.add_parser("plan", help="for run_all.sh: read jobs 'row|type|ratio|seed' from stdin, print for each "
                                     "'<done 0|1> <seconds of its method's runs or -1> <epochs done> <epochs> "
                                     "<seconds of an ERM run by every method's runs or -1> <its passes x 1000> "
                                     "<1: its run measures an ERM run> <results JSON>'")
    pl.add_argument("--out", required=True, help="the results root of the runs")
    pl.add_argument("--jobs", type=int, default=1, help="how many runs will share the device (run_all.sh's JOBS)")
    pl.add_argument("--extra", default="", help="flags added to every run after its own (run_all.sh's EXTRA)")
    pl.add_argument("flags", nargs=argparse.REMAINDER, help="flags added to every run before its own (after --)")
    cli = p.parse_args()
    if cli.command == "plan":
        flags = cli.flags[1:] if cli.flags[:1] == ["--"] else cli.flags
        print("\n".join(plan([l for l in sys.stdin.read().splitlines() if l.strip()], flags, cli.out, cli.jobs,
                              cli.extra.split())))
    if cli.command == "report":
        report(cli.results_dir)
        if os.path.abspath(cli.results_dir) == os.path.join(ROOT, "results"):
            write_headers(cli.results_dir)
