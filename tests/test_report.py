"""gptlab report on the logs of REAL tiny runs: valid, non-blank PNGs; one HTML page with every
plot embedded and no network reference; headless Chromium renders it (when installed)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gptlab.checkpoint import load_checkpoint
from gptlab.cli import main
from gptlab.config.resolve import parse_run_args
from gptlab.data.datasets import prepare_dataset
from gptlab.train.launch import train
from tests.train.conftest import tiny_args

pytest.importorskip("matplotlib")  # the `report` extra

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real runs (gpt2 and llama presets, 2 layers, 10 iterations) on the embedded dataset."""
    data = tmp_path_factory.mktemp("report_data")
    prepare_dataset("stdlib_char", data_dir=data)
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for preset in ("gpt2", "llama"):
        args = tiny_args(data, root / preset, arch_preset=preset, max_iters=10, lr_decay_iters=10, eval_interval=5)
        train(parse_run_args(args), stream=io.StringIO())
        runs.append(root / preset)
    return runs


@pytest.fixture(scope="session")
def report_dir(tiny_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", *map(str, tiny_runs), "--out", str(out)]) == 0
    return out


class _Refs(HTMLParser):
    """Every URL-bearing attribute and tag of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "data", "poster")]


def test_pngs_are_valid_images_with_content(report_dir: Path) -> None:
    import matplotlib.image

    expected = {"loss", "loss_vs_tokens", "loss_vs_time", "tokens_per_sec", "memory", "grad_norm"}
    assert {p.stem for p in report_dir.glob("*.png")} == expected  # MFU is n/a on a CPU: no plot
    for png in report_dir.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels[..., :3].std() > 0.05, f"{png.name} is blank"
        # both runs are drawn: their colours (matplotlib's C0 blue and C1 orange) appear
        rgb = (pixels[..., :3] * 255).round()
        for colour in ((31, 119, 180), (255, 127, 14)):
            assert (abs(rgb - colour).sum(-1) < 30).any(), f"{png.name} lacks a run's colour {colour}"


def test_html_is_self_contained(report_dir: Path, tiny_runs: list[Path]) -> None:
    page = (report_dir / "report.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert refs.urls and all(u.startswith("data:image/png;base64,") for u in refs.urls)
    assert len(refs.urls) == 6  # every plot embedded
    assert "script" not in refs.tags and "link" not in refs.tags and "iframe" not in refs.tags
    assert not re.search(r"url\s*\(|@import", page)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http://" not in text and "https://" not in text
    for heading in ("Summary", "Plots", "Startup report"):
        assert f"<h2>{heading}</h2>" in page
    assert "MFU: n/a" in page and "gpt2" in page and "llama" in page
    assert "tokens_per_iter" in page and "final_val_loss" in page  # startup report and summary tables
    assert "total_time_s" in page and "elapsed_s" not in page  # the report's time axis is no run figure


def test_missing_log_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no log.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ('5\n{"type": "startup"}\n', r"log\.jsonl:1 is not a record"),
        ('{"type": "startup"}\n{"type": "iter", "loss": 1.0}\n', r"log\.jsonl:2: a 'iter' record without an integer"),
        ("", "holds no training records"),
    ],
)
def test_damaged_logs_are_one_line_errors(
    log: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.jsonl").write_text(log)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_headless_chromium_renders_the_plots(report_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp()
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        (report_dir / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    # the plots' line colours are on screen: the images were decoded and drawn
    colours = image.getcolors(maxcolors=1 << 20) or []
    blue = sum(n for n, c in colours if sum(abs(a - b) for a, b in zip(c, (31, 119, 180))) < 30)
    orange = sum(n for n, c in colours if sum(abs(a - b) for a, b in zip(c, (255, 127, 14))) < 30)
    assert blue > 200 and orange > 200


def test_resumed_log_keeps_the_last_record_of_each_iteration(tmp_path) -> None:
    import json

    from gptlab.report import load_run

    lines = [{"type": "iter", "iter": i, "loss": 5.0 - i} for i in range(4)]
    lines += [{"type": "event", "event": "resume", "message": "resuming"}]
    lines += [{"type": "iter", "iter": i, "loss": 10.0 + i} for i in range(2, 5)]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    run = load_run(tmp_path)
    assert [r["iter"] for r in run.iters] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in run.iters] == [5.0, 4.0, 12.0, 13.0, 14.0]


def test_gradient_norm_series_includes_statistics_off_the_log_cadence(tmp_path: Path) -> None:
    """`gradients` records (gradient_log_interval iterations that log_interval skips) join the gradient
    norm plot, in iteration order; the step statistics (iter records) stay as logged."""
    import json

    from gptlab.report import load_run, series

    lines = [{"type": "iter", "iter": i, "loss": 1.0, "gradients": {"global_norm": 1.0 + i}} for i in (0, 3, 6)]
    lines.insert(2, {"type": "gradients", "iter": 4, "gradients": {"global_norm": 9.0}})
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    run = load_run(tmp_path)
    assert series(run, "grad_norm") == ([0, 3, 4, 6], [1.0, 4.0, 9.0, 7.0])
    assert [r["iter"] for r in run.iters] == [0, 3, 6]


def test_time_axis_counts_training_time_over_resumed_sessions(tmp_path: Path) -> None:
    """A real run resumed (as if) a day later: its time axis goes on from where the first session stopped,
    never negative and without the day between."""
    import json

    from gptlab.report import _x, load_run

    data = tmp_path / "data"
    prepare_dataset("stdlib_char", data_dir=data)
    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data, run, max_iters=4, eval_interval=4)), stream=io.StringIO())
    train(parse_run_args(tiny_args(data, run, max_iters=8, eval_interval=4, init_from="resume")), stream=io.StringIO())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    second = next(i for i, r in enumerate(records) if r.get("event") == "resume")
    assert records[second + 1]["type"] == "startup"  # the resume event comes first: the session opens there
    for r in records[second:]:
        r["time"] += 86_400.0
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = load_run(run)
    times = [_x(loaded, r, "time") for r in loaded.iters]
    assert [r["iter"] for r in loaded.iters] == list(range(9))
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 600  # seconds of training, not a day


def test_tokens_axis_follows_each_sessions_batch(tmp_path: Path) -> None:
    """A resume that changes the batch: tokens before it at the first session's rate, after it at the new one."""
    from gptlab.report import _x, load_run

    data = tmp_path / "data"
    prepare_dataset("stdlib_char", data_dir=data)
    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data, run, max_iters=4, eval_interval=4, log_interval=3)), stream=io.StringIO())
    resumed_at = load_checkpoint(run)["iter_num"]  # where the second session starts (no record logged there)
    more = dict(max_iters=10, eval_interval=4, log_interval=3, init_from="resume", gradient_accumulation_steps=6)
    train(parse_run_args(tiny_args(data, run, **more)), stream=io.StringIO())
    loaded = load_run(run)
    before = 4 * 32 * 2  # tiny_args: batch 4 x block 32, accumulation 2
    after = 3 * before
    assert resumed_at % 3 != 0  # the resume point itself is not logged with log_interval=3
    assert len(loaded.iters) > 2
    for r in loaded.iters:
        done = r["iter"] + 1
        expected = done * before if done <= resumed_at else resumed_at * before + (done - resumed_at) * after
        assert _x(loaded, r, "tokens") == expected


