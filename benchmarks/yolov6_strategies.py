"""YOLOv6's training strategies measured: RepOpt vs RepVGG (fp32 and int8 mAP, per-layer ranges) and
self-distillation vs none, at equal epochs, on the demo data and on coco128.

    python benchmarks/yolov6_strategies.py [--parts demo,coco] [--seeds 0,1] [--coco-student-epochs 40]
                                           [--runs DIR] [--out docs/yolov6_strategies]

demo: the data and settings of ``yoloforge demo`` (generated shapes, 400 / 100 images at 160, 26 epochs,
batch 16, ``--hyp small-data``), yolov6n from scratch:
  repvgg (the default blocks), hyper_search (RepOpt stage 1), repopt with stage 1's scales (stage 2), and the
  repvgg model distilled from the seed-0 repvgg model (``--teacher``), each with every seed, and a control: seed 0
  distilled from an untrained yolov6n (what the distillation terms do without knowledge in them); the seed-0 repvgg
  and repopt models are quantized by ``yoloforge quantize`` (PTQ, ONNX Runtime int8, 64 calibration images).
coco: ../shared/data/coco128 at 320 (benchmarks/_common.py ``coco_model``): trained from scratch on its 128 train2017
  images and scored on the same images (ultralytics' coco128.yaml convention; the val2017 images are scored too,
  where a model that saw 128 images stays near 0). The demo's settings otherwise (batch 16, nbs 16, small-data),
  bf16, channels_last. 300 epochs for repvgg, hyper_search and repopt (stage 2 with the hyper-search run's scales),
  seed 0; then ``--coco-student-epochs`` (40) for the self-distillation pair: a yolov6n student without and with
  the 300-epoch repvgg model as its teacher, every seed; int8 of the repvgg and repopt models.
A finished run under ``--runs`` (coco: the shared coco128 cache) is not trained again, a stopped one continues.
Writes results_demo.csv / results_coco128.csv (one row per run; coco128's with the val2017 figures too) and
ranges_demo.png / ranges_coco128.png (per-layer input range and weight range of every fused convolution of the
seed-0 repvgg and repopt models) to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
from _common import COCO128, COCO_MODELS, DEMO, coco_fit_data, coco_model, coco_settings, finish_figure, table
from _common import demo_data as make_demo_data
from _common import train_cached as train

from yoloforge.api import Detector

HERE = Path(__file__).resolve().parent
def untrained_teacher(runs: Path, data: Path) -> Path:
    """An untrained yolov6n (seed 123) saved as weights: the control teacher."""
    import torch

    from yoloforge.data.formats import load_data_yaml
    from yoloforge.families.registry import build_model
    from yoloforge.utils.checkpoint import save_weights

    path = runs / "untrained_teacher.safetensors"
    if not path.is_file():
        torch.manual_seed(123)
        names = list(load_data_yaml(data).names)
        m = build_model("yolov6n", nc=len(names))
        save_weights(path, m, {"model": m.name, "build_kwargs": m.build_kwargs, "names": names, "imgsz": 160})
    return path


def fp32_map(weights: Path, data: Path, imgsz: int) -> tuple[float, float]:
    m = Detector(str(weights)).val(str(data), imgsz=imgsz, verbose=False)
    return m.map, m.map50


def int8_map(weights: Path, data: Path, imgsz: int) -> tuple[float, float]:
    from yoloforge.quant.ptq import quantize

    out = weights.parent / "int8"
    rep = quantize(weights, data, out_dir=out, imgsz=imgsz, n_calib=64, sensitivity=False, openvino=False,
                   verbose=False)
    return tuple(rep.map["int8-onnxruntime"])


def ranges(weights: Path, data: Path, imgsz: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per fused convolution: max |input| over 32 calibration images, and max |weight|."""
    from yoloforge.quant.ptq import calibration_batches
    from yoloforge.quant.sensitivity import conv_layers, input_ranges

    det = Detector(str(weights))
    model = det._deploy_model().cpu()
    batches = calibration_batches(data, imgsz, 32, verbose=False)
    r = input_ranges(model, batches)
    convs = conv_layers(model)
    names = list(convs)
    act = np.array([max(abs(r[n][0]), abs(r[n][1])) for n in names])
    wmax = np.array([float(convs[n].weight.detach().abs().max()) for n in names])
    return names, act, wmax


