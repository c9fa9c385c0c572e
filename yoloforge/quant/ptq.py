"""Post-training int8 quantization: fused model -> ONNX -> ONNX Runtime static quantization (QDQ).

What a user runs: ``yoloforge quantize --weights best.safetensors --data data.yaml``. Steps:

1. the fused model is exported to ONNX (dynamic batch, height and width, no NMS);
2. calibration images (``--calib N`` from the train split, evenly spaced, letterboxed like ``predict``);
3. optionally the per-layer sensitivity (:mod:`yoloforge.quant.sensitivity`), and the ``--skip K`` most
   sensitive convolutions kept in float (or ``--exclude`` names);
4. ``onnxruntime.quantization.quantize_static``: QDQ format, weights int8 per output channel, activations
   uint8 per tensor, MinMax calibration. MinMax, not entropy/percentile: entropy calibration clips the
   long activation tails of YOLO heads, the known cause of int8 mAP collapse (ultralytics moved its
   TensorRT calibrator to MinMax for this reason; USERS.md #11);
5. the QDQ model is converted to OpenVINO IR too (OpenVINO runs QDQ graphs with int8 kernels);
6. with a val split, mAP of the float and of the int8 model are measured and written to the report,
   with a warning when int8 loses more than ``warn_drop`` mAP50-95.

The int8 ``.onnx`` / IR keep yoloforge's metadata (names, strides, ``int8: true``), so
``yoloforge predict|val|benchmark --weights model_int8.onnx|.../model.xml`` use them like any export.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from yoloforge.utils.logging import get_logger

LOG = get_logger()
# Only convolutions are quantized: they hold nearly all of the FLOPs. The head's decoding (grid offsets,
# strides, sigmoid, the final concat of pixel boxes with [0, 1] scores) must stay float -- one uint8 scale
# shared by boxes up to 640 and scores below 1 leaves the scores no levels at all (measured on the demo
# model with ONNX Runtime's default op list: mAP50-95 0.495 -> 0.306).
QUANT_OPS = ("Conv",)


@dataclass
class QuantReport:
    onnx: str = ""
    openvino: str = ""
    excluded: list = field(default_factory=list)  # fused-model module names kept in float
    calib_images: int = 0
    # [name, value of `ranking` (as plotted), score_err, box_err, mse, snr_db, cosine, map_drop], most sensitive first
    sensitivity: list = field(default_factory=list)
    ranking: str = "output"
    map: dict = field(default_factory=dict)  # {"fp32": (mAP50-95, mAP50), "int8-onnxruntime": ..., ...}
    method: str = "ptq"  # or "qat"
    distill: str = ""  # QAT: "cwd" (the fp32 model teaches) or "none"
    weights: str = ""  # QAT: the trained quantization-aware .safetensors
    weight_bits: int = 8  # QAT: 7 with --reduce-range

    def table(self) -> str:
        rows = [f"int8 model ({self.method}{', distill ' + self.distill if self.distill else ''}): {self.onnx}"
                + (f"\nOpenVINO IR: {self.openvino}" if self.openvino else ""),
                f"calibration images: {self.calib_images}; kept in float: {', '.join(self.excluded) or 'none'}"]
        if self.sensitivity:
            from yoloforge.quant.sensitivity import RANKINGS

            rows.append(f"most sensitive layers ({RANKINGS[self.ranking]}):")
            rows += [f"  {n:<40} {s:.4g}" for n, s, *_ in self.sensitivity[:8]]
        if self.map:
            rows.append(f"{'model':<22} {'mAP50-95':>9} {'mAP50':>7}")
            rows += [f"{k:<22} {v[0]:>9.4f} {v[1]:>7.4f}" for k, v in self.map.items()]
        return "\n".join(rows)


def calibration_batches(data: str | Path, imgsz: int, n: int = 128, split: str = "train", stride: int = 32,
                        verbose: bool = True) -> list[np.ndarray]:
    """``n`` images of a data yaml's split (evenly spaced), each a float32 (1, 3, h, w) batch in [0, 1]
    letterboxed to its rectangle as ``predict`` does."""
    import cv2

    from yoloforge.data.formats import DataError, list_images, load_data_yaml
    from yoloforge.engine.predictor import preprocess

    cfg = load_data_yaml(data)
    source = getattr(cfg, split, None) or cfg.val
    if not source:
        raise DataError(f"{data}: no {split!r} (or 'val') split to calibrate on")
    files = list_images(source)
    if not files:
        raise DataError(f"{data}: the {split} split has no images")
    pick = np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int))
    out, bad = [], 0
    for i in pick:
        img = cv2.imread(str(files[i]))
        if img is None:
            bad += 1
            continue
        out.append(preprocess([img], imgsz, stride)[0])
    if bad:
        LOG.warning(f"calibration: {bad} unreadable image(s) skipped")
    if not out:
        raise DataError(f"{data}: no readable calibration image")
    if verbose:
        LOG.info(f"calibration: {len(out)} images of {source}")
    return out


class _Reader:
    """onnxruntime CalibrationDataReader over a list of batches."""

    def __init__(self, batches, input_name: str = "images"):
        self.batches, self.name, self.i = batches, input_name, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def conv_node_names(onnx_path: str | Path) -> dict[str, str]:
    """Fused-model module name -> ONNX Conv node name (matched through the weight initializer's name,
    ``model.<module>.weight``, which the exporter keeps)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    out = {}
    for node in proto.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].endswith(".weight"):
            out[node.input[1].removeprefix("model.").removesuffix(".weight")] = node.name
    return out


