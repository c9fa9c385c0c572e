"""Per-layer int8 sensitivity of a fused detector, measured in PyTorch by simulated quantization.

Post-training int8 loses accuracy mostly in a few layers (YOLOv6 v3 report, "PTQ sensitivity analysis":
RepVGG-style layers with wide activation ranges; the final prediction convs of most detectors). Each
convolution is quantized *alone* the way the ONNX Runtime quantizer will quantize it -- input per-tensor
asymmetric uint8 over its calibrated [min, max] (0 always inside the range), weights per output channel
symmetric int8 -- and the detector's output on the calibration images is compared with the float one:

    sensitivity = ||scores_q - scores|| / ||scores|| + ||boxes_q - boxes|| / ||boxes||

(relative L2 errors of the class scores and of the xyxy boxes of the ``(B, N, 4 + nc)`` output). Next to it,
the metrics of the YOLOv6 paper (sec. 2.5.3; its "partial quantization" ranks layers by them): of the layer's
own output with and without quantization, the MSE, the SNR (dB, ``10 log10(|y|^2 / |y_q - y|^2)``) and the
cosine similarity; and, where an ``evaluate`` callable is given (``--sensitivity map``), what the official
tools/partial_quantization/sensitivity_analyse.py really uses: the val mAP50-95 with this layer quantized
alone, its drop from the float mAP. Layers are ranked by the chosen metric; ``yoloforge quantize --skip K``
keeps the K most sensitive in float. The output error is a proxy for the mAP loss (one forward pass per layer
and image instead of a validation per layer), reported next to the mAP that the quantized model really gets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


#: ranking -> what its plot shows (the value of :meth:`LayerSensitivity.shown`)
RANKINGS = {
    "output": "relative output error when quantized alone (scores + boxes)",
    "mse": "MSE of the layer's output, quantized alone vs float",
    "snr": "SNR (dB) of the layer's output, quantized alone (low = sensitive)",
    "cosine": "1 - cosine similarity of the layer's output, quantized alone",
    "map": "val mAP50-95 drop with the layer quantized alone",
}


@dataclass
class LayerSensitivity:
    name: str  # module path in the fused model, e.g. "head.cls_preds.2"
    sensitivity: float  # output error (score_err + box_err)
    score_err: float
    box_err: float
    in_range: tuple[float, float]  # calibrated input range
    params: int
    mse: float = float("nan")  # of the layer's own output, quantized alone vs float
    snr_db: float = float("nan")
    cosine: float = float("nan")
    map_drop: float = float("nan")  # float mAP50-95 minus the mAP50-95 with this layer quantized alone

    def score(self, rank: str) -> float:
        """Larger = more sensitive, for every ranking."""
        return {"output": self.sensitivity, "mse": self.mse, "snr": -self.snr_db, "cosine": -self.cosine,
                "map": self.map_drop}[rank]

    def shown(self, rank: str) -> float:
        """The value a person reads for this ranking (SNR in dB, 1 - cosine; the others as :meth:`score`)."""
        return {"snr": self.snr_db, "cosine": 1 - self.cosine}.get(rank, self.score(rank))


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """uint8 per-tensor affine quantize-dequantize over [min(lo, 0), max(hi, 0)] (ONNX Runtime MinMax)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = float(np.clip(round(-lo / scale), 0, 255))
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def weight_scales(w: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """Per output channel ``max |w| / qmax`` (1 for an all-zero channel: any scale quantizes it exactly)."""
    amax = w.detach().abs().flatten(1).amax(1)
    return torch.where(amax > 0, amax / float(qmax), torch.ones_like(amax)).float()


def fake_quant_weight(w: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """int8 symmetric per-output-channel quantize-dequantize (straight-through gradient, as QAT trains it);
    ``qmax`` 63: 7-bit weights (see :func:`yoloforge.quant.fake_quant.reduce_range_default`)."""
    zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w.float(), weight_scales(w, qmax), zp, 0, -qmax - 1,
                                                  qmax).to(w.dtype)


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
def layer_sensitivity(model: nn.Module, batches: list[np.ndarray], verbose: bool = True, evaluate=None,
                      rank: str = "output") -> list[LayerSensitivity]:
    """Rank the fused ``model``'s convolutions by how much quantizing each one alone changes things.

    ``batches``: float32 NCHW arrays in [0, 1] (the calibration images). ``evaluate(model) -> mAP50-95`` (optional)
    adds the mAP drop of each layer (needed for ``rank="map"``). Returns the most sensitive first by ``rank``."""
    if rank not in RANKINGS:
        raise ValueError(f"sensitivity ranking {rank!r}: one of {', '.join(RANKINGS)}")
    if rank == "map" and evaluate is None:
        raise ValueError("the mAP sensitivity needs a val split to evaluate on")
    model = model.eval()
    ranges = input_ranges(model, batches)
    refs = [model(torch.from_numpy(x)) for x in batches]
    scores_ref = torch.cat([r[..., 4:].flatten() for r in refs])
    boxes_ref = torch.cat([r[..., :4].flatten() for r in refs])
    base_map = float(evaluate(model)) if evaluate is not None else None
    out = []
    for name, conv in tqdm(list(conv_layers(model).items()), desc="int8 sensitivity", disable=not verbose,
                           unit="layer", dynamic_ncols=True):
        lo, hi = ranges[name]
        w = conv.weight.data
        acc = {"err": 0.0, "ref": 0.0, "dot": 0.0, "qq": 0.0, "n": 0}

        def pre(_, inp, lo=lo, hi=hi):
            acc["x"] = inp[0]  # float: every layer before this one is float
            return (fake_quant_activation(inp[0], lo, hi),)

        def post(m, _, y, w=w):
            ref = m._conv_forward(acc.pop("x"), w, m.bias).double()
            y = y.double()
            acc["err"] += float(((y - ref) ** 2).sum())
            acc["ref"] += float((ref ** 2).sum())
            acc["dot"] += float((y * ref).sum())
            acc["qq"] += float((y ** 2).sum())
            acc["n"] += ref.numel()

        conv.weight.data = fake_quant_weight(w)
        handles = [conv.register_forward_pre_hook(pre), conv.register_forward_hook(post)]
        try:
            ys = [model(torch.from_numpy(x)) for x in batches]
            q_map = float("nan")
            if evaluate is not None:  # the same quantization, without the per-batch statistics
                for h in handles:
                    h.remove()
                handles = [conv.register_forward_pre_hook(lambda _, inp, lo=lo, hi=hi: (fake_quant_activation(inp[0], lo, hi),))]
                q_map = float(evaluate(model))
        finally:
            for h in handles:
                h.remove()
            conv.weight.data = w
        se = _rel(torch.cat([y[..., 4:].flatten() for y in ys]), scores_ref)
        be = _rel(torch.cat([y[..., :4].flatten() for y in ys]), boxes_ref)
        snr = 10 * np.log10(max(acc["ref"], 1e-30) / max(acc["err"], 1e-30))
        cos = acc["dot"] / max(np.sqrt(acc["ref"] * acc["qq"]), 1e-30)
        out.append(LayerSensitivity(name, se + be, se, be, (lo, hi), w.numel(), mse=acc["err"] / max(acc["n"], 1),
                                    snr_db=float(snr), cosine=float(cos),
                                    map_drop=(base_map - q_map) if base_map is not None else float("nan")))
    return sorted(out, key=lambda s: -s.score(rank))
