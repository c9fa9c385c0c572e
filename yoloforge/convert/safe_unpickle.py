"""Read pickled PyTorch checkpoints without executing any code from the file.

Official YOLO checkpoints (yolov7, meituan/YOLOv6, ScaledYOLOv4 yolov4-large) pickle whole
``nn.Module`` objects, which ``torch.load(weights_only=True)`` refuses and ``weights_only=False``
would import and run (any ``__reduce__`` in the file runs on load). Here ``torch.load`` gets a
*restricted pickle module*: its unpickler resolves only an allowlist (tensor/parameter rebuild
functions, ``OrderedDict``, ``torch.Size``, dtypes, numpy scalar/array reconstruction); every other
global becomes an inert :class:`Stub` class that only records its constructor arguments and state.
Storages are resolved by torch itself. Works for the zip format and the legacy (pre-1.6) format.

Stub module trees are flattened into a dotted state dict (``_parameters`` + persistent
``_buffers`` of every ``_modules`` child), which reproduces ``state_dict()`` of the original.
Globals that only an attack would reference (``os.system``, ``builtins.eval``, ``subprocess`` ...)
are never called: they are stubbed, and :func:`load_pickled` then refuses the file.
"""
from __future__ import annotations

import collections
import io
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Stub", "UnsafeCheckpointError", "FormatError", "RawCheckpoint", "load_pickled", "flatten_module",
           "is_stub", "stub_class"]


class FormatError(ValueError):
    """The file is not a checkpoint this loader understands (message names the file)."""


class UnsafeCheckpointError(FormatError):
    """The file references code an honest checkpoint never needs (e.g. ``os.system``)."""


# Modules/names that a model checkpoint never references; seeing one means the file tries to run code.
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy",
                      "pty", "ctypes", "code", "codeop", "pickle", "_pickle", "marshal", "webbrowser", "signal",
                      "multiprocessing", "asyncio", "urllib", "http", "requests", "tempfile", "io", "_io")
_DANGEROUS_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "setattr", "delattr",
                       "globals", "locals", "vars", "input", "breakpoint", "exit", "quit", "apply", "execfile"}


class Stub:
    """Inert stand-in for any class or function a checkpoint names: never runs code."""

    _stub_path = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __init__(self, *args, **kwargs):  # REDUCE calls cls(*args): nothing to do
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slotstate)
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})
        else:
            self.__dict__["_stub_state"] = state

    def __repr__(self):
        return f"<stub {self._stub_path}>"


_STUB_CLASSES: dict[str, type] = {}


def stub_class(path: str) -> type:
    """The (cached) stub class standing for the global ``path`` ("module.Name")."""
    if path not in _STUB_CLASSES:
        _STUB_CLASSES[path] = type(path.rsplit(".", 1)[-1], (Stub,), {"_stub_path": path})
    return _STUB_CLASSES[path]


def is_stub(obj) -> bool:
    return isinstance(obj, Stub)


def class_path(obj) -> str:
    """Class path of a stub instance (``copyreg._reconstructor`` indirections resolved)."""
    path = getattr(obj, "_stub_path", type(obj).__module__ + "." + type(obj).__qualname__)
    if path == "copyreg._reconstructor" and obj._stub_args:
        return getattr(obj._stub_args[0], "_stub_path", "?")
    return path


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch._tensor._rebuild_from_type_v2, restricted to plain tensors and parameters
    if new_type not in (torch.Tensor, torch.nn.Parameter) or func not in _TENSOR_FUNCS:
        raise pickle.UnpicklingError(f"refusing tensor subclass {new_type!r}")
    ret = func(*args)
    if type(ret) is not new_type:
        ret = ret.as_subclass(new_type)
    return ret


