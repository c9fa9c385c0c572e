"""ONNX export of any yoloforge detector (it relies only on the eval contract ``(B, N, 4 + nc)``).

The exported graph is the *fused* (deploy) model:

* input ``images``: float32 ``(B, 3, H, W)``, RGB in [0, 1], letterboxed to ``imgsz`` (the same
  preprocessing as :func:`yoloforge.engine.predictor.preprocess`, so results match PyTorch);
  ``dynamic=True`` makes the batch dynamic, and without NMS also H and W (any multiple of the
  model's largest stride: the predictor then feeds rectangles, e.g. 640x480 for a 4:3 photo);
* output ``output0``: float32 ``(B, N, 4 + nc)``, xyxy input pixels then class scores in [0, 1].

With ``nms=True`` the graph ends with the standard ONNX ``NonMaxSuppression`` op (runs in ONNX
Runtime, OpenVINO and TensorRT >= 8.5 without plugins) and outputs final detections, padded to
``max_det`` rows and sorted by descending score:

* ``num_dets`` int32 ``(B, 1)``: valid rows per image;
* ``boxes`` float32 ``(B, max_det, 4)``: xyxy input pixels (rows past ``num_dets`` are 0);
* ``scores`` float32 ``(B, max_det)`` (padding 0);
* ``classes`` int32 ``(B, max_det)`` (padding -1).

The in-graph NMS is the same as :func:`yoloforge.utils.nms.non_max_suppression` with its defaults
(best class per box, per-class suppression, ``score > conf``, suppress when ``IoU > iou``): each box
keeps its best class score in that class's row of the ``(B, nc, N)`` score tensor and zero elsewhere,
so the op's own per-class loop does the per-class suppression exactly, without coordinate offsets.
``conf``, ``iou`` and ``max_det`` are baked in as constants and recorded in the metadata.

Exporter choice (torch 2.13): the TorchScript exporter (``dynamo=False``) is used. Measured here on
YOLOv6-N: it exports in ~0.6 s, honours opset 17, gives outputs equal to PyTorch to 1e-8 and a
dynamic batch axis. The dynamo exporter needs ``onnxscript``, takes ~7.5 s, and at opset 17 its
down-conversion writes ``Split(num_outputs=...)`` which ONNX Runtime rejects as an invalid graph
(it works at opset 18 only).

Metadata: ``metadata_props["yoloforge"]`` holds JSON (model, family, names, nc, imgsz, stride, nms
settings, half, dynamic, yoloforge version, output layout); :func:`read_onnx_meta` reads it back.
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloforge.config import PREDICT_NMS
from yoloforge.utils.checkpoint import atomic_write

OUTPUTS_RAW = ("output0",)
OUTPUTS_NMS = ("num_dets", "boxes", "scores", "classes")
META_KEY = "yoloforge"


def _version() -> str:
    try:
        from yoloforge import __version__
        return str(__version__)
    except Exception:  # pragma: no cover - partial installs
        return "unknown"


class _OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``; the eager forward computes the same selection (used while tracing)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_out: int, iou: float, conf: float):
        from yoloforge.utils.nms import batched_nms

        rows = []
        for b in range(boxes.shape[0]):
            s, c = scores[b].max(0)  # each box scores in at most one class row
            idx = (s > conf).nonzero().squeeze(1)
            keep = idx[batched_nms(boxes[b, idx], s[idx], c[idx], iou)]
            for cls in c[keep].unique():
                k = keep[c[keep] == cls][:max_out]
                rows.append(torch.stack([torch.full_like(k, b), torch.full_like(k, int(cls)), k], 1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_out: int, iou: float, conf: float):
        max_t = g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64))
        iou_t = g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32))
        conf_t = g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, max_t, iou_t, conf_t, center_point_box_i=0)


class NMSHead(nn.Module):
    """``(B, N, 4 + nc)`` -> ``num_dets, boxes, scores, classes`` (layout in the module docstring)."""

    def __init__(self, conf: float = PREDICT_NMS.conf, iou: float = PREDICT_NMS.iou, max_det: int = PREDICT_NMS.max_det):
        super().__init__()
        if not 0 <= conf <= 1 or not 0 <= iou <= 1 or max_det < 1:
            raise ValueError(f"need 0 <= conf, iou <= 1 and max_det >= 1, got {conf}, {iou}, {max_det}")
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)

    def forward(self, pred: torch.Tensor):
        boxes, scores = pred[..., :4], pred[..., 4:]
        nc, n = scores.shape[-1], pred.shape[1]
        best, cls = scores.max(-1)  # (B, N)
        own = torch.arange(nc, device=pred.device)[None, None, :] == cls[..., None]
        cls_scores = (best[..., None] * own.to(best.dtype)).transpose(1, 2).contiguous()  # (B, nc, N)
        sel = _OnnxNMS.apply(boxes, cls_scores, self.max_det, self.iou, self.conf)  # (K, 3) [b, c, i]
        flat = sel[:, 0] * n + sel[:, 2]
        best_flat = best.reshape(-1)
        dense = torch.zeros_like(best_flat).scatter(0, flat, best_flat[flat]).view_as(best)
        k = min(self.max_det, int(n))
        top_s, top_i = dense.topk(k, dim=1)
        valid = top_s > 0
        # plain Gather on flattened (B * N) rows: GatherElements on a channel slice trips OpenVINO's
        # shape inference (it folds the slice away); batch offsets via CumSum keep the batch dynamic
        rows = top_i + (torch.ones_like(top_i[:, :1]).cumsum(0) - 1) * n
        out_boxes = boxes.reshape(-1, 4)[rows] * valid.unsqueeze(-1).to(boxes.dtype)
        out_cls = torch.where(valid, cls.reshape(-1)[rows], torch.full_like(top_i, -1)).to(torch.int32)
        num = valid.sum(1, keepdim=True).to(torch.int32)
        if k < self.max_det:
            pad = self.max_det - k
            out_boxes = nn.functional.pad(out_boxes, (0, 0, 0, pad))
            top_s = nn.functional.pad(top_s, (0, pad))
            out_cls = nn.functional.pad(out_cls, (0, pad), value=-1)
        return num, out_boxes, top_s, out_cls


class ExportModule(nn.Module):
    """The fused model behind a float32 interface (fp16 inside when ``half``), optionally + NMS."""

    def __init__(self, model: nn.Module, half: bool = False, nms: NMSHead | None = None):
        super().__init__()
        self.model, self.half, self.nms = model, half, nms

    def forward(self, x: torch.Tensor):
        y = self.model(x.half() if self.half else x)
        if isinstance(y, (list, tuple)):
            y = y[0]
        y = y.float()
        return self.nms(y) if self.nms is not None else y


def deploy_copy(model: nn.Module, half: bool = False) -> nn.Module:
    """A fused, eval-mode CPU copy (the caller's model is left untouched)."""
    m = copy.deepcopy(model).cpu().float().eval()
    if hasattr(m, "fuse"):
        m.fuse()
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m.half() if half else m


def build_meta(model: nn.Module, imgsz: int, names=None, nms: NMSHead | None = None, half: bool = False,
               dynamic: bool = False, opset: int = 17, extra: dict | None = None) -> dict[str, Any]:
    nc = int(getattr(model, "nc", 0))
    names = list(names if names is not None else getattr(model, "names", None) or [str(i) for i in range(nc)])
    if nc and len(names) != nc:
        raise ValueError(f"{len(names)} class names for a model with nc={nc}")
    stride = getattr(model, "stride", None)
    meta = {
        "model": getattr(model, "name", type(model).__name__), "family": getattr(model, "family", ""),
        "build_kwargs": getattr(model, "build_kwargs", {}), "names": names, "nc": nc or len(names),
        "imgsz": int(imgsz), "stride": [float(s) for s in stride] if stride is not None else [],
        "nms": nms is not None, "half": bool(half), "dynamic": bool(dynamic), "opset": int(opset),
        "input": {"name": "images", "layout": "NCHW RGB float32 [0,1], square letterbox (pad 114)"},
        "outputs": list(OUTPUTS_NMS if nms is not None else OUTPUTS_RAW), "yoloforge_version": _version(),
    }
    if nms is not None:
        meta.update(conf=nms.conf, iou=nms.iou, max_det=nms.max_det)
    for k, v in (extra or {}).items():
        meta.setdefault(k, v)
    return meta


def to_onnx_proto(model: nn.Module, imgsz: int = 640, dynamic: bool = False, half: bool = False,
                  nms: bool = False, opset: int = 17, conf: float = PREDICT_NMS.conf,
                  iou: float = PREDICT_NMS.iou, max_det: int = PREDICT_NMS.max_det, batch: int = 1):
    """Trace the fused model to an in-memory, checked ``onnx.ModelProto`` (no metadata, not simplified)."""
    import onnx

    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {imgsz}")
    head = NMSHead(conf, iou, max_det) if nms else None
    wrapped = ExportModule(deploy_copy(model, half), half, head).eval()
    # trace with batch 2 when the batch is dynamic: nothing may specialize on a batch of 1
    x = torch.zeros(2 if dynamic else max(int(batch), 1), 3, imgsz, imgsz)
    outs = list(OUTPUTS_NMS if nms else OUTPUTS_RAW)
    axes = None
    if dynamic:  # batch always; height/width too without NMS (the NMS tail pads to max_det for one size)
        axes = {k: {0: "batch"} for k in ["images", *outs]}
        if not nms:
            axes["images"].update({2: "height", 3: "width"})
            axes["output0"][1] = "anchors"
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (x,), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=outs, dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto, head


def slim(proto):
    """Simplify with onnxslim when it imports (constant folding, dead nodes); else return unchanged."""
    try:
        import onnxslim
    except ImportError:
        return proto, False
    try:
        out = onnxslim.slim(proto)
    except Exception as e:  # a simplifier bug must not break export: keep the checked graph
        warnings.warn(f"onnxslim failed ({type(e).__name__}: {e}); keeping the unsimplified graph")
        return proto, False
    return (out, True) if out is not None else (proto, False)


def set_meta(proto, meta: dict) -> None:
    for p in list(proto.metadata_props):
        if p.key == META_KEY:
            proto.metadata_props.remove(p)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    proto.producer_name, proto.producer_version = "yoloforge", meta.get("yoloforge_version", "")
    proto.doc_string = f"{meta.get('model')} exported by yoloforge (imgsz {meta.get('imgsz')}, nms {meta.get('nms')})"


def read_onnx_meta(path: str | Path) -> dict:
    """The yoloforge metadata of an exported .onnx (without loading its weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    return {}


def export_onnx(model: nn.Module, path: str | Path, imgsz: int = 640, dynamic: bool = False, half: bool = False,
                nms: bool = False, opset: int = 17, simplify: bool = True, names=None, meta: dict | None = None,
                conf: float = PREDICT_NMS.conf, iou: float = PREDICT_NMS.iou, max_det: int = PREDICT_NMS.max_det,
                batch: int = 1) -> Path:
    """Export the fused ``model`` to ``path`` (.onnx), atomically; returns the path.

    Args:
        model: a :class:`~yoloforge.models.base.DetectionModel` (any module keeping the eval contract).
        imgsz: square input size (multiple of 32). The spatial size is fixed; the batch axis is
            dynamic when ``dynamic`` (else ``batch``).
        half: fp16 weights and compute inside; the interface stays float32. ONNX Runtime's CPU
            provider has few fp16 kernels (it inserts casts or runs slowly): use it for GPU runtimes.
        nms: append in-graph NMS with ``conf``/``iou``/``max_det`` (layout in the module docstring).
        simplify: run onnxslim when it is installed.
        names, meta: class names (default ``model.names``) and extra metadata entries.
    """
    import onnx

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        path = path.with_suffix(".onnx")
    proto, head = to_onnx_proto(model, imgsz, dynamic, half, nms, opset, conf, iou, max_det, batch)
    md = build_meta(model, imgsz, names, head, half, dynamic, opset, meta)
    if simplify:
        proto, md["simplified"] = slim(proto)
        onnx.checker.check_model(proto)
    set_meta(proto, md)
    return atomic_write(path, lambda p: onnx.save(proto, p))
