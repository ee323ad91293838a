"""Dense peaks from the table, matched from real device-name strings; never a guessed peak."""

from __future__ import annotations

import types

import pytest
import torch

from gptlab.errors import ConfigError
from gptlab.telemetry import hardware
from gptlab.telemetry.hardware import GPU_SPECS, detect_peak, get_gpu_spec, match_gpu, measure_peak_flops, precision_key

NAMES = {
    "NVIDIA H100 80GB HBM3": "H100-SXM",
    "NVIDIA H100": "H100-SXM",
    "NVIDIA H100 PCIe": "H100-PCIe",
    "NVIDIA H100 NVL": "H100-NVL",
    "NVIDIA H200": "H200-SXM",
    "NVIDIA H200 NVL": "H200-NVL",
    "NVIDIA B200": "B200",
    "NVIDIA A100-SXM4-80GB": "A100-SXM",
    "NVIDIA A100-SXM4-40GB": "A100-SXM",
    "NVIDIA A100-PCIE-40GB": "A100-PCIe",
    "NVIDIA A100 80GB PCIe": "A100-PCIe",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA A10": "A10",
    "NVIDIA GeForce RTX 4090": "RTX-4090",
    "Tesla V100-SXM2-16GB": "V100-SXM2",
    "Tesla V100-PCIE-32GB": "V100-PCIe",
    "Tesla V100S-PCIE-32GB": "V100S-PCIe",
    "AMD Instinct MI300X": "MI300X",
    "NVIDIA GH200 480GB": "H200-SXM",  # Grace Hopper: the H100/H200 SXM peaks
}


@pytest.mark.parametrize("name", list(NAMES))
def test_realistic_device_names_match(name: str) -> None:
    spec = match_gpu(name)
    assert spec is not None and spec.key == NAMES[name]


@pytest.mark.parametrize(
    "name",
    # a model number inside another (an RTX A1000 is no A100) gets no peak rather than a wrong one
    [
        "NVIDIA L40",
        "NVIDIA A10G",
        "NVIDIA GeForce RTX 3090",
        "Intel Xeon",
        "cpu",
        "NVIDIA RTX A1000",
        "h1000",
        # MIG slices: a fraction of the GPU's SMs, so the whole GPU's peak would be several times too high
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
        "NVIDIA H200 MIG 7g.141gb",
    ],
)
def test_other_devices_are_unknown(name: str) -> None:
    assert match_gpu(name) is None


def test_dense_not_sparse_figures() -> None:
    tf = {spec.key: {k: None if v is None else v / 1e12 for k, v in spec.peaks.items()} for spec in GPU_SPECS}
    assert tf["H200-SXM"]["bf16"] == pytest.approx(989.5)  # ERRATA 8: 1979 is sparse
    assert tf["H100-SXM"]["bf16"] == tf["H200-SXM"]["bf16"]
    assert tf["H100-PCIe"]["bf16"] == pytest.approx(756.5)  # ERRATA 9: PCIe differs from SXM
    assert tf["B200"]["bf16"] == 2250  # ERRATA 8: 4500 is sparse
    assert tf["A100-SXM"]["bf16"] == 312 and tf["A100-SXM"]["tf32"] == 156 and tf["A100-SXM"]["fp32"] == 19.5
    assert tf["V100-SXM2"]["bf16"] is None and tf["V100-SXM2"]["fp16"] == 125  # ERRATA 9: no bf16 on Volta
    assert tf["A100-SXM"]["fp8"] is None  # Ampere has no fp8
    for spec in GPU_SPECS:  # tensor-core peaks are at least the plain-FP32 ones
        assert all(v is None or v >= spec.peaks["fp32"] for v in spec.peaks.values()), spec.key


