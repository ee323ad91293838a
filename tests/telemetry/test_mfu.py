"""estimate_mfu_detailed: the design document's keys, nanoGPT's arguments, DDP and accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab import ConfigurableGPT, get_debug_config, get_preset_config
from gptlab.errors import ConfigError
from gptlab.telemetry import hardware
from gptlab.telemetry.flops import compute_flops
from gptlab.telemetry.hardware import PeakInfo, detect_peak
from gptlab.telemetry.mfu import estimate_mfu_detailed, expected_tokens_per_sec

DESIGN_KEYS = {
    "mfu", "mfu_percent", "flops_achieved", "flops_per_token", "tokens_per_sec", "hardware_peak_flops",
    "hardware_peak_tflops", "achieved_tflops", "gpu_name", "precision", "num_gpus", "attention_flops_per_layer",
    "ffn_flops_per_layer", "attention_to_ffn_ratio",
}  # fmt: skip
EXTRA_KEYS = {"lm_head_flops", "hfu", "flops_per_token_causal", "mfu_causal", "components"}
GPT2 = get_preset_config("gpt2")


def test_returns_every_design_key_and_more() -> None:
    out = estimate_mfu_detailed(GPT2, 12 * 40, 1.0, gpu_name="NVIDIA A100-SXM4-80GB")
    assert set(out) >= DESIGN_KEYS | EXTRA_KEYS
    assert out["precision"] == "bf16" and out["peak_source"] == "table" and out["hardware_peak_tflops"] == 312
    assert out["flops_per_token"] == 854_654_976 and out["attention_convention"] == "full-square"
    assert out["mfu_percent"] == pytest.approx(100 * out["mfu"])
    assert out["flops_achieved"] == pytest.approx(out["mfu"] * out["hardware_peak_flops"])
    assert out["mfu_causal"] < out["mfu"] < out["hfu"]
    assert {row["component"] for row in out["components"]} >= {"qkv_proj", "ffn", "lm_head", "out_proj"}


def test_nanogpt_meaning_of_arguments() -> None:
    """ERRATA 12's arithmetic: 12 x 1024 x 40 tokens in 3.78 s on one A100 is ~130k tokens/s, 35% MFU."""
    out = estimate_mfu_detailed(GPT2, fwdbwd_per_iter=12 * 40, dt=3.78, gpu_name="A100-SXM")
    tokens = 12 * 40 * 1024
    assert out["tokens_per_sec"] == pytest.approx(tokens / 3.78)
    assert out["mfu"] == pytest.approx(854_654_976 * tokens / 3.78 / 312e12)
    assert out["mfu"] == pytest.approx(0.35, abs=0.01)


def test_nanogpt_estimate_mfu_method() -> None:
    """Scripts ported from nanoGPT call model.estimate_mfu(fwdbwd_per_iter, dt): a fraction against the
    named or detected device's peak, None on a CPU rather than against a guessed A100."""
    model = ConfigurableGPT(get_debug_config("gpt2"))
    want = estimate_mfu_detailed(model.config, 480, 3.78, gpu_name="H100-SXM")["mfu"]
    assert model.estimate_mfu(480, 3.78, gpu_name="H100-SXM") == want > 0
    assert model.estimate_mfu(480, 3.78, peak_flops=1e12) == pytest.approx(want * 989.5e12 / 1e12)
    if not torch.cuda.is_available():  # no peak: NaN, which nanoGPT's 0.9 * running_mfu + 0.1 * mfu survives
        assert math.isnan(0.9 * -1.0 + 0.1 * model.estimate_mfu(480, 3.78))


def test_model_estimate_mfu_takes_the_peak_of_the_device_the_model_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model on the CPU of a GPU machine has no peak: not the GPU's, which the CPU step never ran on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    model = ConfigurableGPT(get_debug_config("gpt2"))
    assert math.isnan(model.estimate_mfu(480, 3.78))
    assert estimate_mfu_detailed(model.config, 480, 3.78)["mfu"] > 0  # the function itself: the current GPU


