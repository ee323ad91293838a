"""Gradient statistics against a flat float64 reference, with one host sync; the spike detector."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gptlab import ConfigurableGPT, get_debug_config
from gptlab.telemetry.gradients import STAT_KEYS, GradientSpikeDetector, get_gradient_stats
from tests.host_sync import count_host_syncs


def reference_stats(grads: list[torch.Tensor]) -> dict[str, float]:
    """The design document's definitions, on one flat float64 copy of every gradient."""
    flat = torch.cat([g.detach().double().flatten() for g in grads])
    norms = torch.stack([g.detach().double().norm() for g in grads])
    return {
        "global_norm": flat.norm().item(),
        "mean_layer_norm": norms.mean().item(),
        "max_layer_norm": norms.max().item(),
        "min_layer_norm": norms.min().item(),
        "grad_mean": flat.mean().item(),
        "grad_std": flat.std(correction=0).item(),  # np.std
        "grad_min": flat.min().item(),
        "grad_max": flat.max().item(),
    }


def trained_model(preset: str = "llama") -> ConfigurableGPT:
    model = ConfigurableGPT(get_debug_config(preset))
    x = torch.randint(0, 256, (2, 32))
    model(x, x)[1].backward()
    return model


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_matches_flat_reference(preset: str) -> None:
    model = trained_model(preset)
    stats = get_gradient_stats(model)
    ref = reference_stats([p.grad for p in model.parameters()])
    assert set(stats) == set(STAT_KEYS)
    for key in STAT_KEYS:
        assert stats[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-12), key
    assert model.get_gradient_stats() == stats


def test_bf16_gradients_and_parameter_lists() -> None:
    model = trained_model()
    grads = [p.grad.bfloat16() for p in model.parameters()]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    stats, ref = get_gradient_stats(params), reference_stats(grads)
    assert stats["global_norm"] == pytest.approx(ref["global_norm"], rel=1e-5)
    assert stats["grad_max"] == ref["grad_max"] and stats["grad_min"] == ref["grad_min"]


def test_no_gradients_gives_none() -> None:
    assert get_gradient_stats(ConfigurableGPT(get_debug_config("gpt2"))) == dict.fromkeys(STAT_KEYS)


def test_exactly_one_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model()
    with count_host_syncs(monkeypatch) as calls:
        get_gradient_stats(model)
    # the one tolist; no .item(), float() or bool() on a device tensor
    assert calls == {"tolist": 1, "cpu": 0, "numpy": 0, "scalar": 0}


class _CountOps(TorchDispatchMode):
    """Counts the ops reaching the kernels (on a GPU, roughly the launches)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_two_ops_per_gradient_tensor() -> None:
    """Per tensor only a sum and an aminmax; norms are one fused _foreach_norm, the rest works on the
    stacked per-tensor values (was 7 per tensor: about 1,000 launches for the 148 tensors of GPT-2 124M)."""
    model = trained_model("gpt2")
    n = sum(p.grad is not None for p in model.parameters())
    with _CountOps() as mode:
        get_gradient_stats(model)
    assert mode.ops <= 2 * n + 30, (mode.ops, n)


def test_spike_detector() -> None:
    det = GradientSpikeDetector(window=20, threshold=4.0, min_history=5)
    assert not any(det.update(1.0 + 0.01 * i) for i in range(4))  # too little history to judge
    assert not det.update(10.0)  # 5th value: history of 4 < min_history
    assert not any(det.update(1.0) for _ in range(5))
    assert det.update(8.0) and det.last_ratio == pytest.approx(8.0)
    assert det.update(math.nan) and det.update(math.inf)
    assert not det.update(1.2)
    for _ in range(20):  # a lasting change of scale becomes the new normal
        det.update(50.0)
    assert not det.update(60.0)
    with pytest.raises(ValueError):
        GradientSpikeDetector(threshold=1.0)
