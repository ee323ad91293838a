"""gptlab.checkpoint's loading: memory-mapped, so ranks resuming from one ckpt.pt share the page cache."""

from __future__ import annotations

import json
import os
import re
import shlex
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


def test_a_kept_copy_that_fails_leaves_no_partial_file_and_names_itself(tmp_path: Path, monkeypatch) -> None:
    """Storage without hard links (gcsfuse, s3fs, FAT) takes a copy; when the disk fills mid-copy the
    partial copy is removed (it took the disk's last bytes), the error names the kept copy (shutil names
    its source, ckpt.pt, which was written) and ckpt.pt still loads."""
    import errno
    import os
    import shutil

    from gptlab.checkpoint import save_single_file
    from gptlab.errors import CheckpointError

    save_single_file(_state(10), tmp_path, keep=2)

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def full_disk(src: object, dst: str | Path) -> None:
        Path(dst).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(
        CheckpointError, match=r"ckpt-0000020\.pt: No space left on device.*ckpt\.pt itself was written"
    ):
        save_single_file(_state(20), tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000010.pt", "ckpt.pt"]
    assert load_checkpoint(tmp_path)["iter_num"] == 20


def test_kept_checkpoints_are_listed_oldest_first(tmp_path: Path) -> None:
    from gptlab.checkpoint import kept_checkpoints, save_single_file

    for it in (9, 10, 100):
        save_single_file(_state(it), tmp_path, keep=5)
    (tmp_path / "ckpt-0000050.dcp").mkdir()
    (tmp_path / "ckpt-x.pt").touch()
    assert kept_checkpoints(tmp_path) == ["ckpt-0000009.pt", "ckpt-0000010.pt", "ckpt-0000050.dcp", "ckpt-0000100.pt"]
    assert kept_checkpoints(tmp_path / "missing") == []


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
    from gptlab import ConfigurableGPT

    # --init_from=PATH, from_pretrained, a pytorch_model.bin: the same line (torch's own advised weights_only=False)
    with pytest.raises(CheckpointError, match=r"holds objects beyond tensors .*the file was left untouched$"):
        ConfigurableGPT.from_pretrained(tmp_path / "ckpt.pt")


def test_remove_checkpoints_spares_the_kept_path_and_leftovers_go(tmp_path: Path) -> None:
    from gptlab.checkpoint import remove_checkpoints, remove_save_leftovers

    for name in ("ckpt.pt", "ckpt-0000010.pt", "log.jsonl", ".ckpt.pt.tmp-123", ".summary.json.tmp-7"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".ckpt.dcp.copy").mkdir()  # a followed link's copy, set aside by a save killed just then
    (tmp_path / ".config.json.tmp-8").write_bytes(b"x")  # the run's own atomic writes, killed half-way
    dcp = tmp_path / "ckpt-0000016.dcp"  # a resumed sharded checkpoint's meta.pt, rewritten and killed half-way
    dcp.mkdir()
    for name in ("meta.pt", ".meta.pt.tmp-7947", "__0_0.distcp"):
        (dcp / name).write_bytes(b"x")
    removed = [".ckpt.dcp.copy", ".ckpt.pt.tmp-123", ".config.json.tmp-8", ".summary.json.tmp-7"]
    removed.insert(4, "ckpt-0000016.dcp/.meta.pt.tmp-7947")
    assert remove_save_leftovers(tmp_path) == removed
    assert sorted(p.name for p in dcp.iterdir()) == ["__0_0.distcp", "meta.pt"]
    assert remove_checkpoints(tmp_path, keep=tmp_path / "ckpt-0000010.pt") == ["ckpt-0000016.dcp", "ckpt.pt"]
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
    killed = [".ckpt.pt.tmp-999999999", ".model.safetensors.tmp-999999998"]  # an export killed mid-write: removed
    writing = f".ckpt.pt.tmp-{os.getppid()}"  # another export still writing (its process alive): kept
    for name in (*killed, writing, ".notes.tmp-1", ".ckpt.pt.tmp-x"):  # (not another program's, not its forms)
        (dest / name).write_bytes(b"partial")
    export_checkpoint(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [writing, ".ckpt.pt.tmp-x", ".notes.tmp-1", "ckpt-0000003.pt", "ckpt-0000004.pt", "ckpt.pt"]
    )
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
    export_checkpoint(run, dest)  # an earlier export's, with its --hf files
    (dest / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (dest / "model.safetensors").write_bytes(b"old")
    export_checkpoint(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["ckpt.pt"]


def test_an_hf_export_killed_after_its_ckpt_pt_leaves_no_earlier_model_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into an earlier --hf export's folder, an export killed between its ckpt.pt and the Hugging Face files left
    the new ckpt.pt beside the old model's files, which from_pretrained and sample loaded, saying nothing."""
    pytest.importorskip("safetensors")
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_single_file
    from gptlab.export_cli import export_checkpoint
    from gptlab.model import hf

    runs = {}
    for name, kv in (("a", None), ("b", 2)):
        config = get_debug_config("llama", n_kv_head=kv)
        runs[name] = tmp_path / name
        save_single_file(
            {**_state(7), "arch": config.to_dict(), "model": ConfigurableGPT(config).state_dict()}, runs[name]
        )
    dest = tmp_path / "dest"
    export_checkpoint(runs["a"], dest, hf=True)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as a kill between the two writes

    monkeypatch.setattr(hf, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(runs["b"], dest, hf=True)
    assert ConfigurableGPT.from_pretrained(dest).config.n_kv_head == 2  # the new checkpoint, no older model


@pytest.mark.parametrize(
    "files",
    [
        ["config.json", "model.safetensors", "generation_config.json"],  # a transformers save: it was deleted
        ["ckpt.pt", "model-00001-of-00002.safetensors", "model.safetensors.index.json"],  # shards read beside it
        [".metadata", "__0_0.distcp"],  # a sharded checkpoint's folder: the run's next save pruned the export
        ["tokenizer.model"],  # a sentencepiece/tiktoken model: AutoTokenizer took it over the export's GPT-2 BPE
    ],
)
def test_export_refuses_a_folder_of_model_files_it_did_not_write(tmp_path: Path, files: list[str]) -> None:
    from gptlab.checkpoint import save_single_file
    from gptlab.errors import ConfigError
    from gptlab.export_cli import export_checkpoint

    save_single_file(_state(7), tmp_path / "run")
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in files:
        (dest / name).write_bytes(b"theirs")
    for hf in (False, True):
        with pytest.raises(ConfigError, match=r"holds model files no gptlab export wrote \(.*: export to an empty"):
            export_checkpoint(tmp_path / "run", dest, hf=hf)
        assert sorted(p.name for p in dest.iterdir()) == sorted(files)
        assert all((dest / name).read_bytes() == b"theirs" for name in files)


def test_export_of_a_hugging_face_folder_says_what_it_is(tmp_path: Path) -> None:
    """A folder transformers saved was 'no checkpoint at DIR/ckpt.pt: expected a ckpt.pt written by gptlab train'."""
    import json

    from gptlab.errors import CheckpointError
    from gptlab.export_cli import export_checkpoint

    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "model.safetensors").write_bytes(b"x")
    said = r"is a Hugging Face model folder \(model_type='llama'\), already in that layout, not a gptlab checkpoint"
    with pytest.raises(CheckpointError, match=said):
        export_checkpoint(src, tmp_path / "out", hf=True)
    assert not (tmp_path / "out").exists()


def test_hf_weights_are_read_as_transformers_reads_them(tmp_path: Path) -> None:
    """model.safetensors, else the shards its index names: a stale shard left beside them (another save's) was
    merged in, a different lm_head loaded with only a warning."""
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    from gptlab import ConfigurableGPT, get_debug_config

    model = ConfigurableGPT(get_debug_config("llama", weight_tying=True))
    model.save_pretrained(tmp_path / "hf")
    stale = {"lm_head.weight": torch.ones_like(model.lm_head.weight)}
    save_file(stale, str(tmp_path / "hf" / "model-00002-of-00002.safetensors"))
    loaded = ConfigurableGPT.from_pretrained(tmp_path / "hf")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    # a pytorch_model.bin is the model beside any other .safetensors (a backup's), which were read in its place
    binned = tmp_path / "bin"
    binned.mkdir()
    (binned / "config.json").write_bytes((tmp_path / "hf" / "config.json").read_bytes())
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    torch.save(weights, binned / "pytorch_model.bin")
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, str(binned / "model_backup.safetensors"))
    loaded = ConfigurableGPT.from_pretrained(binned)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


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
    torch.save({"format": FORMAT, "arch": {}, "model": {}}, tmp_path / "ckpt.pt")  # no iteration to resume at
    with pytest.raises(CheckpointError, match="is a damaged gptlab checkpoint: it has no iter_num"):
        load_checkpoint(tmp_path)


def test_a_directory_of_runs_names_the_runs_inside(tmp_path: Path) -> None:
    """``out`` (the default out_dir) holding runs but no checkpoint of its own, as after the quick start (its run
    is out/quickstart): sample and resume name the run directories to pass, instead of only "no checkpoint"."""
    from gptlab.checkpoint import no_checkpoint_error, save_single_file
    from gptlab.errors import CheckpointError

    save_single_file(_state(10), tmp_path / "quickstart", keep=1)
    (tmp_path / "empty").mkdir()
    save_single_file(_state(10), tmp_path / "my run", keep=1)  # a name the shell would split: quoted
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ckpt.pt").write_bytes(b"not a checkpoint")  # listed, never read
    runs = [tmp_path / "broken", tmp_path / "my run", tmp_path / "quickstart"]
    listed = ", ".join(shlex.quote(str(d)) for d in runs)
    hint = f"the run directories inside it hold one: {listed}"  # sample, export and from_pretrained take a path
    with pytest.raises(CheckpointError, match=rf"^no checkpoint at .*ckpt\.pt': {re.escape(hint)}$"):
        load_checkpoint(tmp_path)
    flags = ", ".join(f"--out_dir={shlex.quote(str(d))}" for d in runs)
    resume_hint = f"holds no checkpoint (the run directories inside it do: {flags})"
    assert str(no_checkpoint_error(tmp_path)).endswith(resume_hint)
    with pytest.raises(CheckpointError, match=r"expected the ckpt\.pt a training run writes in its out_dir$"):
        load_checkpoint(tmp_path / "empty")  # nanoGPT's too: not 'written by gptlab train'
    empty = "holds no checkpoint (a run starts there without --init_from=resume)"
    assert str(no_checkpoint_error(tmp_path / "empty")).endswith(empty)
    (tmp_path / "empty" / "log.jsonl").write_text("{}\n")  # a run killed during its first save: --overwrite=True
    assert str(no_checkpoint_error(tmp_path / "empty")).endswith(  # (its plain start is refused, naming that)
        "holds no checkpoint (its run saved none: start it again without --init_from=resume, with --overwrite=True "
        "or another --out_dir)"
    )
    assert str(no_checkpoint_error(tmp_path / "nothere")).endswith(  # a mistyped --out_dir: said as such
        f"out_dir={str(tmp_path / 'nothere')!r} does not exist: name the run's --out_dir"
    )
    assert f"does not exist (relative paths start at {Path.cwd()})" in str(no_checkpoint_error("out/nothere"))


def test_a_hugging_face_folder_named_as_a_run_directory_says_how_it_loads(tmp_path: Path) -> None:
    """`sample.py --out_dir=hf_gpt2` or a resume of it (transformers' save_pretrained folder, no ckpt.pt): the error
    says what the folder is and the --init_from that reads it, not only that ckpt.pt is missing."""
    import json

    from gptlab.checkpoint import no_checkpoint_error
    from gptlab.errors import CheckpointError

    hf = tmp_path / "hf_gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    said = f"{str(hf)!r} is a Hugging Face model folder (model_type='gpt2'), not a run directory: its weights load "
    said += f"with --init_from={str(hf)!r}"
    with pytest.raises(CheckpointError, match=rf"^no checkpoint at .*ckpt\.pt': {re.escape(said)}$"):
        load_checkpoint(hf)
    assert str(no_checkpoint_error(hf)).endswith(f"holds no checkpoint ({said})")
    (hf / "config.json").write_text(json.dumps({"n_layer": 1}))  # no model_type: any folder's config.json
    assert str(no_checkpoint_error(hf)).endswith("(a run starts there without --init_from=resume)")


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


@pytest.mark.parametrize("lost", [".metadata", "meta.pt"])
def test_a_damaged_sharded_checkpoint_is_said_not_passed_over(lost: str, tmp_path: Path) -> None:
    """A sharded checkpoint missing one of its records (a partial copy of the run) was taken for none: resume and
    export used the older ckpt.pt beside it without a word, or said 'no checkpoint' with advice to make the link
    that was there."""
    from gptlab.checkpoint import latest_checkpoint, load_checkpoint
    from gptlab.errors import CheckpointError

    dcp = _fake_dcp_run(tmp_path, dcp_iter=6)
    torch.save(_state(3), tmp_path / "ckpt.pt")
    assert latest_checkpoint(tmp_path) == dcp
    (dcp / lost).unlink()
    damaged = rf"^'{dcp}' is a damaged sharded checkpoint: it has no {lost} \(a partial copy\?\)"
    move = rf"; to resume from '{tmp_path / 'ckpt.pt'}' instead, move '{tmp_path / 'ckpt.dcp'}' away$"
    with pytest.raises(CheckpointError, match=damaged + move):
        load_checkpoint(tmp_path)  # the run's latest: resume's and export's
    for path in (tmp_path / "ckpt.dcp", dcp):  # named
        with pytest.raises(CheckpointError, match=damaged + "$"):
            load_checkpoint(path)
    (tmp_path / "ckpt.pt").unlink()  # alone: the damage, not 'no checkpoint'
    with pytest.raises(CheckpointError, match=damaged + "$"):
        latest_checkpoint(tmp_path)


def test_an_empty_or_zeroed_checkpoint_is_damage_and_a_text_file_no_checkpoint(tmp_path: Path) -> None:
    """A 0-byte or zero-filled ckpt.pt (a copy killed at once, a crash's unwritten blocks) is a damaged checkpoint;
    a text file named as one is no checkpoint at all: each said so, and left as it is."""
    from gptlab.errors import CheckpointError

    for name, data, said in (
        ("empty", b"", "is corrupt or truncated"),
        ("zeroed", bytes(4096), "is corrupt or truncated"),
        ("text", b"hello\n", r"is not a checkpoint \(not a torch.save file\)"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt.pt").write_bytes(data)
        with pytest.raises(CheckpointError, match=said + r".*the file was left untouched$"):
            load_checkpoint(tmp_path / name)
        assert (tmp_path / name / "ckpt.pt").read_bytes() == data


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


def test_unreadable_is_not_called_corrupt_by_the_crc_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRC check opens the file first: a file the user may not read (mode 600, another owner) is said to
    be unreadable there too, not corrupt (which would send them re-training)."""
    import zipfile

    from gptlab.errors import CheckpointError

    torch.save(_state(1), tmp_path / "ckpt.pt")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)
    with pytest.raises(CheckpointError, match=r"ckpt.pt' could not be read \(\[Errno 13\] Permission denied\)$"):
        load_checkpoint(tmp_path)


def test_a_link_that_cannot_be_made_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows without Developer Mode refuses symbolic links (WinError 1314): the sharded checkpoint's
    ckpt.dcp link is a one-line error saying so, not a traceback after the save."""
    import os

    from gptlab.checkpoint import save as checkpoint
    from gptlab.errors import CheckpointError

    def refuse(*args: object) -> None:
        raise OSError(1314, "A required privilege is not held by the client")

    monkeypatch.setattr(os, "symlink", refuse)
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(CheckpointError, match=r"ckpt.dcp' -> ckpt-0000003.dcp .*enable Developer Mode"):
        checkpoint._point_link(tmp_path, "ckpt-0000003.dcp")
    # a FAT or FUSE out_dir on Linux: said before training (every FSDP rank probes), with Linux's way out
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(CheckpointError, match=r"ckpt.dcp' -> ckpt-ITER.dcp .*its filesystem has no symbolic links"):
        checkpoint.check_links_allowed(tmp_path, rank=1)
    monkeypatch.undo()
    checkpoint.check_links_allowed(tmp_path, rank=1)
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing


def test_history_checkpoints_are_copies_where_hard_links_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_checkpoints > 1 on gcsfuse, s3fs or FAT (no hard links): every save failed with EPERM."""
    import os

    from gptlab import checkpoint

    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    for it in (1, 2, 3):
        checkpoint.save_single_file({"format": FORMAT, "iter_num": it, "w": torch.full((2,), it)}, tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000002.pt", "ckpt-0000003.pt", "ckpt.pt"]
    assert torch.load(tmp_path / "ckpt-0000002.pt", weights_only=True)["w"].tolist() == [2, 2]


_CODE_RAN: list[str] = []


def _runs_code() -> float:
    _CODE_RAN.append("ran")
    return 0.5


class _Crafted:
    """What a downloaded FSDP checkpoint could hold in place of an optimizer's lr: unpickling calls a function."""

    def __reduce__(self) -> tuple:
        return (_runs_code, ())


def test_a_sharded_checkpoints_plain_entries_are_read_as_weights_only(tmp_path: Path) -> None:
    """DCP's planner reads a checkpoint's non-tensor entries with torch.load(weights_only=False): gptlab's
    sample, export and resume of a crafted FSDP checkpoint ran its code. Plain data still loads."""
    import torch.distributed.checkpoint as dcp

    from gptlab.checkpoint import load_dcp
    from gptlab.errors import CheckpointError

    for name, lr in (("plain", 0.25), ("crafted", _Crafted())):
        dcp.save({"model": {"w": torch.ones(3)}, "optimizer": {"lr": lr}}, checkpoint_id=str(tmp_path / name),
                 no_dist=True)  # fmt: skip
    state = {"model": {"w": torch.zeros(3)}, "optimizer": {"lr": 0.0}}
    load_dcp(state, tmp_path / "plain", no_dist=True)
    assert state["optimizer"]["lr"] == 0.25 and state["model"]["w"].sum() == 3
    with pytest.raises(
        CheckpointError,
        match=r"'.*crafted' is not a readable .*'optimizer.lr' is not plain data: loading it could run code",
    ):
        load_dcp({"model": {"w": torch.zeros(3)}, "optimizer": {"lr": 0.0}}, tmp_path / "crafted", no_dist=True)
    assert _CODE_RAN == []
    torch.distributed.checkpoint.load(state, checkpoint_id=str(tmp_path / "crafted"), no_dist=True)
    assert _CODE_RAN == ["ran"]  # what DCP's own planner does with it


def test_a_sharded_checkpoints_weights_alone_load_without_a_model_or_optimizer(tmp_path: Path) -> None:
    """Sampling or converting an FSDP checkpoint reads the model's tensors into plain tensors: the tied
    embedding once, for both names; no model with random init, no AdamW and its states."""
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_dcp

    model = ConfigurableGPT(get_debug_config("gpt2", n_layer=2))
    assert model.config.weight_tying
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 3}
    save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    loaded = load_checkpoint(tmp_path, optimizer=False)
    assert "optimizer" not in loaded and loaded["iter_num"] == 3
    assert loaded["model"].keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded["model"][k]) for k, v in model.state_dict().items())
    assert loaded["model"]["lm_head.weight"] is loaded["model"]["wte.weight"]


def test_a_sharded_checkpoints_files_keep_their_crcs_through_a_meta_rewrite(tmp_path: Path) -> None:
    """meta.pt records each DCP file's CRC-32 (the shards have none of their own); a resume's first save at the
    same iteration rewrites meta.pt alone (weights_on_disk) and keeps them; a flipped bit is then still caught."""
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_dcp
    from gptlab.checkpoint.integrity import file_crc32
    from gptlab.errors import CheckpointError

    model = ConfigurableGPT(get_debug_config("llama", n_layer=1))
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 3}
    final = save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    recorded = torch.load(final / "meta.pt", weights_only=True)["shard_crc32"]
    assert recorded == {p.name: file_crc32(p) for p in sorted(final.iterdir()) if p.name != "meta.pt"}
    assert ".metadata" in recorded and any(name.endswith(".distcp") for name in recorded)
    save_dcp({}, {**meta, "note": "rewritten"}, tmp_path, keep=1, rank=0, barrier=lambda: None, weights_on_disk=True)
    rewritten = torch.load(final / "meta.pt", weights_only=True)
    assert rewritten["note"] == "rewritten" and rewritten["shard_crc32"] == recorded
    shard = next(final.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-9] ^= 0x80
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"is corrupt: its file '{shard.name}' fails its CRC-32 check"):
        load_checkpoint(tmp_path, optimizer=False)