def test_resume_with_another_log_interval_drops_the_killed_sessions_redone_iterations(tmp_path: Path) -> None:
    """Killed after logging iters 0..5 (checkpoint at 3), resumed at 3 with log_interval=2: the first session's
    records of iterations 3..5 were redone by the second and are not part of the run (review: they stay, at the
    second session's tokens per iteration, and the time axis runs backwards)."""
    import json

    from gptlab.report import _x, load_run

    lines = [{"type": "startup", "time": 100.0, "training": {"start_iter": 0, "tokens_per_iter": 100}}]
    lines += [{"type": "iter", "iter": i, "loss": 5.0, "time": 101.0 + i} for i in range(6)]
    lines += [{"type": "event", "event": "resume", "message": "resuming", "time": 200.0}]
    lines += [{"type": "startup", "time": 200.0, "training": {"start_iter": 3, "tokens_per_iter": 200}}]
    lines += [{"type": "iter", "iter": i, "loss": 4.0, "time": 201.0 + i} for i in (4, 6)]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    run = load_run(tmp_path)
    assert [r["iter"] for r in run.iters] == [0, 1, 2, 4, 6]
    times = [_x(run, r, "time") for r in run.iters]
    assert times == sorted(times)


def test_a_requeue_that_finds_the_run_done_drops_the_killed_sessions_steps(tmp_path: Path) -> None:
    """Killed after logging iters 0..5 (checkpoint at 3), then requeued with max_iters=2: done, nothing trained,
    no startup record; only the resume event at 3 says iterations 3..5 are not in the run's weights (they
    were plotted)."""
    import json

    from gptlab.report import load_run

    lines = [{"type": "startup", "time": 100.0, "training": {"start_iter": 0, "tokens_per_iter": 100}}]
    lines += [{"type": "iter", "iter": i, "loss": 5.0, "time": 101.0 + i} for i in range(6)]
    lines += [{"type": "eval", "iter": i, "train_loss": 5.0, "val_loss": 5.0, "time": 101.0 + i} for i in (0, 3)]
    lines += [{"type": "event", "event": "resume", "message": "resuming", "iter": 3, "time": 200.0}]
    lines += [{"type": "event", "event": "done", "message": "nothing to do", "time": 200.5}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    run = load_run(tmp_path)
    assert [r["iter"] for r in run.iters] == [0, 1, 2] and [r["iter"] for r in run.evals] == [0, 3]
    # a session that finished (always_save_checkpoint=False kept its best, iteration 3's): its steps beyond the
    # checkpoint are its history, and stay when a requeue finds the run done
    session = 1 + 6 + 2  # its startup, iterations and evaluations
    finished = [*lines[:session], {"type": "summary", "status": "completed", "time": 150.0}, *lines[session:]]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in finished) + "\n")
    assert [r["iter"] for r in load_run(tmp_path).iters] == [0, 1, 2, 3, 4, 5]


