"""One postprocess for every path from a model's output to detections: validation, prediction, the
server, the training plots.

Every family and every runtime gives ``(B, N, 4 + nc)`` in eval mode: xyxy boxes in input pixels, then
class scores. :func:`postprocess` runs the NMS of :mod:`yoloforge.utils.nms` and takes the boxes back
through the letterbox to each original image: one ``(n, 6)`` float32 array per image, ``[x1, y1, x2, y2,
score, cls]`` sorted by score.

The thresholds of its two uses are set once, in :mod:`yoloforge.config` (``VAL_NMS``, ``PREDICT_NMS``,
free of torch for the CLI), and read from there by the CLI, the Python API, the server, the trainer and
export; :data:`VAL` and :data:`PREDICT` here are the same objects.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from yoloforge.config import PREDICT_NMS, VAL_NMS
from yoloforge.utils.boxes import unletterbox_boxes
from yoloforge.utils.nms import non_max_suppression


VAL, PREDICT = VAL_NMS, PREDICT_NMS


def postprocess(pred, conf: float | Sequence[float], iou: float | Sequence[float], max_det: int = 300, *,
                multi_label: bool = False, classes=None, agnostic: bool = False, kind: str = "iou",
                ratio_pads: Sequence | None = None, orig_shapes: Sequence | None = None) -> list[np.ndarray]:
    """Model output ``pred`` (B, N, 4 + nc) -> per image an (n, 6) float32 array ``[x1, y1, x2, y2, score, cls]``.

    ``conf`` / ``iou``: one value, or one per image (a server batches requests that asked for different
    thresholds). ``ratio_pads`` / ``orig_shapes``: per image the letterbox's ``(ratio, pad)`` and the original
    ``(h, w)``; with them the boxes are in original-image pixels, without them they stay in input pixels."""
    pred = torch.as_tensor(pred).float()
    if pred.ndim == 2:
        pred = pred[None]
    bs = pred.shape[0]
    confs = list(conf) if isinstance(conf, (list, tuple)) else [conf] * bs
    ious = list(iou) if isinstance(iou, (list, tuple)) else [iou] * bs
    if len(confs) != bs or len(ious) != bs:
        raise ValueError(f"postprocess: {bs} images but {len(confs)} conf and {len(ious)} iou values")
    kw = dict(max_det=max_det, multi_label=multi_label, classes=classes, agnostic=agnostic, kind=kind)
    if len(set(confs)) == 1 and len(set(ious)) == 1:
        dets = non_max_suppression(pred, conf=confs[0], iou=ious[0], **kw)
    else:
        dets = [non_max_suppression(pred[k:k + 1], conf=c, iou=u, **kw)[0] for k, (c, u) in enumerate(zip(confs, ious))]
    out = []
    for k, det in enumerate(dets):
        det = det.cpu().numpy().astype(np.float32, copy=False)
        if ratio_pads is not None and len(det):
            det = det.copy()
            det[:, :4] = unletterbox_boxes(det[:, :4], ratio_pads[k], orig_shapes[k])
        out.append(det.reshape(-1, 6))
    return out
