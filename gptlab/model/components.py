"""Norms, activations, feed-forward networks and position encodings, each in a registry.

Every built-in component is registered here; ``build_*`` factories look names up so that a
component registered from outside the package is usable from a config with no other change.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from gptlab.config.model import ModelArchitectureConfig

from gptlab.errors import ConfigError, first_line
from gptlab.model.registry import (
    ACTIVATION_REGISTRY,
    FFN_REGISTRY,
    NORM_REGISTRY,
    POSITION_ENCODING_REGISTRY,
    is_builtin,
)

# --------------------------------------------------------------------------- norms


@NORM_REGISTRY.register("layernorm")
class LayerNormWithBias(nn.LayerNorm):
    """LayerNorm with weight and bias (GPT-2)."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__(ndim, eps=eps, bias=True)


@NORM_REGISTRY.register("layernorm_nobias")
class LayerNormNoBias(nn.LayerNorm):
    """LayerNorm with a weight only (nanoGPT's ``bias=False``)."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__(ndim, eps=eps, bias=False)


@NORM_REGISTRY.register("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the weight, as LLaMA does."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.type_as(x)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def checked_component(
    registry: Any,
    name: str,
    interface: str,
    *args: Any,
    _trial: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``registry[name]``, checked to accept ``(*args, **kwargs)``: a registered component that cannot
    take its interface's arguments is one ConfigError naming the interface, when the model is built,
    not a TypeError from deep inside a forward. A builtin (torch.tanh, F.scaled_dot_product_attention) has no
    signature to read: ``_trial`` calls it with the interface's arguments instead, where the caller can."""
    component = registry.get_component(name)
    try:
        inspect.signature(component).bind(*args, **kwargs)
    except TypeError as e:
        raise _interface_error(registry, name, component, interface, e) from None
    except ValueError:  # no signature to read (a builtin): tried, where a trial is cheap, else its call says
        if _trial is not None:
            try:
                _trial(component)
            except TypeError as e:
                raise _interface_error(registry, name, component, interface, e) from None
            except Exception:  # it takes the interface but not this input (a CUDA-only kernel): its call says
                pass
    return component


def linear_parameter_ids(module: nn.Module) -> set[int]:
    """The ids of the parameters of ``module``'s ``nn.Linear`` layers: a registered position encoding's matmul
    weights, which count as non-embedding parameters where its table (a lookup) does not."""
    return {id(p) for m in module.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}


def _interface_error(registry: Any, name: str, component: Any, interface: str, error: Exception) -> ConfigError:
    return ConfigError(
        f"{registry.kind}={name!r}: {getattr(component, '__name__', component)!r} must take {interface} "
        f"({first_line(error)})"
    )


def _construct(registry: Any, name: str, interface: str, *args: Any, **kwargs: Any) -> Any:
    """``registry[name](*args, **kwargs)``, checked by ``checked_component`` (a builtin, which has no signature
    to check, by the call itself: torch.tanh registered as an activation is no factory of modules)."""
    component = checked_component(registry, name, interface, *args, **kwargs)
    try:
        return component(*args, **kwargs)
    except TypeError as e:
        if _has_signature(component):  # its own code's error: as it is
            raise
        raise _interface_error(registry, name, component, interface, e) from None


def _has_signature(component: Any) -> bool:
    try:
        inspect.signature(component)
    except (TypeError, ValueError):
        return False
    return True


def build_norm(name: str, ndim: int, eps: float = 1e-5) -> nn.Module:
    """Build the normalization layer registered as ``name``."""
    return _construct(NORM_REGISTRY, name, "(ndim, eps=...)", ndim, eps=eps)


# --------------------------------------------------------------------------- activations


@ACTIVATION_REGISTRY.register("gelu")
class GELU(nn.GELU):
    """GELU; ``approximate='tanh'`` is GPT-2's ``gelu_new``."""

    def __init__(self, approximate: str = "none", **_: Any) -> None:
        super().__init__(approximate=approximate)


@ACTIVATION_REGISTRY.register("silu")
class SiLU(nn.SiLU):
    def __init__(self, **_: Any) -> None:
        super().__init__()


@ACTIVATION_REGISTRY.register("relu")
class ReLU(nn.ReLU):
    def __init__(self, **_: Any) -> None:
        super().__init__()


@ACTIVATION_REGISTRY.register("leaky_relu")
class LeakyReLU(nn.LeakyReLU):
    def __init__(self, negative_slope: float = 0.01, **_: Any) -> None:
        super().__init__(negative_slope=negative_slope)


def build_activation(name: str, **options: Any) -> nn.Module:
    """Build the activation registered as ``name``; options a class does not use are ignored, and those a
    ``functools.partial`` binds are its own (``partial(GELU, approximate='tanh')`` stays tanh)."""
    component = ACTIVATION_REGISTRY.get(name) if isinstance(name, str) else None
    if isinstance(component, functools.partial):
        options = {key: value for key, value in options.items() if key not in component.keywords}
    return _construct(ACTIVATION_REGISTRY, name, "keyword options such as approximate= (**_ to ignore them)", **options)


