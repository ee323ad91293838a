"""``train(run)``: one process's run under torchrun or alone, and how its failures are said: an
out-of-memory error as one line, a lost peer as not this rank's fault, a signal's stop as its exit status."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import traceback
from collections.abc import Iterator
from typing import IO, Any

import torch

from gptlab import parallel
from gptlab.config.train import RunConfig
from gptlab.device import (
    compile_cache_tag,
    resolve_device,
    sdpa_state,
    set_compile_cache_tag,
    set_sdpa_state,
    set_tf32_state,
    tf32_state,
)
from gptlab.errors import (
    PATH_ERRORS,
    USER_ERRORS,
    GptlabError,
    compiler_missing,
    is_out_of_memory,
    print_error_line,
    storage_refused,
)
from gptlab.fileio import run_lock
from gptlab.logging import check_logging_backends
from gptlab.train.loop import Trainer
from gptlab.train.signals import TrainingInterrupted, said_on_stderr_too


def _out_of_memory(error: BaseException) -> GptlabError | None:
    """An allocation failure (CUDA or host) as one line with what to change; None for other errors."""
    if not is_out_of_memory(error):
        return None
    text = str(error).strip()
    first = text.splitlines()[0][:300] if text else type(error).__name__
    return GptlabError(
        f"out of memory ({first}): `gptlab plan` with this run's config shows what fits; options: a smaller "
        "--batch_size with more --gradient_accumulation_steps, --loss_chunk_size=1024, "
        "--activation_checkpointing=True, --use_fsdp=True on several GPUs"
    )


PEER_GONE_SIGNS = (  # gloo's and NCCL's words for a peer that died
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "communicator was aborted",
)
PEER_SILENT_SIGNS = ("timed out waiting", "watchdog caught collective operation timeout")  # or stuck elsewhere


def _peer_lost(error: BaseException) -> str | None:
    """'gone' when a collective failed because another rank died, 'silent' when it timed out waiting for
    one (dead, or stuck: where this rank waited is then worth its traceback), else None."""
    if not isinstance(error, RuntimeError):
        return None
    text = str(error).lower()
    if any(sign in text for sign in PEER_GONE_SIGNS):
        return "gone"
    backend_error = getattr(torch.distributed, "DistBackendError", ())
    if any(sign in text for sign in PEER_SILENT_SIGNS) or (isinstance(error, backend_error) and "timeout" in text):
        return "silent"
    return None


@contextlib.contextmanager
def global_torch_settings_kept(cuda: bool) -> Iterator[None]:
    """The process-wide settings a run changes (TF32 on CUDA, as nanoGPT; SDPA's kernel order; the seeded CPU
    RNG) restored when it returns, so that float32 matmuls after ``train()`` are the caller's again (a CPU run
    leaves the TF32 switches unread: a caller's mix of PyTorch's two APIs for them is not gptlab's to trip on). And the
    caller's own that a run must not take (a notebook's float64 default dtype, an inference cell's
    ``torch.set_grad_enabled(False)``): the run trains in float32 with gradients, as it says, and the caller's
    are theirs again afterwards."""
    tf32 = tf32_state() if cuda else None
    sdpa = sdpa_state(cuda)  # the attention kernel's order (sdpa_backend)
    cache_tag = compile_cache_tag()  # which the compile caches are keyed by
    rng = torch.get_rng_state()
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            yield
    finally:
        torch.set_default_dtype(default_dtype)
        if tf32 is not None:
            set_tf32_state(tf32)
        set_sdpa_state(sdpa)
        set_compile_cache_tag(cache_tag)
        torch.set_rng_state(rng)


def _exit_status(error: BaseException) -> int:
    """The status the command exits with for ``error``: a signal's 128 + N, 130 for Ctrl-C, 2 for a one-line
    error (a non-finite loss's stop included), 1 for anything else."""
    if isinstance(error, TrainingInterrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    return 2 if isinstance(error, (*USER_ERRORS, *PATH_ERRORS)) else 1


def train(run: RunConfig, stream: IO[str] | None = None, *, shared_process: bool = False) -> dict[str, Any]:
    """Train ``run`` to completion and return the summary (rank 0's; other ranks get {}).

    Under torchrun a rank that fails prints ``[rank N] error: ...`` and exits non-zero at once:
    torchrun then stops the other ranks, and ranks on other nodes fail their next collective.
    ``shared_process``: this process trains other models too (a loop over runs), so its host memory is not
    this run's alone; the startup record says so and reports leave that memory out."""
    if not isinstance(run, RunConfig):  # a dict of settings: its own TypeError, not an AttributeError inside
        raise TypeError(
            f"train() takes a RunConfig, not {type(run).__name__}: resolve_run_config({{'max_iters': ...}}) or "
            "parse_run_args(['config/x.py', '--key=value']) builds one"
        )
    check_logging_backends(run.train.wandb_log, run.train.tensorboard_log)  # before data, model and process group
    device = resolve_device(run.train.device)
    if run.train.compile:  # each run's model compiled anew: earlier runs' entries for the same forward (a
        # notebook's, compare --train's) reach dynamo's recompile limit after ~4 models, then it runs eagerly
        torch.compiler.reset()
    info = parallel.init_distributed(run.train, device)
    try:
        try:
            # one training per out_dir (rank 0 holds it; an evaluation writes nothing of the run's)
            lock = run_lock(run.train.out_dir) if info.master and not run.train.eval_only else contextlib.nullcontext()
            kept = global_torch_settings_kept(device.type == "cuda")  # a script or notebook keeps its own
            with lock, kept:
                trainer = Trainer(run, stream=stream or sys.stdout, dist=info, shared_process=shared_process)
                try:
                    summary = trainer.run()
                except BaseException as failed:  # however it ends: log.jsonl (and wandb, TensorBoard) closed, not
                    trainer.logger.close(exit_code=_exit_status(failed))  # left to the collector
                    raise
                trainer.logger.close()
        except (RuntimeError, MemoryError) as e:
            failure = _out_of_memory(e) or compiler_missing(e)
            if failure is None:
                raise
            raise failure from e
    except BaseException as e:
        if info.world_size == 1:
            parallel.shutdown(info)
            raise
        e = storage_refused(e) or e  # a full disk or read-only folder: the one line a single process prints
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, TrainingInterrupted):  # every rank agreed to stop and the checkpoint is written
            if info.master and not said_on_stderr_too(stream is None or stream is sys.stdout):  # not twice
                print_error_line(f"[rank {info.rank}] {message}")
            sys.stdout.flush()
            os._exit(e.exit_code)
        if isinstance(e, KeyboardInterrupt):  # a Ctrl-C torchrun passed on during the start, or a second one
            print_error_line(f"[rank {info.rank}] aborted (Ctrl-C); files already written are as they were")
            sys.stdout.flush()
            os._exit(130)
        peer = _peer_lost(e)
        if peer == "gone":  # not this rank's fault: say so, and do not bury the failed rank's line in a traceback
            message = (
                "lost contact with another rank in a collective: it failed or was killed (see its [rank N] "
                f"error line, or torchrun's 'Failures' list with its exit code) ({message[:200]})"
            )
        elif peer == "silent":  # where this rank waited helps find a stuck one: keep the traceback
            traceback.print_exc()
            message = (
                "a collective timed out (dist_timeout): another rank failed, was killed, or is stuck elsewhere "
                f"(see its [rank N] error line or torchrun's 'Failures' list) ({message[:200]})"
            )
        elif not isinstance(e, USER_ERRORS):
            traceback.print_exc()
        print_error_line(f"[rank {info.rank}] error: {message}")
        sys.stdout.flush()
        os._exit(2 if isinstance(e, USER_ERRORS) else 1)  # no exit handlers: they may wait on dead peers
    # the model's reference cycles (FSDP's and DDP's hooks) hold the process groups it reduces over: freed
    # now, while the groups and the interpreter are whole (at exit, gloo's threads now and then aborted a rank)
    del trainer
    gc.collect()
    close_group_after_the_run(info)
    return summary


def close_group_after_the_run(info: parallel.DistInfo) -> None:
    """The closing barrier and teardown of a run this rank finished: a peer gone there (killed as the run ended, a
    node lost) is one line and this rank's exit 0, its own work done, not a traceback and exit 1 (the lost rank's
    own exit status, in torchrun's 'Failures' list, says whether the job failed)."""
    try:
        parallel.shutdown(info)
    except RuntimeError as e:
        if info.world_size == 1 or _peer_lost(e) != "gone":  # (a timeout: stuck, perhaps, not gone)
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print_error_line(
            f"[rank {info.rank}] this rank finished the run, but another rank was gone at the closing barrier "
            f"({first[:200]}): see its [rank N] line or torchrun's 'Failures' list"
        )
        sys.stdout.flush()
        os._exit(0)  # the group cannot be torn down with a peer gone (gloo aborts): no exit handlers either
