"""Scaled-YOLOv4 (WongKinYiu/ScaledYOLOv4 yolov4-csp / P5 / P6 / P7) and the darknet yolov4-tiny / yolov4-csp,
with YOLOv4's bag of freebies: model, blocks, bof (DropBlock, SAM, CmBN), freebies (random input size, SAT), loss,
the converters of its .pt (convert) and darknet files (darknet), presets (hyp)."""
from yoloforge.families.base import Family
from yoloforge.families.yolov4.hyp import PRESETS, VARIANT_HYP

FAMILY = Family("yolov4", __name__, PRESETS, VARIANT_HYP)
