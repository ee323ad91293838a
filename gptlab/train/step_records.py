"""What the training steps leave on the device for the log, read later where the host syncs anyway.

Gradient statistics are started at their interval and read back a step later (or at any exit from the loop),
in step order; fp16's skipped steps (GradScaler lowered its scale) are counted on the device every step and
reported at the next logged iteration. Neither makes the step wait for the device.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from gptlab.telemetry.gradients import PendingGradientStats

NEVER = 2**62  # no such iteration (the first skipped step's sentinel, above any real one)


class _EventLog(Protocol):
    def log_event(self, event: str, line: str, **fields: Any) -> None: ...

    def log_gradients(self, iter_num: int, stats: dict[str, Any]) -> None: ...


class _GradientReader(Protocol):
    def read_gradient_stats(self, pending: PendingGradientStats) -> dict[str, Any]: ...


class GradientStatsQueue:
    """Gradient statistics of past steps, on their way to the host, read in step order: the spike test (and
    its ``grad_spike`` event) for each, then its ``gradients`` record."""

    def __init__(self, telemetry: _GradientReader, logger: _EventLog, fp16: bool) -> None:
        self._telemetry, self._logger, self._fp16 = telemetry, logger, fp16
        self._unread: list[tuple[int, PendingGradientStats]] = []

    def add(self, iter_num: int, pending: PendingGradientStats) -> None:
        self._unread.append((iter_num, pending))

    def read(
        self, through: float = math.inf, keep: int | None = None, ready_only: bool = False
    ) -> dict[str, Any] | None:
        """Read those of iterations up to ``through``, in order, except iteration ``keep``'s, returned for the
        iteration's own record. Read a step after they were made, or where the host has synced anyway, they cost
        no stall; every exit from the loop (evaluation, checkpoint, a stop) reads them all first, so the
        checkpoint's spike history and the log hold every step's. ``ready_only``: those whose copy has ended, in
        order (after an error, whose device may never finish the rest)."""
        kept = None
        while self._unread and self._unread[0][0] <= through:
            if ready_only and not self._unread[0][1].ready():
                break
            iter_num, pending = self._unread.pop(0)
            stats = self._telemetry.read_gradient_stats(pending)
            if stats["spike"]:
                self._log_spike(iter_num, stats)
            if iter_num == keep:
                kept = stats
            else:  # computed at their own interval: kept, never dropped
                self._logger.log_gradients(iter_num, stats)
        return kept

    def _log_spike(self, iter_num: int, stats: dict[str, Any]) -> None:
        ratio, norm = stats["norm_to_median"], stats["global_norm"]
        if math.isfinite(norm):
            why = f"{ratio:.1f}x its running median"
        else:
            why = "non-finite" + (": an fp16 overflow, the loss scaler skips this step" if self._fp16 else "")
        self._logger.log_event(
            "grad_spike",
            f"iter {iter_num}: gradient norm {norm:.4g} is {why}",
            iter=iter_num,
            grad_norm=norm,
            ratio=ratio,
        )


class LossScaleDrops:
    """fp16: the steps whose inf/NaN gradients GradScaler skipped (its scale fell), counted on the device with
    the first and last such iteration, and said, naming them, where the host reads them (a logged iteration, or
    where the run ends)."""

    def __init__(self, scaler: torch.amp.GradScaler, logger: _EventLog) -> None:
        self._scaler, self._logger = scaler, logger
        self._count: torch.Tensor | None = None  # skipped steps since the last report
        self._first = self._last = torch.zeros(())
        self._scale = scaler.get_scale() if scaler.is_enabled() else 0.0  # the scale a drop is reported from

    def update(self, iter_num: int) -> None:
        """``scaler.update()``, counting a drop of its scale on the device (no host sync)."""
        scaler = self._scaler
        before = scaler._scale.clone() if scaler.is_enabled() else None  # set by scale() in this step
        scaler.update()
        if before is None:
            return
        fell = scaler._scale < before
        if self._count is None:
            self._count = torch.zeros((), dtype=torch.int64, device=fell.device)
            self._first = torch.full((), NEVER, dtype=torch.int64, device=fell.device)
            self._last = torch.full((), -1, dtype=torch.int64, device=fell.device)
        drop = fell.to(torch.int64)
        self._count += drop
        self._first = torch.minimum(self._first, drop * iter_num + (1 - drop) * NEVER)
        self._last = torch.maximum(self._last, drop * iter_num - (1 - drop))

    def report(self) -> None:
        """Log the drops counted since the last report as one ``loss_scale`` event (a host sync)."""
        if not self._scaler.is_enabled():
            return
        scale = self._scaler.get_scale()
        if self._count is not None and (drops := int(self._count.item())):
            first, last = int(self._first.item()), int(self._last.item())
            when = f"iter {first}" if first == last else f"iters {first}-{last}"
            self._logger.log_event(
                "loss_scale",
                f"{when}: fp16 loss scale fell {self._scale:g} -> {scale:g} "
                f"({drops} step{'s' if drops > 1 else ''} with inf/NaN gradients skipped)",
                iter=last,
                first_iter=first,
                skipped_steps=drops,
                scale=scale,
            )
            self._count = None
        self._scale = scale
