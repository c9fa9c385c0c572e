"""The schedule of a whole run equals the official one: lr of every parameter group and momentum at every
iteration, and the iterations where the optimizer steps (accumulation ramp and step rule), for each
official hyp file: yolov7 train.py with hyp.scratch.{tiny,p5,p6}.yaml and --linear-lr, ScaledYOLOv4 train.py
of the yolov4-csp and yolov4-large branches, YOLOv6 0.2.0 tools/train.py with configs/yolov6n.py. The
fixture was recorded from the official training scripts (tests/parity/make_schedule_fixtures.py: 340
epochs of 3 iterations, batch 5, nominal batch 64)."""
from pathlib import Path

import pytest
import torch

from yoloforge.config import load_hyp
from yoloforge.engine.optim import apply_schedule, lr_lambda, step_due, warmup_iters

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "schedule.pt"
RECORDS = torch.load(FIXTURE, weights_only=True) if FIXTURE.exists() else {}
PRESETS = {"yolov7:tiny": ("tiny", "yolov7-tiny", {}), "yolov7:p5": ("p5", "yolov7", {}),
           "yolov7:p6": ("p6", "yolov7-w6", {}), "yolov7:tiny-linear": ("tiny", "yolov7-tiny", {"cos_lr": False}),
           "sy4-csp:csp": ("yolov4", "yolov4-csp", {}), "sy4-large:large": ("yolov4", "yolov4-p5", {}),
           "yolov6:n": ("yolov6", "yolov6n", {})}


def yoloforge_schedule(hyp: dict, epochs: int, nb: int, batch: int, nbs: int = 64):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD([params[0]], lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)
    opt.add_param_group({"params": [params[1]]})
    opt.add_param_group({"params": [params[2]]})
    lf, n_warmup = lr_lambda(hyp, epochs), warmup_iters(hyp, nb, epochs)
    lrs, moms, steps, last = [], [], [], -1
    for epoch in range(epochs):
        for i in range(nb):
            it = i + nb * epoch
            acc = apply_schedule(opt, hyp, lf, epoch, it, n_warmup, nb, nbs / batch)
            lrs.append([g["lr"] for g in opt.param_groups])
            moms.append(opt.param_groups[0]["momentum"])
            if step_due(hyp["step_rule"], it, i, nb, acc, last):
                steps.append(it)
                last = it
    return torch.tensor(lrs, dtype=torch.float64), torch.tensor(moms, dtype=torch.float64), steps


@pytest.mark.parametrize("run", sorted(RECORDS))
def test_schedule_equals_official(run):
    rec = RECORDS[run]
    preset, model, over = PRESETS[run]
    hyp = load_hyp(preset, model, overrides=over)
    lrs, moms, steps = yoloforge_schedule(hyp, int(rec["epochs"]), int(rec["batches"]), int(rec["batch"]))
    assert steps == rec["steps"].long().tolist()
    if "step_lr" in rec:  # YOLOv6's engine sets lr / momentum right before a possible step: compare there
        torch.testing.assert_close(lrs[steps], rec["step_lr"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(moms[steps], rec["step_momentum"], rtol=1e-9, atol=1e-12)
        return
    assert lrs.shape == rec["lr"].shape
    torch.testing.assert_close(lrs, rec["lr"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(moms, rec["momentum"], rtol=1e-9, atol=1e-12)


def test_every_official_script_was_recorded():
    assert set(RECORDS) == set(PRESETS)


def test_yolov6_bottlerep_alpha_is_not_trained_as_officially():
    """meituan/YOLOv6 solver/build.py collects only .weight / .bias attributes: BottleRep's alpha (yolov6m/l) is in
    no group and keeps 1.0; hyp train_alpha=true trains it (in the no-decay group)."""
    from yoloforge.config import load_hyp
    from yoloforge.engine.optim import build_optimizer
    from yoloforge.families.registry import build_model

    model = build_model("yolov6m", nc=2)
    alphas = {id(p) for n, p in model.named_parameters() if n.endswith(".alpha")}
    assert alphas
    hyp = load_hyp("yolov6", "yolov6m")
    assert hyp["train_alpha"] is False
    grouped = {id(p) for g in build_optimizer(model, hyp, 5e-4).param_groups for p in g["params"]}
    assert not alphas & grouped
    assert len(grouped) == sum(1 for _ in model.parameters()) - len(alphas)
    grouped = {id(p) for g in build_optimizer(model, dict(hyp, train_alpha=True), 5e-4).param_groups for p in g["params"]}
    assert alphas <= grouped
