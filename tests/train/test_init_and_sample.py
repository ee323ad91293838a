"""init_from a pretrained checkpoint, sampling through the root sample.py, and telemetry events in the loop."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.checkpoint import load_checkpoint
from gptlab.config.resolve import parse_run_args
from gptlab.train.launch import train
from gptlab.train.loop import Trainer
from tests.together import run_together
from tests.train.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[2]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["hf", "gptlab"])
def test_init_from_pretrained_directory_or_checkpoint(fmt: str, data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    src = tmp_path / "src"
    if fmt == "hf":
        ConfigurableGPT(get_debug_config("llama", vocab_size=128, block_size=64)).save_pretrained(src)
        (src / "tokenizer.json").write_text("{}")  # a model's own tokenizer, which gptlab does not read
    else:
        train(parse_run_args(tiny_args(data_dir, src, max_iters=4, block_size=64)), stream=io.StringIO())
        src = src / "ckpt.pt"
    out = tmp_path / "finetune"
    size = dict(n_head=4, n_embd=64) if fmt == "hf" else {}  # what the loaded weights have
    run = parse_run_args(tiny_args(data_dir, out, init_from=str(src), block_size=32, max_iters=4, **size))
    trainer = Trainer(run, stream=io.StringIO())
    assert trainer.arch.block_size == 32  # cropped to the requested shorter context, as nanoGPT does
    from gptlab.errors import ConfigError

    longer = parse_run_args(tiny_args(data_dir, tmp_path / "longer", init_from=str(src), block_size=128, **size))
    with pytest.raises(ConfigError, match=r"block_size=128 is longer .* \(block_size=64\): a fine-tune may shorten"):
        Trainer(longer, stream=io.StringIO())  # (it said "drop --block_size (only dropout ... may change)")
    trainer.run()
    startup = next(r for r in _records(out) if r["type"] == "startup")
    assert startup["training"]["init_from"] == str(src)
    # the fine-tune's source stays recorded over its resumes, whose own init_from is 'resume'
    again = parse_run_args(tiny_args(data_dir, out, init_from="resume", max_iters=6, **size))
    Trainer(again, stream=io.StringIO()).run()
    origin = str(src.resolve())
    assert load_checkpoint(out)["config"]["train"]["init_from"] == "resume"
    assert load_checkpoint(out)["weights_origin"] == origin
    assert json.loads((out / "config.json").read_text())["weights_origin"] == origin
    assert json.loads((out / "summary.json").read_text())["weights_origin"] == origin
    # the run's own tokenizer (its checkpoint's record): no warning; weights of vocabulary 128 and no record: said
    assert not [r for r in _records(out) if r.get("event") == "tokenizer_mismatch"]
    unknown = [r["message"] for r in _records(out) if r.get("event") == "tokenizer_unknown"]
    if fmt == "hf":
        assert len(unknown) == 1 and "record no tokenizer gptlab reads (a 128-token vocabulary" in unknown[0]
        said = "; its folder has a tokenizer of its own (tokenizer.json)): dataset 'stdlib_char''s 'char' ids"
        assert said in unknown[0]
    else:
        assert unknown == []


def test_a_fine_tune_or_evaluation_of_a_checkpoint_takes_its_dataset_unless_told(data_dir: Path, tmp_path: Path):
    """--init_from=RUN --eval_only=True with no --dataset evaluates on the data the run trained on (the default
    is nanoGPT's openwebtext, which such a char model cannot even read); nanoGPT's ckpt.pt names its own too."""
    from gptlab.model.convert import recorded_dataset, weights_record

    src = tmp_path / "src"
    train(parse_run_args(tiny_args(data_dir, src, max_iters=2)), stream=io.StringIO())
    launch = [f"--data_dir={str(data_dir)!r}", f"--out_dir={str(tmp_path / 'ev')!r}"]
    launch += ["--batch_size=4", "--eval_iters=4"]  # the run's evaluation batches
    for source in (src, src / "ckpt.pt"):
        run = parse_run_args([*launch, f"--init_from={str(source)!r}", "--eval_only=True", "--device='cpu'"])
        assert run.train.dataset == "stdlib_char"
    summary = train(run, stream=io.StringIO())
    assert summary["final_val_loss"] == pytest.approx(json.loads((src / "summary.json").read_text())["final_val_loss"])
    told = parse_run_args([*launch, f"--init_from={str(src)!r}", "--dataset='shakespeare_char'"])
    assert told.train.dataset == "shakespeare_char"
    from gptlab.config.resolve import resolve_run_config  # "From Python" (docs/training.md): the same rule

    assert resolve_run_config({"init_from": str(src), "eval_only": True}).train.dataset == "stdlib_char"
    nanogpt = tmp_path / "nanogpt" / "ckpt.pt"
    nanogpt.parent.mkdir()
    torch.save({"model_args": {"n_layer": 1}, "config": {"dataset": "shakespeare_char"}, "model": {}}, nanogpt)
    assert recorded_dataset(weights_record(nanogpt.parent) or {}) == "shakespeare_char"
    legacy = tmp_path / "legacy" / "ckpt.pt"  # a pre-1.6 torch file (no zip archive): not memory-mappable
    legacy.parent.mkdir()
    torch.save(torch.load(nanogpt, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert recorded_dataset(weights_record(legacy, strict=True) or {}) == "shakespeare_char"
    assert weights_record(tmp_path / "no such folder") is None
    # a truncated source is said to be one, not the nanoGPT default dataset its lost record left (not prepared)
    from gptlab.errors import CheckpointError

    cut = tmp_path / "cut" / "ckpt.pt"
    cut.parent.mkdir()
    cut.write_bytes((src / "ckpt.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"ckpt.pt' could not be read as a checkpoint \(a torch.save archive cut"):
        parse_run_args([*launch, f"--init_from={str(cut.parent)!r}", "--eval_only=True", "--device='cpu'"])


def test_run_directory_loads_and_conflicting_overrides_fail(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.errors import ConfigError

    src = tmp_path / "src"
    train(parse_run_args(tiny_args(data_dir, src, max_iters=2)), stream=io.StringIO())
    assert ConfigurableGPT.from_pretrained(src).config.n_layer == 2  # a run dir: config.json is the run's
    with pytest.raises(ConfigError, match=r"n_layer=3 conflicts with the weights loaded from .* \(n_layer=2\)"):
        Trainer(
            parse_run_args(tiny_args(data_dir, tmp_path / "b", init_from=str(src), n_layer=3)), stream=io.StringIO()
        )
    with pytest.raises(ConfigError, match="position_encoding='alibi' conflicts"):
        Trainer(
            parse_run_args(tiny_args(data_dir, src, init_from="resume", position_encoding="alibi")),
            stream=io.StringIO(),
        )


def test_init_from_missing_path_is_one_line(data_dir: Path, tmp_path: Path, offline_hub) -> None:
    from gptlab.errors import CheckpointError, ConfigError

    with pytest.raises(ConfigError, match=r"neither 'scratch', 'resume', an existing .*did you mean 'gpt2-medium'"):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, init_from="gpt2-medum")), stream=io.StringIO())
    # said when the command is read, before a dataset that is not there (the default's openwebtext) is named
    with pytest.raises(ConfigError, match=r"init_from='missing/ckpt.pt' is neither 'scratch'"):
        parse_run_args(tiny_args(data_dir, tmp_path, init_from="missing/ckpt.pt", dataset="not_prepared"))
    # a Hub name neither cached nor reachable: one line with the ways out
    with pytest.raises(CheckpointError, match=r"cannot get 'openai-community/gpt2-xl' from .*not in Hugging") as e:
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, init_from="gpt2-xl")), stream=io.StringIO())
    assert "\n" not in str(e.value)


def test_init_from_hub_name_as_nanogpt(data_dir: Path, tmp_path: Path, offline_hub) -> None:
    """nanoGPT's --init_from=gpt2 (and any org/name) reads Hugging Face's cache: here an offline one."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    offline_hub("openai-community/gpt2", hf.eval())
    out = tmp_path / "ft"
    run = parse_run_args(
        tiny_args(data_dir, out, init_from="gpt2", block_size=32, max_iters=2, n_head=2, n_embd=32, arch_preset="gpt2")
    )
    trainer = Trainer(run, stream=io.StringIO())
    x = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        ours = trainer.raw_model.eval()(x, x)[0]  # the Hub model's weights, before any step
        assert (ours - hf(x).logits).abs().max() <= 1e-4
    trainer.run()
    startup = next(r for r in _records(out) if r["type"] == "startup")  # after its opening events
    assert startup["training"]["init_from"] == "gpt2"
    assert ConfigurableGPT.from_pretrained("gpt2").config.n_embd == 32  # the API reads the same cache


def test_root_sample_script(data_dir: Path, tmp_path: Path) -> None:
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4)), stream=io.StringIO())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sample_py = [sys.executable, str(ROOT / "sample.py")]
    res, cp1252, bad = run_together(
        dict(args=[*sample_py, f"--out_dir={tmp_path}", "--start=class ", "--num_samples=2", "--max_new_tokens=12",
                   "--device=cpu"], env=env, text=True),
        # Windows writes a redirected stdout in its ANSI code page (cp1252), which has no 'Ł' (in this vocabulary)
        dict(args=[*sample_py, f"--out_dir={tmp_path}", "--start=Ł", "--num_samples=1", "--max_new_tokens=4",
                   "--device=cpu"], env={**env, "PYTHONIOENCODING": "cp1252"}),
        dict(args=[*sample_py, "--temprature=0.5"], env=env, text=True),
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("class ") >= 2 and res.stdout.count("---------------") == 2
    assert cp1252.returncode == 0 and cp1252.stdout.startswith(b"?"), cp1252.stderr[-500:]
    assert bad.returncode == 2 and "did you mean 'temperature'" in bad.stderr
    from gptlab.errors import ConfigError
    from gptlab.train.sample import parse_sample_args, sample

    unknown = parse_sample_args([f"--out_dir={str(tmp_path)!r}", "--start='日本'", "--device='cpu'"])
    for prompt in ("None", "True", "{}", "2024"):  # Python source the quick start's model knows: its text
        assert parse_sample_args([f"--start={prompt}"]).start == prompt
    with pytest.raises(ConfigError, match=r"the prompt \(--start / sample_prompt\) cannot be encoded: character '日'"):
        list(sample(unknown))


def test_a_default_prompt_the_vocabulary_cannot_encode_says_it_is_the_default() -> None:
    """A char vocabulary of one-line text has no '\\n', nanoGPT's default prompt: the user typed no prompt, so
    the refusal says which one it was."""
    from gptlab.data.tokenizers import CharTokenizer
    from gptlab.errors import ConfigError
    from gptlab.train.sample import encode_sample_prompt

    meta = CharTokenizer.from_documents(["one line of text"]).to_meta()
    with pytest.raises(ConfigError, match=r"cannot be encoded \(a newline, nanoGPT's default prompt: give one the"):
        encode_sample_prompt(meta, "\n")
    with pytest.raises(ConfigError, match=r"cannot be encoded: character 'z'"):  # a typed one: as it was
        encode_sample_prompt(meta, "z")


def test_a_sample_prompt_the_vocabulary_cannot_encode_is_refused_before_training(
    data_dir: Path, tmp_path: Path
) -> None:
    """sample_at_end's prompt is encoded at start: it failed after the training, with no summary written."""
    from gptlab.errors import ConfigError

    args = tiny_args(data_dir, tmp_path / "run", max_iters=2, sample_at_end=True, sample_prompt="日本")
    with pytest.raises(ConfigError, match=r"the prompt \(--start / sample_prompt\) cannot be encoded: character '日'"):
        train(parse_run_args(args), stream=io.StringIO())
    assert not (tmp_path / "run" / "ckpt.pt").exists() and not (tmp_path / "run" / "log.jsonl").exists()
    import shutil

    shutil.copytree(data_dir / "stdlib_char", tmp_path / "data" / "stdlib_char")  # a dataset without a tokenizer
    meta = json.loads((tmp_path / "data" / "stdlib_char" / "meta.json").read_text())
    del meta["tokenizer"]
    (tmp_path / "data" / "stdlib_char" / "meta.json").write_text(json.dumps(meta))
    args = tiny_args(tmp_path / "data", tmp_path / "run", max_iters=2, sample_at_end=True)
    with pytest.raises(ConfigError, match=r"^sample_at_end=True, but dataset 'stdlib_char' records no tokenizer"):
        train(parse_run_args(args), stream=io.StringIO())


def test_gradient_spike_is_an_event(data_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=8, gradient_log_interval=1)), stream=io.StringIO()
    )
    original, reads = trainer.telemetry.read_gradient_stats, []

    def spiky(pending: object) -> dict:  # the statistics are read in step order, iteration 6's the seventh
        stats = original(pending)
        reads.append(stats)
        if len(reads) == 7:
            stats.update(spike=True, norm_to_median=12.0)
        return stats

    trainer.telemetry.read_gradient_stats = spiky  # type: ignore[method-assign]
    trainer.run()
    spikes = [r for r in _records(tmp_path) if r.get("event") == "grad_spike"]
    assert len(spikes) == 1 and spikes[0]["iter"] == 6 and spikes[0]["ratio"] == 12.0


