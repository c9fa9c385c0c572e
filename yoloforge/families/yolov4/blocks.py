"""Building blocks of Scaled-YOLOv4 (CSP-ized YOLOv4, YOLOv4-large) and YOLOv4-tiny.

Wang, Bochkovskiy, Liao, "Scaled-YOLOv4: Scaling Cross Stage Partial Network", CVPR 2021
(arXiv:2011.08036). Block layouts checked against WongKinYiu/ScaledYOLOv4 branch ``yolov4-large``
``models/common.py`` (Bottleneck, BottleneckCSP, BottleneckCSP2, SPPCSP) and, for the tiny model,
branch ``yolov4-tiny`` ``cfg/yolov4-tiny.cfg`` (= AlexeyAB/darknet ``cfg/yolov4-tiny.cfg``).

CSP blocks end with a batch normalization applied to the *concatenation* of two paths
("partial transition"). On ``fuse()`` the slice of that BN that follows a bias-free plain
convolution is folded into it; a slice that follows an activation (the output of a bottleneck
stack or of the SPP path) cannot be folded into a convolution and becomes a per-channel affine
``ChannelAffine`` (the eval-mode BN, two vectors). After ``fuse()`` no ``nn.BatchNorm2d`` is left.
"""
from __future__ import annotations

import torch
from torch import nn

from yoloforge.models.common import ConvBNAct, _bn, fuse_conv_bn, make_act

