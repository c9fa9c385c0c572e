"""Official checkpoints -> yoloforge: safe loading, clear errors, output parity with the official models.

Fixtures (tests/fixtures/convert, see its README): checkpoints written by the official savers with
random weights (xz-compressed) and the official models' outputs on a fixed input.
"""
from __future__ import annotations

import argparse
import collections
import lzma
import os
import pickle
from pathlib import Path

import pytest
import torch

from yoloforge.convert import FormatError, UnsafeCheckpointError, convert, load_official, load_pickled
from yoloforge.convert.official import COCO_NAMES
from yoloforge.convert.units import ConvertError

FIX = Path(__file__).parent / "fixtures" / "convert"


def _unpack(name: str, tmp: Path) -> Path:
    out = tmp / name
    if not out.exists():
        out.write_bytes(lzma.decompress((FIX / f"{name}.xz").read_bytes()))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    cfg = tmp / "yolov4-tiny.cfg"
    cfg.write_text((FIX / "yolov4-tiny.cfg").read_text())
    return dict(v7=_unpack("yolov7-tiny_train.pt", tmp), v6=_unpack("yolov6n_train.pt", tmp),
                v4=_unpack("yolov4-tiny.weights", tmp), cfg=cfg, tmp=tmp)


def _ref(stem: str):
    return torch.load(FIX / f"{stem}.ref.pt", weights_only=True)


def _assert_parity(model, stem):
    ref = _ref(stem)
    with torch.no_grad():
        out = model.eval()(ref["x"])
    assert out.shape == ref["out"].shape
    diff = (out - ref["out"]).abs().max().item()
    assert diff <= 1e-4 * ref["out"].abs().max().item(), diff


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("key,stem,name,head", [
    ("v7", "yolov7-tiny_train", "yolov7-tiny", "IDetect"),
    ("v6", "yolov6n_train", "yolov6n", "EffiDeHead"),
    ("v4", "yolov4-tiny", "yolov4-tiny", "darknet"),
])
def test_parity_with_official(files, key, stem, name, head):
    model, meta = load_official(files[key], cfg=files["cfg"] if key == "v4" else None)
    assert meta["model"] == name and meta["source"]["head"].startswith(head)
    assert meta["nc"] == 80 and meta["names"] == COCO_NAMES
    _assert_parity(model, stem)


def test_convert_writes_safetensors_that_load_back(files, capsys):
    from yoloforge.weights import load_model

    out = files["tmp"] / "v6n.safetensors"
    model, meta = convert(files["v6"], out=out)
    text = capsys.readouterr().out
    assert "yolov6" in text and "float16 -> float32" in text and "nc=80" in text
    back, meta2 = load_model(out)
    assert meta2["source"]["sha256"] == meta["source"]["sha256"] and len(meta2["source"]["sha256"]) == 64
    assert meta2["source"]["kind"] == "torch-zip" and back.names[0] == "person"
    _assert_parity(back, "yolov6n_train")


def test_cli_verb(files):
    from yoloforge.convert import add_parser, run

    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="verb"))
    out = files["tmp"] / "tiny4.safetensors"
    a = ap.parse_args(["convert", str(files["v4"]), "--cfg", str(files["cfg"]), "--out", str(out)])
    assert run(a) == 0 and out.is_file()


def test_plain_state_dict_checkpoint(files):
    raw = load_pickled(files["v7"])
    path = files["tmp"] / "v7_state.pt"
    torch.save({"model": collections.OrderedDict((k, v) for k, v in raw.state.items()), "epoch": 3}, path)
    model, meta = load_official(path)
    assert meta["source"]["entry"] == "model"
    _assert_parity(model, "yolov7-tiny_train")


