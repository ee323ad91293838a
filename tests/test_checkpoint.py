"""gptlab.checkpoint's loading: memory-mapped, so ranks resuming from one ckpt.pt share the page cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import FORMAT, load_checkpoint


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_load_maps_the_file_instead_of_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.randn(20_000_000)}}, path)  # 80 MB
    before = _rss_mb()
    ckpt = load_checkpoint(path)
    assert _rss_mb() - before < 20  # nothing read yet
    assert ckpt["model"]["w"].sum().isfinite()  # and the values are there when used
