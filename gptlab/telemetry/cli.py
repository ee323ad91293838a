"""``gptlab flops``, ``gptlab plan`` and ``gptlab peak``: FLOPs, memory plan and measured peak, printed.

Each command takes a preset or a training config file, and ``--key=value`` overrides.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from gptlab.config.files import load_config_file, names_a_file
from gptlab.config.model import ARCH_FIELDS, PRESETS, ModelArchitectureConfig
from gptlab.config.overrides import SAME_SETTING, gpu_count_error, parse_overrides
from gptlab.config.train import ALL_KEYS, BOOL_KEYS, TEXT_KEYS
from gptlab.errors import ConfigError, GptlabError, bool_argument, did_you_mean, unknown_choice
from gptlab.plugins import add_plugins_option
from gptlab.units import format_si

GB = 1e9


AUTOCAST_DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MFU = 0.4  # the throughput estimate's assumed utilisation


# What a plan assumes when neither an option nor a config file says otherwise.
OPTION_DEFAULTS: dict[str, Any] = dict(
    activation_checkpointing=False,
    dtype="bfloat16",
    batch_size=12,
    grad_accum_steps=1,
    loss_chunk_size=0,
    residual_dtype="auto",
    sdpa_backend="auto",
)


def _device_type(device: object) -> str | None:
    """Whose kernels a training ``device`` runs: 'cpu', 'cuda'; None for 'auto' (a GPU's, where one is planned)."""
    if not isinstance(device, str) or device == "auto":
        return None
    return "cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else None


def vocab_hint(key: str) -> str:
    """Why --dataset / --data_dir, which decide a config file's vocabulary, are still not taken here."""
    if key in ("dataset", "data_dir"):
        return " (a config file's vocabulary is that of the dataset it names; give --vocab_size to set another)"
    return ""


def _fill_options(args: argparse.Namespace, file_values: dict[str, Any]) -> None:
    """Options not given take the config file's training settings, as train.py would run them (its device's
    kernels; dtype 'auto' is a CPU's float32, else a GPU's bfloat16; micro-steps per GPU are
    gradient_accumulation_steps / --world_size), else defaults."""
    from gptlab.config.train import TRAIN_FIELDS, TrainConfig

    # the file's training settings checked as train.py checks them (types, ranges), each named by its key
    checked = TrainConfig(**{k: v for k, v in file_values.items() if k in TRAIN_FIELDS and k != "plugins"})
    file_values = {**file_values, **{k: getattr(checked, k) for k in file_values if k in TRAIN_FIELDS}}
    world = getattr(args, "world_size", 1) or 1
    accum = file_values.get("gradient_accumulation_steps")
    if getattr(args, "device_type", "") is None:
        args.device_type = _device_type(file_values.get("device")) or "cuda"
    dtype = file_values.get("dtype", "auto")  # TrainConfig's default, resolved as resolve_dtype does
    from_file = {
        "activation_checkpointing": file_values.get("activation_checkpointing"),
        "dtype": dtype if dtype != "auto" else "float32" if getattr(args, "device_type", None) == "cpu" else None,
        "batch_size": file_values.get("batch_size"),
        "loss_chunk_size": file_values.get("loss_chunk_size"),
        "residual_dtype": file_values.get("residual_dtype"),
        "sdpa_backend": file_values.get("sdpa_backend"),
        "grad_accum_steps": None if not isinstance(accum, int) else max(1, accum // world),
    }
    # train.py on one GPU runs all of a config file's micro-steps: the plan's 'none x1' column does too
    file_accum = accum if isinstance(accum, int) and getattr(args, "grad_accum_steps", 0) is None else None
    args.single_gpu_accum_steps, args.accum_indivisible = file_accum, bool(file_accum and file_accum % world)
    for key, default in OPTION_DEFAULTS.items():
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, default if from_file[key] is None else from_file[key])


def _check_options(args: argparse.Namespace) -> None:
    """Every option's value, whether or not this invocation uses it (--mfu without --gpu too)."""
    if args.dtype not in AUTOCAST_DTYPES:
        raise unknown_choice("dtype", args.dtype, AUTOCAST_DTYPES)
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ConfigError(f"mfu={args.mfu} is invalid: expected a fraction in (0, 1]")
    memory = getattr(args, "gpu_memory_gb", None)
    if memory is not None and not (math.isfinite(memory) and memory > 0):
        raise ConfigError(f"gpu_memory_gb={memory} is invalid: expected a number of GB > 0")
    for key in ("batch_size", "grad_accum_steps", "world_size"):
        if getattr(args, key, 1) < 1:
            raise ConfigError(f"{key}={getattr(args, key)} is invalid: expected an integer >= 1")
    if getattr(args, "loss_chunk_size", 0) < 0:
        raise ConfigError(
            f"loss_chunk_size={args.loss_chunk_size} is invalid: expected 0 (plain logits) or a positive integer"
        )
    if hasattr(args, "residual_dtype"):
        residual_cast(args)
    if hasattr(args, "sdpa_backend"):
        from gptlab.config.train import SDPA_BACKENDS

        if args.sdpa_backend not in SDPA_BACKENDS:
            raise unknown_choice("sdpa_backend", args.sdpa_backend, SDPA_BACKENDS)


def residual_cast(args: argparse.Namespace) -> bool:
    """Whether the plan's residual stream is in the autocast dtype (--residual_dtype, as training checks it: one
    line for a value the run's dtype refuses). Under FSDP2's policy the stream is in that dtype anyway."""
    from gptlab.config.train import DTYPES, residual_stream_cast

    if args.residual_dtype not in DTYPES:
        raise unknown_choice("residual_dtype", args.residual_dtype, DTYPES)
    return residual_stream_cast(args.residual_dtype, args.dtype, "none")


def _config(args: argparse.Namespace, extra: list[str], **fixed: Any) -> ModelArchitectureConfig:
    """The architecture of a preset name or a training config file, with --key=value overrides; the
    command's options not given are filled in (``_fill_options``)."""
    options = [k for k in vars(args) if k not in ("preset", "func", "command")]  # its own, named in hints too
    overrides = {
        **parse_overrides(extra, TEXT_KEYS, BOOL_KEYS, [*ARCH_FIELDS, "arch_preset", *options], ALL_KEYS),
        **{k: v for k, v in fixed.items() if v is not None},
    }
    from gptlab.compare import names_weights, resolve_architecture, run_config_json

    weights = names_weights(args.preset)  # a checkpoint or a Hugging Face folder: its weights' architecture
    run_dir = None if weights else run_config_json(args.preset)  # a run directory: what it trained, its batch
    is_file = names_a_file(args.preset) and run_dir is None and not weights
    known = [*ARCH_FIELDS, "arch_preset"] if is_file else ARCH_FIELDS
    options = [k for k in vars(args) if k not in ("preset", "func", "command")]
    for key in overrides:  # a typo of the command's own options is suggested too
        if key in ALL_KEYS and key not in known:
            own = SAME_SETTING.get(key, key)  # its name here, per GPU
            hint = f" (this command's --{own}, per GPU)" if own != key and own in options else ""
            raise ConfigError(
                f"--{key} is a training setting, which this command does not take{hint or vocab_hint(key)}: it "
                f"takes --{', --'.join(options)} and the architecture keys"
            )
        if (count := gpu_count_error(key, overrides[key], options)) is not None:
            raise ConfigError(count)
        if key not in known:
            raise ConfigError(
                f"unknown option --{key}{did_you_mean(key, [*options, *known])}: this command takes "
                f"--{', --'.join(options)} and the architecture keys ({', '.join(ARCH_FIELDS)})"
            )
    file_values = load_config_file(args.preset) if is_file else {}
    if weights:  # a gptlab checkpoint records its run's settings (batch, dtype): planned as that run
        from gptlab.model.convert import weights_record

        record = weights_record(Path(args.preset)) or {}
        config = record.get("config")
        if record.get("format") == "gptlab":
            file_values = dict(config.get("train") or {}) if isinstance(config, dict) else {}
        elif isinstance(config, dict) and "model_args" in record:  # nanoGPT's: its train.py globals, as resumed
            from gptlab.model.nanogpt import nanogpt_train_settings

            file_values = {k: v for k, v in nanogpt_train_settings(config).items() if k in NANOGPT_PLANNED}
    if run_dir is not None:
        file_values = json.loads(run_dir.read_text(encoding="utf-8")).get("train", {})
        if not isinstance(file_values, dict):
            raise ConfigError(f"{str(run_dir)!r}: its 'train' record is a {type(file_values).__name__}, not an object")
        startup = _startup(run_dir.parent)
        hardware = startup.get("hardware") or {}  # what 'auto' resolved to (a CPU's float32)
        for key in ("dtype", "device"):
            if file_values.get(key) == "auto":
                file_values[key] = hardware.get(key) or "auto"
        ranks = (startup.get("training") or {}).get("world_size")
        if getattr(args, "world_size", 0) is None and isinstance(ranks, int) and ranks > 1:
            args.world_size = ranks  # plan's ranks: a distributed run's own (one process's: the default 8)
    if getattr(args, "world_size", 0) is None:
        args.world_size = DEFAULT_WORLD_SIZE
    _fill_options(args, file_values)
    _check_options(args)
    arch = resolve_architecture(args.preset, overrides, file_values if is_file else None)
    for note in arch.notes:  # what the figures assume beyond the config (an unprepared dataset's vocabulary)
        print(f"note: {note}")
    return arch.config


# what plan takes of a nanoGPT checkpoint's config (its globals hold every other setting, under its own rules)
NANOGPT_PLANNED = ("batch_size", "gradient_accumulation_steps", "dtype", "device")


def _startup(run_dir: Path) -> dict[str, Any]:
    """A run's latest startup record (the device, dtype and ranks it trained on; {} without a log)."""
    from gptlab.report import load_run

    try:
        return load_run(run_dir).startup
    except (ConfigError, GptlabError, OSError):  # a damaged or unreadable log: what config.json says is enough
        return {}


def _activations_line(acts: Any, unit: str, scale: float) -> str:
    """The activations row's parts, as they add up to it: each layer's saved tensors, or under checkpointing
    what each block keeps (its input, its autocast weight copy) and the one block backward recomputes."""
    other = f"other {sum(acts.other.values()) / scale:.4f} {unit}"
    if not acts.activation_checkpointing:
        per_layer = ", ".join(f"{k} {v / scale:.4f}" for k, v in acts.per_layer.items())
        return f"activations: {acts.n_layer} layers x {acts.layer_bytes / scale:.4f} {unit} ({per_layer}); {other}"
    copies = acts.per_layer.get("weight_copies", 0)
    kept = acts.checkpoint_input_bytes + copies
    recomputed = {k: v for k, v in acts.per_layer.items() if k != "weight_copies"}
    parts = ", ".join(f"{k} {v / scale:.4f}" for k, v in recomputed.items())
    return (
        f"activations (checkpointed): {acts.n_layer} layers x {kept / scale:.4f} {unit} kept (input "
        f"{acts.checkpoint_input_bytes / scale:.4f}, weight_copies {copies / scale:.4f}); one layer recomputed in "
        f"backward {sum(recomputed.values()) / scale:.4f} {unit} ({parts}); {other}"
    )


DEFAULT_WORLD_SIZE = 8  # plan's GPUs for ddp/zero1/fsdp where neither --world_size nor a run gives them


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "preset",
        nargs="?",
        default="gpt2",
        help=f"one of {', '.join(PRESETS)} (default gpt2), a config file such as config/full_llama_124m.py, "
        "a run directory (its config.json), a checkpoint (ckpt.pt, ckpt-ITER.dcp, nanoGPT's ckpt.pt) or a Hugging "
        "Face model folder",
    )
    p.add_argument(
        "--activation_checkpointing",
        type=bool_argument,
        nargs="?",
        const=True,
        help="per-block activation checkpointing (adds recomputation to HFU, cuts activations; default: "
        "a config file's, else False)",
    )
    p.add_argument(
        "--device_type",
        choices=("cuda", "cpu"),
        help="whose kernels are counted: HFU's recomputation (SDPA's backward on CUDA recomputes QK^T with dropout) "
        "and autocast's rules (default: a config file's device, else cuda; cpu for a run on a CPU)",
    )
    p.add_argument("--gpu", help="accelerator for the throughput estimate, e.g. H100-SXM, A100-PCIe, B200")
    p.add_argument("--mfu", type=float, help=f"model FLOPs utilisation assumed for --gpu (default {DEFAULT_MFU})")
    p.add_argument(
        "--dtype",
        help="autocast dtype: bfloat16, float16 or float32 (default: a config file's, else training's on the device "
        "type: bfloat16 on cuda, float32 on cpu)",
    )


