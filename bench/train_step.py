"""Training-step throughput: gptlab's Trainer.train_step against a minimal plain-PyTorch loop
(what nanoGPT's train.py does, no more) on the same model, data and batch, in one run, so
gptlab's own overhead shows as a ratio.

python bench/train_step.py                                  # small llama-style model on the CPU
python bench/train_step.py --preset gpt2 --n_layer 12 --n_embd 768 --n_head 12 --block_size 1024 \
    --batch_size 8 --device cuda --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from typing import Any

import torch

from gptlab.config.train import parse_run_args
from gptlab.train.loop import PT_DTYPES, Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Any, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--dataset", default="stdlib_char")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attention_backend", default="sdpa", help="sdpa or manual")
    p.add_argument("--peak_tflops", type=float, help="dense peak per device for MFU where none is known (CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="alternate the two loops this many times")
    a = p.parse_args()
    args = [
        f"--arch_preset={a.preset!r}",
        f"--n_layer={a.n_layer}",
        f"--n_embd={a.n_embd}",
        f"--n_head={a.n_head}",
        f"--block_size={a.block_size}",
        f"--batch_size={a.batch_size}",
        f"--gradient_accumulation_steps={a.grad_accum}",
        f"--dataset={a.dataset!r}",
        f"--device={a.device!r}",
        f"--dtype={a.dtype!r}",
        f"--compile={a.compile}",
        "--out_dir='out/bench'",
        "--overwrite=True",
        "--gradient_log_interval=10",
        "--warmup_iters=0",
        f"--attention_backend={a.attention_backend!r}",
        f"--peak_tflops={a.peak_tflops}",
    ]
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    device = trainer.device

    # The plain loop: same model object, loader and optimizer settings; nothing else.
    model = trainer.model
    opt = trainer.optimizer
    autocast = (
        contextlib.nullcontext()
        if trainer.dtype == "float32"
        else torch.autocast(device.type, dtype=PT_DTYPES[trainer.dtype])
    )
    it = [0]

    def plain_step() -> None:
        for micro in range(a.grad_accum):
            x, y = trainer.train_loader.get_batch(it[0], micro)
            with autocast:
                _, loss = model(x, y)
            (loss / a.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        it[0] += 1

    def gptlab_step() -> None:
        trainer.train_step()
        trainer.iter_num += 1

    tokens = a.batch_size * a.block_size * a.grad_accum
    results: dict[str, list[float]] = {"plain PyTorch": [], "gptlab train_step": []}
    for _ in range(a.rounds):  # alternate, so drift in machine load hits both alike
        results["plain PyTorch"] += time_steps(plain_step, device, a.warmup, a.iters)
        results["gptlab train_step"] += time_steps(gptlab_step, device, a.warmup, a.iters)
    flops = trainer.telemetry.flops_summary()["flops_per_token"]
    memory = trainer.telemetry.memory_stats()
    cuda_peak = memory.get("max_allocated_gb")
    peak_gb = cuda_peak if cuda_peak is not None else memory.get("rss_gb")
    print(
        f"model: {trainer.arch.get_architecture_name()}, {trainer.raw_model.get_num_params() / 1e6:.2f}M params, "
        f"{tokens} tokens/step, device={device}, dtype={trainer.dtype}, compile={a.compile}, "
        f"attention={a.attention_backend}, peak memory {peak_gb:.2f} GB "
        + ("(CUDA max allocated)" if cuda_peak is not None else "(process RSS)")
    )
    print(f"{'loop':20s} {'ms/step (median)':>17s} {'tokens/s':>12s} {'achieved GFLOP/s':>17s} {'MFU':>7s}")
    medians = {}
    for name, times in results.items():
        med = statistics.median(times)
        medians[name] = med
        mfu = trainer.telemetry.mfu(med)["mfu"]
        mfu_text = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
        print(f"{name:20s} {1000 * med:17.2f} {tokens / med:12,.0f} {flops * tokens / med / 1e9:17.2f} {mfu_text:>7s}")
    ratio = medians["gptlab train_step"] / medians["plain PyTorch"]
    print(f"gptlab / plain step time: {ratio:.3f} (gradient statistics every 10 steps included)")


if __name__ == "__main__":
    main()
