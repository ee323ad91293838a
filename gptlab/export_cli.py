"""``gptlab export CKPT OUT [--hf]``: any gptlab checkpoint (``ckpt.pt``, a ZeRO-1 consolidated file, an
FSDP ``torch.distributed.checkpoint`` directory, or a run directory's latest) into one
single-file ``OUT/ckpt.pt``; with ``--hf`` also ``OUT/config.json`` + ``OUT/model.safetensors``
that ``transformers`` loads. Runs in one process, no GPU and no process group needed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

HF_DTYPES = ("float32", "bfloat16", "float16")  # the Hugging Face files' precision (ckpt.pt keeps the run's)


def export_checkpoint(src: str | Path, out: str | Path, hf: bool = False, dtype: str = "float32") -> Path:
    """Write ``out/ckpt.pt`` (model, optimizer, arch, config, iteration, RNG: resumable and
    loadable by ``from_pretrained``) and, with ``hf``, the Hugging Face files beside it, their weights in
    ``dtype`` (bfloat16: half the size, as Hub models are mostly shared; ckpt.pt keeps float32 to resume)."""
    from gptlab.checkpoint import CHECKPOINT_NAME, atomic_save, clean_state_dict, load_checkpoint
    from gptlab.errors import ConfigError, unknown_choice
    from gptlab.fileio import check_directory

    if dtype not in HF_DTYPES:
        raise unknown_choice("dtype", dtype, HF_DTYPES)
    if dtype != "float32" and not hf:
        raise ConfigError(f"--dtype={dtype} sets the Hugging Face files' precision: give --hf too")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export destination {str(out)!r} exists and is not a directory")
    check_directory("export destination", out)  # a folder inside a file, or a symbolic link to nothing: before
    # a large checkpoint is read
    _refuse_hf_source(Path(src).expanduser())
    ckpt = load_checkpoint(src)
    ckpt.pop("path", None)
    _check_hf_folder_matches(Path(src).expanduser(), ckpt)
    run_files = [n for n in ("log.jsonl", "ckpt.dcp") if (out / n).exists() or (out / n).is_symlink()]
    if run_files:  # its config.json, logs and checkpoints describe another model (or the source) than the export
        raise ConfigError(
            f"export destination {str(out)!r} is a run directory ({', '.join(run_files)}): export to a folder "
            "of its own"
        )
    _refuse_checkpoint_folder(out)
    _refuse_foreign_model_files(out)
    if hf:  # refused before anything is written
        from gptlab.config.model import ModelArchitectureConfig
        from gptlab.model.hf import hf_model_type, safetensors_writer
        from gptlab.plugins import saved_plugins

        hf_model_type(ModelArchitectureConfig.from_dict(ckpt["arch"], saved_plugins(ckpt)))
        safetensors_writer()  # the hf extra, before ckpt.pt is written
    _remove_killed_writes(out)
    # an earlier --hf export there would load as another model than this ckpt.pt: gone before it is written (an
    # export killed between the two left the new ckpt.pt beside the old model's files, which loaded first)
    _remove_hf_export(out)
    # ckpt.pt alone: a run's checkpoint history in the destination is not this export's to prune
    atomic_save({**ckpt, "model": clean_state_dict(ckpt["model"])}, out / CHECKPOINT_NAME)
    if hf:
        import torch

        from gptlab.data.tokenizers import save_hf_tokenizer
        from gptlab.model.convert import model_from_checkpoint
        from gptlab.model.hf import special_tokens_for

        model = model_from_checkpoint(ckpt).to(getattr(torch, dtype))
        # the end-of-text id of the tokenizer the run trained with (a nanoGPT ckpt.pt names none)
        model.save_pretrained(out, special_tokens_for(ckpt.get("tokenizer"), model.config.vocab_size))
        save_hf_tokenizer(ckpt.get("tokenizer"), out, model.config.block_size)  # GPT-2 BPE: AutoTokenizer works
    return out / CHECKPOINT_NAME


def _refuse_hf_source(src: Path) -> None:
    """A Hugging Face model folder with no gptlab ckpt.pt beside it (transformers saved it): 'no checkpoint at
    DIR/ckpt.pt' said nothing of what it is or what reads it."""
    from gptlab.checkpoint import hf_folder_model_type
    from gptlab.errors import CheckpointError

    if model_type := hf_folder_model_type(src):
        raise CheckpointError(
            f"{str(src)!r} is a Hugging Face model folder (model_type={model_type!r}), already in that layout, not a "
            f"gptlab checkpoint: fine-tune from it (--init_from={str(src)!r}), sample it (gptlab sample "
            f"--init_from={str(src)!r}), or load it with ConfigurableGPT.from_pretrained({str(src)!r})"
        )