def plot_ranges(out: Path, series: dict[str, tuple[list[str], np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for label, (names, act, wmax) in series.items():
        axes[0].semilogy(act, ".-", label=label)
        axes[1].semilogy(wmax, ".-", label=label)
    axes[0].set_ylabel("max |input| (calibration)")
    axes[1].set_ylabel("max |weight|")
    axes[1].set_xlabel("fused convolution (network order)")
    axes[0].set_title("per-layer ranges of the fused models: what int8 has to cover")
    finish_figure(fig, axes, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="demo,coco")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--coco-student-epochs", type=int, default=40)
    ap.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "yoloforge_strategies")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "yolov6_strategies")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    head = ["data", "run", "seed", "mAP50-95", "mAP50", "int8 mAP50-95", "int8 mAP50"]

    def report(part: str, runs: dict, data: Path, imgsz: int, also: Path | None = None) -> None:
        """fp32 mAP of every run, int8 of the seed-0 repvgg / repopt ones; results_<part>.csv, ranges_<part>.png.
        ``also``: a second data yaml whose val split is scored too (fp32), in two more columns."""
        rows = []
        for (kind, s), w in sorted(runs.items()):
            q = int8_map(w, data, imgsz) if s == 0 and kind in ("repvgg", "repopt") else ("", "")
            more = fp32_map(w, also, imgsz) if also else ()
            rows.append([part, kind, s, *fp32_map(w, data, imgsz), *q, *more])
            print(rows[-1], flush=True)
        cols = head + (["val2017 mAP50-95", "val2017 mAP50"] if also else [])
        with open(a.out / f"results_{part}.csv", "w", newline="") as f:
            csv.writer(f).writerows([cols] + rows)
        print(table(cols, [r[:3] + [f"{v:.4f}" if isinstance(v, float) else v for v in r[3:]] for r in rows]))
        plot_ranges(a.out / f"ranges_{part}.png", {k: ranges(runs[(k, 0)], data, imgsz) for k in ("repvgg", "repopt")})

    if "demo" in a.parts:
        demo_runs = a.runs / "demo"
        demo_data = make_demo_data(a.runs / "demo_data")
        hs = train(demo_runs, "hyper_search_s0", demo_data, 0, DEMO, training_mode="hyper_search")
        demo = {}
        for s in seeds:
            demo[("repvgg", s)] = train(demo_runs, f"repvgg_s{s}", demo_data, s, DEMO)
            demo[("repopt", s)] = train(demo_runs, f"repopt_s{s}", demo_data, s, DEMO, training_mode="repopt",
                                        scales=str(hs))
        for s in seeds:
            demo[("distill", s)] = train(demo_runs, f"distill_s{s}", demo_data, s, DEMO,
                                         teacher=str(demo[("repvgg", 0)]))
        demo[("hyper_search", 0)] = hs
        demo[("distill_untrained_teacher", 0)] = train(demo_runs, "distill_untrained_teacher_s0", demo_data, 0, DEMO,
                                                       teacher=str(untrained_teacher(demo_runs, demo_data)))
        report("demo", demo, demo_data, 160)
    if "coco" in a.parts:
        fit = coco_fit_data()
        runs = {(k, 0): coco_model(k) for k in ("repvgg", "hyper_search", "repopt")}
        short = coco_settings(a.coco_student_epochs)
        for s in seeds:
            runs[("student", s)] = train(COCO_MODELS, f"student_s{s}", fit, s, short)
            runs[("distill", s)] = train(COCO_MODELS, f"distill_s{s}", fit, s, short,
                                         teacher=str(runs[("repvgg", 0)]))
        report("coco128", runs, fit, 320, also=COCO128)

if __name__ == "__main__":
    main()
