"""Activation memory of one training forward: the bytes autograd keeps for backward, tensor by tensor.

Derivation. Walk ``ConfigurableGPT.forward`` and list, for every op, the tensors its backward
needs (what PyTorch's autograd saves), counting each storage once (a view saved twice costs
nothing extra; a view keeps its whole base alive). Parameters and registered buffers are not
activations. With N = batch x seq tokens, H = n_embd, D = FFN width, V = vocab, h = heads,
c = compute bytes (4 for float32, 2 under bf16/fp16 autocast), r = 4 (the residual stream stays
float32 under autocast because the embeddings and master weights are float32):

(``residual_cast``, TrainConfig.residual_dtype: the stream in c bytes under autocast. Its gradients and a
checkpointed block's input take c; a norm's saved input c on the CPU, whose autocast leaves LayerNorm alone
(its bf16 output then shared by the matmuls it feeds), and 4 on CUDA, whose autocast copies LayerNorm's input
to float32; RMSNorm's ``normed`` c; a post-norm block's matmuls read the c-byte stream. Equal to the byte on
the CPU, tests/telemetry/test_activations.py.)

- Linear: its input (the weight is a parameter, or under autocast a cached low-precision copy,
  counted once per weight in ``weight_copies``). Under autocast a float32 input is cast per
  consumer (a gated FFN casts its input twice; RoPE's three QKV products share one explicit cast);
  in float32 the consumers share one tensor.
- LayerNorm: input (r*H) and mean, rstd (4+4 per token; c+c where PyTorch's CPU kernel runs a model
  cast to bf16, as FSDP2's mixed precision does). RMSNorm (``F.rms_norm`` in float32,
  then ``weight * normed``): input, rstd and the float32 ``normed`` (4*H) for the weight's grad.
- SDPA: q, k, v (without RoPE, views of the fused QKV output, which therefore stays alive whole:
  c*(H + 2*kv_dim); with RoPE q, k and v come from three products, and v, c*kv_dim, and the rotated
  q and k are saved), the output (c*H, whose
  layout is already (B, T, h, hd), so ``out_proj`` saves the same storage) and the float32
  log-sum-exp (4*h). No (T, T) tensor. An ALiBi bias is saved once (float32, shared by all
  layers) or once per layer (its low-precision cast under autocast). GQA in float32 on CUDA: K and V
  repeated to the full head count (2*c*H, ``expands_kv_for_sdpa``); the tensors they came from are
  still counted (the QKV output, or RoPE's q, k and v), an upper bound.
- manual: q, k, v copies at the full head count (3*c*H, made for the batched matmuls; GQA's
  ``repeat_interleave`` outputs), the softmax probabilities (B*h*T*T: c on the CPU; float32 plus a
  c-byte copy for attn@V on CUDA, whose autocast runs softmax in float32), the boolean causal mask
  (T*T, per layer) and the contiguous copy of the output for ``out_proj`` (c*H). With one head and
  RoPE no copies are made: the rotated q and k, and v, as for SDPA.
- FFN: standard: input + activation input + activation output (ReLU saves only its output, which
  is also ``w_out``'s input); gated: input + gate pre-activation, gate, value and product (4*c*D).
- Embedding: the token ids (8 bytes each) and, for learned positions, the position ids (8*T);
  loss: the float32 log-softmax (4*V per token), the targets (8 per token) and a scalar.
- RoPE under autocast: cos and sin cast for q and for k in every layer (4 * T * hd * c).

Beyond the saved tensors, the loss backward briefly holds two float32 (N, V) gradients
(``backward_start_bytes``). The (B, T, V) logits themselves are freed when the forward returns: the training
step keeps only the loss (nanoGPT's ``logits, loss = model(x, y)`` would hold them, c*V*N, through
the backward). The figures are for eager
mode: torch.compile fuses ops and usually saves less.

With the chunked LM head + loss (``loss_chunk_size`` = k > 0, gptlab.model.loss) nothing of size
(N, V) exists: saved are the head's input gradient (r*H*N) and a float32 weight gradient (4*V*H)
instead of the head input, the log-softmax and the targets, and the head's weight is cast inside
the loss, not cached. The transient is the larger of backward's scaled copies of those two and the
last chunk's forward temporaries: the head input (r*H*N, alive until the loss returns), a chunk's
float32 logits turned softmax in place (4*k*V), the chunk input cast (c*k*H) or, in float32, the
chunk's input-gradient product (4*k*H); under low precision also the softmax's c-byte copy (c*k*V)
and the weight cast (c*V*H), and then, the float32 softmax freed, the (V, H) weight-gradient product
(c*V*H) and the float32 copy of it that PyTorch's CPU kernels make for the mixed-dtype accumulation
(4*V*H; counted on every device, an upper bound on CUDA): the larger of 4*k*V and those two. On CUDA
the Triton kernel (gptlab.model.loss_kernel) keeps no float32 softmax at all: the plan is an upper
bound there. Backward's copies are 4*V*H + r*H*N, plus c*V*H under FSDP2 (the
weight gradient cast to the gathered weight's dtype). float16 autocast follows the bf16 formulas.

Dropout: a mask per site (the embeddings', each block's two residual branches'; a bool per element
on CUDA, a noise tensor in the input's dtype on a CPU) and, for the attention's, the math SDPA path a
CPU takes under dropout (or ``sdpa_backend='math'``): float32 copies of q, k, v (K and V at the full
head count), the float32 probabilities, their mask and the dropped copy; after a CPU's dropout the
attention backward holds one (T, T) gradient beyond them, two otherwise.

Assumptions: batch >= 2 (with one sequence, reshapes may alias instead of copy), SDPA's fused kernel
where PyTorch picks one (CUDA's flash / memory-efficient take dropout without a stored mask), FSDP2
with ``MixedPrecisionPolicy`` (parameters gathered in the compute dtype, so no autocast weight copies).
Activation checkpointing means every ``TransformerBlock`` wrapped by
``torch.utils.checkpoint`` (non-reentrant): each block keeps only its input, and backward
recomputes one block at a time, so one block's full set is added as the transient peak.

Moments. The planner walks a step's memory through the moments where its peak can fall
(``gptlab.telemetry.planner.backward_moments``); this estimate gives their activation parts. The
forward's end: the saved tensors (under checkpointing each block's input and its autocast weight
copy, cached until the forward returns) and the logits, c*V*N, with their float32 copy for the loss
(4*V*N under low precision), or the chunked loss's last chunk. The loss backward: the same less the
weight copies of checkpointed blocks and the logits, plus its transient. A block's backward (the
blocks above done, their gradients made): the blocks below (their inputs, or their whole sets), the
ids (and ALiBi's shared bias) and the largest of: the FFN's backward start (the block's set,
recomputed under checkpointing, an incoming r*H*N gradient and the hidden layer's gradients, one
c*D*N tensor for a standard FFN (two under bf16 autocast, measured), two for a gated one), the
attention's (the FFN's saved part freed, its weight gradients made, two r*H*N gradients and q, k,
v's gradients in c bytes (and float32 accumulators under low precision), or for manual attention
twice the probabilities) and the block's end (its weight gradients, two r*H*N gradients). The
embedding's backward: every gradient, the incoming r*H*N one and, with tied weights, the
embedding's own (V, H) float32 gradient beside the LM head's (two such under float32 with the plain
loss, measured).
Blocks in between lie on the line between the last and the first. On the CPU against PyTorch's
memory profiler this was exact where the loss backward or the embedding's is the peak, and 0-9%
high where a block's is with 8 or more tokens per micro-batch per unit of width; with about one
token per unit, where weight gradients outweigh activations, up to 9% low (the order of a block's
weight gradients is not followed).

Checked in tests/telemetry/test_activations.py: equal to the byte to what ``saved_tensors_hooks``
sees, across norms, positions, backends, FFNs and GQA, in float32 and bfloat16 autocast, and to
PyTorch's memory profiler at the end of forward. (With batch 1, manual attention with RoPE keeps
an aliased base alive: about 6% more than estimated on the test model.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptlab.config.model import ModelArchitectureConfig
from gptlab.errors import ConfigError
from gptlab.telemetry.params import parameter_shapes

INDEX_BYTES = 8  # token, target and position ids are int64
FP32 = 4
LOW_PRECISION = {"bfloat16": 2, "float16": 2, "bf16": 2, "fp16": 2}
FULL_PRECISION = {"float32": 4, "fp32": 4, "float": 4}


def compute_bytes(dtype: str) -> int:
    """Bytes per element of the matmul outputs: 2 under bf16/fp16 autocast, 4 in float32."""
    key = str(dtype).removeprefix("torch.").lower()
    if key in LOW_PRECISION:
        return LOW_PRECISION[key]
    if key in FULL_PRECISION:
        return FULL_PRECISION[key]
    raise ConfigError(f"dtype={dtype!r} is not one of float32, bfloat16, float16")


@dataclass
class ActivationEstimate:
    """Bytes saved for backward by one micro-batch's forward, by component."""

    per_layer: dict[str, int]  # one TransformerBlock's saved tensors
    other: dict[str, int]  # embeddings, final norm, LM-head input, loss, weight copies, shared biases
    n_layer: int
    activation_checkpointing: bool
    checkpoint_input_bytes: int  # what a checkpointed block keeps: its input
    loss_backward_bytes: int  # the loss backward's two float32 (N, V) gradients, alive together
    notes: list[str] = field(default_factory=list)
    loss_chunk_bytes: int = 0  # chunked loss: the forward's temporaries at its last chunk (module docstring)
    # The backward timeline's pieces (module docstring, "Moments"):
    logits_bytes: int = 0  # plain loss: the (N, V) logits and their float32 copy, alive at the forward's end
    through_blocks_bytes: int = 0  # of ``other``, what stays alive through the blocks' backward (ids, ALiBi bias)
    ffn_saved_bytes: int = 0  # of one block's set, the FFN's part and its norm's, freed before attention's backward
    ffn_backward_bytes: int = 0  # the FFN backward's gradients of its hidden layer (transient)
    attention_backward_bytes: int = 0  # the attention backward's q/k/v (or score) gradients (transient)
    residual_grad_bytes: int = 0  # one gradient of the residual stream (r * H * N)
    embedding_backward_bytes: int = 0  # the token embedding's backward, beyond the gradients (tied: the head's too)
    logits_grad_bytes: int = 0  # plain loss: the float32 gradient of the logits the head's backward reads
    head_grad_bytes: int = 0  # one float32 (V, H) gradient: the LM head's, or the token embedding's

    @property
    def layer_bytes(self) -> int:
        return sum(self.per_layer.values())

    @property
    def blocks_bytes(self) -> int:
        if self.activation_checkpointing:
            # Every block's input, every block's autocast weight copy (held in autocast's cache until
            # the forward ends), and one block's full set while backward recomputes it.
            copies = self.per_layer.get("weight_copies", 0)
            return self.n_layer * (self.checkpoint_input_bytes + copies) + self.layer_bytes - copies
        return self.n_layer * self.layer_bytes

    @property
    def saved_bytes(self) -> int:
        """All tensors saved for backward (what ``saved_tensors_hooks`` sees, storages counted once)."""
        return self.blocks_bytes + sum(self.other.values())

    @property
    def forward_end_bytes(self) -> int:
        """Memory beyond parameters and optimizer states as the loss's forward ends: the saved tensors (under
        checkpointing each block's input and autocast weight copy, which autocast's cache holds until the
        forward returns), the logits and their float32 copy, or the chunked loss's last chunk."""
        return self._blocks_kept(forward=True) + sum(self.other.values()) + (self.loss_chunk_bytes or self.logits_bytes)

    @property
    def backward_start_bytes(self) -> int:
        """... and as backward starts: the saved tensors (under checkpointing the blocks' inputs alone) and the
        loss backward's transients. Exact (to a few bytes, by PyTorch's memory profiler) in every case tested
        where the vocabulary outweighs the layer widths, as at real sizes."""
        return self._saved_in_backward + self.loss_backward_bytes

    @property
    def head_backward_bytes(self) -> int:
        """... and as the LM head's backward runs (plain loss; 0 with the chunked one, whose head gradients are
        made in the forward): the saved tensors and the logits' gradient, before the head's weight gradient."""
        if not self.logits_grad_bytes:
            return 0
        return self._saved_in_backward + self.logits_grad_bytes

    @property
    def peak_bytes(self) -> int:
        """The larger of the two moments before any gradient exists (``forward_end_bytes``,
        ``backward_start_bytes``); the blocks' and the embedding's backward, which meet gradients, are
        added by the planner (``gptlab.telemetry.planner.backward_moments``)."""
        return max(self.forward_end_bytes, self.backward_start_bytes)

    @property
    def _saved_in_backward(self) -> int:
        """What backward starts with: the blocks' saved tensors (under checkpointing their inputs) and the rest."""
        return self._blocks_kept(forward=False) + sum(self.other.values())

    def _blocks_kept(self, *, forward: bool) -> int:
        if not self.activation_checkpointing:
            return self.n_layer * self.layer_bytes
        copies = self.per_layer.get("weight_copies", 0) if forward else 0
        return self.n_layer * (self.checkpoint_input_bytes + copies)

    def block_backward_bytes(self, index: int, *, block_grads: int, ffn_grads: int) -> int:
        """Activation memory while block ``index`` runs its backward (the blocks above it are done), with the
        block's own weight gradients (``block_grads`` bytes, ``ffn_grads`` of them its FFN's and FFN norm's):
        the blocks below it and the ids kept, plus the largest of three moments: the FFN's backward (the
        block's whole set, recomputed under checkpointing, and the hidden layer's gradients), the
        attention's (the FFN's part freed, its gradients made) and the block's end (all its gradients)."""
        below = (index + 1) * self.checkpoint_input_bytes if self.activation_checkpointing else index * self.layer_bytes
        g = self.residual_grad_bytes
        ffn = self.layer_bytes + g + self.ffn_backward_bytes
        attention = self.layer_bytes - self.ffn_saved_bytes + ffn_grads + 2 * g + self.attention_backward_bytes
        end = block_grads + 2 * g
        return below + self.through_blocks_bytes + max(ffn, attention, end)

    @property
    def loss_transient_bytes(self) -> int:
        """The loss's short-lived memory on top of the saved tensors: its backward's or its forward's last
        chunk's, whichever larger (the plan's ``loss_backward`` row)."""
        return max(self.loss_backward_bytes, self.loss_chunk_bytes)


