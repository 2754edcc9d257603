"""Multi-process data-parallel training through PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc-per-node N -m visionattn train ...`` starts N processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; :func:`setup` reads them and joins the process group over ``gloo`` on
CPU or ``nccl`` on GPUs. Without those variables everything here is a no-op for one process, so the trainer has
one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "setup", "teardown", "all_reduce_sum", "all_reduce_max", "broadcast_object",
           "broadcast_buffers", "barrier", "check_replicas_in_sync", "resolve_device", "check_device_available"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU; otherwise ``device`` as given."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def check_device_available(device: str, argument: str = "--device") -> None:
    """Raise :class:`~visionattn.errors.UsageError` when ``device`` (already well-formed) is not on this machine.

    ``cuda`` means this process's GPU (``LOCAL_RANK`` under torchrun), so it needs that many GPUs too.
    """
    from visionattn.errors import UsageError

    if device in ("auto", "cpu"):
        return
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{argument}: got 'mps', but Apple's Metal backend is not available here; use "
                             "--device cpu (or auto)")
        return
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
        raise UsageError(f"{argument}: got {device!r}, but CUDA is not available on this machine ({build}); use "
                         "--device cpu, or auto to take a GPU only when there is one")
    index = resolve_device(device, _local_rank()).index or 0
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"{argument}: got {device!r} (GPU {index}), but this machine has {count} GPU(s): "
                         f"cuda:0..cuda:{count - 1}")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_reduce(values: list[float], device: torch.device, op: Any) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (float64, so counts stay exact)."""
    return _all_reduce(values, device, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The element-wise maximum of a few numbers over all processes."""
    return _all_reduce(values, device, dist.ReduceOp.MAX)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (e.g. the run directory name, which holds a timestamp)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them before each forward, but each forward then updates them from the process's own
    half batch, so after the last step they differ; this makes evaluation and checkpoints consistent.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def check_replicas_in_sync(model: nn.Module, device: torch.device, rtol: float = 0.0) -> None:
    """Raise when parameters or buffers differ between processes (they must stay identical under DDP).

    Compares, for every tensor, its sum and sum of squares against rank 0's; ``rtol`` allows for nothing by
    default because DDP gives every replica the same averaged gradient.
    """
    if not dist.is_initialized():
        return
    stats = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()])
                         for t in model.state_dict().values() if t.is_floating_point()]).to(device)
    reference = stats.clone()
    dist.broadcast(reference, src=0)
    if not torch.allclose(stats, reference, rtol=rtol, atol=0.0):
        names = [k for k, t in model.state_dict().items() if t.is_floating_point()]
        bad = [names[i] for i in (stats != reference).any(dim=1).nonzero().flatten().tolist()]
        raise RuntimeError(f"rank {dist.get_rank()}: weights differ from rank 0 in {bad[:5]}")
