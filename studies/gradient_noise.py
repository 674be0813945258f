"""The question's noise, measured: mini-batch gradients of oversampling and of class weights at the same parameters.

The question (README, "Oversampling or class weights in mini-batch SGD?"; the reading in full: studies/README.md): do
inverse-frequency class weights make mini-batch SGD noisier than oversampling? studies/oversampling_vs_weights.py
compares whole training runs, where the two methods also end up at different parameters. Here they are compared where
nothing else differs: as estimators of a step at the same parameters theta. With mu_c the mean per-image gradient of
class c's loss at theta and G = (1/C) sum_c mu_c the gradient of the class-balanced loss, a batch of B images gives,
per method:

  oversampling      B draws, each a class with probability 1/C, then one of its images: the batch mean (E = G)
  class_weights_u   B uniform draws: sum_i w_yi g_i / B, w_c = N / (C n_c) (mean 1 over the images; E = G too)
  class_weights     B uniform draws: PyTorch's F.cross_entropy(weight=w), sum_i w_yi g_i / sum_i w_yi (E != G)
  erm               B uniform draws: the batch mean (E = the frequency-weighted gradient)

For each: its expected step E g (the share of it that the minority's gradient makes), its bias ||E g - G|| / ||G||,
and its noise E||g - E g||^2 / ||G||^2 at batch B, from the classes' mean gradients mu_c and mean squared norms
m_c = mean ||g_i||^2 over the class's images, exactly for draws independent within a class (a Monte Carlo average
over the batch's class counts for PyTorch's normalization). For the two unbiased ones the theory is one line:
B x E||g - G||^2 = sum_c q_c w_c^2 m_c - ||G||^2 (q_c: a draw's class probability); at 1:99 class_weights_u puts
q w^2 = 0.01 x 50^2 = 25 on the minority's m_c where oversampling puts 0.5, so where the per-image gradients are
as large in both classes and much larger than their mean G (as in training), the weights' step is about 25 times
noisier: as noisy as oversampling's with about B / 25 images, less than one at batch 16 (the script measures the
ratio, not this estimate).

Per-image gradients need a model without batch statistics: the study's SmallCNN (GroupNorm), on the images without
augmentation (which adds its own noise to every method alike). theta: the initial weights of each seed and the weights
after --steps of plain SGD (the study's lr 0.1) trained by oversampling and by class_weights_u from them.

Run:  python studies/gradient_noise.py --dataset imagefolder --data-dir data/cifar10-jpeg --settings binary lt10
      python studies/gradient_noise.py --dataset synthetic --seeds 1 --steps 20 --out results/scratch/noise
      python studies/gradient_noise.py --readme     # NOISE.md and studies/README.md's block from noise.json
"""
import datetime
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
import common  # noqa: E402
import oversampling_vs_weights as study  # noqa: E402  (its data settings, SmallCNN and the methods' batches)

OUT = os.path.join(ROOT, "results", "gradient-noise")
ESTIMATORS = ("oversampling", "class_weights_u", "class_weights", "erm")
TRAINED_BY = ("oversampling", "class_weights_u")


def parse_args(argv=None):
    p = common.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--dataset", default="imagefolder", help="imagefolder | synthetic")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "data", "cifar10-jpeg"))
    p.add_argument("--settings", nargs="+", default=["binary"], help="binary | lt10 (the study's settings)")
    p.add_argument("--seeds", type=int, default=3, help="initial weights (seeds 0..n-1)")
    p.add_argument("--steps", type=int, nargs="+", default=[300, 1500],
                   help="the later points: after this many steps of each method in TRAINED_BY (plus the start)")
    p.add_argument("--lr", type=float, default=0.1, help="plain SGD lr of those steps (the study's)")
    p.add_argument("--count-draws", type=int, default=100_000, help="Monte Carlo draws of a batch's class counts")
    p.add_argument("--out", default=OUT, help="folder of noise.json and NOISE.md")
    p.add_argument("--readme", action="store_true",
                   help="only write NOISE.md from --out's noise.json (the committed one: also its block in "
                        "studies/README.md)")
    args = p.parse_args(argv)
    common.check(args.seeds >= 1 and all(s > 0 for s in args.steps), "--seeds and --steps must be positive")
    return args


