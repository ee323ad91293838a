"""End-to-end training on the CPU: every preset learns, logs are valid, checkpoints load,
resume is exact, and bad input fails with one line without overwriting anything."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptlab import parallel
from gptlab.checkpoint import load_checkpoint, software_versions
from gptlab.config.resolve import parse_run_args
from gptlab.data.storage import read_meta
from gptlab.errors import ConfigError, DataError
from gptlab.train.cli import entry, run_train
from gptlab.train.launch import train
from gptlab.train.loop import NonFiniteLossError, Trainer
from gptlab.train.sample import SampleConfig, sample
from tests.host_sync import count_host_syncs
from tests.train.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[2]
ITER_KEYS = {"iter", "loss", "lr", "dt_ms", "tokens_per_sec", "mfu", "flops_per_token", "memory"}
SUMMARY_KEYS = {
    "tokens_per_sec",
    "mfu",
    "best_val_loss",
    "final_val_loss",
    "total_time_s",
    "peak_memory_gb",
    "unigram_baseline_loss",
    "status",
}


def read_log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["gpt2", "llama", "hybrid", "team", "custom"])
def test_tiny_run_per_preset(preset: str, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stream = io.StringIO()
    summary = train(parse_run_args(tiny_args(data_dir, out, arch_preset=preset)), stream=stream)
    records = read_log(out)
    assert records[0]["type"] == "startup" and records[-1]["type"] == "summary"
    iters = [r for r in records if r["type"] == "iter"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iter"] for r in iters] == list(range(25))
    assert all(ITER_KEYS <= set(r) for r in iters)
    assert [e["iter"] for e in evals] == [0, 8, 16, 24, 25]  # nanoGPT evals before a step; then the final weights
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    assert SUMMARY_KEYS <= set(summary) and json.loads((out / "summary.json").read_text())["status"] == "completed"
    config = json.loads((out / "config.json").read_text())
    assert config["arch"]["n_layer"] == 2 and config["train"]["arch_preset"] == preset
    startup = records[0]
    assert {"architecture", "training", "hardware", "expectations"} <= set(startup)
    assert startup["training"]["tokens_per_iter"] == 4 * 2 * 32
    expected = startup["expectations"]  # the MFU breakdown's fixed keys, once (docs/training.md)
    ratio = expected["attention_flops_per_layer"] / expected["ffn_flops_per_layer"]
    assert ratio == pytest.approx(expected["attention_to_ffn_ratio"]) and {"device_name", "num_gpus"} <= set(
        startup["hardware"]
    )
    # on a CPU without a stated peak, MFU is unknown, never guessed
    assert all(r["mfu"] is None for r in iters) and startup["hardware"]["peak_tflops"] is None
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 25 and ckpt["arch"]["n_layer"] == 2
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    torch.manual_seed(0)  # sampling leaves the caller's RNG as it was, loading the model included (its build draws)
    text = sample(SampleConfig(out_dir=str(out), num_samples=1, max_new_tokens=20, start="def "))[0]
    after = torch.rand(3)
    assert text.startswith("def ") and len(text) == 24
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_peak_override_gives_mfu(data_dir: Path, tmp_path: Path) -> None:
    """MFU = FLOPs per token (compute_flops, checked against FlopCounterMode in tests/telemetry) x the
    step's tokens (batch 4 x 32 positions x 2 micro-steps) / its time / the given 1 TFLOPS peak."""
    from gptlab.config.model import ModelArchitectureConfig
    from gptlab.telemetry import compute_flops

    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=3, peak_tflops=1.0)), stream=io.StringIO())
    arch = ModelArchitectureConfig.from_dict(json.loads((tmp_path / "config.json").read_text())["arch"])
    flops_per_token = compute_flops(arch).flops_per_token
    for r in (r for r in read_log(tmp_path) if r["type"] == "iter"):
        expected = flops_per_token * (4 * 32 * 2) / (r["dt_ms"] / 1e3) / 1e12
        assert r["mfu"] == pytest.approx(expected, rel=1e-6)


def test_an_mfu_above_100_percent_is_said_once(data_dir: Path, tmp_path: Path) -> None:
    """A --peak_tflops below what the device reaches (`gptlab peak` run with 1 thread, training with 2) printed
    MFU 280% with no word: one event says the peak is too low, and how to measure it on a CPU."""
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4, peak_tflops=1e-6)), stream=io.StringIO())
    iters = [r for r in read_log(tmp_path) if r["type"] == "iter"]
    assert all(r["mfu"] > 1 for r in iters)
    events = [r for r in read_log(tmp_path) if r["type"] == "event" and r["event"] == "mfu_above_peak"]
    assert len(events) == 1 and events[0]["iter"] == 0
    assert "is above 100%: the peak it is measured against (1e-06 TFLOPS per device, override)" in events[0]["message"]
    assert f"({torch.get_num_threads()} here, OMP_NUM_THREADS; torchrun gives each rank 1)" in events[0]["message"]
    train(parse_run_args(tiny_args(data_dir, tmp_path / "fits", max_iters=2, peak_tflops=1e3)), stream=io.StringIO())
    assert not [r for r in read_log(tmp_path / "fits") if r.get("event") == "mfu_above_peak"]


def test_gradient_statistics_are_logged_at_their_own_interval(data_dir: Path, tmp_path: Path) -> None:
    """log_interval and gradient_log_interval need not align: statistics paid for are never dropped. A CPU's
    small peak is shown as given, not rounded to 0.1 TFLOPS."""
    stream = io.StringIO()
    args = tiny_args(data_dir, tmp_path, max_iters=8, log_interval=3, gradient_log_interval=4, peak_tflops=0.05)
    train(parse_run_args(args), stream=stream)
    records = read_log(tmp_path)
    assert [r["iter"] for r in records if r["type"] == "iter"] == [0, 3, 6]  # the step statistics' cadence
    grads = [r for r in records if "gradients" in r]
    assert [(r["type"], r["iter"]) for r in grads] == [("iter", 0), ("gradients", 4), ("gradients", 8)]
    assert all(r["gradients"]["global_norm"] > 0 for r in grads)
    assert "peak:        0.05 TFLOPS dense" in stream.getvalue()


def test_detailed_view_matches_design_document(data_dir: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2, log_style="detailed")), stream=stream)
    text = stream.getvalue()
    for piece in ("📍 Iter", "Loss:", "LR:", "⚡ MFU: n/a", "Tokens/s:", "FLOPs/token:", "💾 Memory:", "📊 Gradients:"):
        assert piece in text, piece
    assert "\x1b[K" not in text  # not a terminal: no progress bar


def test_resume_continues_exactly(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted at a checkpoint (in process) and resumed: the same losses as straight through."""
    common = dict(dropout=0.1, max_iters=20, lr_decay_iters=20, eval_interval=10)
    straight = tmp_path / "straight"
    train(parse_run_args(tiny_args(data_dir, straight, **common)), stream=io.StringIO())
    resumed = tmp_path / "resumed"
    train(parse_run_args(tiny_args(data_dir, resumed, **{**common, "max_iters": 10})), stream=io.StringIO())
    compared: list[dict] = []  # what the ranks compare: includes the iteration each resumes from
    monkeypatch.setattr(parallel, "check_same_config", lambda config, info: compared.append(config))
    train(parse_run_args(tiny_args(data_dir, resumed, **common, init_from="resume")), stream=io.StringIO())
    assert compared[0]["start_iter"] == 11  # the checkpoint after step 10
    # the data itself, not where a node keeps it (node-local disks: other data may lie at the same data_dir)
    meta = read_meta(Path(data_dir) / "stdlib_char")
    assert "data_dir" not in compared[0]["train"] and compared[0]["dataset"]["tokens"] == meta["tokens"]
    assert compared[0]["dataset"]["sha256"] == meta["source"]["sha256"]  # other text of the same length differs
    a = {r["iter"]: r["loss"] for r in read_log(straight) if r["type"] == "iter"}
    records = read_log(resumed)
    start = max(i for i, r in enumerate(records) if r.get("event") == "resume")
    assert records[start]["iter"] == 11  # sessions are found by their resume events' iterations
    tokens = {r["iter"]: r["tokens"] for r in read_log(straight) if r["type"] == "iter"}
    assert tokens == {i: (i + 1) * 4 * 32 * 2 for i in range(21)}  # trained through iteration i
    assert all(r["tokens"] == tokens[r["iter"]] for r in records[start:] if r["type"] == "iter")
    evals = [r for r in records[start:] if r["type"] == "eval"]
    assert evals and all(r["tokens"] == r["iter"] * 256 for r in evals)  # before iteration i
    b = {r["iter"]: r["loss"] for r in records[start:] if r["type"] == "iter"}
    assert sorted(b) == list(range(11, 21))  # the first run ended after step 10 (iterations 0..max_iters)
    assert all(a[i] == b[i] for i in b), [(i, a[i], b[i]) for i in b if a[i] != b[i]]
    # the gradient spike test's running median too (its history is in the checkpoint: it started empty)
    ratios = {r["iter"]: r["gradients"]["norm_to_median"] for r in read_log(straight) if "gradients" in r}
    resumed_ratios = {r["iter"]: r["gradients"]["norm_to_median"] for r in records[start:] if "gradients" in r}
    assert sorted(resumed_ratios) == [12, 16, 20] and all(ratios[i] == resumed_ratios[i] for i in resumed_ratios)


def test_every_run_is_evaluated_on_the_same_batches_whatever_its_seed(data_dir: Path, tmp_path: Path) -> None:
    """The evaluation batches are not the seed's (seed + 1's training stream drew them): a seed sweep's val
    losses differ by training alone, and no run trains on another's evaluation batches."""
    a, b = (
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path / str(s), seed=s)), stream=io.StringIO()) for s in (0, 1)
    )
    try:
        for split in ("train", "val"):
            assert torch.equal(a.eval_loaders[split].get_batch(3)[0], b.eval_loaders[split].get_batch(3)[0])
        assert not torch.equal(b.train_loader.get_batch(0, 0)[0], a.eval_loaders["train"].get_batch(0)[0])
    finally:
        for trainer in (a, b):
            trainer.logger.close()
            parallel.shutdown(trainer.dist)


def test_a_resume_says_the_samples_settings_only_where_a_sample_is_drawn(data_dir: Path, tmp_path: Path) -> None:
    """The end's sample length and prompt are launch settings, this command's: said as changed only where this
    launch draws a sample (a resume with --sample_at_end=False listed the quick start's 300 -> 200 and 'def ' ->
    '\\n' among its changes)."""
    out = tmp_path / "run"
    first = tiny_args(data_dir, out, max_iters=2, sample_at_end=True, sample_tokens=8, sample_prompt="ab")
    train(parse_run_args(first), stream=io.StringIO())
    launch = [f"--out_dir={str(out)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'", "--max_iters=4"]
    off = parse_run_args([*launch, "--sample_at_end=False"]).resume_changes
    assert off == {"max_iters": (2, 4)}
    on = parse_run_args([*launch, "--sample_at_end=True"]).resume_changes
    assert on == {"max_iters": (2, 4), "sample_tokens": (8, 200), "sample_prompt": ("ab", "\n")}
    unsaid = parse_run_args(launch).resume_changes  # sample_at_end's default (nanoGPT draws none): its own change
    assert unsaid == {"max_iters": (2, 4), "sample_at_end": (True, False)}


def test_resume_needs_only_init_from(data_dir: Path, tmp_path: Path) -> None:
    """Resumed with nothing but --init_from=resume (and a larger max_iters), the run keeps its own
    schedule, batch, dropout and seed from the checkpoint, not the defaults: the same losses and LRs
    as straight through; the one setting changed is said in the resume event."""
    common = dict(dropout=0.1, max_iters=20, lr_decay_iters=20, eval_interval=10, seed=7)
    straight = tmp_path / "straight"
    train(parse_run_args(tiny_args(data_dir, straight, **common)), stream=io.StringIO())
    resumed = tmp_path / "resumed"
    first = {**common, "max_iters": 10, "peak_tflops": 50.0}  # a launch setting: this launch's on resume, said
    train(parse_run_args(tiny_args(data_dir, resumed, **first)), stream=io.StringIO())
    launch = [f"--out_dir={str(resumed)!r}", f"--data_dir={str(data_dir)!r}", "--device='cpu'", "--compile=False"]
    train(parse_run_args([*launch, "--init_from='resume'", "--max_iters=20"]), stream=io.StringIO())
    a = {r["iter"]: (r["loss"], r["lr"]) for r in read_log(straight) if r["type"] == "iter"}
    records = read_log(resumed)
    start = max(i for i, r in enumerate(records) if r.get("event") == "resume")
    assert records[start]["changed"] == {"max_iters": [10, 20], "peak_tflops": [50.0, None]}
    assert "max_iters: 10 -> 20; peak_tflops: 50.0 -> None" in records[start]["message"]
    assert "--peak_tflops=50.0 keeps the run's own" in records[start]["message"]
    from gptlab.train.resume import _override

    assert _override("sample_prompt", "it's") == "'--sample_prompt=it'\"'\"'s'"  # as a shell takes it
    b = {r["iter"]: (r["loss"], r["lr"]) for r in records[start:] if r["type"] == "iter"}
    assert sorted(b) == list(range(11, 21))
    assert all(a[i] == b[i] for i in b), [(i, a[i], b[i]) for i in b if a[i] != b[i]]
    saved = json.loads((resumed / "config.json").read_text())["train"]
    assert (saved["batch_size"], saved["warmup_iters"], saved["seed"]) == (4, 4, 7)
    # a setting given now wins over the checkpoint's, and is reported
    train(
        parse_run_args([*launch, "--init_from='resume'", "--max_iters=22", "--learning_rate=1e-3"]),
        stream=io.StringIO(),
    )
    event = [r for r in read_log(resumed) if r.get("event") == "resume"][-1]
    assert event["changed"] == {"max_iters": [20, 22], "learning_rate": [3e-3, 1e-3]}


