"""FLOPs per component, from the architecture config alone (no model, no device).

Conventions, stated once and used everywhere:

- A multiply-add is 2 FLOPs; a (m x k) @ (k x n) matmul costs 2*m*k*n.
- "Matmul FLOPs" are the model FLOPs of MFU: projections, QK^T, attn@V, FFN and LM head.
  Embedding lookups do no arithmetic and are excluded. Everything else (norms, activations,
  softmax, RoPE, ALiBi, residual adds, biases, loss) is a separate, rougher estimate that is
  reported beside MFU and never added to its numerator.
- Attention scores are counted two ways (ERRATA 6): ``full-square`` (every query against all S
  keys: the PaLM / nanoGPT convention behind published MFU figures, and what FlopCounterMode
  counts) and ``causal`` (query t against its t+1 visible keys: S(S+1)/2 pairs per sequence, the
  work a kernel that skips the masked half must still do).
- Training = forward + backward, and the backward of a matmul is two matmuls of the same size
  (grad wrt input, grad wrt weight), so training matmul FLOPs = 3 x forward.
- Hardware FLOPs (HFU) add what is computed twice: under activation checkpointing the forward of
  every block again (all but a pre-norm block's last matmul, the FFN output projection, when there
  is no dropout: PyTorch stops recomputing once every saved tensor is back), and the QK^T that fused
  attention kernels recompute in backward.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import ConfigError, first_line, unknown_choice
from gptlab.telemetry.mfu import estimate_mfu_detailed, expected_tokens_per_sec  # MFU = these FLOPs / time / peak

# torch.device types the FLOPs (HFU) and the memory plan tell apart ('cuda' stands for ROCm too)
DEVICE_TYPES = ("cuda", "cpu", "mps")


def checked_seq_len(seq_len: Any, block_size: int) -> int:
    """A sequence length the model runs: ``block_size`` for None, else an integer in [1, block_size] (a fraction
    was truncated, '8' taken, a length past block_size counted)."""
    if seq_len is None:
        return block_size
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or not 1 <= seq_len <= block_size:
        raise ConfigError(f"seq_len={seq_len!r} is invalid: expected an integer in [1, block_size={block_size}]")
    return int(seq_len)


# rows that occur once per token, not once per layer
_ONCE = ("lm_head", "loss", "position_add", "position_encoding", "final_norm_matmuls")
TRAIN_FACTOR = 3  # forward (1) + backward (2: grad wrt input and grad wrt weight, each the forward's size)

# Non-matmul work, in FLOPs per element, counting a transcendental (exp, tanh, erf, rsqrt) as 1.
# These are estimates: kernels fuse and approximate them differently; they are never part of MFU.
NORM_FLOPS = {"layernorm": 7, "layernorm_nobias": 6, "rmsnorm": 4}  # LN: mean, sub, sq, var, scale, weight, bias
DEFAULT_NORM_FLOPS = 7  # an unknown registered norm is assumed to cost what LayerNorm does
ACTIVATION_FLOPS = {"relu": 1, "leaky_relu": 2, "silu": 4, "gelu": 8}  # silu: exp, add, div, mul; gelu ~8
DEFAULT_ACTIVATION_FLOPS = 8
SOFTMAX_FLOPS = 6  # per score: scale, max, subtract, exp, sum, divide
ROPE_FLOPS = 4  # per rotated element: x*cos, rotate_half's negation, *sin, add
LOSS_FLOPS = 4  # per vocabulary entry: max, subtract, exp, sum (log_softmax), then one gather per token


@dataclass(frozen=True)
class FlopRow:
    """One component: forward FLOPs per token for ONE instance, and how many instances there are."""

    name: str
    forward: float
    count: int
    matmul: bool
    note: str = ""
    convention: str = ""  # attention scores only: 'full-square' or 'causal' (each total uses one of them)

    @property
    def per_layer(self) -> bool:
        return self.name not in _ONCE

    @property
    def forward_total(self) -> float:
        return self.forward * self.count

    @property
    def training_total(self) -> float:
        return TRAIN_FACTOR * self.forward_total


@dataclass
class FlopsBreakdown:
    """Per-token FLOPs of one architecture at one sequence length; every total is a sum of ``rows``."""

    config: ModelArchitectureConfig
    seq_len: int
    activation_checkpointing: bool
    rows: list[FlopRow] = field(default_factory=list)
    device_type: str = "cuda"  # where SDPA runs: its kernels decide whether backward recomputes QK^T
    # what the count could not measure (a registered component's code that does not run on the meta
    # device): said beside every figure built on these FLOPs (flops, compare, the startup report)
    caveats: list[str] = field(default_factory=list)

    def _sum(self, *, matmul: bool, causal: bool = False, per_layer: bool | None = None) -> float:
        skip = "full-square" if causal else "causal"
        return sum(
            r.forward_total
            for r in self.rows
            if r.matmul == matmul and r.convention != skip and (per_layer is None or r.per_layer == per_layer)
        )

    # ---- model (MFU) FLOPs: matmuls only ------------------------------------------------------------
    @property
    def forward_flops_per_token(self) -> float:
        """Forward matmul FLOPs per token, attention counted full-square."""
        return self._sum(matmul=True)

    @property
    def forward_flops_per_token_causal(self) -> float:
        return self._sum(matmul=True, causal=True)

    @property
    def flops_per_token(self) -> float:
        """Training matmul FLOPs per token, full-square attention, LM head in: the PaLM / nanoGPT figure."""
        return TRAIN_FACTOR * self.forward_flops_per_token

    @property
    def flops_per_token_causal(self) -> float:
        return TRAIN_FACTOR * self.forward_flops_per_token_causal

    def row(self, name: str) -> FlopRow:
        return next(r for r in self.rows if r.name == name)

    @property
    def attention_flops_per_layer(self) -> float:
        """Training matmul FLOPs per token of one layer's attention (QKV, QK^T, attn@V, output), full-square."""
        names = ("qkv_proj", "attn_scores (full-square)", "attn_values (full-square)", "out_proj")
        return TRAIN_FACTOR * sum(self.row(n).forward for n in names)

    @property
    def ffn_flops_per_layer(self) -> float:
        return TRAIN_FACTOR * self.row("ffn").forward

    @property
    def attention_to_ffn_ratio(self) -> float:
        return self.attention_flops_per_layer / self.ffn_flops_per_layer

    @property
    def lm_head_flops(self) -> float:
        """Training FLOPs per token of the vocabulary projection (2*H*V forward, ERRATA 4)."""
        return TRAIN_FACTOR * self.row("lm_head").forward

    # ---- hardware (HFU) FLOPs ------------------------------------------------------------------------
    @property
    def recompute_flops_per_token(self) -> float:
        """Matmul FLOPs per token computed a second time: checkpointed blocks' forward, fused QK^T."""
        extra = 0.0
        if self.activation_checkpointing:
            extra += self._sum(matmul=True, per_layer=True) - self._unrecomputed_tail
        if self.fused_attention:
            # Flash / memory-efficient / cuDNN backward recomputes the scores from Q, K and the
            # saved log-sum-exp instead of storing the (S x S) probabilities: one more QK^T.
            extra += self.row("attn_scores (full-square)").forward_total
        return extra

    @property
    def fused_attention(self) -> bool:
        """SDPA runs a fused kernel, except on a CPU with dropout: there it takes the unfused math path,
        which stores the probabilities like the manual backend (GPU kernels all support dropout)."""
        cfg = self.config
        return cfg.attention_backend == "sdpa" and not (self.device_type == "cpu" and cfg.dropout > 0)

    @property
    def _unrecomputed_tail(self) -> float:
        """What a checkpointed block's recompute skips. PyTorch's (non-reentrant) checkpoint stops
        recomputing once every tensor saved for backward is back: a pre-norm block without dropout
        ends in the FFN output matmul, whose output nothing saves (its input is saved, and the
        residual add saves nothing), so that matmul is not run again. Dropout's mask after it, or a
        post-norm after the residual, needs its output: then the whole block is recomputed."""
        cfg = self.config
        from gptlab.model.components import builtin_ffn_matrices

        if cfg.norm_position != "pre" or cfg.dropout > 0 or builtin_ffn_matrices(cfg.ffn_type) is None:
            return 0.0  # (a registered FFN's last op is unknown: taken as recomputed too, an upper bound)
        return 2 * cfg.n_embd * cfg.ffn_hidden_dim * cfg.n_layer

    @property
    def hfu_flops_per_token(self) -> float:
        return self.flops_per_token + self.recompute_flops_per_token

    # ---- everything else ------------------------------------------------------------------------------
    @property
    def non_matmul_forward_flops_per_token(self) -> float:
        """Estimate of norms, activations, softmax, RoPE, ALiBi, residuals, biases and loss (full-square)."""
        return self._sum(matmul=False)

    @property
    def non_matmul_flops_per_token(self) -> float:
        """Training estimate: elementwise backward taken as about twice the forward, like matmuls."""
        return TRAIN_FACTOR * self.non_matmul_forward_flops_per_token

    def table(self) -> list[dict[str, Any]]:
        """One dict per component: forward/training FLOPs per token (all instances) and the share of
        the forward matmul total."""
        total = self.forward_flops_per_token
        return [
            {
                "component": r.name,
                "kind": "matmul" if r.matmul else "other (estimate)",
                "count": r.count,
                "forward_flops_per_token": r.forward_total,
                "training_flops_per_token": r.training_total,
                "share_of_matmul": r.forward_total / total if r.matmul and r.convention != "causal" else None,
                "note": r.note,
            }
            for r in self.rows
        ]


