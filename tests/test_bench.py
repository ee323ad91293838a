"""The bench/ scripts run and print their tables (tiny sizes, one step: a smoke test, never a timing)."""

from __future__ import annotations

import copy
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.model import loss_kernel
from tests.together import run_together
from tests.train.conftest import data_dir  # noqa: F401 (a fixture, used by name)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "16", "--batch_size", "2"]


def bench(script: str, *args: str, cwd: Path, code: int = 0) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=300)  # fmt: skip
    assert res.returncode == code, res.stderr[-2000:]
    return res.stdout


def bench_in_process(
    argv: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``python bench/SCRIPT ARGS`` run in this process (its __main__ block, argv, folder on sys.path, working
    directory): the exit code, stdout and stderr. Spares the seconds a fresh interpreter takes to import torch."""
    script = ROOT / "bench" / argv[0]
    monkeypatch.setattr(loss_kernel, "USE_TRITON", loss_kernel.USE_TRITON)  # the scripts set it: put back after
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script), *argv[1:]])
    monkeypatch.chdir(cwd)
    try:
        runpy.run_path(str(script), run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    out, err = capfd.readouterr()
    return code, out, err


def test_train_step_table_json_and_profile(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    record = tmp_path / "r.json"
    out = bench("train_step.py", *TINY, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "run"),
                "--iters", "1", "--rounds", "1", "--warmup", "0", "--profile", "1", "--loss_chunk_size", "8",
                "--json", str(record), cwd=tmp_path)  # fmt: skip
    assert "plain PyTorch" in out and "gptlab train_step" in out and "gptlab / plain step time" in out
    assert "self_cpu_time_total" in out and "aten::mm" in (tmp_path / "run" / "train_step_trace.json").read_text()
    r = json.loads(record.read_text())
    assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] is None  # no peak known on a CPU
    assert 0 < r["planned_peak_gb"] < 1 and "planned" in out
    assert r["back_to_back_ms_per_step"] > 0 and "back to back (1 steps" in out
    assert r["sdpa_kernels"] == ["flash_attention_for_cpu"] and "attention=sdpa (flash_attention_for_cpu)" in out
    assert r["args"]["loss_kernel"] == "triton" and r["loss_kernel_ran"] is False  # asked, not had: a CPU's torch ops


def test_train_step_sets_any_training_key(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """--set passes a key as train.py takes it (the architecture's and the run's), and the model line says it."""
    out = bench("train_step.py", *TINY, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "run"),
                "--iters", "1", "--rounds", "1", "--warmup", "0", "--preset", "gpt2", "--set", "bias=False",
                "--set", "residual_dtype='bfloat16'", "--dtype", "bfloat16", "--set", "sdpa_backend='math'",
                cwd=tmp_path)  # fmt: skip
    model_line = next(line for line in out.splitlines() if line.startswith("model: "))
    assert "_tied," in model_line and "_bias" not in model_line and "residual stream in bfloat16" in model_line
    assert "attention=sdpa (attention_math)" in model_line  # the kernel the step ran, as sdpa_backend chose


def test_train_step_under_torchrun_fsdp(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The docstring's `torchrun --nproc_per_node=N bench/train_step.py --parallel fsdp`: 2 gloo ranks, rank 0
    prints and records the job (tokens per rank x 2, the mode said)."""
    record = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "bench" / "train_step.py"), *TINY, "--data_dir", str(data_dir),
           "--out_dir", str(tmp_path / "run"), "--iters", "1", "--rounds", "1", "--warmup", "0", "--parallel", "fsdp",
           "--json", str(record)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("gptlab / plain step time") == 1 and "tokens/step per rank x 2 (fsdp)" in res.stdout
    r = json.loads(record.read_text())
    assert r["world_size"] == 2 and r["ms_per_step"] > 0 and r["args"]["parallel"] == "fsdp"


