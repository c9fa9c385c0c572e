"""Export (ONNX, OpenVINO, TensorRT guard) and the runtime backends: results must match PyTorch."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from yoloforge.families.registry import build_model, list_models

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from yoloforge.export.onnx import deploy_copy, export_onnx, read_onnx_meta  # noqa: E402
from yoloforge.export.runtime import CheckpointError, OrtBackend, load_backend  # noqa: E402
from yoloforge.utils.nms import non_max_suppression  # noqa: E402
from helpers import randomize_bn

HAS_OV = importlib.util.find_spec("openvino") is not None
IMGSZ = 128
TOL = 1e-3
PREFERRED = ("yolov6n", "yolov7-tiny", "yolov4-tiny", "yolov4-csp")


def one_per_family() -> list[str]:
    """The smallest-known variant of each family registered now (yolov6n always)."""
    try:
        names = list_models()
    except Exception:  # a family module being written concurrently may not import yet
        names = ["yolov6n"]
    picked, families = [], set()
    for cand in [*PREFERRED, *names]:
        fam = cand.split("-")[0][:6]  # yolov6 / yolov7 / yolov4
        if cand in names and fam not in families:
            picked.append(cand)
            families.add(fam)
    return picked


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics (so fusing is exercised) and, for YOLOv6, non-zero predictors with positive
    box distances (so boxes and scores vary from cell to cell)."""
    g = torch.Generator().manual_seed(seed)
    randomize_bn(model, g)
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "cls_preds"):
        for conv in head.cls_preds:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
        for conv in head.reg_preds:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.01)
            conv.bias.fill_(1.5)
    return model.eval()


@pytest.fixture(scope="module")
def v6():
    m = randomize(build_model("yolov6n", nc=3))
    m.names = ["cat", "dog", "bird"]
    return m


@pytest.fixture(scope="module")
def v6_onnx(v6, tmp_path_factory):
    """yolov6n, dynamic batch, simplified (exercises onnxslim when installed)."""
    return export_onnx(v6, tmp_path_factory.mktemp("onnx") / "v6n.onnx", imgsz=IMGSZ, dynamic=True,
                       meta={"note": "test"})


