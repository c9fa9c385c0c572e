"""Pascal VOC sources: ``VOCdevkit/VOC2007/ImageSets/Main/<split>.txt`` (image ids) or a ``JPEGImages/`` folder,
with ``Annotations/<id>.xml`` beside ``JPEGImages/``.

Class names come from the data yaml (VOC's 20, or the user's own); an object whose name is not among them
is dropped and counted. ``difficult`` objects are kept out of the training targets and, at validation, are
regions that neither count as a miss nor make a detection on them a false positive: the VOC devkit's rule
(COCO's ``iscrowd`` plays the same part there). XML is parsed with defusedxml (no entity expansion).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def voc_root_of(source) -> Path | None:
    """The VOC year folder (holding JPEGImages/ and Annotations/) of a source, or None if it is not VOC."""
    p = Path(str(source)).expanduser()
    if p.suffix.lower() == ".txt" and p.parent.name == "Main" and p.parent.parent.name == "ImageSets":
        root = p.parent.parent.parent
    elif p.is_dir() and p.name == "JPEGImages":
        root = p.parent
    else:
        return None
    return root if (root / "Annotations").is_dir() else None


def voc_images(source) -> list[Path]:
    """Image paths of a VOC source (ids of an ImageSets list, or every image of JPEGImages/)."""
    root = voc_root_of(source)
    p = Path(str(source)).expanduser()
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix.lower() in IMG_EXTS and f.is_file())
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        iid = line.strip().split()[0] if line.strip() else ""
        if not iid:
            continue
        f = next((root / "JPEGImages" / (iid + e) for e in IMG_EXTS if (root / "JPEGImages" / (iid + e)).is_file()),
                 root / "JPEGImages" / (iid + ".jpg"))  # a missing one is reported by the scan
        out.append(f)
    if not out:
        raise DataError(f"{p}: no image ids listed")
    return out


def annotation_path(img) -> Path:
    img = Path(img)
    return img.parent.parent / "Annotations" / (img.stem + ".xml")


def read_voc_xml(xml, names: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None, list]:
    """One annotation file -> (labels (n, 5) [cls, x1, y1, x2, y2] pixels, difficult boxes (k, 5), (h, w) from
    ``<size>`` or None, [(reason, message)]). VOC pixel coordinates are 1-based; they become 0-based here
    (x1 - 1, as the devkit's own conversion does)."""
    from defusedxml import ElementTree as ET

    xml = Path(xml)
    issues = []
    if not xml.is_file():
        return np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), None, [("missing", f"{xml}: no annotation file")]
    try:
        root = ET.parse(str(xml)).getroot()
    except Exception as e:  # noqa: BLE001 - ParseError, entities refused, bad encoding: all name the file
        return (np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), None,
                [("corrupt", f"{xml}: not a VOC annotation ({e.__class__.__name__}: {e})")])
    hw = None
    size = root.find("size")
    try:
        if size is not None:
            w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))
            hw = (h, w) if h > 0 and w > 0 else None
    except (TypeError, ValueError):
        issues.append(("warning", f"{xml}: <size> is not two numbers; the image's own size is used"))
    index = {n: i for i, n in enumerate(names)}
    keep, hard = [], []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            issues.append(("class_range", f"{xml}: object {k}: class {name!r} is not in the data yaml's names"))
            continue
        bb = obj.find("bndbox")
        try:
            x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            issues.append(("malformed", f"{xml}: object {k} ({name}): <bndbox> needs numeric xmin ymin xmax ymax"))
            continue
        row = (index[name], x1 - 1, y1 - 1, x2 - 1, y2 - 1)
        if not (x2 > x1 and y2 > y1):
            issues.append(("zero_area", f"{xml}: object {k} ({name}): empty box {x1:g},{y1:g},{x2:g},{y2:g}"))
            continue
        difficult = (obj.findtext("difficult") or "0").strip()
        (hard if difficult in ("1", "true") else keep).append(row)
    return (np.array(keep, np.float32).reshape(-1, 5), np.array(hard, np.float32).reshape(-1, 5), hw, issues)
