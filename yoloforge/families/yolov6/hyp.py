"""YOLOv6's hyper-parameter presets (meituan/YOLOv6@0.2.0)."""
from __future__ import annotations

from typing import Any

from yoloforge.families.base import COMMON_HYP

PRESETS: dict[str, dict[str, Any]] = {
    # meituan/YOLOv6@0.2.0 configs/yolov6s.py solver + data_aug; loss weights and assigner settings from
    # yolov6/models/loss.py defaults (class 1.0, iou 2.5, dfl 0.5; ATSS warm-up 4 epochs); engine.py: the
    # step rule, tools/train.py: --stop_aug_last_n_epoch 15; data_augment.py mixup Beta(32, 32).
    "yolov6": dict(
        COMMON_HYP,
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
}

# per-variant differences (meituan/YOLOv6@0.2.0 configs/yolov6{n,t,m,l,l_relu}.py)
VARIANT_HYP: dict[str, dict[str, Any]] = {
    "yolov6n": dict(lr0=0.02),
    "yolov6t": dict(lr0=0.01),
    "yolov6m": dict(scale=0.9, mixup=0.1),
    "yolov6l": dict(scale=0.9, mixup=0.1, distill_cls=2.0),
    "yolov6l-relu": dict(scale=0.9, mixup=0.1, distill_cls=2.0),
}