@pytest.mark.slow  # (21-38 s: run with --runslow, and before a GPU lease)
def test_sweep_runs_every_combination(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = bench("sweep.py", "--grid", "preset=gpt2,llama", "--grid", "batch_size=0,2", *TINY[:6],
                "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "run"), "--iters", "1", "--rounds", "1",
                "--warmup", "0", cwd=tmp_path, code=1)  # fmt: skip
    lines = out.splitlines()  # (exit 1: a combination failed)
    assert lines[0].split()[:2] == ["preset", "batch_size"]
    assert sum(line.startswith("failed: ") and "batch_size=0" in line for line in lines) == 2  # a bad value: said so
    assert sum(line.split()[1] == "2" and "failed" not in line for line in lines[1:5]) == 2
    # a training key that is no train_step flag goes by --set: SDPA's kernel, one run each
    out = bench("sweep.py", "--grid", "sdpa_backend=auto,math", *TINY, "--data_dir", str(data_dir),
                "--out_dir", str(tmp_path / "run"), "--iters", "1", "--rounds", "1", "--warmup", "0",
                cwd=tmp_path)  # fmt: skip
    rows = [line.split() for line in out.splitlines()[1:3]]
    assert [row[0] for row in rows] == ["auto", "math"] and all("failed" not in row for row in rows), out
    # --iters 1: no timed step computes the gradient statistics, which train_step.py says per run, the sweep once
    assert "note: --iters 1 is no multiple of the gradient statistics interval (10)" in out, out


def test_lm_head_compares_plain_and_chunked(tmp_path: Path) -> None:
    out = bench("lm_head.py", "--tokens", "64", "--n_embd", "16", "--vocab", "256", "--chunks", "0,16", "--iters", "1",
                cwd=tmp_path)  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"plain", "chunk"} and float(rows["chunk"][-1]) < float(rows["plain"][-1])  # peak MB


def test_rope_layout_compares_the_layouts(tmp_path: Path) -> None:
    """The same sublayer six ways; the other forms give the same outputs (the check of the bench's own
    variants: their timing would mean nothing if they computed something else)."""
    out = bench("rope_layout.py", "--batch_size", "1", "--block_size", "16", "--n_embd", "16", "--n_head", "2",
                "--iters", "1", cwd=tmp_path)  # fmt: skip
    names = ("no RoPE", "gptlab RoPE (q, k, v by slices)", "RoPE, one fused product", "RoPE over (B, T, h, hd)",
             "RoPE via flip", "RoPE, three projections")  # fmt: skip
    assert all(any(line.startswith(n) for line in out.splitlines()) for n in names), out
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rope_layout

        from gptlab.model.attention import CausalSelfAttention
        from gptlab.model.components import RotaryPositionEncoding

        rope = RotaryPositionEncoding(16, 8)
        q = torch.randn(2, 3, 16, 8)
        expected = rope.context(16, q.device).rotate(q)
        torch.testing.assert_close(rope_layout.seq_major_context(rope, 16).rotate(q), expected)
        assert torch.equal(rope_layout.flip_context(rope, 16).rotate(q), expected)  # bit for bit
        layer = CausalSelfAttention(16, 2, 2, False, 0.0, "sdpa")
        fused = rope_layout.FusedProduct(16, 2, 2, False, 0.0, "sdpa")  # the same parameters
        fused.load_state_dict(layer.state_dict())
        x, pos = torch.randn(2, 16, 16), rope.context(16, q.device)
        torch.testing.assert_close(fused(x, pos), layer(x, pos))
    finally:
        sys.path.remove(str(ROOT / "bench"))


OVERHEAD, LOADER = "telemetry_overhead.py", "dataloader.py"


def test_telemetry_overhead_and_dataloader_tables(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    scripts = {name: [sys.executable, str(ROOT / "bench" / name)] for name in (OVERHEAD, LOADER)}
    overhead, loader, res = run_together(  # each its own process: side by side
        dict(args=[*scripts[OVERHEAD], *TINY, "--data_dir", str(data_dir), "--out_dir",
                   str(tmp_path / "run"), "--iters", "1", "--rounds", "1", "--logged_steps", "1"], env=env,
             cwd=tmp_path, text=True),
        dict(args=[*scripts[LOADER], "--data_dir", str(data_dir), "--block_size", "16,32", "--seconds",
                   "0.05"], env=env, cwd=tmp_path, text=True),
        # a user's mistake: one line and exit 2, as the commands
        dict(args=[*scripts[LOADER], "--dataset", "nosuch", "--data_dir", str(tmp_path)], env=env, text=True),
    )  # fmt: skip
    assert overhead.returncode == 0 and "never" in overhead.stdout and "every step" in overhead.stdout, overhead.stderr
    # a logged step's host work (Trainer.log_iteration), without and with TensorBoard: timed, a share of a step
    logged = [line.split() for line in overhead.stdout.splitlines() if line.startswith("JSON + console")]
    assert len(logged) == 2 and all(float(row[-3]) > 0 for row in logged), overhead.stdout
    assert loader.returncode == 0, loader.stderr
    assert len([line for line in loader.stdout.splitlines() if line.startswith("stdlib_char")]) == 2
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'nosuch' is not prepared" in res.stderr


def test_a_dataset_prepared_for_a_benchmark_is_said(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(ROOT / "bench" / "dataloader.py"), "--block_size", "16", "--seconds", "0.05"]
    first, again = (subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path) for _ in range(2))
    assert first.returncode == 0 and (tmp_path / "data" / "stdlib_char" / "train.bin").is_file()
    assert "note: prepared the 'stdlib_char' dataset in data/stdlib_char (it was not there)" in first.stderr
    assert again.returncode == 0 and "prepared" not in again.stderr  # there now: nothing to say