def compute_flops(
    config: ModelArchitectureConfig,
    seq_len: int | None = None,
    *,
    activation_checkpointing: bool = False,
    device_type: str = "cuda",
) -> FlopsBreakdown:
    """Per-component FLOPs per token of ``config`` at ``seq_len`` (default ``block_size``); ``device_type``
    only matters to HFU (whether SDPA's backward recomputes QK^T there)."""
    if device_type not in DEVICE_TYPES:  # 'CPU' or 'tpu' was counted as a GPU's HFU, silently
        raise unknown_choice("device_type", device_type, DEVICE_TYPES)
    S = checked_seq_len(seq_len, config.block_size)
    H, L, V = config.n_embd, config.n_layer, config.vocab_size
    h, hd = config.n_head, config.head_dim
    q_dim = h * hd  # = H: query heads x head size
    kv_dim = config.kv_heads * hd  # GQA: K and V have n_kv_head heads, so their projections shrink
    D = config.ffn_hidden_dim
    ffn_forward, ffn_note, ffn_measured = _ffn_forward_flops(config)
    causal_keys = (S + 1) / 2  # mean visible keys per query under the causal mask: (1 + 2 + ... + S) / S

    rows = [
        # QKV projection: (H) @ (H, q_dim + 2*kv_dim) per token, 2 FLOPs per multiply-add.
        FlopRow("qkv_proj", 2 * H * (q_dim + 2 * kv_dim), L, True, f"GQA: K,V {config.kv_heads}/{h} heads"),
        # QK^T: each of h query heads dots its hd-vector with S keys (GQA shares keys, not this work).
        FlopRow("attn_scores (full-square)", 2 * S * q_dim, L, True, "PaLM/nanoGPT convention", "full-square"),
        # attn @ V: each query head mixes S value vectors of size hd.
        FlopRow("attn_values (full-square)", 2 * S * q_dim, L, True, "PaLM/nanoGPT convention", "full-square"),
        FlopRow("attn_scores (causal)", 2 * causal_keys * q_dim, L, True, "unmasked (S+1)/2 keys", "causal"),
        FlopRow("attn_values (causal)", 2 * causal_keys * q_dim, L, True, "unmasked (S+1)/2 keys", "causal"),
        # Output projection (ERRATA 3): (q_dim) @ (q_dim, H).
        FlopRow("out_proj", 2 * q_dim * H, L, True),
        FlopRow("ffn", ffn_forward, L, True, ffn_note),
        # LM head (ERRATA 4): (H) @ (H, V) for every position in training.
        FlopRow("lm_head", 2 * H * V, 1, True, "tied" if config.weight_tying else "untied"),
    ]
    from gptlab.model.attention import attention_backend

    attention_backend(config.attention_backend)  # a registered one that cannot be called so: as training says
    attention_caveat = _registered_attention_flops(config, S, rows)
    position_rows, position_caveat = _registered_position_flops(config, S)
    norm_rows, norm_caveat = _registered_norm_flops(config)
    rows += position_rows + norm_rows
    rows += _non_matmul_rows(config, S, q_dim, kv_dim, D)
    recompute_caveat = _recompute_caveat(config, bool(norm_rows)) if activation_checkpointing else None
    notes = (None if ffn_measured else ffn_note, attention_caveat, position_caveat, norm_caveat, recompute_caveat)
    caveats = [note for note in notes if note]
    return FlopsBreakdown(config, S, activation_checkpointing, rows, device_type, caveats)


