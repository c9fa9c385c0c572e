"""Inference latency: eager (unfused) vs fused, batch 1 and 8, per model.

    python benchmarks/inference_latency.py [--models yolov6n,yolov6s] [--imgsz 640] [--n 10]
"""
from __future__ import annotations

import argparse
import copy

import torch
from _common import median_ms, table, timeit

from yoloforge.families.registry import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="yolov6n,yolov6t,yolov6s")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--n", type=int, default=10)
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        eager = build_model(name).eval()
        fused = copy.deepcopy(eager).fuse()
        for bs in (1, 8):
            x = torch.rand(bs, 3, a.imgsz, a.imgsz)
            with torch.inference_mode():
                # alternate eager and fused so machine noise hits both alike
                te, tf = [], []
                for _ in range(a.n):
                    te += timeit(lambda: eager(x), n=1, warmup=0 if te else 1)
                    tf += timeit(lambda: fused(x), n=1, warmup=0 if tf else 1)
            e, f = median_ms(te), median_ms(tf)
            rows.append([name, bs, e, f, e / f, 1e3 * bs / f])
    print(f"inference latency at {a.imgsz}, torch {torch.__version__}, {torch.get_num_threads()} threads (median ms)")
    print(table(["model", "batch", "eager ms", "fused ms", "eager/fused", "fused img/s"], rows))


if __name__ == "__main__":
    main()
