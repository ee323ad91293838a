"""Memory stats, and the planner's parameter, gradient and optimizer bytes against the real tensors."""

from __future__ import annotations

import gc
import re
import time
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gptlab import ConfigError, ConfigurableGPT, get_debug_config, get_preset_config
from gptlab.model.registry import NORM_REGISTRY
from gptlab.telemetry import memory
from gptlab.telemetry.memory import get_memory_stats, host_memory_bytes, reset_peak_memory
from gptlab.telemetry.params import TensorShape, count_parameters, parameter_shapes
from gptlab.telemetry.planner import fit_advice, fsdp_shard_numel, plan_all_modes, plan_memory, zero1_partition


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return tensor_bytes([v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)])


ARCHS = {
    "gpt2": ("gpt2", {}),
    "llama-gqa": ("llama", {"n_kv_head": 2}),
    "post-geglu-bias-untied": ("custom", dict(norm_position="post", ffn_type="geglu", bias=True, weight_tying=False)),
    "alibi-nobias-norm": ("custom", {"position_encoding": "alibi", "normalization": "layernorm_nobias"}),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_plan_equals_real_tensors_after_an_adamw_step(arch: str) -> None:
    preset, overrides = ARCHS[arch]
    cfg = get_debug_config(preset, **overrides)
    model = ConfigurableGPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision keeps float32 master weights
        _, loss = model(x, x)
    loss.backward()
    opt.step()
    plan = plan_memory(cfg, batch_size=2, dtype="bfloat16").mode
    params = list(model.parameters())
    assert [tuple(p.shape) for p in params] == [s.shape for s in parameter_shapes(cfg)]
    assert plan.parameters == tensor_bytes(params)
    assert plan.gradients == tensor_bytes([p.grad for p in params])
    assert plan.optimizer == optimizer_state_bytes(opt)  # exp_avg, exp_avg_sq and the float32 step tensors
    assert plan.buffers == tensor_bytes(list(model.buffers()))


def test_sgd_momentum_plan() -> None:
    cfg = get_debug_config("llama")
    model = ConfigurableGPT(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    loss.backward()
    opt.step()
    assert plan_memory(cfg, batch_size=1, optimizer="sgd").mode.optimizer == optimizer_state_bytes(opt)


def test_registered_component_shapes_come_from_the_component() -> None:
    class GainBiasNorm(nn.Module):
        def __init__(self, ndim: int, eps: float = 1e-5) -> None:
            super().__init__()
            self.gain, self.shift, self.scale = (
                nn.Parameter(torch.ones(ndim)),
                nn.Parameter(torch.zeros(ndim)),
                nn.Parameter(torch.ones(1)),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain * self.scale + self.shift

    NORM_REGISTRY["gainbias_test"] = GainBiasNorm
    try:
        cfg = get_debug_config("llama", normalization="gainbias_test")
        model = ConfigurableGPT(cfg)
        assert [tuple(p.shape) for p in model.parameters()] == [s.shape for s in parameter_shapes(cfg)]
    finally:
        del NORM_REGISTRY["gainbias_test"]


@pytest.mark.parametrize("preset", ["gpt2", "llama", "hybrid", "team", "custom"])
@pytest.mark.parametrize("flip_tying", [False, True])
def test_parameter_counts_match_the_model_without_building_it(preset: str, flip_tying: bool) -> None:
    """count_parameters, which arch and compare use for any depth, is the model's get_num_params both ways."""
    cfg = get_debug_config(preset)
    if flip_tying:
        cfg = get_debug_config(preset, weight_tying=not cfg.weight_tying)
    with torch.device("meta"):
        model = ConfigurableGPT(cfg)
    assert count_parameters(cfg) == model.get_num_params(non_embedding=False)
    assert count_parameters(cfg, non_embedding=True) == model.get_num_params()


def test_parameter_counts_take_no_time_at_any_depth() -> None:
    """`gptlab arch`/`compare` of a config (or a run folder) naming 10**7 layers listed every layer's tensors:
    GBs and minutes for one number."""
    import time

    from gptlab.config.model import MAX_LAYERS  # (a deeper one is refused since: n_layer=10**7 is a typo)

    one, two = (count_parameters(get_debug_config("llama", n_layer=n)) for n in (1, 2))
    start = time.perf_counter()
    assert count_parameters(get_debug_config("llama", n_layer=MAX_LAYERS)) == one + (MAX_LAYERS - 1) * (two - one)
    assert time.perf_counter() - start < 1


def test_gpt2_124m_numbers() -> None:
    """ERRATA 13: AdamW's two float32 states for 124M parameters are about 1.0 GB, not 2.0."""
    cfg = get_preset_config("gpt2")
    assert count_parameters(cfg) == 124_475_904  # 50304-token vocabulary, tied, with biases
    plans = plan_all_modes(cfg, batch_size=12, world_size=4)
    assert plans["none"].mode.optimizer == 8 * 124_475_904 + 4 * len(parameter_shapes(cfg))
    assert plans["ddp"].mode.optimizer == plans["none"].mode.optimizer
    # ZeRO-1 cannot split the 38.6M-element embedding: the rank that owns it holds 0.31 GB, not 1.0/4
    assert plans["zero1"].mode.optimizer == pytest.approx(8 * 50304 * 768 + 4, rel=1e-9)
    fsdp = plans["fsdp"].mode
    assert fsdp.parameters == 4 * sum(fsdp_shard_numel(s.shape, 4) for s in parameter_shapes(cfg))
    assert fsdp.parameters < plans["none"].mode.parameters / 4 * 1.001
    assert plans["none"].mode.activations > plans["none"].mode.optimizer  # activations dominate at S=1024


def test_zero1_partition_replays_torch_greedy() -> None:
    shapes = [TensorShape(n, s) for n, s in [("a", (10, 4)), ("b", (30,)), ("c", (6, 5)), ("d", (8,)), ("e", (5, 5))]]
    owned = zero1_partition(shapes, 2)
    # decay group (2-D) first, largest first: a(40)->0, c(30)->1, e(25)->1; then b(30)->0, d(8)->1
    assert [[s.name for s in o] for o in owned] == [["a", "b"], ["c", "e", "d"]]


def test_fsdp_shard_is_ceil_of_dim0() -> None:
    assert fsdp_shard_numel((7, 3), 2) == 4 * 3
    assert fsdp_shard_numel((5,), 8) == 1  # ranks 5..7 hold padding only
    assert fsdp_shard_numel((64, 64), 4) == 16 * 64


def test_activation_checkpointing_and_fsdp_change_activations() -> None:
    cfg = get_preset_config("llama", n_layer=4)
    plain = plan_memory(cfg, batch_size=4, parallel="ddp", world_size=2).mode
    ckpt = plan_memory(cfg, batch_size=4, parallel="ddp", world_size=2, activation_checkpointing=True).mode
    fsdp = plan_memory(cfg, batch_size=4, parallel="fsdp", world_size=2).mode
    assert ckpt.activations < plain.activations
    assert fsdp.activations < plain.activations  # no autocast weight copies under FSDP2 mixed precision
    fp32 = plan_memory(cfg, batch_size=4, dtype="float32").mode
    assert "weight_copies" not in plan_memory(cfg, batch_size=4, dtype="float32").activation_estimate.other
    assert fp32.parameters == plan_memory(cfg, batch_size=4).mode.parameters


def test_plan_errors() -> None:
    cfg = get_debug_config("gpt2")
    with pytest.raises(ConfigError, match="parallel"):
        plan_memory(cfg, batch_size=1, parallel="zero3")
    with pytest.raises(ConfigError, match="world_size"):
        plan_memory(cfg, batch_size=1, world_size=2)
    with pytest.raises(ConfigError, match="seq_len"):
        plan_memory(cfg, batch_size=1, seq_len=cfg.block_size + 1)
    for value in (4.5, "4", True, 2**31):  # a fraction of a sequence, a string, a bool, past int32: no micro-batch
        with pytest.raises(ConfigError, match=rf"^batch_size={value!r} is invalid: expected an integer in \[1, "):
            plan_memory(cfg, batch_size=value)
    with pytest.raises(
        ConfigError, match=r"^world_size=10000000000 is invalid: expected an integer in \[1, 1,048,576\]"
    ):
        plan_memory(cfg, batch_size=1, parallel="zero1", world_size=10**10)  # (each rank's share was listed)
    with pytest.raises(ConfigError, match=r"device_type='gpu' is not one of .*'cuda'"):  # not planned as a CPU's
        plan_memory(cfg, batch_size=1, device_type="gpu")
    import numpy as np

    by_column = plan_memory(cfg, batch_size=np.int64(4), world_size=torch.tensor(1))  # a DataFrame's, a tensor's
    assert by_column.mode.total == plan_memory(cfg, batch_size=4).mode.total


def test_memory_stats_on_cpu() -> None:
    stats = get_memory_stats("cpu")
    assert set(stats) >= {"allocated_gb", "reserved_gb", "max_allocated_gb", "max_reserved_gb", "rss_gb"}
    assert stats["allocated_gb"] is None and stats["max_reserved_gb"] is None  # CUDA-only figures
    assert 0 < stats["rss_gb"] <= stats["max_rss_gb"]  # a peak is never below the current value
    reset_peak_memory("cpu")  # a no-op on the CPU, not an error
    model = ConfigurableGPT(get_debug_config("gpt2"))
    assert model.get_memory_stats()["rss_gb"] > 0


def test_fit_advice_warns_before_an_oom_with_replanned_options() -> None:
    """GPT-2 124M, micro-batch 12 x 1024 in bf16: 13.3 GB planned. On a 40 GB GPU nothing is said; on
    a 12 GB one the warning names the chunked loss (6.4 GB, fits) and the other options' peaks."""
    cfg = get_preset_config("gpt2")
    kwargs = dict(batch_size=12, dtype="bfloat16")
    assert fit_advice(cfg, 40 * 10**9, **kwargs) is None
    advice = fit_advice(cfg, 12 * 10**9, **kwargs)
    assert advice is not None and "13.3 GB" in advice and "--loss_chunk_size=1024 -> 6.4 GB (fits)" in advice
    assert "--activation_checkpointing=True ->" in advice and "--batch_size=6" in advice
    assert "--use_fsdp" not in advice  # one GPU: sharding is no option
    for mode in ("ddp", "zero1"):  # replicated weights (ZeRO-1 shards the optimizer states only): FSDP shards them
        several = fit_advice(cfg, 12 * 10**9, parallel=mode, world_size=8, **kwargs)
        assert several is not None and "--use_fsdp=True ->" in several, mode
    chunked = fit_advice(cfg, 6 * 10**9, loss_chunk_size=1024, **kwargs)
    assert chunked is not None and "--loss_chunk_size" not in chunked  # already on: not suggested again


def test_fit_advice_combines_the_settings_when_none_alone_fits() -> None:
    """24 layers x 2048, micro-batch 32 x 1024 in float32 on 24 GB: checkpointing alone 29 GB, half the batch
    95 GB, and the advice ended there; now the helpful ones together, the micro-batch halved until it fits.
    A model whose weights alone do not fit is told so (the combination was a larger figure than the plan)."""
    cfg = get_preset_config("llama", n_layer=24, n_embd=2048, n_head=16, block_size=1024, vocab_size=128)
    kwargs = dict(batch_size=32, dtype="float32", device_type="cpu")
    advice = fit_advice(cfg, 24 * 10**9, **kwargs)
    assert advice is not None and "(fits)" not in advice.split("; together: ")[0]
    together = re.search(r"together: (.*) -> ([\d.]+) GB \(fits\)$", advice)
    assert together is not None, advice
    micro = int(re.search(r"--batch_size=(\d+) with (\d+)x", together[1])[1])
    combined = plan_memory(cfg, **{**kwargs, "batch_size": micro, "grad_accum_steps": 32 // micro},
                           activation_checkpointing=True)  # fmt: skip
    assert combined.mode.peak <= 0.95 * 24 * 10**9 and f"{combined.mode.peak / 1e9:.1f}" == together[2]
    twice = {**kwargs, "batch_size": 2 * micro, "grad_accum_steps": 16 // micro}
    assert plan_memory(cfg, **twice, activation_checkpointing=True).mode.peak > 0.95 * 24 * 10**9  # the largest
    odd = fit_advice(cfg, 20 * 10**9, **{**kwargs, "batch_size": 12})  # 12 sequences a step, kept (not 1 x 8)
    assert odd is not None and re.search(r"--batch_size=(\d+) with (\d+)x", odd) is not None
    micro, times = map(int, re.search(r"--batch_size=(\d+) with (\d+)x", odd).groups())
    assert micro * times == 12, odd
    # a micro-batch of 2**30 sequences (its divisors were counted down one by one: seconds at 10**8, hours past)
    started = time.perf_counter()
    assert fit_advice(cfg, 24 * 10**9, **{**kwargs, "batch_size": 2**30}) is not None
    assert time.perf_counter() - started < 10
    huge = get_preset_config("llama", n_layer=2, n_embd=100_000, n_head=4, block_size=64, vocab_size=128)
    advice = fit_advice(huge, 24 * 10**9, batch_size=12, dtype="float32", device_type="cpu")
    assert advice is not None and advice.endswith(
        "the model itself needs a smaller size, or FSDP over more GPUs to shard it"
    )


def test_fit_advice_offers_a_shorter_context_for_a_long_one() -> None:
    """A Hugging Face config.json's 128k positions, trained at full length: the advice names the longest halved
    --block_size that fits (re-planned with the shorter model); GPT-2's 1024 is never offered one."""
    cfg = get_preset_config("llama", n_layer=4, n_embd=512, n_head=8, block_size=131072, vocab_size=32000)
    kwargs = dict(batch_size=4, dtype="bfloat16")
    advice = fit_advice(cfg, 24 * 10**9, **kwargs)
    found = re.search(r"--block_size=(\d+) \(a shorter context; a fine-tune crops the model\) -> ([\d.]+) GB \(fits\)",
                      advice or "")  # fmt: skip
    assert found is not None, advice
    length = int(found[1])
    fits = plan_memory(get_preset_config("llama", n_layer=4, n_embd=512, n_head=8, block_size=length,
                                         vocab_size=32000), **kwargs).mode.peak  # fmt: skip
    assert fits <= 0.95 * 24 * 10**9 and f"{fits / 1e9:.1f}" == found[2]
    longer = get_preset_config("llama", n_layer=4, n_embd=512, n_head=8, block_size=2 * length, vocab_size=32000)
    assert plan_memory(longer, **kwargs).mode.peak > 0.95 * 24 * 10**9  # the longest that fits
    with pytest.raises(ConfigError, match=r"cannot fit .*--block_size=\d+ .*\(fits\)"):  # and before building it
        fit_advice(cfg, 24 * 10**9, refuse_above=2.0, **kwargs)
    assert "--block_size" not in (fit_advice(get_preset_config("gpt2"), 12 * 10**9, batch_size=12) or "")


def test_fit_advice_offers_only_what_lowers_the_peak() -> None:
    """One layer with the chunked loss on: checkpointing keeps the block's input and recomputes the block,
    more than it frees, so it is not offered as a remedy; half the micro-batch is."""
    cfg = get_preset_config("llama", n_layer=1, n_embd=64, n_head=4, block_size=64, vocab_size=128)
    kwargs = dict(batch_size=10**5, dtype="float32", device_type="cpu", loss_chunk_size=1024)
    planned = plan_memory(cfg, **kwargs).mode.peak
    assert plan_memory(cfg, **kwargs, activation_checkpointing=True).mode.peak > planned
    advice = fit_advice(cfg, 10**6, **kwargs)
    assert advice is not None and "--activation_checkpointing" not in advice and "--batch_size=50000" in advice
    assert "none of the settings" in fit_advice(cfg, 10**6, **{**kwargs, "batch_size": 1})


def test_peak_counts_the_gradients_when_they_outweigh_activations() -> None:
    """GPT-2 124M, micro-batch 1 x 16 with checkpointing: the saved activations (and bf16 weight copies)
    are far below the 0.5 GB of float32 gradients, so the peak is in the embedding's backward, where
    parameters, all gradients and AdamW's states are alive at once, with the tied embedding's own
    (V, H) float32 gradient before it is added to the LM head's."""
    cfg = get_preset_config("gpt2")
    plan = plan_memory(cfg, batch_size=1, seq_len=16, activation_checkpointing=True)
    m, acts = plan.mode, plan.activation_estimate
    assert m.gradients > acts.peak_bytes
    assert m.peak_at == "embedding backward"
    persistent = m.parameters + m.optimizer + m.buffers + m.comm_buffers
    assert acts.embedding_backward_bytes == 4 * cfg.vocab_size * cfg.n_embd + 4 * cfg.n_embd * 16
    assert m.peak == persistent + m.gradients + acts.embedding_backward_bytes + acts.through_blocks_bytes
    # by hand: 124,475,904 parameters in 2 + 12 * 12 + 2 = 148 tensors (wte, wpe; per block ln_1, attn.c_attn,
    # attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj with weight and bias; ln_f), float32 params and grads,
    # AdamW's m and v, and a float32 step per tensor
    n, tensors = 124_475_904, 148
    assert m.peak >= 4 * n + 4 * n + 8 * n + 4 * tensors + m.buffers


@pytest.mark.parametrize("parallel", ["ddp", "zero1"])
def test_comm_buffers_are_the_ddp_reducer_buckets(parallel: str, tmp_path: Path) -> None:
    """DDP (under ZeRO-1 too) copies gradients into its own buckets (``gradient_as_bucket_view=False``):
    the reducer's bucket bytes, from a real single-process gloo DDP, are what the plan counts."""
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already in this process")
    from torch.nn.parallel import DistributedDataParallel

    cfg = get_debug_config("gpt2")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = ConfigurableGPT(cfg)
        ddp = DistributedDataParallel(model)
        x = torch.randint(0, cfg.vocab_size, (1, 8))
        ddp(x, x)[1].backward()
        logging_data = ddp._get_ddp_logging_data()
        grads = tensor_bytes([p.grad for p in model.parameters()])
        # DDP's reducer holds the group: freed before it, as the Trainer frees its model (freed after it, the
        # group's destructor now and then waited forever on gloo's threads: a CI run hung here)
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()
    assert logging_data["gradient_as_bucket_view"] == 0  # the default: buckets are a second copy
    buckets = sum(int(b) for b in str(logging_data["bucket_sizes"]).split(","))
    assert buckets == grads > 0
    assert plan_memory(cfg, batch_size=1, parallel=parallel).mode.comm_buffers == buckets


def test_fit_advice_keeps_five_percent_headroom() -> None:
    """The peak must fit in 95% of the device: a device just above peak / 0.95 is quiet, one just below
    (still larger than the peak itself) gets the warning."""
    cfg = get_debug_config("gpt2")
    kwargs = dict(batch_size=2, dtype="bfloat16")
    peak = plan_memory(cfg, **kwargs).mode.peak
    edge = peak * 100 // 95  # floor(peak / 0.95)
    assert fit_advice(cfg, edge + 2, **kwargs) is None
    below = edge - 2
    assert below > peak  # without the headroom this device would fit the peak
    advice = fit_advice(cfg, below, **kwargs)
    assert advice is not None and "less 5% headroom" in advice


class _Usage:
    ru_maxrss = 2**20


@pytest.mark.parametrize(("platform", "expected_bytes"), [("linux", 2**30), ("darwin", 2**20)])
def test_max_rss_units(monkeypatch: pytest.MonkeyPatch, platform: str, expected_bytes: int) -> None:
    """``ru_maxrss`` is KiB on Linux (2**20 KiB = 2**30 bytes) and bytes on macOS; reported in GB (1e9)."""
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrusage", lambda who: _Usage())
    monkeypatch.setattr(memory, "sys", types.SimpleNamespace(platform=platform))
    monkeypatch.setattr(memory, "process_rss_bytes", lambda: 1000)  # far below either peak
    stats = get_memory_stats("cpu")
    assert stats["rss_gb"] == pytest.approx(1000 / 1e9)
    assert stats["max_rss_gb"] == pytest.approx(expected_bytes / 1e9, rel=1e-12)


def test_max_rss_is_never_below_the_current_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrusage", lambda who: _Usage())
    monkeypatch.setattr(memory, "sys", types.SimpleNamespace(platform="linux"))
    monkeypatch.setattr(memory, "process_rss_bytes", lambda: 2 * 2**30)  # the high-water mark lags
    assert get_memory_stats("cpu")["max_rss_gb"] == pytest.approx(2 * 2**30 / 1e9, rel=1e-12)


CGROUP_V1_UNLIMITED = "9223372036854771712"  # PAGE_COUNTER_MAX * 4096: cgroup v1's "no limit"


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("max", CGROUP_V1_UNLIMITED, 4_096_000),  # no limit: the machine's RAM
        (None, None, 4_096_000),  # no cgroup files at all
        ("max", "3000000", 3_000_000),  # a v1 limit below RAM
        ("2000000", CGROUP_V1_UNLIMITED, 2_000_000),  # a v2 limit below RAM
        ("3000000", "2000000", 2_000_000),  # two limits: the smaller
        ("2000000", "3000000", 2_000_000),
        ("9000000", None, 4_096_000),  # a limit above RAM does not add RAM
    ],
)
def test_host_memory_is_the_smallest_real_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, v2: str | None, v1: str | None, expected: int
) -> None:
    """1000 pages of 4096 bytes of RAM (4,096,000 bytes), and cgroup v2 / v1 limit files."""
    paths = []
    for name, text in (("memory.max", v2), ("memory.limit_in_bytes", v1)):
        path = tmp_path / name
        if text is not None:
            path.write_text(text + "\n")
        paths.append(str(path))
    monkeypatch.setattr(memory, "CGROUP_LIMITS", tuple(paths))
    sysconf = {"SC_PHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(memory.os, "sysconf", lambda name: sysconf[name])
    assert host_memory_bytes() == expected


def test_host_memory_without_sysconf_asks_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no os.sysconf: psutil's total where it is installed (else unknown), so the start-up
    memory check still runs there."""
    monkeypatch.delattr(memory.os, "sysconf")
    monkeypatch.setattr(memory, "CGROUP_LIMITS", ())
    fake = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(total=8_000_000_000))
    monkeypatch.setattr(memory, "_psutil", lambda: fake)
    assert host_memory_bytes() == 8_000_000_000
    monkeypatch.setattr(memory, "_psutil", lambda: None)
    assert host_memory_bytes() is None


def test_mps_memory_is_apples_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a Mac's GPU the tensors are not in the RSS that a CPU run reports: MPS's own counts are."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 3_000_000_000)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 4_000_000_000)
    stats = get_memory_stats(torch.device("mps"))
    assert stats["allocated_gb"] == 3.0 and stats["reserved_gb"] == 4.0 and stats["max_allocated_gb"] is None


def test_total_adds_ddps_bucket_copy_of_the_gradients() -> None:
    """``total`` is every part at once: DDP's buckets (a second float32 copy of the gradients, 4 bytes per
    parameter) are the only part it adds to a single process's."""
    from gptlab.telemetry.params import count_parameters

    cfg = get_debug_config("gpt2")
    none = plan_memory(cfg, batch_size=2).mode
    ddp = plan_memory(cfg, batch_size=2, parallel="ddp", world_size=2).mode
    assert ddp.comm_buffers == 4 * count_parameters(cfg) > 0
    assert ddp.total - none.total == ddp.comm_buffers
    assert none.total == (none.parameters + none.gradients + none.optimizer + none.activations + none.loss_backward
                          + none.buffers)  # fmt: skip


def test_ddp_peak_holds_its_buckets_and_fsdp_its_unsharded_copies() -> None:
    """What persists through the step is in the peak: DDP's buckets (4 bytes per parameter), and FSDP's transient
    unsharded copies, by hand from the model's own tensors: the root's (embedding, LM head, final norm) and two
    blocks' in the bf16 compute dtype (2 bytes each), and one block's float32 gradients (4 bytes each)."""
    from gptlab.telemetry.params import count_parameters

    cfg = get_debug_config("gpt2")
    none = plan_memory(cfg, batch_size=2).mode
    ddp = plan_memory(cfg, batch_size=2, parallel="ddp", world_size=2).mode
    assert ddp.peak - none.peak == ddp.comm_buffers == 4 * count_parameters(cfg)
    with torch.device("meta"):
        named = list(ConfigurableGPT(cfg).named_parameters())
    root = sum(p.numel() for n, p in named if not n.startswith("blocks."))
    block = sum(p.numel() for n, p in named if n.startswith("blocks.0."))
    assert 0 < block and block * cfg.n_layer + root == count_parameters(cfg)
    fsdp = plan_memory(cfg, batch_size=2, parallel="fsdp", world_size=2, dtype="bfloat16").mode
    assert fsdp.comm_buffers == 2 * (root + 2 * block) + 4 * block
    assert fsdp_shard_numel((), 4) == 1  # a 0-dim parameter (FSDP2 refuses one) is planned whole


def test_only_a_context_longer_than_2048_is_offered_a_shorter_one() -> None:
    """2048 positions is no long context: a plan that does not fit is not told to shorten it; 4096 is (here to 1024,
    the shortest offered, as 2048 does not fit either)."""
    sizes = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128)
    at_2048 = fit_advice(get_preset_config("llama", block_size=2048, **sizes), 10**6, batch_size=8)
    assert at_2048 is not None and "--block_size" not in at_2048
    at_4096 = fit_advice(get_preset_config("llama", block_size=4096, **sizes), 10**6, batch_size=8)
    assert at_4096 is not None and "--block_size=1024 (a shorter context; a fine-tune crops the model)" in at_4096


def test_block_backward_moments_hold_the_gradients_already_made() -> None:
    """Autograd runs the blocks top down: when block i's backward runs, the LM head's and final norm's gradients
    and those of the blocks above i exist (float32, 4 bytes per element of the model's own tensors), beside what
    block i itself needs. Without accumulation nothing else is held."""
    from gptlab.telemetry.planner import backward_moments

    cfg = get_debug_config("gpt2", n_layer=4, weight_tying=False)
    with torch.device("meta"):
        named = {n: p.numel() for n, p in ConfigurableGPT(cfg).named_parameters()}
    head = 4 * sum(v for n, v in named.items() if n.startswith(("lm_head.", "norm_f.")))
    block = 4 * sum(v for n, v in named.items() if n.startswith("blocks.0."))
    ffn = 4 * sum(v for n, v in named.items() if n.startswith(("blocks.0.ffn.", "blocks.0.norm_2.")))
    assert head > 0 and block > ffn > 0
    acts = plan_memory(cfg, batch_size=2).activation_estimate
    moments = backward_moments(acts, parameter_shapes(cfg), 1.0, 0)
    for index, above in ((3, 0), (0, 3)):
        own = acts.block_backward_bytes(index, block_grads=block, ffn_grads=ffn)
        assert moments[f"block {index} backward"] == head + above * block + own, index


def test_registered_components_buffers_are_planned() -> None:
    """A registered FFN's projection, a norm's and an activation's own buffers are the model's too (the plan
    counted a registered position encoding's alone: 1 MB of a random-feature FFN left out, no note)."""
    from gptlab.model.components import StandardFFN
    from gptlab.model.registry import ACTIVATION_REGISTRY, FFN_REGISTRY

    class RandomFeatureFFN(nn.Module):
        def __init__(self, d_model, d_ff, bias, dropout, activation):
            super().__init__()
            self.register_buffer("proj", torch.randn(d_model, 2 * d_ff))
            self.act, self.w_out = activation, nn.Linear(2 * d_ff, d_model, bias=bias)

        def forward(self, x):
            return self.w_out(self.act(x @ self.proj.to(x.dtype)))

    class CountingNorm(nn.LayerNorm):
        def __init__(self, ndim, eps=1e-5):
            super().__init__(ndim, eps=eps)
            self.register_buffer("seen", torch.zeros(ndim, dtype=torch.float64))

    class ShiftedReLU(nn.ReLU):
        def __init__(self, approximate="none"):
            super().__init__()
            self.register_buffer("shift", torch.zeros(3))

    FFN_REGISTRY.register("randfeat_t")(RandomFeatureFFN)
    NORM_REGISTRY.register("countnorm_t")(CountingNorm)
    ACTIVATION_REGISTRY.register("shiftrelu_t")(ShiftedReLU)
    try:
        for overrides in (dict(ffn_type="randfeat_t", normalization="countnorm_t"), dict(activation="shiftrelu_t")):
            cfg = get_debug_config("custom", n_layer=2, **overrides)
            model = ConfigurableGPT(cfg)
            assert isinstance(model.blocks[0].ffn, RandomFeatureFFN if "ffn_type" in overrides else StandardFFN)
            buffers = tensor_bytes(list(model.buffers()))
            assert buffers > 0 and plan_memory(cfg, batch_size=2, dtype="float32").mode.buffers == buffers
    finally:
        del FFN_REGISTRY["randfeat_t"], NORM_REGISTRY["countnorm_t"], ACTIVATION_REGISTRY["shiftrelu_t"]
