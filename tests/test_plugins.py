"""Components of one's own: registered outside gptlab, counted right, and found again by every command."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import ConfigError
from gptlab.model.components import ALiBiPositionEncoding, PositionContext, PositionEncoding, RotaryPositionEncoding
from gptlab.model.registry import ACTIVATION_REGISTRY, FFN_REGISTRY, NORM_REGISTRY, POSITION_ENCODING_REGISTRY
from gptlab.parallel import DistInfo, parallelize
from gptlab.plugins import import_plugins, plugins_hint, saved_plugins, split_plugins
from gptlab.telemetry.activations import estimate_activations
from gptlab.telemetry.flops import compute_flops
from gptlab.telemetry.params import buffer_bytes
from gptlab.telemetry.planner import plan_all_modes
from tests.train.conftest import data_dir  # noqa: F401 (a fixture, used by name)


class DeepFFN(nn.Module):
    """Three matrices, one of them D x D: no built-in FFN's shape, so FLOPs must be measured."""

    gated = False

    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.w_in, self.w_mid = nn.Linear(d_model, d_ff, bias=bias), nn.Linear(d_ff, d_ff, bias=bias)
        self.w_out, self.act = nn.Linear(d_ff, d_model, bias=bias), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(self.act(self.w_mid(self.act(self.w_in(x)))))


class ScalarGainNorm(nn.Module):
    """docs/architecture.md's ScaleNorm shape: a 0-dim parameter."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.g, self.eps = nn.Parameter(torch.tensor(ndim**0.5)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


class TableBiasPositions(ALiBiPositionEncoding):
    """A registered ALiBi variant (declares ``attention_bias`` by inheritance) with a buffer of its own."""

    def __init__(self, n_head: int, max_seq_len: int, **_: object) -> None:
        super().__init__(n_head=n_head)
        self.register_buffer("extra", torch.zeros(max_seq_len, 3), persistent=False)


class PartialRoPE(RotaryPositionEncoding):
    """A registered rotary variant: takes rope_theta and needs an even head size, as RoPE does."""


@pytest.fixture
def own_components() -> Iterator[None]:
    FFN_REGISTRY["deep_t"] = DeepFFN
    NORM_REGISTRY["scalar_gain_t"] = ScalarGainNorm
    POSITION_ENCODING_REGISTRY["table_bias_t"] = TableBiasPositions
    POSITION_ENCODING_REGISTRY["partial_rope_t"] = PartialRoPE
    yield
    del FFN_REGISTRY["deep_t"], NORM_REGISTRY["scalar_gain_t"]
    del POSITION_ENCODING_REGISTRY["table_bias_t"], POSITION_ENCODING_REGISTRY["partial_rope_t"]


def test_a_registry_takes_names_a_key_can_hold_and_callables_only() -> None:
    """A number, a name with a space or a comma (plugins and overrides split on commas), or a non-callable were
    taken, to fail later as another error."""
    for name, component, said in (
        (3, DeepFFN, "name 3 is invalid"),
        ("deep ffn", DeepFFN, "name 'deep ffn' is invalid"),
        ("a,b", DeepFFN, "name 'a,b' is invalid"),
        ("number_t", 42, "42 is not callable"),
    ):
        with pytest.raises(ValueError, match=said):
            FFN_REGISTRY[name] = component  # type: ignore[index]
        assert name not in FFN_REGISTRY


def test_a_builtin_name_cannot_be_taken_over_and_ones_own_can_be_replaced() -> None:
    with pytest.raises(ValueError, match="normalization 'rmsnorm' is built in"):
        NORM_REGISTRY["rmsnorm"] = ScalarGainNorm
    with pytest.raises(ValueError, match="ffn_type 'swiglu' is built in"):
        FFN_REGISTRY.register("swiglu")(DeepFFN)
    with pytest.raises(ValueError, match="is built in"):
        NORM_REGISTRY.update(rmsnorm=ScalarGainNorm)  # dict's own update would skip the check
    registry = NORM_REGISTRY
    with pytest.raises(ValueError, match="is built in"):
        registry |= {"layernorm": ScalarGainNorm}
    with pytest.raises(ValueError, match="is built in and cannot be removed"):
        del NORM_REGISTRY["rmsnorm"]  # then registered again: the guard walked round
    with pytest.raises(ValueError, match="cannot be removed"):
        NORM_REGISTRY.pop("layernorm")
    with pytest.raises(ValueError, match="ffn_type 'standard' is built in"):
        FFN_REGISTRY["standard"] = FFN_REGISTRY["swiglu"]  # a built-in class under another built-in's name
    assert FFN_REGISTRY["standard"].__name__ == "StandardFFN"


def _run_as_config_then_plugin(source: str, path: Path) -> list[dict]:
    """``source`` written to ``path`` and run twice, as train.py runs a config file and then imports it as the
    run's plugin: the namespaces of the two runs."""
    path.write_text(source)
    runs = [{"__name__": name} for name in ("__config__", f"gptlab_plugin_{path.stem}_0")]
    for namespace in runs:
        exec(compile(source, str(path), "exec"), namespace)
    return runs


def test_a_name_registered_twice_is_refused_unless_it_is_the_same_definition(tmp_path: Path) -> None:
    """A config file run twice (or run, then imported as a plugin) registers its class again: allowed.
    Two different classes under one name (two plugins, two classes in one file) would silently leave
    the last one: refused, naming both."""
    source = (
        "import torch.nn as nn\n\nclass Gain(nn.Module):\n"
        "    def __init__(self, ndim, eps=1e-5):\n        super().__init__()\n"
    )
    runs = _run_as_config_then_plugin(source, tmp_path / "gain_norm.py")
    try:
        NORM_REGISTRY["mine_t"] = runs[0]["Gain"]
        NORM_REGISTRY["mine_t"] = runs[1]["Gain"]  # the same file's class, defined again
        assert NORM_REGISTRY["mine_t"] is runs[1]["Gain"]
        with pytest.raises(ValueError, match=r"'mine_t' is already registered as Gain \(.*gain_norm.py\)"):
            NORM_REGISTRY["mine_t"] = ScalarGainNorm
        other = tmp_path / "other" / "gain_norm.py"  # same class name, another file
        other.parent.mkdir()
        other.write_text(source)
        elsewhere: dict = {"__name__": "gain_norm"}
        exec(compile(source, str(other), "exec"), elsewhere)
        with pytest.raises(ValueError, match="already registered"):
            NORM_REGISTRY.register("mine_t")(elsewhere["Gain"])
        assert NORM_REGISTRY["mine_t"] is runs[1]["Gain"]
        # a Jupyter cell edited and run again: __main__, its code filed under a new name each run
        cells = [{"__name__": "__main__"} for _ in range(2)]
        for i, namespace in enumerate(cells):
            exec(compile(source, f"/tmp/ipykernel_1/{i}.py", "exec"), namespace)
            NORM_REGISTRY["mine_nb"] = namespace["Gain"]
        assert NORM_REGISTRY["mine_nb"] is cells[1]["Gain"]
    finally:
        del NORM_REGISTRY["mine_t"]
        NORM_REGISTRY.pop("mine_nb", None)


