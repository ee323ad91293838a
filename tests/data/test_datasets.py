"""prepare_dataset / ensure_prepared: the nanoGPT layout, determinism, splits, caps, atomicity and
one-line errors. Everything runs offline on corpora of a few hundred KB at most."""

from __future__ import annotations

import contextlib
import io
import json
import platform
import sys
import urllib.error
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gptlab.data import sources
from gptlab.data.datasets import DATASETS, ensure_prepared, prepare_dataset, read_meta
from gptlab.data.storage import is_ready, token_dtype
from gptlab.data.tokenizers import GPT2Tokenizer, load_tokenizer
from gptlab.errors import ConfigError, DataError

SMALL = 150_000  # characters of stdlib source: big enough to be real, small enough to be instant


def tokens(dataset_dir: Path, split: str) -> np.ndarray:
    meta = read_meta(dataset_dir)
    return np.fromfile(dataset_dir / f"{split}.bin", dtype=meta["dtype"])


def decoded(dataset_dir: Path) -> str:
    tok = load_tokenizer(read_meta(dataset_dir)["tokenizer"])
    return tok.decode(np.concatenate([tokens(dataset_dir, "train"), tokens(dataset_dir, "val")]).tolist())


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(("vocab_size", "dtype"), [(65, np.uint16), (50257, np.uint16), (65536, np.uint16),
                                                   (65537, np.uint32), (128256, np.uint32)])  # fmt: skip
def test_token_dtype_fits_every_id(vocab_size: int, dtype: type) -> None:
    assert token_dtype(vocab_size) == dtype
    assert np.iinfo(dtype).max >= vocab_size - 1


@pytest.mark.parametrize("name", ["stdlib_char", "stdlib"])
def test_stdlib_prepares_identically_twice(tmp_path: Path, name: str) -> None:
    a = prepare_dataset(name, tmp_path / "a", max_chars=SMALL)
    b = prepare_dataset(name, tmp_path / "b", max_chars=SMALL)
    for file in ("train.bin", "val.bin", "meta.json"):
        assert (a / file).read_bytes() == (b / file).read_bytes(), file
    meta = read_meta(a)
    corpus = sources.stdlib_corpus(SMALL)
    n = meta["tokens"]["train"] + meta["tokens"]["val"]
    assert meta["tokens"]["train"] == int(n * 0.9)  # the last 10% of the token stream is val
    assert meta["source"]["python"] == platform.python_version()
    assert meta["source"]["files"] == len(list(corpus.documents)) > 1
    assert meta["dtype"] == "uint16" and meta["name"] == name
    assert (a / "train.bin").stat().st_size == meta["tokens"]["train"] * 2
    if name == "stdlib_char":
        assert decoded(a) == "".join(corpus.documents)
        assert meta["vocab_size"] == len(set("".join(corpus.documents)))
    else:  # GPT-2: each file followed by <|endoftext|>, as nanoGPT's openwebtext
        assert decoded(a) == "".join(doc + "<|endoftext|>" for doc in corpus.documents)
        assert meta["vocab_size"] == 50257


def test_stdlib_file_order_is_sorted_and_excludes_tests(tmp_path: Path) -> None:
    root = Path(__import__("sysconfig").get_paths()["stdlib"])
    files = sources.stdlib_files(root)
    assert files == sorted(files)
    assert not any(part in sources.STDLIB_EXCLUDED_DIRS for f in files for part in f.split("/")[:-1])
    assert "os.py" in files and not any("site-packages" in f for f in files)


def test_shakespeare_from_local_input_splits_like_nanogpt(tmp_path: Path, text_file: Path) -> None:
    out = prepare_dataset("shakespeare_char", tmp_path, input_path=text_file)
    text = text_file.read_text()
    meta = read_meta(out)
    assert meta["tokens"] == {"train": int(len(text) * 0.9), "val": len(text) - int(len(text) * 0.9)}
    assert meta["tokenizer"]["itos"]["0"] == "\n" and meta["vocab_size"] == len(set(text))
    assert decoded(out) == text
    # nanoGPT's meta.pkl beside it (its train.py and sample.py read a char vocabulary from there), as its
    # prepare.py builds it: chars = sorted(set(data))
    import pickle

    chars = sorted(set(text))
    nano = pickle.loads((out / "meta.pkl").read_bytes())
    stoi = {c: i for i, c in enumerate(chars)}
    assert nano == {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}

    out = prepare_dataset("shakespeare", tmp_path, input_path=text_file)
    assert read_meta(out)["tokenizer"]["name"] == "gpt2" and not (out / "meta.pkl").exists()
    assert decoded(out) == text + "<|endoftext|>"


