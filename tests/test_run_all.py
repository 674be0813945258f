"""`SMOKE=1 bash run_all.sh` end to end: every row of the table runs, writes its JSON, and the report covers all."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import common
from conftest import ROOT, SMOKE_ARGS, read_results, run_forked_pool, run_script_forked

table_rows = common.table_rows  # the rows of run_all.sh, read from the script


def test_smoke_run_all_end_to_end(smoke_table):
    proc, out = smoke_table
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table_rows()
    assert len(rows) >= 20
    results = read_results(out)
    assert len(results) == len(rows), sorted(results)           # one JSON per row (1 seed, 1 setting)
    assert all(r["status"] == "completed" for r in results.values())
    assert len({r["method"] for r in results.values()}) == len(rows)  # every row has its own method name
    assert re.search(rf"\[run_all\] {len(rows)}/{len(rows)} done, 0 failed", proc.stdout)
    assert re.search(r"eta \d+:\d\d:\d\d", proc.stdout)
    report = (out / "RESULTS.md").read_text()
    for r in results.values():
        assert f"| {r['method']} |" in report
    assert "(torch " in report and "; eager fp32) |" in report and "--fast" not in report  # CPU: eager, fp32
    assert all(r["runs_at_once"] == 2 and r["mps"] is False for r in results.values())  # JOBS=2, recorded
    assert " s (2 at once) |" in report
    assert "Made by 1 invocation of run_all.sh that trained (20 runs completed, 0 failed" in report
    assert "Reproduce: `SMOKE=1 bash run_all.sh` (the built-in synthetic set" in report  # the smoke invocation
    assert "Not run yet: 40 of the 60 runs of run_all.sh's table (20 rows x seeds 0, 1, 2): seeds 1, 2 of every row" \
        in report
    assert "Published numbers" not in report  # synthetic data: no paper number to explain
    # a smoke table is not the protocol, and says so
    assert "--batch-size 64 instead of 128, --epochs 2 instead of 200 (every run)." in report
    assert (out / "synthetic-exp-r10" / "per_class_acc.png").exists()
    assert (out / "synthetic-exp-r10" / "curves.png").exists()


def test_run_all_resumes_and_keeps_its_deadline(smoke_table, tmp_path):
    """A second invocation skips the runs whose JSON exists without starting them, and under DEADLINE starts no run
    that the same method's earlier wall time says would end too late; run_all.jsonl and the report record it."""
    proc, out = smoke_table
    assert proc.returncode == 0
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    n = len(table_rows())
    again = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "SMOKE": "1", "OUT": str(copy), "JOBS": "2", "SEEDS": "0 1",
                                "DEADLINE": "0"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{2 * n} runs, {n} done before, {n} to run (2 at a time, deadline 0 s)" in again.stdout
    assert again.stdout.count("[run_all] deadline: not starting methods/") == n
    assert "[run_all] start" not in again.stdout
    assert f"{n} left for the next invocation (DEADLINE)" in again.stdout
    first, second = [json.loads(l) for l in (copy / "run_all.jsonl").read_text().splitlines()]
    assert first["runs_finished"] == n and first["left_for_later"] == 0 and first["jobs"] == 2
    assert second["runs_done_before"] == n and second["runs_finished"] == 0 and second["left_for_later"] == n
    assert second["deadline_s"] == 0 and second["seeds"] == "0 1"
    assert "Made by 1 invocation of run_all.sh that trained" in (copy / "RESULTS.md").read_text()


def test_a_run_that_cannot_end_in_time_fills_the_windows_tail_up_to_a_checkpoint(tmp_path):
    """DEADLINE defers a run that would end too late; once nothing that can end in time is left, a free slot trains
    it up to the checkpoints it can reach (a run longer than the whole window too), and a later invocation goes on
    from there. One that cannot reach its next checkpoint in time does not start."""
    out = tmp_path / "results"
    smoke = ["--dataset", "synthetic", "--batch-size", "64", "--eval-every", "1", "--device", "cpu", "--epochs", "4"]
    run_script_forked("methods/erm.py", *smoke, "--imbalance-ratio", "10", "--seed", "0", "--out", out)
    seed0 = out / "synthetic-exp-r10" / "erm" / "seed0.json"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "JOBS": "1", "SEEDS": "0 1", "ONLY": "^erm.py$",
           "EXTRA": "--epochs 4", "CHECKPOINT_EVERY": "1", "DEADLINE": "60"}
    for wall, starts in ((1000.0, False), (100.0, True)):  # 4 epochs: 250 s or 25 s to the first checkpoint
        r = json.loads(seed0.read_text())
        seed0.write_text(json.dumps({**r, "wall_time_s": wall}))  # as if seed 0 had taken that long
        proc = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "deadline: not starting methods/erm.py" in proc.stdout  # nothing that can end in time comes first
        assert ("the window's tail: methods/erm.py --seed 1" in proc.stdout) == starts, proc.stdout
        assert (out / "synthetic-exp-r10" / "erm" / "seed1.json").exists() == starts
        assert json.loads((out / "run_all.jsonl").read_text().splitlines()[-1])["left_for_later"] == (not starts)


def test_a_run_still_going_at_the_deadline_is_stopped_and_goes_on_next_time(tmp_path):
    """... first in the next invocation (before seed 0 here): a run a checkpoint holds part of ends soonest."""
    out = tmp_path / "results"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "JOBS": "1", "SEEDS": "0 1", "ONLY": "^erm.py$",
           "SETTINGS": "exp:100", "EXTRA": "--epochs 14", "CHECKPOINT_EVERY": "1"}  # (r100: 242 images, quick epochs)
    # the first invocation's run sleeps 1 s at each epoch's end, so that it is still going at the deadline on any
    # machine (14 epochs: over 14 s), yet ends an epoch and saves its checkpoint well before it
    slow = tmp_path / "python"
    slow.write_text(f"""#!/bin/sh
case "$1" in methods/*) exec {sys.executable} -c '
import runpy, sys, time
sys.path.insert(0, {json.dumps(ROOT)})
import common
end_epoch = common.Run.end_epoch
common.Run.end_epoch = lambda self, *a, **k: (time.sleep(1), end_epoch(self, *a, **k))[1]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
' "$@";; esac
exec {sys.executable} "$@"
""")
    slow.chmod(0o755)
    first = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**env, "SEEDS": "1", "DEADLINE": "12", "PYTHON": str(slow)})  # no estimate yet:
    # it starts, and is stopped at 12 s
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 stopped at the deadline (they go on from their checkpoints)" in first.stdout
    assert not (out / "synthetic-exp-r100" / "erm" / "seed1.json").exists()
    assert (out / "checkpoints" / "synthetic-exp-r100" / "erm" / "seed1.pt").exists()  # kept for the next invocation
    assert json.loads((out / "run_all.jsonl").read_text())["cut_at_deadline"] == 1
    second = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**env, "JOBS": "2"})  # (both at once: the start lines still show the order)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    starts = [l for l in second.stdout.splitlines() if l.startswith("[run_all] start ")]
    assert "--seed 1" in starts[0] and "--seed 0" in starts[1]
    r0, r1 = (read_results(out)[f"synthetic-exp-r100/erm/seed{k}.json"] for k in (0, 1))
    assert r1["status"] == "completed" and len(r1["resumed_at_epochs"]) == 1 and len(r1["history"]) == 14
    assert r0["status"] == "completed" and r0["resumed_at_epochs"] == []
    # the run cut once and ended later counts once as completed: 2 runs, not 3
    assert "(2 runs completed, 0 failed, 1 stopped at a deadline to go on from their checkpoints" in \
        (out / "RESULTS.md").read_text()
    assert not (out / "checkpoints").exists()  # both ended: their checkpoints, and the folders that held them, gone


