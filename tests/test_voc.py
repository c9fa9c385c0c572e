"""Pascal VOC sources, ``data convert`` between YOLO / COCO / VOC, and ``data check`` (issue 14, parts 4-5)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yoloforge.cli import main
from yoloforge.data.dataset import DetectionDataset
from yoloforge.data.formats import load_data_yaml, scan_dataset
from yoloforge.data.loader import build_dataloader
from yoloforge.data.tools import check, convert
from yoloforge.engine.evaluator import evaluate


def _scan(yaml_path, split="train"):
    cfg = load_data_yaml(yaml_path)
    r = scan_dataset(getattr(cfg, split), cfg.nc, cache=False, verbose=False, names=cfg.names)
    return cfg, {Path(f).stem: (lab, ig) for f, lab, ig in zip(r.img_files, r.labels, r.ignore)}, r


def test_round_trip_yolo_voc_coco_yolo(tiny_data, tmp_path):
    _, ref, _ = _scan(tiny_data)
    y_voc = convert(tiny_data, "voc", tmp_path / "voc", verbose=False)
    y_coco = convert(y_voc, "coco", tmp_path / "coco", verbose=False)
    y_yolo = convert(y_coco, "yolo", tmp_path / "yolo", verbose=False)
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").is_file()
    assert (tmp_path / "coco" / "annotations" / "instances_val.json").is_file()
    for y in (y_voc, y_coco, y_yolo):
        cfg, got, _ = _scan(y)
        assert cfg.names == load_data_yaml(tiny_data).names
        assert set(got) == set(ref)
        for k, (lab, _) in ref.items():
            np.testing.assert_allclose(got[k][0], lab, atol=0.02, err_msg=f"{y}: {k}")
    for split in ("train", "val"):
        assert len(_scan(y_yolo, split)[1]) == len(_scan(tiny_data, split)[1])


def _voc(tmp_path):
    """A VOC folder: a difficult object, an unknown class, a malformed box, a missing annotation, an id
    without an image, a <size> that disagrees with the image."""
    root = tmp_path / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for k in range(4):
        cv2.imwrite(str(root / "JPEGImages" / f"00000{k}.jpg"), np.full((100, 150, 3), 60 + 40 * k, np.uint8))

    def obj(name, box, difficult=0):
        x1, y1, x2, y2 = box
        return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")

    xml = {
        "000000": [obj("dog", (11, 21, 61, 81)), obj("cat", (81, 11, 141, 51), difficult=1)],
        "000001": [obj("dog", (1, 1, 51, 51)), obj("horse", (5, 5, 20, 20)),
                   "<object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object>"],
        "000002": [obj("cat", (31, 31, 91, 71))],
    }
    for k, objs in xml.items():
        size = "<size><width>150</width><height>100</height></size>" if k != "000002" else \
            "<size><width>300</width><height>200</height></size>"
        (root / "Annotations" / f"{k}.xml").write_text(f"<annotation>{size}{''.join(objs)}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("000000\n000001\n000002\n000003\n000009\n")
    y = tmp_path / "voc.yaml"
    y.write_text(f"path: {root}\ntrain: ImageSets/Main/train.txt\nval: ImageSets/Main/train.txt\nnames: [cat, dog]\n")
    return root, y


def test_voc_source_reads_difficult_and_reports_every_problem(tmp_path):
    root, y = _voc(tmp_path)
    cfg, got, r = _scan(y)
    rep = r.report
    assert rep.images == 4 and rep.skipped_images == 1  # 000009 has no image
    np.testing.assert_allclose(got["000000"][0], [[1, 10, 20, 60, 80]])  # 1-based VOC pixels -> 0-based
    np.testing.assert_allclose(got["000000"][1], [[0, 80, 10, 140, 50]])  # difficult: an ignored region
    np.testing.assert_allclose(got["000001"][0], [[1, 0, 0, 50, 50]])
    assert len(got["000003"][0]) == 0  # no annotation file: a background, reported
    text = "\n".join(rep.messages)
    assert "000001.xml: object 2: class 'horse' is not in the data yaml's names" in text
    assert "000001.xml: object 3 (cat): <bndbox> needs numeric" in text
    assert "000003.xml: no annotation file" in text
    assert "000002.xml: <size> says 300x200, the image is 150x100" in text
    assert "000009.jpg" in text
    with pytest.raises(ValueError, match="needs the class names"):
        scan_dataset(str(root / "JPEGImages"), 2, cache=False, verbose=False)
    # the JPEGImages folder is a VOC source too
    r2 = scan_dataset(str(root / "JPEGImages"), 2, cache=False, verbose=False, names=["cat", "dog"])
    assert r2.report.images == 4 and r2.report.boxes == 3


class GroundTruthModel:
    """Outputs each val image's boxes (score 0.9) plus, with ``on_ignored``, a box on every ignored region."""

    def __init__(self, loader, nc, on_ignored=True):
        self.out, self.k = [], 0
        for imgs, targets, metas in loader:
            rows = []
            for i, meta in enumerate(metas):
                t = targets[targets[:, 0] == i].numpy()
                boxes = [(b, int(c)) for c, b in zip(t[:, 1], t[:, 2:6])]
                if on_ignored and "ignore" in meta:
                    (rx, ry), (px, py) = meta["ratio_pad"]
                    for c, x1, y1, x2, y2 in meta["ignore"]:
                        boxes.append((np.array([x1 * rx + px, y1 * ry + py, x2 * rx + px, y2 * ry + py]), int(c)))
                r = np.zeros((max(len(boxes), 1), 4 + nc), np.float32)
                for j, (b, c) in enumerate(boxes):
                    r[j, :4], r[j, 4 + c] = b, 0.9
                rows.append(r)
            n = max(len(r) for r in rows)
            x = np.zeros((len(rows), n, 4 + nc), np.float32)
            for i, r in enumerate(rows):
                x[i, :len(r)] = r
            self.out.append(torch.from_numpy(x))

    def __call__(self, x):
        self.k += 1
        return self.out[self.k - 1]


