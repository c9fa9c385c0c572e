"""Tests for yoloforge.utils.metrics."""
import numpy as np
import pytest
import torch

from yoloforge.utils.metrics import (ConfusionMatrix, ap_101, coco80_to_91, coco_map, match_predictions,
                                     pr_curves, to_coco_results)

NAMES = ["person", "car", "dog", "cat"]


def realistic_set(seed=0, n_img=15):
    """Random gts (class 3 never present), jittered gts as dets plus false positives, a few empty images."""
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for i in range(n_img):
        n = 0 if i % 5 == 4 else int(rng.integers(1, 9))
        xy = rng.uniform(0, 500, (n, 2))
        b = np.concatenate([xy, xy + rng.uniform(4, 160, (n, 2))], 1)
        c = rng.integers(0, 3, n)
        gts.append(dict(boxes=b, classes=c, shape=(720, 680), image_id=1000 + i, file_name=f"{i}.jpg"))
        keep = rng.random(n) > 0.2  # some misses
        jb = b[keep] + rng.normal(0, 5, (keep.sum(), 4))
        m = int(rng.integers(0, 6))
        fxy = rng.uniform(0, 500, (m, 2))
        fb = np.concatenate([fxy, fxy + rng.uniform(4, 160, (m, 2))], 1)
        dts.append(dict(boxes=np.concatenate([jb, fb]),
                        scores=np.concatenate([rng.uniform(0.2, 1, keep.sum()), rng.uniform(0, 0.9, m)]),
                        classes=np.concatenate([c[keep], rng.integers(0, 4, m)])))
    return gts, dts


def test_backends_agree():
    gts, dts = realistic_set(0)
    a = coco_map(gts, dts, NAMES, backend="faster")
    b = coco_map(gts, dts, NAMES, backend="pycocotools")
    for k in ("map", "map50", "map75", "mar_100"):
        assert a[k] == pytest.approx(b[k], abs=1e-4)
    np.testing.assert_allclose(a["per_class_ap"], b["per_class_ap"], atol=1e-4)
    np.testing.assert_allclose(a["per_class_ap50"], b["per_class_ap50"], atol=1e-4)
    assert np.isnan(a["per_class_ap"][3]) and np.isnan(a["per_class_ap50"][3])  # no gt for class 3
    assert 0.2 < a["map50"] < 1.0 and a["map"] < a["map50"]
    # the overall number is the mean of the per-class numbers over classes with gt
    assert a["map"] == pytest.approx(np.nanmean(a["per_class_ap"]), abs=1e-9)
    assert a["per_class_instances"].sum() == sum(len(g["classes"]) for g in gts)
    assert "Average Precision" in a["summary"]


def test_class_map_and_array_dets_give_same_numbers(capsys):
    gts, dts = realistic_set(1)
    base = coco_map(gts, dts, NAMES)
    cmap = [5, 17, 3, 90]  # non-contiguous, not sorted
    arr = [torch.from_numpy(np.concatenate([d["boxes"], d["scores"][:, None], d["classes"][:, None]], 1))
           for d in dts]
    mapped = coco_map(gts, arr, NAMES, class_map=cmap)
    assert mapped["map"] == pytest.approx(base["map"], abs=1e-12)
    np.testing.assert_allclose(mapped["per_class_ap"], base["per_class_ap"])
    assert capsys.readouterr().out == ""  # the libraries' chatter is swallowed


def test_perfect_detections():
    gts, _ = realistic_set(2)
    dts = [dict(boxes=g["boxes"], scores=np.ones(len(g["boxes"])), classes=g["classes"]) for g in gts]
    for backend in ("faster", "pycocotools"):
        r = coco_map(gts, dts, NAMES, backend=backend)
        assert r["map"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0)
        np.testing.assert_allclose(r["per_class_ap"][:3], 1.0)


def test_hand_case_iou_062():
    # gt 100x100, det 100x62 inside it: IoU = 0.62 -> matched at thresholds 0.50, 0.55, 0.60 only.
    # With one gt, a match gives precision 1 at all 101 recall points (AP 1) and a miss AP 0, so
    # AP50 = 1, AP75 = 0, AP50-95 = 3 / 10.
    gts = [dict(boxes=np.array([[10.0, 10, 110, 110]]), classes=np.array([0]), shape=(200, 200))]
    dts = [dict(boxes=np.array([[10.0, 10, 110, 72]]), scores=np.array([0.9]), classes=np.array([0]))]
    for backend in ("faster", "pycocotools"):
        r = coco_map(gts, dts, ["a"], backend=backend)
        assert r["map50"] == pytest.approx(1.0)
        assert r["map75"] == pytest.approx(0.0)
        assert r["map"] == pytest.approx(0.3)
    # a higher-scored false positive before the true positive halves precision: AP50 = 0.5
    dts2 = [dict(boxes=np.array([[10.0, 10, 110, 72], [150, 150, 190, 190]]), scores=np.array([0.5, 0.9]),
                 classes=np.array([0, 0]))]
    assert coco_map(gts, dts2, ["a"])["map50"] == pytest.approx(0.5)


def test_empty_cases():
    gts, _ = realistic_set(3)
    r = coco_map(gts, [None] * len(gts), NAMES, backend="pycocotools")
    assert r["map"] == 0.0 and r["per_class_ap"][0] == 0.0 and np.isnan(r["per_class_ap"][3])
    r2 = coco_map(gts, [dict(boxes=np.zeros((0, 4)), scores=[], classes=[]) for _ in gts], NAMES)
    assert r2["map"] == 0.0
    no_gt = [dict(boxes=np.zeros((0, 4)), classes=np.zeros(0, int), shape=(10, 10))]
    r3 = coco_map(no_gt, [np.array([[0, 0, 5, 5, 0.9, 1]])], NAMES)
    assert np.isnan(r3["map"]) and np.isnan(r3["per_class_ap"]).all()
    with pytest.raises(ValueError):
        coco_map(gts, [None], NAMES)