def _allowed() -> dict[tuple[str, str], Any]:
    import torch._utils as tu

    table = {("collections", "OrderedDict"): collections.OrderedDict,
             ("torch", "Size"): torch.Size, ("torch", "device"): torch.device, ("torch", "Tensor"): torch.Tensor,
             ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
             ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
             ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
             ("builtins", "complex"): complex, ("__builtin__", "set"): set}
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state",
                 "_rebuild_qtensor"):
        if hasattr(tu, name):
            table[("torch._utils", name)] = getattr(tu, name)
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            table[("torch", name)] = getattr(torch, name)
    try:
        import codecs

        import numpy as np
        try:
            from numpy._core import multiarray as ma
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray as ma
        for m in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(m, "scalar")] = ma.scalar
            table[(m, "_reconstruct")] = ma._reconstruct
        table[("numpy", "ndarray")] = np.ndarray
        table[("numpy", "dtype")] = np.dtype
        table[("_codecs", "encode")] = codecs.encode
        for n in dir(getattr(np, "dtypes", None) or ()):
            if n.endswith("DType"):
                table[("numpy.dtypes", n)] = getattr(np.dtypes, n)
    except Exception:  # numpy is optional here: its objects then become stubs
        pass
    return {k: v for k, v in table.items() if v is not None}


