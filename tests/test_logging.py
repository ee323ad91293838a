"""gptlab.logging and the run lock: what a cluster job meets (a full disk, a torn last line after a kill, a
stdout that is not UTF-8, a job submitted twice) ends in one line or is repaired, never in a mixed run."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest

from gptlab.errors import ConfigError, GptlabError
from gptlab.fileio import RUN_LOCK, run_lock
from gptlab.logging import TrainingLogger, read_log


def test_a_resumed_log_loses_no_record_to_a_torn_last_line(tmp_path: Path) -> None:
    """A killed write leaves a line without its newline; appending would glue the next record to it."""
    good = json.dumps({"type": "iter", "iter": 1, "loss": 2.0})
    (tmp_path / "log.jsonl").write_text(good + "\n" + '{"type": "iter", "iter": 2, "lo')
    logger = TrainingLogger(tmp_path, stream=io.StringIO(), resume=True)
    logger.log_event("resume", "resuming")
    logger.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON again
    assert records[0]["iter"] == 1 and [r.get("event") for r in records[1:]] == ["log_repaired", "resume"]
    assert "last line was cut off (31 bytes" in records[1]["message"]


def test_a_log_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    logger = TrainingLogger(tmp_path, stream=io.StringIO())

    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    logger._file.close()
    logger._file = Full()
    full = r"cannot write .*log\.jsonl: No space left on device \(.* free on its disk\)"
    with pytest.raises(GptlabError, match=full):
        logger.log_event("checkpoint", "saving")


def test_closing_after_a_failed_write_keeps_that_write_error(tmp_path: Path) -> None:
    """The bytes a full disk refused stay in the file's buffer: closing flushed them again, and that second
    OSError (no file named, no space said) replaced the write's one line as the run's error."""

    class FullDisk(io.BufferedWriter):
        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    logger = TrainingLogger(tmp_path, stream=io.StringIO())
    logger._file.close()
    logger._file = io.TextIOWrapper(FullDisk(io.FileIO(tmp_path / "log.jsonl", "a")), encoding="utf-8")
    with pytest.raises(GptlabError, match=r"cannot write .*log\.jsonl: No space left on device"):
        logger.log_event("checkpoint", "saving")
    logger.close(exit_code=2)  # quietly: the write's error is the one reported
    assert logger._file.closed
    healthy = TrainingLogger(tmp_path / "other", stream=io.StringIO())
    healthy._file.close()
    healthy._file = io.TextIOWrapper(FullDisk(io.FileIO(tmp_path / "other.jsonl", "a")), encoding="utf-8")
    with pytest.raises(OSError, match="No space left"):  # a close failing on its own is not hidden
        healthy.close()


def test_a_console_that_cannot_encode_the_rules_gets_them_replaced(tmp_path: Path) -> None:
    """PYTHONIOENCODING=latin-1 or an ASCII locale: the banner's box drawing would end the run."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    logger = TrainingLogger(tmp_path, stream=stream)
    logger.log_startup_info({"model": {}}, "\u2550\u2550 gptlab \u2550\u2550\nmodel \u2500 4 layers")
    logger.close()
    stream.flush()
    assert raw.getvalue().decode("ascii").startswith("?? gptlab ??")


def test_read_log_refuses_a_record_type_it_does_not_know(tmp_path: Path) -> None:
    """read_log(run, 'iters') returned [] as if the run had logged no steps."""
    with pytest.raises(ConfigError, match=r"^kind='iters' is not a record type of log.jsonl \(did you mean 'iter'\?\)"):
        read_log(tmp_path, "iters")


