"""``ConfigurableGPT.from_pretrained`` of a model wrapped by FSDP2 (2 gloo processes): every rank gets the whole,
plain model (its parameters were DTensor shards: loading them into a plain model failed)."""

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
from tests.spawn import spawn

WORLD = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.fsdp import fully_shard

    verdicts = {}
    for preset in ("gpt2", "llama"):  # tied and untied embeddings
        torch.manual_seed(0)
        reference = ConfigurableGPT(get_debug_config(preset, n_layer=2))
        sharded = copy.deepcopy(reference)
        for block in sharded.blocks:
            fully_shard(block)
        fully_shard(sharded)
        copied = ConfigurableGPT.from_pretrained(sharded)
        want = reference.state_dict()
        verdicts[preset] = {
            "plain": type(copied) is ConfigurableGPT,
            "equal": all(torch.equal(value, want[key]) for key, value in copied.state_dict().items()),
            "tied": copied.lm_head.weight is copied.wte.weight,
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(verdicts))
    del reference, sharded, copied  # freed before the process group they hold (tests/telemetry/test_distributed.py)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def test_from_pretrained_gathers_an_fsdp_models_shards(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    spawn(_worker, str(tmp_path), nprocs=WORLD)
    for rank in range(WORLD):
        verdicts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert verdicts["gpt2"] == {"plain": True, "equal": True, "tied": True}, (rank, verdicts)
        assert verdicts["llama"] == {"plain": True, "equal": True, "tied": False}, (rank, verdicts)
