"""yoloforge average: weighted means of models of one architecture, checks, BN re-estimation."""
from __future__ import annotations

import pytest
import torch

from yoloforge.engine.average import average, average_states
from yoloforge.families.registry import build_model
from yoloforge.utils.checkpoint import save_weights
from yoloforge.weights import load_model


def _save(tmp_path, name, seed, model="yolov6n", nc=3, **kw):
    torch.manual_seed(seed)
    m = build_model(model, nc=nc, **kw)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.uniform_(-1, 1)
                b.num_batches_tracked.fill_(seed + 5)
    return save_weights(tmp_path / f"{name}.safetensors", m,
                        {"model": m.name, "build_kwargs": m.build_kwargs, "names": ["a", "b", "c"][:nc], "imgsz": 64}), m


def test_weighted_mean_of_every_float_tensor(tmp_path):
    (pa, a), (pb, b) = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1)
    out = average([pa, pb], tmp_path / "avg.safetensors", weights=[1, 3], verbose=False)
    avg = load_model(out)[0]
    sa, sb, s = a.state_dict(), b.state_dict(), avg.state_dict()
    for k, v in s.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.25 * sa[k] + 0.75 * sb[k], atol=1e-6), k
        else:
            assert torch.equal(v, torch.maximum(sa[k], sb[k])), k


def test_different_architectures_are_refused(tmp_path):
    (pa, _), (pb, _) = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1, nc=2)
    with pytest.raises(ValueError, match="b.safetensors: build_kwargs"):
        average_states([pa, pb])
    (pc, _) = _save(tmp_path, "c", 0, model="yolov6s")
    with pytest.raises(ValueError, match="c.safetensors: model 'yolov6s'"):
        average_states([pa, pc])
    with pytest.raises(ValueError, match="at least two"):
        average_states([pa])
    with pytest.raises(ValueError, match="3 values for 2 files"):
        average_states([pa, pa], [1, 2, 3])


def test_bn_recalibration_gives_the_statistics_of_the_averaged_model(tmp_path, tiny_data):
    from yoloforge.data.dataset import DetectionDataset
    from yoloforge.data.formats import load_data_yaml

    (pa, _), (pb, _) = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1)
    out = average([pa, pb], tmp_path / "avg.safetensors", data=str(tiny_data), bn_recalib=16, imgsz=64, batch=16,
                  workers=0, verbose=False)
    model, meta = load_model(out)
    assert meta["bn_recalibrated_on"] == 16
    d = load_data_yaml(tiny_data)
    ds = DetectionDataset(d.train, list(d.names), imgsz=64, augment=False, verbose=False)
    imgs = torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))]).float() / 255
    stem = model.backbone.stem  # RepVGG block: its 3x3 branch's BN sees conv3x3(images)
    with torch.no_grad():
        y = stem.dense.conv(imgs)
    assert torch.allclose(stem.dense.bn.running_mean, y.mean((0, 2, 3)), atol=1e-4)
    with pytest.raises(ValueError, match="needs --data"):
        average([pa, pb], tmp_path / "x.safetensors", bn_recalib=4, verbose=False)


def test_cli(tmp_path, capsys):
    from yoloforge.cli import main

    (pa, _), (pb, _) = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1)
    assert main(["average", str(pa), str(pb), "--out", str(tmp_path / "o.safetensors"), "--weights-of", "1,1"]) == 0
    assert (tmp_path / "o.safetensors").is_file()