def _print_flops(config: ModelArchitectureConfig, seq_len: int, checkpointing: bool, device_type: str) -> Any:
    from gptlab.telemetry.flops import compute_flops
    from gptlab.telemetry.params import count_parameters

    fl = compute_flops(config, seq_len, activation_checkpointing=checkpointing, device_type=device_type)
    print(f"{config.get_architecture_name()}: {count_parameters(config) / 1e6:.2f}M parameters, seq_len={seq_len}")
    print(f"{'component':28s} {'count':>5s} {'fwd FLOP/token':>16s} {'train FLOP/token':>17s} {'share':>6s}  note")
    for row in fl.table():
        share = "" if row["share_of_matmul"] is None else f"{100 * row['share_of_matmul']:.1f}%"
        fwd, train = format_si(row["forward_flops_per_token"]), format_si(row["training_flops_per_token"])
        print(f"{row['component']:28s} {row['count']:5d} {fwd:>16s} {train:>17s} {share:>6s}  {row['note']}")
    totals = (
        ("training FLOPs/token, full-square attention (PaLM/nanoGPT, MFU)", fl.flops_per_token),
        ("training FLOPs/token, causal-aware attention", fl.flops_per_token_causal),
        ("hardware FLOPs/token (HFU: + recomputation)", fl.hfu_flops_per_token),
        ("non-matmul FLOPs/token (estimate, not in MFU)", fl.non_matmul_flops_per_token),
    )
    for label, value in totals:
        print(f"{label + ':':65s}{format_si(value, 'FLOP')}")
    ratio = fl.attention_flops_per_layer / fl.ffn_flops_per_layer
    print(f"attention/FFN FLOPs per layer: {ratio:.3f}; LM head share of training FLOPs: "
          f"{fl.lm_head_flops / fl.flops_per_token:.1%}")  # fmt: skip
    for caveat in fl.caveats:
        print(f"note: {caveat}")
    return fl


