"""Stopping on SIGTERM (preemption) and Ctrl-C: checkpoint at a step boundary, exit 128 + signal, resume
exactly; a second Ctrl-C aborts at once."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gptlab.checkpoint import load_checkpoint
from gptlab.train.signals import StopSignals
from tests.train.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[2]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_iter(log: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(f'"type": "iter", "iter": {at_least}' in line for line in log.open()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no iteration {at_least} logged in {log}")


def test_sigterm_checkpoints_at_a_step_boundary_and_resumes_exactly(data_dir: Path, tmp_path: Path) -> None:
    """A preempted run (no checkpoint due for 1000 iterations) saves where it stopped, says so, exits 143;
    the resumed run's losses are an uninterrupted run's, bit for bit."""
    common = dict(dropout=0.1, lr_decay_iters=60, eval_interval=1000, eval_iters=2)
    out = tmp_path / "preempted"
    proc = _train(*tiny_args(data_dir, out, max_iters=100_000, **common))
    wait_for_iter(out / "log.jsonl", proc, 6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    (event,) = [r for r in _records(out) if r.get("event") == "interrupted"]
    stopped = event["iter"]
    assert f"stopped by SIGTERM at iter {stopped}: a checkpoint at iter {stopped}" in err
    assert load_checkpoint(out)["iter_num"] == stopped >= 7
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted: SIGTERM"

    end = stopped + 4
    resumed = _train(*tiny_args(data_dir, out, max_iters=end, init_from="resume", **common))
    ref = tmp_path / "straight"  # the uninterrupted run, beside the resumed one
    straight = _train(*tiny_args(data_dir, ref, max_iters=end, **common))
    try:
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert straight.communicate(timeout=300) and straight.returncode == 0
    finally:
        for proc in (resumed, straight):  # (done by now, unless an assertion left one running)
            proc.kill()
            proc.wait()
    want = {r["iter"]: r["loss"] for r in _records(ref) if r["type"] == "iter"}
    records = _records(out)
    start = max(i for i, r in enumerate(records) if r.get("event") == "resume")
    got = {r["iter"]: r["loss"] for r in records[start:] if r["type"] == "iter"}
    assert sorted(got) == list(range(stopped, end + 1))
    assert all(got[i] == want[i] for i in got), [(i, got[i], want[i]) for i in got if got[i] != want[i]]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_stop_signals_first_asks_second_ctrl_c_aborts() -> None:
    said: list[str] = []
    # Python's own Ctrl-C handler, whatever started pytest (a background job of a script ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopSignals(said.append) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM and said == ["SIGTERM"]
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun's own SIGTERM after the terminal's: ignored
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # asked again with Ctrl-C: abort now
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stop_signals_leave_an_ignored_signal_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as nohup / a background job starts us
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == 0 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stop_before_the_first_step_evaluates_nothing_and_one_during_an_eval_stops_after_it(
    data_dir: Path, tmp_path: Path
) -> None:
    """A signal during startup (say, after a memory warning that the run will not fit) stops it before it
    allocates anything: no evaluation, no checkpoint; one during an evaluation stops right after it, with
    its checkpoint, and no step or second evaluation in between."""
    from gptlab.config.resolve import parse_run_args
    from gptlab.errors import CheckpointError
    from gptlab.train.launch import train
    from gptlab.train.loop import Trainer
    from gptlab.train.signals import TrainingInterrupted

    trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "a", max_iters=5)), stream=io.StringIO())
    loop = trainer._train_loop

    def signalled(stop: StopSignals) -> dict:
        stop.signum = signal.SIGTERM  # arrived during startup
        return loop(stop)

    trainer._train_loop = signalled  # type: ignore[method-assign]
    with pytest.raises(TrainingInterrupted, match="at iter 0: before this session's first step") as err:
        trainer.run()
    assert err.value.exit_code == 143 and not (tmp_path / "a" / "ckpt.pt").exists()
    records = _records(tmp_path / "a")
    assert not [r for r in records if r["type"] in ("eval", "iter")]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "interrupted: SIGTERM" and summary["start_iter"] == 0  # the session's fields
    with pytest.raises(CheckpointError, match=r"holds no checkpoint \(its run was stopped before it trained a step: "
                       r"start it again without --init_from=resume\)$"):  # fmt: skip
        parse_run_args(tiny_args(data_dir, tmp_path / "a", max_iters=2, init_from="resume"))
    # its command again (a requeued job's) starts over: nothing was trained to keep (it needed --overwrite=True)
    again = train(parse_run_args(tiny_args(data_dir, tmp_path / "a", max_iters=2)), stream=io.StringIO())
    assert again["status"] == "completed" and [r["type"] for r in _records(tmp_path / "a")].count("startup") == 1

    out = tmp_path / "b"
    trainer = Trainer(parse_run_args(tiny_args(data_dir, out, max_iters=20, eval_interval=4)), stream=io.StringIO())
    evaluate, loop, holder = trainer.evaluate, trainer._train_loop, {}

    def keep(stop: StopSignals) -> dict:
        holder["stop"] = stop
        return loop(stop)

    trainer._train_loop = keep  # type: ignore[method-assign]

    def evaluate_then_signal() -> dict:
        losses = evaluate()
        if trainer.iter_num == 4:
            holder["stop"].signum = signal.SIGTERM
        return losses

    trainer.evaluate = evaluate_then_signal  # type: ignore[method-assign]
    # the directory too: a bare --init_from=resume looks in the default out_dir (the quick start's is another)
    resume = re.escape(f"continue with --init_from=resume --out_dir={out}")
    with pytest.raises(TrainingInterrupted, match=f"at iter 4: a checkpoint at iter 4 .*: {resume}$"):
        trainer.run()
    records = _records(out)
    assert [r["iter"] for r in records if r["type"] == "eval"] == [0, 4]
    assert max(r["iter"] for r in records if r["type"] == "iter") == 3
    assert load_checkpoint(out)["iter_num"] == 4
    # stopped again before the resumed session's first step: the final losses are the loaded checkpoint's, as
    # its evaluation was logged (they were null)
    resumed = tiny_args(data_dir, out, max_iters=20, eval_interval=4, init_from="resume")
    trainer = Trainer(parse_run_args(resumed), stream=io.StringIO())
    loop = trainer._train_loop
    trainer._train_loop = signalled  # type: ignore[method-assign]
    with pytest.raises(TrainingInterrupted, match="at iter 4: before this session's first step"):
        trainer.run()
    summary = json.loads((out / "summary.json").read_text())
    at_4 = [r for r in _records(out) if r["type"] == "eval" and r["iter"] == 4][-1]
    assert (summary["final_train_loss"], summary["final_val_loss"]) == (at_4["train_loss"], at_4["val_loss"])


def test_a_loop_over_runs_that_skips_exceptions_stops_on_ctrl_c(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's sweep, ``try: train(run) except Exception: continue``, stops at the user's Ctrl-C (after
    the run's checkpoint) instead of starting the next run: the stop is a KeyboardInterrupt, not an Exception."""
    from gptlab.config.resolve import parse_run_args
    from gptlab.train.launch import train
    from gptlab.train.loop import Trainer
    from gptlab.train.signals import TrainingInterrupted

    loop = Trainer._train_loop

    def ctrl_c_after_two_steps(self: Trainer, stop: StopSignals) -> dict:
        original = self._eval_and_checkpoint

        def then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
            losses = original(*args, **kwargs)
            if self.iter_num >= 2:
                stop.signum = signal.SIGINT  # pressed during the evaluation at iter 2
            return losses

        self._eval_and_checkpoint = then_ctrl_c  # type: ignore[method-assign]
        return loop(self, stop)

    monkeypatch.setattr(Trainer, "_train_loop", ctrl_c_after_two_steps)
    started = []
    with pytest.raises(KeyboardInterrupt) as stopped:
        for name in ("first", "second"):
            started.append(name)
            try:
                train(parse_run_args(tiny_args(data_dir, tmp_path / name, max_iters=6, eval_interval=2)))
            except Exception:
                continue
    assert isinstance(stopped.value, TrainingInterrupted) and stopped.value.exit_code == 130
    assert started == ["first"] and (tmp_path / "first" / "ckpt.pt").exists()


