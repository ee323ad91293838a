"""ModelArchitectureConfig: presets are the real models, and every bad value fails fast."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab import ConfigError, ModelArchitectureConfig, get_preset_config
from gptlab.config.model import ARCH_FIELDS, PRESETS, get_debug_config


def test_presets_exist_and_build() -> None:
    assert set(PRESETS) == {"gpt2", "llama", "hybrid", "team", "custom"}
    for name in PRESETS:
        cfg = get_preset_config(name)
        assert cfg.get_architecture_name()
        assert cfg.get_architecture_name() in cfg.get_architecture_summary()


def test_gpt2_preset_is_real_gpt2() -> None:
    c = get_preset_config("gpt2")
    assert (c.n_layer, c.n_embd, c.n_head, c.block_size) == (12, 768, 12, 1024)
    assert c.norm_position == "pre" and c.final_norm
    assert c.normalization == "layernorm" and c.bias  # biased LayerNorm and Linear layers
    assert c.activation == "gelu" and c.gelu_approximate == "tanh"
    assert c.position_encoding == "learned_absolute" and c.weight_tying
    assert c.ffn_type == "standard" and c.ffn_hidden_dim == 4 * 768


def test_llama_preset_is_real_llama() -> None:
    c = get_preset_config("llama")
    assert c.normalization == "rmsnorm" and c.position_encoding == "rope" and c.ffn_type == "swiglu"
    assert not c.bias and not c.weight_tying and c.norm_position == "pre"
    assert c.rope_theta == 10000.0 and c.norm_eps in (1e-5, 1e-6)
    assert c.ffn_hidden_dim == 2048  # 8 * 768 / 3 = 2048, already a multiple of 256
    # LLaMA-7B's width: 4096 -> int(2 * 4 * 4096 / 3) = 10922 -> rounded up to 11008
    assert get_preset_config("llama", n_embd=4096, n_head=32).ffn_hidden_dim == 11008
    assert get_preset_config("team").to_dict() == c.to_dict()


def test_derived_sizes_follow_overrides() -> None:
    c = get_preset_config("llama", n_embd=512, n_head=8, n_kv_head=2)
    assert c.head_dim == 64 and c.kv_heads == 2 and c.n_kv_groups == 4
    assert c.ffn_hidden_dim == 1536  # int(2 * 2048 / 3) = 1365 -> 1536
    assert get_preset_config("gpt2", d_ff=1000).ffn_hidden_dim == 1000
    assert get_preset_config("gpt2", ffn_dim_multiplier=2.0).ffn_hidden_dim == 2 * 4 * 768
    assert get_preset_config("gpt2").kv_heads == 12


def test_name_and_summary_describe_the_choices() -> None:
    c = get_preset_config("llama", n_kv_head=4)
    assert c.get_architecture_name() == "pre-rmsnorm_rope_swiglu_gqa4_untied"
    s = c.get_architecture_summary()
    assert "4 KV heads" in s and "swiglu (silu gate)" in s and "theta=10000" in s


def test_ablations_of_component_options_get_their_own_names() -> None:
    """GELU's approximation, RoPE's theta and the norm's eps change what the model computes: an ablation of
    any of them must not share its baseline's name (sizes, d_ff included, are not part of a name)."""
    names = {
        get_preset_config(preset, **options).get_architecture_name()
        for preset, options in [
            ("gpt2", {}),
            ("gpt2", {"gelu_approximate": "none"}),
            ("gpt2", {"norm_eps": 1e-6}),
            ("llama", {}),
            ("llama", {"rope_theta": 500000.0}),
        ]
    }
    assert len(names) == 5
    assert (
        get_preset_config("gpt2").get_architecture_name()
        == "pre-layernorm_learned_absolute_gelu_tanh-standard_tied_bias"
    )
    assert get_preset_config("llama", rope_theta=5e5, norm_eps=1e-6).get_architecture_name() == (
        "pre-rmsnorm-eps1e-06_rope-theta500000_swiglu_untied"
    )
    assert (
        get_preset_config("llama", d_ff=1024).get_architecture_name()
        == get_preset_config("llama").get_architecture_name()
    )


