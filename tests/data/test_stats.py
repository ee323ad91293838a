"""gptlab.data.stats: the unigram baseline, by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptlab.data import stats


def test_unigram_baseline_is_the_val_cross_entropy_of_add_one_train_counts(tmp_path: Path, monkeypatch) -> None:
    np.array([0, 0, 1, 2, 0, 1], dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([0, 1, 3], dtype=np.uint16).tofile(tmp_path / "val.bin")
    # train counts + 1 over a vocabulary of 4: 4, 3, 2, 1 (of 10); val reads tokens 0, 1 and the unseen 3
    want = -(math.log(4 / 10) + math.log(3 / 10) + math.log(1 / 10)) / 3
    meta = {"vocab_size": 4, "dtype": "uint16"}
    assert math.isclose(stats.unigram_baseline(tmp_path, meta), want, rel_tol=1e-12)
    monkeypatch.setattr(stats, "UNIGRAM_CHUNK", 2)  # counted in bounded chunks: the same figure
    assert math.isclose(stats.unigram_baseline(tmp_path, meta), want, rel_tol=1e-12)


def test_a_one_token_vocabulary_has_a_baseline_of_zero_not_minus_zero(tmp_path: Path) -> None:
    """A file of one repeated character: its baseline printed as -0.0000."""
    for split in ("train", "val"):
        np.zeros(5, dtype=np.uint16).tofile(tmp_path / f"{split}.bin")
    assert f"{stats.unigram_baseline(tmp_path, {'vocab_size': 1, 'dtype': 'uint16'}):.4f}" == "0.0000"


def test_the_baseline_of_a_large_split_counts_its_first_tokens_only(tmp_path: Path, monkeypatch) -> None:
    """At most UNIGRAM_MAX_TOKENS tokens of each split: with a cap of 2, train [0, 0] gives add-one counts
    3, 1, 1, 1 (of 6) and val [0, 1] is read."""
    np.array([0, 0, 1, 2, 0, 1], dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([0, 1, 3], dtype=np.uint16).tofile(tmp_path / "val.bin")
    monkeypatch.setattr(stats, "UNIGRAM_MAX_TOKENS", 2)
    want = -(math.log(3 / 6) + math.log(1 / 6)) / 2
    assert math.isclose(stats.unigram_baseline(tmp_path, {"vocab_size": 4, "dtype": "uint16"}), want, rel_tol=1e-12)


def test_a_meta_without_a_dtype_is_read_as_uint16(tmp_path: Path) -> None:
    """nanoGPT's datasets (and gptlab's older ones) record no dtype: their .bin files are uint16."""
    np.array([0, 0, 1, 2, 0, 1], dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([0, 1, 3], dtype=np.uint16).tofile(tmp_path / "val.bin")
    want = -(math.log(4 / 10) + math.log(3 / 10) + math.log(1 / 10)) / 3
    assert math.isclose(stats.unigram_baseline(tmp_path, {"vocab_size": 4}), want, rel_tol=1e-12)
