"""Benchmark: seconds per epoch and per 200-epoch run of the --fast path (one CUDA graph per training step)
next to the plain eager path of the same method file, and whether the two compute the same thing.

For each method row it runs the method script twice as a subprocess, eager and with --fast, for --epochs epochs
(default 10) with an evaluation every third of them, and reads the times from the results JSON the run writes:
the setup (data loading), the first epoch (cuDNN autotuning, graph capture), the steady epoch (the median
training time, evaluations taken out, over the epochs after the lr warm-up, i.e. once no new graph is captured),
a steady evaluation (bf16, as during training; the first one's extra cuDNN autotuning counted once) and the final
evaluation (fp32, once per run). From them it projects a protocol run of --project-epochs epochs (200) with an
evaluation every --project-eval-every epochs (5): setup + first + (E-1) x steady + (E/5 - 1) x evaluation +
the first evaluation's extra + the final evaluation; the ratio eager / fast is the speed-up. Projections are
labelled as such; --full also trains each row's fast path for the whole protocol (200 epochs) end to end and
records its measured wall time and final accuracy. --parallel N runs N copies of each path at once (seeds
0..N-1) and reports their aggregate throughput against one run; --mps does that under a CUDA MPS daemon
(without it several graphed processes gain nothing: one keeps the GPU busy, and processes only time-slice it).
A row keeps the earlier benchmark's timings of other numbers at once (dated), so two sessions measure 4 and 8 at
once, and run_all.sh's JOBS is the one with the most throughput (choose_jobs).
--class-grads also times PCNSGD+O's --fast step both ways it can compute its C per-class gradients (C backward
passes, or one batched backward), and --choose tells run_all.sh's PCNSGD rows to take the batched one where it
passed its GPU tests and was faster.
--check first compares the two paths in fp32 with deterministic kernels (--fp32 --deterministic) on a short
schedule that crosses an lr change and the DRW switch: every epoch's mean training loss and the final accuracy
must be equal bit for bit. --accuracy N trains N seeds of each path for the whole protocol, as the table is
trained (bf16 on CUDA), and compares their final top-1: the same within seed noise (2 standard errors) or not.
Those runs are kept and reused, so a check cut short resumes: the eager ones under results/accuracy/, the --fast
ones as the table's runs of the row (results/<setting>/<method>/, run_all.sh's flags), which they are.

Writes results/bench-<gpu>.json (device name, torch version, git commit, every measured number, the commands),
prints a table, and regenerates results/SPEED.md and README's speed table from every results/bench-*.json, with
every method's step against ERM's from the table's own --fast runs in results/ (step_cost_lines; `--report` does
only that). Not a timed test; run it on the GPU:
    python studies/benchmark.py --check                        # ERM on data/cifar10-jpeg, eager vs --fast
    python studies/benchmark.py --check --rows all --full      # every row of run_all.sh, plus 200-epoch fast runs
On CPU, --fast changes nothing, so there the script only checks its own plumbing (tests/test_fast_path.py), into
results/scratch/bench-cpu.json (not committed; the speed pages and --choose leave it alone):
    python studies/benchmark.py --device cpu --data-flags "--dataset synthetic" --epochs 3
The runs start with the interpreter that PYTHON names, as run_all.sh's do (default: the one running this script).
"""
import datetime
import glob
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

ROOT = common.ROOT
PYTHON = os.environ.get("PYTHON") or sys.executable  # the runs' interpreter (the tests': a warm one, conftest)


def parse_args(argv=None):
    p = common.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--rows", default="erm.py",
                   help="'all' (every row of run_all.sh) or rows of run_all.sh separated by commas, e.g. "
                        "'erm.py,sam.py --base ldam_drw'")
    p.add_argument("--data-flags", default="--dataset imagefolder --data-dir data/cifar10-jpeg --imbalance-ratio 100",
                   help="data flags passed to every run")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: plumbing check only)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each timed run (>= 3)")
    p.add_argument("--profile-steps", type=int, default=20,
                   help="after the timed runs, a 2-epoch run of each path profiles this many steps of its second epoch "
                        "with torch.profiler (GPU kernels and their time vs wall time per step: what bounds a step); "
                        "a separate run, so a profiler problem costs no timing; 0: off")
    p.add_argument("--project-epochs", type=int, default=200,
                   help="epochs of the protocol run projected from the timed epochs (and trained by --full, --accuracy)")
    p.add_argument("--project-eval-every", type=int, default=5,
                   help="test evaluations every this many epochs in the projected run (run_all.sh's runs: 5)")
    p.add_argument("--check", action="store_true", help="fp32 bit-for-bit comparison of --fast and eager first")
    p.add_argument("--check-flags", default="--epochs 3 --warmup-epochs 1 --lr-decay-epochs 2 --drw-epoch 2",
                   help="schedule of the --check runs (rows without --drw-epoch get it removed)")
    p.add_argument("--full", action="store_true", help="also train each row's fast path for --project-epochs epochs")
    p.add_argument("--parallel", type=int, default=0,
                   help="N > 1: also run N copies (seeds 0..N-1) of each path at once and report the aggregate "
                        "throughput against one run (eager runs are CPU-bound, graphed runs GPU-bound)")
    p.add_argument("--mps", action="store_true",
                   help="with --parallel and --accuracy: run the runs at once under a CUDA MPS daemon (started and "
                        "stopped here)")
    p.add_argument("--accuracy", type=int, default=0,
                   help="N >= 2: also train N seeds (0..N-1) of each row with each path for --project-epochs epochs "
                        "and compare their final top-1 (mean ± std; same within 2 standard errors?)")
    p.add_argument("--accuracy-fp32", action="store_true",
                   help="with --accuracy: the eager seeds in fp32 (--fp32: no bf16 autocast, no TF32), so the table's "
                        "--fast path is compared with the plain fp32 one: the graph and the precision at once")
    p.add_argument("--accuracy-dir", default=os.path.join(ROOT, "results", "accuracy"),
                   help="where the --accuracy runs are kept; a finished run there is reused, not trained again")
    p.add_argument("--table-dir", default=os.path.join(ROOT, "results"),
                   help="the --fast seeds of --accuracy with the table's protocol are the table's runs of the row, "
                        "trained into (or reused from) this results folder; '' keeps them in --accuracy-dir")
    p.add_argument("--class-grads", action="store_true",
                   help="also time PCNSGD+O's --fast step with its C per-class gradients from C backward passes "
                        "(--class-grads loop, the default) and from one batched backward (batched), 4 epochs each (or "
                        "--epochs if fewer) at a constant lr; run_all.sh's PCN_CLASS_GRADS follows it (--choose)")
    p.add_argument("--out", default=None, help="the JSON to write (default results/bench-<gpu>.json; on CPU "
                                                "results/scratch/bench-cpu.json)")
    p.add_argument("--keep", default=None, help="keep the runs' results and logs in this folder (default: a temp folder)")
    p.add_argument("--report", action="store_true",
                   help="only regenerate results/SPEED.md and README's speed table from results/bench-*.json")
    p.add_argument("--choose", action="store_true",
                   help="only print the run_all.sh settings that this GPU's results/bench-<gpu>.json (else the "
                        "newest bench-*.json) supports, e.g. 'FAST=1 MPS=0' (used by .ci/gpu-session)")
    args = p.parse_args(argv)
    if args.report or args.choose:
        return args
    common.check(args.epochs >= 3, f"--epochs must be >= 3 (first, steady and evaluated epochs), got {args.epochs}")
    common.check(args.project_epochs > 0 and args.project_eval_every > 0, "--project-* must be positive")
    common.check(args.parallel >= 0, f"--parallel must be >= 0, got {args.parallel}")
    common.check(args.accuracy == 0 or args.accuracy >= 2,
                 f"--accuracy needs at least 2 seeds per path for a standard deviation, got {args.accuracy}")
    rows = common.table_rows() if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    known = {r.split()[0] for r in common.table_rows()}
    for r in rows:
        common.check(r.split()[0] in known, f"unknown row '{r}': the script must be one of {', '.join(sorted(known))}")
    args.rows = rows
    args.device = common.resolve_device(args.device)
    return args


