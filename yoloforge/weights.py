"""Load a model from any weights file: the one entry point above the models, the converter and QAT.

* yoloforge ``.safetensors`` (:func:`yoloforge.utils.checkpoint.read_weights`): the model named in the
  metadata, rebuilt and filled; QAT weights (metadata ``qat``) in their QAT form first.
* Official checkpoints (yolov7 / YOLOv6 / ScaledYOLOv4 ``.pt``, darknet ``.weights`` with a ``.cfg``):
  converted on the fly by the safe converter (:mod:`yoloforge.convert`).

``utils.checkpoint`` stays the file format (atomic writes, metadata, hashes, resume states) and imports
nothing of the package above it.
"""
from __future__ import annotations

from pathlib import Path

from yoloforge.utils.checkpoint import CheckpointError, read_weights


def load_model(path: str | Path, cfg: str | Path | None = None):
    """Rebuild the model named in the file's metadata and load its weights.

    Official checkpoints (yolov7 / YOLOv6 / ScaledYOLOv4 ``.pt``, darknet ``.weights`` with ``cfg``) are
    converted on the fly by the safe converter, with a one-line notice.
    """
    from yoloforge.families.registry import build_model

    if Path(path).suffix.lower() != ".safetensors":
        from yoloforge.convert import load_official
        from yoloforge.utils.logging import get_logger

        model, meta = load_official(path, cfg=cfg)
        get_logger().info(f"{path}: official {meta.get('source', {}).get('family', '')} checkpoint converted on the "
                          f"fly to {meta['model']} ({meta['nc']} classes); `yoloforge convert` saves it once")
        return model, meta
    state, meta = read_weights(path)
    model = build_model(meta["model"], **meta.get("build_kwargs", {}))
    if meta.get("qat") is not None:  # quantization-aware weights: the QAT form first (merged blocks, quantizers)
        from yoloforge.quant.fake_quant import prepare

        q = meta["qat"]
        model = prepare(model, q.get("excluded", ()), q.get("reduce_range", False), q.get("act_quant", False))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {meta['model']} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.names = list(meta.get("names") or [str(i) for i in range(model.nc)])
    return model, meta
