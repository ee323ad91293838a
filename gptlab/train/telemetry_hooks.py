"""The loop's view of telemetry: FLOPs and MFU, memory, gradient statistics.

Computed once per run where possible (FLOPs per token, the peak), and only at the intervals
the loop asks for (gradient statistics are read a step late, without stalling the device; memory
counters are host-side).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from gptlab.config.model import ModelArchitectureConfig
from gptlab.config.train import TrainConfig, residual_stream_cast
from gptlab.logging import logged_peak_gb
from gptlab.telemetry.flops import compute_flops, estimate_mfu_detailed, expected_tokens_per_sec
from gptlab.telemetry.gradients import GradientSpikeDetector, PendingGradientStats, gradient_stats_tensor
from gptlab.telemetry.hardware import detect_peak
from gptlab.telemetry.memory import MemoryPlan, get_memory_stats, host_memory_bytes, plan_memory, reset_peak_memory
from gptlab.telemetry.planner import fit_advice


class TelemetryHooks:
    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: str,
        cfg: TrainConfig,
        world_size: int,
        parallel: str,
        accum_steps: int,
    ) -> None:
        self.model, self.device, self.dtype, self.cfg, self.world_size = model, device, dtype, cfg, world_size
        self.parallel = parallel
        self.arch = model.config
        self.session_peak_gb: float | None = None  # the largest memory_stats() peak this rank logged
        self.accum_steps = accum_steps  # micro-steps per rank: the global accumulation steps shared out
        # sequences of block_size tokens per optimizer step, per rank (nanoGPT's fwdbwd_per_iter)
        self.fwdbwd_per_iter = cfg.batch_size * self.accum_steps
        self.tokens_per_iter = self.fwdbwd_per_iter * self.arch.block_size * world_size
        self.peak_info = detect_peak(device, getattr(torch, dtype), override_tflops=cfg.peak_tflops)
        info = self.peak_info
        self.peak = {
            "name": info.name,
            "peak_flops": info.peak_flops,
            "precision": info.precision,
            "source": info.source,
        }
        self.spikes = GradientSpikeDetector()
        # a pure function of the architecture: computed once per run, reused by every MFU figure
        self.flops = compute_flops(
            self.arch, activation_checkpointing=cfg.activation_checkpointing, device_type=self.device.type
        )

    def flops_summary(self) -> dict[str, Any]:
        f = self.flops
        return {
            "flops_per_token": f.flops_per_token,
            "flops_per_token_causal": f.flops_per_token_causal,
            "flops_per_iter": f.flops_per_token * self.tokens_per_iter,
            "attention_flops_per_layer": f.attention_flops_per_layer,  # training FLOPs per token, full-square
            "ffn_flops_per_layer": f.ffn_flops_per_layer,
            "attention_to_ffn_ratio": f.attention_to_ffn_ratio,
            "flops_caveats": f.caveats,  # what a registered component's count could not measure
        }

    def expected_tokens_per_sec(self, mfu: float) -> float | None:
        peak = self.peak["peak_flops"]
        if peak is None:
            return None
        return expected_tokens_per_sec(self.arch, peak, mfu, num_gpus=self.world_size, flops=self.flops)

    def mfu(self, dt: float) -> dict[str, Any]:
        return estimate_mfu_detailed(
            self.arch,
            self.fwdbwd_per_iter,
            dt,
            num_gpus=self.world_size,
            peak=self.peak_info,
            activation_checkpointing=self.cfg.activation_checkpointing,  # HFU counts the recomputation
            flops=self.flops,
        )

    def memory_stats(self) -> dict[str, Any]:
        stats = get_memory_stats(self.device)
        reset_peak_memory(self.device)  # so the next window's peak means that window
        logged = logged_peak_gb(stats)  # this rank's session peak, counted as the summary counts rank 0's
        if logged is not None:
            self.session_peak_gb = max(self.session_peak_gb or 0.0, logged)
        return stats

    def start_gradient_stats(self) -> PendingGradientStats:
        """The statistics of the gradients now held, computed and sent to the host without a sync: read
        them with ``read_gradient_stats``, in step order."""
        return PendingGradientStats(gradient_stats_tensor(self.model))

    def read_gradient_stats(self, pending: PendingGradientStats) -> dict[str, Any]:
        """The floats, with the spike test's verdict (the detector takes each step's norm in order)."""
        stats: dict[str, Any] = pending.result()
        stats["spike"] = self.spikes.update(stats["global_norm"])
        stats["norm_to_median"] = self.spikes.last_ratio
        return stats

    def gradient_stats(self) -> dict[str, Any]:
        """Start and read at once: one host sync that waits for all queued work."""
        return self.read_gradient_stats(self.start_gradient_stats())

    def _plan_kwargs(self) -> dict[str, Any]:
        return run_plan_kwargs(self.cfg, self.dtype, self.parallel, self.world_size, self.accum_steps, self.device)

    def plan(self) -> MemoryPlan:
        """The planner's per-rank memory for this run's mode and world size."""
        return plan_memory(self.arch, **self._plan_kwargs())

    def memory_plan(self) -> str | None:
        return str(self.plan())


# A planned peak this many times the memory is refused before the model is built (fit_advice's refuse_above)
HOPELESS_FACTOR = 2.0


def run_plan_kwargs(
    cfg: TrainConfig, dtype: str, parallel: str, world_size: int, accum_steps: int, device: torch.device
) -> dict[str, Any]:
    """The memory planner's inputs for a run of ``cfg`` on ``world_size`` ranks of ``device``."""
    return dict(
        batch_size=cfg.batch_size,
        dtype=dtype,
        parallel=parallel,
        world_size=world_size,
        activation_checkpointing=cfg.activation_checkpointing,
        grad_accum_steps=accum_steps,
        device_type=device.type,
        loss_chunk_size=cfg.loss_chunk_size,
        residual_cast=residual_stream_cast(cfg.residual_dtype, dtype, parallel),
        sdpa_backend=cfg.sdpa_backend,
    )


def memory_advice(
    arch: ModelArchitectureConfig,
    device: torch.device,
    plan_kwargs: dict[str, Any],
    *,
    refuse_above: float | None = None,
    compiled: bool = False,
) -> str | None:
    """``fit_advice`` against the CUDA device's memory, or on a CPU this machine's RAM shared by its ranks
    (tensors live there; the planner's figures are the tensors alone: the process needs more for Python
    and PyTorch); None when nothing is known."""
    if device.type == "cuda":
        device_bytes = torch.cuda.get_device_properties(device).total_memory
        return fit_advice(arch, device_bytes, refuse_above=refuse_above, compiled=compiled, **plan_kwargs)
    ram = host_memory_bytes()
    if ram is None:
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = ram // max(local, 1)
    each = f" for each of {local} processes" if local > 1 else ""
    capacity = f"the {share / 1e9:.1f} GB of RAM it has{each}"
    return fit_advice(
        arch, share, per="process", capacity=capacity, refuse_above=refuse_above, compiled=compiled, **plan_kwargs
    )
