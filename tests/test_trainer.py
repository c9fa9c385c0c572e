"""Trainer behaviours users depend on: exact resume after Ctrl-C, NaN stop, extending a run, bad configs."""
import pytest
import torch

from yoloforge.config import TrainConfig, load_hyp
from yoloforge.engine.trainer import Trainer, TrainingError
from yoloforge.utils.checkpoint import load_state, read_weights


def _cfg(data, project, name, **kw):
    base = dict(model="yolov6n", data=str(data), epochs=2, imgsz=64, batch=4, nbs=4, workers=0,
                project=str(project), name=name, deterministic=True, seed=3, close_mosaic=0, plots=False,
                verbose=False, val_interval=5)
    base.update(kw)
    return TrainConfig(**base)


def _final_state(run):
    return load_state(run / "weights" / "last.state.pt")


def _interrupted_run(monkeypatch, cfg, interrupt, at_step: int = 6):
    """Train ``cfg`` with ``interrupt()`` called at optimizer step ``at_step`` (6: epoch 2, second batch, at 4
    steps an epoch); it must end in KeyboardInterrupt. The optimizer step is put back afterwards."""
    calls = {"n": 0}
    orig = Trainer._optimizer_step

    def step(self):
        calls["n"] += 1
        if calls["n"] == at_step:
            interrupt()
        orig(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg).train()
    finally:
        monkeypatch.setattr(Trainer, "_optimizer_step", orig)


def _ctrl_c():
    raise KeyboardInterrupt


def test_resume_after_interrupt_is_exact(tiny_data, tmp_path, monkeypatch):
    Trainer(_cfg(tiny_data, tmp_path, "straight")).train()
    straight = _final_state(tmp_path / "straight")

    _interrupted_run(monkeypatch, _cfg(tiny_data, tmp_path, "interrupted"), _ctrl_c)
    saved = _final_state(tmp_path / "interrupted")
    assert (saved["epoch"], saved["batch"], saved["finished"]) == (1, 1, False)

    Trainer(TrainConfig(resume=str(tmp_path / "interrupted"), workers=0)).train()
    resumed = _final_state(tmp_path / "interrupted")
    assert resumed["finished"] and resumed["epoch"] == 2
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for k, v in straight["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k
    # results.csv equal too (but the epoch times): the interrupted epoch's loss covers all of its batches
    assert _csv_without_time(tmp_path / "straight") == _csv_without_time(tmp_path / "interrupted")


def _csv_without_time(run):
    import csv

    with open(run / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]


def test_a_row_lost_between_state_and_csv_comes_back(tiny_data, tmp_path):
    """A kill after the state write and before the results.csv write: resuming rebuilds the row from the state."""
    Trainer(_cfg(tiny_data, tmp_path, "r", epochs=1)).train()
    rows = _csv_without_time(tmp_path / "r")
    (tmp_path / "r" / "results.csv").write_text("")  # as if the kill came before the csv write
    Trainer(TrainConfig(resume=str(tmp_path / "r"), workers=0), resume_epochs=2).train()
    again = _csv_without_time(tmp_path / "r")
    assert len(again) == 2 and again[0] == rows[0]


def test_finished_run_needs_more_epochs(tiny_data, tmp_path):
    Trainer(_cfg(tiny_data, tmp_path, "r", epochs=1)).train()
    with pytest.raises(TrainingError, match="already finished"):
        Trainer(TrainConfig(resume=str(tmp_path / "r"), workers=0)).train()
    Trainer(TrainConfig(resume=str(tmp_path / "r"), workers=0), resume_epochs=2).train()
    s = _final_state(tmp_path / "r")
    assert s["epoch"] == 2 and s["finished"]
    rows = (tmp_path / "r" / "results.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


def test_resume_rejects_weights_without_state(tiny_data, tmp_path):
    Trainer(_cfg(tiny_data, tmp_path, "w", epochs=1)).train()
    (tmp_path / "w" / "weights" / "last.state.pt").unlink()
    with pytest.raises(Exception, match="last.state.pt"):
        Trainer(TrainConfig(resume=str(tmp_path / "w"), workers=0)).train()


def test_nonfinite_loss_stops_with_message(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, "nan", epochs=1, hyp_override={"lr0": 1e6, "warmup_epochs": 0.0, "grad_clip": 0.0})
    with pytest.raises(TrainingError, match="non-finite loss"):
        Trainer(cfg).train()
    # what was saved is usable: the weights of the last good step
    state, meta = read_weights(tmp_path / "nan" / "weights" / "last.safetensors")
    assert meta["model"] == "yolov6n"


@pytest.mark.parametrize("model", ["yolov7-tiny", "yolov6n"])
def test_nonfinite_stop_never_keeps_nonfinite_weights(tiny_data, tmp_path, model):
    """At a huge lr the weights (yolov7-tiny: BN running variances) go inf/NaN before or with the loss: what is
    kept is the last state whose every tensor was finite, and the message says where it is from."""
    cfg = _cfg(tiny_data, tmp_path, "huge", model=model, epochs=3,
               hyp_override={"lr0": 1e9, "warmup_epochs": 0.0, "grad_clip": 0.0})
    with pytest.raises(TrainingError, match="non-finite") as e:
        Trainer(cfg).train()
    w = tmp_path / "huge" / "weights" / "last.safetensors"
    msg = str(e.value)
    if w.exists():
        state, _ = read_weights(w)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        assert "from epoch" in msg or "from the end of epoch" in msg
    else:
        assert "No finite weights were saved" in msg


def test_finetune_other_nc_reinitializes_class_outputs(tiny_data, tmp_path):
    from yoloforge.families.registry import build_model
    from yoloforge.utils.checkpoint import save_weights

    src = build_model("yolov6n", nc=7)
    w = save_weights(tmp_path / "src.safetensors", src, {"names": [str(i) for i in range(7)], "imgsz": 64})
    t = Trainer(_cfg(tiny_data, tmp_path, "ft", epochs=1, weights=str(w)))
    t._setup()
    assert t.model.nc == 4
    sd_src, sd_new = src.state_dict(), t.model.state_dict()
    same = [k for k in sd_new if k in sd_src and sd_src[k].shape == sd_new[k].shape]
    assert len(same) > 0.9 * len(sd_new)
    assert all(torch.equal(sd_src[k], sd_new[k].cpu()) for k in same if "num_batches" not in k)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("imgsz", 100), ("batch", 0), ("conf", 2.0), ("cache", "disk")])
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_hyp_overrides_and_unknown_keys(tmp_path):
    hyp = load_hyp("yolov6", "yolov6n", overrides={"lr0": 0.5})
    assert hyp["lr0"] == 0.5 and hyp["loss_iou"] == 2.5 and hyp["tal_topk"] == 13
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        load_hyp("yolov6", overrides={"lr_zero": 1})
    f = tmp_path / "h.yaml"
    f.write_text("mosaic: 3\n")
    with pytest.raises(ValueError, match="mosaic"):
        load_hyp("yolov6", source=f)


