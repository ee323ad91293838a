"""float16 under FSDP2: the sharded loss scaler. Each rank sees only its gradient shards, so an inf on
one rank must make every rank skip the step and lower the scale (2 gloo processes)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.spawn import spawn

WORLD = 2


def _worker(rank: int, port: int, out_dir: str, fused: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from gptlab.parallel import DistInfo, build_grad_scaler

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    policy = MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
    for layer in model:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)  # fused: what training uses
    scaler = build_grad_scaler(DistInfo(rank=rank, world_size=WORLD, mode="fsdp"), enabled=True)
    x = torch.randn(4, 8)
    record = {}
    for step in ("clean", "inf on rank 1"):
        before = [p.full_tensor().clone() for p in model.parameters()]
        scale = scaler.get_scale()
        scaler.scale(model(x).float().pow(2).mean()).backward()
        if step != "clean" and rank == 1:
            next(model.parameters()).grad.to_local().view(-1)[0] = float("inf")
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        changed = any(not torch.equal(b, p.full_tensor()) for b, p in zip(before, model.parameters()))
        record[step] = {"changed": changed, "scale_before": scale, "scale_after": scaler.get_scale()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    del model, opt, scaler  # freed before the process group they hold (tests/telemetry/test_distributed.py)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("fused", [True, False])
def test_an_inf_on_one_rank_skips_the_step_on_every_rank(fused: bool, tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    spawn(_worker, str(tmp_path), fused, nprocs=WORLD)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r in ranks:
        assert r["clean"]["changed"] and r["clean"]["scale_after"] == r["clean"]["scale_before"]
        assert not r["inf on rank 1"]["changed"]  # rank 0's shards were finite, yet it skipped too
        assert r["inf on rank 1"]["scale_after"] == r["inf on rank 1"]["scale_before"] / 2
