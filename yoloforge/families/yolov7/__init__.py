"""YOLOv7 (WongKinYiu/yolov7: tiny, P5, P6 with auxiliary heads): model, blocks, specs, loss (OTA), the
official-checkpoint converter (convert), presets (hyp)."""
from yoloforge.families.base import Family
from yoloforge.families.yolov7.hyp import PRESETS

FAMILY = Family("yolov7", __name__, PRESETS)
