"""Checkpoints: atomic writes, ``weights_only`` loads, and state dicts free of wrapper prefixes.

Two formats, one meaning (model, optimizer, arch, config, iteration, best val loss, RNG, tokenizer):

- single file ``ckpt.pt`` (single process, DDP, ZeRO-1 after ``consolidate_state_dict``): a full
  state dict written by rank 0. A crash during a save leaves the previous checkpoint intact: we
  write to a temporary file in the same directory, fsync it, and ``os.replace`` it over the old one.
- ``torch.distributed.checkpoint`` directory (FSDP): ``ckpt-ITER.dcp/`` where every rank writes
  its own shards (no gather to rank 0), plus ``meta.pt`` with everything but the tensors. It is
  written under a temporary name and renamed when complete; ``ckpt.dcp`` is a symlink to the
  latest, replaced atomically. DCP reshards on load, so any world size can resume it.

``latest_checkpoint(out_dir)`` picks the one at the later iteration; ``load_checkpoint`` turns either into
the single-file dict (a DCP directory is read without a process group), which is how a checkpoint
resumes under another mode and how ``gptlab export`` works. With ``keep_checkpoints=K`` the last K
are kept (``ckpt-ITER.pt`` hard links, or ``ckpt-ITER.dcp`` directories).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.errors import CheckpointError, first_line, storage_note
from gptlab.fileio import atomic_open, fsync_dir

CHECKPOINT_NAME = "ckpt.pt"
DCP_LINK = "ckpt.dcp"
DCP_META = "meta.pt"
FORMAT = "gptlab"
_HISTORY = re.compile(r"^ckpt-(\d+)\.(pt|dcp)$")
_LEFTOVER = re.compile(
    r"^\.(ckpt(-\d+)?\.pt\.tmp-\d+|ckpt-\d+\.dcp\.(tmp|old)|ckpt\.dcp\.(tmp|copy)|(config|summary)\.json\.tmp-\d+)$"
)  # the training's own atomic writes killed half-way (config.json and summary.json: no other writer has them)
# torch.compile wraps the model as `_orig_mod`, DDP as `module`: neither belongs in a checkpoint.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def software_versions() -> dict[str, str]:
    """What wrote a checkpoint (a resume says what changed since)."""
    import platform

    from gptlab import __version__

    return {"gptlab": __version__, "torch": str(torch.__version__), "python": platform.python_version()}  # plain str


def clean_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes (compile, DDP) from every key, however they are nested."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file, fsync, then rename over ``path``; a full disk is one line."""
    try:
        with atomic_open(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        if isinstance(e.__context__, KeyboardInterrupt):  # a second Ctrl-C mid-save: the abort it asks for
            raise e.__context__ from None
        refused = _write_refused(e, Path(path))
        if refused is None:
            raise
        raise refused from e
    return Path(path)


def _write_refused(error: BaseException, path: Path) -> CheckpointError | None:
    """A checkpoint write the storage refused (a full disk, a quota, a file-size limit) as one line: the reason
    and the free space; None for any other error. torch's zip writer reports the OSError's aftermath as a
    RuntimeError whose context is the OSError."""
    cause = next((c for c in (error, error.__cause__, error.__context__) if isinstance(c, OSError)), None)
    if cause is None:
        return None
    reason = (cause.strerror or first_line(cause)) + storage_note(cause, path.parent)
    return CheckpointError(f"cannot write the checkpoint {path}: {reason}")


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
    if len(candidates) < 2:  # nothing to choose between: its loader reads it (and says why if it cannot)
        return candidates[0][1] if candidates else None
    found = [(_saved_iter(record, other=candidates[1 - i][1]), record.stat().st_mtime_ns, path)
             for i, (record, path) in enumerate(candidates)]  # fmt: skip
    return max(found)[2]


def _saved_iter(path: Path, other: Path) -> int:
    """The iteration a checkpoint file records (-1: none recorded). An unreadable one is an error, not the
    older ``other`` silently resumed instead (which replays iterations and overwrites the newer one)."""
    try:
        ckpt = _torch_load_checked(path)
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


def no_checkpoint_error(out_dir: str | Path) -> CheckpointError:
    """A resume of ``out_dir``, which has no latest checkpoint: with an interrupted save's remedy, else the
    rollback to its newest kept checkpoint, else the run directories inside it, when there are any."""
    why = interrupted_save(out_dir) or rollback_hint(out_dir)  # a save cut short names its own remedy
    if not why and stopped_before_training(out_dir):  # a preemption during the compile or the first evaluation
        why = "its run was stopped before it trained a step: start it again without --init_from=resume"
    runs = runs_inside(out_dir)
    if not why and runs:
        why = f"the run directories inside it do: {_listed(runs, '--out_dir=')}"
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


def _listed(runs: list[str], prefix: str = "") -> str:
    shown = ", ".join(prefix + shlex.quote(d) for d in runs[:3])
    return shown + (f" ({len(runs)} runs)" if len(runs) > 3 else "")


def weights_path(path: str | Path) -> Path:
    """The checkpoint file or DCP directory ``path`` loads: a run directory's latest, else itself."""
    path = Path(path)
    if path.is_dir() and not is_dcp_dir(path):
        path = latest_checkpoint(path) or path
    return path.resolve()


def _history(out_dir: Path, suffix: str) -> list[tuple[int, Path]]:
    out = []
    for p in out_dir.iterdir():
        m = _HISTORY.match(p.name)
        if m and m.group(2) == suffix:
            out.append((int(m.group(1)), p))
    return sorted(out)


def _prune(history: list[tuple[int, Path]], iter_num: int, keep: int, current: Path) -> None:
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


def save_single_file(state: dict[str, Any], out_dir: str | Path, keep: int = 1) -> Path:
    """Rank 0: ``ckpt.pt`` atomically; with ``keep > 1`` also ``ckpt-ITER.pt`` (a hard link), the
    last ``keep`` of them kept."""
    out_dir = Path(out_dir)
    path = atomic_save(state, out_dir / CHECKPOINT_NAME)
    if keep > 1:
        link = out_dir / f"ckpt-{int(state['iter_num']):07d}.pt"
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(path, tmp)
            except OSError:  # no hard links there (gcsfuse, s3fs, FAT): a copy, at a copy's disk space
                shutil.copyfile(path, tmp)
            os.replace(tmp, link)
        except BaseException as e:  # a full disk mid-copy: no partial copy left to fill it further
            tmp.unlink(missing_ok=True)
            refused = _write_refused(e, link) if isinstance(e, OSError) else None
            if refused is None:
                raise
            raise CheckpointError(f"{refused}; {path.name} itself was written, and resumes") from e
    _prune(_history(out_dir, "pt"), int(state["iter_num"]), keep if keep > 1 else 0, path)
    return path


def dcp_on_disk(out_dir: str | Path, iter_num: int, resumed: Path | None) -> bool:
    """Whether the sharded checkpoint resumed from (``resumed``, resolved) is ``out_dir``'s own one of
    ``iter_num``, whose shards a save at that iteration need not write again (``save_dcp``'s
    ``weights_on_disk``): not when that name is a link into another run's folder, whose meta.pt would change."""
    own = Path(out_dir) / f"ckpt-{int(iter_num):07d}.dcp"
    return resumed is not None and not own.is_symlink() and resumed == own.resolve()


def save_dcp(
    state_dict: dict[str, Any],
    meta: dict[str, Any],
    out_dir: str | Path,
    keep: int,
    rank: int,
    barrier: Any,
    weights_on_disk: bool = False,
) -> Path:
    """Every rank: write its shards of ``state_dict`` with torch.distributed.checkpoint into a
    temporary directory; rank 0 adds ``meta.pt``, renames it to ``ckpt-ITER.dcp`` and points
    ``ckpt.dcp`` at it. ``barrier()`` synchronises the ranks. ``weights_on_disk``: this run resumed
    from exactly ``ckpt-ITER.dcp`` and has not stepped since (its first eval after a resume): the
    shards there are this state, so only ``meta.pt`` is rewritten (atomically; the settings may have
    changed). The caller decides it from the run's own state, the same on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    out_dir = Path(out_dir)
    name = f"ckpt-{int(meta['iter_num']):07d}.dcp"
    tmp, final = out_dir / f".{name}.tmp", out_dir / name
    if weights_on_disk:
        if rank == 0:
            atomic_save(meta, final / DCP_META)
            _point_link(out_dir, name)
        barrier()
        return final
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a save that crashed
        tmp.mkdir(parents=True)
    barrier()
    try:
        dcp.save(state_dict, checkpoint_id=str(tmp))  # collective: each rank its shards, rank 0 the index
    except (Exception, CheckpointException) as e:  # every rank raises (DCP gathers the failures): one line, and no
        # half-written folder
        if rank == 0:  # left behind, it filled the disk the resume then needed
            shutil.rmtree(tmp, ignore_errors=True)
        # DCP's CheckpointException: a traceback per failed rank, the disk never named
        refused = _write_refused(_first_failure(e), final)
        if refused is None:  # not the storage's (a lost peer, a bug): as it is
            raise
        raise refused from e
    if rank == 0:
        atomic_save(meta, tmp / DCP_META)
        fsync_dir(tmp)
        if final.exists() or final.is_symlink():  # another state at this iteration (a fine-tune, a rollback)
            trash = out_dir / f".{name}.old"
            _remove_entry(trash)
            os.replace(final, trash)  # a crash from here to the next line leaves both, named in interrupted_save()
            os.replace(tmp, final)
            _remove_entry(trash)  # a link (into another run's folder) goes, never what it points to
        else:
            os.replace(tmp, final)
        _point_link(out_dir, name)
        _prune(_history(out_dir, "dcp"), int(meta["iter_num"]), keep, final)
    barrier()
    return final


def _first_failure(error: BaseException) -> BaseException:
    """The first failing rank's exception in DCP's ``CheckpointException`` (a ``BaseException`` holding every
    rank's exception and traceback); ``error`` itself for any other."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        return first[0] if isinstance(first, tuple) else first
    return error


def _remove_entry(path: Path) -> None:
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


def _point_link(out_dir: Path, name: str) -> None:
    """``ckpt.dcp`` -> ``name``, replaced atomically: the link names the old or the new, never neither."""
    link_tmp, link = out_dir / f".{DCP_LINK}.tmp", out_dir / DCP_LINK
    link_tmp.unlink(missing_ok=True)
    try:
        os.symlink(name, link_tmp)
    except OSError as e:
        raise _links_refused(out_dir, name, e) from None
    copied = link.is_dir() and not link.is_symlink()  # a copy of the run that followed the link (scp -r,
    # rsync -L, shutil.copytree): an older checkpoint's copy, which a directory cannot be replaced over
    if copied:
        os.replace(link, out_dir / f".{DCP_LINK}.copy")
    os.replace(link_tmp, link)
    fsync_dir(out_dir)
    if copied:
        shutil.rmtree(out_dir / f".{DCP_LINK}.copy")


def check_links_allowed(out_dir: str | Path, rank: int) -> None:
    """A sharded checkpoint is named by the link ``ckpt.dcp``: where out_dir's filesystem has no symbolic links,
    say so before training rather than at the first save, an eval_interval later (every rank tries its own)."""
    probe = Path(out_dir) / f".gptlab-link-probe-{rank}"
    probe.unlink(missing_ok=True)
    try:
        os.symlink(DCP_LINK, probe)
    except OSError as e:
        raise _links_refused(Path(out_dir), "ckpt-ITER.dcp", e) from None
    probe.unlink()


def _links_refused(out_dir: Path, name: str, error: OSError) -> CheckpointError:
    import sys

    way_out = (
        "on Windows enable Developer Mode (or run as administrator)"
        if sys.platform == "win32"  # symbolic links need one of them there
        else "its filesystem has no symbolic links (FAT, exFAT, some FUSE mounts): pick an --out_dir on another"
    )
    return CheckpointError(
        f"cannot create the link {str(out_dir / DCP_LINK)!r} -> {name} that names the latest sharded checkpoint "
        f"({first_line(error)}): {way_out}, or train without --use_fsdp"
    )


def load_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint's ``meta.pt`` (everything but the tensors), with ``dcp_path`` added. Every DCP load
    comes through here, so its ``.metadata`` is checked here too (``check_dcp_metadata``)."""
    path = Path(path)
    meta = _torch_load_checked(path / DCP_META)
    check_dcp_metadata(path)
    check_sizes_fit_weights(meta.get("arch"), _dcp_model_shapes(path), path)
    meta["dcp_path"] = str(path)
    return meta


def _dcp_model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The model tensors' names and full shapes, as a DCP checkpoint's ``.metadata`` lists them (checked first)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        listed = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} is not a readable gptlab DCP checkpoint ({first_line(e)})") from None
    return {k[len("model.") :]: tuple(getattr(v, "size", ())) for k, v in listed.items() if k.startswith("model.")}


# What a DCP ``.metadata`` pickle may name: DCP's own metadata types, torch.Size, dtypes, layouts, paths.
_DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_DCP_METADATA_NAMES = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a table lookup by name
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        (module, name)
        for module in ("pathlib", "pathlib._local")  # pathlib._local: Python 3.13's pickles
        for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    ),
    ("collections", "OrderedDict"),
}


def check_dcp_metadata(path: str | Path) -> None:
    """``torch.distributed.checkpoint`` reads a checkpoint's ``.metadata`` with plain ``pickle.load``: a
    crafted one runs code as it is read (a downloaded FSDP checkpoint). Read it first with an unpickler
    that builds only DCP's metadata types and refuses any other global, as weights_only does for
    ``torch.load``."""
    import io
    import pickle

    def allowed(module: str, name: str) -> bool:
        if (module, name) in _DCP_METADATA_NAMES:
            return True
        if module == "torch":  # dtypes (torch.float32 pickles as the global torch.float32)
            return isinstance(getattr(torch, name, None), torch.dtype)
        if module in _DCP_METADATA_MODULES:
            import importlib

            obj = getattr(importlib.import_module(module), name, None)
            return isinstance(obj, type) and obj.__module__ == module  # its own types, not what it imports
        return False

    class MetadataOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if not allowed(module, name):
                raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a checkpoint-metadata type")
            return super().find_class(module, name)

    for file in sorted(set(Path(path).glob("*.metadata")) | set(Path(path).glob(".metadata"))):
        try:
            MetadataOnly(io.BytesIO(file.read_bytes())).load()
        except Exception as e:
            reason = first_line(e)
            raise CheckpointError(
                f"{str(file)!r} is not a DCP checkpoint's metadata ({reason}); gptlab does not read it, as "
                "it could run code when unpickled; the file was left untouched"
            ) from None


def read_saved_settings(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training settings and the architecture a checkpoint was written with; a record without its training
    settings is damaged (every gptlab checkpoint has them): resumed on the defaults, it went on as another run."""
    meta = read_checkpoint_record(path)
    if not _saved_train(meta):
        raise CheckpointError(
            f"{str(path)!r} is a damaged gptlab checkpoint: it has no config['train'] record (the settings a "
            "resume goes on with); the file was left untouched"
        )
    return _saved_train(meta), dict(meta.get("arch") or {})


def read_checkpoint_record(path: str | Path) -> dict[str, Any]:
    """A checkpoint's record without its weights being read: a DCP directory's meta, a ckpt.pt memory-mapped."""
    path = Path(path)
    return load_checkpoint_meta(path) if is_dcp_dir(path) else _torch_load_checked(path)


def _saved_train(meta: dict[str, Any]) -> dict[str, Any]:
    return dict((meta.get("config") or {}).get("train") or {})


def _optimizer_settings(meta: dict[str, Any]) -> tuple[float, float, tuple[float, float]]:
    train = _saved_train(meta)
    return (
        float(train.get("weight_decay", 0.1)),
        float(train.get("learning_rate", 6e-4)),
        (float(train.get("beta1", 0.9)), float(train.get("beta2", 0.95))),
    )


def load_dcp_full(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint directory as the single-file dict: full model and optimizer state
    dicts (plain AdamW layout), read by this process alone (no process group needed)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from gptlab.config.model import ModelArchitectureConfig
    from gptlab.model.gpt import ConfigurableGPT

    path = Path(path)
    meta = load_checkpoint_meta(path)
    from gptlab.plugins import saved_plugins

    model = ConfigurableGPT(ModelArchitectureConfig.from_dict(meta["arch"], saved_plugins(meta)))
    weight_decay, lr, betas = _optimizer_settings(meta)
    optimizer = model.configure_optimizers(weight_decay, lr, betas, "cpu")
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the layout to read into (AdamW states created)
    state = {"model": model_sd, "optimizer": optim_sd}
    load_dcp(state, path, no_dist=True)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    meta.pop("dcp_path")
    return {**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def load_dcp_model(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint directory as the single-file dict without its optimizer states, for what needs the
    weights only (sampling, conversion): read straight into plain tensors, no model or optimizer built (the
    full load holds the model twice, gradients and the AdamW states: 2.7x the memory for sampling)."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    meta = load_checkpoint_meta(path)  # checks the metadata and its sizes against the arch record first
    with dcp_errors(path):  # gone since (a live run's next save pruned it)
        listed = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    model = {
        k[len("model.") :]: torch.empty(tuple(v.size), dtype=v.properties.dtype)
        for k, v in listed.items()
        if k.startswith("model.") and hasattr(v, "size")
    }
    tied = bool((meta.get("arch") or {}).get("weight_tying")) and "wte.weight" in model
    if tied:  # the embedding is written under both names: read once
        model.pop("lm_head.weight", None)
    load_dcp({"model": model}, path, no_dist=True)
    if tied:
        model["lm_head.weight"] = model["wte.weight"]
    meta.pop("dcp_path")
    return {**meta, "model": model}


def load_dcp(state: dict[str, Any], path: str | Path, *, no_dist: bool = False) -> None:
    """``dcp.load`` into ``state`` with the checkpoint's non-tensor entries (an optimizer's lr, betas, ...)
    read as ``weights_only`` reads: DCP's own planner unpickles them with ``weights_only=False``, so a
    crafted shard of a downloaded FSDP checkpoint would run code as it loads (``ckpt.pt`` never can)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class PlainDataPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            import pickle

            try:
                torch.load(value, weights_only=True)  # refuses any global that is not plain data or a tensor
            except pickle.UnpicklingError:
                fqn = read_item.dest_index.fqn
                raise pickle.UnpicklingError(
                    f"its entry {fqn!r} is not plain data: loading it could run code"
                ) from None
            value.seek(0)  # what passed that check, read as DCP reads it
            super().load_bytes(read_item, value)

    with dcp_errors(path), warnings.catch_warnings(), _without_dcp_fallback_tracebacks():
        if no_dist:  # read by this process alone, as asked: DCP warns it is "assuming" so
            warnings.filterwarnings("ignore", message=".*single process.*", category=UserWarning)
        dcp.load(state, checkpoint_id=str(path), planner=PlainDataPlanner(), no_dist=no_dist)


@contextlib.contextmanager
def _without_dcp_fallback_tracebacks() -> Iterator[None]:
    """DCP logs "Global (and Rank local) metadata is not found" with tracebacks on the root logger (printed to
    stderr when no logging is set up) before it fails on a missing ``.metadata``: dcp_errors says so in one line."""
    import logging

    def drop(record: logging.LogRecord) -> bool:
        return "metadata is not found" not in record.getMessage() or "checkpoint" not in record.pathname

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def dcp_errors(path: str | Path) -> Iterator[None]:
    """A DCP load that fails (a missing or damaged shard) as one CheckpointError line. DCP raises
    ``CheckpointException``, a ``BaseException``, with every rank's traceback inside."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except (Exception, CheckpointException) as e:
        e = _first_failure(e)
        reason = first_line(e)
        raise CheckpointError(
            f"{str(path)!r} is not a readable gptlab DCP checkpoint ({type(e).__name__}: {reason[:300]})"
        ) from None


@contextlib.contextmanager
def state_errors(path: str | Path, what: str) -> Iterator[None]:
    """Loading a checkpoint's ``what`` (weights, optimizer state) that do not fit the architecture it
    records (edited, or written by another program) as one CheckpointError line, not a traceback."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # past torch's heading
        raise CheckpointError(
            f"{str(path)!r}: its {what} do not fit the architecture it records ({reason[:300]}); "
            "the file was left untouched"
        ) from None


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict:
    """A plain (index-keyed) optimizer state dict re-keyed by parameter name, for
    ``set_optimizer_state_dict``; ``optimizer`` holds ``model``'s parameters in the same order
    as the optimizer that wrote ``state``."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    out_state = {order[int(i)]: v for i, v in state["state"].items()}
    groups = [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": out_state, "param_groups": groups}


# OSErrors that say the file could not be opened, whatever its bytes: never reported as a corrupt checkpoint
FILE_SYSTEM_REFUSALS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def check_zip_crc(path: Path) -> None:
    """torch.load does not check the CRC-32 that torch.save records for every tensor: flipped bytes (a bad
    disk, a broken copy) would load as weights and train on. Reading the file once costs about a second
    per GB, when weights are loaded (not for a look at a checkpoint's settings)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FILE_SYSTEM_REFUSALS as e:  # the file system's answer (mode 600, another owner), not the bytes'
        raise CheckpointError(f"{str(path)!r} could not be read ({first_line(e)})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if foreign_file(path):  # a text file, say: no checkpoint at all, not a damaged one
            raise not_a_checkpoint(path) from None
        reason = first_line(e)
        raise CheckpointError(
            f"{str(path)!r} is corrupt or truncated (not a readable torch.save archive: {reason}); "
            "the file was left untouched"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{str(path)!r} is corrupt: its record {bad!r} fails its CRC-32 check (the bytes changed after "
            "they were written); the file was left untouched"
        )


def refused_as_unsafe(error: BaseException, path: Path) -> bool:
    """``torch.load(weights_only=True)`` refused the file: its pickle would build objects or call code. Only a
    torch.save archive or a pickle (its PROTO opcode first) can be that: the same refusal of a JSON file, whose
    '{' its unpickler reads as an opcode, means the file is no checkpoint at all."""
    return "weights only load failed" in str(error).lower() and pickled(path)


def _first_bytes(path: Path) -> bytes | None:
    """The file's first four bytes, which tell a zip archive (torch.save) and a pickle from anything else; None
    when the file cannot be read (its own error says why)."""
    try:
        with open(path, "rb") as file:
            return file.read(4)
    except OSError:
        return None


def cut_short(path: Path) -> bool:
    """``path`` starts as a zip archive but has no central directory: a torch.save file cut short (a partial
    download or copy), whose torch.load error is an errno or a zip reader's complaint."""
    return _first_bytes(path) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def pickled(path: Path) -> bool:
    """``path`` starts as a torch.save archive (a zip) or a pickle (legacy torch.save, nanoGPT's meta.pkl) does;
    any other file torch.load fails on is no checkpoint at all (its complaint would be about a byte)."""
    head = _first_bytes(path)  # a zip's local header first: a truncated archive (a partial copy) has no directory
    if head is None:
        return True  # unreadable: what the file is, its own error says
    return head[:1] == b"\x80" or head == b"PK\x03\x04" or zipfile.is_zipfile(path)


def foreign_file(path: Path) -> bool:
    """A file whose first bytes are some other file's (text, say), not a torch.save archive's or a pickle's: no
    checkpoint at all. An empty or zero-filled start is a checkpoint's damage (a copy killed at once, blocks a
    crash left unwritten), not that."""
    head = _first_bytes(path)
    return head is not None and head.strip(b"\0") != b"" and not pickled(path)


def not_a_checkpoint(path: Path) -> CheckpointError:
    """A file that is neither a torch.save archive nor a pickle (``foreign_file``): named as no checkpoint, not
    as a corrupt or truncated one."""
    return CheckpointError(f"{str(path)!r} is not a checkpoint (not a torch.save file); the file was left untouched")


def unsafe_checkpoint_error(path: Path) -> CheckpointError:
    """One line for a checkpoint weights_only refused (torch's own text advises weights_only=False: not here)."""
    return CheckpointError(
        f"{str(path)!r} holds objects beyond tensors and plain data, which gptlab does not load "
        "(torch.load(weights_only=True) refused it); the file was left untouched"
    )


def _torch_load_checked(path: Path) -> dict[str, Any]:
    """``torch.load`` memory-mapped (copy-on-write): the tensors are read as they are used, and the ranks
    of a node resuming from one ``ckpt.pt`` share the page cache instead of holding a copy each."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=os.name == "posix")  # a mapped file
        # stays deletable there, so keep_checkpoints can remove the checkpoint a run resumed from
    except MemoryError:
        raise  # not the file's fault
    except FILE_SYSTEM_REFUSALS as e:  # the file system's answer, not the bytes' (a truncated archive can raise
        # another OSError: EINVAL from the zip reader)
        raise CheckpointError(f"{str(path)!r} could not be read ({first_line(e)})") from None
    except Exception as e:
        # the memory-mapped load's complaint about anything but a zip archive would send the user re-saving
        reason = first_line(e) if zipfile.is_zipfile(path) else "not a torch.save archive"
        if refused_as_unsafe(e, path):  # a pickle that would build objects or call code
            raise unsafe_checkpoint_error(path) from None
        if foreign_file(path):  # a text file, say: no checkpoint at all, not a damaged one
            raise not_a_checkpoint(path) from None
        raise CheckpointError(
            f"{str(path)!r} is corrupt or truncated ({reason}); the file was left untouched"
        ) from None
    if isinstance(ckpt, dict) and "model_args" in ckpt and ckpt.get("format") != FORMAT:
        from gptlab.model.nanogpt import nanogpt_training_checkpoint  # (it imports this module)

        return nanogpt_training_checkpoint(ckpt, str(path))  # resumed, sampled and exported as gptlab's own
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a gptlab training checkpoint (no format='{FORMAT}' record)")
    problem = record_problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: {problem}; the file was left untouched")
    return ckpt


_MINIMUM = {"version": 0, "world_size": 1, "iter_num": 0, "tokens_seen": 0}  # the counts' smallest value
# What each field of a checkpoint's record is (``checkpoint_meta`` in the training loop writes them); a field
# may be absent (older checkpoints), but one that is there has its type: a damaged or hand-edited record
# (weights_only loads any plain data) was a traceback wherever the field was first used.
_RECORD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "version": ((int,), "an integer"),
    "parallel": ((str,), "a string"),
    "world_size": ((int,), "an integer"),
    "scaler": ((dict, type(None)), "a mapping or None"),
    "arch": ((dict,), "a mapping"),
    "config": ((dict,), "a mapping"),
    "tokenizer": ((dict, type(None)), "a mapping or None"),
    "dataset": ((str, type(None)), "a string or None"),
    "iter_num": ((int,), "an integer"),
    "tokens_seen": ((int,), "an integer"),
    "best_val_loss": ((int, float), "a number"),
    "rng": ((dict, type(None)), "a mapping or None"),
    "gradient_history": ((dict,), "a mapping"),
    "data": ((dict, type(None)), "a mapping or None"),
    "versions": ((dict, type(None)), "a mapping or None"),
    "weights_origin": ((str, type(None)), "a string or None"),
    "plugin_digests": ((dict, type(None)), "a mapping or None"),
    "model": ((dict,), "a mapping"),
    "optimizer": ((dict,), "a mapping"),
}
_NESTED_TYPES: dict[tuple[str, str], tuple[tuple[type, ...], str]] = {
    ("config", "train"): ((dict,), "a mapping"),
    ("config", "arch"): ((dict,), "a mapping"),
    ("rng", "torch"): ((torch.Tensor,), "a tensor"),
    ("rng", "cuda"): ((torch.Tensor,), "a tensor"),
    ("gradient_history", "history"): ((list,), "a list"),
    ("optimizer", "state"): ((dict,), "a mapping"),
    ("optimizer", "param_groups"): ((list,), "a list"),
}


def _described(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def record_problem(ckpt: Mapping[str, Any]) -> str | None:
    """What is wrong with the types of a checkpoint record's fields (None when nothing): one line naming the
    field, its value and what it should be."""
    for key, (types, wanted) in _RECORD_TYPES.items():
        if key not in ckpt:
            continue
        value = ckpt[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"its {key} is {_described(value)}, not {wanted}"
        if key in _MINIMUM and value < _MINIMUM[key]:
            return f"its {key} is {value!r}, not {'a positive' if _MINIMUM[key] else 'a non-negative'} integer"
    for (key, inner), (types, wanted) in _NESTED_TYPES.items():
        outer = ckpt.get(key)
        if isinstance(outer, dict) and inner in outer and not isinstance(outer[inner], types):
            return f"its {key}[{inner!r}] is {_described(outer[inner])}, not {wanted}"
    if any(not isinstance(v, torch.Tensor) for v in (ckpt.get("model") or {}).values()):
        return "its model state holds values that are not tensors"
    history = (ckpt.get("gradient_history") or {}).get("history", [])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in history):
        return "its gradient_history['history'] holds values that are not numbers"
    return None


READ_ATTEMPTS = 3


def load_checkpoint(path: str | Path, *, optimizer: bool = True) -> dict[str, Any]:
    """Load a gptlab checkpoint with ``weights_only=True``: a ``ckpt.pt``, a DCP directory, or a
    run directory (its latest checkpoint); one-line CheckpointError otherwise. ``optimizer=False``: the
    weights are all the caller uses (a DCP checkpoint's optimizer states are then not read; a ckpt.pt's,
    memory-mapped, never are until used).

    A run directory that a live run saves into: its next save can prune the sharded checkpoint being
    read (keep_checkpoints; a ``ckpt.pt`` is replaced atomically and reads whole): the newer one is read."""
    for _ in range(READ_ATTEMPTS):
        found = weights_path(path)
        try:
            return _load_found(found, optimizer)
        except (CheckpointError, OSError):
            named = Path(path).resolve() == found  # the checkpoint itself, not a run directory's latest
            if named or (found.exists() and weights_path(path) == found):  # damaged, not replaced: as it is
                raise
    raise CheckpointError(
        f"the latest checkpoint of {str(path)!r} was replaced {READ_ATTEMPTS} times while it was read (the "
        "training writing there saves faster than it is read): load a ckpt-ITER.dcp by its name, or try again"
    )


def _load_found(path: Path, optimizer: bool) -> dict[str, Any]:
    if is_dcp_dir(path):
        return load_dcp_full(path) if optimizer else load_dcp_model(path)
    if (damage := damaged_dcp(path)) is not None:
        raise damage
    runs: list[str] = []
    if path.is_dir():  # a run directory without a checkpoint: the error names the file it expected
        runs = runs_inside(path)
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        inside = f"the run directories inside it hold one: {_listed(runs)}" if runs else ""
        expected = f"expected the {CHECKPOINT_NAME} a training run writes in its out_dir"
        raise CheckpointError(f"no checkpoint at {str(path)!r}: {inside or expected}")
    check_zip_crc(path)  # the weights are about to be used: a look at the settings (read_saved_settings) skips it
    ckpt = _torch_load_checked(path)
    missing = [key for key in ("model", "arch", "iter_num") if key not in ckpt]
    if missing:
        raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: it has no {', '.join(missing)}")
    if isinstance(ckpt["model"], dict):  # its keys as the loaders read them (a compiled or DDP model's prefixes off)
        shapes = {k: tuple(v.shape) for k, v in clean_state_dict(ckpt["model"]).items() if isinstance(v, torch.Tensor)}
        check_sizes_fit_weights(ckpt["arch"], shapes, path)
    return ckpt


def check_sizes_fit_weights(arch: Any, shapes: dict[str, tuple[int, ...]], path: str | Path) -> None:
    """The sizes a checkpoint's ``arch`` record names, against the weights it holds, before anything is planned
    or built from them: a hand-edited (or crafted) record of 10**7 layers filled the memory of the start-up
    memory plan, and of the model built to load a sharded one, before the weights were compared."""
    if not isinstance(arch, dict):
        raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: its arch record is not a mapping")
    expected = (arch.get("vocab_size"), arch.get("n_embd"))
    # a record without a size, or weights without an embedding, fail where the model is built
    embedding = expected if "wte.weight" in shapes and None not in expected else None
    disagreement = weights_disagree(arch.get("n_layer"), embedding, shapes)
    if disagreement == "layers":
        raise CheckpointError(
            f"{str(path)!r} is a damaged gptlab checkpoint: its arch record says n_layer={arch['n_layer']!r}, "
            f"its weights hold {layer_count(shapes)} layers"
        )
    if disagreement == "embedding":
        raise CheckpointError(
            f"{str(path)!r} is a damaged gptlab checkpoint: its arch record says (vocab_size, n_embd)={expected}, "
            f"its token embedding has shape {shapes['wte.weight']}"
        )


def _layer_indices(shapes: Mapping[str, Any]) -> set[str]:
    return {k.split(".")[1] for k in shapes if k.startswith("blocks.")}


def layer_count(shapes: Mapping[str, Any]) -> int:
    """The blocks a state dict (or its names to shapes) holds."""
    return len(_layer_indices(shapes))


def weights_disagree(n_layer: int | None, embedding: tuple[int, int] | None, shapes: Mapping[str, Any]) -> str | None:
    """Which size a record (a checkpoint's arch, a config.json) names that its weights (``shapes``: state-dict
    names to shapes) do not bear out: 'layers' (blocks.0 .. blocks.N-1), 'embedding' (wte.weight's shape), or
    None; a size given as None is not compared. Checked before anything is planned or built from the record."""
    layers = _layer_indices(shapes)
    if n_layer is not None and (n_layer != len(layers) or layers != {str(i) for i in range(len(layers))}):
        return "layers"
    if embedding is not None and shapes.get("wte.weight") != embedding:
        return "embedding"
    return None
