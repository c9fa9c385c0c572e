"""Plots and drawing: training curves, PR / metric curves, confusion matrix, label statistics,
annotated image grids, and the fast cv2 box drawer used by the predictor.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly (no ``pyplot``), so
nothing opens a window, no global backend is switched, and plotting is safe from worker threads.
Every ``plot_*`` function writes a PNG and returns its :class:`~pathlib.Path`.
"""
from __future__ import annotations

import colorsys
import csv
import math
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["colors", "draw_detections", "plot_image_grid", "plot_results", "plot_pr_curve", "plot_mc_curve",
           "plot_confusion_matrix", "plot_labels", "plot_sensitivity"]


def _palette(n: int = 32) -> np.ndarray:
    """``n`` well-separated, saturated RGB colours (golden-ratio hue steps, alternating brightness)."""
    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s, v = (0.85, 0.95) if i % 2 == 0 else (0.65, 0.8)
        out.append([round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.array(out, dtype=np.uint8)


_PALETTE = _palette()


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class ``i`` as an int tuple (RGB, or BGR for cv2)."""
    c = _PALETTE[int(i) % len(_PALETTE)]
    return tuple(int(x) for x in (c[::-1] if bgr else c))


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _name(names, c: int) -> str:
    if names is None:
        return str(c)
    if isinstance(names, dict):
        return str(names.get(c, c))
    return str(names[c]) if 0 <= c < len(names) else str(c)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path


def draw_detections(img_bgr: np.ndarray, boxes, scores=None, classes=None, names=None, line_width: int | None = None,
                    copy: bool = True, labels: bool = True) -> np.ndarray:
    """Draw class-coloured xyxy ``boxes`` with ``"name score"`` labels on a BGR uint8 image (cv2).

    Returns the annotated image (a copy unless ``copy=False``). ``scores`` / ``classes`` may be None.
    """
    img = np.ascontiguousarray(img_bgr).copy() if copy else img_bgr
    b = _np(boxes)
    if b is None or len(b) == 0:
        return img
    b = np.round(b.astype(np.float64)).astype(np.int64).reshape(-1, 4)
    cls = np.zeros(len(b), np.int64) if classes is None else _np(classes).astype(np.int64).reshape(-1)
    sc = None if scores is None else _np(scores).astype(np.float64).reshape(-1)
    h, w = img.shape[:2]
    lw = line_width or max(round((h + w) / 2 * 0.003), 1)
    fs = max(lw / 3, 0.35)
    ft = max(lw - 1, 1)
    for k, (x1, y1, x2, y2) in enumerate(b.tolist()):
        col = colors(cls[k], bgr=True)
        cv2.rectangle(img, (x1, y1), (x2, y2), col, lw, cv2.LINE_AA)
        if not labels:
            continue
        text = _name(names, int(cls[k])) + ("" if sc is None else f" {sc[k]:.2f}")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, ft)
        outside = y1 - th - base >= 0
        ty = y1 - base if outside else y1 + th + base
        top = (x1, y1 - th - base) if outside else (x1, y1)
        cv2.rectangle(img, top, (x1 + tw, top[1] + th + base), col, -1, cv2.LINE_AA)
        fg = (0, 0, 0) if sum(col) > 450 else (255, 255, 255)
        cv2.putText(img, text, (x1, ty), cv2.FONT_HERSHEY_SIMPLEX, fs, fg, ft, cv2.LINE_AA)
    return img


def plot_image_grid(imgs, dets=None, targets=None, names=None, path="images.png", max_images: int = 16,
                    conf: float = 0.25, paths=None, max_size: int = 1920) -> Path:
    """Mosaic of up to ``max_images`` images with boxes drawn, saved as ``path``.

    ``imgs``: (B, 3, H, W) RGB, uint8 (or float in [0, 1]), tensor or array. Either ``dets`` (list of (n, 6)
    ``[x1, y1, x2, y2, score, cls]``, drawn when score > ``conf``) or ``targets`` ((M, 6)
    ``[batch_idx, cls, x1, y1, x2, y2]``, drawn without scores). ``paths`` optionally labels each tile.
    """
    x = _np(imgs)
    if x.dtype != np.uint8:  # float images: [0, 1] or [0, 255]
        xf = x.astype(np.float32)
        x = np.clip(xf * 255 if xf.size and xf.max() <= 1.0 else xf, 0, 255).astype(np.uint8)
    n = min(len(x), max_images)
    _, _, h, w = x.shape
    ns = math.ceil(math.sqrt(max(n, 1)))
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = max(int(h * scale), 1), max(int(w * scale), 1)
    canvas = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    t = _np(targets)
    for i in range(n):
        tile = np.ascontiguousarray(x[i].transpose(1, 2, 0)[..., ::-1])  # RGB CHW -> BGR HWC
        if scale != 1.0:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        if dets is not None and i < len(dets):
            d = _np(dets[i]).reshape(-1, 6)
            d = d[d[:, 4] > conf]
            tile = draw_detections(tile, d[:, :4] * scale, d[:, 4], d[:, 5], names, copy=False)
        if t is not None and len(t):
            ti = t[t[:, 0] == i]
            tile = draw_detections(tile, ti[:, 2:6] * scale, None, ti[:, 1], names, copy=False)
        if paths is not None and i < len(paths):
            cv2.putText(tile, Path(str(paths[i])).name[:40], (5, th - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (220, 220, 220), 1, cv2.LINE_AA)
        r, c = divmod(i, ns)
        canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
        cv2.rectangle(canvas, (c * tw, r * th), ((c + 1) * tw - 1, (r + 1) * th - 1), (255, 255, 255), 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")
    return path


def _read_csv(csv_path) -> tuple[list[str], np.ndarray]:
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{csv_path} is empty")
    header = [h.strip() for h in rows[0]]

    def num(v):
        try:
            return float(v)
        except ValueError:
            return np.nan
    data = np.array([[num(v) for v in r[:len(header)]] + [np.nan] * (len(header) - len(r)) for r in rows[1:]],
                    dtype=np.float64).reshape(-1, len(header))
    return header, data


def plot_results(csv_path, path=None) -> Path:
    """Plot every column of a training ``results.csv`` (header row: ``epoch``, ``train/<loss>``...,
    val losses and metrics, lr...) against the epoch; saves ``results.png`` beside the csv by default."""
    csv_path = Path(csv_path)
    header, data = _read_csv(csv_path)
    if "epoch" in header:
        xi = header.index("epoch")
        xs, cols = data[:, xi], [i for i in range(len(header)) if i != xi]
    else:
        xs, cols = np.arange(len(data), dtype=np.float64), list(range(len(header)))
    ncol = min(5, max(len(cols), 1))
    nrow = max(math.ceil(len(cols) / ncol), 1)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow), dpi=100, tight_layout=True)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, i in zip(axes, cols):
        y = data[:, i]
        ok = np.isfinite(y)
        ax.plot(xs[ok], y[ok], marker=".", lw=1.5, ms=4, label="results")
        if ok.sum() >= 5:  # light smoothing helps reading noisy losses
            k = max(ok.sum() // 10, 2)
            sm = np.convolve(np.pad(y[ok], k // 2, mode="edge"), np.ones(k) / k, mode="valid")[:ok.sum()]
            ax.plot(xs[ok], sm, ":", lw=1.5, label="smooth")
        ax.set_title(header[i], fontsize=10)
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    return _save(fig, path or csv_path.with_name("results.png"))


def plot_pr_curve(px, py, ap, names, path="PR_curve.png") -> Path:
    """Precision-recall curve per class (``px`` recall axis, ``py`` (nc, len(px)) precision, ``ap`` (nc,)
    or (nc, T) AP50 in column 0) and their mean over classes with a finite AP."""
    px, py = np.asarray(px), np.asarray(py)
    ap = np.asarray(ap, dtype=np.float64)
    ap = ap[:, 0] if ap.ndim == 2 else ap
    valid = np.isfinite(ap)
    fig = Figure(figsize=(9, 6), dpi=100, tight_layout=True)
    ax = fig.subplots()
    few = valid.sum() < 21
    for c in np.nonzero(valid)[0]:
        ax.plot(px, py[c], lw=1, color=np.array(colors(c)) / 255,
                label=f"{_name(names, int(c))} {ap[c]:.3f}" if few else None)
    if valid.any():
        ax.plot(px, py[valid].mean(0), lw=3, color="blue", label=f"all classes {ap[valid].mean():.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-Recall Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_mc_curve(px, py, names, path="F1_curve.png", xlabel="Confidence", ylabel="F1", valid=None) -> Path:
    """Metric-vs-confidence curves per class (e.g. ``pr_curves()['f1_curve']``) and their mean."""
    px, py = np.asarray(px), np.asarray(py)
    valid = np.ones(len(py), bool) if valid is None else np.asarray(valid, bool)
    fig = Figure(figsize=(9, 6), dpi=100, tight_layout=True)
    ax = fig.subplots()
    few = valid.sum() < 21
    for c in np.nonzero(valid)[0]:
        ax.plot(px, py[c], lw=1, color=np.array(colors(c)) / 255, label=_name(names, int(c)) if few else None)
    if valid.any():
        y = py[valid].mean(0)
        i = int(y.argmax())
        ax.plot(px, y, lw=3, color="blue", label=f"all classes {y[i]:.2f} at {px[i]:.3f}")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=f"{ylabel}-Confidence Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_confusion_matrix(matrix, names, path="confusion_matrix.png", normalize: bool = True) -> Path:
    """Heat map of an (nc + 1, nc + 1) ``matrix[pred, true]`` (last row / column = background);
    ``normalize`` divides each column by its sum (fraction of each true class)."""
    m = np.asarray(matrix, dtype=np.float64)
    if normalize:
        m = m / np.maximum(m.sum(0, keepdims=True), 1e-9)
    n = len(m)
    labels = [_name(names, i) for i in range(n - 1)] + ["background"]
    size = min(max(6.0, 0.45 * n + 3), 24)
    fig = Figure(figsize=(size, size * 0.85), dpi=100, tight_layout=True)
    ax = fig.subplots()
    shown = np.where(m < 0.005, np.nan, m) if normalize else m
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n < 30:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        top = 1.0 if normalize else max(float(m.max()), 1.0)
        for (i, j), v in np.ndenumerate(m):
            if v > (0.005 if normalize else 0):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.5 * top else "black")
    ax.set(xlabel="True", ylabel="Predicted",
           title="Confusion Matrix" + (" (normalized by true class)" if normalize else ""))
    return _save(fig, path)


def plot_labels(labels, shapes, names, path="labels.png") -> Path:
    """Dataset label statistics: instances per class, box centres, box width vs height (normalized by the
    image size), and the boxes themselves overlaid at a common centre.

    ``labels``: list per image of (n, 5) ``[cls, x1, y1, x2, y2]`` pixels; ``shapes``: (h, w) per image.
    """
    parts = []
    for lab, shp in zip(labels, shapes):
        lab = _np(lab).reshape(-1, 5).astype(np.float64)
        if len(lab):
            h, w = float(shp[0]), float(shp[1])
            parts.append(np.column_stack([lab[:, 0], (lab[:, 1] + lab[:, 3]) / 2 / w, (lab[:, 2] + lab[:, 4]) / 2 / h,
                                          (lab[:, 3] - lab[:, 1]) / w, (lab[:, 4] - lab[:, 2]) / h]))
    a = np.concatenate(parts) if parts else np.zeros((0, 5))
    nc = len(names) if names is not None else (int(a[:, 0].max()) + 1 if len(a) else 1)
    counts = np.bincount(a[:, 0].astype(np.int64), minlength=nc)[:nc] if len(a) else np.zeros(nc, np.int64)
    fig = Figure(figsize=(10, 10), dpi=100, tight_layout=True)
    ax = fig.subplots(2, 2).ravel()
    ax[0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set(ylabel="instances", title=f"{len(a)} instances, {len(labels)} images")
    if nc < 30:
        ax[0].set_xticks(range(nc), [_name(names, i) for i in range(nc)], rotation=90, fontsize=8)
    if len(a):
        ax[1].hist2d(a[:, 1], a[:, 2], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        ax[2].hist2d(a[:, 3], a[:, 4], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        sub = a[np.linspace(0, len(a) - 1, min(len(a), 1000)).astype(np.int64)]
        canvas = np.full((500, 500, 3), 255, np.uint8)
        for c, _, _, bw, bh in sub:
            x1, y1 = int(250 - bw * 250), int(250 - bh * 250)
            x2, y2 = int(250 + bw * 250), int(250 + bh * 250)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colors(int(c)), 1)
        ax[3].imshow(canvas)
    ax[1].set(xlabel="x", ylabel="y", title="box centres", xlim=(0, 1), ylim=(1, 0))
    ax[2].set(xlabel="width", ylabel="height", title="box sizes", xlim=(0, 1), ylim=(0, 1))
    ax[3].set(title="boxes (common centre)")
    ax[3].axis("off")
    return _save(fig, path)


def plot_sensitivity(layers, values, path="sensitivity.png", top: int = 30,
                     xlabel: str = "relative output error when quantized alone (scores + boxes)") -> Path:
    """Horizontal bars of the ``top`` most int8-sensitive layers (most sensitive first)."""
    layers, values = list(layers)[:top], np.asarray(values, dtype=np.float64)[:top]
    fig = Figure(figsize=(9, 0.25 * len(layers) + 1.2), dpi=100, tight_layout=True)
    ax = fig.subplots()
    y = np.arange(len(layers))[::-1]
    ax.barh(y, values, color="tab:red")
    ax.set_yticks(y, layers, fontsize=7)
    ax.set(xlabel=xlabel, title=f"int8 sensitivity per layer (top {len(layers)})")
    return _save(fig, path)
