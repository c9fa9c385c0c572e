"""COCO-style evaluation of any model that keeps the eval contract ``(B, N, 4 + nc)``.

The model can be a torch module or any callable taking a float NCHW batch in [0, 1] (an ONNX
Runtime or OpenVINO backend), so mAP is computed the same way for every family and format.
Defaults: ``config.VAL_NMS`` (the yolov7 test.py settings: conf 0.001, NMS IoU 0.65, 300 detections per image).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from yoloforge.engine.postprocess import VAL, postprocess
from yoloforge.utils.boxes import unletterbox_boxes


@dataclass
class Metrics:
    map: float = 0.0  # AP50-95
    map50: float = 0.0
    map75: float = 0.0
    precision: float = 0.0  # at the confidence of best mean F1
    recall: float = 0.0
    per_class: dict = field(default_factory=dict)  # name -> (AP50-95, AP50, instances)
    images: int = 0
    instances: int = 0
    speed_ms: dict = field(default_factory=dict)  # per image: pre, model, post
    files: dict = field(default_factory=dict)  # what was written: json, plots
    pr: dict = field(default_factory=dict, repr=False)  # all-class counts at IoU 0.5 per score threshold (PR curve)

    @property
    def fitness(self) -> float:
        """Model selection score (YOLOv5-style): 0.1 mAP50 + 0.9 mAP50-95."""
        return 0.1 * self.map50 + 0.9 * self.map

    def to_dict(self) -> dict:
        return {"map": self.map, "map50": self.map50, "map75": self.map75, "precision": self.precision,
                "recall": self.recall, "images": self.images, "instances": self.instances,
                "per_class": self.per_class, "speed_ms": self.speed_ms, "fitness": self.fitness}

    def table(self) -> str:
        head = f"{'class':>16} {'images':>7} {'labels':>7} {'P':>7} {'R':>7} {'mAP50':>7} {'mAP50-95':>9}"
        rows = [head, f"{'all':>16} {self.images:>7} {self.instances:>7} {self.precision:>7.3f} "
                      f"{self.recall:>7.3f} {self.map50:>7.3f} {self.map:>9.3f}"]
        if len(self.per_class) > 1:
            for name, (ap, ap50, n) in self.per_class.items():
                if n:
                    rows.append(f"{name[:16]:>16} {'':>7} {n:>7} {'':>7} {'':>7} {ap50:>7.3f} {ap:>9.3f}")
        if self.speed_ms:
            s = self.speed_ms
            rows.append(f"speed per image: {s.get('pre', 0):.1f} ms pre, {s.get('model', 0):.1f} ms model, "
                        f"{s.get('post', 0):.1f} ms post")
        return "\n".join(rows)


def _image_id(path: str, index: int) -> int:
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else index


def pr_counts(tp, scores, n_gt: int, points: int = 101) -> dict:
    """True / false positives and misses of all classes together at IoU 0.5, for score thresholds
    ``linspace(0, 1, points)``: what TensorBoard's PR curve plots."""
    th = np.linspace(0, 1, points)
    tp = np.asarray(tp, bool).reshape(-1)
    order = np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")
    s, t = np.asarray(scores, np.float64).reshape(-1)[order], tp[order]
    ctp = np.concatenate([[0], np.cumsum(t)])
    k = np.searchsorted(-s, -th, side="right")  # detections with score >= threshold
    tps = ctp[k].astype(np.float64)
    return {"thresholds": th, "tp": tps, "fp": k - tps, "fn": n_gt - tps}


