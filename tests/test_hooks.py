"""Training hooks (engine/hooks.py): the trainer's only way into family-specific steps."""
import pytest
import torch

from yoloforge.config import TrainConfig
from yoloforge.engine.hooks import CmBNHook, DistillHook, FreebiesHook, RepOptHook, TrainHook, training_hooks


class _Stub:
    """What training_hooks reads of a trainer."""

    def __init__(self, model="yolov6n", hyp=None, **cfg):
        from yoloforge.families.registry import build_model

        self.model = build_model(model, nc=2, **cfg.pop("model_kw", {}))
        self.hyp = hyp or {}
        self.cfg = TrainConfig(model=model, **cfg)


def _names(hooks):
    return [h.name for h in hooks]


def test_each_technique_selects_its_hook():
    assert training_hooks(_Stub()) == []
    assert _names(training_hooks(_Stub("yolov4-csp", {"cmbn": True}))) == ["cmbn"]
    assert _names(training_hooks(_Stub("yolov4-csp", {"multi_scale": True}))) == ["freebies"]
    assert _names(training_hooks(_Stub("yolov4-csp", {"sat_eps": 0.02}))) == ["freebies"]
    assert _names(training_hooks(_Stub("yolov6n", model_kw={"training_mode": "repopt"}))) == ["repopt"]
    assert _names(training_hooks(_Stub("yolov6n", model_kw={"training_mode": "hyper_search"}))) == []
    assert _names(training_hooks(_Stub("yolov6n", distill=True, teacher="t.safetensors"))) == ["distill"]
    kinds = [type(h) for h in training_hooks(_Stub("yolov6n", {"cmbn": True, "multi_scale": True}, distill=True,
                                                   teacher="t", model_kw={"training_mode": "repopt"}))]
    assert kinds == [CmBNHook, RepOptHook, DistillHook, FreebiesHook]


def test_given_hook_replaces_by_name_and_two_optimizers_are_refused():
    class MyDistill(TrainHook):
        name = "distill"

    mine = MyDistill()
    hooks = training_hooks(_Stub("yolov6n", distill=True, teacher="t"), [mine])
    assert hooks == [mine]

    class OtherOpt(TrainHook):
        name = "other"
        optimizer_cls = torch.optim.Adam

    with pytest.raises(ValueError, match="own optimizer"):
        training_hooks(_Stub("yolov6n", model_kw={"training_mode": "repopt"}), [OtherOpt()])


def test_trainer_calls_a_given_hook_at_every_point(tiny_data, tmp_path):
    """A hook's points are called where the module docstring says: prepare and attach once, the loss wrapped,
    batch and loss_inputs once per batch, after_step once per optimizer step; the loss receives the extra input."""
    calls = {"prepare": 0, "attach": 0, "wrap": 0, "batch": 0, "inputs": 0, "step": 0, "extra_seen": 0}

    class Counting(TrainHook):
        name = "counting"

        def prepare(self, tr):
            assert not hasattr(tr, "optimizer")
            calls["prepare"] += 1

        def attach(self, tr, resume_state):
            assert tr.optimizer is not None and resume_state is None
            calls["attach"] += 1

        def wrap_loss(self, tr, loss_fn):
            calls["wrap"] += 1

            def loss(outputs, targets, epoch, *extra):
                assert len(extra) == 1 and extra[0].shape == (1,)
                calls["extra_seen"] += 1
                return loss_fn(outputs, targets, epoch)
            loss.names = loss_fn.names
            return loss

        def batch(self, tr, imgs, targets, epoch, i):
            calls["batch"] += 1
            return imgs, targets

        def loss_inputs(self, tr, imgs):
            calls["inputs"] += 1
            return (torch.zeros(1),)

        def after_step(self, tr):
            calls["step"] += 1

    from yoloforge.api import Detector

    Detector("yolov6n").train(data=str(tiny_data), epochs=2, imgsz=64, batch=8, nbs=16, workers=0,
                              project=str(tmp_path), name="h", deterministic=True, close_mosaic=0, plots=False,
                              verbose=False, val_interval=5, hyp="small-data", hooks=[Counting()])
    batches = 2 * 2  # 16 images, batch 8, 2 epochs
    assert calls["prepare"] == calls["attach"] == calls["wrap"] == 1
    assert calls["batch"] == calls["inputs"] == calls["extra_seen"] == batches
    assert calls["step"] == 2  # nbs 16 = two batches per step, "epoch" step rule: one step per epoch
