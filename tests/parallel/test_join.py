"""Forming the process group under torchrun: the failures a rank meets while joining are one line."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gptlab.config.train import TrainConfig
from gptlab.errors import ConfigError
from gptlab.parallel import init_distributed


@pytest.mark.parametrize(
    "failure",
    [
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:144] Gloo connectFullMesh failed with Connection refused",
        "[../third_party/gloo/gloo/transport/tcp/pair.h:311] Connect timeout [127.0.0.1]:29500",
    ],
)
def test_a_gloo_connect_failure_while_joining_is_one_line(failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer restarted while the mesh formed (torchrun --max-restarts): gloo raises a plain RuntimeError, which
    printed a traceback instead of the one-line join failure; other errors keep theirs."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}.items():
        monkeypatch.setenv(key, value)

    def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError(failure)

    monkeypatch.setattr(dist, "init_process_group", refused)
    cfg = TrainConfig(device="cpu", parallel="ddp", dist_timeout=5)
    joining = r"^rank 1 could not form the process group of 2 ranks .*(Gloo|Connect timeout)"
    with pytest.raises(ConfigError, match=joining):
        init_distributed(cfg, torch.device("cpu"))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        init_distributed(cfg, torch.device("cpu"))
