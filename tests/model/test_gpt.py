"""ConfigurableGPT: every architecture combination trains, backends agree, nanoGPT's API holds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from gptlab import ConfigurableGPT, get_debug_config, get_preset_config
from gptlab.config.model import PRESETS
from tests.arch_grid import GRID, pairwise_cover, parametrize_combo


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_combo(metafunc)


def test_pairwise_cover_covers_every_pair() -> None:
    rows = pairwise_cover(GRID)
    for a, b in itertools.combinations(GRID, 2):
        seen = {(r[a], r[b]) for r in rows}
        assert len(seen) == len(GRID[a]) * len(GRID[b]), (a, b)
    assert len(rows) < 40  # far fewer than the 4608 full combinations


def test_combination_trains(combo: dict) -> None:
    """Builds, runs forward and backward, and lowers the loss on a fixed batch."""
    cfg = get_debug_config("custom", n_layer=2, n_embd=32, n_head=4, block_size=16, vocab_size=64, **combo)
    model = ConfigurableGPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=3e-3, betas=(0.9, 0.95), device_type="cpu")
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (4, 16), generator=gen)
    y = torch.randint(0, 64, (4, 16), generator=gen)
    losses = []
    for _ in range(6):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("position_encoding", ["learned_absolute", "rope", "alibi", "none"])
@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_sdpa_and_manual_backends_agree(position_encoding: str, n_kv_head: int | None, preset: str) -> None:
    cfg = get_debug_config(preset, position_encoding=position_encoding, n_kv_head=n_kv_head, dropout=0.0)
    sdpa = ConfigurableGPT(cfg)
    manual = ConfigurableGPT(
        get_debug_config(preset, position_encoding=position_encoding, n_kv_head=n_kv_head, attention_backend="manual")
    )
    manual.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    a, la = sdpa(x, x)
    b, lb = manual(x, x)
    assert (a - b).abs().max().item() <= 1e-5
    la.backward()
    lb.backward()
    for (name, p), q in zip(sdpa.named_parameters(), manual.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_forward_without_targets_returns_last_position_only() -> None:
    model = ConfigurableGPT(get_debug_config("llama")).eval()
    x = torch.randint(0, 256, (2, 10))
    full, loss = model(x, x)
    last, none = model(x)
    assert none is None and last.shape == (2, 1, 256) and loss.ndim == 0
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_loss_is_cross_entropy_and_ignores_minus_one() -> None:
    model = ConfigurableGPT(get_debug_config("gpt2"))
    x = torch.randint(0, 256, (2, 8))
    y = x.clone()
    y[:, :4] = -1
    logits, loss = model(x, y)
    ref = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 256), y[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_plain_and_chunked_loss_take_the_same_targets() -> None:
    """Sliced (non-contiguous) and int32 targets, as the chunked loss takes them."""
    model = ConfigurableGPT(get_debug_config("gpt2"))
    data = torch.randint(0, 256, (2, 9))
    x, y = data[:, :-1], data[:, 1:]  # y is a non-contiguous view
    plain = model(x, y.contiguous())[1]
    torch.testing.assert_close(model(x, y)[1], plain)
    torch.testing.assert_close(model(x, y.int())[1], plain)
    model.loss_chunk_size = 4
    torch.testing.assert_close(model(x, y.int())[1], plain)


@pytest.mark.parametrize("compiled", [False, True])
def test_residual_cast_keeps_the_stream_in_the_autocast_dtype(compiled: bool) -> None:
    """``residual_cast`` (TrainConfig.residual_dtype): under bf16 autocast every block returns bf16 and the
    residual's gradient is bf16; the loss stays that of autocast's float32 stream to bf16's precision, eager
    and compiled; outside autocast nothing changes (a float32 model, bit for bit)."""
    torch.manual_seed(0)
    model = ConfigurableGPT(get_debug_config("gpt2"))
    x = torch.randint(0, 256, (2, 16))
    streams: list[torch.dtype] = []
    grads: list[torch.dtype] = []
    if not compiled:  # hooks observed eagerly (a backward hook would break the compiled graph at the block)
        model.blocks[-1].register_forward_hook(lambda _m, _i, y: streams.append(y.dtype))
        model.blocks[-1].register_full_backward_hook(lambda _m, _gi, go: grads.append(go[0].dtype))
    run = torch.compile(model) if compiled else model

    def loss(autocast: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = run(x, x)[1]
        if not compiled:
            value.backward()
        return value.detach()

    reference, plain = loss(True), loss(False)
    model.residual_cast = True
    cast = loss(True)
    torch.testing.assert_close(cast, reference, rtol=2e-2, atol=0)
    assert not torch.equal(cast, reference)  # the stream was cast (bf16's rounding reaches the loss)
    assert torch.equal(loss(False), plain)
    if not compiled:
        assert streams == [torch.float32, torch.float32, torch.bfloat16, torch.float32]
        assert grads == [torch.float32, torch.float32, torch.bfloat16, torch.float32]


@pytest.mark.parametrize(("preset", "norm_position"), [("llama", "post"), ("gpt2", "post"), ("llama", "pre")])
def test_residual_cast_holds_after_every_block(preset: str, norm_position: str) -> None:
    """A post-norm block's output is its norm's: RMSNorm's float32 weight times its bf16 output (and, on CUDA,
    autocast's float32 LayerNorm) promoted the stream back to float32 after the first block, though the run
    said "residual stream in bfloat16". Every block now reads and returns the autocast dtype."""
    model = ConfigurableGPT(get_debug_config(preset, n_layer=3, norm_position=norm_position))
    model.residual_cast = True
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, args, y: seen.append((args[0].dtype, y.dtype)))
    x = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, x)[1].backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3


def test_loss_without_logits_gives_no_logits_gradient_to_compiled_backward() -> None:
    """``return_logits=False`` (the training step's): the same loss and gradients, and under torch.compile the
    backward graph takes no (B, T, vocab) gradient for a logits output (with logits returned it does: AOTAutograd
    gives every output a gradient, zeros for unused ones, made and added every micro-step)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def grad_inputs_of_backward(return_logits: bool) -> tuple[list[tuple[int, ...]], torch.Tensor, list]:
        shapes: list[tuple[int, ...]] = []

        def bw(gm: torch.fx.GraphModule, _inputs: list) -> object:
            shapes.extend(tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.name.startswith("tangents"))
            return make_boxed_func(gm.forward)

        torch.manual_seed(0)
        model = ConfigurableGPT(get_debug_config("gpt2"))
        backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=bw)
        x = torch.randint(0, 256, (2, 16))
        logits, loss = torch.compile(model, backend=backend)(x, x, return_logits=return_logits)
        assert (logits is not None) == return_logits
        loss.backward()
        return shapes, loss.detach(), [p.grad for p in model.parameters()]

    with_logits, loss_a, grads_a = grad_inputs_of_backward(True)
    without, loss_b, grads_b = grad_inputs_of_backward(False)
    assert (2, 16, 256) in with_logits and without == [()]  # the loss's gradient alone
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def test_sequence_longer_than_block_size_is_rejected() -> None:
    model = ConfigurableGPT(get_debug_config("gpt2", block_size=8))
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_generate() -> None:
    model = ConfigurableGPT(get_debug_config("llama", block_size=8)).eval()
    start = torch.randint(0, 256, (2, 3))
    out = model.generate(start, max_new_tokens=12, temperature=0.8, top_k=5)
    assert out.shape == (2, 15) and torch.equal(out[:, :3], start)  # runs past block_size by cropping
    greedy = model.generate(start, max_new_tokens=4, temperature=0)
    top1 = model.generate(start, max_new_tokens=4, temperature=1.0, top_k=1)
    assert torch.equal(greedy, top1)
    # past block_size each token is conditioned on the last block_size tokens (nanoGPT's crop), by hand:
    by_hand = start
    for _ in range(12):
        with torch.no_grad():
            logits = model(by_hand[:, -8:])[0]
        by_hand = torch.cat((by_hand, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    assert torch.equal(model.generate(start, max_new_tokens=12, temperature=0), by_hand)
    # the Python API checks what the command line checks (top_k=0 was an IndexError, temperature=-1 drew the
    # least likely tokens)
    for bad, said in [
        ({"top_k": 0}, r"^top_k=0 is invalid: expected None or an integer >= 1$"),
        ({"top_k": 2.5}, "top_k=2.5 is invalid"),
        ({"temperature": -1.0}, r"^temperature=-1.0 is invalid: expected 0 \(greedy\) or a finite float >= 1e-30$"),
        ({"temperature": 1e-40}, "temperature=1e-40 is invalid"),  # torch.multinomial's inf/NaN error mid-generation
        ({"temperature": float("nan")}, "temperature=nan is invalid"),
        ({"max_new_tokens": -1}, r"^max_new_tokens=-1 is invalid: expected an integer >= 0$"),
        ({"vocab_limit": -5}, r"^vocab_limit=-5 is invalid: expected None or an integer >= 1$"),  # masked 5 ids
        ({"vocab_limit": 0}, "vocab_limit=0 is invalid"),  # torch.multinomial's inf/nan error
        ({"vocab_limit": 2.5}, "vocab_limit=2.5 is invalid"),  # a TypeError from the slice
    ]:
        with pytest.raises(ValueError, match=said):
            model.generate(start, **{"max_new_tokens": 2, **bad})
    torch.manual_seed(0)  # 0-d tensors stand for their numbers, as before the checks
    tensors = model.generate(start, torch.tensor(3), temperature=torch.tensor(0.8), top_k=torch.tensor(5))
    torch.manual_seed(0)
    assert torch.equal(tensors, model.generate(start, 3, temperature=0.8, top_k=5))


@pytest.mark.parametrize("position_encoding", ["learned_absolute", "rope", "alibi", "none"])
def test_crop_block_size_keeps_outputs(position_encoding: str) -> None:
    model = ConfigurableGPT(get_debug_config("custom", position_encoding=position_encoding, block_size=32)).eval()
    x = torch.randint(0, 256, (2, 16))
    before, _ = model(x, x)
    model.crop_block_size(16)
    after, _ = model(x, x)
    assert model.config.block_size == 16
    torch.testing.assert_close(before, after)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 17, dtype=torch.long))
    if position_encoding == "learned_absolute":
        assert model.pos_encoding.wpe.weight.shape == (16, 64)