__all__ = [
    "ChannelAffine", "DarknetBottleneck", "BottleneckCSP", "BottleneckCSP2", "SPPCSP", "TinyCSPBlock",
]


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel: the eval-mode form of a BatchNorm that cannot be folded."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone().view(1, -1, 1, 1))
        self.shift = nn.Parameter(shift.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _bn_slice(bn: nn.BatchNorm2d, start: int, stop: int) -> nn.BatchNorm2d:
    """Channels ``start:stop`` of ``bn`` as a BatchNorm2d of their own (eval-mode statistics)."""
    part = nn.BatchNorm2d(stop - start, eps=bn.eps).to(device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(bn.weight[start:stop])
        part.bias.copy_(bn.bias[start:stop])
        part.running_mean.copy_(bn.running_mean[start:stop])
        part.running_var.copy_(bn.running_var[start:stop])
    return part.eval()


def _bn_affine(bn: nn.BatchNorm2d, start: int, stop: int) -> ChannelAffine:
    s = bn.weight[start:stop] / torch.sqrt(bn.running_var[start:stop] + bn.eps)
    return ChannelAffine(s, bn.bias[start:stop] - bn.running_mean[start:stop] * s)


class DarknetBottleneck(nn.Module):
    """Darknet residual unit: 1x1 conv to ``c2 * e``, 3x3 conv to ``c2``, ``+ x`` when ``shortcut``
    and ``c1 == c2`` (YOLOv3/v4 ``[shortcut]``; ScaledYOLOv4 ``Bottleneck``)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5, act="mish"):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv2 = ConvBNAct(c_, c2, 3, 1, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """CSP stage body of CSPDarknet (paper Fig. 2(b) "CSPDarknet stage"):

    ``cv1`` (1x1, c2/2) -> ``n`` residual units (e = 1) -> plain 1x1 ``cv3``; in parallel a plain 1x1
    ``cv2`` of the input; ``act(BN(cat))`` then 1x1 ``cv4`` to ``c2``. Both concatenated paths end
    with bias-free convolutions, so ``fuse()`` folds the whole partial-transition BN into them."""

    def __init__(self, c1: int, c2: int, n: int = 1, act="mish"):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.m = nn.Sequential(*(DarknetBottleneck(c_, c_, True, 1.0, act) for _ in range(n)))
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.bn = _bn(2 * c_)
        self.act = make_act(act)
        self.cv4 = ConvBNAct(2 * c_, c2, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat((self.cv3(self.m(self.cv1(x))), self.cv2(x)), 1)
        return self.cv4(self.act(self.bn(y)))

    def fuse(self) -> "BottleneckCSP":
        if isinstance(self.bn, nn.BatchNorm2d):
            c_ = self.cv3.out_channels
            self.cv3 = fuse_conv_bn(self.cv3, _bn_slice(self.bn, 0, c_))
            self.cv2 = fuse_conv_bn(self.cv2, _bn_slice(self.bn, c_, 2 * c_))
            self.bn = nn.Identity()
        return self


def _partial_transition(block: nn.Module, c_in: int, c_: int, act, darknet: bool) -> None:
    """The second path ``cv2`` and the normalization of ``cat(path 1, cv2(x))`` of a neck CSP block.

    ScaledYOLOv4 ``yolov4-large`` (yaml models): a plain 1x1 ``cv2`` and ``act(BN(cat))``, so the
    output of path 1 (already conv-BN-Mish) is normalized and activated a second time.
    ``darknet=True`` -- the layout of darknet ``cfg/yolov4-csp.cfg`` (= ScaledYOLOv4 branch
    ``yolov4-csp`` ``models/yolov4-csp.cfg``): ``cv2`` is conv-BN-Mish of its own and the
    concatenation goes straight into the next conv (a ``[route] -1,-k`` then ``[convolutional]``)."""
    if darknet:
        block.cv2 = ConvBNAct(c_in, c_, 1, 1, act=act)
        block.bn, block.act = nn.Identity(), nn.Identity()
    else:
        block.cv2 = nn.Conv2d(c_in, c_, 1, 1, bias=False)
        block.bn = _bn(2 * c_)
        block.act = make_act(act)


def fuse_concat_bn(block: nn.Module) -> nn.Module:
    """Fold the BN that follows the CSP concat ``cat(post(y1), cv2(x))``: its second half into the plain conv
    ``cv2``, its first half (after an activation, so not foldable) into a per-channel affine ``post``."""
    if isinstance(block.bn, nn.BatchNorm2d):
        c_ = block.cv2.out_channels
        with torch.no_grad():
            block.post = _bn_affine(block.bn, 0, c_)
        block.cv2 = fuse_conv_bn(block.cv2, _bn_slice(block.bn, c_, 2 * c_))
        block.bn = nn.Identity()
    return block


class BottleneckCSP2(nn.Module):
    """CSP block of the CSP-PAN neck ("reversed Dark layer" made CSP, paper Fig. 3):

    ``x1 = cv1(x)`` (1x1, c2); one path runs ``n`` plain units (1x1 then 3x3, no shortcut), the
    other a plain 1x1 ``cv2`` of ``x1``; ``act(BN(cat))`` then 1x1 ``cv3``. The BN slice after the
    bottleneck stack becomes a :class:`ChannelAffine` on fuse, the other slice folds into ``cv2``."""

    def __init__(self, c1: int, c2: int, n: int = 1, act="mish", darknet: bool = False):
        super().__init__()
        c_ = c2
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.m = nn.Sequential(*(DarknetBottleneck(c_, c_, False, 1.0, act) for _ in range(n)))
        self.post = nn.Identity()  # BN slice of the bottleneck path once fused
        _partial_transition(self, c_, c_, act, darknet)
        self.cv3 = ConvBNAct(2 * c_, c2, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv1(x)
        y = torch.cat((self.post(self.m(x1)), self.cv2(x1)), 1)
        return self.cv3(self.act(self.bn(y)))

    def fuse(self) -> "BottleneckCSP2":
        return fuse_concat_bn(self)


class SPPCSP(nn.Module):
    """SPP made CSP, placed in the first group of the CSP-PAN (paper Sec. 4.1 "SPP"):

    path 1: 1x1, 3x3, 1x1 convs, then max-pools 5/9/13 (stride 1) concatenated with their input,
    1x1 and 3x3 convs; path 2: plain 1x1 of the input; ``act(BN(cat))`` and a 1x1 to ``c2``.
    Hidden width ``c_ = 2 * c2 * e`` (= ``c2`` for the default ``e = 0.5``)."""

    def __init__(self, c1: int, c2: int, e: float = 0.5, k=(5, 9, 13), act="mish", darknet: bool = False):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv3 = ConvBNAct(c_, c_, 3, 1, act=act)
        self.cv4 = ConvBNAct(c_, c_, 1, 1, act=act)
        self.pools = nn.ModuleList(nn.MaxPool2d(kk, 1, kk // 2) for kk in k)
        self.cv5 = ConvBNAct(c_ * (len(k) + 1), c_, 1, 1, act=act)
        self.cv6 = ConvBNAct(c_, c_, 3, 1, act=act)
        self.post = nn.Identity()
        _partial_transition(self, c1, c_, act, darknet)
        self.cv7 = ConvBNAct(2 * c_, c2, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1, *(p(x1) for p in self.pools)], 1)))
        y = torch.cat((self.post(y1), self.cv2(x)), 1)
        return self.cv7(self.act(self.bn(y)))

    def fuse(self) -> "SPPCSP":
        return fuse_concat_bn(self)


class TinyCSPBlock(nn.Module):
    """One CSPOSANet computational block of YOLOv4-tiny with partial-in-computational-block (PCB).

    Darknet cfg layers: ``conv3x3 c`` (the base layer, ``b``), ``[route] groups=2 group_id=1`` (the
    second half of its channels), two ``conv3x3 c/2`` (growth rate g = b/2, k = 2), ``[route] -1,-2``
    (concat of the two), ``conv1x1 c`` (partial transition), ``[route] -6,-1`` (base layer, transition:
    ``2c`` channels), ``[maxpool] 2/2``. ``forward`` returns ``(pooled output, transition map)``; the
    transition map of the third block is the stride-16 lateral of the tiny FPN (cfg layer 23)."""

    def __init__(self, c1: int, c: int, act="lrelu"):
        super().__init__()
        h = c // 2
        self.base = ConvBNAct(c1, c, 3, 1, act=act)
        self.conv1 = ConvBNAct(h, h, 3, 1, act=act)
        self.conv2 = ConvBNAct(h, h, 3, 1, act=act)
        self.transition = ConvBNAct(c, c, 1, 1, act=act)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.base(x)
        part = b[:, b.shape[1] // 2:]  # route groups=2 group_id=1
        y1 = self.conv1(part)
        y2 = self.conv2(y1)
        t = self.transition(torch.cat((y2, y1), 1))
        return self.pool(torch.cat((b, t), 1)), t
