"""A run folder's checkpoints: their names, the copies ``keep_checkpoints`` keeps, what killed saves left behind,
and the one-line hints that name them (a resume of a folder with none, a folder that holds runs)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from gptlab.errors import CheckpointError

CHECKPOINT_NAME = "ckpt.pt"
DCP_LINK = "ckpt.dcp"
DCP_META = "meta.pt"
_HISTORY = re.compile(r"^ckpt-(\d+)\.(pt|dcp)$")
_LEFTOVER = re.compile(
    r"^\.(ckpt(-\d+)?\.pt\.tmp-\d+|ckpt-\d+\.dcp\.(tmp|old)|ckpt\.dcp\.(tmp|copy)|(config|summary)\.json\.tmp-\d+)$"
)  # the training's own atomic writes killed half-way (config.json and summary.json: no other writer has them)
_META_LEFTOVER = re.compile(r"^\.meta\.pt\.tmp-\d+$")  # inside a ckpt-ITER.dcp folder: its meta.pt's atomic write


def is_dcp_dir(path: Path) -> bool:
    return path.is_dir() and (path / DCP_META).is_file() and (path / ".metadata").is_file()


def damaged_dcp(path: Path) -> CheckpointError | None:
    """A sharded checkpoint's directory that lacks one of its records (a partial copy or sync of a run): an
    error naming what it lacks, where it was taken for no checkpoint at all (an older ckpt.pt was resumed or
    exported instead, silently); None for a whole one or a directory that is none."""
    if not path.is_dir() or is_dcp_dir(path):
        return None
    records = [name for name in (".metadata", DCP_META) if (path / name).is_file()]
    if not records and not any(path.glob("*.distcp")):
        return None
    missing = " and ".join(name for name in (".metadata", DCP_META) if name not in records)
    named = path.resolve() if path.is_symlink() else path  # the directory ckpt.dcp points to
    return CheckpointError(f"{str(named)!r} is a damaged sharded checkpoint: it has no {missing} (a partial copy?)")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The latest checkpoint in a run directory: of ``ckpt.pt`` and the DCP directory ``ckpt.dcp``
    points to (a run may have switched modes), the one at the later iteration (file times break a
    tie: a copied directory's times need not keep their order), or None."""
    out_dir = Path(out_dir)
    single, dcp = out_dir / CHECKPOINT_NAME, out_dir / DCP_LINK
    candidates = []  # (the file that records the iteration, the checkpoint)
    if single.is_file():
        candidates.append((single, single))
    if is_dcp_dir(dcp):
        candidates.append((dcp / DCP_META, dcp.resolve()))
    elif (damage := damaged_dcp(dcp)) is not None:  # the latest sharded save, unreadable: said, not passed over
        instead = f"; to resume from {str(single)!r} instead, move {str(dcp)!r} away" if candidates else ""
        raise CheckpointError(f"{damage}{instead}")
    if not candidates and not dcp.is_symlink() and (first := _unlinked_first_save(out_dir)) is not None:
        return first
    if len(candidates) < 2:  # nothing to choose between: its loader reads it (and says why if it cannot)
        return candidates[0][1] if candidates else None
    found = [(_saved_iter(record, other=candidates[1 - i][1]), record.stat().st_mtime_ns, path)
             for i, (record, path) in enumerate(candidates)]  # fmt: skip
    return max(found)[2]


def _unlinked_first_save(out_dir: Path) -> Path | None:
    """A run's first sharded save, complete but without its ``ckpt.dcp`` link: the save was stopped (a kill, a
    preemption) between renaming its folder into place and making the link. The only checkpoint kept, so no
    rollback by hand made it so (every later save keeps a link, replaced atomically); None otherwise."""
    kept = kept_checkpoints(out_dir)
    if len(kept) == 1 and kept[0].endswith(".dcp") and is_dcp_dir(out_dir / kept[0]):
        return (out_dir / kept[0]).resolve()
    return None


