"""Hugging Face GPT-2 and LLaMA weights in and out: config.json's keys as a gptlab architecture and back,
parameter names (GPT-2's Conv1D weights transposed, LLaMA's q/k/v projections joined into one QKV and split
again), reading a model folder as transformers does, and ``save_pretrained`` (config.json, model.safetensors and
generation_config.json, each written atomically)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gptlab.checkpoint import clean_state_dict
from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import CheckpointError, ConfigError, first_line
from gptlab.fileio import atomic_write
from gptlab.model.gpt import ConfigurableGPT
from gptlab.model.loading import arch_with_overrides, build_model, read_torch_checkpoint, rename_keys, reversed_names
from gptlab.model.nanogpt import NANOGPT_NAMES, nanogpt_file_name
from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY, is_builtin

GPT2_EOT_ID = 50256  # GPT-2 BPE's <|endoftext|>


HF_SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


SUPPORTED_HF = ("gpt2", "llama")


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


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Read a Hugging Face model directory's weights as transformers does: model.safetensors, else the shards its
    index names, else the same for pytorch_model.bin (a stale shard beside them is not read: it is not the model)."""
    safetensor_files = _hf_weight_files(directory, "model.safetensors", "model.safetensors.index.json")
    known_bin = any((directory / name).is_file() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json"))
    if not safetensor_files and not known_bin:
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


def _llama_file_name(key: str) -> str:
    """A gptlab parameter's name in a Hugging Face LLaMA's files (its one QKV weight is their three)."""
    return next(iter(rename_keys({key: None}, reversed_names(_LLAMA_NAMES)))).replace(
        ".attn.qkv.", ".self_attn.{q,k,v}_proj."
    )


def model_from_hf(
    hf: dict[str, Any], read_state: Callable[[], dict[str, Tensor]], overrides: dict[str, Any]
) -> ConfigurableGPT:
    """Convert a Hugging Face config and its weights; the weights are read only once the
    config is known to be supported."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"config.json holds a {type(hf).__name__}, not a model config (a JSON object)")
    model_type = hf.get("model_type")
    if model_type not in HF_IMPORTERS:
        raise CheckpointError(f"config.json model_type={model_type!r} is not supported: expected one of {SUPPORTED_HF}")
    prefix = BASE_MODEL_PREFIX[model_type]
    try:
        files = dict(read_state())
        bare = not any(k.startswith(prefix) for k in clean_state_dict(files))  # the base model's (_with_base_prefix)
        base, state = HF_IMPORTERS[model_type](hf, files)
    except (KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        if isinstance(e, (CheckpointError, ConfigError)):
            raise
        what = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {first_line(e)}"
        raise CheckpointError(
            f"a Hugging Face {model_type} config.json and weights that cannot be read ({what})"
        ) from None
    named = nanogpt_file_name if model_type == "gpt2" else _llama_file_name  # (GPT-2's are nanoGPT's names)
    file_name = (lambda key: named(key).removeprefix(prefix)) if bare else named  # as the files name them
    model = build_model(arch_with_overrides(base, overrides), state, f"Hugging Face {model_type} model", file_name)
    # the source's special ids travel to save_pretrained: a LLaMA-3's are 128000/128001, a LLaMA-2's 1/2
    model.hf_special_tokens = {k: hf.get(k) for k in HF_SPECIAL_TOKEN_KEYS}
    return model


def _unsupported(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"config.json {key}={value!r} is not supported: {why}")


# the causal-LM class's prefix of the base model's weights, which the base model's own files leave out
BASE_MODEL_PREFIX = {"gpt2": "transformer.", "llama": "model."}


def _with_base_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Weights saved from the base model (``GPT2Model``, ``LlamaModel``) have no ``transformer.`` / ``model.``
    prefix: the Hub's own ``gpt2`` files are laid out so (``h.0.attn.c_attn.weight``, ``wte.weight``, no
    ``lm_head``), and transformers loads them into the causal-LM class by adding it, as this does."""
    if any(k.startswith(prefix) for k in state):
        return state
    return {(k if k.startswith("lm_head.") else prefix + k): v for k, v in state.items()}


def _gpt2_from_hf(hf: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    act = hf.get("activation_function", "gelu_new")
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
    if act not in gelu:
        raise _unsupported("activation_function", act, f"expected one of {sorted(gelu)}")
    # (reorder_and_upcast_attn=True is taken: it computes the same attention, its scores in float32 as SDPA's
    # fused kernels accumulate them; the two that change the model are refused)
    for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)):
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
    state = _with_base_prefix(clean_state_dict(state), BASE_MODEL_PREFIX["gpt2"])
    state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    renamed = rename_keys(state, NANOGPT_NAMES)
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


