"""gptlab.train.launch's handling of a run's end: the closing barrier with a peer gone (the end-to-end launches are
in tests/parallel/test_torchrun.py)."""

from __future__ import annotations

import pytest

from gptlab import parallel
from gptlab.train import launch


class _Exited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_now(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(launch.os, "_exit", exit_now)


def test_a_peer_lost_at_the_closing_barrier_of_a_completed_run_is_one_line_and_exit_0(
    exits: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rank killed as a completed run ended (its summary and checkpoint written): the others' closing barrier
    raised gloo's 'Connection closed by peer', a traceback and exit 1 that a requeue script read as a failed job.
    Any other error there (not a lost peer), or one in a single process, is raised as it is."""
    gone = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:4")

    def barrier_fails(info: parallel.DistInfo) -> None:
        raise gone

    monkeypatch.setattr(parallel, "shutdown", barrier_fails)
    two = parallel.DistInfo(rank=1, world_size=2, backend="gloo", mode="ddp", owns_group=True)
    with pytest.raises(_Exited) as exited:
        launch.close_group_after_the_run(two)
    assert exited.value.code == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "[rank 1] this rank finished the run, but another rank was gone at the closing barrier ([../third_party/gloo"
    )
    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # one process: no peer to lose
        launch.close_group_after_the_run(parallel.DistInfo())
    for other in (
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("Timed out waiting 600000ms for recv operation"),  # a peer stuck, perhaps, not gone: as it is
    ):
        monkeypatch.setattr(parallel, "shutdown", lambda info, error=other: (_ for _ in ()).throw(error))
        with pytest.raises(RuntimeError, match=str(other)):
            launch.close_group_after_the_run(two)


@pytest.mark.parametrize(
    "cmdline, launcher",
    [
        ([b"/usr/bin/python3", b"-m", b"torch.distributed.launch", b"train.py"], True),  # an entrypoint, alive
        ([b"accelerate", b"launch", b"train.py"], True),
        ([b"/usr/local/bin/torchrun", b"train.py"], True),
        ([b"/sbin/tini", b"--", b"torchrun", b"train.py"], False),  # inits that adopt orphans
        ([b"/bin/sh", b"-c", b"torchrun --nproc_per_node=2 train.py"], False),
        ([b"/sbin/init"], False),
    ],
)
def test_a_launcher_at_pid_1_is_told_from_an_init(cmdline: list[bytes], launcher: bool) -> None:
    """A rank adopted by PID 1 stops at once only where PID 1 is an init: a container whose entrypoint is the
    launcher itself (python -m torch.distributed.launch, accelerate) runs its ranks as PID 1's children."""
    assert parallel._launcher_like(cmdline) is launcher
