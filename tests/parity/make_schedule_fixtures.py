"""Record the learning-rate schedule of whole official training runs (tests/test_parity_schedule.py).

    PYTHONPATH=. TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python tests/parity/make_schedule_fixtures.py \\
        --family yolov7 --repo path/to/WongKinYiu/yolov7
    ... --family sy4-csp --repo path/to/ScaledYOLOv4@yolov4-csp
    ... --family sy4-large --repo path/to/ScaledYOLOv4@yolov4-large

The official train.py runs unmodified in this process on the 15-image set of tests/parity/step_data.py
(batch 5: 3 iterations an epoch) for 340 epochs (1020 iterations: the 1000-iteration warm-up and the epochs
after it). Only the work the schedule does not depend on is made cheap at run time: the model's forward
returns a zero tied to one parameter, the loss is that zero, and the per-epoch test returns zeros
(ScaledYOLOv4 also needs ``np.int`` -> ``int`` in its checkout on today's numpy, and its plot colours are
read with matplotlib's own parser, its batch mosaics are not drawn; yolov4-large's
``_initialize_biases`` needs ``b.data`` for its in-place bias init on today's torch). Every
iteration records the lr of each parameter group and the momentum as the loss sees them (after the
script's warm-up code of that iteration), and every optimizer step its iteration index: that is the
schedule, the accumulation and the step rule. One run per official hyp file (and yolov7's --linear-lr).
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
EPOCHS = 340


def record_run(repo: Path, tmp: Path, argv: list[str], loss_module: str, loss_names: list[str]) -> dict:
    import importlib

    sys.path.insert(0, str(repo))
    os.chdir(repo)
    from tests.parity.step_data import make_step_data

    data_yaml = make_step_data(tmp / "data")
    models = importlib.import_module("models.yolo" if (repo / "models" / "yolo.py").exists() else "models.models")
    model_cls = getattr(models, "Model", None) or getattr(models, "Darknet")
    test = importlib.import_module("test")
    rec = dict(lr=[], momentum=[], steps=[])
    state = {"opt": None}

    real_forward = model_cls.forward

    def cheap_forward(self, x, *a, **k):
        if x.shape[0] == 1:  # the stride probe of the model's constructor
            return real_forward(self, x, *a, **k)
        p = next(self.parameters())
        return [p.view(-1)[:1].sum() * 0.0]

    def cheap_loss(*args, **kw):
        p = args[0] if isinstance(args[0], (list, tuple)) else args[1]  # compute_loss(p, ...) or loss(self, p, ...)
        zero = p[0]
        opt = state["opt"]
        rec["lr"].append([g["lr"] for g in opt.param_groups])
        rec["momentum"].append(opt.param_groups[0]["momentum"])
        return zero, torch.zeros(4)

    model_cls.forward = cheap_forward
    mod = importlib.import_module(loss_module)
    for name in loss_names:
        obj = getattr(mod, name)
        if isinstance(obj, type):
            obj.__call__ = lambda self, *a, **k: cheap_loss(self, *a, **k)
        else:
            setattr(mod, name, cheap_loss)
    test.test = lambda *a, **k: ((0.0,) * 7, np.zeros(4), (0.0, 0.0, 0.0))
    plots = importlib.import_module("utils.plots" if (repo / "utils" / "plots.py").exists() else "utils.general")
    if hasattr(plots, "color_list"):  # ScaledYOLOv4's hex parser fails on today's matplotlib colour cycle
        import matplotlib.colors as mcolors
        import matplotlib.pyplot as plt

        plots.color_list = lambda: [tuple(int(255 * v) for v in mcolors.to_rgb(c))
                                    for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
    plots.plot_images = lambda *a, **k: None  # the batch mosaics (the same hex parser in yolov4-large)
    step = torch.optim.SGD.step

    def recording_step(self, *a, **k):
        state["opt"] = self
        rec["steps"].append(len(rec["lr"]) - 1)
        return step(self, *a, **k)

    init = torch.optim.SGD.__init__

    def recording_init(self, *a, **k):
        init(self, *a, **k)
        state["opt"] = self

    torch.optim.SGD.step, torch.optim.SGD.__init__ = recording_step, recording_init
    where = (["--workers", "0", "--project", str(tmp / "runs"), "--exist-ok"] if "--project" in (repo / "train.py").read_text()
             else ["--logdir", str(tmp / "runs")])  # yolov4-large's train.py: --logdir, workers fixed
    sys.argv = ["train.py", "--data", str(data_yaml)] + argv + [
        "--epochs", str(EPOCHS), "--batch-size", "5", "--img-size", "128", "128", "--notest", "--nosave",
        "--device", "cpu"] + where
    try:
        runpy.run_path(str(repo / "train.py"), run_name="__main__")
    finally:
        torch.optim.SGD.step, torch.optim.SGD.__init__ = step, init
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rec.items()}


def add_mish_stub(tmp: Path) -> None:
    """Make ``import mish_cuda`` (a CUDA extension yolov4-large imports) find ../shared's plain-Mish stand-in."""
    stub = Path(__file__).resolve().parents[3] / "shared" / "tools" / "official-stubs" / "mish_cuda"
    if stub.is_dir():
        (tmp / "stubs").mkdir(exist_ok=True)
        (tmp / "stubs" / "mish_cuda").symlink_to(stub)
        sys.path.insert(0, str(tmp / "stubs"))


