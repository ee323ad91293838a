"""Predicted memory per GPU for no parallelism, DDP, ZeRO-1 and FSDP2 at N GPUs.

What each mode holds per rank (training with autocast keeps float32 master parameters, so
parameters, gradients and AdamW's two states are 4 bytes per element; ERRATA 13):

- ``none`` / ``ddp``: everything whole. DDP also keeps gradient buckets, a second gradient-sized
  buffer (``gradient_as_bucket_view=False``, the default) that ``comm_buffers`` counts.
- ``zero1`` (DDP + ``ZeroRedundancyOptimizer``): whole parameters and gradients; optimizer states
  only for the parameters this rank owns. ZeRO assigns whole tensors, largest first, each to the
  rank with the fewest elements so far, group by group; the plan replays that exact partition
  and reports the fullest rank.
- ``fsdp`` (FSDP2 ``fully_shard`` per block and on the root): each tensor is split on dim 0 into
  ``world_size`` chunks of ceil(dim0 / N) rows; rank 0 holds a full chunk and every rank's storage
  is padded to it, so per-rank parameter and gradient bytes are the sum of ceil(dim0/N) * rest,
  as are the optimizer states of rank 0. ``comm_buffers`` estimates the transient unsharded
  copies: the root's parameters (embedding, LM head, final norm) for the whole step, two blocks'
  parameters (the current and the prefetched one) in the compute dtype and one block's float32
  gradients before reduce-scatter.

AdamW's ``step`` is a float32 scalar tensor per parameter tensor (4 bytes each, counted).

``peak`` is what persists (parameters, optimizer states, buffers, communication buffers) plus
the largest of backward's moments (``backward_moments``), walked as autograd runs them: the
forward's end (saved tensors and logits), the loss backward (saved tensors and its (N, V)
gradients), the LM head's backward (its weight gradient made), the last block's and the first
block's backward (the blocks below still saved, the gradients of the head and the blocks above
already made, the block's own set and its backward's transients), the embedding's backward and the
end of backward (all gradients). With gradient accumulation every gradient exists from the start
(earlier micro-steps'), and each new one beside the one it is added to (the head's (V, H) one, with
tied weights until the embedding's joins it: 1.00-1.03 of the profiler with 2 and 3 micro-steps);
after ``zero_grad(set_to_none=True)`` there are none. Against PyTorch's memory profiler on one CPU thread (gpt2,
llama; 2 and 6 layers; float32 and bf16; SDPA and manual; with and without checkpointing;
vocabularies 65 and 2048): exact where the loss backward is the peak (real vocabularies), within
0-9% high where a block's backward is (a char-level vocabulary) with 8 or more tokens per micro-batch
per unit of width, and up to 9% low with about one (where gradients outweigh activations, the order
of a block's weight gradients matters). ``total`` adds every part as if all were alive at once
(a block's backward transients, and FSDP's unsharded gradients while accumulating, are in no part:
where they make the peak, it can exceed ``total``).
Neither counts the allocator's caching and fragmentation, kernel workspaces, or a non-fused
optimizer's temporaries (the CUDA AdamW from ``configure_optimizers`` is fused and has none).
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field, replace
from typing import Any

from gptlab.config.model import MAX_SIZE, ModelArchitectureConfig
from gptlab.config.train import SDPA_BACKENDS
from gptlab.errors import ConfigError, unknown_choice
from gptlab.telemetry.activations import ActivationEstimate, compute_bytes, estimate_activations
from gptlab.telemetry.flops import DEVICE_TYPES, checked_seq_len
from gptlab.telemetry.params import FP32_BYTES, TensorShape, buffer_bytes, parameter_shapes

MODES = ("none", "ddp", "zero1", "fsdp")
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1}  # fp32 tensors per parameter (Adam: m, v; SGD: momentum)
STEP_BYTES = {"adamw": FP32_BYTES, "adam": FP32_BYTES, "sgd": 0}  # Adam's per-tensor float32 step counter


@dataclass
class ModeMemory:
    """Bytes per GPU (the fullest rank) for one parallel mode."""

    mode: str
    world_size: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int  # saved for backward, one micro-batch
    loss_backward: int  # the loss's transient: plain, backward's two float32 (N, V) gradients; chunked, see activations
    buffers: int
    comm_buffers: int
    peak: int  # the largest of backward's moments plus what persists (see module docstring)
    notes: list[str] = field(default_factory=list)
    peak_at: str = ""  # the moment of the peak: 'loss backward', 'block 0 backward', 'end of backward', ...

    @property
    def total(self) -> int:
        """Every part added up, as if all were alive at once (a block's backward transients, and FSDP's unsharded
        gradients while accumulating, are in none)."""
        parts = (self.parameters, self.gradients, self.optimizer, self.activations, self.loss_backward)
        return sum(parts) + self.buffers + self.comm_buffers


@dataclass
class MemoryPlan:
    """The inputs of a plan, the activation breakdown and the per-mode memory."""

    config: ModelArchitectureConfig
    batch_size: int
    seq_len: int
    dtype: str
    world_size: int
    grad_accum_steps: int
    activation_estimate: ActivationEstimate
    mode: ModeMemory

    def __str__(self) -> str:
        """One line per part, in GB (1e9 bytes), for logs and startup reports."""
        m = self.mode
        parts = ("parameters", "gradients", "optimizer", "activations", "loss_backward", "peak", "total")
        body = ", ".join(f"{p} {getattr(m, p) / 1e9:.3f}" for p in parts)
        notes = f" (estimate: {'; '.join(m.notes)})" if m.notes else ""
        return (f"memory plan ({m.mode} x{m.world_size}, micro-batch {self.batch_size} x {self.seq_len}, "
                f"{self.dtype}) per rank in GB: {body}, peak at the {m.peak_at}{notes}")  # fmt: skip


def zero1_partition(shapes: list[TensorShape], world_size: int) -> list[list[TensorShape]]:
    """The tensors each rank owns under ``ZeroRedundancyOptimizer``, for ``configure_optimizers``'
    two groups (decay: dim >= 2; no decay) in that order (its ``_partition_parameters``)."""
    groups = [[s for s in shapes if len(s.shape) >= 2], [s for s in shapes if len(s.shape) < 2]]
    sizes = [0] * world_size
    owned: list[list[TensorShape]] = [[] for _ in range(world_size)]
    for group in groups:
        for s in sorted(group, key=lambda t: t.numel, reverse=True):  # stable, like torch's sorted()
            rank = sizes.index(min(sizes))
            owned[rank].append(s)
            sizes[rank] += s.numel
    return owned


def fsdp_shard_numel(shape: tuple[int, ...], world_size: int) -> int:
    """Elements of rank 0's (padded) FSDP2 shard of one tensor: ceil(dim0 / N) rows. (FSDP2 refuses a
    0-dim parameter, which a registered component may hold; the plan counts it whole.)"""
    if not shape:
        return 1
    rest = math.prod(shape[1:])
    return math.ceil(shape[0] / world_size) * rest


def _optimizer_bytes(shapes: list[TensorShape], numels: list[int], optimizer: str) -> int:
    return OPTIMIZER_STATES[optimizer] * FP32_BYTES * sum(numels) + STEP_BYTES[optimizer] * len(shapes)


MAX_RANKS = 2**20  # ranks to plan for: far past any cluster


def _count(key: str, value: Any) -> int:
    """A count of ranks, sequences or micro-steps as an int: a numpy or 0-d tensor integer taken, 4.5 sequences,
    '4' or a bool refused."""
    try:
        whole = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        whole = None
    limit = MAX_RANKS if key == "world_size" else MAX_SIZE  # (each rank's share is listed: 10**30 overflowed)
    if whole is None or not 1 <= whole <= limit:
        raise ConfigError(f"{key}={value!r} is invalid: expected an integer in [1, {limit:,}]")
    return whole


def _divisors_descending(n: int) -> list[int]:
    """The divisors of ``n``, largest first, in O(sqrt(n)) (counting down from a batch of 10**8 took seconds)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)}, reverse=True)


