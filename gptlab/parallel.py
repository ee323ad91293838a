"""Distribution: process groups from torchrun's environment, and one function that wraps a built
model for the parallel mode (none | ddp | zero1 | fsdp).

The model module knows nothing of distribution (torchtitan's ``parallelize``): ``parallelize``
takes a built ``ConfigurableGPT`` and applies, in this order, activation checkpointing (per
block), ``torch.compile`` (in place, so parameter names stay those of the plain model), then
FSDP2 ``fully_shard`` per ``TransformerBlock`` and at the root, or DDP. All communication is
PyTorch's own (``torch.distributed``, DDP, ``ZeroRedundancyOptimizer``, FSDP2).
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gptlab.config.train import TrainConfig
from gptlab.errors import ConfigError

MODES = ("none", "ddp", "zero1", "fsdp")
PT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job; ``world_size == 1`` without a process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group
    mode: str = "none"
    owns_group: bool = False  # this process created the group, so it destroys it

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def resolve_mode(cfg: TrainConfig, world_size: int) -> str:
    """The parallel mode: ``auto`` is ddp under torchrun with more than one rank, else none."""
    mode = cfg.parallel_mode
    if mode == "auto":
        return "ddp" if world_size > 1 else "none"
    if mode == "none" and world_size > 1:
        raise ConfigError(
            f"parallel='none' but WORLD_SIZE={world_size}: use --parallel=ddp|zero1|fsdp (or auto) under torchrun"
        )
    return mode


# How long past dist_timeout a rank may still be joining before it exits: gloo's connects after a torchrun
# restart can hang beyond the timeout given (pytorch#167288 family: both ranks inside ProcessGroupGloo's
# constructor for minutes); exiting lets torchrun restart the attempt or end the job.
HUNG_JOIN_GRACE_S = 60


def _exit_hung_join(rank: int, world_size: int, waited: float) -> None:
    print(
        f"gptlab: error: rank {rank} could not form the process group of {world_size} ranks: still joining after "
        f"{waited:.0f}s (dist_timeout + {HUNG_JOIN_GRACE_S}s): rank 0 may have refused to start (a MASTER_PORT "
        f"another program holds, {os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}: rank 0's "
        "own line says so), or PyTorch's gloo hung connecting after a restart (pytorch#167288): exiting, so that "
        "torchrun --max-restarts tries again or ends the job",
        file=sys.stderr,
        flush=True,
    )
    os._exit(1)  # the thread that hangs is inside C++: nothing else ends it


def _join(backend: str, rank: int, world_size: int, timeout_s: int) -> None:
    """``init_process_group`` from torchrun's environment, with a watchdog past its own timeout."""
    waited = timeout_s + HUNG_JOIN_GRACE_S
    watchdog = threading.Timer(waited, lambda: _exit_hung_join(rank, world_size, waited))
    watchdog.daemon = True
    watchdog.start()
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
    finally:
        watchdog.cancel()


def _check_srun_tasks() -> None:
    """``srun -n N python train.py``: N tasks without torchrun's variables would each train alone."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
    if "RANK" not in os.environ and tasks.isdigit() and int(tasks) > 1:
        raise ConfigError(
            f"srun started {tasks} tasks (SLURM_STEP_NUM_TASKS) but none has torchrun's RANK / WORLD_SIZE: each "
            "would train alone. Start one torchrun per node (srun --ntasks-per-node=1 torchrun --nnodes=$SLURM_NNODES "
            "--nproc_per_node=GPUS --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...), or set RANK, "
            "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each task from SLURM's variables"
        )


def _check_launch_env(world_size: int) -> None:
    """Launch variables set by hand that cannot form the job's group: one line each (checked only where a
    group is formed: a stray MASTER_ADDR in a one-process run's shell is no error)."""
    if "MASTER_ADDR" in os.environ:
        if "MASTER_PORT" not in os.environ:
            raise ConfigError(
                f"MASTER_ADDR={os.environ['MASTER_ADDR']!r} is set but MASTER_PORT is not: set both (torchrun does), "
                "or launch with torchrun"
            )
        _env_int("MASTER_PORT", 0)
    elif world_size > 1:
        raise ConfigError(f"WORLD_SIZE={world_size} without MASTER_ADDR: launch with torchrun")


