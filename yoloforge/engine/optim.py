"""Optimizer and learning-rate schedule shared by every family.

SGD (momentum 0.937, Nesterov) with three parameter groups: weights that decay (conv/linear
kernels), BN weights and all biases (no decay; biases get the warm-up bias lr). Cosine (or linear)
decay from lr0 to lr0*lrf, with a linear warm-up of lr and momentum over the first iterations.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def param_groups(model: nn.Module):
    decay, no_decay, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) or p.ndim <= 1:
                no_decay.append(p)  # BN gamma, scalar gains such as BottleRep alpha, implicit vectors
            else:
                decay.append(p)
    return decay, no_decay, bias


def build_optimizer(model: nn.Module, hyp: dict, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay, bias = param_groups(model)
    opt = torch.optim.SGD(no_decay, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=bool(hyp.get("nesterov", True)))
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": bias, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = hyp["lr0"]
    return opt


def lr_lambda(hyp: dict, epochs: int):
    """Multiplier of lr0 at (fractional) epoch e."""
    lrf = hyp["lrf"]
    if hyp.get("cos_lr", True):
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda e: (1 - e / epochs) * (1.0 - lrf) + lrf


def warmup_iters(hyp: dict, batches_per_epoch: int, epochs: int) -> int:
    """Warm-up length: warmup_epochs of iterations, at least 100, at most a third of the run."""
    if hyp["warmup_epochs"] <= 0:
        return 0
    n = max(round(hyp["warmup_epochs"] * batches_per_epoch), 100)
    return int(min(n, batches_per_epoch * epochs // 3))


def apply_schedule(opt: torch.optim.Optimizer, hyp: dict, lf, epoch: int, it: int, n_warmup: int) -> None:
    """Set lr/momentum of every group for global iteration ``it`` in ``epoch``."""
    base = hyp["lr0"] * lf(epoch)
    for j, g in enumerate(opt.param_groups):
        if it < n_warmup:
            start = hyp["warmup_bias_lr"] if j == 2 else 0.0
            g["lr"] = float(np.interp(it, [0, n_warmup], [start, base]))
            g["momentum"] = float(np.interp(it, [0, n_warmup], [hyp["warmup_momentum"], hyp["momentum"]]))
        else:
            g["lr"] = base
            g["momentum"] = hyp["momentum"]
