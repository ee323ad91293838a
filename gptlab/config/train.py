"""TrainConfig: nanoGPT's train.py settings as a validated dataclass, and the run config that
joins it to the flat architecture keys (``--n_layer``, ``--normalization``, ...).

Config files are Python files the user names (nanoGPT style, gptlab.config.files); every other value
arrives as a ``--key=value`` override parsed with ``ast.literal_eval``; gptlab.config.resolve makes a
RunConfig of both.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gptlab.config.model import (
    ARCH_FIELDS,
    MAX_SIZE,
    ModelArchitectureConfig,
    check_field_types,
    keep_init_signature,
)
from gptlab.errors import ConfigError, did_you_mean, unknown_choice
from gptlab.plugins import split_plugins

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LR_SCHEDULES = ("cosine", "constant", "wsd")
LOG_STYLES = ("detailed", "compact")
NAN_POLICIES = ("stop", "skip")
PARALLEL_MODES = ("auto", "none", "ddp", "zero1", "fsdp")
BACKENDS = ("auto", "nccl", "gloo")
COMPILE_SCOPES = ("model", "blocks")
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")  # gptlab.device.prefer_sdpa_kernel
# torch.compile's modes; 'reduce-overhead' and 'max-autotune' capture CUDA graphs on a GPU
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


MAX_PEAK_TFLOPS = 1e5  # 100 PFLOPS per device, 5x a B200's sparse FP4: above it, FLOP/s were given for TFLOPS


def check_peak_tflops(value: float, key: str = "peak_tflops") -> None:
    """A per-device dense peak in TFLOPS: finite, > 0, and not FLOP/s (989e12 for 989 read MFU ~1e-17, n/a)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value!r} is invalid: expected a float > 0 (TFLOPS per device) or None")
    if value > MAX_PEAK_TFLOPS:
        raise ConfigError(
            f"{key}={value!r} is above {MAX_PEAK_TFLOPS:,.0f} TFLOPS per device: it is TFLOPS, not FLOP/s "
            f"({value!r} FLOP/s is {value / 1e12:.4g} TFLOPS; an H100's dense bf16 is 989)"
        )


