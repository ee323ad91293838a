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


@pytest.mark.parametrize("bucketed_path", [False, True])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_matches_flat_reference(monkeypatch: pytest.MonkeyPatch, preset: str, bucketed_path: bool) -> None:
    if bucketed_path:
        monkeypatch.setattr("gptlab.telemetry.gradients.PER_TENSOR_DEVICES", ())
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


@pytest.mark.parametrize("bucketed_path", [False, True])
def test_exactly_one_host_sync(monkeypatch: pytest.MonkeyPatch, bucketed_path: bool) -> None:
    if bucketed_path:
        monkeypatch.setattr("gptlab.telemetry.gradients.PER_TENSOR_DEVICES", ())
    model = trained_model()
    with count_host_syncs(monkeypatch) as calls:
        get_gradient_stats(model)
    # the one tolist; no .item(), float() or bool() on a device tensor
    assert calls == {"tolist": 1, "cpu": 0, "numpy": 0, "scalar": 0}


class _CountOps(TorchDispatchMode):
    """Counts the ops reaching the kernels, views left out (on a GPU, roughly the launches)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


@pytest.fixture
def bucketed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPUs' path on the CPU: sums and extremes over flat buckets (the CPU takes them per tensor)."""
    import gptlab.telemetry.gradients as gradients

    monkeypatch.setattr(gradients, "PER_TENSOR_DEVICES", ())


def _ops(n_layer: int) -> tuple[int, int]:
    model = ConfigurableGPT(get_debug_config("gpt2", n_layer=n_layer))
    x = torch.randint(0, 256, (2, 32))
    model(x, x)[1].backward()
    with _CountOps() as mode:
        get_gradient_stats(model)
    return mode.ops, sum(p.grad is not None for p in model.parameters())


def test_launches_do_not_grow_with_the_tensor_count(bucketed: None) -> None:
    """Norms are one fused _foreach_norm, sums and extremes are taken over flat buckets, the rest works on
    stacked values (was 7 launches per tensor, then 2: about 300 for the 148 tensors of GPT-2 124M, 7.4 ms of
    an H200 host's time per call)."""
    (few, n_few), (many, n_many) = _ops(1), _ops(4)
    assert n_many > n_few + 20
    assert few == many <= 30, (few, many)


@pytest.mark.parametrize("bucket", [1, 7, 1 << 25])
def test_buckets_of_mixed_dtypes_and_empty_tensors(
    monkeypatch: pytest.MonkeyPatch, bucketed: None, bucket: int
) -> None:
    import gptlab.telemetry.gradients as gradients

    monkeypatch.setattr(gradients, "BUCKET_ELEMENTS", bucket)
    torch.manual_seed(0)
    grads = [torch.randn(5), torch.randn(3, 4).bfloat16(), torch.zeros(0), torch.randn(9) - 3, torch.randn(2).half()]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    stats, ref = get_gradient_stats(params), reference_stats([g for g in grads if g.numel()])
    for key in ("global_norm", "grad_mean", "grad_std", "grad_min", "grad_max"):
        assert stats[key] == pytest.approx(ref[key], rel=1e-5), key


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


def test_spike_detector_against_a_reference() -> None:
    """Each update against a plain reference: the ratio to the median of the last ``window`` finite norms before it
    (statistics.median), a spike from the ``min_history``-th earlier norm on; a loaded detector judges as the one
    it was saved from (a resume's), whatever it held before."""
    import random
    import statistics

    window, threshold, min_history = 7, 3.0, 4
    det = GradientSpikeDetector(window=window, threshold=threshold, min_history=min_history)
    rng = random.Random(0)
    norms = [1.0, 1.0, 1.0, 1.0, 10.0]  # a spike as soon as min_history norms are there
    norms += [rng.choice([1.0, 1.5, 2.0, 9.0, 20.0]) * rng.uniform(0.9, 1.1) for _ in range(60)]
    seen: list[float] = []
    for i, norm in enumerate(norms):
        recent = seen[-window:]
        ratio = norm / statistics.median(recent) if recent else None
        want = len(recent) >= min_history and ratio > threshold
        assert det.update(norm) == want, i
        assert det.last_ratio == (pytest.approx(ratio, rel=1e-12) if ratio is not None else None), i
        seen.append(norm)
    assert list(det.history) == seen[-window:]
    resumed = GradientSpikeDetector(window=window, threshold=threshold, min_history=min_history)
    for n in (100.0, 200.0, 300.0):  # what it held before the load: not kept
        resumed.update(n)
    resumed.load_state_dict(det.state_dict())
    assert list(resumed.history) == list(det.history)
    assert resumed.update(50.0) == det.update(50.0) and resumed.last_ratio == det.last_ratio
    early = GradientSpikeDetector(window=window, threshold=threshold, min_history=min_history)
    early.update(2.0)
    resumed.load_state_dict(early.state_dict())  # a history shorter than the window: only its norms
    assert list(resumed.history) == [2.0]