def test_a_model_keeps_its_own_config() -> None:
    """A notebook edits its config for the next experiment: the model built from it is not changed (it was the
    same object: the model's n_layer said 4 with 2 blocks, and save_pretrained wrote 4 layers)."""
    config = get_debug_config("llama", n_layer=2, block_size=32)
    model = ConfigurableGPT(config)
    config.n_layer, config.block_size = 4, 64
    assert (model.config.n_layer, model.config.block_size) == (2, 32) and len(model.blocks) == 2
    model(torch.randint(0, 256, (1, 32)))


def test_weight_tying_and_final_norm() -> None:
    tied = ConfigurableGPT(get_debug_config("gpt2"))
    assert tied.lm_head.weight is tied.wte.weight and tied.norm_f is not None
    untied = ConfigurableGPT(get_debug_config("llama"))
    assert untied.lm_head.weight is not untied.wte.weight
    post = ConfigurableGPT(get_debug_config("custom", norm_position="post"))
    assert post.norm_f is None


def test_num_params_counts() -> None:
    for name in PRESETS:
        model = ConfigurableGPT(get_debug_config(name))
        total = sum(p.numel() for p in model.parameters())
        assert model.get_num_params(non_embedding=False) == total
        lookup = sum(p.numel() for p in model.pos_encoding.parameters())
        if not model.config.weight_tying:
            lookup += model.wte.weight.numel()
        assert model.get_num_params() == total - lookup
    # GPT-2 124M (nanoGPT's padded vocabulary): 124.48M parameters with the position table.
    with torch.device("meta"):
        gpt2 = ConfigurableGPT(get_preset_config("gpt2"))
    assert gpt2.get_num_params(non_embedding=False) == 124_475_904
    assert gpt2.get_num_params() == 123_689_472  # nanoGPT's printed "123.69M": less the 1024 x 768 positions


