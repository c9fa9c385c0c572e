"""Batches: ``collate`` and ``build_dataloader``.

The sampler is always a :class:`~torch.utils.data.DistributedSampler` (one replica in a single
process): its order depends only on ``(seed, epoch)``, so shuffling is reproducible and a resumed run
sees the same order. It is wrapped by :class:`EpochSampler`, which sends ``(index, epoch, mosaic,
mixup)`` to the dataset, read from the dataset object *in the main process* when an epoch's
iteration starts: persistent workers hold stale copies of the dataset, so this is how
``ds.set_epoch(e)`` and ``ds.mosaic = False`` reach them.
"""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler


def collate(batch):
    """[(img (3,S,S) uint8, labels (n,5), meta), ...] -> (imgs (B,3,S,S), targets (M,6) [b, cls, xyxy], metas)."""
    imgs, labels, metas = zip(*batch)
    targets = [torch.cat([torch.full((len(l), 1), float(b)), l.float().reshape(-1, 5)], 1)
               for b, l in enumerate(labels)]
    return torch.stack(imgs, 0), torch.cat(targets, 0) if targets else torch.zeros((0, 6)), list(metas)


class EpochSampler(Sampler):
    """Wraps an index sampler; yields ``(index, epoch, mosaic, mixup)`` from the dataset's current state."""

    def __init__(self, sampler, dataset):
        self.sampler, self.dataset = sampler, dataset

    def set_epoch(self, epoch: int) -> None:
        """Sets the shuffle epoch of the inner sampler and the dataset's augmentation epoch."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        ds = self.dataset
        state = (int(getattr(ds, "epoch", 0)), bool(getattr(ds, "mosaic", False)),
                 bool(getattr(ds, "mixup_enabled", False)))
        for i in self.sampler:
            yield (int(i), *state)

    def __len__(self) -> int:
        return len(self.sampler)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32  # base seed (from the loader's seeded generator) + worker id
    np.random.seed(s)
    random.seed(s)
    try:
        import cv2
        cv2.setNumThreads(0)  # workers are the parallelism; avoid oversubscription
    except ImportError:
        pass


def build_dataloader(dataset, batch_size: int, workers: int = 8, shuffle: bool = True, seed: int = 0,
                     rank: int = 0, world_size: int = 1, drop_last: bool = False) -> DataLoader:
    """A DataLoader with reproducible order, DDP sharding when ``world_size > 1``, persistent workers.

    ``workers`` is clipped to the CPUs available per process and to ``batch_size``.
    ``loader.sampler.set_epoch(e)`` sets the shuffle epoch (and the dataset's epoch).
    """
    ncpu = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    nw = max(0, min(int(workers), ncpu // max(world_size, 1), batch_size if batch_size > 1 else 0))
    inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                               drop_last=drop_last)
    g = torch.Generator()
    g.manual_seed(seed + rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(inner, dataset), num_workers=nw,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=nw > 0, worker_init_fn=_worker_init, generator=g,
                      multiprocessing_context=_worker_context(nw))


def _worker_context(nw: int):
    """``forkserver`` once OpenVINO or ONNX Runtime is loaded in this process, else the default (fork).

    Their thread pools (TBB / OpenMP) keep running threads; a ``fork`` copies their locked mutexes into
    the child, where nothing will ever unlock them (a hang or a crash in the worker). Validating an
    exported model with loader workers (``yoloforge val --weights m.onnx``, ``benchmark --data``) is
    exactly that case. forkserver starts workers from a clean single-threaded server instead."""
    if nw > 0 and any(m in sys.modules for m in ("openvino", "onnxruntime")):
        import multiprocessing as mp

        if "forkserver" in mp.get_all_start_methods():
            return mp.get_context("forkserver")
    return None
