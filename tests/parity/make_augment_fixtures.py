"""Make tests/fixtures/parity/mosaic9.npz by running the OFFICIAL yolov7 ``load_mosaic9``.

    PYTHONPATH=. python tests/parity/make_augment_fixtures.py --repo path/to/WongKinYiu/yolov7

in a venv with the official requirements (torch 2.14.1 + torchvision 0.29.1 here). The official function runs
unmodified on a stand-in dataset object (cached images, so its ``load_image`` returns them as they are) with
two run-time hooks: ``random_perspective`` returns its input (the 2S x 2S window is compared; the affine crop
after it is yoloforge's ``random_affine``, the one the 4-image mosaic uses too), and ``random.choices`` /
``random.uniform`` give the eight extra indices and the window offsets chosen here. The offsets are the first
two draws of ``numpy.random.default_rng(seed).uniform(0, S, 2)`` (y, then x), which is what yoloforge's
``mosaic9`` draws with that generator, so the test runs it with the same seed.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "mosaic9.npz"
S = 64
# (height, width) of the 12 stand-in images, long side S as the loaders resize them
SHAPES = [(64, 48), (40, 64), (64, 64), (64, 30), (22, 64), (64, 56), (50, 64), (64, 64), (64, 17), (33, 64),
          (64, 41), (58, 64)]
CASES = [  # (centre image, the eight others, seed of the window offsets)
    (0, [1, 2, 3, 4, 5, 6, 7, 8], 0),
    (3, [11, 10, 9, 8, 7, 6, 5, 4], 1),
    (8, [4, 4, 1, 0, 2, 9, 11, 3], 2),
    (10, [2, 5, 7, 0, 1, 6, 3, 9], 7),
]


def stand_ins():
    g = np.random.default_rng(123)
    imgs, boxes = [], []
    for i, (h, w) in enumerate(SHAPES):  # a gradient of its own per image: any misplaced pixel shows, and it packs small
        y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
        imgs.append(((i * 29 + 3 * x + 5 * y + 7 * c) % 256).astype(np.uint8))
        n = int(g.integers(1, 5))
        x1, y1 = g.uniform(0, w - 4, n), g.uniform(0, h - 4, n)
        x2, y2 = x1 + g.uniform(2, w - x1), y1 + g.uniform(2, h - y1)
        boxes.append(np.stack([g.integers(0, 3, n).astype(np.float32), x1, y1, x2, y2], 1).astype(np.float32))
    return imgs, boxes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(a.repo.resolve()))
    import utils.datasets as D

    D.random_perspective = lambda img, targets=(), segments=(), **kw: (img, targets)
    imgs, boxes = stand_ins()

    class Stand:
        img_size = S
        mosaic_border = [-S // 2, -S // 2]
        indices = range(len(imgs))
        hyp = dict(copy_paste=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0)

    ds = Stand()
    ds.imgs = imgs
    ds.img_hw0 = ds.img_hw = [im.shape[:2] for im in imgs]
    ds.labels = []
    for im, b in zip(imgs, boxes):  # normalized class, cx, cy, w, h as the official label files hold them
        h, w = im.shape[:2]
        ds.labels.append(np.stack([b[:, 0], (b[:, 1] + b[:, 3]) / 2 / w, (b[:, 2] + b[:, 4]) / 2 / h,
                                   (b[:, 3] - b[:, 1]) / w, (b[:, 4] - b[:, 2]) / h], 1))
    ds.segments = [[] for _ in imgs]
    out = {f"img{i}": im for i, im in enumerate(imgs)}
    out.update({f"boxes{i}": b for i, b in enumerate(boxes)})
    for k, (centre, others, seed) in enumerate(CASES):
        offsets = iter(np.random.default_rng(seed).uniform(0, S, 2).tolist())
        random.choices = lambda population, k=1, _o=others: list(_o)
        random.uniform = lambda lo, hi, _it=offsets: next(_it)
        canvas, labels = D.load_mosaic9(ds, centre)
        out[f"case{k}"] = np.array([centre, *others, seed])
        out[f"canvas{k}"] = canvas
        out[f"labels{k}"] = labels.astype(np.float32)
        print(f"case {k}: window {canvas.shape}, {len(labels)} labels")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
