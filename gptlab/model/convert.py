"""Weights in and out: Hugging Face GPT-2 / LLaMA and nanoGPT checkpoints.

This module plays the design document's "legacy GPT-2 model.py" role: nanoGPT checkpoints
load into the ``gpt2`` preset here instead of through a second model implementation.
Each format is a mapping between its parameter names and ours; tensors are copied, never
re-derived, so logits match the reference implementation to float rounding.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gptlab.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    check_zip_crc,
    clean_state_dict,
    cut_short,
    is_dcp_dir,
    latest_checkpoint,
    layer_count,
    load_checkpoint,
    pickled,
    read_checkpoint_record,
    refused_as_unsafe,
    unsafe_checkpoint_error,
    weights_disagree,
)
from gptlab.config.model import FREE_ARCH_KEYS, ModelArchitectureConfig, get_preset_config
from gptlab.errors import CheckpointError, ConfigError, did_you_mean, first_line
from gptlab.fileio import atomic_write
from gptlab.model.gpt import ConfigurableGPT
from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY, is_builtin

GPT2_EOT_ID = 50256  # GPT-2 BPE's <|endoftext|>
HF_SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
SUPPORTED_HF = ("gpt2", "llama")
# what a path or name may be (a command's init_from), and what from_pretrained also takes from Python
EXPECTED = (
    "a gptlab run directory or checkpoint (ckpt.pt, ckpt-ITER.dcp), a Hugging Face GPT-2 or LLaMA model directory "
    "(config.json + *.safetensors or pytorch_model.bin) or Hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
    "org/name), or a nanoGPT ckpt.pt (or a directory holding one)"
)
EXPECTED_OBJECT = (
    f"{EXPECTED}; or an in-memory transformers GPT2LMHeadModel / LlamaForCausalLM, nanoGPT GPT or ConfigurableGPT"
)
# nanoGPT's init_from names for OpenAI's GPT-2 checkpoints, and where they live on the Hub
NANOGPT_HUB_NAMES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# transformers' own file names, top level only (fnmatch's * also crosses '/': "*.safetensors" would fetch
# a repository's onnx/ or original/ copies too)
HUB_WEIGHTS = (
    ["model*.safetensors", "model.safetensors.index.json"],
    ["pytorch_model*.bin", "pytorch_model.bin.index.json"],
)


# ---------------------------------------------------------------------------- loading


def hub_repo_id(name: str) -> str | None:
    """The Hugging Face Hub repository ``name`` means (nanoGPT's ``gpt2-xl`` or ``org/name``), else None."""
    if name.lower() in NANOGPT_HUB_NAMES:
        return NANOGPT_HUB_NAMES[name.lower()]
    is_file_name = Path(name).suffix in (".pt", ".pth", ".bin", ".safetensors", ".json", ".dcp")
    return name if HUB_REPO_ID.fullmatch(name) and not is_file_name else None


def download_hub_model(repo_id: str) -> Path:
    """A Hub model's config.json and weights (safetensors, else pytorch_model*.bin) as a local
    directory: Hugging Face's cache, filled on first use; with HF_HUB_OFFLINE=1 only the cache is read."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"downloading {repo_id!r} needs huggingface_hub: pip install 'gptlab[hf]'") from None
    path = None
    for weights in HUB_WEIGHTS:
        try:
            path = Path(snapshot_download(repo_id, allow_patterns=["config.json", *weights]))
        except Exception as e:  # offline, not found, gated: one line and the ways out
            from huggingface_hub import constants

            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if constants.HF_HUB_OFFLINE:
                way_out = f"HF_HUB_OFFLINE is set and it is not in Hugging Face's cache ({constants.HF_HUB_CACHE})"
            else:
                way_out = "with no network, HF_HUB_OFFLINE=1 reads Hugging Face's cache"
            raise CheckpointError(
                f"cannot get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {first}); "
                f"{way_out}; or pass an existing local path"
            ) from None
        if any(path.glob(weights[0])):
            return path
    return path  # type: ignore[return-value]  # no weights: _read_hf_weights says so


def check_init_source(init_from: str, keywords: tuple[str, ...]) -> None:
    """A command's ``init_from`` that is none of its ``keywords`` ('scratch', 'resume'), no existing path and
    no Hub name is one ConfigError naming the key, with the nearest of them (a typo's 'resum', 'gpt-2')."""
    if init_from in keywords or Path(init_from).expanduser().exists() or hub_repo_id(init_from) is not None:
        return
    named = ", ".join(repr(k) for k in keywords)
    raise ConfigError(
        f"init_from={init_from!r} is neither {named}, an existing local checkpoint path nor a Hugging Face Hub "
        "model (gpt2, gpt2-medium, gpt2-large, gpt2-xl, org/name)"
        + did_you_mean(init_from, [*keywords, *NANOGPT_HUB_NAMES])
    )


def resolve_pretrained(src: str | Path) -> Path:
    """A local path that exists, or a Hub model name downloaded into Hugging Face's cache."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    repo_id = hub_repo_id(str(src))
    if repo_id is None:
        raise CheckpointError(f"{str(src)!r} is neither an existing path nor a Hub model name: expected {EXPECTED}")
    if repo_id == str(src) and path.parent.is_dir():  # 'runs/run1' where ./runs exists: a local path, mistyped
        raise CheckpointError(f"{str(src)!r} does not exist (its directory {str(path.parent)!r} does)")
    return download_hub_model(repo_id)


def _full_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with FSDP2's sharded parameters (DTensors) gathered whole: a collective, which
    every rank reaches as every rank of an SPMD script calls ``from_pretrained``. A plain model's as it is."""
    state = model.state_dict()
    if not torch.distributed.is_available():
        return state
    from torch.distributed.tensor import DTensor

    return {key: value.full_tensor() if isinstance(value, DTensor) else value for key, value in state.items()}


def load_pretrained(src: Any, **overrides: Any) -> ConfigurableGPT:
    """Dispatch on what ``src`` is; see ``ConfigurableGPT.from_pretrained``."""
    src = getattr(src, "_orig_mod", src)  # a torch.compile'd model: the module it wraps
    if isinstance(src, ConfigurableGPT):  # a copy, with what overrides may change
        model = model_from_checkpoint({"arch": src.config.to_dict(), "model": _full_state_dict(src)}, **overrides)
        model.vocab_limit = src.vocab_limit
        if getattr(src, "hf_special_tokens", None) is not None:  # the ids it was imported with, exported again
            model.hf_special_tokens = dict(src.hf_special_tokens)
        return model
    config = getattr(src, "config", None)
    if isinstance(src, torch.nn.Module) and callable(getattr(config, "to_dict", None)):  # transformers'
        return _from_hf(config.to_dict(), src.state_dict, overrides)
    if isinstance(src, torch.nn.Module) and all(hasattr(config, k) for k in NANOGPT_MODEL_ARGS):  # nanoGPT's GPT
        args = {k: getattr(config, k) for k in (*NANOGPT_MODEL_ARGS, "bias", "dropout") if hasattr(config, k)}
        return model_from_nanogpt({"model_args": args, "model": src.state_dict()}, **overrides)
    if not isinstance(src, (str, Path)):
        raise CheckpointError(f"cannot load weights from a {type(src).__name__}: expected {EXPECTED_OBJECT}")
    path = resolve_pretrained(src)
    checkpoint = gptlab_checkpoint_path(path)
    if checkpoint is not None and is_dcp_dir(checkpoint):  # FSDP's sharded checkpoint, read whole (by the path
        # given: a run directory's latest is resolved again if a live run's save replaces it meanwhile)
        return model_from_checkpoint(load_checkpoint(path, optimizer=False), **overrides)
    if checkpoint is not None:  # a ckpt.pt: gptlab's or nanoGPT's
        return _from_torch_checkpoint(read_torch_checkpoint(checkpoint), overrides)
    if path.is_dir() and (path / "config.json").is_file():
        hf_config = _read_json(path / "config.json")
        if "model_type" not in hf_config and {"train", "arch"} <= set(hf_config):
            raise CheckpointError(f"run directory {str(path)!r} holds no checkpoint yet")
        model = _from_hf(hf_config, lambda: _read_hf_weights(path), overrides)
        beside = weights_record(path) or {}  # a `gptlab export --hf` folder's ckpt.pt records the tokenizer
        if beside.get("format") == "gptlab":
            _limit_to_tokenizer(model, beside.get("tokenizer"))
        return model
    raise CheckpointError(f"{str(path)!r} holds neither config.json nor a checkpoint: expected {EXPECTED}")


# GPT-2's four sizes (n_layer, n_head, n_embd) as nanoGPT's from_pretrained tabulates them: a config file that
# fine-tunes one is sized by flops, plan and compare without its download
GPT2_HUB_SIZES = {
    "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}  # fmt: skip


def pretrained_architecture(init_from: str) -> ModelArchitectureConfig | None:
    """The architecture of the weights ``init_from`` names, read without them (they fix a fine-tune's): a gptlab
    or nanoGPT checkpoint's record, a Hugging Face directory's config.json, GPT-2's Hub sizes; None when it cannot
    be known here (another Hub model, a path that is not there, a file that cannot be read)."""
    path = Path(init_from).expanduser()
    importers = {"gpt2": _gpt2_in, "llama": _llama_in}
    try:
        if not path.exists():
            size = GPT2_HUB_SIZES.get(init_from.removeprefix("openai-community/"))
            if size is not None:
                n_layer, n_head, n_embd = size
                hf = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=1024, vocab_size=50257)
                return _apply(_gpt2_in(hf, {})[0], {})
            path = _cached_hub_folder(init_from)  # another Hub model: its config.json, if in the cache
            if path is None:
                return None
        if gptlab_checkpoint_path(path) is not None:
            record = weights_record(path) or {}
            if record.get("format") == "gptlab" and isinstance(record.get("arch"), dict):
                from gptlab.plugins import saved_plugins

                return ModelArchitectureConfig.from_dict(record["arch"], saved_plugins(record))
            args = record.get("model_args")
            return _apply(_nanogpt_base(args), {}) if isinstance(args, dict) else None
        hf = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
        importer = importers.get(hf.get("model_type")) if isinstance(hf, dict) else None
        return _apply(importer(hf, {})[0], {}) if importer is not None else None
    except (CheckpointError, ConfigError, KeyError, TypeError, ValueError, AttributeError):
        return None  # what loading the weights would say, said by the run that loads them


def _cached_hub_folder(name: str) -> Path | None:
    """The folder of Hub model ``name`` in Hugging Face's cache, where its config.json is there (no download)."""
    repo_id = hub_repo_id(name)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo_id, "config.json") if repo_id is not None else None
    return Path(cached).parent if isinstance(cached, str) else None


def gptlab_checkpoint_path(path: Path) -> Path | None:
    """The checkpoint ``path`` names, if not a Hugging Face directory: a ``ckpt.pt`` or DCP directory
    itself, or a run directory's latest (the later of its ``ckpt.pt`` and ``ckpt.dcp``, as resuming
    picks; a run's own config.json is not Hugging Face's, which has a ``model_type``)."""
    if is_dcp_dir(path) or path.is_file():
        return path
    if not path.is_dir():
        return None
    if (path / "config.json").is_file() and "model_type" in _read_json(path / "config.json"):
        return None
    return latest_checkpoint(path)


def weights_record(path: Path, strict: bool = False) -> dict[str, Any] | None:
    """The record of the checkpoint a fine-tune's source names, read without its weights: a gptlab checkpoint
    or run directory's latest, the ckpt.pt beside a ``gptlab export --hf`` folder, nanoGPT's ckpt.pt; None for
    a Hugging Face model or Hub name, or one unreadable here (loading its weights says why). ``strict``: a
    checkpoint that is the source itself and cannot be read raises its CheckpointError now (a truncated one was
    reported as the nanoGPT default dataset its record no longer named, not prepared)."""
    path = Path(path).expanduser()
    found = gptlab_checkpoint_path(path) if path.exists() else None
    beside = found is None
    if found is None and path.is_dir():
        found = path / CHECKPOINT_NAME
    if found is None or not found.exists():
        return None
    try:
        # memory-mapped where it can be (a legacy, pre-1.6 torch file cannot: read whole, as loading it does)
        mapped = zipfile.is_zipfile(found)
        record = read_checkpoint_record(found) if is_dcp_dir(found) else read_torch_checkpoint(found, mmap=mapped)
    except CheckpointError:
        if strict and not beside:
            raise
        return None
    return record if isinstance(record, dict) else None


def recorded_dataset(record: dict[str, Any]) -> str | None:
    """The dataset a checkpoint's run trained on (gptlab's record, or nanoGPT's config), if it says."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    if record.get("format") == "gptlab":
        train = config.get("train")
        dataset = train.get("dataset") if isinstance(train, dict) else None
    else:
        dataset = config.get("dataset") if "model_args" in record else None
    return dataset if isinstance(dataset, str) and dataset else None


def model_from_checkpoint(ckpt: dict[str, Any], **overrides: Any) -> ConfigurableGPT:
    """The model of a loaded gptlab checkpoint dict (it records its architecture), strictly
    loaded; ``overrides`` may change only what leaves the weights alone (e.g. ``dropout``)."""
    _check_overridable(overrides)
    from gptlab.plugins import saved_plugins

    config = ModelArchitectureConfig.from_dict({**ckpt["arch"], **overrides}, saved_plugins(ckpt))
    model = _build(config, clean_state_dict(dict(ckpt["model"])), "gptlab checkpoint")
    _limit_to_tokenizer(model, ckpt.get("tokenizer"))
    if isinstance(ckpt.get("tokenizer"), dict):  # save_pretrained's bos/eos: the run's end-of-text, or none for a
        # character vocabulary (GPT-2's 50256 would be a character of a vocabulary that large), as export --hf says
        model.hf_special_tokens = special_tokens_for(ckpt["tokenizer"], model.config.vocab_size)
    return model


def _limit_to_tokenizer(model: ConfigurableGPT, tokenizer: Any) -> None:
    """A padded vocabulary (a run's dataset rounded up to a multiple of 64): generate() stays below the
    tokenizer's own size, which the checkpoint records, so that every id it draws decodes."""
    tokens = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    if isinstance(tokens, int) and 0 < tokens < model.config.vocab_size:
        model.vocab_limit = tokens


def _from_torch_checkpoint(ckpt: Any, overrides: dict[str, Any]) -> ConfigurableGPT:
    """A gptlab training checkpoint or a nanoGPT one."""
    if isinstance(ckpt, dict) and ckpt.get("format") == "gptlab" and "arch" in ckpt:
        return model_from_checkpoint(ckpt, **overrides)
    return model_from_nanogpt(ckpt, **overrides)


def _read_json(path: Path) -> dict[str, Any]:
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


def _hf_weight_files(directory: Path, single: str, index: str) -> list[Path]:
    """The weight files transformers reads from ``directory``: ``single`` (model.safetensors) if there, else the
    shards ``index`` (its .index.json) names; [] if neither (other files there are not the model's)."""
    if (directory / single).is_file():
        return [directory / single]
    if not (directory / index).is_file():
        return []
    try:
        weight_map = json.loads((directory / index).read_text(encoding="utf-8"))["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{str(directory / index)!r} is not a readable weights index ({e})") from None


def _read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Read a Hugging Face model directory's weights as transformers does: model.safetensors, else the shards its
    index names, else the same for pytorch_model.bin (a stale shard beside them is not read: it is not the model)."""
    safetensor_files = _hf_weight_files(directory, "model.safetensors", "model.safetensors.index.json")
    if not safetensor_files and not (directory / "pytorch_model.bin.index.json").is_file():
        # no name transformers knows: every file there (another writer's names), as before
        safetensor_files = sorted(directory.glob("*.safetensors"))
    if safetensor_files:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                "reading .safetensors needs the 'safetensors' package: pip install 'gptlab[hf]'"
            ) from None
        state: dict[str, Tensor] = {}
        for file in safetensor_files:
            try:
                state.update(load_file(file))
            except Exception as e:
                raise CheckpointError(f"{str(file)!r} is not a readable safetensors file ({e})") from None
        return state
    bin_files = _hf_weight_files(directory, "pytorch_model.bin", "pytorch_model.bin.index.json")
    if bin_files:
        state = {}
        for file in bin_files:
            state.update(read_torch_checkpoint(file))
        return state
    raise CheckpointError(
        f"{str(directory)!r} has config.json but no weights: expected *.safetensors or pytorch_model*.bin beside it"
    )


def _build(
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
        missing, unexpected = [file_name(k) for k in missing[:4]], [file_name(k) for k in unexpected[:4]]
        raise CheckpointError(
            f"{source}: weights do not fit the architecture (missing {missing}, unexpected {unexpected})"
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


def _check_overridable(overrides: dict[str, Any]) -> None:
    clash = sorted(set(overrides) - OVERRIDABLE_ON_LOAD)
    if clash:
        raise ConfigError(
            f"{clash[0]} cannot be overridden when loading pretrained weights (the weights fix it; only "
            f"{', '.join(sorted(OVERRIDABLE_ON_LOAD))} may be)"
        )


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> ModelArchitectureConfig:
    _check_overridable(overrides)
    return get_preset_config(base.pop("preset"), **{**base, **overrides})


# ---------------------------------------------------------------------------- nanoGPT


def model_from_nanogpt(ckpt: Any, **overrides: Any) -> ConfigurableGPT:
    """The model of a loaded nanoGPT checkpoint dict (its ``model_args`` and state dict)."""
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"not a nanoGPT checkpoint (found {keys}; expected keys 'model_args' and 'model'): expected {EXPECTED}"
        )
    args, state = _nanogpt_parts(ckpt, "a damaged nanoGPT checkpoint")
    config = _apply(_nanogpt_base(args), overrides)
    return _build(config, _rename(state, _NANOGPT_NAMES), "nanoGPT checkpoint", _nanogpt_file_name)


def _nanogpt_parts(ckpt: dict[str, Any], damaged: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """nanoGPT's ``model_args`` (checked) and its state dict in nanoGPT's names without prefixes or its attention's
    causal-mask buffers; ``damaged`` begins the error for a checkpoint that has not what nanoGPT writes."""
    args = ckpt.get("model_args")
    missing = [k for k in NANOGPT_MODEL_ARGS if not isinstance(args, dict) or k not in args]
    if missing:
        raise CheckpointError(f"{damaged}: its model_args have no {', '.join(missing)}")
    if not isinstance(args.get("dropout", 0.0), (int, float)) or isinstance(args.get("dropout"), bool):
        raise CheckpointError(f"{damaged}: its model_args have dropout={args['dropout']!r}")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{damaged}: its model state is no mapping")
    state = clean_state_dict(ckpt["model"])
    return args, {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}


def nanogpt_training_checkpoint(ckpt: dict[str, Any], source: str) -> dict[str, Any]:
    """nanoGPT's ``ckpt.pt`` as a gptlab training checkpoint, so that ``--init_from=resume`` goes on with its
    run as nanoGPT's resume would: the weights, AdamW's moments and step counts (each parameter's, moved from
    nanoGPT's parameter order to gptlab's), ``iter_num`` (the LR schedule continues there), ``best_val_loss`` and
    the run's settings (its ``config``, nanoGPT's train.py names, which gptlab shares). Not carried: the random
    state (nanoGPT saves none; the batches from here on are gptlab's stream at ``iter_num``)."""
    damaged = f"{source!r} is a damaged nanoGPT checkpoint"
    args, state = _nanogpt_parts(ckpt, damaged)
    iter_num = ckpt.get("iter_num")
    if not isinstance(iter_num, int) or isinstance(iter_num, bool) or iter_num < 0:
        raise CheckpointError(f"{damaged}: its iter_num is {iter_num!r}, not a non-negative integer")
    renamed = _rename(state, _NANOGPT_NAMES)
    shapes = {k: tuple(v.shape) for k, v in renamed.items() if isinstance(v, Tensor)}
    if weights_disagree(args["n_layer"], (args["vocab_size"], args["n_embd"]), shapes) is not None:  # before any
        raise CheckpointError(f"{damaged}: its model_args do not fit its weights")  # model is built from them
    embedding, head = state.get("transformer.wte.weight"), state.get("lm_head.weight")
    untied = head is not None and embedding is not None and not _same_weight(head, embedding)
    base = _nanogpt_base(args)
    try:
        arch = _apply({**base, **({"weight_tying": False} if untied else {})}, {})
    except ConfigError as e:
        raise CheckpointError(f"{damaged}: {e}") from None
    settings = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    from gptlab.config.train import TrainConfig
    from gptlab.train.init_from import preset_family

    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"init_from", "out_dir"}  # this command's
    train = {k: v for k, v in settings.items() if k in train_keys}
    recorded = bool(train)
    if not str(settings.get("device", "cuda")).startswith("cuda"):  # its CPU (and MPS) path ignores dtype: the
        train["dtype"] = "float32"  # run trained in float32, whatever the 'float16' its config recorded says
    train["arch_preset"] = preset_family(arch.to_dict())
    best = ckpt.get("best_val_loss", float("inf"))  # a 0-d tensor in nanoGPT's
    best = float(best) if isinstance(best, (int, float, Tensor)) and not isinstance(best, bool) else float("inf")
    sizes = [settings.get(k) for k in ("gradient_accumulation_steps", "batch_size", "block_size")]
    counted = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
    origin, dataset = settings.get("init_from"), settings.get("dataset")
    origin = None if origin == "resume" else origin  # a resumed nanoGPT run records no more where it began
    try:  # needed by a resume alone: sampling and export read the weights of any nanoGPT checkpoint
        optimizer = {"optimizer": _nanogpt_optimizer(ckpt.get("optimizer"), state, arch, source)}
    except CheckpointError as e:
        optimizer = {"optimizer_problem": str(e)}
    return {
        "format": FORMAT,
        "version": 1,
        "arch": arch.to_dict(),
        "config": {"train": train, "arch": arch.to_dict()},
        "tokenizer": None,  # nanoGPT's is its dataset's meta.pkl (or GPT-2's): the dataset's own, read there
        "dataset": dataset if isinstance(dataset, str) else None,
        "iter_num": iter_num,
        "tokens_seen": iter_num * math.prod(sizes) if counted else 0,  # nanoGPT's tokens_per_iter
        "best_val_loss": best,
        "rng": None,
        "data": None,
        "versions": None,  # (absent: a gptlab checkpoint from before evaluation batches had their own stream)
        "weights_origin": origin if isinstance(origin, str) else None,
        "converted_from": "nanoGPT",
        "nanogpt_settings": recorded,  # its config held training settings (else: the command's and the defaults)
        "model": renamed,
        **optimizer,
    }


def _nanogpt_optimizer(
    saved: Any, state: dict[str, Tensor], arch: ModelArchitectureConfig, source: str
) -> dict[str, Any]:
    """nanoGPT's AdamW state dict in gptlab's parameter order. Both make the same two groups (matrices decayed,
    then biases and norms, each in ``named_parameters`` order, tied weights once); nanoGPT's order is its state
    dict's (the LM head tied to the embedding, listed after it, is left out as ``named_parameters`` does)."""
    fine_tune = f"fine-tune from it instead (--init_from={source!r}, another --out_dir: a new optimizer state)"
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) or not saved["param_groups"]:
        raise CheckpointError(f"{source!r} holds no nanoGPT optimizer state to resume with; {fine_tune}")
    names = list(state)
    embedding, head = state.get("transformer.wte.weight"), state.get("lm_head.weight")
    if head is not None and (embedding is None or _same_weight(head, embedding)):
        names.remove("lm_head.weight")  # tied to the embedding: named_parameters lists it once, as the embedding
    nanogpt_groups = [[n for n in names if state[n].dim() >= 2], [n for n in names if state[n].dim() < 2]]
    groups = saved["param_groups"]
    sizes = [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups]
    if sizes != [len(g) for g in nanogpt_groups]:
        raise CheckpointError(
            f"{source!r}: its optimizer's parameter groups hold {sizes} tensors, not nanoGPT's "
            f"{[len(g) for g in nanogpt_groups]} (its matrices, then its biases and norms): resume it with the code "
            f"that wrote it, or {fine_tune}"
        )
    saved_index = {
        name: idx for group, named in zip(groups, nanogpt_groups) for idx, name in zip(group["params"], named)
    }
    with torch.device("meta"):
        ours = ConfigurableGPT(arch)
    to_nanogpt = dict(zip(_rename(dict.fromkeys(names), _NANOGPT_NAMES), names))  # gptlab name -> nanoGPT's
    params = [(n, p) for n, p in ours.named_parameters()]
    gptlab_groups = [[n for n, p in params if p.dim() >= 2], [n for n, p in params if p.dim() < 2]]
    moved: dict[int, Any] = {}
    new_groups = []
    position = 0
    for group, named in zip(groups, gptlab_groups):
        ids = []
        for name in named:
            old = saved_index.get(to_nanogpt.get(name))
            if old is None:  # (the same model from the same state dict: not expected)
                raise CheckpointError(f"{source!r}: no optimizer state for {name}; {fine_tune}")
            if old in saved.get("state", {}):
                moved[position] = saved["state"][old]
            ids.append(position)
            position += 1
        new_groups.append({**group, "params": ids})
    return {"state": moved, "param_groups": new_groups}


