"""The YOLOv6 paper's int8 ladder (sec. 2.5) on models trained on the demo data: ``yoloforge quantize --method
compare`` for each.

    python benchmarks/qat_compare.py [--models repvgg,repopt,yolov7-tiny] [--skip 3] [--epochs 10]
                                     [--runs DIR] [--out docs/qat]

Models (seed 0, trained on the demo data and cached under ``--runs``; a rerun continues):
  repvgg: yolov6n with its RepVGG blocks (the demo's model: the demo recipe, 26 epochs at 160);
  repopt: yolov6n trained by the RepOptimizer with the scales of a hyper-search run (RepOpt stage 1 then 2, the demo
    recipe each), the model the paper's QAT is meant for;
  yolov7-tiny: the anchor-based family (QAT + CWD distils its neck maps; YOLOv6 adds the official class/DFL terms),
    trained as benchmarks/train_vs_official.py trains it (its official preset, 80 epochs at 160, nominal batch 64,
    fp32): in the demo's 26 epochs it learns nothing (mAP50-95 0.03), which leaves its int8 rows nothing to lose;
  coco128-repvgg, coco128-repopt: yolov6n trained 300 epochs at 320 on coco128's train2017 images and scored on them
    (benchmarks/_common.py ``coco_model``; ultralytics' coco128.yaml convention), RepVGG and RepOpt.
Each gets the rows fp32, PTQ, PTQ + skip K by output error and by mAP drop, QAT, QAT + CWD: mAP50-95 / mAP50 on the
val split (coco128: train2017) through ONNX Runtime and OpenVINO, latency at batch 1 (median of 20). Writes ``results.csv``
(one row per model and method) to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from _common import DEMO, coco_fit_data, coco_model, demo_data, table, train_cached
from _common import demo_model as shared_demo_model

HERE = Path(__file__).resolve().parent
COLS = ["mAP50-95 onnxruntime", "mAP50 onnxruntime", "ms onnxruntime", "mAP50-95 openvino", "mAP50 openvino",
        "ms openvino"]


# benchmarks/train_vs_official.py's yoloforge side with ``--data demo --epochs 80 --imgsz 160``
V7_DEMO = dict(epochs=80, imgsz=160, batch=16, nbs=64, workers=1, val_interval=1, amp="off", plots=False,
               verbose=False, tensorboard=False)


def demo_model(runs: Path, data: Path, kind: str) -> Path:
    if kind == "repvgg":  # the demo's model, shared with the other benchmarks
        return shared_demo_model(0)
    if kind == "repopt":
        hs = train_cached(runs, "hyper_search_s0", data, 0, DEMO, training_mode="hyper_search")
        return train_cached(runs, "repopt_s0", data, 0, DEMO, training_mode="repopt", scales=str(hs))
    if kind == "yolov7-tiny":
        return train_cached(runs, "yolov7-tiny_80e_s0", data, 0, V7_DEMO, model=kind)
    return train_cached(runs, f"{kind}_s0", data, 0, DEMO, model=kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="repvgg,repopt,yolov7-tiny")
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10, help="QAT epochs (official: 10)")
    ap.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "yoloforge_qat_compare")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "qat")
    a = ap.parse_args()
    from yoloforge.quant.compare import compare

    a.out.mkdir(parents=True, exist_ok=True)
    data = demo_data(a.runs / "demo_data")
    out_csv = a.out / "results.csv"
    done = list(csv.DictReader(out_csv.open())) if out_csv.is_file() else []
    for kind in a.models.split(","):
        if kind.startswith("coco128-"):
            w, d = coco_model(kind.split("-", 1)[1]), coco_fit_data()
        else:
            w, d = demo_model(a.runs, data, kind), data
        rows = compare(w, d, out_dir=a.runs / f"compare_{kind}", skip=a.skip, epochs=a.epochs, verbose=False)
        done = [r for r in done if r["model"] != kind] + [
            {"model": kind, "method": r["model"], "kept in float": r["kept_in_float"], **{c: r.get(c, "") for c in COLS}}
            for r in rows]
        with out_csv.open("w", newline="") as f:  # after every model: a long run keeps what it measured
            wr = csv.DictWriter(f, ["model", "method", "kept in float", *COLS])
            wr.writeheader()
            wr.writerows(done)
        print(table(["model", "method", *COLS], [[r["model"], r["method"], *[r[c] for c in COLS]]
                                                 for r in done if r["model"] == kind]), flush=True)


if __name__ == "__main__":
    main()
