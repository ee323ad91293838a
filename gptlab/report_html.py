"""The HTML page of ``gptlab report``: one file, plots embedded as base64 data URIs, inline CSS,
no script and no external resource, so it opens offline in any browser."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from gptlab.report import Run

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { margin: 0; font-size: 12px; white-space: pre-wrap; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #eee; padding: 4px; width: calc(50% - 16px); }
img { width: 100%; display: block; }
figcaption, .muted { color: #666; font-size: 13px; }
"""

PLOT_TITLES = {
    "loss": "Loss vs iteration (train per iteration; evaluated train and val)",
    "loss_vs_tokens": "Loss vs tokens trained",
    "loss_vs_time": "Loss vs wall-clock time",
    "tokens_per_sec": "Tokens per second",
    "mfu": "Model FLOPs utilisation",
    "memory": "Memory",
    "grad_norm": "Gradient norm",
}
NOT_MEASURED = {
    "mfu": "MFU: n/a for every run: no dense peak was known for the device (on a CPU, pass "
    "--peak_tflops, e.g. from `gptlab peak`).",
    "loss": "loss: n/a (no finite loss was logged).",
    "loss_vs_tokens": "loss vs tokens: n/a (no finite loss was logged).",
    "loss_vs_time": "loss vs time: n/a (no finite loss was logged).",
    "tokens_per_sec": "tokens/s: n/a (not logged).",
    "memory": "memory: n/a (not logged).",
    "grad_norm": "gradient norm: n/a (no gradient statistics or clipping were logged).",
}


# A record's own stamps, not its content: the report's elapsed_s (its time axis) beside summary.json's
# total_time_s read as two figures for one thing.
RECORD_STAMPS = ("type", "time", "elapsed_s")


def fmt(value: Any) -> str:
    """A cell's text: None is n/a, floats get 4 significant digits, stats dicts their median."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 1e15:
            return f"{value:.3e}"
        # from 4 integer digits on a grouped integer (9,199 beside 10,554; 9999.96 is 10,000, not 1e+04)
        return f"{value:,.0f}" if abs(value) >= 999.95 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict) and {"mean", "median"} <= set(value):
        return f"median {fmt(value['median'])} (mean {fmt(value['mean'])}, p90 {fmt(value.get('p90'))})"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    text = fmt(value)
    if "\n" in text:
        return f"<td><pre>{html.escape(text)}</pre></td>"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; the first column of each row is its label."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr><th>{html.escape(str(r[0]))}</th>{''.join(_cell(v) for v in r[1:])}</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; statistics dicts (mean/median) stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not {"mean", "median"} <= set(v):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def side_by_side(records: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> list[list[Any]]:
    """Rows of (key, value per record) over the union of the flattened keys, in first-seen order."""
    flat = [flatten(r) for r in records]
    keys: dict[str, None] = {}
    for f in flat:
        keys.update(dict.fromkeys(k for k in f if k not in skip))
    return [[k, *(f.get(k) for f in flat)] for k in keys]


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def render_html(
    runs: list[Run],
    plots: dict[str, Path | None],
    *,
    title: str = "gptlab report",
    tables: list[tuple[str, list[str], list[list[Any]]]] | None = None,
    notes: dict[str, str] | None = None,
) -> str:
    """The whole page as a string; ``notes`` replace the default line for a plot not drawn, and follow the
    caption of one drawn (what it leaves out)."""
    not_drawn = {**NOT_MEASURED, **(notes or {})}
    labels = [r.label for r in runs]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=muted>generated {time.strftime('%Y-%m-%d %H:%M:%S')} from "
        + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs)
        + "</p>",
    ]
    if notes and "page" in notes:  # a warning about the runs as a whole, before any figure
        parts.append(f"<p><strong>Note:</strong> {html.escape(notes['page'])}</p>")
    for name, header, rows in tables or []:
        parts += [f"<h2>{html.escape(name)}</h2>", table(header, rows)]
    summaries = [{k: v for k, v in r.summary.items() if k not in RECORD_STAMPS} for r in runs]
    rows = [["mfu (fraction of peak)" if r[0] == "mfu" else r[0], *r[1:]] for r in side_by_side(summaries)]
    parts += ["<h2>Summary</h2>", table(["", *labels], rows)]
    parts.append("<h2>Plots</h2><div class=plots>")
    for name, path in plots.items():
        if path is None:
            parts.append(f"<p class=muted>{html.escape(not_drawn.get(name, f'{name}: n/a'))}</p>")
        else:
            caption = html.escape(PLOT_TITLES.get(name, name))
            note = f"; {html.escape(notes[name])}" if notes and name in notes else ""
            parts.append(f"<figure>{_img(path)}<figcaption>{caption} ({path.name}){note}</figcaption></figure>")
    parts.append("</div>")
    startups = [{k: v for k, v in r.startup.items() if k not in RECORD_STAMPS} for r in runs]
    parts += ["<h2>Startup report</h2>", table(["", *labels], side_by_side(startups))]
    events = [[r.label, e.get("event"), e.get("iter"), e.get("message")] for r in runs for e in r.events]
    if events:
        parts += ["<h2>Events</h2>", table(["run", "event", "iter", "message"], events)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["flatten", "fmt", "render_html", "side_by_side", "table"]
