"""gptlab.device: what a run asks for, against what this machine has, in one line each."""

from __future__ import annotations

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


@pytest.mark.parametrize("version, refused", [("2.7.1", True), ("2.8.0", False)])
def test_float16_on_mps_needs_torch_2_8(version: str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """GradScaler.unscale_ casts to float64, which MPS lacks, before PyTorch 2.8 (pytorch#142397): the
    first step would fail; refused at start instead."""
    from gptlab.device import resolve_dtype

    monkeypatch.setattr(torch, "__version__", version)
    if refused:
        with pytest.raises(ConfigError, match=r"dtype='float16' on MPS needs PyTorch 2.8 or newer \(this is 2.7.1\)"):
            resolve_dtype("float16", torch.device("mps"))
    else:
        assert resolve_dtype("float16", torch.device("mps")) == "float16"
    assert resolve_dtype("float16", torch.device("cpu")) == "float16"