# ------------------------------------------------------------------------------------------------
# The measurement: class moments at theta, then each estimator's bias and noise from them
# ------------------------------------------------------------------------------------------------

def class_moments(model, x, y, num_classes, chunk=256):
    """(mu (C, P): each class's mean per-image gradient of its CE, m (C,): the mean squared norm of those
    gradients), over the images x (normalized, no augmentation) with labels y, one vmap'ed gradient per image."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_image = vmap(grad(loss), in_dims=(None, 0, 0))
    P = sum(v.numel() for v in params.values())
    mu, m = torch.zeros(num_classes, P, dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64)
    for i in range(0, len(y), chunk):
        g = per_image(params, x[i:i + chunk], y[i:i + chunk])
        g = torch.cat([t.reshape(len(t), -1) for t in g.values()], 1).double()
        yc = y[i:i + chunk]
        mu.index_add_(0, yc, g)
        m.index_add_(0, yc, (g * g).sum(1))
    n = torch.bincount(y, minlength=num_classes).double()
    return mu / n[:, None], m / n


def estimator(name, counts):
    """(q: a draw's class probabilities, w: the class weights, by_weight_sum: PyTorch's normalization), the study's
    sampler and loss weights of the method (oversampling_vs_weights.py sampler_class_probs and loss_weights)."""
    q = np.asarray(study.sampler_class_probs(name, counts, None), dtype=np.float64)
    weighted = name in ("class_weights", "class_weights_u")
    w = study.loss_weights(name, counts, study.cores()).double().numpy() if weighted else np.ones(len(counts))
    return q, w, name == "class_weights"


def batch_stats(gram, m, q, w, by_weight_sum, B, draws, rng):
    """E g's coefficients beta (E g = sum_c beta_c mu_c) and E||g||^2 of a batch of B draws of class probabilities q,
    g = sum_i w_yi g_i / (B, or sum_i w_yi), the images of a class drawn independently: given the batch's class counts
    k, g = sum_c a_c S_c (S_c: the sum of k_c draws of class c, a_c = w_c / the normalizer), so E[g | k] = sum_c a_c
    k_c mu_c and E[||g||^2 | k] = b'Mb + sum_c a_c^2 k_c (m_c - ||mu_c||^2), b = a k, M the Gram matrix of the mu_c;
    averaged over `draws` multinomial k."""
    k = rng.multinomial(B, q, size=draws).astype(np.float64)  # (draws, C)
    a = w[None, :] / ((k * w).sum(1, keepdims=True) if by_weight_sum else B)
    b = a * k
    second = np.einsum("dc,ce,de->d", b, gram, b) + (a * a * k * (m - np.diag(gram))[None, :]).sum(1)
    return b.mean(0), second.mean()


def estimator_rows(mu, m, counts, B, draws, rng):
    """{estimator: {minority_share, bias, noise}} at one theta: the minority's share of the expected step's class
    coefficients, ||E g - G|| / ||G||, E||g - E g||^2 / ||G||^2 (G: the class-balanced gradient)."""
    gram, m = (mu @ mu.T).numpy(), m.numpy()
    C = len(counts)
    minority = study.group_classes(counts, "minority")
    u = np.full(C, 1.0 / C)
    g2 = u @ gram @ u
    rows = {}
    for name in ESTIMATORS:
        beta, second = batch_stats(gram, m, *estimator(name, counts), B, draws, rng)
        d = beta - u
        rows[name] = {"minority_share": float(beta[minority].sum() / beta.sum()),
                      "bias": float(np.sqrt(max(d @ gram @ d, 0.0) / g2)),
                      "noise": float((second - beta @ gram @ beta) / g2)}
    return rows


# ------------------------------------------------------------------------------------------------
# The points theta: each seed's initial weights, and where each method's plain SGD takes them
# ------------------------------------------------------------------------------------------------

def train(model, setting, method, steps, lr, seed):
    """`steps` of plain SGD of the study's `method` (its batches and loss: oversampling_vs_weights.py's, with the
    augmentation), from the model as it is."""
    k, pool = study.cores(), setting["pool"]
    generator = torch.Generator().manual_seed(seed)
    plan, _ = study.batch_plan(method, pool.train_y, setting["counts"], steps, setting["batch_size"], generator, k)
    weights = study.loss_weights(method, setting["counts"], k)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for idx in plan:
        x, y = pool.batch(idx, generator)
        loss = study.method_loss(method, F.cross_entropy(model(x), y, reduction="none"), y, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure_setting(args, name, rng):
    sargs = study.parse_args(["--model", "smallcnn", "--dataset", args.dataset, "--data-dir", args.data_dir,
                              "--device", "cpu", "--settings", name])
    setting = study.build_setting(sargs, name, "cpu")
    pool, counts, B = setting["pool"], setting["counts"], setting["batch_size"]
    x, y = pool.normalize(pool.train_x), pool.train_y
    points = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)  # the study's initial weights of the seed
        start = study.make_model(sargs, pool.num_classes, "cpu").state_dict()
        todo = [("start", 0, start)]
        for method in TRAINED_BY:
            model, done = study.make_model(sargs, pool.num_classes, "cpu"), 0
            model.load_state_dict(start)
            for steps in sorted(args.steps):
                train(model, setting, method, steps - done, args.lr, seed * 1000 + steps)
                done = steps
                todo.append((method, steps, {k: v.clone() for k, v in model.state_dict().items()}))
        for trained_by, steps, state in todo:
            model = study.make_model(sargs, pool.num_classes, "cpu")
            model.load_state_dict(state)
            t0 = time.time()
            mu, m = class_moments(model, x, y, pool.num_classes)
            rows = estimator_rows(mu, m, counts, B, args.count_draws, rng)
            minority, majority = (study.group_classes(counts, g) for g in ("minority", "majority"))
            points.append({"seed": seed, "trained_by": trained_by, "steps": steps, "estimators": rows,
                           "m_minority_over_majority": float(m[minority].mean() / m[majority].mean())})
            print(f"[noise] {name} seed {seed}, {trained_by} {steps} steps: noise x ||G||^2, oversampling "
                  f"{rows['oversampling']['noise']:.3g}, class_weights_u {rows['class_weights_u']['noise']:.3g} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return {"description": setting["description"], "counts": counts, "batch_size": B, "points": points}


# ------------------------------------------------------------------------------------------------
# Pages: NOISE.md and studies/README.md's block, from noise.json
# ------------------------------------------------------------------------------------------------

def _ms(xs, fmt):
    m, s = common.mean_std(xs)
    return fmt.format(m) + ("" if s is None else " ± " + fmt.format(s))


def table_lines(res):
    """Per setting: one row per point (start, or the steps of a method), each estimator's noise / ||G||^2, the ratio
    of class_weights_u's to oversampling's, the batch at which oversampling is as noisy, and the biased ones' minority
    share; mean ± std over seeds."""
    L = []
    for name, st in res["settings"].items():
        B = st["batch_size"]
        L += [f"{name}: {st['description']}, training counts {st['counts']}; the SmallCNN at the parameters of each "
              f"row, {res['seeds']} seeds (mean ± std). Noise: E||g - E g||^2 / ||G||^2 of one batch of {B} (G: the "
              "class-balanced gradient); minority share: the minority classes' share of the expected step's class "
              "coefficients (oversampling's and class_weights_u's: their number / C, unbiased).", "",
              "| parameters | noise: oversampling | class_weights_u | class_weights_u / oversampling | oversampling's "
              "batch as noisy | class_weights (PyTorch): noise, minority share | erm: noise, minority share | "
              "minority / majority mean squared gradient norm |",
              "|---|---|---|---|---|---|---|---|"]
        order = ("start",) + TRAINED_BY
        keys = sorted({(p["steps"], p["trained_by"]) for p in st["points"]}, key=lambda t: (t[0], order.index(t[1])))
        ratios = {}  # estimator: the seed mean of its noise over oversampling's, at each point
        for steps, by in keys:
            pts = [p for p in st["points"] if (p["steps"], p["trained_by"]) == (steps, by)]
            e = lambda est, key: [p["estimators"][est][key] for p in pts]  # noqa: E731
            ratio = [u / o for u, o in zip(e("class_weights_u", "noise"), e("oversampling", "noise"))]
            for est in ("class_weights_u", "class_weights"):
                ratios.setdefault(est, []).append(np.mean([a / o for a, o in zip(e(est, "noise"),
                                                                                  e("oversampling", "noise"))]))
            L.append(f"| {'initial weights' if by == 'start' else f'after {steps} steps of {by}'} | "
                     f"{_ms(e('oversampling', 'noise'), '{:.3g}')} | {_ms(e('class_weights_u', 'noise'), '{:.3g}')} | "
                     f"{_ms(ratio, '{:.1f}')}x | {_ms([B / r for r in ratio], '{:.2g}')} | "
                     f"{_ms(e('class_weights', 'noise'), '{:.3g}')}, {_ms(e('class_weights', 'minority_share'), '{:.3f}')}"
                     f" | {_ms(e('erm', 'noise'), '{:.3g}')}, {_ms(e('erm', 'minority_share'), '{:.3f}')} | "
                     f"{_ms([p['m_minority_over_majority'] for p in pts], '{:.2f}')} |")
        u, cw = ratios["class_weights_u"], ratios["class_weights"]
        share = np.mean([p["estimators"]["class_weights"]["minority_share"] for p in st["points"]])
        L += ["", f"At every point of {name}, class_weights_u's batch gradient was {min(u):.0f} to {max(u):.0f} times "
                  f"as noisy as oversampling's (seed means), as noisy as oversampling's with {B / max(u):.2g} to "
                  f"{B / min(u):.2g} images a batch instead of {B}; PyTorch's weighted mean {min(cw):.1f} to "
                  f"{max(cw):.1f} times, with the minority's share of its expected step {share:.2f} instead of "
                  f"{len(study.group_classes(st['counts'], 'minority')) / len(st['counts']):.2f}.", ""]
    return L


def readme_lines(res, rel):
    return ([f"Generated by `python studies/gradient_noise.py --readme` from [{rel}/noise.json]({rel}/noise.json) "
             f"({res['device_name']}, torch {res['torch_version']}, git {res['git_commit'][:10]}, wall time "
             f"{common.fmt_time(res['wall_s'])}; the method in the script's header).", ""] + table_lines(res))


STUDIES_README = os.path.join(ROOT, "studies", "README.md")  # where the committed JSON's block goes


def write_pages(out):
    """NOISE.md beside noise.json; for the committed one (--out's default), also the block of studies/README.md
    (its links relative to that page)."""
    with open(os.path.join(out, "noise.json")) as f:
        res = json.load(f)
    with open(os.path.join(out, "NOISE.md"), "w") as f:
        f.write("\n".join(["# Gradient noise of oversampling and class weights at the same parameters", ""]
                          + readme_lines(res, ".")))
    if os.path.abspath(out) == OUT:
        common.write_readme_block("noise", readme_lines(res, os.path.relpath(out, os.path.dirname(STUDIES_README))),
                                  STUDIES_README)
    print(f"wrote {os.path.join(out, 'NOISE.md')}")


def main(argv=None):
    args = parse_args(argv)
    if args.readme:
        common.check(os.path.exists(os.path.join(args.out, "noise.json")), f"no noise.json in {args.out}")
        return write_pages(args.out)
    t0, rng = time.time(), np.random.default_rng(0)
    commit, dirty = common.git_state()
    res = {"device_name": "cpu", "torch_version": torch.__version__, "git_commit": commit, "git_dirty": dirty,
           "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["studies/gradient_noise.py"] + sys.argv[1:]), "args": vars(args),
           "seeds": args.seeds, "settings": {}}
    for name in args.settings:
        res["settings"][name] = measure_setting(args, name, rng)
    res["wall_s"] = round(time.time() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, "noise.json"), res)
    write_pages(args.out)


if __name__ == "__main__":
    main()
