"""Weights in and out, by where they come from: a gptlab run or checkpoint (ckpt.pt or an FSDP run's DCP folder),
a Hugging Face GPT-2 or LLaMA folder or Hub name, a nanoGPT ckpt.pt, or a model in memory; what each source's
architecture and record say before its weights are read. The formats themselves are gptlab.model.hf and
gptlab.model.nanogpt, over what they share in gptlab.model.loading; their entry points import from here too,
as they did before the formats had modules of their own.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gptlab.checkpoint import (
    CHECKPOINT_NAME,
    clean_state_dict,
    is_dcp_dir,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_record,
)
from gptlab.config.model import ModelArchitectureConfig
from gptlab.data.tokenizers import HF_TOKENIZER_FILES
from gptlab.errors import CheckpointError, ConfigError, did_you_mean
from gptlab.model.gpt import ConfigurableGPT
from gptlab.model.hf import (
    GPT2_EOT_ID,
    HF_IMPORTERS,
    HF_SPECIAL_TOKEN_KEYS,
    SUPPORTED_HF,
    hf_model_type,
    model_from_hf,
    read_hf_weights,
    safetensors_writer,
    save_pretrained,
    special_tokens_for,
)
from gptlab.model.loading import (
    EXPECTED,
    EXPECTED_OBJECT,
    OVERRIDABLE_ON_LOAD,
    arch_with_overrides,
    build_model,
    check_overridable,
    read_json,
    read_torch_checkpoint,
)
from gptlab.model.nanogpt import (
    NANOGPT_MODEL_ARGS,
    model_from_nanogpt,
    nanogpt_architecture,
    nanogpt_training_checkpoint,
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


def hub_repo_id(name: str) -> str | None:
    """The Hugging Face Hub repository ``name`` means (nanoGPT's ``gpt2-xl`` or ``org/name``), else None."""
    if name.lower() in NANOGPT_HUB_NAMES:
        return NANOGPT_HUB_NAMES[name.lower()]
    is_file_name = Path(name).suffix in (".pt", ".pth", ".bin", ".safetensors", ".json", ".dcp")
    return name if HUB_REPO_ID.fullmatch(name) and not is_file_name else None


# a Hub model's own tokenizer, fetched with its weights: a GPT-2-sized model may carry a BPE of its own
# (data.tokenizers.hf_folder_tokenizer), which GPT-2's ids are other text to
HUB_TOKENIZER = list(HF_TOKENIZER_FILES)


def download_hub_model(repo_id: str) -> Path:
    """A Hub model's config.json, weights (safetensors, else pytorch_model*.bin) and tokenizer files as a
    local directory: Hugging Face's cache, filled on first use; with HF_HUB_OFFLINE=1 only the cache is read."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"downloading {repo_id!r} needs huggingface_hub: pip install 'gptlab[hf]'") from None
    path = None
    for weights in HUB_WEIGHTS:
        try:
            path = Path(snapshot_download(repo_id, allow_patterns=["config.json", *weights, *HUB_TOKENIZER]))
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
    return path  # type: ignore[return-value]  # no weights: read_hf_weights says so


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
        return model_from_hf(config.to_dict(), src.state_dict, overrides)
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
        hf_config = read_json(path / "config.json")
        if "model_type" not in hf_config and {"train", "arch"} <= set(hf_config):
            raise CheckpointError(f"run directory {str(path)!r} holds no checkpoint yet")
        model = model_from_hf(hf_config, lambda: read_hf_weights(path), overrides)
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
    try:
        if not path.exists():
            size = GPT2_HUB_SIZES.get(init_from.removeprefix("openai-community/"))
            if size is not None:
                n_layer, n_head, n_embd = size
                hf = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=1024, vocab_size=50257)
                return arch_with_overrides(HF_IMPORTERS["gpt2"](hf, {})[0], {})
            path = _cached_hub_folder(init_from)  # another Hub model: its config.json, if in the cache
            if path is None:
                return None
        if gptlab_checkpoint_path(path) is not None:
            record = weights_record(path) or {}
            if record.get("format") == "gptlab" and isinstance(record.get("arch"), dict):
                from gptlab.plugins import saved_plugins

                return ModelArchitectureConfig.from_dict(record["arch"], saved_plugins(record))
            args = record.get("model_args")
            return arch_with_overrides(nanogpt_architecture(args), {}) if isinstance(args, dict) else None
        hf = read_json(path / "config.json") if (path / "config.json").is_file() else {}
        importer = HF_IMPORTERS.get(hf.get("model_type")) if isinstance(hf, dict) else None
        return arch_with_overrides(importer(hf, {})[0], {}) if importer is not None else None
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
    if (path / "config.json").is_file() and _is_hf_config(path / "config.json", path):
        return None
    return latest_checkpoint(path)


def _is_hf_config(config: Path, folder: Path) -> bool:
    """Whether a folder's config.json is Hugging Face's (a ``model_type`` key); one that cannot be read, or holds
    no object, is a damaged run record where the folder has a checkpoint of its own (which then loads), else the
    Hugging Face folder's error."""
    try:
        record = read_json(config)
    except CheckpointError:
        if latest_checkpoint(folder) is not None:
            return False
        raise
    return isinstance(record, dict) and "model_type" in record


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
    check_overridable(overrides)
    from gptlab.plugins import edited_plugins_note, plugin_digests, saved_plugins

    config = ModelArchitectureConfig.from_dict({**ckpt["arch"], **overrides}, saved_plugins(ckpt))
    try:
        model = build_model(config, clean_state_dict(dict(ckpt["model"])), "gptlab checkpoint")
    except CheckpointError as e:  # a registered component's code changed under the weights: said beside it
        plugins = saved_plugins(ckpt)
        digests = plugin_digests(plugins if isinstance(plugins, str) else "", config)
        raise CheckpointError(f"{e}{edited_plugins_note(ckpt.get('plugin_digests'), digests)}") from None
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


__all__ = [  # the sources and dispatch defined here, and the formats' entry points (importable from here as before)
    "EXPECTED",
    "EXPECTED_OBJECT",
    "GPT2_EOT_ID",
    "GPT2_HUB_SIZES",
    "HF_SPECIAL_TOKEN_KEYS",
    "HUB_REPO_ID",
    "HUB_TOKENIZER",
    "HUB_WEIGHTS",
    "NANOGPT_HUB_NAMES",
    "NANOGPT_MODEL_ARGS",
    "OVERRIDABLE_ON_LOAD",
    "SUPPORTED_HF",
    "check_init_source",
    "download_hub_model",
    "gptlab_checkpoint_path",
    "hf_model_type",
    "hub_repo_id",
    "load_pretrained",
    "model_from_checkpoint",
    "model_from_nanogpt",
    "nanogpt_training_checkpoint",
    "pretrained_architecture",
    "read_torch_checkpoint",
    "recorded_dataset",
    "resolve_pretrained",
    "safetensors_writer",
    "save_pretrained",
    "special_tokens_for",
    "weights_record",
]