def plan_memory(
    config: ModelArchitectureConfig,
    *,
    batch_size: int,
    seq_len: int | None = None,
    dtype: str = "bfloat16",
    parallel: str = "none",
    world_size: int = 1,
    activation_checkpointing: bool = False,
    attention_backend: str | None = None,
    optimizer: str = "adamw",
    grad_accum_steps: int = 1,
    device_type: str = "cuda",
    loss_chunk_size: int = 0,
    residual_cast: bool = False,
    sdpa_backend: str = "auto",
) -> MemoryPlan:
    """Bytes per GPU of parameters, gradients, optimizer states and activations for one parallel mode.

    ``batch_size`` is the micro-batch per GPU; ``dtype`` the autocast dtype ('float32' for none);
    with gradient accumulation, earlier micro-steps' gradients are alive during backward;
    ``loss_chunk_size`` > 0 plans the chunked LM head + loss (no (N, V) logits); ``residual_cast`` a residual
    stream in the autocast dtype (TrainConfig.residual_dtype).
    """
    if parallel not in MODES:
        raise unknown_choice("parallel", parallel, MODES)
    if optimizer not in OPTIMIZER_STATES:
        raise unknown_choice("optimizer", optimizer, OPTIMIZER_STATES)
    world_size, batch_size, grad_accum_steps = (
        _count(k, v)
        for k, v in (("world_size", world_size), ("batch_size", batch_size), ("grad_accum_steps", grad_accum_steps))
    )
    if device_type not in DEVICE_TYPES:  # 'gpu' planned as if it were a CPU's autocast rules
        raise unknown_choice("device_type", device_type, DEVICE_TYPES)
    if parallel == "none" and world_size != 1:
        raise ConfigError(f"parallel='none' runs on one GPU, got world_size={world_size}")
    T = checked_seq_len(seq_len, config.block_size)  # (1.99 was planned as 1 and '8' as 8)
    if isinstance(loss_chunk_size, bool) or not isinstance(loss_chunk_size, numbers.Integral) or loss_chunk_size < 0:
        raise ConfigError(f"loss_chunk_size={loss_chunk_size!r} is invalid: expected an integer >= 0")
    if sdpa_backend not in SDPA_BACKENDS:  # 'Math' was planned as auto: 8 GB under a math-path GPT-2 124M
        raise unknown_choice("sdpa_backend", sdpa_backend, SDPA_BACKENDS)
    c = compute_bytes(dtype)
    shapes = parameter_shapes(config)
    acts = estimate_activations(
        config,
        batch_size,
        T,
        dtype=dtype,
        attention_backend=attention_backend,
        activation_checkpointing=activation_checkpointing,
        device_type=device_type,
        weight_copies=parallel != "fsdp",  # FSDP2's mixed-precision policy gathers in the compute dtype
        loss_chunk_size=loss_chunk_size,
        residual_cast=residual_cast,
        sdpa_backend=sdpa_backend,
    )
    numel = [s.numel for s in shapes]
    param_bytes = FP32_BYTES * sum(numel)
    notes = list(acts.notes)
    if parallel in ("none", "ddp"):
        optim = _optimizer_bytes(shapes, numel, optimizer)
        grads, params = param_bytes, param_bytes
        comm = param_bytes if parallel == "ddp" else 0
    elif parallel == "zero1":
        owned = zero1_partition(shapes, world_size)
        optim = max(_optimizer_bytes(o, [s.numel for s in o], optimizer) for o in owned)
        grads, params, comm = param_bytes, param_bytes, param_bytes  # DDP underneath: whole grads, buckets
    else:
        shard = [fsdp_shard_numel(s.shape, world_size) for s in shapes]
        params = grads = FP32_BYTES * sum(shard)
        optim = _optimizer_bytes(shapes, shard, optimizer)
        comm = _fsdp_transient(shapes, c)
        notes.append("fsdp comm_buffers (unsharded copies) is an estimate; sharded sizes are exact")
        scalar = next((s.name for s in shapes if not s.shape), None)
        if scalar is not None:  # as training says when it wraps the model: a column of a run that cannot start
            notes.append(f"fsdp cannot shard the 0-dim parameter {scalar!r}: use_fsdp=True refuses this model")
    persistent = params + optim + buffer_bytes(config) + comm
    # With accumulation, earlier micro-steps' gradients are alive in backward. FSDP2 skips the
    # reduce-scatter until the last micro-step, so until then they are whole (unsharded, fp32).
    accumulated = param_bytes if parallel == "fsdp" else grads
    if parallel == "fsdp" and grad_accum_steps > 1:
        notes.append("fsdp with gradient accumulation holds unsharded fp32 gradients until the last micro-step")
    moments = backward_moments(acts, shapes, grads / param_bytes, accumulated if grad_accum_steps > 1 else 0)
    moments["end of backward"] = max(grads, accumulated if grad_accum_steps > 1 else 0)
    peak_at = max(moments, key=moments.__getitem__)
    mode = ModeMemory(
        parallel,
        world_size,
        parameters=params,
        gradients=grads,
        optimizer=optim,
        activations=acts.saved_bytes,
        loss_backward=acts.loss_transient_bytes,
        buffers=buffer_bytes(config),
        comm_buffers=comm,
        peak=persistent + moments[peak_at],
        notes=notes,
        peak_at=peak_at,
    )
    return MemoryPlan(config, batch_size, T, dtype, world_size, grad_accum_steps, acts, mode)