def test_ddp_and_gradient_accumulation_convention() -> None:
    """fwdbwd_per_iter counts one rank's sequences over all its micro-steps; num_gpus ranks do the same.
    The same global batch (12 x 40) split over 4 ranks (accumulation 10 each) in a quarter of the
    time is the same MFU and the same total throughput as one GPU."""
    one = estimate_mfu_detailed(GPT2, 12 * 40, 4.0, gpu_name="A100-SXM")
    four = estimate_mfu_detailed(GPT2, 12 * 10, 1.0, gpu_name="A100-SXM", num_gpus=4)
    assert four["mfu"] == pytest.approx(one["mfu"])
    assert four["tokens_per_sec"] == pytest.approx(4 * one["tokens_per_sec"])
    assert four["tokens_per_iter"] == one["tokens_per_iter"] == 12 * 40 * 1024
    assert four["hardware_peak_flops"] == 4 * 312e12 and four["hardware_peak_flops_per_gpu"] == 312e12
    assert four["tokens_per_sec_per_gpu"] == pytest.approx(one["tokens_per_sec"])
    # counting only one micro-step would understate MFU by the accumulation factor
    partial = estimate_mfu_detailed(GPT2, 12, 4.0, gpu_name="A100-SXM")
    assert partial["mfu"] == pytest.approx(one["mfu"] / 40)
    # the per-GPU figures are the job's over its GPUs: what the console's "Achieved ... per GPU" shows
    assert four["achieved_tflops"] == pytest.approx(one["achieved_tflops"] * 4)
    assert four["achieved_tflops_per_gpu"] * 4 == pytest.approx(four["achieved_tflops"])
    assert four["achieved_tflops_per_gpu"] * 1e12 == pytest.approx(four["mfu"] * four["hardware_peak_flops_per_gpu"])


def test_causal_mfu_counts_the_causal_flops() -> None:
    """mfu_causal is MFU with the attention scores counted over the causal triangle only: its ratio to mfu is
    exactly that of the two per-token counts (test_flops' hand-computed GPT-2 figures), not merely smaller."""
    out = estimate_mfu_detailed(GPT2, 12 * 40, 3.78, gpu_name="A100-SXM")
    causal = 854_654_976 - 3 * 12 * 2 * (1_572_864 - 768 * 1025)
    assert out["flops_per_token"] == 854_654_976 and out["flops_per_token_causal"] == causal
    assert out["mfu_causal"] / out["mfu"] == pytest.approx(causal / 854_654_976, rel=1e-12)
    assert out["mfu"] == pytest.approx(854_654_976 * 12 * 40 * 1024 / 3.78 / 312e12, rel=1e-12)


def test_unknown_peak_gives_no_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = estimate_mfu_detailed(GPT2, 8, 1.0)
    assert out["gpu_name"] == "cpu" and out["peak_source"] == "unknown"
    for key in ("mfu", "mfu_percent", "hfu", "mfu_causal", "hardware_peak_flops", "hardware_peak_tflops"):
        assert out[key] is None, key
    assert out["tokens_per_sec"] == 8 * 1024 and out["achieved_tflops"] > 0  # measured facts stay
    v100 = estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name="Tesla V100-SXM2-16GB", precision=torch.bfloat16)
    assert v100["mfu"] is None  # no bf16 units: never borrow the fp16 figure
    assert estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name="Tesla V100-SXM2-16GB", precision="fp16")["mfu"] > 0


def test_explicit_gpu_name_takes_detect_peaks_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """estimate_mfu_detailed(gpu_name=...) (the model's nanoGPT method) and a training run's detect_peak
    look the peak up the same way: float32 with TF32 allowed on Volta (no TF32 units) is the FP32 rate."""
    name = "Tesla V100-SXM2-16GB"
    out = estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name=name, precision="tf32")
    monkeypatch.setattr(hardware, "device_name", lambda device: name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    info = detect_peak("cuda", "tf32")
    assert (out["precision"], out["hardware_peak_flops"]) == (info.precision, info.peak_flops)
    assert info.precision == "fp32" and out["mfu"] > 0
    with pytest.raises(ConfigError, match="peak_flops=-1"):
        estimate_mfu_detailed(GPT2, 8, 1.0, peak_flops=-1)


def test_a_peak_in_the_wrong_unit_or_a_misspelt_gpu_is_refused() -> None:
    """peak_flops is FLOP/s (detect_peak's override_tflops and --peak_tflops take TFLOPS): 989.5 gave an MFU of
    4e10 without a word; 'H100X' read as an H100 where get_gpu_spec refuses it; a string's comparison failed as a
    TypeError. A driver's own name and a 0-d tensor still work."""
    unit = r"^peak_flops=989.5 is below 1e6 FLOP/s: it is FLOP/s per GPU, not TFLOPS \(989.5 TFLOPS is 9.895e\+14"
    with pytest.raises(ConfigError, match=unit):
        estimate_mfu_detailed(GPT2, 8, 1.0, peak_flops=989.5)
    with pytest.raises(ConfigError, match=r"^gpu_name='H100X' is not a known accelerator \(did you mean 'H100-SXM'"):
        estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name="H100X")
    for unknown in ("TITAN V", "cpu"):  # an older driver's bare name, a run record's: no peak known, not an error
        assert estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name=unknown)["mfu"] is None
    with pytest.raises(ConfigError, match=r"peak_flops='1e15' is invalid"):
        estimate_mfu_detailed(GPT2, 8, 1.0, peak_flops="1e15")
    with pytest.raises(ValueError, match=r"^dt='0.1' must be a number > 0"):
        estimate_mfu_detailed(GPT2, 8, "0.1")
    with pytest.raises(ValueError, match=r"^num_gpus=2.5 must be a whole number of ranks >= 1"):
        estimate_mfu_detailed(GPT2, 8, 1.0, num_gpus=2.5)
    by_driver = estimate_mfu_detailed(GPT2, 8, torch.tensor(1.0), gpu_name="NVIDIA H100 80GB HBM3")
    assert by_driver["mfu"] == pytest.approx(estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name="H100-SXM")["mfu"])
    for driver in ("GRID A100D-80C", "NVIDIA A10-24Q", "Tesla V100-DGXS-32GB"):  # words no typed name has: matched
        out = estimate_mfu_detailed(GPT2, 8, 1.0, gpu_name=driver, precision="fp16")  # as the driver spells them
        assert out["peak_source"] == "table" and out["hardware_peak_flops"] > 0, driver
    with pytest.raises(ValueError, match=r"^num_gpus=inf must be a whole number"):
        estimate_mfu_detailed(GPT2, 8, 1.0, num_gpus=float("inf"))


