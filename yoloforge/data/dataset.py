"""DetectionDataset: images + validated labels -> fixed-size training/validation samples.

``ds[i] -> (img uint8 tensor (3, S, S) RGB -- (3, h, w) in rectangular validation batches --, labels float32
tensor (n, 5) [cls, x1, y1, x2, y2] pixels, meta dict(path, orig_shape=(h0, w0), ratio_pad=((rx, ry), (px, py)),
image_id))``. ``image_id`` and ``category_ids`` are what a COCO results json calls the image and the classes.

Training samples (``augment=True``) are built by :class:`yoloforge.data.augment.Augmenter` (mosaic or
letterbox + affine, then mixup, HSV, flips) with a generator seeded from ``(seed, epoch, index)``, so
a sample depends on nothing else: the same batches come back with any number of workers, after a
resume, and in every DDP process. The loader's sampler passes the epoch and the mosaic/mixup switches
along with each index (see :mod:`yoloforge.data.loader`), so changes the trainer makes in the main
process (``set_epoch``, ``ds.mosaic = False``) reach persistent workers too.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import Augmenter, DEFAULT_HYP, clip_and_filter, letterbox, scale_labels
from .formats import DataError, scan_dataset
from yoloforge.utils.metrics import category_ids_for


def _mem_available() -> int | None:
    """Bytes of available RAM (Linux /proc/meminfo), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class DetectionDataset(Dataset):
    """A detection dataset over any :func:`yoloforge.data.formats.list_images` source.

    Args:
        source: a source (dir, ``.txt`` list, glob, COCO ``.json``), a list of sources or of image paths.
        names: class names (their count is the nc labels are checked against).
        imgsz: output side S. Images are resized so their long side is S before mosaic/letterbox.
        augment: training mode (mosaic, affine, mixup, HSV, flips per ``hyp``); else letterbox only.
        hyp: augmentation hyper-parameters; missing keys take ``augment.DEFAULT_HYP``.
        cache: ``True`` caches the label scan on disk, ``False`` rescans, ``"ram"`` also keeps the
            resized images in memory (a memory estimate is printed; refused if it does not fit).
        stride: the model's largest stride: rectangular batch shapes are multiples of it.
        rect_batch: validation only (``augment=False``): group images of like aspect ratio into batches of
            this size and letterbox each batch to its own rectangle instead of the S×S square, as the
            official YOLOv6/v7/ScaledYOLOv4 test scripts do (they report COCO AP this way). The images are
            reordered by aspect ratio (h/w); ``batch_shapes[k]`` is batch k's (h, w). 0 (default): square.
        pad: rectangular batches only: the margin added to each side of the rectangle, in strides
            (``ceil(side * S / stride + pad) * stride``; 0.5 as in those scripts).
        seed: base seed of the per-item generators.
        cache_dir: where the label-scan cache goes (default: beside the labels, else ``~/.cache``).
        verbose: print the scan summary.
    """

    def __init__(self, source, names, imgsz: int = 640, augment: bool = False, hyp: dict | None = None,
                 cache=True, stride: int = 32, seed: int = 0, cache_dir=None, verbose: bool = True,
                 rect_batch: int = 0, pad: float = 0.5):
        self.names = list(names)
        self.nc = len(self.names)
        if self.nc == 0:
            raise DataError(f"{source}: no class names given")
        self.imgsz, self.stride, self.seed, self.augment = int(imgsz), int(stride), int(seed), bool(augment)
        scan = scan_dataset(source, self.nc, cache=cache is not False, cache_dir=cache_dir, verbose=verbose,
                            names=self.names)
        self.img_files = [str(p) for p in scan.img_files]
        self.labels = scan.labels
        self.shapes = scan.shapes
        self.report = scan.report
        # what a COCO results json names each image and class (the source json's ids where there is one)
        self.image_ids = np.asarray(scan.image_ids, np.int64)
        self.ignore = scan.ignore  # per image: regions validation ignores (COCO iscrowd, VOC difficult), original pixels
        self.category_ids = list(scan.category_ids) if scan.category_ids is not None else category_ids_for(self.names)
        self.hyp = {**DEFAULT_HYP, **(hyp or {})}
        self.aug = Augmenter(self.hyp, self.imgsz) if self.augment else None
        self.mosaic = self.augment and self.hyp["mosaic"] > 0
        self.mixup_enabled = self.augment and (self.hyp["mixup"] > 0 or self.hyp.get("cutmix", 0) > 0)
        self.epoch = 0
        self._ram = None
        self.rect_batch = 0
        self.batch_shapes = None
        if rect_batch and not self.augment:
            self.make_rect(int(rect_batch), pad)
        if cache == "ram":
            self.cache_ram(verbose)

    def __len__(self) -> int:
        return len(self.img_files)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the per-item generators are seeded with."""
        self.epoch = int(epoch)

    def make_rect(self, batch: int, pad: float = 0.5) -> None:
        """Reorder by aspect ratio and give each run of ``batch`` images one rectangle (see ``rect_batch``).

        A batch of landscape images (h/w < 1 for all) gets height ``S * max(h/w)`` and width S, a batch of
        portrait images width ``S / min(h/w)`` and height S, a mixed batch the square; each side then
        becomes ``ceil(side / stride + pad) * stride``. Images keep their scale (long side S, never
        enlarged) and are centred in their batch's rectangle."""
        if batch < 1:
            raise ValueError(f"rect_batch must be >= 1, got {batch}")
        hw = np.asarray(self.shapes, np.float64).reshape(-1, 2)
        ratio = hw[:, 0] / np.maximum(hw[:, 1], 1)  # h/w
        order = np.argsort(ratio, kind="stable")
        self.img_files = [self.img_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = np.asarray(self.shapes)[order]
        self.image_ids = self.image_ids[order]
        self.ignore = [self.ignore[i] for i in order]
        ar = ratio[order]
        nb = (len(ar) + batch - 1) // batch
        rel = np.ones((nb, 2))
        for k in range(nb):
            lo, hi = ar[k * batch:(k + 1) * batch].min(), ar[k * batch:(k + 1) * batch].max()
            if hi < 1:
                rel[k] = hi, 1.0
            elif lo > 1:
                rel[k] = 1.0, 1.0 / lo
        self.batch_shapes = (np.ceil(rel * self.imgsz / self.stride + pad) * self.stride).astype(int)
        self.rect_batch = batch

    # ------------------------------------------------------------------------------------------ loading
    def _resized_hw(self, i):
        h0, w0 = (int(v) for v in self.shapes[i])
        r = self.imgsz / max(h0, w0)
        return max(1, int(round(h0 * r))), max(1, int(round(w0 * r)))

    def _read(self, i) -> np.ndarray:
        path = self.img_files[i]
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{path}: image could not be read (was it changed or deleted after the scan?)")
        h, w = self._resized_hw(i)
        if img.shape[:2] != (h, w):
            up = h > img.shape[0]
            interp = cv2.INTER_LINEAR if (self.augment or up) else cv2.INTER_AREA
            img = cv2.resize(img, (w, h), interpolation=interp)
        return img

    def cache_ram(self, verbose: bool = True) -> bool:
        """Keep all resized images in memory; prints the estimate; skipped if RAM would not suffice."""
        hw = np.array([self._resized_hw(i) for i in range(len(self))], np.int64).reshape(-1, 2)
        need = int((hw[:, 0] * hw[:, 1] * 3).sum())
        avail = _mem_available()
        msg = f"RAM cache: {len(self)} images at imgsz {self.imgsz} need {need / 2**30:.2f} GiB"
        if avail is not None:
            msg += f" ({avail / 2**30:.1f} GiB available)"
            if need > 0.7 * avail:
                print(msg + " -- not caching (would use >70% of free memory); use cache=True instead")
                return False
        if verbose:
            print(msg + "; shared copy-on-write with forked workers")
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
            self._ram = list(ex.map(self._read, range(len(self))))
        return True

    def load_image(self, i):
        """(image resized to long side S, its labels in those pixels, (rx, ry) from original pixels)."""
        img = self._ram[i] if self._ram is not None else self._read(i)
        h0, w0 = (int(v) for v in self.shapes[i])
        ratio = (img.shape[1] / w0, img.shape[0] / h0)
        return img, scale_labels(self.labels[i], ratio, (0.0, 0.0)), ratio

    def _load_pair(self, i):
        img, lab, _ = self.load_image(int(i))
        return img, lab

    # ------------------------------------------------------------------------------------------- sample
    def __getitem__(self, item):
        """``item`` is an index, or ``(index, epoch, mosaic, mixup)`` as the loader's sampler sends it."""
        if isinstance(item, (tuple, list)):
            i, epoch, mosaic, mix = int(item[0]), int(item[1]), bool(item[2]), bool(item[3])
        else:
            i, epoch, mosaic, mix = int(item), self.epoch, self.mosaic, self.mixup_enabled
        if i < 0:
            i += len(self)
        h0, w0 = (int(v) for v in self.shapes[i])
        if self.augment:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, i])
            img, labels = self.aug(self._load_pair, i, len(self), rng, mosaic=mosaic, mixup=mix, cutmix=mix)
            r = self.imgsz / max(h0, w0)
            ratio_pad = ((r, r), (0.0, 0.0))  # nominal: augmented samples have no exact inverse
        else:
            img, lab, r0 = self.load_image(i)
            shape = self.imgsz if self.batch_shapes is None else tuple(int(v) for v in self.batch_shapes[i // self.rect_batch])
            img, r1, pad = letterbox(img, shape, scaleup=False)
            labels = clip_and_filter(scale_labels(lab, r1, pad), img.shape[:2])
            ratio_pad = ((r0[0] * r1[0], r0[1] * r1[1]), pad)
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        meta = dict(path=self.img_files[i], orig_shape=(h0, w0), ratio_pad=ratio_pad, image_id=int(self.image_ids[i]))
        if not self.augment and len(self.ignore[i]):
            meta["ignore"] = self.ignore[i]
        return torch.from_numpy(img), torch.from_numpy(np.ascontiguousarray(labels, np.float32)), meta
