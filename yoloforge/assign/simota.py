"""SimOTA-style dynamic-k matching (Ge et al., 2021, "YOLOX: Exceeding YOLO Series in 2021",
sec. 2.2 "SimOTA"), in the form YOLOv7 uses on top of its anchor candidates (WongKinYiu/yolov7
utils/loss.py, ``ComputeLossOTA.build_targets``).

Per image, between every gt ``g`` and every candidate prediction ``p`` of that image:

* ``cost = BCE(y_p, onehot(c_g)) summed over classes + 3 * (-log(IoU(g, p) + 1e-8))`` with
  ``y = sqrt(sigmoid(cls) * sigmoid(obj))`` (the class score joint with objectness);
* ``k_g = max(1, floor(sum of the top-``topk`` IoUs of g))`` (``topk`` 10 for the lead head,
  20 for the coarse labels of the auxiliary head);
* ``g`` takes its ``k_g`` candidates of least cost; a candidate taken by several gts goes to the gt of
  least cost for it (the arg-min runs over all the image's gts, as in the official code).

Everything is batched over padded ``(B, M, K)`` tensors (``M`` gts, ``K`` candidates per image); the
class part of the cost is computed without a ``(B, M, K, nc)`` tensor, using
``sum_c BCE(y_c, onehot_c) = sum_c -log(1 - y_c) - log(y_{c_g}) + log(1 - y_{c_g})``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from yoloforge.assign.utils import pairwise_iou

BIG = 1e8  # cost of a padded (invalid) gt/candidate pair


def simota_cost(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, pred_boxes: torch.Tensor,
                cls_logits: torch.Tensor, obj_logits: torch.Tensor, iou_weight: float = 3.0, eps: float = 1e-8):
    """Matching cost and IoU of every (gt, candidate) pair of each image.

    Args:
        gt_boxes (B, M, 4) xyxy, gt_labels (B, M) long, pred_boxes (B, K, 4) xyxy,
        cls_logits (B, K, nc), obj_logits (B, K) raw logits.
    Returns:
        cost (B, M, K), ious (B, M, K).
    """
    ious = pairwise_iou(gt_boxes, pred_boxes)
    iou_cost = -torch.log(ious + eps)
    nc = cls_logits.shape[-1]
    ls = F.logsigmoid(torch.cat((cls_logits, obj_logits[..., None]), -1))  # one call
    log_y = 0.5 * (ls[..., :nc] + ls[..., nc:])  # (B, K, nc)
    log_1my = torch.log1p(-log_y.exp().clamp(max=1 - 1e-6))
    neg_all = -log_1my.sum(-1)  # (B, K): cost if every class were negative
    labels = gt_labels.long().clamp(0, nc - 1)
    idx = labels[:, None, :].expand(-1, cls_logits.shape[1], -1)  # (B, K, M)
    pos = (log_y.gather(2, idx) - log_1my.gather(2, idx)).transpose(1, 2)  # (B, M, K)
    cls_cost = neg_all[:, None, :] - pos
    return cls_cost + iou_weight * iou_cost, ious


def dynamic_k_matching(cost: torch.Tensor, ious: torch.Tensor, gt_mask: torch.Tensor, cand_mask: torch.Tensor,
                       topk: int = 10) -> torch.Tensor:
    """Dynamic-k assignment on padded tensors.

    Args:
        cost, ious: (B, M, K); gt_mask (B, M) bool; cand_mask (B, K) bool (real entries).
        topk: how many of the largest IoUs are summed to get each gt's ``k``.
    Returns:
        matched (B, K) long: index of the gt (in ``M``) each candidate is assigned to, -1 if none.
    """
    b, m, k = cost.shape
    if m == 0 or k == 0:
        return torch.full((b, k), -1, dtype=torch.long, device=cost.device)
    valid = gt_mask[:, :, None] & cand_mask[:, None, :]
    cost = torch.where(valid, cost, torch.full_like(cost, BIG))
    ious = torch.where(valid, ious, torch.zeros_like(ious))
    n = min(int(topk), k)
    dyn_k = ious.topk(n, dim=-1).values.sum(-1).floor().long().clamp(min=1)  # (B, M)
    dyn_k = torch.where(gt_mask, dyn_k, torch.zeros_like(dyn_k))
    order = cost.topk(n, dim=-1, largest=False).indices  # (B, M, n): k <= n always (IoU <= 1)
    take = torch.arange(n, device=cost.device) < dyn_k[..., None]
    matching = torch.zeros_like(cost, dtype=torch.bool).scatter_(-1, order, take) & valid
    count = matching.sum(1)  # (B, K)
    best = cost.argmin(1)  # least-cost gt of each candidate
    first = matching.float().argmax(1)  # the only gt where count == 1
    matched = torch.where(count > 1, best, first)
    return torch.where(count > 0, matched, torch.full_like(matched, -1))


def simota_assign(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_mask: torch.Tensor, pred_boxes: torch.Tensor,
                  cls_logits: torch.Tensor, obj_logits: torch.Tensor, cand_mask: torch.Tensor, topk: int = 10,
                  iou_weight: float = 3.0) -> torch.Tensor:
    """Cost + dynamic-k in one call (shapes as in :func:`simota_cost` and :func:`dynamic_k_matching`);
    returns matched (B, K) long, -1 for unmatched candidates."""
    cost, ious = simota_cost(gt_boxes, gt_labels, pred_boxes.float(), cls_logits.float(), obj_logits.float(),
                             iou_weight)
    return dynamic_k_matching(cost, ious, gt_mask.bool(), cand_mask.bool(), topk)


def dynamic_k_matching_rows(cost: torch.Tensor, ious: torch.Tensor, topk: int = 10) -> torch.Tensor:
    """Dynamic-k assignment of ONE image, row by row as the official loop does it.

    ``cost``, ``ious`` (M, K) without padding. Each gt takes ``torch.topk(cost_g, k_g, largest=False)``
    on its own row, so candidates of equal cost (duplicate columns) are chosen exactly as in the
    official code. Returns matched (K,) long (gt index or -1).
    """
    m, k = cost.shape
    if m == 0 or k == 0:
        return torch.full((k,), -1, dtype=torch.long, device=cost.device)
    dyn_k = ious.topk(min(int(topk), k), dim=1).values.sum(1).int().clamp(min=1)
    matching = torch.zeros_like(cost)
    for g in range(m):
        matching[g, cost[g].topk(int(dyn_k[g]), largest=False).indices] = 1.0
    multi = matching.sum(0) > 1
    if multi.any():
        best = cost[:, multi].argmin(0)
        matching[:, multi] = 0.0
        matching[best, multi] = 1.0
    matched = matching.argmax(0)
    return torch.where(matching.sum(0) > 0, matched, torch.full_like(matched, -1))
