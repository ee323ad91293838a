"""Sampling from a trained checkpoint (``gptlab sample`` and the root ``sample.py``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.config.model import check_field_types
from gptlab.config.overrides import parse_overrides
from gptlab.errors import CheckpointError, ConfigError, did_you_mean


@dataclass
class SampleConfig:
    """nanoGPT's sample.py settings."""

    init_from: str = "resume"  # 'resume' (out_dir/ckpt.pt), a local HF dir / ckpt.pt, a Hub name (gpt2-xl)
    out_dir: str = "out"
    start: str = "\n"  # or "FILE:prompt.txt"
    num_samples: int = 3
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    seed: int = 1337
    device: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.num_samples <= 0 or self.max_new_tokens < 0:
            raise ConfigError("num_samples must be > 0 and max_new_tokens >= 0")
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} is invalid: expected a float >= 0 (0 is greedy)")
        if self.top_k is not None and self.top_k <= 0:
            raise ConfigError(f"top_k={self.top_k} is invalid: expected a positive integer or None")


def parse_sample_args(args: list[str]) -> SampleConfig:
    """``[CONFIG_FILE ...] [--key=value ...]`` as nanoGPT's sample.py. A config file runs (so the
    components it registers exist) and gives its sample keys; a training file's other keys, and its
    ``init_from`` unless a checkpoint or Hub name, are the training's and left out."""
    from gptlab.config.train import load_config_file, split_args

    fields = [f.name for f in dataclasses.fields(SampleConfig)]
    files, overrides = split_args(args)
    values: dict[str, Any] = {}
    for path in files:
        from_file = load_config_file(path, keys=fields)
        if from_file.get("init_from") == "scratch":
            del from_file["init_from"]
        values.update({k: v for k, v in from_file.items() if k in fields})
    values.update(parse_overrides(overrides))
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown sample key {key!r}{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}")
    return SampleConfig(**values)


def load_model_for_sampling(cfg: SampleConfig, device: torch.device) -> tuple[Any, dict[str, Any] | None]:
    """The model and the tokenizer meta recorded with it (None for foreign checkpoints)."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.model.convert import model_from_checkpoint
    from gptlab.model.gpt import ConfigurableGPT

    ckpt = load_checkpoint(Path(cfg.out_dir)) if cfg.init_from == "resume" else _gptlab_checkpoint(cfg.init_from)
    if ckpt is not None:  # this run's or another gptlab run's: it records its tokenizer
        model = model_from_checkpoint(ckpt, dropout=0.0)
        tokenizer = ckpt.get("tokenizer")
    else:
        model = ConfigurableGPT.from_pretrained(cfg.init_from, dropout=0.0)
        # Foreign checkpoints record no tokenizer: GPT-2's vocabulary (nanoGPT's too) is the one we know.
        tokenizer = {"name": "gpt2"} if model.config.vocab_size in (50257, 50304) else None
    return model.eval().to(device), tokenizer


def _gptlab_checkpoint(init_from: str) -> dict[str, Any] | None:
    """The gptlab checkpoint ``init_from`` names (a ckpt.pt, DCP or run directory), else None."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.model.convert import gptlab_checkpoint_path

    path = Path(init_from).expanduser()
    found = gptlab_checkpoint_path(path) if path.exists() else None
    if found is None:
        return None
    try:
        return load_checkpoint(found)
    except CheckpointError:  # nanoGPT's ckpt.pt, or unreadable: from_pretrained says which
        return None


def generate_text(
    model: Any,
    tokenizer_meta: dict[str, Any] | None,
    prompt: str,
    max_new_tokens: int,
    *,
    device: torch.device,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 1337,
) -> str:
    """Encode ``prompt``, sample, decode; the model's train/eval mode is restored afterwards."""
    from gptlab.data.tokenizers import load_tokenizer

    if tokenizer_meta is None:
        raise CheckpointError("the checkpoint records no tokenizer, so its tokens cannot be decoded")
    tok = load_tokenizer(tokenizer_meta)
    ids = tok.encode(prompt) or [0]
    x = torch.tensor([ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    gen = torch.random.fork_rng(devices=[]) if device.type != "cuda" else torch.random.fork_rng()
    # A model compiled for training runs eagerly here: decoding grows the sequence a token at a time, which
    # would recompile for dynamic shapes and, under CUDA-graph modes, record one graph per length.
    with gen, torch.compiler.set_stance("force_eager"):
        torch.manual_seed(seed)
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, vocab_limit=tok.vocab_size)
    model.train(was_training)
    return tok.decode(y[0].tolist())


def sample(cfg: SampleConfig) -> list[str]:
    from gptlab.train.loop import resolve_device

    device = resolve_device(cfg.device)
    model, tokenizer = load_model_for_sampling(cfg, device)
    prompt = cfg.start
    if prompt.startswith("FILE:"):
        prompt = Path(prompt[5:]).read_text()
    return [
        generate_text(
            model,
            tokenizer,
            prompt,
            cfg.max_new_tokens,
            device=device,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            seed=cfg.seed + i,
        )
        for i in range(cfg.num_samples)
    ]
