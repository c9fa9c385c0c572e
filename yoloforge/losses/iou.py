"""IoU-family overlap measures and the IoU regression loss.

All functions work elementwise on ``xyxy`` boxes with broadcasting: ``a`` (..., 4) and ``b`` (..., 4)
give (...,). Pairwise matrices come from broadcasting, e.g. ``bbox_iou(g[:, :, None], p[:, None])``.

Kinds (``b`` is the target, ``a`` the prediction; the value is symmetric except where noted):

* ``iou``  -- intersection over union.
* ``giou`` -- Rezatofighi et al., CVPR 2019, "Generalized Intersection over Union":
  ``IoU - (C - U) / C`` with ``C`` the area of the smallest enclosing box.
* ``diou`` -- Zheng et al., AAAI 2020, "Distance-IoU Loss": ``IoU - rho^2 / c^2`` with ``rho`` the
  distance between the centres and ``c`` the diagonal of the enclosing box.
* ``ciou`` -- same paper: ``DIoU - alpha * v``, ``v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2`` and the
  trade-off ``alpha = v / ((1 - IoU) + v)`` treated as a constant (no gradient), as the paper says.
* ``siou`` -- Gevorgyan, 2022, "SIoU Loss: More Powerful Learning for Bounding Box Regression"
  (arXiv:2205.12740): ``IoU - (Delta + Omega) / 2`` with

  - angle cost ``Lambda = 1 - 2 sin^2(arcsin(sin a) - pi/4) = sin(2a)``, ``a`` the angle between the
    line joining the centres and the x axis; written here as ``2 |dx| |dy| / (dx^2 + dy^2)`` (the
    same number, with no infinite derivative of arcsin at 1);
  - distance cost ``Delta = sum_{t=x,y} (1 - exp(-gamma rho_t))``, ``rho_x = (dx / c_w)^2``,
    ``rho_y = (dy / c_h)^2`` (``c_w, c_h`` the enclosing box), ``gamma = 2 - Lambda``;
  - shape cost ``Omega = sum_{t=w,h} (1 - exp(-omega_t))^theta``,
    ``omega_w = |w - w_gt| / max(w, w_gt)``, ``theta = 4``.

  The loss ``1 - SIoU`` is the paper's ``L_box = 1 - IoU + (Delta + Omega) / 2``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("iou", "giou", "diou", "ciou", "siou")


def bbox_iou(a: torch.Tensor, b: torch.Tensor, kind: str = "iou", eps: float = 1e-7,
             siou_theta: float = 4.0) -> torch.Tensor:
    """IoU-like overlap of ``xyxy`` boxes ``a`` and ``b`` (broadcast, last dim 4) -> (...,).

    Widths and heights are clamped at 0, so inverted predicted boxes have zero area (not negative).
    ``b`` plays the role of the ground truth where the formula is asymmetric (CIoU's alpha).
    """
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"bbox_iou: unknown kind {kind!r}, expected one of {KINDS}")
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    w1, h1 = (ax2 - ax1).clamp(min=0), (ay2 - ay1).clamp(min=0)
    w2, h2 = (bx2 - bx1).clamp(min=0), (by2 - by1).clamp(min=0)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * \
            (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou

    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)  # enclosing box
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area

    dx = (bx1 + bx2 - ax1 - ax2) / 2  # centre offsets, prediction -> target
    dy = (by1 + by2 - ay1 - ay2) / 2
    if kind in ("diou", "ciou"):
        c2 = cw ** 2 + ch ** 2 + eps
        rho2 = dx ** 2 + dy ** 2
        if kind == "diou":
            return iou - rho2 / c2
        v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        return iou - (rho2 / c2 + alpha * v)

    # SIoU (Gevorgyan 2022)
    sigma2 = dx ** 2 + dy ** 2
    angle_cost = 2 * dx.abs() * dy.abs() / (sigma2 + eps)  # = sin(2a) = 1 - 2 sin^2(a - pi/4)
    gamma = 2 - angle_cost
    rho_x = (dx / (cw + eps)) ** 2
    rho_y = (dy / (ch + eps)) ** 2
    distance_cost = 2 - torch.exp(-gamma * rho_x) - torch.exp(-gamma * rho_y)
    omega_w = (w1 - w2).abs() / (torch.maximum(w1, w2) + eps)
    omega_h = (h1 - h2).abs() / (torch.maximum(h1, h2) + eps)
    shape_cost = (1 - torch.exp(-omega_w)) ** siou_theta + (1 - torch.exp(-omega_h)) ** siou_theta
    return iou - 0.5 * (distance_cost + shape_cost)


class IoULoss(nn.Module):
    """``1 - bbox_iou(pred, target, kind)`` per box pair (no reduction)."""

    def __init__(self, kind: str = "giou", eps: float = 1e-7):
        super().__init__()
        if kind.lower() not in KINDS:
            raise ValueError(f"IoULoss: unknown kind {kind!r}, expected one of {KINDS}")
        self.kind = kind.lower()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1.0 - bbox_iou(pred, target, self.kind, self.eps)
