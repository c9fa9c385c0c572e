"""YOLOv4 loss: multi-anchor assignment, neighbour cells, label smoothing, optimisation, edge cases."""
from __future__ import annotations

import math

import pytest
import torch

from yoloforge.families.yolov4.loss import YOLOv4Loss, anchor_shape_iou, build_targets, smooth_bce_targets

STRIDES = [8, 16, 32]
ANCHORS = torch.tensor([[[10, 13], [16, 30], [33, 23]],
                        [[30, 61], [62, 45], [59, 119]],
                        [[116, 90], [156, 198], [373, 326]]], dtype=torch.float32)
SHAPES = [(8, 8), (4, 4), (2, 2)]  # 64 x 64 input


def box(cx, cy, w, h, b=0, c=0):
    return [b, c, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def positives(assigned):
    """{(level, anchor)} over all positives."""
    return {(i, int(a)) for i, lvl in enumerate(assigned) for a in lvl[1]}


def test_anchor_shape_iou():
    iou = anchor_shape_iou(torch.tensor([[10.0, 20.0]]), torch.tensor([[10.0, 20.0], [20.0, 10.0], [5.0, 10.0]]))
    assert iou[0].tolist() == pytest.approx([1.0, 100 / 300, 0.25])


@pytest.mark.parametrize("iou_t", [0.213, 0.3, 0.5, 1.0])
def test_multi_anchor_assignment_matches_threshold(iou_t):
    """A 40x40 box centred in a cell: positive = IoU above iou_t, plus the best anchor (always)."""
    t = torch.tensor([box(20, 20, 40, 40)], dtype=torch.float32)
    iou = anchor_shape_iou(torch.tensor([[40.0, 40.0]]), ANCHORS.view(-1, 2))[0]
    expect = {(k // 3, k % 3) for k in range(9) if iou[k] > iou_t} | {(int(iou.argmax()) // 3, int(iou.argmax()) % 3)}
    got = positives(build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=iou_t, neighbor_cells=False))
    assert got == expect
    if iou_t == 1.0:
        assert len(got) == 1  # only the best
    if iou_t == 0.213:
        assert len(got) > 1  # YOLOv4: several anchors for one ground truth


def test_hand_built_assignment():
    """gt 32x60 at (36, 28). Shape IoUs: P3 anchors 0.068 (10x13), 0.250 (16x30), 0.379 (33x23);
    P4 0.923 (30x61, the best), 0.440 (62x45), 0.274 (59x119); P5 at most 0.184."""
    t = torch.tensor([box(36, 28, 32, 60, b=1, c=2)], dtype=torch.float32)
    a = build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=0.3, neighbor_cells=False)
    assert positives(a) == {(0, 2), (1, 0), (1, 1)}
    b, anc, gj, gi, tbox, tcls, gt = a[1]
    assert b.tolist() == [1, 1] and anc.tolist() == [0, 1] and tcls.tolist() == [2, 2] and gt.tolist() == [0, 0]
    assert gi.tolist() == [2, 2] and gj.tolist() == [1, 1]  # 36/16 = 2.25, 28/16 = 1.75
    assert tbox[0].tolist() == pytest.approx([0.25, 0.75, 2.0, 3.75])
    assert (a[0][3].tolist(), a[0][2].tolist()) == ([4], [3])  # P3 cell of (36, 28) / 8
    a2 = build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=0.2, neighbor_cells=False)
    assert positives(a2) == {(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
    a3 = build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=0.5, neighbor_cells=False)
    assert positives(a3) == {(1, 0)}  # only the best anchor
    a4 = build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=0.95, neighbor_cells=False)
    assert positives(a4) == {(1, 0)}  # the best anchor is kept even below the threshold


def test_neighbour_cells():
    """Scaled decode: a centre in the lower-right quarter of cell (2, 1) also goes to its right and
    lower neighbours; the cell-relative centre then lies in (-0.5, 1.5)."""
    t = torch.tensor([box(8 * 2.75, 8 * 1.75, 12, 14)], dtype=torch.float32)
    lvl = build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=1.0, neighbor_cells=True)[0]
    cells = sorted(zip(lvl[3].tolist(), lvl[2].tolist()))  # (gi, gj)
    assert cells == [(2, 1), (2, 2), (3, 1)]
    assert ((lvl[4][:, :2] > -0.5) & (lvl[4][:, :2] < 1.5)).all()
    # centre in the upper-left quarter but on the border: no neighbour outside the map
    t = torch.tensor([box(8 * 0.25, 8 * 0.25, 12, 14)], dtype=torch.float32)
    lvl = build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=1.0, neighbor_cells=True)[0]
    assert list(zip(lvl[3].tolist(), lvl[2].tolist())) == [(0, 0)]


