"""Training techniques that only some models or recipes use, as hooks the trainer calls at fixed points.

DESIGN "a family is one folder": family-specific training steps (YOLOv4's CmBN, random input size and SAT;
YOLOv6's RepOptimizer and self-distillation) are hooks, not branches inside the trainer (as mmyolo's
``PipelineSwitchHook``). The trainer names none of them: :func:`training_hooks` picks what a run needs from its
model, hyp and config, and the trainer calls every hook, in this order:

- ``prepare(tr)``: the model and hyp exist, the optimizer not yet (CmBN swaps the BN layers);
- ``optimizer_cls``: the optimizer class the technique trains with (RepOpt), ``None`` for the default SGD;
- ``attach(tr, resume_state)``: the optimizer exists (RepOpt's gradient masks, from the scales or the resume state);
- ``wrap_loss(tr, loss_fn)``: the loss to train with (distillation adds its terms and loads the teacher);
- ``batch(tr, imgs, targets, epoch, i)``: each batch before the forward (random input size, SAT);
- ``loss_inputs(tr, imgs)``: extra arguments of the loss, under the forward's autocast (the teacher's outputs);
- ``after_step(tr)``: after each optimizer step (CmBN's accumulation window).

``tr`` is the :class:`~yoloforge.engine.trainer.Trainer`. A caller adds or replaces hooks with
``Trainer(cfg, hooks=[...])``: a given hook replaces the default one of the same ``name`` (QAT's channel-wise
distillation replaces the YOLOv6 distillation this way).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from yoloforge.engine.ema import unwrap
from yoloforge.engine.errors import TrainingError
from yoloforge.utils.logging import get_logger

LOG = get_logger()


class TrainHook:
    """No-op at every point; a technique overrides the points it needs."""

    name = "hook"
    optimizer_cls = None

    def prepare(self, tr) -> None:
        pass

    def attach(self, tr, resume_state: dict | None) -> None:
        pass

    def wrap_loss(self, tr, loss_fn):
        return loss_fn

    def batch(self, tr, imgs: torch.Tensor, targets: torch.Tensor, epoch: int, i: int):
        return imgs, targets

    def loss_inputs(self, tr, imgs: torch.Tensor) -> tuple:
        return ()

    def after_step(self, tr) -> None:
        pass


class CmBNHook(TrainHook):
    """YOLOv4's cross mini-batch normalization (hyp ``cmbn``): BN statistics pooled over the accumulation window,
    which restarts after every optimizer step."""

    name = "cmbn"

    def prepare(self, tr) -> None:
        from yoloforge.families.yolov4.bof import convert_cmbn

        if tr.world > 1 and tr.cfg.sync_bn:
            LOG.warning("hyp cmbn ignored with --sync-bn (SyncBatchNorm replaces CmBN layers)")
        else:
            convert_cmbn(tr.model, tr.accumulate)

    def after_step(self, tr) -> None:
        from yoloforge.families.yolov4.bof import reset_cmbn

        reset_cmbn(tr.model)


class FreebiesHook(TrainHook):
    """YOLOv4's per-batch freebies (hyp ``multi_scale``, ``sat_eps``): a random input size, then
    self-adversarial training. The random draws depend only on (seed, epoch, batch): resume- and DDP-safe."""

    name = "freebies"

    def batch(self, tr, imgs, targets, epoch, i):
        from yoloforge.families.yolov4.freebies import multiscale_resize, sat_eps, sat_perturb

        rng = np.random.default_rng([tr.cfg.seed, epoch, i])
        if tr.hyp.get("multi_scale"):
            imgs, targets = multiscale_resize(imgs, targets, tr.cfg.imgsz, int(unwrap(tr.model).stride.max()), rng)
        eps = sat_eps(tr.hyp.get("sat_eps", 0.0), epoch, tr.cfg.epochs, tr.hyp["warmup_epochs"])
        if eps > 0 and rng.random() < 0.5:
            with tr._autocast():
                imgs = sat_perturb(unwrap(tr.model), tr.loss_fn, imgs, targets, epoch, eps)
        return imgs, targets


class RepOptHook(TrainHook):
    """YOLOv6's RepOptimizer, stage 2 (a model built with ``training_mode="repopt"``): the masked SGD, its masks
    from the stage-1 scales (kept in the resume state, else ``--scales``); from scratch the kernels are first
    re-initialized from them (official RepVGGOptimizer with ``reinit`` when not pretrained)."""

    name = "repopt"

    @property
    def optimizer_cls(self):
        from yoloforge.families.yolov6.repopt import RepOptimizer

        return RepOptimizer

    def attach(self, tr, resume_state):
        from yoloforge.families.yolov6 import repopt

        cfg = tr.cfg
        scales = repopt.RepOptimizer.scales_in(resume_state["optimizer"]) if resume_state else None
        source = f"--resume {cfg.resume}"
        if scales is None:
            if not cfg.scales:
                raise TrainingError(f"{tr.model.name} with training_mode repopt trains with the RepOptimizer, which "
                                    f"needs --scales: the weights of a --training-mode hyper_search run of "
                                    f"{tr.model.name} on your data (stage 1, docs in README 'RepOptimizer')")
            scales, source = repopt.load_scales(cfg.scales), f"--scales {cfg.scales}"
        tr.optimizer.attach(tr.model, scales, source)
        if resume_state is None and not cfg.weights and tr.given_model is None:
            repopt.reinitialize(tr.model, scales)
        if tr.main:
            LOG.info(f"RepOptimizer: gradient masks of {len(tr.optimizer.masks)} blocks from {source}")


class TeacherHook(TrainHook):
    """A teacher run without gradients beside the student; its outputs are the loss's extra input. Subclasses
    say how the teacher is checked and which loss wraps the student's (:meth:`distill_loss`)."""

    name = "distill"

    def __init__(self):
        self.teacher: nn.Module | None = None

    def load_teacher(self, tr) -> nn.Module:
        from yoloforge.weights import load_model

        cfg = tr.cfg
        if not cfg.teacher:
            raise TrainingError("--distill needs --teacher WEIGHTS: a trained model of the same family, classes and "
                                "reg_max (for self-distillation: the same model trained without --distill)")
        teacher = load_model(tr._resolve_weights(cfg.teacher))[0]
        if getattr(teacher, "fused", False):
            raise TrainingError(f"--teacher {cfg.teacher}: a fused (deploy) model; use the unfused weights")
        return teacher

    def distill_loss(self, tr, loss_fn, teacher: nn.Module):
        raise NotImplementedError

    def wrap_loss(self, tr, loss_fn):
        from yoloforge.families.yolov6.distill import prepare_teacher

        teacher = self.load_teacher(tr)
        self.teacher = prepare_teacher(teacher.to(tr.device), str(tr.hyp.get("distill_teacher_bn", "batch")))
        return self.distill_loss(tr, loss_fn, self.teacher)

    def loss_inputs(self, tr, imgs):
        with torch.no_grad():
            return (self.teacher(imgs),)


