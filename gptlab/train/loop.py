"""The training loop as named steps: ``Trainer`` with ``forward_backward``, ``train_step``,
``evaluate``, ``save`` and ``run``.

The hot path (``train_step``) makes no host syncs unless a log line, a gradient-statistics
interval or ``nan_policy='skip'`` asks for one.

Under torchrun (``gptlab.parallel``) every rank runs this same loop. Data: micro-step ``m`` of
rank ``r`` is global micro-batch ``m * world_size + r`` of the step, so the global batch of a
step (``batch_size x gradient_accumulation_steps`` sequences at any ``world_size``) is the same rows
whatever the split into ranks and accumulation: 2 ranks x 1 micro-step draw what 1 process x 2
micro-steps draws. The logged loss is the mean over ranks; evaluation splits its fixed batches
over the ranks and reduces the sum.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import torch

from gptlab import parallel
from gptlab.checkpoint import (
    FORMAT,
    check_links_allowed,
    clean_state_dict,
    dcp_on_disk,
    interrupted_save,
    is_dcp_dir,
    is_run_checkpoint,
    remove_checkpoints,
    remove_save_leftovers,
    save_dcp,
    save_single_file,
    saved_summary,
    software_versions,
    state_errors,
    weights_path,
)
from gptlab.config.model import ModelArchitectureConfig
from gptlab.config.resolve import elastic_run_id
from gptlab.config.train import (
    CUDA_GRAPH_MODES,
    RunConfig,
    TrainConfig,
    check_sdpa_backend,
    residual_stream_cast,
)
from gptlab.data.datasets import ensure_prepared, read_meta
from gptlab.data.loader import EVAL_SEED, EVAL_STREAM, BatchLoader
from gptlab.data.stats import unigram_baseline
from gptlab.device import enable_tf32, prefer_sdpa_kernel, resolve_device, resolve_dtype
from gptlab.errors import ConfigError, DataError, GptlabError
from gptlab.fileio import atomic_write, check_directory
from gptlab.logging import TrainingLogger, remove_evaluations
from gptlab.model.gpt import ConfigurableGPT
from gptlab.plugins import component_plugins, edited_plugins_note, plugin_digests
from gptlab.train import telemetry_hooks as telemetry
from gptlab.train.init_from import InitFrom, resolve_init, scratch_notes, weights_origin
from gptlab.train.init_from import preset_family as preset_family  # (imported from here before init_from.py)
from gptlab.train.resume import (
    KEPT_SOURCE,
    check_out_dir_unclaimed,
    data_record,
    folder_identity,
    kept_source_record,
    resume_changes,
    resume_line,
    resumed_data_dir_hint,
    saved_tokens_per_iter,
)
from gptlab.train.run_record import (
    completed_beyond,
    disk_space_warning,
    done_line,
    logged_eval,
    session_records_to,
)
from gptlab.train.schedule import get_lr, schedule_cut
from gptlab.train.signals import StopSignals, TrainingInterrupted
from gptlab.train.startup_report import build_startup_report, render_startup_report
from gptlab.train.step_records import GradientStatsQueue, LossScaleDrops
from gptlab.train.train_state import load_optimizer_state, restore_rng, rng_state


class NonFiniteLossError(GptlabError):
    """The loss became NaN or infinite and nan_policy='stop'."""


NO_ITER = 2**62  # no such iteration (a sentinel above any real one)
MAX_SKIPS_IN_A_ROW = 25  # nan_policy=skip stops the run after this many (fp16's loss scale recovers in fewer)


def _accumulation_error(cfg: TrainConfig, world_size: int, explicit: frozenset[str]) -> str:
    """The one line for a gradient_accumulation_steps the ranks cannot share, naming a value that works;
    a resume's (the checkpoint's, not typed) says so, since the user never wrote it."""
    steps = cfg.gradient_accumulation_steps
    fits = -(-steps // world_size) * world_size  # the next multiple of the world size
    whence = ""
    if cfg.init_from == "resume" and "gradient_accumulation_steps" not in explicit:
        whence = " (the resumed checkpoint's)"
    sequences = steps * cfg.batch_size  # the global batch: kept by a smaller micro-batch where one divides it
    resumed = cfg.init_from == "resume" and not {"gradient_accumulation_steps", "batch_size"} & explicit
    # the fewest micro-steps from the next multiple up whose micro-batch keeps the step's sequences (5 x 4 on two
    # ranks: 10 x 2), else the next multiple, whose step grows
    keeps = next((m for m in range(fits, sequences + 1, world_size) if sequences % m == 0), None)
    if keeps is not None:  # as many sequences, other ones: a resume's batches no longer continue the run's
        kept = f"{sequences} sequences a step, as before, not the run's batches from here on" if resumed else ""
        advice = f"{keeps} --batch_size={sequences // keeps} ({kept or f'the same {sequences} sequences a step'})"
    else:  # the world size does not divide the step's sequences: it grows, said
        advice = f"{fits} ({fits * cfg.batch_size} sequences a step instead of {sequences}"
        advice += ", not the run's batches from here on)" if resumed else ")"
    return (
        f"gradient_accumulation_steps={steps}{whence} must be divisible by the world size {world_size} "
        f"(it counts the micro-batches of the whole step, as in nanoGPT): pass --gradient_accumulation_steps="
        f"{advice}, or launch a number of processes that divides it"
    )


class Trainer:
    """Owns one run: data, model, optimizer, logger; ``run()`` trains to ``max_iters``."""

    def __init__(
        self,
        run: RunConfig,
        *,
        stream: IO[str] | None = None,
        dist: parallel.DistInfo | None = None,
        shared_process: bool = False,
    ) -> None:
        """``shared_process``: this CPU process trains other models too (compare --train), so the host memory
        it reports is not this run's alone (its startup record says so, and reports leave it out)."""
        self.shared_process = shared_process
        self.cfg: TrainConfig = replace(run.train)  # a copy: the run's record may change (a fine-tune's preset)
        cfg = self.cfg
        self.out_dir = Path(cfg.out_dir)
        # the folder the lock was taken in (launch makes it before this): checked before each save and the summary
        self._out_dir_identity = folder_identity(self.out_dir)
        check_directory("out_dir", cfg.out_dir, creates=True)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.dist = dist if dist is not None else parallel.init_distributed(cfg, self.device)
        self.device, self.mode = self.dist.device, self.dist.mode
        self.world_size, self.rank, self.master = self.dist.world_size, self.dist.rank, self.dist.master
        # before data, plan and model: a dtype resolved from 'auto' that refuses residual_dtype fails at once
        residual_cast = residual_stream_cast(cfg.residual_dtype, self.dtype, self.mode)
        # nanoGPT's meaning: gradient_accumulation_steps counts micro-batches of the global step,
        # shared out over the ranks (the global batch stays the knob under any world size)
        # (an evaluation takes no training step: eval_only evaluates whatever the checkpoint's batch was)
        # left at its default (1, which no world size > 1 divides): one micro-batch per rank, the global batch
        # DDP gives (a resume keeps its checkpoint's; a value a file or override gives must divide)
        self.accumulation_defaulted = (
            self.world_size > 1
            and cfg.gradient_accumulation_steps == 1
            and "gradient_accumulation_steps" not in run.explicit
            and cfg.init_from != "resume"
            and not cfg.eval_only
        )
        if self.accumulation_defaulted:
            cfg.gradient_accumulation_steps = self.world_size
        if cfg.gradient_accumulation_steps % self.world_size and not cfg.eval_only:
            raise ConfigError(_accumulation_error(cfg, self.world_size, run.explicit))
        self.accum_steps = max(1, cfg.gradient_accumulation_steps // self.world_size)  # micro-steps per rank
        self._fault = _fault_injection()
        # the same on every rank, so that every rank building the weights builds the same ones (under FSDP
        # only rank 0 does; afterwards nothing relies on equal RNG streams: dropout reseeds per micro-step)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            enable_tf32()  # TF32 for fp32 matmuls and convs, as nanoGPT

        check_out_dir_unclaimed(cfg, self.out_dir)

        # ---- data
        try:
            self.dataset_dir = ensure_prepared(cfg.dataset, cfg.data_dir)
        except DataError as e:  # a resume of a run that read its data from another data_dir: said which
            if not (hint := resumed_data_dir_hint(run)):
                raise
            raise DataError(f"{e}{hint}") from None
        self.meta = read_meta(self.dataset_dir)
        # the data this session trains on, as each checkpoint records
        self.data_record = data_record(self.meta, self.dataset_dir)
        if cfg.sample_at_end:  # refused now, not after the training (whose summary it kept from being written)
            from gptlab.train.sample import encode_sample_prompt

            if self.meta.get("tokenizer") is None:
                raise ConfigError(
                    f"sample_at_end=True, but dataset {cfg.dataset!r} records no tokenizer (its meta.json), so a "
                    "sample could not be decoded: pass --sample_at_end=False"
                )
            encode_sample_prompt(self.meta.get("tokenizer"), cfg.sample_prompt)
        self.iter_num, self.best_val_loss = 0, float("inf")
        # (kept local: a resume's checkpoint is memory-mapped, and a reference kept would keep its file mapped)
        found = resolve_init(run, cfg, int(self.meta["vocab_size"]), self.out_dir, self.mode == "fsdp")
        self.arch, ckpt, pretrained = found.arch, found.ckpt, found.pretrained
        self._unimportable: list[str] = []  # registered components no later process can import (__main__'s)
        inferred = not cfg.plugins.strip()
        if inferred:  # started from Python, none given: the modules its components come from
            cfg.plugins, self._unimportable = component_plugins(self.arch)
        # the code of its components, as this session runs it (a module a config file imports too)
        self._plugin_digests = plugin_digests(cfg.plugins, self.arch)
        check_sdpa_backend(cfg.sdpa_backend, self.arch.attention_backend, self.device.type)
        prefer_sdpa_kernel(cfg.sdpa_backend, self.device.type)  # before any compile traces the attention
        # the DCP checkpoint resumed from, and its iteration: saving that iteration again rewrites only its meta
        resumed = Path(ckpt["path"]).resolve() if ckpt is not None else None
        self._resumed_dcp = resumed if resumed is not None and is_dcp_dir(resumed) else None
        self._resumed_iter = int(ckpt["iter_num"]) if ckpt is not None else -1
        # where the run's weights began ('scratch', or the weights a fine-tune loaded), kept over its resumes,
        # whose own init_from is 'resume'; None for a checkpoint written before it was recorded
        origin = (ckpt or {}).get("weights_origin") if cfg.init_from == "resume" else weights_origin(cfg.init_from)
        self.weights_origin: str | None = origin if isinstance(origin, str) else None
        self._saved_iter = -1  # the iteration of this session's latest checkpoint
        self._last_losses: dict[str, float] | None = None  # this session's latest evaluation
        self._replaced_source: Path | None = None  # overwrite: a fine-tune's source in out_dir, until the first save
        self._config_record: dict[str, Any] = {}  # config.json as this session wrote it (rank 0)
        self.run_config = RunConfig(train=cfg, arch=self.arch)
        # a mismatch fails here, not in a hang; with the iteration resumed from and the data itself (nodes read
        # their own disks: the same data may lie at another data_dir there, or other data at the same one)
        same = self.run_config.to_dict()
        # (and plugins found from the components' modules: a checkout at another path on another node)
        local = {"data_dir", *(["plugins"] if inferred else [])}
        same["train"] = {k: v for k, v in same["train"].items() if k not in local}
        data = {k: self.meta.get(k) for k in ("vocab_size", "dtype", "tokens", "tokenizer")}
        data["sha256"] = (self.meta.get("source") or {}).get("sha256")
        parallel.check_same_config({**same, "start_iter": max(self._resumed_iter, 0), "dataset": data}, self.dist)
        # what killed saves left, first (no writer of them is alive: rank 0 holds the run's lock): on a full disk
        # they take the room the checks below and the run need
        leftovers = remove_save_leftovers(self.out_dir) if self.master and not cfg.eval_only else []
        if self.mode == "fsdp" and not cfg.eval_only:  # its checkpoint needs one out_dir seen by every node
            parallel.check_shared_out_dir(self.out_dir, self.dist)
            check_links_allowed(self.out_dir, self.rank)
        loader_args: dict[str, Any] = dict(
            batch_size=cfg.batch_size, block_size=self.arch.block_size, device=self.device
        )
        if cfg.init_from == "resume":  # its block_size is the checkpoint's: lowering it now is refused
            loader_args["short_split_advice"] = (
                f"a resume keeps its checkpoint's block_size; resume on more data, or start a fine-tune from it "
                f"with a lower one (--init_from={str(self.out_dir)!r} --out_dir=NEW --block_size=...)"
            )
        # one stream for every rank: ranks take different global micro-batch indices (module docstring)
        self.train_loader = BatchLoader(self.dataset_dir, "train", seed=cfg.seed, **loader_args)
        self.eval_loaders = {  # fixed batches (steps 0..eval_iters-1 of their own stream, whatever the seed)
            split: BatchLoader(self.dataset_dir, split, seed=EVAL_SEED, stream=EVAL_STREAM, **loader_args)
            for split in ("train", "val")
        }
        # the training plan against the memory, before building what cannot fit (it would fill RAM): refused
        # far beyond it, a warning logged before the first step short of it (offload is not modelled)
        self._memory_warning = None
        if not cfg.eval_only and not cfg.fsdp_cpu_offload:
            plan_kwargs = telemetry.run_plan_kwargs(
                cfg, self.dtype, self.mode, self.world_size, self.accum_steps, self.device
            )
            self._memory_warning = telemetry.memory_advice(
                self.arch, self.device, plan_kwargs, refuse_above=telemetry.HOPELESS_FACTOR, compiled=cfg.compile
            )
        # FSDP on several ranks: only rank 0 builds the weights, the others receive their shards from it
        scatter = pretrained is None and parallel.init_on_rank0(cfg, self.dist)
        full_state = self._build_model(self.arch, ckpt, pretrained, on_meta=scatter and not self.master)
        self.model.loss_chunk_size = cfg.loss_chunk_size
        self.model.residual_cast = residual_cast
        self.start_iter = self.iter_num
        self.resumed = cfg.init_from == "resume"  # the summarized session's (an adopted one's: its own)

        # ---- model, optimizer, precision: build, then wrap (activation checkpointing, compile, FSDP or DDP)
        if self.mode != "fsdp":
            # FSDP2's fully_shard moves each block to the device as it shards it, so the whole unsharded
            # model never sits in GPU memory at once (only one block's full parameters, briefly)
            self.model.to(self.device)
        self.raw_model = self.model  # the plain model (FSDP2 shards it in place)
        self.model = parallel.parallelize(self.raw_model, cfg, self.dist, self.dtype)
        if scatter:
            parallel.materialize_from_rank0(self.raw_model, full_state if self.master else None, self.dist)
        del full_state  # rank 0's unsharded copy
        self.optimizer = parallel.build_optimizer(self.raw_model, cfg, self.dist)
        self.scaler = parallel.build_grad_scaler(self.dist, enabled=self.dtype == "float16")
        # each micro-step's loss is divided by the micro-steps its gradients are averaged over: this rank's, or
        # under float16 on several ranks (gradients summed over ranks) the job's, as in one process
        summed = parallel.sums_gradients(self.dist, self.dtype)
        self.loss_divisor = self.accum_steps * (self.world_size if summed else 1)
        if ckpt is not None and ("optimizer" in ckpt or "dcp_path" in ckpt):  # (none: an eval_only's nanoGPT file)
            load_optimizer_state(
                ckpt,
                self.model,
                self.raw_model,
                self.optimizer,
                mode=self.mode,
                device=self.device,
                betas=(cfg.beta1, cfg.beta2),
                weight_decay=cfg.weight_decay,
                note=edited_plugins_note(ckpt.get("plugin_digests"), self._plugin_digests),
            )
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        self.autocast = (
            contextlib.nullcontext()
            if self.dtype == "float32" or self.mode == "fsdp"  # FSDP2's mixed-precision policy casts instead
            else torch.autocast(device_type=self.device.type, dtype=parallel.PT_DTYPES[self.dtype])
        )
        # CUDA-graph compile modes replay captured graphs whose outputs the next replay overwrites (_new_graph_run)
        self._cuda_graphs = cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"
        self._stable_grads = False
        if self._cuda_graphs and self.accum_steps > 1:
            self.use_stable_grads()
        self.measured_bytes: dict[str, float] | None = None

        # ---- telemetry and logging
        self.telemetry = telemetry.TelemetryHooks(
            self.raw_model,
            self.device,
            self.dtype,
            cfg,
            self.world_size,
            parallel=self.mode,
            accum_steps=self.accum_steps,
        )
        # tokens trained so far, over every session (a resume that changed the batch keeps the count exact)
        self.tokens_seen = 0
        if ckpt is not None:
            per_iter = saved_tokens_per_iter(ckpt, self.telemetry.tokens_per_iter)  # for a checkpoint without it
            self.tokens_seen = int(ckpt["tokens_seen"] if "tokens_seen" in ckpt else self.iter_num * per_iter)
        self._done = self._run_is_done()
        self._mfu_warned = False  # an MFU above 100% said once a session (_check_mfu)
        if cfg.wandb_log:  # saved with the run (config.json, checkpoints): the next session's name too
            cfg.wandb_run_name = self._wandb_name(run, ckpt)
        logger = TrainingLogger(
            self.out_dir,
            style=cfg.log_style,
            enabled=self.master,
            stream=stream,
            max_iters=cfg.max_iters,
            start_iter=self.iter_num,
            # a resume of a finished run logs nothing: no empty wandb run or TensorBoard file (a requeued job's)
            wandb_config=(
                {
                    "name": cfg.wandb_run_name,
                    "project": cfg.wandb_project,
                    "config": self.run_config.to_dict(),
                    # a run's sessions (each resume is a wandb run of its own) share a group: its directory
                    "group": str(self.out_dir.resolve())[-128:],
                }
                if cfg.wandb_log and not self._done
                else None
            ),
            tensorboard=cfg.tensorboard_log and not self._done,
            resume=cfg.init_from == "resume",
            eval_only=cfg.eval_only,
            tensorboard_purge_step=self._tensorboard_purge_step(),
        )
        self.attach_logger(logger)
        self._restore_tensorboard_eval()
        if ckpt is not None:
            self._continue_from(run, ckpt)
        self._log_start_notes(run, found)
        if cfg.overwrite and cfg.init_from != "resume" and not cfg.eval_only:
            self._replace_previous_run()
        if leftovers:
            self.logger.log_event("cleanup", f"removed what killed saves left: {', '.join(leftovers)}")

    def _continue_from(self, run: RunConfig, ckpt: dict[str, Any]) -> None:
        """A resume's state beyond the weights and optimizer: RNG, gradient history, best val loss, and the
        resume event naming what changed."""
        cfg = self.cfg
        restore_rng(ckpt, self.device)
        if "gradient_history" in ckpt:
            self.telemetry.spikes.load_state_dict(ckpt["gradient_history"])
        interrupted = interrupted_save(self.out_dir)  # a newer DCP save, killed mid-swap, beside this one
        if interrupted is not None:
            self.logger.log_event("interrupted_save", f"resuming from {ckpt['path']}, but {interrupted}")
        changed, keep_best = resume_changes(
            run,
            cfg,
            ckpt,
            mode=self.mode,
            world_size=self.world_size,
            out_dir=self.out_dir,
            tokenizer=self.meta.get("tokenizer"),
            data=self.data_record,
            plugin_digests=self._plugin_digests,
            best_val_loss=self.best_val_loss,
        )
        if not keep_best:  # measured on other batches than the next evaluations': the next one sets it
            self.best_val_loss = float("inf")
        self.logger.log_event(
            "resume",
            resume_line(ckpt, self.iter_num, changed, run.explicit),
            iter=self.iter_num,
            changed={k: list(v) for k, v in changed.items()},
        )

    def _log_start_notes(self, run: RunConfig, found: InitFrom) -> None:
        """The start's events: notes on the weights loaded, a schedule cut short, a scratch model's notes,
        components no later process can import."""
        cfg = self.cfg
        for event, line, fields in found.notes(cfg, self.meta.get("tokenizer")):
            self.logger.log_event(event, line, **fields)
        if (cut := schedule_cut(cfg, run.typed)) is not None and not self._done:
            self.logger.log_event("schedule_cut", cut)
        if cfg.init_from == "scratch":
            for event, line, fields in scratch_notes(run, self.arch):
                self.logger.log_event(event, line, **fields)
        if self._unimportable:  # said: the run's resume, sample or export in another process would not find them
            self.logger.log_event(
                "plugins_unrecorded",
                f"{', '.join(self._unimportable)}: registered in the running script (__main__), which no later "
                "process (a resume, gptlab sample or export) can import: register it in a module of its own and "
                "pass it as plugins",
                components=self._unimportable,
            )

    def _replace_previous_run(self) -> None:
        """overwrite=True: the replaced run's checkpoints go now (weights to fine-tune from are loaded by every
        rank), so that no later resume or export finds them."""
        cfg = self.cfg
        parallel.barrier(self.dist)
        # a fine-tune's weights stay until this run's first checkpoint replaces them (a crash loses nothing)
        source = cfg.init_from if cfg.init_from != "scratch" and Path(cfg.init_from).exists() else None
        kept = weights_path(source) if source is not None else None
        removed = remove_checkpoints(self.out_dir, keep=kept) if self.master else []
        if kept is not None and is_run_checkpoint(self.out_dir, kept):  # the replaced run's: goes at the first
            self._replaced_source = kept  # save; weights of the user's that lie in out_dir stay
        if self.master and (removed or self._replaced_source is not None):  # and eval_only's evaluations of the
            removed += remove_evaluations(self.out_dir)  # replaced run's weights (one of other weights, alone, stays)
        if removed:
            self.logger.log_event(
                "overwrite", f"replacing the previous run in {self.out_dir}: removed {', '.join(removed)}"
            )

    def _wandb_name(self, run: RunConfig, ckpt: dict[str, Any] | None) -> str:
        """The wandb run's name: the one given; on a resume not given one, the name its sessions had (saved with
        the checkpoint; a launch key, not taken from it as a setting); unset, the run directory's ('run' named every
        experiment's sessions alike; at most 128 characters, wandb's limit)."""
        name = self.cfg.wandb_run_name
        if "wandb_run_name" in run.explicit:
            return name
        saved = ((ckpt or {}).get("config") or {}).get("train", {}).get("wandb_run_name")
        if isinstance(saved, str) and saved and saved != TrainConfig.wandb_run_name:
            return saved
        return name if name != TrainConfig.wandb_run_name else self.out_dir.resolve().name[:128]

    def use_stable_grads(self) -> None:
        """Keep ``.grad`` as zeroed buffers made now, accumulated into in place and zeroed (not freed) after
        each step. Needed by CUDA-graph compile modes with gradient accumulation: a captured backward's
        outputs live in the graphs' memory pool, which the next micro-step's replay overwrites, so the
        first backward's output must not become ``.grad`` (PyTorch's advice: preallocate zeroed grads)."""
        self._stable_grads = True
        for p in self.raw_model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)

    def _build_model(
        self, arch: ModelArchitectureConfig, ckpt: dict[str, Any] | None, pretrained: Any, on_meta: bool
    ) -> dict[str, torch.Tensor]:
        """The model to train, built ``on_meta`` (no memory) on ranks that receive their FSDP shards from
        rank 0; returns its state dict (the unsharded CPU tensors, before sharding replaces them)."""
        if pretrained is not None:
            self.model = pretrained
        else:
            with torch.device("meta") if on_meta else contextlib.nullcontext():
                self.model = ConfigurableGPT(arch, init_weights=ckpt is None)  # a resume loads every weight
        if ckpt is not None:
            if "model" in ckpt and not on_meta:  # a full state dict; a DCP checkpoint loads after sharding
                edited = edited_plugins_note(ckpt.get("plugin_digests"), self._plugin_digests)
                with state_errors(ckpt.get("path", "the checkpoint"), "weights", edited):
                    self.model.load_state_dict(clean_state_dict(ckpt["model"]))
            self.iter_num, self.best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])
        return dict(self.model.state_dict())

    # ------------------------------------------------------------------ steps
    def batch_key(self, iter_num: int, micro_step: int) -> tuple[int, int]:
        """The loader key of this rank's micro-step: global micro-batch ``micro * world_size + rank``."""
        return iter_num, micro_step * self.world_size + self.rank

    def next_batch_key(self, iter_num: int, micro_step: int) -> tuple[int, int]:
        """The key this rank reads after (iter_num, micro_step): the next micro-step's, or the next step's first
        (valid across an evaluation in between) -- what to prefetch while this micro-step's forward runs."""
        if micro_step + 1 < self.accum_steps:
            return self.batch_key(iter_num, micro_step + 1)
        return self.batch_key(iter_num + 1, 0)

    def _new_graph_run(self) -> None:
        """Under CUDA-graph compile modes, mark a new run of the captured graphs (each micro-step, each eval
        forward): the previous run's outputs may then be overwritten, which the loop never reads again."""
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def forward_backward(self, micro_step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One micro-step; returns the detached (unscaled) loss. While the device runs the forward,
        the host reads the next micro-step's batch (as nanoGPT does)."""
        self._new_graph_run()
        with self.autocast:
            # no (B, T, vocab) logits kept alive through the backward, nor (compiled) a zero gradient made for them
            loss = self.model(x, y, return_logits=False)[1]
        self.train_loader.prefetch(*self.next_batch_key(self.iter_num, micro_step))
        self.scaler.scale(loss / self.loss_divisor).backward()
        return loss.detach()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over all micro-steps. Returns device tensors, not floats (and, at the gradient
        statistics' interval, their ``PendingGradientStats``)."""
        cfg = self.cfg
        lr = get_lr(self.iter_num, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        steps = self.accum_steps
        for micro in range(steps):
            # this rank's share of the global batch (module docstring); prefetched by the previous micro-step
            key = self.batch_key(self.iter_num, micro)
            x, y = self.train_loader.get_batch(*key)
            global_micro = key[1]
            if self.arch.dropout > 0.0:
                # dropout masks as a function of (seed, iteration, global micro-batch): different on every
                # rank, identical under any world size, and exact on resume (cheap: no device sync)
                torch.manual_seed(((cfg.seed * 1_000_003 + self.iter_num) * 65_537 + global_micro) % 2**64)
            # gradients are reduced across ranks on the last micro-step only
            with parallel.no_grad_sync(self.model, self.dist, sync=micro == steps - 1):
                loss_sum += self.forward_backward(micro, x, y)
        loss = parallel.all_reduce_mean(loss_sum / steps, self.dist)  # every rank sees the global mean
        log_grads = self.iter_num % cfg.gradient_log_interval == 0
        unscale = cfg.grad_clip > 0.0 or log_grads
        if unscale:
            self.scaler.unscale_(self.optimizer)  # statistics and clipping see the true gradients
        # at this interval: computed on the device and sent to the host with no sync (the loop reads them later)
        grad_stats = self.telemetry.start_gradient_stats() if log_grads else None
        grad_norm = None
        if cfg.grad_clip > 0.0:  # the returned norm is the one before clipping
            # on FSDP2's DTensor gradients the norm is reduced over the shards (a replicated DTensor)
            grad_norm = _replicated(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip))
        skipped = False
        if cfg.nan_policy == "skip":
            if not unscale:  # the norm of the true gradients; fp16's scaler.update() needs this inf check too
                self.scaler.unscale_(self.optimizer)
            # a finite loss can still give inf/NaN gradients, whose step would make every weight NaN
            norm = grad_norm
            if norm is None:
                grads = [p.grad for p in self.raw_model.parameters() if p.grad is not None]
                norm = _replicated(torch.nn.utils.get_total_norm(grads))
            skipped = not bool(torch.isfinite(loss) & torch.isfinite(norm))  # a host sync, by request
        if not skipped:
            self.scaler.step(self.optimizer)
        self.scale_drops.update(self.iter_num)  # scaler.update(), fp16's skipped step counted on the device
        if self.measured_bytes is None:
            self.measured_bytes = self._measure_local_bytes()
        self.optimizer.zero_grad(set_to_none=not self._stable_grads)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "grad_stats": grad_stats, "skipped": skipped}

    def _measure_local_bytes(self, gradients_like_parameters: bool = False) -> dict[str, float]:
        """Bytes of the parameters, gradients and optimizer states this rank holds (local shards),
        the fullest rank's; measured once, after the first step, when all three exist (a finished run's resume,
        which steps none: its gradients as its trainable parameters, whose shapes and dtypes they take)."""
        params = list(self.raw_model.parameters())
        optim = getattr(self.optimizer, "optim", self.optimizer)  # ZeroRedundancyOptimizer: this rank's AdamW
        states = [v for s in optim.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        values = [
            parallel.local_bytes(params),
            parallel.local_bytes(
                [p for p in params if p.requires_grad]
                if gradients_like_parameters
                else [p.grad for p in params if p.grad is not None]
            ),
            parallel.local_bytes(states),
        ]
        values = parallel.all_reduce_max([float(v) for v in values], self.dist)
        return dict(zip(("parameters", "gradients", "optimizer"), values))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each split (the same batches every time),
        split over the ranks: rank r evaluates batches r, r + N, ...; every rank runs the same number
        of forwards (FSDP needs all ranks in each), padding with batch 0 at weight 0."""
        self.model.eval()
        out = {}
        n_iters, world = self.cfg.eval_iters, self.world_size
        per_rank = math.ceil(n_iters / world)
        for split, loader in self.eval_loaders.items():
            losses = torch.zeros(per_rank, device=self.device)
            for j in range(per_rank):
                k = j * world + self.rank
                x, y = loader.get_batch(k if k < n_iters else 0)
                self._new_graph_run()
                with self.autocast:
                    _, loss = self.model(x, y, return_logits=False)
                losses[j] = loss if k < n_iters else 0.0
            if world > 1:  # in batch order (k = j * world + rank), so the sum is the single process's, bit for bit
                losses = parallel.all_gather_stacked(losses, self.dist).t().reshape(-1)
            out[split] = (losses[:n_iters].sum() / n_iters).item()
        self.model.train()
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        """Everything a checkpoint holds besides the model and optimizer tensors."""
        return {
            "format": FORMAT,
            "version": 1,
            "parallel": self.mode,
            "world_size": self.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "arch": self.arch.to_dict(),
            "config": self.run_config.to_dict(),
            "tokenizer": self.meta.get("tokenizer"),
            "dataset": self.cfg.dataset,
            "iter_num": self.iter_num,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "rng": rng_state(self.device),
            "gradient_history": self.telemetry.spikes.state_dict(),  # the spike test's running median
            "data": self.data_record,
            "versions": software_versions(),
            "weights_origin": self.weights_origin,
            "plugin_digests": self._plugin_digests,
        }

    def checkpoint_state(self) -> dict[str, Any]:
        """The single-file checkpoint (not under fsdp; under zero1, on rank 0 after consolidation)."""
        return {
            **self.checkpoint_meta(),
            "model": clean_state_dict(self.raw_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
        }

    def _check_out_dir(self) -> None:
        """out_dir is the folder the run started in: one moved or deleted mid-run (its log, its lock and its
        checkpoints gone with it) got a new ckpt.pt and summary.json in a fresh folder of that name, the run said
        it completed, and a second run could take the name meanwhile (the lock held a deleted file)."""
        known = self._out_dir_identity
        if not self.master or known in (None, "unknown"):  # rank 0 writes and holds the log and the lock there;
            return  # other nodes' views of a shared folder may differ (a remount) while it is fine
        now = folder_identity(self.out_dir)
        if now != "unknown" and now != known:
            raise GptlabError(
                f"out_dir={str(self.out_dir)!r} was moved or deleted while the run wrote to it (its log and earlier "
                "checkpoints went with it): nothing more is saved there; resume from where the folder went"
            )

    def save(self) -> Path:
        """fsdp: every rank writes its shards (DCP); otherwise rank 0 writes one file. All ranks call."""
        self._check_out_dir()
        keep = self.cfg.keep_checkpoints
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
            state = {"model": model_sd, "optimizer": optim_sd}
            barrier = functools.partial(parallel.barrier, self.dist)
            on_disk = self.iter_num == self._resumed_iter and dcp_on_disk(
                self.out_dir, self.iter_num, self._resumed_dcp
            )
            path = save_dcp(state, self.checkpoint_meta(), self.out_dir, keep, self.rank, barrier, on_disk)
        else:
            if self.mode == "zero1":
                self.optimizer.consolidate_state_dict(to=0)  # the document's way: gather the shards to rank 0
            path = self.out_dir / "ckpt.pt"
            if self.master:
                path = save_single_file(self.checkpoint_state(), self.out_dir, keep)
            parallel.barrier(self.dist)  # no rank runs ahead of a checkpoint it may need to resume from
        self.logger.log_event("checkpoint", f"saving checkpoint to {path}", iter=self.iter_num)
        self._saved_iter = self.iter_num
        replaced, self._replaced_source = self._replaced_source, None
        if replaced is not None and self.master and KEPT_SOURCE in self._config_record:  # the run's own now
            self._config_record = {k: v for k, v in self._config_record.items() if k != KEPT_SOURCE}
            atomic_write(self.out_dir / "config.json", _dumps(self._config_record))
        if replaced is not None and self.master and replaced != Path(path).resolve() and replaced.exists():
            shutil.rmtree(replaced) if replaced.is_dir() else replaced.unlink()  # the replaced run's last weights
            self.logger.log_event("overwrite", f"replaced the previous run's {replaced.name}: this run saved its own")
        return path

    def _tensorboard_purge_step(self) -> int | None:
        """Where this session's TensorBoard events replace the earlier sessions': a new run's from 0 (the run
        it replaces, as log.jsonl is); a resume's from the resumed iteration (the checkpoint's own evaluation
        there, if not run again, is written back: _restore_tensorboard_eval); None for an evaluation or a run
        already done (nothing is logged again, and a finished run's final evaluation stays)."""
        cfg = self.cfg
        if cfg.eval_only or self._done:
            return None
        if cfg.init_from != "resume":
            return 0
        return self.iter_num  # a killed session's records from here on: its training step at N too

    def _restore_tensorboard_eval(self) -> None:
        """A resume purges TensorBoard from its iteration N (what a killed session logged there, its training
        step at N included); the checkpoint's own evaluation at N, which a stop ran and this session does not
        run again (N is not an evaluation step), is written back from log.jsonl, so each step has its points once."""
        cfg = self.cfg
        if not (cfg.tensorboard_log and self.master and cfg.init_from == "resume") or cfg.eval_only or self._done:
            return  # nothing purged
        if self.iter_num % cfg.eval_interval == 0:  # evaluated again at N
            return
        record = logged_eval(self.out_dir, self.iter_num)
        if record is not None:
            numbers = {k: v for k, v in record.items() if k not in ("type", "time", "iter")}
            self.logger.tensorboard_scalars(self.iter_num, {"eval": numbers})

    # ------------------------------------------------------------------ the loop
    def _eval_and_checkpoint(self, healthy: bool) -> dict[str, float]:
        self.gradient_stats.read()  # the checkpoint's spike history holds every step's norm
        losses = self._last_losses = self.evaluate()  # the summary's final losses, however the run ends
        self.logger.log_eval(
            self.iter_num, losses["train"], losses["val"], lr=get_lr(self.iter_num, self.cfg), tokens=self.tokens_seen
        )
        improved = losses["val"] < self.best_val_loss  # False for NaN: a NaN never becomes the best
        if improved:
            self.best_val_loss = losses["val"]
        if (
            self.iter_num > 0
            and healthy
            and _finite(losses)  # weights that give NaN on either split are never saved
            and (improved or self.cfg.always_save_checkpoint)
        ):
            self.save()
        return losses

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._check_out_dir()  # (moved while the run was built: a checkpoint's load, a compile)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self._out_dir_identity is None:  # made here (a Trainer run from Python, without launch's lock)
            self._out_dir_identity = folder_identity(self.out_dir)
        if not cfg.eval_only and self._done:  # a resumed run that is already done
            return self._already_done()
        if self.master:
            if not cfg.eval_only:  # an evaluation leaves the evaluated run's files as they are
                # with the torchrun job that runs it: a restarted attempt of the same job continues the run
                record = {
                    **self.run_config.to_dict(),
                    "weights_origin": self.weights_origin,
                    "torchelastic_run_id": elastic_run_id(),
                }
                if self._replaced_source is not None:  # until the first save: a resume refuses it as this run's
                    record[KEPT_SOURCE] = kept_source_record(self.out_dir, self._replaced_source)
                atomic_write(self.out_dir / "config.json", _dumps(record))
                self._config_record = record
                # the run trains again: a finished session's (or a replaced run's) summary no longer describes it
                (self.out_dir / "summary.json").unlink(missing_ok=True)
            report = build_startup_report(self)
            self.logger.log_startup_info(report, render_startup_report(report))
            if self._memory_warning:  # before the first step, not after an OOM
                self.logger.log_event("memory_warning", self._memory_warning)
            if not cfg.eval_only:
                self._check_disk_space()
        if cfg.eval_only:  # evaluate the weights as they are, whatever the iteration; write nothing
            losses = self.evaluate()
            self.logger.log_eval(
                self.iter_num, losses["train"], losses["val"], lr=get_lr(self.iter_num, cfg), tokens=self.tokens_seen
            )
            return self._finish(losses)
        with StopSignals(self._announce_stop) as stop:
            try:
                return self._train_loop(stop)
            except BaseException:  # a crash, an OOM, a second Ctrl-C: the statistics already on the host are logged
                with contextlib.suppress(Exception):  # (those still on a failed device are not waited for)
                    self.gradient_stats.read(ready_only=True)
                raise

    def attach_logger(self, logger: TrainingLogger) -> None:
        """Log to ``logger``, with what reads into it where the host syncs anyway: gradient statistics a step late,
        fp16's skipped steps when logged."""
        self.logger = logger
        self.gradient_stats = GradientStatsQueue(self.telemetry, logger, fp16=self.scaler.is_enabled())
        self.scale_drops = LossScaleDrops(self.scaler, logger)

    def log_iteration(self, step: dict[str, Any], lossf: float, dt: float, timed_steps: int) -> None:
        """A logged iteration's host work after its sync (its loss read): the gradient statistics, MFU, memory,
        the JSON record, the console line, TensorBoard/wandb. The device waits meanwhile (the next step is not yet
        queued), so this is telemetry's cost per logged step; bench/telemetry_overhead.py times it."""
        grad_stats = self.gradient_stats.read(through=self.iter_num, keep=self.iter_num)  # synced: no wait
        self.scale_drops.report()
        mfu = self.telemetry.mfu(dt)
        self._check_mfu(mfu.get("mfu"))
        self.logger.log_iter_detailed(
            self.iter_num,
            lossf,
            dt * 1000,
            mfu,
            self.telemetry.memory_stats(),
            grad_stats,
            lr=step["lr"],
            tokens=self.tokens_seen,
            tokens_per_sec=self.telemetry.tokens_per_iter / dt,
            timed_steps=timed_steps,
            grad_norm=None if step["grad_norm"] is None else step["grad_norm"].item(),
        )

    def _saved_summary(self) -> dict[str, Any] | None:
        """out_dir's summary.json as a mapping (rank 0 reads it), None if none or unreadable."""
        return saved_summary(self.out_dir) if self.master else None

    def _completed_beyond(self, summary: dict[str, Any] | None) -> bool:
        return completed_beyond(summary, self.iter_num, self.cfg.max_iters)

    def _check_mfu(self, mfu: float | None) -> None:
        """Once a session: an MFU above 100% says its peak is below what the device reached (a --peak_tflops measured
        with fewer threads, or another device's), rather than print 280% with no word."""
        if self._mfu_warned or not isinstance(mfu, float) or not mfu > 1.0:
            return
        self._mfu_warned = True
        peak = self.telemetry.peak
        threads = ""
        if self.device.type == "cpu":
            threads = (
                f"; on a CPU measure it with `gptlab peak` under the threads training runs with "
                f"({torch.get_num_threads()} here, OMP_NUM_THREADS; torchrun gives each rank 1)"
            )
        self.logger.log_event(
            "mfu_above_peak",
            f"iter {self.iter_num}: MFU {mfu:.0%} is above 100%: the peak it is measured against "
            f"({peak['peak_flops'] / 1e12:g} TFLOPS per device, {peak['source']}) is below what this run "
            f"reached{threads}",
            iter=self.iter_num,
            mfu=mfu,
        )

    def _run_is_done(self) -> bool:
        """A resume with nothing to train: the checkpoint is past max_iters, or it is the one a completed run
        kept (its best evaluation, always_save_checkpoint=False): a requeued job trained its last iterations
        again, rewrote its summary and logged them twice. The ranks agree (rank 0 reads the summary)."""
        cfg = self.cfg
        if cfg.eval_only or cfg.init_from != "resume":
            return False
        if self.iter_num > cfg.max_iters:
            return True
        (done,) = parallel.all_reduce_max([float(self._completed_beyond(self._saved_summary()))], self.dist)
        return bool(done)

    def _already_done(self) -> dict[str, Any]:
        """A resume of a finished run (a requeued job): says so and changes nothing, config.json and summary.json
        included; the summary is the finished run's (written now only if the run ended before writing it)."""
        done = done_line(self.iter_num, self.cfg.max_iters)
        self.logger.log_event("done", f"nothing to do: {done} (raise --max_iters to train on from it)")
        summary = self._saved_summary()
        # the finished run's own summary only (a job killed between its last checkpoint and its summary leaves
        # an earlier session's); every rank takes the same branch (_finish has collectives)
        final = summary is not None and summary.get("status") == "completed"
        final = final and (summary.get("iterations") == self.iter_num or self._completed_beyond(summary))
        (have,) = parallel.all_reduce_max([float(final)], self.dist)
        if not have:  # the final losses: the evaluation of these weights that the killed session logged, and
            # its steps' figures (the summary it would have written), to its checkpoint
            self._adopt_logged_session()
            if self.measured_bytes is None:  # the loaded weights' and optimizer's, as that session measured them
                self.measured_bytes = self._measure_local_bytes(gradients_like_parameters=True)
            return self._finish(self._logged_losses())
        self.logger.close()
        return summary if self.master else {}

    def _adopt_logged_session(self) -> None:
        """The summary's step figures and start: those of the session that trained to this checkpoint, from
        log.jsonl (rank 0's) up to it; steps a killed session logged past it were lost with it."""
        if not self.master:
            return
        with contextlib.suppress(OSError, GptlabError):
            session = self.logger.adopt_session(session_records_to(self.out_dir, self.iter_num))
            if session is not None:
                start = session.get("start_iter")
                if isinstance(start, int) and not isinstance(start, bool):
                    self.start_iter = start
                if "init_from" in session:  # whether that session was a resume (a first one is not)
                    self.resumed = session["init_from"] == "resume"

    def _logged_losses(self) -> dict[str, float] | None:
        """The losses of the weights this session loaded, as an earlier session logged their evaluation (rank 0's
        log; None on the other ranks, and where there is none)."""
        logged = logged_eval(self.out_dir, self.iter_num) if self.master else None
        return {"train": logged["train_loss"], "val": logged["val_loss"]} if logged else None

    def _check_disk_space(self) -> None:
        n_parameters = sum(p.numel() for p in self.raw_model.parameters())
        if (warning := disk_space_warning(self.out_dir, n_parameters, self.cfg.keep_checkpoints)) is not None:
            self.logger.log_event("disk_warning", warning)

    def _announce_stop(self, name: str) -> None:
        """Said where the signal arrives (a handler: no collective, no logging of records)."""
        if self.master:
            if self.world_size == 1:
                when, extra = "this step", "; Ctrl-C again aborts without saving" if name == "SIGINT" else ""
            else:  # torchrun passes one signal on, then kills its workers 30 s later
                when = "the next logged iteration or evaluation (all ranks together)"
                extra = "; torchrun kills the ranks 30 s on"
            below_bar = "\n" if self.logger.status_shown else ""  # not written on the progress bar's line
            with contextlib.suppress(OSError):  # stderr gone with the pipe the signal also ended: stop all the same
                print(
                    f"{below_bar}gptlab: {name}: stopping after {when} to evaluate and checkpoint{extra}",
                    file=sys.stderr,
                    flush=True,
                )

    def _train_loop(self, stop: StopSignals) -> dict[str, Any]:
        """Iterations 0..max_iters (nanoGPT's), from the resumed one; stops early on a signal (``stop``)."""
        cfg = self.cfg
        last_losses = None
        # the first iteration whose loss (or, without fp16's scaler, gradient norm) was not finite: NO_ITER if none;
        # kept on the device, read where the host syncs anyway (a logged iteration, an evaluation)
        first_bad = torch.full((), NO_ITER, dtype=torch.int64, device=self.device)
        skips_in_a_row = 0  # nan_policy=skip: consecutive skipped steps
        window_start, window_steps = time.perf_counter(), 0  # the steps since the last logged one
        # under torchrun: the signal every rank has agreed to stop on (at a logged iteration, after an evaluation,
        # and here: one that came during the startup stops before the first step, as in one process)
        stop_agreed = self._agree_on_stop(stop)
        while self.iter_num <= cfg.max_iters:
            signum = stop.signum if self.world_size == 1 else stop_agreed
            if signum:
                self._stop_on_signal(signum, bad_iter=int(first_bad))
            if self.iter_num % cfg.eval_interval == 0:
                bad_iter = int(first_bad)
                last_losses = self._eval_and_checkpoint(healthy=bad_iter == NO_ITER)
                if bad_iter != NO_ITER:
                    self._stop_nonfinite(first_iter=bad_iter)
                if cfg.nan_policy == "stop" and not _finite(last_losses):
                    self._stop_nonfinite(evaluated=True)
                # asked during this evaluation: it was the last one (under torchrun once every rank agrees, here
                # rather than at the next logged iteration, which would train and evaluate again in torchrun's 30 s)
                if signum := self._agree_on_stop(stop):
                    self._stop_on_signal(signum, evaluated=last_losses)
                # steps are timed without evaluation and saving
                window_start, window_steps = time.perf_counter(), 0
            if self._fault == (self.rank, self.iter_num):  # test-only: a real kill -9 of this rank
                os.kill(os.getpid(), signal.SIGKILL)
            step = self.train_step()
            if step["grad_stats"] is not None:  # queued first: every exit below reads it before it stops
                self.gradient_stats.add(self.iter_num, step["grad_stats"])
            # the earlier steps' statistics: their copies were queued before this step's work, so no stall
            self.gradient_stats.read(through=self.iter_num - 1)
            self.tokens_seen += self.telemetry.tokens_per_iter
            checked = step["loss"]  # with the gradient norm (a NaN norm makes clipping turn every weight NaN), but
            norm = step["grad_norm"]  # clipping's, else the gradient statistics' where they were computed
            if norm is None and step["grad_stats"] is not None:
                norm = step["grad_stats"].global_norm  # a device scalar: no sync
            if norm is not None and not self.scaler.is_enabled():  # fp16's scaler skips inf steps itself
                checked = checked + norm  # non-finite if either is
            first_bad = torch.where(torch.isfinite(checked), first_bad, first_bad.clamp(max=self.iter_num))
            window_steps += 1
            if step["skipped"]:
                skips_in_a_row += 1
                self.logger.log_event(
                    "nan_skip", f"iter {self.iter_num}: non-finite loss or gradient, step skipped", iter=self.iter_num
                )
                first_bad.fill_(NO_ITER)
                if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                    first_of_them = self.iter_num - skips_in_a_row + 1  # nan_stop's first_iter, as under 'stop'
                    self._stop_nonfinite(skips_in_a_row, first_iter=first_of_them, stepped=True)
            else:
                skips_in_a_row = 0
            if self.iter_num % cfg.log_interval == 0:
                lossf = step["loss"].item()  # the host sync that logging asks for
                # seconds per step over the window since the last logged step, measured after this sync: the
                # device's time, not the host's launch time (a GPU runs behind the host between syncs)
                now = time.perf_counter()
                timed_steps = window_steps  # (fewer than log_interval after an evaluation, which restarts it)
                dt, window_start, window_steps = (now - window_start) / window_steps, now, 0
                self.log_iteration(step, lossf, dt, timed_steps)
                if cfg.nan_policy == "stop" and (bad_iter := int(first_bad)) != NO_ITER:  # synced above: no wait
                    self._stop_nonfinite(first_iter=bad_iter, stepped=True)
                stop_agreed = self._agree_on_stop(stop)  # here, where the host has synced anyway
            self.iter_num += 1
        self.gradient_stats.read()
        if (bad_iter := int(first_bad)) != NO_ITER:
            self._stop_nonfinite(first_iter=bad_iter)
        # evaluate (and checkpoint) the final weights: iter_num steps are done
        last_losses = self._eval_and_checkpoint(healthy=True)
        if not _finite(last_losses):  # weights that give NaN did not complete a run, whatever the policy
            self._stop_nonfinite(evaluated=True)
        if self._checkpoint_iter() is None:  # always_save_checkpoint=False, and iteration 0 (never saved) was best
            self.logger.log_event(
                "no_checkpoint",
                f"no checkpoint was written: no evaluation after iter 0 beat its val loss {self.best_val_loss:.4f} "
                "(always_save_checkpoint=False saves only improvements; iteration 0 is never saved)",
            )
        elif (saved := self._checkpoint_iter()) < self.iter_num and not self.cfg.always_save_checkpoint:
            self.logger.log_event(  # nanoGPT's keep-the-best, said: a resume goes on from there, not from here
                "checkpoint_behind",
                f"the checkpoint holds iter {saved}, the best val loss {self.best_val_loss:.4f}; the weights of the "
                f"{self.iter_num - saved} iterations after it (val loss {last_losses['val']:.4f} at iter "
                f"{self.iter_num}) were not saved: always_save_checkpoint=False saves only improvements",
                checkpoint_iter=saved,
            )
        return self._finish(last_losses)

    def _agree_on_stop(self, stop: StopSignals) -> int:
        """The signal to stop on (0: none): in one process its own; under torchrun the one some rank received,
        which every rank then stops on together (a collective, called by every rank at the same point of the loop)."""
        if self.world_size == 1:
            return stop.signum
        return int(parallel.all_reduce_max([float(stop.signum)], self.dist)[0])

    def _stop_on_signal(self, signum: int, bad_iter: int = NO_ITER, evaluated: dict[str, float] | None = None) -> None:
        """Evaluate and checkpoint at this step boundary (as at an eval_interval: always_save_checkpoint and
        the best val loss decide; ``evaluated``: that just happened), log it, write the summary, and raise
        TrainingInterrupted. Before this session's first step there is nothing new: no evaluation either
        (a run stopped because its memory warning said it will not fit must not allocate)."""
        name = signal.Signals(signum).name
        self.gradient_stats.read()
        if bad_iter != NO_ITER:  # the training loss went non-finite at bad_iter: that stop, not this one
            self._stop_nonfinite(first_iter=bad_iter)
        losses = evaluated
        if self.iter_num == self.start_iter and evaluated is None:
            where = "before this session's first step: nothing new to save"
            losses = self._logged_losses() if self.start_iter > 0 else None  # the loaded checkpoint's evaluation
        else:
            losses = evaluated or self._eval_and_checkpoint(healthy=True)
            if self._saved_iter == self.iter_num:
                resume = self._resume_command()
                where = f"a checkpoint at iter {self.iter_num} in {self.out_dir}: continue with {resume}"
            elif self.iter_num == 0:
                where = "nothing was trained yet, so no checkpoint"
            elif not _finite(losses):
                where = "no checkpoint written now (the evaluation's loss is not finite)"
            else:
                where = "no checkpoint written now (the val loss did not improve and always_save_checkpoint=False)"
        message = f"stopped by {name} at iter {self.iter_num}: {where}"
        self.logger.log_event("interrupted", message, iter=self.iter_num, signal=name)
        stopped = TrainingInterrupted(signum, message)
        self.logger.finalize(exit_code=stopped.exit_code, **self._summary_fields(losses, f"interrupted: {name}"))
        raise stopped

    def _resume_command(self) -> str:
        """What continues this run: --init_from=resume with the launch flags a resume does not take from the
        checkpoint (without them an FSDP run resumes unsharded, as DDP)."""
        flag = {"fsdp": " --use_fsdp=True", "zero1": " --use_zero1=True"}.get(self.mode, "")
        # the directory too: the settings that chose it (the quick start's out/quickstart, a config file's) may
        # not come with a bare --init_from=resume; the checkpoint brings the rest
        return f"--init_from=resume --out_dir={shlex.quote(str(self.out_dir))}{flag}"

    def _stop_nonfinite(
        self, skipped: int = 0, first_iter: int | None = None, evaluated: bool = False, stepped: bool = False
    ) -> None:
        """Stop on a non-finite loss: ``skipped`` steps in a row under nan_policy=skip, the training loss or
        gradient norm first not finite at ``first_iter``, or an evaluation's loss (``evaluated``). ``stepped``:
        iteration ``iter_num`` has run (its tokens counted), so the summary's iterations are one more."""
        self.gradient_stats.read()  # their records (a non-finite norm's grad_spike among them) before the stop's
        if skipped:
            what = f"{skipped} steps in a row had a non-finite loss or gradient (nan_policy=skip gives up)"
        elif evaluated:
            what = f"the evaluation at iter {self.iter_num} gave a non-finite loss"
        else:
            what = f"the training loss or gradient norm became NaN or infinite at iter {first_iter}"
        ckpt = self._checkpoint_iter()
        kept = "no checkpoint was written" if ckpt is None else f"the checkpoint kept is iter {ckpt}'s"
        self.scale_drops.report()  # fp16 steps skipped before this: their record first
        self.logger.log_event(
            "nan_stop",
            f"stopping at iter {self.iter_num}: {what} ({kept}; "
            "lower learning_rate" + (")" if skipped else ", or set --nan_policy=skip)"),
            iter=self.iter_num,
            first_iter=first_iter,
        )
        fields = self._summary_fields(self._last_losses, "stopped: non-finite loss", self.iter_num + stepped)
        self.logger.finalize(exit_code=2, **fields)
        raise NonFiniteLossError(f"training stopped at iter {self.iter_num}: non-finite loss")

    def _checkpoint_iter(self) -> int | None:
        """The iteration of out_dir's checkpoint of this run (the one a resume starts from); None if none."""
        if self._saved_iter >= 0:
            return self._saved_iter
        return self._resumed_iter if self._resumed_iter >= 0 else None

    def _finish(self, last_losses: dict[str, float] | None) -> dict[str, Any]:
        self._check_out_dir()
        text = None
        if self.cfg.sample_at_end and (self.master or self.mode == "fsdp"):  # FSDP: every rank joins each forward
            from gptlab.train.sample import generate_text

            with self.autocast:  # the precision the run trained and evaluated in (float32 was slower, on a GPU)
                text = generate_text(
                    self.raw_model,
                    self.meta.get("tokenizer"),
                    self.cfg.sample_prompt,
                    self.cfg.sample_tokens,
                    device=self.device,
                    seed=self.cfg.seed,
                )
        extra = self._summary_fields(last_losses, "completed")
        if text is not None and self.master:
            extra["sample"] = text
            self.logger.log_event("sample", "sample from the final model:\n" + text)
        return self.logger.finalize(**extra)

    def _summary_fields(
        self, last_losses: dict[str, float] | None, status: str, iterations: int | None = None
    ) -> dict[str, Any]:
        """summary.json's fields beyond the logger's statistics, for a run that completed or stopped (every
        rank calls: the fullest rank's peak is a collective; the others get {}). ``iterations``: those run,
        the last one trained + 1 (``iter_num`` unless a stop comes inside an iteration)."""
        self.scale_drops.report()  # skipped fp16 steps since the last logged iteration
        # every rank's session peak (a collective: all ranks, before rank 0 goes on alone); -1: none logged
        (max_rank_peak,) = parallel.all_reduce_max([self.telemetry.session_peak_gb or -1.0], self.dist)
        if not self.master:
            return {}
        plan = self.telemetry.plan()
        extra: dict[str, Any] = {
            "status": status,
            "iterations": self.iter_num if iterations is None else iterations,
            "tokens_seen": self.tokens_seen,  # over every session: where it stopped, not the plan
            "checkpoint_iter": None if self.cfg.eval_only else self._checkpoint_iter(),
            # this session's share: the statistics above cover iterations start_iter..iterations-1
            "start_iter": self.start_iter,
            "resumed": self.resumed,
            "weights_origin": self.weights_origin,
            "unigram_baseline_loss": unigram_baseline(self.dataset_dir, self.meta),
            "parallel": self.mode,
            "world_size": self.world_size,
            "planned_peak_gb": plan.mode.peak / 1e9,  # the planner's, per rank
        }
        if self.world_size > 1:  # the fullest rank is the one that runs out first
            extra["peak_memory_gb_max_rank"] = max_rank_peak if max_rank_peak >= 0 else None
        if self.measured_bytes is not None:  # the fullest rank's local parameter/gradient/optimizer bytes
            extra["measured_bytes_per_rank"] = self.measured_bytes
            extra["planned_bytes_per_rank"] = {k: getattr(plan.mode, k) for k in self.measured_bytes}
        if last_losses:  # (the logger's final_val_loss is this session's; a requeue's is the one logged before)
            extra["final_train_loss"], extra["final_val_loss"] = last_losses["train"], last_losses["val"]
        if not self.cfg.eval_only:  # an evaluation's best is its own (the logger's)
            # the run's best over every session (the checkpoint carries it), not only this session's evaluations
            extra["best_val_loss"] = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        return extra


def _finite(losses: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in losses.values())


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _replicated(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as every rank's same tensor: FSDP2's DTensor norm reduced over its shards."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _fault_injection() -> tuple[int, int] | None:
    """Tests only: GPTLAB_FAULT_INJECT='RANK:ITER' kills rank RANK with SIGKILL before step ITER."""
    value = os.environ.get("GPTLAB_FAULT_INJECT")
    if not value:
        return None
    rank, sep, it = value.partition(":")
    if not (sep and rank.isdigit() and it.isdigit()):
        raise ConfigError(f"GPTLAB_FAULT_INJECT={value!r} must be RANK:ITER (a test hook; unset it)")
    return int(rank), int(it)