def test_override_peak_and_checkpointing() -> None:
    out = estimate_mfu_detailed(GPT2, 8, 1.0, peak_flops=1e12, activation_checkpointing=True)
    assert out["peak_source"] == "override" and out["hardware_peak_tflops"] == 1.0
    fl = compute_flops(GPT2, activation_checkpointing=True)
    assert out["hfu"] / out["mfu"] == pytest.approx(fl.hfu_flops_per_token / fl.flops_per_token)
    with pytest.raises(ValueError):
        estimate_mfu_detailed(GPT2, 8, 0.0)


def test_peak_info_from_detect_peak_is_used_as_is() -> None:
    info = PeakInfo("NVIDIA H100 80GB HBM3", 989.5e12, "bf16", "table")
    out = estimate_mfu_detailed(GPT2, 8, 1.0, peak=info)
    assert out["peak_source"] == "table" and out["gpu_name"] == info.name and out["hardware_peak_tflops"] == 989.5
    unknown = estimate_mfu_detailed(GPT2, 8, 1.0, peak=detect_peak("cpu", torch.bfloat16))
    assert unknown["mfu"] is None and unknown["peak_source"] == "unknown"


def test_model_method_delegates() -> None:
    cfg = get_debug_config("llama")
    model = ConfigurableGPT(cfg)
    assert model.estimate_mfu_detailed(4, 0.5, peak_flops=1e12) == estimate_mfu_detailed(cfg, 4, 0.5, peak_flops=1e12)


def test_expected_tokens_per_sec() -> None:
    tps = expected_tokens_per_sec(GPT2, 312e12, 0.35)
    assert tps == pytest.approx(0.35 * 312e12 / 854_654_976)  # ~128k tokens/s, not 4k (ERRATA 12)
    assert expected_tokens_per_sec(GPT2, 312e12, 0.35, num_gpus=8) == pytest.approx(8 * tps)


def test_a_peak_must_be_positive_and_full_utilisation_is_allowed() -> None:
    """peak_flops=0 is one ConfigError, not a ZeroDivisionError in the ratio; mfu=1.0 (the datasheet peak
    itself) is the top of expected_tokens_per_sec's range: 312e12 / 854,654,976 FLOPs per token."""
    with pytest.raises(ConfigError, match="peak_flops=0 is invalid"):
        estimate_mfu_detailed(GPT2, 8, 1.0, peak_flops=0)
    assert expected_tokens_per_sec(GPT2, 312e12, 1.0) == pytest.approx(312e12 / 854_654_976, rel=1e-12)
    for mfu in (0.0, 1.01):
        with pytest.raises(ValueError, match=f"mfu={mfu}"):
            expected_tokens_per_sec(GPT2, 312e12, mfu)
    fp16 = estimate_mfu_detailed(GPT2, 8, 1.0, peak_flops=1e12, precision="fp16")
    assert (fp16["precision"], fp16["peak_source"]) == ("fp16", "override")  # the override's precision as asked
    with pytest.raises(ValueError, match="num_gpus=0"):
        estimate_mfu_detailed(GPT2, 8, 1.0, num_gpus=0, peak_flops=1e12)


def test_a_shorter_sequence_counts_its_own_tokens() -> None:
    """seq_len=256 of GPT-2's 1024: 8 sequences are 2048 tokens, at the 256-token FLOPs per token (the
    block_size's tokens made MFU 4x too high)."""
    out = estimate_mfu_detailed(GPT2, 8, 2.0, seq_len=256, peak_flops=1e12)
    fl = compute_flops(GPT2, seq_len=256)
    assert out["seq_len"] == 256 and out["tokens_per_iter"] == 8 * 256 and out["tokens_per_sec"] == 8 * 256 / 2.0
    assert out["flops_per_token"] == fl.flops_per_token < compute_flops(GPT2).flops_per_token
    assert out["mfu"] == pytest.approx(fl.flops_per_token * 8 * 256 / 2.0 / 1e12, rel=1e-12)