def test_bf16_autocast_on_cpu_trains(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptlab.train import sample as sampling

    generate, autocast = sampling.generate_text, []

    def recorded(*args, **kwargs):  # sample_at_end in the run's precision, as its evaluations (it was float32)
        autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return generate(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_text", recorded)
    args = tiny_args(data_dir, tmp_path, dtype="bfloat16", max_iters=16, sample_at_end=True, sample_tokens=4)
    summary = train(parse_run_args(args), stream=io.StringIO())
    assert summary["final_val_loss"] < 4.5 and torch.isfinite(torch.tensor(summary["final_val_loss"]))
    assert autocast == [True] and len(summary["sample"]) > 0


def test_resume_of_a_finished_run_changes_nothing_and_eval_only_evaluates(data_dir: Path, tmp_path: Path) -> None:
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4, eval_interval=4)), stream=io.StringIO())
    # a requeued job that already finished: its checkpoint, config.json and summary.json stay as they are
    kept = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "config.json", "summary.json")}
    summary = train(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4, eval_interval=4, init_from="resume")),
        stream=io.StringIO(),
    )
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    assert summary == json.loads(kept["summary.json"]) and summary["iterations"] == 5
    assert summary["best_val_loss"] is not None
    assert any(r.get("event") == "done" for r in _records(tmp_path))
    # a summary an earlier session left (the job died between its last checkpoint and its summary) is not it
    stale = {**json.loads(kept["summary.json"]), "status": "interrupted: SIGTERM", "iterations": 3}
    (tmp_path / "summary.json").write_text(json.dumps(stale))
    with (tmp_path / "log.jsonl").open("a") as log:  # and a later session that died before its first step
        log.write(json.dumps({"type": "startup", "time": 1e10, "training": {"start_iter": 5}}) + "\n")
    summary = train(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4, eval_interval=4, init_from="resume")),
        stream=io.StringIO(),
    )
    assert (summary["status"], summary["iterations"]) == ("completed", 5)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    # its final losses: the evaluation the killed session logged of these weights (they were null), and its
    # steps' figures, from the log (they were those of this session's no steps)
    done = json.loads(kept["summary.json"])
    steps = ("tokens_per_sec", "dt_ms", "final_loss", "iterations_logged", "start_iter", "peak_memory_gb")
    steps += ("measured_bytes_per_rank", "planned_bytes_per_rank")  # (they were missing)
    for key in ("final_val_loss", "final_train_loss", "best_val_loss", *steps):
        assert summary[key] == done[key] is not None, key
    assert summary["resumed"] is done["resumed"] is False  # that session's: it started the run
    (tmp_path / "summary.json").write_bytes(kept["summary.json"])
    # a max_iters lowered below the checkpoint says what is done: the checkpoint's iterations, not max_iters's
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2, init_from="resume")), stream=io.StringIO())
    said = [r["message"] for r in _records(tmp_path) if r.get("event") == "done"][-1]
    assert "iterations 0..4 are done, past max_iters=2" in said, said
    assert (tmp_path / "summary.json").read_bytes() == kept["summary.json"]
    # eval_only evaluates the checkpoint whatever its iteration (5 is not a multiple of 4) and leaves the run's
    # files as they are (nanoGPT's eval_only writes nothing): its records go to eval.jsonl
    files = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "log.jsonl", "config.json", "summary.json")}
    console = io.StringIO()
    summary = train(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=4, eval_interval=4, init_from="resume", eval_only=True)),
        stream=console,
    )
    report = console.getvalue()  # an evaluation announces no training it will not do
    assert "gptlab evaluation" in report and "at iter 5 (eval_only" in report
    assert "schedule:" not in report and "optimizer:" not in report
    assert "per evaluation batch" in report and "micro-batches" not in report  # its own batch, not a step's
    assert summary["final_val_loss"] is not None
    assert summary["best_val_loss"] == summary["final_val_loss"]  # the evaluation's own, not the run's
    assert {name: (tmp_path / name).read_bytes() for name in files} == files
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in evals if r["type"] == "eval"] == [summary["final_val_loss"]]
    # an evaluation whose max_iters is below the checkpoint's iteration plans no tokens (it said -3 steps' worth)
    args = tiny_args(data_dir, tmp_path, max_iters=2, eval_interval=4, init_from="resume", eval_only=True)
    train(parse_run_args(args), stream=io.StringIO())
    startups = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["training"]["total_tokens"] for r in startups if r["type"] == "startup"][-1] == 0


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("config", "x", r"its config is 'x', not a mapping"),
        ("arch", [1], r"its arch is list, not a mapping"),
        ("tokenizer", 3.5, r"its tokenizer is 3.5, not a mapping or None"),
        ("iter_num", None, r"its iter_num is None, not an integer"),
        ("tokens_seen", -3, r"its tokens_seen is -3, not a non-negative integer"),
        ("best_val_loss", "x", r"its best_val_loss is 'x', not a number"),
        ("rng", {"torch": [1, 2]}, r"its rng\['torch'\] is list, not a tensor"),
        ("gradient_history", {"history": ["x"]}, r"its gradient_history\['history'\] holds values that are not"),
        ("optimizer", {"state": {}, "param_groups": "x"}, r"its optimizer\['param_groups'\] is 'x', not a list"),
        ("scaler", "x", r"its scaler is 'x', not a mapping or None"),
    ],
)
def test_a_checkpoint_field_of_the_wrong_type_is_one_line_on_resume_and_sample(
    field: str, value: object, said: str, data_dir: Path, tmp_path: Path, run_of_4: Path
) -> None:
    """weights_only loads any plain data: a damaged or hand-edited record's field was a traceback where it was
    first used (int() of the iteration, .get() of the config), on resume and in sample."""
    import shutil

    from gptlab.errors import CheckpointError
    from gptlab.train.sample import SampleConfig, sample

    run = tmp_path / "run"
    shutil.copytree(run_of_4, run)
    ckpt = dict(torch.load(run / "ckpt.pt", weights_only=True))
    torch.save({**ckpt, field: value}, run / "ckpt.pt")
    message = rf"^'{re.escape(str(run / 'ckpt.pt'))}' is a damaged gptlab checkpoint: {said}"
    with pytest.raises(CheckpointError, match=message):
        train(parse_run_args(tiny_args(data_dir, run, max_iters=6, init_from="resume")), stream=io.StringIO())
    with pytest.raises(CheckpointError, match=message):
        sample(SampleConfig(out_dir=str(run), max_new_tokens=2, num_samples=1, device="cpu"))


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"optimizer": None}, r"it has no optimizer$"),
        ({"best_val_loss": None}, r"it has no best_val_loss$"),
        ({"config": None}, r"it has no config\['train'\] record"),  # resumed on the defaults: another run
        ({"rng": {"torch": torch.zeros(7, dtype=torch.uint8)}}, r"its rng state is no generator's"),
    ],
)
def test_a_checkpoint_missing_what_a_resume_needs_is_one_line(
    edit: dict, said: str, data_dir: Path, tmp_path: Path, run_of_4: Path
) -> None:
    """A field removed (None: deleted) or a generator state of the wrong size was a KeyError or RuntimeError
    traceback mid-resume; without its settings it resumed on the defaults ('dataset openwebtext is not prepared')."""
    import shutil

    from gptlab.errors import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(run_of_4, run)
    ckpt = dict(torch.load(run / "ckpt.pt", weights_only=True))
    ckpt.update({k: v for k, v in edit.items() if v is not None})
    torch.save({k: v for k, v in ckpt.items() if edit.get(k, 0) is not None}, run / "ckpt.pt")
    message = rf"^'{re.escape(str(run / 'ckpt.pt'))}' is a damaged gptlab checkpoint: {said}"
    with pytest.raises(CheckpointError, match=message):
        train(parse_run_args(tiny_args(data_dir, run, max_iters=6, init_from="resume")), stream=io.StringIO())


