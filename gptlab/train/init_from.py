"""Where a run's weights and architecture come from: new weights ('scratch'), the checkpoint a resume
continues, or weights to fine-tune (a Hugging Face directory or Hub name, nanoGPT's ckpt.pt, a gptlab run);
which architecture keys loaded weights let a command change; and what is said about the choice (a config
file's keys the weights overrule, a tokenizer the weights were not trained with, nanoGPT habits that build
another model than nanoGPT's).

Nothing large is allocated before the checks here pass, so a wrong command fails fast."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gptlab.checkpoint import (
    is_dcp_dir,
    latest_checkpoint,
    load_checkpoint,
    load_checkpoint_meta,
    no_checkpoint_error,
    read_saved_settings,
)
from gptlab.config.model import (
    ARCH_FIELDS,
    FREE_ARCH_KEYS,
    ModelArchitectureConfig,
    family_clash,
    padded_vocab_size,
    preset_family,
)
from gptlab.config.train import RunConfig, TrainConfig
from gptlab.data.tokenizers import HF_TOKENIZER_VOCAB_FILES
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.convert import (
    check_init_source,
    gptlab_checkpoint_path,
    recorded_dataset,
    resolve_pretrained,
    weights_record,
)
from gptlab.model.gpt import ConfigurableGPT
from gptlab.plugins import saved_plugins
from gptlab.train.resume import kept_fine_tune_source

Note = tuple[str, str, dict[str, Any]]  # a logged event: its name, its line, its fields


@dataclass
class InitFrom:
    """What ``resolve_init`` found: the architecture to train and where its weights come from."""

    arch: ModelArchitectureConfig
    ckpt: dict[str, Any] | None = None  # the checkpoint a resume continues (its tensors, or a DCP's meta)
    pretrained: ConfigurableGPT | None = None  # the model a fine-tune starts from
    source: str = "scratch"  # the weights' path or name, as messages name it (a resume: the checkpoint's path)
    overruled: list[str] = field(default_factory=list)  # config-file keys the loaded weights overrule
    weights_tokenizer: dict[str, Any] | None = None  # a fine-tune's weights' tokenizer, where known
    unknown_tokenizer: str | None = None  # ... or what its weights are, where no tokenizer is known

    def notes(self, cfg: TrainConfig, dataset_tokenizer: dict[str, Any] | None) -> list[Note]:
        """What the run's log says about the loaded weights: said, not refused (a study may mean it)."""
        found: list[Note] = []
        if self.overruled:
            found.append(
                (
                    "weights_fix_architecture",
                    f"the architecture is that of the weights loaded from {self.source!r}, not the config file's: "
                    + "; ".join(self.overruled),
                    {"overruled": self.overruled},
                )
            )
        if _other_tokenizer(self.weights_tokenizer, dataset_tokenizer):  # as a resume on another tokenizer is
            old, new = self.weights_tokenizer or {}, dataset_tokenizer or {}
            what = "another char vocabulary" if old.get("name") == new.get("name") else f"{new.get('name')!r} tokens"
            found.append(
                (
                    "tokenizer_mismatch",
                    f"the weights from {cfg.init_from!r} were trained on {old.get('name')!r} tokens, but dataset "
                    f"{cfg.dataset!r} is {what}: its ids are other text to them (is --dataset the one you meant?)",
                    {"weights_tokenizer": old.get("name"), "dataset_tokenizer": new.get("name")},
                )
            )
        if self.unknown_tokenizer is not None:  # said, as a known mismatch is: nothing tells whether the
            # dataset was tokenized as the weights were trained (a LLaMA's own tokenizer, say)
            data = (dataset_tokenizer or {}).get("name")
            found.append(
                (
                    "tokenizer_unknown",
                    f"the weights from {cfg.init_from!r} record no tokenizer gptlab reads ({self.unknown_tokenizer}): "
                    f"dataset {cfg.dataset!r}'s {data!r} ids are other text to them unless it was tokenized as they "
                    "were trained (gptlab prepares with GPT-2's BPE or characters)",
                    {"dataset_tokenizer": data},
                )
            )
        return found