def test_registered_components_that_change_the_function_are_named() -> None:
    """A gated FFN of one's own that takes the activation, and a registered attention backend, were named as
    their baselines (relu and squared-relu gates alike; a soft-capped backend as sdpa)."""
    from gptlab.model.components import GatedFFN
    from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY, FFN_REGISTRY

    class AnyGateFFN(GatedFFN):
        """Its gate is the activation it is given."""

    FFN_REGISTRY["any_gate_t"] = AnyGateFFN
    ATTENTION_BACKEND_REGISTRY["capped_name_t"] = lambda q, k, v, *, bias, dropout_p: q
    try:
        names = {get_preset_config("custom", ffn_type="any_gate_t", activation=a).get_architecture_name()
                 for a in ("relu", "silu")}  # fmt: skip
        assert len(names) == 2 and any("relu-any_gate_t" in n for n in names)
        summary = get_preset_config("custom", ffn_type="any_gate_t", activation="relu").get_architecture_summary()
        assert "any_gate_t (relu gate)" in summary
        capped = get_preset_config("llama", attention_backend="capped_name_t").get_architecture_name()
        assert capped == "pre-rmsnorm_rope_swiglu_untied_attn-capped_name_t"
        assert get_preset_config("llama", attention_backend="manual").get_architecture_name() == (
            "pre-rmsnorm_rope_swiglu_untied"  # the built-ins compute one function
        )
    finally:
        del FFN_REGISTRY["any_gate_t"], ATTENTION_BACKEND_REGISTRY["capped_name_t"]


def test_a_misspelt_keyword_to_the_class_itself_is_one_config_error() -> None:
    """ModelArchitectureConfig(n_layers=3) raised the dataclass's bare TypeError; get_preset_config named the key."""
    from gptlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown architecture key 'n_layers' \(did you mean 'n_layer'\?\)"):
        ModelArchitectureConfig(n_layers=3)  # type: ignore[call-arg]
    from gptlab.config.train import TrainConfig

    with pytest.raises(ConfigError, match=r"unknown training key 'max_iter' \(did you mean 'max_iters'\?\)"):
        TrainConfig(max_iter=3)  # type: ignore[call-arg]
    import inspect  # the fields stay the classes' signatures (help(), an IDE), not __new__'s (*args, **kwargs)

    assert list(inspect.signature(ModelArchitectureConfig).parameters)[:2] == ["n_layer", "n_embd"]
    assert "max_iters" in inspect.signature(TrainConfig).parameters


def test_hybrid_is_llamas_attention_with_gpt2s_mlp_and_tied_embeddings() -> None:
    """The hybrid preset as docs/architecture.md describes it: RoPE, RMSNorm and no biases from LLaMA; GPT-2's GELU
    MLP of width 4H and its tied embeddings (untied, it would be another model with 38.6M more parameters)."""
    c = get_preset_config("hybrid")
    assert (c.position_encoding, c.normalization, c.bias, c.norm_position) == ("rope", "rmsnorm", False, "pre")
    assert (c.ffn_type, c.activation, c.gelu_approximate, c.ffn_hidden_dim) == (
        "standard",
        "gelu",
        "tanh",
        4 * c.n_embd,
    )
    assert c.weight_tying


def test_round_trip_through_dict() -> None:
    c = get_preset_config("hybrid", n_layer=3)
    assert ModelArchitectureConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"normalization": "batchnorm"}, "normalization"),
        ({"activation": "gelu2"}, "activation"),
        ({"position_encoding": "rotary"}, "position_encoding"),
        ({"ffn_type": "moe"}, "ffn_type"),
        ({"attention_backend": "flash"}, "attention_backend"),
        ({"norm_position": "sandwich"}, "norm_position"),
        ({"gelu_approximate": "fast"}, "gelu_approximate"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_layer": -2}, "n_layer"),
        ({"n_layer": 2.5}, "n_layer"),
        ({"n_layer": True}, "n_layer"),
        ({"n_layer": 10**6}, r"n_layer=1000000 is invalid: expected an integer in \[1, 10,000\]"),  # a minute planned
        ({"n_layer": 2**64}, "n_layer"),  # the planner ran out of memory
        ({"d_ff": 10**20}, r"d_ff=100000000000000000000 is invalid"),  # an OverflowError inside PyTorch
        ({"vocab_size": 2**31}, "vocab_size"),
        ({"n_embd": "768"}, "n_embd"),
        ({"n_head": 0}, "n_head"),
        ({"n_head": 5}, "n_embd"),  # 768 % 5
        ({"n_kv_head": 5}, "n_kv_head"),  # 12 % 5
        ({"n_kv_head": 0}, "n_kv_head"),
        ({"block_size": 0}, "block_size"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"dropout": "0.1"}, "dropout"),
        ({"bias": 1}, "bias"),
        ({"weight_tying": "yes"}, "weight_tying"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"norm_eps": float("inf")}, "norm_eps"),
        ({"rope_theta": -1.0}, "rope_theta"),
        ({"init_std": 0}, "init_std"),
        ({"d_ff": 0}, "d_ff"),
        ({"multiple_of": 0}, "multiple_of"),
        ({"ffn_dim_multiplier": 0.0}, "ffn_dim_multiplier"),
        ({"ffn_dim_multiplier": 1e-9}, "ffn_dim_multiplier"),
        ({"ffn_dim_multiplier": 1e300}, r"ffn_dim_multiplier=1e\+300 gives an FFN width of 3\.072e\+303: it must be"),
        ({"position_encoding": "rope", "n_embd": 36, "n_head": 4}, "rope"),  # head size 9
    ],
)
def test_invalid_values_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        get_preset_config("custom", **overrides)
    assert "\n" not in str(info.value)