def _check_ranks(world_size: int, rank: int, local_rank: int) -> None:
    """The launch variables against each other: a stale ``RANK=1`` in a one-process run's shell made it a rank
    that is never rank 0 (it trained without a line printed or a file written, and exited 0), ``WORLD_SIZE=0``
    was a ZeroDivisionError, a rank past the world size waited dist_timeout for a group it cannot join."""
    if world_size < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={world_size} is invalid: expected 1 or more ranks")
    if not 0 <= rank < world_size:
        raise ConfigError(
            f"environment variable RANK={rank} is invalid for WORLD_SIZE={world_size}: expected 0 to "
            f"{world_size - 1} (a RANK left in the shell from another launch? unset it, or launch with torchrun)"
        )
    if not 0 <= local_rank < world_size:
        raise ConfigError(
            f"environment variable LOCAL_RANK={local_rank} is invalid for WORLD_SIZE={world_size}: expected 0 to "
            f"{world_size - 1} (unset it, or launch with torchrun)"
        )


def stop_with_the_launcher() -> None:
    """Under torchrun (Linux), ask the kernel for a SIGTERM to this rank when its launcher dies (kill -9, the
    OOM killer): torchrun starts its workers in a session of their own, so nothing else reaches them, and they
    trained on orphaned, holding the GPUs and out_dir's lock. The SIGTERM stops them as a preemption does:
    at a step boundary, with a checkpoint."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    launcher = os.getppid()
    try:  # the parent must be torchrun itself: a process that merely has its variables (a test) is left alone
        parent = Path(f"/proc/{launcher}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if not any(part.endswith((b"torchrun", b"torch.distributed.run")) for part in parent):
        if launcher == 1 and os.getsid(0) == os.getpid() and not _launcher_like(parent):  # torchrun's worker (a
            # session of its own, torchrun's start_new_session) that init adopted: torchrun died while this rank
            # started, before it could ask (its store gone, the group would wait out dist_timeout). A launcher
            # that is PID 1 itself (a container's entrypoint: torch.distributed.launch, accelerate) is alive.
            os.kill(os.getpid(), signal.SIGTERM)
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):  # no prctl (a libc without it): as before
        return
    if os.getppid() != launcher:  # it died before the request
        os.kill(os.getpid(), signal.SIGTERM)


def _launcher_like(cmdline: list[bytes]) -> bool:
    """Whether a process's command line may be a launcher of ranks (a Python program, torchrun, accelerate,
    deepspeed), not an init (tini, dumb-init, systemd, a shell entrypoint) that adopts orphans."""
    names = [Path(part.decode(errors="replace")).name for part in cmdline if part]
    return any(n.startswith("python") or n in ("torchrun", "accelerate", "deepspeed") for n in names[:2])


def init_distributed(cfg: TrainConfig, device: torch.device) -> DistInfo:
    """Join the job torchrun started (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    NCCL on CUDA, gloo on the CPU. A parallel mode asked for in a plain single process gets a
    one-rank group (in-memory store), so ``--parallel=fsdp`` also runs without torchrun. The
    timeout bounds every collective: a rank that died turns into an error, not a hang.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    stop_with_the_launcher()
    if not (dist.is_available() and dist.is_initialized()):  # a group made by the caller names its own ranks
        _check_ranks(world_size, rank, local_rank)
    if world_size == 1 and (not dist.is_available() or not dist.is_initialized()):
        _check_srun_tasks()
    mode = resolve_mode(cfg, world_size)
    if device.type == "cuda":
        # under torchrun each rank takes its LOCAL_RANK's GPU; a single process keeps the one named (cuda:1)
        index = local_rank if world_size > 1 or device.index is None else device.index
        if index >= (count := torch.cuda.device_count()):  # CUDA's "invalid device ordinal" otherwise
            raise ConfigError(
                f"rank {rank} takes cuda:{index} (LOCAL_RANK={local_rank}), but this process sees {count} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most {count} "
                "processes a node (torchrun --nproc_per_node), or show each process every GPU of its node"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if mode == "none":
        return DistInfo(device=device)
    if not dist.is_available():
        raise ConfigError(f"parallel={mode!r} needs torch.distributed, which this PyTorch build lacks")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"parallel={mode!r} runs on cuda (NCCL) or cpu (gloo), not on device={device.type!r}")
    backend = "nccl" if device.type == "cuda" else "gloo"  # device='cpu' forces gloo
    if cfg.backend not in ("auto", backend) and device.type == "cuda":
        backend = cfg.backend
    # FSDP2's CPU offload keeps gradient shards on the CPU, whose statistics and clipping norms all-reduce there:
    # NCCL alone has no CPU backend ("No backend type associated with device type cpu" at the first step)
    group_backend = "cuda:nccl,cpu:gloo" if backend == "nccl" and mode == "fsdp" and cfg.fsdp_cpu_offload else backend
    owns = False
    if dist.is_initialized():  # e.g. a test that made its own group
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        timeout = datetime.timedelta(seconds=cfg.dist_timeout)
        _check_launch_env(world_size)
        if "MASTER_ADDR" in os.environ:
            try:
                _join(group_backend, rank, world_size, cfg.dist_timeout)
            except RuntimeError as e:  # DistError: a store timeout, or the store's host gone; gloo's own connects
                # fail as plain RuntimeErrors (a peer restarted while the mesh formed: torchrun --max-restarts)
                gloo = any(s in str(e) for s in ("connectFullMesh", "Connect timeout", "Connection refused"))
                if not (gloo or isinstance(e, getattr(dist, "DistError", ()))):
                    raise
                if "EADDRINUSE" in str(e) or "address already in use" in str(e).lower():  # rank 0 hosts the store
                    raise ConfigError(
                        f"rank {rank}: MASTER_PORT={os.environ['MASTER_PORT']} on {os.environ['MASTER_ADDR']} is "
                        "already in use (another job, or an earlier run still exiting): choose another port "
                        "(torchrun --master_port=PORT, or --rdzv_endpoint=HOST:PORT)"
                    ) from None
                raise ConfigError(
                    f"rank {rank} could not form the process group of {world_size} ranks (waited up to dist_timeout="
                    f"{cfg.dist_timeout}s): a rank failed before joining (its '[rank N] error' line says why, e.g. a "
                    "config file or checkpoint its node does not have), was never started, or the store's host "
                    f"(MASTER_ADDR, rank 0's node) went away; a smaller --dist_timeout fails faster "
                    f"({str(e).splitlines()[0][:120]})"
                ) from None
        else:  # one rank (_check_launch_env refused more without MASTER_ADDR)
            store = dist.HashStore()
            dist.init_process_group(group_backend, store=store, rank=0, world_size=1, timeout=timeout)
        owns = True
    return DistInfo(rank, local_rank, world_size, device, backend, mode, owns)


def shutdown(info: DistInfo) -> None:
    """Tear the process group down after a clean exit, waiting for every rank first: gloo aborts a
    process that destroys its group while a peer's last collective is still in flight."""
    if info.owns_group and dist.is_initialized():
        if info.world_size > 1:
            dist.barrier()
        dist.destroy_process_group()


def check_same_config(config: dict[str, Any], info: DistInfo) -> None:
    """Every rank must train the same resolved config: compare hashes across ranks at start."""
    if not info.distributed or info.world_size == 1:
        return
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).digest()
    mine = torch.tensor([int.from_bytes(digest[:7], "little")], dtype=torch.int64, device=_comm_device(info))
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    hashes = [int(t.item()) for t in gathered]
    if len(set(hashes)) > 1:  # every rank sees it: gather the configs (once, on this error path) to name keys
        differ = [r for r, h in enumerate(hashes) if h != hashes[0]]
        from gptlab.report_html import flatten

        configs: list[Any] = [None] * info.world_size
        dist.all_gather_object(configs, config)
        rank0, first = flatten(configs[0]), flatten(configs[differ[0]])
        keys = sorted(k for k in rank0.keys() | first.keys() if rank0.get(k, "(none)") != first.get(k, "(none)"))
        shown = "; ".join(f"{k}: {rank0.get(k, '(none)')!r} vs {first.get(k, '(none)')!r}" for k in keys[:4])
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        raise ConfigError(
            f"the ranks disagree on the config: rank(s) {differ} resolved a different config than rank 0 "
            f"(rank 0 vs rank {differ[0]}: {shown[:600]}{more}); same config file, overrides, dataset, checkpoint "
            "and code on every node?"
        )


