"""``gptlab prepare`` through ``register``, as the main CLI wires it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gptlab.data import cli
from gptlab.data.datasets import read_meta
from gptlab.errors import USER_ERRORS, ConfigError


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptlab")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args, extra = parser.parse_known_args(argv)
    return args.func(args, extra)


def test_prepare_local_text_prints_what_it_wrote(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    code = run(["prepare", "plays", "--input", str(text_file), "--data_dir", str(data), "--tokenizer", "char"])
    assert code == 0
    meta = read_meta(data / "plays")
    out = capsys.readouterr().out
    assert f"{meta['tokens']['train']:,} train + {meta['tokens']['val']:,} val tokens" in out
    assert "char tokenizer" in out and "uint16" in out
    for name in ("train.bin", "val.bin", "meta.json", "meta.pkl"):  # a char vocabulary's nanoGPT meta.pkl too
        assert str(data / "plays" / name) in out
    assert "replaced" not in out
    # prepared again: the same text says its tokens are unchanged; other text, what it replaced (it was silent)
    assert run(["prepare", "plays", "--input", str(text_file), "--data_dir", str(data), "--tokenizer", "char"]) == 0
    assert "note: the same text and tokenizer as the dataset it replaced" in capsys.readouterr().out
    copy = tmp_path / "copy.txt"  # the same text from elsewhere: the same tokens, as a resume sees them
    copy.write_bytes(text_file.read_bytes())
    assert run(["prepare", "plays", "--input", str(copy), "--data_dir", str(data), "--tokenizer", "char"]) == 0
    assert "note: the same text and tokenizer as the dataset it replaced" in capsys.readouterr().out
    other = tmp_path / "other.txt"
    other.write_text("other words " * 200)
    assert run(["prepare", "plays", "--input", str(other), "--data_dir", str(data), "--tokenizer", "char"]) == 0
    said = f"note: replaced the dataset prepared here before (from {copy}, {meta['tokens']['train']:,} train"
    assert said in capsys.readouterr().out


def test_a_re_prepare_calls_the_tokens_unchanged_only_where_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records carry no text hash (None == None passed), and the same text split into other documents hashes the
    same while GPT-2's end-of-text tokens move: both were said to be unchanged. The token files decide now."""
    data = tmp_path / "data"

    def prepare(name: str, source: Path) -> str:
        assert run(["prepare", name, "--input", str(source), "--data_dir", str(data), "--num_proc", "1"]) == 0
        return capsys.readouterr().out

    cat, dog = tmp_path / "cat.jsonl", tmp_path / "dog.jsonl"
    cat.write_text('{"text": "the cat sat"}\n' * 20)
    dog.write_text('{"text": "the dog ran"}\n' * 20)  # as many tokens, other ones
    prepare("records", cat)
    assert "note: replaced the dataset prepared here before" in prepare("records", dog)
    said = prepare("records", dog)
    assert "note: the same tokens and tokenizer as the dataset it replaced\n" in said and "nanoGPT" not in said
    one, two = tmp_path / "one", tmp_path / "two"
    split_after = ("hello world" * 30, " again" * 30), ("hello world" * 29 + "hello", " world" + " again" * 30)
    for folder, parts in zip((one, two), split_after):  # one text, two ways into files (its hash is the text's)
        folder.mkdir()
        for name, part in zip(("a.txt", "b.txt"), parts):
            (folder / name).write_text(part)
    prepare("texts", one)
    assert "note: replaced the dataset prepared here before" in prepare("texts", two)
    assert "note: the same text and tokenizer as the dataset it replaced: its tokens" in prepare("texts", two)


def test_the_datasets_own_folder_as_input_names_the_text_in_it(tmp_path: Path) -> None:
    """nanoGPT's layout keeps input.txt in the dataset's folder (data/NAME/input.txt); named as --input, its files
    are the output's and are not read, which said "holds no files" of a folder that holds input.txt."""
    folder = tmp_path / "data" / "own_char"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text("some text to learn from\n" * 50)
    argv = ["prepare", "own_char", "--input", str(folder), "--data_dir", str(tmp_path / "data"), "--tokenizer", "char"]
    with pytest.raises(USER_ERRORS, match=rf"is the dataset's own folder, .*: pass the text itself, --input {folder}/"):
        run(argv)
    argv[3] = str(folder / "input.txt")
    assert run(argv) == 0
    argv[3] = str(folder)  # prepared now: still its own folder, not another prepared dataset to train on as it is
    with pytest.raises(USER_ERRORS, match=rf"is the dataset's own folder, .*: pass the text itself, --input {folder}/"):
        run(argv)


