"""The QAT form of a model (YOLOv6 paper sec. 2.5): fake-quantized convolutions, their calibration and switches.

This is what a QAT weights file loads into (:func:`yoloforge.weights.load_model` calls :func:`prepare` when the
metadata says ``qat``), so it sits below the QAT training pipeline (:mod:`yoloforge.quant.qat`, steps 1-2 of its
docstring are here).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from yoloforge.quant.sensitivity import conv_layers, fake_quant_weight

QMIN, QMAX = -128, 127


class FakeQuant(nn.Module):
    """Per-tensor symmetric int8 fake quantization; ``amax`` is a buffer set by calibration (0: pass through)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("amax", torch.zeros(()))
        self.calibrating = False
        self.enabled = True

    def scale(self) -> torch.Tensor:
        return (self.amax / QMAX).clamp_min(1e-12).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.amax.copy_(torch.maximum(self.amax, x.detach().abs().max().to(self.amax)))
            return x
        if not self.enabled or float(self.amax) <= 0:
            return x
        zp = torch.zeros((), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x.float(), self.scale().to(x.device), zp, QMIN, QMAX).to(x.dtype)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with int8 fake quantization of its input (``in_q``) and weights (see the module docstring);
    ``w_qmax`` 127, or 63 for 7-bit weights."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.in_q = FakeQuant()
        self.w_qmax = QMAX

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, in_q: FakeQuant | None = None, w_qmax: int = QMAX) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        q.weight, q.bias = conv.weight, conv.bias  # the same parameters (nothing to initialize)
        q.in_q = FakeQuant().to(conv.weight.device) if in_q is None else in_q
        q.w_qmax = int(w_qmax)
        return q

    def adopt(self, folded: nn.Conv2d) -> "QuantConv2d":
        """The conv that BN folding made of this one, quantized as this one (``fuse_conv_bn`` calls it)."""
        return QuantConv2d.from_conv(folded, self.in_q, self.w_qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_q(x)
        on = self.in_q.enabled and not self.in_q.calibrating
        return self._conv_forward(x, fake_quant_weight(self.weight, self.w_qmax) if on else self.weight, self.bias)


class QuantAct(nn.Module):
    """An activation with int8 fake quantization of its input, its own per-tensor scale (``out_q``): the output of
    the convolution in front of it. Placed in front of the LeakyReLUs that follow a quantized conv: a quantizer
    commutes with ReLU (zero point 0, see :func:`yoloforge.quant.qat._quantize_before_relu`) but not with
    LeakyReLU, so without a scale of its own on the conv's output ONNX Runtime finds no ``DQ -> Conv -> Q`` and runs
    those convolutions in float on dequantized tensors (measured: yolov7-tiny's QAT graph 16.1 ms in ONNX Runtime
    against 9.2 ms fp32 and 6.9 ms in OpenVINO int8, 160x160). With it the conv becomes QLinearConv and the
    ``DQ -> LeakyRelu -> Q`` after it QLinearLeakyRelu."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.out_q = FakeQuant()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.out_q(x))


def reduce_range_default(device: str = "") -> bool:
    """7-bit weights where the CPU multiplies int8 in pairs summed in int16 (x86 without VNNI / AMX: AVX2's
    ``vpmaddubsw``). There ONNX Runtime and OpenVINO run signed int8 activations as uint8 plus 128, and two
    products of 255 x 127 overflow int16 and saturate: measured on an AVX2 EPYC, yolov6n's scores off by up to 0.19
    against exact int8 arithmetic with 8-bit weights, 0.0 with 7-bit ones (ONNX Runtime; its ``reduce_range`` is
    the same remedy). False where the CPU has VNNI / AMX or is not x86, and for a CUDA ``device`` ("": CUDA when
    there is one, as the trainer picks), which has no such limit."""
    import platform

    if str(device).startswith("cuda") or (not device and torch.cuda.is_available()):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    from yoloforge.utils.cpu import cpu_flags

    flags = cpu_flags()
    return bool(flags) and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def _merge_blocks(model: nn.Module) -> None:
    """Deploy-time merges that int8 must see (see the module docstring), BN after a plain conv kept."""
    from yoloforge.models.base import DetectionModel
    from yoloforge.models.common import ConvBNAct

    for m in list(model.modules()):
        if m is model or isinstance(m, (DetectionModel, ConvBNAct)) or not callable(getattr(m, "fuse", None)):
            continue
        m.fuse()


def prepare(model: nn.Module, exclude=(), reduce_range: bool = False, act_quant: bool = True) -> nn.Module:
    """The QAT form of ``model`` (in place; returns it). ``exclude``: conv module names (of the prepared model, as
    in sensitivity.csv) kept in float; ``reduce_range``: 7-bit weights (:func:`reduce_range_default`);
    ``act_quant``: a :class:`QuantAct` in front of every LeakyReLU after a quantized conv (QAT weights written
    before it existed load with False)."""
    if getattr(model, "fused", False):
        raise ValueError(f"{getattr(model, 'name', 'model')}: QAT needs the unfused training weights")
    _merge_blocks(model)
    convs = conv_layers(model)
    unknown = [n for n in exclude if n not in convs]
    if unknown:
        raise ValueError(f"--exclude: no convolution named {unknown[0]!r} in {model.name} "
                         f"(names look like {next(iter(convs), '?')!r})")
    for name, conv in convs.items():
        if name in exclude or isinstance(conv, QuantConv2d):
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf,
                QuantConv2d.from_conv(conv, w_qmax=63 if reduce_range else QMAX))
    if act_quant:
        from yoloforge.models.common import ConvBNAct

        for m in list(model.modules()):  # listed first: the loop replaces submodules
            if isinstance(m, ConvBNAct) and isinstance(m.act, nn.LeakyReLU) and isinstance(m.conv, QuantConv2d):
                m.act = QuantAct(m.act)
    # kept in the weights' metadata: load_model prepares again
    model.qat = {"excluded": list(exclude), "reduce_range": bool(reduce_range), "act_quant": bool(act_quant)}
    return model


def quantizers(model: nn.Module) -> dict[str, FakeQuant]:
    """The input quantizer of every quantized convolution, by conv name."""
    return {n: m.in_q for n, m in model.named_modules() if isinstance(m, QuantConv2d)}


def output_quantizers(model: nn.Module) -> dict[str, FakeQuant]:
    """The output quantizer of every quantized convolution that has one (:class:`QuantAct`), by conv name."""
    from yoloforge.models.common import ConvBNAct

    return {f"{n}.conv": m.act.out_q for n, m in model.named_modules()
            if isinstance(m, ConvBNAct) and isinstance(m.act, QuantAct)}


def _all_quantizers(model: nn.Module) -> list[FakeQuant]:
    return [m for m in model.modules() if isinstance(m, FakeQuant)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[np.ndarray], device="cpu") -> dict[str, list[str]]:
    """Set every quantizer's ``amax`` (max over ``batches``), one shared value per tensor among the input ones;
    returns the groups of input quantizers that read one tensor (two or more)."""
    qs = quantizers(model)
    readers: dict[tuple, list[str]] = {}
    hooks = []
    for name, conv in model.named_modules():
        if isinstance(conv, QuantConv2d):
            def seen(mod, args, name=name):
                x = args[0]  # kept alive through the pass: a freed tensor's address could be reused
                readers.setdefault((x.data_ptr(), tuple(x.shape)), (x, []))[1].append(name)
            hooks.append(conv.register_forward_pre_hook(seen))
    was_training = model.training
    model.eval()
    for q in _all_quantizers(model):
        q.amax.zero_()
        q.calibrating = True
    try:
        for i, b in enumerate(batches):
            model(torch.from_numpy(np.ascontiguousarray(b)).to(device))
            if i == 0:
                for h in hooks:
                    h.remove()
                hooks = []
    finally:
        for h in hooks:
            h.remove()
        for q in _all_quantizers(model):
            q.calibrating = False
        model.train(was_training)
    groups = {names[0]: names for _, names in readers.values() if len(names) > 1}
    readers.clear()
    for names in groups.values():
        shared = max(float(qs[n].amax) for n in names)
        for n in names:
            qs[n].amax.fill_(shared)
    return groups


def set_quant(model: nn.Module, enabled: bool) -> None:
    for q in _all_quantizers(model):
        q.enabled = enabled