def test_run_all_stops_before_any_run_on_a_missing_data_folder_or_an_only_that_matches_nothing(tmp_path):
    """One error line and nothing written: no logs, no run_all.jsonl, no report."""
    out = tmp_path / "results"
    env = {**os.environ, "OUT": str(out), "JOBS": "1", "SEEDS": "0"}
    for extra, needle in (({"DATA_DIR": str(tmp_path / "nodata")}, "nodata does not exist"),
                          ({"SMOKE": "1", "ONLY": "^nosuch"}, "ONLY='^nosuch' matches no row of the table"),
                          # a flag not every row takes: the message names the row and its own --help
                          ({"SMOKE": "1", "EXTRA": "--rho 0.3"}, "row 'erm.py': unrecognized arguments: --rho 0.3 "
                                                                 "(see erm.py --help)")):
        proc = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**env, **extra})
        assert proc.returncode == 1 and needle in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "[run_all] start" not in proc.stdout and not out.exists()
    # a job whose JSON exists needs no data: the plan checks the folder of the runs still to make only
    flags = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "nodata"), "--device", "cpu"]
    with pytest.raises(common.UserError, match="run_all.sh: DATA_DIR=<folder>"):
        common.plan(["erm.py|exp|10|0"], flags, str(out))
    write_run(out, "nodata-exp-r10", "erm", 0)
    assert common.plan(["erm.py|exp|10|0"], flags, str(out))[0].startswith("1 ")
    # torchvision's CIFAR files: looked for (and with --download fetched once) by the plan, not by each run
    with pytest.raises(common.UserError, match="cifar10 not found in .*nocifar.*run_all.sh: DATA_DIR"):
        common.plan(["erm.py|exp|100|0"], ["--dataset", "cifar10", "--data-dir", str(tmp_path / "nocifar"),
                                           "--device", "cpu"], str(out))


