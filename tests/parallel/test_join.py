"""Forming the process group under torchrun: the failures a rank meets while joining are one line."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gptlab.config.train import TrainConfig
from gptlab.errors import ConfigError
from gptlab.parallel import init_distributed


@pytest.mark.parametrize(
    "failure",
    [
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:144] Gloo connectFullMesh failed with Connection refused",
        "[../third_party/gloo/gloo/transport/tcp/pair.h:311] Connect timeout [127.0.0.1]:29500",
    ],
)
def test_a_gloo_connect_failure_while_joining_is_one_line(failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer restarted while the mesh formed (torchrun --max-restarts): gloo raises a plain RuntimeError, which
    printed a traceback instead of the one-line join failure; other errors keep theirs."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}.items():
        monkeypatch.setenv(key, value)

    def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError(failure)

    monkeypatch.setattr(dist, "init_process_group", refused)
    cfg = TrainConfig(device="cpu", parallel="ddp", dist_timeout=5)
    joining = r"^rank 1 could not form the process group of 2 ranks .*(Gloo|Connect timeout)"
    with pytest.raises(ConfigError, match=joining):
        init_distributed(cfg, torch.device("cpu"))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        init_distributed(cfg, torch.device("cpu"))


def _launch_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_a_master_port_in_use_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 hosts the store on MASTER_PORT: a port another program holds failed at once with the message of a
    rank that never joined ('waited up to dist_timeout'), the cause cut off at 120 characters."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        _launch_env(monkeypatch, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        with pytest.raises(ConfigError, match=rf"^rank 0: MASTER_PORT={port} on 127.0.0.1 is already in use"):
            init_distributed(TrainConfig(device="cpu", parallel="ddp", dist_timeout=10), torch.device("cpu"))


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"},
            "MASTER_ADDR='127.0.0.1' is set but MASTER_PORT",
        ),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "abc"}, "MASTER_PORT='abc' is not an int"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 without MASTER_ADDR"),
        ({"SLURM_STEP_NUM_TASKS": "2"}, r"srun started 2 tasks .* each would train alone"),
        # a stale RANK in a one-process shell trained without output or files, exit 0 (never rank 0)
        ({"RANK": "1"}, r"^environment variable RANK=1 is invalid for WORLD_SIZE=1: expected 0 to 0 \(a RANK left"),
        ({"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=3 is invalid for WORLD_SIZE"),
        ({"RANK": "-1"}, "RANK=-1 is invalid"),
        ({"WORLD_SIZE": "0"}, r"^environment variable WORLD_SIZE=0 is invalid: expected 1 or more ranks$"),
        ({"LOCAL_RANK": "2", "WORLD_SIZE": "2", "RANK": "0"}, "LOCAL_RANK=2 is invalid for WORLD_SIZE=2"),
    ],
)
def test_launch_variables_that_cannot_form_a_job_are_one_line(
    env: dict[str, str], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set by hand, or by srun: a missing MASTER_PORT was PyTorch's ValueError traceback, and srun's tasks
    (SLURM's variables, not torchrun's) each trained alone."""
    _launch_env(monkeypatch, **env)
    with pytest.raises(ConfigError, match=error):
        init_distributed(TrainConfig(device="cpu"), torch.device("cpu"))


def test_a_join_that_hangs_past_dist_timeout_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo can hang inside ProcessGroupGloo's constructor after a torchrun restart, beyond any timeout given:
    the watchdog ends the process (torchrun then restarts the attempt); a join in time cancels it."""
    import time

    import gptlab.parallel as parallel

    exits: list[tuple] = []
    monkeypatch.setattr(parallel, "HUNG_JOIN_GRACE_S", 0)
    monkeypatch.setattr(parallel, "_exit_hung_join", lambda *args: exits.append(args))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: time.sleep(1.5))
    parallel._join("gloo", 1, 2, 1)
    assert exits == [(1, 2, 1)]
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: None)
    parallel._join("gloo", 1, 2, 1)
    time.sleep(1.2)
    assert len(exits) == 1


def test_stray_launch_variables_leave_a_one_process_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell's MASTER_ADDR without a port, or a Kubernetes service link's MASTER_PORT=tcp://...: no group is
    formed, so they are not checked (as before)."""
    _launch_env(monkeypatch, MASTER_ADDR="10.0.0.5", MASTER_PORT="tcp://10.0.0.5:29500")
    assert init_distributed(TrainConfig(device="cpu"), torch.device("cpu")).mode == "none"
    monkeypatch.delenv("MASTER_PORT")
    assert init_distributed(TrainConfig(device="cpu"), torch.device("cpu")).mode == "none"


def test_a_rank_still_joining_names_the_port_rank_0_may_have_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 1 of a hand launch whose MASTER_PORT another program holds waits out dist_timeout + 60 s (rank 0 said
    why at once): its line blamed only gloo's restart hang; it names the address and rank 0's line now."""
    import os

    from gptlab import parallel

    _launch_env(monkeypatch, MASTER_ADDR="127.0.0.1", MASTER_PORT="29645")

    def exits(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", exits)
    with pytest.raises(SystemExit):
        parallel._exit_hung_join(1, 2, 70.0)
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: rank 1 could not form the process group of 2 ranks: still joining after 70s")
    assert "a MASTER_PORT another program holds, 127.0.0.1:29645: rank 0's own line says so" in err
    assert err.count("\n") == 1


class _Joined(Exception):
    """Stops init_distributed once it asks for the process group: what it asked for is the test."""


@pytest.mark.parametrize("offload", [False, True])
def test_fsdp_cpu_offload_joins_a_group_with_a_cpu_backend(monkeypatch: pytest.MonkeyPatch, offload: bool) -> None:
    """FSDP2's CPU offload keeps gradient shards on the CPU; their statistics and clipping norms all-reduce there,
    which a NCCL-only group refused at the first step ("No backend type associated with device type cpu"):
    the group gets gloo for CPU tensors beside NCCL (torchtitan's form). Without offload: NCCL alone."""
    asked: list[str] = []

    def init(backend: str, **kwargs: object) -> None:
        asked.append(backend)
        raise _Joined

    _launch_env(monkeypatch, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "init_process_group", init)
    cfg = TrainConfig(device="cuda", parallel="fsdp", fsdp_cpu_offload=offload, dist_timeout=5)
    with pytest.raises(_Joined):
        init_distributed(cfg, torch.device("cuda"))
    assert asked == ["cuda:nccl,cpu:gloo" if offload else "nccl"]


def test_a_local_rank_past_the_visible_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc_per_node=9 on 8 GPUs, or a task that sees one GPU with LOCAL_RANK=3: CUDA's raw
    "invalid device ordinal" from set_device; now one line naming the count and CUDA_VISIBLE_DEVICES."""
    _launch_env(monkeypatch, RANK="3", WORLD_SIZE="4", LOCAL_RANK="3", MASTER_ADDR="127.0.0.1", MASTER_PORT="29512")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^rank 3 takes cuda:3 \(LOCAL_RANK=3\), but this process sees 1 GPU\(s\) "
                       r"\(CUDA_VISIBLE_DEVICES=5\): start at most 1 processes a node"):  # fmt: skip
        init_distributed(TrainConfig(device="cuda", parallel="ddp", dist_timeout=5), torch.device("cuda"))