def images(b: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


_FUSED: dict[int, nn.Module] = {}


@torch.no_grad()
def torch_out(model, x):
    """The fused model's output (fused copies are cached: fusing costs about a second)."""
    if id(model) not in _FUSED:
        _FUSED[id(model)] = deploy_copy(model)
    return _FUSED[id(model)](x)


@pytest.mark.parametrize("name", one_per_family())
def test_onnx_matches_torch_dynamic_batch(name, v6, v6_onnx, tmp_path):
    if name == "yolov6n":
        model, path = v6, v6_onnx
    else:
        model = randomize(build_model(name, nc=3))
        torch_out(model, images(1))  # fuse once; exporting a fused model skips the second fuse
        path = export_onnx(_FUSED[id(model)], tmp_path / f"{name}.onnx", imgsz=IMGSZ, dynamic=True, simplify=False)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["output0"]
    assert [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [
        "batch", "", "height", "width"]
    rect = torch.rand(2, 3, IMGSZ - 32, IMGSZ + 64, generator=torch.Generator().manual_seed(5))
    for x in (images(1), images(3), rect):  # one file: two batch sizes, and a rectangle (dynamic H, W)
        b = x.shape[0]
        ref = torch_out(model, x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == ref.shape == (b, ref.shape[1], 4 + model.nc)
        err = np.abs(got - ref).max()
        assert err < TOL, f"{name} input {tuple(x.shape)}: max |onnx - torch| = {err}"


def test_onnx_metadata(v6, v6_onnx):
    meta = read_onnx_meta(v6_onnx)
    assert meta["model"] == "yolov6n" and meta["names"] == ["cat", "dog", "bird"] and meta["nc"] == 3
    assert meta["imgsz"] == IMGSZ and meta["nms"] is False and meta["stride"] == [8.0, 16.0, 32.0]
    assert meta["dynamic"] is True and meta["note"] == "test" and meta["yoloforge_version"]
    assert not v6.fused, "export must fuse a copy, not the caller's model"


@pytest.fixture(scope="module")
def nms_case(v6, tmp_path_factory):
    """An input, a conf threshold halfway between the 120th and 121st best box score (no box sits at the
    threshold), and an ONNX with in-graph NMS at that conf."""
    x = images(2, seed=3)
    best = torch_out(v6, x)[..., 4:].amax(-1).flatten().sort(descending=True).values
    conf = float((best[119] + best[120]) / 2)
    path = export_onnx(_FUSED[id(v6)], tmp_path_factory.mktemp("nms") / "v6n_nms.onnx", imgsz=IMGSZ, dynamic=True, nms=True,
                       conf=conf, iou=0.45, max_det=100, simplify=False)
    return x, conf, path


def check_nms_outputs(outs, ref_dets, max_det=100):
    num, boxes, scores, classes = outs
    assert num.shape == (len(ref_dets), 1) and boxes.shape == (len(ref_dets), max_det, 4)
    assert scores.shape == classes.shape == (len(ref_dets), max_det)
    for i, d in enumerate(ref_dets):
        n = int(num[i, 0])
        assert n == len(d)
        np.testing.assert_allclose(boxes[i, :n], d[:, :4].numpy(), atol=1e-3)
        np.testing.assert_allclose(scores[i, :n], d[:, 4].numpy(), atol=1e-5)
        assert (classes[i, :n] == d[:, 5].numpy()).all()
        assert (classes[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()


def test_onnx_nms_matches_torch_nms(v6, nms_case):
    x, conf, path = nms_case
    pred = torch_out(v6, x)
    assert (pred[..., 2:4] > pred[..., 0:2]).all()
    dets = non_max_suppression(pred, conf=conf, iou=0.45, max_det=100)
    n_cand = int((pred[..., 4:].amax(-1) > conf).sum())
    n_kept = sum(len(d) for d in dets)
    assert 0 < n_kept < n_cand and all(0 < len(d) < 100 for d in dets), "test needs suppression and padding"
    assert len({int(c) for d in dets for c in d[:, 5]}) > 1, "test needs several classes"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["num_dets", "boxes", "scores", "classes"]
    check_nms_outputs(sess.run(None, {"images": x.numpy()}), dets)
    check_nms_outputs(sess.run(None, {"images": x[1:].numpy()}), dets[1:])  # batch 1 from the same file
    meta = read_onnx_meta(path)
    assert meta["nms"] is True and meta["conf"] == pytest.approx(conf) and meta["max_det"] == 100


def test_predictor_same_results_torch_and_backends(v6, v6_onnx, nms_case):
    """The Predictor gives the same detections with the torch model, the raw ONNX and the NMS ONNX."""
    from yoloforge.engine.predictor import Predictor

    _, conf, nms_path = nms_case
    img = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
    runs = []
    torch_out(v6, images(1))
    for m in (_FUSED[id(v6)], load_backend(v6_onnx), load_backend(nms_path)):  # square canvas for all three
        runs.append(Predictor(m, v6.names, imgsz=IMGSZ, conf=conf, iou=0.45, max_det=100, rect=False)(img)[0])
    assert len(runs[0]) > 0
    for r in runs[1:]:
        assert len(r) == len(runs[0]) and (r.classes == runs[0].classes).all()
        np.testing.assert_allclose(r.boxes, runs[0].boxes, atol=1e-3)


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_export_openvino_nms_static_batch(v6, nms_case, tmp_path):
    from yoloforge.export import export_openvino

    x, conf, _ = nms_case
    torch_out(v6, x)
    ir = export_openvino(_FUSED[id(v6)], tmp_path / "ir", imgsz=IMGSZ, nms=True, conf=conf, iou=0.45, max_det=100,
                         names=v6.names, simplify=False)  # static batch 1
    b = load_backend(ir / "model.xml")
    assert b.fixed_batch == 1 and b.nms_in_graph and b.names == v6.names
    assert json.loads((ir / "yoloforge.json").read_text())["format"] == "openvino"
    # a static batch-1 IR runs a batch of 2 image by image
    check_nms_outputs(b.outputs(x), non_max_suppression(torch_out(v6, x), conf=conf, iou=0.45, max_det=100))


def test_half_export(v6, tmp_path):
    torch_out(v6, images(1))
    path = export_onnx(_FUSED[id(v6)], tmp_path / "half.onnx", imgsz=IMGSZ, half=True, simplify=False)
    proto = onnx.load(str(path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = images(1)
    ref = torch_out(v6, x)
    got = OrtBackend(path)(x)
    assert (got - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_backend_round_trip(v6, v6_onnx, tmp_path):
    from yoloforge.utils.checkpoint import save_weights

    w = save_weights(tmp_path / "best.safetensors", v6, {"names": v6.names, "imgsz": IMGSZ})
    tb, ob = load_backend(w), load_backend(v6_onnx)
    assert (tb.kind, ob.kind) == ("torch", "onnxruntime")
    for b in (tb, ob):
        assert b.names == ["cat", "dog", "bird"] and b.imgsz == IMGSZ and b.nc == 3 and not b.nms_in_graph
    x = images(2)
    assert (tb(x) - ob(x.numpy())).abs().max().item() < TOL


def test_best_cpu_backend_caches(v6, tmp_path):
    from yoloforge.export.runtime import available_kinds, best_cpu_backend
    from yoloforge.utils.checkpoint import save_weights

    w = save_weights(tmp_path / "w" / "best.safetensors", v6, {"names": v6.names, "imgsz": IMGSZ})
    b1, msg1 = best_cpu_backend(w)
    assert b1.kind == available_kinds()[0] and b1.kind in msg1 and "exported" in msg1
    b2, msg2 = best_cpu_backend(w)
    assert "cached" in msg2 and b2.path == b1.path and b2.imgsz == IMGSZ and b2.names == v6.names
    assert b2.fixed_batch is None and not b2.nms_in_graph
    if HAS_OV:  # OpenVINO IR (fp32 compile, dynamic batch) vs torch
        assert b2.kind == "openvino" and (b2.path.parent / "yoloforge.json").is_file()
        assert {p.name for p in b2.path.parent.iterdir()} == {"model.xml", "model.bin", "yoloforge.json"}
    for n in (1, 3):
        x = images(n)
        diff = (b2(x) - torch_out(v6, x)).abs().max().item()
        assert diff < TOL, f"{b2.kind} batch {n}: max |backend - torch| = {diff}"


@pytest.mark.parametrize("name", ["bad.onnx", "bad.safetensors", "bad_ir/model.xml"])
def test_corrupt_file_clear_error(name, tmp_path):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\x00not a model\xff" * 10)
    if name.endswith(".xml") and not HAS_OV:
        pytest.skip("openvino is not installed")
    with pytest.raises(CheckpointError, match=p.name):
        load_backend(p)
    with pytest.raises(CheckpointError, match="not found"):
        load_backend(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown model format"):
        (tmp_path / "x.pt").write_bytes(b"")
        load_backend(tmp_path / "x.pt")


def test_tensorrt_needs_cuda_message(v6_onnx):
    from yoloforge.export.tensorrt import export_engine

    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("CUDA and tensorrt are present: the guard does not fire")
    with pytest.raises(RuntimeError, match="TensorRT export needs a CUDA GPU and the tensorrt package: "):
        export_engine(v6_onnx)


def test_rect_letterbox(v6, v6_onnx):
    """Rectangular canvases: smallest stride multiple at the square letterbox's scale; the torch model and
    a dynamic-H/W ONNX take them (same detections), a static-shape graph keeps the square."""
    from yoloforge.engine.predictor import Predictor, preprocess, rect_shape

    assert rect_shape((480, 640), 640, 32) == (480, 640) and rect_shape((427, 640), 640, 32) == (448, 640)
    assert rect_shape((100, 150), IMGSZ, 32) == (96, 128) and rect_shape((1000, 10), 64, 32) == (64, 32)
    img = np.full((100, 150, 3), 114, np.uint8)
    img[20:60, 30:90] = 255  # a white box: its position must map back through the rectangle
    x, rps = preprocess([img], IMGSZ, stride=32)
    xs, rps_sq = preprocess([img], IMGSZ)
    assert x.shape == (1, 3, 96, 128) and xs.shape == (1, 3, IMGSZ, IMGSZ)
    assert rps[0][0] == rps_sq[0][0], "same scale as the square letterbox"
    ys, xs_ = np.nonzero(x[0, 0] > 0.99)
    (rx, ry), (px, py) = rps[0]
    assert abs((xs_.min() - px) / rx - 30) <= 1 and abs((ys.max() + 1 - py) / ry - 60) <= 1
    batch, _ = preprocess([img, img.transpose(1, 0, 2).copy()], IMGSZ, stride=32)  # landscape + portrait
    assert batch.shape == (2, 3, IMGSZ, IMGSZ)

    img = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
    best = torch_out(v6, torch.from_numpy(preprocess([img], IMGSZ, 32)[0]))[..., 4:].amax(-1).flatten().sort(
        descending=True).values
    conf = float((best[29] + best[30]) / 2)  # no score sits at the threshold
    static = export_onnx(_FUSED[id(v6)], v6_onnx.parent / "static.onnx", imgsz=IMGSZ, simplify=False)
    preds = {}
    for key, m in (("torch", _FUSED[id(v6)]), ("onnx", load_backend(v6_onnx)), ("static", load_backend(static))):
        p = Predictor(m, v6.names, imgsz=IMGSZ, conf=conf, iou=0.45)
        preds[key] = (p.rect_stride, p(img)[0])
    assert preds["torch"][0] == 32 and preds["onnx"][0] == 32 and preds["static"][0] is None
    a, b = preds["torch"][1], preds["onnx"][1]
    assert len(a) > 0 and len(a) == len(b) and (a.classes == b.classes).all()
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_openvino_dynamic_hw_compiles_repeated_shapes(v6, v6_onnx, tmp_path):
    """A dynamic-H/W IR compiles a static copy for a shape it meets twice; outputs do not change."""
    from yoloforge.export.openvino import onnx_to_openvino

    ir = onnx_to_openvino(v6_onnx, tmp_path / "ir")
    b = load_backend(ir)
    assert b.dynamic_hw and b.fixed_batch is None
    x = torch.rand(1, 3, IMGSZ - 32, IMGSZ, generator=torch.Generator().manual_seed(2))
    outs = [b(x) for _ in range(3)]
    assert list(b._static) == [tuple(x.shape)]
    ref = torch_out(v6, x)
    for o in outs:
        assert (o - ref).abs().max().item() < TOL


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_openvino_precision(v6, v6_onnx, tmp_path):
    """fp32 by default (exact); "auto" is the CPU's native precision, and says which it compiled."""
    from yoloforge.export.openvino import onnx_to_openvino
    from yoloforge.export.runtime import OpenVINOBackend, native_bf16

    ir = onnx_to_openvino(v6_onnx, tmp_path / "ir")
    x = images(1)
    ref = torch_out(v6, x)
    exact, auto = OpenVINOBackend(ir), OpenVINOBackend(ir, precision="auto")
    assert exact.precision == "fp32" and auto.precision == ("bf16" if native_bf16() else "fp32")
    assert (exact(x) - ref).abs().max().item() < TOL
    scale = ref.abs().max().item()
    assert (auto(x) - ref).abs().max().item() < 0.05 * scale  # bf16: 8-bit mantissa
    with pytest.raises(ValueError, match="precision must be one of"):
        OpenVINOBackend(ir, precision="int4")
