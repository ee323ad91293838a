"""The parallel setting (and the document's flags), checkpoint retention and atomicity, exact
resume of ddp and zero1 in one process (a one-rank gloo group), and ``gptlab export``."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from gptlab.checkpoint import latest_checkpoint, load_checkpoint
from gptlab.cli import main
from gptlab.config.resolve import parse_run_args
from gptlab.config.train import TrainConfig
from gptlab.errors import CheckpointError, ConfigError
from gptlab.parallel import resolve_mode
from gptlab.train.launch import train
from tests.train.conftest import tiny_args


def test_document_flags_map_onto_parallel() -> None:
    assert TrainConfig(use_zero1=True).parallel_mode == "zero1"
    assert TrainConfig(use_fsdp=True, parallel="fsdp").parallel_mode == "fsdp"
    fsdp = TrainConfig(use_fsdp=True)
    assert resolve_mode(dataclasses.replace(fsdp, use_fsdp=False), 2) == "ddp"  # the flag is not baked in
    assert resolve_mode(dataclasses.replace(fsdp, use_fsdp=False, use_zero1=True), 2) == "zero1"
    assert resolve_mode(TrainConfig(), 1) == "none" and resolve_mode(TrainConfig(), 4) == "ddp"
    with pytest.raises(ConfigError, match="use_fsdp=True conflicts with parallel='ddp'"):
        TrainConfig(use_fsdp=True, parallel="ddp")
    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(use_fsdp=True, use_zero1=True)
    with pytest.raises(ConfigError, match=r"parallel='zer01' is not one of .*did you mean 'zero1'"):
        TrainConfig(parallel="zer01")
    with pytest.raises(ConfigError, match="parallel='none' but WORLD_SIZE=2"):
        resolve_mode(TrainConfig(parallel="none"), 2)
    with pytest.raises(ConfigError, match="fsdp_cpu_offload=True needs parallel='fsdp'"):
        TrainConfig(fsdp_cpu_offload=True)


def _iter_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in rows if r["type"] == "iter"}


@pytest.mark.parametrize("mode", ["ddp", "zero1", "fsdp"])
def test_exact_resume_in_one_process(mode: str, data_dir: Path, tmp_path: Path) -> None:
    """A one-rank group runs each mode's code path (DDP hooks, ZeRO consolidation, DCP)."""
    args = dict(parallel=mode, max_iters=12, lr_decay_iters=12, eval_interval=6, keep_checkpoints=2)
    full, part = tmp_path / "full", tmp_path / "part"
    train(parse_run_args(tiny_args(data_dir, full, **args)), stream=io.StringIO())
    train(parse_run_args(tiny_args(data_dir, part, **{**args, "max_iters": 5})), stream=io.StringIO())
    assert load_checkpoint(part)["iter_num"] == 6
    train(parse_run_args(tiny_args(data_dir, part, **args, init_from="resume")), stream=io.StringIO())
    a, b = _iter_losses(full), _iter_losses(part)
    assert a == b  # bit for bit
    ckpt_a, ckpt_b = load_checkpoint(full), load_checkpoint(part)
    for key, value in ckpt_a["model"].items():
        assert torch.equal(value, ckpt_b["model"][key]), key
    suffix = "dcp" if mode == "fsdp" else "pt"
    kept = sorted(p.name for p in full.glob(f"ckpt-*.{suffix}"))
    assert kept == [f"ckpt-0000012.{suffix}", f"ckpt-0000013.{suffix}"]  # keep_checkpoints=2


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_the_model_is_freed_before_its_process_group(
    mode: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's reference cycles (FSDP's and DDP's hooks) hold the process groups it reduces over: left to
    the collector, they outlived destroy_process_group and were freed at interpreter exit, where gloo's
    threads now and then aborted a finished rank ("terminate called without an active exception")."""
    import gc

    import torch.distributed as dist

    from gptlab.model.gpt import ConfigurableGPT

    alive_at_destroy: list[int] = []
    destroy = dist.destroy_process_group

    def counting_destroy(*args: object, **kwargs: object) -> None:
        alive_at_destroy.append(sum(issubclass(type(o), ConfigurableGPT) for o in gc.get_objects()))
        destroy(*args, **kwargs)

    monkeypatch.setattr(dist, "destroy_process_group", counting_destroy)
    gc.collect()
    gc.disable()  # the collector's own timing must not decide it
    try:
        train(parse_run_args(tiny_args(data_dir, tmp_path / "run", parallel=mode, max_iters=2)), stream=io.StringIO())
        assert alive_at_destroy == [0]
        assert not any(issubclass(type(o), ConfigurableGPT) for o in gc.get_objects())
    finally:
        gc.enable()


def test_activation_checkpointing_recomputes_the_same_numbers(data_dir: Path, tmp_path: Path) -> None:
    base = dict(parallel="fsdp", max_iters=3, eval_interval=100)
    plain = train(parse_run_args(tiny_args(data_dir, tmp_path / "a", **base)), stream=io.StringIO())
    ac = dict(activation_checkpointing=True, **base)
    again = train(parse_run_args(tiny_args(data_dir, tmp_path / "b", **ac)), stream=io.StringIO())
    assert _iter_losses(tmp_path / "a") == _iter_losses(tmp_path / "b")
    assert plain["final_val_loss"] == again["final_val_loss"]
    with pytest.raises(ConfigError, match="fsdp_cpu_offload=True offloads from a GPU"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "c", fsdp_cpu_offload=True, **base)))


def test_interrupted_dcp_save_leaves_the_previous_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    train(parse_run_args(tiny_args(data_dir, tmp_path, parallel="fsdp", max_iters=3)), stream=io.StringIO())
    before = latest_checkpoint(tmp_path)
    assert before is not None and before.name == "ckpt-0000004.dcp"
    # a save that died half-way: shards written under the temporary name, never renamed
    partial = tmp_path / ".ckpt-0000008.dcp.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"\0" * 100)
    assert latest_checkpoint(tmp_path) == before and load_checkpoint(tmp_path)["iter_num"] == 4
    args = tiny_args(data_dir, tmp_path, parallel="fsdp", max_iters=8, init_from="resume")
    train(parse_run_args(args), stream=io.StringIO())
    assert latest_checkpoint(tmp_path).name == "ckpt-0000009.dcp" and not partial.exists()
    assert not (tmp_path / "ckpt-0000004.dcp").exists()  # keep_checkpoints=1
    # the shards' CRC-32s, recorded at save, are checked before their weights load: a flipped byte loaded as a
    # weight (or stopped the run later as a NaN, "lower learning_rate"), where ckpt.pt's zip CRCs caught it
    latest = latest_checkpoint(tmp_path)
    recorded = torch.load(latest / "meta.pt", weights_only=True)["shard_crc32"]
    assert sorted(recorded) == sorted(p.name for p in latest.iterdir() if p.name != "meta.pt")
    shard = latest / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    corrupt = rf"^'{latest}' is corrupt: its file '__0_0.distcp' fails its CRC-32 check"
    with pytest.raises(CheckpointError, match=corrupt):
        train(parse_run_args(tiny_args(data_dir, tmp_path, parallel="fsdp", max_iters=12, init_from="resume")))
    with pytest.raises(CheckpointError, match=corrupt):  # sample, export, eval: the weights alone
        load_checkpoint(tmp_path, optimizer=False)


def test_export_fsdp_checkpoint_to_single_file_and_hf(data_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("safetensors")
    from gptlab import ConfigurableGPT

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=2)), stream=io.StringIO())
    assert main(["export", str(run / "ckpt.dcp"), str(tmp_path / "out"), "--hf"]) == 0
    src, single = load_checkpoint(run), load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert single["iter_num"] == 3 and len(single["optimizer"]["state"]) == len(src["optimizer"]["state"])
    hf = ConfigurableGPT.from_pretrained(tmp_path / "out")
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(value, src["model"][key])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] is None  # trained on a char vocabulary: no end-of-text id to name
    assert not (tmp_path / "out" / "vocab.json").exists()  # Hugging Face has no char tokenizer files...
    from gptlab.train.sample import parse_sample_args, sample

    # ...so sampling the export decodes with the ckpt.pt beside the Hugging Face files
    args = [f"--init_from={str(tmp_path / 'out')!r}", "--max_new_tokens=4", "--num_samples=1", "--device=cpu"]
    assert len(sample(parse_sample_args(args))[0]) == 5  # the default prompt '\n' and 4 characters
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o2")
    # inside the run's sharded checkpoint folder, or named as one in the run directory: its next save prunes
    # that folder with the export in it (both were written, and gone after a resume)
    named = f"named as a sharded checkpoint folder of run {str(run)!r}"  # (not there: not 'lies in' it)
    for dest, said in (
        (run / "ckpt.dcp" / "hf", "lies in the sharded checkpoint folder"),
        (run / "ckpt-0000008.dcp", named),
        (run / "ckpt-0000003.dcp" / "a" / "b", "lies in the sharded checkpoint folder"),  # a kept one
    ):
        assert main(["export", str(run), str(dest), "--hf"]) == 2, dest
        assert said in capsys.readouterr().err, dest
        assert not dest.exists()


def test_export_hf_of_an_architecture_without_equivalent_writes_nothing(data_dir: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, arch_preset="hybrid", max_iters=1)), stream=io.StringIO())
    assert main(["export", str(run), str(tmp_path / "out"), "--hf"]) == 2
    assert "no exact Hugging Face equivalent" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_overwrite_removes_the_replaced_runs_checkpoints(data_dir: Path, tmp_path: Path) -> None:
    """A run that replaces another leaves none of its checkpoints (here an FSDP one and a kept history)
    for a later resume or export to find."""
    first = tiny_args(data_dir, tmp_path, parallel="fsdp", max_iters=8, eval_interval=4, keep_checkpoints=2)
    train(parse_run_args(first), stream=io.StringIO())
    assert (tmp_path / "ckpt.dcp").is_symlink() and (tmp_path / "ckpt-0000009.dcp").is_dir()
    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2, overwrite=True)), stream=io.StringIO())
    assert sorted(p.name for p in tmp_path.glob("ckpt*")) == ["ckpt.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt.pt" and load_checkpoint(tmp_path)["iter_num"] == 3
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "overwrite" and "ckpt-0000009.dcp" in e["message"] for e in events)


@pytest.mark.parametrize("source", ["run", "ckpt.dcp"])
def test_a_fine_tune_that_overwrites_its_own_source_run_leaves_only_itself(
    source: str, data_dir: Path, tmp_path: Path
) -> None:
    """--init_from=OUT (or OUT/ckpt.dcp) --overwrite=True into OUT: the source stays until the fine-tune's
    first checkpoint (a crash before it loses nothing), then goes; a resume continues the fine-tune."""
    first = tiny_args(data_dir, tmp_path, parallel="fsdp", max_iters=8, eval_interval=4, keep_checkpoints=2)
    train(parse_run_args(first), stream=io.StringIO())
    init = str(tmp_path if source == "run" else tmp_path / "ckpt.dcp")
    tune = tiny_args(
        data_dir, tmp_path, init_from=init, overwrite=True, max_iters=4, eval_interval=2, keep_checkpoints=2
    )
    train(parse_run_args(tune), stream=io.StringIO())
    assert sorted(p.name for p in tmp_path.glob("ckpt*")) == ["ckpt-0000004.pt", "ckpt-0000005.pt", "ckpt.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt.pt" and load_checkpoint(tmp_path)["iter_num"] == 5


@pytest.mark.parametrize("parallel", ["none", "fsdp"])
def test_a_fine_tune_in_place_stopped_before_its_first_save_is_not_resumed_as_the_run_it_replaced(
    parallel: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--init_from=OUT --overwrite=True into OUT, failed at its iteration 2: OUT's checkpoint is the weights it
    started from, kept until its first save. A resume had taken them for the run's own: 'nothing to do' (the
    replaced run's 9 iterations, its summary 'completed'), or trained on as the replaced run under the fine-tune's
    log. Refused, saying what to run; the replaced run's eval_only evaluations went with it."""
    from gptlab.train.loop import Trainer

    history = {"keep_checkpoints": 2} if parallel == "fsdp" else {}  # in one process, a ckpt.pt alone: none removed
    first = tiny_args(data_dir, tmp_path, parallel=parallel, max_iters=8, eval_interval=4, **history)
    train(parse_run_args(first), stream=io.StringIO())
    train(
        parse_run_args([*tiny_args(data_dir, tmp_path, init_from="resume"), "--eval_only=True"]), stream=io.StringIO()
    )
    assert (tmp_path / "eval.jsonl").is_file()
    original = Trainer.forward_backward

    def fails_at_iteration_2(self: Trainer, *args: object) -> torch.Tensor:
        if self.iter_num == 2:
            raise RuntimeError("a node failed")
        return original(self, *args)

    tune = tiny_args(data_dir, tmp_path, init_from=str(tmp_path), overwrite=True, max_iters=5, eval_interval=4)

    def stopped_fine_tune() -> None:
        monkeypatch.setattr(Trainer, "forward_backward", fails_at_iteration_2)
        with pytest.raises(RuntimeError, match="a node failed"):
            train(parse_run_args(tune), stream=io.StringIO())
        monkeypatch.setattr(Trainer, "forward_backward", original)

    def resume(max_iters: int = 7) -> None:
        train(
            parse_run_args(tiny_args(data_dir, tmp_path, init_from="resume", max_iters=max_iters)), stream=io.StringIO()
        )

    def refused(kept: str) -> None:
        said = r"holds no checkpoint of its run \(its run, a fine-tune in place, stopped before its first save: "
        said += rf"{kept} is the replaced run's checkpoint it started from, kept until that save; run its command again"
        with pytest.raises(CheckpointError, match=said):
            resume()
        assert not (tmp_path / "summary.json").exists()  # not 'completed'

    stopped_fine_tune()
    assert not (tmp_path / "eval.jsonl").exists()  # the replaced weights' evaluation
    refused("ckpt.pt" if parallel == "none" else "ckpt-0000009.dcp")
    train(parse_run_args(tune), stream=io.StringIO())  # its command again: the fine-tune, then resumable
    assert "kept_source" not in json.loads((tmp_path / "config.json").read_text())  # its own from its first save
    resume()
    assert load_checkpoint(tmp_path)["iter_num"] == 8
    # a second fine-tune in place (its source records the same origin as it): stopped before its save, refused too
    stopped_fine_tune()
    refused("ckpt.pt")
    # a source kept from the run's history, made the latest by the rollback hint's `ln -f ckpt-ITER.pt ckpt.pt`
    os.link(tmp_path / "ckpt.pt", tmp_path / "ckpt-0000099.pt")
    record = json.loads((tmp_path / "config.json").read_text())
    record["kept_source"]["name"] = "ckpt-0000099.pt"
    (tmp_path / "config.json").write_text(json.dumps(record))
    refused("ckpt-0000099.pt")
    (tmp_path / "ckpt-0000099.pt").unlink()
    # a checkpoint put there since is not the one kept: resumed as any checkpoint in the folder is
    other = tmp_path.parent / f"{tmp_path.name}-other"
    train(parse_run_args(tiny_args(data_dir, other, max_iters=2, seed=7)), stream=io.StringIO())
    shutil.copyfile(other / "ckpt.pt", tmp_path / "ckpt.pt")
    resume(max_iters=4)
    assert load_checkpoint(tmp_path)["iter_num"] == 5


def test_a_fine_tune_that_overwrites_keeps_weights_of_the_users_that_lie_in_out_dir(
    data_dir: Path, tmp_path: Path
) -> None:
    """--init_from=OUT/my_base.pt (or an export folder inside OUT) --overwrite=True: the user's file is not one
    of the replaced run's checkpoints, and stays (it was deleted at the fine-tune's first save)."""
    import shutil

    from gptlab.export_cli import export_checkpoint

    train(parse_run_args(tiny_args(data_dir, tmp_path, max_iters=2)), stream=io.StringIO())
    export_checkpoint(tmp_path, tmp_path / "export")
    shutil.copyfile(tmp_path / "ckpt.pt", tmp_path / "my_base.pt")
    base = load_checkpoint(tmp_path)["iter_num"]
    for init in (tmp_path / "my_base.pt", tmp_path / "export"):
        tune = tiny_args(data_dir, tmp_path, init_from=str(init), overwrite=True, max_iters=4, eval_interval=2)
        train(parse_run_args(tune), stream=io.StringIO())
        assert load_checkpoint(tmp_path / "my_base.pt")["iter_num"] == base
        assert load_checkpoint(tmp_path / "export")["iter_num"] == base
        assert load_checkpoint(tmp_path)["iter_num"] == 5 != base  # the fine-tune's own


def test_fsdp_run_loads_as_pretrained_weights_and_samples(data_dir: Path, tmp_path: Path) -> None:
    """A sharded checkpoint (a run directory or its ckpt.dcp) fine-tunes, loads through from_pretrained
    and samples with the tokenizer it records, as a ckpt.pt does."""
    from gptlab import ConfigurableGPT
    from gptlab.train.sample import parse_sample_args, sample

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=2)), stream=io.StringIO())
    saved = load_checkpoint(run)["model"]

    def no_optimizer(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights alone are read: no optimizer is built, no AdamW states read")

    original, ConfigurableGPT.configure_optimizers = ConfigurableGPT.configure_optimizers, no_optimizer
    try:
        for src in (run, run / "ckpt.dcp"):
            model = ConfigurableGPT.from_pretrained(src)
            for key, value in model.state_dict().items():
                assert torch.equal(value, saved[key]), key
        assert "optimizer" not in load_checkpoint(run, optimizer=False)
    finally:
        ConfigurableGPT.configure_optimizers = original
    ft = tmp_path / "ft"
    train(parse_run_args(tiny_args(data_dir, ft, init_from=str(run), max_iters=1)), stream=io.StringIO())
    settings = parse_sample_args(
        [f"--init_from={str(run)!r}", "--num_samples=1", "--max_new_tokens=4", "--device='cpu'"]
    )
    assert len(list(sample(settings))) == 1  # the char tokenizer the run recorded decodes it
    with pytest.raises(ConfigError, match=r"arch_preset='gpt2' conflicts with the weights loaded from .*drop --arch_p"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "x", init_from=str(run), arch_preset="gpt2")))
    # the family keys typed with a preset override it, as they do on a scratch run
    family = dict(normalization="rmsnorm", position_encoding="rope", ffn_type="swiglu")
    typed = tiny_args(data_dir, tmp_path / "y", init_from=str(run), arch_preset="gpt2", max_iters=1, **family)
    train(parse_run_args(typed), stream=io.StringIO())


