"""Prediction on images, folders, globs, lists and videos.

Preprocessing is the letterbox used by training and validation, at the same scale everywhere; for
a model that takes any input size (torch, or an export with dynamic height/width) the canvas is the
smallest stride-multiple rectangle instead of the square (``rect=True``, the default): a 4:3 photo
at 640 runs at 480x640, a quarter fewer pixels, at the same scale (boxes agree to a pixel; scores
near the edges can move a little, the padding the convolutions see is different). Frames stream
through a generator: a long video never accumulates results in memory unless the caller keeps them.
"""
from __future__ import annotations

import glob
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from yoloforge.engine.postprocess import PREDICT, postprocess
from yoloforge.utils.boxes import xyxy2cxcywh, xyxy2xywh
from yoloforge.utils.logging import get_logger

LOG = get_logger()
IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VID_EXT = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"}


@dataclass
class Results:
    """Detections of one image, in its original pixels."""

    boxes: np.ndarray  # (n, 4) xyxy
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int
    names: list
    path: str = ""
    orig_img: np.ndarray | None = field(default=None, repr=False)  # BGR
    frame: int | None = None
    speed_ms: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    def plot(self) -> np.ndarray:
        """The original image (BGR) with the detections drawn."""
        from yoloforge.utils.plots import draw_detections

        return draw_detections(self.orig_img.copy(), self.boxes, self.scores, self.classes, self.names)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), self.plot()):
            raise OSError(f"could not write {path}")
        return path

    def to_yolo_txt(self, with_conf: bool = True) -> str:
        h, w = self.orig_img.shape[:2]
        xywh = xyxy2cxcywh(self.boxes.astype(np.float32)) / np.array([w, h, w, h], np.float32)
        rows = []
        for c, b, s in zip(self.classes, xywh, self.scores):
            rows.append(f"{int(c)} {b[0]:.6f} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f}" + (f" {s:.5f}" if with_conf else ""))
        return "\n".join(rows) + ("\n" if rows else "")

    def to_coco(self, image_id) -> list[dict]:
        return [{"image_id": image_id, "category_id": int(c), "bbox": [round(float(v), 3) for v in b],
                 "score": round(float(s), 5)} for b, s, c in zip(xyxy2xywh(self.boxes.astype(np.float32)),
                                                                self.scores, self.classes)]


def iter_source(source) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """Yield (path, BGR image, frame index or None) from a path, folder, glob, video or list of them."""
    if isinstance(source, np.ndarray):
        yield "array", source, None
        return
    if isinstance(source, (list, tuple)):
        for s in source:
            try:
                yield from iter_source(s)
            except OSError as e:  # one video that cannot be opened: skipped like an unreadable image
                if len(source) == 1:
                    raise
                LOG.warning(f"{e}, skipped")
        return
    s = str(source)
    p = Path(s)
    if any(ch in s for ch in "*?["):
        files = sorted(glob.glob(s, recursive=True))
        if not files:
            raise FileNotFoundError(f"no files match {s}")
        yield from iter_source(files)
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_EXT | VID_EXT)
        if not files:
            raise FileNotFoundError(f"no images or videos in {p}")
        yield from iter_source([str(f) for f in files])
    elif not p.exists():
        raise FileNotFoundError(f"source not found: {p}")
    elif p.suffix.lower() in VID_EXT:
        cap = cv2.VideoCapture(s)
        if not cap.isOpened():
            raise OSError(f"{p}: cannot open video (corrupt, or a codec this OpenCV build lacks)")
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield s, frame, i
                i += 1
        finally:
            cap.release()
    else:
        img = cv2.imread(s)
        if img is None:
            LOG.warning(f"{p}: unreadable image, skipped")
            return
        yield s, img, None


def rect_shape(hw: tuple[int, int], imgsz: int, stride: int) -> tuple[int, int]:
    """(H, W) of the smallest ``stride``-multiple canvas holding an image of ``hw`` scaled so that its long
    side is ``imgsz`` (the rectangular letterbox: a 4:3 photo at 640 becomes 480x640, not 640x640)."""
    h0, w0 = hw
    r = imgsz / max(h0, w0)
    h, w = max(1, int(round(h0 * r))), max(1, int(round(w0 * r)))
    return min(h + (-h) % stride, imgsz), min(w + (-w) % stride, imgsz)


def preprocess(imgs: list[np.ndarray], imgsz: int, stride: int | None = None) -> tuple[np.ndarray, list]:
    """Letterbox BGR images to a float32 RGB NCHW batch in [0, 1]; also the (ratio, pad) of each.

    Square ``imgsz`` canvases by default (training and validation use them). With ``stride`` (a model
    that takes any multiple of it), the canvas of the batch is the smallest rectangle holding every
    image at the same scale as the square letterbox would use: fewer pixels to run."""
    from yoloforge.data.augment import letterbox

    shape = (imgsz, imgsz)
    if stride:
        shapes = [rect_shape(img.shape[:2], imgsz, stride) for img in imgs]
        shape = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    out = np.empty((len(imgs), 3, *shape), np.float32)
    rps = []
    for k, img in enumerate(imgs):
        lb, ratio, pad = letterbox(img, shape)
        out[k] = lb[:, :, ::-1].transpose(2, 0, 1)
        rps.append((ratio, pad))
    out *= 1 / 255.0
    return out, rps


