"""The ``gptlab`` command. User mistakes print one line and exit 2, never a stack trace."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import itertools
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from gptlab.config.model import PRESETS, get_preset_config
from gptlab.config.overrides import pair_hint, parse_overrides, refuse_legacy_launcher
from gptlab.errors import (
    PATH_ERRORS,
    USER_ERRORS,
    ConfigError,
    compiler_missing,
    did_you_mean,
    is_out_of_memory,
    storage_refused,
)
from gptlab.plugins import add_plugins_option, import_plugins
from gptlab.train.signals import TrainingInterrupted, report_interrupted


def _cmd_arch(args: argparse.Namespace, extra: list[str]) -> int:
    from gptlab.config.files import names_a_file
    from gptlab.config.model import ARCH_FIELDS
    from gptlab.config.train import BOOL_KEYS, TEXT_KEYS, TRAIN_FIELDS
    from gptlab.model.gpt import ConfigurableGPT
    from gptlab.telemetry.cli import vocab_hint

    overrides = parse_overrides(extra, TEXT_KEYS, BOOL_KEYS, ARCH_FIELDS, TRAIN_FIELDS)

    for key in overrides:
        if key == "arch_preset" and not names_a_file(args.preset):
            raise ConfigError(f"give the preset as the argument (gptlab arch {overrides[key]}), not --arch_preset")
        if key in TRAIN_FIELDS and key != "arch_preset":
            raise ConfigError(f"--{key} is a training setting, which 'gptlab arch' does not take{vocab_hint(key)}")
        if key not in ARCH_FIELDS and key != "arch_preset":
            raise ConfigError(
                f"unknown option --{key}{did_you_mean(key, [*ARCH_FIELDS, 'no_params', 'plugins'])}: 'gptlab arch' "
                "takes --no_params, --plugins and the architecture keys"
            )
    from gptlab.compare import resolve_architecture

    arch = resolve_architecture(args.preset, overrides)  # a preset, or a config file's architecture
    config = arch.config
    for note in arch.notes:  # what it assumes beyond the config (a fine-tune's weights, a vocabulary)
        print(f"note: {note}")
    import torch

    from gptlab.telemetry.params import count_parameters

    with torch.device("meta"):  # one block, built first (a component that cannot be built is the only line)
        ConfigurableGPT(dataclasses.replace(config, n_layer=1))
    print(config.get_architecture_summary())
    if not args.no_params:  # counted from the config: seconds for any depth, where building 10**5 blocks takes hours
        total, non_emb = count_parameters(config), count_parameters(config, non_embedding=True)
        print(f"  parameters:  {total / 1e6:.2f}M total, {non_emb / 1e6:.2f}M excluding embedding lookups")
    return 0


def _cmd_presets(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ConfigError(f"'gptlab presets' takes no arguments, got {' '.join(extra)}")
    for name in PRESETS:
        print(f"{name:8s} {get_preset_config(name).get_architecture_name()}")
    return 0


class _ExactOptions(argparse.ArgumentParser):
    """No prefix matching of options: the commands also take --key=value architecture keys, and
    ``--activation`` must not be read as ``--activation_checkpointing``. A mistake is one line, as the
    commands' own errors are (argparse prints its usage block first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._refuse_repeats(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

    def _refuse_repeats(self, argv: list[str]) -> None:
        """An option with a value given twice is a mistake to name, not a silent 'the last one wins' (as
        the --key=value keys' "given twice")."""
        single = {
            opt: action
            for action in self._actions
            if isinstance(action, argparse._StoreAction)
            for opt in action.option_strings
        }
        seen: dict[str, str] = {}
        for item in argv:
            if item == "--":
                break
            action = single.get(item.split("=", 1)[0])
            if action is None:
                continue
            if action.dest in seen:
                self.error(f"{action.option_strings[0]} is given twice")
            seen[action.dest] = item

    def error(self, message: str) -> NoReturn:
        hint = ""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            hint = did_you_mean(
                choice.group(1), re.findall(r"'([^']*)'", choice.group(2)) or choice.group(2).split(", ")
            )
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            options = [opt.lstrip("-") for action in self._actions for opt in action.option_strings]
            name = unknown.group(1).split("=", 1)[0].lstrip("-")
            hint = did_you_mean(name, options)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} -h)\n")


