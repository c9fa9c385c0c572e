"""YOLOv4 bag of freebies / specials: every switch does what BOF_SWITCHES says it does."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yoloforge.config import HYP_PRESETS
from yoloforge.data import augment as A
from yoloforge.families.yolov4.freebies import (BOF_SWITCHES, _set_stochastic_eval, multiscale_resize, multiscale_size,
                                  sat_eps, sat_perturb)
from yoloforge.engine.optim import lr_lambda
from yoloforge.families.yolov4.loss import YOLOv4Loss, build_targets, smooth_bce_targets
from yoloforge.families.yolov4.bof import (CmBN2d, DropBlock2d, SpatialAttention, convert_cmbn, reset_cmbn,
                                  set_dropblock)
from yoloforge.families.registry import build_model
from yoloforge.utils.nms import nms, non_max_suppression

from test_augment import _tile_loader, check_follow, scene


# ----------------------------------------------------------------------------- DropBlock
def test_dropblock_rate_blocks_and_rescale():
    torch.manual_seed(0)
    bs, p = 5, 0.1
    m = DropBlock2d(p, bs).train()
    x = torch.ones(8, 8, 32, 32)
    fracs = []
    for _ in range(12):
        y = m(x)
        zero = (y == 0).float()
        fracs.append(zero.mean().item())
        kept = y[y != 0]
        assert torch.allclose(kept, torch.full_like(kept, x.numel() / (y != 0).sum().item()))  # rescaled
        assert y.sum().item() == pytest.approx(x.numel(), rel=1e-5)
        # every dropped pixel lies in an all-dropped bs x bs square
        full = (F.avg_pool2d(zero, bs, 1) > 1 - 1e-6).float()
        covered = F.max_pool2d(F.pad(full, (bs - 1,) * 4), bs, 1)
        assert torch.equal(covered, zero)
    assert abs(np.mean(fracs) - p) < 0.01, np.mean(fracs)
    # channels get independent masks unless shared
    assert not torch.equal(zero[:, 0], zero[:, 1])
    shared = DropBlock2d(0.3, 3, share_channels=True).train()(torch.ones(2, 4, 16, 16))
    assert torch.equal(shared[:, :1].expand_as(shared), shared)


def test_dropblock_eval_identity_grad_and_small_maps():
    m = DropBlock2d(0.2, 7)
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    assert m.eval()(x) is x
    assert DropBlock2d(0.0).train()(x) is x
    m.train()
    y = m(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y / x).detach(), atol=1e-4)  # gradient = mask * scale
    assert m(torch.ones(1, 2, 3, 3)).shape == (1, 2, 3, 3)  # block clamped to the 3x3 map
    assert set_dropblock(nn.Sequential(m, DropBlock2d(0.1)), 0.05) == 2 and m.drop_prob == 0.05


# ----------------------------------------------------------------------------- SAM
@torch.no_grad()
def test_spatial_attention_pointwise():
    torch.manual_seed(1)
    sam = SpatialAttention(6)
    bn = sam.cv.bn
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.uniform_(0.5, 2)
    sam.eval()
    x = torch.randn(2, 6, 5, 7)
    y = sam(x)
    att = sam.attention(x)
    assert y.shape == x.shape == att.shape and ((att > 0) & (att < 1)).all()
    z = F.batch_norm(F.conv2d(x, sam.cv.conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                     eps=bn.eps)
    assert torch.allclose(y, x * torch.sigmoid(z), atol=1e-6)
    sam.fuse()
    assert isinstance(sam.cv.bn, nn.Identity) and torch.allclose(sam(x), y, atol=1e-5)


# ----------------------------------------------------------------------------- CmBN
def test_cmbn_pools_statistics_over_the_window():
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    weight = bn.weight
    assert convert_cmbn(nn.Sequential(bn), window=3) == 1
    assert isinstance(bn, CmBN2d) and bn.weight is weight and "num_batches_tracked" in bn.state_dict()
    chunks = [torch.randn(2, 4, 5, 5) * (i + 1) + i for i in range(4)]
    for t in range(3):
        y = bn(chunks[t])
        seen = torch.cat(chunks[:t + 1])
        ref = F.batch_norm(chunks[t], seen.mean((0, 2, 3)), seen.var((0, 2, 3), unbiased=False), bn.weight,
                           bn.bias, training=False, eps=bn.eps)
        assert torch.allclose(y, ref, atol=1e-4), t
        y.square().sum().backward()  # earlier mini-batches are constants: no second backward through them
    assert bn.weight.grad is not None
    y4 = bn(chunks[3])  # the window of 3 is over: mini-batch 4 starts a new one
    plain = F.batch_norm(chunks[3], None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert torch.allclose(y4, plain, atol=1e-4)
    bn(chunks[0])
    reset_cmbn(bn)
    assert torch.allclose(bn(chunks[1]), F.batch_norm(chunks[1], None, None, bn.weight, bn.bias, True, eps=bn.eps),
                          atol=1e-4)
    bn.eval()
    ref = F.batch_norm(chunks[0], bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    assert torch.allclose(bn(chunks[0]), ref)


# ----------------------------------------------------------------------------- SAT
def _tiny_setup(seed=3):
    """yolov4-tiny with BN statistics of the batch (so eval-mode BN is well scaled) and ``gr = 0``: the
    objectness target is then 1, not the detached IoU of the prediction, so the loss the gradient sees
    is the loss that is measured."""
    torch.manual_seed(seed)
    model = build_model("yolov4-tiny", nc=3).train()
    loss_fn = model.build_loss({**HYP_PRESETS["yolov4"], "gr": 0.0})
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 8, 10, 40, 50], [1, 2, 20, 20, 60, 44], [1, 0, 2, 30, 20, 60]], dtype=torch.float32)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.momentum = 1.0
        model(imgs)
        for m in bns:
            m.momentum = 0.03
    return model, loss_fn, imgs, targets


def test_sat_perturb_bounded_adversarial_and_leaves_model_alone():
    model, loss_fn, imgs, targets = _tiny_setup()
    first = next(model.parameters())
    first.grad = torch.ones_like(first)  # an accumulated gradient must survive untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps = 4 / 255
    adv = sat_perturb(model, loss_fn, imgs, targets, epoch=0, eps=eps)
    d = (adv - imgs).abs()
    assert d.max() <= eps + 1e-6 and d.max() > eps / 2 and (d > 0).float().mean() > 0.5
    assert not adv.requires_grad and adv.shape == imgs.shape
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert torch.equal(first.grad, torch.ones_like(first))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert all(p.requires_grad for p in model.parameters()) and model.training
    assert all(m.training for m in model.modules())
    saved = _set_stochastic_eval(model)  # measure both losses the way the attack saw the model
    with torch.no_grad():
        l0 = loss_fn(model(imgs), targets, 0)[0].item()
        l1 = loss_fn(model(adv), targets, 0)[0].item()
    for m, mode in saved:
        m.train(mode)
    assert l1 > l0 * 1.05, (l0, l1)
    assert sat_perturb(model, loss_fn, imgs, targets, 0, eps=0.0) is imgs


def test_sat_eps_schedule():
    assert sat_eps(0.02, 0, 10, warmup_epochs=1) == 0.0
    assert sat_eps(0.02, 4, 10, warmup_epochs=1) == pytest.approx(0.01)
    assert sat_eps(0.02, 9, 10) == pytest.approx(0.02) and sat_eps(0.0, 5, 10) == 0.0


# ----------------------------------------------------------------------------- random shapes
def test_multiscale_sizes_and_boxes_follow():
    rng = np.random.default_rng(0)
    sizes = {multiscale_size(320, 32, rng) for _ in range(300)}
    assert all(s % 32 == 0 and 160 <= s <= 480 for s in sizes) and len(sizes) >= 9
    img = torch.zeros(2, 3, 128, 128, dtype=torch.uint8)
    img[1, :, 32:64, 40:104] = 255
    targets = torch.tensor([[1, 0, 40, 32, 104, 64]], dtype=torch.float32)
    seen = set()
    for seed in range(6):
        out, t = multiscale_resize(img, targets, 128, 32, np.random.default_rng(seed))
        s = out.shape[-1]
        seen.add(s)
        assert out.dtype == torch.uint8 and out.shape[-2] == s and s % 32 == 0 and 64 <= s <= 192
        assert torch.allclose(t[:, 2:], targets[:, 2:] * s / 128) and torch.equal(t[:, :2], targets[:, :2])
        ys, xs = torch.nonzero(out[1, 0] > 127, as_tuple=True)
        got = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert (got - t[0, 2:]).abs().max() <= 1.0
    assert len(seen) >= 2
    rect, t = multiscale_resize(torch.rand(1, 3, 64, 128), targets, 128, 32, rng=1)
    h, w = rect.shape[-2:]
    assert h % 32 == 0 and w % 32 == 0 and t[0, 2] == pytest.approx(40 * w / 128)
    assert t[0, 3] == pytest.approx(32 * h / 64)


# ----------------------------------------------------------------------------- CutMix
@pytest.mark.parametrize("seed", range(10))
def test_cutmix_boxes_follow_pixels(seed):
    rng = np.random.default_rng(seed)
    b1 = [(10, 10, 70, 60), (100, 20, 180, 90), (30, 110, 90, 180), (130, 120, 190, 190)]
    b2 = [(0, 0, 0, 0)] * 4 + [(20, 20, 80, 80), (110, 10, 170, 70), (15, 120, 75, 190), (120, 110, 190, 170)]
    img1, lab1 = scene(rng, 200, 200, b1)
    img2, lab2 = scene(rng, 200, 200, b2)
    lab2 = lab2[4:]
    out, lab = A.cutmix(img1, lab1, img2, lab2, rng)
    assert out.shape == img1.shape and lab.dtype == np.float32
    ys, xs = np.nonzero(np.all(out == img2, axis=2) & np.any(img1 != img2, axis=2))
    rx1, ry1, rx2, ry2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1  # the pasted rectangle
    assert 0.1 - 0.02 <= (rx2 - rx1) * (ry2 - ry1) / (200 * 200) <= 0.5 + 0.02
    rect = np.zeros((200, 200), bool)
    rect[ry1:ry2, rx1:rx2] = True
    assert np.array_equal(out[rect], img2[rect]) and np.array_equal(out[~rect], img1[~rect])
    check_follow(out, lab, tol=0)
    kinds = set(lab[:, 0].astype(int))
    for k, (x1, y1, x2, y2) in enumerate(b1 + b2[4:]):  # dropped objects: less than 40% of them is left
        if k not in kinds:
            inside = rect[y1:y2, x1:x2].sum()
            visible = inside if k >= 4 else (x2 - x1) * (y2 - y1) - inside
            assert visible < 0.4 * (x2 - x1) * (y2 - y1), (k, visible)
    for c, x1, y1, x2, y2 in lab[lab[:, 0] >= 4]:  # pasted objects lie inside the rectangle
        assert rx1 <= x1 and x2 <= rx2 and ry1 <= y1 and y2 <= ry2


def test_augmenter_cutmix_switch():
    base = _tile_loader(128)
    hyp = dict(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, mosaic=0.0)
    for p, n_loads in ((0.0, 1), (1.0, 2)):
        calls = []

        def load(i):
            calls.append(int(i))
            return base(int(i))

        img, lab = A.Augmenter({**hyp, "cutmix": p}, imgsz=128)(load, 1, 4, np.random.default_rng(0))
        assert len(calls) == n_loads and img.shape == (128, 128, 3)
        calls.clear()
        A.Augmenter({**hyp, "cutmix": 1.0}, imgsz=128)(load, 1, 4, np.random.default_rng(0), cutmix=False)
        assert len(calls) == 1
    assert A.Augmenter().hyp["cutmix"] == 0.0


# ----------------------------------------------------------------------------- existing switches
def test_switch_table_matches_preset_and_code():
    preset = HYP_PRESETS["yolov4"]
    for name, sw in BOF_SWITCHES.items():
        if sw.hyp_key is not None:
            assert preset.get(sw.hyp_key, sw.default) == sw.default, name
        mod, attr = sw.where.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(mod), attr)), sw.where


def _one_level_loss(hyp, box):
    loss = YOLOv4Loss(3, [[[16.0, 16.0]]], [8], {"neighbor_cells": False, **hyp})
    p = torch.zeros(1, 1, 4, 4, 8)  # zero box logits decode to an anchor-sized box at the cell centre
    p[..., 5:] = torch.tensor([-4.0, 4.0, -4.0])  # confident, right class (class 1)
    return loss, loss([p], torch.tensor([[0, 1, *box]], dtype=torch.float32))[1]


def test_iou_loss_kind_and_label_smoothing():
    wide = (6.0, 8.0, 30.0, 16.0)  # aspect 3:1 against the square anchor: CIoU adds a penalty
    _, ciou = _one_level_loss({"iou_loss": "ciou"}, wide)
    _, diou = _one_level_loss({"iou_loss": "diou"}, wide)
    assert ciou[0] > diou[0] + 1e-3  # 1 - CIoU = 1 - DIoU + alpha * v
    square = (6.0, 6.0, 22.0, 22.0)
    assert torch.allclose(_one_level_loss({"iou_loss": "ciou"}, square)[1][0],
                          _one_level_loss({"iou_loss": "diou"}, square)[1][0], atol=1e-6)
    assert smooth_bce_targets(0.1) == pytest.approx((0.95, 0.05))
    ls, smooth = _one_level_loss({"label_smoothing": 0.1}, wide)
    _, hard = _one_level_loss({"label_smoothing": 0.0}, wide)
    assert (ls.cp, ls.cn) == pytest.approx((0.95, 0.05)) and smooth[2] > hard[2] * 2


def test_grid_sensitivity_assigns_neighbour_cells():
    t = torch.tensor([[0, 0, 18, 18, 34, 34]], dtype=torch.float32)  # centre 3.25 cells: + left and upper cells
    anchors = torch.tensor([[[16.0, 16.0]]])
    n_on = len(build_targets(t, anchors, [8], [(8, 8)], neighbor_cells=True)[0][0])
    n_off = len(build_targets(t, anchors, [8], [(8, 8)], neighbor_cells=False)[0][0])
    assert (n_off, n_on) == (1, 3)


def test_diou_nms_keeps_distant_centres():
    boxes = torch.tensor([[0.0, 0, 100, 10], [40, 0, 140, 10]])  # IoU 0.43, DIoU 0.35
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.4, kind="iou").tolist() == [0]
    assert nms(boxes, scores, 0.4, kind="diou").tolist() == [0, 1]
    pred = torch.cat((boxes, scores[:, None]), 1)[None]
    assert len(non_max_suppression(pred, conf=0.1, iou=0.4, kind="diou")[0]) == 2


def test_cosine_lr_and_mosaic_switches():
    hyp = dict(lrf=0.2, cos_lr=True)
    cos, lin = lr_lambda(hyp, 100), lr_lambda({**hyp, "cos_lr": False}, 100)
    assert cos(0) == pytest.approx(1) and cos(100) == pytest.approx(0.2) and cos(50) == pytest.approx(0.6)
    assert cos(25) == pytest.approx(1 - 0.8 * (1 - math.cos(math.pi / 4)) / 2) and lin(25) == pytest.approx(1 - 0.8 * 25 / 99)
    assert lin(99) == pytest.approx(0.2)  # yolov7 --linear-lr: (1 - e / (E - 1)) (1 - lrf) + lrf
    base = _tile_loader(96)
    for p, n in ((1.0, 4), (0.0, 1)):
        calls = []
        A.Augmenter({"mosaic": p}, imgsz=96)(lambda i: calls.append(i) or base(int(i)), 0, 8, np.random.default_rng(1))
        assert len(calls) == n


# ----------------------------------------------------------------------------- YOLOv4 build switches
def test_yolov4_dropblock_sam_switches():
    torch.manual_seed(4)
    model = build_model("yolov4-csp", nc=2, width_scale=0.25, dropblock=0.2, sam=True)
    assert model.build_kwargs == dict(nc=2, width_scale=0.25, dropblock=0.2, sam=True)
    plain = build_model("yolov4-csp", nc=2, width_scale=0.25)
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("sam.") for k in extra) and set(plain.state_dict()) <= set(model.state_dict())
    calls = []
    drop = model.neck.drop
    drop.register_forward_hook(lambda m, i, o: calls.append(torch.equal(i[0], o)))
    x = torch.rand(1, 3, 64, 64)
    model.train()
    model(x)
    assert len(calls) == 5 and not all(calls)  # after SPPCSP + 2 top-down + 2 bottom-up CSP blocks
    model.eval()
    with torch.no_grad():
        for m in model.modules():  # random BN statistics so the folding is exercised
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        y = model(x)
        assert torch.equal(model(x), y)
        rebuilt = build_model(model.name, **model.build_kwargs)
        assert isinstance(rebuilt.neck.drop, DropBlock2d) and len(rebuilt.sam) == 3
        model.fuse()
        y2 = model(x)
    assert not any(isinstance(m, (DropBlock2d, nn.BatchNorm2d)) for m in model.modules())
    assert (y2 - y).abs().max() <= 1e-5 * y.abs().max()
    tiny = build_model("yolov4-tiny", nc=2, dropblock=0.1)
    assert isinstance(tiny.drop, DropBlock2d) and tiny.sam is None
    with pytest.raises(ValueError):
        build_model("yolov4-tiny", dropblock=1.0)