@dataclass
class TrainConfig:
    """Training settings; names and meanings are nanoGPT's wherever nanoGPT has them."""

    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False
    always_save_checkpoint: bool = True
    init_from: str = "scratch"  # 'scratch' | 'resume' | a local HF dir / ckpt.pt | a Hub name (gpt2-xl, org/name)
    overwrite: bool = False  # a new run may replace a previous run's files in out_dir
    plugins: str = ""  # modules / .py files that register components, imported first: "my_components, x.py"
    # logging backends
    wandb_log: bool = False
    wandb_project: str = "gptlab"
    wandb_run_name: str = "run"
    tensorboard_log: bool = False
    log_style: str = "detailed"  # 'detailed' block per iteration, or 'compact' one line
    gradient_log_interval: int = 10
    # data
    dataset: str = "openwebtext"  # nanoGPT's default (the quick start, with no config file, names its own)
    data_dir: str = "data"
    gradient_accumulation_steps: int = 1
    batch_size: int = 12  # micro-batch per process
    seed: int = 1337
    # architecture
    arch_preset: str = "gpt2"
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # learning-rate schedule
    decay_lr: bool = True
    lr_schedule: str = "cosine"  # 'cosine' | 'constant' | 'wsd' (warmup-stable-decay)
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    wsd_decay_frac: float = 0.2  # wsd: share of lr_decay_iters spent decaying linearly to min_lr
    # system
    device: str = "auto"  # 'auto' picks cuda, then mps, then cpu
    dtype: str = "auto"  # 'auto': bfloat16 where supported on CUDA, else float16 on CUDA; float32 on CPU
    # the residual stream between the blocks (and its gradient): 'auto' keeps each mode's own, float32 under
    # autocast (nanoGPT's numerics), the compute dtype under FSDP2's mixed precision; the run's low-precision
    # dtype ('bfloat16' with dtype='bfloat16') casts the embeddings' output, so every block reads and adds in it,
    # as FSDP2 and llm.c do (less memory traffic: GPT-2 124M's step 2.6% faster on an H200, docs/benchmarks.md)
    residual_dtype: str = "auto"
    compile: bool = True
    compile_mode: str = "default"  # torch.compile mode: 'default' | 'reduce-overhead' | 'max-autotune' | ...
    # 'model': one graph, fusions across blocks; 'blocks': each block compiled alone (the embeddings, final
    # norm, LM head and loss run eagerly), like torchtitan: identical blocks share one compile, so it takes
    # about a layer's time. FSDP always compiles per block.
    compile_scope: str = "model"
    # the fused attention kernel SDPA tries first (attention_backend='sdpa'): 'auto' is PyTorch's order (on an
    # H100/H200 cuDNN's); 'flash', 'efficient', 'cudnn' (CUDA) or 'math' first, PyTorch's order after it for a case
    # that kernel cannot take. The CPU has flash and math only.
    sdpa_backend: str = "auto"
    backend: str = "auto"  # 'auto': NCCL on CUDA, gloo on the CPU (device='cpu' always uses gloo)
    peak_tflops: float | None = None  # override the detected dense peak (needed for MFU on a CPU)
    # parallelism under torchrun (docs/parallel.md)
    parallel: str = "auto"  # 'auto' (ddp when WORLD_SIZE > 1, else none) | 'none' | 'ddp' | 'zero1' | 'fsdp'
    use_zero1: bool = False  # the design document's flag: parallel='zero1'
    use_fsdp: bool = False  # the design document's flag: parallel='fsdp'
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    loss_chunk_size: int = 0  # >0: fused LM head + cross-entropy over chunks of this many tokens, no full logits
    fsdp_cpu_offload: bool = False  # fsdp: keep sharded parameters, gradients and optimizer states in CPU memory
    dist_timeout: int = 600  # seconds a collective may wait for the other ranks before the job fails
    keep_checkpoints: int = 1  # the last K checkpoints are kept
    # robustness
    nan_policy: str = "stop"  # a NaN/inf loss stops the run, or 'skip' skips that step
    # end of run
    sample_at_end: bool = False
    sample_tokens: int = 200
    sample_prompt: str = "\n"

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainConfig:
        """A misspelt keyword is one ConfigError naming the nearest key (not the dataclass's bare TypeError)."""
        fields = cls.__dataclass_fields__
        for key in kwargs:
            if key not in fields:
                raise ConfigError(f"unknown training key {key!r}{did_you_mean(key, list(fields))}")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        check_field_types(self)
        for key in ("out_dir", "data_dir"):  # `--out_dir=~/runs/x` (no shell expands '~' after '='): the home
            # folder, as sample, init_from and Hugging Face's output_dir read it, not a folder named '~' here
            setattr(self, key, os.path.expanduser(getattr(self, key)))
        self.validate()

    @property
    def parallel_mode(self) -> str:
        """The mode asked for: ``parallel``, where the design document's ``use_zero1`` / ``use_fsdp`` flags
        spell it (a property, not a rewrite of ``parallel``: ``dataclasses.replace(cfg, use_fsdp=False)``
        turns FSDP off again)."""
        if self.parallel == "auto":
            return "zero1" if self.use_zero1 else "fsdp" if self.use_fsdp else "auto"
        return self.parallel

    def validate(self) -> None:
        split_plugins(self.plugins)  # names checked here, imported by resolve_run_config
        choices = {
            "device": DEVICES,
            "dtype": DTYPES,
            "residual_dtype": DTYPES,
            "lr_schedule": LR_SCHEDULES,
            "log_style": LOG_STYLES,
            "nan_policy": NAN_POLICIES,
            "parallel": PARALLEL_MODES,
            "backend": BACKENDS,
            "compile_mode": COMPILE_MODES,
            "compile_scope": COMPILE_SCOPES,
            "sdpa_backend": SDPA_BACKENDS,
        }
        check_device_name(self.device)
        del choices["device"]
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise unknown_choice(key, getattr(self, key), allowed)
        for key in ("out_dir", "data_dir", "dataset", "init_from"):  # '' would mean the working directory
            if not getattr(self, key).strip():
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: expected a non-empty name or path")
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed={self.seed} is invalid: expected an integer in [0, 2**64)")
        positive = (
            "eval_interval",
            "log_interval",
            "eval_iters",
            "gradient_log_interval",
            "batch_size",
            "dist_timeout",
            "keep_checkpoints",
        )
        for key in (*positive, "gradient_accumulation_steps"):
            if not 0 < getattr(self, key) <= MAX_SIZE:  # (10**30 sequences hung the planner, overflowed torch)
                raise ConfigError(
                    f"{key}={getattr(self, key)!r} is invalid: expected a positive integer up to 2**31 - 1"
                )
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "loss_chunk_size", "sample_tokens"):
            if not 0 <= getattr(self, key) <= MAX_SIZE:
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: expected an integer in [0, 2**31 - 1]")
        if self.sample_tokens == 0 and self.sample_at_end:  # 0: an empty sample
            raise ConfigError(
                f"sample_tokens={self.sample_tokens!r} is invalid: expected a positive integer (--sample_at_end=False "
                "draws no sample)"
            )
        for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{key}={value!r} is invalid: expected a finite float >= 0")
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key}={value!r} is invalid: expected a float in [0, 1)")
        if not 0.0 <= self.wsd_decay_frac <= 1.0:
            raise ConfigError(f"wsd_decay_frac={self.wsd_decay_frac!r} is invalid: expected a float in [0, 1]")
        if self.peak_tflops is not None:
            check_peak_tflops(self.peak_tflops)
        if self.use_zero1 and self.use_fsdp:
            raise ConfigError(
                "use_zero1=True and use_fsdp=True exclude each other: FSDP already shards optimizer states"
            )
        for flag, mode in (("use_zero1", "zero1"), ("use_fsdp", "fsdp")):
            if getattr(self, flag) and self.parallel not in ("auto", mode):
                raise ConfigError(f"{flag}=True conflicts with parallel={self.parallel!r}: set one of them")
        if self.parallel_mode == "fsdp" and self.compile and self.compile_mode in CUDA_GRAPH_MODES:
            raise ConfigError(
                f"compile_mode={self.compile_mode!r} captures CUDA graphs, which FSDP2's collectives do not allow: "
                "use compile_mode='default' or 'max-autotune-no-cudagraphs' with parallel='fsdp'"
            )
        if self.dtype != "auto":  # else checked once the run resolves its dtype (residual_stream_cast)
            residual_stream_cast(self.residual_dtype, self.dtype, self.parallel_mode)
        if self.fsdp_cpu_offload and self.parallel_mode != "fsdp":
            raise ConfigError(f"fsdp_cpu_offload=True needs parallel='fsdp', got parallel={self.parallel_mode!r}")
        if self.decay_lr and self.lr_schedule != "constant" and self.min_lr > self.learning_rate:  # min_lr in use
            raise ConfigError(
                f"min_lr={self.min_lr} is larger than learning_rate={self.learning_rate}: the schedule would rise to "
                f"it; pass --min_lr={self.learning_rate / 10:g} (a tenth, as nanoGPT's configs) or --decay_lr=False"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def residual_stream_cast(residual_dtype: str, dtype: str, mode: str) -> bool:
    """Whether the model casts its residual stream to the autocast dtype (``residual_dtype`` against the run's
    resolved ``dtype`` and parallel ``mode``); a combination that cannot be honoured is a one-line error."""
    if residual_dtype == "auto":
        return False
    if residual_dtype == dtype:
        return dtype != "float32" and mode != "fsdp"  # under FSDP2 the stream is in the dtype already
    if residual_dtype == "float32":
        if mode == "fsdp":
            raise ConfigError(
                f"residual_dtype='float32' is not available with parallel='fsdp' and dtype={dtype!r}: FSDP2's "
                "mixed precision runs the whole model in that dtype; use residual_dtype='auto'"
            )
        return False  # autocast's own
    raise ConfigError(
        f"residual_dtype={residual_dtype!r} is invalid with dtype={dtype!r}: expected 'auto', 'float32' or the "
        "run's dtype (the stream is kept in the autocast dtype)"
    )


def check_sdpa_backend(sdpa_backend: str, attention_backend: str, device_type: str) -> None:
    """``sdpa_backend`` against the model's attention backend and the run's device: one line where it would not
    take effect (another attention backend) or cannot (a CUDA kernel elsewhere)."""
    if sdpa_backend == "auto":
        return
    if attention_backend != "sdpa":
        raise ConfigError(
            f"sdpa_backend={sdpa_backend!r} picks scaled_dot_product_attention's kernel, which attention_backend="
            f"{attention_backend!r} does not call: use attention_backend='sdpa' or sdpa_backend='auto'"
        )
    if sdpa_backend in ("efficient", "cudnn") and device_type != "cuda":
        raise ConfigError(
            f"sdpa_backend={sdpa_backend!r} is a CUDA kernel; on {device_type} SDPA has 'flash' and 'math' (or 'auto')"
        )


def check_device_name(device: str) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``: a one-line error for anything else (whether such a
    device exists here is checked when the run starts)."""
    kind, colon, index = device.partition(":")
    if kind not in DEVICES:
        raise unknown_choice("device", device, DEVICES)
    if colon and (kind != "cuda" or not re.fullmatch(r"0|[1-9][0-9]*", index, re.ASCII)):
        raise ConfigError(f"device={device!r} is invalid: expected auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")


# A training key typed on the command line that the other settings make meaningless is refused, as the
# architecture's are (``check_keys_take_effect``): {key: [(a setting that can void it, whether it does)]}.
def _no_decay(t: TrainConfig) -> bool:
    return not t.decay_lr


def _constant(t: TrainConfig) -> bool:
    return t.lr_schedule == "constant"


_VOIDED_BY: dict[str, list[tuple[str, Callable[[TrainConfig], bool]]]] = {
    "lr_schedule": [("decay_lr", _no_decay)],
    "warmup_iters": [("decay_lr", _no_decay)],
    "min_lr": [("decay_lr", _no_decay), ("lr_schedule", _constant)],
    "lr_decay_iters": [("decay_lr", _no_decay), ("lr_schedule", _constant)],
    "wsd_decay_frac": [("decay_lr", _no_decay), ("lr_schedule", lambda t: t.lr_schedule != "wsd")],
    "compile_mode": [("compile", lambda t: not t.compile)],
    "compile_scope": [("compile", lambda t: not t.compile)],
    "sample_tokens": [("sample_at_end", lambda t: not t.sample_at_end)],
    "sample_prompt": [("sample_at_end", lambda t: not t.sample_at_end)],
    "wandb_project": [("wandb_log", lambda t: not t.wandb_log)],
    "wandb_run_name": [("wandb_log", lambda t: not t.wandb_log)],
    "overwrite": [("init_from", lambda t: t.init_from == "resume")],  # a resume continues the files there
}


def _cuda_meant(device: str) -> bool:
    """The run's device is CUDA: named so, or ``auto`` on a machine with a CUDA device."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.split(":")[0] == "cuda"


def check_train_keys_take_effect(train: TrainConfig, typed: Iterable[str]) -> None:
    """A training key the user typed (``--key=value``) that this run would not use is an error: a
    config file may spell out every key, a typed one is meant to change something. An evaluation
    trains nothing, so nothing is checked there."""
    typed = set(typed)
    if "backend" in typed and train.backend == "nccl" and not _cuda_meant(train.device):
        # typed only: nanoGPT's config files all say backend='nccl', which a CPU run (gloo) ignores, as nanoGPT does
        here = "" if train.device != "auto" else " (auto: this machine has no CUDA device)"
        raise ConfigError(
            f"backend='nccl' needs CUDA tensors, but device={train.device!r}{here}: use backend='gloo' (or auto)"
        )
    for flag, mode in (("use_zero1", "zero1"), ("use_fsdp", "fsdp")):
        if flag in typed and not getattr(train, flag) and train.parallel == mode:
            # parallel= decides (use_* only names a mode where parallel is auto): a typed False did nothing
            raise ConfigError(
                f"{flag}=False has no effect with parallel={mode!r}, which runs {mode}: set --parallel (auto, "
                "ddp, ...) to run without it"
            )
    if train.eval_only:
        return
    decays = train.decay_lr and train.lr_schedule != "constant"
    short = train.lr_decay_iters < train.warmup_iters or train.lr_decay_iters == train.warmup_iters > 0
    if decays and typed & {"lr_decay_iters", "warmup_iters"} and short:
        # nanoGPT then warms up to the end and never decays (equal: min_lr right after the warmup, learning_rate
        # never reached; nanoGPT divides by zero there): a shortened run that kept a long warmup
        both = {"lr_decay_iters", "warmup_iters"} <= typed
        other = "warmup_iters" if "lr_decay_iters" in typed else "lr_decay_iters"
        smaller = "equal to" if train.lr_decay_iters == train.warmup_iters else "smaller than"
        raise ConfigError(
            f"lr_decay_iters={train.lr_decay_iters} is {smaller} warmup_iters={train.warmup_iters}: the decay "
            "would end before the warmup does; "
            + ("make warmup_iters < lr_decay_iters" if both else f"set --{other} too")
        )

    for key in sorted(typed & set(_VOIDED_BY)):
        for setting, voids in _VOIDED_BY[key]:
            if voids(train):
                raise ConfigError(
                    f"{key}={getattr(train, key)!r} has no effect with {setting}={getattr(train, setting)!r}: "
                    f"drop --{key}, or change {setting}"
                )


TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
keep_init_signature(TrainConfig)
ALL_KEYS: tuple[str, ...] = TRAIN_FIELDS + ARCH_FIELDS


def text_fields(*classes: type) -> frozenset[str]:
    """The string settings of dataclasses: an override that reads as a number keeps its text there
    (--wandb_run_name=2024, --out_dir=123; a prompt's any literal: overrides.FREE_TEXT_KEYS). Only plain
    ``str`` fields: in a ``str | None`` one, None would be meant."""
    return frozenset(f.name for cls in classes for f in dataclasses.fields(cls) if f.type in ("str", str))


def bool_fields(*classes: type) -> frozenset[str]:
    """The bool settings of dataclasses: a bare ``--eval_only`` gets 'write --eval_only=True'."""
    return frozenset(f.name for cls in classes for f in dataclasses.fields(cls) if f.type in ("bool", bool))


TEXT_KEYS: frozenset[str] = text_fields(TrainConfig, ModelArchitectureConfig)
BOOL_KEYS: frozenset[str] = bool_fields(TrainConfig, ModelArchitectureConfig)


@dataclass
class RunConfig:
    """A resolved run: the training settings and the architecture they train."""

    train: TrainConfig
    arch: ModelArchitectureConfig
    explicit: frozenset[str] = frozenset()  # keys a config file or override set (vs. defaults)
    typed: frozenset[str] = frozenset()  # of those, the ones set on the command line (--key=value)
    overruled: list[str] = dataclasses.field(default_factory=list)  # a config file's, overruled by loaded weights
    # a fine-tune's config-file architecture (and arch_preset), set aside until the weights are loaded
    file_arch: dict[str, Any] = dataclasses.field(default_factory=dict)
    typed_arch: dict[str, Any] = dataclasses.field(default_factory=dict)  # and its typed ones, which must match
    resume_changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)  # {key: (checkpoint's, now)}

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(), "arch": self.arch.to_dict()}


# The config-file and run-resolving functions moved to gptlab.config.files and gptlab.config.resolve (which
# import this module); the names stay importable from here, as docs/training.md and users' scripts have them.
_MOVED = {
    "names_a_file": "files", "load_config_file": "files", "training_defaults": "files",
    "parse_run_args": "resolve", "resolve_run_config": "resolve", "resumed_values": "resolve",
    "resume_dir": "resolve", "split_args": "resolve", "elastic_run_id": "resolve",
    "LAUNCH_KEYS": "resolve", "SAID_LAUNCH_KEYS": "resolve",
}  # fmt: skip


def __dir__() -> list[str]:
    return sorted({*globals(), *_MOVED})


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"gptlab.config.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
