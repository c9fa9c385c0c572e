"""YOLOv7: tiny / P5 (yolov7, yolov7x) / P6 (w6, e6, d6, e6e).

Wang, Bochkovskiy, Liao, "YOLOv7: Trainable bag-of-freebies sets new state-of-the-art for real-time
object detectors", CVPR 2023, arXiv:2207.02696. The network reads top-down like the paper:

* **backbone** -- a stem (plain convs; space-to-depth ``ReOrg`` first for P6), then stages of
  *down-sampling transition* (max-pool + strided-conv ``MP`` block for P5, strided conv for W6,
  ``DownC`` for E6/D6/E6E, plain max-pool for tiny) followed by an **ELAN** computational block
  (Fig. 2(c)); E6E uses **E-ELAN** (Fig. 2(d), Sec. 3.1: expand / shuffle / merge cardinality);
* **neck** -- **SPPCSPC** on the last backbone map, an FPN top-down path (1x1 reduce + nearest 2x
  upsample, 1x1 lateral, concat, ELAN-H) and a PAN bottom-up path (down-sampling, concat, ELAN-H);
* **lead head** -- per level a 3x3 conv (**RepConvN**, Sec. 3.2.1 "planned re-parameterization",
  in yolov7; plain conv elsewhere) then the anchor-based ``IDetect`` head with YOLOR implicit
  knowledge (``ImplicitA`` add before, ``ImplicitM`` multiply after the 1x1; folded by ``fuse()``);
* **auxiliary head** (P6 only, Sec. 3.3 deep supervision, Fig. 5(b)) -- 3x3 convs on the FPN
  outputs (the "middle" of the network) then a plain anchor head; used by the loss in training
  (lead-head-guided coarse labels) and **deleted** by ``fuse()`` (it costs nothing at inference).

Structure, widths and anchors: WongKinYiu/yolov7 @ a207844 ``cfg/training/*.yaml`` (facts only);
variant specs and compound scaling live in :mod:`yoloforge.families.yolov7.specs`. Parameter counts
equal the official ones exactly (training cfgs unfused with aux, deploy cfgs fused). Known layout
differences that change no count: concatenation order inside ELAN blocks (so official checkpoints
need a channel permutation to load), and in E6E the aux head reads the merged E-ELAN outputs where
the official cfg taps the second cardinality branch before the merge (P3-P5).
"""
from __future__ import annotations

import torch
from torch import nn

from yoloforge.models.anchor_head import AnchorHead
from yoloforge.models.base import DetectionModel
from yoloforge.models.common import ConvBNAct
from yoloforge.families.registry import register
from yoloforge.families.yolov7.blocks import ELAN, SPPCSPC, ReOrg, RepConvN, make_down
from yoloforge.families.yolov7.specs import SPECS, ELANSpec, YOLOv7Spec

__all__ = ["YOLOv7", "YOLOv7Backbone", "YOLOv7Neck", "elan_from_spec"]


def elan_from_spec(c1: int, b: ELANSpec, act: str) -> ELAN:
    return ELAN(c1, b.out, b.hidden, b.inner, b.depth, b.step, b.cardinality, act=act)


class YOLOv7Backbone(nn.Module):
    """Stem, then ``[down-sampling transition -> (E-)ELAN]`` per stage; returns every stage output."""

    def __init__(self, spec: YOLOv7Spec, in_ch: int = 3):
        super().__init__()
        act = spec.act
        layers: list[nn.Module] = []
        c = in_ch
        if spec.reorg:
            layers.append(ReOrg())
            c *= 4
        for c2, k, s in spec.stem:
            layers.append(ConvBNAct(c, c2, k, s, act=act))
            c = c2
        self.stem = nn.Sequential(*layers)
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        for st in spec.stages:
            down, c = make_down(st.down, c, st.down_width, act)
            self.stages.append(nn.Sequential(down, elan_from_spec(c, st.block, act)))
            c = st.block.out
            self.out_channels.append(c)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class YOLOv7Neck(nn.Module):
    """SPPCSPC + FPN (top-down) + PAN (bottom-up) with ELAN blocks.

    ``forward(feats)`` (the last ``nl`` backbone maps, fine to coarse) returns ``(pan, fpn)``: the
    PAN outputs feed the lead head, the FPN outputs (top level = SPPCSPC) feed the auxiliary head.
    """

    def __init__(self, spec: YOLOv7Spec, in_channels: list[int]):
        super().__init__()
        act, nl = spec.act, len(in_channels)
        if len(spec.top_down) != nl - 1 or len(spec.bottom_up) != nl - 1:
            raise ValueError("a YOLOv7 spec needs nl - 1 top-down and bottom-up steps")
        self.spp = SPPCSPC(in_channels[-1], spec.spp, tiny=spec.spp_tiny, act=act)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce, self.lateral, self.td = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = spec.spp
        fpn_ch = [c]  # coarse to fine
        for i, t in enumerate(spec.top_down):
            self.reduce.append(ConvBNAct(c, t.width, 1, act=act))
            self.lateral.append(ConvBNAct(in_channels[nl - 2 - i], t.width, 1, act=act))
            self.td.append(elan_from_spec(2 * t.width, t.block, act))
            c = t.block.out
            fpn_ch.append(c)
        self.fpn_channels = fpn_ch[::-1]  # fine to coarse
        self.down, self.bu = nn.ModuleList(), nn.ModuleList()
        for i, st in enumerate(spec.bottom_up):
            down, cd = make_down(st.down, c, st.down_width, act)
            self.down.append(down)
            self.bu.append(elan_from_spec(cd + self.fpn_channels[i + 1], st.block, act))
            c = st.block.out
        self.pan_channels = [self.fpn_channels[0]] + [st.block.out for st in spec.bottom_up]

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        nl = len(self.reduce) + 1
        feats = feats[-nl:]
        x = self.spp(feats[-1])
        fpn = [x]
        for i, (reduce, lateral, block) in enumerate(zip(self.reduce, self.lateral, self.td)):
            x = block(torch.cat((lateral(feats[nl - 2 - i]), self.up(reduce(x))), 1))
            fpn.append(x)
        fpn = fpn[::-1]
        pan = [x]
        for i, (down, block) in enumerate(zip(self.down, self.bu)):
            x = block(torch.cat((down(x), fpn[i + 1]), 1))
            pan.append(x)
        return pan, fpn


