"""The LM head + cross-entropy alone: plain (``F.linear`` + ``F.cross_entropy``) against the chunked,
fused head (``gptlab.model.loss``, ``--loss_chunk_size``) at several chunk sizes. Forward + backward
time, and the peak bytes of live tensors during one step beyond its inputs (the two gradients
included): CUDA's max allocated on a GPU, PyTorch's memory profiler on a CPU (in a separate, untimed
step).

python bench/lm_head.py                                     # CPU: 1024 tokens, GPT-2 width and vocab
python bench/lm_head.py --device cuda --dtype bfloat16 --tokens 12288 --chunks 0,1024,2048,4096
python bench/lm_head.py --device cuda --dtype bfloat16 --tokens 16384 --chunks 0 --compile  # as the compiled step
python bench/lm_head.py --device cuda --dtype bfloat16 --tokens 65536 --chunks 0,16384 --compile --loss_kernel both

``--compile`` compiles each head + loss as the compiled model's step does (the plain head's loss on logits cast to
float32, as the model computes it); inductor options come from the environment (e.g.
TORCHINDUCTOR_ONLINE_SOFTMAX=0: the loss's max and sum in two passes instead of its one-pass online softmax).
``--loss_kernel``: the chunked head's softmax minus one-hot by its Triton kernel where it applies (CUDA; the
default), by torch ops (``torch``), or each chunk size both ways (``both``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import at_least, int_list  # bench/common.py (scripts run from bench/ or by path)

from gptlab.device import resolve_device
from gptlab.model import loss_kernel
from gptlab.model.loss import linear_cross_entropy
from gptlab.telemetry.memory import live_bytes_timeline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _profiled_peak_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of tensors allocated during ``step`` and alive at once (CPU: the memory profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    return max((live for _, live in live_bytes_timeline(prof, preexisting=False)), default=0)


def measure_one(a: argparse.Namespace, chunk: int) -> dict[str, float]:
    """Median ms per forward + backward and the step's peak bytes beyond its inputs."""
    device = torch.device(a.device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(a.tokens, a.n_embd, device=device, generator=gen, requires_grad=True)
    w = (0.02 * torch.randn(a.vocab, a.n_embd, device=device, generator=gen)).requires_grad_()
    targets = torch.randint(0, a.vocab, (a.tokens,), device=device, generator=gen)
    amp = contextlib.nullcontext() if a.dtype == "float32" else torch.autocast(device.type, dtype=DTYPES[a.dtype])

    def head_loss(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if chunk:
            return linear_cross_entropy(x, w, targets, chunk)
        return F.cross_entropy(F.linear(x, w).float(), targets, ignore_index=-1)  # float32, as the model's

    if a.compile:  # each row its own compile: dynamo keeps 8 per function, then runs the rest eagerly
        torch.compiler.reset()
    loss_of = torch.compile(head_loss) if a.compile else head_loss

    def step() -> None:
        with amp:
            loss = loss_of(x, w, targets)
        loss.backward()
        x.grad = w.grad = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _profiled_peak_bytes(step)
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"ms": 1000 * statistics.median(times), "peak_bytes": float(peak)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=at_least(1), default=1024, help="tokens in the micro-batch (B x T)")
    p.add_argument("--n_embd", type=at_least(1), default=768)
    p.add_argument("--vocab", type=at_least(1), default=50304)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument(
        "--chunks", type=int_list, default="0,128,256,512", help="comma-separated chunk sizes; 0 is the plain head"
    )
    p.add_argument("--iters", type=at_least(1), default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile each head + loss (as the compiled step)")
    p.add_argument("--loss_kernel", choices=("triton", "torch", "both"), default="triton")
    a = p.parse_args()
    resolve_device(a.device)  # one line for a device that is not here (or misspelt), not torch's RuntimeError
    chunks = a.chunks
    flops = 6 * a.tokens * a.n_embd * a.vocab
    print(f"LM head + cross-entropy: {a.tokens} tokens x {a.n_embd} -> {a.vocab}, {a.dtype} on {a.device}, "
          f"{flops / 1e9:.1f} GFLOP per forward+backward{', compiled' if a.compile else ''}")  # fmt: skip
    print(f"{'head':>20s} {'ms (median)':>12s} {'GFLOP/s':>9s} {'peak MB':>9s}")
    kernels = ("triton", "torch") if a.loss_kernel == "both" else (a.loss_kernel,)
    for chunk in chunks:
        for kernel in kernels if chunk else ("",):
            loss_kernel.USE_TRITON = kernel != "torch"
            applies = loss_kernel.triton_kernel_applies(torch.device(a.device), DTYPES[a.dtype])
            if kernel == "triton" and not applies and len(kernels) == 2:
                continue  # no kernel here (no CUDA, or no Triton): the torch-ops row says it all
            launches = loss_kernel.kernel_launches()
            r = measure_one(a, chunk)
            ran = loss_kernel.kernel_launches() > launches  # the row names what ran, counted
            name = "plain" if chunk == 0 else f"chunk {chunk} " + ("Triton" if ran else "torch ops")
            print(f"{name:>20s} {r['ms']:12.1f} {flops / r['ms'] / 1e6:9.1f} {r['peak_bytes'] / 1e6:9.1f}")


if __name__ == "__main__":
    import sys

    from gptlab.train.cli import entry

    sys.exit(entry(lambda _argv: main() or 0))  # a user mistake is one line, exit 2
