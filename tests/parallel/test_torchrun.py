"""The design document's torchrun commands on 2 CPU processes (gloo): DDP, ZeRO-1 and FSDP2
against a single-process run of the same global batch, kill -9 and exact resume, resuming an
FSDP checkpoint under DDP and under one process, memory per rank against the planner, and two
``--nnodes=2`` launches that rendezvous over 127.0.0.1.

Data: rank r's micro-step m is global micro-batch m * world_size + r (gptlab.train.loop), so 2
ranks x batch 4 x 1 micro-step see exactly the rows of 1 process x batch 4 x 2 micro-steps.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gptlab import parallel
from gptlab.checkpoint import load_checkpoint
from gptlab.config.resolve import parse_run_args
from gptlab.train.launch import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "config" / "full_llama_124m.py")
WORLD = 2
ITERS = 20


def small(data_dir: Path, out: Path, **over: object) -> list[str]:
    """The document's config with CPU-sized overrides; the global batch is 8 sequences."""
    values: dict[str, object] = dict(
        device="cpu",
        compile=False,
        dtype="float32",
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=4,
        gradient_accumulation_steps=2,  # global, as nanoGPT: 1 micro-step per rank on 2 ranks
        max_iters=ITERS,
        lr_decay_iters=ITERS,
        warmup_iters=4,
        learning_rate=3e-3,
        min_lr=3e-4,
        eval_interval=5,
        eval_iters=5,  # > world size, and not a multiple of it: the batch-order gather and its padding
        log_interval=1,
        gradient_log_interval=5,
        dataset="stdlib_char",
        data_dir=str(data_dir),
        out_dir=str(out),
        log_style="compact",
        dist_timeout=60,
        dropout=0.1,  # masks depend on (seed, iteration, global micro-batch): equal under any world size
    )
    values.update(over)
    return [f"--{k}={v}" for k, v in values.items()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _launcher_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """torchrun writes each launch's logs to a torchelastic_* folder in the temp directory and leaves it:
    the launches here (their environment is this process's) get pytest's own, pruned, one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("torchrun")))
        yield


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _torchrun_command(args: list[str], config: str | None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
            str(ROOT / "train.py"), *([config] if config else []), *args]  # fmt: skip


def torchrun(
    args: list[str], *, env: dict[str, str] | None = None, timeout: int = 120, config: str | None = CONFIG
) -> subprocess.CompletedProcess:
    cmd = _torchrun_command(args, config)
    return subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=timeout, cwd=ROOT)


def torchrun_started(args: list[str], config: str | None = CONFIG) -> subprocess.Popen:
    """``torchrun`` without waiting: a job that runs beside the test's other work."""
    cmd = _torchrun_command(args, config)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def records(out: Path, kind: str, log: str = "log.jsonl") -> list[dict]:
    return [r for r in map(json.loads, (out / log).read_text().splitlines()) if r["type"] == kind]


def losses(out: Path) -> dict[int, float]:
    """iter -> training loss; a resumed run's records replace the killed run's."""
    return {r["iter"]: r["loss"] for r in records(out, "iter")}


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, batch 4 x 2 micro-steps: the same global batch as 2 ranks x 4."""
    out = tmp_path_factory.mktemp("single")
    run = parse_run_args([CONFIG, *small(data_dir, out, gradient_accumulation_steps=2, parallel="none")])
    train(run, stream=io.StringIO())
    return out


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The document's three commands: neither flag (DDP), --use_zero1=True, --use_fsdp=True."""
    flags = {"ddp": [], "zero1": ["--use_zero1=True"], "fsdp": ["--use_fsdp=True"]}
    out = {}
    for mode, flag in flags.items():
        out[mode] = tmp_path_factory.mktemp(mode)
        res = torchrun([*flag, *small(data_dir, out[mode])])
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("final val loss") == 1  # only rank 0 prints
    return out


@pytest.mark.parametrize("mode", ["ddp", "zero1", "fsdp"])
def test_matches_single_process(mode: str, runs: dict[str, Path], reference: Path) -> None:
    out = runs[mode]
    startup = records(out, "startup")[0]
    assert startup["hardware"]["parallelism"] == mode and startup["training"]["world_size"] == WORLD
    assert startup["hardware"]["num_gpus"] == WORLD  # the devices (here CPU ranks) an MFU's peak counts
    assert startup["training"]["tokens_per_iter"] == 4 * 1 * WORLD * 32  # every rank's tokens count
    mine, ref = losses(out), losses(reference)
    assert sorted(mine) == list(range(ITERS + 1))
    for it in ref:
        assert mine[it] == pytest.approx(ref[it], rel=1e-5, abs=1e-6), it
    for a, b in zip(records(out, "eval"), records(reference, "eval")):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    first, ref_first = records(out, "eval")[0], records(reference, "eval")[0]  # the same initial weights:
    assert (first["train_loss"], first["val_loss"]) == (ref_first["train_loss"], ref_first["val_loss"])  # exact
    got, want = load_checkpoint(out), load_checkpoint(reference)  # fsdp: read from the DCP directory
    assert got["iter_num"] == want["iter_num"] == ITERS + 1
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-4, atol=2e-5, msg=key)
    for idx, state in want["optimizer"]["state"].items():  # the AdamW moments too, in plain layout
        torch.testing.assert_close(got["optimizer"]["state"][idx]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-6)