def _saved_iter(path: Path, other: Path) -> int:
    """The iteration a checkpoint file records (-1: none recorded). An unreadable one is an error, not the
    older ``other`` silently resumed instead (which replays iterations and overwrites the newer one)."""
    from gptlab.checkpoint.load import torch_load_checked  # (load imports this module)

    try:
        ckpt = torch_load_checked(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; to resume from {str(other)!r} instead, move {str(path)!r} away") from None
    try:
        return int(ckpt["iter_num"])
    except (KeyError, TypeError, ValueError):
        return -1


def remove_save_leftovers(out_dir: str | Path) -> list[str]:
    """What saves killed half-way leave (``.ckpt.pt.tmp-PID``, ``.ckpt-ITER.dcp.tmp``; ``.ckpt-ITER.dcp.old``
    from earlier versions): removed when a run starts in ``out_dir``, since no writer of them is alive
    then. Returns the names removed."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    link = out_dir / DCP_LINK
    dangling = os.readlink(link) if link.is_symlink() and not link.exists() else None
    removed = []
    for p in sorted(out_dir.iterdir()):
        if dangling is not None and p.name in (f".{dangling}.tmp", f".{dangling}.old"):
            continue  # the interrupted save's checkpoint: kept for interrupted_save()'s advice
        if _LEFTOVER.match(p.name):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p.name)
        elif _HISTORY.match(p.name) and p.is_dir() and not p.is_symlink():  # a resumed DCP checkpoint's meta.pt
            for inner in sorted(p.glob(f".{DCP_META}.tmp-*")):  # rewritten in place (save.py), killed half-way
                if _META_LEFTOVER.match(inner.name) and not inner.is_dir():
                    inner.unlink()
                    removed.append(f"{p.name}/{inner.name}")
    return removed


def remove_checkpoints(out_dir: str | Path, keep: str | Path | None = None) -> list[str]:
    """Delete a run directory's checkpoints (``ckpt.pt``, ``ckpt-ITER.pt``, ``ckpt-ITER.dcp``, the
    ``ckpt.dcp`` link): a run that replaces another (``overwrite``) must never resume or export the old
    one's weights. ``keep``: a path never touched (the weights a fine-tune starts from may live there,
    until the run's first checkpoint). Returns the names removed."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    kept = weights_path(keep) if keep is not None else None
    removed = []
    for p in sorted(out_dir.iterdir()):
        target = p.resolve()
        if p.name == DCP_LINK and p.is_symlink():  # a pointer, never the weights: the replaced run's latest
            p.unlink()
            removed.append(p.name)
            continue
        if kept is not None and (kept == target or kept in target.parents or target in kept.parents):
            continue
        if p.name in (CHECKPOINT_NAME, DCP_LINK) or _HISTORY.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
    return removed


def is_run_checkpoint(out_dir: str | Path, path: str | Path) -> bool:
    """Whether ``path`` is one of ``out_dir``'s own checkpoints (what remove_checkpoints removes), not a file
    of the user's that merely lies inside it (an export's folder, a base model's weights)."""
    path = Path(path).resolve()
    return path.parent == Path(out_dir).resolve() and (path.name == CHECKPOINT_NAME or bool(_HISTORY.match(path.name)))


