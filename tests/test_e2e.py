"""End to end on tiny data: train -> val -> predict, through the CLI and the Python API."""
import json
from pathlib import Path

import numpy as np
import pytest

from yoloforge import Detector
from yoloforge.cli import main
from yoloforge.utils.checkpoint import read_weights


def _csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().strip().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("runs")
    rc = main(["train", "--model", "yolov6n", "--data", str(tiny_data), "--epochs", "2", "--imgsz", "96",
               "--batch", "8", "--workers", "0", "--project", str(project), "--name", "t", "--close-mosaic", "1"])
    assert rc == 0
    return project / "t"


def test_cli_train_writes_everything(trained):
    run = trained
    best = run / "weights" / "best.safetensors"
    for f in ["weights/best.safetensors", "weights/last.safetensors", "weights/last.state.pt", "results.csv",
              "results.png", "PR_curve.png", "confusion_matrix.png", "labels.png", "val_batch_pred.png", "args.yaml"]:
        assert (run / f).is_file(), f
    rows = _csv_rows(run / "results.csv")
    assert len(rows) == 3 and rows[0][0] == "epoch"  # header + one row per epoch
    state, meta = read_weights(best)
    assert meta["model"] == "yolov6n" and meta["names"][:2] == ["circle", "rectangle"] and meta["imgsz"] == 96
    assert all(np.isfinite(v.numpy()).all() for v in state.values())


def test_cli_val_and_predict(trained, tiny_data, tmp_path):
    best = trained / "weights" / "best.safetensors"
    rc = main(["val", "--weights", str(best), "--data", str(tiny_data), "--save-json", "--workers", "0",
               "--project", str(tmp_path / "val")])
    assert rc == 0
    vdir = tmp_path / "val" / "exp"
    metrics = json.loads((vdir / "metrics.json").read_text())
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0 and metrics["images"] == 8
    preds = json.loads((vdir / "predictions.json").read_text())
    assert isinstance(preds, list) and all({"image_id", "category_id", "bbox", "score"} <= set(p) for p in preds)

    src = Path(tiny_data).parent / "images" / "val"
    rc = main(["predict", "--weights", str(best), "--source", str(src), "--conf", "0.01", "--save-txt",
               "--backend", "torch", "--project", str(tmp_path / "pred")])
    assert rc == 0
    pdir = tmp_path / "pred" / "exp"
    assert len(list(pdir.glob("*.jpg"))) == 8
    assert len(list((pdir / "labels").glob("*.txt"))) == 8


def test_onnx_export_val_predict_match_torch(trained, tiny_data, tmp_path):
    best = trained / "weights" / "best.safetensors"
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(best), "--format", "onnx", "--dynamic", "--output", str(onnx)]) == 0
    m_torch = Detector(str(best)).val(str(tiny_data), workers=0, verbose=False)
    m_onnx = Detector(str(onnx)).val(str(tiny_data), workers=0, verbose=False)
    assert abs(m_torch.map - m_onnx.map) <= 0.002 and abs(m_torch.map50 - m_onnx.map50) <= 0.002
    # a static-shape export cannot take rectangular batches: it is validated square, as torch with rect=False
    static = tmp_path / "static.onnx"
    assert main(["export", "--weights", str(best), "--format", "onnx", "--output", str(static)]) == 0
    m_sq = Detector(str(best)).val(str(tiny_data), workers=0, verbose=False, rect=False)
    m_static = Detector(str(static)).val(str(tiny_data), workers=0, verbose=False)
    assert abs(m_sq.map - m_static.map) <= 0.002 and abs(m_sq.map50 - m_static.map50) <= 0.002
    src = str(Path(tiny_data).parent / "images" / "val")
    a = Detector(str(best)).predict(src, conf=0.05)
    b = Detector(str(best)).predict(src, conf=0.05, backend="onnxruntime")
    for ra, rb in zip(a, b):
        assert len(ra) == len(rb)
        if len(ra):
            assert np.abs(ra.boxes - rb.boxes).max() < 1e-2 and (ra.classes == rb.classes).all()


def test_api_predict_glob_and_video(tiny_data, tmp_path):
    import cv2

    d = Detector("yolov6n", names=["circle", "rectangle", "triangle", "cross"])
    src = Path(tiny_data).parent / "images" / "val"
    res = d.predict(str(src / "*"), conf=0.0, imgsz=96)
    assert len(res) == 8
    r = res[0]
    h, w = r.orig_img.shape[:2]
    assert r.boxes.shape[1] == 4 and len(r.boxes) == len(r.scores) == len(r.classes) > 0
    assert (r.boxes[:, [0, 2]] >= 0).all() and (r.boxes[:, [0, 2]] <= w).all() and (r.boxes[:, [1, 3]] <= h).all()
    assert r.plot().shape == r.orig_img.shape

    # a small video streams frame by frame
    vid = tmp_path / "v.avi"
    img = cv2.imread(str(sorted(src.glob("*"))[0]))
    vw = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 5, (img.shape[1], img.shape[0]))
    for _ in range(3):
        vw.write(img)
    vw.release()
    gen = d.predict(str(vid), stream=True, imgsz=96)
    assert not isinstance(gen, list)
    frames = [r.frame for r in gen]
    assert frames == [0, 1, 2]

    # a folder with a corrupt video and a corrupt image: both skipped, the rest predicted
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.avi").write_bytes(vid.read_bytes())
    (folder / "b.mp4").write_bytes(b"not a video at all" * 100)
    (folder / "c.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(folder / "d.png"), img)
    got = [(Path(r.path).name, r.frame) for r in d.predict(str(folder), stream=True, imgsz=96)]
    assert got == [("a.avi", 0), ("a.avi", 1), ("a.avi", 2), ("d.png", None)]

    # a folder of two videos written annotated: each output holds all its frames (a writer is closed when the
    # next video starts, not kept open to the end)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("x.avi", "y.avi"):
        (two / name).write_bytes(vid.read_bytes())
    out = d.predictor(imgsz=96).predict_to_dir(str(two), tmp_path / "two_out", verbose=False)
    assert out["images"] == 6
    for name in ("x", "y"):
        cap = cv2.VideoCapture(str(tmp_path / "two_out" / f"{name}.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
        cap.release()


def test_detector_untrained_fuse_keeps_outputs():
    import torch

    d = Detector("yolov6n", nc=3)
    x = torch.rand(1, 3, 64, 64)
    d.model.eval()
    with torch.no_grad():
        a = d.model(x)
        d.model.fuse()
        b = d.model(x)
    assert a.shape == b.shape == (1, 84, 7)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.yaml"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.yaml" in err[0]
    assert main(["val", "--weights", str(tmp_path / "nope.safetensors"), "--data", "x.yaml"]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["train", "--data", "x.yaml", "--imgsz", "100"]) == 2
    assert "imgsz" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [b"", b"not a safetensors file at all"])
def test_corrupt_weights_named(tmp_path, bad):
    from yoloforge.utils.checkpoint import CheckpointError

    p = tmp_path / "w.safetensors"
    p.write_bytes(bad)
    with pytest.raises(CheckpointError, match="w.safetensors"):
        Detector(str(p))


def test_cli_info_prints_train_and_deployed_counts(capsys):
    assert main(["info", "--model", "yolov6n", "--imgsz", "320"]) == 0
    out = capsys.readouterr().out
    assert "train-time" in out and "deployed" in out
    fused_params = float(out.split("deployed")[1].split("M params")[0].strip(" :"))
    assert abs(fused_params - 4.317) / 4.317 < 0.01  # FACTS.md: YOLOv6-N 4.317M fused
