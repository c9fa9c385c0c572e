"""``yoloforge quantize --method compare``: the YOLOv6 paper's int8 ladder (sec. 2.5) for one model in one table.

Rows: fp32; PTQ; PTQ with the ``--skip K`` most sensitive layers in float, ranked by the detector's output error
and by the val mAP drop (the official partial quantization); QAT; QAT with channel-wise distillation. Each row has
its val mAP50-95 / mAP50 through ONNX Runtime and OpenVINO and its latency (median ms per image at batch 1, the
runtimes measured in turn, :func:`yoloforge.bench.measure`). ``report.json`` holds the rows; every model stays in
its folder under ``--output``.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from yoloforge.utils.logging import get_logger

LOG = get_logger()


def _latency_ms(paths: dict[str, Path], imgsz: int, runs: int) -> dict[str, float]:
    from yoloforge.bench import measure
    from yoloforge.export.runtime import load_backend

    times = measure({k: load_backend(p) for k, p in paths.items()}, [1], imgsz, runs=runs, warmup=3)
    return {k: 1e3 * statistics.median(v[1]) for k, v in times.items()}


def compare(weights: str | Path, data: str | Path, out_dir: str | Path | None = None, imgsz: int | None = None,
            n_calib: int = 128, skip: int = 3, epochs: int = 10, scales: str = "", batch: int = 16, workers: int = 2,
            openvino: bool = True, runs: int = 20, hyp_override: dict | None = None, reduce_range: bool | None = None,
            verbose: bool = True) -> list[dict]:
    from yoloforge.engine.evaluator import evaluate_data
    from yoloforge.export.runtime import load_backend
    from yoloforge.quant.ptq import _torch_weights, quantize
    from yoloforge.quant.qat import quantize_qat

    weights = Path(weights)
    out_dir = Path(out_dir) if out_dir else weights.parent / f"{weights.stem}_int8_compare"
    size = int(imgsz or _torch_weights(weights)[1].get("imgsz") or 640)
    common = dict(imgsz=size, n_calib=n_calib, batch=batch, openvino=openvino, verbose=verbose)
    reps = {
        "PTQ": quantize(weights, data, out_dir / "ptq", sensitivity=False, **common),
        f"PTQ + skip {skip} (output error)": quantize(weights, data, out_dir / "ptq_skip_output", skip=skip,
                                                      rank="output", **common),
        f"PTQ + skip {skip} (mAP drop)": quantize(weights, data, out_dir / "ptq_skip_map", skip=skip, rank="map",
                                                  **common),
    }
    qat_kw = dict(common, epochs=epochs, scales=scales, workers=workers, hyp_override=hyp_override,
                  reduce_range=reduce_range)
    reps["QAT"] = quantize_qat(weights, data, out_dir / "qat", distill="none", **qat_kw)
    reps["QAT + CWD"] = quantize_qat(weights, data, out_dir / "qat_cwd", distill="cwd", **qat_kw)

    fp32_map = reps["PTQ"].map["fp32"]
    rows = [{"model": "fp32", "kept_in_float": "", "mAP50-95 onnxruntime": fp32_map[0], "mAP50 onnxruntime": fp32_map[1],
             "onnx": str(out_dir / "ptq" / "model_fp32.onnx")}]
    if openvino:
        from yoloforge.export.openvino import onnx_to_openvino

        rows[0]["openvino"] = str(onnx_to_openvino(rows[0]["onnx"], out_dir / "ptq" / "model_fp32_openvino"))
        m = evaluate_data(load_backend(rows[0]["openvino"]), data, size, batch=batch, verbose=False)
        rows[0].update({"mAP50-95 openvino": m.map, "mAP50 openvino": m.map50})
    for name, rep in reps.items():
        row = {"model": name, "kept_in_float": ",".join(rep.excluded), "weight_bits": rep.weight_bits, "onnx": rep.onnx}
        if rep.openvino:
            row["openvino"] = rep.openvino
        for kind, (m, m50) in rep.map.items():
            if kind != "fp32":
                rt = kind.split("-", 1)[1]
                row[f"mAP50-95 {rt}"], row[f"mAP50 {rt}"] = m, m50
        rows.append(row)
    paths = {(i, rt): Path(r[rt]) for i, r in enumerate(rows) for rt in ("onnx", "openvino") if r.get(rt)}
    lat = _latency_ms({f"{i}/{rt}": p for (i, rt), p in paths.items()}, size, runs)
    for key, ms in lat.items():
        i, rt = key.split("/")
        rows[int(i)][f"ms {'onnxruntime' if rt == 'onnx' else rt}"] = ms
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps({"weights": str(weights), "imgsz": size, "rows": rows}, indent=1))
    return rows


def table(rows: list[dict]) -> str:
    cols = ["mAP50-95 onnxruntime", "mAP50 onnxruntime", "ms onnxruntime", "mAP50-95 openvino", "mAP50 openvino",
            "ms openvino"]
    head = f"{'model':<28}" + "".join(f"{c:>22}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<28}" + "".join(f"{r[c]:>22.4f}" if isinstance(r.get(c), float) else f"{'-':>22}"
                                                   for c in cols))
    return "\n".join(lines)
