"""Writing checkpoints: the single file ``ckpt.pt`` (atomic: a temporary file, fsync, ``os.replace``) and the
sharded DCP directory ``ckpt-ITER.dcp`` with its ``ckpt.dcp`` link, each state dict free of wrapper prefixes."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoint.integrity import CRC_KEY, recorded_checksums, shard_checksums
from gptlab.checkpoint.layout import (
    CHECKPOINT_NAME,
    DCP_LINK,
    DCP_META,
    checkpoint_history,
    prune_history,
    remove_entry,
)
from gptlab.errors import CheckpointError, first_line, storage_note
from gptlab.fileio import atomic_open, fsync_dir

FORMAT = "gptlab"


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
    prune_history(checkpoint_history(out_dir, "pt"), int(state["iter_num"]), keep if keep > 1 else 0, path)
    return path


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
        if rank == 0:  # the shards' CRC-32s stay with them
            recorded = recorded_checksums(final)
            atomic_save({**meta, CRC_KEY: recorded} if recorded else meta, final / DCP_META)
            _point_link(out_dir, name)
        barrier()
        return final
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a save that crashed
        tmp.mkdir(parents=True)
    barrier()
    try:
        dcp.save(state_dict, checkpoint_id=str(tmp))  # collective: each rank its shards, rank 0 the index
        checksums = shard_checksums(tmp)  # collective: DCP's shards carry no CRC of their own (ckpt.pt's records do)
    except (Exception, CheckpointException) as e:  # every rank raises (DCP gathers the failures): one line, and no
        # half-written folder
        if rank == 0:  # left behind, it filled the disk the resume then needed
            shutil.rmtree(tmp, ignore_errors=True)
        # DCP's CheckpointException: a traceback per failed rank, the disk never named
        refused = _write_refused(first_dcp_failure(e), final)
        if refused is None:  # not the storage's (a lost peer, a bug): as it is
            raise
        raise refused from e
    if rank == 0:
        try:
            _finish_dcp({**meta, CRC_KEY: checksums}, tmp, final, out_dir)
        except (OSError, CheckpointError) as e:  # the folder turned read-only (a remount after a disk error), or
            # full at meta.pt (atomic_save's own line): one line, and the checkpoint-sized temporary folder removed
            shutil.rmtree(tmp, ignore_errors=True)  # (gone once renamed: the complete save stays, with its link
            refused = _write_refused(e, final) if isinstance(e, OSError) else None  # or, at a first save, found
            if refused is None:  # by latest_checkpoint)
                raise
            raise refused from e
        prune_history(checkpoint_history(out_dir, "dcp"), int(meta["iter_num"]), keep, final)
    barrier()
    return final


def _finish_dcp(meta: dict[str, Any], tmp: Path, final: Path, out_dir: Path) -> None:
    """Rank 0's end of a sharded save: ``meta.pt`` into the written folder, the folder renamed into place, the
    link pointed at it."""
    atomic_save(meta, tmp / DCP_META)
    fsync_dir(tmp)
    if final.exists() or final.is_symlink():  # another state at this iteration (a fine-tune, a rollback)
        trash = out_dir / f".{final.name}.old"
        remove_entry(trash)
        os.replace(final, trash)  # a crash from here to the next line leaves both, named in interrupted_save()
        os.replace(tmp, final)
        remove_entry(trash)  # a link (into another run's folder) goes, never what it points to
    else:
        os.replace(tmp, final)
    _point_link(out_dir, final.name)


def first_dcp_failure(error: BaseException) -> BaseException:
    """The first failing rank's exception in DCP's ``CheckpointException`` (a ``BaseException`` holding every
    rank's exception and traceback); ``error`` itself for any other."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        return first[0] if isinstance(first, tuple) else first
    return error


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
    if error.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CheckpointError(  # the folder refuses every write, links or not: said as such
            f"cannot create the link {str(out_dir / DCP_LINK)!r} -> {name} that names the latest sharded checkpoint: "
            f"{error.strerror or first_line(error)}{storage_note(error, out_dir)}"
        )
    way_out = (
        "on Windows enable Developer Mode (or run as administrator)"
        if sys.platform == "win32"  # symbolic links need one of them there
        else "its filesystem has no symbolic links (FAT, exFAT, some FUSE mounts): pick an --out_dir on another"
    )
    return CheckpointError(
        f"cannot create the link {str(out_dir / DCP_LINK)!r} -> {name} that names the latest sharded checkpoint "
        f"({first_line(error)}): {way_out}, or train without --use_fsdp"
    )
