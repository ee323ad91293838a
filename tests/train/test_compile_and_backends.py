"""torch.compile in the loop (checkpoints keep plain names), and the optional wandb / TensorBoard
backends (exercised through stand-in modules: neither package is needed to run gptlab)."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest

from gptlab import ConfigurableGPT
from gptlab.checkpoint import load_checkpoint
from gptlab.config.resolve import parse_run_args
from gptlab.errors import ConfigError, GptlabError
from gptlab.logging import read_log
from gptlab.train.launch import train
from gptlab.train.loop import Trainer
from tests.train.conftest import tiny_args


def test_compiled_run_saves_plain_names_and_loads(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters

    from gptlab.train import sample

    graphs = []
    original = sample.generate_text

    def generate_text(*args: object, **kwargs: object) -> str:  # counts the graphs compiled while sampling
        before = counters["stats"]["unique_graphs"]
        text = original(*args, **kwargs)
        graphs.append(counters["stats"]["unique_graphs"] - before)
        return text

    monkeypatch.setattr(sample, "generate_text", generate_text)
    summary = train(
        parse_run_args(
            tiny_args(data_dir, tmp_path, compile=True, max_iters=2, eval_iters=1, sample_at_end=True, sample_tokens=8)
        ),
        stream=io.StringIO(),
    )
    assert summary["status"] == "completed" and summary["sample"]
    assert graphs == [0]  # the end-of-run sample runs the compiled model eagerly: no recompile per length
    ckpt = load_checkpoint(tmp_path)
    assert not any("_orig_mod" in key for key in ckpt["model"])  # the peers' most reported compile bug
    ConfigurableGPT.from_pretrained(tmp_path / "ckpt.pt")


def test_blockwise_compile_trains_like_eager(data_dir: Path, tmp_path: Path) -> None:
    """compile_scope='blocks' (torchtitan's regional compile): the same losses as eager, plain names saved."""
    pytest.importorskip("torch._inductor")
    args = dict(max_iters=3, eval_iters=1, eval_interval=100)
    eager = train(parse_run_args(tiny_args(data_dir, tmp_path / "eager", **args)), stream=io.StringIO())
    blocks = dict(compile=True, compile_scope="blocks", **args)
    compiled = train(parse_run_args(tiny_args(data_dir, tmp_path / "blocks", **blocks)), stream=io.StringIO())
    assert compiled["final_val_loss"] == pytest.approx(eager["final_val_loss"], rel=1e-4)
    assert not any("_orig_mod" in key for key in load_checkpoint(tmp_path / "blocks")["model"])


class _FakeRun:
    def __init__(self, **kwargs: object) -> None:
        self.init_kwargs, self.logged, self.finished = kwargs, [], False
        self.summary: dict = {}

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self, exit_code: int | None = None) -> None:
        self.finished, self.exit_code = True, exit_code