def test_read_log_gives_floats_back_and_skips_a_torn_line(tmp_path: Path) -> None:
    """The file spells non-finite numbers as strings (strict JSON, for jq); read_log (and pandas through it)
    gets numbers."""
    logger = TrainingLogger(tmp_path, stream=io.StringIO())
    logger._write({"type": "iter", "iter": 3, "grad_norm": math.nan, "loss": math.inf, "memory": {"x": -math.inf}})
    logger._write({"type": "eval", "iter": 3, "val_loss": 2.5})
    logger._write({"type": "startup", "training": {"out_dir": "inf", "dataset": "nan"}, "hardware": {"dtype": "inf"}})
    logger._write({"type": "summary", "status": "completed", "sample": "inf", "final_val_loss": math.nan})
    logger.close()
    assert '"grad_norm": "nan"' in (tmp_path / "log.jsonl").read_text()
    # text that reads like a number stays text: a run in --out_dir=inf, a sample of the three letters "inf"
    ((startup,), (summary,)) = read_log(tmp_path, "startup"), read_log(tmp_path, "summary")
    assert startup["training"] == {"out_dir": "inf", "dataset": "nan"} and startup["hardware"]["dtype"] == "inf"
    assert summary["sample"] == "inf" and math.isnan(summary["final_val_loss"])
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"type": "iter", "iter": 4, "lo')  # killed mid-write
    (record,) = read_log(tmp_path, "iter")
    assert math.isnan(record["grad_norm"]) and record["loss"] == math.inf and record["memory"]["x"] == -math.inf
    assert [r["type"] for r in read_log(tmp_path / "log.jsonl")] == ["iter", "eval", "startup", "summary"]
    pd = pytest.importorskip("pandas")
    frame = pd.json_normalize(read_log(tmp_path, "iter"))
    assert frame["grad_norm"].dtype == float and frame["memory.x"].iloc[0] == -math.inf
    (tmp_path / "log.jsonl").write_text(
        # a line nested past Python's recursion limit, mid-file: one line, not a RecursionError
        json.dumps({"type": "eval", "iter": 1}) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n" + "{}\n"
    )
    with pytest.raises(GptlabError, match=r"log\.jsonl:2 is not valid JSON"):
        read_log(tmp_path)


def test_one_training_per_out_dir(tmp_path: Path) -> None:
    """A second run into a live run's out_dir is refused, naming the holder; the lock goes with the run, and
    a run that never started leaves no directory behind."""
    out = tmp_path / "run"
    with run_lock(out):
        assert "pid " in (out / RUN_LOCK).read_text()
        busy = r"out_dir=.* is in use by another training \(pid \d+ on .*\): wait"
        with pytest.raises(ConfigError, match=busy), run_lock(out):
            pass
        assert (out / RUN_LOCK).exists()  # the refused one removed nothing of the live one's
    with run_lock(out):  # released
        pass
    assert not out.exists()  # nothing of a run was written: no trace
    nested = tmp_path / "a" / "b" / "c"
    with run_lock(nested):
        pass
    assert not (tmp_path / "a").exists()  # every folder made for it
    with run_lock(tmp_path / "miss" / ".." / "other"):
        pass
    assert not (tmp_path / "other").exists() and not (tmp_path / "miss").exists()


def test_a_filesystem_without_flock_trains_unguarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    def no_flock(*args: object) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre mounted noflock

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with run_lock(tmp_path / "run"):
        (tmp_path / "run" / "log.jsonl").write_text("")
    assert (tmp_path / "run" / "log.jsonl").exists()


def test_log_repaired_opens_the_session_on_the_reports_time_axis(tmp_path: Path) -> None:
    """The repaired-log event comes before the resume event: the hours between the sessions are not
    training time."""
    from gptlab.report import load_run

    records = [
        {"type": "startup", "time": 100.0, "training": {"start_iter": 0, "tokens_per_iter": 8}},
        {"type": "iter", "iter": 0, "time": 101.0, "loss": 3.0},
        {"type": "event", "event": "log_repaired", "time": 5000.0, "message": "cut"},
        {"type": "event", "event": "resume", "time": 5000.5, "message": "resuming"},
        {"type": "startup", "time": 5001.0, "training": {"start_iter": 1, "tokens_per_iter": 8}},
        {"type": "iter", "iter": 1, "time": 5002.0, "loss": 2.0},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    repaired = [r["elapsed_s"] for r in load_run(tmp_path).iters]
    unrepaired = [r for r in records if r.get("event") != "log_repaired"]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unrepaired))
    assert repaired == [r["elapsed_s"] for r in load_run(tmp_path).iters] == [1.0, 2.5]  # 1 s, then 1.5 s


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from gptlab import __version__
    from gptlab.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"gptlab {__version__} (torch ")


