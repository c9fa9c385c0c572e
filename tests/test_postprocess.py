"""The one postprocess (NMS + boxes back through the letterbox) and the one place its thresholds are set."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from yoloforge.config import PREDICT_NMS, VAL_NMS, TrainConfig
from yoloforge.engine.postprocess import postprocess


def _pred(boxes_scores: list[list[float]], nc: int = 2) -> torch.Tensor:
    """(1, N, 4 + nc) from rows [x1, y1, x2, y2, score, cls]."""
    out = torch.zeros(1, len(boxes_scores), 4 + nc)
    for k, (x1, y1, x2, y2, s, c) in enumerate(boxes_scores):
        out[0, k, :4] = torch.tensor([x1, y1, x2, y2])
        out[0, k, 4 + int(c)] = s
    return out


def test_boxes_go_back_through_the_letterbox():
    # a 200 x 100 (w x h) image letterboxed into 160 x 160: ratio 0.8, padded 40 px at the top
    pred = _pred([[20.0, 50.0, 100.0, 90.0, 0.9, 1]])
    (det,) = postprocess(pred, 0.25, 0.45, ratio_pads=[((0.8, 0.8), (0.0, 40.0))], orig_shapes=[(100, 200)])
    assert det.dtype == np.float32 and det.shape == (1, 6)
    np.testing.assert_allclose(det[0, :4], [25.0, 12.5, 125.0, 62.5], rtol=1e-6)
    assert det[0, 4] == pytest.approx(0.9) and det[0, 5] == 1
    # without the letterbox the boxes stay in input pixels
    (raw,) = postprocess(pred, 0.25, 0.45)
    np.testing.assert_allclose(raw[0, :4], [20.0, 50.0, 100.0, 90.0])
    # boxes leaving the original image are clipped to it
    (clip,) = postprocess(_pred([[0.0, 30.0, 170.0, 150.0, 0.9, 0]]), 0.25, 0.45,
                          ratio_pads=[((0.8, 0.8), (0.0, 40.0))], orig_shapes=[(100, 200)])
    np.testing.assert_allclose(clip[0, :4], [0.0, 0.0, 200.0, 100.0])


def test_thresholds_per_image_and_empty_results():
    rows = [[0.0, 0.0, 10.0, 10.0, 0.9, 0], [50.0, 50.0, 60.0, 60.0, 0.3, 0], [1.0, 1.0, 11.0, 11.0, 0.8, 0]]
    pred = torch.cat([_pred(rows), _pred(rows)])
    a, b = postprocess(pred, [0.5, 0.1], [0.45, 0.45])
    assert len(a) == 1 and a[0, 4] == pytest.approx(0.9)  # 0.3 below conf, the 0.8 box suppressed (IoU 0.68)
    assert len(b) == 2 and sorted(b[:, 4].tolist()) == pytest.approx([0.3, 0.9])
    c, d = postprocess(pred, [0.5, 0.1], [0.9, 0.9])  # a looser IoU keeps the overlapping box
    assert len(c) == 2 and len(d) == 3
    (none,) = postprocess(_pred(rows[:1]), 0.95, 0.45, ratio_pads=[((1.0, 1.0), (0.0, 0.0))], orig_shapes=[(64, 64)])
    assert none.shape == (0, 6)
    with pytest.raises(ValueError, match="2 images but 3 conf"):
        postprocess(pred, [0.1, 0.2, 0.3], 0.45)


def test_multi_label_keeps_every_class_above_conf():
    pred = torch.zeros(1, 1, 6)
    pred[0, 0, :4] = torch.tensor([0.0, 0.0, 10.0, 10.0])
    pred[0, 0, 4:] = torch.tensor([0.6, 0.4])
    assert len(postprocess(pred, 0.001, 0.65, multi_label=True)[0]) == 2
    assert len(postprocess(pred, 0.001, 0.65)[0]) == 1


def test_every_entry_point_takes_its_thresholds_from_config():
    """The validation and prediction defaults are written once (config.VAL_NMS / PREDICT_NMS)."""
    from yoloforge import cli, serve
    from yoloforge.api import Detector
    from yoloforge.engine.evaluator import evaluate
    from yoloforge.engine.predictor import Predictor
    from yoloforge.export.onnx import export_onnx

    def defaults(fn, *names):
        ps = inspect.signature(fn).parameters
        return tuple(ps[n].default for n in names)

    val = (VAL_NMS.conf, VAL_NMS.iou)
    pred = (PREDICT_NMS.conf, PREDICT_NMS.iou)
    assert (TrainConfig().conf, TrainConfig().iou) == val
    assert defaults(Detector.val, "conf", "iou") == val
    assert defaults(evaluate, "conf", "iou") == val
    assert defaults(Detector.predict, "conf", "iou") == pred
    assert defaults(Detector.predictor, "conf", "iou") == pred
    assert defaults(Predictor.__init__, "conf", "iou") == pred
    assert defaults(serve.create_app, "conf", "iou") == pred
    assert defaults(export_onnx, "conf", "iou", "max_det") == pred + (PREDICT_NMS.max_det,)
    parser = cli.build_parser()
    a = parser.parse_args(["export", "--weights", "w.safetensors"])
    assert (a.conf, a.iou, a.max_det) == pred + (PREDICT_NMS.max_det,)
    a = parser.parse_args(["predict", "--weights", "w.safetensors", "--source", "x.jpg"])
    assert a.max_det == PREDICT_NMS.max_det
