"""Box conversions shared by every module.

Inside yoloforge boxes are ``xyxy`` in pixels. Normalized ``cxcywh`` appears only at the
YOLO-txt boundary (:mod:`yoloforge.data.formats`). Functions accept torch tensors or numpy
arrays and return the same kind.
"""
from __future__ import annotations

import numpy as np
import torch


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    x = np.asarray(x)
    return np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32, copy=True)


def xyxy2cxcywh(x):
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def cxcywh2xyxy(x):
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x):
    """(x1, y1, x2, y2) -> (x1, y1, w, h), the COCO json layout."""
    y = _clone(x)
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x):
    """(x1, y1, w, h) -> (x1, y1, x2, y2)."""
    y = _clone(x)
    y[..., 2] = x[..., 0] + x[..., 2]
    y[..., 3] = x[..., 1] + x[..., 3]
    return y


def clip_boxes(boxes, shape):
    """Clip xyxy boxes in place to an image of ``shape`` (h, w); returns them."""
    h, w = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    else:
        boxes[..., 0::2] = boxes[..., 0::2].clip(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clip(0, h)
    return boxes


def unletterbox_boxes(boxes, ratio_pad, orig_shape):
    """Map xyxy boxes from a letterboxed image back to the original image.

    ``ratio_pad`` is ``((rx, ry), (padx, pady))`` as produced by ``letterbox``; ``orig_shape`` is (h, w).
    """
    (rx, ry), (px, py) = ratio_pad
    boxes = _clone(boxes)
    boxes[..., 0::2] = (boxes[..., 0::2] - px) / rx
    boxes[..., 1::2] = (boxes[..., 1::2] - py) / ry
    return clip_boxes(boxes, orig_shape)


def box_area(b):
    return (b[..., 2] - b[..., 0]).clip(0) * (b[..., 3] - b[..., 1]).clip(0)


def box_iou(a, b, eps: float = 1e-9):
    """Pairwise IoU of xyxy boxes: ``a`` (N, 4), ``b`` (M, 4) -> (N, M)."""
    if isinstance(a, torch.Tensor):
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
    else:
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clip(0).prod(-1)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter + eps)
