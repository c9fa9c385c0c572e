"""torch DDP set-up for ``torchrun --nproc_per_node N -m yoloforge train ...``.

gloo on CPU, NCCL on CUDA. Every collective here is entered by all ranks, and every decision that
changes control flow (early stop) is broadcast from rank 0, so ranks never wait on each other forever.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from yoloforge.utils.dist import barrier, is_dist, rank, world_size  # noqa: F401  (re-exported)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def setup(device: str = "") -> torch.device:
    """Pick the device and, under torchrun, join the process group. Returns this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device in ("", None):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device.isdigit():
        device = f"cuda:{device}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if env_world_size() > 1:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if env_world_size() > 1 and not is_dist():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return dev


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (identity in one process)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
