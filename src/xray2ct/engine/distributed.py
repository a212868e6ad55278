"""torchrun / DistributedDataParallel plumbing: one process per device, rank 0 writes.

Launch on one machine:   torchrun --nproc_per_node=N -m xray2ct.cli train ...
Several machines:        torchrun --nnodes=M --node_rank=R --master_addr=HOST --master_port=29500 \
                             --nproc_per_node=N -m xray2ct.cli train ...
gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU when there is one, else CPU; 'cuda' without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", local_rank if device == "cuda" else int(device.split(":")[1]))
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set), else single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (identity in a single process)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank says True (e.g. a stop signal seen by one process)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