def test_a_symlinked_log_is_not_followed(tmp_path: Path) -> None:
    """A run directory from elsewhere whose log.jsonl links to another file: appending (a resume) or
    truncating (a new run) would write outside out_dir."""
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's file\nno newline")
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").symlink_to(victim)
    for resume in (True, False):
        with pytest.raises(GptlabError, match=r"log\.jsonl is a symbolic link .*: gptlab writes its log only"):
            TrainingLogger(run, stream=io.StringIO(), resume=resume)
    assert victim.read_text() == "someone's file\nno newline"


@pytest.mark.parametrize("logged", [1, 2, 5])
def test_summary_says_which_iterations_its_statistics_leave_out(tmp_path: Path, logged: int) -> None:
    """With log_interval=25 the first two records (iterations 0 and 25) are warm-up: the statistics cover
    the steps after iteration 25, whatever the count of excluded records suggests."""
    logger = TrainingLogger(tmp_path, stream=io.StringIO())
    for i in range(logged):
        logger.log_iter_detailed(25 * i, 2.0, dt_ms=1000.0 if i < 2 else 10.0, tokens_per_sec=float(i))
    summary = logger.finalize()
    logger.close()
    if logged <= 2:  # too few to leave any out
        assert summary["iterations_excluded_as_warmup"] == 0 and summary["warmup_through_iter"] is None
        assert summary["dt_ms"]["mean"] == 1000.0
    else:
        assert summary["iterations_excluded_as_warmup"] == 2 and summary["warmup_through_iter"] == 25
        assert summary["dt_ms"]["mean"] == 10.0 and summary["tokens_per_sec"]["median"] == 3.0


def test_mean_throughput_is_tokens_over_time(tmp_path: Path) -> None:
    """Steps of 10 ms and 30 ms at 512 tokens: the run delivered 1024 tokens in 40 ms, 25,600 tokens/s; the plain
    mean of the two rates (51,200 and 17,067) said 34,133, 33% more than the wall clock saw; MFU alike."""
    logger = TrainingLogger(tmp_path, stream=io.StringIO())
    for i in range(6):
        dt = 10.0 if i % 2 else 30.0
        logger.log_iter_detailed(i, 2.0, dt_ms=dt, mfu=0.004 / dt, tokens_per_sec=512 / (dt / 1000))
    summary = logger.finalize()
    assert summary["tokens_per_sec"]["mean"] == pytest.approx(1024 / 0.040)
    assert summary["mfu"]["mean"] == pytest.approx(0.004 * 2 / 40.0)  # the MFU of that throughput
    assert summary["dt_ms"]["mean"] == 20.0 and summary["tokens_per_sec"]["median"] == pytest.approx(34133.33, 1e-5)
    # records of windows of different lengths (an evaluation restarts one): 1 step of 30 ms, then 4 of 10 ms are
    # 2560 tokens in 70 ms (weighted by the step time alone it said 25,600 tokens/s)
    logger = TrainingLogger(tmp_path / "windows", stream=io.StringIO(), skip_first=0)
    for i, (dt, steps) in enumerate([(30.0, 1), (10.0, 4)] * 2):
        logger.log_iter_detailed(i, 2.0, dt_ms=dt, tokens_per_sec=512 / (dt / 1000), timed_steps=steps)
    summary = logger.finalize()
    assert summary["tokens_per_sec"]["mean"] == pytest.approx(2560 / 0.070)
    assert summary["dt_ms"]["mean"] == pytest.approx(70.0 / 5)  # per step, as the rate: 512 / 14 ms is it


