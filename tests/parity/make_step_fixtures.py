"""Make the one-optimizer-step fixtures of tests/test_parity_step.py by running the OFFICIAL train.py.

    PYTHONPATH=. TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python tests/parity/make_step_fixtures.py \\
        --family yolov7 --repo path/to/WongKinYiu/yolov7

in a venv with torch 2.14.1 + torchvision 0.29.1 (+ the official requirements). The official script runs
unmodified, in this process, with three run-time hooks: ``random_perspective`` returns its input (every
augmentation is off, but yolov7's scale gain is drawn from [1 - scale, 1.1 + scale] even at scale 0),
``augment_hsv`` does nothing (at gains 0 it would still send the image through a lossy uint8 HSV round
trip, which yoloforge skips), and
``ModelEMA.update`` records the model and the EMA after the wanted optimizer steps, then stops the run.

Initial weights: yoloforge's seeded model (tests/parity/step_data.py) carried into the official layout
through yoloforge's own checkpoint converter run backwards: the official model is filled with the index
of each element, converted, and the converted model says which official element every yoloforge element
came from. The fixture keeps, per yoloforge tensor, the official updates (value after each recorded step
minus the initial value) at 32 evenly spaced positions (every position of tensors up to 64 elements;
``step_data.sample_positions``).

Cases (batch 5, 3 batches an epoch): ``warmup``: a fresh run (epoch 0, warm-up of 1000 iterations,
accumulation 1 at first), the states after optimizer steps 1, 2 and 3; ``mid-warmup``: a run started at
epoch 165 (iterations 495-497, accumulation ramped to 7: one step after three accumulated batches);
``post``: a run started at epoch 346 (iterations 1038-1040, after the warm-up, accumulation 13: one step
after three batches) with ``lrf`` 1 (the official script starts a continued run at lr0 * lf(0), since
setting ``scheduler.last_epoch`` does not change the lr). All in float64 (see tests/parity/step_data.py).
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "fixtures" / "parity"


class _Stop(Exception):
    pass


def probe_map(official_model, name: str, tmp: Path) -> dict[str, torch.Tensor]:
    """yoloforge key -> (same shape) long tensor of flat indices into the official floating state."""
    from yoloforge.convert.official import load_official

    sd = official_model.state_dict()
    keys = [k for k, v in sd.items() if v.dtype.is_floating_point and "anchor" not in k]
    saved = {k: sd[k].clone() for k in keys}
    offset = sum(sd[k].numel() for k in keys)
    # indices above 2^24 are not exact in float32: probe twice, with the index modulo 4096 and divided by it
    passes = [(1, 0)] if offset < 2 ** 24 else [(1, 4096), (4096, 0)]
    out = {}
    for div, mod in passes:
        with torch.no_grad():
            start = 0
            for k in keys:
                ids = torch.arange(start, start + sd[k].numel(), dtype=torch.long) // div
                sd[k].copy_((ids % mod if mod else ids).view_as(sd[k]).float())
                start += sd[k].numel()
        torch.save({"model": official_model}, tmp / "probe.pt")
        yf, _ = load_official(tmp / "probe.pt", variant=name)
        for k, v in yf.state_dict().items():
            if v.dtype.is_floating_point and "anchor" not in k and v.numel():
                out[k] = out.get(k, 0) + v.round().long() * div
    with torch.no_grad():
        for k in keys:
            sd[k].copy_(saved[k])
    used = torch.cat([v.flatten() for v in out.values()])
    if torch.unique(used).numel() != used.numel():
        raise SystemExit("the converter copies an official element twice here")
    if used.numel() != offset:  # official tensors with no yoloforge counterpart: name them, keep them as they are
        seen = torch.zeros(offset, dtype=torch.bool)
        seen[used] = True
        starts, left = 0, []
        for k in keys:
            n = sd[k].numel()
            if not seen[starts:starts + n].all():
                left.append(k)
            starts += n
        print(f"official tensors without a yoloforge counterpart (left at their values): {left}")
        keys = [k for k in keys if k not in left]
        remap = torch.full((offset,), -1, dtype=torch.long)
        keep = torch.cat([torch.ones(sd[k].numel(), dtype=torch.bool) * (k in keys) for k in saved])
        remap[keep] = torch.arange(int(keep.sum()))
        out = {k: remap[v] for k, v in out.items()}
    return out, keys


def flat_official(state: dict, keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].detach().double().flatten() for k in keys])


def load_into_official(official, yf, idx_map: dict, keys: list[str]) -> None:
    """Copy the yoloforge model's weights into the official model through the probe map."""
    sd = official.state_dict()
    flat = torch.zeros(sum(sd[k].numel() for k in keys), dtype=torch.float64)
    for k, ids in idx_map.items():
        flat[ids.flatten()] = yf.state_dict()[k].double().flatten()
    with torch.no_grad():
        off = 0
        for k in keys:
            n = sd[k].numel()
            sd[k].copy_(flat[off:off + n].view_as(sd[k]))
            off += n