def test_a_rerun_into_the_same_folder_leaves_no_plot_of_the_earlier_report(tmp_path: Path) -> None:
    """An MFU plot drawn by an earlier report into the same folder must not outlive a report that has none; a
    file of that name that no report drew is not the report's to delete."""
    import json

    from gptlab.report import build_report

    def log(mfu: float | None) -> Path:
        run = tmp_path / f"run_{mfu}"
        run.mkdir()
        lines = [{"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 10}}]
        lines += [{"type": "iter", "iter": i, "loss": 1.0, "time": 1.0 + i, "mfu_percent": mfu} for i in range(3)]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        return run

    out = tmp_path / "report"
    build_report([log(5.0)], out)
    assert (out / "mfu.png").is_file()
    without_mfu = log(None)
    build_report([without_mfu], out)
    assert not (out / "mfu.png").exists()
    # a folder of the user's with a file of that name, no report's: the file stays
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "mfu.png").write_text("my precious")
    build_report([without_mfu], photos)
    assert (photos / "mfu.png").read_text() == "my precious" and (photos / "report.html").is_file()


def test_a_downloaded_runs_links_do_not_take_the_report_elsewhere(
    tiny_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run folder from elsewhere whose report/loss.png links to a file of the user's: the PNG was written
    through the link; whose report/ links to a folder of the user's: the report went there (and removed a
    stale-looking plot of it)."""
    run = tmp_path / "downloaded"
    shutil.copytree(tiny_runs[0], run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "report").mkdir()
    (run / "report" / "loss.png").symlink_to(victim)
    assert main(["report", str(run)]) == 0
    assert victim.read_text() == "precious" and (run / "report" / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    shutil.rmtree(run / "report")
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "mfu.png").write_text("mine")
    (run / "report").symlink_to(elsewhere)
    assert main(["report", str(run)]) == 2
    assert "downloaded/report' is a link to" in capsys.readouterr().err
    assert [p.name for p in elsewhere.iterdir()] == ["mfu.png"]


def test_labels_are_one_name_per_run(tiny_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--labels: as many names as runs, none twice (a legend's two entries of one name) or empty; refused in one
    line before anything is drawn."""
    out = tmp_path / "r"
    for labels, said in (
        ("a", "--labels has 1 names for 2 run directories"),
        ("a,a", "--labels='a,a' names 'a' twice: give each run a name of its own"),
        ("a,", "--labels='a,' has an empty name: give each run a name of its own"),
    ):
        assert main(["report", *map(str, tiny_runs[:2]), "--labels", labels, "--out", str(out)]) == 2
        assert said in capsys.readouterr().err
    assert not out.exists()
    assert main(["report", *map(str, tiny_runs[:2]), "--labels", "a,b", "--out", str(out)]) == 0


def test_a_dollar_in_a_runs_name_is_drawn_as_it_is(tiny_runs: list[Path], tmp_path: Path) -> None:
    """matplotlib reads text between two '$' as math: a folder named 'd$\\frac{$a' ended the report in a
    112-line ParseSyntaxException."""
    assert main(["report", str(tiny_runs[0]), "--labels", "d$\\frac{$a", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_long_log_is_held_as_the_plotted_fields(tiny_runs: list[Path], tmp_path: Path) -> None:
    """nanoGPT's log_interval=1 over a long run logs hundreds of thousands of iter records: the report keeps
    what its plots read of each (a whole record took ~4.3 kB in memory, 2.5 GB for 600k lines), and draws
    the same points."""
    import json
    import tracemalloc

    from gptlab.report import ITER_METRICS, load_run, series

    records = [json.loads(line) for line in (tiny_runs[0] / "log.jsonl").read_text().splitlines()]
    startup = next(r for r in records if r["type"] == "startup")
    iters = [r for r in records if r["type"] == "iter"]  # real records: memory, MFU, gradient statistics
    last = {**iters[-1], "gradients": next(r["gradients"] for r in reversed(iters) if "gradients" in r)}
    last["mfu_percent"] = last["mfu_percent"] or 41.5  # a CPU has no dense peak: a GPU run's figure
    assert {"memory", "gradients", "mfu_percent", "tokens_per_sec", "grad_norm"} <= set(last)
    n = 2000
    lines = [startup, *({**last, "iter": i, "loss": 3.0 + i / n} for i in range(n))]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    tracemalloc.start()
    try:
        run = load_run(tmp_path)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / n < 1500
    assert [r["loss"] for r in run.iters] == [3.0 + i / n for i in range(n)]
    for metric, (_, value_of) in ITER_METRICS.items():
        xs, ys = series(run, metric)
        assert xs == list(range(n)) and ys == [value_of(last)] * n and ys[0] is not None, metric


def test_a_live_sessions_run_has_no_summary_of_an_earlier_one(tmp_path: Path) -> None:
    """`gptlab report` on a resumed (or overwritten) run that is still training showed the finished earlier
    session's summary (status completed, its iterations and final val loss) from its summary record or from
    the summary.json it left. A log that never recorded a summary (an older gptlab's) still reads the file."""
    import json

    from gptlab.report import NO_SUMMARY, load_run

    finished = {"type": "summary", "status": "completed", "iterations": 100, "final_val_loss": 4.7}
    lines = [
        {"type": "startup", "training": {"start_iter": 0, "tokens_per_iter": 64}},
        {"type": "iter", "iter": 99, "loss": 4.8},
        finished,
        {"type": "event", "event": "resume", "message": "resuming"},
        {"type": "startup", "training": {"start_iter": 101, "tokens_per_iter": 64}},
        {"type": "iter", "iter": 748, "loss": 3.1},
    ]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps(finished))  # left by the finished session
    live = load_run(tmp_path).summary  # the live session's, from its log: none of the finished one's figures
    assert live["status"] == NO_SUMMARY and live["final_loss"] == 3.1 and "iterations" not in live
    assert live["final_val_loss"] is None
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines[:2]) + "\n")  # no summary record
    assert load_run(tmp_path).summary["final_val_loss"] == 4.7


