"""A grid of bench/train_step.py runs, one fresh process each, summarised in one table: presets and
sizes, dtype, compile on/off, attention backend, chunked loss, batch and sequence length.

python bench/sweep.py --grid preset=gpt2,llama --grid attention_backend=sdpa,manual --iters 5 --rounds 1
python bench/sweep.py --grid compile=off,on --grid batch_size=8,16 --device cuda --dtype bfloat16 \\
    --preset gpt2 --n_layer 12 --n_embd 768 --n_head 12 --block_size 1024 --vocab_size 50304
python bench/sweep.py --grid sdpa_backend=auto,flash --grid residual_dtype=auto,bfloat16 --device cuda \\
    --dtype bfloat16 --compile --batch_size 64 --preset gpt2 --n_layer 12 --n_embd 768 --n_head 12 \\
    --block_size 1024 --vocab_size 50304
Every argument that is not --grid goes to each train_step run unchanged; a grid key is any
train_step flag (compile takes on/off; leave --compile out of the shared arguments then) or any
other training or architecture key, passed as train_step's --set KEY=VALUE. Exit status 1 when a
combination failed (its row says so, its reason follows the table).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = Path(__file__).with_name("train_step.py")
SWITCHES = {"compile"}  # store_true flags of train_step: on/off in a grid
STATISTICS_INTERVAL = 10  # common.build_trainer's gradient_log_interval (training's default)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['preset=gpt2,llama', ...] -> {'preset': ['gpt2', 'llama'], ...}, in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[key] = values.split(",")
    return grid


def step_parser() -> argparse.ArgumentParser:
    """train_step's parser (bench/common.py's options and its timing ones)."""
    sys.path.insert(0, str(STEP.parent))
    from train_step import parser

    return parser()


def step_options(p: argparse.ArgumentParser) -> set[str]:
    """train_step's own flags: any other grid key goes by --set."""
    return {s.removeprefix("--") for action in p._actions for s in action.option_strings}


def flags(key: str, value: str, options: set[str]) -> list[str]:
    if key in SWITCHES:
        if value not in ("on", "off"):
            raise ValueError(f"--grid {key}={value!r}: expected on or off")
        return [f"--{key}"] if value == "on" else []
    if key in options:
        return [f"--{key}", value]
    from gptlab.config.train import ALL_KEYS
    from gptlab.errors import did_you_mean

    if key not in ALL_KEYS:  # refused before the first run, not as a failed row per combination
        known = sorted({*options, *ALL_KEYS})
        raise ValueError(
            f"--grid {key}=...: {key!r} is neither a train_step option nor a config key{did_you_mean(key, known)}"
        )
    return ["--set", f"{key}={value}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable)")
    a, rest = p.parse_known_args()
    step = step_parser()
    step.prog = f"{p.prog} (passing on to train_step.py)"
    step.parse_args(rest)  # a mistyped option: one line and exit 2 now, not a failed row per combination
    options = step_options(step)
    try:  # argparse's one line and exit 2, as for its own errors
        grid = parse_grid(a.grid)
        for key, values in grid.items():
            for value in values:
                flags(key, value, options)
    except ValueError as e:
        p.error(str(e))
    if not grid:
        p.error("give at least one --grid KEY=V1,V2,...")
    for switch in SWITCHES & set(grid):  # both rows would compile, labelled off and on
        if f"--{switch}" in rest:
            p.error(f"--{switch} is a grid key here (--grid {switch}=off,on): leave it out of the shared arguments")
    uncounted = ""  # with --iters below the statistics interval no timed step computes them: said under the table
    if (iters := step.parse_args(rest).iters) % STATISTICS_INTERVAL:
        uncounted = (
            f"note: --iters {iters} is no multiple of the gradient statistics interval ({STATISTICS_INTERVAL}): "
            "their steps' share is not in the timed rounds (train_step.py says so per run)"
        )
    header = [*grid, "params (M)", "ms/step", "tokens/s", "MFU", "peak GB", "vs plain"]
    rows: list[list[str]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, combo in enumerate(itertools.product(*grid.values())):
            out = Path(tmp) / f"{i}.json"
            args = [arg for key, value in zip(grid, combo) for arg in flags(key, value, options)]
            cmd = [sys.executable, str(STEP), *rest, *args, "--json", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                failures.append(f"{' '.join(combo)}: " + (res.stderr.strip().splitlines() or ["?"])[-1])
                rows.append([*combo, "failed", "", "", "", "", ""])
                continue
            r = json.loads(out.read_text())
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            rows.append([*combo, f"{r['params_m']:.2f}", f"{r['ms_per_step']:.2f}", f"{r['tokens_per_s']:,.0f}",
                         mfu, f"{r['peak_gb']:.2f}", f"{r['ratio']:.3f}"])  # fmt: skip
            print(" ".join(combo), "done", file=sys.stderr)
    widths = [max(len(str(x)) for x in col) for col in itertools.zip_longest(header, *rows, fillvalue="")]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    print("ms/step, tokens/s, MFU: gptlab's train_step (median); vs plain: its time over the plain PyTorch loop's; "
          "peak GB: CUDA max allocated on a GPU, process RSS on a CPU")  # fmt: skip
    if uncounted:
        print(uncounted)
    for failure in failures:
        print(f"failed: {failure}")
    return 1 if failures else 0  # a script running the sweep sees that a combination failed


if __name__ == "__main__":
    sys.exit(main())