def test_sampling_non_finite_weights_is_one_line(tmp_path: Path, run_of_4: Path, monkeypatch) -> None:
    """A diverged run's NaN weights (or a half-precision overflow of finite ones) reached torch.multinomial:
    "probability tensor contains either inf, nan or element < 0", a traceback from inside generation."""
    import shutil

    from gptlab.errors import CheckpointError, GptlabError
    from gptlab.train.sample import SampleConfig, sample

    run = tmp_path / "run"
    shutil.copytree(run_of_4, run)
    ckpt = dict(torch.load(run / "ckpt.pt", weights_only=True))
    model = dict(ckpt["model"])
    model["blocks.1.ffn.w_out.weight"] = torch.full_like(model["blocks.1.ffn.w_out.weight"], float("nan"))
    torch.save({**ckpt, "model": model}, run / "ckpt.pt")
    settings = dict(out_dir=str(run), max_new_tokens=2, num_samples=1, device="cpu")
    with pytest.raises(CheckpointError, match=r"are not finite \(blocks\.1\.ffn\.w_out\.weight holds NaN or inf\)"):
        sample(SampleConfig(**settings))

    def overflowed(*args, **kwargs):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr(torch, "multinomial", overflowed)
    with pytest.raises(GptlabError, match=r"probabilities are not finite .* under dtype=bfloat16: its logits overflow"):
        sample(SampleConfig(**{**settings, "out_dir": str(run_of_4), "dtype": "bfloat16"}))


@pytest.fixture(scope="module")
def run_of_4(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run_of_4")
    train(parse_run_args(tiny_args(data_dir, out, max_iters=4, eval_interval=4)), stream=io.StringIO())
    return out


def test_a_requeued_run_that_kept_its_best_checkpoint_is_done(data_dir: Path, tmp_path: Path) -> None:
    """always_save_checkpoint=False: a completed run whose final evaluation did not improve keeps an earlier
    checkpoint; a requeued job trained its last iterations again from there, rewrote its summary and logged
    them twice. It is done, as a run whose checkpoint is its last; a raised max_iters trains on from it."""
    common = dict(eval_interval=3, warmup_iters=0, learning_rate=0.1, min_lr=0.1, always_save_checkpoint=False)
    done = train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=6, **common)), stream=io.StringIO())
    assert (done["checkpoint_iter"], done["iterations"]) == (6, 7)  # the final evaluation, at 7, was worse
    kept = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "config.json", "summary.json")}
    iters = len(_records(tmp_path))
    summary = train(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=6, init_from="resume", **common)), stream=io.StringIO()
    )
    assert summary == done and {name: (tmp_path / name).read_bytes() for name in kept} == kept
    new = _records(tmp_path)[iters:]
    assert [r.get("event") for r in new] == ["resume", "done"]
    assert "iteration 6's, the best evaluation" in new[1]["message"]
    more = train(
        parse_run_args(tiny_args(data_dir, tmp_path, max_iters=8, init_from="resume", **common)), stream=io.StringIO()
    )
    assert (more["start_iter"], more["iterations"]) == (6, 9)


def test_a_new_run_never_silently_replaces_a_previous_one(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.errors import ConfigError

    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2)), stream=io.StringIO())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"holds a previous run .*--init_from=resume.*--overwrite=True"):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2)), stream=io.StringIO())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2, overwrite=True)), stream=io.StringIO())
    # a run stopped before its first checkpoint (NaN, Ctrl-C, OOM at step 1): no resume to suggest
    (tmp_path / "ckpt.pt").unlink()
    with pytest.raises(ConfigError, match=r"holds the log of a run that saved no checkpoint: pick another --out_dir"):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2)), stream=io.StringIO())


def test_kept_checkpoints_count_as_a_previous_run(data_dir: Path, tmp_path: Path) -> None:
    """A run directory holding only --keep_checkpoints' copies (ckpt.pt deleted or rolled back by hand): a new
    run was not refused and its first save deleted them; a resume said the folder held no checkpoint. Both
    now name them and the command that makes the newest the latest."""
    from gptlab.errors import CheckpointError, ConfigError

    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=16, keep_checkpoints=2)), stream=io.StringIO())
    (tmp_path / "ckpt.pt").unlink()
    kept = sorted(p.name for p in tmp_path.glob("ckpt-*.pt"))
    assert len(kept) == 2
    with pytest.raises(
        ConfigError, match=rf"holds a previous run's kept checkpoints {kept[0]}, {kept[1]} but no latest"
    ):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2)), stream=io.StringIO())
    hint = f"ln -f {tmp_path / kept[1]} {tmp_path / 'ckpt.pt'}"
    with pytest.raises(CheckpointError, match=r"holds no checkpoint \(kept checkpoints .*" + re.escape(hint)):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, init_from="resume")), stream=io.StringIO())
    with pytest.raises(ConfigError, match=r"would evaluate new random weights, but .* holds kept checkpoints"):
        Trainer(parse_run_args(tiny_args(data_dir, tmp_path, eval_only=True)), stream=io.StringIO())
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == kept
    os.link(tmp_path / kept[1], tmp_path / "ckpt.pt")  # the hint, followed
    resumed = Trainer(parse_run_args(tiny_args(data_dir, tmp_path, init_from="resume")), stream=io.StringIO())
    assert resumed.iter_num == int(kept[1][5:12])


