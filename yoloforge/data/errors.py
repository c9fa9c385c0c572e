"""The error of a dataset the user must fix (shared by every reader: YOLO txt, COCO json, Pascal VOC)."""


class DataError(ValueError):
    """A dataset problem the user must fix; the message names the file."""
