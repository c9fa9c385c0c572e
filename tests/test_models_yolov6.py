"""YOLOv6 family: sizes against the verified official counts, re-parameterization, output contract."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from yoloforge.families.yolov6 import blocks
from yoloforge.families.yolov6.blocks import BepC3, BottleRep
from yoloforge.families.yolov6.model import YOLOv6
from yoloforge.models.box_coder import dfl_expectation, make_anchor_points, make_atss_anchors
from yoloforge.models.common import ConvBNAct, RepVGGBlock, fuse_conv_bn
from yoloforge.families.registry import build_model, list_models
from yoloforge.utils.flops import count_gflops, count_params, model_info

# ../shared/FACTS.md "Verified counts of the official models" (fused, nc 80, 640x640).
OFFICIAL = {
    "yolov6n": (4.317, 11.04),
    "yolov6t": (14.971, 36.32),
    "yolov6s": (17.220, 43.87),
    "yolov6m": (34.286, 81.47),
    "yolov6l": (58.541, 142.76),
}
VARIANTS = list(OFFICIAL)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affine, random BottleRep alpha and non-zero predictor weights, so that
    folding is really exercised (fresh BN is the identity and the head predictors start at zero)."""
    g = torch.Generator().manual_seed(seed)

    def u(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(u(n, 0.5, 1.5))
            m.weight.copy_(u(n, 0.5, 1.5))
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        elif isinstance(m, BottleRep):
            m.alpha.copy_(u(1, 0.5, 1.5))
    if isinstance(model, YOLOv6):
        for conv in [*model.head.cls_preds, *model.head.reg_preds]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
    return model


def raw_and_decoded(model: YOLOv6, x):
    """One pass: raw head outputs (cls logits, reg) and the eval-mode decoded output."""
    feats = model.neck(model.backbone(x))
    cls, reg = model.head(feats)
    return cls, reg, model.decode(feats, cls, reg)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_gflops_match_official(name):
    with torch.device("meta"):  # shapes only: exact counts without allocating 58M parameters
        model = build_model(name, nc=80)
    model.fuse()
    params, gflops = count_params(model) / 1e6, count_gflops(model, 640)
    ref_p, ref_g = OFFICIAL[name]
    assert abs(params / ref_p - 1) < 0.01, (name, params, ref_p)
    assert abs(gflops / ref_g - 1) < 0.01, (name, gflops, ref_g)


def test_gflops_meta_equals_real_forward_and_model_info():
    model = build_model("yolov6n")
    assert count_gflops(model, 128, meta=True) == pytest.approx(count_gflops(model, 128, meta=False), rel=1e-9)
    info = model_info(model, 128)
    assert info["params"] == count_params(model) > info["params_fused"]  # RepVGG branches + BN folded
    assert info["gflops"] > info["gflops_fused"] > 0
    assert info["layers"] > 100
    assert not model.fused  # model_info works on copies


def test_variant_attributes():
    expect = {"yolov6n": (0, "siou"), "yolov6t": (0, "siou"), "yolov6s": (0, "giou"),
              "yolov6m": (16, "giou"), "yolov6l": (16, "giou")}
    for name, (reg_max, iou) in expect.items():
        with torch.device("meta"):
            m = build_model(name)
        assert (m.reg_max, m.use_dfl, m.iou_type) == (reg_max, reg_max > 0, iou)
        assert m.family == "yolov6" and m.default_hyp == "yolov6" and m.name == name
        assert m.stride.shape == (3,)
    with torch.device("meta"):
        large = build_model("yolov6l")
    # YOLOv6-L trains with plain conv+BN+SiLU blocks (training_mode "conv_silu"): no RepVGG inside
    assert not any(isinstance(m, RepVGGBlock) for m in large.modules())
    assert any(isinstance(m, nn.SiLU) for m in large.backbone.modules())


# ----------------------------------------------------------------------------- fuse
@pytest.mark.parametrize("name", VARIANTS)
def test_fused_equals_unfused(name):
    torch.manual_seed(0)
    model = randomize(build_model(name, nc=5)).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref_cls, ref_reg, ref = raw_and_decoded(model, x)
        model.fuse()
        cls, reg, out = raw_and_decoded(model, x)
        assert torch.equal(model(x), out)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, RepVGGBlock) and m.reparam is None for m in model.modules())
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(cls, ref_cls) <= 1e-5
    assert rel_err(reg, ref_reg) <= 1e-5
    # idempotent: a second fuse changes neither the structure nor the outputs
    keys = list(model.state_dict())
    model.fused = False  # force the walk through every block again
    with torch.no_grad():
        again = model.fuse()(x)
    assert list(model.state_dict()) == keys
    assert torch.equal(again, out)


