"""The model's parameter and buffer shapes, derived from the config alone, in ``model.parameters()`` order.

Memory planning needs the exact tensors (ZeRO-1 partitions whole tensors, FSDP2 shards each
one on dim 0), not just a count. Built-in components are written out analytically; a
component registered from outside the package is measured by building just that component on
the meta device, so the plan stays exact for any registered norm, FFN or position encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from gptlab.config.model import ModelArchitectureConfig

FP32_BYTES = 4


class TensorShape(NamedTuple):
    """A named tensor shape; ``matmul`` marks weights that a Linear multiplies (autocast copies them).
    (A tuple: a deep model has millions, and a tuple is built several times faster than a dataclass.)"""

    name: str
    shape: tuple[int, ...]
    matmul: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _meta_params(module_factory: object, prefix: str, linear_only: bool = False) -> list[TensorShape]:
    """A registered component's parameters, built on the meta device; ``matmul`` for every matrix, or with
    ``linear_only`` for the weights of its ``nn.Linear`` layers alone (a position table is looked up, not
    multiplied: left out of the non-embedding count, as the model's ``get_num_params`` does)."""
    with torch.device("meta"):
        module = module_factory()  # type: ignore[operator]
    from gptlab.model.components import linear_parameter_ids

    linear = linear_parameter_ids(module)
    return [
        TensorShape(f"{prefix}.{n}", tuple(p.shape), id(p) in linear if linear_only else p.dim() >= 2)
        for n, p in module.named_parameters()
    ]


BUILTIN_NORMS = ("layernorm", "layernorm_nobias", "rmsnorm")  # written out here; any other is built on meta


def _norm(config: ModelArchitectureConfig, prefix: str) -> list[TensorShape]:
    H = config.n_embd
    if config.normalization == "layernorm":
        return [TensorShape(f"{prefix}.weight", (H,)), TensorShape(f"{prefix}.bias", (H,))]
    if config.normalization in BUILTIN_NORMS:
        return [TensorShape(f"{prefix}.weight", (H,))]
    from gptlab.model.components import build_norm

    return _meta_params(lambda: build_norm(config.normalization, H, config.norm_eps), prefix)


def _linear(prefix: str, d_in: int, d_out: int, bias: bool) -> list[TensorShape]:
    out = [TensorShape(f"{prefix}.weight", (d_out, d_in), matmul=True)]
    return [*out, TensorShape(f"{prefix}.bias", (d_out,))] if bias else out


def _builtin_ffn_matrices(config: ModelArchitectureConfig) -> int | None:
    """A built-in FFN's matrices (2 or 3), written out here; None where the FFN is built on the meta device: one of
    one's own, or a built-in one around an activation of one's own (which may hold parameters and buffers)."""
    from gptlab.model.components import builtin_ffn_matrices, runs_own_activation

    return None if runs_own_activation(config) else builtin_ffn_matrices(config.ffn_type)


def _built_ffn(config: ModelArchitectureConfig) -> Callable[[], object]:
    """The FFN's factory, its activation built off the meta device (its own __init__ may read a value)."""
    from gptlab.model.components import build_activation, build_ffn

    act = build_activation(config.activation, approximate=config.gelu_approximate)
    return lambda: build_ffn(config.ffn_type, config.n_embd, config.ffn_hidden_dim, config.bias, config.dropout, act)


def _ffn(config: ModelArchitectureConfig, prefix: str) -> list[TensorShape]:
    H, D, b = config.n_embd, config.ffn_hidden_dim, config.bias
    matrices = _builtin_ffn_matrices(config)
    if matrices == 2:
        return _linear(f"{prefix}.w_in", H, D, b) + _linear(f"{prefix}.w_out", D, H, b)
    if matrices == 3:
        return (
            _linear(f"{prefix}.w_gate", H, D, b)
            + _linear(f"{prefix}.w_value", H, D, b)
            + _linear(f"{prefix}.w_out", D, H, b)
        )
    return _meta_params(_built_ffn(config), prefix)


def _positions(config: ModelArchitectureConfig) -> list[TensorShape]:
    if config.position_encoding == "learned_absolute":
        return [TensorShape("pos_encoding.wpe.weight", (config.block_size, config.n_embd))]
    if config.position_encoding in ("rope", "alibi", "none"):
        return []
    from gptlab.model.components import position_encoding_for

    return _meta_params(lambda: position_encoding_for(config), "pos_encoding", linear_only=True)


def _model_parts(config: ModelArchitectureConfig) -> tuple[list[TensorShape], list[TensorShape], list[TensorShape]]:
    """The tensors before the blocks, one block's (named within it), and those after the blocks."""
    H, V, b = config.n_embd, config.vocab_size, config.bias
    q_dim, kv_dim = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    # The token embedding is multiplied only when it doubles as the LM head.
    before = [TensorShape("wte.weight", (V, H), matmul=config.weight_tying), *_positions(config)]
    # every block is built from the same config: one block's tensors (a registered component built once on
    # the meta device, not once per layer)
    block = [
        *_norm(config, "norm_1"),
        *_linear("attn.qkv", H, q_dim + 2 * kv_dim, b),
        *_linear("attn.out_proj", q_dim, H, b),
        *_norm(config, "norm_2"),
        *_ffn(config, "ffn"),
    ]
    after = _norm(config, "norm_f") if config.final_norm else []
    if not config.weight_tying:
        after.append(TensorShape("lm_head.weight", (V, H), matmul=True))
    return before, block, after


def parameter_shapes(config: ModelArchitectureConfig) -> list[TensorShape]:
    """Every parameter tensor of ``ConfigurableGPT(config)``, in ``model.parameters()`` order (tied
    weights once)."""
    before, block, after = _model_parts(config)
    shapes = list(before)
    for i in range(config.n_layer):
        shapes += [TensorShape(f"blocks.{i}.{t.name}", t.shape, t.matmul) for t in block]
    return shapes + after


def _meta_buffer_bytes(module_factory: object) -> int:
    with torch.device("meta"):
        module = module_factory()  # type: ignore[operator]
    return sum(b.numel() * b.element_size() for b in module.buffers())


def buffer_bytes(config: ModelArchitectureConfig) -> int:
    """Bytes of the non-trainable buffers: RoPE's cos/sin tables, ALiBi's slopes (float32), and a registered
    component's own (a position encoding's tables, a random-feature FFN's projection, a norm's statistics),
    measured on the meta device, each norm and FFN once per layer."""
    from gptlab.model import components as c

    H = config.n_embd
    if config.position_encoding == "rope":
        total = 2 * config.block_size * config.head_dim * FP32_BYTES
    elif config.position_encoding == "alibi":
        total = config.n_head * FP32_BYTES
    elif config.position_encoding in ("learned_absolute", "none"):
        total = 0
    else:
        total = _meta_buffer_bytes(lambda: c.position_encoding_for(config))
    if config.normalization not in BUILTIN_NORMS:  # built-in norms hold none
        norms = 2 * config.n_layer + bool(config.final_norm)
        total += norms * _meta_buffer_bytes(lambda: c.build_norm(config.normalization, H, config.norm_eps))
    if _builtin_ffn_matrices(config) is None:  # built-in FFNs hold none
        total += config.n_layer * _meta_buffer_bytes(_built_ffn(config))
    return total


def count_parameters(config: ModelArchitectureConfig, *, non_embedding: bool = False) -> int:
    """``ConfigurableGPT(config).get_num_params(non_embedding)`` without building the model: ``non_embedding``
    leaves out the lookup tables that do no matmul (the position encoding's parameters but for its Linear
    layers' weights, and the token embedding unless it doubles as the LM head)."""
    before, block, after = _model_parts(config)  # one block, times n_layer: any depth in microseconds
    if non_embedding:
        before = [s for s in before if s.matmul or (s.name != "wte.weight" and not s.name.startswith("pos_encoding."))]
    return sum(s.numel for s in (*before, *after)) + config.n_layer * sum(s.numel for s in block)


__all__ = ["TensorShape", "buffer_bytes", "count_parameters", "parameter_shapes"]
