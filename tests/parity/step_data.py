"""The tiny dataset and the initial weights of the one-optimizer-step parity test (tests/test_parity_step.py).

Both sides (the official training script, run by tests/parity/make_step_fixtures.py, and yoloforge's
trainer in the test) rebuild them from here, so the fixture holds only the official results:

* 15 lossless PNG images of 128 x 128, noise-textured (no flat areas: tied values in a max-pool window would
  route its gradient in an implementation-defined way), with 2-4 filled shapes of 4 classes (boxes at least 6 pixels, so no
  augmentation filter drops one) and YOLO txt labels, ``data.yaml`` with train = val;
* the initial weights: yoloforge's ``build_model(name, nc=4)`` under ``torch.manual_seed(0)`` (the same
  numbers under torch 2.13 and 2.14), every floating tensor rounded through fp16 (so yolov7's
  ``model.half().float()`` leaves it unchanged); YOLOv6's box-regression biases at 2 (each anchor point
  starts with a box of 2 strides a side, so that TAL finds predictions overlapping the objects: with none
  the official loss divides 0 by 0), the right and bottom ones 2^-6 more (each box's centre 2^-7 stride off its
  anchor point: 1/16, 1/8, 1/4 pixel, never on a gt centre, which are multiples of 1/2 pixel here; on one the
  official SIoU angle cost is 0/0).

Both sides run in float64 (:func:`float64`): in float32 the two implementations of the same network
give gradients up to ~3e-3 apart on some tensors (measured on yolov7-tiny: 2.9e-3 in float32, 3.6e-7 in
float64, with the losses equal to 1e-7 and the outputs to 3e-6), which is float32 rounding amplified by
batch-statistics BN on a batch of 4, not a difference of the methods.

Every augmentation is off (hsv, translate, scale, flips, mosaic, mixup at 0), so each batch is the
images as they are, in file order (neither side shuffles).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
import torch

NC = 4
IMGSZ = 128
N_IMAGES = 15
BATCH = 5  # 3 batches an epoch; accumulation round(64 / 5) = 13, weight decay x 5 * 13 / 64
NO_AUG = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0,
              flipud=0.0, fliplr=0.0, mosaic=0.0, mixup=0.0, paste_in=0.0)


def make_step_data(root: str | Path) -> Path:
    """Write the dataset under ``root``; returns the path of its data.yaml."""
    root = Path(root)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    for i in range(N_IMAGES):
        # textured, not flat: equal values in a max-pool window would make its gradient implementation-defined
        img = rng.integers(40, 200, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
        rows = []
        for _ in range(int(rng.integers(2, 5))):
            c = int(rng.integers(0, NC))
            w, h = (int(v) for v in rng.integers(12, 60, 2))
            x1, y1 = int(rng.integers(0, IMGSZ - w)), int(rng.integers(0, IMGSZ - h))
            color = tuple(int(v) for v in rng.integers(100, 255, 3))
            if c % 2:
                cv2.ellipse(img, ((x1 + w / 2, y1 + h / 2), (w, h), 0), color, -1)
            else:
                cv2.rectangle(img, (x1, y1), (x1 + w - 1, y1 + h - 1), color, -1)
            rows.append(f"{c} {(x1 + w / 2) / IMGSZ:.8f} {(y1 + h / 2) / IMGSZ:.8f} {w / IMGSZ:.8f} {h / IMGSZ:.8f}")
        img = np.clip(img.astype(np.int16) + rng.integers(-25, 26, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / "train" / f"{i:03d}.png"), img)
        (root / "labels" / "train" / f"{i:03d}.txt").write_text("\n".join(rows) + "\n")
    yaml = root / "data.yaml"
    train = (root / "images" / "train").resolve()  # absolute: yolov7's data yaml has no 'path' key
    yaml.write_text(f"train: {train}\nval: {train}\nnc: {NC}\n"
                    f"names: [c0, c1, c2, c3]\n")
    return yaml


@contextlib.contextmanager
def float64():
    """Run everything in float64: default dtype and ``Tensor.float()`` (which both trainers and losses call)."""
    dtype, to_float = torch.get_default_dtype(), torch.Tensor.float
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = torch.Tensor.double
    try:
        yield
    finally:
        torch.Tensor.float = to_float
        torch.set_default_dtype(dtype)


def initial_model(name: str):
    """yoloforge model ``name`` (nc 4) with the seeded initial weights rounded through fp16."""
    from yoloforge.families.registry import build_model

    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the same draws inside or outside float64()
    try:
        torch.manual_seed(0)
        model = build_model(name, nc=NC)
    finally:
        torch.set_default_dtype(dtype)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if k.startswith("head.reg_preds.") and k.endswith(".bias"):  # YOLOv6: boxes of 2 strides a side,
                t.fill_(2.0)  # so that TAL finds predictions overlapping the gts (official: 0/0 otherwise)
                if t.numel() == 4:  # (l, t, r, b), no DFL: centres 2^-7 stride right/down of the anchor points
                    t[2:] += 2.0 ** -6  # (the zero-initialized weights put every centre on its anchor point, some
                    # gt centres sit there too, and the official SIoU angle cost is 0/0 = NaN at equal centres)
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dtype.is_floating_point:
                t.copy_(t.half().float())
    return model


def sample_positions(n: int) -> torch.Tensor:
    """Which elements of a tensor of ``n`` elements the step fixtures keep: all up to 64, else 32 spread."""
    return torch.arange(n) if n <= 64 else torch.linspace(0, n - 1, 32).round().long()
