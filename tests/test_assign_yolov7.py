"""YOLOv7 assignment: anchor-ratio + neighbour-cell candidates, SimOTA dynamic-k, lead-guided coarse/fine."""
import torch

from yoloforge.assign.anchor_match import find_candidates, unique_cells
from yoloforge.assign.lead_guided import LeadGuidedAssigner
from yoloforge.assign.simota import dynamic_k_matching, simota_assign, simota_cost

ONE_LEVEL = torch.tensor([[[10.0, 13.0], [16.0, 30.0], [100.0, 100.0]]])  # (1, 3, 2) pixels


def box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def cells(c):
    return {(int(a), int(j), int(i)) for a, j, i in zip(c.a, c.gj, c.gi)}


def test_candidates_cell_two_neighbours_and_ratio_filter():
    # centre (3.3, 4.7) in grid units at stride 8 on a 10x10 grid, 16x16 px
    t = torch.tensor([[0, 0, *box(3.3 * 8, 4.7 * 8, 16, 16)]])
    c = find_candidates(t, ONE_LEVEL, [8], [(10, 10)], anchor_t=4.0, radius=0.5)
    # anchor 2 (100x100) fails the ratio test (6.25 >= 4); cells: own (gj 4, gi 3), left (x frac 0.3 < 0.5),
    # below (y frac 0.7 > 0.5 -> the lower neighbour)
    expect = {(a, j, i) for a in (0, 1) for j, i in ((4, 3), (4, 2), (5, 3))}
    assert cells(c) == expect and c.n == 6
    assert set(c.gt.tolist()) == {0} and set(c.level.tolist()) == {0} and set(c.b.tolist()) == {0}
    # a tighter threshold keeps anchor 0 (max ratio 1.6) and drops anchor 1 (30/16 = 1.875)
    c = find_candidates(t, ONE_LEVEL, [8], [(10, 10)], anchor_t=1.7, radius=0.5)
    assert {a for a, _, _ in cells(c)} == {0}


def test_candidates_coarse_is_superset_with_four_neighbours():
    t = torch.tensor([[0, 0, *box(3.3 * 8, 4.7 * 8, 16, 16)]])
    fine = find_candidates(t, ONE_LEVEL, [8], [(10, 10)], radius=0.5)
    coarse = find_candidates(t, ONE_LEVEL, [8], [(10, 10)], radius=1.0)
    assert cells(fine) < cells(coarse)
    assert {(j, i) for _, j, i in cells(coarse)} == {(4, 3), (4, 2), (4, 4), (3, 3), (5, 3)}


def test_candidates_border_and_batch_index():
    # centre (0.3, 0.3): the low neighbours need g > 1, so none; image index 1 and row index kept
    t = torch.tensor([[0, 0, *box(5 * 8, 5 * 8, 16, 16)], [1, 2, *box(0.3 * 8, 0.3 * 8, 16, 16)]])
    c = find_candidates(t, ONE_LEVEL[:, :1], [8], [(10, 10)], radius=0.5)
    sel = c.gt == 1
    assert cells(c.select(sel)) == {(0, 0, 0)} and set(c.b[sel].tolist()) == {1}
    coarse = find_candidates(t, ONE_LEVEL[:, :1], [8], [(10, 10)], radius=1.0)
    assert cells(coarse.select(coarse.gt == 1)) == {(0, 0, 0), (0, 0, 1), (0, 1, 0)}
    # integer centre (5, 5): frac 0 < 0.5 on both sides; the high neighbour floor(5 + 0.5) is the cell
    # itself (a duplicate, as in the official code)
    c0 = c.select(c.gt == 0)
    assert cells(c0) == {(0, 5, 5), (0, 5, 4), (0, 4, 5)} and c0.n == 5


def test_candidates_levels_and_empty():
    anchors = torch.tensor([[[16.0, 16.0]], [[64.0, 64.0]], [[256.0, 256.0]]])
    t = torch.tensor([[0, 0, *box(40, 40, 60, 60)]])  # ratio 3.75 vs 16, 1.07 vs 64, 4.3 vs 256
    c = find_candidates(t, anchors, [8, 16, 32], [(12, 12), (6, 6), (3, 3)])
    assert set(c.level.tolist()) == {0, 1}
    assert find_candidates(t[:0], anchors, [8, 16, 32], [(12, 12), (6, 6), (3, 3)]).n == 0