def test_tensor_core_rates_keep_their_ratios() -> None:
    """A sparse (2:4) figure taken for a dense one doubles one card's column: each card's rates keep the ratios
    its tensor cores have (fp16 = bf16, tf32 = bf16 / 2, fp8 = 2 x bf16; datasheets round, hence the tolerance),
    so a doubled bf16 or fp8 alone stands out; and every card's dense 16-bit figure is pinned (a whole column
    doubled keeps the ratios)."""
    for spec in GPU_SPECS:
        tf = {k: None if v is None else v / 1e12 for k, v in spec.peaks.items()}
        if tf["bf16"] is not None:
            assert tf["fp16"] == tf["bf16"], spec.key
            assert tf["tf32"] == pytest.approx(tf["bf16"] / 2, rel=0.03), spec.key
        if tf["fp8"] is not None:
            assert tf["fp8"] == pytest.approx(2 * tf["bf16"], rel=0.02), spec.key
    dense_16bit = {  # TFLOPS, dense, from each datasheet (bf16; fp16 on Volta, which has no bf16)
        "B200": 2250, "H200-NVL": 835.5, "H200-SXM": 989.5, "H100-NVL": 835.5, "H100-PCIe": 756.5,
        "H100-SXM": 989.5, "A100-PCIe": 312, "A100-SXM": 312, "L40S": 362.05, "L4": 121, "A10": 125,
        "RTX-4090": 165.2, "V100S-PCIe": 130, "V100-PCIe": 112, "V100-SXM2": 125, "MI300X": 1307.4,
    }  # fmt: skip
    assert {spec.key: (spec.peaks["bf16"] or spec.peaks["fp16"]) / 1e12 for spec in GPU_SPECS} == pytest.approx(
        dense_16bit
    )


def test_table_keys_and_errors() -> None:
    assert get_gpu_spec("H100-SXM").key == "H100-SXM"
    assert get_gpu_spec("h100_pcie").key == "H100-PCIe"
    assert get_gpu_spec("NVIDIA H100 80GB HBM3").key == "H100-SXM"  # device names work too
    with pytest.raises(ConfigError, match="did you mean 'B200'"):
        get_gpu_spec("B300")


def test_precision_keys() -> None:
    assert precision_key(torch.bfloat16) == "bf16" and precision_key("float16") == "fp16"
    assert precision_key(torch.float32) == "fp32"  # PyTorch's default 'highest' precision: no TF32
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert precision_key(torch.float32) == "tf32"  # TF32 tensor cores are then the real ceiling
    finally:
        torch.set_float32_matmul_precision(old)
    with pytest.raises(ConfigError):
        precision_key("int8")


