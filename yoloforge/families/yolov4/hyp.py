"""Scaled-YOLOv4's hyper-parameter presets (WongKinYiu/ScaledYOLOv4)."""
from __future__ import annotations

from typing import Any

from yoloforge.families.base import COMMON_HYP

PRESETS: dict[str, dict[str, Any]] = {
    # Scaled-YOLOv4: WongKinYiu/ScaledYOLOv4@yolov4-csp data/hyp.scratch.yaml; loss utils/loss.py
    # compute_loss: CIoU, anchors by the wh-ratio rule (anchor_t; its iou_t line is commented out),
    # label_smoothing 0 (the YOLOv4 paper's BoF value is 0.1); loader without shuffle.
    "yolov4": dict(
        COMMON_HYP, lrf=0.2, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.20, anchor_t=4.0,
        label_smoothing=0.0, iou_loss="ciou", gr=1.0, anchor_match="ratio", neighbor_cells=True,
        neighbor_rule="fraction", translate=0.1, scale=0.9, mosaic=1.0, mixup=0.0, shuffle=False,
    ),
}

# per-model differences
VARIANT_HYP: dict[str, dict[str, Any]] = {
    # ScaledYOLOv4@yolov4-large data/hyp.scratch.yaml; its train.py: warm-up momentum 0.9, lr floor 0.2
    # (cosine * 0.8 + 0.2), mosaic always; its utils/general.py build_targets picks the right / lower
    # neighbour cell by the inverse-fraction rule (as yolov7)
    "yolov4-p5": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9, neighbor_rule="inverse"),
    "yolov4-p6": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9, neighbor_rule="inverse"),
    "yolov4-p7": dict(cls=0.5, obj=1.0, translate=0.5, scale=0.5, warmup_momentum=0.9, neighbor_rule="inverse"),
    # no PyTorch recipe exists for the darknet-decoded tiny model: darknet's [yolo] iou_thresh rule
    "yolov4-tiny": dict(anchor_match="iou"),
}
