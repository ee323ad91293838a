"""``gptlab compare``: architectures side by side, figure by figure, from the telemetry functions.

Every figure is what ``gptlab.telemetry`` returns (``count_parameters``, ``compute_flops``,
``plan_all_modes``, ``expected_tokens_per_sec``), never recomputed here. With ``train=True`` each
architecture is also trained with the same settings (same data, seed and tokens), see
``gptlab.compare_train``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.config.model import ModelArchitectureConfig, check_keys_take_effect, get_typed_config, padded_vocab_size
from gptlab.errors import ConfigError, did_you_mean, first_line
from gptlab.units import format_si

GB = 1e9
# The GPU-side settings of the table (the planner's micro-batch and autocast dtype, and where
# the throughput estimate runs).
TABLE_DEFAULTS: dict[str, Any] = dict(gpu="H100-SXM", mfu=0.4, world_size=8, batch_size=12, dtype="bfloat16")
MATMUL_COMPONENTS = (
    "qkv_proj",
    "attn_scores (full-square)",
    "attn_values (full-square)",
    "attn_scores (causal)",
    "attn_values (causal)",
    "out_proj",
    "ffn",
    "lm_head",
)
MODES = ("none", "ddp", "zero1", "fsdp")


@dataclass
class Architecture:
    """A labelled architecture: a preset name or a config file's, with overrides applied."""

    label: str
    config: ModelArchitectureConfig
    source: str  # the preset name or the config file path
    train_values: dict[str, Any] = field(default_factory=dict)  # a config file's training keys
    file_values: dict[str, Any] = field(default_factory=dict)  # all a config file's settings, as loaded once
    notes: list[str] = field(default_factory=list)  # what its figures assume beyond the config (said under them)
    folder: Path | None = None  # a run directory's (labels of folders of one name tell them apart by their paths)
    what_if: str = ""  # a run directory's architecture changed by the command: ' (n_layer=4)', in its label


def resolve_architecture(
    name: str, overrides: dict[str, Any] | None = None, file_values: dict[str, Any] | None = None
) -> Architecture:
    """``name`` is a preset ('gpt2', 'llama', ...) or a training config file (``*.py``; ``file_values``:
    its settings, if the caller has loaded them already). Only ``overrides``' architecture keys apply
    (and, on a config file, ``arch_preset``); they must take effect."""
    from gptlab.config.files import load_config_file, names_a_file
    from gptlab.config.resolve import resolve_run_config
    from gptlab.config.train import ARCH_FIELDS, TrainConfig

    overrides = dict(overrides or {})
    arch_overrides = {k: v for k, v in overrides.items() if k in ARCH_FIELDS}
    if names_weights(name):  # a checkpoint or a Hugging Face model folder: the architecture its weights have
        return _of_weights(name, arch_overrides)
    run_dir = run_config_json(name)
    if run_dir is not None:  # a run directory (or its config.json): the architecture it trained
        from gptlab.plugins import saved_plugins

        run_json = json.loads(run_dir.read_text(encoding="utf-8"))
        config = ModelArchitectureConfig.from_dict({**run_json["arch"], **arch_overrides}, saved_plugins(run_json))
        config = check_keys_take_effect(config, arch_overrides)
        from gptlab.report import folder_label

        folder = run_dir.parent
        label = folder_label(folder) if run_dir.name == "config.json" else run_dir.stem
        # a what-if on the trained architecture says so in its label (--n_layer=4 to resize presets reaches it too)
        changed = [f"{k}={v}" for k, v in arch_overrides.items() if run_json["arch"].get(k) != getattr(config, k)]
        what_if = f" ({', '.join(changed)})" if changed else ""
        return Architecture(label + what_if, config, name, folder=folder, what_if=what_if)
    check_names_an_architecture(name)  # (what weights and runs are has been read)
    if names_a_file(name):
        values = load_config_file(name) if file_values is None else file_values
        arch_overrides |= {k: v for k, v in overrides.items() if k == "arch_preset"}
        arch_keys = {k: v for k, v in values.items() if k in ARCH_FIELDS or k in ("arch_preset", "plugins")}
        train_values = {k: v for k, v in values.items() if k not in arch_keys}
        init_from = train_values.get("init_from", TrainConfig.init_from)
        if init_from not in ("scratch", "resume"):  # a fine-tune: the weights fix the architecture
            return _fine_tuned(name, init_from, arch_keys, arch_overrides, train_values, values)
        config = resolve_run_config({**arch_keys, **arch_overrides}, typed=arch_overrides).arch
        notes = []
        if "vocab_size" not in arch_keys and "vocab_size" not in arch_overrides:
            vocab = dataset_vocab_size(train_values)
            if vocab is not None:  # what training will use: the prepared dataset's vocabulary, padded
                config = dataclasses.replace(config, vocab_size=vocab)
            elif train_values.get("init_from", "scratch") == "scratch" and not _gpt2_vocabulary(train_values, config):
                dataset = train_values.get("dataset", TrainConfig.dataset)
                data_dir = train_values.get("data_dir", TrainConfig.data_dir)
                notes.append(
                    f"vocab_size {config.vocab_size} (the default) assumed: dataset {dataset!r} is not prepared in "
                    f"{data_dir!r}, whose vocabulary training would take (prepare it, or pass --vocab_size)"
                )
        return Architecture(Path(name).stem, config, name, train_values, values, notes)
    return Architecture(name, get_typed_config(name, arch_overrides), name)