def test_run_all_takes_help_and_dry_run_only_and_checks_its_numbers_before_anything_starts(tmp_path):
    """Its settings are environment variables: --help prints its header, --dry-run the plan (which runs are done,
    which are to run and how long they should take) and trains nothing; any other argument, and a bad JOBS,
    CHECKPOINT_EVERY, DEADLINE or switch, is one error line with nothing written."""
    out = tmp_path / "results"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "ONLY": "^erm.py$", "SEEDS": "0 1"}
    bash = lambda *args, **more: subprocess.run(["bash", "run_all.sh", *args], cwd=ROOT, capture_output=True,  # noqa
                                                text=True, timeout=120, env={**env, **more})
    helped = bash("--help")
    assert helped.returncode == 0 and "Environment (a value first in parentheses is the default): DATA_DIR" in helped.stdout and "bash run_all.sh --dry-run" \
        in helped.stdout and "set -euo" not in helped.stdout and not out.exists(), helped.stdout + helped.stderr
    read = set(re.findall(r"\$\{([A-Z_]+):[-+]", open(os.path.join(ROOT, "run_all.sh")).read()))
    assert len(read) >= 15 and not [v for v in read if v not in helped.stdout]  # every setting it reads is explained
    for args, more, needle in ((["--seeds", "0"], {}, "unknown argument '--seeds': the settings are environment"),
                               ([], {"JOBS": "0"}, "JOBS must be a whole number >= 1, got '0'"),
                               ([], {"JOBS": "two"}, "JOBS must be a whole number >= 1, got 'two'"),
                               ([], {"CHECKPOINT_EVERY": "x"}, "CHECKPOINT_EVERY must be a whole number >= 0"),
                               ([], {"DEADLINE": "1.5"}, "DEADLINE must be a whole number >= 0, got '1.5'"),
                               ([], {"FAST": "yes"}, "FAST must be 0 or 1, got 'yes'"),
                               ([], {"PCN_CLASS_GRADS": "vmap"}, "PCN_CLASS_GRADS must be loop or batched, got 'vmap'"),
                               ([], {"SETTINGS": "exp:100,step:10"}, "each setting is TYPE:RATIO (exp, step or none)"),
                               ([], {"SETTINGS": "step"}, "each setting is TYPE:RATIO"),
                               ([], {"SEEDS": "0 x"}, "SEEDS='0 x': each seed is a whole number"),
                               ([], {"SEEDS": " "}, "SEEDS is empty: nothing to run"),
                               ([], {"ONLY": "("}, "ONLY='(' is not an extended regular expression")):
        proc = bash(*args, **more)
        assert proc.returncode == 1 and needle in proc.stderr, proc.stdout + proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "[run_all]" not in proc.stdout and not out.exists()
    # a flag of EXTRA that would override what run_all.sh gives each run (its runs would all train seed 7, into one
    # file, while the plan counted seeds 0 and 1) is refused; so is one that contradicts a run's own flags
    proc = bash(EXTRA="--seed 7")  # (the plan's refusals below reach the user so: its error first, nothing written)
    assert proc.returncode == 1 and proc.stderr.startswith(
        "error: run_all.sh: EXTRA sets --seed, which run_all.sh gives every run itself: use SEEDS\n") and \
        not out.exists(), proc.stdout + proc.stderr

    def refused(jobs, needle, extra=""):  # the plan of these jobs (row|type|ratio|seed) with this EXTRA
        with pytest.raises(common.UserError) as e:
            common.plan(jobs, SMOKE_ARGS, str(out), extra=extra.split())
        assert needle in str(e.value.code) and not out.exists(), e.value.code
    erm = "erm.py|exp|10|0"
    for extra, needle in (("--imbalance-r 5", "EXTRA sets --imbalance-ratio"), ("--out x", "EXTRA sets --out"),
                          ("--overwrite", "--overwrite and --skip-existing contradict")):
        refused([erm], needle, extra)
    # a value every row gets (SETTINGS="exp:0.5"), and the message names where it may come from
    refused(["erm.py|exp|0.5|0"], "got 0.5; SETTINGS, EXTRA and DATA_FLAGS go to every row")
    # two jobs that would write one JSON (and train into it at once) are refused: a seed or a setting named twice
    # (SEEDS="0 0", SETTINGS="none:10 none:100"), two rows under one --name
    for jobs, extra in (([erm, erm], ""), (["erm.py|none|10|0", "erm.py|none|100|0"], ""),
                        ([erm, "ldam_drw.py --loss ce|exp|10|0"], "--name x")):
        refused(jobs, "would both write", extra)
    proc = bash("--dry-run", SETTINGS="exp:1|0")  # (a setting's own form: checked before the plan)
    assert proc.returncode == 1 and "TYPE:RATIO" in proc.stderr, proc.stdout + proc.stderr
    write_run(out, "synthetic-exp-r10", "erm", 0, wall=42.0, at_once=2, args={"epochs": 2})  # (SMOKE's epochs)
    before = sorted(p for p in out.rglob("*"))
    plan = bash("--dry-run", JOBS="2")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    lines = plan.stdout.splitlines()
    assert lines[0].startswith("[run_all] dry run: 2 runs, 1 done, 0 part-done")
    assert lines[1] == "  done      methods/erm.py --imbalance-type exp --imbalance-ratio 10 --seed 0"
    assert lines[2] == ("  to run   methods/erm.py --imbalance-type exp --imbalance-ratio 10 --seed 1  "
                        "(2 epochs, ~42 s, as this row's earlier runs)")
    assert lines[3].startswith("[run_all] expected wall time: 0:00:42 at 2 at a time") and len(lines) == 4
    assert sorted(p for p in out.rglob("*")) == before  # no log, no run_all.jsonl, no report, no run
    # a row never run: an ERM run (here NEW_RUN_S, no run having ended) times the passes its step needs
    plan = bash("--dry-run", OUT=str(tmp_path / "none"), ONLY="^(sam.py --base ce_drw|erm.py)$", SEEDS="0",
                NEW_RUN_S="40").stdout.splitlines()
    assert plan[1:] == [
        "  to run   methods/erm.py --imbalance-type exp --imbalance-ratio 10 --seed 0  (2 epochs, ~40 s, as NEW_RUN_S "
        "by the passes its step needs)",
        "  to run   methods/sam.py --base ce_drw --imbalance-type exp --imbalance-ratio 10 --seed 0  (2 epochs, ~80 s, "
        "as NEW_RUN_S by the passes its step needs)",
        "[run_all] expected wall time: 0:01:20 at 2 at a time (the sum of the estimates above over JOBS, or the "
        "longest if more; 0 runs without one count 0)"], plan
    plan = bash("--dry-run", OUT=str(tmp_path / "none"), ONLY="^erm.py$", SEEDS="0", NEW_RUN_S="0").stdout
    assert "(2 epochs, no estimate: no run on this path has ended yet)" in plan, plan  # NEW_RUN_S=0: none
    # a run made on a GPU is no measure of a CPU run (SMOKE's)
    gpu = tmp_path / "gpu"
    write_run(gpu, "synthetic-exp-r10", "erm", 0, wall=42.0, args={"epochs": 2}, device="NVIDIA H100")
    plan = bash("--dry-run", OUT=str(gpu), ONLY="^erm.py$", SEEDS="0 1", NEW_RUN_S="0").stdout
    assert "--seed 1  (2 epochs, no estimate: no run on this path has ended yet)" in plan, plan
    assert "no run on this path (the CPU, or on a GPU the same --fast or eager and precision) has ended yet" in plan
    # a run cut short, whose checkpoint the job goes on from: what its epochs so far took (its key holds the epochs,
    # the device and the precision), here 20 s for the first of 2: ~20 s left
    run = common.row_args("erm.py", ["--dataset", "synthetic", "--epochs", "2", "--batch-size", "64", "--eval-every", "1",
                                     "--device", "cpu", "--imbalance-ratio", "10", "--seed", "1", "--out", str(gpu)])
    os.makedirs(os.path.dirname(common.checkpoint_path(run)))
    common.torch.save({"epoch": 0, "key": common.checkpoint_key(run, os.path.join(ROOT, "methods", "erm.py")),
                       "elapsed_s": 20.0, "history": [{"elapsed_s": 20.0}], "fast_path": {}}, common.checkpoint_path(run))
    plan = bash("--dry-run", OUT=str(gpu), ONLY="^erm.py$", SEEDS="0 1", NEW_RUN_S="0").stdout
    assert "--seed 1  (epochs 1-2, ~20 s, as this row's earlier runs)" in plan, plan


def test_pcn_class_grads_reaches_the_pcnsgd_rows_only_and_mixes_with_the_loops_runs(tmp_path):
    """PCN_CLASS_GRADS=batched (.ci/gpu-session's choice where the GPU found it sound and faster) gives the PCNSGD rows
    --class-grads batched and no other row; a row's runs made with the loop count as done beside it (the same g_l:
    no refusal for other training arguments; a checkpoint of either goes on with the other, tests/test_resume.py),
    though not as a measure of a batched run's time, and the invocation's command to reproduce names it."""
    out = tmp_path / "results"
    write_run(out, "synthetic-exp-r10", "pcnsgd", 0, args={"epochs": 2, "class_grads": "loop"})
    plan = subprocess.run(["bash", "run_all.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SMOKE": "1", "OUT": str(out), "SEEDS": "0 1", "NEW_RUN_S": "10",
                               "ONLY": "^(erm.py|pcn_sgd.py .*)$", "PCN_CLASS_GRADS": "batched"})
    assert plan.returncode == 0, plan.stdout + plan.stderr
    runs = [l.split("  (")[0].strip() for l in plan.stdout.splitlines()[1:-1]]
    assert runs == ["done      methods/pcn_sgd.py --variant pcnsgd --imbalance-type exp --imbalance-ratio 10 "
                    "--seed 0"] + [
        f"to run   methods/{row} --imbalance-type exp --imbalance-ratio 10 --seed {seed}" for seed, row in [
            (0, "erm.py"), (0, "pcn_sgd.py --variant pcnsgd_o --class-grads batched"), (1, "erm.py"),
            (1, "pcn_sgd.py --variant pcnsgd --class-grads batched"),
            (1, "pcn_sgd.py --variant pcnsgd_o --class-grads batched")]], plan.stdout
    # ... but its time is not theirs: the loop's run is no estimate of a batched one (their speeds differ)
    (pcn,) = [l for l in plan.stdout.splitlines() if "--variant pcnsgd --class-grads batched" in l]
    assert "as NEW_RUN_S by the passes its step needs" in pcn, plan.stdout
    # the run itself: trained with the batched backward, logged under its row's name, the invocation recorded so
    done = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "ran"), "JOBS": "1",
                               "ONLY": "^pcn_sgd.py --variant pcnsgd$", "PCN_CLASS_GRADS": "batched"})
    assert done.returncode == 0, done.stdout + done.stderr
    (ran,) = read_results(tmp_path / "ran").values()
    assert ran["args"]["class_grads"] == "batched" and "--class-grads batched" in ran["command"]
    assert [p.name for p in (tmp_path / "ran" / "logs").glob("*.log")] == ["pcn_sgd.py_--variant_pcnsgd_exp10_seed0.log"]
    assert json.loads((tmp_path / "ran" / "run_all.jsonl").read_text())["pcn_class_grads"] == "batched"
    assert common.reproduce_command({"jobs": 4, "fast": True, "mps": True, "pcn_class_grads": "batched"}) == \
        "FAST=1 MPS=1 JOBS=4 PCN_CLASS_GRADS=batched bash run_all.sh"
    assert common.reproduce_command({"jobs": 4, "fast": True, "mps": True, "pcn_class_grads": "loop"}) == \
        "FAST=1 MPS=1 JOBS=4 bash run_all.sh"
    (out / "run_all.jsonl").write_text(json.dumps({"date_utc": "2026-12-05T18:00:00Z", "wall_s": 60, "runs_finished": 1,
                                                   "failed": 0, "jobs": 4, "fast": True, "mps": True,
                                                   "pcn_class_grads": "batched"}) + "\n")
    made, _, again, _ = common.session_lines(str(out))
    assert "JOBS=4, FAST=1, MPS=1, PCN_CLASS_GRADS=batched)" in made and "PCN_CLASS_GRADS=batched bash" in again


