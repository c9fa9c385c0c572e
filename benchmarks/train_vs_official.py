"""Learning side by side: the official training scripts against yoloforge (issue 16, part 5).

    python benchmarks/train_vs_official.py --out runs/train_vs_official \\
        --official-python OFFVENV/bin/python --yolov7-repo YOLOV7_DIR --yolov6-repo YOLOV6_0.2.0_DIR \\
        [--data coco128|demo] [--models yolov7-tiny,yolov6n] [--seeds 0,1] [--epochs 50] [--imgsz 320] \\
        [--batch 16] [--recipes official,small-data] [--jobs 2] [--amp off] [--skip RUN,..] [--report-only]

Every run trains from scratch with the same hyp, image size, batch, nominal batch 64 and epochs, on
``--data``: ``coco128`` (../shared/data/coco128: 128 train2017 images, validated on the 128 val2017 ones) or
``demo`` (the 400 / 100 generated images of ``yoloforge demo``, on which these models learn in a CPU budget;
at 160 px, batch 16, 80 epochs the official 1000-iteration warm-up ends half-way):

* ``official``: yolov7's ``train.py`` (cfg/training/yolov7-tiny.yaml, data/hyp.scratch.tiny.yaml) or YOLOv6
  0.2.0's ``tools/train.py`` (configs/yolov6n.py), unmodified but for the local patches that today's stack
  needs (see README "Training recipes"), run with ``--official-python`` (a venv with torch 2.14.1 +
  torchvision 0.29.1, pandas, seaborn, scipy, tqdm, tensorboard, addict). The official scripts hard-code
  their seed (yolov7 ``init_seeds(2 + rank)``, i.e. 1; YOLOv6 ``set_random_seed(1 + rank)``, i.e. 0); to run
  a second seed the checkout needs a one-line local patch that reads ``OFFICIAL_SEED`` from the environment
  in that call. Without it only the script's own seed runs, and the table says so.
* ``yoloforge``: ``yoloforge train`` with the preset named after the same official file (``--recipes
  official``), and with the ``small-data`` recipe laid over it (``--recipes small-data``); ``--amp off`` by
  default (fp32, as the official scripts train on a CPU).

Per-epoch mAP comes from each trainer's own validation (yolov7 test.py at conf 0.001, NMS IoU 0.6; YOLOv6
0.2.0 evaluates during training at conf 0.03, its hard-coded value; yoloforge at conf 0.001, IoU 0.65), the
per-epoch training loss from each trainer's own log (the sum of its loss components; equal outputs give equal
components, tests/test_parity_losses.py). The final table also scores every run's last EMA weights with one
evaluator (yoloforge's, conf 0.001, iou 0.65; official checkpoints through the safe converter), so the
trainers are compared on equal terms. Runs already finished under ``--out`` are not repeated;
``--report-only`` only reads them. Writes ``curves.png`` (mAP50-95, mAP50 and training loss per epoch),
``final.csv`` and ``epochs.csv`` into ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import table

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"

OFFICIAL_FILES = {  # model -> (official repo kind, model cfg, hyp file) as the official READMEs train them
    "yolov7-tiny": ("yolov7", "cfg/training/yolov7-tiny.yaml", "data/hyp.scratch.tiny.yaml"),
    "yolov6n": ("yolov6", "configs/yolov6n.py", None),
}


def prepare_data(out: Path, which: str) -> Path:
    """A writable data set under ``out/data`` (both official scripts write label caches beside the labels) with
    the data yamls of the two official scripts beside its ``data.yaml``. ``which``: ``coco128`` (a copy of
    ../shared/data/coco128) or ``demo`` (the 400 / 100 generated images of ``yoloforge demo``)."""
    import yaml

    root = out / "data" / which
    if which == "demo":
        from _common import demo_data

        if not (root / "data.yaml").is_file():  # written once: a report must not rewrite images a run is reading
            demo_data(root)
    elif which == "coco128":
        if not (root / "images").is_dir():
            if not COCO128.is_dir():
                sys.exit(f"coco128 not found at {COCO128} (expected ../shared/data/coco128 beside the repository)")
            shutil.copytree(COCO128, root)
            for p in root.rglob("*"):
                p.chmod(p.stat().st_mode | 0o200)
    else:
        sys.exit(f"--data {which!r}: expected coco128 or demo")
    d = yaml.safe_load((root / "data.yaml").read_text())
    names = d["names"]
    names = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    base = {"train": str(root / d["train"]), "val": str(root / d["val"]), "nc": len(names), "names": names}
    (root / "official_yolov7.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (root / "official_yolov6.yaml").write_text(yaml.safe_dump({**base, "is_coco": False}, sort_keys=False))
    return root


class Run:
    def __init__(self, trainer: str, model: str, recipe: str, seed: int, a, out: Path):
        self.trainer, self.model, self.recipe, self.seed, self.a = trainer, model, recipe, seed, a
        self.name = f"{trainer}-{model}-{recipe}-s{seed}"
        self.dir = out / "runs" / self.name
        self.log = out / "logs" / f"{self.name}.log"

    @property
    def label(self) -> str:
        return f"{self.trainer} {self.recipe}" if self.trainer == "yoloforge" else "official script"

    # --- the command of each trainer ---------------------------------------------------------------------
    def command(self, data: Path) -> tuple[list[str], Path, dict]:
        a = self.a
        env = {"OFFICIAL_SEED": str(self.seed), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONHASHSEED": "0"}
        if self.trainer == "yoloforge":
            cmd = [sys.executable, "-m", "yoloforge", "train", "--model", self.model,
                   "--data", str(data / "data.yaml"), "--epochs", str(a.epochs), "--imgsz", str(a.imgsz),
                   "--batch", str(a.batch), "--nbs", "64", "--workers", str(a.workers), "--seed", str(self.seed),
                   "--project", str(self.dir.parent), "--name", self.name, "--exist-ok", "--no-plots",
                   "--val-interval", "1", "--device", "cpu", "--amp", a.amp]
            if self.recipe != "official":
                cmd += ["--hyp", self.recipe]
            return cmd, REPO, env
        kind, cfg, hyp = OFFICIAL_FILES[self.model]
        if kind == "yolov7":
            repo = Path(a.yolov7_repo)
            cmd = [a.official_python, "train.py", "--cfg", cfg, "--weights", "", "--hyp", hyp,
                   "--data", str(data / "official_yolov7.yaml"), "--epochs", str(a.epochs),
                   "--batch-size", str(a.batch), "--img-size", str(a.imgsz), str(a.imgsz), "--device", "cpu",
                   "--workers", str(a.workers), "--project", str(self.dir.parent), "--name", self.name,
                   "--exist-ok"]
        else:
            repo = Path(a.yolov6_repo)
            cmd = [a.official_python, "tools/train.py", "--conf-file", cfg,
                   "--data-path", str(data / "official_yolov6.yaml"), "--epochs", str(a.epochs),
                   "--batch-size", str(a.batch), "--img-size", str(a.imgsz), "--device", "cpu",
                   "--workers", str(a.workers), "--output-dir", str(self.dir.parent), "--name", self.name,
                   "--eval-interval", "1"]
            env["PYTHONPATH"] = str(repo)
        return cmd, repo, env

    # --- what each trainer leaves behind -------------------------------------------------------------------
    def last_weights(self) -> Path | None:
        if self.trainer == "yoloforge":
            p = self.dir / "weights" / "last.safetensors"
        elif OFFICIAL_FILES[self.model][0] == "yolov7":
            p = self.dir / "weights" / "last.pt"
        else:
            p = self.dir / "weights" / "last_ckpt.pt"
        return p if p.is_file() else None

    def curve(self) -> list[tuple[int, float, float]]:
        """(epoch from 0, mAP50, mAP50-95) from the trainer's own per-epoch validation."""
        rows = []
        if self.trainer == "yoloforge":
            f = self.dir / "results.csv"
            if f.is_file():
                for r in csv.DictReader(f.open()):
                    if r.get("metrics/mAP50", "") not in ("", "nan"):
                        rows.append((int(r["epoch"]) - 1, float(r["metrics/mAP50"]), float(r["metrics/mAP50-95"])))
        elif OFFICIAL_FILES[self.model][0] == "yolov7":
            f = self.dir / "results.txt"  # epoch/total mem box obj cls total labels img P R mAP50 mAP50-95 ...
            if f.is_file():
                for line in f.read_text().splitlines():
                    s = line.split()
                    if len(s) >= 12:
                        rows.append((int(s[0].split("/")[0]), float(s[10]), float(s[11])))
        elif self.log.is_file():  # YOLOv6 0.2.0 logs "Epoch: 3 | mAP@0.5: 0.01 | mAP@0.50:0.95: 0.002"
            pat = re.compile(r"Epoch: (\d+) \| mAP@0\.5: ([-\d.e]+) \| mAP@0\.50:0\.95: ([-\d.e]+)")
            for m in pat.finditer(self.log.read_text(errors="replace")):
                rows.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
        return rows

    def losses(self) -> list[tuple[int, float]]:
        """(epoch from 0, training loss of the epoch): the sum of the loss components each trainer logs, the
        mean over the epoch's batches (yolov7: box + obj + cls of results.txt; YOLOv6 0.2.0: iou + dfl + cls
        of its TensorBoard log; yoloforge: the train/*_loss columns of results.csv). The loss parity tests
        hold the components equal on equal outputs, so the curves are on one scale."""
        rows = []
        if self.trainer == "yoloforge":
            f = self.dir / "results.csv"
            if f.is_file():
                for r in csv.DictReader(f.open()):
                    rows.append((int(r["epoch"]) - 1, sum(float(v) for k, v in r.items()
                                                          if k.startswith("train/") and v not in ("", "nan"))))
        elif OFFICIAL_FILES[self.model][0] == "yolov7":
            f = self.dir / "results.txt"
            if f.is_file():
                for line in f.read_text().splitlines():
                    s = line.split()
                    if len(s) >= 12:
                        rows.append((int(s[0].split("/")[0]), float(s[2]) + float(s[3]) + float(s[4])))
        else:
            events = sorted(self.dir.glob("events.out.tfevents.*"))
            if events:
                from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

                acc = EventAccumulator(str(events[-1]))
                acc.Reload()
                tags = [t for t in ("train/iou_loss", "train/dist_focalloss", "train/cls_loss")
                        if t in acc.Tags()["scalars"]]
                per = {}
                for t in tags:
                    for ev in acc.Scalars(t):  # logged at epoch + 1
                        per[ev.step - 1] = per.get(ev.step - 1, 0.0) + ev.value
                rows = sorted(per.items())
        return rows

    def done(self) -> bool:
        c = self.curve()
        return self.last_weights() is not None and len(c) >= self.a.epochs and c[-1][0] >= self.a.epochs - 1

    def train(self, data: Path, threads: int) -> str:
        if self.done():
            return f"{self.name}: already done"
        cmd, cwd, env = self.command(data)
        env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        t = time.time()
        with self.log.open("w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        return f"{self.name}: exit {rc} after {(time.time() - t) / 60:.1f} min (log {self.log})"


def final_eval(run: Run, data: Path, a) -> tuple[float, float] | None:
    """Score a run's last EMA weights with yoloforge's evaluator (same settings for every trainer)."""
    from yoloforge import Detector

    w = run.last_weights()
    if w is None:
        return None
    cache = run.dir / "final_eval.txt"
    if cache.is_file() and cache.stat().st_mtime >= w.stat().st_mtime:
        m50, m = map(float, cache.read_text().split())
        return m50, m
    if w.suffix == ".pt":
        from yoloforge.convert.official import convert

        sf = run.dir / "last_converted.safetensors"
        convert(w, sf, verbose=False)
        w = sf
    m = Detector(str(w)).val(str(data / "data.yaml"), imgsz=a.imgsz, batch=a.batch, conf=0.001, iou=0.65,
                             workers=a.workers, verbose=False)
    cache.write_text(f"{m.map50} {m.map}")
    return m.map50, m.map


def official_seed_patched(a, model: str) -> bool:
    kind, _, _ = OFFICIAL_FILES[model]
    f = Path(a.yolov7_repo) / "train.py" if kind == "yolov7" else Path(a.yolov6_repo) / "tools" / "train.py"
    return f.is_file() and "OFFICIAL_SEED" in f.read_text()


def plot(runs: list[Run], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in runs})
    fig, axes = plt.subplots(len(models), 3, figsize=(18, 4.2 * len(models)), squeeze=False)
    colors = {"official script": "tab:red", "yoloforge official": "tab:blue", "yoloforge small-data": "tab:green"}
    for i, model in enumerate(models):
        for r in (r for r in runs if r.model == model):
            style = dict(color=colors.get(r.label, "gray"), ls="-" if r.seed == 0 else "--",
                         label=f"{r.label}, seed {r.seed}")
            c = r.curve()
            for j, k in enumerate((2, 1)):
                axes[i][j].plot([e + 1 for e, _, _ in c], [x[k] for x in c], **style)
            lo = r.losses()
            axes[i][2].plot([e + 1 for e, _ in lo], [v for _, v in lo], **style)
        for j, what in enumerate(("mAP50-95 (own validation)", "mAP50 (own validation)",
                                  "training loss (sum of the logged terms)")):
            ax = axes[i][j]
            ax.set_title(f"{model}: {what}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(what.split(" (")[0])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/train_vs_official")
    ap.add_argument("--official-python", default="", help="python of a venv that runs the official code")
    ap.add_argument("--yolov7-repo", default="", help="a checkout of WongKinYiu/yolov7")
    ap.add_argument("--yolov6-repo", default="", help="a checkout of meituan/YOLOv6 at tag 0.2.0")
    ap.add_argument("--data", default="coco128", choices=["coco128", "demo"],
                    help="coco128 (../shared/data/coco128) or demo (yoloforge demo's 400 / 100 generated images)")
    ap.add_argument("--models", default="yolov7-tiny,yolov6n")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--recipes", default="official,small-data", help="yoloforge rows: official and/or small-data")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (torch threads = cores / jobs)")
    ap.add_argument("--amp", default="off", help="yoloforge's --amp (off = fp32, as the official scripts train on CPU)")
    ap.add_argument("--skip", default="", help="run names not to start (e.g. one still running elsewhere)")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, a.data)
    title = f"{a.data} from scratch, {a.epochs} epochs at {a.imgsz}, batch {a.batch}"
    seeds = [int(s) for s in a.seeds.split(",")]
    models = a.models.split(",")
    runs: list[Run] = []
    notes = []
    recipes = a.recipes.split(",")
    for seed in seeds:  # seed-major order: one seed of every row first
        for model in models:
            have_official = a.official_python and (a.yolov7_repo if OFFICIAL_FILES[model][0] == "yolov7" else a.yolov6_repo)
            if have_official or a.report_only:
                script_seed = 1 if OFFICIAL_FILES[model][0] == "yolov7" else 0
                if a.report_only or official_seed_patched(a, model) or seed == script_seed:
                    runs.append(Run("official", model, "official", seed, a, out))
                elif not a.report_only:
                    notes.append(f"official {model} seed {seed}: skipped, the checkout has no OFFICIAL_SEED patch")
            runs += [Run("yoloforge", model, r, seed, a, out) for r in recipes if r == "official"]
    runs += [Run("yoloforge", m, r, s, a, out) for r in recipes if r != "official" for s in seeds for m in models]

    if not a.report_only:
        threads = max(1, (os.cpu_count() or 1) // max(1, a.jobs))
        skip = set(filter(None, a.skip.split(",")))
        with ThreadPoolExecutor(a.jobs) as pool:
            for msg in pool.map(lambda r: r.train(data, threads), [r for r in runs if r.name not in skip]):
                print(msg, flush=True)

    runs = [r for r in runs if r.curve()]
    rows, by_row = [], {}
    with (out / "epochs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "trainer", "model", "recipe", "seed", "epoch", "mAP50", "mAP50-95", "train loss"])
        for r in runs:
            loss = dict(r.losses())
            for e, m50, m in r.curve():
                w.writerow([r.name, r.trainer, r.model, r.recipe, r.seed, e, m50, m, loss.get(e, "")])
    for r in runs:
        c = r.curve()
        fe = final_eval(r, data, a) if r.done() else None
        best = max(c, key=lambda x: x[2])
        lo = r.losses()
        rows.append([r.model, r.label, r.seed, len(c), lo[-1][1] if lo else "-", c[-1][1], c[-1][2], best[2],
                     best[0] + 1, fe[0] if fe else "-", fe[1] if fe else "-"])
        if fe:
            by_row.setdefault((r.model, r.label), []).append(fe)
    heads = ["model", "trainer", "seed", "epochs", "last train loss", "own mAP50", "own mAP50-95", "best mAP50-95",
             "at epoch",
             "common mAP50", "common mAP50-95"]
    with (out / "final.csv").open("w", newline="") as f:
        csv.writer(f).writerows([heads] + rows)
    print(f"\n{title} (nominal 64); 'own' = the "
          "trainer's own last validation, 'common' = yoloforge's evaluator on the last EMA weights\n")
    print(table(heads, rows))
    spread = []
    for (model, label), v in sorted(by_row.items()):
        m = [x[1] for x in v]
        m50 = [x[0] for x in v]
        spread.append([model, label, len(v), statistics.mean(m), min(m), max(m), statistics.mean(m50), min(m50), max(m50)])
    print("\nseed spread (common evaluator)\n")
    print(table(["model", "trainer", "seeds", "mAP50-95 mean", "min", "max", "mAP50 mean", "min", "max"], spread))
    for n in notes:
        print("note:", n)
    if runs:
        plot(runs, out, title)
        print(f"\nplot: {out / 'curves.png'}")


if __name__ == "__main__":
    main()