def resolve_init(run: RunConfig, cfg: TrainConfig, vocab: int, out_dir: Path, sharded: bool) -> InitFrom:
    """The architecture to train, the checkpoint to resume (if any) and a pretrained model (if any), for
    dataset ``vocab`` tokens. ``sharded``: an FSDP run, which reads a DCP checkpoint's shards after wrapping.
    A fine-tune whose preset was not typed records the weights' family in ``cfg.arch_preset``."""
    arch = run.arch
    if cfg.init_from == "scratch":
        if "vocab_size" not in run.explicit:
            arch = replace(arch, vocab_size=padded_vocab_size(vocab))  # pad for efficient matmuls
        elif arch.vocab_size < vocab:
            raise ConfigError(
                f"vocab_size={arch.vocab_size} is smaller than the vocabulary of dataset {cfg.dataset!r} ({vocab})"
            )
        return InitFrom(arch)
    if cfg.init_from == "resume":
        path = latest_checkpoint(out_dir)
        if path is None:
            raise no_checkpoint_error(out_dir)
        if is_dcp_dir(path) and sharded:  # sharded into sharded: DCP reshards on load
            ckpt = load_checkpoint_meta(path)
        else:  # into a full state dict (a DCP directory is read whole by each rank)
            ckpt = load_checkpoint(path)
        ckpt["path"] = str(path)
        if not cfg.eval_only and (kept := kept_fine_tune_source(Path(out_dir), path)) is not None:
            raise CheckpointError(f"init_from='resume' but {str(out_dir)!r} holds no checkpoint of its run ({kept})")
        # (an evaluation reads no optimizer state: a nanoGPT checkpoint without one evaluates)
        needed = ("best_val_loss",) if "dcp_path" in ckpt or cfg.eval_only else ("optimizer", "best_val_loss")
        if "optimizer_problem" in ckpt and not cfg.eval_only:  # a nanoGPT checkpoint whose AdamW state could
            raise CheckpointError(ckpt["optimizer_problem"])  # not be carried over
        if missing := [key for key in needed if key not in ckpt]:
            raise CheckpointError(f"{str(path)!r} is a damaged gptlab checkpoint: it has no {', '.join(missing)}")
        # the architecture is the checkpoint's; only settings that keep the weights may change, if set now
        overruled = run.overruled + _check_arch_overrides(run, ckpt["arch"], str(path))
        arch_dict = {**ckpt["arch"], **{k: getattr(arch, k) for k in FREE_ARCH_KEYS if k in run.explicit}}
        if int(arch_dict["vocab_size"]) < vocab:  # else the embedding fails on the first batch's ids
            raise CheckpointError(
                f"{str(path)!r} has vocab_size={arch_dict['vocab_size']} < dataset {cfg.dataset!r}'s {vocab}: "
                "resume on the dataset it was trained on"
            )
        arch = ModelArchitectureConfig.from_dict(arch_dict, saved_plugins(ckpt))
        return InitFrom(arch, ckpt=ckpt, source=str(path), overruled=overruled)
    # a local Hugging Face directory, nanoGPT ckpt.pt or gptlab checkpoint, or a Hub model, to fine-tune
    check_init_source(cfg.init_from, ("scratch", "resume"))
    path = resolve_pretrained(cfg.init_from)
    # dropout is the run's, as nanoGPT's init_from passes it; the attention backend the weights' unless set now
    # (a registered one computes other attention: 'sdpa' by default silently ran another model)
    free = {k: getattr(arch, k) for k in FREE_ARCH_KEYS if k == "dropout" or k in run.explicit}
    model = ConfigurableGPT.from_pretrained(path, **free)
    loaded = model.config.to_dict()
    found = InitFrom(model.config, source=cfg.init_from)
    found.weights_tokenizer = _weights_tokenizer(Path(path), model.config.vocab_size)
    if found.weights_tokenizer is None:
        found.unknown_tokenizer = _unknown_tokenizer(Path(path), model.config.vocab_size, cfg.dataset)
    wanted = run.file_arch.get("arch_preset")
    family = preset_family(loaded, prefer=(wanted, _recorded_preset(path)))
    found.overruled = [
        f"{k}: {v!r} -> {(family if k == 'arch_preset' else loaded[k])!r}"
        for k, v in run.file_arch.items()
        if (k == "arch_preset" and v != family) or (k != "arch_preset" and loaded.get(k) != v)
    ]
    for key, wanted in run.typed_arch.items():
        if not _same_in_effect(key, wanted, loaded):
            raise _conflict(key, wanted, loaded.get(key), cfg.init_from, may_shrink_block=True)
    found.overruled += _check_arch_overrides(run, loaded, cfg.init_from, may_shrink_block=True)
    _check_preset(run, loaded, cfg.init_from)
    if "arch_preset" not in run.typed:  # the run's record names the weights' family, not a default's
        cfg.arch_preset = family
    if model.config.vocab_size < vocab:
        raise CheckpointError(
            f"{cfg.init_from!r} has vocab_size={model.config.vocab_size} < dataset {cfg.dataset!r}'s {vocab}: its "
            "embedding has no row for the dataset's larger ids; fine-tune on a dataset tokenized as it was trained"
        )
    if "block_size" in run.explicit and arch.block_size < model.config.block_size:
        model.crop_block_size(arch.block_size)  # as nanoGPT does when fine-tuning on shorter blocks
    found.arch, found.pretrained = model.config, model.train()
    return found


