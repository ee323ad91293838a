"""The cost of telemetry in the training step: gradient statistics every step, at the default
interval, and never, measured in one run on the same model and batches (alternating rounds so
machine drift hits all variants alike); then a logged step's host work after its sync (the JSON
record, the console line, MFU, memory; with and without TensorBoard), which the device waits for.

python bench/telemetry_overhead.py                      # small llama-style model on the CPU
python bench/telemetry_overhead.py --device cuda --dtype bfloat16 --n_layer 12 --n_embd 768 --n_head 12 \\
    --block_size 1024 --batch_size 8
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import statistics
import time

import torch
from common import (  # bench/common.py (scripts run from bench/ or by path)
    add_run_args,
    at_least,
    build_trainer,
    statistics_read_a_step_late,
)

from gptlab import parallel
from gptlab.config.train import TrainConfig
from gptlab.train.loop import Trainer

NEVER = 10**9  # a gradient_log_interval that never fires within the benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.add_argument("--iters", type=at_least(1), default=30, help="steps per variant per round")
    p.add_argument("--rounds", type=at_least(1), default=4)
    p.add_argument("--logged_steps", type=at_least(1), default=20, help="logged steps timed per logger variant")
    a = p.parse_args()
    default_interval = TrainConfig.__dataclass_fields__["gradient_log_interval"].default
    trainer = build_trainer(a)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    variants = {"never": NEVER, f"every {default_interval} (default)": default_interval, "every step": 1}
    times: dict[str, list[float]] = {name: [] for name in variants}  # each round's mean step
    for _ in range(3):  # warm-up
        trainer.train_step()
    trainer.iter_num = 1  # not 0: every interval, NEVER's included, fires at iteration 0
    for r in range(a.rounds):
        order = [*variants][r % len(variants) :] + [*variants][: r % len(variants)]  # drift hits none alone
        for name in order:
            interval = variants[name]
            trainer.cfg.gradient_log_interval = interval
            steps, read_late = [], statistics_read_a_step_late(trainer)
            for _ in range(a.iters):
                sync()
                t0 = time.perf_counter()
                read_late(trainer.train_step())
                sync()
                steps.append(time.perf_counter() - t0)
                trainer.iter_num += 1
            # the mean: a median of single steps leaves out the 1 in 10 that computes the statistics
            times[name].append(statistics.fmean(steps))
    # The call itself, timed alone on real gradients: precise where step-time noise is not.
    x, y = trainer.train_loader.get_batch(0)
    trainer.forward_backward(0, x, y)
    calls = []
    for _ in range(50):
        sync()
        t0 = time.perf_counter()
        trainer.telemetry.gradient_stats()
        sync()
        calls.append(time.perf_counter() - t0)
    trainer.optimizer.zero_grad(set_to_none=True)
    logged = {name: _logged_step_cost(trainer, a.logged_steps, tensorboard) for name, tensorboard in LOGGERS.items()}
    base = statistics.median(times["never"])
    header = (
        f"model: {trainer.arch.get_architecture_name()}, {trainer.raw_model.get_num_params() / 1e6:.2f}M params, "
        f"device={trainer.device}, dtype={trainer.dtype}, {a.rounds}x{a.iters} steps per variant"
    )
    dist = trainer.dist
    del trainer, read_late  # the model's cycles hold the process groups: freed first (as train())
    gc.collect()
    parallel.shutdown(dist)
    if not dist.master:  # under torchrun: rank 0's table alone, as train_step.py prints
        return
    print(header + (f", rank 0 of {dist.world_size}" if dist.world_size > 1 else ""))
    print(f"{'gradient statistics':24s} {'ms/step':>17s} {'vs never':>9s}   (median over rounds of a round's mean)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24s} {1000 * med:17.2f} {med / base:9.3f}")
    call = statistics.median(calls)
    print(
        f"one gradient statistics call read at once (a sync; the loop reads them a step later): {1000 * call:.3f} ms = "
        f"{100 * call / base:.2f}% of a step; "
        f"at the default interval {100 * call / base / default_interval:.3f}% per step"
    )
    print(
        f"{'a logged step':30s} {'host ms':>11s} {'% per step, log_interval=1':>27s} {'=10':>6s}   (median of "
        f"{a.logged_steps}: after the loss's sync, while the device waits; nanoGPT's loop prints the loss there)"
    )
    for name, cost in logged.items():
        print(f"{name:30s} {1000 * cost:11.3f} {100 * cost / base:27.2f} {10 * cost / base:6.2f}")


# A logged iteration's host work (Trainer.log_iteration: gradient statistics, MFU, memory, the JSON record, the
# console line), written to a scratch folder, without and with TensorBoard's event file.
LOGGERS = {"JSON + console": False, "JSON + console + TensorBoard": True}
if importlib.util.find_spec("tensorboard") is None:  # (the tensorboard extra)
    del LOGGERS["JSON + console + TensorBoard"]


def _logged_step_cost(trainer: Trainer, steps: int, tensorboard: bool) -> float:
    """Median seconds of ``Trainer.log_iteration`` over ``steps`` real steps, statistics computed at each (the
    default interval's logged step), logging to a temporary run folder as train.py logs."""
    if not trainer.dist.master:  # rank 0 writes the records; the others' logging is a no-op
        return 0.0
    import tempfile

    from gptlab.logging import TrainingLogger

    kept = trainer.logger, trainer.gradient_stats, trainer.scale_drops, trainer.cfg.gradient_log_interval
    costs = []
    with tempfile.TemporaryDirectory() as folder:
        trainer.attach_logger(
            TrainingLogger(folder, style=trainer.cfg.log_style, stream=io.StringIO(), tensorboard=tensorboard)
        )
        trainer.cfg.gradient_log_interval = 1
        try:
            for _ in range(steps + 2):  # the logger's first records (its warm-up) left out
                step = trainer.train_step()
                if step["grad_stats"] is not None:
                    trainer.gradient_stats.add(trainer.iter_num, step["grad_stats"])
                lossf = step["loss"].item()  # the sync every logged step makes, nanoGPT's too: not telemetry's
                t0 = time.perf_counter()
                trainer.log_iteration(step, lossf, dt=1.0, timed_steps=1)
                costs.append(time.perf_counter() - t0)
                trainer.iter_num += 1
        finally:
            trainer.logger.close()
            trainer.logger, trainer.gradient_stats, trainer.scale_drops, trainer.cfg.gradient_log_interval = kept
    return statistics.median(costs[2:])


if __name__ == "__main__":
    import sys

    from gptlab.train.cli import entry

    sys.exit(entry(lambda _argv: main() or 0))  # a user mistake is one line, exit 2
