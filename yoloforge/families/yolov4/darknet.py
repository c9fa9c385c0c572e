"""Darknet ``.weights`` + ``.cfg`` (AlexeyAB/darknet) -> YOLOv4-tiny / YOLOv4-CSP.

File layout (darknet ``src/parser.c`` ``load_weights_upto``): int32 major, minor, revision, then
``seen`` as int64 when ``major * 10 + minor >= 2`` else int32 (20- or 16-byte header), then float32
arrays in cfg order. Per ``[convolutional]``: BN beta, gamma, mean, var (``batch_normalize=1``) or the
conv bias, then the OIHW weights. The file size is checked against the parameter count the cfg
implies. BN eps in darknet is 1e-5 (``blas.c``); units carry it so the transfer compensates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from yoloforge.convert.safe_unpickle import FormatError, RawCheckpoint
from yoloforge.convert.units import ConvertError, conv_unit, transfer

NO_PARAMS = {"route", "maxpool", "upsample", "yolo", "shortcut", "net", "network", "dropout", "avgpool",
             "reorg", "sam", "scale_channels", "softmax", "cost"}


def parse_cfg(path: str | Path) -> list[dict]:
    """Sections of a darknet cfg: ``[{"type": ..., "line": n, key: value, ...}]`` (values as strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"darknet cfg not found: {path}")
    sections: list[dict] = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise FormatError(f"{path}:{n}: bad section header {line!r}")
            sections.append({"type": line[1:-1].strip(), "line": n})
        elif "=" in line and sections:
            k, v = line.split("=", 1)
            sections[-1][k.strip()] = v.strip()
        else:
            raise FormatError(f"{path}:{n}: cannot parse {line!r}")
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise FormatError(f"{path}: not a darknet cfg (first section must be [net])")
    return sections


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def layer_shapes(sections: list[dict], cfg_path) -> list[dict]:
    """Walk the layers tracking channels; per conv: (c_in, filters, size, groups, bn, act)."""
    net, layers, out_ch = sections[0], [], []
    c = int(net.get("channels", 3))
    for i, s in enumerate(sections[1:]):
        t = s["type"]
        where = f"{cfg_path}:{s['line']}"
        if t == "convolutional":
            f, k, g = int(s["filters"]), int(s.get("size", 1)), int(s.get("groups", 1))
            if int(s.get("share_index", -1)) >= 0 or s.get("dontload") or s.get("dontloadscales"):
                raise ConvertError(f"{where}: unsupported darknet conv option (share_index/dontload)")
            layers.append(dict(s, index=i, c_in=c, filters=f, size=k, groups=g, bn=int(s.get("batch_normalize", 0)),
                               stride=int(s.get("stride", 1)), act=s.get("activation", "logistic")))
            c = f
        elif t == "route":
            idx = [j if j >= 0 else i + j for j in _ints(s["layers"])]
            c = sum(out_ch[j] for j in idx) // int(s.get("groups", 1))
            layers.append(dict(s, index=i, layers=idx))
        elif t in ("maxpool", "upsample", "yolo", "dropout", "shortcut") and not s.get("weights_type"):
            layers.append(dict(s, index=i))
        elif t in NO_PARAMS - {"shortcut"}:
            layers.append(dict(s, index=i))
        else:
            raise ConvertError(f"{where}: darknet layer [{t}] is not supported by the converter")
        out_ch.append(c)
    return layers


