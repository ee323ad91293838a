"""Sampling from a trained checkpoint (``gptlab sample`` and the root ``sample.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.config.model import MAX_SIZE, check_field_types
from gptlab.config.overrides import parse_overrides
from gptlab.errors import CheckpointError, ConfigError, DataError, GptlabError, did_you_mean, first_line
from gptlab.model.gpt import TEMPERATURE_RANGE
from gptlab.plugins import import_plugins


@dataclass
class SampleConfig:
    """nanoGPT's sample.py settings (its keys; fewer, shorter samples by default: 3 x 200 tokens,
    not 10 x 500, since a CPU is the first machine many users sample on)."""

    init_from: str = "resume"  # 'resume' (out_dir/ckpt.pt), a local HF dir / ckpt.pt, a Hub name (gpt2-xl)
    out_dir: str = "out"
    start: str = "\n"  # or "FILE:prompt.txt"
    num_samples: int = 3
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # autocast while sampling; 'auto': bfloat16 (else float16) on CUDA, float32 on CPU
    compile: bool = False  # torch.compile the model's forward (dynamic shapes: the sequence grows)
    plugins: str = ""  # modules / .py files that register the checkpoint's own components (gptlab.plugins)

    def __post_init__(self) -> None:
        from gptlab.config.train import DTYPES, check_device_name
        from gptlab.errors import unknown_choice

        check_field_types(self)
        check_device_name(self.device)
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, DTYPES)
        for key in ("out_dir", "init_from"):
            if not getattr(self, key).strip():
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: expected a non-empty name or path")
        if not 0 < self.num_samples <= MAX_SIZE:
            raise ConfigError(f"num_samples={self.num_samples} is invalid: expected an integer in [1, 2**31 - 1]")
        if not 0 < self.max_new_tokens <= MAX_SIZE:  # 0 printed the prompt back as a "sample"
            raise ConfigError(f"max_new_tokens={self.max_new_tokens} is invalid: expected an integer in [1, 2**31 - 1]")
        low, high = TEMPERATURE_RANGE  # past these float32 logits overflow
        if not (self.temperature == 0 or low <= self.temperature <= high):
            raise ConfigError(
                f"temperature={self.temperature} is invalid: expected 0 (greedy) or a float in [{low}, {high}]"
            )
        if not 0 <= self.seed < 2**64:  # one generator, seeded once, draws every sample (nanoGPT's sample.py)
            raise ConfigError(f"seed={self.seed} is invalid: expected an integer in [0, 2**64)")
        if self.top_k is not None and self.top_k <= 0:
            raise ConfigError(f"top_k={self.top_k} is invalid: expected a positive integer or None")


def parse_sample_args(args: list[str]) -> SampleConfig:
    """``[CONFIG_FILE ...] [--key=value ...]`` as nanoGPT's sample.py. A config file runs (so the
    components it registers exist) and gives its sample keys; a training file's other keys, and its
    ``init_from`` unless a checkpoint or Hub name, are the training's and left out."""
    from gptlab.config.files import load_config_file, training_defaults
    from gptlab.config.resolve import split_args
    from gptlab.config.train import bool_fields, text_fields

    fields = [f.name for f in dataclasses.fields(SampleConfig)]
    files, overrides = split_args(args, bool_fields(SampleConfig), fields)
    values: dict[str, Any] = {}
    # a file may read sample.py's defaults and earlier files' keys (a training file, training's defaults)
    defaults = {f.name: f.default for f in dataclasses.fields(SampleConfig) if f.default is not dataclasses.MISSING}
    for path in files:
        from_file = load_config_file(path, keys=fields, visible={**training_defaults(), **defaults, **values})
        if from_file.get("init_from") == "scratch":
            del from_file["init_from"]
        values.update({k: v for k, v in from_file.items() if k in fields})
    values.update(parse_overrides(overrides, text_fields(SampleConfig), bool_fields(SampleConfig), fields))
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown sample key {key!r}{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}")
    cfg = SampleConfig(**values)
    import_plugins(cfg.plugins)
    return cfg


