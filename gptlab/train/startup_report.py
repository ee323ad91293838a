"""The startup report: what is being trained, how, on what, and what to expect."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import torch

from gptlab.checkpoint import software_versions
from gptlab.units import format_si

if TYPE_CHECKING:
    from gptlab.train.loop import Trainer

# The MFU at which the report states expected throughput: a typical well-tuned GPU figure.
EXPECTED_MFU = 0.40


def _schedule(cfg: Any) -> str:
    if not cfg.decay_lr:
        return f"constant {cfg.learning_rate:g} (decay_lr=False)"
    warm = f"linear warmup {cfg.warmup_iters} iters to {cfg.learning_rate:g}, "
    if cfg.lr_schedule == "constant":
        return warm + "then constant"
    if cfg.lr_decay_iters <= cfg.warmup_iters:  # (a config file's: typed, it is refused) as nanoGPT's get_lr runs
        return warm + f"then {cfg.min_lr:g} (lr_decay_iters={cfg.lr_decay_iters} ends inside the warmup: no decay)"
    if cfg.lr_schedule == "wsd":
        from gptlab.train.schedule import wsd_decay_start

        start = wsd_decay_start(cfg)
        decay = f"linear decay to {cfg.min_lr:g} over iters {start}..{cfg.lr_decay_iters}"
        if start == cfg.warmup_iters:  # (the decay fraction would have started it inside the warmup)
            return warm + f"no stable phase, {decay} (wsd_decay_frac={cfg.wsd_decay_frac:g}, from warmup's end)"
        return warm + f"stable, then {decay} (the last {cfg.wsd_decay_frac:.0%} of {cfg.lr_decay_iters})"
    return warm + f"cosine decay to {cfg.min_lr:g} at iter {cfg.lr_decay_iters}"


def _tflops(value: float) -> str:
    """989.4 as 989.4, and a CPU's 0.05 as 0.05 (not 0.1)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def _batch_line(t: dict[str, Any]) -> str:
    """The training step's batch; an evaluation's own batch for eval_only, which takes no step (its
    micro-batches need not divide among the ranks, so the step's figures would not add up)."""
    if t.get("eval_only"):
        shared = f" (the batches shared over {t['world_size']} ranks)" if t["world_size"] > 1 else ""
        return f"  batch:       {t['batch_size']} sequences x {t['block_size']} tokens per evaluation batch{shared}"
    return (
        f"  batch:       {t['batch_size']} x {t['gradient_accumulation_steps']} micro-batches"
        + (
            f" ({t['micro_steps_per_rank']} per rank on {t['world_size']} ranks"
            + ("; gradient_accumulation_steps not set)" if t.get("accumulation_defaulted") else ")")
            if t["world_size"] > 1
            else ""
        )
        + f" = {t['sequences_per_iter']} sequences (global batch) x {t['block_size']} tokens"
        f" = {t['tokens_per_iter']:,} tokens/iter"
    )


def build_startup_report(trainer: Trainer) -> dict[str, Any]:
    """The report as a JSON-ready dict (the startup record of log.jsonl)."""
    cfg, arch, model, tel = trainer.cfg, trainer.arch, trainer.raw_model, trainer.telemetry
    tokens_per_iter = tel.tokens_per_iter
    flops = tel.flops_summary()
    peak = tel.peak
    expected_tps = tel.expected_tokens_per_sec(EXPECTED_MFU)
    return {
        "architecture": {
            "name": arch.get_architecture_name(),
            "summary": arch.get_architecture_summary(),
            "params": model.get_num_params(non_embedding=False),
            "params_non_embedding": model.get_num_params(),
            "config": arch.to_dict(),
        },
        "training": {
            "dataset": cfg.dataset,
            "tokenizer": (trainer.meta.get("tokenizer") or {}).get("name"),
            "data_source": (trainer.meta.get("source") or {}).get("kind"),
            "vocab_size": trainer.meta.get("vocab_size"),
            "init_from": cfg.init_from,
            "eval_only": cfg.eval_only,
            "start_iter": trainer.iter_num,
            "max_iters": cfg.max_iters,
            "batch_size": cfg.batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "micro_steps_per_rank": trainer.accum_steps,
            # the default 1 under several ranks became the world size (one micro-batch per rank)
            "accumulation_defaulted": trainer.accumulation_defaulted,
            "world_size": trainer.world_size,
            "sequences_per_iter": cfg.batch_size * cfg.gradient_accumulation_steps,  # the global batch
            "block_size": arch.block_size,
            "tokens_per_iter": tokens_per_iter,
            "total_tokens": tokens_per_iter * max(0, cfg.max_iters + 1 - trainer.iter_num),  # 0: eval_only past it
            "optimizer": f"AdamW(lr={cfg.learning_rate:g}, betas=({cfg.beta1}, {cfg.beta2}), "
            f"weight_decay={cfg.weight_decay:g}), grad_clip={cfg.grad_clip:g}",
            "schedule": _schedule(cfg),
            "eval": f"every {cfg.eval_interval} iters, {cfg.eval_iters} batches per split",
            "eval_iters": cfg.eval_iters,
            "out_dir": str(trainer.out_dir),
        },
        "hardware": {
            "device": str(trainer.device),
            "device_name": peak.get("name"),
            # the GPU's memory (GB of 1e9 bytes), against the memory plan's peak below (None off CUDA)
            "device_memory_gb": (
                torch.cuda.get_device_properties(trainer.device).total_memory / 1e9
                if trainer.device.type == "cuda"
                else None
            ),
            "dtype": trainer.dtype,
            "compile": (cfg.compile_mode if cfg.compile_mode != "default" else True) if cfg.compile else False,
            "loss_chunk_size": cfg.loss_chunk_size,
            "sdpa_backend": cfg.sdpa_backend,  # the attention kernel tried first ('auto': PyTorch's order)
            # the residual stream's dtype where the run casts it (TrainConfig.residual_dtype), else None
            "residual_dtype": trainer.dtype if trainer.raw_model.residual_cast else None,
            "parallelism": trainer.mode,
            "backend": trainer.dist.backend,
            # the devices an MFU's peak counts (hardware_peak_tflops = num_gpus x peak_tflops): the ranks, CPU too
            "num_gpus": trainer.world_size,
            "peak_tflops": None if peak.get("peak_flops") is None else peak["peak_flops"] / 1e12,
            "peak_source": peak.get("source"),
            "peak_precision": peak.get("precision"),
            # one CPU process trains several models (compare --train): its RSS is not this run's alone
            "shared_process": trainer.shared_process,
        },
        "software": software_versions(),
        "expectations": {
            **flops,
            "expected_mfu": EXPECTED_MFU,
            "expected_tokens_per_sec": expected_tps,
            "memory_plan": tel.memory_plan(),
        },
    }


