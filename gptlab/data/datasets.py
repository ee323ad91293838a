"""Prepare datasets into ``DATA_DIR/NAME/{train,val}.bin`` + ``meta.json`` (nanoGPT's layout).

Adding a dataset is one function returning a :class:`Corpus` plus one ``DATASETS`` entry.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data import sources
from gptlab.data.sources import Corpus, Records
from gptlab.data.storage import (
    FORMAT,
    META_FILE,
    NANOGPT_META_FILE,
    SPLITS,
    DatasetWriter,
    is_ready,
    not_ready_reason,
    prepare_lock,
    read_meta,
    split_path,
    token_dtype,
)
from gptlab.data.tokenizers import TOKENIZERS, CharTokenizer, Tokenizer, build_tokenizer, load_tokenizer
from gptlab.errors import ConfigError, DataError, did_you_mean, unknown_choice
from gptlab.fileio import atomic_write, check_directory

__all__ = ["DATASETS", "DatasetSpec", "PrepareOptions", "ensure_prepared", "prepare_dataset", "read_meta"]

DEFAULT_VAL_FRACTION = 0.1
DOCS_PER_TASK = 256  # documents per worker task: large enough to amortise pickling


@dataclass(frozen=True)
class PrepareOptions:
    """How to prepare: the input, the tokenizer and the caps (validated on construction)."""

    input_path: Path | None = None
    tokenizer: str | None = None  # None: the dataset's own, or char for NAME_char, else gpt2
    num_proc: int | None = None  # None: half the cores for streams, 1 for in-memory corpora
    max_documents: int | None = None
    max_tokens: int | None = None  # total of train + val, exact
    max_chars: int | None = None  # the embedded stdlib corpus's size
    val_fraction: float | None = None  # None: the dataset's own (0.1 unless registered otherwise)
    load_fn: Callable[[], Records] | None = None  # replaces a Hugging Face stream (tests, custom sources)
    text_field: str = "text"  # the field of .jsonl/.parquet records that holds the text

    def __post_init__(self) -> None:
        for key in ("num_proc", "max_documents", "max_tokens", "max_chars"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key}={value!r} must be a positive integer")
        if self.tokenizer is not None and self.tokenizer not in TOKENIZERS:
            raise unknown_choice("tokenizer", self.tokenizer, TOKENIZERS)
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be between 0 and 1")


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: where its text comes from and how it is tokenized."""

    corpus: Callable[[Path, PrepareOptions], Corpus]  # (dataset dir, options) -> documents
    tokenizer: str
    help: str
    val_fraction: float = DEFAULT_VAL_FRACTION
    auto: bool = False  # needs no network: ensure_prepared prepares it on first use
    hint: str = ""  # appended to "run `gptlab prepare NAME`" when it is missing
    records: bool = False  # documents are records with a text field (--text_field), not text files


def _stdlib(dataset_dir: Path, opts: PrepareOptions) -> Corpus:
    if opts.input_path is not None:
        raise ConfigError("the stdlib datasets are embedded and take no --input; use your own NAME for your text")
    return sources.stdlib_corpus(opts.max_chars)


def _shakespeare(dataset_dir: Path, opts: PrepareOptions) -> Corpus:
    return sources.shakespeare_corpus(dataset_dir, opts.input_path)


def _hub(path: str, config: str | None) -> Callable[[Path, PrepareOptions], Corpus]:
    def corpus(dataset_dir: Path, opts: PrepareOptions) -> Corpus:
        return sources.hub_corpus(path, config, opts.input_path, opts.load_fn, opts.text_field)

    return corpus


_OFFLINE_HINT = " (add --input PATH when offline)"


def default_tokenizer(name: str) -> str:
    """The tokenizer dataset ``name`` is prepared with unless --tokenizer says otherwise: a registered dataset's
    own, else char for a NAME_char, else GPT-2's BPE."""
    spec = DATASETS.get(name)
    if spec is not None:
        return spec.tokenizer
    return "char" if name.endswith("_char") else "gpt2"