def test_evaluations_in_the_summary_and_on_the_console(tmp_path: Path) -> None:
    """Evaluations of val loss 3.0, 2.0, nan, 2.5: the summary's best is the least finite one and its final the
    last one's (a NaN is no best); the console line names train and val loss in that order."""
    console = io.StringIO()
    logger = TrainingLogger(tmp_path, stream=console)
    for i, (train_loss, val_loss) in enumerate([(3.1, 3.0), (2.2, 2.0), (2.4, math.nan), (1.5, 2.5)]):
        logger.log_eval(10 * i, train_loss, val_loss)
    assert "step 30: train loss 1.5000, val loss 2.5000" in console.getvalue()
    summary = logger.finalize()
    assert summary["best_val_loss"] == 2.0 and summary["final_val_loss"] == 2.5
    assert json.loads((tmp_path / "summary.json").read_text())["best_val_loss"] == 2.0


def test_the_logger_keeps_only_what_the_summary_needs(tmp_path: Path) -> None:
    """A long run at log_interval=1 would hold every record (gradient statistics and all, ~1.5 KB each) in
    memory to the end; the summary's figures come out the same from what is kept."""
    logger = TrainingLogger(tmp_path, stream=io.StringIO())
    grads = {"global_norm": 1.0, "per_layer": {f"blocks.{i}.w": float(i) for i in range(50)}}
    for i, rss in enumerate((1.0, 3.0, 2.0)):
        logger.log_iter_detailed(i, 2.0 - i, 5.0, memory_stats={"rss_gb": rss}, grad_stats=grads, lr=1e-3)
    assert all("gradients" not in r and "memory" not in r for r in logger.iters)
    summary = logger.finalize()
    assert summary["peak_memory_gb"] == 3.0 and summary["final_loss"] == 0.0 and summary["dt_ms"]["mean"] == 5.0
    (last,) = [r for r in read_log(tmp_path, "iter") if r["iter"] == 2]
    assert last["gradients"] == grads and last["memory"] == {"rss_gb": 2.0}  # the log keeps everything


def test_a_cpu_runs_peak_is_its_high_water_rss() -> None:
    """The RSS at a logged step missed the backward's peak between steps (2.60 GB where max_rss said 2.92)."""
    from gptlab.logging import logged_peak_gb

    assert logged_peak_gb({"rss_gb": 2.6, "max_rss_gb": 2.92}) == 2.92
    assert logged_peak_gb({"rss_gb": 2.6, "max_rss_gb": None}) == 2.6  # no high-water mark read here
    assert logged_peak_gb({"max_allocated_gb": 1.5, "rss_gb": 2.6, "max_rss_gb": 2.92}) == 1.5  # CUDA's tensors


class _Terminal(io.StringIO):
    """A console that says it is a terminal (the progress bar draws only on one)."""

    def isatty(self) -> bool:
        return True


def _bar(text: str) -> str:
    return text.rsplit("\r\x1b[K", 1)[-1]


