"""Training-time freebies of YOLOv4 that act in the training loop, and the table of every BoF switch.

Bochkovskiy, Wang, Liao, "YOLOv4: Optimal Speed and Accuracy of Object Detection", arXiv:2004.10934,
Sec. 3.3-3.4 ("BoF for detector": CIoU loss, CmBN, DropBlock, Mosaic, Self-Adversarial Training,
eliminate grid sensitivity, multiple anchors per ground truth, cosine annealing, random training
shapes; "BoS for detector": Mish, SPP, SAM, PAN, DIoU-NMS).

* :func:`sat_perturb` -- Self-Adversarial Training, stage 1: the network alters the *image* instead
  of its weights, against the loss (a signed-gradient step, Goodfellow et al. 2015 "FGSM", bounded
  by ``eps`` in L-infinity). Stage 2, training on the altered image, is an ordinary step of the
  trainer. Darknet (``train_network_datum_gpu`` with ``[net] adversarial_lr``) runs stage 1 on half
  of the batches after burn-in, with BN on its rolling statistics (``forward_batchnorm_layer_gpu``
  under ``state.net.adversarial``) and a step growing linearly with the iteration
  (``adversarial_lr * iteration / max_batches``), here :func:`sat_eps`. Darknet's stage 1 pushes the
  image towards an all-background truth (``truth_cpu`` zeroed); here it ascends the loss of the true
  targets (the paper's "deceiving itself that there is no desired object" has the same effect on
  the objects: both lower their evidence).
* :func:`multiscale_resize` -- random training shapes: one input size per batch, a multiple of the
  model stride in ``[lo, hi] x base`` (darknet ``[yolo] random=1``; YOLOv5-style ``0.5 .. 1.5``).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Switch", "BOF_SWITCHES", "sat_perturb", "sat_eps", "multiscale_size", "multiscale_resize"]


class Switch(NamedTuple):
    hyp_key: str | None  # key in the hyp dict (None: a model build kwarg or a call argument)
    default: Any  # value in config.HYP_PRESETS["yolov4"] (or the default when the key is absent)
    what: str
    where: str  # dotted path of the code that acts on it


#: Every YOLOv4 bag-of-freebies / bag-of-specials switch of yoloforge (a test checks the defaults
#: against ``config.HYP_PRESETS["yolov4"]`` and that every ``where`` imports).
BOF_SWITCHES: dict[str, Switch] = {
    "mosaic": Switch("mosaic", 1.0, "probability of a 4-image mosaic sample (else letterbox + affine)",
                     "yoloforge.data.augment.mosaic4"),
    "mixup": Switch("mixup", 0.0, "probability of blending the sample with a second one, r ~ Beta(32, 32)",
                    "yoloforge.data.augment.mixup"),
    "cutmix": Switch("cutmix", 0.0, "probability of pasting a rectangle (10-50% of the area) of a second sample; "
                     "boxes are cut/filtered to the visible parts", "yoloforge.data.augment.cutmix"),
    "label_smoothing": Switch("label_smoothing", 0.0, "class BCE targets 1 - eps/2 and eps/2 (paper BoF value 0.1)",
                              "yoloforge.families.yolov4.loss.smooth_bce_targets"),
    "iou_loss": Switch("iou_loss", "ciou", "box regression loss 1 - {ciou, diou, giou, iou}",
                       "yoloforge.losses.iou.bbox_iou"),
    "grid_sensitivity": Switch("neighbor_cells", True, "with the 2 sigmoid - 0.5 decode, also assign the two "
                               "neighbouring cells nearest to the centre",
                               "yoloforge.families.yolov4.loss.build_targets"),
    "multi_anchor": Switch("iou_t", 0.2, "every anchor with shape IoU > iou_t is positive (anchor_match='iou')",
                           "yoloforge.families.yolov4.loss.build_targets"),
    "cosine_lr": Switch("cos_lr", True, "cosine annealing of the lr from lr0 to lr0 * lrf",
                        "yoloforge.engine.optim.lr_lambda"),
    "random_shapes": Switch("multi_scale", False, "one random input size per batch, multiple of the max stride, "
                            "0.5-1.5 x imgsz", "yoloforge.families.yolov4.freebies.multiscale_resize"),
    "sat": Switch("sat_eps", 0.0, "self-adversarial training: eps (of [0, 1] pixels) of the signed-gradient image "
                  "step, ramped by sat_eps(); 0 disables", "yoloforge.families.yolov4.freebies.sat_perturb"),
    "cmbn": Switch("cmbn", False, "cross mini-batch BN pooled over the gradient-accumulation window",
                   "yoloforge.families.yolov4.bof.convert_cmbn"),
    "dropblock": Switch(None, 0.0, "YOLOv4(dropblock=p): DropBlock 7x7 after every CSP block of the neck",
                        "yoloforge.families.yolov4.bof.DropBlock2d"),
    "sam": Switch(None, False, "YOLOv4(sam=True): point-wise SAM on every level before the head",
                  "yoloforge.families.yolov4.bof.SpatialAttention"),
    "diou_nms": Switch(None, "iou", "non_max_suppression(kind='diou'): suppress by IoU - d^2/c^2",
                       "yoloforge.utils.nms.non_max_suppression"),
}


def _set_stochastic_eval(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put BN and dropout-like layers in eval mode; return their previous modes."""
    from yoloforge.families.yolov4.bof import DropBlock2d

    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, DropBlock2d)
    saved = [(m, m.training) for m in model.modules() if isinstance(m, kinds)]
    for m, _ in saved:
        m.eval()
    return saved


