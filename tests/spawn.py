"""Spawning 2-process gloo groups for tests, robust to the free-port race."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker: Callable[..., None], *args: Any, nprocs: int = 2) -> None:
    """``mp.spawn(worker, (port, *args))``, once more on a fresh port if it fails: a port found free may be
    taken before the group binds it (a real failure fails again and raises with its traceback)."""
    try:
        mp.spawn(worker, args=(free_port(), *args), nprocs=nprocs, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        mp.spawn(worker, args=(free_port(), *args), nprocs=nprocs, join=True)
