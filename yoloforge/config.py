"""Typed configuration: the training config, and the hyper-parameter presets of every family (each family's
``hyp.py``, gathered here) with the recipes laid over them.

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

from yoloforge.families import FAMILIES

# Every family's presets (yoloforge/families/<name>/hyp.py) by name, and the per-model differences over them.
HYP_PRESETS: dict[str, dict[str, Any]] = {k: v for fam in FAMILIES for k, v in fam.presets.items()}
VARIANT_HYP: dict[str, dict[str, Any]] = {k: v for fam in FAMILIES for k, v in fam.variant_hyp.items()}

# Named recipes laid over a family preset (``--hyp small-data``): not the official training, each key a
# documented deviation. "small-data" is yoloforge's recipe before the official mode: a warm-up of at least
# 100 iterations but at most a third of the run (the official 1000-iteration minimum is the whole of a short
# run on a small dataset), gradient clipping at norm 10, the YOLOv6 normalizer max(sum, 1), shuffled
# batches and mosaic closed for the last 15 epochs in every family.
RECIPES: dict[str, dict[str, Any]] = {
    "small-data": dict(warmup_min_iters=100, warmup_max_fraction=1 / 3, grad_clip=10.0, score_sum="clamp1",
                       shuffle=True, close_mosaic=15, sched_lag=False, warmup_accumulate=False, step_rule="epoch"),
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


#: every ``--training-mode`` value (the families' records: YOLOv6's blocks)
TRAINING_MODES = tuple(m for fam in FAMILIES for m in fam.training_modes)


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
