"""Adaptive Training Sample Selection (Zhang et al., CVPR 2020, "Bridging the Gap Between
Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection", Algorithm 1).

For every ground truth ``g``:

1. on each pyramid level take the ``topk`` anchors whose centres are closest to the centre of ``g``;
2. ``t_g = mean + std`` of the IoUs between these candidates' anchor boxes and ``g``;
3. positives are the candidates with ``IoU > t_g`` whose centre lies inside ``g``;
4. an anchor positive for several gts keeps the one of highest IoU.

YOLOv6 (Li et al., 2022, sec. 2.3.1) uses ATSS for the first ``warmup_epochs`` epochs with ``topk = 9``,
anchor boxes of side 5 x stride, and soft classification targets: the one-hot label is multiplied by
the IoU between the (detached) predicted box and its assigned gt (meituan/YOLOv6 0.2.0,
yolov6/assigners/atss_assigner.py). The std is the unbiased one (``torch.std``), as there.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from yoloforge.assign.utils import (empty_assignment, gather_targets, pairwise_iou, select_candidates_in_gts,
                                    select_highest_overlaps)


class ATSSAssigner(nn.Module):
    """ATSS label assignment; background label is ``num_classes``.

    Call: ``(anchors (N, 4), n_level_anchors list[int], gt_labels (B, M, 1), gt_bboxes (B, M, 4),
    mask_gt (B, M, 1), pred_bboxes (B, N, 4) or None) -> (target_labels (B, N) long,
    target_bboxes (B, N, 4), target_scores (B, N, nc), fg_mask (B, N) bool)``.
    """

    def __init__(self, topk: int = 9, num_classes: int = 80, argmax_all: bool = True):
        super().__init__()
        self.argmax_all = bool(argmax_all)
        self.topk = int(topk)
        self.num_classes = int(num_classes)
        self.bg_idx = self.num_classes

    def topk_candidates(self, distances: torch.Tensor, n_level_anchors: Sequence[int]):
        """Per level, the ``topk`` anchors nearest to each gt centre.

        Args:
            distances: (B, M, N) centre distances.
        Returns:
            is_candidate (B, M, N) bool, candidate_idxs (B, M, K) long, K = sum of min(topk, n_level).
        """
        is_cand = torch.zeros_like(distances, dtype=torch.bool)
        idxs, start = [], 0
        for n_l in n_level_anchors:  # loop over levels only (3-5), never over boxes
            k = min(self.topk, n_l)
            if k > 0:
                idx = distances[..., start:start + n_l].topk(k, dim=-1, largest=False).indices + start
                idxs.append(idx)
            start += n_l
        idxs = torch.cat(idxs, -1)
        is_cand.scatter_(-1, idxs, True)
        return is_cand, idxs

    @torch.no_grad()
    def forward(self, anchors: torch.Tensor, n_level_anchors: Sequence[int], gt_labels: torch.Tensor,
                gt_bboxes: torch.Tensor, mask_gt: torch.Tensor, pred_bboxes: torch.Tensor | None = None):
        n = anchors.shape[0]
        bs, m = gt_bboxes.shape[:2]
        if sum(n_level_anchors) != n:
            raise ValueError(f"ATSSAssigner: n_level_anchors sums to {sum(n_level_anchors)}, anchors has {n}")
        if m == 0 or n == 0:
            return empty_assignment(bs, n, self.num_classes, gt_bboxes.device, gt_bboxes.dtype)
        anchors = anchors.to(gt_bboxes.dtype)
        mask_gt = mask_gt.bool().reshape(bs, m, 1)

        overlaps = pairwise_iou(gt_bboxes, anchors)  # (B, M, N)
        gt_ctr = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2  # (B, M, 2)
        anc_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (N, 2)
        distances = (gt_ctr[:, :, None] - anc_ctr[None, None]).pow(2).sum(-1).sqrt()

        is_cand, cand_idxs = self.topk_candidates(distances, n_level_anchors)
        cand_ious = overlaps.gather(-1, cand_idxs)  # (B, M, K)
        if cand_ious.shape[-1] > 1:
            thr = cand_ious.mean(-1, keepdim=True) + cand_ious.std(-1, keepdim=True)
        else:
            thr = cand_ious
        is_pos = is_cand & (overlaps > thr)  # strictly above, as the official code
        in_gts = select_candidates_in_gts(anc_ctr, gt_bboxes)
        mask_pos = is_pos & in_gts & mask_gt

        target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, self.argmax_all)
        target_labels, target_bboxes, target_scores = gather_targets(
            gt_labels, gt_bboxes, target_gt_idx, fg_mask, self.num_classes)

        if pred_bboxes is not None:  # soft label: IoU of the prediction with its assigned gt
            pred_ious = (pairwise_iou(gt_bboxes, pred_bboxes.to(gt_bboxes.dtype)) * mask_pos).amax(-2)
            target_scores = target_scores * pred_ious[..., None]
        return target_labels, target_bboxes, target_scores, fg_mask
