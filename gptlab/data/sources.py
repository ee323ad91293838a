"""Where a dataset's text comes from: documents in a fixed order plus a description for meta.json."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sysconfig
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptlab.data.storage import SPLITS, holds_splits
from gptlab.errors import DataError
from gptlab.fileio import atomic_write

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DOWNLOAD_TIMEOUT_S = 30.0

# The embedded corpus: whole .py files of the standard library in sorted order until this many
# characters (about 4 MB; 1.8M GPT-2 tokens), so it prepares in seconds and needs no network.
STDLIB_MAX_CHARS = 4_000_000
# Tests, generated tables (encodings, pydoc_data) and parts that Linux distributions ship as
# separate packages (distutils, lib2to3, tkinter, ensurepip, idlelib) are left out, so the
# same Python version gives the same corpus on every machine.
STDLIB_EXCLUDED_DIRS = frozenset(
    {
        "__pycache__",
        "distutils",
        "encodings",
        "ensurepip",
        "idle_test",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "tkinter",
        "turtledemo",
    }
)

Split = Literal["tail", "documents"]
Records = Iterable[Mapping[str, Any]]


@dataclass
class Corpus:
    """Documents in their fixed order; ``split`` says how val is chosen.

    "tail": the last ``val_fraction`` of the token stream (nanoGPT's shakespeare split);
    "documents": every round(1/val_fraction)-th document, for streams whose length is unknown.
    """

    documents: Iterable[str]
    source: dict[str, Any] = field(default_factory=dict)
    split: Split = "tail"


def _sha256(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


def stdlib_files(root: Path) -> list[str]:
    """The standard library's .py files as sorted relative POSIX paths, exclusions applied."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruned in place, so site-packages (often larger than the stdlib itself) is never walked.
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith(("config-", "."))]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            # _sysconfigdata* describes this build and differs per machine.
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                files.append((rel_dir / name).as_posix())
    return sorted(files)