def test_loaded_weights_override_defaults_not_user_keys(data_dir: Path, tmp_path: Path) -> None:
    """Defaults (the quick start's, with no config file) never contradict loaded weights: fine-tuning a
    checkpoint of another size just works; a size the user typed still fails in one line."""
    from gptlab.train.cli import QUICKSTART

    base = tmp_path / "base"
    train(parse_run_args(tiny_args(data_dir, base, max_iters=2)), stream=io.StringIO())
    ckpt = str(base / "ckpt.pt")
    args = [f"--init_from={ckpt!r}", f"--data_dir={str(data_dir)!r}", f"--out_dir={str(tmp_path / 'ft')!r}"]
    trainer = Trainer(parse_run_args([*args, "--max_iters=1"], defaults=QUICKSTART), stream=io.StringIO())
    assert (trainer.arch.n_embd, trainer.arch.n_layer) == (32, 2)  # the weights', not the quick start's 128 and 4
    with pytest.raises(ConfigError, match=r"n_embd=64 conflicts with the weights"):
        Trainer(parse_run_args([*args, "--n_embd=64"], defaults=QUICKSTART), stream=io.StringIO())
    # a default block_size never crops the weights; one the user gives does, as nanoGPT does
    short = {**QUICKSTART, "block_size": 16}
    assert Trainer(parse_run_args(args, defaults=short), stream=io.StringIO()).arch.block_size == 32
    assert (
        Trainer(parse_run_args([*args, "--block_size=16", "--overwrite=True"]), stream=io.StringIO()).arch.block_size
        == 16
    )
    # replacing the run the weights come from (same out_dir, overwrite) keeps them until the new checkpoint
    same = [f"--init_from={ckpt!r}", f"--data_dir={str(data_dir)!r}", f"--out_dir={str(base)!r}", "--overwrite=True"]
    Trainer(parse_run_args(same, defaults=QUICKSTART), stream=io.StringIO())
    assert (base / "ckpt.pt").is_file()


def test_quick_start_defaults_only_for_a_quick_start() -> None:
    """No config file and no --init_from: the quick start; it replaces a previous run only in its own
    out_dir; a resume or a fine-tune gets the real defaults (device auto, compile on), not the CPU demo's."""
    from gptlab.train.cli import QUICKSTART, quickstart_defaults

    assert quickstart_defaults([]) is QUICKSTART and quickstart_defaults(["--max_iters=10"]) is QUICKSTART
    assert quickstart_defaults(["--init_from='resume'", "--out_dir='out/run'"]) is None
    assert quickstart_defaults(["config/full_llama_124m.py"]) is None
    # nanoGPT's `python train.py --dataset=openwebtext ...` (no config file): its real defaults, not a CPU demo
    assert quickstart_defaults(["--dataset='openwebtext'", "--n_layer=12"]) is None
    mine = quickstart_defaults(["--out_dir='out/mine'"])
    assert mine is not None and "overwrite" not in mine and mine["device"] == "cpu"


def test_resume_validates_the_settings_it_will_run_with(data_dir: Path, tmp_path: Path) -> None:
    """Cross-field checks see the checkpoint's values, not the defaults; a preset change is refused."""
    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, max_iters=2, learning_rate=5e-5, min_lr=5e-6)), stream=io.StringIO())
    launch = [f"--out_dir={str(run)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'"]
    resumed = parse_run_args([*launch, "--learning_rate=3e-5"])  # the default min_lr (6e-5) would exceed it
    assert (resumed.train.learning_rate, resumed.train.min_lr) == (3e-5, 5e-6)
    with pytest.raises(ConfigError, match=r"min_lr=0.0001 is larger than learning_rate=5e-05: .* \(resuming ") as e:
        parse_run_args([*launch, "--min_lr=1e-4"])
    assert "min_lr is the command line's, learning_rate is the checkpoint's; the training settings not" in str(e.value)
    with pytest.raises(ConfigError, match=r"\(resuming .*: fsdp_cpu_offload is the command line's, parallel is this "):
        parse_run_args([*launch, "--fsdp_cpu_offload=True"])  # a launch setting: never the checkpoint's
    config = tmp_path / "lr.py"
    config.write_text("learning_rate = 2e-5\n")  # a config file's value, not the checkpoint's: named as such
    with pytest.raises(ConfigError, match="min_lr is the command line's, learning_rate is the config file's; "):
        parse_run_args([str(config), *launch, "--min_lr=1e-4"])
    with pytest.raises(ConfigError, match=r"arch_preset='gpt2' conflicts with the .*normalization='rmsnorm'"):
        parse_run_args([*launch, "--arch_preset='gpt2'"])
    with pytest.raises(ConfigError, match=r"^arch_preset='lama' is not one of .*did you mean 'llama'"):
        parse_run_args([*launch, "--arch_preset='lama'"])  # a KeyError from the family check


def test_a_whole_architecture_records_its_preset_and_an_old_wrong_record_takes_the_typed_one(
    data_dir: Path, tmp_path: Path
) -> None:
    """A run resolved from a whole architecture (a notebook's ``get_preset_config('llama', ...).to_dict()``)
    records the preset it is, not the default 'gpt2'. One that recorded 'gpt2' beside llama's components (as
    before, or with ``typed=()``) resumes under a typed ``--arch_preset=llama``, which fits its weights (said as
    a change); a preset of another family, or one beside a record that fits (team for llama), is refused."""
    from gptlab.config.model import get_preset_config
    from gptlab.config.resolve import resolve_run_config

    arch = get_preset_config("llama", n_layer=2, n_head=2, n_embd=32, block_size=32).to_dict()
    run = parse_run_args(tiny_args(data_dir, tmp_path / "run", max_iters=2))
    given = {"dataset", "data_dir", "out_dir", "batch_size", "max_iters", "lr_decay_iters", "warmup_iters", "device"}
    settings = {k: v for k, v in run.train.to_dict().items() if k in given | {"compile", "eval_iters", "log_style"}}
    assert resolve_run_config({**arch, **settings}).train.arch_preset == "llama"
    first = resolve_run_config({**arch, **settings}, typed=())  # the keys as a config file's: the default preset
    assert first.train.arch_preset == "gpt2" and first.arch.position_encoding == "rope"
    train(first, stream=io.StringIO())
    launch = [f"--out_dir={str(tmp_path / 'run')!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'"]
    resumed = parse_run_args([*launch, "--max_iters=3", "--arch_preset='llama'"])
    assert resumed.train.arch_preset == "llama" and resumed.resume_changes["arch_preset"] == ("gpt2", "llama")
    assert resumed.arch.to_dict() == first.arch.to_dict()
    with pytest.raises(ConfigError, match=r"'hybrid' conflicts .*\(arch_preset='gpt2'; ffn_type='swiglu'\)"):
        parse_run_args([*launch, "--max_iters=3", "--arch_preset='hybrid'"])
    train(resumed, stream=io.StringIO())
    with pytest.raises(ConfigError, match=r"'team' conflicts .*\(arch_preset='llama'\): a resumed run keeps its"):
        parse_run_args([*launch, "--max_iters=4", "--arch_preset='team'"])  # the record fits: the label is kept


def test_an_accumulation_the_ranks_cannot_share_names_a_value_that_works(data_dir: Path, tmp_path: Path) -> None:
    """A laptop run (gradient_accumulation_steps=1, the default) resumed on 2 ranks: the refusal says the value
    is the checkpoint's (nothing typed it) and names one the ranks can share."""
    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, max_iters=1, gradient_accumulation_steps=1)), stream=io.StringIO())
    launch = [f"--out_dir={str(run)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'", "--max_iters=2"]
    two_ranks = parallel.DistInfo(rank=0, world_size=2, mode="ddp")
    with pytest.raises(
        ConfigError,
        match=r"^gradient_accumulation_steps=1 \(the resumed checkpoint's\) must be divisible by the world size 2 "
        r".*: pass --gradient_accumulation_steps=2 --batch_size=2 \(4 sequences a step, as before, not the run's "
        r"batches from here on\), or",  # as many sequences, other ones: the exact resume is given up, said
    ):
        Trainer(parse_run_args(launch), stream=io.StringIO(), dist=two_ranks)
    with pytest.raises(ConfigError, match=r"^gradient_accumulation_steps=3 .*steps=4 --batch_size=3 \(the same 12 seq"):
        Trainer(parse_run_args([*launch, "--gradient_accumulation_steps=3"]), stream=io.StringIO(), dist=two_ranks)
    three_ranks = parallel.DistInfo(rank=0, world_size=3, mode="ddp")  # no micro-batch keeps 4 sequences: said
    with pytest.raises(ConfigError, match=r"steps=3 \(12 sequences a step instead of 4, not the run's batches from h"):
        Trainer(parse_run_args(launch), stream=io.StringIO(), dist=three_ranks)
    typed = [*launch, "--gradient_accumulation_steps=3", "--batch_size=5"]
    with pytest.raises(ConfigError, match=r"steps=4 \(20 sequences a step instead of 15\), or launch"):
        Trainer(parse_run_args(typed), stream=io.StringIO(), dist=two_ranks)
    typed = [*launch, "--gradient_accumulation_steps=5", "--batch_size=4"]  # 6 x 4 grows, 10 x 2 keeps 20
    with pytest.raises(ConfigError, match=r"steps=10 --batch_size=2 \(the same 20 sequences a step\), or launch"):
        Trainer(parse_run_args(typed), stream=io.StringIO(), dist=two_ranks)


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def _train_entry(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``python train.py ARGS`` in this process (train.py's entry(run_train)): its exit code and stderr. Spares
    the seconds a fresh interpreter takes to import torch; an uncaught exception fails the test with its traceback."""
    capfd.readouterr()
    code = entry(run_train, list(args))
    return code, capfd.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("mode", ["none", "zero1"])
def test_a_resumed_run_does_not_keep_the_replaced_checkpoint_mapped(mode: str, data_dir: Path, tmp_path: Path) -> None:
    """ckpt.pt is loaded memory-mapped; the optimizer's moments were its pages, so the file a later save replaced
    stayed mapped (its disk space taken, three checkpoints' worth on the disk the warning plans two for)."""
    import gc

    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4, parallel=mode)), stream=io.StringIO())
    trainer = Trainer(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=8, parallel=mode, init_from="resume")),
        stream=io.StringIO(),
    )
    try:
        trainer.train_step()
        trainer.iter_num += 1
        trainer.save()  # replaces the ckpt.pt the run resumed from
        gc.collect()
        mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(tmp_path) in line]
        assert mapped == [], mapped
    finally:
        trainer.logger.close()
        parallel.shutdown(trainer.dist)