def test_fuse_order_does_not_matter():
    """Fusing children before parents (post-order) gives the same deploy model as pre-order."""
    torch.manual_seed(1)
    a = randomize(build_model("yolov6s", nc=3)).eval()
    b = randomize(build_model("yolov6s", nc=3)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for m in reversed(list(b.modules())):
            if m is not b and hasattr(m, "fuse"):
                m.fuse()
        assert rel_err(b(x), a.fuse()(x)) <= 1e-6


@pytest.mark.parametrize("stride,c1,c2", [(1, 8, 8), (2, 8, 8), (1, 6, 10), (2, 4, 12)])
def test_repvgg_block_fuse(stride, c1, c2):
    torch.manual_seed(2)
    blk = randomize(RepVGGBlock(c1, c2, 3, stride)).eval()
    assert (blk.identity is not None) == (stride == 1 and c1 == c2)
    x = torch.randn(2, c1, 13, 14)
    with torch.no_grad():
        ref = blk(x)
        blk.fuse()
        out = blk(x)
        assert blk.reparam.kernel_size == (3, 3) and blk.reparam.bias is not None
        assert rel_err(out, ref) <= 1e-5
        assert torch.equal(blk.fuse()(x), out)
    assert ref.shape == (2, c2, math.ceil(13 / stride), math.ceil(14 / stride))


@pytest.mark.parametrize("bias", [False, True])
def test_fuse_conv_bn_and_convbnact(bias):
    torch.manual_seed(3)
    conv, bn = nn.Conv2d(4, 6, 3, 2, 1, bias=bias), nn.BatchNorm2d(6)
    randomize(nn.Sequential(conv, bn)).eval()
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        assert rel_err(fuse_conv_bn(conv, bn)(x), bn(conv(x))) <= 1e-6
        block = randomize(ConvBNAct(4, 6, 3, 2, act="silu", bias=bias)).eval()
        ref = block(x)
        block.fuse().fuse()
        assert isinstance(block.bn, nn.Identity)
        assert rel_err(block(x), ref) <= 1e-6


def test_bepc3_structure_and_fuse():
    torch.manual_seed(4)
    blk = randomize(BepC3(16, 24, n=7, e=2 / 3)).eval()
    assert len(blk.m) == 3 and blk.cv1.conv.out_channels == int(24 * 2 / 3)  # n // 2 BottleReps
    assert all(isinstance(b.alpha, nn.Parameter) for b in blk.m)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ref = blk(x)
        for m in list(blk.modules()):
            if hasattr(m, "fuse"):
                m.fuse()
        assert rel_err(blk(x), ref) <= 1e-5


def test_transpose_upsamples():
    assert blocks.Transpose(8, 4)(torch.randn(1, 8, 5, 7)).shape == (1, 4, 10, 14)


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", ["yolov6n", "yolov6m"])
def test_train_and_eval_outputs(name):
    torch.manual_seed(5)
    nc, h, w = 7, 64, 128
    model = build_model(name, nc=nc)
    reg_ch = 4 * (model.reg_max + 1)
    n = sum((h // s) * (w // s) for s in (8, 16, 32))
    x = torch.rand(2, 3, h, w)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    feats, cls, reg = model.train()(x)
    assert [f.shape[-2:] for f in feats] == [(h // s, w // s) for s in (8, 16, 32)]
    assert cls.shape == (2, n, nc) and reg.shape == (2, n, reg_ch)
    (cls.square().mean() + reg.square().mean() + sum(f.mean() for f in feats)).backward()  # no in-place clash
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad()
    with torch.no_grad():
        out = randomize(model).eval()(x)
    assert out.shape == (2, n, 4 + nc) and torch.isfinite(out).all()
    assert out[..., 4:].min() >= 0 and out[..., 4:].max() <= 1
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 64, 80))


def test_initial_biases_and_box_decoding():
    """Fresh head: predictor weights 0, class bias for prior 0.01, ltrb bias 1 -> boxes are the
    anchor points +- one stride. Zero ltrb collapses every box onto its anchor point."""
    model = build_model("yolov6s", nc=3).eval()
    x = torch.rand(1, 3, 64, 96)
    points, strides = make_anchor_points([(8, 12), (4, 6), (2, 3)], (8, 16, 32))
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out[0, :, 4:], torch.full((points.shape[0], 3), 0.01), atol=1e-6)
        assert torch.allclose(out[0, :, :4], torch.cat((points - strides, points + strides), 1))
        assert out[0, 0, :4].tolist() == [-4.0, -4.0, 12.0, 12.0]  # (4, 4) +- 8
        for conv in model.head.reg_preds:
            conv.bias.zero_()
        out = model(x)
    assert torch.equal(out[0, :, :2], points) and torch.equal(out[0, :, 2:4], points)


def test_dfl_decoding():
    model = build_model("yolov6m", nc=2).eval()
    x = torch.rand(1, 3, 64, 64)
    points, strides = make_anchor_points([(8, 8), (4, 4), (2, 2)], (8, 16, 32))
    with torch.no_grad():
        for conv in model.head.reg_preds:  # uniform bins -> expectation reg_max / 2 = 8 strides
            conv.bias.zero_()
        out = model(x)
        assert torch.allclose(out[0, :, :4], torch.cat((points - 8 * strides, points + 8 * strides), 1), atol=1e-4)
        bias = torch.full((4, 17), -30.0)  # one-hot bins: left 0, top 3, right 16, bottom 5 strides
        for side, b in enumerate((0, 3, 16, 5)):
            bias[side, b] = 30.0
        for conv in model.head.reg_preds:
            conv.bias.copy_(bias.flatten())
        out = model(x)
    ltrb = torch.tensor([0.0, 3.0, 16.0, 5.0]) * strides
    expect = torch.cat((points - ltrb[:, :2], points + ltrb[:, 2:]), 1)
    assert torch.allclose(out[0, :, :4], expect, atol=1e-3)
    assert torch.allclose(dfl_expectation(torch.zeros(5, 4 * 17), 16), torch.full((5, 4), 8.0))


def test_anchor_cache_follows_input_size():
    model = build_model("yolov6n", nc=1).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 21, 5)
        assert model(torch.rand(1, 3, 64, 32)).shape == (1, 42, 5)
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 21, 5)
    assert len(model._anchor_cache) == 2