def run_methods(jobs, out, log_dir, reuse=False, mps_on=False):
    """Train methods/<row> with `flags` into out/<setting>/<name>/ for every (row, flags, name) in `jobs`, all at
    once (one CPU thread each when several); return [(results JSON, the command)]. Raise if any fails. A job of
    four, (row, flags, None, dest), trains into dest under the method's own name, e.g. as a run of the table.
    reuse: a run whose JSON exists is not trained again (--skip-existing instead of --overwrite). Each JSON records
    how many ran at once and whether under MPS (mps_on), as run_all.sh's do. A reused run is read back without
    starting a process (what its --skip-existing would do, without the seconds of a Python start)."""
    runs = []
    for job in jobs:
        row, flags, name, dest = job if len(job) == 4 else (*job, out)
        where = ["--out", dest] + (["--name", name] if name else [])
        path = common.result_path(common.row_args(row, flags + where))  # where the run writes its JSON
        cmd = [PYTHON, os.path.join("methods", row.split()[0])] + row.split()[1:] + flags + where + \
            ["--skip-existing" if reuse else "--overwrite"]
        log = os.path.join(log_dir, f"{name or slug(os.path.relpath(path, dest))}.log")
        runs.append((cmd, log, path, not (reuse and os.path.isfile(path))))
    at_once = sum(launch for *_, launch in runs)
    env = {**os.environ, "IMBALANCE_REF_RUNS_AT_ONCE": str(at_once), "IMBALANCE_REF_MPS": "1" if mps_on else "0"}
    if at_once > 1:
        env["OMP_NUM_THREADS"] = "1"
    started = []
    for cmd, log, path, launch in runs:
        with open(log, "w") as f:
            if not launch:
                f.write(f"skip: {path} exists\n")
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env) if launch else None
            started.append((proc, cmd, log, path))
    t0, results = time.time(), []
    for proc, cmd, log, path in started:
        text = " ".join(shlex.quote(str(c)) for c in cmd[1:])
        if proc is not None and proc.wait() != 0:
            for other in started:
                if other[0] is not None:
                    other[0].kill()
            tail = open(log).read()[-2000:]
            raise SystemExit(f"error: `{text}` exited {proc.returncode} after {time.time() - t0:.0f} s; "
                             f"log {log}:\n{tail}")
        if not os.path.isfile(path):
            raise SystemExit(f"error: `{text}` wrote no results JSON at {path}")
        with open(path) as f:
            results.append((json.load(f), text))
    return results


def run_method(row, flags, out, name, log_dir):
    return run_methods([(row, flags, name)], out, log_dir)[0]


