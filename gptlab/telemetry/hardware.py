"""Dense peak FLOP/s per accelerator and precision, device-name matching, and a timed-matmul measurement.

MFU divides by these numbers, so they are datasheet DENSE figures (no 2:4 structured sparsity:
NVIDIA's headline tensor numbers are sparse and exactly twice these). Where a datasheet gives
only the sparse figure, the entry is that figure halved. ``fp32`` is plain FP32 (CUDA cores,
no tensor cores); ``tf32`` is FP32 matmuls on TF32 tensor cores, which PyTorch uses only when
``torch.backends.cuda.matmul.allow_tf32`` / ``set_float32_matmul_precision('high')`` allows it.
``None`` means the hardware has no such unit (V100: no bf16, no tf32, no fp8): MFU is then
unknown, never borrowed from another precision.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from gptlab.config.train import check_peak_tflops
from gptlab.device import tf32_matmuls
from gptlab.errors import ConfigError, did_you_mean

PRECISIONS = ("bf16", "fp16", "tf32", "fp32", "fp8")
T = 1e12  # TFLOP/s -> FLOP/s


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator's dense peaks in FLOP/s, keyed by precision (None: no such unit)."""

    key: str
    description: str
    peaks: dict[str, float | None]
    notes: str = ""
    patterns: tuple[str, ...] = field(default=(), repr=False)  # regexes on the lower-cased device name

    def training_precision(self, dtype: Any) -> str:
        """The precision a gptlab training run's matmuls take here for ``dtype``: float32 runs on TF32
        tensor cores where there are any (training turns TF32 on, as nanoGPT does), else at the FP32 rate."""
        key = precision_key(dtype)
        return self.dense_peak("tf32" if key in ("fp32", "tf32") else key)[0]

    def training_peak(self, gpu: str, dtype: Any) -> tuple[str, float]:
        """(the precision a run in ``dtype`` trains at here, its dense peak); one ConfigError where the card has
        no units for it (``gpu``: the name typed, for the message)."""
        precision = self.training_precision(dtype)
        peak = self.peaks.get(precision)
        if peak is None:
            raise self.no_peak_error(gpu, precision)
        return precision, peak

    def no_peak_error(self, gpu: str, precision: str) -> ConfigError:
        """The one line for a precision this card has no units for, naming the --dtype it trains at instead."""
        dtypes = {"fp16": "float16", "fp32": "float32"}  # (a V100 trains float32 at its FP32 rate: no TF32)
        have = [f"--dtype={d} ({self.peaks[p] / T:g} TFLOPS)" for p, d in dtypes.items() if self.peaks.get(p)]
        hint = f": it has {', '.join(have)}" if have else ""
        return ConfigError(f"gpu={gpu!r} has no dense {precision} peak in the table ({self.description}){hint}")

    def dense_peak(self, precision: str) -> tuple[str, float | None]:
        """(the precision matmuls run at, its dense peak or None): TF32 is the FP32 rate on a card
        without TF32 units (Volta), where PyTorch's TF32 setting changes nothing."""
        if precision == "tf32" and self.peaks.get("tf32") is None:
            precision = "fp32"
        return precision, self.peaks.get(precision)


def _spec(key: str, description: str, bf16: float | None, fp16: float | None, tf32: float | None, fp32: float,
          fp8: float | None, patterns: tuple[str, ...], notes: str = "") -> GpuSpec:  # fmt: skip
    values = {"bf16": bf16, "fp16": fp16, "tf32": tf32, "fp32": fp32, "fp8": fp8}
    return GpuSpec(key, description, {k: None if v is None else v * T for k, v in values.items()}, notes, patterns)