def test_fp16_skipped_steps_are_reported(data_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(parse_run_args(tiny_args(data_dir, tmp_path, dtype="float16", max_iters=4)), stream=io.StringIO())
    original = trainer.forward_backward

    def forward_backward(micro: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = original(micro, x, y)
        if trainer.iter_num == 2:  # an overflow in the gradients, the loss itself finite
            next(trainer.raw_model.parameters()).grad.fill_(float("inf"))
        return loss

    trainer.forward_backward = forward_backward  # type: ignore[method-assign]
    trainer.run()
    events = [r for r in _records(tmp_path) if r.get("event") == "loss_scale"]
    assert len(events) == 1 and events[0]["iter"] == 2


def test_logged_hfu_counts_activation_checkpointing(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.telemetry.flops import compute_flops

    run = parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2, peak_tflops=1.0, activation_checkpointing=True))
    train(run, stream=io.StringIO())
    from gptlab import ModelArchitectureConfig

    arch = ModelArchitectureConfig.from_dict(json.loads((tmp_path / "config.json").read_text())["arch"])
    fl = compute_flops(arch, activation_checkpointing=True)  # the trained architecture (vocabulary padded)
    for r in (r for r in _records(tmp_path) if r["type"] == "iter"):
        assert r["hfu"] / r["mfu"] == pytest.approx(fl.hfu_flops_per_token / fl.flops_per_token)
        assert r["hfu"] / r["mfu"] > 1.2  # the recomputed forward is counted


def _shipped_config(name: str, data_dir: Path, out: Path, *extra: str) -> list[str]:
    """A config/ file's command line, made small: the test data, the CPU, short blocks, 2 eval batches."""
    small = ["--dataset='stdlib_char'", f"--data_dir={str(data_dir)!r}", f"--out_dir={str(out)!r}", "--device='cpu'"]
    return [str(ROOT / "config" / f"{name}.py"), *small, "--compile=False", "--block_size=32", "--eval_iters=2", *extra]


def test_nanogpt_finetune_config_runs(data_dir: Path, tmp_path: Path, offline_hub) -> None:
    """config/finetune_shakespeare.py as nanoGPT users run it (GPT-2 XL from the Hub, a constant LR,
    checkpoints only on improvement), here with a tiny model in the Hub cache and the test data."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64))
    offline_hub("openai-community/gpt2-xl", hf)
    extra = ["--max_iters=2", "--eval_interval=1", "--gradient_accumulation_steps=2"]
    run = parse_run_args(_shipped_config("finetune_shakespeare", data_dir, tmp_path / "ft", *extra))
    assert run.train.init_from == "gpt2-xl" and not run.train.decay_lr and run.train.learning_rate == 3e-5
    summary = train(run, stream=io.StringIO())
    assert summary["iterations"] == 3 and (tmp_path / "ft" / "ckpt.pt").exists()
    lrs = {r["lr"] for r in _records(tmp_path / "ft") if r["type"] == "iter"}
    assert lrs == {3e-5}
    # GPT-2's weights on a char dataset (the test's, not Shakespeare's BPE): said before the first step
    (mismatch,) = [r for r in _records(tmp_path / "ft") if r.get("event") == "tokenizer_mismatch"]
    assert (mismatch["weights_tokenizer"], mismatch["dataset_tokenizer"]) == ("gpt2", "char")
    assert "were trained on 'gpt2' tokens, but dataset 'stdlib_char' is 'char' tokens" in mismatch["message"]


def test_nanogpt_eval_config_evaluates_hub_weights(data_dir: Path, tmp_path: Path, offline_hub) -> None:
    """config/eval_gpt2.py: the Hub model's validation loss, no step taken, nothing trained."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64))
    offline_hub("openai-community/gpt2", hf)
    run = parse_run_args(_shipped_config("eval_gpt2", data_dir, tmp_path / "eval"))
    assert run.train.eval_only and run.train.init_from == "gpt2"
    summary = train(run, stream=io.StringIO())
    assert summary["final_val_loss"] > 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "eval.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["type"] == "iter"] and [r for r in records if r["type"] == "eval"]


OWN_COMPONENTS = """
import torch
import torch.nn.functional as F
from torch import nn
from gptlab.model import ATTENTION_BACKEND_REGISTRY, NORM_REGISTRY


@NORM_REGISTRY.register("scalenorm_t")
class ScaleNorm(nn.Module):
    def __init__(self, ndim, eps=1e-5):
        super().__init__()
        self.g, self.eps = nn.Parameter(torch.tensor(ndim**0.5)), eps

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


@ATTENTION_BACKEND_REGISTRY.register("mine_t")
def mine(q, k, v, *, bias, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


init_from = "scratch"
normalization = "scalenorm_t"
attention_backend = "mine_t"
"""


def test_components_registered_in_a_config_file_train_and_sample(data_dir: Path, tmp_path: Path) -> None:
    """docs/architecture.md's recipe: the file registers a norm and an attention backend, names them,
    and the run trains (memory plan included), resumes and samples with the file passed again."""
    from gptlab.errors import ConfigError
    from gptlab.model import ATTENTION_BACKEND_REGISTRY, NORM_REGISTRY
    from gptlab.train.sample import parse_sample_args, sample

    config = tmp_path / "own.py"
    config.write_text(OWN_COMPONENTS)
    out = tmp_path / "run"
    try:
        train(parse_run_args([str(config), *tiny_args(data_dir, out, max_iters=4)]), stream=io.StringIO())
        startup = _records(out)[0]
        assert "assumed to save what 'manual' saves" in startup["expectations"]["memory_plan"]
        resumed = parse_run_args([str(config), "--init_from='resume'", f"--out_dir={str(out)!r}", "--max_iters=6"])
        train(resumed, stream=io.StringIO())
        settings = parse_sample_args([str(config), f"--out_dir={str(out)!r}", "--num_samples=1", "--device='cpu'"])
        assert settings.init_from == "resume"  # a training file's 'scratch' is not the sample's
        assert len(list(sample(settings))) == 1
        # an evaluation (or a fine-tune) of the run keeps its registered backend unless one is set now (the
        # default 'sdpa' silently ran another model)
        evaluation = tiny_args(data_dir, tmp_path / "eval", init_from=str(out), eval_only=True, plugins=str(config))
        train(parse_run_args([a for a in evaluation if "arch_preset" not in a]), stream=io.StringIO())
        evaluated = json.loads((tmp_path / "eval" / "eval.jsonl").read_text().splitlines()[0])
        assert evaluated["architecture"]["config"]["attention_backend"] == "mine_t"
    finally:
        del NORM_REGISTRY["scalenorm_t"], ATTENTION_BACKEND_REGISTRY["mine_t"]
    own = str(config.resolve())  # a config file that registers is its own plugin: the run records it
    hint = f"this run was trained with plugins='{own}': pass --plugins={own}"
    settings = [f"--out_dir={str(out)!r}", "--device='cpu'", "--num_samples=1"]
    with pytest.raises(ConfigError, match=re.escape(hint)):
        list(sample(parse_sample_args(settings)))
    import gptlab.plugins

    gptlab.plugins._imported_files.clear()  # this process imported the file once; a new one would not have
    try:  # and the hint works
        assert len(list(sample(parse_sample_args([*settings, f"--plugins={own!r}"])))) == 1
    finally:
        NORM_REGISTRY.pop("scalenorm_t", None), ATTENTION_BACKEND_REGISTRY.pop("mine_t", None)


def test_config_file_architecture_yields_to_the_weights(data_dir: Path, tmp_path: Path, offline_hub) -> None:
    """nanoGPT's flow: trained with the README's smaller --n_layer/--n_embd/--block_size on top of
    config/train_shakespeare_char.py, resumed with the file alone; and config/train_gpt2.py fine-tuning
    GPT-2's weights. The file's architecture keys yield to the weights (said in an event); typed ones
    that contradict them are still refused."""
    from gptlab.errors import ConfigError

    out = tmp_path / "char"
    small = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--dropout=0.0", "--max_iters=2", "--eval_interval=2"]
    train(parse_run_args(_shipped_config("train_shakespeare_char", data_dir, out, *small)), stream=io.StringIO())
    resume = _shipped_config("train_shakespeare_char", data_dir, out, "--init_from='resume'", "--max_iters=4")
    resume.remove("--block_size=32")  # the file's block_size (256) is not the checkpoint's (32)
    run = parse_run_args(resume)
    train(run, stream=io.StringIO())
    (event,) = [r for r in _records(out) if r.get("event") == "weights_fix_architecture"]
    assert "block_size: 256 -> 32" in event["message"] and "n_layer: 6 -> 2" in event["message"]
    assert load_checkpoint(out)["arch"]["n_layer"] == 2 and load_checkpoint(out)["iter_num"] == 5
    with pytest.raises(ConfigError, match=r"n_layer=6 conflicts with the weights .*drop --n_layer"):
        train(parse_run_args([*resume, "--n_layer=6"]))
    with pytest.raises(ConfigError, match="n_layer='two' has type str, expected int"):  # a type error first
        parse_run_args([*resume[:-2], f"--init_from={str(out)!r}", "--n_layer='two'"])
    # a typed key equal to the checkpoint's is fine, though the file's n_head=6 does not divide it, and so
    # is one equal in effect (n_kv_head=2 for a checkpoint saved with None: as many K/V heads as heads)
    resume_longer = [a for a in resume if a != "--max_iters=4"]
    train(parse_run_args([*resume_longer, "--n_embd=32", "--n_kv_head=2", "--max_iters=6"]), stream=io.StringIO())
    resumes = [r for r in _records(out) if r.get("event") == "resume"]
    assert resumes[0]["changed"]["dropout"] == [0.0, 0.2]  # the first resume: the file's dropout applies, said
    # a fine-tune from that run, with the file (arch_preset 'custom' and 6 heads) and a typed matching key
    ft_char = _shipped_config("train_shakespeare_char", data_dir, tmp_path / "ft_char", f"--init_from={str(out)!r}")
    ft_char.remove("--block_size=32")
    ft_llama = [*ft_char, "--n_embd=32", "--max_iters=1"]
    (tmp_path / "llama.py").write_text('arch_preset = "llama"\n')  # a file naming another family
    ft_llama.insert(1, str(tmp_path / "llama.py"))
    train(parse_run_args(ft_llama), stream=io.StringIO())
    saved = json.loads((tmp_path / "ft_char" / "config.json").read_text())
    assert saved["train"]["arch_preset"] == "custom"  # the weights' family (nanoGPT's model), not the file's llama
    # a team run fine-tuned stays 'team' (the llama family's other name), from its own record
    team = tmp_path / "team"
    train(parse_run_args(tiny_args(data_dir, team, arch_preset="team", max_iters=1)), stream=io.StringIO())
    ft_team = tiny_args(data_dir, tmp_path / "ft_team", init_from=str(team), max_iters=1)
    train(parse_run_args([a for a in ft_team if not a.startswith("--arch_preset=")]), stream=io.StringIO())
    assert json.loads((tmp_path / "ft_team" / "config.json").read_text())["train"]["arch_preset"] == "team"
    (event,) = [r for r in _records(tmp_path / "ft_char") if r.get("event") == "weights_fix_architecture"]
    assert "arch_preset: 'llama' -> 'custom'" in event["message"]

    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64))
    offline_hub("openai-community/gpt2", hf)
    ft = _shipped_config("train_gpt2", data_dir, tmp_path / "ft", "--init_from='gpt2'", "--max_iters=1")
    ft += ["--wandb_log=False", "--gradient_accumulation_steps=1", "--batch_size=2"]
    train(parse_run_args(ft), stream=io.StringIO())  # the file's custom / layernorm_nobias yield to GPT-2's
    (event,) = [r for r in _records(tmp_path / "ft") if r.get("event") == "weights_fix_architecture"]
    assert "normalization: 'layernorm_nobias' -> 'layernorm'" in event["message"] and "'gpt2'" in event["message"]