def test_a_torchrun_restart_continues_the_run_its_job_started(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun --max-restarts reruns the one command line: a restarted attempt of the job (the same
    TORCHELASTIC_RUN_ID) continues from the failed attempt's checkpoint, or starts again in place before
    the first one; another job's run in out_dir is refused as before (with overwrite=True a restart had
    trained from scratch over the checkpoints, without it every restart was refused)."""
    step = Trainer.train_step

    def fails_at(iteration: int) -> None:
        def train_step(self: Trainer) -> dict:
            if self.iter_num == iteration:
                raise RuntimeError("a rank died")
            return step(self)

        monkeypatch.setattr(Trainer, "train_step", train_step)

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    args = tiny_args(data_dir, tmp_path, max_iters=16, overwrite=True)
    fails_at(10)  # after the checkpoint at iteration 8
    with pytest.raises(RuntimeError, match="a rank died"):
        train(parse_run_args(args), stream=io.StringIO())
    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    run = parse_run_args(args)
    assert run.train.init_from == "resume" and not run.train.overwrite
    summary = train(run, stream=io.StringIO())
    assert summary["status"] == "completed" and summary["start_iter"] == 8
    resume = [r for r in read_log(tmp_path) if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["iter"] == 8
    # before its first checkpoint: the attempt starts again, in place
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    fails_at(3)
    with pytest.raises(RuntimeError, match="a rank died"):
        train(parse_run_args(tiny_args(data_dir, fresh, max_iters=4)), stream=io.StringIO())
    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert train(parse_run_args(tiny_args(data_dir, fresh, max_iters=4)), stream=io.StringIO())["status"] == "completed"
    # another job's run: not this job's to continue
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
    with pytest.raises(ConfigError, match="holds a previous run"):
        train(parse_run_args(tiny_args(data_dir, fresh, max_iters=4)), stream=io.StringIO())
    # torchrun's id without --rdzv_id (nanoGPT's --master_addr form): 'none' for every job, so no job's id
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    train(parse_run_args(tiny_args(data_dir, tmp_path / "other", max_iters=2)), stream=io.StringIO())
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # another 'none' job's restart
    with pytest.raises(ConfigError, match="holds a previous run"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "other", max_iters=4)), stream=io.StringIO())


def test_kill_minus_nine_then_resume_matches(data_dir: Path, tmp_path: Path) -> None:
    """A real SIGKILL after a checkpoint; the resumed run's losses equal an uninterrupted run's bit for bit."""
    common = dict(dropout=0.1, lr_decay_iters=40, eval_interval=10, eval_iters=2)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train_py = [sys.executable, str(ROOT / "train.py")]
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([*train_py, *tiny_args(data_dir, out, max_iters=100000, **common)], **quiet)
    deadline = time.time() + 120
    log = out / "log.jsonl"
    while time.time() < deadline:  # until the checkpoint at iter 20 is written (lines may be partial)
        if log.exists() and any('"event": "checkpoint"' in line and '"iter": 20' in line for line in log.open()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out)["iter_num"] >= 20
    ref = tmp_path / "ref"  # the uninterrupted run, beside the resumed one
    straight = subprocess.Popen([*train_py, *tiny_args(data_dir, ref, max_iters=40, **common)], **quiet)
    try:
        done = _cli(*tiny_args(data_dir, out, max_iters=40, init_from="resume", **common))
        assert done.returncode == 0, done.stderr
        assert straight.wait(timeout=300) == 0
    finally:
        straight.kill()  # (done by now, unless an assertion left it running)
        straight.wait()
    a = {r["iter"]: r["loss"] for r in read_log(ref) if r["type"] == "iter"}
    records = read_log(out)
    start = max(i for i, r in enumerate(records) if r.get("event") == "resume")
    b = {r["iter"]: r["loss"] for r in records[start:] if r["type"] == "iter"}
    assert max(b) == 40 and all(a[i] == b[i] for i in b)


def test_seed_command_runs_on_cpu(data_dir: Path, tmp_path: Path) -> None:
    """The design document's command with the small overrides the issue names."""
    res = _cli(
        str(ROOT / "config/full_llama_124m.py"),
        "--n_layer=2",
        "--n_head=2",
        "--n_embd=64",
        "--block_size=64",
        "--batch_size=8",
        "--gradient_accumulation_steps=1",
        "--max_iters=40",
        "--dataset=stdlib_char",
        f"--data_dir={data_dir}",
        "--device=cpu",
        "--compile=False",
        "--dtype=float32",
        f"--out_dir={tmp_path}",
        "--eval_iters=5",
        "--log_interval=10",
        "--warmup_iters=5",
        "--lr_decay_iters=40",
    )
    assert res.returncode == 0, res.stderr
    evals = [r for r in read_log(tmp_path) if r["type"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # 41 steps at the config's learning rate
    assert (tmp_path / "ckpt.pt").is_file() and (tmp_path / "summary.json").is_file()


def test_chunked_loss_trains_like_the_plain_head(data_dir: Path, tmp_path: Path) -> None:
    """--loss_chunk_size changes memory, not the run: the same losses step by step (float32), the same
    FLOPs per token, and the startup memory plan without (N, V) logits."""
    plain = train(parse_run_args(tiny_args(data_dir, tmp_path / "plain", max_iters=8)), stream=io.StringIO())
    chunked = train(
        parse_run_args(tiny_args(data_dir, tmp_path / "chunked", max_iters=8, loss_chunk_size=20)), stream=io.StringIO()
    )
    assert chunked["final_val_loss"] == pytest.approx(plain["final_val_loss"], rel=1e-5)
    iters = {name: [r for r in read_log(tmp_path / name) if r["type"] == "iter"] for name in ("plain", "chunked")}
    for a, b in zip(iters["plain"], iters["chunked"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["flops_per_token"] == a["flops_per_token"]
    args = tiny_args(data_dir, tmp_path / "again", max_iters=8, loss_chunk_size=20)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    trainer.logger.close()
    assert trainer.telemetry.plan().activation_estimate.loss_chunk_bytes > 0  # the plan is the chunked head's


def test_sdpa_backend_puts_its_kernel_first_for_the_run(data_dir: Path, tmp_path: Path) -> None:
    """--sdpa_backend=math on the CPU: the run's attention runs on SDPA's math kernel (the CPU's flash kernel
    switched off) and says so at startup; train() gives the caller's setting back. A CUDA kernel on a CPU, or
    another attention backend, is one line."""
    from torch.profiler import profile

    from gptlab.device import compile_cache_tag, sdpa_state, set_compile_cache_tag, set_sdpa_state

    before, tag = sdpa_state(), compile_cache_tag()
    try:
        args = tiny_args(data_dir, tmp_path / "math", sdpa_backend="math")
        trainer = Trainer(parse_run_args(args), stream=io.StringIO())
        with profile() as prof:
            trainer.forward_backward(0, *trainer.train_loader.get_batch(0, 0))
        kernels = {e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")}
        assert kernels and all("math" in k for k in kernels), kernels
        trainer.logger.close()
    finally:
        set_sdpa_state(before)
        set_compile_cache_tag(tag)
    out = io.StringIO()
    train(parse_run_args(tiny_args(data_dir, tmp_path / "again", sdpa_backend="math", max_iters=1)), out)
    assert "math attention first" in out.getvalue()
    assert sdpa_state() == before and torch.backends.cuda.flash_sdp_enabled()
    assert compile_cache_tag() == tag  # the compile caches' key too (tests/test_device.py)
    # a kernel belongs to the machine a session runs on: a resume takes its launch's ('auto' unless typed), as
    # device, not the checkpoint's (a CUDA run's 'cudnn' resumed on a CPU was refused for a key never typed)
    resumed = Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "again", init_from="resume", max_iters=2)))
    assert resumed.run_config.train.sdpa_backend == "auto" and torch.backends.cuda.flash_sdp_enabled()
    resumed.logger.close()
    for keys, message in (
        ({"sdpa_backend": "cudnn"}, r"^sdpa_backend='cudnn' is a CUDA kernel; on cpu SDPA has 'flash' and 'math'"),
        ({"sdpa_backend": "flash", "attention_backend": "manual"}, r"attention_backend='manual' does not call"),
    ):
        with pytest.raises(ConfigError, match=message):
            Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "refused", **keys)))
    assert sdpa_state() == before


def test_residual_dtype_keeps_the_stream_in_bf16(data_dir: Path, tmp_path: Path) -> None:
    """--residual_dtype=bfloat16 (with dtype bfloat16): every block reads and returns bf16 under the step's
    autocast, the run trains (its loss falls) and says so at startup; 'auto' keeps autocast's float32 stream.
    A run whose dtype resolves to float32 refuses a bf16 stream in one line."""
    streams: dict[str, list[torch.dtype]] = {}
    plans = {}
    for residual in ("auto", "bfloat16"):
        args = tiny_args(data_dir, tmp_path / residual, max_iters=6, dtype="bfloat16", residual_dtype=residual)
        out = io.StringIO()
        trainer = Trainer(parse_run_args(args), stream=out)
        seen = streams[residual] = []
        trainer.raw_model.blocks[0].register_forward_hook(lambda _m, _i, y, seen=seen: seen.append(y.dtype))
        trainer.run()
        iters = [r for r in read_log(tmp_path / residual) if r["type"] == "iter"]
        assert iters[-1]["loss"] < iters[0]["loss"]
        assert ("residual stream in bfloat16" in out.getvalue()) == (residual == "bfloat16")
        plans[residual] = trainer.telemetry.plan().activation_estimate  # the run's plan: its own stream's
    assert set(streams["auto"]) == {torch.float32} and set(streams["bfloat16"]) == {torch.bfloat16}
    assert plans["bfloat16"].saved_bytes < plans["auto"].saved_bytes
    with pytest.raises(ConfigError, match=r"^residual_dtype='bfloat16' is invalid with dtype='float32'"):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "cpu", dtype="auto", residual_dtype="bfloat16")))


def test_memory_warning_before_the_first_step(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the plan does not fit, the run says so (with options) before training starts. On a CPU the
    memory is the machine's RAM shared by its ranks: a 200 KB machine running 2 ranks here."""
    from gptlab.train import telemetry_hooks

    peak = Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "plan")), stream=io.StringIO()).telemetry.plan()
    ram = int(1.5 * peak.mode.peak)  # each of 2 processes gets 0.75 of the peak: short, not hopelessly
    monkeypatch.setattr(telemetry_hooks, "host_memory_bytes", lambda: ram)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    out = io.StringIO()
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=1)), stream=out)
    (event,) = [r for r in read_log(tmp_path) if r.get("event") == "memory_warning"]
    assert "expect an out-of-memory error" in event["message"] and "--batch_size=2 with twice" in event["message"]
    share = f"{ram // 2 / 1e9:.1f}"
    assert f"per process exceeds the {share} GB of RAM it has for each of 2 processes" in event["message"]
    assert read_log(tmp_path).index(event) < next(i for i, r in enumerate(read_log(tmp_path)) if r["type"] == "iter")
    assert "out-of-memory" in out.getvalue()
    assert "unless torch.compile" not in event["message"]
    # compiled, the eager plan only brackets the peak (0.60-1.09 of it measured): the warning says so
    compiled = Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "compiled", compile=True)), stream=io.StringIO())
    assert "expect an out-of-memory error unless torch.compile saves enough" in compiled._memory_warning
    compiled.logger.close()
    out = io.StringIO()  # an evaluation needs no training memory: no warning
    train(parse_run_args(tiny_args(data_dir, tmp_path, init_from="resume", eval_only=True)), stream=out)
    assert "out-of-memory" not in out.getvalue()
    # nanoGPT's eval_only with init_from='scratch' evaluates new random weights: not beside a checkpoint
    with pytest.raises(ConfigError, match=r"holds ckpt\.pt: pass --init_from=resume to evaluate it"):
        train(parse_run_args(tiny_args(data_dir, tmp_path, eval_only=True)), stream=io.StringIO())


