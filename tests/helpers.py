"""Helpers shared by several test files."""
import torch
from torch import nn


@torch.no_grad()
def randomize_bn(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Random BN running statistics and affine parameters, so that folding BN is really exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model
