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


def spawn_isolated(module: str, fn: str, args: tuple, nprocs: int = 2, timeout: int = 600) -> None:
    """``torch.multiprocessing.spawn(module.fn, args, nprocs)`` from a fresh interpreter.

    The ranks do not inherit what earlier tests left in the pytest process (thread pools, loader workers,
    signal handlers). The pytest process used to die here with SIGSEGV: not from DDP, but from OpenVINO's
    alternate-signal-stack bug meeting the SIGCHLD of the child's exit (tests/test_openvino_core.py).
    """
    import subprocess
    import sys
    from pathlib import Path

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import torch.multiprocessing as mp; from {module} import {fn}; "
            f"mp.spawn({fn}, args={args!r}, nprocs={nprocs}, join=True)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