def test_unknown_choice_lists_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        get_preset_config("custom", normalization="rmsnrom")
    msg = str(info.value)
    assert "'layernorm', 'layernorm_nobias', 'rmsnorm'" in msg and "did you mean 'rmsnorm'" in msg


def test_unknown_preset_and_key_suggest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'llama'"):
        get_preset_config("lama")
    with pytest.raises(ConfigError, match="did you mean 'n_layer'"):
        get_preset_config("gpt2", n_layers=4)
    with pytest.raises(ConfigError, match="unknown architecture key"):
        ModelArchitectureConfig.from_dict({"n_layer": 2, "colour": "red"})


def test_numpy_scalars_are_their_python_values() -> None:
    """A sweep's np.arange / np.linspace values (np.int64, np.float32, np.True_) are what they hold, saved as
    Python's; nanoGPT takes them. They were refused ('bias=np.True_ has type bool, expected bool')."""
    import numpy as np

    from gptlab.config.train import TrainConfig

    config = get_preset_config("gpt2", n_layer=np.int64(2), n_head=np.int32(2), n_embd=np.int16(64), bias=np.False_)
    assert (config.n_layer, config.n_embd, config.bias) == (2, 64, False) and type(config.n_layer) is int
    assert type(get_preset_config("gpt2", dropout=np.float32(0.5)).dropout) is float
    assert type(TrainConfig(batch_size=np.int64(4)).batch_size) is int
    with pytest.raises(ConfigError, match=r"n_layer=2.0 has type float, expected int"):
        get_preset_config("gpt2", n_layer=np.float64(2.0))  # a value's type still matters
    with pytest.raises(ConfigError, match=r"has type ndarray, expected int"):
        get_preset_config("gpt2", n_layer=np.array([2]))


def test_config_errors_are_value_errors() -> None:
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------- property-based
_FIELDS = {f.name: f for f in dataclasses.fields(ModelArchitectureConfig)}
_any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["layernorm", "rmsnorm", "rope", "alibi", "swiglu", "pre", "post", "tanh", "sdpa", "manual"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(ARCH_FIELDS), _any_value, max_size=6))
def test_validator_only_ever_raises_config_error(values: dict) -> None:
    """Random configs either build or raise ConfigError naming one of the fields or a preset key."""
    try:
        cfg = ModelArchitectureConfig(**values)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg
        assert any(name in msg for name in ARCH_FIELDS), msg
        return
    # Whatever was accepted is self-consistent.
    assert cfg.n_embd % cfg.n_head == 0 and cfg.n_head % cfg.kv_heads == 0
    assert 0 <= cfg.dropout < 1 and cfg.ffn_hidden_dim > 0


@settings(max_examples=60, deadline=None)
@given(
    n_layer=st.integers(1, 3),
    n_head=st.integers(1, 4),
    head_dim=st.sampled_from([2, 4, 8]),
    kv_div=st.integers(1, 4),
    preset=st.sampled_from(sorted(PRESETS)),
)
def test_valid_sizes_build_a_model(n_layer: int, n_head: int, head_dim: int, kv_div: int, preset: str) -> None:
    import torch

    from gptlab import ConfigurableGPT

    n_kv = n_head // kv_div if n_head % kv_div == 0 else n_head
    cfg = get_debug_config(preset, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim, n_kv_head=n_kv)
    logits, loss = ConfigurableGPT(cfg)(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, cfg.vocab_size) and torch.isfinite(loss)


