"""Data yaml, sources, label validation, COCO json and the cached scan."""
import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from yoloforge.data import formats as F

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"  # ../shared beside the repo


def write_img(path, h=60, w=80, ext=".png"):
    path = Path(path).with_suffix(ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def write_label(img, text):
    p = F.img2label_path(img)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------------------------- yaml
def test_load_data_yaml_dict_names_and_relative_paths(tmp_path):
    write_img(tmp_path / "ds/images/train/a")
    write_img(tmp_path / "ds/images/val/b")
    (tmp_path / "cfg").mkdir()
    y = tmp_path / "cfg/data.yaml"
    y.write_text("path: ../ds\ntrain: images/train\nval: [images/val, images/train]\nnames:\n  0: cat\n  1: dog\n")
    c = F.load_data_yaml(y)
    assert c.root == (tmp_path / "ds").resolve() and c.names == ["cat", "dog"] and c.nc == 2
    assert c.train == [str(c.root / "images/train")] and len(c.val) == 2 and c.test is None
    assert c.path == y


def test_load_data_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(F.DataError, match="missing.yaml"):
        F.load_data_yaml(tmp_path / "missing.yaml")
    write_img(tmp_path / "images/train/a")
    y = tmp_path / "d.yaml"
    cases = {
        "train: images/train\nnc: 3\nnames: [a, b]\n": "nc=3 but 2 names",
        "train: images/nope\nnames: [a]\n": "images/nope",
        "path: nodir\ntrain: x\nnames: [a]\n": "not a directory",
        "train: images/train\nnames: {0: a, 2: b}\n": "without gaps",
        "train: images/train\nnames: [a, '', c]\n": r"names\[1\] is empty",
        "train: images/train\n": "no 'names'",
        "train: [images/train\n": "not valid YAML",
    }
    for text, msg in cases.items():
        y.write_text(text)
        with pytest.raises(F.DataError, match=msg) as e:
            F.load_data_yaml(y)
        assert str(y) in str(e.value) and "\n" not in str(e.value)


def test_load_data_yaml_nc_only_and_glob(tmp_path):
    (tmp_path / "d.yaml").write_text("train: imgs/*.png\nnc: 2\n")
    c = F.load_data_yaml(tmp_path / "d.yaml")
    assert c.names == ["class0", "class1"] and c.train == [str(tmp_path / "imgs/*.png")]


# -------------------------------------------------------------------------------------------- sources
def test_list_images_sources(tmp_path):
    a = write_img(tmp_path / "images/train/a")
    b = write_img(tmp_path / "images/train/sub/b", ext=".jpg")
    (tmp_path / "images/train/notes.txt").write_text("x")
    assert F.list_images(tmp_path / "images/train") == [a, b]
    lst = tmp_path / "list.txt"
    lst.write_text(f"./images/train/a.png\n\n{b}\n")
    assert [p.resolve() for p in F.list_images(lst)] == [a, b]
    assert F.list_images(str(tmp_path / "images/**/*.jpg")) == [b]
    both = F.list_images([a, lst])
    assert both[0] == a and len(both) == 3
    with pytest.raises(F.DataError, match="nothere"):
        F.list_images(tmp_path / "nothere")


def test_img2label_path():
    assert F.img2label_path("/d/images/train/x.jpg") == Path("/d/labels/train/x.txt")
    assert F.img2label_path("/images/d/images/x.png") == Path("/images/d/labels/x.txt")
    assert F.img2label_path("/d/pics/x.jpeg") == Path("/d/pics/x.txt")


# --------------------------------------------------------------------------------------------- labels
def test_read_yolo_labels_validation(tmp_path):
    txt = tmp_path / "l.txt"
    txt.write_text("\n".join([
        "0 0.5 0.5 0.2 0.4",          # 1 ok
        "1 0.5 0.5 0.2",              # 2 columns
        "1 0.5 abc 0.2 0.2",          # 3 not numeric
        "7 0.5 0.5 0.2 0.2",          # 4 class out of range
        "1 0.5 0.5 1.5 0.2",          # 5 far outside
        "1 0.1 0.5 0.204 0.2",        # 6 x1 = -0.002 -> clipped
        "1 0.5 0.5 0.0 0.2",          # 7 zero area
        "0 0.5 0.5 0.2 0.4",          # 8 duplicate of 1
        "",                           # blank: ignored
        "2 0.1 0.1 0.3 0.1 0.2 0.4",  # 10 polygon -> box
        "1.5 0.5 0.5 0.1 0.1",        # 11 fractional class
        "1 nan 0.5 0.1 0.1",          # 12 nan
    ]))
    lab, issues = F.read_yolo_labels(txt, nc=3, w=200, h=100)
    reasons = [r for r, _ in issues]
    assert sorted(reasons) == sorted(["columns", "not_numeric", "class_range", "out_of_bounds", "clipped",
                                      "zero_area", "duplicate", "class_range", "not_numeric"])
    msgs = dict((r, m) for r, m in issues)
    assert msgs["columns"].startswith(f"{txt}:2:") and f"{txt}:4:" in msgs["class_range"] + str(issues)
    assert "nc=3" in msgs["class_range"] and f"{txt}:8:" in msgs["duplicate"] and f"{txt}:5:" in msgs["out_of_bounds"]
    assert all("\n" not in m for _, m in issues)
    assert lab.dtype == np.float32 and lab.shape == (3, 5)
    np.testing.assert_allclose(lab[0], [0, 80, 30, 120, 70], atol=1e-4)
    np.testing.assert_allclose(lab[1], [1, 0, 40, 0.202 * 200, 60], atol=1e-3)
    np.testing.assert_allclose(lab[2], [2, 20, 10, 60, 40], atol=1e-4)


def test_read_yolo_labels_background(tmp_path):
    (tmp_path / "e.txt").write_text("\n  \n")
    for p in (tmp_path / "e.txt", tmp_path / "missing.txt"):
        lab, issues = F.read_yolo_labels(p, 80, 10, 10)
        assert lab.shape == (0, 5) and issues == []


# ----------------------------------------------------------------------------------------------- COCO
def _coco(tmp_path):
    a = write_img(tmp_path / "images/val/a", 100, 200, ".jpg")
    write_img(tmp_path / "images/val/b", 50, 50, ".jpg")
    d = {"images": [{"id": 10, "file_name": "a.jpg", "height": 100, "width": 200},
                    {"id": 11, "file_name": "b.jpg", "height": 50, "width": 50}],
         "categories": [{"id": 7, "name": "z"}, {"id": 1, "name": "x"}, {"id": 3, "name": "y"}],
         "annotations": [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                         {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 250, 50]},
                         {"id": 3, "image_id": 10, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 1}]}
    j = tmp_path / "annotations/instances_val.json"
    j.parent.mkdir()
    j.write_text(json.dumps(d))
    return j, a


