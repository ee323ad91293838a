"""Data: tokenizers, dataset preparation (``gptlab prepare``) and reproducible training batches."""

from gptlab.data.datasets import DATASETS, DatasetSpec, PrepareOptions, ensure_prepared, prepare_dataset
from gptlab.data.loader import BatchLoader
from gptlab.data.storage import read_meta, token_dtype
from gptlab.data.tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "DATASETS",
    "BatchLoader",
    "CharTokenizer",
    "DatasetSpec",
    "GPT2Tokenizer",
    "PrepareOptions",
    "Tokenizer",
    "build_tokenizer",
    "ensure_prepared",
    "load_tokenizer",
    "prepare_dataset",
    "read_meta",
    "token_dtype",
]
