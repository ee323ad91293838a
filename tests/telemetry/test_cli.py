"""``gptlab flops``, ``plan`` and ``peak`` through ``register`` on a fresh parser."""

from __future__ import annotations

import argparse

import pytest
import torch

from gptlab.errors import ConfigError
from gptlab.telemetry.cli import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptlab")
    register(parser.add_subparsers(dest="command", required=True))
    args, extra = parser.parse_known_args(argv)
    return args.func(args, extra)


def test_flops_prints_table_conventions_and_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["flops", "gpt2", "--gpu", "A100-SXM", "--mfu", "0.35"]) == 0
    out = capsys.readouterr().out
    for text in ("qkv_proj", "attn_scores (full-square)", "attn_scores (causal)", "out_proj", "lm_head", "softmax"):
        assert text in out
    assert "854.655 MFLOP" in out and "798.087 MFLOP" in out  # both conventions, labelled
    assert "attention/FFN FLOPs per layer: 0.833" in out
    assert "127,771 tokens/s" in out  # 0.35 * 312e12 / 854,654,976
    # a shorter sequence: fewer attention FLOPs per token, so more tokens/s (the figure at that length)
    from gptlab import get_preset_config
    from gptlab.telemetry.mfu import expected_tokens_per_sec

    assert run(["flops", "gpt2", "--gpu", "A100-SXM", "--mfu", "0.35", "--seq_len", "256"]) == 0
    short = expected_tokens_per_sec(get_preset_config("gpt2"), 312e12, 0.35, seq_len=256)
    assert f"{short:,.0f} tokens/s" in capsys.readouterr().out and short > 127_771


def test_flops_takes_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["flops", "llama", "--n_kv_head=4", "--n_layer=6", "--seq_len", "512"]) == 0
    out = capsys.readouterr().out
    assert "gqa4" in out and "seq_len=512" in out and "GQA: K,V 4/12 heads" in out


def test_flops_counts_the_hardware_flops_of_the_device_type(capsys: pytest.CaptureFixture[str]) -> None:
    """A CPU run's HFU (gptlab flops RUN_DIR --device_type=cpu): SDPA's CPU backward recomputes nothing, so with
    dropout HFU is MFU's count, as the run logs it; flops always counted CUDA's recomputed QK^T."""
    from gptlab import get_preset_config
    from gptlab.telemetry.flops import compute_flops
    from gptlab.units import format_si

    config = get_preset_config("gpt2", dropout=0.1, n_layer=2)
    hfu = {}
    for device_type in ("cuda", "cpu"):
        assert run(["flops", "gpt2", "--dropout=0.1", "--n_layer=2", f"--device_type={device_type}"]) == 0
        hfu[device_type] = compute_flops(config, device_type=device_type).hfu_flops_per_token
        line = next(x for x in capsys.readouterr().out.splitlines() if "(HFU: + recomputation)" in x)
        assert line.endswith(f" {format_si(hfu[device_type], 'FLOP')}"), line
    assert hfu["cpu"] == compute_flops(config).flops_per_token < hfu["cuda"]


def test_flops_bad_numbers_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for gpu in (["--gpu", "H100-SXM"], []):
        with pytest.raises(ConfigError, match="num_gpus=0 is invalid"):
            run(["flops", "gpt2", *gpu, "--num_gpus", "0"])
        assert capsys.readouterr().out == ""  # refused before the table is printed
    with pytest.raises(ConfigError, match="seq_len=0 is invalid"):
        run(["flops", "gpt2", "--seq_len", "0"])
    with pytest.raises(ConfigError, match=r"seq_len=4096 exceeds block_size=1024.*--block_size=4096"):
        run(["flops", "gpt2", "--seq_len", "4096"])
    assert run(["flops", "gpt2", "--seq_len", "4096", "--block_size=4096"]) == 0


def test_float32_estimate_uses_the_tf32_peak_training_runs_at(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["flops", "gpt2", "--gpu", "H100-SXM", "--dtype", "float32", "--mfu", "0.4"]) == 0
    assert "494.5 TFLOPS dense tf32" in capsys.readouterr().out