def test_a_resumed_sessions_eta_is_from_its_own_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed at 3000 of 6000, 10 s for its first 500 iterations: 50 s to go (was 0m01s, this session's
    time spread over the whole run's iterations)."""
    clock = iter([100.0, 110.0])
    monkeypatch.setattr("gptlab.logging.time.perf_counter", lambda: next(clock))
    stream = _Terminal()
    logger = TrainingLogger(tmp_path, stream=stream, max_iters=6000, start_iter=3000)
    logger.log_iter_detailed(3499, 3.0, 20.0)
    assert _bar(stream.getvalue()).endswith("iter 3499/6000 ETA 0m50s")


def test_the_progress_bar_keeps_to_one_row_and_not_on_a_dumb_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gptlab.logging.os.get_terminal_size", lambda fd=0: os.terminal_size((40, 24)))
    monkeypatch.setattr(_Terminal, "fileno", lambda self: 1, raising=False)
    stream = _Terminal()
    logger = TrainingLogger(tmp_path / "narrow", stream=stream, max_iters=600_000)
    logger.log_iter_detailed(123_456, 3.0, 20.0)
    bar = _bar(stream.getvalue())
    assert bar.startswith("█") and len(bar) == 39  # a wrapped line leaves a copy per redraw
    monkeypatch.setenv("TERM", "dumb")  # Emacs' shell: no cursor movement
    stream = _Terminal()
    logger = TrainingLogger(tmp_path / "dumb", stream=stream, max_iters=10)
    logger.log_iter_detailed(1, 3.0, 20.0)
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue() and "ETA" not in stream.getvalue()


def test_a_console_that_goes_away_leaves_the_run_going(tmp_path: Path) -> None:
    """`| tee` killed by the Ctrl-C that also asks the run to checkpoint: the console's BrokenPipeError must
    not end the run before it saves; what follows is in log.jsonl."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w", encoding="utf-8")  # noqa: SIM115
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    logger = TrainingLogger(tmp_path, stream=stream, max_iters=10)
    logger.log_eval(4, 3.5, 3.6)
    logger.log_event("checkpoint", "saving checkpoint")
    logger.finalize()
    if descriptors is not None:  # /dev/null opened for the redirect is not left open for the process's life
        assert len(os.listdir("/proc/self/fd")) <= descriptors
    stream.close()  # its buffer went to /dev/null: no 'Exception ignored' at exit
    kinds = [(r["type"], r.get("event")) for r in read_log(tmp_path / "log.jsonl")]
    assert kinds[:3] == [("eval", None), ("event", "console_closed"), ("event", "checkpoint")]
    assert kinds[-1] == ("summary", None)


def test_a_planted_lock_link_is_not_written_through(tmp_path: Path) -> None:
    """A downloaded run folder whose .gptlab.lock links elsewhere: the lock was opened through the link and the
    file it names truncated to 'pid ... on ...'."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "downloaded"
    out.mkdir()
    (out / "log.jsonl").write_text("")
    (out / RUN_LOCK).symlink_to(victim)
    with run_lock(out):
        assert "pid " in (out / RUN_LOCK).read_text() and not (out / RUN_LOCK).is_symlink()
    assert victim.read_text() == "precious"


def test_an_atomic_write_replaces_a_planted_temporary_link(tmp_path: Path) -> None:
    import os

    from gptlab.fileio import atomic_write

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / f".summary.json.tmp-{os.getpid()}").symlink_to(victim)
    atomic_write(tmp_path / "summary.json", "{}")
    assert victim.read_text() == "precious" and (tmp_path / "summary.json").read_text() == "{}"


def test_a_console_that_cannot_take_a_line_yet_is_not_closed(tmp_path: Path) -> None:
    """A non-blocking stdout with a slow reader (EAGAIN) is not a closed console: the line stays buffered."""

    class Slow(io.StringIO):
        stalls = 1

        def flush(self) -> None:
            if self.stalls:
                self.stalls -= 1
                raise BlockingIOError(11, "write could not complete without blocking")

    stream = Slow()
    logger = TrainingLogger(tmp_path, stream=stream)
    logger.log_event("checkpoint", "first")
    logger.log_event("checkpoint", "second")
    assert stream.getvalue() == "first\nsecond\n"
    assert not [r for r in read_log(tmp_path / "log.jsonl") if r.get("event") == "console_closed"]


