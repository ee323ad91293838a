"""CRC-32 of a sharded (DCP) checkpoint's files, recorded when it is written and checked before its weights load.

``ckpt.pt`` carries a CRC-32 per record (torch.save's zip archive; ``check_zip_crc``), but DCP's ``.distcp``
shards carry none: bytes flipped on a disk or in a copy loaded as weights and trained on (or stopped the run
later as a NaN, with advice to lower the learning rate). The ranks share the work: rank r reads every
world-th file of the sorted list, at save and at load, and the results are gathered, so a check costs each
rank about its own shards' reading time (zlib's CRC-32 runs at several GB/s).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from gptlab.checkpoint.layout import DCP_META
from gptlab.errors import CheckpointError

CRC_KEY = "shard_crc32"  # meta.pt's record: {file name: CRC-32}
_ERROR = "\0error"  # a rank's failure to read its share, in the gathered dict (no file is named so)
_CHUNK = 16 << 20


def file_crc32(path: Path) -> int:
    """The CRC-32 of a file's bytes, read in 16 MB chunks."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathered(value: Any, world: int) -> list[Any]:
    """Every rank's ``value``, in rank order (a collective where the world is larger than one)."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values


def shard_checksums(folder: Path) -> dict[str, int]:
    """Every rank: the CRC-32 of each file DCP wrote into ``folder`` (all but ``meta.pt``, which torch.save's
    own CRCs cover), the ranks sharing the reading. A collective under a process group."""
    rank, world = _world()
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != DCP_META)
    try:
        share: dict[str, Any] = {name: file_crc32(folder / name) for name in names[rank::world]}
    except OSError as e:  # still gathered: the other ranks wait in the collective otherwise
        share = {_ERROR: f"{e.strerror or e} reading {e.filename or folder}"}
    merged: dict[str, int] = {}
    for part in _gathered(share, world):
        if _ERROR in part:  # every rank raises it (save_dcp says it in one line and removes the folder)
            raise OSError(part[_ERROR])
        merged.update(part)
    return dict(sorted(merged.items()))


def recorded_checksums(folder: Path) -> dict[str, int] | None:
    """The CRC-32s ``meta.pt`` recorded for ``folder``'s files; None where it recorded none (a checkpoint from
    before they were) or cannot be read (its loader says why)."""
    import torch

    try:
        meta = torch.load(folder / DCP_META, map_location="cpu", weights_only=True)
    except Exception:
        return None
    recorded = meta.get(CRC_KEY) if isinstance(meta, dict) else None
    return recorded if isinstance(recorded, dict) else None


def check_shards(folder: Path, recorded: dict[str, int] | None, *, collective: bool) -> None:
    """Compare ``folder``'s files with the CRC-32s recorded at save (none recorded: a checkpoint from before
    they were, not checked). ``collective``: the ranks of the process group share the reading and all raise
    together; else this process reads them all. A file the record names that is gone is left to DCP's own
    error (it names the missing shard)."""
    if not recorded:
        return
    rank, world = _world() if collective else (0, 1)
    bad = None
    for name in sorted(recorded)[rank::world]:
        path = folder / name
        try:
            if path.is_file() and file_crc32(path) != recorded[name]:
                bad = (
                    f"is corrupt: its file {name!r} fails its CRC-32 check (the bytes changed after they were written)"
                )
                break
        except OSError as e:  # gathered like a mismatch: the other ranks wait in the collective otherwise
            bad = f"could not be checked: its file {name!r} could not be read ({e.strerror or e})"
            break
    failures = [b for b in _gathered(bad, world) if b is not None]
    if failures:
        raise CheckpointError(f"{str(folder)!r} {failures[0]}; the checkpoint was left untouched")


__all__ = ["CRC_KEY", "check_shards", "file_crc32", "recorded_checksums", "shard_checksums"]
