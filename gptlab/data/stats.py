"""Statistics of a prepared dataset that runs report beside their losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNIGRAM_MAX_TOKENS = 50_000_000  # the baseline is estimated on at most this many tokens per split
UNIGRAM_CHUNK = 4_000_000  # bincount copies its input to int64: count in bounded chunks


def unigram_baseline(dataset_dir: Path, meta: dict[str, Any]) -> float:
    """Cross-entropy (nats/token) of the train split's unigram distribution on the val split:
    the loss a model that ignores context can reach, the bar a trained model must clear.
    Large datasets are estimated on their first UNIGRAM_MAX_TOKENS tokens, in bounded memory."""
    import numpy as np

    dtype = np.dtype(meta.get("dtype", "uint16"))
    vocab = int(meta["vocab_size"])

    def counts(split: str) -> np.ndarray:
        data = np.memmap(dataset_dir / f"{split}.bin", dtype=dtype, mode="r")[:UNIGRAM_MAX_TOKENS]
        total = np.zeros(vocab, dtype=np.int64)
        for start in range(0, len(data), UNIGRAM_CHUNK):
            total += np.bincount(data[start : start + UNIGRAM_CHUNK], minlength=vocab)[:vocab]
        return total

    train = counts("train").astype(np.float64) + 1.0  # add-one: val tokens unseen in train
    val = counts("val")
    logp = np.log(train / train.sum())
    return float(-(val * logp).sum() / val.sum()) + 0.0  # + 0.0: a one-token vocabulary's -0.0 prints as 0
