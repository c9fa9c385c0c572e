"""Batches: ``collate`` and ``build_dataloader``.

The sampler is always a :class:`~torch.utils.data.DistributedSampler` (one replica in a single
process): its order depends only on ``(seed, epoch)``, so shuffling is reproducible and a resumed run
sees the same order. It is wrapped by :class:`EpochSampler`, which sends ``(index, epoch, mosaic,
mixup)`` to the dataset, read from the dataset object *in the main process* when an epoch's
iteration starts: persistent workers hold stale copies of the dataset, so this is how
``ds.set_epoch(e)`` and ``ds.mosaic = False`` reach them.
"""
from __future__ import annotations

import random
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from yoloforge.utils import cpu
from yoloforge.utils.dist import local_world_size


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


AUTO_WORKERS = {"cpu": 2, "cuda": 8}  # loader processes of ``workers=-1``, before the free-core clip


def auto_workers(device_type: str, free_cores: int, world_size: int = 1) -> int:
    """Loader processes for ``--workers -1``: on CPU 2 (the loader shares the cores with torch's threads; data
    wait stays at 0-1 % of a yolov6n step, benchmarks/vs_ultralytics.py), on a GPU up to 8; never more than the
    cores other processes leave free, shared by the DDP processes of this machine (one core stays with each
    process's main thread on a GPU, which feeds it)."""
    per_process = max(int(free_cores) // max(int(world_size), 1), 1)
    if device_type == "cuda":
        per_process -= 1
    return max(1, min(AUTO_WORKERS.get(device_type, 2), per_process))


def build_dataloader(dataset, batch_size: int, workers: int = 8, shuffle: bool = True, seed: int = 0,
                     rank: int = 0, world_size: int = 1, drop_last: bool = False, threads: bool | None = None):
    """A DataLoader with reproducible order, DDP sharding when ``world_size > 1``, persistent workers.

    ``workers`` is clipped to the CPUs available per process of this machine and to ``batch_size``; pass
    :func:`auto_workers`'s count for an automatic one.
    ``loader.sampler.set_epoch(e)`` sets the shuffle epoch (and the dataset's epoch).
    ``threads``: load in ``workers`` threads of this process instead of worker processes (see
    :class:`ThreadLoader`); ``None`` (default) picks threads once OpenVINO or ONNX Runtime is loaded here.
    """
    ncpu = cpu.available_cores()
    per_process = ncpu // max(local_world_size(world_size), 1)
    nw = max(0, min(int(workers), per_process, batch_size if batch_size > 1 else 0))
    inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                               drop_last=drop_last)
    sampler = EpochSampler(inner, dataset)
    if threads is None:
        threads = any(m in sys.modules for m in ("openvino", "onnxruntime"))
    if threads:
        return ThreadLoader(dataset, batch_size, sampler, nw, drop_last)
    g = torch.Generator()
    g.manual_seed(seed + rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=nw,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=nw > 0, worker_init_fn=_worker_init, generator=g)


class ThreadLoader:
    """Batches like the DataLoader above (same sampler, same collate), loaded by threads of this process.

    Why: OpenVINO and ONNX Runtime keep thread pools running; ``fork`` copies their locked mutexes into
    a worker where nothing unlocks them (a hang or a crash), and ``spawn``/``forkserver`` re-run the
    user's script unless it has an ``if __name__ == "__main__"`` guard. Validation samples are a read
    and a letterbox, done in OpenCV and numpy with the GIL released, so threads load them as fast.
    Up to ``2 * workers`` batches are read ahead, in order."""

    def __init__(self, dataset, batch_size: int, sampler, workers: int = 2, drop_last: bool = False):
        self.dataset, self.batch_size, self.sampler = dataset, int(batch_size), sampler
        self.num_workers, self.drop_last = max(int(workers), 0), drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self):
        batch = []
        for item in self.sampler:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def _load(self, items):
        return collate([self.dataset[it] for it in items])

    def __iter__(self):
        if self.num_workers == 0:
            yield from map(self._load, self._batches())
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="yoloforge-load") as ex:
            ahead = deque()
            for b in self._batches():  # keep 2 * workers batches in flight, hand them out in order
                ahead.append(ex.submit(self._load, b))
                if len(ahead) >= 2 * self.num_workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
