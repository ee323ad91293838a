"""A run's folder and what a resume says changed (gptlab.train.resume), as functions; the end-to-end resumes that
log these are in test_loop and test_parallel_checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gptlab.checkpoint import software_versions
from gptlab.config.resolve import parse_run_args
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


def test_a_resume_on_a_nanogpt_dataset_prepared_again_identically_keeps_its_best(tmp_path: Path) -> None:
    """A run trained on the files nanoGPT's prepare.py wrote (no text hash) whose dataset `gptlab prepare` wrote again
    from the same text (the same tokens, now with a hash) has the same data: not said, best val loss kept; other
    tokens still are."""
    run = parse_run_args([f"--out_dir={str(tmp_path)!r}"])
    nanogpt = {**DATA, "sha256": None}
    base = {"path": str(tmp_path / "ckpt.pt"), "tokenizer": TOKENIZER, "data": nanogpt, "versions": software_versions()}
    kw = {"mode": "none", "world_size": 1, "out_dir": tmp_path, "plugin_digests": {}, "best_val_loss": 1.5}
    assert resume_changes(run, run.train, base, tokenizer=TOKENIZER, data=DATA, **kw) == ({}, True)
    moved = {**DATA, "bins": {**DATA["bins"], "val": "2" * 16}}
    changed, keep = resume_changes(run, run.train, base, tokenizer=TOKENIZER, data=moved, **kw)
    assert "data" in changed and not keep


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


def test_an_older_checkpoints_tokens_per_iter_are_its_own_batch_settings() -> None:
    """A checkpoint without tokens_seen counts its iterations at the batch it was trained with: batch_size x
    gradient_accumulation_steps x block_size (4 x 2 x 32 = 256 tokens), not today's; without a record, today's."""
    from gptlab.train.resume import saved_tokens_per_iter

    ckpt = {"config": {"train": {"batch_size": 4, "gradient_accumulation_steps": 2}}, "arch": {"block_size": 32}}
    assert saved_tokens_per_iter(ckpt, today=999) == 4 * 2 * 32
    assert saved_tokens_per_iter({"arch": {"block_size": 32}}, today=999) == 999


def test_a_best_val_loss_measured_on_other_batches_is_set_anew(tmp_path: Path) -> None:
    """A nanoGPT checkpoint's best (on nanoGPT's random batches), and one from before the evaluation batches had
    their own stream (no versions recorded), are no bar to the next save: both are dropped, and said."""
    run = parse_run_args([f"--out_dir={str(tmp_path)!r}"])
    kw = {"mode": "none", "world_size": 1, "out_dir": tmp_path, "tokenizer": TOKENIZER, "data": DATA,
          "plugin_digests": {}, "best_val_loss": 1.5}  # fmt: skip
    base = {"path": str(tmp_path / "ckpt.pt"), "tokenizer": TOKENIZER, "data": DATA, "versions": software_versions()}
    nanogpt = {**base, "converted_from": "nanoGPT", "nanogpt_settings": {"batch_size": 12}}
    changed, keep = resume_changes(run, run.train, nanogpt, **kw)
    assert changed["best val loss"] == ("1.5000 on nanoGPT's batches", "the next evaluation's") and not keep
    unversioned = {k: v for k, v in base.items() if k != "versions"}
    changed, keep = resume_changes(run, run.train, unversioned, **kw)
    assert "evaluation batches" in changed and not keep


def test_what_a_resume_does_not_call_a_change(tmp_path: Path) -> None:
    """A checkpoint's data record from before the .bin samples matches the same data (the samples are not compared);
    a plugin the checkpoint did not record is no edit (one whose digest differs is); a new dropout or attention
    backend is no sign of another run's checkpoint (they may change on a resume), another width is."""
    import json

    run = parse_run_args([f"--out_dir={str(tmp_path)!r}"])
    kw = {"mode": "none", "world_size": 1, "out_dir": tmp_path, "tokenizer": TOKENIZER, "data": DATA,
          "best_val_loss": 1.5}  # fmt: skip
    base = {"path": str(tmp_path / "ckpt.pt"), "tokenizer": TOKENIZER, "versions": software_versions()}
    unsampled = {k: v for k, v in DATA.items() if k != "bins"}
    assert resume_changes(run, run.train, {**base, "data": unsampled}, plugin_digests={}, **kw) == ({}, True)
    ckpt = {**base, "data": DATA, "plugin_digests": {"mine.py": "aa"}}
    assert resume_changes(run, run.train, ckpt, plugin_digests={"mine.py": "aa", "new.py": "bb"}, **kw) == ({}, True)
    changed, _ = resume_changes(run, run.train, ckpt, plugin_digests={"mine.py": "cc"}, **kw)
    assert changed == {"plugin files": ("as the checkpoint was trained", "changed since: mine.py")}
    arch = {"n_embd": 64, "dropout": 0.0, "attention_backend": "sdpa"}
    (tmp_path / "config.json").write_text(json.dumps({"arch": arch}))
    moved = {**ckpt, "arch": {**arch, "dropout": 0.1, "attention_backend": "manual"}}
    assert resume_changes(run, run.train, moved, plugin_digests={"mine.py": "aa"}, **kw) == ({}, True)
    other = {**ckpt, "arch": {**arch, "n_embd": 128}}
    changed, _ = resume_changes(run, run.train, other, plugin_digests={"mine.py": "aa"}, **kw)
    assert changed["checkpoint's run"] == ("this folder's (config.json)", "another's, trained on: n_embd 64 -> 128")


