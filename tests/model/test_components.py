"""Components and registries: built-ins behave as their references, and a component registered
from outside the package is usable from a config with no other change."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlab import ConfigError, ConfigurableGPT, get_debug_config
from gptlab.model import (
    ACTIVATION_REGISTRY,
    ATTENTION_BACKEND_REGISTRY,
    FFN_REGISTRY,
    NORM_REGISTRY,
    POSITION_ENCODING_REGISTRY,
    build_ffn,
    build_norm,
    build_position_encoding,
)
from gptlab.model.components import PositionContext, PositionEncoding, alibi_slopes


def test_registries_hold_the_documented_names() -> None:
    assert set(NORM_REGISTRY) >= {"layernorm", "layernorm_nobias", "rmsnorm"}
    assert set(ACTIVATION_REGISTRY) >= {"gelu", "silu", "relu", "leaky_relu"}
    assert set(FFN_REGISTRY) >= {"standard", "swiglu", "geglu"}
    assert set(POSITION_ENCODING_REGISTRY) >= {"learned_absolute", "rope", "alibi", "none"}
    assert set(ATTENTION_BACKEND_REGISTRY) >= {"sdpa", "manual"}


def test_factory_miss_lists_names_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"normalization='rms_norm'.*did you mean 'rmsnorm'"):
        build_norm("rms_norm", 8)


def test_rmsnorm_matches_definition() -> None:
    x = torch.randn(3, 5, 16)
    norm = build_norm("rmsnorm", 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_()
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref)


def test_layernorm_bias_follows_name() -> None:
    assert build_norm("layernorm", 8).bias is not None
    assert build_norm("layernorm_nobias", 8).bias is None


def test_swiglu_and_geglu_compute_their_definitions() -> None:
    x = torch.randn(2, 3, 8)
    for name, gate in (("swiglu", F.silu), ("geglu", F.gelu)):
        ffn = build_ffn(name, 8, 12, bias=False, dropout=0.0, activation=nn.Identity())
        ref = ffn.w_out(gate(ffn.w_gate(x)) * ffn.w_value(x))
        torch.testing.assert_close(ffn(x), ref)


def test_rope_preserves_norms_and_encodes_relative_position() -> None:
    rope = build_position_encoding("rope", 16, head_dim=8, rope_theta=10000.0)
    ctx = rope.context(16, torch.device("cpu"))
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8)
    rq, rk = ctx.rotate(q), ctx.rotate(k)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # <R_m q, R_n k> depends only on m - n
    scores = rq[0, 0] @ rk[0, 0].T
    torch.testing.assert_close(scores[3, 1], scores[10, 8])


def test_rope_rotates_as_hand_computed() -> None:
    """The half-split layout by hand, without transformers: head_dim 4 at theta 100 pairs (x0, x2) at frequency 1
    and (x1, x3) at 100 ** -0.5 = 0.1; position m turns each pair by m times its frequency, counter-clockwise
    (x0' = x0 cos - x2 sin). A reversed rotation or a theta left at 10000 keeps norms and relative positions,
    which the test above checks, but not these numbers."""
    rope = build_position_encoding("rope", 4, head_dim=4, rope_theta=100.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 4, 4)
    out = rope.context(4, torch.device("cpu")).rotate(x)[0, 0]
    for m in range(4):
        c1, s1, c2, s2 = math.cos(m), math.sin(m), math.cos(0.1 * m), math.sin(0.1 * m)
        want = torch.tensor([1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2])
        torch.testing.assert_close(out[m], want, rtol=1e-6, atol=1e-6)


def test_alibi_slopes_match_the_paper() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads, by hand: 4's slopes (2^-2, 2^-4, 2^-6, 2^-8), then 8's (2^-1 .. 2^-8) at odd exponents, first two
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]))
    # head counts that are not a power of two interleave the next power's odd slopes: BLOOM's reference
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for n_head in (3, 5, 6, 12, 20):
        reference = bloom.build_alibi_tensor(torch.ones(1, 2), n_head, torch.float32)[:, 0, 1]  # slope x position 1
        torch.testing.assert_close(alibi_slopes(n_head), reference)  # float rounding apart
    bias = build_position_encoding("alibi", 8, n_head=4).context(5, torch.device("cpu")).bias
    assert bias.shape == (1, 4, 5, 5)
    assert torch.isinf(bias[0, :, 0, 1:]).all() and bias[0, 0, 4, 0] == -4 * alibi_slopes(4)[0]


# ------------------------------------------------------------------ extension from outside
class ScaledNorm(nn.Module):
    """Nguyen & Salazar's ScaleNorm: one learned scale over the L2-normalised vector."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(float(ndim) ** 0.5))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


class SquaredReLUFFN(nn.Module):
    gated = False

    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, d_ff, bias=bias), nn.Linear(d_ff, d_model, bias=bias)
        self.down.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class SinusoidalPositions(PositionEncoding):
    def __init__(self, max_seq_len: int, n_embd: int, **_: object) -> None:
        super().__init__()
        pos = torch.arange(max_seq_len)[:, None]
        freq = torch.exp(-torch.arange(0, n_embd, 2) * (9.21 / n_embd))
        table = torch.zeros(max_seq_len, n_embd)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self.register_buffer("table", table, persistent=False)

    def embed(self, tok_emb: torch.Tensor) -> torch.Tensor:
        return tok_emb + self.table[: tok_emb.shape[1]]