def load_model_for_sampling(cfg: SampleConfig, device: torch.device) -> tuple[Any, dict[str, Any] | None]:
    """The model and the tokenizer meta recorded with it (None where nothing says how to decode)."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.model.convert import (
        check_init_source,
        gptlab_checkpoint_path,
        model_from_checkpoint,
        resolve_pretrained,
    )
    from gptlab.model.gpt import ConfigurableGPT
    from gptlab.model.nanogpt import model_from_nanogpt

    resume = cfg.init_from == "resume"
    check_init_source(cfg.init_from, ("resume",))
    source = Path(cfg.out_dir if resume else cfg.init_from).expanduser()
    found = gptlab_checkpoint_path(source) if source.exists() else None
    nanogpt = _nanogpt_checkpoint(found)
    if nanogpt is not None:  # nanoGPT's ckpt.pt, sampled as nanoGPT's sample.py does
        from gptlab.checkpoint import check_zip_crc

        assert found is not None
        check_zip_crc(found)  # it was only peeked at (memory-mapped): now its weights are used
        model = model_from_nanogpt(nanogpt, dropout=0.0)
        return model.eval().to(device), _nanogpt_tokenizer(nanogpt, model.config.vocab_size)
    # by the path given: a run directory's latest is resolved again if a live run replaces it meanwhile
    ckpt = load_checkpoint(source, optimizer=False) if resume else _gptlab_checkpoint(source if found else None)
    if ckpt is not None:  # this run's or another gptlab run's: it records its tokenizer
        model = model_from_checkpoint(ckpt, dropout=0.0)
        tokenizer = ckpt.get("tokenizer")
    else:
        source = resolve_pretrained(cfg.init_from)  # a Hub model's: its folder in Hugging Face's cache
        model = ConfigurableGPT.from_pretrained(source, dropout=0.0)
        tokenizer = _tokenizer_beside(source) or gpt2_if_its_vocabulary(model.config.vocab_size, source)
        if tokenizer is None:  # a Hugging Face model of its own vocabulary (a LLaMA's 32000): not "the checkpoint's"
            what = f"a {model.config.vocab_size}-token vocabulary, not GPT-2's (50257),"
            if model.config.vocab_size in GPT2_VOCAB_SIZES:  # refused for the other tokenizer its folder holds
                from gptlab.data.tokenizers import hf_folder_tokenizer

                what = f"a tokenizer of its own ({hf_folder_tokenizer(source)[0]}), not GPT-2's BPE,"  # type: ignore[index]
            raise CheckpointError(
                f"{cfg.init_from!r} has {what} and no "
                "gptlab tokenizer is recorded with it: gptlab samples with GPT-2's BPE or a gptlab run's own "
                "tokenizer (a model of another vocabulary: its own tokenizer, with transformers' generate)"
            )
    return model.eval().to(device), tokenizer


def _tokenizer_beside(directory: Path) -> dict[str, Any] | None:
    """The tokenizer a ``gptlab export --hf`` directory's ckpt.pt records (a char vocabulary has no
    Hugging Face files), read memory-mapped; None elsewhere."""
    from gptlab.checkpoint import CHECKPOINT_NAME

    ckpt = _peek_checkpoint(directory / CHECKPOINT_NAME)
    return ckpt.get("tokenizer") if ckpt is not None and ckpt.get("format") == "gptlab" else None


GPT2_VOCAB_SIZES = (50257, 50304)  # GPT-2's, and nanoGPT's padding of it


def gpt2_if_its_vocabulary(vocab_size: int, folder: Path | None = None) -> dict[str, Any] | None:
    """Foreign weights record no tokenizer: GPT-2's (nanoGPT's padded 50304 too) is the one we know, unless the
    weights' ``folder`` (a Hugging Face model's) holds a tokenizer of its own that is not GPT-2's: a GPT-2
    retrained for another language keeps the 50257 tokens with its own BPE, which GPT-2's ids are other text to."""
    if vocab_size not in GPT2_VOCAB_SIZES:
        return None
    if folder is not None and Path(folder).is_dir():
        from gptlab.data.tokenizers import hf_folder_tokenizer

        own = hf_folder_tokenizer(Path(folder))
        if own is not None and not own[1]:
            return None
    return {"name": "gpt2"}


