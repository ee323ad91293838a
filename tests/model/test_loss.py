"""The chunked LM head + cross-entropy against the plain ``F.linear`` + ``F.cross_entropy``:
same loss, same gradients, same FLOPs, no (N, V) logits, in float32 and under autocast."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.model.loss import linear_cross_entropy

N, H, V = 37, 16, 101  # prime-ish sizes so that chunks do not divide evenly


def _inputs(ignore: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, H, generator=gen, requires_grad=True)
    w = (0.3 * torch.randn(V, H, generator=gen)).requires_grad_()
    t = torch.randint(0, V, (N,), generator=gen)
    t[:ignore] = -1
    return x, w, t


def _plain(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(x, w), t, ignore_index=-1)


@pytest.mark.parametrize("chunk", [1, 8, 36, 37, 1000])
def test_loss_and_gradients_equal_plain_cross_entropy(chunk: int) -> None:
    x, w, t = _inputs()
    x2, w2 = (x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_())
    want = _plain(x, w, t)
    (3 * want).backward()  # a non-unit upstream gradient
    got = linear_cross_entropy(x2, w2, t, chunk)
    (3 * got).backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w2.grad, w.grad, rtol=1e-5, atol=1e-7)


def test_evaluation_path_and_frozen_weight() -> None:
    x, w, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, w, t, 10), _plain(x, w, t))
    frozen = w.detach()
    loss = linear_cross_entropy(x, frozen, t, 10)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_()
    _plain(x_ref, frozen, t).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-7)


def test_float64_passes_gradcheck_and_the_model_keeps_float64() -> None:
    """A float64 model (a gradcheck's) gets a float64 loss, chunked or not, as nanoGPT's: both were cast to
    float32 (1e-7 off, and gradcheck failed)."""
    x, w, t = (v.detach().double().requires_grad_() if v.is_floating_point() else v for v in _inputs())
    assert torch.autograd.gradcheck(lambda x, w: linear_cross_entropy(x, w, t, 8), (x, w))
    model = ConfigurableGPT(get_debug_config("gpt2", vocab_size=V)).double()
    idx = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx, idx)
    want = F.cross_entropy(logits.view(-1, V), idx.view(-1))
    assert loss.dtype == torch.float64 and torch.equal(loss, want)
    model.loss_chunk_size = 5
    assert torch.allclose(model(idx, idx)[1], want, rtol=1e-14, atol=0)


def test_all_targets_ignored_gives_nan_like_cross_entropy() -> None:
    x, w, t = _inputs(ignore=N)
    assert torch.isnan(_plain(x, w, t)) and torch.isnan(linear_cross_entropy(x, w, t, 8))


def _error_vs_float64(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor, chunk: int, amp: torch.dtype | None) -> tuple:
    """Relative errors of the input and weight gradients against float64, with a 1024 loss scale as
    GradScaler applies, for the plain head (chunk 0) or the chunked one."""
    xd, wd = (v.double().requires_grad_() for v in (x, w))
    F.cross_entropy(xd @ wd.t(), t, ignore_index=-1).backward()
    xl, wl = (v.detach().clone().requires_grad_() for v in (x, w))
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        loss = linear_cross_entropy(xl, wl, t, chunk) if chunk else _plain(xl, wl, t)
    (1024 * loss).backward()
    pairs = ((xl.grad, xd.grad), (wl.grad, wd.grad))
    return tuple(((g.double() / 1024 - r).norm() / r.norm()).item() for g, r in pairs)


@pytest.mark.parametrize(
    ("amp", "weights", "n"),
    [(torch.bfloat16, torch.float32, 2048), (torch.float16, torch.float32, 2048), (None, torch.float16, 2048),
     (None, torch.float16, 16384)],
)  # fmt: skip
def test_low_precision_gradients_at_least_as_accurate_as_plain(
    amp: torch.dtype | None, weights: torch.dtype, n: int
) -> None:
    """With many tokens the per-token gradient (softmax / n_valid, ~1e-8) would flush to zero in float16
    if formed before the loss scale; the chunked head forms softmax - onehot in [-1, 1] and applies
    1/n_valid in float32 arithmetic together with the loss scale (in backward for the input gradient:
    a float16 input, as under FSDP's float16 compute, would not hold it divided by 16k tokens). Checked
    against float64 under bf16 / fp16 autocast and with float16 weights and inputs (no autocast)."""
    gen = torch.Generator().manual_seed(0)
    h, v = 64, 4096 if n <= 2048 else 2048
    x = torch.randn(n, h, generator=gen).to(weights)
    w = (0.02 * torch.randn(v, h, generator=gen)).to(weights)
    t = torch.randint(0, v, (n,), generator=gen)
    t[:100] = -1
    plain = _error_vs_float64(x, w, t, 0, amp)
    chunked = _error_vs_float64(x, w, t, 512, amp)
    assert max(chunked) < 1e-2 and all(c <= 1.1 * p for c, p in zip(chunked, plain)), (chunked, plain)


def test_out_of_range_target_fails_like_cross_entropy() -> None:
    x, w, t = _inputs()
    t[7] = -5  # only -1 means "ignore"
    with pytest.raises((IndexError, RuntimeError)):
        _plain(x, w, t)
    with pytest.raises((IndexError, RuntimeError)):
        linear_cross_entropy(x, w, t, 8)


def test_frozen_weight_skips_its_gradient() -> None:
    """Only the gradients autograd asks for are formed: a frozen head costs 2NHV forward + 2NHV for the
    input gradient, as autograd's plain head does."""
    x, w, t = _inputs()
    totals = []
    for head in (_plain, lambda a, b, c: linear_cross_entropy(a, b, c, 10)):
        with FlopCounterMode(display=False) as counter:
            head(x, w.detach(), t).backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] == 4 * N * H * V


def test_bad_chunk_size() -> None:
    x, w, t = _inputs()
    with pytest.raises(ValueError, match="chunk_size=0"):
        linear_cross_entropy(x, w, t, 0)


def _pair(preset: str, chunk: int, **over: object) -> tuple[ConfigurableGPT, ConfigurableGPT]:
    torch.manual_seed(0)
    cfg = get_debug_config(preset, n_layer=2, n_embd=64, n_head=4, block_size=32, vocab_size=300, **over)
    plain = ConfigurableGPT(cfg)
    chunked = copy.deepcopy(plain)
    chunked.loss_chunk_size = chunk
    return plain, chunked


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(0, 300, (3, 32), generator=gen) for _ in range(2))
    targets[0, :4] = -1
    return idx, targets


