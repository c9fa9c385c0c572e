"""Thread choice on a shared CPU: the meter counts other processes' cores, not this process's own workers, and the
trainer takes the cores that are left (or a fixed --threads)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from yoloforge.utils import cpu

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the core meter reads Linux /proc")
BUSY = [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"]


def test_free_threads_is_the_rounded_remainder_and_at_least_one():
    assert cpu.free_threads(0.0, 2) == 2 and cpu.free_threads(0.4, 2) == 2 and cpu.free_threads(0.7, 2) == 1
    assert cpu.free_threads(5.0, 2) == 1 and cpu.free_threads(1.2, 8) == 7


def test_meter_counts_other_processes_not_its_own_children():
    """A busy child of ours and a busy process that is not ours (re-parented: its shell exits at once) run during
    one meter window; each one's CPU time, read from /proc in the same window, lands on the right side whatever else
    the machine runs."""
    child = subprocess.Popen(BUSY)
    orphan = int(subprocess.run(["sh", "-c", " ".join(f"'{a}'" for a in BUSY) + " >/dev/null 2>&1 & echo $!"],
                                capture_output=True, text=True, check=True).stdout)
    try:
        time.sleep(0.2)
        meter, t0 = cpu.CoreMeter(), time.monotonic()
        own0, child0, orphan0 = cpu.own_cpu_s(), cpu._proc_cpu_s(child.pid), cpu._proc_cpu_s(orphan)
        time.sleep(1.5)
        others = meter.others()
        dt = time.monotonic() - t0
        own = (cpu.own_cpu_s() - own0) / dt
        child_cores, orphan_cores = (cpu._proc_cpu_s(child.pid) - child0) / dt, (cpu._proc_cpu_s(orphan) - orphan0) / dt
    finally:
        child.kill()
        child.wait()
        os.kill(orphan, signal.SIGKILL)
    assert child_cores > 0.2 and orphan_cores > 0.2  # both ran
    tol = 0.1  # the samples are a few clock ticks apart
    assert own >= child_cores - tol  # the child's time is ours ...
    assert others >= orphan_cores - tol  # ... the re-parented process's is the others'


def test_trainer_threads_fixed_or_auto(tiny_data, tmp_path, monkeypatch):
    from yoloforge.engine.trainer import Trainer

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        common = dict(model="yolov6n", data=str(tiny_data), epochs=1, imgsz=64, batch=8, workers=0, plots=False,
                      verbose=False, tensorboard=False, project=str(tmp_path), exist_ok=True)
        Trainer(dict(common, threads=1, name="fixed")).train()
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(cpu, "measure_others", lambda seconds=0.5: 99.0)  # everything busy elsewhere, at the
        monkeypatch.setattr(cpu.CoreMeter, "others", lambda self: 99.0)  # start and at every epoch
        t = Trainer(dict(common, name="auto"))
        t.train()
        assert torch.get_num_threads() == 1 and t._core_meter is not None
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's fixed count is left alone
        t = Trainer(dict(common, name="env"))
        t.train()
        assert t._core_meter is None
    finally:
        torch.set_num_threads(before)


def test_auto_workers_follow_the_device_and_the_free_cores():
    from yoloforge.data.loader import auto_workers

    assert auto_workers("cpu", 2) == 2 and auto_workers("cpu", 16) == 2 and auto_workers("cpu", 1) == 1
    assert auto_workers("cuda", 16) == 8 and auto_workers("cuda", 4) == 3  # one core feeds the GPU
    assert auto_workers("cuda", 16, world_size=4) == 3 and auto_workers("cuda", 1) == 1


def test_trainer_workers_auto_take_the_free_cores(tiny_data, tmp_path, monkeypatch):
    from yoloforge.config import TrainConfig
    from yoloforge.engine.trainer import Trainer

    assert TrainConfig().workers == -1
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=-2)
    before = torch.get_num_threads()
    common = dict(model="yolov6n", data=str(tiny_data), epochs=1, imgsz=64, batch=8, plots=False, verbose=False,
                  tensorboard=False, project=str(tmp_path), exist_ok=True, threads=1)
    try:
        monkeypatch.setattr(cpu, "measure_others", lambda seconds=0.5: 0.0)
        monkeypatch.setattr(cpu, "available_cores", lambda: 2)
        t = Trainer(dict(common, name="idle"))
        t.train()
        assert t.workers == 2 and t.train_loader.num_workers == 2
        monkeypatch.setattr(cpu, "measure_others", lambda seconds=0.5: 1.0)  # one of the two cores busy elsewhere
        t = Trainer(dict(common, name="shared"))
        t.train()
        assert t.workers == 1 and t.train_loader.num_workers == 1
        t = Trainer(dict(common, name="fixed", workers=0))  # the user's count is kept
        t.train()
        assert t.workers == 0 and t.train_loader.num_workers == 0
    finally:
        torch.set_num_threads(before)
