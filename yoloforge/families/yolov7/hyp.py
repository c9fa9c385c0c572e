"""yolov7's hyper-parameter presets (WongKinYiu/yolov7 data/hyp.scratch.*.yaml)."""
from __future__ import annotations

from typing import Any

from yoloforge.families.base import COMMON_HYP

# yolov7 utils/datasets.py __getitem__: load_mosaic if random.random() < 0.8 else load_mosaic9 (the second
# sample of a MixUp too)
_YOLOV7: dict[str, Any] = dict(simota_dedup=False, lead_topk=0, shuffle=False, init_fp16_round=True, scale_bias=0.1,
                               mosaic9=0.2)

PRESETS: dict[str, dict[str, Any]] = {
    # WongKinYiu/yolov7 data/hyp.scratch.p5.yaml (box/cls/obj gains are scaled at run time by the number of
    # levels, classes and image size, as in its train.py). paste_in needs polygon segments: not built.
    "p5": dict(
        COMMON_HYP, **_YOLOV7, lrf=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.2, scale=0.9, mixup=0.15, paste_in=0.15, loss_ota=1, aux_weight=0.25,
    ),
    # data/hyp.scratch.tiny.yaml
    "tiny": dict(
        COMMON_HYP, **_YOLOV7, lrf=0.01, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.1, scale=0.5, mixup=0.05, paste_in=0.05, loss_ota=1, aux_weight=0.25,
    ),
    # data/hyp.scratch.p6.yaml
    "p6": dict(
        COMMON_HYP, **_YOLOV7, lrf=0.2, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        fl_gamma=0.0, translate=0.2, scale=0.9, mixup=0.15, paste_in=0.15, loss_ota=1, aux_weight=0.25,
    ),
}
