"""``yoloforge benchmark``: latency, throughput and (with ``--data``) mAP of one model in every format.

    yoloforge benchmark --model yolov6n --imgsz 640 [--weights W.safetensors] [--data data.yaml]
                        [--batch 8] [--runs 20] [--formats torch,onnx,openvino,openvino-bf16,onnx-int8,...]

Prints a markdown table (paste it into an issue as it is) with one row per format: the fused torch
model, ONNX Runtime, OpenVINO (fp32, and bf16 where the CPU runs it natively), the int8 model of
``yoloforge quantize`` through ONNX Runtime and OpenVINO (calibrated on 32 images of the data's train
split; without ``--data`` on random images, which is enough for latency only) and TensorRT. A format
that cannot run here (not installed, no CUDA, no native bf16) keeps its row, saying why it was skipped.
Latency is the model call only (float32 NCHW in, ``(B, N, 4 + nc)`` out), ``--runs`` measured calls per batch size after ``--warmup`` unmeasured ones;
the formats take turns inside each round (round-robin, rotating the start) so that machine noise hits
all of them alike. Throughput is ``batch / p50``. The mAP columns come from ``Detector.val`` on the
val split through the same exported file, so they also check that the export is faithful.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

FORMATS = ("torch", "onnx", "openvino", "openvino-bf16", "onnx-int8", "openvino-int8", "tensorrt")
INT8_CALIB = 32  # calibration images of the int8 rows
ALIASES = {"pytorch": "torch", "onnxruntime": "onnx", "ort": "onnx", "ov": "openvino", "engine": "tensorrt",
           "trt": "tensorrt", "ov-bf16": "openvino-bf16", "int8": "onnx-int8", "ov-int8": "openvino-int8"}
SETTLE_S = 0.05  # idle time before each measured call (see measure())
HEADERS = ["format", "runtime", "threads", "b1 p50 ms", "b1 p90 ms", "b1 img/s", "bB p50 ms", "bB p90 ms",
           "bB img/s", "mAP50-95", "mAP50", "note"]


@dataclass
class Row:
    """One format's results; ``skipped`` is the reason it did not run (then the numbers stay empty)."""

    fmt: str
    runtime: str = ""
    threads: str = ""
    times: dict = field(default_factory=dict)  # batch -> list of seconds per call
    map: float | None = None
    map50: float | None = None
    note: str = ""
    skipped: str = ""


