"""FSDP's sharded checkpoint needs one out_dir that every node sees: checked before training (2 gloo
processes standing in for two nodes, each with its own directory where a node-local disk would be)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist

from gptlab.errors import ConfigError
from tests.spawn import spawn

WORLD = 2


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from gptlab.parallel import SHARED_CHECK, DistInfo, check_shared_out_dir

    info = DistInfo(rank=rank, world_size=WORLD, mode="fsdp", backend="gloo")
    verdicts = {}
    for case, out_dir in (("shared", Path(root, "shared")), ("node-local", Path(root, f"local{rank}"))):
        try:
            check_shared_out_dir(out_dir, info)
            verdicts[case] = "ok"
        except ConfigError as e:
            verdicts[case] = str(e)
        dist.barrier()  # rank 0 removes the marker after the check's last barrier
        verdicts[f"{case} marker left"] = (out_dir / SHARED_CHECK).exists()
    Path(root, f"rank{rank}.json").write_text(json.dumps(verdicts))
    dist.destroy_process_group()


def test_every_rank_refuses_an_out_dir_its_node_does_not_share(tmp_path: Path) -> None:
    spawn(_worker, str(tmp_path), nprocs=WORLD)
    for rank in range(WORLD):
        verdicts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert verdicts["shared"] == "ok"
        assert "not every node sees the directory rank 0 sees" in verdicts["node-local"]  # all ranks, together
        assert not verdicts["shared marker left"] and not verdicts["node-local marker left"]
