"""Tests of yoloforge.assign: shared helpers, ATSS and TAL (hand cases + a naive loop reference)."""
import math
import statistics

import pytest
import torch

from yoloforge.assign.atss import ATSSAssigner
from yoloforge.assign.tal import TaskAlignedAssigner
from yoloforge.assign.utils import pad_targets, pairwise_iou, select_candidates_in_gts, select_highest_overlaps
from yoloforge.models.box_coder import make_atss_anchors


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


# ---------------------------------------------------------------- helpers
def test_make_atss_anchors_layout():
    feats = [torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 2, 3)]
    anchors, pts, n_level, st = make_atss_anchors(feats, [8, 16])
    assert n_level == [24, 6] and pts.shape == (30, 2) and anchors.shape == (30, 4) and st.shape == (30, 1)
    torch.testing.assert_close(pts[0], torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(pts[1], torch.tensor([12.0, 4.0]))  # row-major: x runs first
    torch.testing.assert_close(pts[6], torch.tensor([4.0, 12.0]))
    torch.testing.assert_close(pts[24], torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(anchors[24], torch.tensor([-32.0, -32.0, 48.0, 48.0]))  # 5 x 16 square
    assert st[23].item() == 8 and st[24].item() == 16
    _, pts2, _, _ = make_atss_anchors([(1, 1)], [32], offset=0.0)
    torch.testing.assert_close(pts2, torch.zeros(1, 2))


def test_select_candidates_in_gts():
    pts = torch.tensor([[5.0, 5.0], [10.0, 5.0], [15.0, 5.0]])
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [9.0, 0.0, 20.0, 10.0]]])
    m = select_candidates_in_gts(pts, gts)
    assert m.dtype == torch.bool
    assert m.tolist() == [[[True, False, False], [False, True, True]]]  # on the border = outside


def test_select_highest_overlaps():
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0], [0, 1, 0]]], dtype=torch.bool)  # (1, 3 gts, 3 anchors)
    ov = torch.tensor([[[0.3, 0.9, 0.1], [0.6, 0.2, 0.1], [0.1, 0.5, 0.95]]])
    idx, fg, mp = select_highest_overlaps(mask, ov)
    assert fg.tolist() == [[True, True, False]]
    # anchor 0: gts 0 (0.3) and 1 (0.6) -> 1; anchor 1: gts 0 (0.9) and 2 (0.5) -> 0
    assert idx[0, :2].tolist() == [1, 0]
    assert mp.sum(1).tolist() == [[1, 1, 0]] and mp[0, 1, 0] and mp[0, 0, 1]
    # anchor 2 has the highest overlap with gt 2 but is positive for none: stays background
    assert not mp[0, :, 2].any()


def test_pad_targets():
    t = torch.tensor([[2, 1, 0, 0, 5, 5], [0, 3, 1, 1, 2, 2], [2, 4, 3, 3, 9, 9], [0, 5, 0, 0, 1, 1]], dtype=torch.float)
    labels, boxes, mask = pad_targets(t, 4)
    assert labels.shape == (4, 2, 1) and boxes.shape == (4, 2, 4) and mask.shape == (4, 2, 1)
    assert mask.squeeze(-1).tolist() == [[True, True], [False, False], [True, True], [False, False]]
    assert labels[0, :, 0].tolist() == [3, 5] and labels[2, :, 0].tolist() == [1, 4]  # order kept
    assert boxes[2, 1].tolist() == [3, 3, 9, 9] and boxes[1].abs().sum() == 0
    labels, boxes, mask = pad_targets(torch.zeros(0, 6), 3)
    assert labels.shape == (3, 0, 1) and boxes.shape == (3, 0, 4) and mask.shape == (3, 0, 1)


# ---------------------------------------------------------------- TAL
def _tal_case():
    pts = torch.tensor([[5.0, 5.0], [15.0, 5.0], [25.0, 5.0], [35.0, 5.0]])
    pred_boxes = torch.tensor([[[0.0, 0, 20, 10], [5, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10]]])
    scores = torch.tensor([[[0.1, 0.5], [0.2, 0.9], [0.3, 0.9], [0.3, 0.9]]])
    gt_labels = torch.tensor([[[1.0]]])
    gt_boxes = torch.tensor([[[0.0, 0, 20, 10]]])
    return pts, pred_boxes, scores, gt_labels, gt_boxes, torch.ones(1, 1, 1, dtype=torch.bool)


