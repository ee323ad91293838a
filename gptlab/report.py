"""``gptlab report``: PNG plots and one self-contained HTML page from run directories.

A run directory is what training writes: ``log.jsonl`` (startup, iter, eval, event and summary
records, see ``gptlab.logging``) and ``summary.json``. Several runs are overlaid in every plot.
matplotlib (the ``report`` extra) is imported only when plots are drawn.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError, GptlabError
from gptlab.fileio import atomic_open, atomic_write
from gptlab.logging import log_records, logged_peak_gb, step_stats

MISSING_MATPLOTLIB = "{what} needs matplotlib: pip install 'gptlab[report]'"


@dataclass
class Run:
    """One run directory's records, split by type."""

    path: Path
    label: str
    startup: dict[str, Any] = field(default_factory=dict)
    iters: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    gradients: list[dict[str, Any]] = field(default_factory=list)  # statistics of iterations not logged
    summary: dict[str, Any] = field(default_factory=dict)
    # each session (the start, then each resume): [first iteration, tokens per iteration], in log order
    sessions: list[list[Any]] = field(default_factory=list)
    # a session trained in a CPU process that trained other models too (compare --train): its RSS is no one run's
    shared_process: bool = False

    def tokens_after(self, steps: int) -> int | None:
        """Tokens trained in the first ``steps`` optimizer steps, each at its own session's batch: a
        session counts from its first iteration up to the next session's (past a kill, the resumed
        session redoes the steps after the checkpoint)."""
        known = [(start, tpi) for start, tpi in self.sessions if start is not None]
        if not known or any(tpi is None for _, tpi in known):
            return None
        total = 0
        for i, (start, tpi) in enumerate(known):
            end = known[i + 1][0] if i + 1 < len(known) else steps
            total += max(0, min(steps, end) - start) * tpi
        return total


def _number(value: Any) -> float | None:
    """A finite float, or None (the logger writes NaN/inf as strings and unmeasured figures as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# what the plots read of an iter or gradients record; the rest is dropped as the log is read (a long run logs
# hundreds of thousands of them, nanoGPT's log_interval=1: whole, each held ~4 kB, 2.5 GB for 600k)
PLOTTED = ("type", "iter", "elapsed_s", "loss", "tokens_per_sec", "mfu_percent", "grad_norm", "mfu", "dt_ms")
MEMORY_KEYS = ("max_allocated_gb", "allocated_gb", "rss_gb", "max_rss_gb")


def _plotted(record: dict[str, Any]) -> dict[str, Any]:
    kept = {k: record[k] for k in PLOTTED if k in record}
    memory, gradients = record.get("memory"), record.get("gradients")
    if isinstance(memory, dict):
        kept["memory"] = {k: memory[k] for k in MEMORY_KEYS if k in memory}
    if isinstance(gradients, dict) and "global_norm" in gradients:
        kept["gradients"] = {"global_norm": gradients["global_norm"]}
    return kept


def _drop_from(run: Run, start: int) -> None:
    """A session resumed at ``start`` (its checkpoint): the records of steps from ``start`` on that the sessions
    before logged are not the run's (redone, or, for a run already done, never in its weights)."""
    run.iters = [r for r in run.iters if r["iter"] < start]
    run.gradients = [r for r in run.gradients if r["iter"] < start]
    run.evals = [r for r in run.evals if r["iter"] <= start]  # the checkpoint's own evaluation stays


def evaluation_folder(path: str | Path) -> bool:
    """Whether ``path`` is an eval_only run's folder: an eval.jsonl and no training log to plot."""
    path = Path(path)
    return path.is_dir() and (path / "eval.jsonl").is_file() and not (path / "log.jsonl").is_file()


