"""Helpers shared by the label assigners (ATSS, TAL, and later families).

Shapes: ``B`` images, ``M`` padded ground truths per image (``mask_gt`` marks the real ones), ``N``
anchors over all levels. Boxes are ``xyxy`` pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from yoloforge.losses.iou import bbox_iou


def pairwise_iou(gt_bboxes: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of every gt with every box: gt (B, M, 4) with boxes (B, N, 4) or (N, 4) -> (B, M, N)."""
    if boxes.dim() == 2:
        boxes = boxes[None]
    return bbox_iou(gt_bboxes[:, :, None, :], boxes[:, None, :, :], "iou", eps)


def select_candidates_in_gts(xy_centers: torch.Tensor, gt_bboxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Whether each anchor point lies strictly inside each gt: (N, 2), (B, M, 4) -> bool (B, M, N)."""
    lt = xy_centers[None, None] - gt_bboxes[:, :, None, :2]
    rb = gt_bboxes[:, :, None, 2:] - xy_centers[None, None]
    return torch.cat((lt, rb), -1).amin(-1) > eps


def select_highest_overlaps(mask_pos: torch.Tensor, overlaps: torch.Tensor, argmax_all: bool = True):
    """Keep one gt per anchor: where an anchor is positive for several gts, the one of highest overlap.

    ``argmax_all=True`` (meituan/YOLOv6 0.2.0 ``select_highest_overlaps``): the arg-max runs over all gts
    of the image, so the anchor may go to a gt it was not positive for (that gt's mask is then set).
    ``argmax_all=False``: over the gts the anchor is positive for.

    Args:
        mask_pos: (B, M, N) bool, anchor n positive for gt m.
        overlaps: (B, M, N) the overlap measure used to break ties.
    Returns:
        target_gt_idx (B, N) long (0 where background), fg_mask (B, N) bool, mask_pos (B, M, N) bool
        with at most one gt per anchor.
    """
    mask_pos = mask_pos.bool()
    if mask_pos.shape[1] == 0:
        b, _, n = mask_pos.shape
        z = torch.zeros(b, n, dtype=torch.long, device=mask_pos.device)
        return z, z.bool(), mask_pos
    if argmax_all:
        multi = mask_pos.sum(1, keepdim=True) > 1  # (B, 1, N)
        best = F.one_hot(overlaps.argmax(1), mask_pos.shape[1]).permute(0, 2, 1).bool()
        mask_pos = torch.where(multi, best, mask_pos)
        target_gt_idx = mask_pos.float().argmax(1)
        return target_gt_idx, mask_pos.any(1), mask_pos
    masked = torch.where(mask_pos, overlaps, torch.full_like(overlaps, -1.0))
    target_gt_idx = masked.argmax(1)  # (B, N)
    fg_mask = mask_pos.any(1)
    mask_pos = F.one_hot(target_gt_idx, mask_pos.shape[1]).permute(0, 2, 1).bool() & fg_mask[:, None]
    return target_gt_idx, fg_mask, mask_pos


def gather_targets(gt_labels: torch.Tensor, gt_bboxes: torch.Tensor, target_gt_idx: torch.Tensor,
                   fg_mask: torch.Tensor, num_classes: int):
    """Per-anchor targets from the assigned gt index.

    Returns:
        target_labels (B, N) long (``num_classes`` = background), target_bboxes (B, N, 4) (zeros on
        background), target_scores (B, N, nc) float one-hot (zeros on background).
    """
    labels = gt_labels.squeeze(-1).long().clamp(0, max(num_classes - 1, 0))  # (B, M)
    target_labels = labels.gather(1, target_gt_idx)
    target_labels = torch.where(fg_mask, target_labels, torch.full_like(target_labels, num_classes))
    idx = target_gt_idx[..., None].expand(-1, -1, 4)
    target_bboxes = gt_bboxes.gather(1, idx) * fg_mask[..., None]
    target_scores = F.one_hot(target_labels, num_classes + 1)[..., :num_classes].to(gt_bboxes.dtype)
    return target_labels, target_bboxes, target_scores


def empty_assignment(bs: int, n: int, num_classes: int, device, dtype=torch.float32):
    """All-background result (no gts in the batch)."""
    return (torch.full((bs, n), num_classes, dtype=torch.long, device=device),
            torch.zeros(bs, n, 4, dtype=dtype, device=device),
            torch.zeros(bs, n, num_classes, dtype=dtype, device=device),
            torch.zeros(bs, n, dtype=torch.bool, device=device))


def pad_targets(targets: torch.Tensor, batch_size: int):
    """(T, 6) ``[batch_idx, cls, x1, y1, x2, y2]`` rows -> padded per-image gts.

    Returns gt_labels (B, M, 1), gt_bboxes (B, M, 4), mask_gt (B, M, 1) bool, with ``M`` the largest
    number of gts in one image (0 if none). Vectorized: no loop over images.
    """
    device, dtype = targets.device, torch.float32
    if targets.numel() == 0:
        return (torch.zeros(batch_size, 0, 1, device=device, dtype=dtype),
                torch.zeros(batch_size, 0, 4, device=device, dtype=dtype),
                torch.zeros(batch_size, 0, 1, device=device, dtype=torch.bool))
    bi = targets[:, 0].long()
    if bi.min() < 0 or bi.max() >= batch_size:
        raise ValueError(f"targets: batch index out of range [0, {batch_size}) in column 0")
    counts = torch.bincount(bi, minlength=batch_size)
    m = int(counts.max())
    order = torch.argsort(bi, stable=True)
    t, bi = targets[order].to(dtype), bi[order]
    starts = counts.cumsum(0) - counts
    slot = torch.arange(len(t), device=device) - starts[bi]
    out = torch.zeros(batch_size, m, 5, device=device, dtype=dtype)
    out[bi, slot] = t[:, 1:6]
    mask = torch.zeros(batch_size, m, 1, device=device, dtype=torch.bool)
    mask[bi, slot] = True
    return out[..., :1], out[..., 1:], mask
