"""A run's folder and what a resume continues: whether out_dir may take a new run, the record of the data a
checkpoint was trained on, and the one line a resume logs with what changed since its checkpoint (settings,
launch, data, tokenizer, software, plugin code), said rather than refused."""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path
from typing import Any

from gptlab.checkpoint import rollback_hint, software_versions, stopped_before_training
from gptlab.checkpoint.layout import DCP_META
from gptlab.config.model import FREE_ARCH_KEYS
from gptlab.config.resolve import SAID_LAUNCH_KEYS
from gptlab.config.train import RunConfig, TrainConfig
from gptlab.data.storage import bins_sample
from gptlab.errors import ConfigError, GptlabError
from gptlab.logging import log_records
from gptlab.plugins import edited_plugins

Changes = dict[str, tuple[Any, Any]]  # {what: (the checkpoint's, now)}
EVALUATION_KEYS = ("batch_size", "eval_iters")  # the settings that decide which sequences an evaluation reads


def held_run_files(out_dir: Path) -> list[str]:
    """The files of a run ``out_dir`` holds: its checkpoints (single-file, sharded) and its log."""
    return [name for name in ("ckpt.pt", "ckpt.dcp", "log.jsonl") if (out_dir / name).exists()]


def check_out_dir_unclaimed(cfg: TrainConfig, out_dir: Path) -> None:
    """A new run (not a resume, nor --overwrite) refuses an out_dir that holds a previous run's checkpoints or
    log, and an evaluation of new random weights refuses one that holds a checkpoint to evaluate."""
    if cfg.init_from != "resume" and not cfg.overwrite and not cfg.eval_only:
        previous = held_run_files(out_dir)
        if previous == ["log.jsonl"] and nothing_logged_to_keep(out_dir):
            previous = []  # a start that failed before it trained or evaluated: its command may run again
        kept = rollback_hint(out_dir)  # --keep_checkpoints' copies: a run's, even without ckpt.pt
        if kept and previous in ([], ["log.jsonl"]):
            raise ConfigError(
                f"out_dir={str(out_dir)!r} holds a previous run's {kept}, and --init_from=resume continues "
                "from it; or pick another --out_dir, or pass --overwrite=True to replace them"
            )
        if previous == ["log.jsonl"]:  # stopped (a NaN, Ctrl-C, out of memory) before its first checkpoint
            raise ConfigError(
                f"out_dir={str(out_dir)!r} holds the log of a run that saved no checkpoint: pick another "
                "--out_dir, or pass --overwrite=True to replace it"
            )
        if previous:
            raise ConfigError(
                f"out_dir={str(out_dir)!r} holds a previous run ({', '.join(previous)}): continue it with "
                "--init_from=resume, pick another --out_dir, or pass --overwrite=True to replace it"
            )
    if cfg.eval_only and cfg.init_from == "scratch":  # freshly initialised weights: surely not what was meant
        saved = [n for n in ("ckpt.pt", "ckpt.dcp") if (out_dir / n).exists()]
        if saved:
            held: str | None = f"{saved[0]}: pass --init_from=resume to evaluate it"
        else:
            kept = rollback_hint(out_dir)
            held = f"{kept}, and --init_from=resume evaluates it" if kept else None
        if held:
            raise ConfigError(
                f"eval_only=True with init_from='scratch' would evaluate new random weights, but "
                f"out_dir={str(out_dir)!r} holds {held}"
            )


def data_record(meta: dict[str, Any], dataset_dir: Path) -> dict[str, Any]:
    """What a resume checks its data against (said if different: the batches are no longer the run's): the
    source's hash and token counts meta.json records, and a sample of each split file's bytes, which see a
    .bin rewritten in place at the same size (shuffled, or another text's tokens) that meta.json does not."""
    source = meta.get("source") or {}
    return {"sha256": source.get("sha256"), "tokens": meta.get("tokens"), "bins": bins_sample(dataset_dir)}