def test_coco_json(tmp_path):
    j, a = _coco(tmp_path)
    src = F.load_coco_json(j)
    files, labels, shapes, names = src.files, src.labels, src.shapes, src.names
    assert names == ["x", "y", "z"] and files[0] == a and files[0].exists()
    np.testing.assert_allclose(labels[0], [[2, 10, 20, 40, 60], [0, 0, 0, 200, 50]])  # clipped to width
    assert labels[1].shape == (0, 5) and shapes.tolist() == [[100, 200], [50, 50]]
    assert F.list_images(j) == files
    y = tmp_path / "d.yaml"
    y.write_text(f"train: {j}\nval: {j}\n")
    assert F.load_data_yaml(y).names == ["x", "y", "z"]
    r = F.scan_dataset(j, 3, cache_dir=tmp_path / "c", verbose=False)
    assert r.report.images == 2 and r.report.backgrounds == 1 and r.report.boxes == 2
    with pytest.raises(F.DataError, match="nc=5"):
        F.scan_dataset(j, 5, cache=False, verbose=False)


# ----------------------------------------------------------------------------------------- image size
def test_image_size_header_and_exif(tmp_path):
    p = write_img(tmp_path / "a", 30, 70, ".png")
    assert F.image_size(p) == ((30, 70), None)
    ok, buf = cv2.imencode(".jpg", np.full((30, 70, 3), 90, np.uint8))
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + \
        struct.pack(">HHIH", 0x0112, 3, 1, 6) + b"\x00\x00" + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + buf.tobytes()[2:]
    (tmp_path / "r.jpg").write_bytes(data)
    hw, warn = F.image_size(tmp_path / "r.jpg")
    assert hw == (70, 30) and warn is None
    assert cv2.imread(str(tmp_path / "r.jpg")).shape[:2] == hw  # cv2 applies the same rotation
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    assert F.image_size(tmp_path / "bad.jpg")[0] is None
    (tmp_path / "trunc.jpg").write_bytes(buf.tobytes()[:-2])  # no end marker, still decodable
    hw, warn = F.image_size(tmp_path / "trunc.jpg")
    assert hw == (30, 70) and "truncated" in warn