def _llama_from_hf(hf: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
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
    state = _with_base_prefix(clean_state_dict(state), BASE_MODEL_PREFIX["llama"])
    out: dict[str, Tensor] = {}
    present = {int(k.split(".")[2]) for k in state if k.startswith("model.layers.") and k.split(".")[2].isdigit()}
    for i in sorted(present):  # the file's layers (a config's n_layer is checked against them in build_model)
        p = f"model.layers.{i}."
        for suffix in ("weight", "bias"):
            parts = [state.pop(f"{p}self_attn.{n}_proj.{suffix}", None) for n in "qkv"]
            if all(t is not None for t in parts):
                out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)  # (q + 2 kv, C)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    out.update(rename_keys(state, _LLAMA_NAMES))
    return base, out


# a config.json's model_type -> its architecture (the preset's keys) and its state dict in gptlab's names
HF_IMPORTERS: dict[str, Callable[[dict[str, Any], dict[str, Tensor]], tuple[dict[str, Any], dict[str, Tensor]]]] = {
    "gpt2": _gpt2_from_hf,
    "llama": _llama_from_hf,
}


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


def _gpt2_to_hf(model: ConfigurableGPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
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
    return hf, rename_keys(_with_zero_biases(model, state), reversed_names(NANOGPT_NAMES))


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


def _llama_to_hf(model: ConfigurableGPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
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
    return hf, rename_keys(state, reversed_names(_LLAMA_NAMES))


_EXPORTERS: dict[str, Callable[[ConfigurableGPT], tuple[dict[str, Any], dict[str, Tensor]]]] = {
    "gpt2": _gpt2_to_hf,
    "llama": _llama_to_hf,
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


def _check_special_tokens(special_tokens: Any, vocab_size: int) -> None:
    """Given ids, checked as transformers checks them on load: a misspelt key ({'eos': 5}) wrote every id null,
    an id past the vocabulary a config transformers flags."""
    from gptlab.errors import ConfigError, did_you_mean

    if not isinstance(special_tokens, dict):
        raise ConfigError(f"special_tokens={special_tokens!r} is invalid: expected a dict of {HF_SPECIAL_TOKEN_KEYS}")
    for key, value in special_tokens.items():
        if key not in HF_SPECIAL_TOKEN_KEYS:
            keys = ", ".join(HF_SPECIAL_TOKEN_KEYS)
            meant = did_you_mean(str(key), list(HF_SPECIAL_TOKEN_KEYS)) or f" (keys: {keys})"
            raise ConfigError(f"special_tokens: unknown key {key!r}{meant}")
        ids = value if isinstance(value, list) and value and key == "eos_token_id" else [value]  # (LLaMA-3's list)
        if value is not None and not all(_token_id(i, vocab_size) for i in ids):
            listed = ", or a list of them for eos_token_id" if key == "eos_token_id" else ""
            allowed = f"None or a token id in [0, {vocab_size}){listed}"
            raise ConfigError(f"special_tokens[{key!r}]={value!r} is invalid: expected {allowed}")


def _token_id(value: Any, vocab_size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size


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
    else:
        _check_special_tokens(special_tokens, model.config.vocab_size)
    hf_config.update({k: special_tokens.get(k) for k in HF_SPECIAL_TOKEN_KEYS})
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = out / f".model.safetensors.tmp-{os.getpid()}"  # fileio.atomic_open's name: a killed export's is cleared
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
