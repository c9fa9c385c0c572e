"""YOLOv6's own blocks (meituan/YOLOv6@0.2.0 ``yolov6/layers/common.py``): SimConv, RepBlock, CSPStackRep = BepC3
with BottleRep, SPPF / SimSPPF, transposed-convolution upsampling in Rep-PAN (Li et al., "YOLOv6: A Single-Stage
Object Detection Framework for Industrial Applications", arXiv:2209.02976), and the RepOptimizer's blocks for each
``training_mode`` (:func:`conv_block`; Ding et al., ICLR 2023). Every one has an idempotent ``fuse()`` (see
:mod:`yoloforge.models.common`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yoloforge.families.yolov6 import FAMILY
from yoloforge.models.common import ConvBNAct, RepVGGBlock, _bn, fuse_conv_bn, make_act

__all__ = ["SimConv", "HyperSearchBlock", "RealVGGBlock", "RepBlock", "BottleRep", "BepC3", "SimSPPF", "SPPF",
           "Transpose", "conv_block", "add_centre_diagonal_"]


def SimConv(c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, bias: bool = False) -> ConvBNAct:
    """YOLOv6 ``SimConv``: conv + BN + ReLU."""
    return ConvBNAct(c1, c2, k, s, g=g, act="relu", bias=bias)



def add_centre_diagonal_(kernel: torch.Tensor, values) -> torch.Tensor:
    """``kernel[i, i, 1, 1] += values[i]`` in place (an identity branch inside a 3x3 kernel); returns ``kernel``."""
    idx = torch.arange(kernel.shape[0], device=kernel.device)
    kernel[idx, idx, 1, 1] += values
    return kernel


class HyperSearchBlock(nn.Module):
    """RepOptimizer stage 1 (``training_mode="hyper_search"``; meituan/YOLOv6@0.2.0 ``LinearAddBlock``):
    ``relu(BN(s3 * conv3x3(x) + s1 * conv1x1(x) [+ sid * x]))`` -- both convs without bias, each branch
    times a learnable per-channel scale (all initialized to 1), the identity only when ``c1 == c2`` and
    ``stride == 1``, then ONE shared BN. The trained scales are what ``training_mode="repopt"`` reads
    (:func:`yoloforge.families.yolov6.repopt.extract_scales`). ``fuse()`` merges it into one 3x3 conv with bias.

    Ding et al., "Re-parameterizing Your Optimizers rather than Architectures", ICLR 2023 (RepOpt)."""

    #: 1-d parameters that officially get weight decay (``ScaleLayer.weight`` lands in the decayed group of
    #: YOLOv6 0.2.0's ``build_optimizer``, which decays every ``.weight`` that is not a BN's)
    decayed_vectors = ("scale_conv", "scale_1x1", "scale_identity")

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act="relu"):
        super().__init__()
        if k != 3:
            raise ValueError("HyperSearchBlock needs a 3x3 kernel")
        self.c1, self.c2, self.s = c1, c2, s
        self.conv = nn.Conv2d(c1, c2, 3, s, 1, bias=False)
        self.conv_1x1 = nn.Conv2d(c1, c2, 1, s, 0, bias=False)
        self.scale_conv = nn.Parameter(torch.ones(c2))
        self.scale_1x1 = nn.Parameter(torch.ones(c2))
        self.scale_identity = nn.Parameter(torch.ones(c2)) if (c1 == c2 and s == 1) else None
        self.bn = _bn(c2)
        self.act = make_act(act)
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        y = self.conv(x) * self.scale_conv.view(1, -1, 1, 1) + self.conv_1x1(x) * self.scale_1x1.view(1, -1, 1, 1)
        if self.scale_identity is not None:
            y = y + x * self.scale_identity.view(1, -1, 1, 1)
        return self.act(self.bn(y))

    def scales(self) -> tuple[torch.Tensor, ...]:
        """``(identity, 1x1, 3x3)`` scales, or ``(1x1, 3x3)`` without an identity branch (the official order)."""
        own = (self.scale_1x1.detach(), self.scale_conv.detach())
        return ((self.scale_identity.detach(),) + own) if self.scale_identity is not None else own

    @torch.no_grad()
    def merged_kernel(self) -> torch.Tensor:
        """The one 3x3 kernel equal to the three scaled branches (before the BN)."""
        w = self.conv.weight * self.scale_conv.view(-1, 1, 1, 1)
        w = w + F.pad(self.conv_1x1.weight * self.scale_1x1.view(-1, 1, 1, 1), [1, 1, 1, 1])
        return w if self.scale_identity is None else add_centre_diagonal_(w, self.scale_identity)

    @torch.no_grad()
    def fuse(self) -> "HyperSearchBlock":
        if self.reparam is not None:
            return self
        merged = torch.nn.utils.skip_init(nn.Conv2d, self.c1, self.c2, 3, self.s, 1, bias=False,
                                          device=self.conv.weight.device, dtype=self.conv.weight.dtype)
        merged.weight.copy_(self.merged_kernel())
        self.reparam = fuse_conv_bn(merged, self.bn)
        del self.conv, self.conv_1x1, self.scale_conv, self.scale_1x1, self.scale_identity
        self.scale_identity = None
        self.bn = nn.Identity()
        return self


class RealVGGBlock(ConvBNAct):
    """RepOptimizer stage 2 (``training_mode="repopt"``; meituan/YOLOv6@0.2.0 ``RealVGGBlock``): a plain
    3x3 conv (no bias) + BN + ReLU, trained by :class:`yoloforge.families.yolov6.repopt.RepOptimizer`, whose gradient
    masks make it learn like the multi-branch block. Its own class so that the optimizer finds its kernels."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act="relu"):
        if k != 3:
            raise ValueError("RealVGGBlock needs a 3x3 kernel")
        super().__init__(c1, c2, 3, s, act=act)
        self.c1, self.c2, self.s = c1, c2, s