def check_names_an_architecture(name: str) -> None:
    """A name that is no preset, and no file or folder: said as that (a mistyped run directory read "config file
    ... does not exist", a misspelt preset "arch_preset='gpt3' is not one of", a key the user never typed)."""
    from gptlab.config.files import names_a_file
    from gptlab.config.model import PRESETS

    path = Path(os.path.expanduser(name))
    if name in PRESETS or path.suffix or path.is_dir():
        return  # (a config file's own errors say the rest: 'x.yaml' is not a .py file)
    kinds = f"a preset ({', '.join(sorted(PRESETS))}), a config file (.py), a run directory or a checkpoint"
    if path.is_file():
        raise ConfigError(f"{name!r} is a file, but not {kinds}")
    if not path.exists():
        if names_a_file(name):  # a path
            raise ConfigError(f"{name!r} does not exist: name {kinds}")
        meant = did_you_mean(name, sorted(PRESETS))
        raise ConfigError(f"{name!r} is no preset{meant}, and no file or folder here: name {kinds}")


def _fine_tuned(
    name: str,
    init_from: str,
    arch_keys: dict[str, Any],
    arch_overrides: dict[str, Any],
    train_values: dict[str, Any],
    values: dict[str, Any],
) -> Architecture:
    """A config file that fine-tunes ``init_from``: the weights' architecture, as training takes it (the file's
    dropout, attention backend and a shorter block_size apply to them; its other architecture keys yield), with
    the typed keys as a what-if; the file's own where the weights' cannot be read without them, said."""
    from gptlab.config.model import FREE_ARCH_KEYS
    from gptlab.config.resolve import resolve_run_config
    from gptlab.model.convert import pretrained_architecture

    weights = pretrained_architecture(init_from)
    if weights is None:
        config = resolve_run_config({**arch_keys, **arch_overrides}, typed=arch_overrides).arch
        note = (
            f"init_from={init_from!r}: the architecture is its weights', which cannot be read here (not downloaded, "
            "no such path, or unreadable: training says why): the figures are the config file's"
        )
        return Architecture(Path(name).stem, config, name, train_values, values, [note])
    if "arch_preset" in arch_overrides:
        raise ConfigError(
            f"--arch_preset: config file {name!r} fine-tunes init_from={init_from!r}, whose weights fix the "
            "architecture (type the keys to change instead)"
        )
    # the file's dropout (or the default, as nanoGPT's init_from passes its own); its attention backend, else the
    # weights' (a registered one computes its own attention), as training resolves them
    applied = {k: arch_keys[k] if k in arch_keys else getattr(ModelArchitectureConfig, k) for k in FREE_ARCH_KEYS}
    if "attention_backend" not in arch_keys:
        applied["attention_backend"] = weights.attention_backend
    if isinstance(arch_keys.get("block_size"), int) and arch_keys["block_size"] < weights.block_size:
        applied["block_size"] = arch_keys["block_size"]  # a shorter context: the weights' positions cut
    config = ModelArchitectureConfig.from_dict({**weights.to_dict(), **applied, **arch_overrides})
    config = check_keys_take_effect(config, arch_overrides)
    size = ", ".join(f"{k}={getattr(weights, k)}" for k in ("n_layer", "n_head", "n_embd", "vocab_size"))
    note = f"init_from={init_from!r}: the architecture is its weights' ({size}), not the config file's"
    return Architecture(Path(name).stem, config, name, train_values, values, [note])