def _check_hf_folder_matches(src: Path, ckpt: dict[str, Any]) -> None:
    """An earlier ``--hf`` export as the source: every other command (``init_from``, ``sample``,
    ``from_pretrained``) reads such a folder's Hugging Face weights, this one its ckpt.pt; a fine-tune saved
    there by ``transformers`` left that ckpt.pt the older model, which is refused rather than exported."""
    from gptlab.checkpoint import clean_state_dict
    from gptlab.errors import CheckpointError
    from gptlab.model.convert import gptlab_checkpoint_path

    if not src.is_dir() or gptlab_checkpoint_path(src) is not None:  # a run directory, a ckpt.pt, a DCP folder
        return
    import importlib.util

    if importlib.util.find_spec("safetensors") is None:  # a base install reads no Hugging Face weights at all:
        return  # its export copies the ckpt.pt, as before (the check needs the hf extra)
    import torch

    from gptlab.model.gpt import ConfigurableGPT

    loaded = ConfigurableGPT.from_pretrained(src).state_dict()
    saved = clean_state_dict(ckpt["model"])
    config = src / "config.json"  # (transformers 5 writes 'dtype', earlier ones and gptlab 'torch_dtype')
    name = _read_json_field(config, "torch_dtype") or _read_json_field(config, "dtype") or "float32"
    written = getattr(torch, str(name), torch.float32)
    if not isinstance(written, torch.dtype):  # a hand-edited name: compared as they load
        written = torch.float32
    # the ckpt.pt's weights as --dtype wrote them (bfloat16 files hold them rounded), then as they loaded
    differ = [k for k, v in loaded.items() if k not in saved or not torch.equal(v, saved[k].to(written).to(v.dtype))]
    if differ:
        raise CheckpointError(
            f"{str(src)!r} is a Hugging Face folder whose weights changed after gptlab exported it ({differ[0]}, "
            f"...): its ckpt.pt, which export copies, is the older model; the new weights are what "
            f"--init_from={str(src)!r} (a fine-tune) and sample --init_from={str(src)!r} read"
        )


def _read_json_field(path: Path, key: str) -> Any:
    """One field of a JSON object file, None where it cannot be read."""
    import contextlib
    import json

    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    return None


def _export_cmd(args: argparse.Namespace, extra: list[str]) -> int:
    from gptlab.errors import refuse_extra

    refuse_extra("export", extra, vars(args))
    path = export_checkpoint(args.checkpoint, args.out, hf=args.hf, dtype=args.dtype)
    precision = f" ({args.dtype})" if args.dtype != "float32" else ""
    print(f"wrote {path}" + (f" and Hugging Face files in {args.out}{precision}" if args.hf else ""))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="any gptlab checkpoint (single file, ZeRO-1, FSDP DCP dir, run dir) -> one ckpt.pt (and HF with --hf)",
        description=(__doc__ or "").replace("``", ""),  # the help shows text, not reST markup
    )
    from gptlab.errors import path_argument

    p.add_argument(
        "checkpoint", type=path_argument, help="a ckpt.pt, a ckpt-ITER.dcp directory, or a run directory (its latest)"
    )
    p.add_argument(
        "out", type=path_argument, help="output directory: OUT/ckpt.pt (and the Hugging Face files with --hf)"
    )
    p.add_argument(
        "--hf",
        action="store_true",
        help="also write Hugging Face config.json, generation_config.json, model.safetensors",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        help=f"the Hugging Face weights' precision: {', '.join(HF_DTYPES)} (default float32; bfloat16 halves the "
        "file; ckpt.pt keeps the run's float32)",
    )
    from gptlab.plugins import add_plugins_option

    add_plugins_option(p)
    p.set_defaults(func=_export_cmd)


HF_EXPORT_FILES = (
    "config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
)  # fmt: skip