def talking_backend(q, k, v, *, bias, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


@pytest.fixture
def registered():
    NORM_REGISTRY.register("scalenorm")(ScaledNorm)
    FFN_REGISTRY["sqrelu"] = SquaredReLUFFN  # the design document's plain-dict form works too
    POSITION_ENCODING_REGISTRY.register("sinusoidal")(SinusoidalPositions)
    ATTENTION_BACKEND_REGISTRY.register("mine")(talking_backend)
    ACTIVATION_REGISTRY.register("tanh")(lambda **_: nn.Tanh())
    yield
    for reg, name in (
        (NORM_REGISTRY, "scalenorm"),
        (FFN_REGISTRY, "sqrelu"),
        (POSITION_ENCODING_REGISTRY, "sinusoidal"),
        (ATTENTION_BACKEND_REGISTRY, "mine"),
        (ACTIVATION_REGISTRY, "tanh"),
    ):
        del reg[name]


def _loss_falls_in_one_step(model: ConfigurableGPT) -> bool:
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    x = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    _, loss0 = model(x, x)
    loss0.backward()
    opt.step()
    _, loss1 = model(x, x)
    return bool(loss1 < loss0)


def test_component_registered_outside_trains_a_step(registered: None) -> None:
    cfg = get_debug_config(
        "custom",
        normalization="scalenorm",
        ffn_type="sqrelu",
        position_encoding="sinusoidal",
        attention_backend="mine",
    )
    model = ConfigurableGPT(cfg)
    assert isinstance(model.blocks[0].norm_1, ScaledNorm) and isinstance(model.blocks[0].ffn, SquaredReLUFFN)
    assert _loss_falls_in_one_step(model)
    # the registered activation, in the standard FFN (sqrelu has its own): built and trained too
    act_model = ConfigurableGPT(get_debug_config("custom", activation="tanh"))
    assert isinstance(act_model.blocks[0].ffn.act, nn.Tanh)
    assert _loss_falls_in_one_step(act_model)


class LearnedRelativeBias(PositionEncoding):
    """A learned (n_head, max_seq_len) table: a length-sized parameter, which the base crop() leaves be."""

    attention_bias = True

    def __init__(self, max_seq_len: int, n_head: int, **_: object) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(n_head, max_seq_len))

    def context(self, seq_len: int, device: torch.device) -> PositionContext:
        p = torch.arange(seq_len, device=device)
        d = p[:, None] - p[None, :]
        bias = self.table[:, d.clamp(min=0)].masked_fill(d < 0, float("-inf"))
        return PositionContext(bias=bias.unsqueeze(0))


class CroppedRelativeBias(LearnedRelativeBias):
    def crop(self, max_seq_len: int) -> None:
        self.table = nn.Parameter(self.table[:, :max_seq_len].detach().clone())

    def get_extra_state(self) -> dict:  # a state entry that is no tensor: no shape to compare
        return {"version": 1}

    def set_extra_state(self, state: dict) -> None:
        pass