def test_readers_of_a_live_fsdp_run_read_the_save_that_replaced_theirs(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sample, export and from_pretrained on a run that is still training: its next save (keep_checkpoints)
    prunes the sharded checkpoint they resolved while they read it. They read the newer one (each read
    failed: 'not a readable gptlab DCP checkpoint', 'meta.pt could not be read', a bare FileNotFoundError,
    with DCP's "Global metadata is not found" traceback on stderr); a checkpoint named itself stays an error."""
    import gptlab.checkpoint
    from gptlab import ConfigurableGPT
    from gptlab.checkpoint import CheckpointError
    from gptlab.export_cli import export_checkpoint
    from gptlab.train.sample import parse_sample_args, sample

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=2)), stream=io.StringIO())
    read = gptlab.checkpoint.load.load_dcp
    replaced: list[Path] = []

    def live_save_then_read(state: dict, path: Path, **kwargs: object) -> None:
        """The live run's next save lands (a copy, linked as the latest) and prunes this one, mid-read."""
        path = Path(path)
        if not replaced:
            newer = run / f"ckpt-{int(path.name[5:12]) + 1:07d}.dcp"
            shutil.copytree(path, newer)
            (run / "ckpt.dcp").unlink()
            (run / "ckpt.dcp").symlink_to(newer.name)
            shutil.rmtree(path)
            replaced.append(path)
        read(state, path, **kwargs)

    monkeypatch.setattr(gptlab.checkpoint.load, "load_dcp", live_save_then_read)
    settings = [f"--init_from={str(run)!r}", "--num_samples=1", "--max_new_tokens=2", "--device='cpu'"]
    readers = {
        "load_checkpoint": lambda: load_checkpoint(run),
        "sample": lambda: list(sample(parse_sample_args(settings))),
        "from_pretrained": lambda: ConfigurableGPT.from_pretrained(run),
        "export": lambda: export_checkpoint(run, tmp_path / "exported"),
    }
    for name, reader in readers.items():
        replaced.clear()
        assert reader(), name
        assert replaced and not replaced[0].exists(), name  # it did go while read
        err = capfd.readouterr().err
        assert "Global metadata" not in err and "Traceback" not in err, (name, err[-2000:])
        printed = [r for r in caplog.records if r.name == "root"]  # DCP's own logger has a NullHandler
        assert not printed, (name, caplog.text[-2000:])  # the root logger's: stderr without logging set up
    replaced.clear()  # a checkpoint named by its own path: read as it is, or an error that says so
    named = run / "ckpt.dcp"
    with pytest.raises(CheckpointError, match="is not a readable gptlab DCP checkpoint"):
        load_checkpoint(named.resolve())


