"""Building blocks of YOLOv7 (Wang, Bochkovskiy, Liao, "YOLOv7: Trainable bag-of-freebies sets new
state-of-the-art for real-time object detectors", CVPR 2023, arXiv:2207.02696).

* :class:`ELAN` -- the efficient layer aggregation computational block (paper Fig. 2(c)) and, with
  ``cardinality > 1``, **E-ELAN** (Fig. 2(d), Sec. 3.1): expand cardinality with group convolution,
  shuffle the concatenated maps into ``g`` groups, transition per group, merge cardinality by adding
  the groups. With ``step=1`` every stacked 3x3 output joins the concatenation (the "ELAN-H" of
  the neck); with ``step=2`` every second one (the backbone ELAN).
* :class:`MPDown` -- the max-pool + strided-conv down-sampling transition ("MP" block): one branch
  max-pools then reduces with 1x1, the other reduces with 1x1 then a 3x3 stride-2 conv.
* :class:`DownC` -- the E6/D6/E6E down-sampling variant (1x1 expansion before the strided 3x3).
* :class:`SPPCSPC` -- spatial pyramid pooling (5, 9, 13) inside a CSP split; ``tiny=True`` drops the
  3x3/1x1 convs around the pooling (yolov7-tiny's head).
* :class:`RepConvN` -- planned re-parameterization (Sec. 3.2.1, Fig. 4): RepConv without its identity
  branch (3x3 + 1x1, each with BN); ``fuse()`` gives one 3x3 conv.
* :class:`ReOrg` -- space-to-depth stem of the P6 models.

Facts (widths, pooling kernels, branch layout) checked against WongKinYiu/yolov7 @ a207844
``models/common.py`` (``MP``, ``SP``, ``ReOrg``, ``DownC``, ``SPPCSPC``, ``RepConv``, ``Shortcut``) and
``cfg/training/*.yaml``; the code here is written independently.
"""
from __future__ import annotations

import torch
from torch import nn

from yoloforge.models.common import ConvBNAct, RepVGGBlock

__all__ = ["ReOrg", "RepConvN", "ELAN", "MPDown", "DownC", "SPPCSPC", "make_down"]


class ReOrg(nn.Module):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)`` (the four 2x2 phases stacked on channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)


class RepConvN(RepVGGBlock):
    """RepConv with no identity connection (YOLOv7 Sec. 3.2.1): ``act(BN(3x3(x)) + BN(1x1(x)))``.

    The paper finds that the identity branch of RepConv destroys the residual / concatenation of the
    surrounding architecture, so wherever a re-parameterized conv feeds a residual or concatenation
    the identity is left out. ``fuse()`` (inherited) pads the 1x1 kernel to 3x3 and adds it to the
    3x3 kernel after folding both BNs: one ``nn.Conv2d(k=3)`` with bias.
    """

    def __init__(self, c1: int, c2: int, s: int = 1, act="silu"):
        super().__init__(c1, c2, 3, s, act=act)
        self.identity = None  # never an identity branch, whatever the shapes


class ELAN(nn.Module):
    """ELAN computational block + its 1x1 transition layer; E-ELAN when ``cardinality > 1``.

    Two 1x1 convs (``hidden`` channels) read the input; ``depth`` 3x3 convs (``inner`` channels) are
    stacked on the second one; the two 1x1 outputs and every ``step``-th 3x3 output are concatenated
    (``concat_width = 2 * hidden + (depth // step) * inner``) and a 1x1 transition gives ``c2``.

    E-ELAN (``cardinality = g``): the same block computed for ``g`` groups at once -- the 1x1 convs
    expand to ``g * hidden`` channels, the 3x3 convs and the transition are group convolutions with
    ``g`` groups, the concatenation is *shuffled* so that each group's maps are contiguous, and the
    ``g`` transition outputs are *merged* by addition. Parameters/FLOPs equal ``g`` parallel ELANs
    whose outputs are summed, which is how the official E6E config writes it (two ELANs + Shortcut).
    """

    def __init__(self, c1: int, c2: int, hidden: int, inner: int, depth: int, step: int = 2,
                 cardinality: int = 1, act="silu"):
        super().__init__()
        if depth < 1 or step < 1 or depth < step:
            raise ValueError(f"ELAN needs depth >= step >= 1, got depth={depth}, step={step}")
        g = self.cardinality = int(cardinality)
        self.step, self.c2 = int(step), int(c2)
        self.cv1 = ConvBNAct(c1, g * hidden, 1, act=act)
        self.cv2 = ConvBNAct(c1, g * hidden, 1, act=act)
        self.m = nn.ModuleList(ConvBNAct(g * (hidden if i == 0 else inner), g * inner, 3, g=g, act=act)
                               for i in range(depth))
        self.concat_width = 2 * hidden + (depth // step) * inner
        self.transition = ConvBNAct(g * self.concat_width, g * c2, 1, g=g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x), self.cv2(x)]
        t = y[-1]
        for i, conv in enumerate(self.m, 1):
            t = conv(t)
            if i % self.step == 0:
                y.append(t)
        g = self.cardinality
        if g == 1:
            return self.transition(torch.cat(y, 1))
        b, _, h, w = t.shape
        # shuffle: per group, the concatenation of that group's maps (group conv then sees them together)
        cat = torch.cat([f.reshape(b, g, -1, h, w) for f in y], 2).reshape(b, -1, h, w)
        # merge cardinality: add the g transition outputs
        return self.transition(cat).reshape(b, g, self.c2, h, w).sum(1)


