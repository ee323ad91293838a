"""A run's folder and what a resume says changed (gptlab.train.resume), as functions; the end-to-end resumes that
log these are in test_loop and test_parallel_checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gptlab.checkpoint import software_versions
from gptlab.config.train import parse_run_args
from gptlab.errors import ConfigError
from gptlab.train.resume import check_out_dir_unclaimed, resume_changes, resume_line

TOKENIZER = {"name": "char", "vocab_size": 3, "itos": {"0": "a", "1": "b", "2": "c"}}
DATA = {"sha256": "ab" * 32, "tokens": {"train": 90, "val": 10}, "bins": {"train": "0" * 16, "val": "1" * 16}}


def _changes(tmp_path: Path, **launch: object) -> tuple[dict, bool]:
    run = parse_run_args([f"--out_dir={str(tmp_path)!r}"])  # (its resume_changes, the settings': none)
    ckpt = {"path": str(tmp_path / "ckpt.pt"), "parallel": "ddp", "world_size": 2, "tokenizer": TOKENIZER,
            "data": DATA, "versions": software_versions(), "plugin_digests": {}}  # fmt: skip
    where = {"mode": "ddp", "world_size": 2, **launch}
    return resume_changes(
        run, run.train, ckpt, out_dir=tmp_path, tokenizer=TOKENIZER, data=DATA, plugin_digests={},
        best_val_loss=1.5, **where,
    )  # fmt: skip


def test_a_resume_in_another_mode_or_world_size_says_so(tmp_path: Path) -> None:
    """The launch decides the parallel mode and world size, not the checkpoint: a DDP run of 2 resumed under FSDP on
    4 ranks (DCP reshards) says both, and the best val loss stands (the evaluation batches are the same)."""
    assert _changes(tmp_path) == ({}, True)
    changed, keep_best = _changes(tmp_path, mode="fsdp", world_size=4)
    assert changed == {"parallel": ("ddp", "fsdp"), "world_size": (2, 4)} and keep_best
    ckpt = {"path": str(tmp_path / "ckpt.pt")}
    line = resume_line(ckpt, 7, changed, frozenset())
    assert line == (
        f"resuming from {tmp_path / 'ckpt.pt'} at iter 7 (changed from the checkpoint's settings; "
        "parallel: 'ddp' -> 'fsdp'; world_size: 2 -> 4)"
    )
    assert resume_line(ckpt, 7, {}, frozenset()) == f"resuming from {tmp_path / 'ckpt.pt'} at iter 7"


def test_a_resume_on_other_data_sets_the_best_val_loss_anew(tmp_path: Path) -> None:
    """A resume on another dataset, re-prepared data or another tokenizer evaluates on another validation split:
    the checkpoint's best val loss is no bar to the next save (with always_save_checkpoint off, a best from an
    easier split kept every later save from happening), and the resume says so; the same data under a new
    dataset name keeps it."""
    run = parse_run_args([f"--out_dir={str(tmp_path)!r}", "--dataset='other'"])
    run = dataclasses.replace(run, resume_changes={"dataset": ("openwebtext", "other")})  # as against its checkpoint
    base = {"path": str(tmp_path / "ckpt.pt"), "tokenizer": TOKENIZER, "data": DATA, "versions": software_versions()}
    kw = {"mode": "none", "world_size": 1, "out_dir": tmp_path, "plugin_digests": {}, "best_val_loss": 1.5}
    reset = ("1.5000 on the checkpoint's data", "the next evaluation's")
    other = {**DATA, "sha256": "cd" * 32}
    changed, keep = resume_changes(run, run.train, base, tokenizer=TOKENIZER, data=other, **kw)
    assert changed["best val loss"] == reset and "data" in changed and not keep
    for val_moved in (
        {**DATA, "tokens": {"train": 90, "val": 11}},
        {**DATA, "bins": {**DATA["bins"], "val": "2" * 16}},
    ):
        changed, keep = resume_changes(run, run.train, base, tokenizer=TOKENIZER, data=val_moved, **kw)
        assert changed["best val loss"] == reset and not keep
    shuffled = {**DATA, "bins": {**DATA["bins"], "train": "3" * 16}}  # train.bin alone rewritten: val as it was
    changed, keep = resume_changes(run, run.train, base, tokenizer=TOKENIZER, data=shuffled, **kw)
    assert "data" in changed and "best val loss" not in changed and keep
    renamed = {**TOKENIZER, "itos": {"0": "x", "1": "b", "2": "c"}}
    changed, keep = resume_changes(run, run.train, base, tokenizer=renamed, data=DATA, **kw)
    assert changed["best val loss"] == reset and "tokenizer" in changed and not keep
    changed, keep = resume_changes(run, run.train, base, tokenizer=TOKENIZER, data=DATA, **kw)
    assert changed == {"dataset": ("openwebtext", "other")} and keep  # a new name, the same files
    unrecorded = {k: v for k, v in base.items() if k != "data"}  # a checkpoint from before the data record
    changed, keep = resume_changes(run, run.train, unrecorded, tokenizer=TOKENIZER, data=DATA, **kw)
    assert changed["dataset"] == ("openwebtext", "other") and changed["best val loss"] == reset and not keep
    changed, keep = resume_changes(
        run, run.train, base, tokenizer=TOKENIZER, data=other, **{**kw, "best_val_loss": float("inf")}
    )
    assert "best val loss" not in changed  # none yet: nothing to set anew


@pytest.mark.parametrize("held", ["ckpt.pt", "ckpt.dcp", "log.jsonl"])
def test_a_new_run_refuses_a_folder_that_holds_a_run(held: str, tmp_path: Path) -> None:
    """Each of a run's files claims its folder for a new run: a single-file or a sharded (FSDP) checkpoint, or the
    log of a run that trained (one that logged nothing is free to run again)."""
    if held == "ckpt.dcp":  # the link to the latest sharded save
        (tmp_path / "ckpt-0000002.dcp").mkdir()
        (tmp_path / held).symlink_to("ckpt-0000002.dcp")
    elif held == "log.jsonl":
        (tmp_path / held).write_text('{"type": "iter", "iter": 0, "loss": 4.0}\n')
    else:
        (tmp_path / held).write_bytes(b"")  # (never read: its name claims the folder)
    new = parse_run_args([f"--out_dir={str(tmp_path)!r}"]).train
    said = (
        "holds the log of a run that saved no checkpoint" if held == "log.jsonl" else f"holds a previous run \\({held}"
    )
    with pytest.raises(ConfigError, match=said):
        check_out_dir_unclaimed(new, tmp_path)
    for free in ({"overwrite": True}, {"init_from": "resume"}):
        check_out_dir_unclaimed(dataclasses.replace(new, **free), tmp_path)
