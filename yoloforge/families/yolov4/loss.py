"""YOLOv4 / Scaled-YOLOv4 loss: multi-anchor assignment, IoU box loss, IoU-target objectness, smoothed BCE.

The "bag of freebies" of YOLOv4 (Bochkovskiy et al., arXiv:2004.10934, Sec. 3.4) that live in the
loss, with the numbers of the official code (WongKinYiu/ScaledYOLOv4 branch ``yolov4-csp``
``utils/loss.py`` ``compute_loss``; AlexeyAB/darknet ``cfg/yolov4-csp.cfg`` ``[yolo]``):

* **eliminate grid sensitivity** -- the box offsets are the model's own decode (``AnchorHead``):
  ``"scaled"``: ``xy = 2 sigmoid(t) - 0.5``, ``wh = (2 sigmoid(t))^2 anchor`` (Scaled-YOLOv4 /
  darknet ``new_coords=1``); ``"darknet"``: ``xy = k sigmoid(t) - (k - 1) / 2``, ``wh = exp(t) anchor``
  (``scale_x_y = k``, YOLOv4-tiny). With the scaled decode a centre can be reached from the two
  nearest neighbouring cells too, which are then also assigned (``neighbor_cells``, as the official
  PyTorch code does); not with the darknet decode, whose offsets stay within about one cell.
* **several anchors per ground truth**: ``anchor_match="ratio"`` (the official PyTorch rule of both
  ScaledYOLOv4 branches, the default): every anchor of every level whose width and height ratios to
  the box are both within ``[1/anchor_t, anchor_t]``; ``anchor_match="iou"`` (darknet ``iou_thresh``,
  used for the darknet-decoded YOLOv4-tiny): every anchor whose shape IoU with the box (both centred)
  is above ``iou_t``, and the best anchor over all levels always (ties all count).
* **CIoU box loss** ``1 - CIoU`` (``iou_loss``: ``ciou`` | ``diou`` | ``giou`` | ``iou``), mean over
  the positives of a level.
* **objectness** BCE over all cells; the target of a positive is ``(1 - gr) + gr * IoU.clamp(0)``
  (IoU detached, ``gr = 1``); levels weighted by ``balance`` = 4.0, 1.0, 0.4 (P3-P5), 4.0, 1.0, 0.4, 0.1
  (P3-P6), 4.0, 1.0, 0.5, 0.4, 0.1 (P3-P7); the two-level tiny model (strides 16, 32) takes the
  P4/P5 weights 1.0, 0.4.
* **class label smoothing** -- BCE per class with targets ``1 - eps / 2`` for the true class and
  ``eps / 2`` for the others (``eps = label_smoothing``; the ``smooth_BCE`` rule of the official code,
  i.e. the smoothed one-hot ``(1 - eps) y + eps / K`` with ``K = 2`` for each binary label). No class
  loss for ``nc == 1``.

Gains as in the official ``train.py`` / ``compute_loss``: ``box * 3 / nl``, ``obj * 3 / nl`` (times 1.4
for 4+ levels), ``cls * nc / 80 * 3 / nl``. The returned total is ``(box + obj + cls) * batch_size``
(YOLOv5-style recipe with gradient accumulation to a nominal batch); ``items`` are the three terms
before that factor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from yoloforge.assign.anchor_match import NEIGHBOUR_OFFSETS, neighbour_cells
from yoloforge.models.box_coder import ANCHOR_DECODES, anchor_offsets

from yoloforge.losses.iou import bbox_iou

__all__ = ["YOLOv4Loss", "build_targets", "anchor_shape_iou", "smooth_bce_targets"]

BALANCE = {1: (1.0,), 2: (1.0, 0.4), 3: (4.0, 1.0, 0.4), 4: (4.0, 1.0, 0.4, 0.1), 5: (4.0, 1.0, 0.5, 0.4, 0.1)}

DEFAULTS = dict(box=0.05, obj=0.7, cls=0.3, cls_pw=1.0, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
                label_smoothing=0.0, iou_loss="ciou", gr=1.0, anchor_match="ratio", neighbor_cells=True,
                neighbor_rule="fraction")


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """Label-smoothing BCE targets ``(positive, negative) = (1 - eps / 2, eps / 2)``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def anchor_shape_iou(wh: torch.Tensor, anchors: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of boxes ``wh`` (M, 2) and ``anchors`` (A, 2) placed at the same centre -> (M, A)."""
    inter = torch.minimum(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter + eps)


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat((b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2), -1)


def build_targets(targets: torch.Tensor, anchors: torch.Tensor, strides, shapes, iou_t: float = 0.2,
                  anchor_match: str = "iou", anchor_t: float = 4.0, neighbor_cells: bool = True,
                  neighbor_rule: str = "fraction"):
    """Assign ground truths to (level, anchor, cell).

    ``targets`` (M, 6) ``[batch_idx, cls, x1, y1, x2, y2]`` input pixels; ``anchors`` (nl, na, 2) pixels;
    ``shapes`` the (H, W) of each level. Returns one tuple per level
    ``(b, a, gj, gi, tbox, tcls, gt_index)``: image, anchor and cell indices (long), ``tbox`` (n, 4)
    ``cx, cy, w, h`` in grid units with the centre relative to the cell's top-left corner, the class
    and the row of ``targets`` each positive comes from. Boxes of zero width or height are ignored.

    ``neighbor_rule`` decides the right / lower neighbour: ``"fraction"`` (ScaledYOLOv4 yolov4-csp
    ``build_targets``): ``frac(g) > 0.5`` and ``g < W - 1``; ``"inverse"`` (yolov4-large, as YOLOv5 /
    yolov7): ``frac(W - g) < 0.5`` and ``W - g > 1``. They differ for centres on a cell edge
    (integer ``g``), where the inverse rule adds both neighbours.
    """
    if neighbor_rule not in ("fraction", "inverse"):
        raise ValueError(f"neighbor_rule must be 'fraction' or 'inverse', got {neighbor_rule!r}")
    nl, na = anchors.shape[:2]
    device = targets.device
    targets = targets.float()
    anchors = anchors.to(device=device, dtype=torch.float32)
    cxy = (targets[:, 2:4] + targets[:, 4:6]) / 2
    wh = targets[:, 4:6] - targets[:, 2:4]
    valid = (wh > 0).all(1)
    flat = anchors.view(-1, 2)
    if anchor_match == "iou":
        iou = anchor_shape_iou(wh.clamp(min=0), flat)
        best = iou.max(1, keepdim=True).values if len(targets) else iou[:, :1]
        pos = (iou > iou_t) | (iou >= best)
    elif anchor_match == "ratio":
        r = wh.clamp(min=1e-9)[:, None] / flat[None]
        pos = torch.maximum(r, 1 / r).max(-1).values < anchor_t
    else:
        raise ValueError(f"anchor_match must be 'iou' or 'ratio', got {anchor_match!r}")
    pos = (pos & valid[:, None]).view(-1, nl, na)

    out = []
    for i in range(nl):
        h, w = int(shapes[i][0]), int(shapes[i][1])
        s = float(strides[i])
        m, a = pos[:, i].nonzero(as_tuple=True)
        gxy, gwh = cxy[m] / s, wh[m] / s
        offsets = torch.zeros_like(gxy)
        if neighbor_cells and len(m):
            # the centre's cell for every row, then the left, upper, right and lower neighbours, side by side
            use = neighbour_cells(gxy, (h, w), 0.5, neighbor_rule)  # (5, P)
            idx = [k.nonzero(as_tuple=True)[0] for k in use]
            offs = [(torch.tensor(o, dtype=gxy.dtype, device=device) * 0.5).expand(len(j), 2)
                    for o, j in zip(NEIGHBOUR_OFFSETS, idx)]
            idx = torch.cat(idx)
            m, a, gxy, gwh, offsets = m[idx], a[idx], gxy[idx], gwh[idx], torch.cat(offs)
        gij = (gxy - offsets).floor().long()
        gi, gj = gij[:, 0].clamp(0, w - 1), gij[:, 1].clamp(0, h - 1)
        cell = torch.stack((gi, gj), 1).to(gxy.dtype)
        tbox = torch.cat((gxy - cell, gwh), 1)
        out.append((targets[m, 0].long(), a, gj, gi, tbox, targets[m, 1].long(), m))
    return out


class YOLOv4Loss:
    """Scaled-YOLOv4 / YOLOv4 composite loss (see the module docstring).

    ``YOLOv4Loss(nc, anchors (nl, na, 2) px, strides, hyp, decode="scaled"|"darknet", scale_xy)``;
    ``loss(outputs, targets (M, 6), epoch) -> (total, items [box, obj, cls])`` where ``outputs`` is the
    model's train-mode ``dict(main=[(B, na, H, W, 5 + nc)], aux=None)`` (or the list itself).
    Hyper-parameters (missing keys take :data:`DEFAULTS`): ``box obj cls cls_pw obj_pw iou_t anchor_t
    label_smoothing iou_loss gr anchor_match neighbor_cells``.
    """

    names = ("box", "obj", "cls")

    def __init__(self, nc: int, anchors, strides, hyp: dict | None = None, decode: str = "scaled",
                 scale_xy: float = 1.0):
        self.nc = int(nc)
        self.anchors = torch.as_tensor(anchors, dtype=torch.float32).detach().clone().cpu()
        if self.anchors.dim() == 2:  # (nl, na * 2) pixel lists
            self.anchors = self.anchors.view(self.anchors.shape[0], -1, 2)
        self.strides = [float(s) for s in strides]
        self.nl = len(self.strides)
        if self.anchors.shape[0] != self.nl:
            raise ValueError(f"YOLOv4Loss: {self.anchors.shape[0]} anchor levels but {self.nl} strides")
        if decode not in ANCHOR_DECODES:
            raise ValueError(f"YOLOv4Loss: unknown decode {decode!r}")
        self.decode, self.scale_xy = decode, float(scale_xy)
        h = {**DEFAULTS, **{k: v for k, v in (hyp or {}).items() if k in DEFAULTS}}
        if h["iou_loss"] not in ("ciou", "diou", "giou", "iou"):
            raise ValueError(f"YOLOv4Loss: iou_loss must be ciou, diou, giou or iou, got {h['iou_loss']!r}")
        self.hyp = h
        self.cp, self.cn = smooth_bce_targets(float(h["label_smoothing"]))
        self.balance = BALANCE.get(self.nl, BALANCE[5] + (0.1,) * max(self.nl - 5, 0))
        s = 3.0 / self.nl
        self.gain_box = h["box"] * s
        self.gain_obj = h["obj"] * s * (1.4 if self.nl >= 4 else 1.0)
        self.gain_cls = h["cls"] * self.nc / 80.0 * s
        self.neighbor = bool(h["neighbor_cells"]) and decode == "scaled"

    def pred_boxes(self, ps: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Raw (n, >=4) -> (n, 4) ``cx, cy, w, h`` in grid units relative to the cell (the head's coder; the
        darknet ``exp`` capped at ``e^8`` against overflow)."""
        return torch.cat(anchor_offsets(ps, anchors, self.decode, self.scale_xy, wh_clamp=8.0), 1)

    def __call__(self, outputs, targets: torch.Tensor, epoch: int = 0):
        preds = outputs["main"] if isinstance(outputs, dict) else outputs
        device = preds[0].device
        bs = preds[0].shape[0]
        anchors = self.anchors.to(device)
        assigned = build_targets(targets.to(device), anchors, self.strides, [p.shape[2:4] for p in preds],
                                 self.hyp["iou_t"], self.hyp["anchor_match"], self.hyp["anchor_t"], self.neighbor,
                                 self.hyp["neighbor_rule"])
        zero = torch.zeros((), device=device)
        lbox, lobj, lcls = zero, zero, zero
        obj_pw = torch.tensor([self.hyp["obj_pw"]], device=device)
        cls_pw = torch.tensor([self.hyp["cls_pw"]], device=device)
        gr = float(self.hyp["gr"])
        for i, p in enumerate(preds):
            p = p.float()
            b, a, gj, gi, tbox, tcls, _ = assigned[i]
            tobj = torch.zeros_like(p[..., 4])
            if len(b):
                ps = p[b, a, gj, gi]
                pbox = self.pred_boxes(ps, anchors[i][a] / self.strides[i])
                iou = bbox_iou(_cxcywh_to_xyxy(pbox), _cxcywh_to_xyxy(tbox), self.hyp["iou_loss"])
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = (1.0 - gr) + gr * iou.detach().clamp(0)
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], self.cn)
                    t[torch.arange(len(b), device=device), tcls] = self.cp
                    lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], t, pos_weight=cls_pw)
            lobj = lobj + F.binary_cross_entropy_with_logits(p[..., 4], tobj, pos_weight=obj_pw) * self.balance[i]
        lbox, lobj, lcls = lbox * self.gain_box, lobj * self.gain_obj, lcls * self.gain_cls
        items = torch.stack((lbox, lobj, lcls))
        return items.sum() * bs, items.detach()
