"""yoloforge tune on Optuna: the search space, the outputs, two workers sharing one SQLite study, a killed worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")  # a dev dependency; `pip install yoloforge[tune]`

from yoloforge.config import load_hyp  # noqa: E402
from yoloforge.engine.tune import default_space, load_space, preset_params  # noqa: E402


def _cmd(data, tmp_path, trials, name="s", extra=()):
    return [sys.executable, "-m", "yoloforge", "tune", "--model", "yolov6n", "--data", str(data), "--trials",
            str(trials), "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0", "--hyp", "small-data",
            "--storage", f"sqlite:///{tmp_path / 'tune.db'}", "--study-name", name, "--project", str(tmp_path),
            "--name", "tune", *extra]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _load(tmp_path, name="s"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'tune.db'}")


def test_default_space_covers_the_preset_and_a_user_space_is_checked(tmp_path):
    v6 = default_space(load_hyp("yolov6", "yolov6n"))
    assert {"lr0", "momentum", "weight_decay", "loss_cls", "loss_iou", "mosaic", "hsv_s"} <= set(v6)
    assert "obj" not in v6
    v7 = default_space(load_hyp("tiny", "yolov7-tiny"))
    assert {"box", "cls", "obj"} <= set(v7) and "loss_iou" not in v7
    for lo, hi, _ in v6.values():
        assert lo < hi
    f = tmp_path / "space.yaml"
    f.write_text("lr0: [0.001, 0.1, log]\nmosaic: {choices: [0.0, 1.0]}\n")
    sp = load_space(f, load_hyp("yolov6", "yolov6n"))
    assert sp["lr0"] == (0.001, 0.1, True) and sp["mosaic"] == ("choices", [0.0, 1.0])
    f.write_text("lr0: [0.001, 0.1]\nmomentom: [0.8, 0.9]\n")
    with pytest.raises(ValueError, match=r"space.yaml:2: 'momentom' is not a hyper-parameter"):
        load_space(f, load_hyp("yolov6", "yolov6n"))
    f.write_text("lr0: [0.1, 0.01]\n")
    with pytest.raises(ValueError, match=r"space.yaml:1: lr0: need low < high"):
        load_space(f, load_hyp("yolov6", "yolov6n"))
    focused = load_space("focused", load_hyp("tiny", "yolov7-tiny"))
    assert list(focused) == ["lr0", "lrf", "momentum", "warmup_epochs", "warmup_min_iters", "mosaic", "scale", "mixup"]
    base = load_hyp("yolov6", "yolov6n")  # every preset value inside (clipped only where the preset is outside)
    assert all(lo <= base[k] <= hi for k, (lo, hi, _) in focused.items() if k not in ("warmup_epochs", "warmup_min_iters"))
    with pytest.raises(FileNotFoundError, match="focussed"):
        load_space("focussed", base)


def test_two_workers_share_one_study_and_rerun_continues(tmp_path, tiny_data):
    procs = [subprocess.Popen(_cmd(tiny_data, tmp_path, 4), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = _load(tmp_path)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))  # never collide
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) >= 4
    for t in finished:  # every trial trained in its own folder
        assert (tmp_path / "tune" / "trials" / f"trial{t.number}" / "results.csv").is_file()
    base = load_hyp("yolov6", "yolov6n", "small-data")
    preset = preset_params(default_space(base), base)
    assert preset["lr0"] == 0.02 and preset["mosaic"] == 1.0
    first = min(study.trials, key=lambda t: t.number)
    assert first.params == pytest.approx(preset)  # the study starts from the preset's own values
    best = tmp_path / "tune" / "best_hyp.yaml"
    hyp = load_hyp("yolov6", "yolov6n", str(best))  # usable as train --hyp
    assert hyp["lr0"] == pytest.approx(study.best_trial.params["lr0"])
    assert (tmp_path / "tune" / "trials.csv").read_text().count("\n") == len(study.trials) + 1
    assert (tmp_path / "tune" / "optimization_history.png").is_file()
    # the same command again with a larger count continues the study
    r = subprocess.run(_cmd(tiny_data, tmp_path, len(finished) + 1), env=_env(), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    again = _load(tmp_path)
    done = [t for t in again.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.number: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}.items() <= \
        {t.number: t.value for t in done}.items()
    assert len([t for t in again.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                         optuna.trial.TrialState.PRUNED)]) >= len(finished) + 1


def test_a_killed_worker_loses_no_finished_trial(tmp_path, tiny_data):
    p = subprocess.Popen(_cmd(tiny_data, tmp_path, 6, name="k"), env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    kept = {}
    while time.time() < deadline:
        time.sleep(1.0)
        try:
            st = _load(tmp_path, "k")
        except KeyError:
            continue
        kept = {t.number: t.value for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE}
        running = [t for t in st.trials if t.state == optuna.trial.TrialState.RUNNING]
        if kept and running:
            break
    assert kept, "no trial finished before the deadline"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    r = subprocess.run(_cmd(tiny_data, tmp_path, len(kept) + 1, name="k"), env=_env(), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    st = _load(tmp_path, "k")
    now = {t.number: t.value for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert kept.items() <= now.items()
    assert len(now) >= len(kept) + 1 or any(t.state == optuna.trial.TrialState.PRUNED for t in st.trials)
