"""The ultralytics side of ``benchmarks/vs_ultralytics.py``; runs inside the separate ultralytics venv.

Never imported by yoloforge, and yoloforge is never imported here. The driver starts
``<ul-python> _ul_worker.py`` once and sends one JSON object per line on stdin
(``{"op": ..., "args": {...}}``); each gets one JSON line back on stdout (``{"ok": true, "result": ...}``
or ``{"ok": false, "error": ...}``). Everything ultralytics prints goes to stderr, so stdout carries
the protocol only. The process stays alive between requests so the models stay built and warm, and
the driver can alternate single measurements between the two libraries.

Models are built from their yaml (``yolov6n.yaml``, ``yolov8n.yaml``): no weights, nothing downloaded
(``YOLO_OFFLINE=1`` is set before ultralytics is imported).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

PROTO = sys.stdout
sys.stdout = sys.stderr  # ultralytics logs with print/LOGGER: keep them off the protocol stream

import torch  # noqa: E402
import ultralytics  # noqa: E402
from ultralytics import YOLO  # noqa: E402

import ultralytics.utils.torch_utils as tu  # noqa: E402

MODELS: dict = {}  # name -> {"yolo": YOLO, "fused": nn.Module}
DEFAULT_THREADS = tu.NUM_THREADS  # min(8, cpu_count - 1): what ultralytics' select_device sets on a CPU


def _threads(n=None):
    """Torch threads for the next op: ``n``, or ultralytics' own default when None (select_device
    calls torch.set_num_threads(NUM_THREADS) on every CPU train/val/predict, so patch that too)."""
    n = int(n or DEFAULT_THREADS)
    tu.NUM_THREADS = n
    torch.set_num_threads(n)


def _get(name: str):
    if name not in MODELS:
        y = YOLO(f"{name}.yaml")
        fused = copy.deepcopy(y.model).eval()
        fused.fuse(verbose=False)
        MODELS[name] = {"yolo": y, "fused": fused}
    return MODELS[name]


def _tick(**info):
    """Lock-step: tell the driver we are about to go on, and wait for its "go" line (yoloforge runs meanwhile)."""
    PROTO.write(json.dumps({"tick": info}) + "\n")
    PROTO.flush()
    sys.stdin.readline()


def op_hello():
    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_env": os.environ.get("OMP_NUM_THREADS"),
            "default_threads": DEFAULT_THREADS}


def op_info(name: str, imgsz: int = 640):
    from ultralytics.utils.torch_utils import get_flops

    m = _get(name)
    unfused = m["yolo"].model
    return {"params": sum(p.numel() for p in unfused.parameters()), "gflops": get_flops(unfused, imgsz),
            "params_fused": sum(p.numel() for p in m["fused"].parameters()), "gflops_fused": get_flops(m["fused"], imgsz)}


def op_forward(name: str, imgsz: int = 640, batch: int = 1, n: int = 1, threads=None):
    """Seconds per forward of the fused eval model (float32 NCHW random input), ``n`` calls."""
    _threads(threads)
    model = _get(name)["fused"]
    x = torch.rand(batch, 3, imgsz, imgsz)
    out = []
    with torch.inference_mode():
        for _ in range(n):
            time.sleep(0.05)  # the same idle gap the driver leaves before its own measured calls
            t = time.perf_counter()
            model(x)
            out.append(time.perf_counter() - t)
    return {"times": out, "threads": torch.get_num_threads()}


def op_export(name: str, format: str = "onnx", imgsz: int = 640, outdir: str = "."):
    """ultralytics' own export (static batch 1, onnxslim), written under ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(outdir)  # a yaml-built model exports beside its yaml name, i.e. into the working directory
    try:
        t = time.perf_counter()
        path = YOLO(f"{name}.yaml").export(format=format, imgsz=imgsz, simplify=True, dynamic=False, verbose=False)
        return {"path": os.path.abspath(str(path)), "seconds": time.perf_counter() - t}
    finally:
        os.chdir(cwd)