def test_a_run_ended_in_this_invocation_sets_the_estimate_of_a_row_never_run(tmp_path):
    """With no run known when the invocation starts (and no NEW_RUN_S), the first run that ends is the measure of an
    ERM run, in its setting and, where a setting has none yet, in the others: a SAM row after it is expected to take
    twice as long, and DEADLINE defers it (with no estimate it would start; by the longest run known, it would be
    expected to take as long). The runs here are a python that only sleeps: 2 s, undersampling 4 s."""
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\ncase "$1" in methods/undersampling.py) sleep 4; exit 0;;\n'
                      '  methods/*) sleep 2; exit 0;; esac\nexec python "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "SMOKE": "1", "JOBS": "1", "PYTHON": str(python), "DEADLINE": "15"}
    proc = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "OUT": str(tmp_path / "results"), "SETTINGS": "exp:10 step:10",
                               "ONLY": "^(erm.py|sam.py --base ce_drw)$"})
    assert "[run_all] start 1/4: methods/erm.py --imbalance-type exp" in proc.stdout, proc.stdout + proc.stderr
    sam = re.findall(r"deadline: not starting methods/sam.py --base ce_drw --imbalance-type (\w+) .* \(~(\d+) s, ",
                     proc.stdout)
    assert [t for t, _ in sam] == ["exp", "step"] and all(int(n) >= 4 for _, n in sam), proc.stdout  # 2 x >= 2 s
    # an undersampling run (epochs of C x n_min images) is no such measure: the SAM row falls back on the longest run
    # known (~4 s), not twice it (>= 8 s)
    proc = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "OUT": str(tmp_path / "again"),
                               "ONLY": "^(undersampling.py|sam.py --base ce_drw)$"})
    (n,) = re.findall(r"deadline: not starting methods/sam.py --base ce_drw .* \(~(\d+) s, ", proc.stdout)
    assert 4 <= int(n) < 8, proc.stdout


def test_an_invocation_whose_every_run_failed_records_nothing(tmp_path):
    python = tmp_path / "python"  # a python that fails every training run (after the plan, which it passes on)
    python.write_text('#!/bin/sh\ncase "$1" in methods/*) echo "error: boom $*"; exit 1;; esac\nexec python "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "results"
    proc = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SMOKE": "1", "OUT": str(out), "ONLY": "^erm.py$", "PYTHON": str(python),
                               "EXTRA": "--name m*"})
    assert proc.returncode == 1 and "every run failed (1): nothing added" in proc.stderr, proc.stdout + proc.stderr
    assert not (out / "run_all.jsonl").exists() and not (out / "RESULTS.md").exists()
    # EXTRA reaches the run as the words the plan checked, not globbed ('m*' would be the repository's methods/)
    (log,) = (out / "logs").glob("*.log")
    assert log.read_text().rstrip().endswith(" --resume --name m*"), log.read_text()


def killed_after_its_first_checkpoint():
    """setup() for start_forked: the run ends at once after it saved its first checkpoint, as one killed then."""
    save = common.Run.checkpoint

    def checkpoint(self, epoch):
        save(self, epoch)
        os._exit(0)
    common.Run.checkpoint = checkpoint


def test_plan_finds_the_checkpoint_each_rows_own_run_saves(tmp_path):
    """run_all.sh's planner must find a cut-short run's checkpoint from the row's flags alone: a key that differs
    (a method settling an argument from the data after parse_args, as oversampling's epoch length) hides it, and
    the run is then neither put first nor estimated by what is left of it. Each row's 2-epoch run with a checkpoint
    after every epoch ends after its first one, as a run killed then would; the plan must say 1 epoch done."""
    flags = ["--dataset", "synthetic", "--device", "cpu", "--batch-size", "64", "--epochs", "2", "--checkpoint-every",
             "1", "--resume", "--out", str(tmp_path)]
    job = ["--imbalance-type", "exp", "--imbalance-ratio", "100", "--seed", "0"]

    rows = table_rows()
    for rc, out, err in run_forked_pool([(f"methods/{row.split()[0]}", (*row.split()[1:], *flags, *job),
                                          killed_after_its_first_checkpoint) for row in rows]):  # two at a time
        assert rc == 0, out[-2000:] + err[-2000:]
    assert not read_results(tmp_path)  # (the plan drops the checkpoint of a run that has its JSON)
    lines = common.plan([f"{row}|exp|100|0" for row in rows], flags, str(tmp_path))
    assert {row: line.split()[2] for row, line in zip(rows, lines)} == {row: "1" for row in rows}


def write_run(root, setting, method, seed, status="completed", wall=10.0, at_once=None, command=None, args=None,
              device="cpu", **more):
    """A results JSON with what the planner reads (arguments: 200 epochs and `args`; `more` as it is); with a
    command, the command and 10 classes' counts from which common.result_multiple reads the passes its step needs."""
    path = root / setting / method / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setting": setting, "method": method, "status": status, "wall_time_s": wall,
                                "device_name": device, "args": {"epochs": 200, **(args or {})},
                                **({"runs_at_once": at_once} if at_once else {}),
                                **({"command": command, "train_class_counts": [10] * 10} if command else {}),
                                **more}))
    return str(path)