def test_a_killed_run_is_summarized_from_its_log(tmp_path: Path) -> None:
    """A run killed outright (kill -9, the OOM killer) writes no summary.json: its Summary column was empty, every
    row n/a beside other runs, with no word why. Now summary.json's figures from its log, its status saying so."""
    import json

    from gptlab.report import NO_SUMMARY, build_report, load_run

    lines = [{"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 100}}]
    lines += [{"type": "iter", "iter": i, "loss": 5.0 - i / 10, "time": 1.0 + i, "dt_ms": 10.0 * (1 + i % 2),
               "tokens_per_sec": 1000.0 / (1 + i % 2), "mfu": None, "memory": {"rss_gb": 0.3, "max_rss_gb": 0.4 + i}}
              for i in range(4)]  # fmt: skip
    lines += [{"type": "eval", "iter": 2, "train_loss": 4.9, "val_loss": 4.7}, {"type": "iter", "iter": 4,
              "loss": float("nan"), "dt_ms": 10.0, "tokens_per_sec": 1000.0}]  # fmt: skip
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    summary = load_run(tmp_path).summary
    assert summary["status"] == NO_SUMMARY and summary["iterations_logged"] == 5 and summary["last_iter"] == 4
    # as summary.json's: the tokens over the time (the mean weighted by step time), median and p90
    assert summary["tokens_per_sec"] == {"mean": 5 * 10_000 / 70, "median": 1000.0, "p90": 1000.0}
    assert summary["mfu"] is None and summary["best_val_loss"] == summary["final_val_loss"] == 4.7
    assert summary["peak_memory_gb"] == 3.4 and summary["dt_ms"]["median"] == 10.0
    assert NO_SUMMARY in build_report([tmp_path], tmp_path / "report").read_text()


def test_runs_of_different_tokenizers_say_their_losses_are_not_comparable(tmp_path: Path) -> None:
    """nats per character and nats per BPE token on one loss axis ranked the runs by their tokens: said at the top
    of the page and under each loss plot. Runs of one dataset and tokenizer get no such note."""
    import json

    from gptlab.report import build_report

    for name, dataset, tokenizer in (("char", "stdlib_char", "char"), ("bpe", "stdlib", "gpt2")):
        run = _write_log(tmp_path / name)
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        lines[0]["training"].update(dataset=dataset, tokenizer=tokenizer)
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    html = build_report([tmp_path / "char", tmp_path / "bpe"], tmp_path / "report").read_text()
    said = "losses not comparable across runs: datasets differ (char: stdlib_char, bpe: stdlib); tokenizers differ"
    assert f"<strong>Note:</strong> {said}" in html and html.count(said) == 4  # the page, three loss plots
    assert "not comparable" not in build_report([tmp_path / "char"], tmp_path / "one").read_text()


def test_a_run_without_a_finite_loss_draws_no_empty_loss_plot(tmp_path: Path) -> None:
    """A run stopped in its iteration-0 evaluation (a startup record only), or one whose every loss is NaN:
    its loss plots were empty 0-1 axes (and matplotlib's "No artists with labels" warning); now "n/a"."""
    import json

    from gptlab.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 10}}]
    lines += [{"type": "iter", "iter": i, "loss": float("nan"), "time": 1.0 + i} for i in range(3)]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    html = build_report([run], tmp_path / "report").read_text()
    assert not list((tmp_path / "report").glob("loss*.png"))
    assert "loss vs tokens: n/a (no finite loss was logged)." in html


