"""The chunked loss's Triton kernel (gptlab.model.loss_kernel): its torch reference against
``F.cross_entropy``, the kernel against the reference under Triton's CPU interpreter (where Triton is
installed and its interpreter runs: Triton <= 3.6's does not under numpy >= 2.4, triton-lang/triton#9171),
and the chunked loss's kernel path (the custom op, its CPU reference inside) against the plain head, eager
and compiled. On a GPU tests/train/test_cuda.py runs the kernel itself."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptlab.model import loss as loss_module
from gptlab.model.loss import linear_cross_entropy
from gptlab.model.loss_kernel import softmax_grad_

ROOT = Path(__file__).resolve().parents[2]


def _logits_and_targets(n: int, v: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(n, v, generator=gen)).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[1] = -1
    targets[-1] = v - 1
    return logits, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_is_cross_entropy_and_its_gradient(dtype: torch.dtype) -> None:
    """Row losses = F.cross_entropy(reduction='none'), 0 where ignored; the logits become the row loss sum's
    gradient (softmax minus one-hot, 0 on ignored rows), in the logits' dtype."""
    logits, targets = _logits_and_targets(7, 53, dtype)
    leaf = logits.float().requires_grad_()
    want = F.cross_entropy(leaf, targets, ignore_index=-1, reduction="none")
    want.sum().backward()
    work = logits.clone()
    got = softmax_grad_(work, targets)  # on the CPU: the reference, through the custom op
    assert got.dtype == torch.float32 and work.dtype == dtype and got[1] == 0
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(work.float(), leaf.grad, rtol=0, atol=4e-3 if dtype == torch.bfloat16 else 1e-6)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (its CPU interpreter)")
def test_kernel_matches_the_reference_in_the_interpreter(tmp_path: Path) -> None:
    """The kernel itself, run by TRITON_INTERPRET=1 on CPU tensors (set before Triton is imported, so in a
    process of its own): several blocks per row and a partial last one, ignored rows, three dtypes."""
    script = textwrap.dedent(
        """
        import sys
        import torch
        import triton
        import triton.language as tl
        from triton.runtime.errors import InterpreterError
        from gptlab.model import loss_kernel as lk

        @triton.jit
        def _loop_probe(out_ptr, n, BLOCK: tl.constexpr):
            total = 0
            for start in range(0, n, BLOCK):
                total += 1
            tl.store(out_ptr, total)

        try:  # the interpreter itself: a loop whose bound is a runtime argument, as the kernel's
            _loop_probe[(1,)](torch.zeros(1, dtype=torch.int32), 5, BLOCK=2)
        except InterpreterError as exc:
            print("interpreter broken:", exc)
            sys.exit(3)
        gen = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for v, block in ((37, 64), (300, 64), (1000, 256)):
                logits = (3 * torch.randn(6, v, generator=gen)).to(dtype)
                targets = torch.randint(0, v, (6,), generator=gen)
                targets[2], targets[4] = -1, v - 1
                want_grad = logits.clone()
                want = lk._softmax_grad_fallback(want_grad, targets)
                got = torch.empty(6)
                lk._softmax_grad_kernel[(6,)](logits, logits.stride(0), targets, got, v, BLOCK=block)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                ulp = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
                torch.testing.assert_close(logits.float(), want_grad.float(), rtol=0, atol=ulp)
                assert got[2] == 0 and bool((logits[2] == 0).all())
        # the op's own launch (block size, warps) on these CPU tensors: as if on CUDA
        lk.triton_kernel_applies = lk._triton_compiles_for = lambda *_: True
        logits = torch.randn(3, 9000, generator=gen).to(torch.bfloat16)  # two blocks of 8192 columns
        targets = torch.tensor([5, -1, 8999])
        want_grad = logits.clone()
        want = lk._softmax_grad_fallback(want_grad, targets)
        torch.testing.assert_close(lk.softmax_grad_(logits, targets), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits.float(), want_grad.float(), rtol=0, atol=8e-3)
        strided = torch.tensor([5, 0, -1, 0, 8999, 0])[::2]  # a slice's targets: stride 2
        logits = torch.randn(3, 9000, generator=gen)
        want_grad = logits.clone()
        want = lk._softmax_grad_fallback(want_grad, strided.contiguous())
        torch.testing.assert_close(lk.softmax_grad_(logits, strided), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, want_grad, rtol=0, atol=1e-6)
        print("ok")
        """
    )
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))  # a Triton found by it stays
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    if res.returncode == 3 and res.stdout.startswith("interpreter broken"):
        # Triton <= 3.6's interpreter turns a loop bound into a 1-element array, which numpy >= 2.4 refuses to
        # take as a scalar (triton-lang/triton#9171): nothing of the kernel ran, so nothing of it is checked
        pytest.skip(f"Triton's CPU interpreter cannot run a loop under this numpy: {res.stdout.strip()}")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


