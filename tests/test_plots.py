"""Tests for yoloforge.utils.plots: every plot writes a readable PNG; drawing touches the right pixels."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from yoloforge.utils.metrics import ConfusionMatrix, pr_curves
from yoloforge.utils.plots import (colors, draw_detections, plot_confusion_matrix, plot_image_grid, plot_labels,
                                   plot_mc_curve, plot_pr_curve, plot_results)

NAMES = ["person", "car", "dog"]


def read_png(path, min_hw=(100, 100)):
    assert path.exists() and path.suffix == ".png" and path.stat().st_size > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] >= min_hw[0] and img.shape[1] >= min_hw[1]
    assert img.std() > 1  # not a blank image
    return img


def test_no_pyplot_window():
    code = "import sys, yoloforge.utils.plots; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # Agg canvas only: no GUI backend, no global pyplot state
    assert colors(0) != colors(1) and colors(3, bgr=True) == colors(3)[::-1]


def test_plot_results(tmp_path):
    csv = tmp_path / "results.csv"
    rows = ["epoch,train/box_loss,train/cls_loss,train/dfl_loss,val/mAP50,val/mAP50-95,lr0"]
    for e in range(12):
        rows.append(f"{e},{1 / (e + 1):.4f},{0.5 / (e + 1):.4f},{0.3:.4f},{e / 20:.4f},{e / 40:.4f},0.01")
    csv.write_text("\n".join(rows) + "\n")
    out = plot_results(csv)
    assert out == tmp_path / "results.png"
    img = read_png(out)
    assert img.shape[1] > img.shape[0]  # 2 x 5 grid is wider than tall
    # a csv with a single epoch and a blank value still plots
    csv2 = tmp_path / "r2.csv"
    csv2.write_text("epoch, train/loss, val/mAP50\n0, 1.0,\n")
    read_png(plot_results(csv2, tmp_path / "r2.png"))


def test_plot_pr_and_mc_curves(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    tp = rng.random(n) > 0.4
    r = pr_curves(tp, rng.random(n), rng.integers(0, 3, n), rng.integers(0, 2, 120), nc=3)
    read_png(plot_pr_curve(r["rx"], r["py"], r["ap50"], NAMES, tmp_path / "PR_curve.png"))
    read_png(plot_mc_curve(r["px"], r["f1_curve"], NAMES, tmp_path / "F1_curve.png", valid=r["n_gt"] > 0))
    # many classes: no per-class legend, still works
    py = rng.random((40, 101))
    read_png(plot_pr_curve(np.linspace(0, 1, 101), py, rng.random(40), None, tmp_path / "pr40.png"))


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_matrix(tmp_path, normalize):
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 0, 10, 10, 0.9, 1]]), np.array([[0, 0, 10, 10]]), np.array([0]))
    cm.update(np.array([[0, 0, 10, 10, 0.9, 2]]), np.array([[0, 0, 10, 10]]), np.array([2]))
    out = plot_confusion_matrix(cm.matrix, NAMES, tmp_path / f"cm_{normalize}.png", normalize=normalize)
    read_png(out, (300, 300))


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(1)
    labels, shapes = [], []
    for _ in range(20):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 400, (n, 2))
        labels.append(np.column_stack([rng.integers(0, 3, n), xy, xy + rng.uniform(5, 100, (n, 2))]))
        shapes.append((480, 640))
    read_png(plot_labels(labels, shapes, NAMES, tmp_path / "labels.png"), (500, 500))
    read_png(plot_labels([np.zeros((0, 5))], [(10, 10)], NAMES, tmp_path / "empty.png"))


def test_plot_image_grid(tmp_path):
    imgs = torch.randint(0, 255, (5, 3, 96, 128), dtype=torch.uint8)
    dets = [torch.tensor([[10.0, 10, 60, 50, 0.9, 1], [5, 5, 20, 20, 0.1, 0]])] * 5
    out = read_png(plot_image_grid(imgs, dets=dets, names=NAMES, path=tmp_path / "pred.png",
                                   paths=[f"img{i}.jpg" for i in range(5)]))
    assert out.shape[:2] == (3 * 96, 3 * 128)  # ceil(sqrt(5)) = 3 tiles per side
    targets = torch.tensor([[0, 2, 10, 10, 60, 50], [3, 0, 0, 0, 30, 30.0]])
    read_png(plot_image_grid(imgs.float() / 255, targets=targets, names=NAMES, path=tmp_path / "lab.png"))
    big = np.zeros((20, 3, 640, 640), np.uint8)
    big[:, 1] = 100
    out = read_png(plot_image_grid(big, names=NAMES, path=tmp_path / "big.png", max_images=16), (1000, 1000))
    assert max(out.shape[:2]) <= 1920  # 4 x 640 downscaled to the size cap


def test_draw_detections_changes_outline_pixels_only():
    img = np.full((200, 300, 3), 40, np.uint8)
    boxes = np.array([[50, 80, 150, 180]])
    out = draw_detections(img, boxes, np.array([0.87]), np.array([1]), NAMES, line_width=2)
    assert out is not img and (img == 40).all()  # input untouched
    col = np.array(colors(1, bgr=True))
    # the outline has the class colour, the box interior and far-away pixels are unchanged
    assert (out[130, 50] == col).all() and (out[180, 100] == col).all() and (out[130, 150] == col).all()
    assert (out[130, 100] == 40).all() and (out[10, 290] == 40).all()
    # the label is drawn above the box (there is room)
    assert (out[60:80, 50:100] != 40).any()
    # torch inputs, no scores/classes, and the empty case
    out2 = draw_detections(img, torch.tensor([[5.0, 5, 50, 50]]), None, None, None)
    assert (out2 != img).any()
    assert (draw_detections(img, np.zeros((0, 4)), [], [], NAMES) == img).all()
    inplace = img.copy()
    assert draw_detections(inplace, boxes, [0.5], [0], NAMES, copy=False) is inplace and (inplace != 40).any()
