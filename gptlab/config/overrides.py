"""``--key=value`` command-line overrides, parsed the way nanoGPT's configurator does it,
but with ``ast.literal_eval`` only (no ``exec`` of user strings)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from typing import Any

from gptlab.errors import KEY_ALIASES, ConfigError, closest


def _key_name(typed: str) -> str:
    """Our spelling of a key typed the way another tool spells it: ``max-iters`` (argparse's dashes) is
    ``max_iters``, torchtitan's ``training.steps`` is ``max_iters`` (a training key: the dotted aliases
    are; other aliases belong to one command or another, and its own key check suggests them)."""
    alias = KEY_ALIASES.get(typed) if "." in typed else None
    return alias or typed.replace("-", "_")


# Flags of other tools (argparse's, HF Trainer's, litgpt's) that are a setting with a value here.
FLAG_SPELLINGS: dict[str, tuple[str, str]] = {
    "resume": ("init_from", "resume"),
    "bf16": ("dtype", "bfloat16"),
    "fp16": ("dtype", "float16"),
    "fp32": ("dtype", "float32"),
    "cpu": ("device", "cpu"),
    "cuda": ("device", "cuda"),
    "fsdp": ("use_fsdp", "True"),
    "zero1": ("use_zero1", "True"),
}

BOOL_WORDS = ("true", "false")

# other tools' words for the number of GPUs (torchrun's, accelerate's), and the key of a command that takes it
GPU_COUNT_FLAGS = frozenset({"gpus", "ngpus", "n_gpus", "num_gpus", "nproc_per_node", "num_processes", "world_size"})
GPU_COUNT_KEYS = ("world_size", "num_gpus")


def gpu_count_key(key: str, keys: Iterable[str] | None) -> str | None:
    """The command's own key for another tool's GPU-count flag (``compare --gpus 4``: --world_size, not the
    nearest spelling, --gpu, an accelerator's name)."""
    if keys is None or key in keys or key not in GPU_COUNT_FLAGS:
        return None
    return next((k for k in GPU_COUNT_KEYS if k in keys), None)


def gpu_count_error(key: str, value: object, keys: Iterable[str]) -> str | None:
    """The line for ``--gpus=4`` given to a command whose GPU count is another key: a number only (``--gpus=H100``
    is the accelerator's --gpu misspelt)."""
    count = gpu_count_key(key, keys)
    if count is None or isinstance(value, bool) or not isinstance(value, int):
        return None
    return f"--{key} is no option of this command: the number of GPUs is --{count}={value}"


def _takes(key: str, keys: Iterable[str] | None) -> bool:
    return keys is None or key in keys


# A training key under another command's own name (the planner's per-GPU accumulation)
SAME_SETTING: dict[str, str] = {"gradient_accumulation_steps": "grad_accum_steps"}


def setting_not_taken(key: str, keys: Iterable[str] | None, settings: Iterable[str]) -> str | None:
    """A training setting that this command does not take (``gptlab flops gpt2 --batch_size 4``), said as
    such: the nearest key it takes (``--block_size``) would be another setting, silently changed."""
    if keys is None or key in keys or key not in settings:
        return None
    own = SAME_SETTING.get(key)
    hint = f" (this command's --{own}, per GPU)" if own in keys else ""
    return f"--{key} is a training setting, which this command does not take{hint}"


def _nearest_taken(key: str, keys: Iterable[str], settings: Iterable[str]) -> tuple[str | None, str]:
    """The key a misspelt one means, if the command takes it; else None and what it means (``--bach_size`` is
    ``--batch_size``, a training setting that flops does not take, not its ``--block_size``)."""
    keys = list(keys)
    near = closest(key, [*keys, *(k for k in settings if k not in keys)])
    if near is not None and near not in keys:
        return None, f" (nor is --{near}, a training setting, which this command does not take)"
    return near, ""


def flag_hint(
    flag: str, bool_keys: Iterable[str] = (), keys: Iterable[str] | None = None, settings: Iterable[str] = ()
) -> str:
    """What to write for a ``--flag`` typed without a value: ``--eval_only=True`` for a setting that is a
    bool, ``--compile=False`` for argparse's ``--no-compile``, ``--dtype=bfloat16`` for ``--bf16``; only
    settings the command takes (``keys``; None: any) are suggested: a misspelt one's nearest key
    (``--max_iter``: ``--max_iters=VALUE``, not the name that the next try refuses); a key of ``settings``
    (known to gptlab) the command does not take is named as such."""
    key, bool_keys = _key_name(flag), frozenset(bool_keys)
    if (refused := setting_not_taken(key, keys, settings)) is not None:
        return refused
    if key in bool_keys and _takes(key, keys):
        return f"write --{key}=True"
    if key.startswith("no_") and key[3:] in bool_keys and _takes(key[3:], keys):
        return f"write --{key[3:]}=False"
    if key in FLAG_SPELLINGS and _takes(FLAG_SPELLINGS[key][0], keys):
        return "write --{}={}".format(*FLAG_SPELLINGS[key])
    if (count := gpu_count_key(key, keys)) is not None:
        return f"--{key} is no option of this command: the number of GPUs is --{count}=N"
    if keys is not None and key not in keys:
        # another tool's flag for a setting this command lacks is no misspelling (--cpu is not --gpu)
        near, meant = (None, "") if key in FLAG_SPELLINGS else _nearest_taken(key, keys, settings)
        if near is None:
            return f"--{key} is no option of this command{meant}"
        return flag_hint(near, bool_keys, keys, settings)
    return f"write --{key}=VALUE"


def refuse_legacy_launcher(arg: str) -> None:
    """A ConfigError for the legacy launcher's ``--local-rank=N`` (torch.distributed.launch; DeepSpeed's
    ``--local_rank``, also spaced), wherever it stands: torch.distributed.launch puts it before the script's
    own arguments. Every entry checks each argument with this first (the gptlab command, train.py's files and
    overrides, ``parse_overrides``)."""
    if arg.startswith("--") and _key_name(arg[2:].split("=", 1)[0]) == "local_rank":
        raise ConfigError(
            f"{arg!r} is the legacy launcher's argument (torch.distributed.launch, deepspeed): gptlab reads "
            "LOCAL_RANK from the environment, as torchrun sets it: launch with torchrun (or torch.distributed."
            "launch --use-env)"
        )


def pair_hint(
    flag: str,
    value: str,
    bool_keys: Iterable[str] = (),
    keys: Iterable[str] | None = None,
    settings: Iterable[str] = (),
) -> str:
    """What to write for argparse's ``--key value``: ``--key=value``, with Python's True / False (nanoGPT's
    spelling) for ``--compile false``; a config file is named first, without a flag. Only a key the command
    takes (``keys``; None: any) is suggested: a misspelt one's nearest (``--batch_sise 4``: ``--batch_size=4``,
    not the name that the next try refuses); a key of ``settings`` the command does not take is named as such."""
    key = _key_name(flag)
    if key in ("config", "config_file", "cfg", "config_path"):
        return f"name the config file first, without a flag: {value} --key=value ..."
    if (refused := setting_not_taken(key, keys, settings)) is not None:
        return refused
    unknown = ""
    if value.isdigit() and (count := gpu_count_key(key, keys)) is not None:  # ('--gpus H100' means --gpu)
        key, unknown = count, f"--{key} is no option of this command: the number of GPUs is --{count}: "
    elif keys is not None and key not in keys:
        near, meant = _nearest_taken(key, keys, settings)
        unknown = f"--{key} is no option of this command"
        if near is None:
            return unknown + meant
        key, unknown = near, f"{unknown}: "  # then written as the key it most likely means
    if value.lower() in BOOL_WORDS:
        value = value.capitalize()
    elif key in frozenset(bool_keys):  # '--bias llama': the flag alone, then an argument of its own
        return f"{unknown}--{key} takes True or False: write --{key}=True, and {value!r} as an argument of its own"
    return f"{unknown}write --{key}={value}"


# Settings whose value is any text (a prompt, a name), where a literal is still text: --start=None is the
# prompt 'None'. A path or choice keeps refusing one (--out_dir=None: a type error, not a folder 'None').
FREE_TEXT_KEYS: frozenset[str] = frozenset({"start", "sample_prompt", "wandb_run_name", "wandb_project"})


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``6e-4``, ``True``, ``None``, ``'x'``) or else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_overrides(
    args: Sequence[str],
    text_keys: Iterable[str] = (),
    bool_keys: Iterable[str] = (),
    keys: Iterable[str] | None = None,
    settings: Iterable[str] = (),
) -> dict[str, Any]:
    """Turn ``['--n_layer=4', '--bias=False']`` into ``{'n_layer': 4, 'bias': False}``. A key of
    ``text_keys`` (string settings) keeps its text when it reads as a number: ``--wandb_run_name=2024``, and
    one of ``FREE_TEXT_KEYS`` when it reads as any other literal: ``--start=None``;
    ``bool_keys`` (bool settings), ``keys`` (all the command takes; None: any) and ``settings`` (all gptlab
    knows) name the fix for a bare ``--eval_only`` or ``--bf16``."""
    text_keys = frozenset(text_keys)
    out: dict[str, Any] = {}
    for i, arg in enumerate(args):
        refuse_legacy_launcher(arg)  # '--local-rank=0', or spaced: before the spelling checks
        if arg.startswith("--") and "=" not in arg and len(arg) > 2 and i + 1 < len(args):
            following = args[i + 1]
            if not following.startswith("--"):  # argparse's spelling, '--n_kv_head 4'
                hint = pair_hint(arg[2:], following, bool_keys, keys, settings)
                raise ConfigError(f"cannot parse '{arg} {following}': {hint}")
        if not arg.startswith("--") or "=" not in arg:
            hint = (
                f" ({flag_hint(arg[2:], bool_keys, keys, settings)})" if arg.startswith("--") and len(arg) > 2 else ""
            )
            raise ConfigError(f"cannot parse argument {arg!r}: expected --key=value{hint}")
        key, text = arg[2:].split("=", 1)
        if not key.isidentifier():
            spelled = _key_name(key)
            hint = f": did you mean --{spelled}={text}?" if spelled.isidentifier() else ""
            raise ConfigError(f"cannot parse argument {arg!r}: {key!r} is not a valid key name{hint}")
        value = parse_value(text)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in text_keys and (number or (key in FREE_TEXT_KEYS and not isinstance(value, str))):
            value = text  # --wandb_run_name=2024; a prompt of Python source: --start=None, True, {}
        if key in out:
            raise ConfigError(f"--{key} is given twice ({out[key]!r}, then {value!r}): give it once")
        out[key] = value
    return out
