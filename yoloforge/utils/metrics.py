"""Detection metrics: COCO mAP (faster-coco-eval or pycocotools), COCO results json rows, confusion
matrix, and per-class precision / recall / F1 curves for plots.

All boxes are xyxy pixels of the *original* image (see ``utils.boxes.unletterbox_boxes``). Inputs may be
numpy arrays or torch tensors.

The mAP that yoloforge reports is always COCOeval's (101-point interpolated AP averaged over IoU
0.50:0.05:0.95, at most ``max_dets`` detections per image), computed from in-memory COCO dicts, so the
number printed during training is the number pycocotools gives for the saved json (USERS.md row 6).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from .boxes import box_iou

__all__ = ["coco_map", "to_coco_results", "coco80_to_91", "category_ids_for", "COCO_NAMES", "ConfusionMatrix", "match_predictions",
           "pr_curves", "ap_101"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _np(x, dtype=np.float64, shape_tail=None):
    """Tensor / list / None -> numpy array (empty with the right trailing shape for None)."""
    if x is None:
        return np.zeros((0,) + (shape_tail or ()), dtype=dtype)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=dtype)
    if shape_tail is not None and x.size == 0:
        x = x.reshape((0,) + shape_tail)
    return x


def _xywh(b: np.ndarray) -> np.ndarray:
    """xyxy -> COCO xywh in float64 (``boxes.xyxy2xywh`` works in float32, which would leak
    float32 noise such as 10.123000144958496 into the json)."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[:, :2], b[:, 2:4] - b[:, :2]], 1)


# the 80 COCO training classes in their usual contiguous order (ultralytics / yolov7 data/coco.yaml spelling)
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).replace("_", "~").split()
COCO_NAMES = [n.replace("~", " ") for n in COCO_NAMES]


def category_ids_for(names) -> list[int]:
    """Category id of each class index in a COCO results json: COCO's own 1..90 ids when ``names`` are the 80
    COCO classes (as the official test scripts map them), else the class index itself."""
    names = [str(n).strip().lower() for n in names]
    return coco80_to_91() if names == [n.lower() for n in COCO_NAMES] else list(range(len(names)))


def coco80_to_91() -> list[int]:
    """COCO category ids (1..90, with gaps) of the 80 contiguous training classes, in order."""
    missing = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    return [i for i in range(1, 91) if i not in missing]


def _cat_ids(nc: int, class_map) -> np.ndarray:
    if class_map is None:
        return np.arange(nc, dtype=np.int64)
    if isinstance(class_map, dict):
        return np.array([class_map[i] for i in range(nc)], dtype=np.int64)
    ids = np.asarray(class_map, dtype=np.int64)
    if len(ids) < nc:
        raise ValueError(f"class_map has {len(ids)} entries for {nc} classes")
    return ids[:nc]


def to_coco_results(dts, image_ids, class_map=None) -> list[dict]:
    """COCO results-json rows for ``dts`` (list per image of dict(boxes xyxy, scores, classes) or an
    (n, 6) array ``[x1, y1, x2, y2, score, cls]``).

    ``image_ids[i]`` is the COCO image id of ``dts[i]``; ``class_map`` maps class index -> category id
    (sequence or dict; e.g. :func:`coco80_to_91` for real COCO). Boxes are xywh rounded to 3 decimals,
    scores to 5.
    """
    rows = []
    cmap = None
    for det, img_id in zip(dts, image_ids):
        if det is None:
            continue
        if isinstance(det, dict):
            boxes = _np(det.get("boxes"), shape_tail=(4,))
            scores = _np(det.get("scores"))
            classes = _np(det.get("classes"), np.int64)
        else:
            d = _np(det, shape_tail=(6,))
            boxes, scores, classes = d[:, :4], d[:, 4], d[:, 5].astype(np.int64)
        if len(boxes) == 0:
            continue
        if class_map is None:
            cats = classes
        elif isinstance(class_map, dict):
            cats = np.array([class_map[int(c)] for c in classes], dtype=np.int64)
        else:
            cmap = np.asarray(class_map, dtype=np.int64) if cmap is None else cmap
            cats = cmap[classes]
        xywh = np.round(_xywh(boxes), 3).tolist()
        sc = np.round(scores.astype(np.float64), 5).tolist()
        iid = int(img_id) if isinstance(img_id, (int, np.integer)) else img_id
        rows.extend({"image_id": iid, "category_id": int(c), "bbox": b, "score": s}
                    for c, b, s in zip(cats.tolist(), xywh, sc))
    return rows


