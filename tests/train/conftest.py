"""Fixtures for training tests: the embedded dataset prepared once into a temporary data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gptlab.data.datasets import prepare_dataset


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare_dataset("stdlib_char", data_dir=root)
    return root


def tiny_args(data_dir: Path, out_dir: Path, **overrides: Any) -> list[str]:
    """--key=value arguments for a run that takes a few seconds on the CPU."""
    values: dict[str, Any] = dict(
        dataset="stdlib_char",
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        arch_preset="llama",
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=4,
        gradient_accumulation_steps=2,
        max_iters=24,
        lr_decay_iters=24,
        warmup_iters=4,
        learning_rate=3e-3,
        min_lr=3e-4,
        eval_interval=8,
        eval_iters=4,
        log_interval=1,
        gradient_log_interval=4,
        device="cpu",
        dtype="float32",
        compile=False,
        log_style="compact",
    )
    values.update(overrides)
    return [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in values.items()]
