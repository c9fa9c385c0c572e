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

# Shared by every family: the training loop of the official scripts (WongKinYiu/yolov7 train.py,
# ScaledYOLOv4 train.py, meituan/YOLOv6@0.2.0 yolov6/core/engine.py + solver/build.py; they agree on all of it).
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
    # the official loop (README "Differences from the official code" lists each switch):
    warmup_min_iters=1000,  # warm-up is max(round(warmup_epochs * batches), 1000) iterations
    warmup_max_fraction=0.0,  # 0 = no cap (official); yoloforge's small-data recipe caps it at 1/3 of the run
    warmup_accumulate=True,  # gradient accumulation ramps from 1 to nbs/batch over the warm-up
    sched_lag=True,  # after warm-up epoch e uses lf(e - 1): LambdaLR stepped once per epoch after it
    grad_clip=0.0,  # max gradient norm, 0 = no clipping (no official repo clips)
    step_rule="modulo",  # optimizer step when it % accumulate == 0 (yolov7, ScaledYOLOv4); "since_last": YOLOv6
    shuffle=True,
    close_mosaic=0,  # epochs at the end without mosaic/mixup (YOLOv6: 15, its --stop_aug_last_n_epoch)
    init_fp16_round=False,  # yolov7 train.py rounds the initial weights through fp16 once
    # augmentation
    hsv_h=0.015,
    hsv_s=0.7,
    hsv_v=0.4,
    degrees=0.0,
    translate=0.1,
    scale=0.5,
    scale_bias=0.0,  # scale gain in [1 - scale, 1 + scale + scale_bias]
    shear=0.0,
    perspective=0.0,
    flipud=0.0,
    fliplr=0.5,
    mosaic=1.0,
    mosaic9=0.0,  # share of the mosaics made of 9 images instead of 4 (yolov7: 0.2)
    mosaic_shuffle=False,  # the sample's own image on a random tile of the 4-image mosaic (YOLOv6), else top left
    mixup=0.0,
    mixup_beta=8.0,  # MixUp ratio ~ Beta(b, b): 8 in yolov7 / ScaledYOLOv4 utils/datasets.py, 32 in YOLOv6
    cutmix=0.0,  # CutMix probability (YOLOv4 BoF)
    multi_scale=False,  # random input size per batch, 0.5x..1.5x (YOLOv4 BoF)
    sat_eps=0.0,  # self-adversarial training step size (0 = off; YOLOv4 BoF)
    cmbn=False,  # cross mini-batch normalization over the accumulation window (YOLOv4)
)

# yolov7 utils/datasets.py __getitem__: load_mosaic if random.random() < 0.8 else load_mosaic9 (the second
# sample of a MixUp too)
_YOLOV7 = dict(simota_dedup=False, lead_topk=0, shuffle=False, init_fp16_round=True, scale_bias=0.1, mosaic9=0.2)

HYP_PRESETS: dict[str, dict[str, Any]] = {
    # meituan/YOLOv6@0.2.0 configs/yolov6s.py solver + data_aug; loss weights and assigner settings from
    # yolov6/models/loss.py defaults (class 1.0, iou 2.5, dfl 0.5; ATSS warm-up 4 epochs); engine.py: the
    # step rule, tools/train.py: --stop_aug_last_n_epoch 15; data_augment.py mixup Beta(32, 32).
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
        score_sum="raw",
        assign_argmax_positive=False,
        step_rule="since_last",
        train_alpha=False,  # solver/build.py groups only .weight/.bias attributes: BottleRep's alpha is never stepped
        close_mosaic=15,
        mixup_beta=32.0,
        mosaic_shuffle=True,  # yolov6/data/datasets.py get_mosaic: random.shuffle(indices)
        # self-distillation (--distill): class / DFL term weights (configs/yolov6{m,l}.py@0.2.0 head.distill_weight;
        # 0.2.0's N/T/S configs have none -- its distillation needs one -- so they take HEAD's configs/yolov6{n,s}.py
        # values 1.0 / 1.0), the channel-wise term's weight (loss_distill.py loss_weight cwd 10.0), and the teacher's
        # BN mode ("batch": engine.py get_teacher_model sets track_running_stats=False)
        distill_cls=1.0,
        distill_dfl=1.0,
        distill_cwd=10.0,
        distill_teacher_bn="batch",
    ),
    # WongKinYiu/yolov7 data/hyp.scratch.p5.yaml (box/cls/obj gains are scaled at run time by the number of
    # levels, classes and image size, as in its train.py). paste_in needs polygon segments: not built.
    "p5": dict(
        _COMMON, **_YOLOV7, lrf=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.2, scale=0.9, mixup=0.15, paste_in=0.15, loss_ota=1, aux_weight=0.25,
    ),
    # data/hyp.scratch.tiny.yaml
    "tiny": dict(
        _COMMON, **_YOLOV7, lrf=0.01, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.1, scale=0.5, mixup=0.05, paste_in=0.05, loss_ota=1, aux_weight=0.25,
    ),
    # data/hyp.scratch.p6.yaml
    "p6": dict(
        _COMMON, **_YOLOV7, lrf=0.2, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.2, scale=0.9, mixup=0.15, paste_in=0.15, loss_ota=1, aux_weight=0.25,
    ),
    # Scaled-YOLOv4: WongKinYiu/ScaledYOLOv4@yolov4-csp data/hyp.scratch.yaml; loss utils/loss.py
    # compute_loss: CIoU, anchors by the wh-ratio rule (anchor_t; its iou_t line is commented out),
    # label_smoothing 0 (the YOLOv4 paper's BoF value is 0.1); loader without shuffle.
    "yolov4": dict(
        _COMMON, lrf=0.2, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        label_smoothing=0.0, iou_loss="ciou", gr=1.0, anchor_match="ratio", neighbor_cells=True,
        neighbor_rule="fraction", translate=0.1, scale=0.9, mosaic=1.0, mixup=0.0, shuffle=False,
    ),
}