def _same_weight(a: Tensor, b: Tensor) -> bool:
    """One tied weight under two names: the same storage (torch.save keeps it shared), or equal copies (a fork
    that saved each tensor's .cpu() or clone())."""
    same_storage = a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.shape == b.shape
    return same_storage or (a.shape == b.shape and torch.equal(a, b))


def _nanogpt_base(args: dict[str, Any]) -> dict[str, Any]:
    """The gptlab architecture of nanoGPT's ``model_args``."""
    bias = bool(args.get("bias", True))
    # nanoGPT is GPT-2 with exact GELU; bias=False also removes the LayerNorm biases.
    return dict(
        preset="gpt2",
        n_layer=args["n_layer"],
        n_head=args["n_head"],
        n_embd=args["n_embd"],
        block_size=args["block_size"],
        vocab_size=args["vocab_size"],
        bias=bias,
        normalization="layernorm" if bias else "layernorm_nobias",
        gelu_approximate="none",
        dropout=float(args.get("dropout", 0.0)),
    )


NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")  # nanoGPT's GPTConfig, all required
_NANOGPT_NAMES: list[tuple[str, str]] = [
    ("transformer.wte.", "wte."),
    ("transformer.wpe.", "pos_encoding.wpe."),
    ("transformer.ln_f.", "norm_f."),
    ("transformer.h.", "blocks."),
    (".ln_1.", ".norm_1."),
    (".ln_2.", ".norm_2."),
    (".attn.c_attn.", ".attn.qkv."),
    (".attn.c_proj.", ".attn.out_proj."),
    (".mlp.c_fc.", ".ffn.w_in."),
    (".mlp.c_proj.", ".ffn.w_out."),
]