def sat_perturb(model: nn.Module, loss_fn, imgs: torch.Tensor, targets: torch.Tensor, epoch: int = 0,
                eps: float = 2.0 / 255, bn_eval: bool = True) -> torch.Tensor:
    """Self-adversarial image: ``clamp(imgs + eps * sign(d loss / d imgs), 0, 1)``, detached.

    ``model`` in train mode (its train-mode output is what ``loss_fn(outputs, targets, epoch)`` takes);
    pass the bare module, not a DDP wrapper. ``imgs`` float in [0, 1]. The weights are untouched:
    parameters are frozen for this pass (no ``.grad`` is written, none of the weight gradients is
    computed), and with ``bn_eval`` BN, dropout and DropBlock run in eval mode, so BN statistics do
    not move and the pass is deterministic (darknet uses the rolling BN statistics too).
    Runs under whatever autocast context the caller has.
    """
    if eps <= 0:
        return imgs
    params = [p for p in model.parameters() if p.requires_grad]
    saved = _set_stochastic_eval(model) if bn_eval else []
    x = imgs.detach().clone().requires_grad_(True)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            loss, _ = loss_fn(model(x), targets, epoch)
            (grad,) = torch.autograd.grad(loss, x)
    finally:
        for p in params:
            p.requires_grad_(True)
        for m, mode in saved:
            m.train(mode)
    return (imgs.detach() + eps * grad.sign()).clamp_(0.0, 1.0).to(imgs.dtype)


def sat_eps(base: float, epoch: int, epochs: int, warmup_epochs: float = 0.0) -> float:
    """Darknet's schedule of the adversarial step: 0 during warm-up, then ``base * (epoch + 1) / epochs``."""
    if base <= 0 or epoch < warmup_epochs:
        return 0.0
    return float(base) * min(1.0, (epoch + 1) / max(epochs, 1))


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def multiscale_size(base: int, stride: int, rng=None, lo: float = 0.5, hi: float = 1.5) -> int:
    """A random multiple of ``stride`` in ``[lo * base, hi * base]`` (uniform over the multiples;
    ``stride`` itself if the range holds none)."""
    kmin = max(1, math.ceil(lo * base / stride - 1e-9))
    kmax = max(kmin, math.floor(hi * base / stride + 1e-9))
    return int(_rng(rng).integers(kmin, kmax + 1)) * int(stride)


def multiscale_resize(imgs: torch.Tensor, targets: torch.Tensor, base: int, stride: int, rng=None,
                      lo: float = 0.5, hi: float = 1.5, mode: str = "bilinear"):
    """Random training shape for one batch: resize ``imgs`` (B, C, H, W) so the long side is a random
    :func:`multiscale_size` (the other side rounded up to a multiple of ``stride``) and scale the boxes
    of ``targets`` (M, 6) ``[batch_idx, cls, x1, y1, x2, y2]`` pixels with the image.
    ``stride`` should be the model's largest stride. Returns ``(imgs, targets)`` (new tensors)."""
    h, w = imgs.shape[-2:]
    size = multiscale_size(base, stride, rng, lo, hi)
    sf = size / max(h, w)
    nh, nw = (max(stride, math.ceil(v * sf / stride - 1e-9) * stride) for v in (h, w))
    if (nh, nw) == (h, w):
        return imgs, targets.clone()
    x = imgs if imgs.is_floating_point() else imgs.float()
    kw = {} if mode == "nearest" else dict(align_corners=False)
    out = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
    if not imgs.is_floating_point():
        out = out.round_().clamp_(0, 255).to(imgs.dtype)
    t = targets.clone()
    if len(t):
        t[:, [2, 4]] *= nw / w
        t[:, [3, 5]] *= nh / h
    return out, t