def _nanogpt_char_run(directory: Path, vocab: str) -> ConfigurableGPT:
    """What nanoGPT's train.py leaves for shakespeare_char: out_dir/ckpt.pt (Linear weights, model_args,
    its config with the dataset's name) and data/DATASET/meta.pkl; returns the same model in gptlab."""
    import pickle

    from gptlab.model.loading import rename_keys, reversed_names
    from gptlab.model.nanogpt import NANOGPT_NAMES

    model = ConfigurableGPT(
        get_debug_config("gpt2", vocab_size=len(vocab), gelu_approximate="none", block_size=32, dropout=0.0)
    ).eval()
    c = model.config
    state = rename_keys(model.state_dict(), reversed_names(NANOGPT_NAMES))  # nanoGPT's names; nn.Linear, no transpose
    args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=32, bias=True, vocab_size=len(vocab))
    (directory / "out-shakespeare-char").mkdir(parents=True)
    torch.save(
        {"model": state, "model_args": args, "iter_num": 5, "config": {"dataset": "shakespeare_char"}},
        directory / "out-shakespeare-char" / "ckpt.pt",
    )
    (directory / "data" / "shakespeare_char").mkdir(parents=True)
    meta = {"vocab_size": len(vocab), "itos": dict(enumerate(vocab)), "stoi": {ch: i for i, ch in enumerate(vocab)}}
    (directory / "data" / "shakespeare_char" / "meta.pkl").write_bytes(pickle.dumps(meta))
    return model


def test_nanogpt_char_run_samples_as_nanogpt_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python sample.py --out_dir=out-shakespeare-char`` run from nanoGPT's directory decodes with its
    data/shakespeare_char/meta.pkl (read without running code), and gives the model's own greedy text."""
    import pickle

    from gptlab.data.tokenizers import CharTokenizer
    from gptlab.errors import CheckpointError, ConfigError, DataError
    from gptlab.train.sample import parse_sample_args, sample

    vocab = "\n !,.:;?abcdefghijklmnopqrstuvwxyz"
    model = _nanogpt_char_run(tmp_path, vocab)
    monkeypatch.chdir(tmp_path)
    args = ["--out_dir=out-shakespeare-char", "--start=to be", "--max_new_tokens=12", "--temperature=0.0"]
    (text,) = sample(parse_sample_args([*args, "--num_samples=1", "--device=cpu"]))
    tok = CharTokenizer(vocab)
    expected = model.generate(torch.tensor([tok.encode("to be")]), 12, temperature=0.0)
    assert text == tok.decode(expected[0].tolist()) and text.startswith("to be") and len(text) == 17
    (via_path,) = sample(parse_sample_args([*args, "--num_samples=1", "--init_from=out-shakespeare-char/ckpt.pt"]))
    assert via_path == text
    # nanoGPT's FILE: prompt, saved by a Windows editor (a byte-order mark, which prepare strips from text too)
    (tmp_path / "prompt.txt").write_bytes(b"\xef\xbb\xbfto be")
    (via_file,) = sample(parse_sample_args([args[0], "--start=FILE:prompt.txt", *args[2:], "--num_samples=1"]))
    assert via_file == text
    # several samples: nanoGPT seeds once (torch.manual_seed(seed)) and draws them one after another
    drawn = sample(parse_sample_args([*args[:3], "--temperature=1.0", "--num_samples=3", "--seed=5", "--top_k=None"]))
    torch.manual_seed(5)
    x = torch.tensor([tok.encode("to be")])
    with torch.no_grad():
        reference = [tok.decode(model.generate(x, 12, temperature=1.0, top_k=None)[0].tolist()) for _ in range(3)]
    assert drawn == reference and len(set(drawn)) > 1
    # nanoGPT's other sample.py keys: dtype (autocast) and compile (the model's forward, in place, so that
    # generate's calls run compiled; nanoGPT's torch.compile(model) wrapper never reached them)
    (low,) = sample(parse_sample_args([*args, "--num_samples=1", "--dtype=bfloat16"]))
    assert low.startswith("to be") and set(low) <= set(vocab)
    with pytest.raises(ConfigError, match="dtype='float64'"):
        parse_sample_args(["--dtype=float64"])
    with pytest.raises(ConfigError, match=r"init_from='resum' is neither 'resume', an .* \(did you mean 'resume'\?\)"):
        sample(parse_sample_args([*args, "--init_from=resum"]))
    # one generator seeded once draws every sample: any 64-bit seed, whatever num_samples
    assert parse_sample_args(["--seed=18446744073709551615", "--num_samples=3"]).seed == 2**64 - 1
    with pytest.raises(ConfigError, match=r"seed=18446744073709551616 is invalid: expected an integer in \[0, 2"):
        parse_sample_args(["--seed=18446744073709551616"])
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kw: compiled.append((type(module).__name__, kw)))
    monkeypatch.setattr(torch.compiler, "set_stance", lambda *a: pytest.fail("a compiled sample must not run eagerly"))
    assert sample(parse_sample_args([*args, "--num_samples=1", "--compile=True"])) == [text]
    assert compiled == [("ConfigurableGPT", {"dynamic": True})]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    # flipped bytes in the nanoGPT checkpoint's tensors: refused before its weights are used
    ckpt_file = tmp_path / "out-shakespeare-char" / "ckpt.pt"
    blob = ckpt_file.read_bytes()
    at = 2 * len(blob) // 3
    ckpt_file.write_bytes(blob[:at] + bytes(b ^ 0xFF for b in blob[at : at + 32]) + blob[at + 32 :])
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        sample(parse_sample_args(args))
    ckpt_file.write_bytes(blob)
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").write_bytes(pickle.dumps({"itos": Evil()}))
    with pytest.raises(DataError, match=r"is not nanoGPT's char meta.pkl \(it names (posix|os)\.system"):
        sample(parse_sample_args(args))
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").unlink()
    with pytest.raises(CheckpointError, match=r"34-token vocabulary and data/shakespeare_char/meta.pkl .* not there"):
        sample(parse_sample_args(args))


PLUGIN_NORM = """
import torch
from torch import nn
from gptlab.model import NORM_REGISTRY


@NORM_REGISTRY.register("gain_norm_e2e")
class GainNorm(nn.Module):
    def __init__(self, ndim, eps=1e-5):
        super().__init__()
        self.g, self.eps = nn.Parameter(torch.ones(ndim)), eps

    def forward(self, x):
        return self.g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
"""


