"""One attention sublayer (QKV projection, RoPE, SDPA, output projection), forward + backward, with RoPE
and the projection arranged in different ways: what the llama preset's rotary embedding costs, and which
form the compiler handles well. Read the kernel rows (--profile): on a GPU the ms column of a single layer
is mostly launch time. On an H200 (2026-12-04, docs/benchmarks.md) one inductor kernel of the compiled
llama step, RoPE's backward fused with the concatenation of q, k and v's gradients into the one fused QKV
product's gradient, took 0.31 ms a layer (3.6 ms of a 38 ms GPT-2-size step) where RoPE's forward took
29 us: the same over the (B, T, h, hd) layout, 0.30 ms with the halves swapped by flip (no inner
concatenation); with q, k and v projected separately (three weights, or the model's three slices of one
weight) it left the top kernels, and the model now does that.

python bench/rope_layout.py                                 # CPU, small
python bench/rope_layout.py --device cuda --dtype bfloat16 --compile --batch_size 16 --block_size 1024 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from common import at_least  # bench/common.py (scripts run from bench/ or by path)
from torch import Tensor, nn

from gptlab.device import resolve_device
from gptlab.model.attention import CausalSelfAttention
from gptlab.model.components import PositionContext, RotaryPositionEncoding, rotate_half

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def seq_major_context(rope: RotaryPositionEncoding, T: int) -> PositionContext:
    """The same rotation computed over the (B, T, n_head, hd) transpose of q and k (the layout of the QKV
    projection's output, of which they are views), cos/sin (T, 1, hd); gptlab rotates (B, n_head, T, hd)."""
    cos, sin = rope.cos[:T, None], rope.sin[:T, None]

    def rotate(x: Tensor) -> Tensor:
        seq = x.transpose(1, 2)
        return (seq * cos.to(x.dtype) + rotate_half(seq) * sin.to(x.dtype)).transpose(1, 2)

    return PositionContext(rotate=rotate)


def flip_context(rope: RotaryPositionEncoding, T: int) -> PositionContext:
    """The same rotation without a concatenation: x viewed as its two halves (..., 2, hd/2), the halves
    swapped by ``flip`` (an index map) and multiplied by (-sin, sin); bit-identical to rotate_half's (a
    negation is exact)."""
    half = rope.cos.shape[-1] // 2
    cos = rope.cos[:T].unflatten(-1, (2, half))  # (T, 2, hd/2)
    signed_sin = rope.sin[:T].unflatten(-1, (2, half)) * torch.tensor([-1.0, 1.0], device=cos.device)[:, None]

    def rotate(x: Tensor) -> Tensor:
        pairs = x.unflatten(-1, (2, half))
        return (pairs * cos.to(x.dtype) + pairs.flip(-2) * signed_sin.to(x.dtype)).flatten(-2)

    return PositionContext(rotate=rotate)


class FusedProduct(CausalSelfAttention):
    """gptlab's sublayer as it was before 2026-12-04's change: one (B, T, q + 2 kv) product split into q, k
    and v also under RoPE, so backward concatenates their gradients (the model now does this without RoPE only)."""

    def project(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)

    def forward(self, x: Tensor, pos: PositionContext) -> Tensor:
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in self.project(x))
        if pos.rotate is not None:
            q, k = pos.rotate(q), pos.rotate(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).contiguous().view(B, T, self.q_size))


class SplitProjections(FusedProduct):
    """The sublayer with three projections (three weights) instead of one fused QKV: no concatenation of q, k
    and v's gradients in backward (what the fused projection's split turns into)."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__(n_embd, n_head, n_head, False, 0.0, "sdpa")
        del self.qkv
        self.q, self.k, self.v = (nn.Linear(n_embd, n_embd, bias=False) for _ in range(3))

    def project(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.q(x), self.k(x), self.v(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch_size", type=at_least(1), default=4)
    p.add_argument("--block_size", type=at_least(2), default=256)
    p.add_argument("--n_embd", type=at_least(2), default=768)
    p.add_argument("--n_head", type=at_least(1), default=12)
    p.add_argument("--iters", type=at_least(1), default=20)
    p.add_argument("--profile", action="store_true", help="also the top 4 kernels of each variant")
    a = p.parse_args()
    if a.n_embd % a.n_head or (a.n_embd // a.n_head) % 2:  # RoPE rotates pairs of each head's dimensions
        p.error(f"--n_embd {a.n_embd} must split into --n_head {a.n_head} heads of an even size")
    device = resolve_device(a.device)
    T, hd = a.block_size, a.n_embd // a.n_head
    rope = RotaryPositionEncoding(T, hd).to(device)

    def attention() -> nn.Module:
        return CausalSelfAttention(a.n_embd, a.n_head, a.n_head, False, 0.0, "sdpa")

    def fused() -> nn.Module:
        return FusedProduct(a.n_embd, a.n_head, a.n_head, False, 0.0, "sdpa")

    variants = {
        "no RoPE (GPT-2's attention)": (attention, lambda: PositionContext()),
        "gptlab RoPE (q, k, v by slices)": (attention, lambda: rope.context(T, device)),
        "RoPE, one fused product": (fused, lambda: rope.context(T, device)),
        "RoPE over (B, T, h, hd), fused": (fused, lambda: seq_major_context(rope, T)),
        "RoPE via flip, fused": (fused, lambda: flip_context(rope, T)),
        "RoPE, three projections": (lambda: SplitProjections(a.n_embd, a.n_head), lambda: rope.context(T, device)),
    }
    amp = contextlib.nullcontext() if a.dtype == "float32" else torch.autocast(device.type, dtype=DTYPES[a.dtype])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(a.batch_size, T, a.n_embd, device=device, requires_grad=True)
    print(f"B={a.batch_size} T={T} C={a.n_embd} heads={a.n_head} device={device} dtype={a.dtype} compile={a.compile}")
    print(f"{'variant':36s} {'fwd+bwd ms':>11s} {'first s':>8s}")
    for name, (build, context) in variants.items():
        torch.manual_seed(0)
        layer = build().to(device)
        forward = torch.compile(layer) if a.compile else layer

        def step(forward: nn.Module = forward, context: object = context) -> None:
            with amp:
                y = forward(x, context())
            y.float().square().mean().backward()

        start = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - start
        for _ in range(3):
            step()
        times = []
        for _ in range(a.iters):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        print(f"{name:36s} {1000 * statistics.median(times):11.3f} {first:8.1f}")
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for _ in range(5):
                    step()
                sync()
            key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            rows = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))[:4]
            for e in rows:
                print(f"    {getattr(e, key) / 5 / 1000:8.3f} ms/step  {e.count // 5:3d}x  {e.key[:90]}")
        x.grad = None


if __name__ == "__main__":
    import sys

    from gptlab.train.cli import entry

    sys.exit(entry(lambda _argv: main() or 0))  # a user mistake is one line, exit 2
