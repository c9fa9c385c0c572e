"""yoloforge: train, evaluate, re-parameterize, quantize and deploy YOLOv6, YOLOv7 and Scaled-YOLOv4."""
__version__ = "0.1.0"

from yoloforge.api import Detector  # noqa: E402

__all__ = ["Detector", "__version__"]
