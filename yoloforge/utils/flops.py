"""Parameter and FLOP counting.

GFLOPs follow the convention of the verified table in FACTS.md: ``torch.utils.flop_counter.FlopCounterMode``
total / 1e9 on one image, i.e. 2 x multiply-accumulates of convolutions / matmuls (BN, activations,
pooling and additions are not counted). The count only depends on tensor shapes, so it runs on a
deep copy moved to the ``meta`` device (no memory, no arithmetic); a model that cannot run on
``meta`` falls back to a real CPU forward.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _imgsz(imgsz) -> tuple[int, int]:
    if isinstance(imgsz, int):
        return imgsz, imgsz
    h, w = imgsz
    return int(h), int(w)


def _flops_on(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def count_gflops(model: nn.Module, imgsz=640, batch: int = 1, meta: bool = True) -> float:
    """GFLOPs of one eval-mode forward on a ``batch x 3 x imgsz`` input (deep copy, no_grad)."""
    h, w = _imgsz(imgsz)
    m = copy.deepcopy(model).eval()
    if meta:
        try:
            return _flops_on(m.to("meta"), torch.empty(batch, 3, h, w, device="meta")) / 1e9
        except (NotImplementedError, RuntimeError):
            m = copy.deepcopy(model).eval()
    p = next(m.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return _flops_on(m, torch.zeros(batch, 3, h, w, device=dev, dtype=dtype)) / 1e9


def model_info(model: nn.Module, imgsz=640) -> dict:
    """Params and GFLOPs of the model as given and of its fused (deploy) form, plus leaf-layer count."""
    fused = copy.deepcopy(model)
    if hasattr(fused, "fuse"):
        fused.fuse()
    return dict(
        params=count_params(model),
        gflops=count_gflops(model, imgsz),
        params_fused=count_params(fused),
        gflops_fused=count_gflops(fused, imgsz),
        layers=sum(1 for m in model.modules() if not list(m.children())),
    )
