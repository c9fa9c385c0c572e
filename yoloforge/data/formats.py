"""Dataset formats: the data yaml, image sources, YOLO txt labels, COCO json, and the label scan.

Inside yoloforge labels are ``(n, 5)`` float32 ``[cls, x1, y1, x2, y2]`` in original-image pixels.
Normalized ``cxcywh`` exists only in the YOLO txt files read here. Bad input never raises from deep
inside numpy/torch: a broken file gives a one-line message naming ``file:line`` and is either fixed
(small overshoot clipped, duplicates dropped) or dropped, and everything is counted in a
:class:`DataReport`. Only unusable configuration (missing yaml/dir, nc/names mismatch, 0 images)
raises :class:`DataError`.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple
from pathlib import Path

import cv2
import numpy as np
import yaml

from yoloforge.utils.boxes import clip_boxes

from .errors import DataError

IMG_FORMATS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}
CLIP_TOL = 0.01  # corners up to this far outside [0, 1] (normalized) are clipped; farther -> row dropped
CACHE_VERSION = "yoloforge-scan-3"  # 2: image and category ids are cached too; 3: VOC, ignored regions


# ----------------------------------------------------------------------------------------------- data yaml
@dataclass
class DataConfig:
    """A parsed data yaml. ``train/val/test`` are lists of absolute source strings (or None)."""
    root: Path
    train: list[str] | None
    val: list[str] | None
    test: list[str] | None
    names: list[str]
    nc: int
    path: Path


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def load_data_yaml(path) -> DataConfig:
    """Read a YOLOv5/ultralytics data yaml (``path``, ``train``, ``val``, ``test``, ``names``, ``nc``).

    Relative sources resolve against ``path:`` which itself resolves against the yaml's directory.
    ``names`` may be a list or a ``{id: name}`` dict; when it is missing and a source is a COCO json,
    the json's categories give the names. Raises :class:`DataError` naming the yaml on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data yaml not found: {path}")
    try:
        text = path.read_bytes()
        if b"\x00" in text:
            raise DataError(f"{path}: not a text file (NUL bytes; a binary or UTF-16 file?); save it as UTF-8 YAML")
        d = yaml.safe_load(text.decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a mapping with train/val/names keys")
    p = d.get("path")
    if p is not None and not isinstance(p, str):
        raise DataError(f"{path}: 'path' must be a folder name (a string), got {p!r}")
    root = Path(p or ".").expanduser()
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    if not root.is_dir():
        raise DataError(f"{path}: dataset root 'path: {d.get('path')}' is not a directory ({root})")
    nc = d.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 1):
        raise DataError(f"{path}: 'nc' must be a positive integer (the number of classes), got {nc!r}")
    if nc is not None and nc > 100_000 and d.get("names") is None:
        raise DataError(f"{path}: nc={nc} without names; give the names (more than 100000 classes is not a detector)")

    def sources(key):
        v = d.get(key)
        if v in (None, "", []):
            return None
        if not isinstance(v, (str, list, tuple)) or (isinstance(v, (list, tuple)) and not all(isinstance(x, str) for x in v)):
            raise DataError(f"{path}: '{key}' must be a path or a list of paths, got {v!r:.80}")
        out = []
        for s in (v if isinstance(v, (list, tuple)) else [v]):
            if "\x00" in s:
                raise DataError(f"{path}: '{key}' source {s!r} contains a NUL character")
            p = Path(str(s)).expanduser()
            p = p if p.is_absolute() else root / p
            if key != "test" and not _is_glob(str(p)) and not p.exists():  # test: checked when used
                raise DataError(f"{path}: {key} source '{s}' not found ({p})")
            out.append(str(p))
        return out

    train, val, test = sources("train"), sources("val"), sources("test")
    names = d.get("names")
    if isinstance(names, dict):
        ids = {str(k).strip(): v for k, v in names.items()}
        if sorted(ids, key=lambda k: (len(k), k)) != [str(i) for i in range(len(ids))]:
            raise DataError(f"{path}: names ids must be 0..{len(ids) - 1} without gaps, got {list(names)[:10]}")
        names = [ids[str(i)] for i in range(len(ids))]
    if names is None:
        jsons = [s for s in (train or []) + (val or []) if s.endswith(".json")]
        if jsons:
            names = load_coco_json(jsons[0]).names
        elif nc is not None:
            names = [f"class{i}" for i in range(nc)]
        else:
            raise DataError(f"{path}: no 'names' (and no 'nc')")
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{path}: names must be a list or an {{id: name}} mapping")
    if not names:
        raise DataError(f"{path}: 'names' is empty; list the class names")
    names = [str(n).strip() if n is not None else "" for n in names]
    for i, n in enumerate(names):
        if not n:
            raise DataError(f"{path}: names[{i}] is empty (an empty line in names?)")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: nc={nc} but {len(names)} names are given")
    return DataConfig(root=root, train=train, val=val, test=test, names=names, nc=len(names), path=path)


