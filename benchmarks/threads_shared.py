"""Training on a shared CPU: a fixed thread count (one per core, what torch picks) vs ``--threads 0`` (the cores
other processes leave free, checked every epoch), with 2 loader workers or ``--workers -1`` (auto: no more than
the free cores at the start), alone and next to a competing job, side by side in one run.

    python benchmarks/threads_shared.py [--epochs 3] [--imgsz 160] [--competitor torch|spin]

The trainings are yolov6n on 200 generated images (batch 16, no validation until the end); the
figure is the median epoch time of epochs 2.. (results.csv ``time_s``; epoch 1 holds the warm-up of the loaders).
The competitor runs on one core: ``torch`` a 1-thread matmul loop (another job's compute), ``spin`` a Python busy
loop. Prints one table: epoch seconds and the slowdown against the same setting alone.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import shapes_data, table

from yoloforge.utils.cpu import available_cores

COMPETITORS = {
    "torch": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True: a = (a @ a).tanh()",
    "spin": "while True: pass",
}


def train(data: Path, out: Path, setting: tuple[int, int], a) -> float:
    threads, workers = setting
    name = f"t{threads}_{int(time.time() * 1000)}"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # auto reads no fixed count
    subprocess.run([sys.executable, "-m", "yoloforge", "train", "--model", "yolov6n", "--data", str(data), "--epochs",
                    str(a.epochs), "--imgsz", str(a.imgsz), "--batch", "16", "--workers", str(workers),
                    "--threads", str(threads),
                    "--val-interval", "999", "--no-plots", "--no-tensorboard", "--hyp", "small-data", "--project",
                    str(out), "--name", name, "--exist-ok"], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(out / name / "results.csv") as f:
        times = [float(r["time_s"]) for r in csv.DictReader(f)]
    return statistics.median(times[1:] or times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--competitor", default="torch", choices=sorted(COMPETITORS))
    a = ap.parse_args()
    cores = available_cores()
    data = shapes_data(200, 8, a.imgsz)
    out = Path(tempfile.mkdtemp(prefix="yoloforge_threads_"))
    settings = {f"--threads {cores} --workers 2 (fixed)": (cores, 2), "--threads 0 --workers 2": (0, 2),
                "--threads 0 --workers -1 (both auto, the default)": (0, -1)}
    alone = {k: train(data, out, t, a) for k, t in settings.items()}
    rival = subprocess.Popen([sys.executable, "-c", COMPETITORS[a.competitor]])
    try:
        time.sleep(1.0)
        shared = {k: train(data, out, t, a) for k, t in settings.items()}
    finally:
        rival.kill()
        rival.wait()
    rows = [[k, f"{alone[k]:.1f}", f"{shared[k]:.1f}", f"{shared[k] / alone[k]:.2f}x"] for k in settings]
    print(f"yolov6n, 200 images at {a.imgsz}, batch 16, {cores} cores; competitor: "
          f"{a.competitor} on 1 core")
    print(table(["setting", "epoch s alone", "epoch s with the competitor", "slowdown"], rows))


if __name__ == "__main__":
    main()
