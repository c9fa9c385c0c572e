"""Scaled-YOLOv4 family: sizes against the verified official counts, fusion, output contract."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from yoloforge.models.anchor_head import AnchorHead
from yoloforge.families.registry import build_model, list_models
from yoloforge.families.yolov4.model import ANCHORS_TINY, YOLOv4
from yoloforge.families.yolov4.blocks import (BottleneckCSP, BottleneckCSP2, ChannelAffine, SPPCSP,
                                            TinyCSPBlock)
from yoloforge.utils.flops import count_gflops, count_params
from helpers import randomize_bn

# ../shared/FACTS.md "Verified counts of the official models" (fused, nc 80).
OFFICIAL = {
    "yolov4-tiny": (416, 6.054, 6.91),
    "yolov4-csp": (640, 52.896, 120.24),
    "yolov4-p5": (896, 70.794, 326.64),
    "yolov4-p6": (1280, 127.530, 717.02),
    "yolov4-p7": (1536, 287.475, 1636.70),
}
VARIANTS = list(OFFICIAL)
BIG = ("yolov4-p6", "yolov4-p7")


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine so that folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    randomize_bn(model, g)
    return model


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def meta_model(name: str, monkeypatch) -> YOLOv4:
    """Build on the meta device (shapes only). AnchorHead's bias init reads stride values, which a
    meta tensor cannot give, so it is skipped here (it changes no shape)."""
    monkeypatch.setattr(AnchorHead, "initialize_biases", lambda self, class_freq=None: None)
    with torch.device("meta"):
        return build_model(name, nc=80)


def meta_gflops(model: nn.Module, imgsz: int) -> float:
    """Same count as ``count_gflops`` (conv/matmul FLOPs only), on meta in train mode (raw head
    outputs: the decode adds no counted FLOPs and reads stride values)."""
    m = copy.deepcopy(model).to("meta").train()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.empty(1, 3, imgsz, imgsz, device="meta"))
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in VARIANTS])
def test_params_and_gflops_match_official(name, monkeypatch):
    imgsz, ref_p, ref_g = OFFICIAL[name]
    model = meta_model(name, monkeypatch).fuse()
    params, gflops = count_params(model) / 1e6, meta_gflops(model, imgsz)
    assert abs(params / ref_p - 1) < 0.01, (name, params, ref_p)
    assert abs(gflops / ref_g - 1) < 0.01, (name, gflops, ref_g)
    assert model.default_imgsz == imgsz


def test_meta_gflops_equals_count_gflops():
    model = build_model("yolov4-tiny", nc=80).fuse()
    assert meta_gflops(model, 128) == pytest.approx(count_gflops(model, 128), rel=1e-9)


def test_registry_and_attributes(monkeypatch):
    names = set(list_models())
    assert set(VARIANTS) <= names
    expect = {"yolov4-tiny": (2, 3, (16, 32), "darknet"), "yolov4-csp": (3, 3, (8, 16, 32), "scaled"),
              "yolov4-p5": (3, 4, (8, 16, 32), "scaled"), "yolov4-p6": (4, 4, (8, 16, 32, 64), "scaled"),
              "yolov4-p7": (5, 4, (8, 16, 32, 64, 128), "scaled")}
    for name, (nl, na, strides, decode) in expect.items():
        m = meta_model(name, monkeypatch)
        assert isinstance(m, YOLOv4) and m.family == "yolov4" and m.default_hyp == "yolov4" and m.name == name
        assert (m.head.nl, m.head.na, m.head.decode_kind) == (nl, na, decode)
        assert m.stride.shape == (nl,) and m._max_stride == strides[-1]  # meta: no values to read
        assert m.build_kwargs == {"nc": 80}
    tiny = build_model("yolov4-tiny")
    assert tiny.stride.tolist() == [16, 32] and build_model("yolov4-csp", nc=1).stride.tolist() == [8, 16, 32]
    assert tiny.head.scale_xy == pytest.approx(1.05)
    assert tiny.head.anchors.view(-1).tolist() == [23, 27, 37, 58, 81, 82, 81, 82, 135, 169, 344, 319]
    assert [list(a) for a in ANCHORS_TINY] == [[23, 27, 37, 58, 81, 82], [81, 82, 135, 169, 344, 319]]
    assert any(isinstance(x, nn.LeakyReLU) and x.negative_slope == 0.1 for x in tiny.modules())
    assert not any(isinstance(x, nn.Mish) for x in tiny.modules())
    csp = meta_model("yolov4-csp", monkeypatch)
    assert any(isinstance(x, nn.Mish) for x in csp.modules())
    # YOLOv4-CSP: the first (stride-2) stage is a plain Darknet residual stage, the others CSP
    assert not isinstance(csp.backbone.stages[0][1], BottleneckCSP)
    assert all(isinstance(s[1], BottleneckCSP) for s in csp.backbone.stages[1:])
    assert isinstance(csp.neck.spp, SPPCSP)
    p5 = meta_model("yolov4-p5", monkeypatch)
    assert all(isinstance(s[1], BottleneckCSP) for s in p5.backbone.stages)
    assert [len(s[1].m) for s in p5.backbone.stages] == [1, 3, 15, 15, 7]
    p7 = meta_model("yolov4-p7", monkeypatch)
    assert p7.backbone.stem.conv.out_channels == 40  # width 1.25: ceil(32 * 1.25 / 8) * 8


def test_unknown_variant_and_bad_size():
    with pytest.raises(ValueError, match="unknown YOLOv4 variant"):
        YOLOv4("p9")
    m = build_model("yolov4-tiny", nc=3).eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.zeros(1, 3, 48, 64))


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name,size", [("yolov4-tiny", 64), ("yolov4-csp", 64)])
def test_train_and_eval_outputs(name, size):
    torch.manual_seed(0)
    m = build_model(name, nc=3, **({} if name == "yolov4-tiny" else dict(width_scale=0.25)))
    x = torch.rand(2, 3, size, size + 32)
    out = m.train()(x)
    assert set(out) == {"main", "aux"} and out["aux"] is None
    for p, s in zip(out["main"], m.stride.tolist()):
        assert p.shape == (2, m.head.na, size // int(s), (size + 32) // int(s), 8)
    with torch.no_grad():
        y = m.eval()(x)
    n = sum(m.head.na * (size // int(s)) * ((size + 32) // int(s)) for s in m.stride.tolist())
    assert y.shape == (2, n, 4 + 3)
    assert ((y[..., 4:] >= 0) & (y[..., 4:] <= 1)).all()
    assert (y[..., 2:4] >= y[..., 0:2]).all()
    loss = m.build_loss({})
    assert loss.names == ("box", "obj", "cls") and loss.decode == m.head.decode_kind


# ----------------------------------------------------------------------------- fuse
def _check_fuse(model: YOLOv4, x):
    model = randomize(model).eval()
    with torch.no_grad():
        ref = model(x)
        model.fuse()
        out = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert rel_err(out, ref) <= 1e-5, rel_err(out, ref)
    with torch.no_grad():  # idempotent
        keys = list(model.state_dict())
        model.fused = False
        assert torch.equal(model.fuse()(x), out) and list(model.state_dict()) == keys


@pytest.mark.parametrize("name,width", [("yolov4-tiny", 1.0), ("yolov4-csp", 1.0), ("yolov4-p5", 0.25),
                                        ("yolov4-p6", 0.25), ("yolov4-p7", 0.25)])
def test_fused_equals_unfused(name, width):
    """Every variant; P5/P6/P7 at a quarter of their width (same blocks, depths and levels) to stay fast."""
    torch.manual_seed(0)
    kw = {} if width == 1.0 else dict(width_scale=width)
    m = build_model(name, nc=4, **kw)
    size = 128 if m.stride.max() > 32 else 64  # one cell at the coarsest level is enough
    _check_fuse(m, torch.rand(1, 3, size, size + int(m.stride.max())))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov4-p5", "yolov4-p6", "yolov4-p7"])
def test_fused_equals_unfused_full_width(name):
    torch.manual_seed(0)
    _check_fuse(build_model(name, nc=2), torch.rand(1, 3, 128, 128))


def test_width_scale_and_anchor_override():
    m = build_model("yolov4-p7", nc=2, width_scale=0.25)
    assert m.backbone.stem.conv.out_channels == 16  # ceil(32 * 1.25 * 0.25 / 8) * 8
    assert m.build_kwargs == {"nc": 2, "width_scale": 0.25}
    anchors = [[10, 10, 20, 20, 30, 30], [40, 40, 50, 50, 60, 60]]
    t = build_model("yolov4-tiny", nc=1, anchors=anchors)
    assert t.head.anchors.view(2, 6).tolist() == anchors and t.build_kwargs["anchors"] == anchors
    with pytest.raises(ValueError, match="anchors for 3 levels"):
        build_model("yolov4-csp", anchors=anchors)


@pytest.mark.parametrize("block", [lambda: BottleneckCSP(16, 32, 2), lambda: BottleneckCSP2(32, 16, 2),
                                   lambda: SPPCSP(32, 16), lambda: TinyCSPBlock(8, 16)])
def test_block_fuse(block):
    torch.manual_seed(3)
    blk = randomize(block()).eval()
    x = torch.randn(2, blk.cv1.conv.in_channels if hasattr(blk, "cv1") else 8, 12, 10)
    with torch.no_grad():
        ref = blk(x)
        for m in blk.modules():
            if m is not blk and hasattr(m, "fuse"):
                m.fuse()
        if hasattr(blk, "fuse"):
            blk.fuse()
        out = blk(x)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    assert rel_err(out, ref) <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())
    # the BN slice after an activation stays a channel affine; after a plain conv it is folded
    if isinstance(blk, (BottleneckCSP2, SPPCSP)):
        assert isinstance(blk.post, ChannelAffine) and blk.cv2.bias is not None
    if isinstance(blk, BottleneckCSP):
        assert blk.cv2.bias is not None and blk.cv3.bias is not None


def test_tiny_pcb_split_uses_second_half():
    """route groups=2 group_id=1: the computational block only sees the second half of the base conv."""
    torch.manual_seed(0)
    blk = TinyCSPBlock(4, 8).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        b = blk.base(x)
        y1 = blk.conv1(b[:, 4:])
        t = blk.transition(torch.cat((blk.conv2(y1), y1), 1))
        out, trans = blk(x)
    assert torch.allclose(trans, t) and out.shape == (1, 16, 4, 4)
    assert torch.allclose(out, nn.functional.max_pool2d(torch.cat((b, t), 1), 2))
