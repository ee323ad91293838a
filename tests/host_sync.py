"""Counting host syncs in tests: device-to-host scalar reads and tensor copies out to host memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class CountScalarReads(TorchDispatchMode):
    """Counts device-to-host scalar reads (.item(), float(t), bool(t), ...): each is one
    ``aten._local_scalar_dense``, on the CPU as on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts, while active, scalar reads ('scalar') and calls of Tensor.tolist / .cpu / .numpy."""
    calls = {"tolist": 0, "cpu": 0, "numpy": 0, "scalar": 0}
    with monkeypatch.context() as m:
        for name in ("tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(self, *a, _name=name, _orig=original, **k):  # type: ignore[no-untyped-def]
                calls[_name] += 1
                return _orig(self, *a, **k)

            m.setattr(torch.Tensor, name, counted)
        with CountScalarReads() as mode:
            yield calls
        calls["scalar"] = mode.reads
