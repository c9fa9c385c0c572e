"""The distribution focal loss (the distance <-> box conversions are the box coder's,
:mod:`yoloforge.models.box_coder`).

Distribution focal loss: Li et al., NeurIPS 2020, "Generalized Focal Loss" (sec. 3.3). Each box side's
distance ``y`` (in stride units, ``0 <= y < reg_max``) is learnt as a discrete distribution over the
integers ``0..reg_max``; the loss is the cross entropy towards the two integers around ``y``, weighted
by linear interpolation:

    DFL(S, y) = -((y_r - y) log S_{y_l} + (y - y_l) log S_{y_r}),   y_l = floor(y), y_r = y_l + 1.

Targets are clamped to ``reg_max - 0.01`` by ``box_coder.boxes_to_distances`` as in meituan/YOLOv6 0.2.0
(yolov6/utils/general.py, ``bbox2dist``), so ``y_r`` never exceeds ``reg_max``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distribution_focal_loss(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL of (n, reg_max + 1) logits against (n,) continuous targets in ``[0, reg_max]`` -> (n,)."""
    reg_max = pred_logits.shape[-1] - 1
    target = target.float().clamp(0, reg_max)
    left = target.floor().long().clamp(max=max(reg_max - 1, 0))
    right = (left + 1).clamp(max=reg_max)
    w_left = (left + 1).float() - target
    w_right = 1.0 - w_left
    logits = pred_logits.float()
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, right, reduction="none") * w_right)