def test_configure_optimizers_decays_matrices_only() -> None:
    model = ConfigurableGPT(get_debug_config("gpt2"))
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # the tied matrix appears once
    assert opt.defaults.get("fused")  # one kernel for all tensors, on the CPU too
    assert not model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), device_type="mps").defaults.get("fused")
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.95)


def test_gpt2_style_scaled_residual_init() -> None:
    cfg = get_debug_config("llama", n_layer=8, n_embd=256, n_head=4)
    model = ConfigurableGPT(cfg)
    block = model.blocks[0]
    residual_std = 0.02 / math.sqrt(2 * 8)
    for w in (block.attn.out_proj.weight, block.ffn.w_out.weight):
        assert abs(w.std().item() - residual_std) < 0.1 * residual_std
    for w in (block.attn.qkv.weight, block.ffn.w_gate.weight, model.wte.weight, model.lm_head.weight):
        assert abs(w.std().item() - 0.02) < 0.002
    plain = ConfigurableGPT(
        get_debug_config("llama", n_layer=8, n_embd=256, n_head=4, scaled_residual_init=False, init_std=0.01)
    )
    assert abs(plain.blocks[0].attn.out_proj.weight.std().item() - 0.01) < 0.001


def test_dropout_is_active_only_in_training() -> None:
    model = ConfigurableGPT(get_debug_config("gpt2", dropout=0.5))
    x = torch.randint(0, 256, (2, 16))
    model.eval()
    a, _ = model(x, x)
    b, _ = model(x, x)
    torch.testing.assert_close(a, b)
    model.train()
    c, _ = model(x, x)
    assert not torch.allclose(a, c)