def backward_moments(
    acts: ActivationEstimate, shapes: list[TensorShape], grad_share: float, accumulated: int
) -> dict[str, int]:
    """Bytes beyond what persists at each moment of a training step where the peak can fall (module
    docstring). ``grad_share`` is the fraction of each gradient a rank holds (1, or about 1/N of FSDP2's
    shards); ``accumulated`` the bytes of the gradients earlier micro-steps left (0 without accumulation),
    to which each new gradient is added as it is made."""

    def grad_bytes(prefixes: tuple[str, ...]) -> int:
        return round(grad_share * FP32_BYTES * sum(s.numel for s in shapes if s.name.startswith(prefixes)))

    head_names = {s.name for s in shapes if s.name.startswith("lm_head.")} or {"wte.weight"}  # tied: wte
    head = grad_bytes(("norm_f.", *head_names))  # made by the loss's backward, before any block's
    block = grad_bytes(("blocks.0.",))
    ffn = grad_bytes(("blocks.0.ffn.", "blocks.0.norm_2."))
    last = acts.n_layer - 1
    # Accumulating, a new gradient lives beside the one it is added to: the head's (V, H) one while it is made,
    # and with tied weights until the embedding's is added to it (autograd sums a shared weight's first)
    new_head = acts.head_grad_bytes if accumulated else 0
    waiting = new_head if "wte.weight" in head_names else 0
    moments = {
        "forward": accumulated + acts.forward_end_bytes,
        "loss backward": accumulated + acts.backward_start_bytes,
    }
    if acts.head_backward_bytes:
        moments["head backward"] = (accumulated or head) + new_head + acts.head_backward_bytes
    for index in sorted({last, 0}, reverse=True):  # in between, memory moves linearly from one to the other
        before = (accumulated + waiting) or head + (last - index) * block
        moments[f"block {index} backward"] = before + acts.block_backward_bytes(index, block_grads=block, ffn_grads=ffn)
    every = accumulated or grad_bytes(("",))
    moments["embedding backward"] = every + new_head + acts.through_blocks_bytes + acts.embedding_backward_bytes
    return moments


