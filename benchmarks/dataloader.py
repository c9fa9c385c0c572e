"""Data-loader throughput (img/s with mosaic + augmentation) next to the training speed it must feed.

    python benchmarks/dataloader.py [--imgsz 640] [--batch 8] [--workers 0,1,2]
"""
from __future__ import annotations

import argparse
import time

import torch
from _common import shapes_data, table

from yoloforge.config import load_hyp
from yoloforge.data.dataset import DetectionDataset
from yoloforge.data.formats import load_data_yaml
from yoloforge.data.loader import build_dataloader
from yoloforge.families.registry import build_model


def loader_ips(ds, batch: int, workers: int, batches: int) -> float:
    loader = build_dataloader(ds, batch, workers, shuffle=True, seed=0)
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            imgs, _, _ = next(it)
        except StopIteration:
            it = iter(loader)
            imgs, _, _ = next(it)
        n += len(imgs)
    return n / (time.perf_counter() - t)


def train_ips(name: str, imgsz: int, batch: int, nc: int) -> float:
    model = build_model(name, nc=nc).train()
    loss_fn = model.build_loss(load_hyp(model.default_hyp, name))
    x = torch.rand(batch, 3, imgsz, imgsz)
    t = torch.tensor([[i, 0, 10, 10, 60, 80] for i in range(batch)], dtype=torch.float32)
    loss_fn(model(x), t, 10)[0].backward()
    t0 = time.perf_counter()
    for _ in range(2):
        loss_fn(model(x), t, 10)[0].backward()
    return 2 * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batches", type=int, default=8)
    a = ap.parse_args()
    data = load_data_yaml(shapes_data(n_train=64, imgsz=640))
    ds = DetectionDataset(data.train, data.names, imgsz=a.imgsz, augment=True, hyp=load_hyp("yolov6"), verbose=False)
    need = {m: train_ips(m, a.imgsz, a.batch, len(data.names)) for m in ("yolov6n", "yolov6s")}
    rows = []
    for w in map(int, a.workers.split(",")):
        ips = loader_ips(ds, a.batch, w, a.batches)
        rows.append([w, ips] + [ips / v for v in need.values()])
    print(f"data loader at {a.imgsz} (mosaic on), batch {a.batch}; training speed: "
          + ", ".join(f"{k} {v:.1f} img/s" for k, v in need.items()))
    print(table(["workers", "loader img/s"] + [f"loader/{k} train" for k in need], rows))


if __name__ == "__main__":
    main()