def test_the_stop_pickles_whole() -> None:
    """A run in a worker process (a ProcessPoolExecutor's sweep) sends its stop back pickled: the exception's
    arguments are its signal and message, which the default pickling of one argument lost (a TypeError)."""
    import pickle

    from gptlab.train.signals import TrainingInterrupted

    message = "stopped by SIGTERM at iter 7"
    again = pickle.loads(pickle.dumps(TrainingInterrupted(signal.SIGTERM, message)))
    assert isinstance(again, KeyboardInterrupt) and (again.exit_code, str(again)) == (143, message)


def test_the_stop_message_is_said_once(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's log has printed it on stdout: stderr repeats it only where stdout goes elsewhere (a file), and
    only rank 0 does; the exit status is the signal's either way."""
    from gptlab.train.signals import TrainingInterrupted, report_interrupted

    stop = TrainingInterrupted(signal.SIGTERM, "stopped by SIGTERM at iter 7: a checkpoint at iter 7")
    assert report_interrupted(stop, "gptlab: ") == stop.exit_code == 143
    assert capsys.readouterr().err == "gptlab: stopped by SIGTERM at iter 7: a checkpoint at iter 7\n"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert report_interrupted(stop) == 143 and capsys.readouterr().err == ""  # one terminal: said once
    # `compare --train`'s runs log to console.log files: there stderr is the only place it is said
    assert report_interrupted(stop, logged_to_stdout=False) == 143 and "stopped by SIGTERM" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setenv("RANK", "1")
    assert report_interrupted(stop) == 143 and capsys.readouterr().err == ""


def test_the_stop_message_is_said_once_into_one_output_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python train.py > log 2>&1` (a SLURM job's one output file): stdout, where the log said it, and stderr are
    the same file, so it is not written there twice; with stderr elsewhere it is."""
    from gptlab.train.signals import TrainingInterrupted, report_interrupted

    stop = TrainingInterrupted(signal.SIGTERM, "stopped by SIGTERM at iter 7: a checkpoint at iter 7")
    log = tmp_path / "job.out"
    with open(log, "w") as out, os.fdopen(os.dup(out.fileno()), "w") as err:  # 2>&1
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        assert report_interrupted(stop) == 143
        monkeypatch.undo()
    assert log.read_text() == ""
    with open(log, "w") as out, open(tmp_path / "job.err", "w") as err:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        assert report_interrupted(stop) == 143
        monkeypatch.undo()
    assert "stopped by SIGTERM at iter 7" in (tmp_path / "job.err").read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pipes")
def test_a_stop_after_the_consoles_reader_left_still_checkpoints(data_dir: Path, tmp_path: Path) -> None:
    """`python train.py | tee log.txt` and Ctrl-C: the signal ends tee too, and the evaluation's line then
    met a broken pipe (exit 1, a traceback, no checkpoint). The run saves and exits with the signal's status."""
    out = tmp_path / "teed"
    proc = _train(*tiny_args(data_dir, out, max_iters=100_000, eval_interval=1000, eval_iters=2))
    wait_for_iter(out / "log.jsonl", proc, 4)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    stopped = next(r["iter"] for r in _records(out) if r.get("event") == "interrupted")
    assert load_checkpoint(out)["iter_num"] == stopped
    assert any(r.get("event") == "console_closed" for r in _records(out))


def test_the_logged_exit_status_is_the_commands() -> None:
    """What the log's end records (logger.close's exit_code) is what the shell sees: 130 for Ctrl-C, 128 + N for a
    signal's stop, 2 for a one-line error (a user mistake, a path that cannot be written), 1 for anything else."""
    import signal as signals

    from gptlab.errors import ConfigError
    from gptlab.train.launch import _exit_status
    from gptlab.train.signals import TrainingInterrupted

    assert _exit_status(KeyboardInterrupt()) == 130
    assert _exit_status(TrainingInterrupted(signals.SIGTERM, "stopped")) == 128 + signals.SIGTERM
    assert _exit_status(ConfigError("bad")) == 2 and _exit_status(PermissionError(13, "denied")) == 2
    assert _exit_status(RuntimeError("a bug")) == 1


def _stop_on_one_rank_worker(rank: int, port: int, data_dir: str, root: str, when: str) -> None:
    """Rank 1 alone gets SIGTERM (``when``: during the startup, or during the evaluation at iteration 4) in a
    2-rank gloo run; each rank writes the iteration it stopped at and the message."""
    import gc

    from gptlab import parallel

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    info, result = _stop_on_one_rank(rank, data_dir, root, when)
    Path(root, f"rank{rank}.json").write_text(json.dumps(result))
    # as launch does: the Trainer (its model's hooks hold the process group) is gone before the group (left to
    # the exit, gloo's threads now and then aborted a finished rank: "terminate called without an active
    # exception"), and no rank tears gloo down while a peer's last collective is in flight
    gc.collect()
    parallel.shutdown(info)


def _stop_on_one_rank(rank: int, data_dir: str, root: str, when: str) -> tuple[Any, dict]:
    from gptlab.config.resolve import parse_run_args
    from gptlab.train.loop import Trainer
    from gptlab.train.signals import TrainingInterrupted

    out = Path(root, "run")
    args = tiny_args(Path(data_dir), out, max_iters=20, eval_interval=4, parallel="ddp")
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    loop, evaluate, holder = trainer._train_loop, trainer.evaluate, {}

    def keep(stop: StopSignals) -> dict:
        holder["stop"] = stop
        if rank == 1 and when == "startup":
            stop.signum = signal.SIGTERM
        return loop(stop)

    def evaluate_then_signal() -> dict:
        losses = evaluate()
        if rank == 1 and when == "eval" and trainer.iter_num == 4:
            holder["stop"].signum = signal.SIGTERM
        return losses

    trainer._train_loop = keep  # type: ignore[method-assign]
    trainer.evaluate = evaluate_then_signal  # type: ignore[method-assign]
    try:
        trainer.run()
        return trainer.dist, {"stopped": None}
    except TrainingInterrupted as e:
        return trainer.dist, {"stopped": trainer.iter_num, "message": str(e)}


@pytest.mark.parametrize("when", ["startup", "eval"])
def test_under_torchrun_a_stop_before_the_first_step_or_during_an_eval_stops_there(
    when: str, data_dir: Path, tmp_path: Path
) -> None:
    """As in one process: a signal during startup stops every rank before the first step (no evaluation, no
    step, no checkpoint: a run whose memory warning said it will not fit must not allocate), and one during an
    evaluation stops right after it, with its checkpoint. The ranks used to agree only at the next logged
    iteration: they trained a step and evaluated again, inside torchrun's 30 s before its SIGKILL."""
    from tests.spawn import spawn

    spawn(_stop_on_one_rank_worker, str(data_dir), str(tmp_path), when)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    out = tmp_path / "run"
    records = _records(out)
    evals = [r["iter"] for r in records if r["type"] == "eval"]
    steps = [r["iter"] for r in records if r["type"] == "iter"]
    if when == "startup":
        assert [r["stopped"] for r in results] == [0, 0], results
        assert "before this session's first step" in results[0]["message"]
        assert evals == [] and steps == [] and not (out / "ckpt.pt").exists()
    else:
        assert [r["stopped"] for r in results] == [4, 4], results
        assert "a checkpoint at iter 4" in results[0]["message"]
        assert evals == [0, 4] and max(steps) == 3 and load_checkpoint(out)["iter_num"] == 4
