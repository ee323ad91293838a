"""What the benchmark scripts share: the model and run settings, and building a Trainer from them."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptlab import parallel
from gptlab.config.resolve import parse_run_args
from gptlab.data.datasets import ensure_prepared
from gptlab.data.storage import is_ready
from gptlab.model import loss_kernel
from gptlab.parallel import PT_DTYPES
from gptlab.train.loop import Trainer


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (a bad one is argparse's one line, exit 2, not a
    StatisticsError over zero timed steps)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


def int_list(text: str) -> list[int]:
    """An argparse ``type`` for ``64,256,1024``: non-negative integers, comma-separated."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers (64,256,1024)") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} holds a negative value")
    return values


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Model size, data, device and precision flags (a small llama-style CPU run by default)."""
    p.add_argument("--preset", default="llama")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument(
        "--vocab_size", type=int, help="e.g. 50304 for GPT-2 sizes on a char dataset: same FLOPs (default: the data's)"
    )
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--grad_accum", type=int, default=1, help="micro-steps per optimizer step on each rank")
    p.add_argument("--dataset", default="stdlib_char")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--out_dir", default="out/bench", help="the run's files (replaced every time)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile_mode", default="default", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--compile_scope", default="model", help="model (one graph) or blocks (regional, per block)")
    p.add_argument("--loss_chunk_size", type=int, default=0, help="chunked LM head + loss (0: plain logits)")
    p.add_argument("--parallel", default="auto", help="under torchrun: ddp, zero1 or fsdp (auto: ddp)")
    p.add_argument("--attention_backend", default="sdpa", help="sdpa or manual")
    p.add_argument("--peak_tflops", type=float, help="dense peak per device for MFU where none is known (CPU)")
    p.add_argument(
        "--inductor_config",
        type=inductor_setting,
        action="append",
        default=[],
        help="key=value: torch._inductor.config.key for the compile, e.g. max_pointwise_cat_inputs=2 (repeatable)",
    )
    p.add_argument(
        "--loss_kernel",
        choices=("triton", "torch"),
        default="triton",
        help="the chunked loss's softmax minus one-hot (--loss_chunk_size > 0): its Triton kernel where it applies "
        "(CUDA), or torch ops",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="any other training or model key, as train.py's --KEY=VALUE, e.g. bias=False or residual_dtype='bfloat16' "
        "(repeatable; checked there)",
    )


def key_value(text: str) -> str:
    """An argparse ``type`` for ``--set KEY=VALUE``: the '=' is there (its value is checked as train.py checks it)."""
    key, sep, _ = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. --set {key or 'bias'}=VALUE")
    return text


def inductor_setting(text: str) -> tuple[str, object]:
    """An argparse ``type`` for ``--inductor_config key=value``: a key torch._inductor.config has, a Python literal."""
    import ast

    import torch._inductor.config as inductor

    key, sep, value = text.partition("=")
    if not sep or not hasattr(inductor, key):
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value with a key of torch._inductor.config")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Python literal") from None


def prepared_dataset(name: str, data_dir: str) -> Path:
    """The dataset's folder, prepared first where it is an embedded one not there yet, which is said (on stderr,
    beside the table): a benchmark run in a fresh folder otherwise leaves a data/ behind without a word."""
    fresh = not is_ready(Path(data_dir) / name)
    path = ensure_prepared(name, data_dir)
    if fresh:
        print(f"note: prepared the {name!r} dataset in {path} (it was not there)", file=sys.stderr, flush=True)
    return path


def build_trainer(a: argparse.Namespace) -> Trainer:
    """A Trainer for the flags of ``add_run_args`` (writing to ``--out_dir``, replaced every time)."""
    if a.inductor_config:
        import torch._inductor.config as inductor

        for key, value in a.inductor_config:  # read when the model compiles (its first step)
            setattr(inductor, key, value)
    args = [
        f"--arch_preset={a.preset!r}",
        f"--n_layer={a.n_layer}",
        f"--n_embd={a.n_embd}",
        f"--n_head={a.n_head}",
        f"--block_size={a.block_size}",
        f"--batch_size={a.batch_size}",
        f"--gradient_accumulation_steps={a.grad_accum * int(os.environ.get('WORLD_SIZE', '1'))}",  # global
        f"--dataset={a.dataset!r}",
        f"--device={a.device!r}",
        f"--dtype={a.dtype!r}",
        f"--compile={a.compile}",
        # typed keys must take effect: the compile options go with --compile (or are refused without it)
        *([f"--compile_mode={a.compile_mode!r}"] if a.compile or a.compile_mode != "default" else []),
        *([f"--compile_scope={a.compile_scope!r}"] if a.compile or a.compile_scope != "model" else []),
        f"--loss_chunk_size={a.loss_chunk_size}",
        f"--parallel={a.parallel!r}",
        f"--attention_backend={a.attention_backend!r}",
        f"--peak_tflops={a.peak_tflops}",
        *([f"--vocab_size={a.vocab_size}"] if a.vocab_size else []),
        f"--data_dir={a.data_dir!r}",
        f"--out_dir={a.out_dir!r}",
        "--overwrite=True",
        "--gradient_log_interval=10",
        "--warmup_iters=0",
        *(f"--{setting}" for setting in a.set),  # last: parse_run_args checks the key and the value
    ]
    run = parse_run_args(args)  # a mistyped --set is said before a missing dataset is prepared
    prepared_dataset(a.dataset, a.data_dir)
    loss_kernel.USE_TRITON = a.loss_kernel == "triton"  # read when the loss runs (and compiles)
    trainer = Trainer(run, stream=io.StringIO())
    trainer.logger.close()  # the benchmarks time steps and log nothing: log.jsonl is not left open
    return trainer


def make_steps(trainer: Trainer, grad_accum: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two step functions over the same model, optimizer, loader and batches: a minimal plain-PyTorch
    step (what nanoGPT's train.py does, no more) and gptlab's ``Trainer.train_step``."""
    model, opt, device, dist = trainer.model, trainer.optimizer, trainer.device, trainer.dist
    autocast = (
        contextlib.nullcontext()
        if trainer.dtype == "float32" or trainer.mode == "fsdp"  # FSDP2's mixed precision casts instead
        else torch.autocast(device.type, dtype=PT_DTYPES[trainer.dtype])
    )
    it = [0]
    clip = trainer.cfg.grad_clip
    # nanoGPT's GradScaler (a no-op unless float16), its own: the two loops' scales are theirs
    scaler = parallel.build_grad_scaler(dist, enabled=trainer.dtype == "float16")

    def plain_step() -> None:
        loader = trainer.train_loader
        for micro in range(grad_accum):
            trainer._new_graph_run()  # CUDA-graph compile modes: torch.compiler.cudagraph_mark_step_begin()
            x, y = loader.get_batch(*trainer.batch_key(it[0], micro))
            with parallel.no_grad_sync(model, dist, sync=micro == grad_accum - 1), autocast:  # nanoGPT's no_sync
                # called as train_step calls it: model(x, y) alone is another torch.compile guard (return_logits),
                # a second compile of the same model in every compiled run (a minute on a GPU), timing the same work
                _, loss = model(x, y, return_logits=False)
            # nanoGPT: "immediately async prefetch next batch while model is doing the forward pass"
            loader.prefetch(*trainer.next_batch_key(it[0], micro))
            scaler.scale(loss / grad_accum).backward()
        if clip > 0.0:  # the run's grad_clip, as nanoGPT's: 0 skips it in both loops
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        # CUDA-graph compile modes with accumulation keep .grad as zeroed buffers (Trainer.use_stable_grads): freed
        # here, the next captured backward's output became .grad, overwritten by the next replay, in both loops
        opt.zero_grad(set_to_none=not trainer._stable_grads)
        it[0] += 1

    read_late = statistics_read_a_step_late(trainer)

    def gptlab_step() -> None:
        read_late(trainer.train_step())
        trainer.iter_num += 1

    return plain_step, gptlab_step


def statistics_read_a_step_late(trainer: Trainer) -> Callable[[dict[str, Any]], None]:
    """Called with each ``train_step()`` result: reads the previous step's gradient statistics, now that this
    step is queued, as the training loop reads them (no stall), and keeps this step's for the next call."""
    unread: list[Any] = []

    def after_step(step: dict[str, Any]) -> None:
        for pending in unread:
            trainer.telemetry.read_gradient_stats(pending)
        unread[:] = [] if step["grad_stats"] is None else [step["grad_stats"]]

    return after_step
