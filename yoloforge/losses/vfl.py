"""Varifocal loss (Zhang et al., CVPR 2021, "VarifocalNet: An IoU-aware Dense Object Detector").

The classification target is an IoU-aware score ``q`` (0 for background). Positives are weighted by
``q`` itself, negatives are down-weighted focal-style by ``alpha * p^gamma``:

    VFL(p, q) = -q (q log p + (1 - q) log(1 - p))        if q > 0
              = -alpha p^gamma log(1 - p)                  otherwise

YOLOv6 (Li et al., 2022, sec. 2.4.1) uses it with alpha 0.75 and gamma 2.0 (VarifocalLoss defaults in
meituan/YOLOv6 0.2.0, yolov6/models/loss.py). Which anchors are positive comes from the one-hot
assigned label rather than from ``q > 0``, as there. The focal weight is not detached (as in the
paper's reference implementation and YOLOv6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def varifocal_loss(pred_logits: torch.Tensor, gt_score: torch.Tensor, label_onehot: torch.Tensor,
                   alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Summed varifocal loss.

    Args:
        pred_logits: (..., nc) raw class logits.
        gt_score: (..., nc) soft targets in [0, 1] (IoU-aware score on the assigned class, else 0).
        label_onehot: (..., nc) 1 on the assigned class of foreground anchors, else 0.
    Returns:
        scalar float32 tensor: ``sum(BCE_with_logits(pred, gt_score) * weight)``, always computed in
        float32 with autocast disabled.
    """
    with torch.autocast(device_type=pred_logits.device.type, enabled=False):
        logits = pred_logits.float()
        score = gt_score.float()
        label = label_onehot.float()
        p = logits.sigmoid()
        weight = alpha * p.pow(gamma) * (1 - label) + score * label
        bce = F.binary_cross_entropy_with_logits(logits, score, reduction="none")
        return (bce * weight).sum()