def test_a_sharded_save_on_a_full_disk_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    """DCP's CheckpointException printed a traceback per rank and never named the disk, and its half-written
    folder stayed, filling the disk the resume then needed (a 64 KB file-size limit stands in for the full disk)."""
    import resource
    import signal

    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_dcp
    from gptlab.errors import CheckpointError

    model = ConfigurableGPT(get_debug_config("llama", n_layer=2))
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 3}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointError, match=r"^cannot write the checkpoint .*dcp: .* \(a file-size limit"):
            save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(tmp_path.iterdir()) == []  # no .ckpt-0000003.dcp.tmp left to fill the disk


def test_a_first_sharded_save_stopped_before_its_link_resumes(tmp_path: Path) -> None:
    """A kill between a run's first sharded save's rename and its ckpt.dcp link left a complete checkpoint that a
    resume, sample and export refused ('no latest'): the only kept one, it is the latest. Two kept and no link is
    a rollback by hand, still named with its command."""
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import DCP_LINK, latest_checkpoint, no_checkpoint_error, save_dcp

    model = ConfigurableGPT(get_debug_config("gpt2", n_layer=1))
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 2}
    save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=2, rank=0, barrier=lambda: None)
    (tmp_path / DCP_LINK).unlink()  # as the kill left it
    assert latest_checkpoint(tmp_path) == (tmp_path / "ckpt-0000002.dcp").resolve()
    assert load_checkpoint(tmp_path, optimizer=False)["iter_num"] == 2
    save_dcp({"model": model.state_dict()}, {**meta, "iter_num": 4}, tmp_path, keep=2, rank=0, barrier=lambda: None)
    assert (tmp_path / DCP_LINK).readlink() == Path("ckpt-0000004.dcp")
    (tmp_path / DCP_LINK).unlink()  # two kept, no link: not a save's crash
    assert latest_checkpoint(tmp_path) is None
    assert "kept checkpoints ckpt-0000002.dcp, ckpt-0000004.dcp but no latest: `ln -sfn" in str(
        no_checkpoint_error(tmp_path)
    )


