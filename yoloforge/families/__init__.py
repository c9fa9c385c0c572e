"""The model families, one folder each (:mod:`yoloforge.families.base` says what a folder holds)."""
from __future__ import annotations

from yoloforge.families.base import COMMON_HYP, Family
from yoloforge.families.yolov4 import FAMILY as YOLOV4
from yoloforge.families.yolov6 import FAMILY as YOLOV6
from yoloforge.families.yolov7 import FAMILY as YOLOV7

#: every family, in the order the converter asks whether an official checkpoint is theirs (yolov7's test is the
#: broadest, so it comes last)
FAMILIES: tuple[Family, ...] = (YOLOV6, YOLOV4, YOLOV7)

__all__ = ["COMMON_HYP", "FAMILIES", "Family", "family_of"]


def family_of(model_name: str) -> Family:
    """The family of a registered model name (``ValueError`` for another)."""
    for fam in FAMILIES:
        if fam.owns(model_name):
            return fam
    raise ValueError(f"model {model_name!r} belongs to no family ({', '.join(f.name + '*' for f in FAMILIES)})")
