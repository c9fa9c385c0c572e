"""Scaled-YOLOv4 checkpoints -> :class:`~yoloforge.families.yolov4.model.YOLOv4`.

* ``yolov4-large`` branch ``.pt`` (P5/P6/P7, and its ``yolov4-csp.yaml``): a yaml graph ``model.<i>``
  of ``Conv``, ``BottleneckCSP`` (cv1, cv2, cv3, cv4, bn, m), ``BottleneckCSP2`` (cv1, cv2, cv3, bn, m),
  ``SPPCSP`` (cv1..cv6, bn, cv7), ``Detect``; ``mish_cuda.MishCuda`` is only a class name here (stub).
* darknet ``yolov4-tiny.cfg`` and ``yolov4-csp.cfg``: conv layers in cfg order (see :func:`tiny_slots`,
  :func:`csp_darknet_slots`).
"""
from __future__ import annotations

import torch

from yoloforge.convert.units import ConvertError, detect_anchors, official_units, slots_of, transfer

LARGE_CLASSES = ("BottleneckCSP", "BottleneckCSP2", "SPPCSP", "MishCuda")


def matches(raw) -> bool:
    """A ScaledYOLOv4 yolov4-large checkpoint (P5 / P6 / P7)."""
    if raw.classes:
        return any(c.rsplit(".", 1)[-1] in LARGE_CLASSES for c in raw.classes.values())
    return any(".cv4.conv.weight" in k for k in raw.state) and any(k.startswith("model.") for k in raw.state)


def _csp(b, name):  # BottleneckCSP: official cv1, cv2, cv3, cv4, bn, m
    return (slots_of(b.cv1, f"{name}.cv1") + slots_of(b.cv2, f"{name}.cv2") + slots_of(b.cv3, f"{name}.cv3")
            + slots_of(b.cv4, f"{name}.cv4") + slots_of(b.bn, f"{name}.bn") + slots_of(b.m, f"{name}.m"))


def _csp2(b, name):  # BottleneckCSP2: official cv1, cv2, cv3, bn, m
    return (slots_of(b.cv1, f"{name}.cv1") + slots_of(b.cv2, f"{name}.cv2") + slots_of(b.cv3, f"{name}.cv3")
            + slots_of(b.bn, f"{name}.bn") + slots_of(b.m, f"{name}.m"))


def _sppcsp(s, name):  # SPPCSP: official cv1, cv2, cv3, cv4, cv5, cv6, bn, cv7
    return sum((slots_of(getattr(s, n), f"{name}.{n}") for n in ("cv1", "cv2", "cv3", "cv4", "cv5", "cv6", "bn", "cv7")),
               [])


def large_slots(model) -> list:
    from yoloforge.families.yolov4.blocks import BottleneckCSP

    bb, nk = model.backbone, model.neck
    slots = slots_of(bb.stem, "backbone.stem")
    for i, (down, body) in enumerate(bb.stages):
        slots += slots_of(down, f"backbone.stages.{i}.0")
        slots += _csp(body, f"backbone.stages.{i}.1") if isinstance(body, BottleneckCSP) else slots_of(
            body, f"backbone.stages.{i}.1")
    slots += _sppcsp(nk.spp, "neck.spp")
    for i in range(len(nk.td) - 1, -1, -1):
        slots += slots_of(nk.reduce[i], f"neck.reduce.{i}") + slots_of(nk.lateral[i], f"neck.lateral.{i}")
        slots += _csp2(nk.td[i], f"neck.td.{i}")
    slots += slots_of(nk.out[0], "neck.out.0")
    for i in range(1, len(nk.out)):
        slots += slots_of(nk.down[i - 1], f"neck.down.{i - 1}") + _csp2(nk.bu[i - 1], f"neck.bu.{i - 1}")
        slots += slots_of(nk.out[i], f"neck.out.{i}")
    return slots + slots_of(model.head.m, "head.m")