def test_a_sharded_save_into_a_folder_turned_read_only_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder refused the save's rename (remounted read-only after a disk error, chmod by hand): a traceback
    and a checkpoint-sized .ckpt-ITER.dcp.tmp left; now one line, the temporary folder removed, and no free space
    named (beside the point). A refused link says the folder refused it, not that it has no symbolic links."""
    import errno

    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save as save_module
    from gptlab.checkpoint import save_dcp
    from gptlab.errors import CheckpointError

    model = ConfigurableGPT(get_debug_config("gpt2", n_layer=1))
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 3}
    real_replace = save_module.os.replace

    def read_only(src: object, dst: object) -> None:
        if str(src).endswith(".dcp.tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(save_module.os, "replace", read_only)
    with pytest.raises(CheckpointError, match=r"^cannot write the checkpoint .*ckpt-0000003\.dcp: Permission denied$"):
        save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(save_module.os, "replace", real_replace)
    real_atomic_save = save_module.atomic_save

    def full_at_meta(state: object, path: Path) -> None:  # atomic_save's own one line, ENOSPC at meta.pt
        if path.name == "meta.pt":
            raise CheckpointError(f"cannot write the checkpoint {path}: No space left on device")
        real_atomic_save(state, path)

    monkeypatch.setattr(save_module, "atomic_save", full_at_meta)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    assert list(tmp_path.iterdir()) == []  # the written shards' folder: removed
    monkeypatch.setattr(save_module, "atomic_save", real_atomic_save)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(save_module.os, "symlink", no_link)
    with pytest.raises(CheckpointError, match=r"names the latest sharded checkpoint: Read-only file system$"):
        save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    assert (tmp_path / "ckpt-0000003.dcp").is_dir()  # complete, and the first save: the latest


def test_an_arch_record_that_the_weights_do_not_bear_out_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    """A hand-edited (or crafted) record of 10**7 layers over a 2-layer model: the resume's memory plan listed
    every layer's tensors (GBs, minutes) and a sharded checkpoint's loader built the model before the weights
    were compared. Both forms are refused from the sizes alone."""
    import time

    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import load_checkpoint_meta, save_dcp
    from gptlab.errors import CheckpointError

    model = ConfigurableGPT(get_debug_config("llama", n_layer=2))
    meta = {"format": FORMAT, "arch": {**model.config.to_dict(), "n_layer": 10**7}, "iter_num": 3}
    torch.save({**meta, "model": model.state_dict()}, tmp_path / "ckpt.pt")
    save_dcp({"model": model.state_dict()}, meta, tmp_path / "sharded", keep=1, rank=0, barrier=lambda: None)
    start = time.perf_counter()
    layers = r"damaged gptlab checkpoint: its arch record says n_layer=10000000, its weights hold 2 layers"
    with pytest.raises(CheckpointError, match=layers):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=layers):
        load_checkpoint_meta(tmp_path / "sharded" / "ckpt-0000003.dcp")
    wide = {**meta, "arch": {**model.config.to_dict(), "vocab_size": 10**10}}
    torch.save({**wide, "model": model.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"says \(vocab_size, n_embd\)=\(10000000000, \d+\), its token embedding"):
        load_checkpoint(tmp_path)
    assert time.perf_counter() - start < 10


def test_a_linked_sharded_checkpoint_is_resumed_into_the_folders_own(tmp_path: Path) -> None:
    """A downloaded run whose ckpt-N.dcp links into another run's folder: the first save after the resume
    rewrote meta.pt there (the 'shards already on disk' shortcut). The save writes this folder's own."""
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import dcp_on_disk, load_checkpoint_meta, save_dcp

    model = ConfigurableGPT(get_debug_config("llama", n_layer=2))
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 11, "who": "theirs"}
    theirs = save_dcp({"model": model.state_dict()}, meta, tmp_path / "theirs", 1, 0, lambda: None)
    before = (theirs / "meta.pt").read_bytes()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "ckpt-0000011.dcp").symlink_to(theirs)
    (mine / "ckpt.dcp").symlink_to("ckpt-0000011.dcp")
    resumed = (mine / "ckpt.dcp").resolve()
    assert not dcp_on_disk(mine, 11, resumed) and dcp_on_disk(tmp_path / "theirs", 11, resumed)
    save_dcp(
        {"model": model.state_dict()}, {**meta, "who": "mine"}, mine, 1, 0, lambda: None, dcp_on_disk(mine, 11, resumed)
    )
    assert (theirs / "meta.pt").read_bytes() == before
    assert not (mine / "ckpt-0000011.dcp").is_symlink() and load_checkpoint_meta(mine / "ckpt.dcp")["who"] == "mine"
    assert sorted(p.name for p in mine.iterdir()) == ["ckpt-0000011.dcp", "ckpt.dcp"]  # no leftover link


