"""The on-disk dataset: ``train.bin`` / ``val.bin`` flat token arrays (nanoGPT's layout) and ``meta.json``.

meta.json is written last and only after the token files are complete, so a directory with a
meta.json whose token counts match the file sizes is a finished dataset; anything else
(an interrupted prepare, a half-copied directory) is not, and is prepared again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gptlab.errors import DataError
from gptlab.fileio import atomic_write

META_FILE = "meta.json"
NANOGPT_META_FILE = "meta.pkl"  # a char vocabulary, as nanoGPT's shakespeare_char/prepare.py writes it
SPLITS: tuple[str, ...] = ("train", "val")
TMP_MARK = ".tmp-"  # temporary files are NAME.tmp-PID; never mistaken for a finished file
LOCK_FILE = ".prepare.lock"  # left in every directory gptlab's prepare wrote
FORMAT = "gptlab-tokens-v1"


TOKEN_DTYPES = ("uint16", "uint32")  # what prepare writes (nanoGPT's uint16, and uint32 past 65536 tokens)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds every id of a vocabulary up to 65536 (nanoGPT's choice); larger ones need uint32."""
    if vocab_size < 1:
        raise DataError(f"vocab_size={vocab_size} must be positive")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_path(dataset_dir: str | Path, split: str) -> Path:
    """Path of a split's token file, e.g. data/stdlib/train.bin."""
    return Path(dataset_dir) / f"{split}.bin"


def holds_splits(folder: str | Path) -> bool:
    """Whether ``folder`` holds every split's token file: a prepared dataset (gptlab's or nanoGPT's), not text."""
    return all(split_path(folder, s).is_file() for s in SPLITS)


