"""Training-step throughput: gptlab's Trainer.train_step against a minimal plain-PyTorch loop
(what nanoGPT's train.py does, no more) on the same model, data and batch, in one run, so
gptlab's own overhead shows as a ratio; then, with --profile, the top kernels of gptlab's step.

python bench/train_step.py                                  # small llama-style model on the CPU
python bench/train_step.py --preset gpt2 --n_layer 12 --n_embd 768 --n_head 12 --block_size 1024 \\
    --batch_size 16 --device cuda --dtype bfloat16 --compile --profile 5
torchrun --nproc_per_node=8 bench/train_step.py --parallel fsdp ...   # prints on rank 0
bench/gpu_suite.sh                                          # issue 8's GPU targets in one go
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import add_run_args, at_least, build_trainer, make_steps  # bench/common.py: run from bench/ or by path

from gptlab import parallel
from gptlab.model.loss_kernel import kernel_launches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Any, device: torch.device, warmup: int, iters: int, aligned: Any = lambda: True) -> list[float]:
    """Each of ``iters`` steps' seconds, after ``warmup`` steps and as many more as it takes for ``aligned()``
    (gptlab's: a round starts right after a gradient-statistics step, so each round of a multiple of its
    interval holds its share of them, as training does)."""
    for _ in range(warmup):
        step()
    while not aligned():
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_back_to_back(step: Any, device: torch.device, iters: int, aligned: Any = lambda: True) -> float:
    """Mean seconds per step over ``iters`` steps queued back to back with one sync at the end, as training
    runs them (it syncs only where it logs): the host's work between steps overlaps the device's, where
    ``time_steps``'s sync after every step leaves the device idle while the host starts the next one."""
    while not aligned():
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def profile_steps(step: Any, device: torch.device, steps: int, out_dir: Path, rows: int = 15) -> None:
    """torch.profiler over ``steps`` steps: the top ops/kernels by self time on the device (CPU on a
    CPU run), and a Chrome trace to open in Perfetto."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {steps} gptlab steps, top {rows} by {sort_by}:")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / "train_step_trace.json"
    prof.export_chrome_trace(str(trace))
    print(f"trace: {trace}")


def sdpa_kernels(step: Any) -> list[str]:
    """The SDPA kernels one more step runs, by aten's names (``cudnn_attention``, ``flash_attention``, ...): the
    one PyTorch's order and ``sdpa_backend`` picked. Empty where none shows (manual attention, CUDA-graph replay)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    prefix = "aten::_scaled_dot_product_"
    names = {e.name.removeprefix(prefix) for e in prof.events() if e.name.startswith(prefix)}
    return sorted(n for n in names if "backward" not in n)


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def parser() -> argparse.ArgumentParser:
    """This script's options (bench/sweep.py checks the ones it passes on against them)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.add_argument("--warmup", type=at_least(0), default=3)
    p.add_argument("--iters", type=at_least(1), default=10)
    p.add_argument("--rounds", type=at_least(1), default=6, help="alternate the two loops this many times")
    p.add_argument("--profile", type=at_least(0), default=0, help="then profile this many gptlab steps (0: no profile)")
    p.add_argument("--json", help="also write the results to this JSON file (bench/sweep.py reads it)")
    return p


def main() -> None:
    a = parser().parse_args()
    trainer = build_trainer(a)
    device, dist = trainer.device, trainer.dist

    plain_step, gptlab_step = make_steps(trainer, a.grad_accum)

    tokens = a.batch_size * a.block_size * a.grad_accum  # per rank
    launches_before = kernel_launches()
    start = time.perf_counter()  # the first step compiles (with --compile): regional compile's gain is here
    plain_step()
    _sync(device)
    first_step_s = time.perf_counter() - start
    results: dict[str, list[float]] = {"plain PyTorch": [], "gptlab train_step": []}
    interval = trainer.cfg.gradient_log_interval
    after_stats = lambda t=trainer: t.iter_num % interval == 1 % interval  # noqa: E731 (iter_num: the next step's)
    round_ratios = []  # paired: each round's gptlab mean step over the plain one's just before it
    for _ in range(a.rounds):  # alternate, so drift in machine load hits both alike
        # a round's mean step, not its median: the median left out the 1 step in 10 that computes gradient
        # statistics (gptlab's telemetry), whatever it cost
        plain_s = statistics.fmean(time_steps(plain_step, device, a.warmup, a.iters))
        gptlab_s = statistics.fmean(time_steps(gptlab_step, device, a.warmup, a.iters, after_stats))
        results["plain PyTorch"].append(plain_s)
        results["gptlab train_step"].append(gptlab_s)
        round_ratios.append(gptlab_s / plain_s)
    back_to_back = {  # once, after the rounds (all warm)
        "plain PyTorch": time_back_to_back(plain_step, device, a.iters),
        "gptlab train_step": time_back_to_back(gptlab_step, device, a.iters, after_stats),
    }
    kernels = sdpa_kernels(gptlab_step) if a.attention_backend == "sdpa" else []  # once, outside the timing
    loss_kernel_ran = kernel_launches() > launches_before  # counted launches: had, not only asked for
    flops = trainer.telemetry.flops_summary()["flops_per_token"]
    peak = trainer.telemetry.peak  # the MFU denominator, said with every result
    memory = trainer.telemetry.memory_stats()
    cuda_peak = memory.get("max_allocated_gb")
    peak_gb = cuda_peak if cuda_peak is not None else memory.get("max_rss_gb")  # the process's high-water mark
    planned_gb = trainer.telemetry.plan().mode.peak / 1e9  # the planner's prediction, for the same run
    if dist.master:
        print(
            f"model: {trainer.arch.get_architecture_name()}, {trainer.raw_model.get_num_params() / 1e6:.2f}M params, "
            f"{tokens} tokens/step per rank x {dist.world_size} ({trainer.mode}), device={device}, "
            f"dtype={trainer.dtype}, compile={a.compile} ({a.compile_mode}, {a.compile_scope}; first step "
            f"{first_step_s:.1f} s"
            + "".join(f", inductor {key}={value!r}" for key, value in a.inductor_config)
            + (" (no effect without --compile)" if a.inductor_config and not a.compile else "")
            + (f", residual stream in {trainer.dtype}" if trainer.raw_model.residual_cast else "")
            + f"), attention={a.attention_backend}"
            + (f" ({', '.join(kernels)})" if kernels else "")
            + ", "
            f"loss_chunk_size={a.loss_chunk_size}"
            + (f" ({'Triton kernel' if loss_kernel_ran else 'torch ops'})" if a.loss_chunk_size else "")
            + f", peak memory {peak_gb:.2f} GB "
            + ("(CUDA max allocated)" if cuda_peak is not None else "(process max RSS)")
            + f", planned {planned_gb:.2f} GB"
        )
        tflops = "none" if peak["peak_flops"] is None else f"{peak['peak_flops'] / 1e12:g} TFLOPS"
        print(f"MFU against {peak['name']}'s dense {peak['precision']} peak, {tflops} per device ({peak['source']}); "
              f"FLOPs/token {flops / 1e9:.4f} G (full-square attention, LM head in); torch {torch.__version__}, "
              f"Python {sys.version.split()[0]}")  # fmt: skip
        print(f"{'loop':20s} {'ms/step':>17s} {'tokens/s':>12s} {'achieved GFLOP/s':>17s} {'MFU':>7s}")
    medians, mfus = {}, {}
    for name, times in results.items():
        med = statistics.median(times)
        medians[name] = med
        mfus[name] = mfu = trainer.telemetry.mfu(med)["mfu"]
        mfu_text = _percent(mfu)
        if dist.master:
            rate = tokens * dist.world_size / med
            print(f"{name:20s} {1000 * med:17.2f} {rate:12,.0f} {flops * tokens / med / 1e9:17.2f} {mfu_text:>7s}")
    if dist.master:
        print("back to back (" + f"{a.iters} steps, one sync at the end, as training runs): " + ", ".join(
            f"{name} {1000 * sec:.2f} ms/step, MFU {_percent(trainer.telemetry.mfu(sec)['mfu'])}"
            for name, sec in back_to_back.items()
        ))  # fmt: skip
    # the headline: the median of the paired per-round ratios (each round's two loops run back to back), which
    # machine-load drift between rounds cannot tilt as it can the ratio of the medians over rounds
    ratio = statistics.median(round_ratios)
    pooled = medians["gptlab train_step"] / medians["plain PyTorch"]
    if a.json and dist.master:
        gptlab_s = medians["gptlab train_step"]
        record = {
            "params_m": trainer.raw_model.get_num_params() / 1e6,
            "ms_per_step": 1000 * gptlab_s,
            "plain_ms_per_step": 1000 * medians["plain PyTorch"],
            "ratio": ratio,
            "round_ratios": round_ratios,
            "pooled_ratio": pooled,  # of the ms/step columns (each the median over rounds of a round's mean)
            "tokens_per_s": tokens * dist.world_size / gptlab_s,
            "mfu": mfus["gptlab train_step"],
            "peak_gb": peak_gb,  # over both loops (same model and batches)
            "peak_kind": "cuda_max_allocated" if cuda_peak is not None else "process_max_rss",
            "planned_peak_gb": planned_gb,
            "first_step_s": first_step_s,  # compile included
            "mfu_causal": trainer.telemetry.mfu(gptlab_s)["mfu_causal"],
            "back_to_back_ms_per_step": 1000 * back_to_back["gptlab train_step"],
            "plain_back_to_back_ms_per_step": 1000 * back_to_back["plain PyTorch"],
            "back_to_back_mfu": trainer.telemetry.mfu(back_to_back["gptlab train_step"])["mfu"],
            "peak": peak,  # name, peak_flops (per device), precision, source: the MFU denominator
            "flops_per_token": flops,
            "sdpa_kernels": kernels,  # the attention kernel(s) a step ran
            "loss_kernel_ran": loss_kernel_ran,  # args.loss_kernel='triton' is asked, this is had (launches counted)
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "args": vars(a),  # preset, sizes, batch, dtype, compile settings: the run, whole
            "world_size": dist.world_size,
        }
        Path(a.json).write_text(json.dumps(record))
    if dist.master:
        stats = f"{a.iters // interval} in each round's {a.iters} gptlab steps, as training's 1 in {interval}" + (
            "" if a.iters % interval == 0 else f": make --iters a multiple of {interval} to count their share"
        )
        print(f"gptlab / plain step time: {ratio:.3f} (median of the per-round ratios of mean steps; gradient "
              f"statistics: {stats}); ms/step: median over rounds of a round's mean; tokens/s is the job's, GFLOP/s "
              "and MFU per device")  # fmt: skip
        if len(round_ratios) > 1:  # the spread says how far to trust the ratio on this machine
            print(f"per round: range {min(round_ratios):.3f}-{max(round_ratios):.3f} over {len(round_ratios)} rounds "
                  f"of {a.iters} steps each; ratio of the ms/step above: {pooled:.3f}")  # fmt: skip
            if max(round_ratios) > 1.25 * min(round_ratios):  # a loaded machine (4.998 from rounds of 0.059 and
                # 9.937, said as a ratio): one to trust is measured otherwise
                print(f"warning: the rounds disagree by {max(round_ratios) / min(round_ratios):.2f}x: the machine's "
                      "load changed under the timing; take more --rounds on an idle machine, OMP_NUM_THREADS=1, or "
                      "bench/step_instructions.py (instructions, which load does not move)")  # fmt: skip
    if a.profile:
        # start right after a gradient-statistics step, so the profiled steps are plain ones (as 9 in 10 are)
        while a.profile < interval and (
            trainer.iter_num % interval == 0 or trainer.iter_num % interval > interval - a.profile
        ):
            gptlab_step()
        if dist.master:
            profile_steps(gptlab_step, device, a.profile, Path(a.out_dir))
        else:
            for _ in range(a.profile):  # the other ranks take part in the collectives
                gptlab_step()
    # the models' cycles hold the process groups: freed first (as train())
    del trainer, plain_step, gptlab_step, after_stats
    gc.collect()
    parallel.shutdown(dist)


if __name__ == "__main__":
    from gptlab.train.cli import entry

    sys.exit(entry(lambda _argv: main() or 0))  # a user mistake is one line, exit 2