def test_a_model_built_on_meta_gets_its_buffers_back() -> None:
    """Meta-device init, to_empty, load_state_dict: the RoPE tables are garbage until init_buffers()."""
    reference = ConfigurableGPT(get_debug_config("llama"))
    with torch.device("meta"):
        model = ConfigurableGPT(get_debug_config("llama"))
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    model.init_buffers()
    x = torch.randint(0, 256, (1, 8))
    torch.testing.assert_close(model(x, x)[1], reference(x, x)[1])


def test_a_tied_model_built_on_meta_stays_tied() -> None:
    """nn.Module.to_empty gives the embedding and the LM head a tensor each: they would train as two
    matrices (more parameters, other optimizer groups). ConfigurableGPT.to_empty ties them again."""
    reference = ConfigurableGPT(get_debug_config("gpt2"))
    with torch.device("meta"):
        model = ConfigurableGPT(get_debug_config("gpt2"))
    assert model.to_empty(device="cpu") is model
    model.load_state_dict(reference.state_dict())
    assert model.lm_head.weight is model.wte.weight
    assert model.get_num_params() == reference.get_num_params()
    assert len(list(model.parameters())) == len(list(reference.parameters()))


def test_gradient_checkpointing_toggles_and_copies_stay_independent() -> None:
    """The switch is a flag the blocks read (not a replaced forward that holds the original's bound method):
    the same loss and gradients, off again, and a deep copy (an EMA or eval copy) computes with its own
    weights; the model still pickles."""
    import copy
    import io

    torch.manual_seed(0)
    model = ConfigurableGPT(get_debug_config("llama"))
    x = torch.randint(0, 256, (2, 16))

    def loss_and_grads(m: ConfigurableGPT) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m.zero_grad()
        loss = m(x, x)[1]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    def saved_tensors(m: ConfigurableGPT) -> int:
        count = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x, x)
        return count[0]

    plain = loss_and_grads(model)
    kept = saved_tensors(model)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    assert saved_tensors(model) < kept / 2  # each block keeps its input only
    checkpointed = loss_and_grads(model)
    torch.testing.assert_close(checkpointed[0], plain[0])
    for a, b in zip(checkpointed[1], plain[1]):
        torch.testing.assert_close(a, b)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.blocks.parameters():
            p.zero_()
    assert not torch.equal(twin(x)[0], model(x)[0])  # the copy runs its own blocks
    model.zero_grad()
    twin(x, x)[1].backward()
    assert all(p.grad is None for p in model.parameters())  # the copy's gradients land on the copy
    assert all(p.grad is not None for p in twin.parameters())
    torch.save(model, io.BytesIO())
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_generate_in_half_precision_takes_a_tiny_temperature() -> None:
    """float16 logits (autocast, or a model in float16) divided by a temperature the sampler accepts overflow
    past 65504: the division, softmax and top-k run in float32, whatever the logits' dtype."""
    torch.manual_seed(0)
    model = ConfigurableGPT(get_debug_config("gpt2")).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits of a trained model's size
    idx = torch.zeros((1, 1), dtype=torch.long)
    out = model.half().generate(idx, 5, temperature=1e-5, top_k=10)  # was: multinomial on NaN probabilities
    assert out.shape == (1, 6) and int(out.max()) < model.config.vocab_size


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_generate_under_autocast_draws_nanogpts_samples(dtype: torch.dtype) -> None:
    """nanoGPT divides by the temperature and takes the top k in the logits' own dtype: the same seed draws the
    same tokens here (float32 only where float16 would overflow)."""
    torch.manual_seed(0)
    model = ConfigurableGPT(get_debug_config("gpt2", vocab_size=50304)).eval()  # GPT-2 sized: rounding ties
    with torch.no_grad():
        model.wte.weight.mul_(40)  # logits far apart, as a trained model's

    @torch.no_grad()
    def nanogpt_generate(idx: torch.Tensor, n: int, temperature: float, top_k: int) -> torch.Tensor:
        for _ in range(n):
            logits = model(idx)[0][:, -1, :] / temperature
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx

    start = torch.zeros(32, 1, dtype=torch.long)
    with torch.autocast("cpu", dtype=dtype):
        torch.manual_seed(1)
        theirs = nanogpt_generate(start, 16, 0.8, 200)
        torch.manual_seed(1)
        ours = model.generate(start, 16, temperature=0.8, top_k=200, vocab_limit=None)
    assert torch.equal(ours, theirs)