@pytest.mark.parametrize("encoding", [LearnedRelativeBias, CroppedRelativeBias])
def test_a_crop_that_leaves_a_length_sized_tensor_is_refused(encoding: type) -> None:
    """Without its own crop() a registered encoding kept its (n_head, 32) table after a fine-tune's
    crop_block_size(16): the run trained and saved, and its resume and samples failed on the shape."""
    POSITION_ENCODING_REGISTRY.register("relbias")(encoding)
    try:
        model = ConfigurableGPT(get_debug_config("custom", position_encoding="relbias", block_size=32))
        if encoding is LearnedRelativeBias:
            with pytest.raises(ConfigError, match=r"'relbias' cannot shrink to block_size=16: .*'table'.*crop"):
                model.crop_block_size(16)
            assert model.config.block_size == 32  # as its weights still are: a model caught and saved loads again
            return
        model.crop_block_size(16)
        fresh = ConfigurableGPT(get_debug_config("custom", position_encoding="relbias", block_size=16))
        fresh.load_state_dict(model.state_dict())  # what a resume of the fine-tune does
    finally:
        del POSITION_ENCODING_REGISTRY["relbias"]


class OwnGELU(nn.GELU):
    """One's own GELU taking approximate= as the built-in does."""

    def __init__(self, approximate: str = "none", **_: object) -> None:
        super().__init__(approximate=approximate)


def test_gelu_approximate_reaches_the_activations_that_take_it_and_no_partial_that_binds_it() -> None:
    """A partial binding approximate='tanh' was built exact (the config's default overrode it); a registered
    GELU taking approximate= was refused gelu_approximate='tanh' as 'not GELU', and its tanh and exact
    variants shared a name."""
    from gptlab.config.model import check_keys_take_effect

    ACTIVATION_REGISTRY["gelu_new"] = functools.partial(OwnGELU, approximate="tanh")
    ACTIVATION_REGISTRY["owngelu"] = OwnGELU
    try:
        for preset in ("custom", "gpt2"):  # gpt2's own gelu_approximate='tanh' leaves the partial's too
            model = ConfigurableGPT(get_debug_config(preset, activation="gelu_new"))
            assert model.blocks[0].ffn.act.approximate == "tanh"
        bound = get_debug_config("custom", activation="gelu_new", gelu_approximate="tanh")
        with pytest.raises(ConfigError, match=r"activation='gelu_new' binds approximate= itself"):
            check_keys_take_effect(bound, {"gelu_approximate"})
        own = get_debug_config("custom", activation="owngelu", gelu_approximate="tanh")
        assert check_keys_take_effect(own, {"gelu_approximate"}) is own
        assert ConfigurableGPT(own).blocks[0].ffn.act.approximate == "tanh"
        exact = get_debug_config("custom", activation="owngelu")
        assert own.get_architecture_name() != exact.get_architecture_name()
        assert "owngelu_tanh-standard" in own.get_architecture_name() and own.computed() != exact.computed()
        ACTIVATION_REGISTRY["leaky_t"] = functools.partial(nn.LeakyReLU, negative_slope=0.2)
        with pytest.raises(ConfigError, match=r"activation='leaky_t' takes no approximate="):  # binds another
            check_keys_take_effect(
                get_debug_config("custom", activation="leaky_t", gelu_approximate="tanh"), {"gelu_approximate"}
            )
        with pytest.raises(ConfigError, match=r"activation='relu' takes no approximate="):
            check_keys_take_effect(
                get_debug_config("custom", activation="relu", gelu_approximate="tanh"), {"gelu_approximate"}
            )
    finally:
        del ACTIVATION_REGISTRY["gelu_new"], ACTIVATION_REGISTRY["owngelu"]
        ACTIVATION_REGISTRY.pop("leaky_t", None)


