"""One inference interface over PyTorch weights, ONNX Runtime and OpenVINO.

>>> b = load_backend("best.onnx")            # or best.safetensors, or an OpenVINO IR directory / .xml
>>> b.kind, b.names, b.imgsz, b.nms_in_graph
>>> pred = b(x)                              # x float32 NCHW in [0, 1] (numpy or torch)

``Backend.__call__`` keeps the model contract, so :class:`~yoloforge.engine.predictor.Predictor` and
the evaluator take a backend in place of a module: a torch ``(B, N, 4 + nc)`` tensor. For a graph
exported with NMS the ``N`` rows are its ``max_det`` final detections, each with its score in its
class column and 0 elsewhere (padding rows are all-zero scores), so the usual NMS afterwards is a
no-op at the same thresholds and still filters at stricter ones. ``Backend.outputs(x)`` gives the
raw engine outputs (the in-graph NMS layout is documented in :mod:`yoloforge.export.onnx`).

:func:`best_cpu_backend` picks the fastest CPU runtime installed (OpenVINO, else ONNX Runtime, else
PyTorch), exporting the fused model once and caching it beside the weights.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from yoloforge.utils.checkpoint import CheckpointError

KINDS = ("torch", "onnxruntime", "openvino")


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads do not help GEMM-bound inference)."""
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        avail = os.cpu_count() or 1
    try:
        cores, pid, cid = set(), None, None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "physical id":
                pid = v.strip()
            elif k == "core id":
                cid = v.strip()
            elif not line.strip() and cid is not None:
                cores.add((pid, cid))
                pid = cid = None
        if cid is not None:
            cores.add((pid, cid))
        n = len(cores) or avail
    except OSError:
        n = avail
    logical = os.cpu_count() or n
    return max(1, min(avail, round(avail * n / logical) if logical > n else avail))


def max_stride(model, default: int = 32) -> int:
    """Largest output stride of a detector module (input sizes must be multiples of it)."""
    st = getattr(model, "stride", None)
    return int(max(torch.as_tensor(st).flatten().tolist())) if st is not None and len(st) else default


def rect_stride(model) -> int | None:
    """The stride whose every multiple ``model`` takes as a height or width -- a torch module, or a runtime
    exported with dynamic height/width -- so it can run rectangular letterboxes; None for a static-shape
    export (its square only)."""
    if isinstance(model, torch.nn.Module):
        return max_stride(model)
    return int(model.stride) if getattr(model, "dynamic_hw", False) else None


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def nms_outputs_to_pred(num, boxes, scores, classes, nc: int) -> torch.Tensor:
    """In-graph NMS outputs -> ``(B, max_det, 4 + nc)`` with each score in its class column."""
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
    scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    cls = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    valid = torch.arange(boxes.shape[1])[None] < torch.as_tensor(np.asarray(num), dtype=torch.long).reshape(-1, 1)
    out = torch.zeros(*boxes.shape[:2], 4 + nc)
    out[..., :4] = boxes
    onehot = torch.zeros(*boxes.shape[:2], nc)
    onehot.scatter_(2, cls.clamp(min=0).unsqueeze(-1), (scores * valid).unsqueeze(-1))
    out[..., 4:] = onehot
    return out