@pytest.fixture
def kernel_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The chunked loss takes its kernel path on the CPU (the custom op, whose CPU body is the reference);
    the list counts the op's calls."""
    calls: list[int] = []
    real = loss_module.softmax_grad_

    def counted(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(logits.shape[0])
        return real(logits, targets)

    monkeypatch.setattr(loss_module, "triton_kernel_applies", lambda device, dtype: True)
    monkeypatch.setattr(loss_module, "softmax_grad_", counted)
    return calls


@pytest.mark.parametrize("chunk", [8, 37])
@pytest.mark.parametrize("autocast", [False, True])
def test_kernel_path_equals_plain_cross_entropy(kernel_path: list[int], chunk: int, autocast: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(37, 16, generator=gen, requires_grad=True)
    w = (0.3 * torch.randn(101, 16, generator=gen)).requires_grad_()
    t = torch.randint(0, 101, (37,), generator=gen)
    t[:5] = -1
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        want = F.cross_entropy(F.linear(x, w).float(), t, ignore_index=-1)
        got = linear_cross_entropy(x2, w2, t, chunk)
    (3 * want).backward()
    (3 * got).backward()
    assert kernel_path == [min(chunk, 37 - s) for s in range(0, 37, chunk)]
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(x2.grad, x.grad, **tol)
    torch.testing.assert_close(w2.grad, w.grad, **tol)


def test_kernel_path_checks_targets_and_ignores_like_cross_entropy(kernel_path: list[int]) -> None:
    """A target outside [0, V) that is not -1 fails (the kernel would read past its row: checked on the
    device first); all targets ignored gives NaN, as F.cross_entropy."""
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="outside"):
        linear_cross_entropy(x, w, torch.tensor([0, 11, 2, 3]), 4)
    with pytest.raises(RuntimeError, match="outside"):
        linear_cross_entropy(x, w, torch.tensor([0, -2, 2, 3]), 4)
    assert torch.isnan(linear_cross_entropy(x, w, torch.full((4,), -1), 4))


def test_the_op_checks_its_targets() -> None:
    """Called directly too: a target outside [0, V) that is not -1, or targets of the wrong shape, fail."""
    with pytest.raises(RuntimeError, match="outside"):
        softmax_grad_(torch.randn(2, 5), torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="targets of shape"):
        softmax_grad_(torch.randn(2, 5), torch.tensor([1, 2, 3]))


def test_kernel_path_compiles_as_one_graph(kernel_path: list[int]) -> None:
    """Under torch.compile (fullgraph: no break) the op is one opaque call in the graph, and the loss and
    gradients are eager's."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 12, 16, generator=gen, requires_grad=True)
    w = torch.randn(50, 16, generator=gen, requires_grad=True)
    t = torch.randint(0, 50, (2, 12), generator=gen)
    eager = linear_cross_entropy(x, w, t, 8)
    grads = torch.autograd.grad(eager, (x, w))
    compiled = torch.compile(lambda a, b: linear_cross_entropy(a, b, t, 8), fullgraph=True)(x, w)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled, (x, w)), grads, strict=True):
        torch.testing.assert_close(got, want)


def test_the_op_launches_its_kernel_with_the_rows_strides_and_counts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The op's launch path on the CPU, with a stand-in for the Triton kernel that computes the reference: a
    program per row, the row stride of logits sliced from a wider tensor, the losses it fills returned, the
    logits overwritten; and each launch counted (``KERNEL_LAUNCHES``, what the benchmarks report as ran),
    none for an empty chunk or where the torch ops run."""
    import types

    from gptlab.model import loss_kernel

    launches: list[tuple[tuple[int, ...], int, int, int]] = []

    class StandIn:
        def __getitem__(self, grid: tuple[int, ...]):
            def run(logits, row_stride, targets, losses, n_cols, BLOCK, num_warps):
                launches.append((grid, row_stride, n_cols, BLOCK))
                view = logits.as_strided((grid[0], n_cols), (row_stride, 1))
                work, valid = view.float(), targets != -1
                losses.copy_(loss_kernel.softmax_grad_torch_(work, targets.masked_fill(~valid, 0), valid))
                view.copy_(work)

            return run

    monkeypatch.setattr(
        loss_kernel, "triton", types.SimpleNamespace(next_power_of_2=lambda n: 1 << (n - 1).bit_length())
    )
    monkeypatch.setattr(loss_kernel, "_softmax_grad_kernel", StandIn(), raising=False)
    monkeypatch.setattr(loss_kernel, "_triton_compiles_for", lambda index: True)
    monkeypatch.setattr(loss_kernel, "USE_TRITON", True)
    monkeypatch.setattr(loss_kernel, "triton_kernel_applies", lambda device, dtype: True)
    monkeypatch.setattr(loss_kernel, "KERNEL_LAUNCHES", type(loss_kernel.KERNEL_LAUNCHES)())
    wide, targets = _logits_and_targets(6, 40, torch.bfloat16)
    logits = wide[:, :37]  # rows 40 apart
    targets = targets.clamp(max=36)
    want_logits = logits.clone()
    want = loss_kernel._softmax_grad_fallback(want_logits, targets)
    got = softmax_grad_(logits, targets)
    assert launches == [((6,), 40, 37, 64)] and loss_kernel.KERNEL_LAUNCHES == {"cpu": 1}
    torch.testing.assert_close(got, want)
    assert torch.equal(logits, want_logits) and torch.equal(
        wide[:, 37:], _logits_and_targets(6, 40, torch.bfloat16)[0][:, 37:]
    )
    softmax_grad_(torch.empty(0, 37, dtype=torch.bfloat16), torch.empty(0, dtype=torch.long))
    monkeypatch.setattr(loss_kernel, "triton_kernel_applies", lambda device, dtype: False)
    softmax_grad_(logits.clone(), targets)
    assert len(launches) == 1 and loss_kernel.KERNEL_LAUNCHES == {"cpu": 1}