def without_evaluations(paths: list[str | Path], labels: list[str] | None) -> tuple[list, list[str] | None, list]:
    """``paths`` (and their ``labels``) less eval_only folders, and those folders, where other runs remain to
    report (`gptlab report out/*` over a folder that also holds an evaluation); all of them evaluations: kept,
    for run_directory's refusal."""
    evaluation = [evaluation_folder(p) for p in paths]
    if not any(evaluation) or all(evaluation):
        return list(paths), labels, []
    keep = [i for i, flagged in enumerate(evaluation) if not flagged]
    left_out = [p for p, flagged in zip(paths, evaluation) if flagged]
    return [paths[i] for i in keep], [labels[i] for i in keep] if labels else None, left_out


def run_directory(path: str | Path) -> Path:
    """The run directory ``path`` names (itself, or its ``log.jsonl``'s folder); one ConfigError line for a
    path that is none: missing, another file, an evaluation's folder, a folder without a training log."""
    path = Path(path)
    if path.is_file() and path.name == "log.jsonl":  # the log named itself: its run directory
        return path.parent
    if not path.exists():
        raise ConfigError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} is a file: expected a run directory (a training out_dir) or its log.jsonl")
    if not (path / "log.jsonl").is_file():
        if (path / "eval.jsonl").is_file():  # eval_only writes its losses there, and no training records
            raise ConfigError(
                f"run directory {str(path)!r} holds an evaluation (eval.jsonl, from eval_only=True), which a "
                "report does not plot: its losses are in that file; report the run it evaluated"
            )
        if (path / "report.html").is_file():  # `gptlab report out/compare/*` takes the comparison's report folder too
            raise ConfigError(f"{str(path)!r} is a report's folder (report.html), not a run directory: leave it out")
        raise ConfigError(f"run directory {str(path)!r} has no log.jsonl (is it a gptlab training out_dir?)")
    return path


