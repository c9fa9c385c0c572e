"""The embedded demo dataset: coloured shapes on textured backgrounds, in the YOLO txt layout.

Four classes told apart by shape only (colours are random): circle, rectangle, triangle, cross.
Objects are 20-120 px at 256 px (scaled with ``imgsz``), 0-6 per image, some overlapping, on noise,
gradient or stripe backgrounds. Generation is deterministic in ``seed`` and fast (~400 images/s).

    python -m yoloforge.data.synthetic OUT_DIR --n-train 400 --n-val 100 --imgsz 256
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import yaml

NAMES = ["circle", "rectangle", "triangle", "cross"]


def _background(rng, s: int) -> np.ndarray:
    """A textured BGR background: blotchy noise, a gradient, or stripes, plus fine noise."""
    base = rng.uniform(40, 215, 3)
    kind = rng.integers(3)
    if kind == 0:  # low-frequency blotches
        k = int(rng.integers(4, 12))
        img = cv2.resize(rng.normal(0, 35, (k, k, 3)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
        img = img + base
    elif kind == 1:  # linear gradient between two colours
        other = rng.uniform(40, 215, 3)
        a = rng.uniform(0, 2 * np.pi)
        xx, yy = np.arange(s, dtype=np.float32) / s, np.arange(s, dtype=np.float32)[:, None] / s
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        img = base.astype(np.float32) * (1 - t[..., None]) + other.astype(np.float32) * t[..., None]
    else:  # stripes at a random angle and period
        a, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
        xx, yy = np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32)[:, None]
        t = np.sin((np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period)
        img = base.astype(np.float32) + t[..., None] * np.float32(rng.uniform(15, 40))
    bank = _noise_bank(s)
    oy, ox = rng.integers(0, s, 2)
    return np.clip(img.astype(np.float32) + bank[oy:oy + s, ox:ox + s], 0, 255).astype(np.uint8)


_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(s: int) -> np.ndarray:
    """A fixed 2s×2s fine-noise tile (grey σ 8 + colour σ 4); images take random crops of it (fast)."""
    if s not in _BANKS:
        r = np.random.default_rng(12345)
        _BANKS[s] = (r.standard_normal((2 * s, 2 * s, 1), dtype=np.float32) * 8 +
                     r.standard_normal((2 * s, 2 * s, 3), dtype=np.float32) * 4)
    return _BANKS[s]


def _overlap(a, b) -> np.ndarray:
    """Intersection over the smaller area of xyxy box ``a`` (1, 4) with boxes ``b`` (n, 4).

    Bounded by 0.25 so objects may overlap a little but none is hidden under another.
    """
    wh = (np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2])).clip(0)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return wh[:, 0] * wh[:, 1] / np.minimum(area(a), area(b))


def _colour(rng, bg_mean) -> tuple[int, int, int]:
    """A random colour far (L1 > 180) from the background's mean colour."""
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.abs(c - bg_mean).sum() > 180:
            break
    return tuple(int(v) for v in c)