def _build_gt(gts, nc, names, cat_ids):
    """In-memory COCO ground-truth dict; returns it and the image ids."""
    images, anns, img_ids = [], [], []
    for i, g in enumerate(gts):
        img_id = g.get("image_id", i)
        img_ids.append(img_id)
        h, w = g.get("shape", (0, 0))[:2]
        images.append({"id": img_id, "height": int(h), "width": int(w),
                       "file_name": str(g.get("file_name", g.get("path", f"{img_id}")))})
        boxes = _np(g.get("boxes"), shape_tail=(4,))
        if len(boxes) == 0:
            continue
        classes = _np(g.get("classes"), np.int64)
        crowd = _np(g.get("iscrowd"), np.int64) if g.get("iscrowd") is not None else np.zeros(len(boxes), np.int64)
        xywh = _xywh(boxes)
        area = (xywh[:, 2] * xywh[:, 3]).tolist()
        cats = cat_ids[classes].tolist()
        start = len(anns) + 1  # ids must start at 1: COCOeval treats a matched id 0 as "unmatched"
        anns.extend({"id": start + k, "image_id": img_id, "category_id": c, "bbox": b, "area": a,
                     "iscrowd": int(cr)}
                    for k, (c, b, a, cr) in enumerate(zip(cats, xywh.tolist(), area, crowd.tolist())))
    cats = [{"id": int(c), "name": str(names[k]) if k < len(names) else str(k)} for k, c in enumerate(cat_ids)]
    return {"images": images, "annotations": anns, "categories": cats}, img_ids


def _build_dt(gt_dict, dts, img_ids, cat_ids):
    """In-memory COCO results dataset (what ``COCO.loadRes`` would build, without its empty-list quirks)."""
    dicts = []
    for d in dts:
        if d is None:
            dicts.append(None)
        elif isinstance(d, dict):
            dicts.append(d)
        else:
            a = _np(d, shape_tail=(6,))
            dicts.append({"boxes": a[:, :4], "scores": a[:, 4], "classes": a[:, 5]})
    rows = to_coco_results(dicts, img_ids, cat_ids)
    for k, r in enumerate(rows):
        x, y, w, h = r["bbox"]
        r.update(id=k + 1, area=w * h, iscrowd=0)
    return {"images": gt_dict["images"], "annotations": rows, "categories": gt_dict["categories"]}


