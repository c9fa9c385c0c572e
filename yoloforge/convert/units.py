"""Order-based weight transfer: official "units" (conv[+bn], lone bn, lone tensor) -> our modules.

The official side is read generically from a flattened state dict: every ``Conv2d`` /
``ConvTranspose2d`` leaf, together with the ``BatchNorm2d`` that follows it inside the same parent
(``P.conv`` + ``P.bn``, ``P.rbr_dense.0`` + ``P.rbr_dense.1``), is one unit; other BNs and lone
tensors (``implicit``, ``alpha``) are units of their own. Each family module lists our modules as
*slots* in the official order; :func:`transfer` walks both lists, checks every shape and copies.

Slots: ``("cbn", ConvBNAct)``, ``("rep", RepVGGBlock)`` (takes [identity BN], 3x3, 1x1 -- or one fused
3x3), ``("conv", nn.Conv2d)``, ``("bn", BatchNorm2d)``, ``("tensor", Parameter)``,
``("conv+bnpart", nn.Conv2d)`` (a conv-BN source into a plain conv and rows ``opts["bn_part"] = (k, g)``
of the shared BN ``opts["bn"]``: darknet's per-path BN of a CSP stage), with options
``part=(k, g)`` (fill rows ``k/g`` of the destination: grouped convs built from g official convs) and
``perm=[widths]`` (the source concatenates its input blocks in reverse order: reorder the input
channels of the weight). BN ``eps`` differences are compensated exactly by rescaling gamma.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class ConvertError(ValueError):
    """The checkpoint does not fit the model we tried (message names the file and the layer)."""


@dataclass
class Src:
    name: str  # official module prefix, for messages
    kind: str  # "conv" | "bn" | "tensor"
    t: dict = field(default_factory=dict)  # "weight", "bias", "bn.weight", ... (float32)
    eps: float = 1e-5

    @property
    def shape(self):
        return tuple(self.t["weight"].shape) if "weight" in self.t else tuple(self.t["bn.weight"].shape)




def official_units(state: dict, classes: dict | None = None, attrs: dict | None = None,
                   skip=lambda name: False) -> list[Src]:
    """Group a state dict (registration order) into units. ``classes``/``attrs`` (module prefix ->
    class path / plain attributes) tell convs from BNs and give BN eps; without them the tensor
    names decide (``running_mean`` -> BN; 4-D ``weight`` -> conv)."""
    classes, attrs = classes or {}, attrs or {}
    leaves: dict[str, dict] = {}
    for key, t in state.items():
        mod, _, name = key.rpartition(".")
        leaves.setdefault(mod, {})[name] = t
    units: list[Src] = []
    for mod, ts in leaves.items():
        if skip(mod):
            continue
        cls = classes.get(mod, "").rsplit(".", 1)[-1]
        ts = {k: v.float() for k, v in ts.items()}
        w = ts.get("weight")
        is_bn = "BatchNorm" in cls or "running_mean" in ts
        is_conv = not is_bn and w is not None and w.dim() == 4 and ("Conv" in cls or not cls)
        eps = float(attrs.get(mod, {}).get("eps", 1e-5))
        if is_bn:
            parent = mod.rpartition(".")[0]
            prev = units[-1] if units else None
            if (prev is not None and prev.kind == "conv" and "bn.weight" not in prev.t
                    and prev.name.rpartition(".")[0] == parent and prev.t["weight"].shape[0] == ts["weight"].shape[0]
                    and "Transpose" not in classes.get(prev.name, "")):
                prev.t.update({f"bn.{k}": v for k, v in ts.items() if k != "num_batches_tracked"})
                prev.eps = eps
                continue
            units.append(Src(mod, "bn", {f"bn.{k}": v for k, v in ts.items() if k != "num_batches_tracked"}, eps))
        elif is_conv:
            units.append(Src(mod, "conv", dict(ts)))
        else:
            for name, v in ts.items():
                units.append(Src(f"{mod}.{name}" if mod else name, "tensor", {"value": v}))
    return units


def detect_anchors(raw, head: str, family: str) -> tuple[torch.Tensor, list | None]:
    """Anchors in pixels ``(nl, na, 2)`` and the strides of a YOLOv5-style ``Detect`` head (yolov7,
    ScaledYOLOv4): its ``anchor_grid`` buffer, else its ``anchors`` (in strides) times the ``stride``
    attribute of the head or of the model."""
    anchors = raw.state.get(head + ".anchors")
    if anchors is None:
        raise ConvertError(f"{raw.path}: {family} head {head} has no anchors")
    grid = raw.state.get(head + ".anchor_grid")
    stride = raw.attrs.get(head, {}).get("stride")
    if stride is None:
        stride = raw.attrs.get("", {}).get("stride")
    if grid is not None:
        return grid.float().reshape(anchors.shape), stride
    if stride is not None:
        return anchors.float() * torch.as_tensor(stride, dtype=torch.float32).view(-1, 1, 1), stride
    raise ConvertError(f"{raw.path}: {family} head {head} has neither anchor_grid nor stride")


def conv_unit(name: str, weight, bias=None, bn: dict | None = None, eps: float = 1e-5) -> Src:
    """A unit built by hand (darknet): ``bn`` has weight/bias/running_mean/running_var."""
    t = {"weight": weight}
    if bias is not None:
        t["bias"] = bias
    if bn:
        t.update({f"bn.{k}": v for k, v in bn.items()})
    return Src(name, "conv", t, eps)


# ----------------------------------------------------------------------------------------- copying
def _rows(dst: torch.Tensor, part) -> torch.Tensor:
    if part is None:
        return dst
    k, g = part
    n = dst.shape[0] // g
    return dst[k * n:(k + 1) * n]


def _permute_in(w: torch.Tensor, perm) -> torch.Tensor:
    """Source input blocks are ``reversed(perm)``; return the weight with blocks in ``perm`` order."""
    if perm is None:
        return w
    blocks = list(torch.split(w, list(reversed(perm)), dim=1))
    return torch.cat(blocks[::-1], 1)


def _put(dst: torch.Tensor, src: torch.Tensor, part, where: str):
    view = _rows(dst.data, part)
    if tuple(view.shape) != tuple(src.shape):
        raise ConvertError(f"{where}: shape {tuple(src.shape)} does not fit {tuple(view.shape)}")
    if not view.is_meta:  # meta destination: shape check only (recognition dry runs)
        view.copy_(src)


def _set_bn(bn: nn.BatchNorm2d, src: Src, part, where: str, bias_shift=None):
    if "bn.weight" in src.t:
        g, b = src.t["bn.weight"], src.t["bn.bias"]
        mean, var = src.t["bn.running_mean"], src.t["bn.running_var"]
        if bias_shift is not None:  # a conv bias in front of the BN: fold it into the mean
            mean = mean - bias_shift
        if abs(src.eps - bn.eps) > 1e-12:  # same eval output with our eps: rescale gamma
            g = g * torch.sqrt(var + bn.eps) / torch.sqrt(var + src.eps)
    else:  # fused source (conv with bias, no BN): identity BN carrying the bias
        c = _rows(bn.weight.data, part).shape[0]
        g, mean = torch.ones(c), torch.zeros(c)
        var = torch.full((c,), 1.0 - bn.eps)
        b = bias_shift if bias_shift is not None else torch.zeros(c)
    for name, v in (("weight", g), ("bias", b), ("running_mean", mean), ("running_var", var)):
        _put(getattr(bn, name), v, part, f"{where} bn.{name}")


def _fill_cbn(m, src: Src, part=None, perm=None, where=""):
    if src.kind != "conv":
        raise ConvertError(f"{where}: expected a convolution, found {src.kind} {src.name}")
    conv, bn = m.conv, m.bn
    if not isinstance(bn, nn.BatchNorm2d):
        raise ConvertError(f"{where}: our module is fused; convert into an unfused model")
    _put(conv.weight, _permute_in(src.t["weight"], perm), part, where + " conv.weight")
    sb = src.t.get("bias")
    if conv.bias is not None:
        _put(conv.bias, sb if (sb is not None and "bn.weight" in src.t) else torch.zeros_like(_rows(conv.bias, part)),
             part, where + " conv.bias")
        sb = None if "bn.weight" in src.t else sb
    _set_bn(bn, src, part, where, bias_shift=sb)


def _zero_cbn(m, part=None):
    _rows(m.conv.weight.data, part).zero_()
    if m.conv.bias is not None:
        _rows(m.conv.bias.data, part).zero_()
    c = _rows(m.bn.weight.data, part).shape[0]
    _set_bn(m.bn, Src("zero", "conv", {"weight": torch.zeros(1)}), part, "zero", bias_shift=torch.zeros(c))


class Cursor:
    def __init__(self, units: list[Src], path: str):
        self.units, self.i, self.path = units, 0, path

    def peek(self, k: int = 0) -> Src | None:
        return self.units[self.i + k] if self.i + k < len(self.units) else None

    def take(self, where: str) -> Src:
        u = self.peek()
        if u is None:
            raise ConvertError(f"{self.path}: checkpoint has fewer layers than the model ({where} has no source)")
        self.i += 1
        return u


def _fill_rep(m, cur: Cursor, part, perm, where):
    u = cur.peek()
    if getattr(m, "identity", None) is not None and u is not None and u.kind == "bn":
        ident = cur.take(where)
        _set_bn(m.identity, ident, part, where + ".identity")
    else:
        ident = None
    dense = cur.take(where)
    if dense.kind != "conv" or dense.t["weight"].shape[-1] != 3:
        raise ConvertError(f"{where}: expected a 3x3 convolution, found {dense.name} {dense.shape}")
    nxt = cur.peek()
    if (nxt is not None and nxt.kind == "conv" and nxt.t["weight"].shape[-1] == 1
            and nxt.t["weight"].shape[:2] == dense.t["weight"].shape[:2] and "bn.weight" in dense.t):
        _fill_cbn(m.dense, dense, part, perm, where + ".dense")
        _fill_cbn(m.one, cur.take(where), part, perm, where + ".one")
    else:  # fused RepConv: 3x3 with bias into the 3x3 branch, 1x1 branch zero
        _fill_cbn(m.dense, dense, part, perm, where + ".dense")
        _zero_cbn(m.one, part)
    if ident is None and getattr(m, "identity", None) is not None:  # fused source: identity branch off
        bn = m.identity
        _set_bn(bn, Src("zero", "bn", {"bn.weight": torch.zeros(bn.num_features), "bn.bias": torch.zeros(bn.num_features),
                                       "bn.running_mean": torch.zeros(bn.num_features),
                                       "bn.running_var": torch.ones(bn.num_features)}, bn.eps), part, where)


def transfer(slots: list[tuple], units: list[Src], path: str, dry_run: bool = False) -> None:
    """Copy ``units`` into the ``slots`` (``(kind, module, name, opts)``) in order; every unit must be used."""
    cur = Cursor(units, str(path))
    with torch.no_grad():
        for kind, m, name, opts in slots:
            part, perm = opts.get("part"), opts.get("perm")
            where = f"{path}: {name}"
            if kind == "cbn":
                _fill_cbn(m, cur.take(name), part, perm, where)
            elif kind == "rep":
                _fill_rep(m, cur, part, perm, where)
            elif kind == "conv":
                u = cur.take(name)
                if u.kind != "conv" or "bn.weight" in u.t:
                    raise ConvertError(f"{where}: expected a plain convolution, found {u.name}")
                _put(m.weight, _permute_in(u.t["weight"], perm), part, where + ".weight")
                if m.bias is not None:
                    _put(m.bias, u.t.get("bias", torch.zeros(m.out_channels)), part, where + ".bias")
            elif kind == "conv+bnpart":  # conv-BN source -> our plain conv + rows ``bn_part`` of a shared BN
                u = cur.take(name)
                if u.kind != "conv" or "bn.weight" not in u.t:
                    raise ConvertError(f"{where}: expected a convolution with batch norm, found {u.name}")
                _put(m.weight, _permute_in(u.t["weight"], perm), part, where + ".weight")
                _set_bn(opts["bn"], u, opts["bn_part"], where)
            elif kind == "bn":
                u = cur.take(name)
                if u.kind != "bn":
                    raise ConvertError(f"{where}: expected a batch norm, found {u.name}")
                _set_bn(m, u, part, where)
            elif kind == "tensor":
                u = cur.take(name)
                if u.kind != "tensor":
                    raise ConvertError(f"{where}: expected a tensor, found {u.name}")
                _put(m, u.t["value"].reshape(_rows(m.data, part).shape) if u.t["value"].numel() == _rows(
                    m.data, part).numel() else u.t["value"], part, where)
            else:
                raise ValueError(kind)
    if cur.peek() is not None:
        raise ConvertError(f"{path}: checkpoint has more layers than the model ({cur.peek().name} and "
                           f"{len(units) - cur.i - 1} more unused)")


def slots_of(module: nn.Module, name: str, **opts) -> list[tuple]:
    """Default slot list of a module: its conv/BN/rep units in registration order."""
    from yoloforge.models.common import ConvBNAct, RepVGGBlock

    if isinstance(module, ConvBNAct):
        return [("cbn", module, name, opts)]
    if isinstance(module, RepVGGBlock):
        return [("rep", module, name, opts)]
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return [("conv", module, name, opts)]
    if isinstance(module, nn.BatchNorm2d):
        return [("bn", module, name, opts)]
    out = [("tensor", p, f"{name}.{n}", opts) for n, p in module.named_parameters(recurse=False)]
    for n, child in module.named_children():
        out += slots_of(child, f"{name}.{n}" if name else n, **opts)
    return out
