"""gptlab compare: the documented rows and columns, every figure equal to what the telemetry
functions return, the three formats, and --train end to end on two tiny presets."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from gptlab.cli import main
from gptlab.compare import MATMUL_COMPONENTS, compare
from gptlab.config.model import PRESETS, ModelArchitectureConfig, get_preset_config
from gptlab.data.datasets import prepare_dataset
from gptlab.model.gpt import ConfigurableGPT
from gptlab.telemetry import (
    compute_flops,
    count_parameters,
    expected_tokens_per_sec,
    get_gpu_spec,
    plan_all_modes,
)

ROWS = [
    "architecture",
    "parameters (total)",
    "parameters (excl. embeddings)",
    *(f"train FLOP/token: {c}" for c in MATMUL_COMPONENTS),
    "train FLOP/token, total (full-square, MFU)",
    "train FLOP/token, total (causal-aware)",
    "non-matmul FLOP/token (estimate)",
    "attention/FFN FLOPs per layer",
    "memory/GPU none x1 (GB, peak; micro-batch 6, bfloat16)",
    "memory/GPU ddp x4 (GB, peak; micro-batch 6, bfloat16)",
    "memory/GPU zero1 x4 (GB, peak; micro-batch 6, bfloat16)",
    "memory/GPU fsdp x4 (GB, peak; micro-batch 6, bfloat16)",
    "tokens/s per GPU (A100-SXM bf16 @ 35% MFU)",
    "tokens/s on 4 GPUs",
]


def test_memory_cells_keep_three_digits_without_trailing_dots() -> None:
    from gptlab.compare import GB, Comparison

    cells = [Comparison.format_value("memory.none", gb * GB) for gb in (0.006834, 15.0, 14.538, 293.4, 2437.2)]
    assert cells == ["0.00683", "15.0", "14.5", "293", "2,437"]
    params = [Comparison.format_value("params_total", n) for n in (8_246_544, 124_439_808, 515_407_959_162_880)]
    assert params == ["8,246,544", "124.44M", "515,407,959.16M"]  # grouped as the memory rows are


def test_one_gpu_is_said_in_the_singular() -> None:
    assert compare(["gpt2"], world_size=1).table()[1][-1][0] == "tokens/s on 1 GPU"


def test_preset_table_has_documented_rows_and_columns() -> None:
    result = compare(list(PRESETS), gpu="A100-SXM", mfu=0.35, world_size=4, batch_size=6)
    header, rows = result.table()
    assert header == ["figure", *PRESETS]
    assert [r[0] for r in rows] == ROWS
    assert all(len(r) == len(header) for r in rows)
    md = result.render("markdown").splitlines()
    assert md[0] == "| figure | " + " | ".join(PRESETS) + " |" and md[len(ROWS) + 2] == ""
    # then what the figures assume, once where every column shares it (the FSDP plan's estimate)
    fsdp_note = "fsdp comm_buffers (unsharded copies) is an estimate; sharded sizes are exact"
    assert md[len(ROWS) + 3 :] == [f"- note: {fsdp_note}"]  # a markdown list: a line each


@pytest.mark.parametrize("preset", list(PRESETS))
def test_figures_equal_the_telemetry_functions(preset: str) -> None:
    overrides = {"n_layer": 4, "n_kv_head": 4} if preset == "llama" else {"n_layer": 4}
    result = compare([preset], overrides, gpu="H100-SXM", mfu=0.4, world_size=8, batch_size=12, dtype="bfloat16")
    fig = result.to_dict()["architectures"][preset]
    config = get_preset_config(preset, **overrides)
    fl = compute_flops(config)
    table = {r["component"]: r for r in fl.table()}
    with torch.device("meta"):
        model = ConfigurableGPT(config)
    assert fig["params_total"] == count_parameters(config) == model.get_num_params(non_embedding=False)
    assert fig["params_non_embedding"] == model.get_num_params()
    for c in MATMUL_COMPONENTS:
        assert fig[f"flops.{c}"] == table[c]["training_flops_per_token"]
    assert fig["flops_per_token"] == fl.flops_per_token
    assert fig["flops_per_token_causal"] == fl.flops_per_token_causal
    assert fig["non_matmul_flops_per_token"] == fl.non_matmul_flops_per_token
    assert fig["attention_to_ffn_ratio"] == fl.attention_to_ffn_ratio
    plans = plan_all_modes(config, world_size=8, batch_size=12, dtype="bfloat16", activation_checkpointing=False)
    for mode, plan in plans.items():
        assert fig[f"memory.{mode}"] == plan.mode.peak
    peak = get_gpu_spec("H100-SXM").peaks["bf16"]
    assert fig["tokens_per_sec_per_gpu"] == expected_tokens_per_sec(config, peak, 0.4)
    assert fig["tokens_per_sec_total"] == expected_tokens_per_sec(config, peak, 0.4, num_gpus=8)


def test_memory_rows_plan_with_activation_checkpointing_when_asked() -> None:
    """--activation_checkpointing labels the memory rows "act. ckpt": their peaks are the planner's with it, and
    lower than without (the stored activations are one block's and the block inputs)."""
    kwargs = dict(gpu="H100-SXM", mfu=0.4, world_size=8, batch_size=12, dtype="bfloat16")
    plain = compare(["gpt2"], {"n_layer": 4}, **kwargs).figures[0]
    ckpt = compare(["gpt2"], {"n_layer": 4}, **kwargs, activation_checkpointing=True).figures[0]
    config = get_preset_config("gpt2", n_layer=4)
    plans = plan_all_modes(config, world_size=8, batch_size=12, dtype="bfloat16", activation_checkpointing=True)
    for mode, plan in plans.items():
        assert ckpt[f"memory.{mode}"] == plan.mode.peak < plain[f"memory.{mode}"], mode


def test_cli_formats_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "gpt2", "config/full_llama_124m.py", "--n_layer=2", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["architectures"]) == ["gpt2", "full_llama_124m"]
    assert data["architectures"]["gpt2"]["architecture"].startswith("pre-layernorm")
    assert main(["compare", "llama", "--format", "text"]) == 0
    assert "tokens/s per GPU (H100-SXM bf16 @ 40% MFU)" in capsys.readouterr().out
    assert main(["compare", "gpt3"]) == 2
    assert "gpt3" in capsys.readouterr().err
    assert main(["compare", "gpt2", "--max_iters=5"]) == 2  # training keys need --train
    assert "--train" in capsys.readouterr().err
    # CSV: every figure unrounded, as JSON has them; no architecture named: every preset
    import csv

    from gptlab.config.model import PRESETS

    assert main(["compare", "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["table", "key", "figure", *PRESETS]
    by_key = {r[1]: r for r in rows[1:]}
    assert main(["compare", *PRESETS, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)["architectures"]
    assert [int(v) for v in by_key["params_total"][3:]] == [data[p]["params_total"] for p in PRESETS]
    assert [float(v) for v in by_key["memory.fsdp"][3:]] == [data[p]["memory.fsdp"] for p in PRESETS]
    assert by_key["memory.fsdp"][2].startswith("memory/GPU fsdp x8 (bytes, peak;")  # as its cells are


def test_the_readmes_table_is_the_commands_output(capsys: pytest.CaptureFixture[str]) -> None:
    """README.md shows `gptlab compare gpt2 llama hybrid --format markdown`: its memory rows had drifted from the
    planner's figures (llama 16.0 GB printed, 15.5 planned). The table must be what the command prints now."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("| figure | gpt2 | llama | hybrid |")
    shown = readme[start : readme.index("\n\n", start)]
    assert main(["compare", "gpt2", "llama", "hybrid", "--format", "markdown"]) == 0
    printed = capsys.readouterr().out.split("\n\n")[0].strip()
    assert shown == printed


def test_the_readmes_trained_memory_row_is_the_planners(tmp_path: Path) -> None:
    """README.md's `compare gpt2 llama hybrid --train` table prints, on the CPU, each run's planned peak: the
    row had drifted from the planner (llama 0.0087 GB shown, 0.0081 planned). The plan, without the training."""
    from gptlab.compare import resolve_architecture
    from gptlab.compare_train import _run_values, format_result
    from gptlab.config.model import padded_vocab_size
    from gptlab.config.resolve import resolve_run_config
    from gptlab.device import resolve_device, resolve_dtype
    from gptlab.telemetry.planner import plan_memory
    from gptlab.train.telemetry_hooks import run_plan_kwargs

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    command = "gptlab compare gpt2 llama hybrid --train --out_dir=out/compare --max_iters=300 --lr_decay_iters=300"
    assert f"`{command}`" in readme
    row = "| peak memory of this training (GB: CUDA measured, CPU planned at its batch)"
    shown = next(line for line in readme.splitlines() if line.startswith(row))
    overrides = {"max_iters": 300, "lr_decay_iters": 300}
    vocab = json.loads((prepare_dataset("stdlib_char", data_dir=tmp_path) / "meta.json").read_text())["vocab_size"]
    planned = []
    for name in ("gpt2", "llama", "hybrid"):
        run = resolve_run_config(_run_values(resolve_architecture(name), overrides, tmp_path), typed=set(overrides))
        arch = dataclasses.replace(run.arch, vocab_size=padded_vocab_size(vocab))  # as the run sets it from the data
        device = resolve_device(run.train.device)
        kwargs = run_plan_kwargs(run.train, resolve_dtype(run.train.dtype, device), "none", 1,
                                 run.train.gradient_accumulation_steps, device)  # fmt: skip
        planned.append(format_result("peak_memory_gb", plan_memory(arch, **kwargs).mode.peak / 1e9))
    assert shown == f"{row} | " + " | ".join(planned) + " |"


@pytest.mark.parametrize(
    ("file_heads", "overrides", "trained"),
    [
        ({"n_kv_head": 4}, {}, 1),  # GQA 12/4 (groups of 3): at 4 heads the nearest grouped choice, 1
        ({"n_kv_head": 6}, {}, 2),  # groups of 2 kept exactly: 2 of 4
        ({"n_kv_head": 3}, {}, 1),  # was refused: n_kv_head=3 must divide n_head=4 (a 4 the user never wrote)
        ({"n_kv_head": 12}, {}, 4),  # plain multi-head, spelled out: stays so
        ({"n_kv_head": 4, "n_head": 8}, {}, 4),  # the file's own heads: as written
        ({"n_kv_head": 4}, {"n_kv_head": 2}, 2),  # the command's
    ],
)
def test_compare_train_shrinks_a_files_grouped_query_attention_with_its_heads(
    tmp_path: Path, file_heads: dict[str, int], overrides: dict[str, int], trained: int
) -> None:
    """The shrink's n_head=4 with a file's n_kv_head=4 of 12 trained plain multi-head attention under the file's
    name (an identical column to llama's, no word said); n_kv_head=3 was refused as not dividing n_head=4."""
    from gptlab.compare import resolve_architecture
    from gptlab.compare_train import _run_values, _shrunk_kv_heads
    from gptlab.config.resolve import resolve_run_config

    path = tmp_path / "kv.py"
    path.write_text('arch_preset = "llama"\n' + "".join(f"{k} = {v}\n" for k, v in file_heads.items()))
    arch = resolve_architecture(str(path))
    values = _run_values(arch, overrides, tmp_path)
    run = resolve_run_config(values, typed=set(overrides))
    assert run.arch.kv_heads == trained
    note = _shrunk_kv_heads(arch, values, overrides)
    if "n_head" in file_heads or overrides:
        assert note is None
    else:
        assert note is not None and note[0] == trained
        assert f"n_kv_head={file_heads['n_kv_head']} of n_head=12 shrunk with the heads: n_kv_head={trained}" in note[1]


def test_compare_train_names_each_wandb_run_by_its_label(tmp_path: Path) -> None:
    """Every architecture's wandb run was named 'run' (or all the one --wandb_run_name): by label now."""
    from gptlab.compare import resolve_architecture
    from gptlab.compare_train import _run_values

    arch = resolve_architecture("llama")
    assert _run_values(arch, {"wandb_log": True}, tmp_path)["wandb_run_name"] == "llama"
    assert _run_values(arch, {"wandb_log": True, "wandb_run_name": "ab1"}, tmp_path)["wandb_run_name"] == "ab1-llama"
    assert _run_values(arch, {"wandb_run_name": None}, tmp_path)["wandb_run_name"] is None  # refused as in train


def test_compare_train_two_tiny_presets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    out = tmp_path / "cmp"
    args = [
        "compare",
        "gpt2",
        "llama",
        "--train",
        "--out_dir",
        str(out),
        "--format",
        "json",
        f"--data_dir={tmp_path / 'data'}",
        "--n_layer=2",
        "--n_embd=32",
        "--n_head=2",
        "--block_size=32",
        "--batch_size=4",
        "--max_iters=8",
        "--lr_decay_iters=8",
        "--warmup_iters=2",
        "--eval_interval=4",
        "--log_interval=1",
    ]
    import torch

    torch.manual_seed(7)
    rng = torch.get_rng_state()
    assert main(args) == 0
    assert torch.equal(torch.get_rng_state(), rng)  # a notebook's stream goes on as it was (the warm-up drew)
    data = json.loads(capsys.readouterr().out)
    for name in ("gpt2", "llama"):
        result = data["training"][name]
        assert result["tokens_trained"] == 9 * 4 * 32  # the same tokens for both: 9 steps of 4 x 32
        assert result["final_val_loss"] < result["unigram_baseline_loss"] + 1.5
        assert result["tokens_per_sec"] > 0 and result["mfu"] is None  # no peak on a CPU: n/a, not a guess
        assert (out / name / "log.jsonl").is_file() and (out / name / "summary.json").is_file()
        summary = json.loads((out / name / "summary.json").read_text())
        assert result["peak_memory_gb"] == summary["planned_peak_gb"] > 0  # a CPU: the plan, not the shared RSS
        # the table describes the trained model (vocabulary padded to the dataset's)
        trained = json.loads((out / name / "config.json").read_text())["arch"]
        assert data["architectures"][name]["params_total"] == count_parameters(
            ModelArchitectureConfig.from_dict(trained)
        )
    page = (out / "report" / "report.html").read_text()
    assert data["report"] == str(out / "report" / "report.html")
    assert "<h2>Architectures</h2>" in page and "<h2>Training</h2>" in page and "final val loss" in page
    assert (out / "report" / "loss_vs_tokens.png").is_file() and (out / "report" / "loss_vs_time.png").is_file()
    # one CPU process trained both: its RSS is no one run's, so neither a memory plot nor a summary row of it
    assert not (out / "report" / "memory.png").exists() and "whose RSS is not any one run" in page
    assert "peak_memory_gb" not in page
    # and so does a report over some of its runs, from their own startup records (docs' second example)
    assert main(["report", str(out / "gpt2"), str(out / "llama"), "--out", str(tmp_path / "own")]) == 0
    assert not (tmp_path / "own" / "memory.png").exists()
    assert "peak_memory_gb" not in (tmp_path / "own" / "report.html").read_text()
    capsys.readouterr()
    with torch.no_grad():  # run again into the same out_dir (the runs are replaced, an overwrite event first),
        assert main(args) == 0  # from a notebook's no_grad cell: the warm-up's steps failed there
    assert json.loads(capsys.readouterr().out)["training"]["gpt2"]["tokens_trained"] == 9 * 4 * 32


def test_compare_train_goes_on_when_one_architecture_diverges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One architecture's loss goes NaN: its row says it stopped, and the others are still trained and compared
    (the whole comparison was lost, and the error did not name the architecture)."""
    from gptlab.compare_train import train_and_compare
    from gptlab.train.loop import Trainer

    step = Trainer.train_step

    def gpt2_diverges(self: Trainer) -> dict:
        out = step(self)
        if self.arch.position_encoding == "learned_absolute" and self.iter_num >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Trainer, "train_step", gpt2_diverges)
    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    small = dict(n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=2, max_iters=8, log_interval=1)
    overrides = dict(out_dir=str(tmp_path / "cmp"), data_dir=str(tmp_path / "data"), **small)
    logged: list[str] = []
    result = train_and_compare(["gpt2", "llama"], overrides, report=False, log=logged.append)
    gpt2, llama = result.training
    assert gpt2["status"] == "stopped: non-finite loss" and llama["status"] == "completed"
    assert llama["final_val_loss"] > 0 and gpt2["final_val_loss"] > 0  # gpt2's: its last evaluation (iter 0)
    assert any(line.startswith("compare: gpt2: training stopped at iter 3") for line in logged), logged
    # where each ended (iterations 0-3, the NaN one included), not the plan's 9 steps for both
    assert (gpt2["tokens_trained"], llama["tokens_trained"]) == (4 * 2 * 32, 9 * 2 * 32)
    header, rows = result.training_table()
    assert header == ["result", "gpt2", "llama"] and rows[0] == ["status", "stopped: non-finite loss", "completed"]
    # the diverged run's final val loss is iteration 0's: said in its cell (it read as a finished run's loss)
    assert gpt2["final_val_iter"] == 0 and llama["final_val_iter"] == 9  # (after its 9 steps)
    assert rows[1] == ["final val loss", f"{gpt2['final_val_loss']:.4f} (iter 0)", f"{llama['final_val_loss']:.4f}"]
    assert any(line.startswith("compare: gpt2: final val loss ") and line.endswith(" (iter 0)") for line in logged)


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly() -> None:
    """`gptlab compare ... | head -1`: when the reader closes the pipe, exit 141 with no traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    try:
        proc = subprocess.run([sys.executable, "-m", "gptlab", "compare", "gpt2", "llama", "hybrid"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr


def test_compare_train_takes_a_full_config_file_with_its_documented_override(tmp_path: Path) -> None:
    """config/full_custom.py spells out every key; its header's --ffn_type=geglu override trains under
    compare --train as under train.py (only the typed keys must take effect)."""
    from gptlab.compare_train import train_and_compare

    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    full_custom = str(Path(__file__).resolve().parents[1] / "config" / "full_custom.py")
    small = dict(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, block_size=32, batch_size=2, max_iters=1)
    overrides = dict(ffn_type="geglu", data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "cmp"), **small)
    result = train_and_compare([full_custom], overrides, report=False, log=lambda text: None)
    assert result.architectures[0].config.ffn_type == "geglu" and result.training[0]["final_val_loss"] > 0


def test_compare_train_overrides_apply_to_the_trained_sizes_and_matplotlib_is_checked_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented `compare gpt2 llama --train --n_embd=128`: the width applies to the trained models
    (n_head=4), not to the full-size presets (n_head=12, which 128 does not divide). Without matplotlib the
    command stops before training anything, not after every run."""
    from gptlab.compare_train import train_and_compare
    from gptlab.errors import GptlabError

    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    small = dict(n_layer=1, n_embd=40, block_size=32, batch_size=2, max_iters=1, data_dir=str(tmp_path / "data"))
    overrides = dict(out_dir=str(tmp_path / "cmp"), **small)
    result = train_and_compare(["gpt2", "llama"], overrides, report=False, log=lambda text: None)
    assert [(a.config.n_embd, a.config.n_head) for a in result.architectures] == [(40, 4), (40, 4)]
    # --max_iters alone: the schedule decays over the run (not to the default 200's min_lr at iteration 1)
    saved = json.loads((tmp_path / "cmp" / "gpt2" / "config.json").read_text())["train"]
    assert saved["lr_decay_iters"] == saved["max_iters"] == 1 and saved["warmup_iters"] == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(GptlabError, match=r"^gptlab compare --train \(its plots and report.html\) needs matplotlib"):
        train_and_compare(["gpt2"], {**overrides, "out_dir": str(tmp_path / "none")}, log=lambda text: None)
    assert not (tmp_path / "none").exists()


def test_a_second_comparison_into_the_same_out_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `compare --train` into one OUT_DIR: the second (overwrite=True, its default) replaced the first's
    finished run, whose report then mixed both (its table one run's, its curves the other's). The whole
    comparison holds OUT_DIR: the second is refused in one line before it trains."""
    from gptlab.compare_train import train_and_compare
    from gptlab.errors import ConfigError
    from gptlab.fileio import run_lock

    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    small = dict(n_layer=1, n_embd=16, block_size=16, batch_size=2, max_iters=1, data_dir=str(tmp_path / "data"))
    out = tmp_path / "cmp"
    with run_lock(out):  # the first comparison, still running
        with pytest.raises(ConfigError, match="is in use by another training"):
            train_and_compare(["gpt2"], {"out_dir": str(out), **small}, report=False, log=lambda text: None)
        assert not (out / "gpt2").exists()
    result = train_and_compare(["gpt2"], {"out_dir": str(out), **small}, report=False, log=lambda text: None)
    assert result.training[0]["final_val_loss"] is not None
    again = train_and_compare(["gpt2"], {"out_dir": str(out), **small}, report=False, log=lambda text: None)
    assert again.training[0]["final_val_loss"] is not None  # its own earlier run: replaced, as documented
    # marked as compare's from its start (a run killed -9 before its console.log was written was refused as not)
    import gptlab.train.launch as launch

    marked: list[bool] = []
    launch_train = launch.train

    def peek(run, **kwargs):  # type: ignore[no-untyped-def]
        marked.append((Path(run.train.out_dir) / "console.log").is_file())
        return launch_train(run, **kwargs)

    monkeypatch.setattr(launch, "train", peek)
    train_and_compare(["gpt2"], {"out_dir": str(tmp_path / "fresh"), **small}, report=False, log=lambda text: None)
    assert marked == [True]
    # a run train.py made at OUT_DIR/LABEL (--out_dir=out beside out/llama) was replaced too, said only in the log
    (out / "gpt2" / "console.log").unlink()
    kept = (out / "gpt2" / "ckpt.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"gpt2' holds a run compare --train did not make \(ckpt.pt, log.jsonl\)"):
        train_and_compare(["llama", "gpt2"], {"out_dir": str(out), **small}, report=False, log=lambda text: None)
    assert (out / "gpt2" / "ckpt.pt").read_bytes() == kept and not (out / "llama").exists()  # before any trained
    forced = {"out_dir": str(out), "overwrite": True, **small}
    assert train_and_compare(["gpt2"], forced, report=False, log=lambda text: None).training[0]["status"] == "completed"
    # a config file that fine-tunes: its column is its weights' architecture, which --train trained as GPT-2's
    tune = tmp_path / "tune.py"
    tune.write_text(f"init_from = {str(out / 'gpt2')!r}\n")
    with pytest.raises(ConfigError, match=r"tune.py' sets init_from='.*gpt2': compare --train trains each"):
        train_and_compare([str(tune)], {"out_dir": str(tmp_path / "t"), **small}, report=False, log=lambda t: None)


def test_config_files_take_their_datasets_vocabulary_and_run_directories_their_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What training gives a config file without vocab_size is its prepared dataset's vocabulary padded to
    64 (65 characters -> 128), so the estimates are the run's; a run directory's is the trained one."""
    import json

    from gptlab.compare import resolve_architecture

    text = tmp_path / "input.txt"
    text.write_text("".join(chr(ord("!") + i) for i in range(65)) * 40)
    prepare_dataset("mine_char", tmp_path / "data", input_path=text)
    config = tmp_path / "cfg.py"
    config.write_text(f"dataset = 'mine_char'\ndata_dir = {str(tmp_path / 'data')!r}\narch_preset = 'gpt2'\n")
    assert resolve_architecture(str(config)).config.vocab_size == 128
    assert resolve_architecture(str(config), {"vocab_size": 256}).config.vocab_size == 256  # typed: as given
    elsewhere = tmp_path / "other.py"  # a dataset not prepared here: the preset's, as before
    elsewhere.write_text("dataset = 'openwebtext'\narch_preset = 'gpt2'\n")
    assert resolve_architecture(str(elsewhere)).config.vocab_size == 50304
    assert resolve_architecture(str(elsewhere)).notes == []  # a GPT-2 BPE dataset: 50304 is its vocabulary
    # ... a character-level one's is not, and is said under its column: 3x the parameters of the char model
    chars = tmp_path / "chars.py"
    chars.write_text("dataset = 'shakespeare_char'\narch_preset = 'gpt2'\n")
    assert resolve_architecture(str(chars)).notes == [
        "vocab_size 50304 (the default) assumed: dataset 'shakespeare_char' is not prepared in 'data', whose "
        "vocabulary training would take (prepare it, or pass --vocab_size)"
    ]
    assert main(["compare", str(chars), "llama"]) == 0
    assert "note (chars): vocab_size 50304 (the default) assumed: dataset 'shakespeare_char'" in capsys.readouterr().out
    for command in ("flops", "plan"):  # they tabulate the same assumption
        assert main([command, str(chars)]) == 0
        assert "note: vocab_size 50304 (the default) assumed: dataset 'shakespeare_char'" in capsys.readouterr().out
    assert resolve_architecture(str(config)).notes == []  # the prepared dataset's vocabulary
    assert resolve_architecture(str(chars), {"vocab_size": 96}).notes == []  # typed

    run = tmp_path / "run"
    run.mkdir()
    trained = resolve_architecture("llama", {"n_layer": 2, "vocab_size": 96}).config
    (run / "config.json").write_text(json.dumps({"train": {"batch_size": 3}, "arch": trained.to_dict()}))
    for name in (str(run), str(run / "config.json")):
        assert resolve_architecture(name).config == trained
    # an architecture key changes a run's architecture only as a labelled what-if (it may be meant for presets)
    what_if = resolve_architecture(str(run), {"n_layer": 4, "n_embd": trained.n_embd})
    assert what_if.config.n_layer == 4 and what_if.label == "run (n_layer=4)"
    # run directories of one name are told apart by their paths, as gptlab report labels them (not run_2, a
    # folder that does not exist); '.' is the folder it names (it was an empty label: a blank column header)
    twin = tmp_path / "other" / "run"
    twin.mkdir(parents=True)
    (twin / "config.json").write_text((run / "config.json").read_text())
    from gptlab.compare import compare

    plain = [tmp_path.name + "/run", "other/run"]
    assert compare([str(run), str(twin)]).labels == plain
    assert compare([str(run), str(twin)], {"n_layer": 4}).labels == [f"{label} (n_layer=4)" for label in plain]
    assert compare([str(run), str(run)]).labels == ["run", "run_2"]  # one folder twice
    monkeypatch.chdir(run)
    assert compare(["."]).labels == ["run"] and compare([str(twin), "."]).labels == ["other/run", plain[0]]
    from gptlab.compare_train import train_and_compare
    from gptlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"is a run directory: --train trains presets and config files"):
        train_and_compare([str(run), "llama"], {"max_iters": 1}, report=False, log=lambda text: None)
    # nor does another start than scratch (one run's weights under every label; a resume showed the last
    # comparison's figures as if trained now) or an evaluation: refused before anything is trained
    for other, said in (({"init_from": str(run)}, "init_from="), ({"init_from": "resume"}, "init_from='resume'"),
                        ({"eval_only": True}, "eval_only=True")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"^{said}.*: compare --train trains each architecture"):
            train_and_compare(["gpt2", "llama"], {"max_iters": 1, **other}, out_dir=tmp_path / "no", report=False)
    assert not (tmp_path / "no").exists()
    (tmp_path / "gpt2").mkdir()  # a run folder named like a preset does not hide the preset
    (tmp_path / "gpt2" / "config.json").write_text((run / "config.json").read_text())
    monkeypatch.chdir(tmp_path)
    assert resolve_architecture("gpt2").config.n_layer == 12
    assert resolve_architecture("./gpt2").config == trained
    tuned = tmp_path / "tune.py"  # a fine-tune is its weights' architecture: not the dataset's vocabulary, nor
    # the file's sizes (they yield to the weights in training), but for its dropout and a shorter context
    tuned.write_text(
        f"dataset = 'mine_char'\ndata_dir = {str(tmp_path / 'data')!r}\ninit_from = 'gpt2-xl'\nn_layer = 2\n"
        "block_size = 256\ndropout = 0.1\n"
    )
    xl = resolve_architecture(str(tuned))
    assert (xl.config.n_layer, xl.config.n_embd, xl.config.vocab_size, xl.config.block_size) == (48, 1600, 50257, 256)
    assert xl.config.dropout == 0.1 and xl.notes == [
        "init_from='gpt2-xl': the architecture is its weights' (n_layer=48, n_head=25, n_embd=1600, "
        "vocab_size=50257), not the config file's"
    ]
    assert main(["flops", str(tuned)]) == 0
    assert "1556.38M parameters, seq_len=256" in capsys.readouterr().out  # (768 positions fewer)
    # the weights' attention backend unless the file sets one, as training takes it (it planned 'sdpa' for a
    # run trained with another)
    import gptlab.model.convert

    manual = dataclasses.replace(trained, attention_backend="manual")
    with monkeypatch.context() as m:
        m.setattr(gptlab.model.convert, "pretrained_architecture", lambda init_from: manual)  # a run's weights
        tuned.write_text("init_from = 'out/manual'\n")
        assert resolve_architecture(str(tuned)).config.attention_backend == "manual"
        tuned.write_text("init_from = 'out/manual'\nattention_backend = 'sdpa'\n")
        assert resolve_architecture(str(tuned)).config.attention_backend == "sdpa"
    tuned.write_text("init_from = 'someone/not-here'\nn_layer = 2\n")  # unknown without its download: said
    unknown = resolve_architecture(str(tuned))
    assert unknown.config.n_layer == 2 and "cannot be read here" in unknown.notes[0]
    assert main(["plan", str(run)]) == 0
    assert "micro-batch 3 x" in capsys.readouterr().out  # the run's own batch
    (run / "config.json").write_text(json.dumps({"train": {"dtype": "auto"}, "arch": trained.to_dict()}))
    startup = {"type": "startup", "hardware": {"dtype": "float32"}}  # dtype=auto, as resolved on a CPU
    (run / "log.jsonl").write_text(json.dumps(startup) + "\n")
    assert main(["plan", str(run)]) == 0
    out = capsys.readouterr().out
    assert "autocast float32" in out and "ddp x8" in out  # no world size recorded: plan's default
    startup["training"] = {"world_size": 1}  # one process: ddp x1 would plan nothing of use, the default stays
    (run / "log.jsonl").write_text(json.dumps(startup) + "\n")
    assert main(["plan", str(run)]) == 0
    assert "ddp x8" in capsys.readouterr().out
    # a run's own ranks (its startup record's), as its planned_peak_gb counted them; --world_size still wins
    startup["training"] = {"world_size": 2}
    (run / "log.jsonl").write_text(json.dumps(startup) + "\n")
    assert main(["plan", str(run)]) == 0
    assert "ddp x2" in capsys.readouterr().out
    assert main(["plan", str(run), "--world_size", "4"]) == 0
    assert "ddp x4" in capsys.readouterr().out


def test_trained_runs_mfu_is_that_of_the_throughput_beside_it(tmp_path: Path) -> None:
    """The table's tokens/s is the median past warm-up; its MFU was the mean, another statistic (8% off the
    MFU of that throughput in a review's run): both are medians."""
    from gptlab.compare_train import TRAIN_ROWS, _result

    summary = {"tokens_per_sec": {"mean": 14668.0, "median": 15318.0}, "mfu": {"mean": 0.1547, "median": 0.1431}}
    startup = {"hardware": {"device": "cpu"}, "training": {"total_tokens": 1}}
    result = _result(tmp_path, summary, startup)
    assert (result["tokens_per_sec"], result["mfu"]) == (15318.0, 0.1431)
    assert dict(TRAIN_ROWS)["mfu"] == "MFU (median past warm-up)"


def test_throughput_row_states_the_mfu_it_assumes() -> None:
    """--mfu 0.355 is 35.5%, and --mfu 0.004 is not 0% (review: the row label rounds to whole percent)."""
    for mfu, text in ((0.355, "35.5%"), (0.004, "0.4%")):
        labels = dict(compare(["gpt2"], mfu=mfu).rows())
        assert text in labels["tokens_per_sec_per_gpu"], labels["tokens_per_sec_per_gpu"]


def test_config_file_on_the_embedded_dataset_gets_its_vocabulary_before_preparation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/train_stdlib_char.py trains a 128-token vocabulary (stdlib_char is embedded and prepared by
    training itself); in a fresh checkout the table must not describe a 50304-token model."""
    from gptlab.compare import resolve_architecture

    config = Path(__file__).resolve().parents[1] / "config" / "train_stdlib_char.py"
    monkeypatch.chdir(tmp_path)  # no data/ here: nothing prepared yet
    assert resolve_architecture(str(config)).config.vocab_size == 128


def test_a_tilde_data_dir_is_where_training_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config file's data_dir='~/mydata': training reads the home folder's, compare built the dataset in a
    folder named '~' here and tabulated another vocabulary source."""
    from gptlab.compare import dataset_vocab_size

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert dataset_vocab_size({"dataset": "stdlib_char", "data_dir": "~/mydata"}) is not None
    assert (tmp_path / "home" / "mydata" / "stdlib_char" / "meta.json").is_file() and not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    ("config_json", "said"),
    [
        (None, r"^'.*run' is a directory without a config.json, not a gptlab run directory: name a run directory"),
        ('{"arch": {"n_layer": 2}', r"^'.*config.json' cannot be read as a run's config.json \(Expecting"),
        ("[1]", r"^'.*config.json' is not a gptlab run's config.json: it has no arch record"),
        ('{"arch": [1, 2]}', r"^'.*config.json' is not a gptlab run's config.json: it has no arch record"),
    ],
)
def test_a_folder_that_is_no_run_directory_says_so(tmp_path: Path, config_json: str | None, said: str) -> None:
    """A damaged run directory (or a folder without a run) was read as a preset's name: "arch_preset='out/run'
    is not one of ...", or a traceback for an arch record that is not a mapping."""
    from gptlab.compare import resolve_architecture
    from gptlab.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    if config_json is not None:
        (run / "config.json").write_text(config_json)
    with pytest.raises(ConfigError, match=said):
        resolve_architecture(str(run))
    assert main(["flops", str(run)]) == 2


def test_compare_train_passes_activation_checkpointing_on(tmp_path: Path) -> None:
    """compare's own --activation_checkpointing (the table's plan) was a store_true flag: the training key
    spelled --activation_checkpointing=True was refused, and the bare flag trained without it."""
    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    small = ["--n_layer=1", "--n_embd=16", "--block_size=16", "--batch_size=2", "--max_iters=1"]
    for flag in ("--activation_checkpointing=True", "--activation_checkpointing"):
        out = tmp_path / flag.replace("=", "_").strip("-")
        argv = ["compare", "gpt2", "--train", f"--out_dir={out}", f"--data_dir={tmp_path / 'data'}", *small, flag]
        assert main(argv) == 0
        assert json.loads((out / "gpt2" / "config.json").read_text())["train"]["activation_checkpointing"] is True


def test_compare_train_under_torchrun_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every rank ran its own compare --train into one folder: the second was refused as 'in use
    by another training', which sent users looking for a stray process. Now the line says what to do instead."""
    from gptlab.compare_train import train_and_compare
    from gptlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--arch_preset: compare takes presets by name"):  # every column llama
        train_and_compare(["gpt2", "hybrid"], {"arch_preset": "llama"}, report=False, log=lambda text: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^compare --train trains its runs one after another in one process, not "):
        train_and_compare(["gpt2", "llama"], {"max_iters": 1}, report=False, log=lambda text: None)


def test_compare_names_its_presets_positionally(capsys: pytest.CaptureFixture[str]) -> None:
    """--arch_preset was refused among 'not architecture keys (training keys need --train)': it is neither."""
    assert main(["compare", "gpt2", "--arch_preset=llama"]) == 2
    assert "--arch_preset: compare takes presets by name (gptlab compare gpt2 llama ...)" in capsys.readouterr().err
    assert main(["compare", "gpt2", "--n_layr=3"]) == 2
    assert "n_layr: not an architecture key (did you mean 'n_layer'?)" in capsys.readouterr().err


def test_a_checkpoint_or_hugging_face_folder_is_its_weights_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gptlab arch, flops, plan and compare took a ckpt.pt for a config file ('not a .py file') and an export's
    Hugging Face folder for a run ('not a gptlab run's config.json'): each is the architecture its record gives."""
    pytest.importorskip("safetensors")
    from gptlab.compare import resolve_architecture

    config = get_preset_config("llama", n_layer=2, n_embd=64, n_head=4, block_size=32, vocab_size=128)
    model = ConfigurableGPT(config)
    (tmp_path / "run").mkdir()
    torch.save(
        {"format": "gptlab", "arch": config.to_dict(), "model": model.state_dict()}, tmp_path / "run" / "ckpt.pt"
    )
    model.save_pretrained(tmp_path / "hf")
    for name in (str(tmp_path / "run" / "ckpt.pt"), str(tmp_path / "hf")):
        read = resolve_architecture(name).config  # (the Hugging Face form spells out n_kv_head and d_ff)
        assert (read.get_architecture_name(), read.n_layer, read.ffn_hidden_dim, read.kv_heads) == (
            config.get_architecture_name(),
            2,
            config.ffn_hidden_dim,
            config.kv_heads,
        ), name
        for command in ("arch", "flops", "plan"):
            assert main([command, name]) == 0, (command, name)
            assert "2 layers" in capsys.readouterr().out or command != "arch"
    what_if = resolve_architecture(str(tmp_path / "run" / "ckpt.pt"), {"n_layer": 4})
    assert what_if.config.n_layer == 4 and what_if.label == "run (n_layer=4)"
    assert main(["compare", str(tmp_path / "hf"), "llama"]) == 0
    assert main(["compare", str(tmp_path / "hf"), "llama", "--train", "--max_iters=1"]) == 2  # not trained anew
    assert "is a checkpoint or model folder: --train trains presets and config files" in capsys.readouterr().err
    model.save_pretrained(tmp_path / "gpt2")  # a Hub clone named like a preset: the preset wins, as for runs
    monkeypatch.chdir(tmp_path)
    assert resolve_architecture("gpt2").config.n_layer == 12
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert main(["flops", str(tmp_path / "notes.pt")]) == 2
    assert "no architecture can be read from it" in capsys.readouterr().err
    # nanoGPT's out_dir (a ckpt.pt, no config.json) as train, sample and export take it: it was 'a directory
    # without a config.json, not a gptlab run directory'
    from gptlab.model.loading import rename_keys, reversed_names
    from gptlab.model.nanogpt import NANOGPT_NAMES

    gpt2 = ConfigurableGPT(get_preset_config("gpt2", n_layer=2, n_embd=32, n_head=2, block_size=16, vocab_size=64))
    (tmp_path / "out-nano").mkdir()
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=64, dropout=0.0)
    state = rename_keys(gpt2.state_dict(), reversed_names(NANOGPT_NAMES))
    torch.save({"model": state, "model_args": args, "iter_num": 5}, tmp_path / "out-nano" / "ckpt.pt")
    assert resolve_architecture("out-nano").config.n_embd == 32 and main(["compare", "out-nano", "gpt2"]) == 0
    # plan takes its batch and precision from its config, as a gptlab run's (it planned 12 x bfloat16)
    capsys.readouterr()
    nano = dict(batch_size=8, gradient_accumulation_steps=1, device="cpu", dtype="bfloat16", wandb_log=False)
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):  # nanoGPT ignores dtype on a CPU
        record = {"model": state, "model_args": args, "iter_num": 5, "config": {**nano, "device": device}}
        torch.save(record, tmp_path / "out-nano" / "ckpt.pt")
        assert main(["plan", "out-nano"]) == 0
        assert f"micro-batch 8 x 16 tokens, autocast {dtype}" in capsys.readouterr().out


def test_training_cells_are_formatted_as_the_readme_shows_them() -> None:
    """The Training table's cells, by hand: MFU a percentage, token counts grouped, wall time to a tenth of a
    second, losses to four decimals, an unmeasured figure n/a."""
    from gptlab.compare_train import format_result

    assert format_result("mfu", 0.1431) == "14.31%"
    assert format_result("tokens_trained", 154112) == "154,112"
    assert format_result("tokens_per_sec", 116325.4) == "116,325"
    assert format_result("total_time_s", 1.64) == "1.6"
    assert format_result("final_val_loss", 2.51944) == "2.5194"
    assert format_result("mfu", None) == "n/a"


def test_the_training_tables_rows_are_the_readmes(tmp_path: Path) -> None:
    """README.md's `compare --train` table lists every result row, in order: none may be lost from the table."""
    from gptlab.compare import Comparison, resolve_architecture

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("| result | gpt2 | llama | hybrid |")
    shown = [line.split(" | ")[0].lstrip("| ") for line in readme[start : readme.index("\n\n", start)].splitlines()]
    arch = resolve_architecture("gpt2")
    comparison = Comparison([arch], {}, [{}], training=[{"status": "completed"}])
    header, rows = comparison.training_table()
    assert [header[0], *(r[0] for r in rows)] == [shown[0], *shown[2:]]


def test_a_trained_runs_result_takes_each_figure_from_its_own_summary_key(tmp_path: Path) -> None:
    """Every result cell from its own summary key (a best val loss below the final one, as after overfitting);
    a summary without tokens_seen (an older gptlab's) gives the planned tokens."""
    from gptlab.compare_train import _result

    summary = {
        "status": "completed",
        "final_val_loss": 2.6,
        "best_val_loss": 2.4,
        "unigram_baseline_loss": 3.1,
        "tokens_seen": 4096,
        "tokens_per_sec": {"mean": 900.0, "median": 1000.0},
        "mfu": None,
        "peak_memory_gb": 1.5,
        "planned_peak_gb": 0.25,
        "total_time_s": 12.5,
    }
    startup = {"hardware": {"device": "cpu"}, "training": {"total_tokens": 8192}}
    result = _result(tmp_path, summary, startup)
    assert (result["final_val_loss"], result["best_val_loss"], result["unigram_baseline_loss"]) == (2.6, 2.4, 3.1)
    assert (result["tokens_trained"], result["tokens_per_sec"], result["mfu"]) == (4096, 1000.0, None)
    assert (result["peak_memory_gb"], result["total_time_s"], result["device"]) == (0.25, 12.5, "cpu")
    cuda = _result(
        tmp_path,
        {k: v for k, v in summary.items() if k != "tokens_seen"},
        {**startup, "hardware": {"device": "cuda:0"}},
    )
    assert (cuda["peak_memory_gb"], cuda["tokens_trained"]) == (1.5, 8192)


def test_a_shorter_max_iters_shortens_the_warmup_to_a_tenth(tmp_path: Path) -> None:
    """--max_iters=50: the schedule decays over 50 iterations after a warmup of 5 (a tenth); a long run keeps
    the default warmup of 20."""
    from gptlab.compare import resolve_architecture
    from gptlab.compare_train import _run_values

    arch = resolve_architecture("gpt2")
    short = _run_values(arch, {"max_iters": 50}, tmp_path)
    assert (short["lr_decay_iters"], short["warmup_iters"]) == (50, 5)
    long = _run_values(arch, {"max_iters": 1000}, tmp_path)
    assert (long["lr_decay_iters"], long["warmup_iters"]) == (1000, 20)
    assert _run_values(arch, {"max_iters": 50, "warmup_iters": 7}, tmp_path)["warmup_iters"] == 7  # typed: as given


def test_a_preset_named_twice_trains_that_preset_in_two_folders(tmp_path: Path) -> None:
    """`compare gpt2 gpt2 --train` (two seeds, say): the second column is labelled gpt2_2, and still trains the
    gpt2 preset (there is no preset gpt2_2), into its own folder."""
    from gptlab.compare import _unique_labels, resolve_architecture
    from gptlab.compare_train import _run_values
    from gptlab.config.resolve import resolve_run_config

    archs = [resolve_architecture("gpt2"), resolve_architecture("gpt2")]
    _unique_labels(archs)
    values = [_run_values(a, {}, tmp_path) for a in archs]
    assert [v["arch_preset"] for v in values] == ["gpt2", "gpt2"]
    assert [v["out_dir"] for v in values] == [str(tmp_path / "gpt2"), str(tmp_path / "gpt2_2")]
    runs = [resolve_run_config(v, typed=set()) for v in values]  # as train_and_compare resolves them
    assert runs[0].arch == runs[1].arch


def test_compare_train_refuses_architectures_of_different_tokens_per_iteration(tmp_path: Path) -> None:
    """A config file's block_size of 32 beside a preset's 64 (the shrunk default): two architectures that would
    train on different tokens are refused before training, with each one's tokens per iteration (batch 4 x
    accumulation 2 x block)."""
    from gptlab.compare_train import train_and_compare
    from gptlab.errors import ConfigError

    config = tmp_path / "short.py"
    config.write_text("arch_preset = 'gpt2'\nblock_size = 32\n")
    prepare_dataset("stdlib_char", data_dir=tmp_path / "data")
    overrides = dict(n_layer=1, n_embd=16, batch_size=4, gradient_accumulation_steps=2, max_iters=1,
                     data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "cmp"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"different tokens per iteration \{'gpt2': 512, 'short': 256\}"):
        train_and_compare(["gpt2", str(config)], overrides, report=False, log=lambda text: None)
    assert not (tmp_path / "cmp").exists()


def test_memory_cells_of_a_hundred_gb_and_more_are_whole_numbers() -> None:
    from gptlab.compare import GB, Comparison

    assert [Comparison.format_value("memory.fsdp", gb * GB) for gb in (99.4, 100.0, 100.4)] == ["99.4", "100", "100"]
    assert [Comparison.format_value("memory.fsdp", gb * GB) for gb in (99.94, 99.96)] == ["99.9", "100"]  # not '100.'
    assert Comparison.format_value("memory.fsdp", 0.00683 * GB) == "0.00683"


def test_the_throughput_row_takes_the_peak_of_the_dtype_the_table_plans() -> None:
    """--dtype float32 trains on an H100's TF32 tensor cores: 494.5 dense TFLOPS, half its bf16 989.5 (the
    datasheet's); the row says tf32. --mfu 1 is a valid fraction."""
    from gptlab.telemetry import compute_flops

    config = get_preset_config("gpt2")
    per_token = compute_flops(config).flops_per_token
    fp32 = compare(["gpt2"], gpu="H100-SXM", mfu=0.4, dtype="float32")
    assert fp32.figures[0]["tokens_per_sec_per_gpu"] == pytest.approx(0.4 * 494.5e12 / per_token, rel=1e-12)
    assert "tokens/s per GPU (H100-SXM tf32 @ 40% MFU)" in dict(fp32.rows()).values()
    full = compare(["gpt2"], gpu="H100-SXM", mfu=1.0, world_size=4)
    assert full.figures[0]["tokens_per_sec_per_gpu"] == pytest.approx(989.5e12 / per_token, rel=1e-12)
    assert full.figures[0]["tokens_per_sec_total"] == pytest.approx(4 * 989.5e12 / per_token, rel=1e-12)


def test_memory_rows_plan_the_world_size_and_micro_batch_asked_for() -> None:
    """--world_size 2 --batch_size 3: every mode's peak is the planner's for 2 GPUs and micro-batch 3, not the
    defaults' 8 and 12 (ZeRO-1 and FSDP shard over the world size)."""
    config = get_preset_config("gpt2", n_layer=4)
    figures = compare(["gpt2"], {"n_layer": 4}, world_size=2, batch_size=3).figures[0]
    plans = plan_all_modes(config, world_size=2, batch_size=3, dtype="bfloat16", activation_checkpointing=False)
    assert {m: figures[f"memory.{m}"] for m in plans} == {m: p.mode.peak for m, p in plans.items()}
    default = compare(["gpt2"], {"n_layer": 4}).figures[0]
    assert figures["memory.fsdp"] != default["memory.fsdp"] and figures["memory.none"] != default["memory.none"]


def test_csv_gives_an_unmeasured_training_figure_as_an_empty_cell() -> None:
    """docs/compare_and_report.md: in --format csv, n/a is an empty cell (a spreadsheet's missing value)."""
    import csv

    result = compare(["gpt2"])
    result.training = [{"status": "completed", "mfu": None, "tokens_trained": 2048}]
    rows = {r[1]: r for r in csv.reader(result.to_csv().splitlines()) if r[0] == "training"}
    assert rows["mfu"] == ["training", "mfu", "MFU (median past warm-up)", ""]
    assert rows["tokens_trained"][3] == "2048"


def test_a_rate_of_warm_up_steps_only_says_so() -> None:
    """tokens/s and MFU are medians past the first 2 logged steps; a run that logged no more (a compiled one's
    compile step among them: 31 tokens/s beside 40,000 uncompiled) has only those, said in its cells."""
    from gptlab.compare_train import _result, result_cell

    startup = {"hardware": {"device": "cpu"}, "training": {"total_tokens": 1024}}
    summary = {"tokens_per_sec": {"median": 31.0}, "mfu": {"median": 0.01}, "iterations_excluded_as_warmup": 0}
    short = _result(Path("run"), summary, startup)
    said = " (warm-up included: 2 or fewer steps logged)"
    assert (result_cell(short, "tokens_per_sec"), result_cell(short, "mfu")) == ("31" + said, "1.00%" + said)
    longer = _result(Path("run"), {**summary, "iterations_excluded_as_warmup": 2}, startup)
    assert (result_cell(longer, "tokens_per_sec"), result_cell(longer, "mfu")) == ("31", "1.00%")