def parse_formats(text: str) -> list[str]:
    out = []
    for f in (s.strip().lower() for s in text.split(",") if s.strip()):
        f = ALIASES.get(f, f)
        if f not in FORMATS:
            raise ValueError(f"unknown format {f!r} for --formats; choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError("--formats is empty")
    return out


def stats(times: list[float], batch: int) -> tuple[float, float, float]:
    """(p50 ms, p90 ms, images per second at p50) of per-call times in seconds."""
    if not times:
        return float("nan"), float("nan"), float("nan")
    p50 = 1e3 * statistics.median(times)
    p90 = 1e3 * float(np.percentile(times, 90))
    return p50, p90, (1e3 * batch / p50) if p50 > 0 else float("inf")


def _num(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def format_table(rows: list[Row], batch: int) -> str:
    """Markdown table of the rows; ``bB`` in the headers becomes ``b<batch>``."""
    heads = [h.replace("bB", f"b{batch}") for h in HEADERS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if 1 < i < len(heads) - 1 else "---" for i in range(len(heads))) + "|"]
    for r in rows:
        if r.skipped:
            cells = [r.fmt, r.runtime or "-", "-"] + ["-"] * 8 + [f"skipped: {r.skipped}"]
        else:
            s1, sb = stats(r.times.get(1, []), 1), stats(r.times.get(batch, []), batch)
            cells = [r.fmt, r.runtime, r.threads, _num(s1[0]), _num(s1[1]), _num(s1[2]), _num(sb[0]), _num(sb[1]),
                     _num(sb[2]), _num(r.map, 3), _num(r.map50, 3), r.note]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def system_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical CPUs{gpu}; load average {load}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


# ---------------------------------------------------------------------------------------------- formats
class TensorRTRunner:
    """Runs a serialized TensorRT engine on torch CUDA tensors (TensorRT 10 tensor-address API)."""

    def __init__(self, engine_path: Path, nc: int):
        import tensorrt as trt

        self.trt, self.nc = trt, nc
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.ctx = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()

    def __call__(self, x) -> torch.Tensor:
        x = torch.as_tensor(x).cuda().float().contiguous()
        self.ctx.set_input_shape(self.inputs[0], tuple(x.shape))
        self.ctx.set_tensor_address(self.inputs[0], x.data_ptr())
        outs = []
        for n in self.outputs:
            shape = tuple(self.ctx.get_tensor_shape(n))
            dtype = {self.trt.DataType.FLOAT: torch.float32, self.trt.DataType.HALF: torch.float16,
                     self.trt.DataType.INT32: torch.int32, self.trt.DataType.INT64: torch.int64}[self.engine.get_tensor_dtype(n)]
            o = torch.empty(shape, dtype=dtype, device="cuda")
            self.ctx.set_tensor_address(n, o.data_ptr())
            outs.append(o)
        self.ctx.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return outs[0].float()


def prepare(fmt: str, weights: Path, imgsz: int, workdir: Path, device: str, data: str | None = None):
    """(callable on float NCHW, Row, what ``Detector`` opens for mAP: weights or the backend itself); raises to
    mark a skip."""
    from yoloforge.weights import load_model

    if fmt == "torch":
        from yoloforge.export.runtime import TorchBackend

        dev = "cuda" if device.startswith("cuda") else "cpu"
        b = TorchBackend(weights, device=dev)
        threads = str(torch.get_num_threads()) if dev == "cpu" else "-"
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def run(x, b=b):
            y = b(x)
            sync()
            return y
        return run, Row("torch (fused)", f"torch {torch.__version__} {dev}", threads), weights
    if fmt == "tensorrt":
        from yoloforge.export.tensorrt import _require_tensorrt

        if not torch.cuda.is_available():
            raise RuntimeError("needs a CUDA GPU (torch sees none)")
        _require_tensorrt()  # says what is missing before anything is exported
    model, _ = load_model(weights)
    onnx_path = workdir / f"{weights.stem}_{imgsz}_dynamic.onnx"
    if not onnx_path.is_file():
        from yoloforge.export.onnx import export_onnx

        export_onnx(model, onnx_path, imgsz=imgsz, dynamic=True, names=model.names)
    note = "dynamic batch/HW"
    if fmt in ("onnx-int8", "openvino-int8"):
        onnx_path, note = _int8_onnx(model, onnx_path, weights, imgsz, workdir, data)
    if fmt in ("onnx", "onnx-int8"):
        import onnxruntime as ort

        from yoloforge.export.runtime import OrtBackend

        b = OrtBackend(onnx_path)
        intra = b.session.get_session_options().intra_op_num_threads
        return b, Row(fmt, f"onnxruntime {ort.__version__} CPU", str(intra),
                      note=note if fmt == "onnx-int8" else f"fp32, {note}"), b
    if fmt in ("openvino", "openvino-bf16", "openvino-int8"):
        from yoloforge.export.openvino import onnx_to_openvino, require_openvino
        from yoloforge.export.runtime import OpenVINOBackend, native_bf16

        ov = require_openvino()
        if fmt == "openvino-bf16" and not native_bf16():
            raise RuntimeError("this CPU has no native bf16 (AVX512-BF16 or AMX)")
        ir = workdir / f"{onnx_path.stem}_openvino"
        if not (ir / "model.xml").is_file():
            onnx_to_openvino(onnx_path, ir)
        b = OpenVINOBackend(ir, precision="bf16" if fmt == "openvino-bf16" else "fp32")
        try:
            threads = str(b.compiled.get_property("INFERENCE_NUM_THREADS"))
        except Exception:  # noqa: BLE001 - property names differ across OpenVINO versions
            threads = "?"
        return b, Row(fmt, f"openvino {ov.__version__.split('-')[0]} CPU", threads,
                      note=f"{note}, rest fp32" if fmt == "openvino-int8" else f"{b.precision}, LATENCY hint, {note}"), b
    if fmt == "tensorrt":
        from yoloforge.export.tensorrt import export_engine

        engine = export_engine(onnx_path, workdir / f"{weights.stem}_{imgsz}.engine", half=True)
        import tensorrt as trt

        return (TensorRTRunner(engine, model.nc),
                Row("tensorrt", f"tensorrt {trt.__version__} {torch.cuda.get_device_name(0)}", "-", note="fp16"), None)
    raise ValueError(fmt)


def _int8_onnx(model, onnx_path, weights, imgsz, workdir, data) -> tuple[Path, str]:
    """The int8 QDQ model of ``yoloforge quantize`` for the int8 rows (cached in ``workdir``) and its note."""
    from yoloforge.export.runtime import max_stride
    from yoloforge.quant.ptq import calibration_batches, quantize_onnx

    q = workdir / f"{weights.stem}_{imgsz}_int8.onnx"
    if not q.is_file():
        if data:
            batches = calibration_batches(data, imgsz, INT8_CALIB, stride=max_stride(model), verbose=False)
        else:
            rng = np.random.default_rng(0)
            batches = [rng.random((1, 3, imgsz, imgsz), dtype=np.float32) for _ in range(4)]
        quantize_onnx(onnx_path, q, batches)
    return q, f"int8 convs, calibrated on {INT8_CALIB if data else 'random'} images"


def measure(fns: dict, batches: list[int], imgsz: int, runs: int, warmup: int, settle: float = SETTLE_S) -> dict:
    """{name: {batch: [seconds, ...]}}; each round calls every fn once, starting one later each round.

    ``settle`` seconds of idle come before every measured call: ONNX Runtime's intra-op threads keep
    spinning for a while after a run, and on a 2-core machine that stole ~50 % of the CPU from whichever
    runtime came next (OpenVINO right after ONNX Runtime measured 90 ms instead of 60 ms)."""
    rng = np.random.default_rng(0)
    out = {k: {b: [] for b in batches} for k in fns}
    keys = list(fns)
    for b in batches:
        x = rng.random((b, 3, imgsz, imgsz), dtype=np.float32)
        for r in range(warmup + runs):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                if settle:
                    time.sleep(settle)
                t = time.perf_counter()
                fns[k](x)
                if r >= warmup:
                    out[k][b].append(time.perf_counter() - t)
    return out


def untrained_weights(model_name: str, imgsz: int, workdir: Path) -> Path:
    from yoloforge.families.registry import build_model
    from yoloforge.utils.checkpoint import save_weights

    m = build_model(model_name)
    m.names = [str(i) for i in range(m.nc)]
    return save_weights(workdir / f"{model_name}_untrained.safetensors", m,
                        {"names": m.names, "imgsz": imgsz, "untrained": True})


def benchmark(model: str = "yolov6n", imgsz: int = 640, weights: str | None = None, data: str | None = None,
              batch: int = 8, runs: int = 20, warmup: int = 3, formats=FORMATS, device: str = "",
              workdir: str | Path | None = None, verbose: bool = True) -> tuple[list[Row], str]:
    """Rows for each format and the header text printed above the table."""
    from yoloforge.api import Detector

    work = Path(workdir or tempfile.mkdtemp(prefix="yoloforge-benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    head = [f"yoloforge benchmark: {system_line()}"]
    if weights:
        wpath = Path(weights)
        if not wpath.is_file():
            raise FileNotFoundError(f"weights not found: {wpath}")
        head.append(f"model {wpath.name}, imgsz {imgsz}")
    else:
        wpath = untrained_weights(model, imgsz, work)
        head.append(f"model {model} UNTRAINED (random weights, no --weights): latency is real, mAP is meaningless")
    fns, rows, paths = {}, [], {}
    for fmt in formats:
        try:
            fn, row, path = prepare(fmt, wpath, imgsz, work, device, data)
            fns[row.fmt], paths[row.fmt] = fn, path
        except Exception as e:  # noqa: BLE001 - any failure becomes a visible "skipped" row
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            row = Row(fmt, skipped=f"{type(e).__name__}: {msg[:160]}")
        rows.append(row)
    batches = sorted({1, max(int(batch), 1)})
    times = measure(fns, batches, imgsz, runs, warmup)
    for r in rows:
        if r.fmt in times:
            r.times = times[r.fmt]
    head.append(f"{runs} measured calls per batch size after {warmup} warm-up calls, formats in turn each round; "
                f"model call only (no read/letterbox/NMS); load average now "
                + ("/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"))
    if data:
        for r in rows:
            if r.skipped or paths.get(r.fmt) is None:
                continue
            # runtimes are validated through the very backend that was timed (OpenVINO at its precision)
            det = Detector(paths[r.fmt], device="cuda" if device.startswith("cuda") and r.fmt.startswith("torch") else "cpu")
            m = det.val(data, split="val", imgsz=imgsz, batch=batch, workers=2, verbose=verbose)
            r.map, r.map50 = m.map, m.map50
        head.append(f"mAP on the val split of {data} (conf 0.001, iou 0.65)"
                    + ("; UNTRAINED model: the mAP is meaningless" if not weights else ""))
    return rows, "\n".join(head)


def add_parser(subparsers):
    p = subparsers.add_parser("benchmark", help="latency / throughput / mAP of a model in every export format")
    p.add_argument("--model", default="yolov6n", help="registered model name (used when --weights is not given)")
    p.add_argument("--weights", default=None, help="yoloforge .safetensors (default: an untrained --model)")
    p.add_argument("--imgsz", type=int, default=640, help="input size in pixels")
    p.add_argument("--data", default=None, help="data yaml: adds mAP50-95 / mAP50 on its val split per format")
    p.add_argument("--batch", type=int, default=8, help="the larger batch size (batch 1 is always measured)")
    p.add_argument("--runs", type=int, default=20, help="measured calls per format and batch size")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured calls first")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of " + ",".join(FORMATS))
    p.add_argument("--device", default="", help="cuda: torch on the GPU (TensorRT always needs one)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.imgsz < 32 or args.imgsz % 32:
        raise ValueError(f"--imgsz {args.imgsz}: must be a multiple of 32")
    if args.runs < 1 or args.batch < 1:
        raise ValueError("--runs and --batch must be at least 1")
    rows, head = benchmark(args.model, args.imgsz, args.weights, args.data, args.batch, args.runs, args.warmup,
                           parse_formats(args.formats), args.device)
    print(head)
    print()
    print(format_table(rows, args.batch))
    return 0
