"""The box coders: how raw head outputs become boxes, for the heads, the assigners and the losses alike.

**Anchor points** (YOLOv6, Li et al., arXiv:2209.02976, Sec. 2.3.3 "anchor-free"): at every cell of every
output level the head predicts the distances (left, top, right, bottom) from the cell centre to the box
sides. The cell centre is ``((x + offset) * stride, (y + offset) * stride)`` with ``offset = 0.5``. During
the ATSS warm-up epochs each point also carries a square "anchor box" of side ``5 * stride`` centred on it
(meituan/YOLOv6@0.2.0 ``yolov6/assigners/anchor_generator.py``: grid_cell_size 5.0, offset 0.5). With DFL
each side is a distribution over ``0..reg_max`` whose expectation is the distance. Point order everywhere:
level by level (stride 8 first), row-major inside a level (x fastest).

**Anchors** (YOLOv7, Scaled-YOLOv4, YOLOv4-tiny): each (anchor, cell) predicts ``tx, ty, tw, th``:

* ``"scaled"`` (Scaled-YOLOv4 / YOLOv7, darknet ``new_coords=1``, the "grid sensitivity" fix of YOLOv4):
  ``xy = 2 sigmoid(t) - 0.5``, ``wh = (2 sigmoid(t))^2 * anchor``: a centre reaches ``(-0.5, 1.5)`` cells
  around its cell and a size ``[0, 4]`` anchors;
* ``"darknet"`` (YOLOv4-tiny, ``scale_x_y = k``): ``xy = k sigmoid(t) - (k - 1) / 2``, ``wh = exp(t) * anchor``.

The offsets are relative to the cell's top-left corner, in cells; the heads add the cell and scale by the
stride, the losses compare in grid units. One coder for all: a change to a decode changes inference,
assignment and loss together.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _hw(f) -> tuple[int, int]:
    """(h, w) of a feature map tensor (..., H, W) or of an (h, w) pair."""
    if isinstance(f, torch.Tensor):
        if torch.jit.is_tracing():  # keep the sizes symbolic: an export with dynamic height/width
            return f.shape[-2], f.shape[-1]
        return int(f.shape[-2]), int(f.shape[-1])
    h, w = f
    return int(h), int(w)


def make_anchor_points(feats: Sequence, strides: Sequence[float], offset: float = 0.5,
                       device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre points of all levels.

    Args:
        feats: per level a feature map (…, H, W) or an ``(H, W)`` pair.
        strides: per level stride in input pixels.
        offset: position of the point inside its cell (0.5 = centre).
    Returns:
        ``points`` (N, 2) as (x, y) in input pixels and ``stride_tensor`` (N, 1), N = sum H*W.
    """
    if device is None:
        device = next((f.device for f in feats if isinstance(f, torch.Tensor)), torch.device("cpu"))
    points, stride_list = [], []
    out_dtype, dtype = dtype, torch.float32  # built in fp32 (exact for any grid), cast at the end
    for f, s in zip(feats, strides):
        h, w = _hw(f)
        s = float(s)
        xs = (torch.arange(w, device=device, dtype=dtype) + offset) * s
        ys = (torch.arange(h, device=device, dtype=dtype) + offset) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((gx, gy), -1).reshape(-1, 2))
        stride_list.append(torch.ones_like(gx).reshape(-1, 1) * s)
    if not points:
        return torch.zeros(0, 2, device=device, dtype=out_dtype), torch.zeros(0, 1, device=device, dtype=out_dtype)
    return torch.cat(points).to(out_dtype), torch.cat(stride_list).to(out_dtype)


def make_atss_anchors(feats: Sequence, strides: Sequence[float], cell_size: float = 5.0, offset: float = 0.5,
                      device=None, dtype=torch.float32):
    """Square anchors of side ``cell_size * stride`` centred on the anchor points (ATSS warm-up).

    Returns:
        ``anchors`` (N, 4) xyxy pixels, ``points`` (N, 2) pixels, ``n_level_anchors`` list[int]
        (H*W per level) and ``stride_tensor`` (N, 1).
    """
    points, stride_tensor = make_anchor_points(feats, strides, offset, device=device, dtype=dtype)
    half = stride_tensor * (cell_size / 2)
    anchors = torch.cat((points - half, points + half), -1)
    n_level = [h * w for h, w in (_hw(f) for f in feats)]
    return anchors, points, n_level, stride_tensor


def distances_to_boxes(ltrb: torch.Tensor, points: torch.Tensor, stride_tensor: torch.Tensor | None = None):
    """Decode (…, N, 4) ltrb distances at ``points`` (N, 2) into xyxy boxes.

    When ``stride_tensor`` (N, 1) is given, the distances are in units of stride (the head's raw
    output) and are scaled to pixels first; otherwise they are already in pixels.
    """
    if stride_tensor is not None:
        ltrb = ltrb * stride_tensor
    lt, rb = ltrb.split(2, dim=-1)
    return torch.cat((points - lt, points + rb), -1)


def dfl_expectation(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution Focal Loss decoding (GFL, Li et al. 2020): (…, 4 * (reg_max + 1)) logits laid out
    side-major (side * (reg_max + 1) + bin) -> (…, 4) expected distances ``sum_i softmax_i * i``."""
    bins = torch.arange(reg_max + 1, device=logits.device, dtype=logits.dtype)
    prob = logits.unflatten(-1, (4, reg_max + 1)).softmax(-1)
    return (prob * bins).sum(-1)


def boxes_to_distances(points: torch.Tensor, boxes: torch.Tensor, reg_max: float) -> torch.Tensor:
    """The inverse of :func:`distances_to_boxes` for DFL targets: (…, 4) xyxy boxes around (…, 2) points ->
    ltrb distances clamped to ``[0, reg_max - 0.01]`` (meituan/YOLOv6 0.2.0 yolov6/utils/general.py
    ``bbox2dist``), so the upper DFL bin never exceeds ``reg_max``."""
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    return torch.cat((lt, rb), -1).clamp(0, reg_max - 0.01)


ANCHOR_DECODES = ("scaled", "darknet")


def anchor_offsets(t: torch.Tensor, anchor_wh: torch.Tensor, kind: str = "scaled", scale_xy: float = 1.0,
                   wh_clamp: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (…, 4) ``tx, ty, tw, th`` -> the centre offset from the cell's corner (…, 2) in cells and the size
    (…, 2) in the units of ``anchor_wh`` (pixels for the heads, cells for the losses).

    ``wh_clamp`` caps ``tw, th`` before the darknet ``exp`` (the training loss's guard against overflow); the
    inference decode leaves it off and runs the ``exp`` in fp32."""
    if kind == "scaled":
        s = t[..., :4].sigmoid()
        return s[..., :2] * 2 - 0.5, (s[..., 2:4] * 2) ** 2 * anchor_wh
    if kind == "darknet":
        xy = t[..., :2].sigmoid() * scale_xy - (scale_xy - 1) / 2
        twh = t[..., 2:4].to(torch.promote_types(t.dtype, torch.float32))
        if wh_clamp is not None:
            twh = twh.clamp(max=wh_clamp)
        return xy, twh.exp().to(t.dtype) * anchor_wh
    raise ValueError(f"anchor decode must be one of {ANCHOR_DECODES}, got {kind!r}")
