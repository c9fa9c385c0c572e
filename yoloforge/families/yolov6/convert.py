"""meituan/YOLOv6 release 2.0 checkpoints (tags 0.1.0-0.2.x; N/T/S/M/L) -> :class:`~yoloforge.families.yolov6.model.YOLOv6`.

The official ``Model`` has ``backbone`` (EfficientRep / CSPBepBackbone: ``stem``, ``ERBlock_2..5``),
``neck`` (``Rep_p4, Rep_p3, Rep_n3, Rep_n4, reduce_layer0, upsample0, reduce_layer1, upsample1,
downsample2, downsample1``) and ``detect`` (``stems, cls_convs, reg_convs, cls_preds, reg_preds`` +
the fixed DFL ``proj``/``proj_conv``). Our modules are listed in that order; RepVGG blocks come with
their identity BN first (official registration order), unfused or fused (``rbr_reparam``).
The variant (depth/width multiples, CSP, block kind, DFL bins) is found by trying each spec until
every shape fits; 0.2.0's own ``yolov6t`` (depth 0.33, width 0.375) is tried too.

Later releases (3.0+: BiFusion neck, anchor-aided / distill heads, lite models) do not fit our
release-2.0 modules and are refused with an "unsupported version" error.
"""
from __future__ import annotations

import torch

from yoloforge.convert.units import ConvertError, official_units, slots_of, transfer

V3_MARKERS = ("Bifusion", "cls_preds_ab", "reg_preds_ab", "reg_preds_dist", "cls_preds_dist", "ERBlock_6",
              "stems.3", "lite", "sppf.", "cspsppf", "Lite_EffiBlock")
# (our variant, spec overrides): release 2.0 models first, then 0.2.0's own yolov6t
CANDIDATES = (("n", {}), ("s", {}), ("t", {}), ("t", dict(depth=0.33, width=0.375)), ("m", {}), ("l", {}),
              ("l-relu", {}))


def matches(raw) -> bool:
    """A meituan/YOLOv6 release 2.0 checkpoint."""
    if raw.classes.get("", "").startswith("yolov6."):
        return True
    return any(k.startswith("backbone.") for k in raw.state) and any(k.startswith("detect.") for k in raw.state)


def describe(raw) -> dict:
    keys = list(raw.state)
    bad = sorted({m for m in V3_MARKERS for k in keys if m in k})
    classes = set(raw.classes.values())
    if bad or any(".heads." in c or "effidehead_" in c for c in classes):
        what = ", ".join(bad) or next(c for c in classes if ".heads." in c or "effidehead_" in c)
        raise ConvertError(f"{raw.path}: unsupported YOLOv6 version (release 3.0+ layout: {what}); yoloforge "
                           "holds release 2.0 models (meituan/YOLOv6 tags 0.1.0-0.2.x): N/T/S/M/L")
    if "detect.cls_preds.0.weight" not in raw.state:
        raise ConvertError(f"{raw.path}: YOLOv6 checkpoint without detect.cls_preds (unknown head)")
    nc = raw.state["detect.cls_preds.0.weight"].shape[0]
    reg = raw.state["detect.reg_preds.0.weight"].shape[0]
    fused = any(".rbr_reparam." in k for k in keys) or not any(".bn." in k for k in keys)
    head = raw.classes.get("detect", "yolov6.models.effidehead.Detect").rsplit(".", 1)[-1]
    return dict(nc=nc, reg_max=reg // 4 - 1, head_type=f"EffiDeHead ({head}, {'DFL' if reg > 4 else 'ltrb'})",
                fused="RepVGG fused" if fused else "unfused")


def model_slots(model) -> list:
    bb, nk = model.backbone, model.neck
    slots = slots_of(bb.stem, "backbone.stem")
    for i, stage in enumerate(bb.stages):
        slots += slots_of(stage, f"backbone.stages.{i}")
    for n in ("p4", "p3", "n3", "n4", "reduce0", "up0", "reduce1", "up1", "down1", "down0"):
        slots += slots_of(getattr(nk, n), f"neck.{n}")
    return slots + slots_of(model.head, "head")


def build(raw, info: dict, variant: str | None = None):
    from yoloforge.families.yolov6.model import YOLOv6

    units = official_units(raw.state, raw.classes, raw.attrs, skip=lambda mod: mod == "detect" or mod.startswith(
        "detect.proj"))
    cands = [(variant.replace("yolov6", ""), {})] if variant else CANDIDATES
    errors = []
    for v, kw in cands:
        with torch.device("meta"):
            probe = YOLOv6(v, nc=info["nc"], **kw)
        if probe.reg_max != info["reg_max"]:
            continue
        try:
            transfer(model_slots(probe), units, raw.path)
        except ConvertError as e:
            errors.append(f"yolov6{v}: {e}")
            continue
        model = YOLOv6(v, nc=info["nc"], **kw)
        transfer(model_slots(model), units, raw.path)
        return model, f"yolov6{v}" + (f" ({', '.join(f'{k}={x}' for k, x in kw.items())})" if kw else "")
    detail = "; ".join(errors[-2:]) if errors else f"no variant with reg_max={info['reg_max']}"
    raise ConvertError(f"{raw.path}: unknown YOLOv6 architecture ({detail})")
