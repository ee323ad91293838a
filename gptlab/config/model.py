"""ModelArchitectureConfig: every architecture choice as one validated dataclass, plus presets.

Presets are data (a dict of field values), in the manner of litgpt's named configs. Derived
sizes (head size, KV groups, FFN width) are properties, so overriding ``n_embd`` on a preset
recomputes them instead of carrying stale values.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gptlab.errors import ConfigError, did_you_mean, unknown_choice, without_suggestion

NORM_POSITIONS = ("pre", "post")
GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass
class ModelArchitectureConfig:
    """The architecture of a GPT: sizes, component choices and their options."""

    # Model size
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64, as nanoGPT does
    n_kv_head: int | None = None  # grouped-query attention; None means n_head (plain MHA)

    # Architecture choices (names from the component registries)
    normalization: str = "layernorm"
    activation: str = "gelu"
    position_encoding: str = "learned_absolute"
    norm_position: str = "pre"
    ffn_type: str = "standard"
    attention_backend: str = "sdpa"

    # Component options
    bias: bool = False  # biases in every Linear (norm biases follow ``normalization``)
    weight_tying: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    gelu_approximate: str = "none"  # 'tanh' is GPT-2's gelu_new
    # FFN width: d_ff if given, else 4*n_embd (x 2/3 for gated FFNs), x ffn_dim_multiplier,
    # rounded up to multiple_of, exactly as LLaMA computes its hidden size.
    d_ff: int | None = None
    ffn_dim_multiplier: float | None = None
    multiple_of: int = 1
    # Initialisation: N(0, init_std); residual projections N(0, init_std / sqrt(2 n_layer))
    init_std: float = 0.02
    scaled_residual_init: bool = True

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelArchitectureConfig:
        """A misspelt keyword is one ConfigError naming the nearest key (the dataclass's own __init__ raised
        "unexpected keyword argument" for ``ModelArchitectureConfig(n_layers=3)``)."""
        _reject_unknown_keys(kwargs)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads actually used."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def n_kv_groups(self) -> int:
        """Query heads per key/value head (1 for plain multi-head attention)."""
        return self.n_head // self.kv_heads

    @property
    def ffn_gated(self) -> bool:
        from gptlab.model.registry import FFN_REGISTRY

        return bool(getattr(FFN_REGISTRY.get_component(self.ffn_type), "gated", False))

    @property
    def gate_activation(self) -> str | None:
        """The activation a gated FFN fixes for its gate (SwiGLU's 'silu'); None where ``activation`` applies
        or the FFN says nothing (its class's ``gate_activation``)."""
        return getattr(_ffn_class(self.ffn_type), "gate_activation", None)

    @property
    def gelu_approximate_applies(self) -> bool:
        """Whether the activation reads ``gelu_approximate``: the built-in GELU, or a registered one taking
        ``approximate`` that a ``functools.partial`` has not bound."""
        from gptlab.model.components import takes_gelu_approximate

        return takes_gelu_approximate(self.activation)

    def unused_keys(self) -> frozenset[str]:
        """Fields this architecture does not read: a fixed gate's ``activation`` (and its GELU approximation),
        a GELU approximation where no GELU runs, RoPE's theta without a rotary encoding, the FFN width rule
        beside an explicit ``d_ff``. One rule for refusing typed keys and for comparing architectures."""
        unused = set()
        if self.gate_activation is not None:
            unused |= {"activation", "gelu_approximate"}
        elif not self.gelu_approximate_applies:
            unused.add("gelu_approximate")
        if not self.rotary:
            unused.add("rope_theta")
        if self.d_ff is not None:
            unused |= {"multiple_of", "ffn_dim_multiplier"}
        return frozenset(unused)

    def computed(self) -> dict[str, Any]:
        """What the architecture computes: its fields without the unused ones, the FFN width rule replaced
        by the width (two configs with equal ``computed()`` build the same model)."""
        fields = {k: v for k, v in self.to_dict().items() if k not in self.unused_keys()}
        for rule in ("multiple_of", "ffn_dim_multiplier"):
            fields.pop(rule, None)
        return {**fields, "d_ff": self.ffn_hidden_dim}

    @property
    def ffn_hidden_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        hidden = 4 * self.n_embd
        if self.ffn_gated:
            hidden = int(2 * hidden / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def rotary(self) -> bool:
        """The position encoding rotates queries and keys (RoPE, or a registered class with ``rotary = True``)."""
        return bool(getattr(_position_class(self.position_encoding), "rotary", False))

    @property
    def position_attention_bias(self) -> bool:
        """The position encoding adds a (1, n_head, T, T) attention bias (ALiBi, or ``attention_bias = True``)."""
        return bool(getattr(_position_class(self.position_encoding), "attention_bias", False))

    @property
    def final_norm(self) -> bool:
        """Pre-norm stacks end with a norm; in post-norm every block's output is normalized."""
        return self.norm_position == "pre"

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError (one line naming the key) for the first invalid value."""
        _check_types(self)
        _check_choices(self)
        # bounded: a mistyped size fails here in one line, not as an overflow inside PyTorch or a planner
        # that walks a million layers until the process runs out of memory
        _require("n_layer", self.n_layer, 0 < self.n_layer <= MAX_LAYERS, f"an integer in [1, {MAX_LAYERS:,}]")
        for key in ("n_embd", "n_head", "block_size", "vocab_size", "multiple_of"):
            value = getattr(self, key)
            _require(key, value, 0 < value <= MAX_SIZE, "a positive integer up to 2**31 - 1")
        for key in ("n_kv_head", "d_ff"):
            value = getattr(self, key)
            _require(key, value, value is None or 0 < value <= MAX_SIZE, "a positive integer up to 2**31 - 1, or None")
        _require("dropout", self.dropout, 0.0 <= self.dropout < 1.0, "a float in [0, 1)")
        for key in ("norm_eps", "rope_theta", "init_std"):
            value = getattr(self, key)
            _require(key, value, math.isfinite(value) and value > 0, "a finite float > 0")
        mult = self.ffn_dim_multiplier
        _require(
            "ffn_dim_multiplier",
            mult,
            mult is None or (math.isfinite(mult) and mult > 0),
            "a finite float > 0 or None",
        )
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                "the head size n_embd / n_head must be an integer"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} "
                "(each key/value head serves a whole group of query heads)"
            )
        if self.rotary and self.head_dim % 2:
            raise ConfigError(
                f"position_encoding={self.position_encoding!r} (rotary) needs an even head size, but n_embd / n_head = "
                f"{self.n_embd} / {self.n_head} = {self.head_dim}"
            )
        if not 0 < self.ffn_hidden_dim <= MAX_SIZE:  # (d_ff is bounded above: this is the multiplier's width)
            raise ConfigError(
                f"ffn_dim_multiplier={mult} gives an FFN width of {self.ffn_hidden_dim:.4g}: it must be a positive "
                "integer up to 2**31 - 1"
            )

    # ------------------------------------------------------------------ descriptions
    def get_architecture_name(self) -> str:
        """A short descriptive name such as ``pre-rmsnorm_rope_swiglu_untied``: every choice that changes
        what the model computes, so two ablations never share a name (sizes are left to the size line;
        a norm eps or RoPE theta other than the usual 1e-5 / 10000 is named)."""
        tanh = self.gelu_approximate_applies and self.gelu_approximate == "tanh"
        # a gated FFN whose gate is fixed (SwiGLU's SiLU) is named alone; one that takes the activation is not
        fixed = self.ffn_gated and self.gate_activation is not None
        ffn = self.ffn_type if fixed else f"{self.activation}{'_tanh' if tanh else ''}-{self.ffn_type}"
        norm = f"{self.norm_position}-{self.normalization}"
        if self.norm_eps != 1e-5:
            norm += f"-eps{self.norm_eps:g}"
        position = self.position_encoding
        if self.rotary and self.rope_theta != 10000.0:
            position += f"-theta{self.rope_theta:g}"
        parts = [norm, position, ffn]
        if self.kv_heads != self.n_head:
            parts.append(f"gqa{self.kv_heads}")
        parts.append("tied" if self.weight_tying else "untied")
        if self.bias:
            parts.append("bias")
        from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY, is_builtin

        if not is_builtin(ATTENTION_BACKEND_REGISTRY.get(self.attention_backend)):  # sdpa and manual compute the
            parts.append(f"attn-{self.attention_backend}")  # same function; a registered backend its own
        return "_".join(parts)

    def get_architecture_summary(self) -> str:
        """A few human-readable lines: sizes and each component choice."""
        if self.ffn_gated:
            gate = self.gate_activation or self.activation  # fixed by the FFN, else the activation it takes
            ffn = f"{self.ffn_type} ({gate} gate), d_ff={self.ffn_hidden_dim}"
        else:
            act = self.activation + (
                " (tanh approx.)" if self.gelu_approximate_applies and self.gelu_approximate == "tanh" else ""
            )
            ffn = f"{self.ffn_type} ({act}), d_ff={self.ffn_hidden_dim}"
        attn = f"{self.n_head} heads x {self.head_dim}"
        if self.kv_heads != self.n_head:
            attn += f", {self.kv_heads} KV heads (GQA, {self.n_kv_groups} per group)"
        pos = self.position_encoding + (f" (theta={self.rope_theta:g})" if self.rotary else "")
        lines = [
            f"Architecture: {self.get_architecture_name()}",
            f"  size:        {self.n_layer} layers, n_embd={self.n_embd}, "
            f"block_size={self.block_size}, vocab={self.vocab_size}",
            f"  attention:   {attn}, backend={self.attention_backend}",
            f"  positions:   {pos}",
            f"  norm:        {self.normalization} (eps={self.norm_eps:g}), {self.norm_position}-norm"
            + (", final norm" if self.final_norm else ""),
            f"  ffn:         {ffn}",
            f"  options:     bias={self.bias}, weight_tying={self.weight_tying}, dropout={self.dropout}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], plugins: object = None) -> ModelArchitectureConfig:
        """Build from a dict (e.g. a checkpoint's), rejecting unknown keys with a suggestion. ``plugins``:
        what the saved run recorded, named in the error if a component is unknown here."""
        _reject_unknown_keys(values)
        try:
            return cls(**values)
        except ConfigError as e:  # a saved architecture was valid when saved: an unknown component is one's own
            from gptlab.model.registry import ALL_REGISTRIES
            from gptlab.plugins import plugins_hint

            if getattr(e, "key", None) not in {registry.kind for registry in ALL_REGISTRIES}:
                raise  # another value (an edited record, an override): its own error, no plugin hint
            raise ConfigError(f"{without_suggestion(e)}{plugins_hint(plugins)}") from None


# Architecture keys a run may change on weights it loads (they do not change the weights' shapes).
FREE_ARCH_KEYS = ("dropout", "attention_backend")


def check_keys_take_effect(config: ModelArchitectureConfig, keys: Iterable[str]) -> ModelArchitectureConfig:
    """A key the user set (``keys``) that this architecture does not use is an error, not ignored: the
    activation of a built-in gated FFN (SwiGLU's gate is SiLU, GeGLU's exact GELU), a GELU
    approximation where no GELU runs, RoPE's theta without RoPE, or an FFN width rule beside an
    explicit ``d_ff``. Returns ``config``."""
    keys = set(keys) & config.unused_keys()
    gate = config.gate_activation
    if "activation" in keys and config.activation != gate:  # the gate's own name is harmless
        raise ConfigError(
            f"activation={config.activation!r} has no effect with ffn_type={config.ffn_type!r}, whose gate is "
            f"{gate}: use ffn_type='standard' to choose the activation, or drop --activation"
        )
    for key in ("multiple_of", "ffn_dim_multiplier"):
        if key in keys:
            raise ConfigError(
                f"{key}={getattr(config, key)!r} has no effect: d_ff={config.d_ff} sets the FFN width itself; "
                f"drop one of them"
            )
    if "rope_theta" in keys:
        raise ConfigError(
            f"rope_theta={config.rope_theta!r} has no effect: "
            f"position_encoding={config.position_encoding!r} is not rotary (a registered class says rotary = True)"
        )
    if "gelu_approximate" in keys and config.gelu_approximate != "none":
        if gate is not None:
            exact = "exact " if gate == "gelu" else ""
            raise ConfigError(
                f"gelu_approximate={config.gelu_approximate!r} has no effect: the gate of "
                f"ffn_type={config.ffn_type!r} is {exact}{gate}"
            )
        from gptlab.model.registry import ACTIVATION_REGISTRY

        component = ACTIVATION_REGISTRY.get(config.activation)
        bound = isinstance(component, functools.partial) and "approximate" in component.keywords
        why = "binds approximate= itself (a functools.partial)" if bound else "takes no approximate= (no GELU)"
        raise ConfigError(
            f"gelu_approximate={config.gelu_approximate!r} has no effect: activation={config.activation!r} {why}"
        )
    return config


def _ffn_class(name: str) -> Any:
    from gptlab.model.registry import FFN_REGISTRY

    return FFN_REGISTRY.get_component(name)


def _position_class(name: str) -> Any:
    from gptlab.model import components  # noqa: F401  (registers the built-in components)
    from gptlab.model.registry import POSITION_ENCODING_REGISTRY

    return POSITION_ENCODING_REGISTRY.get_component(name)


ARCH_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelArchitectureConfig))


def keep_init_signature(cls: type) -> None:
    """The fields as the class's signature (help(), an IDE, signature-driven parsers): its ``__new__``, which
    names a misspelt keyword, would show ``(*args, **kwargs)``."""
    signature = inspect.signature(cls.__init__)
    cls.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]


keep_init_signature(ModelArchitectureConfig)


def _reject_unknown_keys(values: dict[str, Any]) -> None:
    for key in values:
        if key not in ARCH_FIELDS:
            raise ConfigError(
                f"unknown architecture key {key!r}{did_you_mean(key, ARCH_FIELDS)}; "
                f"valid keys: {', '.join(ARCH_FIELDS)}"
            )


MAX_LAYERS = 10_000  # GPT-3 has 96, the largest published dense models a few hundred
MAX_SIZE = 2**31 - 1  # a width, head count, context or vocabulary: int32's range, far past any real model


def _require(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {allowed}")


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    return (type(None),) if annotation is type(None) else (annotation,)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; only bool fields take it
        return bool in allowed
    if float in allowed and isinstance(value, int):
        return True
    return isinstance(value, allowed)


def check_field_types(obj: Any) -> None:
    """Check every dataclass field of ``obj`` against its annotation (int, float, bool, str, None);
    an int given for a float field becomes a float, so saved configs keep their types."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, _typed(f.name, getattr(obj, f.name), hints[f.name]))


def check_arch_types(values: dict[str, Any]) -> dict[str, Any]:
    """Architecture values checked against their fields' annotations alone (no other validation: a
    fine-tune's typed keys, compared with the weights once they are loaded)."""
    hints = typing.get_type_hints(ModelArchitectureConfig)
    return {key: _typed(key, value, hints[key]) for key, value in values.items()}


def _typed(name: str, value: Any, hint: Any) -> Any:
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():  # np.int64(12), np.True_
        value = value.item()  # what a sweep's np.arange / np.linspace gives: its Python value, saved as such
    allowed = _allowed_types(hint)
    if not _type_ok(value, allowed):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        if float in allowed and isinstance(value, str) and _non_finite(value):  # --learning_rate=nan: a float,
            raise ConfigError(f"{name}={value} is invalid: expected a finite {names}")  # not text, to the user
        spelled = ""
        if bool in allowed and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            spelled = f" (write {value.lower() in ('true', 'yes', '1')}: Python's spelling, as nanoGPT's)"
        elif int in allowed and isinstance(value, float) and value.is_integer() and abs(value) < 1e18:  # 1e3, 5000.0
            spelled = f" (write {int(value)})"
        raise ConfigError(f"{name}={value!r} has type {type(value).__name__}, expected {names}{spelled}")
    return float(value) if float in allowed and int not in allowed and type(value) is int else value


def _non_finite(text: str) -> bool:
    """Whether ``text`` is how float() spells a non-finite number ('nan', 'inf', '-Infinity'), which
    ``ast.literal_eval`` leaves as text."""
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


_check_types = check_field_types


def _check_choices(cfg: ModelArchitectureConfig) -> None:
    from gptlab.model import (
        attention,  # noqa: F401
        components,  # noqa: F401  (registers the built-in components)
    )
    from gptlab.model.registry import ALL_REGISTRIES

    for registry in ALL_REGISTRIES:
        registry.get_component(getattr(cfg, registry.kind))
    if cfg.norm_position not in NORM_POSITIONS:
        raise unknown_choice("norm_position", cfg.norm_position, NORM_POSITIONS)
    if cfg.gelu_approximate not in GELU_APPROXIMATIONS:
        raise unknown_choice("gelu_approximate", cfg.gelu_approximate, GELU_APPROXIMATIONS)


# ---------------------------------------------------------------------- presets
# Each preset is data: the field values that differ from the dataclass defaults.
# Real LLaMA (Touvron et al. 2023): RMSNorm, RoPE, SwiGLU of width 8H/3 rounded up to a
# multiple of 256, no biases, untied embeddings. Set n_kv_head for grouped-query attention.
_LLAMA: dict[str, Any] = dict(
    normalization="rmsnorm",
    activation="silu",
    position_encoding="rope",
    rope_theta=10000.0,
    norm_position="pre",
    ffn_type="swiglu",
    multiple_of=256,
    bias=False,
    weight_tying=False,
    norm_eps=1e-5,
)

PRESETS: dict[str, dict[str, Any]] = {
    # Real GPT-2 (Radford et al. 2019): pre-norm with a final LayerNorm, biased LayerNorm and
    # Linear layers, tanh-approximated GELU, learned positions, tied embeddings.
    "gpt2": dict(
        normalization="layernorm",
        activation="gelu",
        gelu_approximate="tanh",
        position_encoding="learned_absolute",
        norm_position="pre",
        ffn_type="standard",
        bias=True,
        weight_tying=True,
        norm_eps=1e-5,
    ),
    "llama": _LLAMA,
    # Hybrid: LLaMA's attention side (RoPE, RMSNorm, no biases) with GPT-2's GELU MLP of width
    # 4H and tied embeddings: against `llama` it differs in the FFN and the tying, against `gpt2`
    # in positions, norms and biases (docs/architecture.md).
    "hybrid": dict(
        normalization="rmsnorm",
        activation="gelu",
        gelu_approximate="tanh",
        position_encoding="rope",
        norm_position="pre",
        ffn_type="standard",
        bias=False,
        weight_tying=True,
        norm_eps=1e-5,
    ),
    # The team's model_v1: the same architecture as LLaMA (its own name, so runs are labelled by it).
    "team": dict(_LLAMA),
    # Custom: the dataclass defaults (nanoGPT with bias=False); set any field you like.
    "custom": dict(),
}

# Few layers, small width: what tests and CI train on the CPU in seconds.
DEBUG_OVERRIDES: dict[str, Any] = dict(n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=256)


PRESET_FAMILY_KEYS = ("normalization", "position_encoding", "ffn_type", "norm_position")


def family_clash(name: str, arch: dict[str, Any], skip: frozenset[str] = frozenset()) -> list[str]:
    """The family keys (norm, positions, FFN, norm placement) of preset ``name`` that ``arch`` contradicts;
    ``skip``: keys the user set, which override the preset's."""
    preset = PRESETS[name]
    return [k for k in PRESET_FAMILY_KEYS if k in preset and k not in skip and preset[k] != arch.get(k)]


def preset_family(arch: dict[str, Any], prefer: Iterable[str | None] = ()) -> str:
    """The preset whose family ``arch`` has: the first of ``prefer`` that fits ('custom' fits anything;
    'team' and 'llama' share one family), else the first preset that does, else 'custom'."""
    for name in prefer:
        if name in PRESETS and not family_clash(name, arch):
            return name
    return next((name for name in PRESETS if name != "custom" and not family_clash(name, arch)), "custom")


def get_preset_config(name: str, **overrides: Any) -> ModelArchitectureConfig:
    """The preset ``name`` ('gpt2', 'llama', 'hybrid', 'team', 'custom') with field overrides."""
    if not isinstance(name, str) or name not in PRESETS:
        raise unknown_choice("arch_preset", name, PRESETS)
    _reject_unknown_keys(overrides)
    return ModelArchitectureConfig(**{**PRESETS[name], **overrides})


VOCAB_MULTIPLE = 64  # nanoGPT's padding of GPT-2's 50257 to 50304: matmul-friendly widths


def padded_vocab_size(vocab: int) -> int:
    """The vocab_size a run gives a dataset's vocabulary: rounded up to a multiple of 64."""
    return VOCAB_MULTIPLE * math.ceil(vocab / VOCAB_MULTIPLE)


def get_typed_config(name: str, overrides: dict[str, Any]) -> ModelArchitectureConfig:
    """``get_preset_config`` for keys typed on a command line, each of which must take effect
    (``check_keys_take_effect``)."""
    return check_keys_take_effect(get_preset_config(name, **overrides), overrides)


def get_debug_config(name: str, **overrides: Any) -> ModelArchitectureConfig:
    """The small "debug" flavour of a preset, for tests and quick CPU runs."""
    return get_preset_config(name, **{**DEBUG_OVERRIDES, **overrides})


__all__ = [
    "ARCH_FIELDS",
    "DEBUG_OVERRIDES",
    "PRESETS",
    "ModelArchitectureConfig",
    "check_field_types",
    "get_debug_config",
    "get_preset_config",
    "get_typed_config",
]
