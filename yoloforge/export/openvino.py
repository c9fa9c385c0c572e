"""OpenVINO IR export: fused model -> ONNX (in memory) -> ``openvino.convert_model`` -> ``model.xml/.bin``.

The IR directory holds ``model.xml``, ``model.bin`` and ``yoloforge.json`` (the same metadata as the
ONNX export); the metadata is also stored in the IR's ``rt_info`` under ``yoloforge``. Weights are
kept in fp32 unless ``half`` (``save_model`` would otherwise compress them to fp16 by default).
The directory is written next to its final place and renamed into it, so a crash never leaves a
half-written IR under the final name.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from torch import nn

from yoloforge.config import PREDICT_NMS

IR_NAME = "model.xml"
META_NAME = "yoloforge.json"


def require_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise RuntimeError("OpenVINO export/runtime needs the openvino package: pip install openvino "
                           f"(or yoloforge[openvino]); import failed: {e}") from None
    return ov


_CORE = None


def openvino_core():
    """The one ``ov.Core`` of this process, kept until it exits.

    OpenVINO's CPU plugin (2026.4) installs its own alternate signal stack on the thread that creates it and, when
    it is released, restores the stack it found only if its own is still the current one, then unmaps its own.
    Two Cores released in creation order therefore leave the thread's alternate stack on unmapped memory, and the
    next signal handled there is a SIGSEGV: CPython installs every Python-level handler with SA_ONSTACK, so Ctrl-C,
    SIGTERM, or the SIGCHLD that torch's DataLoader listens for when a child process exits. That crashed the
    one-process test suite, and would crash a user's script that predicts through OpenVINO twice and then trains
    (reproducer and test: tests/test_openvino_core.py). One Core for the whole process is never released early.
    """
    global _CORE
    if _CORE is None:
        _CORE = require_openvino().Core()
    return _CORE


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def onnx_to_openvino(onnx_path: str | Path, out_dir: str | Path, half: bool = False,
                     meta: dict | None = None) -> Path:
    """Convert an exported .onnx to an IR directory; metadata read from the ONNX unless given."""
    from yoloforge.export.onnx import read_onnx_meta

    ov = require_openvino()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    meta = dict(meta if meta is not None else read_onnx_meta(onnx_path))
    meta.update(format="openvino", half=bool(half) or bool(meta.get("half")), openvino_version=ov.__version__)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        ov_model = ov.convert_model(str(onnx_path))
        ov_model.set_rt_info(json.dumps(meta), ["framework", "yoloforge"])
        ov.save_model(ov_model, str(tmp / IR_NAME), compress_to_fp16=bool(half))
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_openvino(model: nn.Module, out_dir: str | Path, imgsz: int = 640, dynamic: bool = False,
                    half: bool = False, nms: bool = False, names=None, meta: dict | None = None,
                    conf: float = PREDICT_NMS.conf, iou: float = PREDICT_NMS.iou, max_det: int = PREDICT_NMS.max_det,
                    opset: int = 17, simplify: bool = True) -> Path:
    """Export the fused ``model`` as an OpenVINO IR directory (``model.xml``, ``model.bin``,
    ``yoloforge.json``); returns the directory. Arguments as :func:`yoloforge.export.onnx.export_onnx`;
    with ``half`` the IR weights are stored in fp16 (OpenVINO's CPU plugin still computes in fp32
    or bf16 as configured at compile time)."""
    from yoloforge.export.onnx import export_onnx

    require_openvino()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".yoloforge-onnx-") as td:
        onnx_path = export_onnx(model, Path(td) / "model.onnx", imgsz=imgsz, dynamic=dynamic, half=False, nms=nms,
                                opset=opset, simplify=simplify, names=names, meta=meta, conf=conf, iou=iou,
                                max_det=max_det)
        return onnx_to_openvino(onnx_path, out_dir, half=half)


def find_ir(path: str | Path) -> Path:
    """``model.xml`` of an IR directory (or the .xml itself)."""
    path = Path(path)
    if path.is_dir():
        xmls = [path / IR_NAME] if (path / IR_NAME).is_file() else sorted(path.glob("*.xml"))
        if not xmls:
            raise FileNotFoundError(f"{path}: no OpenVINO .xml in this directory")
        return xmls[0]
    return path


def read_openvino_meta(path: str | Path) -> dict:
    """Metadata of an IR: ``yoloforge.json`` beside the .xml (else an empty dict)."""
    xml = find_ir(path)
    for cand in (xml.parent / META_NAME, xml.with_suffix(".json")):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{cand}: invalid JSON metadata ({e})") from None
    return {}
