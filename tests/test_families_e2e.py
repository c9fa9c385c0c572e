"""Every family through the shared pipeline on tiny data: train -> val -> predict (issue: one pipeline)."""
import pytest
import torch

from yoloforge import Detector
from yoloforge.config import TrainConfig
from yoloforge.engine.trainer import Trainer


@pytest.mark.parametrize("model,imgsz", [("yolov7-tiny", 64), ("yolov7-w6", 128), ("yolov4-tiny", 64),
                                         ("yolov4-csp", 64)])
def test_family_train_val_predict(model, imgsz, tiny_data, tmp_path):
    cfg = TrainConfig(model=model, data=str(tiny_data), epochs=1, imgsz=imgsz, batch=8, workers=0,
                      project=str(tmp_path), name="run", plots=False, verbose=False, close_mosaic=0)
    t = Trainer(cfg)
    best = t.train()
    assert best.is_file()
    losses = (tmp_path / "run" / "results.csv").read_text().splitlines()[1].split(",")
    assert all(v not in ("nan", "inf") for v in losses)
    d = Detector(str(best))
    assert d.model.name == model and d.model.nc == 4
    m = d.val(str(tiny_data), imgsz=imgsz, batch=4, workers=0, verbose=False)
    assert m.images == 8 and 0 <= m.map <= m.map50 <= 1
    res = d.predict(str(tiny_data.parent / "images" / "val"), imgsz=imgsz, conf=0.0)
    assert len(res) == 8 and all(r.boxes.shape[1] == 4 for r in res)
    deployed = d._deploy_model()
    assert getattr(deployed, "aux_head", None) is None  # the aux head trains, never deploys
    if model == "yolov7-w6":
        assert d.model.aux_head is not None


def test_imgsz_must_fit_the_largest_stride(tiny_data, tmp_path):
    cfg = TrainConfig(model="yolov7-w6", data=str(tiny_data), epochs=1, imgsz=96, batch=4, workers=0,
                      project=str(tmp_path), plots=False, verbose=False)
    with pytest.raises(ValueError, match="multiple of 64"):
        Trainer(cfg).train()


def test_loss_scale_is_family_specific_but_finite(tiny_data):
    from yoloforge.config import load_hyp
    from yoloforge.families.registry import build_model

    for name in ("yolov6n", "yolov7-tiny", "yolov4-tiny"):
        m = build_model(name, nc=4).train()
        loss_fn = m.build_loss(load_hyp(m.default_hyp, name))
        x = torch.rand(2, 3, 64, 64)
        t = torch.tensor([[0, 1, 5, 5, 40, 50], [1, 3, 20, 10, 60, 30]], dtype=torch.float32)
        loss, items = loss_fn(m(x), t, 0)
        loss.backward()
        assert torch.isfinite(loss) and len(items) == len(loss_fn.names)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def test_yolov4_bag_of_freebies_train_end_to_end(tiny_data, tmp_path):
    """Every YOLOv4 switch on at once still trains, validates and saves a model that rebuilds."""
    cfg = TrainConfig(model="yolov4-tiny", model_kw={"dropblock": 0.1, "sam": True}, data=str(tiny_data), epochs=2,
                      imgsz=64, batch=4, nbs=8, workers=0, project=str(tmp_path), name="bof", plots=False,
                      verbose=False, close_mosaic=1,
                      hyp_override={"cutmix": 0.5, "multi_scale": True, "sat_eps": 0.02, "cmbn": True,
                                    "label_smoothing": 0.1, "iou_loss": "diou", "mixup": 0.2})
    best = Trainer(cfg).train()
    d = Detector(str(best))
    assert d.model.build_kwargs.get("sam") is True and d.model.build_kwargs.get("dropblock") == 0.1
    m = d.val(str(tiny_data), imgsz=64, workers=0, verbose=False)
    assert m.images == 8
    res = d.predict(str(tiny_data.parent / "images" / "val"), imgsz=64, conf=0.0, nms="diou")
    assert len(res) == 8
