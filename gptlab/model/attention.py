"""Causal self-attention with grouped-query heads and pluggable backends.

A backend is any callable ``(q, k, v, *, bias, dropout_p) -> y`` registered in
``ATTENTION_BACKEND_REGISTRY``; q is (B, n_head, T, hd), k and v are (B, n_kv_head, T, hd).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.errors import ConfigError
from gptlab.model.components import PositionContext, checked_component
from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY, is_builtin


def repeat_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """K and V at q's head count, (B, n_head, T, hd): each KV head serves n_head / n_kv_head query heads."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep == 1:
        return k, v
    return k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)


def expands_kv_for_sdpa(device_type: str, dtype: torch.dtype) -> bool:
    """Whether SDPA gets GQA's K and V repeated to the full head count instead of ``enable_gqa``. In float32
    on CUDA no fused kernel takes ``enable_gqa`` (flash and cuDNN need 16-bit inputs, the memory-efficient
    kernel refuses it: seen on an H200 with PyTorch 2.11), so SDPA would fall back to the math path, which
    stores the (T, T) probabilities; repeated, the memory-efficient kernel takes it."""
    return device_type == "cuda" and dtype == torch.float32


@ATTENTION_BACKEND_REGISTRY.register("sdpa")
def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, dropout_p: float) -> Tensor:
    """PyTorch's fused kernels (flash / memory-efficient / cuDNN where the inputs allow)."""
    gqa = k.shape[1] != q.shape[1]
    if gqa and expands_kv_for_sdpa(q.device.type, q.dtype):
        k, v, gqa = *repeat_kv(q, k, v), False
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, enable_gqa=gqa)


@ATTENTION_BACKEND_REGISTRY.register("manual")
def manual_attention(q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, dropout_p: float) -> Tensor:
    """The explicit softmax(QK^T / sqrt(d)) V, materialising the (T, T) scores; for reference."""
    k, v = repeat_kv(q, k, v)
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, n_head, T, T)
    if bias is None:
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        att = att.masked_fill(~causal, float("-inf"))
    else:
        att = att + bias.to(att.dtype)
    att = F.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, n_head, T, hd)


def attention_backend(name: str) -> Callable[..., Tensor]:
    """The backend registered as ``name``, checked to take ``(q, k, v, *, bias, dropout_p)``: one ConfigError
    when the model is built, or when flops and plan describe it (which build no attention layer)."""
    interface, probe = "(q, k, v, *, bias, dropout_p)", (None, None, None)

    def trial(backend: Callable[..., Tensor]) -> None:  # a builtin's check: a call on a 2-token head
        q = torch.zeros(1, 1, 2, 2)
        out = backend(q, q, q, bias=None, dropout_p=0.0)
        if getattr(out, "shape", None) != q.shape:
            raise TypeError(f"it returned {type(out).__name__} of shape {getattr(out, 'shape', None)}, not q's")

    return checked_component(
        ATTENTION_BACKEND_REGISTRY, name, interface, *probe, bias=None, dropout_p=0.0, _trial=trial
    )


def autocast_input(x: Tensor) -> Tensor:
    """``x`` cast as autocast would cast a matmul's input (a float tensor other than float64, to the autocast
    dtype), once. ``is_autocast_enabled``/``get_autocast_dtype`` only: torch.compile folds them from torch 2.7 on
    (``torch.amp.is_autocast_available`` breaks the graph before 2.13); a meta tensor has no autocast."""
    device = x.device.type
    if device == "meta" or x.dtype == torch.float64 or not x.is_floating_point():
        return x
    return x.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with one fused QKV projection (one (q + 2 kv, C)
    weight). With a rotary position encoding q, k and v are each projected by their slice of that weight (the
    same parameters, values and FLOPs): under torch.compile the one product's split would make backward
    concatenate q, k and v's gradients into a (B, T, q + 2 kv) tensor, and inductor fuses RoPE's backward into
    that concatenation as one masked kernel that ran 10x slower than its bytes (0.31 ms a layer at 16 x 1024
    x 768 on an H200, 3.6 ms of a 38 ms llama step); three products take the three gradients as they are.
    The slices are read from ``qkv.weight`` and ``qkv.bias``: a module put in place of ``qkv`` (anything but
    an ``nn.Linear``) is called as a whole instead, and hooks registered on ``qkv`` do not run under RoPE."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_kv_head: int,
        bias: bool,
        dropout: float,
        backend: str,
    ) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.q_size, self.kv_size = n_head * self.head_dim, n_kv_head * self.head_dim
        self.qkv = nn.Linear(n_embd, self.q_size + 2 * self.kv_size, bias=bias)
        self.out_proj = nn.Linear(self.q_size, n_embd, bias=bias)
        self.out_proj.is_residual_projection = True  # type: ignore[attr-defined]
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.backend = attention_backend(backend)
        self.backend_name = backend
        # a registered backend's output layout is checked (q's (B, n_head, T, hd)): the view below takes any tensor
        # of as many elements, so a (B, T, n_head, hd) one trained on, scrambled, without a word
        self.check_output = not is_builtin(ATTENTION_BACKEND_REGISTRY.get(backend))

    def forward(self, x: Tensor, pos: PositionContext) -> Tensor:
        B, T, _ = x.shape
        sizes = [self.q_size, self.kv_size, self.kv_size]
        if pos.rotate is None or type(self.qkv) is not nn.Linear:
            q, k, v = self.qkv(x).split(sizes, dim=-1)
        else:  # each by its slice of the same weight: see the class docstring
            x = autocast_input(x)  # one cast for the three products (autocast would make, and save, three)
            biases = self.qkv.bias.split(sizes) if self.qkv.bias is not None else (None, None, None)
            q, k, v = (F.linear(x, w, b) for w, b in zip(self.qkv.weight.split(sizes), biases))
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hd)
        if pos.rotate is not None:
            q, k = pos.rotate(q), pos.rotate(k)
        dropout_p = self.dropout if self.training else 0.0
        y = self.backend(q, k, v, bias=pos.bias, dropout_p=dropout_p)  # (B, n_head, T, hd)
        if self.check_output and y.shape != q.shape:  # shapes are ints: no sync (static under compile)
            raise ConfigError(
                f"attention_backend={self.backend_name!r} returned shape {tuple(y.shape)}: expected q's (B, n_head, "
                f"T, hd) = {tuple(q.shape)}"
            )
        y = y.transpose(1, 2).contiguous().view(B, T, self.q_size)  # (B, T, n_head * hd)
        return self.resid_dropout(self.out_proj(y))