def test_tal_hand_case():
    pts, pb, sc, gl, gb, mg = _tal_case()
    # metrics: anchor 0: 0.5 * 1^6 = 0.5; anchor 1: 0.9 * 0.75^6; anchors 2, 3 lie outside the gt
    a1 = 0.9 * 0.75 ** 6
    labels, boxes, scores, fg = TaskAlignedAssigner(topk=1, num_classes=2)(sc, pb, pts, gl, gb, mg)
    assert fg.tolist() == [[True, False, False, False]]
    assert labels.tolist() == [[1, 2, 2, 2]]  # background = num_classes
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.0, 1.0]))
    assert scores[0, 1:].abs().sum() == 0 and boxes[0, 1:].abs().sum() == 0
    torch.testing.assert_close(boxes[0, 0], gb[0, 0])
    labels, boxes, scores, fg = TaskAlignedAssigner(topk=3, num_classes=2)(sc, pb, pts, gl, gb, mg)
    assert fg.tolist() == [[True, True, False, False]]
    # normalized: metric / max metric * max IoU = a1 / 0.5 * 1.0
    assert scores[0, 1, 1].item() == pytest.approx(a1 / 0.5, rel=1e-5) and scores[0, 1, 0] == 0
    # alpha / beta change the metric
    _, _, s2, _ = TaskAlignedAssigner(topk=3, num_classes=2, alpha=2.0, beta=1.0)(sc, pb, pts, gl, gb, mg)
    # metrics 0.25 * 1 and 0.81 * 0.75: anchor 1 now leads and gets the max IoU (1.0)
    assert s2[0, 1, 1].item() == pytest.approx(1.0, rel=1e-5)
    assert s2[0, 0, 1].item() == pytest.approx(0.25 / (0.81 * 0.75), rel=1e-5)


def test_tal_uses_the_gt_class_score():
    pts, pb, sc, gl, gb, mg = _tal_case()
    sc = sc.clone()
    sc[0, 0] = torch.tensor([0.95, 0.01])  # anchor 0 is confident about the wrong class
    _, _, _, fg = TaskAlignedAssigner(topk=1, num_classes=2)(sc, pb, pts, gl, gb, mg)
    assert fg.tolist() == [[False, True, False, False]]


def test_tal_masks_padded_gts_and_empty_images():
    pts, pb, sc, gl, gb, _ = _tal_case()
    pb2, sc2 = pb.repeat(2, 1, 1), sc.repeat(2, 1, 1)
    sc2[:, 3, 0] = 0.4  # anchors 2 and 3 have IoU 0.5 with gt 1; anchor 3 has the better class-0 score
    gl2 = torch.tensor([[[1.0], [0.0]], [[1.0], [0.0]]])
    gb2 = torch.cat((gb, torch.tensor([[[20.0, 0, 40, 10]]])), 1).repeat(2, 1, 1)
    mg2 = torch.tensor([[[True], [True]], [[False], [False]]])  # image 1 has no gts
    labels, _, scores, fg = TaskAlignedAssigner(topk=1, num_classes=2)(sc2, pb2, pts, gl2, gb2, mg2)
    assert fg[1].sum() == 0 and (labels[1] == 2).all() and scores[1].sum() == 0
    assert fg[0].tolist() == [True, False, False, True] and labels[0, 3] == 0


@pytest.mark.parametrize("assigner", ["tal", "atss"])
def test_zero_gts(assigner):
    n = 10
    gl, gb, mg = torch.zeros(3, 0, 1), torch.zeros(3, 0, 4), torch.zeros(3, 0, 1, dtype=torch.bool)
    if assigner == "tal":
        out = TaskAlignedAssigner(num_classes=4)(torch.rand(3, n, 4), torch.rand(3, n, 4), torch.rand(n, 2), gl, gb, mg)
    else:
        out = ATSSAssigner(num_classes=4)(torch.rand(n, 4), [6, 4], gl, gb, mg, torch.rand(3, n, 4))
    labels, boxes, scores, fg = out
    assert labels.shape == (3, n) and labels.dtype == torch.long and (labels == 4).all()
    assert boxes.shape == (3, n, 4) and scores.shape == (3, n, 4) and fg.dtype == torch.bool and not fg.any()