def test_difficult_objects_are_neither_missed_nor_false_positives(tmp_path):
    _, y = _voc(tmp_path)
    cfg = load_data_yaml(y)
    ds = DetectionDataset(cfg.val, cfg.names, imgsz=160, cache=False, verbose=False)
    loader = build_dataloader(ds, 2, workers=0, shuffle=False)
    with_hard = GroundTruthModel(loader, 2)
    m = evaluate(with_hard, loader, cfg.names, verbose=False)
    assert m.instances == 3 and m.map50 == pytest.approx(1.0)  # the detection on the difficult cat costs nothing
    m2 = evaluate(GroundTruthModel(loader, 2, on_ignored=False), loader, cfg.names, verbose=False)
    assert m2.map50 == pytest.approx(1.0)  # and missing it costs nothing either
    ds.ignore = [np.zeros((0, 5), np.float32) for _ in ds.ignore]  # the same detections, the region not ignored
    with_hard.k = 0
    m3 = evaluate(with_hard, loader, cfg.names, verbose=False)
    assert m3.map50 < 0.99  # it is a false positive now


def test_voc_trained_end_to_end_and_checked(tiny_data, tmp_path):
    y = convert(tiny_data, "voc", tmp_path / "voc", verbose=False)
    rc = main(["train", "--model", "yolov6n", "--data", str(y), "--epochs", "1", "--imgsz", "64", "--batch", "8",
               "--workers", "0", "--project", str(tmp_path), "--name", "t", "--no-plots", "--no-verbose",
               "--no-tensorboard"])
    assert rc == 0
    best = tmp_path / "t" / "weights" / "best.safetensors"
    assert best.is_file()
    assert main(["val", "--weights", str(best), "--data", str(y), "--workers", "0", "--backend", "torch",
                 "--project", str(tmp_path), "--name", "v", "--save-json"]) == 0
    rows = json.loads((tmp_path / "v" / "predictions.json").read_text())
    assert rows and {r["category_id"] for r in rows} <= {0, 1, 2, 3}
    s = check(y, tmp_path / "check", imgsz=96, batch=4, verbose=False)
    assert s["train"]["images"] == 16 and s["val"]["images"] == 8
    for f in ("labels_train.png", "train_batch0.jpg", "train_batch2.jpg", "val_batch0.jpg", "report.txt",
              "report.json"):
        assert (tmp_path / "check" / f).stat().st_size > 0, f
    assert sum(s["train"]["per_class"].values()) == s["train"]["boxes"]


def test_data_check_cli_reports_bad_labels(tmp_path, capsys):
    (tmp_path / "images").mkdir(), (tmp_path / "labels").mkdir()
    for k in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"{k}.png"), np.full((64, 64, 3), 50 * k, np.uint8))
    (tmp_path / "labels" / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "1.txt").write_text("1 0.5 0.5 0.2\n")
    y = tmp_path / "d.yaml"
    y.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames: [a, b]\n")
    assert main(["data", "check", str(y), "--out", str(tmp_path / "c"), "--imgsz", "64", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "0.txt:2" in out and "1.txt:1" in out and "instances per class: a 1, b 0" in out
    assert "classes with no instance: b" in out