def _gptlab_command(*args: str, cwd: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return dict(args=[sys.executable, "-m", "gptlab", *args], cwd=cwd, env=env, text=True)


def _gptlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(**_gptlab_command(*args, cwd=cwd), capture_output=True)


def test_a_run_with_its_own_norm_is_read_again_with_plugins(tmp_path: Path, data_dir: Path) -> None:
    """Train with a config file that imports a module beside it; then every command that reads the run
    needs --plugins, says so with the run's own value, and works with it."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "my_norms.py").write_text(textwrap.dedent(PLUGIN_NORM))
    (work / "cfg.py").write_text('import my_norms  # beside the config file\nnormalization = "gain_norm_e2e"\n')
    out = tmp_path / "run"
    args = tiny_args(data_dir, out, max_iters=2, lr_decay_iters=2, warmup_iters=1, eval_interval=2, eval_iters=1)
    trained = _gptlab("train", str(work / "cfg.py"), *args, "--plugins=my_norms", cwd=work)
    assert trained.returncode == 0, trained.stderr
    # found from the launch's directory: recorded as its file; and the config file, which registers (through it)
    recorded = f"{(work / 'my_norms.py').resolve()}, {(work / 'cfg.py').resolve()}"
    assert json.loads((out / "config.json").read_text())["train"]["plugins"] == recorded

    from gptlab.errors import ConfigError

    hint = f"this run was trained with plugins='{recorded}': pass --plugins='{recorded}'"
    with pytest.raises(ConfigError, match=re.escape(hint)):
        parse_run_args(["--init_from='resume'", f"--out_dir={str(out)!r}"])  # gain_norm_e2e unknown here
    with pytest.raises(ConfigError) as typo:  # a value typed now that is no choice is the user's, not the plugin's
        parse_run_args(["--init_from='resume'", f"--out_dir={str(out)!r}", "--device='cpux'"])
    assert "did you mean 'cpu'" in str(typo.value) and "plugins" not in str(typo.value)
    refused, described, sampled = run_together(
        _gptlab_command("arch", str(out), cwd=tmp_path),
        _gptlab_command("arch", str(out), f"--plugins={recorded}", cwd=tmp_path),  # the hint, from elsewhere
        _gptlab_command("sample", f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=4",
                        f"--plugins={work / 'cfg.py'}", cwd=tmp_path),
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(hint)
    assert described.returncode == 0 and "gain_norm_e2e" in described.stdout, described.stderr
    assert sampled.returncode == 0, sampled.stderr


def test_gpt2_prompts_take_the_end_of_text_token_and_an_empty_one_starts_after_it() -> None:
    """nanoGPT's sample.py encodes with allowed_special={'<|endoftext|>'}: the usual way to ask for an unconditional
    sample of a model trained on EOT-separated documents; an empty prompt starts there too (not from id 0, '!'),
    and that seed token is not part of the text."""
    import torch

    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.data.tokenizers import GPT2Tokenizer
    from gptlab.train.sample import generate_text

    model = ConfigurableGPT(get_debug_config("gpt2", vocab_size=50304))
    seen = []
    generate = model.generate
    model.generate = lambda x, *a, **k: (seen.append(x[0].tolist()), generate(x, *a, **k))[1]
    meta = GPT2Tokenizer().to_meta()
    cpu = torch.device("cpu")
    text = generate_text(model, meta, "<|endoftext|>Hi", 3, device=cpu)
    assert seen[-1] == [50256, 17250] and text.startswith("<|endoftext|>Hi")
    text = generate_text(model, meta, "", 3, device=cpu)
    assert seen[-1] == [50256] and not text.startswith("<|endoftext|>")
    assert GPT2Tokenizer().encode("<|endoftext|>") != [50256]  # data preparation: plain text, as nanoGPT's


def test_each_sample_is_handed_over_as_it_is_drawn(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nanoGPT's sample.py prints each sample when drawn: a long sampling shows progress, and a Ctrl-C keeps what
    was printed (the command printed all of them at the end)."""
    import gptlab.train.sample as sampling

    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2)), stream=io.StringIO())
    events: list[str] = []
    drawn = sampling.generate_text
    monkeypatch.setattr(sampling, "generate_text", lambda *a, **k: events.append("drawn") or drawn(*a, **k))
    settings = sampling.parse_sample_args([f"--out_dir={str(tmp_path)!r}", "--num_samples=3", "--device='cpu'"])
    texts = sampling.sample(settings, on_sample=lambda text: events.append(text))
    assert events == ["drawn", texts[0], "drawn", texts[1], "drawn", texts[2]]
    assert texts == sampling.sample(settings)  # the same seeded draws either way


def test_sampling_a_hugging_face_model_of_another_vocabulary_says_what_it_is(tmp_path: Path) -> None:
    """A LLaMA directory of 32000 tokens: the error names the directory and its vocabulary (it blamed "the
    checkpoint" for recording no tokenizer)."""
    pytest.importorskip("safetensors")
    from gptlab.errors import CheckpointError
    from gptlab.train.sample import parse_sample_args, sample

    ConfigurableGPT(get_debug_config("llama", vocab_size=320)).save_pretrained(tmp_path / "llama")
    settings = parse_sample_args([f"--init_from={str(tmp_path / 'llama')!r}", "--device='cpu'", "--num_samples=1"])
    with pytest.raises(CheckpointError, match=r"llama' has a 320-token vocabulary, not GPT-2's \(50257\)"):
        sample(settings)


def _gpt2_tokenizer_json(shuffled: bool) -> dict:
    """GPT-2's BPE as a tokenizer.json (merges as pairs, as tokenizers >= 0.20 writes them); ``shuffled``: the
    same 50257 strings and merges under other ids, as a GPT-2 retrained for another language carries."""
    import random

    from gptlab.data.tokenizers import _gpt2_data_dir

    data = _gpt2_data_dir()
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [m.split(" ") for m in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if m]
    if shuffled:
        tokens = sorted(vocab, key=vocab.get)
        others = tokens[:-1]
        random.Random(0).shuffle(others)
        vocab = {t: i for i, t in enumerate([*others, tokens[-1]])}
    return {"model": {"type": "BPE", "vocab": vocab, "merges": merges}}


def test_a_gpt2_sized_model_with_a_tokenizer_of_its_own_is_not_sampled_with_gpt2_bpe(tmp_path: Path) -> None:
    """A Hugging Face GPT-2 retrained for another language keeps GPT-2's 50257 tokens with a BPE of its own
    (its folder's tokenizer.json): it was sampled with OpenAI's BPE, other text to it, without a word. Its own
    tokenizer is refused by name; GPT-2's own files beside a model (as a pair list or as strings) are GPT-2's."""
    pytest.importorskip("safetensors")
    from gptlab.data.tokenizers import hf_folder_tokenizer, save_hf_tokenizer
    from gptlab.errors import CheckpointError
    from gptlab.train.init_from import _unknown_tokenizer, _weights_tokenizer
    from gptlab.train.sample import gpt2_if_its_vocabulary, parse_sample_args, sample

    folder = tmp_path / "gpt2_other_language"
    ConfigurableGPT(get_debug_config("gpt2", vocab_size=50257, n_layer=1)).save_pretrained(folder)
    assert gpt2_if_its_vocabulary(50257, folder) == {"name": "gpt2"}  # no tokenizer of its own: GPT-2's, as before
    (folder / "tokenizer.json").write_text(json.dumps(_gpt2_tokenizer_json(shuffled=True)), encoding="utf-8")
    assert hf_folder_tokenizer(folder) == ("tokenizer.json", False)
    assert gpt2_if_its_vocabulary(50257, folder) is None
    # a fine-tune from it: no tokenizer known, and the note says it is not GPT-2's BPE (not "not GPT-2's (50257)")
    assert _weights_tokenizer(folder, 50257) is None
    assert "whose tokenizer is not GPT-2's BPE" in (_unknown_tokenizer(folder, 50257, "shakespeare") or "")
    settings = parse_sample_args([f"--init_from={str(folder)!r}", "--device='cpu'", "--num_samples=1"])
    with pytest.raises(CheckpointError, match=r"has a tokenizer of its own \(tokenizer.json\), not GPT-2's BPE"):
        sample(settings)
    (folder / "tokenizer.json").write_text(json.dumps(_gpt2_tokenizer_json(shuffled=False)))
    assert hf_folder_tokenizer(folder) == ("tokenizer.json", True)
    assert gpt2_if_its_vocabulary(50257, folder) == {"name": "gpt2"}
    (folder / "tokenizer.json").unlink()
    assert save_hf_tokenizer({"name": "gpt2"}, folder, 64)
    assert hf_folder_tokenizer(folder) == ("vocab.json", True)


def test_a_hub_model_is_sampled_with_the_tokenizer_its_repository_carries(offline_hub) -> None:
    """A Hub model by name: its tokenizer files are fetched with its weights, and sample reads them in the cache
    (it looked for them at the name as a local path, which never exists, and took GPT-2's BPE for any 50257)."""
    pytest.importorskip("safetensors")
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects

    from gptlab.errors import CheckpointError
    from gptlab.model.convert import HUB_TOKENIZER, HUB_WEIGHTS
    from gptlab.train.sample import parse_sample_args, sample

    repo = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "README.md"]
    assert list(filter_repo_objects(repo, allow_patterns=["config.json", *HUB_WEIGHTS[0], *HUB_TOKENIZER])) == repo[:5]
    offline_hub("someone/gpt2-other-language", ConfigurableGPT(get_debug_config("gpt2", vocab_size=50257, n_layer=1)))
    snapshot = next(Path(constants.HF_HUB_CACHE).glob("models--someone--gpt2-other-language/snapshots/*"))
    (snapshot / "tokenizer.json").write_text(json.dumps(_gpt2_tokenizer_json(shuffled=True)), encoding="utf-8")
    settings = parse_sample_args(["--init_from='someone/gpt2-other-language'", "--device='cpu'", "--num_samples=1"])
    with pytest.raises(CheckpointError, match=r"has a tokenizer of its own \(tokenizer.json\), not GPT-2's BPE"):
        sample(settings)


