"""bf16 autocast against fp32: the demo training, same seeds, side by side (issue "Training speed", part 1).

    python benchmarks/amp_demo.py [--seeds 0,1] [--model yolov6n] [--epochs 26] [--out docs/amp]

Every run is ``yoloforge demo``'s training (benchmarks/_common.DEMO: 400 / 100 generated shapes at 160, 26
epochs, batch 16, the small-data recipe) with validation after every epoch, once with ``--amp off`` (fp32)
and once with ``--amp bf16`` (autocast of the forward pass; fp32 master weights, loss and assigners; the
validation itself in fp32) per seed. Runs alternate off, bf16, off, bf16, ... so machine noise hits both.
Printed: final and best mAP50-95 / mAP50 of every run, the mean and the seed spread (max - min) of each
precision, and the median seconds per training epoch; ``amp_demo.png`` holds the training loss and the
mAP50-95 of every epoch of every run in one figure. bf16 is only fast on a CPU with native bf16
(AVX512-BF16 / AMX); elsewhere it is emulated and about 10x slower (benchmarks/train_levers.py).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

from _common import DEMO, demo_data, finish_figure, table, train_cached

from yoloforge.utils.cpu import BF16_FLAGS, cpu_flags


def _rows(run: Path) -> list[dict]:
    with open(run / "results.csv") as f:
        return list(csv.DictReader(f))


def _loss(r: dict) -> float:
    return sum(float(v) for k, v in r.items() if k.startswith("train/"))


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"off": "tab:blue", "bf16": "tab:orange"}
    for (amp, seed), rows in runs.items():
        ep = [int(r["epoch"]) for r in rows]
        label = f"{'fp32' if amp == 'off' else amp}, seed {seed}"
        style = ["-", "--", ":", "-."][seed % 4]
        ax[0].plot(ep, [_loss(r) for r in rows], style, color=colors[amp], label=label)
        ax[1].plot(ep, [float(r["metrics/mAP50-95"]) for r in rows], style, color=colors[amp], label=label)
    ax[0].set(xlabel="epoch", ylabel="training loss (sum of the components)", title="training loss")
    ax[1].set(xlabel="epoch", ylabel="mAP50-95 (val, fp32 evaluation)", title="validation mAP50-95")
    finish_figure(fig, ax, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--model", default="yolov6n")
    ap.add_argument("--epochs", type=int, default=DEMO["epochs"])
    ap.add_argument("--out", default="", help="folder for amp_demo.png and amp_demo.csv (default: the runs folder)")
    a = ap.parse_args()
    root = Path(tempfile.gettempdir()) / "yoloforge_amp_demo"
    data = demo_data(root / "data")
    settings = dict(DEMO, epochs=a.epochs, val_interval=1, model=a.model)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = {}
    for seed in seeds:
        for amp in ("off", "bf16"):
            best = train_cached(root / "runs", f"{a.model}_{amp}_s{seed}_e{a.epochs}", data, seed, settings, amp=amp)
            runs[(amp, seed)] = _rows(best.parent.parent)
    native = sorted(cpu_flags() & BF16_FLAGS) or ["none (bf16 emulated)"]
    print(f"{a.model}, demo recipe, {a.epochs} epochs at {DEMO['imgsz']}, batch {DEMO['batch']}; native bf16: {', '.join(native)}")
    rows, summary = [], {}
    for (amp, seed), rr in runs.items():
        maps = [float(r["metrics/mAP50-95"]) for r in rr]
        last = rr[-1]
        s_ep = statistics.median(float(r["time_s"]) for r in rr)
        rows.append(["fp32" if amp == "off" else amp, seed, float(last["metrics/mAP50-95"]), float(last["metrics/mAP50"]),
                     max(maps), _loss(last), s_ep])
        summary.setdefault(amp, []).append((float(last["metrics/mAP50-95"]), float(last["metrics/mAP50"]), s_ep))
    print(table(["precision", "seed", "final mAP50-95", "final mAP50", "best mAP50-95", "final loss", "s/epoch"], rows))
    srows = []
    for amp, v in summary.items():
        m, m50, t = zip(*v)
        srows.append(["fp32" if amp == "off" else amp, statistics.mean(m), max(m) - min(m), statistics.mean(m50),
                      max(m50) - min(m50), statistics.median(t)])
    print(table(["precision", "mean mAP50-95", "seed spread", "mean mAP50", "seed spread", "s/epoch"], srows))
    if "off" in summary and "bf16" in summary:
        t32, t16 = statistics.median(x[2] for x in summary["off"]), statistics.median(x[2] for x in summary["bf16"])
        print(f"bf16 epoch time: {t16:.1f} s vs fp32 {t32:.1f} s ({t32 / t16:.2f}x)")
    out = Path(a.out) if a.out else root
    out.mkdir(parents=True, exist_ok=True)
    plot(runs, out / "amp_demo.png")
    with open(out / "amp_demo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["precision", "seed", "final_map50_95", "final_map50", "best_map50_95", "final_loss", "s_per_epoch"])
        w.writerows(rows)
    print(f"plot: {out / 'amp_demo.png'}")


if __name__ == "__main__":
    main()
