"""Model-scaling analysis of Scaled-YOLOv4 (``yoloforge scale``).

Wang, Bochkovskiy, Liao, "Scaled-YOLOv4: Scaling Cross Stage Partial Network", CVPR 2021
(arXiv:2011.08036), Sec. 3.1-3.2. A group of ``k`` layers with ``b`` base channels on a ``w x h`` map:

* ResNet layer  ``k * [conv1x1 b/4, conv3x3 b/4, conv1x1 b]``            -> ``17 whkb^2 / 16``
* ResNeXt layer ``k * [conv1x1 b/2, gconv3x3 b/2 (32 groups), conv1x1 b]`` -> ``137 whkb^2 / 128``
* Darknet layer ``k * [conv1x1 b/2, conv3x3 b]``                          -> ``5 whkb^2``

and their CSP-ized versions (Table 1): ``whb^2 (3/4 + 13k/16)``, ``whb^2 (3/4 + 73k/128)``,
``whb^2 (3/4 + 5k/2)``. Table 2: FLOPs grow with the size factor alpha as alpha^2, the depth factor beta
as beta and the width factor gamma as gamma^2. Table 3 (tiny models, growth rate ``g``): Dense layer
``whgbk + whg^2 k(k-1)/2``, OSA layer ``whbg + whg^2 (k-1)``.

**Units.** The paper's expressions count multiply-adds (MACs) of convolutions; BN, activations,
residual additions and concatenations are not counted. ``torch.utils.flop_counter.FlopCounterMode``
(used by :func:`yoloforge.utils.flops.count_gflops`) counts ``2 x MACs``, so every GFLOPs number
printed here is ``2 * MACs / 1e9``. The ``*_layer`` functions below return MACs.

The paper gives only the totals of the CSP-ized layers. The k-terms say that inside the CSP block the
layers run at width ``b/2`` (Res ``b/2 -> b/4 -> b/4 -> b/2``, ResX and Dark with bottleneck ratio 1);
the ``3/4`` term is reproduced by :class:`CSPLayer`: an entry 1x1 ``b -> b/2`` (1/2) and a partial
transition 1x1 ``b/2 -> b/2`` (1/4), the other half of the base layer crossing the stage untouched.
The CSPDarknet stage of this repository (:class:`~yoloforge.families.yolov4.blocks.BottleneckCSP`, the
ScaledYOLOv4 code's layout) spends ``9/4`` instead: two 1x1 ``b -> b/2``, one 1x1 ``b/2 -> b/2`` and a
1x1 ``b -> b`` after the concat (:func:`bottleneck_csp_macs`). (Sec. 4.1 quotes a CSPDarknet stage,
down-sampling conv included, as ``whb^2 (9/4 + 3/4 + 5k/2)``; the per-stage table counts the stride-2
conv exactly instead.) In the per-stage table ``size`` / ``ch`` are those of the row's output.
"""
from __future__ import annotations

import copy
import sys

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "res_layer", "resx_layer", "dark_layer", "csp_res_layer", "csp_resx_layer", "csp_dark_layer",
    "dense_layer", "osa_layer", "csposa_pcb_layer", "bottleneck_csp_macs", "bottleneck_csp2_macs",
    "PLAIN", "CSP", "PlainLayer", "CSPLayer", "measure_macs", "stage_table", "sweep",
    "formula_report", "stage_report", "sweep_report", "add_parser", "run",
]


# ----------------------------------------------------------------------------- 1. formulas (MACs)
def res_layer(w, h, b, k):
    """ResNet layer: 1x1 b->b/4 (1/4) + 3x3 b/4->b/4 (9/16) + 1x1 b/4->b (1/4) = 17/16 per layer."""
    return 17 * w * h * k * b * b / 16


def resx_layer(w, h, b, k, groups=32):
    """ResNeXt layer: 1x1 b->b/2 (1/2) + 3x3 gconv b/2 (9/(4 groups)) + 1x1 b/2->b (1/2); 137/128 at 32."""
    return w * h * k * b * b * (1 + 9 / (4 * groups))


