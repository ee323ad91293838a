"""gptlab.model.attention: the QKV projection's two forms compute the same thing, and under RoPE the compiled
backward concatenates no (B, T, q + 2 kv) activation gradient (the slow kernel it made on a GPU)."""

from __future__ import annotations

import pytest
import torch

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.model.attention import CausalSelfAttention
from gptlab.model.components import PositionContext


@pytest.mark.parametrize(("bias", "n_kv_head"), [(False, 4), (True, 2)])
def test_projection_by_weight_slices_equals_the_fused_product(bias: bool, n_kv_head: int) -> None:
    """A rotation that changes nothing takes the sliced path; without one the layer takes the fused product:
    the same outputs and gradients (x, weights, biases), with grouped-query heads too."""
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4, n_kv_head, bias, 0.0, "sdpa")
    if bias:
        torch.nn.init.normal_(layer.qkv.bias)
    x = torch.randn(2, 8, 32)
    results = []
    for pos in (PositionContext(), PositionContext(rotate=lambda t: t)):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        out = layer(xi, pos)
        out.square().sum().backward()
        results.append((out, xi.grad, [p.grad.clone() for p in layer.parameters()]))
    (fused_out, fused_dx, fused_grads), (sliced_out, sliced_dx, sliced_grads) = results
    torch.testing.assert_close(sliced_out, fused_out)
    torch.testing.assert_close(sliced_dx, fused_dx)
    for a, b in zip(fused_grads, sliced_grads):
        torch.testing.assert_close(b, a)


def test_rotary_backward_concatenates_no_activation_gradient() -> None:
    """Under torch.compile the llama preset's backward joins q, k and v's gradients only as the weight's small
    (q + 2 kv, C) gradient; GPT-2's (no rotation) keeps the one product, whose split's backward is that
    (B, T, 3C) concatenation of plain transposes (fast: no RoPE backward fused into it)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def backward_cat_shapes(preset: str) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []

        def bw(gm: torch.fx.GraphModule, _inputs: list) -> object:
            shapes.extend(
                tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "call_function" and "cat" in str(n.target)
            )
            return make_boxed_func(gm.forward)

        torch.manual_seed(0)
        model = ConfigurableGPT(get_debug_config(preset, n_layer=1))
        backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=bw)
        x = torch.randint(0, 256, (2, 16))
        torch.compile(model, backend=backend)(x, x, return_logits=False)[1].backward()
        return shapes

    C = get_debug_config("llama").n_embd
    llama, gpt2 = backward_cat_shapes("llama"), backward_cat_shapes("gpt2")
    assert (3 * C, C) in llama and not any(shape[:2] == (2, 16) for shape in llama), llama
    assert (2, 16, 3 * C) in gpt2, gpt2


def test_a_float64_model_under_autocast_stays_float64() -> None:
    """Autocast leaves float64 alone; the sliced path's one explicit cast must too (a gradcheck's model)."""
    model = ConfigurableGPT(get_debug_config("llama", n_layer=1)).double()
    x = torch.randint(0, 256, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, x)
    assert loss.dtype == torch.float64


def test_a_module_in_place_of_qkv_is_called_under_rope() -> None:
    """The sliced path reads nn.Linear's weight and bias; anything else put in place of ``qkv`` (an adapter, a
    low-precision Linear) runs its own forward, as without RoPE."""
    calls = []

    class Recording(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape)
            return super().forward(x)

    layer = CausalSelfAttention(32, 4, 4, False, 0.0, "sdpa")
    swapped = Recording(32, 96, bias=False)
    swapped.load_state_dict(layer.qkv.state_dict())
    x, pos = torch.randn(2, 8, 32), PositionContext(rotate=lambda t: t)
    want = layer(x, pos)
    layer.qkv = swapped
    torch.testing.assert_close(layer(x, pos), want)
    assert calls == [(2, 8, 32)]


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_attention_dropout_drops_attention_weights(backend: str) -> None:
    """The config's dropout applies to the attention weights under every built-in backend, as nanoGPT's does
    (residual dropout alone kept the model's outputs varying when it did not). By hand: dropout of the causal
    softmax, under the same seed, then times V."""
    import math

    from gptlab.model.attention import manual_attention, sdpa_attention

    attend = {"sdpa": sdpa_attention, "manual": manual_attention}[backend]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=gen) for _ in range(3))
    plain = attend(q, k, v, bias=None, dropout_p=0.0)
    dropped = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        dropped.append(attend(q, k, v, bias=None, dropout_p=0.5))
    assert not torch.allclose(dropped[0], plain) and not torch.allclose(dropped[0], dropped[1])
    if backend == "manual":  # the same random draws as a hand-written reference
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(4)
        weights = scores.masked_fill(torch.ones(8, 8).triu(1).bool(), float("-inf")).softmax(dim=-1)
        torch.manual_seed(1)
        torch.testing.assert_close(dropped[0], torch.nn.functional.dropout(weights, p=0.5) @ v)
    # the module passes its dropout in training and none in evaluation
    model = ConfigurableGPT(get_debug_config("gpt2", dropout=0.3, attention_backend=backend))
    seen: list[float] = []
    attention = model.blocks[0].attn
    inner = attention.backend
    attention.backend = lambda *a, dropout_p, **kw: (seen.append(dropout_p), inner(*a, dropout_p=dropout_p, **kw))[1]
    x = torch.randint(0, 256, (1, 8))
    model.train()(x)
    model.eval()(x)
    assert seen == [0.3, 0.0]
