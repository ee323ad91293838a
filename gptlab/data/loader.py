"""Training batches from a prepared dataset: nanoGPT's get_batch, made reproducible per step.

Each batch is drawn from a generator seeded by (seed, split, step, micro_step), so a run resumed at
step N draws exactly the batches an uninterrupted run would. Ranks share one stream and differ by
``micro_step``: the trainer's rank r takes global micro-batch ``m * world_size + r``, so the global
batch is the same at any world size (and as in a single process). Evaluation batches come from their
own stream (``EVAL_STREAM``, seeded by ``EVAL_SEED`` whatever the run's seed): every run on a dataset is
evaluated on the same batches, so a seed sweep's val losses differ by training alone.
Because a batch is a pure function of its key, ``prefetch`` can read the next one early (nanoGPT's
"async prefetch next batch while the model is doing the forward pass") without changing any batch.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.data.storage import SPLITS, read_meta, split_path
from gptlab.errors import ConfigError, DataError, unknown_choice

EVAL_SEED, EVAL_STREAM = 0, 1  # the evaluation batches' key: the same for every run, apart from any training batch


class BatchLoader:
    """Random (B, T) windows of one split, x and y = x shifted by one token, as int64 tensors."""

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        device: str | torch.device = "cpu",
        seed: int = 1337,
        stream: int = 0,
        short_split_advice: str = "lower block_size or prepare more data",
    ) -> None:
        if split not in SPLITS:
            raise unknown_choice("split", split, SPLITS)
        for key, value in (("batch_size", batch_size), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r} must be a positive integer")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a non-negative integer")
        self.dataset_dir = Path(dataset_dir)
        self.meta: dict[str, Any] = read_meta(self.dataset_dir)
        self.split, self.batch_size, self.block_size = split, batch_size, block_size
        self.seed, self.stream = seed, stream  # stream: 0 training batches, EVAL_STREAM the evaluation's
        self.device = torch.device(device)
        self.vocab_size: int = int(self.meta["vocab_size"])
        self._path = split_path(self.dataset_dir, split)
        self._fd: int | None = None  # opened on first use; pread shares no file offset, so forks are safe
        self._dtype = np.dtype(self.meta["dtype"])
        self.num_tokens: int = int(self.meta["tokens"][split])
        if block_size + 1 > self.num_tokens:
            raise DataError(
                f"block_size={block_size} needs {block_size + 1} tokens per sample (inputs and targets), but the "
                f"{split} split of {self.dataset_dir} holds {self.num_tokens}: {short_split_advice}"
            )
        self._split_key = zlib.crc32(split.encode())  # stable across processes, unlike hash()
        self._pin = self.device.type == "cuda"
        self._pending: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None  # prefetched

    def _rng(self, step: int, micro_step: int) -> np.random.Generator:
        if step < 0 or micro_step < 0:
            raise ConfigError(f"step={step} and micro_step={micro_step} must be non-negative")
        # the stream (0 for training) takes the slot of a rank in earlier versions' key: their runs resume on the
        # same batches, and no training batch of any seed is an evaluation batch
        return np.random.default_rng([self.seed, self.stream, self._split_key, step, micro_step])

    def _windows(self, starts: np.ndarray) -> np.ndarray:
        """The (B, T + 1) token windows at ``starts``, read without keeping the file mapped."""
        n = self.block_size + 1
        if hasattr(os, "pread"):
            # One pread per window: ~5 us each, no mapping, so resident memory stays flat over a long
            # run (the reason nanoGPT re-creates its np.memmap every batch, which costs ~130 us).
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
            size = n * self._dtype.itemsize
            buf = b"".join([os.pread(self._fd, size, int(s) * self._dtype.itemsize) for s in starts])
            if len(buf) != size * len(starts):
                raise DataError(f"{self._path} is shorter than its meta.json says: prepare the dataset again")
            return np.frombuffer(buf, dtype=self._dtype).reshape(len(starts), n)
        data = np.memmap(self._path, dtype=self._dtype, mode="r")  # fresh per call, as nanoGPT does
        return data[starts[:, None] + np.arange(n)]

    def get_batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of (step, micro_step): always the same for the same arguments and seed
        (the prefetched one when ``prefetch`` asked for this key, else read now)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == (step, micro_step):
            return pending[1]
        return self._load(step, micro_step)

    def prefetch(self, step: int, micro_step: int = 0) -> None:
        """Read the batch of (step, micro_step) now and start its copy to the device, so that the
        ``get_batch`` that asks for it returns at once. Call it while the device is busy (after a
        forward is launched): the host work then overlaps device work, also after a host sync."""
        self._pending = ((step, micro_step), self._load(step, micro_step))

    def _load(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Window starts in [0, N - T), uniform, as nanoGPT's torch.randint(len(data) - block_size, ...).
        starts = self._rng(step, micro_step).integers(0, self.num_tokens - self.block_size, size=self.batch_size)
        windows_np = self._windows(starts)
        top = int(windows_np.max())  # ~5 us on the host: an id past the vocabulary would fail on the device
        if top >= self.vocab_size:
            raise DataError(
                f"{self._path} holds token id {top}, past the dataset's vocabulary of {self.vocab_size} "
                "(its files do not match its meta): prepare the dataset again"
            )
        windows = torch.from_numpy(windows_np.astype(np.int64))  # (B, T + 1)
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T) each; y is x shifted by one
        if self._pin:  # page-locked, so the copies are asynchronous and overlap the device's work
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def close(self) -> None:
        """Close the open file (also done when the loader is garbage collected)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:  # a file descriptor does not travel to another process
        return {**self.__dict__, "_fd": None, "_pending": None}

    def __repr__(self) -> str:
        return (
            f"BatchLoader({str(self.dataset_dir)!r}, split={self.split!r}, batch_size={self.batch_size}, "
            f"block_size={self.block_size}, tokens={self.num_tokens})"
        )