def _rename(state: dict[str, Tensor], table: list[tuple[str, str]]) -> dict[str, Tensor]:
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


def _inverse(table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(new, old) for old, new in table]


def _nanogpt_file_name(key: str) -> str:
    """A gptlab parameter's name in nanoGPT's (and Hugging Face GPT-2's) files."""
    return next(iter(_rename({key: None}, _inverse(_NANOGPT_NAMES))))


def _llama_file_name(key: str) -> str:
    """A gptlab parameter's name in a Hugging Face LLaMA's files (its one QKV weight is their three)."""
    return next(iter(_rename({key: None}, _inverse(_LLAMA_NAMES)))).replace(".attn.qkv.", ".self_attn.{q,k,v}_proj.")


# ---------------------------------------------------------------------------- Hugging Face


def _from_hf(
    hf: dict[str, Any], read_state: Callable[[], dict[str, Tensor]], overrides: dict[str, Any]
) -> ConfigurableGPT:
    """Convert a Hugging Face config and its weights; the weights are read only once the
    config is known to be supported."""
    importers = {"gpt2": _gpt2_in, "llama": _llama_in}
    if not isinstance(hf, dict):
        raise CheckpointError(f"config.json holds a {type(hf).__name__}, not a model config (a JSON object)")
    model_type = hf.get("model_type")
    if model_type not in importers:
        raise CheckpointError(f"config.json model_type={model_type!r} is not supported: expected one of {SUPPORTED_HF}")
    try:
        base, state = importers[model_type](hf, dict(read_state()))
    except (KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        if isinstance(e, (CheckpointError, ConfigError)):
            raise
        what = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {first_line(e)}"
        raise CheckpointError(
            f"a Hugging Face {model_type} config.json and weights that cannot be read ({what})"
        ) from None
    file_name = _nanogpt_file_name if model_type == "gpt2" else _llama_file_name  # (GPT-2's are nanoGPT's names)
    model = _build(_apply(base, overrides), state, f"Hugging Face {model_type} model", file_name)
    # the source's special ids travel to save_pretrained: a LLaMA-3's are 128000/128001, a LLaMA-2's 1/2
    model.hf_special_tokens = {k: hf.get(k) for k in HF_SPECIAL_TOKEN_KEYS}
    return model


def _unsupported(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"config.json {key}={value!r} is not supported: {why}")


def _with_base_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Weights saved from the base model (``GPT2Model``, ``LlamaModel``) have no ``transformer.`` / ``model.``
    prefix: the Hub's own ``gpt2`` files are laid out so (``h.0.attn.c_attn.weight``, ``wte.weight``, no
    ``lm_head``), and transformers loads them into the causal-LM class by adding it, as this does."""
    if any(k.startswith(prefix) for k in state):
        return state
    return {(k if k.startswith("lm_head.") else prefix + k): v for k, v in state.items()}


def _gpt2_in(hf: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    act = hf.get("activation_function", "gelu_new")
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
    if act not in gelu:
        raise _unsupported("activation_function", act, f"expected one of {sorted(gelu)}")
    for key, ok in (
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("scale_attn_weights", True),
    ):
        if hf.get(key, ok) != ok:
            raise _unsupported(key, hf[key], f"gptlab's GPT-2 uses {key}={ok}")
    n_embd = hf["n_embd"]
    base = dict(
        preset="gpt2",
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=n_embd,
        block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"],
        d_ff=hf.get("n_inner") or 4 * n_embd,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        gelu_approximate=gelu[act],
        weight_tying=bool(hf.get("tie_word_embeddings", True)),
        dropout=float(hf.get("resid_pdrop", 0.0)),
    )
    state = _with_base_prefix(clean_state_dict(state), "transformer.")
    state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    renamed = _rename(state, _NANOGPT_NAMES)
    # transposed views: load_state_dict copies them into the parameters (a contiguous copy of each first
    # held a second copy of those weights, 1.2 GB at 350M)
    return base, {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in renamed.items()}


# HF GPT-2 uses Conv1D, which stores (in, out): these transpose to and from nn.Linear's (out, in).
_CONV1D = (".attn.qkv.weight", ".attn.out_proj.weight", ".ffn.w_in.weight", ".ffn.w_out.weight")


def _rope_theta(hf: dict[str, Any]) -> float:
    # transformers 5 writes rope_parameters, older files rope_scaling, and a hand-edited file may hold
    # both (a scaling added next to the saved default): transformers applies the scaling, so check each.
    specs = [hf[key] for key in ("rope_parameters", "rope_scaling") if isinstance(hf.get(key), dict) and hf[key]]
    for rope in specs:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise _unsupported("rope_type", rope_type, "only the default (unscaled) RoPE is implemented")
    theta = next((rope["rope_theta"] for rope in specs if "rope_theta" in rope), hf.get("rope_theta", 10000.0))
    return float(theta)


_LLAMA_NAMES: list[tuple[str, str]] = [
    ("model.embed_tokens.", "wte."),
    ("model.norm.", "norm_f."),
    ("model.layers.", "blocks."),
    (".input_layernorm.", ".norm_1."),
    (".post_attention_layernorm.", ".norm_2."),
    (".self_attn.o_proj.", ".attn.out_proj."),
    (".mlp.gate_proj.", ".ffn.w_gate."),
    (".mlp.up_proj.", ".ffn.w_value."),
    (".mlp.down_proj.", ".ffn.w_out."),
]


def _llama_in(hf: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if hf.get("hidden_act", "silu") != "silu":
        raise _unsupported("hidden_act", hf["hidden_act"], "LLaMA's MLP is SwiGLU (silu)")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise _unsupported(
            "head_dim", hf["head_dim"], f"gptlab uses hidden_size / num_attention_heads = {n_embd // n_head}"
        )
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise _unsupported(
            "attention_bias, mlp_bias",
            (hf.get("attention_bias", False), hf.get("mlp_bias", False)),
            "gptlab's bias setting covers attention and MLP together",
        )
    base = dict(
        preset="llama",
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_embd=n_embd,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        block_size=hf["max_position_embeddings"],
        vocab_size=hf["vocab_size"],
        d_ff=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf),
        bias=bool(hf.get("attention_bias", False)),
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
        dropout=float(hf.get("attention_dropout", 0.0)),
    )
    state = _with_base_prefix(clean_state_dict(state), "model.")
    out: dict[str, Tensor] = {}
    present = {int(k.split(".")[2]) for k in state if k.startswith("model.layers.") and k.split(".")[2].isdigit()}
    for i in sorted(present):  # the file's layers (a config's n_layer is checked against them in _build)
        p = f"model.layers.{i}."
        for suffix in ("weight", "bias"):
            parts = [state.pop(f"{p}self_attn.{n}_proj.{suffix}", None) for n in "qkv"]
            if all(t is not None for t in parts):
                out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)  # (q + 2 kv, C)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    out.update(_rename(state, _LLAMA_NAMES))
    return base, out


# ---------------------------------------------------------------------------- export


def hf_model_type(config: ModelArchitectureConfig) -> str:
    """Which ``transformers`` architecture represents ``config`` exactly; ConfigError if none."""
    registered = not is_builtin(ATTENTION_BACKEND_REGISTRY.get(config.attention_backend))
    common = config.norm_position == "pre"
    structure = None
    if (
        common
        and config.position_encoding == "learned_absolute"
        and config.normalization in GPT2_NORMS
        and config.ffn_type == "standard"
        and config.activation == "gelu"
        and config.kv_heads == config.n_head
    ):
        structure = "gpt2"  # without biases (nanoGPT's bias=False) too: HF's GPT-2 with zero biases is the same
    llama = config.position_encoding == "rope" and config.normalization == "rmsnorm" and config.ffn_type == "swiglu"
    if common and llama:
        structure = "llama"
    if structure is not None and not registered:
        return structure
    if structure is not None:  # a registered backend computes attention its own way: transformers would not
        raise ConfigError(
            f"attention_backend={config.attention_backend!r} is a registered backend: Hugging Face models run "
            "standard softmax attention, so the export would not compute what this model does "
            "(if it computes standard causal attention, load it with a built-in one and export that, in Python: "
            "ConfigurableGPT.from_pretrained(RUN, attention_backend='sdpa').save_pretrained(DIR))"
        )
    needs = {
        "GPT-2": {
            "norm_position": "pre",
            "position_encoding": "learned_absolute",
            "normalization": GPT2_NORMS,
            "ffn_type": "standard",
            "activation": "gelu",
            "n_kv_head": config.n_head,
        },
        "LLaMA": {
            "norm_position": "pre",
            "position_encoding": "rope",
            "normalization": "rmsnorm",
            "ffn_type": "swiglu",
        },
    }
    have = {k: getattr(config, k) for k in ("norm_position", "position_encoding", "normalization", "ffn_type")}
    have.update(activation=config.activation, n_kv_head=config.kv_heads)
    off = {
        name: [
            f"{k}={have[k]!r} ({' or '.join(map(repr, v)) if isinstance(v, tuple) else repr(v)} there)"
            for k, v in want.items()
            if (have[k] not in v if isinstance(v, tuple) else have[k] != v)
        ]
        for name, want in needs.items()
    }
    nearest = min(off, key=lambda name: len(off[name]))  # the settings that keep this model from it
    if registered:  # every reason at once (the backend's alone sent its way out into the next refusal)
        off[nearest].append(f"attention_backend={config.attention_backend!r} (a registered backend; standard there)")
    raise ConfigError(
        f"architecture {config.get_architecture_name()!r} has no exact Hugging Face equivalent: "
        "save_pretrained supports GPT-2 (pre-norm, layernorm, learned positions, GELU MLP, with or without biases, "
        f"no GQA) and LLaMA (pre-norm, rmsnorm, rope, swiglu); the nearest, {nearest}, differs in "
        + ", ".join(off[nearest])
    )


def _gpt2_out(model: ConfigurableGPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    c = model.config
    hf = dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        n_positions=c.block_size,
        n_ctx=c.block_size,
        vocab_size=c.vocab_size,
        n_inner=c.ffn_hidden_dim,
        layer_norm_epsilon=c.norm_eps,
        activation_function="gelu_new" if c.gelu_approximate == "tanh" else "gelu",
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        tie_word_embeddings=c.weight_tying,
        scale_attn_weights=True,
    )
    state = {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in model.state_dict().items()}
    return hf, _rename(_with_zero_biases(model, state), _inverse(_NANOGPT_NAMES))


# GPT-2's layernorms; without a bias (nanoGPT's bias=False) HF's GPT-2 holds a zero one
GPT2_NORMS = ("layernorm", "layernorm_nobias")


def _with_zero_biases(model: ConfigurableGPT, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the biases HF's GPT-2 always has, as zeros where the model has none (bias=False, or a
    layernorm without bias): the same function, so nanoGPT's default models export too."""
    biased_config = dataclasses.replace(model.config, bias=True, normalization="layernorm")
    with torch.device("meta"):
        biased = ConfigurableGPT(biased_config, init_weights=False)
    like = model.lm_head.weight  # the zeros in the weights' dtype, on their device
    missing = {k: v.shape for k, v in biased.state_dict().items() if k not in state}
    return {**state, **{k: like.new_zeros(shape) for k, shape in missing.items()}}


