"""Candidate selection for anchor-based heads (YOLOv7, Scaled-YOLOv4 large/CSP).

Which (level, anchor, cell) predictions may answer for a ground truth, as in the official training
code (WongKinYiu/yolov7 utils/loss.py, ``find_3_positive`` / ``find_5_positive``; the same rule as
YOLOv5's ``build_targets``, used by ScaledYOLOv4's yolov4-large branch):

1. **anchor ratio filter**: with ``r = gt_wh / anchor_wh``, the pair (gt, anchor) is kept when
   ``max(r, 1 / r) < anchor_t`` for both width and height (``anchor_t`` 4.0 in hyp.scratch.*). The
   decode ``wh = (2 sigmoid(t))^2 * anchor`` can only reach ``[0, 4] * anchor``, so pairs beyond the
   threshold could not be regressed.
2. **the cell and its nearest neighbours**: the gt centre in grid units ``g = c / stride`` lies in cell
   ``floor(g)``; a neighbour cell in x is added toward the side the centre is closer to, i.e. the cell
   ``floor(g_x - radius * d)`` for ``d = +1`` when ``frac(g_x) < radius`` and ``g_x > 1``, for ``d = -1``
   when ``frac(W - g_x) < radius`` and ``W - g_x > 1``; the same in y. With ``radius = 0.5`` (the
   "fine" set, ``find_3_positive``) exactly one x-neighbour and one y-neighbour are added away from the
   borders, so 3 cells per (gt, anchor); with ``radius = 1.0`` (the "coarse" set of the auxiliary head,
   ``find_5_positive``) all four neighbours, so 5 cells. The decode ``xy = (2 sigmoid(t) - 0.5 + grid)``
   reaches ``(-0.5, 1.5)`` around a cell, so a fine neighbour can still reach the centre exactly, a
   coarse one (up to ~2 cells away) often cannot: the "coarse labels cannot be perfect" constraint of
   the YOLOv7 paper (sec. 4.3) comes from this decode.

Cells are clamped into the grid. Everything is vectorized over gts and anchors; the loop runs over the
(3-5) levels only.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from yoloforge.models.box_coder import anchor_offsets

# direction of each candidate cell: centre, then x-low, y-low, x-high, y-high neighbours (the cell of a
# neighbour is floor(g - radius * offset))
NEIGHBOUR_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))


class Candidates(NamedTuple):
    """Flat list of K (prediction, gt) pairs; all fields (K,) long.

    ``level`` index into the head's levels, ``b`` image, ``a`` anchor of that level, ``gj``/``gi``
    cell row/column, ``gt`` row of the ``targets`` tensor the pair came from (-1 where not tied to one gt).
    """

    level: torch.Tensor
    b: torch.Tensor
    a: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    gt: torch.Tensor

    @property
    def n(self) -> int:
        """Number of pairs K (``len()`` stays the tuple's field count)."""
        return int(self.b.shape[0])

    def select(self, mask: torch.Tensor) -> "Candidates":
        return Candidates(*(f[mask] for f in self))

    @staticmethod
    def empty(device=None) -> "Candidates":
        z = torch.zeros(0, dtype=torch.long, device=device)
        return Candidates(z, z, z, z, z, z)


def as_anchor_tensor(anchors, device) -> torch.Tensor:
    a = anchors if torch.is_tensor(anchors) else torch.tensor(anchors, dtype=torch.float32)
    a = a.to(device=device, dtype=torch.float32)
    if a.dim() == 2:  # (nl, 2 * na) as in the yaml configs
        a = a.view(a.shape[0], -1, 2)
    if a.dim() != 3 or a.shape[-1] != 2:
        raise ValueError(f"anchors must be (nl, na, 2) pixels, got shape {tuple(a.shape)}")
    return a


def find_candidates(targets: torch.Tensor, anchors, strides: Sequence[float], shapes: Sequence[tuple],
                    anchor_t: float = 4.0, radius: float = 0.5) -> Candidates:
    """Candidate (level, image, anchor, cell) for every gt.

    Args:
        targets: (M, 6) ``[batch_idx, cls, x1, y1, x2, y2]`` input pixels.
        anchors: (nl, na, 2) anchor sizes in input pixels.
        strides: nl level strides.
        shapes: nl ``(H, W)`` grid sizes.
        anchor_t: anchor ratio threshold (``hyp["anchor_t"]``).
        radius: 0.5 = cell + its two nearest neighbours (fine); 1.0 = cell + four neighbours (coarse).
    Returns:
        :class:`Candidates`, levels in order, then neighbour offset, then anchor, then gt.
    """
    device = targets.device
    anchors = as_anchor_tensor(anchors, device)
    nl, na = anchors.shape[:2]
    if len(strides) != nl or len(shapes) != nl:
        raise ValueError(f"find_candidates: {nl} anchor levels but {len(strides)} strides and {len(shapes)} shapes")
    m = targets.shape[0]
    if m == 0:
        return Candidates.empty(device)
    t = targets.float()
    cxy = (t[:, 2:4] + t[:, 4:6]) / 2
    wh = (t[:, 4:6] - t[:, 2:4]).clamp(min=0)
    offs = torch.tensor(NEIGHBOUR_OFFSETS, dtype=torch.float32, device=device) * radius  # (5, 2)
    a_idx = torch.arange(na, device=device)[:, None].expand(na, m)  # (na, M)
    g_idx = torch.arange(m, device=device)[None].expand(na, m)
    out = []
    for lvl in range(nl):
        s = float(strides[lvl])
        h, w = int(shapes[lvl][0]), int(shapes[lvl][1])
        # 1. ratio filter per (anchor, gt)
        r = wh[None] / anchors[lvl][:, None]  # (na, M, 2)
        keep = torch.maximum(r, 1 / r.clamp(min=1e-9)).amax(-1) < anchor_t  # (na, M)
        gxy = (cxy / s)[None].expand(na, m, 2)[keep]  # (P, 2) grid units
        a, g = a_idx[keep], g_idx[keep]
        if gxy.shape[0] == 0:
            continue
        # 2. centre cell and the neighbours toward which the centre leans
        use = neighbour_cells(gxy, (h, w), radius)  # (5, P)
        cells = (gxy[None] - offs[:, None]).floor().long()  # (5, P, 2)
        cells, aa, gg = cells[use], a[None].expand(5, -1)[use], g[None].expand(5, -1)[use]
        gi = cells[:, 0].clamp(0, w - 1)
        gj = cells[:, 1].clamp(0, h - 1)
        out.append(Candidates(torch.full_like(gi, lvl), t[gg, 0].long(), aa, gj, gi, gg))
    if not out:
        return Candidates.empty(device)
    return Candidates(*(torch.cat(f) for f in zip(*out)))


def neighbour_cells(gxy: torch.Tensor, shape: tuple, radius: float = 0.5, rule: str = "inverse") -> torch.Tensor:
    """Which of the 5 cells of ``NEIGHBOUR_OFFSETS`` (the centre's own, then the x-low, y-low, x-high, y-high
    neighbour) answer for each of the (P, 2) grid-unit centres ``gxy`` on a grid of ``shape`` (H, W): (5, P)
    bool. A low neighbour when ``frac(g) < radius`` and ``g > 1``. A high one, by ``rule``: ``"inverse"``
    (yolov7, YOLOv5, ScaledYOLOv4 yolov4-large) ``frac(W - g) < radius`` and ``W - g > 1``; ``"fraction"``
    (ScaledYOLOv4 yolov4-csp ``build_targets``, radius 0.5 only) ``frac(g) > 0.5`` and ``g < W - 1``. The
    two differ for centres on a cell edge (integer ``g``), where the inverse rule adds both neighbours."""
    size = torch.tensor([shape[1], shape[0]], dtype=gxy.dtype, device=gxy.device)
    low = (gxy % 1 < radius) & (gxy > 1)  # (P, 2): x-low, y-low
    if rule == "inverse":
        inv = size - gxy
        high = (inv % 1 < radius) & (inv > 1)
    elif rule == "fraction":
        high = (gxy % 1 > 0.5) & (gxy < size - 1)
    else:
        raise ValueError(f"neighbour rule must be 'inverse' or 'fraction', got {rule!r}")
    return torch.stack((torch.ones_like(low[:, 0]), low[:, 0], low[:, 1], high[:, 0], high[:, 1]))


def cell_keys(c: Candidates, na: int, shapes: Sequence[tuple], batch_size: int) -> torch.Tensor:
    """A unique integer per prediction (level, image, anchor, row, column): (K,) long."""
    sizes = torch.tensor([batch_size * na * int(h) * int(w) for h, w in shapes], device=c.b.device)
    base = torch.cumsum(sizes, 0) - sizes
    wid = torch.tensor([int(w) for _, w in shapes], device=c.b.device)[c.level]
    hgt = torch.tensor([int(h) for h, _ in shapes], device=c.b.device)[c.level]
    return base[c.level] + ((c.b * na + c.a) * hgt + c.gj) * wid + c.gi


def unique_cells(c: Candidates, na: int, shapes: Sequence[tuple], batch_size: int) -> Candidates:
    """The distinct predictions among the candidates (``gt`` set to -1): several gts, or a clamped
    neighbour, may name the same prediction."""
    if c.n == 0:
        return c
    key = cell_keys(c, na, shapes, batch_size)
    _, inv = torch.unique(key, return_inverse=True)
    first = torch.full((int(inv.max()) + 1,), c.n, dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inv, torch.arange(c.n, device=key.device), reduce="amin")
    u = c.select(first)
    return u._replace(gt=torch.full_like(u.gt, -1))


def gather_predictions(preds: Sequence[torch.Tensor], c: Candidates) -> torch.Tensor:
    """Rows of the raw level outputs ``(B, na, H, W, C)`` named by the candidates -> (K, C)."""
    if c.n == 0:
        return preds[0].new_zeros(0, preds[0].shape[-1])
    out = preds[0].new_empty(c.n, preds[0].shape[-1])
    for lvl, p in enumerate(preds):
        sel = c.level == lvl
        if sel.any():
            out[sel] = p[c.b[sel], c.a[sel], c.gj[sel], c.gi[sel]]
    return out


def decode_boxes(raw: torch.Tensor, c: Candidates, anchors, strides: Sequence[float]) -> torch.Tensor:
    """"Scaled" decode of the candidates' raw ``tx, ty, tw, th`` -> (K, 4) xyxy input pixels:
    ``xy = (2 sigmoid(t) - 0.5 + cell) * stride``, ``wh = (2 sigmoid(t))^2 * anchor``."""
    anchors = as_anchor_tensor(anchors, raw.device).to(raw.dtype)
    s = torch.tensor([float(x) for x in strides], dtype=raw.dtype, device=raw.device)[c.level, None]
    grid = torch.stack((c.gi, c.gj), -1).to(raw.dtype)
    xy, wh = anchor_offsets(raw, anchors[c.level, c.a])
    xy = (xy + grid) * s
    return torch.cat((xy - wh / 2, xy + wh / 2), -1)
