"""``val --save-json`` writes the source's own ids, so pycocotools scores the file against the user's json."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from yoloforge.data.dataset import DetectionDataset
from yoloforge.data.loader import build_dataloader
from yoloforge.engine.evaluator import evaluate
from yoloforge.utils.metrics import COCO_NAMES, coco80_to_91

pycocotools = pytest.importorskip("pycocotools", reason="pycocotools (a dev dependency) re-scores the json")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


class PerfectPlusNoise:
    """A 'model' whose raw output (B, N, 4 + nc) is each image's letterboxed ground truth (score 0.9) plus one
    wrong box (score 0.95) per image, so AP is high but not 1. It replays the targets of ``loader``, whose
    order is fixed (no shuffle)."""

    def __init__(self, loader, nc: int, seed: int = 0):
        self.nc, self.batches = nc, []
        g = np.random.default_rng(seed)
        for imgs, targets, _ in loader:
            b, _, h, w = imgs.shape
            rows = []
            for i in range(b):
                t = targets[targets[:, 0] == i].numpy()
                r = np.zeros((len(t) + 1, 4 + nc), np.float32)
                r[:len(t), :4] = t[:, 2:6]
                r[np.arange(len(t)), 4 + t[:, 1].astype(int)] = 0.9
                x, y = g.uniform(0, w * 0.5), g.uniform(0, h * 0.5)
                r[-1, :4] = x, y, x + w * 0.3, y + h * 0.3
                r[-1, 4 + int(g.integers(nc))] = 0.95
                rows.append(r)
            n = max(len(r) for r in rows)
            out = np.zeros((b, n, 4 + nc), np.float32)
            for i, r in enumerate(rows):
                out[i, :len(r)] = r
            self.batches.append(torch.from_numpy(out))
        self.k = 0

    def __call__(self, x):
        out = self.batches[self.k]
        self.k += 1
        return out


def _coco_dataset(tmp_path):
    """Four images of different aspect ratios (rectangular batches reorder them), file names that are not
    numbers, image ids and category ids with gaps."""
    g = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    sizes = [(120, 200), (200, 120), (150, 150), (90, 240)]
    img_ids = [1001, 7, 42, 99999]
    cats = [{"id": 3, "name": "x"}, {"id": 7, "name": "y"}, {"id": 11, "name": "z"}]
    images, anns = [], []
    for k, ((h, w), iid) in enumerate(zip(sizes, img_ids)):
        name = f"photo_{'abcd'[k]}.jpg"
        cv2.imwrite(str(tmp_path / "images" / name), g.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": iid, "file_name": name, "height": h, "width": w})
        for _ in range(3):
            bw, bh = g.uniform(15, w / 2), g.uniform(15, h / 2)
            x, y = g.uniform(0, w - bw), g.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cats[int(g.integers(3))]["id"],
                         "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                         "area": round(bw * bh, 2), "iscrowd": 0})
    j = tmp_path / "annotations" / "instances_val.json"
    j.parent.mkdir()
    j.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return j, img_ids


def _score_with_pycocotools(gt_json, results_json):
    gt = COCO(str(gt_json))
    dt = gt.loadRes(str(results_json))  # raises "Results do not correspond to current coco set" on foreign ids
    e = COCOeval(gt, dt, "bbox")
    e.evaluate(), e.accumulate(), e.summarize()
    return e.stats


def test_save_json_coco_source_rescored_by_pycocotools(tmp_path):
    j, img_ids = _coco_dataset(tmp_path)
    ds = DetectionDataset(j, ["x", "y", "z"], imgsz=160, stride=32, rect_batch=2, cache=False, verbose=False)
    assert ds.category_ids == [3, 7, 11]
    assert sorted(ds.image_ids.tolist()) == sorted(img_ids) and ds.image_ids.tolist() != img_ids  # reordered
    loader = build_dataloader(ds, 2, workers=0, shuffle=False)
    m = evaluate(PerfectPlusNoise(loader, 3), loader, ds.names, save_dir=tmp_path / "val", save_json=True,
                 verbose=False)
    rows = json.loads((tmp_path / "val" / "predictions.json").read_text())
    assert {r["image_id"] for r in rows} == set(img_ids)
    assert {r["category_id"] for r in rows} <= {3, 7, 11}
    stats = _score_with_pycocotools(j, tmp_path / "val" / "predictions.json")
    assert 0.3 < m.map < 0.999  # the wrong boxes cost something
    assert stats[0] == pytest.approx(m.map, abs=1e-6) and stats[1] == pytest.approx(m.map50, abs=1e-6)


def test_save_json_yolo_txt_coco_layout_uses_91_ids_and_file_stems(tmp_path):
    g = np.random.default_rng(2)
    (tmp_path / "images").mkdir(), (tmp_path / "labels").mkdir()
    stems = ["000000000139", "000000000285", "000000000632"]
    for k, st in enumerate(stems):
        cv2.imwrite(str(tmp_path / "images" / f"{st}.jpg"), g.integers(0, 255, (100, 140, 3), dtype=np.uint8))
        (tmp_path / "labels" / f"{st}.txt").write_text(f"{[0, 11, 79][k]} 0.5 0.5 0.3 0.4\n")
    ds = DetectionDataset(tmp_path / "images", COCO_NAMES, imgsz=128, cache=False, verbose=False)
    assert ds.category_ids == coco80_to_91() and sorted(ds.image_ids.tolist()) == [139, 285, 632]
    loader = build_dataloader(ds, 2, workers=0, shuffle=False)
    evaluate(PerfectPlusNoise(loader, 80), loader, ds.names, save_dir=tmp_path / "val", save_json=True,
             verbose=False)
    rows = json.loads((tmp_path / "val" / "predictions.json").read_text())
    right = {(r["image_id"], r["category_id"]) for r in rows if r["score"] == pytest.approx(0.9)}
    assert right == {(139, 1), (285, 13), (632, 90)}  # person=1, stop sign=13, toothbrush=90 in COCO's ids


def test_save_json_other_names_use_class_index_and_scan_order(tmp_path):
    (tmp_path / "images").mkdir(), (tmp_path / "labels").mkdir()
    for k, st in enumerate(["b", "a", "c"]):
        cv2.imwrite(str(tmp_path / "images" / f"{st}.png"), np.full((64, 64, 3), 40 * k, np.uint8))
        (tmp_path / "labels" / f"{st}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    ds = DetectionDataset(tmp_path / "images", ["cat", "dog"], imgsz=64, cache=False, verbose=False)
    assert ds.category_ids == [0, 1]
    assert [p.rsplit("/", 1)[-1] for p in ds.img_files] == ["a.png", "b.png", "c.png"]
    assert ds.image_ids.tolist() == [0, 1, 2]