# -------------------------------------------------------------------------------------------- image sources
def list_images(source) -> list[Path]:
    """Image paths of a source: directory (recursive), ``.txt`` list, glob, COCO ``.json``, a Pascal VOC
    ``ImageSets/Main/<split>.txt`` or ``JPEGImages/``, image, or list."""
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in list_images(s)]
    from .voc import voc_images, voc_root_of

    s = str(source)
    p = Path(s).expanduser()
    if voc_root_of(p) is not None:
        files = voc_images(p)
    elif _is_glob(s) and not p.exists():
        files = [Path(f) for f in sorted(glob.glob(s, recursive=True))]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_FORMATS and f.is_file())
    elif p.suffix.lower() == ".txt" and p.is_file():
        files = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                f = Path(line).expanduser()
                files.append(f if f.is_absolute() else (p.parent / f))
    elif p.suffix.lower() == ".json" and p.is_file():
        files = load_coco_json(p).files
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"image source not found: {s}")
    return [f for f in files if f.suffix.lower() in IMG_FORMATS]


def img2label_path(img) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (last ``images`` dir); else the same dir."""
    parts = list(Path(img).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# ----------------------------------------------------------------------------------------------- image size
def _exif_orientation(tiff: bytes) -> int:
    e = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", tiff[4:8])[0]
    n = struct.unpack(e + "H", tiff[ifd:ifd + 2])[0]
    for k in range(n):
        o = ifd + 2 + 12 * k
        if struct.unpack(e + "H", tiff[o:o + 2])[0] == 0x0112:
            return struct.unpack(e + "H", tiff[o + 8:o + 10])[0]
    return 1


def _jpeg_size(f) -> tuple[int, int] | None:
    orient, size = 1, None
    while size is None:
        b = f.read(1)
        while b and b != b"\xff":
            b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            return None
        m = b[0]
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
            continue
        if m in (0xD9, 0xDA):
            return None
        n = struct.unpack(">H", f.read(2))[0]
        if n < 2:  # a segment length below its own 2 bytes: a corrupt file (decoding will say)
            return None
        seg = f.read(n - 2)
        if m == 0xE1 and seg[:6] == b"Exif\0\0":
            try:
                orient = _exif_orientation(seg[6:])
            except struct.error:
                orient = 1
        elif 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            size = struct.unpack(">HH", seg[1:5])
    h, w = size
    return (w, h) if orient in (5, 6, 7, 8) else (h, w)  # cv2.imread applies EXIF rotation


def header_size(f) -> tuple[tuple[int, int] | None, str | None]:
    """(h, w) from the header of an open binary file (JPEG incl. EXIF rotation, PNG, BMP) without decoding
    it, and a warning; ``(None, None)`` for other formats (decode them to know)."""
    head = f.read(26)
    hw, warn = None, None
    if head[:2] == b"\xff\xd8":
        f.seek(2)
        hw = _jpeg_size(f)
        f.seek(-2, os.SEEK_END)
        if hw and f.read(2) != b"\xff\xd9":
            warn, hw = "truncated JPEG (no end marker)", None
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        w, h = struct.unpack(">II", head[16:24])
        hw = (h, w)
    elif head[:2] == b"BM":
        w, h = struct.unpack("<ii", head[18:26])
        hw = (abs(h), w)
    return (hw if hw and min(hw) > 0 else None), warn


MAX_PIXELS = 1 << 28  # 268 M pixels (16384 x 16384): larger images are refused before they are decoded


def image_size(path, decode: bool = False) -> tuple[tuple[int, int] | None, str | None]:
    """(h, w) read from the header (JPEG incl. EXIF rotation, PNG, BMP), else by decoding.

    Returns ``(None, reason)`` for an unreadable image and ``((h, w), warning|None)`` otherwise. ``decode``
    (the dataset scan): also decode the whole image, so a file truncated after its header is found here and
    not in the middle of training; images above :data:`MAX_PIXELS` are refused before decoding.
    """
    hw, warn = None, None
    try:
        with open(path, "rb") as f:
            hw, warn = header_size(f)
    except OSError as e:
        return None, f"unreadable image ({e.__class__.__name__}: {e})"
    except Exception:  # noqa: BLE001 - a header this parser does not understand: decoding decides
        hw = None
    if hw and hw[0] * hw[1] > MAX_PIXELS:
        return None, f"image is {hw[1]}x{hw[0]} pixels, over the {MAX_PIXELS} pixel limit"
    if hw and not decode:
        return hw, warn
    try:
        im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as e:
        return None, f"image does not decode ({str(e).strip().splitlines()[-1][:80]})"
    if im is None:
        return None, "corrupt, truncated or unsupported image (it does not decode)"
    if hw and tuple(im.shape[:2]) != tuple(hw):
        warn = (warn + "; " if warn else "") + f"header says {hw[1]}x{hw[0]}, decoded {im.shape[1]}x{im.shape[0]}"
    return im.shape[:2], warn


# --------------------------------------------------------------------------------------------------- labels
def read_yolo_labels(txt, nc: int, w: int, h: int):
    """Parse a YOLO txt label file -> (labels float32 (n, 5) [cls, x1, y1, x2, y2] pixels, issues).

    ``issues`` is a list of ``(reason, message)``; reasons ``columns``, ``not_numeric``, ``class_range``,
    ``out_of_bounds``, ``zero_area``, ``duplicate`` drop the row, ``clipped`` keeps it. Polygon rows
    (cls x1 y1 x2 y2 x3 y3 ...) become their bounding box. A missing/empty file = background.
    """
    import stat

    txt = Path(txt)
    issues, rows, lines = [], [], []
    text = ""
    try:
        st = txt.stat()  # follows links: a dangling one is FileNotFoundError below, distinguished by lstat
        if not stat.S_ISREG(st.st_mode):  # a directory, a named pipe (reading it would hang), a device
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe or a device?)"
            issues.append(("unreadable_label", f"{txt}: the label path is {kind}; the image counts as a background"))
        else:
            text = txt.read_text(encoding="utf-8-sig", errors="replace")  # -sig: a UTF-8 BOM is not part of row 1
    except FileNotFoundError:
        if txt.is_symlink():
            issues.append(("unreadable_label", f"{txt}: a symbolic link to a missing file; the image counts as a "
                                               "background"))
    except OSError as e:
        issues.append(("unreadable_label", f"{txt}: cannot be read ({e.__class__.__name__}: {e}); the image counts "
                                           "as a background"))
    for ln, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        k = len(parts)
        if k != 5 and (k < 7 or k % 2 == 0):
            issues.append(("columns", f"{txt}:{ln}: expected 5 columns (cls cx cy w h), got {k}"))
            continue
        try:
            v = [float(x) for x in parts]
        except ValueError:
            issues.append(("not_numeric", f"{txt}:{ln}: non-numeric value in '{line.strip()[:60]}'"))
            continue
        if not all(np.isfinite(v)):
            issues.append(("not_numeric", f"{txt}:{ln}: nan/inf in '{line.strip()[:60]}'"))
            continue
        if k == 5:
            cx, cy, bw, bh = v[1:]
            rows.append((v[0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        else:
            xs, ys = v[1::2], v[2::2]
            rows.append((v[0], min(xs), min(ys), max(xs), max(ys)))
        lines.append(ln)
    if not rows:
        return np.zeros((0, 5), np.float32), issues
    a, ln = np.array(rows, np.float64), np.array(lines)
    keep = np.ones(len(a), bool)
    cls = a[:, 0]
    bad = (cls != np.round(cls)) | (cls < 0) | (cls >= nc)
    for i in np.flatnonzero(bad):
        issues.append(("class_range", f"{txt}:{ln[i]}: class id {cls[i]:g} out of range 0..{nc - 1} (nc={nc})"))
    keep &= ~bad
    lo, hi = a[:, 1:].min(1), a[:, 1:].max(1)
    far = keep & ((lo < -CLIP_TOL) | (hi > 1 + CLIP_TOL))
    for i in np.flatnonzero(far):
        issues.append(("out_of_bounds", f"{txt}:{ln[i]}: box corners {np.round(a[i, 1:], 4).tolist()} outside "
                                        f"[0, 1] by more than {CLIP_TOL} (labels must be normalized)"))
    keep &= ~far
    near = keep & ((lo < -1e-6) | (hi > 1 + 1e-6))
    for i in np.flatnonzero(near):
        issues.append(("clipped", f"{txt}:{ln[i]}: box slightly outside the image, clipped to [0, 1]"))
    a[:, 1:] = a[:, 1:].clip(0, 1)
    zero = keep & ((a[:, 3] - a[:, 1]) * w < 1e-3) | keep & ((a[:, 4] - a[:, 2]) * h < 1e-3)
    for i in np.flatnonzero(zero):
        issues.append(("zero_area", f"{txt}:{ln[i]}: zero-area box"))
    keep &= ~zero
    a, ln = a[keep], ln[keep]
    _, first = np.unique(a, axis=0, return_index=True)
    if len(first) < len(a):
        dup = np.setdiff1d(np.arange(len(a)), first)
        for i in dup:
            issues.append(("duplicate", f"{txt}:{ln[i]}: duplicate of an earlier row, dropped"))
        a = a[np.sort(first)]
    a[:, [1, 3]] *= w
    a[:, [2, 4]] *= h
    return a.astype(np.float32), issues


class CocoSource(NamedTuple):
    """What :func:`load_coco_json` reads: per image its path, labels (n, 5) pixels, (h, w) and json id;
    the class names and json category ids (class index i is category ``category_ids[i]``); messages."""
    files: list
    labels: list
    shapes: np.ndarray
    names: list
    msgs: list
    image_ids: list
    category_ids: list
    ignore: list  # per image (k, 5) iscrowd boxes: not trained on, ignored regions at validation


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def load_coco_json(path) -> CocoSource:
    """COCO detection json -> :class:`CocoSource`, every field checked (typed checks in this one place).

    Categories are remapped to contiguous ids sorted by their json id; ``iscrowd`` boxes are not trained on
    (they are kept in ``ignore``, regions validation neither rewards nor punishes, as pycocotools does);
    images without annotations are backgrounds. Each image file is looked up next to the json, in its
    parent, in ``images/`` and in ``<split>/`` (``instances_val2017.json`` -> ``val2017/``).

    What makes the file unusable (not json, no ``images`` / ``categories`` list, an image entry without an
    integer ``id``, a string ``file_name`` or positive integer ``width`` / ``height``, a duplicate image or
    category id, a ``file_name`` that leaves the dataset root) raises :class:`DataError` naming the json and
    the entry; a bad annotation (bbox not 4 finite numbers, negative size, unknown image or category id) is
    dropped and counted with its id.
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a COCO detection json ({e.__class__.__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a COCO detection json (top level is a {type(d).__name__}, not an object)")
    for key in ("images", "categories"):
        if not isinstance(d.get(key), list):
            raise DataError(f"{path}: '{key}' must be a list, got {type(d.get(key)).__name__}")
    anns = d.get("annotations", [])
    if anns is None or not isinstance(anns, list):
        raise DataError(f"{path}: 'annotations' must be a list, got {type(anns).__name__}")
    for k, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DataError(f"{path}: categories[{k}] needs an integer 'id', got {c!r:.80}")
    cats = sorted(d["categories"], key=lambda c: c["id"])
    if len({c["id"] for c in cats}) != len(cats):
        raise DataError(f"{path}: duplicate category ids")
    cat2cls = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c.get("name", c["id"])) for c in cats]
    root = Path(os.path.abspath(path.parent.parent))
    split = path.stem.split("_")[-1]
    cands = [path.parent, path.parent.parent, path.parent / "images", path.parent.parent / "images",
             path.parent.parent / split, path.parent.parent / "images" / split, path.parent / split]
    images, seen = [], set()
    for k, im in enumerate(d["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(im, dict):
            raise DataError(f"{where} is not an object")
        if not _is_int(im.get("id")):
            raise DataError(f"{where}: 'id' must be an integer, got {im.get('id')!r}")
        if im["id"] in seen:
            raise DataError(f"{where}: duplicate image id {im['id']} (boxes of two images would merge)")
        seen.add(im["id"])
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            raise DataError(f"{where}: 'file_name' must be a string, got {fn!r}")
        if Path(fn).is_absolute() or ".." in Path(fn).parts:
            raise DataError(f"{where}: file_name {fn!r} leaves the dataset (absolute or '..'); give it relative "
                            "to the image folder")
        for key in ("width", "height"):
            if not _is_int(im.get(key)) or im[key] <= 0:
                raise DataError(f"{where} ({fn}): '{key}' must be a positive integer, got {im.get(key)!r}")
        base = next((c for c in cands if (c / fn).exists()), path.parent)
        f = (base / fn)
        try:
            Path(os.path.abspath(f)).relative_to(root)  # (symbolic links inside the dataset may point anywhere)
        except ValueError:
            raise DataError(f"{where}: file_name {fn!r} resolves outside the dataset root {root}") from None
        images.append((im, f))
    rows: dict[int, list] = {im["id"]: [] for im, _ in images}
    crowd: dict[int, list] = {im["id"]: [] for im, _ in images}
    msgs = []
    unknown_img = 0
    for k, a in enumerate(anns):
        aid = a.get("id", k) if isinstance(a, dict) and _is_int(a.get("id", k)) else k
        where = f"{path}: annotation {aid}"
        if not isinstance(a, dict):
            msgs.append(("malformed", f"{where}: not an object, dropped"))
            continue
        if not _is_int(a.get("image_id")) or a["image_id"] not in rows:
            unknown_img += 1
            continue
        b = a.get("bbox")
        if not isinstance(b, list) or len(b) != 4 or not all(_is_num(v) for v in b):
            msgs.append(("malformed", f"{where}: bbox must be 4 numbers [x, y, w, h], got {b!r:.60}; dropped"))
            continue
        x, y, bw, bh = b
        if bw < 0 or bh < 0:
            msgs.append(("malformed", f"{where}: bbox has a negative size {b}; dropped"))
            continue
        if not _is_int(a.get("category_id")) or a["category_id"] not in cat2cls:
            msgs.append(("class_range", f"{where} has unknown category {a.get('category_id')!r:.40}"))
            continue
        (crowd if a.get("iscrowd", 0) else rows)[a["image_id"]].append((cat2cls[a["category_id"]], x, y, x + bw, y + bh))
    if unknown_img:
        msgs.append(("unknown_image", f"{path}: {unknown_img} annotation(s) name an image_id that is not in "
                                      "'images'; dropped"))
    files, labels, shapes, ids, ignore = [], [], [], [], []
    for im, f in images:
        ids.append(int(im["id"]))
        ignore.append(np.array(crowd[im["id"]], np.float32).reshape(-1, 5))
        h, w = im["height"], im["width"]
        lab = np.array(rows[im["id"]], np.float32).reshape(-1, 5)
        clip_boxes(lab[:, 1:5], (h, w))
        ok = ((lab[:, 3] - lab[:, 1]) > 1e-3) & ((lab[:, 4] - lab[:, 2]) > 1e-3)
        if (~ok).any():
            msgs.append(("zero_area", f"{path}: image {im['file_name']}: {(~ok).sum()} zero-area box(es) dropped"))
        files.append(f)
        labels.append(lab[ok])
        shapes.append((h, w))
    return CocoSource(files, labels, np.array(shapes, np.int64).reshape(-1, 2), names, msgs, ids,
                      [int(c["id"]) for c in cats], ignore)


# ----------------------------------------------------------------------------------------------------- scan
@dataclass
class DataReport:
    """What the scan found: counts, rows dropped per reason, and one-line messages."""
    source: str = ""
    images: int = 0
    backgrounds: int = 0
    boxes: int = 0
    skipped_images: int = 0
    clipped: int = 0
    dropped: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)

    def add(self, reason: str, msg: str) -> None:
        self.messages.append(msg)
        if reason == "clipped":
            self.clipped += 1
        elif reason == "skipped":
            self.skipped_images += 1
        elif reason != "warning":
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def summary(self, max_messages: int = 10) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        s = (f"{self.source}: {self.images} images, {self.backgrounds} backgrounds, {self.boxes} boxes, "
             f"{self.skipped_images} images skipped, {self.clipped} boxes clipped, rows dropped: {drops}")
        lines = [s] + [f"  WARNING {m}" for m in self.messages[:max_messages]]
        if self.images and not self.boxes:
            lines.insert(1, "  WARNING no boxes at all: every image is a background (are the labels in a labels/ folder "
                            "beside images/, with the same file names?)")
        if len(self.messages) > max_messages:
            lines.append(f"  ... and {len(self.messages) - max_messages} more messages")
        return "\n".join(lines)


@dataclass
class ScanResult:
    img_files: list[Path]
    labels: list[np.ndarray]
    shapes: np.ndarray  # (N, 2) h, w
    report: DataReport
    image_ids: np.ndarray = None  # (N,) int64: the COCO json's ids, else numeric file stems, else scan order
    category_ids: list = None  # the COCO json's category id of each class index; None for YOLO txt
    ignore: list = None  # per image (k, 5) boxes validation ignores (COCO iscrowd, VOC difficult)

    def __post_init__(self):
        if self.image_ids is None:
            self.image_ids = np.arange(len(self.img_files), dtype=np.int64)
        if self.ignore is None:
            self.ignore = [np.zeros((0, 5), np.float32) for _ in self.img_files]


def image_ids_for(files, json_ids) -> tuple[np.ndarray, str | None]:
    """The COCO image id of each file: its json id where it came from a json; for YOLO txt the numeric file
    stem (``000000000139.jpg`` -> 139, as the official COCO scripts do) when every such stem is numeric and
    distinct; otherwise the scan order. Ids that collide fall back to the scan order with a message."""
    n = len(files)
    txt = [i for i in range(n) if json_ids[i] is None]
    stems = [Path(files[i]).stem for i in txt]
    use_stem = bool(txt) and all(st.isdigit() for st in stems) and len(set(map(int, stems))) == len(stems)
    ids = np.array([json_ids[i] if json_ids[i] is not None else (int(Path(files[i]).stem) if use_stem else i)
                    for i in range(n)], np.int64)
    if len(np.unique(ids)) != n:
        return np.arange(n, dtype=np.int64), ("image ids collide between sources; COCO results json uses the "
                                              "scan order as image_id")
    return ids, None


def _stat(p) -> str:
    try:
        st = os.stat(p)
        return f"{p}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{p}|-"


def _cache_path(srcs, label_files, key: str, cache_dir) -> list[Path]:
    """Candidate cache files: ``cache_dir`` (or $YOLOFORGE_CACHE_DIR) if given; else beside the labels dir
    (if writable), then ~/.cache/yoloforge."""
    cache_dir = cache_dir or os.environ.get("YOLOFORGE_CACHE_DIR")
    user = Path(cache_dir or Path.home() / ".cache/yoloforge")
    fallback = user / f"scan-{key[:12]}.npz"
    d = Path(label_files[0]).parent if label_files else Path(str(srcs[0])).with_suffix("")
    beside = d.parent / (f"{d.name}.cache.npz" if len(srcs) == 1 else f"{d.name}.{key[:8]}.cache.npz")
    return [fallback] if cache_dir is not None or not os.access(d.parent, os.W_OK) else [beside, fallback]


def _save_cache(path: Path, key: str, res: ScanResult) -> bool:
    n = np.array([len(x) for x in res.labels], np.int64)
    lab = np.concatenate(res.labels, 0) if res.labels else np.zeros((0, 5), np.float32)
    rep = {k: getattr(res.report, k) for k in DataReport.__dataclass_fields__}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), files=np.array([str(p) for p in res.img_files], dtype=str),
                     labels=lab.astype(np.float32), counts=n, shapes=res.shapes.astype(np.int64),
                     report=np.array(json.dumps(rep)), image_ids=np.asarray(res.image_ids, np.int64),
                     category_ids=np.array(res.category_ids if res.category_ids is not None else [], np.int64),
                     has_category_ids=np.array(res.category_ids is not None),
                     ignore=np.concatenate(res.ignore, 0).astype(np.float32) if res.ignore else np.zeros((0, 5), np.float32),
                     ignore_counts=np.array([len(x) for x in res.ignore], np.int64))
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def _load_cache(path: Path, key: str) -> ScanResult | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            counts = z["counts"]
            labels = np.split(z["labels"], np.cumsum(counts)[:-1]) if len(counts) else []
            rep = DataReport(**json.loads(str(z["report"])))
            cats = z["category_ids"].tolist() if bool(z["has_category_ids"]) else None
            ic = z["ignore_counts"]
            ignore = np.split(z["ignore"], np.cumsum(ic)[:-1]) if len(ic) else []
            return ScanResult([Path(p) for p in z["files"].tolist()], [l.copy() for l in labels],
                              z["shapes"].copy(), rep, z["image_ids"].copy(), cats, [x.copy() for x in ignore])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _progress(it, total: int, verbose: bool, name: str):
    """A progress bar over the scan of ``total`` files (every image is decoded: 100k images take about a minute
    on two cores); none for small sets or when quiet."""
    if not verbose or total < 2000:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=f"scanning {name}", unit="img", leave=False, dynamic_ncols=True)


