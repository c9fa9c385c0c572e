"""Bag-of-freebies ablation: mAP with each YOLOv4 switch on vs off, same data, epochs and seed.

    python benchmarks/bof_ablation.py [--model yolov4-tiny] [--data shapes|path/to/data.yaml] [--epochs 10]
                                      [--imgsz 160] [--switches all] [--seed 0]

Every row trains from the same initialization (seed) for the same number of epochs; only the named
switch differs from the baseline. Numbers at this scale are noisy: the table is reported as it comes,
including switches that do not help.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import shapes_data, table

from yoloforge import Detector
from yoloforge.config import TrainConfig
from yoloforge.engine.trainer import Trainer

# name -> (hyp overrides, model build options)
SWITCHES = {
    "baseline (mosaic on, CIoU)": ({}, {}),
    "mosaic off": ({"mosaic": 0.0}, {}),
    "mixup 0.5": ({"mixup": 0.5}, {}),
    "cutmix 0.5": ({"cutmix": 0.5}, {}),
    "label smoothing 0.1": ({"label_smoothing": 0.1}, {}),
    "DIoU loss": ({"iou_loss": "diou"}, {}),
    "GIoU loss": ({"iou_loss": "giou"}, {}),
    "linear LR (cosine off)": ({"cos_lr": False}, {}),
    "multi-scale": ({"multi_scale": True}, {}),
    "SAT eps 0.02": ({"sat_eps": 0.02}, {}),
    "CmBN": ({"cmbn": True}, {}),
    "DropBlock 0.1": ({}, {"dropblock": 0.1}),
    "SAM": ({}, {"sam": True}),
}


def run(name: str, hyp: dict, kw: dict, a, data: Path, project: Path) -> list:
    cfg = TrainConfig(model=a.model, model_kw=kw, data=str(data), epochs=a.epochs, imgsz=a.imgsz, batch=a.batch,
                      nbs=a.batch, workers=a.workers, project=str(project), name="run", exist_ok=True, seed=a.seed,
                      plots=False, verbose=False, close_mosaic=max(a.epochs // 5, 1), val_interval=a.epochs,
                      hyp_override=dict({"warmup_epochs": 1.0}, **hyp))
    t = time.time()
    best = Trainer(cfg).train()
    m = Detector(str(best)).val(str(data), imgsz=a.imgsz, workers=a.workers, verbose=False)
    return [name, m.map50, m.map, time.time() - t]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="yolov4-tiny")
    ap.add_argument("--data", default="shapes", help="'shapes' (generated) or a data yaml")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--switches", default="all", help="comma-separated names (prefixes) or 'all'")
    ap.add_argument("--seed", type=int, default=0, help="rerun the baseline with other seeds to see the noise")
    a = ap.parse_args()
    data = shapes_data(n_train=200, n_val=50, imgsz=a.imgsz) if a.data == "shapes" else Path(a.data)
    names = list(SWITCHES) if a.switches == "all" else [n for n in SWITCHES
                                                        if any(n.startswith(p) for p in a.switches.split(","))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            hyp, kw = SWITCHES[name]
            rows.append(run(name, hyp, kw, a, data, Path(tmp) / str(i)))
            print(table(["switch", "mAP50", "mAP50-95", "seconds"], rows[-1:]), flush=True)
    base = rows[0][1:3] if names and names[0].startswith("baseline") else None
    out = [r + ([r[1] - base[0], r[2] - base[1]] if base else []) for r in rows]
    print(f"\n{a.model}, {a.epochs} epochs at {a.imgsz}, seed {a.seed}, data {a.data}")
    print(table(["switch", "mAP50", "mAP50-95", "seconds"] + (["d mAP50", "d mAP50-95"] if base else []), out))


if __name__ == "__main__":
    main()