def _llama_out(model: ConfigurableGPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    c = model.config
    hf = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=c.n_embd,
        intermediate_size=c.ffn_hidden_dim,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.kv_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.block_size,
        vocab_size=c.vocab_size,
        rms_norm_eps=c.norm_eps,
        hidden_act="silu",
        rope_theta=c.rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.weight_tying,
        attention_bias=c.bias,
        mlp_bias=c.bias,
        attention_dropout=c.dropout,
    )
    q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if ".attn.qkv." in key:
            prefix, suffix = key.split(".attn.qkv.")
            for name, part in zip("qkv", value.split([q, kv, kv], dim=0)):
                state[f"{prefix}.self_attn.{name}_proj.{suffix}"] = part
        else:
            state[key] = value
    return hf, _rename(state, _inverse(_LLAMA_NAMES))


_EXPORTERS: dict[str, Callable[[ConfigurableGPT], tuple[dict[str, Any], dict[str, Tensor]]]] = {
    "gpt2": _gpt2_out,
    "llama": _llama_out,
}


def special_tokens_for(tokenizer: dict[str, Any] | None, vocab_size: int) -> dict[str, int | None]:
    """The ids a Hugging Face config names as bos/eos: the end-of-text token of the tokenizer the
    model was trained with (a prepared dataset's meta), else GPT-2 BPE's ``<|endoftext|>`` where the
    vocabulary has it, else none (transformers' defaults, 50256 for GPT-2 and 1/2 for LLaMA, would
    name ids outside or meaningless in a small vocabulary)."""
    if tokenizer is not None:
        eot = tokenizer.get("eot_token")
    else:
        eot = GPT2_EOT_ID if vocab_size > GPT2_EOT_ID else None
    return {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": None}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safetensors_writer() -> Callable[..., None]:
    """``safetensors.torch.save_file``, or one CheckpointError naming the extra that installs it."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise CheckpointError("save_pretrained needs the 'safetensors' package: pip install 'gptlab[hf]'") from None
    return save_file


def save_pretrained(
    model: ConfigurableGPT, directory: str | Path, special_tokens: dict[str, int | None] | None = None
) -> Path:
    """Export in Hugging Face layout: ``config.json`` + ``model.safetensors``. ``special_tokens``
    (bos/eos/pad ids) default to those of the Hugging Face model it was imported from, if any, else
    to ``special_tokens_for(None, vocab_size)``."""
    save_file = safetensors_writer()
    model_type = hf_model_type(model.config)
    hf_config, state = _EXPORTERS[model_type](model)
    if model.config.weight_tying:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; HF re-ties on load
    hf_config["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    if special_tokens is None:
        special_tokens = getattr(model, "hf_special_tokens", None) or special_tokens_for(None, model.config.vocab_size)
    hf_config.update({k: special_tokens.get(k) for k in HF_SPECIAL_TOKEN_KEYS})
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates it 0600: readable by a serving account, as the rest
    tmp.replace(out / "model.safetensors")  # atomic: a crash never leaves a half-written file
    atomic_write(out / "config.json", json.dumps(hf_config, indent=2, sort_keys=True))
    atomic_write(out / "generation_config.json", json.dumps(_generation_config(model, hf_config), indent=2))
    return out


def _generation_config(model: ConfigurableGPT, hf_config: dict[str, Any]) -> dict[str, Any]:
    """transformers' generation settings for the export, as its own save writes them (the special ids), and the
    padded vocabulary's ids beyond the tokenizer's (``vocab_limit``) suppressed: transformers' generate() drew
    them, which no tokenizer decodes (gptlab's own generate() never does)."""
    settings: dict[str, Any] = {k: hf_config[k] for k in HF_SPECIAL_TOKEN_KEYS if hf_config.get(k) is not None}
    limit, vocab = model.vocab_limit, model.config.vocab_size
    if isinstance(limit, int) and 0 < limit < vocab:
        settings["suppress_tokens"] = list(range(limit, vocab))
    return settings
