"""YOLOv7 variant specifications and compound model scaling for concatenation-based models.

YOLOv7 paper (arXiv:2207.02696) Sec. 3.2 / Fig. 3: scaling the *depth* of a concatenation-based
computational block (ELAN) changes the width of its concatenated output, hence the in-degree of the
transition layer that follows. Compound scaling therefore (1) scales the depth of the computational
blocks, (2) computes the resulting change of their output width, and (3) scales the width of every
*transition* layer by that same factor. Computational-block internals (``hidden``/``inner``) keep
their width.

A spec is a frozen dataclass tree; :func:`compound_scale` maps one spec to another, so a variant is
literally ``base spec -> compound_scale(depth, width) -> new spec``:

* ``yolov7x``  = compound_scale(yolov7, 1.5, 1.25) + the paper's "stack scaling" of the neck (the
  neck's ELAN-H blocks become backbone-style ELANs at full width) + plain 3x3 lead convs;
* ``yolov7-e6`` = compound_scale(yolov7-w6, 1.5, 1.25) with DownC down-sampling and the W6 aux widths;
* ``yolov7-d6`` = compound_scale(yolov7-e6, 4/3, 1.2) -- exact, nothing overridden;
* ``yolov7-e6e`` = expand_cardinality(yolov7-e6, 2) -- E-ELAN everywhere, transitions unchanged.

Widths, depths and anchors from WongKinYiu/yolov7 @ a207844 ``cfg/training/yolov7{-tiny,,x,-w6,-e6,
-d6,-e6e}.yaml`` (facts only).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["ELANSpec", "Stage", "TopDown", "YOLOv7Spec", "compound_scale", "expand_cardinality",
           "stack_scale_neck", "SPECS", "derived_width"]


@dataclass(frozen=True)
class ELANSpec:
    """One computational block (+ transition): see :class:`~yoloforge.families.yolov7.blocks.ELAN`."""

    hidden: int  # width of the two 1x1 entry convs
    inner: int  # width of each stacked 3x3 conv
    depth: int  # number of stacked 3x3 convs
    out: int  # width of the 1x1 transition (a transition layer: width-scaled)
    step: int = 2  # every step-th 3x3 output is concatenated (2: backbone ELAN, 1: ELAN-H)
    cardinality: int = 1  # > 1: E-ELAN

    @property
    def concat_width(self) -> int:
        return 2 * self.hidden + (self.depth // self.step) * self.inner


@dataclass(frozen=True)
class Stage:
    """Down-sampling transition (``make_down`` kind + width) followed by a computational block."""

    down: str
    down_width: int
    block: ELANSpec


@dataclass(frozen=True)
class TopDown:
    """FPN step: 1x1 reduce of the level above (then 2x upsample) and 1x1 lateral of the backbone
    map, both ``width`` wide, concatenated into a computational block."""

    width: int
    block: ELANSpec


@dataclass(frozen=True)
class YOLOv7Spec:
    act: str  # "silu" (P5/P6) or "lrelu" (tiny, LeakyReLU 0.1)
    reorg: bool  # space-to-depth before the stem (P6)
    stem: tuple  # ((c, k, s), ...) plain convs
    stages: tuple  # backbone Stage's; the last nl outputs feed the neck
    spp: int  # SPPCSPC width
    top_down: tuple  # TopDown's, from level nl-2 down to level 0
    bottom_up: tuple  # Stage's, from level 1 up to level nl-1
    head_convs: tuple  # lead 3x3 conv widths per level (on the PAN outputs)
    anchors: tuple  # per level (w0, h0, w1, h1, w2, h2) pixels
    spp_tiny: bool = False
    head_conv: str = "conv"  # "repconv" (RepConvN) or "conv"
    aux_convs: tuple | None = None  # aux 3x3 conv widths per level (on the FPN outputs); None: no aux head
    strides: tuple = field(default=(8, 16, 32))


def _round(w: int, f: float) -> int:
    return int(round(w * f))


def _scale_block(b: ELANSpec, depth: float, width: float) -> ELANSpec:
    return replace(b, depth=max(_round(b.depth, depth), b.step), out=_round(b.out, width))


def derived_width(spec: YOLOv7Spec, depth: float) -> float:
    """Width factor implied by scaling the depth of the first backbone block (paper Fig. 3(c)):
    ``concat_width(depth-scaled) / concat_width(original)``."""
    b = spec.stages[0].block
    return replace(b, depth=_round(b.depth, depth)).concat_width / b.concat_width


def compound_scale(spec: YOLOv7Spec, depth: float, width: float | None = None) -> YOLOv7Spec:
    """Compound scaling of a concatenation-based model (YOLOv7 Sec. 3.2, Fig. 3(c)).

    Every computational block's depth is multiplied by ``depth``; every transition layer's width
    (stem convs, down-sampling, block transitions, SPPCSPC, FPN reduce/lateral, lead and aux head
    convs) by ``width``. ``width=None`` derives it from the depth change (:func:`derived_width`),
    e.g. depth 1.5 on a 4-conv backbone ELAN (concat 4c -> 5c) gives 1.25.
    """
    w = derived_width(spec, depth) if width is None else float(width)

    def stage(s: Stage) -> Stage:
        return Stage(s.down, _round(s.down_width, w), _scale_block(s.block, depth, w))

    return replace(
        spec,
        stem=tuple((_round(c, w), k, s) for c, k, s in spec.stem),
        stages=tuple(stage(s) for s in spec.stages),
        spp=_round(spec.spp, w),
        top_down=tuple(TopDown(_round(t.width, w), _scale_block(t.block, depth, w)) for t in spec.top_down),
        bottom_up=tuple(stage(s) for s in spec.bottom_up),
        head_convs=tuple(_round(c, w) for c in spec.head_convs),
        aux_convs=None if spec.aux_convs is None else tuple(_round(c, w) for c in spec.aux_convs),
    )


def expand_cardinality(spec: YOLOv7Spec, groups: int = 2) -> YOLOv7Spec:
    """E-ELAN (Sec. 3.1): every computational block gets ``groups``-fold cardinality; transition
    layers (down-sampling, SPPCSPC, FPN 1x1s, head convs) are not changed."""
    def blk(b: ELANSpec) -> ELANSpec:
        return replace(b, cardinality=groups)

    return replace(
        spec,
        stages=tuple(replace(s, block=blk(s.block)) for s in spec.stages),
        top_down=tuple(replace(t, block=blk(t.block)) for t in spec.top_down),
        bottom_up=tuple(replace(s, block=blk(s.block)) for s in spec.bottom_up),
    )


def stack_scale_neck(spec: YOLOv7Spec) -> YOLOv7Spec:
    """YOLOv7-X's neck (paper Sec. 5.1, "stack scaling on neck"): its blocks are backbone-style
    ELANs (3x3 convs as wide as the 1x1s, every second output concatenated) instead of ELAN-H."""
    def blk(b: ELANSpec) -> ELANSpec:
        return replace(b, inner=b.hidden, step=2)

    return replace(
        spec,
        top_down=tuple(replace(t, block=blk(t.block)) for t in spec.top_down),
        bottom_up=tuple(replace(s, block=blk(s.block)) for s in spec.bottom_up),
    )


def _with_down(spec: YOLOv7Spec, old: str, new: str) -> YOLOv7Spec:
    def st(s: Stage) -> Stage:
        return replace(s, down=new) if s.down == old else s
    return replace(spec, stages=tuple(map(st, spec.stages)), bottom_up=tuple(map(st, spec.bottom_up)))


def _elan(hidden, depth, out, step=2, inner=None) -> ELANSpec:
    return ELANSpec(hidden, hidden if inner is None else inner, depth, out, step)


def _elan_h(hidden, depth, out) -> ELANSpec:  # neck ELAN: 3x3 convs half as wide, all concatenated
    return ELANSpec(hidden, hidden // 2, depth, out, step=1)


ANCHORS_TINY = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
ANCHORS_P5 = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
ANCHORS_P6 = ((19, 27, 44, 40, 38, 94), (96, 68, 86, 152, 180, 137), (140, 301, 303, 264, 238, 542),
              (436, 615, 739, 380, 925, 792))

# yolov7-tiny: LeakyReLU, 2-conv ELANs (all outputs concatenated), max-pool down-sampling.
YOLOV7_TINY = YOLOv7Spec(
    act="lrelu", reorg=False, stem=((32, 3, 2), (64, 3, 2)),
    stages=(Stage("none", 0, ELANSpec(32, 32, 2, 64, 1)), Stage("maxpool", 0, ELANSpec(64, 64, 2, 128, 1)),
            Stage("maxpool", 0, ELANSpec(128, 128, 2, 256, 1)), Stage("maxpool", 0, ELANSpec(256, 256, 2, 512, 1))),
    spp=256, spp_tiny=True,
    top_down=(TopDown(128, ELANSpec(64, 64, 2, 128, 1)), TopDown(64, ELANSpec(32, 32, 2, 64, 1))),
    bottom_up=(Stage("conv", 128, ELANSpec(64, 64, 2, 128, 1)), Stage("conv", 256, ELANSpec(128, 128, 2, 256, 1))),
    head_convs=(128, 256, 512), anchors=ANCHORS_TINY,
)

# yolov7 (P5): MP down-sampling, 4-conv ELANs, ELAN-H neck, RepConvN before the detection head.
YOLOV7 = YOLOv7Spec(
    act="silu", reorg=False, stem=((32, 3, 1), (64, 3, 2), (64, 3, 1), (128, 3, 2)),
    stages=(Stage("none", 0, _elan(64, 4, 256)), Stage("mp", 128, _elan(128, 4, 512)),
            Stage("mp", 256, _elan(256, 4, 1024)), Stage("mp", 512, _elan(256, 4, 1024))),
    spp=512,
    top_down=(TopDown(256, _elan_h(256, 4, 256)), TopDown(128, _elan_h(128, 4, 128))),
    bottom_up=(Stage("mp", 128, _elan_h(256, 4, 256)), Stage("mp", 256, _elan_h(512, 4, 512))),
    head_convs=(256, 512, 1024), head_conv="repconv", anchors=ANCHORS_P5,
)

YOLOV7X = replace(stack_scale_neck(compound_scale(YOLOV7, 1.5, 1.25)), head_conv="conv")

# yolov7-w6 (P6): ReOrg stem, strided-conv down-sampling, auxiliary head on the FPN outputs.
YOLOV7_W6 = YOLOv7Spec(
    act="silu", reorg=True, stem=((64, 3, 1),),
    stages=(Stage("conv", 128, _elan(64, 4, 128)), Stage("conv", 256, _elan(128, 4, 256)),
            Stage("conv", 512, _elan(256, 4, 512)), Stage("conv", 768, _elan(384, 4, 768)),
            Stage("conv", 1024, _elan(512, 4, 1024))),
    spp=512,
    top_down=(TopDown(384, _elan_h(384, 4, 384)), TopDown(256, _elan_h(256, 4, 256)),
              TopDown(128, _elan_h(128, 4, 128))),
    bottom_up=(Stage("conv", 256, _elan_h(256, 4, 256)), Stage("conv", 384, _elan_h(384, 4, 384)),
               Stage("conv", 512, _elan_h(512, 4, 512))),
    head_convs=(256, 512, 768, 1024), aux_convs=(320, 640, 960, 1280), anchors=ANCHORS_P6,
    strides=(8, 16, 32, 64),
)

# E6: compound-scaled W6, but DownC down-sampling and the aux convs of W6 (official deviations).
YOLOV7_E6 = replace(_with_down(compound_scale(YOLOV7_W6, 1.5, 1.25), "conv", "downc"),
                    aux_convs=YOLOV7_W6.aux_convs)
YOLOV7_D6 = compound_scale(YOLOV7_E6, 4 / 3, 1.2)
YOLOV7_E6E = expand_cardinality(YOLOV7_E6, 2)

#: variant name -> (spec, default hyper-parameter preset)
SPECS: dict[str, tuple[YOLOv7Spec, str]] = {
    "yolov7-tiny": (YOLOV7_TINY, "tiny"),
    # official cfg/deploy/yolov7-tiny-silu.yaml: the tiny layout with the default SiLU activation
    "yolov7-tiny-silu": (replace(YOLOV7_TINY, act="silu"), "tiny"),
    "yolov7": (YOLOV7, "p5"),
    "yolov7x": (YOLOV7X, "p5"),
    "yolov7-w6": (YOLOV7_W6, "p6"),
    "yolov7-e6": (YOLOV7_E6, "p6"),
    "yolov7-d6": (YOLOV7_D6, "p6"),
    "yolov7-e6e": (YOLOV7_E6E, "p6"),
}
