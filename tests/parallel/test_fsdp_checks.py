"""FSDP2's preconditions that PyTorch does not check itself."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gptlab.errors import ConfigError
from gptlab.parallel import DistInfo, check_reduce_scatter_averages


@pytest.mark.parametrize(("world_size", "backend"), [(2, "gloo"), (4, "gloo")])
def test_a_reduce_scatter_that_sums_for_avg_is_refused(
    world_size: int, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gloo on PyTorch 2.7 accepts ReduceOp.AVG in reduce_scatter_tensor and sums (pytorch#162338): FSDP on
    the CPU trained with gradients world_size times too large, silently (the suite at the minimum versions
    caught it through a doubled gradient norm)."""
    calls: list[object] = []

    def summing(out: torch.Tensor, inp: torch.Tensor, op: object = None) -> None:
        calls.append(op)
        out.fill_(float(world_size))  # every rank's 1.0, summed

    # the collective FSDP2 calls (reduce_scatter_tensor is deprecated where reduce_scatter_single exists)
    name = "reduce_scatter_single" if hasattr(dist, "reduce_scatter_single") else "reduce_scatter_tensor"
    monkeypatch.setattr(dist, name, summing)
    info = DistInfo(world_size=world_size, backend=backend, mode="fsdp")
    with pytest.raises(ConfigError, match=rf"gradients {world_size} times too large .*PyTorch 2.11 or newer"):
        check_reduce_scatter_averages(info)
    assert calls == [dist.ReduceOp.AVG]

    monkeypatch.setattr(dist, name, lambda out, inp, op=None: out.fill_(1.0))
    check_reduce_scatter_averages(info)  # an average: nothing to say
    check_reduce_scatter_averages(DistInfo(world_size=world_size, backend="nccl", mode="fsdp"))  # not asked


def test_only_rank_0_builds_the_weights_of_a_sharded_model() -> None:
    """FSDP over several ranks: rank 0 builds the weights and the others build on the meta device and receive their
    shards (every rank building them cost world_size full copies of host memory, with the same numbers, which
    tests/parallel/test_torchrun.py's equality cannot see). Not alone, not under DDP, not with CPU offload
    (fully_shard materialises offloaded shards itself)."""
    from gptlab.config.train import TrainConfig
    from gptlab.parallel import init_on_rank0

    plain, offload = TrainConfig(), TrainConfig(use_fsdp=True, fsdp_cpu_offload=True)
    assert init_on_rank0(plain, DistInfo(world_size=2, mode="fsdp"))
    assert not init_on_rank0(plain, DistInfo(world_size=1, mode="fsdp"))
    assert not init_on_rank0(plain, DistInfo(world_size=2, mode="ddp"))
    assert not init_on_rank0(offload, DistInfo(world_size=2, mode="fsdp"))
