"""Shared test helpers: paths, the tiny synthetic run arguments, running and importing method files."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A few CPU steps on the built-in synthetic set (10 classes, 100..10 training images, 200 test images).
SMOKE_ARGS = ["--dataset", "synthetic", "--imbalance-ratio", "10", "--epochs", "2", "--batch-size", "64",
              "--eval-every", "1", "--device", "cpu"]


def run_script(script, *args, check=True, env=None, timeout=600):
    """Run a repository script (path relative to the root) in a subprocess; return the CompletedProcess."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def load_script(path, name=None):
    """Import a repository script (path relative to the root) as a module; what sits under __main__ does not run."""
    spec = importlib.util.spec_from_file_location(name or os.path.splitext(os.path.basename(path))[0],
                                                  os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_method(name):
    """Import methods/<name>.py as a module (its training loop sits under __main__, so nothing runs)."""
    return load_script(os.path.join("methods", f"{name}.py"), f"method_{name}")


def read_results(out_dir):
    """{relative path: parsed JSON} of every results file under out_dir."""
    found = {}
    for dirpath, _, files in os.walk(out_dir):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(dirpath, f)) as fh:
                    found[os.path.relpath(os.path.join(dirpath, f), out_dir)] = json.load(fh)
    return found


@pytest.fixture(scope="session")
def smoke_table(tmp_path_factory):
    """`SMOKE=1 bash run_all.sh` once per test session: every row of the table for 2 epochs on the synthetic
    set. Returns (CompletedProcess, results folder). test_smoke and test_run_all both read it."""
    out = tmp_path_factory.mktemp("smoke_table") / "results"
    proc = subprocess.run(["bash", "run_all.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "SMOKE": "1", "OUT": str(out), "JOBS": "2"})
    return proc, out


def without_times(history):
    """A run's history without its wall-clock fields (elapsed_s, eval_s): what two runs of the same seed share."""
    return [{k: v for k, v in e.items() if k not in ("elapsed_s", "eval_s")} for e in history]
