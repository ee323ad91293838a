"""Gradient statistics on the device, read back without stalling the step, correct for sharded (DTensor)
gradients.

A "layer" here is one parameter tensor (as in the design document's per-parameter norm list),
so ``mean/max/min_layer_norm`` range over tensors such as ``blocks.3.attn.qkv.weight``.

Under DDP and ZeRO-1 every rank holds the whole, already averaged gradient, so local values
are the global ones. Under FSDP2 a gradient is a DTensor sharded over a device mesh: each rank
computes partial sums, sums of squares, element counts, minima and maxima of its shard, and
two all-reduces (SUM, then MIN with maxima negated) combine them; a tensor that is replicated
over the sharded mesh dimensions contributes from one coordinate only, so nothing counts twice.

The training loop reads them a step late: ``PendingGradientStats`` starts the copy of the eight
values to host memory without waiting (on CUDA), and ``result()`` waits only for that copy. Read
at once, as ``get_gradient_stats`` does, the host instead waits for every queued kernel, and the
GPU idles while the host launches the optimizer after the wait (on an H200: 3.4 ms a call).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from statistics import median

import torch
from torch import Tensor, nn

STAT_KEYS = (
    "global_norm",
    "mean_layer_norm",
    "max_layer_norm",
    "min_layer_norm",
    "grad_mean",
    "grad_std",
    "grad_min",
    "grad_max",
)


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor

        return DTensor
    except ImportError:  # torch built without distributed
        return None


def _shard_dims(grad: Tensor, dtensor: type | None) -> tuple[int, ...]:
    if dtensor is None or not isinstance(grad, dtensor):
        return ()
    dims = []
    for i, placement in enumerate(grad.placements):
        if placement.is_partial():
            raise NotImplementedError("gradient statistics of Partial (unreduced) DTensor gradients")
        if placement.is_shard():
            dims.append(i)
    return tuple(dims)


def get_gradient_stats(model: nn.Module | Iterable[Tensor]) -> dict[str, float | None]:
    """Global norm, per-tensor norm mean/max/min, and mean/std/min/max of all gradient elements.
    Call after backward (and DDP's reduction) and before ``zero_grad``; all None without gradients.
    One host sync (the values' ``tolist``)."""
    return PendingGradientStats(gradient_stats_tensor(model)).result()


class PendingGradientStats:
    """The statistics on their way to the host. Made right after the step's gradients: on CUDA the eight
    values are copied to pinned host memory without waiting and an event marks the copy's end, so
    ``result()`` a step later waits for nothing the device has not long finished. ``global_norm`` is the
    device scalar, for checks that stay on the device."""

    def __init__(self, values: Tensor | None) -> None:
        self.global_norm = None if values is None else values[0]
        self._host, self._event = values, None
        if values is not None and values.device.type == "cuda":
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(values.device))

    def ready(self) -> bool:
        """Whether ``result()`` would not wait (the copy has ended; always, off CUDA)."""
        return self._event is None or self._event.query()

    def result(self) -> dict[str, float | None]:
        """The values as floats by STAT_KEYS (all None without gradients); waits for the copy alone (on
        CUDA) or, elsewhere, reads the device tensor then."""
        if self._host is None:
            return dict.fromkeys(STAT_KEYS)
        if self._event is not None:
            self._event.synchronize()
        return dict(zip(STAT_KEYS, self._host.tolist()))


def gradient_stats_tensor(model: nn.Module | Iterable[Tensor]) -> Tensor | None:
    """``get_gradient_stats``'s values as one device vector in STAT_KEYS order, with no host sync (None
    without gradients)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    dtensor = _dtensor_type()
    shard_dims = [_shard_dims(g, dtensor) for g in grads]
    local = [g.to_local() if dtensor is not None and isinstance(g, dtensor) else g for g in grads]
    device = local[0].device
    acc = torch.float64 if device.type in ("cpu", "cuda") else torch.float32  # accumulate sums in double
    n = float(sum(g.numel() for g in grads))  # a DTensor's numel is the global one: no reduction needed
    # Launches matter on a GPU (about 150 tensors for GPT-2, each launch 5-30 us of host time): the per-tensor
    # norms in one fused launch per dtype, the sums and extremes over a few flat buckets, the rest on stacked
    # values. Per tensor instead (two ops each) for FSDP2 shards, to count a replicated tensor once, and on
    # the CPU, where an op costs no launch and the buckets' copies doubled the time (GPT-2 124M: 0.8 -> 1.4 s).
    norms = torch._foreach_norm(local, 2, dtype=torch.float32)  # one fused launch per dtype/device bucket
    sumsq = torch.stack(norms).to(acc).square()
    mesh_dims = sorted({d for dims in shard_dims for d in dims})
    if mesh_dims or device.type in PER_TENSOR_DEVICES:
        sums = torch.stack([g.sum(dtype=acc) for g in local])
        mins, maxs = _extremes(local, acc)
    else:
        sums, mins, maxs = _bucket_totals(local, acc)
    if mesh_dims:
        sumsq, sums, mins, maxs = _reduce_shards(grads, shard_dims, mesh_dims, sumsq, sums, mins, maxs)

    layer_norms = sumsq.sqrt()
    mean = sums.sum() / n
    var = (sumsq.sum() / n - mean.square()).clamp_min(0)  # population variance, like np.std
    return torch.stack(
        [
            sumsq.sum().sqrt(),
            layer_norms.mean(),
            layer_norms.max(),
            layer_norms.min(),
            mean,
            var.sqrt(),
            mins.min(),
            maxs.max(),
        ]
    )


PER_TENSOR_DEVICES = ("cpu",)  # device types whose sums and extremes are taken tensor by tensor
BUCKET_ELEMENTS = 1 << 25  # 128 MB of float32 copied at most at a time (a tensor larger than this is read in place)


def _bucket_totals(local: list[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Sums, minima and maxima (``acc`` vectors, one entry per bucket) of the gradients flattened into buckets
    of up to ``BUCKET_ELEMENTS`` per dtype: three reductions and one concatenation per bucket instead of two
    launches per tensor. Their totals are the statistics' (empty tensors hold no element to count)."""
    buckets: list[list[Tensor]] = []
    open_bucket: dict[torch.dtype, tuple[list[Tensor], int]] = {}
    for g in local:
        if not g.numel():
            continue
        members, size = open_bucket.get(g.dtype, ([], 0))
        if not members or size + g.numel() > BUCKET_ELEMENTS:
            members, size = [], 0
            buckets.append(members)
        members.append(g.reshape(-1))
        open_bucket[g.dtype] = (members, size + g.numel())
    if not buckets:
        empty = local[0].new_zeros(0, dtype=acc)
        return empty, empty.new_full((1,), math.inf), empty.new_full((1,), -math.inf)
    flats = [members[0] if len(members) == 1 else torch.cat(members) for members in buckets]
    return torch.stack([flat.sum(dtype=acc) for flat in flats]), *_extremes(flats, acc)


def _extremes(local: list[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-tensor minima and maxima as two ``acc`` vectors: one ``aminmax`` per tensor and one cast in
    all when the gradients share a dtype. An empty FSDP shard gives +inf / -inf (device-side fills:
    ``torch.tensor(...)`` would copy from the host and synchronise)."""
    pairs = [torch.aminmax(g) if g.numel() else (g.new_full((), math.inf), g.new_full((), -math.inf)) for g in local]
    mins, maxs = [p[0] for p in pairs], [p[1] for p in pairs]
    if len({m.dtype for m in mins}) == 1:
        return torch.stack(mins).to(acc), torch.stack(maxs).to(acc)
    return torch.stack([m.to(acc) for m in mins]), torch.stack([m.to(acc) for m in maxs])


def _reduce_shards(
    grads: list[Tensor],
    shard_dims: list[tuple[int, ...]],
    mesh_dims: list[int],
    sumsq: Tensor,
    sums: Tensor,
    mins: Tensor,
    maxs: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Combine per-shard partial statistics (one entry per tensor) across the mesh dimensions that shard
    some gradient: two all-reduces per mesh dimension, whatever the number of tensors."""
    import torch.distributed as dist

    mesh = next(g.device_mesh for g, dims in zip(grads, shard_dims) if dims)
    coords = mesh.get_coordinate() or [0] * mesh.ndim
    n = len(grads)
    packed = torch.cat([sumsq, sums])
    # A tensor not sharded over a reduced mesh dim is whole at every coordinate: count coordinate 0's copy.
    for i, dims in enumerate(shard_dims):
        if not all(d in dims or coords[d] == 0 for d in mesh_dims):
            packed[i] = packed[n + i] = 0  # a launch each, for replicated tensors only (FSDP shards them all)
    extremes = torch.cat([mins, maxs.neg()])  # one MIN reduction for both
    for d in mesh_dims:
        group = mesh.get_group(d)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(extremes, op=dist.ReduceOp.MIN, group=group)
    return packed[:n], packed[n:], extremes[:n], -extremes[n:]


class GradientSpikeDetector:
    """Flags a gradient norm above ``threshold`` x the median of the last ``window`` norms.

    Non-finite norms are always spikes. Every finite norm joins the history, so a lasting change
    of scale becomes the new normal after about half a window instead of alarming forever.
    """

    def __init__(self, window: int = 100, threshold: float = 5.0, min_history: int = 10) -> None:
        if window < 1 or threshold <= 1 or not 1 <= min_history <= window:
            raise ValueError(f"need window >= 1, threshold > 1, 1 <= min_history <= window; got "
                             f"{window}, {threshold}, {min_history}")  # fmt: skip
        self.threshold, self.min_history = threshold, min_history
        self.history: deque[float] = deque(maxlen=window)
        self.last_ratio: float | None = None  # norm / running median of the last update

    @property
    def median(self) -> float | None:
        return median(self.history) if self.history else None

    def update(self, norm: float) -> bool:
        """Record ``norm``; True when it is a spike relative to the norms before it."""
        if not math.isfinite(norm):
            self.last_ratio = math.inf
            return True
        med = self.median
        self.last_ratio = norm / med if med else None
        spike = (
            len(self.history) >= self.min_history and self.last_ratio is not None and self.last_ratio > self.threshold
        )
        self.history.append(norm)
        return spike

    def state_dict(self) -> dict[str, list[float]]:
        """The recent norms, for a checkpoint: a resumed run flags (and logs norm_to_median) as an uninterrupted one."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.history.clear()
        self.history.extend(float(n) for n in state["history"])


__all__ = ["STAT_KEYS", "GradientSpikeDetector", "PendingGradientStats", "get_gradient_stats", "gradient_stats_tensor"]
