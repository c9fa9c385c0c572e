"""``yoloforge tune`` and ``yoloforge average`` measured on the demo data (yolov6n at 160).

    python benchmarks/tune_average.py [--parts tune,tune_ft,average] [--trials 12] [--epochs 8] [--ft-epochs 6]
                                      [--seeds 1,2,3] [--space focused|FILE]
                                      [--runs DIR] [--out docs/tune_average]

tune: the demo's preset (``--hyp small-data``: YOLOv6's warm-up of at least 1000 iterations would cover a whole short
  trial) vs the best of a ``yoloforge tune`` study over it (TPE, ``--trials`` trials of ``--epochs`` epochs, every
  trial seed 0, ``--close-mosaic 3``), both trained again at the trials' settings with the seeds of
  ``--seeds`` (fresh ones: seed 0 is the one the study selected on), scored on the val split the trials were scored on
  and on a held-out test set (200 more generated images, another generator seed) that no trial saw.
tune_ft: the same for fine-tuning: every trial and every retraining starts from the average part's seed-0 model
  (the demo recipe from scratch, final weights) and trains ``--ft-epochs`` (``--close-mosaic 2``); at 8 epochs from
  scratch mAP is still ~0.07, where seed noise covers what the hyper-parameters change.
average: the demo's 26-epoch recipe.
  scratch: two models from scratch (seeds 0 and 1) and their average (with and without BN re-estimation on the 400
    train images): averaging needs members of one basin;
  common init: three models fine-tuned 8 epochs from the seed-0 model, on the first half (seed 1), on the second
    half (seed 2) and on all of the train images (seed 3), and their average;
  snapshots: the all-images fine-tune keeps ``--save-period 1`` snapshots (of its EMA, as every checkpoint): the
    average of its last 3 and last 5 vs the run's final EMA weights.

``--space S``: the studies search that space (``yoloforge tune --space``: a yaml, or ``focused``, the 8-key space of
the README's fine-tuning study) instead of tune's default one (every key of the preset).

Every training is cached under ``--runs`` (a rerun continues where it stopped). Writes ``results_tune.csv``,
``results_tune_ft.csv`` and ``results_average.csv`` (one row per model) to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import DEMO, demo_data, demo_model, table, train_cached

from yoloforge.api import Detector
from yoloforge.data.synthetic import make_shapes_dataset

HERE = Path(__file__).resolve().parent


def score(weights: Path, data: Path, imgsz: int = 160) -> dict:
    m = Detector(str(weights)).val(str(data), imgsz=imgsz, verbose=False)
    return {"mAP50-95": m.map, "mAP50": m.map50, "fitness": 0.1 * m.map50 + 0.9 * m.map}


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} [{min(xs):.4f}, {max(xs):.4f}]"


def tune_part(a, data: Path, test: Path, part: str = "tune", weights: Path | None = None) -> list[dict]:
    """Study, then default vs tuned trained again with fresh seeds. ``weights``: every training (trials included)
    fine-tunes from them."""
    runs = a.runs / part
    epochs, close = (a.epochs, 3) if weights is None else (a.ft_epochs, 2)
    settings = dict(epochs=epochs, imgsz=160, batch=16, nbs=16, workers=2, close_mosaic=close, plots=False,
                    verbose=False, tensorboard=False)
    cmd = [sys.executable, "-m", "yoloforge", "tune", "--model", "yolov6n", "--data", str(data), "--trials",
           str(a.trials), "--epochs", str(epochs), "--imgsz", "160", "--batch", "16", "--close-mosaic", str(close),
           "--hyp", "small-data", "--project", str(runs), "--name", "study"]
    if a.space:
        cmd += ["--space", str(a.space)]
    if weights is not None:
        cmd += ["--weights", str(weights)]
        settings["weights"] = str(weights)
    print("$ " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)  # a finished study only writes its results again
    best_hyp = runs / "study" / "best_hyp.yaml"
    rows = []
    with open(runs / "study" / "trials.csv") as f:
        trials = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]
    best_trial = max(trials, key=lambda r: float(r["fitness"]))
    for kind, hyp, seeds in (("default", "small-data", a.seeds), ("tuned", str(best_hyp), a.seeds)):
        for s in seeds:
            w = train_cached(runs, f"{kind}_s{s}", data, s, dict(settings, hyp=hyp))
            rows.append({"model": kind, "seed": s, **{f"val {k}": v for k, v in score(w, data).items()},
                         **{f"test {k}": v for k, v in score(w, test).items()}})
    rows.append({"model": f"best trial {best_trial['number']} (as the study scored it)", "seed": 0,
                 "val fitness": float(best_trial["fitness"]), "val mAP50-95": float(best_trial["mAP50-95"]),
                 "val mAP50": float(best_trial["mAP50"])})
    with open(best_hyp) as f:
        tuned = yaml.safe_load(f)
    print(f"\nbest hyp of {len(trials)} finished trials: " + ", ".join(f"{k}={tuned[k]:.4g}" for k in sorted(
        {k for r in trials for k in r} - {"number", "state", "fitness", "mAP50-95", "mAP50", "seconds"})))
    return rows


def scratch_model(a, data: Path, seed: int) -> Path:
    """The demo recipe from scratch (the average part's members; the fine-tune study's starting point)."""
    if seed == 0:  # the demo's model, shared with the other benchmarks
        return demo_model(0)
    return train_cached(a.runs / "average", f"scratch_s{seed}", data, seed, DEMO)


def halves(data: Path, root: Path) -> list[Path]:
    """Data yamls of the first and the second half of the train images (same val split)."""
    imgs = sorted((data.parent / "images" / "train").glob("*.jpg"))
    out = []
    for k, part in enumerate((imgs[: len(imgs) // 2], imgs[len(imgs) // 2:])):
        (root / f"half{k}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"half{k}.txt").write_text("".join(f"{p}\n" for p in part))
        y = root / f"half{k}.yaml"
        y.write_text(yaml.safe_dump({"path": str(data.parent), "train": str(root / f"half{k}.txt"), "val": "images/val",
                                     "names": yaml.safe_load(data.read_text())["names"]}))
        out.append(y)
    return out


def average_part(a, data: Path, test: Path) -> list[dict]:
    from yoloforge.engine.average import average

    runs = a.runs / "average"
    rows = []

    def add(group: str, model: str, w: Path) -> None:
        rows.append({"group": group, "model": model, **{f"val {k}": v for k, v in score(w, data).items()},
                     **{f"test {k}": v for k, v in score(w, test).items()}})

    def averaged(group: str, members: list[Path], name: str) -> None:
        for n in (0, 400):
            out = runs / f"{name}{'_bn' if n else ''}.safetensors"
            if not out.is_file():
                average(members, out, data=data if n else "", bn_recalib=n, imgsz=160, verbose=False)
            add(group, f"average of {len(members)}" + (" + BN re-estimated (400 images)" if n else ""), out)

    scratch = [scratch_model(a, data, s) for s in (0, 1)]
    for s, w in enumerate(scratch):
        add("scratch", f"member seed {s}", w)
    averaged("scratch", scratch, "scratch_avg")

    base = scratch[0].parent / "last.safetensors"  # the seed-0 run's final weights: the common initialization
    ft = dict(DEMO, epochs=8, close_mosaic=3)
    h0, h1 = halves(data, runs / "halves")
    common = [train_cached(runs, "ft_half0_s1", h0, 1, ft, weights=str(base)),
              train_cached(runs, "ft_half1_s2", h1, 2, ft, weights=str(base)),
              train_cached(runs, "ft_all_s3", data, 3, dict(ft, save_period=1), weights=str(base))]
    add("common init", "the initialization (seed-0 run, final)", base)
    for name, w in zip(("member half 1 (seed 1)", "member half 2 (seed 2)", "member all images (seed 3)"), common):
        add("common init", name, w)
    averaged("common init", common, "common_avg")

    wdir = common[2].parent
    add("snapshots", "final EMA of the all-images fine-tune", wdir / "last.safetensors")
    for k in (3, 5):
        snaps = [wdir / f"epoch{e}.safetensors" for e in range(ft["epochs"] - k + 1, ft["epochs"] + 1)]
        averaged("snapshots", snaps, f"snap_last{k}")
        rows[-2]["model"] = f"average of the last {k} epoch snapshots"
        rows[-1]["model"] = f"average of the last {k} epoch snapshots + BN re-estimated"
    return rows


def write(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="tune,tune_ft,average")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the from-scratch trials")
    ap.add_argument("--ft-epochs", type=int, default=6, help="epochs of the fine-tune trials")
    ap.add_argument("--seeds", default="1,2,3", help="seeds of the default-vs-tuned comparison")
    ap.add_argument("--space", default="",
                    help="the studies' --space: a yaml or 'focused' (default: tune's own space, every key of the preset)")
    ap.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "yoloforge_tune_average")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "tune_average")
    a = ap.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    data = demo_data(a.runs / "demo_data")
    test = Path(make_shapes_dataset(a.runs / "test_data", n_train=0, n_val=200, imgsz=160, seed=7))
    for part in ("tune", "tune_ft"):
        if part not in a.parts.split(","):
            continue
        base = scratch_model(a, data, 0).parent / "last.safetensors" if part == "tune_ft" else None
        rows = tune_part(a, data, test, part, base)
        write(rows, a.out / f"results_{part}.csv")
        cols = ["val fitness", "val mAP50-95", "val mAP50", "test fitness", "test mAP50-95", "test mAP50"]
        print(table(["model", "seed", *cols], [[r["model"], r["seed"], *[r.get(c, "") for c in cols]] for r in rows]))
        for kind in ("default", "tuned"):
            fresh = [r for r in rows if r["model"] == kind and r["seed"] in a.seeds]
            print(f"{kind}: val fitness {spread([r['val fitness'] for r in fresh])}, "
                  f"test fitness {spread([r['test fitness'] for r in fresh])} (mean [min, max] over seeds {a.seeds})")
    if "average" in a.parts.split(","):
        rows = average_part(a, data, test)
        write(rows, a.out / "results_average.csv")
        cols = ["val mAP50-95", "val mAP50", "test mAP50-95", "test mAP50"]
        print(table(["group", "model", *cols], [[r["group"], r["model"], *[r[c] for c in cols]] for r in rows]))


if __name__ == "__main__":
    main()