# ----------------------------------------------------------------------------------------------- scan
def test_scan_report_cache_and_invalidation(tmp_path, monkeypatch, capsys):
    root = tmp_path / "d"
    imgs = [write_img(root / f"images/train/{i}", 50, 100) for i in range(4)]
    write_label(imgs[0], "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    write_label(imgs[1], "5 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    (root / "images/train/corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    r = F.scan_dataset(root / "images/train", nc=2, cache_dir=tmp_path / "cache")
    out = capsys.readouterr().out
    rep = r.report
    assert (rep.images, rep.backgrounds, rep.boxes, rep.skipped_images) == (4, 2, 2, 1)
    assert rep.dropped == {"duplicate": 1, "class_range": 1}
    assert "4 images" in out and "corrupt.jpg" in out and "(nc=2)" in out
    assert r.shapes.tolist() == [[50, 100]] * 4 and [len(l) for l in r.labels] == [1, 1, 0, 0]
    cache = list((tmp_path / "cache").glob("*.npz"))
    assert len(cache) == 1
    with np.load(cache[0], allow_pickle=False) as z:  # plain arrays only: loads without pickle
        assert z["files"].dtype.kind == "U" and z["labels"].shape == (2, 5)

    monkeypatch.setattr(F, "read_yolo_labels", lambda *a: (_ for _ in ()).throw(AssertionError("rescanned")))
    r2 = F.scan_dataset(root / "images/train", nc=2, cache_dir=tmp_path / "cache", verbose=False)
    assert r2.img_files == r.img_files and all(np.array_equal(a, b) for a, b in zip(r.labels, r2.labels))
    assert r2.report.dropped == rep.dropped and r2.report.messages == rep.messages
    monkeypatch.undo()
    lbl = write_label(imgs[2], "1 0.5 0.5 0.5 0.5\n")
    os.utime(lbl, ns=(1, 10**18))
    r3 = F.scan_dataset(root / "images/train", nc=2, cache_dir=tmp_path / "cache", verbose=False)
    assert r3.report.boxes == 3
    np.testing.assert_allclose(r3.labels[2], [[1, 25, 12.5, 75, 37.5]])


def test_scan_cache_beside_labels_default(tmp_path, monkeypatch):
    monkeypatch.delenv("YOLOFORGE_CACHE_DIR", raising=False)
    img = write_img(tmp_path / "images/train/a")
    write_label(img, "0 0.5 0.5 0.2 0.2\n")
    F.scan_dataset(tmp_path / "images/train", 1, verbose=False)
    assert (tmp_path / "labels/train.cache.npz").is_file()


def test_scan_empty_source_is_clear(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(F.DataError, match=f"no usable images found in {tmp_path / 'images'}"):
        F.scan_dataset(tmp_path / "images", 1, cache=False, verbose=False)


@pytest.mark.skipif(not COCO128.is_dir(), reason="coco128 sample data is only in the shared dev checkout")
def test_scan_coco128(tmp_path):
    c = F.load_data_yaml(COCO128 / "data.yaml")
    assert c.nc == 80 and c.names[0] == "person" and c.names[79] == "toothbrush"
    r = F.scan_dataset(c.train, c.nc, cache_dir=tmp_path, verbose=False)
    assert r.report.images == 128 and r.report.boxes > 800 and not r.report.dropped
    for i in (0, 17, 101):
        assert tuple(r.shapes[i]) == cv2.imread(str(r.img_files[i])).shape[:2]
        lab = r.labels[i]
        assert (lab[:, 0] < 80).all() and (lab[:, [1, 3]] <= r.shapes[i][1]).all()


def test_label_paths_that_are_not_files(tmp_path):
    """A named pipe would hang a read; a directory or a dangling link was silently a background; a BOM cost row 1."""
    import os

    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for k in range(4):
        write_img(tmp_path / "images" / str(k), 32, 32, ".png")
    os.mkfifo(tmp_path / "labels" / "0.txt")
    (tmp_path / "labels" / "1.txt").mkdir()
    os.symlink(tmp_path / "nowhere.txt", tmp_path / "labels" / "2.txt")
    (tmp_path / "labels" / "3.txt").write_bytes("\ufeff0 0.5 0.5 0.2 0.2\n".encode("utf-8"))
    r = F.scan_dataset(tmp_path / "images", 1, cache=False, verbose=False)
    text = "\n".join(r.report.messages)
    assert "0.txt: the label path is not a regular file" in text
    assert "1.txt: the label path is a directory" in text
    assert "2.txt: a symbolic link to a missing file" in text
    assert r.report.boxes == 1 and r.report.dropped.get("unreadable_label") == 3


def test_no_boxes_at_all_is_said(tmp_path):
    (tmp_path / "images").mkdir()
    write_img(tmp_path / "images" / "a", 32, 32, ".png")
    r = F.scan_dataset(tmp_path / "images", 1, cache=False, verbose=False)
    assert "no boxes at all" in r.report.summary()


def test_scan_decodes_images(tmp_path):
    """Truncated after the header, a bomb's header: named, counted skips; a JPEG segment of length 0 (it aborted
    the whole scan) is read the way the decoder reads it."""
    import zlib

    (tmp_path / "images").mkdir()
    good = write_img(tmp_path / "images" / "good", 40, 40, ".png")
    data = good.read_bytes()
    (tmp_path / "images" / "trunc.png").write_bytes(data[:60])
    bmp = cv2.imencode(".bmp", np.full((40, 40, 3), 7, np.uint8))[1].tobytes()
    (tmp_path / "images" / "trunc.bmp").write_bytes(bmp[:200])
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "images" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + data[33:])
    jpg = cv2.imencode(".jpg", np.full((40, 40, 3), 7, np.uint8))[1].tobytes()
    (tmp_path / "images" / "seg0.jpg").write_bytes(jpg[:2] + b"\xff\xe0\x00\x00" + jpg[2:])
    r = F.scan_dataset(tmp_path / "images", 1, cache=False, verbose=False)
    text = "\n".join(r.report.messages)
    assert r.report.images == 2 and r.report.skipped_images == 3, text  # good.png and seg0.jpg (it decodes)
    assert "trunc.png" in text and "trunc.bmp" in text
    assert "bomb.png: image is 100000x100000 pixels, over the" in text