def op_train(name: str, data: str, imgsz: int = 320, batch: int = 8, epochs: int = 1, workers: int = 2,
             project: str = "", threads=None, lockstep: bool = False):
    """model.train for ``epochs``; per-iteration times from the batch-start/batch-end callbacks.

    step: on_train_batch_start -> on_train_batch_end (preprocess, forward, loss, backward, optimizer step when
    due, progress bar). wait: previous batch end -> this batch start (the data loader). With ``lockstep``
    each batch start first waits for the driver's "go" (not counted in either).
    """
    _threads(threads)
    project = project or os.path.join(tempfile.gettempdir(), "ul_runs")
    y = YOLO(f"{name}.yaml")
    marks: list[tuple[str, float]] = []

    def on_start(tr):
        marks.append(("w", time.perf_counter()))
        if lockstep:
            _tick(i=len(marks))
        marks.append(("s", time.perf_counter()))
    y.add_callback("on_train_batch_start", on_start)
    y.add_callback("on_train_batch_end", lambda tr: marks.append(("e", time.perf_counter())))
    threads_seen = []
    y.add_callback("on_train_start", lambda tr: threads_seen.append(torch.get_num_threads()))
    t0 = time.perf_counter()
    y.train(data=data, imgsz=imgsz, batch=batch, epochs=epochs, workers=workers, device="cpu", amp=False,
            plots=False, val=False, close_mosaic=0, project=project, name=name, exist_ok=True, verbose=False,
            cache=False, deterministic=False)
    total = time.perf_counter() - t0
    steps, waits = [], []
    for k in range(0, len(marks) - 1):
        (a, ta), (b, tb) = marks[k], marks[k + 1]
        if a == "s" and b == "e":
            steps.append(tb - ta)
        elif a == "e" and b == "w":
            waits.append(tb - ta)
    return {"steps": steps, "waits": waits, "batch": batch, "total_s": total,
            "threads": threads_seen[0] if threads_seen else None, "accumulate_nbs": 64}


def op_val(name: str, data: str, imgsz: int = 640, batch: int = 16, workers: int = 2, threads=None):
    _threads(threads)
    y = _get(name)["yolo"]
    t = time.perf_counter()
    m = y.val(data=data, imgsz=imgsz, batch=batch, workers=workers, device="cpu", plots=False, verbose=False,
              save_json=False)
    s = time.perf_counter() - t
    return {"seconds": s, "map": float(m.box.map), "map50": float(m.box.map50), "speed_ms": dict(m.speed),
            "threads": torch.get_num_threads()}


LOADED: dict = {}  # weights or exported-model path -> YOLO, kept warm between requests


def _load(weights: str):
    if weights not in LOADED:
        LOADED[weights] = YOLO(weights, task="detect")
    return LOADED[weights]


def op_train_full(name: str, data: str, imgsz: int, batch: int, epochs: int, workers: int, project: str,
                  close_mosaic: int = 0, seed: int = 0, threads=None):
    """A whole training with ultralytics' own recipe (its defaults; val on), from the yaml; its best.pt."""
    _threads(threads)
    y = YOLO(f"{name}.yaml")
    t = time.perf_counter()
    y.train(data=data, imgsz=imgsz, batch=batch, epochs=epochs, workers=workers, device="cpu", plots=False,
            close_mosaic=close_mosaic, project=project, name=name, exist_ok=True, verbose=False, seed=seed)
    return {"best": str(y.trainer.best), "seconds": time.perf_counter() - t}


def op_export_weights(weights: str, format: str = "openvino", imgsz: int = 640, int8: bool = False, data: str = ""):
    """``YOLO(weights).export``: OpenVINO fp32, or int8 (NNCF post-training quantization on ``data``)."""
    t = time.perf_counter()
    kw = dict(int8=True, data=data) if int8 else {}
    path = YOLO(weights).export(format=format, imgsz=imgsz, verbose=False, **kw)
    return {"path": os.path.abspath(str(path)), "seconds": time.perf_counter() - t}


def op_val_weights(weights: str, data: str, imgsz: int = 640, batch: int = 16, threads=None):
    """ultralytics' own val of weights or an exported model (its own mAP computation)."""
    _threads(threads)
    m = _load(weights).val(data=data, imgsz=imgsz, batch=batch, device="cpu", plots=False, verbose=False)
    return {"map": float(m.box.map), "map50": float(m.box.map50)}


def op_predict(name: str, source: str, imgsz: int = 640, threads=None, lockstep: bool = False, weights: str = ""):
    """One full pass of the default ``model.predict`` over ``source`` (stream, results consumed); per-image
    wall times (read + pre + model + post). With ``lockstep`` it waits for "go" after each image. ``weights``:
    a trained .pt or an exported model (OpenVINO folder) instead of the untrained ``name``."""
    _threads(threads)
    y = _load(weights) if weights else _get(name)["yolo"]
    sums = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    per, shapes = [], set()
    t = time.perf_counter()
    for r in y.predict(source=source, imgsz=imgsz, stream=True, verbose=False, device="cpu"):
        per.append(time.perf_counter() - t)
        for k in sums:
            sums[k] += r.speed.get(k) or 0.0
        if lockstep:
            _tick(i=len(per))
        t = time.perf_counter()
    n = len(per)
    return {"seconds": sum(per), "per_image": per, "images": n, "speed_ms": {k: v / max(n, 1) for k, v in sums.items()},
            "threads": torch.get_num_threads()}


OPS = {k[3:]: v for k, v in globals().items() if k.startswith("op_")}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            res = {"ok": True, "result": OPS[req["op"]](**req.get("args", {}))}
        except Exception as e:  # noqa: BLE001 - reported to the driver, which decides
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        PROTO.write(json.dumps(res) + "\n")
        PROTO.flush()


if __name__ == "__main__":
    main()