@pytest.mark.parametrize(
    ("preset", "dtype", "tolerance"),
    [("gpt2", None, 1e-5), ("llama", None, 1e-5), ("gpt2", torch.bfloat16, 2e-2), ("llama", torch.float16, 2e-2)],
)
def test_model_gradients_match_plain_head(preset: str, dtype: torch.dtype | None, tolerance: float) -> None:
    """gpt2 ties the head to the embedding, llama does not; autocast changes the rounding only."""
    plain, chunked = _pair(preset, chunk=40)
    idx, targets = _batch()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, want = plain(idx, targets)
        none, got = chunked(idx, targets)
    assert logits is not None and none is None  # the chunked head never builds the logits
    want.backward()
    got.backward()
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3 if dtype else 1e-6, atol=1e-5)
    for (name, a), b in zip(plain.named_parameters(), chunked.parameters()):
        scale = a.grad.abs().max()
        assert (a.grad - b.grad).abs().max() <= tolerance * scale, name


def test_training_flops_equal_plain_head() -> None:
    """The chunked head does the same matmuls (2NHV forward, 4NHV for the gradients), no recomputation:
    FlopCounterMode sees the same forward+backward total, so MFU and HFU need no correction."""
    plain, chunked = _pair("llama", chunk=16)
    idx, targets = _batch()
    totals = []
    for model in (plain, chunked):
        with FlopCounterMode(display=False) as counter:
            model(idx, targets)[1].backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1]


def test_sampling_and_eval_unchanged() -> None:
    plain, chunked = _pair("gpt2", chunk=8)
    idx, targets = _batch()
    with torch.no_grad():
        torch.testing.assert_close(chunked(idx, targets)[1], plain(idx, targets)[1], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(chunked(idx)[0], plain(idx)[0])  # no targets: last-position logits


def test_compiles_as_one_graph_and_matches_eager() -> None:
    """torch.compile traces the autograd.Function and its chunk loop without a graph break."""
    pytest.importorskip("torch._inductor")
    plain, chunked = _pair("llama", chunk=20)
    plain.loss_chunk_size = 20  # the eager reference, same weights
    idx, targets = _batch()
    _, got = torch.compile(chunked, fullgraph=True)(idx, targets)
    _, want = plain(idx, targets)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(plain.parameters(), chunked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