def names_weights(name: str) -> bool:
    """``name`` is a checkpoint (a ``.pt`` file, a sharded ``ckpt-ITER.dcp`` folder) or a Hugging Face model
    folder (a config.json with a model_type), whose architecture its own record gives."""
    import zipfile

    from gptlab.checkpoint import is_dcp_dir
    from gptlab.config.model import PRESETS

    if name in PRESETS:  # a preset's name wins over a folder of that name (a Hub clone of gpt2), as for runs
        return False
    path = Path(name).expanduser()
    if path.is_file():
        return path.suffix in (".pt", ".pth", ".bin") or zipfile.is_zipfile(path)  # (a torch.save archive)
    if not path.is_dir():
        return False
    if is_dcp_dir(path):
        return True
    if (path / "ckpt.pt").is_file() and not (path / "config.json").exists():  # a nanoGPT out_dir (gptlab's have one)
        return True
    try:
        hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(hf, dict) and "model_type" in hf


def _of_weights(name: str, arch_overrides: dict[str, Any]) -> Architecture:
    """The architecture a checkpoint or Hugging Face folder records, typed keys applied as a labelled what-if."""
    from gptlab.model.convert import pretrained_architecture

    weights = pretrained_architecture(name)
    if weights is None:
        raise ConfigError(
            f"{name!r}: no architecture can be read from it (not a gptlab or nanoGPT checkpoint, nor a Hugging Face "
            "GPT-2 or LLaMA folder, or a component it names is not registered: --plugins)"
        )
    config = check_keys_take_effect(
        ModelArchitectureConfig.from_dict({**weights.to_dict(), **arch_overrides}), arch_overrides
    )
    path = Path(name)
    label = path.parent.name if path.name in ("ckpt.pt", "ckpt.dcp") and path.parent.name else path.name
    changed = [f"{k}={v}" for k, v in arch_overrides.items() if getattr(weights, k) != getattr(config, k)]
    return Architecture(f"{label} ({', '.join(changed)})" if changed else label, config, name)


def refuse_arch_preset(overrides: dict[str, Any]) -> None:
    """compare's presets are its positional names: --arch_preset would make every column that preset."""
    if "arch_preset" in overrides:
        raise ConfigError("--arch_preset: compare takes presets by name (gptlab compare gpt2 llama ...)")


def run_config_json(name: str) -> Path | None:
    """The config.json of a run directory ``name`` names (the directory or the file), else None."""
    from gptlab.config.model import PRESETS

    if name in PRESETS:  # a preset's name wins over a folder of that name in the working directory
        return None
    path = Path(name)
    candidate = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not candidate.is_file():  # else it was read as a preset name ("not one of ...")
        raise ConfigError(
            f"{name!r} is a directory without a config.json, not a gptlab run directory: name a run directory, "
            f"a config file (.py) or a preset ({', '.join(PRESETS)})"
        )
    if candidate.name == "config.json" and candidate.is_file():
        try:
            record = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise ConfigError(f"{str(candidate)!r} cannot be read as a run's config.json ({first_line(e)})") from None
        if not isinstance(record, dict) or not isinstance(record.get("arch"), dict):
            raise ConfigError(f"{str(candidate)!r} is not a gptlab run's config.json: it has no arch record (a dict)")
        return candidate
    return None


def _gpt2_vocabulary(train_values: dict[str, Any], config: ModelArchitectureConfig) -> bool:
    """Whether the default vocab_size is what the (unprepared) dataset would give: one GPT-2's BPE tokenizes."""
    from gptlab.config.train import TrainConfig
    from gptlab.data.datasets import default_tokenizer
    from gptlab.data.tokenizers import GPT2_VOCAB_SIZE

    gpt2 = default_tokenizer(str(train_values.get("dataset", TrainConfig.dataset))) == "gpt2"
    return gpt2 and config.vocab_size == padded_vocab_size(GPT2_VOCAB_SIZE)


