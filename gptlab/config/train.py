"""TrainConfig: nanoGPT's train.py settings as a validated dataclass, and the run config that
joins it to the flat architecture keys (``--n_layer``, ``--normalization``, ...).

Config files are Python files the user names (nanoGPT style); every other value arrives as a
``--key=value`` override parsed with ``ast.literal_eval``.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import importlib.util
import json
import math
import os
import re
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.config.model import (
    ARCH_FIELDS,
    FREE_ARCH_KEYS,
    PRESETS,
    ModelArchitectureConfig,
    check_arch_types,
    check_field_types,
    check_keys_take_effect,
    get_preset_config,
    keep_init_signature,
)
from gptlab.config.overrides import pair_hint, parse_overrides, refuse_legacy_launcher
from gptlab.errors import ConfigError, did_you_mean, unknown_choice, without_suggestion
from gptlab.model.registry import Registry
from gptlab.plugins import (
    anchor_plugins,
    import_plugins,
    importable_from,
    merge_plugins,
    plugins_hint,
    split_plugins,
)

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
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: expected a positive integer")
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "loss_chunk_size"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: expected an integer >= 0")
        if self.sample_tokens < 0 or (self.sample_tokens == 0 and self.sample_at_end):  # 0: an empty sample
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
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ConfigError(f"peak_tflops={self.peak_tflops!r} is invalid: expected a float > 0 or None")
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


def names_a_file(name: str) -> bool:
    """Whether a command's PRESET argument names a config file rather than a preset (presets have no
    dot or slash): ``x.yaml`` then gets the config-file error, not "arch_preset='x.yaml' is not one of"."""
    return name.endswith(".py") or "/" in name or "." in Path(name).name


def _check_config_statements(tree: ast.Module, source: str, path: Path) -> None:
    """A statement that sets nothing where a setting was surely meant is an error, not a no-op: YAML's
    ``n_layer: 12`` is a Python annotation, a JSON object a bare expression."""
    for node in tree.body:
        line = (ast.get_source_segment(source, node) or "").splitlines()[0]
        if isinstance(node, ast.AnnAssign) and node.value is None:
            target = ast.unparse(node.target)
            raise ConfigError(
                f"config file {str(path)!r}, line {node.lineno}: `{line}` sets nothing (an annotation): "
                f"write {target} = {ast.unparse(node.annotation)}"
            )
        text = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if isinstance(node, ast.Expr) and not text and not isinstance(node.value, ast.Call):  # a docstring, a print
            raise ConfigError(
                f"config file {str(path)!r}, line {node.lineno}: `{line}` is an expression that sets nothing: "
                "write key = value"
            )


def _config_source(raw: bytes) -> str:
    """A config file's text: UTF-8 (a byte-order mark dropped), as nanoGPT's exec(open(f).read()) reads it,
    whatever a first-line comment such as `# position encoding: latin` looks like to Python; bytes that are
    not UTF-8 as Python decodes a source file (its coding line, e.g. latin-1)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return importlib.util.decode_source(raw)


class _FileNamespace(dict):
    """A config file's names, as its module-level code reads and writes them (exec's locals): a name the file
    did not set reads the run's value so far (``visible``: the training defaults and earlier files' keys), as
    nanoGPT's configurator runs its files in train.py's globals (``lr_decay_iters = max_iters``). What the file
    sets is written through to ``globals`` (which start as ``visible``) too, so that its own functions see it;
    only what it sets is collected."""

    def __init__(self, globals_: dict[str, Any], visible: dict[str, Any]) -> None:
        super().__init__()
        # a key named as a builtin (compile) keeps the builtin, as a file that calls compile() expects
        self._visible = {k: v for k, v in visible.items() if not hasattr(builtins, k)}
        self._globals, self.read = globals_, set[str]()
        globals_.update(copy.deepcopy(self._visible))  # what the file's functions read of them

    def __missing__(self, key: str) -> Any:
        if key in self._visible:
            self.read.add(key)
            return copy.deepcopy(self._visible[key])  # an earlier file's list stays as that file left it
        raise KeyError(key)  # then exec's globals, then builtins (a NameError names it)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._globals[key] = value

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._globals.pop(key, None)