def test_anchor_helpers():
    pts, st = make_anchor_points([torch.zeros(1, 1, 2, 3), (1, 2)], (8, 16))
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert st.squeeze(1).tolist() == [8] * 6 + [16] * 2
    anchors, pts2, n_level, st2 = make_atss_anchors([(2, 3), (1, 2)], (8, 16))
    assert n_level == [6, 2] and torch.equal(pts2, pts) and torch.equal(st2, st)
    assert torch.equal(anchors[:, 2:] - anchors[:, :2], (5 * st).expand(-1, 2))
    assert torch.equal((anchors[:, :2] + anchors[:, 2:]) / 2, pts)


# ----------------------------------------------------------------------------- registry / loss
def test_registry():
    names = list_models()
    assert set(OFFICIAL) <= set(names)
    with pytest.raises(ValueError, match="yolov6s"):
        build_model("yolov6x")
    m = build_model("YOLOv6N", nc=3, iou_type="ciou")
    assert m.iou_type == "ciou" and m.nc == 3
    again = build_model(m.name, **m.build_kwargs)
    assert again.iou_type == "ciou" and again.nc == 3
    assert count_params(again) == count_params(m)
    with pytest.raises(ValueError, match="reg_max"):
        build_model("yolov6n", bogus=1)


def test_build_loss_passes_settings():
    pytest.importorskip("yoloforge.families.yolov6.loss")
    loss = build_model("yolov6m", nc=4).build_loss({"loss_iou": 3.0})
    assert hasattr(loss, "names")