def resume_changes(
    run: RunConfig,
    cfg: TrainConfig,
    ckpt: dict[str, Any],
    *,
    mode: str,
    world_size: int,
    out_dir: Path,
    tokenizer: dict[str, Any] | None,
    data: dict[str, Any],
    plugin_digests: dict[str, str],
    best_val_loss: float,
) -> tuple[Changes, bool]:
    """What a resume changes from its checkpoint's run (``run.resume_changes``, the settings, plus the launch,
    data, tokenizer, software and plugin code), and whether its best val loss is kept (not when the next
    evaluations are on other batches than the ones it was measured on, or on other data)."""
    changed = dict(run.resume_changes)
    keep_best = True
    if ckpt.get("converted_from") == "nanoGPT":  # its model, AdamW state, iteration and settings carried over
        if not cfg.eval_only:  # (an evaluation neither trains nor saves)
            changed["checkpoint"] = ("nanoGPT's", "gptlab's from its next save on")
            changed["batches"] = ("nanoGPT's random draws", f"gptlab's stream (seed {cfg.seed}) from here on")
        if not ckpt.get("nanogpt_settings"):
            changed["settings"] = ("none recorded", "this command's, over gptlab's defaults")
        if math.isfinite(best_val_loss):  # an estimate on other batches: not comparable, as below
            changed["best val loss"] = (f"{best_val_loss:.4f} on nanoGPT's batches", "the next evaluation's")
            keep_best = False
    if ckpt.get("parallel") not in (None, mode):  # a launch flag, not in the checkpoint's settings
        changed["parallel"] = (ckpt["parallel"], mode)
    if ckpt.get("world_size") not in (None, world_size):
        changed["world_size"] = (ckpt["world_size"], world_size)
    old_tok, new_tok = ckpt.get("tokenizer"), tokenizer
    if old_tok and new_tok and old_tok != new_tok:  # the same ids now mean other text: said, not refused
        old_name, new_name = old_tok.get("name"), new_tok.get("name")
        changed["tokenizer"] = (old_name, f"{new_name}, other ids" if old_name == new_name else new_name)
    old_data, new_data = ckpt.get("data"), dict(data)
    if isinstance(old_data, dict) and "bins" not in old_data:  # a checkpoint from before the sample
        new_data.pop("bins")
    if isinstance(old_data, dict) and old_data.get("sha256") is None:  # trained on files nanoGPT's prepare.py
        new_data["sha256"] = None  # wrote (no text hash): a re-prepare's hash is no change; counts and bytes decide
    if old_data and old_data != new_data:  # re-prepared (other text, another Python's stdlib): said, as
        # the tokenizer is, not refused; the batches from here on are not the interrupted run's
        changed["data"] = (_describe_data(old_data), _describe_data(new_data))
    new_text = "tokenizer" in changed or (_val_split_changed(old_data, new_data) if old_data else "dataset" in changed)
    if new_text and keep_best and math.isfinite(best_val_loss):  # a loss on another validation split is no bar
        # to the next one's (a lower best would keep every later save from happening, always_save_checkpoint off)
        changed["best val loss"] = (f"{best_val_loss:.4f} on the checkpoint's data", "the next evaluation's")
        keep_best = False
    resized = [k for k in EVALUATION_KEYS if k in run.resume_changes]  # evaluate() reads eval_iters batches
    if resized and keep_best and math.isfinite(best_val_loss):  # of batch_size: another set of sequences, another
        # mean (the same weights scored otherwise: a worse score blocked a save, a better one saved them again)
        said = ", ".join(f"{k}={run.resume_changes[k][0]!r}" for k in resized)
        changed["best val loss"] = (f"{best_val_loss:.4f} on the checkpoint's evaluation batches ({said})",
                                    "the next evaluation's")  # fmt: skip
        keep_best = False
    if "versions" not in ckpt:  # written before evaluation batches had their own stream (and versions
        # were recorded): the val losses from here on are on other batches than the logged ones
        changed["evaluation batches"] = ("seed+1's training stream", "their own stream (from here on)")
        keep_best = False  # not comparable: the next evaluation sets it, on the new batches
    if (stranger := _not_this_folders_run(out_dir, ckpt)) is not None:  # copied in from elsewhere
        changed["checkpoint's run"] = ("this folder's (config.json)", f"another's, trained on: {stranger}")
    edited = edited_plugins(ckpt.get("plugin_digests"), plugin_digests)
    if edited:  # a registered component's code may have changed under its weights: said, not refused
        changed["plugin files"] = ("as the checkpoint was trained", f"changed since: {', '.join(edited)}")
    old_versions = ckpt.get("versions") or {}
    for name, now in software_versions().items():
        if old_versions.get(name) not in (None, now):
            changed[name] = (old_versions[name], now)
    return changed, keep_best


