"""The chunked loss's softmax-minus-one-hot as one Triton kernel on CUDA (``gptlab.model.loss``).

Per chunk, the torch ops of the chunked loss take the (k, V) logits to float32, subtract the row
maximum, exponentiate, sum, scale, scatter the one-hot and cast back: about eight passes over a
float32 (k, V) tensor. This kernel reads the low-precision logits a row at a time (a running maximum
and sum of exponentials in one pass, then a second pass that usually hits the L2 cache) and
overwrites them in place with softmax minus one-hot (0 on ignored rows): one read and one write of
the (k, V) matmul output, with no float32 copy. It returns each row's loss (log-sum-exp minus the
target's logit, 0 where the target is -1) in float32.

It runs where ``USE_TRITON`` is set (off in training until a GPU has run it), Triton is there and the
tensor is on a CUDA device of compute capability 7.0 or later; elsewhere ``softmax_grad_`` computes the
same in torch ops, which is also its reference in the tests. It is a ``torch.library`` custom
op that mutates the logits, so torch.compile keeps it as one opaque call inside the compiled graph.
"""

from __future__ import annotations

import collections
import functools

import torch
from torch import Tensor

try:  # Triton ships with PyTorch's CUDA builds; a CPU install has none, and needs none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

IGNORE_INDEX = -1
# Off in training until a GPU run has checked it (tests/train/test_cuda.py) and measured it (docs/benchmarks.md):
# the kernel has run only under Triton's CPU interpreter so far. The benchmarks turn it on (--loss_kernel).
USE_TRITON = False
# Launches of the kernel by device: what a benchmark reads to say the kernel ran, not only that it was asked for
# (a compiled graph calls the op's body at run time, so a compiled step counts too)
KERNEL_LAUNCHES: collections.Counter[str] = collections.Counter()

if triton is not None:

    @triton.jit
    def _softmax_grad_kernel(logits_ptr, row_stride, targets_ptr, losses_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        ptr = logits_ptr + row * row_stride
        target = tl.load(targets_ptr + row)
        valid = target != -1  # IGNORE_INDEX (a kernel reads no module globals)
        # read before any store: the second pass overwrites the row in place, and no barrier orders another
        # warp's store to the target's column after this load (Liger's kernel reads it first too)
        target_logit = tl.load(ptr + tl.where(valid, target, 0)).to(tl.float32)
        offsets = tl.arange(0, BLOCK)
        running_max = float("-inf")
        running_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            x = tl.load(ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(x, 0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), 0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        tl.store(losses_ptr + row, tl.where(valid, lse - target_logit, 0.0))
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            mask = cols < n_cols
            x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            grad = tl.where(valid, grad, 0.0)
            tl.store(ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _triton_compiles_for(device_index: int) -> bool:
    """Triton builds for Volta (compute capability 7.0) and later, as torch's own ``has_triton`` requires."""
    return torch.cuda.get_device_capability(device_index)[0] >= 7


def kernel_launches() -> int:
    """The kernel's launches so far in this process, on every device (``KERNEL_LAUNCHES``)."""
    return sum(KERNEL_LAUNCHES.values())


def triton_kernel_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``softmax_grad_`` runs the Triton kernel for logits of this device and dtype (CUDA; bf16, fp16
    or fp32)."""
    return (
        USE_TRITON
        and triton is not None
        and device.type == "cuda"
        and dtype in (torch.bfloat16, torch.float16, torch.float32)
    )


def row_losses_(logits: Tensor, targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(each row's loss, 0 where not ``valid``; exp(logits - row max); its row sums) from float logits, which
    are overwritten: the exponentials take the logits' place, so one (k, V) tensor stays alive. ``targets``
    have the ignored ones replaced by 0."""
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    exp = logits.sub_(row_max).exp_()
    sum_exp = exp.sum(dim=1)
    return (row_max.squeeze(1) + sum_exp.log() - target_logit) * valid, exp, sum_exp


def softmax_grad_torch_(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """The kernel's computation in torch ops on float logits (``row_losses_``'s arguments), overwritten with
    softmax minus one-hot, 0 on rows not ``valid``: in [-1, 1], so that float16 holds it. The row losses. The
    chunked loss's path where the kernel does not run, and the kernel's reference."""
    losses, exp, sum_exp = row_losses_(logits, targets, valid)
    exp.mul_((valid / sum_exp).unsqueeze(1))
    exp.scatter_add_(1, targets.unsqueeze(1), -valid.to(exp.dtype).unsqueeze(1))
    return losses


def _softmax_grad_fallback(logits: Tensor, targets: Tensor) -> Tensor:
    """``softmax_grad_`` in torch ops (float32 arithmetic), in place: where the kernel does not run."""
    valid = targets != IGNORE_INDEX
    work = logits.float()  # a float32 copy of low-precision logits (float32 ones themselves)
    losses = softmax_grad_torch_(work, targets.masked_fill(~valid, 0), valid)
    logits.copy_(work)
    return losses


@torch.library.custom_op("gptlab::softmax_grad_", mutates_args=("logits",))
def softmax_grad_(logits: Tensor, targets: Tensor) -> Tensor:
    """Row losses of ``logits`` (N, V) against ``targets`` (N,) int64, -1 ignored; the logits overwritten
    with softmax minus one-hot (0 on ignored rows). Targets outside [0, V) other than -1 are an error: checked
    on the device (no sync) before the kernel, which would read past its row. Before Volta: the torch ops."""
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets of shape {tuple(targets.shape)} for logits of shape {tuple(logits.shape)}")
    n_rows, n_cols = logits.shape
    bad = (targets < IGNORE_INDEX) | (targets >= n_cols)
    torch._assert_async(~bad.any(), "a target is outside [0, vocab_size) and is not -1")
    if not triton_kernel_applies(logits.device, logits.dtype) or not _triton_compiles_for(logits.device.index or 0):
        return _softmax_grad_fallback(logits, targets)
    targets = targets.contiguous()  # the kernel steps through them one by one (a slice t[::2] is strided)
    losses = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    if n_rows:
        assert logits.stride(1) == 1, "the kernel reads rows of contiguous columns"
        # a program per row, 8192 columns a step (GPT-2's 50304: 7 steps a pass), as Liger's cross-entropy
        # kernel sizes its blocks; untuned beyond that (docs/benchmarks.md says what it measured)
        block = min(8192, triton.next_power_of_2(n_cols))
        _softmax_grad_kernel[(n_rows,)](
            logits, logits.stride(0), targets, losses, n_cols, BLOCK=block, num_warps=16 if block >= 4096 else 4
        )
        KERNEL_LAUNCHES[str(logits.device)] += 1
    return losses


@softmax_grad_.register_fake
def _(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.new_empty(logits.shape[0], dtype=torch.float32)


__all__ = ["KERNEL_LAUNCHES", "kernel_launches", "softmax_grad_", "triton_kernel_applies"]