def _random_scene(seed, bs=3, m=4, nc=3, size=64, stride=8):
    g = torch.Generator().manual_seed(seed)
    _, pts, _, _ = make_atss_anchors([(size // stride, size // stride)], [stride])
    n = pts.shape[0]
    wh = torch.rand(bs, m, 2, generator=g) * 30 + 10
    ctr = torch.rand(bs, m, 2, generator=g) * (size - 20) + 10
    gt_boxes = torch.cat((ctr - wh / 2, ctr + wh / 2), -1)
    gt_labels = torch.randint(0, nc, (bs, m, 1), generator=g).float()
    mask_gt = torch.rand(bs, m, 1, generator=g) > 0.25
    half = torch.rand(bs, n, 4, generator=g) * 20 + 3  # every predicted box contains its anchor point
    pred_boxes = torch.cat((pts - half[..., :2], pts + half[..., 2:]), -1)
    pred_scores = torch.rand(bs, n, nc, generator=g) * 0.9 + 0.05
    return pts, gt_labels, gt_boxes, mask_gt, pred_boxes, pred_scores


def _resolve(pos, ov):
    """pos[m] = set of positive anchors per gt; keep the highest-IoU gt per anchor (naive)."""
    owner = {}
    for m, anchors in pos.items():
        for a in anchors:
            if a not in owner or ov[m][a] > ov[owner[a]][a]:
                owner[a] = m
    return owner


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tal_matches_naive_reference(seed):
    pts, gl, gb, mg, pb, ps = _random_scene(seed)
    topk, nc = 5, 3
    labels, boxes, scores, fg = TaskAlignedAssigner(topk=topk, num_classes=nc)(ps, pb, pts, gl, gb, mg)
    for b in range(gb.shape[0]):
        ov, metric, pos = {}, {}, {}
        for m in range(gb.shape[1]):
            if not mg[b, m, 0]:
                continue
            box, c = gb[b, m].tolist(), int(gl[b, m, 0])
            ov[m] = [_iou(pb[b, a].tolist(), box) for a in range(len(pts))]
            metric[m] = [ps[b, a, c].item() * ov[m][a] ** 6 for a in range(len(pts))]
            inside = [a for a in range(len(pts)) if box[0] < pts[a, 0] < box[2] and box[1] < pts[a, 1] < box[3]]
            pos[m] = sorted(inside, key=lambda a: -metric[m][a])[:topk]
        owner = _resolve(pos, ov)
        assert set(torch.nonzero(fg[b]).flatten().tolist()) == set(owner)
        for a, m in owner.items():
            mine = [x for x, o in owner.items() if o == m]
            want = metric[m][a] / (max(metric[m][x] for x in mine) + 1e-9) * max(ov[m][x] for x in mine)
            assert labels[b, a].item() == int(gl[b, m, 0])
            assert scores[b, a].sum().item() == pytest.approx(want, rel=1e-4, abs=1e-7)
            torch.testing.assert_close(boxes[b, a], gb[b, m])


# ---------------------------------------------------------------- ATSS
def _grid_anchors(n=4, cell=10.0):
    ys, xs = torch.meshgrid(torch.arange(n) * cell, torch.arange(n) * cell, indexing="ij")
    tl = torch.stack((xs, ys), -1).reshape(-1, 2).float()
    return torch.cat((tl, tl + cell), -1)  # (n*n, 4) cells, row-major


def test_atss_hand_case_threshold():
    anchors = _grid_anchors()
    gt = torch.tensor([[[0.0, 0.0, 15.0, 15.0]]])
    one = torch.ones(1, 1, 1, dtype=torch.bool)
    # 4 nearest cells: IoUs 100/225, 50/275, 50/275, 25/300 -> mean + std keeps only the first
    ious = [100 / 225, 50 / 275, 50 / 275, 25 / 300]
    thr = statistics.mean(ious) + statistics.stdev(ious)
    assert ious[0] >= thr > ious[1]
    pred = anchors[None].clone()
    pred[0, 0] = torch.tensor([0.0, 0.0, 12.0, 15.0])
    labels, boxes, scores, fg = ATSSAssigner(topk=4, num_classes=3)(anchors, [16], torch.tensor([[[2.0]]]), gt, one, pred)
    assert fg[0].nonzero().flatten().tolist() == [0]
    assert labels[0, 0] == 2 and (labels[0, 1:] == 3).all()
    torch.testing.assert_close(boxes[0, 0], gt[0, 0])
    # soft label = IoU(prediction, gt) on the assigned class
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.0, 0.0, 180 / 225]))
    _, _, hard, _ = ATSSAssigner(topk=4, num_classes=3)(anchors, [16], torch.tensor([[[2.0]]]), gt, one, None)
    torch.testing.assert_close(hard[0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_atss_equal_ious_none_positive_and_mask_gt():
    anchors = _grid_anchors()
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]])  # 4 candidates with IoU 0.25 each, std 0
    lab = torch.tensor([[[0.0]]])
    _, _, _, fg = ATSSAssigner(topk=4, num_classes=1)(anchors, [16], lab, gt, torch.ones(1, 1, 1), None)
    # official (YOLOv6 0.2.0 atss_assigner.py): positives need IoU strictly above mean + std, so equal IoUs give none
    assert not fg.any()
    _, _, _, fg = ATSSAssigner(topk=4, num_classes=1)(anchors, [16], lab, gt, torch.zeros(1, 1, 1), None)
    assert not fg.any()