# what transformers (weights, their index, generation settings, a fast tokenizer it prefers to vocab/merges) or
# torch.distributed.checkpoint read from a folder besides an export's own files
FOREIGN_MODEL_FILES = (
    "*.safetensors", "*.index.json", "pytorch_model*.bin", "tf_model.h5", "flax_model.msgpack",
    "generation_config.json", "tokenizer.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    ".metadata",
    "*.distcp",
)  # fmt: skip


def _refuse_checkpoint_folder(out: Path) -> None:
    """A destination that is, or lies inside, a run's sharded checkpoint folder (``RUN/ckpt.dcp/hf``), or is named
    as one in a run directory (``RUN/ckpt-0000008.dcp``): the run's next save prunes that folder with the export
    in it, without a word."""
    import re

    from gptlab.checkpoint import DCP_LINK, is_dcp_dir

    out = out.expanduser().absolute()
    for folder in (out, *out.parents):
        named = folder.name == DCP_LINK or re.fullmatch(r"ckpt-\d+\.dcp", folder.name) is not None
        in_run = (folder.parent / "log.jsonl").exists() or (folder.parent / "config.json").exists()
        if is_dcp_dir(folder.resolve()) or (named and in_run):
            from gptlab.errors import ConfigError

            verb = "is" if folder == out else "lies in"
            where = (
                f"{verb} the sharded checkpoint folder {str(folder)!r}"
                if folder.exists()
                else f"{verb} {str(folder)!r}, named as a sharded checkpoint folder of run {str(folder.parent)!r}"
            )
            raise ConfigError(
                f"export destination {str(out)!r} {where}, which its run's saves prune (with the export in it): "
                "export to a folder of its own"
            )


def _refuse_foreign_model_files(out: Path) -> None:
    """A destination holding model files that no gptlab export wrote: transformers would read them beside
    the export (another model's shards, index or generation settings win or mix), a sharded checkpoint's
    folder is pruned with the export inside by its run's next save, and a Hugging Face model's own files
    would be replaced or removed. Refused, naming them; an earlier export's (its ckpt.pt beside) are replaced."""
    if not out.is_dir():
        return
    from gptlab.checkpoint import CHECKPOINT_NAME

    foreign = {p.name for pattern in FOREIGN_MODEL_FILES for p in out.glob(pattern)}
    foreign -= {"model.safetensors", "generation_config.json"}  # an export's own (a foreign folder's: below)
    if not (out / CHECKPOINT_NAME).is_file():  # no export of gptlab's: its Hugging Face files are someone else's
        foreign |= {name for name in HF_EXPORT_FILES if (out / name).exists()}
    # an earlier export that transformers saved over (a fine-tune): its files say so (gptlab writes no
    # transformers_version), and the weights there are the fine-tune's, not the export's to replace
    foreign |= {name for name in ("config.json", "generation_config.json") if _saved_by_transformers(out / name)}
    if foreign:
        from gptlab.errors import ConfigError

        names = sorted(foreign)
        raise ConfigError(
            f"export destination {str(out)!r} holds model files no gptlab export wrote ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}): export to an empty folder, or into an earlier export's"
        )


def _saved_by_transformers(path: Path) -> bool:
    """A config file that transformers' save_pretrained wrote (it records its version; gptlab's export does not)."""
    return path.is_file() and _read_json_field(path, "transformers_version") is not None


def _remove_killed_writes(out: Path) -> None:
    """What an earlier export killed mid-write left (``.ckpt.pt.tmp-PID``, ``.model.safetensors.tmp-PID``, ...: the
    atomic writes' temporary files, checkpoint-sized): removed, as a training removes its own, unless their
    process is alive (an export running into the same folder)."""
    from gptlab.checkpoint import CHECKPOINT_NAME

    if not out.is_dir():
        return
    for name in (CHECKPOINT_NAME, *HF_EXPORT_FILES):
        for leftover in out.glob(f".{name}.tmp-*"):
            pid = leftover.name.removeprefix(f".{name}.tmp-")  # fileio.atomic_open's name for it
            if pid.isdigit() and leftover.is_file() and not _alive(int(pid)):  # another export's, still writing
                leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine: a folder shared by nodes may hold another's)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's
        return True
    except (OSError, OverflowError):  # none (ProcessLookupError), or no PID at all
        return False
    return True


def _remove_hf_export(out: Path) -> None:
    """The files of an earlier ``--hf`` export in ``out`` (an export's: _refuse_foreign_model_files let it by)."""
    for name in HF_EXPORT_FILES:
        (out / name).unlink(missing_ok=True)