def _throughput_peak(args: argparse.Namespace) -> tuple[Any, str, float] | None:
    """(spec, precision, dense peak) for ``--gpu``, checked with ``--mfu`` before anything is printed."""
    if args.gpu is None:
        given = [f"--{key}" for key in ("mfu", "num_gpus") if getattr(args, key, None) is not None]
        if given:  # it would be silently ignored
            raise ConfigError(
                f"{' and '.join(given)} set the throughput estimate, which needs --gpu (e.g. --gpu=H100-SXM)"
            )
        return None
    from gptlab.telemetry.hardware import get_gpu_spec

    spec = get_gpu_spec(args.gpu)
    return spec, *spec.training_peak(args.gpu, args.dtype)


def _print_throughput(config: ModelArchitectureConfig, args: argparse.Namespace, seq_len: int, gpus: int) -> None:
    from gptlab.telemetry.mfu import expected_tokens_per_sec

    found = _throughput_peak(args)
    if found is None:
        return
    spec, precision, peak = found
    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    tps = expected_tokens_per_sec(config, peak, mfu, num_gpus=gpus, seq_len=seq_len)
    print(f"expected throughput on {gpus} x {spec.key} ({peak / 1e12:g} TFLOPS dense {precision}) at "
          f"{mfu:.0%} MFU: {tps:,.0f} tokens/s ({tps / gpus:,.0f} per GPU)")  # fmt: skip


