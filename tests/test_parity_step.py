"""One optimizer step of yoloforge's trainer equals one step of the official training script.

The fixtures (tests/parity/make_step_fixtures.py) hold the weights and EMA that the official yolov7
train.py (yolov7-tiny, hyp.scratch.tiny.yaml), ScaledYOLOv4@yolov4-large train.py (yolov4-p5,
hyp.scratch.yaml; its lr floor is hard-coded, so its continued run has 10^7 epochs) and YOLOv6 0.2.0
tools/train.py (yolov6n, configs/yolov6n.py; the fresh run is in its ATSS epochs, the continued ones in its TAL
epochs) produced from the initial weights and data of tests/parity/step_data.py: after its first
three optimizer steps of a fresh run (inside the 1000-iteration warm-up: lr, bias lr and momentum ramps,
accumulation 1), after the first step of a run continued in the middle of the warm-up (accumulation
ramped to 7, three batches accumulated) and after the first step of a run continued past the warm-up
(accumulation 13, three batches accumulated, weight decay scaled by batch * accumulate / 64). yoloforge's trainer, from the same weights on the same batches
with the preset named after the official hyp file, must give the same weights and EMA (relative 1e-5 of
each tensor's largest value) and the same updates (relative 1e-5 of the largest official update). Both
sides run in float64 (tests/parity/step_data.py says why).
"""
from pathlib import Path

import pytest
import torch

from tests.parity.step_data import BATCH, IMGSZ, NO_AUG, float64, initial_model, make_step_data, sample_positions

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
CASES = ([("step_yolov7-tiny.pt", c) for c in ("warmup", "mid-warmup", "post")]
         + [("step_yolov6n.pt", c) for c in ("warmup", "mid-warmup", "post")]
         + [pytest.param("step_yolov4-p5.pt", c, marks=pytest.mark.slow) for c in ("warmup", "mid-warmup", "post")])
# (yolov4-p5, 71 M parameters in float64: ~40 s a case, so in `make test-slow`)


class _Stop(Exception):
    pass


def run_yoloforge(case: dict, name: str, tmp: Path):
    from yoloforge.engine.ema import unwrap
    from yoloforge.engine.optim import warmup_iters
    from yoloforge.engine.trainer import Trainer

    from yoloforge.config import HYP_PRESETS
    from yoloforge.families.registry import build_model

    data = make_step_data(tmp / "data")
    preset = HYP_PRESETS[build_model(name, nc=1).default_hyp]
    over = {k: v for k, v in dict(NO_AUG, scale_bias=0.0, lrf=case["lrf"], shuffle=False).items() if k in preset}
    cfg = dict(model=name, data=str(data), epochs=case["epochs"], imgsz=IMGSZ, batch=BATCH, nbs=64, workers=0,
               project=str(tmp / "runs"), name="step", exist_ok=True, seed=0, plots=False, verbose=False,
               val_interval=10 ** 6, hyp_override=over)
    t = Trainer(cfg, model=initial_model(name).double())
    t._setup()
    t.start_epoch = case["start_epoch"]
    t.ema.updates = int(case.get("ema_updates", 0))  # the official continued run's EMA counter
    records, step = [], t._optimizer_step

    def recording_step():
        step()
        records.append(({k: v.detach().clone() for k, v in unwrap(t.model).state_dict().items()},
                        {k: v.detach().clone() for k, v in t.ema.ema.state_dict().items()}))
        if len(records) >= case["steps"]:
            raise _Stop

    t._optimizer_step = recording_step
    nb = len(t.train_loader)
    n_warmup = warmup_iters(t.hyp, nb, case["epochs"])
    t.model.train()
    try:
        for epoch in range(case["start_epoch"], case["epochs"]):
            t._train_epoch(epoch, nb, n_warmup)
    except _Stop:
        pass
    assert len(records) == case["steps"]
    return records


@pytest.mark.parametrize("fixture_name,case_name", CASES)
def test_step_equals_official(fixture_name, case_name, tmp_path):
    fixture = torch.load(FIXTURES / fixture_name, weights_only=True)
    case = fixture[case_name]
    with float64():
        records = run_yoloforge(case, fixture["model"], tmp_path)
    records_init = {k: v.double().flatten() for k, v in initial_model(fixture["model"]).state_dict().items()}
    worst_w = worst_d = 0.0
    for k, ref in case["tensors"].items():
        for s, (model_sd, ema_sd) in enumerate(records):
            for which, sd in (("model", model_sd), ("ema", ema_sd)):
                pos = sample_positions(sd[k].numel())
                ours = sd[k].double().flatten()[pos]
                init = records_init[k][pos]
                off = init + ref[which][s].double()
                assert torch.equal(init[:4], ref["init"]), (k, "the test's initial weights are not the fixture's")
                scale = float(off.abs().max()) or 1.0
                err = float((ours - off).abs().max())
                worst_w = max(worst_w, err / scale)
                assert err <= 1e-5 * scale, (case_name, s, which, k, err, scale)
                delta = float((off - init).abs().max())
                ulp = 4 * float(torch.finfo(torch.float64).eps) * scale
                if delta > 100 * ulp:  # updates measurable above float64 rounding of the weights
                    if delta > 1e6 * ulp:  # the printed figure: updates of at least ~1e-9 of the weights
                        worst_d = max(worst_d, err / delta)
                    assert err <= 1e-5 * delta + ulp, (case_name, s, which, k, err, delta)
    print(f"{case_name}: worst weight error {worst_w:.2e} (relative), worst update error {worst_d:.2e}")
