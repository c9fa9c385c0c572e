"""Weights and training state on disk, always written atomically.

* Weights: ``*.safetensors`` with the model's tensors (float32, unfused) and JSON metadata under the
  key ``yoloforge`` (model name, build kwargs, class names, image size, epoch, metrics, hyp).
  Nothing executable is ever read back.
* Resume state: ``*.state.pt`` holding tensors, numbers, strings, lists and dicts only, read with
  ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the file named in the message."""


def _disk_full(e: BaseException, where: Path) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    if "no space left" in text or "disk quota" in text:
        return True
    try:  # torch's and safetensors' writers raise their own errors: look at the disk itself
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


def atomic_write(path: str | Path, writer) -> Path:
    """Call ``writer(tmp_path)`` then move the file into place with ``os.replace``: a failed or killed write
    leaves the previous file as it was. A full disk is a :class:`CheckpointError` saying so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and _disk_full(e, path.parent):
            raise CheckpointError(f"no space left on the disk of {path.parent} while writing {path.name}; "
                                  f"the previous {path.name} is kept (free some space, then --resume)") from None
        raise
    return path


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of tensor names, dtypes, shapes and bytes (in name order): what a checkpoint's integrity is
    checked against when it is read back."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone keeps each tensor on its own buffer
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
            for k, v in state.items()}


def save_weights(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write a model's state dict and metadata to ``path`` (.safetensors), atomically."""
    from safetensors.torch import save_file

    meta = dict(meta, format_version=FORMAT_VERSION)
    meta.setdefault("model", getattr(model, "name", ""))
    meta.setdefault("build_kwargs", getattr(model, "build_kwargs", {}))
    if getattr(model, "qat", None) is not None:  # quantization-aware: load_model rebuilds its QAT form
        meta.setdefault("qat", model.qat)
    tensors = _plain_state(model.state_dict())
    meta["content_sha256"] = tensors_sha256(tensors)
    return atomic_write(path, lambda p: save_file(tensors, p, metadata={"yoloforge": json.dumps(meta)}))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(state_dict, meta)`` from a yoloforge .safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("yoloforge")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without yoloforge metadata (not written by yoloforge)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path}: its yoloforge metadata is not valid JSON (a damaged file?)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) or not meta.get("model"):
        raise CheckpointError(f"{path}: its yoloforge metadata names no model (a damaged or foreign file)")
    want = meta.get("content_sha256")
    if want and tensors_sha256(state) != want:
        raise CheckpointError(f"{path}: the tensor data does not match its content hash: the file is damaged "
                              "(a flipped bit, a partial copy); use another copy")
    return state, meta


def _state_hash(state: dict[str, Any]) -> str:
    return tensors_sha256({f"{part}.{k}": v for part in ("model", "ema") for k, v in (state.get(part) or {}).items()})


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a resume state (tensors and plain Python values only), atomically, with a hash of its weights."""
    state = dict(state, content_sha256=_state_hash(state))
    return atomic_write(path, lambda p: torch.save(state, p))


def require_keys(state: dict, path, required) -> None:
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: resume state lacks {', '.join(missing)} (not written by yoloforge's trainer, "
                              "or damaged); start a new run, or fine-tune from weights with --weights")


def load_state(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a resume state; CheckpointError (naming the file) if it is unreadable, damaged, or lacks a key of
    ``required``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read resume state ({e.__class__.__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a yoloforge resume state (a {type(state).__name__})")
    require_keys(state, path, required)
    want = state.get("content_sha256")
    if want and _state_hash(state) != want:
        raise CheckpointError(f"{path}: its weights do not match its content hash: the file is damaged; "
                              "resume from a copy, or fine-tune from last.safetensors with --weights")
    return state
