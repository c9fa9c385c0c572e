"""YOLOv7 family: sizes against the verified official counts, compound scaling, E-ELAN, planned
re-parameterization (RepConvN, implicit knowledge), the auxiliary head, and the output contract."""
from __future__ import annotations

import copy
import sys
import types
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from yoloforge.models.anchor_head import AnchorHead, ImplicitA, ImplicitM
from yoloforge.families.registry import build_model, list_models
from yoloforge.families.yolov7.model import YOLOv7
from yoloforge.families.yolov7.blocks import ELAN, SPPCSPC, DownC, MPDown, RepConvN
from yoloforge.families.yolov7 import specs as S
from yoloforge.utils.flops import count_gflops, count_params
from helpers import randomize_bn

# ../shared/FACTS.md "Verified counts of the official models" (cfg/deploy, fused, nc 80).
OFFICIAL = {
    "yolov7-tiny": (6.220, 13.70, 640),
    "yolov7": (36.905, 104.51, 640),
    "yolov7x": (71.312, 189.67, 640),
    "yolov7-w6": (70.394, 359.72, 1280),
    "yolov7-e6": (97.203, 514.43, 1280),
    "yolov7-d6": (133.757, 701.74, 1280),
    "yolov7-e6e": (151.687, 842.18, 1280),
}
VARIANTS = list(OFFICIAL)
P6 = {"yolov7-w6", "yolov7-e6", "yolov7-d6", "yolov7-e6e"}


def meta_model(name_or_spec, monkeypatch, nc: int = 80) -> YOLOv7:
    """Build on the meta device (shapes only). AnchorHead's bias init reads stride values, which a
    meta tensor cannot give, so it is skipped here (it changes no shape)."""
    monkeypatch.setattr(AnchorHead, "initialize_biases", lambda self, class_freq=None: None)
    with torch.device("meta"):
        if isinstance(name_or_spec, str):
            return build_model(name_or_spec, nc=nc)
        return YOLOv7("custom", nc=nc, spec=name_or_spec)


def meta_fuse(model: YOLOv7) -> YOLOv7:
    """``fuse()`` with new layers created on meta directly (no CPU allocation + init + copy)."""
    with torch.device("meta"):
        return model.fuse()


def meta_gflops(model: nn.Module, imgsz: int) -> float:
    """Same count as ``count_gflops`` (conv/matmul FLOPs only) on meta, in train mode (raw head
    outputs: the decode step has no conv/matmul and reads stride values a meta tensor lacks).
    In train mode an unfused P6 model also runs its aux head (train-time cost)."""
    m = copy.deepcopy(model).to("meta").train()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.empty(1, 3, imgsz, imgsz, device="meta"))
    return counter.get_total_flops() / 1e9


