"""Reliability of unattended runs: bad input gives ONE clean "error:" line and writes nothing; runs are
deterministic; a killed run leaves no result and run_all.sh resumes only what is missing; a diverged run is
recorded and reported as such; the report refuses a result filed under the wrong setting, method or seed.

The bad-input cases run each script as __main__ in a forked child of this process (torch is imported once,
here), with the interpreter's own top-level handling of SystemExit and uncaught exceptions; a few cases run
as real subprocesses too, so the emulation is checked against the real thing. Training runs are real
subprocesses with one thread each (two busy cores spin-waiting cost more than they give).
"""
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ONE_THREAD, ROOT, SMOKE_ARGS, read_results, run_forked, run_script, without_times

import common  # noqa: E402  (conftest puts the repository root on sys.path)

SETTING = "synthetic-exp-r10"


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def run_real(script, *args):
    p = run_script(script, *args, check=False, env=ONE_THREAD, timeout=300)
    return p.returncode, p.stdout, p.stderr


def snapshot(root, skip=("cache",)):
    """{relative path: sha256 or 'dir'} of everything under root except the named top-level folders."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        if dirpath == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
        for d in dirs:
            found[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                found[os.path.relpath(p, root)] = "other"
                continue
            with open(p, "rb") as fh:
                found[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def make_folder(root, train=("a", "b", "c"), test=("a", "b", "c"), n_train=4, n_test=2, size=32, ext="png"):
    """A tiny ImageFolder: root/{train,test}/<class>/<i>.<ext>, random 32x32 RGB images."""
    rng = np.random.RandomState(0)
    for split, classes, n in (("train", train, n_train), ("test", test, n_test)):
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(d, f"{i}.{ext}"))
    return str(root)


def imagefolder_args(data_dir, ratio="2"):
    return ["--dataset", "imagefolder", "--data-dir", data_dir, "--imbalance-ratio", ratio, "--epochs", "1",
            "--batch-size", "4", "--device", "cpu"]


def result_file(out, seed=0, method="erm", setting=SETTING):
    return os.path.join(out, setting, method, f"seed{seed}.json")


def one_error_line(stderr, stdout=""):
    """The single stderr line, after checking it is one line starting with 'error:' and nothing crashed."""
    assert "Traceback" not in stderr + stdout, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def kill_during_write(path):
    """Leave what a process killed between writing the temporary file and the rename leaves: run the real
    common.write_json in a forked child whose os.replace exits on the spot. Returns the temporary files."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    pid = os.fork()
    if pid == 0:
        try:
            os.replace = lambda *a, **k: os._exit(0)
            common.write_json(path, {"status": "completed", "half": "written" * 100})
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    left = glob.glob(glob.escape(path) + ".tmp*")
    assert left and not os.path.exists(path)
    return left


# ------------------------------------------------------------------------------------------------
# 1. Bad input: one line, "error: ...", non-zero, no traceback, nothing written
# ------------------------------------------------------------------------------------------------

def _missing(t):
    return "methods/erm.py", imagefolder_args(str(t / "nowhere")), ["does not exist"]


def _data_dir_is_a_file(t):
    open(t / "data.tgz", "w").write("an archive, not yet unpacked")
    return "methods/erm.py", imagefolder_args(str(t / "data.tgz")), ["data.tgz is a file"]


def _empty(t):
    os.makedirs(t / "data")
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["is empty"]


def _no_splits(t):
    make_folder(t / "data")
    os.rename(t / "data" / "train", t / "data" / "images")
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["no train/ folder"]


def _no_test(t):
    make_folder(t / "data")
    shutil.rmtree(t / "data" / "test")
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["no test/ folder"]


def _train_only_class(t):
    make_folder(t / "data", train=("a", "b", "c", "zebra"))
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["zebra", "in train/ but not in test/"]


def _test_only_class(t):
    make_folder(t / "data", test=("a", "b", "c", "yak"))
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["yak", "in test/ but not in train/"]


def _classes_only_in_each_split(t):  # both named at once: fixing one does not lead to the other's error
    make_folder(t / "data", train=("a", "b", "zebra"), test=("a", "b", "yak"))
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["zebra in train/ but not in test/; ",
                                                                 "yak in test/ but not in train/"]