def dataset_vocab_size(train_values: dict[str, Any]) -> int | None:
    """The vocab_size training gives a config file without one: its dataset's vocabulary rounded up to a
    multiple of 64 (an embedded dataset is prepared for it, as training would; None when the dataset is
    not prepared here)."""
    from gptlab.config.train import TrainConfig
    from gptlab.data.datasets import ensure_prepared, read_meta

    if train_values.get("init_from", TrainConfig.init_from) != "scratch":
        return None  # a resume or fine-tune keeps its weights' vocabulary
    dataset = str(train_values.get("dataset", TrainConfig.dataset))
    data_dir = os.path.expanduser(train_values.get("data_dir", TrainConfig.data_dir))  # as training reads it
    try:  # training's own lookup: an embedded dataset is built (offline, in a second or two), others must be
        vocab = int(read_meta(ensure_prepared(dataset, data_dir))["vocab_size"])
    except Exception:  # not prepared, or damaged: training's error to report, not the estimate's
        return None
    return padded_vocab_size(vocab)


def compute_figures(
    config: ModelArchitectureConfig,
    *,
    gpu: str = TABLE_DEFAULTS["gpu"],
    mfu: float = TABLE_DEFAULTS["mfu"],
    world_size: int = TABLE_DEFAULTS["world_size"],
    batch_size: int = TABLE_DEFAULTS["batch_size"],
    dtype: str = TABLE_DEFAULTS["dtype"],
    activation_checkpointing: bool = False,
) -> dict[str, Any]:
    """Every figure of one table column, raw (parameters, FLOP/token, bytes, tokens/s)."""
    from gptlab.telemetry import (
        compute_flops,
        count_parameters,
        expected_tokens_per_sec,
        get_gpu_spec,
        plan_all_modes,
    )

    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu={mfu} is invalid: expected a fraction in (0, 1]")
    fl = compute_flops(config, activation_checkpointing=activation_checkpointing)
    table = {row["component"]: row for row in fl.table()}
    plans = plan_all_modes(
        config,
        world_size=world_size,
        batch_size=batch_size,
        dtype=dtype,
        activation_checkpointing=activation_checkpointing,
    )
    spec = get_gpu_spec(gpu)
    _, peak = spec.training_peak(gpu, dtype)
    return {
        "architecture": config.get_architecture_name(),
        "params_total": count_parameters(config),
        "params_non_embedding": count_parameters(config, non_embedding=True),
        **{f"flops.{c}": table[c]["training_flops_per_token"] for c in MATMUL_COMPONENTS},
        # a registered norm's or position encoding's own matrices: rows of theirs, so the rows add up to the total
        **{
            f"flops.{c}": row["training_flops_per_token"]
            for c, row in table.items()
            if row["kind"] == "matmul" and c not in MATMUL_COMPONENTS and row["training_flops_per_token"]
        },
        "flops_per_token": fl.flops_per_token,
        "flops_per_token_causal": fl.flops_per_token_causal,
        "non_matmul_flops_per_token": fl.non_matmul_flops_per_token,
        "attention_to_ffn_ratio": fl.attention_to_ffn_ratio,
        **{f"memory.{m}": plans[m].mode.peak for m in MODES},
        "tokens_per_sec_per_gpu": expected_tokens_per_sec(config, peak, mfu, num_gpus=1),
        "tokens_per_sec_total": expected_tokens_per_sec(config, peak, mfu, num_gpus=world_size),
        # what the FLOPs and memory figures assume (a registered component's estimates), said beside them
        "notes": list(dict.fromkeys([*fl.caveats, *(n for m in MODES for n in plans[m].mode.notes)])),
    }


