"""TrainingLogger: the console view, ``log.jsonl``, ``summary.json`` and optional wandb /
TensorBoard backends. Only rank 0 logs; every figure it prints comes from a caller, and a
figure nobody measured is shown as n/a, never invented."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from gptlab.errors import ConfigError, GptlabError, did_you_mean, first_line, storage_note
from gptlab.fileio import atomic_write


def logged_peak_gb(memory: dict[str, Any]) -> float | None:
    """The peak memory a logged step saw (``get_memory_stats``): CUDA's peak allocated in its window, else
    the process's high-water RSS (on a CPU the tensors live there; the RSS at the step itself missed the
    backward's peak between two logged steps, 11% under it), or its RSS where no high-water mark is read."""
    return memory.get("max_allocated_gb") or memory.get("max_rss_gb") or memory.get("rss_gb")


RULE = "─" * 80


def _fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _times(value: Any, scale: float) -> Any:
    """``value * scale``, a missing figure staying missing (TFLOP/s records as FLOP/s for ``_flops``)."""
    return None if value is None else value * scale


def _flops(value: Any, spec: str) -> str:
    """A FLOP count or rate in the console's short units, the prefix fitting the number: ``101 TF`` on a GPU,
    ``28.5 GF`` per token at 1.5B, ``197 KF`` per token for a test model (it read ``0.000197 GF``)."""
    if value is None:
        return "n/a"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        shown = f"{value / scale:{spec}}"
        if abs(float(shown)) >= 1:  # as rounded: 999.7e9 is '1 TF', not '1e+03 GF'
            return f"{shown} {prefix}F"
    return f"{value:{spec}} F"


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# fields whose strings are text, never a number spelled out: a run in --out_dir=inf, an event's message, a sample
TEXT_FIELDS = frozenset({"architecture", "training", "hardware", "config", "message", "sample", "status", "changed"})


def _finite_again(value: Any) -> Any:
    """_json_safe's inverse: the strings "nan", "inf", "-inf" back to floats (not in TEXT_FIELDS)."""
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: v if k in TEXT_FIELDS else _finite_again(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_again(v) for v in value]
    return value


# the records' "type" fields, in the order a run writes them
RECORD_TYPES = ("startup", "event", "iter", "gradients", "eval", "summary")