def test_plan_scales_a_new_rows_estimate_by_the_passes_its_step_needs(tmp_path):
    """For a row never run, the plan gives an ERM run's seconds by every method's finished runs of the setting (else of
    any setting): each run's wall time over the passes its step needed, the largest; and the row's own passes x 1000:
    SAM two forward-backward passes, PCNSGD one forward and C backward passes, (1 + 2C) / 3. Undersampling's runs
    (epochs of C x n_min images) are no measure of an ERM run."""
    flags = ["--dataset", "synthetic", "--device", "cpu"]
    jobs = ["erm.py|exp|10|0", "sam.py --base ce_drw|exp|10|0", "pcn_sgd.py --variant pcnsgd|exp|10|0",
            "pcn_sgd.py --variant sgd_o|exp|10|0", "undersampling.py|exp|10|0"]
    fields = lambda jobs: [tuple(map(int, l.split()[4:6])) for l in common.plan(jobs, flags, str(tmp_path))]  # noqa
    assert fields(jobs) == [(-1, 1000), (-1, 2000), (-1, 7000), (-1, 1000), (-1, 1000)]  # nothing known yet
    # the seventh field: whether the job's run, once ended, measures an ERM run (in run_all.sh's this invocation)
    assert [l.split()[6] for l in common.plan(jobs, flags, str(tmp_path))] == ["1", "1", "1", "1", "0"]
    write_run(tmp_path, "synthetic-exp-r10", "undersampling", 1, wall=5.0, command="methods/undersampling.py")
    assert fields(jobs[:1]) == [(-1, 1000)]
    write_run(tmp_path, "synthetic-exp-r10", "erm", 1, wall=50.0, command="methods/erm.py")
    assert fields(jobs[:1]) == [(50, 1000)]
    # a SAM run of 90 s stands for an ERM run of 45 s: the ERM run's 50 s is the larger (not the longest run's 45)
    write_run(tmp_path, "synthetic-exp-r10", "sam_ce_drw", 1, wall=90.0, command="methods/sam.py --base ce_drw",
              args={"base": "ce_drw"})
    assert fields(jobs[:1]) == [(50, 1000)]
    write_run(tmp_path, "synthetic-exp-r10", "pcnsgd", 1, wall=700.0, command="methods/pcn_sgd.py --variant pcnsgd",
              args={"variant": "pcnsgd"})                                   # 7 passes: an ERM run of 100 s
    assert fields(jobs[:1]) == [(100, 1000)]
    # another setting's runs count only where the job's own setting has none
    assert fields(["sam.py|step|10|0"]) == [(100, 2000)]
    write_run(tmp_path, "synthetic-step-r10", "erm", 0, wall=10.0, command="methods/erm.py")
    assert fields(["sam.py|step|10|0"]) == [(10, 2000)]


def test_plan_marks_existing_runs_and_estimates_from_the_same_method(tmp_path):
    done = write_run(tmp_path, "synthetic-exp-r10", "erm", 0, wall=30.4, command="methods/erm.py")
    write_run(tmp_path, "synthetic-exp-r50", "erm", 0, wall=50.0, command="methods/erm.py")
    write_run(tmp_path, "synthetic-exp-r10", "focal", 0, status="diverged", wall=5.0)
    (tmp_path / "synthetic-exp-r10" / "cdt").mkdir()
    (tmp_path / "synthetic-exp-r10" / "cdt" / "seed0.json").write_text("{not json")  # ignored, not a crash
    flags = ["--dataset", "synthetic", "--device", "cpu"]
    lines = common.plan(["erm.py|exp|10|0", "erm.py|exp|10|1", "erm.py|step|10|0", "focal.py|exp|10|1",
                         "ldam_drw.py --loss ce|exp|10|0"], flags, str(tmp_path))
    path = lambda s, m, k: os.path.join(str(tmp_path), s, m, f"seed{k}.json")  # noqa: E731
    # (fields 5 and 6: an ERM run by every method's runs, the passes of the row's step; test_plan_scales_... above)
    assert lines == [f"1 30 0 200 -1 -1 1 {done}",                                     # exists: skipped
                     f"0 30 0 200 30 1000 1 {path('synthetic-exp-r10', 'erm', 1)}",      # the same setting's erm runs
                     f"0 50 0 200 50 1000 1 {path('synthetic-step-r10', 'erm', 0)}",     # none there: any setting's
                     f"0 -1 0 200 30 1000 1 {path('synthetic-exp-r10', 'focal', 1)}",    # a diverged run: no estimate
                     f"0 -1 0 200 30 1000 1 {path('synthetic-exp-r10', 'erm_drw', 0)}"]  # the method, from its flags
    # with 8 runs sharing the device, a run made with 4 at once counts twice as long; one made with 8 as it was
    write_run(tmp_path, "synthetic-exp-r10", "vs", 0, wall=100.0, at_once=4)
    write_run(tmp_path, "synthetic-exp-r10", "vs", 1, wall=150.0, at_once=8)
    assert [l.split()[1] for l in common.plan(["vs_loss.py|exp|10|2"], flags, str(tmp_path), at_once=8)] == ["200"]
    assert [l.split()[1] for l in common.plan(["vs_loss.py|exp|10|2"], flags, str(tmp_path), at_once=2)] == ["150"]
    ckpt = tmp_path / "checkpoints" / "synthetic-exp-r10" / "erm" / "seed1.pt"  # a killed run's checkpoint
    ckpt.parent.mkdir(parents=True)
    run = common.row_args("erm.py", flags + ["--imbalance-type", "exp", "--imbalance-ratio", "10", "--seed", "1",
                                             "--out", str(tmp_path), "--resume"])
    common.torch.save({"epoch": 49, "key": common.checkpoint_key(run, os.path.join(ROOT, "methods", "erm.py"))}, ckpt)
    plan = lambda *more: common.plan(["erm.py|exp|10|1"], flags + list(more), str(tmp_path))  # noqa: E731
    assert plan("--resume") == [f"0 30 50 200 30 1000 1 {path('synthetic-exp-r10', 'erm', 1)}"]
    assert plan() == [f"0 30 0 200 30 1000 1 {path('synthetic-exp-r10', 'erm', 1)}"]  # without --resume it starts over
    # another lr: the checkpoint is not its run's
    assert plan("--resume", "--lr", "0.05") == [f"0 30 0 200 30 1000 1 {path('synthetic-exp-r10', 'erm', 1)}"]
    ckpt.write_bytes(b"damaged")
    assert plan("--resume") == [f"0 30 0 200 30 1000 1 {path('synthetic-exp-r10', 'erm', 1)}"]
    # a finished run's checkpoint (carried from the session that cut it short) is deleted, a running one's kept
    stale = ckpt.parent / "seed0.pt"
    stale.write_bytes(b"from an earlier session")
    assert common.plan(["erm.py|exp|10|0", "erm.py|exp|10|1"], flags, str(tmp_path))[0].startswith("1 ")
    assert not stale.exists() and ckpt.exists()
    with pytest.raises(common.UserError, match="imbalance-ratio"):
        common.plan(["erm.py|exp|0.5|0"], flags, str(tmp_path))         # every job's flags checked before training
    with pytest.raises(common.UserError, match="nosuch.py"):
        common.plan(["nosuch.py|exp|10|0"], flags, str(tmp_path))