def _run_cocoeval(gt_dict, dt_dict, backend, iou_type, max_dets):
    """Run COCOeval quietly; returns (precision array [T, R, K, A, M], stats, summary text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster
            cgt = COCO(gt_dict, print_function=print)  # dicts are built per call: no copies needed
            cdt = COCO(dt_dict, print_function=print)
            ev = COCOeval_faster(cgt, cdt, iouType=iou_type, print_function=print)
        elif backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            cgt, cdt = COCO(), COCO()
            cgt.dataset, cdt.dataset = gt_dict, dt_dict
            cgt.createIndex()
            cdt.createIndex()
            ev = COCOeval(cgt, cdt, iouType=iou_type)
        else:
            raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    summary = "\n".join(ln for ln in buf.getvalue().splitlines() if ln.lstrip().startswith("Average"))
    return np.asarray(ev.eval["precision"]), np.asarray(ev.stats[:12], dtype=np.float64), summary


def coco_map(gts, dts, names, backend: str = "faster", iou_type: str = "bbox", class_map=None,
             max_dets: int = 100) -> dict:
    """COCO-style evaluation of detections against ground truth, in memory.

    Args:
        gts: list per image of dict(``boxes`` (n, 4) xyxy original pixels, ``classes`` (n,) int,
            ``shape`` (h, w), optional ``image_id`` (default: list index), ``file_name``, ``iscrowd``).
        dts: list per image (same order as ``gts``) of dict(``boxes``, ``scores``, ``classes``), or an
            (n, 6) ``[x1, y1, x2, y2, score, cls]`` array/tensor, or None for no detections.
        names: class names; ``nc = len(names)``.
        backend: ``"faster"`` (faster-coco-eval, C++) or ``"pycocotools"``; they agree to 1e-4.
        iou_type: COCOeval iouType (only ``"bbox"`` is meaningful here).
        class_map: optional class index -> category id (sequence or dict). Only changes the ids used
            inside the COCO dicts; results are still reported per class index.
        max_dets: COCOeval's largest maxDets (100 is the COCO protocol).

    Returns:
        dict with ``map`` (AP50-95), ``map50``, ``map75``, ``map_small/medium/large``, ``mar_1/10/100``
        (recall at 1/10/max_dets dets), ``per_class_ap`` and ``per_class_ap50`` ((nc,) arrays, nan for
        classes without ground truth), ``per_class_instances`` (nc,) gt counts, ``stats`` (the 12 COCOeval
        numbers, -1 where undefined) and ``summary`` (COCOeval's 12-line table). With no ground truth at
        all every metric is nan.
    """
    nc = len(names)
    if len(dts) != len(gts):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dts)} detection entries")
    cat_ids = _cat_ids(nc, class_map)
    gt_dict, img_ids = _build_gt(gts, nc, names, cat_ids)
    if len(set(img_ids)) != len(img_ids):
        raise ValueError("image ids must be unique")
    gt_cls = [_np(g.get("classes"), np.int64).reshape(-1) for g in gts]
    instances = np.bincount(np.concatenate(gt_cls + [np.zeros(0, np.int64)]), minlength=nc)[:nc]
    out = {"per_class_instances": instances}
    nan_pc = np.full(nc, np.nan)
    if not gt_dict["annotations"]:
        out.update(map=np.nan, map50=np.nan, map75=np.nan, map_small=np.nan, map_medium=np.nan,
                   map_large=np.nan, mar_1=np.nan, mar_10=np.nan, mar_100=np.nan,
                   per_class_ap=nan_pc, per_class_ap50=nan_pc.copy(), stats=np.full(12, -1.0), summary="")
        return out
    dt_dict = _build_dt(gt_dict, dts, img_ids, cat_ids)
    precision, stats, summary = _run_cocoeval(gt_dict, dt_dict, backend, iou_type, max_dets)
    # precision: [T iou thresholds, R recall points, K categories (sorted ids), A area ranges, M maxDets]
    pa = precision[:, :, :, 0, -1]
    order = np.searchsorted(np.sort(cat_ids), cat_ids)  # class index -> position among sorted cat ids
    valid = pa > -1
    with np.errstate(invalid="ignore"):
        ap_t = np.where(valid.any(1), np.where(valid, pa, 0).sum(1) / np.maximum(valid.sum(1), 1), np.nan)  # (T, K)
    per_class = _nanmean0(ap_t)
    out.update(
        map=float(stats[0]), map50=float(stats[1]), map75=float(stats[2]), map_small=float(stats[3]),
        map_medium=float(stats[4]), map_large=float(stats[5]), mar_1=float(stats[6]), mar_10=float(stats[7]),
        mar_100=float(stats[8]), per_class_ap=per_class[order], per_class_ap50=ap_t[0][order],
        stats=stats, summary=summary)
    return out


def _nanmean0(a: np.ndarray) -> np.ndarray:
    """Column mean over axis 0 that returns nan (without a warning) for all-nan columns."""
    ok = ~np.isnan(a)
    cnt = ok.sum(0)
    return np.where(cnt > 0, np.where(ok, a, 0).sum(0) / np.maximum(cnt, 1), np.nan)


def _greedy_pairs(iou: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of (gt, det) pairs allowed by ``mask``, highest IoU first (vectorized:
    sort candidate pairs by IoU, keep the first pair of every detection, then of every gt)."""
    gi, di = np.nonzero(mask)
    if len(gi) == 0:
        return gi, di
    o = np.argsort(-iou[gi, di], kind="stable")
    gi, di = gi[o], di[o]
    _, first = np.unique(di, return_index=True)
    first.sort()
    gi, di = gi[first], di[first]
    _, first = np.unique(gi, return_index=True)
    first.sort()
    return gi[first], di[first]


def match_predictions(dets, gt_boxes, gt_classes, iouv=IOU_THRESHOLDS) -> np.ndarray:
    """Which detections are true positives at each IoU threshold.

    ``dets`` (n, 6) ``[x1, y1, x2, y2, score, cls]``, ``gt_boxes`` (m, 4), ``gt_classes`` (m,). A detection
    matches a gt of the same class with IoU >= threshold; each gt is matched at most once, best IoU first.
    Returns ``correct`` (n, len(iouv)) bool.
    """
    d = _np(dets, shape_tail=(6,))
    g = _np(gt_boxes, shape_tail=(4,))
    gc = _np(gt_classes, np.int64).reshape(-1)
    iouv = np.asarray(iouv, dtype=np.float64)
    correct = np.zeros((len(d), len(iouv)), dtype=bool)
    if len(d) == 0 or len(g) == 0:
        return correct
    iou = box_iou(g, d[:, :4])
    same = gc[:, None] == d[None, :, 5].astype(np.int64)
    for t, thr in enumerate(iouv):
        _, di = _greedy_pairs(iou, same & (iou >= thr))
        correct[di, t] = True
    return correct


class ConfusionMatrix:
    """Detection confusion matrix, ``matrix[pred, true]`` of shape (nc + 1, nc + 1); index ``nc`` is
    background (last row: missed gts, last column: detections on background).

    Detections below ``conf`` are ignored; a detection and a gt are paired (class-agnostically, best IoU
    first, one-to-one) when their IoU exceeds ``iou``.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou: float = 0.45):
        self.nc, self.conf, self.iou = nc, conf, iou
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def update(self, dets, gt_boxes, gt_classes) -> None:
        """Add one image: ``dets`` (n, 6) ``[x1, y1, x2, y2, score, cls]``, ``gt_boxes`` (m, 4), ``gt_classes`` (m,)."""
        d = _np(dets, shape_tail=(6,))
        d = d[d[:, 4] > self.conf]
        dc = d[:, 5].astype(np.int64)
        gc = _np(gt_classes, np.int64).reshape(-1)
        g = _np(gt_boxes, shape_tail=(4,))
        bg = self.nc
        if len(g) == 0:
            np.add.at(self.matrix, (dc, bg), 1)
            return
        if len(d) == 0:
            np.add.at(self.matrix, (bg, gc), 1)
            return
        iou = box_iou(g, d[:, :4])
        gi, di = _greedy_pairs(iou, iou > self.iou)
        np.add.at(self.matrix, (dc[di], gc[gi]), 1)
        missed = np.ones(len(g), bool)
        missed[gi] = False
        np.add.at(self.matrix, (bg, gc[missed]), 1)
        extra = np.ones(len(d), bool)
        extra[di] = False
        np.add.at(self.matrix, (dc[extra], bg), 1)

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true positives (diagonal) and false positives (row sum minus diagonal), background excluded."""
        tp = np.diag(self.matrix)[:-1]
        return tp, self.matrix[:-1].sum(1) - tp

    def normalized(self) -> np.ndarray:
        """Columns normalized to sum to 1 (fraction of each true class), zeros for empty columns."""
        m = self.matrix.astype(np.float64)
        return m / np.maximum(m.sum(0, keepdims=True), 1e-9)


def ap_101(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """COCO 101-point interpolated AP of one precision/recall curve (detections sorted by score).

    Returns (ap, recall points (101,), interpolated precision at those points)."""
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]  # precision envelope
    rthr = np.linspace(0, 1, 101)
    idx = np.searchsorted(rec, rthr, side="left")
    q = np.where(idx < len(prec), prec[np.minimum(idx, len(prec) - 1)] if len(prec) else 0.0, 0.0)
    return float(q.mean()), rthr, q


def pr_curves(tp, conf, pred_cls, target_cls, nc: int, eps: float = 1e-16, points: int = 1000) -> dict:
    """Per-class precision / recall / F1 as functions of the confidence threshold (for plots and the
    P/R columns of the validation table).

    Args:
        tp: (n,) or (n, T) bool -- true positive flags of all detections of a dataset (first column = IoU 0.5,
            e.g. from :func:`match_predictions`).
        conf: (n,) detection scores; pred_cls: (n,) detection classes; target_cls: (m,) classes of all gts.
        nc: number of classes.

    Returns:
        dict with ``px`` (points,) confidence axis, ``p_curve``, ``r_curve``, ``f1_curve`` (nc, points),
        ``rx`` (101,) recall axis and ``py`` (nc, 101) interpolated precision (the PR curve), ``ap50`` (nc,)
        (101-point, nan for classes without gt), ``best_conf`` (confidence maximizing the mean F1), ``p``,
        ``r``, ``f1`` (nc,) at that confidence, and their means ``mp``, ``mr`` over classes with gt.
    """
    tp = _np(tp, bool)
    tp = tp[:, 0] if tp.ndim == 2 else tp.reshape(-1)
    conf = _np(conf).reshape(-1)
    pred_cls = _np(pred_cls, np.int64).reshape(-1)
    n_gt = np.bincount(_np(target_cls, np.int64).reshape(-1), minlength=nc)[:nc]
    px = np.linspace(0, 1, points)
    p_curve, r_curve = np.zeros((nc, points)), np.zeros((nc, points))
    rx, py = np.linspace(0, 1, 101), np.zeros((nc, 101))
    ap50 = np.full(nc, np.nan)
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    for c in range(nc):
        sel = pred_cls == c
        if n_gt[c] == 0:
            continue
        ctp = np.cumsum(tp[sel])
        cfp = np.cumsum(~tp[sel])
        if len(ctp) == 0:
            ap50[c] = 0.0
            continue
        recall = ctp / (n_gt[c] + eps)
        precision = ctp / (ctp + cfp)
        # curves vs confidence: value at the lowest-scoring detection still above each threshold
        cs = conf[sel]
        k = np.searchsorted(-cs, -px, side="right") - 1  # last index with conf >= px
        ok = k >= 0
        r_curve[c, ok] = recall[k[ok]]
        p_curve[c] = np.where(ok, precision[np.maximum(k, 0)], 1.0)
        ap50[c], _, py[c] = ap_101(recall, precision)
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    has = n_gt > 0
    mean_f1 = f1_curve[has].mean(0) if has.any() else np.zeros(points)
    i = int(_smooth(mean_f1).argmax())
    p, r, f1 = p_curve[:, i].copy(), r_curve[:, i].copy(), f1_curve[:, i].copy()
    p[~has] = r[~has] = f1[~has] = 0.0
    return {"px": px, "p_curve": p_curve, "r_curve": r_curve, "f1_curve": f1_curve, "rx": rx, "py": py,
            "ap50": ap50, "best_conf": float(px[i]), "p": p, "r": r, "f1": f1,
            "mp": float(p[has].mean()) if has.any() else 0.0, "mr": float(r[has].mean()) if has.any() else 0.0,
            "n_gt": n_gt}


def _smooth(y: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Box filter of width ``frac * len(y)`` (odd) with edge padding."""
    nf = int(round(len(y) * frac * 2)) // 2 + 1
    pad = np.pad(y, nf // 2, mode="edge")
    return np.convolve(pad, np.ones(nf) / nf, mode="valid")
