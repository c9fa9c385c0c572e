"""YOLOv6 self-distillation (YOLOv6 paper sec. 2.4.4; meituan/YOLOv6@0.2.0 yolov6/models/loss_distill.py,
yolov6/core/engine.py): the student's YOLOv6 loss plus the teacher's knowledge.

* class term: ``KL(softmax(p_s / T) || softmax(p_t / T))`` over the class axis of every anchor, summed over
  anchors and images, times ``T^2``. Official choice kept: ``p`` are the POST-sigmoid scores (0.2.0's head
  returns sigmoid scores in training), so the softmax runs over values in [0, 1] -- at T = 20 nearly uniform,
  and with one class the term is 0;
* box term (DFL models): KL between the students' and teacher's softmax over the ``reg_max + 1`` bins at T, on
  the foreground anchors; official form kept: its mean over all positive sides (one scalar) times each
  positive's target-score weight, summed, divided by the target-score sum, times ``T^2``;
* channel-wise distillation (``feat=True``, official ``--distill_feat``): on each neck map, per channel a
  softmax over the H*W positions, ``KL(student || teacher)`` at T = 1, summed, divided by ``batch * channels``;
* each distillation term is multiplied by ``w(epoch) = 1 + (0.01 - 1) * (1 - cos(pi * epoch / epochs)) / 2``
  (1 at the first epoch, 0.01 at the last) and by its weight: total =
  ``w_cls (cls + dw_cls w d_cls) + w_iou iou + w_dfl (dfl + dw_dfl w d_dfl) + w_cwd w cwd``
  (``w_cwd`` 10; ``dw_cls`` / ``dw_dfl``: hyp ``distill_cls`` / ``distill_dfl``, from configs/yolov6*.py).

The teacher runs without gradients; officially its BatchNorms use the statistics of the batch
(``track_running_stats=False``, module left in train mode): hyp ``distill_teacher_bn`` ``batch`` (official) or
``running`` (the teacher in eval mode, its stored statistics).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from yoloforge.families.yolov6.loss import YOLOv6Loss
from yoloforge.utils.dist import world_size


def distill_cls(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Official ``distill_loss_cls`` on logits (B, N, nc): softmax over the classes of the sigmoid scores."""
    nc = student_logits.shape[-1]
    s = student_logits.float().sigmoid().reshape(-1, nc) / temperature
    t = teacher_logits.float().sigmoid().reshape(-1, nc) / temperature
    # log(softmax) rather than log_softmax, as the official code: the sum of ~1e4 tiny terms is rounding-sensitive
    return F.kl_div(torch.log(F.softmax(s, 1)), F.softmax(t, 1), reduction="sum") * temperature ** 2


def distill_dfl(student_reg: torch.Tensor, teacher_reg: torch.Tensor, fg: torch.Tensor, weight: torch.Tensor,
                score_sum: torch.Tensor, reg_max: int, temperature: float) -> torch.Tensor:
    """Official ``distill_loss_dfl`` weighted as its BboxLoss: mean KL over the positive sides x weights / sum."""
    if not bool(fg.any()):
        return student_reg.new_zeros(())
    s = student_reg[fg].reshape(-1, reg_max + 1) / temperature
    t = teacher_reg.float()[fg].reshape(-1, reg_max + 1) / temperature
    kl = F.kl_div(torch.log(F.softmax(s, 1)), F.softmax(t, 1), reduction="none").sum(1).mean() * temperature ** 2
    return (kl * weight).sum() / score_sum