# Commands whose arguments are nanoGPT's ([CONFIG.py ...] [--key=value ...], in that order): handed over
# whole, so that `--device cpu` gets train.py's "write --device=cpu", not "config file 'cpu' does not exist".
RAW_COMMANDS: dict[str, str] = {"train": "run_train", "sample": "run_sample"}


def torch_version() -> str:
    """torch's version without importing it (a second of start-up for `--version`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def build_parser() -> argparse.ArgumentParser:
    parser = _ExactOptions(
        prog="gptlab",
        description="Train GPT architectures assembled from configuration, with verified FLOPs, MFU and memory "
        "figures. Start with `gptlab train` (a two-minute CPU run); `gptlab COMMAND -h` explains each command.",
    )
    from gptlab import __version__

    parser.add_argument("-V", "--version", action="version", version=f"gptlab {__version__} (torch {torch_version()})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ExactOptions)
    arch = sub.add_parser(
        "arch",
        help="describe a preset architecture with --key=value overrides",
        description="Print the architecture summary and parameter count of PRESET with overrides, "
        "e.g. gptlab arch llama --n_layer=6 --n_kv_head=4",
    )
    arch.add_argument(
        "preset",
        nargs="?",
        default="gpt2",
        help=f"one of {', '.join(PRESETS)} (default gpt2), a config file, a run directory, a checkpoint (ckpt.pt, "
        "ckpt-ITER.dcp, nanoGPT's ckpt.pt) or a Hugging Face model folder",
    )
    arch.add_argument("--no-params", "--no_params", action="store_true", help="skip counting parameters")
    add_plugins_option(arch)
    arch.set_defaults(func=_cmd_arch)
    presets = sub.add_parser(
        "presets",
        help="list the preset architectures",
        description="List the preset architectures (gpt2, llama, hybrid, team, custom) and what each sets.",
    )
    presets.set_defaults(func=_cmd_presets)
    # Each concern registers its own subcommands: register(subparsers) adds parsers whose
    # defaults carry func(args, extra_args) -> exit code.
    import importlib

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


# Modules that add subcommands (each defines register(subparsers)).
COMMAND_MODULES: tuple[str, ...] = (
    "gptlab.data.cli",
    "gptlab.telemetry.cli",
    "gptlab.train.cli",
    "gptlab.tools_cli",
    "gptlab.export_cli",
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run_command(argv)
    except KeyboardInterrupt:  # Ctrl-C outside a training step (importing torch, say), or twice: no traceback
        print("gptlab: aborted (Ctrl-C); files already written are as they were", file=sys.stderr)
        return 130


# Commands that take architecture and training keys as --key=value beside their own options.
OVERRIDE_COMMANDS: frozenset[str] = frozenset({"arch", "flops", "plan", "compare"})


def _refuse_spaced_overrides(argv: Sequence[str], extra: Sequence[str], args: argparse.Namespace) -> None:
    """argparse's ``--n_kv_head 4`` for an override (a key the command's parser leaves to ``--key=value``):
    argparse took the 4 for the PRESET argument, so the override reached the command without its value. A
    misspelt key is written as the nearest the command takes (its options, the architecture keys; compare's
    training keys), not as the typo the next try refuses."""
    from gptlab.config.model import ARCH_FIELDS
    from gptlab.config.train import BOOL_KEYS, TRAIN_FIELDS

    options = [k for k in vars(args) if k not in ("preset", "func", "command")]
    keys = [*ARCH_FIELDS, "arch_preset", *options, *(TRAIN_FIELDS if args.command == "compare" else ())]
    for flag, following in itertools.pairwise(argv):
        if flag in extra and flag.startswith("--") and "=" not in flag and not following.startswith("-"):
            hint = pair_hint(flag[2:], following, BOOL_KEYS, keys, TRAIN_FIELDS)
            raise ConfigError(f"cannot parse '{flag} {following}': {hint}")


# The commands' on/off options (argparse's store_true, so that `--hf run out` keeps its positionals), which users
# also spell as training's settings are spelled: `--train=True`, `--hf=False`.
SWITCHES: frozenset[str] = frozenset({"--train", "--hf", "--deep", "--json", "--no-params", "--no_params"})


def _refuse_one_dash(argv: list[str]) -> None:
    """``-hf``, ``-dtype=bfloat16``: an option one dash short (argparse read ``-hf`` as -h with an argument 'f')."""
    for arg in argv:
        if re.match(r"-[A-Za-z_][\w-]+(=|$)", arg) and arg.split("=")[0] not in ("-h", "-V"):
            raise ConfigError(f"cannot parse argument {arg!r}: write -{arg} (two dashes)")


def _switch_values(argv: list[str]) -> list[str]:
    """``--train=True`` -> ``--train``, ``--train=False`` -> nothing, for the SWITCHES (argparse refused them,
    "ignored explicit argument"); another value is one line."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if not eq or flag not in SWITCHES:
            out.append(arg)
        elif value.lower() in ("1", "true", "yes"):
            out.append(flag)
        elif value.lower() not in ("0", "false", "no"):
            raise ConfigError(f"{arg}: expected {flag}=True or {flag}=False (or {flag} alone)")
    return out


