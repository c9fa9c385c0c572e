"""TensorRT engine builder (GPU only).

Builds a serialized engine from a yoloforge ONNX export with the ``tensorrt`` Python package. The
in-graph NMS of :func:`yoloforge.export.onnx.export_onnx` is the standard ONNX ``NonMaxSuppression``
op, which TensorRT >= 8.5 parses natively: no ``EfficientNMS_TRT`` plugin is involved.

Only the builder lives here; running engines is left to TensorRT's own runtime. Without a CUDA GPU
or the ``tensorrt`` package, :func:`export_engine` raises a ``RuntimeError`` that says so. (Written
against the TensorRT 8.6 / 10.x builder API; not exercised on a GPU in this repository's tests.)
"""
from __future__ import annotations

import json
from pathlib import Path

from yoloforge.utils.checkpoint import atomic_write

NEEDS = "TensorRT export needs a CUDA GPU and the tensorrt package: "


def _require_tensorrt():
    import torch

    reasons = []
    if not torch.cuda.is_available():
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install failing to load libnvinfer
        trt = None
        reasons.append(f"'import tensorrt' failed ({type(e).__name__}: {e}); install it with pip install tensorrt")
    if reasons:
        raise RuntimeError(NEEDS + "; ".join(reasons))
    return trt


def export_engine(onnx_path: str | Path, engine_path: str | Path | None = None, half: bool = True,
                  workspace_gb: float = 4.0, max_batch: int = 16, verbose: bool = False) -> Path:
    """Build ``engine_path`` (default: the ONNX path with ``.engine``) from ``onnx_path``.

    A dynamic batch axis gets an optimization profile of batch 1 / ``max_batch // 2`` / ``max_batch``.
    ``half`` enables FP16 kernels where the GPU has them. The yoloforge metadata of the ONNX is
    written beside the engine as ``<engine>.json``. Returns the engine path.
    """
    trt = _require_tensorrt()
    from yoloforge.export.onnx import read_onnx_meta

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # required before TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if half:
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if -1 in shape:  # dynamic batch (and maybe height/width): batch 1..max_batch at the export size
        imgsz = int(read_onnx_meta(onnx_path).get("imgsz") or 640)
        rest = tuple(imgsz if d == -1 else d for d in shape[1:])
        profile = builder.create_optimization_profile()
        b = (1, max(max_batch // 2, 1), max_batch) if shape[0] == -1 else (shape[0],) * 3
        profile.set_shape(inp.name, (b[0], *rest), (b[1], *rest), (b[2], *rest))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (run with verbose=True for the log)")
    meta = dict(read_onnx_meta(onnx_path), format="tensorrt", half=bool(half), tensorrt_version=trt.__version__)
    atomic_write(engine_path, lambda p: Path(p).write_bytes(bytes(serialized)))
    atomic_write(engine_path.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    return engine_path
