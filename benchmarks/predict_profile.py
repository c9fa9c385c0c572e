"""Where the time of one ``yoloforge predict`` goes: read, pre, model, post, per image.

    python benchmarks/predict_profile.py [--source ../shared/data/coco128/images/val2017] [--imgsz 640]
                                         [--weights W.safetensors] [--rounds 2]

Runs the real :class:`~yoloforge.engine.predictor.Predictor` batch path (``Predictor._run_batch``, which
times pre / model / post itself) over every image, with ``cv2.imread`` timed around it as "read".
Two predictors, the fused torch model and ``backend="auto"`` (the fastest installed CPU runtime),
take turns image by image, so noise hits both alike. The first pass is a warm-up. Findings: PROFILE.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from _common import table

from yoloforge.api import Detector
from yoloforge.engine.predictor import IMG_EXT

STAGES = ("read", "pre", "model", "post")


def profile(det: Detector, files: list[Path], imgsz: int, rounds: int) -> dict:
    """{backend name: {stage: [ms per image]}, ...} plus the end-to-end wall time per image."""
    preds = {"torch (fused)": det.predictor(imgsz=imgsz, backend="torch"),
             "auto": det.predictor(imgsz=imgsz, backend="auto")}
    auto_kind = getattr(preds["auto"].model, "kind", "torch")
    preds[f"auto ({auto_kind})"] = preds.pop("auto")
    out = {k: {s: [] for s in STAGES + ("total",)} for k in preds}
    for r in range(rounds + 1):
        for i, f in enumerate(files):
            order = list(preds) if (i + r) % 2 == 0 else list(preds)[::-1]
            for k in order:
                t0 = time.perf_counter()
                img = cv2.imread(str(f))
                t1 = time.perf_counter()
                res = preds[k]._run_batch([(str(f), img, None)])[0]
                t2 = time.perf_counter()
                if r == 0:
                    continue  # warm-up pass
                d = out[k]
                d["read"].append(1e3 * (t1 - t0))
                for s in ("pre", "model", "post"):
                    d[s].append(res.speed_ms[s])
                d["total"].append(1e3 * (t2 - t0))
    return out


def report(out: dict) -> str:
    rows = []
    for k, d in out.items():
        med = {s: statistics.median(v) for s, v in d.items()}
        mean = {s: statistics.fmean(v) for s, v in d.items()}
        rows.append([k] + [f"{med[s]:.1f} ({100 * mean[s] / mean['total']:.0f}%)" for s in STAGES]
                    + [f"{med['total']:.1f}", f"{1e3 / mean['total']:.1f}"])
    return table(["backend", *(f"{s} ms (share)" for s in STAGES), "total ms", "img/s"], rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
                                            / "images" / "val2017"))  # ../shared beside the repo
    ap.add_argument("--weights", default=None, help="default: an untrained yolov6n saved to a temp dir")
    ap.add_argument("--model", default="yolov6n")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=1, help="measured passes over the images (after one warm-up)")
    a = ap.parse_args()
    files = sorted(p for p in Path(a.source).rglob("*") if p.suffix.lower() in IMG_EXT)
    if a.weights:
        det = Detector(a.weights)
    else:
        det = Detector(a.model)
        det.meta["imgsz"] = a.imgsz
        det.weights = det.save(Path(tempfile.mkdtemp(prefix="yoloforge-profile-")) / f"{a.model}.safetensors")
    t = os.getloadavg()
    out = profile(det, files, a.imgsz, a.rounds)
    print(f"{len(files)} images from {a.source}, imgsz {a.imgsz}, {a.rounds} measured pass(es), torch "
          f"{torch.get_num_threads()} threads; load average {t[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          "shares are of the mean total")
    print(report(out))


if __name__ == "__main__":
    main()