# Ordered most specific first: the first matching entry wins ("h100 nvl" before "h100").
# Sources: NVIDIA / AMD product datasheets; sparse-only figures halved.
GPU_SPECS: tuple[GpuSpec, ...] = (
    _spec("B200", "NVIDIA B200 (HGX, 1000 W)", 2250, 2250, 1100, 80, 4500, (r"\bb200\b",),
          "4500 TFLOPS bf16 is the 2:4-sparse figure"),
    _spec("H200-NVL", "NVIDIA H200 NVL (PCIe, 600 W)", 835.5, 835.5, 417.5, 60, 1670.5, (r"\bh200(?!\d).*nvl",)),
    _spec("H200-SXM", "NVIDIA H200 SXM", 989.5, 989.5, 494.5, 67, 1979, (r"\bg?h200(?!\d)",),
          "1979 TFLOPS bf16 is the 2:4-sparse figure; same silicon as H100 SXM"),
    _spec("H100-NVL", "NVIDIA H100 NVL (per GPU)", 835.5, 835.5, 417.5, 60, 1670.5, (r"\bh100(?!\d).*nvl",)),
    _spec("H100-PCIe", "NVIDIA H100 PCIe", 756.5, 756.5, 378, 51, 1513, (r"\bh100(?!\d).*pcie",)),
    _spec("H100-SXM", "NVIDIA H100 SXM5", 989.5, 989.5, 494.5, 67, 1979, (r"\bh100(?!\d)",),
          "'NVIDIA H100 80GB HBM3' is the SXM part; the PCIe card says 'PCIe'"),
    _spec("A100-PCIe", "NVIDIA A100 PCIe", 312, 312, 156, 19.5, None, (r"\ba100(?!\d).*pcie",),
          "same peaks as SXM at a lower power limit; sustained clocks are lower"),
    _spec("A100-SXM", "NVIDIA A100 SXM4", 312, 312, 156, 19.5, None, (r"\ba100(?!\d)",)),
    _spec("L40S", "NVIDIA L40S", 362.05, 362.05, 183, 91.6, 733, (r"\bl40s\b",)),
    _spec("L4", "NVIDIA L4", 121, 121, 60, 30.3, 242.5, (r"\bl4\b",)),
    _spec("A10", "NVIDIA A10", 125, 125, 62.5, 31.2, None, (r"\ba10\b(?!\d|g)",), "the A10G (AWS) is a different part"),
    _spec("RTX-4090", "NVIDIA GeForce RTX 4090", 165.2, 165.2, 82.6, 82.6, 330.3, (r"\brtx 4090(?!\d|\s*d)",),
          "bf16/fp16/fp8 with FP32 accumulation (what training uses); FP16 accumulation doubles them"),
    _spec("V100S-PCIe", "NVIDIA V100S PCIe", None, 130, None, 16.4, None, (r"\bv100s\b",),
          "Volta has no bf16 or tf32 tensor cores"),
    _spec("V100-PCIe", "NVIDIA V100 PCIe", None, 112, None, 14, None, (r"\bv100(?!\d).*pcie",),
          "Volta has no bf16 or tf32 tensor cores"),
    _spec("V100-SXM2", "NVIDIA V100 SXM2", None, 125, None, 15.7, None, (r"\bv100(?!\d)",),
          "Volta has no bf16 or tf32 tensor cores"),
    _spec("MI300X", "AMD Instinct MI300X", 1307.4, 1307.4, 653.7, 163.4, 2614.9, (r"\bmi300x\b",),
          "fp32 is the matrix-core FP32 figure"),
)  # fmt: skip

_BY_KEY = {spec.key.lower(): spec for spec in GPU_SPECS}


def match_gpu(name: str) -> GpuSpec | None:
    """The spec for a ``torch.cuda.get_device_name()`` string or a table key (``H100-SXM``); None if unknown.

    A MIG slice (``NVIDIA H100 80GB HBM3 MIG 1g.10gb``) is unknown: it has a fraction of the GPU's SMs
    (and NVIDIA publishes no per-slice peak), so the whole GPU's figure would make MFU several times too low.
    """
    lowered = name.strip().lower()
    if lowered in _BY_KEY:
        return _BY_KEY[lowered]
    lowered = lowered.replace("_", " ").replace("-", " ")
    if re.search(r"\bmig\b", lowered):
        return None
    for spec in GPU_SPECS:
        if any(re.search(p.replace("-", " "), lowered) for p in spec.patterns):
            return spec
    return None


# the words a typed GPU name may hold besides its model: a driver's own name, or a key's parts
_QUALIFIERS = {"nvidia", "amd", "tesla", "geforce", "rtx", "instinct", "sxm", "sxm2", "sxm4", "sxm5", "pcie", "nvl",
               "hbm2", "hbm2e", "hbm3", "hbm3e", "gb", "gh200", "vf"}  # fmt: skip
_NAME_WORDS = _QUALIFIERS | {
    w for s in GPU_SPECS for w in re.split(r"[\s\-_()/,]+", f"{s.key} {s.description}".lower())
}


def _typed_name_is_known(name: str) -> bool:
    """Each word of a typed name is a known model or qualifier (or a memory size, 80gb): the driver-name patterns
    alone would take 'H100X' for an H100 (their model word ends where the next digit would begin)."""
    words = [w for w in re.split(r"[\s\-_()]+", name.strip().lower()) if w]
    return all(w in _NAME_WORDS or re.fullmatch(r"\d+gb?", w) for w in words)


def get_gpu_spec(name: str, key: str = "gpu") -> GpuSpec:
    """Like ``match_gpu`` but a miss is a user error naming the known keys (for ``--gpu``; ``key``: the setting
    that gave the name), and a name with a word no GPU's name has (a typo, a made-up model) is a miss."""
    spec = match_gpu(name) if _typed_name_is_known(name) else None
    if spec is None:
        keys = [s.key for s in GPU_SPECS]
        raise ConfigError(
            f"{key}={name!r} is not a known accelerator{did_you_mean(name, keys)}; known: {', '.join(keys)}"
        )
    return spec


