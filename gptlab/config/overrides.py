"""``--key=value`` command-line overrides, parsed the way nanoGPT's configurator does it,
but with ``ast.literal_eval`` only (no ``exec`` of user strings)."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from gptlab.errors import ConfigError


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``6e-4``, ``True``, ``None``, ``'x'``) or else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Turn ``['--n_layer=4', '--bias=False']`` into ``{'n_layer': 4, 'bias': False}``."""
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"cannot parse argument {arg!r}: expected --key=value")
        key, text = arg[2:].split("=", 1)
        if not key.isidentifier():
            raise ConfigError(f"cannot parse argument {arg!r}: {key!r} is not a valid key name")
        out[key] = parse_value(text)
    return out
