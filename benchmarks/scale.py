"""How cost grows with the size of the work: one table per part, several sizes, each measured in a fresh process
(time, and how far the work raised the process's peak memory).

    python benchmarks/scale.py [--parts scan,eval,video,nms] [--scan-sizes 1000,10000,100000]
                               [--eval-sizes 500,5000,20000] [--frames 250,1000,4000] [--nms-sizes 320,640,1280]
                               [--root DIR]

Parts:
  scan:  the dataset scan (``scan_dataset``: every image decoded, every label parsed, the cache written) of
         generated YOLO-txt datasets (64x48 JPEGs, 0-8 boxes each), cold (no cache) and warm (cache load).
  eval:  ``evaluate`` (NMS, matching, the pycocotools-exact COCO mAP of faster-coco-eval, PR curves) over N images
         of 100 detections each (80 classes, 10 ground truths each), fed by a callable model.
  video: ``yoloforge predict`` of a generated video (320x240) with the demo's trained model at 160, writing the
         annotated video: time per frame, and how far memory climbs after the first quarter of the run
         (frames stream: it must stay flat).
  nms:   the val NMS (conf 0.001, IoU 0.65, multi-label, 300 kept) per image, for an untrained yolov6n (80
         classes) and the demo's trained model, at several input sizes (candidates grow with the pixels).

"per item x" is the cost per image (or frame) relative to the smallest size: 1.0 is linear growth.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import table

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------ data
def scan_data(root: Path, n: int) -> Path:
    """``n`` images (one 64x48 JPEG's bytes) with random YOLO labels under ``root/scan_n``; kept between runs."""
    import cv2

    d = root / f"scan_{n}"
    img_dir, lab_dir = d / "images", d / "labels"
    done = d / "done"
    if done.is_file():
        return img_dir
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    data = buf.tobytes()
    for i in range(n):
        (img_dir / f"{i:06d}.jpg").write_bytes(data)
        k = int(rng.integers(0, 9))
        xy = rng.uniform(0.1, 0.9, (k, 2))
        wh = rng.uniform(0.02, 0.15, (k, 2))
        cls = rng.integers(0, 80, k)
        (lab_dir / f"{i:06d}.txt").write_text("".join(f"{c} {x:.5f} {y:.5f} {w:.5f} {h:.5f}\n"
                                                      for c, (x, y), (w, h) in zip(cls, xy, wh)))
    done.write_text("ok")
    return img_dir


def video_data(root: Path, frames: int) -> Path:
    import cv2

    p = root / f"video_{frames}.avi"
    if p.is_file():
        return p
    rng = np.random.default_rng(0)
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for i in range(frames):
        f = base.copy()
        x, y = 20 + (3 * i) % 240, 20 + (2 * i) % 160
        f[y:y + 50, x:x + 60] = (40, 200, 40)  # a moving block
        w.write(f)
    w.release()
    return p


# ------------------------------------------------------------------------------------------------ children
def child_scan(root: Path, n: int, warm: bool) -> dict:
    from yoloforge.data.formats import scan_dataset

    src = scan_data(root, n)
    cache_dir = root / f"scan_{n}_cache"
    if not warm:
        for f in cache_dir.glob("*.npz"):
            f.unlink()
    names = [str(i) for i in range(80)]
    base = peak_mb()
    t = time.perf_counter()
    res = scan_dataset(src, 80, cache=True, cache_dir=cache_dir, verbose=False, names=names)
    s = time.perf_counter() - t
    assert len(res.img_files) == n, len(res.img_files)
    return {"s": s, "mb": peak_mb() - base, "boxes": int(sum(len(x) for x in res.labels))}


class _Loader:
    """Batches of 32 dummy images with 10 ground truths each (the evaluator's loader contract)."""

    def __init__(self, n: int, batch: int = 32):
        self.n, self.batch = n, batch

    def __len__(self):
        return (self.n + self.batch - 1) // self.batch

    def __iter__(self):
        import torch

        for b in range(len(self)):
            k = min(self.batch, self.n - b * self.batch)
            rng = np.random.default_rng(b)
            t = []
            for i in range(k):
                cell = rng.choice(100, 10, replace=False)
                x1, y1 = cell % 10 * 64 + rng.uniform(0, 8, 10), cell // 10 * 64 + rng.uniform(0, 8, 10)
                t.append(np.stack([np.full(10, i), rng.integers(0, 80, 10), x1, y1, x1 + 50, y1 + 50], 1))
            metas = [{"path": f"{b * self.batch + i}.jpg", "image_id": b * self.batch + i, "orig_shape": (640, 640),
                      "ratio_pad": ((1.0, 1.0), (0.0, 0.0))} for i in range(k)]
            yield torch.zeros(k, 3, 8, 8, dtype=torch.uint8), torch.as_tensor(np.concatenate(t), dtype=torch.float32), metas


class _GridModel:
    """100 non-overlapping boxes per image (a 10x10 grid of 50-pixel squares), one random class each: NMS keeps
    all of them, so every image has 100 detections."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        import torch

        g = torch.Generator().manual_seed(self.calls)
        self.calls += 1
        b = x.shape[0]
        ij = torch.arange(100)
        x1, y1 = (ij % 10 * 64).float(), (ij // 10 * 64).float()
        boxes = torch.stack([x1, y1, x1 + 50, y1 + 50], 1).expand(b, 100, 4)
        scores = torch.zeros(b, 100, 80)
        cls = torch.randint(0, 80, (b, 100), generator=g)
        scores.scatter_(2, cls[..., None], torch.rand(b, 100, 1, generator=g) * 0.99 + 0.01)
        return torch.cat([boxes, scores], 2)


def child_eval(n: int) -> dict:
    from yoloforge.engine.evaluator import evaluate

    names = [str(i) for i in range(80)]
    base = peak_mb()
    t = time.perf_counter()
    m = evaluate(_GridModel(), _Loader(n), names, verbose=False)
    s = time.perf_counter() - t
    assert m.images == n
    return {"s": s, "mb": peak_mb() - base, "map": m.map}


def child_video(root: Path, frames: int, weights: str) -> dict:
    from yoloforge.api import Detector

    src = video_data(root, frames)
    det = Detector(weights, device="cpu")
    pred = det.predictor(imgsz=160)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mb()))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    th.start()
    with tempfile.TemporaryDirectory() as out:
        r = pred.predict_to_dir(str(src), out, save_img=True, verbose=False)
        size = sum(f.stat().st_size for f in Path(out).iterdir())
    stop.set()
    th.join()
    s = time.perf_counter() - t0
    assert r["images"] == frames, r
    q = t0 + s / 4
    first = max(m for t, m in samples if t <= q)
    rest = max(m for t, m in samples)
    return {"s": s, "rss_q1": first, "rss_max": rest, "out_mb": size / 2**20}


def child_nms(size: int, weights: str | None) -> dict:
    import cv2
    import torch

    from yoloforge.api import Detector
    from yoloforge.utils.nms import default_backend, non_max_suppression

    torch.manual_seed(0)
    det = Detector(weights, device="cpu") if weights else Detector("yolov6n", nc=80, device="cpu")
    model = det._deploy_model().eval()
    if weights:  # a val image of the demo data, letterboxed to the size
        img = cv2.imread(str(sorted(demo_val_dir().glob("*.jpg"))[0]))
        img = cv2.resize(img, (size, size))[:, :, ::-1].copy()
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    else:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = model(x)
    p = p[0] if isinstance(p, (list, tuple)) else p
    cand = int((p[0, :, 4:] > 0.001).sum())
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        out = non_max_suppression(p, conf=0.001, iou=0.65, max_det=300, multi_label=True)
        ts.append(time.perf_counter() - t)
    return {"ms": 1e3 * sorted(ts)[len(ts) // 2], "cand": cand, "nc": p.shape[2] - 4, "kept": len(out[0]), "anchors": p.shape[1],
            "backend": default_backend("cpu")}


def demo_val_dir() -> Path:
    """The demo data's val images (written once beside the shared demo model)."""
    from _common import DEMO_MODELS, demo_data

    d = DEMO_MODELS / "demo_data" / "images" / "val"
    if not d.is_dir():
        demo_data(DEMO_MODELS / "demo_data")
    return d


def threads() -> str:
    """The children's torch threads: OMP_NUM_THREADS if set, else the cores this process may use."""
    from yoloforge.utils.cpu import available_cores

    return os.environ.get("OMP_NUM_THREADS", str(available_cores()))


def run_child(*args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=threads())
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *map(str, args)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"child {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def growth(rows, key_n, key_cost):
    """Per-item cost relative to the first row (1.0 = linear)."""
    c0 = rows[0][key_cost] / rows[0][key_n]
    return [r[key_cost] / r[key_n] / c0 for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="scan,eval,video,nms")
    ap.add_argument("--scan-sizes", default="1000,10000,100000")
    ap.add_argument("--eval-sizes", default="500,5000,20000")
    ap.add_argument("--frames", default="250,1000,4000")
    ap.add_argument("--nms-sizes", default="320,640,1280")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "yoloforge_scale")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind in ("scan_cold", "scan_warm"):
            out = child_scan(a.root, int(rest[0]), kind == "scan_warm")
        elif kind == "eval":
            out = child_eval(int(rest[0]))
        elif kind == "video":
            out = child_video(a.root, int(rest[0]), rest[1])
        else:
            out = child_nms(int(rest[0]), rest[1] if len(rest) > 1 else None)
        print(json.dumps(out))
        return
    a.root.mkdir(parents=True, exist_ok=True)
    parts = a.parts.split(",")
    print(f"threads: OMP_NUM_THREADS={threads()}, {os.cpu_count()} cores\n")
    if "scan" in parts:
        rows = []
        for n in map(int, a.scan_sizes.split(",")):
            t = time.perf_counter()
            scan_data(a.root, n)
            gen = time.perf_counter() - t
            cold, warm = run_child("scan_cold", n, "--root", a.root), run_child("scan_warm", n, "--root", a.root)
            rows.append({"n": n, "cold": cold["s"], "warm": warm["s"], "cold_mb": cold["mb"], "warm_mb": warm["mb"],
                         "gen": gen, "boxes": cold["boxes"]})
        gc, gw = growth(rows, "n", "cold"), growth(rows, "n", "warm")
        print("dataset scan (YOLO txt, every image decoded; cold = no cache, warm = cache load)")
        print(table(["images", "boxes", "cold s", "ms/img", "per item x", "peak MB", "warm s", "us/img",
                     "per item x", "peak MB"],
                    [[r["n"], r["boxes"], r["cold"], 1e3 * r["cold"] / r["n"], x, r["cold_mb"], r["warm"],
                      1e6 * r["warm"] / r["n"], y, r["warm_mb"]] for r, x, y in zip(rows, gc, gw)]))
        print()
    if "eval" in parts:
        rows = [dict(n=n, **run_child("eval", n)) for n in map(int, a.eval_sizes.split(","))]
        g = growth(rows, "n", "s")
        print("evaluator (100 detections and 10 ground truths per image, 80 classes; NMS + matching + COCO mAP)")
        print(table(["images", "detections", "s", "ms/img", "per item x", "peak MB", "KB/img"],
                    [[r["n"], 100 * r["n"], r["s"], 1e3 * r["s"] / r["n"], x, r["mb"], 1024 * r["mb"] / r["n"]]
                     for r, x in zip(rows, g)]))
        print()
    weights = None
    if "video" in parts or "nms" in parts:
        from _common import demo_model

        weights = str(demo_model(0))
        demo_val_dir()
    if "video" in parts:
        rows = []
        for f in map(int, a.frames.split(",")):
            video_data(a.root, f)
            rows.append(dict(n=f, **run_child("video", f, weights, "--root", a.root)))
        g = growth(rows, "n", "s")
        print("predict a video (320x240, the demo model at 160, annotated video written; frames streamed)")
        print(table(["frames", "s", "ms/frame", "per item x", "RSS MB at 1/4", "RSS MB max", "climb MB", "out MB"],
                    [[r["n"], r["s"], 1e3 * r["s"] / r["n"], x, r["rss_q1"], r["rss_max"], r["rss_max"] - r["rss_q1"],
                      r["out_mb"]] for r, x in zip(rows, g)]))
        print()
    if "nms" in parts:
        rows = []
        for which, w in (("untrained yolov6n", None), ("demo-trained yolov6n", weights)):
            for s in map(int, a.nms_sizes.split(",")):
                r = run_child("nms", s, *([w] if w else []))
                rows.append([f"{which} ({r['nc']} classes)", s, r["anchors"], r["cand"], r["kept"], r["ms"], r["backend"]])
        print("val NMS per image (conf 0.001, IoU 0.65, multi-label, at most 30000 candidates in, 300 out)")
        print(table(["model", "imgsz", "anchors", "candidates > 0.001", "kept", "ms", "kernel"], rows))


if __name__ == "__main__":
    main()
