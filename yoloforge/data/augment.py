"""Image + box augmentations (YOLOv4 bag of freebies as used by YOLOv5/6/7).

Every function works on numpy ``uint8`` HWC BGR images (as read by cv2) and labels ``(n, 5)``
float32 ``[cls, x1, y1, x2, y2]`` in pixels of that image, and returns the same. Randomness comes
only from the ``numpy.random.Generator`` passed in, so a caller that seeds it per item gets the
same sample every time (the dataset seeds it from ``(seed, epoch, index)``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

PAD = 114

DEFAULT_HYP = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, shear=0.0,
                   perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mosaic9=0.0, mosaic_shuffle=False,
                   mixup=0.0, cutmix=0.0, mixup_beta=32.0, scale_bias=0.0)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def letterbox(img, new_shape=640, color=PAD, auto=False, scaleup=True, stride=32):
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (int or (h, w)).

    ``auto=True`` pads only to a multiple of ``stride`` (rectangular). ``scaleup=False`` never enlarges.
    Returns ``(img, (rx, ry), (px, py))``: a point (x, y) maps to ``(x * rx + px, y * ry + py)``. The
    ratios are the exact ones of the integer resize and the pads the integer left/top offsets.
    """
    h0, w0 = img.shape[:2]
    nh, nw = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)
    w, h = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))
    if auto:
        nw, nh = w + (-w) % stride, h + (-h) % stride
    if (w, h) != (w0, h0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA)
    left, top = (nw - w) // 2, (nh - h) // 2
    img = cv2.copyMakeBorder(img, top, nh - h - top, left, nw - w - left, cv2.BORDER_CONSTANT,
                             value=(color,) * 3 if isinstance(color, int) else color)
    return img, (w / w0, h / h0), (float(left), float(top))


def scale_labels(labels, ratio, pad):
    """Apply a letterbox ``ratio``/``pad`` to pixel labels (returns a copy)."""
    out = np.array(labels, np.float32).reshape(-1, 5).copy()
    out[:, [1, 3]] = out[:, [1, 3]] * ratio[0] + pad[0]
    out[:, [2, 4]] = out[:, [2, 4]] * ratio[1] + pad[1]
    return out


