"""Augmented training samples of yoloforge vs the official yolov7 loader, side by side.

    python benchmarks/augment_vs_official.py --official-python OFFVENV/bin/python --yolov7-repo YOLOV7 \\
        [--data demo|DATA.yaml] [--imgsz 160] [--epochs 6] [--seed 0]

Both sides draw ``--epochs`` x (every train image) augmented samples with hyp.scratch.tiny (yoloforge: the ``tiny``
preset, which equals it): the official ``utils.datasets.LoadImagesAndLabels`` (augment=True, rect off) in the
official venv, and yoloforge's ``DetectionDataset``. Their random streams differ, so the samples are compared as
distributions: boxes per sample, box width / height percentiles, the share of tiny boxes, class shares, the
image's mean per channel. A loader that drops, shrinks or recolours differently shows up here even where each
transform has its own parity test. The official code runs unmodified from its checkout (never committed).
``--data demo`` writes the demo's generated data set (400 / 100 images at 160) to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def collect(mode: str, train: str, imgsz: int, epochs: int, seed: int, repo: str = "", names=()) -> dict:
    """Run inside the process of ``mode``'s side: (boxes per sample, [cls, w, h] per box, RGB mean per sample)."""
    import random

    import torch

    counts, boxes, means = [], [], []
    if mode == "official":
        sys.path.insert(0, repo)
        import yaml
        from utils.datasets import LoadImagesAndLabels

        hyp = yaml.safe_load(open(Path(repo) / "data" / "hyp.scratch.tiny.yaml"))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        ds = LoadImagesAndLabels(train, imgsz, 16, augment=True, hyp=hyp, rect=False, stride=32, pad=0.0, prefix="")
        for _ in range(epochs):
            for i in range(len(ds)):
                img, lab = ds[i][:2]
                lab = lab.numpy()
                counts.append(len(lab))
                boxes.append(np.c_[lab[:, 1], lab[:, 4:6] * imgsz])  # normalized xywh -> pixels
                means.append(img.float().mean((1, 2)).tolist())
    else:
        sys.path.insert(0, str(HERE.parent))
        from yoloforge.config import load_hyp
        from yoloforge.data.dataset import DetectionDataset

        ds = DetectionDataset(train, list(names), imgsz=imgsz, augment=True, hyp=load_hyp("tiny", "yolov7-tiny"), seed=seed,
                              verbose=False)
        for e in range(epochs):
            for i in range(len(ds)):
                img, lab, _ = ds[(i, e, True, True)]
                lab = lab.numpy()  # cls, x1, y1, x2, y2 pixels
                counts.append(len(lab))
                boxes.append(np.c_[lab[:, 0], lab[:, 3:5] - lab[:, 1:3]])
                means.append(img.float().mean((1, 2)).tolist())
    b = np.concatenate(boxes)
    return {"counts": counts, "boxes": b.tolist(), "means": means}


def stats(d: dict, nc: int) -> dict[str, float]:
    b, counts, means = np.array(d["boxes"]), np.array(d["counts"]), np.array(d["means"])
    side = b[:, 1:].reshape(-1)
    out = {"samples": len(counts), "boxes per sample": counts.mean(), "samples without a box": (counts == 0).mean()}
    for q in (10, 50, 90):
        out[f"box side p{q} (px)"] = float(np.percentile(side, q))
    out["boxes under 8 px"] = float((b[:, 1:].min(1) < 8).mean())
    out["box aspect w/h median"] = float(np.median(b[:, 1] / np.maximum(b[:, 2], 1e-6)))
    for c, share in enumerate(np.bincount(b[:, 0].astype(int), minlength=nc) / max(len(b), 1)):
        out[f"class {c} share"] = float(share)
    for k, ch in enumerate("RGB"):
        out[f"image mean {ch}"] = float(means[:, k].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-python", required=False, default="")
    ap.add_argument("--yolov7-repo", default="")
    ap.add_argument("--data", default="demo", help="'demo' or a data yaml whose 'train' is an image folder")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--collect", default="", help=argparse.SUPPRESS)  # internal: official|yoloforge, one side
    ap.add_argument("--train", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--names", default="[]", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.collect:  # one side, in its own interpreter
        Path(a.out).write_text(json.dumps(collect(a.collect, a.train, a.imgsz, a.epochs, a.seed, a.yolov7_repo,
                                                  json.loads(a.names))))
        return
    if not (a.official_python and a.yolov7_repo):
        raise SystemExit("--official-python and --yolov7-repo are needed (see the module docstring)")
    sys.path.insert(0, str(HERE.parent))
    from yoloforge.data.formats import load_data_yaml

    tmp = Path(tempfile.mkdtemp(prefix="aug_vs_official_"))
    if a.data == "demo":
        from yoloforge.data.synthetic import make_shapes_dataset

        data = Path(make_shapes_dataset(tmp / "demo", n_train=400, n_val=100, imgsz=160, seed=0))
    else:
        data = Path(a.data)
    d = load_data_yaml(str(data))
    train, nc = str(d.train[0] if isinstance(d.train, list) else d.train), len(d.names)
    sides = {}
    for mode, py, env in (("official", a.official_python, {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
                          ("yoloforge", sys.executable, {})):
        out = tmp / f"{mode}.json"
        subprocess.run([py, str(Path(__file__).resolve()), "--collect", mode, "--train", train, "--out", str(out),
                        "--imgsz", str(a.imgsz), "--epochs", str(a.epochs), "--seed", str(a.seed),
                        "--yolov7-repo", str(Path(a.yolov7_repo).resolve()), "--names", json.dumps(list(d.names))],
                       check=True, cwd=a.yolov7_repo if mode == "official" else None, env={**os.environ, **env})
        sides[mode] = stats(json.loads(out.read_text()), nc)
    from _common import table

    rows = [[k, sides["official"][k], sides["yoloforge"][k],
             sides["yoloforge"][k] / sides["official"][k] if sides["official"][k] else float("nan")]
            for k in sides["official"]]
    print(f"\naugmented training samples, hyp.scratch.tiny, {a.epochs} epochs of {train} at {a.imgsz}\n")
    print(table(["statistic", "official yolov7", "yoloforge", "ratio"], rows))


if __name__ == "__main__":
    main()
