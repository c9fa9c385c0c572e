"""YOLOv6 self-distillation: the loss against the official loss_distill.py (fixtures made by
tests/parity/make_loss_fixtures.py --family yolov6-distill), its schedule, and training with a teacher."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yoloforge.config import load_hyp
from yoloforge.families.yolov6.distill import YOLOv6DistillLoss, distill_decay, prepare_teacher
from yoloforge.families.yolov6.loss import YOLOv6Loss

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
CASES = ("yolov6n_distill_tal", "yolov6m_distill_atss", "yolov6m_distill_tal_cwd")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


@pytest.mark.parametrize("case", CASES)
def test_distill_loss_equals_official(case):
    f = torch.load(FIXTURES / f"{case}.pt", weights_only=True)
    hyp = load_hyp("yolov6", "yolov6m" if f["use_dfl"] else "yolov6n")
    base = YOLOv6Loss(f["nc"], f["strides"], reg_max=f["reg_max"], use_dfl=f["use_dfl"], iou_type=f["iou_type"],
                      warmup_epochs=4, hyp=hyp)
    loss_fn = YOLOv6DistillLoss(base, f["max_epoch"], f["temperature"], f["distill_weight"]["class"],
                                f["distill_weight"]["dfl"], 10.0, f["distill_feat"])
    cls = f["cls_logits"].clone().requires_grad_(True)
    reg = f["reg"].clone().requires_grad_(True)
    maps = [m.clone().requires_grad_(True) for m in f["s_maps"]]
    total, items = loss_fn((maps, cls, reg), f["targets"], f["epoch"], (f["t_maps"], f["t_cls"], f["t_reg"]))
    total.backward()
    assert abs(float(total.detach()) - float(f["total"])) / abs(float(f["total"])) < 1e-5
    for ours, theirs in zip(items, f["components"]):
        assert abs(float(ours) - float(theirs)) <= 1e-5 * max(abs(float(theirs)), 1e-3)
    assert _rel(cls.grad, f["grad_cls"]) < 1e-5
    assert _rel(reg.grad, f["grad_reg"]) < 1e-5
    if f["distill_feat"]:
        grads = [m.grad for m in maps]
        assert max(_rel(a, b) for a, b in zip(grads, f["grad_maps"])) < 1e-5
    assert loss_fn.names == ("iou", "dfl", "cls", "cwd")


def test_distill_weight_decays_by_cosine_from_1_to_001():
    assert distill_decay(0, 100) == 1.0
    assert distill_decay(100, 100) == pytest.approx(0.01)
    assert distill_decay(50, 100) == pytest.approx(0.505)
    assert all(distill_decay(e, 10) > distill_decay(e + 1, 10) for e in range(10))


def test_distill_weights_follow_the_official_configs():
    assert load_hyp("yolov6", "yolov6l")["distill_cls"] == 2.0  # configs/yolov6l.py@0.2.0
    assert load_hyp("yolov6", "yolov6m")["distill_cls"] == 1.0  # configs/yolov6m.py@0.2.0
    h = load_hyp("yolov6", "yolov6n")
    assert (h["distill_cls"], h["distill_dfl"], h["distill_cwd"], h["distill_teacher_bn"]) == (1.0, 1.0, 10.0, "batch")


def test_teacher_uses_batch_statistics_and_never_updates_them():
    from yoloforge.families.registry import build_model

    t = prepare_teacher(build_model("yolov6n", nc=3))
    bn = next(m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    with torch.no_grad():
        out = t(torch.rand(2, 3, 64, 64) * 5)
    assert isinstance(out, tuple) and len(out) == 3  # raw training outputs
    assert torch.equal(bn.running_mean, before)
    assert not any(p.requires_grad for p in t.parameters())
    t2 = prepare_teacher(build_model("yolov6n", nc=3), bn="running")
    bn2 = next(m for m in t2.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not bn2.training and bn2.track_running_stats
    with pytest.raises(ValueError, match="distill_teacher_bn"):
        prepare_teacher(build_model("yolov6n", nc=3), bn="frozen")


def test_train_with_a_teacher(tmp_path, tiny_data):
    from yoloforge.config import TrainConfig
    from yoloforge.engine.trainer import Trainer, TrainingError

    common = dict(data=str(tiny_data), imgsz=64, batch=4, nbs=4, epochs=1, workers=0, project=str(tmp_path),
                  plots=False, verbose=False, tensorboard=False, hyp="small-data")
    teacher = Trainer(TrainConfig(model="yolov6n", name="teacher", **common)).train()
    tr = Trainer(TrainConfig(model="yolov6n", name="student", teacher=str(teacher), temperature=10, distill_feat=True,
                             **common))
    tr.train()
    assert tr.loss_fn.names == ("iou", "dfl", "cls", "cwd")
    header = (tmp_path / "student" / "results.csv").read_text().splitlines()[0]
    assert "cwd" in header
    with pytest.raises(TrainingError, match="needs --teacher"):
        Trainer(TrainConfig(model="yolov6n", name="s2", distill=True, **common)).train()
    with pytest.raises(TrainingError, match="reg_max"):
        Trainer(TrainConfig(model="yolov6m", name="s3", teacher=str(teacher), **common)).train()
