"""RepOptimizer: train a plain VGG-style YOLOv6 as if it had RepVGG's branches (YOLOv6 paper sec. 2.5.1).

Ding et al., "Re-parameterizing Your Optimizers rather than Architectures" (ICLR 2023). Two stages, as
meituan/YOLOv6@0.2.0 (configs/repopt/yolov6s_hs.py, yolov6s_opt.py; yolov6/utils/RepOptimizer.py):

1. **hyper-search**: train the model with ``training_mode="hyper_search"``: every 3x3 block is
   :class:`~yoloforge.families.yolov6.blocks.HyperSearchBlock` (scaled 3x3 + scaled 1x1 [+ scaled identity], one BN).
   It trains like any model; its learned per-channel scales are the "hyper-parameters" of stage 2.
2. **repopt**: train the model with ``training_mode="repopt"`` (every block a plain conv-BN-ReLU,
   :class:`~yoloforge.families.yolov6.blocks.RealVGGBlock`) with :class:`RepOptimizer`: SGD whose gradient of each 3x3
   kernel is multiplied by a constant mask built from the scales -- ``s3^2`` everywhere, ``+ s1^2`` at the
   kernel centre, ``+ 1`` at the centre of the diagonal ``[i, i]`` where the block has an identity branch.
   The weight decay is added after the mask (unmasked), then momentum, as the official ``step``. From scratch
   the kernels are first re-initialized from the scales: ``W <- s3 W + s1 pad(W1x1) + sid pad(I)`` with a freshly
   initialized 1x1 kernel (official ``reinitialize``, identity scales used).

Why the mask: for a linear block ``y = s3 * (W3 * x) + s1 * (W1 * x) + d * x`` (``W3``, ``W1`` and the diagonal
``d`` trained, the scales constant), one SGD step on the branches moves the merged kernel by
``-lr * (s3^2 G + s1^2 G_centre + G_diag_centre)`` where ``G`` is the gradient w.r.t. the merged kernel: exactly
the masked step on the single kernel (tests/test_repopt.py checks it). Everything else (BN, 1x1 convs, head) is
plain SGD. Parameter groups, lr and the weight-decay scaling are those of the normal optimizer: the official
RepVGGOptimizer uses the same three groups (BN weights; weights with decay ``wd * batch * accumulate / 64``;
biases) at ``lr0``, so the trainer's warm-up and schedule apply unchanged.

Scales are matched by module name: the hyper-search and repopt builds of one model name their blocks the same.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from yoloforge.families.yolov6.blocks import HyperSearchBlock, RealVGGBlock, add_centre_diagonal_

Scales = dict[str, tuple[torch.Tensor, ...]]


def extract_scales(model: nn.Module) -> Scales:
    """``{block name: (identity, 1x1, 3x3) or (1x1, 3x3)}`` of every hyper-search block of ``model``
    (official ``extract_scales``)."""
    scales = {name: tuple(t.float().cpu().clone() for t in m.scales())
              for name, m in model.named_modules() if isinstance(m, HyperSearchBlock) and m.reparam is None}
    if not scales:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} has no hyper-search blocks: its scales "
                         f"come from a model trained with --training-mode hyper_search")
    return scales


def load_scales(path: str | Path) -> Scales:
    """Scales from a hyper-search checkpoint (``.safetensors`` or a resume state) written by yoloforge."""
    from yoloforge.weights import load_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--scales {path}: file not found (the weights of a --training-mode hyper_search run)")
    model = load_model(str(path))[0]
    try:
        return extract_scales(model)
    except ValueError as e:
        raise ValueError(f"--scales {path}: {e}") from None


def repopt_blocks(model: nn.Module) -> dict[str, RealVGGBlock]:
    return {name: m for name, m in model.named_modules() if isinstance(m, RealVGGBlock) and not m.is_fused}


def check_scales(model: nn.Module, scales: Scales, source: str = "scales") -> dict[str, RealVGGBlock]:
    """The repopt blocks of ``model``, after checking that ``scales`` names each once with fitting shapes."""
    blocks = repopt_blocks(model)
    if not blocks:
        raise ValueError(f"{getattr(model, 'name', 'the model')} has no repopt blocks: build it with "
                         f"training_mode='repopt' to train it with the RepOptimizer")
    missing, extra = sorted(set(blocks) - set(scales)), sorted(set(scales) - set(blocks))
    if missing or extra:
        raise ValueError(f"{source}: the hyper-search scales do not fit this model ({len(scales)} blocks with "
                         f"scales, {len(blocks)} repopt blocks; e.g. missing {missing[:2]}, unknown {extra[:2]}): "
                         f"were they searched on the same model name?")
    for name, b in blocks.items():
        s = scales[name]
        want = 3 if (b.c1 == b.c2 and b.s == 1) else 2
        if len(s) != want or any(t.shape != (b.c2,) for t in s):
            raise ValueError(f"{source}: the hyper-search scales do not fit this model: block {name} expects {want} "
                             f"scale vectors of {b.c2}, got {[tuple(t.shape) for t in s]} (another model's scales?)")
    return blocks


def gradient_mask(block: RealVGGBlock, scales: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The constant mask of one block's 3x3 kernel (official ``generate_gradient_masks``)."""
    w = block.conv.weight
    s = [t.to(w.device, w.dtype) for t in scales]
    s1, s3 = s[-2], s[-1]
    mask = (s3 ** 2).view(-1, 1, 1, 1).expand_as(w).clone()
    mask[:, :, 1, 1] += (s1 ** 2).view(-1, 1)
    return add_centre_diagonal_(mask, 1.0) if len(s) == 3 else mask