def test_unique_cells_merges_duplicates():
    t = torch.tensor([[0, 0, *box(3.3 * 8, 4.7 * 8, 16, 16)], [0, 1, *box(3.4 * 8, 4.6 * 8, 14, 14)]])
    c = find_candidates(t, ONE_LEVEL, [8], [(10, 10)])
    u = unique_cells(c, 3, [(10, 10)], 1)
    assert c.n == 12 and u.n == 6 and cells(u) == cells(c) and (u.gt == -1).all()


# ---- SimOTA -------------------------------------------------------------------------------------
def _one_image(gts, preds, labels=None, cls_logits=None, topk=10):
    g = torch.tensor([gts], dtype=torch.float32)
    p = torch.tensor([preds], dtype=torch.float32)
    m, k = g.shape[1], p.shape[1]
    lab = torch.tensor([labels or [0] * m])
    cl = torch.zeros(1, k, 2) if cls_logits is None else torch.tensor([cls_logits], dtype=torch.float32)
    obj = torch.zeros(1, k) if cls_logits is None else torch.full((1, k), 10.0)
    return simota_assign(g, lab, torch.ones(1, m, dtype=torch.bool), p, cl, obj, torch.ones(1, k, dtype=torch.bool),
                         topk=topk)[0].tolist()


def test_dynamic_k_is_floor_of_top_iou_sum():
    # IoUs with the gt [0, 0, 10, 10] are 0.9, 0.8, 0.6, 0.3, 0.1: sum 2.7 -> k = 2, the two best
    preds = [[0, 0, 10, h] for h in (6, 9, 1, 8, 3)]
    assert _one_image([[0, 0, 10, 10]], preds) == [-1, 0, -1, 0, -1]
    # sum 0.5 -> still k = 1
    assert _one_image([[0, 0, 10, 10]], [[0, 0, 10, 3], [0, 0, 10, 2]]) == [0, -1]


def test_dynamic_k_sums_only_top_10():
    preds = [[0, 0, 10, 10]] * 12  # 12 perfect predictions: k = 10 (top-10), 12 with top-20
    assert sum(m == 0 for m in _one_image([[0, 0, 10, 10]], preds)) == 10
    assert sum(m == 0 for m in _one_image([[0, 0, 10, 10]], preds, topk=20)) == 12


def test_conflict_goes_to_lower_cost_gt():
    gts, preds = [[0, 0, 10, 10], [0, 0, 10, 20]], [[0, 0, 10, 10]]  # IoU 1.0 and 0.5; each gt has k = 1
    assert _one_image(gts, preds, labels=[0, 1]) == [0]  # same class scores: the IoU decides
    # class scores strongly for class 1: the class part of the cost makes gt 1 cheaper despite IoU 0.5
    assert _one_image(gts, preds, labels=[0, 1], cls_logits=[[-10.0, 10.0]]) == [1]


def _reference(cost, ious, topk):
    """Per-gt loop, as the official code does it (one image, no padding)."""
    m, k = cost.shape
    match = torch.zeros(m, k)
    for g in range(m):
        kk = max(int(ious[g].topk(min(topk, k)).values.sum()), 1)
        match[g, cost[g].topk(kk, largest=False).indices] = 1
    multi = match.sum(0) > 1
    match[:, multi] = 0
    match[cost[:, multi].argmin(0), multi] = 1
    return torch.where(match.sum(0) > 0, match.argmax(0), torch.tensor(-1)).tolist()


def test_batched_matching_equals_per_image_loop():
    torch.manual_seed(0)
    bs, m, k, nc = 3, 5, 30, 4
    xy = torch.rand(bs, m, 2) * 50
    gt = torch.cat((xy, xy + 10 + torch.rand(bs, m, 2) * 20), -1)
    pxy = torch.rand(bs, k, 2) * 50
    pred = torch.cat((pxy, pxy + 10 + torch.rand(bs, k, 2) * 20), -1)
    labels, cls, obj = torch.randint(0, nc, (bs, m)), torch.randn(bs, k, nc), torch.randn(bs, k)
    n_gt, n_cand = [5, 2, 0], [30, 17, 9]  # padded images
    gt_mask = torch.arange(m)[None] < torch.tensor(n_gt)[:, None]
    cand_mask = torch.arange(k)[None] < torch.tensor(n_cand)[:, None]
    cost, ious = simota_cost(gt, labels, pred, cls, obj)
    got = dynamic_k_matching(cost, ious, gt_mask, cand_mask, topk=10)
    for b in range(bs):
        g, c = n_gt[b], n_cand[b]
        expect = _reference(cost[b, :g, :c], ious[b, :g, :c], 10) if g else [-1] * c
        assert got[b, :c].tolist() == expect
        assert (got[b, c:] == -1).all()