def test_a_partial_or_a_callable_instance_registered_again_by_its_file_is_the_same_definition(tmp_path: Path) -> None:
    """Their reprs hold addresses, which differ on every run of the file: a config file that registers one
    (run, then imported as the run's plugin) was refused as two definitions."""
    source = (
        "import functools\nimport torch.nn.functional as F\n\n"
        "def _attn(q, k, v, scale):\n    return q\n\n"
        "class Leaky:\n    def __init__(self, slope):\n        self.slope = slope\n"
        "    def __call__(self, **_):\n        return None\n\n"
        "BACKEND = functools.partial(_attn, scale=0.1)\nOTHER = functools.partial(_attn, scale=0.2)\n"
        "ACT = Leaky(0.2)\nGELU = functools.partial(F.gelu, approximate='tanh')\n"
    )
    runs = _run_as_config_then_plugin(source, tmp_path / "partials.py")
    try:
        for key in ("BACKEND", "ACT", "GELU"):
            ACTIVATION_REGISTRY["again_t"] = runs[0][key]
            ACTIVATION_REGISTRY["again_t"] = runs[1][key]  # the same file's object, made again
            assert ACTIVATION_REGISTRY["again_t"] is runs[1][key]
            del ACTIVATION_REGISTRY["again_t"]
        ACTIVATION_REGISTRY["again_t"] = runs[0]["BACKEND"]
        with pytest.raises(ValueError, match=r"already registered as functools.partial\(_attn, scale=0.1\)"):
            ACTIVATION_REGISTRY["again_t"] = runs[0]["OTHER"]  # other arguments: another definition
        with pytest.raises(ValueError, match="already registered"):
            ACTIVATION_REGISTRY["again_t"] = runs[0]["ACT"]
        del ACTIVATION_REGISTRY["again_t"]
        ACTIVATION_REGISTRY["again_t"] = runs[0]["ACT"]
        other = runs[0]["Leaky"](0.5)  # the same class holding another slope: another definition
        with pytest.raises(ValueError, match=r"already registered as Leaky instance \{'slope': 0.2\}"):
            ACTIVATION_REGISTRY["again_t"] = other
        other.slope = object()  # what it holds has an address: only ever itself
        del ACTIVATION_REGISTRY["again_t"]
        ACTIVATION_REGISTRY["again_t"] = other
        ACTIVATION_REGISTRY["again_t"] = other  # (the same object, again: always allowed)
        with pytest.raises(ValueError, match="already registered"):
            ACTIVATION_REGISTRY["again_t"] = runs[0]["Leaky"](other.slope)
    finally:
        ACTIVATION_REGISTRY.pop("again_t", None)


def test_compare_has_a_row_for_a_registered_norms_matrices_and_its_rows_add_up(tmp_path: Path) -> None:
    """compare listed only the built-in components' rows: a norm's own matrices were in the total and in no row
    (the rows summed to 933.9K of a 1.057M total, for a 2-layer model). A column without them shows 0."""
    from gptlab.compare import compare

    own_file = tmp_path / "own.py"
    own_file.write_text('arch_preset = "llama"\nnormalization = "projected_t"\n')
    NORM_REGISTRY["projected_t"] = ProjectedNorm
    try:
        result = compare(["llama", str(own_file)], {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 128})
    finally:
        del NORM_REGISTRY["projected_t"]
    plain, own = result.figures
    assert own["flops.norm_matmuls"] == 3 * 2 * 64 * 64 * 2 * 2  # training = 3x forward; 2 per block, 2 blocks
    assert own["flops.final_norm_matmuls"] == 3 * 2 * 64 * 64
    assert plain["flops.norm_matmuls"] == plain["flops.final_norm_matmuls"] == 0
    full_square = [k for k, _ in result.rows() if k.startswith("flops.") and "(causal)" not in k]
    for fig in (plain, own):
        assert sum(fig[k] for k in full_square) == pytest.approx(fig["flops_per_token"])
    assert "train FLOP/token: norm_matmuls" in result.render()
    assert ",flops.final_norm_matmuls," in result.to_csv()


class WideOutputFFN(nn.Module):
    """A bug of one's own: returns (B, T, d_ff), not the input's (B, T, d_model)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.w_in = nn.Linear(d_model, d_ff, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_in(x)


class TupleNorm(nn.Module):
    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_a_registered_component_of_the_wrong_output_shape_is_refused_before_any_training(tmp_path: Path) -> None:
    """flops, compare and a run's startup counted it ("measured") and the first forward crashed with a
    traceback inside the model; under compare --train after the earlier architectures had trained."""
    from gptlab.compare_train import train_and_compare

    FFN_REGISTRY["wide_t"], NORM_REGISTRY["tuple_t"] = WideOutputFFN, TupleNorm
    try:
        wide = get_debug_config("gpt2", ffn_type="wide_t")
        with pytest.raises(ConfigError, match=r"ffn_type='wide_t' returned shape \(1, 8, 256\) for an input of shape "
                                              r"\(1, 8, 64\): a registered component must return"):  # fmt: skip
            compute_flops(wide)
        with pytest.raises(ConfigError, match=r"normalization='tuple_t' returned a tuple for an input of shape"):
            compute_flops(get_debug_config("llama", normalization="tuple_t"))
        own = tmp_path / "wide.py"
        own.write_text('arch_preset = "llama"\nffn_type = "wide_t"\n')
        with pytest.raises(ConfigError, match="ffn_type='wide_t' returned shape"):
            train_and_compare(["llama", str(own)], {"max_iters": 2}, out_dir=tmp_path / "out", report=False)
        assert not (tmp_path / "out").exists()  # llama did not train first
    finally:
        del FFN_REGISTRY["wide_t"], NORM_REGISTRY["tuple_t"]


class HalfEmbedding(PositionEncoding):
    def __init__(self, **_: object) -> None:
        super().__init__()

    def embed(self, tok_emb: torch.Tensor) -> torch.Tensor:
        return tok_emb[..., : tok_emb.shape[-1] // 2]


class FlatRotation(PositionEncoding):
    rotary = True

    def __init__(self, **_: object) -> None:
        super().__init__()

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        return PositionContext(rotate=lambda t: t.flatten(1, 2))


@pytest.mark.parametrize(
    ("encoding", "said"),
    [(HalfEmbedding, r"'s embed returned shape \(1, 64, 32\) for an input of shape \(1, 64, 64\): .* \(B, T, n_embd\)"),
     (FlatRotation, r"'s rotate returned shape \(1, 256, 16\) for an input of shape \(1, 4, 64, 16\): .*"
                    r"\(B, heads, T, head_dim\)")],
)  # fmt: skip
def test_a_position_encoding_of_the_wrong_output_shape_is_refused_before_any_training(
    encoding: type, said: str
) -> None:
    """Its embed (or rotate) of the wrong shape was a traceback in the first evaluation, where an FFN's or norm's
    is one line at the start."""
    POSITION_ENCODING_REGISTRY["bad_pos_t"] = encoding
    try:
        with pytest.raises(ConfigError, match=r"^position_encoding='bad_pos_t'" + said):
            compute_flops(get_debug_config("custom", position_encoding="bad_pos_t"))
    finally:
        del POSITION_ENCODING_REGISTRY["bad_pos_t"]


def test_a_registered_ffn_is_counted_as_flop_counter_mode_counts_it(own_components: None) -> None:
    cfg = get_debug_config("custom", ffn_type="deep_t", activation="relu", block_size=16)
    flops = compute_flops(cfg)
    assert "measured" in flops.row("ffn").note
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    with FlopCounterMode(display=False) as counter:
        ConfigurableGPT(cfg)(idx, idx)[1].backward()
    # D x D middle matrix included: a 2-matrix formula would be 2*H*D short per layer
    assert flops.row("ffn").forward == 2 * (64 * 256 + 256 * 256 + 256 * 64)
    assert counter.get_total_flops() == flops.hfu_flops_per_token * idx.numel()


def _two_score_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: object, dropout_p: float):
    """A differential attention's shape of work: two score matrices, one AV."""
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    first, second = (((q @ k.transpose(-1, -2)) * c).masked_fill(~mask, float("-inf")).softmax(-1) for c in (1, 0.5))
    return (first - 0.5 * second) @ v


def test_a_registered_attention_backend_is_counted_as_flop_counter_mode_counts_it() -> None:
    """Its FLOPs were standard attention's whatever it computed (3.4% low for two score matrices, no caveat);
    one that cannot run on the meta device is counted so, and said."""
    from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY

    def kernel_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: object, dropout_p: float):
        if q.device.type == "meta":  # a Triton or CUDA kernel of its own
            raise ValueError("Pointer argument cannot be accessed from Triton")
        return _two_score_attention(q, k, v, bias=bias, dropout_p=dropout_p)

    ATTENTION_BACKEND_REGISTRY["two_scores_t"] = _two_score_attention
    ATTENTION_BACKEND_REGISTRY["kernel_only_t"] = kernel_only
    try:
        cfg = get_debug_config("custom", attention_backend="two_scores_t", block_size=16)
        flops = compute_flops(cfg, device_type="cpu")
        assert "measured 1.5x standard attention" in flops.row("attn_scores (full-square)").note
        idx = torch.randint(0, cfg.vocab_size, (2, 16))
        with FlopCounterMode(display=False) as counter:
            ConfigurableGPT(cfg)(idx, idx)[1].backward()
        assert counter.get_total_flops() == flops.hfu_flops_per_token * idx.numel() and not flops.caveats
        other = compute_flops(dataclasses.replace(cfg, attention_backend="kernel_only_t"), device_type="cpu")
        assert other.caveats == [
            "attention_backend 'kernel_only_t': counted as standard attention (QK^T and AV); it cannot run on the "
            "meta device to be measured (ValueError: Pointer argument cannot be accessed from Triton)"
        ]
    finally:
        del ATTENTION_BACKEND_REGISTRY["two_scores_t"], ATTENTION_BACKEND_REGISTRY["kernel_only_t"]


