"""The YOLOv6 training loss (Li et al., 2022, "YOLOv6: A Single-Stage Object Detection Framework for
Industrial Applications", sec. 2.3-2.4).

* label assignment: ATSS for the first ``warmup_epochs`` epochs, TAL afterwards (sec. 2.3.1);
* classification: varifocal loss on IoU-aware soft targets (sec. 2.4.1);
* box regression: an IoU loss (GIoU for S/M/L, SIoU for N at release 2.0) on the positives, each
  weighted by its target score, plus distribution focal loss when ``use_dfl`` (sec. 2.4.2);
* all terms are divided by the sum of the target scores.

Defaults are those of meituan/YOLOv6 0.2.0 (yolov6/models/loss.py): weights class 1.0, iou 2.5, dfl 0.5;
warm-up 4 epochs; ATSS topk 9; TAL topk 13, alpha 1.0, beta 6.0; anchor cell size 5.0, offset 0.5.
The normalizer is the mean over DDP ranks of the target-score sum (in one process: the official raw
sum), so that DDP's gradient averaging equals the global-batch gradient. Guard: a batch without any
positive divides by 1 (the official code divides 0 by 0). Named deviations (hyp keys, official value
first): ``score_sum`` ``raw`` | ``clamp1`` (``max(sum, 1)``, ultralytics' choice);
``assign_argmax_positive`` ``False`` | ``True`` (an anchor positive for several gts goes to the one of
highest IoU among those gts; officially among all gts of the image).

Model outputs in train mode: ``(feats, cls_logits, reg)``

* ``feats``: list of per-level maps (B, C, H, W), only for their shapes (anchor grid);
* ``cls_logits``: (B, N, nc) raw logits, levels concatenated in the order of ``strides``, each level
  row-major over (H, W);
* ``reg``: (B, N, 4) ``l, t, r, b`` distances from the anchor point in stride units when
  ``use_dfl=False``; (B, N, 4 * (reg_max + 1)) logits over the integers ``0..reg_max`` per side when
  ``use_dfl=True`` (decoded as the expectation of the softmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from yoloforge.assign.atss import ATSSAssigner
from yoloforge.assign.tal import TaskAlignedAssigner
from yoloforge.assign.utils import pad_targets
from yoloforge.losses.dfl import distribution_focal_loss
from yoloforge.losses.iou import IoULoss
from yoloforge.losses.vfl import varifocal_loss
from yoloforge.models.box_coder import boxes_to_distances, dfl_expectation, distances_to_boxes, make_atss_anchors
from yoloforge.utils.dist import mean_over_ranks

DEFAULT_WEIGHTS = dict(cls=1.0, iou=2.5, dfl=0.5)


class YOLOv6Loss:
    """Composite YOLOv6 loss: ``loss(outputs, targets (T, 6), epoch) -> (total, items)``.

    ``targets`` rows are ``[batch_idx, cls, x1, y1, x2, y2]`` in input pixels. ``items`` is the detached
    tensor of the weighted terms in the order of ``names = ("iou", "dfl", "cls")``; ``total`` is their
    sum (not multiplied by the batch size).
    """

    names = ("iou", "dfl", "cls")

    def __init__(self, nc: int, strides, reg_max: int = 0, use_dfl: bool = False, iou_type: str = "giou",
                 warmup_epochs: int = 4, weights: dict | None = None, atss_topk: int = 9, tal_topk: int = 13,
                 tal_alpha: float = 1.0, tal_beta: float = 6.0, grid_cell_offset: float = 0.5,
                 grid_cell_size: float = 5.0, hyp: dict | None = None):
        if use_dfl and reg_max < 1:
            raise ValueError("YOLOv6Loss: use_dfl=True needs reg_max >= 1")
        self.nc = int(nc)
        self.strides = [float(s) for s in (strides.tolist() if torch.is_tensor(strides) else strides)]
        self.reg_max = int(reg_max)
        self.use_dfl = bool(use_dfl)
        self.warmup_epochs = int(warmup_epochs)
        w = dict(DEFAULT_WEIGHTS)
        w.update(weights or {})
        unknown = set(w) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"YOLOv6Loss: unknown loss weights {sorted(unknown)}; expected cls, iou, dfl")
        self.weights = w
        self.grid_cell_offset = grid_cell_offset
        self.grid_cell_size = grid_cell_size
        hyp = hyp or {}
        # named deviations from the official loss (README "Differences from the official code")
        self.score_sum = str(hyp.get("score_sum", "raw"))
        if self.score_sum not in ("raw", "clamp1"):
            raise ValueError(f"hyp score_sum must be 'raw' (official) or 'clamp1', got {self.score_sum!r}")
        argmax_all = not bool(hyp.get("assign_argmax_positive", False))
        self.iou_loss = IoULoss(iou_type)
        self.warmup_assigner = ATSSAssigner(atss_topk, num_classes=self.nc, argmax_all=argmax_all)
        self.formal_assigner = TaskAlignedAssigner(tal_topk, num_classes=self.nc, alpha=tal_alpha, beta=tal_beta,
                                                   argmax_all=argmax_all)

    def decode(self, reg: torch.Tensor) -> torch.Tensor:
        """(B, N, C) regression output -> (B, N, 4) ltrb distances in stride units."""
        if not self.use_dfl:
            if reg.shape[-1] != 4:
                raise ValueError(f"YOLOv6Loss: reg has {reg.shape[-1]} channels, expected 4 (use_dfl=False)")
            return reg
        b, n, c = reg.shape
        if c != 4 * (self.reg_max + 1):
            raise ValueError(f"YOLOv6Loss: reg has {c} channels, expected 4 * (reg_max + 1) = {4 * (self.reg_max + 1)}")
        return dfl_expectation(reg, self.reg_max)

    def terms(self, outputs, targets: torch.Tensor, epoch: int) -> dict:
        """The unweighted terms and what the distillation loss reuses: ``iou``, ``dfl``, ``cls``, the positive
        mask ``fg`` (B, N), each positive's weight ``weight`` (P,), the normalizer ``score_sum`` and the
        regression output ``reg`` (fp32)."""
        feats, cls_logits, reg = outputs
        cls_logits, reg = cls_logits.float(), reg.float()
        bs, n, _ = cls_logits.shape
        device = cls_logits.device
        anchors, anchor_points, n_level, stride_t = make_atss_anchors(
            feats, self.strides, self.grid_cell_size, self.grid_cell_offset)
        if anchor_points.shape[0] != n:
            raise ValueError(f"YOLOv6Loss: {n} predictions but the feature maps give {anchor_points.shape[0]} anchors")
        anchors, anchor_points, stride_t = anchors.to(device), anchor_points.to(device), stride_t.to(device)
        gt_labels, gt_bboxes, mask_gt = pad_targets(targets.to(device), bs)

        points_s = anchor_points / stride_t  # anchor points in stride units
        pred_dist = self.decode(reg)
        pred_bboxes = distances_to_boxes(pred_dist, points_s)  # (B, N, 4) stride units
        pred_px = pred_bboxes.detach() * stride_t

        if epoch < self.warmup_epochs:
            t_labels, t_bboxes, t_scores, fg = self.warmup_assigner(
                anchors, n_level, gt_labels, gt_bboxes, mask_gt, pred_px)
        else:
            t_labels, t_bboxes, t_scores, fg = self.formal_assigner(
                cls_logits.detach().sigmoid(), pred_px, anchor_points, gt_labels, gt_bboxes, mask_gt)
        t_bboxes = t_bboxes / stride_t

        one_hot = F.one_hot(t_labels, self.nc + 1)[..., :self.nc]
        score_sum = mean_over_ranks(t_scores.sum().detach())
        if self.score_sum == "clamp1":
            score_sum = score_sum.clamp(min=1.0)
        else:  # official: the raw sum; the one guard is a batch without any positive (official: 0/0 = NaN)
            score_sum = torch.where(score_sum > 0, score_sum, torch.ones_like(score_sum))
        loss_cls = varifocal_loss(cls_logits, t_scores, one_hot) / score_sum

        weight = t_scores.sum(-1)[fg]  # (P,)
        loss_iou = (self.iou_loss(pred_bboxes[fg], t_bboxes[fg]) * weight).sum() / score_sum
        if self.use_dfl:
            target_ltrb = boxes_to_distances(points_s[None].expand(bs, -1, -1)[fg], t_bboxes[fg], self.reg_max)  # (P, 4)
            dfl = distribution_focal_loss(reg[fg].reshape(-1, self.reg_max + 1), target_ltrb.reshape(-1))
            loss_dfl = (dfl.view(-1, 4).mean(-1) * weight).sum() / score_sum
        else:
            loss_dfl = reg.new_zeros(())
        return dict(iou=loss_iou, dfl=loss_dfl, cls=loss_cls, fg=fg, weight=weight, score_sum=score_sum, reg=reg)

    def __call__(self, outputs, targets: torch.Tensor, epoch: int):
        t = self.terms(outputs, targets, epoch)
        w = self.weights
        items = torch.stack((w["iou"] * t["iou"], w["dfl"] * t["dfl"], w["cls"] * t["cls"]))
        return items.sum(), items.detach()