def training_defaults() -> dict[str, Any]:
    """Every training key's default, as a config file may read it (nanoGPT's train.py globals)."""
    defaults = TrainConfig()
    return {name: getattr(defaults, name) for name in TRAIN_FIELDS}


def load_config_file(
    path: str | Path, keys: Iterable[str] = (), visible: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run a nanoGPT-style Python config file the user named and collect its assignments: training
    and architecture keys, and ``keys`` (another command's own). The file may read what it does not set:
    ``visible`` (the values so far: earlier files' over the defaults), by default the training defaults."""
    known = sorted({*ALL_KEYS, *keys})
    path = Path(path)
    if not path.is_file():
        if "=" in str(path):
            hint = f" (did you mean --{str(path).lstrip('-')}?)"
        elif path.name and path.suffix != ".py" and path.with_name(path.name + ".py").is_file():
            hint = f" (did you mean {str(path) + '.py'!r}?)"
        elif str(path).lstrip("-").replace(".", "", 1).isdigit():
            hint = " (overrides take the form --key=value, with '=')"
        elif not path.exists() and not path.is_absolute() and (Path("config") / path).is_file():
            hint = f" (did you mean {str(Path('config') / path)!r}?)"  # nanoGPT's: config/train_shakespeare_char.py
        elif not path.exists() and path.parent.is_dir():  # a misspelt file name: the nearest in its folder
            hint = did_you_mean(path.name, sorted(p.name for p in path.parent.glob("*.py")))
        elif not path.exists() and path.parent.name == "config":
            hint = (
                f" in {Path.cwd()} (the example config files are the gptlab repository's config/ folder, "
                "not installed with the package: run from a clone's root or give their path)"
            )
        else:
            hint = ""
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {what}{hint}")
    if path.suffix != ".py":
        raise ConfigError(
            f"config file {str(path)!r} is not a .py file: config files are Python, as nanoGPT's "
            "(n_layer = 12); YAML or JSON is not read"
        )
    file_globals: dict[str, Any] = {}
    namespace = _FileNamespace(file_globals, training_defaults() if visible is None else visible)
    before = _registered()
    try:
        source = _config_source(path.read_bytes())
        tree = ast.parse(source, str(path))
        _check_config_statements(tree, source, path)
        with importable_from(path.parent, Path.cwd()):  # `import my_components` beside it, under any launcher
            exec(compile(tree, str(path), "exec"), file_globals, namespace)  # the user's own file, as in nanoGPT
    except ConfigError:
        raise
    except Exception as e:
        # where in the user's file (a SyntaxError names its line itself): the deepest frame in that file
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f", line {lines[-1]}" if lines and not isinstance(e, SyntaxError) else ""
        hint = ""
        if isinstance(e, NameError) and getattr(e, "name", None) in ARCH_FIELDS:
            hint = (
                f" (a config file reads the training defaults and what earlier files set; {e.name} has no value "
                "before the preset is built: set it first)"
            )
        raise ConfigError(f"config file {str(path)!r}{where} failed: {type(e).__name__}: {e}{hint}") from None
    values = {k: v for k, v in namespace.items() if not k.startswith("_") and not callable(v)}
    values = {k: v for k, v in values.items() if not hasattr(v, "__spec__")}  # imported modules
    values = {k: v for k, v in values.items() if not isinstance(v, Registry)}  # imported to register a component
    for key in values:
        if key not in known:
            raise ConfigError(
                f"config file {str(path)!r}: unknown key {key!r}{did_you_mean(key, known)}; a variable of the "
                "file's own (a helper) is named with a leading underscore"
            )
    if isinstance(values.get("plugins"), str):  # found from the file's folder (imported where the run is resolved)
        values["plugins"] = anchor_plugins(values["plugins"], path.parent)
    if _registered() != before and namespace.read:  # imported again as a plugin (resume, sample): alone, there
        raise ConfigError(
            f"config file {str(path)!r} registers components, so it is imported again as a plugin where the run "
            f"is read back (resume, sample), with no other file's keys: it may not read {sorted(namespace.read)} "
            "that it does not set (set them in it, or register in a module of its own named by --plugins)"
        )
    if _registered() != before and isinstance(values.get("plugins", ""), str):
        # the file registers components: it is its own plugin, so the run records it and the hint names it
        values["plugins"] = merge_plugins(values.get("plugins"), str(path.resolve()))
    return values


def _registered() -> dict[str, dict[str, int]]:
    """Every registry's names and the ids of what they name: a config file that changes them registers."""
    from gptlab.model import attention, components  # noqa: F401  (the built-ins first)
    from gptlab.model.registry import ALL_REGISTRIES

    return {reg.kind: {name: id(c) for name, c in reg.items()} for reg in ALL_REGISTRIES}


def resolve_run_config(
    values: dict[str, Any], explicit: Iterable[str] | None = None, typed: Iterable[str] | None = None
) -> RunConfig:
    """The run that flat training and architecture keys describe, as ``parse_run_args`` makes it from a
    command line (the Python way in: a notebook's dict). ``explicit``: the keys the user set (a config
    file, an override); by default all of ``values``. ``typed``: those set on the command line, which
    must take effect (a config file may spell out every key, used or not); by default all of
    ``explicit``. A resume takes every setting not given from its checkpoint, and a fine-tune its
    architecture from the weights, exactly as on the command line."""
    for key in values:  # before a resume reads its checkpoint
        if key not in ALL_KEYS:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, ALL_KEYS)}")
    explicit = frozenset(values if explicit is None else explicit)
    return _run_config(dict(values), set(explicit), set(explicit if typed is None else typed))


def _validated_run_config(values: dict[str, Any], explicit: Iterable[str], typed: Iterable[str]) -> RunConfig:
    """Split flat keys, the values the run will have, into training and architecture settings and
    validate both (``explicit`` and ``typed`` as for ``resolve_run_config``)."""
    for key in values:
        if key not in ALL_KEYS:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, ALL_KEYS)}")
    if isinstance(values.get("plugins"), str):  # recorded as found from here, so the run's hint works anywhere
        # (a file named twice, relative and absolute: once)
        values = {**values, "plugins": merge_plugins(anchor_plugins(values["plugins"], Path.cwd()))}
    explicit = frozenset(explicit)
    init_from = values.get("init_from", TrainConfig.init_from)
    if init_from not in ("scratch", "resume") and "dataset" not in explicit and isinstance(init_from, str):
        # a fine-tune's data, unless told: the dataset its weights' run recorded (a run's checkpoint evaluated
        # with --eval_only=True, say), as a resume takes the checkpoint's
        from gptlab.model.convert import recorded_dataset, weights_record

        recorded = recorded_dataset(weights_record(Path(init_from), strict=True) or {})
        if recorded:
            values = {**values, "dataset": recorded}
    train = TrainConfig(**{k: v for k, v in values.items() if k in TRAIN_FIELDS})
    from gptlab.model.convert import check_init_source

    check_init_source(train.init_from, ("scratch", "resume"))  # a mistyped source before anything it would read
    import_plugins(train.plugins)  # before the architecture names what they register
    typed = frozenset(typed)
    if train.init_from != "resume" and "arch_preset" in typed:  # a resume's preset is checked against its checkpoint
        _check_typed_preset_takes_effect(train.arch_preset, values, explicit - typed)
    arch = get_preset_config(train.arch_preset, **{k: v for k, v in values.items() if k in ARCH_FIELDS})
    arch = check_keys_take_effect(arch, typed)
    check_train_keys_take_effect(train, typed)
    return RunConfig(train=train, arch=arch, explicit=explicit, typed=typed)


