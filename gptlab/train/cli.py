"""``gptlab train`` and ``gptlab sample`` (and the root ``train.py`` / ``sample.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from gptlab.errors import PATH_ERRORS, USER_ERRORS, print_error_line
from gptlab.train.signals import TrainingInterrupted, report_interrupted

# `gptlab train` with no config: a small model on the embedded dataset that a 2-core CPU
# trains in about two minutes, ending with a checkpoint, a summary and a sample.
QUICKSTART: dict[str, Any] = dict(
    dataset="stdlib_char",
    out_dir="out/quickstart",
    overwrite=True,  # a demo: running it again replaces the last one
    arch_preset="llama",
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=128,
    batch_size=16,
    gradient_accumulation_steps=1,
    learning_rate=2e-3,
    min_lr=2e-4,
    warmup_iters=50,
    max_iters=700,
    lr_decay_iters=700,
    eval_interval=200,
    eval_iters=20,
    log_interval=25,
    gradient_log_interval=25,
    weight_decay=0.1,
    dropout=0.0,
    device="cpu",
    dtype="float32",
    compile=False,
    log_style="compact",
    sample_at_end=True,
    sample_tokens=300,
    sample_prompt="def ",
)


def quickstart_defaults(args: Sequence[str]) -> dict[str, Any] | None:
    """The quick start's settings as defaults under the user's: only with no config file, no
    ``--init_from`` and no ``--dataset`` (a resume, a fine-tune or a run on your data keeps the real
    defaults, nanoGPT's: device auto, compile on, GPT-2 124M, ...); replacing a previous run
    (``overwrite``) only in the quick start's own ``out_dir``."""
    keys = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}
    if any(not a.startswith("--") for a in args) or keys & {"init_from", "dataset"}:
        return None
    if "out_dir" in keys:
        return {k: v for k, v in QUICKSTART.items() if k != "overwrite"}
    return QUICKSTART


def run_train(args: Sequence[str]) -> int:
    """Parse ``[CONFIG] [--key=value ...]`` and train; with nothing given, the quick start."""
    from gptlab.config.resolve import parse_run_args
    from gptlab.train.launch import train

    args = list(args)
    quickstart = quickstart_defaults(args)
    run = parse_run_args(args, defaults=quickstart)
    if quickstart is not None and args and os.environ.get("RANK", "0") == "0":  # the demo's settings: say so
        print(
            "gptlab train: no config file: the quick start's settings (CPU, float32, 4-layer llama on stdlib_char) "
            "are the defaults under your keys; name a config file or --dataset for the full defaults",
            file=sys.stderr,
        )
    summary = train(run)
    final, base = summary.get("final_val_loss"), summary.get("unigram_baseline_loss")
    if final is not None and base is not None:
        print(f"final val loss {final:.4f} (unigram baseline {base:.4f}); run directory: {run.train.out_dir}")
    return 0


def run_sample(args: Sequence[str]) -> int:
    from gptlab.logging import write_console
    from gptlab.train.sample import parse_sample_args, sample

    def show(text: str) -> None:
        write_console(sys.stdout, f"{text}\n---------------\n")  # a model's text in any console's encoding
        sys.stdout.flush()

    sample(parse_sample_args(list(args)), on_sample=show)
    return 0


def register(sub: Any) -> None:
    from gptlab.config.model import ARCH_FIELDS
    from gptlab.config.train import TRAIN_FIELDS

    train = sub.add_parser(
        "train",
        help="train a model: gptlab train [CONFIG.py] [--key=value ...]",
        description="Train from a nanoGPT-style config file plus --key=value overrides. With no config file, "
        "trains a small model on the embedded stdlib_char dataset on the CPU (about 2 minutes).",
        epilog=f"training keys (docs/training.md): {', '.join(TRAIN_FIELDS)}. "
        f"architecture keys (docs/architecture.md): {', '.join(ARCH_FIELDS)}.",
    )
    # gptlab.cli.main hands `train` and `sample` their arguments whole (nanoGPT's order and messages);
    # these parsers give -h
    train.add_argument("config", nargs="*", help="config file(s), e.g. config/full_llama_124m.py")
    sub.add_parser(
        "sample",
        help="sample from a checkpoint: gptlab sample --out_dir=out --start='...'",
        description="Sample with nanoGPT's sample.py keys, as --key=value: --init_from (resume) --out_dir (out) "
        "--start ('\\n' or FILE:path) --num_samples (3; nanoGPT's 10) --max_new_tokens (200; nanoGPT's 500) "
        "--temperature (0.8) --top_k (200) --seed (1337) --device (auto) --dtype (auto) --compile (False) "
        "--plugins (modules or .py files registering the checkpoint's own components)",
    )


def entry(run: Any, argv: Sequence[str] | None = None) -> int:
    """Root-script entry: one-line errors, exit code 2, as the gptlab command does; -h / --help print
    the gptlab command's help for it (``python train.py --help``), -V / --version its version."""
    try:
        from gptlab.logging import replace_unencodable_output

        replace_unencodable_output()
        args = list(sys.argv[1:] if argv is None else argv)
        asked = {"-h", "--help", "-V", "--version"} & set(args) if run in (run_train, run_sample) else set()
        if asked:
            from gptlab.cli import main

            command = "train" if run is run_train else "sample"
            try:
                return main([command, "--help"] if asked & {"-h", "--help"} else ["--version"])
            except SystemExit as done:  # argparse's help and version exit 0
                return int(done.code or 0)
        return run(args)
    except TrainingInterrupted as e:
        return report_interrupted(e)
    except KeyboardInterrupt:  # importing torch takes seconds: a Ctrl-C then is as one anywhere else
        print("aborted (Ctrl-C); files already written are as they were", file=sys.stderr)
        return 130
    except (*USER_ERRORS, *PATH_ERRORS) as e:
        # under torchrun, say which rank: a rank that fails before the group forms is the one to read
        world = os.environ.get("WORLD_SIZE", "1")
        rank = f"[rank {os.environ.get('RANK', '?')}] " if world.isdigit() and int(world) > 1 else ""
        print_error_line(f"{rank}error: {e}")
        return 2
    except OSError as e:  # `python train.py ... | head`, a full disk
        from gptlab.cli import os_error_status

        return os_error_status(e)
