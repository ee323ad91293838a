"""The project's error types: user mistakes raise these and the CLI prints them as one line."""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


class CheckpointError(ValueError):
    """A file or directory is not a checkpoint gptlab can load; the message says what was expected."""


class DataError(ValueError):
    """A dataset is missing, unreadable or too small; the message says how to fix it."""


class GptlabError(Exception):
    """Base for errors whose message alone is the whole story for a user (printed as one line)."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name where it has none): what a one-line
    error quotes of a library's multi-line one."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, DataError, GptlabError)
# A path the user named that cannot be written or read as asked (a file where a folder is needed, ...):
# the commands say so in one line, as for their own errors.
PATH_ERRORS: tuple[type[BaseException], ...] = (
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


# Other projects' names for nanoGPT's keys (HF transformers, litgpt, torchtitan, argparse habits): a
# miss suggests ours even where the spelling is not close.
KEY_ALIASES: dict[str, str] = {
    "lr": "learning_rate",
    "grad_accum": "gradient_accumulation_steps",
    "grad_accum_steps": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps",
    "micro_batch_size": "batch_size",
    "n_layers": "n_layer",
    "num_layers": "n_layer",
    "num_hidden_layers": "n_layer",
    "n_heads": "n_head",
    "num_heads": "n_head",
    "num_attention_heads": "n_head",
    "num_key_value_heads": "n_kv_head",
    "n_kv_heads": "n_kv_head",
    "d_model": "n_embd",
    "hidden_size": "n_embd",
    "dim": "n_embd",
    "intermediate_size": "d_ff",
    "tie_word_embeddings": "weight_tying",  # HF's config name
    "tie_weights": "weight_tying",
    "tie_embeddings": "weight_tying",
    "seq_len": "block_size",
    "max_seq_len": "block_size",
    "context_length": "block_size",
    "n_positions": "block_size",  # HF GPT-2's
    "n_ctx": "block_size",
    "max_position_embeddings": "block_size",  # HF LLaMA's
    "n_inner": "d_ff",
    "ffn_dim": "d_ff",
    "layer_norm_epsilon": "norm_eps",
    "layer_norm_eps": "norm_eps",
    "rms_norm_eps": "norm_eps",
    "activation_function": "activation",
    "hidden_act": "activation",
    "resid_pdrop": "dropout",
    "embd_pdrop": "dropout",
    "attn_pdrop": "dropout",
    "attention_dropout": "dropout",
    "min_learning_rate": "min_lr",
    "lr_min": "min_lr",
    "max_steps": "max_iters",
    "warmup_steps": "warmup_iters",
    "max_grad_norm": "grad_clip",
    "clip_grad_norm": "grad_clip",
    # torchtitan's TOML sections, written as --section.key
    "training.steps": "max_iters",
    "training.local_batch_size": "batch_size",
    "training.batch_size": "batch_size",
    "training.seq_len": "block_size",
    "training.max_norm": "grad_clip",
    "training.seed": "seed",
    "optimizer.lr": "learning_rate",
    "optimizer.weight_decay": "weight_decay",
    "lr_scheduler.warmup_steps": "warmup_iters",
    "job.dump_folder": "out_dir",
    "checkpoint.folder": "out_dir",
    "model.flavor": "arch_preset",
    # sampling (litgpt generate, HF generate)
    "prompt": "start",
    "temp": "temperature",
    "max_tokens": "max_new_tokens",
    "num_return_sequences": "num_samples",
}
# Other tools' names for our values: a miss suggests ours (a GPU user's 'gpu' would otherwise be 'cpu').
VALUE_ALIASES: dict[str, str] = {
    "gpu": "cuda",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "float": "float32",
    "float64": "float32",  # training's widest dtype (difflib's nearest was float16)
    "double": "float32",
    "swish": "silu",  # Hugging Face's name for it
    "layer_norm": "layernorm",
    "rms_norm": "rmsnorm",
    # GPT-2's sizes by their common names (difflib's nearest to 'gpt2-small' was the 1.5B 'gpt2-xl')
    # (and OpenAI's first release's: 117M, 345M, 762M, 1542M), looked up without case or separators
    "gpt2-small": "gpt2",
    "gpt2-124m": "gpt2",
    "gpt2-117m": "gpt2",
    "gpt2-355m": "gpt2-medium",
    "gpt2-350m": "gpt2-medium",
    "gpt2-345m": "gpt2-medium",
    "gpt2-774m": "gpt2-large",
    "gpt2-762m": "gpt2-large",
    "gpt2-1.5b": "gpt2-xl",
    "gpt2-1558m": "gpt2-xl",
    "gpt2-1542m": "gpt2-xl",
}


# another tool's value that is gptlab's under two keys: said whole
VALUE_HINTS: dict[tuple[str, str], str] = {
    ("gelu_new", "gelu"): "Hugging Face's tanh GELU is activation='gelu' with gelu_approximate='tanh'",
    ("gelu_pytorch_tanh", "gelu"): "Hugging Face's tanh GELU is activation='gelu' with gelu_approximate='tanh'",
}


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    choices = list(choices)
    hint = next((h for (v, c), h in VALUE_HINTS.items() if value == v and c in choices), None)
    if hint:
        return f" ({hint})"
    near = closest(value, choices)
    return f" (did you mean {near!r}?)" if near is not None else ""


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice ``value`` most likely means (another tool's name for it, its case, a near spelling); None."""
    if not isinstance(value, str):
        return None
    choices = list(choices)
    alias = KEY_ALIASES.get(value) or _FOLDED_VALUE_ALIASES.get(_folded(value))
    if alias in choices:
        return alias
    folded = {_folded(c): c for c in choices}  # RMSNorm, SDPA, GPT-2: the case or a separator alone is wrong
    if _folded(value) in folded:
        return folded[_folded(value)]
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _folded(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


_FOLDED_VALUE_ALIASES: dict[str, str] = {_folded(k): v for k, v in VALUE_ALIASES.items()}  # gpt2_small, GPT2-Small


def unknown_choice(key: str, value: object, choices: Iterable[str]) -> ConfigError:
    """Build the one-line error for a value that is not one of the allowed names."""
    names = sorted(choices)
    allowed = ", ".join(repr(n) for n in names)
    error = ConfigError(f"{key}={value!r} is not one of {allowed}{did_you_mean(value, names)}")
    error.key = key  # type: ignore[attr-defined]
    error.unsuggested = f"{key}={value!r} is not one of {allowed}"  # type: ignore[attr-defined]
    return error


def without_suggestion(error: Exception) -> str:
    """``error``'s message without its did-you-mean: for a saved run's component, which the user did not
    mistype (a plugin not imported), a near built-in name would point the wrong way."""
    return getattr(error, "unsuggested", str(error))


def path_argument(text: str) -> str:
    """An argparse ``type`` for a path option: '' would silently mean the working directory."""
    if not text.strip():
        import argparse

        raise argparse.ArgumentTypeError("expected a non-empty path")
    return os.path.expanduser(text)  # `--out=~/x`: no shell expands '~' after '='; training's keys are read alike


def bool_argument(text: str) -> bool:
    """An argparse ``type`` for an option that is a setting too: ``--activation_checkpointing=True`` as training
    spells it (with ``nargs='?', const=True`` the bare flag still works)."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    import argparse

    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def refuse_extra(command: str, extra: list[str], options: Iterable[str]) -> None:
    """A command's arguments it does not take: one line, with the nearest of its ``options`` (the
    namespace's names) for a misspelt one."""
    if not extra:
        return
    name = extra[0].split("=", 1)[0].lstrip("-")
    known = [o for o in options if o not in ("func", "command")]
    hint = did_you_mean(name.lower(), known) if extra[0].startswith("-") else ""
    raise ConfigError(f"'gptlab {command}' does not take {' '.join(extra)}{hint} (see gptlab {command} -h)")


def storage_note(error: OSError, folder: str | os.PathLike[str]) -> str:
    """What a refused write's one line adds: the file-size limit for EFBIG (free space is beside the point
    there, as for a permission or a read-only mount: ''), else the free space on ``folder``'s disk; '' where that
    cannot be read."""
    import errno
    import shutil

    from gptlab.units import format_si

    if error.errno == errno.EFBIG:
        return " (a file-size limit: the process's, `ulimit -f`, or the filesystem's, FAT32's 4 GiB)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # a permission or a read-only mount: not space
        return ""
    try:
        return f" ({format_si(shutil.disk_usage(folder).free, 'B')} free on its disk)"
    except (OSError, ValueError):
        return ""


def storage_refused(error: BaseException) -> GptlabError | None:
    """A write the storage refused (full, over quota, read-only, a file-size limit) anywhere gptlab writes, as
    one line naming the file and the free space; the checkpoint and the log say so themselves. None for other
    errors."""
    import errno
    from pathlib import Path

    refusals = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if not isinstance(error, OSError) or error.errno not in refusals:
        return None
    where = f"cannot write {error.filename}: " if error.filename else "a write failed: "
    free = ""
    if error.filename:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            free = storage_note(error, next(p for p in Path(os.fsdecode(error.filename)).parents if p.is_dir()))
    return GptlabError(f"{where}{error.strerror or error}{free}")


def compiler_missing(error: BaseException) -> GptlabError | None:
    """torch.compile without a working C++ compiler (Windows without MSVC's cl.exe, a broken $CXX) as one
    line with the way out; None for other errors (a compiler bug keeps its traceback for a PyTorch report)."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 16:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not any("InvalidCxxCompiler" in type(x).__name__ or "InvalidCxxCompiler" in str(x) for x in chain):
        return None
    raised = [first_line(x) for x in chain if type(x).__name__ == "InvalidCxxCompiler"]  # inductor's own
    quoted = (line for x in chain for line in str(x).splitlines() if "InvalidCxxCompiler" in line)  # dynamo's
    first = next(iter(raised), None) or next(quoted, "InvalidCxxCompiler")
    return GptlabError(
        f"torch.compile found no working C++ compiler ({first.strip()[:200]}): run without it, --compile=False, "
        "or install one (on Windows, Visual Studio Build Tools, run from a Developer Command Prompt; "
        "`gptlab doctor` checks)"
    )


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure: Python's, CUDA's (torch.OutOfMemoryError is a RuntimeError) or the CPU
    allocator's, whose RuntimeError says "can't allocate memory" (on Windows "not enough memory")."""
    text = str(error).lower()
    signs = ("can't allocate memory", "out of memory", "not enough memory")
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and any(s in text for s in signs))


def print_error_line(line: str) -> None:
    """One line to stderr in one write: under torchrun every rank's stderr is the same pipe, and print()'s
    separate writes of the text and its newline ran two ranks' lines together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