_TENSOR_FUNCS: tuple = ()


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` returns allowlisted objects or inert stubs; records what it saw."""

    allowed: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.globals_seen: set[str] = set()
        _SEEN.append(self.globals_seen)

    def find_class(self, module: str, name: str):
        path = f"{module}.{name}"
        self.globals_seen.add(path)
        obj = RestrictedUnpickler.allowed.get((module, name))
        return obj if obj is not None else stub_class(path)


_SEEN: list[set] = []


def _pickle_module() -> types.ModuleType:
    """A module object that ``torch.load(pickle_module=...)`` can use."""
    global _TENSOR_FUNCS
    if not RestrictedUnpickler.allowed:
        RestrictedUnpickler.allowed = _allowed()
        import torch._utils as tu
        _TENSOR_FUNCS = tuple(getattr(tu, n) for n in ("_rebuild_tensor_v2", "_rebuild_tensor") if hasattr(tu, n))
    mod = types.ModuleType("yoloforge_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
    mod.loads = lambda b, **kw: RestrictedUnpickler(io.BytesIO(b), **kw).load()
    mod.UnpicklingError = pickle.UnpicklingError
    mod.__version__ = "restricted"
    return mod


def _dangerous(paths: set[str]) -> list[str]:
    bad = []
    for p in sorted(paths):
        mod, _, name = p.rpartition(".")
        top = mod.split(".")[0]
        if top in _DANGEROUS_MODULES or (top in ("builtins", "__builtin__") and name in _DANGEROUS_BUILTINS):
            bad.append(p)
    return bad


@dataclass
class RawCheckpoint:
    """What a checkpoint file holds, with no code from it executed."""

    path: Path
    kind: str  # "torch-zip" | "torch-legacy" | "darknet"
    state: "collections.OrderedDict[str, torch.Tensor]"
    classes: dict[str, str] = field(default_factory=dict)  # module prefix ("" = root) -> class path
    attrs: dict[str, dict] = field(default_factory=dict)  # module prefix -> plain attributes
    top: dict = field(default_factory=dict)  # top-level dict entries other than the model (epoch, ...)
    source_key: str = ""  # which top-level entry the model came from ("ema", "model", "")
    dtype: torch.dtype = torch.float32
    globals_seen: set[str] = field(default_factory=set)


def _plain(v):
    """Keep attribute values that are plain data (numbers, strings, lists, dicts, tensors)."""
    if isinstance(v, (bool, int, float, str, type(None), torch.Tensor)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_plain(x) for x in v]
        return None if any(x is _DROP for x in items) else type(v)(items) if isinstance(v, list) else tuple(items)
    if isinstance(v, dict):
        out = {k: _plain(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not _DROP}
    return _DROP


_DROP = object()


def flatten_module(root, prefix: str = "") -> tuple[collections.OrderedDict, dict, dict]:
    """Stub (or real) module tree -> ``(state_dict, classes, attrs)`` with dotted keys."""
    state: collections.OrderedDict = collections.OrderedDict()
    classes, attrs = {}, {}
    stack = [(prefix, root)]
    visited = set()
    while stack:
        pre, mod = stack.pop()
        if id(mod) in visited:
            continue
        visited.add(id(mod))
        d = getattr(mod, "__dict__", {})
        classes[pre.rstrip(".")] = class_path(mod)
        attrs[pre.rstrip(".")] = {k: p for k, p in ((k, _plain(v)) for k, v in d.items()
                                                  if not k.startswith("_") and k != "training") if p is not _DROP}
        for name, t in (d.get("_parameters") or {}).items():
            if t is not None:
                state[pre + name] = t
        skip = d.get("_non_persistent_buffers_set") or set()
        for name, t in (d.get("_buffers") or {}).items():
            if t is not None and name not in skip:
                state[pre + name] = t
        children = list((d.get("_modules") or {}).items())
        for name, child in reversed(children):  # stack: keep registration order
            if child is not None:
                stack.append((f"{pre}{name}.", child))
    return state, classes, attrs


def _refuse_dangerous(path: Path) -> set[str]:
    seen = set().union(*_SEEN) if _SEEN else set()
    bad = _dangerous(seen)
    if bad:
        raise UnsafeCheckpointError(f"{path}: refused: the file references {', '.join(bad)} "
                                    "(code that a weights file never needs; nothing was executed)")
    return seen


def _torch_load(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    zipped = head[:4] == b"PK\x03\x04"
    if zipped:
        try:
            zipfile.ZipFile(path).testzip()
        except Exception as e:
            raise FormatError(f"{path}: truncated or corrupt checkpoint (zip: {e})") from None
    elif head[:1] != b"\x80":
        raise FormatError(f"{path}: not a PyTorch checkpoint (neither zip nor pickle; for darknet .weights pass --cfg)")
    _SEEN.clear()
    try:
        with warnings.catch_warnings():  # legacy files: "Couldn't retrieve source code for container ..."
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module())
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, zipfile.BadZipFile) as e:
        _refuse_dangerous(path)
        msg = str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__
        raise FormatError(f"{path}: truncated or unreadable checkpoint ({e.__class__.__name__}: {msg})") from None
    seen = _refuse_dangerous(path)
    return obj, ("torch-zip" if zipped else "torch-legacy"), seen


def _is_tensor_dict(d) -> bool:
    return isinstance(d, dict) and len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def load_pickled(path: str | Path) -> RawCheckpoint:
    """Read a ``.pt``/``.pth`` checkpoint safely into a :class:`RawCheckpoint`.

    Accepts whole-module checkpoints (``{'model': Model, 'ema': Model, ...}`` or a bare module) and
    plain state dicts (``{'model': OrderedDict}``, ``{'state_dict': ...}`` or a bare OrderedDict).
    """
    path = Path(path)
    obj, kind, seen = _torch_load(path)
    top, source_key, model = {}, "", obj
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        top = {k: _plain(v) for k, v in obj.items() if isinstance(k, str)}
        top = {k: v for k, v in top.items() if v is not _DROP and not isinstance(v, torch.Tensor)}
        for key in ("ema", "model", "state_dict", "model_state_dict"):
            if obj.get(key) is not None and (is_stub(obj[key]) or _is_tensor_dict(obj[key])):
                source_key, model = key, obj[key]
                break
        else:
            raise FormatError(f"{path}: checkpoint dict without a model (keys: {', '.join(map(str, obj))[:200]})")
    if _is_tensor_dict(model):
        state = collections.OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in model.items())
        classes, attrs = {}, {}
    elif is_stub(model):
        state, classes, attrs = flatten_module(model)
        if not state:
            raise FormatError(f"{path}: the pickled object {class_path(model)} holds no tensors")
    else:
        raise FormatError(f"{path}: unknown checkpoint content ({type(model).__name__}); "
                          "expected a pickled model or a state dict")
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32
    return RawCheckpoint(path=path, kind=kind, state=state, classes=classes, attrs=attrs, top=top,
                         source_key=source_key, dtype=dtype, globals_seen=seen)