def test_plan_estimates_by_the_runs_on_the_jobs_path_scaled_to_its_epochs(tmp_path):
    """A run's length says something of another's only on the same path (a GPU run is no measure of a CPU run, nor a
    --fast one of an eager one) and per epoch: EXTRA="--epochs 4" runs are expected to take 4/200 of a 200-epoch run
    (here the runs of another setting: a row's own folder holds runs of the same arguments only)."""
    flags = ["--dataset", "synthetic", "--device", "cpu"]
    write_run(tmp_path, "synthetic-exp-r20", "erm", 0, wall=20.0, command="methods/erm.py", device="NVIDIA H100",
              args={"fast": True})
    fields = lambda jobs, *more: [l.split()[1] + " " + l.split()[4]  # noqa: E731  (own rows' seconds, an ERM run's)
                                  for l in common.plan(jobs, flags + list(more), str(tmp_path))]
    assert fields(["erm.py|exp|10|0", "focal.py|exp|10|0"]) == ["-1 -1", "-1 -1"]  # a GPU run: no estimate on the CPU
    write_run(tmp_path, "synthetic-exp-r20", "erm", 1, wall=400.0, command="methods/erm.py", args={"fast": True})
    assert fields(["erm.py|exp|10|0", "focal.py|exp|10|0"]) == ["400 400", "-1 400"]  # (--fast: nothing on the CPU)
    assert fields(["erm.py|exp|10|0", "focal.py|exp|10|0"], "--epochs", "4") == ["8 8", "-1 8"]
    # with its history, a run's fixed time counts once: 4 epochs that end at 10, 11, 12 and 13 s, 14 s in all: 1 s
    # per epoch, 10 s once (start-up, the final evaluation)
    write_run(tmp_path, "synthetic-exp-r20", "focal", 1, wall=14.0, command="methods/focal.py", args={"epochs": 4},
              history=[{"elapsed_s": t} for t in (10.0, 11.0, 12.0, 13.0)])
    assert fields(["focal.py|exp|10|0"], "--epochs", "8") == ["18 18"]  # (18: the longest ERM run of 8 epochs too)
    assert common.run_seconds({"wall_time_s": 73.0, "setup_time_s": 13.0, "args": {"epochs": 1},  # one epoch: its
                               "history": [{"elapsed_s": 73.0}]}) == (13.0, 60.0)                  # setup once
    assert common.speed_path("cpu", {"fast": True, "fp32": False}) == "cpu"
    assert [common.speed_path("cuda", {"fast": f, "fp32": p}) for f, p in ((True, False), (False, True))] == \
        ["cuda --fast bf16", "cuda eager fp32"]


def test_plan_keeps_pcnsgds_batched_class_grads_apart(tmp_path):
    """pcn_sgd.py --class-grads batched computes the loop's g_l at another speed: a PCNSGD job is estimated by the
    runs of its own --class-grads only, and a batched run (not inherent_multiple's passes) measures no ERM run, while
    a batched job's ERM run is the other rows' (here: an ERM run of 50 s; a loop PCNSGD run of 700 s, 7 passes, one
    of 100 s; a batched one of 140 s, which as 7 passes would be one of 20 s)."""
    flags = ["--dataset", "synthetic", "--device", "cpu"]
    loop, batched = "pcn_sgd.py --variant pcnsgd|exp|10|2", "pcn_sgd.py --variant pcnsgd --class-grads batched|exp|10|2"
    fields = lambda *jobs: [(int(l.split()[1]), int(l.split()[4]))  # noqa: E731  (its own seconds, an ERM run's;
                            for j in jobs for l in common.plan([j], flags, str(tmp_path))]  # a plan each: one JSON)
    write_run(tmp_path, "synthetic-exp-r10", "erm", 0, wall=50.0, command="methods/erm.py")
    assert fields(loop, batched) == [(-1, 50), (-1, 50)]
    write_run(tmp_path, "synthetic-exp-r10", "pcnsgd", 0, wall=700.0, command="methods/pcn_sgd.py --variant pcnsgd",
              args={"variant": "pcnsgd", "class_grads": "loop"})
    assert fields(loop, batched) == [(700, 100), (-1, 100)]
    write_run(tmp_path, "synthetic-exp-r10", "pcnsgd", 1, wall=140.0, args={"variant": "pcnsgd", "class_grads":
              "batched"}, command="methods/pcn_sgd.py --variant pcnsgd --class-grads batched")
    assert fields(loop, batched, "erm.py|exp|10|1") == [(700, 100), (140, 100), (50, 100)]
    # the seventh field: a batched run, once ended, measures no ERM run in run_all.sh's invocation either
    assert [common.plan([j], flags, str(tmp_path))[0].split()[6] for j in (loop, batched)] == ["1", "0"]
    assert common.speed_path("cuda", {"fast": True, "class_grads": "batched"}) == \
        "cuda --fast bf16 --class-grads batched"
    assert common.speed_path("cpu", {"class_grads": "loop"}) == "cpu"


def test_plan_for_a_gpu_job_counts_the_runs_and_the_checkpoint_made_on_its_path(tmp_path, monkeypatch):
    """A GPU job (CUDA faked: the plan only parses its flags) is estimated by the GPU runs of its own --fast and
    precision, and by its checkpoint only where that was made with the job's --fast (which a checkpoint's key leaves
    out, so that a run cut short on one path can go on on the other)."""
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(common, "set_precision", lambda bf16: None)
    flags = ["--dataset", "synthetic", "--device", "cuda", "--resume"]
    write_run(tmp_path, "synthetic-exp-r20", "erm", 0, wall=400.0, command="methods/erm.py", device="NVIDIA H100",
              args={"fast": True})
    seconds = lambda *more: [l.split()[1] for l in common.plan(["erm.py|exp|10|1"], flags + list(more),  # noqa: E731
                                                                 str(tmp_path))]
    assert seconds("--fast") == ["400"] and seconds() == ["-1"] and seconds("--fast", "--fp32") == ["-1"]
    run = common.row_args("erm.py", flags + ["--imbalance-ratio", "10", "--seed", "1", "--out", str(tmp_path)])
    os.makedirs(os.path.dirname(common.checkpoint_path(run)))
    for fast_path, eager in (({"graph_replays": 970}, "-1"), ({}, "100")):  # 10 of 200 epochs in 5 s: ~100 s
        common.torch.save({"epoch": 9, "key": common.checkpoint_key(run, os.path.join(ROOT, "methods", "erm.py")),
                           "elapsed_s": 5.0, "history": [{"elapsed_s": 0.5 * (e + 1)} for e in range(10)],
                           "fast_path": fast_path}, common.checkpoint_path(run))
        assert seconds() == [eager]  # (a --fast job: the --fast GPU run's 400)


