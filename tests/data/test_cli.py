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
    for name in ("train.bin", "val.bin", "meta.json"):
        assert str(data / "plays" / name) in out


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
