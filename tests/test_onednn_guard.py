"""The oneDNN heap overflow in channels_last 1x1 strided weight gradients, and the guard against it.

torch 2.13.0 CPU bundles oneDNN v3.12.0. Its ``jit_1x1`` backward_weights kernel (avx2 and avx512_core alike)
writes outside its buffers for a 1x1 convolution with stride 2 and fewer than 16 input channels when the input
is channels_last (NHWC). Nothing fails at that moment: the heap is corrupt and the process dies later with
SIGSEGV or "double free or corruption", in whatever thread frees memory next. Reproducer (no yoloforge)::

    import torch
    conv = torch.nn.Conv2d(3, 16, 1, 2, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 64, 64).to(memory_format=torch.channels_last)
    for _ in range(3):
        conv(x).sum().backward()

Run with ``LD_PRELOAD=libc_malloc_debug.so.0 MALLOC_CHECK_=3`` it aborts at once (rc 134/139). Measured bounds
(mb 8, 64x64 input, 3 iterations): input channels 3/4/8/12/15 crash, 16/17/24/32 do not; output channels 4/8/16
crash, 24+ do not; stride 3/4, a 2x2 kernel, and the forward or input gradient alone do not. The RepVGG stem of
every YOLOv6 model has exactly such a conv (3 -> C, 1x1 branch, stride 2), so a channels_last YOLOv6 training
step on CPU corrupts the heap. ``DetectionModel`` hands those convolutions NCHW input and weight
(``yoloforge.models.base.onednn_risky``); the rest of the model keeps its layout.
"""
from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from yoloforge.models.base import onednn_risky
from yoloforge.families.registry import build_model

BARE = """
import torch
conv = torch.nn.Conv2d(3, 16, 1, 2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(8, 3, 64, 64).to(memory_format=torch.channels_last)
for _ in range(3):
    conv(x).sum().backward()
print("survived")
"""

GUARDED = """
import sys, torch
from yoloforge.families.registry import build_model
torch.manual_seed(0)
x = torch.rand(2, 3, 64, 64)
def leaves(o):
    return [o] if isinstance(o, torch.Tensor) else [t for v in o for t in leaves(v)]
grads = []
for cl in (False, True):
    torch.manual_seed(0)
    m = build_model("yolov6n", nc=2).train()
    xi = x.clone()
    if cl:
        m = m.to(memory_format=torch.channels_last)
        xi = xi.to(memory_format=torch.channels_last)
    for _ in range(3):
        m.zero_grad()
        out = m(xi)
        sum(t.float().pow(2).mean() for t in leaves(out)).backward()
    grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
torch.save(grads, sys.argv[1])
print("survived")
"""


def _malloc_debug_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    lib = "libc_malloc_debug.so.0"
    if ctypes.util.find_library("c_malloc_debug") or any(
            Path(d, lib).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64")):
        env.update(LD_PRELOAD=lib, MALLOC_CHECK_="3")  # glibc's checking allocator: aborts at the first bad free
    return env


def test_risky_convs_are_the_yolov6_stem_branch():
    m = build_model("yolov6n", nc=2)
    risky = [n for n, c in m.named_modules() if onednn_risky(c)]
    assert risky, "yolov6n has a 1x1 stride-2 conv on the 3-channel input (RepVGG stem)"
    assert all(c.in_channels == 3 for n, c in m.named_modules() if onednn_risky(c))
    assert not any(onednn_risky(c) for c in build_model("yolov7-tiny", nc=2).modules())


def test_channels_last_training_step_survives_and_matches_nchw(tmp_path):
    env = _malloc_debug_env()
    # cwd: where a core dump of the crashing reproducer would land (never the checkout)
    bare = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    out = tmp_path / "grads.pt"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(GUARDED), str(out)], capture_output=True, text=True,
                       env=env, timeout=600)
    print(f"bare oneDNN reproducer: rc {bare.returncode}" + (" (heap corrupted)" if bare.returncode else ""))
    assert r.returncode == 0, f"guarded channels_last step died (rc {r.returncode}): {r.stderr[-2000:]}"
    g_nchw, g_cl = torch.load(out)
    assert torch.isfinite(g_cl).all()
    rel = float((g_cl - g_nchw).norm() / g_nchw.norm())
    print(f"channels_last vs NCHW gradient: relative L2 difference {rel:.2e}")
    # fp32 rounding, not a wrong kernel: on this untrained model a single NCHW fp32 step is already 1.4e-4 from
    # float64, the channels_last one 2.6e-4 (measured); a wrong weight gradient is off by O(1)
    assert rel < 3e-3


def test_guard_leaves_inference_alone():
    m = build_model("yolov6n", nc=2).eval()
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    assert not any(getattr(c, "_yf_layout_guard", False) for c in m.modules())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_guard_hooks_only_risky_convs(fmt):
    m = build_model("yolov6n", nc=2).train().to(memory_format=fmt)
    m(torch.rand(1, 3, 64, 64).contiguous(memory_format=fmt))
    hooked = [c for c in m.modules() if getattr(c, "_yf_layout_guard", False)]
    assert hooked and all(onednn_risky(c) for c in hooked)
    assert all(c.weight.stride() == c.weight.clone(memory_format=torch.contiguous_format).stride() for c in hooked)
