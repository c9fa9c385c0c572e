"""Kill a `yoloforge train --deterministic` at random points with SIGKILL, SIGINT and SIGTERM, resume until it
finishes, and compare with an uninterrupted run: the same final weights, EMA and results.csv (issue 15).

Slow (a subprocess per kill and resume): `make test-slow`, or `pytest -m slow tests/test_kill_resume.py -s`."""
from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from yoloforge.utils.checkpoint import load_state

EPOCHS = 48  # an epoch of the tiny data is ~0.4 s: 12 kill points land in many epochs before the run ends
ARGS = ["--model", "yolov6n", "--imgsz", "64", "--batch", "4", "--nbs", "4", "--workers", "0",
        "--deterministic", "--seed", "5", "--close-mosaic", "1", "--val-interval", "1", "--no-plots",
        "--no-tensorboard", "--no-verbose"]


def _train(data, project, name, extra=(), epochs=EPOCHS):
    return [sys.executable, "-m", "yoloforge", "train", "--data", str(data), "--project", str(project), "--name",
            name, "--exist-ok", "--epochs", str(epochs), *ARGS, *extra]


def _csv(run: Path):
    with open(run / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_kills_at_random_points_resume_to_the_same_run(tiny_data, tmp_path):
    t0 = time.time()
    subprocess.run(_train(tiny_data, tmp_path, "one", epochs=1), check=True, capture_output=True, timeout=600)
    one = time.time() - t0
    t0 = time.time()
    subprocess.run(_train(tiny_data, tmp_path, "straight"), check=True, capture_output=True, timeout=600)
    epoch = (time.time() - t0 - one) / (EPOCHS - 1)  # seconds per epoch; one - epoch: start-up (imports, setup)
    startup = max(one - epoch, 0.0)
    straight = load_state(tmp_path / "straight" / "weights" / "last.state.pt")
    rng = random.Random(15)
    sigs = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM] * 4  # 12 kill points
    run = tmp_path / "killed"
    log = []
    for sig in sigs:
        resume = (run / "weights" / "last.state.pt").is_file()
        if resume and load_state(run / "weights" / "last.state.pt").get("finished"):
            break
        cmd = _train(tiny_data, tmp_path, "killed", ["--resume", str(run)] if resume else [])
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        at = startup + rng.uniform(0.05, 1.0) * epoch  # inside the first epoch after start-up, or in start-up
        time.sleep(at)
        p.send_signal(sig)
        _, err = p.communicate(timeout=300)
        assert "Traceback" not in err, err[-3000:]
        st = run / "weights" / "last.state.pt"
        where = (lambda s: (s["epoch"], s["batch"]))(load_state(st)) if st.is_file() else None
        log.append((signal.Signals(sig).name, round(at, 1), p.returncode, where))
    # finish what is left
    while True:
        st = run / "weights" / "last.state.pt"
        if st.is_file() and load_state(st).get("finished"):
            break
        subprocess.run(_train(tiny_data, tmp_path, "killed", ["--resume", str(run)] if st.is_file() else []),
                       check=True, capture_output=True, timeout=600)
    print("\nkill points (signal, seconds, exit code, (epoch, batch) of the state after it):", log)
    a, b = _csv(tmp_path / "straight"), _csv(run)
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is not None:
        print("first differing results.csv row:", a[first], b[first], sep="\n")
    assert len(log) >= 10
    killed = load_state(run / "weights" / "last.state.pt")
    for part in ("model", "ema"):
        for k, v in straight[part].items():
            assert torch.equal(v, killed[part][k]), (part, k)
    assert _csv(tmp_path / "straight") == _csv(run)
    assert not list((run / "weights").glob(".*.tmp"))