def test_plan_refuses_a_finished_run_of_other_training_arguments(tmp_path):
    """EXTRA="--epochs 5" into a folder of 200-epoch runs would count them as done or average both in a row: the
    plan stops before anything starts. Arguments of how a run was made (--eval-every, --fast) and arguments its JSON
    lacks (added to the method since) are no difference."""
    flags = ["--dataset", "synthetic", "--device", "cpu"]
    write_run(tmp_path, "synthetic-exp-r10", "erm", 0, command="methods/erm.py",
              args={"epochs": 200, "lr": 0.1, "eval_every": 5, "fast": True})
    with pytest.raises(common.UserError, match=r"erm/seed0.json holds a run with --epochs 200, --lr 0.1, where this "
                                               r"invocation's runs of its row would have --epochs 5, --lr 0.05 .* another OUT="):
        common.plan(["erm.py|exp|10|0"], flags, str(tmp_path), extra=["--epochs", "5", "--lr", "0.05"])
    assert common.plan(["erm.py|exp|10|0"], flags, str(tmp_path), extra=["--eval-every", "1"])[0].startswith("1 ")
    with pytest.raises(common.UserError, match=r"erm/seed0.json holds a run with --epochs 200, where"):  # another seed
        common.plan(["erm.py|exp|10|1"], flags, str(tmp_path), extra=["--epochs", "5"])  # of the row: averaged
    assert common.plan(["focal.py|exp|10|1"], flags, str(tmp_path), extra=["--epochs", "5"])[0].startswith("0 ")
    # --imbalance-type none uses no ratio: another ratio is no other run
    write_run(tmp_path, "synthetic-asis", "erm", 0, command="methods/erm.py",
              args={"imbalance_type": "none", "imbalance_ratio": 100.0})
    assert common.plan(["erm.py|none|1|0"], flags, str(tmp_path))[0].startswith("1 ")
    # without the data here (some defaults come from its number of classes) nothing is compared; a job still to
    # run stops at the missing data itself
    folder = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "nowhere"), "--device", "cpu"]
    write_run(tmp_path, "nowhere-exp-r10", "mm_drw", 0, command="methods/mm_drw.py", args={"mm_beta": 1.2})
    assert common.plan(["mm_drw.py|exp|10|0"], folder, str(tmp_path))[0].startswith("1 ")
    with pytest.raises(common.UserError, match="nowhere does not exist"):
        common.plan(["mm_drw.py|exp|10|0", "mm_drw.py|exp|10|1"], folder, str(tmp_path))


def test_table_methods_and_seeds_come_from_run_all():
    methods = common.table_methods()
    assert list(methods) == table_rows() and len(set(methods.values())) == len(methods)
    assert methods["ldam_drw.py --loss ce"] == "erm_drw" and methods["oversampling.py --start-epoch 160"] == "drs"
    assert common.table_seeds() == [0, 1, 2]


def test_missing_lines_group_runs_by_missing_seeds():
    row = lambda *seeds: {"runs": [{"args": {"seed": k}} for k in seeds]}  # noqa: E731
    (line,) = common.missing_lines({"erm": row(0, 1, 2), "focal": row(0), "cdt": row(0)},
                                   ["erm", "focal", "cdt", "vs"], [0, 1, 2])
    assert line.startswith("Not run yet: 7 of the 12 runs of run_all.sh's table (4 rows x seeds 0, 1, 2): "
                           "seeds 1, 2 of focal, cdt; seeds 0, 1, 2 of vs")
    (line,) = common.missing_lines({"erm": row(0, 1)}, ["erm"], [0, 1])
    assert line.startswith("Every run of run_all.sh's table is here")
    (line,) = common.missing_lines({"erm": row(0, 1)}, ["erm"], [0, 1, 2])
    assert "): seed 2 of every row (run_all.sh" in line  # one seed: "seed", not "seeds"
    assert "of every row" in common.missing_lines({}, ["erm", "vs"], [0])[0]


