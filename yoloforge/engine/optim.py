"""Optimizer and learning-rate schedule shared by every family.

SGD (momentum 0.937, Nesterov) with three parameter groups, in the official order: BN weights and
other gains without decay (YOLOR implicit vectors too, as yolov7 train.py), weights that decay
(conv/linear kernels), all biases (no decay; they get the warm-up bias lr). Cosine (or linear)
decay from lr0 to lr0*lrf, with a linear warm-up of lr and momentum over the first iterations.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def param_groups(model: nn.Module, train_alpha: bool = True):
    """(decay, no_decay, bias) parameter lists. ``train_alpha=False`` leaves BottleRep's shortcut gains ``alpha`` out
    of every group, as YOLOv6's ``build_optimizer`` does (it collects ``.weight`` / ``.bias`` attributes only, so
    ``alpha`` keeps its initial 1.0 in the official training)."""
    decay, no_decay, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or (name == "alpha" and not train_alpha):
                continue
            if name == "bias":
                bias.append(p)
            elif name in getattr(module, "decayed_vectors", ()):
                decay.append(p)  # RepOpt hyper-search scales: officially in the decayed group
            elif (isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) or p.ndim <= 1
                  or name == "implicit"):
                no_decay.append(p)  # BN gamma, scalar gains such as BottleRep alpha, YOLOR implicit vectors
            else:
                decay.append(p)
    return decay, no_decay, bias


def build_optimizer(model: nn.Module, hyp: dict, weight_decay: float, cls=torch.optim.SGD) -> torch.optim.Optimizer:
    """The three official groups on SGD, or on ``cls`` (an SGD subclass such as the RepOptimizer)."""
    decay, no_decay, bias = param_groups(model, bool(hyp.get("train_alpha", True)))
    opt = cls(no_decay, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=bool(hyp.get("nesterov", True)))
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": bias, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = hyp["lr0"]
    return opt


def lr_lambda(hyp: dict, epochs: int):
    """Multiplier of lr0 at epoch e: cosine ``((1 - cos(pi e / E)) / 2) (lrf - 1) + 1`` (yolov7 one_cycle,
    YOLOv6 solver/build.py, ScaledYOLOv4 train.py) or linear ``(1 - e / (E - 1)) (1 - lrf) + lrf``
    (yolov7 train.py --linear-lr)."""
    lrf = hyp["lrf"]
    if hyp.get("cos_lr", True):
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda e: (1 - e / max(epochs - 1, 1)) * (1.0 - lrf) + lrf


def warmup_iters(hyp: dict, batches_per_epoch: int, epochs: int) -> int:
    """Warm-up length: ``max(round(warmup_epochs * batches), warmup_min_iters)`` (official: 1000), capped at
    ``warmup_max_fraction`` of the run when that is > 0."""
    n = max(round(hyp["warmup_epochs"] * batches_per_epoch), int(hyp.get("warmup_min_iters", 1000)))
    frac = float(hyp.get("warmup_max_fraction", 0.0))
    if frac > 0:
        n = min(n, int(batches_per_epoch * epochs * frac))
    return int(n)


def apply_schedule(opt: torch.optim.Optimizer, hyp: dict, lf, epoch: int, it: int, n_warmup: int,
                   batches_per_epoch: int, nominal_accumulate: float) -> int:
    """Set lr/momentum of every group for global iteration ``it`` (0-based) of ``epoch``; return the
    accumulation to use at this iteration.

    Official loop: while ``it <= n_warmup`` the lr of each group rises linearly from 0 (biases: from
    ``warmup_bias_lr``) to ``lr0 * lf(epoch)``, momentum from ``warmup_momentum``, and (``warmup_accumulate``)
    the accumulation from 1 to ``nbs / batch`` (rounded). After it the lr is the per-epoch LambdaLR value,
    which (``sched_lag``) is ``lf(epoch - 1)`` from the first epoch that starts after the warm-up (the
    scheduler steps at the end of each epoch; the epoch in which the warm-up ends keeps its last value).
    """
    acc = max(round(nominal_accumulate), 1)
    if it <= n_warmup and n_warmup > 0:
        if hyp.get("warmup_accumulate", True):
            acc = max(1, int(round(float(np.interp(it, [0, n_warmup], [1, nominal_accumulate])))))
        for j, g in enumerate(opt.param_groups):
            start = hyp["warmup_bias_lr"] if j == 2 else 0.0
            g["lr"] = float(np.interp(it, [0, n_warmup], [start, hyp["lr0"] * lf(epoch)]))
            g["momentum"] = float(np.interp(it, [0, n_warmup], [hyp["warmup_momentum"], hyp["momentum"]]))
        return acc
    lag = hyp.get("sched_lag", True) and epoch > 0 and n_warmup < batches_per_epoch * epoch
    base = hyp["lr0"] * lf(epoch - 1 if lag else epoch)
    for g in opt.param_groups:
        g["lr"] = base
        g["momentum"] = hyp["momentum"]
    return acc


def step_due(rule: str, it: int, i: int, batches_per_epoch: int, accumulate: int, last_step_it: int) -> bool:
    """Whether the optimizer steps after the backward of global iteration ``it`` (batch ``i`` of the epoch).

    ``modulo`` (yolov7, ScaledYOLOv4 train.py): ``it % accumulate == 0``; ``since_last`` (YOLOv6 engine.py):
    ``it - last_step_it >= accumulate`` (``last_step_it`` -1 before the first step); ``epoch``: every
    ``accumulate`` batches of the epoch and at its last batch.
    """
    if rule == "modulo":
        return it % accumulate == 0
    if rule == "since_last":
        return it - last_step_it >= accumulate
    return (i + 1) % accumulate == 0 or i + 1 == batches_per_epoch