def case_tensors(records: list, yf, idx_map: dict) -> dict:
    """Per yoloforge tensor: the official updates (value - initial value, float32: 1e-7 of the update is plenty
    for a 1e-5 check) of the model and the EMA after each recorded step, at the sampled positions."""
    from tests.parity.step_data import sample_positions

    out = {}
    for k, ids in idx_map.items():
        pos = sample_positions(ids.numel())
        sel = ids.flatten()[pos]
        init = yf.state_dict()[k].double().flatten()[pos]
        out[k] = dict(init=init[:4], model=[(r[0][sel] - init).float() for r in records],
                      ema=[(r[1][sel] - init).float() for r in records])
    return out


WKY = {  # the two yolov5-lineage scripts: yolov7 train.py and ScaledYOLOv4@yolov4-large train.py
    "yolov7": dict(name="yolov7-tiny", cfg="cfg/training/yolov7-tiny.yaml", hyp="data/hyp.scratch.tiny.yaml",
                   source="WongKinYiu/yolov7 train.py, data/hyp.scratch.tiny.yaml",
                   where=lambda tmp, case: ["--workers", "0", "--project", str(tmp / "runs"), "--name", case,
                                            "--exist-ok"],
                   cases=(("warmup", 0, 300, None, 3), ("mid-warmup", 165, 300, None, 1), ("post", 346, 347, 1.0, 1))),
    # post-warm-up: its lr floor is hard-coded (cosine * 0.8 + 0.2, no lrf), so the continued run (which the
    # official script starts at lr0 * lf(0)) has 10^7 epochs: lf(345 / 10^7) = 1 - 2e-9, so lr0 on both sides;
    # --rect: its mosaic has no switch
    "sy4-large": dict(name="yolov4-p5", cfg="models/yolov4-p5.yaml", hyp="data/hyp.scratch.yaml",
                      source="WongKinYiu/ScaledYOLOv4@yolov4-large train.py, data/hyp.scratch.yaml",
                      where=lambda tmp, case: ["--logdir", str(tmp / "runs" / case), "--rect"],
                      cases=(("warmup", 0, 300, None, 3), ("mid-warmup", 165, 300, None, 1),
                             ("post", 346, 10 ** 7, None, 1))),
}