def _check_typed_preset_takes_effect(preset: str, values: dict[str, Any], file_keys: Iterable[str]) -> None:
    """A typed ``--arch_preset`` that changes nothing, because a config file sets every choice it makes
    (``config/full_custom.py --arch_preset=llama`` trained the file's mix under llama's name): refused.
    One that still supplies some choice (a file of sizes, or of a few components) applies."""
    choices = PRESETS.get(preset, {})
    if not choices or not set(choices) & set(file_keys):  # nothing a file overrode (typed keys are the user's own)
        return
    arch_values = {k: v for k, v in values.items() if k in ARCH_FIELDS}
    try:
        typed, without = get_preset_config(preset, **arch_values), get_preset_config("custom", **arch_values)
        same = typed.computed() == without.computed()
    except ConfigError:
        return  # an invalid combination: said by the validation that follows
    if same:
        overridden = sorted(k for k in file_keys if k in choices and values[k] != choices[k])
        listed = ", ".join(f"{k}={values[k]!r}" for k in overridden)
        raise ConfigError(
            f"arch_preset={preset!r} would not take effect: the config file sets every choice it makes ({listed}), "
            "and a file's keys win over a preset; type those keys instead, or use a config file that leaves them "
            "to the preset"
        )


# Settings of a launch rather than of the run it continues: a resume takes them from this launch
# (its command line, or the defaults), never from the checkpoint (``resumed_values``).
LAUNCH_KEYS: frozenset[str] = frozenset(
    {
        "out_dir", "init_from", "overwrite", "eval_only", "data_dir", "device", "backend", "parallel", "use_zero1",
        "use_fsdp", "fsdp_cpu_offload", "dist_timeout", "peak_tflops", "wandb_log", "wandb_project",
        "wandb_run_name", "tensorboard_log", "log_style", "sample_at_end", "sample_tokens", "sample_prompt", "plugins",
        "sdpa_backend",  # a kernel of the machine it runs on: a CUDA run's 'cudnn' is no CPU resume's
    }
)  # fmt: skip
# Of those, the ones whose loss a resume says (the checkpoint's value, not given now): the MFU's peak, where its
# data was read from, the run's loggers and samples, FSDP's offload would otherwise change unannounced (the wandb
# run's name is kept by the Trainer itself; a kernel choice, sdpa_backend, is the machine's)
SAID_LAUNCH_KEYS: tuple[str, ...] = (
    "peak_tflops", "data_dir", "wandb_log", "wandb_project", "tensorboard_log", "sample_at_end", "sample_tokens",
    "sample_prompt", "fsdp_cpu_offload",
)  # fmt: skip