def test_a_compiled_or_ddp_models_prefixed_keys_pass_the_size_check(tmp_path: Path) -> None:
    """'_orig_mod.' and 'module.' keys (a compiled or DDP model's state dict, nanoGPT's way) are the loaders' to
    strip: the size check read them as a model of 0 layers and refused what exports and resumes."""
    from gptlab import ConfigurableGPT, get_debug_config

    model = ConfigurableGPT(get_debug_config("llama", n_layer=2))
    for prefix in ("_orig_mod.", "module.", "module._orig_mod."):
        state = {prefix + k: v for k, v in model.state_dict().items()}
        torch.save(
            {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 1, "model": state}, tmp_path / "ckpt.pt"
        )
        assert set(load_checkpoint(tmp_path)["model"]) == set(state)


def test_an_hf_export_whose_weights_transformers_replaced_is_not_exported_as_the_old_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An --hf export folder re-exported: its ckpt.pt is exported when the Hugging Face weights are its own; a
    fine-tune saved there by transformers left ckpt.pt the older model, which export copied with no word while
    init_from, sample and from_pretrained read the new weights."""
    pytest.importorskip("safetensors")
    transformers = pytest.importorskip("transformers")
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_single_file
    from gptlab.errors import CheckpointError, ConfigError
    from gptlab.export_cli import export_checkpoint

    config = get_debug_config("llama", n_kv_head=2)
    run, first = tmp_path / "run", tmp_path / "first"
    save_single_file({**_state(7), "arch": config.to_dict(), "model": ConfigurableGPT(config).state_dict()}, run)
    export_checkpoint(run, first, hf=True)
    export_checkpoint(first, tmp_path / "again", hf=True)  # the folder's own weights: exported
    assert load_checkpoint(tmp_path / "again")["iter_num"] == 7
    # --dtype=bfloat16: the Hugging Face weights rounded (half the file), ckpt.pt the run's; exported again as its own
    half = tmp_path / "half"
    export_checkpoint(run, half, hf=True, dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert transformers.AutoModelForCausalLM.from_pretrained(half).dtype == torch.bfloat16
    assert load_checkpoint(half)["model"]["wte.weight"].dtype == torch.float32
    export_checkpoint(half, tmp_path / "half_again", hf=True, dtype="bfloat16")
    transformers.AutoModelForCausalLM.from_pretrained(half).save_pretrained(half)  # unchanged: its dtype as 'dtype'
    export_checkpoint(half, tmp_path / "half_resaved", hf=True, dtype="bfloat16")  # still its own weights
    with pytest.raises(ConfigError, match=r"--dtype=bfloat16 sets the Hugging Face files' precision: give --hf"):
        export_checkpoint(run, tmp_path / "no_hf", dtype="bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(first)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(1.5)
    hf.save_pretrained(first)
    with pytest.raises(CheckpointError, match=r"is a Hugging Face folder whose weights changed after gptlab exported"):
        export_checkpoint(first, tmp_path / "stale", hf=True)
    assert not (tmp_path / "stale").exists()
    fine_tuned = (first / "model.safetensors").read_bytes()  # nor is the fine-tune overwritten by an export into it
    for hf_files in (True, False):
        with pytest.raises(ConfigError, match=r"holds model files no gptlab export wrote \(config.json, generation"):
            export_checkpoint(run, first, hf=hf_files)
    assert (first / "model.safetensors").read_bytes() == fine_tuned
    import sys  # installed without the hf extra, nothing there reads the Hugging Face weights: ckpt.pt is exported

    monkeypatch.setitem(sys.modules, "safetensors", None)
    export_checkpoint(first, tmp_path / "base")
    assert load_checkpoint(tmp_path / "base")["iter_num"] == 7


def test_an_hf_export_loads_with_its_tokenizers_limit_and_samples_at_any_temperature(tmp_path: Path) -> None:
    """from_pretrained of a `gptlab export --hf` folder keeps generate() below the tokenizer's size as the
    checkpoint itself does (it drew padding ids, which the char tokenizer cannot decode); a temperature that
    overflows float32 no longer meets the padding's mask as NaN (generate() raised; a negative one is refused)."""
    pytest.importorskip("safetensors")
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import save_single_file
    from gptlab.export_cli import export_checkpoint

    config = get_debug_config("llama", vocab_size=128)
    chars = [chr(32 + i) for i in range(102)]
    tokenizer = {"name": "char", "vocab_size": 102, "chars": chars}
    state = {**_state(7), "arch": config.to_dict(), "model": ConfigurableGPT(config).state_dict()}
    state["tokenizer"] = tokenizer
    save_single_file(state, tmp_path / "run")
    export_checkpoint(tmp_path / "run", tmp_path / "hf", hf=True)
    model = ConfigurableGPT.from_pretrained(tmp_path / "hf")
    assert model.vocab_limit == 102 == ConfigurableGPT.from_pretrained(tmp_path / "run").vocab_limit
    torch.manual_seed(0)
    start = torch.zeros(1, 1, dtype=torch.long)
    for temperature in (2.0, 1e39):
        assert int(model.generate(start, 50, temperature=temperature).max()) < 102, temperature
    # transformers' generate() stays below it too: the export's generation_config.json suppresses the padding
    transformers = pytest.importorskip("transformers")
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(102, 128))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        hf.lm_head.weight[102:] *= 100.0  # the padding ids would win every draw
    drawn = hf.generate(start, max_new_tokens=20, do_sample=True, pad_token_id=0)
    assert int(drawn.max()) < 102