def test_wandb_backend_receives_metrics(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[_FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(
        parse_run_args(
            tiny_args(data_dir, tmp_path, wandb_log=True, wandb_project="p", wandb_run_name="r", max_iters=4)
        ),
        stream=io.StringIO(),
    )
    (run,) = runs
    assert run.init_kwargs["project"] == "p" and run.init_kwargs["name"] == "r" and run.finished
    assert run.exit_code == 0
    keys = {k for _, values in run.logged for k in values}
    assert {"train/loss", "train/lr", "train/tokens_per_sec", "eval/val_loss", "eval/lr", "eval/tokens"} <= keys
    # telemetry in its own sections, named as in log.jsonl (no "train/grad_grad_max")
    assert {"gradients/global_norm", "gradients/grad_max", "memory/rss_gb"} <= keys
    assert not {k for k in keys if "grad_grad" in k or k == "train/iter"} and "train/grad_norm" in keys
    assert [step for step, values in run.logged if "train/loss" in values] == list(range(5))
    # the figures a runs table sorts by, as summary.json has them (wandb's summary kept each key's last value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert run.summary["best_val_loss"] == summary["best_val_loss"] and run.summary["status"] == "completed"
    assert run.summary["tokens_per_sec_median"] == summary["tokens_per_sec"]["median"]
    assert run.init_kwargs["group"] == str(tmp_path.resolve())  # a run's sessions together
    # a resume keeps the run's name; one with nothing left to do opens no wandb run (it left an empty one)
    resumed = dict(wandb_log=True, wandb_project="p", max_iters=4, init_from="resume")
    train(parse_run_args(tiny_args(data_dir, tmp_path, **resumed)), stream=io.StringIO())
    assert len(runs) == 1
    train(parse_run_args(tiny_args(data_dir, tmp_path, **{**resumed, "max_iters": 6})), stream=io.StringIO())
    assert len(runs) == 2 and runs[1].init_kwargs["name"] == "r"
    train(parse_run_args(tiny_args(data_dir, tmp_path, **{**resumed, "max_iters": 7})), stream=io.StringIO())
    assert runs[2].init_kwargs["name"] == "r"  # and the next (the resumed session saved the name it had)
    # unnamed, a run is its directory's (every experiment's sessions were 'run')
    train(parse_run_args(tiny_args(data_dir, tmp_path / "exp7", wandb_log=True, max_iters=1)), stream=io.StringIO())
    assert runs[-1].init_kwargs["name"] == "exp7"


def test_a_failed_run_is_a_failed_wandb_run(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logger closed wandb with finish() (exit code 0) before the error left: a diverged run exited 2 and
    showed as successful in W&B; other failures are theirs too (wandb's own exit hook never saw them)."""
    from gptlab.train.loop import NonFiniteLossError

    runs: list[_FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    diverges = dict(wandb_log=True, learning_rate=1e30, warmup_iters=0, min_lr=0.0, max_iters=6)
    with pytest.raises(NonFiniteLossError):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "nan", **diverges)), stream=io.StringIO())
    assert runs[-1].finished and runs[-1].exit_code == 2

    def fails(self: Trainer) -> dict:
        raise RuntimeError("a rank died")

    monkeypatch.setattr(Trainer, "train_step", fails)
    with pytest.raises(RuntimeError, match="a rank died"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "died", wandb_log=True)), stream=io.StringIO())
    assert runs[-1].finished and runs[-1].exit_code == 1


