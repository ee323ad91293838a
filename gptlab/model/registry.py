"""Name -> component registries.

A new component is one class plus one ``@REGISTRY.register("name")`` (or
``REGISTRY["name"] = cls``); configs name it and the factories build it, with no other change.
"""

from __future__ import annotations

import functools
import os
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
        """Add ``component`` as ``name``. A built-in name cannot be taken over, not even by another
        built-in class: code that knows the built-ins by name (FLOPs, the memory planner, Hugging Face
        export) would describe the wrong component. A name already registered by other code is refused
        too (two plugins, or two classes in one file, would otherwise leave whichever came last);
        the same definition registered again (a config file run twice, or run and then imported as a
        plugin) replaces it. The name must be one a config key can hold (a string without spaces or commas:
        plugins and overrides are comma-separated), the component callable."""
        if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
            raise ValueError(
                f"{self.kind} name {name!r} is invalid: expected a non-empty string without spaces or commas"
            )
        if not callable(component):
            raise ValueError(f"{self.kind} {name!r}: {component!r} is not callable (a class, or a function)")
        old = self.get(name)
        if old is not None and old is not component:
            if is_builtin(old):
                raise ValueError(
                    f"{self.kind} {name!r} is built in and cannot be replaced: register your component under "
                    "another name"
                )
            if _definition(old) != _definition(component) and not _redefined_interactively(old, component):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered as {_describe(old)}: cannot register "
                    f"{_describe(component)} under the same name"
                )
        super().__setitem__(name, component)

    def __delitem__(self, name: str) -> None:
        if is_builtin(self.get(name)):
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
            error = unknown_choice(self.kind, name, self.keys())
            if isinstance(name, str):  # one's own component not imported looked like a typo of a built-in
                from gptlab.plugins import imported_plugins

                tail = "; a component of your own is imported with --plugins=MODULE_OR_FILE"
                if imported := imported_plugins():  # passed already? none of those registers it (renamed, or another)
                    tail += f" (imported in this process: {', '.join(imported)}; none registers {self.kind} {name!r})"
                error.args = (f"{error}{tail}",)
            raise error from None


def is_builtin(component: Any) -> bool:
    """Whether ``component`` is one of gptlab's own (code elsewhere knows those by name)."""
    return (getattr(component, "__module__", None) or "").startswith("gptlab.")


def _redefined_interactively(old: Any, new: Any) -> bool:
    """A notebook cell (or an interactive session) run again after an edit: the same name in ``__main__``,
    whose code Jupyter files under a new name per run of the cell. The new definition is the one meant."""
    same_name = getattr(old, "__qualname__", None) == getattr(new, "__qualname__", object())
    return same_name and getattr(old, "__module__", None) == getattr(new, "__module__", None) == "__main__"


def _definition(component: Any) -> tuple[str, str]:
    """What identifies a definition across re-runs of its file (a config file run by train.py, then
    imported as the run's plugin, has no module name in common with itself): its qualified name and the
    file its code is in; a class with no code of its own (``class MyNorm(RMSNorm): pass``) is what it
    inherits and sets, wherever it is written."""
    # A partial or a callable instance: its function's or class's definition and what it holds, where that
    # holds no address (which differs on every run of its file); otherwise it is only ever itself.
    if isinstance(component, functools.partial):
        qualname, source = _definition(component.func)
        bound = ", ".join([*map(repr, component.args), *(f"{k}={v!r}" for k, v in component.keywords.items())])
        source = _unless_addressed(bound, source, component)
        return f"functools.partial({qualname}{', ' + bound if bound else ''})", source
    own_class = type(component).__module__ != "builtins"  # (a builtin function is named by its module below)
    if not isinstance(component, type) and not hasattr(component, "__code__") and callable(component) and own_class:
        qualname, source = _definition(type(component))
        state = repr(getattr(component, "__dict__", {}))
        return f"{qualname} instance {state}", _unless_addressed(state, source, component)
    qualname = getattr(component, "__qualname__", repr(component))
    if isinstance(component, type):  # the functions its body defines (inherited ones live elsewhere)
        codes = [getattr(getattr(v, "__func__", v), "__code__", None) for v in vars(component).values()]
    else:
        codes = [getattr(component, "__code__", None)]
    code = next((c for c in codes if c is not None), None)
    if code is not None:  # the file as run (by the path typed) or imported (by its absolute path)
        return qualname, os.path.realpath(code.co_filename)
    if isinstance(component, type):
        bases = ", ".join(f"{b.__module__}.{b.__qualname__}" for b in component.__bases__)
        own = {k: v for k, v in vars(component).items() if not k.startswith("__")}
        return qualname, f"subclass of {bases}" + (f" setting {own!r}" if own else "")
    return qualname, getattr(component, "__module__", None) or ""


def _unless_addressed(held: str, source: str, component: Any) -> str:
    return f"{source}, object {id(component):#x}" if " at 0x" in held else source


def _describe(component: Any) -> str:
    qualname, source = _definition(component)
    return f"{qualname} ({source})" if source else qualname


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