def _check_startup(record: dict[str, Any], where: str) -> None:
    """A startup record's parts that a report reads, of the types gptlab writes (a damaged or hand-edited log: one
    line, not a traceback from deep in the plots)."""
    for part in ("hardware", "training"):
        if record.get(part) is not None and not isinstance(record[part], dict):
            raise GptlabError(
                f"{where}: a startup record whose {part!r} is a {type(record[part]).__name__}, not an object"
            )
    training = record.get("training") or {}
    for key, kinds in (("start_iter", int), ("tokens_per_iter", (int, float))):
        value = training.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise GptlabError(f"{where}: a startup record whose training {key!r} is {value!r}, not a number")


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read ``path/log.jsonl`` (and ``summary.json`` if the log has no summary record)."""
    path = run_directory(path)
    log = path / "log.jsonl"
    run = Run(path=path, label=label or folder_label(path))
    # the time axis is training time: each session (a start, then each resume) counts from its own
    # startup record, after the time the sessions before it ran (not the hours between them)
    offset, session_t0, last_t, after_resume = 0.0, None, None, False
    summarized = False  # a summary record seen: the log, not summary.json, is the record
    for n, record in log_records(log):  # (as written: the plots skip non-finite points themselves)
        kind = record.get("type")
        if kind in ("iter", "eval", "gradients") and not isinstance(record.get("iter"), int):
            raise GptlabError(f"{log}:{n}: a {kind!r} record without an integer 'iter'")
        t = _number(record.get("time"))
        if t is not None:
            # a session opens with its first record: a resume event (logged before the session's startup
            # report), or else the startup report
            # (a resume that repaired a torn log line says so first)
            resume = kind == "event" and record.get("event") in ("resume", "log_repaired")
            if session_t0 is None or resume or (kind == "startup" and not after_resume):
                if session_t0 is not None and last_t is not None:
                    offset += last_t - session_t0
                session_t0 = t
            record["elapsed_s"], last_t, after_resume = offset + t - session_t0, t, resume
        if kind in ("iter", "eval") and run.sessions and run.sessions[-1][0] is None:
            run.sessions[-1][0] = record.get("iter")  # older logs: the session's first record
        if kind == "startup":
            _check_startup(record, f"{log}:{n}")
            run.startup = record
            run.summary = {}  # an earlier session's: this one has not finished (yet)
            run.shared_process |= (record.get("hardware") or {}).get("shared_process") is True
            training = record.get("training") or {}
            start = training.get("start_iter")
            if isinstance(start, int):  # a resume at ``start`` redid what the sessions before logged past it
                _drop_from(run, start)
            run.sessions.append([start, training.get("tokens_per_iter")])
        elif kind == "iter":
            run.iters.append(_plotted(record))
        elif kind == "eval":
            run.evals.append(record)
        elif kind == "gradients":
            run.gradients.append(_plotted(record))
        elif kind == "event":
            run.events.append(record)
            # at its checkpoint, after a session that ended without a summary (killed): that session's steps
            # beyond it are not in the run's weights, even if no session follows (a requeue that finds the run
            # done); a finished session's are its history (always_save_checkpoint=False kept an earlier best)
            if record.get("event") == "resume" and isinstance(record.get("iter"), int) and not run.summary:
                _drop_from(run, record["iter"])
        elif kind == "summary":
            run.summary, summarized = record, True
    # A resume's records of an iteration replace the earlier session's (older logs without a start_iter):
    # keep the last record of each iteration.
    run.iters = list({r["iter"]: r for r in run.iters}.values())
    run.evals = list({r["iter"]: r for r in run.evals}.values())
    run.gradients = list({r["iter"]: r for r in run.gradients}.values())
    summary_file = path / "summary.json"
    if not summarized and summary_file.is_file():  # a log that never recorded one (an older gptlab's)
        try:
            run.summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except ValueError:
            raise GptlabError(f"{summary_file} is not valid JSON") from None
        if not isinstance(run.summary, dict):
            raise GptlabError(f"{summary_file} holds a {type(run.summary).__name__}, not a run's summary (an object)")
    if not (run.startup or run.iters or run.evals):
        raise GptlabError(f"{log} holds no training records (a run that never started?)")
    if not run.summary:  # its last session wrote none: killed, or still training
        run.summary = _summary_from_log(run)
    return run


NO_SUMMARY = "no summary: its last session was killed or is still running (figures from log.jsonl)"


def _summary_from_log(run: Run) -> dict[str, Any]:
    """What summary.json would hold, from the log of a run whose last session wrote none, under the same keys
    (its step figures over every logged step: no warm-up left out), its status saying so."""
    finite = [{k: v for k, v in r.items() if not isinstance(v, float) or math.isfinite(v)} for r in run.iters]
    peaks = [p for r in run.iters if isinstance(r.get("memory"), dict) and (p := logged_peak_gb(r["memory"]))]
    val_losses = [v for e in run.evals if (v := _number(e.get("val_loss"))) is not None and math.isfinite(v)]
    return {
        "status": NO_SUMMARY,
        "iterations_logged": len(run.iters),
        "last_iter": run.iters[-1]["iter"] if run.iters else None,
        "tokens_per_sec": step_stats(finite, "tokens_per_sec", rate=True),
        "mfu": step_stats(finite, "mfu", rate=True),
        "dt_ms": step_stats(finite, "dt_ms"),
        "final_loss": run.iters[-1].get("loss") if run.iters else None,
        "best_val_loss": min(val_losses) if val_losses else None,
        "final_val_loss": run.evals[-1].get("val_loss") if run.evals else None,
        "final_val_iter": run.evals[-1].get("iter") if run.evals else None,
        "peak_memory_gb": max(peaks, default=None),
    }


def incomparable_losses(runs: list[Run]) -> str | None:
    """A note when the runs' losses are per token of different datasets or tokenizers (nats per character
    against nats per BPE token): one loss axis would rank them by their tokens, not their models."""
    notes = []
    for key in ("dataset", "tokenizer"):
        values = {run.label: (run.startup.get("training") or {}).get(key) for run in runs}
        if len({v for v in values.values() if v is not None}) > 1:
            notes.append(f"{key}s differ ({', '.join(f'{label}: {v}' for label, v in values.items())})")
    if not notes:
        return None
    return f"losses not comparable across runs: {'; '.join(notes)}"


def load_runs(paths: list[str | Path], labels: list[str] | None = None) -> list[Run]:
    """Load several runs; labels default to the directory names, made unique: runs of one name in different
    folders by their parents (``x/run``, ``y/run``), then by a number no other label has."""
    runs = [load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    if not labels:
        _label_by_parents(runs)
    taken = {run.label for run in runs}
    seen: set[str] = set()
    for run in runs:
        if run.label in seen:
            n = 2
            while f"{run.label} ({n})" in taken:
                n += 1
            run.label = f"{run.label} ({n})"
            taken.add(run.label)
        seen.add(run.label)
    return runs


def folder_label(path: Path) -> str:
    """A run folder's label: its name ('.' and '..' named too: the folder they are)."""
    return path.name if path.name not in ("", ".", "..") else path.resolve().name or str(path)


