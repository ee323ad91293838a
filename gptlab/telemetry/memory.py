"""Memory as the allocator and the OS see it: CUDA allocated/reserved (current and peak) and process RSS.

Units are GB = 1e9 bytes, as in the design document. Peaks are reset per logging window
(``reset_peak_memory``) so that a logged peak belongs to that window, not to the whole run.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Collection, Iterator
from typing import Any

import torch

from gptlab.telemetry.planner import MemoryPlan, ModeMemory, plan_all_modes, plan_memory

GB = 1e9


@functools.cache
def _psutil() -> Any:
    """psutil, or None: a failed import is looked up again on every call (~60 us per logged iteration)."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def process_rss_bytes() -> int | None:
    """Resident set size of this process now (psutil if installed, else /proc), None if unknowable."""
    psutil = _psutil()
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


def host_memory_bytes() -> int | None:
    """The RAM this process may use: the machine's, or its container's (cgroup) limit where lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not POSIX (Windows): psutil's answer, if installed
        psutil = _psutil()
        return None if psutil is None else int(psutil.virtual_memory().total)
    for path in CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))  # "max" (v2) or a huge number (v1) mean no limit
    return total


def _max_rss_bytes() -> int | None:
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def get_memory_stats(device: torch.device | str | None = None) -> dict[str, float | None]:
    """Allocated, reserved and their peaks on a CUDA device (on Apple's MPS allocated and reserved alone;
    None elsewhere), plus process RSS and its peak (every device: on the CPU, RSS is where tensors live)."""
    device = torch.device(device) if device is not None else _default_device()
    rss, max_rss = process_rss_bytes(), _max_rss_bytes()
    if rss is not None and max_rss is not None:
        max_rss = max(max_rss, rss)  # the kernel's high-water mark (ru_maxrss) can lag the current RSS
    stats: dict[str, float | None] = {
        "allocated_gb": None,
        "reserved_gb": None,
        "max_allocated_gb": None,
        "max_reserved_gb": None,
        "rss_gb": None if rss is None else rss / GB,
        "max_rss_gb": None if max_rss is None else max_rss / GB,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        stats.update(
            allocated_gb=torch.cuda.memory_allocated(device) / GB,
            reserved_gb=torch.cuda.memory_reserved(device) / GB,
            max_allocated_gb=torch.cuda.max_memory_allocated(device) / GB,
            max_reserved_gb=torch.cuda.max_memory_reserved(device) / GB,
        )
    elif device.type == "mps" and torch.backends.mps.is_available():  # Apple's allocator keeps no peaks
        stats.update(
            allocated_gb=torch.mps.current_allocated_memory() / GB,
            reserved_gb=torch.mps.driver_allocated_memory() / GB,
        )
    return stats


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a new peak window (CUDA; the process's peak RSS cannot be reset)."""
    device = torch.device(device) if device is not None else _default_device()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def live_bytes_timeline(
    prof: Any, *, preexisting: bool = True, skip_sizes: Collection[int] = ()
) -> Iterator[tuple[int | None, int]]:
    """Walk the memory profile of a ``torch.profiler.profile(profile_memory=True, record_shapes=True,
    with_stack=True)`` (PyTorch's memory profiler, a private API; it sees CPU allocations too): for each
    event, (the bytes it allocated, or None; the bytes alive after it). Allocations of a size in
    ``skip_sizes`` (marker tensors) are reported but not counted; ``preexisting=False`` leaves out the
    tensors that existed before profiling began."""
    from torch.profiler._memory_profiler import Action

    live: dict[tuple[Any, int], int] = {}  # (storage key, version) -> bytes
    total = 0
    for _, action, (key, version), size in prof._memory_profile().timeline:
        created = None
        if action == Action.CREATE or (preexisting and action == Action.PREEXISTING):
            created = size
            if size not in skip_sizes:
                total += size - live.get((key, version), 0)  # a storage may be reported again
                live[(key, version)] = size
        elif action == Action.INCREMENT_VERSION and (key, version) in live:
            live[(key, version + 1)] = live.pop((key, version))
        elif action == Action.DESTROY and (key, version) in live:
            total -= live.pop((key, version))
        yield created, total


__all__ = [
    "GB",
    "MemoryPlan",
    "ModeMemory",
    "get_memory_stats",
    "live_bytes_timeline",
    "plan_all_modes",
    "plan_memory",
    "process_rss_bytes",
    "reset_peak_memory",
]