@pytest.mark.parametrize(
    ("preset", "overrides", "match"),
    [
        ("llama", {"activation": "relu"}, r"activation='relu' has no effect with ffn_type='swiglu', whose gate"),
        ("custom", {"ffn_type": "geglu", "activation": "silu"}, "whose gate is gelu"),
        ("llama", {"gelu_approximate": "tanh"}, "the gate of ffn_type='swiglu' is silu"),
        ("gpt2", {"ffn_type": "geglu", "gelu_approximate": "tanh"}, "the gate of ffn_type='geglu' is exact gelu"),
        ("custom", {"activation": "relu", "gelu_approximate": "tanh"}, "activation='relu' takes no approximate="),
        ("gpt2", {"rope_theta": 500000.0}, "position_encoding='learned_absolute' is not rotary"),
        ("llama", {"d_ff": 1024, "multiple_of": 128}, "multiple_of=128 has no effect: d_ff=1024 sets the FFN width"),
        ("llama", {"d_ff": 1024, "multiple_of": 256}, "multiple_of=256 has no effect"),  # llama's own value: typed
        ("gpt2", {"d_ff": 1024, "ffn_dim_multiplier": 1.5}, "ffn_dim_multiplier=1.5 has no effect: d_ff=1024"),
    ],
)
def test_a_setting_the_architecture_would_ignore_is_refused(preset: str, overrides: dict, match: str) -> None:
    """Keys the user sets must take effect: on the command line (train, arch, flops, compare) they fail."""
    from gptlab.cli import main
    from gptlab.config.model import check_keys_take_effect
    from gptlab.config.resolve import parse_run_args

    config = get_preset_config(preset, **overrides)  # the API builds it (the grid tests every pairing)...
    with pytest.raises(ConfigError, match=match):
        check_keys_take_effect(config, overrides)  # ...and the CLIs refuse what the user set for nothing
    with pytest.raises(ConfigError, match=match):
        parse_run_args([f"--arch_preset={preset!r}", *(f"--{k}={v!r}" for k, v in overrides.items())])
    for command in ("arch", "flops", "plan", "compare"):  # no --activation read as --activation_checkpointing
        assert main([command, preset, *(f"--{k}={v}" for k, v in overrides.items())]) == 2, command
    # a config file may spell out every key (config/full_custom.py does): its documented overrides work
    from pathlib import Path

    full_custom = str(Path(__file__).resolve().parents[2] / "config" / "full_custom.py")
    assert parse_run_args([full_custom, "--position_encoding='alibi'", "--ffn_type='geglu'"]).arch.ffn_type == "geglu"
    # what does take effect passes
    assert main(["flops", "gpt2", "--activation=relu"]) == 0 and main(["compare", "gpt2", "--activation=relu"]) == 0
    check_keys_take_effect(get_preset_config("llama", activation="silu"), {"activation"})
    check_keys_take_effect(get_preset_config("gpt2", gelu_approximate="none"), {"gelu_approximate"})


@pytest.mark.parametrize(("preset", "recorded"), [("gpt2", "gpt2"), ("llama", "llama"), ("hybrid", "hybrid"),
                                                  ("team", "llama"), ("custom", "gpt2")])  # fmt: skip
def test_a_whole_architecture_resolves_as_a_config_files_keys(preset: str, recorded: str) -> None:
    """``get_preset_config(p).to_dict()`` spells out every key, among them settings of components the preset
    does not use (GPT-2's RoPE theta, llama's multiple_of beside a d_ff): checked as a config file's, so the dict
    trains the model it describes, and records the preset it is (else its family), not the default 'gpt2'. A
    preset given beside it is the run's label, as --arch_preset=llama --normalization=layernorm's is."""
    from gptlab.config.resolve import resolve_run_config

    arch = get_preset_config(preset, n_layer=2, d_ff=None if preset == "gpt2" else 256).to_dict()
    run = resolve_run_config({**arch, "dataset": "stdlib_char"})
    assert run.arch.to_dict() == arch and run.train.arch_preset == recorded
    assert resolve_run_config({**arch, "arch_preset": preset}).train.arch_preset == preset
    variant = get_preset_config("llama", normalization="layernorm").to_dict()  # the command line's llama variant
    assert resolve_run_config({**variant, "arch_preset": "llama"}).train.arch_preset == "llama"
