"""Task-aligned label assignment (Feng et al., ICCV 2021, "TOOD: Task-aligned One-stage Object
Detection", sec. 3.2.1), as used by YOLOv6 after the ATSS warm-up (Li et al., 2022, sec. 2.3.1).

For every ground truth ``g`` with class ``c``:

1. alignment metric ``t = s^alpha * u^beta`` per anchor, ``s`` the predicted score of class ``c`` and
   ``u`` the IoU of the predicted box with ``g``;
2. among anchors whose point lies inside ``g``, the ``topk`` of largest ``t`` are positive;
3. an anchor positive for several gts goes to the gt of highest IoU (over all gts, as the official code);
4. the soft target on class ``c`` is ``t / max_g(t) * max_g(u)`` (TOOD eq. 10: the metric normalized
   per instance so that its largest value equals the largest IoU of that instance).

Constants of YOLOv6: topk 13, alpha 1.0, beta 6.0 (meituan/YOLOv6 0.2.0, yolov6/models/loss.py);
``eps`` 1e-9 (yolov6/assigners/tal_assigner.py).
"""
from __future__ import annotations

import torch
from torch import nn

from yoloforge.assign.utils import (empty_assignment, gather_targets, pairwise_iou, select_candidates_in_gts,
                                    select_highest_overlaps)


class TaskAlignedAssigner(nn.Module):
    """TAL label assignment; background label is ``num_classes``.

    Call: ``(pred_scores (B, N, nc) in [0, 1], pred_bboxes (B, N, 4), anchor_points (N, 2),
    gt_labels (B, M, 1), gt_bboxes (B, M, 4), mask_gt (B, M, 1)) -> (target_labels (B, N) long,
    target_bboxes (B, N, 4), target_scores (B, N, nc), fg_mask (B, N) bool)``.
    """

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0,
                 eps: float = 1e-9, argmax_all: bool = True):
        super().__init__()
        self.argmax_all = bool(argmax_all)
        self.topk = int(topk)
        self.num_classes = int(num_classes)
        self.bg_idx = self.num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    def box_metrics(self, pred_scores: torch.Tensor, pred_bboxes: torch.Tensor, gt_labels: torch.Tensor,
                    gt_bboxes: torch.Tensor):
        """Alignment metric and IoU of every (gt, anchor) pair, both (B, M, N)."""
        m = gt_bboxes.shape[1]
        labels = gt_labels.reshape(gt_labels.shape[0], m).long().clamp(0, self.num_classes - 1)
        # score of the gt's class at every anchor: gather along classes -> (B, N, M) -> (B, M, N)
        idx = labels[:, None, :].expand(-1, pred_scores.shape[1], -1)
        scores = pred_scores.gather(2, idx).permute(0, 2, 1)
        overlaps = pairwise_iou(gt_bboxes, pred_bboxes)
        align = scores.clamp(min=0).pow(self.alpha) * overlaps.pow(self.beta)
        return align, overlaps

    def topk_mask(self, metrics: torch.Tensor) -> torch.Tensor:
        """(B, M, N) -> bool (B, M, N): the ``topk`` largest entries along N for each gt."""
        k = min(self.topk, metrics.shape[-1])
        idx = metrics.topk(k, dim=-1).indices
        return torch.zeros_like(metrics, dtype=torch.bool).scatter_(-1, idx, True)

    @torch.no_grad()
    def forward(self, pred_scores: torch.Tensor, pred_bboxes: torch.Tensor, anchor_points: torch.Tensor,
                gt_labels: torch.Tensor, gt_bboxes: torch.Tensor, mask_gt: torch.Tensor):
        bs, n = pred_scores.shape[:2]
        m = gt_bboxes.shape[1]
        if m == 0 or n == 0:
            return empty_assignment(bs, n, self.num_classes, pred_scores.device, pred_scores.dtype)
        pred_scores = pred_scores.float()
        pred_bboxes = pred_bboxes.float()
        gt_bboxes = gt_bboxes.float()
        mask_gt = mask_gt.bool().reshape(bs, m, 1)

        align, overlaps = self.box_metrics(pred_scores, pred_bboxes, gt_labels, gt_bboxes)
        in_gts = select_candidates_in_gts(anchor_points.float(), gt_bboxes)
        mask_pos = self.topk_mask(align * in_gts) & in_gts & mask_gt

        target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, self.argmax_all)
        target_labels, target_bboxes, target_scores = gather_targets(
            gt_labels, gt_bboxes, target_gt_idx, fg_mask, self.num_classes)

        # normalize: per gt, metric / max metric * max IoU (over that gt's positives)
        align = align * mask_pos
        max_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        max_iou = (overlaps * mask_pos).amax(-1, keepdim=True)
        norm = (align * max_iou / (max_align + self.eps)).amax(-2)  # (B, N)
        target_scores = target_scores * norm[..., None]
        return target_labels, target_bboxes, target_scores, fg_mask