def _comm_device(info: DistInfo) -> torch.device:
    return info.device if info.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean over ranks (SUM then divide: gloo has no AVG)."""
    if info.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / info.world_size
    return t


def all_gather_stacked(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``t`` stacked in rank order: (world_size, *t.shape)."""
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


SHARED_CHECK = ".gptlab-shared-check"


def check_shared_out_dir(out_dir: Path, info: DistInfo) -> None:
    """FSDP's sharded checkpoint is written by every rank into ``out_dir`` and finished by rank 0: every
    node must see the same directory. Rank 0 writes a random token there; the ranks compare what they
    read (an all-reduce of two integers), and all fail together, before training, if a node cannot."""
    if not info.distributed or info.world_size == 1:
        return
    marker = out_dir / SHARED_CHECK
    if info.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(int.from_bytes(os.urandom(6), "little")))
    barrier(info)
    try:
        token = int(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        token = -1
    seen = torch.tensor([token, -token], dtype=torch.int64, device=_comm_device(info))
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)  # [max token, -min token]: equal when every rank read one
    barrier(info)
    if info.rank == 0:
        marker.unlink(missing_ok=True)
    if int(seen[0]) != -int(seen[1]) or int(seen[0]) < 0:
        raise ConfigError(
            f"use_fsdp=True writes every rank's shards into out_dir={str(out_dir)!r}, but not every node sees the "
            "directory rank 0 sees (a node-local disk?): give a directory on a filesystem all nodes share "
            "(docs/parallel.md)"
        )


