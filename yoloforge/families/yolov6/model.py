"""YOLOv6 release 2.0 (meituan/YOLOv6 tag 0.2.0): N / T / S / M / L.

Li et al., "YOLOv6: A Single-Stage Object Detection Framework for Industrial Applications",
arXiv:2209.02976. The network reads top-down like the paper:

* backbone (Sec. 2.1.1): **EfficientRep** for the small models (N/T/S) -- RepVGG stride-2 blocks
  followed by RepBlocks, SimSPPF at the end; **CSPBepBackbone** for M/L -- the RepBlocks are
  replaced by CSPStackRep (``BepC3``) blocks with expansion ``csp_e``;
* neck (Sec. 2.1.2): **Rep-PAN** -- PAN topology, 1x1 SimConv reduce + transposed-conv upsampling
  top-down, 3x3 stride-2 SimConv bottom-up, RepBlock (N/T/S) or CSPStackRep (M/L) after each concat;
* head (Sec. 2.1.3): **efficient decoupled head** -- per level a 1x1 stem, one 3x3 conv for the
  classification branch and one for the regression branch, 1x1 predictors ("hybrid channels": the
  head keeps the neck's width), anchor-free point prediction (Sec. 2.3.3), with DFL bins for M/L.

Scaling (meituan/YOLOv6@0.2.0 ``yolov6/models/yolo.py`` build_network): repeats
``[1, 6, 12, 18, 6]`` (backbone) + ``[12, 12, 12, 12]`` (neck) become ``max(round(n * depth), 1)``
for ``n > 1``; channels ``[64, 128, 256, 512, 1024]`` + ``[256, 128, 128, 256, 256, 512]`` become
``ceil(c * width / 8) * 8``. Variant settings from ``configs/yolov6{n,s,m,l}.py`` at 0.2.0; the T
variant is the paper's T (depth 0.25 / width 0.50, see ../shared/FACTS.md), not 0.2.0's
``yolov6t.py``. YOLOv6-L trains with ``training_mode = "conv_silu"`` (plain conv+BN+SiLU blocks,
SiLU CSP convs, SPPF instead of SimSPPF); ``yolov6l-relu`` is the RepVGG/ReLU version. Any variant takes
``training_mode="hyper_search"`` or ``"repopt"`` (the two RepOptimizer stages, see
:mod:`yoloforge.families.yolov6.repopt`); all modes fuse to the same deploy graph.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from yoloforge.models.base import DetectionModel
from yoloforge.families.yolov6.blocks import BepC3, RepBlock, SimConv, SimSPPF, SPPF, Transpose, conv_block
from yoloforge.models.common import ConvBNAct
from yoloforge.models.box_coder import dfl_expectation, distances_to_boxes, make_anchor_points
from yoloforge.families.registry import register

BACKBONE_REPEATS = (1, 6, 12, 18, 6)
BACKBONE_CHANNELS = (64, 128, 256, 512, 1024)
NECK_REPEATS = (12, 12, 12, 12)
NECK_CHANNELS = (256, 128, 128, 256, 256, 512)
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class YOLOv6Spec:
    """One variant: multiples, topology and head/loss settings (0.2.0 configs)."""

    depth: float
    width: float
    csp: bool = False  # CSPBepBackbone + CSPRepPANNeck (M/L)
    csp_e: float = 0.5
    training_mode: str = "repvgg"  # repvgg | hyper_search | repopt | conv_silu | conv_relu (FAMILY.training_modes)
    reg_max: int = 0  # 0: plain ltrb regression; 16: DFL bins
    iou_type: str = "giou"


VARIANTS: dict[str, YOLOv6Spec] = {
    "n": YOLOv6Spec(0.33, 0.25, iou_type="siou"),
    "t": YOLOv6Spec(0.25, 0.50, iou_type="siou"),
    "s": YOLOv6Spec(0.33, 0.50, iou_type="giou"),
    "m": YOLOv6Spec(0.60, 0.75, csp=True, csp_e=2 / 3, reg_max=16, iou_type="giou"),
    "l": YOLOv6Spec(1.0, 1.0, csp=True, csp_e=1 / 2, training_mode="conv_silu", reg_max=16, iou_type="giou"),
    "l-relu": YOLOv6Spec(1.0, 1.0, csp=True, csp_e=1 / 2, training_mode="repvgg", reg_max=16, iou_type="giou"),
}


def scaled_kwargs(name: str, width: float, depth: float) -> dict:
    """``build_model`` keywords of ``name`` with its width and depth multiplied (``yoloforge scale`` sweeps)."""
    spec = VARIANTS[name[len("yolov6"):]]
    return dict(width=spec.width * width, depth=spec.depth * depth)


def scale_repeats(n: int, depth: float) -> int:
    return max(round(n * depth), 1) if n > 1 else n


def scale_channels(c: int, width: float, divisor: int = 8) -> int:
    return math.ceil(c * width / divisor) * divisor


def _stage(c1, c2, n, block, csp, csp_e, act):
    """RepBlock (EfficientRep / Rep-PAN) or CSPStackRep (CSP variants) with ``n`` scaled repeats."""
    if csp:
        return BepC3(c1, c2, n, e=csp_e, block=block, act=act)
    return RepBlock(c1, c2, n, block=block)


class EfficientRep(nn.Module):
    """EfficientRep / CSPBepBackbone: stem (stride 2) then four stages ``ERBlock_2..5``, each a
    stride-2 basic block followed by a RepBlock (or BepC3 when ``csp``); SimSPPF (SPPF for SiLU
    models) closes stage 5. Returns the stride-8/16/32 maps (C3, C4, C5)."""

    def __init__(self, ch: list[int], n: list[int], block="repvgg", csp=False, csp_e=0.5, in_ch=3):
        super().__init__()
        blk = conv_block(block)
        act = "silu" if block == "conv_silu" else "relu"
        self.stem = blk(in_ch, ch[0], 3, 2)
        stages = []
        for i in range(1, 5):
            stages.append(nn.Sequential(blk(ch[i - 1], ch[i], 3, 2), _stage(ch[i], ch[i], n[i], blk, csp, csp_e, act)))
        sppf = SPPF(ch[4], ch[4], 5, act="silu") if block == "conv_silu" else SimSPPF(ch[4], ch[4], 5)
        stages[-1].append(sppf)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs


class RepPANNeck(nn.Module):
    """Rep-PAN (and CSPRepPAN when ``csp``). Channel indices follow the 11-entry scaled list
    ``backbone (5) + neck (6)``: top-down reduce to ch[5] / ch[6], bottom-up to ch[8] / ch[10].
    Returns (P3, P4, P5) with ch[6], ch[8], ch[10] channels."""

    def __init__(self, ch: list[int], n: list[int], block="repvgg", csp=False, csp_e=0.5):
        super().__init__()
        blk = conv_block(block)
        act = "silu" if block == "conv_silu" else "relu"
        self.reduce0 = SimConv(ch[4], ch[5], 1, 1)
        self.up0 = Transpose(ch[5], ch[5])
        self.p4 = _stage(ch[3] + ch[5], ch[5], n[5], blk, csp, csp_e, act)
        self.reduce1 = SimConv(ch[5], ch[6], 1, 1)
        self.up1 = Transpose(ch[6], ch[6])
        self.p3 = _stage(ch[2] + ch[6], ch[6], n[6], blk, csp, csp_e, act)
        self.down1 = SimConv(ch[6], ch[7], 3, 2)
        self.n3 = _stage(ch[6] + ch[7], ch[8], n[7], blk, csp, csp_e, act)
        self.down0 = SimConv(ch[8], ch[9], 3, 2)
        self.n4 = _stage(ch[5] + ch[9], ch[10], n[8], blk, csp, csp_e, act)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        top0 = self.reduce0(c5)
        f4 = self.p4(torch.cat((self.up0(top0), c4), 1))
        top1 = self.reduce1(f4)
        out3 = self.p3(torch.cat((self.up1(top1), c3), 1))
        out4 = self.n3(torch.cat((self.down1(out3), top1), 1))
        out5 = self.n4(torch.cat((self.down0(out4), top0), 1))
        return [out3, out4, out5]


class EffiDeHead(nn.Module):
    """Efficient decoupled head. Per level (width ``c`` = neck output width): 1x1 stem (conv+BN+SiLU),
    3x3 cls conv -> 1x1 ``cls_pred`` (nc), 3x3 reg conv -> 1x1 ``reg_pred`` (4 * (reg_max + 1)).

    ``forward`` returns per-level flattened ``cls`` logits (B, N, nc) and ``reg`` (B, N, 4*(reg_max+1))."""

    prior_prob = 0.01

    def __init__(self, nc: int, channels: list[int], reg_max: int = 0):
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        no_reg = 4 * (reg_max + 1)
        self.stems = nn.ModuleList(ConvBNAct(c, c, 1, 1, act="silu") for c in channels)
        self.cls_convs = nn.ModuleList(ConvBNAct(c, c, 3, 1, act="silu") for c in channels)
        self.reg_convs = nn.ModuleList(ConvBNAct(c, c, 3, 1, act="silu") for c in channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(c, nc, 1) for c in channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(c, no_reg, 1) for c in channels)
        self.initialize_biases()

    @torch.no_grad()
    def initialize_biases(self):
        """Official head init (meituan/YOLOv6@0.2.0 effidehead.py ``initialize_biases``): predictor
        weights 0, class bias ``-log((1 - p) / p)`` with prior p = 0.01 (focal-loss prior, Lin et al.
        2017), regression bias 1.0."""
        for conv in self.cls_preds:
            conv.weight.zero_()
            conv.bias.fill_(-math.log((1 - self.prior_prob) / self.prior_prob))
        for conv in self.reg_preds:
            conv.weight.zero_()
            conv.bias.fill_(1.0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls_out, reg_out = [], []
        for i, f in enumerate(feats):
            x = self.stems[i](f)
            cls_out.append(self.cls_preds[i](self.cls_convs[i](x)).flatten(2))
            reg_out.append(self.reg_preds[i](self.reg_convs[i](x)).flatten(2))
        return torch.cat(cls_out, 2).transpose(1, 2), torch.cat(reg_out, 2).transpose(1, 2)


class YOLOv6(DetectionModel):
    """YOLOv6 detector (see the module docstring).

    Attributes: ``reg_max`` (0 or 16), ``use_dfl`` (``reg_max > 0``), ``iou_type`` (``"siou"`` for
    N/T, ``"giou"`` for S/M/L), ``spec`` (:class:`YOLOv6Spec`).

    * train mode: ``(feats, cls_logits, reg)`` -- ``feats`` the three neck maps (B, C, H, W),
      ``cls_logits`` (B, N, nc) raw logits, ``reg`` (B, N, 4 * (reg_max + 1)): ltrb distances in
      units of stride (reg_max 0) or DFL logits laid out side-major (side * (reg_max + 1) + bin).
    * eval mode: (B, N, 4 + nc) -- xyxy input pixels, sigmoid scores.
    """

    family = "yolov6"
    default_hyp = "yolov6"

    def __init__(self, variant: str = "s", nc: int = 80, name: str | None = None, **overrides):
        if variant not in VARIANTS:
            raise ValueError(f"unknown YOLOv6 variant {variant!r}; known: {', '.join(VARIANTS)}")
        if "block" in overrides:  # the field's name before the RepOpt modes came
            overrides["training_mode"] = overrides.pop("block")
        unknown = set(overrides) - set(asdict(VARIANTS[variant]))
        if unknown:
            raise ValueError(f"unknown YOLOv6 option(s) {sorted(unknown)}; known: {', '.join(asdict(VARIANTS[variant]))}")
        spec = YOLOv6Spec(**{**asdict(VARIANTS[variant]), **overrides})
        super().__init__(name or f"yolov6{variant}", nc, STRIDES, **overrides)
        self.spec = spec
        self.variant = variant
        self.reg_max = int(spec.reg_max)
        self.use_dfl = self.reg_max > 0
        self.iou_type = spec.iou_type
        repeats = [scale_repeats(n, spec.depth) for n in BACKBONE_REPEATS + NECK_REPEATS]
        ch = [scale_channels(c, spec.width) for c in BACKBONE_CHANNELS + NECK_CHANNELS]
        self.backbone = EfficientRep(ch, repeats, spec.training_mode, spec.csp, spec.csp_e)
        self.neck = RepPANNeck(ch, repeats, spec.training_mode, spec.csp, spec.csp_e)
        self.head = EffiDeHead(self.nc, [ch[6], ch[8], ch[10]], self.reg_max)
        self._anchor_cache: dict = {}

    def initialize_biases(self):
        self.head.initialize_biases()

    def anchor_points(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell-centre points (N, 2) px and strides (N, 1) for these feature shapes (cached)."""
        f0 = feats[0]
        if torch.jit.is_tracing():  # export: built from the traced sizes, so height/width may be dynamic
            return make_anchor_points(feats, STRIDES, 0.5, device=f0.device, dtype=f0.dtype)
        key = (tuple(tuple(f.shape[-2:]) for f in feats), f0.device, f0.dtype)
        if key not in self._anchor_cache:
            if len(self._anchor_cache) > 16:
                self._anchor_cache.clear()
            self._anchor_cache[key] = make_anchor_points(feats, STRIDES, 0.5,
                                                         device=f0.device, dtype=f0.dtype)
        return self._anchor_cache[key]

    def decode(self, feats: list[torch.Tensor], cls_logits: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
        """Raw head outputs -> (B, N, 4 + nc): xyxy pixels then sigmoid scores."""
        points, strides = self.anchor_points(feats)
        dist = dfl_expectation(reg, self.reg_max) if self.use_dfl else reg
        boxes = distances_to_boxes(dist, points, strides)
        return torch.cat((boxes, cls_logits.sigmoid()), -1)

    def forward(self, x: torch.Tensor):
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"YOLOv6 input size must be divisible by 32, got {tuple(x.shape[-2:])}")
        feats = self.neck(self.backbone(x))
        cls_logits, reg = self.head(feats)
        if self.training:
            return feats, cls_logits, reg
        return self.decode(feats, cls_logits, reg)

    def build_loss(self, hyp: dict | None = None):
        from yoloforge.families.yolov6.loss import YOLOv6Loss

        hyp = hyp or {}
        return YOLOv6Loss(
            nc=self.nc, strides=list(STRIDES), reg_max=self.reg_max, use_dfl=self.use_dfl,
            iou_type=hyp.get("iou_type", self.iou_type),
            warmup_epochs=hyp.get("atss_warmup_epochs", 4),
            weights=dict(cls=hyp.get("loss_cls", 1.0), iou=hyp.get("loss_iou", 2.5), dfl=hyp.get("loss_dfl", 0.5)),
            atss_topk=hyp.get("atss_topk", 9), tal_topk=hyp.get("tal_topk", 13),
            tal_alpha=hyp.get("tal_alpha", 1.0), tal_beta=hyp.get("tal_beta", 6.0), hyp=hyp,
        )


def _builder(variant: str):
    def build(nc: int = 80, **kw) -> YOLOv6:
        return YOLOv6(variant, nc=nc, name=f"yolov6{variant}", **kw)
    build.__name__ = f"yolov6{variant.replace('-', '_')}"
    build.__doc__ = f"YOLOv6-{variant.upper()} (release 2.0); ``kw`` overrides :class:`YOLOv6Spec` fields."
    return build


for _v in VARIANTS:
    register(f"yolov6{_v}")(_builder(_v))