def render_startup_report(r: dict[str, Any]) -> str:
    """Human-readable rendering for the console."""
    a, t, h, e = r["architecture"], r["training"], r["hardware"], r["expectations"]
    bar = "═" * 80
    world = t.get("world_size") or 1
    unit = "GPU" if str(h.get("device", "")).startswith("cuda") else "rank"  # ranks on CPUs are processes
    per_unit = f" per {unit}" if world > 1 else ""
    peak = (
        f"{_tflops(h['peak_tflops'])} TFLOPS dense {h['peak_precision']}{per_unit} ({h['peak_source']})"
        if h["peak_tflops"] is not None
        else "unknown (MFU not reported; set --peak_tflops or measure with `gptlab peak`)"
    )
    fpt = e.get("flops_per_token")
    expect = (
        f"{e['expected_tokens_per_sec']:,.0f} tokens/s"
        + (f" over {world} {unit}s ({e['expected_tokens_per_sec'] / world:,.0f} per {unit})" if world > 1 else "")
        + f" at {e['expected_mfu']:.0%} MFU"
        if e.get("expected_tokens_per_sec")
        else "n/a without a peak"
    )
    if t.get("eval_only"):  # nothing is trained: no length, optimizer or schedule to announce
        plan = [
            f"  eval:        {t['eval_iters']} batches per split at iter {t['start_iter']}"
            f" (eval_only: writes only eval.jsonl); out_dir={t['out_dir']}"
        ]
    else:
        plan = [
            f"  length:      iters {t['start_iter']}..{t['max_iters']} ({t['total_tokens']:,} tokens)",
            f"  optimizer:   {t['optimizer']}",
            f"  schedule:    {t['schedule']}",
            f"  eval:        {t['eval']}; out_dir={t['out_dir']}",
        ]
    lines = [
        bar,
        "gptlab evaluation" if t.get("eval_only") else "gptlab training run",
        bar,
        a["summary"],
        f"  parameters:  {a['params'] / 1e6:.2f}M ({a['params_non_embedding'] / 1e6:.2f}M excluding embedding lookups)",
        "Training",
        f"  data:        {t['dataset']} ({t['tokenizer']}, vocab {t['vocab_size']})"
        + (", nanoGPT's prepare.py output, read as it is" if t.get("data_source") == "nanogpt" else "")
        + f"; init_from={t['init_from']}",
        _batch_line(t),
        *plan,
        "Hardware",
        f"  device:      {h['device']} ({h['device_name']}"
        + (f", {h['device_memory_gb']:.1f} GB" if h.get("device_memory_gb") else "")
        + f"), dtype={h['dtype']}, compile={h['compile']},"
        f" parallelism={h['parallelism']}"
        + (f" ({h['backend']})" if h.get("backend") else "")
        + (f", chunked loss ({h['loss_chunk_size']} tokens)" if h.get("loss_chunk_size") else "")
        + (f", residual stream in {h['residual_dtype']}" if h.get("residual_dtype") else "")
        + (f", {h['sdpa_backend']} attention first" if h.get("sdpa_backend", "auto") != "auto" else ""),
        f"  peak:        {peak}",
        "Expect",
        "  FLOPs/token: "
        + (f"{format_si(fpt, 'FLOP')} training (matmuls, attention full-square" if fpt else "n/a")
        + (
            f"; causal-aware {format_si(e['flops_per_token_causal'], 'FLOP')})"
            if fpt and e.get("flops_per_token_causal")
            else ")"
            if fpt
            else ""
        ),
        *(f"  note:        {caveat}; MFU uses this count" for caveat in e.get("flops_caveats") or ()),
        f"  throughput:  {expect}",
    ]
    plan = e.get("memory_plan")
    if plan and not t.get("eval_only"):  # a training plan: wrapped (one line was over 200 columns)
        lines += textwrap.wrap(
            str(plan), width=100, initial_indent="  memory:      ", subsequent_indent=" " * 15, break_on_hyphens=False
        )
    lines.append(bar)
    return "\n".join(lines)