def _peek_checkpoint(path: Path | None) -> dict[str, Any] | None:
    """The ckpt.pt file at ``path`` loaded memory-mapped (weights_only; its tensors, optimizer state
    included, are not read for a look at its keys); None if there is none, or torch cannot map it (a
    legacy format: whoever loads it next says why)."""
    from gptlab.model.loading import read_torch_checkpoint

    if path is None or not path.is_file():
        return None
    try:
        ckpt = read_torch_checkpoint(path, mmap=True)
    except CheckpointError:
        return None
    return ckpt if isinstance(ckpt, dict) else None


def _nanogpt_checkpoint(found: Path | None) -> dict[str, Any] | None:
    """The nanoGPT checkpoint at ``found`` (a ckpt.pt file), else None."""
    ckpt = _peek_checkpoint(found)
    return ckpt if ckpt is not None and "model_args" in ckpt and ckpt.get("format") != "gptlab" else None


def _nanogpt_tokenizer(ckpt: dict[str, Any], vocab_size: int) -> dict[str, Any] | None:
    """How nanoGPT's sample.py decodes: ``data/DATASET/meta.pkl`` (relative to the working directory)
    when the checkpoint's dataset has one, else GPT-2. A gptlab-prepared ``meta.json`` there works too."""
    from gptlab.data.storage import read_meta
    from gptlab.data.tokenizers import read_nanogpt_meta

    config = ckpt.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if isinstance(dataset, str) and dataset:
        directory = Path("data") / dataset
        if (directory / "meta.pkl").is_file():
            return read_nanogpt_meta(directory / "meta.pkl").to_meta()
        if (directory / "meta.json").is_file():
            return read_meta(directory)["tokenizer"]
    meta = gpt2_if_its_vocabulary(vocab_size)
    if meta is None:
        where = f"data/{dataset}/meta.pkl" if isinstance(dataset, str) and dataset else "a meta.pkl"
        raise CheckpointError(
            f"this nanoGPT checkpoint has a {vocab_size}-token vocabulary and {where} (relative to the "
            "working directory, as nanoGPT's sample.py reads it) is not there to decode it: run from "
            "nanoGPT's directory"
        )
    return meta


def _gptlab_checkpoint(found: Path | None) -> dict[str, Any] | None:
    """The gptlab checkpoint ``found`` is or names (a ckpt.pt, DCP or run directory's latest), else None."""
    from gptlab.checkpoint import load_checkpoint, weights_path

    if found is None:
        return None
    try:
        return load_checkpoint(found, optimizer=False)
    except CheckpointError:
        # a damaged gptlab checkpoint is said as one (from_pretrained loaded it unchecked, and blamed its vocabulary
        # or failed on its arch record); another format's (nanoGPT's, a bare state dict) goes to from_pretrained
        if _records_gptlab_format(weights_path(found)):
            raise
        return None


def _records_gptlab_format(found: Path) -> bool:
    """Whether a file that load_checkpoint refused says it is gptlab's (read as it is, unchecked)."""
    record = _peek_checkpoint(found)
    return record is not None and record.get("format") == "gptlab"


def encode_sample_prompt(tokenizer_meta: dict[str, Any] | None, prompt: str) -> tuple[Any, list[int]]:
    """The tokenizer and the prompt's ids; a training run with sample_at_end calls it at start, so a prompt
    its vocabulary cannot encode is refused before the training rather than after it."""
    from gptlab.data.tokenizers import load_tokenizer

    if tokenizer_meta is None:
        raise CheckpointError("the checkpoint records no tokenizer, so its tokens cannot be decoded")
    tok = load_tokenizer(tokenizer_meta)
    try:
        return tok, tok.encode_prompt(prompt)
    except DataError as e:  # a char vocabulary without one of the prompt's characters
        default = " (a newline, nanoGPT's default prompt: give one the text has)" if prompt == "\n" else ""
        raise ConfigError(f"the prompt (--start / sample_prompt) cannot be encoded{default}: {e}") from None


