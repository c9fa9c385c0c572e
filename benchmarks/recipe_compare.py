"""The official recipe against yoloforge's "small-data" recipe, and each of its deviations alone.

    python benchmarks/recipe_compare.py [--model yolov6n] [--data shapes|path/to/data.yaml] [--epochs 26]
                                        [--imgsz 160] [--batch 16] [--nbs 16] [--rows all] [--seeds 0]

Rows (every one from the same seeded initialization, same data, epochs, batch):

* ``official``: the preset named after the official file, as it is (``config.HYP_PRESETS``);
* ``small-data``: the same with the ``small-data`` recipe laid over it (``config.RECIPES``);
* ``small-data, official <switch>``: the small-data recipe with one of its deviations set back to the
  official value, which measures what that deviation alone is worth;
* ``small-data + <key>=<value>``: a loss deviation (yoloforge's former default) on top of small-data.

The defaults are the demo's settings (``yoloforge demo``: 26 epochs at 160, batch 16 with no accumulation,
mosaic closed for the last 8 epochs in every row) on the 200 / 50 generated images of bof_ablation.py. At this scale a run is a few minutes on a
2-core CPU; differences below the seed spread (``--seeds 0,1``) mean nothing. The table is printed as it
comes, and written to ``recipe_compare.csv`` beside the run folders when ``--out`` is given.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from _common import shapes_data, table

from yoloforge import Detector
from yoloforge.config import HYP_PRESETS, RECIPES, TrainConfig
from yoloforge.engine.trainer import Trainer

# groups of small-data keys that only make sense together
GROUPS = {
    "warm-up length (1000 iterations, no cap)": ("warmup_min_iters", "warmup_max_fraction"),
    "accumulation ramp + step rule": ("warmup_accumulate", "step_rule"),
    "LambdaLR lag": ("sched_lag",),
    "no gradient clipping": ("grad_clip",),
    "raw target-score sum (YOLOv6)": ("score_sum",),
}


# the loss deviations (yoloforge's former defaults), measured on top of the small-data recipe
LOSS_SWITCHES = {"simota_dedup": True, "assign_argmax_positive": True, "anchor_match": "iou"}


def rows_for(preset: str) -> dict[str, tuple[str | None, dict]]:
    official = HYP_PRESETS[preset]
    rows = {"official": (None, {}), "small-data": ("small-data", {})}
    for name, keys in GROUPS.items():
        keys = [k for k in keys if k in official]
        if keys and any(RECIPES["small-data"][k] != official[k] for k in keys):
            rows[f"small-data, official {name}"] = ("small-data", {k: official[k] for k in keys})
    for k, v in LOSS_SWITCHES.items():
        if k in official and official[k] != v:
            rows[f"small-data + {k}={v}"] = ("small-data", {k: v})
    return rows


def run(model: str, source, over: dict, a, data: Path, project: Path, seed: int) -> tuple[float, float, float]:
    cfg = TrainConfig(model=model, data=str(data), epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, nbs=a.nbs,
                      workers=a.workers, project=str(project), name="run", exist_ok=True, seed=seed, plots=False,
                      verbose=False, close_mosaic=a.close_mosaic, val_interval=a.epochs, hyp=source or "",
                      hyp_override=over)
    t = time.time()
    best = Trainer(cfg).train()
    m = Detector(str(best)).val(str(data), imgsz=a.imgsz, workers=a.workers, verbose=False)
    return m.map50, m.map, time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov6n")
    ap.add_argument("--data", default="shapes", help="'shapes' (the demo's generated set) or a data yaml")
    ap.add_argument("--epochs", type=int, default=26)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nbs", type=int, default=16, help="nominal batch (64 in the official scripts)")
    ap.add_argument("--close-mosaic", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", default="all", help="';'-separated row names (a trailing * matches a prefix), or 'all'")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default="", help="folder for recipe_compare.csv")
    a = ap.parse_args()
    from yoloforge.families.registry import build_model

    preset = build_model(a.model, nc=1).default_hyp
    data = shapes_data(n_train=200, n_val=50, imgsz=a.imgsz) if a.data == "shapes" else Path(a.data)
    rows = rows_for(preset)
    wanted = a.rows.split(";")
    names = list(rows) if a.rows == "all" else [n for n in rows if any(n == p or (p.endswith("*") and n.startswith(p[:-1]))
                                                                      for p in wanted)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in a.seeds.split(",")]:
            for i, name in enumerate(names):
                source, over = rows[name]
                m50, m, sec = run(a.model, source, over, a, data, Path(tmp) / f"{seed}_{i}", seed)
                out.append([name, seed, m50, m, sec])
                print(table(["recipe", "seed", "mAP50", "mAP50-95", "seconds"], out[-1:]), flush=True)
    print(f"\n{a.model} ({preset}), {a.epochs} epochs at {a.imgsz}, batch {a.batch}, nbs {a.nbs}, data {a.data}")
    print(table(["recipe", "seed", "mAP50", "mAP50-95", "seconds"], out))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        with open(Path(a.out) / "recipe_compare.csv", "w", newline="") as f:
            csv.writer(f).writerows([["recipe", "seed", "mAP50", "mAP50-95", "seconds"]] + out)


if __name__ == "__main__":
    main()
