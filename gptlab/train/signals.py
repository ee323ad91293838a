"""Stopping on a signal: SIGTERM (a scheduler preempting the job: SLURM, Kubernetes, torchrun passing
it on) and SIGINT (Ctrl-C) ask the run to stop at a step boundary, evaluate and checkpoint as at an
``eval_interval``, and exit; a second Ctrl-C aborts at once, without saving."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after its last checkpoint; the exit status is 128 + the signal's number.
    A KeyboardInterrupt, not an Exception: a sweep's ``try: train(run) except Exception: continue`` stops on the
    user's Ctrl-C (or a scheduler's SIGTERM) instead of starting its next run, as nanoGPT's loop would stop."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self) -> tuple[type, tuple[int, str]]:  # pickled whole (a ProcessPoolExecutor's worker's stop)
        return type(self), (self.signum, str(self))


class StopSignals:
    """While active (the main thread only), the first SIGTERM or SIGINT sets ``signum`` instead of killing
    the process; the training loop polls it. Later SIGTERMs are ignored (torchrun forwards the one the
    terminal's Ctrl-C sent it too); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self, announce: Callable[[str], None] | None = None) -> None:
        self.signum = 0
        self._announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGINT stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
            return
        self.signum = signum
        if self._announce is not None:
            self._announce(signal.Signals(signum).name)


def report_interrupted(error: TrainingInterrupted, prefix: str = "", *, logged_to_stdout: bool = True) -> int:
    """Print a stopped run's message on stderr where it adds something and return its exit status: rank 0's
    log printed it on stdout (``logged_to_stdout``; not so for `compare --train`, whose runs log to their
    console.log), so not again on the same terminal or into the same file (``> log 2>&1``, a SLURM job's one
    output file, ``2>&1 | tee``), and the other ranks' would repeat it."""
    import contextlib
    import os
    import sys

    if os.environ.get("RANK", "0") == "0" and not said_on_stderr_too(logged_to_stdout):
        with contextlib.suppress(OSError):  # `2>&1 | tee` ended by the Ctrl-C that stopped the run
            print(f"{prefix}{error}", file=sys.stderr)
    return error.exit_code


def said_on_stderr_too(logged_to_stdout: bool) -> bool:
    """A line the log printed on stdout (``logged_to_stdout``) is already where stderr's would go: one terminal,
    or one file or pipe for both (``> log 2>&1``)."""
    import sys

    one_terminal = sys.stdout.isatty() and sys.stderr.isatty()
    return logged_to_stdout and (one_terminal or _same_file(sys.stdout, sys.stderr))


def _same_file(one: object, other: object) -> bool:
    """Two streams write to one open file or pipe (False where either has no file descriptor)."""
    import os

    try:
        return os.path.sameopenfile(one.fileno(), other.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