def mps(action):
    """Start ('start') or stop ('stop') the CUDA MPS daemon; returns None when done, else why not."""
    try:
        if action == "start":  # the daemon must not inherit a pipe: run() would wait for it to close (timeout)
            with tempfile.TemporaryFile("w+") as err:
                proc = subprocess.run(["nvidia-cuda-mps-control", "-d"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err, text=True, timeout=30)
                err.seek(0)
                proc.stderr = err.read()
        else:
            proc = subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", capture_output=True, text=True,
                                  timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{e.__class__.__name__}: {e}"
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"


def timings(result, warmup_epochs):
    """setup, first epoch and steady epoch (the median after the warm-up), training only; the evaluations: a steady
    bf16 one (eval_s), the first one's extra (cuDNN autotuning for the evaluation's shapes) and the final fp32 one.
    Each history entry says how long its evaluation took (eval_s)."""
    history = result["history"]
    ends = [h["elapsed_s"] for h in history]
    setup = result["setup_time_s"]
    epochs = [b - a for a, b in zip([setup] + ends[:-1], ends)]
    evals = [h.get("eval_s") or 0.0 for h in history]
    train = [e - v for e, v in zip(epochs, evals)]
    steady = statistics.median(train[max(1, warmup_epochs):] or train[1:] or train)
    during = [v for h, v in zip(history[:-1], evals[:-1]) if h["test_top1"] is not None]  # bf16, not the final
    eval_s = statistics.median(during[1:]) if len(during) > 1 else (during[0] if during else evals[-1])
    return {"setup_s": setup, "first_epoch_s": train[0], "steady_epoch_s": steady, "eval_s": eval_s,
            "first_eval_extra_s": max(0.0, during[0] - eval_s) if during else 0.0, "final_eval_s": evals[-1],
            "epoch_s": epochs, "eval_s_per_epoch": evals, "wall_s": result["wall_time_s"],
            "fast_path": result.get("fast_path")}


def usable(profile):
    """A --profile-steps result with numbers in it (not None, not {"error": ...})."""
    return bool(profile) and not profile.get("error") and bool(profile.get("wall_ms_per_step"))


def bound_by(profile):
    """What bounds a training step, from a --profile-steps result: a sentence, or None without a usable profile."""
    if not usable(profile):
        return None
    n, busy = profile["gpu_activities_per_step"], profile["gpu_busy_fraction"]
    if not n:
        return (f"the CPU (a CPU run): {profile['wall_ms_per_step']:.1f} ms per step, "
                f"{profile['cpu_ops_per_step']:.0f} operator calls")
    what = (f"{profile['cpu_ops_per_step']:.0f} operator calls and {n:.0f} GPU kernels/copies per step, "
            f"{profile['gpu_ms_per_step']:.2f} ms of GPU time in {profile['wall_ms_per_step']:.2f} ms of wall time")
    if busy < 0.6:
        return f"the CPU (launching kernels): the GPU is busy {busy:.0%} of a step; {what}"
    return (f"the GPU: busy {busy:.0%} of a step, {profile['mean_gpu_activity_us']:.1f} us per kernel on average "
            f"(tiny kernels: fewer or larger ones would help, e.g. several models in one); {what}")


def project(t, epochs, eval_every):
    evals = len([e for e in range(epochs) if (e + 1) % eval_every == 0 or e == epochs - 1])
    during = evals - 1  # the bf16 evaluations; then the final fp32 one
    return (t["setup_s"] + t["first_epoch_s"] + (epochs - 1) * t["steady_epoch_s"] + during * t["eval_s"]
            + (t["first_eval_extra_s"] if during else 0.0) + t["final_eval_s"])


def accuracy_check(row, data_flags, n, epochs, eval_every, out, log_dir, table_dir=None, mps_on=False,
                   eager_fp32=False):
    """N seeds of each path for the whole protocol (both in the table's precision, or the eager ones in fp32 with
    `eager_fp32`), their final top-1 compared:
    the difference of the means against 2 standard errors. Runs in `out` are reused. Where the runs are the
    table's protocol (the row's own --epochs and --eval-every) and `table_dir` is given, the --fast seeds are
    trained as the table's runs of the row, into table_dir with run_all.sh's flags: the same run serves both, and
    a seed the table has already is not trained again. The eager seeds go to `out`."""
    name, entry = slug(row), {"n": n, "epochs": epochs, "eager_fp32": eager_fp32}
    paths = (("eager", ["--fp32"] if eager_fp32 else []), ("fast", ["--fast"]))
    keep = ["--checkpoint-every", "10", "--resume"]  # a session cut short keeps their progress
    defaults = common.row_args(row, data_flags)
    in_table = table_dir is not None and (epochs, eval_every) == (defaults.epochs, defaults.eval_every)
    jobs = [(row, data_flags + ["--epochs", str(epochs), "--eval-every", str(eval_every), "--seed", str(k)] + keep + extra)
            + ((None, table_dir) if in_table and path == "fast" else
               (f"acc_{name}_{path}{'_fp32' if extra == ['--fp32'] else ''}_seed{k}",))
            for path, extra in paths for k in range(n)]
    entry["fast_runs_in_table"] = in_table
    finished = run_methods(jobs, out, log_dir, reuse=True, mps_on=mps_on)  # all 2N at once: eager runs load the
    # CPU, graphed ones the GPU
    for i, (path, _) in enumerate(paths):
        done = finished[i * n:(i + 1) * n]
        for r, cmd in done:  # a kept run must be a whole run of this protocol, not one of another --project-epochs
            common.check(r["status"] == "completed" and r["args"]["epochs"] == epochs,
                         f"--accuracy: the kept run of `{cmd}` is {r['status']} after {r['epochs_completed']} of "
                         f"{r['args']['epochs']} epochs, not a completed {epochs}-epoch run: delete it from {out}")
            # ... and of this path (a table trained with FAST=0 holds eager runs where the --fast seeds are read)
            common.check(bool(r["args"].get("fast")) == (path == "fast"),
                         f"--accuracy: the kept run of `{cmd}` was trained {'eager' if path == 'fast' else 'with --fast'}"
                         f", not as its {path} seed: pass --table-dir '' to train the --fast seeds apart")
            common.check(bool(r["args"].get("fp32")) == (eager_fp32 and path == "eager"),
                         f"--accuracy: the kept run of `{cmd}` was trained {'with' if r['args'].get('fp32') else 'without'}"
                         f" --fp32, not as its {path} seed: delete it from {out}")
        top1 = [r["final"]["top1"] for r, _ in done]
        mean, std = common.mean_std(top1)
        entry[path] = {"top1": top1, "mean": mean, "std": std,
                       "wall_s": [r["wall_time_s"] for r, _ in done], "fast_path": [r.get("fast_path") for r, _ in done],
                       "commands": [c for _, c in done]}
    e, f = entry["eager"], entry["fast"]
    entry["difference"] = f["mean"] - e["mean"]
    entry["two_standard_errors"] = 2 * common.se_of_difference(e["std"], n, f["std"], n)
    entry["same_within_noise"] = abs(entry["difference"]) <= entry["two_standard_errors"]
    return entry


def accuracy_lines(reports):
    """One line per row with an --accuracy comparison."""
    lines = []
    for r in reports:
        for row in r["rows"]:
            a = row.get("accuracy")
            if a:
                lines.append(f"- `{row['row']}` on {r['device_name']}, final top-1 over {a['n']} seeds of "
                             f"{a['epochs']} epochs: eager{' fp32' if a.get('eager_fp32') else ''} "
                             f"{a['eager']['mean']:.2f} ± {a['eager']['std']:.2f}, "
                             f"--fast {a['fast']['mean']:.2f} ± {a['fast']['std']:.2f}; difference "
                             f"{a['difference']:+.2f} (2 s.e. {a['two_standard_errors']:.2f}): "
                             f"{'the same within seed noise' if a['same_within_noise'] else '**different**'}.")
    return lines


def fp32_check(row, data_flags, check_flags, work, log_dir):
    """Eager and --fast in fp32 with deterministic kernels, both at once (nothing here is timed): per-epoch train
    losses and final metrics compared."""
    flags = shlex.split(check_flags)
    script_flags = row.split()[1:]
    if "--drw-epoch" in flags and not accepts(row, "--drw-epoch"):
        i = flags.index("--drw-epoch")
        flags = flags[:i] + flags[i + 2:]
    base = data_flags + flags + ["--eval-every", "1", "--fp32", "--deterministic", "--seed", "0"]
    (eager, cmd_e), (fast, cmd_f) = run_methods([(row, base, f"check_{slug(row)}_eager"),
                                                 (row, base + ["--fast"], f"check_{slug(row)}_fast")], work, log_dir)
    le = [h["train_loss"] for h in eager["history"]]
    lf = [h["train_loss"] for h in fast["history"]]
    te = [h["test_top1"] for h in eager["history"]]
    tf = [h["test_top1"] for h in fast["history"]]
    return {"row": row, "flags": script_flags + flags, "identical": le == lf and te == tf,
            "train_loss_eager": le, "train_loss_fast": lf, "test_top1_eager": te, "test_top1_fast": tf,
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(le, lf)), "fast_path": fast.get("fast_path"),
            "commands": [cmd_e, cmd_f]}


def accepts(row, flag):
    """Does the row's method file define this flag? (read from its source, without starting Python)"""
    with open(os.path.join(ROOT, "methods", row.split()[0])) as f:
        return f'"{flag}"' in f.read()


PCN_ROW = "pcn_sgd.py --variant pcnsgd_o"  # the row whose step --class-grads times (pcnsgd's is the same step)
CLASS_GRADS_GAIN = 1.1  # run_all.sh's PCNSGD rows take the batched backward only where it was this much faster
CLASS_GRADS_EPOCHS = 4  # epochs of each --class-grads run (or --epochs, if fewer): a capture, then 3 steady epochs


def class_grads_timing(data_flags, epochs, work, log_dir):
    """PCNSGD+O's --fast steady epoch with the per-class gradients from C backward passes (loop) and from one batched
    backward (batched): {"row", "epochs", "loop": {...}, "batched": {...}, "speedup": loop / batched}. No warm-up, so
    that one graph is captured (in the first epoch) and the later epochs are all replays. A path that fails is
    recorded as {"error": ...} (the batched backward has run on no GPU before), and the benchmark goes on."""
    entry = {"row": PCN_ROW, "epochs": epochs}
    flags = ["--fast", "--epochs", str(epochs), "--warmup-epochs", "0", "--eval-every", str(epochs), "--seed", "0"]
    for how in ("loop", "batched"):
        try:
            result, cmd = run_method(PCN_ROW, data_flags + flags + ["--class-grads", how],
                                     os.path.join(work, "class_grads"), f"class_grads_{how}", log_dir)
        except (SystemExit, Exception) as e:  # noqa: BLE001  (a failed path is a result here, not the end)
            entry[how] = {"error": str(e)[-1000:]}
            print(f"[bench] {PCN_ROW} --class-grads {how} failed: {str(e)[:300]}", flush=True)
            continue
        t = timings(result, 0)
        entry[how] = {"steady_epoch_s": t["steady_epoch_s"], "first_epoch_s": t["first_epoch_s"],
                      "epoch_s": t["epoch_s"], "fast_path": result.get("fast_path"), "command": cmd}
    if all("steady_epoch_s" in entry[how] for how in ("loop", "batched")):
        entry["speedup"] = entry["loop"]["steady_epoch_s"] / entry["batched"]["steady_epoch_s"]
        print(f"[bench] {PCN_ROW} --fast steady epoch: loop {entry['loop']['steady_epoch_s']:.3f} s, batched "
              f"{entry['batched']['steady_epoch_s']:.3f} s ({entry['speedup']:.2f}x)", flush=True)
    return entry