def all_reduce_max(values: list[float], info: DistInfo) -> list[float]:
    if info.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.distributed and info.world_size > 1:
        dist.barrier()


# ---------------------------------------------------------------------------- wrapping the model
def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (non-reentrant checkpoint, inside each block's call:
    ``ConfigurableGPT.gradient_checkpointing_enable``); parameter names stay unchanged."""
    model.gradient_checkpointing_enable()  # type: ignore[operator]


def check_reduce_scatter_averages(info: DistInfo) -> None:
    """FSDP2 reduce-scatters the gradients with ReduceOp.AVG; gloo in some PyTorch releases (2.7 among them,
    not 2.11) accepts AVG there and sums (pytorch#162338): every gradient world_size times too large, the
    logged norms, the clipping threshold and AdamW's moments with them, silently. Asked once, of the
    collective itself (every rank calls: all get the same answer)."""
    if info.world_size < 2 or info.backend != "gloo":
        return
    import torch.distributed as dist

    out = torch.zeros(1, device=info.device)
    # the collective FSDP2 calls: reduce_scatter_single where it exists (reduce_scatter_tensor warns there)
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    try:
        reduce_scatter(out, torch.ones(info.world_size, device=info.device), op=dist.ReduceOp.AVG)
    except (RuntimeError, ValueError):  # AVG refused here: FSDP2 reduces otherwise
        return
    if abs(float(out.item()) - 1.0) > 1e-6:
        raise ConfigError(
            f"FSDP on the gloo backend with PyTorch {torch.__version__} would train with gradients "
            f"{float(out.item()):g} times too large (gloo's reduce-scatter sums where FSDP2 asks for the average, "
            "pytorch#162338): use PyTorch 2.11 or newer, or parallel='ddp' or 'zero1'"
        )


def sums_gradients(info: DistInfo, dtype: str) -> bool:
    """float16 on several ranks: each rank divides its loss by all the job's micro-steps and the ranks' gradients
    are summed, not averaged. The gradients are the same either way; the values the backward runs on are not:
    averaging needs each rank's loss divided by its own micro-steps only, N times the single process's values,
    and float16 overflows (the loss scaler skips the step) at a scale where one process does not. Summed, every
    rank's backward runs on exactly the single process's values: the same skips, the same scale, on any N."""
    if dtype != "float16" or info.world_size < 2:
        return False
    if info.mode == "fsdp":  # FSDP2 reduce-scatters by a plain SUM from PyTorch 2.9 (averages before)
        from torch.distributed.fsdp import FSDPModule

        return hasattr(FSDPModule, "set_force_sum_reduction_for_comms")
    return info.mode in ("ddp", "zero1")


def _all_reduce_sum_hook(group, bucket):  # unannotated: DDP refuses a bucket annotated as anything but GradBucket
    """DDP communication hook: the bucket's SUM over ranks (DDP's own hook divides by the world size)."""
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _sum_fsdp_gradients(model: nn.Module) -> None:
    """Every FSDP2 unit reduce-scatters by a plain SUM: a divide factor of 1, sent as SUM rather than NCCL's
    PREMUL_SUM (which gloo lacks)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def parallelize(model: nn.Module, cfg: TrainConfig, info: DistInfo, dtype: str) -> nn.Module:
    """Activation checkpointing, compile, then FSDP2 or DDP, in that order. Returns the module to
    call in the loop; for none and fsdp it is ``model`` itself (FSDP2 and compile work in place)."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if info.mode == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        scalar = next((name for name, p in model.named_parameters() if p.dim() == 0), None)
        if scalar is not None:  # FSDP2 shards on dim 0; its own error is a ValueError deep in a traceback
            raise ConfigError(
                f"use_fsdp=True cannot shard the 0-dim parameter {scalar!r} (FSDP2 shards on dim 0): give it "
                "shape (1,) in its component, or train with DDP or ZeRO-1"
            )

        summed = sums_gradients(info, dtype)
        if not summed:  # a sum needs no AVG from the backend
            check_reduce_scatter_averages(info)
        low = None if dtype == "float32" else PT_DTYPES[dtype]
        # parameters gathered in the compute dtype; gradients reduced in float32, as the fp32 master weights
        mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
        from torch.distributed.device_mesh import init_device_mesh

        # the run's device, not the default accelerator: --device=cpu on a GPU machine shards on the CPU
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        kwargs: dict[str, Any] = {"mp_policy": mp, "mesh": mesh}
        if cfg.fsdp_cpu_offload:
            if info.device.type != "cuda":
                raise ConfigError("fsdp_cpu_offload=True offloads from a GPU: on device='cpu' all is in CPU memory")
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for block in model.blocks:  # type: ignore[attr-defined]
            if cfg.compile:
                block.compile(mode=cfg.compile_mode)  # per block, in place (torchtitan's order: compile, then shard)
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        if summed:
            _sum_fsdp_gradients(model)
        return model
    if cfg.compile and cfg.compile_scope == "blocks":
        for block in model.blocks:  # type: ignore[attr-defined]
            block.compile(mode=cfg.compile_mode)  # one compile serves every identical block
    elif cfg.compile:
        model.compile(mode=cfg.compile_mode)  # in place: state-dict keys keep their names
    if info.mode in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        # non-persistent buffers (RoPE tables, ALiBi slopes) are functions of the config, equal on every
        # rank: no broadcast before each forward. A registered component with state of its own keeps it.
        sync = _has_persistent_buffers(model)
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.13
        ddp = DistributedDataParallel(
            model, device_ids=ids, **{"forward_sync_buffers" if newer else "broadcast_buffers": sync}
        )
        if sums_gradients(info, dtype):
            ddp.register_comm_hook(state=None, hook=_all_reduce_sum_hook)
        return ddp
    return model


def torch_release() -> tuple[int, int]:
    """(major, minor) of the running PyTorch: a 2.8 nightly or source build ('2.8.0a0+git...') is 2.8."""
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


def build_grad_scaler(info: DistInfo, enabled: bool) -> torch.amp.GradScaler:
    """float16's loss scaling. Under FSDP the sharded one: each rank checks only its gradient shards
    for inf/NaN, so the verdict is all-reduced and every rank steps (or skips) alike."""
    if enabled and info.device.type == "mps" and torch_release() < (2, 8):
        raise ConfigError(  # its unscale_ casts to float64, which MPS lacks (pytorch#142397; fixed for 2.8)
            f"dtype='float16' training on MPS needs PyTorch 2.8 or newer (this is {torch.__version__}): "
            "use --dtype=bfloat16 or float32"
        )
    if info.mode != "fsdp":
        return torch.amp.GradScaler(info.device.type, enabled=enabled)
    import warnings

    from torch.amp.grad_scaler import OptState
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    class FSDPGradScaler(ShardedGradScaler):
        """``ShardedGradScaler`` made to fit FSDP2 and fused AdamW: ``step`` always goes through the
        all-reducing ``unscale_`` (GradScaler's fused path would check each rank's shards alone), whose
        summed inf flags become 0/1 scalars as fused optimizers expect, minus the warning that the (1,)-shaped flag
        meeting DTensor gradients raises on every step."""

        def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
            if not self.is_enabled():
                return
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1")
                super().unscale_(optimizer)
            state = self._per_optimizer_states[id(optimizer)]
            # the all-reduce SUMs the ranks' flags; fused optimizers skip only on exactly 1.0
            flags = state["found_inf_per_device"]
            state["found_inf_per_device"] = {d: (t > 0).to(t.dtype).reshape(()) for d, t in flags.items()}

        def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if self.is_enabled() and self._per_optimizer_states[id(optimizer)]["stage"] is OptState.READY:
                self.unscale_(optimizer)
            return super().step(optimizer, *args, **kwargs)

    return FSDPGradScaler(info.device.type, enabled=enabled)


def init_on_rank0(cfg: TrainConfig, info: DistInfo) -> bool:
    """FSDP over several ranks builds the weights on rank 0 only; the other ranks build the structure on
    the meta device (no memory) and receive their shards from rank 0 (``materialize_from_rank0``). Not
    with CPU offload, whose shards must be materialised on the CPU by ``fully_shard`` itself."""
    return info.mode == "fsdp" and info.world_size > 1 and not cfg.fsdp_cpu_offload


def materialize_from_rank0(model: nn.Module, full_state: dict[str, torch.Tensor] | None, info: DistInfo) -> None:
    """After ``fully_shard``: give the meta ranks storage, then scatter rank 0's full state dict (every rank
    keeps its shard) and broadcast the buffers (RoPE tables, ALiBi slopes), so every rank holds exactly
    what one process seeded alike would. Host memory: one full copy, on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not info.master:
        model.to_empty(device=info.device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full_state if info.master else {}, options=options)  # type: ignore[arg-type]
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def build_optimizer(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> torch.optim.Optimizer:
    """configure_optimizers' AdamW (decay / no-decay groups); under zero1 the same groups in a
    ``ZeroRedundancyOptimizer`` that keeps each rank's share of the AdamW states."""
    betas = (cfg.beta1, cfg.beta2)
    plain = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, info.device.type)  # type: ignore[operator]
    if info.mode != "zero1":
        return plain
    from torch.distributed.optim import ZeroRedundancyOptimizer

    class FusedScalingZero(ZeroRedundancyOptimizer):
        """GradScaler's contract for fused optimizers (the scale and the inf flag handed to the fused
        AdamW kernel, which unscales and skips on device); without it, fp16's GradScaler reads
        ``found_inf`` back to the host every step."""

        _step_supports_amp_scaling = True

        def step(self, closure: Any = None, **kwargs: Any) -> Any:
            for name in ("grad_scale", "found_inf"):
                setattr(self.optim, name, getattr(self, name, None))
            try:
                return super().step(closure, **kwargs)
            finally:
                for name in ("grad_scale", "found_inf"):
                    self.optim.__dict__.pop(name, None)

    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in plain.param_groups]
    fused = bool(plain.defaults.get("fused"))
    zero = FusedScalingZero if fused else ZeroRedundancyOptimizer
    extra = {"fused": True} if fused else {}
    return zero(groups, optimizer_class=torch.optim.AdamW, lr=cfg.learning_rate, betas=betas, **extra)


def _has_persistent_buffers(model: nn.Module) -> bool:
    """Whether any buffer is saved in the state dict (model state that training may change, e.g. running
    statistics), as opposed to tables rebuilt from the config."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return any(name not in parameters for name in model.state_dict())


def no_grad_sync(model: nn.Module, info: DistInfo, sync: bool) -> Any:
    """Context for one micro-step: skip the gradient all-reduce / reduce-scatter unless ``sync``
    (the last micro-step of an accumulation)."""
    import contextlib

    if info.mode == "fsdp":
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        return contextlib.nullcontext()
    if info.mode in ("ddp", "zero1") and not sync:
        return model.no_sync()  # type: ignore[operator]
    return contextlib.nullcontext()


def local_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the tensors this rank really holds (a DTensor's local shard, padding included)."""
    total = {}
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        total[storage.data_ptr()] = storage.nbytes()
    return sum(total.values())
