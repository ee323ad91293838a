"""Reading checkpoints: ``weights_only`` loads with their CRCs and records checked (a damaged, truncated or
code-running file is one line, never a traceback nor code run), DCP directories read whole or resharded into a
running job. Which checkpoint is a run's latest is ``layout.latest_checkpoint``."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.checkpoint.integrity import CRC_KEY, check_shards, recorded_checksums
from gptlab.checkpoint.layout import (
    CHECKPOINT_NAME,
    DCP_META,
    damaged_dcp,
    hf_folder_hint,
    is_dcp_dir,
    listed_runs,
    runs_inside,
    weights_path,
)
from gptlab.checkpoint.save import FORMAT, clean_state_dict, first_dcp_failure
from gptlab.errors import CheckpointError, first_line


def load_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint's ``meta.pt`` (everything but the tensors), with ``dcp_path`` added. Every DCP load
    comes through here, so its ``.metadata`` is checked here too (``check_dcp_metadata``)."""
    path = Path(path)
    meta = torch_load_checked(path / DCP_META)
    check_dcp_metadata(path)
    check_sizes_fit_weights(meta.get("arch"), _dcp_model_shapes(path), path)
    meta["dcp_path"] = str(path)
    return meta


def _dcp_model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The model tensors' names and full shapes, as a DCP checkpoint's ``.metadata`` lists them (checked first)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        listed = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} is not a readable gptlab DCP checkpoint ({first_line(e)})") from None
    return {k[len("model.") :]: tuple(getattr(v, "size", ())) for k, v in listed.items() if k.startswith("model.")}


# What a DCP ``.metadata`` pickle may name: DCP's own metadata types, torch.Size, dtypes, layouts, paths.
_DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)


_DCP_METADATA_NAMES = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a table lookup by name
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        (module, name)
        for module in ("pathlib", "pathlib._local")  # pathlib._local: Python 3.13's pickles
        for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    ),
    ("collections", "OrderedDict"),
}


def check_dcp_metadata(path: str | Path) -> None:
    """``torch.distributed.checkpoint`` reads a checkpoint's ``.metadata`` with plain ``pickle.load``: a
    crafted one runs code as it is read (a downloaded FSDP checkpoint). Read it first with an unpickler
    that builds only DCP's metadata types and refuses any other global, as weights_only does for
    ``torch.load``."""
    import io
    import pickle

    def allowed(module: str, name: str) -> bool:
        if (module, name) in _DCP_METADATA_NAMES:
            return True
        if module == "torch":  # dtypes (torch.float32 pickles as the global torch.float32)
            return isinstance(getattr(torch, name, None), torch.dtype)
        if module in _DCP_METADATA_MODULES:
            import importlib

            obj = getattr(importlib.import_module(module), name, None)
            return isinstance(obj, type) and obj.__module__ == module  # its own types, not what it imports
        return False

    class MetadataOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if not allowed(module, name):
                raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a checkpoint-metadata type")
            return super().find_class(module, name)

    for file in sorted(set(Path(path).glob("*.metadata")) | set(Path(path).glob(".metadata"))):
        try:
            MetadataOnly(io.BytesIO(file.read_bytes())).load()
        except Exception as e:
            reason = first_line(e)
            raise CheckpointError(
                f"{str(file)!r} is not a DCP checkpoint's metadata ({reason}); gptlab does not read it, as "
                "it could run code when unpickled; the file was left untouched"
            ) from None