def channel_wise(student_feats, teacher_feats, temperature: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021; official ``distill_loss_cw``) summed over the maps."""
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_feats, teacher_feats):
        if s.shape != t.shape:
            raise ValueError(f"channel-wise distillation needs neck maps of one shape; student {tuple(s.shape)}, "
                             f"teacher {tuple(t.shape)} (a teacher of another width: leave --distill-feat out)")
        n, c, h, w = s.shape
        ls = F.log_softmax(s.float().reshape(n, c, h * w) / temperature, 2)
        lt = F.log_softmax(t.float().detach().reshape(n, c, h * w) / temperature, 2)
        total = total + F.kl_div(ls, lt, reduction="sum", log_target=True) * temperature ** 2 / (n * c)
    return total


def distill_decay(epoch: int, epochs: int) -> float:
    """1.0 at epoch 0 to 0.01 at the last, by a cosine (loss_distill.py ``distill_weightdecay``)."""
    return ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (0.01 - 1) + 1


def prepare_teacher(teacher: nn.Module, bn: str = "batch") -> nn.Module:
    """Freeze the teacher; ``bn="batch"`` (official): BN uses the batch's statistics and never updates its own."""
    if bn not in ("batch", "running"):
        raise ValueError(f"hyp distill_teacher_bn must be 'batch' (official) or 'running', got {bn!r}")
    teacher.requires_grad_(False)
    teacher.train()  # its forward returns the raw training outputs
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if bn == "batch":
                m.track_running_stats = False
            else:
                m.eval()
    return teacher


def check_teacher(student: nn.Module, teacher: nn.Module, source: str = "teacher") -> None:
    if getattr(teacher, "family", "") != "yolov6" or getattr(student, "family", "") != "yolov6":
        raise ValueError(f"{source}: self-distillation is built for YOLOv6 (student {student.name}, teacher "
                         f"{teacher.name})")
    if teacher.nc != student.nc:
        raise ValueError(f"{source}: the teacher {teacher.name} predicts {teacher.nc} classes, the student "
                         f"{student.nc}: train the teacher on the same data")
    if teacher.reg_max != student.reg_max:
        raise ValueError(f"{source}: the teacher {teacher.name} has reg_max {teacher.reg_max}, the student "
                         f"{student.name} {student.reg_max}: their box distributions cannot be compared")


class YOLOv6DistillLoss:
    """``loss(outputs, targets, epoch, teacher_outputs) -> (total, items)`` with items ``iou, dfl, cls, cwd``
    (the official four; ``dfl`` and ``cls`` include their distillation terms)."""

    names = ("iou", "dfl", "cls", "cwd")
    needs_teacher = True

    def __init__(self, base: YOLOv6Loss, epochs: int, temperature: float = 20.0, cls_weight: float = 1.0,
                 dfl_weight: float = 1.0, cwd_weight: float = 10.0, feat: bool = False):
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.base, self.epochs, self.temperature = base, int(epochs), float(temperature)
        self.cls_weight, self.dfl_weight, self.cwd_weight, self.feat = cls_weight, dfl_weight, cwd_weight, bool(feat)

    def __call__(self, outputs, targets: torch.Tensor, epoch: int, teacher_outputs):
        t = self.base.terms(outputs, targets, epoch)
        feats, cls_logits, _ = outputs
        t_feats, t_cls, t_reg = teacher_outputs
        T = self.temperature
        d_cls = distill_cls(cls_logits, t_cls, T) * world_size()  # a sum over this rank's images: DDP averages
        if self.base.use_dfl:
            d_dfl = distill_dfl(t["reg"], t_reg, t["fg"], t["weight"], t["score_sum"], self.base.reg_max, T)
        else:
            d_dfl = cls_logits.new_zeros((), dtype=torch.float32)
        cwd = channel_wise(feats, t_feats) if self.feat else cls_logits.new_zeros((), dtype=torch.float32)
        decay = distill_decay(epoch, self.epochs)
        w = self.base.weights
        items = torch.stack((w["iou"] * t["iou"],
                             w["dfl"] * (t["dfl"] + d_dfl * decay * self.dfl_weight),
                             w["cls"] * (t["cls"] + d_cls * decay * self.cls_weight),
                             self.cwd_weight * cwd * decay))
        return items.sum(), items.detach()
