"""Official pretrained weights -> yoloforge, safely (no code from the file is ever executed).

``convert(path, out=None, cfg=None) -> (model, meta)`` recognizes yolov7 (training/deploy, fused or
not), meituan/YOLOv6 release 2.0 N/T/S/M/L, ScaledYOLOv4 yolov4-large P5/P6/P7 ``.pt`` and darknet
``.weights`` + ``.cfg`` (yolov4-tiny, yolov4-csp) and writes yoloforge safetensors.
"""
from .official import add_parser, convert, load_official, run  # noqa: F401
from .safe_unpickle import FormatError, UnsafeCheckpointError, load_pickled  # noqa: F401
