"""--checkpoint-every / --resume: a run killed part-way and started again with --resume computes what the
uninterrupted run computes (CPU, --deterministic): the same per-epoch losses and accuracies, the same final
metrics, the same `extra` (PCN's per-class losses). The row is chosen for the state a checkpoint must hold
beyond the model and the optimizer: the batch-order generator and PCN's per-class index streams."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ONE_THREAD, ROOT, read_results, without_times

import common

ARGS = ["--dataset", "synthetic", "--imbalance-ratio", "100", "--batch-size", "128", "--epochs", "2",
        "--eval-every", "1", "--device", "cpu", "--deterministic"]
# PCNSGD+O: every kind of state a checkpoint holds (model, momentum, the batch-order and augmentation generator, the
# per-class index streams, per-epoch extras); the other methods' loops hold a subset of it
ROWS = [["pcn_sgd.py", "--variant", "pcnsgd_o"]]


def launch(row, out, *extra):
    return subprocess.Popen([sys.executable, f"methods/{row[0]}", *row[1:], *ARGS, "--out", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ONE_THREAD})  # two at once: one thread each


def kill_after_first_epoch(proc):
    """SIGKILL the run once it printed its first epoch (whose checkpoint is written before that line)."""
    for line in proc.stdout:
        if " epoch   1/2  lr" in line:  # the epoch's end (a progress line within it says "step")
            proc.kill()
            break
    return proc.wait()


@pytest.mark.parametrize("row", ROWS, ids=[" ".join(r) for r in ROWS])
def test_a_killed_run_resumed_computes_the_uninterrupted_run(row, tmp_path, gpu=()):
    whole = launch(row, tmp_path / "whole", *gpu)  # (beside the run that is killed: deterministic, so the same)
    assert kill_after_first_epoch(launch(row, tmp_path / "cut", "--checkpoint-every", "1", *gpu)) != 0
    assert whole.wait() == 0, whole.stdout.read()
    (ckpt,) = (tmp_path / "cut" / "checkpoints").rglob("seed0.pt")
    assert not list((tmp_path / "cut").glob("*/*/seed0.json"))  # killed before its end
    # on the CPU the PCNSGD rows also go on, from a copy of the checkpoint, with the other way to their per-class
    # gradients: a GPU session may switch them between two invocations (run_all.sh's PCN_CLASS_GRADS). The same g_l
    # up to rounding, not bit for bit on every CPU (an AMD EPYC's differed in the last bits): that run only close
    switch = ("--class-grads", "batched") if row[0] == "pcn_sgd.py" and not gpu else ()
    if switch:
        shutil.copytree(tmp_path / "cut", tmp_path / "switched")
        switched = launch(row, tmp_path / "switched", "--checkpoint-every", "1", "--resume", *switch)
    again = launch(row, tmp_path / "cut", "--checkpoint-every", "1", "--resume", *gpu)
    text = again.stdout.read()
    assert again.wait() == 0 and "resumed from" in text, text
    (a,), (b,) = read_results(tmp_path / "whole").values(), read_results(tmp_path / "cut").values()
    assert a["resumed_at_epochs"] == [] and b["resumed_at_epochs"] == [1]  # (no checkpoint after the last epoch)
    assert a["switched_at_resume"] == b["switched_at_resume"] == []
    assert without_times(a["history"]) == without_times(b["history"])
    # the time before the kill counts: elapsed_s goes on from the checkpoint's, it does not start again at 0
    assert [e["elapsed_s"] for e in b["history"]] == sorted(e["elapsed_s"] for e in b["history"])
    assert a["final"] == b["final"] and a["extra"] == b["extra"]
    if switch:  # ... and the JSON says where it went on with the other way to the per-class gradients
        text = switched.stdout.read()
        assert switched.wait() == 0 and "resumed from" in text, text
        (s,) = read_results(tmp_path / "switched").values()
        assert s["switched_at_resume"] == [{"epoch": b["resumed_at_epochs"][0], "class_grads": ["loop", "batched"]}]
        def numbers(r):  # every float of the history and the final metrics, in one list
            entries = without_times(r["history"]) + [r["final"]]
            return [x for e in entries for _, v in sorted(e.items()) for x in (v if isinstance(v, list) else [v])
                    if isinstance(x, float)]
        assert s["resumed_at_epochs"] == b["resumed_at_epochs"]
        assert numbers(s) == pytest.approx(numbers(b), rel=1e-4)
    assert not ckpt.exists()  # a finished run leaves no checkpoint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("row", ROWS, ids=[" ".join(r) for r in ROWS])
def test_a_killed_graphed_run_resumed_computes_the_uninterrupted_run_on_gpu(row, tmp_path):
    # the CUDA generator's state, the optimizer state back on the GPU, a graph captured again after the resume
    test_a_killed_run_resumed_computes_the_uninterrupted_run(row, tmp_path, gpu=("--device", "cuda", "--fp32",
                                                                                 "--fast"))


def test_a_checkpoint_of_other_arguments_is_not_resumed(tmp_path):
    kill_after_first_epoch(launch(["erm.py"], tmp_path, "--checkpoint-every", "1"))
    other = launch(["erm.py"], tmp_path, "--checkpoint-every", "1", "--resume", "--lr", "0.05")
    text = other.stdout.read()
    assert other.wait() == 0 and ("was made with --lr 0.1 (this run: 0.05); the next checkpoint replaces it: starting "
                                  "from epoch 1") in text, text
    (r,) = read_results(tmp_path).values()
    assert r["resumed_at_epochs"] == [] and len(r["history"]) == 2


def test_a_checkpoint_of_another_subset_or_other_code_is_not_resumed(tmp_path):
    """The key holds every argument but where and how a run is written or sped up (the data seed too: another
    subset), and the code of the method file and of common.py; a checkpoint saved under any other key is refused."""
    script = os.path.join(ROOT, "methods", "erm.py")
    args = common.finish_args(common.make_parser("").parse_args(ARGS + ["--out", str(tmp_path), "--resume"]), "erm")
    key = common.checkpoint_key(args, script)
    assert common.RESUME_FREE_ARGS == {"resume", "overwrite", "skip_existing", "checkpoint_every", "cache_dir", "out",
                                       "download", "fast", "profile_steps",  # a new one is a decision: add it here
                                       "class_grads"}  # (pcn_sgd.py: the same g_l; test above)
    assert set(key["args"]) == set(vars(args)) - common.RESUME_FREE_ARGS and key["args"]["data_seed"] == 0
    assert key["code"] == [common.code_sha256(script), common.common_code_sha256()]
    path = common.checkpoint_path(args)
    os.makedirs(os.path.dirname(path))
    torch.save({"key": key, "epoch": 1}, path)
    assert common.load_checkpoint(args, key)[0]["epoch"] == 1
    for saved, what in (({**key, "args": {**key["args"], "data_seed": 1}}, "--data-seed 1 (this run: 0)"),  # subset
                        ({**key, "code": [key["code"][0], "old"]}, "other code"),  # an older common.py
                        ({**key, "code": ["old", key["code"][1]]}, "other code")):  # an older method file
        torch.save({"key": saved, "epoch": 1}, path)
        ck, why = common.load_checkpoint(args, key)
        assert ck is None and f"was made with {what}" in why, why
    os.remove(path)
    assert common.load_checkpoint(args, key) == (None, None)  # none yet: restore() says so (test_common)


def test_a_damaged_checkpoint_is_not_resumed(tmp_path):
    ckpt = tmp_path / "checkpoints" / "synthetic-exp-r100" / "erm" / "seed0.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    run = launch(["erm.py"], tmp_path, "--checkpoint-every", "1", "--resume")
    text = run.stdout.read()
    assert run.wait() == 0 and "is not a readable checkpoint (" in text and "starting from epoch 1" in text, text
    assert not ckpt.exists()  # the finished run removed it


@pytest.mark.parametrize("saved_format, loaded_format", [(torch.channels_last, torch.contiguous_format),
                                                         (torch.contiguous_format, torch.channels_last)])
def test_a_checkpoints_momentum_takes_its_parameters_memory_format(saved_format, loaded_format):
    """Run.restore's match_layouts: SGD's momentum buffers saved from parameters of one memory format (on CUDA
    pcn_sgd.py's loop trains a channels_last ResNet-32, its batched backward a contiguous one) and loaded for the
    other keep their values and take their parameter's strides (torch.optim's multi-tensor fast path)."""
    def trained(memory_format):
        conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=memory_format)
        optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
        conv(torch.randn(2, 3, 5, 5)).sum().backward()
        optimizer.step()
        return conv, optimizer
    _, saved = trained(saved_format)
    conv, loaded = trained(loaded_format)
    loaded.load_state_dict(saved.state_dict())
    weight = loaded.state[conv.weight]["momentum_buffer"]
    assert weight.stride() != conv.weight.stride()  # what load_state_dict leaves
    common.match_layouts(loaded)
    for p in conv.parameters():
        assert loaded.state[p]["momentum_buffer"].stride() == p.stride()
    assert torch.equal(loaded.state[conv.weight]["momentum_buffer"], weight)
    assert torch.equal(loaded.state[conv.weight]["momentum_buffer"], saved.state[next(iter(saved.state))]["momentum_buffer"])


def test_restore_puts_each_momentum_buffer_in_its_parameters_memory_format(tmp_path):
    """Run.restore calls match_layouts: a checkpoint saved from a contiguous model (pcn_sgd.py's batched backward)
    goes on in a channels_last one (its loop, on CUDA) with every momentum buffer in its parameter's strides."""
    args = common.finish_args(common.make_parser("").parse_args(
        ARGS + ["--out", str(tmp_path), "--resume", "--checkpoint-every", "1"]), "erm")

    def model_and_optimizer(memory_format):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        model = model.to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        optimizer.step()
        return model, optimizer
    saved = common.start(args)
    assert saved.restore(*model_and_optimizer(torch.contiguous_format)) == 0
    saved.checkpoint(0)
    model, optimizer = model_and_optimizer(torch.channels_last)
    assert common.start(args).restore(model, optimizer) == 1
    conv = model[0].weight
    assert conv.stride() != torch.empty_like(conv, memory_format=torch.contiguous_format).stride()
    assert all(optimizer.state[p]["momentum_buffer"].stride() == p.stride() for p in model.parameters())