class Backend:
    """Common interface: ``kind``, ``path``, ``meta``, ``names``, ``nc``, ``imgsz``, ``nms_in_graph``,
    ``__call__(x) -> torch.Tensor (B, N, 4 + nc)``, ``outputs(x) -> list of numpy arrays``, and
    ``dynamic_hw`` / ``stride``: whether any ``stride`` multiple is a valid height/width."""

    kind = ""

    def __init__(self, path: str | Path, meta: dict):
        self.path, self.meta = Path(path), dict(meta)
        nc = int(self.meta.get("nc") or len(self.meta.get("names") or []))
        self.names = list(self.meta.get("names") or [str(i) for i in range(nc)])
        self.nc = nc or len(self.names)
        self.imgsz = int(self.meta.get("imgsz") or 640)
        self.nms_in_graph = bool(self.meta.get("nms", False))
        self.fixed_batch: int | None = None  # static batch of the engine (None: dynamic)
        self.dynamic_hw = False  # takes any height/width that is a multiple of ``stride`` (rectangular inputs)
        self.stride = int(max(self.meta.get("stride") or [32]))

    def _run(self, x: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - each backend overrides
        raise NotImplementedError

    def outputs(self, x) -> list[np.ndarray]:
        """Raw engine outputs; a batch that a static-batch-1 graph cannot take runs image by image."""
        x = _as_numpy(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.path}: expected a float NCHW batch with 3 channels, got shape {x.shape}")
        fb = self.fixed_batch
        if fb is None or x.shape[0] == fb:
            return self._run(x)
        if fb != 1:
            raise ValueError(f"{self.path}: exported with a fixed batch of {fb}, got {x.shape[0]} (export with dynamic=True)")
        parts = [self._run(x[i:i + 1]) for i in range(x.shape[0])]
        return [np.concatenate(p) for p in zip(*parts)]

    def __call__(self, x) -> torch.Tensor:
        outs = self.outputs(x)
        if self.nms_in_graph:
            return nms_outputs_to_pred(*outs[:4], nc=self.nc)
        return torch.from_numpy(np.asarray(outs[0], dtype=np.float32))

    def warmup(self, n: int = 1) -> "Backend":
        x = np.zeros((self.fixed_batch or 1, 3, self.imgsz, self.imgsz), np.float32)
        for _ in range(n):
            self(x)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, nc={self.nc}, imgsz={self.imgsz}, nms_in_graph={self.nms_in_graph})"


class TorchBackend(Backend):
    """A yoloforge .safetensors (or a model object) in its fused deploy form."""

    kind = "torch"

    def __init__(self, path_or_model, device: str = "cpu", meta: dict | None = None):
        from yoloforge.weights import load_model

        if isinstance(path_or_model, torch.nn.Module):
            model, meta, path = path_or_model, dict(meta or {}), Path(getattr(path_or_model, "name", "model"))
            meta.setdefault("names", getattr(model, "names", None))
            meta.setdefault("nc", getattr(model, "nc", 0))
        else:
            path = Path(path_or_model)
            model, meta = load_model(path)
            meta = dict(meta, names=model.names, nc=model.nc)
        super().__init__(path, meta)
        self.dynamic_hw = True
        self.stride = max_stride(model)
        self.device = torch.device(device)
        self.model = (model if getattr(model, "fused", False) else model.fuse()).to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(_as_numpy(x))
        y = self.model(x.to(self.device, torch.float32))
        return (y[0] if isinstance(y, (list, tuple)) else y).float()

    def outputs(self, x) -> list[np.ndarray]:
        return [self(x).cpu().numpy()]


class OrtBackend(Backend):
    """ONNX Runtime: intra-op threads = physical cores, all graph optimizations, sequential execution."""

    kind = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError(f"{path}: running .onnx needs onnxruntime (pip install onnxruntime): {e}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or physical_cores())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(f"{path}: device {device!r} asked for but onnxruntime has no CUDA provider "
                                   "(pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            raise CheckpointError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get("yoloforge")
        meta = json.loads(raw) if raw else {}
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if not meta:  # a foreign ONNX: infer what we can from its shapes
            out = self.session.get_outputs()[0].shape
            meta = {"imgsz": inp.shape[-1] if isinstance(inp.shape[-1], int) else 640,
                    "nc": out[-1] - 4 if isinstance(out[-1], int) else 0}
        super().__init__(path, meta)
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.dynamic_hw = not isinstance(inp.shape[2], int) and not isinstance(inp.shape[3], int)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: x})


PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "auto": None}


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 / AMX)."""
    try:
        from yoloforge.export.openvino import openvino_core

        return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no openvino, or a build without the property
        return False


class OpenVINOBackend(Backend):
    """OpenVINO IR (directory or .xml) compiled for ``device`` (CPU) with a latency hint.

    ``precision``: ``"fp32"`` (default: outputs equal torch to ~1e-6, what ``val`` uses), ``"bf16"`` /
    ``"fp16"``, or ``"auto"`` (the plugin's own default: bf16 on CPUs with AVX512-BF16 or AMX, else
    fp32). On this project's AMD EPYC (AVX512-BF16) bf16 runs yolov6n 1.8x faster than fp32 and moves
    mAP50-95 of the shapes demo model by -0.003 (0.4173 -> 0.4145); ``precision`` tells what was compiled.
    """

    kind = "openvino"

    def __init__(self, path: str | Path, device: str = "cpu", config: dict | None = None, precision: str = "fp32"):
        from yoloforge.export.openvino import find_ir, openvino_core, read_openvino_meta

        xml = find_ir(path)
        if not xml.is_file():
            raise CheckpointError(f"OpenVINO model not found: {xml}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        cfg = {"PERFORMANCE_HINT": "LATENCY"}
        if PRECISIONS[precision]:
            cfg["INFERENCE_PRECISION_HINT"] = PRECISIONS[precision]
        cfg.update(config or {})
        dev = {"cpu": "CPU", "gpu": "GPU", "auto": "AUTO", "npu": "NPU"}.get(str(device).lower(), str(device))
        try:
            core = openvino_core()  # never a Core of its own: see openvino_core
            model = core.read_model(str(xml))
            self.compiled = core.compile_model(model, dev, cfg)
            self._core, self._model, self._dev, self._cfg = core, model, dev, cfg
        except Exception as e:
            raise CheckpointError(f"{xml}: not a loadable OpenVINO model ({type(e).__name__}: {str(e)[:200]})") from None
        super().__init__(xml, read_openvino_meta(xml))
        try:  # what the plugin actually compiled (an ov.Type: f32 / bf16 / f16)
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
            self.precision = {v: k for k, v in PRECISIONS.items() if v}.get(name, name)
        except Exception:  # noqa: BLE001 - property missing in some builds
            self.precision = precision
        shape = model.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        self.dynamic_hw = shape[2].is_dynamic and shape[3].is_dynamic
        self.request = self.compiled.create_infer_request()
        self._static: dict = {}  # input shape -> (compiled, request) of the model reshaped to it
        self._seen: dict = {}

    STATIC_AFTER, STATIC_MAX = 2, 16

    def _request_for(self, shape: tuple):
        """A dynamic-shape graph ran ~7 % slower than the same graph compiled for one input shape (yolov6n,
        480x640, measured here): a shape met ``STATIC_AFTER`` times gets its own compiled copy (~0.1-0.2 s
        once, for yolov6n), at most ``STATIC_MAX`` of them."""
        hit = self._static.get(shape)
        if hit is not None:
            return hit
        if self.dynamic_hw or self.fixed_batch is None:
            n = self._seen[shape] = self._seen.get(shape, 0) + 1
            if n >= self.STATIC_AFTER and len(self._static) < self.STATIC_MAX:
                try:
                    m = self._model.clone()
                    m.reshape({0: list(shape)})
                    compiled = self._core.compile_model(m, self._dev, self._cfg)
                    self._static[shape] = (compiled, compiled.create_infer_request())
                    return self._static[shape]
                except Exception:  # keep the dynamic graph: correct, a bit slower
                    self.STATIC_MAX = len(self._static)
        return self.compiled, self.request

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        compiled, request = self._request_for(tuple(x.shape))
        res = request.infer({0: x}, share_inputs=True)  # no copy of the input (the call is synchronous)
        return [np.array(res[o]) for o in compiled.outputs]


def load_backend(path: str | Path, device: str = "cpu", **kw) -> Backend:
    """Open ``.safetensors`` (torch), ``.onnx`` (ONNX Runtime) or an OpenVINO IR (``.xml`` or its directory)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"model file not found: {p}")
    if p.is_dir() or p.suffix.lower() == ".xml":
        return OpenVINOBackend(p, device, **kw)
    suf = p.suffix.lower()
    if suf == ".onnx":
        return OrtBackend(p, device, **kw)
    if suf == ".safetensors":
        return TorchBackend(p, device)
    if suf in (".engine", ".trt", ".plan"):
        raise ValueError(f"{p}: TensorRT engines are built by yoloforge.export.tensorrt but not run by this backend")
    raise ValueError(f"{p}: unknown model format {suf!r} (expected .safetensors, .onnx, or an OpenVINO .xml / IR directory)")


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def available_kinds() -> list[str]:
    """Runtimes that import here, fastest first (as measured by benchmarks/backend_latency.py)."""
    import importlib.util

    kinds = [k for k, mod in (("openvino", "openvino"), ("onnxruntime", "onnxruntime"))
             if importlib.util.find_spec(mod) is not None]
    return kinds + ["torch"]