def test_the_later_iteration_wins_after_a_mode_switch(data_dir: Path, tmp_path: Path) -> None:
    """A ddp run resumed under fsdp leaves its older ckpt.pt: resuming, exporting and loading take the
    later iteration even when the ckpt.pt's file time is the newer (a copied directory)."""
    from gptlab import ConfigurableGPT

    run = tmp_path / "run"
    args = dict(max_iters=3, lr_decay_iters=8, eval_interval=4)
    train(parse_run_args(tiny_args(data_dir, run, parallel="ddp", **args)), stream=io.StringIO())
    more = dict(args, max_iters=8, init_from="resume")
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", **more)), stream=io.StringIO())
    os.utime(run / "ckpt.pt")  # now the newest file
    assert latest_checkpoint(run).name == "ckpt-0000009.dcp" and load_checkpoint(run)["iter_num"] == 9
    newer = load_checkpoint(run)["model"]
    assert all(torch.equal(v, newer[k]) for k, v in ConfigurableGPT.from_pretrained(run).state_dict().items())


def test_damaged_dcp_checkpoint_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.errors import CheckpointError

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=2)), stream=io.StringIO())
    for shard in (run / "ckpt.dcp").glob("*.distcp"):
        shard.unlink()
    with pytest.raises(CheckpointError, match=r"is not a readable gptlab DCP checkpoint \(") as e:
        load_checkpoint(run)
    assert "\n" not in str(e.value)
    resume = parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=4, init_from="resume"))
    with pytest.raises(CheckpointError, match="is not a readable gptlab DCP checkpoint"):
        train(resume, stream=io.StringIO())


