"""YOLOv4 "bag of freebies / specials" layers: DropBlock, point-wise SAM and CmBN.

Bochkovskiy, Wang, Liao, "YOLOv4: Optimal Speed and Accuracy of Object Detection", arXiv:2004.10934
(Sec. 3.3-3.4); implementation details checked against AlexeyAB/darknet (``src/sam_layer.c``,
``src/batchnorm_layer.c`` + ``src/blas_kernels.cu`` ``fast_v_cbn_kernel``, ``[dropout] dropblock=1``).

* :class:`DropBlock2d` -- Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional
  networks", NeurIPS 2018 (arXiv:1810.12890). Drops contiguous ``block_size x block_size`` squares
  of a feature map and rescales what is kept. Identity in eval mode.
* :class:`SpatialAttention` -- the spatial attention module of CBAM (Woo, Park, Lee, Kweon, ECCV
  2018) as YOLOv4 modified it (paper Fig. 5, "modified SAM"): no channel pooling, the attention is
  *point-wise*: ``x * sigmoid(BN(conv1x1(x)))`` with a C -> C convolution (darknet
  ``[convolutional] size=1 filters=C batch_normalize=1 activation=logistic`` then ``[sam] from=-2``,
  ``cfg/yolov4-sam-mish-csp-reorg-bfm.cfg``).
* :class:`CmBN2d` -- Cross mini-Batch Normalization (YOLOv4 paper Sec. 3.4, Fig. 4): the statistics
  of mini-batch ``t`` of one gradient-accumulation window are pooled with those of mini-batches
  ``1 .. t-1`` of the same window (see the class docstring). It is CBN (Yao et al., "Cross-Iteration
  Batch Normalization", CVPR 2021) restricted to one window: the weights do not change inside the
  window, so CBN's Taylor compensation of old statistics is not needed.

Helpers: :func:`set_dropblock` (schedule the drop probability, e.g. the linear ramp of Ghiasi et al.
Sec. 3), :func:`strip_dropblock` (deploy form), :func:`convert_cmbn` / :func:`reset_cmbn`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from yoloforge.models.common import ConvBNAct

__all__ = ["DropBlock2d", "SpatialAttention", "CmBN2d", "dropblock_gamma", "set_dropblock", "strip_dropblock",
           "convert_cmbn", "reset_cmbn"]


@lru_cache(maxsize=256)
def dropblock_gamma(h: int, w: int, block: int, drop_prob: float) -> float:
    """Seed probability giving an expected dropped fraction of exactly ``drop_prob``.

    Seeds are the top-left corners of blocks that fit inside the map (``(h - b + 1) x (w - b + 1)``
    positions, as in the paper). Pixel ``p`` is covered by ``n(p)`` seed positions and is dropped with
    probability ``1 - (1 - gamma)^n(p)``; ``gamma`` solves ``mean_p [1 - (1 - gamma)^n(p)] = drop_prob``
    by bisection. The paper's closed form ``drop_prob / b^2 * hw / ((h - b + 1)(w - b + 1))`` ignores
    overlapping blocks and drops less than asked (about 0.094 instead of 0.1 for b = 7 on 10x10 to 80x80 maps).
    """
    if drop_prob <= 0:
        return 0.0
    if drop_prob >= 1:
        return 1.0

    def cover(n: int) -> np.ndarray:  # seed positions covering each row (or column)
        r = np.arange(n)
        return np.minimum(r, n - block) - np.maximum(0, r - block + 1) + 1

    counts = (cover(h)[:, None] * cover(w)[None]).ravel().astype(np.float64)
    lo, hi = 0.0, 1.0
    for _ in range(50):
        g = (lo + hi) / 2
        if np.mean(1.0 - (1.0 - g) ** counts) < drop_prob:
            lo = g
        else:
            hi = g
    return (lo + hi) / 2


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zero ``block_size x block_size`` squares, rescale the rest.

    In training, seeds are drawn on the positions where a whole block fits; every pixel of a block
    whose seed fired is zeroed; the output is ``x * mask / mean(mask)`` (the paper's
    ``A * count(M) / count_ones(M)``, over the whole tensor). The seed rate is
    :func:`dropblock_gamma`, so the expected dropped fraction equals ``drop_prob``. ``block_size`` is
    clamped to the map (darknet does the same); darknet's default size is 7 (``dropblock_size_abs``).
    ``share_channels=False`` draws an independent mask per channel; ``True`` one mask per image.
    Identity in eval mode or with ``drop_prob == 0``; it has no parameters.
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 7, share_channels: bool = False):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropBlock2d: drop_prob must be in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"DropBlock2d: block_size must be >= 1, got {block_size}")
        self.drop_prob, self.block_size, self.share_channels = float(drop_prob), int(block_size), bool(share_channels)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, share_channels={self.share_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob <= 0:
            return x
        b_, c, h, w = x.shape
        bs = min(self.block_size, h, w)
        gamma = dropblock_gamma(h, w, bs, self.drop_prob)
        seeds = torch.rand(b_, 1 if self.share_channels else c, h - bs + 1, w - bs + 1, device=x.device) < gamma
        dropped = F.max_pool2d(F.pad(seeds.float(), (bs - 1,) * 4), bs, 1)  # pixel covered by any block
        keep = 1.0 - dropped
        scale = keep.numel() / keep.sum().clamp(min=1.0)
        return x * (keep * scale).to(x.dtype)

    def fuse(self) -> "DropBlock2d":
        """Nothing to fold; the layer is already the identity outside training."""
        return self


class SpatialAttention(nn.Module):
    """Point-wise SAM of YOLOv4: ``x * sigmoid(BN(conv1x1(x)))``, attention of shape (B, C, H, W).

    ``fuse()`` folds the BN into the 1x1 convolution (also done by ``DetectionModel.fuse()``, which
    walks every child)."""

    def __init__(self, c: int):
        super().__init__()
        self.cv = ConvBNAct(c, c, 1, 1, act=None)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.cv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)

    def fuse(self) -> "SpatialAttention":
        self.cv.fuse()
        return self


class CmBN2d(nn.BatchNorm2d):
    """Cross mini-Batch Normalization (YOLOv4, Sec. 3.4 and Fig. 4), darknet ``[convolutional] cbn=1``.

    With gradient accumulation over ``window = k`` mini-batches per optimizer step, mini-batch ``t``
    (1-based inside the window) is normalized with the running average over mini-batches ``1 .. t``
    of this window (darknet ``fast_v_cbn_kernel``, ``alpha_cbn = 1 / t``)::

        m_t  = mean_t / t    + (1 - 1/t) m_{t-1}        (per channel; mean_t = E[x] of mini-batch t)
        q_t  = E[x^2]_t / t  + (1 - 1/t) q_{t-1}
        y    = (x - m_t) / sqrt(max(q_t - m_t^2, 0) + eps) * weight + bias

    For equal mini-batch sizes ``m_t, q_t`` are exactly the mean and second moment of the
    concatenation of mini-batches ``1 .. t``. The statistics of earlier mini-batches enter as
    constants (their graphs were already back-propagated); gradients flow through mini-batch ``t``'s
    own share. ``weight``/``bias`` are updated once per window by the optimizer as usual. The running
    statistics (used in eval) take the pooled ``m_t`` and the unbiased pooled variance with
    ``momentum`` after every mini-batch (darknet: rolling average, alpha 0.01, every mini-batch).
    Differences from darknet: ``E[x^2]`` divides by ``n`` (darknet by ``n - 1``).

    The window restarts after ``window`` training forwards, or earlier by :meth:`reset_window`
    (:func:`reset_cmbn`), which a trainer calls after every optimizer step so windows stay aligned
    with its accumulation (a shorter last window of an epoch, SAT passes that run BN in eval mode).
    ``window = 1`` is plain batch normalization. The window state is not part of ``state_dict``:
    checkpoints are interchangeable with ``nn.BatchNorm2d``. Under DDP with ``sync_bn``,
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` replaces these layers by plain SyncBatchNorm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, window: int = 1,
                 **kw):
        super().__init__(num_features, eps=eps, momentum=momentum, **kw)
        self.window = int(window)
        self.reset_window()

    def reset_window(self) -> None:
        self._t, self._m, self._q = 0, None, None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if self._t >= max(self.window, 1):
            self.reset_window()
        t = self._t + 1
        xf = x.float()
        mean, sq = xf.mean((0, 2, 3)), (xf * xf).mean((0, 2, 3))
        if t > 1:
            mean = mean / t + self._m * (1 - 1 / t)
            sq = sq / t + self._q * (1 - 1 / t)
        var = (sq - mean * mean).clamp(min=0)
        shape = (1, -1, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = t * x.numel() / x.shape[1]
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        self._t, self._m, self._q = t, mean.detach(), sq.detach()
        return y.to(x.dtype)


def set_dropblock(model: nn.Module, drop_prob: float) -> int:
    """Set ``drop_prob`` of every :class:`DropBlock2d` in ``model`` (e.g. a linear ramp from 0, as
    Ghiasi et al. schedule it); returns how many layers were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, DropBlock2d):
            m.drop_prob = float(drop_prob)
            n += 1
    return n


def strip_dropblock(model: nn.Module) -> int:
    """Replace every :class:`DropBlock2d` child by ``nn.Identity`` (deploy form); returns the count."""
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, DropBlock2d):
                setattr(parent, name, nn.Identity())
                n += 1
    return n


def convert_cmbn(model: nn.Module, window: int) -> int:
    """Turn every plain ``nn.BatchNorm2d`` of ``model`` into :class:`CmBN2d` with ``window`` mini-batches,
    in place (the class is swapped, so parameters, buffers and the optimizer's references are kept).
    Returns how many layers were converted; already converted layers get the new window."""
    n = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = CmBN2d
            m.reset_window()
        if isinstance(m, CmBN2d):
            m.window = int(window)
            n += 1
    return n


def reset_cmbn(model: nn.Module) -> None:
    """Start a new accumulation window in every :class:`CmBN2d` (call after each optimizer step)."""
    for m in model.modules():
        if isinstance(m, CmBN2d):
            m.reset_window()