def test_latest_checkpoint_breaks_a_tie_by_time_and_ranks_an_unrecorded_iteration_last(tmp_path: Path) -> None:
    """ckpt.pt and the sharded checkpoint ckpt.dcp points to, both at iteration 5 (a run that switched modes and
    saved again): the one written later is resumed. A record without an iteration is never taken over one with."""
    from gptlab.checkpoint import latest_checkpoint

    single = tmp_path / "ckpt.pt"
    torch.save({"format": FORMAT, "iter_num": 5}, single)
    sharded = tmp_path / "ckpt-0000005.dcp"
    sharded.mkdir()
    torch.save({"format": FORMAT, "iter_num": 5}, sharded / "meta.pt")
    (sharded / ".metadata").write_bytes(b"")  # (never read to pick the latest)
    (tmp_path / "ckpt.dcp").symlink_to(sharded.name)
    for older, newer in ((single, sharded / "meta.pt"), (sharded / "meta.pt", single)):
        os.utime(older, ns=(1_000_000_000, 1_000_000_000))
        os.utime(newer, ns=(2_000_000_000, 2_000_000_000))
        assert latest_checkpoint(tmp_path) == (single if newer == single else sharded.resolve())
    torch.save({"format": FORMAT}, single)  # newer, but no iteration: the sharded one at 5 is the latest
    assert latest_checkpoint(tmp_path) == sharded.resolve()


