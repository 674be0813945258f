"""A tiny CPU run of every script in methods/ (found by glob), checking the JSON it writes. The rows of
run_all.sh run once per session (the smoke_table fixture); a script that is in no row runs on its own."""
import glob
import math
import os

import pytest

from conftest import ROOT, SMOKE_ARGS, read_results, run_script

SCRIPTS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "methods", "*.py")))


def test_every_method_is_found():
    assert "methods/erm.py" in SCRIPTS and len(SCRIPTS) >= 13


def check_result(path, r):
    assert path.startswith("synthetic-exp-r10" + os.sep) and path.endswith(os.path.join("", "seed0.json")), path
    assert r["status"] == "completed" and r["epochs_completed"] == 2
    assert r["train_class_counts"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert len(r["history"]) == 2 and all(math.isfinite(h["train_loss"]) for h in r["history"])
    f = r["final"]
    assert 0 <= f["top1"] <= 100 and len(f["per_class_acc"]) == 10 and math.isfinite(f["ece"])
    assert f["many"] is None  # no class has more than 100 images: reported as absent, not as 0
    for key in ("method", "args", "subset_sha256", "wall_time_s", "device_name", "torch_version",
                "git_commit", "git_dirty", "command"):
        assert key in r
    assert r["precision"] == "fp32"  # the CPU trains in fp32 whatever --fp32 says


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run_writes_complete_json(script, smoke_table, tmp_path):
    proc, out = smoke_table
    results = {p: r for p, r in read_results(out).items() if r["command"].split()[0] == script}
    if not results:  # not a row of run_all.sh: run it alone
        proc = run_script(script, *SMOKE_ARGS, "--out", tmp_path)
        assert "final (epoch 2)" in proc.stdout
        results = read_results(tmp_path)
        assert len(results) == 1, results.keys()
    for path, r in results.items():
        check_result(path, r)
        if r["method"].startswith("pcnsgd"):  # the per-epoch records of PCNSGD (the header names them)
            x = r["extra"]
            assert len(x["per_class_train_loss"]) == 2 and all(len(e) == 10 for e in x["per_class_train_loss"])
            assert len(x["direction_norm"]) == len(x["plain_grad_norm"]) == 2
            assert all(0 < d <= 10 for d in x["direction_norm"])  # a sum of 10 unit vectors
            assert all(p > 0 for p in x["plain_grad_norm"]) and x["direction_norm"] != x["plain_grad_norm"]
