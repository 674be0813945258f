"""Shared test helpers: paths, the tiny synthetic run arguments, running and importing method files."""
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import pytest
import torch

from warm_python import run_as_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A few CPU steps on the built-in synthetic set (10 classes, 100..10 training images, 200 test images).
SMOKE_ARGS = ["--dataset", "synthetic", "--imbalance-ratio", "10", "--epochs", "2", "--batch-size", "64",
              "--eval-every", "1", "--device", "cpu"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # for training subprocesses: 2 spinning cores cost more

# CIFAR-10-LT R=100: the training counts of the official code (kaidic/LDAM-DRW imbalance_cifar.py), head to tail,
# and Cui et al.'s class-balanced weights of these counts at beta 0.9999, normalized to sum to 10 (3 decimals).
C10_LT100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CB_C10_LT100_9999 = [0.051, 0.077, 0.121, 0.195, 0.319, 0.525, 0.868, 1.443, 2.409, 3.993]


def run_script(script, *args, check=True, env=None, timeout=600):
    """Run a repository script (path relative to the root) in a subprocess; return the CompletedProcess."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return checked(proc, script, args, check)


def run_script_forked(script, *args, check=True, timeout=600):
    """run_script's CompletedProcess, from a forked child of this process (start_forked): the script runs as
    __main__ as in a new interpreter, in one thread, without that interpreter's ~5 s of imports (torch, and the
    torch._dynamo that the first optimizer imports). For tests of what a script computes, writes and prints; a test
    of what a real process does (its environment, a signal, sys.executable) uses run_script."""
    rc, out, err = run_forked(script, *args, timeout=timeout)
    return checked(subprocess.CompletedProcess([script, *map(str, args)], rc, out, err), script, args, check)


def checked(proc, script, args, check):
    """proc; with check, an AssertionError with the tails of its output if it did not exit 0."""
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def start_forked(script, *args, setup=None):
    """Start `python <script> <args>` in a forked child of this process (torch is imported once, here) and return
    a handle for wait_forked: the script runs as __main__ from the repository's root as the interpreter would run it
    (warm_python.run_as_main). `setup()`, if given, runs in the child first (e.g. to wrap a function of common.py,
    the module the script imports). Runs a real subprocess where fork does not exist."""
    if not hasattr(os, "fork"):
        if setup is not None:
            pytest.skip("needs os.fork")
        return run_script(script, *args, check=False, env=ONE_THREAD)  # already finished
    path = os.path.join(ROOT, script)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.chdir(ROOT)
            # one thread: the OpenMP pool of a parent that has run torch ops does not survive fork (the child's
            # first parallel region would hang), and a one-thread run is what ONE_THREAD gives real subprocesses
            torch.set_num_threads(1)
            if setup is not None:
                setup()
            code = run_as_main(path, args)
        except BaseException:  # noqa: BLE001  (setup failed: its traceback, and the child ends)
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return pid, out, err, f"{script} {' '.join(map(str, args))}"


def poll_forked(handle, started, timeout):
    """(returncode, stdout, stderr) of a start_forked child that has exited, None while it runs; one still running
    `timeout` seconds after `started` is killed, and the test fails."""
    if isinstance(handle, subprocess.CompletedProcess):  # (no fork: it has already run)
        return handle.returncode, handle.stdout, handle.stderr
    pid, out, err, what = handle
    done, status = os.waitpid(pid, os.WNOHANG)
    if not done:
        if time.time() - started <= timeout:
            return None
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"{what} ran past {timeout}s")
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode(errors="replace"))
        f.close()
    return os.waitstatus_to_exitcode(status), *texts


def wait_forked(handle, timeout=120):
    """(returncode, stdout, stderr) of a start_forked child, once it has exited; killed after `timeout` seconds."""
    started = time.time()
    while (result := poll_forked(handle, started, timeout)) is None:
        time.sleep(0.02)
    return result


def run_forked_pool(jobs, at_once=2, timeout=120):
    """[(returncode, stdout, stderr)] of each job, a (script, args, setup) for start_forked, in the jobs' order:
    `at_once` children at a time, the next one started as soon as any has ended (each killed, and the test failed,
    `timeout` seconds after its start)."""
    results, running, pending = [None] * len(jobs), {}, list(range(len(jobs)))  # running: index -> (handle, start)
    while pending or running:
        while pending and len(running) < at_once:
            i = pending.pop(0)
            script, args, setup = jobs[i]
            running[i] = start_forked(script, *args, setup=setup), time.time()
        for i, (handle, started) in list(running.items()):
            if (result := poll_forked(handle, started, timeout)) is not None:
                results[i] = result
                del running[i]
        if running:
            time.sleep(0.02)
    return results


def run_forked(script, *args, timeout=120, setup=None):
    """(returncode, stdout, stderr) of `python <script> <args>` run in a forked child (start_forked)."""
    return wait_forked(start_forked(script, *args, setup=setup), timeout)


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


def assert_user_error(parse_args, args, needle):
    """parse_args(args) stops with common.UserError (exit status 1, before any data is loaded) whose message is one
    line, 'error: ...', that contains needle (the flag at fault)."""
    import common
    with pytest.raises(common.UserError) as e:
        parse_args([str(a) for a in args])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and needle in message, message


def readme_block(name, page="README.md"):
    """What stands between a page's `<!-- name:start -->` and `<!-- name:end -->` lines (common.write_readme_block
    writes it there), without the newlines that end the marker lines; page: from the repository's root."""
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    assert start in text and end in text, f"{page} has no {name} block"
    return text.split(start)[1].split(end)[0]


def read_results(out_dir):
    """{relative path: parsed JSON} of every results file under out_dir."""
    found = {}
    for dirpath, _, files in os.walk(out_dir):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(dirpath, f)) as fh:
                    found[os.path.relpath(os.path.join(dirpath, f), out_dir)] = json.load(fh)
    return found


@pytest.fixture(scope="session", autouse=True)
def warm_python():
    """PYTHON for the session's `bash run_all.sh` invocations: tests/warm_python.py's client, whose runs, plans and
    reports are forks of one server that has imported torch (~5 s saved each). The server starts in the background;
    until it is ready the client runs the real interpreter. A test that sets PYTHON keeps its own."""
    if not (hasattr(os, "fork") and hasattr(socket, "send_fds")):
        yield None
        return
    folder = tempfile.mkdtemp(prefix="warm-python-")  # (a short path: a socket's address is at most 107 bytes)
    script, address, wrapper = os.path.join(ROOT, "tests", "warm_python.py"), os.path.join(folder, "socket"), \
        os.path.join(folder, "python")
    with open(os.path.join(folder, "server.log"), "w") as log:
        server = subprocess.Popen([sys.executable, script, "serve", address], cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT)
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(script)} {shlex.quote(address)} "$@"\n')
    os.chmod(wrapper, 0o755)
    before = os.environ.get("PYTHON")
    os.environ["PYTHON"] = wrapper
    yield wrapper
    if before is None:
        os.environ.pop("PYTHON")
    else:
        os.environ["PYTHON"] = before
    server.terminate()
    server.wait()
    shutil.rmtree(folder, ignore_errors=True)


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