def test_optimizer_state_by_name_follows_the_optimizers_order_not_the_models() -> None:
    """configure_optimizers' two groups (matrices decayed, vectors not) list the parameters in another order than
    the model: each AdamW state is re-keyed to its own parameter's name (by shape and by value)."""
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import optimizer_state_by_name

    model = ConfigurableGPT(get_debug_config("gpt2"))
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    named = optimizer_state_by_name(model, opt, opt.state_dict())
    params = dict(model.named_parameters())
    assert set(named["state"]) == set(params)
    for name, state in named["state"].items():
        assert torch.equal(state["exp_avg"], opt.state[params[name]]["exp_avg"]), name
    decayed, kept = ([g["params"] for g in named["param_groups"] if (g["weight_decay"] > 0) == d] for d in (1, 0))
    assert sorted(n for group in decayed + kept for n in group) == sorted(params)  # each name once
    assert all(params[n].dim() >= 2 for group in decayed for n in group)
    assert all(params[n].dim() < 2 for group in kept for n in group)


def test_a_record_below_a_counts_minimum_or_with_a_gap_in_its_layers_is_damaged() -> None:
    from gptlab.checkpoint import record_problem, weights_disagree

    assert record_problem({"iter_num": 0, "world_size": 1}) is None
    assert record_problem({"iter_num": -1}) == "its iter_num is -1, not a non-negative integer"
    assert record_problem({"world_size": 0}) == "its world_size is 0, not a positive integer"
    assert record_problem({"iter_num": True}) == "its iter_num is True, not an integer"
    assert record_problem({"rng": {"torch": [1, 2]}}) == "its rng['torch'] is list, not a tensor"
    gap = {"blocks.0.attn.weight": (4, 4), "blocks.2.attn.weight": (4, 4)}  # two layers, but not blocks 0 and 1
    assert weights_disagree(2, None, gap) == "layers"
    assert weights_disagree(2, None, {"blocks.0.w": (4,), "blocks.1.w": (4,)}) is None


