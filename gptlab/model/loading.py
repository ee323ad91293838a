"""What every weights format shares: reading a torch file safely (weights_only, its CRCs checked), renaming a
format's parameter names to gptlab's, and building a model strictly from a state dict in gptlab's names (every
tensor's name, shape and kind checked against the architecture before memory is taken). Tensors are copied,
never re-derived, so logits match the source implementation to float rounding."""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gptlab.checkpoint import (
    check_zip_crc,
    cut_short,
    layer_count,
    pickled,
    refused_as_unsafe,
    unsafe_checkpoint_error,
    weights_disagree,
)
from gptlab.config.model import ARCH_FIELDS, FREE_ARCH_KEYS, ModelArchitectureConfig, get_preset_config
from gptlab.errors import CheckpointError, ConfigError, did_you_mean, first_line
from gptlab.model.gpt import ConfigurableGPT

# what a path or name may be (a command's init_from), and what from_pretrained also takes from Python
EXPECTED = (
    "a gptlab run directory or checkpoint (ckpt.pt, ckpt-ITER.dcp), a Hugging Face GPT-2 or LLaMA model directory "
    "(config.json + *.safetensors or pytorch_model.bin) or Hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
    "org/name), or a nanoGPT ckpt.pt (or a directory holding one)"
)


EXPECTED_OBJECT = (
    f"{EXPECTED}; or an in-memory transformers GPT2LMHeadModel / LlamaForCausalLM, nanoGPT GPT or ConfigurableGPT"
)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}): expected a Hugging Face config.json") from None


def read_torch_checkpoint(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` with weights_only=True (``mmap``: tensors read only when used, for a look at the
    keys; otherwise the weights are to be used, and a zip archive's CRCs are checked first); one
    CheckpointError line when it cannot."""
    if not mmap and zipfile.is_zipfile(path):  # a legacy (pre-1.6) torch file has no CRCs to check
        check_zip_crc(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except MemoryError:
        raise  # not the file's fault
    except Exception as e:  # corrupt, truncated, not a torch file at all, or not readable (OSError)
        if refused_as_unsafe(e, path):
            raise unsafe_checkpoint_error(path) from None
        reason = first_line(e) if pickled(path) else "not a torch.save file"
        if cut_short(path):
            reason = "a torch.save archive cut short: truncated, a partial download or copy"
        if path.name == "config.json":  # a Hugging Face model's: its folder holds the weights too
            reason = f"a model's config.json: pass its folder, {str(path.parent)!r}"
        raise CheckpointError(
            f"{str(path)!r} could not be read as a checkpoint ({reason}): expected {EXPECTED}"
        ) from None


def build_model(
    config: ModelArchitectureConfig,
    state: dict[str, Tensor],
    source: str,
    file_name: Callable[[str], str] = str,
) -> ConfigurableGPT:
    """Instantiate and load ``state`` strictly: every tensor must land, with its shape. ``file_name`` gives a
    gptlab parameter's name as the source's file spells it, for the errors (a user looks it up there)."""
    head, embedding = state.get("lm_head.weight"), state.get("wte.weight")
    if config.weight_tying and head is not None and embedding is not None and not torch.equal(head, embedding):
        # tied in the config, two different matrices in the file: transformers then leaves them untied
        warnings.warn(
            f"{source}: weights are tied in the config but the file holds a different lm_head.weight; "
            "loaded untied, as transformers 5 does",
            stacklevel=3,
        )
        config = dataclasses.replace(config, weight_tying=False)
    # the sizes a config names are checked against the file before anything is built: a crafted config.json
    # (10**9 layers, a 10**10 vocabulary) would otherwise hang or fill memory first
    expected = (config.vocab_size, config.n_embd)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    disagreement = weights_disagree(config.n_layer, expected, shapes)
    if disagreement == "layers":
        raise CheckpointError(
            f"{source}: the config says {config.n_layer} layers, the weights hold {layer_count(state)}"
        )
    if disagreement == "embedding":
        found = "missing" if embedding is None else f"of shape {tuple(embedding.shape)}"
        raise CheckpointError(
            f"{source}: the token embedding (wte.weight) is {found}; the config says shape {expected}"
        )
    with torch.device("meta"):  # the structure only: shapes to compare, no memory, no random init
        own = ConfigurableGPT(config).state_dict()
    if config.weight_tying:
        state.setdefault("lm_head.weight", embedding)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        missing_some, unexpected_some = _some(missing, file_name), _some(unexpected, file_name)
        raise CheckpointError(
            f"{source}: weights do not fit the architecture (missing {missing_some}, unexpected {unexpected_some})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            shapes = f"has shape {tuple(tensor.shape)}, expected {tuple(own[key].shape)}"
            named = key if file_name(key) == key else f"{file_name(key)} (in gptlab's layout, {key})"
            raise CheckpointError(f"{source}: {named} {shapes}")
        if tensor.is_floating_point() != own[key].is_floating_point():
            raise CheckpointError(f"{source}: {file_name(key)} holds {tensor.dtype} values, expected {own[key].dtype}")
    # checked: now the real model, built as training builds it (a registered component's non-persistent
    # buffers are computed in its __init__, which no state dict or init_buffers() would restore), then loaded
    model = ConfigurableGPT(config, init_weights=False)  # every weight is loaded next (strict): none drawn
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model.eval()  # as transformers' from_pretrained does; training code calls .train()


# What may be overridden on load: options that leave what the weights compute unchanged (how attention
# is run, regularisation, how fresh weights would be drawn). Everything else is fixed by the weights:
# an activation, a norm eps or a RoPE theta would change the outputs as surely as a width.
OVERRIDABLE_ON_LOAD = frozenset({*FREE_ARCH_KEYS, "init_std", "scaled_residual_init"})


def _some(keys: list[str], file_name: Callable[[str], str], shown: int = 4) -> str:
    """The first ``shown`` of ``keys`` by their file names, and how many more."""
    names = [file_name(k) for k in keys[:shown]]
    return f"{names}" + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")


def check_overridable(overrides: dict[str, Any]) -> None:
    clash = sorted(set(overrides) - OVERRIDABLE_ON_LOAD)
    if clash and clash[0] not in ARCH_FIELDS:  # a misspelt key is no key the weights fix
        raise ConfigError(
            f"unknown architecture key {clash[0]!r}{did_you_mean(clash[0], sorted(OVERRIDABLE_ON_LOAD))}; only "
            f"{', '.join(sorted(OVERRIDABLE_ON_LOAD))} may be overridden when loading pretrained weights"
        )
    if clash:
        raise ConfigError(
            f"{clash[0]} cannot be overridden when loading pretrained weights (the weights fix it; only "
            f"{', '.join(sorted(OVERRIDABLE_ON_LOAD))} may be)"
        )


def arch_with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> ModelArchitectureConfig:
    check_overridable(overrides)
    return get_preset_config(base.pop("preset"), **{**base, **overrides})


def rename_keys(state: dict[str, Tensor], table: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Rename keys by (old, new) pairs: a pattern starting with '.' is replaced anywhere, any
    other pattern only as the key's prefix."""
    out = {}
    for key, value in state.items():
        for old, new in table:
            if old.startswith("."):
                key = key.replace(old, new)
            elif key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def reversed_names(table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(new, old) for old, new in table]