def takes_gelu_approximate(name: str) -> bool:
    """Whether the activation registered as ``name`` reads ``gelu_approximate``: one with an ``approximate``
    parameter (the built-in GELU, or one's own) that no ``functools.partial`` binds. An unregistered name
    is 'gelu''s alone (validation says what is wrong with it)."""
    component = ACTIVATION_REGISTRY.get(name) if isinstance(name, str) else None
    if component is None:
        return name == "gelu"
    if isinstance(component, functools.partial) and "approximate" in component.keywords:
        return False
    try:
        parameter = inspect.signature(component).parameters.get("approximate")
    except (TypeError, ValueError):  # a builtin: no signature, no approximate
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


# --------------------------------------------------------------------------- feed-forward


def _mark_residual(linear: nn.Linear) -> nn.Linear:
    """Flag a projection that writes into the residual stream for GPT-2's scaled init."""
    linear.is_residual_projection = True  # type: ignore[attr-defined]
    return linear


@FFN_REGISTRY.register("standard")
class StandardFFN(nn.Module):
    """Linear -> activation -> linear (GPT-2's MLP); the only FFN that uses ``activation``."""

    gated = False

    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.w_in = nn.Linear(d_model, d_ff, bias=bias)
        self.act = activation
        self.w_out = _mark_residual(nn.Linear(d_ff, d_model, bias=bias))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w_out(self.act(self.w_in(x))))


class GatedFFN(nn.Module):
    """``w_out(gate_act(w_gate x) * w_value x)``; subclasses fix the gate activation and name it in
    ``gate_activation`` (FLOPs, summaries and the check that ``activation`` takes effect read it)."""

    gated = True
    gate_activation: str | None = None

    def __init__(
        self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_ff, bias=bias)
        self.w_value = nn.Linear(d_model, d_ff, bias=bias)
        self.w_out = _mark_residual(nn.Linear(d_ff, d_model, bias=bias))
        self.dropout = nn.Dropout(dropout)

    def gate(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w_out(self.gate(self.w_gate(x)) * self.w_value(x)))


@FFN_REGISTRY.register("swiglu")
class SwiGLUFFN(GatedFFN):
    """SwiGLU (LLaMA's MLP): the gate is SiLU whatever ``activation`` says."""

    gate_activation = "silu"

    def gate(self, x: Tensor) -> Tensor:
        return F.silu(x)


@FFN_REGISTRY.register("geglu")
class GeGLUFFN(GatedFFN):
    """GeGLU (Shazeer 2020): the gate is exact GELU whatever ``activation`` says."""

    gate_activation = "gelu"

    def gate(self, x: Tensor) -> Tensor:
        return F.gelu(x)


def builtin_ffn_matrices(ffn_type: str) -> int | None:
    """How many (H x D) matrices a built-in FFN multiplies by (GPT-2's 2, a GLU's 3: a ``GatedFFN`` subclass
    that only picks its gate); None for an FFN of one's own, whose structure only its code knows (the
    parameter counter and FLOPs then build or run it on the meta device)."""
    cls = FFN_REGISTRY.get_component(ffn_type)
    if cls is StandardFFN:
        return 2
    if isinstance(cls, type) and issubclass(cls, GatedFFN) and not {"__init__", "forward"} & set(vars(cls)):
        return 3
    return None


def runs_own_activation(config: ModelArchitectureConfig) -> bool:
    """Whether the FFN applies a registered activation of one's own (``activation``, not a fixed gate's):
    one that may hold parameters or multiply matrices, so a built-in FFN around it is built or run on the
    meta device (parameters, FLOPs) rather than written out by formula."""
    return config.gate_activation is None and not is_builtin(ACTIVATION_REGISTRY.get(config.activation))


def build_ffn(
    ffn_type: str, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module | str
) -> nn.Module:
    """Build the feed-forward network registered as ``ffn_type``; ``activation`` is a module or a
    registered activation's name (the design document passes ``config.activation``)."""
    if isinstance(activation, str):
        activation = build_activation(activation)
    interface = "the keywords d_model, d_ff, bias, dropout, activation"
    kwargs = dict(d_model=d_model, d_ff=d_ff, bias=bias, dropout=dropout, activation=activation)
    return _construct(FFN_REGISTRY, ffn_type, interface, **kwargs)


# --------------------------------------------------------------------------- positions


@dataclass
class PositionContext:
    """What a position encoding hands to every attention layer, computed once per forward.

    ``rotate`` is applied to queries and keys (B, n_head, T, head_dim); ``bias`` is an additive
    float attention bias (1, n_head, T, T) that already holds the causal mask.
    """

    rotate: Callable[[Tensor], Tensor] | None = None
    bias: Tensor | None = None