def generate_text(
    model: Any,
    tokenizer_meta: dict[str, Any] | None,
    prompt: str,
    max_new_tokens: int,
    *,
    device: torch.device,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int | None = 1337,
    eager: bool = True,
) -> str:
    """Encode ``prompt``, sample, decode; the model's train/eval mode is restored afterwards. ``seed``: drawn
    from a generator seeded so, the caller's RNG state left as it was; None: from the current RNG state, as
    a series of samples is (``sample``). ``eager``: a model compiled for training runs eagerly here (see
    below); ``sample --compile`` compiles for this."""
    tok, ids = encode_sample_prompt(tokenizer_meta, prompt)
    # An empty prompt: an unconditional sample starts after an end-of-text token (a document boundary,
    # as in the training data), which the text leaves out; a vocabulary without one starts from id 0.
    seeded = not ids
    if seeded:
        ids = [tok.eot_token if tok.eot_token is not None else 0]
    x = torch.tensor([ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    gen = _forked_rng(device) if seed is not None else contextlib.nullcontext()
    # A model compiled for training runs eagerly here: decoding grows the sequence a token at a time, which
    # would recompile for dynamic shapes and, under CUDA-graph modes, record one graph per length.
    stance = torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()
    with gen, stance:
        if seed is not None:
            torch.manual_seed(seed)
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, vocab_limit=tok.vocab_size)
    model.train(was_training)
    out = y[0].tolist()
    return tok.decode(out[1:] if seeded and tok.eot_token is not None else out)


def sample(cfg: SampleConfig, on_sample: Callable[[str], None] | None = None) -> list[str]:
    """``cfg.num_samples`` texts; ``on_sample`` gets each as it is drawn (the command prints it then, as
    nanoGPT's sample.py does, so a long sampling shows progress and a Ctrl-C keeps what was printed)."""
    from gptlab.device import resolve_device, resolve_dtype
    from gptlab.parallel import PT_DTYPES

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    prompt = cfg.start
    if prompt.startswith("FILE:"):  # nanoGPT's way of giving a long prompt; read before the model is loaded
        try:
            prompt = Path(prompt[5:]).expanduser().read_text(encoding="utf-8-sig")  # -sig: as prepare reads text
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"start={cfg.start!r}: cannot read the prompt file ({type(e).__name__}: {e})") from None
    with _forked_rng(device):  # building the model draws initial weights: the caller's RNG is left as it was
        model, tokenizer = load_model_for_sampling(cfg, device)
    _check_finite_weights(model, cfg.out_dir if cfg.init_from == "resume" else cfg.init_from)
    if cfg.compile:  # in place, so that generate()'s own calls of the model run compiled (not only model(...))
        model.compile(dynamic=True)
    low = dtype != "float32"
    # seeded once, the samples drawn one after another from that generator: nanoGPT's sample.py, whose
    # samples the same checkpoint and seed reproduce on CUDA (on a CPU its model's initial weights, drawn after
    # its seed, move the generator first: docs/training.md)
    with _forked_rng(device), torch.autocast(device.type, dtype=PT_DTYPES[dtype]) if low else contextlib.nullcontext():
        torch.manual_seed(cfg.seed)
        texts = []
        for _ in range(cfg.num_samples):
            try:
                text = generate_text(
                    model,
                    tokenizer,
                    prompt,
                    cfg.max_new_tokens,
                    device=device,
                    temperature=cfg.temperature,
                    top_k=cfg.top_k,
                    seed=None,
                    eager=not cfg.compile,
                )
            except RuntimeError as e:  # torch.multinomial's check: finite weights whose logits overflowed
                if "probability tensor contains" not in str(e):
                    raise
                raise GptlabError(
                    f"the model's next-token probabilities are not finite ({first_line(e)}) under dtype={dtype}"
                    + (": its logits overflow it; try --dtype=float32" if low else "")
                ) from None
            texts.append(text)
            if on_sample is not None:
                on_sample(texts[-1])
        return texts


def _check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Weights that hold NaN or inf (a diverged run's, a damaged file's) give no probabilities to sample from:
    one line naming the first such tensor, not torch.multinomial's RuntimeError from inside generation."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"the weights of {source!r} are not finite ({name} holds NaN or inf): nothing can be sampled from "
                "them; sample an earlier checkpoint (keep_checkpoints keeps ckpt-ITER.pt files)"
            )


def _forked_rng(device: torch.device) -> Any:
    """The RNG state (CPU, and the CUDA devices' when sampling there) restored on exit."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    # the sampling device alone: with no list, fork_rng warns on a machine of several GPUs (once per rank)
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])