def test_the_console_says_which_rates_are_per_gpu(tmp_path: Path) -> None:
    """On 2 ranks 'Achieved' is per GPU and Tokens/s is the job's: each label says so (Achieved x 2 is tokens/s x
    FLOPs/token, which read as a contradiction when only Peak said 'per GPU')."""
    from gptlab import get_debug_config
    from gptlab.telemetry.mfu import estimate_mfu_detailed

    stream = io.StringIO()
    logger = TrainingLogger(tmp_path, stream=stream)
    mfu = estimate_mfu_detailed(get_debug_config("gpt2"), 4, 0.5, num_gpus=2, peak_flops=1e12)
    logger.log_iter_detailed(1, 2.0, 500.0, mfu_breakdown=mfu)
    text = stream.getvalue()
    assert "F per GPU │ Peak: 1 TF per GPU" in text and f"Tokens/s: {mfu['tokens_per_sec']:,.0f} (all GPUs)" in text
    # a test model's figures in units that fit them (they read 'Achieved: 0.000542 TF', '0.000197 GF')
    import re

    assert re.search(r"Achieved: [1-9][\d.]* [KMG]F per GPU .* FLOPs/token: [1-9][\d.]* [KM]F\n", text, re.S), text
    from gptlab.logging import _flops

    assert [_flops(x, ".3g") for x in (999.7e9, 28.5e9, 0.5)] == ["1 TF", "28.5 GF", "0.5 F"]  # the prefix as rounded
    one = io.StringIO()
    TrainingLogger(tmp_path / "one", stream=one).log_iter_detailed(1, 2.0, 500.0, mfu_breakdown={**mfu, "num_gpus": 1})
    assert "per GPU" not in one.getvalue() and "(all GPUs)" not in one.getvalue()
    cpu = io.StringIO()  # two gloo processes on CPUs: ranks, not GPUs
    on_cpu = TrainingLogger(tmp_path / "cpu", stream=cpu)
    on_cpu.startup = {"hardware": {"device": "cpu"}}
    on_cpu.log_iter_detailed(1, 2.0, 500.0, mfu_breakdown=mfu)
    assert "F per rank │ Peak: 1 TF per rank" in cpu.getvalue() and "(all ranks)" in cpu.getvalue()
    compact = io.StringIO()  # the one-line style says it too (its tok/s read as one rank's)
    TrainingLogger(tmp_path / "compact", stream=compact, style="compact").log_iter_detailed(
        1, 2.0, 500.0, mfu_breakdown=mfu
    )
    assert f"tok/s {mfu['tokens_per_sec']:,.0f} (all GPUs)" in compact.getvalue()


def test_the_startup_report_says_which_figures_are_per_gpu() -> None:
    """Under DDP the peak is one GPU's and the expected tokens/s the job's: both say so (a reader computed the
    throughput from the peak shown and found it twice as high)."""
    from gptlab.train.startup_report import render_startup_report

    def report(world: int, device: str) -> str:
        training = {"dataset": "d", "tokenizer": "char", "vocab_size": 64, "init_from": "scratch", "world_size": world,
                    "start_iter": 0, "max_iters": 1, "total_tokens": 1, "optimizer": "o", "schedule": "s", "eval": "e",
                    "out_dir": "o", "batch_size": 1, "block_size": 8, "gradient_accumulation_steps": world,
                    "micro_steps_per_rank": 1, "sequences_per_iter": world, "tokens_per_iter": 8 * world}  # fmt: skip
        hardware = {"device": device, "device_name": "x", "dtype": "bfloat16", "compile": False, "parallelism": "ddp",
                    "peak_tflops": 989.0, "peak_precision": "bf16", "peak_source": "datasheet"}  # fmt: skip
        expectations = {"flops_per_token": 1e9, "expected_mfu": 0.4, "expected_tokens_per_sec": 400_000.0 * world}
        architecture = {"summary": "s", "params": 1, "params_non_embedding": 1}
        r = {"architecture": architecture, "training": training, "hardware": hardware, "expectations": expectations}
        return render_startup_report(r)

    assert "989.0 TFLOPS dense bf16 per GPU (datasheet)" in report(8, "cuda:0")
    assert "3,200,000 tokens/s over 8 GPUs (400,000 per GPU) at 40% MFU" in report(8, "cuda:0")
    assert "800,000 tokens/s over 2 ranks (400,000 per rank)" in report(2, "cpu")
    one = report(1, "cuda:0")
    assert "989.0 TFLOPS dense bf16 (datasheet)" in one and "400,000 tokens/s at 40% MFU" in one


