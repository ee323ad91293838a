"""gptlab.device: what a run asks for, against what this machine has, in one line each."""

from __future__ import annotations

import types

import pytest
import torch

from gptlab.device import resolve_device, resolve_dtype
from gptlab.errors import ConfigError


def test_device_and_dtype_resolve_or_say_what_is_missing() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"  # no autocast on a CPU by default
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"  # as asked
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
