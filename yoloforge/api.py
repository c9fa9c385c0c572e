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

from yoloforge.utils.logging import get_logger

LOG = get_logger()


def default_device(device: str = "") -> str:
    if device:
        return f"cuda:{device}" if device.isdigit() else device
    return "cuda" if torch.cuda.is_available() else "cpu"


class Detector:
    def __init__(self, model: str | Path = "yolov6n", nc: int = 80, names: list[str] | None = None, device: str = ""):
        from yoloforge.models.registry import build_model
        from yoloforge.utils.checkpoint import load_model

        self.device = default_device(device)
        self.meta: dict = {}
        src = str(model)
        if src.endswith(".safetensors") or Path(src).is_file():
            if not src.endswith(".safetensors"):
                raise ValueError(f"{src}: yoloforge loads .safetensors weights written by yoloforge")
            self.model, self.meta = load_model(src)
            self.weights = Path(src)
        else:
            self.model = build_model(src, nc=len(names) if names else nc)
            self.model.names = list(names) if names else [str(i) for i in range(self.model.nc)]
            self.weights = None

    @property
    def names(self) -> list[str]:
        return list(self.model.names)

    @property
    def imgsz(self) -> int:
        return int(self.meta.get("imgsz", 640))

    # ------------------------------------------------------------------ verbs
    def train(self, data: str, **cfg) -> Path:
        """Train (or fine-tune, when this Detector holds weights); returns the best weights' path."""
        from yoloforge.config import TrainConfig
        from yoloforge.engine.trainer import Trainer

        resume_epochs = cfg.get("epochs") if cfg.get("resume") else None
        if self.weights is not None and "weights" not in cfg:
            cfg["weights"] = str(self.weights)
        cfg.setdefault("model", self.model.name)
        cfg.setdefault("device", self.device)
        trainer = Trainer(TrainConfig.from_dict(dict(cfg, data=str(data))),
                          model=None if cfg.get("weights") else self.model, resume_epochs=resume_epochs)
        best = trainer.train()
        if Path(best).exists():
            from yoloforge.utils.checkpoint import load_model

            self.model, self.meta = load_model(best)
            self.weights = Path(best)
        return Path(best)

    def val(self, data: str, split: str = "val", imgsz: int | None = None, batch: int = 16, conf: float = 0.001,
            iou: float = 0.65, workers: int = 2, save_json: bool = False, save_dir: str | Path | None = None,
            plots: bool = False, verbose: bool = True):
        """COCO mAP on a split of a data yaml; returns :class:`~yoloforge.engine.evaluator.Metrics`."""
        from yoloforge.data.dataset import DetectionDataset
        from yoloforge.data.formats import load_data_yaml
        from yoloforge.data.loader import build_dataloader
        from yoloforge.engine.evaluator import evaluate

        cfg = load_data_yaml(data)
        source = getattr(cfg, split, None)
        if not source:
            raise ValueError(f"{data}: no {split!r} split")
        if len(cfg.names) != self.model.nc:
            raise ValueError(f"{data} has {len(cfg.names)} classes but the model predicts {self.model.nc}")
        ds = DetectionDataset(source, cfg.names, imgsz=imgsz or self.imgsz, augment=False, verbose=verbose)
        loader = build_dataloader(ds, batch, workers, shuffle=False, seed=0)
        model = self._deploy_model()
        m = evaluate(model, loader, cfg.names, conf=conf, iou=iou, device=self.device, save_dir=save_dir,
                     save_json=save_json, plots=plots, verbose=verbose)
        if verbose:
            LOG.info(m.table())
        return m

    def predict(self, source, stream: bool = False, imgsz: int | None = None, conf: float = 0.25,
                iou: float = 0.45, max_det: int = 300, classes: list[int] | None = None, batch: int = 1,
                nms: str = "iou"):
        """Results for every image/frame of ``source``; a generator when ``stream`` (use it for videos)."""
        return self.predictor(imgsz, conf, iou, max_det, classes, batch, nms)(source, stream=stream)

    def predictor(self, imgsz=None, conf=0.25, iou=0.45, max_det=300, classes=None, batch=1, nms="iou"):
        from yoloforge.engine.predictor import Predictor

        return Predictor(self._deploy_model(), self.names, imgsz=imgsz or self.imgsz, conf=conf, iou=iou,
                         max_det=max_det, classes=classes, batch=batch, device=self.device, nms_kind=nms)

    def info(self, imgsz: int = 640) -> dict:
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
        import copy

        model = self.model if getattr(self.model, "fused", False) else copy.deepcopy(self.model).fuse()
        return model.to(self.device).eval()