class YOLOv7(DetectionModel):
    """YOLOv7 detector (see the module docstring).

    * train mode: ``dict(main=[(B, na, H, W, 5 + nc)] * nl, aux=same or None)`` raw logits;
    * eval mode: ``(B, N, 4 + nc)`` from the lead head only (xyxy input pixels, obj * cls scores);
    * ``fuse()``: BN folded, RepConvN -> one 3x3, implicit layers folded into the head convs, and the
      auxiliary head deleted (``aux_head`` becomes ``None``).

    Attributes: ``spec`` (:class:`~yoloforge.families.yolov7.specs.YOLOv7Spec`), ``backbone``,
    ``neck``, ``head_convs`` + ``head`` (lead :class:`AnchorHead`, ``implicit=True``), ``aux_convs`` +
    ``aux_head`` (:class:`AnchorHead` or ``None``), ``anchors`` ((nl, na, 2) pixels).
    """

    family = "yolov7"

    def __init__(self, variant: str = "yolov7", nc: int = 80, name: str | None = None,
                 spec: YOLOv7Spec | None = None):
        if spec is None:
            if variant not in SPECS:
                raise ValueError(f"unknown YOLOv7 variant {variant!r}; known: {', '.join(SPECS)}")
            spec, hyp = SPECS[variant]
        else:
            hyp = "p6" if len(spec.strides) == 4 else ("tiny" if spec.act == "lrelu" else "p5")
        super().__init__(name or variant, nc, spec.strides)
        self.spec, self.variant, self.default_hyp = spec, variant, hyp
        self._max_stride = int(max(spec.strides))  # python int: forward also runs on the meta device
        act = spec.act
        self.backbone = YOLOv7Backbone(spec)
        nl = len(spec.strides)
        self.neck = YOLOv7Neck(spec, self.backbone.out_channels[-nl:])
        conv = (lambda c1, c2: RepConvN(c1, c2, act=act)) if spec.head_conv == "repconv" else \
            (lambda c1, c2: ConvBNAct(c1, c2, 3, act=act))
        self.head_convs = nn.ModuleList(conv(c1, c2) for c1, c2 in zip(self.neck.pan_channels, spec.head_convs))
        self.head = AnchorHead(self.nc, spec.anchors, spec.head_convs, spec.strides, decode="scaled", implicit=True)
        if spec.aux_convs is not None:
            self.aux_convs = nn.ModuleList(ConvBNAct(c1, c2, 3, act=act)
                                           for c1, c2 in zip(self.neck.fpn_channels, spec.aux_convs))
            self.aux_head = AnchorHead(self.nc, spec.anchors, spec.aux_convs, spec.strides, decode="scaled")
        else:
            self.aux_convs = self.aux_head = None

    @property
    def anchors(self) -> torch.Tensor:
        """(nl, na, 2) anchor sizes in input pixels."""
        return self.head.anchors

    def initialize_biases(self) -> None:
        self.head.initialize_biases()
        if self.aux_head is not None:
            self.aux_head.initialize_biases()

    def forward(self, x: torch.Tensor):
        s = self._max_stride
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"{self.name} input size must be divisible by {s}, got {tuple(x.shape[-2:])}")
        pan, fpn = self.neck(self.backbone(x))
        main = self.head.raw([conv(f) for conv, f in zip(self.head_convs, pan)])
        if not self.training:
            return self.head.decode(main)
        aux = None
        if self.aux_head is not None:
            aux = self.aux_head.raw([conv(f) for conv, f in zip(self.aux_convs, fpn)])
        return dict(main=main, aux=aux)

    def fuse(self) -> "YOLOv7":
        """Deploy form in place: the auxiliary head is dropped, then BN / RepConvN / implicit folded."""
        self.aux_convs = self.aux_head = None
        return super().fuse()

    def build_loss(self, hyp: dict):
        from yoloforge.families.yolov7.loss import YOLOv7Loss

        return YOLOv7Loss(nc=self.nc, anchors=self.head.anchors, strides=self.stride.tolist(), hyp=hyp,
                          aux=self.aux_head is not None)


def _builder(variant: str):
    def build(nc: int = 80, **kw) -> YOLOv7:
        return YOLOv7(variant, nc=nc, **kw)
    build.__name__ = variant.replace("-", "_")
    build.__doc__ = f"{variant} ({SPECS[variant][1]} hyper-parameters)."
    return build


for _v in SPECS:
    register(_v)(_builder(_v))
