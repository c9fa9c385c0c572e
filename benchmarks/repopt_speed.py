"""Training throughput of YOLOv6's three training modes side by side: RepVGG blocks (3x3 + 1x1 + identity
branches, each with its BN), the RepOpt hyper-search blocks (scaled branches, one BN) and the RepOpt plain
network (one 3x3 conv + BN per block, trained by the RepOptimizer's masked SGD).

    python benchmarks/repopt_speed.py [--models yolov6n,yolov6s] [--imgsz 320] [--batch 8] [--rounds 8]

One training step = forward, loss, backward, optimizer step, on the same augmented batch for every mode (data
loading is left out: it is the same for all three). The modes take turns step by step (lock-step rounds), so
machine noise hits them alike; the table gives the median step time, img/s and the ratio to RepVGG.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import shapes_data, table

from yoloforge.config import load_hyp
from yoloforge.data.dataset import DetectionDataset
from yoloforge.data.formats import load_data_yaml
from yoloforge.data.loader import build_dataloader
from yoloforge.engine.optim import build_optimizer
from yoloforge.families.yolov6.repopt import RepOptimizer, extract_scales
from yoloforge.families.registry import build_model

MODES = ("repvgg", "hyper_search", "repopt")


def make_step(name: str, mode: str, nc: int, scales):
    torch.manual_seed(0)
    model = build_model(name, nc=nc, training_mode=mode).train()
    hyp = load_hyp(model.default_hyp, name)
    loss_fn = model.build_loss(hyp)
    cls = RepOptimizer if mode == "repopt" else torch.optim.SGD
    opt = build_optimizer(model, hyp, hyp["weight_decay"], cls=cls)
    if mode == "repopt":
        opt.attach(model, scales)

    def step(imgs, targets):
        loss, _ = loss_fn(model(imgs), targets, 10)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov6n,yolov6s")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8, help="measured steps per mode (after 2 warm-up rounds)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = load_data_yaml(shapes_data(n_train=64, imgsz=a.imgsz))
    hyp = load_hyp("yolov6", "yolov6n")
    ds = DetectionDataset(data.train, data.names, imgsz=a.imgsz, augment=True, hyp=hyp, verbose=False)
    imgs, targets, _ = next(iter(build_dataloader(ds, a.batch, 0, shuffle=True, seed=0)))
    imgs = imgs.float() / 255
    rows = []
    for name in a.models.split(","):
        scales = extract_scales(build_model(name, nc=len(data.names), training_mode="hyper_search"))
        steps = {m: make_step(name, m, len(data.names), scales) for m in MODES}
        times = {m: [] for m in MODES}
        for r in range(a.rounds + 2):
            for m in MODES:
                t = time.perf_counter()
                steps[m][0](imgs, targets)
                if r >= 2:
                    times[m].append(time.perf_counter() - t)
        base = statistics.median(times["repvgg"])
        for m in MODES:
            med = statistics.median(times[m])
            rows.append([name, m, f"{steps[m][1] / 1e6:.2f}", f"{1e3 * med:.0f}", a.batch / med, base / med])
    print(f"training step, imgsz {a.imgsz}, batch {a.batch}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, median of {a.rounds} lock-step rounds")
    print(table(["model", "training mode", "train params (M)", "step ms", "img/s", "speed vs repvgg"], rows))


if __name__ == "__main__":
    main()
