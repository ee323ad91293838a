"""nanoGPT's checkpoints: its ``model_args`` as a gptlab architecture (the gpt2 preset with exact GELU; bias=False
covers the LayerNorms too), its parameter names as gptlab's (also Hugging Face GPT-2's, less the
``transformer.`` prefix rules), and its training ``ckpt.pt`` as a gptlab training checkpoint (AdamW's state moved
to gptlab's parameter order) so that ``--init_from=resume`` continues its run. nanoGPT models load into the
``gpt2`` preset here rather than through a second model implementation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from gptlab.checkpoint import FORMAT, clean_state_dict, weights_disagree
from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.gpt import ConfigurableGPT
from gptlab.model.loading import EXPECTED, arch_with_overrides, build_model, rename_keys, reversed_names


def model_from_nanogpt(ckpt: Any, **overrides: Any) -> ConfigurableGPT:
    """The model of a loaded nanoGPT checkpoint dict (its ``model_args`` and state dict)."""
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"not a nanoGPT checkpoint (found {keys}; expected keys 'model_args' and 'model'): expected {EXPECTED}"
        )
    args, state = _nanogpt_parts(ckpt, "a damaged nanoGPT checkpoint")
    config = arch_with_overrides(nanogpt_architecture(args), overrides)
    return build_model(config, rename_keys(state, NANOGPT_NAMES), "nanoGPT checkpoint", nanogpt_file_name)


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
    renamed = rename_keys(state, NANOGPT_NAMES)
    shapes = {k: tuple(v.shape) for k, v in renamed.items() if isinstance(v, Tensor)}
    if weights_disagree(args["n_layer"], (args["vocab_size"], args["n_embd"]), shapes) is not None:  # before any
        raise CheckpointError(f"{damaged}: its model_args do not fit its weights")  # model is built from them
    embedding, head = state.get("transformer.wte.weight"), state.get("lm_head.weight")
    untied = head is not None and embedding is not None and not _same_weight(head, embedding)
    base = nanogpt_architecture(args)
    try:
        arch = arch_with_overrides({**base, **({"weight_tying": False} if untied else {})}, {})
    except ConfigError as e:
        raise CheckpointError(f"{damaged}: {e}") from None
    settings = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    from gptlab.config.model import preset_family

    train = nanogpt_train_settings(settings)
    recorded = bool(train)
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


def nanogpt_train_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """gptlab's training keys in nanoGPT's recorded ``config`` (its train.py globals), as its run trained: off CUDA
    in float32, whatever 'float16' it recorded (its CPU and MPS path ignores dtype)."""
    from gptlab.config.train import TrainConfig

    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"init_from", "out_dir"}  # the command's
    train = {k: v for k, v in settings.items() if k in train_keys}
    if not str(settings.get("device", "cuda")).startswith("cuda"):
        train["dtype"] = "float32"
    return train


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
    to_nanogpt = dict(zip(rename_keys(dict.fromkeys(names), NANOGPT_NAMES), names))  # gptlab name -> nanoGPT's
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


def nanogpt_architecture(args: dict[str, Any]) -> dict[str, Any]:
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


NANOGPT_NAMES: list[tuple[str, str]] = [
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


def nanogpt_file_name(key: str) -> str:
    """A gptlab parameter's name in nanoGPT's (and Hugging Face GPT-2's) files."""
    return next(iter(rename_keys({key: None}, reversed_names(NANOGPT_NAMES))))