def _recompute_caveat(config: ModelArchitectureConfig, norm_multiplies: bool) -> str | None:
    """Where HFU's recompute count is an upper bound: a checkpointed block stops recomputing before the ops whose
    output nothing saves, and a registered component's last ops only its code knows (the block's last one: the
    FFN of a pre-norm block without dropout, the second norm of a post-norm block)."""
    from gptlab.model.components import builtin_ffn_matrices

    if config.norm_position == "post" and norm_multiplies:
        last = f"normalization {config.normalization!r}: the post-norm block's last norm"
    elif config.norm_position == "pre" and not config.dropout and builtin_ffn_matrices(config.ffn_type) is None:
        last = f"ffn_type {config.ffn_type!r}: the pre-norm block's FFN"
    else:
        return None
    return (
        f"{last} is taken as recomputed in full under activation checkpointing in HFU (an upper bound: its last "
        "matmul, if nothing saves its output, is not run again)"
    )


def _meta_failure(e: Exception) -> str | None:
    """Why a registered component's forward cannot run on the meta device (data-dependent code, such as a
    router's nonzero), or None when the error is the component's own bug, which training would hit too."""
    if not isinstance(e, NotImplementedError) and "meta" not in str(e).lower():
        return None
    return _said(e)


def _said(e: Exception) -> str:
    """An error in a note's words: its type and first line, cut with an ellipsis (mid-word, it read ', )')."""
    line = first_line(e)
    if not line.strip():
        return type(e).__name__
    return f"{type(e).__name__}: {line if len(line) <= 160 else line[:157] + '...'}"