def choose_class_grads(bench, gain=CLASS_GRADS_GAIN):
    """run_all.sh's PCN_CLASS_GRADS from a benchmark JSON (--choose: this GPU's own, none: "loop"): "batched" where
    the batched backward passed its GPU tests (fp32: --fast == eager, and the same g_l as the loop) and its --fast
    epoch was more than `gain` times faster than the loop's; else "loop"."""
    timing = (bench or {}).get("class_grads") or {}
    fine = (bench or {}).get("gpu_tests_batched") == "passed" and (timing.get("speedup") or 0) > gain
    return "batched" if fine else "loop"


def class_grads_now(results_dir=os.path.join(ROOT, "results"), device_name=None):
    """--choose's CLASS_GRADS: choose_class_grads of this GPU's own benchmark JSON where it was made with the code
    there is now (its GPU tests and timing say nothing of other code, or of another GPU model); else "loop"."""
    bench = newest_bench(results_dir, device_name, own_only=True)
    return choose_class_grads(bench if of_this_code(bench) else None)


def class_grads_lines(reports):
    """SPEED.md's lines on the per-class gradients' two ways, one per benchmark that timed them."""
    lines = []
    for r in reports:
        t = r.get("class_grads")
        if not t:
            continue
        cell = {how: f"{t[how]['steady_epoch_s']:.2f} s" if "steady_epoch_s" in t.get(how, {}) else
                "cut short" if t.get("error") == CUT_SHORT else "failed" for how in ("loop", "batched")}
        ratio = f" ({t['speedup']:.2f}x)" if t.get("speedup") else ""
        tests = {"passed": "passed", "failed": "**failed**"}.get(r.get("gpu_tests_batched"), "not run")
        lines.append(f"- {r['device_name']}: `{t['row']} --fast`, steady epoch with the C per-class gradients from C "
                     f"backward passes (loop) / one batched backward (batched): {cell['loop']} / {cell['batched']}"
                     f"{ratio}; the batched backward's GPU tests: {tests}; the table's PCNSGD rows use "
                     f"{choose_class_grads(r)}{' (measured ' + t['measured'] + ')' if t.get('measured') else ''}.")
    return lines


def slug(text, sep="_"):
    """A file-name-safe form of a row ('sam.py --base ldam_drw' -> 'sam_py_base_ldam_drw') or a device name."""
    return re.sub(r"[^A-Za-z0-9]+", sep, text).strip(sep) or "device"


CUT_SHORT = "not finished: the benchmark was stopped first (a time limit)"


def _x(parallel_path):
    t = parallel_path.get("throughput_vs_one_run")
    return f"{t:.2f}x" if t is not None else "cut short" if parallel_path.get("error") == CUT_SHORT else "failed"