def test_session_lines_sum_the_invocations(tmp_path):
    assert common.session_lines(str(tmp_path)) == []
    base = {"jobs": 2, "fast": True, "mps": False, "failed": 0}
    (tmp_path / "run_all.jsonl").write_text(json.dumps({**base, "date_utc": "2026-11-28T01:00:00Z", "wall_s": 3,
                                                        "runs_finished": 0}) + "\n")
    assert common.session_lines(str(tmp_path)) == []  # one that trained nothing made nothing: no "Made by 0"
    lines = [{**base, "date_utc": "2026-11-28T01:00:00Z", "wall_s": 600, "runs_finished": 7, "failed": 1},
             {**base, "date_utc": "2026-11-29T01:00:00Z", "wall_s": 5, "runs_finished": 0},  # only skipped or deferred
             {**base, "date_utc": "2026-11-30T01:00:00Z", "wall_s": 300, "runs_finished": 3, "jobs": 4, "mps": True}]
    (tmp_path / "run_all.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    text = common.session_lines(str(tmp_path))[0]
    assert text.startswith("Made by 2 invocations of run_all.sh that trained (9 runs completed, 1 failed, 0:15:00 of wall time "
                           "in all; JOBS=2, FAST=1, MPS=0; JOBS=4, FAST=1, MPS=1), 2026-11-28 to 2026-11-30")
    # the command of each kind of invocation that trained, to reproduce the table
    again = common.session_lines(str(tmp_path))[2]
    assert again.startswith("Reproduce: `FAST=1 MPS=0 JOBS=2 bash run_all.sh` or `FAST=1 MPS=1 JOBS=4 bash run_all.sh`")
    assert common.reproduce_command({"smoke": True, "jobs": 2, "settings": "exp:100", "seeds": "0 1"}) == \
        'SMOKE=1 SETTINGS="exp:100" SEEDS="0 1" bash run_all.sh'
    # runs cut at a deadline are summed over the invocations; a smoke invocation beside real ones does not make the
    # table "a test of the pipeline"
    lines[0]["cut_at_deadline"], lines[2]["cut_at_deadline"], lines[0]["smoke"] = 1, 2, True
    (tmp_path / "run_all.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    text, _, again, _ = common.session_lines(str(tmp_path))
    assert "3 stopped at a deadline" in text and "with the JPEG CIFAR-10" in again and "SMOKE=1" in again
    assert "(6 runs completed, 1 failed, 3 stopped" in text  # a run stopped at a deadline has not completed


def test_code_sha256_ignores_the_header_and_comments_and_the_report_flags_mixed_versions(tmp_path):
    src = open(os.path.join(ROOT, "methods", "erm.py")).read()
    path = tmp_path / "erm.py"
    path.write_text(src)
    base = common.code_sha256(str(path))
    assert base == common.code_sha256(os.path.join(ROOT, "methods", "erm.py")) and len(base) == 64
    path.write_text(src.replace("Result:    ", "Result:    71.02 ± 0.40 (n=3); was: ", 1)
                    .replace("# one SGD step on a batch", "# a reworded comment"))
    assert common.code_sha256(str(path)) == base  # the generated Result line and comments are not code
    path.write_text(src.replace("momentum=args.momentum", "momentum=0.5"))
    assert common.code_sha256(str(path)) != base
    # only a docstring is left out: a file's first statement, when it is code, counts
    (tmp_path / "a.py").write_text("import os\nx = 1\n")
    (tmp_path / "b.py").write_text("import sys\nx = 1\n")
    assert common.code_sha256(str(tmp_path / "a.py")) != common.code_sha256(str(tmp_path / "b.py"))
    row = lambda code: {"code": code}  # noqa: E731
    assert common.code_lines({"erm": row({"a" * 64: [0, 1, 2]}), "vs": row({None: [0]})}) == []
    # a seed from before code_sha256 was recorded (None) is not a second version
    assert common.code_lines({"erm": row({"a" * 64: [0, 1], None: [2]})}) == []
    (line,) = common.code_lines({"erm": row({"a" * 64: [0, 1], "b" * 64: [2]}), "vs": row({"c" * 64: [0]})})
    assert "erm (seeds 0, 1: aaaaaaaaaa; seed 2: bbbbbbbbbb)" in line and "vs" not in line
    # a run of focal.py given --name erm lands in erm's folder: the line names the two files, not two versions
    run = lambda seed, script: {"status": "completed", "command": f"methods/{script} --seed {seed}",  # noqa: E731
                                "args": {"seed": seed}}
    (line,) = common.code_lines({"erm": {"code": {"a" * 64: [0, 2], "b" * 64: [1]},
                                         "runs": [run(0, "erm.py"), run(1, "focal.py"), run(2, "erm.py")]}})
    assert line.startswith("Seeds trained by different method files") and \
        "erm (seeds 0, 2: methods/erm.py; seed 1: methods/focal.py)" in line and "versions" not in line


def test_common_code_sha256_covers_the_code_that_trains_and_not_the_report(tmp_path):
    """common.py's hash in a checkpoint's key, a run's JSON and a GPU check stops at TRAINING_CODE_ENDS: nothing
    above that line, and no method file, may use a name defined below it, or a change there would train unhashed."""
    import ast
    src = open(common.__file__).read()
    lines = src.splitlines()
    (stop,) = [i for i, line in enumerate(lines, 1) if line.startswith(common.TRAINING_CODE_ENDS)]
    tree = ast.parse(src)
    below = {name for node in tree.body if node.lineno > stop for name in (
        [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
        [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])}
    assert {"report", "plan", "write_headers", "RUN_ALL"} <= below  # the report and the planner are below it
    used = {n.id for node in tree.body if node.lineno < stop for n in ast.walk(node) if isinstance(n, ast.Name)}
    assert not used & below, f"common.py's training part uses {sorted(used & below)}, defined below its end"
    for f in sorted(os.listdir(os.path.join(ROOT, "methods"))):
        tree = ast.parse(open(os.path.join(ROOT, "methods", f)).read())
        used = {n.attr for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "common"}
        assert not used & below, f"methods/{f} uses common.{sorted(used & below)}, defined below the training part"
    # an edit below the line leaves the hash as it is; one above changes it
    path = tmp_path / "common.py"
    path.write_text(src)
    base = common.common_code_sha256(str(path))
    assert base == common.common_code_sha256() and base != common.code_sha256(str(path))
    path.write_text(src.replace("def report(results_dir):", "def report(results_dir, extra=None):", 1))
    assert common.common_code_sha256(str(path)) == base and common.code_sha256(str(path)) != common.code_sha256(
        common.__file__)
    path.write_text(src.replace("ECE_BINS = 15", "ECE_BINS = 10", 1))
    assert common.common_code_sha256(str(path)) != base


def test_args_lines_name_runs_trained_with_other_arguments_than_their_row(tmp_path):
    run = lambda seed, **kw: {"args": {**vars(common.row_args(  # noqa: E731
        "class_balanced.py --loss focal", ["--dataset", "synthetic", "--imbalance-ratio", "10", "--device", "cpu",
                                           "--seed", str(seed)])), **kw}}
    table = {"class_balanced.py --loss focal": "cb_focal"}
    assert common.args_lines({"cb_focal": {"runs": [run(0), run(1, device="cuda", fast=True, eval_every=1)]}},
                             table) == []  # where and how a run was made is not what it trained
    (line,) = common.args_lines({"cb_focal": {"runs": [run(0), run(1, beta=0.0), run(2, beta=0.0)]}}, table)
    assert line.endswith("--beta 0.0 instead of 0.9999 (cb_focal seed 1, cb_focal seed 2).")
    elsewhere = run(0, dataset="imagefolder", data_dir=str(tmp_path / "absent"))  # a report made without the data
    assert common.args_lines({"cb_focal": {"runs": [elsewhere]}}, table) == [
        "The arguments of 1 runs were not compared with their rows: their data folder is not here."]
    # ... unless the run's class count is CIFAR's: the defaults that depend on the data depend on that alone
    elsewhere["train_class_counts"] = [50] * 10
    assert common.args_lines({"cb_focal": {"runs": [elsewhere]}}, table) == []  # (a fresh clone's report: no line)
    sam = {"sam.py --base ce_drw": "sam_ce_drw"}
    cifar100 = vars(common.row_args("sam.py --base ce_drw", ["--dataset", "cifar100", "--device", "cpu"]))
    hundred = {"args": {**cifar100, "dataset": "imagefolder", "data_dir": str(tmp_path / "absent")},
               "train_class_counts": [5] * 100}
    assert hundred["args"]["rho"] == 0.8 and common.args_lines({"sam_ce_drw": {"runs": [hundred]}}, sam) == []
    hundred["train_class_counts"] = [5] * 10  # the same run on 10 classes: rho 0.5 is the row's
    (line,) = common.args_lines({"sam_ce_drw": {"runs": [hundred]}}, sam)
    assert "--rho 0.8 instead of 0.5" in line


def test_results_record_their_code_version(smoke_table):
    proc, out = smoke_table
    for r in read_results(out).values():
        script = r["command"].split()[0]
        assert r["code_sha256"] == common.code_sha256(os.path.join(ROOT, script)), script
        assert r["common_code_sha256"] == common.common_code_sha256()