# Named recipes laid over a family preset (``--hyp small-data``): not the official training, each key a
# documented deviation. "small-data" is yoloforge's recipe before the official mode: a warm-up of at least
# 100 iterations but at most a third of the run (the official 1000-iteration minimum is the whole of a short
# run on a small dataset), gradient clipping at norm 10, the YOLOv6 normalizer max(sum, 1), shuffled
# batches and mosaic closed for the last 15 epochs in every family.
RECIPES: dict[str, dict[str, Any]] = {
    "small-data": dict(warmup_min_iters=100, warmup_max_fraction=1 / 3, grad_clip=10.0, score_sum="clamp1",
                       shuffle=True, close_mosaic=15, sched_lag=False, warmup_accumulate=False, step_rule="epoch"),
}

# Per-variant differences inside a family (sources: meituan/YOLOv6@0.2.0 configs/yolov6{n,t,m,l,l_relu}.py).
VARIANT_HYP: dict[str, dict[str, Any]] = {
    "yolov6n": dict(lr0=0.02),
    "yolov6t": dict(lr0=0.01),
    "yolov6m": dict(scale=0.9, mixup=0.1),
    "yolov6l": dict(scale=0.9, mixup=0.1, distill_cls=2.0),
    "yolov6l-relu": dict(scale=0.9, mixup=0.1, distill_cls=2.0),
    # ScaledYOLOv4@yolov4-large data/hyp.scratch.yaml; its train.py: warm-up momentum 0.9, lr floor 0.2
    # (cosine * 0.8 + 0.2), mosaic always; its utils/general.py build_targets picks the right / lower
    # neighbour cell by the inverse-fraction rule (as yolov7)
    "yolov4-p5": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9, neighbor_rule="inverse"),
    "yolov4-p6": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9, neighbor_rule="inverse"),
    "yolov4-p7": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9, neighbor_rule="inverse"),
    # no PyTorch recipe exists for the darknet-decoded tiny model: darknet's [yolo] iou_thresh rule
    "yolov4-tiny": dict(anchor_match="iou"),
}


def parse_value(text: str) -> Any:
    """Parse a command-line value the way YAML would (numbers, booleans, lists), with every number form Python
    reads (YAML 1.1 takes ``1e-3`` for a string); a YAML error is a ValueError naming the text."""
    t = str(text).strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    try:
        return yaml.safe_load(t)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot read value {text!r} ({str(e).splitlines()[0]})") from None


def _numbers(d: dict) -> dict:
    """Strings that are numbers (``1e-3`` in a YAML 1.1 file) become numbers."""
    out = {}
    for k, v in d.items():
        if isinstance(v, str):
            try:
                v = float(v) if any(c in v for c in ".eE") else int(v)
            except ValueError:
                pass
        out[k] = v
    return out


