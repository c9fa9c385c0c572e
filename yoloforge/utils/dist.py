"""Small helpers around torch.distributed that are no-ops in a single process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_world_size(default: int = 1) -> int:
    """The processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE), else ``default``."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", default))


def is_main() -> bool:
    return rank() == 0


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over all ranks; the tensor itself in one process.

    Losses normalize by this so that DDP's gradient averaging gives exactly the gradient of the
    loss over the global batch.
    """
    if not is_dist():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def barrier() -> None:
    if is_dist():
        dist.barrier()
