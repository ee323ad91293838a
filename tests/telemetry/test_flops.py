"""Analytic FLOPs agree with PyTorch's FlopCounterMode on the real model, for every architecture.

Convention gaps, each accounted for exactly rather than absorbed by the tolerance:

- FlopCounterMode counts attention full-square (a kernel's masked half included), which is our
  ``flops_per_token``; the causal-aware figure is checked separately against its closed form.
- The ``manual`` backend's QK^T and attn@V run as ``bmm`` and are counted as such (GQA's
  repeated K/V give the full query-head count, as in the analytic formula).
- The fused SDPA kernel's backward recomputes QK^T (PyTorch's formula: 5 matmuls, not 4), so for
  the ``sdpa`` backend forward+backward equals our HFU figure, which includes that recompute,
  and exceeds the model-FLOPs figure by exactly one QK^T per layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from gptlab import ConfigError, ConfigurableGPT, get_debug_config, get_preset_config
from gptlab.parallel import apply_activation_checkpointing
from gptlab.telemetry.flops import compute_flops, register_cpu_sdpa_flop_formula
from tests.arch_grid import parametrize_combo

TOLERANCE = 0.005  # the 0.5%; every case below in fact agrees exactly


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_combo(metafunc)


def _count(model: ConfigurableGPT, idx: torch.Tensor, backward: bool) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss = model(idx, idx)
        if backward:
            loss.backward()
    return counter.get_total_flops()


def _close(counted: float, analytic: float) -> bool:
    return abs(counted - analytic) <= TOLERANCE * analytic


def test_flop_counter_agrees_for_every_combination(combo: dict) -> None:
    cfg = get_debug_config("custom", n_layer=2, n_embd=32, n_head=4, block_size=16, vocab_size=64, **combo)
    model = ConfigurableGPT(cfg)
    B, T = 2, cfg.block_size
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    fl = compute_flops(cfg)
    tokens = B * T
    assert _close(_count(model, idx, backward=False), fl.forward_flops_per_token * tokens)
    hardware = fl.hfu_flops_per_token if cfg.attention_backend == "sdpa" else fl.flops_per_token
    assert _close(_count(model, idx, backward=True), hardware * tokens)
    # activation checkpointing: what PyTorch's checkpoint really recomputes (its early stop included)
    apply_activation_checkpointing(model)
    recomputed = compute_flops(cfg, activation_checkpointing=True)
    assert _count(model, idx, backward=True) == recomputed.hfu_flops_per_token * tokens


def test_fused_attention_recompute_is_exactly_one_qk_per_layer() -> None:
    cfg = get_debug_config("llama", n_kv_head=2)
    fl = compute_flops(cfg)
    assert fl.hfu_flops_per_token - fl.flops_per_token == cfg.n_layer * 2 * cfg.block_size * cfg.n_embd
    manual = compute_flops(get_debug_config("llama", n_kv_head=2, attention_backend="manual"))
    assert manual.hfu_flops_per_token == manual.flops_per_token  # the manual backward stores probabilities


def test_cpu_sdpa_with_dropout_recomputes_nothing() -> None:
    """On a CPU, SDPA with dropout runs the unfused math path (probabilities stored, no QK^T recompute):
    HFU there is the model FLOPs, as PyTorch counts; GPU kernels recompute, with dropout too."""
    cfg = get_debug_config("gpt2", dropout=0.1)
    model = ConfigurableGPT(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    cpu = compute_flops(cfg, device_type="cpu")
    assert (
        _count(model, idx, backward=True) == cpu.hfu_flops_per_token * idx.numel() == cpu.flops_per_token * idx.numel()
    )
    gpu = compute_flops(cfg)
    assert gpu.hfu_flops_per_token - gpu.flops_per_token == cfg.n_layer * 2 * cfg.block_size * cfg.n_embd
    no_dropout = get_debug_config("gpt2")  # the CPU's fused kernel recomputes, as the GPU's do
    model = ConfigurableGPT(no_dropout).train()
    hfu = compute_flops(no_dropout, device_type="cpu").hfu_flops_per_token
    assert hfu > cpu.flops_per_token and _count(model, idx, backward=True) == hfu * idx.numel()


def test_gpt2_124m_hand_computed() -> None:
    """ERRATA 12: about 0.85 GFLOP per token for training at S=1024. Per token, per layer (forward):
    QKV 2*768*2304 = 3,538,944; QK^T and attn@V 2*1024*768 = 1,572,864 each; output projection
    2*768*768 = 1,179,648; MLP 2*2*768*3072 = 9,437,184: 17,301,504 x 12 layers = 207,618,048, plus
    the LM head 2*768*50304 = 77,266,944: 284,884,992 forward, x3 for training."""
    fl = compute_flops(get_preset_config("gpt2"))
    assert fl.forward_flops_per_token == 284_884_992
    assert fl.flops_per_token == 854_654_976
    assert fl.lm_head_flops == 3 * 77_266_944  # about a quarter of all FLOPs (ERRATA 4)
    # causal: each score matmul 768 * 1025 per token instead of 2 * 768 * 1024
    assert fl.flops_per_token_causal == 854_654_976 - 3 * 12 * 2 * (1_572_864 - 768 * 1025)
    assert fl.attention_flops_per_layer / fl.ffn_flops_per_layer == pytest.approx(7_864_320 / 9_437_184)
    # nanoGPT / PaLM: 6N + 12*L*H*S with N the 124M parameters; they differ only by biases and norms
    n_params = 124_475_904 - 1024 * 768  # without the position embedding, as nanoGPT's get_num_params
    assert fl.flops_per_token == pytest.approx(6 * n_params + 12 * 12 * 768 * 1024, rel=1e-3)


@pytest.mark.parametrize("preset", ["gpt2", "llama", "llama-gqa"])
def test_124m_shapes_on_meta_and_fake_cpu(preset: str) -> None:
    """Full-size models without allocating: the meta device decomposes SDPA into bmm (no recompute);
    FakeTensorMode on the CPU device runs the fused CPU kernel through our registered formula."""
    overrides = {"n_kv_head": 4} if preset == "llama-gqa" else {}
    name = preset.split("-")[0]
    cfg = get_preset_config(name, n_layer=12, n_embd=768, n_head=12, **overrides)
    fl = compute_flops(cfg)
    T = cfg.block_size
    with torch.device("meta"):
        model = ConfigurableGPT(cfg)
        idx = torch.randint(0, cfg.vocab_size, (1, T))
    assert _close(_count(model, idx, backward=False), fl.forward_flops_per_token * T)
    assert _close(_count(model, idx, backward=True), fl.flops_per_token * T)
    with FakeTensorMode():
        model = ConfigurableGPT(cfg)
        idx = torch.randint(0, cfg.vocab_size, (1, T))
        assert _close(_count(model, idx, backward=True), fl.hfu_flops_per_token * T)


def test_identities_and_conventions() -> None:
    cfg = get_preset_config("llama", n_kv_head=4)
    fl = compute_flops(cfg)
    L = cfg.n_layer
    assert fl.flops_per_token == L * (fl.attention_flops_per_layer + fl.ffn_flops_per_layer) + fl.lm_head_flops
    S = cfg.block_size
    assert fl.row("attn_scores (causal)").forward == pytest.approx(
        fl.row("attn_scores (full-square)").forward * (S + 1) / (2 * S)
    )
    # GQA shrinks only the K and V projections
    mha = compute_flops(get_preset_config("llama"))
    assert mha.row("qkv_proj").forward - fl.row("qkv_proj").forward == 2 * cfg.n_embd * 2 * (12 - 4) * 64
    assert mha.row("attn_scores (full-square)").forward == fl.row("attn_scores (full-square)").forward
    # a shorter sequence only changes attention scores
    short = compute_flops(cfg, seq_len=128)
    assert short.row("ffn").forward == fl.row("ffn").forward
    assert short.row("attn_values (full-square)").forward == fl.row("attn_values (full-square)").forward / 8


def test_gated_ffn_costs_match_errata_5() -> None:
    std = compute_flops(get_preset_config("custom", ffn_type="standard"))
    swiglu = compute_flops(get_preset_config("custom", ffn_type="swiglu"))  # 8H/3 = 2048 exactly
    assert swiglu.ffn_flops_per_layer == std.ffn_flops_per_layer
    wide = compute_flops(get_preset_config("custom", ffn_type="geglu", d_ff=3072))
    assert wide.ffn_flops_per_layer == 1.5 * std.ffn_flops_per_layer


@pytest.mark.parametrize(("norm_position", "dropout"), [("pre", 0.0), ("pre", 0.1), ("post", 0.0)])
def test_activation_checkpointing_adds_block_forward_to_hfu_only(norm_position: str, dropout: float) -> None:
    cfg = get_preset_config("gpt2", attention_backend="manual", norm_position=norm_position, dropout=dropout)
    plain, ckpt = compute_flops(cfg), compute_flops(cfg, activation_checkpointing=True)
    assert ckpt.flops_per_token == plain.flops_per_token  # MFU uses model FLOPs only (ERRATA 7)
    blocks_forward = plain.forward_flops_per_token - plain.row("lm_head").forward
    # a pre-norm block without dropout ends in the FFN output matmul, which the recompute skips
    skipped = 2 * 768 * 3072 * 12 if (norm_position, dropout) == ("pre", 0.0) else 0
    assert ckpt.hfu_flops_per_token == plain.flops_per_token + blocks_forward - skipped
    # and as PyTorch counts it (manual attention: the CPU's SDPA with dropout takes the unfused math path)
    small = get_debug_config("gpt2", attention_backend="manual", norm_position=norm_position, dropout=dropout)
    model = ConfigurableGPT(small).train()
    apply_activation_checkpointing(model)
    idx = torch.randint(0, small.vocab_size, (2, small.block_size))
    hfu = compute_flops(small, activation_checkpointing=True).hfu_flops_per_token
    assert _count(model, idx, backward=True) == hfu * idx.numel()


def test_non_matmul_work_is_reported_apart() -> None:
    ln, rms = (
        compute_flops(get_preset_config("gpt2")),
        compute_flops(get_preset_config("gpt2", normalization="rmsnorm")),
    )
    assert ln.flops_per_token == rms.flops_per_token
    assert ln.non_matmul_flops_per_token > rms.non_matmul_flops_per_token > 0
    rope = compute_flops(get_preset_config("gpt2", position_encoding="rope"))
    alibi = compute_flops(get_preset_config("gpt2", position_encoding="alibi"))
    assert {r["component"] for r in rope.table()} >= {"rope", "softmax", "norms", "loss", "residual_adds"}
    assert rope.flops_per_token == alibi.flops_per_token
    assert all(r["share_of_matmul"] is None for r in ln.table() if r["kind"] != "matmul")


def test_cpu_sdpa_formula_is_registered_once() -> None:
    assert register_cpu_sdpa_flop_formula() is False  # done on import; a second call changes nothing
    q = torch.randn(2, 4, 16, 8)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert counter.get_total_flops() == 2 * 2 * (2 * 4 * 16 * 16 * 8)  # QK^T and attn@V, full square, 2 FLOPs/MAC


def test_cpu_sdpa_formula_counts_gqa_as_expanded_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    """GQA through the CPU fused kernel counts as K/V expanded to the query's heads, and never hands
    PyTorch's formulas unequal head counts (before 2.13 they assert equal heads)."""
    import torch.nn.functional as F

    import gptlab.telemetry.flops as flops

    calls = []

    def equal_heads_only(real):  # PyTorch < 2.13's formulas
        def count(*shapes):
            assert len({shape[1] for shape in shapes}) == 1, "sdpa_flop_count: query/key/value shapes are incompatible"
            calls.append(shapes)
            return real(*shapes)

        return count

    monkeypatch.setattr(flops, "sdpa_flop_count", equal_heads_only(flops.sdpa_flop_count))
    monkeypatch.setattr(flops, "sdpa_backward_flop_count", equal_heads_only(flops.sdpa_backward_flop_count))

    def total(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa).sum().backward()
        return counter.get_total_flops()

    q, k, v = (torch.randn(2, h, 16, 8, requires_grad=True) for h in (8, 2, 2))
    grouped = total(q, k, v, gqa=True)
    assert calls, "the CPU fused kernel's formula was not used"
    expanded = total(q, *(t.detach().repeat_interleave(4, dim=1).requires_grad_() for t in (k, v)), gqa=False)
    assert grouped == expanded == 7 * 2 * 2 * 8 * 16 * 16 * 8  # forward 2 matmuls, backward 5 (QK^T again + 4 grads)