def labels_by_parents(folders: list[Path]) -> list[str] | None:
    """Labels for folders that share a name: as many trailing parts of their paths as tell them apart
    (``x/run``, ``y/run``); None where they are one folder (named two ways: 'x/../z')."""
    parts = [folder.resolve().parts for folder in folders]
    distinct = list(dict.fromkeys(parts))
    if len(distinct) < 2:
        return None
    for depth in range(2, max(map(len, distinct)) + 1):
        names = {p: "/".join(p[-depth:]) for p in distinct}
        if len(set(names.values())) == len(distinct):
            return [names[p] for p in parts]
    return None


def _label_by_parents(runs: list[Run]) -> None:
    """Runs whose folders share a name are labelled by their paths' trailing parts (the same folder named
    twice gets one label, numbered by ``load_runs``)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    for group in groups.values():
        labels = labels_by_parents([run.path for run in group])
        for run, label in zip(group, labels or ()):
            run.label = label


# ---------------------------------------------------------------------------------------- series
def _memory_gb(record: dict[str, Any]) -> float | None:
    mem = record.get("memory") or {}
    for key in MEMORY_KEYS:
        if _number(mem.get(key)) is not None:
            return float(mem[key])
    return None


def _grad_norm(record: dict[str, Any]) -> float | None:
    value = _number(record.get("grad_norm"))
    return value if value is not None else _number((record.get("gradients") or {}).get("global_norm"))


# name -> (y label, function of an iter record). Each becomes one PNG with every run overlaid.
ITER_METRICS: dict[str, tuple[str, Any]] = {
    "tokens_per_sec": ("tokens/s", lambda r: _number(r.get("tokens_per_sec"))),
    "mfu": ("MFU (%)", lambda r: _number(r.get("mfu_percent"))),
    "memory": ("memory (GB)", _memory_gb),
    "grad_norm": ("gradient norm (before clipping)", _grad_norm),
}


def series(run: Run, metric: str, x: str = "iter") -> tuple[list[float], list[float]]:
    """(xs, ys) of one metric over iter records, with unmeasured points left out."""
    fn = ITER_METRICS[metric][1]
    records = run.iters
    if metric == "grad_norm":  # with the statistics of iterations not logged (their own interval)
        records = sorted([*run.iters, *run.gradients], key=lambda r: r["iter"])
    pts = [(_x(run, r, x), fn(r)) for r in records]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    return [a for a, _ in pts], [b for _, b in pts]


def _x(run: Run, record: dict[str, Any], axis: str) -> float | None:
    """The record's position on ``axis``: 'iter', 'tokens' (trained so far) or 'time' (s of training,
    over all sessions)."""
    it = record.get("iter")
    if axis == "iter":
        return it
    if axis == "tokens":
        # an iter record at i is logged after step i (i + 1 steps done); an eval at i precedes step i
        done = it + 1 if record.get("type") in ("iter", "gradients") else it
        return None if it is None else run.tokens_after(done)
    return record.get("elapsed_s")


# ---------------------------------------------------------------------------------------- plots
def require_matplotlib(what: str = "gptlab report") -> Any:
    """The matplotlib module, or one GptlabError line saying that ``what`` (the command) needs it and how
    to install it."""
    try:
        import matplotlib
    except ImportError:
        raise GptlabError(MISSING_MATPLOTLIB.format(what=what)) from None
    return matplotlib


def _pyplot() -> Any:
    require_matplotlib().use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


METRIC_NOTES = {"memory": " (CUDA: peak allocated; CPU: process RSS)"}
AXIS_LABELS = {"iter": "iteration", "tokens": "tokens trained", "time": "wall-clock time (s, evaluation included)"}


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_open(path) as f:  # replaces a link planted at the name (a downloaded run's), never writes through
        fig.savefig(f, format="png", dpi=100, metadata={"Software": None})  # no URL in the file's text chunks
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _place_legend(ax: Any) -> None:
    """A few entries inside the plot, where they cover least; more (a loss plot's three per run) beside it, where
    they cover no curve (inside, four runs' twelve entries hid the curves they named)."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= 3:
        ax.legend(fontsize=8)
    else:  # columns of at most 20 entries: a dozen runs' 36 ran off the figure's foot in one
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=-(-entries // 20))


def _legend(label: str) -> str:
    """A run's label as matplotlib draws it literally: two '$' in a folder's name would start its math mode
    (a parse error for 'd$\\frac{$a', '$5 vs $6' drawn as math), and a leading '_' would hide it from the
    legend (matplotlib's mark of a line to leave out): a space before it keeps it."""
    label = label.replace("$", r"\$")
    return f" {label}" if label.startswith("_") else label


def plot_loss(runs: list[Run], path: Path, x: str = "iter") -> Path | None:
    """Training loss per logged iteration (thin line) and evaluated train/val loss (markers); None (no
    file) when no run has a finite loss to draw (one stopped in its first evaluation, or all NaN)."""
    lines = []  # (run index, points, style, label)
    for i, run in enumerate(runs):
        pts = [(_x(run, r, x), _number(r.get("loss"))) for r in run.iters]
        lines.append((i, [p for p in pts if None not in p], "-", f"{_legend(run.label)} train (per iter)"))
        for key, style in (("train_loss", "o--"), ("val_loss", "s-")):
            pts = [(_x(run, e, x), _number(e.get(key))) for e in run.evals]
            name = "val" if key == "val_loss" else "train"
            lines.append((i, [p for p in pts if None not in p], style, f"{_legend(run.label)} {name} (eval)"))
    if not any(pts for _, pts, _, _ in lines):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, pts, style, label in lines:
        if not pts:
            continue
        if style == "-":  # (a marker where one point is all there is: a run stopped at its second logged step)
            marker = "." if len(pts) == 1 else None
            ax.plot(*zip(*pts), color=f"C{i % 10}", alpha=0.35, linewidth=1, marker=marker, label=label)
        else:
            ax.plot(*zip(*pts), style, color=f"C{i % 10}", markersize=4, label=label)
    ax.set_xlabel(AXIS_LABELS[x])
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss vs {x if x != 'iter' else 'iteration'}")
    ax.grid(alpha=0.3)
    _place_legend(ax)
    return _save(fig, path)


def plot_metric(runs: list[Run], metric: str, path: Path) -> Path | None:
    """One iter metric over steps, runs overlaid; None (no file) when no run measured it."""
    data = [(run, *series(run, metric)) for run in runs]
    if not any(ys for _, _, ys in data):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, (run, xs, ys) in enumerate(data):
        if ys:
            ax.plot(xs, ys, ".-", color=f"C{i % 10}", markersize=3, linewidth=1, label=_legend(run.label))
    ax.set_xlabel(AXIS_LABELS["iter"])
    ax.set_ylabel(ITER_METRICS[metric][0])
    ax.set_title(f"{metric.replace('_', ' ')} vs iteration" + METRIC_NOTES.get(metric, ""))
    ax.grid(alpha=0.3)
    _place_legend(ax)
    return _save(fig, path)


def _earlier_report(out: Path) -> str:
    """The page an earlier report wrote into ``out`` (each plot it drew embedded with its name as alt text), ''
    where there is none."""
    try:
        return (out / "report.html").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def write_plots(runs: list[Run], out_dir: str | Path) -> dict[str, Path | None]:
    """Every plot as ``out_dir/NAME.png``; a metric no run measured maps to None (no file)."""
    out = Path(out_dir)
    _pyplot()  # a missing matplotlib is said before an empty folder is made
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_report(out)
    plots: dict[str, Path | None] = {
        "loss": plot_loss(runs, out / "loss.png"),
        "loss_vs_tokens": plot_loss(runs, out / "loss_vs_tokens.png", x="tokens"),
        "loss_vs_time": plot_loss(runs, out / "loss_vs_time.png", x="time"),
    }
    for metric in ITER_METRICS:
        plots[metric] = plot_metric(runs, metric, out / f"{metric}.png")
    for name, path in plots.items():
        if path is None and f'alt="{name}"' in earlier:  # an earlier report's plot of it, into the same folder, is
            (out / f"{name}.png").unlink(missing_ok=True)  # not this report's; a file of the user's of that name stays
    return plots


def build_report(
    paths: list[str | Path],
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    title: str = "gptlab report",
    tables: list[tuple[str, list[str], list[list[str]]]] | None = None,
) -> Path:
    """Plots and ``out_dir/report.html`` for the runs in ``paths``; returns the HTML path.
    ``tables`` are extra (title, header, rows) sections placed first (e.g. ``gptlab compare``'s).
    A run trained in one CPU process with others (``compare --train``; its startup record's
    ``hardware.shared_process``) has an RSS that is no one run's: no memory plot or summary row is drawn from it."""
    from gptlab.report_html import render_html

    paths, labels, evaluations = without_evaluations(list(paths), labels)
    runs = load_runs(paths, labels)
    shared = [run for run in runs if run.shared_process]
    for run in shared:
        run.iters = [{k: v for k, v in r.items() if k != "memory"} for r in run.iters]
        run.summary = {k: v for k, v in run.summary.items() if k != "peak_memory_gb"}
    plots = write_plots(runs, out_dir)
    html_path = Path(out_dir) / "report.html"
    notes: dict[str, str] = {}
    if shared:
        who = "memory: the runs" if len(shared) == len(runs) else ", ".join(run.label for run in shared)
        planned = " (the Training table gives each architecture's planned peak)" if tables else ""
        notes["memory"] = f"{who} not drawn: {SHARED_PROCESS_REASON}{planned}"
    page = []
    if evaluations:
        page.append(f"left out: {', '.join(map(str, evaluations))}, {EVALUATION_LEFT_OUT}")
    mixed = incomparable_losses(runs)
    if mixed:
        notes.update({k: mixed for k in ("loss", "loss_vs_tokens", "loss_vs_time") if plots.get(k) is not None})
        page.append(mixed)
    resumed = [f"{r.label} from iter {r.summary['start_iter']}" for r in runs if r.summary.get("start_iter")]
    if resumed:  # its iterations_logged, total_time_s and step figures are that session's; the plots the whole run's
        page.append(f"a resumed run's Summary column covers its last session only ({', '.join(resumed)})")
    if plots.get("mfu") is not None:
        without = [r.label for r in runs if not any(_number(i.get("mfu_percent")) for i in r.iters)]
        if without:
            notes["mfu"] = (
                f"not drawn for {', '.join(without)}: no dense peak was known for its device (on a CPU, train with "
                "--peak_tflops, e.g. from `gptlab peak`)"
            )
    if page:
        notes["page"] = "; ".join(page)
    atomic_write(html_path, render_html(runs, plots, title=title, tables=tables or [], notes=notes or None))
    return html_path


EVALUATION_LEFT_OUT = (
    "an evaluation (eval.jsonl, from eval_only=True) with no training log to plot: its losses are in that file"
)

SHARED_PROCESS_REASON = (
    "trained one after another with other models in one CPU process (gptlab compare --train), whose RSS is "
    "not any one run's"
)


__all__ = ["ITER_METRICS", "Run", "build_report", "load_run", "load_runs", "series", "write_plots"]