def run_yolov7(repo: Path, tmp: Path, family: str = "yolov7") -> None:
    import yaml

    sys.path.insert(0, str(repo))
    os.chdir(repo)
    import utils.datasets as datasets
    import utils.torch_utils as torch_utils
    from models.yolo import Model

    from tests.parity.step_data import BATCH, IMGSZ, N_IMAGES, NC, NO_AUG, float64, initial_model, make_step_data

    data_yaml = make_step_data(tmp / "data")
    spec = WKY[family]
    name = spec["name"]
    yf = initial_model(name)
    official = Model(str(repo / spec["cfg"]), ch=3, nc=NC)
    idx_map, keys = probe_map(official, name, tmp)
    load_into_official(official, yf, idx_map, keys)

    datasets.random_perspective = lambda img, targets=(), segments=(), **kw: (img, targets)
    datasets.augment_hsv = lambda img, *a, **kw: None  # gains 0: skip the lossy uint8 BGR -> HSV -> BGR trip
    records, original = [], torch_utils.ModelEMA.update

    def recording_update(self, model):
        original(self, model)
        records.append((flat_official(model.state_dict(), keys), flat_official(self.ema.state_dict(), keys)))
        if len(records) >= wanted[0]:
            raise _Stop

    torch_utils.ModelEMA.update = recording_update
    losses = []
    if family == "yolov7":
        import utils.loss as official_loss

        loss_call = official_loss.ComputeLossOTA.__call__

        def recording_loss(self, p, targets, imgs):
            out = loss_call(self, p, targets, imgs)
            losses.append(float(out[0]))
            return out

        official_loss.ComputeLossOTA.__call__ = recording_loss
    else:  # yolov4-large: utils.general.compute_loss, imported by train.py when it runs
        import utils.general as general

        loss_fn = general.compute_loss

        def recording_compute_loss(p, targets, model):
            out = loss_fn(p, targets, model)
            losses.append(float(out[0]))
            return out

        general.compute_loss = recording_compute_loss
        general.plot_images = lambda *a, **k: None  # its hex colour parser fails on today's matplotlib
    hyp = yaml.safe_load((repo / spec["hyp"]).read_text())
    hyp.update(NO_AUG)
    fixture = dict(model=name, batch=BATCH, imgsz=IMGSZ, source=spec["source"])
    nb = -(-N_IMAGES // BATCH)
    for case, start_epoch, epochs, lrf, steps in spec["cases"]:
        lrf = lrf if lrf is not None else hyp.get("lrf", 0.2)
        h = dict(hyp, lrf=lrf) if "lrf" in hyp else dict(hyp)
        (tmp / f"hyp_{case}.yaml").write_text(yaml.safe_dump(h))
        torch.save({"model": official, "optimizer": None, "epoch": start_epoch - 1, "best_fitness": None,
                    "training_results": None, "ema": None}, tmp / f"init_{case}.pt")
        records.clear()
        losses.clear()
        wanted = [steps]
        sys.argv = ["train.py", "--weights", str(tmp / f"init_{case}.pt"), "--cfg", spec["cfg"],
                    "--data", str(data_yaml), "--hyp", str(tmp / f"hyp_{case}.yaml"), "--epochs", str(epochs),
                    "--batch-size", str(BATCH), "--img-size", str(IMGSZ), str(IMGSZ), "--noautoanchor", "--notest",
                    "--nosave", "--device", "cpu"] + spec["where"](tmp, case)
        try:
            with float64():
                runpy.run_path(str(repo / "train.py"), run_name="__main__")
        except _Stop:
            pass
        if len(records) < steps:
            raise SystemExit(f"{case}: the official run stopped after {len(records)} of {steps} steps")
        out = case_tensors(records, yf, idx_map)
        # a continued yolov4-large run sets its EMA counter to start_epoch * nb // accumulate (train.py:158)
        ema_updates = start_epoch * nb // max(round(64 / BATCH), 1) if family == "sy4-large" else 0
        fixture[case] = dict(start_epoch=start_epoch, epochs=epochs, lrf=lrf, steps=steps, losses=list(losses),
                             ema_updates=ema_updates,
                             first_it=start_epoch * nb, tensors=out)
        print(f"{case}: recorded {len(records)} step(s) from epoch {start_epoch}, losses {losses}")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, OUT / f"step_{name}.pt")
    print(f"wrote {OUT / f'step_{name}.pt'}")


