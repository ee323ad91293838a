"""gptlab.checkpoint's loading: memory-mapped, so ranks resuming from one ckpt.pt share the page cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import FORMAT, load_checkpoint


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_load_maps_the_file_instead_of_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"format": FORMAT, "iter_num": 0, "arch": {}, "model": {"w": torch.randn(20_000_000)}}, path)  # 80 MB
    before = _rss_mb()
    ckpt = load_checkpoint(path)
    assert _rss_mb() - before < 20  # nothing read yet
    assert ckpt["model"]["w"].sum().isfinite()  # and the values are there when used


# --- the single-file layout, unit by unit (the full runs are in tests/train/test_parallel_checkpoints.py) ----


def _state(iter_num: int) -> dict:
    return {"format": FORMAT, "iter_num": iter_num, "arch": {}, "model": {"w": torch.full((3,), float(iter_num))}}


def test_clean_state_dict_strips_nested_wrapper_prefixes() -> None:
    from gptlab.checkpoint import clean_state_dict

    state = {"module._orig_mod.wte.weight": 1, "_orig_mod.module.lm_head.weight": 2, "norm_f.weight": 3}
    assert clean_state_dict(state) == {"wte.weight": 1, "lm_head.weight": 2, "norm_f.weight": 3}


def test_save_single_file_keeps_the_last_k_and_loads_weights_only(tmp_path: Path) -> None:
    """keep=3: ckpt.pt plus the last three ckpt-ITER.pt (hard links, no second copy); keep=1: no history.
    (keep >= 3 kept one: the pruning slice's bound went negative while fewer than keep had been saved.)"""
    from gptlab.checkpoint import save_single_file

    for it in (10, 20, 30, 40):
        save_single_file(_state(it), tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-0000020.pt",
        "ckpt-0000030.pt",
        "ckpt-0000040.pt",
        "ckpt.pt",
    ]
    assert (tmp_path / "ckpt.pt").stat().st_ino == (tmp_path / "ckpt-0000040.pt").stat().st_ino
    assert (
        load_checkpoint(tmp_path)["iter_num"] == 40 and load_checkpoint(tmp_path / "ckpt-0000020.pt")["iter_num"] == 20
    )
    save_single_file(_state(50), tmp_path, keep=1)  # history off: the older ones go
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_checkpoint_that_runs_code_when_loaded_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a pickle that would call a function is a one-line CheckpointError, not run."""
    from gptlab.errors import CheckpointError

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("code ran",))

    torch.save({"format": FORMAT, "iter_num": 1, "arch": {}, "model": {}, "x": Payload()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"holds objects beyond tensors .*weights_only=True\) refused it"):
        load_checkpoint(tmp_path)


def test_remove_checkpoints_spares_the_kept_path_and_leftovers_go(tmp_path: Path) -> None:
    from gptlab.checkpoint import remove_checkpoints, remove_save_leftovers

    for name in ("ckpt.pt", "ckpt-0000010.pt", "log.jsonl", ".ckpt.pt.tmp-123"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".ckpt.dcp.copy").mkdir()  # a followed link's copy, set aside by a save killed just then
    assert remove_save_leftovers(tmp_path) == [".ckpt.dcp.copy", ".ckpt.pt.tmp-123"]
    assert remove_checkpoints(tmp_path, keep=tmp_path / "ckpt-0000010.pt") == ["ckpt.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000010.pt", "log.jsonl"]


def test_optimizer_state_by_name_follows_the_parameter_order() -> None:
    from gptlab.checkpoint import optimizer_state_by_name

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    by_name = optimizer_state_by_name(model, opt, opt.state_dict())
    assert list(by_name["state"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert torch.equal(by_name["state"]["1.weight"]["exp_avg"], opt.state[model[1].weight]["exp_avg"])
    assert by_name["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_a_rolled_back_timeline_prunes_the_abandoned_future_not_what_it_just_wrote(tmp_path: Path) -> None:
    """Resumed from ckpt-0000010.pt after saves up to 13 (a rollback): saving 10 and 11 again keeps them,
    and 12 and 13, a future this run abandoned, go (they were kept, and the new saves deleted)."""
    from gptlab.checkpoint import save_single_file

    for it in (10, 11, 12, 13):
        save_single_file(_state(it), tmp_path, keep=2)
    for it in (10, 11):
        save_single_file(_state(it), tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000010.pt", "ckpt-0000011.pt", "ckpt.pt"]
    assert load_checkpoint(tmp_path)["iter_num"] == 11


def test_export_writes_ckpt_pt_and_leaves_the_destinations_history(tmp_path: Path) -> None:
    from gptlab.checkpoint import save_single_file
    from gptlab.export_cli import export_checkpoint

    run, dest = tmp_path / "run", tmp_path / "dest"
    save_single_file(_state(7), run)
    for it in (3, 4):
        save_single_file(_state(it), dest, keep=2)
    export_checkpoint(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["ckpt-0000003.pt", "ckpt-0000004.pt", "ckpt.pt"]
    assert load_checkpoint(dest)["iter_num"] == 7


def test_export_refuses_a_run_directory_and_clears_an_earlier_hf_export(tmp_path: Path) -> None:
    """Into a run directory an export's ckpt.pt / config.json would contradict its logs (or be the source's
    own run config replaced by Hugging Face's); an earlier --hf export's files would load as another model."""
    import json

    from gptlab.checkpoint import save_single_file
    from gptlab.errors import ConfigError
    from gptlab.export_cli import export_checkpoint

    run = tmp_path / "run"
    save_single_file(_state(7), run)
    (run / "log.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"is a run directory \(log\.jsonl\): export to a folder of its own"):
        export_checkpoint(run, run)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (dest / "model.safetensors").write_bytes(b"old")
    export_checkpoint(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["ckpt.pt"]


def test_an_hf_export_without_safetensors_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed without the hf extra: refused in one line before ckpt.pt is written to the destination."""
    import sys

    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_single_file
    from gptlab.errors import CheckpointError
    from gptlab.export_cli import export_checkpoint

    config = get_debug_config("gpt2")
    run, dest = tmp_path / "run", tmp_path / "dest"
    save_single_file({**_state(7), "arch": config.to_dict(), "model": ConfigurableGPT(config).state_dict()}, run)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if it were not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(CheckpointError, match=r"needs the 'safetensors' package: pip install 'gptlab\[hf\]'"):
        export_checkpoint(run, dest, hf=True)
    assert not dest.exists() or not any(dest.iterdir())


def test_a_checkpoint_missing_its_architecture_is_one_line(tmp_path: Path) -> None:
    from gptlab.errors import CheckpointError

    torch.save({"format": FORMAT, "iter_num": 3, "model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="is a damaged gptlab checkpoint: it has no arch"):
        load_checkpoint(tmp_path)


def test_a_second_ctrl_c_during_a_save_aborts_as_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's zip writer turns a KeyboardInterrupt inside torch.save into a RuntimeError ("unexpected pos")
    on its way out: the abort the user asked for (exit 130, no traceback) and no half-written file."""
    from gptlab.checkpoint import atomic_save

    (tmp_path / "ckpt.pt").write_bytes(b"the previous checkpoint")

    def interrupted_save(obj, f) -> None:
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 12810752 vs 12810640")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": 1}, tmp_path / "ckpt.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert (tmp_path / "ckpt.pt").read_bytes() == b"the previous checkpoint"


def _fake_dcp_run(run: Path, dcp_iter: int) -> Path:
    """A run directory with a sharded checkpoint's record (meta.pt, .metadata) behind the ckpt.dcp link."""
    dcp = run / f"ckpt-{dcp_iter:07d}.dcp"
    dcp.mkdir(parents=True)
    torch.save(_state(dcp_iter), dcp / "meta.pt")
    (dcp / ".metadata").write_bytes(b"")
    (run / "ckpt.dcp").symlink_to(dcp.name)
    return dcp


def test_latest_checkpoint_never_falls_back_silently_past_an_unreadable_one(tmp_path: Path) -> None:
    """Beside a sharded checkpoint, the later ckpt.pt wins; an unreadable ckpt.pt is an error naming the
    other checkpoint, not the older one resumed without a word (replaying iterations, then overwriting)."""
    from gptlab.checkpoint import latest_checkpoint
    from gptlab.errors import CheckpointError

    dcp = _fake_dcp_run(tmp_path, dcp_iter=3)
    assert latest_checkpoint(tmp_path) == dcp  # alone: not read here (its loader says why if it cannot)
    torch.save(_state(5), tmp_path / "ckpt.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt.pt"
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) // 2])
    move = rf"to resume from '{dcp}' instead, move '{tmp_path / 'ckpt.pt'}' away"
    with pytest.raises(CheckpointError, match=rf"ckpt.pt' is corrupt or truncated .*; {move}$"):
        latest_checkpoint(tmp_path)


def test_unreadable_is_not_called_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system's refusal is named as such, and running out of memory is not the file's fault."""
    from gptlab.errors import CheckpointError

    torch.save(_state(1), tmp_path / "ckpt.pt")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match=r"could not be read \(\[Errno 13\] Permission denied\)$"):
        load_checkpoint(tmp_path)

    def invalid(*args: object, **kwargs: object) -> None:  # the zip reader on some truncated archives
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(torch, "load", invalid)
    with pytest.raises(CheckpointError, match=r"is corrupt or truncated \(\[Errno 22\] Invalid argument\)"):
        load_checkpoint(tmp_path)

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(MemoryError):
        load_checkpoint(tmp_path)


def test_a_link_that_cannot_be_made_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows without Developer Mode refuses symbolic links (WinError 1314): the sharded checkpoint's
    ckpt.dcp link is a one-line error saying so, not a traceback after the save."""
    from gptlab import checkpoint
    from gptlab.errors import CheckpointError

    def refuse(*args: object) -> None:
        raise OSError(1314, "A required privilege is not held by the client")

    monkeypatch.setattr(checkpoint.os, "symlink", refuse)
    with pytest.raises(CheckpointError, match=r"ckpt.dcp' -> ckpt-0000003.dcp .*enable Developer Mode"):
        checkpoint._point_link(tmp_path, "ckpt-0000003.dcp")