def test_tensorboard_backend_writes_scalars(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
            self.log_dir, self.purge_step = log_dir, purge_step

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def close(self) -> None:
            written.append(("closed", 0.0, 0))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    train(parse_run_args(tiny_args(data_dir, tmp_path, tensorboard_log=True, max_iters=3)), stream=io.StringIO())
    tags = {tag for tag, _, _ in written}
    assert {"train/loss", "eval/val_loss", "closed"} <= tags


def test_real_tensorboard_events_hold_the_logged_losses(data_dir: Path, tmp_path: Path) -> None:
    """The real SummaryWriter (CI installs tensorboard): the event file reads back with TensorBoard's
    own reader, each scalar at its iteration, equal to log.jsonl's value."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(parse_run_args(tiny_args(data_dir, tmp_path, tensorboard_log=True, max_iters=4)), stream=io.StringIO())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/val_loss", "gradients/global_norm", "memory/rss_gb"} <= tags
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = {r["iter"]: r["loss"] for r in rows if r["type"] == "iter"}
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged.keys() == losses.keys()
    assert all(abs(logged[i] - losses[i]) <= 1e-6 * max(1.0, abs(losses[i])) for i in losses)  # float32 in the file
    # an evaluation of the run is a TensorBoard run of its own: the training's curves keep one point per step
    more = dict(tensorboard_log=True, max_iters=4, init_from="resume", eval_only=True)
    train(parse_run_args(tiny_args(data_dir, tmp_path, **more)), stream=io.StringIO())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("eval/val_loss")]
    assert len(steps) == len(set(steps))
    evaluation = EventAccumulator(str(tmp_path / "tensorboard" / "eval_only"))
    evaluation.Reload()
    assert [e.step for e in evaluation.Scalars("eval/val_loss")] == [steps[-1]]
    # a resume of the finished run (a requeued job's) writes no events file (it left an empty one)
    files = sorted((tmp_path / "tensorboard").glob("events.*"))
    done = tiny_args(data_dir, tmp_path, tensorboard_log=True, max_iters=4, init_from="resume")
    train(parse_run_args(done), stream=io.StringIO())
    assert sorted((tmp_path / "tensorboard").glob("events.*")) == files
    # a run that replaces it (--overwrite=True) takes the evaluation of the weights it removes with them
    assert (tmp_path / "eval.jsonl").is_file()
    replacing = tiny_args(data_dir, tmp_path, tensorboard_log=True, max_iters=2, overwrite=True)
    train(parse_run_args(replacing), stream=io.StringIO())
    assert not (tmp_path / "eval.jsonl").exists() and not (tmp_path / "tensorboard" / "eval_only").exists()
    said = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "overwrite" and "eval.jsonl, tensorboard/eval_only" in r["message"] for r in said)
    # an evaluation of other weights alone in its folder is no replaced run's: an overwriting run keeps it
    baseline = tmp_path / "baseline"
    train(parse_run_args(tiny_args(data_dir, baseline, init_from=str(tmp_path), eval_only=True)), stream=io.StringIO())
    train(parse_run_args(tiny_args(data_dir, baseline, max_iters=2, overwrite=True)), stream=io.StringIO())
    assert (baseline / "eval.jsonl").is_file()


def test_tensorboard_after_a_rollback_and_resume_has_each_step_once(data_dir: Path, tmp_path: Path) -> None:
    """A killed run (here rolled back to its iteration-4 checkpoint, as docs/training.md shows) resumed at 4:
    its earlier points from 4 on are hidden (TensorBoard's purge_step), not drawn twice, backwards."""
    pytest.importorskip("tensorboard")
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = dict(tensorboard_log=True, max_iters=8, lr_decay_iters=8, eval_interval=4, keep_checkpoints=3)
    train(parse_run_args(tiny_args(data_dir, tmp_path, **common)), stream=io.StringIO())
    os.replace(tmp_path / "ckpt-0000004.pt", tmp_path / "ckpt.pt")  # back to iteration 4
    train(parse_run_args(tiny_args(data_dir, tmp_path, **common, init_from="resume")), stream=io.StringIO())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)) == list(range(9))
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 4, 8, 9]
    # a session resumed at 9 that was killed (kill -9) after logging its steps 9 and 10: hidden too
    from torch.utils.tensorboard import SummaryWriter

    killed = SummaryWriter(log_dir=str(tmp_path / "tensorboard"))
    for step in (9, 10):
        killed.add_scalar("train/loss", 123.0, step)
    killed.close()
    # resumed at 9 (the final checkpoint, max_iters raised): 9 is not evaluated again, so its point is kept
    more = {**common, "max_iters": 10, "init_from": "resume"}
    train(parse_run_args(tiny_args(data_dir, tmp_path, **more)), stream=io.StringIO())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 4, 8, 9, 11]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(11))
    assert 123.0 not in [e.value for e in events.Scalars("train/loss")]
    at_9 = [r for r in read_log(tmp_path / "log.jsonl", "eval") if r["iter"] == 9][-1]
    assert events.Scalars("eval/val_loss")[3].value == pytest.approx(at_9["val_loss"])
    assert events.Scalars("eval/tokens")[3].value == pytest.approx(at_9["tokens"])
    # ended at 12, an evaluation step; requeued when already done: its final evaluation is not hidden
    for _ in range(2):
        more = {**common, "max_iters": 11, "init_from": "resume"}
        train(parse_run_args(tiny_args(data_dir, tmp_path, **more)), stream=io.StringIO())
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 4, 8, 9, 11, 12]
    # a new run replacing this one (--overwrite=True): its points only, as in its log.jsonl
    train(
        parse_run_args(tiny_args(data_dir, tmp_path, **{**common, "max_iters": 3}, overwrite=True)),
        stream=io.StringIO(),
    )
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = {r["iter"]: r["loss"] for r in read_log(tmp_path / "log.jsonl", "iter")}
    assert {e.step: pytest.approx(e.value) for e in events.Scalars("train/loss")} == losses
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 4]