def kept_checkpoints(out_dir: str | Path) -> list[str]:
    """The names of a run directory's kept checkpoints (``ckpt-ITER.pt``, ``ckpt-ITER.dcp``), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in out_dir.iterdir() if (m := _HISTORY.match(p.name))]
    return [name for _, name in sorted(found)]


def rollback_hint(out_dir: str | Path) -> str | None:
    """For a run directory without a latest checkpoint: its kept ones and the command that makes the newest
    the latest (docs/parallel.md's rollback), or None when it keeps none."""
    kept = kept_checkpoints(out_dir)
    if not kept:
        return None
    names = ", ".join(kept) if len(kept) <= 2 else f"{kept[0]}, ..., {kept[-1]} ({len(kept)})"
    out_dir, newest = Path(out_dir), kept[-1]
    if newest.endswith(".dcp"):
        command = f"ln -sfn {newest} {out_dir / DCP_LINK}"
    else:
        command = f"ln -f {out_dir / newest} {out_dir / CHECKPOINT_NAME}"
    return f"kept checkpoints {names} but no latest: `{command}` makes the newest the latest"


def hf_folder_model_type(folder: str | Path) -> str | None:
    """The ``model_type`` of a Hugging Face model folder (a config.json naming one, no gptlab ckpt.pt beside it:
    transformers saved it); None for any other folder."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / CHECKPOINT_NAME).exists():
        return None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        return model_type if model_type and isinstance(model_type, str) else None
    return None


def hf_folder_hint(folder: str | Path) -> str | None:
    """What to do with a Hugging Face model folder named where a run directory was expected (--out_dir of a resume
    or a sample): None for any other folder."""
    if (model_type := hf_folder_model_type(folder)) is None:
        return None
    return (
        f"{str(folder)!r} is a Hugging Face model folder (model_type={model_type!r}), not a run directory: its "
        f"weights load with --init_from={str(folder)!r}"
    )


def no_checkpoint_error(out_dir: str | Path) -> CheckpointError:
    """A resume of ``out_dir``, which has no latest checkpoint: with an interrupted save's remedy, else the
    rollback to its newest kept checkpoint, else the run directories inside it, when there are any."""
    why = interrupted_save(out_dir) or rollback_hint(out_dir)  # a save cut short names its own remedy
    why = why or hf_folder_hint(out_dir)  # transformers' save_pretrained folder, a fine-tune's source
    if not why and stopped_before_training(out_dir):  # a preemption during the compile or the first evaluation
        why = "its run was stopped before it trained a step: start it again without --init_from=resume"
    runs = runs_inside(out_dir)
    if not why and runs:
        why = f"the run directories inside it do: {listed_runs(runs, '--out_dir=')}"
    if not why and not Path(out_dir).exists():
        start = "" if Path(out_dir).is_absolute() else f" (relative paths start at {Path.cwd()})"
        return CheckpointError(
            f"init_from='resume' but out_dir={str(out_dir)!r} does not exist{start}: name the run's --out_dir"
        )
    if not why and (Path(out_dir) / "log.jsonl").is_file():  # a run stopped before its first checkpoint (killed
        why = "its run saved none: start it again without --init_from=resume, with --overwrite=True"  # mid-save)
        why += " or another --out_dir"
    why = why or "a run starts there without --init_from=resume"
    return CheckpointError(f"init_from='resume' but {str(out_dir)!r} holds no checkpoint ({why})")


def saved_summary(out_dir: str | Path) -> dict[str, Any] | None:
    """out_dir's summary.json as a mapping, None if none or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))
        return summary if isinstance(summary, dict) else None
    return None


def stopped_before_training(out_dir: str | Path) -> bool:
    """Whether out_dir's run was stopped by a signal before it trained a step (its summary says so)."""
    summary = saved_summary(out_dir)
    return (
        summary is not None
        and str(summary.get("status", "")).startswith("interrupted")
        and summary.get("tokens_seen") == 0
        and summary.get("checkpoint_iter") is None
    )


def runs_inside(directory: str | Path) -> list[str]:
    """For a directory with no checkpoint of its own: the run directories directly inside it that hold one
    (``out`` is the default out_dir, the quick start's run is ``out/quickstart``). Only looked at, not read: a
    damaged checkpoint there must not replace the error this hint goes with."""
    try:
        found = [d for d in Path(directory).iterdir() if d.is_dir()]
        return sorted(str(d) for d in found if (d / CHECKPOINT_NAME).is_file() or is_dcp_dir(d / DCP_LINK))
    except OSError:  # not a directory, or unreadable: nothing to suggest
        return []


def listed_runs(runs: list[str], prefix: str = "") -> str:
    shown = ", ".join(prefix + shlex.quote(d) for d in runs[:3])
    return shown + (f" ({len(runs)} runs)" if len(runs) > 3 else "")


def weights_path(path: str | Path) -> Path:
    """The checkpoint file or DCP directory ``path`` loads: a run directory's latest, else itself."""
    path = Path(path)
    if path.is_dir() and not is_dcp_dir(path):
        path = latest_checkpoint(path) or path
    return path.resolve()


def checkpoint_history(out_dir: Path, suffix: str) -> list[tuple[int, Path]]:
    out = []
    for p in out_dir.iterdir():
        m = _HISTORY.match(p.name)
        if m and m.group(2) == suffix:
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune_history(history: list[tuple[int, Path]], iter_num: int, keep: int, current: Path) -> None:
    """Keep the last ``keep`` saves of this run's timeline: entries after ``iter_num`` belong to a future a
    rollback abandoned, the entry just written (or, for ckpt.pt, its hard link) always stays."""
    timeline = [(it, p) for it, p in history if it <= iter_num]
    doomed = [p for it, p in history if it > iter_num] + [p for _, p in timeline[: max(0, len(timeline) - keep)]]
    for old in doomed:
        if old.resolve() == current.resolve() or (old.exists() and current.exists() and old.samefile(current)):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def dcp_on_disk(out_dir: str | Path, iter_num: int, resumed: Path | None) -> bool:
    """Whether the sharded checkpoint resumed from (``resumed``, resolved) is ``out_dir``'s own one of
    ``iter_num``, whose shards a save at that iteration need not write again (``save_dcp``'s
    ``weights_on_disk``): not when that name is a link into another run's folder, whose meta.pt would change."""
    own = Path(out_dir) / f"ckpt-{int(iter_num):07d}.dcp"
    return resumed is not None and not own.is_symlink() and resumed == own.resolve()


def remove_entry(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def interrupted_save(out_dir: str | Path) -> str | None:
    """When ``ckpt.dcp`` names a directory that is missing (a save killed between its two renames),
    what to do about it, for the "no checkpoint" error; else None."""
    link = Path(out_dir) / DCP_LINK
    if not link.is_symlink() or link.exists():
        return None
    name = os.readlink(link)
    what = {"tmp": "the new save, complete", "old": "the one it replaced"}
    kept = [f".{name}.{k} ({v})" for k, v in what.items() if is_dcp_dir(Path(out_dir) / f".{name}.{k}")]
    where = " and ".join(kept) if kept else "nothing"
    return f"ckpt.dcp points to the missing {name}: a save was interrupted; left: {where}; rename one to {name}"
