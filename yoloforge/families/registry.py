"""Model registry: ``name -> builder``.

A family module registers one builder per variant::

    from yoloforge.families.registry import register

    @register("yolov7-tiny")
    def yolov7_tiny(nc=80, **kw): ...

``build_model`` / ``list_models`` import the family modules listed in :data:`FAMILY_MODULES` on
first use: a family folder listed in ``yoloforge.families.FAMILIES`` (or one ``register`` call from anywhere).
"""
from __future__ import annotations

import importlib
from typing import Callable

from yoloforge.families import FAMILIES

_REGISTRY: dict[str, Callable] = {}

#: Modules that register builders when imported: every family's ``model`` (yoloforge/families/<name>/model.py).
FAMILY_MODULES = tuple(f"{fam.package}.model" for fam in FAMILIES)
_loaded = False


def register(name: str):
    """Decorator registering ``fn(nc=80, **kw) -> DetectionModel`` under ``name`` (lower case)."""
    key = name.lower()

    def deco(fn: Callable) -> Callable:
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            prev = _REGISTRY[key]
            if (getattr(prev, "__module__", None), getattr(prev, "__qualname__", None)) != (
                    getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)):
                raise ValueError(f"model name {name!r} is already registered by {prev.__module__}")
        _REGISTRY[key] = fn
        return fn

    return deco


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for mod in FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # the family file is not written yet; its own bugs still raise
            if e.name != mod:
                raise
    _loaded = True


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    _load_families()
    return sorted(_REGISTRY)


def build_model(name: str, nc: int = 80, **kw):
    """Build a registered model: ``build_model("yolov6s", nc=20)``. Unknown name -> ``ValueError``."""
    _load_families()
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key](nc=nc, **kw)
