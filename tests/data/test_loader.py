"""BatchLoader: nanoGPT's get_batch windows, reproducible per (seed, split, step, micro_step)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.data import loader as loader_module
from gptlab.data.loader import BatchLoader
from gptlab.data.storage import DatasetWriter
from gptlab.errors import ConfigError, DataError


def make_dataset(root: Path, train: np.ndarray, val: np.ndarray, vocab_size: int) -> Path:
    """A dataset whose tokens are chosen by the test (ids = positions make windows easy to check)."""
    with DatasetWriter(root, vocab_size) as writer:
        writer.write("train", train)
        writer.write("val", val)
        writer.commit({"name": "positions", "vocab_size": vocab_size, "dtype": writer.dtype.name,
                       "tokens": dict(writer.counts)})  # fmt: skip
    return root


@pytest.fixture
def positions(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "positions", np.arange(5000), np.arange(300), vocab_size=65536)


def test_windows_are_consecutive_tokens_and_y_is_x_shifted(positions: Path) -> None:
    loader = BatchLoader(positions, "train", batch_size=8, block_size=16, device="cpu", seed=0)
    x, y = loader.get_batch(0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # tokens are their positions: each row is one window of the file
    assert loader.vocab_size == 65536 and loader.num_tokens == 5000


def test_same_step_same_batch_resumed_or_not(positions: Path) -> None:
    a = BatchLoader(positions, "train", 4, 32, seed=7)
    b = BatchLoader(positions, "train", 4, 32, seed=7)  # a resumed run builds a new loader
    for step, micro in [(0, 0), (5, 1), (123456, 3)]:
        xa, ya = a.get_batch(step, micro)
        xb, yb = b.get_batch(step, micro)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.get_batch(3)[0], a.get_batch(3, 0)[0])


def test_different_step_micro_step_seed_split_draw_differently(positions: Path) -> None:
    base = BatchLoader(positions, "train", 8, 32, seed=7)
    x = base.get_batch(10, 0)[0]
    others = [
        base.get_batch(11, 0)[0],
        base.get_batch(10, 1)[0],
        BatchLoader(positions, "train", 8, 32, seed=8).get_batch(10, 0)[0],
    ]
    for other in others:
        assert not torch.equal(x, other)
    val = BatchLoader(positions, "val", 8, 32, seed=7).get_batch(10)[0]
    assert int(val.max()) < 300  # drawn from the val split's own tokens


def test_batches_are_those_earlier_versions_drew(positions: Path) -> None:
    """A run saved by an earlier version resumes on the batches it would have drawn: the window starts
    of (seed 7, step 10, micro-step 3), as drawn on 2026-12-02 (tokens are positions: x[:, 0] = starts)."""
    x = BatchLoader(positions, "train", 8, 32, seed=7).get_batch(10, 3)[0]
    assert x[:, 0].tolist() == [935, 605, 1921, 2644, 3249, 1133, 1460, 456]


def test_starts_cover_exactly_nanogpts_range(tmp_path: Path) -> None:
    # nanoGPT: ix = torch.randint(len(data) - block_size) -> starts 0 .. N - T - 1, all reachable.
    data = make_dataset(tmp_path / "d", np.arange(20), np.arange(20), vocab_size=100)
    loader = BatchLoader(data, "train", batch_size=16, block_size=8)
    starts = set()
    for step in range(200):
        starts.update(loader.get_batch(step)[0][:, 0].tolist())
    assert starts == set(range(20 - 8))


def test_uint32_tokens_read_back(tmp_path: Path) -> None:
    big = np.arange(100_000, 100_500)
    data = make_dataset(tmp_path / "big", big, big, vocab_size=200_000)
    x, y = BatchLoader(data, "train", 4, 16).get_batch(0)
    assert int(x.min()) >= 100_000 and torch.equal(y, x + 1)


def test_memmap_fallback_draws_the_same_batches(positions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = BatchLoader(positions, "train", 6, 24, seed=3).get_batch(9, 2)
    monkeypatch.delattr(loader_module.os, "pread")  # as on Windows
    got = BatchLoader(positions, "train", 6, 24, seed=3).get_batch(9, 2)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_prefetch_changes_no_batch(positions: Path) -> None:
    """A prefetched batch is the one get_batch would read; another key, or a second ask, reads anew."""
    plain = BatchLoader(positions, "train", 6, 24, seed=3)
    ahead = BatchLoader(positions, "train", 6, 24, seed=3)
    ahead.prefetch(5, 1)
    pending = ahead._pending
    got = ahead.get_batch(5, 1)
    assert pending is not None and got is pending[1]  # handed over, not read again
    assert all(torch.equal(a, b) for a, b in zip(got, plain.get_batch(5, 1)))
    ahead.prefetch(6, 0)
    assert torch.equal(ahead.get_batch(6, 1)[0], plain.get_batch(6, 1)[0])  # a miss reads its own key
    assert ahead._pending is None  # and drops the stale one
    assert torch.equal(ahead.get_batch(5, 1)[0], plain.get_batch(5, 1)[0])


def test_loader_pickles_without_its_file(positions: Path) -> None:
    loader = BatchLoader(positions, "train", 4, 8, seed=1)
    x = loader.get_batch(1)[0]
    clone = pickle.loads(pickle.dumps(loader))
    assert torch.equal(clone.get_batch(1)[0], x)
    loader.close()
    clone.close()


def test_errors_are_one_line(positions: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        BatchLoader(positions, "val", 4, block_size=300)
    assert str(err.value) == (
        f"block_size=300 needs 301 tokens per sample (inputs and targets), but the val split of {positions} "
        "holds 300: lower block_size or prepare more data"
    )
    BatchLoader(positions, "val", 4, block_size=299)  # exactly T + 1 tokens is enough
    with pytest.raises(ConfigError, match=r"split='test'.*'train', 'val'"):
        BatchLoader(positions, "test", 4, 8)
    with pytest.raises(ConfigError, match="batch_size=0"):
        BatchLoader(positions, "train", 0, 8)
    with pytest.raises(DataError, match="not a prepared dataset"):
        BatchLoader(tmp_path / "nothing", "train", 4, 8)
    with pytest.raises(ConfigError, match="step=-1"):
        BatchLoader(positions, "train", 4, 8).get_batch(-1)


def test_truncated_file_is_detected(positions: Path) -> None:
    with open(positions / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"shorter than its meta\.json says"):
        BatchLoader(positions, "train", 64, 64).get_batch(0)


def test_get_batch_is_fast(positions: Path) -> None:
    loader = BatchLoader(positions, "train", batch_size=12, block_size=64)
    loader.get_batch(0)
    n, start = 300, time.process_time()  # CPU time: a busy machine's waits are not the loader's
    for step in range(n):
        loader.get_batch(step)
    rate = n / max(time.process_time() - start, 1e-9)
    assert rate > 500, f"{rate:.0f} batches/s"  # ~15,000/s on 2 CPU cores; the bound only catches regressions


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_pinned_copies_of_the_cpu_batches(positions: Path) -> None:
    cpu = BatchLoader(positions, "train", 8, 32, device="cpu", seed=4).get_batch(2, 1)
    cuda = BatchLoader(positions, "train", 8, 32, device="cuda", seed=4).get_batch(2, 1)
    torch.cuda.synchronize()
    assert cuda[0].device.type == "cuda" and cuda[0].dtype == torch.int64
    assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[1].cpu(), cpu[1])


def test_an_id_past_the_vocabulary_stops_at_the_batch_that_reads_it(tmp_path: Path) -> None:
    """The startup check reads each split's first 1M tokens only; a bad id further on must be a DataError
    naming the file, not an IndexError (CPU) or a device-side assert (CUDA) in the embedding."""
    train = np.zeros(2000, dtype=np.int64)
    train[-50:] = 150  # past vocab_size=100
    data = make_dataset(tmp_path / "bad", train, np.zeros(100, dtype=np.int64), vocab_size=100)
    loader = BatchLoader(data, "train", batch_size=64, block_size=100, device="cpu", seed=0)
    with pytest.raises(DataError, match=r"train\.bin holds token id 150, past the dataset's vocabulary of 100"):
        for step in range(50):
            loader.get_batch(step)


def test_an_id_equal_to_the_vocabulary_size_is_past_it(tmp_path: Path) -> None:
    """Ids run 0 .. vocab_size - 1: an id of exactly vocab_size would index past the embedding too."""
    train = np.full(200, 99, dtype=np.int64)
    train[-20:] = 100
    data = make_dataset(tmp_path / "edge", train, np.zeros(100, dtype=np.int64), vocab_size=100)
    loader = BatchLoader(data, "train", batch_size=64, block_size=50, device="cpu", seed=0)
    with pytest.raises(DataError, match=r"holds token id 100, past the dataset's vocabulary of 100"):
        for step in range(20):
            loader.get_batch(step)
    ok = make_dataset(tmp_path / "ok", np.full(200, 99, dtype=np.int64), np.zeros(100, dtype=np.int64), 100)
    assert int(BatchLoader(ok, "train", 64, 50).get_batch(0)[0].max()) == 99  # vocab_size - 1 is a token


def test_the_evaluation_stream_draws_other_batches_than_training(positions: Path) -> None:
    """With the same seed (EVAL_SEED=0 is also a training seed) and key, the evaluation stream's windows are not the
    training stream's: a val loss is never measured on the batches a run trained on. A negative key is one line."""
    from gptlab.data.loader import EVAL_SEED, EVAL_STREAM

    train = BatchLoader(positions, "train", 8, 32, seed=EVAL_SEED)
    evaluation = BatchLoader(positions, "train", 8, 32, seed=EVAL_SEED, stream=EVAL_STREAM)
    for step in range(3):
        assert not torch.equal(train.get_batch(step)[0], evaluation.get_batch(step)[0]), step
    with pytest.raises(ConfigError, match="micro_step=-1"):
        train.get_batch(0, -1)