def mparams(model) -> float:
    return count_params(model) / 1e6


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affine and clearly non-trivial implicit vectors, so folding is exercised."""
    g = torch.Generator().manual_seed(seed)
    randomize_bn(model, g)
    for m in model.modules():
        if isinstance(m, ImplicitA):
            m.implicit.copy_(torch.randn(m.implicit.shape, generator=g) * 0.2)
        elif isinstance(m, ImplicitM):
            m.implicit.copy_(1 + torch.randn(m.implicit.shape, generator=g) * 0.2)
    return model


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_gflops_match_official(name, monkeypatch):
    model = meta_fuse(meta_model(name, monkeypatch))
    ref_p, ref_g, imgsz = OFFICIAL[name]
    params, gflops = mparams(model), meta_gflops(model, imgsz)
    assert abs(params / ref_p - 1) < 0.01, (name, params, ref_p)
    assert abs(gflops / ref_g - 1) < 0.01, (name, gflops, ref_g)


def test_train_time_counts_with_aux(monkeypatch):
    # FACTS.md: training-time (unfused) yolov7-w6 with its aux head: 82.3M / 420.1 GFLOPs.
    w6 = meta_model("yolov7-w6", monkeypatch)
    assert mparams(w6) == pytest.approx(82.3, rel=0.01)
    assert meta_gflops(w6, 1280) == pytest.approx(420.1, rel=0.01)
    for name in VARIANTS:
        m = meta_model(name, monkeypatch)
        aux = sum(p.numel() for k, p in m.named_parameters() if k.startswith("aux_"))
        assert (aux > 0) == (name in P6), name


def test_meta_gflops_equals_count_gflops():
    model = randomize(build_model("yolov7-tiny", nc=3)).fuse()
    assert meta_gflops(model, 128) == pytest.approx(count_gflops(model, 128), rel=1e-9)


# ----------------------------------------------------------------------------- compound scaling
def test_derived_width_factor_follows_the_concatenation():
    # depth x1.5 on a 4-conv ELAN (concat 4c -> 5c) -> transitions x1.25; depth x2 (4c -> 6c) -> x1.5
    assert S.derived_width(S.YOLOV7, 1.5) == pytest.approx(1.25)
    assert S.derived_width(S.YOLOV7_W6, 1.5) == pytest.approx(1.25)
    assert S.derived_width(S.YOLOV7_W6, 2.0) == pytest.approx(1.5)
    assert S.derived_width(S.YOLOV7_E6, 4 / 3) == pytest.approx(1.2)
    assert S.compound_scale(S.YOLOV7, 1.5) == S.compound_scale(S.YOLOV7, 1.5, 1.25)
    # neck ELAN-H blocks change their concat width by the same factor as the backbone ELANs
    for spec, d in ((S.YOLOV7, 1.5), (S.YOLOV7_W6, 2.0)):
        for t in spec.top_down:
            scaled = replace(t.block, depth=round(t.block.depth * d))
            assert scaled.concat_width / t.block.concat_width == pytest.approx(S.derived_width(spec, d))


def test_compound_scaling_gives_official_variants(monkeypatch):
    # yolov7x = yolov7 -> compound_scale(1.5, 1.25) -> stack-scaled neck (+ plain 3x3 lead convs)
    x = replace(S.stack_scale_neck(S.compound_scale(S.YOLOV7, 1.5, 1.25)), head_conv="conv")
    assert x == S.SPECS["yolov7x"][0]
    assert mparams(meta_fuse(meta_model(x, monkeypatch))) == pytest.approx(OFFICIAL["yolov7x"][0], rel=0.01)
    # pure compound scaling (ELAN-H neck kept) is smaller than the official X (see the specs docstring)
    pure = mparams(meta_fuse(meta_model(S.compound_scale(S.YOLOV7, 1.5, 1.25), monkeypatch)))
    assert 50 < pure < OFFICIAL["yolov7x"][0] * 0.85  # 55.6M
    # D6 = compound_scale(E6, 4/3, 1.2) exactly; and = W6 x (2.0, 1.5) apart from DownC and aux widths
    d6 = S.compound_scale(S.YOLOV7_E6, 4 / 3, 1.2)
    assert d6 == S.SPECS["yolov7-d6"][0]
    from_w6 = S._with_down(S.compound_scale(S.YOLOV7_W6, 2.0, 1.5), "conv", "downc")
    assert replace(from_w6, aux_convs=d6.aux_convs) == d6
    assert mparams(meta_fuse(meta_model(d6, monkeypatch))) == pytest.approx(OFFICIAL["yolov7-d6"][0], rel=0.01)
    # E6 = compound_scale(W6, 1.5, 1.25) with DownC and W6's aux widths
    e6 = replace(S._with_down(S.compound_scale(S.YOLOV7_W6, 1.5, 1.25), "conv", "downc"),
                 aux_convs=S.YOLOV7_W6.aux_convs)
    assert e6 == S.SPECS["yolov7-e6"][0]
    assert mparams(meta_fuse(meta_model(e6, monkeypatch))) == pytest.approx(OFFICIAL["yolov7-e6"][0], rel=0.01)
    # E6E = E6 with E-ELAN (cardinality 2) in every computational block
    e6e = S.expand_cardinality(S.YOLOV7_E6, 2)
    assert e6e == S.SPECS["yolov7-e6e"][0]
    assert mparams(meta_fuse(meta_model(e6e, monkeypatch))) == pytest.approx(OFFICIAL["yolov7-e6e"][0], rel=0.01)


# ----------------------------------------------------------------------------- blocks
def test_eelan_equals_parallel_elans_summed():
    """E-ELAN (group conv expand + shuffle + merge) == two independent ELANs whose outputs are added
    (the official E6E layout: two ELAN blocks + Shortcut)."""
    torch.manual_seed(0)
    e = randomize(ELAN(12, 10, hidden=4, inner=6, depth=4, step=2, cardinality=2), 1).eval()
    parts = [ELAN(12, 10, hidden=4, inner=6, depth=4, step=2).eval() for _ in range(2)]
    with torch.no_grad():
        for k, p in enumerate(parts):
            for dst, src in zip(p.state_dict().values(), e.state_dict().values()):
                # every grouped tensor holds group k in its k-th half (out channels); the grouped
                # transition sees group k's concat in the same order as the plain ELAN
                dst.copy_(src if src.ndim == 0 else src.chunk(2, 0)[k])
        x = torch.randn(2, 12, 9, 7)
        ref = parts[0](x) + parts[1](x)
        assert e.concat_width == 2 * 4 + 2 * 6
        assert torch.allclose(e(x), ref, atol=1e-5)
    assert count_params(e) == sum(count_params(p) for p in parts)


@pytest.mark.parametrize("c1,c2,s", [(8, 8, 1), (6, 10, 1), (8, 8, 2)])
def test_repconvn_has_no_identity_and_fuses_to_one_3x3(c1, c2, s):
    torch.manual_seed(1)
    blk = randomize(RepConvN(c1, c2, s)).eval()
    assert blk.identity is None  # no identity branch even when shapes would allow it
    x = torch.randn(2, c1, 11, 10)
    with torch.no_grad():
        ref = blk(x)
        blk.fuse()
        out = blk(x)
    convs = [m for m in blk.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].bias is not None
    assert rel_err(out, ref) <= 1e-5


def test_block_shapes():
    x = torch.randn(1, 16, 16, 16)
    assert MPDown(16, 8)(x).shape == (1, 16, 8, 8)
    assert DownC(16, 24)(x).shape == (1, 24, 8, 8)
    assert SPPCSPC(16, 12)(x).shape == SPPCSPC(16, 12, tiny=True)(x).shape == (1, 12, 16, 16)
    assert count_params(SPPCSPC(16, 12, tiny=True)) < count_params(SPPCSPC(16, 12))
    assert ELAN(16, 20, 8, 4, 4, step=1)(x).shape == (1, 20, 16, 16)


# ----------------------------------------------------------------------------- structure
def test_registry_and_attributes(monkeypatch):
    assert set(VARIANTS) <= set(list_models())
    hyp = {"yolov7-tiny": "tiny", "yolov7": "p5", "yolov7x": "p5"}
    for name in VARIANTS:
        m = meta_model(name, monkeypatch, nc=7)
        assert (m.name, m.family, m.nc, m.build_kwargs) == (name, "yolov7", 7, {"nc": 7})
        assert m.default_hyp == hyp.get(name, "p6")
        nl = 4 if name in P6 else 3
        assert m.stride.shape == (nl,) and m._max_stride == 2 ** (nl + 2)
        assert isinstance(m.head, AnchorHead) and m.head.ia is not None  # IDetect: implicit knowledge
        assert tuple(m.anchors.shape) == (nl, 3, 2)
        assert (m.aux_head is not None) == (name in P6)
        assert any(isinstance(b, RepConvN) for b in m.modules()) == (name == "yolov7")
        assert any(isinstance(b, DownC) for b in m.modules()) == (name in P6 - {"yolov7-w6"})
        assert any(isinstance(b, MPDown) for b in m.modules()) == (name in ("yolov7", "yolov7x"))
        assert any(isinstance(b, ELAN) and b.cardinality == 2 for b in m.modules()) == (name == "yolov7-e6e")
        acts = {type(a) for a in m.modules() if isinstance(a, (nn.SiLU, nn.LeakyReLU))}
        assert acts == ({nn.LeakyReLU} if name == "yolov7-tiny" else {nn.SiLU})
    tiny = build_model("yolov7-tiny")
    assert tiny.anchors[0].tolist() == [[10, 13], [16, 30], [33, 23]]
    assert build_model("yolov7", nc=2).anchors[2, 2].tolist() == [459, 401]


def test_bad_input_size_and_variant():
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("yolov7-tiny").eval()(torch.zeros(1, 3, 48, 64))
    with pytest.raises(ValueError, match="unknown YOLOv7 variant"):
        YOLOv7("yolov7-huge")


# ----------------------------------------------------------------------------- forward / fuse / aux
def narrow(spec: S.YOLOv7Spec, f: float = 1 / 8) -> S.YOLOv7Spec:
    """The same topology with every width (block internals included) multiplied by ``f``: a fast
    stand-in with every block kind of a big variant."""
    def blk(b):
        return replace(b, hidden=round(b.hidden * f), inner=round(b.inner * f))
    s = S.compound_scale(spec, 1.0, f)
    return replace(s, stages=tuple(replace(st, block=blk(st.block)) for st in s.stages),
                   top_down=tuple(replace(t, block=blk(t.block)) for t in s.top_down),
                   bottom_up=tuple(replace(st, block=blk(st.block)) for st in s.bottom_up))


def check_fuse(model: YOLOv7, p6: bool):
    torch.manual_seed(0)
    model = randomize(model).eval()
    nl, imgsz = (4, 128) if p6 else (3, 64)
    x = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():
        ref = model(x)
        n = 3 * sum((imgsz // s) ** 2 for s in (8, 16, 32, 64)[:nl])
        assert ref.shape == (1, n, 4 + model.nc)
        model.fuse()
        out = model(x)
    assert rel_err(out, ref) <= 1e-5
    assert model.aux_head is None and model.aux_convs is None
    assert not any(k.startswith("aux_") for k in model.state_dict())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, RepConvN) and m.reparam is None for m in model.modules())
    assert model.head.ia is None and model.head.im is None
    # idempotent; a fused model forwards in train mode without aux
    keys = list(model.state_dict())
    model.fused = False
    with torch.no_grad():
        again = model.fuse()(x)
        train_out = model.train()(x)
    assert list(model.state_dict()) == keys and torch.equal(again, out)
    assert train_out["aux"] is None and len(train_out["main"]) == nl


@pytest.mark.parametrize("name", VARIANTS)
def test_fused_equals_unfused_narrow(name):
    """Every variant's topology (1/8 width): BN, RepConvN, implicit folded; aux head dropped."""
    check_fuse(YOLOv7(name, nc=3, spec=narrow(S.SPECS[name][0])), name in P6)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "yolov7-tiny"
                                  else n for n in VARIANTS])