def speed_lines(reports):
    """The speed table (markdown lines) of a list of benchmark JSON objects; projected numbers labelled."""
    lines = ["| device (torch) | row | steady epoch eager / --fast | speed-up | 200-epoch run, projected: eager / --fast "
             "| measured --fast run (top-1) | N runs at once: throughput vs one, eager / --fast "
             "| profiled step: wall / GPU ms (GPU kernels), eager / --fast "
             "| fp32 --fast == eager | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        checks = {c["row"]: c["identical"] for c in r.get("checks", [])}
        for row in r["rows"]:
            e, f = row["eager"], row["fast"]
            full = row.get("full_fast")
            measured = f"{full['wall_s']:.0f} s ({full['top1']:.2f}%)" if full else "—"
            same = {True: "yes, bit for bit", False: "**no**"}.get(checks.get(row["row"]), "not checked")
            par = "; ".join(f"{p['n']}{' (MPS)' if p['mps'] is True else ''}: {_x(p['eager'])} / {_x(p['fast'])}"
                            for p in parallel_runs(row)) or "—"
            lines.append(f"| {r['device_name']} ({r['torch_version']}) | `{row['row']}` | {e['steady_epoch_s']:.2f} s / "
                         f"{f['steady_epoch_s']:.2f} s | {row['speedup_steady_epoch']:.1f}x | "
                         f"{e['projected_run_s']:.0f} s / {f['projected_run_s']:.0f} s{old_projection(f)} | {measured} | {par} | "
                         f"{_step(e.get('profile'))} / {_step(f.get('profile'))} | {same} | "
                         f"{(r['git_commit'] or '?')[:7]}{' (dirty)' if r.get('git_dirty') else ''} |")
    return lines


def old_projection(t):
    """A mark for a projection made before the evaluations were timed one by one (no final_eval_s): it counted the
    final fp32 evaluation, with its cuDNN autotuning, for each of the 40 bf16 evaluations."""
    return "" if "final_eval_s" in t else " (*)"


def _step(profile):
    if not usable(profile):
        return "—"
    return (f"{profile['wall_ms_per_step']:.2f} / {profile['gpu_ms_per_step']:.2f} ms "
            f"({profile['gpu_activities_per_step']:.0f})")


def bound_lines(reports):
    """One line per row and path: what bounds its training step (bound_by), from the profiled steps."""
    lines = []
    for r in reports:
        for row in r["rows"]:
            for path, name in (("eager", "eager"), ("fast", "--fast")):
                why = bound_by(row[path].get("profile"))
                if why:
                    top = row[path]["profile"].get("top_gpu_kernels") or []
                    kernels = "; ".join(f"`{k['name'][:60]}` x{k['per_step']:.0f} {k['share']:.0%}" for k in top[:5])
                    lines.append(f"- `{row['row']}` {name} on {r['device_name']}: a step is bound by {why}."
                                 + (f" Most GPU time per step: {kernels}." if kernels else ""))
    return lines


def fast_steps(fast_path):
    """The training steps a --fast run took (its "fast_path" counters: eager warm-up steps and graph replays); 0 for
    an eager run, whose JSON does not count its steps."""
    return (fast_path or {}).get("eager_steps", 0) + (fast_path or {}).get("graph_replays", 0)


def step_ms(result):
    """A --fast run's steady training time per step (ms): its steady epoch (timings(): the median after the lr
    warm-up, evaluations taken out) over its steps per epoch (fast_steps over its epochs); None for an eager run or
    one without finished epochs."""
    steps, epochs = fast_steps(result.get("fast_path")), result.get("epochs_completed") or 0
    if not steps or not epochs or not result.get("history"):
        return None
    return 1000 * timings(result, result["args"]["warmup_epochs"])["steady_epoch_s"] / (steps / epochs)


def bench_erm_step_ms(reports, setting, device, at_once, on_mps):
    """ERM's --fast step time (ms) from the benchmark JSON of this GPU and setting, for `at_once` runs sharing it
    (one alone: the timed --fast run; more: the median of the runs at once timed with that number, under MPS or
    not as asked), with the date it was measured; (None, None) where no benchmark timed that."""
    for r in reports:
        try:
            same = common.setting_name(common.row_args("erm.py", shlex.split(r["data_flags"]) + ["--device", "cpu"]))
        except (SystemExit, KeyError, ValueError):
            continue
        for row in r.get("rows", []) if (r.get("device_name"), same) == (device, setting) else []:
            steps = fast_steps(row["fast"].get("fast_path")) / r["epochs"]
            if row["row"] != "erm.py" or not steps:
                continue
            if at_once == 1 and not on_mps:
                return 1000 * row["fast"]["steady_epoch_s"] / steps, r.get("date_utc")
            for par in parallel_runs(row):
                epochs = (par.get("fast") or {}).get("steady_epoch_s")
                if par["n"] == at_once and (par["mps"] is True) == on_mps and epochs:
                    return 1000 * statistics.median(epochs) / steps, par.get("measured") or r.get("date_utc")
    return None, None


def step_cost_lines(runs, reports=(), tolerance=1.25):
    """The table's --fast runs (load_results of a results folder) measured against ERM: per setting, GPU and number
    of runs at once, each method's median step time over its seeds, its multiple of ERM's under the same conditions
    (the table's ERM runs made that way, else the benchmark JSON's ERM timing of that number at once:
    bench_erm_step_ms), and whether that stays within the method's inherent multiple (x tolerance: runs that share
    the GPU slow each other by what runs beside them). Markdown lines; [] without --fast GPU runs."""
    groups = {}
    for r in runs:
        ms = step_ms(r) if r["status"] == "completed" and r.get("device_name", "cpu") != "cpu" else None
        if ms is not None:
            key = (r["setting"], r["device_name"], r["torch_version"], r.get("runs_at_once") or 1, bool(r.get("mps")))
            groups.setdefault(key, {}).setdefault(r["method"], []).append((ms, r))
    lines, alone = [], []
    for (setting, device, torch_version, at_once, on_mps), methods in sorted(groups.items()):
        shared = (f"{at_once} runs at once" if at_once > 1 else "one run alone") + (" under MPS" if on_mps else "")
        medians = {m: statistics.median(ms for ms, _ in found) for m, found in methods.items()}  # over the seeds
        if "erm" in methods:
            erm, source = medians["erm"], "the table's ERM runs"
        else:
            erm, date = bench_erm_step_ms(reports, setting, device, at_once, on_mps)
            source = f"ERM from the benchmark ({date})"
        if erm is None:
            alone.append(f"{', '.join(sorted(methods))} ({setting}, {device}, {shared})")
            continue
        lines += ["", f"{setting} on {device} (torch {torch_version}), {shared}; {source}:", "",
                  "| method | ms per step (seeds) | x ERM | inherent multiple | within it? |", "|---|---|---|---|---|"]
        if "erm" not in methods:
            lines.append(f"| erm (benchmark) | {erm:.2f} | 1.00x | 1.0x (one forward-backward pass) | — |")
        for method in sorted(methods, key=lambda m: (m != "erm", m)):
            ms = medians[method]
            inherent, why = common.result_multiple(methods[method][0][1])
            x = ms / erm
            verdict = "—" if method == "erm" else "yes" if x <= inherent * tolerance else f"**no** ({x / inherent:.1f}x it)"
            lines.append(f"| {method} | {ms:.2f} ({len(methods[method])}) | {x:.2f}x | {inherent:.1f}x ({why}) | {verdict} |")
    if alone:
        lines += ["", "Not compared (no ERM run and no benchmark timing of ERM with as many runs at once): "
                  + "; ".join(alone) + "."]
    if not lines:
        return []
    return ["Every method's training step against ERM's, measured in the table's own `--fast` runs (the median over "
            "seeds of a run's steady epoch over its steps per epoch; runs that shared the GPU are compared with ERM "
            "runs that shared it the same way, else with the benchmark's ERM runs of as many at once, so their "
            "multiples are rough: each run was slowed by whatever ran beside it). Within its inherent multiple: at "
            f"most {tolerance:g} x the passes its math needs (a backward pass counted as two forwards)."] + lines


def table_time_lines(runs, target_min=10):
    """The whole table of run_all.sh (its rows x seeds) against the speed target, from the table's --fast GPU runs
    made so far: per setting and GPU, the GPU time they took (each run's wall time / the runs sharing the GPU) over
    the ERM steps their math needed (each run's steps x its inherent_multiple) is a cost per ERM step; every row x
    seed at that cost, by its multiple and its steps (a row not run yet: ERM's), gives the whole table. Markdown
    lines; [] without such runs."""
    table, seeds = common.table_methods(), common.table_seeds()
    groups = {}
    for r in runs:
        if r["status"] == "completed" and r["method"] in table.values() and fast_steps(r.get("fast_path")) \
                and r.get("device_name", "cpu") != "cpu":
            groups.setdefault((r["setting"], r["device_name"]), []).append(r)
    lines = []
    for (setting, device), found in sorted(groups.items()):
        gpu_s = sum(r["wall_time_s"] / (r.get("runs_at_once") or 1) for r in found)
        per_step = gpu_s / sum(common.result_multiple(r)[0] * fast_steps(r["fast_path"]) for r in found)
        a, counts = found[0]["args"], found[0]["train_class_counts"]
        erm_steps = a["epochs"] * math.ceil(sum(counts) / a["batch_size"])  # (every row but undersampling)
        data = ["--dataset", "synthetic", "--device", "cpu", "--imbalance-type", a["imbalance_type"],
                "--imbalance-ratio", repr(a["imbalance_ratio"])]
        work = 0.0  # the whole table in ERM steps
        for row, method in table.items():
            steps = [fast_steps(r["fast_path"]) for r in found if r["method"] == method]
            multiple = common.inherent_multiple(row.split()[0], vars(common.row_args(row, data)), len(counts))[0]
            work += len(seeds) * multiple * (statistics.median(steps) if steps else erm_steps)
        shared = sorted({(r.get("runs_at_once") or 1, bool(r.get("mps"))) for r in found})
        how = ", ".join(f"{n} at once{' under MPS' if m else ''}" if n > 1 else "one alone" for n, m in shared)
        lines.append(f"The whole table on {setting} ({len(table)} rows x {len(seeds)} seeds = {len(table) * len(seeds)} "
                     f"runs, {work / erm_steps:.0f} ERM runs' worth of steps by the passes each row's math needs): "
                     f"its {len(found)} `--fast` runs so far took {gpu_s:.0f} s of the {device} ({how}; each run's "
                     f"wall time / the runs sharing the GPU), {1000 * per_step:.2f} ms per ERM step; at that rate "
                     f"the whole table takes about {per_step * work / 60:.0f} minutes of that GPU, against a target "
                     f"of {target_min} minutes on an H100.")
    return lines


def write_speed_pages(results_dir=os.path.join(ROOT, "results"), readme=os.path.join(ROOT, "README.md")):
    """results/SPEED.md and README's block between the speed markers, from every results/bench-*.json."""
    files = sorted(f for f in os.listdir(results_dir) if f.startswith("bench-") and f.endswith(".json")) \
        if os.path.isdir(results_dir) else []
    reports = [json.load(open(os.path.join(results_dir, f))) for f in files]
    if reports:
        body = [f"Generated by `python studies/benchmark.py --report` from {', '.join(f'`results/{f}`' for f in files)}. "
                "Steady epoch: the median epoch after the lr warm-up, training only; projected: setup + first epoch + "
                "199 steady epochs + 39 bf16 evaluations + the final fp32 one, from a short timed run; measured: a "
                "whole 200-epoch run, end to end.", ""]
        body += speed_lines(reports)
        old = [(r["device_name"], row["row"], name, row[p]) for r in reports for row in r["rows"]
               for p, name in (("eager", "eager"), ("fast", "--fast")) if old_projection(row[p])]
        if old:
            body += ["", "(*) Projected by the first version of the benchmark, which timed one evaluation only, the "
                         "final fp32 one with its cuDNN autotuning, and counted it for each of the 40 evaluations of a "
                         "run: an overestimate by up to 39 x that time (" + "; ".join(
                             f"{dev} `{row}` {name}: {39 * t['eval_s']:.0f} s of the {t['projected_run_s']:.0f} s"
                             for dev, row, name, t in old) + "). The next benchmark times each evaluation."]
        accuracy = accuracy_lines(reports)
        if accuracy:
            body += ["", "Accuracy of the two paths (`--accuracy N`: N seeds each for the whole protocol, in the "
                         "table's precision; the eager ones in fp32 where the line says so):", ""] + accuracy
        grads = class_grads_lines(reports)
        if grads:
            body += ["", "PCNSGD's per-class gradients (`--class-grads`: its C backward passes or one batched "
                         "backward, the same g_l; each timed as one run alone, where the table runs several at once "
                         "under MPS, which may shrink the gain of fewer, larger kernels; the table takes the batched one "
                         f"only where its GPU tests passed and it was more than {CLASS_GRADS_GAIN}x faster):", ""] + grads
        bounds = bound_lines(reports)
        if bounds:
            body += ["", "Where a step's time goes (`--profile-steps`: torch.profiler over steps of the second epoch "
                         "of a 2-epoch run):", ""] + bounds
        partial = [f for f, r in zip(files, reports) if r.get("complete") is False]
        if partial:
            body += ["", f"Stopped before the end (a time limit): {', '.join(f'`results/{f}`' for f in partial)}; "
                         "its rows above are whole, the rest was not measured."]
    else:
        body = ["Not measured yet: no `results/bench-*.json` is committed. `python studies/benchmark.py --check` on "
                "a GPU writes one and regenerates this table."]
    try:
        runs = common.load_results(results_dir)
        costs, whole = step_cost_lines(runs, reports), table_time_lines(runs)
    except common.UserError as e:  # a misplaced results JSON: the results report says so too
        costs, whole = [f"The table's runs could not be read for the cost per step: {e}"], []
    for lines in (costs, whole):
        if lines:
            body += [""] + lines
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "SPEED.md"), "w") as f:
        f.write("\n".join(["# Speed: --fast (one CUDA graph per step) vs eager", ""] + body) + "\n")
    common.write_readme_block("speed", body, readme)
    return body


