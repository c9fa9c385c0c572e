"""The base class every yoloforge detector derives from (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import torch
from torch import nn


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
