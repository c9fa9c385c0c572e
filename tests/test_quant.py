"""int8 post-training quantization: fake-quant arithmetic, the per-layer sensitivity ranking, and the
`yoloforge quantize` pipeline (calibration, layers kept in float, metadata, OpenVINO IR, mAP report)."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from helpers import randomize_bn
from yoloforge import Detector
from yoloforge.cli import main
from yoloforge.families.registry import build_model
from yoloforge.quant.sensitivity import fake_quant_activation, fake_quant_weight, layer_sensitivity
from yoloforge.utils.checkpoint import save_weights

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
HAS_OV = importlib.util.find_spec("openvino") is not None


def test_fake_quant_activation_and_weight():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.7, 3.0, 5.0])
    q = fake_quant_activation(x, -1.0, 3.0)  # scale 4/255, zero point 64: 0 is exact, outside values clamp
    scale = 4 / 255
    assert q[2] == 0 and abs(q[3] - 0.7) <= scale / 2 + 1e-7
    assert q[0] == pytest.approx(-64 * scale) and q[5] == pytest.approx(191 * scale) and q[4] == pytest.approx(q[5])
    assert fake_quant_activation(torch.tensor([0.5]), 0.2, 1.0)[0] == pytest.approx(0.5, abs=0.5 / 255)  # 0 in range
    w = torch.tensor([[1.0, -0.5, 0.3], [0.01, 0.02, -0.04]]).view(2, 3, 1, 1)
    qw = fake_quant_weight(w)
    assert torch.equal(qw[0, 0], w[0, 0]) and torch.equal(qw[1, 2], w[1, 2])  # each channel's max is exact
    assert ((qw - w).abs().flatten(1).amax(1) <= w.abs().flatten(1).amax(1) / 254 + 1e-9).all()


@torch.no_grad()
def _random_v6(nc=3, seed=0):
    torch.manual_seed(seed)
    m = build_model("yolov6n", nc=nc)
    randomize_bn(m, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    for conv in [*m.head.cls_preds, *m.head.reg_preds]:
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
        conv.bias.fill_(1.0)
    m.names = ["circle", "rectangle", "triangle", "cross"][:nc]
    return m.eval()


class _Chain(torch.nn.Module):
    """Three convolutions whose output is read as (B, H*W, 4 boxes + 2 scores)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1), \
            torch.nn.Conv2d(16, 6, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))).flatten(2).transpose(1, 2)


@torch.no_grad()
def test_sensitivity_ranks_a_badly_quantizable_layer_first():
    torch.manual_seed(0)
    model = _Chain().eval()
    for conv in (model.a, model.b, model.c):
        conv.bias.zero_()  # outputs follow the weights only
    x = [torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(i)).numpy() for i in range(2)]
    plain = layer_sensitivity(model, x, verbose=False)
    assert sorted(r.name for r in plain) == ["a", "b", "c"] and max(r.sensitivity for r in plain) < 0.05
    w = model.b.weight
    amax = w.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    # every weight just under half an int8 step of its channel (it rounds to 0), one weight at the channel's
    # max: the layer keeps its scale, but int8 drops most of what it computes
    w.copy_(torch.sign(w) * 0.49 * amax / 127)
    w[:, 0, 0, 0] = amax.flatten()
    ranked = layer_sensitivity(model, x, verbose=False)
    assert [r.name for r in ranked][0] == "b" and ranked[0].sensitivity > 5 * ranked[1].sensitivity
    assert all(a.sensitivity >= b.sensitivity >= 0 for a, b in zip(ranked, ranked[1:]))
    assert ranked[0].params == w.numel() and ranked[0].in_range[0] == 0.0 < ranked[0].in_range[1]  # after a ReLU
    assert torch.equal(model.b.weight, w)  # the model is left as it was
    # the paper's layer-output metrics: b has the lowest SNR and cosine (the MSE depends on each layer's scale)
    b = ranked[0]
    assert all(b.snr_db < r.snr_db - 10 and b.cosine < r.cosine for r in ranked[1:])
    assert all(r.cosine <= 1 + 1e-9 and np.isfinite(r.snr_db) and r.mse > 0 and np.isnan(r.map_drop) for r in ranked)
    for rank in ("snr", "cosine"):
        assert layer_sensitivity(model, x, verbose=False, rank=rank)[0].name == "b"
    by_mse = [r.mse for r in layer_sensitivity(model, x, verbose=False, rank="mse")]
    assert by_mse == sorted(by_mse, reverse=True)
    # by mAP: evaluate() sees the model with one layer quantized; here its "mAP" is minus the output error
    ref = [model(torch.from_numpy(v)) for v in x]
    ev = lambda m: -sum(float((m(torch.from_numpy(v)) - r).abs().mean()) for v, r in zip(x, ref))  # noqa: E731
    by_map = layer_sensitivity(model, x, verbose=False, evaluate=ev, rank="map")
    assert by_map[0].name == "b" and by_map[0].map_drop > 0 and torch.equal(model.b.weight, w)
    with pytest.raises(ValueError, match="needs a val split"):
        layer_sensitivity(model, x, verbose=False, rank="map")