# The first word of a driver's device name (torch.cuda.get_device_name): such a name is matched as the driver
# spells it ('Tesla V100-DGXS-32GB', a vGPU's 'GRID A100D-80C'), not checked word by word as a typed one
DRIVER_PREFIXES = ("nvidia", "tesla", "grid", "quadro", "geforce", "amd")


def typed_gpu_name(name: str) -> bool:
    """Whether ``name`` was typed by a user ('H100', 'h100-sxm') rather than read from the driver."""
    words = name.strip().lower().split()
    return not words or words[0] not in DRIVER_PREFIXES


def precision_key(dtype: Any) -> str:
    """'bf16' | 'fp16' | 'tf32' | 'fp32' | 'fp8' for a torch dtype or a name; float32 reads as 'tf32'
    when PyTorch is allowed to run float32 matmuls on TF32 tensor cores, since that is the real ceiling."""
    aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return "fp8"
        dtype = str(dtype).removeprefix("torch.")
    if not isinstance(dtype, str):
        raise ConfigError(f"precision={dtype!r} is not a dtype; expected one of {', '.join(PRECISIONS)}")
    key = aliases.get(dtype.lower(), dtype.lower())
    if key not in PRECISIONS:
        raise ConfigError(f"precision={dtype!r} is not one of {', '.join(PRECISIONS)}{did_you_mean(key, PRECISIONS)}")
    if key == "fp32" and tf32_matmuls():
        return "tf32"
    return key


@dataclass(frozen=True)
class PeakInfo:
    """A per-device peak and where it came from: 'table', 'override', 'measured' or 'unknown' (peak None)."""

    name: str
    peak_flops: float | None
    precision: str
    source: str


def device_name(device: torch.device | str) -> str:
    """What the driver calls ``device`` ('cpu' for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def detect_peak(
    device: torch.device | str,
    dtype: Any,
    override_tflops: float | None = None,
    *,
    measure: bool = False,
) -> PeakInfo:
    """The dense peak of ``device`` at ``dtype``: an override wins, then the table, then (if ``measure``)
    a timed matmul; otherwise unknown, so that no MFU is ever computed against a guessed peak."""
    precision = precision_key(dtype)
    name = device_name(device)
    if override_tflops is not None:
        check_peak_tflops(override_tflops)
        return PeakInfo(name, float(override_tflops) * T, precision, "override")
    on_gpu = torch.device(device).type == "cuda"
    info = table_peak(name, precision) if on_gpu else PeakInfo(name, None, precision, "unknown")
    if info.peak_flops is None and measure:
        return PeakInfo(name, measure_peak_flops(device, dtype), info.precision, "measured")
    return info


def table_peak(name: str, precision: str) -> PeakInfo:
    """The table's dense peak of the accelerator the driver calls ``name`` at ``precision`` ('unknown',
    peak None, where the table has no such entry): the one lookup every MFU figure goes through."""
    spec = match_gpu(name)
    if spec is not None:
        precision, peak = spec.dense_peak(precision)
        if peak is not None:
            return PeakInfo(name, peak, precision, "table")
    return PeakInfo(name, None, precision, "unknown")


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timed matmul is timed, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_peak_flops(device: torch.device | str, dtype: Any, size: int | None = None, iters: int = 10) -> float:
    """Achievable matmul FLOP/s on ``device``: the best of ``iters`` timed ``size`` x ``size`` matmuls.
    A practical ceiling (typically 70-90% of the datasheet on GPUs), not the datasheet peak. float32 on CUDA is
    timed on TF32, as training runs its float32 matmuls (PyTorch's default, full FP32, is ~8x slower on an H100)."""
    device = torch.device(device)
    torch_dtype = _torch_dtype(dtype)
    size = size or (8192 if device.type == "cuda" else 1024)
    if device.type != "cuda" or torch_dtype != torch.float32:
        return _timed_matmuls(device, torch_dtype, size, iters)
    from gptlab.device import enable_tf32, set_tf32_state, tf32_state

    kept = tf32_state()
    try:
        enable_tf32()
        return _timed_matmuls(device, torch_dtype, size, iters)
    finally:
        set_tf32_state(kept)


def _timed_matmuls(device: torch.device, torch_dtype: torch.dtype, size: int, iters: int) -> float:
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    for _ in range(2):  # warm-up: kernel selection, caches, clocks
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best  # a size^3 multiply-adds, 2 FLOPs each


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = precision_key(dtype)
    if key == "fp8":
        raise ConfigError("measuring an fp8 peak needs scaled matmuls; pass --peak_tflops instead")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}[key]


__all__ = [
    "GPU_SPECS",
    "PRECISIONS",
    "GpuSpec",
    "PeakInfo",
    "detect_peak",
    "device_name",
    "get_gpu_spec",
    "match_gpu",
    "measure_peak_flops",
    "precision_key",
    "table_peak",
]
