"""Weights in and out (gptlab.model.convert and the formats it reads: hf, nanogpt, loading): parity with
transformers' GPT-2 and LLaMA and with nanoGPT checkpoints.

The references are randomly initialised ``transformers`` models built from configs, so
nothing is downloaded. Logits must match to 1e-4 in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gptlab import CheckpointError, ConfigError, ConfigurableGPT, get_debug_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

TOL = 1e-4
GENERATION = "generation_config.json"


def _logits(model: ConfigurableGPT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, x)[0]


def _hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def _gpt2(**kw) -> transformers.GPT2LMHeadModel:
    cfg = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=97, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    with torch.no_grad():  # random biases and norm parameters, so that a mix-up cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    return model


def _llama(**kw) -> transformers.LlamaForCausalLM:
    cfg = dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        vocab_size=97,
        rms_norm_eps=1e-6,
        rope_theta=5000.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    cfg.update(kw)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    return model


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 24))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"activation_function": "gelu"},
        {"tie_word_embeddings": False},
        {"n_inner": 96},
        {"layer_norm_epsilon": 0.1},
        {"reorder_and_upcast_attn": True},  # the same attention, its scores in float32
    ],
)
def test_gpt2_import_matches_transformers(kw: dict, tokens: torch.Tensor) -> None:
    hf = _gpt2(**kw)
    ours = ConfigurableGPT.from_pretrained(hf)
    assert ours.config.position_encoding == "learned_absolute" and ours.config.bias
    assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_key_value_heads": 4},
        {"num_key_value_heads": 1},
        {"tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True},
        {"rms_norm_eps": 0.1},
    ],
)
def test_llama_import_matches_transformers(kw: dict, tokens: torch.Tensor) -> None:
    hf = _llama(**kw)
    ours = ConfigurableGPT.from_pretrained(hf)
    assert ours.config.kv_heads == hf.config.num_key_value_heads and ours.config.rope_theta == 5000.0
    assert ours.config.norm_eps == kw.get("rms_norm_eps", 1e-6) and ours.config.ffn_hidden_dim == 176
    assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL


@pytest.mark.parametrize("make", [_gpt2, _llama])
def test_export_round_trips_through_transformers(make, tokens: torch.Tensor, tmp_path: Path) -> None:
    hf = make(bos_token_id=3, eos_token_id=5, pad_token_id=7)  # the source's special ids, kept
    ours = ConfigurableGPT.from_pretrained(hf)
    ours.save_pretrained(tmp_path / "export")
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"config.json", "model.safetensors", GENERATION}
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "export").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # not safetensors' private 0600
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(back) is type(hf)
    assert (_hf_logits(back, tokens) - _logits(ours, tokens)).abs().max() <= TOL
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    assert [getattr(back.config, k) for k in ids] == [3, 5, 7]
    assert [getattr(back.generation_config, k) for k in ids] == [3, 5, 7]  # as transformers' own save writes them
    # and a local directory loads back into gptlab unchanged
    again = ConfigurableGPT.from_pretrained(tmp_path / "export")
    assert again.config == ours.config
    assert torch.equal(_logits(again, tokens), _logits(ours, tokens))


def test_loaded_weights_are_not_drawn_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """from_pretrained loads every weight: GPT-2's normal init of them first was seconds at 350M, thrown away."""
    hf = _gpt2()
    hf.save_pretrained(tmp_path / "hf")
    drawn: list[tuple] = []
    normal = torch.nn.init.normal_

    def draw(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = args[0] if args else kwargs["tensor"]
        if not t.is_meta:  # (the meta model of the shape checks: no memory, nothing drawn)
            drawn.append(tuple(t.shape))
        return normal(*args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", draw)
    ours = ConfigurableGPT.from_pretrained(str(tmp_path / "hf"))
    assert drawn == [(97, 64), (32, 64)]  # nn.Embedding's own constructor only: none of GPT-2's init (11 more)
    drawn.clear()
    ConfigurableGPT(ours.config)  # a model to train still gets GPT-2's init
    assert len(drawn) == 2 + 11


def test_transformers_save_pretrained_directory_loads(tokens: torch.Tensor, tmp_path: Path) -> None:
    hf = _llama()
    hf.save_pretrained(tmp_path / "hf")
    ours = ConfigurableGPT.from_pretrained(str(tmp_path / "hf"))
    assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL


@pytest.mark.parametrize(("preset", "n_kv_head"), [("gpt2", None), ("llama", None), ("llama", 2)])
@pytest.mark.parametrize("norm_eps", [None, 0.1])  # None: the preset's
def test_fresh_gptlab_model_exports(
    preset: str, n_kv_head: int | None, norm_eps: float | None, tokens: torch.Tensor, tmp_path: Path
) -> None:
    eps = {} if norm_eps is None else {"norm_eps": norm_eps}
    ours = ConfigurableGPT(get_debug_config(preset, vocab_size=97, n_kv_head=n_kv_head, **eps)).eval()
    ours.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (_hf_logits(back, tokens) - _logits(ours, tokens)).abs().max() <= TOL
    # a 97-token vocabulary has no GPT-2 <|endoftext|>: no special ids (transformers' defaults would say 50256 or 1/2)
    assert (back.config.bos_token_id, back.config.eos_token_id) == (None, None)


@pytest.mark.parametrize("normalization", ["layernorm_nobias", "layernorm"])
def test_a_model_without_biases_exports_as_gpt2_with_zero_biases(
    normalization: str, tokens: torch.Tensor, tmp_path: Path
) -> None:
    """nanoGPT's default model (bias=False: no Linear or LayerNorm biases; exact GELU in its config files' runs)
    was refused ("no exact Hugging Face equivalent"); HF's GPT-2 with zero biases computes it exactly."""
    config = get_debug_config("gpt2", vocab_size=97, bias=False, normalization=normalization, gelu_approximate="none")
    ours = ConfigurableGPT(config).eval()
    ours.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == "GPT2LMHeadModel" and back.config.activation_function == "gelu"
    assert (_hf_logits(back, tokens) - _logits(ours, tokens)).abs().max() <= TOL
    biases = [p for name, p in back.named_parameters() if name.endswith(".bias")]
    assert biases and all(not p.any() for p in biases)
    again = ConfigurableGPT.from_pretrained(tmp_path)  # back into gptlab: GPT-2 with (zero) biases, the same model
    assert again.config.bias and again.config.normalization == "layernorm"
    assert (_logits(again, tokens) - _logits(ours, tokens)).abs().max() <= TOL


def test_export_names_gpt2_endoftext_where_the_vocabulary_has_it(tmp_path: Path) -> None:
    ConfigurableGPT(get_debug_config("gpt2", vocab_size=50304)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (50256, 50256)


def test_special_ids_follow_the_training_tokenizer() -> None:
    from gptlab.model.hf import special_tokens_for

    def bos_eos(tokenizer: dict | None, vocab: int) -> tuple:
        ids = special_tokens_for(tokenizer, vocab)
        return ids["bos_token_id"], ids["eos_token_id"]

    assert bos_eos({"name": "gpt2", "vocab_size": 50257, "eot_token": 50256}, 50304) == (50256, 50256)
    assert bos_eos({"name": "char", "stoi": {}}, 60000) == (None, None)  # a char vocabulary has no end-of-text
    assert bos_eos(None, 50304) == (50256, 50256) and bos_eos(None, 97) == (None, None)  # no tokenizer known


def test_given_special_ids_are_checked_as_transformers_reads_them(tmp_path: Path) -> None:
    """save_pretrained(special_tokens={'eos': 5}) wrote every id null (the misspelt key ignored, the default lost),
    and an id past the vocabulary a config transformers flags on load."""
    model = ConfigurableGPT(get_debug_config("gpt2", vocab_size=128))
    for given, said in (
        ({"eos": 5}, r"^special_tokens: unknown key 'eos' \(keys: bos_token_id, eos_token_id, pad_token_id\)$"),
        ({"eos_token": 5}, r"unknown key 'eos_token' \(did you mean 'eos_token_id'\?\)$"),
        ({"eos_token_id": 999}, r"special_tokens\['eos_token_id'\]=999 is invalid: .* in \[0, 128\), or a list"),
        ({"eos_token_id": True}, r"=True is invalid"),
        ({"eos_token_id": [5, 999]}, r"=\[5, 999\] is invalid: .*, or a list of them for eos_token_id$"),
        ({"bos_token_id": [5, 6]}, r"special_tokens\['bos_token_id'\]=\[5, 6\] is invalid: .* in \[0, 128\)$"),
    ):
        with pytest.raises(ConfigError, match=said):
            model.save_pretrained(tmp_path / "refused", special_tokens=given)
    assert not (tmp_path / "refused").exists()
    model.save_pretrained(tmp_path / "ok", special_tokens={"eos_token_id": 5, "pad_token_id": None})
    written = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert (written["eos_token_id"], written["pad_token_id"], written["bos_token_id"]) == (5, None, None)
    model.save_pretrained(tmp_path / "list", special_tokens={"eos_token_id": [5, 6]})  # LLaMA-3-Instruct's form,
    assert json.loads((tmp_path / "list" / "config.json").read_text())["eos_token_id"] == [5, 6]  # as imported


def test_special_ids_survive_a_copy_and_come_from_a_checkpoints_tokenizer(tmp_path: Path) -> None:
    """A copy of an imported model exported 50256 (by vocabulary size) for the source's own ids, and a model
    loaded from a run's checkpoint ignored the tokenizer it records (a 52k-character vocabulary: 50256 is a
    character), where `gptlab export --hf` of the same run named none."""
    from gptlab.model.convert import model_from_checkpoint

    hf = _llama(vocab_size=60000, bos_token_id=59000, eos_token_id=59001)
    copy = ConfigurableGPT.from_pretrained(ConfigurableGPT.from_pretrained(hf))
    copy.save_pretrained(tmp_path / "copy")
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (59000, 59001)
    model = ConfigurableGPT(get_debug_config("gpt2", vocab_size=52224))
    ckpt = {"arch": model.config.to_dict(), "model": model.state_dict(), "tokenizer": {"name": "char", "stoi": {}}}
    model_from_checkpoint(ckpt).save_pretrained(tmp_path / "char")
    config = json.loads((tmp_path / "char" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (None, None)


def test_export_of_architecture_without_hf_equivalent_fails_clearly(tmp_path: Path) -> None:
    for overrides in ({"position_encoding": "alibi"}, {"norm_position": "post"}, {"n_kv_head": 2}):
        model = ConfigurableGPT(get_debug_config("gpt2", **overrides))
        with pytest.raises(ConfigError, match="no exact Hugging Face equivalent"):
            model.save_pretrained(tmp_path)
    # the setting that keeps it from the nearest one is named
    with pytest.raises(ConfigError, match=r"the nearest, GPT-2, differs in normalization='rmsnorm' \('layernorm' or"):
        ConfigurableGPT(get_debug_config("gpt2", normalization="rmsnorm")).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"the nearest, LLaMA, differs in ffn_type='geglu' \('swiglu' there\)$"):
        ConfigurableGPT(get_debug_config("llama", ffn_type="geglu")).save_pretrained(tmp_path)
    from gptlab.model.attention import ATTENTION_BACKEND_REGISTRY

    def capped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: object, dropout_p: float) -> torch.Tensor:
        """Soft-capped scores: a LLaMA in every other respect, but not what transformers computes."""
        scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).tanh() * 5
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v

    ATTENTION_BACKEND_REGISTRY["capped_t"] = capped
    try:
        for preset in ("gpt2", "llama"):
            model = ConfigurableGPT(get_debug_config(preset, attention_backend="capped_t"))
            with pytest.raises(ConfigError, match="attention_backend='capped_t' is a registered backend"):
                model.save_pretrained(tmp_path)
        # beside other reasons, every one is named (the backend's alone sent its way out into the next refusal)
        with pytest.raises(ConfigError, match=r"differs in normalization='layernorm' .*, attention_backend='capped"):
            ConfigurableGPT(
                get_debug_config("llama", attention_backend="capped_t", normalization="layernorm")
            ).save_pretrained(tmp_path)
        # the way out the message names: the same weights under a built-in backend (here it computes otherwise)
        sdpa = ConfigurableGPT.from_pretrained(model, attention_backend="sdpa")
        assert sdpa.config.attention_backend == "sdpa" and torch.equal(sdpa.wte.weight, model.wte.weight)
    finally:
        del ATTENTION_BACKEND_REGISTRY["capped_t"]
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------- nanoGPT
def _nanogpt_checkpoint(hf: transformers.GPT2LMHeadModel, bias: bool = True, prefix: str = "") -> dict:
    """What nanoGPT's train.py saves: nn.Linear weights (out, in), its causal-mask buffers,
    model_args, and with compile=True the ``_orig_mod.`` prefix on every key (``prefix``; a fork that
    saved its DDP wrapper adds ``module.``)."""
    c = hf.config
    state = {}
    for key, value in hf.state_dict().items():
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.t().contiguous()  # HF Conv1D (in, out) -> nanoGPT Linear (out, in)
        if not bias and key.endswith("bias"):
            continue
        state[key] = value
    for i in range(c.n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(c.n_positions, c.n_positions)).view(
            1, 1, c.n_positions, c.n_positions
        )
    state = {prefix + k: v for k, v in state.items()}
    model_args = dict(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        block_size=c.n_positions,
        bias=bias,
        vocab_size=c.vocab_size,
        dropout=0.0,
    )
    return {
        "model": state,
        "optimizer": {"state": {}, "param_groups": []},
        "model_args": model_args,
        "iter_num": 100,
        "best_val_loss": torch.tensor(2.5),
        "config": {"dataset": "shakespeare_char"},
    }


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module._orig_mod."])
@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_checkpoint_matches(bias: bool, prefix: str, tokens: torch.Tensor, tmp_path: Path) -> None:
    hf = _gpt2(activation_function="gelu")  # nanoGPT's MLP uses exact GELU
    if not bias:
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
    path = tmp_path / "ckpt.pt"
    torch.save(_nanogpt_checkpoint(hf, bias=bias, prefix=prefix), path)
    for src in (path, tmp_path, str(path)):
        ours = ConfigurableGPT.from_pretrained(src)
        assert ours.config.normalization == ("layernorm" if bias else "layernorm_nobias")
        assert ours.config.gelu_approximate == "none"
        assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL


class _NanoGPTConfig:
    """nanoGPT's GPTConfig fields (a dataclass there): what its GPT object carries as ``.config``."""

    def __init__(self, hf: transformers.GPT2LMHeadModel) -> None:
        args = _nanogpt_checkpoint(hf)["model_args"]
        self.__dict__.update(args)


class _NanoGPT(torch.nn.Module):
    """A stand-in for nanoGPT's in-memory GPT: its ``config`` and its state dict (names, Linear layout, mask
    buffers), which is all from_pretrained reads."""

    def __init__(self, hf: transformers.GPT2LMHeadModel) -> None:
        super().__init__()
        self.config = _NanoGPTConfig(hf)
        self._state = _nanogpt_checkpoint(hf)["model"]

    def state_dict(self, *args, **kwargs) -> dict:  # type: ignore[override]
        return dict(self._state)


def test_in_memory_models_of_every_kind_load(tokens: torch.Tensor) -> None:
    """A nanoGPT GPT object, a ConfigurableGPT (a copy) and a torch.compile'd one (the module it wraps) load
    like their checkpoints; the nanoGPT config was read as transformers' (an AttributeError on to_dict)."""
    hf = _gpt2(activation_function="gelu")
    ours = ConfigurableGPT.from_pretrained(_NanoGPT(hf), dict(dropout=0.0))
    assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL
    ours.vocab_limit = 40
    for src in (ours, torch.compile(ours)):  # compiling wraps without compiling anything yet
        copy = ConfigurableGPT.from_pretrained(src, dropout=0.1)
        assert copy is not ours and copy.config.dropout == 0.1 and copy.vocab_limit == 40
        assert torch.equal(_logits(copy, tokens), _logits(ours, tokens))
        assert copy.wte.weight.data_ptr() != ours.wte.weight.data_ptr()
    with pytest.raises(CheckpointError, match="cannot load weights from a Linear: expected"):
        ConfigurableGPT.from_pretrained(torch.nn.Linear(2, 2))


def test_from_pretrained_overrides(tmp_path: Path) -> None:
    """Only what leaves the outputs alone may be overridden: an activation, a norm eps or a RoPE theta
    would change them as surely as a width."""
    hf = _gpt2()
    ours = ConfigurableGPT.from_pretrained(hf, dropout=0.0, attention_backend="manual")
    assert ours.config.dropout == 0.0 and ours.config.attention_backend == "manual"
    assert ConfigurableGPT.from_pretrained(hf).config.dropout == hf.config.resid_pdrop  # the source's, as transformers
    nanogpt_form = ConfigurableGPT.from_pretrained(hf, dict(dropout=0.0))  # nanoGPT's override_args
    assert nanogpt_form.config.dropout == 0.0
    for key, value in dict(n_layer=3, activation="relu", gelu_approximate="none", norm_eps=0.5).items():
        with pytest.raises(ConfigError, match=f"{key} cannot be overridden .* only attention_backend, dropout"):
            ConfigurableGPT.from_pretrained(hf, **{key: value})
    with pytest.raises(ConfigError, match="rope_theta cannot be overridden"):
        ConfigurableGPT.from_pretrained(_llama(), rope_theta=1e6)
    with pytest.raises(ConfigError, match=r"^unknown architecture key 'dropuot' \(did you mean 'dropout'\?\)"):
        ConfigurableGPT.from_pretrained(hf, dropuot=0.1)  # was: 'dropuot cannot be overridden (the weights fix it)'


def test_tied_config_with_a_different_head_loads_untied_as_transformers(tokens: torch.Tensor, tmp_path: Path) -> None:
    """tie_word_embeddings=true with an lm_head.weight in the file that differs: transformers 5 leaves the
    two untied (and warns); so do we. The shared tensor used to take the file's head, silently."""
    from safetensors.torch import load_file, save_file

    hf = _llama(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    weights = {k: v.clone() for k, v in load_file(tmp_path / "model.safetensors").items()}
    weights["lm_head.weight"] = torch.randn_like(weights["model.embed_tokens.weight"])
    (tmp_path / "model.safetensors").unlink()  # not rewritten under the pages load_file mapped (safetensors 0.4)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="loaded untied, as transformers 5 does"):
        ours = ConfigurableGPT.from_pretrained(tmp_path)
    assert not ours.config.weight_tying and torch.equal(ours.wte.weight, weights["model.embed_tokens.weight"])
    if int(transformers.__version__.split(".")[0]) >= 5:  # transformers 4 ties them, the file's head unused
        reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
        assert (_logits(ours, tokens) - _hf_logits(reference, tokens)).abs().max() <= TOL


# ---------------------------------------------------------------------- errors
def test_not_a_checkpoint_gives_one_line_errors(tmp_path: Path, offline_hub) -> None:
    cases = []
    cases.append(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    cases.append(tmp_path / "empty")
    (tmp_path / "text.pt").write_text("hello")
    cases.append(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    cases.append(tmp_path / "other.pt")
    hf = _gpt2()
    torch.save(_nanogpt_checkpoint(hf), tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:5000])
    cases.append(tmp_path / "truncated.pt")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    cases.append(bad_json)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases.append(bert)
    cases.append(bert / "config.json")
    for src in [*cases, "not-a-model", 42]:
        with pytest.raises(CheckpointError) as info:
            ConfigurableGPT.from_pretrained(src)
        msg = str(info.value)
        assert "\n" not in msg and ("expected" in msg or "supported" in msg), msg
        assert "objects beyond tensors" not in msg, msg  # a JSON file is no unsafe pickle
    with pytest.raises(CheckpointError, match=r"\(a model's config.json: pass its folder, '.*bert'\)"):
        ConfigurableGPT.from_pretrained(bert / "config.json")
    with pytest.raises(CheckpointError, match=r"text.pt' could not be read as a checkpoint \(not a torch.save file\)"):
        ConfigurableGPT.from_pretrained(tmp_path / "text.pt")  # (its complaint was about a byte: KeyError 104)
    with pytest.raises(CheckpointError, match=r"truncated.pt' could not be read .* \(a torch.save archive cut short"):
        ConfigurableGPT.from_pretrained(tmp_path / "truncated.pt")  # a torch.save archive cut short: torch's reason
    for name in ("gpt2", "someone/tiny-model"):  # Hub names, not in the (offline) cache
        with pytest.raises(CheckpointError, match=r"cannot get .* from the Hugging Face Hub .*HF_HUB_OFFLINE is set"):
            ConfigurableGPT.from_pretrained(name)


def test_hub_error_without_offline_mode_says_how_to_read_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known: " + "x" * 300)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError, match=r"\(OSError: .*x{300}\); with no network, HF_HUB_OFFLINE=1 reads"):
        ConfigurableGPT.from_pretrained("gpt2")


def test_hub_names_and_local_paths() -> None:
    from gptlab.model.convert import hub_repo_id

    assert (
        hub_repo_id("gpt2-xl") == "openai-community/gpt2-xl" and hub_repo_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    )
    for local in (
        "out/ckpt.pt",
        "ckpt.pt",
        "./out/run",
        "/abs/dir",
        "a/b/c",
        "gpt3",
        "run.dcp",
        "out/ckpt-0000012.dcp",
    ):
        assert hub_repo_id(local) is None, local
    # what a download fetches from a repository like openai-community/gpt2: the config and the weights
    # transformers reads, not the other formats or copies in subfolders
    from huggingface_hub.utils import filter_repo_objects

    from gptlab.model.convert import HUB_WEIGHTS

    repo = ["config.json", "model.safetensors", "onnx/model.safetensors", "pytorch_model.bin", "tf_model.h5",
            "model-00001-of-00002.safetensors", "model.safetensors.index.json", "original/params.pth"]  # fmt: skip
    fetched = list(filter_repo_objects(repo, allow_patterns=["config.json", *HUB_WEIGHTS[0]]))
    assert fetched == [repo[0], repo[1], repo[5], repo[6]]


def test_hub_model_from_the_cache_matches_transformers(offline_hub, tokens: torch.Tensor) -> None:
    hf = _llama(bos_token_id=1, eos_token_id=2)
    offline_hub("someone/tiny-llama", hf)
    ours = ConfigurableGPT.from_pretrained("someone/tiny-llama")
    assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL


@pytest.mark.parametrize("make", [_gpt2, lambda: _llama(tie_word_embeddings=True)])
def test_base_model_weights_without_the_prefix_load(make, tokens: torch.Tensor, tmp_path: Path) -> None:
    """The Hub's gpt2 files come from the base model: ``h.0.attn.c_attn.weight``, ``wte.weight``, the causal
    masks ``h.N.attn.bias`` as weights, no ``lm_head`` (tied); transformers adds the prefix, and so must we."""
    from safetensors.torch import load_file, save_file

    hf = make()
    hf.save_pretrained(tmp_path)
    prefix = hf.base_model_prefix + "."
    state = {k.removeprefix(prefix): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    assert "lm_head.weight" not in state  # tied: saved once, as the embedding
    if isinstance(hf, transformers.GPT2LMHeadModel):
        T = hf.config.n_positions
        state.update({f"h.{i}.attn.bias": torch.ones(T, T).tril().view(1, 1, T, T) for i in range(2)})
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = ConfigurableGPT.from_pretrained(tmp_path)
    assert (_logits(ours, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # what transformers makes of it
    assert (_hf_logits(reference, tokens) - _hf_logits(hf, tokens)).abs().max() <= TOL


def test_unsupported_hf_options_are_named() -> None:
    with pytest.raises(CheckpointError, match="rope_type"):
        ConfigurableGPT.from_pretrained(_llama(rope_scaling={"rope_type": "linear", "factor": 2.0}))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx"):
        ConfigurableGPT.from_pretrained(_gpt2(scale_attn_by_inverse_layer_idx=True))


def test_a_scaling_added_beside_saved_rope_parameters_is_refused(tmp_path: Path) -> None:
    """transformers 5 saves ``rope_parameters``; extending the context by hand adds ``rope_scaling`` beside
    it, which transformers applies: a loader reading only the first key would load plain RoPE silently."""
    _llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    reference = transformers.AutoConfig.from_pretrained(tmp_path)
    scaling = getattr(reference, "rope_parameters", None) or reference.rope_scaling
    assert scaling["rope_type"] == "linear"  # what transformers makes of the file
    with pytest.raises(CheckpointError, match="rope_type"):
        ConfigurableGPT.from_pretrained(tmp_path)
    config["rope_scaling"] = None  # what older transformers wrote for plain RoPE: still loads
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ConfigurableGPT.from_pretrained(tmp_path).config.rope_theta == 5000.0


def test_mismatched_weights_are_reported(tmp_path: Path) -> None:
    ckpt = _nanogpt_checkpoint(_gpt2())
    ckpt["model_args"]["n_embd"] = 32
    ckpt["model_args"]["n_head"] = 2
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="shape"):
        ConfigurableGPT.from_pretrained(tmp_path / "ckpt.pt")


def test_weights_that_do_not_fit_are_named_as_their_files_name_them(tmp_path: Path) -> None:
    """A tensor missing from a Hugging Face or nanoGPT file was named by gptlab's parameter name (blocks.1.attn.qkv
    .weight), which no one can find in the file they have."""
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file

    for model, drop, named in (
        (_gpt2(), "transformer.h.1.mlp.c_fc.weight", r"missing \['transformer.h.1.mlp.c_fc.weight'\]"),
        (_llama(), "model.layers.1.self_attn.k_proj.weight", r"missing \['model.layers.1.self_attn.\{q,k,v\}_proj"),
    ):
        folder = tmp_path / model.config.model_type
        model.save_pretrained(folder)
        weights = load_file(folder / "model.safetensors")
        del weights[drop]
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match=named):
            ConfigurableGPT.from_pretrained(folder)
    # the base model's files (the Hub's own gpt2) have no transformer. / model. prefix: named as they have it
    for model, drop, named in (
        (_gpt2(), "h.1.mlp.c_fc.weight", r"missing \['h.1.mlp.c_fc.weight'\]"),
        (_llama(), "layers.1.mlp.up_proj.weight", r"missing \['layers.1.mlp.up_proj.weight'\]"),
    ):
        folder = tmp_path / f"base_{model.config.model_type}"
        model.save_pretrained(folder)
        prefix = model.base_model_prefix + "."
        weights = {k.removeprefix(prefix): v for k, v in load_file(folder / "model.safetensors").items()}
        del weights[drop]
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match=named):
            ConfigurableGPT.from_pretrained(folder)
    ckpt = _nanogpt_checkpoint(_gpt2())
    del ckpt["model"]["transformer.h.0.attn.c_proj.weight"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"missing \['transformer.h.0.attn.c_proj.weight'\]"):
        ConfigurableGPT.from_pretrained(tmp_path / "ckpt.pt")


def test_local_paths_and_nanogpt_runs_get_local_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped run directory under an existing folder is not sent to the Hub; nanoGPT names are
    case-blind; a nanoGPT checkpoint where a gptlab one is expected reads as one (tests/train: its resume)."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.model.convert import hub_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match=r"'runs/run1' does not exist \(its directory 'runs' does\)"):
        ConfigurableGPT.from_pretrained("runs/run1")
    assert hub_repo_id("GPT2-XL") == "openai-community/gpt2-xl"
    torch.save(_nanogpt_checkpoint(_gpt2()), tmp_path / "ckpt.pt")
    converted = load_checkpoint(tmp_path)
    assert (converted["format"], converted["converted_from"], converted["iter_num"]) == ("gptlab", "nanoGPT", 100)
    assert "holds no nanoGPT optimizer state" in converted["optimizer_problem"]  # its groups are empty


def test_a_nanogpt_checkpoint_missing_model_args_is_one_line() -> None:
    from gptlab.errors import CheckpointError
    from gptlab.model.nanogpt import model_from_nanogpt

    ckpt = _nanogpt_checkpoint(_gpt2())
    del ckpt["model_args"]["n_head"]
    with pytest.raises(CheckpointError, match="a damaged nanoGPT checkpoint: its model_args have no n_head"):
        model_from_nanogpt(ckpt)
    ckpt = _nanogpt_checkpoint(_gpt2())
    ckpt["model_args"]["dropout"] = None  # float(None): a TypeError
    with pytest.raises(CheckpointError, match="a damaged nanoGPT checkpoint: its model_args have dropout=None"):
        model_from_nanogpt(ckpt)


def test_a_crafted_config_json_is_one_line_and_builds_nothing_first(tmp_path: Path) -> None:
    """Sizes a config.json names are checked against the file before a model is built (10**9 layers hung,
    a huge vocabulary filled memory); a config that cannot be read is one line, not a KeyError/ZeroDivisionError."""
    import time

    hf = _llama()
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())

    def attempt(**changes) -> str:
        edited = {**config, **changes}
        for key in [k for k, v in changes.items() if v is None]:
            edited.pop(key)
        (tmp_path / "hf" / "config.json").write_text(json.dumps(edited))
        start = time.perf_counter()
        with pytest.raises((CheckpointError, ConfigError)) as err:
            ConfigurableGPT.from_pretrained(tmp_path / "hf")
        assert time.perf_counter() - start < 10 and "\n" not in str(err.value)
        return str(err.value)

    assert "the config says 9999 layers, the weights hold 2" in attempt(num_hidden_layers=9999)
    assert "n_layer=10000000000 is invalid: expected an integer in [1, 10,000]" in attempt(num_hidden_layers=10**10)
    assert "wte.weight) is of shape (97, 64); the config says shape (3000000, 64)" in attempt(vocab_size=3_000_000)
    assert "(no 'hidden_size')" in attempt(hidden_size=None)
    assert "ZeroDivisionError" in attempt(num_attention_heads=0)
    (tmp_path / "hf" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json holds a list, not a model config"):
        ConfigurableGPT.from_pretrained(tmp_path / "hf")


def test_the_architecture_of_weights_is_read_without_them(tmp_path: Path, offline_hub) -> None:
    """What a config file that fine-tunes ``init_from`` is sized as by flops, plan and compare: the config the
    weights load with, from a Hugging Face directory, a nanoGPT or gptlab checkpoint, a cached Hub model, or
    GPT-2's Hub sizes (nanoGPT's table); None where it cannot be known without a download."""
    from gptlab.model.convert import pretrained_architecture

    sources = {"hf": tmp_path / "hf", "nanogpt": tmp_path / "nano" / "ckpt.pt", "gptlab": tmp_path / "run"}
    _gpt2(activation_function="gelu").save_pretrained(sources["hf"])
    sources["nanogpt"].parent.mkdir()
    torch.save(_nanogpt_checkpoint(_gpt2(activation_function="gelu"), bias=False), sources["nanogpt"])
    gptlab = ConfigurableGPT(get_debug_config("hybrid"))  # (one transformers has no class for)
    sources["gptlab"].mkdir()
    torch.save(
        {"format": "gptlab", "arch": gptlab.config.to_dict(), "model": gptlab.state_dict()},
        sources["gptlab"] / "ckpt.pt",
    )
    offline_hub("someone/tiny-llama", _llama())
    for source in [*map(str, sources.values()), "someone/tiny-llama"]:
        assert pretrained_architecture(source) == ConfigurableGPT.from_pretrained(source).config, source
    xl = pretrained_architecture("gpt2-xl")
    assert (xl.n_layer, xl.n_head, xl.n_embd, xl.block_size, xl.vocab_size) == (48, 25, 1600, 1024, 50257)
    assert xl.gelu_approximate == "tanh" and xl.bias and xl.weight_tying
    assert pretrained_architecture("openai-community/gpt2").n_embd == 768
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    for unknown in ("someone/not-cached", str(tmp_path / "missing"), str(tmp_path / "bad")):
        assert pretrained_architecture(unknown) is None, unknown


def test_load_errors_list_what_a_command_may_name(tmp_path: Path) -> None:
    """A path that is no checkpoint lists what a command's init_from may be (a gptlab run too), not in-memory
    models; only Python, which can pass one, hears of those."""
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"expected a gptlab run directory or checkpoint") as error:
        ConfigurableGPT.from_pretrained(text)
    assert "in-memory" not in str(error.value)
    with pytest.raises(CheckpointError, match=r"cannot load weights from a object: .*; or an in-memory transformers"):
        ConfigurableGPT.from_pretrained(object())


def test_the_formats_entry_points_still_import_from_convert() -> None:
    """Code written before Hugging Face and nanoGPT had modules of their own imports their entry points from
    gptlab.model.convert: the same functions, from either place."""
    from gptlab.model import convert, hf, loading, nanogpt

    for module, names in (
        (hf, ["save_pretrained", "hf_model_type", "special_tokens_for", "safetensors_writer"]),
        (nanogpt, ["model_from_nanogpt", "nanogpt_training_checkpoint"]),
        (loading, ["read_torch_checkpoint", "OVERRIDABLE_ON_LOAD"]),
    ):
        for name in names:
            assert getattr(convert, name) is getattr(module, name) and name in convert.__all__, name
