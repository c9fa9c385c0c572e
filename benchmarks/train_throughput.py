"""Training throughput (img/s, forward+backward+step) by model and image size, and how much of a step the
data loader takes.

    python benchmarks/train_throughput.py [--models yolov6n,yolov6s] [--sizes 320,640] [--batch 8] [--steps 6]
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
from yoloforge.engine.optim import build_optimizer
from yoloforge.families.registry import build_model


def measure(name: str, imgsz: int, batch: int, steps: int, workers: int, data) -> tuple[float, float, float]:
    model = build_model(name, nc=len(data.names)).train()
    hyp = load_hyp(model.default_hyp, name)
    loss_fn = model.build_loss(hyp)
    opt = build_optimizer(model, hyp, hyp["weight_decay"])
    ds = DetectionDataset(data.train, data.names, imgsz=imgsz, augment=True, hyp=hyp, verbose=False)
    loader = build_dataloader(ds, batch, workers, shuffle=True, seed=0)
    it = iter(loader)
    t_data = t_step = 0.0
    n = 0
    for k in range(steps + 1):
        t0 = time.perf_counter()
        try:
            imgs, targets, _ = next(it)
        except StopIteration:
            it = iter(loader)
            imgs, targets, _ = next(it)
        t1 = time.perf_counter()
        loss, _ = loss_fn(model(imgs.float() / 255), targets, 10)
        loss.backward()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        if k:  # the first step warms up
            t_data, t_step, n = t_data + t1 - t0, t_step + t2 - t1, n + len(imgs)
    return n / (t_data + t_step), t_data / (t_data + t_step), n / t_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="yolov6n,yolov6s")
    ap.add_argument("--sizes", default="320,640")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    data = load_data_yaml(shapes_data(n_train=64, imgsz=640))
    rows = []
    for name in a.models.split(","):
        for s in map(int, a.sizes.split(",")):
            ips, frac, model_ips = measure(name, s, a.batch, a.steps, a.workers, data)
            rows.append([name, s, a.batch, ips, model_ips, f"{100 * frac:.1f}%"])
    print(f"training throughput, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.workers} workers")
    print(table(["model", "imgsz", "batch", "img/s (end to end)", "img/s (fwd+bwd+step)", "waiting on data"], rows))


if __name__ == "__main__":
    main()