def quantize_onnx(fp32_onnx: str | Path, out_path: str | Path, batches: list[np.ndarray],
                  exclude_nodes: list[str] = (), meta: dict | None = None, op_types=QUANT_OPS) -> Path:
    """Static int8 QDQ quantization of an exported ``.onnx`` (see the module docstring); atomic write."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from yoloforge.export.onnx import atomic_write, read_onnx_meta, set_meta

    out_path = Path(out_path)
    md = dict(read_onnx_meta(fp32_onnx), **(meta or {}))
    with tempfile.TemporaryDirectory(prefix="yoloforge-quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude_nodes),
                        op_types_to_quantize=list(op_types))
        proto = onnx.load(str(q))
    set_meta(proto, dict(md, int8=True, int8_excluded=list(exclude_nodes), calib_images=len(batches)))
    return atomic_write(out_path, lambda p: onnx.save(proto, p))


def quantize(weights: str | Path, data: str | Path, out_dir: str | Path | None = None, imgsz: int | None = None,
             n_calib: int = 128, skip: int = 0, exclude: list[str] = (), sensitivity: bool = True,
             openvino: bool = True, evaluate: bool = True, batch: int = 16, warn_drop: float = 0.02,
             verbose: bool = True, rank: str = "output") -> QuantReport:
    """The whole PTQ pipeline of the module docstring for one ``.safetensors`` (or official) weights file."""
    from yoloforge.export.onnx import export_onnx
    from yoloforge.export.runtime import max_stride

    weights = Path(weights)
    model, meta = _torch_weights(weights)
    imgsz = int(imgsz or meta.get("imgsz") or 640)
    out_dir = Path(out_dir) if out_dir else weights.parent / f"{weights.stem}_int8"
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.deployed().cpu()
    stride = max_stride(model)
    fp32 = export_onnx(model, out_dir / "model_fp32.onnx", imgsz=imgsz, dynamic=True, names=model.names,
                       meta={"source_weights": weights.name})
    batches = calibration_batches(data, imgsz, n_calib, stride=stride, verbose=verbose)
    rep = QuantReport(calib_images=len(batches))
    names = conv_node_names(fp32)
    skip_names = list(exclude)
    if sensitivity or skip:
        skip_names = rank_layers(rep, model, data, batches, out_dir, skip, skip_names, rank, imgsz, batch, verbose)
    unknown = [n for n in skip_names if n not in names]
    if unknown:
        raise ValueError(f"--exclude: no convolution named {unknown[0]!r} in the fused model "
                         f"(names look like {next(iter(names), '?')!r}; see sensitivity.csv)")
    rep.excluded = skip_names
    q = quantize_onnx(fp32, out_dir / "model_int8.onnx", batches, [names[n] for n in skip_names],
                      meta={"int8_excluded_layers": skip_names})
    rep.onnx = str(q)
    if openvino:
        from yoloforge.export.openvino import onnx_to_openvino

        rep.openvino = str(onnx_to_openvino(q, out_dir / "model_int8_openvino"))
    if evaluate and data:
        rep.map = _compare_map(model, data, [("int8-onnxruntime", q)] + ([("int8-openvino", Path(rep.openvino))]
                                                                        if rep.openvino else []), imgsz, batch)
        drop = rep.map["fp32"][0] - min(v[0] for k, v in rep.map.items() if k != "fp32")
        if drop > warn_drop:
            LOG.warning(f"int8 loses {drop:.3f} mAP50-95: keep the most sensitive layers in float with --skip K "
                        f"(ranking in {out_dir / 'sensitivity.csv'})")
    (out_dir / "report.json").write_text(json.dumps(asdict(rep), indent=1))
    return rep


def rank_layers(rep: QuantReport, fused, data, batches, out_dir: Path, skip: int, exclude: list[str], rank: str,
                imgsz: int, batch: int, verbose: bool) -> list[str]:
    """The per-layer sensitivity into ``rep`` and sensitivity.csv/png; returns ``exclude`` + the ``skip`` most
    sensitive layers."""
    from yoloforge.quant.sensitivity import layer_sensitivity

    ev = _torch_map(data, imgsz, batch) if rank == "map" else None
    ranked = layer_sensitivity(fused, batches[:8], verbose=verbose, evaluate=ev, rank=rank)
    rep.sensitivity = [[s.name, s.shown(rank), s.score_err, s.box_err, s.mse, s.snr_db, s.cosine, s.map_drop]
                       for s in ranked]
    rep.ranking = rank
    _write_sensitivity(ranked, out_dir, rank)
    return list(exclude) + [s.name for s in ranked[:skip] if s.name not in exclude]


def _torch_weights(weights: Path):
    """(model, meta) of the torch weights a quantizer starts from; refuses an exported model."""
    from yoloforge.weights import load_model

    if weights.suffix.lower() in (".onnx", ".xml") or weights.is_dir():
        raise ValueError(f"{weights}: quantizing needs the torch weights (.safetensors or an official checkpoint)")
    return load_model(weights)


def _compare_map(fused, data, quantized, imgsz, batch) -> dict:
    """mAP50-95 / mAP50 on the val split of the fused fp32 model and of each ``(kind, exported path)``."""
    from yoloforge.engine.evaluator import evaluate_data
    from yoloforge.export.runtime import load_backend

    res = {}
    m = evaluate_data(fused, data, imgsz, batch=batch, verbose=False)
    res["fp32"] = (m.map, m.map50)
    for kind, path in quantized:
        m = evaluate_data(load_backend(str(path)), data, imgsz, batch=batch, verbose=False)
        res[kind] = (m.map, m.map50)
    return res


def _torch_map(data, imgsz: int, batch: int):
    """``evaluate(model) -> mAP50-95`` of a torch model on the val split (one loader, built once)."""
    from yoloforge.data.dataset import DetectionDataset
    from yoloforge.data.formats import load_data_yaml
    from yoloforge.data.loader import build_dataloader
    from yoloforge.engine.evaluator import evaluate

    cfg = load_data_yaml(data)
    if not cfg.val:
        raise ValueError(f"{data}: --sensitivity map needs a val split")
    ds = DetectionDataset(cfg.val, cfg.names, imgsz=imgsz, augment=False, verbose=False, stride=32, rect_batch=batch)
    loader = build_dataloader(ds, batch, 0, shuffle=False, seed=0)
    return lambda model: evaluate(model, loader, cfg.names, verbose=False).map


def _write_sensitivity(ranked, out_dir: Path, rank: str = "output") -> None:
    rows = [f"rank ({rank}),layer,output_err,score_err,box_err,mse,snr_db,cosine,map_drop,input_min,input_max,params"]
    rows += [f"{i + 1},{s.name},{s.sensitivity:.6g},{s.score_err:.6g},{s.box_err:.6g},{s.mse:.6g},{s.snr_db:.6g},"
             f"{s.cosine:.8g},{s.map_drop:.6g},{s.in_range[0]:.6g},{s.in_range[1]:.6g},{s.params}"
             for i, s in enumerate(ranked)]
    (out_dir / "sensitivity.csv").write_text("\n".join(rows) + "\n")
    from yoloforge.utils.plots import plot_sensitivity

    from yoloforge.quant.sensitivity import RANKINGS

    plot_sensitivity([s.name for s in ranked], [s.shown(rank) for s in ranked], out_dir / "sensitivity.png",
                     xlabel=RANKINGS[rank])