def estimate_activations(
    config: ModelArchitectureConfig,
    batch_size: int,
    seq_len: int | None = None,
    *,
    dtype: str = "bfloat16",
    attention_backend: str | None = None,
    activation_checkpointing: bool = False,
    device_type: str = "cuda",
    weight_copies: bool = True,
    loss_chunk_size: int = 0,
    residual_cast: bool = False,
    sdpa_backend: str = "auto",
) -> ActivationEstimate:
    """Bytes autograd saves in one forward of ``batch_size`` sequences (see the module docstring).

    ``dtype`` is the autocast dtype ('float32' for none); ``device_type`` matters only for the
    manual backend under autocast and LayerNorm's statistics in a low-precision model;
    ``weight_copies=False`` for FSDP2 with a mixed-precision policy;
    ``loss_chunk_size`` > 0 for the chunked LM head + loss (TrainConfig.loss_chunk_size);
    ``residual_cast`` for a residual stream in the autocast dtype (TrainConfig.residual_dtype; no effect
    without autocast or under FSDP2's policy, whose stream is in that dtype already);
    ``sdpa_backend`` the SDPA kernel asked for (TrainConfig.sdpa_backend): 'math', and any SDPA on a CPU with
    dropout (its fused kernel takes none), runs PyTorch's unfused math path, which saves the (T, T) probabilities.
    """
    B = int(batch_size)
    T = config.block_size if seq_len is None else int(seq_len)
    N = B * T  # tokens in the micro-batch
    H, h, hd, V = config.n_embd, config.n_head, config.head_dim, config.vocab_size
    q_dim, kv_dim = h * hd, config.kv_heads * hd
    c = compute_bytes(dtype)
    autocast = c < FP32
    # FSDP2's mixed-precision policy (weight_copies=False) runs the model itself in the compute dtype, the
    # embeddings, residual stream and norms included; autocast keeps those in float32
    model_cast = autocast and not weight_copies
    r = c if model_cast else FP32  # the norms' float32 outputs under autocast; the residual stream but for:
    residual_cast = autocast and not model_cast and residual_cast
    stream = c if residual_cast else r  # the residual stream (and its gradient): autocast's dtype when cast
    layernorm = config.normalization in ("layernorm", "layernorm_nobias")
    # CUDA's autocast computes LayerNorm in float32 (a float32 copy of a low-precision input, a float32 output);
    # the CPU's leaves it to the input's dtype. RMSNorm computes in float32 (``x.float()``) and its float32 weight
    # makes the output float32.
    low_norm_output = residual_cast and layernorm and device_type == "cpu"
    post_norm = config.norm_position == "post"  # each block's matmuls read the stream (or its cast), not a norm's
    low_block_input = low_norm_output or (residual_cast and post_norm)
    backend = attention_backend or config.attention_backend
    notes: list[str] = []
    dropout = config.dropout > 0
    # a dropout's saved mask per element: the CPU's dropout keeps a noise tensor in its input's dtype (multiplied
    # in), CUDA's fused dropout a bool mask
    cpu = device_type == "cpu"
    # PyTorch's math SDPA: q, k, v upcast to float32 copies (K and V at the full head count), the float32
    # probabilities, under dropout its mask and the dropped probabilities
    math_sdpa = backend == "sdpa" and unfused_sdpa(config, device_type, sdpa_backend)

    def matmul_input(consumers: int, low: bool = low_block_input) -> int:
        # float32, or a tensor already in the compute dtype: the consumers share it; autocast of a float32 tensor:
        # each Linear saves its own cast copy
        return consumers * c * H * N if autocast and not model_cast and not low else (c if low else r) * H * N

    # what one norm saves (every norm of the model is the same kind)
    if layernorm:
        # mean and rstd: float32, except PyTorch's CPU kernel on a low-precision model (FSDP2's) keeps its dtype
        stats = c if model_cast and device_type == "cpu" else FP32
        norm_input = stream if device_type == "cpu" else r  # CUDA autocast's float32 copy of a cast stream
        norm_saved = norm_input * H * N + 2 * stats * N  # input, mean, rstd
    elif config.normalization == "rmsnorm":
        # input (its float32 copy for a cast stream), rstd, ``normed`` (float32, or cast to the stream's dtype)
        norm_saved = r * H * N + FP32 * N + (c if residual_cast else FP32) * H * N
    else:
        notes.append(f"normalization={config.normalization!r} assumed to save its input and output")
        norm_saved = r * H * N + FP32 * H * N

    layer: dict[str, int] = {"norms": 2 * norm_saved, "attn_input": matmul_input(1)}
    rope = config.rotary
    if config.position_encoding not in ("none", "learned_absolute", "rope", "alibi"):
        like = "what 'rope' saves" if rope else "what 'alibi' saves" if config.position_attention_bias else "nothing"
        notes.append(f"position_encoding={config.position_encoding!r} assumed to save {like}")
    if math_sdpa:
        # one head in a float32 model (no autocast copies): k and v stay views of the fused QKV output, which the
        # math path's saved tensors then keep whole beside its copies (measured: two q-sized more; RoPE copies them)
        whole_qkv = h == 1 and not autocast and not rope
        layer["qkv_float32_copies"] = (5 if whole_qkv else 3) * FP32 * q_dim * N
        layer["attn_probs"] = FP32 * B * h * T * T
        if dropout:
            layer["attn_dropout_mask"] = (FP32 if cpu else 1) * B * h * T * T
            layer["attn_dropped"] = FP32 * B * h * T * T
        layer["attn_output"] = c * q_dim * N
    elif backend == "sdpa":
        if rope:  # q, k and v by three products (gptlab.model.attention): v is a tensor of its own
            layer["v"] = c * kv_dim * N
            layer["rope_qk"] = c * (q_dim + kv_dim) * N
        else:
            layer["qkv_output"] = c * (q_dim + 2 * kv_dim) * N
        layer["attn_output"] = c * q_dim * N
        layer["logsumexp"] = FP32 * h * N
        if config.position_attention_bias and autocast:
            layer["alibi_bias_cast"] = c * h * T * T
        if kv_dim < q_dim and not autocast and _sdpa_repeats_kv(device_type):
            layer["kv_repeated"] = 2 * c * q_dim * N  # K and V at the full head count (float32 GQA on CUDA)
    else:  # manual, or a registered backend of unknown internals: taken to save what manual saves
        if backend != "manual":
            from gptlab.model.attention import attention_backend

            attention_backend(backend)  # one that cannot be called as (q, k, v, *, bias, dropout_p): as training says
            notes.append(
                f"attention_backend={backend!r} assumed to save what 'manual' saves (the T x T probabilities): "
                "an upper bound for a fused kernel"
            )
        prob_bytes = FP32 + c if (autocast and device_type == "cuda") else c
        if rope and h == 1:  # one head: RoPE's q, k and v (three products) are contiguous already, so the
            # matmuls save them instead of copies
            layer["v"] = c * kv_dim * N
            layer["rope_qk"] = c * (q_dim + kv_dim) * N
        else:
            layer["qkv_copies"] = 3 * c * q_dim * N
        layer["attn_probs"] = prob_bytes * B * h * T * T
        if dropout:  # F.dropout of the probabilities (float32 from CUDA autocast's softmax): its mask, and
            # on a CPU the dropped probabilities the matmul saves in place of the softmax's output
            layer["attn_dropout_mask"] = (c if cpu else 1) * B * h * T * T
            if cpu:
                layer["attn_dropped"] = c * B * h * T * T
        if not config.position_attention_bias:
            layer["causal_mask"] = T * T  # bool
        layer["attn_output"] = c * q_dim * N
    if rope and autocast:
        layer["rope_tables_cast"] = 4 * T * hd * c
    layer.update(_ffn_saved(config, c, N, matmul_input, notes))

    chunked = loss_chunk_size > 0
    low_head_input = low_norm_output if config.final_norm else residual_cast
    head_input = (c if low_head_input else r) * H * N  # the final norm's output, or the stream
    other: dict[str, int] = {"token_ids": INDEX_BYTES * N}
    if dropout:  # the embeddings' dropout, on their float32 sum (the compute dtype under FSDP2's policy)
        other["embedding_dropout_mask"] = (r if cpu else 1) * H * N
    if not chunked:  # the ids, plus nll_loss's float32 total-weight scalar
        other["targets"] = INDEX_BYTES * N + FP32
    if config.position_encoding == "learned_absolute":
        other["position_ids"] = INDEX_BYTES * T
    # ALiBi's float32 (1, h, T, T) bias is one tensor shared by all layers: saved by SDPA when no
    # autocast cast intervenes, and kept for recomputation by checkpointed blocks.
    shared_bias = (backend == "sdpa" and not autocast) or activation_checkpointing
    if config.position_attention_bias and shared_bias:
        other["alibi_bias"] = FP32 * h * T * T
    if config.final_norm:
        other["final_norm"] = norm_saved
    if chunked:
        other["lm_head_grad_input"] = head_input
        other["lm_head_grad_weight"] = FP32 * V * H
    else:
        other["lm_head_input"] = matmul_input(1, low_head_input)
        other["log_softmax"] = FP32 * V * N
    ffn_copies = 0
    # each Linear's weight, cast once per forward (autocast caches it; under RoPE the QKV weight's three slices,
    # views autocast does not cache, are cast per use: the same bytes, held no longer than their product, so
    # with activation checkpointing this counts the QKV copy a little longer than it lives)
    if autocast and weight_copies:
        shapes = [s for s in parameter_shapes(config) if s.matmul]
        layer["weight_copies"] = c * sum(s.numel for s in shapes if s.name.startswith("blocks.0."))
        ffn_copies = c * sum(s.numel for s in shapes if s.name.startswith("blocks.0.ffn."))
        if not chunked:  # the chunked loss casts the LM head itself, transiently
            other["weight_copies"] = c * sum(s.numel for s in shapes if not s.name.startswith("blocks."))
    loss_chunk = 0
    if chunked:
        k = min(loss_chunk_size, N)
        loss_chunk = head_input
        if autocast:
            cast_weight = c * V * H if weight_copies else 0  # FSDP2 gathers the weight in c already
            # the float32 softmax is freed once its c-byte copy exists, before the weight-gradient product
            loss_chunk += c * k * V + c * k * H + cast_weight + max(FP32 * k * V, c * V * H + FP32 * V * H)
        else:
            loss_chunk += FP32 * k * V + FP32 * k * H
    if dropout:  # the residual branches' dropouts (after the attention's and the FFN's output projections)
        layer["dropout_masks"] = 2 * (c if cpu else 1) * H * N
    # the backward timeline (module docstring, "Moments")
    # gated: the gradients of gate and value; standard: of the activation's input (and, measured under bf16
    # autocast, one more D-wide tensor)
    ffn_backward = (2 if _gated(config) else 1 + autocast) * c * config.ffn_hidden_dim * N
    # beyond the saved tensors: the gradients of the probabilities and of the scores; under a CPU's dropout the
    # dropped probabilities and the mask are freed by then, so one (T, T) gradient more at most
    after_dropout = 1 if dropout and cpu else 2
    if math_sdpa:
        attention_backward = after_dropout * FP32 * B * h * T * T
    elif backend == "sdpa":
        qkv = (q_dim + 2 * kv_dim) * N
        attention_backward = c * qkv + (FP32 * qkv if autocast else 0)
    else:
        attention_backward = after_dropout * layer["attn_probs"]  # the scores' gradients, softmax's in and out
    kept = ("token_ids", "position_ids", "alibi_bias")
    return ActivationEstimate(
        per_layer=layer,
        other=other,
        n_layer=config.n_layer,
        activation_checkpointing=activation_checkpointing,
        checkpoint_input_bytes=stream * H * N,
        loss_backward_bytes=_chunked_loss_backward(V, H, head_input, c, weight_copies) if chunked else 2 * FP32 * V * N,
        notes=notes,
        loss_chunk_bytes=loss_chunk,
        logits_bytes=0 if chunked else c * V * N + (FP32 * V * N if autocast else 0),
        through_blocks_bytes=sum(v for k, v in other.items() if k in kept),
        ffn_saved_bytes=layer["ffn_input"] + layer["ffn_hidden"] + layer["norms"] // 2 + ffn_copies,
        ffn_backward_bytes=ffn_backward,
        attention_backward_bytes=attention_backward,
        residual_grad_bytes=stream * H * N,
        logits_grad_bytes=0 if chunked else FP32 * V * N,
        head_grad_bytes=FP32 * V * H,
        embedding_backward_bytes=r * H * N
        + (FP32 * V * H * (1 if autocast or chunked else 2) if config.weight_tying else 0),
    )


