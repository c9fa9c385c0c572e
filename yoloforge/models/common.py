"""Building blocks shared by the detector families (a family's own blocks are in its folder: YOLOv6's RepBlock,
BepC3, SimSPPF, the RepOpt blocks in ``yoloforge/families/yolov6/blocks.py``).

Every block with batch normalization or parallel branches has a ``fuse()`` method that turns it into
its deploy form in place (BN folded into the convolution, re-parameterized branches merged into one
kernel). ``fuse()`` is idempotent and does not depend on the order in which a parent and its
children are fused, so ``DetectionModel.fuse()`` can simply walk ``self.modules()``.

References
----------
* RepVGG: Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021 (structural
  re-parameterization of a 3x3 + 1x1 + identity block into one 3x3 convolution).
* YOLOv6: Li et al., arXiv:2209.02976; layer layout checked against meituan/YOLOv6@0.2.0
  ``yolov6/layers/common.py`` (its BN settings, ConvBNAct, RepVGGBlock).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["make_act", "fuse_conv_bn", "ConvBNAct", "RepVGGBlock"]

# BatchNorm settings used by YOLOv6 (meituan/YOLOv6@0.2.0 yolov6/utils/torch_utils.py initialize_weights).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def make_act(act) -> nn.Module:
    """``"relu" | "silu" | "lrelu" | "mish" | None/False | nn.Module`` -> activation module."""
    if isinstance(act, nn.Module):
        return act
    if act in (None, False, "none", "identity"):
        return nn.Identity()
    table = {"relu": lambda: nn.ReLU(inplace=True), "silu": lambda: nn.SiLU(inplace=True),
             "lrelu": lambda: nn.LeakyReLU(0.1, inplace=True), "mish": lambda: nn.Mish(inplace=True),
             "hardswish": lambda: nn.Hardswish(inplace=True)}
    if act not in table:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(sorted(table))}")
    return table[act]()


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` in eval mode.

    With ``s = gamma / sqrt(var + eps)``: ``W' = W * s`` (per output channel) and
    ``b' = (b - mean) * s + beta`` (``b = 0`` when the conv has no bias).
    """
    # skip_init: no random initialisation of weights that are overwritten right away (fusing P7 took seconds)
    fused = torch.nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                     conv.padding, conv.dilation, conv.groups, bias=True,
                                     padding_mode=conv.padding_mode, device=conv.weight.device,
                                     dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    adopt = getattr(conv, "adopt", None)  # a quantization-aware conv hands its quantizers on (quant/fake_quant.py)
    return adopt(fused) if adopt is not None else fused


class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> activation ("same" padding for odd kernels).

    ``bias=True`` keeps a conv bias in front of the BN (YOLOv6 0.2.0 ``ConvWrapper`` used by
    YOLOv6-L's ``conv_silu`` training mode does this). After ``fuse()`` the BN is an identity.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act="silu", bias: bool = False, d: int = 1):
        super().__init__()
        p = d * (k // 2) if p is None else p
        self.conv = nn.Conv2d(c1, c2, k, s, p, dilation=d, groups=g, bias=bias)
        self.bn = _bn(c2)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @property
    def is_fused(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    def fuse(self) -> "ConvBNAct":
        if not self.is_fused:
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()
        return self


class RepVGGBlock(nn.Module):
    """RepVGG block: ``act(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))`` (identity only when the
    shapes allow: ``stride == 1`` and ``c1 == c2``). ``fuse()`` folds the three branches into
    one 3x3 convolution with bias (RepVGG, Sec. 3.3)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act="relu"):
        super().__init__()
        if k != 3:
            raise ValueError("RepVGGBlock needs a 3x3 kernel")
        self.c1, self.c2, self.s = c1, c2, s
        self.dense = ConvBNAct(c1, c2, 3, s, act=None)
        self.one = ConvBNAct(c1, c2, 1, s, p=0, act=None)
        self.identity = _bn(c1) if (c1 == c2 and s == 1) else None
        self.act = make_act(act)
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        y = self.dense(x) + self.one(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def fuse(self) -> "RepVGGBlock":
        if self.reparam is not None:
            return self
        dense, one = self.dense.fuse().conv, self.one.fuse().conv  # branch fuse is idempotent
        weight = dense.weight + F.pad(one.weight, [1, 1, 1, 1])
        bias = dense.bias + one.bias
        if self.identity is not None:
            eye = torch.nn.utils.skip_init(nn.Conv2d, self.c1, self.c2, 3, 1, 1, bias=False,
                                           device=weight.device, dtype=weight.dtype)
            eye.weight.zero_()
            idx = torch.arange(self.c1, device=weight.device)
            eye.weight[idx, idx, 1, 1] = 1.0
            ident = fuse_conv_bn(eye, self.identity)
            weight, bias = weight + ident.weight, bias + ident.bias
        conv = torch.nn.utils.skip_init(nn.Conv2d, self.c1, self.c2, 3, self.s, 1, bias=True,
                                        device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.reparam = conv
        del self.dense, self.one
        self.identity = None
        return self
