"""The training loop as named steps: ``Trainer`` with ``forward_backward``, ``train_step``,
``evaluate``, ``save`` and ``run``.

The hot path (``train_step``) makes no host syncs unless a log line, a gradient-statistics
interval or ``nan_policy='skip'`` asks for one.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import torch

from gptlab.checkpoint import CHECKPOINT_NAME, FORMAT, atomic_save, clean_state_dict, load_checkpoint
from gptlab.config.model import ModelArchitectureConfig
from gptlab.config.train import RunConfig, TrainConfig
from gptlab.data.datasets import ensure_prepared, read_meta
from gptlab.data.loader import BatchLoader
from gptlab.errors import CheckpointError, ConfigError, GptlabError
from gptlab.logging import TrainingLogger
from gptlab.model.gpt import ConfigurableGPT
from gptlab.train import telemetry_hooks as telemetry
from gptlab.train.schedule import get_lr
from gptlab.train.startup_report import build_startup_report, render_startup_report

PT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteLossError(GptlabError):
    """The loss became NaN or infinite and nan_policy='stop'."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here: use --device=cpu (or auto)")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("dtype='bfloat16' is not supported on this GPU: use --dtype=float16")
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def unigram_baseline(dataset_dir: Path, meta: dict[str, Any]) -> float:
    """Cross-entropy (nats/token) of the train split's unigram distribution on the val split:
    the loss a model that ignores context can reach, the bar a trained model must clear."""
    import numpy as np

    dtype = np.dtype(meta.get("dtype", "uint16"))
    train = np.memmap(dataset_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(dataset_dir / "val.bin", dtype=dtype, mode="r")
    vocab = int(meta["vocab_size"])
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0  # add-one: unseen val tokens
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val)].mean())