def weights_origin(init_from: str) -> str:
    """A fine-tune's source as recorded: a local path made absolute (a run is resumed from anywhere); 'scratch'
    and a Hub name as they are."""
    path = Path(init_from).expanduser()
    return str(path.resolve()) if init_from != "scratch" and path.exists() else init_from


def scratch_notes(run: RunConfig, arch: ModelArchitectureConfig) -> list[Note]:
    """What a new model's log says where a nanoGPT habit builds another model than nanoGPT's would."""
    if (default := preset_by_default(run)) is not None:
        return [("preset_default", default, {})]
    if (scope := bias_scope(run, arch)) is not None:
        return [("bias_scope", scope, {})]
    return []


def _check_arch_overrides(
    run: RunConfig, loaded: dict[str, Any], source: str, may_shrink_block: bool = False
) -> list[str]:
    """Architecture keys set now that the loaded weights contradict: typed on the command line, an
    error; from a config file, the weights win, as nanoGPT's resume and init_from do (a config file
    spells out the model it was written for). Returns those config-file keys, 'key: file's -> weights''."""
    overruled = []
    for key in sorted(run.explicit & set(loaded)):
        if key in FREE_ARCH_KEYS or key not in ARCH_FIELDS:
            continue
        wanted, have = getattr(run.arch, key), loaded[key]
        if key == "block_size" and may_shrink_block and wanted <= have:
            continue  # a shorter context crops the loaded model, as nanoGPT does
        if _same_in_effect(key, wanted, loaded):
            continue
        if key not in run.typed:
            overruled.append(f"{key}: {wanted!r} -> {have!r}")
            continue
        raise _conflict(key, wanted, have, source, may_shrink_block)
    return overruled


def _same_in_effect(key: str, wanted: Any, loaded: dict[str, Any]) -> bool:
    """``wanted`` is what the weights have, stored or derived: d_ff=None means the derived FFN width,
    n_kv_head=None as many K/V heads as query heads."""
    have = loaded.get(key)
    if wanted == have:
        return True
    if key in ("d_ff", "n_kv_head") and wanted is not None and have is None:
        config = ModelArchitectureConfig.from_dict(loaded)
        return wanted == (config.ffn_hidden_dim if key == "d_ff" else config.kv_heads)
    return False


def _conflict(key: str, wanted: Any, have: Any, source: str, may_shrink_block: bool = False) -> ConfigError:
    if key == "block_size" and may_shrink_block:  # a fine-tune: the context may be shortened, not lengthened
        return ConfigError(
            f"block_size={wanted!r} is longer than the weights loaded from {source!r} allow (block_size={have!r}): "
            f"a fine-tune may shorten the context (--block_size={have!r} or less crops the model), not lengthen it"
        )
    return ConfigError(
        f"{key}={wanted!r} conflicts with the weights loaded from {source!r} ({key}={have!r}); "
        f"drop --{key} (only {', '.join(FREE_ARCH_KEYS)} may change on loaded weights)"
    )


def _recorded_preset(path: Path) -> str | None:
    """The arch_preset a gptlab checkpoint's run recorded (None for other weights)."""
    found = gptlab_checkpoint_path(path)
    try:
        return read_saved_settings(found)[0].get("arch_preset") if found is not None else None
    except CheckpointError:  # nanoGPT's ckpt.pt: no gptlab record
        return None


def _weights_tokenizer(path: Path, vocab_size: int) -> dict[str, Any] | None:
    """The tokenizer the weights to fine-tune were trained with, where something says: a gptlab checkpoint's
    record (beside a ``gptlab export --hf`` directory too), else GPT-2's for GPT-2's vocabulary (Hugging
    Face's gpt2, nanoGPT's padded 50304); None when nothing does (a nanoGPT char model)."""
    from gptlab.train.sample import gpt2_if_its_vocabulary

    record = weights_record(path) or {}
    if record.get("format") == "gptlab":
        return record.get("tokenizer")
    return gpt2_if_its_vocabulary(vocab_size, path)


# a tokenizer of the weights' own beside them: what hf_folder_tokenizer reads, and transformers' settings file
TOKENIZER_FILES_BESIDE = (*HF_TOKENIZER_VOCAB_FILES, "tokenizer_config.json")


