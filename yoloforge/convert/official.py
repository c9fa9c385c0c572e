"""Recognize an official checkpoint, convert it to a yoloforge model, write yoloforge safetensors.

>>> model, meta = convert("yolov7-tiny.pt", out="yolov7-tiny.safetensors")
>>> model, meta = convert("yolov4-tiny.weights", cfg="yolov4-tiny.cfg")

``yoloforge convert FILE [--cfg CFG] [--out OUT]`` (see :func:`add_parser` / :func:`run`).
Nothing from the file is executed (:mod:`.safe_unpickle`); the converted model is checked for
finite outputs, and its equality with the official models is shown by ``tests/test_convert.py``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .safe_unpickle import FormatError, RawCheckpoint, load_pickled
from .units import ConvertError
from yoloforge.utils.metrics import COCO_NAMES

__all__ = ["COCO_NAMES", "read_checkpoint", "load_official", "convert", "add_parser", "run", "ConvertError"]



def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path, cfg: str | Path | None = None) -> RawCheckpoint:
    """``.weights`` (+ darknet ``cfg``) or a pickled ``.pt`` -> :class:`RawCheckpoint` (no code run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".weights" or (cfg is not None and str(cfg).endswith(".cfg")):
        if cfg is None:
            raise FormatError(f"{path}: a darknet .weights file needs its .cfg (--cfg yolov4-tiny.cfg)")
        from yoloforge.families.yolov4.darknet import read_darknet

        return read_darknet(path, cfg)
    return load_pickled(path)


def _family(raw: RawCheckpoint):
    """``(family name, converter module)`` of an official checkpoint: each family's ``convert.matches`` asked in
    the order of ``FAMILIES``; darknet files are YOLOv4's."""
    from yoloforge.families import FAMILIES, YOLOV4

    if raw.kind == "darknet":
        return "darknet", YOLOV4.module("darknet")
    for fam in FAMILIES:
        conv = fam.module("convert")
        if conv.matches(raw):
            return fam.name, conv
    root = raw.classes.get("", "state dict")
    sample = ", ".join(list(raw.state)[:3])
    raise FormatError(f"{raw.path}: unknown architecture ({root}; keys {sample} ...); supported: yolov7, "
                      "YOLOv6 release 2.0, ScaledYOLOv4 yolov4-large .pt, darknet .weights + .cfg")


def _names(raw: RawCheckpoint, nc: int) -> tuple[list[str], str]:
    names = raw.attrs.get("", {}).get("names") or raw.top.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if (isinstance(names, (list, tuple)) and len(names) == nc and all(isinstance(n, str) for n in names)
            and list(names) != [str(i) for i in range(nc)]):  # official default names are just numbers
        return list(names), "checkpoint"
    if nc == 80:
        return list(COCO_NAMES), "COCO (none stored)"
    return [str(i) for i in range(nc)], "numbers (none stored)"


def load_official(path: str | Path, cfg: str | Path | None = None, variant: str | None = None):
    """Official checkpoint -> ``(model, meta)``: an unfused yoloforge model in eval mode (float32)."""
    raw = read_checkpoint(path, cfg)
    family, fam = _family(raw)
    info = fam.describe(raw)
    model, variant = fam.build(raw, info, variant)
    model = model.float().eval()
    names, names_from = _names(raw, model.nc)
    model.names = names
    anchors = getattr(getattr(model, "head", None), "anchors", None)
    meta = dict(
        model=model.name, build_kwargs=dict(model.build_kwargs), nc=model.nc, names=names,
        strides=[float(s) for s in model.stride], imgsz=int(getattr(model, "default_imgsz", 0) or info.get("imgsz", 640)),
        anchors=anchors.tolist() if isinstance(anchors, torch.Tensor) else None,
        source=dict(file=Path(path).name, sha256=sha256(path), kind=raw.kind, family=family, variant=variant,
                    head=info.get("head_type", ""), form=info.get("fused", ""), dtype=str(raw.dtype).replace("torch.", ""),
                    entry=raw.source_key, names=names_from, cfg=Path(cfg).name if cfg else None,
                    notes=info.get("notes", [])),
    )
    return model, meta


def summary(meta: dict) -> str:
    s = meta["source"]
    conv = " -> float32" if s["dtype"] != "float32" else ""
    lines = [f"{s['file']}: {s['family']} checkpoint ({s['kind']}{', entry ' + repr(s['entry']) if s['entry'] else ''})",
             f"  recognized : {s['variant']} -> yoloforge model {meta['model']!r}",
             f"  head       : {s['head']}; form: {s['form']}; weights {s['dtype']}{conv}",
             f"  classes    : nc={meta['nc']}, names from {s['names']}",
             f"  strides    : {', '.join(str(int(x)) for x in meta['strides'])}"]
    lines += [f"  note       : {n}" for n in s.get("notes", [])]
    return "\n".join(lines)


def convert(path: str | Path, out: str | Path | None = None, cfg: str | Path | None = None,
            variant: str | None = None, verbose: bool = True):
    """Convert an official checkpoint to yoloforge safetensors (``out`` defaults to ``<stem>.safetensors``
    beside the source). Returns ``(model, meta)``; prints a summary of what was recognized."""
    from yoloforge.utils.checkpoint import save_weights

    model, meta = load_official(path, cfg, variant)
    probe = torch.zeros(1, 3, 64 * 2, 64 * 2) if max(meta["strides"]) <= 64 else torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        if not torch.isfinite(model(probe)).all():
            raise ConvertError(f"{path}: converted model gives non-finite outputs")
    out = Path(out) if out else Path(path).with_suffix(".safetensors")
    save_weights(out, model, meta)
    meta["out"] = str(out)
    if verbose:
        print(summary(meta))
        print(f"  written    : {out}")
    return model, meta


def add_parser(sub):
    """Register ``yoloforge convert`` on an argparse subparsers object."""
    p = sub.add_parser("convert", help="convert official yolov7 / YOLOv6 / ScaledYOLOv4 / darknet weights, safely")
    p.add_argument("file", help="official .pt/.pth checkpoint or darknet .weights")
    p.add_argument("--cfg", default=None, help="darknet .cfg (needed for .weights)")
    p.add_argument("--out", default=None, help="output .safetensors (default: beside FILE)")
    p.add_argument("--variant", default=None, help="force a yoloforge model name (default: recognized)")
    return p


def run(args) -> int:
    convert(args.file, out=args.out, cfg=args.cfg, variant=args.variant)
    return 0
