"""``--key=value`` command-line overrides, parsed the way nanoGPT's configurator does it,
but with ``ast.literal_eval`` only (no ``exec`` of user strings)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from typing import Any

from gptlab.errors import KEY_ALIASES, ConfigError


def _key_name(typed: str) -> str:
    """Our spelling of a key typed the way another tool spells it: ``max-iters`` (argparse's dashes) is
    ``max_iters``, torchtitan's ``training.steps`` is ``max_iters`` (a training key: the dotted aliases
    are; other aliases belong to one command or another, and its own key check suggests them)."""
    alias = KEY_ALIASES.get(typed) if "." in typed else None
    return alias or typed.replace("-", "_")


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``6e-4``, ``True``, ``None``, ``'x'``) or else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_overrides(args: Sequence[str], text_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Turn ``['--n_layer=4', '--bias=False']`` into ``{'n_layer': 4, 'bias': False}``. A key of
    ``text_keys`` (string settings) keeps its text when it reads as a number: ``--wandb_run_name=2024``."""
    text_keys = frozenset(text_keys)
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            hint = f" (write --{_key_name(arg[2:])}=VALUE)" if arg.startswith("--") and len(arg) > 2 else ""
            raise ConfigError(f"cannot parse argument {arg!r}: expected --key=value{hint}")
        key, text = arg[2:].split("=", 1)
        if not key.isidentifier():
            spelled = _key_name(key)
            hint = f": did you mean --{spelled}={text}?" if spelled.isidentifier() else ""
            raise ConfigError(f"cannot parse argument {arg!r}: {key!r} is not a valid key name{hint}")
        value = parse_value(text)
        if key in text_keys and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = text
        if key in out:
            raise ConfigError(f"--{key} is given twice ({out[key]!r}, then {value!r}): give it once")
        out[key] = value
    return out
