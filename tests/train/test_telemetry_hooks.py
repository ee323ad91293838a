"""The loop's view of telemetry (gptlab.train.telemetry_hooks): what one rank's step counts under DDP and FSDP."""

from __future__ import annotations

import pytest
import torch

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.config.train import TrainConfig
from gptlab.telemetry.flops import compute_flops
from gptlab.train.telemetry_hooks import TelemetryHooks


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_mfu_of_a_rank_counts_its_share_of_the_global_batch(mode: str) -> None:
    """gradient_accumulation_steps counts the global step's micro-batches (nanoGPT's meaning), shared out over the
    ranks: 2 ranks of 4 x 64 tokens with 4 global micro-steps run 2 micro-steps each. The job's MFU is the global
    batch's FLOPs over the step time and both GPUs' peak; counting the global accumulation on every rank made it
    world_size times too high."""
    arch = get_debug_config("gpt2")
    cfg = TrainConfig(batch_size=4, gradient_accumulation_steps=4, peak_tflops=1.0, compile=False, device="cpu")
    model = ConfigurableGPT(arch)
    hooks = TelemetryHooks(model, torch.device("cpu"), "float32", cfg, world_size=2, parallel=mode, accum_steps=2)
    global_tokens = 4 * 4 * arch.block_size  # batch_size x gradient_accumulation_steps x block_size, whole job
    assert hooks.tokens_per_iter == global_tokens
    flops_per_token = compute_flops(arch).flops_per_token
    out = hooks.mfu(0.5)
    assert out["tokens_per_sec"] == pytest.approx(global_tokens / 0.5)
    assert out["mfu"] == pytest.approx(flops_per_token * global_tokens / 0.5 / (2 * 1e12), rel=1e-12)
    assert out["achieved_tflops_per_gpu"] == pytest.approx(flops_per_token * global_tokens / 0.5 / 2 / 1e12)
    # the same job on one process (4 micro-steps) in twice the time: the same MFU
    single = TelemetryHooks(model, torch.device("cpu"), "float32", cfg, world_size=1, parallel="none", accum_steps=4)
    assert single.tokens_per_iter == global_tokens
    assert single.mfu(1.0)["mfu"] == pytest.approx(out["mfu"], rel=1e-12)