def test_a_compact_line_leaves_out_an_unknown_mfu(tmp_path: Path) -> None:
    """The quick start's style on a CPU, where the startup report said MFU is not reported: 'mfu n/a' on every
    line only made it wider (92 columns with the gradient norm)."""
    stream = io.StringIO()
    logger = TrainingLogger(tmp_path, style="compact", stream=stream)
    logger.log_iter_detailed(
        700, 1.2345, 312.0, memory_stats={"rss_gb": 0.34}, grad_stats={"global_norm": 0.4321},
        lr=6e-4, tokens_per_sec=10_503.0,
    )  # fmt: skip
    (line,) = stream.getvalue().splitlines()
    assert "mfu" not in line and "gnorm 0.432" in line
    assert "| rss 0.34GB |" in line  # a CPU's figure is the process's memory, not tensors' ('mem' on CUDA)
    logger.log_iter_detailed(701, 1.2, 300.0, lr=6e-4, tokens_per_sec=1e4, mfu_percent=41.5)
    assert stream.getvalue().splitlines()[-1].endswith("| mfu 41.50%")
    # between statistics steps, gradient clipping's norm (it was shown on statistics steps alone)
    logger.log_iter_detailed(702, 1.2, 300.0, lr=6e-4, tokens_per_sec=1e4, grad_norm=0.25)
    assert stream.getvalue().splitlines()[-1].endswith("| gnorm 0.250")
    detailed = io.StringIO()
    TrainingLogger(tmp_path / "detailed", stream=detailed).log_iter_detailed(702, 1.2, 300.0, grad_norm=0.25)
    assert "📊 Gradients: norm=0.2500" in detailed.getvalue()


def test_backends_close_when_the_log_file_close_fails(tmp_path: Path) -> None:
    """A log whose close fails (its flush hit a full disk) raises that error, and TensorBoard and wandb are
    still closed (a wandb run left open is shown as running, and its process outlives the job)."""
    pytest.importorskip("torch.utils.tensorboard")
    logger = TrainingLogger(tmp_path, stream=io.StringIO(), tensorboard=True)
    closed = []
    tb_close = logger._tb.close
    logger._tb.close = lambda: closed.append("tensorboard") or tb_close()  # type: ignore[union-attr]
    file_close = logger._file.close

    class FullDisk:
        def close(self) -> None:
            file_close()
            raise OSError(28, "No space left on device")

        closed = property(lambda self: False)

    class Run:  # a wandb run whose finish fails too (a network error, say)
        def finish(self, exit_code: int) -> None:
            closed.append(f"wandb {exit_code}")
            raise RuntimeError("wandb: network error")

    logger._file, logger._wandb = FullDisk(), Run()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="network error"):  # (the OSError is its context)
        logger.close()
    # wandb told the run failed (the close's error ends it), TensorBoard closed all the same
    assert closed == ["wandb 1", "tensorboard"] and logger._tb is None and logger._wandb is None


def test_removed_evaluations_leave_a_linked_folders_contents(tmp_path: Path) -> None:
    """tensorboard/eval_only linked to a shared folder: the link goes (rmtree refused it: the overwriting run
    died), the shared events stay."""
    from gptlab.logging import remove_evaluations

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "events").write_text("kept")
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "eval_only").symlink_to(shared, target_is_directory=True)
    (run / "eval.jsonl").write_text("{}\n")
    assert remove_evaluations(run) == ["eval.jsonl", "tensorboard/eval_only"]
    assert not (run / "tensorboard" / "eval_only").exists() and (shared / "events").read_text() == "kept"
    assert remove_evaluations(run) == []


def test_a_log_that_is_not_utf8_is_one_error(tmp_path: Path) -> None:
    """Random bytes where log.jsonl was (a damaged disk, another program's file): report, flops and plan had
    stopped with a UnicodeDecodeError's traceback."""
    from gptlab.logging import log_records

    (tmp_path / "log.jsonl").write_bytes(b'{"type": "startup"}\n\xb8\xff\xfe garbage\n')
    with pytest.raises(GptlabError, match=r"log\.jsonl is not a UTF-8 JSON-lines log \(invalid start byte\)"):
        list(log_records(tmp_path / "log.jsonl"))
