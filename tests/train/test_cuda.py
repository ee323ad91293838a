"""What only a CUDA device can show; skipped without one. On a GPU: ``python -m pytest -m cuda``
(bash bench/gpu_suite.sh lease runs them right after the GPT-2 124M target).

- a bf16 or fp16 step (also under ZeRO-1 and DDP) with fused AdamW, dropout and accumulation makes no host sync
  (``torch.cuda.set_sync_debug_mode('error')`` fails on any synchronizing CUDA call);
- the presets' attention qualifies for the flash kernel (SDPA restricted to flash raises otherwise), and
  every SDPA case (ALiBi's mask with GQA, float32) for a fused one, as HFU's recompute count assumes;
- a step that computes gradient statistics makes no host sync either: they reach the host by a
  non-blocking copy into pinned memory, read later, and equal the synchronous read;
- a CUDA-graph compile mode (``reduce-overhead``) trains, evaluates, checkpoints and samples like eager,
  with gradient accumulation (2 micro-steps: the preallocated, stable ``.grad`` buffers);
- the chunked loss's Triton kernel gives the loss and gradients of its torch ops, eager and compiled;
- ``sdpa_backend`` runs the kernel it names, eager and compiled.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
import torch

from gptlab import ConfigurableGPT, get_preset_config
from gptlab.config.resolve import parse_run_args
from gptlab.train.launch import train
from gptlab.train.loop import Trainer
from tests.train.conftest import tiny_args

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(
    ("mode", "dtype"), [("none", "bfloat16"), ("none", "float16"), ("zero1", "float16"), ("ddp", "bfloat16")]
)
def test_step_makes_no_host_sync(mode: str, dtype: str, data_dir: Path, tmp_path: Path) -> None:
    """bf16, and fp16 with its loss scaler (ZeRO-1's fused scaling contract too); the data-parallel
    wrappers in a one-rank group."""
    from gptlab import parallel

    args = tiny_args(
        data_dir, tmp_path, device="cuda", dtype=dtype, gradient_log_interval=1000, dropout=0.1, parallel=mode
    )
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    try:
        assert trainer.accum_steps == 2
        assert getattr(trainer.optimizer, "optim", trainer.optimizer).defaults.get("fused")  # ZeRO-1's local AdamW
        for _ in range(2):  # iteration 0: statistics and the byte count (host reads, by design); DDP's buckets
            trainer.train_step()
            trainer.iter_num += 1
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                step = trainer.train_step()
                trainer.iter_num += 1
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert step["grad_stats"] is None and bool(torch.isfinite(step["loss"]))
    finally:
        trainer.logger.close()
        parallel.shutdown(trainer.dist)


def test_gradient_statistics_step_makes_no_host_sync(data_dir: Path, tmp_path: Path) -> None:
    from gptlab.telemetry.gradients import get_gradient_stats

    args = tiny_args(data_dir, tmp_path, device="cuda", dtype="bfloat16", gradient_log_interval=1, grad_clip=0.0)
    trainer = Trainer(parse_run_args(args), stream=io.StringIO())
    try:
        trainer.train_step()  # iteration 0: the byte count (a host read, by design)
        trainer.iter_num += 1
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step = trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        late = step["grad_stats"].result()
        # the same gradients read synchronously: one more backward without a step gives new ones, so compare
        # the pending read of those with get_gradient_stats on them
        x, y = trainer.train_loader.get_batch(0)
        trainer.forward_backward(0, x, y)
        pending = trainer.telemetry.start_gradient_stats()
        assert pending.result() == get_gradient_stats(trainer.raw_model)
        assert late["global_norm"] > 0 and all(v == v for v in late.values())
    finally:
        trainer.logger.close()


@pytest.mark.parametrize("compiled", [False, True])
def test_chunked_loss_kernel_matches_torch_ops(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked loss's Triton kernel (gptlab.model.loss_kernel) on the GPU against the same loss in eager
    torch ops (its switch off), eager and compiled (and the compiled torch ops against eager too: a compiler
    bug breaking both compiled paths alike would pass a compiled-only comparison), in bf16 autocast: the loss
    and both gradients; the kernel's launches counted; no host sync in the kernel path. (A bad target's
    device-side assert is checked on the CPU: on a GPU it ends the process's CUDA context, as
    F.cross_entropy's does.) First of the file's tests: a lease's time-limited run of them reaches it."""
    from gptlab.model import loss_kernel
    from gptlab.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(3000, 256, device="cuda", requires_grad=True)
    w = (0.05 * torch.randn(5003, 256, device="cuda")).requires_grad_()
    t = torch.randint(0, 5003, (3000,), device="cuda")
    t[:7] = -1
    paths = [(False, False)] + [(compiled, False)] * compiled + [(compiled, True)]  # (compiled, kernel)
    results = []
    for compile_it, use_triton in paths:
        fn = torch.compile(linear_cross_entropy, fullgraph=True) if compile_it else linear_cross_entropy
        monkeypatch.setattr(loss_kernel, "USE_TRITON", use_triton)
        torch._dynamo.reset()
        launches = loss_kernel.kernel_launches()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.autograd.grad(fn(x, w, t, 1024), (x, w))  # compiles (inductor's autotuning syncs) and JITs
            torch.cuda.synchronize()
            if use_triton:
                torch.cuda.set_sync_debug_mode("error")
            try:
                loss = fn(x, w, t, 1024)
                grads = torch.autograd.grad(3 * loss, (x, w))
            finally:
                torch.cuda.set_sync_debug_mode(0)
        # three chunks of 1024 rows, in each of the two calls
        assert loss_kernel.kernel_launches() - launches == (6 if use_triton else 0)
        results.append((loss.detach(), *grads))
    for result in results[1:]:
        for got, want in zip(result, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize(("preset", "n_kv_head"), [("gpt2", None), ("llama", None), ("llama", 2)])
def test_presets_attention_runs_on_flash(preset: str, n_kv_head: int | None) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = get_preset_config(
        preset, n_layer=2, n_embd=256, n_head=4, n_kv_head=n_kv_head, block_size=128, vocab_size=512, dropout=0.1
    )
    model = ConfigurableGPT(config).cuda()
    x = torch.randint(0, 512, (2, 128), device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(x, x)  # raises "No available kernel" if the inputs do not qualify
        loss.backward()
    assert bool(torch.isfinite(loss)) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_residual_cast_holds_after_post_norm_blocks(preset: str) -> None:
    """CUDA's autocast computes LayerNorm in float32 (the CPU's does not): a post-norm block returned the stream
    in float32 until blocks cast it back to the dtype they received (residual_dtype=bfloat16)."""
    model = ConfigurableGPT(get_preset_config(preset, n_layer=3, n_embd=128, n_head=4, block_size=64,
                                              vocab_size=256, norm_position="post")).cuda()  # fmt: skip
    model.residual_cast = True
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, args, y: seen.append((args[0].dtype, y.dtype)))
    x = torch.randint(0, 256, (2, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, x)[1].backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3


@pytest.mark.parametrize(
    ("kernel", "compiled"),
    [("flash", False), ("efficient", False), ("cudnn", False), ("math", False), ("flash", True)],
)
def test_sdpa_backend_runs_its_kernel(kernel: str, compiled: bool) -> None:
    """TrainConfig.sdpa_backend: the chosen kernel leads SDPA's priority order, eager and compiled (inductor picks
    the kernel when it traces: one compile, flash, the lease's lever); the caller's order comes back. GPT-2
    124M's head size, bf16."""
    from torch.profiler import profile

    from gptlab.device import prefer_sdpa_kernel, sdpa_state, set_sdpa_state

    config = get_preset_config("gpt2", n_layer=2, n_embd=256, n_head=4, block_size=128, vocab_size=512)
    model = ConfigurableGPT(config).cuda()
    x = torch.randint(0, 512, (2, 128), device="cuda")
    before = sdpa_state(cuda=True)  # PyTorch's own order, fixed by its first choice (cuDNN first on sm90/sm100)
    try:
        prefer_sdpa_kernel(kernel, "cuda")
        run = torch.compile(model) if compiled else model
        with torch.autocast("cuda", dtype=torch.bfloat16):
            run(x, x)[1].backward()  # the compile (its trace picks the kernel)
        with profile() as prof, torch.autocast("cuda", dtype=torch.bfloat16):
            run(x, x)[1].backward()
    finally:
        set_sdpa_state(before)
    names = {e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")}
    assert any(kernel in name for name in names), names
    assert sdpa_state(cuda=True) == before


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize(
    ("position", "n_kv_head"), [("rope", 4), ("rope", 2), ("alibi", 4), ("alibi", 2), ("alibi", 1)]
)
def test_sdpa_attention_runs_a_fused_kernel(position: str, n_kv_head: int, dtype: str) -> None:
    """HFU counts one more QK^T for SDPA on CUDA (a fused backward recomputes the scores); that holds only
    if a fused kernel (flash, memory-efficient or cuDNN) takes every case, ALiBi's float mask with GQA and
    float32 included; restricted to them, SDPA raises "No available kernel" instead of falling back to math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptlab.telemetry.flops import compute_flops

    config = get_preset_config(
        "llama",
        n_layer=1,
        n_embd=256,
        n_head=4,
        n_kv_head=n_kv_head,
        block_size=128,
        vocab_size=512,
        position_encoding=position,
    )
    assert compute_flops(config, device_type="cuda").fused_attention
    model = ConfigurableGPT(config).cuda()
    x = torch.randint(0, 512, (2, 128), device="cuda")
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        _, loss = model(x, x)
        loss.backward()
    assert bool(torch.isfinite(loss))


def test_fsdp_cpu_offload_trains_with_gradient_statistics(data_dir: Path, tmp_path: Path) -> None:
    """FSDP2's CPU offload keeps gradient shards on the CPU: their statistics (iteration 0) and clipping norm
    all-reduce there, which a NCCL-only group refused at the first step; the group has gloo for CPU tensors
    (gptlab.parallel.init_distributed). One process, as the failure showed even on one GPU."""
    args = tiny_args(data_dir, tmp_path, device="cuda", parallel="fsdp", fsdp_cpu_offload=True, max_iters=3,
                     eval_interval=100, gradient_log_interval=1)  # fmt: skip
    summary = train(parse_run_args(args), stream=io.StringIO())
    assert summary["status"] == "completed"
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    with_stats = [r["iter"] for r in records if r["type"] in ("iter", "gradients") and r.get("gradients")]
    assert with_stats[:3] == [0, 1, 2]  # (so on a CPU, parallel='fsdp' without the offload)


def test_cuda_graph_compile_mode_trains_like_eager(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch._inductor")
    losses, caught = {}, []
    for mode in ("eager", "reduce-overhead"):
        compile_args = {} if mode == "eager" else dict(compile=True, compile_mode=mode)
        out = tmp_path / mode
        args = tiny_args(data_dir, out, device="cuda", max_iters=8, eval_interval=4, sample_at_end=True,
                         sample_tokens=8, **compile_args)  # fmt: skip
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            summary = train(parse_run_args(args), stream=io.StringIO())
        caught += [str(w.message) for w in seen]
        assert summary["status"] == "completed" and summary["sample"]
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        losses[mode] = [r["loss"] for r in records if r["type"] == "iter"] + [summary["final_val_loss"]]
    assert not [m for m in caught if "overwritten" in m or "CUDAGraph" in m], caught
    assert losses["reduce-overhead"] == pytest.approx(losses["eager"], rel=1e-2)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_compiled_step_matches_eager_in_bf16(preset: str) -> None:
    """The compiled model on the GPU's kernels (inductor's Triton, cuDNN attention; llama's q, k and v projected
    by slices of the fused weight): the loss and every gradient as eager's, within bf16 autocast's rounding."""
    import copy

    torch.manual_seed(0)
    cfg = get_preset_config(preset, n_layer=2, n_embd=128, n_head=4, block_size=256, vocab_size=1000)
    eager = ConfigurableGPT(cfg).cuda()
    compiled = copy.deepcopy(eager)
    idx, targets = (torch.randint(0, 1000, (4, 256), device="cuda") for _ in range(2))
    targets[0, :10] = -1
    losses = []
    for forward in (eager, torch.compile(compiled, fullgraph=True)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = forward(idx, targets, return_logits=False)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-3, atol=2e-3)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        cosine = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert cosine > 0.999, (name, float(cosine))