def load_hyp(preset: str, model_name: str = "", source: str | Path | dict | None = None,
             overrides: dict | None = None) -> dict[str, Any]:
    """Return the hyper-parameters for a model: family preset, then variant, then file, then overrides."""
    if preset not in HYP_PRESETS:
        raise ValueError(f"unknown hyper-parameter preset {preset!r}; known: {', '.join(sorted(HYP_PRESETS))}")
    hyp = dict(HYP_PRESETS[preset])
    hyp.update(VARIANT_HYP.get(model_name, {}))
    if isinstance(source, (str, Path)) and str(source) in RECIPES:
        hyp.update(RECIPES[str(source)])
    elif isinstance(source, (str, Path)) and str(source) in HYP_PRESETS:
        hyp.update(HYP_PRESETS[str(source)])
    elif isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"hyp file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{p}{where}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a hyp file must be a mapping of key: value")
        hyp.update(_numbers(data))
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
    if hyp.get("step_rule", "modulo") not in ("modulo", "since_last", "epoch"):
        raise ValueError(f"hyp step_rule must be modulo, since_last or epoch, got {hyp.get('step_rule')!r}")
    for key in ("mosaic", "mixup", "cutmix", "fliplr", "flipud"):
        v = hyp.get(key)
        if not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"hyp {key} is a probability in [0, 1], got {v!r}")


#: YOLOv6 ``training_mode`` values (meituan/YOLOv6@0.2.0 ``get_block``; the blocks: models/common.py ``conv_block``)
TRAINING_MODES = ("repvgg", "hyper_search", "repopt", "conv_silu", "conv_relu")


AMP_MODES = ("auto", "fp16", "bf16", "off")


@dataclass(frozen=True)
class NMSSettings:
    """Thresholds of the postprocess (:func:`yoloforge.engine.postprocess.postprocess`)."""
    conf: float
    iou: float
    max_det: int = 300
    multi_label: bool = False


# The two settings of the postprocess, read by the CLI, the Python API, the server, the trainer and export:
# validation (WongKinYiu/yolov7 test.py: --conf-thres 0.001 --iou-thres 0.65, multi_label=True at line 125;
# the per-epoch call of its train.py takes test()'s own iou_thres 0.6) and prediction (yolov7 detect.py:
# --conf-thres 0.25 --iou-thres 0.45, the best class per box).
VAL_NMS = NMSSettings(conf=0.001, iou=0.65, max_det=300, multi_label=True)
PREDICT_NMS = NMSSettings(conf=0.25, iou=0.45, max_det=300, multi_label=False)


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
    workers: int = -1  # loader processes; -1 = auto (CPU: 2, GPU: up to 8; never more than the free cores)
    threads: int = 0  # torch intra-op threads on CPU; 0 = the cores other processes leave free, checked every epoch
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
    channels_last: bool = False  # NHWC model and batches (CPU: 1.25x for yolov6n at 320, benchmarks/train_levers.py)
    amp: str = "auto"  # auto: fp16 on CUDA, bf16 on a CPU with native bf16, else off; or fp16 | bf16 | off
    compile: str = ""  # torch.compile backend of the training forward ("inductor"); "" = eager
    val_interval: int = 1
    close_mosaic: int = -1  # epochs at the end trained without mosaic/mixup; -1 = the preset's (YOLOv6 15, else 0)
    patience: int = 0  # stop after this many epochs without improvement (0 = never)
    sync_bn: bool = False
    cache: str = ""  # "" or "ram"
    save_period: int = 0  # also keep weights/epochN.safetensors every N epochs
    conf: float = VAL_NMS.conf  # validation thresholds
    iou: float = VAL_NMS.iou
    plots: bool = True
    verbose: bool = True
    tensorboard: bool = True  # event files in <run>/tensorboard where the tensorboard package is installed
    mlflow: str = ""  # MLflow tracking URI (http://host:5000 or sqlite:///path/mlflow.db); empty: off
    training_mode: str = ""  # YOLOv6: repvgg | hyper_search | repopt ("" = the model's own)
    scales: str = ""  # --training-mode repopt: weights of the hyper_search run whose scales build the masks
    distill: bool = False  # YOLOv6 self-distillation from --teacher
    teacher: str = ""  # the teacher's weights (a trained model of the same family, classes and reg_max)
    temperature: float = 20.0  # distillation temperature
    distill_feat: bool = False  # also channel-wise distillation of the neck maps (official --distill_feat)

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # configs and resume states from before amp took a mode
            self.amp = "auto" if self.amp else "off"
        if isinstance(self.compile, bool):  # Detector.train(compile=True)
            self.compile = "inductor" if self.compile else ""
        checks = {
            "epochs": self.epochs >= 1,
            "imgsz": self.imgsz >= 32 and self.imgsz % 32 == 0,
            "batch": self.batch >= 1,
            "nbs": self.nbs >= 1,
            "workers": self.workers >= -1,
            "threads": self.threads >= 0,
            "val_interval": self.val_interval >= 1,
            "close_mosaic": self.close_mosaic >= -1,
            "patience": self.patience >= 0,
            "conf": 0 <= self.conf <= 1,
            "iou": 0 < self.iou <= 1,
            "temperature": self.temperature > 0,
            "training_mode": self.training_mode in ("", *TRAINING_MODES),
            "amp": self.amp in AMP_MODES,
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