def _cmd_flops(args: argparse.Namespace, extra: list[str]) -> int:
    if args.num_gpus is not None and args.num_gpus < 1:  # checked before anything is printed
        raise ConfigError(f"num_gpus={args.num_gpus} is invalid: expected an integer >= 1")
    config = _config(args, extra)
    _throughput_peak(args)
    seq_len = config.block_size if args.seq_len is None else args.seq_len
    if seq_len > config.block_size:
        raise ConfigError(
            f"seq_len={seq_len} exceeds block_size={config.block_size}, the model's context: "
            f"pass --block_size={seq_len} to size the model for it"
        )
    _print_flops(config, seq_len, args.activation_checkpointing, args.device_type)
    _print_throughput(config, args, seq_len, args.num_gpus or 1)
    return 0


def _math_path(config: Any, args: argparse.Namespace) -> str:
    """The plan header's note where its SDPA is PyTorch's unfused math path, which stores the (T, T) probabilities."""
    from gptlab.telemetry.activations import unfused_sdpa

    math = config.attention_backend == "sdpa" and unfused_sdpa(config, args.device_type, args.sdpa_backend)
    return " (math path: the T x T probabilities stored)" if math else ""


def _cmd_plan(args: argparse.Namespace, extra: list[str]) -> int:
    from gptlab.telemetry.planner import plan_all_modes, plan_memory

    config = _config(args, extra, block_size=args.block_size)
    _throughput_peak(args)  # a bad --gpu or --mfu before the tables
    common: dict[str, Any] = dict(
        batch_size=args.batch_size,
        dtype=args.dtype,
        activation_checkpointing=args.activation_checkpointing,
        grad_accum_steps=args.grad_accum_steps,
        device_type=args.device_type,
        loss_chunk_size=args.loss_chunk_size,
        residual_cast=residual_cast(args),
        sdpa_backend=args.sdpa_backend,
    )
    plans = plan_all_modes(config, world_size=args.world_size, **common)
    single_accum = getattr(args, "single_gpu_accum_steps", None)
    per_mode = {mode: common for mode in plans}
    if single_accum is not None:  # a config file's gradient_accumulation_steps, all on the one GPU
        per_mode["none"] = {**common, "grad_accum_steps": single_accum}
        plans["none"] = plan_memory(config, parallel="none", world_size=1, **per_mode["none"])
    first = next(iter(plans.values()))
    _print_flops(config, config.block_size, args.activation_checkpointing, args.device_type)
    # a test-sized model in MB: its GB column read 0.000 on every row
    unit, scale = ("GB", GB) if max(p.mode.total for p in plans.values()) >= 0.01 * GB else ("MB", 1e6)
    print(f"\nmemory per GPU in {unit} (1{'e9' if unit == 'GB' else 'e6'} bytes): micro-batch {args.batch_size} x "
          f"{config.block_size} tokens, "
          f"autocast {args.dtype}{' (residual stream too)' if common['residual_cast'] else ''}, AdamW, "
          f"activation checkpointing {args.activation_checkpointing}, "
          f"{config.attention_backend} attention{_math_path(config, args)}, "
          + (f"chunked loss ({args.loss_chunk_size} tokens)" if args.loss_chunk_size else "plain logits"))  # fmt: skip
    header = "".join(f"{f'{m} x{p.world_size}':>12s}" for m, p in plans.items())
    print(f"{'':22s}{header}")
    rows = ("parameters", "gradients", "optimizer", "activations", "loss_backward", "buffers", "comm_buffers")
    labels = {"peak": "peak (estimate)", "total": "sum of all parts"}
    for field in (*rows, "peak", "total"):
        print(
            f"{labels.get(field, field):22s}"
            + "".join(f" {getattr(p.mode, field) / scale:11.3f}" for p in plans.values())  # wider: still apart
        )
        if field == "peak":  # where in the step: a block's backward, the loss's, the embedding's, the end
            print(f"{'  at the':22s}" + "".join(f" {_short_moment(p.mode.peak_at):>11s}" for p in plans.values()))
    print(_activations_line(first.activation_estimate, unit, scale))
    for note in sorted({n for p in plans.values() for n in p.mode.notes}):
        print(f"note: {note}")
    if single_accum is not None:
        shared = f"{args.grad_accum_steps} per GPU on {args.world_size}"
        print(f"note: micro-steps per optimizer step: {single_accum} on one GPU, {shared} "
              f"(gradient_accumulation_steps={single_accum}, shared out)")  # fmt: skip
    if getattr(args, "accum_indivisible", False):
        print(f"note: train.py refuses gradient_accumulation_steps={single_accum} on {args.world_size} GPUs "
              f"(not divisible); the ddp/zero1/fsdp columns plan {args.grad_accum_steps} per GPU")  # fmt: skip
    if args.gpu_memory_gb is not None:
        from gptlab.telemetry.planner import fit_advice

        for mode, p in plans.items():
            advice = fit_advice(
                config, int(args.gpu_memory_gb * 1e9), parallel=mode, world_size=p.world_size, **per_mode[mode]
            )
            print(f"{mode} x{p.world_size}: " + (advice or f"fits in {args.gpu_memory_gb:g} GB"))
    _print_throughput(config, args, config.block_size, args.world_size)
    return 0