def test_a_registered_attention_backends_causal_count_is_scaled_as_its_full_square_one() -> None:
    """Two score matrices and one AV: 1.5x standard attention's matmuls, counted full-square or over the causal
    triangle alike (the causal rows kept standard attention's count, and mfu_causal was too low by that much)."""
    from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY

    ATTENTION_BACKEND_REGISTRY["two_scores_causal_t"] = _two_score_attention
    try:
        cfg = get_debug_config("custom", attention_backend="two_scores_causal_t", block_size=16)
        mine = compute_flops(cfg, device_type="cpu")
    finally:
        del ATTENTION_BACKEND_REGISTRY["two_scores_causal_t"]
    S, H = 16, cfg.n_embd
    for kind in ("scores", "values"):  # standard: 2 FLOPs x mean (S+1)/2 visible keys x H per token
        assert mine.row(f"attn_{kind} (causal)").forward == 1.5 * 2 * (S + 1) / 2 * H
        assert mine.row(f"attn_{kind} (full-square)").forward == 1.5 * 2 * S * H
    standard = compute_flops(dataclasses.replace(cfg, attention_backend="manual"), device_type="cpu")
    saved = mine.flops_per_token - mine.flops_per_token_causal  # what the causal count leaves out
    assert saved == pytest.approx(1.5 * (standard.flops_per_token - standard.flops_per_token_causal), rel=1e-12)


class ProjectedNorm(nn.Module):
    """An RMS norm followed by a learned (H x H) projection: a norm that multiplies a matrix."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj, self.eps = nn.Linear(ndim, ndim, bias=False), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class MixingActivation(nn.Module):
    """An activation with parameters of its own, one of them a (4 x 4) matrix it multiplies by."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.mix, self.gain = nn.Parameter(torch.eye(4)), nn.Parameter(torch.ones(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu((x.unflatten(-1, (-1, 4)) @ self.mix).flatten(-2)) * self.gain.mean()


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("ffn_type", ["standard", "swiglu"])
def test_a_registered_norm_or_activation_that_multiplies_is_counted(checkpointing: bool, ffn_type: str) -> None:
    """Their matmuls were left out of the count (13% low for a projecting norm, with no caveat), and an
    activation's parameters out of the parameter count and the memory plan."""
    from gptlab.model.registry import ACTIVATION_REGISTRY
    from gptlab.telemetry.params import count_parameters

    NORM_REGISTRY["projected_t"], ACTIVATION_REGISTRY["mixing_t"] = ProjectedNorm, MixingActivation
    try:
        cfg = get_debug_config("custom", normalization="projected_t", activation="mixing_t", ffn_type=ffn_type)
        flops = compute_flops(cfg, activation_checkpointing=checkpointing, device_type="cpu")
        model = ConfigurableGPT(cfg)
        assert count_parameters(cfg) == model.get_num_params(non_embedding=False)
        assert count_parameters(cfg, non_embedding=True) == model.get_num_params()
        if checkpointing:
            model.gradient_checkpointing_enable()
        idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
        with FlopCounterMode(display=False) as counter:
            model(idx, idx)[1].backward()
    finally:
        del NORM_REGISTRY["projected_t"], ACTIVATION_REGISTRY["mixing_t"]
    assert counter.get_total_flops() == flops.hfu_flops_per_token * idx.numel()
    assert flops.row("norm_matmuls").forward == 2 * 64 * 64 and flops.caveats == []
    assert ("mixing_t" in flops.row("ffn").note) == (ffn_type == "standard")  # SwiGLU's gate is its own


def test_a_post_norm_blocks_registered_norm_is_recomputed_at_most_as_hfu_says() -> None:
    """A checkpointed post-norm block ends in its second norm: the recompute stops before a last matmul whose
    output nothing saves, which only the norm's code knows. HFU counts it recomputed, an upper bound, said."""
    NORM_REGISTRY["projected_t"] = ProjectedNorm
    try:
        cfg = get_debug_config("custom", normalization="projected_t", norm_position="post")
        flops = compute_flops(cfg, activation_checkpointing=True, device_type="cpu")
        assert compute_flops(cfg, device_type="cpu").caveats == []  # without checkpointing: exact, nothing said
        model = ConfigurableGPT(cfg)
        model.gradient_checkpointing_enable()
        idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
        with FlopCounterMode(display=False) as counter:
            model(idx, idx)[1].backward()
    finally:
        del NORM_REGISTRY["projected_t"]
    assert flops.flops_per_token < counter.get_total_flops() / idx.numel() <= flops.hfu_flops_per_token
    assert flops.caveats == [
        "normalization 'projected_t': the post-norm block's last norm is taken as recomputed in full under activation "
        "checkpointing in HFU (an upper bound: its last matmul, if nothing saves its output, is not run again)"
    ]


class RoutedFFN(nn.Module):
    """Top-1 of two experts, chosen per token by value: data-dependent, so no meta-device run."""

    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.router = nn.Linear(d_model, 2, bias=False)
        self.experts = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, choice = x.reshape(-1, x.shape[-1]), self.router(x).argmax(-1).reshape(-1)
        out = torch.zeros_like(flat)
        for i, expert in enumerate(self.experts):
            mask = choice == i
            out[mask] = expert(flat[mask])
        return out.reshape(x.shape)


def test_a_value_dependent_ffn_is_estimated_not_a_crash() -> None:
    """Its count is an estimate (every matrix once per token), and every table built on it says so."""
    from gptlab.compare import compare

    FFN_REGISTRY["routed_t"] = RoutedFFN
    try:
        flops = compute_flops(get_debug_config("custom", ffn_type="routed_t"))
        table = compare(["custom", "llama"], {"ffn_type": "routed_t", "n_layer": 2, "n_embd": 64, "n_head": 4})
    finally:
        del FFN_REGISTRY["routed_t"]
    assert flops.row("ffn").forward == 2 * (64 * 2 + 2 * 64 * 64)  # every matrix once per token
    assert "cannot run on the meta device" in flops.row("ffn").note
    assert flops.caveats == [flops.row("ffn").note]
    assert f"note: {flops.row('ffn').note}" in table.render("text").splitlines()  # both columns: said once
    table.figures[1]["notes"] = []  # as if the second column's FFN were a built-in one: labelled
    assert f"- note (custom): {flops.row('ffn').note}" in table.render("markdown").splitlines()
    assert flops.row("ffn").note in table.to_csv().splitlines()[-1]
    assert table.to_dict()["architectures"]["custom"]["notes"][0] == flops.row("ffn").note
    assert compute_flops(get_debug_config("custom")).caveats == []  # a built-in FFN is exact


class LearnedRotation(PositionEncoding):
    """q and k times a learned (hd x hd) matrix in every layer: a matmul per token per layer."""

    def __init__(self, head_dim: int, **_: object) -> None:
        super().__init__()
        self.rotation = nn.Parameter(torch.eye(head_dim))

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        return PositionContext(rotate=lambda x: x @ self.rotation)


class DistanceMLPBias(PositionEncoding):
    """A FIRE-like bias: an MLP of the distance j - i, run once per forward pass for the whole batch."""

    attention_bias = True

    def __init__(self, n_head: int, **_: object) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, n_head))

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        pos = torch.arange(seq_len, device=device)
        distance = (pos[None, :] - pos[:, None]).float()
        bias = self.mlp(distance[..., None]).permute(2, 0, 1).masked_fill(distance > 0, float("-inf"))
        return PositionContext(bias=bias[None])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_registered_position_encodings_matmuls_are_counted(checkpointing: bool) -> None:
    """A rotation's matmuls are per token and per layer, as FlopCounterMode counts them (recomputed under
    checkpointing); a context computed once per batch has no per-token cost, and the count says so."""
    POSITION_ENCODING_REGISTRY["rotation_t"] = LearnedRotation
    POSITION_ENCODING_REGISTRY["distance_mlp_t"] = DistanceMLPBias
    try:
        cfg = get_debug_config("custom", position_encoding="rotation_t", block_size=16)
        flops = compute_flops(cfg, activation_checkpointing=checkpointing, device_type="cpu")
        model = ConfigurableGPT(cfg)
        if checkpointing:
            model.gradient_checkpointing_enable()
        idx = torch.randint(0, cfg.vocab_size, (2, 16))
        with FlopCounterMode(display=False) as counter:
            model(idx, idx)[1].backward()
        hd, heads = cfg.head_dim, cfg.n_head + cfg.kv_heads
        assert flops.row("position_rotate").forward_total == 2 * hd * hd * heads * cfg.n_layer
        assert counter.get_total_flops() == flops.hfu_flops_per_token * idx.numel()
        assert flops.caveats == []
        mlp = compute_flops(get_debug_config("custom", position_encoding="distance_mlp_t", block_size=16))
    finally:
        del POSITION_ENCODING_REGISTRY["rotation_t"], POSITION_ENCODING_REGISTRY["distance_mlp_t"]
    per_pass = 2 * 16 * 16 * (1 * 16 + 16 * cfg.n_head)  # two Linear layers over the 16 x 16 distances
    assert [c for c in mlp.caveats if f"(context {per_pass:,}; once per batch, not per token)" in c]
    assert not [r for r in mlp.rows if r.name.startswith("position_")]


