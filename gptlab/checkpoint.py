"""Checkpoints: atomic writes, ``weights_only`` loads, and state dicts free of wrapper prefixes.

A crash during a save leaves the previous checkpoint intact: we write to a temporary file in
the same directory, fsync it, and ``os.replace`` it over the old one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.errors import CheckpointError

CHECKPOINT_NAME = "ckpt.pt"
FORMAT = "gptlab"
# torch.compile wraps the model as `_orig_mod`, DDP as `module`: neither belongs in a checkpoint.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under torch.compile / DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a gptlab checkpoint with ``weights_only=True``; one-line CheckpointError otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: expected a {CHECKPOINT_NAME} written by gptlab train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{str(path)!r} is corrupt or truncated ({reason}); the file was left untouched"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a gptlab training checkpoint (no format='{FORMAT}' record)")
    return ckpt