def best_cpu_backend(weights_path: str | Path, imgsz: int | None = None, cache_dir: str | Path | None = None,
                     prefer: list[str] | None = None, precision: str = "fp32",
                     loaded: tuple | None = None) -> tuple[Backend, str]:
    """The fastest CPU backend for ``weights_path`` (.safetensors) and a one-line message saying which.

    The fused model is exported once (dynamic batch, height and width; no NMS) and cached under
    ``cache_dir`` (default: ``<weights dir>/<stem>_deploy/``) with the key ``<sha256 of the weights, 16 hex>_<imgsz>``; later
    calls reuse the cache. A runtime that fails to export or load falls back to the next one.
    ``precision`` applies to OpenVINO (see :class:`OpenVINOBackend`); the others run fp32. ``loaded``:
    the ``(model, meta)`` already read from ``weights_path`` (needed for darknet weights, whose cfg is
    another file), else it is read here.
    """
    from yoloforge.weights import load_model

    weights_path = Path(weights_path)
    model, meta = loaded if loaded is not None else load_model(weights_path)
    imgsz = int(imgsz or meta.get("imgsz") or 640)
    cache = Path(cache_dir) if cache_dir else weights_path.parent / f"{weights_path.stem}_deploy"
    key = f"{file_hash(weights_path)}_{imgsz}_hw"  # "_hw": dynamic batch, height and width
    extra = {"source_weights": weights_path.name, "source_sha256_16": key.split("_")[0]}
    errors = []
    for kind in prefer or available_kinds():
        try:
            if kind == "torch":
                b = TorchBackend(model, meta=dict(meta, imgsz=imgsz, names=model.names, nc=model.nc))
                b.path = weights_path
                return b, f"CPU backend: torch (fused){_why(errors)}"
            onnx_path = cache / f"{key}.onnx"
            made = not onnx_path.is_file()
            if made:
                from yoloforge.export.onnx import export_onnx

                export_onnx(model, onnx_path, imgsz=imgsz, dynamic=True, names=model.names, meta=extra)
            if kind == "onnxruntime":
                how = "exported" if made else "cached"
                return OrtBackend(onnx_path), f"CPU backend: onnxruntime, {how} {onnx_path}{_why(errors)}"
            ir_dir = cache / f"{key}_openvino"
            made = not (ir_dir / "model.xml").is_file()
            if made:
                from yoloforge.export.openvino import onnx_to_openvino

                onnx_to_openvino(onnx_path, ir_dir)
            how = "exported" if made else "cached"
            b = OpenVINOBackend(ir_dir, precision=precision)
            return b, f"CPU backend: openvino {b.precision}, {how} {ir_dir}{_why(errors)}"
        except Exception as e:  # try the next runtime, and say why in the message
            errors.append(f"{kind}: {type(e).__name__}: {str(e)[:120]}")
    raise RuntimeError(f"{weights_path}: no CPU backend could be prepared ({'; '.join(errors)})")


def _why(errors: list[str]) -> str:
    return f" (skipped {'; '.join(errors)})" if errors else ""