@pytest.mark.parametrize("seq_len", [2.7, 0, 100, True])
def test_seq_len_is_a_length_the_model_runs(seq_len: object) -> None:
    """A fraction was truncated and a length past block_size counted, where the CLI, the planner and the
    model refuse them."""
    cfg = get_preset_config("custom", n_layer=1, n_embd=8, n_head=2, block_size=4, vocab_size=16)
    with pytest.raises(ConfigError, match=r"seq_len=.* is invalid: expected an integer in \[1, block_size=4\]"):
        compute_flops(cfg, seq_len=seq_len)  # type: ignore[arg-type]
    assert compute_flops(cfg, seq_len=np.int64(2)).seq_len == 2
    for bad in ("CPU", "tpu"):  # counted as a GPU's HFU, silently
        with pytest.raises(ConfigError, match=rf"device_type={bad!r}"):
            compute_flops(cfg, device_type=bad)


def test_the_memory_plan_refuses_what_training_refuses() -> None:
    """plan_memory from Python: a mistyped sdpa_backend was planned as auto (8 GB under a math-path GPT-2 124M),
    a negative chunk as none, and seq_len 1.99 / '8' as 1 / 8; compute_flops and TrainConfig refuse them."""
    from gptlab.telemetry.planner import plan_memory

    cfg = get_preset_config("custom", n_layer=1, n_embd=8, n_head=2, block_size=4, vocab_size=16)
    for bad, said in [
        ({"sdpa_backend": "Math"}, r"sdpa_backend='Math'"),
        ({"loss_chunk_size": -1024}, r"^loss_chunk_size=-1024 is invalid: expected an integer >= 0$"),
        ({"loss_chunk_size": 2.5}, r"loss_chunk_size=2.5 is invalid"),
        ({"seq_len": 1.99}, r"^seq_len=1.99 is invalid: expected an integer in \[1, block_size=4\]$"),
        ({"seq_len": "2"}, r"seq_len='2' is invalid"),
        ({"seq_len": 5}, r"seq_len=5 is invalid"),
    ]:
        with pytest.raises(ConfigError, match=said):
            plan_memory(cfg, batch_size=1, **bad)
    assert plan_memory(cfg, batch_size=1, seq_len=np.int64(2), sdpa_backend="math").seq_len == 2