def read_log(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (``path``: the file or its run directory), of type ``kind`` if
    given, with non-finite numbers as floats again (the file spells them "nan", "inf", "-inf": strict JSON,
    which jq reads); a last line cut off by a killed write is skipped. For pandas:
    ``pd.json_normalize(read_log("out/run", "iter"))``."""
    if kind is not None and kind not in RECORD_TYPES:  # a misspelt type read as no records at all
        raise ConfigError(f"kind={kind!r} is not a record type of log.jsonl{did_you_mean(str(kind), RECORD_TYPES)}; "
                          f"expected one of {', '.join(RECORD_TYPES)}")  # fmt: skip
    path = Path(path)
    if path.is_dir():
        path = path / "log.jsonl"
    return [_finite_again(r) for _, r in log_records(path) if kind is None or r.get("type") == kind]


def step_stats(records: list[dict[str, Any]], key: str, rate: bool = False) -> dict[str, float] | None:
    """Mean, median and p90 of ``key`` over iteration records (summary.json's figures). ``rate``: a per-second
    figure, whose mean is weighted by the time each record timed (its step time by its ``timed_steps``: tokens
    over time, what the run delivered; a plain mean of rates overstates it when steps vary); else a per-step
    figure (dt_ms), whose mean is weighted by the steps each record timed, so that the two means agree."""
    kept = [r for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    values = [r[key] for r in kept]
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    mean = statistics.fmean(values)
    weights = [_timed_ms(r) for r in kept] if rate else [_timed_steps(r) for r in kept]
    if all(isinstance(w, (int, float)) and w > 0 for w in weights) and math.isfinite(sum(weights)):
        mean = math.fsum(v * w for v, w in zip(values, weights)) / math.fsum(weights)
    return {"mean": mean, "median": statistics.median(values), "p90": p90}


def _timed_steps(record: dict[str, Any]) -> int:
    """The steps an iteration record's dt_ms is the mean of (logs before timed_steps: 1)."""
    steps = record.get("timed_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 1


def _timed_ms(record: dict[str, Any]) -> Any:
    """The milliseconds an iteration record timed: its mean step time by its steps."""
    dt = record.get("dt_ms")
    return dt * _timed_steps(record) if isinstance(dt, (int, float)) else dt


def log_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each line of a JSON-lines log, as written; a last line that a killed
    write cut off is skipped, any other line that is not a JSON object is one GptlabError."""
    try:
        yield from _log_records(path)
    except UnicodeDecodeError as e:  # not a log gptlab wrote (it writes UTF-8), or one whose bytes were damaged
        raise GptlabError(f"{path} is not a UTF-8 JSON-lines log ({e.reason})") from None


def _log_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as file:  # line by line: a long run's log is hundreds of MB
        lines = iter(file)
        line, n = next(lines, None), 0
        while line is not None:
            n, following = n + 1, next(lines, None)  # one line ahead: is this the last one?
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):  # (a line nested beyond Python's recursion limit)
                    if following is None:
                        return
                    raise GptlabError(f"{path}:{n} is not valid JSON") from None
                if not isinstance(record, dict):
                    raise GptlabError(f"{path}:{n} is not a record (a JSON object): {line.strip()[:60]}")
                yield n, record
            line = following


def _cut_torn_line(path: Path) -> int:
    """Remove a last line that a killed write left without its newline (else the next record would be
    appended to it, and both lost to a JSON reader); the bytes removed."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, 2)
            if size == 0:
                return 0
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            start = max(0, size - (1 << 20))
            while True:  # the last newline, read backwards a MB at a time
                f.seek(start)
                at = f.read(size - start).rfind(b"\n")
                if at >= 0 or start == 0:
                    keep = start + at + 1 if at >= 0 else 0
                    break
                start = max(0, start - (1 << 20))
            f.truncate(keep)
            return size - keep
    except FileNotFoundError:
        return 0


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_console(stream: IO[str], text: str) -> None:
    """Write to a console; one that cannot encode the text (an ASCII or Latin-1 stdout, Windows' cp1252
    for a redirected one) gets those characters replaced, not a UnicodeEncodeError that ends the run."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, errors="replace").decode(encoding))


def replace_unencodable_output() -> None:
    """The commands' own print()s (paths, a model's text) with write_console's tolerance: a finished job must
    not exit 1 because stdout cannot encode a folder's name (Windows' cp1252 for a redirected one, LANG=C)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None and getattr(sys.stdout, "errors", None) == "strict":
        reconfigure(errors="replace")


SUMMARIZED = ("iter", "loss", "dt_ms", "timed_steps", "tokens_per_sec", "mfu")  # the iteration fields summary.json uses


def _summarized(record: dict[str, Any]) -> dict[str, Any]:
    """What finalize() needs of an iteration record, not the whole record (a long run logs hundreds of thousands)."""
    kept = {k: record.get(k) for k in SUMMARIZED}
    memory = record.get("memory")
    kept["peak_gb"] = logged_peak_gb(memory) if isinstance(memory, dict) and memory else None
    return kept


EVAL_LOG = "eval.jsonl"  # eval_only's records: the evaluated weights', beside the training's log.jsonl
EVAL_TENSORBOARD = Path("tensorboard") / "eval_only"


def remove_evaluations(out_dir: Path) -> list[str]:
    """Delete eval_only's records of ``out_dir`` (eval.jsonl, TensorBoard's eval_only run): a run that replaces
    another (``overwrite``) leaves no evaluation of weights it removed beside its own. Returns the names removed."""
    removed = []
    for name in (EVAL_LOG, EVAL_TENSORBOARD):
        path = out_dir / name
        if path.is_symlink() or path.is_file():  # a link (to a shared folder) goes, not what it points at
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(Path(name).as_posix())
    return removed


def check_logging_backends(wandb_log: bool, tensorboard_log: bool) -> None:
    """The experiment trackers asked for are installed: checked when a run starts, before its data is prepared
    or its model built or downloaded, and before either is opened (a missing TensorBoard after wandb.init left
    an empty wandb run behind)."""
    if wandb_log:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "wandb_log=True needs wandb: pip install 'gptlab[wandb]', or run with --wandb_log=False"
            ) from None
    if tensorboard_log:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tensorboard_log=True needs tensorboard: pip install 'gptlab[tensorboard]', "
                "or run with --tensorboard_log=False"
            ) from None


