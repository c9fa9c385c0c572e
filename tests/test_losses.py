"""Tests of yoloforge.losses: IoU family, varifocal, DFL and the YOLOv6 composite."""
import math

import pytest
import torch

from yoloforge.families.yolov6 import loss as y6
from yoloforge.losses.dfl import distribution_focal_loss
from yoloforge.losses.iou import IoULoss, bbox_iou
from yoloforge.losses.vfl import varifocal_loss
from yoloforge.families.yolov6.loss import YOLOv6Loss
from yoloforge.models.box_coder import boxes_to_distances, distances_to_boxes, make_atss_anchors


# ---------------------------------------------------------------- IoU family, by hand with plain math
def _hand(a, b):
    """All five kinds for one pair, straight from the papers' formulas."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    w1, h1, w2, h2 = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    union = w1 * h1 + w2 * h2 - inter
    iou = inter / union
    cw, ch = max(ax2, bx2) - min(ax1, bx1), max(ay2, by2) - min(ay1, by1)
    giou = iou - (cw * ch - union) / (cw * ch)
    dx, dy = (bx1 + bx2 - ax1 - ax2) / 2, (by1 + by2 - ay1 - ay2) / 2
    rho2, c2 = dx * dx + dy * dy, cw * cw + ch * ch
    diou = iou - rho2 / c2
    v = 4 / math.pi ** 2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / ((1 - iou) + v) if v > 0 else 0.0
    ciou = diou - alpha * v
    sigma = math.sqrt(rho2)
    lam = 1 - 2 * math.sin(math.asin(abs(dy) / sigma) - math.pi / 4) ** 2 if sigma > 0 else 0.0
    gamma = 2 - lam
    delta = (1 - math.exp(-gamma * (dx / cw) ** 2)) + (1 - math.exp(-gamma * (dy / ch) ** 2))
    ow, oh = abs(w1 - w2) / max(w1, w2), abs(h1 - h2) / max(h1, h2)
    omega = (1 - math.exp(-ow)) ** 4 + (1 - math.exp(-oh)) ** 4
    siou = iou - (delta + omega) / 2
    return dict(iou=iou, giou=giou, diou=diou, ciou=ciou, siou=siou)


PAIRS = [
    ([0, 0, 2, 2], [1, 1, 3, 3]),        # partial overlap, same shape
    ([0, 0, 1, 2], [3, 1, 5, 2]),        # disjoint, different aspect ratios
    ([0, 0, 4, 4], [1, 1, 2, 3]),        # containment
    ([10, 20, 30, 25], [12, 18, 31, 40]),  # generic
]


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "siou"])
def test_bbox_iou_matches_hand_values(kind):
    a = torch.tensor([p[0] for p in PAIRS], dtype=torch.float64)
    b = torch.tensor([p[1] for p in PAIRS], dtype=torch.float64)
    got = bbox_iou(a, b, kind)
    want = torch.tensor([_hand(p, q)[kind] for p, q in PAIRS], dtype=torch.float64)
    assert got.shape == (len(PAIRS),)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_known_numbers_and_identity():
    a, b = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 1, 3, 3])
    assert bbox_iou(a, b).item() == pytest.approx(1 / 7, abs=1e-6)
    assert bbox_iou(a, b, "giou").item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)
    assert bbox_iou(a, b, "diou").item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)
    # 45 degrees: angle cost 1, gamma 1
    assert bbox_iou(a, b, "siou").item() == pytest.approx(1 / 7 - (2 - 2 * math.exp(-1 / 9)) / 2, abs=1e-6)
    disjoint = bbox_iou(torch.tensor([0.0, 0, 1, 2]), torch.tensor([3.0, 1, 5, 2]), "giou")
    assert disjoint.item() == pytest.approx(-0.6, abs=1e-6)
    box = torch.tensor([[3.0, 4, 9, 10]])
    for kind in ("iou", "giou", "diou", "ciou", "siou"):
        assert bbox_iou(box, box, kind).item() == pytest.approx(1.0, abs=1e-5)
        assert IoULoss(kind)(box, box).item() == pytest.approx(0.0, abs=1e-5)


def test_bbox_iou_broadcasts_pairwise():
    g = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15]])
    p = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 5], [20, 20, 30, 30]])
    m = bbox_iou(g[:, None], p[None])
    assert m.shape == (2, 3)
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.25, 0.0], [25 / 175, 0.0, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "siou"])
def test_iou_loss_gradients_finite_on_degenerate_boxes(kind):
    pred = torch.tensor([[0.0, 0, 4, 4], [5, 5, 5, 5], [3, 3, 1, 1], [2, 2, 6, 6]], requires_grad=True)
    tgt = torch.tensor([[0.0, 0, 4, 4], [1, 1, 4, 4], [0, 0, 4, 4], [2, 2, 6, 9]])
    loss = IoULoss(kind)(pred, tgt)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()


def test_iou_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        bbox_iou(torch.zeros(4), torch.zeros(4), "xiou")


# ---------------------------------------------------------------- varifocal
def test_varifocal_hand_value():
    logits = torch.tensor([[0.0, 2.0]])
    score = torch.tensor([[0.8, 0.0]])
    label = torch.tensor([[1.0, 0.0]])
    p1 = 1 / (1 + math.exp(-2.0))
    want = 0.8 * math.log(2) + 0.75 * p1 ** 2 * math.log(1 + math.exp(2.0))
    assert varifocal_loss(logits, score, label).item() == pytest.approx(want, rel=1e-5)
    # gamma / alpha are honoured
    want2 = 0.8 * math.log(2) + 0.5 * p1 ** 3 * math.log(1 + math.exp(2.0))
    assert varifocal_loss(logits, score, label, alpha=0.5, gamma=3.0).item() == pytest.approx(want2, rel=1e-5)


def test_varifocal_zero_gradient_at_target_and_float32_under_autocast():
    q = 0.7
    logit = torch.tensor([[math.log(q / (1 - q))]], requires_grad=True)
    varifocal_loss(logit, torch.tensor([[q]]), torch.tensor([[1.0]])).backward()
    assert abs(logit.grad.item()) < 1e-6
    x = torch.randn(4, 5)
    ref = varifocal_loss(x, torch.rand(4, 5) * 0, torch.zeros(4, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = varifocal_loss(x.bfloat16(), torch.zeros(4, 5), torch.zeros(4, 5))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)


# ---------------------------------------------------------------- DFL
def test_dist_bbox_roundtrip_and_clamp():
    pts = torch.tensor([[10.0, 10.0], [3.0, 4.0]])
    boxes = torch.tensor([[8.0, 7.0, 12.0, 15.0], [0.0, 0.0, 30.0, 5.0]])
    d = boxes_to_distances(pts, boxes, reg_max=16)
    torch.testing.assert_close(d, torch.tensor([[2.0, 3.0, 2.0, 5.0], [3.0, 4.0, 15.99, 1.0]]))
    torch.testing.assert_close(distances_to_boxes(d[:1], pts[:1]), boxes[:1])
    # a point outside the box gives clamped (non-negative) distances
    assert (boxes_to_distances(torch.tensor([[50.0, 50.0]]), boxes[:1], 16) >= 0).all()


def test_dfl_hand_value_and_minimum():
    logits = torch.tensor([[0.1, -0.3, 0.7, 0.2, -1.0]])
    logz = math.log(sum(math.exp(v) for v in logits[0].tolist()))
    logp = [v - logz for v in logits[0].tolist()]
    got = distribution_focal_loss(logits, torch.tensor([2.3]))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(-(0.7 * logp[2] + 0.3 * logp[3]), rel=1e-5)
    assert distribution_focal_loss(logits, torch.tensor([2.0])).item() == pytest.approx(-logp[2], rel=1e-5)
    assert distribution_focal_loss(logits, torch.tensor([4.0])).item() == pytest.approx(-logp[4], rel=1e-5)
    # the ideal two-bin distribution beats any other one, and its expectation is the target
    ideal = torch.log(torch.tensor([[1e-6, 1e-6, 0.7, 0.3, 1e-6]]))
    assert distribution_focal_loss(ideal, torch.tensor([2.3])) < distribution_focal_loss(logits, torch.tensor([2.3]))
    assert (ideal.softmax(-1) @ torch.arange(5.0)).item() == pytest.approx(2.3, abs=1e-4)


# ---------------------------------------------------------------- YOLOv6 composite
STRIDES = [8, 16, 32]
SHAPES = [(8, 8), (4, 4), (2, 2)]  # 64x64 input
N = sum(h * w for h, w in SHAPES)


def _feats(b):
    return [torch.zeros(b, 2, h, w) for h, w in SHAPES]


TARGETS = torch.tensor([[0, 1, 8, 10, 40, 34], [0, 2, 30, 30, 62, 60], [1, 0, 4, 4, 20, 28]])


@pytest.mark.parametrize("use_dfl,reg_max", [(False, 0), (True, 16)])
@pytest.mark.parametrize("epoch", [0, 10])  # ATSS warm-up, then TAL
def test_loss_runs_both_branches_and_is_consistent(use_dfl, reg_max, epoch):
    torch.manual_seed(0)
    loss_fn = YOLOv6Loss(3, STRIDES, reg_max=reg_max, use_dfl=use_dfl)
    cls = torch.randn(2, N, 3, requires_grad=True)
    reg = (torch.rand(2, N, 4 * (reg_max + 1)) * 3).requires_grad_()
    total, items = loss_fn((_feats(2), cls, reg), TARGETS, epoch)
    assert total.dim() == 0 and items.shape == (len(loss_fn.names),) == (3,)
    assert not items.requires_grad and torch.isfinite(total)
    assert total.item() == pytest.approx(items.sum().item(), rel=1e-6)
    assert items[0] > 0 and items[2] > 0
    assert (items[1] > 0) == use_dfl
    total.backward()
    assert torch.isfinite(cls.grad).all() and torch.isfinite(reg.grad).all() and reg.grad.abs().sum() > 0


def test_branch_selection_by_epoch(monkeypatch):
    loss_fn = YOLOv6Loss(3, STRIDES, warmup_epochs=2)
    calls = []
    for name in ("warmup_assigner", "formal_assigner"):
        orig = getattr(loss_fn, name)
        monkeypatch.setattr(loss_fn, name, lambda *a, _o=orig, _n=name: calls.append(_n) or _o(*a))
    out = (_feats(2), torch.randn(2, N, 3), torch.rand(2, N, 4))
    for ep in (0, 1, 2, 5):
        loss_fn(out, TARGETS, ep)
    assert calls == ["warmup_assigner"] * 2 + ["formal_assigner"] * 2


@pytest.mark.parametrize("epoch", [0, 10])
def test_zero_gt_batch_is_finite(epoch):
    for use_dfl, rm in ((False, 0), (True, 8)):
        loss_fn = YOLOv6Loss(4, STRIDES, reg_max=rm, use_dfl=use_dfl)
        cls = torch.randn(2, N, 4, requires_grad=True)
        reg = torch.randn(2, N, 4 * (rm + 1), requires_grad=True)
        total, items = loss_fn((_feats(2), cls, reg), torch.zeros(0, 6), epoch)
        assert torch.isfinite(total) and items[0] == 0 and items[1] == 0 and items[2] > 0
        total.backward()
        assert torch.isfinite(cls.grad).all()
        # background-only: the cls term is the plain focal-weighted negative BCE, normalized by 1
        p = cls.detach().sigmoid()
        want = (0.75 * p ** 2 * -torch.log1p(-p)).sum()
        assert items[2].item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("iou_type", ["giou", "ciou", "siou"])
def test_random_large_inputs_finite(iou_type):
    torch.manual_seed(1)
    loss_fn = YOLOv6Loss(2, STRIDES, iou_type=iou_type, reg_max=16, use_dfl=True)
    cls = (torch.randn(3, N, 2) * 30).requires_grad_()
    reg = (torch.randn(3, N, 68) * 30).requires_grad_()
    t = torch.tensor([[2, 1, 0, 0, 64, 64], [2, 0, 30, 30, 31, 31], [0, 1, 10, 10, 12, 50]])
    for ep in (0, 10):
        total, _ = loss_fn((_feats(3), cls, reg), t, ep)
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(cls.grad).all() and torch.isfinite(reg.grad).all()


@pytest.mark.parametrize("epoch", [0, 10])
@pytest.mark.parametrize("use_dfl,reg_max", [(False, 0), (True, 8)])
def test_loss_decreases_when_optimizing_predictions(epoch, use_dfl, reg_max):
    torch.manual_seed(0)
    loss_fn = YOLOv6Loss(3, STRIDES, reg_max=reg_max, use_dfl=use_dfl)
    cls = torch.full((2, N, 3), -4.6).requires_grad_()  # class prior 0.01
    reg = (torch.rand(2, N, 4 * (reg_max + 1)) + 0.5).requires_grad_()
    opt = torch.optim.Adam([cls, reg], lr=0.05)
    hist = []
    for _ in range(30):
        total, items = loss_fn((_feats(2), cls, reg), TARGETS, epoch)
        hist.append(items)
        opt.zero_grad()
        total.backward()
        opt.step()
    first, last = hist[0], hist[-1]
    # boxes move toward the targets; the cls term may rise meanwhile (its IoU-aware targets grow)
    assert last[0] < 0.5 * first[0]
    if use_dfl:
        assert last[1] < 0.8 * first[1]
    assert last.sum() < first.sum()


def test_normalizer_uses_mean_over_ranks(monkeypatch):
    torch.manual_seed(0)
    loss_fn = YOLOv6Loss(3, STRIDES)
    out = (_feats(2), torch.randn(2, N, 3), torch.rand(2, N, 4) * 3)
    _, base = loss_fn(out, TARGETS, 10)
    monkeypatch.setattr(y6, "mean_over_ranks", lambda t: t * 4)  # as if the other ranks had more targets
    _, scaled = loss_fn(out, TARGETS, 10)
    torch.testing.assert_close(scaled, base / 4)


def test_weights_autocast_and_errors():
    torch.manual_seed(0)
    out = (_feats(2), torch.randn(2, N, 3), torch.rand(2, N, 4) * 3)
    _, a = YOLOv6Loss(3, STRIDES)(out, TARGETS, 0)
    _, b = YOLOv6Loss(3, STRIDES, weights=dict(cls=2.0, iou=1.0))(out, TARGETS, 0)
    torch.testing.assert_close(b, a * torch.tensor([1 / 2.5, 1.0, 2.0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = YOLOv6Loss(3, STRIDES)((out[0], out[1].bfloat16(), out[2].bfloat16()), TARGETS, 10)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    with pytest.raises(ValueError, match="batch index"):
        YOLOv6Loss(3, STRIDES)(out, torch.tensor([[5.0, 0, 1, 1, 9, 9]]), 0)
    with pytest.raises(ValueError, match="channels"):
        YOLOv6Loss(3, STRIDES, reg_max=16, use_dfl=True)(out, TARGETS, 0)
    with pytest.raises(ValueError, match="anchors"):
        YOLOv6Loss(3, STRIDES)((out[0][:2], out[1], out[2]), TARGETS, 0)


@pytest.mark.parametrize("epoch", [0, 10])
def test_perfect_boxes_give_zero_iou_loss(epoch):
    _, pts, _, st = make_atss_anchors(_feats(1), STRIDES)
    gt = torch.tensor([12.0, 6.0, 50.0, 44.0])
    reg = torch.cat((pts - gt[:2], gt[2:] - pts), -1) / st  # every anchor predicts the gt exactly
    t = torch.cat((torch.tensor([0.0, 1.0]), gt))[None]
    total, items = YOLOv6Loss(3, STRIDES)((_feats(1), torch.zeros(1, N, 3), reg[None]), t, epoch)
    assert items[0].abs() < 1e-5 and items[2] > 0


def test_iou_kinds_ranges_and_symmetry_property():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    coord = st.floats(0, 100, allow_nan=False, width=32)
    size = st.floats(0.5, 50, allow_nan=False, width=32)

    @settings(max_examples=60, deadline=None)
    @given(coord, coord, size, size, coord, coord, size, size)
    def check(x1, y1, w1, h1, x2, y2, w2, h2):
        a = torch.tensor([x1, y1, x1 + w1, y1 + h1], dtype=torch.float64)
        b = torch.tensor([x2, y2, x2 + w2, y2 + h2], dtype=torch.float64)
        iou = bbox_iou(a, b).item()
        assert 0 <= iou <= 1 and iou == pytest.approx(bbox_iou(b, a).item(), abs=1e-9)
        for kind in ("giou", "diou", "ciou", "siou"):
            v = bbox_iou(a, b, kind).item()
            assert -1.5 <= v <= iou + 1e-9  # every penalty is non-negative
        assert bbox_iou(a, b, "giou").item() >= -1 - 1e-9 and bbox_iou(a, b, "diou").item() >= -1 - 1e-9

    check()
