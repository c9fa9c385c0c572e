"""Lead-head-guided, coarse-to-fine label assignment for YOLOv7's auxiliary head (Wang, Bochkovskiy,
Liao, 2022, "YOLOv7: Trainable bag-of-freebies ...", sec. 4.3 and Fig. 5 (e)).

The **lead head's** predictions drive the assignment of both heads: candidates from
:func:`~yoloforge.assign.anchor_match.find_candidates`, then SimOTA dynamic-k matching
(:mod:`yoloforge.assign.simota`) with the lead head's boxes and scores.

* ``coarse=False`` (fine labels, for the lead head): candidate radius 0.5 (the cell and its two nearest
  neighbours), ``k`` from the sum of the top-10 IoUs;
* ``coarse=True`` (coarse labels, for the auxiliary head): radius 1.0 (the cell and all four
  neighbours) and top-20 IoUs, i.e. more positives ("relaxed" constraints). The soft objectness targets
  (IoU of each head's own box) are computed by the loss; neighbour cells far from the gt centre cannot
  regress it exactly, so coarse labels stay below the fine ones.

Constants from WongKinYiu/yolov7 utils/loss.py (``ComputeLossAuxOTA``: ``build_targets`` uses
``find_3_positive`` and top-10, ``build_targets2`` uses ``find_5_positive`` and top-20, both fed with
the lead outputs ``p[:nl]``). Plain YOLOv7 (``ComputeLossOTA``) is the fine branch alone.

Official cost matrix (``dedup=False``, the default): one column per candidate (gt, anchor, cell)
triple, as ``ComputeLossOTA.build_targets`` builds it, so a cell named by two gts (or by a clamped
neighbour) is two identical columns: both count in the top-k IoU sum that sets ``k``, and a prediction
matched through both is a positive twice (the loss then counts it twice in its means).
``dedup=True`` merges them into one column (a named deviation, hyp ``simota_dedup``). ``fine_topk``:
10 in ``ComputeLossOTA``, 20 for the lead head in ``ComputeLossAuxOTA`` (its ``build_targets`` too).

With ``ota=False`` no matching is done: every candidate (gt, prediction) pair is a positive, as in the
official ``ComputeLoss`` (used when ``hyp["loss_ota"] == 0``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from yoloforge.assign.anchor_match import (Candidates, as_anchor_tensor, decode_boxes, find_candidates,
                                           gather_predictions, unique_cells)
from yoloforge.assign.simota import dynamic_k_matching_rows, simota_assign, simota_cost

FINE = dict(radius=0.5, topk=10)
COARSE = dict(radius=1.0, topk=20)


def _pack(b: torch.Tensor, batch_size: int):
    """Slots of items grouped by image: (order, slot, width) so that ``x[order]`` goes to
    ``padded[b[order], slot]`` of a (B, width, ...) tensor."""
    counts = torch.bincount(b, minlength=batch_size)
    width = int(counts.max()) if b.numel() else 0
    order = torch.argsort(b, stable=True)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(b.numel(), device=b.device) - starts[b[order]]
    return order, slot, width


class LeadGuidedAssigner:
    """Assign gts to predictions of an anchor-based head, guided by the lead head's outputs.

    ``assigner(lead_preds, targets, coarse=False, ota=True) -> Candidates`` where ``lead_preds`` is the
    list of raw level outputs ``(B, na, H, W, 5 + nc)`` (channels tx, ty, tw, th, obj, classes),
    ``targets`` (T, 6) ``[batch_idx, cls, x1, y1, x2, y2]`` input pixels, and the result lists the positive
    predictions with the ``targets`` row each one learns (``gt``). With ``ota=True`` a prediction
    appears at most once.
    """

    def __init__(self, anchors, strides: Sequence[float], nc: int, anchor_t: float = 4.0,
                 iou_weight: float = 3.0, dedup: bool = False, fine_topk: int = FINE["topk"]):
        self.anchors = as_anchor_tensor(anchors, "cpu")
        self.strides = [float(s) for s in (strides.tolist() if torch.is_tensor(strides) else strides)]
        self.nc = int(nc)
        self.anchor_t = float(anchor_t)
        self.iou_weight = float(iou_weight)
        self.dedup = bool(dedup)
        self.fine_topk = int(fine_topk)
        if len(self.strides) != self.anchors.shape[0]:
            raise ValueError(f"LeadGuidedAssigner: {self.anchors.shape[0]} anchor levels, {len(self.strides)} strides")

    def candidates(self, preds: Sequence[torch.Tensor], targets: torch.Tensor, coarse: bool = False) -> Candidates:
        shapes = [tuple(p.shape[2:4]) for p in preds]
        radius = (COARSE if coarse else FINE)["radius"]
        return find_candidates(targets, self.anchors.to(targets.device), self.strides, shapes, self.anchor_t, radius)

    @torch.no_grad()
    def __call__(self, lead_preds: Sequence[torch.Tensor], targets: torch.Tensor, coarse: bool = False,
                 ota: bool = True) -> Candidates:
        if len(lead_preds) != len(self.strides):
            raise ValueError(f"LeadGuidedAssigner: {len(lead_preds)} levels, expected {len(self.strides)}")
        targets = targets.to(lead_preds[0].device).float()
        cand = self.candidates(lead_preds, targets, coarse)
        if not ota or cand.n == 0:
            return cand
        bs, na = lead_preds[0].shape[0], self.anchors.shape[1]
        shapes = [tuple(p.shape[2:4]) for p in lead_preds]
        if self.dedup:  # a prediction is one column of the cost matrix
            cand = unique_cells(cand, na, shapes, bs)
        raw = gather_predictions([p.detach() for p in lead_preds], cand).float()
        boxes = decode_boxes(raw, cand, self.anchors.to(raw.device), self.strides)

        # pad candidates and gts per image
        c_order, c_slot, k = _pack(cand.b, bs)
        cb = cand.b[c_order]
        pred_boxes = raw.new_zeros(bs, k, 4)
        pred_boxes[cb, c_slot] = boxes[c_order]
        logits = raw.new_zeros(bs, k, raw.shape[1] - 4)
        logits[cb, c_slot] = raw[c_order, 4:]
        cand_mask = torch.zeros(bs, k, dtype=torch.bool, device=raw.device)
        cand_mask[cb, c_slot] = True

        tb = targets[:, 0].long()
        g_order, g_slot, m = _pack(tb, bs)
        gb = tb[g_order]
        gt_boxes = raw.new_zeros(bs, m, 4)
        gt_boxes[gb, g_slot] = targets[g_order, 2:6]
        gt_labels = torch.zeros(bs, m, dtype=torch.long, device=raw.device)
        gt_labels[gb, g_slot] = targets[g_order, 1].long()
        gt_mask = torch.zeros(bs, m, dtype=torch.bool, device=raw.device)
        gt_mask[gb, g_slot] = True
        gt_row = torch.full((bs, m), -1, dtype=torch.long, device=raw.device)
        gt_row[gb, g_slot] = g_order

        topk = COARSE["topk"] if coarse else self.fine_topk
        if not self.dedup:  # official: one image at a time, one top-k per gt row
            return self._match_rows(cand, pred_boxes, logits, c_order, c_slot, gt_boxes, gt_labels, gt_row, tb, topk)
        matched = simota_assign(gt_boxes, gt_labels, gt_mask, pred_boxes, logits[..., 1:], logits[..., 0],
                                cand_mask, topk, self.iou_weight)  # (B, K)
        slot_gt = matched[cb, c_slot]  # per candidate (in c_order order)
        keep = slot_gt >= 0
        sel = c_order[keep]
        return cand.select(sel)._replace(gt=gt_row[cb[keep], slot_gt[keep]])

    def _match_rows(self, cand, pred_boxes, logits, c_order, c_slot, gt_boxes, gt_labels, gt_row, tb, topk):
        cb = cand.b[c_order]
        n_cand = torch.bincount(cb, minlength=pred_boxes.shape[0])
        n_gt = torch.bincount(tb, minlength=pred_boxes.shape[0])
        sel, rows = [], []
        for b in range(pred_boxes.shape[0]):
            kb, mb = int(n_cand[b]), int(n_gt[b])
            if kb == 0 or mb == 0:
                continue
            cost, ious = simota_cost(gt_boxes[b:b + 1, :mb], gt_labels[b:b + 1, :mb], pred_boxes[b:b + 1, :kb].float(),
                                     logits[b:b + 1, :kb, 1:].float(), logits[b:b + 1, :kb, 0].float(),
                                     self.iou_weight)
            matched = dynamic_k_matching_rows(cost[0], ious[0], topk)
            keep = matched >= 0
            sel.append(c_order[cb == b][keep])
            rows.append(gt_row[b, matched[keep]])
        if not sel:
            return Candidates.empty(pred_boxes.device)
        return cand.select(torch.cat(sel))._replace(gt=torch.cat(rows))

    def both(self, lead_preds: Sequence[torch.Tensor], targets: torch.Tensor, ota: bool = True):
        """(fine, coarse) assignments from the same lead predictions."""
        return self(lead_preds, targets, False, ota), self(lead_preds, targets, True, ota)
