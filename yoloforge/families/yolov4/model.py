"""Scaled-YOLOv4: YOLOv4-CSP, YOLOv4-P5 / P6 / P7 (YOLOv4-large) and YOLOv4-tiny.

Wang, Bochkovskiy, Liao, "Scaled-YOLOv4: Scaling Cross Stage Partial Network", CVPR 2021
(arXiv:2011.08036); Bochkovskiy et al., "YOLOv4: Optimal Speed and Accuracy of Object Detection",
arXiv:2004.10934. The networks read top-down like the paper (Sec. 4):

* **backbone -- CSPDarknet53** (Sec. 4.1): a 3x3 stem, then per stride a 3x3 stride-2 conv followed by
  a CSP stage (:class:`~.yolov4_blocks.BottleneckCSP`). YOLOv4-CSP keeps the *first* stage a plain
  Darknet residual unit (the CSP stage only pays off for k > 1); repeats 1-2-8-8-4. YOLOv4-large
  (Sec. 4.3) makes every stage CSP with repeats 1-3-15-15-7, adds 7-repeat stages for P6 and P7,
  and P7 widens all channels by 1.25.
* **neck -- CSP-PAN** (Sec. 4.1): :class:`~.yolov4_blocks.SPPCSP` (SPP inside the first CSP-PAN group)
  on the last stage, a top-down path (1x1 reduce, nearest 2x upsample, 1x1 lateral, concat,
  ``BottleneckCSP2``) and a bottom-up path (3x3 stride-2 conv, concat, ``BottleneckCSP2``); every
  output goes through a 3x3 conv that doubles its width before the head. Mish everywhere.
* **head** -- YOLOv3-style anchor head (:class:`~.anchor_head.AnchorHead`) with the Scaled-YOLOv4
  decode ``xy = (2 sigmoid - 0.5 + grid) * s``, ``wh = (2 sigmoid)^2 * anchor``.
* **YOLOv4-tiny** (Sec. 4.2): CSPOSANet with partial-in-computational-block
  (:class:`~.yolov4_blocks.TinyCSPBlock`), leaky ReLU 0.1, a YOLOv3-tiny FPN with two outputs
  (strides 16 and 32) and the darknet decode with ``scale_x_y = 1.05``.
* **optional BoF/BoS switches** (YOLOv4 Sec. 3.4, :mod:`~.bof`): ``dropblock=p`` puts a
  :class:`~.bof.DropBlock2d` (7x7) after every CSP block of the CSP-PAN (SPPCSP, top-down and
  bottom-up ``BottleneckCSP2``; the tiny model: after each neck output). No official darknet or
  ScaledYOLOv4 detector cfg uses DropBlock, so this placement is yoloforge's. ``sam=True`` puts a
  point-wise :class:`~.bof.SpatialAttention` on every level in front of the head (darknet
  ``cfg/yolov4-sam-mish-csp-reorg-bfm.cfg`` applies it to the last CSP concat of each level, one
  transition + 3x3 conv earlier). Both are recorded in ``build_kwargs``; ``fuse()`` removes the
  DropBlocks and folds SAM's BN.

Layouts, widths, depths and anchors: WongKinYiu/ScaledYOLOv4 branch ``yolov4-large``
``models/yolov4-{csp,p5,p6,p7}.yaml`` and branch ``yolov4-tiny`` ``cfg/yolov4-tiny.cfg`` (identical
to AlexeyAB/darknet ``cfg/yolov4-tiny.cfg``; anchor masks 3,4,5 at stride 32 and 1,2,3 at stride 16,
so anchor 0 is unused). Channel widths are scaled as ``ceil(c * width / 8) * 8``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from yoloforge.models.anchor_head import AnchorHead
from yoloforge.models.base import DetectionModel
from yoloforge.families.yolov4.bof import DropBlock2d, SpatialAttention, strip_dropblock
from yoloforge.models.common import ConvBNAct
from yoloforge.families.registry import register
from yoloforge.families.yolov4.blocks import BottleneckCSP, BottleneckCSP2, DarknetBottleneck, SPPCSP, TinyCSPBlock

__all__ = ["YOLOv4", "YOLOv4Spec", "VARIANTS", "CSPDarknet", "CSPPAN", "TinyBackbone", "TinyNeck"]

# Anchors (pixels), ScaledYOLOv4@yolov4-large models/*.yaml; tiny from cfg/yolov4-tiny.cfg + masks.
ANCHORS_CSP = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
ANCHORS_P5 = ((13, 17, 31, 25, 24, 51, 61, 45), (48, 102, 119, 96, 97, 189, 217, 184),
              (171, 384, 324, 451, 616, 618, 800, 800))
ANCHORS_P6 = ((13, 17, 31, 25, 24, 51, 61, 45), (61, 45, 48, 102, 119, 96, 97, 189),
              (97, 189, 217, 184, 171, 384, 324, 451), (324, 451, 545, 357, 616, 618, 1024, 1024))
ANCHORS_P7 = ((13, 17, 22, 25, 27, 66, 55, 41), (57, 88, 112, 69, 69, 177, 136, 138),
              (136, 138, 287, 114, 134, 275, 268, 248), (268, 248, 232, 504, 445, 416, 640, 640),
              (812, 393, 477, 808, 1070, 908, 1408, 1408))
TINY_ANCHORS_ALL = (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)
TINY_MASKS = ((1, 2, 3), (3, 4, 5))  # stride 16, stride 32
ANCHORS_TINY = tuple(tuple(v for i in mask for v in TINY_ANCHORS_ALL[2 * i:2 * i + 2]) for mask in TINY_MASKS)

STAGE_CHANNELS = (64, 128, 256, 512, 1024, 1024, 1024)  # strides 2 .. 128
NECK_CHANNELS = (128, 256, 512, 512, 512)  # CSP-PAN width at P3 .. P7 (head convs double it)


@dataclass(frozen=True)
class YOLOv4Spec:
    """One Scaled-YOLOv4 variant (CSPDarknet + CSP-PAN); the tiny model has its own layout."""

    repeats: tuple  # residual units per backbone stage, strides 2, 4, 8, ...
    plain_first: bool  # first stage a plain Darknet residual unit (YOLOv4-CSP) instead of CSP
    neck_n: int  # BottleneckCSP2 depth
    width: float  # channel multiple
    anchors: tuple  # per output level (P3 ..), pixels
    imgsz: int  # training / test size of the official model


VARIANTS: dict[str, YOLOv4Spec] = {
    "csp": YOLOv4Spec((1, 2, 8, 8, 4), True, 2, 1.0, ANCHORS_CSP, 640),
    "p5": YOLOv4Spec((1, 3, 15, 15, 7), False, 3, 1.0, ANCHORS_P5, 896),
    "p6": YOLOv4Spec((1, 3, 15, 15, 7, 7), False, 3, 1.0, ANCHORS_P6, 1280),
    "p7": YOLOv4Spec((1, 3, 15, 15, 7, 7, 7), False, 3, 1.25, ANCHORS_P7, 1536),
}


def scaled_kwargs(name: str, width: float, depth: float) -> dict:
    """``build_model`` keywords of ``name`` with its width multiplied (``yoloforge scale`` sweeps); the CSP models
    have no depth multiplier (their stage depths are the paper's table) and yolov4-tiny neither."""
    if depth != 1.0:
        raise ValueError(f"{name}: no depth multiplier option (depth: yolov6*)")
    return dict(width_scale=width)


def scale_width(c: int, width: float) -> int:
    return math.ceil(c * width / 8) * 8


class CSPDarknet(nn.Module):
    """CSPDarknet53 (and its YOLOv4-large extension). Returns the maps of strides 8, 16, ... 2^(k+1)."""

    def __init__(self, repeats, plain_first: bool, width: float = 1.0, act="mish", in_ch: int = 3):
        super().__init__()
        w = [scale_width(c, width) for c in STAGE_CHANNELS[:len(repeats)]]
        self.out_channels = w[2:]
        self.stem = ConvBNAct(in_ch, scale_width(32, width), 3, 1, act=act)
        stages, c_prev = [], self.stem.conv.out_channels
        for i, (c, n) in enumerate(zip(w, repeats)):
            down = ConvBNAct(c_prev, c, 3, 2, act=act)
            if i == 0 and plain_first:
                body = nn.Sequential(*(DarknetBottleneck(c, c, True, 0.5, act) for _ in range(n)))
            else:
                body = BottleneckCSP(c, c, n, act=act)
            stages.append(nn.Sequential(down, body))
            c_prev = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                outs.append(x)
        return outs


class CSPPAN(nn.Module):
    """CSP-PAN with SPPCSP on the top level. ``in_channels``: backbone maps P3 .. Ptop.
    Returns per level the 3x3 output conv maps (twice the neck width) for the head."""

    def __init__(self, in_channels, n: int, width: float = 1.0, act="mish", dropblock: float = 0.0,
                 darknet: bool = False):
        super().__init__()
        nl = len(in_channels)
        self.drop = DropBlock2d(dropblock) if dropblock > 0 else nn.Identity()  # after each CSP block
        w = [scale_width(c, width) for c in NECK_CHANNELS[:nl]]
        self.spp = SPPCSP(in_channels[-1], w[-1], act=act, darknet=darknet)
        # top-down: for level i (from nl-2 down to 0) reduce the level above to w[i], lateral to w[i]
        self.reduce = nn.ModuleList(ConvBNAct(w[i + 1], w[i], 1, 1, act=act) for i in range(nl - 1))
        self.lateral = nn.ModuleList(ConvBNAct(in_channels[i], w[i], 1, 1, act=act) for i in range(nl - 1))
        self.td = nn.ModuleList(BottleneckCSP2(2 * w[i], w[i], n, act=act, darknet=darknet) for i in range(nl - 1))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        # bottom-up: level i (1 .. nl-1) gets a stride-2 conv from level i-1
        self.down = nn.ModuleList(ConvBNAct(w[i - 1], w[i], 3, 2, act=act) for i in range(1, nl))
        self.bu = nn.ModuleList(BottleneckCSP2(2 * w[i], w[i], n, act=act, darknet=darknet) for i in range(1, nl))
        self.out = nn.ModuleList(ConvBNAct(c, 2 * c, 3, 1, act=act) for c in w)
        self.out_channels = [2 * c for c in w]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        nl = len(feats)
        td = [None] * nl
        td[-1] = self.drop(self.spp(feats[-1]))
        for i in range(nl - 2, -1, -1):  # top-down (route order of the yaml: lateral, upsampled)
            up = self.up(self.reduce[i](td[i + 1]))
            td[i] = self.drop(self.td[i](torch.cat((self.lateral[i](feats[i]), up), 1)))
        pan = [td[0]]
        for i in range(1, nl):  # bottom-up
            pan.append(self.drop(self.bu[i - 1](torch.cat((self.down[i - 1](pan[-1]), td[i]), 1))))
        return [conv(p) for conv, p in zip(self.out, pan)]


class TinyBackbone(nn.Module):
    """CSPOSANet of YOLOv4-tiny: two 3x3 stride-2 convs (32, 64), three PCB blocks (64, 128, 256)
    each ending in a 2x2 max-pool, then a 3x3 conv to 512. Returns (stride-16 lateral, stride-32 map)."""

    def __init__(self, act="lrelu", in_ch: int = 3):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(in_ch, 32, 3, 2, act=act), ConvBNAct(32, 64, 3, 2, act=act))
        self.block1 = TinyCSPBlock(64, 64, act)
        self.block2 = TinyCSPBlock(128, 128, act)
        self.block3 = TinyCSPBlock(256, 256, act)
        self.conv = ConvBNAct(512, 512, 3, 1, act=act)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, _ = self.block1(self.stem(x))
        x, _ = self.block2(x)
        x, lateral = self.block3(x)
        return [lateral, self.conv(x)]