class ProjectedTable(PositionEncoding):
    """A learned position table through a projection, computed once and added to every sequence: a matmul
    that does not grow with the batch."""

    def __init__(self, max_seq_len: int, n_embd: int, **_: object) -> None:
        super().__init__()
        self.wpe = nn.Embedding(max_seq_len, n_embd)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def embed(self, tok_emb: torch.Tensor) -> torch.Tensor:
        return tok_emb + self.proj(self.wpe(torch.arange(tok_emb.shape[1], device=tok_emb.device)))


def test_an_embed_shared_by_the_batch_is_not_counted_per_token() -> None:
    """Measured at one sequence and divided by its tokens, the projection's work was counted once per sequence
    (FlopCounterMode read 319,488 per token at batch 1, 312,320 at batch 8): what the model does beyond the
    per-token count is now the same at every batch, and the caveat names it."""
    POSITION_ENCODING_REGISTRY["projected_t"] = ProjectedTable
    try:
        cfg = get_debug_config("llama", position_encoding="projected_t", block_size=16)
        flops = compute_flops(cfg, device_type="cpu")
        model = ConfigurableGPT(cfg)
        beyond = []
        for batch in (1, 2, 8):
            idx = torch.randint(0, cfg.vocab_size, (batch, 16))
            with FlopCounterMode(display=False) as counter:
                model(idx, idx)[1].backward()
            beyond.append(counter.get_total_flops() - flops.hfu_flops_per_token * idx.numel())
    finally:
        del POSITION_ENCODING_REGISTRY["projected_t"]
    shared = 2 * 16 * cfg.n_embd * cfg.n_embd  # the (16 x H) table through the (H x H) projection, once
    assert beyond == [3 * shared] * 3  # forward, and backward's two matmuls: once per batch
    assert not [r for r in flops.rows if r.name.startswith("position_")]
    assert [c for c in flops.caveats if f"(embed {shared:,}; once per batch, not per token)" in c]