def bench_name(device_name):
    """The benchmark JSON's file name of a device: bench-nvidia-h200.json."""
    return f"bench-{slug(device_name, '-').lower()}.json"


def default_out(device_name):
    """results/bench-<gpu>.json, committed; a CPU plumbing check's results/scratch/bench-cpu.json is not."""
    return os.path.join(ROOT, "results", *(["scratch"] if device_name == "cpu" else []), bench_name(device_name))


def newest_bench(results_dir=os.path.join(ROOT, "results"), device_name=None, own_only=False):
    """The benchmark JSON of this GPU (results/bench-<device_name>.json), else (not own_only) the newest
    bench-*.json; None."""
    files = sorted((f for f in glob.glob(os.path.join(results_dir, "bench-*.json"))
                    if os.path.basename(f) != bench_name("cpu")), key=os.path.getmtime)  # a CPU check timed no GPU
    own = os.path.join(results_dir, bench_name(device_name)) if device_name else None
    if own in files:
        files.append(own)
    elif own_only and device_name:
        return None
    if not files:
        return None
    with open(files[-1]) as f:
        return json.load(f)


MPS_GAIN = 1.2  # run the table under MPS only where runs at once under MPS had more than this x one run's throughput


def choose(results_dir=os.path.join(ROOT, "results"), device_name=None, mps_gain=MPS_GAIN):
    """(fast, mps) for run_all.sh from newest_bench(): --fast only where its fp32 checks found --fast and eager
    identical; MPS only where graphed runs at once under MPS (the best of the numbers timed) had more than
    `mps_gain` times one run's throughput."""
    bench = newest_bench(results_dir, device_name)
    if bench is None:
        return False, False
    checks = bench.get("checks") or []
    fast = bool(checks) and all(c["identical"] for c in checks) and bench.get("gpu_tests") != "failed"
    gains = []  # per row timed under MPS: its best number at once
    for row in bench.get("rows", []):
        timed = [_gain(p) for p in parallel_runs(row) if p.get("mps") is True]
        if timed:
            gains.append(max((g for g in timed if g is not None), default=None))
    return fast, fast and bool(gains) and all(g is not None and g > mps_gain for g in gains)


def parallel_runs(row):
    """A benchmark row's timings of several runs at once: a list of {"n", "mps", "eager", "fast"} (an older JSON
    holds one as a dict), the fewest runs at once first."""
    par = row.get("parallel") or []
    return sorted([par] if isinstance(par, dict) else par, key=lambda p: p["n"])


def _gain(p):
    return (p.get("fast") or {}).get("throughput_vs_one_run")


WIDTHS = (4, 8)  # the numbers of --fast runs at once under MPS that .ci/gpu-session times, one per stage 1 (once
# per version of the training code)
MORE_AT_ONCE = 1.1  # more runs at once (each slower, so fewer end before a deadline) only for 10% more throughput


def choose_jobs(results_dir=os.path.join(ROOT, "results"), device_name=None):
    """run_all.sh's JOBS under MPS from newest_bench(): of the numbers of --fast runs of ERM at once timed under MPS
    (the table's reference row), the one with the most throughput, a larger number only where it beats the smaller
    by MORE_AT_ONCE; 0: none timed."""
    best, best_gain = 0, 0.0
    for row in (newest_bench(results_dir, device_name) or {}).get("rows", []):
        for p in parallel_runs(row) if row["row"] == "erm.py" else []:
            gain = _gain(p)
            if p.get("mps") is True and gain is not None and (not best or gain > best_gain * MORE_AT_ONCE):
                best, best_gain = p["n"], gain
    return best


def next_width(results_dir=os.path.join(ROOT, "results"), device_name=None):
    """The number of runs at once under MPS that this GPU's own benchmark JSON has not timed yet (WIDTHS in
    order; 8 only where 4 runs at once paid at all); 0: nothing left to time."""
    rows = (newest_bench(results_dir, device_name, own_only=True) or {}).get("rows", [])
    timed = {p["n"]: _gain(p) for row in rows for p in parallel_runs(row) if p.get("mps") is True}
    for n in WIDTHS:
        if n not in timed:
            return n
        if timed[n] is None or timed[n] <= MPS_GAIN:  # more at once would not pay either
            return 0
    return 0


