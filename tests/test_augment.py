"""Boxes follow pixels through every augmentation.

Each test draws filled rectangles of distinct saturated hues on a grey noisy background, transforms
image and labels, then finds each hue's pixels again and compares their bounding box with the
transformed label. Backgrounds are grey (low saturation), so a hue mask finds only the object.
"""
import cv2
import numpy as np
import pytest

from yoloforge.data import augment as A
from yoloforge.utils.boxes import box_iou

HUES = [0, 20, 40, 60, 80, 100, 120, 140, 160]  # OpenCV hue (0..179): 9 separable colours


def background(rng, h, w):
    grey = rng.integers(70, 190, (h, w, 1))
    return np.clip(grey + rng.integers(-6, 7, (h, w, 3)), 0, 255).astype(np.uint8)


def hue_bgr(k):
    hsv = np.uint8([[[HUES[k], 255, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def scene(rng, h, w, boxes):
    """Image with rectangle k (xyxy ints) in hue k; labels [k, box]."""
    img = background(rng, h, w)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = hue_bgr(k)
    labels = np.array([[k, *b] for k, b in enumerate(boxes)], np.float32).reshape(-1, 5)
    return img, labels


def hue_box(img, k, min_sat=60, tol=6, allowed=None):
    """Bounding box (xyxy, pixel edges) of the pixels of hue k (within ``allowed`` if given), or None."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.int32)
    dh = np.abs(hsv[..., 0] - HUES[k])
    dh = np.minimum(dh, 180 - dh)
    m = (dh <= tol) & (hsv[..., 1] >= min_sat) & (hsv[..., 2] >= 60)
    if allowed is not None:
        m &= allowed
    if m.sum() < 4:
        return None
    ys, xs = np.nonzero(m)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def check_follow(img, labels, ks=None, tol=3.0, min_iou=0.9, isolate=False):
    """Each label's box matches its hue's pixels; boxes clipped at the border contain them instead.

    ``isolate``: look for label k's hue only near its box and outside the other labels' boxes (mixup
    blends two colours into a third hue where two objects overlap).
    """
    h, w = img.shape[:2]
    n = 0
    for j, (c, *box) in enumerate(labels):
        k = int(c)
        if ks is not None and k not in ks:
            continue
        box = np.array(box, np.float32)
        allowed = None
        if isolate:
            allowed = np.zeros((h, w), bool)
            x1, y1, x2, y2 = (int(v) for v in np.round(box))
            allowed[max(0, y1 - 8):y2 + 8, max(0, x1 - 8):x2 + 8] = True
            for i, (_, *ob) in enumerate(labels):
                if i != j:
                    ox1, oy1, ox2, oy2 = (int(v) for v in np.round(ob))
                    allowed[oy1:oy2, ox1:ox2] = False
        got = hue_box(img, k, allowed=allowed)
        assert got is not None, f"label of hue {k} has no pixels"
        at_edge = box[0] <= 1 or box[1] <= 1 or box[2] >= w - 1 or box[3] >= h - 1
        if at_edge:  # enclosing box of clipped corners >= visible part
            assert (got[:2] >= box[:2] - tol).all() and (got[2:] <= box[2:] + tol).all(), (k, box, got)
        else:
            assert np.abs(got - box).max() <= tol, (k, box, got)
            if min(box[2] - box[0], box[3] - box[1]) >= 30:
                assert box_iou(got[None], box[None])[0, 0] > min_iou
        n += 1
    return n


BOXES = [(40, 50, 160, 130), (200, 20, 290, 170), (60, 170, 140, 230)]


def test_scene_helpers_find_colours():
    img, lab = scene(np.random.default_rng(0), 240, 320, BOXES)
    for k, b in enumerate(BOXES):
        assert np.array_equal(hue_box(img, k), np.float32(b))
    assert hue_box(img, 5) is None


@pytest.mark.parametrize("shape,new,scaleup", [((240, 320), 640, True), ((240, 320), 160, True),
                                               ((240, 320), (320, 480), True), ((240, 320), 640, False)])
def test_letterbox_boxes_follow(shape, new, scaleup):
    img, lab = scene(np.random.default_rng(1), *shape, BOXES)
    out, ratio, pad = A.letterbox(img, new, scaleup=scaleup)
    nh, nw = (new, new) if isinstance(new, int) else new
    assert out.shape == (nh, nw, 3) and out.dtype == np.uint8
    if not scaleup:
        assert ratio == (1.0, 1.0)
    px, py = int(pad[0]), int(pad[1])
    assert (out[:py] == 114).all() and (out[:, :px] == 114).all()
    new_lab = A.scale_labels(lab, ratio, pad)
    assert check_follow(out, new_lab, tol=1.5) == 3


def test_letterbox_auto_pads_to_stride():
    img = np.zeros((100, 250, 3), np.uint8)
    out, ratio, pad = A.letterbox(img, 640, auto=True, stride=32)
    assert out.shape[1] == 640 and out.shape[0] % 32 == 0 and out.shape[0] < 640


@pytest.mark.parametrize("flip", [A.fliplr, A.flipud])
def test_flips_exact(flip):
    img, lab = scene(np.random.default_rng(2), 240, 320, BOXES)
    out, new = flip(img, lab)
    assert check_follow(out, new, tol=0) == 3
    back, lab2 = flip(out, new)
    assert np.array_equal(back, img) and np.allclose(lab2, lab)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kw", [dict(degrees=30, translate=0.1, scale=0.4, shear=8),
                                dict(degrees=0, translate=0.2, scale=0.5, shear=0),
                                dict(degrees=10, translate=0.1, scale=0.2, shear=5, perspective=0.0005)])
def test_random_affine_boxes_follow(seed, kw):
    rng = np.random.default_rng(seed)
    img, lab = scene(rng, 320, 320, [(60, 60, 150, 140), (180, 170, 270, 260), (170, 40, 250, 110)])
    out, new = A.random_affine(img, lab, rng=rng, **kw)
    assert out.shape == img.shape
    assert (new[:, 1:] >= 0).all() and (new[:, [1, 3]] <= 320).all() and (new[:, [2, 4]] <= 320).all()
    check_follow(out, new, tol=3)
    for k in set(range(3)) - set(new[:, 0].astype(int)):  # dropped: at most a sliver is left
        got = hue_box(out, k)
        assert got is None or min(got[2] - got[0], got[3] - got[1]) <= 3 or \
            (got[2] - got[0]) * (got[3] - got[1]) < 0.1 * 90 * 90 * (1 + kw["scale"]) ** 2


def test_random_affine_identity_and_candidates():
    img, lab = scene(np.random.default_rng(3), 200, 200, BOXES[:1])
    out, new = A.random_affine(img, lab, degrees=0, translate=0, scale=0, shear=0, rng=0)
    assert np.array_equal(out, img) and np.allclose(new, lab)
    before = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100]], np.float32)
    after = np.array([[0, 0, 90, 90], [0, 0, 1.5, 50], [0, 0, 20, 20]], np.float32)
    assert A.box_candidates(before, after).tolist() == [True, False, False]


def _tile_loader(size):
    """load_fn for mosaic tests: image i (various aspect ratios) holds one rectangle of hue i."""
    def load(i):
        r = np.random.default_rng(100 + int(i))
        h, w = [(size, size), (size // 2, size), (size, int(size * 0.7)), (int(size * 0.8), size)][int(i) % 4]
        bw, bh = int(r.integers(w // 4, w // 2)), int(r.integers(h // 4, h // 2))
        x1, y1 = int(r.integers(0, w - bw)), int(r.integers(0, h - bh))
        img = background(r, h, w)
        img[y1:y1 + bh, x1:x1 + bw] = hue_bgr(int(i))
        return img, np.array([[int(i), x1, y1, x1 + bw, y1 + bh]], np.float32)
    return load


def test_mosaic_canvas_exact():
    load = _tile_loader(160)
    for seed in range(5):
        canvas, lab = A.mosaic4(load, [0, 1, 2, 3], 160, rng=seed, return_full=True)
        assert canvas.shape == (320, 320, 3)
        check_follow(canvas, lab, tol=0)


def test_mosaic9_equals_official_load_mosaic9():
    """The 2S x 2S window of the 9-image mosaic, pixels and labels, equals WongKinYiu/yolov7's ``load_mosaic9``
    (fixture by tests/parity/make_augment_fixtures.py: the official function on the same tiles and indices,
    window offsets drawn as yoloforge draws them)."""
    from pathlib import Path

    f = np.load(Path(__file__).parent / "fixtures" / "parity" / "mosaic9.npz")
    n_cases = sum(k.startswith("case") for k in f.files)
    assert n_cases == 4

    def load(i):
        return f[f"img{int(i)}"], f[f"boxes{int(i)}"]

    for k in range(n_cases):
        centre, *others, seed = f[f"case{k}"].tolist()
        canvas, lab = A.mosaic9(load, [centre, *others], 64, rng=np.random.default_rng(seed), return_full=True)
        assert canvas.shape == (128, 128, 3) and np.array_equal(canvas, f[f"canvas{k}"]), f"case {k}: pixels differ"
        want = f[f"labels{k}"]  # the official keeps boxes clipped to nothing; both drop them in the affine step
        want = want[((want[:, 3] - want[:, 1]) > 1) & ((want[:, 4] - want[:, 2]) > 1)]
        assert lab.shape == want.shape, f"case {k}"
        np.testing.assert_allclose(lab, want, atol=1e-3)


def test_mosaic9_boxes_follow_and_share():
    load = _tile_loader(96)
    for seed in range(4):
        canvas, lab = A.mosaic9(load, list(range(9)), 96, rng=seed, return_full=True)
        assert canvas.shape == (192, 192, 3)
        check_follow(canvas, lab, tol=0)
    img, lab = A.mosaic9(load, list(range(9)), 96, rng=3, degrees=10, scale=0.3)
    assert img.shape == (96, 96, 3) and check_follow(img, lab, tol=3) == len(lab)
    # hyp mosaic9 = share of 9-image mosaics; at 0 there is no extra random draw (the 4-image stream is unchanged)
    sizes = []
    for seed in range(200):
        seen = set()
        A.Augmenter({"mosaic9": 0.2, "mixup": 0.0}, imgsz=96)(lambda i: seen.add(len(seen)) or load(int(i)), 0, 9,
                                                                 np.random.default_rng(seed))
        sizes.append(len(seen))
    assert set(sizes) == {4, 9} and 0.1 < sizes.count(9) / len(sizes) < 0.3
    # YOLOv6's mosaic_shuffle: the sample's own image lands on every tile, not only the top-left one
    first = []
    for seed in range(40):
        order = []
        A.Augmenter({"mosaic_shuffle": True, "mixup": 0.0}, imgsz=96)(
            lambda i: order.append(int(i)) or load(int(i)), 7, 9, np.random.default_rng(seed))
        first.append(order.index(7) if order.count(7) == 1 else None)
    assert {0, 1, 2, 3} <= set(first)
    a = A.Augmenter({"mixup": 0.0}, imgsz=96)(load, 1, 9, np.random.default_rng(5))
    b = A.Augmenter({"mixup": 0.0, "mosaic9": 0.0}, imgsz=96)(load, 1, 9, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0])


@pytest.mark.parametrize("seed", range(8))
def test_mosaic_affine_boxes_follow(seed):
    load = _tile_loader(256)
    img, lab = A.mosaic4(load, [0, 1, 2, 3], 256, rng=seed, degrees=15, translate=0.1, scale=0.3, shear=3)
    assert img.shape == (256, 256, 3)
    assert check_follow(img, lab, tol=3) == len(lab)


def test_mixup_keeps_both_label_sets():
    rng = np.random.default_rng(4)
    a, la = scene(rng, 200, 200, [(20, 20, 90, 100)])
    b, lb = scene(rng, 200, 200, [(0, 0, 0, 0), (120, 100, 190, 180)])  # empty hue 0; hue 1 elsewhere
    lb = lb[1:]
    out, lab = A.mixup(a, la, b, lb, rng=5)
    assert out.shape == a.shape and len(lab) == 2
    assert check_follow(out, lab, tol=1) == 2
    r = (out.astype(float) - b) / (a.astype(float) - b + 1e-9)  # the blend is one r for all pixels
    sel = np.abs(a.astype(float) - b) > 40
    assert 0.3 < np.median(r[sel]) < 0.7 and np.abs(r[sel] - np.median(r[sel])).max() < 0.05


def test_augment_hsv():
    img, _ = scene(np.random.default_rng(6), 64, 64, BOXES[:0] + [(5, 5, 30, 30)])
    assert A.augment_hsv(img, 0, 0, 0) is img
    o1 = A.augment_hsv(img, 0.015, 0.7, 0.4, rng=1)
    o2 = A.augment_hsv(img, 0.015, 0.7, 0.4, rng=1)
    assert o1.shape == img.shape and o1.dtype == np.uint8 and np.array_equal(o1, o2)
    assert not np.array_equal(o1, img)


def test_augmenter_pipeline_boxes_follow():
    """mosaic (or letterbox+affine) + mixup + flips, colours untouched: every label matches its pixels."""
    base = _tile_loader(192)
    hyp = dict(hsv_h=0, hsv_s=0, hsv_v=0, degrees=10, shear=2, mosaic=0.7, mixup=0.5, flipud=0.5)
    aug = A.Augmenter(hyp, imgsz=192)
    compared = 0
    for seed in range(24):
        calls = {}

        def load(i):
            calls[int(i)] = calls.get(int(i), 0) + 1
            return base(int(i))

        img, lab = aug(load, seed % 8, 8, np.random.default_rng(seed))
        assert img.shape == (192, 192, 3) and lab.dtype == np.float32
        assert (lab[:, 1:] >= 0).all() and (lab[:, 1:] <= 192).all()
        assert ((lab[:, 3] > lab[:, 1]) & (lab[:, 4] > lab[:, 2])).all()
        # an image loaded twice gives two same-hue objects, and mixup may blend two colours where
        # two boxes overlap: compare the objects that are unambiguous
        iou = box_iou(lab[:, 1:], lab[:, 1:]) - np.eye(len(lab))
        ks = [int(c) for c, row in zip(lab[:, 0], iou) if calls[int(c)] == 1 and row.max(initial=0) <= 0]
        compared += check_follow(img, lab, ks=ks, tol=3, isolate=True)
    assert compared >= 15


def test_augmenter_defaults_and_determinism():
    aug = A.Augmenter({"lr0": 0.01, "mosaic": 0.0})
    assert aug.hyp["fliplr"] == 0.5 and aug.hyp["hsv_s"] == 0.7 and aug.hyp["mosaic"] == 0.0
    assert "lr0" not in aug.hyp
    load = _tile_loader(128)
    a = A.Augmenter(imgsz=128)(load, 1, 4, np.random.default_rng(9))
    b = A.Augmenter(imgsz=128)(load, 1, 4, np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