def read_saved_settings(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training settings and the architecture a checkpoint was written with; a record without its training
    settings is damaged (every gptlab checkpoint has them): resumed on the defaults, it went on as another run."""
    meta = read_checkpoint_record(path)
    if not _saved_train(meta):
        raise CheckpointError(
            f"{str(path)!r} is a damaged gptlab checkpoint: it has no config['train'] record (the settings a "
            "resume goes on with); the file was left untouched"
        )
    return _saved_train(meta), dict(meta.get("arch") or {})


def read_checkpoint_record(path: str | Path) -> dict[str, Any]:
    """A checkpoint's record without its weights being read: a DCP directory's meta, a ckpt.pt memory-mapped."""
    path = Path(path)
    return load_checkpoint_meta(path) if is_dcp_dir(path) else torch_load_checked(path)


def _saved_train(meta: dict[str, Any]) -> dict[str, Any]:
    return dict((meta.get("config") or {}).get("train") or {})


def _optimizer_settings(meta: dict[str, Any]) -> tuple[float, float, tuple[float, float]]:
    train = _saved_train(meta)
    return (
        float(train.get("weight_decay", 0.1)),
        float(train.get("learning_rate", 6e-4)),
        (float(train.get("beta1", 0.9)), float(train.get("beta2", 0.95))),
    )


def load_dcp_full(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint directory as the single-file dict: full model and optimizer state
    dicts (plain AdamW layout), read by this process alone (no process group needed)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from gptlab.config.model import ModelArchitectureConfig
    from gptlab.model.gpt import ConfigurableGPT

    path = Path(path)
    meta = load_checkpoint_meta(path)
    from gptlab.plugins import saved_plugins

    model = ConfigurableGPT(ModelArchitectureConfig.from_dict(meta["arch"], saved_plugins(meta)))
    weight_decay, lr, betas = _optimizer_settings(meta)
    optimizer = model.configure_optimizers(weight_decay, lr, betas, "cpu")
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the layout to read into (AdamW states created)
    state = {"model": model_sd, "optimizer": optim_sd}
    load_dcp(state, path, no_dist=True)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    meta.pop("dcp_path")
    meta.pop(CRC_KEY, None)  # the shards' own record, not the single file's an export writes
    return {**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def load_dcp_model(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint directory as the single-file dict without its optimizer states, for what needs the
    weights only (sampling, conversion): read straight into plain tensors, no model or optimizer built (the
    full load holds the model twice, gradients and the AdamW states: 2.7x the memory for sampling)."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    meta = load_checkpoint_meta(path)  # checks the metadata and its sizes against the arch record first
    with dcp_errors(path):  # gone since (a live run's next save pruned it)
        listed = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    model = {
        k[len("model.") :]: torch.empty(tuple(v.size), dtype=v.properties.dtype)
        for k, v in listed.items()
        if k.startswith("model.") and hasattr(v, "size")
    }
    tied = bool((meta.get("arch") or {}).get("weight_tying")) and "wte.weight" in model
    if tied:  # the embedding is written under both names: read once
        model.pop("lm_head.weight", None)
    load_dcp({"model": model}, path, no_dist=True)
    if tied:
        model["lm_head.weight"] = model["wte.weight"]
    meta.pop("dcp_path")
    meta.pop(CRC_KEY, None)  # the shards' own record, not the single file's an export writes
    return {**meta, "model": model}


def load_dcp(state: dict[str, Any], path: str | Path, *, no_dist: bool = False) -> None:
    """``dcp.load`` into ``state`` with the checkpoint's non-tensor entries (an optimizer's lr, betas, ...)
    read as ``weights_only`` reads: DCP's own planner unpickles them with ``weights_only=False``, so a
    crafted shard of a downloaded FSDP checkpoint would run code as it loads (``ckpt.pt`` never can)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class PlainDataPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            import pickle

            try:
                torch.load(value, weights_only=True)  # refuses any global that is not plain data or a tensor
            except pickle.UnpicklingError:
                fqn = read_item.dest_index.fqn
                raise pickle.UnpicklingError(
                    f"its entry {fqn!r} is not plain data: loading it could run code"
                ) from None
            value.seek(0)  # what passed that check, read as DCP reads it
            super().load_bytes(read_item, value)

    # the shards' bytes as written (a flipped byte loaded as a weight; ckpt.pt's zip CRCs are checked likewise)
    check_shards(Path(path), recorded_checksums(Path(path)), collective=not no_dist)
    with dcp_errors(path), warnings.catch_warnings(), _without_dcp_fallback_tracebacks():
        if no_dist:  # read by this process alone, as asked: DCP warns it is "assuming" so
            warnings.filterwarnings("ignore", message=".*single process.*", category=UserWarning)
        dcp.load(state, checkpoint_id=str(path), planner=PlainDataPlanner(), no_dist=no_dist)