def test_a_run_planned_far_beyond_the_memory_is_refused_before_the_model_is_built(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than twice the memory (a typo's --batch_size=100000000, --n_embd=100000): building the model or
    gathering the batch would fill the machine's RAM before any out-of-memory error; one line instead."""
    from gptlab.train import telemetry_hooks

    monkeypatch.setattr(telemetry_hooks, "host_memory_bytes", lambda: 2 * 10**5)  # a 200 KB machine
    monkeypatch.setattr(Trainer, "_build_model", lambda *a, **k: pytest.fail("the model must not be built"))
    with pytest.raises(ConfigError, match=r"per process is more than 2 times the 0\.0 GB of RAM it has: this run "
                       r"cannot fit \(options, each alone: --activation_checkpointing=True -> "):  # fmt: skip
        train(parse_run_args(tiny_args(data_dir, tmp_path / "run", max_iters=1)), stream=io.StringIO())
    assert not (tmp_path / "run").exists()
    # an evaluation trains nothing: not refused by the training plan
    monkeypatch.undo()
    train(parse_run_args(tiny_args(data_dir, tmp_path / "run", max_iters=1)), stream=io.StringIO())
    monkeypatch.setattr(telemetry_hooks, "host_memory_bytes", lambda: 2 * 10**5)
    args = tiny_args(data_dir, tmp_path / "run", init_from="resume", eval_only=True)
    assert train(parse_run_args(args), stream=io.StringIO())["status"] == "completed"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_loss_accumulates_the_same_gradients(dtype: str, data_dir: Path, tmp_path: Path) -> None:
    """The Trainer's micro-steps (loss / accum_steps, then backward) give the same summed gradients with
    the chunked head: AdamW would hide a uniformly wrong gradient scale from a loss comparison, this does not."""
    grads = {}
    for chunk in (0, 20):
        args = tiny_args(
            data_dir, tmp_path / str(chunk), loss_chunk_size=chunk, gradient_accumulation_steps=3, dtype=dtype
        )
        trainer = Trainer(parse_run_args(args), stream=io.StringIO())
        for micro in range(3):
            trainer.forward_backward(micro, *trainer.train_loader.get_batch(0, micro))
        grads[chunk] = {name: p.grad.clone() for name, p in trainer.raw_model.named_parameters()}
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    for name, want in grads[0].items():
        assert (grads[20][name] - want).abs().max() <= tolerance * want.abs().max(), name


def test_train_step_makes_no_host_sync_and_reads_batches_ahead(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: a step that logs nothing reads nothing back to the host (with dropout, clipping
    and accumulation on), and each micro-step's batch was read during the previous micro-step's forward."""
    args = tiny_args(data_dir, tmp_path, gradient_log_interval=1000, dropout=0.1, grad_clip=1.0)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    assert trainer.accum_steps == 2
    trainer.train_step()  # iteration 0: gradient statistics (0 % 1000 == 0) and the one-off byte count
    trainer.iter_num += 1
    loader = trainer.train_loader
    asked, loaded = [], []
    get_batch, load = loader.get_batch, loader._load
    monkeypatch.setattr(loader, "get_batch", lambda s, m=0: asked.append((s, m)) or get_batch(s, m))
    monkeypatch.setattr(loader, "_load", lambda s, m: loaded.append((s, m)) or load(s, m))
    with count_host_syncs(monkeypatch) as syncs:
        for _ in range(3):
            step = trainer.train_step()
            trainer.iter_num += 1
    assert syncs == {"tolist": 0, "cpu": 0, "numpy": 0, "scalar": 0}
    assert step["grad_stats"] is None and step["loss"].shape == ()
    assert asked == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert loaded == [*asked[1:], (4, 0)]  # each read once, ahead of its use: none read on demand
    fresh = type(loader)(loader.dataset_dir, "train", 4, 32, seed=trainer.cfg.seed)
    assert torch.equal(get_batch(4, 0)[0], fresh.get_batch(4, 0)[0])  # the prefetched batch is the batch


def test_step_asks_the_model_for_the_loss_alone(data_dir: Path, tmp_path: Path) -> None:
    """Every micro-step calls the model with ``return_logits=False``: compiled, returned logits would get a
    zero (B, T, vocab) gradient made and added in every backward (tests/model/test_gpt.py)."""
    trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path)), stream=io.StringIO())
    calls, model = [], trainer.model
    trainer.model = lambda x, y, **kw: calls.append(kw) or model(x, y, **kw)  # type: ignore[assignment]
    trainer.train_step()
    assert calls == [{"return_logits": False}] * trainer.accum_steps


def test_gradient_statistics_step_reads_nothing_back(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that computes gradient statistics syncs no more than one that does not: they stay on the device
    (sent to the host without waiting) until the loop reads them, and are those of the step's gradients."""
    args = tiny_args(data_dir, tmp_path, gradient_log_interval=2, grad_clip=0.0)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    trainer.train_step()  # iteration 0: the one-off byte count
    trainer.iter_num = 2
    grads: list[torch.Tensor] = []
    zero_grad = trainer.optimizer.zero_grad  # the gradients the step left (no clipping), before they go
    monkeypatch.setattr(
        trainer.optimizer,
        "zero_grad",
        lambda set_to_none=True: (
            grads.extend(p.grad.clone() for p in trainer.raw_model.parameters()) or zero_grad(set_to_none=set_to_none)
        ),
    )
    with count_host_syncs(monkeypatch) as syncs:
        step = trainer.train_step()
    assert syncs == {"tolist": 0, "cpu": 0, "numpy": 0, "scalar": 0}
    stats = step["grad_stats"].result()
    flat = torch.cat([g.double().flatten() for g in grads])
    assert stats["global_norm"] == pytest.approx(flat.norm().item(), rel=1e-6)
    assert stats["grad_max"] == flat.max().item() and stats["grad_min"] == flat.min().item()
    assert step["grad_stats"].global_norm.item() == stats["global_norm"]  # the device scalar the loop checks


def test_loop_reads_gradient_statistics_a_step_late_or_where_it_logs(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statistics of a step that is not logged are read after the next step is queued (no stall); a logged
    step's right after its loss is read (synced anyway); the last ones before the final evaluation, so the
    checkpoint's spike history and the log hold every step's, in order."""
    from gptlab.telemetry.gradients import PendingGradientStats

    reads: list[int] = []
    result = PendingGradientStats.result
    args = tiny_args(data_dir, tmp_path, max_iters=8, log_interval=3, gradient_log_interval=2, eval_interval=100)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    monkeypatch.setattr(PendingGradientStats, "result", lambda self: reads.append(trainer.iter_num) or result(self))
    trainer.run()
    # made at 0, 2, 4, 6, 8; logged steps 0, 3, 6; the run ends after iteration 8
    assert reads == [0, 3, 5, 6, 9]
    records = read_log(tmp_path)
    grads = [(r["type"], r["iter"]) for r in records if "gradients" in r]
    assert grads == [("iter", 0), ("gradients", 2), ("gradients", 4), ("iter", 6), ("gradients", 8)]
    assert len(load_checkpoint(tmp_path)["gradient_history"]["history"]) == 5


def test_a_crash_still_logs_the_statistics_already_made(data_dir: Path, tmp_path: Path) -> None:
    """A run that ends by an exception (a crash, an OOM) logs the statistics of the steps before it, the one
    whose reading waited for the next step included: they are the record of why it crashed."""
    args = tiny_args(data_dir, tmp_path, max_iters=20, log_interval=100, gradient_log_interval=1, eval_interval=100)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    step = trainer.train_step

    def crashing() -> dict:
        if trainer.iter_num == 7:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return step()

    trainer.train_step = crashing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="illegal memory access"):
        trainer.run()
    trainer.logger.close(exit_code=1)
    logged = [r["iter"] for r in read_log(tmp_path) if "gradients" in r]
    assert logged == list(range(7))


def test_stable_grads_train_exactly_like_freed_grads(data_dir: Path, tmp_path: Path) -> None:
    """CUDA-graph compile modes with accumulation keep .grad as preallocated buffers (the real thing runs in
    tests/train/test_cuda.py on a GPU); here: the same losses and weights, bit for bit, and the buffers stay."""
    runs = {}
    for stable in (False, True):
        trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path / str(stable))), stream=io.StringIO())
        params = list(trainer.raw_model.parameters())
        if stable:
            trainer.use_stable_grads()
            buffers = [p.grad.data_ptr() for p in params]
        losses = []
        for _ in range(4):
            losses.append(trainer.train_step()["loss"].item())
            trainer.iter_num += 1
        if stable:
            assert [p.grad.data_ptr() for p in params] == buffers and all(not p.grad.any() for p in params)
        else:
            assert all(p.grad is None for p in params)
        runs[stable] = losses, [p.detach().clone() for p in params]
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[True][1], runs[False][1]))


@pytest.mark.filterwarnings("error")  # in-process, a warning is recorded, not printed: none may be given
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dataset": "shakespeare_char"}, "gptlab prepare shakespeare_char"),
        ({"n_layr": 2}, "did you mean 'n_layer'"),
        ({"batch_size": "big"}, "batch_size='big'"),
        ({"init_from": "resume"}, "out_dir=.* does not exist"),
        ({"block_size": 10**8, "arch_preset": "llama"}, "block_size"),
        ({"loss_chunk_size": -1}, "loss_chunk_size=-1"),
    ],
)
def test_bad_input_one_line_exit_2(
    overrides: dict, match: str, data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, err = _train_entry(capfd, *tiny_args(data_dir, tmp_path / "out", **overrides))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and __import__("re").search(match, lines[0]), lines
    assert not (tmp_path / "out" / "log.jsonl").exists()


def test_bad_input_from_a_fresh_interpreter(data_dir: Path, tmp_path: Path) -> None:
    """The root script itself, as a user types it: one line, exit 2 (the cases above run its entry in-process)."""
    res = _cli(*tiny_args(data_dir, tmp_path / "out", n_layr=2))
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.splitlines() == [res.stderr.strip()] and "did you mean 'n_layer'" in res.stderr, res.stderr


@pytest.mark.filterwarnings("error")  # in-process, a warning is recorded, not printed: none may be given
@pytest.mark.parametrize("damage", ["corrupt", "truncated", "flipped", "weights", "optimizer"])
def test_damaged_checkpoint_is_refused_and_left_alone(
    damage: str, data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A file that is not a checkpoint, half of one, one whose tensor bytes changed on disk (torch.load
    itself does not check the CRCs torch.save wrote: those weights loaded and trained on), or a readable
    one whose weights or optimizer state no longer fit the architecture it records (edited by hand)."""
    out = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, out, max_iters=8)), stream=io.StringIO())
    ckpt = out / "ckpt.pt"
    blob = ckpt.read_bytes()
    expected = "corrupt or truncated"
    if damage == "flipped":
        at = 2 * len(blob) // 3  # inside the tensors' data
        bad = blob[:at] + bytes(b ^ 0xFF for b in blob[at : at + 64]) + blob[at + 64 :]
        expected = "fails its CRC-32 check"
    elif damage in ("weights", "optimizer"):
        state = torch.load(ckpt, weights_only=True)
        if damage == "weights":
            name = next(k for k in state["model"] if k.startswith("blocks.0."))  # the sizes the record names agree
            state["model"][name] = torch.zeros(5)
            expected = f"its weights do not fit the architecture it records (size mismatch for {name}: "
        else:
            state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
            expected = "its optimizer states do not fit the architecture it records (loaded state dict has a "
        buffer = io.BytesIO()
        torch.save(state, buffer)
        bad = buffer.getvalue()
    else:
        bad = b"garbage" * 100 if damage == "corrupt" else blob[: len(blob) // 2]
        if damage == "corrupt":  # no torch.save file at all: said so, not 'corrupt or truncated'
            expected = "ckpt.pt' is not a checkpoint (not a torch.save file); the file was left untouched"
    ckpt.write_bytes(bad)
    log_before = (out / "log.jsonl").read_bytes()
    args = tiny_args(data_dir, out, max_iters=16, init_from="resume")
    if damage == "truncated":  # one from a fresh interpreter, as a user runs it (the others: entry, in-process)
        res = _cli(*args)
        code, err = res.returncode, res.stderr
    else:
        code, err = _train_entry(capfd, *args)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert "mmap" not in err  # the memory-mapped load's advice to re-save fits no damaged file
    assert ckpt.read_bytes() == bad and (out / "log.jsonl").read_bytes() == log_before


def _poison_after(trainer: Trainer, bad_iter: int) -> None:
    original = trainer.forward_backward

    def forward_backward(micro: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = original(micro, x, y)
        return loss * float("nan") if trainer.iter_num >= bad_iter else loss

    trainer.forward_backward = forward_backward  # type: ignore[method-assign]


def test_nan_loss_stops_and_keeps_best_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=40)), stream=io.StringIO())
    _poison_after(trainer, 12)
    original_save, saved = trainer.save, []
    trainer.save = lambda: saved.append(trainer.iter_num) or original_save()  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.run()
    assert saved == [8] and load_checkpoint(tmp_path)["iter_num"] == 8
    events = [r for r in read_log(tmp_path) if r.get("event") == "nan_stop"]
    assert events and events[0]["iter"] == 12
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("stopped") and summary["checkpoint_iter"] == 8
    # the final losses of every other status: those of the last evaluation (iteration 8, before the NaN)
    last_eval = [r for r in read_log(tmp_path) if r["type"] == "eval"][-1]
    assert (summary["final_train_loss"], summary["final_val_loss"]) == (last_eval["train_loss"], last_eval["val_loss"])