def test_a_log_that_evaluated_claims_its_folder(tmp_path: Path) -> None:
    """An eval_only run (or a run stopped after its first evaluation) logged val losses: a new run may not replace
    that log silently; a log of only start-up events may be."""
    from gptlab.train.resume import nothing_logged_to_keep

    (tmp_path / "log.jsonl").write_text('{"type": "start"}\n{"type": "eval", "iter": 0, "val_loss": 4.1}\n')
    assert not nothing_logged_to_keep(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"type": "start"}\n')
    assert nothing_logged_to_keep(tmp_path)


def test_the_data_record_samples_the_whole_file(tmp_path: Path) -> None:
    """A train.bin rewritten in place past its first 64 KiB (shuffled, re-tokenized at the same size) changes its
    sampled digest: the 16 blocks are spread over the file, not read from its start."""
    from gptlab.train.resume import data_record

    data = bytearray(1 << 20)
    (tmp_path / "train.bin").write_bytes(data)
    (tmp_path / "val.bin").write_bytes(bytes(4096))
    before = data_record({}, tmp_path)["bins"]
    data[15 * len(data) // 16] = 1  # in the last sampled block
    (tmp_path / "train.bin").write_bytes(data)
    after = data_record({}, tmp_path)["bins"]
    assert after["train"] != before["train"] and after["val"] == before["val"]


def test_an_evaluation_of_new_random_weights_is_refused_beside_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").write_bytes(b"")  # (never read: its name is enough)
    scratch = parse_run_args([f"--out_dir={str(tmp_path)!r}", "--eval_only=True"]).train
    assert scratch.init_from == "scratch"
    with pytest.raises(ConfigError, match=r"eval_only=True with init_from='scratch' would evaluate new random"):
        check_out_dir_unclaimed(scratch, tmp_path)
    check_out_dir_unclaimed(dataclasses.replace(scratch, init_from="resume"), tmp_path)


def test_a_resume_missing_its_data_names_the_data_dir_the_run_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data_dir is a launch key (nodes may hold the data elsewhere): a resume without it looked in data/ and was
    told to prepare the dataset again, when --data_dir=the run's was what it needed."""
    import io

    from gptlab.data.datasets import prepare_dataset
    from gptlab.errors import DataError
    from gptlab.train.launch import train
    from tests.train.conftest import tiny_args

    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    prepare_dataset("own_char_t", data_dir=tmp_path / "udata", input_path=tmp_path / "text.txt", tokenizer="char")
    run = tmp_path / "run"
    args = [a for a in tiny_args(tmp_path / "udata", run, max_iters=2) if not a.startswith("--dataset=")]
    train(parse_run_args([*args, "--dataset=own_char_t"]), stream=io.StringIO())
    with pytest.raises(DataError) as missing:
        train(
            parse_run_args([f"--out_dir={str(run)!r}", "--init_from='resume'", "--max_iters=3"]), stream=io.StringIO()
        )
    udata = str(tmp_path / "udata")
    assert "dataset 'own_char_t'" in str(missing.value)
    assert str(missing.value).endswith(
        f" (this run read it from data_dir={udata!r}, which a resume takes from the command line, not from its "
        f"checkpoint: pass --data_dir={udata})"
    )
    resumed = train(parse_run_args([f"--out_dir={str(run)!r}", "--init_from='resume'", "--max_iters=3",
                                    f"--data_dir={udata!r}"]), stream=io.StringIO())  # fmt: skip
    assert resumed["status"] == "completed"


@pytest.mark.parametrize("key, old, new", [("batch_size", 12, 6), ("eval_iters", 200, 100)])
def test_a_resume_that_changes_the_evaluation_batches_sets_the_best_val_loss_anew(
    tmp_path: Path, key: str, old: int, new: int
) -> None:
    """An evaluation is eval_iters fixed batches of batch_size sequences: with either changed (as the refusal of a
    world-size change advises for batch_size) the same weights score otherwise, so the checkpoint's best val loss
    is no bar to the next save, and the resume says so; gradient accumulation leaves the batches as they were."""
    run = parse_run_args([f"--out_dir={str(tmp_path)!r}", f"--{key}={new}"])
    run = dataclasses.replace(run, resume_changes={key: (old, new)})
    base = {"path": str(tmp_path / "ckpt.pt"), "tokenizer": TOKENIZER, "data": DATA, "versions": software_versions()}
    kw = {"mode": "none", "world_size": 1, "out_dir": tmp_path, "plugin_digests": {}, "tokenizer": TOKENIZER}
    changed, keep = resume_changes(run, run.train, base, data=DATA, best_val_loss=1.5, **kw)
    assert changed["best val loss"] == (f"1.5000 on the checkpoint's evaluation batches ({key}={old})",
                                        "the next evaluation's") and not keep  # fmt: skip
    assert changed[key] == (old, new)
    run = dataclasses.replace(run, resume_changes={"gradient_accumulation_steps": (40, 80)})
    changed, keep = resume_changes(run, run.train, base, data=DATA, best_val_loss=1.5, **kw)
    assert "best val loss" not in changed and keep
