"""Model-level weight averaging (YOLOv7's "model-level re-parameterization", Wang et al., CVPR 2023, sec. 3.2.3):
one model whose weights are the (weighted) mean of several models of one architecture.

Two uses, as the paper names them:

* models trained on different data (or seeds), e.g. the halves of a dataset: ``yoloforge average a.safetensors
  b.safetensors --out avg.safetensors``;
* different iterations of one run: ``train --save-period K`` keeps ``weights/epochN.safetensors``; averaging the
  last few is a uniform average over a window of the run. The EMA the trainer already keeps (and saves as
  ``last``/``best``) is the other form of it: an exponential average over every optimizer step
  (decay ``ema_decay * (1 - exp(-updates / ema_tau))``), so snapshot averaging adds something only where the
  snapshots are far apart or from different runs.

After averaging, BN running statistics are those of no model in particular (the mean of means, not the statistics
of the averaged network); ``bn_recalibrate`` re-estimates them on training images (``--data D --bn-recalib N``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from yoloforge.utils.checkpoint import read_weights, save_weights
from yoloforge.utils.logging import get_logger

LOG = get_logger()


def average_states(paths: list[str | Path], weights: list[float] | None = None) -> tuple[dict, dict]:
    """(state, meta) of the weighted mean of ``paths`` (yoloforge ``.safetensors``). Floating tensors are averaged;
    integer buffers (BN ``num_batches_tracked``) take the largest value. Checked: one model name, class count,
    build options, the same tensor names and shapes; a clear error naming the first file that differs."""
    if len(paths) < 2:
        raise ValueError("average needs at least two weights files")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"--weights-of has {len(weights)} values for {len(paths)} files")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights-of must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    ref_path = Path(paths[0])
    ref, meta = read_weights(ref_path)
    out = {k: v.double() * (weights[0] / total) if v.is_floating_point() else v.clone() for k, v in ref.items()}
    for path, w in zip(paths[1:], weights[1:]):
        state, m = read_weights(path)
        for key in ("model", "build_kwargs"):
            if m.get(key) != meta.get(key):
                raise ValueError(f"{path}: {key} {m.get(key)!r} differs from {ref_path}'s {meta.get(key)!r}: only models "
                                 f"of one architecture can be averaged")
        if set(state) != set(ref):
            diff = sorted(set(state) ^ set(ref))
            raise ValueError(f"{path}: its tensors differ from {ref_path}'s (e.g. {diff[:3]})")
        for k, v in state.items():
            if v.shape != ref[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, {ref_path} {tuple(ref[k].shape)}")
            if v.is_floating_point():
                out[k] += v.double() * (w / total)
            else:
                out[k] = torch.maximum(out[k], v)
    out = {k: v.to(ref[k].dtype) for k, v in out.items()}
    meta = dict(meta, averaged_from=[str(p) for p in paths], averaged_weights=weights, metrics=None)
    return out, meta


@torch.no_grad()
def bn_recalibrate(model: nn.Module, data: str | Path, n: int, imgsz: int, batch: int = 16, workers: int = 2,
                   verbose: bool = True) -> int:
    """Re-estimate every BN's running mean / variance as the plain average over ``n`` train images (un-augmented,
    letterboxed as validation), the model otherwise unchanged. Returns the number of images used."""
    from tqdm import tqdm

    from yoloforge.data.dataset import DetectionDataset
    from yoloforge.data.formats import load_data_yaml
    from yoloforge.data.loader import build_dataloader

    d = load_data_yaml(data)
    ds = DetectionDataset(d.train, list(d.names), imgsz=imgsz, augment=False, verbose=False)
    if len(ds) == 0:
        raise ValueError(f"{data}: no train images to re-estimate the BN statistics on")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    device = next(model.parameters()).device
    model.train()
    seen = 0
    loader = build_dataloader(ds, batch, workers, shuffle=True, seed=0)
    with tqdm(total=min(n, len(ds)), desc="BN statistics", disable=not verbose, leave=False) as bar:
        for imgs, _, _ in loader:
            imgs = imgs[: n - seen]
            model(imgs.to(device).float() / 255)
            seen += len(imgs)
            bar.update(len(imgs))
            if seen >= n:
                break
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return seen


def average(paths: list[str | Path], out: str | Path, weights: list[float] | None = None, data: str | Path = "",
            bn_recalib: int = 0, imgsz: int | None = None, batch: int = 16, workers: int = 2,
            verbose: bool = True) -> Path:
    """Average ``paths`` into ``out`` (``.safetensors``), optionally re-estimating the BN statistics."""
    from yoloforge.families.registry import build_model

    state, meta = average_states(paths, weights)
    model = build_model(meta["model"], **meta.get("build_kwargs", {}))
    model.load_state_dict(state)
    if bn_recalib:
        if not data:
            raise ValueError("--bn-recalib needs --data (the BN statistics are re-estimated on its train images)")
        used = bn_recalibrate(model, data, bn_recalib, int(imgsz or meta.get("imgsz") or 640), batch, workers, verbose)
        meta["bn_recalibrated_on"] = used
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: write a .safetensors file")
    save_weights(out, model, meta)
    if verbose:
        LOG.info(f"averaged {len(paths)} models of {meta['model']} -> {out}"
                 + (f" (BN statistics re-estimated on {meta['bn_recalibrated_on']} images)" if bn_recalib else ""))
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("average", help="average the weights of models of one architecture (YOLOv7 model-level "
                                       "re-parameterization)")
    p.add_argument("weights", nargs="+", help="two or more .safetensors of one model (runs on other data or seeds, or "
                                              "--save-period snapshots of one run)")
    p.add_argument("--out", required=True, help="the averaged .safetensors")
    p.add_argument("--weights-of", default="", help="comma-separated weight of each file (default: equal)")
    p.add_argument("--data", default="", help="data yaml whose train images re-estimate the BN statistics")
    p.add_argument("--bn-recalib", type=int, default=0, help="re-estimate BN statistics on this many train images")
    p.add_argument("--imgsz", type=int, default=None, help="image size for --bn-recalib (default: the training size)")
    p.add_argument("--batch", type=int, default=16, help="batch size for --bn-recalib")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")


def run(a) -> int:
    try:
        w = [float(x) for x in a.weights_of.split(",")] if a.weights_of else None
    except ValueError:
        raise ValueError(f"--weights-of {a.weights_of!r}: comma-separated numbers, e.g. 1,1,2") from None
    print(average(a.weights, a.out, w, a.data, a.bn_recalib, a.imgsz, a.batch, a.workers))
    return 0