def projected_run_s(fast, results_dir=os.path.join(ROOT, "results"), device_name=None):
    """The projected protocol run (s) of ERM on the path `fast` picks in newest_bench() (run_all.sh's NEW_RUN_S, an
    ERM run, which it multiplies by the passes a row's step needs), else the longest projected run; 0: none."""
    rows = (newest_bench(results_dir, device_name) or {}).get("rows", [])
    path = "fast" if fast else "eager"
    runs = {r["row"]: r[path]["projected_run_s"] for r in rows if r.get(path, {}).get("projected_run_s")}
    return runs.get("erm.py", max(runs.values(), default=0))


def training_code(root=ROOT):
    """{file: code_sha256} of the code that trains (common.py's part above its run_all.sh table and report,
    methods/*.py): docstrings and comments left out, so that an edit of the report needs no new GPU check."""
    files = sorted(f"methods/{f}" for f in os.listdir(os.path.join(root, "methods")) if f.endswith(".py"))
    return {"common.py": common.common_code_sha256(os.path.join(root, "common.py")),
            **{f: common.code_sha256(os.path.join(root, f)) for f in files}}


def of_this_code(bench, root=ROOT):
    """Was the benchmark JSON `bench` made with the code that trains there is now (training_code)? False for None and
    for an older JSON that does not say."""
    return bool(bench) and bench.get("code_sha256") == training_code(root)


def checked_this_code(results_dir=os.path.join(ROOT, "results"), device_name=None, root=ROOT):
    """Did a benchmark of this GPU (its own JSON, complete, or at least through its fp32 checks) check the code
    there is now? False without one, or where it does not say (an older JSON). .ci/gpu-session repeats the GPU
    tests and the fp32 check where not: a change to the fast path or a method's step would otherwise train the
    whole table on a path nobody checked, and another GPU model is checked (and timed) on its own."""
    bench = newest_bench(results_dir, device_name, own_only=True)
    # "checks_done": its fp32 checks all ended, even where a time limit stopped the timings after them (a stage 1
    # that does not fit its time would otherwise start again in every session, and never fit)
    return of_this_code(bench, root) and bool(bench.get("complete") or bench.get("checks_done"))


def kept_parallel(earlier, n):
    """Of a row's earlier timings of runs at once (earlier_benchmark), those a benchmark timing n at once keeps: all
    but the one of n (0 or 1: it times none)."""
    return [p for p in earlier if n <= 1 or p["n"] != n]


KEPT = ("gpu_tests", "gpu_tests_batched", "class_grads")  # what a benchmark that does not measure it again keeps


def earlier_benchmark(path):
    """From the benchmark JSON at `path` (the one a new benchmark replaces), what a benchmark that does not measure
    it again keeps (e.g. an --accuracy session): ({row: its "parallel" measurements, each dated as "measured"},
    {key: its value} for the KEPT keys it has: the GPU tests' outcomes and the --class-grads timing, dated too, where
    it checked the code there is now, and a failed GPU test whatever the code); ({}, {}) where there is none."""
    try:
        with open(path) as f:
            old = json.load(f)
        # a failed GPU test whatever the code (as before: no --fast, no batched backward, until tests pass again);
        # a passed one and the timing only of this code (a test that passed on older code, beside a benchmark that
        # ran none, would otherwise choose the batched backward for code no GPU ran)
        same_code = of_this_code(old)
        kept = {k: old[k] for k in KEPT if old.get(k) is not None and (same_code or old[k] == "failed")}
        if "class_grads" in kept:
            kept["class_grads"] = {"measured": old.get("date_utc"), **kept["class_grads"]}  # (an older date kept)
        return ({r["row"]: [{"measured": old.get("date_utc"), **p} for p in parallel_runs(r)]
                 for r in old.get("rows", []) if r.get("parallel")}, kept)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}


def carry_over(report, kept):
    """What a new benchmark `report` takes over from the JSON it replaces (`kept`, earlier_benchmark's): the outcome
    of GPU tests it did not run ("skipped" this time) and, until it times them again, the --class-grads timings."""
    for key in ("gpu_tests", "gpu_tests_batched"):
        if report.get(key) == "skipped":
            report[key] = kept.get(key) or "skipped"
    if "class_grads" in kept:
        report["class_grads"] = kept["class_grads"]
    return report


