"""Tests for yoloforge.utils.nms: every kernel equals a plain greedy reference."""
import pytest
import torch

from yoloforge.utils import nms as N
from yoloforge.utils.nms import (batched_nms, greedy_nms_torch, nms, non_max_suppression, pairwise_diou,
                                 pairwise_iou)

BACKENDS = ["greedy", "torch", "cv2"] + (["torchvision"] if N.HAS_TORCHVISION else [])


def reference_greedy(boxes, scores, thr, kind="iou"):
    """Textbook greedy NMS, one box at a time (stable order on ties)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    fn = pairwise_diou if kind == "diou" else pairwise_iou
    ov = fn(boxes.double(), boxes.double()).numpy().tolist()
    keep = []
    for i in order:
        if all(ov[k][i] <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(seed, n=None, span=300.0, size=90.0):
    g = torch.Generator().manual_seed(seed)
    n = n if n is not None else int(torch.randint(1, 400, (1,), generator=g))
    xy = torch.rand(n, 2, generator=g) * span
    wh = torch.rand(n, 2, generator=g) * size + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), g


def test_pairwise_iou_matches_boxes_module():
    from yoloforge.utils.boxes import box_iou
    a, _, _ = random_boxes(0, 50)
    b, _, _ = random_boxes(1, 30)
    torch.testing.assert_close(pairwise_iou(a, b), box_iou(a, b), rtol=1e-5, atol=1e-6)


def test_diou_hand_case():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 0, 3, 2]])
    # IoU = 2 / 6; centres 1 apart; enclosing box 3 x 2 -> diag^2 = 13
    assert pairwise_diou(a, b).item() == pytest.approx(2 / 6 - 1 / 13, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("thr", [0.3, 0.45, 0.7])
def test_kernels_equal_reference(backend, thr):
    for seed in range(12):
        boxes, scores, _ = random_boxes(seed)
        assert nms(boxes, scores, thr, backend=backend).tolist() == reference_greedy(boxes, scores, thr)


@pytest.mark.parametrize("resolve", ["loop", "blocks"])
def test_torch_resolvers_iou_and_diou(resolve):
    for seed in range(8):
        boxes, scores, _ = random_boxes(100 + seed, span=150.0)
        for kind in ("iou", "diou"):
            got = greedy_nms_torch(boxes, scores, 0.45, kind=kind, resolve=resolve).tolist()
            assert got == reference_greedy(boxes, scores, 0.45, kind)


def test_blocks_resolver_long_chain_crosses_blocks():
    # boxes sliding by 1 px: a suppression chain much longer than one block
    n = 700
    x = torch.arange(n, dtype=torch.float32)
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)
    scores = torch.linspace(1, 0.1, n)
    ref = reference_greedy(boxes, scores, 0.5)
    assert greedy_nms_torch(boxes, scores, 0.5, resolve="blocks").tolist() == ref
    assert nms(boxes, scores, 0.5, backend="cv2").tolist() == ref


def test_diou_suppresses_less_than_iou():
    boxes, scores, _ = random_boxes(7, 300, span=120.0)
    k_iou = nms(boxes, scores, 0.45, kind="iou", backend="torch")
    k_diou = nms(boxes, scores, 0.45, kind="diou")
    assert len(k_diou) > len(k_iou)  # DIoU <= IoU, so fewer pairs exceed the threshold
    with pytest.raises(ValueError):
        nms(boxes, scores, 0.45, kind="diou", backend="cv2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_nms_is_per_class(backend):
    boxes, scores, g = random_boxes(3, 500)
    idxs = torch.randint(0, 5, (500,), generator=g)
    keep = batched_nms(boxes, scores, idxs, 0.5, backend=backend)
    expected = []
    for c in range(5):
        sel = (idxs == c).nonzero().squeeze(1)
        expected += sel[reference_greedy(boxes[sel], scores[sel], 0.5)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])
    # the class-split path of the torch kernel gives the same answer
    split = batched_nms(boxes, scores, idxs, 0.5, backend="torch", split_above=10)
    assert split.tolist() == keep.tolist()


def _pred(seed, b=2, n=400, nc=4):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, n, 2, generator=g) * 300
    wh = torch.rand(b, n, 2, generator=g) * 80 + 2
    return torch.cat([xy, xy + wh, torch.rand(b, n, nc, generator=g)], 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_max_suppression_matches_manual(backend):
    pred = _pred(0)
    out = non_max_suppression(pred, conf=0.5, iou=0.45, max_det=1000, backend=backend)
    assert len(out) == 2
    for x, det in zip(pred, out):
        score, cls = x[:, 4:].max(1)
        m = score > 0.5
        b, s, c = x[m, :4], score[m], cls[m]
        exp = []
        for k in range(4):
            sel = (c == k).nonzero().squeeze(1)
            exp += sel[reference_greedy(b[sel], s[sel], 0.45)].tolist()
        exp = torch.tensor(exp)
        exp = exp[s[exp].argsort(descending=True)]
        assert det.shape == (len(exp), 6)
        torch.testing.assert_close(det[:, :4], b[exp])
        torch.testing.assert_close(det[:, 4], s[exp])
        torch.testing.assert_close(det[:, 5], c[exp].float())


def test_non_max_suppression_options():
    pred = _pred(1, b=3)
    # max_det and sorting
    out = non_max_suppression(pred, conf=0.01, iou=0.9, max_det=17)
    assert all(len(d) == 17 for d in out)
    assert all(torch.all(d[:-1, 4] >= d[1:, 4]) for d in out)
    # classes filter
    out = non_max_suppression(pred, conf=0.1, classes=[2])
    assert all(set(d[:, 5].tolist()) <= {2.0} for d in out) and sum(len(d) for d in out) > 0
    # agnostic never keeps two boxes overlapping more than iou, whatever their class
    for d in non_max_suppression(pred, conf=0.1, iou=0.3, agnostic=True):
        iou = torch.triu(pairwise_iou(d[:, :4], d[:, :4]), 1)
        assert iou.max() <= 0.3
    # multi-label keeps several classes for one box and is a superset in count
    single = non_max_suppression(pred, conf=0.3, iou=0.45, max_det=3000)
    multi = non_max_suppression(pred, conf=0.3, iou=0.45, max_det=3000, multi_label=True)
    for s, m in zip(single, multi):
        assert len(m) > len(s)
        assert (m[:, 4] > 0.3).all()
    # a single box with all scores above conf yields one row per class
    one = torch.tensor([[[0.0, 0, 10, 10, 0.9, 0.8, 0.7]]])
    d = non_max_suppression(one, conf=0.5, multi_label=True)[0]
    assert d[:, 5].tolist() == [0.0, 1.0, 2.0]
    assert non_max_suppression(one, conf=0.5)[0].shape == (1, 6)


def test_non_max_suppression_empty_and_max_nms_and_dtype():
    pred = _pred(2)
    out = non_max_suppression(pred, conf=0.999999)
    assert all(d.shape == (0, 6) for d in out)
    out = non_max_suppression(pred.double(), conf=0.0, iou=1.0, max_nms=50, max_det=1000)
    assert all(d.shape[0] == 50 and d.dtype == torch.float64 for d in out)
    assert non_max_suppression(torch.zeros(1, 0, 6), conf=0.1)[0].shape == (0, 6)
    # fp16 input with large class offsets still keeps boxes of different classes apart
    half = non_max_suppression(pred.half(), conf=0.3)
    full = non_max_suppression(pred, conf=0.3)
    assert [len(h) for h in half] == [len(f) for f in full]
    with pytest.raises(ValueError):
        non_max_suppression(pred, conf=1.5)


def test_diou_nms_through_api_and_benchmark():
    pred = _pred(3, b=1)
    d_iou = non_max_suppression(pred, conf=0.2, kind="iou")[0]
    d_diou = non_max_suppression(pred, conf=0.2, kind="diou")[0]
    assert len(d_diou) >= len(d_iou)
    res = N.benchmark(200, repeats=1)
    assert res["torch"] > 0 and res["cv2"] > 0


def test_greedy_max_keep_equals_prefix_of_full_pass():
    for seed in range(6):
        boxes, scores, _ = random_boxes(300 + seed)
        full = reference_greedy(boxes, scores, 0.5)
        for k in (1, 5, 20):
            assert nms(boxes, scores, 0.5, backend="greedy", max_keep=k).tolist() == full[:k]
        for kind in ("iou", "diou"):
            assert nms(boxes, scores, 0.5, kind=kind, backend="greedy").tolist() == reference_greedy(boxes, scores, 0.5, kind)


def test_multi_label_top_candidates_taken_from_the_flat_score_map():
    """With more (box, class) pairs above conf than max_nms, the best max_nms pairs are picked from the flat
    score map directly; the result equals the gather-then-topk path (forced here by a class filter that
    keeps every class)."""
    g = torch.Generator().manual_seed(0)
    n, nc = 3000, 20
    xy = torch.rand(2, n, 2, generator=g) * 300
    wh = 10 + torch.rand(2, n, 2, generator=g) * 60
    pred = torch.cat([xy, xy + wh, torch.rand(2, n, nc, generator=g)], -1)
    for max_nms, conf in ((5000, 0.001), (500, 0.3)):
        assert int((pred[0, :, 4:] > conf).sum()) > max_nms
        fast = non_max_suppression(pred, conf=conf, iou=0.5, multi_label=True, max_nms=max_nms)
        ref = non_max_suppression(pred, conf=conf, iou=0.5, multi_label=True, max_nms=max_nms, classes=range(nc))
        for a, b in zip(fast, ref):
            assert len(a) == 300 and torch.equal(a, b)