def test_fp16_skipped_steps_are_reported_at_their_own_iterations(data_dir: Path, tmp_path: Path) -> None:
    """With log_interval > 1 a skipped step was blamed on the next logged iteration, and one after the last
    logged iteration was never reported."""
    args = tiny_args(data_dir, tmp_path, dtype="float16", max_iters=7, log_interval=3, gradient_log_interval=100)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    original = trainer.forward_backward

    def forward_backward(micro: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = original(micro, x, y)
        if trainer.iter_num in (1, 2, 7):  # overflows in the gradients, the loss itself finite
            next(trainer.raw_model.parameters()).grad.fill_(float("inf"))
        return loss

    trainer.forward_backward = forward_backward  # type: ignore[method-assign]
    trainer.run()
    events = [r for r in _records(tmp_path) if r.get("event") == "loss_scale"]
    assert [(e["first_iter"], e["iter"], e["skipped_steps"]) for e in events] == [(1, 2, 2), (7, 7, 1)]
    assert events[0]["message"].startswith("iters 1-2: fp16 loss scale fell 65536 -> 16384 (2 steps")


def test_a_sample_config_file_reads_sample_defaults_and_earlier_files(tmp_path: Path) -> None:
    """nanoGPT-style, a sample file reads sample.py's defaults (num_samples += 2; init_from 'resume', not
    training's 'scratch') and what an earlier file set: each was a NameError or training's value."""
    from gptlab.train.sample import SampleConfig, parse_sample_args

    (tmp_path / "a.py").write_text("num_samples += 2\ninit_from = 'gpt2' if init_from == 'scratch' else init_from\n")
    (tmp_path / "b.py").write_text("max_new_tokens = num_samples * 10\n")
    settings = parse_sample_args([str(tmp_path / "a.py"), str(tmp_path / "b.py")])
    assert settings.num_samples == SampleConfig.num_samples + 2 and settings.init_from == SampleConfig.init_from
    assert settings.max_new_tokens == 10 * settings.num_samples


def _nanogpt_parameter_names(n_layer: int, bias: bool) -> list[str]:
    """nanoGPT's ``named_parameters()`` order, transcribed from its model.py (GPT: transformer.wte, .wpe, .h[i]
    (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj), .ln_f; lm_head tied to wte, so not listed):
    its configure_optimizers groups these, matrices first. An order of its own, not gptlab's mapping's."""

    def of(module: str) -> list[str]:
        return [f"{module}.weight", *([f"{module}.bias"] if bias else [])]

    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names += of(f"transformer.h.{i}.{module}")
    return names + of("transformer.ln_f")


def test_a_nanogpt_run_resumes_with_its_optimizer_iteration_and_settings(data_dir: Path, tmp_path: Path) -> None:
    """`--init_from=resume` in nanoGPT's out_dir (it was refused: a fine-tune from it began again at iteration 0,
    with a fresh warmup and AdamW's moments lost). Each parameter's moments land on gptlab's same parameter, found
    by nanoGPT's own order (each moment filled with its index there); the iteration, best val loss and the run's
    settings carry on; the next save is gptlab's. A checkpoint without AdamW state still samples, and its resume
    says to fine-tune."""
    from gptlab.errors import CheckpointError, ConfigError

    n_layer, n_embd, vocab, block = 2, 32, 128, 32
    shapes = {"wte": (vocab, n_embd), "wpe": (block, n_embd), "c_attn": (3 * n_embd, n_embd),
              "c_fc": (4 * n_embd, n_embd)}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    names = _nanogpt_parameter_names(n_layer, bias=True)

    def shape(name: str) -> tuple[int, ...]:
        module, kind = name.rsplit(".", 2)[-2:]
        if module.startswith("ln"):
            return (n_embd,)
        if module == "c_proj":
            out_in = (n_embd, 4 * n_embd) if ".mlp." in name else (n_embd, n_embd)
        else:
            out_in = shapes[module]
        return out_in if kind == "weight" else (out_in[0],)

    weights = {name: 0.02 * torch.randn(shape(name), generator=gen) for name in names}
    state = {}  # nanoGPT's state_dict order: each attention's causal-mask buffer, and the tied head last
    for name, tensor in weights.items():
        if name.endswith("ln_1.bias"):
            state[name] = tensor
            mask = torch.tril(torch.ones(block, block)).view(1, 1, block, block)
            state[name.replace("ln_1.bias", "attn.bias")] = mask
            continue
        state[name] = tensor
    state["lm_head.weight"] = state["transformer.wte.weight"]  # one tensor, saved once
    decayed = [n for n in names if weights[n].dim() >= 2]
    plain = [n for n in names if weights[n].dim() < 2]
    order = [*decayed, *plain]
    moments = {i: {"step": torch.tensor(30.0), "exp_avg": torch.full(weights[n].shape, float(i)),
                   "exp_avg_sq": torch.full(weights[n].shape, i + 0.5)} for i, n in enumerate(order)}  # fmt: skip
    group = dict(lr=1e-4, betas=(0.9, 0.99), eps=1e-8, amsgrad=False, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None)  # fmt: skip
    settings = dict(dataset="stdlib_char", batch_size=4, block_size=block, gradient_accumulation_steps=2,
                    learning_rate=1e-3, min_lr=1e-4, warmup_iters=5, lr_decay_iters=40, max_iters=40, beta2=0.99,
                    eval_interval=10, eval_iters=2, init_from="scratch", out_dir="out-nano", n_layer=n_layer,
                    n_head=2, n_embd=n_embd, bias=True, dropout=0.0, device="cuda", dtype="bfloat16", compile=True,
                    backend="nccl", wandb_log=False, always_save_checkpoint=True)  # fmt: skip
    run = tmp_path / "out-nano"
    run.mkdir()
    nano = {
        "model": {f"_orig_mod.{k}": v for k, v in state.items()},  # compiled, as its train.py saves by default
        "optimizer": {"state": moments, "param_groups": [
            {**group, "weight_decay": 0.1, "params": list(range(len(decayed)))},
            {**group, "weight_decay": 0.0, "params": list(range(len(decayed), len(order)))},
        ]},
        "model_args": dict(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=block, bias=True, vocab_size=vocab,
                           dropout=0.0),
        "iter_num": 30,
        "best_val_loss": torch.tensor(2.5),
        "config": settings,
    }  # fmt: skip
    torch.save(nano, run / "ckpt.pt")
    launch = [f"--out_dir={str(run)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'", "--device='cpu'",
              "--dtype='float32'", "--compile=False", "--max_iters=31"]  # fmt: skip
    trainer = Trainer(parse_run_args(launch), stream=io.StringIO())
    try:  # (its best val loss was nanoGPT's estimate on other batches: the next evaluation sets it)
        assert (trainer.iter_num, trainer.best_val_loss) == (30, float("inf"))
        cfg = trainer.cfg
        assert (cfg.learning_rate, cfg.min_lr, cfg.lr_decay_iters, cfg.warmup_iters) == (1e-3, 1e-4, 40, 5)
        assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.beta2) == (4, 2, 0.99)
        assert trainer.tokens_seen == 30 * 2 * 4 * block  # nanoGPT's iterations 0..29, each tokens_per_iter
        gptlab_name = {  # nanoGPT's module names -> gptlab's (gptlab.model.gpt)
            "transformer.wte": "wte", "transformer.wpe": "pos_encoding.wpe", "transformer.ln_f": "norm_f",
            "ln_1": "norm_1", "ln_2": "norm_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.out_proj",
            "mlp.c_fc": "ffn.w_in", "mlp.c_proj": "ffn.w_out",
        }  # fmt: skip

        def ours(name: str) -> str:
            if name.startswith("transformer.h."):
                i, rest = name.removeprefix("transformer.h.").split(".", 1)
                module, kind = rest.rsplit(".", 1)
                return f"blocks.{i}.{gptlab_name[module]}.{kind}"
            module, kind = name.rsplit(".", 1)
            return f"{gptlab_name[module]}.{kind}"

        params = dict(trainer.raw_model.named_parameters())
        for index, name in enumerate(order):
            p = params[ours(name)]
            assert torch.equal(p.detach(), weights[name]), name
            moment = trainer.optimizer.state[p]
            assert torch.equal(moment["exp_avg"], torch.full_like(p, float(index))), name
            assert torch.equal(moment["exp_avg_sq"], torch.full_like(p, index + 0.5)) and float(moment["step"]) == 30
        assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]
    finally:
        trainer.logger.close()
    train(parse_run_args(launch), stream=io.StringIO())
    event = [r for r in _records(run) if r.get("event") == "resume"][-1]
    assert event["changed"]["checkpoint"][0] == "nanoGPT's" and "batches" in event["changed"]
    assert event["changed"]["best val loss"] == ["2.5000 on nanoGPT's batches", "the next evaluation's"]
    saved = load_checkpoint(run)
    assert saved["iter_num"] == 32 and "converted_from" not in saved and saved["config"]["train"]["min_lr"] == 1e-4
    # a run nanoGPT trained on a CPU: its config says float16 (its CPU path trains in float32 whatever it says), its
    # groups 'fused': None; a fork saved the tied head as a copy; it was resumed once (init_from 'resume'). It
    # trained under fp16's grad scaler with fused off (an AssertionError, after the file was replaced)
    cpu_run = tmp_path / "out-cpu"
    cpu_run.mkdir()
    cpu = {**settings, "device": "cpu", "dtype": "float16", "init_from": "resume"}
    model = {**state, "lm_head.weight": state["transformer.wte.weight"].clone()}
    torch.save({**nano, "model": model, "config": cpu}, cpu_run / "ckpt.pt")
    cpu_launch = [a for a in launch if not a.startswith(("--out_dir", "--dtype"))] + [f"--out_dir={str(cpu_run)!r}"]
    train(parse_run_args(cpu_launch), stream=io.StringIO())
    saved = load_checkpoint(cpu_run)
    assert saved["iter_num"] == 32 and saved["config"]["train"]["dtype"] == "float32"
    assert saved["weights_origin"] is None and all(g["fused"] for g in saved["optimizer"]["param_groups"])
    # a fork's value gptlab does not take: one line, no --plugins hint (for components only)
    torch.save({**nano, "config": {**settings, "lr_schedule": "linear"}}, run / "ckpt.pt")
    with pytest.raises(ConfigError, match=r"lr_schedule='linear' is not one of .* the checkpoint's\)$"):
        parse_run_args(launch)
    # nanoGPT's AdamW state lost (a hand-made checkpoint, a fork's groups): sampling reads it, a resume refuses
    del nano["optimizer"]
    torch.save(nano, run / "ckpt.pt")
    assert load_checkpoint(run)["iter_num"] == 30
    with pytest.raises(CheckpointError, match=r"holds no nanoGPT optimizer state to resume with; fine-tune from it"):
        Trainer(parse_run_args(launch), stream=io.StringIO())
    train(parse_run_args([*launch, "--eval_only=True"]), stream=io.StringIO())  # an evaluation needs none
    evaluated = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in evaluated if r.get("type") == "eval"] == [30]
    assert load_checkpoint(run)["converted_from"] == "nanoGPT"  # the file left as it was
    event = [r for r in evaluated if r.get("event") == "resume"][-1]
    assert "checkpoint" not in event["changed"] and "batches" not in event["changed"]  # it saves and trains nothing
    nano["optimizer"] = {"state": {}, "param_groups": [{**group, "params": list(range(len(order)))}]}
    torch.save(nano, run / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"parameter groups hold \[28\] tensors, not nanoGPT's \[10, 18\]"):
        Trainer(parse_run_args(launch), stream=io.StringIO())


