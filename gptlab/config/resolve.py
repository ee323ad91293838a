"""A run's settings resolved: config files and ``--key=value`` overrides (or a notebook's dict) into a
validated RunConfig; a resume takes the settings not given from its checkpoint, a fine-tune its
architecture from the weights, a torchrun restart continues its job's run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gptlab.config.files import load_config_file, registering_file, training_defaults
from gptlab.config.model import (
    ARCH_FIELDS,
    FREE_ARCH_KEYS,
    PRESETS,
    check_arch_types,
    check_keys_take_effect,
    family_clash,
    get_preset_config,
    preset_family,
)
from gptlab.config.overrides import pair_hint, parse_overrides, refuse_legacy_launcher
from gptlab.config.train import (
    ALL_KEYS,
    BOOL_KEYS,
    TEXT_KEYS,
    TRAIN_FIELDS,
    RunConfig,
    TrainConfig,
    check_train_keys_take_effect,
)
from gptlab.errors import ConfigError, did_you_mean, unknown_choice, without_suggestion
from gptlab.plugins import anchor_plugins, import_plugins, merge_plugins, plugins_hint


def resolve_run_config(
    values: dict[str, Any], explicit: Iterable[str] | None = None, typed: Iterable[str] | None = None
) -> RunConfig:
    """The run that flat training and architecture keys describe, as ``parse_run_args`` makes it from a
    command line (the Python way in: a notebook's dict). ``explicit``: the keys the user set (a config
    file, an override); by default all of ``values``. ``typed``: those set on the command line, which
    must take effect (a config file may spell out every key, used or not); by default all of
    ``explicit``, but for a dict that names every architecture key (``cfg.to_dict()``), whose architecture
    keys are a file's. A resume takes every setting not given from its checkpoint, and a fine-tune its
    architecture from the weights, exactly as on the command line."""
    for key in values:  # before a resume reads its checkpoint
        if key not in ALL_KEYS:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, ALL_KEYS)}")
    explicit = frozenset(values if explicit is None else explicit)
    if typed is None and set(ARCH_FIELDS) <= set(values):
        # a whole architecture (``get_preset_config('gpt2').to_dict()``) spells out the settings of components it
        # does not use (GPT-2's RoPE theta), as a config file may: checked as a file's keys; and it names its
        # preset, where not given, as the one it is, else its family (not the default 'gpt2' beside llama's parts)
        # (a given arch_preset is the run's label, as --arch_preset=llama --normalization=layernorm's is)
        typed = explicit - set(ARCH_FIELDS) - {"arch_preset"}
        if "arch_preset" not in values:
            exact = [n for n, p in PRESETS.items() if p and all(values[k] == v for k, v in p.items())]
            values = {**values, "arch_preset": preset_family(values, prefer=exact)}
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
    that differs is refused (but where the record names another family than the weights and the typed one
    fits them: then it is the run's label, said), a config file's is overruled. Returns the values, the
    settings the user changed ``{key: (checkpoint's, now)}``, the checkpoint's path (None when there is none) and the
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
        if values["arch_preset"] not in PRESETS:  # a misspelt one: said before its family is looked up
            raise unknown_choice("arch_preset", values["arch_preset"], PRESETS)
        recorded, clash = saved["arch_preset"], family_clash(values["arch_preset"], saved_arch)
        fits = recorded in PRESETS and not family_clash(recorded, saved_arch)
        if clash or fits:  # another model's preset, or the record names this one
            have = "".join(f"; {k}={saved_arch.get(k)!r}" for k in clash)
            raise ConfigError(
                f"arch_preset={values['arch_preset']!r} conflicts with the checkpoint resumed from {str(path)!r} "
                f"(arch_preset={recorded!r}{have}): a resumed run keeps its architecture; drop --arch_preset"
            )
        # a record of another family than its weights' (a whole llama architecture resolved without a preset
        # recorded 'gpt2' before it recorded its family): the typed preset, which fits them, is the run's now, said
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
        registering.append(registering_file(path, from_file))
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