def test_the_skipped_files_line_counts_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "a.txt").write_text("words to learn from\n" * 50)
    (folder / "b.bin").write_bytes(b"\x00\xff" * 10)
    assert run(["prepare", "mixed", "--input", str(folder), "--data_dir", str(tmp_path / "data")]) == 0
    assert "skipped 1 file that is not text (not UTF-8" in capsys.readouterr().out  # not "1 files that are"


def test_prepare_over_nanogpts_files_of_the_same_text_says_the_tokens_are_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nanoGPT's shakespeare_char/prepare.py output (no meta.json, so no text hash) prepared again by gptlab from
    the same input.txt: the same tokens, said so (not 'replaced ... says its data changed'); other text is replaced."""
    import pickle

    import numpy as np

    data = tmp_path / "data"
    folder = data / "shakespeare_char"
    folder.mkdir(parents=True)
    text = "first citizen: before we proceed any further, hear me speak.\n" * 40
    (folder / "input.txt").write_text(text)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    (folder / "meta.pkl").write_bytes(
        pickle.dumps({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi})
    )
    assert run(["prepare", "shakespeare_char", "--data_dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "note: the same tokens and tokenizer as the dataset it replaced" in out and "replaced the" not in out
    assert read_meta(folder)["source"]["sha256"]  # gptlab's now: a later prepare compares hashes
    other = tmp_path / "other.txt"
    other.write_text("other words " * 200)
    assert run(["prepare", "shakespeare_char", "--input", str(other), "--data_dir", str(data)]) == 0
    assert "note: replaced the dataset prepared here before" in capsys.readouterr().out


def test_prepare_says_which_records_files_it_read_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A .json array of records (or .jsonl beside text files) is read as text, its brackets and keys training
    text: said, since a file of only records is parsed."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("plain text, a document of its own\n" * 20)
    (notes / "recs.json").write_text('[{"text": "one record"}, {"text": "another"}]' * 10)
    (notes / "more.jsonl").write_text('{"text": "a record line"}\n' * 10)
    assert run(["prepare", "notes_char", "--input", str(notes), "--data_dir", str(tmp_path / "data")]) == 0
    said = "note: read as text, not as records: more.jsonl, recs.json (records, a document each, are read from"
    assert said in capsys.readouterr().out
    assert run(["prepare", "plain_char", "--input", str(notes / "a.txt"), "--data_dir", str(tmp_path / "data")]) == 0
    assert "note: read as text" not in capsys.readouterr().out


def test_prepare_caps_and_dash_spellings(tmp_path: Path, text_file: Path) -> None:
    assert run(["prepare", "plays", "--input", str(text_file), "--data-dir", str(tmp_path), "--max-tokens", "50"]) == 0
    assert sum(read_meta(tmp_path / "plays")["tokens"].values()) == 50


def test_prepare_user_mistakes_are_user_errors(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not take --bogus=1"):
        run(["prepare", "plays", "--input", str(text_file), "--data_dir", str(tmp_path), "--bogus=1"])
    with pytest.raises(USER_ERRORS, match="did you mean 'stdlib_char'"):
        run(["prepare", "stdlib_chars", "--data_dir", str(tmp_path)])


def test_help_lists_the_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["prepare", "--help"])
    out = capsys.readouterr().out
    for name in ("stdlib_char", "shakespeare", "openwebtext", "fineweb_edu", "--input"):
        assert name in out


def test_a_records_dataset_given_plain_text_says_how_to_prepare_it(tmp_path: Path, text_file: Path) -> None:
    """`gptlab prepare openwebtext --input input.txt`: openwebtext reads records; plain text is prepared under a
    name of one's own (the README had said openwebtext took local text)."""
    argv = ["prepare", "openwebtext", "--input", str(text_file), "--data_dir", str(tmp_path / "data")]
    with pytest.raises(
        USER_ERRORS,
        match=r"must hold records, .* \(found none\): for your own text, prepare it "
        r"under a name of your own \(gptlab prepare NAME --input PATH\) and train with --dataset=NAME",
    ):
        run(argv)