@contextlib.contextmanager
def _without_dcp_fallback_tracebacks() -> Iterator[None]:
    """DCP logs "Global (and Rank local) metadata is not found" with tracebacks on the root logger (printed to
    stderr when no logging is set up) before it fails on a missing ``.metadata``: dcp_errors says so in one line."""
    import logging

    def drop(record: logging.LogRecord) -> bool:
        return "metadata is not found" not in record.getMessage() or "checkpoint" not in record.pathname

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def dcp_errors(path: str | Path) -> Iterator[None]:
    """A DCP load that fails (a missing or damaged shard) as one CheckpointError line. DCP raises
    ``CheckpointException``, a ``BaseException``, with every rank's traceback inside."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except (Exception, CheckpointException) as e:
        e = first_dcp_failure(e)
        reason = first_line(e)
        raise CheckpointError(
            f"{str(path)!r} is not a readable gptlab DCP checkpoint ({type(e).__name__}: {reason[:300]})"
        ) from None


@contextlib.contextmanager
def state_errors(path: str | Path, what: str, note: str = "") -> Iterator[None]:
    """Loading a checkpoint's ``what`` (weights, optimizer state) that do not fit the architecture it
    records (edited, or written by another program) as one CheckpointError line, not a traceback; ``note``
    ends it (a plugin whose code changed since)."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # past torch's heading
        raise CheckpointError(
            f"{str(path)!r}: its {what} do not fit the architecture it records ({reason[:300]}); "
            f"the file was left untouched{note}"
        ) from None


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict:
    """A plain (index-keyed) optimizer state dict re-keyed by parameter name, for
    ``set_optimizer_state_dict``; ``optimizer`` holds ``model``'s parameters in the same order
    as the optimizer that wrote ``state``."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    out_state = {order[int(i)]: v for i, v in state["state"].items()}
    groups = [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": out_state, "param_groups": groups}


# OSErrors that say the file could not be opened, whatever its bytes: never reported as a corrupt checkpoint
FILE_SYSTEM_REFUSALS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def check_zip_crc(path: Path) -> None:
    """torch.load does not check the CRC-32 that torch.save records for every tensor: flipped bytes (a bad
    disk, a broken copy) would load as weights and train on. Reading the file once costs about a second
    per GB, when weights are loaded (not for a look at a checkpoint's settings)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FILE_SYSTEM_REFUSALS as e:  # the file system's answer (mode 600, another owner), not the bytes'
        raise CheckpointError(f"{str(path)!r} could not be read ({first_line(e)})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if foreign_file(path):  # a text file, say: no checkpoint at all, not a damaged one
            raise not_a_checkpoint(path) from None
        reason = first_line(e)
        raise CheckpointError(
            f"{str(path)!r} is corrupt or truncated (not a readable torch.save archive: {reason}); "
            "the file was left untouched"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{str(path)!r} is corrupt: its record {bad!r} fails its CRC-32 check (the bytes changed after "
            "they were written); the file was left untouched"
        )


def refused_as_unsafe(error: BaseException, path: Path) -> bool:
    """``torch.load(weights_only=True)`` refused the file: its pickle would build objects or call code. Only a
    torch.save archive or a pickle (its PROTO opcode first) can be that: the same refusal of a JSON file, whose
    '{' its unpickler reads as an opcode, means the file is no checkpoint at all."""
    return "weights only load failed" in str(error).lower() and pickled(path)


def _first_bytes(path: Path) -> bytes | None:
    """The file's first four bytes, which tell a zip archive (torch.save) and a pickle from anything else; None
    when the file cannot be read (its own error says why)."""
    try:
        with open(path, "rb") as file:
            return file.read(4)
    except OSError:
        return None


def cut_short(path: Path) -> bool:
    """``path`` starts as a zip archive but has no central directory: a torch.save file cut short (a partial
    download or copy), whose torch.load error is an errno or a zip reader's complaint."""
    return _first_bytes(path) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def pickled(path: Path) -> bool:
    """``path`` starts as a torch.save archive (a zip) or a pickle (legacy torch.save, nanoGPT's meta.pkl) does;
    any other file torch.load fails on is no checkpoint at all (its complaint would be about a byte)."""
    head = _first_bytes(path)  # a zip's local header first: a truncated archive (a partial copy) has no directory
    if head is None:
        return True  # unreadable: what the file is, its own error says
    return head[:1] == b"\x80" or head == b"PK\x03\x04" or zipfile.is_zipfile(path)


def foreign_file(path: Path) -> bool:
    """A file whose first bytes are some other file's (text, say), not a torch.save archive's or a pickle's: no
    checkpoint at all. An empty or zero-filled start is a checkpoint's damage (a copy killed at once, blocks a
    crash left unwritten), not that."""
    head = _first_bytes(path)
    return head is not None and head.strip(b"\0") != b"" and not pickled(path)


def not_a_checkpoint(path: Path) -> CheckpointError:
    """A file that is neither a torch.save archive nor a pickle (``foreign_file``): named as no checkpoint, not
    as a corrupt or truncated one."""
    return CheckpointError(f"{str(path)!r} is not a checkpoint (not a torch.save file); the file was left untouched")


def unsafe_checkpoint_error(path: Path) -> CheckpointError:
    """One line for a checkpoint weights_only refused (torch's own text advises weights_only=False: not here)."""
    return CheckpointError(
        f"{str(path)!r} holds objects beyond tensors and plain data, which gptlab does not load "
        "(torch.load(weights_only=True) refused it); the file was left untouched"
    )


def torch_load_checked(path: Path) -> dict[str, Any]:
    """``torch.load`` memory-mapped (copy-on-write): the tensors are read as they are used, and the ranks
    of a node resuming from one ``ckpt.pt`` share the page cache instead of holding a copy each."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=os.name == "posix")  # a mapped file
        # stays deletable there, so keep_checkpoints can remove the checkpoint a run resumed from
    except MemoryError:
        raise  # not the file's fault
    except FILE_SYSTEM_REFUSALS as e:  # the file system's answer, not the bytes' (a truncated archive can raise
        # another OSError: EINVAL from the zip reader)
        raise CheckpointError(f"{str(path)!r} could not be read ({first_line(e)})") from None
    except Exception as e:
        # the memory-mapped load's complaint about anything but a zip archive would send the user re-saving
        reason = first_line(e) if zipfile.is_zipfile(path) else "not a torch.save archive"
        if refused_as_unsafe(e, path):  # a pickle that would build objects or call code
            raise unsafe_checkpoint_error(path) from None
        if foreign_file(path):  # a text file, say: no checkpoint at all, not a damaged one
            raise not_a_checkpoint(path) from None
        raise CheckpointError(
            f"{str(path)!r} is corrupt or truncated ({reason}); the file was left untouched"
        ) from None
    if isinstance(ckpt, dict) and "model_args" in ckpt and ckpt.get("format") != FORMAT:
        from gptlab.model.nanogpt import nanogpt_training_checkpoint  # (it imports this module)

        return nanogpt_training_checkpoint(ckpt, str(path))  # resumed, sampled and exported as gptlab's own
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a gptlab training checkpoint (no format='{FORMAT}' record)")
    problem = record_problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: {problem}; the file was left untouched")
    return ckpt


_MINIMUM = {"version": 0, "world_size": 1, "iter_num": 0, "tokens_seen": 0}  # the counts' smallest value


# What each field of a checkpoint's record is (``checkpoint_meta`` in the training loop writes them); a field
# may be absent (older checkpoints), but one that is there has its type: a damaged or hand-edited record
# (weights_only loads any plain data) was a traceback wherever the field was first used.
_RECORD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "version": ((int,), "an integer"),
    "parallel": ((str,), "a string"),
    "world_size": ((int,), "an integer"),
    "scaler": ((dict, type(None)), "a mapping or None"),
    "arch": ((dict,), "a mapping"),
    "config": ((dict,), "a mapping"),
    "tokenizer": ((dict, type(None)), "a mapping or None"),
    "dataset": ((str, type(None)), "a string or None"),
    "iter_num": ((int,), "an integer"),
    "tokens_seen": ((int,), "an integer"),
    "best_val_loss": ((int, float), "a number"),
    "rng": ((dict, type(None)), "a mapping or None"),
    "gradient_history": ((dict,), "a mapping"),
    "data": ((dict, type(None)), "a mapping or None"),
    "versions": ((dict, type(None)), "a mapping or None"),
    "weights_origin": ((str, type(None)), "a string or None"),
    "plugin_digests": ((dict, type(None)), "a mapping or None"),
    "model": ((dict,), "a mapping"),
    "optimizer": ((dict,), "a mapping"),
}


_NESTED_TYPES: dict[tuple[str, str], tuple[tuple[type, ...], str]] = {
    ("config", "train"): ((dict,), "a mapping"),
    ("config", "arch"): ((dict,), "a mapping"),
    ("rng", "torch"): ((torch.Tensor,), "a tensor"),
    ("rng", "cuda"): ((torch.Tensor,), "a tensor"),
    ("gradient_history", "history"): ((list,), "a list"),
    ("optimizer", "state"): ((dict,), "a mapping"),
    ("optimizer", "param_groups"): ((list,), "a list"),
}


def _described(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def record_problem(ckpt: Mapping[str, Any]) -> str | None:
    """What is wrong with the types of a checkpoint record's fields (None when nothing): one line naming the
    field, its value and what it should be."""
    for key, (types, wanted) in _RECORD_TYPES.items():
        if key not in ckpt:
            continue
        value = ckpt[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"its {key} is {_described(value)}, not {wanted}"
        if key in _MINIMUM and value < _MINIMUM[key]:
            return f"its {key} is {value!r}, not {'a positive' if _MINIMUM[key] else 'a non-negative'} integer"
    for (key, inner), (types, wanted) in _NESTED_TYPES.items():
        outer = ckpt.get(key)
        if isinstance(outer, dict) and inner in outer and not isinstance(outer[inner], types):
            return f"its {key}[{inner!r}] is {_described(outer[inner])}, not {wanted}"
    if any(not isinstance(v, torch.Tensor) for v in (ckpt.get("model") or {}).values()):
        return "its model state holds values that are not tensors"
    history = (ckpt.get("gradient_history") or {}).get("history", [])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in history):
        return "its gradient_history['history'] holds values that are not numbers"
    return None


READ_ATTEMPTS = 3


def load_checkpoint(path: str | Path, *, optimizer: bool = True) -> dict[str, Any]:
    """Load a gptlab checkpoint with ``weights_only=True``: a ``ckpt.pt``, a DCP directory, or a
    run directory (its latest checkpoint); one-line CheckpointError otherwise. ``optimizer=False``: the
    weights are all the caller uses (a DCP checkpoint's optimizer states are then not read; a ckpt.pt's,
    memory-mapped, never are until used).

    A run directory that a live run saves into: its next save can prune the sharded checkpoint being
    read (keep_checkpoints; a ``ckpt.pt`` is replaced atomically and reads whole): the newer one is read."""
    for _ in range(READ_ATTEMPTS):
        found = weights_path(path)
        try:
            return _load_found(found, optimizer)
        except (CheckpointError, OSError):
            named = Path(path).resolve() == found  # the checkpoint itself, not a run directory's latest
            if named or (found.exists() and weights_path(path) == found):  # damaged, not replaced: as it is
                raise
    raise CheckpointError(
        f"the latest checkpoint of {str(path)!r} was replaced {READ_ATTEMPTS} times while it was read (the "
        "training writing there saves faster than it is read): load a ckpt-ITER.dcp by its name, or try again"
    )


def _load_found(path: Path, optimizer: bool) -> dict[str, Any]:
    if is_dcp_dir(path):
        return load_dcp_full(path) if optimizer else load_dcp_model(path)
    if (damage := damaged_dcp(path)) is not None:
        raise damage
    runs: list[str] = []
    hf_hint = None
    if path.is_dir():  # a run directory without a checkpoint: the error names the file it expected
        runs, hf_hint = runs_inside(path), hf_folder_hint(path)
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        inside = f"the run directories inside it hold one: {listed_runs(runs)}" if runs else hf_hint
        expected = f"expected the {CHECKPOINT_NAME} a training run writes in its out_dir"
        raise CheckpointError(f"no checkpoint at {str(path)!r}: {inside or expected}")
    check_zip_crc(path)  # the weights are about to be used: a look at the settings (read_saved_settings) skips it
    ckpt = torch_load_checked(path)
    missing = [key for key in ("model", "arch", "iter_num") if key not in ckpt]
    if missing:
        raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: it has no {', '.join(missing)}")
    if isinstance(ckpt["model"], dict):  # its keys as the loaders read them (a compiled or DDP model's prefixes off)
        shapes = {k: tuple(v.shape) for k, v in clean_state_dict(ckpt["model"]).items() if isinstance(v, torch.Tensor)}
        check_sizes_fit_weights(ckpt["arch"], shapes, path)
    return ckpt


def check_sizes_fit_weights(arch: Any, shapes: dict[str, tuple[int, ...]], path: str | Path) -> None:
    """The sizes a checkpoint's ``arch`` record names, against the weights it holds, before anything is planned
    or built from them: a hand-edited (or crafted) record of 10**7 layers filled the memory of the start-up
    memory plan, and of the model built to load a sharded one, before the weights were compared."""
    if not isinstance(arch, dict):
        raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: its arch record is not a mapping")
    expected = (arch.get("vocab_size"), arch.get("n_embd"))
    # a record without a size, or weights without an embedding, fail where the model is built
    embedding = expected if "wte.weight" in shapes and None not in expected else None
    disagreement = weights_disagree(arch.get("n_layer"), embedding, shapes)
    if disagreement == "layers":
        raise CheckpointError(
            f"{str(path)!r} is a damaged gptlab checkpoint: its arch record says n_layer={arch['n_layer']!r}, "
            f"its weights hold {layer_count(shapes)} layers"
        )
    if disagreement == "embedding":
        raise CheckpointError(
            f"{str(path)!r} is a damaged gptlab checkpoint: its arch record says (vocab_size, n_embd)={expected}, "
            f"its token embedding has shape {shapes['wte.weight']}"
        )


def _layer_indices(shapes: Mapping[str, Any]) -> set[str]:
    return {k.split(".")[1] for k in shapes if k.startswith("blocks.")}


def layer_count(shapes: Mapping[str, Any]) -> int:
    """The blocks a state dict (or its names to shapes) holds."""
    return len(_layer_indices(shapes))


def weights_disagree(n_layer: int | None, embedding: tuple[int, int] | None, shapes: Mapping[str, Any]) -> str | None:
    """Which size a record (a checkpoint's arch, a config.json) names that its weights (``shapes``: state-dict
    names to shapes) do not bear out: 'layers' (blocks.0 .. blocks.N-1), 'embedding' (wte.weight's shape), or
    None; a size given as None is not compared. Checked before anything is planned or built from the record."""
    layers = _layer_indices(shapes)
    if n_layer is not None and (n_layer != len(layers) or layers != {str(i) for i in range(len(layers))}):
        return "layers"
    if embedding is not None and shapes.get("wte.weight") != embedding:
        return "embedding"
    return None