def run_yolov6(repo: Path, tmp: Path) -> None:
    """YOLOv6 0.2.0 tools/train.py with configs/yolov6n.py (a copy with ``pretrained`` set and every data_aug
    value 0), its train loader without shuffle (the only run-time hook besides the recording), in float64."""
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    from tests.parity.make_loss_fixtures import _no_cuda
    from tests.parity.make_schedule_fixtures import yolov6_config
    from tests.parity.step_data import BATCH, IMGSZ, N_IMAGES, NC, float64, initial_model, make_step_data

    import yolov6.core.engine as engine
    import yolov6.utils.ema as ema_mod
    from yolov6.models.yolo import build_model as official_build
    from yolov6.solver.build import build_lr_scheduler, build_optimizer
    from yolov6.utils.config import Config

    data_yaml = make_step_data(tmp / "data")
    name = "yolov6n"
    yf = initial_model(name)
    aug = {k: 0.0 for k in ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "flipud", "fliplr",
                            "mosaic", "mixup")}
    cfg_path = yolov6_config(repo, tmp, name, {"data_aug": aug})
    cfg = Config.fromfile(str(cfg_path))
    if not hasattr(cfg, "training_mode"):  # as tools/train.py check_and_init does
        setattr(cfg, "training_mode", "repvgg")
    with _no_cuda():
        official = official_build(cfg, NC, "cpu")
    idx_map, keys = probe_map(official, name, tmp)
    load_into_official(official, yf, idx_map, keys)
    torch.save({"model": official}, tmp / "init.pt")
    cfg_path = yolov6_config(repo, tmp, name, {"data_aug": aug, "model": {"pretrained": str(tmp / "init.pt")}})

    real_loader = engine.create_dataloader
    engine.create_dataloader = lambda *a, **k: real_loader(*a, **dict(k, shuffle=False))
    engine.Trainer.eval_model = lambda self: setattr(self, "evaluate_results", (0.0, 0.0))
    records, original = [], ema_mod.ModelEMA.update
    wanted = [0]

    def recording_update(self, model):
        original(self, model)
        records.append((flat_official(model.state_dict(), keys), flat_official(self.ema.state_dict(), keys)))
        if len(records) >= wanted[0]:
            raise _Stop

    ema_mod.ModelEMA.update = recording_update
    losses, loss_call = [], engine.ComputeLoss.__call__

    def recording_loss(self, *a, **k):
        out = loss_call(self, *a, **k)
        losses.append([float(out[0])] + [float(v) for v in out[1]])
        return out

    engine.ComputeLoss.__call__ = recording_loss
    nb = -(-N_IMAGES // BATCH)
    fixture = dict(model=name, batch=BATCH, imgsz=IMGSZ, source="meituan/YOLOv6@0.2.0 tools/train.py, configs/yolov6n.py")
    # a fresh run (ATSS epochs), a run continued in the middle of the warm-up and one past it (TAL epochs); the
    # initial box centres sit off the anchor points (see step_data.initial_model): on one, the official SIoU
    # angle cost is 0/0 and the official loss NaN
    for case, start_epoch, epochs, steps in (("warmup", 0, 300, 3), ("mid-warmup", 165, 300, 1), ("post", 346, 347, 1)):
        args = ["--data-path", str(data_yaml), "--conf-file", str(cfg_path), "--img-size", str(IMGSZ),
                "--batch-size", str(BATCH), "--epochs", str(epochs), "--workers", "0", "--device", "cpu",
                "--output-dir", str(tmp / "runs"), "--name", case, "--eval-final-only"]
        lrf = cfg.solver.lrf
        if start_epoch:  # continued run: the official resume state of a fresh optimizer at that epoch
            if case == "post":  # lrf 1: a continued run starts at lr0 * lf(0) (see the yolov7 cases)
                lrf = 1.0
                cfg_path_c = yolov6_config(repo, tmp, name, {"data_aug": aug, "solver": {"lrf": 1.0},
                                                             "model": {"pretrained": str(tmp / "init.pt")}})
                args[3] = str(cfg_path_c)
            ccfg = Config.fromfile(args[3])
            setattr(ccfg, "training_mode", "repvgg")
            # the saved optimizer of a real run carries the weight decay Trainer.get_optimizer scaled by
            # batch * accumulate / 64; a resumed run loads it from the checkpoint as it is
            ccfg.solver.weight_decay *= BATCH * max(1, round(64 / BATCH)) / 64
            opt = build_optimizer(ccfg, official)
            build_lr_scheduler(ccfg, opt, epochs)
            (tmp / "runs" / case / "weights").mkdir(parents=True, exist_ok=True)
            ckpt = tmp / "runs" / case / "weights" / "last_ckpt.pt"
            torch.save({"model": official, "ema": official, "updates": 0, "optimizer": opt.state_dict(),
                        "epoch": start_epoch - 1}, ckpt)
            args += ["--resume", str(ckpt)]
        records.clear()
        losses.clear()
        wanted[0] = steps
        sys.argv = ["tools/train.py"] + args
        try:
            with float64(), _no_cuda():
                runpy.run_path(str(repo / "tools" / "train.py"), run_name="__main__")
        except _Stop:
            pass
        if len(records) < steps:
            raise SystemExit(f"{case}: the official run stopped after {len(records)} of {steps} steps")
        out = case_tensors(records, yf, idx_map)
        fixture[case] = dict(start_epoch=start_epoch, epochs=epochs, lrf=lrf, steps=steps, first_it=start_epoch * nb,
                             tensors=out, losses=list(losses))
        print(f"{case}: recorded {len(records)} step(s) from epoch {start_epoch}, losses {losses}")
    torch.save(fixture, OUT / "step_yolov6n.pt")
    print(f"wrote {OUT / 'step_yolov6n.pt'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=["yolov7", "yolov6", "sy4-large"])
    ap.add_argument("--repo", required=True, type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.family == "yolov6":
            run_yolov6(args.repo.resolve(), Path(tmp))
        else:
            if args.family == "sy4-large":
                from tests.parity.make_schedule_fixtures import add_mish_stub

                add_mish_stub(Path(tmp))
            run_yolov7(args.repo.resolve(), Path(tmp), args.family)


if __name__ == "__main__":
    main()