class TinyNeck(nn.Module):
    """YOLOv3-tiny style FPN of YOLOv4-tiny: 1x1 256 on the stride-32 map, 3x3 512 -> head;
    1x1 128 + 2x upsample, concat with the stride-16 lateral (256), 3x3 256 -> head."""

    out_channels = [256, 512]

    def __init__(self, act="lrelu"):
        super().__init__()
        self.reduce = ConvBNAct(512, 256, 1, 1, act=act)
        self.out32 = ConvBNAct(256, 512, 3, 1, act=act)
        self.reduce16 = ConvBNAct(256, 128, 1, 1, act=act)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.out16 = ConvBNAct(128 + 256, 256, 3, 1, act=act)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lateral, x = feats
        r = self.reduce(x)
        p16 = self.out16(torch.cat((self.up(self.reduce16(r)), lateral), 1))
        return [p16, self.out32(r)]


class YOLOv4(DetectionModel):
    """Scaled-YOLOv4 detector (see the module docstring). ``variant`` in ``csp | p5 | p6 | p7 | tiny``.

    * train mode: ``dict(main=[(B, na, H, W, 5 + nc) raw logits per level], aux=None)``;
    * eval mode: ``(B, N, 4 + nc)`` -- xyxy input pixels, scores ``sigmoid(obj) * sigmoid(cls)``.

    ``default_imgsz`` is the official training/test size; ``anchors`` may override the official
    anchors (per level, pixels, e.g. after an autoanchor run); ``width_scale`` multiplies the
    variant's channel multiple (compound scaling of the width, Sec. 3; 1.0 = the official model).
    ``dropblock`` (drop probability, 0 = off) and ``sam`` switch on the YOLOv4 DropBlock and SAM
    (see the module docstring); the defaults build the official model. ``darknet_neck=True`` builds
    the CSP-PAN as darknet ``cfg/yolov4-csp.cfg`` lays it out (see
    :func:`~.yolov4_blocks._partial_transition`): the model that darknet ``.weights`` and the
    ScaledYOLOv4 ``yolov4-csp`` branch hold.
    """

    family = "yolov4"
    default_hyp = "yolov4"

    def __init__(self, variant: str = "csp", nc: int = 80, name: str | None = None, anchors=None,
                 width_scale: float = 1.0, dropblock: float = 0.0, sam: bool = False, darknet_neck: bool = False):
        if variant != "tiny" and variant not in VARIANTS:
            raise ValueError(f"unknown YOLOv4 variant {variant!r}; known: {', '.join([*VARIANTS, 'tiny'])}")
        if variant == "tiny" and width_scale != 1.0:
            raise ValueError("yolov4-tiny has no width_scale option")
        kw = {} if anchors is None else dict(anchors=[list(map(float, a)) for a in anchors])
        if width_scale != 1.0:
            kw["width_scale"] = float(width_scale)
        if not 0.0 <= dropblock < 1.0:
            raise ValueError(f"dropblock is a drop probability in [0, 1), got {dropblock}")
        if dropblock > 0:
            kw["dropblock"] = float(dropblock)
        if sam:
            kw["sam"] = True
        if darknet_neck:
            if variant == "tiny":
                raise ValueError("darknet_neck applies to the CSP-PAN models (csp, p5, p6, p7), not yolov4-tiny")
            kw["darknet_neck"] = True
        if variant == "tiny":
            strides, default_anchors, imgsz = (16, 32), ANCHORS_TINY, 416
        else:
            spec = VARIANTS[variant]
            strides = tuple(2 ** (i + 3) for i in range(len(spec.repeats) - 2))
            default_anchors, imgsz = spec.anchors, spec.imgsz
        anchors = default_anchors if anchors is None else anchors
        if len(anchors) != len(strides):
            raise ValueError(f"yolov4-{variant} needs anchors for {len(strides)} levels, got {len(anchors)}")
        super().__init__(name or f"yolov4-{variant}", nc, strides, **kw)
        self.variant, self.default_imgsz, self._max_stride = variant, imgsz, max(strides)
        if variant == "tiny":
            self.backbone, self.neck = TinyBackbone(), TinyNeck()
            self.drop = DropBlock2d(dropblock) if dropblock > 0 else nn.Identity()  # after each neck output
            decode, scale_xy = "darknet", 1.05
        else:
            width = spec.width * width_scale
            self.backbone = CSPDarknet(spec.repeats, spec.plain_first, width)
            self.neck = CSPPAN(self.backbone.out_channels, spec.neck_n, width, dropblock=dropblock, darknet=darknet_neck)
            self.drop = nn.Identity()  # the CSP-PAN holds the DropBlock
            decode, scale_xy = "scaled", 1.0
        self.sam = nn.ModuleList(SpatialAttention(c) for c in self.neck.out_channels) if sam else None
        self.head = AnchorHead(self.nc, [list(a) for a in anchors], self.neck.out_channels, strides,
                               decode=decode, scale_xy=scale_xy)

    def initialize_biases(self, class_freq=None) -> None:
        self.head.initialize_biases(class_freq)

    def forward(self, x: torch.Tensor):
        s = self._max_stride
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"{self.name}: input size must be divisible by {s}, got {tuple(x.shape[-2:])}")
        feats = [self.drop(f) for f in self.neck(self.backbone(x))]
        if self.sam is not None:
            feats = [m(f) for m, f in zip(self.sam, feats)]
        raw = self.head.raw(feats)
        if self.training:
            return dict(main=raw, aux=None)
        return self.head.decode(raw)

    def fuse(self) -> "YOLOv4":
        """Deploy form: DropBlocks removed, then the BN folding of :meth:`DetectionModel.fuse`."""
        strip_dropblock(self)
        return super().fuse()

    def build_loss(self, hyp: dict | None = None):
        from yoloforge.families.yolov4.loss import YOLOv4Loss

        return YOLOv4Loss(self.nc, self.head.anchors, self.stride.tolist(), hyp or {},
                          decode=self.head.decode_kind, scale_xy=self.head.scale_xy)


def _builder(variant: str):
    def build(nc: int = 80, **kw) -> YOLOv4:
        return YOLOv4(variant, nc=nc, name=f"yolov4-{variant}", **kw)
    build.__name__ = f"yolov4_{variant}"
    build.__doc__ = f"YOLOv4-{variant.upper()} (Scaled-YOLOv4); ``anchors=`` overrides the official anchors."
    return build


for _v in (*VARIANTS, "tiny"):
    register(f"yolov4-{_v}")(_builder(_v))