def test_a_shard_that_cannot_be_read_is_said_and_gathered_like_a_mismatch(tmp_path: Path, monkeypatch) -> None:
    """A rank whose share of the CRC reading fails (an I/O error) raised before the gather, leaving the other
    ranks waiting in it; it is gathered now, at save (every rank raises) and at load (one line). An export's
    single file does not carry the shards' record."""
    from gptlab import ConfigurableGPT, get_debug_config
    from gptlab.checkpoint import integrity, save_dcp
    from gptlab.errors import CheckpointError

    model = ConfigurableGPT(get_debug_config("llama", n_layer=1))
    meta = {"format": FORMAT, "arch": model.config.to_dict(), "iter_num": 3}
    final = save_dcp({"model": model.state_dict()}, meta, tmp_path, keep=1, rank=0, barrier=lambda: None)
    assert "shard_crc32" not in load_checkpoint(tmp_path, optimizer=False)
    real = integrity.file_crc32

    def unreadable(path: Path) -> int:
        if path.suffix == ".distcp":
            raise OSError(5, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(integrity, "file_crc32", unreadable)
    with pytest.raises(
        CheckpointError, match=r"could not be checked: its file '__0_0.distcp' could not be read \(Input"
    ):
        load_checkpoint(tmp_path, optimizer=False)
    with pytest.raises(OSError, match=r"Input/output error reading .*\.distcp"):
        integrity.shard_checksums(final)