def _draw(img, cls: int, box, rng, colour) -> np.ndarray:
    """Draw shape ``cls`` filling integer ``box`` (x1, y1, x2, y2); returns the tight xyxy box drawn."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if cls == 0:  # circle
        r = min(w, h) // 2
        cx, cy = x1 + r, y1 + r
        cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
        return np.array([cx - r, cy - r, cx + r + 1, cy + r + 1], np.float32)
    if cls == 1:  # axis-aligned rectangle
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), colour, -1)
        return np.array([x1, y1, x2, y2], np.float32)
    if cls == 2:  # triangle: apex on one side, base on the opposite side
        side = int(rng.integers(4))
        t = int(x1 + rng.uniform(0.2, 0.8) * w) if side < 2 else int(y1 + rng.uniform(0.2, 0.8) * h)
        pts = {0: [(t, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], 1: [(t, y2 - 1), (x1, y1), (x2 - 1, y1)],
               2: [(x1, t), (x2 - 1, y1), (x2 - 1, y2 - 1)], 3: [(x2 - 1, t), (x1, y1), (x1, y2 - 1)]}[side]
        p = np.array(pts, np.int32)
        cv2.fillPoly(img, [p], colour, cv2.LINE_AA)
        return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max() + 1, p[:, 1].max() + 1], np.float32)
    # cross (plus sign) with arms a quarter to a third of the size thick
    tw, th = max(3, int(w * rng.uniform(0.25, 0.34))), max(3, int(h * rng.uniform(0.25, 0.34)))
    cx, cy = x1 + w // 2, y1 + h // 2
    cv2.rectangle(img, (x1, cy - th // 2), (x2 - 1, cy - th // 2 + th - 1), colour, -1)
    cv2.rectangle(img, (cx - tw // 2, y1), (cx - tw // 2 + tw - 1, y2 - 1), colour, -1)
    return np.array([x1, y1, x2, y2], np.float32)


def make_image(rng, imgsz: int = 256, max_objects: int = 6):
    """One synthetic image (BGR uint8) and its labels (n, 5) [cls, x1, y1, x2, y2] pixels."""
    img = _background(rng, imgsz)
    bg_mean = img.reshape(-1, 3).mean(0)
    k = imgsz / 256
    n = 0 if rng.random() < 0.03 else int(rng.integers(1, max_objects + 1))
    labels = np.zeros((0, 5), np.float32)
    for _ in range(n):
        for _try in range(20):
            cls = int(rng.integers(len(NAMES)))
            size = np.exp(rng.uniform(np.log(20), np.log(120))) * k  # the long side
            ar = np.exp(rng.uniform(0, 0.45)) if cls != 0 else 1.0
            w, h = int(size), int(max(8, size / ar))
            w, h = (w, h) if rng.random() < 0.5 else (h, w)
            w, h = min(w, imgsz - 2), min(h, imgsz - 2)
            x1, y1 = int(rng.integers(0, imgsz - w)), int(rng.integers(0, imgsz - h))
            cand = np.array([[x1, y1, x1 + w, y1 + h]], np.float32)
            if not len(labels) or _overlap(cand, labels[:, 1:]).max() < 0.25:
                break
        else:
            continue
        box = _draw(img, cls, (x1, y1, x1 + w, y1 + h), rng, _colour(rng, bg_mean))
        labels = np.concatenate([labels, np.concatenate([[cls], box])[None].astype(np.float32)], 0)
    return img, labels


def make_shapes_dataset(root, n_train: int = 400, n_val: int = 100, imgsz: int = 256, seed: int = 0,
                        ext: str = ".jpg") -> Path:
    """Write the shapes dataset under ``root`` (images/{train,val}, labels/{train,val}, data.yaml).

    Returns the path of ``data.yaml``. The same arguments always give the same files.
    """
    root = Path(root)
    for split, n, sid in (("train", n_train, 0), ("val", n_val, 1)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, sid, i])
            img, lab = make_image(rng, imgsz)
            stem = f"{split}_{i:05d}"
            params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else []
            cv2.imwrite(str(root / "images" / split / f"{stem}{ext}"), img, params)
            cxcy = np.stack([(lab[:, 1] + lab[:, 3]) / 2 / imgsz, (lab[:, 2] + lab[:, 4]) / 2 / imgsz,
                             (lab[:, 3] - lab[:, 1]) / imgsz, (lab[:, 4] - lab[:, 2]) / imgsz], 1)
            lines = [f"{int(c)} {a:.6f} {b:.6f} {w:.6f} {h:.6f}" for c, (a, b, w, h) in zip(lab[:, 0], cxcy)]
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": ".", "train": "images/train", "val": "images/val", "nc": len(NAMES),
            "names": dict(enumerate(NAMES))}
    out = root / "data.yaml"
    out.write_text("# yoloforge synthetic shapes dataset (generated, seed %d)\n" % seed +
                   yaml.safe_dump(data, sort_keys=False))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m yoloforge.data.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out", help="output directory")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(make_shapes_dataset(a.out, a.n_train, a.n_val, a.imgsz, a.seed))


if __name__ == "__main__":
    main()
