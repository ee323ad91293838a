"""gptlab: GPT architectures assembled from configuration, with verified efficiency figures."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gptlab.config.model import ModelArchitectureConfig, get_debug_config, get_preset_config, get_typed_config
from gptlab.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from gptlab.model.gpt import ConfigurableGPT

__version__ = "0.2.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConfigurableGPT",
    "ModelArchitectureConfig",
    "__version__",
    "get_debug_config",
    "get_preset_config",
    "get_typed_config",
]


def __getattr__(name: str) -> Any:
    """``gptlab.ConfigurableGPT`` (and a subpackage, ``gptlab.model``) imported when first asked for: importing
    torch takes seconds, and a command started (``train.py``, ``gptlab``) handles a Ctrl-C or a mistake only
    once its own code runs."""
    if name == "ConfigurableGPT":
        from gptlab.model.gpt import ConfigurableGPT

        return ConfigurableGPT
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":  # a module it imports is missing: that is the error to see
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