def test_nan_stop_names_the_first_non_finite_iteration(data_dir: Path, tmp_path: Path) -> None:
    """With log_interval > 1 the loss is read only at logged iterations: the stop there names the iteration
    where it first went non-finite (counted on the device), after that logged iteration's own record."""
    args = tiny_args(data_dir, tmp_path, max_iters=40, log_interval=4, eval_interval=100)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    _poison_after(trainer, 5)
    with pytest.raises(NonFiniteLossError):
        trainer.run()
    records = read_log(tmp_path)
    stop = next(r for r in records if r.get("event") == "nan_stop")
    assert (stop["iter"], stop["first_iter"]) == (8, 5) and "NaN or infinite at iter 5" in stop["message"]
    assert "no checkpoint was written" in stop["message"]
    logged = [r for r in records if r["type"] == "iter"]
    assert logged[-1]["iter"] == 8 and logged[-1]["loss"] == "nan"  # the stopping iteration's record is kept
    assert records.index(logged[-1]) < records.index(stop)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped: non-finite loss" and summary["checkpoint_iter"] is None
    # iterations 0..8 ran: the last one trained + 1, as the tokens count them (it said 8)
    assert summary["iterations"] == 9 and summary["tokens_seen"] == 9 * trainer.telemetry.tokens_per_iter


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_non_finite_gradient_stops_the_run_where_it_happened(
    grad_clip: float, data_dir: Path, tmp_path: Path
) -> None:
    """A finite loss with a NaN gradient: clipping by a NaN norm turns every weight NaN; the stop names
    that step, not the next one whose loss shows it. Without clipping, the gradient statistics' norm says
    so where they are computed."""
    args = tiny_args(
        data_dir,
        tmp_path,
        max_iters=20,
        log_interval=1,
        eval_interval=100,
        grad_clip=grad_clip,
        gradient_log_interval=1,
    )
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    weight = next(trainer.raw_model.parameters())
    weight.register_hook(lambda g: g * float("nan") if trainer.iter_num == 3 else g)
    with pytest.raises(NonFiniteLossError):
        trainer.run()
    stop = next(r for r in read_log(tmp_path) if r.get("event") == "nan_stop")
    assert (stop["iter"], stop["first_iter"]) == (3, 3)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_final_weights_that_give_nan_do_not_complete_the_run(policy: str, data_dir: Path, tmp_path: Path) -> None:
    """The last step's loss was finite but its update broke the weights: the final evaluation is NaN, so the
    run stopped (exit 2), it did not complete; nothing is saved and the sample at the end is not drawn."""
    args = tiny_args(data_dir, tmp_path, max_iters=9, nan_policy=policy, sample_at_end=True, sample_tokens=8)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    step = trainer.train_step

    def last_step_breaks_the_weights() -> dict:
        out = step()
        if trainer.iter_num == 9:
            with torch.no_grad():
                next(trainer.raw_model.parameters()).fill_(float("nan"))
        return out

    trainer.train_step = last_step_breaks_the_weights  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError):
        trainer.run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped: non-finite loss" and summary["final_val_loss"] == "nan"
    assert summary["checkpoint_iter"] == 8 and load_checkpoint(tmp_path)["iter_num"] == 8
    assert "sample" not in summary
    stop = next(r for r in read_log(tmp_path) if r.get("event") == "nan_stop")
    assert stop["iter"] == 10 and "the evaluation at iter 10 gave a non-finite loss" in stop["message"]
    assert summary["iterations"] == 10 and summary["tokens_seen"] == 10 * trainer.telemetry.tokens_per_iter


def test_a_run_that_never_saved_says_so(data_dir: Path, tmp_path: Path) -> None:
    """always_save_checkpoint=False and no evaluation beat iteration 0's (never saved): the run completes
    with no checkpoint, and says so instead of leaving the user to find out at the resume."""
    args = tiny_args(data_dir, tmp_path, max_iters=16, always_save_checkpoint=False)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    evaluate = trainer.evaluate
    trainer.evaluate = lambda: {k: v + trainer.iter_num for k, v in evaluate().items()}  # type: ignore[method-assign]
    summary = trainer.run()
    assert summary["status"] == "completed" and summary["checkpoint_iter"] is None
    assert not (tmp_path / "ckpt.pt").exists()
    events = [r for r in read_log(tmp_path) if r.get("event") == "no_checkpoint"]
    assert len(events) == 1 and "always_save_checkpoint=False" in events[0]["message"]
    trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path / "saved", max_iters=16)), stream=io.StringIO())
    summary = trainer.run()
    assert summary["checkpoint_iter"] == 17
    assert not any(r.get("event") in ("no_checkpoint", "checkpoint_behind") for r in read_log(trainer.out_dir))


def test_a_run_whose_last_weights_were_not_saved_says_which_were(data_dir: Path, tmp_path: Path) -> None:
    """always_save_checkpoint=False, val loss best at iteration 8 and worse at 16 (nanoGPT keeps the best): the
    run completes saying its checkpoint holds iteration 8 and the later iterations' weights were not saved (a
    resume goes on from 8), where the summary alone gave checkpoint_iter 8 beside iterations 17."""
    args = tiny_args(data_dir, tmp_path, max_iters=16, eval_interval=8, always_save_checkpoint=False)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    evaluate = trainer.evaluate
    worse_late = {0: 5.0, 8: 3.0}  # iteration 16 (and the final evaluation at 17): 4.0, worse than 8's
    trainer.evaluate = lambda: {k: worse_late.get(trainer.iter_num, 4.0) for k in evaluate()}  # type: ignore[method-assign]
    summary = trainer.run()
    assert summary["status"] == "completed" and summary["checkpoint_iter"] == 8 and summary["iterations"] == 17
    (event,) = [r for r in read_log(tmp_path) if r.get("event") == "checkpoint_behind"]
    assert event["checkpoint_iter"] == 8 and event["message"] == (
        "the checkpoint holds iter 8, the best val loss 3.0000; the weights of the 9 iterations after it (val loss "
        "4.0000 at iter 17) were not saved: always_save_checkpoint=False saves only improvements"
    )


def test_nan_policy_skip_skips_steps(data_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=12, nan_policy="skip")), stream=io.StringIO()
    )
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    _poison_after(trainer, 0)
    summary = trainer.run()
    assert summary["status"] == "completed"
    assert all(torch.equal(v, before[k]) for k, v in trainer.raw_model.state_dict().items())
    assert sum(r.get("event") == "nan_skip" for r in read_log(tmp_path)) == 13


@pytest.mark.parametrize("mode", ["none", "zero1", "fsdp"])
def test_resume_applies_new_optimizer_settings(mode: str, data_dir: Path, tmp_path: Path) -> None:
    """--weight_decay / --beta1 / --beta2 given on a resume are the run's from then on (the loaded AdamW
    state carried the old ones); the no-decay group stays at 0."""
    from gptlab import parallel

    train(parse_run_args(tiny_args(data_dir, tmp_path, parallel=mode, max_iters=2)), stream=io.StringIO())
    changed = dict(weight_decay=0.5, beta1=0.8, beta2=0.5, max_iters=4, init_from="resume")
    trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path, parallel=mode, **changed)), stream=io.StringIO())
    try:
        groups = [(g["weight_decay"], tuple(g["betas"])) for g in trainer.optimizer.param_groups]
        assert groups == [(0.5, (0.8, 0.5)), (0.0, (0.8, 0.5))]
    finally:
        trainer.logger.close()
        parallel.shutdown(trainer.dist)


def test_every_event_the_loop_logs_is_documented() -> None:
    """docs/training.md lists the `event` records a run can write: each name the code logs is there."""
    import re

    root = Path(__file__).resolve().parents[2]
    code = "\n".join(p.read_text() for p in (root / "gptlab").rglob("*.py"))
    logged = set(re.findall(r'log_event\(\s*"([a-z_]+)"', code))
    assert len(logged) >= 13, logged  # the pattern still finds the calls
    docs = (root / "docs" / "training.md").read_text()
    events = docs[docs.index("  - `event`") : docs.index("  - `summary`")]
    assert {name for name in logged if f"`{name}`" not in events} == set()


def test_nan_policy_skip_skips_a_step_whose_gradient_is_not_finite(data_dir: Path, tmp_path: Path) -> None:
    """A finite loss with an inf gradient: the step is skipped (applied, it made every weight NaN), and the
    run goes on training; fp16 without clipping (the scaler never unscaled) skips too, not crashes."""
    for dtype, clip in (("float32", 1.0), ("float16", 0.0)):
        out = tmp_path / dtype
        args = tiny_args(data_dir, out, max_iters=6, nan_policy="skip", dtype=dtype, grad_clip=clip)
        trainer = Trainer(parse_run_args(args), stream=io.StringIO())
        weight = next(trainer.raw_model.parameters())
        weight.register_hook(lambda g, t=trainer: g * float("inf") if t.iter_num == 3 else g)
        summary = trainer.run()
        assert summary["status"] == "completed" and math.isfinite(summary["final_val_loss"]), dtype
        skips = [r["iter"] for r in read_log(out) if r.get("event") == "nan_skip"]
        assert skips == [3], (dtype, skips)