def test_a_run_clears_what_killed_saves_left(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removed first: on a full disk the leftovers took the room that the start's own checks write into (the
    shared-folder probe failed, so the resume never reached the cleanup)."""
    from gptlab import parallel

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=2)), stream=io.StringIO())
    (run / ".ckpt.pt.tmp-99999").write_bytes(b"\0" * 64)  # a single-file save killed mid-write
    (run / ".ckpt-0000008.dcp.tmp").mkdir()  # a sharded one
    shutil.copytree(run / "ckpt-0000003.dcp", run / ".ckpt-0000003.dcp.old")  # a re-save's, killed after the swap
    probe = parallel.check_shared_out_dir

    def leftovers_gone_first(out_dir: Path, info: object) -> None:
        assert not [p.name for p in run.iterdir() if p.name.startswith(".ckpt")]
        probe(out_dir, info)

    monkeypatch.setattr(parallel, "check_shared_out_dir", leftovers_gone_first)
    train(
        parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=4, init_from="resume")), stream=io.StringIO()
    )
    names = {p.name for p in run.iterdir()}
    assert not {n for n in names if n.startswith(".ckpt")}, names
    assert "ckpt-0000005.dcp" in names and load_checkpoint(run)["iter_num"] == 5
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    cleanup = [e for e in events if e.get("event") == "cleanup"]
    assert cleanup and ".ckpt.pt.tmp-99999" in cleanup[0]["message"]


def test_resume_without_checkpoint_and_file_out_dir_fail_first(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.errors import CheckpointError

    missing = tmp_path / "none"
    with pytest.raises(CheckpointError, match=r"init_from='resume' but out_dir=.*none' does not exist"):
        parse_run_args(tiny_args(data_dir, missing, init_from="resume", gradient_accumulation_steps=3))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file: expected a directory"):
        train(parse_run_args(tiny_args(data_dir, tmp_path / "file")))


def test_a_dcp_iteration_saved_again_is_rewritten_unless_it_is_the_resumed_state(
    data_dir: Path, tmp_path: Path
) -> None:
    """Resumed from ckpt-6 and evaluated at 6 again: the shards on disk are that state, only meta.pt is
    rewritten (with the new settings). A fine-tune into the same out_dir reaching iteration 4, where the
    replaced run left its ckpt-4 (kept as the fine-tune's source), writes its own weights there."""
    from gptlab.checkpoint import load_checkpoint_meta

    run = tmp_path / "run"
    args = dict(parallel="fsdp", max_iters=5, eval_interval=6, keep_checkpoints=3)
    train(parse_run_args(tiny_args(data_dir, run, **args)), stream=io.StringIO())
    shards = {p: p.stat().st_mtime_ns for p in (run / "ckpt-0000006.dcp").glob("*.distcp")}
    train(parse_run_args(tiny_args(data_dir, run, **{**args, "max_iters": 8, "init_from": "resume"})))
    assert {p: p.stat().st_mtime_ns for p in shards} == shards  # not rewritten...
    meta = load_checkpoint_meta(run / "ckpt-0000006.dcp")
    assert meta["config"]["train"]["max_iters"] == 8  # ...but its settings are the resumed run's

    src = tmp_path / "src"
    train(parse_run_args(tiny_args(data_dir, src, parallel="fsdp", max_iters=8, eval_interval=4, keep_checkpoints=3)))
    before = load_checkpoint(src / "ckpt-0000004.dcp")["model"]
    finetune = dict(parallel="fsdp", max_iters=4, eval_interval=4, keep_checkpoints=3, learning_rate=3e-2)
    finetune.update(init_from=str(src / "ckpt-0000004.dcp"), overwrite=True, always_save_checkpoint=True)
    train(parse_run_args(tiny_args(data_dir, src, **finetune)), stream=io.StringIO())
    after = load_checkpoint(src / "ckpt-0000004.dcp")
    assert after["config"]["train"]["learning_rate"] == 3e-2
    assert not all(torch.equal(v, before[k]) for k, v in after["model"].items())  # the fine-tune's weights


def test_a_save_interrupted_between_renames_is_named_not_deleted(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.checkpoint import remove_save_leftovers
    from gptlab.errors import CheckpointError

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=2)), stream=io.StringIO())
    (run / "ckpt-0000003.dcp").rename(run / ".ckpt-0000003.dcp.old")  # killed right after the first rename
    assert remove_save_leftovers(run) == []  # the only copy is kept
    with pytest.raises(CheckpointError, match=r"interrupted; left: \.ckpt-0000003\.dcp\.old \(the one it replaced\)"):
        parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=4, init_from="resume"))
    (run / "ckpt-0000001.dcp").mkdir()  # an older kept one: its rollback is not the remedy (it drops the save)
    with pytest.raises(CheckpointError, match=r"rename one to ckpt-0000003\.dcp\)$"):
        parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=4, init_from="resume"))
    (run / "ckpt-0000001.dcp").rmdir()
    # beside an older ckpt.pt the resume takes that one, and says what else is there
    older = tmp_path / "older"
    train(parse_run_args(tiny_args(data_dir, older, max_iters=1)), stream=io.StringIO())
    shutil.copy(older / "ckpt.pt", run / "ckpt.pt")
    train(parse_run_args(tiny_args(data_dir, run, max_iters=3, init_from="resume")), stream=io.StringIO())
    (event,) = [
        r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == "interrupted_save"
    ]
    assert ".ckpt-0000003.dcp.old (the one it replaced)" in event["message"]