def test_to_coco_results():
    dts = [np.array([[10.12345, 20.0, 30.5, 60.25, 0.912345678, 2]]), None,
           dict(boxes=torch.tensor([[0.0, 0, 1, 1]]), scores=torch.tensor([0.5]), classes=torch.tensor([79]))]
    rows = to_coco_results(dts, [42, 43, 44], class_map=coco80_to_91())
    assert len(rows) == 2
    assert rows[0] == {"image_id": 42, "category_id": 3, "bbox": [10.123, 20.0, 20.377, 40.25], "score": 0.91235}
    assert rows[1]["category_id"] == 90 and rows[1]["image_id"] == 44
    assert len(coco80_to_91()) == 80 and coco80_to_91()[11] == 13
    assert to_coco_results(dts, [1, 2, 3])[0]["category_id"] == 2


def test_confusion_matrix_hand_case():
    cm = ConfusionMatrix(nc=3, conf=0.25, iou=0.45)
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [70, 70, 80, 80.0]])
    gt_cls = np.array([0, 1, 2, 2])
    dets = np.array([
        [0, 0, 10, 10, 0.9, 0],    # correct class 0
        [20, 20, 40, 41, 0.8, 2],  # gt class 1 predicted as 2
        [50, 50, 60, 60, 0.1, 2],  # below conf: ignored -> gt 2 missed
        [100, 100, 120, 120, 0.7, 1],  # background predicted as 1
        [0, 0, 10, 11, 0.6, 0],    # duplicate of the first: gt already taken -> FP on background
        [70, 70, 80, 80, 0.95, 2],  # correct class 2
    ])
    cm.update(dets, gt_boxes, gt_cls)
    exp = np.zeros((4, 4), int)
    exp[0, 0] = 1
    exp[2, 1] = 1
    exp[3, 2] = 1  # missed gt class 2
    exp[1, 3] = 1
    exp[0, 3] = 1
    exp[2, 2] = 1
    np.testing.assert_array_equal(cm.matrix, exp)
    cm.update(np.zeros((0, 6)), gt_boxes[:1], gt_cls[:1])  # image with no detections
    cm.update(dets[:1], np.zeros((0, 4)), np.zeros(0))     # image with no gts
    assert cm.matrix[3, 0] == 1 and cm.matrix[0, 3] == 2
    tp, fp = cm.tp_fp()
    np.testing.assert_array_equal(tp, [1, 0, 1])
    np.testing.assert_array_equal(fp, [2, 1, 1])
    assert np.allclose(cm.normalized().sum(0)[[0, 1, 2]], 1.0)


def test_match_predictions():
    gt = np.array([[0, 0, 100, 100.0], [200, 200, 300, 300]])
    gc = np.array([0, 1])
    dets = np.array([[0, 0, 100, 62, 0.9, 0],    # IoU .62 with gt0
                     [0, 0, 100, 100, 0.8, 0],   # IoU 1 with gt0, wins it at every threshold
                     [200, 200, 300, 300, 0.7, 0]])  # wrong class
    c = match_predictions(dets, gt, gc)
    assert c.shape == (3, 10)
    assert not c[0].any() and c[1].all() and not c[2].any()
    c = match_predictions(dets[[0]], gt, gc)
    assert c[0].tolist() == [True] * 3 + [False] * 7
    assert match_predictions(np.zeros((0, 6)), gt, gc).shape == (0, 10)


def test_pr_curves_and_ap101_consistent_with_coco():
    gts, dts = realistic_set(4)
    tps, confs, pcls = [], [], []
    for g, d in zip(gts, dts):
        det = np.concatenate([d["boxes"], d["scores"][:, None], d["classes"][:, None]], 1)
        tps.append(match_predictions(det, g["boxes"], g["classes"]))
        confs.append(d["scores"])
        pcls.append(d["classes"])
    tcls = np.concatenate([g["classes"] for g in gts])
    r = pr_curves(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), tcls, nc=4)
    assert r["p_curve"].shape == (4, 1000) and r["py"].shape == (4, 101)
    assert np.isnan(r["ap50"][3]) and not np.isnan(r["ap50"][:3]).any()
    coco = coco_map(gts, dts, NAMES)
    # same matching rule as COCO at IoU 0.5 on this data -> same AP50 per class (within interpolation noise)
    np.testing.assert_allclose(r["ap50"][:3], coco["per_class_ap50"][:3], atol=0.03)
    assert 0 < r["mp"] <= 1 and 0 < r["mr"] <= 1
    i = np.searchsorted(r["px"], r["best_conf"])
    np.testing.assert_allclose(r["p"][:3], r["p_curve"][:3, i])
    # recall is non-increasing with the confidence threshold
    assert np.all(np.diff(r["r_curve"], axis=1) <= 1e-12)


def test_ap101_hand():
    ap, _, q = ap_101(np.array([0.5, 1.0]), np.array([1.0, 0.5]))
    # recall points 0..0.5 (51 of them) at precision 1, 0.51..1.0 (50) at 0.5
    assert ap == pytest.approx((51 * 1.0 + 50 * 0.5) / 101)
    assert ap_101(np.zeros(0), np.zeros(0))[0] == 0.0
