"""The --fast path (common.GraphedStep: the training step as one CUDA graph) and the benchmark command.

On CPU: --fast changes nothing (the same JSON as eager), the rules that decide when a new graph is captured,
and the benchmark's plumbing. With a CUDA GPU: --fast and eager give bit-identical fp32 runs for rows that
cross an lr change and the DRW switch (skipped without a GPU)."""
import json
import math
import os
import re
import subprocess

import pytest
import torch

import common
from conftest import ROOT, SMOKE_ARGS, load_script, read_results, run_script, run_script_forked

CUDA = torch.cuda.is_available()


def test_fast_on_cpu_is_the_eager_run(tmp_path):
    runs = {}
    for name, extra in (("eager", []), ("fast", ["--fast"])):
        proc = run_script_forked("methods/class_weights.py", *SMOKE_ARGS, "--deterministic", "--drw-epoch", "1",
                                 "--out", tmp_path / name, *extra)
        (res,) = read_results(tmp_path / name).values()
        runs[name] = (proc, res)
    (pe, e), (pf, f) = runs["eager"], runs["fast"]
    assert "--fast only changes CUDA runs" in pf.stderr and "--fast" not in pe.stderr
    assert f["args"]["fast"] is True and f["fast_path"] is None and e["fast_path"] is None
    assert [h["train_loss"] for h in e["history"]] == [h["train_loss"] for h in f["history"]]
    assert e["final"] == f["final"]
    assert all(h["elapsed_s"] > 0 for h in f["history"]) and f["setup_time_s"] > 0


def configuration_of(lr, training=True):
    """GraphedStep.configuration without a GPU: the object is built without __init__ (which makes a CUDA stream)."""
    model = torch.nn.Linear(2, 2)
    model.train(training)
    step = object.__new__(common.GraphedStep)
    step.model = model
    step.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return step.configuration


def test_what_selects_a_new_graph():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    w = torch.ones(3)
    key = configuration_of(0.1)
    # new values in the same tensors: the same graph (they are copied into the graph's input buffers)
    assert key((x, y, w)) == key((x + 1, y + 1, w * 5))
    # a None class weight (before DRW) and a tensor one (after) need different graphs
    assert key((x, y, None)) != key((x, y, w))
    # the lr is a Python float baked into the captured optimizer kernels
    assert configuration_of(0.1)((x, y)) != configuration_of(0.001)((x, y))
    assert configuration_of(0.1)((x, y)) != configuration_of(0.1, training=False)((x, y))
    # a different shape or layout cannot replay a graph recorded for another
    assert key((x, y)) != key((torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)))
    assert key((x, y)) != key((x.t().contiguous().t(), y))
    assert key((x, y)) != key((x.double(), y))
    assert key((x, y, 1.0)) != key((x, y, 2.0))


def test_graphed_step_needs_eager_warmup():
    with pytest.raises(ValueError, match="warmup"):
        common.GraphedStep(lambda: None, torch.nn.Linear(1, 1), None, warmup=0)


def load_benchmark():
    return load_script("studies/benchmark.py")


def timing(n, gain, mps=True):
    """A benchmark row's timing of n --fast runs at once: their throughput against one run's, under MPS or not."""
    return {"n": n, "mps": mps, "fast": {"throughput_vs_one_run": gain}}