def _short_moment(moment: str) -> str:
    """'block 11 backward' -> 'block 11', 'embedding backward' -> 'embed bw': to fit an 11-wide column."""
    if moment.startswith("block "):
        return moment.removesuffix(" backward")
    return moment.replace("embedding", "embed").replace(" backward", " bw")


def _cmd_peak(args: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from gptlab.telemetry.hardware import detect_peak, device_name, measure_peak_flops, precision_key

    if extra:
        raise ConfigError(
            f"'gptlab peak' takes --device, --dtype, --size and --iters (no architecture keys), got {' '.join(extra)}"
        )
    if args.dtype is not None and args.dtype not in AUTOCAST_DTYPES:
        raise unknown_choice("dtype", args.dtype, AUTOCAST_DTYPES)
    for key in ("size", "iters"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ConfigError(f"{key}={getattr(args, key)} is invalid: expected a positive integer")
    from gptlab.device import resolve_device

    # no --device: CUDA, else the CPU (MPS only when asked for)
    device = str(resolve_device(args.device)) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype is None:  # measure the precision a training run on this device would use by default
        from gptlab.device import resolve_dtype

        args.dtype = resolve_dtype("auto", torch.device(device))
    measured = measure_peak_flops(device, args.dtype, size=args.size, iters=args.iters)
    cuda_float32 = torch.device(device).type == "cuda" and precision_key(args.dtype) in ("fp32", "tf32")
    table = detect_peak(device, "tf32" if cuda_float32 else args.dtype)  # measured on TF32, as training runs float32
    # a CPU's figure scales with its threads: training under other OMP_NUM_THREADS (torchrun: 1 a rank) differs
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' if n > 1 else ''}" if torch.device(device).type == "cpu" else ""
    print(f"{device_name(device)} ({table.precision}{threads}): measured {measured / 1e12:.4g} TFLOPS (timed matmul)")
    if table.peak_flops is not None:
        print(f"datasheet dense peak {table.peak_flops / 1e12:g} TFLOPS: measured is {measured / table.peak_flops:.0%}")
    same = " (train with as many threads: torchrun gives each rank 1)" if threads else ""
    # significant digits: a CPU's 0.00087 was printed 0.001, and below 0.0005 as 0.000, which training refuses
    print(f"use --peak_tflops={measured / 1e12:.4g} to compute MFU against the measured ceiling{same}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``flops``, ``plan`` and ``peak`` to the ``gptlab`` command."""
    flops = subparsers.add_parser(
        "flops",
        help="FLOPs per token by component, MFU conventions, attention/FFN ratio",
        description="Per-component FLOPs of PRESET with --key=value overrides, e.g. gptlab flops llama --n_kv_head=4",
    )
    _add_common(flops)
    add_plugins_option(flops)
    flops.add_argument("--seq_len", type=int, help="sequence length (default block_size)")
    flops.add_argument("--num_gpus", type=int, help="GPUs for the throughput estimate with --gpu (default 1)")
    flops.set_defaults(func=_cmd_flops)

    plan = subparsers.add_parser(
        "plan",
        help="memory per GPU for none/ddp/zero1/fsdp, FLOPs and expected throughput",
        description="Predict memory per GPU of PRESET (with --key=value overrides) in every parallel mode.",
    )
    _add_common(plan)
    add_plugins_option(plan)
    plan.add_argument("--batch_size", type=int, help="micro-batch per GPU (default: a config file's, else 12)")
    plan.add_argument("--block_size", type=int, help="sequence length (an architecture override)")
    plan.add_argument(
        "--world_size", type=int, help="GPUs for ddp/zero1/fsdp (default: a multi-rank run directory's own, else 8)"
    )
    plan.add_argument(
        "--grad_accum_steps",
        type=int,
        help="micro-steps per GPU per optimizer step (default: a config file's gradient_accumulation_steps / "
        "--world_size, else 1)",
    )
    plan.add_argument("--gpu_memory_gb", type=float, help="say, per mode, whether the peak fits in this much memory")
    plan.add_argument(
        "--loss_chunk_size",
        type=int,
        help="tokens per chunk of the fused LM head + loss (0: plain logits; default: a config file's, else 0)",
    )
    plan.add_argument(
        "--residual_dtype",
        help="the residual stream's dtype: auto (float32 under autocast), or --dtype's to keep it in bf16/fp16 "
        "(default: a config file's, else auto)",
    )
    plan.add_argument(
        "--sdpa_backend",
        help="the SDPA kernel training asks for: math plans PyTorch's unfused path, which stores the (T, T) "
        "probabilities (a CPU takes it under dropout anyway; default: a config file's, else auto)",
    )
    plan.set_defaults(func=_cmd_plan)

    peak = subparsers.add_parser(
        "peak",
        help="time a large matmul: the achievable FLOP/s of this device",
        description="Time a large square matmul on this device and print the FLOP/s it reached beside the "
        "device's dense datasheet peak (the MFU denominator): how much of the datasheet a matmul can reach here.",
    )
    peak.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    peak.add_argument(
        "--dtype", help="bfloat16, float16 or float32 (default: what training uses there: bf16 on CUDA, fp32 on CPU)"
    )
    peak.add_argument("--size", type=int, help="matrix size (default 8192 on GPU, 1024 on CPU)")
    peak.add_argument(
        "--iters", type=int, default=10, help="timed matmuls after a warm-up; the best one counts (default 10)"
    )
    peak.set_defaults(func=_cmd_peak)


__all__ = ["register"]
