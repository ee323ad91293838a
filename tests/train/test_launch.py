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
        "[rank 1] the run completed, but another rank was gone at its closing barrier ([../third_party/gloo"
    )
    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # one process: no peer to lose
        launch.close_group_after_the_run(parallel.DistInfo())
    other = RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(parallel, "shutdown", lambda info: (_ for _ in ()).throw(other))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        launch.close_group_after_the_run(two)