def test_a_prepare_killed_after_writing_meta_pkl_leaves_no_ready_mismatch(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-prepare with another vocabulary killed just after its new meta.pkl was written: the old meta.json
    and bins were still there and 'ready', beside a meta.pkl of the new vocabulary (nanoGPT then reads the old
    ids with it). meta.json goes first: the dataset is not ready until the new one is complete."""
    import pickle

    from gptlab.data import datasets

    out = prepare_dataset("shakespeare_char", tmp_path, input_path=text_file)
    smaller = tmp_path / "smaller.txt"
    smaller.write_text("abcab\n" * 50)
    write_meta_pkl = datasets._write_nanogpt_meta

    def killed_after(dataset_dir: Path, tok: Any) -> None:
        write_meta_pkl(dataset_dir, tok)
        raise KeyboardInterrupt  # a kill -9 here runs no cleanup at all; the files are what it leaves

    monkeypatch.setattr(datasets, "_write_nanogpt_meta", killed_after)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("shakespeare_char", tmp_path, input_path=smaller)
    assert pickle.loads((out / "meta.pkl").read_bytes())["vocab_size"] == 4  # the new one, written
    assert not is_ready(out)


def test_shakespeare_offline_is_one_line_error_naming_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        prepare_dataset("shakespeare_char", tmp_path)
    message = one_line(err)
    assert "cannot download" in message and "--input PATH" in message and "name resolution" in message
    assert not (tmp_path / "shakespeare_char").exists()  # a failed first prepare leaves nothing behind


def test_shakespeare_downloads_once_into_dataset_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text_file: Path
) -> None:
    calls = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        calls.append((url, timeout))
        return io.BytesIO(text_file.read_bytes())

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    out = prepare_dataset("shakespeare_char", tmp_path)
    assert calls == [(sources.TINYSHAKESPEARE_URL, sources.DOWNLOAD_TIMEOUT_S)]
    assert (out / "input.txt").read_bytes() == text_file.read_bytes()  # cached as nanoGPT does
    assert read_meta(out)["source"]["url"] == sources.TINYSHAKESPEARE_URL
    prepare_dataset("shakespeare", tmp_path)  # a different dataset dir: downloads again into its own
    prepare_dataset("shakespeare_char", tmp_path)  # cached input.txt: no second download
    assert len(calls) == 2


def test_local_folder_sorted_hidden_skipped_and_default_tokenizers(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / "b.txt").write_text("second document " * 20)
    (src / "a.md").write_text("first document " * 20)
    (src / "sub" / "c.txt").write_text("third one " * 20)
    (src / ".hidden.txt").write_text("never")
    (src / ".git" / "config").write_text("never")
    char = prepare_dataset("notes_char", tmp_path / "data", input_path=src)
    assert decoded(char) == "first document " * 20 + "second document " * 20 + "third one " * 20
    meta = read_meta(char)
    assert meta["source"]["files"] == 3 and meta["tokenizer"]["name"] == "char"
    bpe = prepare_dataset("notes", tmp_path / "data", input_path=src)
    assert read_meta(bpe)["tokenizer"]["name"] == "gpt2"
    assert decoded(bpe).count("<|endoftext|>") == 3
    forced = prepare_dataset("notes2", tmp_path / "data", input_path=src, tokenizer="char")
    assert read_meta(forced)["tokenizer"]["name"] == "char"


def test_local_input_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \x80")
    with pytest.raises(DataError, match=r"bad\.txt is not UTF-8 text") as err:
        prepare_dataset("mine", tmp_path / "data", input_path=bad)
    one_line(err)
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset("mine", tmp_path / "data", input_path=tmp_path / "missing.txt")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a")
    with pytest.raises(DataError, match="0 train and 1 val tokens: the corpus is too small to split"):
        prepare_dataset("mine", tmp_path / "data", input_path=tiny, tokenizer="char")
    assert not (tmp_path / "data").exists()  # failed first prepares leave no directories behind


def test_option_errors(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer='gpt2' does not fit dataset 'shakespeare_char'"):
        prepare_dataset("shakespeare_char", tmp_path, input_path=text_file, tokenizer="gpt2")
    with pytest.raises(ConfigError, match=r"tokenizer='chars'.*did you mean 'char'"):
        prepare_dataset("mine", tmp_path, input_path=text_file, tokenizer="chars")
    with pytest.raises(ConfigError, match="max_tokens=0 must be a positive integer"):
        prepare_dataset("mine", tmp_path, input_path=text_file, max_tokens=0)
    with pytest.raises(ConfigError, match=r"val_fraction=1\.5"):
        prepare_dataset("mine", tmp_path, input_path=text_file, val_fraction=1.5)
    with pytest.raises(ConfigError, match="plain directory name"):
        prepare_dataset("../escape", tmp_path, input_path=text_file)
    with pytest.raises(ConfigError, match="text_field='body' is for records; dataset 'stdlib' is text"):
        prepare_dataset("stdlib", tmp_path, text_field="body")
    with pytest.raises(ConfigError, match="take no --input"):
        prepare_dataset("stdlib", tmp_path, input_path=text_file)
    with pytest.raises(DataError, match=r"not one of .*'shakespeare'.*did you mean 'shakespeare'") as err:
        prepare_dataset("shakespear", tmp_path)
    assert "--input PATH" in one_line(err)
    assert list(tmp_path.iterdir()) == [text_file]  # no directory made for a refused prepare


# --- streamed (Hugging Face) datasets ---------------------------------------------------------

DOCS = [f"Document number {i}: " + "some words about things " * (i % 7 + 1) for i in range(40)]


def records() -> list[dict[str, str]]:
    return [{"text": t, "id": str(i)} for i, t in enumerate(DOCS)]


def test_openwebtext_stream_splits_by_document_with_eot(tmp_path: Path) -> None:
    out = prepare_dataset("openwebtext", tmp_path, load_fn=records, val_fraction=0.1, num_proc=1)
    meta = read_meta(out)
    tok = GPT2Tokenizer()
    val_docs = DOCS[::10]  # every 10th document, starting with the first
    train_docs = [d for i, d in enumerate(DOCS) if i % 10]
    assert tok.decode(tokens(out, "val").tolist()) == "".join(d + "<|endoftext|>" for d in val_docs)
    assert tok.decode(tokens(out, "train").tolist()) == "".join(d + "<|endoftext|>" for d in train_docs)
    assert meta["documents"] == 40 and meta["source"]["kind"] == "load_fn"


def test_stream_in_a_process_pool_matches_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptlab.data import datasets

    monkeypatch.setattr(datasets, "DOCS_PER_TASK", 3)  # many small tasks, so order across workers matters
    one = prepare_dataset("openwebtext", tmp_path / "one", load_fn=records, val_fraction=0.1, num_proc=1)
    two = prepare_dataset("openwebtext", tmp_path / "two", load_fn=records, val_fraction=0.1, num_proc=2)
    for file in ("train.bin", "val.bin", "meta.json"):
        assert (one / file).read_bytes() == (two / file).read_bytes(), file


def _sigint_handler(_: Any) -> Any:
    import signal

    return signal.getsignal(signal.SIGINT)


def test_tokenizing_workers_leave_ctrl_c_to_the_parent() -> None:
    """The terminal's Ctrl-C reaches the whole process group: a worker it killed mid-reply left the pool's
    terminate() waiting for ever (a hung `gptlab prepare --num_proc 2` until a second Ctrl-C). Workers ignore it."""
    import multiprocessing
    import signal

    from gptlab.data.datasets import _init_worker

    with multiprocessing.get_context().Pool(1, _init_worker, (GPT2Tokenizer().to_meta(),)) as pool:
        assert pool.apply(_sigint_handler, (None,)) == signal.SIG_IGN


def test_stream_caps_documents_and_tokens_exactly(tmp_path: Path) -> None:
    out = prepare_dataset("fineweb_edu", tmp_path, load_fn=records, max_documents=5, val_fraction=0.2)
    tok = GPT2Tokenizer()
    assert decoded(out) == "".join(d + "<|endoftext|>" for d in [*DOCS[1:5], DOCS[0]])  # train, then val
    assert sum(read_meta(out)["tokens"].values()) == sum(len(tok.encode(d)) + 1 for d in DOCS[:5])
    out = prepare_dataset("fineweb_edu", tmp_path, load_fn=records, max_tokens=100, val_fraction=0.2, num_proc=2)
    assert sum(read_meta(out)["tokens"].values()) == 100
    assert read_meta(out)["caps"] == {"max_documents": None, "max_tokens": 100}


def test_empty_documents_are_told_from_ones_a_cap_cut(tmp_path: Path) -> None:
    """Documents that are all empty are refused (only end-of-text tokens), saying the cap that left only those;
    one whose text max_tokens cut to a single token still holds text."""
    empty_first = [{"text": ""}] * 5 + [{"text": t} for t in DOCS[:5]]
    with pytest.raises(DataError, match=r"holds no text as cut by --max_documents=5: its 5 documents are empty"):
        prepare_dataset("fineweb_edu", tmp_path / "a", load_fn=lambda: empty_first, max_documents=5, val_fraction=0.5)
    cut = [{"text": ""}, {"text": ""}, {"text": "hello world and more"}]
    out = prepare_dataset("fineweb_edu", tmp_path / "b", load_fn=lambda: cut, max_tokens=3, val_fraction=0.5)
    assert read_meta(out)["tokens"] == {"train": 1, "val": 2}


def test_a_records_corpus_records_the_share_it_held_out(tmp_path: Path) -> None:
    """Every n-th document is validation: val_fraction=0.4 holds out every 2nd, half of them, and meta.json
    recorded 0.4."""
    out = prepare_dataset("fineweb_edu", tmp_path, load_fn=records, max_documents=6, val_fraction=0.4)
    assert read_meta(out)["val_fraction"] == 0.5
    assert decoded(out).count("<|endoftext|>") == 6 and decoded(out).endswith(DOCS[4] + "<|endoftext|>")


def test_stream_bad_records_and_missing_datasets_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"record 2 of .* has no string field 'text' \(has: body\)"):
        prepare_dataset("openwebtext", tmp_path, load_fn=lambda: [{"text": "ok"}, {"body": "x"}])
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r"pip install 'gptlab\[data\]'"):
        prepare_dataset("openwebtext", tmp_path)


def test_hub_offline_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(path: str, **kwargs: object) -> None:
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    from gptlab.data import sources

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(sources, "_ask_the_hub", lambda hub_path: None)  # the Hub answers; datasets then fails
    with pytest.raises(DataError) as err:
        prepare_dataset("fineweb_edu", tmp_path)
    message = one_line(err)
    assert "'HuggingFaceFW/fineweb-edu'" in message and "--input PATH" in message


def test_an_unreachable_hub_is_said_before_datasets_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, datasets retried its connection five times (ten 'Retrying in 8s' lines, ~40 s) before the error:
    one request to the Hub first, and its failure is the one line."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from gptlab.data import sources

    def dataset_info(self: object, repo_id: str, **kwargs: object) -> None:
        asked.append((repo_id, kwargs.get("timeout")))
        raise ConnectionError("[Errno -2] Name or service not known")

    def load_dataset(path: str, **kwargs: object) -> None:
        raise AssertionError("datasets was asked after the Hub could not be reached")

    asked: list[tuple[str, object]] = []
    fake_datasets = SimpleNamespace(load_dataset=load_dataset, config=SimpleNamespace(HF_HUB_OFFLINE=False))
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DataError) as err:
        prepare_dataset("openwebtext", tmp_path)
    assert one_line(err) == (
        "cannot open Hugging Face dataset 'Skylion007/openwebtext' ([Errno -2] Name or service not known): pass "
        "--input PATH to local .jsonl/.parquet files"
    )
    assert asked == [("Skylion007/openwebtext", 100)]
    fake_datasets.config.HF_HUB_OFFLINE = True  # HF_DATASETS_OFFLINE=1: the cache is read, no request
    sources._ask_the_hub("Skylion007/openwebtext")
    fake_datasets.config.HF_HUB_OFFLINE = False
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1 likewise
    sources._ask_the_hub("Skylion007/openwebtext")
    assert len(asked) == 1


@pytest.mark.parametrize("name", ["openwebtext", "fineweb_edu"])
def test_hub_datasets_read_local_jsonl_without_the_datasets_package(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prepare openwebtext --input shards/`: local records need no `datasets` (made unimportable here)."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    src = tmp_path / "jsonl"
    src.mkdir()
    for part in range(2):  # two shards, read in sorted order
        with open(src / f"part-{part}.{'jsonl' if part == 0 else 'JSONL'}", "w") as f:  # a capital suffix too
            for rec in records()[part * 20 : (part + 1) * 20]:
                f.write(json.dumps(rec) + "\n")
    out = prepare_dataset(name, tmp_path / "data", input_path=src, val_fraction=0.1, num_proc=1)
    reference = prepare_dataset(name, tmp_path / "ref", load_fn=records, val_fraction=0.1, num_proc=1)
    for file in ("train.bin", "val.bin"):
        assert (out / file).read_bytes() == (reference / file).read_bytes()
    assert read_meta(out)["source"]["files"] == 2


@pytest.mark.parametrize("file_name", ["docs.jsonl", "DOCS.JSONL"])
def test_your_own_jsonl_is_read_as_records_with_a_chosen_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_name: str
) -> None:
    """`gptlab prepare mine --input docs.jsonl`: one document per record (not the JSON text itself), the
    field named by --text_field; a missing field says how to name another. A capital suffix (a Windows
    export's) is records too, not text."""
    docs = [f"document {i}: the quick brown fox jumps over the lazy dog." for i in range(30)]
    src = tmp_path / file_name
    src.write_text("".join(json.dumps({"content": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    with pytest.raises(DataError, match=r"no string field 'text' \(has: content, id\); --text_field NAME"):
        prepare_dataset("mine", tmp_path / "data", input_path=src, num_proc=1)
    out = prepare_dataset("mine", tmp_path / "data", input_path=src, num_proc=1, text_field="content")
    tok = GPT2Tokenizer()
    ids = np.concatenate([np.fromfile(out / f"{split}.bin", dtype=np.uint16) for split in ("train", "val")])
    text = tok.decode(ids.tolist())
    assert "{" not in text and text.count("<|endoftext|>") == len(docs)  # records' text, each one a document
    assert read_meta(out)["tokens"]["val"] > 0


def test_local_records_read_as_datasets_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard-library JSON reader and the pyarrow Parquet reader give the records, in order, that
    Hugging Face `datasets` streams from the same files (the reference, where installed); a .json file
    may hold one array of records; a broken line names its file and line."""
    from gptlab.data.sources import _json_records, _parquet_records

    recs = [{"text": f"doc {i} \u00e9\n", "n": i} for i in range(25)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:12]) + "\n")
    (tmp_path / "b.json").write_text(json.dumps(recs[12:]))
    ours = list(_json_records([str(tmp_path / "a.jsonl"), str(tmp_path / "b.json")]))
    assert ours == recs
    (tmp_path / "bom.jsonl").write_text('{"text": "a"}\n', encoding="utf-8-sig")  # a Windows editor's
    (tmp_path / "bom.json").write_text('[{"text": "b"}]', encoding="utf-8-sig")
    assert list(_json_records([str(tmp_path / "bom.jsonl"), str(tmp_path / "bom.json")])) == [
        {"text": "a"},
        {"text": "b"},
    ]
    pq = pytest.importorskip("pyarrow.parquet", exc_type=ImportError)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "c.parquet", row_group_size=10)
    assert list(_parquet_records([str(tmp_path / "c.parquet")])) == recs
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
        for builder, files in (("json", ["a.jsonl"]), ("parquet", ["c.parquet"])):
            paths = [str(tmp_path / f) for f in files]
            theirs = list(datasets.load_dataset(builder, data_files=paths, split="train", streaming=True))
            mine = list(_json_records(paths) if builder == "json" else _parquet_records(paths))
            assert mine == theirs, builder
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not a JSON record"):
        list(_json_records([str(tmp_path / "bad.jsonl")]))


# --- ensure_prepared and atomicity ------------------------------------------------------------


def test_ensure_prepared_auto_prepares_embedded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "STDLIB_MAX_CHARS", SMALL)
    out = ensure_prepared("stdlib_char", tmp_path)
    assert out == tmp_path / "stdlib_char" and is_ready(out)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert ensure_prepared("stdlib_char", tmp_path) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp  # not prepared again
    # A damaged split makes it not ready; the embedded dataset is simply prepared again.
    with open(out / "val.bin", "r+b") as f:
        f.truncate(10)
    assert not is_ready(out)
    assert is_ready(ensure_prepared("stdlib_char", tmp_path))


def _ensure_in_child(data_dir: Path) -> bytes:
    out = ensure_prepared("stdlib_char", data_dir)
    return (out / "train.bin").read_bytes() + (out / "meta.json").read_bytes()


def test_concurrent_ensure_prepared_is_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(sources, "STDLIB_MAX_CHARS", SMALL)  # forked children inherit the patch
    with multiprocessing.get_context("fork").Pool(3) as pool:  # like DDP ranks starting at once
        results = pool.map(_ensure_in_child, [tmp_path] * 3)
    assert results[0] == results[1] == results[2]
    assert sorted(p.name for p in (tmp_path / "stdlib_char").iterdir()) == [
        ".prepare.lock", "meta.json", "meta.pkl", "train.bin", "val.bin",
    ]  # fmt: skip


def test_ensure_prepared_errors_name_the_command(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default data dir is ./data
    with pytest.raises(DataError) as err:
        ensure_prepared("shakespeare_char", tmp_path)
    assert one_line(err) == (
        f"dataset 'shakespeare_char' is not prepared in {tmp_path / 'shakespeare_char'}: "
        f"run `gptlab prepare shakespeare_char --data_dir {tmp_path}` (add --input PATH when offline)"
    )
    with pytest.raises(DataError, match=r"run `gptlab prepare openwebtext`") as err:
        ensure_prepared("openwebtext")  # the default data dir: no --data_dir in the command
    with pytest.raises(DataError, match=r"did you mean 'stdlib_char'") as err:
        ensure_prepared("stdlib_chr", tmp_path)
    assert f"gptlab prepare stdlib_chr --input PATH --data_dir {tmp_path}`" in one_line(err)
    mine = prepare_dataset("mine", tmp_path, input_path=text_file)
    assert ensure_prepared("mine", tmp_path) == mine  # any prepared name is usable


def test_unknown_dataset_names_what_data_dir_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo of a dataset the user prepared is suggested, not a built-in; a data_dir that does not exist
    is said to, not taken for a folder without the dataset."""
    (tmp_path / "d" / "mine_char").mkdir(parents=True)
    (tmp_path / "d" / "mine_char" / "train.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        ensure_prepared("mine_chr", "d")
    assert "; d holds 'mine_char' (did you mean 'mine_char'?); " in one_line(err)
    assert one_line(err).endswith("run `gptlab prepare mine_chr --input PATH --data_dir d`")
    with pytest.raises(DataError) as err:
        ensure_prepared("mine_char", "nope")
    assert f"is not prepared: data_dir='nope' does not exist (relative paths start at {tmp_path})" in one_line(err)


def test_interrupted_prepare_keeps_old_dataset_and_leaves_no_temp_files(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptlab.data import datasets

    out = prepare_dataset("mine", tmp_path, input_path=text_file)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "_write_tokens", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("mine", tmp_path, input_path=text_file, tokenizer="char")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, still ready
    assert is_ready(out)
    # A first prepare that dies leaves no directory that could look ready.
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("fresh", tmp_path, input_path=text_file)
    assert not (tmp_path / "fresh").exists()


def test_registry_entries_are_complete() -> None:
    assert set(DATASETS) >= {"stdlib", "stdlib_char", "shakespeare", "shakespeare_char", "openwebtext", "fineweb_edu"}
    assert {name for name, spec in DATASETS.items() if spec.auto} == {"stdlib", "stdlib_char"}
    assert all(spec.tokenizer == ("char" if name.endswith("_char") else "gpt2") for name, spec in DATASETS.items())


def _nanogpt_char_dataset(data_dir: Path) -> tuple[Path, str, list[str], np.ndarray, int]:
    """What nanoGPT's shakespeare_char/prepare.py writes (uint16 bins, meta.pkl), for a short text:
    (its directory, the text, the characters, the ids, the train split's length)."""
    import pickle

    data = "first citizen: before we proceed any further, hear me speak.\n" * 40
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in data], dtype=np.uint16)
    char_dir = data_dir / "shakespeare_char"
    char_dir.mkdir(parents=True)
    n = int(len(ids) * 0.9)
    ids[:n].tofile(char_dir / "train.bin")
    ids[n:].tofile(char_dir / "val.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    (char_dir / "meta.pkl").write_bytes(pickle.dumps(meta))
    return char_dir, data, chars, ids, n


def test_a_dataset_nanogpt_prepared_is_used_as_it_is(tmp_path: Path, text_file: Path) -> None:
    """train.bin / val.bin (uint16) and meta.pkl as nanoGPT's shakespeare_char/prepare.py writes them:
    gptlab trains on them as they are, writing nothing there (so a read-only copy works, and ranks cannot race);
    without meta.pkl (openwebtext) the ids are GPT-2 BPE's. A directory gptlab's prepare wrote is never
    taken for one, and ids past the vocabulary are refused."""
    char_dir, data, chars, ids, n = _nanogpt_char_dataset(tmp_path / "data")
    assert ensure_prepared("shakespeare_char", tmp_path / "data") == char_dir
    meta = read_meta(char_dir)
    assert sorted(p.name for p in char_dir.iterdir()) == ["meta.pkl", "train.bin", "val.bin"]  # nothing written
    assert meta["tokens"] == {"train": n, "val": len(ids) - n} and meta["vocab_size"] == len(chars)
    assert meta["source"]["kind"] == "nanogpt"
    assert load_tokenizer(meta["tokenizer"]).decode(ids[:15].tolist()) == data[:15]
    owt = tmp_path / "data" / "openwebtext"
    owt.mkdir()
    np.array(GPT2Tokenizer().encode("hello world") * 10, dtype=np.uint16).tofile(owt / "train.bin")
    np.array(GPT2Tokenizer().encode("bye") * 10, dtype=np.uint16).tofile(owt / "val.bin")
    assert read_meta(ensure_prepared("openwebtext", tmp_path / "data"))["tokenizer"]["name"] == "gpt2"
    # ids past meta.pkl's vocabulary: not nanoGPT's tokens for it
    (char_dir / "val.bin").write_bytes(np.array([1, 500], dtype=np.uint16).tobytes())
    with pytest.raises(DataError, match=r"val.bin holds token id 500, past meta.pkl's vocabulary of"):
        ensure_prepared("shakespeare_char", tmp_path / "data")
    # a nanoGPT folder a split short: the missing file is named (not a meta.json nanoGPT never writes)
    (owt / "val.bin").unlink()
    with pytest.raises(DataError, match=r"'openwebtext' is damaged \(.*openwebtext has no val.bin \(a dataset needs"):
        ensure_prepared("openwebtext", tmp_path / "data")
    # a gptlab dataset that lost its meta.json is damaged, not a nanoGPT one (its char vocabulary is not GPT-2's)
    mine = prepare_dataset("mine_char", tmp_path / "data", text_file)
    (mine / "meta.json").unlink()
    with pytest.raises(DataError, match=r"'mine_char' in .* is damaged: .*no meta.json"):
        ensure_prepared("mine_char", tmp_path / "data")


def test_a_damaged_dataset_says_what_is_wrong(tmp_path: Path, text_file: Path) -> None:
    """A truncated .bin or a broken meta.json is named, not reported as 'not prepared'."""
    dataset = prepare_dataset("mine_char", tmp_path, text_file)
    train = dataset / "train.bin"
    train.write_bytes(train.read_bytes()[:-4])
    with pytest.raises(
        DataError, match=r"'mine_char' in .* is damaged: .*train.bin holds .* bytes, meta.json promises"
    ):
        ensure_prepared("mine_char", tmp_path)
    (dataset / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"is damaged: cannot read .*meta.json"):
        ensure_prepared("mine_char", tmp_path)
    # a dtype no token file has, sizes to match (a float64 file read as ids: a traceback in the batch loader)
    meta = read_meta(prepare_dataset("mine_char", tmp_path, text_file))
    (dataset / "meta.json").write_text(json.dumps({**meta, "dtype": "float64"}))
    for split in ("train", "val"):
        (dataset / f"{split}.bin").write_bytes(bytes(8 * meta["tokens"][split]))
    with pytest.raises(DataError, match=r"is damaged: .*meta.json gives dtype='float64': token files are uint16 or"):
        ensure_prepared("mine_char", tmp_path)
    # fields the loader, the run and its startup report read, of the wrong type: tracebacks in each of them
    for field, value, said in [
        ("vocab_size", [65], r"vocab_size=\[65\] is not a positive integer up to 2\*\*32"),
        ("vocab_size", 10**400, "vocab_size=1000"),
        ("tokens", {"train": "9", "val": 1}, r"tokens\['train'\]='9' is not a count of tokens"),
        ("source", [1], r"source=\[1\] is not a JSON object"),
        ("tokenizer", "char", r"tokenizer='char' is not a JSON object"),
    ]:
        (dataset / "meta.json").write_text(json.dumps({**meta, field: value}))
        with pytest.raises(DataError, match=rf"meta.json is damaged: {said}.*; prepare the dataset again$"):
            read_meta(dataset)


def test_a_folder_skips_binaries_and_datasets_inside_it(tmp_path: Path, text_file: Path) -> None:
    """`--input .` in a project: __pycache__ and other non-text files are skipped and counted, and the
    prepared datasets under data/ (train.bin/val.bin) are never read back in as text."""
    project = tmp_path / "project"
    (project / "pkg" / "__pycache__").mkdir(parents=True)
    (project / "pkg" / "main.py").write_text(text_file.read_text())
    (project / "pkg" / "__pycache__" / "main.cpython-312.pyc").write_bytes(b"\x00\xff\xfe binary")
    (project / "notes.txt").write_bytes(b"nul\x00inside but valid utf-8")
    first = prepare_dataset("one_char", project / "data", project)
    source = read_meta(first)["source"]
    assert source["files"] == 1 and source["skipped_files"] == 2
    assert "pkg/__pycache__/main.cpython-312.pyc" in source["skipped_examples"]
    second = prepare_dataset("two_char", project / "data", project)  # one_char's files are not its text
    assert (
        read_meta(second)["source"]["files"] == 1 and read_meta(second)["vocab_size"] == read_meta(first)["vocab_size"]
    )
    assert read_meta(second)["source"]["skipped_datasets"] == ["data/one_char"]
    # a prepared dataset given whole (nanoGPT's data/shakespeare_char: input.txt, prepare.py, readme.md, the
    # .bin files and meta.pkl) is refused, not read with its scripts and meta files as text; its text is named
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("train.bin", "val.bin"):
        (flat / name).write_bytes(b"\x01\x00\x02\x00")
    (flat / "prepare.py").write_text("import pickle\n")
    (flat / "input.txt").write_text(text_file.read_text())
    (flat / "readme.md").write_text("tiny shakespeare\n")
    with pytest.raises(DataError) as err:
        prepare_dataset("flat_char", tmp_path / "d2", flat)
    assert one_line(err) == (
        f"--input {flat} is a prepared dataset (train.bin, val.bin), not a folder of text: pass its text, "
        f"--input {flat / 'input.txt'}, or train on it as it is (--dataset=flat --data_dir={tmp_path})"
    )
    assert read_meta(prepare_dataset("flat_char", tmp_path / "d2", flat / "input.txt"))["source"]["files"] == 1
    (flat / "input.txt").unlink()
    with pytest.raises(DataError, match=r"not a folder of text: train on it as it is \(--dataset=flat "):
        prepare_dataset("flat_char", tmp_path / "d2", flat)
    # a single file is what the user named: one that is not text is an error, not a skip
    with pytest.raises(DataError, match=r"notes\.txt holds NUL bytes: it is not text"):
        prepare_dataset("nul_char", tmp_path / "d3", project / "notes.txt")
    (flat / "empty").mkdir()
    (flat / "empty" / "blank.txt").write_text("")
    with pytest.raises(DataError, match=r"empty holds no text to build a char vocabulary from"):
        prepare_dataset("blank_char", tmp_path / "d5", flat / "empty")
    with pytest.raises(DataError, match=r"blank\.txt holds no text: its one document is empty"):
        prepare_dataset("blank1", tmp_path / "d7", flat / "empty" / "blank.txt", tokenizer="gpt2")  # not "0 train"
    for i in range(10):  # under GPT-2 each empty file was one end-of-text token: a dataset of nothing else
        (flat / "empty" / f"blank{i}.txt").write_text("")
    with pytest.raises(DataError, match=r"empty holds no text: its 11 documents are empty"):
        prepare_dataset("blank", tmp_path / "d6", flat / "empty", tokenizer="gpt2")
    with pytest.raises(ConfigError, match=r"text_field=.body. is for \.jsonl/\.parquet records"):
        prepare_dataset("field_char", tmp_path / "d4", project / "pkg", text_field="body")


def test_windows_line_endings_are_read_as_nanogpt_reads_text(tmp_path: Path) -> None:
    """nanoGPT's prepare.py opens text files in text mode: CR LF is one newline, and no CR enters a char
    vocabulary or shifts its split."""
    unix, windows = tmp_path / "unix.txt", tmp_path / "windows.txt"
    unix.write_bytes(b"to be, or not to be:\nthat is the question.\n" * 50)
    windows.write_bytes(unix.read_bytes().replace(b"\n", b"\r\n"))
    a = prepare_dataset("unix_char", tmp_path / "data", unix)
    b = prepare_dataset("windows_char", tmp_path / "data", windows)
    assert read_meta(a)["tokenizer"] == read_meta(b)["tokenizer"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in ("train.bin", "val.bin"))


def test_char_vocabulary_is_what_max_tokens_keeps(tmp_path: Path) -> None:
    """Characters after the --max_tokens cut never reach the dataset, so they are not in its vocabulary."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("abab" * 10)
    (folder / "b.txt").write_text("xyz" * 10)
    out = prepare_dataset("mine_char", tmp_path / "data", input_path=folder, max_tokens=30)
    meta = read_meta(out)
    assert sum(meta["tokens"].values()) == 30
    assert load_tokenizer(meta["tokenizer"]).vocab_size == 2  # 'a', 'b': the cut ends inside a.txt
    full = prepare_dataset("all_char", tmp_path / "data", input_path=folder)
    assert load_tokenizer(read_meta(full)["tokenizer"]).vocab_size == 5


@pytest.mark.skipif(platform.system() == "Windows", reason="symlinks need privileges on Windows")
def test_a_folder_follows_symlinked_folders_once(tmp_path: Path) -> None:
    """A corpus pooled with symlinks is read through them; a link back up the tree is not a loop."""
    pool, shared = tmp_path / "pool", tmp_path / "shared"
    pool.mkdir()
    shared.mkdir()
    (pool / "own.txt").write_text("aaaa")
    (shared / "linked.txt").write_text("bbbb")
    (pool / "shared").symlink_to(shared, target_is_directory=True)
    (pool / "loop").symlink_to(pool, target_is_directory=True)
    files = sources.local_files(pool)
    assert [p.relative_to(pool).as_posix() for p in files] == ["own.txt", "shared/linked.txt"]


@pytest.mark.skipif(platform.system() == "Windows", reason="symlinks need privileges on Windows")
def test_a_folder_reached_twice_is_read_where_the_sorted_walk_meets_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real folder and a link to it: which path was kept followed the order the file system lists them
    in (ext4 and tmpfs differ), so the same tree gave another document order, split and sha256."""
    import os

    tree = tmp_path / "tree"
    (tree / "z_real").mkdir(parents=True)
    (tree / "m").mkdir()
    (tree / "z_real" / "x.txt").write_text("ZZZZ")
    (tree / "m" / "y.txt").write_text("MMMM")
    (tree / "a_link").symlink_to(tree / "z_real", target_is_directory=True)
    scandir = os.scandir
    kept = []
    for reverse in (False, True):

        def listed(path: Any, reverse: bool = reverse) -> _Entries:
            with scandir(path) as it:
                return _Entries(sorted(it, key=lambda e: e.name, reverse=reverse))

        monkeypatch.setattr(os, "scandir", listed)
        kept.append([p.relative_to(tree).as_posix() for p in sources.local_files(tree)])
    assert kept[0] == kept[1] == ["a_link/x.txt", "m/y.txt"]


class _Entries:
    """os.DirEntry objects in a given order, as os.scandir's iterator and context manager (what os.walk uses)."""

    def __init__(self, entries: list[Any]) -> None:
        self._it = iter(entries)

    def __iter__(self) -> _Entries:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def __enter__(self) -> _Entries:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


def test_a_pipe_as_input_is_said_to_be_one(tmp_path: Path) -> None:
    """`--input /dev/stdin` (or <(...)): it was said not to exist."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"--input .*fifo is not a regular file \(a pipe\?\): write the text to a"):
        sources.local_files(fifo)


@pytest.mark.parametrize("layout", ["dataset", "dataset_dict"])
def test_a_save_to_disk_folder_is_read_as_its_records(tmp_path: Path, layout: str) -> None:
    """A folder `datasets.save_to_disk` wrote is records (its .arrow files), not text: it was tokenized as its
    JSON state files. Read with load_from_disk, a DatasetDict's train split; the same bytes as the records."""
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list(records())
    if layout == "dataset_dict":
        data = datasets.DatasetDict({"train": data, "test": data.select(range(3))})
    data.save_to_disk(str(tmp_path / "saved"))
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records()))
    for name in ("mine", "openwebtext"):
        out = prepare_dataset(name, tmp_path / name, input_path=tmp_path / "saved", num_proc=1)
        reference = prepare_dataset(name, tmp_path / f"{name}_ref", input_path=jsonl, num_proc=1)
        for file in ("train.bin", "val.bin"):
            assert (out / file).read_bytes() == (reference / file).read_bytes()
        assert read_meta(out)["source"]["format"] == "save_to_disk"
    datasets.Dataset.from_list([{"text": None}]).save_to_disk(str(tmp_path / "null"))
    with pytest.raises(DataError, match=r"record 1 of .*: field 'text' is null, not a string"):
        prepare_dataset("mine", tmp_path / "n", input_path=tmp_path / "null", num_proc=1)


def test_a_save_to_disk_folder_without_datasets_says_what_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Local files, not a stream: the message said "this dataset streams from Hugging Face"."""
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text("{}")
    (saved / "data-00000-of-00001.arrow").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r"saved' is a folder that datasets' save_to_disk wrote: reading it needs "):
        prepare_dataset("mine", tmp_path / "data", input_path=saved, num_proc=1)


def test_a_failed_prepare_leaves_a_nanogpt_dataset_usable(tmp_path: Path) -> None:
    """A prepare that fails (a mistyped --input, an offline download) into a directory nanoGPT's
    prepare.py wrote must not turn that dataset into a 'damaged' one: it changed none of its files."""
    char_dir = _nanogpt_char_dataset(tmp_path / "data")[0]
    assert ensure_prepared("shakespeare_char", tmp_path / "data") == char_dir
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset("shakespeare_char", tmp_path / "data", tmp_path / "missing.txt")
    assert ensure_prepared("shakespeare_char", tmp_path / "data") == char_dir  # DataError: '... is damaged'


def test_a_lone_surrogate_in_json_records_is_a_replacement_character(tmp_path: Path) -> None:
    """JSON Lines may hold an escaped lone surrogate ("\\ud83d", an emoji cut in two: json.loads accepts it),
    which UTF-8 cannot store (its meta.json write failed after the old dataset's files were replaced): it
    becomes U+FFFD, as undecodable bytes do; a valid escaped pair stays its emoji."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"doc {i} ok"}) + "\n" for i in range(20)), encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(f'{{"text": "doc {i} cut \\ud83d, whole \\ud83d\\ude00"}}\n' for i in range(20)))
    out = prepare_dataset("recs_char", tmp_path / "data", good)
    out = prepare_dataset("recs_char", tmp_path / "data", bad)
    assert is_ready(out)
    chars = set(load_tokenizer(read_meta(out)["tokenizer"]).decode(list(range(read_meta(out)["vocab_size"]))))
    assert {"\ufffd", "\U0001f600"} <= chars and not any("\ud800" <= c <= "\udfff" for c in chars)


def test_a_meta_that_cannot_be_written_leaves_the_old_dataset(tmp_path: Path) -> None:
    """DatasetWriter.commit encodes meta.json before it touches the dataset it replaces, and writes what goes
    beside it (nanoGPT's meta.pkl) only then: a failed re-prepare rewrote meta.pkl for the new vocabulary
    while meta.json and the bins stayed the old ones."""
    from gptlab.data.storage import DatasetWriter

    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(20)))
    out = prepare_dataset("recs_char", tmp_path / "data", records)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    beside: list[int] = []
    with DatasetWriter(out, 300) as writer, pytest.raises(TypeError, match="not JSON serializable"):
        writer.write("train", np.arange(100))
        writer.write("val", np.arange(10))
        writer.commit({"vocab_size": 300, "bad": {1, 2}}, before_renames=lambda: beside.append(1))
    assert not beside
    assert is_ready(out) and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a lone surrogate in a vocabulary (a registered corpus may yield one) is refused, not escaped into a
    # tokenizer meta that cannot load; only the source's file names are escaped
    with DatasetWriter(out, 300) as writer, pytest.raises(UnicodeEncodeError):
        writer.write("train", np.arange(100))
        writer.write("val", np.arange(10))
        writer.commit({"vocab_size": 300, "tokenizer": {"itos": {"0": "\ud83d"}}, "source": {"path": "\udcff"}})
    assert is_ready(out) and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.skipif(sys.platform != "linux", reason="a file name of bytes that are not UTF-8: Linux file systems")
def test_a_file_name_that_is_not_utf8_is_kept_escaped(tmp_path: Path) -> None:
    """A folder input whose skipped file's name is not UTF-8: the name went into meta.json, whose write
    raised UnicodeEncodeError (a traceback) after nanoGPT's meta.pkl had been rewritten."""
    import os

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("some text to prepare\n" * 50)
    with open(os.path.join(os.fsencode(folder), b"n\xffame.bin"), "wb") as f:
        f.write(b"\xff\xfe\x00")  # binary: skipped, and named in meta.json
    out = prepare_dataset("odd_char", tmp_path / "data", folder)
    assert is_ready(out)
    assert read_meta(out)["source"]["skipped_examples"] == ["n\\xffame.bin"]


def test_a_damaged_dataset_stays_damaged_and_a_killed_prepare_leaves_nanogpts(tmp_path: Path) -> None:
    """A gptlab dataset that lost its meta.json is damaged; a re-prepare that then failed (a mistyped --input)
    removed the lock file that said so, and the next run read its uint32 bins as nanoGPT's uint16 (every id
    doubled, a 0 after each), since meta.pkl's vocabulary past 65536 was not refused. A prepare killed inside a
    nanoGPT dataset (its lock file left, empty) made that untouched dataset 'damaged', with a literal NAME."""
    import pickle

    from gptlab.data.storage import LOCK_FILE, PREPARING_MARK

    wide = [chr(c) for c in range(0x100, 0x20000) if not 0xD800 <= c < 0xE000][:70_000]  # a vocabulary uint16 misses
    source = tmp_path / "wide.txt"
    source.write_text("".join(wide) * 2, encoding="utf-8")
    out = prepare_dataset("wide_char", tmp_path / "data", source)
    assert read_meta(out)["dtype"] == "uint32"
    # no nanoGPT meta.pkl for uint32 bins: its np.memmap(dtype=np.uint16) trained on garbage ids in silence
    assert not (out / "meta.pkl").exists()
    vocab = read_meta(out)["vocab_size"]
    itos = {int(i): c for i, c in read_meta(out)["tokenizer"]["itos"].items()}
    older = {"vocab_size": vocab, "itos": itos, "stoi": {c: i for i, c in itos.items()}}
    (out / "meta.pkl").write_bytes(pickle.dumps(older))  # as an older gptlab wrote it
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="damaged"):
        ensure_prepared("wide_char", tmp_path / "data")
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset("wide_char", tmp_path / "data", tmp_path / "typo.txt")
    with pytest.raises(DataError, match=r"damaged: .* \(no meta.json\): run `gptlab prepare wide_char`$"):
        ensure_prepared("wide_char", tmp_path / "data")
    (out / LOCK_FILE).unlink()  # an older gptlab's unmarked lock, or none: meta.pkl's vocabulary still refuses
    with pytest.raises(DataError, match=r"vocab_size=\d+, which nanoGPT's uint16 tokens cannot hold"):
        ensure_prepared("wide_char", tmp_path / "data")
    assert vocab > 65536

    char_dir = _nanogpt_char_dataset(tmp_path / "data")[0]
    (char_dir / LOCK_FILE).write_text(PREPARING_MARK)  # what a prepare killed before writing any token file leaves
    assert ensure_prepared("shakespeare_char", tmp_path / "data") == char_dir
    with pytest.raises(DataError, match="does not exist"):  # and a failed one after it removes that lock
        prepare_dataset("shakespeare_char", tmp_path / "data", tmp_path / "typo.txt")
    assert not (char_dir / LOCK_FILE).exists()
    (char_dir / LOCK_FILE).touch()  # an older gptlab's lock, empty: it may have written them, so damaged
    with pytest.raises(DataError, match="damaged"):
        ensure_prepared("shakespeare_char", tmp_path / "data")


def test_a_prepare_waiting_on_one_that_fails_takes_over(tmp_path: Path) -> None:
    """Two prepares of a new directory: the first fails (a bad --input, Ctrl-C) and removes the lock file and
    the directories it made; the one waiting on that lock prepares next, instead of failing on the lock."""
    import threading
    import time

    from gptlab.data.storage import prepare_lock

    target = tmp_path / "new" / "ds"
    first_inside, second_done = threading.Event(), []

    def first() -> None:
        with contextlib.suppress(RuntimeError), prepare_lock(target):
            first_inside.set()
            time.sleep(0.5)  # the second is waiting on the lock by now
            raise RuntimeError("the prepare failed")

    def second() -> None:
        first_inside.wait()
        with prepare_lock(target):
            second_done.append(target.is_dir())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert second_done == [True]


def test_records_of_two_kinds_in_one_folder_are_named_as_their_files_are(tmp_path: Path) -> None:
    """A folder of .jsonl and .parquet records for a dataset of one's own: refused naming the suffixes found and
    those it takes (the error had said 'found json and parquet' and offered .json, which is text for it)."""
    pq = pytest.importorskip("pyarrow.parquet", exc_type=ImportError)
    import pyarrow as pa

    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n")
    pq.write_table(pa.Table.from_pylist([{"text": "two"}]), folder / "b.parquet")
    with pytest.raises(DataError, match=r"files of one kind of \.jsonl, \.parquet .*\(found \.jsonl and \.parquet\)"):
        prepare_dataset("mine", tmp_path / "data", input_path=folder)
