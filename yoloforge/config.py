"""Typed configuration: the training config and the hyper-parameter presets of each family.

A preset is a flat dict: optimizer, schedule, loss and augmentation knobs in one place. A family
selects its preset by name (``model.default_hyp``); a user overrides any key with ``--hyp file.yaml``
or ``--hyp-override key=value``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Shared by every family (YOLOv5-style recipe that YOLOv6 0.2.0 and YOLOv7 both start from).
_COMMON = dict(
    lr0=0.01,  # initial learning rate (SGD)
    lrf=0.01,  # final lr = lr0 * lrf (cosine)
    momentum=0.937,
    weight_decay=5e-4,
    warmup_epochs=3.0,
    warmup_momentum=0.8,
    warmup_bias_lr=0.1,
    nesterov=True,
    cos_lr=True,
    ema_decay=0.9999,
    ema_tau=2000.0,
    grad_clip=10.0,  # max gradient norm, 0 disables
    # augmentation
    hsv_h=0.015,
    hsv_s=0.7,
    hsv_v=0.4,
    degrees=0.0,
    translate=0.1,
    scale=0.5,
    shear=0.0,
    perspective=0.0,
    flipud=0.0,
    fliplr=0.5,
    mosaic=1.0,
    mixup=0.0,
    cutmix=0.0,  # CutMix probability (YOLOv4 BoF)
    multi_scale=False,  # random input size per batch, 0.5x..1.5x (YOLOv4 BoF)
    sat_eps=0.0,  # self-adversarial training step size (0 = off; YOLOv4 BoF)
    cmbn=False,  # cross mini-batch normalization over the accumulation window (YOLOv4)
)

HYP_PRESETS: dict[str, dict[str, Any]] = {
    # meituan/YOLOv6@0.2.0 configs/yolov6s.py solver + data_aug; loss weights and assigner settings
    # from yolov6/models/loss.py defaults (class 1.0, iou 2.5, dfl 0.5; ATSS warm-up 4 epochs).
    "yolov6": dict(
        _COMMON,
        loss_cls=1.0,
        loss_iou=2.5,
        loss_dfl=0.5,
        atss_warmup_epochs=4,
        atss_topk=9,
        tal_topk=13,
        tal_alpha=1.0,
        tal_beta=6.0,
    ),
    # WongKinYiu/yolov7 data/hyp.scratch.p5.yaml (box/cls/obj gains are scaled at run time by the number of
    # levels, classes and image size, as in its train.py)
    "p5": dict(
        _COMMON, lrf=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.2, scale=0.9, mixup=0.15, paste_in=0.15, loss_ota=1, aux_weight=0.25,
    ),
    # data/hyp.scratch.tiny.yaml
    "tiny": dict(
        _COMMON, lrf=0.01, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.1, scale=0.5, mixup=0.05, paste_in=0.05, loss_ota=1, aux_weight=0.25,
    ),
    # data/hyp.scratch.p6.yaml
    "p6": dict(
        _COMMON, lrf=0.2, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.2, scale=0.9, mixup=0.15, paste_in=0.15, loss_ota=1, aux_weight=0.25,
    ),
    # Scaled-YOLOv4: WongKinYiu/ScaledYOLOv4@yolov4-csp data/hyp.scratch.yaml (CIoU and iou_t 0.2 agree with
    # darknet cfg/yolov4-csp.cfg iou_thresh=0.2). label_smoothing 0 as in the official training (the YOLOv4
    # paper's BoF value is 0.1).
    "yolov4": dict(
        _COMMON, lrf=0.2, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        label_smoothing=0.0, iou_loss="ciou", gr=1.0, anchor_match="iou", neighbor_cells=True,
        translate=0.1, scale=0.9, mosaic=1.0, mixup=0.0,
    ),
}

# Per-variant differences inside a family (sources: meituan/YOLOv6@0.2.0 configs/yolov6{n,m,l}.py).
VARIANT_HYP: dict[str, dict[str, Any]] = {
    "yolov6n": dict(lr0=0.02),
    "yolov6t": dict(lr0=0.01),
    "yolov6m": dict(mixup=0.1),
    "yolov6l": dict(mixup=0.1),
    # ScaledYOLOv4@yolov4-large data/hyp.scratch.yaml
    "yolov4-p5": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9),
    "yolov4-p6": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9),
    "yolov4-p7": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9),
}


def parse_value(text: str) -> Any:
    """Parse a command-line value the way YAML would (numbers, booleans, lists)."""
    return yaml.safe_load(text)


def load_hyp(preset: str, model_name: str = "", source: str | Path | dict | None = None,
             overrides: dict | None = None) -> dict[str, Any]:
    """Return the hyper-parameters for a model: family preset, then variant, then file, then overrides."""
    if preset not in HYP_PRESETS:
        raise ValueError(f"unknown hyper-parameter preset {preset!r}; known: {', '.join(sorted(HYP_PRESETS))}")
    hyp = dict(HYP_PRESETS[preset])
    hyp.update(VARIANT_HYP.get(model_name, {}))
    if isinstance(source, (str, Path)) and str(source) in HYP_PRESETS:
        hyp.update(HYP_PRESETS[str(source)])
    elif isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"hyp file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a hyp file must be a mapping of key: value")
        hyp.update(data)
    elif isinstance(source, dict):
        hyp.update(source)
    for k, v in (overrides or {}).items():
        if k not in hyp:
            raise ValueError(f"unknown hyper-parameter {k!r}; known: {', '.join(sorted(hyp))}")
        hyp[k] = v
    _check_hyp(hyp)
    return hyp


def _check_hyp(hyp: dict) -> None:
    for key in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs"):
        v = hyp.get(key)
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"hyp {key} must be a non-negative number, got {v!r}")
    for key in ("mosaic", "mixup", "cutmix", "fliplr", "flipud"):
        v = hyp.get(key)
        if not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"hyp {key} is a probability in [0, 1], got {v!r}")


@dataclass
class TrainConfig:
    """Everything ``yoloforge train`` accepts. Field names are the CLI flags (``--close-mosaic``)."""

    model: str = "yolov6n"
    model_kw: dict = field(default_factory=dict)  # extra build options, e.g. {"dropblock": 0.1, "sam": True}
    data: str = ""
    epochs: int = 100
    imgsz: int = 640
    batch: int = 16
    nbs: int = 64  # nominal batch size: gradients accumulate up to it
    workers: int = 2
    device: str = ""  # "" = cuda:LOCAL_RANK if available else cpu
    weights: str = ""  # start from these weights (yoloforge .safetensors)
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str = ""  # path to a run dir or its weights/last.state.pt; "auto" = newest run
    hyp: str = ""  # preset name or yaml file
    hyp_override: dict = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = False
    amp: bool = True  # used on CUDA only
    val_interval: int = 1
    close_mosaic: int = 15  # epochs at the end trained without mosaic/mixup
    patience: int = 0  # stop after this many epochs without improvement (0 = never)
    sync_bn: bool = False
    cache: str = ""  # "" or "ram"
    save_period: int = 0  # also keep weights/epochN.safetensors every N epochs
    conf: float = 0.001  # validation thresholds
    iou: float = 0.65
    plots: bool = True
    verbose: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "imgsz": self.imgsz >= 32 and self.imgsz % 32 == 0,
            "batch": self.batch >= 1,
            "nbs": self.nbs >= 1,
            "workers": self.workers >= 0,
            "val_interval": self.val_interval >= 1,
            "close_mosaic": self.close_mosaic >= 0,
            "patience": self.patience >= 0,
            "conf": 0 <= self.conf <= 1,
            "iou": 0 < self.iou <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            rule = "a multiple of 32, at least 32" if k == "imgsz" else "out of range"
            raise ValueError(f"bad config value {k}={getattr(self, k)!r}: {rule}")
        if self.cache not in ("", "ram"):
            raise ValueError(f"bad config value cache={self.cache!r}: use '' or 'ram'")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
