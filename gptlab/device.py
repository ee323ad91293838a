"""The device and precision a run asks for, resolved against this machine: one line for what it lacks."""

from __future__ import annotations

import contextlib

import torch

from gptlab.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here; one ConfigError line for a malformed name or one this machine lacks."""
    from gptlab.config.train import check_device_name

    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here: use --device=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device={name!r} but MPS (Apple's GPU) is not available here: use --device=cpu (or auto)")
    return device


def native_bf16(device: torch.device | int | None = None) -> bool:
    """Whether a CUDA device computes in bf16 natively (NVIDIA from Ampere, compute capability 8.0; ROCm), as
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` decides, for any device: without that argument
    it says True on a V100 or T4 too, where bf16 is emulated (slow matmuls, no flash attention, no bf16 peak
    to measure MFU against)."""
    if torch.version.hip:
        return True
    index = device.index if isinstance(device, torch.device) else device
    return torch.cuda.get_device_capability(index)[0] >= 8


def resolve_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        # as asked, emulated bf16 on a V100 or T4 too (a run saved in bf16 resumes there; auto picks float16)
        if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("dtype='bfloat16' is not supported on this GPU: use --dtype=float16")
        return name
    if device.type == "cuda":
        return "bfloat16" if native_bf16(device) else "float16"
    return "float32"


# TF32 for float32 matmuls and cuDNN convolutions on CUDA (nanoGPT's setting). PyTorch has two switches for it:
# the legacy ``allow_tf32`` flags and, from 2.9, ``fp32_precision``; reading a legacy flag raises once the new
# one was set ("a mix of the legacy and new APIs"), so gptlab reads and writes the one its caller uses.
def _uses_new_tf32_api() -> bool:
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return False
    try:
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 (raises where the caller set the new switch)
    except RuntimeError:
        return True
    return False


def tf32_state() -> tuple[bool, tuple[object, object]]:
    """The TF32 switches as the caller set them: (new API?, (matmul, cuDNN conv)). The legacy matmul switch is
    kept as its precision ('highest', 'high', 'medium'): allow_tf32 reads 'medium' as True, and writing True
    back turned a caller's 'medium' into 'high'."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if _uses_new_tf32_api():
        return True, (matmul.fp32_precision, cudnn.conv.fp32_precision)
    return False, (torch.get_float32_matmul_precision(), cudnn.allow_tf32)


def set_tf32_state(state: tuple[bool, tuple[object, object]]) -> None:
    new, (matmul_value, conv_value) = state
    if new:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul_value, conv_value
    else:
        torch.set_float32_matmul_precision(str(matmul_value))
        torch.backends.cudnn.allow_tf32 = bool(conv_value)


def enable_tf32() -> None:
    new = _uses_new_tf32_api()
    if new:
        set_tf32_state((True, ("tf32", "tf32")))
    else:  # 'high' (allow_tf32=True, nanoGPT's), or the caller's 'medium', which allows TF32 already
        precision = torch.get_float32_matmul_precision()
        set_tf32_state((False, ("high" if precision == "highest" else precision, True)))


def tf32_matmuls() -> bool:
    """Whether float32 matmuls may run on TF32 tensor cores, by either switch."""
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # the new switch set: the legacy reading refuses
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


# Which fused kernel SDPA tries first (TrainConfig.sdpa_backend). On CUDA PyTorch walks a priority order and
# takes the first kernel that accepts the case; gptlab puts the chosen one first and keeps the rest behind it,
# so a case it cannot take (a float mask, a head size) falls back as before. The CPU's SDPA has flash and math
# only and ignores the order: 'math' there switches its flash kernel off.


def sdpa_backend_ids() -> dict[str, int]:
    from torch.nn.attention import SDPBackend

    return {
        "flash": int(SDPBackend.FLASH_ATTENTION),
        "efficient": int(SDPBackend.EFFICIENT_ATTENTION),
        "cudnn": int(SDPBackend.CUDNN_ATTENTION),
        "math": int(SDPBackend.MATH),
    }


def _settle_cuda_sdpa_order() -> None:
    """PyTorch fixes its default order at the process's first CUDA SDPA call (cuDNN first on Hopper and
    Blackwell with a recent cuDNN: ``priority_order`` in sdp_utils.cpp), overwriting an order set before it:
    make that first choice now, on tiny tensors, so that an order read or set afterwards stays."""
    if torch.cuda.is_available():  # (no CUDA: nothing to settle, as no CUDA call will be made)
        q = torch.zeros(1, 1, 1, 8, device="cuda")
        with contextlib.suppress(RuntimeError):  # in a caller's sdpa_kernel([FLASH]) no kernel takes float32
            torch._fused_sdp_choice(q, q, q)  # (the order is set all the same)


def sdpa_state(cuda: bool = False) -> tuple[list[int] | None, bool]:
    """SDPA's kernel choice as the caller left it: (CUDA's priority order, the flash switch). ``cuda``: a CUDA
    run's, read after PyTorch's own first choice (``_settle_cuda_sdpa_order``)."""
    get_order = getattr(torch._C, "_get_sdp_priority_order", None)  # PyTorch >= 2.6
    if cuda and get_order is not None:
        _settle_cuda_sdpa_order()
    return (list(get_order()) if get_order else None), torch.backends.cuda.flash_sdp_enabled()


def set_sdpa_state(state: tuple[list[int] | None, bool]) -> None:
    order, flash = state
    if order is not None:
        torch._C._set_sdp_priority_order(order)
    torch.backends.cuda.enable_flash_sdp(flash)


def _key_compile_caches_by(name: str) -> None:
    """torch.compile's on-disk caches (AOTAutograd's, Inductor's) key a graph by its code and configs, not by
    SDPA's kernel order or switches, which are read when the graph is traced: an earlier run's graph came back
    from the cache with that run's kernel (a CPU run with sdpa_backend='math' ran flash attention). The
    backend's name joins their key tag (restored after the run, as the kernel order is)."""
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "cache_key_tag"):  # (PyTorch without the tag)
        return
    config.cache_key_tag = "|".join(filter(None, (config.cache_key_tag, f"gptlab-sdpa={name}")))


def compile_cache_tag() -> str | None:
    """The tag torch.compile's caches key every graph by (None where PyTorch has none)."""
    config = getattr(torch.compiler, "config", None)
    return getattr(config, "cache_key_tag", None)


def set_compile_cache_tag(tag: str | None) -> None:
    if tag is not None:
        torch.compiler.config.cache_key_tag = tag


def prefer_sdpa_kernel(name: str, device_type: str) -> None:
    """SDPA tries kernel ``name`` first on this process's ``device_type`` ('auto': PyTorch's own order)."""
    if name == "auto":
        return
    _key_compile_caches_by(name)
    if device_type == "cuda":
        order, flash = sdpa_state(cuda=True)
        if order is None:
            raise ConfigError(f"sdpa_backend={name!r} needs PyTorch >= 2.6 (its SDPA priority order); use 'auto'")
        first = sdpa_backend_ids()[name]
        set_sdpa_state(([first, *(b for b in order if b != first)], flash))  # the switches stay the caller's
    elif name == "math":
        torch.backends.cuda.enable_flash_sdp(False)  # (the CPU's flash kernel obeys this switch too)
