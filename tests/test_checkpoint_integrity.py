"""Checkpoints (issue 15): a content hash checked on load, damaged or foreign files named, a full disk said so
and the previous file kept."""
from __future__ import annotations

import json

import pytest
import torch

from yoloforge.models.registry import build_model
from yoloforge.utils import checkpoint as ckpt


@pytest.fixture
def weights(tmp_path):
    m = build_model("yolov6n", nc=2)
    p = ckpt.save_weights(tmp_path / "w.safetensors", m, {"names": ["a", "b"]})
    return p, m


def test_flipped_byte_in_tensor_data_is_found(weights):
    p, m = weights
    ckpt.load_model(p)  # intact: loads
    data = bytearray(p.read_bytes())
    data[-1000] ^= 0x01  # inside the tensor data (the header is at the start)
    p.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match its content hash"):
        ckpt.load_model(p)


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