def unfused_sdpa(config: ModelArchitectureConfig, device_type: str, sdpa_backend: str = "auto") -> bool:
    """Whether SDPA runs PyTorch's math path, which stores the (T, T) probabilities: asked for
    (``sdpa_backend='math'``), or on a CPU under dropout (its fused kernel takes none)."""
    return sdpa_backend == "math" or (device_type == "cpu" and config.dropout > 0)


def _chunked_loss_backward(V: int, H: int, head_input: int, c: int, weight_copies: bool) -> int:
    """The chunked loss's backward: the stored gradients times the incoming one (float32 (V, H), and the head
    input's (N, H) of ``head_input`` bytes), plus, for FSDP2's low-precision gathered weight, that gradient's
    cast to its dtype."""
    cast_back = c * V * H if (c < FP32 and not weight_copies) else 0
    return FP32 * V * H + head_input + cast_back


def _gated(config: ModelArchitectureConfig) -> bool:
    from gptlab.model.components import GatedFFN
    from gptlab.model.registry import FFN_REGISTRY

    cls = FFN_REGISTRY.get_component(config.ffn_type)
    return isinstance(cls, type) and issubclass(cls, GatedFFN)


def _sdpa_repeats_kv(device_type: str) -> bool:
    import torch

    from gptlab.model.attention import expands_kv_for_sdpa

    return expands_kv_for_sdpa(device_type, torch.float32)