def _fsdp_transient(shapes: list[TensorShape], c: int) -> int:
    root = sum(s.numel for s in shapes if not s.name.startswith("blocks."))
    block = sum(s.numel for s in shapes if s.name.startswith("blocks.0."))
    return c * (root + 2 * block) + FP32_BYTES * block


def fit_advice(
    config: ModelArchitectureConfig,
    device_bytes: int,
    *,
    per: str = "GPU",
    capacity: str = "",
    refuse_above: float | None = None,
    compiled: bool = False,
    **plan_kwargs: Any,
) -> str | None:
    """None when ``plan_memory(config, **plan_kwargs)``'s peak fits in ``device_bytes`` (with 5% kept
    for the allocator and kernel workspaces); otherwise one line saying by how much it misses and what
    each setting that would help brings the peak to, re-planned (the chunked loss, activation
    checkpointing, FSDP when there are several ranks, half the micro-batch with twice the steps). ``per``
    and ``capacity`` name the unit and the memory for a CPU run ('process', "the 24.0 GB of RAM ...").
    A peak more than ``refuse_above`` times the memory is a ConfigError with the same options: no error in
    the planner's estimates can make that fit, and building it would fill the memory first. ``compiled``: the
    run is torch.compile'd, whose peak the eager plan only brackets (measured, COMPILED_RANGE)."""
    budget = 0.95 * device_bytes
    plan = plan_memory(config, **plan_kwargs)
    if plan.mode.peak <= budget:
        return None
    options: list[tuple[str, dict[str, Any]]] = []
    if not plan_kwargs.get("loss_chunk_size"):
        options.append(("--loss_chunk_size=1024", {"loss_chunk_size": 1024}))
    if not plan_kwargs.get("activation_checkpointing"):
        options.append(("--activation_checkpointing=True", {"activation_checkpointing": True}))
    if plan_kwargs.get("world_size", 1) > 1 and plan_kwargs.get("parallel") in ("ddp", "zero1"):
        options.append(("--use_fsdp=True", {"parallel": "fsdp"}))
    batch = plan_kwargs["batch_size"]
    if batch > 1:
        accum = plan_kwargs.get("grad_accum_steps", 1)
        options.append((f"--batch_size={batch // 2} with twice the gradient_accumulation_steps",
                        {"batch_size": batch // 2, "grad_accum_steps": 2 * accum}))  # fmt: skip
    ideas, helpful = [], []
    for flag, change in options:
        peak = plan_memory(config, **{**plan_kwargs, **change}).mode.peak
        if peak < plan.mode.peak:  # checkpointing a single layer, say, keeps more than it frees
            ideas.append(f"{flag} -> {peak / 1e9:.1f} GB" + (" (fits)" if peak <= budget else ""))
            helpful.append((flag, change))
    shorter = _shorter_context(config, budget, plan_kwargs)
    if shorter is not None:  # an idea alone (not combined with the others: it changes the model's context)
        ideas.append(shorter)
    capacity = capacity or f"the device's {device_bytes / 1e9:.1f} GB"
    together = "" if any(idea.endswith("(fits)") for idea in ideas) else _together(config, budget, helpful, plan_kwargs)
    options = "each alone: " + "; ".join(ideas) if ideas else "none of the settings gptlab plans lowers it"
    options += together
    if refuse_above is not None and plan.mode.peak > refuse_above * device_bytes:
        raise ConfigError(
            f"planned peak {plan.mode.peak / 1e9:,.1f} GB per {per} is more than {refuse_above:g} times {capacity}: "
            f"this run cannot fit (options, {options})"
        )
    expect = "expect an out-of-memory error" + (
        f" unless torch.compile saves enough (compiled steps measured {COMPILED_RANGE} of this eager plan)"
        if compiled
        else ""
    )
    return (f"planned peak {plan.mode.peak / 1e9:.1f} GB per {per} exceeds {capacity} "
            f"(less 5% headroom); {expect}. Options, {options}")  # fmt: skip


# A compiled step's peak against the eager plan, as measured (H200, GPT-2 124M to 350M, llama 124M, batch 16 to 64;
# docs/telemetry.md): lower with the plain head, the partitioner saving less; higher with the chunked one
COMPILED_RANGE = "0.60-1.09 on an H200"


LONG_CONTEXT = 2048  # above this many positions a run's sequence length is offered as a memory remedy


def _shorter_context(config: ModelArchitectureConfig, budget: float, plan_kwargs: dict) -> str | None:
    """For a long context (a Hugging Face config.json brings 8k to 128k positions; train.py trains on all of
    them): the longest halving of ``block_size``, down to 1024, whose plan fits, else the 1024 one's peak. A
    fine-tune on shorter blocks crops the loaded model, as nanoGPT does. None for a context of 2048 or less."""
    seq_len = plan_kwargs.get("seq_len") or config.block_size
    if seq_len <= LONG_CONTEXT:
        return None
    length, peak = seq_len, math.inf
    while length > 1024 and peak > budget:
        length = max(length // 2, 1024)
        peak = plan_memory(replace(config, block_size=length), **{**plan_kwargs, "seq_len": length}).mode.peak
    return (f"--block_size={length} (a shorter context; a fine-tune crops the model) -> {peak / 1e9:.1f} GB"
            + (" (fits)" if peak <= budget else ""))  # fmt: skip


def _together(
    config: ModelArchitectureConfig, budget: float, options: list[tuple[str, dict[str, Any]]], plan_kwargs: dict
) -> str:
    """When no setting alone fits: those that lowered the peak (``options``) at once, with the micro-batch halved
    until the plan fits (the same tokens per step in more micro-steps) where halving it helped, or, where even
    that does not fit, what is left: a smaller model, or more ranks to shard it over."""
    last_resort = "the model itself needs a smaller size, or FSDP over more GPUs to shard it"
    if not options:
        return f"; {last_resort}"
    flags = [flag for flag, change in options if "batch_size" not in change]
    combined: dict[str, Any] = {k: v for _, change in options if "batch_size" not in change for k, v in change.items()}
    halve = any("batch_size" in change for _, change in options)
    batch, accum = plan_kwargs["batch_size"], plan_kwargs.get("grad_accum_steps", 1)
    # micro-batches that divide the batch, largest first: the same sequences per step in more micro-steps
    for micro in _divisors_descending(batch) if halve else [batch]:
        factor = batch // micro
        change = {**combined, "batch_size": micro, "grad_accum_steps": accum * factor}
        peak = plan_memory(config, **{**plan_kwargs, **change}).mode.peak
        if peak <= budget:
            break
    if micro != batch:
        flags.append(f"--batch_size={micro} with {factor}x the gradient_accumulation_steps")
    if peak <= budget:
        return f"; together: {', '.join(flags)} -> {peak / 1e9:.1f} GB (fits)"
    return f"; even all together ({', '.join(flags)}) -> {peak / 1e9:.1f} GB: {last_resort}"


def plan_all_modes(config: ModelArchitectureConfig, *, world_size: int = 1, **kwargs: object) -> dict[str, MemoryPlan]:
    """``plan_memory`` for every mode: 'none' on one GPU, the others on ``world_size`` GPUs."""
    return {
        mode: plan_memory(config, parallel=mode, world_size=1 if mode == "none" else world_size, **kwargs)  # type: ignore[arg-type]
        for mode in MODES
    }


__all__ = [
    "MODES",
    "MemoryPlan",
    "ModeMemory",
    "backward_moments",
    "fit_advice",
    "fsdp_shard_numel",
    "plan_all_modes",
    "plan_memory",
    "zero1_partition",
]