def test_a_nanogpt_fork_with_an_untied_head_resumes_untied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork that unties nanoGPT's head (its own lm_head.weight, in AdamW's decayed group after ln_f): the
    conversion kept the preset's tying, and loading the head into the tied model overwrote the embedding."""
    from gptlab.model.loading import rename_keys, reversed_names
    from gptlab.model.nanogpt import NANOGPT_NAMES, nanogpt_training_checkpoint

    arch = get_debug_config("gpt2", vocab_size=64, block_size=16, gelu_approximate="none", weight_tying=False)
    state = rename_keys(ConfigurableGPT(arch).state_dict(), reversed_names(NANOGPT_NAMES))
    names = [*_nanogpt_parameter_names(arch.n_layer, bias=True), "lm_head.weight"]  # registered last
    order = [n for n in names if state[n].dim() >= 2] + [n for n in names if state[n].dim() < 2]
    decayed = sum(state[n].dim() >= 2 for n in names)
    moments = {i: {"step": torch.tensor(3.0), "exp_avg": torch.full_like(state[n], i), "exp_avg_sq": torch.ones_like(
        state[n])} for i, n in enumerate(order)}  # fmt: skip
    groups = [{"lr": 1e-3, "weight_decay": wd, "params": ids} for wd, ids in
              ((0.1, list(range(decayed))), (0.0, list(range(decayed, len(order)))))]  # fmt: skip
    args = dict(n_layer=arch.n_layer, n_head=arch.n_head, n_embd=arch.n_embd, block_size=16, bias=True, vocab_size=64)
    ckpt = {"model": state, "model_args": args, "iter_num": 3, "optimizer": {"state": moments, "param_groups": groups}}
    converted = nanogpt_training_checkpoint(ckpt, "fork/ckpt.pt")
    assert converted["arch"]["weight_tying"] is False and "optimizer_problem" not in converted
    from gptlab.config.model import ModelArchitectureConfig

    model = ConfigurableGPT(ModelArchitectureConfig.from_dict(converted["arch"]))
    model.load_state_dict(converted["model"])
    assert torch.equal(model.wte.weight, state["transformer.wte.weight"])  # not overwritten by the head
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    optimizer.load_state_dict(converted["optimizer"])
    head_moment = optimizer.state[model.lm_head.weight]["exp_avg"]
    assert torch.equal(head_moment, torch.full_like(head_moment, order.index("lm_head.weight")))
    # the moments follow the names, not the positions: gptlab's order is nanoGPT's today; reversed, each moment
    # still lands on its parameter
    forward = ConfigurableGPT.named_parameters
    monkeypatch.setattr(ConfigurableGPT, "named_parameters", lambda self, *a, **k: reversed([*forward(self, *a, **k)]))
    moved = nanogpt_training_checkpoint(ckpt, "fork/ckpt.pt")["optimizer"]
    ours = [n for n, p in reversed(list(forward(model))) if p.dim() >= 2]
    to_nanogpt = dict(zip(rename_keys(dict.fromkeys(names), NANOGPT_NAMES), names))
    assert [int(moved["state"][i]["exp_avg"].flatten()[0]) for i in range(decayed)] == [
        order.index(to_nanogpt[n]) for n in ours
    ]


def test_sampling_on_a_gpu_forks_only_its_own_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork_rng() with no device list warns on a machine of several GPUs, once per rank at the end of an FSDP
    run: the sampling device's state alone is kept and restored."""
    from gptlab.train import sample

    asked: list[object] = []
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices=None, **kw: asked.append(devices))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    sample._forked_rng(torch.device("cuda", 1))
    sample._forked_rng(torch.device("cuda"))
    sample._forked_rng(torch.device("cpu"))
    assert asked == [[1], [2], []]


@pytest.mark.parametrize("damaged", ["null", "5", "{bad json"])
def test_a_damaged_config_json_beside_a_good_checkpoint_samples_and_exports(
    damaged: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's config.json that holds no object or no JSON (hand-edited, damaged): the folder's checkpoint is what
    sample and export read. A JSON scalar there stopped both with a TypeError's traceback; a file that is no JSON
    was refused as 'expected a Hugging Face config.json'."""
    from gptlab.cli import main
    from gptlab.train.sample import parse_sample_args, sample

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, max_iters=1)), stream=io.StringIO())
    (run / "config.json").write_text(damaged)
    args = [f"--out_dir={str(run)!r}", "--max_new_tokens=3", "--num_samples=1", "--device=cpu"]
    assert len(sample(parse_sample_args(args))[0]) == 4  # the default prompt '\n' and 3 characters
    assert main(["export", str(run), str(tmp_path / "export")]) == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "export")["iter_num"] == load_checkpoint(run)["iter_num"]


def test_flops_and_plan_of_a_run_with_a_damaged_log_or_train_record(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """flops and plan read a run's config.json (its log only for what 'auto' resolved to): a log that is not
    UTF-8 is left out, not a traceback; a config.json whose 'train' is no object is one line."""
    from gptlab.cli import main

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, max_iters=1)), stream=io.StringIO())
    (run / "log.jsonl").write_bytes(b"\xb8\xff" * 100)
    for command in ("flops", "plan"):
        assert main([command, str(run)]) == 0, capsys.readouterr().err
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "train": "x"}))
    capsys.readouterr()
    for command in ("flops", "plan"):
        assert main([command, str(run)]) == 2
        err = capsys.readouterr().err
        assert "its 'train' record is a str, not an object" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [("arch", [1], "its arch is list, not a mapping"), ("iter_num", "x", "its iter_num is 'x', not an integer")],
)
def test_sampling_a_damaged_gptlab_checkpoint_file_says_it_is_damaged(
    key: str, value: Any, said: str, data_dir: Path, tmp_path: Path
) -> None:
    """--init_from=FILE.pt of a gptlab checkpoint whose record was damaged: said as load_checkpoint says it (as
    --out_dir of its folder did), not loaded unchecked as another format's (a TypeError's traceback, or 'no
    gptlab tokenizer is recorded with it')."""
    from gptlab.errors import CheckpointError
    from gptlab.train.sample import parse_sample_args, sample

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, max_iters=1)), stream=io.StringIO())
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    torch.save({**ckpt, key: value}, tmp_path / "damaged.pt")
    args = [f"--init_from={str(tmp_path / 'damaged.pt')!r}", "--max_new_tokens=3", "--num_samples=1", "--device=cpu"]
    with pytest.raises(CheckpointError, match=rf"is a damaged gptlab checkpoint: {said}"):
        sample(parse_sample_args(args))
    (tmp_path / "damaged.pt").replace(run / "ckpt.pt")  # named by its run directory
    args[0] = f"--init_from={str(run)!r}"
    with pytest.raises(CheckpointError, match=rf"is a damaged gptlab checkpoint: {said}"):
        sample(parse_sample_args(args))