DATASETS: dict[str, DatasetSpec] = {
    "stdlib_char": DatasetSpec(_stdlib, "char", "Python standard library source, char level (embedded)", auto=True),
    "stdlib": DatasetSpec(_stdlib, "gpt2", "Python standard library source, GPT-2 BPE (embedded)", auto=True),
    "shakespeare_char": DatasetSpec(_shakespeare, "char", "tiny Shakespeare, char level", hint=_OFFLINE_HINT),
    "shakespeare": DatasetSpec(_shakespeare, "gpt2", "tiny Shakespeare, GPT-2 BPE", hint=_OFFLINE_HINT),
    # nanoGPT's val share of OpenWebText; a document stream, so val is every 2000th document.
    "openwebtext": DatasetSpec(
        _hub("Skylion007/openwebtext", None),
        "gpt2",
        "OpenWebText (Hugging Face, streamed)",
        0.0005,
        hint=_OFFLINE_HINT,
        records=True,
    ),
    "fineweb_edu": DatasetSpec(
        _hub("HuggingFaceFW/fineweb-edu", "sample-10BT"),
        "gpt2",
        "FineWeb-Edu sample-10BT (Hugging Face, streamed)",
        0.0005,
        hint=_OFFLINE_HINT,
        records=True,
    ),
}

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"dataset={name!r} must be a plain directory name (ASCII letters, digits, '_', '-', '.')")


def _unknown_dataset(name: str, dataset_dir: Path, prepared_check: bool) -> DataError:
    """Neither built in nor (when ``prepared_check``) prepared under data_dir: the near spelling among both,
    what data_dir holds, and the prepare command for the same data_dir."""
    names = ", ".join(repr(n) for n in sorted(DATASETS))
    data_dir = dataset_dir.parent
    flag = "" if data_dir == Path("data") else f" --data_dir {data_dir}"
    prepare = f"for your own text run `gptlab prepare {name} --input PATH{flag}`"
    if not prepared_check:
        return DataError(f"dataset {name!r} is not one of {names}{did_you_mean(name, DATASETS)}; {prepare}")
    if not data_dir.is_dir():  # a mistyped --data_dir, or a run from another working directory
        where = f"data_dir={str(data_dir)!r} does not exist (relative paths start at {os.getcwd()})"
        return DataError(
            f"dataset {name!r} is not prepared: {where}, and it is not one of {names}"
            f"{did_you_mean(name, DATASETS)}; {prepare}"
        )
    prepared = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and (p / "train.bin").is_file())
    held = f"; {data_dir} holds {', '.join(repr(n) for n in prepared)}" if prepared else ""
    return DataError(
        f"dataset {name!r} is not prepared in {dataset_dir} and is not one of {names}{held}"
        f"{did_you_mean(name, [*DATASETS, *prepared])}; {prepare}"
    )


# --- tokenization, in worker processes for streams -------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_meta: dict[str, Any]) -> None:
    """A tokenizing worker: the terminal's Ctrl-C reaches the whole process group, and a worker it killed
    mid-reply left the pool's terminate() waiting forever; the parent alone handles it (and ends the pool)."""
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_tokenizer = load_tokenizer(tokenizer_meta)


def _encode_document(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """A document's ids followed by the end-of-text token when the tokenizer has one (nanoGPT's openwebtext)."""
    ids = tokenizer.encode_array(text)
    return ids if tokenizer.eot_token is None else np.append(ids, tokenizer.eot_token)


def _encode_batch(texts: list[str]) -> list[np.ndarray]:
    assert _worker_tokenizer is not None, "worker not initialised"
    return [_encode_document(_worker_tokenizer, t) for t in texts]


def encode_documents(documents: Iterable[str], tokenizer: Tokenizer, num_proc: int = 1) -> Iterator[np.ndarray]:
    """Per-document token arrays in document order; ``num_proc > 1`` tokenizes in a process pool.

    At most 2 x num_proc tasks are in flight, so a streamed corpus is never read far ahead.
    """
    if num_proc <= 1:
        for text in documents:
            yield _encode_document(tokenizer, text)
        return
    docs = iter(documents)
    with multiprocessing.get_context().Pool(num_proc, _init_worker, (tokenizer.to_meta(),)) as pool:
        pending: deque[Any] = deque()
        while batch := list(itertools.islice(docs, DOCS_PER_TASK)):
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= 2 * num_proc:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def _first_chars(documents: list[str], count: int) -> list[str]:
    """The documents cut to their first ``count`` characters in all, the tokens a char dataset keeps."""
    kept: list[str] = []
    for text in documents:
        if count <= 0:
            break
        kept.append(text[:count])
        count -= len(kept[-1])
    return kept


def _progress(desc: str, total: int | None) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=desc, total=total, unit=" docs", disable=None)  # disable=None: quiet when not a terminal


def _every_nth(val_fraction: float) -> int:
    """A records corpus's validation documents are every n-th: the n nearest 1 / val_fraction, at least 2."""
    return max(2, round(1 / val_fraction))


