"""Checkpoints (issue 15): a content hash checked on load, damaged or foreign files named, a full disk said so
and the previous file kept."""
from __future__ import annotations

import json

import pytest
import torch

from yoloforge.families.registry import build_model
from yoloforge.utils import checkpoint as ckpt
from yoloforge.weights import load_model


@pytest.fixture
def weights(tmp_path):
    m = build_model("yolov6n", nc=2)
    p = ckpt.save_weights(tmp_path / "w.safetensors", m, {"names": ["a", "b"]})
    return p, m


def test_flipped_byte_in_tensor_data_is_found(weights):
    p, m = weights
    load_model(p)  # intact: loads
    data = bytearray(p.read_bytes())
    data[-1000] ^= 0x01  # inside the tensor data (the header is at the start)
    p.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match its content hash"):
        load_model(p)


def test_foreign_metadata_is_named(tmp_path):
    from safetensors.torch import save_file

    for meta, words in (({}, "without yoloforge metadata"), ({"yoloforge": "{not json"}, "not valid JSON"),
                        ({"yoloforge": json.dumps({"epoch": 3})}, "names no model")):
        p = tmp_path / "x.safetensors"
        save_file({"a": torch.zeros(2)}, str(p), metadata=meta)
        with pytest.raises(ckpt.CheckpointError, match=words):
            ckpt.read_weights(p)


def test_state_missing_keys_and_damage(tmp_path):
    p = tmp_path / "last.state.pt"
    torch.save({"model": {}, "optimizer": {}}, p)
    with pytest.raises(ckpt.CheckpointError, match="lacks cfg, epoch"):
        ckpt.load_state(p, required=("cfg", "epoch"))
    ckpt.save_state(p, {"model": {"w": torch.ones(3)}, "ema": {"w": torch.ones(3)}, "epoch": 1})
    assert ckpt.load_state(p)["epoch"] == 1
    s = torch.load(p, weights_only=True)
    s["model"]["w"][1] = 2.0  # the hash no longer matches
    torch.save(s, p)
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.load_state(p)


def test_full_disk_keeps_the_previous_file(weights, monkeypatch):
    p, m = weights
    before = p.read_bytes()
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(ckpt.CheckpointError, match="no space left on the disk of .* the previous w.safetensors is kept"):
        ckpt.save_weights(p, m, {"names": ["a", "b"]})
    assert p.read_bytes() == before and not list(p.parent.glob(".*.tmp"))


def test_resume_from_a_state_without_keys_is_one_line(tiny_data, tmp_path, capsys):
    from yoloforge.cli import main

    run = tmp_path / "r" / "weights"
    run.mkdir(parents=True)
    torch.save({"model": {}, "optimizer": {}}, run / "last.state.pt")
    assert main(["train", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks ema" in err and len(err.splitlines()) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 MB file system (tmpfs), mounted for the test: needs root and a kernel that allows it."""
    import shutil
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the real full-disk test needs to mount a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk, leave: int) -> None:
    """Write a filler file until only ``leave`` bytes are free on ``disk``."""
    import errno
    import os
    import shutil

    free = shutil.disk_usage(disk).free - leave
    with open(disk / "filler", "wb") as f:
        block = b"\0" * (1 << 20)
        try:
            while free > 0:
                free -= f.write(block[:min(len(block), free)])
        except OSError as e:
            assert e.errno == errno.ENOSPC
        f.flush()
        os.fsync(f.fileno())


def test_training_on_a_really_full_disk_keeps_the_last_state_and_resumes(tiny_data, small_disk, capsys):
    """The disk fills up after epoch 1 (a real ENOSPC from the kernel, not a mock): epoch 2's save fails with
    one line naming the disk, the epoch-1 files stay loadable, no temp file is left, and once space is freed
    ``--resume`` finishes the run."""
    from yoloforge.cli import main
    from yoloforge.engine.callbacks import Callback
    from yoloforge.config import TrainConfig
    from yoloforge.engine.trainer import Trainer

    class FillAfterEpoch1(Callback):
        def on_epoch_end(self, trainer, epoch, row, metrics):
            if epoch == 0:
                _fill(small_disk, leave=1 << 20)

    cfg = TrainConfig(model="yolov6n", data=str(tiny_data), epochs=2, imgsz=64, batch=4, nbs=4, workers=0,
                      project=str(small_disk), name="run", plots=False, verbose=False, close_mosaic=0,
                      val_interval=1, tensorboard=False, seed=0)
    wdir = small_disk / "run" / "weights"
    with pytest.raises(ckpt.CheckpointError, match=f"no space left on the disk of {wdir}.*is kept"):
        Trainer(cfg, callbacks=[FillAfterEpoch1()]).train()
    state = ckpt.load_state(wdir / "last.state.pt")
    assert state["epoch"] == 1 and not state["finished"]
    load_model(wdir / "last.safetensors")
    assert not list(wdir.glob(".*.tmp"))
    (small_disk / "filler").unlink()
    assert main(["train", "--resume", str(small_disk / "run")]) == 0
    state = ckpt.load_state(wdir / "last.state.pt")
    assert state["epoch"] == 2 and state["finished"]