class MPDown(nn.Module):
    """Max-pool + strided-conv down-sampling: ``cat(3x3s2(1x1(x)), 1x1(maxpool2(x)))``, ``2 * c_`` out.

    The backbone uses ``c_ = c1 / 2`` (width kept), the neck ``c_ = c1`` (width doubled).
    """

    def __init__(self, c1: int, c_: int, act="silu"):
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.cv_pool = ConvBNAct(c1, c_, 1, act=act)
        self.cv_reduce = ConvBNAct(c1, c_, 1, act=act)
        self.cv_stride = ConvBNAct(c_, c_, 3, 2, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.cv_stride(self.cv_reduce(x)), self.cv_pool(self.pool(x))), 1)


class DownC(nn.Module):
    """Down-sampling of E6/D6/E6E: ``cat(3x3s2(1x1(x)), 1x1(maxpool2(x)))`` with the 1x1 before the
    strided conv keeping ``c1`` channels and each branch giving ``c2 / 2``."""

    def __init__(self, c1: int, c2: int, act="silu"):
        super().__init__()
        if c2 % 2:
            raise ValueError(f"DownC needs an even output width, got {c2}")
        self.pool = nn.MaxPool2d(2, 2)
        self.cv_expand = ConvBNAct(c1, c1, 1, act=act)
        self.cv_stride = ConvBNAct(c1, c2 // 2, 3, 2, act=act)
        self.cv_pool = ConvBNAct(c1, c2 // 2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.cv_stride(self.cv_expand(x)), self.cv_pool(self.pool(x))), 1)


class SPPCSPC(nn.Module):
    """SPP inside a CSP split (YOLOv7 neck entry): one path is 1x1 -> 3x3 -> 1x1, max-pools
    (5, 9, 13, stride 1) concatenated with their input, 1x1 -> 3x3; the other path is a 1x1; the
    two are concatenated and merged by a 1x1. Hidden width = ``c2``. ``tiny=True`` (yolov7-tiny)
    keeps only the 1x1 convs: ``1x1 -> pools -> 1x1`` beside a 1x1 shortcut, merged by a 1x1."""

    def __init__(self, c1: int, c2: int, k=(5, 9, 13), tiny: bool = False, act="silu"):
        super().__init__()
        c_ = c2
        pre = [ConvBNAct(c1, c_, 1, act=act)]
        post = [ConvBNAct((len(k) + 1) * c_, c_, 1, act=act)]
        if not tiny:
            pre += [ConvBNAct(c_, c_, 3, act=act), ConvBNAct(c_, c_, 1, act=act)]
            post += [ConvBNAct(c_, c_, 3, act=act)]
        self.pre, self.post = nn.Sequential(*pre), nn.Sequential(*post)
        self.pools = nn.ModuleList(nn.MaxPool2d(kk, 1, kk // 2) for kk in k)
        self.shortcut = ConvBNAct(c1, c_, 1, act=act)
        self.merge = ConvBNAct(2 * c_, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        y = self.post(torch.cat([y] + [p(y) for p in self.pools], 1))
        return self.merge(torch.cat((y, self.shortcut(x)), 1))


def make_down(kind: str, c1: int, width: int, act="silu") -> tuple[nn.Module, int]:
    """Down-sampling transition by name -> ``(module, output channels)``.

    ``"none"`` (identity), ``"maxpool"`` (2x2 max-pool, yolov7-tiny backbone), ``"mp"``
    (:class:`MPDown`, ``width`` = each branch), ``"conv"`` (3x3 stride-2 conv, ``width`` out),
    ``"downc"`` (:class:`DownC`, ``width`` out).
    """
    if kind == "none":
        return nn.Identity(), c1
    if kind == "maxpool":
        return nn.MaxPool2d(2, 2), c1
    if kind == "mp":
        return MPDown(c1, width, act=act), 2 * width
    if kind == "conv":
        return ConvBNAct(c1, width, 3, 2, act=act), width
    if kind == "downc":
        return DownC(c1, width, act=act), width
    raise ValueError(f"unknown down-sampling kind {kind!r}; known: none, maxpool, mp, conv, downc")