def main(argv=None):
    args = parse_args(argv)
    if args.choose:
        cuda = common.torch.cuda.is_available()
        name = common.torch.cuda.get_device_name() if cuda else None
        fast, use_mps = choose(device_name=name)
        print(f"FAST={int(fast)} MPS={int(use_mps)} RUN_S={round(projected_run_s(fast, device_name=name))} "
              f"CLASS_GRADS={class_grads_now(device_name=name)} "
              f"CHECKED={int(checked_this_code(device_name=name))} "
              f"JOBS={choose_jobs(device_name=name) if use_mps else 0} PARALLEL_NEXT={next_width(device_name=name)}")
        return
    if args.report:
        write_speed_pages()
        print(f"wrote {os.path.join(ROOT, 'results', 'SPEED.md')} and README's speed table")
        return
    data_flags = shlex.split(args.data_flags) + ["--device", args.device]
    here = os.getcwd()
    os.chdir(ROOT)  # where the runs start, so where a relative --data-dir is
    try:  # missing data stops the benchmark here, with the flag to set, not in its first run
        common.check_data(common.row_args("erm.py", data_flags), "benchmark.py: --data-flags \"--dataset "
                          "imagefolder --data-dir <folder> --imbalance-ratio 100\", or another dataset's flags")
    finally:
        os.chdir(here)
    work = args.keep or tempfile.mkdtemp(prefix="imbalance-ref-bench-")
    log_dir = os.path.join(work, "logs")
    os.makedirs(log_dir, exist_ok=True)
    commit, dirty = common.git_state()
    report = {"device_name": None, "torch_version": common.torch.__version__, "git_commit": commit,
              "git_dirty": dirty, "code_sha256": training_code(), "kernel": platform.release(),  # gVisor: 4.4.0
              "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
              "epochs": args.epochs, "project_epochs": args.project_epochs,
              "project_eval_every": args.project_eval_every, "data_flags": args.data_flags,
              "checks": [], "rows": [],
              # .ci/gpu: did the GPU tests pass before this benchmark ("failed": no --fast; "skipped": as before)
              "gpu_tests": os.environ.get("IMBALANCE_REF_GPU_TESTS"),
              # ... and those of pcn_sgd.py --class-grads batched, which decide PCN_CLASS_GRADS with its timing
              "gpu_tests_batched": os.environ.get("IMBALANCE_REF_GPU_TESTS_BATCHED")}
    t_start = time.time()
    dev = common.torch.device(args.device)
    report["device_name"] = common.torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out_path = args.out or default_out(report["device_name"])
    earlier, kept = earlier_benchmark(out_path)
    carry_over(report, kept)

    def save(complete):  # after every step, so that a benchmark stopped by a time limit keeps what it measured
        report["complete"] = complete
        report["bench_wall_s"] = time.time() - t_start
        common.write_json(out_path, report)

    print(f"[bench] {args.device}, torch {common.torch.__version__}, rows: {', '.join(args.rows)}; runs in {work}",
          flush=True)
    if args.check:
        for row in args.rows:
            c = fp32_check(row, data_flags, args.check_flags, work, log_dir)
            report["checks"].append(c)
            print(f"[bench] fp32 check {row}: {'identical' if c['identical'] else 'DIFFERENT'} "
                  f"(max |loss diff| {c['max_abs_loss_diff']:.3g})", flush=True)
            save(complete=False)
        report["checks_done"] = True  # (checked_this_code: the timings below may still be cut short)
        save(complete=False)
    # evaluations during the run (bf16: a first one with its cuDNN autotuning, then steady ones) and the final one
    timed = ["--epochs", str(args.epochs), "--eval-every", str(max(1, args.epochs // 3)), "--seed", "0"]  # seed last
    for row in args.rows:
        name = slug(row)
        entry = {"row": row}
        for path, extra in (("eager", []), ("fast", ["--fast"])):
            result, cmd = run_method(row, data_flags + timed + extra, work, f"bench_{name}_{path}", log_dir)
            t = timings(result, result["args"]["warmup_epochs"])
            t["projected_run_s"] = project(t, args.project_epochs, args.project_eval_every)
            t["command"] = cmd
            entry[path] = t
            if args.profile_steps:
                profiled = ["--epochs", "2", "--eval-every", "2", "--profile-steps", str(args.profile_steps), "--seed", "0"]
                try:
                    result, _ = run_method(row, data_flags + profiled + extra, work, f"prof_{name}_{path}", log_dir)
                    t["profile"] = result.get("profile")
                except SystemExit as e:  # e.g. the profiler crashed the process: recorded, the benchmark goes on
                    t["profile"] = {"error": str(e)[-500:]}
                print(f"[bench] {row} {path}: a step is bound by {bound_by(t['profile']) or t['profile']}", flush=True)
        entry["speedup_steady_epoch"] = entry["eager"]["steady_epoch_s"] / entry["fast"]["steady_epoch_s"]
        entry["speedup_projected_run"] = entry["eager"]["projected_run_s"] / entry["fast"]["projected_run_s"]
        if row in earlier:  # the earlier benchmark's timings (dated in "measured"), but for the number timed now
            entry["parallel"] = kept_parallel(earlier[row], args.parallel)
        report["rows"].append(entry)  # saved now and again after each part below: a time limit keeps the timings
        save(complete=False)
        if args.parallel > 1:
            par = {"n": args.parallel, "mps": None}
            entry["parallel"] = sorted(entry.get("parallel", []) + [par], key=lambda p: p["n"])
            if args.mps:
                why = mps("start")
                par["mps"] = True if why is None else f"not started: {why}"
            # saved as cut short until it ends: a time limit here leaves a timing that next_width does not ask for
            # again (the next session would be stopped at the same place)
            par.update({path: {"error": CUT_SHORT, "throughput_vs_one_run": None} for path in ("eager", "fast")})
            save(complete=False)
            try:
                for path, extra in (("eager", []), ("fast", ["--fast"])):
                    jobs = [(row, data_flags + timed[:-1] + [str(k)] + extra, f"par_{name}_{path}_{k}")
                            for k in range(args.parallel)]
                    try:  # a failure here (e.g. no MPS server) is recorded, the rest of the benchmark goes on
                        steady = [timings(r, r["args"]["warmup_epochs"])["steady_epoch_s"]
                                  for r, _ in run_methods(jobs, work, log_dir, mps_on=par["mps"] is True)]
                    except SystemExit as e:
                        print(f"[bench] {args.parallel} {path} runs at once failed: {str(e)[:300]}", flush=True)
                        par[path] = {"error": str(e)[-1000:], "throughput_vs_one_run": None}
                        continue
                    par[path] = {
                        "steady_epoch_s": steady,
                        "throughput_vs_one_run": args.parallel * entry[path]["steady_epoch_s"] / max(steady)}
            finally:
                if par["mps"] is True:
                    mps("stop")
            save(complete=False)
        if args.full:
            full = ["--epochs", str(args.project_epochs), "--eval-every", str(args.project_eval_every), "--seed", "0",
                    "--fast"]
            result, cmd = run_method(row, data_flags + full, work, f"full_{name}_fast", log_dir)
            entry["full_fast"] = {"wall_s": result["wall_time_s"], "setup_s": result["setup_time_s"],
                                  "top1": result["final"]["top1"], "epochs": result["epochs_completed"],
                                  "fast_path": result.get("fast_path"), "command": cmd}
            save(complete=False)
        if args.accuracy:
            why = mps("start") if args.mps else "not asked for"  # eager and graphed runs share the GPU at once
            try:
                entry["accuracy"] = accuracy_check(row, data_flags, args.accuracy, args.project_epochs,
                                                   args.project_eval_every, args.accuracy_dir, log_dir,
                                                   table_dir=args.table_dir or None, mps_on=why is None,
                                                   eager_fp32=args.accuracy_fp32)
            finally:
                if why is None:
                    mps("stop")
            print("[bench] " + accuracy_lines([{"device_name": report["device_name"], "rows": [entry]}])[0][2:],
                  flush=True)
        save(complete=False)
        e, f = entry["eager"], entry["fast"]
        full_txt = f", full fast run {entry['full_fast']['wall_s']:.1f} s" if "full_fast" in entry else ""
        par_txt = "".join(f"; {p['n']} at once{' (MPS)' if p['mps'] is True else ''}: eager {_x(p['eager'])}, "
                          f"fast {_x(p['fast'])} the throughput of one run" for p in parallel_runs(entry))
        print(f"[bench] {row}: steady epoch eager {e['steady_epoch_s']:.3f} s, fast {f['steady_epoch_s']:.3f} s "
              f"({entry['speedup_steady_epoch']:.2f}x); projected {args.project_epochs}-epoch run eager "
              f"{e['projected_run_s']:.1f} s, fast {f['projected_run_s']:.1f} s "
              f"({entry['speedup_projected_run']:.2f}x){full_txt}{par_txt}", flush=True)
    if args.class_grads:
        # saved as cut short until it ends: a time limit here leaves that, not the earlier JSON's timing (carried
        # over above) beside this benchmark's GPU tests, which may be of another outcome
        report["class_grads"] = {"row": PCN_ROW, "error": CUT_SHORT}
        save(complete=False)
        report["class_grads"] = class_grads_timing(data_flags, min(args.epochs, CLASS_GRADS_EPOCHS), work, log_dir)
    save(complete=True)
    print(f"[bench] wrote {out_path} ({report['bench_wall_s']:.0f} s)", flush=True)
    print("\n".join(speed_lines([report]) + [""] + accuracy_lines([report]) + bound_lines([report])
                    + class_grads_lines([report])), flush=True)
    if os.path.dirname(os.path.abspath(out_path)) == os.path.join(ROOT, "results"):
        write_speed_pages()
    if any(not c["identical"] for c in report["checks"]):
        raise SystemExit("error: --fast and eager differ in fp32 for: "
                         + ", ".join(c["row"] for c in report["checks"] if not c["identical"]))


if __name__ == "__main__":
    main()
