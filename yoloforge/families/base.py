"""What a family is (:class:`Family`: one record that the registry, ``load_hyp``, the converter, ``scale``, the
trainer and QAT read) and the training loop every family's hyper-parameter presets start from (``COMMON_HYP``).

A family is one folder, ``yoloforge/families/<name>/``: ``model`` (its variants, registered by name; importing it
registers them), ``blocks``, ``loss``, ``convert`` (its official checkpoints: ``matches(raw)``, ``describe(raw)``,
``build(raw, info, variant)``), ``hyp`` (its presets, the official files' values with their sources) and the
techniques of its paper; ``__init__`` holds its :class:`Family` record.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str  # its models are named <name>* (yolov6n, yolov7-tiny, yolov4-csp)
    package: str  # yoloforge.families.<name>
    presets: dict[str, dict[str, Any]]  # hyp presets it owns (``--hyp NAME``; a model's ``default_hyp``)
    variant_hyp: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> its keys over the preset
    training_modes: tuple[str, ...] = ()  # the ``--training-mode`` values its blocks take (YOLOv6's)
    distill_loss: bool = False  # it has a distillation loss of its own (QAT distils through it; else the neck CWD)
    qat_hyp: dict[str, Any] = field(default_factory=dict)  # its keys over the official QAT recipe

    def module(self, part: str):
        """``model``, ``loss``, ``convert``, ... of this family (imported on first use)."""
        return importlib.import_module(f"{self.package}.{part}")

    def owns(self, model_name: str) -> bool:
        return str(model_name).lower().startswith(self.name)


# Shared by every family: the training loop of the official scripts (WongKinYiu/yolov7 train.py,
# ScaledYOLOv4 train.py, meituan/YOLOv6@0.2.0 yolov6/core/engine.py + solver/build.py; they agree on all of it).
COMMON_HYP: dict[str, Any] = dict(
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

