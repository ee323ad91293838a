"""Model and hardware FLOPs utilisation of a training step, with the design document's breakdown.

Argument convention (nanoGPT's ``estimate_mfu(fwdbwd_per_iter, dt)``, made explicit for DDP):

- ``fwdbwd_per_iter``: sequences of ``block_size`` tokens that ONE rank runs forward and backward
  in one optimizer step, summed over its micro-steps: ``batch_size * grad_accum_steps_per_rank``
  (nanoGPT divides its accumulation steps by the world size, so this is what it passes).
- ``dt``: wall-clock seconds of that optimizer step.
- ``num_gpus``: ranks that each did the same work in parallel.

So the whole job processes ``fwdbwd_per_iter * block_size * num_gpus`` tokens per step, and
its peak is ``num_gpus`` x the per-GPU peak: MFU is the same whichever way one counts, while
``tokens_per_sec`` and ``flops_achieved`` are job totals (``*_per_gpu`` keys give one rank's).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import ConfigError
from gptlab.telemetry.hardware import PeakInfo, get_gpu_spec, match_gpu, precision_key, table_peak, typed_gpu_name


def _compute_flops(config: ModelArchitectureConfig, seq_len: int | None, checkpointing: bool = False) -> Any:
    # Imported here because gptlab.telemetry.flops re-exports this module's functions.
    from gptlab.telemetry.flops import compute_flops

    return compute_flops(config, seq_len, activation_checkpointing=checkpointing)


def _resolve_peak(peak_flops: float | None, gpu_name: str | None, precision: str) -> PeakInfo:
    """The per-GPU peak for explicit arguments, without ever guessing (``detect_peak``'s rules)."""
    if peak_flops is not None:
        if not _is_number(peak_flops) or not peak_flops > 0:
            raise ConfigError(f"peak_flops={peak_flops!r} is invalid: expected a number > 0 (FLOP/s per GPU)")
        if peak_flops < 1e6:  # no device is that slow: TFLOPS given where FLOP/s is asked (989.5 for 989.5e12)
            raise ConfigError(
                f"peak_flops={peak_flops!r} is below 1e6 FLOP/s: it is FLOP/s per GPU, not TFLOPS "
                f"({peak_flops!r} TFLOPS is {peak_flops * 1e12:.4g}; detect_peak's override_tflops and --peak_tflops "
                "take TFLOPS)"
            )
        return PeakInfo(gpu_name or "override", float(peak_flops), precision, "override")
    if gpu_name is None:
        if not torch.cuda.is_available():
            return PeakInfo("cpu", None, precision, "unknown")
        gpu_name = torch.cuda.get_device_name()
    elif typed_gpu_name(str(gpu_name)) and match_gpu(str(gpu_name)) is not None:  # 'H100X' is no H100
        # (a name matching nothing, 'TITAN V' from an older driver, 'cpu' from a run's record, has no peak: None)
        get_gpu_spec(str(gpu_name), "gpu_name")  # (a driver's name is matched as the driver spells it)
    return table_peak(gpu_name, precision)


def _is_number(value: Any) -> bool:
    """A real number (a 0-d tensor too), not a bool or a string that only looks like one."""
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


def estimate_mfu_detailed(
    config: ModelArchitectureConfig,
    fwdbwd_per_iter: float,
    dt: float,
    *,
    num_gpus: int = 1,
    peak_flops: float | None = None,
    gpu_name: str | None = None,
    precision: Any = "bf16",
    activation_checkpointing: bool = False,
    seq_len: int | None = None,
    peak: PeakInfo | None = None,
    flops: Any | None = None,
) -> dict[str, Any]:
    """MFU / HFU of one optimizer step (see the module docstring for the argument convention).

    ``peak`` (from ``detect_peak``, computed once per run) gives the per-GPU peak, its precision and
    source; otherwise ``peak_flops`` (FLOP/s per GPU) overrides the table and ``gpu_name`` picks a
    table entry (default: the current CUDA device). Without a known peak, ``mfu``, ``hfu`` and the
    peak keys are None.
    """
    for name, value, least in (("dt", dt, 0), ("fwdbwd_per_iter", fwdbwd_per_iter, 0), ("num_gpus", num_gpus, 1)):
        if not _is_number(value) or not (value >= least if least else value > 0):
            raise ValueError(f"{name}={value!r} must be a number {'>= 1' if least else '> 0'}")
    if not math.isfinite(float(num_gpus)) or float(num_gpus) != int(num_gpus):  # ranks come whole: 2.5 scaled it
        raise ValueError(f"num_gpus={num_gpus!r} must be a whole number of ranks >= 1")
    # ``flops``: a compute_flops() result for these arguments, so a training loop computes it once per run
    fl = flops if flops is not None else _compute_flops(config, seq_len, activation_checkpointing)
    if peak is None:
        peak = _resolve_peak(peak_flops, gpu_name, precision_key(precision))
    name, peak_per_gpu, source, precision = peak.name, peak.peak_flops, peak.source, peak.precision

    tokens_per_iter = fwdbwd_per_iter * fl.seq_len * num_gpus  # whole job, all micro-steps
    flops_per_iter = fl.flops_per_token * tokens_per_iter
    flops_achieved = flops_per_iter / dt
    causal_achieved = fl.flops_per_token_causal * tokens_per_iter / dt
    hfu_achieved = fl.hfu_flops_per_token * tokens_per_iter / dt
    peak_total = None if peak_per_gpu is None else peak_per_gpu * num_gpus

    def ratio(x: float) -> float | None:
        return None if peak_total is None else x / peak_total

    mfu, hfu = ratio(flops_achieved), ratio(hfu_achieved)
    return {
        "mfu": mfu,
        "mfu_percent": None if mfu is None else 100 * mfu,
        "flops_achieved": flops_achieved,
        "flops_per_token": fl.flops_per_token,
        "tokens_per_sec": tokens_per_iter / dt,
        "hardware_peak_flops": peak_total,
        "hardware_peak_tflops": None if peak_total is None else peak_total / 1e12,
        "achieved_tflops": flops_achieved / 1e12,
        "gpu_name": name,
        "precision": precision,
        "num_gpus": num_gpus,
        "attention_flops_per_layer": fl.attention_flops_per_layer,
        "ffn_flops_per_layer": fl.ffn_flops_per_layer,
        "attention_to_ffn_ratio": fl.attention_to_ffn_ratio,
        # beyond the design document
        "lm_head_flops": fl.lm_head_flops,
        "hfu": hfu,
        "hfu_percent": None if hfu is None else 100 * hfu,
        "hfu_flops_per_token": fl.hfu_flops_per_token,
        "flops_per_token_causal": fl.flops_per_token_causal,
        "mfu_causal": ratio(causal_achieved),
        "attention_convention": "full-square",
        "non_matmul_flops_per_token": fl.non_matmul_flops_per_token,
        "peak_source": source,
        "hardware_peak_flops_per_gpu": peak_per_gpu,
        "achieved_tflops_per_gpu": flops_achieved / num_gpus / 1e12,
        "tokens_per_sec_per_gpu": tokens_per_iter / num_gpus / dt,
        "tokens_per_iter": tokens_per_iter,
        "flops_per_iter": flops_per_iter,
        "seq_len": fl.seq_len,
        "activation_checkpointing": activation_checkpointing,
        "components": fl.table(),
    }


def expected_tokens_per_sec(
    config: ModelArchitectureConfig,
    peak_flops: float,
    mfu: float,
    *,
    num_gpus: int = 1,
    seq_len: int | None = None,
    flops: Any | None = None,
) -> float:
    """Throughput that ``num_gpus`` devices of ``peak_flops`` reach at utilisation ``mfu`` (``flops``: a
    compute_flops() result for these arguments, which a training run has already)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1]")
    fl = flops if flops is not None else _compute_flops(config, seq_len)
    return mfu * peak_flops * num_gpus / fl.flops_per_token


__all__ = ["estimate_mfu_detailed", "expected_tokens_per_sec"]