def _write_log(run_dir: Path, hardware: dict | None = None) -> Path:
    """A minimal run: a startup record and three iterations with their memory."""
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"type": "startup", "time": 100.0, "training": {"start_iter": 0, "tokens_per_iter": 100},
              "hardware": hardware or {"device": "cpu"}}]  # fmt: skip
    lines += [{"type": "iter", "iter": i, "loss": 5.0 - i, "time": 101.0 + i, "memory": {"rss_gb": 0.4}}
              for i in range(3)]  # fmt: skip
    lines += [{"type": "summary", "status": "completed", "peak_memory_gb": 0.42, "time": 104.0}]
    (run_dir / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return run_dir


def test_a_label_starting_with_an_underscore_stays_in_the_legend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib leaves out of a legend every line whose label starts with '_': a run folder '_base' was drawn
    but not named."""
    from gptlab import report

    legends: list[list[str]] = []
    real_save = report._save

    def save(fig: Any, path: Path) -> Path:
        legends.append([t.get_text().strip() for t in fig.axes[0].get_legend().get_texts()])
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    runs = report.load_runs([_write_log(tmp_path / "_base"), _write_log(tmp_path / "b")])
    report.plot_metric(runs, "memory", tmp_path / "m.png")
    assert legends == [["_base", "b"]]


def test_a_training_loss_of_one_finite_point_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped by a NaN at its second logged step has one finite training loss: a line of one point,
    named in the legend, drew nothing."""
    from gptlab import report

    markers: list[str] = []
    real_save = report._save

    def save(fig: Any, path: Path) -> Path:
        markers.extend(str(line.get_marker()) for line in fig.axes[0].get_lines())
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    run = report.load_runs([_write_log(tmp_path / "a")])[0]
    run.iters = [run.iters[0], {**run.iters[1], "loss": float("nan")}]
    run.evals = []
    report.plot_loss([run], tmp_path / "loss.png")
    assert markers == ["."]


def test_a_long_legend_sits_beside_the_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss plot names up to three lines per run: more than three entries go beside the plot, where they cover
    no curve; a short legend stays inside."""
    from gptlab import report

    placed: list[bool] = []  # the legend right of the axes
    real_save = report._save

    def save(fig: Any, path: Path) -> Path:
        fig.canvas.draw()
        ax = fig.axes[0]
        placed.append(ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1)
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    runs = report.load_runs([_write_log(tmp_path / name) for name in "abcd"])
    report.plot_loss(runs, tmp_path / "loss.png")  # four entries
    report.plot_metric(runs[:2], "memory", tmp_path / "m.png")  # two
    assert placed == [True, False]


def test_labels_tell_runs_of_one_name_apart(tmp_path: Path) -> None:
    """Runs named 'run' in x/ and y/ are labelled by their parents; a number never repeats another label."""
    from gptlab.report import load_runs

    x, y, z = (_write_log(tmp_path / p / "run") for p in ("x", "y", "z"))
    assert [r.label for r in load_runs([x, y])] == ["x/run", "y/run"]
    assert [r.label for r in load_runs([x, x])] == ["run", "run (2)"]  # the same folder twice
    assert [r.label for r in load_runs([x, x, y])] == ["x/run", "x/run (2)", "y/run"]
    assert [r.label for r in load_runs([x, tmp_path / "y" / ".." / "x" / "run"])] == ["run", "run (2)"]  # one folder
    two = _write_log(tmp_path / "w" / "run (2)")
    assert [r.label for r in load_runs([x, x, two])] == ["run", "run (3)", "run (2)"]
    assert [r.label for r in load_runs([x, y, z], ["A", "A (2)", "A"])] == ["A", "A (2)", "A (3)"]


def test_the_run_directory_one_is_in_is_labelled_by_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`gptlab report .` inside a run directory: the run's folder name, not '.'."""
    from gptlab.report import load_runs

    monkeypatch.chdir(_write_log(tmp_path / "run"))
    assert [r.label for r in load_runs(["."])] == ["run"]


def test_a_path_that_is_no_run_directory_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _write_log(tmp_path / "a")
    (run / "config.json").write_text("{}")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "eval.jsonl").write_text("{}\n")
    for path, message in [
        (tmp_path / "nope", f"run directory '{tmp_path / 'nope'}' does not exist"),
        (run / "config.json", f"'{run / 'config.json'}' is a file: expected a run directory"),
        (tmp_path / "e", "holds an evaluation (eval.jsonl, from eval_only=True)"),
    ]:
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "--out" not in err, err
    # the log itself names its run: the report goes to the run's folder, as for the folder
    assert main(["report", str(run / "log.jsonl")]) == 0
    assert (run / "report" / "report.html").is_file()
    # an evaluation among runs (`gptlab report out/*`) is left out, said, and the others reported (it refused all)
    other = _write_log(tmp_path / "b")
    out = tmp_path / "both"
    assert main(["report", str(run), str(tmp_path / "e"), str(other), f"--out={out}", "--labels=A,E,B"]) == 0
    assert f"leaving out {tmp_path / 'e'}: an evaluation (eval.jsonl" in capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert f"left out: {tmp_path / 'e'}, an evaluation" in page and ">A<" in page and ">B<" in page
    monkeypatch.chdir(tmp_path)  # two folders named, one left out: ./report, as for several runs (not the run's own)
    assert main(["report", str(other), str(tmp_path / "e")]) == 0
    assert (tmp_path / "report" / "report.html").is_file() and not (other / "report").exists()