def test_fused_equals_unfused_full(name):
    check_fuse(build_model(name, nc=3), name in P6)


@pytest.mark.parametrize("name", ["yolov7-tiny", "yolov7-w6"])
def test_train_outputs_and_aux_gradient(name):
    torch.manual_seed(0)
    model = YOLOv7(name, nc=4, spec=narrow(S.SPECS[name][0])).train()  # full topology, 1/8 width
    nl, imgsz = (4, 128) if name in P6 else (3, 64)
    x = torch.rand(2, 3, imgsz, imgsz)
    out = model(x)
    assert set(out) == {"main", "aux"}
    shapes = [(2, 3, imgsz // s, imgsz // s, 9) for s in (8, 16, 32, 64)[:nl]]
    assert [tuple(p.shape) for p in out["main"]] == shapes
    if name not in P6:
        assert out["aux"] is None
        return
    assert [tuple(p.shape) for p in out["aux"]] == shapes
    # the aux loss reaches the aux head and the shared trunk, not the lead head
    sum(p.square().mean() for p in out["aux"]).backward()
    assert all(p.grad is not None for p in model.aux_head.parameters())
    assert model.backbone.stages[0][1].cv1.conv.weight.grad is not None
    assert all(p.grad is None for p in model.head.parameters())
    # eval never uses the aux head: changing it leaves the eval output unchanged
    model.eval()
    with torch.no_grad():
        ref = model(x[:1])
        for p in model.aux_head.parameters():
            p.add_(1.0)
        assert torch.equal(model(x[:1]), ref)


def test_build_loss_call(monkeypatch):
    seen = {}

    class FakeLoss:
        def __init__(self, **kw):
            seen.update(kw)

    fake = types.ModuleType("yoloforge.families.yolov7.loss")
    fake.YOLOv7Loss = FakeLoss
    monkeypatch.setitem(sys.modules, "yoloforge.families.yolov7.loss", fake)
    for name, aux in (("yolov7-tiny", False), ("yolov7-w6", True)):
        seen.clear()
        model = build_model(name, nc=5)
        assert isinstance(model.build_loss({"box": 0.05}), FakeLoss)
        assert seen["nc"] == 5 and seen["aux"] is aux and seen["hyp"] == {"box": 0.05}
        assert seen["strides"] == model.stride.tolist() and seen["anchors"] is model.head.anchors
        assert tuple(seen["anchors"].shape) == (len(seen["strides"]), 3, 2)