def test_nan_policy_skip_gives_up_after_many_skips_in_a_row(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.train.loop import MAX_SKIPS_IN_A_ROW

    args = tiny_args(data_dir, tmp_path, max_iters=MAX_SKIPS_IN_A_ROW + 10, nan_policy="skip")
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    _poison_after(trainer, 5)
    with pytest.raises(NonFiniteLossError):
        trainer.run()
    stop = next(r for r in read_log(tmp_path) if r.get("event") == "nan_stop")
    assert stop["iter"] == 5 + MAX_SKIPS_IN_A_ROW - 1 and f"{MAX_SKIPS_IN_A_ROW} steps in a row" in stop["message"]
    assert stop["first_iter"] == 5  # the first of them, as nan_policy=stop names it (it was null)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("stopped") and summary["iterations"] == 5 + MAX_SKIPS_IN_A_ROW
    assert summary["tokens_seen"] == summary["iterations"] * trainer.telemetry.tokens_per_iter


@pytest.mark.parametrize(("mode", "dtype"), [("none", "float16"), ("zero1", "float16"), ("ddp", "bfloat16")])
def test_no_host_sync_under_fp16_and_data_parallel(
    mode: str, dtype: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16's GradScaler (whose non-fused path reads found_inf back every step: ZeRO-1 took it) and the
    data-parallel wrappers (a one-rank gloo group) add no host sync to a step that logs nothing."""
    args = tiny_args(data_dir, tmp_path, gradient_log_interval=1000, grad_clip=1.0, parallel=mode, dtype=dtype)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    try:
        trainer.train_step()  # iteration 0: gradient statistics and the one-off byte count
        trainer.iter_num += 1
        with count_host_syncs(monkeypatch) as syncs:
            for _ in range(2):
                trainer.train_step()
                trainer.iter_num += 1
        assert syncs == {"tolist": 0, "cpu": 0, "numpy": 0, "scalar": 0}
        if mode == "ddp":  # RoPE's tables are rebuilt from the config: not broadcast before every forward
            assert not trainer.model.will_sync_module_buffers()
    finally:
        trainer.logger.close()
        parallel.shutdown(trainer.dist)


def test_ddp_broadcasts_buffers_only_for_model_state() -> None:
    """A registered component with running statistics (a persistent buffer) keeps DDP's broadcast."""
    from gptlab.parallel import _has_persistent_buffers

    assert _has_persistent_buffers(torch.nn.BatchNorm1d(4))
    tied = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.Linear(2, 4, bias=False))
    tied[1].weight = tied[0].weight  # a tied weight under two names is still a parameter
    assert not _has_persistent_buffers(tied)


def test_logged_step_time_is_the_mean_over_the_log_window(data_dir: Path, tmp_path: Path) -> None:
    """dt_ms with log_interval > 1 is the window's mean per step, timed at the logging sync: a GPU runs
    ahead of the host between syncs, so one step's host time would be its launch time, not the device's."""
    args = tiny_args(data_dir, tmp_path, max_iters=8, log_interval=4, eval_interval=100)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    step = trainer.train_step

    def slow_unlogged_steps() -> dict:
        if trainer.iter_num % 4 == 1:  # a window's first step: its wall clock starts
            opened[trainer.iter_num + 3] = time.perf_counter()
        if trainer.iter_num % 4:
            time.sleep(0.05)  # the steps nobody logs carry the time
        result = step()
        if trainer.iter_num in opened:  # the logged step: its window's 4 steps took this long on the CPU
            windows[trainer.iter_num] = (time.perf_counter() - opened[trainer.iter_num]) * 1000
        return result

    opened: dict[int, float] = {}
    windows: dict[int, float] = {}
    trainer.train_step = slow_unlogged_steps  # type: ignore[method-assign]
    trainer.run()
    records = [r for r in read_log(tmp_path) if r["type"] == "iter"]
    logged = {r["iter"]: r["dt_ms"] for r in records}
    assert sorted(logged) == [0, 4, 8]
    # each record says how many steps it timed: iteration 0's window opens after the evaluation at 0
    assert {r["iter"]: r["timed_steps"] for r in records} == {0: 1, 4: 4, 8: 4}
    for it in (4, 8):  # the window's mean per step, at any load (undivided, it would be 4 times that)
        assert logged[it] >= 0.75 * 50 and logged[it] == pytest.approx(windows[it] / 4, rel=0.25), (logged, windows)
        tokens = records[it // 4]["tokens_per_sec"] * logged[it] / 1000
        assert tokens == pytest.approx(trainer.telemetry.tokens_per_iter)


def test_out_of_memory_is_one_line_with_options(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allocation failure in the step (here the CPU allocator's, raised by a patched step) is a one-line
    error naming the options, not a traceback; other runtime errors stay as they are."""
    from gptlab.errors import GptlabError

    def allocate(self: Trainer) -> dict:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 32768000000 bytes.")

    monkeypatch.setattr(Trainer, "train_step", allocate)
    with pytest.raises(GptlabError, match=r"^out of memory \(DefaultCPUAllocator.*--loss_chunk_size=1024"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "oom", max_iters=2)), stream=io.StringIO())
    monkeypatch.setattr(Trainer, "train_step", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError) as failure:
        train(parse_run_args(tiny_args(data_dir, tmp_path / "other", max_iters=2)), stream=io.StringIO())
    assert failure.traceback  # kept, as a notebook keeps the last one: its frames hold the trainer
    if Path("/proc/self/fd").is_dir():  # however a run fails, its log.jsonl is closed (a notebook kept it open)
        held = [os.readlink(f) for f in Path("/proc/self/fd").iterdir() if f.is_symlink() and f.exists()]
        assert not [f for f in held if f.startswith(str(tmp_path))], held


def test_full_disk_is_said_before_training_and_in_one_line_at_the_save(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk without room for a checkpoint is named at startup (disk_warning), and the save that fails
    says so in one line (here a 1 MB file-size limit stands in for the full disk)."""
    import resource
    import shutil as shutil_module
    from collections import namedtuple

    from gptlab.errors import CheckpointError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    args = tiny_args(data_dir, tmp_path, max_iters=8, n_embd=128, n_head=4)  # a ~3 MB checkpoint
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (10**6, hard))
    try:
        with pytest.raises(CheckpointError, match=r"^cannot write the checkpoint .*ckpt\.pt: File too large \(a file-"):
            train(parse_run_args(args), stream=io.StringIO())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    (warning,) = [r for r in read_log(tmp_path) if r.get("event") == "disk_warning"]
    assert "a save will fail" in warning["message"] and "has 1.000 KB free" in warning["message"]
    assert not list(tmp_path.glob("*.tmp-*")) and not (tmp_path / "ckpt.pt").exists()  # nothing half-written


def test_the_disk_warning_counts_the_checkpoint_written_beside_the_kept_one(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for one checkpoint but not two: a new run's first save fits, its second (written beside the
    first) fails, one eval_interval of training later; a resume, whose checkpoint is already on disk, fits."""
    import shutil as shutil_module
    from collections import namedtuple

    from gptlab.checkpoint import load_checkpoint

    first = tmp_path / "first"
    train(parse_run_args(tiny_args(data_dir, first, max_iters=2)), stream=io.StringIO())
    one = 12 * sum(t.numel() for t in load_checkpoint(first)["model"].values())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 0, int(1.5 * one)))
    train(parse_run_args(tiny_args(data_dir, tmp_path / "new", max_iters=2)), stream=io.StringIO())
    (warning,) = [r for r in read_log(tmp_path / "new") if r.get("event") == "disk_warning"]
    assert "(2 of " in warning["message"] and "keep_checkpoints=1" in warning["message"]
    train(parse_run_args(tiny_args(data_dir, first, max_iters=4, init_from="resume")), stream=io.StringIO())
    assert not [r for r in read_log(first) if r.get("event") == "disk_warning"]


def test_train_from_python_leaves_the_callers_settings(data_dir: Path, tmp_path: Path) -> None:
    """docs/training.md's "From Python": a flat dict of keys, errors raised (not sys.exit), and the
    process-wide state a run sets (the seeded CPU RNG; TF32 on CUDA) handed back as it was."""
    from gptlab.config.resolve import resolve_run_config

    values = dict(arch_preset="llama", n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=512,
                  dataset="stdlib_char", data_dir=str(data_dir), out_dir=str(tmp_path), device="cpu",
                  dtype="float32", compile=False, max_iters=2, lr_decay_iters=2, warmup_iters=1,
                  eval_interval=2, eval_iters=1, batch_size=2)  # fmt: skip
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    run = resolve_run_config(values)
    summary = train(run, stream=io.StringIO())
    assert torch.equal(torch.get_rng_state(), before)
    # a notebook's own settings (a float64 cell, an inference cell) are not the run's, and are kept: it failed
    # with a dtype or no-grad error after writing its log
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            again = train(resolve_run_config({**values, "out_dir": str(tmp_path / "nb")}), stream=io.StringIO())
            assert not torch.is_grad_enabled()
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert again["final_val_loss"] == summary["final_val_loss"]
    assert json.loads((tmp_path / "config.json").read_text())["arch"]["vocab_size"] == 512  # set, so kept
    assert run.train.arch_preset == "llama"
    with pytest.raises(ConfigError, match="n_head=3"):
        resolve_run_config({**values, "n_head": 3})
    with pytest.raises(ConfigError, match=r"takes a list of arguments .*, not str '--max_iters=3'"):
        parse_run_args("--max_iters=3")  # it iterated by character: "config file '-' does not exist"
    assert parse_run_args(a for a in ["--max_iters=7"]).train.max_iters == 7  # a generator, read once
    # a resume from a dict is the command line's: every setting not given is the checkpoint's (it took nanoGPT's
    # defaults: openwebtext, not prepared; given the dataset, learning rate 6e-4 and batch 12 in silence)
    resumed = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 4, "data_dir": str(data_dir)}
    from_dict = resolve_run_config(resumed)
    from_args = parse_run_args([f"--{k}={v}" for k, v in resumed.items()])
    assert (from_dict.train, from_dict.arch) == (from_args.train, from_args.arch)
    assert (from_dict.train.batch_size, from_dict.train.dataset, from_dict.arch.n_embd) == (2, "stdlib_char", 32)
    assert from_dict.resume_changes == {"max_iters": (2, 4)}


def test_every_field_of_the_records_and_summary_is_documented(data_dir: Path, tmp_path: Path) -> None:
    """docs/training.md names each field a run writes to log.jsonl's iter/eval records and summary.json
    (nested memory and gradient statistics included), so a new field cannot go undescribed."""
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=6, eval_interval=3)), stream=io.StringIO())
    records = read_log(tmp_path)
    fields = set(json.loads((tmp_path / "summary.json").read_text()))
    for record in records:
        if record["type"] in ("iter", "eval", "gradients"):
            fields |= set(record) - {"type"}
            for nested in ("memory", "gradients"):
                fields |= set(record.get(nested) or {})
    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    missing = {name for name in fields if f"`{name}`" not in docs and not name.endswith(("_mean", "_median", "_p90"))}
    assert missing == set()


def test_resume_on_another_dataset_checks_its_vocabulary(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed on a dataset whose ids the checkpoint's embedding cannot take: one line, not an IndexError
    on the first batch; on one whose ids fit but mean other text, or re-prepared from other text, or under
    another PyTorch: trained, and the change is said."""
    import shutil

    from gptlab.data.storage import DatasetWriter
    from gptlab.errors import CheckpointError

    out = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, out, max_iters=4, eval_interval=4)), stream=io.StringIO())
    wide = tmp_path / "data"
    with DatasetWriter(wide / "wide", 5000) as writer:
        for split in ("train", "val"):
            writer.write(split, torch.randint(0, 5000, (2000,)).numpy())
        writer.commit({"name": "wide", "vocab_size": 5000, "dtype": writer.dtype.name, "tokens": dict(writer.counts)})
    launch = [f"--out_dir={str(out)!r}", "--device='cpu'", "--compile=False", "--init_from='resume'", "--max_iters=6"]
    with pytest.raises(CheckpointError, match=r"has vocab_size=128 < dataset 'wide''s 5000: resume on the dataset"):
        train(parse_run_args([*launch, f"--data_dir={str(wide)!r}", "--dataset='wide'"]), stream=io.StringIO())
    finetune = [f"--init_from={str(out)!r}", f"--out_dir={str(tmp_path / 'ft')!r}", "--device='cpu'", "--compile=False"]
    with pytest.raises(CheckpointError, match=r"has vocab_size=128 < dataset 'wide''s 5000: its embedding has no row"):
        train(parse_run_args([*finetune, f"--data_dir={str(wide)!r}", "--dataset='wide'"]), stream=io.StringIO())
    with DatasetWriter(wide / "short", 128) as writer:  # splits shorter than the checkpoint's block_size
        for split in ("train", "val"):
            writer.write(split, torch.randint(0, 128, (20,)).numpy())
        writer.commit({"name": "short", "vocab_size": 128, "dtype": writer.dtype.name, "tokens": dict(writer.counts)})
    with pytest.raises(DataError, match=r"holds 20: a resume keeps its checkpoint's block_size; .* --block_size="):
        train(parse_run_args([*launch, f"--data_dir={str(wide)!r}", "--dataset='short'"]), stream=io.StringIO())
    # the same vocabulary size, other characters
    shutil.copytree(data_dir / "stdlib_char", wide / "shuffled")
    meta = json.loads((wide / "shuffled" / "meta.json").read_text())
    itos = meta["tokenizer"]["itos"]
    itos["0"], itos["1"] = itos["1"], itos["0"]
    meta["tokenizer"]["stoi"] = {c: int(i) for i, c in itos.items()}
    old_sha = meta["source"]["sha256"]
    meta["source"]["sha256"] = "f" * 64  # prepared from other text
    (wide / "shuffled" / "meta.json").write_text(json.dumps(meta))
    versions = {**software_versions(), "torch": "9.9.9"}
    monkeypatch.setattr("gptlab.train.loop.software_versions", lambda: versions)  # what the checkpoint records
    monkeypatch.setattr("gptlab.train.resume.software_versions", lambda: versions)  # what the resume compares
    train(parse_run_args([*launch, f"--data_dir={str(wide)!r}", "--dataset='shuffled'"]), stream=io.StringIO())
    event = [r for r in read_log(out) if r.get("event") == "resume"][-1]
    assert event["changed"]["tokenizer"] == ["char", "char, other ids"]
    tokens = ", ".join(f"{split} {n:,}" for split, n in meta["tokens"].items())
    was, now = event["changed"]["data"]
    assert was.startswith(f"sha256 {old_sha[:12]}, {tokens} tokens; .bin samples train ")
    assert now.startswith(f"sha256 ffffffffffff, {tokens} tokens; .bin samples train ")
    assert event["changed"]["torch"] == [torch.__version__, "9.9.9"] and "python" not in event["changed"]
    assert load_checkpoint(out)["versions"] == versions  # what wrote the checkpoint now


def test_summary_best_val_loss_is_the_runs_over_every_session(data_dir: Path, tmp_path: Path) -> None:
    """A preempted and resumed run's summary.json (which `gptlab compare` reports) gives the best validation
    loss of the whole run, as its checkpoint does, not only the last session's."""
    out = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, out, max_iters=8, eval_interval=4)), stream=io.StringIO())
    launch = [f"--out_dir={str(out)!r}", f"--data_dir={str(data_dir)!r}", "--device='cpu'", "--compile=False"]
    worse = ["--init_from='resume'", "--max_iters=12", "--learning_rate=3.0", "--min_lr=3.0", "--grad_clip=0.0"]
    summary = train(parse_run_args([*launch, *worse]), stream=io.StringIO())
    evals = [r["val_loss"] for r in read_log(out) if r["type"] == "eval"]
    assert min(evals[4:]) > min(evals[:4])  # 0, 4, 8 and the final 9; the second session made it worse
    assert summary["best_val_loss"] == min(evals) == load_checkpoint(out / "ckpt.pt")["best_val_loss"]


def test_a_training_into_a_locked_out_dir_is_refused(tmp_path: Path, data_dir: Path) -> None:
    """A job submitted twice: the second is refused in one line (nothing written), not mixed into the first."""
    from gptlab.fileio import RUN_LOCK, run_lock

    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(ConfigError, match="is in use by another training"):
            train(parse_run_args(tiny_args(data_dir, out, max_iters=2)), stream=io.StringIO())
        assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK]  # nothing of the refused run
    summary = train(parse_run_args(tiny_args(data_dir, out, max_iters=2)), stream=io.StringIO())
    assert summary["status"] == "completed" and (out / RUN_LOCK).exists()


def test_a_resume_of_a_live_run_is_refused_before_its_checkpoint_is_read(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume reads its settings from the latest checkpoint while it parses them: into a folder another
    training is writing, the live run's next save prunes that checkpoint as it is read (an FSDP one then
    read as damaged, "not a readable DCP checkpoint"). It is the in-use line, before any checkpoint is read;
    an evaluation (eval_only, which writes nothing of the run's) still reads it."""
    import gptlab.checkpoint
    from gptlab.fileio import run_lock

    out = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, out, max_iters=2)), stream=io.StringIO())
    read = []
    original = gptlab.checkpoint.read_saved_settings
    monkeypatch.setattr(gptlab.checkpoint, "read_saved_settings", lambda path: read.append(path) or original(path))
    with run_lock(out):  # the live run
        with pytest.raises(ConfigError, match="is in use by another training"):
            parse_run_args(tiny_args(data_dir, out, init_from="resume", max_iters=4))
        assert read == []
        assert parse_run_args(tiny_args(data_dir, out, init_from="resume", eval_only=True)).train.eval_only
        assert len(read) == 1
    assert parse_run_args(tiny_args(data_dir, out, init_from="resume", max_iters=4)).train.max_iters == 4