def _write_tokens(
    writer: DatasetWriter,
    arrays: Iterator[np.ndarray],
    corpus: Corpus,
    val_fraction: float,
    max_tokens: int | None,
    progress: Any,
    eot_token: int | None = None,
) -> tuple[int, int]:
    """Write documents to their split, stopping at exactly ``max_tokens``; returns the documents read and how
    many of them hold text (more than ``eot_token``, the end-of-text token each one ends with, before a cut)."""
    every = _every_nth(val_fraction)
    docs = total = with_text = 0
    for i, ids in enumerate(arrays):
        with_text += len(ids) > (eot_token is not None)
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        split = "val" if corpus.split == "documents" and i % every == 0 else "train"
        writer.write(split, ids)
        docs += 1
        total += len(ids)
        if progress is not None:
            progress.update(1)
        if max_tokens is not None and total >= max_tokens:
            break
    if corpus.split == "tail":
        writer.move_tail_to_val(int(total * (1 - val_fraction)))
    return docs, with_text


def prepare_dataset(
    name: str,
    data_dir: str | Path = "data",
    input_path: str | Path | None = None,
    *,
    tokenizer: str | None = None,
    num_proc: int | None = None,
    max_documents: int | None = None,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    val_fraction: float | None = None,
    load_fn: Callable[[], Records] | None = None,
    text_field: str = "text",
) -> Path:
    """Tokenize dataset ``name`` (a registered one, or any text at ``input_path``) into ``data_dir/name``.

    The options are :class:`PrepareOptions`'s. Existing files are replaced only once the new ones
    are complete, so an interrupted prepare never leaves a dataset that looks ready.
    """
    _check_name(name)
    check_directory("data_dir", data_dir, creates=True)
    path = Path(input_path) if input_path is not None else None
    opts = PrepareOptions(
        path, tokenizer, num_proc, max_documents, max_tokens, max_chars, val_fraction, load_fn, text_field
    )
    spec = DATASETS.get(name)
    dataset_dir = Path(data_dir) / name
    if spec is None and opts.input_path is None:
        raise _unknown_dataset(name, dataset_dir, prepared_check=False)
    if spec is not None and opts.tokenizer not in (None, spec.tokenizer):
        raise ConfigError(
            f"tokenizer={opts.tokenizer!r} does not fit dataset {name!r}, which is {spec.tokenizer!r}; "
            f"prepare your text under another name for a different tokenizer"
        )
    with prepare_lock(dataset_dir):
        _prepare(name, dataset_dir, spec, opts)
    return dataset_dir


def _write_nanogpt_meta(dataset_dir: Path, tok: Tokenizer) -> None:
    """A char vocabulary's ``meta.pkl`` as nanoGPT's shakespeare_char/prepare.py writes it (vocab_size,
    itos and stoi, plain data), so that nanoGPT's train.py and sample.py read the dataset too; gptlab reads
    meta.json. A GPT-2 BPE dataset has none (nanoGPT then takes GPT-2's), and a stale one goes."""
    import pickle

    path = dataset_dir / NANOGPT_META_FILE
    meta = tok.to_meta()
    if "itos" not in meta or token_dtype(meta["vocab_size"]) != np.uint16:
        # over 65,536 ids the .bin files are uint32, which nanoGPT's np.memmap(dtype=np.uint16) reads as
        # garbage ids, all within its vocabulary: no meta.pkl invites it (gptlab reads meta.json)
        path.unlink(missing_ok=True)
        return
    itos = {int(i): c for i, c in meta["itos"].items()}
    atomic_write(path, pickle.dumps({"vocab_size": meta["vocab_size"], "itos": itos, "stoi": dict(meta["stoi"])}))