def _said_on_resume(key: str, values: dict[str, Any]) -> bool:
    """Whether a launch key's change matters to this launch: a wandb project only where wandb logs, FSDP's
    offload only under FSDP, the sample's length and prompt only where it is drawn."""
    if key == "wandb_project":
        return bool(values.get("wandb_log"))
    if key == "fsdp_cpu_offload":
        return bool(values.get("use_fsdp")) or values.get("parallel") == "fsdp"
    if key in ("sample_tokens", "sample_prompt"):  # the end's sample: only where one is drawn
        return bool(values.get("sample_at_end", TrainConfig.sample_at_end))
    return True


def resume_dir(values: dict[str, Any]) -> str:
    """The out_dir a resume reads its checkpoint from, checked and '~'-expanded as TrainConfig will (read first:
    a config file's ``out_dir = os.environ.get('RUN_DIR')`` is None there)."""
    out_dir = values.get("out_dir", TrainConfig.out_dir)
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise ConfigError(f"out_dir={out_dir!r} is invalid: expected a non-empty path (str)")
    return os.path.expanduser(out_dir)


def resumed_values(
    values: dict[str, Any], explicit: set[str], typed: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]], str | None, list[str]]:
    """``init_from='resume'`` continues the run it resumes: every training setting the user did not set
    now (``explicit``) is the checkpoint's (learning rate, schedule, batch, data, seed, compile, ...),
    not a default, so the LR schedule and the batches go on as before; launch settings (``LAUNCH_KEYS``)
    stay this launch's. The architecture is the checkpoint's: an ``arch_preset`` typed now (``typed``)
    that differs is refused, a config file's is overruled. Returns the values, the settings the user
    changed ``{key: (checkpoint's, now)}``, the checkpoint's path (None when there is none) and the
    config file's architecture settings the checkpoint overruled ('key: file's -> checkpoint's')."""
    from gptlab.checkpoint import latest_checkpoint, read_saved_settings

    path = latest_checkpoint(resume_dir(values))
    if path is None:
        return values, {}, None, []
    saved_train, saved_arch = read_saved_settings(path)
    saved = {k: v for k, v in saved_train.items() if k in TRAIN_FIELDS and k not in LAUNCH_KEYS}
    # the architecture: the checkpoint's, but for keys typed now (checked against it by the Trainer) and the
    # free ones a config file sets (dropout, attention_backend), so a file written for another size validates
    keep = set(typed) | {k for k in FREE_ARCH_KEYS if k in explicit}
    from_file = {k for k in explicit if k not in keep and k in saved_arch and k in ARCH_FIELDS}
    overruled = [f"{k}: {values[k]!r} -> {saved_arch[k]!r}" for k in sorted(from_file) if values[k] != saved_arch[k]]
    values = {**values, **{k: v for k, v in saved_arch.items() if k in ARCH_FIELDS and k not in keep}}
    changed = {k: (v, values[k]) for k, v in saved.items() if k in explicit and values[k] != v}
    changed |= {  # a launch setting of the run's own, this launch's now (its default): said, as a change
        k: (saved_train[k], values.get(k, getattr(TrainConfig, k)))
        for k in SAID_LAUNCH_KEYS
        if k in saved_train
        and k not in explicit
        and saved_train[k] != values.get(k, getattr(TrainConfig, k))
        and _said_on_resume(k, values)
    }
    changed |= {k: (saved_arch[k], values[k]) for k in FREE_ARCH_KEYS if k in keep and values[k] != saved_arch.get(k)}
    if "arch_preset" in changed and "arch_preset" not in typed:  # a config file's: the checkpoint's wins
        overruled.append(f"arch_preset: {values['arch_preset']!r} -> {saved['arch_preset']!r}")
        del changed["arch_preset"]
        values = {**values, "arch_preset": saved["arch_preset"]}
    if "arch_preset" in changed:  # the architecture is the checkpoint's own
        raise ConfigError(
            f"arch_preset={values['arch_preset']!r} conflicts with the checkpoint resumed from {str(path)!r} "
            f"(arch_preset={saved['arch_preset']!r}): a resumed run keeps its architecture"
        )
    merged = {**values, **{k: v for k, v in saved.items() if k not in explicit}}
    return merged, changed, str(path), overruled


