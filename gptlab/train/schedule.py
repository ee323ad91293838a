"""Learning-rate schedules, as pure functions of the iteration (so a resumed run continues
the schedule exactly where it stopped)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from gptlab.config.train import TrainConfig


def get_lr(it: int, cfg: TrainConfig) -> float:
    """The learning rate at iteration ``it``: linear warmup, then the configured schedule.

    ``cosine`` is nanoGPT's: cosine from learning_rate to min_lr at lr_decay_iters, then min_lr.
    ``constant`` holds learning_rate after warmup. ``wsd`` (warmup-stable-decay) holds
    learning_rate, then decays linearly to min_lr over the last ``wsd_decay_frac`` of
    lr_decay_iters. ``decay_lr=False`` means learning_rate throughout, with no warmup (nanoGPT).
    """
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = wsd_decay_start(cfg)
        if it < decay_start:
            return cfg.learning_rate
        frac = (it - decay_start) / max(1, cfg.lr_decay_iters - decay_start)
        return cfg.learning_rate + frac * (cfg.min_lr - cfg.learning_rate)
    span = cfg.lr_decay_iters - cfg.warmup_iters
    ratio = (it - cfg.warmup_iters) / span if span > 0 else 1.0
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def wsd_decay_start(cfg: TrainConfig) -> int:
    """Where ``wsd`` starts decaying: the last ``wsd_decay_frac`` of lr_decay_iters, but never inside the warmup
    (a short run that kept the default 2000-iteration warmup): the decay is then shortened, as torchtitan's
    WSD shortens it, rather than cutting the rate in half at the warmup's end."""
    return max(cfg.warmup_iters, cfg.lr_decay_iters - int(cfg.wsd_decay_frac * cfg.lr_decay_iters))


def schedule_cut(cfg: TrainConfig, typed: Iterable[str]) -> str | None:
    """What a run's end leaves of its schedule, where a key not typed on the command line cuts it: a
    ``--max_iters=2000`` on a file made for 600000 iterations (nanoGPT's train_gpt2.py: its 2000-iteration
    warmup and 600000-iteration decay) trains at a rising, then nearly constant rate, without a word."""
    typed = frozenset(typed)
    end = cfg.max_iters
    if not cfg.decay_lr or cfg.eval_only:
        return None
    if end < cfg.warmup_iters and "warmup_iters" not in typed:
        return (
            f"max_iters={end} ends inside the warmup (warmup_iters={cfg.warmup_iters}): the learning rate reaches "
            f"{get_lr(end, cfg):.3g}, not learning_rate={cfg.learning_rate:g}; set --warmup_iters for this run's length"
        )
    if cfg.lr_schedule != "constant" and end < cfg.lr_decay_iters and "max_iters" in typed:
        if "lr_decay_iters" in typed:
            return None
        return (
            f"max_iters={end} stops the {cfg.lr_schedule} decay {end / cfg.lr_decay_iters:.0%} of the way to "
            f"lr_decay_iters={cfg.lr_decay_iters}: the learning rate ends at {get_lr(end, cfg):.3g}, not "
            f"min_lr={cfg.min_lr:g}; add --lr_decay_iters={end} to decay over the run (nanoGPT's configs set the two "
            "equal)"
        )
    return None