def yolov6_config(repo: Path, tmp: Path, name: str, over: dict) -> Path:
    """A copy of the official configs/<name>.py with a few dict entries set (the official training of 0.2.0
    reads ``model.head.distill_weight`` even without --distill; the value of configs/yolov6n.py at 0.3.0)."""
    text = (repo / "configs" / f"{name}.py").read_text()
    text += "\nmodel['head']['distill_weight'] = {'class': 1.0, 'dfl': 1.0}\n"
    for section, values in over.items():
        text += f"{section}.update({values!r})\n"
    path = tmp / f"{name}_parity.py"
    path.write_text(text)
    return path


def record_yolov6(repo: Path, tmp: Path) -> dict:
    """YOLOv6 0.2.0 tools/train.py: its engine updates lr / momentum after the backward, right before a
    possible step, so the schedule is recorded at each optimizer step."""
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    from tests.parity.step_data import make_step_data

    data_yaml = make_step_data(tmp / "data")
    import yolov6.core.engine as engine
    import yolov6.models.yolo as yolo

    rec = dict(step_lr=[], step_momentum=[], steps=[])
    calls = [0]
    real_forward = yolo.Model.forward

    def cheap_forward(self, x):
        if not self.training or x.shape[0] == 1:
            return real_forward(self, x)
        return next(self.parameters()).view(-1)[:1].sum() * 0.0, None

    def cheap_loss(self, outputs, targets, epoch_num):
        calls[0] += 1
        return outputs, torch.zeros(3)

    yolo.Model.forward = cheap_forward
    engine.ComputeLoss.__call__ = cheap_loss
    engine.Trainer.eval_model = lambda self: setattr(self, "evaluate_results", (0.0, 0.0))
    step = torch.optim.SGD.step

    def recording_step(self, *a, **k):
        rec["steps"].append(calls[0] - 1)
        rec["step_lr"].append([g["lr"] for g in self.param_groups])
        rec["step_momentum"].append(self.param_groups[0]["momentum"])
        return step(self, *a, **k)

    torch.optim.SGD.step = recording_step
    cfg = yolov6_config(repo, tmp, "yolov6n", {})
    sys.argv = ["tools/train.py", "--data-path", str(data_yaml), "--conf-file", str(cfg), "--img-size", "128",
                "--batch-size", "5", "--epochs", str(EPOCHS), "--workers", "0", "--device", "cpu",
                "--output-dir", str(tmp / "runs"), "--eval-final-only"]
    try:
        runpy.run_path(str(repo / "tools" / "train.py"), run_name="__main__")
    finally:
        torch.optim.SGD.step = step
    rec["iterations"] = calls[0]
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rec.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=["yolov7", "sy4-csp", "sy4-large", "yolov6"])
    ap.add_argument("--repo", required=True, type=Path)
    ap.add_argument("--run", default="", help="one run of the family (the script is re-run per run)")
    args = ap.parse_args()
    repo = args.repo.resolve()
    runs = {
        "yolov7": {"tiny": ["--hyp", "data/hyp.scratch.tiny.yaml", "--cfg", "cfg/training/yolov7-tiny.yaml"],
                   "p5": ["--hyp", "data/hyp.scratch.p5.yaml", "--cfg", "cfg/training/yolov7-tiny.yaml"],
                   "p6": ["--hyp", "data/hyp.scratch.p6.yaml", "--cfg", "cfg/training/yolov7-tiny.yaml"],
                   "tiny-linear": ["--hyp", "data/hyp.scratch.tiny.yaml", "--cfg", "cfg/training/yolov7-tiny.yaml",
                                   "--linear-lr"]},
        "sy4-csp": {"csp": ["--hyp", "data/hyp.scratch.yaml", "--cfg", "models/yolov4-csp.cfg"]},
        "sy4-large": {"large": ["--hyp", "data/hyp.scratch.yaml", "--cfg", "models/yolov4-p5.yaml"]},
        "yolov6": {"n": []},
    }[args.family]
    loss = {"yolov7": ("utils.loss", ["ComputeLossOTA", "ComputeLoss"]), "sy4-csp": ("utils.loss", ["compute_loss"]),
            "sy4-large": ("utils.general", ["compute_loss"]), "yolov6": None}[args.family]
    if not args.run:  # one process per run: the official modules keep state between runs
        import subprocess

        for name in runs:
            subprocess.run([sys.executable, __file__, "--family", args.family, "--repo", str(repo), "--run", name],
                           check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.family == "sy4-large":
            add_mish_stub(Path(tmp))
        if args.family == "yolov6":
            rec = record_yolov6(repo, Path(tmp))
        else:
            argv = runs[args.run] + ["--weights", ""] + (["--noautoanchor"] if args.family != "sy4-csp" else [])
            rec = record_run(repo, Path(tmp), argv, *loss)
    path = OUT / "schedule.pt"
    allrec = torch.load(path, weights_only=True) if path.exists() else {}
    allrec[f"{args.family}:{args.run}"] = dict(rec, epochs=EPOCHS, batches=3, batch=5, argv=runs[args.run])
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(allrec, path)
    print(f"{args.family}:{args.run}: {len(rec['steps'])} optimizer steps -> {path}")


if __name__ == "__main__":
    main()
