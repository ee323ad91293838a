"""Data-test fixtures: no test may reach the network, and tiny corpora are made on the fly."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any internet connection attempt fails loudly (CI has no network; a test must not need one)."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


SHAKESPEARE_LIKE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A small Shakespeare-like text file (a few KB)."""
    path = tmp_path / "input.txt"
    path.write_text(SHAKESPEARE_LIKE * 40, encoding="utf-8")
    return path