@pytest.mark.slow  # (21-38 s: run with --runslow, and before a GPU lease)
def test_gpu_suite_plumbing_in_smoke_mode(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """bench/gpu_suite.sh's stages run with SMOKE=1 on a CPU (tiny sizes), so a lent GPU's minutes are
    not lost to a typo; a wrong stage name is refused with the list."""
    script = str(ROOT / "bench" / "gpu_suite.sh")
    env = {**os.environ, "SMOKE": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "DATA_DIR": str(data_dir), "OUT_DIR": str(tmp_path / "run"),
           "LEASE_DIR": str(tmp_path / "run" / "lease"), "LEASE_BUDGET": "100000"}  # fmt: skip
    stages = {"head": "chunk 16", "chunked": "loss_chunk_size=4096", "lease": "lease: done"}
    for stage, expect in stages.items():  # SMOKE: each stage's limit x10 and no budget (a loaded machine)
        res = subprocess.run(["bash", script, stage], capture_output=True, text=True, env=env, timeout=1800)
        assert res.returncode == 0 and expect in res.stdout, (stage, res.stderr[-2000:])
    lease = tmp_path / "run" / "lease"  # the one-call lease: every stage ran, records and trace kept
    log = (lease / "lease.log").read_text()
    assert not re.search(r"^=== \S+: (skipped|stopped|failed)", log, re.M), log[-3000:]
    for run in ("gpt2_16", "gpt2_64", "llama_64", "350m_64"):
        record = json.loads((lease / f"{run}.json").read_text())
        assert record["ms_per_step"] > 0 and {"peak", "args", "torch", "device_name"} <= set(record)
    assert (lease / "gpt2_trace.json.gz").stat().st_size > 0 and "gptlab / plain step time" in log
    # what docs/benchmarks.md needs, without a re-run: the code, versions, the MFU denominator, each command
    assert re.search(r"^code: ", log, re.M) and re.search(r"^python \S+ torch ", log, re.M)
    assert "MFU against" in log and "$ bench/telemetry_overhead.py" in log and "-m pytest -v" in log
    res = subprocess.run(["bash", script, "gtp2"], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "env|peak|gpt2" in res.stderr
    res = subprocess.run(["bash", script], capture_output=True, text=True, env=env)  # never `all` by default
    assert res.returncode == 2 and "usage:" in res.stderr
    # a short budget: a stage whose minimum no longer fits is skipped, not started and cut off mid-compile
    # (19 s: env, an echo in SMOKE, may run; peak's 20 s and the rest are skipped)
    short = {**env, "LEASE_BUDGET": "19", "LEASE_DIR": str(tmp_path / "short")}
    res = subprocess.run(["bash", script, "lease"], capture_output=True, text=True, env=short, timeout=300)
    assert res.returncode == 0 and "=== gpt2_16: skipped" in res.stdout and "needs 120s" in res.stdout
    assert "=== peak: skipped" in res.stdout and "needs 20s" in res.stdout
    assert "stopped at its" not in res.stdout, res.stdout


def test_step_instructions_worker_and_count(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The worker runs one loop's steps alone; the count comes from cachegrind (where valgrind is installed:
    the whole bench takes minutes under it, so CI checks the parts)."""
    import shutil

    script = [sys.executable, str(ROOT / "bench" / "step_instructions.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    plain, gptlab, res = run_together(  # each its own process: side by side
        *(dict(args=[*script, "--worker", f"--loop={loop}", "--run=2", *TINY, "--data_dir", str(data_dir),
                     "--out_dir", str(tmp_path / loop)], env=env, cwd=tmp_path, text=True)
          for loop in ("plain", "gptlab")),
        dict(args=[*script, "--device", "cuda"], env=env, text=True),
    )  # fmt: skip
    assert plain.returncode == 0 and gptlab.returncode == 0, (plain.stderr[-2000:], gptlab.stderr[-2000:])
    assert res.returncode == 2 and "eager CPU runs" in res.stderr
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from common import add_run_args
        from step_instructions import cachegrind_count, run_flags
    finally:
        sys.path.remove(str(ROOT / "bench"))
    # the driver's flags for its workers carry the repeatable options as typed (every run failed: '--set=[]')
    import argparse

    parser = argparse.ArgumentParser()
    add_run_args(parser)
    typed = ["--set", "bias=False", "--set", "dropout=0.1", "--inductor_config", "max_pointwise_cat_inputs=2"]
    given = parser.parse_args([*typed, "--n_layer", "3"])
    again = parser.parse_args(run_flags(given))
    assert {k: v for k, v in vars(again).items() if k != "out_dir"} == {
        k: v for k, v in vars(given).items() if k != "out_dir"
    }
    assert parser.parse_args(run_flags(parser.parse_args([]))).set == []
    if shutil.which("valgrind"):
        assert 0 < cachegrind_count(["true"], tmp_path / "cg.out") < 10_000_000


@pytest.mark.filterwarnings("error")  # in-process, a warning is recorded, not printed: none may be given
@pytest.mark.parametrize(
    "argv",
    [
        ["train_step.py", "--iters", "0"],  # StatisticsError over no timed steps
        ["train_step.py", "--inductor_config", "max_pointwise_cat_input=2"],  # no such inductor setting
        ["train_step.py", "--inductor_config", "max_pointwise_cat_inputs=two"],
        ["train_step.py", "--set", "bias=maybe"],  # checked as train.py checks it
        ["train_step.py", "--set", "nosuchkey=1"],
        ["train_step.py", "--set", "n_layer"],  # not '--n_layer=VALUE', which train_step refuses
        ["telemetry_overhead.py", "--rounds", "0"],
        ["lm_head.py", "--chunks", "abc"],  # ValueError
        ["lm_head.py", "--device", "gpu"],  # torch's RuntimeError
        ["step_instructions.py", "--jobs", "0"],
        ["sweep.py", "--grid", "compile=maybe"],  # exit 1
        ["sweep.py", "--grid", "preset=gpt2,llama", "--itres", "3"],  # a failed row per combination, exit 0
        ["sweep.py", "--grid", "n_layr=1,2"],  # a failed row per combination, exit 1
        ["sweep.py", "--compile", "--grid", "compile=off,on"],  # both rows compiled, labelled off and on
        ["rope_layout.py", "--n_embd", "32", "--n_head", "3"],  # a reshape's traceback
        ["dataloader.py", "--batch_size", "0"],  # its table's header printed first
        ["dataloader.py", "--device", "cuda:99"],  # pin_memory's RuntimeError (no such GPU here, or anywhere)
        ["dataloader.py", "--device", "gpu"],
    ],
)
def test_bench_argument_mistakes_exit_2_without_a_traceback(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """In this process (an uncaught exception fails the test with its traceback); the fresh interpreter's path is
    test_a_bench_mistake_from_a_fresh_interpreter."""
    code, out, err = bench_in_process(argv, tmp_path, monkeypatch, capfd)
    assert code == 2 and "Traceback" not in err and "error: " in err, err
    assert out == ""


def test_a_bench_mistake_from_a_fresh_interpreter(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--set", "bias=maybe"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.parametrize(("dtype", "grad_clip"), [("float32", 0.0), ("float32", 0.05), ("float16", 0.05)])
def test_the_plain_loop_takes_the_same_step_as_gptlabs(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str,
    grad_clip: float,
) -> None:
    """The baseline is nanoGPT's step on the same run: it clipped at 1.0 whatever grad_clip said (with 0, gptlab
    looked 5% faster than plain PyTorch), had no GradScaler under float16, and freed the zeroed .grad buffers that
    CUDA-graph compile modes keep (Trainer.use_stable_grads). One step of each from the same state: same weights."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from common import add_run_args, build_trainer, make_steps

    parser = argparse.ArgumentParser()
    add_run_args(parser)
    argv = [*TINY, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "run"), "--dtype", dtype]
    args = parser.parse_args([*argv, "--grad_accum", "2", "--set", f"grad_clip={grad_clip}"])
    trainer = build_trainer(args)
    plain, ours = make_steps(trainer, grad_accum=2)
    model, opt = trainer.raw_model, trainer.optimizer
    start = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()))
    results = []
    for step in (plain, ours):
        model.load_state_dict(start[0])
        opt.load_state_dict(copy.deepcopy(start[1]))
        step()
        results.append({k: v.clone() for k, v in model.state_dict().items()})
        trainer.iter_num = 0  # the same batches (the plain loop counts its own steps: reset below)
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6, msg=key)
    trainer.use_stable_grads()  # as a CUDA-graph compile mode with accumulation sets it
    plain()
    assert all(p.grad is not None for p in model.parameters())  # zeroed in place, not freed
