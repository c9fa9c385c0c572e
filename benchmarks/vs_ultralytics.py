"""yoloforge vs ultralytics on this machine, in one run, same architecture, untrained models both sides.

Setup (once; ultralytics must never enter the yoloforge venv, so it gets its own, ~6 GB):

    python3 -m venv ULVENV            # any folder outside the repository
    ULVENV/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxruntime onnxslim openvino nncf

Run (from the repository root, with the yoloforge venv):

    .venv/bin/python benchmarks/vs_ultralytics.py --ul-python ULVENV/bin/python [--parts a,b,c,d,e]

The ultralytics side runs in ``benchmarks/_ul_worker.py`` inside that venv, a long-lived subprocess
spoken to with JSON lines, so both sides stay warm and single measurements alternate between them
(ours, theirs, ours, ...): machine noise hits both alike. Nothing is downloaded (``YOLO_OFFLINE=1``;
models are built from ``yolov6n.yaml`` / ``yolov8n.yaml``). Parts:

a. torch eager forward at 640, batch 1, fused both sides, the same torch thread count both sides.
b. ONNX Runtime and OpenVINO latency of each library's own ONNX export, both run here by the same
   runtime with the same settings (yoloforge's OrtBackend / OpenVINOBackend), so only the graphs differ.
c. training img/s at 320, batch 8, coco128 train, 1 epoch: ours = our Trainer's epoch loop in fp32, bf16
   autocast (``--amp bf16``) and bf16 + channels_last (``--train-variants``), theirs = ``model.train`` (fp32:
   ultralytics has no CPU autocast); per-iteration step time (forward, loss, backward, optimizer step when due) and data
   wait measured the same way (around the loader's ``next``, resp. batch start/end callbacks).
d. validation of coco128 val at 640, wall time: ``Detector.val(backend="auto")`` (what ``yoloforge val``
   runs: on a CPU the fastest runtime at fp32, exported once before timing; rectangular batches) vs
   ``model.val`` (torch; rectangular batches). Both at batch 16, pad 0.5.
e. end-to-end predict over coco128 val at 640 (read, pre, model, post): ``Detector.predict(backend="auto")``
   and the int8 model of ``yoloforge quantize`` (OpenVINO) vs ultralytics' default ``model.predict`` (torch;
   rectangular letterbox). Issue goal: ours >= 4x faster.
f. trained models on the demo data (ours: ``yoloforge demo``'s recipe; theirs: ultralytics' defaults at the
   same epochs, size, batch), deployed as a CPU user would: ultralytics' OpenVINO export fp32 and int8
   (``int8=True``, NNCF) against our ``backend="auto"`` and ``yoloforge quantize`` int8; end-to-end predict
   over the demo val images in lock-step, with each path's mAP on that val split. Goal: ours >= 1.3x faster
   than their fastest path at equal or better mAP. Needs ``nncf`` in the ultralytics venv.

Note: ultralytics' yolov6n is not ours (4.50 M params / 13.0 GFLOPs vs 4.3 M / 11.0 fused): both are
printed, and the ms-per-GFLOP column normalises model time by FLOPs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import table

# idle before each measured model call in (a) and (b), as `yoloforge benchmark` does (see yoloforge.bench.measure);
# _ul_worker.py, which cannot import yoloforge, sleeps the same 0.05 s before its own measured calls
from yoloforge.bench import SETTLE_S

HERE = Path(__file__).resolve().parent
COCO = HERE.parents[1] / "shared" / "data" / "coco128"  # ../shared beside the repo


class UL:
    """The ultralytics worker process."""

    def __init__(self, python: str, workdir: Path):
        env = dict(os.environ, YOLO_OFFLINE="1", YOLO_VERBOSE="False", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.log = open(workdir / "ul_worker.log", "w")
        self.p = subprocess.Popen([python, str(HERE / "_ul_worker.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, cwd=workdir, env=env)

    def __call__(self, op: str, **args):
        self.start(op, **args)
        while self.wait_tick():
            self.go()
        return self.result

    # lock-step: start(op, lockstep=True); wait_tick() -> True while the op waits for go(); then .result
    def start(self, op: str, **args):
        self.op, self.result = op, None
        self._send(json.dumps({"op": op, "args": args}))

    def _send(self, text: str):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def go(self):
        self._send("go")

    def wait_tick(self) -> bool:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"ultralytics worker died (see {self.log.name})")
        r = json.loads(line)
        if "tick" in r:
            return True
        if not r["ok"]:
            raise RuntimeError(f"ultralytics {self.op}: {r['error']}\n{r.get('traceback', '')}")
        self.result = r["result"]
        return False

    def close(self):
        try:
            self.p.stdin.write('{"op": "quit"}\n')
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.p.kill()
        self.log.close()


def med_ms(ts) -> float:
    return 1e3 * statistics.median(ts)


def prepare_data(work: Path) -> tuple[Path, Path]:
    """A private copy of coco128 (ultralytics writes .cache files beside the labels) and two yamls:
    the full one, and one for ultralytics training whose val is 8 images (its unmeasured end-of-training val)."""
    root = work / "coco128"
    if not root.exists():
        shutil.copytree(COCO, root, ignore=shutil.ignore_patterns("*.cache"))
    names = [ln.split(":", 1)[1].strip() for ln in (COCO / "data.yaml").read_text().splitlines()
             if ln.startswith("  ") and ":" in ln]
    body = "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    full = work / "coco128.yaml"
    full.write_text(f"path: {root}\ntrain: images/train2017\nval: images/val2017\n" + body)
    few = sorted((root / "images/val2017").glob("*.jpg"))[:8]
    (work / "val8.txt").write_text("".join(f"{p}\n" for p in few))
    train = work / "coco128_train.yaml"
    train.write_text(f"path: {root}\ntrain: images/train2017\nval: {work / 'val8.txt'}\n" + body)
    return full, train


def ours_weights(work: Path, name: str = "yolov6n", training_mode: str = "") -> Path:
    """Untrained weights of ``name`` (80 classes); ``training_mode`` e.g. hyper_search: what ``--scales`` of a
    repopt run reads."""
    from yoloforge.families.registry import build_model
    from yoloforge.utils.checkpoint import save_weights

    m = build_model(name, **({"training_mode": training_mode} if training_mode else {}))
    m.names = [str(i) for i in range(m.nc)]
    stem = f"{name}_{training_mode}" if training_mode else name
    return save_weights(work / f"{stem}.safetensors", m, {"names": m.names, "imgsz": 640})


# ----------------------------------------------------------------------------------------------- parts
def part_a(ul, rows, info, n, threads):
    from yoloforge.export.onnx import deploy_copy
    from yoloforge.families.registry import build_model

    fused = deploy_copy(build_model("yolov6n").eval())
    x = torch.rand(1, 3, 640, 640)
    ours, theirs = [], {"yolov6n": [], "yolov8n": []}
    for r in range(n + 3):
        time.sleep(SETTLE_S)
        with torch.inference_mode():
            t = time.perf_counter()
            fused(x)
            dt = time.perf_counter() - t
        res = {k: ul("forward", name=k, imgsz=640, n=1, threads=threads)["times"][0] for k in theirs}
        if r >= 3:  # warm-up rounds excluded
            ours.append(dt)
            for k in theirs:
                theirs[k].append(res[k])
    o = med_ms(ours)
    for k, v in theirs.items():
        t = med_ms(v)
        rows.append([f"(a) torch fused fwd 640 b1 vs {k}, ms", o, t, o / t,
                     f"ms/GFLOP {o / info['ours_gflops']:.2f} vs {t / info[k]['gflops_fused']:.2f}; {threads} threads both"])


def part_b(ul, rows, info, work, n):
    from yoloforge.export.onnx import export_onnx
    from yoloforge.export.runtime import OpenVINOBackend, OrtBackend
    from yoloforge.families.registry import build_model

    m = build_model("yolov6n")
    paths = {"ours yolov6n": export_onnx(m, work / "ours_yolov6n.onnx", imgsz=640)}
    for k in ("yolov6n", "yolov8n"):
        paths[f"ul {k}"] = Path(ul("export", name=k, format="onnx", imgsz=640, outdir=str(work / f"ul_{k}"))["path"])
    fns = {f"{k} ort": OrtBackend(p) for k, p in paths.items()}
    try:
        from yoloforge.export.openvino import onnx_to_openvino

        for k, p in paths.items():
            fns[f"{k} ov"] = OpenVINOBackend(onnx_to_openvino(p, work / f"ov_{p.stem}", meta={"nc": 80, "imgsz": 640}))
    except Exception as e:  # noqa: BLE001
        print(f"(b) OpenVINO skipped: {type(e).__name__}: {e}")
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(n + 3):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            time.sleep(SETTLE_S)
            t = time.perf_counter()
            fns[k].outputs(x)
            if r >= 3:
                times[k].append(time.perf_counter() - t)
    for rt in ("ort", "ov"):
        if f"ours yolov6n {rt}" not in times:
            continue
        o = med_ms(times[f"ours yolov6n {rt}"])
        for k in ("yolov6n", "yolov8n"):
            t = med_ms(times[f"ul {k} {rt}"])
            rows.append([f"(b) {'ONNX Runtime' if rt == 'ort' else 'OpenVINO'} 640 b1 vs ul {k} export, ms", o, t, o / t,
                         f"ms/GFLOP {o / info['ours_gflops']:.2f} vs {t / info[k]['gflops_fused']:.2f}; same runtime, own graphs"])
    return times


class TimedLoader:
    """Wraps the trainer's loader: time inside the loader's next (wait) and between batches (step).
    ``hook()`` runs before each fetch, untimed (lock-step: ultralytics does one iteration there)."""

    def __init__(self, loader, hook=None):
        self.loader, self.sampler, self.marks, self.hook = loader, loader.sampler, [], hook

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            h = time.perf_counter()  # the previous step ends here
            if self.hook:
                self.hook()
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                self.marks.append((h, t0, None))
                return
            self.marks.append((h, t0, time.perf_counter()))
            yield b

    def split(self):
        waits = [b - a for _, a, b in self.marks if b is not None]
        steps = [self.marks[i + 1][0] - self.marks[i][2] for i in range(len(self.marks) - 1)]
        return steps, waits


# our training variants of (c): each lever of benchmarks/train_levers.py that the trainer exposes
# "repopt": YOLOv6's RepOptimizer mode, a plain conv-BN-act network like ultralytics' yolov6n.yaml (the
# like-for-like row); its gradient masks come from an untrained hyper_search model (speed only)
OURS_TRAIN = {"fp32": dict(amp="off"), "bf16": dict(amp="bf16"), "bf16+cl": dict(amp="bf16", channels_last=True),
              "repopt": dict(amp="off", training_mode="repopt"),
              "repopt+bf16+cl": dict(amp="bf16", channels_last=True, training_mode="repopt")}



def ours_train_epoch(data: Path, work: Path, imgsz: int, batch: int, workers: int, hook=None, **kw):
    from yoloforge.config import TrainConfig
    from yoloforge.engine.optim import warmup_iters
    from yoloforge.engine.trainer import Trainer

    cfg = TrainConfig(model="yolov6n", data=str(data), epochs=1, imgsz=imgsz, batch=batch, workers=workers,
                      device="cpu", project=str(work / "ours_runs"), name="t", exist_ok=True, close_mosaic=0,
                      plots=False, verbose=False, **kw)
    tr = Trainer(cfg)
    tr._setup()
    tr.train_loader = TimedLoader(tr.train_loader, hook)
    nb = len(tr.train_loader)
    tr._train_epoch(0, nb, warmup_iters(tr.hyp, nb, cfg.epochs))
    return tr.train_loader.split()


def part_c(ul, rows, info, data_train, work, rounds, threads, variants):
    """Theirs at its default threads (1 torch thread on a 2-core machine) and at ours, and yolov8n; ours in each
    of ``variants`` (OURS_TRAIN keys; bf16 only where the CPU has it natively, else it is emulated and slow)."""
    imgsz, batch, workers = 320, 8, 2
    ours = {v: ([], []) for v in variants}
    theirs = {("yolov6n", None): ([], []), ("yolov6n", threads): ([], []), ("yolov8n", None): ([], []),
              ("yolov8n", threads): ([], [])}
    seen = {}
    scales = str(ours_weights(work, training_mode="hyper_search")) if any(v.startswith("repopt") for v in variants) else ""
    for _ in range(rounds):
        for (k, th), (ts, tw) in theirs.items():
            for v, (os_, ow) in ours.items():  # one epoch of ours in lock-step with one of theirs
                ul.start("train", name=k, data=str(data_train), imgsz=imgsz, batch=batch, epochs=1, workers=workers,
                         project=str(work / "ul_runs"), threads=th, lockstep=True)
                alive = [ul.wait_tick()]  # theirs is set up and waits before its first batch

                def hook():
                    if alive[0]:
                        ul.go()
                        alive[0] = ul.wait_tick()
                kw = dict(OURS_TRAIN[v], **({"scales": scales} if v.startswith("repopt") else {}))
                s, w = ours_train_epoch(data_train, work, imgsz, batch, workers, hook, **kw)
                while alive[0]:
                    hook()
                r = ul.result
                os_ += s[1:]  # the first iteration warms up (both sides)
                ow += w[1:]
                ts += r["steps"][1:]
                tw += r["waits"][1:]
                seen[(k, th)] = r["threads"]

    def ips(s, w):
        return batch / (statistics.median(s) + statistics.median(w))

    def frac(s, w):
        return statistics.median(w) / (statistics.median(s) + statistics.median(w))
    for v, (os_, ow) in ours.items():
        o = ips(os_, ow)
        for (k, th), (ts, tw) in theirs.items():
            t = ips(ts, tw)
            theirs_threads = seen[(k, th)]
            per_gflop = (o * info["ours_gflops"]) / (t * info[k]["gflops_fused"])  # img/s x GFLOPs (640, fused)
            rows.append([f"(c) train 320 b8 img/s, ours {v} vs ul {k} ({theirs_threads} thr)", o, t, o / t,
                         f"per GFLOP {per_gflop:.2f}x; "
                         f"step {med_ms(os_):.0f} vs {med_ms(ts):.0f} ms, data wait {100 * frac(os_, ow):.0f}% vs "
                         f"{100 * frac(ts, tw):.0f}%; threads {torch.get_num_threads()} vs {theirs_threads}; "
                         f"{len(os_)} vs {len(ts)} iters"])


def part_d(ul, rows, data, weights, rounds, threads):
    from yoloforge.api import Detector

    det = Detector(weights)
    kind = getattr(det.runtime("auto", 640), "kind", "torch")  # `yoloforge val`'s default; exported once here, not timed
    ours, theirs = [], []
    for _ in range(rounds):
        time.sleep(1.0)  # let the other side's loader workers and thread pools wind down
        t = time.perf_counter()
        m = det.val(str(data), imgsz=640, batch=16, workers=2, verbose=False, backend="auto")
        ours.append(time.perf_counter() - t)
        time.sleep(1.0)
        r = ul("val", name="yolov6n", data=str(data), imgsz=640, batch=16, workers=2, threads=threads)
        theirs.append(r["seconds"])
    o, t = statistics.median(ours), statistics.median(theirs)
    s = m.speed_ms
    ts = r["speed_ms"]
    rows.append(["(d) val coco128 640 (untrained), s", o, t, o / t,
                 f"per img pre/model/post ours {s['pre']:.0f}/{s['model']:.0f}/{s['post']:.0f} ms, theirs "
                 f"{ts['preprocess']:.0f}/{ts['inference']:.0f}/{ts['postprocess']:.0f} ms; {threads} threads both; "
                 f"ours backend={kind} fp32"])


def part_e(ul, rows, weights, rounds, threads_list, data_train, work):
    from yoloforge.api import Detector
    from yoloforge.quant.ptq import quantize

    src = str(COCO / "images/val2017")
    det = Detector(weights)
    preds = {"auto": det.predictor(imgsz=640, backend="auto")}  # exported once and cached here: not timed
    # `yoloforge quantize` of the same weights (32 coco128 train images; not timed), run by OpenVINO
    rep = quantize(weights, data_train, out_dir=work / "int8", n_calib=32, sensitivity=False, evaluate=False,
                   verbose=False)
    preds["int8"] = Detector(str(Path(rep.openvino) / "model.xml")).predictor(imgsz=640)

    for p in preds.values():
        sum(1 for _ in p(src, stream=True))  # warm-up pass
    ul("predict", name="yolov6n", source=src, imgsz=640, threads=threads_list[0])  # warm-up pass
    ours = {k: {th: [] for th in threads_list} for k in preds}
    theirs = {th: [] for th in threads_list}
    for _ in range(rounds):
        for th in threads_list:  # image by image in lock-step: ours one image (each variant), theirs one image, ...
            gens = {k: p(src, stream=True) for k, p in preds.items()}
            ul.start("predict", name="yolov6n", source=src, imgsz=640, threads=th, lockstep=True)
            while ul.wait_tick():
                for k, gen in gens.items():
                    t = time.perf_counter()
                    next(gen, None)
                    ours[k][th].append(time.perf_counter() - t)
                ul.go()
            theirs[th] += ul.result["per_image"][1:]
    for k, p in preds.items():
        kind = getattr(p.model, "kind", "torch") + (" int8" if k == "int8" else "")
        for th, v in theirs.items():
            o, t = med_ms(ours[k][th][1:]), med_ms(v)
            rows.append([f"(e) predict e2e ms/img, ours {k} vs ul default ({th} thr)", o, t, o / t,
                         f"ours backend={kind}; speedup {t / o:.2f}x (goal >= 4x); means "
                         f"{1e3 * statistics.fmean(ours[k][th]):.0f} vs {1e3 * statistics.fmean(v):.0f}"])


def part_f(ul, rows, work, rounds, threads):
    """Trained models both sides on the demo data (ours: the demo recipe; theirs: ultralytics' defaults, same
    epochs / size / batch / close_mosaic), then what a CPU user deploys: ultralytics' OpenVINO export at fp32 and
    int8 (NNCF), ours through ``backend="auto"`` and ``yoloforge quantize`` (OpenVINO int8). End-to-end predict
    (read, pre, model, post) over the demo val images in lock-step, and each path's mAP on that val split by
    its own library's val (ours: pycocotools-exact; theirs: ultralytics' metric)."""
    from _common import DEMO, demo_data, demo_model

    from yoloforge.api import Detector
    from yoloforge.quant.ptq import quantize

    imgsz = DEMO["imgsz"]
    data = demo_data(work / "demo")  # the demo's images (seed 0), a private copy: ultralytics writes .cache files
    src = str(data.parent / "images" / "val")
    ul_yaml = work / "demo_ul.yaml"  # ultralytics reads a relative `path:` from its own datasets folder
    ul_yaml.write_text(data.read_text().replace("path: .", f"path: {data.parent}"))
    best = demo_model(0)  # ours, trained once and cached (benchmarks/_common)
    r = ul("train_full", name="yolov6n", data=str(ul_yaml), imgsz=imgsz, batch=DEMO["batch"], epochs=DEMO["epochs"],
           workers=DEMO["workers"], project=str(work / "ul_demo"), close_mosaic=DEMO["close_mosaic"], threads=threads)
    print(f"(f) ultralytics yolov6n trained on the demo data in {r['seconds']:.0f} s", flush=True)
    theirs = {"torch": r["best"]}
    theirs["openvino fp32"] = ul("export_weights", weights=r["best"], format="openvino", imgsz=imgsz)["path"]
    theirs["openvino int8"] = ul("export_weights", weights=r["best"], format="openvino", imgsz=imgsz, int8=True,
                                 data=str(ul_yaml))["path"]
    rep = quantize(best, data, out_dir=work / "demo_int8", n_calib=32, sensitivity=False, evaluate=False, verbose=False)
    ours_w = {"auto": str(best), "int8": str(Path(rep.openvino) / "model.xml")}
    preds = {"auto": Detector(best).predictor(imgsz=imgsz, backend="auto"), "int8": Detector(ours_w["int8"]).predictor(imgsz=imgsz)}
    kinds = {k: getattr(p.model, "kind", "torch") + (" int8" if k == "int8" else "") for k, p in preds.items()}
    maps = {f"ours {k}": Detector(w).val(str(data), imgsz=imgsz, batch=1 if k == "int8" else 16, verbose=False,
                                         **({"backend": "auto"} if k == "auto" else {})) for k, w in ours_w.items()}
    maps = {k: (m.map, m.map50) for k, m in maps.items()}
    for k, w in theirs.items():
        v = ul("val_weights", weights=w, data=str(ul_yaml), imgsz=imgsz, batch=16 if k == "torch" else 1, threads=threads)
        maps[f"ul {k}"] = (v["map"], v["map50"])
    for p in preds.values():
        sum(1 for _ in p(src, stream=True))  # warm-up pass
    ours_t = {k: [] for k in preds}
    theirs_t = {k: [] for k in theirs}
    for k, w in theirs.items():
        ul("predict", name="yolov6n", source=src, imgsz=imgsz, threads=threads, weights=w)  # warm-up pass
    for _ in range(rounds):
        for k, w in theirs.items():  # image by image in lock-step: ours one image (each variant), theirs one, ...
            gens = {o: p(src, stream=True) for o, p in preds.items()}
            ul.start("predict", name="yolov6n", source=src, imgsz=imgsz, threads=threads, lockstep=True, weights=w)
            while ul.wait_tick():
                for o, gen in gens.items():
                    t = time.perf_counter()
                    next(gen, None)
                    ours_t[o].append(time.perf_counter() - t)
                ul.go()
            theirs_t[k] += ul.result["per_image"][1:]
    for o in preds:
        for k in theirs:
            a, b = med_ms(ours_t[o]), med_ms(theirs_t[k])
            (om, om50), (tm, tm50) = maps[f"ours {o}"], maps[f"ul {k}"]
            rows.append([f"(f) predict e2e ms/img demo {imgsz}, ours {o} vs ul {k}", a, b, a / b,
                         f"speedup {b / a:.2f}x (goal >= 1.3x vs their best path); mAP50-95/mAP50 ours "
                         f"{om:.3f}/{om50:.3f} ({kinds[o]}) vs theirs {tm:.3f}/{tm50:.3f}"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ul-python", required=True, help="python of the ultralytics venv (see the docstring)")
    ap.add_argument("--parts", default="a,b,c,d,e,f")
    ap.add_argument("--n", type=int, default=20, help="measured rounds for (a) and (b)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds for (c), (d), (e)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--train-variants", default="fp32,bf16,bf16+cl,repopt+bf16+cl",
                    help=f"ours in (c), of {','.join(OURS_TRAIN)} (bf16: natively only on AVX512-BF16 / AMX CPUs)")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="yoloforge-vs-ul-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    from yoloforge.families.registry import build_model
    from yoloforge.export.onnx import deploy_copy
    from yoloforge.utils.flops import count_gflops, count_params

    m = build_model("yolov6n").eval()
    f = deploy_copy(m)
    info = {"ours_params": count_params(m), "ours_params_fused": count_params(f), "ours_gflops": count_gflops(f, 640)}
    ul = UL(a.ul_python, work)
    try:
        hello = ul("hello")
        for k in ("yolov6n", "yolov8n"):
            info[k] = ul("info", name=k, imgsz=640)
        print(f"load before: {os.getloadavg()}; ours torch {torch.__version__} {threads} threads; ultralytics "
              f"{hello['ultralytics']} torch {hello['torch']} (its default on CPU: {hello['default_threads']} thread(s), OMP_NUM_THREADS={hello['omp_env']})")
        print(f"params/GFLOPs 640: ours yolov6n {info['ours_params'] / 1e6:.2f}M ({info['ours_params_fused'] / 1e6:.2f}M fused) / "
              f"{info['ours_gflops']:.1f} fused; " + "; ".join(
                  f"ul {k} {info[k]['params'] / 1e6:.2f}M / {info[k]['gflops']:.1f} ({info[k]['gflops_fused']:.1f} fused)"
                  for k in ("yolov6n", "yolov8n")))
        data, data_train = prepare_data(work)
        weights = ours_weights(work)
        rows = []
        for p, fn in (("a", lambda: part_a(ul, rows, info, a.n, threads)),
                      ("b", lambda: part_b(ul, rows, info, work, a.n)),
                      ("c", lambda: part_c(ul, rows, info, data_train, work, a.rounds, threads, a.train_variants.split(","))),
                      ("d", lambda: part_d(ul, rows, data, weights, a.rounds, threads)),
                      ("e", lambda: part_e(ul, rows, weights, a.rounds, [hello["default_threads"], threads], data_train, work)),
                      ("f", lambda: part_f(ul, rows, work, a.rounds, threads))):
            if p in parts:
                t = time.perf_counter()
                n0 = len(rows)
                fn()
                print(f"part {p} done in {time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)
                print(table(["measurement", "ours", "ultralytics", "ours/theirs", "notes"], rows[n0:]), flush=True)
        print(table(["measurement", "ours", "ultralytics", "ours/theirs", "notes"], rows))
        print(f"load after: {os.getloadavg()}")
    finally:
        ul.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
