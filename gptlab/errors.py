"""The project's error types: user mistakes raise these and the CLI prints them as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


class CheckpointError(ValueError):
    """A file or directory is not a checkpoint gptlab can load; the message says what was expected."""


class DataError(ValueError):
    """A dataset is missing, unreadable or too small; the message says how to fix it."""


class GptlabError(Exception):
    """Base for errors whose message alone is the whole story for a user (printed as one line)."""


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, DataError, GptlabError)


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(key: str, value: object, choices: Iterable[str]) -> ConfigError:
    """Build the one-line error for a value that is not one of the allowed names."""
    names = sorted(choices)
    allowed = ", ".join(repr(n) for n in names)
    return ConfigError(f"{key}={value!r} is not one of {allowed}{did_you_mean(value, names)}")