def _ffn_forward_flops(config: ModelArchitectureConfig) -> tuple[float, str, bool]:
    """Forward matmul FLOPs per token of one FFN, the row's note, and whether the count is exact. Built-in
    FFNs: (in, out) input matrices H -> D and one output matrix D -> H, 2*H*D each (ERRATA 5). A registered
    FFN is run once on the meta device under FlopCounterMode (shapes only, no data), so any structure is
    counted; one whose forward cannot run there is estimated."""
    from gptlab.model.components import build_activation, build_ffn, builtin_ffn_matrices, runs_own_activation

    H, D = config.n_embd, config.ffn_hidden_dim
    matrices = builtin_ffn_matrices(config.ffn_type)
    if matrices is not None and not runs_own_activation(config):
        return 2 * H * D * matrices, f"{config.ffn_type}: {matrices} matrices, D={D}", True

    tokens = 8
    with torch.device("meta"):
        act = build_activation(config.activation, approximate=config.gelu_approximate)
        ffn = build_ffn(config.ffn_type, H, D, config.bias, config.dropout, act)
        x = torch.empty(1, tokens, H)
    flops, why = _count_on_meta(lambda: _same_shape(f"ffn_type={config.ffn_type!r}", ffn(x), x))
    if why is not None:  # no meta kernel for data-dependent code (a router's nonzero)
        matrix_params = sum(p.numel() for p in ffn.parameters() if p.dim() >= 2)
        return (
            2 * matrix_params,
            f"{config.ffn_type}: estimated as every matrix once per token (its forward cannot run on the meta "
            f"device: {why}), D={D}",
            False,
        )
    with_activation = f" with activation {config.activation!r}" if runs_own_activation(config) else ""
    measured = f"{config.ffn_type}{with_activation}: measured (FlopCounterMode, meta device), D={D}"
    return flops / tokens, measured, True


