"""RepOptimizer (YOLOv6 sec. 2.5.1): the equivalence it rests on, the official step, the three training modes'
deploy graphs, and the two-stage training through the trainer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yoloforge.families.yolov6.repopt import RepOptimizer, extract_scales, gradient_mask, reinitialize
from yoloforge.families.yolov6.blocks import HyperSearchBlock, RealVGGBlock
from yoloforge.families.registry import build_model


def test_masked_sgd_on_one_kernel_equals_sgd_on_the_scaled_branches():
    """Linear block y = s3 * (W3 * x) + s1 * (W1 * x) + d * x with W3, W1 and the diagonal d trained and the scales
    constant: one SGD step (momentum, Nesterov) on the branches, merged, equals one masked step on the merged kernel."""
    torch.manual_seed(0)
    c, lr = 6, 0.1
    x = torch.randn(2, c, 7, 7, dtype=torch.float64)
    target = torch.randn(2, c, 7, 7, dtype=torch.float64)
    s3, s1, sid = (torch.rand(c, dtype=torch.float64) + 0.5 for _ in range(3))
    w3 = torch.randn(c, c, 3, 3, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(c, c, 1, 1, dtype=torch.float64, requires_grad=True)
    d = sid.clone().requires_grad_(True)  # the identity branch: a trained diagonal that starts at its scale

    def merged(w3, w1, d):
        k = w3 * s3.view(-1, 1, 1, 1) + F.pad(w1 * s1.view(-1, 1, 1, 1), [1, 1, 1, 1])
        return k + F.pad(torch.diag_embed(d).view(c, c, 1, 1), [1, 1, 1, 1])

    y = F.conv2d(x, w3, padding=1) * s3.view(1, -1, 1, 1) + F.conv2d(x, w1) * s1.view(1, -1, 1, 1) + x * d.view(1, -1, 1, 1)
    ((y - target) ** 2).sum().backward()
    opt = torch.optim.SGD([w3, w1, d], lr=lr, momentum=0.9, nesterov=True)
    k0 = merged(w3, w1, d).detach().clone()
    opt.step()
    want = merged(w3, w1, d).detach()

    block = RealVGGBlock(c, c).double()
    block.conv.weight.data.copy_(k0)
    ((F.conv2d(x, block.conv.weight, padding=1) - target) ** 2).sum().backward()
    ropt = RepOptimizer([block.conv.weight], lr=lr, momentum=0.9, nesterov=True)
    ropt.attach(nn.ModuleDict({"b": block}), {"b": (sid.float(), s1.float(), s3.float())})
    ropt.masks = {p: m.double() for p, m in ropt.masks.items()}
    ropt.step()
    rel = float((block.conv.weight.detach() - want).abs().max() / (want - k0).abs().max())
    assert rel < 1e-6


def test_repoptimizer_step_is_the_official_step():
    """Official RepVGGOptimizer.step: d = grad * mask; d += wd * p; buf = d (first step); d += momentum * buf;
    p -= lr * d. Two steps, so the momentum buffer is exercised."""
    torch.manual_seed(1)
    block = RealVGGBlock(4, 8, s=2)
    scales = (torch.rand(8) + 0.5, torch.rand(8) + 0.5)
    p = block.conv.weight
    ref = p.detach().clone()
    opt = RepOptimizer([{"params": [p], "weight_decay": 0.01}], lr=0.05, momentum=0.9, nesterov=True)
    opt.attach(nn.ModuleDict({"b": block}), {"b": scales})
    mask = gradient_mask(block, scales)
    assert torch.allclose(mask[:, :, 0, 0], (scales[1] ** 2).view(-1, 1).expand(8, 4))
    assert torch.allclose(mask[:, :, 1, 1], (scales[1] ** 2 + scales[0] ** 2).view(-1, 1).expand(8, 4))
    buf = None
    for _ in range(2):
        g = torch.randn_like(p)
        p.grad = g.clone()
        opt.step()
        dp = g * mask + 0.01 * ref
        buf = dp.clone() if buf is None else buf * 0.9 + dp
        ref = ref - 0.05 * (dp + 0.9 * buf)
    assert torch.allclose(p.detach(), ref, rtol=1e-6, atol=1e-7)


def test_identity_mask_adds_one_on_the_diagonal_centre():
    block = RealVGGBlock(5, 5)
    s = (torch.full((5,), 0.7), torch.full((5,), 0.5), torch.full((5,), 2.0))
    m = gradient_mask(block, s)
    assert torch.allclose(m[0, 0, 1, 1], torch.tensor(4.0 + 0.25 + 1.0))
    assert torch.allclose(m[0, 1, 1, 1], torch.tensor(4.25))
    assert torch.allclose(m[0, 0, 0, 0], torch.tensor(4.0))


def test_reinitialize_merges_the_scaled_branches_into_the_kernel():
    torch.manual_seed(2)
    block = RealVGGBlock(3, 3)
    w = block.conv.weight.detach().clone()
    s = (torch.full((3,), 0.5), torch.full((3,), 2.0), torch.full((3,), 3.0))
    reinitialize(nn.ModuleDict({"b": block}), {"b": s})
    new = block.conv.weight.detach()
    corner = new[:, :, 0, 0]
    assert torch.allclose(corner, 3.0 * w[:, :, 0, 0])  # only the 3x3 branch outside the centre
    centre_off = new[0, 1, 1, 1] - 3.0 * w[0, 1, 1, 1]  # 2 * the fresh 1x1 weight
    assert float(centre_off.abs()) <= 2.0 / 3 ** 0.5 + 1e-6  # kaiming-uniform bound of a 1x1 conv with 3 inputs
    eye_part = new[0, 0, 1, 1] - 3.0 * w[0, 0, 1, 1]
    assert float((eye_part - 0.5).abs()) <= 2.0 / 3 ** 0.5 + 1e-6


def _randomize(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            if isinstance(m, HyperSearchBlock):
                for t in (m.scale_conv, m.scale_1x1, m.scale_identity):
                    if t is not None:
                        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        for conv in list(model.head.cls_preds) + list(model.head.reg_preds):
            conv.weight.normal_(0, 0.01, generator=g)
    return model


@pytest.mark.parametrize("mode", ["repvgg", "hyper_search", "repopt"])
def test_every_training_mode_fuses_to_the_same_deploy_graph(mode):
    from yoloforge.utils.flops import model_info

    model = _randomize(build_model("yolov6n", nc=3, training_mode=mode)).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        after = model(x)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-3 * float(before.abs().max()))
    assert float((before[..., 4:] - before[..., 4:].mean()).abs().max()) > 0  # scores not constant
    ref = build_model("yolov6n", nc=3).fuse()
    info, ref_info = model_info(model, 128), model_info(ref, 128)
    assert info["params"] == ref_info["params"]
    assert info["gflops"] == pytest.approx(ref_info["gflops"])
    kinds = [type(m).__name__ for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert kinds.count("Conv2d") == len(kinds)


def test_mode_errors_and_scales_fit():
    with pytest.raises(ValueError, match="training_mode"):
        build_model("yolov6n", training_mode="fancy")
    hs = build_model("yolov6n", nc=3, training_mode="hyper_search")
    scales = extract_scales(hs)
    ro = build_model("yolov6n", nc=3, training_mode="repopt")
    opt = RepOptimizer(ro.parameters(), lr=0.01, momentum=0.9, nesterov=True).attach(ro, scales)
    assert len(opt.masks) == len(scales) == sum(isinstance(m, RealVGGBlock) for m in ro.modules())
    with pytest.raises(ValueError, match="do not fit"):
        RepOptimizer(ro.parameters(), lr=0.01).attach(ro, extract_scales(build_model("yolov6s", training_mode="hyper_search")))
    with pytest.raises(ValueError, match="no hyper-search blocks"):
        extract_scales(build_model("yolov6n"))
    # the official groups: the hyper-search scales decay (they are ScaleLayer .weight in 0.2.0)
    from yoloforge.engine.optim import param_groups

    decay, no_decay, _ = param_groups(hs)
    ids = {id(p) for p in decay}
    assert all(id(m.scale_conv) in ids for m in hs.modules() if isinstance(m, HyperSearchBlock))


def test_two_stage_training_and_resume(tmp_path, tiny_data):
    from yoloforge.api import Detector
    from yoloforge.config import TrainConfig
    from yoloforge.engine.trainer import Trainer, TrainingError
    from yoloforge.utils.checkpoint import load_state
    from yoloforge.weights import load_model

    common = dict(data=str(tiny_data), imgsz=64, batch=4, nbs=4, workers=0, project=str(tmp_path),
                  plots=False, verbose=False, tensorboard=False, hyp="small-data")
    hs = Detector("yolov6n", training_mode="hyper_search").train(name="hs", epochs=1, **common)
    model, meta = load_model(hs)
    assert meta["build_kwargs"]["training_mode"] == "hyper_search"
    assert any(isinstance(m, HyperSearchBlock) for m in model.modules())
    scales = extract_scales(model)
    assert any(not torch.allclose(s[-1], torch.ones_like(s[-1])) for s in scales.values())  # they were trained

    with pytest.raises(TrainingError, match="needs --scales"):
        Trainer(TrainConfig(model="yolov6n", training_mode="repopt", name="x", epochs=1, **common)).train()
    with pytest.raises(TrainingError, match="YOLOv6 option"):
        Trainer(TrainConfig(model="yolov7-tiny", training_mode="repopt", name="y", epochs=1, **common)).train()

    tr = Trainer(TrainConfig(model="yolov6n", training_mode="repopt", scales=str(hs), name="ro", epochs=2, **common))
    best = tr.train()
    assert isinstance(tr.optimizer, RepOptimizer) and len(tr.optimizer.masks) == len(scales)
    ro, meta = load_model(best)
    assert meta["build_kwargs"]["training_mode"] == "repopt"
    state = load_state(tmp_path / "ro" / "weights" / "last.state.pt")
    assert set(state["optimizer"]["repopt_scales"]) == set(scales)
    # resume rebuilds the masks from the state, even when the scales file is gone
    hs.rename(hs.with_suffix(".moved"))
    tr2 = Trainer(TrainConfig(resume=str(tmp_path / "ro"), **{k: v for k, v in common.items() if k == "workers"}),
                  resume_epochs=3)
    tr2.train()
    assert all(torch.equal(tr2.optimizer.masks[p], m) for p, m in tr2.optimizer.masks.items())
    assert set(tr2.optimizer.scales) == set(scales)
    # the repopt model deploys like any other: fused, its outputs unchanged
    ro.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = ro(x)
        b = ro.fuse()(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3 * float(a.abs().max()))