def test_a_crafted_dcp_metadata_runs_no_code(data_dir: Path, tmp_path: Path) -> None:
    """DCP reads .metadata with plain pickle.load: a downloaded FSDP checkpoint could run code when sampled,
    exported, fine-tuned from or resumed. gptlab reads it first with an unpickler that builds only DCP's
    metadata types (a real one passes: this run's own checkpoint loads)."""
    import pickle

    from gptlab.errors import CheckpointError

    run = tmp_path / "run"
    train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=4, eval_interval=4)), stream=io.StringIO())
    dcp_dir = latest_checkpoint(run)
    assert dcp_dir is not None and dcp_dir.suffix == ".dcp" and load_checkpoint(run)["iter_num"] == 5
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (dcp_dir / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match=r"\.metadata' is not a DCP checkpoint's metadata \(it names"):
        load_checkpoint(run)
    from gptlab import ConfigurableGPT

    with pytest.raises(CheckpointError, match="could run code when unpickled"):
        ConfigurableGPT.from_pretrained(dcp_dir)
    with pytest.raises(CheckpointError, match="could run code when unpickled"):
        train(parse_run_args(tiny_args(data_dir, run, parallel="fsdp", max_iters=8, init_from="resume")))
    assert not marker.exists()


def test_an_fsdp_run_copied_without_its_symlink_resumes_sharded(data_dir: Path, tmp_path: Path) -> None:
    """scp -r, rsync -rL, cloud sync tools and shutil.copytree copy ``ckpt.dcp`` as a directory, not a link:
    the copy resumes under fsdp on the uninterrupted curve (the first save must not fail on that directory)."""
    args = dict(parallel="fsdp", max_iters=10, lr_decay_iters=10, eval_interval=4)
    full, part, copy = tmp_path / "full", tmp_path / "part", tmp_path / "copy"
    train(parse_run_args(tiny_args(data_dir, full, **args)), stream=io.StringIO())
    train(parse_run_args(tiny_args(data_dir, part, **{**args, "max_iters": 5})), stream=io.StringIO())
    shutil.copytree(part, copy)  # symlinks=False: ckpt.dcp arrives as a real directory
    assert (copy / "ckpt.dcp").is_dir() and not (copy / "ckpt.dcp").is_symlink()
    train(parse_run_args(tiny_args(data_dir, copy, **args, init_from="resume")), stream=io.StringIO())
    assert _iter_losses(full) == _iter_losses(copy)
