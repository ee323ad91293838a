"""Two gloo processes on the CPU: FSDP2 and DDP + ZeRO-1 against a single-process reference.

Checks that gradient statistics of sharded (DTensor) gradients are reduced across ranks, not
read locally, and that the planner's per-rank parameter, gradient and optimizer bytes are those
of the tensors FSDP2 and ZeroRedundancyOptimizer really hold. Odd first dimensions (vocabulary
71, positions 33, FFN width 75) exercise FSDP2's padding of uneven shards.
"""

from __future__ import annotations

import copy
import gc
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.telemetry.gradients import STAT_KEYS, get_gradient_stats
from gptlab.telemetry.planner import plan_memory
from tests.spawn import spawn

WORLD = 2
ARCH = dict(n_layer=2, n_embd=36, n_head=4, block_size=33, vocab_size=71, d_ff=75)


def _bytes(tensors: list[torch.Tensor], unique_storage: bool = False) -> int:
    """Bytes of the local tensors; with ``unique_storage``, of their distinct storages (views of one
    reduce-scatter buffer, padded shards) as the allocator holds them."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    if unique_storage:
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in local}.values())
    return sum(t.numel() * t.element_size() for t in local)


def _state_bytes(state: dict) -> int:
    return _bytes([v for s in state.values() for v in s.values() if isinstance(v, torch.Tensor)])


def _unsharded_grad_bytes(model: torch.nn.Module) -> int:
    """Bytes of the whole (unsharded) gradients FSDP2 holds between micro-steps without a reduce-scatter:
    each FSDPParam's accumulated gradient, else its unsharded parameter's ``.grad`` (PyTorch internals)."""
    total = 0
    for module in model.modules():
        group = module._get_fsdp_state()._fsdp_param_group if hasattr(module, "_get_fsdp_state") else None
        for fsdp_param in group.fsdp_params if group is not None else []:
            grad = getattr(fsdp_param, "unsharded_accumulated_grad", None)
            if grad is None:
                grad = fsdp_param._unsharded_param.grad
            total += 0 if grad is None else grad.numel() * grad.element_size()
    return total


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    cfg = get_debug_config("gpt2", **ARCH)
    reference = ConfigurableGPT(cfg)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, cfg.vocab_size, (2 * WORLD, cfg.block_size), generator=gen) for _ in range(2))
    mine = slice(2 * rank, 2 * rank + 2)  # each rank's half of the global batch

    single = copy.deepcopy(reference)
    single(x, y)[1].backward()  # the mean loss over the global batch: what DDP and FSDP average to

    fsdp = copy.deepcopy(reference)
    for block in fsdp.blocks:
        fully_shard(block)
    fully_shard(fsdp)
    fsdp(x[mine], y[mine])[1].backward()
    fsdp_stats = get_gradient_stats(fsdp)
    fsdp_opt = torch.optim.AdamW(fsdp.parameters(), lr=1e-3)
    fsdp_opt.step()

    # a micro-step before the last of an accumulation: FSDP2 skips the reduce-scatter and keeps whole gradients
    accumulating = copy.deepcopy(reference)
    for block in accumulating.blocks:
        fully_shard(block)
    fully_shard(accumulating)
    accumulating.set_requires_gradient_sync(False)
    accumulating(x[mine], y[mine])[1].backward()
    assert all(p.grad is None for p in accumulating.parameters())  # no sharded gradient yet
    unsharded_grads = _unsharded_grad_bytes(accumulating)

    ddp_model = copy.deepcopy(reference)
    ddp = DistributedDataParallel(ddp_model)
    groups = ddp_model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    zero = ZeroRedundancyOptimizer(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
        optimizer_class=torch.optim.AdamW,
        lr=1e-3,
    )
    ddp(x[mine], y[mine])[1].backward()
    ddp_stats = get_gradient_stats(ddp_model)
    zero.step()

    result = {
        "reference": get_gradient_stats(single),
        "fsdp": fsdp_stats,
        "ddp": ddp_stats,
        "fsdp_params": _bytes(list(fsdp.parameters()), unique_storage=True),
        "fsdp_grads": _bytes([p.grad for p in fsdp.parameters()], unique_storage=True),
        "fsdp_optimizer": _state_bytes(fsdp_opt.state),
        "zero1_optimizer": _state_bytes(zero.optim.state),
        "fsdp_unsharded_grads": unsharded_grads,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    # the models' hooks hold the process group: freed before it, as gptlab's own runs free theirs (left to the exit,
    # gloo's threads now and then aborted a finished rank: "terminate called without an active exception")
    del single, fsdp, fsdp_opt, accumulating, ddp, ddp_model, zero, reference
    gc.collect()
    dist.barrier()  # no rank may tear down gloo while a peer's last collective is in flight
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist")
    spawn(_worker, str(out), nprocs=WORLD)
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_gradient_stats_match_single_process(ranks: list[dict], mode: str) -> None:
    for result in ranks:  # every rank reports the global statistics
        for key in STAT_KEYS:
            assert result[mode][key] == pytest.approx(result["reference"][key], rel=1e-4, abs=1e-9), (mode, key)


def test_plan_matches_real_sharded_tensors(ranks: list[dict]) -> None:
    cfg = get_debug_config("gpt2", **ARCH)
    fsdp = plan_memory(cfg, batch_size=2, parallel="fsdp", world_size=WORLD).mode
    assert {r["fsdp_params"] for r in ranks} == {fsdp.parameters}  # every rank's storage is padded alike
    assert {r["fsdp_grads"] for r in ranks} == {fsdp.gradients}
    assert max(r["fsdp_optimizer"] for r in ranks) == fsdp.optimizer == ranks[0]["fsdp_optimizer"]
    zero1 = plan_memory(cfg, batch_size=2, parallel="zero1", world_size=WORLD).mode
    assert max(r["zero1_optimizer"] for r in ranks) == zero1.optimizer
    none = plan_memory(cfg, batch_size=2).mode
    assert sum(r["zero1_optimizer"] for r in ranks) == none.optimizer  # a partition: nothing lost or doubled
    # with accumulation, FSDP2 holds every parameter's whole fp32 gradient until the last micro-step
    accumulating = plan_memory(cfg, batch_size=2, parallel="fsdp", world_size=WORLD, grad_accum_steps=2).mode
    assert {r["fsdp_unsharded_grads"] for r in ranks} == {none.gradients}
    assert accumulating.peak - fsdp.peak == none.gradients
