"""Batches per second of the data loader, to show it is not the training bottleneck.

python bench/dataloader.py [--dataset stdlib_char] [--batch_size 12] [--block_size 64,256,1024]
"""

from __future__ import annotations

import argparse
import time

from common import at_least, int_list, prepared_dataset  # bench/common.py (scripts run from bench/ or by path)

from gptlab.data.loader import BatchLoader
from gptlab.device import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="stdlib_char")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--batch_size", type=at_least(1), default=12)
    p.add_argument("--block_size", type=int_list, default="64,256,1024")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=2.0)
    a = p.parse_args()
    if not a.seconds > 0:
        p.error(f"--seconds={a.seconds} must be > 0")
    device = resolve_device(a.device)  # one line for a device that is not here (or misspelt), not torch's error
    path = prepared_dataset(a.dataset, a.data_dir)
    print(f"{'dataset':14s} {'B':>4s} {'T':>6s} {'batches/s':>11s} {'tokens/s':>14s} {'us/batch':>9s}")
    for block in a.block_size:
        loader = BatchLoader(path, "train", a.batch_size, block, device=device, seed=0)
        loader.get_batch(0)  # warm-up
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < a.seconds:  # one batch at least, however short the time
            loader.get_batch(n)
            n += 1
        dt = time.perf_counter() - t0
        rate = n / dt
        print(
            f"{a.dataset:14s} {a.batch_size:4d} {block:6d} {rate:11,.0f} {rate * a.batch_size * block:14,.0f} "
            f"{1e6 / rate:9.1f}"
        )


if __name__ == "__main__":
    import sys

    from gptlab.train.cli import entry

    sys.exit(entry(lambda _argv: main() or 0))  # a user mistake is one line, exit 2