def _run_command(argv: Sequence[str] | None) -> int:
    from gptlab.logging import replace_unencodable_output

    replace_unencodable_output()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # `python -m torch.distributed.launch -m gptlab train ...` puts --local-rank=N before the command
        for arg in argv:
            refuse_legacy_launcher(arg)
    except ConfigError as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] in RAW_COMMANDS and {"-V", "--version"} & set(argv[1:]):
        argv = ["--version"]  # `gptlab train --version`: the command's version is gptlab's
    if argv and argv[0] in RAW_COMMANDS and not {"-h", "--help"} & set(argv[1:]):
        import gptlab.train.cli

        run = getattr(gptlab.train.cli, RAW_COMMANDS[argv[0]])
        command = lambda: run(argv[1:])  # noqa: E731
    else:
        try:
            _refuse_one_dash(argv)
            argv = _switch_values(argv)
        except ConfigError as e:
            print(f"gptlab: error: {e}", file=sys.stderr)
            return 2
        args, extra = build_parser().parse_known_args(argv)

        def command() -> int:
            if args.command in OVERRIDE_COMMANDS:  # the others refuse an unknown option by its name
                _refuse_spaced_overrides(argv, extra, args)
            import_plugins(getattr(args, "plugins", ""))  # before the command reads an architecture
            return args.func(args, extra)

    try:
        return command()
    except TrainingInterrupted as e:  # stopped on SIGTERM / Ctrl-C after checkpointing: a shell's status
        # `gptlab train` (a RAW_COMMANDS entry) logs to stdout; `compare --train`'s runs log to console.log files
        return report_interrupted(e, "gptlab: ", logged_to_stdout=bool(argv) and argv[0] in RAW_COMMANDS)
    except (MemoryError, RuntimeError) as e:
        if (missing := compiler_missing(e)) is not None:  # `gptlab sample --compile=True`, say
            print(f"gptlab: error: {missing}", file=sys.stderr)
            return 2
        if not is_out_of_memory(e):
            raise
        text = str(e).strip()
        first = text.splitlines()[0][:300] if text else type(e).__name__
        print(
            f"gptlab: error: out of memory ({first}): ask for less (a smaller --size, --batch_size, ...)",
            file=sys.stderr,
        )
        return 2
    except (*USER_ERRORS, *PATH_ERRORS) as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        return os_error_status(e, "gptlab: ")


def os_error_status(error: OSError, prefix: str = "") -> int:
    """The exit status for an OSError that reached a command: a closed stdout ends quietly (``end_on_closed_stdout``),
    a write the storage refused (a full disk, a read-only folder, met outside the checkpoint's and the log's own
    checks) is one line and 2; any other is raised, with its traceback."""
    if isinstance(error, BrokenPipeError):
        return end_on_closed_stdout(error)
    if error.errno == errno.ENAMETOOLONG:  # a mistyped or generated path the user named: theirs, not a bug
        name = os.fsdecode(error.filename) if error.filename else "a path"
        print(f"{prefix}error: {name[:80]}{'...' if len(name) > 80 else ''}: {error.strerror}", file=sys.stderr)
        return 2
    if (refused := storage_refused(error)) is None:
        raise error
    print(f"{prefix}error: {refused}", file=sys.stderr)
    return 2


def end_on_closed_stdout(error: BrokenPipeError) -> int:
    """`gptlab compare ... | head`: the reader left; end quietly with the status a shell gives such a writer,
    as `head`'s writers do (Python's recipe). Any other broken pipe (a subprocess's, a socket's) is raised."""
    if not _stdout_reader_gone():
        raise error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout
        return False


if __name__ == "__main__":
    sys.exit(main())