def split_args(
    args: list[str], bool_keys: Iterable[str] = BOOL_KEYS, keys: Iterable[str] | None = ALL_KEYS
) -> tuple[list[str], list[str]]:
    """``[CONFIG_FILE ...] [--key=value ...]`` -> (files, overrides), with the one-line errors for
    argparse's ``--key value`` spelling (naming a key of ``keys``) and a file after the overrides."""
    files: list[str] = []
    overrides: list[str] = []
    for arg in args:
        refuse_legacy_launcher(arg)  # before its place is judged: the launcher puts it before the script's own
        if arg.startswith("--"):
            overrides.append(arg)
        elif overrides and "=" not in overrides[-1]:  # argparse's spelling, '--n_layer 4'
            hint = pair_hint(overrides[-1][2:], arg, bool_keys, keys)
            raise ConfigError(f"cannot parse '{overrides[-1]} {arg}': {hint}")
        elif re.match(r"-[A-Za-z_][\w.-]*=", arg):  # '-n_layer=3': one dash short
            raise ConfigError(f"cannot parse argument {arg!r}: write -{arg} (two dashes)")
        elif overrides and "=" in arg and not Path(arg).is_file():  # 'num_samples=1': the dashes left out
            raise ConfigError(f"cannot parse argument {arg!r}: write --{arg}")
        elif overrides:
            raise ConfigError(f"config file {arg!r} must come before the --key=value overrides")
        else:
            files.append(arg)
    return files, overrides


