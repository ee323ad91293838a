"""Configuration: the architecture dataclass and its presets, and ``--key=value`` overrides."""

from gptlab.config.model import (
    DEBUG_OVERRIDES,
    PRESETS,
    ModelArchitectureConfig,
    get_debug_config,
    get_preset_config,
)

__all__ = ["DEBUG_OVERRIDES", "PRESETS", "ModelArchitectureConfig", "get_debug_config", "get_preset_config"]