def conv_block(kind: str):
    """Return the basic 3x3 block of a YOLOv6 ``training_mode`` (meituan/YOLOv6@0.2.0 ``get_block``):
    ``"repvgg"`` -> :class:`RepVGGBlock` (ReLU), ``"hyper_search"`` -> :class:`HyperSearchBlock`,
    ``"repopt"`` -> :class:`RealVGGBlock`, ``"conv_silu"`` -> conv(bias)+BN+SiLU, ``"conv_relu"`` ->
    conv(bias)+BN+ReLU. Signature of the result: ``block(c1, c2, k=3, s=1)``."""
    if kind == "repvgg":
        return RepVGGBlock
    if kind == "hyper_search":
        return HyperSearchBlock
    if kind == "repopt":
        return RealVGGBlock
    if kind in ("conv_silu", "conv_relu"):
        act = "silu" if kind == "conv_silu" else "relu"

        def block(c1, c2, k=3, s=1):
            return ConvBNAct(c1, c2, k, s, act=act, bias=True)
        return block
    raise ValueError(f"unknown YOLOv6 training_mode {kind!r}; known: {', '.join(FAMILY.training_modes)}")


class RepBlock(nn.Sequential):
    """A stage of ``n`` stacked basic blocks (YOLOv6 RepBlock): ``block(c1, c2)`` then
    ``n - 1`` times ``block(c2, c2)``."""

    def __init__(self, c1: int, c2: int, n: int = 1, block=RepVGGBlock):
        super().__init__(block(c1, c2), *(block(c2, c2) for _ in range(n - 1)))


class BottleRep(nn.Module):
    """Two basic blocks with a residual whose shortcut is scaled by a learnable ``alpha``
    (YOLOv6 ``BottleRep``, weight=True): ``y = b2(b1(x)) + alpha * x`` when ``c1 == c2``."""

    def __init__(self, c1: int, c2: int, block=RepVGGBlock, learnable_alpha: bool = True):
        super().__init__()
        self.conv1 = block(c1, c2)
        self.conv2 = block(c2, c2)
        self.shortcut = c1 == c2
        if learnable_alpha:
            self.alpha = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("alpha", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + self.alpha * x if self.shortcut else y


class BepC3(nn.Module):
    """CSPStackRep block (YOLOv6 paper Fig. 3(c); ``BepC3`` in the code).

    Two 1x1 convs split the input into ``c_ = int(c2 * e)`` channels each; one path goes through
    ``max(n // 2, 1)`` :class:`BottleRep` blocks (each holds two basic blocks), then both paths are
    concatenated and merged by a 1x1 conv. The 1x1 convs use ReLU, or SiLU when the basic block is
    the ``conv_silu`` kind (``act="silu"``).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, block=RepVGGBlock, act="relu"):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv2 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv3 = ConvBNAct(2 * c_, c2, 1, 1, act=act)
        nb = max(n // 2, 1)
        self.m = nn.Sequential(*(BottleRep(c_, c_, block=block) for _ in range(nb)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Fast spatial pyramid pooling: 1x1 conv to ``c1 // 2``, three chained ``k x k`` max-pools,
    concat of the four maps, 1x1 conv to ``c2`` (equals SPP with kernels k, 2k-1, 3k-2)."""

    def __init__(self, c1: int, c2: int, k: int = 5, act="silu"):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv2 = ConvBNAct(4 * c_, c2, 1, 1, act=act)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.cv1(x)
        y1 = self.pool(y0)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((y0, y1, y2, self.pool(y2)), 1))


class SimSPPF(SPPF):
    """SPPF with ReLU convs (YOLOv6 ``SimSPPF``)."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__(c1, c2, k, act="relu")


class Transpose(nn.Module):
    """Learned 2x upsampling with ``ConvTranspose2d(k=2, s=2)`` (Rep-PAN top-down path)."""

    def __init__(self, c1: int, c2: int, k: int = 2, s: int = 2):
        super().__init__()
        self.up = nn.ConvTranspose2d(c1, c2, k, s, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)
