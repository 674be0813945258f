"""Every method's training step can be captured as a CUDA graph (--fast), checked on CPU.

A capture fails on any operation that makes the host wait for the GPU or whose output shape depends on the data
(.item(), .tolist(), bool(tensor), nonzero, boolean-mask indexing, unique, bincount, ...). Each row of run_all.sh
runs one short epoch on the synthetic set (2 steps) with its step (what `run.fast_step` receives) executed under a dispatch
mode that refuses those operations. It also refuses a tensor made from host data inside the step: on CUDA,
torch.as_tensor(0.5, device=...) is a copy from the host, which a capture cannot hold, while on CPU it costs
nothing, so only this check finds it on a machine without a GPU. F.one_hot with an explicit number of classes is
allowed: its CPU kernel checks the labels with .item(), its CUDA kernel does not (it relies on a device-side
assert; ATen Onehot.cpp)."""
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import common
from conftest import ROOT

SYNCING = {  # aten operator -> why a CUDA graph cannot hold it
    "_local_scalar_dense": ".item() / .tolist() / bool() / float() of a tensor copies it to the host",
    "nonzero": "nonzero has a data-dependent output shape", "masked_select": "a data-dependent output shape",
    "unique": "a data-dependent output shape", "_unique": "a data-dependent output shape",
    "_unique2": "a data-dependent output shape", "unique_consecutive": "a data-dependent output shape",
    "unique_dim": "a data-dependent output shape", "bincount": "bincount reads the maximum label on the host",
    "repeat_interleave": "repeat_interleave reads the repeats on the host",
}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
HOST_COPIES = (torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu)
FROM_HOST = (torch.tensor, torch.as_tensor, torch.asarray)  # of a Python number or list: on CUDA a host-to-device copy


class HostSyncError(AssertionError):
    pass


class NoHostSync(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.exempt = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.exempt:
            if name in SYNCING:
                raise HostSyncError(f"the step calls aten.{name}: {SYNCING[name]}")
            if name in INDEXING and any(t is not None and t.dtype == torch.bool for t in args[1]):
                raise HostSyncError(f"the step indexes with a boolean mask (aten.{name}): a data-dependent shape")
        return func(*args, **(kwargs or {}))


class OneHotIsSyncFreeOnCuda(TorchFunctionMode):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_COPIES and not self.mode.exempt:  # on CPU these never reach the dispatcher
            raise HostSyncError(f"the step calls Tensor.{func.__name__}: a copy to the host")
        if func in FROM_HOST and not self.mode.exempt and args and not torch.is_tensor(args[0]):
            raise HostSyncError(f"the step calls torch.{func.__name__} on host data: on CUDA a copy from the host "
                                "(make the tensor once, before the loop, on the device)")
        num_classes = kwargs.get("num_classes", args[1] if len(args) > 1 else -1)
        if func is F.one_hot and num_classes > 0:
            self.mode.exempt += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.mode.exempt -= 1
        return func(*args, **kwargs)


def checked(fn):
    """fn, run under the checks; counts its calls."""
    def step(*inputs):
        step.calls += 1
        mode = NoHostSync()
        with OneHotIsSyncFreeOnCuda(mode), mode:
            return fn(*inputs)
    step.calls = 0
    return step


def test_the_check_catches_what_a_capture_refuses():
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    for bad in (lambda: x.sum().item(), lambda: x[y == 1], lambda: (y == 1).nonzero(), lambda: torch.bincount(y),
                lambda: float(x.max()), lambda: y.tolist(), lambda: x.cpu(), lambda: F.one_hot(y),
                lambda: torch.as_tensor(0.5, device=x.device), lambda: torch.tensor([1.0, 2.0]) * x[0, :2]):
        with pytest.raises(HostSyncError):
            checked(bad)()
    ok = checked(lambda: (F.one_hot(y, 3) * torch.as_tensor(x)).masked_fill(y[:, None] == 0, 0).sum() * 0.5)
    assert ok() is not None and ok.calls == 1


# every row of the table, and the options that only change how a step computes (the same numbers, other kernels)
@pytest.mark.parametrize("row", common.table_rows() + ["pcn_sgd.py --variant pcnsgd_o --class-grads batched"])
def test_every_step_is_capturable(row, tmp_path, monkeypatch):
    made = []
    original = common.Run.fast_step

    def fast_step(self, fn, model, optimizer):
        made.append(checked(fn))
        assert original(self, fn, model, optimizer) is fn  # CPU: the plain function
        return made[-1]

    monkeypatch.setattr(common.Run, "fast_step", fast_step)
    script = f"{ROOT}/methods/{row.split()[0]}"
    monkeypatch.setattr(sys, "argv", [script] + row.split()[1:] + [
        "--dataset", "synthetic", "--imbalance-ratio", "100", "--epochs", "1", "--batch-size", "128",  # (2 steps)
        "--eval-every", "1", "--device", "cpu", "--out", str(tmp_path)])
    runpy.run_path(script, run_name="__main__")
    assert len(made) == 1 and made[0].calls > 0