def scan_dataset(source, nc: int, cache: bool = True, cache_dir=None, verbose: bool = True,
                 names: list | None = None) -> ScanResult:
    """Find images and validated labels of ``source`` (any :func:`list_images` source or list of them).

    Unreadable images are skipped (counted); labels are checked by :func:`read_yolo_labels`. The result
    is cached (npz, no pickle) beside the labels dir or in ``cache_dir``/``~/.cache/yoloforge``, keyed by
    a hash of every file's path, size and mtime, and reused while nothing changes.
    """
    import hashlib

    from .voc import annotation_path, read_voc_xml, voc_root_of

    srcs = list(source) if isinstance(source, (list, tuple)) else [source]
    name = ", ".join(str(s) for s in srcs[:3]) + (" ..." if len(srcs) > 3 else "")
    coco, voc, plain = [], [], []
    for s in srcs:
        (coco if str(s).lower().endswith(".json") else voc if voc_root_of(s) is not None else plain).append(s)
    if voc and not names:
        raise DataError(f"{voc[0]}: a Pascal VOC source needs the class names (names: in the data yaml)")
    voc_files = list_images(voc) if voc else []
    img_files = list_images(plain) if plain else []
    label_files = [img2label_path(f) for f in img_files]
    xml_files = [annotation_path(f) for f in voc_files]
    hsh = hashlib.sha256(f"{CACHE_VERSION}|nc={nc}|names={names if voc else ''}".encode())
    for p in [*coco, *voc, *img_files, *label_files, *voc_files, *xml_files]:
        hsh.update(_stat(p).encode())
    key = hsh.hexdigest()
    paths = _cache_path(srcs, label_files or xml_files, key, cache_dir) if cache else []
    for p in paths:
        if p.is_file() and (res := _load_cache(p, key)) is not None:
            if verbose:
                print(res.report.summary() + f"\n  (labels cache {p})")
            return res

    rep = DataReport(source=name)
    files, labels, shapes, json_ids, ignore = [], [], [], [], []
    category_ids = None
    for j in coco:
        src = load_coco_json(j)
        for r, m in src.msgs:
            rep.add(r, m)
        if len(src.names) != nc:
            raise DataError(f"{j}: {len(src.names)} categories but the dataset has nc={nc}")
        if category_ids is None:
            category_ids = src.category_ids
        elif category_ids != src.category_ids:
            rep.add("warning", f"{j}: its category ids differ from {coco[0]}'s; results json uses {coco[0]}'s")
        for f, l, s, i, ig in zip(src.files, src.labels, src.shapes, src.image_ids, src.ignore):
            if not f.is_file():
                rep.add("skipped", f"{f}: image listed in {j} not found, skipped")
                continue
            hw, warn = image_size(f, decode=True)
            if hw is None:
                rep.add("skipped", f"{f} (listed in {j}): {warn}, skipped")
                continue
            if tuple(hw) != tuple(int(v) for v in s):
                rep.add("warning", f"{j}: image {f.name} is {hw[1]}x{hw[0]} but the json says {s[1]}x{s[0]}; "
                                   "the image's size is used")
                for a in (l, ig):
                    clip_boxes(a[:, 1:5], hw)
                s = hw
            files.append(f), labels.append(l), shapes.append(tuple(s)), json_ids.append(i), ignore.append(ig)

    def one_voc(i):
        f = voc_files[i]
        hw, warn = image_size(f, decode=True)
        if hw is None:
            return None, None, None, [("skipped", f"{f}: {warn}, skipped")]
        lab, hard, xml_hw, issues = read_voc_xml(xml_files[i], names)
        if xml_hw is not None and xml_hw != tuple(hw):
            issues.append(("warning", f"{xml_files[i]}: <size> says {xml_hw[1]}x{xml_hw[0]}, the image is "
                                      f"{hw[1]}x{hw[0]}; the image's size is used"))
        for a in (lab, hard):
            clip_boxes(a[:, 1:5], hw)
        return hw, lab, hard, ([("warning", f"{f}: {warn}")] if warn else []) + issues

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
        for i, (hw, lab, hard, issues) in enumerate(_progress(ex.map(one_voc, range(len(voc_files))), len(voc_files),
                                                              verbose, name)):
            for r, m in issues:
                rep.add(r, m)
            if hw is not None:
                files.append(voc_files[i]), labels.append(lab), shapes.append(hw), json_ids.append(None)
                ignore.append(hard)

    def one(i):
        hw, warn = image_size(img_files[i], decode=True)
        if hw is None:
            return None, None, [("skipped", f"{img_files[i]}: {warn}, skipped")]
        lab, issues = read_yolo_labels(label_files[i], nc, hw[1], hw[0])
        return hw, lab, ([("warning", f"{img_files[i]}: {warn}")] if warn else []) + issues

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
        for i, (hw, lab, issues) in enumerate(_progress(ex.map(one, range(len(img_files))), len(img_files), verbose,
                                                        name)):
            for r, m in issues:
                rep.add(r, m)
            if hw is not None:
                files.append(img_files[i]), labels.append(lab), shapes.append(hw), json_ids.append(None)
                ignore.append(np.zeros((0, 5), np.float32))
    if not files:
        raise DataError(f"no usable images found in {name}" + (f" ({rep.skipped_images} unreadable)"
                                                               if rep.skipped_images else ""))
    rep.images = len(files)
    rep.backgrounds = sum(len(l) == 0 for l in labels)
    rep.boxes = int(sum(len(l) for l in labels))
    ids, msg = image_ids_for(files, json_ids)
    if msg:
        rep.add("warning", f"{name}: {msg}")
    res = ScanResult(files, labels, np.array(shapes, np.int64).reshape(-1, 2), rep, ids, category_ids, ignore)
    saved = next((p for p in paths if _save_cache(p, key, res)), None)
    if verbose:
        print(rep.summary() + (f"\n  (labels cache saved to {saved})" if saved else ""))
    return res
