"""CPU latency of one model through every backend: torch eager, torch fused, ONNX Runtime, OpenVINO
(a static batch IR, and the dynamic-batch IR that ``best_cpu_backend`` caches).

    python benchmarks/backend_latency.py [--model yolov6n] [--imgsz 640] [--n 30] [--batch 1]

Backends run in turn inside each round (round-robin, rotating the start), so machine noise hits all
of them alike.
Model time only (float32 NCHW in, (B, N, 4 + nc) out); no pre/post-processing.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import table

from yoloforge.export.onnx import deploy_copy, export_onnx
from yoloforge.export.runtime import OpenVINOBackend, OrtBackend, physical_cores
from yoloforge.families.registry import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="yolov6n")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--n", type=int, default=30, help="measured rounds")
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    eager = build_model(a.model).eval()
    fused = deploy_copy(eager)
    x = np.random.default_rng(0).random((a.batch, 3, a.imgsz, a.imgsz), dtype=np.float32)
    xt = torch.from_numpy(x)
    tmp = Path(tempfile.mkdtemp(prefix="yoloforge-bench-"))
    fns, notes = {}, {}

    def torch_fn(m):
        def run():
            with torch.inference_mode():
                return m(xt)
        return run

    fns["torch eager"] = torch_fn(eager)
    fns["torch fused"] = torch_fn(fused)
    notes["torch eager"] = notes["torch fused"] = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    t = time.perf_counter()
    onnx_static = export_onnx(eager, tmp / "static.onnx", imgsz=a.imgsz, batch=a.batch)
    onnx_dyn = export_onnx(eager, tmp / "dynamic.onnx", imgsz=a.imgsz, dynamic=True)
    export_s = (time.perf_counter() - t) / 2
    import onnxruntime as ort

    ob = OrtBackend(onnx_static)
    fns["onnxruntime fp32"] = lambda: ob(x)
    notes["onnxruntime fp32"] = f"onnxruntime {ort.__version__}, {physical_cores()} intra-op threads"
    ref = fns["torch fused"]().numpy()
    diffs = {"onnxruntime fp32": float(np.abs(ob(x).numpy() - ref).max())}
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        from yoloforge.export.openvino import onnx_to_openvino

        for tag, src in (("static", onnx_static), ("dynamic batch", onnx_dyn)):
            b = OpenVINOBackend(onnx_to_openvino(src, tmp / f"ov_{tag.split()[0]}"))
            key = f"openvino fp32 ({tag})"
            fns[key] = (lambda b=b: b(x))
            notes[key] = f"openvino {ov.__version__.split('-')[0]}, LATENCY hint, f32"
            diffs[key] = float(np.abs(b(x).numpy() - ref).max())
    else:
        print("openvino not installed: its rows are skipped")

    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(a.warmup + a.n):
        # round-robin, starting one backend later each round: noise and position hit all alike
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            fns[k]()
            if r >= a.warmup:
                times[k].append(time.perf_counter() - t)
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    best = min(med.values())
    rows = [[k, med[k], 1e3 * float(np.percentile(times[k], 90)), med[k] / best,
             f"{diffs[k]:.1e}" if k in diffs else "-", notes[k]] for k in fns]
    print(f"{a.model} at {a.imgsz}, batch {a.batch}, {a.n} rounds (round-robin), export {export_s:.1f} s per ONNX file")
    print(table(["backend", "median ms", "p90 ms", "x best", "max|diff| vs fused", "runtime"], rows))


if __name__ == "__main__":
    main()