def test_ratio_matching_and_degenerate_boxes():
    t = torch.tensor([box(20, 20, 40, 40), box(30, 30, 0, 10)], dtype=torch.float32)
    a = build_targets(t, ANCHORS, STRIDES, SHAPES, anchor_match="ratio", anchor_t=4.0, neighbor_cells=False)
    r = torch.tensor([40.0, 40.0]) / ANCHORS.view(-1, 2)
    ok = torch.maximum(r, 1 / r).max(1).values < 4.0
    assert positives(a) == {(k // 3, k % 3) for k in range(9) if ok[k]}
    assert all((lvl[6] == 0).all() for lvl in a)  # the zero-width box is never assigned
    with pytest.raises(ValueError):
        build_targets(t, ANCHORS, STRIDES, SHAPES, anchor_match="bogus")


def test_label_smoothing_targets():
    assert smooth_bce_targets(0.0) == (1.0, 0.0)
    assert smooth_bce_targets(0.1) == pytest.approx((0.95, 0.05))
    nc, eps = 4, 0.2
    loss = YOLOv4Loss(nc, ANCHORS, STRIDES, dict(label_smoothing=eps, box=0.0, obj=0.0, cls=80 / nc, anchor_match="iou"))
    preds = [torch.zeros(1, 3, h, w, 5 + nc) for h, w in SHAPES]
    t = torch.tensor([box(36, 28, 32, 60, c=1)], dtype=torch.float32)
    # logit 0 gives BCE log 2 whatever the target, so level 1 gets non-zero class logits
    x = torch.full((1, 3, 4, 4, 5 + nc), 0.0)
    x[..., 5:] = torch.tensor([-1.0, 2.0, 0.5, 0.0])
    preds[1] = x
    _, items = loss(dict(main=preds, aux=None), t, 0)
    cp, cn = 1 - eps / 2, eps / 2
    y = torch.tensor([cn, cp, cn, cn])
    z = torch.tensor([-1.0, 2.0, 0.5, 0.0])
    per_level = (torch.nn.functional.softplus(z) - y * z).mean()  # BCE-with-logits
    lvl_pos = [len(lvl[0]) for lvl in build_targets(t, ANCHORS, STRIDES, SHAPES, iou_t=0.2)]
    expect = sum(math.log(2) if i != 1 else per_level.item() for i, n in enumerate(lvl_pos) if n)
    assert items[2].item() == pytest.approx(expect, rel=1e-5)


def test_empty_targets_finite_and_only_objectness():
    loss = YOLOv4Loss(3, ANCHORS, STRIDES, {})
    preds = [torch.randn(2, 3, h, w, 8, requires_grad=True) for h, w in SHAPES]
    total, items = loss(dict(main=preds, aux=None), torch.zeros(0, 6), 0)
    assert torch.isfinite(total) and items.shape == (3,)
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)


@pytest.mark.parametrize("decode,kind", [("scaled", "ciou"), ("scaled", "giou"), ("darknet", "diou")])
def test_loss_decreases_when_optimizing_raw_predictions(decode, kind):
    torch.manual_seed(0)
    strides, anchors = ([16, 32], ANCHORS[1:]) if decode == "darknet" else (STRIDES, ANCHORS)
    shapes = [(64 // s, 64 // s) for s in strides]
    loss = YOLOv4Loss(5, anchors, strides, dict(iou_loss=kind), decode=decode, scale_xy=1.05)
    preds = [(torch.randn(2, 3, h, w, 10) * 0.5).requires_grad_() for h, w in shapes]
    t = torch.tensor([box(20, 22, 30, 40, b=0, c=1), box(44, 40, 50, 36, b=1, c=4), box(10, 50, 12, 10, b=1, c=0)])
    opt = torch.optim.Adam(preds, lr=0.05)
    first = None
    for _ in range(60):
        total, items = loss(dict(main=preds, aux=None), t, 0)
        first = items.clone() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert (items < first).all(), (first, items)
    assert items[0] < 0.5 * first[0]


def test_gains_and_level_balance():
    loss3 = YOLOv4Loss(80, ANCHORS, STRIDES, dict(box=0.05, obj=0.7, cls=0.3))
    assert (loss3.gain_box, loss3.gain_obj, loss3.gain_cls) == pytest.approx((0.05, 0.7, 0.3))
    assert loss3.balance == (4.0, 1.0, 0.4)
    a5 = torch.ones(5, 4, 2) * 10
    loss5 = YOLOv4Loss(20, a5, [8, 16, 32, 64, 128], dict(box=0.05, obj=0.7, cls=0.3))
    assert loss5.gain_obj == pytest.approx(0.7 * 3 / 5 * 1.4) and loss5.gain_cls == pytest.approx(0.3 * 20 / 80 * 3 / 5)
    assert loss5.balance == (4.0, 1.0, 0.5, 0.4, 0.1)
    assert YOLOv4Loss(1, ANCHORS[1:], [16, 32], {}).balance == (1.0, 0.4)
    with pytest.raises(ValueError, match="iou_loss"):
        YOLOv4Loss(1, ANCHORS, STRIDES, dict(iou_loss="siou2"))


def test_single_class_has_no_class_loss_and_total_scales_with_batch():
    loss = YOLOv4Loss(1, ANCHORS, STRIDES, {})
    preds = [torch.zeros(4, 3, h, w, 6) for h, w in SHAPES]
    t = torch.tensor([box(20, 20, 40, 40, b=b) for b in range(4)], dtype=torch.float32)
    total, items = loss(preds, t, 0)
    assert items[2] == 0 and total.item() == pytest.approx(items.sum().item() * 4, rel=1e-6)


def test_model_build_loss_end_to_end():
    from yoloforge.families.registry import build_model

    torch.manual_seed(0)
    m = build_model("yolov4-tiny", nc=3).train()
    loss = m.build_loss({"label_smoothing": 0.1})
    assert loss.decode == "darknet" and loss.scale_xy == pytest.approx(1.05) and loss.cn == pytest.approx(0.05)
    assert torch.equal(loss.anchors, m.head.anchors)
    out = m(torch.rand(2, 3, 64, 64))
    t = torch.tensor([box(30, 30, 40, 20, b=0, c=1), box(20, 40, 10, 12, b=1, c=2)])
    total, items = loss(out, t, 0)
    assert torch.isfinite(total) and items[0] > 0
    total.backward()
    assert m.head.m[0].weight.grad is not None
