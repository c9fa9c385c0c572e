"""The model contract (docs/ARCHITECTURE.md), held for every registered model at once (as timm's
tests/test_models.py does): whatever a family is, the trainer, evaluator and exporters see the same thing."""
import pytest
import torch
from helpers import randomize_bn

from yoloforge.config import load_hyp
from yoloforge.families.registry import build_model, list_models

NC = 3


def _anchors_per_cell(model) -> int:
    head = getattr(model, "head", None) or getattr(model, "detect", None)
    return int(getattr(head, "na", 1) or 1)


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    torch.manual_seed(0)
    model = build_model(name, nc=NC)
    assert model.name == name and model.nc == NC and not getattr(model, "fused", False)
    strides = [int(s) for s in model.stride.tolist()]
    assert strides == sorted(strides) and strides[0] >= 8
    hyp = load_hyp(model.default_hyp, model.name)  # every model names a preset that loads
    h, w = 2 * strides[-1], 3 * strides[-1]  # not square: height and width must not be swapped anywhere
    x = torch.rand(2, 3, h, w)

    # eval: (B, N, 4 + nc), scores in [0, 1]. Random BN statistics and a jolt to every weight first: fresh heads
    # predict constants (zero predictor weights), which would hide a wrong fold in the deploy form
    g = torch.Generator().manual_seed(1)
    randomize_bn(model, g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.eval()
    with torch.no_grad():
        out = model(x)
    n = sum((h // s) * (w // s) for s in strides) * _anchors_per_cell(model)
    assert out.shape == (2, n, 4 + NC) and torch.isfinite(out).all()
    assert out[..., 4:].min() >= 0 and out[..., 4:].max() <= 1
    # the deploy form computes the same function
    with torch.no_grad():
        deployed = model.deployed()
        assert deployed.fused and deployed is not model
        dout = deployed(x)
    scale = out.abs().max().clamp(min=1.0)
    assert (dout - out).abs().max() / scale < 1e-4, name

    # train: the family's loss takes the raw outputs and targets (M, 6) [image, cls, x1, y1, x2, y2] in pixels,
    # gives a finite positive total, one item per name, and gradients to every trainable parameter that acts
    model.train()
    loss_fn = model.build_loss(hyp)
    targets = torch.tensor([[0, 1, 10.0, 12.0, 50.0, 60.0], [0, 2, 30.0, 20.0, 31.5, 21.0],  # one tiny box
                            [1, 0, w - 40.0, h - 30.0, w - 1.0, h - 1.0]])  # one at the border
    loss, items = loss_fn(model(x), targets, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert items.shape == (len(loss_fn.names),) and torch.isfinite(items).all()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    # a batch without a single target (an image of background only) is a valid batch
    empty, empty_items = loss_fn(model(x), torch.zeros((0, 6)), 0)
    assert torch.isfinite(empty) and torch.isfinite(empty_items).all()