def test_a_run_that_trains_again_removes_the_summary_of_its_finished_session(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run resumed with more iterations (or replaced with overwrite=True) is live again: its old
    summary.json said "completed" at the old iteration to every reader until the new one finished; a resume
    that has nothing to do leaves it."""
    out = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, out, max_iters=2)), stream=io.StringIO())
    finished = (out / "summary.json").read_text()
    train(parse_run_args(tiny_args(data_dir, out, init_from="resume", max_iters=2)), stream=io.StringIO())
    assert (out / "summary.json").read_text() == finished  # nothing to do
    seen = []
    loop = Trainer._train_loop

    def training(self: Trainer, stop: object) -> dict:
        seen.append((out / "summary.json").exists())
        return loop(self, stop)

    monkeypatch.setattr(Trainer, "_train_loop", training)
    for more in (dict(init_from="resume", max_iters=4), dict(overwrite=True, max_iters=3)):
        summary = train(parse_run_args(tiny_args(data_dir, out, **more)), stream=io.StringIO())
        assert json.loads((out / "summary.json").read_text())["iterations"] == summary["iterations"]
    assert seen == [False, False]


def test_a_checkpoint_of_an_older_gptlab_resumes_with_its_own_counts_and_says_what_changed(
    tmp_path: Path, data_dir: Path
) -> None:
    """A checkpoint from before the evaluation batches had their own stream (no ``versions``) and before the
    token count (no ``tokens_seen``): the resume says the evaluation batches changed and takes its best val
    loss from the new batches (the old best, on others, kept a better model from being saved); the tokens of
    the earlier iterations are counted at the checkpoint's own batch (today's made it 2x with --batch_size=8)."""
    out = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, out, max_iters=8, eval_interval=4)), stream=io.StringIO())
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    start, old_best = ckpt["iter_num"], ckpt["best_val_loss"]
    for key in ("versions", "tokens_seen", "data"):
        del ckpt[key]
    torch.save(ckpt, out / "ckpt.pt")
    resumed = tiny_args(data_dir, out, init_from="resume", max_iters=16, eval_interval=4, batch_size=8)
    summary = train(parse_run_args(resumed), stream=io.StringIO())
    (event,) = [r for r in read_log(out) if r.get("event") == "resume"]
    assert "evaluation batches" in event["changed"] and "evaluation batches" in event["message"]
    evals = [r for r in read_log(out) if r["type"] == "eval" and r["iter"] >= start]
    assert evals[0]["iter"] == start and evals[0]["tokens"] == start * 4 * 2 * 32  # the checkpoint's batch
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals) != old_best
    # a checkpoint that records them: nothing said of the evaluation batches, the count carried as it is
    again = tiny_args(data_dir, out, init_from="resume", max_iters=20, eval_interval=4, batch_size=8)
    final = train(parse_run_args(again), stream=io.StringIO())
    last = [r for r in read_log(out) if r.get("event") == "resume"][-1]
    assert "evaluation batches" not in last["changed"]
    # by hand: iterations 0..start-1 at the first batch (4 x 2 x 32 tokens), the rest through 20 at 8 x 2 x 32
    assert final["tokens_seen"] == start * 4 * 2 * 32 + (21 - start) * 8 * 2 * 32


# ---- the step's arithmetic against references computed here (learning rate, clipping, loss, gradients)

STEP_ARGS = dict(n_layer=1, n_embd=32, block_size=16, batch_size=4, eval_iters=1, gradient_log_interval=1000)


def _record_at_optimizer_step(trainer: Trainer, record) -> None:
    """Calls ``record(optimizer)`` just before each optimizer step (after accumulation and clipping)."""
    trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: record(optimizer))


def _total_grad_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))


def test_each_step_runs_at_its_own_iterations_learning_rate(data_dir: Path, tmp_path: Path) -> None:
    """The AdamW step of iteration i uses nanoGPT's get_lr(i) (warmup (i+1)/(warmup+1), cosine, then min_lr),
    in every param group, and log.jsonl's lr of iteration i is that same value."""
    lr, min_lr, warmup, decay = 3e-3, 3e-4, 3, 6

    def nanogpt_lr(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        ratio = (it - warmup) / (decay - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    args = tiny_args(
        data_dir, tmp_path, **STEP_ARGS, gradient_accumulation_steps=1, max_iters=8, eval_interval=100,
        decay_lr=True, warmup_iters=warmup, lr_decay_iters=decay, learning_rate=lr, min_lr=min_lr,
    )  # fmt: skip
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    seen: list[list[float]] = []
    _record_at_optimizer_step(trainer, lambda opt: seen.append([g["lr"] for g in opt.param_groups]))
    trainer.run()
    want = [nanogpt_lr(i) for i in range(9)]  # iterations 0..max_iters
    assert len(seen) == 9 and all(len(groups) == 2 for groups in seen)  # decay and no-decay groups
    for i, groups in enumerate(seen):
        assert groups == pytest.approx([want[i]] * 2, rel=1e-12, abs=0), i
    logged = {r["iter"]: r["lr"] for r in read_log(tmp_path) if r["type"] == "iter"}
    assert sorted(logged) == list(range(9))
    assert [logged[i] for i in range(9)] == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("accum", [1, 2])
def test_gradients_are_clipped_before_the_optimizer_step(accum: int, data_dir: Path, tmp_path: Path) -> None:
    """grad_clip=1e-3: the gradients AdamW steps with have a global norm of at most 1e-3 (clip_grad_norm_ scales
    them to max_norm / (norm + 1e-6)); the returned and logged grad_norm is the larger one from before clipping."""
    clip = 1e-3
    args = tiny_args(
        data_dir, tmp_path, **STEP_ARGS, gradient_accumulation_steps=accum, max_iters=1, eval_interval=100,
        grad_clip=clip,
    )  # fmt: skip
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    params = list(trainer.raw_model.parameters())
    norms: list[float] = []
    _record_at_optimizer_step(trainer, lambda opt: norms.append(_total_grad_norm(params)))
    trainer.run()
    logged = [r["grad_norm"] for r in read_log(tmp_path) if r["type"] == "iter"]
    assert len(norms) == 2 and len(logged) == 2
    for clipped, before in zip(norms, logged):
        assert before > 10 * clip  # clipping had something to do
        assert clipped <= clip * (1 + 1e-5)
        assert clipped == pytest.approx(clip * before / (before + 1e-6), rel=1e-4)  # scaled, not zeroed
    # a step called directly returns the same pre-clip norm as the gradients it stepped with, before clipping
    norms.clear()
    unclipped: list[float] = []
    clip_grad_norm = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *a, **kw):
        parameters = list(parameters)
        unclipped.append(_total_grad_norm(parameters))
        return clip_grad_norm(parameters, max_norm, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.utils, "clip_grad_norm_", spy)
        step = trainer.train_step()
    assert len(unclipped) == 1 and float(step["grad_norm"]) == pytest.approx(unclipped[0], rel=1e-5)
    assert norms[0] <= clip * (1 + 1e-5) < unclipped[0]


def test_float16_gradients_are_unscaled_before_clipping_on_every_step(data_dir: Path, tmp_path: Path) -> None:
    """Under float16 the gradients carry GradScaler's factor (65536 at first): clipping and the logged norm need them
    unscaled on every step, not only on the gradient statistics' (gradient_log_interval=1000 here). The norm logged
    is a float32 twin's, to float16's rounding, and AdamW steps with gradients clipped to grad_clip: on scaled
    gradients the clip would shrink the true step by the scale and log a norm that much larger."""
    clip = 1e-3
    logged: dict[str, list[float]] = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        args = tiny_args(
            data_dir, out, **STEP_ARGS, max_iters=2, eval_interval=100, grad_clip=clip, dtype=dtype,
        )  # fmt: skip
        trainer = Trainer(parse_run_args(args), stream=io.StringIO())
        params = list(trainer.raw_model.parameters())
        norms: list[float] = []
        _record_at_optimizer_step(trainer, lambda opt, seen=norms, ps=params: seen.append(_total_grad_norm(ps)))
        trainer.run()
        logged[dtype] = [r["grad_norm"] for r in read_log(out) if r["type"] == "iter"]
        assert len(norms) == 3 and len(logged[dtype]) == 3, dtype  # no step skipped by the scaler
        for clipped, before in zip(norms, logged[dtype]):
            assert before > 10 * clip and clipped == pytest.approx(clip * before / (before + 1e-6), rel=1e-3), dtype
    assert logged["float16"] == pytest.approx(logged["float32"], rel=2e-2)


def test_dropout_draws_new_masks_every_micro_step(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Dropout's generator is seeded per (seed, iteration, global micro-batch), so that masks are exact on resume and
    equal under any world size (tests/parallel/test_torchrun.py); each of those must draw its own masks: a seed that
    left the iteration out gave every step the same masks, which the equality tests cannot see."""
    args = tiny_args(
        data_dir, tmp_path, **STEP_ARGS, dropout=0.1, gradient_accumulation_steps=2, max_iters=3, eval_interval=100,
    )  # fmt: skip
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    seeds: list[int] = []
    seed = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda value: (seeds.append(value), seed(value))[1])
    masks = []
    for _ in range(2):
        trainer.train_step()
        masks.append(torch.nn.functional.dropout(torch.ones(64), 0.5))  # drawn right after the step's last seed
        trainer.iter_num += 1
    trainer.logger.close()
    assert len(seeds) == 4 and len(set(seeds)) == 4, seeds  # 2 iterations x 2 micro-steps
    assert not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_gradients_are_reduced_on_the_last_micro_step_only(mode: str, data_dir: Path, tmp_path: Path) -> None:
    """Gradient accumulation reduces across ranks once a step: DDP's no_sync and FSDP's requires_gradient_sync keep
    the earlier micro-steps local (reducing each one gives the same numbers at accumulation_steps times the
    communication, which no equality test sees)."""
    args = tiny_args(data_dir, tmp_path, **STEP_ARGS, gradient_accumulation_steps=3, max_iters=1, parallel=mode)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    try:
        synced: list[bool] = []
        if mode == "fsdp":
            setting = trainer.model.set_requires_gradient_sync
            trainer.model.set_requires_gradient_sync = lambda sync, **kw: (synced.append(sync), setting(sync, **kw))[1]
        else:
            no_sync = trainer.model.no_sync
            trainer.model.no_sync = lambda: (synced.append(False), no_sync())[1]
        trainer.train_step()
        assert synced == ([False, False, True] if mode == "fsdp" else [False, False])  # DDP syncs outside no_sync
    finally:
        trainer.logger.close()
        parallel.shutdown(trainer.dist)


def test_the_startup_record_counts_the_model_and_the_run(data_dir: Path, tmp_path: Path) -> None:
    """The startup report's size and length against the built model and nanoGPT's count: every parameter once (a
    tied head not twice), and iterations start_iter..max_iters inclusive, each tokens_per_iter."""
    from gptlab.train.startup_report import build_startup_report

    args = tiny_args(data_dir, tmp_path, **STEP_ARGS, max_iters=6)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    trainer.logger.close()
    report = build_startup_report(trainer)
    model = trainer.raw_model
    assert report["architecture"]["params"] == sum(p.numel() for p in model.parameters())
    assert report["architecture"]["params_non_embedding"] == model.get_num_params()
    assert report["training"]["total_tokens"] == 7 * trainer.telemetry.tokens_per_iter  # iterations 0..6


def test_evaluation_batches_are_never_training_batches(data_dir: Path, tmp_path: Path) -> None:
    """The evaluation's fixed batches come from a stream of their own: with --seed=0 (the evaluation's own seed) a
    shared stream would make the "train loss" of evaluation the loss on batches the run trained on first."""
    args = tiny_args(data_dir, tmp_path, **{**STEP_ARGS, "eval_iters": 3}, seed=0, max_iters=3)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    trainer.logger.close()
    for k in range(3):
        for micro in range(2):
            evaluated, trained = (
                trainer.eval_loaders["train"].get_batch(k, micro),
                trainer.train_loader.get_batch(k, micro),
            )
            assert not torch.equal(evaluated[0], trained[0]), (k, micro)


def _micro_batches(trainer: Trainer, it: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Iteration ``it``'s micro-batches, from a fresh loader built as the Trainer's is (BatchLoader(dataset,
    'train', seed=cfg.seed), micro-step m reading key (it, m) on a single process)."""
    from gptlab.data.loader import BatchLoader

    cfg = trainer.cfg
    loader = BatchLoader(trainer.dataset_dir, "train", cfg.batch_size, trainer.arch.block_size, seed=cfg.seed)
    return [loader.get_batch(it, m) for m in range(cfg.gradient_accumulation_steps)]


def test_logged_loss_is_the_mean_over_micro_steps(data_dir: Path, tmp_path: Path) -> None:
    """learning_rate=0 keeps the weights: the loss train_step returns and log.jsonl records for each iteration
    is the mean of the model's loss over that iteration's 3 micro-batches, computed here on a copy."""
    import copy

    args = tiny_args(
        data_dir, tmp_path, **STEP_ARGS, gradient_accumulation_steps=3, max_iters=2, eval_interval=100,
        learning_rate=0.0, min_lr=0.0,
    )  # fmt: skip
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    twin = copy.deepcopy(trainer.raw_model)
    with torch.no_grad():
        want = [sum(float(twin(x, y)[1]) for x, y in _micro_batches(trainer, it)) / 3 for it in range(3)]
    assert max(want) - min(want) > 1e-4  # the iterations' batches differ, so each is pinned to its own
    returned: list[float] = []
    train_step = trainer.train_step

    def recording_step():
        step = train_step()
        returned.append(float(step["loss"]))
        return step

    trainer.train_step = recording_step  # type: ignore[method-assign]
    trainer.run()
    assert returned == pytest.approx(want, rel=1e-6)
    logged = {r["iter"]: r["loss"] for r in read_log(tmp_path) if r["type"] == "iter"}
    assert [logged[i] for i in range(3)] == pytest.approx(want, rel=1e-6)


def test_accumulated_gradients_are_the_global_batch_mean_gradient(data_dir: Path, tmp_path: Path) -> None:
    """With 2 micro-steps (and no clipping), the .grad AdamW steps with is the gradient of the mean loss over
    the whole batch: one backward through a copy of the model on the two micro-batches concatenated."""
    import copy

    args = tiny_args(data_dir, tmp_path, **STEP_ARGS, gradient_accumulation_steps=2, max_iters=0, grad_clip=0.0)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    twin = copy.deepcopy(trainer.raw_model)
    batches = _micro_batches(trainer, 0)
    x, y = (torch.cat(parts) for parts in zip(*batches))
    twin(x, y)[1].backward()
    want = {name: p.grad for name, p in twin.named_parameters()}
    got: dict[str, torch.Tensor] = {}

    def capture(opt) -> None:
        got.update({name: p.grad.clone() for name, p in trainer.raw_model.named_parameters()})

    _record_at_optimizer_step(trainer, capture)
    trainer.train_step()
    assert got.keys() == want.keys()
    for name, g in got.items():
        assert want[name].abs().max() > 0, name
        # float32 summation order differs (seen: <= 6e-7 of the largest entry); a wrong scale is off by 50%+
        assert (g - want[name]).abs().max() <= 1e-5 * want[name].abs().max(), (name, (g - want[name]).abs().max())


def test_the_startup_report_says_when_the_flops_are_an_estimate(data_dir: Path, tmp_path: Path) -> None:
    """A registered FFN whose forward cannot run on the meta device is counted as every matrix once per
    token: the FLOPs/token and MFU built on that estimate carry a note, on the console and in the log."""
    from gptlab.model.registry import FFN_REGISTRY
    from gptlab.train.startup_report import build_startup_report, render_startup_report
    from tests.test_plugins import RoutedFFN

    FFN_REGISTRY["routed_loop_t"] = RoutedFFN
    try:
        args = tiny_args(data_dir, tmp_path, max_iters=1, arch_preset="custom", ffn_type="routed_loop_t")
        report = build_startup_report(Trainer(parse_run_args(args), stream=io.StringIO()))
    finally:
        del FFN_REGISTRY["routed_loop_t"]
    (caveat,) = report["expectations"]["flops_caveats"]
    assert "routed_loop_t: estimated as every matrix once per token" in caveat
    assert f"  note:        {caveat}; MFU uses this count" in render_startup_report(report).splitlines()
    # the memory plan, wrapped at 100 columns under its label
    lines = render_startup_report(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  memory:      "))
    wrapped = [lines[start], *(line for line in lines[start + 1 :] if line.startswith(" " * 15))]
    assert all(len(line) <= 100 for line in wrapped) and len(wrapped) > 1
    assert " ".join(line.strip() for line in wrapped) == "memory:      " + report["expectations"]["memory_plan"]
    # the device's memory beside its name, to read the plan against (a GPU's; none on a CPU)
    device = next(line for line in lines if line.startswith("  device:"))
    assert report["hardware"]["device_memory_gb"] is None and device.startswith("  device:      cpu (cpu), dtype=")
    gpu = {**report, "hardware": {**report["hardware"], "device_name": "NVIDIA H200", "device_memory_gb": 150.02}}
    assert "  device:      cpu (NVIDIA H200, 150.0 GB), dtype=" in render_startup_report(gpu)


def test_each_compiled_run_starts_from_empty_compile_caches(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs in one process (a notebook, compare --train) compile the same forward: the entries earlier runs
    left reached dynamo's recompile limit after ~4 models, and the fifth trained uncompiled, still reporting
    compile=True. (Compilation itself is stubbed here: what is checked is that each compiled run clears them.)"""
    resets: list[int] = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    for i, compile_ in enumerate((True, True, False)):
        train(
            parse_run_args(tiny_args(data_dir, tmp_path / str(i), max_iters=1, compile=compile_)), stream=io.StringIO()
        )
    assert len(resets) == 2


def test_ctrl_c_during_a_ranks_startup_is_one_line(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torchrun passes a Ctrl-C on to its workers; one that came while a rank was still starting (importing,
    wrapping the model) printed each rank's KeyboardInterrupt traceback, then '[rank N] error: KeyboardInterrupt'."""
    from gptlab.train import launch

    two_ranks = parallel.DistInfo(rank=1, world_size=2, mode="ddp")
    monkeypatch.setattr(launch.parallel, "init_distributed", lambda cfg, device: two_ranks)

    def starting(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(launch, "Trainer", starting)
    monkeypatch.setattr(launch.os, "_exit", exit_now)
    with pytest.raises(SystemExit) as exited:
        launch.train(parse_run_args(tiny_args(data_dir, tmp_path / "run")), stream=io.StringIO())
    err = capsys.readouterr().err
    assert exited.value.code == 130 and "Traceback" not in err
    assert err.strip() == "[rank 1] aborted (Ctrl-C); files already written are as they were"


def test_a_run_that_failed_before_logging_a_step_does_not_block_its_command(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data error (an id past the vocabulary) or an out-of-memory at the first batch left config.json and a
    log with no step or evaluation in it: the fixed command was refused ('pass --overwrite=True'). A log with
    a step in it is still kept (test_a_new_run_never_silently_replaces_a_previous_one)."""

    def bad_data(self: Trainer) -> dict:
        raise DataError("train.bin holds token id 60000, past the dataset's vocabulary of 50257")

    args = tiny_args(data_dir, tmp_path, max_iters=2)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "evaluate", bad_data)
        with pytest.raises(DataError, match="past the dataset's vocabulary"):
            train(parse_run_args(args), stream=io.StringIO())
    assert (tmp_path / "log.jsonl").exists() and not (tmp_path / "ckpt.pt").exists()
    again = train(parse_run_args(args), stream=io.StringIO())  # the data prepared again: the same command
    assert again["status"] == "completed"
    with pytest.raises(ConfigError, match="holds a previous run"):  # now a run with a checkpoint: kept
        train(parse_run_args(args), stream=io.StringIO())


def test_a_set_bias_that_leaves_the_layernorms_out_is_said(data_dir: Path, tmp_path: Path) -> None:
    """nanoGPT's bias covers its LayerNorms too, gptlab's the Linear layers (the norm's is `normalization`):
    --bias=True on config/train_shakespeare_char.py (layernorm_nobias) trained a model nanoGPT's user did not mean,
    silently. Said when the norm was not named on the command line; a preset's own pairing is not."""
    from gptlab.train.init_from import bias_scope

    (tmp_path / "char.py").write_text("arch_preset = 'custom'\nnormalization = 'layernorm_nobias'\n")
    tiny = [a for a in tiny_args(data_dir, tmp_path / "run") if not a.startswith("--arch_preset")]
    base = [str(tmp_path / "char.py"), *tiny]
    trainer = Trainer(parse_run_args([*base, "--bias=True"]), stream=io.StringIO())
    trainer.logger.close()
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    said = [e["message"] for e in events if e.get("event") == "bias_scope"]
    assert said == [
        "bias=True covers the Linear layers; the LayerNorms are normalization='layernorm_nobias' (no bias), where "
        "nanoGPT's bias=True covers them too: add --normalization=layernorm for nanoGPT's model"
    ]
    for args, note in (
        ([*base, "--bias=True", "--normalization='layernorm_nobias'"], None),  # both typed: meant
        (base, None),  # bias left at the preset's
        ([*base, "--bias=False"], None),  # the same as the norm's
        ([*base, "--bias=False", "--normalization='rmsnorm'"], None),  # no LayerNorm
        ([*base[1:], "--arch_preset='gpt2'", "--bias=False"], "bias=False covers the Linear layers; the LayerNorms are "
         "normalization='layernorm' (with bias), where nanoGPT's bias=False covers them too: add "
         "--normalization=layernorm_nobias for nanoGPT's model"),  # a nanoGPT config file's bias on the gpt2 preset
    ):  # fmt: skip
        run = parse_run_args(args)
        assert bias_scope(run, run.arch) == note, args


def test_an_out_dir_moved_during_the_run_stops_it_in_one_line(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mv run run_moved` (or `rm -rf run`) mid-run: the run went on, wrote ckpt.pt and summary.json into a fresh
    folder of the old name without its log, said it completed, and a second run could take the name meanwhile."""
    from gptlab.errors import GptlabError

    run, moved = tmp_path / "run", tmp_path / "run_moved"
    save = Trainer.save

    def moved_first(self: Trainer) -> Path:
        if not moved.exists():
            run.rename(moved)
        return save(self)

    monkeypatch.setattr(Trainer, "save", moved_first)
    with pytest.raises(GptlabError, match=r"out_dir=.*run' was moved or deleted while the run wrote to it"):
        train(parse_run_args(tiny_args(data_dir, run, max_iters=8)), stream=io.StringIO())
    assert not (run / "ckpt.pt").exists() and not (run / "summary.json").exists()
    assert (moved / "log.jsonl").is_file()  # the log went with the folder


def test_a_split_file_rewritten_in_place_is_said_on_resume(data_dir: Path, tmp_path: Path) -> None:
    """train.bin shuffled in place between a run and its resume (same size, meta.json untouched): the resume
    trained on other batches without a word, the checkpoint's data record being meta.json's source hash."""
    import shutil

    import numpy as np

    local = tmp_path / "data"
    shutil.copytree(data_dir / "stdlib_char", local / "stdlib_char")
    out = tmp_path / "run"
    train(parse_run_args(tiny_args(local, out, max_iters=2)), stream=io.StringIO())
    launch = [f"--out_dir={str(out)!r}", f"--data_dir={str(local)!r}", "--init_from='resume'"]
    train(parse_run_args([*launch, "--max_iters=3"]), stream=io.StringIO())  # untouched: nothing said
    bins = local / "stdlib_char" / "train.bin"
    tokens = np.fromfile(bins, dtype=np.uint16)
    np.random.default_rng(0).permutation(tokens).tofile(bins)  # the same size and tokens, another order
    train(parse_run_args([*launch, "--max_iters=4"]), stream=io.StringIO())
    first, second = [r["changed"] for r in read_log(out) if r.get("event") == "resume"]
    assert "data" not in first and "data" in second and "best val loss" not in second  # the val split as it was
    was, now = second["data"]
    assert was.split("; ")[0] == now.split("; ")[0] and was != now  # meta.json's record alike, the bytes not
    # a checkpoint from before the sample (every one written until then): its data record alone is compared
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    del ckpt["data"]["bins"]
    torch.save(ckpt, out / "ckpt.pt")
    train(parse_run_args([*launch, "--max_iters=5"]), stream=io.StringIO())
    assert "data" not in [r["changed"] for r in read_log(out) if r.get("event") == "resume"][-1]


def test_a_checkpoint_copied_in_from_another_run_is_said(data_dir: Path, tmp_path: Path) -> None:
    """Another run's ckpt.pt copied over this folder's: the resume trained that run's model (its log jumping to
    another iteration and architecture), saying only that max_iters changed."""
    import shutil

    mine, other = tmp_path / "mine", tmp_path / "other"
    train(parse_run_args(tiny_args(data_dir, mine, max_iters=2)), stream=io.StringIO())
    train(parse_run_args(tiny_args(data_dir, other, max_iters=3, n_embd=64)), stream=io.StringIO())
    launch = [f"--out_dir={str(mine)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'"]
    train(parse_run_args([*launch, "--max_iters=3"]), stream=io.StringIO())  # its own: nothing said
    shutil.copy(other / "ckpt.pt", mine / "ckpt.pt")
    train(parse_run_args([*launch, "--max_iters=5"]), stream=io.StringIO())
    first, second = [r["changed"] for r in read_log(mine) if r.get("event") == "resume"]
    assert "checkpoint's run" not in first
    assert second["checkpoint's run"] == ["this folder's (config.json)", "another's, trained on: n_embd 32 -> 64"]