def test_chunked_loss_under_fsdp_matches_plain_single_process(data_dir: Path, tmp_path: Path) -> None:
    """The chunked LM head's hand-made gradients reach FSDP2's reduce-scatter like autograd's, scaled by
    the accumulation (2 micro-steps per rank): losses, weights and AdamW's first moments (which carry
    the gradients' scale, unlike the losses) equal a plain single-process run's. The gpt2 preset ties the
    head to the embedding, so this also covers rank 0's tied weights scattered to the meta-built rank."""
    steps = dict(gradient_accumulation_steps=4, max_iters=6, grad_clip=0.0, arch_preset="gpt2")  # clipping
    # would hide a scale error
    ref = tmp_path / "single_plain"
    train(parse_run_args([CONFIG, *small(data_dir, ref, parallel="none", **steps)]), stream=io.StringIO())
    out = tmp_path / "fsdp_chunked"
    res = torchrun(["--use_fsdp=True", *small(data_dir, out, loss_chunk_size=24, **steps)])
    assert res.returncode == 0, res.stderr[-3000:]
    mine, want = losses(out), losses(ref)
    assert sorted(mine) == sorted(want) == list(range(7))
    for it in mine:
        assert mine[it] == pytest.approx(want[it], rel=1e-5, abs=1e-6), it
    got, expected = load_checkpoint(out), load_checkpoint(ref)
    for key, value in expected["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-4, atol=2e-5, msg=key)
    for idx, state in expected["optimizer"]["state"].items():
        torch.testing.assert_close(got["optimizer"]["state"][idx]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-6)


def test_single_file_checkpoint_resumes_under_fsdp(data_dir: Path, tmp_path: Path, runs: dict[str, Path]) -> None:
    """DDP's ckpt.pt into FSDP: rank 0 loads it, the other rank starts on the meta device and gets its
    shards scattered from rank 0; an evaluation of the loaded weights gives DDP's final val loss. The
    checkpoint says it was trained with one micro-batch a step (a laptop's default), which 2 ranks cannot
    share for training: an evaluation takes no training step, so it evaluates all the same."""
    dst = tmp_path / "ddp_to_fsdp"
    shutil.copytree(runs["ddp"], dst, symlinks=True, ignore=shutil.ignore_patterns("log.jsonl", "summary.json"))
    ckpt = torch.load(dst / "ckpt.pt", weights_only=True)
    ckpt["config"]["train"]["gradient_accumulation_steps"] = 1
    torch.save(ckpt, dst / "ckpt.pt")
    args = [a for a in small(data_dir, dst, init_from="resume", eval_only=True) if "gradient_accumulation" not in a]
    res = torchrun(["--use_fsdp=True", *args], config=None)  # a config file's gradient_accumulation_steps would win
    assert res.returncode == 0, res.stderr[-3000:]
    assert "batch:       4 sequences x 32 tokens per evaluation batch (the batches shared over 2 ranks)" in res.stdout
    (evaluated,) = records(dst, "eval", "eval.jsonl")  # an evaluation's records
    assert evaluated["val_loss"] == pytest.approx(records(runs["ddp"], "eval")[-1]["val_loss"], rel=1e-6)


def test_torchrun_without_a_config_file_takes_one_micro_batch_per_rank(data_dir: Path, tmp_path: Path) -> None:
    """gradient_accumulation_steps left at its default (1, which 2 ranks cannot share) is one micro-batch per
    rank, as DDP gives, and said so; it was a refusal, so every torchrun launch without a config file needed
    the flag. The run's saved config holds the global value, so a resume in one process takes 2 micro-steps."""
    out = tmp_path / "run"
    args = [a for a in small(data_dir, out, max_iters=2, eval_iters=2) if "gradient_accumulation" not in a]
    res = torchrun([*args, "--arch_preset=llama"], config=None)
    assert res.returncode == 0, res.stderr[-3000:]
    said = "4 x 2 micro-batches (1 per rank on 2 ranks; gradient_accumulation_steps not set) = 8 sequences"
    assert said in res.stdout
    training = records(out, "startup")[0]["training"]
    assert training["gradient_accumulation_steps"] == 2 and training["tokens_per_iter"] == 2 * 4 * 32
    assert json.loads((out / "config.json").read_text())["train"]["gradient_accumulation_steps"] == 2


def _fp16_args(data_dir: Path, out: Path, **over: object) -> list[str]:
    """float16 at a size whose step 1 overflows at the initial scale 65536 in one process (batch 2 x 8 tokens x 2
    micro-steps: the loss's gradient per token is 1/32 of the scale)."""
    values: dict[str, object] = dict(dtype="float16", batch_size=2, block_size=8, max_iters=12, lr_decay_iters=12)
    return small(data_dir, out, **{**values, "dropout": 0.0, "gradient_log_interval": 1, **over})


@pytest.fixture(scope="module")
def fp16_reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One process's float16 run with ``accum`` micro-steps (made once per value)."""
    made: dict[int, Path] = {}

    def reference(accum: int) -> Path:
        if accum not in made:
            made[accum] = out = tmp_path_factory.mktemp(f"single_fp16_{accum}")
            args = _fp16_args(data_dir, out, parallel="none", gradient_accumulation_steps=accum)
            train(parse_run_args([CONFIG, *args]), stream=io.StringIO())
        return made[accum]

    return reference


def _scaler_events(out: Path) -> list[tuple[int, str]]:
    return [(r["iter"], r["event"]) for r in records(out, "event") if r["event"] in ("loss_scale", "grad_spike")]


def _grad_norms(out: Path) -> dict[int, float]:
    """iter -> the gradient norm, where finite (log.jsonl writes an overflow's as the string 'inf')."""
    norms = {r["iter"]: float(r["grad_norm"]) for r in records(out, "iter")}
    return {i: v for i, v in norms.items() if math.isfinite(v)}


@pytest.mark.parametrize("mode, accum", [("ddp", 2), ("zero1", 2), ("fsdp", 2), ("ddp", 4)])
def test_float16_on_two_ranks_skips_the_steps_one_process_skips(
    mode: str, accum: int, data_dir: Path, fp16_reference: Any, tmp_path: Path
) -> None:
    """--dtype=float16 (V100 / T4-class GPUs) on 2 ranks: each rank divides its loss by the job's micro-steps and
    the gradients are summed (parallel.sums_gradients), so every rank's backward runs on the single process's
    values and overflows where it does: the same step skipped on both ranks (said so), the same scale saved,
    the same curve and gradient norms. (Averaged, each rank's backward ran on twice those values: an extra skip
    at step 0 here.) Under FSDP, parameters gathered in float16 and gradients reduced in float32 (FSDP2 on one
    rank skips as one process does at this size; the all-ranks skip itself: tests/parallel/test_grad_scaler.py).
    With 4 micro-steps, 2 per rank go through no_sync (no step overflows at that size)."""
    if mode == "fsdp" and not parallel.sums_gradients(parallel.DistInfo(world_size=2, mode="fsdp"), "float16"):
        pytest.skip(f"FSDP2 on PyTorch {torch.__version__} averages (no plain-SUM reduce-scatter before 2.9)")
    out = tmp_path / mode
    flags = {"ddp": [], "zero1": ["--use_zero1=True"], "fsdp": ["--use_fsdp=True"]}[mode]
    res = torchrun([*flags, *_fp16_args(data_dir, out, gradient_accumulation_steps=accum)])
    assert res.returncode == 0, res.stderr[-3000:]
    reference = fp16_reference(accum)
    mine, ref = losses(out), losses(reference)
    assert sorted(mine) == list(range(13)) and all(math.isfinite(v) for v in mine.values())
    assert mine[12] < mine[0] - 0.3
    # DDP and ZeRO-1: autocast as in one process, to rounding; FSDP2 runs on float16 parameters (docs/parallel.md)
    tol = 3e-3 if mode == "fsdp" else 1e-4
    assert max(abs(mine[i] - ref[i]) for i in ref) < tol
    # AdamW hides a gradient scale from the losses; the norms show it (halved if the ranks averaged)
    norms, ref_norms = _grad_norms(out), _grad_norms(reference)
    assert norms.keys() == ref_norms.keys()
    assert max(abs(norms[i] / ref_norms[i] - 1) for i in ref_norms) < (1e-2 if mode == "fsdp" else 1e-3)
    assert _scaler_events(out) == _scaler_events(reference)
    if accum == 4:
        return
    assert _scaler_events(out) == [(1, "grad_spike"), (1, "loss_scale")]
    events = {r["event"]: r["message"] for r in records(out, "event")}
    assert "fp16 loss scale fell 65536 -> 32768" in events["loss_scale"]
    assert "the loss scaler skips this step" in events["grad_spike"]
    assert load_checkpoint(out)["scaler"]["scale"] == 32768.0  # saved, so a resume keeps the scale


def test_memory_per_rank_falls_as_planned(runs: dict[str, Path]) -> None:
    measured = {m: json.loads((p / "summary.json").read_text()) for m, p in runs.items()}
    for mode, summary in measured.items():  # the real local shards' bytes, the fullest rank
        assert summary["measured_bytes_per_rank"] == pytest.approx(summary["planned_bytes_per_rank"]), mode
        # the fullest rank's session peak (each rank's RSS on a CPU), never below rank 0's own
        assert summary["peak_memory_gb_max_rank"] >= summary["peak_memory_gb"] > 0, mode
    b = {m: s["measured_bytes_per_rank"] for m, s in measured.items()}
    assert b["zero1"]["optimizer"] < 0.6 * b["ddp"]["optimizer"]
    assert b["zero1"]["parameters"] == b["ddp"]["parameters"] and b["zero1"]["gradients"] == b["ddp"]["gradients"]
    for part in ("parameters", "gradients", "optimizer"):
        assert b["fsdp"][part] < 0.6 * b["ddp"][part], part


@pytest.fixture(scope="module")
def killed(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, subprocess.CompletedProcess]:
    """An fsdp run whose rank 1 is killed with SIGKILL before step 13 (checkpoint at 10)."""
    out = tmp_path_factory.mktemp("killed")
    t0 = time.time()
    res = torchrun(["--use_fsdp=True", *small(data_dir, out)], env=_env(GPTLAB_FAULT_INJECT="1:13"))
    return out, time.time() - t0, res


def test_dead_rank_fails_the_job_in_bounded_time(killed: tuple) -> None:
    out, elapsed, res = killed
    assert res.returncode != 0
    assert elapsed < 60
    assert "SIGKILL" in res.stderr or "-9" in res.stderr
    assert load_checkpoint(out)["iter_num"] == 10  # the last complete checkpoint is intact
    # the survivor says it lost its peer, without a traceback that reads as if rank 0 had failed
    assert "[rank 0] error: lost contact with another rank" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr.split("[rank 0] error")[0][-2000:]


def test_fsdp_resume_after_kill_is_exact(killed: tuple, runs: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"  # a copy: the killed run's folder stays as the kill left it for the other test
    shutil.copytree(killed[0], out, symlinks=True)
    res = torchrun(["--use_fsdp=True", *small(data_dir, out, init_from="resume")])
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, uninterrupted = losses(out), losses(runs["fsdp"])
    assert sorted(resumed) == list(range(ITERS + 1))
    for it in range(10, ITERS + 1):  # the same world size and mode: the same numbers
        assert resumed[it] == pytest.approx(uninterrupted[it], rel=1e-6, abs=1e-7), it


def test_fsdp_checkpoint_resumes_under_ddp_and_one_process(
    data_dir: Path, tmp_path: Path, runs: dict[str, Path]
) -> None:
    # a fresh fsdp checkpoint at iter 10 (a copy of the uninterrupted run's would be at 21)
    src = tmp_path / "fsdp10"
    res = torchrun(["--use_fsdp=True", *small(data_dir, src, max_iters=9)])  # checkpoint at 10 (final)
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(src)["iter_num"] == 10
    uninterrupted = losses(runs["fsdp"])
    for name in ("ddp", "single"):
        shutil.copytree(src, tmp_path / name, symlinks=True, ignore=shutil.ignore_patterns("log.jsonl", "summary.json"))
    under_ddp = torchrun_started(["--parallel=ddp", *small(data_dir, tmp_path / "ddp", init_from="resume")])
    single = small(data_dir, tmp_path / "single", init_from="resume", gradient_accumulation_steps=2, parallel="none")
    run = parse_run_args([CONFIG, *single])  # beside the DDP job
    try:
        train(run, stream=io.StringIO())
        _, err = under_ddp.communicate(timeout=120)
    finally:
        if under_ddp.poll() is None:  # the one-process resume failed first: not left running
            under_ddp.kill()
            under_ddp.communicate()
    assert under_ddp.returncode == 0, err[-3000:]
    for name in ("ddp", "single"):
        dst = tmp_path / name
        resumed = losses(dst)
        assert min(resumed) == 10
        for it in range(10, ITERS + 1):  # weights and AdamW moments carried over: the same curve
            assert resumed[it] == pytest.approx(uninterrupted[it], rel=1e-4), (name, it)
        assert (dst / "ckpt.pt").is_file() and load_checkpoint(dst)["iter_num"] == ITERS + 1


def launch_two_nodes(args: list[list[str]], rdzv_id: str | None = None) -> list[tuple[int, str, str]]:
    """Two torchrun launches, one process each, on 127.0.0.1.

    With ``rdzv_id``, the c10d rendezvous (torchtitan's and torchrun's documented multi-node launch): it
    orders the nodes by (host, process id), so which node gets rank 0 is the launchers' PIDs' luck. Without,
    nanoGPT's command (``--node_rank --master_addr --master_port``, torchrun's static rendezvous): node N is
    rank N, and node 0 hosts the store."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        launcher = ["--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1"]
        if rdzv_id is None:
            launcher += ["--master_addr=127.0.0.1", f"--master_port={port}"]
        else:
            launcher += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={rdzv_id}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(ROOT / "train.py"), CONFIG, *args[node]]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    outputs = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_multi_node_rendezvous_on_one_machine(data_dir: Path, tmp_path: Path) -> None:
    args = small(data_dir, tmp_path / "run", max_iters=3, parallel="fsdp", sample_at_end=True, sample_tokens=8)
    results = launch_two_nodes([args, args], "gptlab-test")
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert sum(out.count("final val loss") for _, out, _ in results) == 1
    assert sum(out.count("sample from the final model") for _, out, _ in results) == 1  # all ranks sampled
    startup = records(tmp_path / "run", "startup")[0]
    assert startup["training"]["world_size"] == 2 and startup["hardware"]["parallelism"] == "fsdp"


def test_ranks_that_disagree_on_the_config_fail_fast(data_dir: Path, tmp_path: Path) -> None:
    t0 = time.time()
    args = [small(data_dir, tmp_path / "run", max_iters=3, n_layer=2 + node) for node in (0, 1)]
    results = launch_two_nodes(args)  # node N is rank N
    assert time.time() - t0 < 60
    assert all(rc != 0 for rc, _, _ in results)
    err = "".join(e for _, _, e in results)
    assert "[rank 0] error: the ranks disagree on the config" in err
    assert "[rank 1] error: the ranks disagree on the config" in err
    assert "(rank 0 vs rank 1: arch.n_layer: 2 vs 3" in err  # the key, not a guess among dozens


@pytest.mark.parametrize("failing", [1, 0])  # 0: the rank that hosts the group's store fails
def test_a_rank_failing_before_the_group_forms_fails_the_others_in_one_line(
    failing: int, data_dir: Path, tmp_path: Path
) -> None:
    """One node's mistake before joining (a mistyped key here; a file or checkpoint only the other node has,
    in life) leaves the other waiting at the join: it says why (after dist_timeout, or when the store's host
    is gone), in one line, not a traceback."""
    args = small(data_dir, tmp_path / "run", max_iters=3, dist_timeout=5)
    per_node = [[*args, "--n_layr=2"] if node == failing else args for node in (0, 1)]
    results = launch_two_nodes(per_node)  # node N is rank N
    waiting = 1 - failing
    assert all(rc != 0 for rc, _, _ in results)
    assert f"[rank {failing}] error: unknown config key 'n_layr'" in results[failing][2]
    err = results[waiting][2]
    assert f"[rank {waiting}] error: rank {waiting} could not form the process group of 2 ranks" in err, err[-3000:]
    assert "Traceback" not in err.split(f"[rank {waiting}] error")[0], err[-3000:]  # torchrun's own comes after


def test_a_full_disk_under_torchrun_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    """A write the storage refuses outside the checkpoint's and the log's own checks (config.json here) was a
    traceback and exit 1 under torchrun, one line and exit 2 in one process (a 1 KB file-size limit, inherited
    by the ranks, stands in for the full disk)."""
    import resource

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "train.py"), CONFIG, *small(data_dir, out, max_iters=2)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT, preexec_fn=limited)
    assert res.returncode != 0
    line = f"[rank 0] error: cannot write {out / 'config.json'}"
    assert line in res.stderr and "File too large" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr.split(line)[0], res.stderr[-3000:]
    assert "exitcode  : 2" in res.stderr, res.stderr[-2000:]  # a user's error, not a crash


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_ranks_stop_with_a_checkpoint_when_torchrun_is_killed(data_dir: Path, tmp_path: Path) -> None:
    """kill -9 of torchrun (a user's, a watchdog's, the OOM killer's) reaches no worker: torchrun starts them in
    a session of their own. They trained on, orphaned, holding out_dir's lock (and a GPU); now each gets a
    SIGTERM from the kernel and stops as on a preemption. The pipes close only when every worker has exited."""
    from tests.train.test_signals import wait_for_iter

    out = tmp_path / "run"
    args = small(data_dir, out, max_iters=100_000, lr_decay_iters=100, eval_interval=1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "train.py"), CONFIG, *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    wait_for_iter(out / "log.jsonl", proc, 3)
    proc.kill()
    try:
        _, err = proc.communicate(timeout=120)  # the workers hold the pipes' other ends
    finally:  # orphans (the failure) would train on for minutes: gone with the test
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if f"--out_dir={out}".encode() in cmdline.read_bytes().split(b"\0"):
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
            except OSError:  # exited meanwhile
                pass
    (event,) = [r for r in records(out, "event") if r.get("event") == "interrupted"]
    assert f"[rank 0] stopped by SIGTERM at iter {event['iter']}: a checkpoint" in err, err[-3000:]
    assert load_checkpoint(out)["iter_num"] == event["iter"] > 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
@pytest.mark.parametrize("own_session", [True, False])
def test_a_rank_whose_torchrun_died_before_it_started_stops(own_session: bool, tmp_path: Path) -> None:
    """torchrun killed in the second after it spawned its workers: they were adopted by init before they could ask
    for the parent-death signal, and waited out dist_timeout (11 minutes by default) for a store that was gone.
    Such a rank (torchrun's variables, a session of its own, init its parent) stops at once; a process with the
    variables under another parent, or not a session leader, is left alone."""
    marks = tmp_path / "marks"
    worker = (
        "import os, time\n"
        "while os.getppid() != 1 and time.time() < start + 10: time.sleep(0.02)\n"  # adopted (or left alone)
        f"open({str(marks)!r} + '.ppid', 'w').write(f'{{os.getppid()}} {{os.getpid()}}')\n"
        "from gptlab.parallel import stop_with_the_launcher\n"
        "stop_with_the_launcher()\n"
        f"open({str(marks)!r} + '.alive', 'w').write('yes')\n"
    )
    spawn = (  # the launcher: starts the worker as torchrun does (or not), then dies at once
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; start = time.time()\\n' + {worker!r}], "
        f"start_new_session={own_session})\n"
    )
    env = {**_env(), "TORCHELASTIC_RUN_ID": "test"}
    subprocess.run([sys.executable, "-c", spawn], env=env, cwd=ROOT, timeout=60, check=True)
    deadline = time.time() + 60
    while not Path(f"{marks}.ppid").exists() and time.time() < deadline:
        time.sleep(0.05)
    ppid, pid = Path(f"{marks}.ppid").read_text().split()
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:  # the import and the check, then its exit
        time.sleep(0.05)
    if ppid != "1":
        pytest.skip("orphans go to a subreaper here, not init")
    assert Path(f"{marks}.alive").exists() == (not own_session)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_sigterm_to_torchrun_stops_every_rank_at_one_checkpoint(mode: str, data_dir: Path, tmp_path: Path) -> None:
    """A preempted job: torchrun passes SIGTERM to its workers, which agree on the iteration at a logged
    step, evaluate and checkpoint together, and exit 143 (torchrun itself exits 1 with its SignalException)."""
    from tests.train.test_signals import wait_for_iter

    out = tmp_path / "run"
    args = small(data_dir, out, max_iters=100_000, lr_decay_iters=100, eval_interval=1000, parallel=mode)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "train.py"), CONFIG, *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    wait_for_iter(out / "log.jsonl", proc, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    (event,) = [r for r in records(out, "event") if r.get("event") == "interrupted"]
    assert f"[rank 0] stopped by SIGTERM at iter {event['iter']}: a checkpoint" in err, err[-3000:]
    assert ("--use_fsdp=True" in event["message"]) == (mode == "fsdp")  # the resume command names the mode
    assert load_checkpoint(out)["iter_num"] == event["iter"] > 3