def test_sigterm_saves_like_ctrl_c_and_resume_is_exact(tiny_data, tmp_path, monkeypatch):
    """SIGTERM (schedulers, containers, `kill`) saves a resumable state as Ctrl-C does; stale temp files of a
    killed save are removed when the run continues."""
    import os
    import signal

    Trainer(_cfg(tiny_data, tmp_path, "straight")).train()
    straight = _final_state(tmp_path / "straight")
    before = signal.getsignal(signal.SIGTERM)
    _interrupted_run(monkeypatch, _cfg(tiny_data, tmp_path, "term"), lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    saved = _final_state(tmp_path / "term")
    assert (saved["epoch"], saved["finished"]) == (1, False)
    stale = tmp_path / "term" / "weights" / ".last.state.pt.abc123.tmp"
    stale.write_bytes(b"half a file")
    Trainer(TrainConfig(resume=str(tmp_path / "term"), workers=0)).train()
    assert not stale.exists()
    resumed = _final_state(tmp_path / "term")
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_hyp_values_as_users_write_them(tmp_path):
    from yoloforge.config import parse_value

    assert parse_value("1e-3") == 0.001 and parse_value("3") == 3 and parse_value("true") is True
    with pytest.raises(ValueError, match="cannot read value"):
        parse_value("[1,")
    f = tmp_path / "h.yaml"
    f.write_text("lr0: 1e-3\nmomentum: 0.9\n")
    assert load_hyp("yolov6", "yolov6n", f)["lr0"] == 0.001
    f.write_text("lr0: 0.01\nmomentum: [0.9\n")
    with pytest.raises(ValueError, match=r"h.yaml:\d+: not valid YAML"):
        load_hyp("yolov6", "yolov6n", f)


def test_resume_from_another_directory_with_relative_data(tiny_data, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tiny_data.parent)
    rel = os.path.relpath(tiny_data)
    Trainer(_cfg(rel, tmp_path, "rel", epochs=1)).train()
    monkeypatch.chdir(tmp_path)
    Trainer(TrainConfig(resume=str(tmp_path / "rel"), workers=0), resume_epochs=2).train()
    assert _final_state(tmp_path / "rel")["epoch"] == 2


@pytest.mark.parametrize("where,at", [("evaluate", 1), ("_adapt_threads", 2), ("_write_csv", 1)])
def test_interrupt_between_steps_resumes_exactly(tiny_data, tmp_path, monkeypatch, where, at):
    """Ctrl-C where no optimizer step happened since the newest state: during an epoch's validation, at the start
    of the next epoch (the saved state used to claim that epoch's batches were done: the resume skipped them),
    while results.csv is written. The resumed run must equal the uninterrupted one."""
    import yoloforge.engine.trainer as T

    Trainer(_cfg(tiny_data, tmp_path, "straight", epochs=3, val_interval=1)).train()
    straight = _final_state(tmp_path / "straight")
    owner = T if where == "evaluate" else Trainer
    orig, calls = getattr(owner, where), {"n": 0}

    def hit(*a, **k):
        calls["n"] += 1
        if calls["n"] == at + 1:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(owner, where, hit)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_data, tmp_path, "cut", epochs=3, val_interval=1)).train()
    monkeypatch.setattr(owner, where, orig)
    Trainer(TrainConfig(resume=str(tmp_path / "cut"), workers=0)).train()
    resumed = _final_state(tmp_path / "cut")
    for part in ("model", "ema"):
        for k, v in straight[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