# summary.json's figures a wandb runs table compares (its summary otherwise holds each key's last value: the
# final evaluation's val loss, not the best)
WANDB_SUMMARY_KEYS = ("status", "best_val_loss", "final_val_loss", "final_loss", "tokens_seen", "total_time_s")


def _wandb_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Numbers as numbers (a NaN left out: as text it would make the column mixed), None left out."""
    out = {key: summary.get(key) for key in WANDB_SUMMARY_KEYS}
    for key in ("tokens_per_sec", "mfu"):  # the medians past the warm-up, as compare's table shows them
        if isinstance(summary.get(key), dict):
            out[f"{key}_median"] = summary[key].get("median")
    finite = lambda v: not isinstance(v, float) or math.isfinite(v)  # noqa: E731
    return {key: value for key, value in out.items() if value is not None and finite(value)}


class TrainingLogger:
    """Writes one JSON object per line to ``out_dir/log.jsonl`` and renders the console view."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        style: str = "detailed",
        enabled: bool = True,
        stream: IO[str] | None = None,
        max_iters: int | None = None,
        start_iter: int = 0,
        skip_first: int = 2,
        wandb_config: dict[str, Any] | None = None,
        tensorboard: bool = False,
        resume: bool = False,
        eval_only: bool = False,
        tensorboard_purge_step: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        # an evaluation leaves the run it evaluates as it is: its records go to eval.jsonl (appended), and
        # there is no summary.json
        self.eval_only = eval_only
        self.style, self.enabled = style, enabled
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        # the progress bar redraws its line with \r and an ANSI erase: only on a terminal that has them
        self.status_bar = self.tty and os.environ.get("TERM") != "dumb"
        self.max_iters = max_iters
        self.start_iter = start_iter  # a resumed session's first iteration: its ETA is from its own rate
        self._console_closed = False
        self.skip_first = skip_first  # warm-up / compile iterations excluded from the summary
        self.start_clock = time.perf_counter()  # durations: a wall-clock step (NTP) never makes them negative
        self.iters: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.startup: dict[str, Any] = {}
        self._status_shown = False
        self._write_failed = False  # a record that did not reach the disk: its error is the one to report
        self._wandb = self._tb = None
        if not enabled:
            return
        check_logging_backends(wandb_config is not None, tensorboard)  # both, before a wandb run is made
        if wandb_config is not None:
            import wandb

            try:
                group = None if os.environ.get("WANDB_RUN_GROUP") else wandb_config.get("group")  # wandb's own wins
                self._wandb = wandb.init(
                    project=wandb_config.get("project"),
                    name=wandb_config.get("name"),
                    config=wandb_config.get("config"),
                    **({"group": group} if group else {}),
                )
            except Exception as e:  # not logged in (UsageError), no network (CommError): wandb's, in one line
                if "project name" in str(e).lower():  # a name wandb refuses: logging in would not help
                    way_out = "choose another --wandb_project"
                else:
                    way_out = "run `wandb login`, or set WANDB_MODE=offline to log locally and `wandb sync` later"
                failed = f"wandb.init failed ({type(e).__name__}: {first_line(e)})"
                raise GptlabError(f"wandb_log=True: {failed}; {way_out}") from None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # a resume hides what a killed session logged from the step it logs again on (TensorBoard has no
            # "last record of each step" rule)
            # an evaluation's points are a run of their own (tensorboard/eval_only): in the training's curves they
            # were a second point at the checkpoint's step, the run changed that eval_only leaves as it is
            tb_dir = self.out_dir / (EVAL_TENSORBOARD if eval_only else "tensorboard")
            self._tb = SummaryWriter(log_dir=str(tb_dir), purge_step=None if eval_only else tensorboard_purge_step)
        # opened last: a missing backend fails before an existing log is truncated
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name, mode = (EVAL_LOG, "a") if eval_only else ("log.jsonl", "a" if resume else "w")
        self._path = self.out_dir / name
        if self._path.is_symlink():  # a run directory from elsewhere: writing would follow it out of out_dir
            raise GptlabError(
                f"{self._path} is a symbolic link (to {os.readlink(self._path)}): gptlab writes its log only as a "
                "file of out_dir's own; remove the link"
            )
        torn = _cut_torn_line(self._path) if mode == "a" else 0
        self._file = open(self._path, mode, encoding="utf-8")  # noqa: SIM115 (lives with the logger)
        if torn:
            cut = f"{self._path}'s last line was cut off ({torn} bytes, a killed write): removed"
            self.log_event("log_repaired", cut)

    # ------------------------------------------------------------------ records
    def _write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        try:
            self._file.write(json.dumps(_json_safe(record)) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk or a file-size limit: one line, as for a checkpoint
            self._write_failed = True
            raise GptlabError(f"cannot write {self._path}: {e.strerror or e}{storage_note(e, self.out_dir)}") from None

    def _print(self, text: str) -> None:
        if self._status_shown:  # clear the progress line before printing above it
            text = "\r\x1b[K" + text
            self._status_shown = False
        self._emit(text + "\n")

    def _emit(self, text: str) -> None:
        """The console is a view of log.jsonl: when it goes away (``| tee`` ended by the Ctrl-C that also
        stops the run, ``| head``, a closed terminal) training goes on, and a stop still checkpoints."""
        if self._console_closed:
            return
        try:
            write_console(self.stream, text)
            self.stream.flush()
        except BlockingIOError:  # a non-blocking stdout whose reader is slow: still buffered, it goes out later
            return
        except OSError as e:
            self._console_closed, self._status_shown = True, False
            # what the stream still buffers, and any later print(), go nowhere rather than fail again; a
            # StringIO has no file to redirect
            with contextlib.suppress(AttributeError, OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, self.stream.fileno())
                finally:
                    os.close(devnull)  # dup2 made its copy: this one would stay open for the process's life
            self._write(
                {
                    "type": "event",
                    "event": "console_closed",
                    "message": f"the console cannot be written ({e.strerror or e}): training goes on, "
                    f"recorded in {self._path.name}",
                }
            )

    def _scalars(self, step: int, sections: dict[str, dict[str, Any]], wandb: bool = True) -> None:
        """The numbers of each section as ``section/name`` scalars, in one wandb call per step."""
        numeric = {
            f"{section}/{k}": v
            for section, values in sections.items()
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self._wandb is not None and wandb:
            self._wandb.log(numeric, step=step)
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)

    def tensorboard_scalars(self, step: int, sections: dict[str, dict[str, Any]]) -> None:
        """Scalars written to TensorBoard alone: points an earlier session logged that a resume's purge hid."""
        if self.enabled:
            self._scalars(step, sections, wandb=False)

    def log_startup_info(self, info: dict[str, Any], rendered: str | None = None) -> None:
        """Record the startup report (and print its rendering)."""
        if not self.enabled:
            return
        self.startup = info
        self._write({"type": "startup", **info})
        if rendered:
            self._print(rendered)

    def log_event(self, kind: str, message: str, **fields: Any) -> None:
        """A notable event (resume, checkpoint, NaN, spike): printed and recorded."""
        if not self.enabled:
            return
        self._write({"type": "event", "event": kind, "message": message, **fields})
        self._print(message)

    def log_gradients(self, iter_num: int, grad_stats: dict[str, Any]) -> None:
        """Gradient statistics of an iteration that is not a logged one (``gradient_log_interval`` and
        ``log_interval`` need not align): recorded, not printed, and left out of the step statistics."""
        if not self.enabled:
            return
        self._write({"type": "gradients", "iter": iter_num, "gradients": grad_stats})
        self._scalars(iter_num, {"gradients": grad_stats})

    def log_eval(self, iter_num: int, train_loss: float, val_loss: float, **extra: Any) -> None:
        if not self.enabled:
            return
        record = {"iter": iter_num, "train_loss": train_loss, "val_loss": val_loss, **extra}
        self.evals.append(record)
        self._write({"type": "eval", **record})
        self._scalars(iter_num, {"eval": {k: v for k, v in record.items() if k != "iter"}})  # lr and tokens too
        self._print(f"step {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")

    def log_iter_detailed(
        self,
        iter_num: int,
        loss: float,
        dt_ms: float,
        mfu_breakdown: dict[str, Any] | None = None,
        memory_stats: dict[str, Any] | None = None,
        grad_stats: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """One iteration: loss and time, plus whatever telemetry the caller measured.

        ``fields`` carries ``lr``, ``tokens_per_sec`` and anything else worth a JSON field.
        """
        if not self.enabled:
            return
        mfu = mfu_breakdown or {}
        record: dict[str, Any] = {"iter": iter_num, "loss": loss, "dt_ms": dt_ms, **fields}
        for key in (
            "mfu",
            "mfu_percent",
            "mfu_causal",
            "hfu",
            "achieved_tflops",
            "hardware_peak_tflops",
            "achieved_tflops_per_gpu",
            "hardware_peak_flops_per_gpu",
            "flops_per_token",
            "peak_source",
        ):
            if key in mfu:
                record[key] = mfu[key]
        record.setdefault("tokens_per_sec", mfu.get("tokens_per_sec"))
        if memory_stats:
            record["memory"] = memory_stats
        if grad_stats:
            record["gradients"] = grad_stats
        # what finalize() needs of it, not the whole record (a long run logs hundreds of thousands)
        self.iters.append(_summarized(record))
        self._write({"type": "iter", **record})
        top = {k: v for k, v in record.items() if not isinstance(v, dict) and k != "iter"}  # iter: the step
        self._scalars(iter_num, {"train": top, "memory": memory_stats or {}, "gradients": grad_stats or {}})
        self._print(self._render(record, mfu, memory_stats or {}, grad_stats or {}))
        self._show_status(iter_num)

    # ------------------------------------------------------------------ console view
    def _render(self, r: dict[str, Any], mfu: dict[str, Any], mem: dict[str, Any], grads: dict[str, Any]) -> str:
        lr = _fmt(r.get("lr"), ".2e")
        tps = _fmt(r.get("tokens_per_sec"), ",.0f")
        mfu_pct = _fmt(r.get("mfu_percent"), ".2f", "n/a") + ("%" if r.get("mfu_percent") is not None else "")
        peak_per_gpu = r.get("hardware_peak_flops_per_gpu")
        multi = (mfu.get("num_gpus") or 1) > 1
        # ranks on CPUs (gloo) are processes, not GPUs
        unit = "GPU" if str((self.startup.get("hardware") or {}).get("device", "cuda")).startswith("cuda") else "rank"
        per_gpu = f" per {unit}" if multi else ""
        if self.style == "compact":
            parts = [f"iter {r['iter']}", f"loss {r['loss']:.4f}", f"{r['dt_ms']:.0f}ms", f"lr {lr}"]
            parts.append(f"tok/s {tps}" + (f" (all {unit}s)" if multi else ""))
            if r.get("mfu_percent") is not None:  # (n/a without a known peak, as the startup report said)
                parts.append(f"mfu {mfu_pct}")
            if mem.get("allocated_gb") is not None:  # the device's tensors; on a CPU, the process's whole memory
                parts.append(f"mem {mem['allocated_gb']:.2f}GB")
            elif mem.get("rss_gb") is not None:
                parts.append(f"rss {mem['rss_gb']:.2f}GB")
            norm = grads.get("global_norm", float("nan")) if grads else r.get("grad_norm")  # clipping's between
            if norm is not None:  # statistics steps (it was shown on those alone)
                parts.append(f"gnorm {norm:.3f}")
            return " | ".join(parts)
        lines = [
            RULE,
            f"📍 Iter {r['iter']:>6} │ Loss: {r['loss']:.4f} │ Time: {r['dt_ms']:.0f}ms │ LR: {lr}",
            RULE,
            # on several ranks the rates per GPU, and the tokens of them all: each label says which
            f"⚡ MFU: {mfu_pct} │ Achieved: {_flops(_times(r.get('achieved_tflops_per_gpu'), 1e12), '.3g')}"
            f"{per_gpu} │ Peak: {_flops(peak_per_gpu, '.4g')}{per_gpu}",
            f"   Tokens/s: {tps}{f' (all {unit}s)' if multi else ''} │ FLOPs/token: "
            + _flops(r.get("flops_per_token"), ".3g"),
        ]
        if mem:
            if mem.get("allocated_gb") is not None:
                lines.append(
                    f"💾 Memory: {mem['allocated_gb']:.2f} GB alloc │ "
                    f"{_fmt(mem.get('max_allocated_gb'), '.2f')} GB peak"
                    f" │ {_fmt(mem.get('reserved_gb'), '.2f')} GB reserved"
                )
            elif mem.get("rss_gb") is not None:
                lines.append(f"💾 Memory: {mem['rss_gb']:.2f} GB process RSS (CPU)")
        if grads:
            lines.append(
                f"📊 Gradients: norm={grads.get('global_norm', float('nan')):.4f} │ "
                f"mean={grads.get('grad_mean', float('nan')):.2e} │ std={grads.get('grad_std', float('nan')):.2e}"
            )
        elif r.get("grad_norm") is not None:  # between statistics steps: gradient clipping's norm
            lines.append(f"📊 Gradients: norm={r['grad_norm']:.4f}")
        return "\n".join(lines)

    def _show_status(self, iter_num: int) -> None:
        """A progress bar with ETA, on a terminal only (plain logs stay clean)."""
        if not (self.status_bar and self.max_iters) or self._console_closed:
            return
        done = min(1.0, (iter_num + 1) / (self.max_iters + 1))
        # this session's rate: a resumed run's earlier iterations took none of its time
        done_here = max(1, iter_num + 1 - self.start_iter)
        eta = (time.perf_counter() - self.start_clock) * max(0, self.max_iters - iter_num) / done_here
        bar = "█" * int(30 * done) + "░" * (30 - int(30 * done))
        line = f"{bar} {100 * done:5.1f}% iter {iter_num}/{self.max_iters} ETA {_duration(eta)}"
        try:  # one row: a line that wraps leaves copies behind (\r returns to its last row only)
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 80
        self._emit("\r\x1b[K" + line[: max(1, columns - 1)])
        self._status_shown = not self._console_closed

    @property
    def status_shown(self) -> bool:
        """Whether the progress bar holds the console's last line (a message from elsewhere starts below it)."""
        return self._status_shown

    # ------------------------------------------------------------------ summary
    def adopt_session(self, records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """Summarize the last session that logged steps in ``records`` (log.jsonl's, sessions opened by their
        startup records) rather than this one: a resume with nothing to train, of a job killed before its
        summary, writes the summary that job would have, not one of no steps (a later session that died before
        its first step has none of its own). Returns that session's startup ``training`` record (its
        ``start_iter``, ``init_from``; {} if it has none), None if no session logged a step."""
        sessions: list[dict[str, Any]] = []  # each: its startup's training record, iters (summarized), evals, times
        for record in map(_finite_again, records):  # (as log_records reads them: "nan" as a float again)
            kind, t = record.get("type"), record.get("time")
            if kind == "startup" or not sessions:
                training = record.get("training") if kind == "startup" else None
                if sessions and not sessions[-1]["iters"]:
                    sessions.pop()  # a session that logged no step: not the one summarized
                sessions[:-1] = []  # the last session with steps, and the one now read: no more in memory
                started = training if isinstance(training, dict) else {}
                sessions.append({"training": started, "iters": [], "evals": [], "times": []})
            session = sessions[-1]
            if kind == "iter":
                session["iters"].append(_summarized(record))
            elif kind == "eval" and isinstance(record.get("val_loss"), float):
                session["evals"].append({"iter": record.get("iter"), "val_loss": record["val_loss"]})
            if kind in ("startup", "iter", "eval") and isinstance(t, (int, float)) and not isinstance(t, bool):
                session["times"].append(t)  # (not the events after it: this session's resume)
        trained = [s for s in sessions if s["iters"]]
        if not trained:
            return None
        session = trained[-1]
        self.iters, self.evals = session["iters"], session["evals"]
        if session["times"]:  # its training time, not this session's few milliseconds
            self.start_clock = time.perf_counter() - (max(session["times"]) - min(session["times"]))
        return session["training"]

    def finalize(self, *, exit_code: int = 0, **extra: Any) -> dict[str, Any]:
        """Write ``summary.json``: throughput and MFU statistics past the warm-up iterations,
        best validation loss, total time, peak memory; then close (``exit_code``: the run's, see close)."""
        if not self.enabled:
            return {}
        steady = self.iters[self.skip_first :] or self.iters

        peaks = [r["peak_gb"] for r in self.iters]
        val_losses = [e["val_loss"] for e in self.evals if math.isfinite(e["val_loss"])]
        summary = {
            "iterations_logged": len(self.iters),
            "iterations_excluded_as_warmup": len(self.iters) - len(steady),  # logged ones (records)
            # the last iteration those records cover (each averages the steps since the one logged before)
            "warmup_through_iter": self.iters[-len(steady) - 1]["iter"] if len(steady) < len(self.iters) else None,
            "tokens_per_sec": step_stats(steady, "tokens_per_sec", rate=True),
            "mfu": step_stats(steady, "mfu", rate=True),
            "dt_ms": step_stats(steady, "dt_ms"),
            "final_loss": self.iters[-1]["loss"] if self.iters else None,
            "best_val_loss": min(val_losses) if val_losses else None,
            "final_val_loss": self.evals[-1]["val_loss"] if self.evals else None,
            # where it was measured: a run stopped by a non-finite loss has its last finite evaluation's, maybe iter 0
            "final_val_iter": self.evals[-1].get("iter") if self.evals else None,
            "total_time_s": time.perf_counter() - self.start_clock,
            "peak_memory_gb": max((p for p in peaks if p is not None), default=None),
            **extra,
        }
        if not self.eval_only:
            atomic_write(self.out_dir / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
        self._write({"type": "summary", **summary})
        try:
            if self._wandb is not None and hasattr(self._wandb, "summary"):  # a runs table sorts by the best loss
                self._wandb.summary.update(_wandb_summary(summary))
        finally:  # closed (wandb finished with the run's status) even if wandb's summary failed
            self.close(exit_code)
        return summary

    def close(self, exit_code: int = 0) -> None:
        """Close the log and the backends; ``exit_code``: the run's outcome, non-zero for a failed or stopped
        run (wandb shows it as failed; closed here, before the error leaves, wandb's own hook never sees it)."""
        if self._status_shown:
            self._emit("\n")
            self._status_shown = False
        failed = False
        try:
            if self.enabled and not self._file.closed:
                try:
                    self._file.close()
                except OSError:
                    if not self._write_failed:
                        failed = True
                        raise  # the close's own failure (its flush hit a full disk): the run's error
                    # the bytes the failed write left in the buffer, flushed again: that write's one line (the
                    # file, the space free) is the error the run ends with
        finally:  # wandb and TensorBoard close however the log's close went (a wandb run left open hangs on)
            run, self._wandb = self._wandb, None
            writer, self._tb = self._tb, None
            try:
                if run is not None:  # a close that fails ends the run with that error: wandb shows it failed
                    run.finish(exit_code=exit_code or int(failed))
            finally:
                if writer is not None:
                    writer.close()