def test_plan_prints_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "gpt2", "--batch_size", "4", "--block_size", "256", "--world_size", "4", "--dtype", "bfloat16"]
    assert run([*argv, "--activation_checkpointing", "--gpu", "H100-SXM", "--mfu", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "none x1" in out and "ddp x4" in out and "zero1 x4" in out and "fsdp x4" in out
    for row in (
        "parameters",
        "gradients",
        "optimizer",
        "activations",
        "loss_backward",
        "peak (estimate)",
        "sum of all",
    ):
        assert row in out
    assert "micro-batch 4 x 256 tokens" in out and "activation checkpointing True" in out
    assert "4 x H100-SXM" in out and "tokens/s" in out
    assert "memory per GPU in GB (1e9 bytes)" in out
    # a test-sized model in MB: every GB cell read 0.000
    assert run(["plan", "gpt2", "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32", "--vocab_size=100"]) == 0
    out = capsys.readouterr().out
    assert "memory per GPU in MB (1e6 bytes)" in out
    peak = next(line for line in out.splitlines() if line.startswith("peak (estimate)")).split()[2]
    assert float(peak) > 0.1


def test_plan_says_what_fits(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["plan", "gpt2", "--batch_size", "12", "--world_size", "8", "--gpu_memory_gb", "12"]) == 0
    out = capsys.readouterr().out
    assert "none x1: planned peak 13.3 GB per GPU exceeds the device's 12.0 GB" in out
    assert "--loss_chunk_size=1024 -> 6.4 GB (fits)" in out and "--use_fsdp=True ->" in out
    assert run(["plan", "gpt2", "--batch_size", "12", "--loss_chunk_size", "1024", "--gpu_memory_gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "chunked loss (1024 tokens)" in out and "none x1: fits in 80 GB" in out


@pytest.mark.parametrize("checkpointing", [[], ["--activation_checkpointing"]])
def test_plans_activations_line_adds_up_to_its_row(checkpointing: list[str], capsys: pytest.CaptureFixture) -> None:
    """The line under the table breaks the activations row down as it is made: under checkpointing each
    block keeps its input and weight copy and one block is recomputed (it showed the uncheckpointed split)."""
    import re

    assert run(["plan", "gpt2", "--batch_size", "12", *checkpointing]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = float(next(line for line in lines if line.startswith("activations ")).split()[1])
    parts = next(line for line in lines if line.startswith(("activations:", "activations (")))
    assert parts.startswith("activations (checkpointed): " if checkpointing else "activations: 12 layers x")
    layers, kept = re.search(r"(\d+) layers x ([\d.]+) GB", parts).groups()
    total = int(layers) * float(kept) + float(re.search(r"other ([\d.]+) GB", parts).group(1))
    if checkpointing:
        total += float(re.search(r"recomputed in backward ([\d.]+) GB", parts).group(1))
    assert total == pytest.approx(row, abs=2e-3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flops", "gtp2"], "did you mean 'gpt2'"),
        (["flops", "gpt2", "--n_layers=4"], "did you mean 'n_layer'"),
        (["flops", "gpt2", "--gpu", "B300"], "did you mean 'B200'"),
        (["flops", "gpt2", "--gpu", "V100-SXM2"], r"no dense bf16 peak .*: it has --dtype=float16 \(125 TFLOPS\)"),
        (["flops", "gpt2", "--gpu", "A100-SXM", "--mfu", "40"], "mfu=40"),
        (["plan", "gpt2", "--dtype", "int8"], "dtype='int8'"),
        (["flops", "gpt2", "--dtype", "fp64"], "dtype='fp64' is not one of"),  # even where unused (no --gpu)
        (["plan", "gpt2", "--gpu", "H100-SXM", "--mfu", "2"], "mfu=2"),
        (["plan", "llama", "--batch_sze=12"], "unknown option --batch_sze \\(did you mean 'batch_size'\\?\\)"),
        (["peak", "--n_layer=4"], "no architecture keys"),
        (["flops", "gpt2", "--mfu", "5"], "mfu=5"),  # checked without --gpu too
        (["flops", "gpt2", "--mfu", "0.5", "--num_gpus", "8"], "--mfu and --num_gpus set the .* needs --gpu"),
        (["plan", "gpt2", "--gpu_memory_gb", "nan"], "gpu_memory_gb=nan is invalid"),
        (["plan", "gpt2", "--gpu_memory_gb", "0"], "gpu_memory_gb=0.0 is invalid"),
        (["plan", "gpt2", "--loss_chunk_size", "-1"], "loss_chunk_size=-1 is invalid"),
        (["plan", "gpt2", "--residual_dtype", "bf16"], "residual_dtype='bf16' is not one of .*did you mean 'bfloat16'"),
        (["plan", "gpt2", "--dtype", "float32", "--residual_dtype", "bfloat16"], "invalid with dtype='float32'"),
        (["plan", "config/full_llama_124m.py", "--learning_rate=1.0"], "--learning_rate is a training setting"),
        (["plan", "config/full_llama_124m.py", "--gradient_accumulation_steps=4"], "is a training setting"),
        (["peak", "--size", "0"], "size=0 is invalid"),
        (["peak", "--iters", "-1"], "iters=-1 is invalid"),
        (["peak", "--device", "mps"], "MPS .* is not available here"),
    ],
)
def test_user_mistakes_are_config_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=message):
        run(argv)
    assert capsys.readouterr().out == ""  # refused before any table is printed


@pytest.mark.parametrize(("flops", "shown"), [(8.7e8, "0.00087"), (3.4e8, "0.00034"), (412.345e12, "412.3")])
def test_peak_suggests_a_peak_tflops_training_takes(
    flops: float, shown: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three decimals printed a CPU's 0.00087 TFLOPS as 0.001 (15% off) and below 0.0005 as 0.000, which
    training refuses (peak_tflops must be > 0)."""
    from gptlab.config.train import TrainConfig
    from gptlab.telemetry import hardware

    monkeypatch.setattr(hardware, "measure_peak_flops", lambda *a, **k: flops)
    assert run(["peak", "--device", "cpu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert f"measured {shown} TFLOPS" in out and f"use --peak_tflops={shown} " in out
    TrainConfig(peak_tflops=float(shown))  # taken


def test_peak_times_a_matmul(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["peak", "--device", "cpu", "--dtype", "float32", "--size", "128", "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "--peak_tflops=" in out
    # a CPU's figure is its threads': said, so that training measures against the same (torchrun: 1 a rank)
    assert f"cpu (fp32, {torch.get_num_threads()} threads): measured" in out
    assert "(train with as many threads: torchrun gives each rank 1)" in out


def test_plan_of_a_bf16_residual_stream(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--residual_dtype=bfloat16 (or a config file's) plans the stream and its gradients in bf16: with activation
    checkpointing each block keeps its input in 2 bytes instead of 4, so llama's activations fall."""

    def activations(argv: list[str]) -> float:
        assert run(["plan", *argv, "--activation_checkpointing", "--world_size", "1"]) == 0
        out = capsys.readouterr().out
        return float(next(line for line in out.splitlines() if line.startswith("activations ")).split()[1])

    float32_stream = activations(["llama"])
    assert activations(["llama", "--residual_dtype", "bfloat16"]) < float32_stream
    config = tmp_path / "run.py"
    config.write_text("arch_preset = 'llama'\ndtype = 'bfloat16'\nresidual_dtype = 'bfloat16'\n")
    assert activations([str(config)]) < float32_stream
    assert run(["plan", str(config)]) == 0
    assert "autocast bfloat16 (residual stream too)" in capsys.readouterr().out
    assert activations([str(config), "--residual_dtype", "auto"]) == float32_stream  # an option still wins


def test_plan_takes_a_config_files_training_settings(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config file's batch, dtype, checkpointing, chunked loss and accumulation are what plan assumes
    unless an option says otherwise (they were the options' defaults: micro-batch 12, bfloat16, ...)."""
    config = tmp_path / "run.py"
    config.write_text(
        "arch_preset = 'gpt2'\nn_layer = 2\nbatch_size = 64\ndtype = 'float32'\nactivation_checkpointing = True\n"
        "loss_chunk_size = 256\ngradient_accumulation_steps = 16\n"
    )
    assert run(["plan", str(config), "--world_size", "4"]) == 0
    out = capsys.readouterr().out
    assert "micro-batch 64 x 1024 tokens, autocast float32, AdamW, activation checkpointing True" in out
    assert "chunked loss (256 tokens)" in out
    assert (
        run(["plan", str(config), "--batch_size", "2", "--dtype", "bfloat16", "--activation_checkpointing=False"]) == 0
    )
    out = capsys.readouterr().out
    assert "micro-batch 2 x 1024 tokens, autocast bfloat16, AdamW, activation checkpointing False" in out


def test_plan_of_a_cpu_config_file_plans_its_float32(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with device = 'cpu' (dtype left 'auto') trains in float32 with a CPU's kernels: plan said
    bfloat16, 36% under the run's own plan; --device_type=cpu alone resolves 'auto' the same way."""
    config = tmp_path / "cpu.py"
    config.write_text("arch_preset = 'gpt2'\nn_layer = 2\nvocab_size = 256\nbatch_size = 4\ndevice = 'cpu'\n")
    assert run(["plan", str(config), "--world_size", "1"]) == 0
    assert "autocast float32" in capsys.readouterr().out
    assert run(["plan", str(config), "--world_size", "1", "--device_type", "cuda"]) == 0  # an option still wins
    assert "autocast bfloat16" in capsys.readouterr().out
    assert run(["plan", "gpt2", "--n_layer=2", "--world_size", "1", "--device_type", "cpu"]) == 0
    assert "autocast float32" in capsys.readouterr().out
    assert run(["plan", "gpt2", "--n_layer=2", "--world_size", "1"]) == 0
    assert "autocast bfloat16" in capsys.readouterr().out  # a GPU's, as before


def test_plan_of_a_cpu_run_with_dropout_plans_the_math_sdpa(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """nanoGPT's shakespeare_char config on a CPU (dropout 0.2): SDPA takes the math path, which stores the (T, T)
    probabilities; the plan said a fused kernel's activations, 2.3x under the run's memory. A GPU's fused kernels
    take dropout without them; --sdpa_backend=math (an option or the file's) plans the math path anywhere."""

    def activations(argv: list[str]) -> tuple[float, str]:
        assert run(["plan", *argv, "--world_size", "1"]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith("activations "))
        return float(row.split()[1]), out

    config = tmp_path / "shakespeare.py"
    config.write_text(
        "n_layer = 2\nn_head = 6\nn_embd = 384\nblock_size = 256\nbatch_size = 64\ndropout = 0.2\n"
        "vocab_size = 65\ndevice = 'cpu'\n"
    )
    cpu, out = activations([str(config)])
    assert "sdpa attention (math path: the T x T probabilities stored)" in out
    gpu, out = activations([str(config), "--device_type", "cuda", "--dtype", "float32"])
    assert "math path" not in out and cpu > 1.5 * gpu
    math, out = activations([str(config), "--device_type", "cuda", "--dtype", "float32", "--sdpa_backend", "math"])
    assert "math path" in out and math > 1.5 * gpu
    (tmp_path / "math.py").write_text(config.read_text() + "sdpa_backend = 'math'\ndropout = 0.0\n")
    assert "math path" in activations([str(tmp_path / "math.py")])[1]
    with pytest.raises(ConfigError, match="sdpa_backend='fast' is not one of"):
        run(["plan", "gpt2", "--sdpa_backend", "fast"])


def test_plan_of_a_config_file_runs_all_micro_steps_on_one_gpu(tmp_path, capsys) -> None:
    """The 'none x1' column is train.py on one GPU: all of the file's gradient_accumulation_steps (the
    gradients are held across them), as the startup plan of that run says; the others share them out."""
    from gptlab.config.model import get_preset_config
    from gptlab.telemetry.planner import plan_memory

    config = tmp_path / "acc.py"
    config.write_text(
        "arch_preset = 'gpt2'\nn_layer = 2\nvocab_size = 256\nbatch_size = 4\ngradient_accumulation_steps = 8\n"
    )
    assert run(["plan", str(config), "--world_size", "8"]) == 0
    out = capsys.readouterr().out
    arch = get_preset_config("gpt2", n_layer=2, vocab_size=256)
    single = plan_memory(arch, batch_size=4, grad_accum_steps=8, parallel="none")
    peaks = next(line for line in out.splitlines() if line.startswith("peak (estimate)")).split()[2:]
    assert float(peaks[0]) == round(single.mode.peak / 1e9, 3)
    assert "8 on one GPU, 1 per GPU on 8" in out
    assert run(["plan", str(config), "--world_size", "3"]) == 0
    assert "train.py refuses gradient_accumulation_steps=8 on 3 GPUs" in capsys.readouterr().out


def test_plan_checks_a_config_files_training_settings_as_train_py(tmp_path, capsys) -> None:
    config = tmp_path / "bad.py"
    cases = {
        "batch_size = '12'": "batch_size='12' has type str, expected int",
        "gradient_accumulation_steps = -4": "gradient_accumulation_steps=-4 is invalid",
        "activation_checkpointing = 'no'": "activation_checkpointing='no' has type str",
    }
    for line, message in cases.items():  # each named by the file's key (a '12' crashed; 'no' planned as on)
        config.write_text(f"arch_preset = 'gpt2'\nn_layer = 1\n{line}\n")
        with pytest.raises(ConfigError, match=message):
            run(["plan", str(config)])


def test_plan_columns_stay_apart_for_huge_values(capsys: pytest.CaptureFixture[str]) -> None:
    """A billion-sequence micro-batch printed 'activations 551313408.247551313408.247...': one number to a reader."""
    assert run(["plan", "gpt2", "--batch_size=1000000000"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("activations "))
    assert len(row.split()) == 1 + 4  # the label and the four modes' figures