class PositionEncoding(nn.Module):
    """Base class: a position encoding may add to embeddings, rotate q/k, or bias attention.

    Subclasses override only the hooks they need. Constructors receive every size as a keyword
    (``max_seq_len, n_embd, n_head, head_dim, rope_theta``) and ignore the ones they do not use.
    Two class attributes tell the rest of gptlab what a subclass does: ``rotary = True`` (it rotates
    q/k: it takes ``rope_theta``, needs an even head size, and the memory planner counts RoPE's
    saved tensors) and ``attention_bias = True`` (its context carries a (1, n_head, T, T) bias, which
    the planner counts as ALiBi's).
    """

    rotary: bool = False
    attention_bias: bool = False

    def embed(self, tok_emb: Tensor) -> Tensor:
        """Return the input of the first block given token embeddings (B, T, n_embd)."""
        return tok_emb

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        return PositionContext()

    def crop(self, max_seq_len: int) -> None:
        """Shrink to a shorter maximum length (``ConfigurableGPT.crop_block_size``)."""

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers, e.g. after materialising from the meta device."""


@POSITION_ENCODING_REGISTRY.register("none")
class NoPositionEncoding(PositionEncoding):
    """NoPE: causal attention alone carries order."""

    def __init__(self, **_: Any) -> None:
        super().__init__()


@POSITION_ENCODING_REGISTRY.register("learned_absolute")
class LearnedPositionEncoding(PositionEncoding):
    """GPT-2's learned absolute position embeddings, added to the token embeddings."""

    def __init__(self, max_seq_len: int, n_embd: int, **_: Any) -> None:
        super().__init__()
        self.wpe = nn.Embedding(max_seq_len, n_embd)

    def embed(self, tok_emb: Tensor) -> Tensor:
        pos = torch.arange(tok_emb.shape[1], device=tok_emb.device)
        return tok_emb + self.wpe(pos)  # (B, T, C) + (T, C)

    def crop(self, max_seq_len: int) -> None:
        self.wpe.weight = nn.Parameter(self.wpe.weight[:max_seq_len].detach().clone())
        self.wpe.num_embeddings = max_seq_len


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim (the Hugging Face RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, h, T, head_dim) by position; cos/sin are (T, head_dim)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


@POSITION_ENCODING_REGISTRY.register("rope")
class RotaryPositionEncoding(PositionEncoding):
    """RoPE (Su et al. 2021) in the half-split layout used by LLaMA in ``transformers``."""

    rotary = True

    def __init__(self, max_seq_len: int, head_dim: int, rope_theta: float = 10000.0, **_: Any):
        super().__init__()
        self.max_seq_len, self.head_dim, self.theta = max_seq_len, head_dim, rope_theta
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim), persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        device = self.cos.device if self.cos.device.type != "meta" else None
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim)
        )
        t = torch.arange(self.max_seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (T, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        self.cos, self.sin = emb.cos(), emb.sin()

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        cos, sin = self.cos[:seq_len], self.sin[:seq_len]
        return PositionContext(rotate=lambda x: apply_rotary(x, cos, sin))

    def crop(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.cos, self.sin = self.cos[:max_seq_len], self.sin[:max_seq_len]


def alibi_slopes(n_head: int) -> Tensor:
    """Per-head slopes from the ALiBi paper (Press et al. 2022), valid for any head count."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_two_slopes(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    extra = power_of_two_slopes(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(power_of_two_slopes(closest) + extra)


@POSITION_ENCODING_REGISTRY.register("alibi")
class ALiBiPositionEncoding(PositionEncoding):
    """ALiBi: a per-head linear penalty on distance, added to the attention scores."""

    attention_bias = True

    def __init__(self, n_head: int, **_: Any) -> None:
        super().__init__()
        self.n_head = n_head
        self.register_buffer("slopes", torch.empty(n_head), persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        self.slopes = alibi_slopes(self.n_head).to(self.slopes.device if self.slopes.device.type != "meta" else None)

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        pos = torch.arange(seq_len, device=device)
        distance = (pos[None, :] - pos[:, None]).float()  # (T, T): j - i, <= 0 below the diagonal
        bias = self.slopes.to(device)[:, None, None] * distance  # (n_head, T, T)
        bias = bias.masked_fill(distance > 0, float("-inf"))  # causal mask folded in
        return PositionContext(bias=bias.unsqueeze(0))  # (1, n_head, T, T)


def build_position_encoding(name: str, max_seq_len: int, **sizes: Any) -> PositionEncoding:
    """Build the position encoding registered as ``name``.

    ``sizes`` carries ``n_embd, n_head, head_dim, rope_theta``; each class takes what it needs.
    """
    interface = "the keywords max_seq_len, n_embd, n_head, head_dim, rope_theta (**_ for those it does not use)"
    encoding = _construct(POSITION_ENCODING_REGISTRY, name, interface, max_seq_len=max_seq_len, **sizes)
    if not isinstance(encoding, PositionEncoding):  # the model calls its embed/context/crop hooks
        raise ConfigError(
            f"position_encoding={name!r}: {type(encoding).__name__!r} must subclass "
            "gptlab.model.components.PositionEncoding (it supplies the embed, context and crop hooks the model calls)"
        )
    return encoding


def position_encoding_for(config: ModelArchitectureConfig) -> PositionEncoding:
    """The position encoding ``config`` asks for, sized from it (the model's, and the parameter
    counter's on the meta device)."""
    return build_position_encoding(
        config.position_encoding,
        config.block_size,
        n_embd=config.n_embd,
        n_head=config.n_head,
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
    )
