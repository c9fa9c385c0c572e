"""WongKinYiu/yolov7 checkpoints -> :class:`yoloforge.families.yolov7.model.YOLOv7`.

Official models are a yaml graph ``model.<i>``; its layers are listed here as our modules in the
official order (units, see :mod:`.units`). Differences handled:

* ELAN / ELAN-H / tiny-SPP concatenations list their inputs last-first (``[-1, -3, -5, -6]``): the
  transition conv's input channels are reordered (``perm``);
* E6E's two parallel ELANs (+ ``Shortcut``) become one E-ELAN with group convolutions (``part``);
* ``MP`` blocks list the pool branch first; ``SPPCSPC`` registers cv1..cv7 (cv2 = shortcut);
* heads: ``IDetect`` (implicit ``ia``/``im`` kept), ``IAuxDetect`` (+ aux ``m2``), ``Detect`` (deploy:
  implicit layers already folded -> ours set to identity); RepConv separate or fused (``rbr_reparam``),
  convs with or without BN (a fused ``Conv`` loads into our BN as an identity carrying the bias).
"""
from __future__ import annotations

import torch

from yoloforge.convert.units import ConvertError, detect_anchors, official_units, slots_of, transfer

HEADS = ("IDetect", "IAuxDetect", "Detect", "IKeypoint", "IBin")
# try order: cheap first; the first variant whose every shape fits wins
VARIANT_ORDER = ("yolov7-tiny", "yolov7-tiny-silu", "yolov7", "yolov7x", "yolov7-w6", "yolov7-e6", "yolov7-d6", "yolov7-e6e")


def matches(raw) -> bool:
    """A WongKinYiu/yolov7 checkpoint (training or deploy form)."""
    if raw.classes:
        return raw.classes.get("", "").endswith("yolo.Model") and not any(
            c.rsplit(".", 1)[-1] in ("BottleneckCSP", "BottleneckCSP2", "SPPCSP", "MishCuda", "Mish")
            for c in raw.classes.values()) and any(k.startswith("model.") for k in raw.state)
    return any(k.startswith("model.") and (".rbr_dense." in k or ".ia.0.implicit" in k) for k in raw.state)


def _head_prefix(raw) -> str:
    for pre, cls in reversed(list(raw.classes.items())):
        if cls.rsplit(".", 1)[-1] in HEADS:
            return pre
    idx = max(int(k.split(".")[1]) for k in raw.state if k.startswith("model."))
    return f"model.{idx}"