def read_darknet(path: str | Path, cfg: str | Path) -> RawCheckpoint:
    """Read ``.weights`` with its cfg into conv units (in ``RawCheckpoint.attrs['units']``)."""
    path = Path(path)
    sections = parse_cfg(cfg)
    layers = layer_shapes(sections, cfg)
    data = path.read_bytes()
    if len(data) < 16:
        raise FormatError(f"{path}: truncated darknet weights (header needs at least 16 bytes, file has {len(data)})")
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
    header = 20 if major * 10 + minor >= 2 else 16
    if major > 1000 or minor > 1000 or major < 0 or minor < 0:
        raise FormatError(f"{path}: not a darknet weights file (version {major}.{minor}.{revision})")
    need = 0
    for L in (x for x in layers if x["type"] == "convolutional"):
        f = L["filters"]
        need += f * (4 if L["bn"] else 1) + f * (L["c_in"] // L["groups"]) * L["size"] ** 2
    have = (len(data) - header) // 4
    if len(data) - header != 4 * need:
        what = "truncated" if have < need else "longer than its cfg implies"
        raise FormatError(f"{path}: darknet weights do not match {Path(cfg).name}: file holds {have} floats after "
                          f"the {header}-byte header, the cfg needs {need} ({what})")
    w = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=header).copy())
    units, ptr = [], 0

    def take(n):
        nonlocal ptr
        ptr += n
        return w[ptr - n:ptr]

    for L in (x for x in layers if x["type"] == "convolutional"):
        f, name = L["filters"], f"layer {L['index']} (cfg line {L['line']})"
        if L["bn"]:
            beta, gamma, mean, var = take(f), take(f), take(f), take(f)
            bn, bias = dict(weight=gamma, bias=beta, running_mean=mean, running_var=var), None
        else:
            bn, bias = None, take(f)
        weight = take(f * (L["c_in"] // L["groups"]) * L["size"] ** 2).view(f, L["c_in"] // L["groups"], L["size"],
                                                                             L["size"])
        units.append(conv_unit(name, weight, bias, bn, eps=1e-5))
    state = {f"{u.name}.{k}": v for u in units for k, v in u.t.items()}
    return RawCheckpoint(path=path, kind="darknet", state=state, attrs={"units": units, "layers": layers,
                                                                       "header": (major, minor, revision, header)})


# ------------------------------------------------------------------------------ recognition / build
def _yolos(raw) -> list[dict]:
    return [L for L in raw.attrs["layers"] if L["type"] == "yolo"]


def describe(raw) -> dict:
    layers, yolos = raw.attrs["layers"], _yolos(raw)
    if not yolos:
        raise ConvertError(f"{raw.path}: the cfg has no [yolo] layers")
    nc = int(yolos[0]["classes"])
    anchors = _ints(yolos[0]["anchors"])
    acts = {L["act"] for L in layers if L["type"] == "convolutional"}
    convs = sum(L["type"] == "convolutional" for L in layers)
    major, minor, rev, header = raw.attrs["header"]
    if len(yolos) == 2 and "leaky" in acts and convs == 21:
        variant = "tiny"
    elif len(yolos) == 3 and "mish" in acts:
        variant = "csp"
    else:
        raise ConvertError(f"{raw.path}: unknown darknet architecture ({convs} conv layers, {len(yolos)} yolo layers, "
                           f"activations {sorted(acts)}); supported: yolov4-tiny.cfg, yolov4-csp.cfg")
    # one level per [yolo]; finer levels have the smaller anchors (tiny lists stride 32 first, csp stride 8)
    levels = sorted(([float(v) for m in _ints(y["mask"]) for v in anchors[2 * m:2 * m + 2]] for y in yolos), key=sum)
    scale = float(yolos[0].get("scale_x_y", 1.0))
    notes = [] if variant != "tiny" or abs(scale - 1.05) < 1e-6 else [f"cfg scale_x_y {scale} != 1.05 of yolov4-tiny"]
    if variant == "csp":
        # Our head decodes xy = 2 sigmoid - 0.5, wh = (2 sigmoid)^2 anchor (Scaled-YOLOv4). Darknet's
        # cfg/yolov4-csp.cfg says so with logistic [yolo] convs + new_coords=1 + scale_x_y=2.0; the
        # ScaledYOLOv4 yolov4-csp branch cfg has linear [yolo] convs and its PyTorch code applies that
        # decode whatever the cfg's scale_x_y says. Both go with the same yolov4-csp.weights.
        heads = {L["act"] for L in layers if L["type"] == "convolutional" and not L["bn"]}
        coords = {(int(y.get("new_coords", 0)), float(y.get("scale_x_y", 1.0))) for y in yolos}
        if heads == {"logistic"} and coords == {(1, 2.0)}:
            scale = 2.0
        elif heads == {"linear"} and all(n == 0 for n, _ in coords):
            notes.append("ScaledYOLOv4 yolov4-csp branch cfg: decoded as its PyTorch code does "
                         f"(2 sigmoid - 0.5, (2 sigmoid)^2 anchor; the cfg's scale_x_y {scale} is not used)")
        else:
            y = yolos[0]
            raise ConvertError(f"{raw.path}: unsupported [yolo] decode (cfg line {y['line']}): yolov4-csp needs "
                               "logistic [yolo] convs with new_coords=1 and scale_x_y=2.0 (darknet cfg/yolov4-csp.cfg) "
                               "or linear ones (ScaledYOLOv4 yolov4-csp branch cfg); found activations "
                               f"{sorted(heads)}, new_coords/scale_x_y {sorted(coords)}")
    return dict(nc=nc, variant=variant, anchors=levels, scale_xy=scale, notes=notes,
                head_type=f"darknet [yolo] x{len(yolos)} (scale_x_y {scale})",
                fused=f"darknet {major}.{minor}.{rev}, {header}-byte header", imgsz=416 if variant == "tiny" else 512)


def build(raw, info: dict, variant: str | None = None):
    from yoloforge.families.yolov4.model import YOLOv4

    from yoloforge.families.yolov4.convert import csp_darknet_slots, tiny_slots

    v = info["variant"]
    if v == "tiny":
        model = YOLOv4(v, nc=info["nc"], anchors=info["anchors"])
        transfer(tiny_slots(model), raw.attrs["units"], raw.path)
    else:  # the CSP-PAN laid out as in the cfg (no second BN on the concatenations)
        model = YOLOv4(v, nc=info["nc"], anchors=info["anchors"], darknet_neck=True)
        transfer(csp_darknet_slots(model), raw.attrs["units"], raw.path)
    return model, f"yolov4-{v} (darknet)"
