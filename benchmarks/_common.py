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
    """Train ``kw['model']`` (default yolov6n) into ``runs/name`` unless its best weights exist; their path."""
    from yoloforge.api import Detector

    best = runs / name / "weights" / "best.safetensors"
    if best.is_file():
        return best
    print(f"training {name} ...", flush=True)
    kw = dict(settings, **kw)
    return Detector(kw.pop("model", "yolov6n")).train(data=str(data), project=str(runs), name=name, exist_ok=True,
                                                      seed=seed, **kw)


DEMO_MODELS = Path(tempfile.gettempdir()) / "yoloforge_demo_models"


def demo_model(seed: int = 0) -> Path:
    """The demo's model (yolov6n, the demo recipe, seed ``seed``) trained on :func:`demo_data`: one cache
    (``DEMO_MODELS``) shared by every benchmark that needs a trained model, so it is trained once."""
    best = DEMO_MODELS / f"yolov6n_s{seed}" / "weights" / "best.safetensors"
    if best.is_file():  # before demo_data: writing the data again would change its files' times
        return best
    return train_cached(DEMO_MODELS, f"yolov6n_s{seed}", demo_data(DEMO_MODELS / "demo_data"), seed, DEMO)
