"""The base class every yoloforge detector derives from (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import torch
from torch import nn


def _standard_strides(t: torch.Tensor) -> bool:
    """True when ``t`` has the plain row-major (NCHW) strides. ``is_contiguous()`` is not enough: a
    (16, 3, 1, 1) weight moved to channels_last still says contiguous, yet oneDNN takes the NHWC kernel."""
    expect, acc = [], 1
    for n in reversed(t.shape):
        expect.append(acc)
        acc *= n
    return tuple(reversed(expect)) == t.stride()


def onednn_risky(m: nn.Module) -> bool:
    """The convolutions whose weight gradient oneDNN 3.12 (torch 2.13 CPU) computes out of bounds when the
    input or the weight is channels_last: 1x1, strided, fewer than 16 input channels (``jit_1x1``
    backward_weights corrupts the heap, and the process dies later, anywhere). Reproducer and the measured
    bounds: tests/test_onednn_guard.py."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
            and m.in_channels < 16)


def _plain_layout_pre_hook(conv: nn.Conv2d, args):
    x = args[0]
    if not (torch.is_grad_enabled() and x.device.type == "cpu" and conv.weight.requires_grad):
        return None
    if not _standard_strides(conv.weight):
        conv.weight.data = conv.weight.data.clone(memory_format=torch.contiguous_format)
    if not _standard_strides(x):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def apply_onednn_guard(model: nn.Module) -> None:
    """Hook the risky convolutions (see :func:`onednn_risky`) so that, on CPU with gradients on, they get NCHW
    input and weight whatever layout the rest of the model uses; their weights are made NCHW now. Done by
    :func:`_guard_onednn` at each training forward; called directly before ``torch.compile`` traces the model,
    so that the traced hooks only copy the input."""
    for m in model.modules():
        if not onednn_risky(m):
            continue
        if not getattr(m, "_yf_layout_guard", False):
            m.register_forward_pre_hook(_plain_layout_pre_hook)
            m._yf_layout_guard = True
        if not _standard_strides(m.weight):
            m.weight.data = m.weight.data.clone(memory_format=torch.contiguous_format)


def _guard_onednn(model: nn.Module, args) -> None:
    """Forward pre-hook of every detector: :func:`apply_onednn_guard` while training with gradients on (modules
    replaced since, by ``fuse()`` or a RepOpt conversion, are hooked then). Costs one walk over the modules per
    training forward."""
    if model.training and torch.is_grad_enabled():
        apply_onednn_guard(model)
    return None


class DetectionModel(nn.Module):
    """A detector keeping the library-wide contract.

    * eval mode: ``forward(x)`` returns ``(B, N, 4 + nc)`` -- xyxy boxes in input pixels, then class
      scores in [0, 1];
    * train mode: ``forward(x)`` returns what ``build_loss(hyp)`` consumes;
    * ``fuse()`` turns the model into its deploy form in place and returns it.
    """

    family: str = ""
    default_hyp: str = ""

    def __init__(self, name: str, nc: int, strides, **build_kwargs):
        super().__init__()
        self.name = name
        self.nc = int(nc)
        self.build_kwargs = dict(nc=int(nc), **build_kwargs)
        self.register_buffer("stride", torch.tensor([float(s) for s in strides]), persistent=False)
        self.fused = False
        self.register_forward_pre_hook(_guard_onednn)

    def build_loss(self, hyp: dict):  # pragma: no cover - every family overrides it
        raise NotImplementedError(f"{type(self).__name__} has no loss")

    def fuse(self) -> "DetectionModel":
        """Fold BN into convs and re-parameterize every block that knows how (``fuse()`` on children)."""
        if self.fused:
            return self
        for m in list(self.modules()):
            if m is not self and hasattr(m, "fuse") and callable(m.fuse) and not isinstance(m, DetectionModel):
                m.fuse()
        self.fused = True
        return self.eval()

    def deployed(self) -> "DetectionModel":
        """The deploy form: a fused copy in eval mode (this model stays trainable), or itself if already fused."""
        import copy

        return self if self.fused else copy.deepcopy(self).fuse()