def test_the_models_own_mfu_method_counts_its_recomputation_as_flop_counter_mode_does() -> None:
    """model.estimate_mfu_detailed (nanoGPT's estimate_mfu, in full): its HFU counts the recomputation of a model
    whose checkpointing is on, and the attention backward of the device it is on (here a CPU with dropout), as
    a measured training step does; it counted neither."""
    config = get_debug_config("llama", n_layer=2, dropout=0.1)
    model = ConfigurableGPT(config)
    model.gradient_checkpointing_enable()
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    measured = _count(model, idx, backward=True) / idx.numel()
    out = model.estimate_mfu_detailed(2, 1.0, peak_flops=1e12)
    assert out["activation_checkpointing"] and _close(measured, out["hfu_flops_per_token"])
    assert out["hfu_flops_per_token"] > out["flops_per_token"]


@pytest.mark.parametrize(
    ("preset", "overrides", "per_layer", "once"),
    [
        # GPT-2 124M: LayerNorm 7/element (2 per block + final), GELU 8/element of D=3072, learned positions
        # (one add per token), biases on QKV (3H), the output projection (H), the FFN's input (D) and output (H)
        (
            "gpt2",
            {},
            {"softmax": 6 * 1024 * 12, "attn_mask/alibi_bias": 1024 * 12, "residual_adds": 2 * 768,
             "ffn_activation": 8 * 3072, "bias_adds": 3 * 768 + 768 + 3072 + 768},
            {"norms": 7 * 768 * (2 * 12 + 1), "loss": 4 * 50304, "position_add": 768},
        ),
        # LLaMA with 4 of 12 KV heads: RMSNorm 4/element, SiLU gate (4) times the value (1) over D=2048, RoPE
        # 4/element of q (768) and k (4 heads x 64), no biases; softmax over the 12 query heads' scores
        (
            "llama",
            {"n_kv_head": 4},
            {"softmax": 6 * 1024 * 12, "attn_mask/alibi_bias": 1024 * 12, "residual_adds": 2 * 768,
             "ffn_activation": (4 + 1) * 2048, "rope": 4 * (768 + 4 * 64)},
            {"norms": 4 * 768 * (2 * 12 + 1), "loss": 4 * 50304},
        ),
        # GEGLU with biases: two input matrices, so 2D bias adds; GELU gate (8) times the value (1)
        (
            "custom",
            {"ffn_type": "geglu", "bias": True, "d_ff": 3072, "normalization": "layernorm"},
            {"softmax": 6 * 1024 * 12, "attn_mask/alibi_bias": 1024 * 12, "residual_adds": 2 * 768,
             "ffn_activation": (8 + 1) * 3072, "bias_adds": 3 * 768 + 768 + 2 * 3072 + 768},
            {"norms": 7 * 768 * (2 * 12 + 1), "loss": 4 * 50304, "position_add": 768},
        ),
    ],
)  # fmt: skip
def test_non_matmul_estimate_hand_computed(preset: str, overrides: dict, per_layer: dict, once: dict) -> None:
    """The elementwise estimate, row by row, at the per-element costs the module states (S=1024, 12 layers):
    only its relations (LayerNorm > RMSNorm > 0) were checked, so a dropped final norm, RoPE on q only, or the
    softmax over KV heads went unnoticed. Training is 3x forward, as for matmuls."""
    cfg = get_preset_config(preset, **overrides)
    fl = compute_flops(cfg)
    got = {r.name: r.forward_total for r in fl.rows if not r.matmul}
    want = {**{name: 12 * flops for name, flops in per_layer.items()}, **once}
    assert got == want
    assert fl.non_matmul_forward_flops_per_token == sum(want.values())
    assert fl.non_matmul_flops_per_token == 3 * sum(want.values())


def test_matmul_shares_sum_to_one_without_the_causal_rows() -> None:
    """The table's share_of_matmul divides by the full-square total: the causal rows (the same work counted the
    other way) have none, or the shares sum past 1."""
    table = compute_flops(get_preset_config("llama", n_kv_head=4)).table()
    shares = {r["component"]: r["share_of_matmul"] for r in table}
    assert shares["attn_scores (causal)"] is None and shares["attn_values (causal)"] is None
    assert sum(s for s in shares.values() if s is not None) == pytest.approx(1.0, rel=1e-12)
    assert all(r["training_flops_per_token"] == 3 * r["forward_flops_per_token"] for r in table)