def _unknown_tokenizer(path: Path, vocab_size: int, dataset: str) -> str | None:
    """What a fine-tune's weights that record no tokenizer gptlab knows are (a LLaMA's 32000 or 128256 tokens, a
    model saved without its run's record), for a note that the dataset's ids may be other text to them; None for
    a nanoGPT checkpoint of this dataset, whose ids are its own."""
    record = weights_record(path) or {}
    if "model_args" in record and recorded_dataset(record) == dataset:
        return None
    beside = [name for name in TOKENIZER_FILES_BESIDE if path.is_dir() and (path / name).is_file()]
    own = f"; its folder has a tokenizer of its own ({', '.join(beside)})" if beside else ""
    from gptlab.train.sample import GPT2_VOCAB_SIZES

    if vocab_size in GPT2_VOCAB_SIZES and beside:  # GPT-2's size, another BPE (a GPT-2 retrained for a language)
        return f"a {vocab_size}-token vocabulary whose tokenizer is not GPT-2's BPE nor a gptlab run's{own}"
    return f"a {vocab_size}-token vocabulary, not GPT-2's (50257) nor a gptlab run's recorded one{own}"


def _other_tokenizer(weights: dict[str, Any] | None, data: dict[str, Any] | None) -> bool:
    """Whether the dataset's ids are other text to the weights: another tokenizer, or another char vocabulary."""
    if not weights or not data:
        return False
    if weights.get("name") != data.get("name"):
        return True
    return data.get("name") == "char" and weights != data


def _check_preset(run: RunConfig, loaded: dict[str, Any], source: str) -> None:
    """An ``arch_preset`` typed now whose family the loaded weights contradict (but for the family keys
    typed with it) is an error, as on a resume; variants within a family (tying, RoPE theta) load. A config
    file's is set aside by ``parse_run_args`` and weighed against the weights' family instead."""
    if "arch_preset" not in run.typed:
        return
    clash = family_clash(run.train.arch_preset, loaded, skip=run.typed)
    if clash:
        have = ", ".join(f"{k}={loaded[k]!r}" for k in clash)
        raise ConfigError(
            f"arch_preset={run.train.arch_preset!r} conflicts with the weights loaded from {source!r} ({have}): "
            "loaded weights fix the architecture; drop --arch_preset"
        )


def preset_by_default(run: RunConfig) -> str | None:
    """What a config file that names no preset (nanoGPT's, sizing a model with n_layer, n_head, n_embd or leaving
    it at GPT-2 124M's, as its train_gpt2.py does) gets from the gpt2 preset, OpenAI's GPT-2, that nanoGPT's
    train.py would not build (exact GELU, and bias=False, its default, in Linear layers and LayerNorms alike):
    said, as a nanoGPT config copied as it is trained another model than there. Only what the file left to the
    preset, and only where it differs."""
    from_file, arch = run.explicit - run.typed, run.arch
    if "arch_preset" in run.explicit or not from_file:
        return None
    sizes = "sizes a model but " if {"n_layer", "n_head", "n_embd"} & from_file else ""
    bias = arch.bias if "bias" in run.explicit else False  # nanoGPT train.py's default
    given: list[str] = []
    if arch.gelu_approximate != "none" and "gelu_approximate" not in run.explicit and arch.activation == "gelu":
        given.append(f"{arch.gelu_approximate}-approximated GELU")
    norm_bias = {"layernorm": True, "layernorm_nobias": False}.get(arch.normalization)
    if norm_bias is not None and norm_bias != bias and "normalization" not in run.explicit:
        given.append("biased LayerNorms" if norm_bias else "LayerNorms without bias")
    if "bias" not in run.explicit and arch.bias:
        given.append("biased Linear layers")
    if not given:
        return None
    fix = ["arch_preset = 'custom'"]
    if norm_bias is not None and "normalization" not in run.explicit and not bias:
        fix.append("normalization = 'layernorm_nobias'")
    return (
        f"the config file {sizes}names no arch_preset: the gpt2 preset (OpenAI's GPT-2) gives it "
        f"{', '.join(given)}, where nanoGPT's train.py builds exact GELU with bias={bias} in Linear layers and "
        f"LayerNorms alike: {', '.join(fix)} in the file makes that model (arch_preset = 'gpt2' keeps this one)"
    )


def bias_scope(run: RunConfig, arch: ModelArchitectureConfig) -> str | None:
    """What a set ``bias`` leaves out, where nanoGPT's would not: its ``bias`` covers the LayerNorms too, gptlab's
    the Linear layers only (the norm's bias is ``normalization``). Said when a LayerNorm the user did not name on
    the command line keeps the other setting (a config file or preset's ``layernorm_nobias`` with --bias=True)."""
    norm = arch.normalization
    if "bias" not in run.explicit or "normalization" in run.typed or norm not in ("layernorm", "layernorm_nobias"):
        return None
    if arch.bias == (norm == "layernorm"):
        return None
    other = "layernorm" if arch.bias else "layernorm_nobias"
    return (
        f"bias={arch.bias} covers the Linear layers; the LayerNorms are normalization={norm!r}"
        f"{' (no bias)' if arch.bias else ' (with bias)'}, where nanoGPT's bias={arch.bias} covers them too: add "
        f"--normalization={other} for nanoGPT's model"
    )
