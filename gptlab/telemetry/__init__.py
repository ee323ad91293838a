"""Telemetry: verified FLOPs, MFU/HFU, hardware peaks, memory stats and planning, gradient statistics.

Everything here is a function of the architecture config (FLOPs, parameter shapes, memory plan)
or of live tensors (memory, gradients); the model module only delegates to it.
"""

from gptlab.telemetry.activations import ActivationEstimate, estimate_activations
from gptlab.telemetry.flops import FlopRow, FlopsBreakdown, compute_flops, register_cpu_sdpa_flop_formula
from gptlab.telemetry.gradients import GradientSpikeDetector, get_gradient_stats
from gptlab.telemetry.hardware import (
    GPU_SPECS,
    GpuSpec,
    PeakInfo,
    detect_peak,
    get_gpu_spec,
    match_gpu,
    measure_peak_flops,
    precision_key,
)
from gptlab.telemetry.memory import get_memory_stats, reset_peak_memory
from gptlab.telemetry.mfu import estimate_mfu_detailed, expected_tokens_per_sec
from gptlab.telemetry.params import count_parameters, parameter_shapes
from gptlab.telemetry.planner import MODES, MemoryPlan, ModeMemory, plan_all_modes, plan_memory

__all__ = [
    "GPU_SPECS",
    "MODES",
    "ActivationEstimate",
    "FlopRow",
    "FlopsBreakdown",
    "GpuSpec",
    "GradientSpikeDetector",
    "MemoryPlan",
    "ModeMemory",
    "PeakInfo",
    "compute_flops",
    "count_parameters",
    "detect_peak",
    "estimate_activations",
    "estimate_mfu_detailed",
    "expected_tokens_per_sec",
    "get_gpu_spec",
    "get_gradient_stats",
    "get_memory_stats",
    "match_gpu",
    "measure_peak_flops",
    "parameter_shapes",
    "plan_all_modes",
    "plan_memory",
    "precision_key",
    "register_cpu_sdpa_flop_formula",
    "reset_peak_memory",
]