def test_generate_stays_inside_a_checkpoints_tokenizer(tmp_path) -> None:
    """A char run's vocabulary is padded (102 -> 128): from_pretrained of its checkpoint samples only ids the
    tokenizer decodes, as `gptlab sample` does."""
    from gptlab.model.convert import model_from_checkpoint

    config = get_debug_config("gpt2", vocab_size=128)
    model = ConfigurableGPT(config)
    with torch.no_grad():
        model.lm_head.weight[100:] = 0.0  # ties: the padding rows of the embedding too
        model.norm_f.bias.zero_()
    ckpt = {"arch": config.to_dict(), "model": model.state_dict(), "tokenizer": {"name": "char", "vocab_size": 100}}
    loaded = model_from_checkpoint(ckpt)
    assert loaded.vocab_limit == 100
    torch.manual_seed(0)
    out = loaded.generate(torch.zeros(8, 1, dtype=torch.long), 64, temperature=5.0)
    assert int(out.max()) < 100
    assert ConfigurableGPT(config).vocab_limit is None  # a model of its own samples the whole vocabulary


def test_a_vocab_limit_keeps_the_random_stream_of_an_unlimited_sample() -> None:
    """nanoGPT samples its padded 50304-wide rows whole; gptlab masks the padding ids rather than cutting
    them off, because multinomial draws a random number per entry: the same seed then gives the same
    samples as nanoGPT's sample.py (its padding ids have ~0 probability), never a padding id."""
    model = ConfigurableGPT(get_debug_config("llama", vocab_size=128)).eval()
    x = torch.zeros(4, 1, dtype=torch.long)
    after = []
    for limit in (100, None):
        torch.manual_seed(3)
        out = model.generate(x, 5, temperature=1.0, vocab_limit=limit)
        after.append(torch.rand(1))
        if limit is not None:
            assert int(out.max()) < limit
    assert torch.equal(after[0], after[1])


def test_the_python_apis_likely_mistakes_are_named() -> None:
    """A preset's name for the config was "'str' object has no attribute 'validate'", one sequence without its
    batch axis an IndexError inside the model, and train() of a dict "'dict' object has no attribute 'train'"."""
    from gptlab.train.launch import train

    with pytest.raises(TypeError, match=r"^ConfigurableGPT takes a ModelArchitectureConfig, not str 'llama': build"):
        ConfigurableGPT("llama")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^ConfigurableGPT takes a ModelArchitectureConfig, not dict"):
        ConfigurableGPT({"n_layer": 2})  # type: ignore[arg-type]
    model = ConfigurableGPT(get_debug_config("llama"))
    for idx in (torch.zeros(5, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"^idx of shape \(.*\): expected token ids \(B, T\) with T >= 1"):
            model(idx)
        with pytest.raises(ValueError, match=r"^idx of shape \(.*\): expected token ids \(B, T\) with T >= 1"):
            model.generate(idx, 2)  # a 1-D prompt: an IndexError at its first crop
    with pytest.raises(TypeError, match=r"^train\(\) takes a RunConfig, not dict: resolve_run_config"):
        train({"max_iters": 3})  # type: ignore[arg-type]
