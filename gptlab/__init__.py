"""gptlab: GPT architectures assembled from configuration, with verified efficiency figures."""

from gptlab.config.model import ModelArchitectureConfig, get_debug_config, get_preset_config, get_typed_config
from gptlab.errors import CheckpointError, ConfigError
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
