"""gptlab's step against the plain-PyTorch loop in instructions executed, not seconds: a count that
does not move with the machine's load, where a timed ratio on a shared 2-core machine swings by
5-20% a round (docs/benchmarks.md). Each loop runs in its own process under valgrind's cachegrind
(one thread, fixed hash seed), once with WARMUP steps and once with WARMUP + STEPS; the difference
over STEPS is the count per step, with imports, model building and warm-up subtracted out.

python bench/step_instructions.py --n_layer 2 --batch_size 4 --warmup 2   # about 20 minutes on 2 cores
python bench/step_instructions.py                       # the train_step.py model (4 x 128, batch 16): an hour or more

Needs valgrind (Debian's package). Counts are per step, all micro-steps included; with the default
gradient_log_interval=10, STEPS a multiple of 10 holds the same share of statistics steps as training.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (  # bench/common.py: run from bench/ or by path
    add_run_args,
    at_least,
    build_trainer,
    make_steps,
    prepared_dataset,
)


def run_flags(a: argparse.Namespace) -> list[str]:
    """Every ``add_run_args`` setting of this run, for the workers (the driver sets their out_dir)."""
    p = argparse.ArgumentParser()
    add_run_args(p)
    names = [k for k in vars(p.parse_args([])) if k not in ("out_dir", "compile")]  # compile: refused above
    flags = []
    for name in names:
        value = getattr(a, name)
        if name == "inductor_config":  # repeatable: one flag per (key, value), spelt as typed
            flags += [f"--{name}={key}={setting!r}" for key, setting in value]
        elif isinstance(value, list):  # --set KEY=VALUE ...
            flags += [f"--{name}={item}" for item in value]
        elif value is not None:
            flags.append(f"--{name}={value}")
    return flags


def worker(a: argparse.Namespace) -> None:
    """Build the trainer and run ``a.run`` steps of one loop, nothing else."""
    import torch

    torch.set_num_threads(1)  # threads' spin-waits would make the count vary
    trainer = build_trainer(a)
    plain_step, gptlab_step = make_steps(trainer, a.grad_accum)
    step = plain_step if a.loop == "plain" else gptlab_step
    for _ in range(a.run):
        step()


def cachegrind_count(cmd: list[str], out: Path) -> int:
    """Instructions ``cmd`` executes, counted by cachegrind (no cache simulation: just the count)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    full = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", *cmd]
    proc = subprocess.run(full, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(full)}\n{proc.stderr[-3000:]}")
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no instruction count in {out}")
    return int(match.group(1))


def count_instructions(a: argparse.Namespace, loop: str, steps: int, work: Path) -> int:
    """Instructions executed by a worker process running ``steps`` steps of ``loop``."""
    flags = run_flags(a)
    out_dir = work / f"{loop}-{steps}"
    worker = [sys.executable, __file__, "--worker", f"--loop={loop}", f"--run={steps}", f"--out_dir={out_dir}"]
    return cachegrind_count([*worker, *flags], work / f"cachegrind.{loop}.{steps}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.add_argument(
        "--warmup", type=at_least(0), default=3, help="steps run in both processes of a loop (subtracted out)"
    )
    p.add_argument("--steps", type=at_least(1), default=10, help="steps counted per loop")
    p.add_argument("--jobs", type=at_least(1), default=2, help="worker processes at a time (one core each)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=("plain", "gptlab"), help=argparse.SUPPRESS)
    p.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.device != "cpu" or a.compile:
        p.error("instruction counts are for eager CPU runs: leave --device and --compile at their defaults")
    if shutil.which("valgrind") is None:
        p.error("valgrind not found (Debian: apt-get install valgrind)")
    from concurrent.futures import ThreadPoolExecutor

    prepared_dataset(a.dataset, a.data_dir)  # once, before workers that would race to prepare it
    runs = [(loop, n) for loop in ("plain", "gptlab") for n in (a.warmup, a.warmup + a.steps)]
    with tempfile.TemporaryDirectory(prefix="gptlab-instr-") as tmp, ThreadPoolExecutor(a.jobs) as pool:
        work = Path(tmp)  # the counts do not depend on what else runs, so the workers may share the cores
        counts = dict(zip(runs, pool.map(lambda run: count_instructions(a, *run, work), runs)))
    per_step = {}
    for loop in ("plain", "gptlab"):
        base, total = counts[loop, a.warmup], counts[loop, a.warmup + a.steps]
        per_step[loop] = (total - base) / a.steps
        print(f"{loop:8s} {a.warmup} steps: {base:,} instr; {a.warmup + a.steps} steps: {total:,}; "
              f"per step {per_step[loop]:,.0f}")  # fmt: skip
    print(f"model: {a.preset} {a.n_layer} x {a.n_embd}, block {a.block_size}, batch {a.batch_size} x {a.grad_accum}")
    print(f"gptlab / plain instructions per step: {per_step['gptlab'] / per_step['plain']:.4f} "
          f"({per_step['gptlab'] - per_step['plain']:+,.0f} per step)")  # fmt: skip


if __name__ == "__main__":
    main()