class DistillHook(TeacherHook):
    """YOLOv6's self-distillation (``--distill --teacher W``): the official class / DFL terms (and the
    channel-wise term of the neck maps with ``distill_feat``), weights decaying by a cosine over the run."""

    def load_teacher(self, tr):
        from yoloforge.families.yolov6.distill import check_teacher

        teacher = super().load_teacher(tr)
        try:
            check_teacher(tr.model, teacher, f"--teacher {tr.cfg.teacher}")
        except ValueError as e:
            raise TrainingError(str(e)) from None
        return teacher

    def distill_loss(self, tr, loss_fn, teacher):
        from yoloforge.families.yolov6.distill import YOLOv6DistillLoss

        cfg = tr.cfg
        if tr.main:
            LOG.info(f"self-distillation from {cfg.teacher} ({teacher.name}) at temperature {cfg.temperature:g}"
                     + (", with channel-wise distillation of the neck maps" if cfg.distill_feat else ""))
        return YOLOv6DistillLoss(loss_fn, cfg.epochs, cfg.temperature, float(tr.hyp.get("distill_cls", 1.0)),
                                 float(tr.hyp.get("distill_dfl", 1.0)), float(tr.hyp.get("distill_cwd", 10.0)),
                                 cfg.distill_feat)


def training_hooks(tr, given=()) -> list[TrainHook]:
    """The hooks of this run (``tr`` after its model and hyp exist), the ``given`` ones replacing defaults of the
    same name."""
    from yoloforge.families.yolov6 import repopt

    hooks: list[TrainHook] = []
    if tr.hyp.get("cmbn"):
        hooks.append(CmBNHook())
    if repopt.repopt_blocks(tr.model):
        hooks.append(RepOptHook())
    if tr.cfg.distill or tr.cfg.teacher:
        hooks.append(DistillHook())
    if tr.hyp.get("multi_scale") or tr.hyp.get("sat_eps", 0) > 0:
        hooks.append(FreebiesHook())
    for h in given:
        hooks = [d for d in hooks if d.name != h.name] + [h]
    if len([h for h in hooks if h.optimizer_cls is not None]) > 1:
        raise ValueError(f"two training hooks bring their own optimizer: {[h.name for h in hooks if h.optimizer_cls]}")
    return hooks