# ---- lead-guided coarse / fine ------------------------------------------------------------------
ANCHORS = torch.tensor([[[12, 16], [19, 36], [40, 28]], [[36, 75], [76, 55], [72, 146]],
                        [[142, 110], [192, 243], [459, 401]]], dtype=torch.float32)


def _preds(bs=2, size=128, nc=3, seed=0, strides=(8, 16, 32), na=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, na, size // s, size // s, 5 + nc, generator=g) * 0.5 for s in strides]


TARGETS = torch.tensor([[0, 1, 10, 20, 50, 60], [0, 2, 60, 60, 120, 100], [1, 0, 5, 5, 30, 40],
                        [1, 1, 64, 30, 80, 50]])


def test_lead_guided_coarse_superset_and_more_positives():
    a = LeadGuidedAssigner(ANCHORS, [8, 16, 32], nc=3)
    preds = [torch.zeros_like(p) for p in _preds()]
    key = lambda c: {tuple(r) for r in torch.stack((c.level, c.b, c.a, c.gj, c.gi, c.gt), 1).tolist()}
    fine_c, coarse_c = a.candidates(preds, TARGETS, False), a.candidates(preds, TARGETS, True)
    assert key(fine_c) < key(coarse_c)
    cell = lambda c: {tuple(r) for r in torch.stack((c.level, c.b, c.a, c.gj, c.gi), 1).tolist()}
    fine_o, coarse_o = a.both(preds, TARGETS)  # official: duplicate columns, a prediction may be positive twice
    fine, coarse = LeadGuidedAssigner(ANCHORS, [8, 16, 32], nc=3, dedup=True).both(preds, TARGETS)
    assert len(cell(fine)) == fine.n and len(cell(coarse)) == coarse.n  # merged: each prediction at most once
    assert cell(coarse_o) <= {k[:5] for k in key(coarse_c)} and cell(fine_o) <= {k[:5] for k in key(fine_c)}
    # two gts on one box name the same cells: official duplicate columns make a prediction positive twice
    twin = torch.tensor([[0, 1, 40, 40, 80, 90], [0, 2, 40, 40, 80, 90]])
    off = a(preds, twin)
    merged = LeadGuidedAssigner(ANCHORS, [8, 16, 32], nc=3, dedup=True)(preds, twin)
    assert off.n > len(cell(off)) and merged.n == len(cell(merged))
    assert cell(fine) <= {k[:5] for k in key(fine_c)} and cell(coarse) <= {k[:5] for k in key(coarse_c)}
    assert coarse.n > fine.n
    assert set(fine.gt.tolist()) == {0, 1, 2, 3}  # every gt gets at least one positive
    # each positive's gt lives in the same image
    assert (TARGETS[fine.gt, 0].long() == fine.b).all() and (TARGETS[coarse.gt, 0].long() == coarse.b).all()


def test_lead_guided_plain_and_empty_and_p6():
    a = LeadGuidedAssigner(ANCHORS, [8, 16, 32], nc=3)
    preds = _preds()
    plain = a(preds, TARGETS, ota=False)
    assert plain.n == a.candidates(preds, TARGETS).n and (plain.gt >= 0).all()
    assert a(preds, TARGETS[:0]).n == 0 and a(preds, TARGETS[:0], coarse=True).n == 0
    anchors6 = torch.tensor([[[19, 27], [44, 40], [38, 94]], [[96, 68], [86, 152], [180, 137]],
                             [[140, 301], [303, 264], [238, 542]], [[436, 615], [739, 380], [925, 792]]],
                            dtype=torch.float32)
    a6 = LeadGuidedAssigner(anchors6, [8, 16, 32, 64], nc=3)
    t = torch.tensor([[0, 0, 10, 10, 60, 70], [1, 1, 0, 0, 250, 240]])
    fine = a6(_preds(size=256, strides=(8, 16, 32, 64)), t)
    assert fine.n > 0 and set(fine.gt.tolist()) == {0, 1}
