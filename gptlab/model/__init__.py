"""The model: components and registries, attention, the configurable GPT, weight conversion."""

from gptlab.model.attention import CausalSelfAttention
from gptlab.model.components import (
    ALiBiPositionEncoding,
    GatedFFN,
    PositionContext,
    PositionEncoding,
    RotaryPositionEncoding,
    build_activation,
    build_ffn,
    build_norm,
    build_position_encoding,
)
from gptlab.model.gpt import ConfigurableGPT, TransformerBlock
from gptlab.model.registry import (
    ACTIVATION_REGISTRY,
    ATTENTION_BACKEND_REGISTRY,
    FFN_REGISTRY,
    NORM_REGISTRY,
    POSITION_ENCODING_REGISTRY,
    Registry,
)

__all__ = [
    "ACTIVATION_REGISTRY",
    "ATTENTION_BACKEND_REGISTRY",
    "FFN_REGISTRY",
    "NORM_REGISTRY",
    "POSITION_ENCODING_REGISTRY",
    "ALiBiPositionEncoding",
    "CausalSelfAttention",
    "ConfigurableGPT",
    "GatedFFN",
    "PositionContext",
    "PositionEncoding",
    "Registry",
    "RotaryPositionEncoding",
    "TransformerBlock",
    "build_activation",
    "build_ffn",
    "build_norm",
    "build_position_encoding",
]
