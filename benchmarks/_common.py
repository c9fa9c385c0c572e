"""Helpers shared by the benchmark scripts (tables, timing, a synthetic data set)."""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timeit(fn, n: int = 10, warmup: int = 2) -> list[float]:
    """Seconds per call, ``n`` measured calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_ms(ts: list[float]) -> float:
    return 1e3 * statistics.median(ts)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in cells]
    lines.insert(1, "-+-".join("-" * x for x in w))
    return "\n".join(lines)


def finish_figure(fig, axes, path) -> None:
    """Grid and legend on every axis, tight layout, save ``path`` at 110 dpi, close."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shapes_data(n_train: int = 64, n_val: int = 16, imgsz: int = 320) -> Path:
    from yoloforge.data.synthetic import make_shapes_dataset

    root = Path(tempfile.gettempdir()) / f"yoloforge_bench_{n_train}_{n_val}_{imgsz}"
    return Path(make_shapes_dataset(root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=0))


# the settings of ``yoloforge demo`` (generated shapes, 400 / 100 images at 160, 26 epochs, batch 16, small-data)
DEMO = dict(epochs=26, imgsz=160, batch=16, nbs=16, workers=2, close_mosaic=8, val_interval=5, hyp="small-data",
            hyp_override={"warmup_epochs": 1.0}, plots=False, verbose=False, tensorboard=False)


def demo_data(root: Path) -> Path:
    """The demo's data set (400 train / 100 val shapes at 160) under ``root``."""
    from yoloforge.data.synthetic import make_shapes_dataset

    return Path(make_shapes_dataset(root, n_train=400, n_val=100, imgsz=160, seed=0))


def train_cached(runs: Path, name: str, data: Path, seed: int, settings: dict, **kw) -> Path:
    """Train ``kw['model']`` (default yolov6n) into ``runs/name`` unless that run finished (its final validation
    wrote metrics.json: a run still going, or one that was stopped, already has best weights); the best weights'
    path. A stopped run continues where it stopped (``--resume``)."""
    from yoloforge.api import Detector

    run = runs / name
    best = run / "weights" / "best.safetensors"
    if best.is_file() and (run / "metrics.json").is_file():
        return best
    if (run / "weights" / "last.state.pt").is_file():
        from yoloforge.config import TrainConfig
        from yoloforge.engine.trainer import Trainer

        print(f"continuing {name} ...", flush=True)
        return Path(Trainer(TrainConfig.from_dict({"resume": str(run)})).train())
    print(f"training {name} ...", flush=True)
    kw = dict(settings, **kw)
    return Detector(kw.pop("model", "yolov6n")).train(data=str(data), project=str(runs), name=name, exist_ok=True,
                                                      seed=seed, **kw)


# coco128 (../shared/data/coco128) trained on its 128 train2017 images and scored on the same images, as
# ultralytics' coco128.yaml does (val = train2017): 128 images teach a detector nothing that carries over to other
# images (val2017 stays near mAP 0), but a model that fits them is a model with real COCO statistics to quantize,
# distil and compare. The demo's settings at 320, bf16 (--amp auto on this kind of CPU) and channels_last.
COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "data.yaml"  # ../shared
COCO_MODELS = Path(tempfile.gettempdir()) / "yoloforge_coco128_models"


def coco_settings(epochs: int = 300) -> dict:
    return dict(DEMO, epochs=epochs, imgsz=320, close_mosaic=epochs // 10, val_interval=20 if epochs >= 200 else 10,
                channels_last=True)


def coco_fit_data(root: Path = COCO_MODELS) -> Path:
    """coco128 with its train2017 images as the val split too (ultralytics' coco128.yaml)."""
    import yaml

    if not COCO128.is_file():
        raise SystemExit(f"coco128 not found at {COCO128} (../shared/data/coco128 beside the repository)")
    path = root / "data_fit.yaml"
    if not path.is_file():
        cfg = yaml.safe_load(COCO128.read_text())
        cfg.update(path=str(COCO128.parent.resolve()), val=cfg["train"])
        root.mkdir(parents=True, exist_ok=True)
        path.write_text("# coco128 train2017 as both train and val (ultralytics' coco128.yaml convention)\n"
                        + yaml.safe_dump(cfg, sort_keys=False))
    return path


def coco_model(training_mode: str = "repvgg", seed: int = 0) -> Path:
    """yolov6n trained 300 epochs on :func:`coco_fit_data` (repvgg, or repopt with the scales of a 300-epoch
    hyper_search run): one cache (``COCO_MODELS``) for every benchmark that needs a coco128 model."""
    fit = coco_fit_data()
    if training_mode == "repvgg":
        return train_cached(COCO_MODELS, f"repvgg_s{seed}", fit, seed, coco_settings())
    hs = train_cached(COCO_MODELS, "hyper_search_s0", fit, 0, coco_settings(), training_mode="hyper_search")
    if training_mode == "hyper_search":
        return hs
    return train_cached(COCO_MODELS, f"repopt_s{seed}", fit, seed, coco_settings(), training_mode="repopt",
                        scales=str(hs))


DEMO_MODELS = Path(tempfile.gettempdir()) / "yoloforge_demo_models"


def demo_model(seed: int = 0) -> Path:
    """The demo's model (yolov6n, the demo recipe, seed ``seed``) trained on :func:`demo_data`: one cache
    (``DEMO_MODELS``) shared by every benchmark that needs a trained model, so it is trained once."""
    best = DEMO_MODELS / f"yolov6n_s{seed}" / "weights" / "best.safetensors"
    if best.is_file():  # before demo_data: writing the data again would change its files' times
        return best
    return train_cached(DEMO_MODELS, f"yolov6n_s{seed}", demo_data(DEMO_MODELS / "demo_data"), seed, DEMO)