def test_benchmark_stops_on_missing_data_before_any_run_naming_its_own_flag(tmp_path, monkeypatch):
    """The runs' error would say --data-dir, a flag the benchmark has not: it checks the data itself first (a
    relative folder from the repository root, where its runs start), and names --data-flags."""
    bench = load_benchmark()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(common.UserError, match=r"data folder .*nodata does not exist.*benchmark.py: --data-flags"):
        bench.main(["--device", "cpu", "--data-flags", "--dataset imagefolder --data-dir nodata", "--keep",
                    str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()  # nothing started


def test_benchmark_plumbing_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("studies/benchmark.py", "--device", "cpu", "--rows", "class_weights.py",
                      "--data-flags", "--dataset synthetic --imbalance-ratio 100 --batch-size 64", "--epochs", "3",
                      "--check", "--check-flags", "--epochs 2 --warmup-epochs 1 --lr-decay-epochs 1 --drw-epoch 1",
                      "--parallel", "2", "--accuracy", "2", "--accuracy-fp32", "--project-epochs", "3",
                      "--project-eval-every", "3", "--class-grads",
                      "--accuracy-dir", tmp_path / "accuracy", "--out", out, "--keep", tmp_path / "runs")
    report = json.loads(out.read_text())
    assert report["device_name"] == "cpu" and report["torch_version"] == torch.__version__
    assert report["complete"] is True  # written after each step with complete False, so a killed run keeps its part
    assert report["checks_done"] is True  # (set once the fp32 checks ended, before the timings)
    (check,) = report["checks"]
    assert check["row"] == "class_weights.py" and "--drw-epoch" in check["flags"]
    assert check["identical"] and len(check["train_loss_fast"]) == 2  # on CPU both are the eager path
    for row in report["rows"]:
        for path in ("eager", "fast"):
            t = row[path]
            assert len(t["epoch_s"]) == 3 and t["steady_epoch_s"] > 0 and t["projected_run_s"] > t["setup_s"]
            # every evaluation timed (3 epochs: bf16 ones after epochs 1 and 2, the final fp32 one), none counted twice
            assert all(v > 0 for v in t["eval_s_per_epoch"]) and t["final_eval_s"] == t["eval_s_per_epoch"][-1]
            assert t["eval_s"] == t["eval_s_per_epoch"][1] and t["first_eval_extra_s"] >= 0
            assert t["projected_run_s"] == pytest.approx(  # --project-epochs 3, one evaluation: the final one
                t["setup_s"] + t["first_epoch_s"] + 2 * t["steady_epoch_s"] + t["final_eval_s"])
        e, f = row["eager"], row["fast"]  # the speed-ups: eager over --fast
        assert row["speedup_steady_epoch"] == pytest.approx(e["steady_epoch_s"] / f["steady_epoch_s"])
        assert row["speedup_projected_run"] == pytest.approx(e["projected_run_s"] / f["projected_run_s"])
        for path in ("eager", "fast"):  # --profile-steps of the timed runs (on CPU: no GPU activity)
            prof = row[path]["profile"]
            assert prof["steps"] >= 1 and prof["wall_ms_per_step"] > 0 and prof["gpu_activities_per_step"] == 0
        (par,) = row["parallel"]
        assert par["n"] == 2 and par["mps"] is None and len(par["fast"]["steady_epoch_s"]) == 2
        assert "error" not in par["eager"] and "error" not in par["fast"]  # the cut-short marks are replaced
        for path in ("eager", "fast"):  # 2 runs' epochs in the time of the slower one, against one run's epoch
            assert par[path]["throughput_vs_one_run"] == pytest.approx(
                2 * row[path]["steady_epoch_s"] / max(par[path]["steady_epoch_s"]))
    assert "--fast" in report["rows"][0]["fast"]["command"] and "--fast" not in report["rows"][0]["eager"]["command"]
    acc = report["rows"][0]["accuracy"]  # --accuracy 2: 2 seeds per path for --project-epochs, compared
    assert acc["n"] == 2 and acc["epochs"] == 3 and len(acc["eager"]["top1"]) == len(acc["fast"]["top1"]) == 2
    assert acc["eager"]["top1"] == acc["fast"]["top1"] and acc["same_within_noise"]  # on CPU the same path
    assert all("--seed 1" in c for c in (acc["eager"]["commands"][1], acc["fast"]["commands"][1]))
    # --accuracy-fp32: the eager seeds in fp32 (on CPU a no-op), recorded and kept apart from bf16 eager seeds
    assert acc["eager_fp32"] is True and all("--fp32" in c for c in acc["eager"]["commands"])
    assert not any("--fp32" in c for c in acc["fast"]["commands"])
    assert ": eager fp32 " in load_benchmark().accuracy_lines([report])[0]  # SPEED.md says which eager
    assert len(list((tmp_path / "accuracy").glob("*/acc_class_weights_py_*_seed*/seed*.json"))) == 4
    again = load_benchmark().accuracy_check(  # kept runs are reused, not trained again
        "class_weights.py", ["--dataset", "synthetic", "--imbalance-ratio", "100", "--batch-size", "64", "--device",
                             "cpu"], 2, 3, 3, str(tmp_path / "accuracy"), str(tmp_path), eager_fp32=True)
    assert again["eager"]["top1"] == acc["eager"]["top1"] and again["fast"]["top1"] == acc["fast"]["top1"]
    assert all("skip:" in (tmp_path / f"acc_class_weights_py_{p}_seed{k}.log").read_text()
               for p in ("eager_fp32", "fast") for k in (0, 1))
    with pytest.raises(common.UserError, match="not a completed 4-epoch run"):  # kept runs of another length
        load_benchmark().accuracy_check("class_weights.py", ["--dataset", "synthetic", "--imbalance-ratio", "100",
                                                             "--batch-size", "64", "--device", "cpu"],
                                        2, 4, 4, str(tmp_path / "accuracy"), str(tmp_path))
    assert "steady epoch eager" in proc.stdout
    lines = load_benchmark().speed_lines([report])
    assert len(lines) == 3 and "projected" in lines[0] and "yes, bit for bit" in lines[2] and "| 2: " in lines[2]
    assert "profiled step" in lines[0] and " ms (0) / " in lines[2]
    bounds = load_benchmark().bound_lines([report])
    assert len(bounds) == 2 and all("a step is bound by the CPU (a CPU run): " in b for b in bounds)
    # the generated pages: results/SPEED.md and README's block between the speed markers, from bench-*.json
    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir()
    (results / "bench-cpu.json").write_text(out.read_text())
    readme.write_text("intro\n<!-- speed:start -->\nold\n<!-- speed:end -->\nrest\n")
    load_benchmark().write_speed_pages(str(results), str(readme))
    text = readme.read_text()
    assert "old" not in text and lines[2] in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert lines[2] in (results / "SPEED.md").read_text() and "`results/bench-cpu.json`" in text
    assert "Stopped before the end" not in text
    assert "difference +0.00" in text and "the same within seed noise" in text  # the --accuracy line
    # --class-grads: PCNSGD+O's --fast step with the loop of C backward passes and with the batched backward, each
    # 3 epochs (--epochs, fewer than 4) at a constant lr; no GPU tests of the batched backward ran: the table keeps
    # the loop
    grads = report["class_grads"]
    assert grads["row"] == "pcn_sgd.py --variant pcnsgd_o" and grads["epochs"] == 3
    for how in ("loop", "batched"):
        assert len(grads[how]["epoch_s"]) == 3 and grads[how]["steady_epoch_s"] > 0
        assert f"--class-grads {how}" in grads[how]["command"] and "--warmup-epochs 0" in grads[how]["command"]
    assert grads["speedup"] == pytest.approx(grads["loop"]["steady_epoch_s"] / grads["batched"]["steady_epoch_s"])
    assert report["gpu_tests_batched"] is None and load_benchmark().choose_class_grads(report) == "loop"
    assert "the batched backward's GPU tests: not run; the table's PCNSGD rows use loop." in text
    (results / "bench-cpu.json").write_text(json.dumps({**report, "complete": False}))
    load_benchmark().write_speed_pages(str(results), str(readme))
    assert "Stopped before the end (a time limit): `results/bench-cpu.json`" in readme.read_text()
    # a later benchmark without --parallel or --class-grads (e.g. an --accuracy session) keeps these timings, dated
    assert load_benchmark().earlier_benchmark(str(out)) == (
        {"class_weights.py": [{**report["rows"][0]["parallel"][0], "measured": report["date_utc"]}]},
        {"class_grads": {**grads, "measured": report["date_utc"]}})
    assert load_benchmark().earlier_benchmark(str(tmp_path / "none.json")) == ({}, {})


def test_timings_and_projection_of_a_hand_made_run():
    """timings(): setup 2 s, then 4 epochs with their evaluations taken out of the training time; the steady epoch is
    the median after the lr warm-up (1 epoch), a steady evaluation the median of the bf16 ones after the first (whose
    extra is cuDNN's autotuning), the final one apart. project(): setup + first epoch + 199 steady + 39 bf16
    evaluations (every 5th epoch but the last) + the first one's extra + the final one."""
    bench = load_benchmark()
    history = [{"epoch": 0, "elapsed_s": 5.0, "eval_s": 0.5, "test_top1": 10.0},   # 3.0 s: 2.5 train + 0.5 eval
               {"epoch": 1, "elapsed_s": 7.2, "eval_s": 0.2, "test_top1": 20.0},   # 2.2 s: 2.0 + 0.2
               {"epoch": 2, "elapsed_s": 9.1, "test_top1": None},                  # 1.9 s of training only
               {"epoch": 3, "elapsed_s": 12.0, "eval_s": 0.8, "test_top1": 30.0}]  # 2.9 s: 2.1 + 0.8 (fp32)
    t = bench.timings({"history": history, "setup_time_s": 2.0, "wall_time_s": 12.0}, warmup_epochs=1)
    assert (t["setup_s"], t["first_epoch_s"], t["steady_epoch_s"]) == pytest.approx((2.0, 2.5, 2.0))
    assert (t["eval_s"], t["first_eval_extra_s"], t["final_eval_s"]) == pytest.approx((0.2, 0.3, 0.8))
    assert bench.project(t, 200, 5) == pytest.approx(2.0 + 2.5 + 199 * 2.0 + 39 * 0.2 + 0.3 + 0.8)


def test_bound_by_reads_the_profile():
    bound_by = load_benchmark().bound_by
    eager = {"wall_ms_per_step": 13.0, "gpu_ms_per_step": 3.0, "gpu_activities_per_step": 603, "cpu_ops_per_step": 350,
             "mean_gpu_activity_us": 5.0, "gpu_busy_fraction": 0.23}
    graphed = {**eager, "wall_ms_per_step": 3.2, "cpu_ops_per_step": 3, "gpu_busy_fraction": 0.94}
    assert bound_by(eager).startswith("the CPU (launching kernels): the GPU is busy 23% of a step")
    assert bound_by(graphed).startswith("the GPU: busy 94% of a step, 5.0 us per kernel on average")
    assert bound_by(None) is None and bound_by({"error": "RuntimeError: x"}) is None


def test_step_cost_against_erm_from_the_table_runs():
    """SPEED.md's cost per step of every method, from the table's --fast runs: a steady epoch over the steps per
    epoch, against ERM runs that shared the GPU the same way, checked against the passes the method needs."""
    bench = load_benchmark()

    def run(row, method, epoch_s, seed=0, at_once=4, steps_per_epoch=10, device="NVIDIA H200", fast=True):
        args = vars(common.row_args(row, ["--dataset", "synthetic", "--device", "cpu", "--seed", str(seed)]))
        elapsed = [1.0 + epoch_s * (e + 1) for e in range(8)]  # setup 1 s, then 8 epochs of epoch_s each
        return {"method": method, "setting": "cifar10-exp-r100", "status": "completed", "command": f"methods/{row}",
                "args": args, "train_class_counts": [100] * 10, "device_name": device, "torch_version": "2.11",
                "runs_at_once": at_once, "mps": at_once > 1, "setup_time_s": 1.0, "epochs_completed": 8,
                "wall_time_s": elapsed[-1],
                "history": [{"epoch": e, "test_top1": None, "elapsed_s": t} for e, t in enumerate(elapsed)],
                "fast_path": {"eager_steps": 2, "graph_replays": 8 * steps_per_epoch - 2} if fast else None}

    runs = [run("erm.py", "erm", 0.5), run("erm.py", "erm", 0.7, seed=1),
            run("sam.py --base ce_drw", "sam_ce_drw", 1.2), run("pcn_sgd.py", "pcnsgd", 3.9),
            run("undersampling.py", "undersampling", 0.06, steps_per_epoch=1),
            run("focal.py", "focal", 1.0),
            run("focal.py", "focal", 0.1, at_once=1),  # no ERM run alone to compare with: left out
            run("class_weights.py", "class_weights", 0.6, fast=False),  # eager: its steps are not counted
            run("class_balanced.py", "cb_softmax", 0.6, device="cpu")]
    assert bench.step_ms(runs[0]) == pytest.approx(50.0)  # 0.5 s per epoch of 10 steps
    assert common.result_multiple(runs[3]) == (7.0, "one forward and C = 10 backward passes")
    assert common.result_multiple(runs[2])[0] == 2.0 and common.result_multiple(runs[5])[0] == 1.0
    assert common.result_multiple(run("pcn_sgd.py --variant sgd_o", "sgd_o", 1.0)) == (1.0, "one forward-backward pass")
    # within its multiple up to the tolerance (runs beside it slow it): 1.2x ERM's step for one pass is "yes"
    (near,) = [l for l in bench.step_cost_lines([runs[0], run("focal.py", "focal", 0.6)]) if l.startswith("| focal")]
    assert near.endswith("| 1.20x | 1.0x (one forward-backward pass) | yes |"), near
    # the tolerance is 1.25x the multiple, and a row beyond it says by how much of ITS multiple (not of ERM's step)
    cost = lambda row, method, s: [l for l in bench.step_cost_lines([runs[0], run(row, method, s)])  # noqa: E731
                                   if l.startswith(f"| {method}")][0]
    assert cost("focal.py", "focal", 0.62).endswith("| 1.24x | 1.0x (one forward-backward pass) | yes |")
    assert cost("focal.py", "focal", 0.635).endswith("| **no** (1.3x it) |")
    assert cost("pcn_sgd.py", "pcnsgd", 4.55).endswith("| 9.10x | 7.0x (one forward and C = 10 backward passes) | "
                                                       "**no** (1.3x it) |")
    lines = bench.step_cost_lines(runs)
    assert [l for l in lines if l.endswith(":")] == ["cifar10-exp-r100 on NVIDIA H200 (torch 2.11), 4 runs at once "
                                                     "under MPS; the table's ERM runs:"]  # eager and CPU runs: none
    assert lines[-1] == "Not compared (no ERM run and no benchmark timing of ERM with as many runs at once): focal " \
                        "(cifar10-exp-r100, NVIDIA H200, one run alone)."
    table = {l.split(" | ")[0][2:]: l for l in lines if l.startswith("| ") and not l.startswith("| method")}
    assert list(table) == ["erm", "focal", "pcnsgd", "sam_ce_drw", "undersampling"]  # ERM first
    assert table["erm"].startswith("| erm | 60.00 (2) | 1.00x |")  # the median of 50 and 70 ms
    assert table["sam_ce_drw"].endswith("| 2.00x | 2.0x (two forward-backward passes) | yes |")
    assert table["pcnsgd"].endswith("| 6.50x | 7.0x (one forward and C = 10 backward passes) | yes |")
    assert table["focal"].endswith("| 1.67x | 1.0x (one forward-backward pass) | **no** (1.7x it) |")
    assert "| 1.00x |" in table["undersampling"]  # 1 step per epoch: the same time per step
    assert bench.step_cost_lines(runs[7:]) == []  # no --fast GPU run
    # no table ERM run with as many at once: ERM's step from the benchmark JSON of this GPU and setting
    report = {"device_name": "NVIDIA H200", "data_flags": "--dataset cifar10 --imbalance-ratio 100", "epochs": 10,
              "date_utc": "2026-11-28", "rows": [{"row": "erm.py", "fast": {
                  "steady_epoch_s": 0.4, "fast_path": {"eager_steps": 10, "graph_replays": 90}},
                  "parallel": [{"n": 4, "mps": True, "fast": {"steady_epoch_s": [0.5, 0.6, 0.7, 1.8]}}]}]}
    erm_ms = lambda *key: bench.bench_erm_step_ms([report], *key)  # noqa: E731
    assert erm_ms("cifar10-exp-r100", "NVIDIA H200", 4, True) == (pytest.approx(65.0), "2026-11-28")  # median / 10
    # (the median of the 4 runs' epochs, not their mean of 0.9 s)
    assert erm_ms("cifar10-exp-r100", "NVIDIA H200", 1, False) == (pytest.approx(40.0), "2026-11-28")
    assert erm_ms("cifar10-exp-r10", "NVIDIA H200", 1, False) == (None, None)  # another setting
    assert erm_ms("cifar10-exp-r100", "NVIDIA H200", 8, True) == (None, None)  # 8 at once: not timed
    assert erm_ms("cifar10-exp-r100", "NVIDIA H200", 4, False) == (None, None)  # 4 at once timed under MPS only
    lines = bench.step_cost_lines(runs[2:], [report])
    alone = lines.index("cifar10-exp-r100 on NVIDIA H200 (torch 2.11), one run alone; ERM from the benchmark "
                        "(2026-11-28):")
    at_4 = lines.index("cifar10-exp-r100 on NVIDIA H200 (torch 2.11), 4 runs at once under MPS; ERM from the "
                       "benchmark (2026-11-28):")
    assert lines[alone + 4].startswith("| erm (benchmark) | 40.00 | 1.00x |")
    assert lines[alone + 5].startswith("| focal | 10.00 (1) | 0.25x |")  # against the benchmark's 40 ms alone
    assert lines[at_4 + 4].startswith("| erm (benchmark) | 65.00 | 1.00x |")
    assert lines[at_4 + 7].startswith("| sam_ce_drw | 120.00 (1) | 1.85x |")  # against 65 ms at 4 at once


def test_benchmark_choose_reads_the_newest_json(tmp_path):
    """.ci/gpu-session trains the table with --fast only where the newest benchmark's fp32 checks passed, and under
    MPS only where graphed runs at once under MPS (4 in these JSON) beat one run by > 1.2x."""
    choose = load_benchmark().choose
    assert choose(str(tmp_path)) == (False, False)  # never benchmarked: eager

    def bench(name, identical, mps=None, gain=None, age=0):
        par = timing(4, gain, mps) if mps is not None else None
        path = tmp_path / name
        path.write_text(json.dumps({"checks": [{"row": "erm.py", "identical": identical}] if identical is not None
                                    else [], "rows": [{"row": "erm.py", "parallel": par}]}))
        os.utime(path, (1e9 + age, 1e9 + age))

    bench("bench-a.json", True)
    assert choose(str(tmp_path)) == (True, False)
    bench("bench-b.json", True, mps=True, gain=1.5, age=10)
    assert choose(str(tmp_path)) == (True, True)
    bench("bench-c.json", True, mps=True, gain=1.1, age=20)          # MPS not worth it
    assert choose(str(tmp_path)) == (True, False)
    bench("bench-d.json", True, mps="not started: no daemon", gain=2.0, age=30)
    assert choose(str(tmp_path)) == (True, False)
    bench("bench-e.json", False, mps=True, gain=3.0, age=40)         # --fast differs from eager: eager, no MPS
    assert choose(str(tmp_path)) == (False, False)
    bench("bench-f.json", None, age=50)                               # not checked: eager
    assert choose(str(tmp_path)) == (False, False)
    bench("bench-a.json", True, age=60)                               # the newest file decides
    assert choose(str(tmp_path)) == (True, False)
    bench("bench-cpu.json", False, age=70)                  # ... but a CPU plumbing check's never: it timed no GPU
    assert choose(str(tmp_path)) == (True, False)
    b = load_benchmark()  # (which the CPU check writes where nothing committed reads it)
    assert b.default_out("cpu") == os.path.join(ROOT, "results", "scratch", "bench-cpu.json")
    assert b.default_out("NVIDIA H200") == os.path.join(ROOT, "results", "bench-nvidia-h200.json")
    bench("bench-nvidia-h100-80gb-hbm3.json", True, mps=True, gain=2.0, age=0)  # ... unless this GPU has its own
    assert choose(str(tmp_path), device_name="NVIDIA H100 80GB HBM3") == (True, True)
    assert choose(str(tmp_path), device_name="NVIDIA H200") == (True, False)  # none of its own: the newest
    proc = run_script_forked("studies/benchmark.py", "--choose")
    assert re.fullmatch(r"FAST=[01] MPS=[01] RUN_S=\d+ CLASS_GRADS=(loop|batched) CHECKED=[01] JOBS=\d+ "
                        r"PARALLEL_NEXT=[048]", proc.stdout.strip()), \
        proc.stdout


def test_session_choices_read_every_check_row_and_timing_as_documented(tmp_path):
    """What .ci/gpu-session takes from a benchmark JSON with several rows: --fast only where EVERY fp32 check was
    identical and the GPU tests did not fail; MPS only where EVERY row timed under MPS gained; JOBS and the next
    number to time from ERM's timings under MPS only; RUN_S ERM's projected run of the chosen path."""
    b = load_benchmark()
    gpu = "GPU X"

    def write(checks=(), rows=(), **more):
        (tmp_path / b.bench_name(gpu)).write_text(json.dumps({"checks": list(checks), "rows": list(rows), **more}))
        return str(tmp_path)

    same = [{"row": "erm.py", "identical": True}, {"row": "sam.py", "identical": True}]
    assert b.choose(write(same)) == (True, False)
    assert b.choose(write([same[0], {**same[1], "identical": False}])) == (False, False)
    assert b.choose(write(same, gpu_tests="failed")) == (False, False)
    rows = [{"row": "erm.py", "parallel": [timing(4, 2.0)]}, {"row": "sam.py", "parallel": [timing(4, 1.1)]}]
    assert b.choose(write(same, rows)) == (True, False)  # one row did not gain under MPS
    rows[1]["parallel"] = []  # a row never timed at once has no say in MPS: the rows that were decide
    assert b.choose(write(same, rows)) == (True, True)
    rows[0]["parallel"] = [timing(4, b.MPS_GAIN)]  # exactly the threshold is not more than it
    assert b.choose(write(same, rows)) == (True, False)
    rows = [{"row": "erm.py", "parallel": [timing(4, 2.0), timing(8, 5.0, mps=False)]},
            {"row": "sam.py", "parallel": [timing(8, 5.0)]}]
    assert b.choose_jobs(write(same, rows)) == 4  # not sam's 8, nor ERM's 8 without MPS
    assert b.next_width(write(same, rows[:1]), gpu) == 8  # ERM's 8 at once without MPS is not the timing owed
    rows = [{"row": "erm.py", "eager": {"projected_run_s": 300}, "fast": {"projected_run_s": 100}},
            {"row": "sam.py", "eager": {"projected_run_s": 500}, "fast": {"projected_run_s": 200}}]
    assert (b.projected_run_s(True, write(same, rows)), b.projected_run_s(False, write(same, rows))) == (100, 300)
    assert b.projected_run_s(True, write(same, rows[1:])) == 200  # no ERM row: the longest run, to err on the long side
    # the projection counts the last epoch's evaluation where --eval-every does not divide the epochs: 10 epochs
    # every 3 evaluate after epochs 3, 6, 9 and 10 (the last, fp32): 1 + 2 + 9 x 3 + 3 x 0.5 + 0.25 + 4
    t = {"setup_s": 1, "first_epoch_s": 2, "steady_epoch_s": 3, "eval_s": 0.5, "first_eval_extra_s": 0.25,
         "final_eval_s": 4}
    assert b.project(t, 10, 3) == 35.75


def test_jobs_from_the_runs_at_once_timed_under_mps(tmp_path):
    """run_all.sh's JOBS under MPS: the number of --fast runs at once with the most throughput (8 only for 10% more
    than 4); each session times the next number this GPU has not timed (4, then 8), kept beside the earlier ones."""
    b = load_benchmark()
    path = tmp_path / "bench-gpu.json"

    def bench(*timed, identical=True):  # timed: (n, gain under MPS)
        par = [{**timing(n, g), "eager": {"throughput_vs_one_run": 3.0}} for n, g in timed]
        path.write_text(json.dumps({"checks": [{"row": "erm.py", "identical": identical}],
                                    "rows": [{"row": "erm.py", "parallel": par}]}))
        return str(tmp_path)

    assert (b.choose_jobs(bench()), b.next_width(bench(), "GPU")) == (0, 4)
    assert (b.choose_jobs(bench((4, 1.8))), b.next_width(bench((4, 1.8)), "GPU")) == (4, 8)
    assert b.next_width(bench((4, 1.1)), "GPU") == 0  # MPS did not pay at 4: 8 is not timed
    assert b.next_width(bench((4, 1.8)), "NVIDIA H100") == 4  # another GPU model times its own
    assert (b.choose_jobs(bench((4, 1.8), (8, 2.2))), b.next_width(bench((4, 1.8), (8, 2.2)), "GPU")) == (8, 0)
    assert b.choose_jobs(bench((4, 1.8), (8, 1.9))) == 4  # less than 10% more: the shorter runs
    assert b.choose_jobs(bench((4, 2.0), (8, 2.3))) == 8 and b.choose_jobs(bench((4, 2.0), (8, 2.19))) == 4  # 15%, 9.5%
    assert b.choose_jobs(bench((4, 1.8), (8, None))) == 4  # 8 at once failed
    assert b.choose(bench((4, 1.8), (8, 1.1))) == (True, True)  # MPS by the best number at once
    assert b.choose(bench((4, 1.1), (8, None))) == (True, False)
    # 8 at once cut short by a time limit (saved as such before it started): not asked for again, shown as such
    cut = {"n": 8, "mps": True, **{k: {"error": b.CUT_SHORT, "throughput_vs_one_run": None} for k in ("eager", "fast")}}
    path.write_text(json.dumps({"checks": [{"row": "erm.py", "identical": True}],
                                "rows": [{"row": "erm.py", "parallel": [{**timing(4, 1.8), "eager": {
                                    "throughput_vs_one_run": 3.0}}, cut]}]}))
    assert (b.choose_jobs(str(tmp_path)), b.next_width(str(tmp_path), "GPU")) == (4, 0)
    assert b._x(cut["fast"]) == "cut short" and b._x({"error": "boom", "throughput_vs_one_run": None}) == "failed"
    # a benchmark timing 8 at once keeps the earlier timing of 4 and replaces an earlier one of 8
    four, eight = {"n": 4, "measured": "a"}, {"n": 8, "measured": "b"}
    assert b.kept_parallel([four, eight], 8) == [four] and b.kept_parallel([four], 8) == [four]
    assert b.kept_parallel([four, eight], 0) == [four, eight]  # none timed now: all kept
    # an old JSON holds one timing as a dict
    path.write_text(json.dumps({"rows": [{"row": "erm.py", "parallel": {"n": 4, "mps": True,
                                                                           "fast": {"throughput_vs_one_run": 1.8}}}]}))
    assert b.choose_jobs(str(tmp_path)) == 4 and b.next_width(str(tmp_path), "GPU") == 8
    assert b.earlier_benchmark(str(path)) == ({"erm.py": [{"n": 4, "mps": True, "fast": {"throughput_vs_one_run": 1.8},
                                                           "measured": None}]}, {})


def test_accuracy_fast_seeds_are_the_tables_runs(tmp_path, monkeypatch):
    """--accuracy with the table's protocol trains its --fast seeds as the table's runs of the row (run_all.sh's
    folder and name: one run serves both); the eager seeds, and any run of another protocol, stay apart."""
    b = load_benchmark()
    calls = []

    def fake_run_methods(jobs, out, log_dir, reuse=False, mps_on=False):
        calls.append((jobs, out, reuse, mps_on))
        return [({"status": "completed", "epochs_completed": 1,
                  "args": {"epochs": int(j[1][j[1].index("--epochs") + 1]), "fast": "--fast" in j[1] and not eager_table},
                  "final": {"top1": tops[k]}, "wall_time_s": 1.0}, "cmd") for k, j in enumerate(jobs)]

    eager_table, tops = False, [70.0, 71.0, 72.0, 73.0]  # the eager seeds', then the --fast seeds' final top-1

    monkeypatch.setattr(b, "run_methods", fake_run_methods)
    flags = ["--dataset", "synthetic", "--device", "cpu"]
    entry = b.accuracy_check("erm.py", flags, 2, 200, 5, str(tmp_path / "acc"), str(tmp_path), str(tmp_path / "table"),
                             mps_on=True)
    jobs, out, reuse, mps_on = calls[-1]
    assert entry["fast_runs_in_table"] and reuse and mps_on and out == str(tmp_path / "acc")
    # eager 70 / 71, --fast 72 / 73: 2 points apart, 2 s.e. of the difference = 2 sqrt(0.5 / 2 + 0.5 / 2) = 1.41
    assert entry["eager"]["top1"] == [70.0, 71.0] and entry["fast"]["top1"] == [72.0, 73.0]
    assert entry["difference"] == pytest.approx(2.0) and entry["two_standard_errors"] == pytest.approx(2 * math.sqrt(0.5))
    assert entry["same_within_noise"] is False
    eager, fast = jobs[:2], jobs[2:]
    assert [j[2] for j in eager] == ["acc_erm_py_eager_seed0", "acc_erm_py_eager_seed1"] and all(len(j) == 3 for j in eager)
    assert all(j[2] is None and j[3] == str(tmp_path / "table") and "--fast" in j[1] for j in fast)
    assert all(f in j[1] for j in fast for f in ("--checkpoint-every", "--resume"))  # as run_all.sh trains them
    entry = b.accuracy_check("erm.py", flags, 2, 3, 3, str(tmp_path / "acc"), str(tmp_path), str(tmp_path / "table"))
    assert not entry["fast_runs_in_table"] and all(len(j) == 3 for j in calls[-1][0])  # 3 epochs: not the table's
    # --fast as much worse is as different; each path's own spread counts: eager 70 / 71 (std 0.71), --fast 66 / 70
    # (std 2.83), -2.50 apart, 2 s.e. = 2 sqrt(0.5 / 2 + 8 / 2) = 4.12; and two paths that agree to the digit agree
    for top1, difference, two_se, same in (([72.0, 73.0, 70.0, 71.0], -2.0, 2 * math.sqrt(0.5), False),
                                           ([70.0, 71.0, 66.0, 70.0], -2.5, 2 * math.sqrt(4.25), True),
                                           ([70.0, 70.0, 70.0, 70.0], 0.0, 0.0, True)):
        tops = top1
        entry = b.accuracy_check("erm.py", flags, 2, 3, 3, str(tmp_path / "acc"), str(tmp_path))
        assert entry["difference"] == pytest.approx(difference) and entry["same_within_noise"] is same
        assert entry["two_standard_errors"] == pytest.approx(two_se)
    eager_table = True  # the table's runs of those seeds were trained eager (FAST=0): not taken as --fast seeds
    with pytest.raises(common.UserError, match="trained eager, not as its fast seed"):
        b.accuracy_check("erm.py", flags, 2, 200, 5, str(tmp_path / "acc"), str(tmp_path), str(tmp_path / "table"))


def test_gpu_checks_repeat_when_the_training_code_changes(tmp_path):
    """.ci/gpu-session repeats the GPU tests and the fp32 check of --fast where the newest benchmark JSON was made on
    other code (a change to common.py or a method's step): not where only a docstring or comment changed."""
    b = load_benchmark()
    root = tmp_path / "repo"
    (root / "methods").mkdir(parents=True)
    (root / "common.py").write_text('"""doc"""\nSTEP = 1\n')
    (root / "methods" / "erm.py").write_text('"""Result: not measured"""\nLR = 0.1\n')
    results = tmp_path / "results"
    results.mkdir()
    assert not b.checked_this_code(str(results), root=str(root))  # no benchmark at all
    (results / "bench-gpu.json").write_text(json.dumps({"rows": []}))
    assert not b.checked_this_code(str(results), root=str(root))  # a JSON from before code_sha256 was recorded
    code = b.training_code(str(root))
    (results / "bench-gpu.json").write_text(json.dumps({"rows": [], "code_sha256": code, "complete": False}))
    assert not b.checked_this_code(str(results), root=str(root))  # cut short by a time limit: not checked
    # ... but cut short after its fp32 checks ended (in a timing): checked, so stage 1 does not start again in every
    # session only to be cut at the same place
    (results / "bench-gpu.json").write_text(json.dumps({"rows": [], "code_sha256": code, "complete": False,
                                                         "checks_done": True}))
    assert b.checked_this_code(str(results), root=str(root))
    (results / "bench-gpu.json").write_text(json.dumps({"rows": [], "code_sha256": code, "complete": True}))
    assert b.checked_this_code(str(results), root=str(root))
    assert b.checked_this_code(str(results), device_name="GPU", root=str(root))  # its own JSON: bench-gpu.json
    assert not b.checked_this_code(str(results), device_name="NVIDIA H100", root=str(root))  # another GPU model
    (root / "methods" / "erm.py").write_text('"""Result: 66.37 (1)"""\nLR = 0.1  # a comment\n')
    assert b.checked_this_code(str(results), root=str(root))  # the report's Result line is not code
    (root / "common.py").write_text('"""doc"""\nSTEP = 1\n' + common.TRAINING_CODE_ENDS + "\nREPORT = 2\n")
    assert b.checked_this_code(str(results), root=str(root))  # common.py's report part is not code that trains
    (root / "common.py").write_text('"""doc"""\nSTEP = 2\n' + common.TRAINING_CODE_ENDS + "\nREPORT = 2\n")
    assert not b.checked_this_code(str(results), root=str(root))


def test_pcnsgd_rows_take_the_batched_backward_only_where_the_gpu_found_it_sound_and_faster(tmp_path):
    """.ci/gpu-session's PCN_CLASS_GRADS (benchmark --choose): batched only where the batched backward passed its GPU
    tests (--fast == eager, the same g_l as the loop) and its --fast epoch was more than 1.1x faster than the loop's;
    a benchmark that did not run those tests or the timing keeps what the JSON it replaces found."""
    b = load_benchmark()
    timing = lambda loop, batched: {"row": b.PCN_ROW, "loop": {"steady_epoch_s": loop},  # noqa: E731
                                    "batched": {"steady_epoch_s": batched}, "speedup": loop / batched}
    assert b.choose_class_grads(None) == b.choose_class_grads({}) == "loop"
    assert b.choose_class_grads({"gpu_tests_batched": "passed", "class_grads": timing(3.0, 1.5)}) == "batched"
    assert b.choose_class_grads({"gpu_tests_batched": "passed", "class_grads": timing(3.0, 2.9)}) == "loop"  # 1.03x
    assert b.choose_class_grads({"gpu_tests_batched": "failed", "class_grads": timing(3.0, 1.0)}) == "loop"
    assert b.choose_class_grads({"gpu_tests_batched": "skipped", "class_grads": timing(3.0, 1.0)}) == "loop"
    failed = {"row": b.PCN_ROW, "loop": {"steady_epoch_s": 3.0}, "batched": {"error": "NYI: vmap"}}
    assert b.choose_class_grads({"gpu_tests_batched": "passed", "class_grads": failed}) == "loop"
    (line,) = b.class_grads_lines([{"device_name": "GPU", "gpu_tests_batched": "passed", "class_grads": failed},
                                   {"device_name": "CPU"}])
    assert "one batched backward (batched): 3.00 s / failed; the batched backward's GPU tests: passed; the table's PCNSGD rows " \
           "use loop." in line
    cut = {"row": b.PCN_ROW, "error": b.CUT_SHORT}  # saved before the timing, replaced when it ends
    assert b.choose_class_grads({"gpu_tests_batched": "passed", "class_grads": cut}) == "loop"
    assert "(batched): cut short / cut short;" in b.class_grads_lines([{"device_name": "GPU", "class_grads": cut}])[0]
    # kept by a benchmark that measures neither (its own GPU tests "skipped"): what the JSON it replaces found, where
    # that checked the code there is now
    path = tmp_path / "bench-gpu.json"
    old = {"date_utc": "d1", "gpu_tests": "passed", "gpu_tests_batched": "passed", "class_grads": timing(3.0, 1.5),
           "rows": [], "code_sha256": b.training_code()}
    path.write_text(json.dumps(old))
    assert b.earlier_benchmark(str(path)) == ({}, {"gpu_tests": "passed", "gpu_tests_batched": "passed",
                                                   "class_grads": {**timing(3.0, 1.5), "measured": "d1"}})
    kept = b.earlier_benchmark(str(path))[1]
    assert b.carry_over({"gpu_tests": "skipped", "gpu_tests_batched": "skipped"}, kept) == kept
    assert b.carry_over({"gpu_tests": "failed", "gpu_tests_batched": "failed"}, kept) == {
        "gpu_tests": "failed", "gpu_tests_batched": "failed", "class_grads": kept["class_grads"]}
    assert b.carry_over({"gpu_tests": "skipped", "gpu_tests_batched": None}, {}) == {"gpu_tests": "skipped",
                                                                                      "gpu_tests_batched": None}
    path.write_text(json.dumps({**old, "code_sha256": {**b.training_code(), "methods/pcn_sgd.py": "older"}}))
    assert b.earlier_benchmark(str(path)) == ({}, {})  # another version of the code: nothing of it is kept ...
    path.write_text(json.dumps({**old, "gpu_tests": "failed", "code_sha256": {}}))
    assert b.earlier_benchmark(str(path)) == ({}, {"gpu_tests": "failed"})  # ... but a failed GPU test
    # --choose: this GPU's own JSON, made with the code there is now
    path.write_text(json.dumps(old))
    assert b.class_grads_now(str(tmp_path), "GPU") == "batched"
    assert b.class_grads_now(str(tmp_path), "other GPU") == "loop"  # none of its own
    path.write_text(json.dumps({**old, "code_sha256": {**b.training_code(), "methods/pcn_sgd.py": "older"}}))
    assert b.class_grads_now(str(tmp_path), "GPU") == "loop"  # made with other code


def test_benchmark_rejects_unknown_rows():
    proc = run_script_forked("studies/benchmark.py", "--device", "cpu", "--rows", "nosuch.py", check=False)
    assert proc.returncode != 0 and "unknown row 'nosuch.py'" in proc.stderr


def test_benchmark_rows_are_run_all_rows():
    mod = load_benchmark()
    rows = common.table_rows()
    assert len(rows) == 20 and rows[0] == "erm.py" and "sam.py --base ldam_drw" in rows
    # the fp32 check adds --drw-epoch only where the method has it
    assert mod.accepts("ldam_drw.py", "--drw-epoch") and not mod.accepts("erm.py", "--drw-epoch")


# ------------------------------------------------------------------------------------------------
# GPU only: the fast path computes exactly what the eager path computes
# ------------------------------------------------------------------------------------------------

GPU_ROWS = [
    ("erm.py", []),
    ("class_weights.py", ["--drw-epoch", "2"]),            # None -> tensor class weight: a new graph
    ("ldam_drw.py", ["--drw-epoch", "2"]),                 # cosine head in fp32, DRW weights as a graph input
    ("mm_drw.py", ["--drw-epoch", "2"]),                   # a per-sample margin from the logits, in the graph
    ("pcn_sgd.py", ["--variant", "pcnsgd_o"]),             # C backward passes per step in one graph
    ("pcn_sgd.py", ["--variant", "pcnsgd_o", "--class-grads", "batched"]),  # one batched backward (vmap) captured
    ("sam.py", ["--base", "ldam_drw", "--drw-epoch", "2"]),  # two forward/backward passes in one graph
    ("logit_adjust.py", []),                               # log-prior offsets, a buffer of the step
    ("cdt.py", []),                                        # per-class temperatures
    ("vs_loss.py", []),                                    # multiplicative and additive logit adjustment
]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("script,flags", GPU_ROWS, ids=[r[0] + "".join(r[1]) for r in GPU_ROWS])
def test_fast_equals_eager_in_fp32_on_gpu(tmp_path, script, flags):
    args = ["--dataset", "synthetic", "--imbalance-ratio", "10", "--batch-size", "64", "--epochs", "3",
            "--warmup-epochs", "1", "--lr-decay-epochs", "2", "--eval-every", "1", "--device", "cuda",
            "--fp32", "--deterministic", *flags]
    res = {}
    for name, extra in (("eager", []), ("fast", ["--fast"])):
        run_script(f"methods/{script}", *args, "--out", tmp_path / name, *extra)
        (res[name],) = read_results(tmp_path / name).values()
    e, f = res["eager"], res["fast"]
    stats = f["fast_path"]
    assert stats["graph_replays"] > 0 and stats["graph_captures"] == 2  # lr 0.1 (epochs 0-1), 0.001 (+DRW) from 2
    assert [h["train_loss"] for h in e["history"]] == [h["train_loss"] for h in f["history"]]
    assert e["final"] == f["final"]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_fast_bf16_run_learns_on_gpu(tmp_path):
    # 20 epochs of the synthetic set at R=10, batch 64 (140 steps): 96-99% top-1 on CPU for seeds 0-2
    run_script("methods/erm.py", "--dataset", "synthetic", "--imbalance-ratio", "10", "--batch-size", "64",
               "--epochs", "20", "--warmup-epochs", "1", "--device", "cuda", "--fast", "--out", tmp_path)
    (res,) = read_results(tmp_path).values()
    losses = [h["train_loss"] for h in res["history"]]
    assert res["fast_path"]["graph_replays"] > 0 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    assert res["final"]["top1"] > 70, res["final"]["top1"]


# ------------------------------------------------------------------------------------------------
# GraphedStep's bookkeeping on CPU, with CUDA's stream and graph API replaced by fakes: a fake capture records
# what to run instead of running it (as a real capture records kernels without executing them); a replay runs
# the recorded step on the graph's input buffers and writes the result into the graph's output tensor.
# ------------------------------------------------------------------------------------------------

class FakeStream:
    def wait_stream(self, other):
        pass


class FakeGraph:
    capturing = []

    def replay(self):
        fn, args, out = self.recorded
        out.copy_(fn(*args))


@pytest.fixture
def fake_cuda(monkeypatch):
    import contextlib

    @contextlib.contextmanager
    def graph(g, **kwargs):
        FakeGraph.capture_kwargs = kwargs
        FakeGraph.capturing.append(g)
        try:
            yield
        finally:
            FakeGraph.capturing.pop()

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: FakeStream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)


def test_graphed_step_keeps_no_autograd_graph_alive(fake_cuda):
    """What a step returns (a loss) is detached: a loop variable holding it would keep the step's autograd graph,
    and with it AccumulateGrad nodes of another stream, alive into the next capture."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def fn(x):
        loss = model(x).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, [loss * 2, "not a tensor"]

    loss, (double, text) = common.GraphedStep(fn, model, optimizer)(torch.ones(1, 2))  # an eager warm-up step
    assert loss.grad_fn is None and not double.requires_grad and text == "not a tensor"


def test_graphed_step_bookkeeping(fake_cuda):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = torch.zeros(())     # stands for the parameters a step updates in place
    log = []

    def real_step(x, w):
        log.append("run")
        state.add_(x.sum() * (1.0 if w is None else w))
        return state.clone()

    def step_fn(x, w):
        if FakeGraph.capturing:  # capture: record, compute nothing
            log.append("capture")
            out = torch.empty(())
            FakeGraph.capturing[-1].recorded = (real_step, (x, w), out)
            return out
        return real_step(x, w)

    step = common.GraphedStep(step_fn, model, optimizer, warmup=2)
    x = torch.ones(3)
    outs = [step(x * k, None).item() for k in (1, 2, 3, 4)]
    # 2 eager warm-up steps, then one capture and replays that see each call's new input values
    assert log == ["run", "run", "capture", "run", "run"] and outs == [3, 9, 18, 30]
    assert step.stats == {"eager_steps": 2, "graph_captures": 1, "graph_replays": 2}
    # captured on the stream of the eager warm-up steps (autograd's AccumulateGrad nodes stay on one stream)
    assert FakeGraph.capture_kwargs.get("stream") is step.side_stream
    out = step(x, None)
    out.add_(100)  # a returned tensor is a copy: changing it does not touch the graph's output
    assert step.static_output.item() == 33 and step(x, None).item() == 36
    # a new lr: the old graph is dropped, 2 eager steps, then a new capture
    optimizer.param_groups[0]["lr"] = 0.01
    log.clear()
    for _ in range(3):
        step(x, None)
    assert log == ["run", "run", "capture", "run"] and step.stats["graph_captures"] == 2
    # a tensor argument that changes value replays the same graph; None -> tensor is a new configuration
    w = torch.tensor(2.0)
    log.clear()
    results = [step(x, w * k).item() for k in (1, 1, 1, 5)]
    assert log == ["run", "run", "capture", "run", "run"] and step.stats["graph_captures"] == 3
    assert results[-1] - results[-2] == 3 * 10
    with pytest.raises(ValueError, match="model's device"):
        common.GraphedStep(step_fn, model, optimizer).capture([torch.ones(1, device="meta"), None])


@pytest.mark.parametrize("script", [".ci/gpu", ".ci/gpu-session", "run_all.sh"])
def test_gpu_scripts_parse(script):
    """The GPU-session scripts cannot run here; bash must at least accept them (a typo costs a lent GPU session)."""
    proc = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_session_leaves_the_next_carry_room_for_its_checkpoints(tmp_path):
    """The checkpoints that come back travel to the next session with the data archive and the repository's
    files (64 MiB in all): room_mib is what is left of it, less 2 MiB; ignored folders do not count."""
    script = open(os.path.join(ROOT, ".ci", "gpu-session")).read()
    room_mib = script[script.index("room_mib() {"):script.index("\n}\n", script.index("room_mib() {")) + 3]
    mib = 1048576
    for path, size in [("data/cifar10-jpeg.tar.gz", 20 * mib), ("results/a.json", 10 * mib),
                       ("data/cifar10-jpeg/train/x.jpg", 50 * mib), ("results/checkpoints/r/s/c.pt", 30 * mib),
                       ("results/x/checkpoints/r/s/c.pt", 30 * mib), ("results/scratch/big", 9 * mib),
                       ("common.py", mib // 2)]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_path / path, "wb") as f:
            f.truncate(size)
    out = subprocess.run(["bash", "-c", room_mib + "room_mib"], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == str(62 - 30 - 1)  # 30.5 MiB (and the folders) travel besides, rounded up to 31


def test_gpu_session_packs_only_what_it_added_or_changed_in_results(tmp_path):
    """results/ already holds ~15 MiB packed of committed runs and studies, and a file that comes back from the
    device may have at most 16 MiB: results.tgz holds the files new or changed since the session started (logs,
    JSON, the pages the report rewrote), never the unchanged ones nor checkpoints, scratch or temporary files."""
    script = open(os.path.join(ROOT, ".ci", "gpu-session")).read()
    start = script.index("changed() {")
    functions = script[start:script.index("\nleft() {", start)]
    for path in ("results/old/seed0.json", "results/RESULTS.md", "results/same.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    session = (f"PACK_TMP=$PWD/.pack CHECKPOINT_MIB=24 DEST=$PWD/out; mkdir -p out\n{functions}\n"
               "AT_START=$(mktemp); changed >$AT_START\n"
               "echo rewritten >results/RESULTS.md; mkdir -p results/new results/logs results/scratch "
               "results/checkpoints/s/m; echo 1 >results/new/seed0.json; echo log >results/logs/run.log; "
               "echo x >results/scratch/x.json; echo x >results/new/seed1.json.tmp123; "
               "touch results/same.json; echo ckpt >results/checkpoints/s/m/seed0.pt\n"
               "pack && tar tzf out/results.tgz")
    proc = subprocess.run(["bash", "-c", session], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["results/RESULTS.md", "results/logs/run.log", "results/new/seed0.json"], \
        proc.stdout
    assert (tmp_path / "out" / "checkpoints.tgz.0").exists() and not list(tmp_path.glob(".pack*"))


def test_whole_table_time_from_the_table_runs():
    """SPEED.md's estimate of the whole table: the GPU time of the --fast runs so far per ERM step their math
    needed, times the ERM steps of every row x seed (a row not run yet: ERM's steps)."""
    bench = load_benchmark()

    def run(row, method, wall, steps, at_once=4, fast=True):
        args = vars(common.row_args(row, ["--dataset", "synthetic", "--device", "cpu"]))
        return {"method": method, "setting": "cifar10-exp-r100", "status": "completed", "command": f"methods/{row}",
                "args": args, "train_class_counts": [100] * 10, "device_name": "NVIDIA H200", "wall_time_s": wall,
                "runs_at_once": at_once, "mps": True,
                "fast_path": {"eager_steps": 2, "graph_replays": steps - 2} if fast else None}

    runs = [run("erm.py", "erm", 20.0, 80), run("sam.py --base ce_drw", "sam_ce_drw", 40.0, 80),
            run("focal.py", "focal", 99.0, 80, fast=False)]  # eager: not counted
    (line,) = bench.table_time_lines(runs)
    # GPU time 20/4 + 40/4 = 15 s for 1 x 80 + 2 x 80 = 240 ERM steps; ERM's steps 200 x ceil(1000/128) = 1600. The
    # table: 3 seeds x (erm 80 + sam_ce_drw 2 x 80 + sam_ldam_drw 2 x 1600 + 2 PCNSGD rows 7 x 1600 each + 15 rows
    # 1600 each) = 149,520 ERM steps = 93 ERM runs, at 1/16 s each 156 minutes
    assert "(20 rows x 3 seeds = 60 runs, 93 ERM runs' worth of steps" in line
    assert "its 2 `--fast` runs so far took 15 s of the NVIDIA H200 (4 at once under MPS;" in line
    assert "62.50 ms per ERM step; at that rate the whole table takes about 156 minutes" in line
    assert bench.table_time_lines(runs[2:]) == []


def test_speed_lines_put_each_number_in_its_column():
    """SPEED.md's table from a made-up benchmark: eager before --fast in every pair, the steady-epoch speed-up (not
    the projected run's), MPS named only where it ran, each profiled step under its path, the fp32 check's answer
    per row ("not checked" for a row it did not check)."""
    b = load_benchmark()
    prof = lambda wall, gpu, n: {"wall_ms_per_step": wall, "gpu_ms_per_step": gpu, "gpu_activities_per_step": n}  # noqa
    path = lambda epoch, run, p: {"steady_epoch_s": epoch, "projected_run_s": run, "final_eval_s": 1.0,  # noqa
                                  "profile": p}
    row = {"row": "erm.py", "eager": path(2.0, 400.0, prof(13.0, 3.0, 600)), "fast": path(0.5, 100.0, prof(3.1, 3.0, 600)),
           "speedup_steady_epoch": 4.0, "speedup_projected_run": 3.0,
           "parallel": [{"n": 8, "mps": "not started: no daemon", "eager": {"throughput_vs_one_run": 2.0},
                         "fast": {"throughput_vs_one_run": 2.5}},
                        {"n": 4, "mps": True, "eager": {"throughput_vs_one_run": 1.5},
                         "fast": {"throughput_vs_one_run": 3.5}}]}
    report = {"device_name": "GPU X", "torch_version": "2.11.0", "git_commit": "abcdef123", "checks": [
        {"row": "erm.py", "identical": True}], "rows": [row, {**row, "row": "sam.py", "parallel": []}]}
    header, _, erm, sam = b.speed_lines([report])
    assert erm == ("| GPU X (2.11.0) | `erm.py` | 2.00 s / 0.50 s | 4.0x | 400 s / 100 s | — | 4 (MPS): 1.50x / 3.50x; "
                   "8: 2.00x / 2.50x | 13.00 / 3.00 ms (600) / 3.10 / 3.00 ms (600) | yes, bit for bit | abcdef1 |"), erm
    assert sam.endswith("| — | 13.00 / 3.00 ms (600) / 3.10 / 3.00 ms (600) | not checked | abcdef1 |"), sam
    assert header.count(" | ") == erm.count(" | ")  # one cell per heading