def test_atss_topk_per_level():
    a = ATSSAssigner(topk=3, num_classes=1)
    d = torch.tensor([[[5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 0.5, 7.0]]])
    is_cand, idx = a.topk_candidates(d, [5, 2, 1])
    assert idx.shape == (1, 1, 3 + 2 + 1)
    assert sorted(idx[0, 0, :3].tolist()) == [1, 3, 4]
    assert is_cand[0, 0].tolist() == [False, True, False, True, True, True, True, True]


@pytest.mark.parametrize("seed", [0, 3])
def test_atss_matches_naive_reference(seed):
    _, gl, gb, mg, pb, _ = _random_scene(seed, size=64)
    feats = [(8, 8), (4, 4)]
    anchors, pts, n_level, _ = make_atss_anchors(feats, [8, 16])
    pb = torch.cat((pb, pb[:, :16]), 1)  # 80 anchors
    topk, nc = 5, 3
    labels, boxes, scores, fg = ATSSAssigner(topk=topk, num_classes=nc)(anchors, n_level, gl, gb, mg, pb)
    ctr = ((anchors[:, :2] + anchors[:, 2:]) / 2).tolist()
    for b in range(gb.shape[0]):
        ov, pos = {}, {}
        for m in range(gb.shape[1]):
            if not mg[b, m, 0]:
                continue
            box = gb[b, m].tolist()
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            ov[m] = [_iou(anchors[a].tolist(), box) for a in range(len(anchors))]
            cands, start = [], 0
            for n_l in n_level:
                lvl = range(start, start + n_l)
                cands += sorted(lvl, key=lambda a: math.hypot(ctr[a][0] - cx, ctr[a][1] - cy))[:topk]
                start += n_l
            vals = [ov[m][a] for a in cands]
            thr = statistics.mean(vals) + statistics.stdev(vals)
            pos[m] = [a for a in cands if ov[m][a] >= thr - 1e-7
                      and box[0] < ctr[a][0] < box[2] and box[1] < ctr[a][1] < box[3]]
        owner = _resolve(pos, ov)
        assert set(torch.nonzero(fg[b]).flatten().tolist()) == set(owner)
        for a, m in owner.items():
            c = int(gl[b, m, 0])
            assert labels[b, a].item() == c
            assert scores[b, a, c].item() == pytest.approx(_iou(pb[b, a].tolist(), gb[b, m].tolist()), rel=1e-4)
            assert scores[b, a].sum().item() == pytest.approx(scores[b, a, c].item())


def test_pairwise_iou_shapes():
    g = torch.tensor([[[0.0, 0, 10, 10]], [[0.0, 0, 5, 5]]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 10]])
    out = pairwise_iou(g, boxes)
    assert out.shape == (2, 1, 2)
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.5]], [[0.25, 0.5]]]))
