"""ConfigurableGPT: a GPT assembled from a ModelArchitectureConfig.

Read top to bottom like nanoGPT's ``model.py``: a block, then the model. Every component
comes from a registry, so the model knows no concrete norm, FFN or position encoding.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import ConfigError
from gptlab.model.attention import CausalSelfAttention, autocast_input
from gptlab.model.components import (
    PositionContext,
    build_activation,
    build_ffn,
    build_norm,
    linear_parameter_ids,
    position_encoding_for,
)
from gptlab.model.loss import linear_cross_entropy, loss_dtype


class TransformerBlock(nn.Module):
    """One transformer layer, pre-norm or post-norm::

    pre-norm (GPT-2, LLaMA)            post-norm (Vaswani et al. 2017)
    x = x + attn(norm_1(x))            x = norm_1(x + attn(x))
    x = x + ffn(norm_2(x))             x = norm_2(x + ffn(x))
    """

    def __init__(self, config: ModelArchitectureConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.norm_1 = build_norm(config.normalization, config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, config.kv_heads, config.bias, config.dropout, config.attention_backend
        )
        self.norm_2 = build_norm(config.normalization, config.n_embd, config.norm_eps)
        activation = build_activation(config.activation, approximate=config.gelu_approximate)
        self.ffn = build_ffn(
            config.ffn_type, config.n_embd, config.ffn_hidden_dim, config.bias, config.dropout, activation
        )

    checkpointed = False  # set per block by ConfigurableGPT.gradient_checkpointing_enable()

    def forward(self, x: Tensor, pos: PositionContext) -> Tensor:
        if self.checkpointed:
            # backward recomputes the block from its input (non-reentrant); inside the module's call, so that
            # FSDP's hooks and torch.compile's wrapper of the block stay outside the checkpointed region
            return checkpoint(self._layer, x, pos, use_reentrant=False)
        return self._layer(x, pos)

    def _layer(self, x: Tensor, pos: PositionContext) -> Tensor:
        # the stream leaves in the dtype it came in: a bf16 stream under autocast (residual_cast) would otherwise
        # turn float32 at a post-norm block's norm (RMSNorm's float32 weight times its output; autocast's
        # float32 LayerNorm on CUDA). A no-op for every other stream.
        dtype = x.dtype
        if self.pre_norm:
            x = x + self.attn(self.norm_1(x), pos)
            return (x + self.ffn(self.norm_2(x))).to(dtype)
        x = self.norm_1(x + self.attn(x, pos)).to(dtype)
        return self.norm_2(x + self.ffn(x)).to(dtype)


# a sampling temperature's range besides 0 (greedy), as the command line takes it: below it float32 logits divided
# by it overflow to inf (torch.multinomial then fails on NaN probabilities); generate() itself takes any finite one
# above the lower bound (a larger one overflows only float16's logits, which it handles)
TEMPERATURE_RANGE = (1e-30, 1e30)


def _check_token_ids(idx: Tensor) -> None:
    """Token ids as the model takes them, (B, T) with T >= 1: a 1-D sequence was an IndexError inside it."""
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(
            f"idx of shape {tuple(idx.shape)}: expected token ids (B, T) with T >= 1 (one sequence: idx[None])"
        )


def _sampling_args(
    max_new_tokens: Any, temperature: Any, top_k: Any, vocab_limit: Any = None
) -> tuple[Any, Any, Any, Any]:
    """generate()'s arguments checked, one line each (the command line's checks, for the Python API): top_k=0
    was an IndexError mid-generation, a negative temperature silently drew the least likely tokens. A 0-d
    tensor (``torch.tensor(0.8)``) stands for its number, as it did before the checks."""
    from numbers import Integral, Real

    from gptlab.errors import ConfigError

    max_new_tokens, temperature, top_k, vocab_limit = (
        v.item() if isinstance(v, Tensor) and v.ndim == 0 else v
        for v in (max_new_tokens, temperature, top_k, vocab_limit)
    )

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} is invalid: expected an integer >= 0")
    low = TEMPERATURE_RANGE[0]
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, Real)
        or not (temperature == 0 or low <= temperature < math.inf)
    ):
        raise ConfigError(f"temperature={temperature!r} is invalid: expected 0 (greedy) or a finite float >= {low}")
    for key, value in (("top_k", top_k), ("vocab_limit", vocab_limit)):
        # vocab_limit as a slice bound: -5 masked the last five ids, 0 every one (torch.multinomial's inf/nan error)
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
            raise ConfigError(f"{key}={value!r} is invalid: expected None or an integer >= 1")
    return max_new_tokens, temperature, top_k, vocab_limit


def _takes_no_argument(function: Any) -> bool:
    """Whether ``function`` is callable with no arguments (every parameter has a default, or collects)."""
    if not callable(function):
        return False
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def _check_cropped(encoding: nn.Module, config: ModelArchitectureConfig) -> None:
    """Refuse a crop that left a length-sized tensor at its old length (a registered encoding whose ``crop()``
    is the base's no-op): its checkpoint would record the new block_size with weights no model of that size
    loads, so the fine-tune would train and save, and its resume and samples fail."""
    with torch.device("meta"):
        fresh = position_encoding_for(config)
    want = {name: tuple(t.shape) for name, t in fresh.state_dict().items() if isinstance(t, Tensor)}
    have = {name: tuple(t.shape) for name, t in encoding.state_dict().items() if isinstance(t, Tensor)}
    if have != want:
        name = next(k for k in sorted(want.keys() | have.keys()) if have.get(k) != want.get(k))
        raise ConfigError(
            f"position_encoding={config.position_encoding!r} cannot shrink to block_size={config.block_size}: after "
            f"its crop() {name!r} has shape {have.get(name)}, a model of that block_size {want.get(name)}; override "
            "crop(max_seq_len) in the encoding to shrink its length-sized tensors, or keep the block_size"
        )


class ConfigurableGPT(nn.Module):
    """A decoder-only language model; ``forward(idx, targets) -> (logits, loss)`` as in nanoGPT."""

    def __init__(self, config: ModelArchitectureConfig, *, init_weights: bool = True) -> None:
        """``init_weights=False`` leaves the parameters as the layers' constructors drew them, for a caller that
        loads every one next (drawing GPT-2's init for 350M parameters takes seconds)."""
        super().__init__()
        if isinstance(config, (str, Mapping)):  # a preset's name, a dict: said, not validate's AttributeError
            raise TypeError(
                f"ConfigurableGPT takes a ModelArchitectureConfig, not {type(config).__name__} {config!r:.60}: "
                "build one with get_preset_config('llama', n_layer=...) or ModelArchitectureConfig(**values)"
            )
        config.validate()
        self.config = copy.copy(config)  # its own: a caller's config edited for the next model leaves this one be
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_encoding = position_encoding_for(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm_f = build_norm(config.normalization, config.n_embd, config.norm_eps) if config.final_norm else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        # the tokenizer's vocabulary where vocab_size pads it (set by from_pretrained of a gptlab checkpoint):
        # generate() never samples the padding ids, which no tokenizer decodes
        self.vocab_limit: int | None = None
        # tokens per chunk of the fused LM head + cross-entropy (gptlab.model.loss); 0: plain logits.
        # A training setting, not architecture: the Trainer sets it from TrainConfig.loss_chunk_size.
        self.loss_chunk_size = 0
        # Also the Trainer's (TrainConfig.residual_dtype): under autocast, the embeddings' output in the autocast
        # dtype, so the residual stream and its gradient are too (as FSDP2's mixed precision keeps them)
        self.residual_cast = False
        if init_weights:
            self.apply(self._init_weights)
            self._init_components()

    # ------------------------------------------------------------------ init
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, std) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            if self.config.scaled_residual_init and getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def _init_components(self) -> None:
        """Call each submodule's own ``init_weights()`` after GPT-2's init, innermost first: a registered component
        that initialises its Linear layers itself (a zero-initialised gate) keeps its choice, which the pass above
        overwrote with N(0, init_std). Only a hook that takes no argument: one of another convention
        (torchtitan's ``init_weights(init_std)``, a function for ``self.apply``) is the component's own business."""
        for module in reversed(list(self.modules())):  # pre-order reversed: every child before its parent
            if module is not self and _takes_no_argument(hook := getattr(module, "init_weights", None)):
                hook()

    # ------------------------------------------------------------------ forward
    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, return_logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits for every position and the mean cross-entropy when ``targets`` is given
        (-1 targets are ignored); otherwise logits for the last position only and ``None``.
        With ``loss_chunk_size`` > 0 and targets, the loss comes from the chunked head and the
        logits are ``None``: never materialising them is the point (gptlab.model.loss).
        ``return_logits=False`` (with targets): ``(None, loss)``. The training step asks for it: under
        torch.compile every output of the graph gets a gradient in backward, so returned logits cost a
        (B, T, vocab) tensor of zeros and its addition into the loss's gradient, every micro-step."""
        _check_token_ids(idx)
        T = idx.shape[1]
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        x = self.drop(self.pos_encoding.embed(self.wte(idx)))  # (B, T, n_embd)
        if self.residual_cast:
            x = autocast_input(x)  # a no-op outside autocast
        pos = self.pos_encoding.context(T, idx.device)
        for block in self.blocks:
            x = block(x, pos)
        if self.norm_f is not None:
            x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab): all that sampling needs
        if self.loss_chunk_size > 0:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, self.loss_chunk_size)
        logits = self.lm_head(x)  # (B, T, vocab)
        # in fp32 also where no autocast upcasts it (FSDP's mixed precision gives bf16 logits): as torchtitan; a
        # float64 model's in float64. reshape/long: sliced (non-contiguous) or int32 targets, as the chunked loss takes
        flat = logits.view(-1, logits.size(-1))
        loss = F.cross_entropy(flat.to(loss_dtype(flat.dtype)), targets.reshape(-1).long(), ignore_index=-1)
        return (logits if return_logits else None), loss

    # ------------------------------------------------------------------ utilities
    def tie_weights(self) -> None:
        """Share the token embedding with the LM head (``weight_tying``), as one parameter."""
        if self.config.weight_tying:
            self.lm_head.weight = self.wte.weight

    def to_empty(self, *, device: torch.device | str | int | None, recurse: bool = True) -> ConfigurableGPT:
        """``nn.Module.to_empty``, tied weights kept tied (PyTorch's gives each module its own new tensor, so
        the embedding and the LM head would train as two matrices). Values stay uninitialised: load a state
        dict, and call ``init_buffers()``. Under FSDP2 the sharded parameters are left to FSDP."""
        super().to_empty(device=device, recurse=recurse)
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(self, FSDPModule):
            self.tie_weights()
        return self

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in backward instead of keeping them (``activation_checkpointing``;
        Hugging Face's name); parameter names, copies and pickling are unaffected."""
        for block in self.blocks:
            block.checkpointed = True

    def gradient_checkpointing_disable(self) -> None:
        for block in self.blocks:
            block.checkpointed = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(block.checkpointed for block in self.blocks)

    def init_buffers(self) -> None:
        """Recompute the non-persistent buffers (RoPE's tables, ALiBi's slopes), which no state dict
        carries: call it after ``to_empty()`` when the model was built on the meta device."""
        for module in self.modules():
            if module is not self and callable(getattr(module, "init_buffers", None)):
                module.init_buffers()

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out lookup tables that do no matmul
        (position embeddings, but for a registered encoding's Linear layers, and token embeddings unless
        they double as the LM head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            linear = linear_parameter_ids(self.pos_encoding)
            n -= sum(p.numel() for p in self.pos_encoding.parameters() if id(p) not in linear)
            if not self.config.weight_tying:
                n -= self.wte.weight.numel()
        return n

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context length, e.g. to fine-tune a pretrained model on shorter blocks."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size={block_size} must be in [1, {self.config.block_size}]")
        config = ModelArchitectureConfig(**{**self.config.to_dict(), "block_size": block_size})
        self.pos_encoding.crop(block_size)
        _check_cropped(self.pos_encoding, config)  # before the config says the new size
        self.config = config

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """AdamW that decays matrices (dim >= 2: linears, embeddings) but not biases or norms;
        fused (one kernel for all tensors) on CUDA and on the CPU, where it steps GPT-2 124M ~10x faster."""
        params = [p for p in self.parameters() if p.requires_grad]  # parameters() deduplicates tied weights
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        *,
        vocab_limit: int | None = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T); temperature 0 is greedy.
        ``vocab_limit`` keeps ids below the tokenizer's size when the vocabulary is padded (default: the
        model's ``vocab_limit``, which a gptlab checkpoint's tokenizer sets)."""
        _check_token_ids(idx)  # a 1-D prompt was an IndexError at its first crop
        max_new_tokens, temperature, top_k, vocab_limit = _sampling_args(
            max_new_tokens, temperature, top_k, vocab_limit
        )
        if vocab_limit is None:
            vocab_limit = self.vocab_limit
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :]
            if temperature != 0:  # before the mask: -inf / a negative or overflowing one is not -inf
                # in the logits' dtype, as nanoGPT divides (its samples, same seed); in float32 where float16 logits
                # over a small temperature overflow to inf (float16 only: bfloat16 has float32's range, whose
                # limits bound the temperature; a host sync per token, in float16 runs alone)
                scaled = logits / temperature
                if scaled.dtype == torch.float16 and not bool(torch.isfinite(scaled).all()):
                    scaled = logits.float() / temperature
                logits = scaled
            if vocab_limit is not None and vocab_limit < logits.size(-1):
                # masked, not cut off: multinomial draws one random number per entry, so the padded row keeps
                # the random stream of a model sampled without a limit (nanoGPT's samples, same seed)
                logits = logits.clone()
                logits[:, vocab_limit:] = -float("inf")
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    # ------------------------------------------------------------------ weights in and out
    @classmethod
    def from_pretrained(
        cls, src: Any, override_args: dict[str, Any] | None = None, **overrides: Any
    ) -> ConfigurableGPT:
        """Load a Hugging Face GPT-2 / LLaMA model (local directory, Hub name such as ``gpt2``, or
        in-memory ``transformers`` model) or a nanoGPT ``ckpt.pt``. ``overrides`` may change e.g. ``dropout``,
        also given as nanoGPT's positional dict: ``from_pretrained("gpt2", dict(dropout=0.0))``. Dropout is
        the source's (GPT-2's ``resid_pdrop`` 0.1, as in ``transformers``; nanoGPT's defaults to 0.0)."""
        from gptlab.model.convert import load_pretrained

        return load_pretrained(src, **{**(override_args or {}), **overrides})

    def save_pretrained(self, directory: str | Path, special_tokens: dict[str, int | None] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` that ``transformers`` loads; bos/eos/pad ids
        from ``special_tokens``, else those of the Hugging Face model this one was imported from."""
        from gptlab.model.hf import save_pretrained

        return save_pretrained(self, directory, special_tokens)

    # ------------------------------------------------------------------ telemetry (gptlab.telemetry)
    def estimate_mfu(self, fwdbwd_per_iter: float, dt: float, **kwargs: Any) -> float:
        """nanoGPT's ``model.estimate_mfu(fwdbwd_per_iter, dt)``, for scripts that call it: the MFU
        fraction, LM head included, against this CUDA device's dense bf16 peak (or ``precision=``,
        ``peak_flops=``), not nanoGPT's fixed A100 312 TFLOPS. NaN where no peak is known (a CPU): a
        number, so nanoGPT's running average and ``mfu*100`` print 'nan' instead of failing."""
        mfu = self.estimate_mfu_detailed(fwdbwd_per_iter, dt, **kwargs)["mfu"]
        return float("nan") if mfu is None else mfu

    def estimate_mfu_detailed(self, fwdbwd_per_iter: float, dt: float, **kwargs: Any) -> dict[str, Any]:
        """nanoGPT's ``estimate_mfu`` with the full breakdown: ``fwdbwd_per_iter`` sequences of
        ``block_size`` tokens per optimizer step on one rank, ``dt`` seconds per step; see
        ``gptlab.telemetry.estimate_mfu_detailed`` for the keywords (num_gpus, peak_flops, ...). The peak is
        that of the device the model is on: none on a CPU, though a GPU is present. HFU counts this model's
        own recomputation (``gradient_checkpointing_enable()``) and its device's attention backward."""
        from gptlab.telemetry.flops import DEVICE_TYPES, compute_flops
        from gptlab.telemetry.mfu import estimate_mfu_detailed

        device = next(self.parameters()).device
        if not {"gpu_name", "peak_flops", "peak"} & set(kwargs):  # the driver's name, looked up as detect_peak does
            from gptlab.telemetry.hardware import precision_key, table_peak

            name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
            kwargs["peak"] = table_peak(name, precision_key(kwargs.get("precision", "bf16")))
        kwargs.setdefault("activation_checkpointing", self.is_gradient_checkpointing)
        if "flops" not in kwargs:
            kwargs["flops"] = compute_flops(
                self.config,
                kwargs.get("seq_len"),
                activation_checkpointing=kwargs["activation_checkpointing"],
                # an accelerator of another kind (xpu) or the meta device counts as a GPU's kernels do
                device_type=device.type if device.type in DEVICE_TYPES else "cuda",
            )
        return estimate_mfu_detailed(self.config, fwdbwd_per_iter, dt, **kwargs)

    def get_memory_stats(self) -> dict[str, float | None]:
        """Allocator and process memory (GB) of the device this model lives on."""
        from gptlab.telemetry.memory import get_memory_stats

        return get_memory_stats(next(self.parameters()).device)

    def get_gradient_stats(self) -> dict[str, float | None]:
        """Gradient norm and value statistics, on the device with one host sync (sharding-aware)."""
        from gptlab.telemetry.gradients import get_gradient_stats

        return get_gradient_stats(self)