def csp_darknet_slots(model) -> list:
    """darknet ``yolov4-csp.cfg`` conv order for ``YOLOv4("csp", darknet_neck=True)``.

    Backbone CSP stage: down-sampling conv, the cross-stage path (``cv2`` with its own BN, which is
    our concat BN's second half), ``cv1``, the residual units, the transition (``cv3`` + first half),
    ``cv4``. SPPCSP: ``cv2``, ``cv1``, ``cv3``, ``cv4``, ``cv5`` (its route lists the pools 13, 9, 5
    before their input: reversed), ``cv6``, ``cv7``. CSP2: ``cv1``, ``cv2``, the units, ``cv3``.
    Each output conv is followed by its ``[yolo]`` conv."""
    bb, nk, m = model.backbone, model.neck, model.head.m

    def csp(b, name):
        return ([("conv+bnpart", b.cv2, f"{name}.cv2", dict(bn=b.bn, bn_part=(1, 2)))] + slots_of(b.cv1, f"{name}.cv1")
                + slots_of(b.m, f"{name}.m")
                + [("conv+bnpart", b.cv3, f"{name}.cv3", dict(bn=b.bn, bn_part=(0, 2)))]
                + slots_of(b.cv4, f"{name}.cv4"))

    def csp2(b, name):
        return (slots_of(b.cv1, f"{name}.cv1") + slots_of(b.cv2, f"{name}.cv2") + slots_of(b.m, f"{name}.m")
                + slots_of(b.cv3, f"{name}.cv3"))

    from yoloforge.families.yolov4.blocks import BottleneckCSP

    slots = slots_of(bb.stem, "backbone.stem")
    for i, (down, body) in enumerate(bb.stages):
        slots += slots_of(down, f"backbone.stages.{i}.0")
        slots += csp(body, f"backbone.stages.{i}.1") if isinstance(body, BottleneckCSP) else slots_of(
            body, f"backbone.stages.{i}.1")
    s = nk.spp
    c_ = s.cv1.conv.out_channels
    slots += sum((slots_of(getattr(s, n), f"neck.spp.{n}") for n in ("cv2", "cv1", "cv3", "cv4")), [])
    slots += slots_of(s.cv5, "neck.spp.cv5", perm=[c_] * (len(s.pools) + 1))
    slots += slots_of(s.cv6, "neck.spp.cv6") + slots_of(s.cv7, "neck.spp.cv7")
    for i in range(len(nk.td) - 1, -1, -1):
        slots += slots_of(nk.reduce[i], f"neck.reduce.{i}") + slots_of(nk.lateral[i], f"neck.lateral.{i}")
        slots += csp2(nk.td[i], f"neck.td.{i}")
    slots += slots_of(nk.out[0], "neck.out.0") + slots_of(m[0], "head.m.0")
    for i in range(1, len(nk.out)):
        slots += slots_of(nk.down[i - 1], f"neck.down.{i - 1}") + csp2(nk.bu[i - 1], f"neck.bu.{i - 1}")
        slots += slots_of(nk.out[i], f"neck.out.{i}") + slots_of(m[i], f"head.m.{i}")
    return slots


def tiny_slots(model) -> list:
    """yolov4-tiny.cfg conv order: stem x2, 3 x (base, conv1, conv2, transition), conv 512, reduce 256,
    out32 512, yolo conv (stride 32), reduce16 128, out16 256, yolo conv (stride 16)."""
    bb, nk, m = model.backbone, model.neck, model.head.m
    slots = slots_of(bb.stem, "backbone.stem")
    for n in ("block1", "block2", "block3"):
        slots += slots_of(getattr(bb, n), f"backbone.{n}")
    slots += slots_of(bb.conv, "backbone.conv") + slots_of(nk.reduce, "neck.reduce") + slots_of(nk.out32, "neck.out32")
    slots += slots_of(m[1], "head.m.1") + slots_of(nk.reduce16, "neck.reduce16") + slots_of(nk.out16, "neck.out16")
    return slots + slots_of(m[0], "head.m.0")


def _head(raw) -> str:
    for pre, cls in reversed(list(raw.classes.items())):
        if cls.endswith("Detect"):
            return pre
    idx = max(int(k.split(".")[1]) for k in raw.state if k.startswith("model."))
    return f"model.{idx}"


def describe(raw) -> dict:
    head = _head(raw)
    pixels, _ = detect_anchors(raw, head, "ScaledYOLOv4")
    na = pixels.shape[1]
    nc = raw.state[head + ".m.0.weight"].shape[0] // na - 5
    fused = not any(k.endswith(".bn.running_var") for k in raw.state)
    if fused:
        raise ConvertError(f"{raw.path}: unsupported: a fused ScaledYOLOv4 model (BN folded); convert the "
                           "unfused checkpoint")
    return dict(head=head, nc=nc, anchors=pixels, head_type="Detect", fused="unfused")


def build(raw, info: dict, variant: str | None = None):
    from yoloforge.families.yolov4.model import YOLOv4

    units = official_units(raw.state, raw.classes, raw.attrs, skip=lambda mod: mod == info["head"])
    nl = info["anchors"].shape[0]
    cands = [variant.replace("yolov4-", "")] if variant else {3: ["p5", "csp"], 4: ["p6"], 5: ["p7"]}.get(nl, [])
    errors = []
    for v in cands:
        anchors = info["anchors"].reshape(nl, -1).tolist()
        with torch.device("meta"):
            probe = YOLOv4(v, nc=info["nc"], anchors=anchors)
        try:
            transfer(large_slots(probe), units, raw.path)
        except ConvertError as e:
            errors.append(f"yolov4-{v}: {e}")
            continue
        model = YOLOv4(v, nc=info["nc"], anchors=anchors)
        transfer(large_slots(model), units, raw.path)
        return model, f"yolov4-{v}"
    raise ConvertError(f"{raw.path}: unknown ScaledYOLOv4 architecture ({'; '.join(errors[-2:]) or f'{nl} levels'})")
