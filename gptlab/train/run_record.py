"""What a run's folder says about it, read by the next session: whether its summary is of a run that completed,
what its log holds for an iteration, and whether its disk can hold the checkpoints to come."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.logging import log_records, read_log
from gptlab.units import format_si

CHECKPOINT_BYTES_PER_PARAMETER = 12  # float32 weights and AdamW's two moments


def completed_beyond(summary: dict[str, Any] | None, checkpoint_iter: int, max_iters: int) -> bool:
    """The summary is of a run that completed iterations 0..max_iters and kept the checkpoint of
    ``checkpoint_iter``, an earlier one (always_save_checkpoint=False keeps the best evaluation's)."""
    if summary is None or summary.get("status") != "completed" or summary.get("checkpoint_iter") != checkpoint_iter:
        return False
    iterations = summary.get("iterations")
    return isinstance(iterations, int) and iterations > max_iters


def done_line(checkpoint_iter: int, max_iters: int) -> str:
    """Why a resume of a finished run has nothing to train."""
    if checkpoint_iter <= max_iters:
        return (
            f"iterations 0..{max_iters} are done; its checkpoint is iteration {checkpoint_iter}'s, the best "
            "evaluation (always_save_checkpoint=False)"
        )
    if checkpoint_iter > max_iters + 1:  # a max_iters lowered below the checkpoint (a run stopped past it)
        return f"the checkpoint's iterations 0..{checkpoint_iter - 1} are done, past max_iters={max_iters}"
    return f"iterations 0..{max_iters} are done"


def logged_eval(out_dir: Path, iter_num: int) -> dict[str, Any] | None:
    """The last evaluation record out_dir's log.jsonl holds at ``iter_num``, if any."""
    with contextlib.suppress(OSError, GptlabError):
        evals = [r for r in read_log(out_dir, "eval") if r.get("iter") == iter_num]
        return evals[-1] if evals else None
    return None


def session_records_to(out_dir: Path, checkpoint_iter: int) -> Iterator[dict[str, Any]]:
    """log.jsonl's records up to the checkpoint of ``checkpoint_iter`` (its evaluation included), streamed: a
    long run's log is hundreds of MB; steps a killed session logged past it were lost with it."""
    for _, r in log_records(out_dir / "log.jsonl"):
        if r.get("type") not in ("iter", "eval") or (
            isinstance(r.get("iter"), int) and r["iter"] < checkpoint_iter + (r["type"] == "eval")
        ):
            yield r


def disk_space_warning(out_dir: Path, n_parameters: int, keep_checkpoints: int) -> str | None:
    """The warning, before training rather than at a save after hours of it, when out_dir's disk cannot hold the
    checkpoints to come (a new one is written beside the kept ones, which are replaced or pruned only once it is
    complete); None when it can."""
    one = CHECKPOINT_BYTES_PER_PARAMETER * n_parameters
    # at a save: the kept checkpoints (keep_checkpoints) and the new one beside them; those already here
    # (a resume's) take none of the free space
    kept: set[Any] = {p.stat().st_ino for p in out_dir.glob("ckpt*.pt") if p.is_file()}  # links: one file
    kept |= {d for d in out_dir.glob("ckpt-*.dcp") if d.is_dir() and not d.is_symlink()}
    copies = max(1, keep_checkpoints + 1 - len(kept))
    needed, free = copies * one, shutil.disk_usage(out_dir).free
    if free >= needed:
        return None
    return (
        f"the checkpoints to come need about {format_si(needed, 'B')} ({copies} of {format_si(one, 'B')}: "
        f"keep_checkpoints={keep_checkpoints}, and each save is written beside the kept ones) and "
        f"{out_dir}'s disk has {format_si(free, 'B')} free: a save will fail (free space, or pick another --out_dir)"
    )