class GatedNorm(nn.Module):
    """RMSNorm plus a zero-initialised correction: a component that sets its own Linear's init."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.delta = eps, nn.Linear(ndim, ndim, bias=False)

    def init_weights(self) -> None:
        nn.init.zeros_(self.delta.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y + self.delta(y)


def test_a_component_keeps_the_init_its_init_weights_draws() -> None:
    """GPT-2's init pass drew N(0, 0.02) over a component's zero-initialised Linear; its init_weights() now
    runs after it. The model's other weights keep GPT-2's init."""
    NORM_REGISTRY.register("gatednorm")(GatedNorm)
    try:
        model = ConfigurableGPT(get_debug_config("llama", normalization="gatednorm"))
        assert all(torch.count_nonzero(m.delta.weight) == 0 for m in model.modules() if isinstance(m, GatedNorm))
        assert 0.015 < model.blocks[0].attn.qkv.weight.std() < 0.025
    finally:
        del NORM_REGISTRY["gatednorm"]

    class OtherConventions(GatedNorm):  # torchtitan's init_weights(init_std), nn.Module.apply's (m): not called
        def init_weights(self, init_std: float) -> None:
            raise AssertionError("called")

    class ForApply(GatedNorm):
        def init_weights(self, m: nn.Module) -> None:
            raise AssertionError("called")

    for norm in (OtherConventions, ForApply):
        NORM_REGISTRY.register("othernorm")(norm)
        try:
            ConfigurableGPT(get_debug_config("llama", normalization="othernorm"))
        finally:
            del NORM_REGISTRY["othernorm"]


def test_unregistered_names_are_rejected_again_after_removal() -> None:
    with pytest.raises(ConfigError, match="normalization='scalenorm'"):
        get_debug_config("custom", normalization="scalenorm")


def test_position_context_defaults_are_noops() -> None:
    ctx = PositionContext()
    assert ctx.rotate is None and ctx.bias is None


def test_factories_take_an_activation_name_and_say_what_a_class_must_take() -> None:
    """The design document's build_ffn(config.ffn_type, ..., activation) with config.activation, a name; a
    registered class that cannot take the interface's arguments is one ConfigError naming them."""
    from gptlab.errors import ConfigError
    from gptlab.model import build_ffn, build_position_encoding

    assert build_ffn("standard", 8, 16, False, 0.0, "gelu")(torch.randn(1, 2, 8)).shape == (1, 2, 8)

    class TwoArgs(nn.Module):
        def __init__(self, num_heads: int, max_seq_len: int) -> None:
            super().__init__()

    POSITION_ENCODING_REGISTRY["two_args_t"] = TwoArgs
    try:
        with pytest.raises(ConfigError, match="'TwoArgs' must take the keywords max_seq_len, n_embd"):
            build_position_encoding("two_args_t", 16, n_embd=8, n_head=2, head_dim=4, rope_theta=1e4)
    finally:
        del POSITION_ENCODING_REGISTRY["two_args_t"]

    class PlainModule(nn.Module):  # the right constructor, but none of the hooks the model calls
        def __init__(self, max_seq_len: int, **_: object) -> None:
            super().__init__()

    POSITION_ENCODING_REGISTRY["plain_t"] = PlainModule
    try:
        with pytest.raises(ConfigError, match=r"'PlainModule' must subclass gptlab\.model\.components\.PositionEnc"):
            ConfigurableGPT(get_debug_config("custom", position_encoding="plain_t"))
    finally:
        del POSITION_ENCODING_REGISTRY["plain_t"]


def test_a_checkpoint_with_a_registered_component_loads_its_buffers(registered: None, tmp_path) -> None:
    """from_pretrained checks a checkpoint's shapes on the meta device, then builds the model as training
    does: a registered position encoding's non-persistent table (computed in __init__, in no state dict)
    is there again, and the logits are the trained model's."""
    from gptlab.model.convert import model_from_checkpoint

    cfg = get_debug_config("custom", position_encoding="sinusoidal", normalization="scalenorm")
    model = ConfigurableGPT(cfg).eval()
    loaded = model_from_checkpoint({"arch": cfg.to_dict(), "model": model.state_dict()})
    assert torch.equal(loaded.pos_encoding.table, model.pos_encoding.table)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    assert torch.equal(loaded(x, x)[1], model(x, x)[1])


def test_sdpa_repeats_gqa_kv_only_where_no_fused_kernel_takes_enable_gqa() -> None:
    from gptlab.model.attention import expands_kv_for_sdpa

    assert expands_kv_for_sdpa("cuda", torch.float32)
    assert not expands_kv_for_sdpa("cuda", torch.bfloat16) and not expands_kv_for_sdpa("cuda", torch.float16)
    assert not expands_kv_for_sdpa("cpu", torch.float32)


@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_with_repeated_kv_computes_what_enable_gqa_does(monkeypatch, with_bias: bool) -> None:
    """The repeat path (taken for float32 GQA on CUDA) run on the CPU against SDPA's own GQA, values and grads."""
    import gptlab.model.attention as attention

    torch.manual_seed(0)
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(2))
    bias = torch.randn(4, 16, 16).tril() if with_bias else None
    results = []
    for repeat in (False, True):
        monkeypatch.setattr(attention, "expands_kv_for_sdpa", lambda _device, _dtype, r=repeat: r)
        y = attention.sdpa_attention(q, k, v, bias=bias, dropout_p=0.0)
        grads = torch.autograd.grad(y.square().sum(), (q, k, v))
        results.append((y, *grads))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)
