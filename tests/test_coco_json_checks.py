"""COCO json defects of issue 15: each is a DataError naming the json and the entry, or a counted message;
never a traceback from inside the loader, never content silently wrong."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from yoloforge.data import formats as F


def _base(tmp_path):
    (tmp_path / "images").mkdir(exist_ok=True)
    for n, (h, w) in {"a.jpg": (60, 80), "b.jpg": (50, 50)}.items():
        cv2.imwrite(str(tmp_path / "images" / n), np.full((h, w, 3), 90, np.uint8))
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60},
                       {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20], "iscrowd": 0},
                            {"id": 11, "image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0}],
            "categories": [{"id": 3, "name": "x"}]}


def _edit(d, case):
    im, an = d["images"], d["annotations"]
    if case == "missing height": del im[0]["height"]
    elif case == "height 0": im[0]["height"] = 0
    elif case == "negative height": im[0]["height"] = -60
    elif case == "int file_name": im[0]["file_name"] = 7
    elif case == "annotations null": d["annotations"] = None
    elif case == "images null": d["images"] = None
    elif case == "duplicate image id": im[1]["id"] = 1
    elif case == "dotdot file_name": im[0]["file_name"] = "../images/a.jpg"
    elif case == "absolute file_name": im[0]["file_name"] = "/etc/passwd"
    elif case == "string id": im[0]["id"] = "1"
    elif case == "category without id": d["categories"] = [{"name": "x"}]
    elif case == "top-level list": return [d]
    elif case == "bbox null": an[0]["bbox"] = None
    elif case == "bbox 3 numbers": an[0]["bbox"] = [1, 2, 3]
    elif case == "bbox 5 numbers": an[0]["bbox"] = [1, 2, 3, 4, 5]
    elif case == "bbox strings": an[0]["bbox"] = ["5", "5", "20", "20"]
    elif case == "bbox negative size": an[0]["bbox"] = [5, 5, -20, 20]
    elif case == "bbox nan": an[0]["bbox"] = [5, 5, float("nan"), 20]
    elif case == "unknown image id": an[0]["image_id"] = 99
    elif case == "unknown category": an[0]["category_id"] = 4
    elif case == "annotation not object": an[0] = 5
    elif case == "size mismatch": im[0]["width"] = 800
    return d


ERRORS = {"missing height": "images[0] (a.jpg): 'height' must be a positive integer",
          "height 0": "'height' must be a positive integer, got 0",
          "negative height": "'height' must be a positive integer, got -60",
          "int file_name": "images[0]: 'file_name' must be a string, got 7",
          "annotations null": "'annotations' must be a list",
          "images null": "'images' must be a list",
          "duplicate image id": "images[1]: duplicate image id 1",
          "dotdot file_name": "leaves the dataset",
          "absolute file_name": "leaves the dataset",
          "string id": "images[0]: 'id' must be an integer",
          "category without id": "categories[0] needs an integer 'id'",
          "top-level list": "top level is a list"}
COUNTED = {"bbox null": "annotation 10: bbox must be 4 numbers",
           "bbox 3 numbers": "annotation 10: bbox must be 4 numbers",
           "bbox 5 numbers": "annotation 10: bbox must be 4 numbers",
           "bbox strings": "annotation 10: bbox must be 4 numbers",
           "bbox negative size": "annotation 10: bbox has a negative size",
           "bbox nan": "annotation 10: bbox must be 4 numbers",
           "unknown image id": "1 annotation(s) name an image_id that is not in 'images'",
           "unknown category": "annotation 10 has unknown category 4",
           "annotation not object": "annotation 0: not an object",
           "size mismatch": "image a.jpg is 80x60 but the json says 800x60"}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_unusable_json_is_a_data_error_naming_it(tmp_path, case):
    j = tmp_path / "annotations" / "instances_val.json"
    j.parent.mkdir()
    j.write_text(json.dumps(_edit(_base(tmp_path), case)))
    with pytest.raises(F.DataError) as e:
        F.scan_dataset(j, 1, cache=False, verbose=False)
    msg = str(e.value)
    assert str(j) in msg and ERRORS[case] in msg and "\n" not in msg


@pytest.mark.parametrize("case", sorted(COUNTED))
def test_bad_annotations_are_dropped_and_counted(tmp_path, case):
    j = tmp_path / "annotations" / "instances_val.json"
    j.parent.mkdir()
    j.write_text(json.dumps(_edit(_base(tmp_path), case)))
    r = F.scan_dataset(j, 1, cache=False, verbose=False)
    text = "\n".join(r.report.messages)
    assert COUNTED[case] in text, text
    assert r.report.images == 2
    if case != "size mismatch":
        assert r.report.boxes == 1 and sum(r.report.dropped.values()) == 1
    else:
        assert r.shapes.tolist()[0] == [60, 80]  # the image's own size, not the json's