def test_missing_backend_is_one_line(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=1)), stream=io.StringIO())
    log_before = (tmp_path / "log.jsonl").read_bytes()
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    needs = r"wandb_log=True needs wandb: pip install 'gptlab\[wandb\]', or run with --wandb_log=False$"
    with pytest.raises(ConfigError, match=needs):
        train(
            parse_run_args(tiny_args(data_dir, tmp_path, wandb_log=True, max_iters=1, overwrite=True)),
            stream=io.StringIO(),
        )
    assert (tmp_path / "log.jsonl").read_bytes() == log_before  # the earlier run's log is left alone
    # installed, but not logged in (a batch job): wandb's UsageError in one line, with what to do
    fake = types.ModuleType("wandb")

    def not_logged_in(**kwargs: object) -> None:
        raise RuntimeError("No API key configured. Use `wandb login` to log in.\n(more lines of wandb's)")

    fake.init = not_logged_in  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.raises(GptlabError, match=r"wandb.init failed \(RuntimeError: No API key configured\. Use `wandb "
                       r"login` to log in\.\); run `wandb login`, or set WANDB_MODE=offline"):  # fmt: skip
        train(
            parse_run_args(tiny_args(data_dir, tmp_path, wandb_log=True, max_iters=1, overwrite=True)),
            stream=io.StringIO(),
        )
    assert (tmp_path / "log.jsonl").read_bytes() == log_before

    def bad_project(**kwargs: object) -> None:  # wandb 0.31's words; logging in would not help
        raise RuntimeError("Invalid project name 'my/project': cannot contain characters '/,\\,#,?,%,:', found '/'")

    fake.init = bad_project  # type: ignore[attr-defined]
    with pytest.raises(GptlabError, match=r"found '/'\); choose another --wandb_project$"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "p", wandb_log=True, max_iters=1)), stream=io.StringIO())


def test_missing_backends_are_said_before_the_run_is_built_or_wandb_opened(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing wandb was said after the data was prepared and the model built (or downloaded: init_from=gpt2-xl);
    with both asked for, wandb.init ran before TensorBoard was found missing, leaving an empty wandb run."""
    from gptlab.train.loop import Trainer

    def built(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Trainer was built")

    monkeypatch.setattr(Trainer, "__init__", built)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"wandb_log=True needs wandb"):
        train(parse_run_args(tiny_args(data_dir, tmp_path, wandb_log=True, max_iters=1)), stream=io.StringIO())
    fake, inits = types.ModuleType("wandb"), []
    fake.init = lambda **kwargs: inits.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"tensorboard_log=True needs tensorboard"):
        train(
            parse_run_args(tiny_args(data_dir, tmp_path, wandb_log=True, tensorboard_log=True, max_iters=1)),
            stream=io.StringIO(),
        )
    from gptlab.logging import TrainingLogger

    with pytest.raises(ConfigError, match=r"tensorboard_log=True needs tensorboard"):
        TrainingLogger(tmp_path / "direct", wandb_config={"project": "p"}, tensorboard=True)
    assert inits == []  # no wandb run made for a run refused


def test_compile_without_a_cpp_compiler_is_one_line(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows without MSVC's cl.exe (or a broken $CXX): inductor's InvalidCxxCompiler, wrapped by dynamo
    in a 110-line traceback, becomes one line with the way out. (Raised here as inductor raises it: a real
    compile would reuse kernels that earlier tests compiled and never look for a compiler.)"""
    from torch._inductor.exc import InvalidCxxCompiler

    from gptlab.train.loop import Trainer

    def first_compiled_step(self: Trainer) -> None:
        try:
            raise InvalidCxxCompiler()
        except InvalidCxxCompiler as e:
            raise RuntimeError("backend='inductor' raised:\nsee above") from e

    monkeypatch.setattr(Trainer, "run", first_compiled_step)
    args = tiny_args(data_dir, tmp_path / "run", max_iters=1)
    with pytest.raises(GptlabError, match=r"^torch.compile found no working C\+\+ compiler \(No working C\+\+"):
        train(parse_run_args(args), stream=io.StringIO())