def stdlib_corpus(max_chars: int | None = None) -> Corpus:
    """This Python's standard library source: deterministic, offline, a few MB."""
    cap = STDLIB_MAX_CHARS if max_chars is None else max_chars
    root = Path(sysconfig.get_paths()["stdlib"])
    documents: list[str] = []
    names: list[str] = []
    total = 0
    for rel in stdlib_files(root):
        if total >= cap:
            break
        # errors="replace" keeps the corpus deterministic even if a distribution ships a non-UTF-8 file.
        text = (root / rel).read_bytes().decode("utf-8", errors="replace")
        documents.append(text)
        names.append(rel)
        total += len(text)
    if not documents:
        raise DataError(f"no standard library .py files found under {root}")
    source = {
        "kind": "python-stdlib",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "files": len(names),
        "first_file": names[0],
        "last_file": names[-1],
        "chars": total,
        "max_chars": cap,
        "sha256": _sha256(documents),
    }
    return Corpus(documents, source)


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` into ``dest`` (atomically); offline is a one-line DataError that names --input."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        reason = str(getattr(e, "reason", e)).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot download {url} ({reason}): pass --input PATH to a local copy") from None
    atomic_write(dest, data)


def _read_text(path: Path) -> str:
    """A local text file as nanoGPT's prepare.py reads one (``open(path, 'r')``: universal newlines, so a
    Windows file's CR LF is one newline and no CR enters a char vocabulary)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
    except UnicodeDecodeError:
        raise DataError(f"input file {path} is not UTF-8 text: remove it or convert it") from None
    except OSError as e:
        raise DataError(f"cannot read input file {path}: {e.strerror or e}") from None


def _walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root``, through symlinked folders too (each real folder once: no link loops)."""
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        # .git and the like left out; sorted, so which of two paths to one real folder is kept (the first one
        # walked) does not depend on the order the file system lists them in
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in names:
            path = Path(folder, name)
            if path.is_file():
                yield path


def kind_of(path: Path) -> str:
    """A file's suffix in lower case: DATA.JSONL and Data.Parquet are records as their lower-case names are
    (a Windows export's capitals)."""
    return path.suffix.lower()


def _its_text(files: Iterable[Path]) -> Path | None:
    """A dataset folder's text to name instead of the folder: its input.txt (nanoGPT's layout), else its only .txt."""
    texts = sorted(p for p in files if kind_of(p) == ".txt")
    return next((p for p in texts if p.name == "input.txt"), texts[0] if len(texts) == 1 else None)


def local_files(input_path: Path, exclude: Path | None = None, record_skipped: list[Path] | None = None) -> list[Path]:
    """A file, or every non-hidden file under a folder in sorted order (``exclude``: the output dir;
    prepared datasets in subfolders are left out, and listed in ``record_skipped``)."""
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        if input_path.exists():  # a pipe (/dev/stdin, <(...)), a socket, a device: read twice, or never ends
            raise DataError(
                f"--input {input_path} is not a regular file (a pipe?): write the text to a file and pass that"
            )
        raise DataError(f"--input {input_path} does not exist (expected a text file or a folder of them)")
    skip = exclude.resolve() if exclude is not None else None
    if holds_splits(input_path) and input_path.resolve() != skip:
        # a prepared dataset given whole (nanoGPT's data/shakespeare_char): its prepare.py, readme and meta.json
        # would be read as training text beside its input; subfolders like it are skipped below
        text = _its_text(p for p in input_path.iterdir() if p.is_file())
        raise DataError(
            f"--input {input_path} is a prepared dataset ({', '.join(f'{s}.bin' for s in SPLITS)}), not a folder of "
            + "text: "
            + (f"pass its text, --input {text}, or " if text is not None else "")
            + f"train on it as it is (--dataset={input_path.name} --data_dir={input_path.parent})"
        )
    files, skipped_datasets, in_output = [], set(), []
    for path in _walk_files(input_path):
        rel = path.relative_to(input_path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and skip in path.resolve().parents:
            in_output.append(path)
            continue
        dataset = path.parent != input_path and holds_splits(path.parent)
        if dataset:  # a prepared dataset (gptlab's or nanoGPT's) in a subfolder: data, not text
            skipped_datasets.add(path.parent)
            continue
        files.append(path)
    files.sort(key=lambda p: p.relative_to(input_path).as_posix())
    if not files and in_output:  # nanoGPT's layout, data/NAME/input.txt, named by its folder: the output's
        text = _its_text(in_output)
        own = input_path.resolve() == skip
        where = "is the dataset's own folder" if own else f"holds only the dataset's folder {skip}"
        raise DataError(
            f"--input {input_path} {where}, where its .bin files are written (files there are not read as input)"
            + (f": pass the text itself, --input {text}" if text is not None else "")
        )
    if not files:
        raise DataError(f"--input {input_path} holds no files")
    if skipped_datasets and record_skipped is not None:
        record_skipped.extend(sorted(skipped_datasets))
    return files


def local_corpus(input_path: Path, exclude: Path | None = None) -> Corpus:
    """A local text file (one document) or folder (one document per file). In a folder, files that are
    not text (not UTF-8, or holding NUL bytes: __pycache__, images) are skipped and counted; a single
    file that is not text is an error."""
    datasets: list[Path] = []
    files = local_files(input_path, exclude, datasets)
    documents, skipped = [], []
    for path in files:
        try:
            text = _read_text(path)
            if "\x00" in text:
                raise DataError(f"input file {path} holds NUL bytes: it is not text")
        except DataError:
            if input_path.is_file():
                raise
            skipped.append(path)
            continue
        documents.append(text)
    if not documents:
        raise DataError(f"--input {input_path} holds no UTF-8 text files ({len(skipped)} others skipped)")
    source = {
        "kind": "local",
        "path": str(input_path.resolve()),
        "files": len(documents),
        "chars": sum(map(len, documents)),
        "sha256": _sha256(documents),
    }
    if skipped:
        source["skipped_files"] = len(skipped)
        source["skipped_examples"] = [str(p.relative_to(input_path)) for p in skipped[:3]]
    if datasets:
        source["skipped_datasets"] = [str(p.relative_to(input_path)) for p in datasets]
    # records files taken as text (a .json, or .jsonl beside text files): their brackets and keys are training
    # text, with no separator per record; said, since `openwebtext --input x.json` parses the same file
    as_text = [p for p in files if kind_of(p) in (".json", *RECORD_SUFFIXES) and p not in skipped]
    if as_text:
        named = [str(p.relative_to(input_path)) if input_path.is_dir() else p.name for p in as_text[:3]]
        source["records_read_as_text"] = named + ([f"... {len(as_text)} in all"] if len(as_text) > 3 else [])
    return Corpus(documents, source)


def shakespeare_corpus(dataset_dir: Path, input_path: Path | None) -> Corpus:
    """Tiny Shakespeare: ``input_path``, else DIR/input.txt, else downloaded there (as nanoGPT does)."""
    if input_path is not None:
        return local_corpus(input_path, exclude=dataset_dir)
    cached = dataset_dir / "input.txt"
    if not cached.is_file():
        download(TINYSHAKESPEARE_URL, cached)
    corpus = local_corpus(cached)
    corpus.source.update(kind="tinyshakespeare", url=TINYSHAKESPEARE_URL)
    return corpus


# --- Hugging Face datasets, streamed ----------------------------------------------------------

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _import_datasets(what: str = "this dataset streams from Hugging Face") -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what}: pip install 'gptlab[data]' (datasets, tqdm)") from None
    return datasets


RECORD_SUFFIXES = (".jsonl", ".parquet")  # your own text as records; a .json file stays text


def is_saved_dataset(input_path: Path) -> bool:
    """Whether ``input_path`` is a folder `datasets`' ``save_to_disk`` wrote (Arrow files and their JSON
    state, or a DatasetDict's ``dataset_dict.json``): records, not text files."""
    if not input_path.is_dir():
        return False
    if (input_path / "dataset_dict.json").is_file():
        return True
    return (input_path / "state.json").is_file() and any(input_path.glob("*.arrow"))


def _saved_dataset_records(input_path: Path) -> Iterator[Any]:
    """The records of a ``save_to_disk`` folder, in order: a Dataset, or a DatasetDict's ``train`` split
    (or its only one)."""
    datasets = _import_datasets(
        f"{str(input_path)!r} is a folder that datasets' save_to_disk wrote: reading it needs datasets"
    )
    try:
        data = datasets.load_from_disk(str(input_path))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read the saved dataset {input_path} ({first})") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" in data:
            data = data["train"]
        elif len(data) == 1:
            data = next(iter(data.values()))
        else:
            raise DataError(f"--input {input_path} holds the splits {', '.join(data)}: expected 'train' or only one")
    return iter(data)


def is_records_input(input_path: Path) -> bool:
    """Whether ``--input`` is records (.jsonl/.parquet, a file or a folder of only those, or a folder
    `datasets`' save_to_disk wrote), read a record per document, rather than text files."""
    if is_saved_dataset(input_path):
        return True
    if input_path.is_file():
        return kind_of(input_path) in RECORD_SUFFIXES
    if not input_path.is_dir() or holds_splits(input_path):
        return False  # a prepared dataset's folder: local_files says what to pass instead (its own, or another)
    files = local_files(input_path)
    return bool(files) and all(kind_of(p) in RECORD_SUFFIXES for p in files)


def _local_data_files(input_path: Path, json_is_records: bool = True) -> tuple[str, list[str]]:
    """The `datasets` builder and files for local .jsonl/.json/.parquet input (``json_is_records``: a .json file
    holds records, as for openwebtext and fineweb_edu; for a dataset of one's own it is text)."""
    suffixes = LOCAL_BUILDERS if json_is_records else RECORD_SUFFIXES
    files = [p for p in local_files(input_path) if kind_of(p) in suffixes]
    builders = {LOCAL_BUILDERS[kind_of(p)] for p in files}
    if len(builders) != 1:
        found = "none" if not files else " and ".join(sorted({kind_of(p) for p in files}))
        kinds = ", ".join(suffixes)
        text = (
            ": for your own text, prepare it under a name of your own (gptlab prepare NAME --input PATH) and train "
            "with --dataset=NAME"
            if not files
            else ""
        )
        raise DataError(
            f"--input {input_path} must hold records, files of one kind of {kinds} or a folder datasets' "
            f"save_to_disk wrote (found {found}){text}"
        )
    return builders.pop(), [str(p) for p in files]


def _json_records(files: list[str]) -> Iterator[Any]:
    """Records of local JSON Lines files (or .json files holding one array of records), read with the
    standard library: your own records need no `datasets`."""
    for name in files:
        with open(name, encoding="utf-8-sig") as f:  # -sig: a Windows editor's byte-order mark, as datasets reads
            head = f.read(1024).lstrip()
            f.seek(0)
            if head.startswith("["):
                yield from json.load(f)
                continue
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{name}, line {number}: not a JSON record ({e.msg})") from None


def _parquet_records(files: list[str]) -> Iterator[Any]:
    """Records of local Parquet files, a row group at a time (pyarrow, which `datasets` brings)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet records needs pyarrow: pip install 'gptlab[data]'") from None
    for name in files:
        for batch in pq.ParquetFile(name).iter_batches():
            yield from batch.to_pylist()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs: any left is lone


def _texts(records: Records, text_field: str, where: str) -> Iterator[str]:
    """The text field of each record; a failure while streaming becomes one DataError line."""
    try:
        for i, record in enumerate(records, 1):  # counted from 1 (a one-file JSON Lines input's line, blanks aside)
            text = record.get(text_field) if isinstance(record, Mapping) else None
            if not isinstance(text, str):
                if isinstance(record, Mapping) and text_field in record:
                    kind = "null" if text is None else type(text).__name__
                    raise DataError(
                        f"record {i} of {where}: field {text_field!r} is {kind}, not a string; "
                        "--text_field NAME names another"
                    )
                fields = ", ".join(record) if isinstance(record, Mapping) else type(record).__name__
                raise DataError(
                    f"record {i} of {where} has no string field {text_field!r} (has: {fields}); "
                    "--text_field NAME names another"
                )
            # a lone surrogate ("\ud83d" in JSON: an emoji cut in two) is no character UTF-8 can store:
            # U+FFFD, as for undecodable bytes, for every tokenizer alike
            yield _LONE_SURROGATE.sub("\ufffd", text)
    except DataError:
        raise
    except Exception as e:  # network, parquet and hub errors surface here, mid-stream
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"reading {where} failed: {type(e).__name__}: {first}") from e


def _ask_the_hub(hub_path: str) -> None:
    """One request for the dataset's record before ``datasets`` opens it: offline, datasets retried five times,
    printing ten lines of 'Retrying in 8s' over about 40 s before its error. Raises what the request met; skipped
    under HF_HUB_OFFLINE or HF_DATASETS_OFFLINE (the cache is read)."""
    import datasets
    from huggingface_hub import HfApi, constants

    if not (constants.HF_HUB_OFFLINE or getattr(getattr(datasets, "config", None), "HF_HUB_OFFLINE", False)):
        HfApi().dataset_info(hub_path, timeout=100)  # datasets' own (a slow mirror or proxy answers in time)


def hub_corpus(
    hub_path: str,
    hub_config: str | None,
    input_path: Path | None = None,
    load_fn: Callable[[], Records] | None = None,
    text_field: str = "text",
    json_is_records: bool = True,
) -> Corpus:
    """A streamed Hugging Face dataset, or the same through local files (``input_path``) or ``load_fn``
    (``json_is_records``: as for _local_data_files)."""
    if load_fn is not None:
        records, source = load_fn(), {"kind": "load_fn", "dataset": hub_path}
    elif input_path is not None and is_saved_dataset(input_path):
        records = _saved_dataset_records(input_path)
        source = {"kind": "local", "dataset": hub_path, "path": str(input_path.resolve()), "format": "save_to_disk"}
    elif input_path is not None:
        builder, files = _local_data_files(input_path, json_is_records)
        records = _json_records(files) if builder == "json" else _parquet_records(files)
        source = {"kind": "local", "dataset": hub_path, "path": str(input_path.resolve()), "files": len(files)}
    else:
        datasets = _import_datasets()
        try:
            _ask_the_hub(hub_path)
            records = datasets.load_dataset(hub_path, name=hub_config, split="train", streaming=True)
        except Exception as e:  # offline, hub errors: one line with the way out
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(
                f"cannot open Hugging Face dataset {hub_path!r} ({first}): "
                "pass --input PATH to local .jsonl/.parquet files"
            ) from None
        source = {"kind": "huggingface", "dataset": hub_path, "config": hub_config, "split": "train"}
    return Corpus(_texts(records, text_field, source.get("path", hub_path)), source, split="documents")