def dark_layer(w, h, b, k):
    """Darknet layer: 1x1 b->b/2 (1/2) + 3x3 b/2->b (9/2) = 5 per layer."""
    return 5 * w * h * k * b * b


def csp_res_layer(w, h, b, k):
    """CSP-ized ResNet layer, Table 1: whb^2 (3/4 + 13k/16)."""
    return w * h * b * b * (3 / 4 + 13 * k / 16)


def csp_resx_layer(w, h, b, k, groups=32):
    """CSP-ized ResNeXt layer, Table 1: whb^2 (3/4 + 73k/128) (groups=32)."""
    return w * h * b * b * (3 / 4 + k * (1 / 2 + 9 / (4 * groups)))


def csp_dark_layer(w, h, b, k):
    """CSP-ized Darknet layer, Table 1: whb^2 (3/4 + 5k/2)."""
    return w * h * b * b * (3 / 4 + 5 * k / 2)


def dense_layer(w, h, b, g, k, kernel=1):
    """Dense layer, Table 3: whgbk + whg^2 k(k-1)/2, times ``kernel^2`` (``kernel=1``: as printed)."""
    return kernel * kernel * (w * h * g * b * k + w * h * g * g * k * (k - 1) / 2)


def osa_layer(w, h, b, g, k, kernel=1):
    """OSA layer, Table 3: whbg + whg^2 (k-1), times ``kernel^2`` (the final aggregation is left out)."""
    return kernel * kernel * (w * h * b * g + w * h * g * g * (k - 1))


def csposa_pcb_layer(w, h, b, g, k, kernel=3):
    """CSPOSANet computational block with partial-in-computational-block (YOLOv4-tiny, Sec. 4.2):
    an OSA layer on half of the base layer (``b/2`` in) plus the 1x1 partial transition ``kg -> kg``
    (the ``b`` base-layer conv itself is not included)."""
    return osa_layer(w, h, b / 2, g, k, kernel) + w * h * (k * g) ** 2


def bottleneck_csp_macs(w, h, b, k, c_in=None):
    """This repo's ``BottleneckCSP(c_in, b, k)``: whb^2 (9/4 + 5k/2) for ``c_in = b``."""
    c_in = b if c_in is None else c_in
    return w * h * (c_in * b + b * b / 4 + b * b + 5 * k * b * b / 2)


def bottleneck_csp2_macs(w, h, c, n, c_in=None):
    """This repo's ``BottleneckCSP2(c_in, c, n)`` (reversed CSP Dark layer of the neck):
    cv1 c_in*c + n * 10c^2 + cv2 c^2 + cv3 2c^2; = paper's csp_dark_layer(b=2c) + 2whc^2 for c_in = 2c."""
    c_in = 2 * c if c_in is None else c_in
    return w * h * (c_in * c + 10 * n * c * c + 3 * c * c)


PLAIN = {"res": res_layer, "resx": resx_layer, "dark": dark_layer}
CSP = {"res": csp_res_layer, "resx": csp_resx_layer, "dark": csp_dark_layer}
# per-layer coefficient of k (in units of whb^2): the asymptotic CSP/plain ratio
_KCOEF = {"res": (17 / 16, 13 / 16), "resx": (137 / 128, 73 / 128), "dark": (5.0, 5 / 2)}
_SYMBOL = {"res": ("17whkb^2/16", "whb^2(3/4 + 13k/16)"), "resx": ("137whkb^2/128", "whb^2(3/4 + 73k/128)"),
           "dark": ("5whkb^2", "whb^2(3/4 + 5k/2)")}


