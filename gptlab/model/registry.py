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

    def __setitem__(self, name: str, component: Any) -> None:
        """Add ``component`` as ``name``. A built-in name cannot be taken over: code that knows the
        built-ins by name (FLOPs, the memory planner, Hugging Face export) would describe the wrong
        component. Re-registering one's own name replaces it (a config file run twice)."""
        old = self.get(name)
        if old is not None and old is not component and _is_builtin(old) and not _is_builtin(component):
            raise ValueError(
                f"{self.kind} {name!r} is built in and cannot be replaced: register your component under another name"
            )
        super().__setitem__(name, component)

    def __delitem__(self, name: str) -> None:
        if _is_builtin(self.get(name)):
            raise ValueError(f"{self.kind} {name!r} is built in and cannot be removed")
        super().__delitem__(name)

    def pop(self, name: str, *default: Any) -> Any:  # type: ignore[override]
        if name in self:
            value = self[name]
            del self[name]
            return value
        return dict.pop(self, name, *default)

    def update(self, *args: Any, **kwargs: Any) -> None:  # dict's own update skips __setitem__
        for name, component in dict(*args, **kwargs).items():
            self[name] = component

    def setdefault(self, name: str, component: Any = None) -> Any:
        if name not in self:
            self[name] = component
        return self[name]

    def __ior__(self, other: Any) -> Registry:  # type: ignore[override,misc]
        self.update(other)
        return self

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


def _is_builtin(component: Any) -> bool:
    return (getattr(component, "__module__", None) or "").startswith("gptlab.")


NORM_REGISTRY = Registry("normalization")
ACTIVATION_REGISTRY = Registry("activation")
FFN_REGISTRY = Registry("ffn_type")
POSITION_ENCODING_REGISTRY = Registry("position_encoding")
ATTENTION_BACKEND_REGISTRY = Registry("attention_backend")
# Every registry, in config-key order: validation and the config-file loader walk them all.
ALL_REGISTRIES = (
    NORM_REGISTRY,
    ACTIVATION_REGISTRY,
    FFN_REGISTRY,
    POSITION_ENCODING_REGISTRY,
    ATTENTION_BACKEND_REGISTRY,
)