@pytest.fixture(scope="module")
def quantized(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    m = _random_v6(nc=4)
    w = save_weights(root / "m.safetensors", m, {"names": m.names, "imgsz": 96})
    args = ["quantize", "--weights", str(w), "--data", str(tiny_data), "--calib", "8", "--skip", "2",
            "--batch", "4", "--output", str(root / "int8")] + ([] if HAS_OV else ["--no-openvino"])
    assert main(args) == 0
    return root / "int8", w


def test_quantize_writes_int8_models_and_report(quantized):
    out, _ = quantized
    for f in ("model_fp32.onnx", "model_int8.onnx", "sensitivity.csv", "sensitivity.png", "report.json"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    ranking = [row[0] for row in rep["sensitivity"]]
    assert rep["excluded"] == ranking[:2] and rep["calib_images"] == 8
    assert set(rep["map"]) == {"fp32", "int8-onnxruntime"} | ({"int8-openvino"} if HAS_OV else set())
    csv_rows = (out / "sensitivity.csv").read_text().splitlines()
    assert len(csv_rows) == len(ranking) + 1 and csv_rows[1].split(",")[1] == ranking[0]
    assert csv_rows[0].split(",")[5:9] == ["mse", "snr_db", "cosine", "map_drop"]
    proto = onnx.load(str(out / "model_int8.onnx"))
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    float_weight = {n.name for n in convs if produced_by.get(n.input[1]) != "DequantizeLinear"}
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == "yoloforge"))
    assert meta["int8"] is True and meta["names"] == ["circle", "rectangle", "triangle", "cross"]
    assert sorted(meta["int8_excluded_layers"]) == sorted(ranking[:2])
    assert len(float_weight) == 2 and float_weight == set(meta["int8_excluded"])  # only the skipped convs stay float
    # only convolutions are quantized (their inputs and outputs): the head's decoding (boxes in pixels, scores in
    # [0, 1], their final concat) stays float
    fp32 = onnx.load(str(out / "model_fp32.onnx"))
    conv_io = {t for n in fp32.graph.node if n.op_type == "Conv" for t in [*n.input, *n.output]}
    quantized_tensors = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized_tensors and quantized_tensors <= conv_io
    assert all(produced_by[o.name] != "DequantizeLinear" for o in proto.graph.output)


def test_quantize_ranks_by_map_on_the_val_split(quantized, tiny_data, tmp_path):
    _, w = quantized
    assert main(["quantize", "--weights", str(w), "--data", str(tiny_data), "--calib", "4", "--sensitivity", "map",
                 "--no-openvino", "--no-val", "--batch", "4", "--output", str(tmp_path / "q")]) == 0
    rep = json.loads((tmp_path / "q" / "report.json").read_text())
    assert rep["ranking"] == "map"
    drops = [row[7] for row in rep["sensitivity"]]
    assert drops == sorted(drops, reverse=True) and all(np.isfinite(drops))


def test_int8_model_predicts_close_to_fp32(quantized, tiny_data):
    out, w = quantized
    from yoloforge.export.runtime import OrtBackend

    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)).numpy()
    ref = np.asarray(OrtBackend(out / "model_fp32.onnx")(x))
    got = np.asarray(OrtBackend(out / "model_int8.onnx")(x))
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(got[..., 4:], ref[..., 4:]) < 0.1 and rel(got[..., :4], ref[..., :4]) < 0.05
    assert rel(got, ref) > 0  # it is really quantized
    src = str(tiny_data.parent / "images" / "val")
    for path in [out / "model_int8.onnx"] + ([out / "model_int8_openvino" / "model.xml"] if HAS_OV else []):
        res = Detector(str(path)).predict(src, conf=0.3)
        assert len(res) == 8 and res[0].names == ["circle", "rectangle", "triangle", "cross"]


def test_quantize_rejects_unknown_layer(quantized, tiny_data, tmp_path):
    _, w = quantized
    with pytest.raises(ValueError, match="no convolution named 'backbone.nope'"):
        Detector(str(w)).quantize(str(tiny_data), exclude=["backbone.nope"], sensitivity=False, openvino=False,
                                  evaluate=False, n_calib=2, out_dir=tmp_path)