def _elan_slots(e, name: str) -> list:
    g = e.cardinality
    hidden = e.cv1.conv.out_channels // g
    inner = e.m[0].conv.out_channels // g
    widths = [hidden, hidden] + [inner] * (len(e.m) // e.step)
    out = []
    for k in range(g):
        part = (k, g) if g > 1 else None
        out += [("cbn", e.cv1, f"{name}.cv1", {"part": part}), ("cbn", e.cv2, f"{name}.cv2", {"part": part})]
        out += [("cbn", c, f"{name}.m.{i}", {"part": part}) for i, c in enumerate(e.m)]
        out.append(("cbn", e.transition, f"{name}.transition", {"part": part, "perm": widths}))
    return out


def _down_slots(d, name: str) -> list:
    from yoloforge.families.yolov7.blocks import MPDown

    if isinstance(d, MPDown):
        return [("cbn", d.cv_pool, f"{name}.cv_pool", {}), ("cbn", d.cv_reduce, f"{name}.cv_reduce", {}),
                ("cbn", d.cv_stride, f"{name}.cv_stride", {})]
    return slots_of(d, name)


def _spp_slots(s, name: str, tiny: bool) -> list:
    def c(m, n, **o):
        return ("cbn", m, f"{name}.{n}", o)
    if tiny:
        c_ = s.pre[0].conv.out_channels
        return [c(s.shortcut, "shortcut"), c(s.pre[0], "pre.0"),
                c(s.post[0], "post.0", perm=[c_] * (len(s.pools) + 1)), c(s.merge, "merge")]
    return [c(s.pre[0], "pre.0"), c(s.shortcut, "shortcut"), c(s.pre[1], "pre.1"), c(s.pre[2], "pre.2"),
            c(s.post[0], "post.0"), c(s.post[1], "post.1"), c(s.merge, "merge")]


def model_slots(model, implicit: bool, aux: bool) -> list:
    """Our YOLOv7 modules as slots in the official layer order."""
    bb, nk = model.backbone, model.neck
    slots = slots_of(bb.stem, "backbone.stem")
    for i, (down, elan) in enumerate(bb.stages):
        slots += _down_slots(down, f"backbone.stages.{i}.0") + _elan_slots(elan, f"backbone.stages.{i}.1")
    slots += _spp_slots(nk.spp, "neck.spp", model.spec.spp_tiny)
    for i in range(len(nk.reduce)):
        slots += slots_of(nk.reduce[i], f"neck.reduce.{i}") + slots_of(nk.lateral[i], f"neck.lateral.{i}")
        slots += _elan_slots(nk.td[i], f"neck.td.{i}")
    for i in range(len(nk.down)):
        slots += _down_slots(nk.down[i], f"neck.down.{i}") + _elan_slots(nk.bu[i], f"neck.bu.{i}")
    slots += slots_of(model.head_convs, "head_convs")
    if aux:
        slots += slots_of(model.aux_convs, "aux_convs")
    slots += slots_of(model.head.m, "head.m")
    if aux:
        slots += slots_of(model.aux_head.m, "aux_head.m")
    if implicit:
        slots += [("tensor", m.implicit, f"head.ia.{i}", {}) for i, m in enumerate(model.head.ia)]
        slots += [("tensor", m.implicit, f"head.im.{i}", {}) for i, m in enumerate(model.head.im)]
    return slots


def _units(raw, head: str):
    return official_units(raw.state, raw.classes, raw.attrs, skip=lambda mod: mod == head)


def describe(raw) -> dict:
    head = _head_prefix(raw)
    keys = raw.state.keys()
    implicit = any(k.startswith(head + ".ia.") for k in keys)
    aux = any(k.startswith(head + ".m2.") for k in keys)
    head_cls = raw.classes.get(head, "").rsplit(".", 1)[-1] or ("IAuxDetect" if aux else "IDetect" if implicit else "Detect")
    if head_cls in ("IKeypoint", "IBin"):
        raise ConvertError(f"{raw.path}: unsupported yolov7 variant: {head_cls} head (pose/bin models)")
    pixels, stride = detect_anchors(raw, head, "yolov7")
    no = raw.state[head + ".m.0.weight"].shape[0] // pixels.shape[1]
    fused_rep = any(".rbr_reparam." in k for k in keys)
    fused_bn = not any(".bn." in k or ".rbr_dense.1." in k for k in keys)
    acts = {ACTS[c.rsplit(".", 1)[-1]] for c in raw.classes.values() if c.rsplit(".", 1)[-1] in ACTS}
    return dict(head=head, implicit=implicit, aux=aux, nc=no - 5, anchors=pixels, stride=stride, acts=acts,
                head_type=head_cls, fused=("RepConv+BN fused" if fused_rep or fused_bn else "unfused"))


# activation module classes of the official Conv -> our spec names (a whole-module pickle names them;
# a plain state dict does not, and then only the layer shapes and the yaml name decide)
ACTS = {"SiLU": "silu", "LeakyReLU": "lrelu", "ReLU": "relu", "Hardswish": "hardswish", "Mish": "mish"}


def build(raw, info: dict, variant: str | None = None):
    """Find the variant whose every layer shape fits, build it and copy the weights."""
    from yoloforge.families.yolov7.model import YOLOv7

    units = _units(raw, info["head"])
    hint = str(raw.attrs.get("", {}).get("yaml_file", "")).rsplit("/", 1)[-1].replace(".yaml", "")
    order = [variant] if variant else sorted(VARIANT_ORDER, key=lambda v: v != hint)
    errors = []
    for v in order:
        with torch.device("meta"):
            probe = YOLOv7(v, nc=info["nc"])
        if len(probe.spec.strides) != info["anchors"].shape[0]:
            continue
        if info["aux"] and probe.aux_head is None:
            continue
        if info.get("acts") and info["acts"] != {probe.spec.act}:
            errors.append(f"{v}: activation {probe.spec.act}, the checkpoint uses {'/'.join(sorted(info['acts']))}")
            continue
        try:
            transfer(model_slots(probe, info["implicit"], info["aux"]), units, raw.path)
        except ConvertError as e:
            errors.append(f"{v}: {e}")
            continue
        model = YOLOv7(v, nc=info["nc"])
        transfer(model_slots(model, info["implicit"], info["aux"]), units, raw.path)
        with torch.no_grad():
            if not info["implicit"]:  # deploy head: implicit knowledge already folded into m
                for a, m in zip(model.head.ia, model.head.im):
                    a.implicit.zero_()
                    m.implicit.fill_(1.0)
            model.head.anchors.copy_(info["anchors"])
            if model.aux_head is not None:
                model.aux_head.anchors.copy_(model.head.anchors)
        if model.aux_head is not None and not info["aux"]:
            info.setdefault("notes", []).append("deploy checkpoint: the auxiliary head (training only) starts fresh")
        if not info.get("acts") and v.startswith("yolov7-tiny") and not variant:
            info.setdefault("notes", []).append(
                f"the checkpoint does not name its activation: assumed {v} (pass --variant yolov7-tiny-silu "
                "or yolov7-tiny to choose)")
        if v == "yolov7-e6e" and info["aux"]:
            info.setdefault("notes", []).append("e6e aux head: ours reads the merged E-ELAN outputs (official: branch 2)")
        return model, v
    detail = "; ".join(errors[-2:]) if errors else "no variant with this number of levels"
    raise ConvertError(f"{raw.path}: unknown yolov7 architecture ({detail})")
