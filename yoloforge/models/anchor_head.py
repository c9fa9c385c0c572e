"""Anchor-based detection head shared by YOLOv7 and Scaled-YOLOv4.

Per level a 1x1 convolution predicts ``na * (5 + nc)`` channels: (tx, ty, tw, th, objectness,
classes). Decoding: ``xy = (offset + grid) * stride`` with the offset and size of the anchor coder
(:func:`yoloforge.models.box_coder.anchor_offsets`, which the assigners and losses use too): ``"scaled"``
(Scaled-YOLOv4 large/CSP and YOLOv7) or ``"darknet"`` (YOLOv4-tiny .cfg, ``scale_x_y``).

Scores in eval mode are ``sigmoid(obj) * sigmoid(cls)``, so every family keeps the contract
``(B, N, 4 + nc)`` with xyxy input pixels. YOLOR implicit knowledge (YOLOv7's IDetect): an
``ImplicitA`` vector is added to the input of the 1x1 conv and an ``ImplicitM`` vector multiplies its
output; ``fuse()`` folds both into the conv's weight and bias.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .box_coder import ANCHOR_DECODES, anchor_offsets


class ImplicitA(nn.Module):
    """Learned additive channel vector (YOLOR), initialised near 0."""

    def __init__(self, c: int, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, c, 1, 1))
        nn.init.normal_(self.implicit, std=std)

    def forward(self, x):
        return x + self.implicit


class ImplicitM(nn.Module):
    """Learned multiplicative channel vector (YOLOR), initialised near 1."""

    def __init__(self, c: int, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, c, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=std)

    def forward(self, x):
        return x * self.implicit


class AnchorHead(nn.Module):
    def __init__(self, nc: int, anchors, in_channels, strides, decode: str = "scaled", scale_xy: float = 1.0,
                 implicit: bool = False):
        super().__init__()
        if decode not in ANCHOR_DECODES:
            raise ValueError(f"unknown decode {decode!r}")
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.decode_kind, self.scale_xy = decode, float(scale_xy)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self._stride_list = [float(s) for s in strides]  # plain floats: usable on the meta device too
        self.register_buffer("strides", torch.tensor(self._stride_list), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in in_channels)
        self.ia = nn.ModuleList(ImplicitA(c) for c in in_channels) if implicit else None
        self.im = nn.ModuleList(ImplicitM(self.na * self.no) for _ in in_channels) if implicit else None
        self._grids: dict = {}
        self.initialize_biases()

    def initialize_biases(self, class_freq=None) -> None:
        """Objectness prior of ~8 objects per 640x640 image, class prior ~0.6/nc (YOLOv5 recipe)."""
        for conv, s in zip(self.m, self._stride_list):
            b = conv.bias.view(self.na, -1).detach()
            b[:, 4] = math.log(8 / (640 / s) ** 2)
            b[:, 5:] = math.log(0.6 / (self.nc - 0.99)) if class_freq is None else torch.log(class_freq / class_freq.sum())
            conv.bias = nn.Parameter(b.view(-1))

    def fuse(self) -> "AnchorHead":
        """Fold ImplicitA/ImplicitM into the 1x1 convs (exact: conv is linear)."""
        if self.ia is None:
            return self
        for conv, ia, im in zip(self.m, self.ia, self.im):
            w = conv.weight.detach()
            # conv(x + a) = conv(x) + W a  -> into the bias
            extra = (w.flatten(1) @ ia.implicit.detach().flatten()).view(-1)
            scale = im.implicit.detach().flatten()
            conv.bias = nn.Parameter((conv.bias.detach() + extra) * scale)
            conv.weight = nn.Parameter(w * scale.view(-1, 1, 1, 1))
        self.ia = self.im = None
        return self

    def raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level ``(B, na, H, W, 5 + nc)`` logits (what the loss consumes)."""
        out = []
        for i, x in enumerate(feats):
            if self.ia is not None:
                x = self.ia[i](x)
            y = self.m[i](x)
            if self.im is not None:
                y = self.im[i](y)
            b, _, h, w = y.shape
            out.append(y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return out

    def _grid(self, h: int, w: int, i: int, device, dtype):
        key = (h, w, i, device, dtype)
        g = None if torch.jit.is_tracing() else self._grids.get(key)  # export: sizes stay symbolic
        if g is None:
            ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                    torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
            g = (torch.stack((xs, ys), -1).view(1, 1, h, w, 2).to(dtype),
                 self.anchors[i].to(device, dtype).view(1, self.na, 1, 1, 2))
            if not torch.jit.is_tracing():
                self._grids[key] = g
        return g

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw level outputs -> ``(B, N, 4 + nc)``: xyxy pixels, then obj * cls scores."""
        out = []
        for i, p in enumerate(raw):
            b, _, h, w, _ = p.shape
            grid, anchor = self._grid(h, w, i, p.device, p.dtype)
            s = self._stride_list[i]
            xy, wh = anchor_offsets(p, anchor, self.decode_kind, self.scale_xy)
            xy = (xy + grid) * s
            scores = p[..., 5:].sigmoid() * p[..., 4:5].sigmoid()
            boxes = torch.cat((xy - wh / 2, xy + wh / 2), -1)
            out.append(torch.cat((boxes, scores), -1).view(b, -1, 4 + self.nc))
        return torch.cat(out, 1)

    def forward(self, feats: list[torch.Tensor]):
        raw = self.raw(feats)
        return raw if self.training else self.decode(raw)