class Predictor:
    """Runs a model (torch module or any backend callable on float NCHW) over a source."""

    def __init__(self, model, names: list[str], imgsz: int = 640, conf: float = PREDICT.conf, iou: float = PREDICT.iou,
                 max_det: int = PREDICT.max_det, classes: list[int] | None = None, batch: int = 1, device="cpu",
                 agnostic: bool = False, nms_kind: str = "iou", rect: bool = True):
        from yoloforge.export.runtime import rect_stride

        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval()
            if not getattr(model, "fused", False):
                model.fuse()
        self.rect_stride = rect_stride(model) if rect else None  # None: the square letterbox
        self.model, self.names, self.imgsz = model, list(names), int(imgsz)
        self.conf, self.iou, self.max_det, self.classes = conf, iou, max_det, classes
        self.batch, self.device, self.agnostic, self.nms_kind = max(int(batch), 1), torch.device(device), agnostic, nms_kind

    def _run_batch(self, items) -> list[Results]:
        out = self.predict_batch([it[1] for it in items])
        for r, (path, _, frame) in zip(out, items):
            r.path, r.frame = path, frame
        return out

    def predict_batch(self, imgs: list[np.ndarray], conf=None, iou=None) -> list[Results]:
        """BGR images, each exactly as it would come out alone. ``conf`` / ``iou``: one value or one per image
        (a server batches requests that asked for different thresholds); None: the predictor's own.

        With the rectangular letterbox, images of different canvas shapes run as separate forward passes: a
        shared larger canvas would pad them differently, and the result would depend on the batch."""
        n = len(imgs)
        confs = list(conf) if isinstance(conf, (list, tuple)) else [self.conf if conf is None else conf] * n
        ious = list(iou) if isinstance(iou, (list, tuple)) else [self.iou if iou is None else iou] * n
        groups: dict[tuple, list[int]] = {}
        for k, img in enumerate(imgs):
            key = rect_shape(img.shape[:2], self.imgsz, self.rect_stride) if self.rect_stride else (self.imgsz,) * 2
            groups.setdefault(key, []).append(k)
        out: list = [None] * n
        for idx in groups.values():
            for k, r in zip(idx, self._forward([imgs[k] for k in idx], [confs[k] for k in idx], [ious[k] for k in idx])):
                out[k] = r
        return out

    @torch.inference_mode()
    def _forward(self, imgs: list[np.ndarray], confs: list[float], ious: list[float]) -> list[Results]:
        n = len(imgs)
        t0 = time.perf_counter()
        x, rps = preprocess(imgs, self.imgsz, self.rect_stride)
        xt = torch.from_numpy(x)
        if isinstance(self.model, torch.nn.Module):
            xt = xt.to(self.device)
        t1 = time.perf_counter()
        pred = self.model(xt)
        if isinstance(pred, (list, tuple)):
            pred = pred[0]
        pred = torch.as_tensor(pred)
        t2 = time.perf_counter()
        dets = postprocess(pred, confs, ious, self.max_det, classes=self.classes, agnostic=self.agnostic,
                           kind=self.nms_kind, ratio_pads=rps, orig_shapes=[img.shape[:2] for img in imgs])
        out = [Results(det[:, :4], det[:, 4], det[:, 5].astype(int), self.names, "", img, None)
               for img, det in zip(imgs, dets)]
        t3 = time.perf_counter()
        for r in out:
            r.speed_ms = {"pre": 1e3 * (t1 - t0) / n, "model": 1e3 * (t2 - t1) / n, "post": 1e3 * (t3 - t2) / n}
        return out

    def stream(self, source) -> Iterator[Results]:
        buf = []
        for item in iter_source(source):
            buf.append(item)
            if len(buf) == self.batch:
                yield from self._run_batch(buf)
                buf = []
        if buf:
            yield from self._run_batch(buf)

    def __call__(self, source, stream: bool = False):
        gen = self.stream(source)
        return gen if stream else list(gen)

    def predict_to_dir(self, source, save_dir: str | Path, save_img: bool = True, save_txt: bool = False,
                       save_json: bool = False, verbose: bool = True) -> dict:
        """Write annotated images (videos as .mp4), YOLO txt and/or a COCO json to ``save_dir``."""
        from tqdm import tqdm

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        video: tuple[str, cv2.VideoWriter] | None = None  # the video being written: one open at a time
        coco, n_img, n_det, t_total = [], 0, 0, {"pre": 0.0, "model": 0.0, "post": 0.0}
        try:
            for r in tqdm(self.stream(source), desc="predict", disable=not verbose, unit="img", dynamic_ncols=True):
                n_img += 1
                n_det += len(r)
                for k in t_total:
                    t_total[k] += r.speed_ms.get(k, 0.0)
                stem = Path(r.path).stem
                if r.frame is not None:
                    if save_img:
                        if video is None or video[0] != r.path:  # a new video: close the one before
                            if video is not None:
                                video[1].release()
                            h, wd = r.orig_img.shape[:2]
                            cap = cv2.VideoCapture(r.path)
                            fps = cap.get(cv2.CAP_PROP_FPS) or 25
                            cap.release()
                            video = r.path, cv2.VideoWriter(str(save_dir / f"{stem}.mp4"),
                                                            cv2.VideoWriter_fourcc(*"mp4v"), fps, (wd, h))
                        video[1].write(r.plot())
                    stem = f"{stem}_{r.frame}"
                elif save_img:
                    r.save(save_dir / (stem + ".jpg"))
                if save_txt:
                    (save_dir / "labels").mkdir(exist_ok=True)
                    (save_dir / "labels" / f"{stem}.txt").write_text(r.to_yolo_txt())
                if save_json:
                    coco.extend(r.to_coco(int(stem) if stem.isdigit() else stem))
        finally:
            if video is not None:
                video[1].release()
        if save_json:
            (save_dir / "predictions.json").write_text(json.dumps(coco))
        speed = {k: v / max(n_img, 1) for k, v in t_total.items()}
        return {"images": n_img, "detections": n_det, "save_dir": str(save_dir), "speed_ms": speed}