def _class_without_images(t):
    make_folder(t / "data")
    for f in glob.glob(str(t / "data" / "test" / "b" / "*")):
        os.remove(f)
    open(t / "data" / "test" / "b" / "README.txt", "w").write("no images here")
    return "methods/erm.py", imagefolder_args(str(t / "data")), [os.path.join("test", "b"), "has no images"]


def _garbage_image(t):
    make_folder(t / "data")
    open(t / "data" / "train" / "b" / "broken.png", "w").write("this is not a PNG")
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["cannot read image", "broken.png"]


def _truncated_jpeg(t):
    make_folder(t / "data", ext="jpg")
    p = t / "data" / "test" / "c" / "1.jpg"
    data = open(p, "rb").read()
    open(p, "wb").write(data[:len(data) // 2])
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["cannot read image", "1.jpg"]


def _dangling_symlink(t):
    make_folder(t / "data")
    os.symlink(t / "moved-away.png", t / "data" / "train" / "a" / "link.png")
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["link.png"]


def _unreadable(t):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root (or no POSIX permissions): every file is readable")
    make_folder(t / "data")
    os.chmod(t / "data" / "train" / "a" / "0.png", 0)
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["cannot read image", "0.png"]


def _mixed_sizes(t):
    make_folder(t / "data")
    Image.new("RGB", (28, 28)).save(t / "data" / "test" / "a" / "small.png")
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["small.png", "same size"]


def _not_square(t):
    make_folder(t / "data")
    for path in sorted((t / "data").rglob("*.png")):
        Image.new("RGB", (32, 24)).save(path)  # all the same size, but 32 wide and 24 high
    return "methods/erm.py", imagefolder_args(str(t / "data")), ["is 32x24", "square images"]


def _ratio_below_one(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--imbalance-ratio", "0.5"], ["--imbalance-ratio must be >= 1"]


def _ratio_not_a_number(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--imbalance-ratio", "ten"], ["--imbalance-ratio must be a number"]


def _ratio_infinite(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--imbalance-ratio", "inf"], ["--imbalance-ratio must be a finite number"]


def _ratio_empties_a_class(t):
    make_folder(t / "data")  # 4 images per class: ratio 10 keeps int(4 / 10) = 0 of the last class
    return "methods/erm.py", imagefolder_args(str(t / "data"), ratio="10"), ["with 0 images", "at most 4"]


def _ratio_empties_synthetic(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--imbalance-ratio", "1000"], ["with 0 images"]


def _unknown_dataset(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--dataset", "imagenet"], ["unknown dataset 'imagenet'"]


def _unknown_option(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--bogus"], ["unrecognized arguments: --bogus"]


def _epochs_not_int(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--epochs", "2.5"], ["--epochs", "invalid int value"]


def _negative_epochs(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--epochs", "-3"], ["--epochs must be positive"]


def _zero_batch(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--batch-size", "0"], ["--batch-size must be positive"]


def _negative_batch(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--batch-size", "-8"], ["--batch-size must be positive"]


def _unknown_device(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--device", "tpu"], ["unknown --device 'tpu'"]


def _cuda_without_gpu(t):
    if torch.cuda.is_available():
        pytest.skip("a GPU exists here")
    return "methods/erm.py", [*SMOKE_ARGS, "--device", "cuda"], ["no CUDA GPU"]


def _imagefolder_without_dir(t):
    return "methods/erm.py", [*SMOKE_ARGS, "--dataset", "imagefolder"], ["needs --data-dir"]


def _existing_result(t):
    path = result_file(t / "out")
    os.makedirs(os.path.dirname(path))
    open(path, "w").write('{"an earlier result": "must stay byte for byte"}')
    return "methods/erm.py", list(SMOKE_ARGS), ["exists", "--overwrite"]


def _out_is_a_file(t):
    open(t / "not-a-folder", "w").write("a file where the results folder should go")
    return "methods/erm.py", [*SMOKE_ARGS, "--out", str(t / "not-a-folder")], ["not-a-folder"]


def _out_not_writable(t):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root (or no POSIX permissions): every folder is writable")
    os.makedirs(t / "locked")
    os.chmod(t / "locked", 0o555)
    return "methods/erm.py", [*SMOKE_ARGS, "--out", str(t / "locked" / "results")], ["not writable"]


def _method_arg(script, flag, value, phrase):
    def build(t):
        if not os.path.exists(os.path.join(ROOT, script)):
            pytest.skip(f"{script} does not exist yet")
        return script, [*SMOKE_ARGS, flag, value], [phrase]
    build.__name__ = f"{os.path.basename(script)}{flag}={value}"
    return build


BAD_INPUT = [  # (build(tmp_path) -> (script, args, phrases the message must contain), run as a real process)
    (_missing, False), (_data_dir_is_a_file, False), (_empty, False), (_no_splits, False), (_no_test, False), (_train_only_class, False),
    (_test_only_class, False), (_classes_only_in_each_split, False), (_class_without_images, False), (_garbage_image, True), (_truncated_jpeg, False),
    (_dangling_symlink, False), (_unreadable, False), (_mixed_sizes, False), (_not_square, False),
    (_ratio_below_one, False),
    (_ratio_not_a_number, False), (_ratio_infinite, False), (_ratio_empties_a_class, False), (_ratio_empties_synthetic, False),
    (_unknown_dataset, False), (_unknown_option, False), (_epochs_not_int, False), (_negative_epochs, False),
    (_zero_batch, False), (_negative_batch, False), (_unknown_device, False), (_cuda_without_gpu, False),
    (_imagefolder_without_dir, False), (_existing_result, True), (_out_is_a_file, False),
    (_out_not_writable, False),
    (_method_arg("methods/class_balanced.py", "--beta", "1.0", "beta"), False),
    (_method_arg("methods/focal.py", "--gamma", "-1", "gamma"), False),
    (_method_arg("methods/oversampling.py", "--sampling-power", "2", "--sampling-power"), False),
    (_method_arg("methods/ldam_drw.py", "--beta", "1.5", "--beta must be in [0, 1), got 1.5"), False),
    (_method_arg("methods/sam.py", "--rho", "-0.1", "rho"), False),
    (_method_arg("methods/erm.py", "--seed", "-1", "--seed"), False),
    (_method_arg("methods/erm.py", "--data-seed", str(2 ** 32), "--data-seed"), False),
    (_method_arg("methods/erm.py", "--name", "../elsewhere", "--name"), False),
    (_method_arg("methods/erm.py", "--lr", "inf", "--lr"), False),
    (_method_arg("methods/erm.py", "--weight-decay", "nan", "--weight-decay"), False),
    (_method_arg("methods/erm.py", "--device", "cudafoo", "unknown --device"), False),
    (_method_arg("methods/erm.py", "--batch-size", "100000", "pass --batch-size"), False),
    (_method_arg("methods/erm.py", "--overwrite", "--skip-existing", "contradict"), False),
    (_method_arg("methods/erm.py", "--lr-decay-epochs", "-5", "--lr-decay-epochs must be >= 0"), False),
]


@pytest.mark.parametrize("build, real", BAD_INPUT,
                         ids=[b.__name__.strip("_") + ("-subprocess" if r else "") for b, r in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(build, real, tmp_path):
    script, args, phrases = build(tmp_path)
    args = ["--out", tmp_path / "out", "--cache-dir", tmp_path / "cache", *args]   # a case may override --out
    before = snapshot(tmp_path)
    rc, stdout, stderr = (run_real if real else run_forked)(script, *args)
    assert rc != 0, stdout + stderr
    line = one_error_line(stderr, stdout)
    for phrase in phrases:
        assert phrase in line, f"{phrase!r} not in {line!r}"
    assert snapshot(tmp_path) == before, "a failed run changed files under its folder"


def test_a_subset_that_cannot_train_stops_the_run_before_any_image_is_decoded(tmp_path):
    """An image folder's long-tailed subset is cut from its file names: one class, a ratio that leaves a class no
    image or a batch larger than the subset stops the run before the images are decoded and cached (CIFAR-10: 13 s
    and 177 MB for nothing)."""
    for name, classes, more, phrase in (("one", ("a",), [], "needs at least 2"),
                                        ("ratio", ("a", "b", "c"), ["--imbalance-ratio", "10"], "with 0 images"),
                                        ("batch", ("a", "b", "c"), ["--batch-size", "100"], "pass --batch-size 8 or less")):
        make_folder(tmp_path / name, train=classes, test=classes)
        cache = tmp_path / f"cache-{name}"
        rc, stdout, stderr = run_forked("methods/erm.py", *imagefolder_args(str(tmp_path / name)), *more,
                                        "--out", tmp_path / "out", "--cache-dir", cache)
        assert rc != 0 and phrase in one_error_line(stderr, stdout), stdout + stderr
        assert "decoding" not in stdout and not cache.exists() and not (tmp_path / "out").exists(), stdout


def test_an_unbalanced_folder_is_noted_once_and_trains(tmp_path):
    """The note on a folder whose classes differ in size comes once, from the subset cut before the images are read
    and printed after them."""
    make_folder(tmp_path / "data")
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "train" / "a" / "extra.png")  # a: 5 images, b and c: 4
    rc, stdout, stderr = run_forked("methods/erm.py", *imagefolder_args(str(tmp_path / "data")), "--out",
                                    tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert rc == 0 and stderr.count("note: the training classes are not of one size (4 to 5 images)") == 1, stderr


def _no_internet():
    """setup() for start_forked: every URL fails as without a network."""
    import urllib.error
    import urllib.request

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")
    urllib.request.urlopen = fail


def test_a_failed_download_leaves_no_folder_it_made(tmp_path):
    """--download without internet: one error line, and the --data-dir it made for the files is gone again (one that
    was there stays)."""
    for data_dir, existed in ((tmp_path / "new" / "cifar", False), (tmp_path / "old", True)):
        if existed:
            data_dir.mkdir()
        rc, stdout, stderr = run_forked("methods/erm.py", "--dataset", "cifar10", "--download", "--data-dir", data_dir,
                                        "--device", "cpu", "--out", tmp_path / "out", setup=_no_internet)
        assert rc == 1 and "could not download cifar10" in one_error_line(stderr, stdout), stdout + stderr
        assert "(URLError)" in stderr  # (the test's no-network, not a download on a machine that has one)
        assert data_dir.exists() == existed and not (tmp_path / "out").exists()
    assert not (tmp_path / "new").exists()  # (all the folders it made, not only the last)


def test_forked_runner_matches_a_real_process(tmp_path):
    """The emulation of the interpreter's top level gives what a real process gives."""
    args = [*SMOKE_ARGS, "--out", tmp_path, "--epochs", "-1"]
    assert run_forked("methods/erm.py", *args) == run_real("methods/erm.py", *args)


def test_warm_python_runs_a_script_as_the_real_interpreter_does(warm_python, tmp_path):
    """conftest's PYTHON for run_all.sh (tests/warm_python.py): a script's arguments, folder, environment, input,
    output and exit status are a real process's, and a signal sent to it (a DEADLINE's `timeout`) ends the run."""
    if warm_python is None:
        pytest.skip("needs os.fork and socket.send_fds")
    address = os.path.join(os.path.dirname(warm_python), "socket")
    for _ in range(600):  # the server starts with the session, in the background
        if os.path.exists(address):
            break
        time.sleep(0.1)
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys, time\n"
                     "print(os.getcwd(), os.environ['PROBE'], sys.stdin.read(), sys.argv[1:], sys.path[0])\n"
                     "print('warm' if 'torch' in sys.modules else 'cold', file=sys.stderr)\n"
                     "if sys.argv[1] == 'sleep':\n"
                     "    open(sys.argv[2], 'w').write(str(os.getpid()))\n"
                     "    time.sleep(60)\n"
                     "sys.exit(3)\n")
    ran = {}
    for how, python in (("real", sys.executable), ("warm", warm_python)):
        ran[how] = subprocess.run([python, str(probe), "a b", "c"], cwd=tmp_path, input="stdin text", text=True,
                                  capture_output=True, env={**os.environ, "PROBE": how}, timeout=60)
    real, warm = ran["real"], ran["warm"]
    assert real.returncode == warm.returncode == 3 and real.stderr == "cold\n" and warm.stderr == "warm\n"
    assert warm.stdout == real.stdout.replace(" real ", " warm ") == \
        f"{tmp_path} warm stdin text ['a b', 'c'] {tmp_path}\n"
    # a method file of another copy of the repository imports that copy's common.py, not the server's
    (tmp_path / "copy" / "methods").mkdir(parents=True)
    (tmp_path / "copy" / "common.py").write_text("")
    (tmp_path / "copy" / "methods" / "m.py").write_text(
        "import os, sys\nhere = os.path.dirname(os.path.abspath(__file__))\n"
        "sys.path[:0] = [here, os.path.dirname(here)]\nimport common\nprint(common.__file__)\n")
    copy = subprocess.run([warm_python, "methods/m.py"], cwd=tmp_path / "copy", capture_output=True, text=True,
                          timeout=60)
    assert copy.stdout == f"{tmp_path / 'copy' / 'common.py'}\n", copy
    t0 = time.time()
    cut = subprocess.run(["timeout", "3", warm_python, str(probe), "sleep", str(tmp_path / "pid")], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PROBE": "x"}, timeout=60)
    assert cut.returncode == 124 and time.time() - t0 < 30 and cut.stderr == "warm\n", cut
    pid = int((tmp_path / "pid").read_text())
    for _ in range(100):  # the run got the signal and is gone, not left sleeping
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the run {pid} outlived its client")


# ------------------------------------------------------------------------------------------------
# Shared training runs (started together: each one thread, two cores)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four SMOKE runs of erm: a and b identical (--deterministic), c another --seed, d another
    --data-seed (c and d one epoch: only their subset matters). {name: parsed JSON}."""
    base = tmp_path_factory.mktemp("runs")
    variants = {"a": [], "b": [], "c": ["--seed", "1", "--epochs", "1"], "d": ["--data-seed", "1", "--epochs", "1"]}
    procs = {}
    for name, extra in variants.items():
        cmd = [sys.executable, os.path.join(ROOT, "methods", "erm.py"), *SMOKE_ARGS, "--deterministic",
               "--out", str(base / name), *extra]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, **ONE_THREAD})
    found = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, f"run {name} failed:\n{stdout[-2000:]}\n{stderr[-2000:]}"
        (path, r), = read_results(base / name).items()
        r["_file"] = os.path.join(base / name, path)
        found[name] = r
    return found


def place(run, out, seed=None, method="erm", setting=SETTING):
    """Copy a run's JSON to out/<setting>/<method>/seed<k>.json; return that path."""
    dest = result_file(out, run["args"]["seed"] if seed is None else seed, method, setting)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(run["_file"], dest)
    return dest


# ------------------------------------------------------------------------------------------------
# 2. Determinism
# ------------------------------------------------------------------------------------------------

def test_same_seeds_give_identical_runs(runs):
    a, b = runs["a"], runs["b"]
    assert a["final"] == b["final"]
    assert without_times(a["history"]) == without_times(b["history"]) and len(a["history"]) == 2
    assert a["subset_sha256"] == b["subset_sha256"]


def test_training_seed_changes_the_run_not_the_subset(runs):
    a, c = runs["a"], runs["c"]
    assert c["args"]["seed"] == 1 and c["args"]["data_seed"] == 0
    assert c["subset_sha256"] == a["subset_sha256"]
    assert c["history"][0]["train_loss"] != a["history"][0]["train_loss"]   # init and batch order differ


def test_data_seed_alone_fixes_the_subset(runs):
    a, d = runs["a"], runs["d"]
    assert d["args"]["seed"] == 0 and d["args"]["data_seed"] == 1
    assert d["subset_sha256"] != a["subset_sha256"]
    assert d["train_class_counts"] == a["train_class_counts"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]


def test_subset_hash_is_the_hash_of_the_official_selection(runs):
    """subset_sha256 is computable without a run: the same selection from the same data seed."""
    _, train_y, _, _, _ = common.make_synthetic()
    for name, data_seed in (("a", 0), ("d", 1)):
        keep, _ = common.make_long_tailed(train_y, 10, "exp", 10.0, data_seed)
        assert hashlib.sha256(keep.astype(np.int64).tobytes()).hexdigest() == runs[name]["subset_sha256"]


# ------------------------------------------------------------------------------------------------
# 3. Interrupted runs
# ------------------------------------------------------------------------------------------------

def test_killed_run_leaves_no_result(tmp_path):
    out = tmp_path / "out"
    # What a kill during the write of the JSON leaves (the only moment a result file is being written).
    leftover = kill_during_write(result_file(out, seed=0))
    cmd = [sys.executable, os.path.join(ROOT, "methods", "erm.py"), *SMOKE_ARGS, "--epochs", "50", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ONE_THREAD})
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "epoch   1/50  lr" in line:  # the epoch's end (a progress line within it says "step")
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert any("epoch   1/50  lr" in s for s in seen), "".join(seen)
    assert proc.returncode == -signal.SIGKILL
    assert read_results(out) == {}                          # no *.json: neither a result nor a partial one
    assert common.load_results(str(out)) == []              # the temporary file is not read as a result
    assert all(os.path.exists(p) for p in leftover)
    rc, stdout, stderr = run_forked("common.py", "report", out)
    assert rc != 0 and "no results JSON" in one_error_line(stderr, stdout)
    assert not os.path.exists(out / "RESULTS.md")


def test_run_all_skips_existing_and_reruns_missing(runs, tmp_path):
    """In a copy of the repository holding only run_all.sh, common.py and methods/erm.py: ONLY needs only the
    scripts of the rows it selects."""
    repo = tmp_path / "repo"
    os.makedirs(repo / "methods")
    for f in ("run_all.sh", "common.py", os.path.join("methods", "erm.py")):
        shutil.copyfile(os.path.join(ROOT, f), repo / f)
    out = tmp_path / "out"
    seed0 = place(runs["a"], out)                           # a complete earlier result
    before = open(seed0, "rb").read()
    leftover = kill_during_write(result_file(out, seed=1))  # seed 1 was killed while writing its JSON
    env = {**os.environ, **ONE_THREAD, "SMOKE": "1", "ONLY": "^erm.py", "OUT": str(out), "SEEDS": "0 1",
           "JOBS": "2", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo / "run_all.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 runs, 1 done before, 1 to run" in proc.stdout and "0 failed" in proc.stdout
    assert open(seed0, "rb").read() == before               # skipped, not rerun
    logs = {os.path.basename(p): open(p).read() for p in glob.glob(str(out / "logs" / "*.log"))}
    assert len(logs) == 1 and "seed1" in next(iter(logs)), logs.keys()  # the existing run is not even started
    results = read_results(out)
    assert sorted(results) == [os.path.join(SETTING, "erm", f"seed{k}.json") for k in (0, 1)]
    r1 = results[os.path.join(SETTING, "erm", "seed1.json")]
    assert r1["status"] == "completed" and r1["args"]["seed"] == 1 and r1["epochs_completed"] == 2
    assert not any(os.path.exists(p) for p in leftover), "the stale temporary file of the killed write is left"
    table = open(out / "RESULTS.md").read()
    row, = [l for l in table.splitlines() if l.startswith("| erm |")]
    assert "(2)" in row


def test_skip_existing_exits_zero_without_touching_the_result(runs, tmp_path):
    path = place(runs["a"], tmp_path)
    before = open(path, "rb").read()
    rc, stdout, stderr = run_forked("methods/erm.py", *SMOKE_ARGS, "--out", tmp_path, "--skip-existing")
    assert rc == 0 and stderr == "" and "skip:" in stdout
    assert open(path, "rb").read() == before


# ------------------------------------------------------------------------------------------------
# 4. Divergence (and --overwrite replacing an earlier result)
# ------------------------------------------------------------------------------------------------

def test_divergence_stops_records_and_reports(runs, tmp_path):
    out = tmp_path / "out"
    path = place(runs["a"], out)                            # an earlier completed run, replaced by --overwrite
    rc, stdout, stderr = run_forked("methods/erm.py", *SMOKE_ARGS, "--lr", "1e8", "--warmup-epochs", "0",
                                    "--epochs", "3", "--lr-decay-epochs", "--out", out, "--overwrite")  # (no note)
    assert rc != 0
    line = one_error_line(stderr, stdout)
    assert "diverged" in line and "epoch 1" in line and path in line
    assert "epoch   1/3" not in stdout                     # stopped at the end of the first epoch
    r = json.load(open(path))
    assert r["status"] == "diverged" and r["diverged_epoch"] == 0 and r["epochs_completed"] == 0
    assert r["final"] is None and r["args"]["lr"] == 1e8    # the earlier completed result was replaced
    assert glob.glob(path + ".tmp*") == []
    rc, stdout, stderr = run_forked("common.py", "report", out)
    assert rc == 0, stderr
    row, = [l for l in open(out / "RESULTS.md").read().splitlines() if l.startswith("| erm |")]
    top1 = row.split("|")[2].strip()
    assert top1 == "— seed 0: diverged in epoch 1", row
    assert row.split("|")[9].strip() == f"cpu (torch {torch.__version__}; eager fp32)", row  # where it diverged
    assert row.split("|")[8].strip() == "—", row  # no completed run, no wall time per run


# ------------------------------------------------------------------------------------------------
# 5. The report refuses a result filed under the wrong path
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, method, seed", [(SETTING, "focal", 0), (SETTING, "erm", 3),
                                                   ("synthetic-exp-r100", "erm", 0)],
                         ids=["other-method", "other-seed", "other-setting"])
def test_report_refuses_a_misfiled_result(runs, tmp_path, setting, method, seed):
    place(runs["a"], tmp_path)                              # the correct copy is fine
    wrong = place(runs["a"], tmp_path, seed=seed, method=method, setting=setting)
    rc, stdout, stderr = run_forked("common.py", "report", tmp_path)
    assert rc != 0
    line = one_error_line(stderr, stdout)
    assert wrong in line and "refusing" in line and f"{SETTING}/erm/seed0.json" in line
    assert not os.path.exists(tmp_path / "RESULTS.md")


def test_report_refuses_a_file_that_is_not_a_result(tmp_path):
    bad = result_file(tmp_path)
    os.makedirs(os.path.dirname(bad))
    open(bad, "w").write('{"status": "completed", "fin')     # half a JSON, e.g. copied over a network
    rc, stdout, stderr = run_forked("common.py", "report", tmp_path)
    assert rc != 0 and bad in one_error_line(stderr, stdout)
    open(bad, "w").write('{"status": "completed", "method": "erm"}')  # a JSON, but no run's (no args)
    rc, stdout, stderr = run_forked("common.py", "report", tmp_path)
    assert rc != 0 and "is not a results file" in one_error_line(stderr, stdout)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_dirty_means_the_code_not_the_rewritten_pages(tmp_path, monkeypatch):
    """A report or benchmark rewrites README's tables and results/ between the runs of one GPU session: the runs
    after it must not be recorded as made by uncommitted code. A changed method file must."""
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True)
    (tmp_path / "methods").mkdir(), (tmp_path / "results").mkdir()
    for name in ("README.md", "results/SPEED.md", "methods/erm.py"):
        (tmp_path / name).write_text("x\n")
    git("init", "-q"), git("add", "-A"), git("commit", "-qm", "t")
    monkeypatch.setattr(common, "ROOT", str(tmp_path))
    commit, dirty = common.git_state()
    assert len(commit) == 40 and dirty is False
    (tmp_path / "README.md").write_text("a new speed table\n"), (tmp_path / "results/SPEED.md").write_text("y\n")
    assert common.git_state() == (commit, False)
    (tmp_path / "methods/erm.py").write_text("changed\n")
    assert common.git_state() == (commit, True)


def test_run_all_says_when_no_gpu_is_there_to_train_on(tmp_path, monkeypatch, capsys):
    """run_all.sh's plan notes (stderr, once) that the table would train on the CPU where --device auto found no GPU
    on real data: 200-epoch runs take hours there. Not where --device was given, nor for the synthetic set."""
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    data = make_folder(tmp_path / "data")
    flags = ["--dataset", "imagefolder", "--data-dir", data]
    jobs = ["erm.py|exp|2|0", "focal.py|exp|2|0"]
    common.plan(jobs, flags, str(tmp_path / "out"))
    assert capsys.readouterr().err.count("note: no CUDA GPU here, so the runs train on the CPU") == 1
    for more, extra in (([], ["--device", "cpu"]), (["--device", "cpu"], []), (["--dataset", "synthetic"], [])):
        common.plan(jobs, flags + more, str(tmp_path / "out"), extra=extra)
        assert "no CUDA GPU" not in capsys.readouterr().err, (more, extra)