def test_float32_training_takes_tf32_units_where_there_are_any(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training turns TF32 on (as nanoGPT): float32 estimates and MFU use the TF32 peak, except on Volta,
    which has no TF32 units, so its float32 matmuls run (and are measured) at the FP32 rate."""
    assert get_gpu_spec("H100-SXM").training_precision("float32") == "tf32"
    assert get_gpu_spec("V100-SXM").training_precision(torch.float32) == "fp32"
    assert get_gpu_spec("H100-SXM").training_precision("bfloat16") == "bf16"
    from gptlab.telemetry import hardware

    monkeypatch.setattr(hardware, "device_name", lambda device: "Tesla V100-SXM2-16GB")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # what the training loop sets on CUDA
        v100 = detect_peak("cuda", torch.float32)
        assert v100.precision == "fp32" and v100.peak_flops == get_gpu_spec("V100-SXM").peaks["fp32"]
    finally:
        torch.set_float32_matmul_precision(old)


def test_cpu_peak_is_unknown_unless_overridden_or_measured() -> None:
    unknown = detect_peak("cpu", torch.bfloat16)
    assert unknown.peak_flops is None and unknown.source == "unknown" and unknown.name == "cpu"
    override = detect_peak("cpu", "bf16", override_tflops=1.5)
    assert override.peak_flops == 1.5e12 and override.source == "override"
    with pytest.raises(ConfigError, match=r"above 100,000 TFLOPS per device: it is TFLOPS, not FLOP/s \(.* 989 TFLOPS"):
        detect_peak("cpu", "bf16", override_tflops=989e12)  # FLOP/s where TFLOPS is asked: an MFU of 1e-17
    np = pytest.importorskip("numpy")
    for value in (np.float32(989.0), np.int64(989)):  # a number from a sweep's array
        assert detect_peak("cpu", "bf16", override_tflops=value).peak_flops == 989e12
    for bad in (True, "989"):
        with pytest.raises(ConfigError, match=r"is invalid: expected a float > 0 \(TFLOPS per device\)"):
            detect_peak("cpu", "bf16", override_tflops=bad)
    measured = detect_peak("cpu", torch.float32, measure=True)
    assert measured.source == "measured" and measured.peak_flops > 0


def test_measure_peak_flops_times_a_matmul() -> None:
    assert measure_peak_flops("cpu", torch.float32, size=128, iters=2) > 1e6


def test_measure_peak_flops_is_two_flops_per_multiply_add_over_the_best_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock makes the three timed 64 x 64 matmuls take 3 s, 2 s and 4 s: the best is 2 s, and a
    matmul of two n x n matrices is n**3 multiply-adds = 2 * 64**3 = 524,288 FLOPs, so 262,144 FLOP/s."""
    readings = iter([0.0, 3.0, 10.0, 12.0, 20.0, 24.0])  # (start, end) per timed matmul
    monkeypatch.setattr(hardware, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    assert measure_peak_flops("cpu", torch.float32, size=64, iters=3) == 262_144.0
    assert next(readings, None) is None  # every timed matmul read the clock twice, and only those


def test_a_typed_gpu_name_with_an_unknown_word_is_refused() -> None:
    """--gpu H100X was taken for an H100 SXM (the driver-name pattern's model word ends at the next digit only):
    a typed name must be a key, or a model with known qualifiers, as the driver and NVIDIA spell them."""
    from gptlab.errors import ConfigError
    from gptlab.telemetry.hardware import get_gpu_spec

    for typo in ("H100X", "h100-sxmm", "A100 turbo", "H200x2"):
        with pytest.raises(ConfigError, match=r"is not a known accelerator"):
            get_gpu_spec(typo)
    known = {"H100": "H100-SXM", "NVIDIA H100 80GB HBM3": "H100-SXM", "h100_pcie": "H100-PCIe", "GH200": "H200-SXM",
             "Tesla V100-SXM2-16GB": "V100-SXM2", "NVIDIA A100-SXM4-80GB": "A100-SXM",
             "NVIDIA GH200 144G HBM3e": "H200-SXM", "AMD Instinct MI300X VF": "MI300X"}  # fmt: skip
    assert {name: get_gpu_spec(name).key for name in known} == known


def test_every_name_of_a_dtype_has_its_precision() -> None:
    """'half' is float16 (torch.half), not bfloat16; both float8 formats are fp8."""
    for name in ("half", "float16", "fp16", torch.float16, torch.half):
        assert precision_key(name) == "fp16", name
    assert precision_key("bfloat16") == precision_key(torch.bfloat16) == "bf16"
    assert precision_key(torch.float8_e4m3fn) == precision_key(torch.float8_e5m2) == "fp8"


def test_a_known_gpu_takes_the_tables_peak_even_when_measuring_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """measure=True is the fallback for a device the table lacks: an H100's datasheet figure is never replaced by a
    timed matmul (70-90% of it, which would overstate MFU)."""
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(hardware, "measure_peak_flops", lambda *a, **k: pytest.fail("measured a known GPU"))
    info = detect_peak("cuda", torch.bfloat16, measure=True)
    assert (info.source, info.peak_flops, info.precision) == ("table", 989.5e12, "bf16")


def test_a_float32_peak_on_cuda_is_timed_on_tf32_as_training_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gptlab peak --dtype=float32` timed full FP32 (PyTorch's default) while training turns TF32 on: the
    suggested --peak_tflops was ~8x low on an H100, MFU ~8x high. Timed under TF32 now, the caller's setting
    restored; bf16 and the CPU as they were."""
    from gptlab.device import tf32_matmuls, tf32_state
    from gptlab.telemetry import hardware

    seen: list[tuple[str, torch.dtype, bool]] = []

    def timed(device: torch.device, dtype: torch.dtype, size: int, iters: int) -> float:
        seen.append((device.type, dtype, tf32_matmuls()))
        return 1.0

    monkeypatch.setattr(hardware, "_timed_matmuls", timed)
    before, was = tf32_state(), tf32_matmuls()
    for device, dtype in (("cuda", "float32"), ("cuda", "bfloat16"), ("cpu", "float32")):
        measure_peak_flops(device, dtype, size=8, iters=1)
    assert seen == [("cuda", torch.float32, True), ("cuda", torch.bfloat16, was), ("cpu", torch.float32, was)]
    assert tf32_state() == before
