"""``gptlab compare``, ``gptlab report`` and ``gptlab doctor`` (and the root
``compare_architectures.py`` / ``test_imports.py``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError, bool_argument, path_argument, refuse_extra
from gptlab.fileio import check_directory
from gptlab.plugins import add_plugins_option


def _cmd_compare(args: argparse.Namespace, extra: list[str]) -> int:
    from gptlab.compare import TABLE_DEFAULTS, compare, refuse_arch_preset
    from gptlab.config.overrides import parse_overrides
    from gptlab.config.train import ALL_KEYS, BOOL_KEYS, TEXT_KEYS
    from gptlab.errors import unknown_choice
    from gptlab.telemetry.cli import AUTOCAST_DTYPES

    overrides = parse_overrides(extra, TEXT_KEYS, BOOL_KEYS, ALL_KEYS)
    if not args.architectures:  # the design document's bare `python compare_architectures.py`: the presets
        from gptlab.config.model import PRESETS

        args.architectures = list(PRESETS)
    checkpointing = bool(args.activation_checkpointing)
    table = dict(gpu=args.gpu, mfu=args.mfu, world_size=args.world_size, activation_checkpointing=checkpointing)
    table["batch_size"] = TABLE_DEFAULTS["batch_size"] if args.batch_size is None else args.batch_size
    table["dtype"] = args.dtype or TABLE_DEFAULTS["dtype"]
    if table["dtype"] not in AUTOCAST_DTYPES:  # the training's names (bfloat16), as train and plan take them
        raise unknown_choice("dtype", table["dtype"], AUTOCAST_DTYPES)
    if args.out_dir and not args.train:
        raise ConfigError("--out_dir is where --train writes its runs: without --train nothing is written")
    if args.train:
        from gptlab.compare_train import train_and_compare

        # --batch_size, --dtype and --activation_checkpointing, when given, set the training's too (the table
        # plans for a GPU)
        given = ("batch_size", "dtype", "activation_checkpointing")
        overrides.update({k: getattr(args, k) for k in given if getattr(args, k) is not None})
        if args.plugins:  # imported already; the runs record them, so that sample and resume can name them
            overrides["plugins"] = args.plugins
        if args.out_dir:
            check_directory("--out_dir", args.out_dir)
            overrides["out_dir"] = args.out_dir
        result = train_and_compare(args.architectures, overrides, table=table)
    else:
        from gptlab.config.train import ARCH_FIELDS

        bad = [k for k in overrides if k not in ARCH_FIELDS]
        if bad:
            from gptlab.config.overrides import gpu_count_error
            from gptlab.config.train import TRAIN_FIELDS
            from gptlab.errors import did_you_mean

            other_commands = {"gpu_memory_gb": "plan", "grad_accum_steps": "plan", "device_type": "plan",
                              "seq_len": "flops"}  # fmt: skip
            if (count := gpu_count_error(bad[0], overrides[bad[0]], vars(args))) is not None:  # (not --gpu)
                raise ConfigError(count)
            if bad[0] in other_commands:
                raise ConfigError(f"--{bad[0]} is an option of `gptlab {other_commands[bad[0]]}`, not of compare")
            refuse_arch_preset(overrides)
            hint = "" if bad[0] in TRAIN_FIELDS else did_you_mean(bad[0], [*ARCH_FIELDS, *vars(args), *TRAIN_FIELDS])
            what = "not an architecture key" if len(bad) == 1 else "not architecture keys"
            raise ConfigError(f"{', '.join(bad)}: {what}{hint} (training keys need --train)")
        result = compare(args.architectures, overrides, **table)
    print(result.render(args.format))
    return 0


def _cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from gptlab.report import EVALUATION_LEFT_OUT, build_report, run_directory, without_evaluations

    refuse_extra("report", extra, vars(args))
    reported, _, evaluations = without_evaluations(args.run_dirs, None)
    for folder in evaluations:  # the others are reported, and the page says so too
        print(f"report: leaving out {folder}: {EVALUATION_LEFT_OUT}", file=sys.stderr)
    run_dirs = [run_directory(path) for path in reported]  # a path that is no run: said before --out is
    out = args.out or (run_dirs[0] / "report" if len(args.run_dirs) == 1 else Path("report"))  # (as --help says)
    if not args.out and out.is_symlink():  # a downloaded run's: the plots (and removed stale ones) would be elsewhere
        raise ConfigError(
            f"{str(out)!r} is a link to {os.readlink(out)!r}, not the run's own folder: remove it, or give --out"
        )
    check_directory("--out", out)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.run_dirs):
        raise ConfigError(f"--labels has {len(labels)} names for {len(args.run_dirs)} run directories")
    if labels and any(not name.strip() for name in labels):
        raise ConfigError(f"--labels={args.labels!r} has an empty name: give each run a name of its own")
    if labels and (twice := sorted({name for name in labels if labels.count(name) > 1})):
        raise ConfigError(  # a legend's entries, a table's rows: two runs under one name cannot be told apart
            f"--labels={args.labels!r} names {', '.join(map(repr, twice))} twice: give each run a name of its own"
        )
    path = build_report(args.run_dirs, out, labels=labels, title=args.title)
    print(f"report: {path} (plots beside it)")
    return 0


def _cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    from gptlab.doctor import run

    refuse_extra("doctor", extra, vars(args))
    return run(args)


def register(sub: Any) -> None:
    """Add ``compare``, ``report`` and ``doctor`` to the ``gptlab`` command."""
    from gptlab.compare import TABLE_DEFAULTS

    c = sub.add_parser(
        "compare",
        help="architectures side by side: parameters, FLOPs, memory, throughput; --train to train each",
        description="Compare presets and/or config files, e.g. gptlab compare gpt2 llama hybrid --n_layer=12. "
        "--key=value overrides apply to every architecture (and, with --train, to its training).",
    )
    c.add_argument(
        "architectures",
        nargs="*",
        help="presets (gpt2, llama, hybrid, team, custom), config files or run directories (default: every preset)",
    )
    c.add_argument(
        "--gpu", default=TABLE_DEFAULTS["gpu"], help="accelerator for the throughput estimate (default H100-SXM)"
    )
    c.add_argument("--mfu", type=float, default=TABLE_DEFAULTS["mfu"], help="MFU assumed for --gpu (default 0.4)")
    c.add_argument(
        "--world_size", type=int, default=TABLE_DEFAULTS["world_size"], help="GPUs for ddp/zero1/fsdp (default 8)"
    )
    c.add_argument(
        "--batch_size",
        type=int,
        help="micro-batch per GPU for the memory plan (default 12); with --train also the training's",
    )
    c.add_argument("--dtype", help="autocast dtype for the plan (default bfloat16); with --train also the training's")
    c.add_argument(
        "--activation_checkpointing",
        type=bool_argument,
        nargs="?",
        const=True,
        help="plan with per-block checkpointing; with --train also the training's",
    )
    c.add_argument(
        "--format",
        choices=("text", "markdown", "json", "csv"),
        default="text",
        help="the table's format (default text)",
    )
    c.add_argument("--train", action="store_true", help="also train each for the same tokens (CPU default: ~2 s each)")
    c.add_argument(
        "--out_dir", type=path_argument, help="with --train: runs go to OUT_DIR/LABEL/, the report to OUT_DIR/report/"
    )
    add_plugins_option(c)
    c.set_defaults(func=_cmd_compare)

    r = sub.add_parser(
        "report",
        help="PNG plots and one offline HTML page from run directories (several runs overlaid)",
        description="Plot loss, tokens/s, MFU, memory and gradient norm from RUN_DIR/log.jsonl and write "
        "report.html with everything embedded. Needs matplotlib: pip install 'gptlab[report]'.",
    )
    r.add_argument("run_dirs", nargs="+", help="training out_dir(s)")
    r.add_argument(
        "--out", type=path_argument, help="output directory (default RUN_DIR/report for one run, ./report for several)"
    )
    r.add_argument("--labels", help="comma-separated run names (default the directory names)")
    r.add_argument("--title", default="gptlab report", help="the HTML page's title (default 'gptlab report')")
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser(
        "doctor",
        help="what is installed and usable: PyTorch, CUDA, devices, compile, extras",
        description="Say what is installed and usable here: Python, PyTorch and its build, CUDA and the devices "
        "with their MFU peaks, torch.compile, the attention kernels, distributed backends and gptlab's packages.",
    )
    from gptlab.doctor import add_arguments

    add_arguments(d)
    d.set_defaults(func=_cmd_doctor)


def entry(command: str) -> int:
    """Root-script entry: ``gptlab COMMAND`` with this process's arguments."""
    from gptlab.cli import main

    return main([command, *sys.argv[1:]])


__all__ = ["entry", "register"]
