"""The device and precision a run asks for, resolved against this machine: one line for what it lacks."""

from __future__ import annotations

import torch

from gptlab.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here; one ConfigError line for a malformed name or one this machine lacks."""
    from gptlab.config.train import check_device_name

    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here: use --device=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device={name!r} but MPS (Apple's GPU) is not available here: use --device=cpu (or auto)")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("dtype='bfloat16' is not supported on this GPU: use --dtype=float16")
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"
