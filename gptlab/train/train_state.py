"""A run's state beyond the weights, into and out of a checkpoint: the RNG streams (an exact resume draws the
same dropout masks) and the optimizer state, loaded into whatever wraps the model now (plain, ZeRO-1, FSDP2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gptlab.checkpoint import load_dcp, optimizer_state_by_name, state_errors
from gptlab.errors import CheckpointError, first_line

OPTIMIZER_KERNEL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The generators a checkpoint saves: the CPU's, and the device's on CUDA."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(ckpt: dict[str, Any], device: torch.device) -> None:
    """The generators as the checkpoint saved them (a CUDA state is left alone off CUDA)."""
    rng = ckpt.get("rng") or {}
    try:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
    except (RuntimeError, TypeError) as e:  # not a generator's state: a damaged or hand-edited record
        raise CheckpointError(
            f"{ckpt.get('path', 'the checkpoint')!r} is a damaged gptlab checkpoint: its rng state is no "
            f"generator's ({first_line(e)[:120]}); the file was left untouched"
        ) from None


def load_optimizer_state(
    ckpt: dict[str, Any],
    model: nn.Module,
    raw_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    mode: str,
    device: torch.device,
    betas: tuple[float, float],
    weight_decay: float,
    note: str = "",
) -> None:
    """The optimizer state (and, for a DCP checkpoint, the model's shards) into the wrapped run: ``model`` as
    wrapped (``mode``: none, ddp, zero1, fsdp), ``raw_model`` the plain one; ``note`` ends a DCP checkpoint's
    load error (a plugin whose code changed since). This run's ``betas`` and
    ``weight_decay`` replace the saved groups' (a resume that changes --weight_decay or --beta2 means it; lr is
    set every step)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    where = ckpt.get("path", "the checkpoint")
    if "dcp_path" in ckpt:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        try:
            load_dcp(state, ckpt["dcp_path"])  # collective: each rank reads its shards
        except CheckpointError as e:
            if not note:
                raise
            raise CheckpointError(f"{e}{note}") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    elif mode == "fsdp":  # a full (single-file) optimizer state, sharded as it loads
        with state_errors(where, "optimizer states"):
            by_name = optimizer_state_by_name(raw_model, optimizer, with_these_kernels(ckpt["optimizer"], optimizer))
            set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    else:  # plain AdamW, or ZeroRedundancyOptimizer (it keeps its share of the full state)
        optim_sd = with_these_kernels(ckpt["optimizer"], optimizer)
        if device.type == "cpu":  # load_state_dict keeps CPU tensors as they are: the memory-mapped
            # ckpt.pt's pages, so the file, replaced at the next save, stayed mapped (its disk space taken all run)
            optim_sd = {**optim_sd, "state": {i: _cloned(st) for i, st in optim_sd.get("state", {}).items()}}
        with state_errors(where, "optimizer states"):
            optimizer.load_state_dict(optim_sd)
    # configure_optimizers' order: the decayed matrices, then the rest at weight decay 0
    for i, group in enumerate(optimizer.param_groups):
        group["betas"] = betas
        group["weight_decay"] = weight_decay if i == 0 else 0.0


def with_these_kernels(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The saved optimizer state with ``optimizer``'s AdamW implementation (fused, foreach, capturable) in its
    groups, set before loading, which places the step counts by them: a loaded group brings the saved run's, and
    a nanoGPT run saved on a CPU ('fused': None) resumed with fused off under fp16's grad scaler (an
    AssertionError at the first step) and lost the fused kernel for good."""
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        return saved  # (load_state_dict names the mismatch)
    ours = [{k: g[k] for k in OPTIMIZER_KERNEL_KEYS if k in g} for g in optimizer.param_groups]
    return {**saved, "param_groups": [{**g, **k} if isinstance(g, dict) else g for g, k in zip(groups, ours)]}


def _cloned(state: Any) -> Any:
    """One parameter's optimizer state with its tensors copied."""
    if not isinstance(state, dict):
        return state
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
