"""``Detector``: the Python face of the CLI verbs.

>>> from yoloforge import Detector
>>> d = Detector("yolov6n")                       # a registered name, untrained
>>> best = d.train(data="data.yaml", epochs=50)   # -> path of best weights; d now holds them
>>> m = d.val(data="data.yaml"); m.map50
>>> for r in d.predict("images/", stream=True): print(r.boxes, r.classes)
"""
from __future__ import annotations

from pathlib import Path

import torch

from yoloforge.config import PREDICT_NMS, VAL_NMS
from yoloforge.utils.logging import get_logger

LOG = get_logger()


def is_exported(src: str) -> bool:
    p = Path(src)
    return p.suffix.lower() in (".onnx", ".xml") or (p.is_dir() and (p / "model.xml").is_file())


def default_device(device: str = "") -> str:
    if device:
        return f"cuda:{device}" if device.isdigit() else device
    return "cuda" if torch.cuda.is_available() else "cpu"


class Detector:
    def __init__(self, model: str | Path = "yolov6n", nc: int = 80, names: list[str] | None = None, device: str = "",
                 cfg: str | Path | None = None, pretrained: bool = False, **build_kw):
        """``model``: a registered name (untrained), yoloforge ``.safetensors`` weights, an exported ``.onnx`` /
        OpenVINO ``.xml``, an already opened runtime (:class:`yoloforge.export.runtime.Backend`), or an
        official checkpoint (yolov7 / YOLOv6 / ScaledYOLOv4 ``.pt``, darknet ``.weights`` with its ``cfg``),
        converted safely on the fly. ``pretrained=True`` with a registered name loads the official COCO weights
        of that model (downloaded once, see :mod:`yoloforge.hub`); so does a release file name such as
        ``"yolov7_training.pt"`` that is not a local file. ``build_kw``: build options of a registered name, e.g.
        ``Detector("yolov6s", training_mode="hyper_search")`` (YOLOv6's RepOpt modes) or ``dropblock=0.1`` (yolov4)."""
        from yoloforge.export.runtime import Backend
        from yoloforge.families.registry import build_model
        from yoloforge.weights import load_model

        self.device = default_device(device)
        self.meta: dict = {}
        self.backend = None  # an exported model (ONNX / OpenVINO) run through yoloforge.export.runtime
        self._source: Path | None = None  # an official checkpoint this Detector was converted from
        src = str(model)
        if not isinstance(model, Backend) and not Path(src).exists():
            from yoloforge import hub

            if pretrained or hub.is_release_name(src):
                src = str(hub.pretrained(src))
        elif pretrained:
            raise ValueError(f"pretrained=True takes a model name (yolov7-tiny), not a file: {src}")
        if isinstance(model, Backend) or is_exported(src):
            from yoloforge.export import load_backend

            self.backend = model if isinstance(model, Backend) else load_backend(src)
            self.model, self.meta, self.weights = None, dict(self.backend.meta), Path(self.backend.path)
        elif src.endswith(".safetensors"):
            self.model, self.meta = load_model(src)
            self.weights = Path(src)
        elif Path(src).is_file():
            self.model, self.meta = load_model(src, cfg=cfg)
            self.weights = None  # not a yoloforge file (training and quantize start from the converted model)
            self._source = Path(src)  # runtimes cache their export beside it, keyed by its hash
        else:
            self.model = build_model(src, nc=len(names) if names else nc, **build_kw)
            self.model.names = list(names) if names else [str(i) for i in range(self.model.nc)]
            self.weights = None
            self._build_kw = dict(build_kw)  # train() builds it afresh from the name, as `yoloforge train --model`
        if build_kw and not hasattr(self, "_build_kw"):
            raise ValueError(f"build options {sorted(build_kw)} apply to a registered model name, not to {src}")

    @property
    def names(self) -> list[str]:
        return list(self.backend.names if self.backend is not None else self.model.names)

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def imgsz(self) -> int:
        return int(self.meta.get("imgsz") or 640)

    # ------------------------------------------------------------------ verbs
    def train(self, data: str, callbacks=None, hooks=(), **cfg) -> Path:
        """Train (or fine-tune, when this Detector holds weights); returns the best weights' path.
        ``callbacks``: see :mod:`yoloforge.engine.callbacks` (observe the run); ``hooks``: see
        :mod:`yoloforge.engine.hooks` (change a training step: a technique of your own)."""
        from yoloforge.config import TrainConfig
        from yoloforge.engine.trainer import Trainer

        if self.backend is not None:
            raise ValueError(f"{self.weights}: an exported model cannot be trained; train from .safetensors weights")
        resume_epochs = cfg.get("epochs") if cfg.get("resume") else None
        if self.weights is not None and "weights" not in cfg:
            cfg["weights"] = str(self.weights)
        cfg.setdefault("model", self.model.name)
        cfg.setdefault("device", self.device)
        given = self.model
        if hasattr(self, "_build_kw") and self.weights is None and self._source is None:
            given = None  # untrained, from a name: the trainer builds (and initializes) it as the CLI does
            cfg.setdefault("model_kw", {k: v for k, v in self._build_kw.items() if k != "training_mode"})
            if "training_mode" in self._build_kw:
                cfg.setdefault("training_mode", self._build_kw["training_mode"])
        trainer = Trainer(TrainConfig.from_dict(dict(cfg, data=str(data))),
                          model=None if cfg.get("weights") else given, resume_epochs=resume_epochs,
                          callbacks=callbacks, hooks=hooks)
        best = trainer.train()
        if Path(best).exists():
            from yoloforge.weights import load_model

            self.model, self.meta = load_model(best)
            self.weights = Path(best)
        return Path(best)

    def val(self, data: str, split: str = "val", imgsz: int | None = None, batch: int = 16, conf: float = VAL_NMS.conf,
            iou: float = VAL_NMS.iou, workers: int = 2, save_json: bool = False, save_dir: str | Path | None = None,
            plots: bool = False, verbose: bool = True, rect: bool = True, backend: str = "torch"):
        """COCO mAP on a split of a data yaml; returns :class:`~yoloforge.engine.evaluator.Metrics`.

        ``rect``: rectangular batches (images grouped by aspect ratio, each batch letterboxed to its own
        stride-multiple rectangle with half a stride of margin) as the official test scripts evaluate; used
        where the model takes any height/width (torch, runtimes exported with ``--dynamic``), else square.
        ``backend``: as in :meth:`predict`, always at fp32 (``"auto"``: on a CPU the fastest runtime,
        exported once and cached; the same mAP as torch to within float rounding).
        """
        from yoloforge.engine.evaluator import evaluate_data

        if self.backend is not None and self.backend.nms_in_graph:
            raise ValueError(f"{self.weights}: has NMS inside the graph (fixed thresholds), so mAP would be wrong; "
                             f"validate a model exported without --nms")
        if self.backend is not None and imgsz and imgsz != self.backend.imgsz:
            raise ValueError(f"{self.weights}: exported for imgsz {self.backend.imgsz}, not {imgsz}")
        m = evaluate_data(self.runtime(backend, imgsz, precision="fp32"), data, imgsz or self.imgsz, split=split,
                          batch=batch, conf=conf, iou=iou, workers=workers, rect=rect, device=self.device,
                          save_json=save_json, save_dir=save_dir, plots=plots, verbose=verbose)
        if verbose:
            LOG.info(m.table())
        return m

    def predict(self, source, stream: bool = False, imgsz: int | None = None, conf: float = PREDICT_NMS.conf,
                iou: float = PREDICT_NMS.iou, max_det: int = PREDICT_NMS.max_det, classes: list[int] | None = None,
                batch: int = 1, nms: str = "iou", backend: str = "torch", rect: bool = True, precision: str = "auto"):
        """Results for every image/frame of ``source``; a generator when ``stream`` (use it for videos).

        ``backend``: ``"torch"`` (the fused model), ``"auto"`` (on a CPU the fastest runtime installed:
        OpenVINO, else ONNX Runtime, else torch; exported once and cached beside the weights), or a runtime
        name (``"onnxruntime"``, ``"openvino"``). ``rect``: letterbox to the smallest stride-multiple
        rectangle instead of the square where the runtime takes any size (same scale, fewer pixels).
        ``precision`` (OpenVINO only): ``"auto"`` is the CPU's native precision (bf16 on AVX512-BF16/AMX
        CPUs, about 1.8x faster, mAP within a few thousandths), ``"fp32"`` exact.
        """
        return self.predictor(imgsz, conf, iou, max_det, classes, batch, nms, backend, rect, precision)(
            source, stream=stream)

    def predictor(self, imgsz=None, conf=PREDICT_NMS.conf, iou=PREDICT_NMS.iou, max_det=PREDICT_NMS.max_det, classes=None, batch=1, nms="iou",
                  backend: str = "torch", rect: bool = True, precision: str = "auto"):
        from yoloforge.engine.predictor import Predictor

        model = self.runtime(backend, imgsz, precision)
        return Predictor(model, self.names, imgsz=imgsz or getattr(model, "imgsz", None) or self.imgsz, conf=conf,
                         iou=iou, max_det=max_det, classes=classes, batch=batch, device=self.device, nms_kind=nms,
                         rect=rect)

    def runtime(self, backend: str = "torch", imgsz: int | None = None, precision: str = "fp32"):
        """The callable that runs the model: the fused torch module or an exported runtime."""
        if self.backend is not None:
            return self.backend
        path = self.weights or self._source
        if backend == "torch" or (backend == "auto" and (self.device != "cpu" or path is None)):
            return self._deploy_model()
        if path is None:
            raise ValueError("runtime backends need saved weights: save() or train() first")
        from yoloforge.export import best_cpu_backend

        prefer = None if backend == "auto" else [backend]
        rt, msg = best_cpu_backend(path, imgsz=imgsz or self.imgsz, prefer=prefer, precision=precision,
                                   loaded=(self.model, self.meta))
        LOG.info(msg)
        return rt

    def export(self, format: str = "onnx", path: str | Path | None = None, **kw) -> Path:
        """Write the fused model as ``onnx`` / ``openvino`` (or a TensorRT ``engine`` on CUDA); returns the path."""
        from yoloforge.export import export, export_engine

        if self.model is None:
            raise ValueError(f"{self.weights}: already exported; export from .safetensors weights")
        base = self.weights.with_suffix("") if self.weights is not None else Path(self.model.name)
        fmt = format.lower()
        kw.setdefault("imgsz", self.imgsz)
        kw.setdefault("names", self.names)
        if fmt in ("engine", "tensorrt", "trt"):
            onnx = export(self.model, "onnx", Path(f"{base}.onnx"), **kw)
            return Path(export_engine(onnx, path or Path(f"{base}.engine"), half=kw.get("half", True)))
        default = Path(f"{base}.onnx") if fmt == "onnx" else Path(f"{base}_openvino")
        return Path(export(self.model, fmt, Path(path) if path else default, **kw))

    def quantize(self, data: str, **kw):
        """int8 post-training quantization (:func:`yoloforge.quant.ptq.quantize`: calibration on ``data``'s
        train split, per-layer sensitivity, ``skip=K`` most sensitive convolutions kept in float, fp32 vs
        int8 mAP on its val split); returns the :class:`~yoloforge.quant.ptq.QuantReport` (paths, mAP)."""
        from yoloforge.quant.ptq import quantize

        if self.weights is None or self.model is None:
            raise ValueError("quantize needs .safetensors weights: `yoloforge convert` an official checkpoint, "
                             "or save() / train() first")
        return quantize(self.weights, data, **kw)

    def info(self, imgsz: int = 640) -> dict:
        if self.model is None:
            raise ValueError(f"{self.weights}: info needs the torch model (.safetensors)")
        from yoloforge.utils.flops import model_info

        return model_info(self.model, imgsz)

    def fuse(self) -> "Detector":
        self.model.fuse()
        return self

    def save(self, path: str | Path) -> Path:
        from yoloforge.utils.checkpoint import save_weights

        return save_weights(path, self.model, dict(self.meta, names=self.names))

    def _deploy_model(self):
        """A fused copy on the device (the Detector's own model stays trainable)."""
        return self.model.deployed().to(self.device).eval()
