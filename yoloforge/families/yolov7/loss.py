"""The YOLOv7 training loss (Wang, Bochkovskiy, Liao, 2022, "YOLOv7: Trainable bag-of-freebies sets
new state-of-the-art for real-time object detectors"), also usable for other anchor-based heads with
the "scaled" decode (Scaled-YOLOv4).

Facts from WongKinYiu/yolov7 (utils/loss.py ``ComputeLoss``, ``ComputeLossOTA``, ``ComputeLossAuxOTA``;
train.py; data/hyp.scratch.{p5,tiny,p6}.yaml), re-implemented here:

* assignment (:class:`~yoloforge.assign.lead_guided.LeadGuidedAssigner`): anchor-ratio + neighbour-cell
  candidates, then SimOTA dynamic-k on the lead head's predictions (``hyp["loss_ota"] == 1``); with
  ``loss_ota == 0`` every candidate is a positive (plain ``ComputeLoss``);
* box: ``1 - CIoU`` of the decoded box with its gt, mean over the positives of each level;
* objectness: BCE on every prediction with target ``(1 - gr) + gr * IoU.detach().clamp(0)`` at the
  positives (``gr`` 1.0) and 0 elsewhere, mean per level, levels weighted by ``[4.0, 1.0, 0.4]`` (3
  levels) or ``[4.0, 1.0, 0.25, 0.06, 0.02][:nl]`` (4 or 5 levels);
* class: BCE on the positives' class logits against one-hot (label smoothing ``hyp["label_smoothing"]``,
  default 0), only when ``nc > 1``; optional focal modulation when ``fl_gamma > 0`` (alpha 0.25);
* gains: ``box = hyp.box * 3/nl``, ``cls = hyp.cls * nc/80 * 3/nl``, ``obj = hyp.obj * (imgsz/640)^2 * 3/nl``
  (train.py). The loss sees no config, so ``imgsz^2`` is the input area derived from the first level:
  ``(H_0 s_0)(W_0 s_0)`` (the same for square inputs; it follows the batch's size);
* auxiliary head (``aux=True``): the same terms on the aux outputs with the **coarse** assignment made
  from the **lead** outputs, each weighted by ``hyp["aux_weight"]`` (0.25), folded into box/obj/cls.

Scale, and DDP. The official total is ``batch_size * (box + obj + cls)`` with per-image means inside,
and train.py further multiplies it by ``world_size`` under DDP (the trainer here does not rescale, so the
loss does). Here the means are written as ``local sum / mean over ranks of the local count`` (counts of
positives, of positive class entries, of predictions, and the batch size, all-reduced together in one
call to :func:`yoloforge.utils.dist.mean_over_ranks`), and the total is multiplied by the global batch
size ``mean_over_ranks(B) * world_size``. In one process this is exactly the official loss; under DDP,
gradient averaging then gives exactly the gradient of the official loss on the global batch (not the
approximation of averaging per-rank means). ``items`` are the per-image terms
``(box_gain * lbox, obj_gain * lobj, cls_gain * lcls)`` (as the official logs them), so
``total = global_batch * items.sum()``.

Named deviations (hyp keys; the default is the official behaviour): ``simota_dedup`` (False): True
merges candidate cells named twice (several gts, or a clamped neighbour) into one column of the SimOTA
cost matrix and gives a prediction positive for several gts the largest of their IoUs as objectness
target (officially duplicates stay separate columns, count twice in the box/class means, and the
objectness target is the last write, which is not deterministic on GPU); ``lead_topk`` (10, or 20
with the auxiliary head as ``ComputeLossAuxOTA``): the number of IoUs summed for the lead head's ``k``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from yoloforge.assign.anchor_match import (Candidates, as_anchor_tensor, cell_keys, decode_boxes,
                                           gather_predictions)
from yoloforge.assign.lead_guided import LeadGuidedAssigner
from yoloforge.losses.iou import bbox_iou
from yoloforge.utils.dist import mean_over_ranks, world_size


def level_balance(nl: int) -> list[float]:
    """Objectness weight of each level (official: [4.0, 1.0, 0.4] for 3 levels, else P3-P7 list)."""
    if nl == 3:
        return [4.0, 1.0, 0.4]
    full = [4.0, 1.0, 0.25, 0.06, 0.02]
    if nl > len(full):
        raise ValueError(f"YOLOv7Loss: objectness balance is defined for at most {len(full)} levels, got {nl}")
    return full[:nl]


def scaled_gains(hyp: dict, nl: int, nc: int, img_area: float) -> dict:
    """box/obj/cls gains after the official run-time scaling (yolov7 train.py)."""
    return dict(box=hyp["box"] * 3 / nl,
                cls=hyp["cls"] * nc / 80 * 3 / nl,
                obj=hyp["obj"] * img_area / 640 ** 2 * 3 / nl)


class YOLOv7Loss:
    """``loss(outputs, targets (T, 6), epoch) -> (total, items)``, ``names = ("box", "obj", "cls")``.

    ``outputs``: ``dict(main=[(B, na, H, W, 5 + nc)] * nl, aux=same or None)`` (a bare list is taken as
    ``main``). ``targets`` rows: ``[batch_idx, cls, x1, y1, x2, y2]`` input pixels.
    """

    names = ("box", "obj", "cls")

    def __init__(self, nc: int, anchors, strides, hyp: dict, aux: bool = False):
        self.nc = int(nc)
        self.anchors = as_anchor_tensor(anchors, "cpu")
        self.strides = [float(s) for s in (strides.tolist() if torch.is_tensor(strides) else strides)]
        self.nl, self.na = self.anchors.shape[:2]
        if len(self.strides) != self.nl:
            raise ValueError(f"YOLOv7Loss: {self.nl} anchor levels but {len(self.strides)} strides")
        self.hyp = dict(hyp)
        missing = [k for k in ("box", "obj", "cls") if k not in self.hyp]
        if missing:
            raise ValueError(f"YOLOv7Loss: hyp lacks {missing}")
        self.aux = bool(aux)
        self.aux_weight = float(self.hyp.get("aux_weight", 0.25))
        self.ota = bool(self.hyp.get("loss_ota", 1))
        self.gr = float(self.hyp.get("gr", 1.0))
        eps = float(self.hyp.get("label_smoothing", 0.0))
        self.cp, self.cn = 1.0 - 0.5 * eps, 0.5 * eps
        self.fl_gamma = float(self.hyp.get("fl_gamma", 0.0))
        self.cls_pw = float(self.hyp.get("cls_pw", 1.0))
        self.obj_pw = float(self.hyp.get("obj_pw", 1.0))
        self.balance = level_balance(self.nl)
        self.dedup = bool(self.hyp.get("simota_dedup", False))
        lead_topk = self.hyp.get("lead_topk") or (20 if self.aux else 10)  # official: 20 in ComputeLossAuxOTA
        self.assigner = LeadGuidedAssigner(self.anchors, self.strides, self.nc,
                                           anchor_t=float(self.hyp.get("anchor_t", 4.0)), dedup=self.dedup,
                                           fine_topk=int(lead_topk))

    # -- elementwise BCE (optionally focal) ---------------------------------------------------------
    def _bce(self, logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
        pw = logits.new_tensor(pos_weight) if pos_weight != 1.0 else None
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
        if self.fl_gamma > 0:  # Lin et al. 2017 focal modulation, alpha 0.25
            p = logits.sigmoid()
            p_t = target * p + (1 - target) * (1 - p)
            alpha = target * 0.25 + (1 - target) * 0.75
            loss = loss * alpha * (1.0 - p_t) ** self.fl_gamma
        return loss

    def head_sums(self, preds: Sequence[torch.Tensor], pos: Candidates, targets: torch.Tensor):
        """Unnormalized per-level terms of one head.

        Returns (box_sum, obj_sum, cls_sum, n_pos, n_cells), each (nl,) float: sums of ``1 - CIoU`` over
        the positives, of objectness BCE over all predictions, of class BCE over the positives' class
        entries; the number of positives and of predictions of each level.
        """
        dev = preds[0].device
        bs, na = preds[0].shape[:2]
        shapes = [tuple(p.shape[2:4]) for p in preds]
        sizes = [p[..., 4].numel() for p in preds]
        n_cells = torch.tensor(sizes, dtype=torch.float32, device=dev)
        n_pos = torch.bincount(pos.level, minlength=self.nl).float()
        # objectness of every prediction of every level in one flat vector (one BCE call)
        obj_logits = torch.cat([p[..., 4].float().reshape(-1) for p in preds])
        tobj = torch.zeros_like(obj_logits)
        box_sum, cls_sum = torch.zeros(self.nl, device=dev), torch.zeros(self.nl, device=dev)
        if pos.n:
            raw = gather_predictions(preds, pos).float()
            pbox = decode_boxes(raw, pos, self.anchors.to(dev), self.strides)
            iou = bbox_iou(pbox, targets[pos.gt, 2:6].float(), kind="ciou")
            box_sum = box_sum.index_add(0, pos.level, 1.0 - iou)
            val = (1.0 - self.gr) + self.gr * iou.detach().clamp(min=0)
            keys = cell_keys(pos, na, shapes, bs)
            if self.dedup:
                tobj = tobj.scatter_reduce(0, keys, val, reduce="amax")
            else:  # official: the last write of a prediction named twice (positives in the official order)
                order = torch.arange(pos.n, device=dev)
                last = torch.full_like(tobj, -1, dtype=torch.long).scatter_reduce(0, keys, order, reduce="amax")
                hit = last >= 0
                tobj[hit] = val[last[hit]]
            if self.nc > 1:
                t = torch.full((pos.n, self.nc), self.cn, device=dev)
                t[torch.arange(pos.n, device=dev), targets[pos.gt, 1].long()] = self.cp
                cls_sum = cls_sum.index_add(0, pos.level, self._bce(raw[:, 5:], t, self.cls_pw).sum(1))
        obj = self._bce(obj_logits, tobj, self.obj_pw)
        obj_sum = torch.stack([x.sum() for x in obj.split(sizes)])
        return box_sum, obj_sum, cls_sum, n_pos, n_cells

    def _split(self, outputs):
        if isinstance(outputs, dict):
            main, aux = outputs["main"], outputs.get("aux")
        else:
            main, aux = outputs, None
        if len(main) != self.nl:
            raise ValueError(f"YOLOv7Loss: {len(main)} output levels, expected {self.nl}")
        if aux is not None and not self.aux:
            raise ValueError("YOLOv7Loss: the model returned auxiliary outputs but the loss was built with aux=False")
        if aux is None and self.aux:
            raise ValueError("YOLOv7Loss: built with aux=True but the model returned no auxiliary outputs")
        if aux is not None and len(aux) != self.nl:
            raise ValueError(f"YOLOv7Loss: {len(aux)} auxiliary levels, expected {self.nl}")
        return list(main), (list(aux) if aux is not None else None)

    def __call__(self, outputs, targets: torch.Tensor, epoch: int = 0):
        main, aux = self._split(outputs)
        dev = main[0].device
        targets = targets.to(dev).float().reshape(-1, 6)
        bs = main[0].shape[0]
        fine = self.assigner(main, targets, coarse=False, ota=self.ota)
        heads = [self.head_sums(main, fine, targets)]
        if aux is not None:
            coarse = self.assigner(main, targets, coarse=True, ota=self.ota)  # lead-guided
            heads.append(self.head_sums(aux, coarse, targets))

        # one all-reduce for every normalizer: [n_pos, n_cells] per head, then the batch size
        counts = torch.cat([torch.cat((h[3], h[4])) for h in heads] + [torch.tensor([float(bs)], device=dev)])
        counts = mean_over_ranks(counts)
        global_bs = counts[-1] * world_size()
        bal = torch.tensor(self.balance, device=dev)
        lbox = lobj = lcls = torch.zeros((), device=dev)
        for i, (box_s, obj_s, cls_s, _, _) in enumerate(heads):
            n_pos, n_cells = counts[2 * self.nl * i:2 * self.nl * (i + 1)].view(2, self.nl)
            wgt = 1.0 if i == 0 else self.aux_weight
            # a level with no positive on any rank has a zero sum: divide it by 1, not by 0 (a mean below 1,
            # from positives on some ranks only, must stay as it is for exactness)
            n_pos = torch.where(n_pos > 0, n_pos, torch.ones_like(n_pos))
            lbox = lbox + wgt * (box_s / n_pos).sum()
            lobj = lobj + wgt * (bal * obj_s / n_cells.clamp(min=1)).sum()
            lcls = lcls + wgt * (cls_s / (n_pos * self.nc)).sum()

        h0, w0 = main[0].shape[2:4]
        area = h0 * self.strides[0] * w0 * self.strides[0]
        g = scaled_gains(self.hyp, self.nl, self.nc, area)
        items = torch.stack((g["box"] * lbox, g["obj"] * lobj, g["cls"] * lcls))
        return items.sum() * global_bs, items.detach()