def read_meta(dataset_dir: str | Path) -> dict[str, Any]:
    """The dataset's meta.json (for nanoGPT's prepare.py output, which has none, ``nanogpt_meta``);
    DataError if it is missing or unreadable."""
    path = Path(dataset_dir) / META_FILE
    if not path.is_file():
        nanogpt = nanogpt_meta(dataset_dir)
        if nanogpt is not None:
            return nanogpt
        bins = [split_path(dataset_dir, s) for s in SPLITS]
        missing = [b.name for b in bins if not b.is_file()]
        if 0 < len(missing) < len(bins):  # nanoGPT's layout, a split short: name it, not the meta.json it never had
            raise DataError(
                f"{dataset_dir} has no {' or '.join(missing)} (a dataset needs {' and '.join(b.name for b in bins)}, "
                f"as nanoGPT's prepare.py writes them, or gptlab's {META_FILE})"
            )
        raise DataError(
            f"{dataset_dir} is not a prepared dataset (no {META_FILE}): run `gptlab prepare {Path(dataset_dir).name}`"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokens"), dict) or "dtype" not in meta:
        raise DataError(f"{path} is not a gptlab dataset meta file (needs 'tokens' and 'dtype')")
    if meta["dtype"] not in TOKEN_DTYPES:  # token ids are unsigned integers: a float or object array is no dataset
        raise DataError(f"{path} gives dtype={meta['dtype']!r}: token files are {' or '.join(TOKEN_DTYPES)}")
    if (problem := _meta_problem(meta)) is not None:  # a hand-edited or damaged file: one line, not a traceback later
        raise DataError(f"{path} is damaged: {problem}; prepare the dataset again")
    return meta


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a meta.json that the loader, the run and its startup report read."""
    vocab = meta.get("vocab_size")
    if not _is_count(vocab) or not 0 < vocab <= 2**32:
        return f"vocab_size={vocab!r} is not a positive integer up to 2**32"
    for split, count in meta["tokens"].items():
        if not _is_count(count):
            return f"tokens[{split!r}]={count!r} is not a count of tokens"
    for key in ("source", "tokenizer"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key}={meta[key]!r} is not a JSON object"
    return None


def not_ready_reason(dataset_dir: str | Path) -> str | None:
    """None when meta.json exists and every split file holds exactly the tokens it promises; else why not."""
    try:
        meta = read_meta(dataset_dir)
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in SPLITS:
            path = split_path(dataset_dir, split)
            if not path.is_file():
                return f"{path} is missing"
            expected = int(meta["tokens"][split]) * itemsize
            if path.stat().st_size != expected:
                return f"{path} holds {path.stat().st_size:,} bytes, {META_FILE} promises {expected:,} (truncated?)"
    except DataError as e:
        return str(e)
    except (KeyError, TypeError, ValueError) as e:
        return f"{Path(dataset_dir) / META_FILE} is malformed ({type(e).__name__}: {e})"
    return None


def is_ready(dataset_dir: str | Path) -> bool:
    """True when meta.json exists and every split file holds exactly the tokens it promises."""
    return not_ready_reason(dataset_dir) is None


def nanogpt_meta(dataset_dir: str | Path) -> dict[str, Any] | None:
    """The meta of a dataset nanoGPT's prepare.py wrote (train.bin / val.bin as uint16, and for a char
    vocabulary meta.pkl, read as plain data; else GPT-2 BPE, as nanoGPT's openwebtext), so that it is
    trained on as it is, without writing into it. None for anything else: a directory gptlab's prepare has
    touched (its lock file, temporary files) is never taken for one. DataError where the files cannot be
    nanoGPT's tokens (an odd size, ids past the vocabulary)."""
    directory = Path(dataset_dir)
    paths = {split: split_path(directory, split) for split in SPLITS}
    gptlab_traces = (directory / META_FILE).exists() or wrote_tokens(directory)
    if gptlab_traces or any(directory.glob(f"*{TMP_MARK}*")) or not all(p.is_file() for p in paths.values()):
        return None
    from gptlab.data.tokenizers import GPT2Tokenizer, read_nanogpt_meta

    tokens = {}
    for split, path in paths.items():
        size = path.stat().st_size
        if size == 0 or size % 2:
            raise DataError(f"{path} holds {size} bytes: not nanoGPT's uint16 tokens (and there is no {META_FILE})")
        tokens[split] = size // 2
    pickle_file = directory / NANOGPT_META_FILE
    tok = read_nanogpt_meta(pickle_file) if pickle_file.is_file() else GPT2Tokenizer()
    if tok.vocab_size > 1 << 16:  # nanoGPT writes uint16: these bins are someone else's (gptlab's uint32?)
        raise DataError(
            f"{pickle_file} gives vocab_size={tok.vocab_size}, which nanoGPT's uint16 tokens cannot hold, and there "
            f"is no {META_FILE} to say how the .bin files are stored: prepare the dataset again"
        )
    for split, path in paths.items():  # a look at the start of each split: ids must fit the vocabulary
        head = np.fromfile(path, dtype=np.uint16, count=min(tokens[split], 1 << 20))
        if int(head.max()) >= tok.vocab_size:
            where = "meta.pkl's" if pickle_file.is_file() else "GPT-2's (no meta.pkl)"
            raise DataError(f"{path} holds token id {int(head.max())}, past {where} vocabulary of {tok.vocab_size}")
    return {
        "format": FORMAT,
        "name": directory.name,
        "vocab_size": tok.vocab_size,
        "dtype": "uint16",
        "tokens": tokens,
        "split": "nanoGPT's prepare.py",
        "source": {"kind": "nanogpt", "path": str(directory.resolve())},
        "tokenizer": tok.to_meta(),
    }


# The lock file says what gptlab's prepare did to its directory: PREPARING while it has written no token
# file there (a prepare that stops then leaves no trace, a nanoGPT dataset there stays one), WROTE once it
# has (lost meta.json then means damaged, never nanoGPT's). An empty one is an older gptlab's: taken as WROTE.
PREPARING_MARK = "gptlab prepare: no token files written yet\n"
WROTE_MARK = "gptlab prepare: wrote this dataset's token files\n"


def _lock_says(dataset_dir: Path) -> str | None:
    """The lock file's content, or None where there is none."""
    try:
        return (dataset_dir / LOCK_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def wrote_tokens(dataset_dir: Path) -> bool:
    """Whether gptlab's prepare may have put token files in ``dataset_dir``: its lock file, unless that says
    the prepare that made it wrote none."""
    said = _lock_says(dataset_dir)
    return said is not None and said != PREPARING_MARK


@contextlib.contextmanager
def prepare_lock(dataset_dir: Path) -> Iterator[None]:
    """Serialise prepares of one directory (e.g. every DDP rank auto-preparing stdlib at once)."""
    created = [d for d in (dataset_dir, *dataset_dir.parents) if not d.exists()]  # removed again if left empty
    dataset_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): prepares there are single-process
        yield
        return
    lock_path = dataset_dir / LOCK_FILE
    while True:
        dataset_dir.mkdir(parents=True, exist_ok=True)  # again: a failed first prepare removes what it made
        fresh = not lock_path.exists()
        lock = open(lock_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(lock.fileno()).st_ino == os.stat(lock_path).st_ino:
                break  # still the lock: a failed prepare removes its file while others may wait on it
        lock.close()
    if fresh and os.fstat(lock.fileno()).st_size == 0:  # this prepare made it (an empty one it found is an
        lock.write(PREPARING_MARK)  # older gptlab's, which stays a trace)
        lock.flush()
    with lock:
        try:
            # Under the lock no other prepare is running, so any temporary file is a leftover.
            for stale in dataset_dir.glob(f"*{TMP_MARK}*"):
                stale.unlink(missing_ok=True)
            yield
        finally:
            if not (dataset_dir / META_FILE).exists() and _lock_says(dataset_dir) == PREPARING_MARK:  # no token
                # file written: no trace left (a nanoGPT dataset there stays one; a damaged gptlab one keeps it)
                lock_path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    for directory in created:  # innermost first; stops at the first one not empty
                        directory.rmdir()
            fcntl.flock(lock, fcntl.LOCK_UN)


class DatasetWriter:
    """Streams tokens into temporary split files; ``commit`` renames them and writes meta.json last.

    Used as a context manager: leaving it without ``commit`` (an error, Ctrl-C) deletes the
    temporary files, so nothing half-written ever carries a final name.
    """

    def __init__(self, dataset_dir: Path, vocab_size: int) -> None:
        self.dir = dataset_dir
        self.dtype = token_dtype(vocab_size)
        self.counts = dict.fromkeys(SPLITS, 0)
        self._tmp = {s: self.dir / f"{s}.bin{TMP_MARK}{os.getpid()}" for s in SPLITS}
        self._files: dict[str, BinaryIO] = {}

    def __enter__(self) -> DatasetWriter:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files = {s: open(p, "wb") for s, p in self._tmp.items()}  # noqa: SIM115 (closed in commit/abort)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._files:  # not committed
            self._close()
            for path in self._tmp.values():
                path.unlink(missing_ok=True)

    def write(self, split: str, ids: np.ndarray) -> None:
        """Append token ids to a split."""
        self._files[split].write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
        self.counts[split] += len(ids)

    def move_tail_to_val(self, n_train: int) -> None:
        """Everything was written to train: keep its first ``n_train`` tokens, move the rest to val."""
        train, val = self._files["train"], self._files["val"]
        train.flush()
        tail = np.fromfile(self._tmp["train"], dtype=self.dtype, offset=n_train * self.dtype.itemsize)
        val.write(tail.tobytes())
        train.truncate(n_train * self.dtype.itemsize)
        self.counts["val"] += len(tail)
        self.counts["train"] = n_train

    def commit(self, meta: dict[str, Any], before_renames: Callable[[], None] | None = None) -> None:
        """Make the dataset final: token files first, meta.json (the 'ready' mark) last. ``before_renames``
        writes what goes beside them (nanoGPT's meta.pkl) once the old dataset is no longer marked ready."""
        # file names the file system holds in bytes that are not UTF-8 are kept escaped; anything else that
        # UTF-8 cannot hold (a lone surrogate in a char vocabulary) fails below, with the old dataset untouched
        named = {**meta, "source": _printable(meta["source"])} if "source" in meta else meta
        text = json.dumps(named, indent=1, ensure_ascii=False) + "\n"
        text.encode("utf-8")  # what cannot be written fails here, with the old dataset untouched
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        self._close()
        meta_path = self.dir / META_FILE
        meta_path.unlink(missing_ok=True)  # a crash between the renames leaves 'not ready', not a mismatch
        if _lock_says(self.dir) != WROTE_MARK:  # from here the bins are gptlab's: damaged, never nanoGPT's, if cut
            with open(self.dir / LOCK_FILE, "a", encoding="utf-8") as lock:  # short (the same file: others flock it)
                lock.truncate(0)
                lock.write(WROTE_MARK)
        if before_renames is not None:  # after meta.json is gone: a kill here left the old dataset 'ready' beside
            before_renames()  # the new meta.pkl (nanoGPT would read the old bins with the new vocabulary)
        for split in SPLITS:
            os.replace(self._tmp[split], split_path(self.dir, split))
        atomic_write(meta_path, text)

    def _close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def _printable(value: Any) -> Any:
    """``value`` with every string writable as UTF-8: a file name that is not (bytes the file system holds,
    decoded with surrogate escapes) is kept with its odd bytes as \\x escapes."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate no file name decodes to
            raw = value.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def bins_sample(dataset_dir: Path, blocks: int = 16, block_bytes: int = 4096) -> dict[str, str]:
    """Each split file's size and ``blocks`` evenly spaced blocks of its bytes, hashed (64 KiB of each file read a
    save, however large the dataset): a file shuffled or re-tokenized in place changes it with near certainty (a
    small edit between the blocks would not), an identical re-prepare never."""
    digests = {}
    for split in SPLITS:
        path = split_path(dataset_dir, split)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                digest = hashlib.sha256(str(size).encode())
                for i in range(blocks):
                    f.seek(size * i // blocks)
                    digest.update(f.read(block_bytes))
        except OSError:
            continue
        digests[split] = digest.hexdigest()[:16]
    return digests