@torch.no_grad()
def evaluate(model, loader, names: list[str], *, conf: float = VAL.conf, iou: float = VAL.iou, max_det: int = VAL.max_det,
             device: str | torch.device = "cpu", half: bool = False, save_dir: str | Path | None = None,
             save_json: bool = False, plots: bool = False, verbose: bool = True,
             desc: str = "val") -> Metrics:
    """Run ``model`` over ``loader`` and compute COCO mAP with faster-coco-eval.

    Batches may be rectangular (``DetectionDataset(rect_batch=...)``): boxes go back to the original
    image through each sample's own ``ratio_pad``."""
    from yoloforge.utils.metrics import ConfusionMatrix, coco_map, match_predictions, pr_curves, to_coco_results

    device = torch.device(device)
    is_module = isinstance(model, torch.nn.Module)
    if is_module:
        model.eval()
    nc = len(names)
    gts, dts, ids, tps = [], [], [], []
    confusion = ConfusionMatrix(nc)
    t_pre = t_model = t_post = 0.0
    n_img = 0
    for imgs, targets, metas in tqdm(loader, desc=desc, disable=not verbose, leave=False, dynamic_ncols=True):
        t0 = time.perf_counter()
        x = imgs.to(device, non_blocking=True).float().div_(255)
        if half:
            x = x.half()
        t1 = time.perf_counter()
        preds = model(x)
        if isinstance(preds, (list, tuple)):
            preds = preds[0]
        t2 = time.perf_counter()
        dets = postprocess(preds, conf, iou, max_det, multi_label=True, ratio_pads=[m["ratio_pad"] for m in metas],
                           orig_shapes=[m["orig_shape"] for m in metas])
        t3 = time.perf_counter()
        t_pre, t_model, t_post = t_pre + t1 - t0, t_model + t2 - t1, t_post + t3 - t2
        targets = targets.cpu()
        for i, (det, meta) in enumerate(zip(dets, metas)):
            t = targets[targets[:, 0] == i].numpy()
            shape = meta["orig_shape"]
            gt_boxes = unletterbox_boxes(t[:, 2:6], meta["ratio_pad"], shape) if len(t) else np.zeros((0, 4), np.float32)
            boxes = det[:, :4]
            ign = meta.get("ignore")
            if ign is not None and len(ign):  # COCO iscrowd / VOC difficult: neither a miss nor a false positive
                gts.append({"boxes": np.concatenate([gt_boxes, ign[:, 1:5]]), "shape": shape,
                            "classes": np.concatenate([t[:, 1].astype(int), ign[:, 0].astype(int)]),
                            "iscrowd": np.r_[np.zeros(len(gt_boxes), int), np.ones(len(ign), int)]})
            else:
                gts.append({"boxes": gt_boxes, "classes": t[:, 1].astype(int), "shape": shape})
            dts.append({"boxes": boxes, "scores": det[:, 4], "classes": det[:, 5].astype(int)})
            confusion.update(det, gt_boxes, t[:, 1].astype(int))
            tps.append(match_predictions(det, gt_boxes, t[:, 1].astype(int))[:, 0])
            ids.append(int(meta["image_id"]) if "image_id" in meta else _image_id(meta["path"], n_img))
            n_img += 1
    gt_cls = [g["classes"][g["iscrowd"] == 0] if "iscrowd" in g else g["classes"] for g in gts]  # without ignored
    m = Metrics(images=n_img, instances=int(sum(len(c) for c in gt_cls)))
    if n_img:
        for g, i in zip(gts, ids):
            g["image_id"] = i
        r = coco_map(gts, dts, names)
        m.map, m.map50, m.map75 = (float(np.nan_to_num(r[k])) for k in ("map", "map50", "map75"))
        if not m.instances:
            from yoloforge.utils.logging import get_logger

            get_logger().warning(f"{desc}: the split has no ground-truth boxes, so mAP is undefined (reported as 0)")
        counts = np.bincount(np.concatenate(gt_cls).astype(int), minlength=nc) if m.instances else np.zeros(nc, int)
        m.per_class = {names[c]: (float(np.nan_to_num(r["per_class_ap"][c])), float(np.nan_to_num(r["per_class_ap50"][c])),
                                  int(counts[c])) for c in range(nc)}
        pr = pr_curves(np.concatenate(tps), np.concatenate([d["scores"] for d in dts]),
                       np.concatenate([d["classes"] for d in dts]), np.concatenate(gt_cls), nc)
        m.precision, m.recall = float(pr["mp"]), float(pr["mr"])
        m.pr = pr_counts(np.concatenate(tps), np.concatenate([d["scores"] for d in dts]), m.instances)
        m.speed_ms = {"pre": 1e3 * t_pre / n_img, "model": 1e3 * t_model / n_img, "post": 1e3 * t_post / n_img}
        if save_dir is not None:
            save_dir = Path(save_dir)
            save_dir.mkdir(parents=True, exist_ok=True)
            if save_json:
                # the source's own ids: a COCO json's image and category ids, or COCO's 91 ids for the 80-class layout
                rows = to_coco_results(dts, ids, getattr(getattr(loader, "dataset", None), "category_ids", None))
                p = save_dir / "predictions.json"
                p.write_text(json.dumps(rows))
                m.files["json"] = str(p)
            if plots:
                from yoloforge.utils.plots import plot_confusion_matrix, plot_pr_curve

                m.files["pr_curve"] = str(plot_pr_curve(pr["rx"], pr["py"], pr["ap50"], names, save_dir / "PR_curve.png"))
                m.files["confusion_matrix"] = str(plot_confusion_matrix(confusion.matrix, names,
                                                                        save_dir / "confusion_matrix.png"))
            (save_dir / "metrics.json").write_text(json.dumps(m.to_dict(), indent=1))
    return m


def evaluate_data(model, data: str | Path, imgsz: int, *, split: str = "val", batch: int = 16,
                  conf: float = VAL.conf, iou: float = VAL.iou, workers: int = 2, rect: bool = True,
                  device: str | torch.device = "cpu", save_json: bool = False, save_dir: str | Path | None = None,
                  plots: bool = False, verbose: bool = True) -> Metrics:
    """:func:`evaluate` on a split of a data yaml: ``model`` is a torch module or a runtime backend.

    ``rect``: rectangular batches (images grouped by aspect ratio, each batch letterboxed to its own
    stride-multiple rectangle with half a stride of margin) as the official test scripts evaluate, where the
    model takes any height/width (torch, runtimes exported with dynamic height/width); else square."""
    from yoloforge.data.dataset import DetectionDataset
    from yoloforge.data.formats import load_data_yaml
    from yoloforge.data.loader import build_dataloader
    from yoloforge.export.runtime import rect_stride

    cfg = load_data_yaml(data)
    source = getattr(cfg, split, None)
    if not source:
        raise ValueError(f"{data}: no {split!r} split")
    nc = getattr(model, "nc", None)
    if nc is None and getattr(model, "names", None) is not None:
        nc = len(model.names)
    if nc is not None and len(cfg.names) != nc:
        raise ValueError(f"{data} has {len(cfg.names)} classes but the model predicts {nc}")
    stride = rect_stride(model) if rect else None  # None: square (or a static-shape export)
    ds = DetectionDataset(source, cfg.names, imgsz=imgsz, augment=False, verbose=verbose, stride=stride or 32,
                          rect_batch=batch if stride else 0)
    loader = build_dataloader(ds, batch, workers, shuffle=False, seed=0)
    return evaluate(model, loader, cfg.names, conf=conf, iou=iou, device=device, save_dir=save_dir,
                    save_json=save_json, plots=plots, verbose=verbose)