@torch.no_grad()
def reinitialize(model: nn.Module, scales: Scales, generator: torch.Generator | None = None) -> None:
    """Official ``reinitialize`` for training from scratch: ``W <- s3 W + s1 pad(W1) + sid pad(I)`` where ``W1`` is
    a freshly initialized 1x1 kernel (PyTorch's default conv init, as ``nn.Conv2d`` in the official code)."""
    for name, b in check_scales(model, scales).items():
        w = b.conv.weight
        s = [t.to(w.device, w.dtype) for t in scales[name]]
        one = torch.empty(w.shape[0], w.shape[1], 1, 1, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(one, a=5 ** 0.5, generator=generator)  # nn.Conv2d.reset_parameters
        new = w * s[-1].view(-1, 1, 1, 1) + F.pad(one * s[-2].view(-1, 1, 1, 1), [1, 1, 1, 1])
        w.copy_(add_centre_diagonal_(new, s[0]) if len(s) == 3 else new)


class RepOptimizer(torch.optim.SGD):
    """SGD that multiplies the gradient of every repopt 3x3 kernel by its constant mask before the weight
    decay and momentum of a normal SGD step (the official ``RepVGGOptimizer.step`` equals that: grad * mask,
    then ``+ wd * p``, then the momentum buffer and Nesterov).

    Build it like ``torch.optim.SGD`` from the trainer's parameter groups, then :meth:`attach` the model and
    its scales. The scales travel in ``state_dict()`` so that a resumed run rebuilds the same masks without
    the hyper-search file."""

    def attach(self, model: nn.Module, scales: Scales, source: str = "scales") -> "RepOptimizer":
        blocks = check_scales(model, scales, source)
        self.scales = {k: tuple(t.float().cpu() for t in v) for k, v in scales.items()}
        self.masks = {b.conv.weight: gradient_mask(b, scales[name]) for name, b in blocks.items()}
        return self

    @torch.no_grad()
    def step(self, closure=None):
        for p, mask in self.masks.items():
            if p.grad is not None:
                if mask.device != p.device:
                    mask = self.masks[p] = mask.to(p.device)
                p.grad.mul_(mask)
        return super().step(closure)

    def state_dict(self):
        d = super().state_dict()
        d["repopt_scales"] = {k: list(v) for k, v in self.scales.items()}
        return d

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        state_dict.pop("repopt_scales", None)  # the masks were built from them by attach()
        super().load_state_dict(state_dict)

    @staticmethod
    def scales_in(state_dict: dict) -> Scales | None:
        s = state_dict.get("repopt_scales") if isinstance(state_dict, dict) else None
        return {k: tuple(v) for k, v in s.items()} if s else None