@dataclass
class Comparison:
    """The table: one column per architecture; ``figures[i]`` holds column i's raw values."""

    architectures: list[Architecture]
    settings: dict[str, Any]
    figures: list[dict[str, Any]]
    training: list[dict[str, Any]] | None = None  # filled by compare --train
    report: str | None = None

    def __post_init__(self) -> None:
        for key in self._extra_flops_keys():  # a component row only some columns have: 0 in the others
            for figures in self.figures:
                figures.setdefault(key, 0.0)

    def _extra_flops_keys(self) -> list[str]:
        """The FLOPs rows beyond MATMUL_COMPONENTS (a registered component's matrices), in first-seen order."""
        standard = {f"flops.{c}" for c in MATMUL_COMPONENTS}
        keys = (k for f in self.figures for k in f if k.startswith("flops.") and k not in standard)
        return list(dict.fromkeys(keys))

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.architectures]

    def rows(self, memory_unit: str = "GB") -> list[tuple[str, str]]:
        """(figure key, row label) in table order: the documented rows; ``memory_unit`` as the memory cells
        give it (the tables' GB; CSV's unrounded bytes)."""
        s = self.settings
        rows = [
            ("architecture", "architecture"),
            ("params_total", "parameters (total)"),
            ("params_non_embedding", "parameters (excl. embeddings)"),
        ]
        rows += [(f"flops.{c}", f"train FLOP/token: {c}") for c in MATMUL_COMPONENTS]
        rows += [(k, f"train FLOP/token: {k.removeprefix('flops.')}") for k in self._extra_flops_keys()]
        rows += [
            ("flops_per_token", "train FLOP/token, total (full-square, MFU)"),
            ("flops_per_token_causal", "train FLOP/token, total (causal-aware)"),
            ("non_matmul_flops_per_token", "non-matmul FLOP/token (estimate)"),
            ("attention_to_ffn_ratio", "attention/FFN FLOPs per layer"),
        ]
        plan = f"micro-batch {s['batch_size']}, {s['dtype']}" + (
            ", act. ckpt" if s.get("activation_checkpointing") else ""
        )
        for m in MODES:
            n = 1 if m == "none" else s["world_size"]
            rows.append((f"memory.{m}", f"memory/GPU {m} x{n} ({memory_unit}, peak; {plan})"))
        tag = f"{s['gpu']} {s['precision']} @ {100 * s['mfu']:.4g}% MFU"  # as given: 0.355 is 35.5%
        rows += [
            ("tokens_per_sec_per_gpu", f"tokens/s per GPU ({tag})"),
            ("tokens_per_sec_total", f"tokens/s on {s['world_size']} GPU{'s' if s['world_size'] != 1 else ''}"),
        ]
        return rows

    @staticmethod
    def format_value(key: str, value: Any) -> str:
        if value is None:
            return "n/a"
        if key.startswith("memory."):
            gb = value / GB  # 14.5 or 15.0 for GPT-2 124M, 0.00683 for a test model, 293 for a 7B
            return f"{gb:,.0f}" if gb >= 99.95 else f"{gb:#.3g}"  # (99.96 would round to '100.' in 3 digits)
        if key == "attention_to_ffn_ratio":
            return f"{value:.3f}"
        if key.startswith("params"):
            return f"{value / 1e6:,.2f}M" if value >= 1e7 else f"{value:,}"  # 124.44M; 515,407,959.16M
        if key.startswith("tokens_per_sec"):
            return f"{value:,.0f}"
        if key.startswith("flops") or "flops" in key:
            return format_si(value)
        return str(value)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of formatted cells: the first column names the figure."""
        header = ["figure", *self.labels]
        body = [[label, *(self.format_value(k, f[k]) for f in self.figures)] for k, label in self.rows()]
        return header, body

    def training_table(self) -> tuple[list[str], list[list[str]]] | None:
        if not self.training:
            return None
        from gptlab.compare_train import TRAIN_ROWS, result_cell

        header = ["result", *self.labels]
        return header, [[label, *(result_cell(r, k) for r in self.training)] for k, label in TRAIN_ROWS]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "architectures": {a.label: {"source": a.source, **f} for a, f in zip(self.architectures, self.figures)},
            "training": None if self.training is None else dict(zip(self.labels, self.training)),
            "report": self.report,
        }

    def note_lines(self) -> list[str]:
        """What the figures assume: a note every column shares once, the others under their column's label."""
        everywhere = set.intersection(*(set(f["notes"]) for f in self.figures)) if self.figures else set()
        shared = [f"note: {n}" for n in self.figures[0]["notes"] if n in everywhere] if self.figures else []
        own = [
            f"note ({label}): {n}"
            for label, f in zip(self.labels, self.figures)
            for n in f["notes"]
            if n not in everywhere
        ]
        return shared + own

    def to_csv(self) -> str:
        """Every figure unrounded (bytes, FLOPs, tokens/s, losses), a row each: ``table, key, figure``, then a
        column per architecture; for a spreadsheet or a paper's plotting script."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["table", "key", "figure", *self.labels])
        for key, label in self.rows(memory_unit="bytes"):
            writer.writerow(["architecture", key, label, *(_csv_cell(f[key]) for f in self.figures)])
        writer.writerow(["architecture", "notes", "notes", *("; ".join(f["notes"]) for f in self.figures)])
        if self.training:
            from gptlab.compare_train import TRAIN_ROWS

            for key, label in TRAIN_ROWS:
                writer.writerow(["training", key, label, *(_csv_cell(r.get(key)) for r in self.training)])
        return buffer.getvalue().rstrip("\n")

    def render(self, fmt: str = "text") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        if fmt == "csv":
            return self.to_csv()
        tables = [self.table()]
        if (tt := self.training_table()) is not None:
            tables.append(tt)
        out = [render_markdown(*t) if fmt == "markdown" else render_text(*t) for t in tables]
        if notes := self.note_lines():
            out.append("\n".join(f"- {n}" if fmt == "markdown" else n for n in notes))  # a list: one line each
        if self.report:
            out.append(f"report: {self.report}")
        return "\n\n".join(out)


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def compare(
    names: list[str],
    overrides: dict[str, Any] | None = None,
    *,
    gpu: str = TABLE_DEFAULTS["gpu"],
    mfu: float = TABLE_DEFAULTS["mfu"],
    world_size: int = TABLE_DEFAULTS["world_size"],
    batch_size: int = TABLE_DEFAULTS["batch_size"],
    dtype: str = TABLE_DEFAULTS["dtype"],
    activation_checkpointing: bool = False,
) -> Comparison:
    """The comparison table of the presets / config files in ``names`` with shared overrides."""
    from gptlab.telemetry import get_gpu_spec

    if not names:
        raise ConfigError("gptlab compare needs at least one preset or config file")
    archs = [resolve_architecture(n, overrides) for n in names]
    _unique_labels(archs)
    settings = dict(gpu=get_gpu_spec(gpu).key, mfu=mfu, world_size=world_size, batch_size=batch_size, dtype=dtype)
    settings.update(precision=get_gpu_spec(gpu).training_precision(dtype))
    settings.update(activation_checkpointing=activation_checkpointing)
    kwargs = {k: settings[k] for k in ("mfu", "world_size", "batch_size", "dtype", "activation_checkpointing")}
    figures = [compute_figures(a.config, gpu=gpu, **kwargs) for a in archs]
    for arch, figure in zip(archs, figures):  # what resolving the architecture assumed, said with the rest
        figure["notes"] = list(dict.fromkeys([*arch.notes, *figure["notes"]]))
    return Comparison(archs, settings, figures)


def _unique_labels(archs: list[Architecture]) -> None:
    """Labels told apart: run directories of one name by their paths' trailing parts, as gptlab report labels
    them (x/run, y/run); the rest by a number (gpt2, gpt2_2: a folder name under compare --train)."""
    from gptlab.report import labels_by_parents

    groups: dict[str, list[Architecture]] = {}
    for a in archs:
        if a.folder is not None:
            groups.setdefault(a.label, []).append(a)
    for group in groups.values():
        labels = labels_by_parents([a.folder for a in group if a.folder is not None])
        for a, label in zip(group, labels or ()):
            a.label = label + a.what_if
    seen: dict[str, int] = {}
    for a in archs:
        seen[a.label] = seen.get(a.label, 0) + 1
        if seen[a.label] > 1:
            a.label = f"{a.label}_{seen[a.label]}"


__all__ = ["TABLE_DEFAULTS", "Architecture", "Comparison", "compare", "compute_figures", "resolve_architecture"]