def _same_shape(component: str, out: object, x: torch.Tensor, layout: str = "(B, T, n_embd)") -> None:
    """A registered FFN, norm or position encoding returns its input's shape: one that does not is refused here,
    by every command that counts FLOPs (a run's startup among them), not by a traceback inside the model's first
    forward (or its first evaluation's)."""
    shape = getattr(out, "shape", None)
    if shape != x.shape:
        got = f"shape {tuple(shape)}" if shape is not None else f"a {type(out).__name__}"
        raise ConfigError(
            f"{component} returned {got} for an input of shape {tuple(x.shape)}: a registered component must return "
            f"a tensor of its input's shape {layout}"
        )


def _count_on_meta(run: Callable[[], object]) -> tuple[int, str | None]:
    """The FLOPs FlopCounterMode counts while ``run`` runs a registered component on the meta device, or why
    it cannot run there (data-dependent code); the component's own bug, which training would hit too, raises."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            run()
    except (NotImplementedError, RuntimeError) as e:
        if (why := _meta_failure(e)) is None:
            raise
        return 0, why
    return counter.get_total_flops(), None


def _registered_norm_flops(config: ModelArchitectureConfig) -> tuple[list[FlopRow], str | None]:
    """Matmul FLOPs per token of a registered normalization (a built-in one does none: its elementwise work
    is estimated with the rest), measured as a registered FFN is, on the meta device under
    FlopCounterMode; one whose forward cannot run there is a caveat."""
    from gptlab.model.components import build_norm
    from gptlab.model.registry import NORM_REGISTRY, is_builtin

    name = config.normalization
    if is_builtin(NORM_REGISTRY.get(name)):
        return [], None
    tokens = 8
    with torch.device("meta"):
        norm = build_norm(name, config.n_embd, config.norm_eps)
        x = torch.empty(1, tokens, config.n_embd)
    flops, why = _count_on_meta(lambda: _same_shape(f"normalization={name!r}", norm(x), x))
    if why is not None:
        return [], f"normalization {name!r}: its matmuls are not counted (it cannot run on the meta device: {why})"
    per_token = flops / tokens
    if not per_token:
        return [], None
    note = f"{name}: measured (FlopCounterMode, meta device)"
    rows = [FlopRow("norm_matmuls", per_token, 2 * config.n_layer, True, f"{note}, two per block")]
    if config.final_norm:  # outside the blocks: not recomputed by activation checkpointing
        rows.append(FlopRow("final_norm_matmuls", per_token, 1, True, note))
    return rows, None


def _registered_attention_flops(config: ModelArchitectureConfig, S: int, rows: list[FlopRow]) -> str | None:
    """A registered attention backend's matmul FLOPs, measured as a registered FFN's are (meta device,
    FlopCounterMode, one sequence of S tokens, no bias: its causal mask its own): where they differ from the
    standard QK^T and AV that the attention rows count (a differential attention's two score matrices), the
    rows are scaled to them (``rows`` in place) and said; a backend that cannot run there is a caveat: its
    FLOPs are taken as standard attention's."""
    from torch.utils.flop_counter import FlopCounterMode

    from gptlab.model.attention import attention_backend
    from gptlab.model.registry import ATTENTION_BACKEND_REGISTRY, is_builtin

    name = config.attention_backend
    if is_builtin(ATTENTION_BACKEND_REGISTRY.get(name)):
        return None
    backend = attention_backend(name)
    with torch.device("meta"):
        q = torch.empty(1, config.n_head, S, config.head_dim)
        kv = torch.empty(1, config.kv_heads, S, config.head_dim)
        # the bias an encoding adds to the scores (ALiBi's, the mask included), as training passes it
        bias = torch.empty(1, config.n_head, S, S) if config.position_attention_bias else None
    try:
        with FlopCounterMode(display=False) as counter:
            backend(q, kv, kv, bias=bias, dropout_p=0.0)
    except Exception as e:  # a kernel of its own (Triton, CUDA) takes no meta tensors: not the backend's bug
        return (
            f"attention_backend {name!r}: counted as standard attention (QK^T and AV); it cannot run on the meta "
            f"device to be measured ({_said(e)})"
        )
    measured = counter.get_total_flops() / S  # forward, per token, one layer
    standard = sum(r.forward for r in rows if r.convention == "full-square")
    if measured <= 0:  # a custom op with a fake kernel (flash-attn's, xformers'): FlopCounterMode counts none
        return (
            f"attention_backend {name!r}: counted as standard attention (QK^T and AV); FlopCounterMode counted "
            "none of its work on the meta device (a custom operator)"
        )
    if standard <= 0 or abs(measured - standard) <= 1e-6 * standard:
        return None
    scale = measured / standard
    for i, row in enumerate(rows):
        if row.convention:  # its full-square and causal rows alike
            note = f"{name}: measured {scale:.3g}x standard attention (FlopCounterMode, meta device)"
            rows[i] = dataclasses.replace(row, forward=row.forward * scale, note=note)
    return None


def _registered_position_flops(config: ModelArchitectureConfig, S: int) -> tuple[list[FlopRow], str | None]:
    """Matmul FLOPs per token of a registered position encoding (the built-in ones do none: RoPE's and
    ALiBi's elementwise work is estimated with the rest), measured as a registered FFN is, on the meta
    device under FlopCounterMode: its ``embed`` of every token, its ``rotate`` of q and k in every layer.
    Its ``context`` runs once per forward pass, shared by the batch's sequences, so it has no per-token
    cost, nor has work of ``embed`` or ``rotate`` that does not grow with the batch (a position table
    projected once): their FLOPs are a caveat, as is code that cannot run on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from gptlab.model.components import position_encoding_for
    from gptlab.model.registry import POSITION_ENCODING_REGISTRY, is_builtin

    name = config.position_encoding
    if is_builtin(POSITION_ENCODING_REGISTRY.get(name)):
        return [], None
    meta = torch.device("meta")
    with meta:
        encoding = position_encoding_for(config)
    counts: dict[str, list[int]] = {"embed": [], "rotate": []}
    try:
        # at one and at two sequences: what grows with the batch is per token, the rest (a table projected
        # once and broadcast) is shared by the batch's sequences and not per-token work
        for batch in (1, 2):
            with meta:
                tok_emb = torch.empty(batch, S, config.n_embd)
                q = torch.empty(batch, config.n_head, S, config.head_dim)
                k = torch.empty(batch, config.kv_heads, S, config.head_dim)
            with FlopCounterMode(display=False) as embed:
                _same_shape(f"position_encoding={name!r}'s embed", encoding.embed(tok_emb), tok_emb)
            with FlopCounterMode(display=False) as per_pass:
                context = encoding.context(S, meta)
            with FlopCounterMode(display=False) as per_layer:
                if context.rotate is not None:
                    for heads in (q, k):
                        rotated = context.rotate(heads)
                        _same_shape(f"position_encoding={name!r}'s rotate", rotated, heads, "(B, heads, T, head_dim)")
            counts["embed"].append(embed.get_total_flops())
            counts["rotate"].append(per_layer.get_total_flops())
    except (NotImplementedError, RuntimeError) as e:
        if (why := _meta_failure(e)) is None:
            raise
        return [], f"position_encoding {name!r}: its matmuls are not counted (it cannot run on the meta device: {why})"
    note = f"{name}: measured (FlopCounterMode, meta device)"
    (embed_1, embed_2), (rotate_1, rotate_2) = counts["embed"], counts["rotate"]
    rows = [
        FlopRow("position_encoding", (embed_2 - embed_1) / S, 1, True, f"{note}, embed"),
        FlopRow("position_rotate", (rotate_2 - rotate_1) / S, config.n_layer, True, f"{note}, rotate q and k"),
    ]
    shared = {
        "context": per_pass.get_total_flops(),
        "embed": 2 * embed_1 - embed_2,
        "rotate (per layer)": 2 * rotate_1 - rotate_2,
    }
    shared = {part: flops for part, flops in shared.items() if flops > 0}
    caveat = None
    if shared:
        parts = ", ".join(f"{part} {flops:,}" for part, flops in shared.items())
        caveat = (
            f"position_encoding {name!r}: forward FLOPs per forward pass at seq_len={S} that the batch's "
            f"sequences share ({parts}; once per batch, not per token): not in the per-token count"
        )
    return [row for row in rows if row.forward > 0], caveat


def _non_matmul_rows(config: ModelArchitectureConfig, S: int, q_dim: int, kv_dim: int, D: int) -> list[FlopRow]:
    """Estimated elementwise work per token (full-square for per-score terms)."""
    H, L, h = config.n_embd, config.n_layer, config.n_head
    norm = NORM_FLOPS.get(config.normalization, DEFAULT_NORM_FLOPS)
    mask = f"{config.position_encoding} bias" if config.position_attention_bias else "mask"
    rows = [
        # Two norms per block, plus the final norm in pre-norm stacks.
        FlopRow("norms", norm * H, 2 * L + int(config.final_norm), False, config.normalization),
        # Softmax over S scores for each of h heads (full-square; about half under causal skipping).
        FlopRow("softmax", SOFTMAX_FLOPS * S * h, L, False, "full-square"),
        # Causal mask or ALiBi bias: one add (or select) per score.
        FlopRow("attn_mask/alibi_bias", S * h, L, False, mask),
        # Residual adds: attention and FFN outputs into the stream.
        FlopRow("residual_adds", 2 * H, L, False),
        # Cross-entropy: log-softmax over the vocabulary.
        FlopRow("loss", LOSS_FLOPS * config.vocab_size, 1, False, "log_softmax + nll"),
    ]  # fmt: skip
    if config.ffn_gated:
        gate = config.gate_activation
        act = ACTIVATION_FLOPS.get(gate or "", DEFAULT_ACTIVATION_FLOPS) + 1  # gate activation, then gate * value
        rows.append(FlopRow("ffn_activation", act * D, L, False, f"{gate} gate x value" if gate else "gate x value"))
    else:
        act = ACTIVATION_FLOPS.get(config.activation, DEFAULT_ACTIVATION_FLOPS)
        rows.append(FlopRow("ffn_activation", act * D, L, False, config.activation))
    if config.rotary:
        rows.append(FlopRow("rope", ROPE_FLOPS * (q_dim + kv_dim), L, False, "rotate q and k"))
    if config.position_encoding == "learned_absolute":
        rows.append(FlopRow("position_add", H, 1, False))
    if config.bias:
        n_ffn_out = D * (2 if config.ffn_gated else 1)
        rows.append(FlopRow("bias_adds", (q_dim + 2 * kv_dim) + H + n_ffn_out + H, L, False))
    return rows


# ------------------------------------------------------------------------------------------------------
# FlopCounterMode support for the CPU's fused attention kernel.
_CPU_FLASH = "_scaled_dot_product_flash_attention_for_cpu"


def _kv_at_query_heads(query_shape: Any, key_shape: Any, value_shape: Any) -> tuple[tuple[int, ...], ...]:
    """Grouped-query attention: the kernel broadcasts each key/value head over its group of query heads,
    so the matmuls are those of K/V at the query's head count. (PyTorch's ``sdpa_flop_count`` before
    2.13 asserts equal head counts; from 2.13 it counts GQA this same way.)"""
    heads = query_shape[1]
    return tuple((shape[0], heads, *shape[2:]) for shape in (key_shape, value_shape))


def register_cpu_sdpa_flop_formula() -> bool:
    """Teach ``torch.utils.flop_counter`` the CPU flash-attention op, which it otherwise counts as 0.

    Forward: QK^T and attn@V, full-square (as PyTorch counts the CUDA kernels). Backward: PyTorch's
    formula for fused kernels (5 matmuls: the recomputed QK^T plus four gradients). Idempotent:
    returns False when a formula is already registered (by us, or by a later PyTorch).
    """
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    fwd = getattr(aten, _CPU_FLASH, None)
    bwd = getattr(aten, _CPU_FLASH + "_backward", None)
    if fwd is None or bwd is None or fwd in flop_registry or fwd.default in flop_registry:
        return False

    @register_flop_formula(fwd)
    def _cpu_flash_forward(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, *_kv_at_query_heads(query_shape, key_shape, value_shape))

    if bwd not in flop_registry and bwd.default not in flop_registry:

        @register_flop_formula(bwd)
        def _cpu_flash_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any,
                                *args: Any, **kwargs: Any) -> int:  # fmt: skip
            key_shape, value_shape = _kv_at_query_heads(query_shape, key_shape, value_shape)
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return True


register_cpu_sdpa_flop_formula()

__all__ = [
    "TRAIN_FACTOR",
    "FlopRow",
    "FlopsBreakdown",
    "compute_flops",
    "estimate_mfu_detailed",
    "expected_tokens_per_sec",
    "register_cpu_sdpa_flop_formula",
]