def elastic_run_id() -> str | None:
    """torchrun's id of this job (TORCHELASTIC_RUN_ID), the same for every restarted attempt of it; None
    without one: torchrun sets the literal 'none' for every job launched with --master_addr (or c10d without
    --rdzv_id), which would make any job's restart continue another job's run in the same out_dir."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or None
    return None if run_id == "none" else run_id


def _continue_after_elastic_restart(values: dict[str, Any], explicit: set[str], typed: dict[str, Any]) -> None:
    """``torchrun --max-restarts``: an attempt after the first (TORCHELASTIC_RESTART_COUNT > 0) of the job that
    started the run in out_dir (its config.json records the job's TORCHELASTIC_RUN_ID) continues it from its
    latest checkpoint, as torchtitan's do, whatever init_from the one command line gives; before the first
    checkpoint it starts again in place. (It was refused: out_dir holds a previous run; or with
    --overwrite=True the attempt silently trained from scratch over the checkpoints.)"""
    try:
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    except ValueError:
        return
    if restart < 1 or values.get("init_from", TrainConfig.init_from) != "scratch" or values.get("eval_only"):
        return
    out_dir = Path(os.path.expanduser(str(values.get("out_dir", TrainConfig.out_dir))))
    try:
        started_by = json.loads((out_dir / "config.json").read_text(encoding="utf-8")).get("torchelastic_run_id")
    except (OSError, ValueError, AttributeError):
        return
    if started_by is None or started_by != elastic_run_id():  # another job's run: the usual checks apply
        return
    from gptlab.checkpoint import latest_checkpoint

    if latest_checkpoint(out_dir) is None:
        values["overwrite"] = True  # the failed attempt's log: nothing trained is lost
        return
    for record in (values, typed):  # a resume takes no overwrite (it would be refused as typed)
        record.pop("overwrite", None)
        record["init_from"] = "resume"
    explicit.discard("overwrite")
    explicit.add("init_from")
    if os.environ.get("RANK", "0") == "0":
        print(f"torchrun restart {restart} of this job: continuing the run in {out_dir} from its latest checkpoint")


def _registering_file(path: str | Path, from_file: dict[str, Any]) -> str | None:
    """The entry load_config_file adds to a config file's ``plugins`` when the file registers components
    (it is its own plugin), else None."""
    itself = str(Path(path).resolve())
    plugins = from_file.get("plugins")
    return itself if isinstance(plugins, str) and itself in split_plugins(plugins) else None


def parse_run_args(args: list[str], defaults: dict[str, Any] | None = None) -> RunConfig:
    """``[CONFIG_FILE ...] [--key=value ...]`` -> RunConfig; later values win, as in nanoGPT.
    ``defaults`` (e.g. the quick-start settings) apply under both."""
    if not isinstance(args, (str, bytes)):
        args = list(args)  # a generator, read once: checked here, then parsed
    if isinstance(args, (str, bytes)) or not all(isinstance(arg, str) for arg in args):  # a str iterates by char
        raise ConfigError(
            f"parse_run_args takes a list of arguments as a command line has them, e.g. ['config/x.py', "
            f"'--max_iters=3'], not {type(args).__name__} {str(args)[:60]!r}"
        )
    values = dict(defaults or {})
    explicit: set[str] = set()  # the defaults are not the user's: weights loaded or resumed override them
    files, overrides = split_args(args)
    registering = []  # config files that register components: the run's plugins whatever else names some
    for path in files:
        from_file = load_config_file(path, visible={**training_defaults(), **values})
        values.update(from_file)
        explicit.update(from_file)
        registering.append(_registering_file(path, from_file))
    from_overrides = parse_overrides(overrides, TEXT_KEYS, BOOL_KEYS, ALL_KEYS)
    values.update(from_overrides)
    explicit.update(from_overrides)
    if isinstance(values.get("plugins"), str) and any(registering):  # a later file's or --plugins: added to
        values["plugins"] = merge_plugins(values["plugins"], *registering)
    _continue_after_elastic_restart(values, explicit, from_overrides)
    return _run_config(values, explicit, set(from_overrides))


def _whose(message: str, explicit: set[str], typed: set[str]) -> str:
    """Where the settings a resume's refusal names came from (the command line, a config file named now, the
    checkpoint, or, for a launch setting not given, this launch's default), so a user looks for the value where it
    was set (``--key=value``, a suggested fix, is not one)."""
    named = dict.fromkeys(k for k in re.findall(r"(?<![\w-])([a-z][a-z0-9_]*)=", message) if k in ALL_KEYS)
    source = {k: "the command line's" if k in typed else "the config file's" if k in explicit else
                 "this launch's default" if k in LAUNCH_KEYS else "the checkpoint's" for k in named}  # fmt: skip
    said = ", ".join(f"{k} is {where}" for k, where in source.items())
    rest = "the training settings not given now are the checkpoint's"
    return f"{said}; {rest}" if said else rest


def _run_config(values: dict[str, Any], explicit: set[str], typed: set[str]) -> RunConfig:
    """The run ``values`` describe once a resume has taken its checkpoint's settings and a fine-tune has
    set aside the architecture keys its weights decide (``typed``: the keys set on the command line)."""
    init_from = values.get("init_from", TrainConfig.init_from)
    if init_from not in ("scratch", "resume"):  # a fine-tune: the weights decide the architecture
        # its keys wait for them (compared once they are loaded: a config file's yield, typed ones must match),
        # but for the free keys and block_size, which apply to the weights (dropout, backend, a shorter context)
        aside = {k for k in explicit if k in ARCH_FIELDS and k not in (*FREE_ARCH_KEYS, "block_size")}
        aside |= {"arch_preset"} & (explicit - set(typed))  # a typed one is checked by family
        file_arch = {k: values.pop(k) for k in sorted(aside) if k not in typed}
        typed_arch = check_arch_types({k: values.pop(k) for k in sorted(aside) if k in typed})
        run = _validated_run_config(values, explicit - aside, set(typed) - aside)
        run.file_arch, run.typed_arch, run.typed = file_arch, typed_arch, frozenset(typed)
        return run
    if init_from != "resume":
        return _validated_run_config(values, explicit, typed)
    if not values.get("eval_only"):  # a training already writing there: refused before its checkpoint is read
        from gptlab.fileio import refuse_if_in_use

        refuse_if_in_use(resume_dir(values))
    values, changed, path, overruled = resumed_values(values, explicit, typed)
    if path is None:  # before anything else can fail on the defaults a checkpoint would have replaced
        from gptlab.checkpoint import no_checkpoint_error

        raise no_checkpoint_error(resume_dir(values))
    try:  # validated once, on the values the run will have
        run = _validated_run_config(values, explicit, typed)
    except ConfigError as e:
        message, hint = str(e), ""
        from gptlab.model.registry import ALL_REGISTRIES

        component = getattr(e, "key", None) in {registry.kind for registry in ALL_REGISTRIES}  # not lr_schedule
        saved_choice = hasattr(e, "unsuggested") and component and getattr(e, "key", None) not in explicit
        if saved_choice and not values.get("plugins"):  # a component of the run's own, unregistered
            from gptlab.checkpoint import read_saved_settings

            message = without_suggestion(e)
            hint = plugins_hint(read_saved_settings(path)[0].get("plugins"))
        overruled_keys = {entry.split(":")[0] for entry in overruled}  # a config file's, the checkpoint's instead
        whose = _whose(message, explicit - overruled_keys, set(typed))
        raise ConfigError(f"{message} (resuming {path}: {whose}){hint}") from None
    run.resume_changes, run.overruled = changed, overruled
    return run
