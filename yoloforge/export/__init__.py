"""Deployment: ONNX / OpenVINO export, TensorRT engine building, and runtimes behind one interface.

* :func:`export_onnx` (:mod:`.onnx`): fused model -> ``.onnx``, optional in-graph NMS, metadata inside.
* :func:`export_openvino` (:mod:`.openvino`): OpenVINO IR directory (``model.xml/.bin`` + ``yoloforge.json``).
* :func:`export_engine` (:mod:`.tensorrt`): TensorRT engine from an ``.onnx`` (needs CUDA + tensorrt).
* :func:`load_backend`, :func:`best_cpu_backend` (:mod:`.runtime`): torch / onnxruntime / openvino
  models called alike, ``backend(x) -> (B, N, 4 + nc)``.

Heavy imports (onnx, openvino, tensorrt) happen inside the functions, so importing this package is cheap.
"""
from __future__ import annotations


def export_onnx(*args, **kw):
    from .onnx import export_onnx as f

    return f(*args, **kw)


def export_openvino(*args, **kw):
    from .openvino import export_openvino as f

    return f(*args, **kw)


def export_engine(*args, **kw):
    from .tensorrt import export_engine as f

    return f(*args, **kw)


def load_backend(*args, **kw):
    from .runtime import load_backend as f

    return f(*args, **kw)


def best_cpu_backend(*args, **kw):
    from .runtime import best_cpu_backend as f

    return f(*args, **kw)


def export(model, format: str, path, **kw):
    """Dispatch on ``format`` (``onnx`` | ``openvino``; ``engine``/``tensorrt`` takes an .onnx path as ``model``)."""
    fmt = format.lower()
    if fmt == "onnx":
        return export_onnx(model, path, **kw)
    if fmt in ("openvino", "ov"):
        return export_openvino(model, path, **kw)
    if fmt in ("engine", "tensorrt", "trt"):
        return export_engine(model, path, **kw)
    raise ValueError(f"unknown export format {format!r}; choose onnx, openvino or engine")


__all__ = ["export", "export_onnx", "export_openvino", "export_engine", "load_backend", "best_cpu_backend"]