def test_a_run_trained_beside_others_in_one_process_shows_no_memory(tmp_path: Path) -> None:
    """compare --train's runs say in their startup record that their process trained the others too: a report
    over some of them (not compare's own) leaves their RSS out, and keeps another run's."""
    from gptlab.report import build_report

    shared = _write_log(tmp_path / "gpt2", {"device": "cpu", "shared_process": True})
    alone = _write_log(tmp_path / "alone")
    page = build_report([shared], tmp_path / "r1").read_text()
    assert not (tmp_path / "r1" / "memory.png").exists() and "whose RSS is not any one run" in page
    assert "peak_memory_gb" not in page
    page = build_report([shared, alone], tmp_path / "r2").read_text()
    assert (tmp_path / "r2" / "memory.png").is_file() and "gpt2 not drawn: trained one after another" in page


def test_numbers_of_four_digits_and_more_are_grouped_alike() -> None:
    from gptlab.report_html import fmt

    values = (9199.3, 10554.4, 9999.96, 999.94, 0.5303)
    assert [fmt(v) for v in values] == ["9,199", "10,554", "10,000", "999.9", "0.5303"]  # 9999.96 was 1e+04


def test_without_matplotlib_no_empty_report_folder_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gptlab.errors import GptlabError
    from gptlab.report import build_report

    run = _write_log(tmp_path / "a")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(GptlabError, match="matplotlib"):
        build_report([run], tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_the_page_says_what_a_resumed_runs_summary_and_a_partial_mfu_plot_leave_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resumed run's Summary column is its last session's (its iterations, time and medians) beside plots of the
    whole run: said at the top. An MFU plot drawn for some runs only said nothing of the others: said under it.
    A comparison's report folder given as a run (`gptlab report out/compare/*`) is named as such."""
    import json

    from gptlab.cli import main
    from gptlab.report import build_report

    gpu, resumed = _write_log(tmp_path / "gpu"), _write_log(tmp_path / "resumed")
    lines = [json.loads(line) for line in (gpu / "log.jsonl").read_text().splitlines()]
    for r in lines:
        if r["type"] == "iter":
            r["mfu_percent"] = 41.0
    (gpu / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    lines = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    lines[-1]["start_iter"] = 2  # the summary record of a session resumed at iteration 2
    (resumed / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    html = build_report([gpu, resumed], tmp_path / "report").read_text()
    assert "Summary column covers its last session only (resumed from iter 2)" in html
    assert "(mfu.png); not drawn for resumed: no dense peak was known for its device" in html
    assert "last session only" not in build_report([gpu], tmp_path / "one").read_text()
    assert main(["report", str(gpu), str(tmp_path / "report")]) == 2
    assert "is a report's folder (report.html), not a run directory: leave it out" in capsys.readouterr().err


def test_the_loss_plot_labels_each_series_with_its_own_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line of the loss plot carries the numbers its legend names: the per-iteration loss, the evaluated
    train loss and the evaluated val loss (swapped labels would read as a model that overfits)."""
    import json

    from gptlab import report

    run_dir = _write_log(tmp_path / "run")
    evals = [{"type": "eval", "iter": i, "train_loss": 3.0 - i, "val_loss": 4.0 - i, "time": 101.0 + i} for i in (0, 2)]
    with open(run_dir / "log.jsonl", "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in evals))
    drawn: dict[str, list[float]] = {}
    real_save = report._save

    def save(fig: Any, path: Path) -> Path:
        drawn.update({line.get_label(): [float(y) for y in line.get_ydata()] for line in fig.axes[0].get_lines()})
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    report.plot_loss(report.load_runs([run_dir]), tmp_path / "loss.png")
    assert drawn == {
        "run train (per iter)": [5.0, 4.0, 3.0],
        "run train (eval)": [3.0, 1.0],
        "run val (eval)": [4.0, 2.0],
    }


def _log(run_dir: Path, records: list[dict]) -> Path:
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_an_evaluation_sits_at_the_tokens_trained_before_its_step(tmp_path: Path) -> None:
    """An eval at iteration 4 precedes step 4: 4 steps of 100 tokens done; the iter record at 4 follows it: 500."""
    from gptlab.report import _x, load_run

    run = load_run(_log(tmp_path / "run", [
        {"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 100}},
        {"type": "eval", "iter": 4, "train_loss": 2.0, "val_loss": 2.1, "time": 1.0},
        {"type": "iter", "iter": 4, "loss": 2.0, "time": 2.0},
    ]))  # fmt: skip
    assert (_x(run, run.evals[0], "tokens"), _x(run, run.iters[0], "tokens")) == (400, 500)


def test_a_killed_runs_summary_gives_its_lowest_and_its_last_val_loss(tmp_path: Path) -> None:
    """Summarized from the log: best val loss the lowest evaluated (not the highest), final val loss the last
    evaluation's (not the first)."""
    from gptlab.report import load_run

    summary = load_run(_log(tmp_path / "run", [
        {"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 100}},
        *({"type": "eval", "iter": i, "train_loss": v, "val_loss": v, "time": 1.0 + i}
          for i, v in ((0, 4.9), (2, 4.1), (4, 4.4))),
        {"type": "iter", "iter": 4, "loss": 4.3, "time": 6.0},
    ])).summary  # fmt: skip
    assert (summary["best_val_loss"], summary["final_val_loss"]) == (4.1, 4.4)


def test_a_run_with_one_session_in_a_shared_process_stays_shared(tmp_path: Path) -> None:
    """Trained by compare --train (one CPU process for all its runs), then resumed alone: its memory series holds
    the shared session's RSS, so the run's memory is still no one run's."""
    from gptlab.report import load_run

    run = load_run(_log(tmp_path / "run", [
        {"type": "startup", "time": 0.0, "hardware": {"device": "cpu", "shared_process": True},
         "training": {"start_iter": 0, "tokens_per_iter": 100}},
        {"type": "iter", "iter": 0, "loss": 2.0, "time": 1.0, "memory": {"rss_gb": 3.0}},
        {"type": "event", "event": "resume", "message": "resuming", "iter": 1, "time": 10.0},
        {"type": "startup", "time": 10.0, "hardware": {"device": "cpu"},
         "training": {"start_iter": 1, "tokens_per_iter": 100}},
        {"type": "iter", "iter": 1, "loss": 1.9, "time": 11.0, "memory": {"rss_gb": 0.5}},
    ]))  # fmt: skip
    assert run.shared_process is True


def test_the_memory_plot_draws_cudas_peak_allocated_and_on_a_cpu_the_rss(tmp_path: Path) -> None:
    """As its title says (CUDA: peak allocated; CPU: process RSS): a CUDA step's host RSS is not its GPU memory."""
    from gptlab.report import load_run, series

    run = load_run(_log(tmp_path / "run", [
        {"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 100}},
        {"type": "iter", "iter": 0, "loss": 2.0, "time": 1.0,
         "memory": {"rss_gb": 2.0, "max_rss_gb": 2.5, "allocated_gb": 3.0, "max_allocated_gb": 12.5}},
        {"type": "iter", "iter": 1, "loss": 2.0, "time": 2.0,
         "memory": {"rss_gb": 2.0, "max_rss_gb": 2.5, "allocated_gb": None, "max_allocated_gb": None}},
    ]))  # fmt: skip
    assert series(run, "memory") == ([0, 1], [12.5, 2.0])


def test_the_gradient_norm_plot_takes_the_clipping_norm_where_no_statistics_were_logged(tmp_path: Path) -> None:
    """grad_clip logs each step's norm before clipping (grad_norm) with no gradient statistics: it is drawn."""
    from gptlab.report import load_run, series

    run = load_run(_log(tmp_path / "run", [
        {"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 100}},
        *({"type": "iter", "iter": i, "loss": 2.0, "grad_norm": 1.5 + i, "time": 1.0 + i} for i in range(2)),
    ]))  # fmt: skip
    assert series(run, "grad_norm") == ([0, 1], [1.5, 2.5])


def test_the_loss_plots_against_tokens_and_time_draw_those_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loss_vs_tokens.png: 100 tokens per step, so iterations 0..2 at 100, 200, 300 tokens; loss_vs_time.png:
    seconds since the startup record; each axis labelled as such."""
    from gptlab import report

    drawn: dict[str, tuple[str, list[float]]] = {}
    real_save = report._save

    def save(fig: Any, path: Path) -> Path:
        ax = fig.axes[0]
        drawn[path.stem] = (ax.get_xlabel(), [float(x) for x in ax.get_lines()[0].get_xdata()])
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    run = _log(tmp_path / "run", [
        {"type": "startup", "time": 50.0, "training": {"start_iter": 0, "tokens_per_iter": 100}},
        *({"type": "iter", "iter": i, "loss": 3.0 - i, "time": 52.0 + 2 * i} for i in range(3)),
    ])  # fmt: skip
    report.write_plots(report.load_runs([run]), tmp_path / "report")
    assert drawn["loss"] == ("iteration", [0.0, 1.0, 2.0])
    assert drawn["loss_vs_tokens"] == ("tokens trained", [100.0, 200.0, 300.0])
    assert drawn["loss_vs_time"] == ("wall-clock time (s, evaluation included)", [2.0, 4.0, 6.0])


def test_an_mfu_plot_notes_no_run_that_measured_it_after_its_first_steps(tmp_path: Path) -> None:
    """A GPU run's first logged step has no MFU yet (warm-up): it has an MFU curve, and the caption does not say
    it was not drawn for it."""
    from gptlab.report import build_report

    run = _log(tmp_path / "gpu", [
        {"type": "startup", "time": 0.0, "training": {"start_iter": 0, "tokens_per_iter": 100}},
        *({"type": "iter", "iter": i, "loss": 2.0, "time": 1.0 + i, "mfu_percent": None if i == 0 else 41.0}
          for i in range(3)),
    ])  # fmt: skip
    page = build_report([run], tmp_path / "report").read_text()
    assert (tmp_path / "report" / "mfu.png").is_file() and "not drawn for" not in page


def test_cells_group_integers_and_give_a_statistics_median_first() -> None:
    """fmt by hand: integers grouped, a stats dict as its median (then mean and p90), booleans as words,
    999.97 rounds to a grouped 1,000."""
    from gptlab.report_html import fmt

    assert fmt(154112) == "154,112"
    assert fmt({"mean": 900.0, "median": 1000.5, "p90": 1100.0}) == "median 1,000 (mean 900, p90 1,100)"
    assert (fmt(True), fmt(False)) == ("True", "False")
    assert fmt(999.97) == "1,000"


def test_flatten_joins_keys_with_dots_and_keeps_statistics_whole() -> None:
    from gptlab.report_html import flatten

    stats = {"mean": 1.0, "median": 2.0, "p90": 3.0}
    assert flatten({"training": {"tokens_per_iter": 64, "tokens_per_sec": stats}}) == {
        "training.tokens_per_iter": 64,
        "training.tokens_per_sec": stats,
    }


def test_the_summary_table_has_every_runs_keys_in_its_own_column(tmp_path: Path) -> None:
    """A key only the second run's summary has is a row (n/a for the first); each column is under its run's
    label; the events table gives each event's iteration before its message."""
    from gptlab.report import Run
    from gptlab.report_html import render_html

    a = Run(path=tmp_path / "a", label="a", summary={"status": "completed", "mfu": 0.25})
    b = Run(path=tmp_path / "b", label="b", summary={"status": "stopped", "best_val_loss": 2.5})
    b.events = [{"event": "resume", "iter": 7, "message": "resuming"}]
    page = render_html([a, b], {})
    summary = page[page.index("<h2>Summary</h2>") :]
    assert summary.startswith("<h2>Summary</h2>\n<table><tr><th></th><th>a</th><th>b</th></tr>")
    assert "<tr><th>status</th><td>completed</td><td>stopped</td></tr>" in summary
    assert "<tr><th>mfu (fraction of peak)</th><td class=num>0.25</td><td>n/a</td></tr>" in summary
    assert "<tr><th>best_val_loss</th><td>n/a</td><td class=num>2.5</td></tr>" in summary
    assert "<h2>Events</h2>" in page
    assert "<tr><th>b</th><td>resume</td><td class=num>7</td><td>resuming</td></tr>" in page


def test_an_older_logs_sessions_start_at_their_first_record(tmp_path: Path) -> None:
    """A startup record without start_iter (an older gptlab's): the session starts at its first iteration, so the
    tokens axis still has its points (100 tokens per step: 100, 200, 300)."""
    from gptlab.report import _x, load_run

    run = load_run(_log(tmp_path / "run", [
        {"type": "startup", "time": 0.0, "training": {"tokens_per_iter": 100}},
        *({"type": "iter", "iter": i, "loss": 2.0, "time": 1.0 + i} for i in range(3)),
    ]))  # fmt: skip
    assert [_x(run, r, "tokens") for r in run.iters] == [100, 200, 300]


@pytest.mark.parametrize(
    ("startup", "said"),
    [
        ({"training": "oops"}, r"a startup record whose 'training' is a str, not an object"),
        ({"hardware": "h"}, r"a startup record whose 'hardware' is a str, not an object"),
        ({"training": {"start_iter": "x"}}, r"a startup record whose training 'start_iter' is 'x', not a number"),
        ({"training": {"tokens_per_iter": "y"}}, r"a startup record whose training 'tokens_per_iter' is 'y', not a"),
    ],
)
def test_a_damaged_startup_record_or_summary_is_one_line(
    tmp_path: Path, startup: dict, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hand-edited or damaged records of the types report reads: one line naming the record, not a traceback
    from deep in the plots (an AttributeError, a TypeError)."""
    import json

    from gptlab.cli import main

    lines = [{"type": "startup", "time": 0.0, **startup}, {"type": "iter", "iter": 0, "loss": 1.0, "time": 1.0}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(rf"log\.jsonl:1: {said}", err), err
    lines[0] = {"type": "startup", "time": 0.0}
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "summary.json holds a list, not a run's summary (an object)" in err and len(err.strip().splitlines()) == 1
