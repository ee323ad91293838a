"""Cross-entropy of the LM head without the (tokens x vocab) logits: chunked and fused.

The plain training step materialises the logits of every token (B*T*V, with V = 50304 for GPT-2:
1.2 GB in bf16 for a 12 x 1024 micro-batch), their float32 log-softmax (saved for backward,
2.5 GB) and, in backward, two more float32 tensors of that size. At GPT-2 sizes that is the
largest single item of activation memory. ``linear_cross_entropy`` instead walks the tokens in
chunks of ``chunk_size``: for each chunk it forms the logits, the loss and, right away, the
gradients with respect to the head's input and weight (softmax minus one-hot, scaled by
1/valid tokens), then drops the chunk. Backward only scales the stored gradients by the
incoming gradient. So:

- memory: the (N, H) input gradient and a float32 (V, H) weight gradient are kept instead of
  the (N, V) tensors; a chunk's temporaries are 4 (float32) to 6 (bf16/fp16) bytes x ``chunk_size * V``
  (with gptlab.model.loss_kernel's Triton kernel on CUDA, the matmul dtype's 2 or 4: softmax minus one-hot
  overwrites the chunk's logits in place; the kernel is off until a GPU has run it);
- FLOPs: exactly the plain step's (2NHV forward, 4NHV for the two gradient matmuls), no
  recomputation, so MFU and HFU are unchanged;
- numerics: the same low-precision matmuls as autocast plus a float32 cross-entropy. The
  logits' gradient is formed unscaled (softmax minus one-hot, in [-1, 1]) in the matmul dtype; the
  input gradient is stored unscaled too (of the weights' size) and multiplied by 1/valid-tokens
  and the incoming gradient (the loss scale) together in backward, so float16 does not underflow
  even though the loss scale is not known in forward; the weight gradient is summed over chunks
  in float32 and divided there.

Targets equal to -1 are ignored, as in ``F.cross_entropy(..., ignore_index=-1)``; the mean is over
the valid targets (NaN if none); any other out-of-range target fails as it does there. Only the
gradients autograd needs are formed; evaluation runs the chunked loss alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gptlab.model.loss_kernel import (
    IGNORE_INDEX,
    row_losses_,
    softmax_grad_,
    softmax_grad_torch_,
    triton_kernel_applies,
)


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the plain path's matmul would run in: autocast's, else the operands' common dtype
    (bf16 under FSDP2 mixed precision)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weight.dtype)


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss's arithmetic: float32 for bf16/fp16/fp32 logits (as autocast's cross_entropy), float64 for a
    float64 model (a gradcheck's), never narrower than the logits."""
    return torch.promote_types(dtype, torch.float32)


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and the needed gradients in one chunked forward pass; backward scales the stored ones."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:  # type: ignore[override]
        dtype = _compute_dtype(x, weight)
        acc = loss_dtype(dtype)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(dtype)
            valid = targets != IGNORE_INDEX
            safe_targets = targets.masked_fill(~valid, 0)  # other negatives still fail in gather
            n_valid = valid.sum()
            inv_n = 1.0 / n_valid.clamp_min(1).to(acc)  # d(mean loss)/d(row loss), applied in float32
            loss_sum = torch.zeros((), device=x.device, dtype=acc)
            grad_x = torch.empty_like(x) if want_x else None
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc) if want_w else None
            kernel = triton_kernel_applies(x.device, dtype)  # (which checks each chunk's targets on the device)
            for start in range(0, x.shape[0], chunk_size):
                end = min(start + chunk_size, x.shape[0])
                xc, tc, vc = x[start:end].to(dtype), safe_targets[start:end], valid[start:end]
                if kernel:  # one read and one write of the low-precision logits (gptlab.model.loss_kernel)
                    grad_logits = xc @ w.t()
                    loss_sum += softmax_grad_(grad_logits, targets[start:end]).sum()
                else:  # the same in torch ops: the logits' gradient before the 1/n_valid factor, in place
                    logits = (xc @ w.t()).to(acc)  # float32 like autocast's cross_entropy
                    loss_sum += softmax_grad_torch_(logits, tc, vc).sum()
                    grad_logits = logits.to(dtype)
                    del logits  # the float32 softmax, before the weight-gradient product
                if grad_x is not None:  # 1/n_valid and the loss scale are applied together in backward
                    grad_x[start:end] = grad_logits @ w
                if grad_w is not None:
                    if dtype == acc:
                        torch.addmm(grad_w, grad_logits.t(), xc, out=grad_w)  # (addmm_ escapes FlopCounterMode)
                    else:
                        grad_w += grad_logits.t() @ xc  # a low-precision (V, H) product, summed in float32
                del grad_logits  # before the next chunk's logits exist
            if grad_w is not None:
                grad_w.mul_(inv_n)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype, ctx.inv_n = weight.dtype, inv_n
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        grad_x, grad_w = ctx.saved_tensors
        # grad_x holds (softmax - onehot) @ W, of W's size: scaled here by 1/n_valid and the incoming gradient
        # (the fp16 loss scale) at once, in float32 arithmetic, so a float16 grad_x (FSDP's float16 compute)
        # never holds the ~1/n_valid-sized values that would fall below float16's normal range
        return (
            None if grad_x is None else grad_x * (ctx.inv_n * grad_loss),
            None if grad_w is None else (grad_w * grad_loss).to(ctx.weight_dtype),
            None,
            None,
        )


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (-1 ignored), ``chunk_size`` tokens
    at a time; equal to ``F.cross_entropy(F.linear(x, weight).flatten(0, -2), targets.flatten(),
    ignore_index=-1)`` without ever holding the logits of all tokens."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of tokens")
    x2d, t1d = x.reshape(-1, x.shape[-1]), targets.reshape(-1).long()  # gather/scatter take int32 from torch 2.8
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x2d, weight, t1d, chunk_size)
    with torch.no_grad():  # evaluation: the loss only
        dtype = _compute_dtype(x2d, weight)
        acc = loss_dtype(dtype)
        with torch.autocast(x.device.type, enabled=False):
            w, valid = weight.to(dtype), t1d != IGNORE_INDEX
            safe_targets = t1d.masked_fill(~valid, 0)
            total = torch.zeros((), device=x.device, dtype=acc)
            for start in range(0, x2d.shape[0], chunk_size):
                end = start + chunk_size
                logits = (x2d[start:end].to(dtype) @ w.t()).to(acc)
                total += row_losses_(logits, safe_targets[start:end], valid[start:end])[0].sum()
            return total / valid.sum()


__all__ = ["linear_cross_entropy"]
