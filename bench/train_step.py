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
import statistics
import time
from typing import Any

import torch
from common import add_run_args, build_trainer  # bench/common.py (scripts run from bench/ or by path)

from gptlab.train.loop import PT_DTYPES


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
    add_run_args(p)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="alternate the two loops this many times")
    a = p.parse_args()
    trainer = build_trainer(a)
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