def _prepare(name: str, dataset_dir: Path, spec: DatasetSpec | None, opts: PrepareOptions) -> None:
    """Read, tokenize and write; the caller holds the directory's lock."""
    if spec is not None:
        if opts.text_field != "text" and not spec.records:  # text, not records: it would do nothing
            raise ConfigError(f"text_field={opts.text_field!r} is for records; dataset {name!r} is text")
        corpus, tokenizer_name, fraction = spec.corpus(dataset_dir, opts), spec.tokenizer, spec.val_fraction
    else:
        assert opts.input_path is not None
        if sources.is_records_input(opts.input_path):  # .jsonl / .parquet: one document per record
            corpus = sources.hub_corpus(name, None, opts.input_path, text_field=opts.text_field, json_is_records=False)
        elif opts.text_field != "text":
            raise ConfigError(
                f"text_field={opts.text_field!r} is for .jsonl/.parquet records; {opts.input_path} is text"
            )
        else:
            corpus = sources.local_corpus(opts.input_path, exclude=dataset_dir)
        tokenizer_name = opts.tokenizer or default_tokenizer(name)
        fraction = DEFAULT_VAL_FRACTION
    if opts.val_fraction is not None:
        fraction = opts.val_fraction
    documents: Iterable[str] = corpus.documents
    if opts.max_documents is not None:
        documents = itertools.islice(documents, opts.max_documents)
    if tokenizer_name == "char":  # the vocabulary is the corpus's characters, so it is read whole first
        documents = list(documents)
        if opts.max_tokens is not None:  # one token per character: the vocabulary is what max_tokens keeps
            documents = _first_chars(documents, opts.max_tokens)
        if not any(documents):
            where = opts.input_path if opts.input_path is not None else name
            raise DataError(f"{where} holds no text to build a char vocabulary from")
        tok = CharTokenizer.from_documents(documents)
    else:
        tok = build_tokenizer(tokenizer_name)
    num_proc = opts.num_proc
    if num_proc is None:  # streams are large; in-memory corpora tokenize in about a second
        num_proc = max(1, (os.cpu_count() or 1) // 2) if corpus.split == "documents" else 1

    progress = _progress(f"prepare {name}", opts.max_documents)
    try:
        with DatasetWriter(dataset_dir, tok.vocab_size) as writer:
            arrays = encode_documents(documents, tok, num_proc)
            try:
                docs, with_text = _write_tokens(
                    writer, arrays, corpus, fraction, opts.max_tokens, progress, tok.eot_token
                )
            finally:
                arrays.close()  # stops the worker pool when max_tokens or an error ended the stream early
            caps = [
                f"--{k}={v}" for k, v in (("max_tokens", opts.max_tokens), ("max_documents", opts.max_documents)) if v
            ]
            cut = f" as cut by {' and '.join(caps)}" if caps else ""
            if with_text == 0:  # an end-of-text token each, alone (a char vocabulary of nothing is refused above)
                where = opts.input_path if opts.input_path is not None else name
                empty = "its one document is empty" if docs == 1 else f"its {docs} documents are empty"
                raise DataError(f"{where} holds no text{cut}: {empty}")
            if min(writer.counts.values()) == 0:
                raise DataError(
                    f"dataset {name!r} came out with {writer.counts['train']} train and {writer.counts['val']} val "
                    f"tokens: the corpus{cut} is too small to split (val_fraction={fraction})"
                )
            meta = _meta(name, tok, writer, docs, corpus, fraction, opts)
            writer.commit(meta, before_renames=lambda: _write_nanogpt_meta(dataset_dir, tok))
    finally:
        if progress is not None:
            progress.close()


def _meta(
    name: str,
    tok: Tokenizer,
    writer: DatasetWriter,
    docs: int,
    corpus: Corpus,
    val_fraction: float,
    opts: PrepareOptions,
) -> dict[str, Any]:
    split = "last fraction of the token stream" if corpus.split == "tail" else "every 1/val_fraction-th document"
    return {
        "format": FORMAT,
        "name": name,
        "vocab_size": tok.vocab_size,
        "dtype": writer.dtype.name,
        "tokens": dict(writer.counts),
        "documents": docs,
        # the share held out: a records corpus's every n-th document is 1/n of them (0.4 asked holds out every 2nd)
        "val_fraction": val_fraction if corpus.split == "tail" else 1 / _every_nth(val_fraction),
        "split": split,
        "caps": {"max_documents": opts.max_documents, "max_tokens": opts.max_tokens},
        "source": corpus.source,
        "tokenizer": tok.to_meta(),
    }


def ensure_prepared(name: str, data_dir: str | Path = "data") -> Path:
    """The directory of dataset ``name``; embedded datasets are prepared on first use, others must be."""
    _check_name(name)
    check_directory("data_dir", data_dir)
    dataset_dir = Path(data_dir) / name
    if is_ready(dataset_dir):
        return dataset_dir
    # damaged rather than absent (a truncated .bin, a broken meta.json, bins without one): say what is wrong
    present = any(p.exists() for p in (dataset_dir / META_FILE, *(split_path(dataset_dir, s) for s in SPLITS)))
    damage = not_ready_reason(dataset_dir) if present else None
    spec = DATASETS.get(name)
    if spec is None and damage is not None:
        again = "" if "gptlab prepare" in damage else "; prepare it again"
        raise DataError(f"dataset {name!r} in {dataset_dir} is damaged: {damage}{again}")
    if spec is None:
        raise _unknown_dataset(name, dataset_dir, prepared_check=True)
    if not spec.auto:
        flag = "" if Path(data_dir) == Path("data") else f" --data_dir {data_dir}"
        state = f"is damaged ({damage})" if damage else "is not prepared"
        raise DataError(f"dataset {name!r} {state} in {dataset_dir}: run `gptlab prepare {name}{flag}`{spec.hint}")
    with prepare_lock(dataset_dir):
        if not is_ready(dataset_dir):  # another process may have prepared it while we waited
            _prepare(name, dataset_dir, spec, PrepareOptions())
    return dataset_dir