class Trainer:
    """Owns one run: data, model, optimizer, logger; ``run()`` trains to ``max_iters``."""

    def __init__(self, run: RunConfig, *, stream: IO[str] | None = None) -> None:
        self.cfg: TrainConfig = run.train
        cfg = self.cfg
        self.out_dir = Path(cfg.out_dir)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if cfg.use_zero1 or cfg.use_fsdp:
            raise ConfigError("use_zero1 / use_fsdp need the distributed launcher, which is not built yet")
        self.world_size, self.rank, self.master = 1, 0, True
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 matmuls and convs, as nanoGPT
            torch.backends.cudnn.allow_tf32 = True

        # ---- data
        self.dataset_dir = ensure_prepared(cfg.dataset, cfg.data_dir)
        self.meta = read_meta(self.dataset_dir)
        self.iter_num, self.best_val_loss = 0, float("inf")
        self.arch, ckpt, pretrained = self._resolve_init(run)
        self.run_config = RunConfig(train=cfg, arch=self.arch)
        loader_args = dict(batch_size=cfg.batch_size, block_size=self.arch.block_size, device=self.device)
        self.train_loader = BatchLoader(self.dataset_dir, "train", seed=cfg.seed, rank=self.rank, **loader_args)
        self.eval_loaders = {  # fixed batches (seed + 1, steps 0..eval_iters-1): every eval sees the same data
            split: BatchLoader(self.dataset_dir, split, seed=cfg.seed + 1, rank=0, **loader_args)
            for split in ("train", "val")
        }
        self._build_model(self.arch, ckpt, pretrained)

        # ---- model, optimizer, precision
        self.model.to(self.device)
        self.optimizer = self.model.configure_optimizers(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device.type
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "float16")
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        self.autocast = (
            contextlib.nullcontext()
            if self.dtype == "float32"
            else torch.autocast(device_type=self.device.type, dtype=PT_DTYPES[self.dtype])
        )
        self.raw_model = self.model
        if cfg.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]

        # ---- telemetry and logging
        self.telemetry = telemetry.TelemetryHooks(self.raw_model, self.device, self.dtype, cfg, self.world_size)
        self.logger = TrainingLogger(
            self.out_dir,
            style=cfg.log_style,
            enabled=self.master,
            stream=stream,
            max_iters=cfg.max_iters,
            wandb_config=(
                {"project": cfg.wandb_project, "name": cfg.wandb_run_name, "config": self.run_config.to_dict()}
                if cfg.wandb_log
                else None
            ),
            tensorboard=cfg.tensorboard_log,
            resume=cfg.init_from == "resume",
        )
        if ckpt is not None:
            self._restore_rng(ckpt)
            self.logger.log_event("resume", f"resuming from {self.out_dir / CHECKPOINT_NAME} at iter {self.iter_num}")

    # ------------------------------------------------------------------ init_from
    def _resolve_init(self, run: RunConfig) -> tuple[ModelArchitectureConfig, dict[str, Any] | None, Any]:
        """The architecture to train, the checkpoint to resume (if any) and a pretrained model
        (if any). Nothing large is allocated here, so data checks can still fail fast."""
        cfg, arch = self.cfg, run.arch
        vocab = int(self.meta["vocab_size"])
        if cfg.init_from == "scratch":
            if "vocab_size" not in run.explicit:
                arch = replace(arch, vocab_size=64 * math.ceil(vocab / 64))  # pad for efficient matmuls
            elif arch.vocab_size < vocab:
                raise ConfigError(f"vocab_size={arch.vocab_size} is smaller than dataset {cfg.dataset!r}'s {vocab}")
            return arch, None, None
        if cfg.init_from == "resume":
            ckpt = load_checkpoint(self.out_dir / CHECKPOINT_NAME)
            # the architecture is the checkpoint's; only settings that keep the weights may change
            arch_dict = {**ckpt["arch"], **{k: getattr(arch, k) for k in ("dropout", "attention_backend")}}
            return ModelArchitectureConfig.from_dict(arch_dict), ckpt, None
        # a local Hugging Face directory, nanoGPT ckpt.pt or gptlab checkpoint to fine-tune
        path = Path(cfg.init_from).expanduser()
        if not path.exists():
            raise ConfigError(
                f"init_from={cfg.init_from!r} is neither 'scratch', 'resume' nor an existing local checkpoint path"
            )
        model = ConfigurableGPT.from_pretrained(path, dropout=arch.dropout)
        if model.config.vocab_size < vocab:
            raise CheckpointError(f"{str(path)!r} has vocab_size={model.config.vocab_size} < dataset's {vocab}")
        if arch.block_size < model.config.block_size:
            model.crop_block_size(arch.block_size)  # as nanoGPT does when fine-tuning on shorter blocks
        return model.config, None, model.train()

    def _build_model(self, arch: ModelArchitectureConfig, ckpt: dict[str, Any] | None, pretrained: Any) -> None:
        if pretrained is not None:
            self.model = pretrained
            return
        self.model = ConfigurableGPT(arch)
        if ckpt is not None:
            self.model.load_state_dict(clean_state_dict(ckpt["model"]))
            self.iter_num, self.best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])

    # ------------------------------------------------------------------ RNG state (exact resume)
    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore_rng(self, ckpt: dict[str, Any]) -> None:
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    # ------------------------------------------------------------------ steps
    def forward_backward(self, micro_step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One micro-step; returns the detached (unscaled) loss."""
        with self.autocast:
            _, loss = self.model(x, y)
        self.scaler.scale(loss / self.cfg.gradient_accumulation_steps).backward()
        return loss.detach()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over all micro-steps. Returns device tensors, not floats."""
        cfg = self.cfg
        lr = get_lr(self.iter_num, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.gradient_accumulation_steps):
            x, y = self.train_loader.get_batch(self.iter_num, micro)
            loss_sum += self.forward_backward(micro, x, y)
        loss = loss_sum / cfg.gradient_accumulation_steps
        log_grads = self.iter_num % cfg.gradient_log_interval == 0
        if cfg.grad_clip > 0.0 or log_grads:
            self.scaler.unscale_(self.optimizer)  # statistics and clipping see the true gradients
        grad_stats = self.telemetry.gradient_stats() if log_grads else None  # one host sync, at this interval
        grad_norm = None
        if cfg.grad_clip > 0.0:  # the returned norm is the one before clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        skipped = False
        if cfg.nan_policy == "skip" and not bool(torch.isfinite(loss)):  # a host sync, by request
            skipped = True
        else:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "grad_stats": grad_stats, "skipped": skipped}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each split (the same batches every time)."""
        self.model.eval()
        out = {}
        for split, loader in self.eval_loaders.items():
            losses = torch.zeros(self.cfg.eval_iters, device=self.device)
            for k in range(self.cfg.eval_iters):
                x, y = loader.get_batch(k)
                with self.autocast:
                    _, loss = self.model(x, y)
                losses[k] = loss
            out[split] = losses.mean().item()
        self.model.train()
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "model": clean_state_dict(self.raw_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "arch": self.arch.to_dict(),
            "config": self.run_config.to_dict(),
            "tokenizer": self.meta.get("tokenizer"),
            "dataset": self.cfg.dataset,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "rng": self._rng_state(),
        }

    def save(self) -> Path:
        path = atomic_save(self.checkpoint_state(), self.out_dir / CHECKPOINT_NAME)
        self.logger.log_event("checkpoint", f"saving checkpoint to {path}", iter=self.iter_num)
        return path

    # ------------------------------------------------------------------ the loop
    def _eval_and_checkpoint(self, healthy: bool) -> dict[str, float]:
        losses = self.evaluate()
        self.logger.log_eval(self.iter_num, losses["train"], losses["val"], lr=get_lr(self.iter_num, self.cfg))
        improved = losses["val"] < self.best_val_loss  # False for NaN: a NaN never becomes the best
        if improved:
            self.best_val_loss = losses["val"]
        if (
            self.iter_num > 0
            and healthy
            and math.isfinite(losses["val"])
            and (improved or self.cfg.always_save_checkpoint)
        ):
            self.save()
        return losses

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(_dumps(self.run_config.to_dict()))
        report = build_startup_report(self)
        self.logger.log_startup_info(report, render_startup_report(report))
        last_losses = None
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # seen since the last check
        t0 = time.time()
        while True:
            if self.iter_num % cfg.eval_interval == 0:
                healthy = not bool(nonfinite)
                last_losses = self._eval_and_checkpoint(healthy)
                if not healthy:
                    self._stop_nonfinite()
                t0 = time.time()  # the step's time must not include evaluation and saving
            if cfg.eval_only:
                break
            step = self.train_step()
            nonfinite |= ~torch.isfinite(step["loss"])
            t1 = time.time()
            dt, t0 = t1 - t0, t1
            if step["skipped"]:
                self.logger.log_event(
                    "nan_skip", f"iter {self.iter_num}: non-finite loss, step skipped", iter=self.iter_num
                )
                nonfinite.zero_()
            if step["grad_stats"] and step["grad_stats"].get("spike"):
                ratio = step["grad_stats"].get("norm_to_median")
                self.logger.log_event(
                    "grad_spike",
                    f"iter {self.iter_num}: gradient norm {step['grad_stats']['global_norm']:.4g} is "
                    f"{ratio:.1f}x its running median",
                    iter=self.iter_num,
                    grad_norm=step["grad_stats"]["global_norm"],
                    ratio=ratio,
                )
            if self.iter_num % cfg.log_interval == 0:
                lossf = step["loss"].item()  # the host sync that logging asks for
                if not math.isfinite(lossf) and cfg.nan_policy == "stop":
                    self._stop_nonfinite()
                self.logger.log_iter_detailed(
                    self.iter_num,
                    lossf,
                    dt * 1000,
                    self.telemetry.mfu(dt),
                    self.telemetry.memory_stats(),
                    step["grad_stats"],
                    lr=step["lr"],
                    tokens_per_sec=self.telemetry.tokens_per_iter / dt,
                    grad_norm=None if step["grad_norm"] is None else step["grad_norm"].item(),
                )
            self.iter_num += 1
            if self.iter_num > cfg.max_iters:
                break
        if not cfg.eval_only:  # evaluate (and checkpoint) the final weights: iter_num steps are done
            if bool(nonfinite):
                self._stop_nonfinite()
            last_losses = self._eval_and_checkpoint(healthy=True)
        return self._finish(last_losses)

    def _stop_nonfinite(self) -> None:
        self.logger.log_event(
            "nan_stop",
            f"stopping at iter {self.iter_num}: the loss is NaN or infinite (no checkpoint was written since; "
            "lower learning_rate, or set --nan_policy=skip)",
            iter=self.iter_num,
        )
        self.logger.finalize(status="stopped: non-finite loss")
        raise NonFiniteLossError(f"training stopped at iter {self.iter_num}: non-finite loss")

    def _finish(self, last_losses: dict[str, float] | None) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "status": "completed",
            "iterations": self.iter_num,
            "unigram_baseline_loss": unigram_baseline(self.dataset_dir, self.meta),
        }
        if last_losses:
            extra["final_train_loss"] = last_losses["train"]
        if self.cfg.sample_at_end and self.master:
            from gptlab.train.sample import generate_text

            text = generate_text(
                self.raw_model,
                self.meta.get("tokenizer"),
                self.cfg.sample_prompt,
                self.cfg.sample_tokens,
                device=self.device,
                seed=self.cfg.seed,
            )
            extra["sample"] = text
            self.logger.log_event("sample", "sample from the final model:\n" + text)
        return self.logger.finalize(**extra)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"


def train(run: RunConfig, stream: IO[str] | None = None) -> dict[str, Any]:
    """Train ``run`` to completion and return the summary."""
    return Trainer(run, stream=stream or sys.stdout).run()