def test_an_ffns_own_bug_is_not_taken_for_a_meta_device_limit() -> None:
    class Broken(DeepFFN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w_out(x)  # (H) into a (D -> H) matrix: a shape bug, which training would hit too

    FFN_REGISTRY["broken_t"] = Broken
    try:
        with pytest.raises(RuntimeError, match="must have same reduction dim"):
            compute_flops(get_debug_config("custom", ffn_type="broken_t"))
    finally:
        del FFN_REGISTRY["broken_t"]


def test_a_scalar_parameter_is_planned_and_fsdp_refuses_it_in_one_line(own_components: None) -> None:
    cfg = get_debug_config("llama", normalization="scalar_gain_t")
    plans = plan_all_modes(cfg, world_size=2, batch_size=2, dtype="float32", device_type="cpu")
    assert plans["fsdp"].mode.peak > 0  # a 0-dim parameter crashed the FSDP column
    # and the column says that training refuses it (gptlab plan/compare showed a peak for a run that cannot start)
    refused = "fsdp cannot shard the 0-dim parameter 'blocks.0.norm_1.g': use_fsdp=True refuses this model"
    assert refused in plans["fsdp"].mode.notes and not any("0-dim" in n for n in plans["ddp"].mode.notes)
    info = DistInfo(world_size=2, mode="fsdp")
    with pytest.raises(ConfigError, match=r"cannot shard the 0-dim parameter 'blocks\.0\.norm_1\.g'"):
        parallelize(ConfigurableGPT(cfg), _train_config(), info, "float32")


def _train_config():
    from gptlab.config.train import TrainConfig

    return TrainConfig(device="cpu", dtype="float32", compile=False)


def test_position_encodings_declare_what_the_planner_and_config_need(own_components: None) -> None:
    alibi = get_debug_config("custom", position_encoding="alibi")
    mine = get_debug_config("custom", position_encoding="table_bias_t")
    assert mine.position_attention_bias and not mine.rotary
    kwargs = dict(batch_size=2, dtype="bfloat16", device_type="cpu")
    planned, reference = estimate_activations(mine, **kwargs), estimate_activations(alibi, **kwargs)
    assert planned.saved_bytes == reference.saved_bytes  # its (1, h, T, T) bias counted as ALiBi's
    assert buffer_bytes(mine) == 4 * 4 + 4 * 64 * 3  # slopes + its own table, measured on the meta device
    notes = estimate_activations(get_debug_config("custom", normalization="scalar_gain_t"), **kwargs).notes
    assert len(notes) == len(set(notes))  # the norm's note once, not once per call

    rotary = get_debug_config("llama", position_encoding="partial_rope_t", rope_theta=5e5)
    assert rotary.rotary and "theta500000" in rotary.get_architecture_name()
    from gptlab.config.model import check_keys_take_effect

    check_keys_take_effect(rotary, ["rope_theta"])  # no "has no effect"
    with pytest.raises(ConfigError, match="needs an even head size"):
        get_debug_config("llama", position_encoding="partial_rope_t", n_embd=60, n_head=4)


def test_plugin_names_and_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_plugins(" a.b , c.py,") == ["a.b", "c.py"]
    with pytest.raises(ConfigError, match="neither a module name"):
        split_plugins("my-components")
    (tmp_path / "plugmod_t.py").write_text("import sys\nsys.plugmod_t_runs = getattr(sys, 'plugmod_t_runs', 0) + 1\n")
    (tmp_path / "broken_t.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)  # a module name is found in the current directory, as python -m finds it
    try:
        assert import_plugins("plugmod_t") == ["plugmod_t"]
        import_plugins(str(tmp_path / "plugmod_t.py"))
        import_plugins(str(tmp_path / "plugmod_t.py"))  # a file imported twice runs once
        assert sys.plugmod_t_runs == 2  # type: ignore[attr-defined]  (once as a module, once as a file)
    finally:
        sys.modules.pop("plugmod_t", None)
    with pytest.raises(ConfigError, match="no module named 'nosuch_t'"):
        import_plugins("nosuch_t")
    (tmp_path / "runfolder_t").mkdir()  # a folder of that name (a run's out_dir): a namespace package, nothing in it
    try:
        with pytest.raises(ConfigError, match=r"'runfolder_t' is a folder \(.*runfolder_t\), no module: give the"):
            import_plugins("runfolder_t")
    finally:
        sys.modules.pop("runfolder_t", None)
    with pytest.raises(ConfigError, match=r"importing 'broken_t.py' failed: RuntimeError: boom"):
        import_plugins("broken_t.py")
    with pytest.raises(ConfigError, match="is not a file"):
        import_plugins("missing_t.py")
    (tmp_path / "script_t.py").write_text("import argparse\nargparse.ArgumentParser().parse_args(['--x'])\n")
    with pytest.raises(ConfigError, match=r"importing 'script_t.py' exited \(SystemExit\(2\)\): a plugin module"):
        import_plugins("script_t.py")  # a script's argparse: one line, not the script's usage or a silent exit 0
    (tmp_path / "needs_dep_t.py").write_text("import some_missing_dependency_t\n")
    with pytest.raises(ConfigError, match=r"importing 'needs_dep_t' failed: .*'some_missing_dependency_t'"):
        import_plugins("needs_dep_t")  # its own missing import, not "no module named 'needs_dep_t'"
    assert saved_plugins({"config": {"train": {"plugins": "x.py"}}}) == "x.py"
    assert "pass --plugins=x.py" in plugins_hint("x.py")
    assert plugins_hint("/a/x.py, y").endswith("pass --plugins='/a/x.py, y'")  # one argument, as a shell reads it
    with pytest.raises(ConfigError, match=r"this run was trained with plugins='x\.py'"):
        ModelArchitectureConfig.from_dict({"normalization": "nosuchnorm_t"}, "x.py")
    with pytest.raises(ConfigError, match=r"did you mean 'rmsnorm'"):  # typed, a near name is likely meant
        ModelArchitectureConfig(normalization="rmsnorm2")
    with pytest.raises(ConfigError) as saved:  # saved, it is a plugin not imported: no pointer to a built-in
        ModelArchitectureConfig.from_dict({"normalization": "rmsnorm2"}, "x.py")
    assert "did you mean" not in str(saved.value) and "pass --plugins=x.py" in str(saved.value)
    with pytest.raises(ConfigError) as edited:  # not a component: its own error, no plugin hint
        ModelArchitectureConfig.from_dict({"n_embd": 32, "n_head": 5}, "x.py")
    assert "is not divisible by n_head=5" in str(edited.value) and "plugins" not in str(edited.value)


def test_an_unknown_components_error_names_the_plugins_imported_when_there_are_some(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told to pass --plugins=X while X was passed (a plugin renamed its component since the run was trained,
    or a module that registers nothing): said as such."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "renamed_t.py").write_text(
        "import torch.nn as nn\nfrom gptlab.model.registry import NORM_REGISTRY\n\n"
        "@NORM_REGISTRY.register('renamed_norm_v2_t')\nclass Renamed(nn.LayerNorm):\n    pass\n"
    )
    (tmp_path / "registers_nothing_t.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"a component of your own is imported with --plugins=MODULE_OR_FILE$"):
        ModelArchitectureConfig(normalization="own_norm_t")  # none imported: how to import one
    try:
        import_plugins("registers_nothing_t")
        said = r"--plugins=MODULE_OR_FILE \(imported in this process: registers_nothing_t; none registers normalization"
        with pytest.raises(ConfigError, match=said + r" 'own_norm_t'\)$"):
            ModelArchitectureConfig(normalization="own_norm_t")
        recorded = str(tmp_path / "renamed_t.py")
        assert "pass --plugins=" in plugins_hint(recorded)  # not imported yet
        import_plugins(recorded)
        with pytest.raises(ConfigError) as saved:
            ModelArchitectureConfig.from_dict({"normalization": "renamed_norm_t"}, recorded)
        assert str(saved.value).endswith(
            f"this run was trained with plugins={recorded!r}: pass --plugins={recorded} (imported in this process, it "
            "registers no such name now: renamed or removed since?)"
        )
    finally:
        NORM_REGISTRY.pop("renamed_norm_v2_t", None)
        sys.modules.pop("registers_nothing_t", None)


def test_a_config_files_plugins_are_found_from_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plugins = "norms_t.py" (or a module name) beside the config file, run from elsewhere: imported for
    train.py and for gptlab arch/flops/plan/compare alike, and recorded as a path found from anywhere."""
    from gptlab.compare import resolve_architecture
    from gptlab.config.files import load_config_file

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "norms_t.py").write_text(
        "from torch import nn\nfrom gptlab.model import NORM_REGISTRY\n"
        "NORM_REGISTRY['beside_t'] = lambda ndim, eps=1e-5: nn.LayerNorm(ndim, eps=eps)\n"
    )
    (folder / "cfg.py").write_text("plugins = 'norms_t.py'\nnormalization = 'beside_t'\nn_layer = 1\n")
    (folder / "cfg_module.py").write_text("plugins = 'norms_t'\nnormalization = 'beside_t'\n")
    monkeypatch.chdir(tmp_path)  # not the config file's folder
    try:
        assert load_config_file(folder / "cfg.py")["plugins"] == str(folder / "norms_t.py")
        assert resolve_architecture(str(folder / "cfg.py")).config.normalization == "beside_t"
        del NORM_REGISTRY["beside_t"]
        # a module name, found in the file's folder: recorded as that file
        assert load_config_file(folder / "cfg_module.py")["plugins"] == str(folder / "norms_t.py")
    finally:
        NORM_REGISTRY.pop("beside_t", None)
        sys.modules.pop("norms_t", None)


def test_a_config_file_given_as_plugins_imports_the_plugins_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gptlab export/sample --plugins=run2.py`, run2.py naming its components in its plugins key (the docs: "the
    config file itself will do"): importing it assigned the string and registered nothing. Followed wherever the
    file is imported (a key computed in the file, a file naming another file); a failure names the key, and the
    file is imported again next time."""
    from gptlab.cli import main

    folder = tmp_path / "project"
    (folder / "sub").mkdir(parents=True)
    norm = "from torch import nn\nfrom gptlab.model import NORM_REGISTRY\n@NORM_REGISTRY.register('nested_t')\n"
    (folder / "sub" / "more_t.py").write_text(
        norm + "class Norm(nn.LayerNorm):\n    def __init__(self, ndim, eps=1e-5):\n        super().__init__(ndim)\n"
    )
    (folder / "run2.py").write_text(
        "_dir = 'sub/'\nplugins = _dir + 'more_t.py, run2.py'\nnormalization = 'nested_t'\n"
    )
    (folder / "top.py").write_text("plugins = 'run2.py'\nnormalization = 'nested_t'\n")  # a file naming a file
    (folder / "later.py").write_text("plugins = 'sub/ok_t.py, sub/later_t.py'\n")
    (folder / "sub" / "ok_t.py").write_text("X = 1\n")
    (tmp_path / "ok_t.py").write_text("X = 2\n")  # another file of that name
    monkeypatch.chdir(tmp_path)  # not the config file's folder: its entries are found from its own
    try:
        assert main(["arch", "custom", "--plugins=project/run2.py", "--normalization=nested_t"]) == 0
        del NORM_REGISTRY["nested_t"]
        sys.modules.pop(
            next(n for n, m in sys.modules.items() if (getattr(m, "__file__", None) or "").endswith("more_t.py"))
        )
        from gptlab import plugins

        plugins._imported_files.clear()  # a new process, as far as imports go
        assert main(["arch", "project/top.py"]) == 0
        with pytest.raises(
            ConfigError, match=r"'.*sub/later_t.py' is not a file \(named by plugins='sub/ok_t.py, sub/later_t.py' in "
        ):
            import_plugins("project/later.py")
        import_plugins(str(tmp_path / "ok_t.py"))  # a module name of its own, not the first ok_t.py's
        names = list(plugins._imported_files.values())
        assert len(set(names)) == len(names) and sys.modules[names[-1]].X == 2, names
        (folder / "sub" / "later_t.py").write_text(
            "from gptlab.model import NORM_REGISTRY\nNORM_REGISTRY['later_t'] = NORM_REGISTRY['nested_t']\n"
        )
        import_plugins("project/later.py")  # imported again, its key followed again
        assert "later_t" in NORM_REGISTRY
    finally:
        NORM_REGISTRY.pop("nested_t", None)
        NORM_REGISTRY.pop("later_t", None)


def test_config_files_importing_modules_of_one_name_from_their_folders_are_refused(tmp_path: Path) -> None:
    """`gptlab compare a/cfg.py b/cfg.py`, each file with `import mycomp` beside it: Python handed the second
    file the first folder's module (cached), so both columns were the first's component, silently."""
    from gptlab.config.files import load_config_file

    for folder, width in (("a", 1), ("b", 1000)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mycomp_t.py").write_text(
            "import torch\nfrom torch import nn\nfrom gptlab.model import NORM_REGISTRY\n"
            "@NORM_REGISTRY.register('dyt_t')\nclass DyT(nn.LayerNorm):\n"
            f"    def __init__(self, ndim, eps=1e-5):\n        super().__init__(ndim)\n"
            f"        self.extra = nn.Parameter(torch.zeros({width}))\n"
        )
        (tmp_path / folder / "cfg.py").write_text("import mycomp_t\nnormalization = 'dyt_t'\n")
    try:
        load_config_file(tmp_path / "a" / "cfg.py")
        load_config_file(tmp_path / "a" / "cfg.py")  # the same folder's module again: fine
        said = r"cfg.py' imports 'mycomp_t', which this process loaded before from '.*a/mycomp_t.py', not from "
        with pytest.raises(ConfigError, match=said + r"'.*b/mycomp_t.py' beside the file"):
            load_config_file(tmp_path / "b" / "cfg.py")
        # a copy of the same code (an experiment folder copied) is that module; so is one Python takes from its
        # own path, the standard library's random beside a random.py, imported inside a block too
        (tmp_path / "c").mkdir()
        for name in ("mycomp_t.py", "cfg.py"):
            (tmp_path / "c" / name).write_text((tmp_path / "a" / name).read_text())
        (tmp_path / "c" / "random.py").write_text("raise ImportError('never imported: the stdlib is')\n")
        (tmp_path / "c" / "seeded.py").write_text("if True:\n    import random\nseed = random.randint(1, 9)\n")
        assert load_config_file(tmp_path / "c" / "cfg.py")["normalization"] == "dyt_t"
        assert load_config_file(tmp_path / "c" / "seeded.py")["seed"] > 0
        (tmp_path / "b" / "nested.py").write_text("try:\n    import mycomp_t\nexcept ImportError:\n    pass\n")
        with pytest.raises(ConfigError, match="nested" + said[3:]):  # an import inside a block is checked too
            load_config_file(tmp_path / "b" / "nested.py")
    finally:
        NORM_REGISTRY.pop("dyt_t", None)
        sys.modules.pop("mycomp_t", None)


def test_a_typed_plugins_replaces_the_config_files(tmp_path: Path) -> None:
    """A file naming a plugin this machine lacks still runs with --plugins given in its place."""
    from gptlab.config.resolve import parse_run_args

    (tmp_path / "here_t.py").write_text("X = 1\n")
    (tmp_path / "cfg.py").write_text("plugins = 'gone_t.py'\n")
    run = parse_run_args([str(tmp_path / "cfg.py"), f"--plugins={tmp_path / 'here_t.py'}"])
    assert run.train.plugins == str(tmp_path / "here_t.py")
    with pytest.raises(ConfigError, match=r"'gone_t\.py' is not a file"):
        parse_run_args([str(tmp_path / "cfg.py")])


def test_a_config_file_that_registers_stays_among_the_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--plugins (or a second config file) replaces a file's ``plugins`` key, never the file itself when it
    registers: the run records every source, so the hint it gives sample and resume works."""
    from gptlab.compare_train import _run_values
    from gptlab.config.resolve import parse_run_args

    (tmp_path / "extra_t.py").write_text("X = 1\n")
    (tmp_path / "reg_t.py").write_text(
        "from torch import nn\nfrom gptlab.model import NORM_REGISTRY\n\n"
        "class StickyNorm(nn.LayerNorm):\n    def __init__(self, ndim, eps=1e-5):\n"
        "        super().__init__(ndim, eps=eps)\n\n"
        "NORM_REGISTRY['sticky_t'] = StickyNorm\nnormalization = 'sticky_t'\nn_layer = 1\n"
    )
    (tmp_path / "later_t.py").write_text("plugins = 'extra_t.py'\n")
    monkeypatch.chdir(tmp_path)
    itself, extra = str(tmp_path / "reg_t.py"), str(tmp_path / "extra_t.py")
    try:
        assert parse_run_args(["reg_t.py", "--plugins=extra_t.py"]).train.plugins == f"{extra}, {itself}"
        assert parse_run_args(["reg_t.py", "later_t.py"]).train.plugins == f"{extra}, {itself}"
        assert parse_run_args(["reg_t.py", "--plugins=reg_t.py"]).train.plugins == itself  # named once
        from gptlab.compare import resolve_architecture

        arch = resolve_architecture("reg_t.py")  # gptlab compare reg_t.py --train --plugins=extra_t.py
        assert _run_values(arch, {"plugins": "extra_t.py"}, tmp_path / "out")["plugins"] == f"{itself}, extra_t.py"
        # a file that registers through a module it imports registers on its first run only: compare --train
        # records it from that run (its second load found nothing registered, and recorded no plugins)
        (tmp_path / "sticky_mod_t.py").write_text(
            "from gptlab.model import NORM_REGISTRY\nfrom reg_t import StickyNorm\n"
            "NORM_REGISTRY['sticky_mod_t'] = StickyNorm\n"
        )
        (tmp_path / "imports_t.py").write_text("import sticky_mod_t\nnormalization = 'sticky_mod_t'\n")
        arch = resolve_architecture("imports_t.py")
        assert _run_values(arch, {}, tmp_path / "out")["plugins"] == str(tmp_path / "imports_t.py")
    finally:
        NORM_REGISTRY.pop("sticky_t", None)
        NORM_REGISTRY.pop("sticky_mod_t", None)
        for module in ("sticky_mod_t", "reg_t"):
            sys.modules.pop(module, None)


def test_an_attention_backend_with_the_wrong_signature_is_refused_when_built() -> None:
    """Refused by the model, and by the FLOPs count and the memory plan, which build no attention layer (they
    printed a whole plan for a backend training refuses)."""
    from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY

    ATTENTION_BACKEND_REGISTRY["three_args_t"] = lambda q, k, v: q
    try:
        cfg = get_debug_config("custom", attention_backend="three_args_t")
        for describe in (
            ConfigurableGPT,
            compute_flops,
            lambda c: estimate_activations(c, batch_size=2, dtype="float32", device_type="cpu"),
            lambda c: plan_all_modes(c, world_size=2, batch_size=2, dtype="float32", device_type="cpu"),
        ):
            with pytest.raises(ConfigError, match=r"must take \(q, k, v, \*, bias, dropout_p\)"):
                describe(cfg)
    finally:
        del ATTENTION_BACKEND_REGISTRY["three_args_t"]


def test_builtin_functions_registered_as_components_are_refused_in_one_line() -> None:
    """torch.tanh as an activation (which is a factory of modules) or F.scaled_dot_product_attention as a backend
    (no bias=) have no signature to check: a raw TypeError at the first build or forward. A registered backend
    returning another layout than q's is refused at its first forward (it trained, scrambled)."""
    import torch.nn.functional as F

    from gptlab.model.registry import ACTIVATION_REGISTRY, ATTENTION_BACKEND_REGISTRY

    ACTIVATION_REGISTRY["tanh_fn_t"] = torch.tanh
    ATTENTION_BACKEND_REGISTRY["raw_sdpa_t"] = F.scaled_dot_product_attention
    ATTENTION_BACKEND_REGISTRY["transposed_t"] = lambda q, k, v, *, bias, dropout_p: q.transpose(1, 2)
    try:
        with pytest.raises(ConfigError, match=r"activation='tanh_fn_t': 'tanh' must take keyword options"):
            ConfigurableGPT(get_debug_config("custom", activation="tanh_fn_t"))
        for describe in (ConfigurableGPT, compute_flops):
            with pytest.raises(ConfigError, match=r"'raw_sdpa_t': 'scaled_dot_product_attention' must take \(q, k"):
                describe(get_debug_config("custom", attention_backend="raw_sdpa_t"))
        model = ConfigurableGPT(get_debug_config("custom", attention_backend="transposed_t"))
        with pytest.raises(ConfigError, match=r"'transposed_t' returned shape \(2, 8, 4, 16\): expected q's"):
            model(torch.zeros(2, 8, dtype=torch.long))
    finally:
        del ACTIVATION_REGISTRY["tanh_fn_t"], ATTENTION_BACKEND_REGISTRY["raw_sdpa_t"]
        del ATTENTION_BACKEND_REGISTRY["transposed_t"]


def test_a_run_records_command_line_plugins_found_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptlab.config.resolve import parse_run_args

    (tmp_path / "here_mod_t.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    try:
        run = parse_run_args(["--plugins=here_mod_t"])
    finally:
        sys.modules.pop("here_mod_t", None)
    assert run.train.plugins == str(tmp_path / "here_mod_t.py")  # the hint "pass --plugins=..." works from elsewhere


def test_a_config_file_that_registers_is_run_then_imported_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """train.py runs config/x.py by the path typed and then imports it as the run's plugin by its absolute
    path (or --plugins named it first): the same classes, defined twice, must not read as a name clash, a
    subclass with no code of its own (class MyNorm(RMSNorm): pass) included."""
    from gptlab.cli import main
    from gptlab.model.registry import ACTIVATION_REGISTRY

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "regconf_t.py").write_text(
        "import torch.nn as nn\n"
        "from gptlab.model import ACTIVATION_REGISTRY, NORM_REGISTRY\n"
        "from gptlab.model.components import RMSNorm\n\n"
        "class SquaredReLU(nn.Module):\n"
        "    def __init__(self, **_):\n"
        "        super().__init__()\n\n"
        "    def forward(self, x):\n"
        "        return x.relu() ** 2\n\n"
        "class PlainRMS(RMSNorm):\n"
        "    pass\n\n"
        'ACTIVATION_REGISTRY["relu2_cfg_t"] = SquaredReLU\n'
        'NORM_REGISTRY["plain_rms_cfg_t"] = PlainRMS\n'
        'arch_preset = "custom"\nactivation = "relu2_cfg_t"\nnormalization = "plain_rms_cfg_t"\n'
    )
    monkeypatch.chdir(tmp_path)
    try:
        for argv in (["arch", "config/regconf_t.py"], ["arch", "config/regconf_t.py", "--plugins=config/regconf_t.py"]):
            assert main([*argv, "--no_params"]) == 0, capsys.readouterr().err
            assert "relu2_cfg_t" in capsys.readouterr().out
    finally:
        del ACTIVATION_REGISTRY["relu2_cfg_t"], NORM_REGISTRY["plain_rms_cfg_t"]


class OwnReGLU(nn.Module):
    """A gated FFN of its own (not a GatedFFN subclass) that says ``gated = True``: ReLU(gate) x value."""

    gated = True
    gate_activation = "relu"

    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module | None) -> None:
        super().__init__()
        self.w_gate, self.w_value = nn.Linear(d_model, d_ff, bias=bias), nn.Linear(d_model, d_ff, bias=bias)
        self.w_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.relu(self.w_gate(x)) * self.w_value(x))


class SquaredReLU(nn.Module):
    def __init__(self, **_: object) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


def test_the_planner_says_what_it_assumes_of_a_registered_activation_and_gated_ffn() -> None:
    """A registered activation was planned as GELU with no note; a registered FFN that declares gated = True
    was planned as the standard FFN (14.8% low): now as the built-in gated ones, and the notes say both."""
    from tests.telemetry.test_activations import _measure

    FFN_REGISTRY["own_reglu_t"] = OwnReGLU
    ACTIVATION_REGISTRY["squared_relu_t"] = SquaredReLU
    try:
        sizes = dict(n_layer=2, n_embd=64, n_head=4, block_size=32, vocab_size=96)
        gated = ConfigurableGPT(get_debug_config("llama", ffn_type="own_reglu_t", **sizes)).train()
        est = estimate_activations(gated.config, 3, 24, dtype="float32", device_type="cpu")
        measured = _measure(gated, None)
        assert abs(est.saved_bytes - measured) <= 0.005 * measured
        assert est.notes == ["ffn_type='own_reglu_t' assumed to save what the built-in gated FFNs save"]
        squared = get_debug_config("gpt2", activation="squared_relu_t", **sizes)
        notes = estimate_activations(squared, 3, 24, dtype="float32", device_type="cpu").notes
        assert notes == ["activation='squared_relu_t' assumed to save its input, as GELU does"]
    finally:
        del FFN_REGISTRY["own_reglu_t"], ACTIVATION_REGISTRY["squared_relu_t"]


def test_a_run_started_from_python_records_the_modules_of_its_components(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trained from Python after an `import`, a run recorded plugins='' (a later gptlab sample gave only the generic
    hint); now the components' module, as a command line's --plugins is recorded; one defined in the running
    script (__main__) cannot be, and is said."""
    import io
    import json

    from gptlab.config.resolve import parse_run_args
    from gptlab.logging import read_log
    from gptlab.plugins import component_plugins
    from gptlab.train.loop import Trainer
    from tests.train.conftest import tiny_args

    module = tmp_path / "py_comps_t.py"
    module.write_text(
        "from torch import nn\nfrom gptlab.model.registry import NORM_REGISTRY\n\n"
        "class PyNorm(nn.LayerNorm):\n    def __init__(self, ndim, eps=1e-5):\n"
        "        super().__init__(ndim, eps=eps)\n\n"
        "NORM_REGISTRY['py_norm_t'] = PyNorm\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import py_comps_t  # noqa: F401 (registers)

        run = parse_run_args(tiny_args(data_dir, tmp_path / "run", normalization="py_norm_t", max_iters=0))
        assert run.train.plugins == ""
        Trainer(run, stream=io.StringIO()).run()
        saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["plugins"]
        assert saved == str(module.resolve())
        config = get_debug_config("custom", normalization="py_norm_t")
        assert component_plugins(config) == (str(module.resolve()), [])
        monkeypatch.setattr(sys.modules["py_comps_t"].PyNorm, "__module__", "__main__")  # a script's own
        assert component_plugins(config) == ("", ["normalization='py_norm_t'"])
        run = parse_run_args(tiny_args(data_dir, tmp_path / "script", normalization="py_norm_t", max_iters=0))
        Trainer(run, stream=io.StringIO())
        (said,) = [r for r in read_log(tmp_path / "script") if r.get("event") == "plugins_unrecorded"]
        assert "normalization='py_norm_t': registered in the running script (__main__)" in said["message"]
    finally:
        NORM_REGISTRY.pop("py_norm_t", None)
        sys.modules.pop("py_comps_t", None)


class MixedPositions(PositionEncoding):
    """A learned table (a lookup) whose rows a Linear mixes (a matmul): only the table is an embedding."""

    def __init__(self, max_seq_len: int, n_embd: int, **_: object) -> None:
        super().__init__()
        self.table = nn.Embedding(max_seq_len, n_embd)
        self.mix = nn.Linear(n_embd, n_embd, bias=False)

    def embed(self, tok_emb: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tok_emb.shape[1], device=tok_emb.device)
        return tok_emb + self.mix(self.table(positions))


def test_a_registered_position_encodings_linear_layers_count_as_non_embedding_parameters() -> None:
    """get_num_params(non_embedding=True) left out every parameter of a registered encoding, its mixing matrix
    included (a matmul's weights); count_parameters, which compare and the startup report print, agrees."""
    from gptlab.telemetry.params import count_parameters

    POSITION_ENCODING_REGISTRY["mixed_positions_t"] = MixedPositions
    try:
        config = get_debug_config("custom", position_encoding="mixed_positions_t")
        model = ConfigurableGPT(config)
        table = model.pos_encoding.table.weight.numel()
        expected = sum(p.numel() for p in model.parameters()) - table
        if not config.weight_tying:
            expected -= model.wte.weight.numel()
        assert model.get_num_params(non_embedding=True) == expected == count_parameters(config, non_embedding=True)
    finally:
        del POSITION_ENCODING_REGISTRY["mixed_positions_t"]


def test_a_backend_counted_as_none_or_given_alibis_bias_is_measured_as_training_runs_it() -> None:
    """A custom operator with a fake kernel (flash-attn's, xformers') counts no FLOPs on the meta device: its
    attention rows fell to 0 with no word. A backend that adds ALiBi's bias failed its measurement (bias=None)."""
    from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY

    @torch.library.custom_op("gptlab_test::opaque_attention", mutates_args=())
    def opaque(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    @opaque.register_fake
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(q)

    def with_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor, dropout_p: float):
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias  # needs the bias: None fails
        return scores.softmax(-1) @ v

    ATTENTION_BACKEND_REGISTRY["opaque_t"] = lambda q, k, v, *, bias, dropout_p: opaque(q, k, v)
    ATTENTION_BACKEND_REGISTRY["with_bias_t"] = with_bias
    try:
        flops = compute_flops(get_debug_config("custom", attention_backend="opaque_t"))
        assert flops.row("attn_scores (full-square)").forward > 0
        assert any("FlopCounterMode counted none of its work" in c for c in flops.caveats)
        alibi = compute_flops(get_debug_config("custom", attention_backend="with_bias_t", position_encoding="alibi"))
        assert alibi.caveats == [] and alibi.row("attn_scores (full-square)").note == "PaLM/nanoGPT convention"
    finally:
        del ATTENTION_BACKEND_REGISTRY["opaque_t"], ATTENTION_BACKEND_REGISTRY["with_bias_t"]


def _write_norm_plugin(path: Path, name: str) -> None:
    """A plugin file registering an RMSNorm subclass as ``name`` (its body ``pass``, for an edit to replace)."""
    path.write_text(
        "from gptlab.model import NORM_REGISTRY\nfrom gptlab.model.components import RMSNorm\n\n"
        f"class OwnNorm(RMSNorm):\n    pass\n\nNORM_REGISTRY[{name!r}] = OwnNorm\n"
    )


def _give_the_norm_a_parameter(plugin: Path, name: str, body: str, shape: str) -> None:
    """Edit the plugin's norm (its line ``body``) to hold a parameter of ``shape`` more, and forget the file's import
    and registration, as a new process would not have them."""
    import gptlab.plugins

    plugin.write_text(
        plugin.read_text().replace(
            body,
            "    def __init__(self, *a, **k):\n        super().__init__(*a, **k)\n"
            f"        import torch\n        self.beta = torch.nn.Parameter(torch.zeros({shape}))\n",
        )
    )
    NORM_REGISTRY.pop(name, None)
    gptlab.plugins._imported_files.pop(plugin.resolve(), None)


def test_a_resume_says_a_plugin_file_edited_since_its_checkpoint(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The weights of a registered component meet its code again on a resume: an edit in between (a fix, an
    experiment) changed the model under them unannounced. The checkpoint records each plugin file's digest."""
    import io
    import json

    import gptlab.plugins
    from gptlab.config.resolve import parse_run_args
    from gptlab.errors import CheckpointError
    from gptlab.model.convert import model_from_checkpoint
    from gptlab.train.launch import train
    from tests.train.conftest import tiny_args

    plugin = tmp_path / "edited_norm_t.py"
    _write_norm_plugin(plugin, "edited_norm_t")
    run = tmp_path / "run"
    args = [*tiny_args(data_dir, run, max_iters=2, normalization="edited_norm_t"), f"--plugins={str(plugin)!r}"]
    try:
        train(parse_run_args(args), stream=io.StringIO())
        resume = [f"--out_dir={str(run)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'",
                  f"--plugins={str(plugin)!r}"]  # fmt: skip
        plugin.write_text(plugin.read_text() + "max_iters = 3  # a setting, as a config file that registers has\n")
        train(parse_run_args([*resume, "--max_iters=3"]), stream=io.StringIO())  # the same code: nothing said
        plugin.write_text(plugin.read_text().replace("    pass", "    eps_scale = 2.0"))  # the component changed
        train(parse_run_args([*resume, "--max_iters=4"]), stream=io.StringIO())
        # an edit that adds a parameter, in a new process (the file runs again): the weights no longer fit, and
        # the error says why beside the checkpoint's name (it blamed the checkpoint alone)
        _give_the_norm_a_parameter(plugin, "edited_norm_t", "    eps_scale = 2.0", "()")
        edited = f"; plugin code changed since this checkpoint was saved: {plugin}"
        with pytest.raises(CheckpointError, match="its weights do not fit the architecture it records") as resumed:
            train(parse_run_args([*resume, "--max_iters=5"]), stream=io.StringIO())
        assert str(resumed.value).endswith(edited)
        with pytest.raises(CheckpointError, match=r"missing \[.*\] \(\+1 more\)") as sampled:
            model_from_checkpoint(torch.load(run / "ckpt.pt", weights_only=True))  # gptlab sample's and export's
        assert str(sampled.value).endswith(edited)
    finally:
        NORM_REGISTRY.pop("edited_norm_t", None)
        gptlab.plugins._imported_files.pop(plugin.resolve(), None)
    resumes = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == "resume"]
    assert "plugin files" not in resumes[0]["changed"]
    assert resumes[1]["changed"]["plugin files"] == ["as the checkpoint was trained", f"changed since: {plugin}"]


def test_a_resume_says_a_module_its_config_file_imports_was_edited(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """docs/architecture.md's `import my_components` beside a config file: the run records the config file as its
    plugin, and the module's code lies under the weights too (its edit went unsaid; said for plugins='...')."""
    import io
    import json

    import gptlab.plugins
    from gptlab.config.resolve import parse_run_args
    from gptlab.train.launch import train
    from tests.train.conftest import tiny_args

    module = tmp_path / "imported_norm_t.py"
    _write_norm_plugin(module, "imported_norm_t")
    config = tmp_path / "cfg.py"
    config.write_text("import imported_norm_t\nnormalization = 'imported_norm_t'\n")
    run = tmp_path / "run"
    try:
        train(parse_run_args([str(config), *tiny_args(data_dir, run, max_iters=2)]), stream=io.StringIO())
        module.write_text(module.read_text().replace("    pass", "    eps_scale = 2.0"))  # the component changed
        resume = [str(config), f"--out_dir={str(run)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'"]
        train(parse_run_args([*resume, "--max_iters=3"]), stream=io.StringIO())
    finally:
        NORM_REGISTRY.pop("imported_norm_t", None)
        sys.modules.pop("imported_norm_t", None)
        gptlab.plugins._imported_files.pop(config.resolve(), None)
    records = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    (resumed,) = [r for r in records if r.get("event") == "resume"]
    assert resumed["changed"]["plugin files"] == ["as the checkpoint was trained", f"changed since: {module}"]


def test_component_digests_leave_out_the_running_script_and_torch() -> None:
    """A component defined in the running script (its resume edits the script's call: every resume said "changed
    since"; a notebook's __main__ has no file: the run crashed) or torch's own class registered directly (a torch
    upgrade is no plugin edit) has no digest of its file."""
    from gptlab.model.registry import ACTIVATION_REGISTRY
    from gptlab.plugins import plugin_digests

    class ScriptNorm(nn.LayerNorm):
        pass

    ScriptNorm.__module__ = "__main__"
    NORM_REGISTRY["script_norm_t"], ACTIVATION_REGISTRY["mish_t"] = ScriptNorm, nn.Mish
    try:
        cfg = get_debug_config("custom", normalization="script_norm_t", activation="mish_t", ffn_type="standard")
        assert plugin_digests("", cfg) == {}
    finally:
        del NORM_REGISTRY["script_norm_t"], ACTIVATION_REGISTRY["mish_t"]


def test_a_sharded_resume_says_a_plugin_file_edited_since_its_weights_no_longer_fit(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """As a single-file resume says it: an FSDP run's DCP checkpoint, resumed after its plugin gained a parameter,
    failed as "not a readable gptlab DCP checkpoint (... Missing key ...)" with no word of the plugin's change."""
    import io

    import gptlab.plugins
    from gptlab.config.resolve import parse_run_args
    from gptlab.errors import CheckpointError
    from gptlab.train.launch import train
    from tests.train.conftest import tiny_args

    plugin = tmp_path / "sharded_norm_t.py"
    _write_norm_plugin(plugin, "sharded_norm_t")
    run = tmp_path / "run"
    own = [f"--plugins={str(plugin)!r}", "--parallel='fsdp'"]
    try:
        train(parse_run_args([*tiny_args(data_dir, run, max_iters=2, normalization="sharded_norm_t"), *own]),
              stream=io.StringIO())  # fmt: skip
        assert list(run.glob("ckpt-*.dcp"))
        _give_the_norm_a_parameter(plugin, "sharded_norm_t", "    pass", "1")  # FSDP2 shards dim 0: not 0-dim
        resume = [f"--out_dir={str(run)!r}", f"--data_dir={str(data_dir)!r}", "--init_from='resume'", "--max_iters=3"]
        with pytest.raises(CheckpointError) as resumed:
            train(parse_run_args([*resume, *own]), stream=io.StringIO())
        assert str(resumed.value).endswith(f"; plugin code changed since this checkpoint was saved: {plugin}")
    finally:
        NORM_REGISTRY.pop("sharded_norm_t", None)
        gptlab.plugins._imported_files.pop(plugin.resolve(), None)


def test_a_plugin_digest_sees_code_and_ignores_settings() -> None:
    """The digest a resume compares: a config file's settings (max_iters raised for the resume) change nothing, a
    top-level assignment to anything else (a class attribute a component reads, a helper's constant) does."""
    from gptlab.plugins import _code_of

    base = b"import torch\nmax_iters = 5\nclass Norm:\n    eps = 1e-5\nNorm.scale = 2.0\n_helper = 3\n"
    assert _code_of(base) == _code_of(base.replace(b"max_iters = 5", b"max_iters = 6  # resumed for longer"))
    for edit in (b"Norm.scale = 2.5", b"_helper = 4"):
        changed = base.replace(edit.split(b" = ")[0] + b" = " + (b"2.0" if b"scale" in edit else b"3"), edit)
        assert changed != base and _code_of(changed) != _code_of(base), edit
