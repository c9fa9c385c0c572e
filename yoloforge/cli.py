"""``yoloforge VERB [options]`` -- one verb per mode: train val predict export quantize benchmark convert scale info
serve demo.

Errors a user can fix (missing file, bad label, bad option) print one line and exit 2;
they never end in a traceback from deep inside torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from yoloforge.config import AMP_MODES, PREDICT_NMS, TRAINING_MODES, VAL_NMS, TrainConfig, parse_value


TRAIN_HELP = {  # the meaning of every TrainConfig field, shown by `yoloforge train --help` with its default
    "imgsz": "training and validation image size in pixels (a multiple of 32)",
    "batch": "images per optimizer forward pass (per process under DDP)",
    "nbs": "nominal batch size: gradients accumulate until this many images, and weight decay scales with it",
    "workers": "data loader processes; -1: auto (2 on CPU, up to 8 on a GPU), never more than the cores other "
               "processes leave free",
    "device": "cpu, cuda, cuda:1 or a GPU index; empty: the local GPU if there is one, else cpu",
    "weights": "start from these weights: .safetensors, an official .pt / darknet file (converted on the fly), "
               "'official' (the model's official COCO release, downloaded once) or a release file name "
               "(yolov7_training.pt; `yoloforge weights list`)",
    "project": "parent folder of the run folders",
    "name": "run folder name under --project (numbered exp2, exp3 ... unless --exist-ok)",
    "exist_ok": "reuse --project/--name instead of numbering a new folder",
    "resume": "continue a run exactly: its folder, its weights/last.state.pt, or 'auto' for the newest run",
    "hyp": "hyper-parameters: a preset (yolov6, p5, tiny, p6, yolov4), a recipe (small-data) or a yaml file; "
           "empty: the preset named after the model's official file",
    "seed": "seed of the initialization, the sampler and every augmentation",
    "deterministic": "deterministic kernels (slower; bit-exact reruns on one machine)",
    "channels_last": "NHWC memory format for the model and the batches (faster convolutions on CPU and on GPUs "
                     "with tensor cores; the convolutions oneDNN 3.12 gets wrong in NHWC stay NCHW)",
    "amp": "mixed precision of the forward pass (fp32 weights, loss and assigners): auto = fp16 on CUDA, bf16 on a "
           "CPU with native bf16 (AVX512-BF16/AMX), off elsewhere; --no-amp = off",
    "compile": "torch.compile the training forward with this backend; --compile alone: inductor. On CPU it "
               "helps only fp32 NCHW training (yolov6n 1.09-1.22x after 65-95 s of compiling) and is slower with "
               "bf16 or --channels-last; empty: eager",
    "val_interval": "validate every N epochs (and always after the last)",
    "close_mosaic": "epochs at the end trained without mosaic/mixup; -1: the preset's own (YOLOv6 15, else 0)",
    "patience": "stop after this many validations without improvement; 0: never",
    "sync_bn": "synchronized BatchNorm across DDP processes",
    "cache": "'ram' keeps the resized images in memory (refused if they do not fit); empty: read from disk",
    "threads": "torch threads on a CPU; 0: the cores other processes leave free, checked every epoch (a shared "
               "machine slows training in proportion instead of 5-10x); OMP_NUM_THREADS or --deterministic: fixed",
    "save_period": "also keep weights/epochN.safetensors every N epochs; 0: only last and best",
    "conf": "confidence threshold of the validation NMS",
    "iou": "IoU threshold of the validation NMS",
    "plots": "write results.png, PR curve, confusion matrix and sample batches",
    "verbose": "progress bars and per-epoch tables",
    "tensorboard": "TensorBoard event files in <run>/tensorboard (where the tensorboard package is installed)",
    "mlflow": "also log to this MLflow tracking URI (http://host:5000 or sqlite:///path/mlflow.db)",
    "training_mode": "YOLOv6 blocks: repvgg (RepVGG branches), hyper_search (RepOpt stage 1: learns the branch "
                     "scales), repopt (RepOpt stage 2: plain conv blocks trained by the RepOptimizer, needs --scales); "
                     "empty: the model's own",
    "scales": "with --training-mode repopt: the weights of a --training-mode hyper_search run of the same model",
    "distill": "YOLOv6 self-distillation from --teacher (class KL at --temperature, box-distribution KL for DFL "
               "models), its weight decaying from 1 to 0.01 over the run",
    "teacher": "weights of the distillation teacher: a trained YOLOv6 with the same classes and reg_max "
               "(turns on --distill)",
    "temperature": "distillation temperature T (the terms are multiplied by T^2)",
    "distill_feat": "with --distill: also channel-wise distillation of the three neck maps",
}


TRAIN_CHOICES = {"training_mode": ["", *TRAINING_MODES], "cache": ["", "ram"], "amp": list(AMP_MODES)}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, flags with 'default: off' (argparse's own
    ArgumentDefaultsHelpFormatter skips options without help text and prints 'False' for flags)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in h:
            return h
        if isinstance(action, argparse.BooleanOptionalAction):
            return f"{h} (default: {'on' if action.default else 'off'})".strip()
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{h} (default: off)".strip()
        d = action.default
        shown = "none" if d is None or d == "" or d == [] else "%(default)s"
        return f"{h} (default: {shown})".strip()


def _add_train(sub):
    p = sub.add_parser("train", help="train a model on a data yaml")
    defaults = TrainConfig()
    p.add_argument("--data", required=False, default="", help="data yaml (YOLOv5/ultralytics layout or COCO json sources)")
    p.add_argument("--model", default=defaults.model, help="registered model name (see `yoloforge info --list`)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (default {defaults.epochs}; with --resume: extend to)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "model", "epochs", "hyp_override", "model_kw"):
            continue
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=d, help=TRAIN_HELP[f.name])
        elif f.name == "compile":
            p.add_argument(flag, nargs="?", const="inductor", default=d, metavar="BACKEND", help=TRAIN_HELP[f.name])
        else:
            p.add_argument(flag, type=type(d), default=d, help=TRAIN_HELP[f.name], choices=TRAIN_CHOICES.get(f.name))
    p.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="same as --amp off")
    p.add_argument("--hyp-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyper-parameter, e.g. --hyp-override lr0=0.02 (repeatable)")
    p.add_argument("--model-kw", action="append", default=[], metavar="KEY=VALUE",
                   help="model build option, e.g. --model-kw dropblock=0.1 --model-kw sam=true (yolov4)")


def _kv(items: list[str], flag: str) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"{flag} expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def cmd_train(a) -> int:
    from yoloforge.engine.trainer import Trainer

    d = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(a, f.name)}
    d["hyp_override"] = _kv(a.hyp_override, "--hyp-override")
    d["model_kw"] = _kv(a.model_kw, "--model-kw")
    d["epochs"] = a.epochs if a.epochs is not None else TrainConfig.epochs
    if not a.resume and not a.data:
        raise ValueError("train needs --data path/to/data.yaml (or --resume RUN_DIR)")
    best = Trainer(TrainConfig.from_dict(d), resume_epochs=a.epochs if a.resume else None).train()
    print(f"best weights: {best}")
    return 0


def _add_common_infer(p):
    p.add_argument("--weights", required=True,
                   help="yoloforge .safetensors, an exported .onnx / OpenVINO .xml, or an official .pt / darknet .weights")
    p.add_argument("--cfg", default=None, help="darknet .cfg of a .weights file")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the training size)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1, or a GPU index")
    p.add_argument("--conf", type=float, default=None, help="confidence threshold")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold")
    p.add_argument("--project", default=None, help="parent folder of the results (default: runs/val or runs/predict)")
    p.add_argument("--name", default="exp", help="results folder under --project, numbered if it exists")


def cmd_val(a) -> int:
    from yoloforge.api import Detector
    from yoloforge.engine.trainer import next_run_dir

    det = Detector(a.weights, device=a.device, cfg=a.cfg)
    save_dir = next_run_dir(a.project or "runs/val", a.name, False)
    m = det.val(a.data, split=a.split, imgsz=a.imgsz, batch=a.batch, conf=VAL_NMS.conf if a.conf is None else a.conf,
                iou=VAL_NMS.iou if a.iou is None else a.iou, workers=a.workers, save_json=a.save_json,
                save_dir=save_dir, plots=True, rect=not a.no_rect, backend=a.backend)
    print(f"mAP50-95 {m.map:.4f}  mAP50 {m.map50:.4f}  results in {save_dir}")
    return 0


def cmd_predict(a) -> int:
    from yoloforge.api import Detector
    from yoloforge.engine.trainer import next_run_dir

    det = Detector(a.weights, device=a.device, cfg=a.cfg)
    classes = [int(c) for c in a.classes.split(",")] if a.classes else None
    pred = det.predictor(a.imgsz, PREDICT_NMS.conf if a.conf is None else a.conf,
                         PREDICT_NMS.iou if a.iou is None else a.iou,
                         a.max_det, classes, a.batch, a.nms, backend=a.backend, rect=not a.no_rect,
                         precision=a.precision)
    save_dir = next_run_dir(a.project or "runs/predict", a.name, False)
    r = pred.predict_to_dir(a.source, save_dir, save_img=not a.no_save, save_txt=a.save_txt, save_json=a.save_json)
    s = r["speed_ms"]
    box = (f"rectangular letterbox (multiples of {pred.rect_stride})" if pred.rect_stride else
           f"square {pred.imgsz} letterbox")
    print(f"{r['images']} images, {r['detections']} detections, {box}; per image {s['pre']:.1f} ms pre, "
          f"{s['model']:.1f} ms model, {s['post']:.1f} ms post; results in {save_dir}")
    return 0


def cmd_export(a) -> int:
    from yoloforge.api import Detector

    det = Detector(a.weights, device="cpu")
    kw = dict(dynamic=a.dynamic, half=a.half, nms=a.nms, opset=a.opset, simplify=not a.no_simplify)
    if a.nms:
        kw.update(conf=a.conf, iou=a.iou, max_det=a.max_det)
    if a.imgsz:
        kw["imgsz"] = a.imgsz
    out = det.export(a.format, a.output, **kw)
    print(f"exported {a.format}: {out}")
    return 0


def cmd_quantize(a) -> int:
    from yoloforge.quant.ptq import quantize

    exclude = [n.strip() for n in a.exclude.split(",") if n.strip()]
    if a.method == "compare":
        from yoloforge.quant.compare import compare, table

        rows = compare(a.weights, a.data, out_dir=a.output, imgsz=a.imgsz, n_calib=a.calib, skip=a.skip or 3,
                       epochs=a.epochs, scales=a.scales, batch=a.batch, workers=a.workers,
                       openvino=not a.no_openvino, hyp_override=_kv(a.hyp_override, "--hyp-override"),
                       reduce_range=a.reduce_range)
        print(table(rows))
        return 0
    if a.method == "qat":
        from yoloforge.quant.qat import quantize_qat

        rep = quantize_qat(a.weights, a.data, out_dir=a.output, imgsz=a.imgsz, n_calib=a.calib, skip=a.skip,
                           exclude=exclude, rank=a.sensitivity, epochs=a.epochs, distill=a.distill, scales=a.scales,
                           batch=a.batch, workers=a.workers, openvino=not a.no_openvino, evaluate=not a.no_val,
                           hyp_override=_kv(a.hyp_override, "--hyp-override"), reduce_range=a.reduce_range)
    else:
            rep = quantize(a.weights, a.data, out_dir=a.output, imgsz=a.imgsz, n_calib=a.calib, skip=a.skip,
                       exclude=exclude, sensitivity=not a.no_sensitivity, openvino=not a.no_openvino,
                       evaluate=not a.no_val, batch=a.batch, rank=a.sensitivity)
    print(rep.table())
    print(f"report: {Path(rep.onnx).parent / 'report.json'}; run it with: yoloforge predict --weights "
          f"{rep.openvino + '/model.xml' if rep.openvino else rep.onnx} --source ...")
    return 0


def cmd_info(a) -> int:
    from yoloforge.families.registry import build_model, list_models
    from yoloforge.utils.flops import model_info

    if a.list or not a.model:
        print("models: " + ", ".join(list_models()))
        return 0
    info = model_info(build_model(a.model, nc=a.nc), a.imgsz)
    print(f"{a.model} at {a.imgsz}x{a.imgsz}, {a.nc} classes")
    print(f"  train-time : {info['params'] / 1e6:8.3f} M params  {info['gflops']:8.2f} GFLOPs")
    print(f"  deployed   : {info['params_fused'] / 1e6:8.3f} M params  {info['gflops_fused']:8.2f} GFLOPs (fused)")
    return 0


def cmd_demo(a) -> int:
    """Synthetic shapes -> train yolov6n -> val -> predict, then print where everything is."""
    from yoloforge.api import Detector
    from yoloforge.data.synthetic import make_shapes_dataset

    t0 = time.time()
    root = Path(a.project) / "data"
    data = make_shapes_dataset(root, n_train=a.n_train, n_val=a.n_val, imgsz=a.imgsz, seed=0)
    print(f"demo data: {data}")
    det = Detector(a.model)
    best = det.train(data=str(data), epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, nbs=a.batch, workers=a.workers,
                     project=str(Path(a.project) / "train"), name="exp", exist_ok=True, close_mosaic=a.close_mosaic,
                     val_interval=a.val_interval, seed=0, hyp="small-data", hyp_override={"warmup_epochs": 1.0})
    m = Detector(best).val(str(data), save_dir=Path(a.project) / "val", plots=True, verbose=False)
    val_imgs = sorted((root / "images" / "val").glob("*"))[:8]
    out = Detector(best).predictor(conf=PREDICT_NMS.conf).predict_to_dir([str(p) for p in val_imgs], Path(a.project) / "predict",
                                                             verbose=False)
    print("\n" + m.table())
    print(f"\ndemo finished in {time.time() - t0:.0f} s: mAP50 {m.map50:.3f}, mAP50-95 {m.map:.3f} on the demo val split")
    print(f"  weights     : {best}")
    print(f"  training    : {best.parent.parent} (results.csv, results.png, PR_curve.png, confusion_matrix.png)")
    print(f"  validation  : {Path(a.project) / 'val'}")
    print(f"  predictions : {out['save_dir']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="yoloforge", description="YOLOv6 / YOLOv7 / Scaled-YOLOv4: train, val, predict, deploy",
                                 formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    _add_train(sub)

    p = sub.add_parser("val", help="COCO mAP of weights on a data split")
    _add_common_infer(p)
    p.add_argument("--data", required=True, help="data yaml")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split of the data yaml")
    p.add_argument("--batch", type=int, default=16, help="images per batch")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--save-json", action="store_true", help="write detections as COCO results json")
    p.add_argument("--no-rect", action="store_true",
                   help="square letterbox for every image (default: rectangular batches, as the official test scripts)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="auto (default): on a CPU the fastest runtime installed, at fp32, exported once and cached")

    p = sub.add_parser("predict", help="detect objects in images, folders, globs or videos")
    _add_common_infer(p)
    p.add_argument("--source", required=True, help="image, folder, 'glob/*.jpg' or video")
    p.add_argument("--max-det", type=int, default=PREDICT_NMS.max_det, help="at most this many detections per image")
    p.add_argument("--classes", default="", help="keep only these class ids, e.g. 0,2")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    p.add_argument("--nms", default="iou", choices=["iou", "diou"], help="NMS kind (diou: YOLOv4's DIoU-NMS)")
    p.add_argument("--save-txt", action="store_true", help="also write YOLO txt labels")
    p.add_argument("--save-json", action="store_true", help="also write a COCO results json")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images")
    p.add_argument("--no-rect", action="store_true",
                   help="letterbox to the square imgsz (default: the smallest stride-multiple rectangle)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="auto: on a CPU the fastest installed runtime (exported once, cached beside the weights)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="OpenVINO inference precision; auto: the CPU's native one (bf16 on AVX512-BF16/AMX CPUs)")

    p = sub.add_parser("export", help="export the fused model to ONNX / OpenVINO / TensorRT")
    p.add_argument("--weights", required=True, help="yoloforge .safetensors (or an official checkpoint)")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino", "engine"],
                   help="onnx, openvino (IR .xml/.bin) or engine (TensorRT, needs a GPU)")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the training size)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis (and height/width when exported without --nms)")
    p.add_argument("--half", action="store_true", help="fp16 weights")
    p.add_argument("--nms", action="store_true", help="NonMaxSuppression inside the graph (final boxes out)")
    p.add_argument("--conf", type=float, default=PREDICT_NMS.conf, help="with --nms: confidence threshold baked in")
    p.add_argument("--iou", type=float, default=PREDICT_NMS.iou, help="with --nms: IoU threshold baked in")
    p.add_argument("--max-det", type=int, default=PREDICT_NMS.max_det, help="with --nms: detections per image baked in")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim graph simplification")
    p.add_argument("--output", default=None, help="output path (default: beside the weights)")

    p = sub.add_parser("quantize", help="int8: post-training quantization with a per-layer sensitivity report, or "
                                        "quantization-aware training (--method qat)")
    p.add_argument("--weights", required=True, help=".safetensors (or an official checkpoint)")
    p.add_argument("--method", default="ptq", choices=["ptq", "qat", "compare"],
                   help="ptq: calibrate and convert; qat: calibrate, then train with int8 simulated (YOLOv6 paper); "
                        "compare: fp32, PTQ, PTQ + skip K (two rankings), QAT, QAT + CWD in one table (mAP, latency)")
    p.add_argument("--epochs", type=int, default=10, help="QAT epochs (official: 10)")
    p.add_argument("--distill", default="cwd", choices=["cwd", "none"],
                   help="QAT: the fp32 model teaches (channel-wise distillation; YOLOv6 also its class/DFL terms)")
    p.add_argument("--scales", default="", help="QAT of a RepOpt model: its hyper-search weights (default: from the "
                                                "run's args.yaml)")
    p.add_argument("--workers", type=int, default=2, help="QAT data loader processes")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="QAT: 7-bit weights (default: where this CPU's int8 kernels saturate with 8, x86 without "
                        "VNNI/AMX; a GPU or a VNNI CPU takes 8)")
    p.add_argument("--hyp-override", action="append", default=[], help="QAT: key=value over the official QAT "
                                                                         "recipe (lr0 1e-5, lrf 0.001, ...)")
    p.add_argument("--data", required=True, help="data yaml: calibration images from its train split, mAP on val")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the training size)")
    p.add_argument("--calib", type=int, default=128, help="number of calibration images")
    p.add_argument("--skip", type=int, default=0, help="keep the K most int8-sensitive convolutions in float")
    p.add_argument("--exclude", default="", help="comma list of layers kept in float (names from sensitivity.csv)")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity analysis")
    p.add_argument("--sensitivity", default="output", choices=["output", "mse", "snr", "cosine", "map"],
                   help="rank layers by: the detector's output error, the MSE / SNR / cosine of the layer's own "
                        "output, or the val mAP50-95 drop with the layer quantized alone (slow: one val per layer)")
    p.add_argument("--no-openvino", action="store_true", help="write the int8 ONNX only")
    p.add_argument("--no-val", action="store_true", help="do not measure fp32 vs int8 mAP on the val split")
    p.add_argument("--batch", type=int, default=16, help="val batch size (and QAT's training batch)")
    p.add_argument("--output", default=None, help="output directory (default: <weights stem>_int8/ or _qat/ beside "
                                                  "them)")

    p = sub.add_parser("info", help="params and GFLOPs (train-time and deployed)")
    p.add_argument("--model", default="", help="registered model name")
    p.add_argument("--imgsz", type=int, default=640, help="input size the GFLOPs are counted at")
    p.add_argument("--nc", type=int, default=80, help="number of classes")
    p.add_argument("--list", action="store_true", help="list registered models")

    import importlib

    for module in MODULE_VERBS.values():
        importlib.import_module(module).add_parser(sub)

    p = sub.add_parser("demo", help="train yolov6n on generated shapes, validate, predict")
    p.add_argument("--project", default="runs/demo", help="where the data, run, val and predictions go")
    p.add_argument("--model", default="yolov6n", help="registered model name")
    p.add_argument("--epochs", type=int, default=26, help="training epochs")
    p.add_argument("--imgsz", type=int, default=160, help="image size")
    p.add_argument("--batch", type=int, default=16, help="batch size (no accumulation)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--n-train", type=int, default=400, help="generated training images")
    p.add_argument("--n-val", type=int, default=100, help="generated validation images")
    p.add_argument("--close-mosaic", type=int, default=8, help="last epochs without mosaic")
    p.add_argument("--val-interval", type=int, default=5, help="validate every N epochs")
    def formatted(parser):
        parser.formatter_class = HelpFormatter
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for q in a.choices.values():
                    formatted(q)

    formatted(ap)
    return ap


# verbs whose module has its own add_parser / run(args): imported when the verb runs
MODULE_VERBS = {"scale": "yoloforge.scaling", "benchmark": "yoloforge.bench", "data": "yoloforge.data.tools",
                "weights": "yoloforge.hub", "serve": "yoloforge.serve", "convert": "yoloforge.convert",
                "average": "yoloforge.engine.average", "tune": "yoloforge.engine.tune"}


def _module_verb(module: str):
    def run(a) -> int:
        import importlib

        return importlib.import_module(module).run(a)

    return run


VERBS = {"train": cmd_train, "val": cmd_val, "predict": cmd_predict, "export": cmd_export, "quantize": cmd_quantize,
         "info": cmd_info, "demo": cmd_demo, **{v: _module_verb(m) for v, m in MODULE_VERBS.items()}}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from yoloforge.engine.trainer import TrainingError
    from yoloforge.utils.checkpoint import CheckpointError

    try:
        return VERBS[a.verb](a)
    except (FileNotFoundError, ValueError, CheckpointError, TrainingError, OSError, RuntimeError) as e:
        if os.environ.get("YOLOFORGE_DEBUG"):
            raise
        print(f"yoloforge {a.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
