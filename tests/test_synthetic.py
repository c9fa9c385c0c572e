"""The embedded shapes dataset: deterministic, valid, visible objects, CLI."""
import subprocess
import sys
import time

import cv2
import numpy as np

from yoloforge.data import synthetic as S
from yoloforge.data.formats import load_data_yaml, scan_dataset


def test_make_shapes_dataset_layout_and_labels(tmp_path):
    t = time.time()
    y = S.make_shapes_dataset(tmp_path / "a", n_train=60, n_val=10, imgsz=256, seed=1)
    assert time.time() - t < 20
    c = load_data_yaml(y)
    assert c.names == S.NAMES and c.nc >= 4 and c.root == (tmp_path / "a").resolve()
    r = scan_dataset(c.train, c.nc, cache=False, verbose=False)
    assert r.report.images == 60 and not r.report.dropped and r.report.clipped == 0
    assert scan_dataset(c.val, c.nc, cache=False, verbose=False).report.images == 10
    lab = np.concatenate(r.labels)
    assert set(lab[:, 0].astype(int)) == set(range(c.nc))  # every class occurs
    assert max(len(x) for x in r.labels) <= 6 and r.report.boxes >= 60 * 2
    side = np.maximum(lab[:, 3] - lab[:, 1], lab[:, 4] - lab[:, 2])
    assert side.min() >= 19 and side.max() <= 121 and np.median(side) > 30
    assert (lab[:, 1:] >= 0).all() and (lab[:, 1:] <= 256).all()


def test_deterministic(tmp_path):
    a = S.make_shapes_dataset(tmp_path / "a", 6, 2, imgsz=128, seed=4, ext=".png").parent
    b = S.make_shapes_dataset(tmp_path / "b", 6, 2, imgsz=128, seed=4, ext=".png").parent
    c = S.make_shapes_dataset(tmp_path / "c", 6, 2, imgsz=128, seed=5, ext=".png").parent
    for f in sorted((a / "labels/train").glob("*.txt")):
        assert f.read_text() == (b / "labels/train" / f.name).read_text()
    ia, ib, ic = (cv2.imread(str(d / "images/train/train_00003.png")) for d in (a, b, c))
    assert ia.shape == (128, 128, 3) and np.array_equal(ia, ib) and not np.array_equal(ia, ic)


def test_objects_are_drawn_where_labelled():
    """Each object's colour covers its box (per class: area fraction) and differs from the background."""
    fill = {k: [] for k in range(len(S.NAMES))}
    for i in range(40):
        img, lab = S.make_image(np.random.default_rng([9, i]), 256)
        for c, x1, y1, x2, y2 in lab.astype(int):
            patch = img[y1:y2, x1:x2].reshape(-1, 3).astype(int)
            centre = img[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
            # pixels of the object's colour (its centre colour for circles/rectangles/crosses)
            frac = (np.abs(patch - centre).sum(1) < 40).mean()
            fill[int(c)].append(frac)
            ring = np.concatenate([img[max(y1 - 3, 0), x1:x2], img[min(y2 + 2, 255), x1:x2]]).astype(int)
            if c != 2:  # the triangle's centre may be background
                assert np.abs(ring - centre).sum(1).mean() > 60, "object colour too close to background"
    assert 0.6 < np.median(fill[0]) < 0.9  # circle: pi/4 of its box
    assert np.median(fill[1]) > 0.9  # rectangle fills its box
    assert 0.35 < np.median(fill[3]) < 0.75  # cross: two bars


def test_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "yoloforge.data.synthetic", str(tmp_path / "d"), "--n-train", "3",
                          "--n-val", "2", "--imgsz", "64"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("data.yaml")
    assert len(list((tmp_path / "d/images/train").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "d/labels/val").glob("*.txt"))) == 2
