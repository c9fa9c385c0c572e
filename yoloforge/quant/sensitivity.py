"""Per-layer int8 sensitivity of a fused detector, measured in PyTorch by simulated quantization.

Post-training int8 loses accuracy mostly in a few layers (YOLOv6 v3 report, "PTQ sensitivity analysis":
RepVGG-style layers with wide activation ranges; the final prediction convs of most detectors). Each
convolution is quantized *alone* the way the ONNX Runtime quantizer will quantize it -- input per-tensor
asymmetric uint8 over its calibrated [min, max] (0 always inside the range), weights per output channel
symmetric int8 -- and the detector's output on the calibration images is compared with the float one:

    sensitivity = ||scores_q - scores|| / ||scores|| + ||boxes_q - boxes|| / ||boxes||

(relative L2 errors of the class scores and of the xyxy boxes of the ``(B, N, 4 + nc)`` output). Layers
are then ranked; ``yoloforge quantize --skip K`` keeps the K most sensitive in float. The measure is a
proxy for the mAP loss (much cheaper: one forward pass per layer and image), reported next to the mAP
that the quantized model really gets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass
class LayerSensitivity:
    name: str  # module path in the fused model, e.g. "head.cls_preds.2"
    sensitivity: float
    score_err: float
    box_err: float
    in_range: tuple[float, float]  # calibrated input range
    params: int


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """uint8 per-tensor affine quantize-dequantize over [min(lo, 0), max(hi, 0)] (ONNX Runtime MinMax)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = float(np.clip(round(-lo / scale), 0, 255))
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 symmetric per-output-channel quantize-dequantize."""
    amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (w.ndim - 1)))
    scale = amax / 127.0
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@torch.no_grad()
def input_ranges(model: nn.Module, batches: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """[min, max] of every conv's input over the calibration batches (MinMax calibration)."""
    convs = conv_layers(model)
    ranges: dict[str, list[float]] = {n: [float("inf"), float("-inf")] for n in convs}

    def hook(name):
        def f(_, inp):
            r = ranges[name]
            r[0], r[1] = min(r[0], float(inp[0].min())), max(r[1], float(inp[0].max()))
        return f

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in convs.items()]
    try:
        for x in batches:
            model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return {n: (lo, hi) for n, (lo, hi) in ranges.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@torch.no_grad()
def layer_sensitivity(model: nn.Module, batches: list[np.ndarray], verbose: bool = True) -> list[LayerSensitivity]:
    """Rank the fused ``model``'s convolutions by how much quantizing each one alone changes the output.

    ``batches``: float32 NCHW arrays in [0, 1] (the calibration images). Returns most sensitive first."""
    model = model.eval()
    ranges = input_ranges(model, batches)
    refs = [model(torch.from_numpy(x)) for x in batches]
    scores_ref = torch.cat([r[..., 4:].flatten() for r in refs])
    boxes_ref = torch.cat([r[..., :4].flatten() for r in refs])
    out = []
    for name, conv in tqdm(list(conv_layers(model).items()), desc="int8 sensitivity", disable=not verbose,
                           unit="layer", dynamic_ncols=True):
        lo, hi = ranges[name]
        w = conv.weight.data
        conv.weight.data = fake_quant_weight(w)
        h = conv.register_forward_pre_hook(lambda _, inp, lo=lo, hi=hi: (fake_quant_activation(inp[0], lo, hi),))
        try:
            ys = [model(torch.from_numpy(x)) for x in batches]
        finally:
            h.remove()
            conv.weight.data = w
        se = _rel(torch.cat([y[..., 4:].flatten() for y in ys]), scores_ref)
        be = _rel(torch.cat([y[..., :4].flatten() for y in ys]), boxes_ref)
        out.append(LayerSensitivity(name, se + be, se, be, (lo, hi), w.numel()))
    return sorted(out, key=lambda s: -s.sensitivity)