# ----------------------------------------------------------------------------- 2. the blocks
def _conv(c1, c2, k=1, g=1):
    # BN and activation are kept for realism; FlopCounterMode does not count them
    return nn.Sequential(nn.Conv2d(c1, c2, k, 1, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


def _unit(kind, c, plain, groups=32):
    """One residual unit of width ``c`` (in = out = c). Plain: the paper's bottlenecks; CSP: the
    layouts implied by Table 1's k-terms (Res keeps the b/4 bottleneck, ResX and Dark ratio 1)."""
    if kind == "res":
        m = c // 4 if plain else c // 2  # CSP unit works on c = b/2, bottleneck b/4
        return nn.Sequential(_conv(c, m), _conv(m, m, 3), _conv(m, c))
    if kind == "resx":
        m = c // 2 if plain else c
        return nn.Sequential(_conv(c, m), _conv(m, m, 3, groups), _conv(m, c))
    if kind == "dark":
        m = c // 2 if plain else c
        return nn.Sequential(_conv(c, m), _conv(m, c, 3))
    raise ValueError(f"unknown layer kind {kind!r}; known: res, resx, dark")


class _Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class PlainLayer(nn.Sequential):
    """``k`` residual units of width ``b`` (Res / ResX / Dark layer of Sec. 3.1)."""

    def __init__(self, kind: str, b: int, k: int, groups: int = 32):
        super().__init__(*(_Residual(_unit(kind, b, True, groups)) for _ in range(k)))


class CSPLayer(nn.Module):
    """CSP-ized layer, ``b -> b`` channels: entry 1x1 ``b -> b/2``, ``k`` units of width ``b/2``, partial
    transition 1x1 ``b/2 -> b/2``, concatenated with the untouched other half of the base layer."""

    def __init__(self, kind: str, b: int, k: int, groups: int = 32):
        super().__init__()
        self.half = b // 2
        self.entry = _conv(b, self.half)
        self.m = nn.Sequential(*(_Residual(_unit(kind, self.half, False, groups)) for _ in range(k)))
        self.transition = _conv(self.half, self.half)

    def forward(self, x):
        return torch.cat((self.transition(self.m(self.entry(x))), x[:, self.half:]), 1)


def measure_macs(module: nn.Module, *shape) -> float:
    """Multiply-adds of one eval forward on a ``shape`` input (meta device): FlopCounterMode / 2."""
    m = copy.deepcopy(module).eval().to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(torch.empty(*shape, device="meta"))
    return fc.get_total_flops() / 2


# ----------------------------------------------------------------------------- 3. per-stage table
def _partition(model: nn.Module):
    """Rows: each top-level child split into its children; ModuleLists split into their items."""
    rows = []
    for name, child in model.named_children():
        kids = list(child.named_children())
        if not kids:
            rows.append((name, child))
            continue
        for kname, kid in kids:
            if isinstance(kid, nn.ModuleList):
                rows.extend((f"{name}.{kname}.{i}", item) for i, item in enumerate(kid))
            else:
                rows.append((f"{name}.{kname}", kid))
    return rows


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(x, dict):
        return _first_tensor(list(x.values()))
    return None


def _estimate(mod, x_shape, y_shape):
    """(description, b, k, paper-formula MACs, closed-form MACs of this code) or None."""
    from yoloforge.families.yolov4.blocks import BottleneckCSP, BottleneckCSP2, DarknetBottleneck, TinyCSPBlock

    down, body = None, mod
    if isinstance(mod, nn.Sequential) and len(mod) == 2 and isinstance(getattr(mod[0], "conv", None), nn.Conv2d):
        down, body = mod[0].conv, mod[1]
    if y_shape is None or x_shape is None or len(y_shape) != 4:
        return None
    w, h = y_shape[3], y_shape[2]
    d = 0.0
    if down is not None:
        kh, kw = down.kernel_size
        d = kh * kw * down.in_channels // down.groups * down.out_channels * w * h
    if isinstance(body, BottleneckCSP):
        b, k = body.cv4.conv.out_channels, len(body.m)
        c_in = body.cv1.conv.in_channels
        return "CSP-Dark", b, k, d + csp_dark_layer(w, h, b, k), d + bottleneck_csp_macs(w, h, b, k, c_in)
    if isinstance(body, nn.Sequential) and len(body) and all(
            isinstance(u, DarknetBottleneck) and u.add and u.cv1.conv.out_channels * 2 == u.cv2.conv.out_channels
            for u in body):
        b, k = body[0].cv2.conv.out_channels, len(body)
        return "Dark", b, k, d + dark_layer(w, h, b, k), d + dark_layer(w, h, b, k)
    if down is None and isinstance(mod, BottleneckCSP2):
        c, n, c_in = mod.cv2.out_channels, len(mod.m), mod.cv1.conv.in_channels
        return "rCSP-Dark", 2 * c, n, csp_dark_layer(w, h, 2 * c, n), bottleneck_csp2_macs(w, h, c, n, c_in)
    if down is None and isinstance(mod, TinyCSPBlock):
        b, c_in = mod.base.conv.out_channels, mod.base.conv.in_channels
        wi, hi = x_shape[3], x_shape[2]  # the block pools at its end; its convs run at input size
        base = 9 * c_in * b * wi * hi
        f = base + csposa_pcb_layer(wi, hi, b, b // 2, 2)
        return "CSPOSA-PCB", b, 2, f, f
    return None


def stage_table(model: nn.Module, imgsz=640) -> dict:
    """Measured (FlopCounterMode, meta device) GFLOPs per row of :func:`_partition`, with the paper's
    formula where the row is a (CSP-)Darknet stage / OSA block of known (b, k, size). Returns
    ``dict(rows=[dict(name, type, size, channels, depth, kind, formula, exact, measured)], total, other)``;
    GFLOPs are ``2 * MACs / 1e9``; ``other`` is what runs outside the rows (total - sum of rows)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    m = copy.deepcopy(model).eval().to("meta")
    parts = _partition(m)
    shapes, hooks = {}, []
    for name, mod in parts:
        def hook(mod_, inp, out, name=name):
            xi, yo = _first_tensor(inp), _first_tensor(out)
            shapes.setdefault(name, (None if xi is None else tuple(xi.shape), None if yo is None else tuple(yo.shape)))
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(torch.empty(1, 3, h, w, device="meta"))
    finally:
        for hk in hooks:
            hk.remove()
    counts = fc.get_flop_counts()
    root = type(m).__name__
    total = fc.get_total_flops() / 1e9
    rows = []
    for name, mod in parts:
        meas = sum(counts.get(f"{root}.{name}", {}).values()) / 1e9
        xs, ys = shapes.get(name, (None, None))
        est = _estimate(mod, xs, ys)
        if meas == 0 and est is None:
            continue
        rows.append(dict(
            name=name, type=type(mod).__name__, size=None if ys is None or len(ys) != 4 else (ys[2], ys[3]),
            channels=None if ys is None or len(ys) < 2 else ys[1], depth=None if est is None else est[2],
            kind=None if est is None else est[0], measured=meas,
            formula=None if est is None else 2 * est[3] / 1e9, exact=None if est is None else 2 * est[4] / 1e9))
    return dict(rows=rows, total=total, other=total - sum(r["measured"] for r in rows))


# ----------------------------------------------------------------------------- 4. sweeps
def _build_scaled(name: str, width: float = 1.0, depth: float = 1.0, nc: int = 80):
    """``name`` with its width / depth multiplied, by its family's ``model.scaled_kwargs`` (a family without one
    has no multipliers)."""
    from yoloforge.families import family_of
    from yoloforge.families.registry import build_model

    if width == 1.0 and depth == 1.0:
        return build_model(name, nc=nc)
    scaled = getattr(family_of(name).module("model"), "scaled_kwargs", None)
    if scaled is None:
        raise ValueError(f"{name}: no {'depth' if depth != 1.0 else 'width'} multiplier option "
                         "(width: yolov4-csp/p5/p6/p7 and yolov6*; depth: yolov6*)")
    return build_model(name, nc=nc, **scaled(name, width, depth))


def sweep(name: str, sizes=None, widths=None, depths=None, nc: int = 80) -> list[dict]:
    """Measured GFLOPs of ``name`` vs one multiplier (the others at 1 / the model's default size).
    Each row: ``dict(axis, value, gflops, ratio, ideal)``; ``ideal`` is the paper's law relative to the
    first value (alpha^2 for size, gamma^2 for width, beta for depth)."""
    from yoloforge.utils.flops import count_gflops

    out = []
    base = _build_scaled(name, nc=nc)
    s0 = getattr(base, "default_imgsz", 640)
    for axis, vals in (("imgsz", sizes), ("width", widths), ("depth", depths)):
        if not vals:
            continue
        first = None
        for v in vals:
            if axis == "imgsz":
                g = count_gflops(base, int(v))
            else:
                g = count_gflops(_build_scaled(name, **{axis: float(v)}, nc=nc), s0)
            first = (v, g) if first is None else first
            p = 1 if axis == "depth" else 2
            out.append(dict(axis=axis, value=v, gflops=g, ratio=g / first[1], ideal=(v / first[0]) ** p))
    return out


# ----------------------------------------------------------------------------- 5. reports
def _g(macs):
    return 2 * macs / 1e9


def formula_report(size: int = 52, b: int = 256, ks=(1, 2, 3, 4, 8), check=(16, 16, 64, 2)) -> str:
    L = ["Scaled-YOLOv4 (arXiv:2011.08036) Sec. 3.1 Table 1: multiply-adds of k layers, base width b, w x h map",
         f"{'layer':6} {'plain':16} {'CSP-ized':24} {'CSP/plain k->inf':>16}"]
    for kind in PLAIN:
        p, c = _KCOEF[kind]
        L.append(f"{kind:6} {_SYMBOL[kind][0]:16} {_SYMBOL[kind][1]:24} {c / p:9.3f} ({(c / p - 1) * 100:+.1f}%)")
    L += ["", f"GFLOPs (= 2 x MACs / 1e9) at w = h = {size}, b = {b}; ratio = CSP / plain",
          f"{'k':>3} " + " ".join(f"{n:>9} {'CSP-' + n:>9} {'ratio':>6}" for n in PLAIN)]
    for k in ks:
        cells = []
        for kind in PLAIN:
            pl, cs = PLAIN[kind](size, size, b, k), CSP[kind](size, size, b, k)
            cells.append(f"{_g(pl):9.3f} {_g(cs):9.3f} {cs / pl:6.3f}")
        L.append(f"{k:>3} " + " ".join(cells))
    L += ["", "Table 2: FLOPs growth for size x alpha, depth x beta, width x gamma (alpha = beta = gamma = 2, k = 4)",
          f"{'layer':10} {'size x2':>8} {'depth x2':>9} {'width x2':>9}  (paper: alpha^2, beta, gamma^2)"]
    for fam, table in (("", PLAIN), ("CSP-", CSP)):
        for kind, f in table.items():
            r0 = f(size, size, b, 4)
            L.append(f"{fam + kind:10} {f(2 * size, 2 * size, b, 4) / r0:8.3f} {f(size, size, b, 8) / r0:9.3f} "
                     f"{f(size, size, 2 * b, 4) / r0:9.3f}")
    L += ["", "Table 3 (tiny models): Dense whgbk + whg^2k(k-1)/2, OSA whbg + whg^2(k-1); 3x3 convs (x9), "
          f"g = b/2, w = h = {size}, b = {b // 4}; CSPOSA-PCB = OSA on b/2 + 1x1 transition kg->kg",
          f"{'k':>3} {'Dense':>9} {'OSA':>9} {'CSPOSA-PCB':>11} {'ResNet':>9}"]
    bt = b // 4
    for k in (2, 3, 4):
        g = bt // 2
        dense, osa = dense_layer(size, size, bt, g, k, 3), osa_layer(size, size, bt, g, k, 3)
        L.append(f"{k:>3} {_g(dense):9.4f} {_g(osa):9.4f} "
                 f"{_g(csposa_pcb_layer(size, size, bt, g, k)):11.4f} {_g(res_layer(size, size, bt, k)):9.4f}")
    w, h, bb, k = check
    L += ["", f"Measured (FlopCounterMode on nn.Modules) vs formula at w = h = {w}, b = {bb}, k = {k}; "
          "BN / activations / residual adds are not counted by either",
          f"{'block':10} {'formula GF':>11} {'measured GF':>12} {'ratio':>7}"]
    for fam, table, cls in (("", PLAIN, PlainLayer), ("CSP-", CSP, CSPLayer)):
        for kind, f in table.items():
            fm, ms = f(w, h, bb, k), measure_macs(cls(kind, bb, k), 1, bb, h, w)
            L.append(f"{fam + kind:10} {_g(fm):11.5f} {_g(ms):12.5f} {ms / fm:7.4f}")
    return "\n".join(L)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def stage_report(name: str, imgsz: int | None = None, nc: int = 80) -> str:
    model = _build_scaled(name, nc=nc)
    imgsz = imgsz or getattr(model, "default_imgsz", 640)
    t = stage_table(model, imgsz)
    L = [f"{name} at {imgsz}x{imgsz}: GFLOPs (2 x MACs) per stage; formula = paper Table 1 (+ the 3x3 s2 "
         "down-sampling conv, counted exactly), exact = closed form of this code's layout",
         f"{'stage':20} {'type':16} {'size':>9} {'ch':>5} {'kind':>10} {'k':>3} {'formula':>9} {'exact':>9} "
         f"{'measured':>9} {'meas/form':>9}"]
    for r in t["rows"]:
        size = "-" if r["size"] is None else f"{r['size'][0]}x{r['size'][1]}"
        ratio = None if not r["formula"] else r["measured"] / r["formula"]
        L.append(f"{r['name']:20} {r['type'][:16]:16} {size:>9} {_fmt(r['channels'], 'd'):>5} {r['kind'] or '-':>10} "
                 f"{_fmt(r['depth'], 'd'):>3} {_fmt(r['formula'], '9.3f'):>9} {_fmt(r['exact'], '9.3f'):>9} "
                 f"{r['measured']:9.3f} {_fmt(ratio, '9.3f'):>9}")
    if abs(t["other"]) > 1e-9:
        L.append(f"{'(outside rows)':20} {'':16} {'':>9} {'':>5} {'':>10} {'':>3} {'':>9} {'':>9} {t['other']:9.3f}")
    L.append(f"{'total':20} {'':16} {'':>9} {'':>5} {'':>10} {'':>3} {'':>9} {'':>9} {t['total']:9.3f}")
    return "\n".join(L)


def sweep_report(name: str, sizes=None, widths=None, depths=None, nc: int = 80) -> str:
    L = [f"{name}: measured GFLOPs vs multiplier (ideal = paper's law: size^2, width^2, depth^1 of the first value)",
         f"{'axis':6} {'value':>7} {'GFLOPs':>10} {'ratio':>7} {'ideal':>7}"]
    for r in sweep(name, sizes, widths, depths, nc):
        L.append(f"{r['axis']:6} {r['value']:>7g} {r['gflops']:10.3f} {r['ratio']:7.3f} {r['ideal']:7.3f}")
    return "\n".join(L)


# ----------------------------------------------------------------------------- 6. CLI
def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def add_parser(subparsers):
    p = subparsers.add_parser("scale", help="Scaled-YOLOv4 model-scaling analysis (FLOPs formulas vs measured)")
    p.add_argument("--model", help="registered model: per-stage FLOPs table (omit for the formula tables)")
    p.add_argument("--imgsz", type=_floats, default=None, help="size; a comma list sweeps the input size")
    p.add_argument("--width", type=_floats, default=None, help="comma list of width multipliers to sweep")
    p.add_argument("--depth", type=_floats, default=None, help="comma list of depth multipliers to sweep")
    p.add_argument("--nc", type=int, default=80, help="number of classes")
    p.add_argument("--b", type=int, default=256, help="formula tables: base width b")
    p.add_argument("--size", type=int, default=52, help="formula tables: feature-map size w = h")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    try:
        if not args.model:
            print(formula_report(args.size, args.b))
            return 0
        sizes = [int(v) for v in args.imgsz] if args.imgsz else None
        if (sizes and len(sizes) > 1) or args.width or args.depth:
            swept = sizes if sizes and len(sizes) > 1 else None
            print(sweep_report(args.model, swept, args.width, args.depth, args.nc))
            return 0
        print(stage_report(args.model, sizes[0] if sizes else None, args.nc))
        return 0
    except ValueError as e:
        print(f"yoloforge scale: error: {e}", file=sys.stderr)
        return 2
