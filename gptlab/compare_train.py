"""``gptlab compare --train``: train each architecture with the same settings (data, seed,
batch, iterations, hence tokens) into ``out_dir/LABEL/``, then one report over all runs."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptlab.compare import (
    TABLE_DEFAULTS,
    Architecture,
    Comparison,
    compute_figures,
    refuse_arch_preset,
    resolve_architecture,
)
from gptlab.errors import ConfigError

# A short CPU setting on the embedded dataset (about 2 s per architecture on 2 cores); every
# key can be overridden with --key=value. The architecture keys shrink the presets to a size
# the CPU trains quickly; a config file's architecture keys take precedence over them.
TRAIN_DEFAULTS: dict[str, Any] = dict(
    dataset="stdlib_char",
    out_dir="out/compare",
    overwrite=True,  # a comparison re-run replaces the last one's runs
    seed=1337,
    n_layer=2,
    n_head=4,
    n_embd=64,
    multiple_of=16,  # LLaMA's 256 would round SwiGLU's 8H/3 = 171 up to 4H at this width: keep it like for like
    block_size=64,
    dropout=0.0,
    batch_size=8,
    gradient_accumulation_steps=1,
    max_iters=200,
    lr_decay_iters=200,
    warmup_iters=20,
    learning_rate=3e-3,
    min_lr=3e-4,
    weight_decay=0.1,
    eval_interval=50,
    eval_iters=10,
    log_interval=5,
    gradient_log_interval=5,
    device="cpu",
    dtype="float32",
    compile=False,
    log_style="compact",
    sample_at_end=False,
)

TRAIN_ROWS: tuple[tuple[str, str], ...] = (
    ("status", "status"),
    ("final_val_loss", "final val loss"),
    ("best_val_loss", "best val loss"),
    ("unigram_baseline_loss", "unigram baseline loss (val)"),
    ("tokens_trained", "tokens trained"),
    ("tokens_per_sec", "tokens/s (median past warm-up)"),
    ("mfu", "MFU (median past warm-up)"),
    ("peak_memory_gb", "peak memory of this training (GB: CUDA measured, CPU planned at its batch)"),
    ("total_time_s", "wall time (s)"),
    ("device", "device"),
    ("run_dir", "run directory"),
)


def result_cell(result: dict[str, Any], key: str) -> str:
    """One cell of the training table: a run that did not complete says where its final val loss was measured
    (one stopped by a non-finite loss has its last finite evaluation's, iteration 0's for an early divergence)."""
    cell, where = format_result(key, result.get(key)), result.get("final_val_iter")
    if key == "final_val_loss" and result.get("status") != "completed" and None not in (result.get(key), where):
        cell += f" (iter {where})"
    if key in ("tokens_per_sec", "mfu") and result.get(key) is not None and result.get("warmup_included"):
        cell += " (warm-up included: 2 or fewer steps logged)"  # the compile's step, maybe: no rate past it
    return cell


def format_result(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key == "mfu":
        return f"{value:.2%}"
    if key == "tokens_per_sec" or key == "tokens_trained":
        return f"{value:,.0f}"
    if key == "total_time_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _run_values(arch: Architecture, overrides: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from gptlab.config.files import names_a_file
    from gptlab.config.train import ARCH_FIELDS
    from gptlab.plugins import merge_plugins

    values = dict(TRAIN_DEFAULTS)
    if names_a_file(arch.source):
        # as resolve_architecture loaded it: run again, a file whose import registered (import my_norms) would
        # no longer register
        keys = (*ARCH_FIELDS, "arch_preset", "plugins")  # and what registers its components, recorded by the run
        values.update({k: v for k, v in arch.file_values.items() if k in keys})
    else:
        values["arch_preset"] = arch.source
    plugins = merge_plugins(values.get("plugins"), overrides.get("plugins"))  # the file's and the command's
    values.update(overrides, **({"plugins": plugins} if plugins else {}))
    if (kv_heads := _shrunk_kv_heads(arch, values, overrides)) is not None:
        values["n_kv_head"] = kv_heads[0]
    max_iters = overrides.get("max_iters")
    if isinstance(max_iters, int) and not isinstance(max_iters, bool):  # (a bad value: TrainConfig says so)
        # the schedule spans the run, as by default, with a warmup of at most a tenth of it
        if "lr_decay_iters" not in overrides:
            values["lr_decay_iters"] = max_iters
        if "warmup_iters" not in overrides:
            values["warmup_iters"] = min(values["warmup_iters"], max(max_iters, 0) // 10)
    values["out_dir"] = str(out_dir / arch.label)
    # wandb: each architecture's run by its label (all were 'run', or all the one --wandb_run_name)
    named = overrides.get("wandb_run_name")
    if "wandb_run_name" not in overrides:
        values["wandb_run_name"] = arch.label
    elif isinstance(named, str) and named:  # (another value: TrainConfig says what is wrong with it)
        values["wandb_run_name"] = f"{named}-{arch.label}"
    return values


def _shrunk_kv_heads(arch: Architecture, values: dict[str, Any], overrides: dict[str, Any]) -> tuple[int, str] | None:
    """A config file's grouped-query attention shrunk with its heads: the file's n_kv_head of its n_head became
    plain multi-head attention at the shrink's 4 heads (n_kv_head=4), or was refused (n_kv_head=3 does not
    divide 4). The group (query heads per key/value head) kept, or the nearest one the shrunk heads allow that is
    still grouped; None where the heads are the file's or the command's own."""
    source_heads, source_kv = arch.config.n_head, arch.config.n_kv_head
    if source_kv is None or "n_kv_head" in overrides or "n_head" in overrides or "n_head" in arch.file_values:
        return None
    heads = values["n_head"]
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        return None  # (TrainConfig names the bad value)
    divisors = [d for d in range(1, heads + 1) if heads % d == 0]
    if source_kv < source_heads:  # grouped: stays grouped (fewer key/value heads than query heads) if it can
        divisors = [d for d in divisors if d < heads] or divisors
    target = heads * source_kv / source_heads
    kv = min(divisors, key=lambda d: (abs(d - target), -d))
    exact = "" if kv == target else f" (the nearest group {heads} heads allow)"
    note = (
        f"n_kv_head={source_kv} of n_head={source_heads} shrunk with the heads: n_kv_head={kv} of n_head={heads}{exact}"
    )
    return kv, note


def _result(run_dir: Path, summary: dict[str, Any], startup: dict[str, Any]) -> dict[str, Any]:
    stat = lambda key: (summary.get(key) or {}).get  # noqa: E731
    cuda = str(startup["hardware"]["device"]).startswith("cuda")
    return {
        "status": summary.get("status"),
        "final_val_loss": summary.get("final_val_loss"),
        "final_val_iter": summary.get("final_val_iter"),
        "best_val_loss": summary.get("best_val_loss"),
        "unigram_baseline_loss": summary.get("unigram_baseline_loss"),
        # where the run ended (a diverged one stops early); a summary without it (an older gptlab's): the plan
        "tokens_trained": summary.get("tokens_seen", startup["training"]["total_tokens"]),
        "tokens_per_sec": stat("tokens_per_sec")("median"),
        "mfu": stat("mfu")("median"),  # the MFU of the tokens/s beside it
        # a run that logged 2 steps or fewer has no step past the warm-up: its median is of those
        "warmup_included": summary.get("iterations_excluded_as_warmup") == 0,
        # a CPU has no per-run measure: the runs share one process, whose RSS only grows
        "peak_memory_gb": summary.get("peak_memory_gb" if cuda else "planned_peak_gb"),
        "total_time_s": summary.get("total_time_s"),
        "device": startup["hardware"]["device"],
        "run_dir": str(run_dir),
    }


def _warm_up(runs: list[Any]) -> None:
    """A few throwaway steps of every model first, so that the process's one-time costs (lazy
    initialisation, kernel selection: seconds on a CPU) are not charged to the first architecture. Their
    random draws come from a forked generator: a caller's (a notebook's) stream goes on as it was."""
    import torch

    from gptlab.device import resolve_device
    from gptlab.train.launch import global_torch_settings_kept

    devices = [d for d in {resolve_device(run.train.device) for run in runs} if d.type == "cuda"]
    # and as train() runs: float32, gradients on, whatever the caller's (a notebook's no_grad cell) are
    with torch.random.fork_rng(devices=devices), global_torch_settings_kept(bool(devices)):
        _warm_up_steps(runs)


def _warm_up_steps(runs: list[Any]) -> None:
    import torch

    from gptlab.device import resolve_device
    from gptlab.model.gpt import ConfigurableGPT

    for run in runs:
        device = resolve_device(run.train.device)
        model = ConfigurableGPT(run.arch).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        x = torch.randint(0, run.arch.vocab_size, (run.train.batch_size, run.arch.block_size), device=device)
        for _ in range(2):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.eval()(x, x)


def refuse_not_training(overrides: dict[str, Any], config_file: str | None = None) -> None:
    """--train trains every architecture from scratch, the same way: another start (one model's weights under every
    label, or a resume of the last comparison's runs, whose figures were shown as if trained now; a config file's
    fine-tune, whose column is its weights' architecture) or an evaluation is no comparison of architectures."""
    init_from = overrides.get("init_from", "scratch")
    if init_from != "scratch":
        given = f"config file {config_file!r} sets " if config_file else ""
        raise ConfigError(
            f"{given}init_from={init_from!r}: compare --train trains each architecture from scratch, side by side; "
            "train or fine-tune runs with train.py, then compare their run directories (gptlab compare DIR ...)"
        )
    if overrides.get("eval_only"):
        raise ConfigError(
            "eval_only=True: compare --train trains each architecture; evaluate a run with train.py "
            "--init_from=resume --eval_only=True, and compare run directories without --train"
        )


def train_and_compare(
    names: list[str],
    overrides: dict[str, Any] | None = None,
    *,
    out_dir: str | Path | None = None,
    table: dict[str, Any] | None = None,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Train every architecture in ``names`` with ``TRAIN_DEFAULTS`` + ``overrides``, then tabulate
    the trained architectures (``table``: TABLE_DEFAULTS keys) and their results, and write the report."""
    from gptlab.config.resolve import resolve_run_config

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # every rank would train every run into one folder
        raise ConfigError(
            "compare --train trains its runs one after another in one process, not under torchrun: train each "
            "architecture with torchrun train.py, then compare their run directories (gptlab compare DIR ...) and "
            "plot them (gptlab report DIR ...)"
        )
    refuse_arch_preset(overrides or {})
    refuse_not_training(overrides or {})
    log = log or (lambda text: print(text, file=sys.stderr))
    overrides = dict(overrides or {})
    out = Path(os.path.expanduser(out_dir or overrides.pop("out_dir", None) or TRAIN_DEFAULTS["out_dir"]))
    overrides.pop("out_dir", None)
    settings = {**TABLE_DEFAULTS, **(table or {})}
    if report:  # before any training, not after every run has been paid for
        from gptlab.report import require_matplotlib

        require_matplotlib("gptlab compare --train (its plots and report.html)")
    # labels and sources only: the trained architectures are the shrunk ones _run_values builds, where the
    # overrides apply on top of TRAIN_DEFAULTS (--n_embd=128 is valid at its n_head=4, not at a preset's 12)
    from gptlab.compare import _unique_labels, names_weights, run_config_json

    for name in names:
        what = "a checkpoint or model folder" if names_weights(name) else None
        if what is None and run_config_json(name) is not None:
            what = "a run directory"
        if what is not None:
            raise ConfigError(
                f"{name!r} is {what}: --train trains presets and config files from scratch, side by side; "
                "compare trained runs without --train, or name the run's preset or config file"
            )
    archs = [resolve_architecture(n) for n in names]
    from gptlab.config.files import names_a_file

    for arch in archs:  # a fine-tune's file: its column is its weights' architecture (it trained the defaults')
        if names_a_file(arch.source):
            refuse_not_training({"init_from": arch.file_values.get("init_from", "scratch")}, arch.source)

    _unique_labels(archs)
    # the user's --key=value must take effect; a config file may spell out keys its architecture ignores
    values = [_run_values(a, overrides, out) for a in archs]
    runs = [resolve_run_config(v, typed=set(overrides)) for v in values]
    shrink_notes = {}  # said in the log and under the table: the trained model's heads are not the file's
    for a, v in zip(archs, values):
        if (kv_heads := _shrunk_kv_heads(a, v, overrides)) is not None:
            shrink_notes[a.label] = kv_heads[1]
    tokens = {
        a.label: r.train.batch_size * r.train.gradient_accumulation_steps * r.arch.block_size
        for a, r in zip(archs, runs)
    }
    if len(set(tokens.values())) > 1:
        raise ConfigError(
            f"the architectures would train on different tokens per iteration {tokens}: "
            "set --block_size (and batch keys) so that they agree"
        )
    from gptlab.data.datasets import ensure_prepared
    from gptlab.fileio import run_lock

    for data in dict.fromkeys((r.train.dataset, os.path.expanduser(r.train.data_dir)) for r in runs):
        ensure_prepared(*data)  # a missing dataset said before the first run, not after it made its folder
    from gptlab.telemetry.flops import compute_flops

    for run in runs:  # a registered component that breaks the model (a wrong output shape), said before any trains
        compute_flops(run.arch)
    with run_lock(out):  # a second comparison into OUT_DIR would replace runs this one's report then describes
        if "overwrite" not in overrides:  # replaced by its default overwrite=True: compare's own earlier runs only
            for run in runs:
                _refuse_a_run_compare_did_not_make(Path(run.train.out_dir))
        return _train_all(archs, runs, out, settings, report, log, shrink_notes)


def _refuse_a_run_compare_did_not_make(run_dir: Path) -> None:
    """A folder OUT_DIR/LABEL holding a run that has no console.log (which compare writes into each of its runs)
    is one of train.py's (--out_dir=out beside out/llama): compare replaced it, checkpoint and log, saying so only
    inside the new log."""
    from gptlab.checkpoint.layout import kept_checkpoints
    from gptlab.train.resume import held_run_files

    held = [*held_run_files(run_dir), *kept_checkpoints(run_dir)]
    if held and not (run_dir / "console.log").exists():
        raise ConfigError(
            f"{str(run_dir)!r} holds a run compare --train did not make ({', '.join(held)}), "
            "which its run of that label would replace: pick another --out_dir, or pass --overwrite=True to "
            "replace it"
        )


def _train_all(
    archs: list[Architecture],
    runs: list[Any],
    out: Path,
    settings: dict[str, Any],
    report: bool,
    log: Callable[[str], None],
    shrink_notes: dict[str, str] | None = None,
) -> Comparison:
    from gptlab.config.model import ModelArchitectureConfig
    from gptlab.device import resolve_device
    from gptlab.telemetry import get_gpu_spec
    from gptlab.train.launch import train
    from gptlab.train.loop import NonFiniteLossError

    _warm_up(runs)
    results, figures = [], []
    for arch, run in zip(archs, runs):
        t = run.train
        log(f"compare: training {arch.label} for {t.max_iters} iters on {t.dataset} ({t.device}) -> {t.out_dir}")
        shrunk = (shrink_notes or {}).get(arch.label)
        if shrunk is not None:
            log(f"compare: {arch.label}: {shrunk}")
        stream, run_dir = io.StringIO(), Path(t.out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # compare's mark on its run from the start (a run killed -9 is
        (run_dir / "console.log").write_text("", encoding="utf-8")  # still its own to replace)
        try:
            # the host RSS of this process, which trains each architecture in turn, is no one run's
            summary = train(run, stream=stream, shared_process=resolve_device(t.device).type != "cuda")
        except NonFiniteLossError as e:  # one architecture diverged: a row that says so, and the others still train
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            log(f"compare: {arch.label}: {e} (its row shows the run where it stopped; see {t.out_dir}/log.jsonl)")
        finally:
            (run_dir / "console.log").write_text(stream.getvalue(), encoding="utf-8")
        records = map(json.loads, (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines())
        startup = next(r for r in records if r.get("type") == "startup")  # after an overwrite event, on a re-run
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        arch.config = ModelArchitectureConfig.from_dict(saved["arch"])
        results.append(_result(run_dir, summary, startup))
        figures.append(compute_figures(arch.config, **settings))  # the trained architecture: nothing assumed
        if shrunk is not None:
            figures[-1]["notes"].insert(0, shrunk)
        log(f"compare: {arch.label}: final val loss {result_cell(results[-1], 'final_val_loss')}")
    spec = get_gpu_spec(settings["gpu"])
    settings.update(gpu=spec.key, precision=spec.training_precision(settings["dtype"]))
    settings.setdefault("activation_checkpointing", False)
    comparison = Comparison(archs, settings, figures, training=results)
    if report:
        from gptlab.report import build_report

        header, rows = comparison.table()
        tables = [("Architectures", header, rows), ("Training", *comparison.training_table())]  # type: ignore[misc]
        path = build_report(
            [r["run_dir"] for r in results],
            out / "report",
            labels=comparison.labels,
            title="gptlab compare",
            tables=tables,  # CPU runs say in their startup records that they shared this process
        )
        comparison.report = str(path)
    return comparison


__all__ = ["TRAIN_DEFAULTS", "TRAIN_ROWS", "train_and_compare"]