def resumed_data_dir_hint(run: RunConfig) -> str:
    """The end of a resume's missing-dataset error when the run read its data from another data_dir, which a
    resume does not take from its checkpoint (a launch key: nodes may hold the data elsewhere); '' otherwise."""
    from gptlab.data.storage import is_ready

    saved = run.resume_changes.get("data_dir", (None, None))[0]
    if not isinstance(saved, str) or not is_ready(Path(os.path.expanduser(saved)) / run.train.dataset):
        return ""
    return (
        f" (this run read it from data_dir={saved!r}, which a resume takes from the command line, not from its "
        f"checkpoint: pass --data_dir={shlex.quote(saved)})"
    )


def resume_line(ckpt: dict[str, Any], iter_num: int, changed: Changes, explicit: frozenset[str]) -> str:
    """The resume event's line: the checkpoint, its iteration, what changed, and how to keep a launch setting."""
    changes = "".join(f"; {k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
    kept_by = [_override(k, changed[k][0]) for k in SAID_LAUNCH_KEYS if k in changed and k not in explicit]
    if kept_by:  # a launch setting is the command's, not the checkpoint's: how to keep the run's own
        changes += f" (launch settings are this command's: {' '.join(kept_by)} keeps the run's own)"
    return f"resuming from {ckpt['path']} at iter {iter_num}" + (
        f" (changed from the checkpoint's settings{changes})" if changes else ""
    )


def nothing_logged_to_keep(out_dir: Path) -> bool:
    """Whether out_dir's log (of a run with no checkpoint) holds nothing a new run would lose: it is empty (a
    full disk at start), logged no iteration or evaluation (a data error or an out-of-memory at the first
    batch), or its run was stopped by a signal before it trained a step (a preemption during the compile or
    the first evaluation: a requeued job's command runs again)."""
    if stopped_before_training(out_dir):
        return True
    try:
        return not any(r.get("type") in ("iter", "eval") for _, r in log_records(out_dir / "log.jsonl"))
    except (OSError, GptlabError):  # unreadable or not a log of ours: kept, as before
        return False


def _override(key: str, value: Any) -> str:
    """``--key=value`` as a shell takes it: text bare and quoted for the shell (text keys take it so), the rest
    as a Python literal."""
    return shlex.quote(f"--{key}={value}") if isinstance(value, str) else f"--{key}={value!r}"


def saved_tokens_per_iter(ckpt: dict[str, Any], today: int) -> int:
    """Tokens per iteration of the run that wrote a checkpoint older than its ``tokens_seen`` record: from its
    own batch settings (a resume that changed the batch counted the earlier iterations at today's), else today's."""
    train, arch = (ckpt.get("config") or {}).get("train") or {}, ckpt.get("arch") or {}
    sizes = (train.get("batch_size"), train.get("gradient_accumulation_steps"), arch.get("block_size"))
    if all(isinstance(v, int) and v > 0 for v in sizes):
        return sizes[0] * sizes[1] * sizes[2]  # accumulation global across ranks, as since before that record
    return today


def _recorded_run(out_dir: Path) -> dict[str, Any]:
    """out_dir's config.json (written when its run's last session started); {} where missing or unreadable."""
    try:
        record = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


KEPT_SOURCE = "kept_source"  # config.json's record of a fine-tune in place's source, until the run's first save


def kept_source_record(out_dir: Path, source: Path) -> dict[str, Any]:
    """What config.json records of the replaced run's checkpoint that a fine-tune in place (``--init_from=OUT_DIR
    --overwrite=True``) starts from and keeps until its first save: its name in out_dir and its file's size and
    mtime (a DCP folder's meta.pt), so that a checkpoint put there since is not taken for it."""
    return {"name": source.relative_to(out_dir.resolve()).as_posix(), "stat": _file_stat(source)}


def _file_stat(checkpoint: Path) -> list[int] | None:
    try:
        found = (checkpoint / DCP_META if checkpoint.is_dir() else checkpoint).stat()
    except OSError:
        return None
    return [found.st_size, found.st_mtime_ns]


def kept_fine_tune_source(out_dir: Path, checkpoint: Path) -> str | None:
    """Why ``checkpoint``, out_dir's latest, is not its run's: the run, a fine-tune in place, stopped before its
    first save, and this is the replaced run's checkpoint it started from (resumed, it went on as the replaced run
    under the fine-tune's log, or said 'completed'). config.json records that source until the first save. None
    otherwise (a checkpoint copied in since, or one the run saved)."""
    kept = _recorded_run(out_dir).get(KEPT_SOURCE)
    if not isinstance(kept, dict) or not isinstance(kept.get("name"), str):
        return None
    source = out_dir / kept["name"]
    try:  # the same file under another name too: the rollback hint's hard link (ln -f ckpt-ITER.pt ckpt.pt)
        same = os.path.samefile(checkpoint, source)
    except OSError:
        return None
    if not same or _file_stat(source) != kept.get("stat"):
        return None
    return (
        f"its run, a fine-tune in place, stopped before its first save: {kept['name']} is the replaced run's "
        f"checkpoint it started from, kept until that save; run its command again "
        f"(--init_from={shlex.quote(str(source))} --overwrite=True)"
    )


def _not_this_folders_run(out_dir: Path, ckpt: dict[str, Any]) -> str | None:
    """The keys where a checkpoint's architecture is not the one out_dir's run recorded (its config.json, written
    when its last session started): a ckpt.pt copied in from another run trains that run's model, said (None where
    they agree, or either record is missing)."""
    recorded = _recorded_run(out_dir).get("arch")
    saved = ckpt.get("arch")
    if not isinstance(recorded, dict) or not isinstance(saved, dict):
        return None
    differ = sorted(k for k in set(recorded) & set(saved) if k not in FREE_ARCH_KEYS and recorded[k] != saved[k])
    return ", ".join(f"{k} {recorded[k]!r} -> {saved[k]!r}" for k in differ[:3]) or None


def folder_identity(folder: Path) -> tuple[int, int] | str | None:
    """A folder's (device, inode): the same path names another folder once the first was moved or deleted;
    None where there is none, 'unknown' where it cannot be read now (a storage error: the write says so)."""
    try:
        found = os.stat(folder)
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    return found.st_dev, found.st_ino


def _val_split_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two data records differ in what an evaluation reads: the source, or the val split's size or sampled
    bytes (a train.bin shuffled in place leaves the val losses comparable)."""

    def val(record: dict[str, Any]) -> tuple[Any, ...]:
        return record.get("sha256"), (record.get("tokens") or {}).get("val"), (record.get("bins") or {}).get("val")

    return val(old) != val(new)


def _describe_data(fingerprint: dict[str, Any]) -> str:
    sha, tokens = fingerprint.get("sha256"), fingerprint.get("tokens") or {}
    counts = ", ".join(f"{split} {n:,}" for split, n in tokens.items())
    bins = fingerprint.get("bins") or {}
    sampled = f"; .bin samples {', '.join(f'{k} {v[:8]}' for k, v in bins.items())}" if bins else ""
    return (f"sha256 {sha[:12]}, {counts} tokens" if sha else f"{counts} tokens") + sampled
