"""gptlab.device: what a run asks for, against what this machine has, in one line each."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from gptlab.device import resolve_device, resolve_dtype
from gptlab.errors import ConfigError


def test_device_and_dtype_resolve_or_say_what_is_missing() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"  # no autocast on a CPU by default
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"  # as asked
    # 'auto' on a GPU: bfloat16 where it has bf16 units (Ampere and later), else float16 with its grad scaler
    # (a V100 or T4 is float16: torch.cuda.is_bf16_supported() says True there by default, bf16 being emulated,
    # and auto picked it: slow matmuls, no flash attention, MFU unknown; an asked-for bfloat16 runs as asked,
    # emulated, so that a run saved in bf16 resumes there)
    for capability, want in (((8, 0), "bfloat16"), ((9, 0), "bfloat16"), ((7, 0), "float16"), ((7, 5), "float16")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
            mp.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
            assert resolve_dtype("auto", torch.device("cuda")) == want
            assert resolve_dtype("bfloat16", torch.device("cuda")) == "bfloat16"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match=r"device='cuda' but CUDA is not available here: use --device=cpu"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="device='gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize(
    "version, refused", [("2.7.1+cpu", True), ("2.8.0a0+git1234", False), ("2.8.0", False), ("2.13.0", False)]
)
def test_float16_training_on_mps_needs_torch_2_8(version: str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """GradScaler.unscale_ casts to float64, which MPS lacks, before PyTorch 2.8 (pytorch#142397): the first
    float16 training step would fail, so the scaler is refused at start (a 2.8 nightly has the fix); sampling
    in float16, which needs no scaler, is not."""
    from gptlab import parallel

    monkeypatch.setattr(torch, "__version__", version)
    info = types.SimpleNamespace(mode="none", device=torch.device("mps"))
    if refused:
        with pytest.raises(ConfigError, match=r"float16' training on MPS needs PyTorch 2.8 or newer \(this is 2.7.1"):
            parallel.build_grad_scaler(info, enabled=True)
        parallel.build_grad_scaler(info, enabled=False)  # bfloat16 / float32: no scaler, nothing refused
    else:
        assert parallel.torch_release() >= (2, 8)
    assert resolve_dtype("float16", torch.device("mps")) == "float16"


def test_tf32_switches_are_used_as_the_caller_set_them(tmp_path: Path) -> None:
    """PyTorch 2.9+ has two TF32 switches, and reading the legacy one raises once the new one is set: train()
    read the legacy flags on every run (a CPU run included) and so refused to start; on CUDA it now sets and
    restores the switch the caller uses. In a subprocess: the switches are process-wide."""

    root = Path(__file__).resolve().parents[1]
    code = f"""
import io, torch
from gptlab.config.resolve import parse_run_args
from gptlab.data.datasets import prepare_dataset
from gptlab.device import enable_tf32, set_tf32_state, tf32_matmuls, tf32_state
from gptlab.train.launch import train
from tests.train.conftest import tiny_args

data = {str(tmp_path / "data")!r}
prepare_dataset("stdlib_char", data_dir=data)
legacy = tf32_state()
assert legacy == (False, ("highest", True)) and not tf32_matmuls()
torch.backends.cudnn.allow_tf32 = False  # (PyTorch's default is on: off, to see enable_tf32 turn it on)
enable_tf32()
assert tf32_matmuls() and torch.get_float32_matmul_precision() == "high"
assert tf32_state() == (False, ("high", True))  # cuDNN's convolutions too, as nanoGPT sets both
set_tf32_state(legacy)
assert torch.get_float32_matmul_precision() == "highest"
torch.set_float32_matmul_precision("medium")  # a caller's: kept through enable_tf32 and restored exactly
medium = tf32_state()
enable_tf32()
assert torch.get_float32_matmul_precision() == "medium" and tf32_matmuls()
set_tf32_state(legacy)
set_tf32_state(medium)
assert torch.get_float32_matmul_precision() == "medium"  # (allow_tf32=True written back made it 'high')
set_tf32_state(legacy)
if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the new switch, set by the caller
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    train(parse_run_args(tiny_args(data, {str(tmp_path / "run")!r}, max_iters=1)), stream=io.StringIO())
    new = tf32_state()
    assert new == (True, ("tf32", "tf32")) and tf32_matmuls(), new
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert not tf32_matmuls()
    enable_tf32()
    assert tf32_matmuls()
    set_tf32_state(new)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_prefer_sdpa_kernel_orders_cuda_and_switches_the_cpus_flash() -> None:
    """TrainConfig.sdpa_backend: on CUDA the chosen kernel leads PyTorch's priority order and the others follow in
    theirs (a case it cannot take falls back); the CPU ignores that order, so 'math' there switches flash off.
    ``set_sdpa_state`` gives the caller's back."""
    from torch.nn.attention import SDPBackend

    from gptlab.device import compile_cache_tag, prefer_sdpa_kernel, sdpa_state, set_compile_cache_tag, set_sdpa_state

    before, tag = sdpa_state(), compile_cache_tag()
    order, flash = before
    try:
        prefer_sdpa_kernel("cudnn", "cuda")
        cudnn = int(SDPBackend.CUDNN_ATTENTION)
        assert sdpa_state() == ([cudnn, *(b for b in order if b != cudnn)], True)
        prefer_sdpa_kernel("flash", "cuda")
        assert sdpa_state()[0][:2] == [int(SDPBackend.FLASH_ATTENTION), cudnn]
        prefer_sdpa_kernel("auto", "cuda")  # PyTorch's own: nothing changes
        assert sdpa_state()[0][0] == int(SDPBackend.FLASH_ATTENTION)
        set_sdpa_state(before)
        prefer_sdpa_kernel("math", "cpu")
        assert sdpa_state() == (order, False) and compile_cache_tag().endswith("gptlab-sdpa=math")
    finally:
        set_sdpa_state(before)
        set_compile_cache_tag(tag)
    assert sdpa_state() == (order, flash) and flash


SDPA_IN_A_COMPILED_GRAPH = """
import sys, torch, torch.nn.functional as F
from torch.profiler import profile
from gptlab.device import prefer_sdpa_kernel
prefer_sdpa_kernel(sys.argv[1], "cpu")
attention = torch.compile(lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True))
q = torch.randn(1, 2, 16, 8)  # forward only: the cached graph shows the backend as well, in half the compile
attention(q)
with profile() as prof:
    attention(q)
print("flash" if any("flash" in e.name for e in prof.events()) else "math")
"""


def test_a_compiled_graph_from_the_cache_keeps_the_runs_sdpa_backend(tmp_path: Path) -> None:
    """torch.compile's on-disk caches key a graph by its code, not by SDPA's switches, which decide the kernel
    as it is traced: a 'math' run after an 'auto' one (same model, same cache) ran the cached flash graph."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH"))))
    argv = [sys.executable, "-c", SDPA_IN_A_COMPILED_GRAPH]
    ran = [subprocess.run([*argv, b], capture_output=True, text=True, env=env, timeout=300) for b in ("auto", "math")]
    assert [r.stdout.strip().splitlines()[-1:] for r in ran] == [["flash"], ["math"]], ran[-1].stderr[-2000:]