# ------------------------------------------------------------------------------------------ safety
class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("how", ["system", "open"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, legacy, how):
    target = tmp_path / "pwned.txt"
    evil = _Evil(os.system, (f"touch {target}",)) if how == "system" else _Evil(open, (str(target), "w"))
    path = tmp_path / "evil.pt"
    torch.save({"model": evil, "epoch": 1}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt.*refused"):
        load_pickled(path)
    with pytest.raises(FormatError):
        load_official(path)
    assert not target.exists()


def test_raw_pickle_with_eval_is_refused(tmp_path):
    target = tmp_path / "x"
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(_Evil(eval, (f"open({str(target)!r}, 'w')",)), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refused.*eval"):
        load_pickled(path)
    assert not target.exists()


# ------------------------------------------------------------------------------------------ errors
def test_truncated_checkpoint(files, tmp_path):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(files["v6"].read_bytes()[: 3_000_000])
    with pytest.raises(FormatError, match="cut.pt.*truncated"):
        load_official(bad)


def test_wrong_format_and_missing_file(tmp_path):
    txt = tmp_path / "notes.pt"
    txt.write_text("hello")
    with pytest.raises(FormatError, match="notes.pt.*not a PyTorch checkpoint"):
        load_official(txt)
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_official(tmp_path / "nothere.pt")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"model": collections.OrderedDict(fc=torch.zeros(3, 4))}, path)
    with pytest.raises(FormatError, match="resnet.pt.*unknown architecture"):
        load_official(path)


def test_yolov6_release3_is_unsupported(tmp_path):
    path = tmp_path / "yolov6s_v3.pt"
    torch.save({"model": collections.OrderedDict([("backbone.stem.rbr_dense.conv.weight", torch.zeros(8, 3, 3, 3)),
                                                  ("detect.cls_preds_ab.0.weight", torch.zeros(240, 8, 1, 1)),
                                                  ("detect.cls_preds.0.weight", torch.zeros(80, 8, 1, 1))])}, path)
    with pytest.raises(ConvertError, match="yolov6s_v3.pt: unsupported YOLOv6 version"):
        load_official(path)


def test_darknet_size_and_cfg_checks(files, tmp_path):
    data = files["v4"].read_bytes()
    short = tmp_path / "short.weights"
    short.write_bytes(data[:-400])
    with pytest.raises(FormatError, match="short.weights.*truncated"):
        load_official(short, cfg=files["cfg"])
    with pytest.raises(FormatError, match="needs its .cfg"):
        load_official(files["v4"])
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text("[net]\nwidth=416\n[convolutional]\nfilters=4\nsize=3\n[crop]\n")
    with pytest.raises(ConvertError, match=r"bad.cfg:6: darknet layer \[crop\]"):
        load_official(files["v4"], cfg=bad_cfg)


def test_official_checkpoint_through_detector_and_cli(tmp_path, capsys):
    """`Detector("x.pt")` and `yoloforge predict --weights x.pt` take official files directly."""
    import lzma

    import cv2
    import numpy as np

    from yoloforge import Detector
    from yoloforge.cli import main

    fx = Path(__file__).parent / "fixtures" / "convert"
    src = next(fx.glob("yolov7-tiny*.pt.xz"))
    pt = tmp_path / src.name[:-3]
    pt.write_bytes(lzma.decompress(src.read_bytes()))
    d = Detector(str(pt))
    assert d.model.name == "yolov7-tiny" and d.model.nc == 80
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    res = d.predict(str(img), imgsz=64, conf=0.0)
    assert len(res) == 1 and res[0].boxes.shape[1] == 4
    assert main(["predict", "--weights", str(pt), "--source", str(img), "--imgsz", "64",
                 "--project", str(tmp_path / "p")]) == 0


def _write_seeded_darknet(cfg: Path, out: Path, seed: int = 0) -> None:
    """A darknet .weights for ``cfg`` drawn exactly as the fixture's reference was (README: kernels
    ``randint(-2, 2) * 0.5 / sqrt(fan_in)``, BN beta/gamma/mean/var, fp16-rounded), written in the
    file layout (20-byte header, per conv BN beta, gamma, mean, var or bias, then OIHW weights)."""
    import numpy as np

    from yoloforge.families.yolov4.darknet import layer_shapes, parse_cfg

    g = torch.Generator().manual_seed(seed)
    with open(out, "wb") as f:
        np.array([0, 2, 5], "<i4").tofile(f)
        np.array([12345], "<i8").tofile(f)
        for L in (x for x in layer_shapes(parse_cfg(cfg), cfg) if x["type"] == "convolutional"):
            fo, c, k = L["filters"], L["c_in"], L["size"]
            w = torch.randint(-2, 3, (fo, c, k, k), generator=g).float() * 0.5 / (c * k * k) ** 0.5
            if L["bn"]:
                arrs = [0.2 * torch.randn(fo, generator=g), 0.5 + torch.rand(fo, generator=g),
                        0.2 * torch.randn(fo, generator=g), 0.5 + torch.rand(fo, generator=g)]
            else:
                arrs = [0.5 * torch.randn(fo, generator=g)]
            for a in arrs + [w.flatten()]:
                a.half().float().numpy().astype("<f4").tofile(f)


def test_darknet_yolov4_csp_parity(tmp_path):
    """darknet cfg/yolov4-csp.cfg (+ new_coords decode, Mish, [shortcut], SPP) -> YOLOv4("csp", darknet_neck=True).
    Reference: the independent darknet-semantics forward pass (fixture README) on the same weights."""
    from yoloforge.weights import load_model

    cfg = tmp_path / "yolov4-csp.cfg"
    cfg.write_text((FIX / "yolov4-csp.cfg").read_text())
    w = tmp_path / "yolov4-csp.weights"
    _write_seeded_darknet(cfg, w)
    model, meta = load_official(w, cfg=cfg)
    assert meta["model"] == "yolov4-csp" and model.build_kwargs.get("darknet_neck") is True
    _assert_parity(model, "yolov4-csp")
    # the layout option travels with the converted checkpoint
    out = tmp_path / "csp.safetensors"
    convert(w, cfg=cfg, out=out)
    back, _ = load_model(out)
    _assert_parity(back, "yolov4-csp")
    # a cfg whose [yolo] decode we do not implement is refused with the line
    bad = tmp_path / "bad.cfg"
    bad.write_text(cfg.read_text().replace("new_coords=1", "new_coords=0"))
    with pytest.raises(ConvertError, match=r"unsupported \[yolo\] decode \(cfg line \d+\)"):
        load_official(w, cfg=bad)


def test_yolov7_activation_decides_the_variant(files):
    """yolov7-tiny and yolov7-tiny-silu have the same layer shapes: the activation class named in the
    pickle decides, and a forced variant with the other activation is refused (never silently wrong)."""
    from yoloforge.convert.official import read_checkpoint
    from yoloforge.families.yolov7.convert import describe

    assert describe(read_checkpoint(files["v7"]))["acts"] == {"lrelu"}
    with pytest.raises(ConvertError, match="yolov7-tiny-silu: activation silu, the checkpoint uses lrelu"):
        load_official(files["v7"], variant="yolov7-tiny-silu")


def test_official_checkpoints_run_through_cpu_runtimes(files):
    """`--backend auto` exports official checkpoints (a darknet one needs its cfg) to the fastest CPU runtime,
    cached beside the file; its output equals the converted torch model's."""
    pytest.importorskip("onnxruntime")
    from yoloforge import Detector

    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    for d, stem in ((Detector(str(files["v4"]), cfg=str(files["cfg"])), "yolov4-tiny"),
                    (Detector(str(files["v6"])), "yolov6n_train")):
        rt = d.runtime("onnxruntime", imgsz=64)
        assert rt.kind == "onnxruntime" and Path(rt.path).parent == files["tmp"] / f"{stem}_deploy"
        with torch.no_grad():
            ref = d._deploy_model()(x)
        assert (torch.as_tensor(rt(x.numpy())) - ref).abs().max() < 1e-3
        with pytest.raises(ValueError, match="yoloforge convert"):
            d.quantize("data.yaml")
