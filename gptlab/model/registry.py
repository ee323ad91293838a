"""Name -> component registries.

A new component is one class plus one ``@REGISTRY.register("name")`` (or
``REGISTRY["name"] = cls``); configs name it and the factories build it, with no other change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gptlab.errors import unknown_choice

T = TypeVar("T")


class Registry(dict[str, Any]):
    """A dict from component name to class (or callable) whose misses list the valid names."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # the config key this registry serves, used in error messages

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@NORM_REGISTRY.register("mynorm")`` above a class."""

        def add(component: T) -> T:
            self[name] = component
            return component

        return add

    def get_component(self, name: str) -> Any:
        """Look ``name`` up; a miss raises ConfigError naming the key and the valid names."""
        try:
            return self[name]
        except (KeyError, TypeError):  # TypeError: unhashable value from a bad config
            raise unknown_choice(self.kind, name, self.keys()) from None


NORM_REGISTRY = Registry("normalization")
ACTIVATION_REGISTRY = Registry("activation")
FFN_REGISTRY = Registry("ffn_type")
POSITION_ENCODING_REGISTRY = Registry("position_encoding")
ATTENTION_BACKEND_REGISTRY = Registry("attention_backend")