def _ffn_saved(config: ModelArchitectureConfig, c: int, N: int, matmul_input: object, notes: list[str]) -> dict:
    from gptlab.model.components import StandardFFN
    from gptlab.model.registry import ACTIVATION_REGISTRY, FFN_REGISTRY, is_builtin

    D = config.ffn_hidden_dim
    cls = FFN_REGISTRY.get_component(config.ffn_type)
    activation = config.gate_activation or config.activation
    if not is_builtin(ACTIVATION_REGISTRY.get(activation)):  # its backward may keep more (or less) than its input
        notes.append(f"activation={activation!r} assumed to save its input, as GELU does")
    if _gated(config) or config.ffn_gated:
        if not _gated(config):  # a registered class that declares gated = True
            notes.append(f"ffn_type={config.ffn_type!r} assumed to save what the built-in gated FFNs save")
        # gate pre-activation, gate activation, value, gate * value (a ReLU gate's backward reads its output,
        # which the product saves anyway: no pre-activation)
        hidden = 3 if activation == "relu" else 4
        return {"ffn_input": matmul_input(2), "ffn_hidden": hidden * c * D * N}  # type: ignore[operator]
    if cls is not StandardFFN:
        notes.append(f"ffn_type={config.ffn_type!r} assumed to save what the standard FFN saves")
    # ReLU's backward reads its output, which is also w_out's input; the others read their input.
    hidden = 1 if config.activation == "relu" else 2
    return {"ffn_input": matmul_input(1), "ffn_hidden": hidden * c * D * N}  # type: ignore[operator]


__all__ = ["ActivationEstimate", "compute_bytes", "estimate_activations"]
