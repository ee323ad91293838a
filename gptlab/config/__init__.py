"""Configuration: the architecture dataclass and its presets (model.py), the training settings (train.py),
config files (files.py), ``--key=value`` overrides (overrides.py) and a run resolved from them (resolve.py)."""

from gptlab.config.model import (
    DEBUG_OVERRIDES,
    PRESETS,
    ModelArchitectureConfig,
    get_debug_config,
    get_preset_config,
)

__all__ = ["DEBUG_OVERRIDES", "PRESETS", "ModelArchitectureConfig", "get_debug_config", "get_preset_config"]