def box_candidates(before, after, wh_thr=2.0, ar_thr=20.0, area_thr=0.1, eps=1e-16):
    """Keep boxes (xyxy, (n, 4)) still > wh_thr px, > area_thr of their pre-transform area, aspect < ar_thr."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_affine(img, labels, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
                  border=(0, 0), rng=None, color=PAD, scale_bias=0.0):
    """Random rotation/scale/shear/translation (+ optional perspective) of image and boxes.

    The scale gain is uniform in ``[1 - scale, 1 + scale + scale_bias]`` (``scale_bias`` 0.1 in yolov7's
    utils/datasets.py ``random_perspective``, 0 in YOLOv6 and ScaledYOLOv4).

    The output is ``img`` size plus ``2 * border`` (border (by, bx); negative crops: mosaic uses
    ``-S/2`` to go from 2S to S). Each box's 4 corners are transformed, the enclosing box is clipped
    to the output, and boxes that become too small / thin (:func:`box_candidates`) are dropped.
    """
    rng = _rng(rng)
    h = int(round(img.shape[0] + border[0] * 2))
    w = int(round(img.shape[1] + border[1] * 2))
    C = np.eye(3)
    C[0, 2], C[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2  # move the centre to the origin
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    R = np.eye(3)
    a, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale + scale_bias)
    R[:2] = cv2.getRotationMatrix2D((0, 0), a, s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * w
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * h
    M = T @ S @ R @ P @ C
    if border[0] or border[1] or (M != np.eye(3)).any():
        fill = (color,) * 3
        if perspective:
            img = cv2.warpPerspective(img, M, (w, h), borderValue=fill)
        else:
            img = cv2.warpAffine(img, M[:2], (w, h), borderValue=fill)
    labels = np.asarray(labels, np.float32).reshape(-1, 5)
    n = len(labels)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1 x2y2 x1y2 x2y1
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, 0::2], xy[:, 1::2]
        new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, w)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, h)
        keep = box_candidates(labels[:, 1:5] * s, new)
        labels = np.concatenate([labels[keep, :1], new[keep]], 1).astype(np.float32)
    return img, labels


def mosaic4(load_fn, indices, size, rng=None, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, scale_bias=0.0,
            perspective=0.0, return_full=False):
    """4-image mosaic: tiles around a random centre of a 2S×2S canvas, then an affine crop back to S×S.

    ``load_fn(i) -> (img, labels)`` gives an image resized so its long side is ``size`` and its pixel
    labels. With ``return_full=True`` the 2S×2S canvas and its labels are returned without the crop.
    """
    rng = _rng(rng)
    S = size
    yc, xc = (int(v) for v in rng.uniform(S / 2, 3 * S / 2, 2))
    canvas = np.full((2 * S, 2 * S, 3), PAD, np.uint8)
    out = []
    for k, idx in enumerate(indices[:4]):
        img, lab = load_fn(idx)
        h, w = img.shape[:2]
        if k == 0:    # top left: the image's bottom-right corner sits at the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif k == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * S), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif k == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * S, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:         # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * S), min(2 * S, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        lab = np.array(lab, np.float32).reshape(-1, 5).copy()
        lab[:, [1, 3]] += x1a - x1b
        lab[:, [2, 4]] += y1a - y1b
        out.append(lab)
    return _finish_mosaic(canvas, np.concatenate(out, 0), S, rng, return_full, degrees=degrees, translate=translate,
                          scale=scale, shear=shear, perspective=perspective, scale_bias=scale_bias)


def _finish_mosaic(canvas, labels, S, rng, return_full, **affine):
    """Labels clipped to the 2S x 2S canvas, boxes of at most one pixel dropped, then the affine crop to S x S."""
    labels[:, 1:] = labels[:, 1:].clip(0, 2 * S)
    labels = labels[((labels[:, 3] - labels[:, 1]) > 1) & ((labels[:, 4] - labels[:, 2]) > 1)]
    if return_full:
        return canvas, labels
    return random_affine(canvas, labels, border=(-S / 2, -S / 2), rng=rng, **affine)


def mosaic9(load_fn, indices, size, rng=None, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, scale_bias=0.0,
            perspective=0.0, return_full=False):
    """9-image mosaic (WongKinYiu/yolov7 utils/datasets.py ``load_mosaic9``): the first image at (S, S) of a
    3S×3S canvas, the eight others around it clockwise from the top (each placed against the centre image and
    the tile before it), a random 2S×2S window of the canvas (offset uniform in [0, S) on each axis), then the
    same affine crop back to S×S as :func:`mosaic4`. Its objects come smaller and more of them are cut by the
    window. ``load_fn`` as in :func:`mosaic4`; ``return_full=True`` returns the 2S×2S window and its labels."""
    rng = _rng(rng)
    S = size
    canvas = np.full((3 * S, 3 * S, 3), PAD, np.uint8)
    out = []
    h0 = w0 = hp = wp = 0
    for k, idx in enumerate(indices[:9]):
        img, lab = load_fn(idx)
        h, w = img.shape[:2]
        if k == 0:  # centre
            h0, w0 = h, w
            c = S, S, S + w, S + h
        elif k == 1:  # top
            c = S, S - h, S + w, S
        elif k == 2:  # top right
            c = S + wp, S - h, S + wp + w, S
        elif k == 3:  # right
            c = S + w0, S, S + w0 + w, S + h
        elif k == 4:  # bottom right
            c = S + w0, S + hp, S + w0 + w, S + hp + h
        elif k == 5:  # bottom
            c = S + w0 - w, S + h0, S + w0, S + h0 + h
        elif k == 6:  # bottom left
            c = S + w0 - wp - w, S + h0, S + w0 - wp, S + h0 + h
        elif k == 7:  # left
            c = S - w, S + h0 - h, S, S + h0
        else:  # top left
            c = S - w, S + h0 - hp - h, S, S + h0 - hp
        padx, pady = c[:2]
        x1, y1, x2, y2 = (max(v, 0) for v in c)
        canvas[y1:y2, x1:x2] = img[y1 - pady:, x1 - padx:]
        lab = np.array(lab, np.float32).reshape(-1, 5).copy()
        lab[:, [1, 3]] += padx
        lab[:, [2, 4]] += pady
        out.append(lab)
        hp, wp = h, w
    yc, xc = (int(v) for v in rng.uniform(0, S, 2))
    canvas = canvas[yc:yc + 2 * S, xc:xc + 2 * S]
    labels = np.concatenate(out, 0)
    labels[:, [1, 3]] -= xc
    labels[:, [2, 4]] -= yc
    return _finish_mosaic(canvas, labels, S, rng, return_full, degrees=degrees, translate=translate, scale=scale,
                          shear=shear, perspective=perspective, scale_bias=scale_bias)


def mixup(img1, labels1, img2, labels2, rng=None, beta=32.0):
    """MixUp: blend two same-size images with r ~ Beta(beta, beta) and keep both label sets."""
    r = _rng(rng).beta(beta, beta)
    img = (img1.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round().astype(np.uint8)
    return img, np.concatenate([np.reshape(labels1, (-1, 5)), np.reshape(labels2, (-1, 5))], 0).astype(np.float32)


def cutmix(img1, labels1, img2, labels2, rng=None, area=(0.1, 0.5), min_visible=0.4, min_size=2.0):
    """CutMix for detection: paste a random rectangle of ``img2`` into ``img1`` at the same place.

    Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
    Features", ICCV 2019. The rectangle has the image's aspect ratio and a fraction of its area
    drawn uniformly from ``area`` (CutMix: ``1 - lambda``), and lies wholly inside the image. Labels:

    * ``img1``'s boxes keep their visible part: a box the rectangle cuts along a whole side shrinks
      to what is left, one with a hole or a covered corner keeps its extent; boxes with less than
      ``min_visible`` of their area left (or thinner than ``min_size`` px) are dropped;
    * ``img2``'s boxes are cut to the rectangle and kept if ``min_visible`` of their area is inside.

    Darknet refuses ``cutmix=1`` for detectors (YOLOv4 lists CutMix among the backbone/classifier
    freebies); this box rule is yoloforge's. Images must have the same shape. Returns ``(img, labels)``.
    """
    if img1.shape != img2.shape:
        raise ValueError(f"cutmix needs images of one shape, got {img1.shape} and {img2.shape}")
    rng = _rng(rng)
    h, w = img1.shape[:2]
    f = rng.uniform(*area)
    rw, rh = min(w, max(1, int(round(w * math.sqrt(f))))), min(h, max(1, int(round(h * math.sqrt(f)))))
    rx1, ry1 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    rx2, ry2 = rx1 + rw, ry1 + rh
    img = img1.copy()
    img[ry1:ry2, rx1:rx2] = img2[ry1:ry2, rx1:rx2]

    a = np.array(labels1, np.float32).reshape(-1, 5).copy()
    x1, y1, x2, y2 = a[:, 1], a[:, 2], a[:, 3], a[:, 4]
    area1 = (x2 - x1) * (y2 - y1)
    inter = (np.minimum(x2, rx2) - np.maximum(x1, rx1)).clip(0) * (np.minimum(y2, ry2) - np.maximum(y1, ry1)).clip(0)
    full_y, full_x = (ry1 <= y1) & (ry2 >= y2), (rx1 <= x1) & (rx2 >= x2)  # the rectangle spans the box
    nx1 = np.where(full_y & (rx1 <= x1) & (rx2 > x1), np.maximum(x1, rx2), x1)
    nx2 = np.where(full_y & (rx2 >= x2) & (rx1 < x2), np.minimum(x2, rx1), x2)
    ny1 = np.where(full_x & (ry1 <= y1) & (ry2 > y1), np.maximum(y1, ry2), y1)
    ny2 = np.where(full_x & (ry2 >= y2) & (ry1 < y2), np.minimum(y2, ry1), y2)
    keep = ((area1 - inter) >= min_visible * area1) & (nx2 - nx1 > min_size) & (ny2 - ny1 > min_size)
    a = np.stack([a[:, 0], nx1, ny1, nx2, ny2], 1)[keep]

    b = np.array(labels2, np.float32).reshape(-1, 5).copy()
    area2 = (b[:, 3] - b[:, 1]) * (b[:, 4] - b[:, 2])
    b[:, [1, 3]] = b[:, [1, 3]].clip(rx1, rx2)
    b[:, [2, 4]] = b[:, [2, 4]].clip(ry1, ry2)
    bw, bh = b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]
    b = b[(bw * bh >= min_visible * area2) & (bw > min_size) & (bh > min_size)]
    return img, np.concatenate([a, b], 0).astype(np.float32)


def augment_hsv(img, hgain=0.5, sgain=0.5, vgain=0.5, rng=None):
    """Random hue/saturation/value gains (lookup tables, OpenCV 0..179 hue); returns a new image."""
    if not (hgain or sgain or vgain):
        return img
    g = _rng(rng).uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * g[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * g[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * g[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def fliplr(img, labels):
    """Horizontal flip of image and boxes."""
    w = img.shape[1]
    lab = np.array(labels, np.float32).reshape(-1, 5).copy()
    lab[:, [1, 3]] = w - lab[:, [3, 1]]
    return np.ascontiguousarray(img[:, ::-1]), lab


def flipud(img, labels):
    """Vertical flip of image and boxes."""
    h = img.shape[0]
    lab = np.array(labels, np.float32).reshape(-1, 5).copy()
    lab[:, [2, 4]] = h - lab[:, [4, 2]]
    return np.ascontiguousarray(img[::-1]), lab


def clip_and_filter(labels, shape, min_size=1e-2):
    """Clip pixel labels to ``shape`` (h, w) and drop boxes narrower/shorter than ``min_size`` px."""
    lab = np.array(labels, np.float32).reshape(-1, 5).copy()
    lab[:, [1, 3]] = lab[:, [1, 3]].clip(0, shape[1])
    lab[:, [2, 4]] = lab[:, [2, 4]].clip(0, shape[0])
    return lab[((lab[:, 3] - lab[:, 1]) > min_size) & ((lab[:, 4] - lab[:, 2]) > min_size)]


class Augmenter:
    """The training pipeline's steps, configured from a hyp dict (missing keys take :data:`DEFAULT_HYP`).

    ``mosaic(load_fn, index, n_images, rng)`` and ``single(img, labels, rng)`` build the geometric sample;
    ``mixup(a, b, rng)`` blends two samples when ``hyp['mixup']`` fires; ``cutmix(a, b, rng)`` pastes a
    rectangle of a second sample when ``hyp['cutmix']`` fires (default 0: off, no random draw);
    ``photometric(img, labels, rng)`` applies HSV and the flips. The dataset chains them; each is
    usable alone.
    """

    def __init__(self, hyp: dict | None = None, imgsz: int = 640):
        self.hyp = {**DEFAULT_HYP, **{k: v for k, v in (hyp or {}).items() if k in DEFAULT_HYP}}
        self.imgsz = imgsz

    @property
    def _affine(self):
        h = self.hyp
        return dict(degrees=h["degrees"], translate=h["translate"], scale=h["scale"], shear=h["shear"],
                    perspective=h["perspective"], scale_bias=h["scale_bias"])

    def mosaic(self, load_fn, index, n_images, rng):
        """A mosaic around ``index``: 9 images with probability ``hyp['mosaic9']`` (yolov7: 0.2, no random draw
        where it is 0), else 4; ``hyp['mosaic_shuffle']`` puts ``index`` on a random one of the 4 tiles (YOLOv6
        0.2.0 datasets.py ``get_mosaic``: ``random.shuffle(indices)``), else on the top-left one."""
        if self.hyp["mosaic9"] > 0 and rng.random() < self.hyp["mosaic9"]:
            return mosaic9(load_fn, [index, *rng.integers(0, n_images, 8)], self.imgsz, rng=rng, **self._affine)
        indices = [index, *rng.integers(0, n_images, 3)]
        if self.hyp["mosaic_shuffle"]:
            rng.shuffle(indices)
        return mosaic4(load_fn, indices, self.imgsz, rng=rng, **self._affine)

    def single(self, img, labels, rng):
        """Letterbox (no enlarging) to S×S, then the random affine."""
        img, ratio, pad = letterbox(img, self.imgsz, scaleup=False)
        return random_affine(img, scale_labels(labels, ratio, pad), rng=rng, **self._affine)

    def mixup(self, a, b, rng):
        return mixup(a[0], a[1], b[0], b[1], rng=rng, beta=float(self.hyp["mixup_beta"]))

    def cutmix(self, a, b, rng):
        return cutmix(a[0], a[1], b[0], b[1], rng=rng)

    def photometric(self, img, labels, rng):
        h = self.hyp
        img = augment_hsv(img, h["hsv_h"], h["hsv_s"], h["hsv_v"], rng=rng)
        if rng.random() < h["flipud"]:
            img, labels = flipud(img, labels)
        if rng.random() < h["fliplr"]:
            img, labels = fliplr(img, labels)
        return img, labels

    def __call__(self, load_fn, index, n_images, rng, mosaic=True, mixup=True, cutmix=True):
        """Full training sample for ``index``; ``load_fn(i)`` -> resized image + pixel labels.
        ``mosaic`` / ``mixup`` / ``cutmix`` False switch a step off whatever ``hyp`` says."""
        h = self.hyp

        def geometric(i):
            if mosaic and rng.random() < h["mosaic"]:
                return self.mosaic(load_fn, i, n_images, rng)
            return self.single(*load_fn(i), rng)

        img, labels = geometric(index)
        if mixup and h["mixup"] > 0 and rng.random() < h["mixup"]:
            img, labels = self.mixup((img, labels), geometric(int(rng.integers(0, n_images))), rng)
        if cutmix and h["cutmix"] > 0 and rng.random() < h["cutmix"]:
            img, labels = self.cutmix((img, labels), geometric(int(rng.integers(0, n_images))), rng)
        img, labels = self.photometric(img, labels, rng)
        return img, clip_and_filter(labels, img.shape[:2])
