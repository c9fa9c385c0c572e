"""Quantization-aware training: the QAT form of a model, its calibration, the straight-through gradient, the
explicit QDQ export that ONNX Runtime runs as the torch simulation computes, and `yoloforge quantize --method qat`
end to end (YOLOv6 with the official distillation loss, YOLOv7 with channel-wise distillation)."""
import copy
import json

import numpy as np
import pytest
import torch

from helpers import randomize_bn
from yoloforge.cli import main
from yoloforge.families.registry import build_model
from yoloforge.quant import fake_quant, qat
from yoloforge.utils.checkpoint import save_weights
from yoloforge.weights import load_model

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
ort = pytest.importorskip("onnxruntime")


@torch.no_grad()
def _random(name: str, nc: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(name, nc=nc)
    randomize_bn(m, torch.Generator().manual_seed(seed))
    if hasattr(m.head, "cls_preds"):  # YOLOv6 starts with zero predictor weights: its output would be constant
        for conv in [*m.head.cls_preds, *m.head.reg_preds]:
            conv.weight.copy_(torch.randn(conv.weight.shape) * 0.05)
            conv.bias.fill_(1.0)
    m.names = ["circle", "rectangle", "triangle", "cross"][:nc]
    return m.eval()


def _batches(n=3, h=64, w=96):
    return [torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(i)).numpy() for i in range(n)]


def test_fake_quant_is_int8_with_a_straight_through_gradient():
    fq = fake_quant.FakeQuant()
    fq.calibrating = True
    fq(torch.tensor([-0.5, 1.27]))
    fq.calibrating = False
    assert float(fq.amax) == pytest.approx(1.27)
    x = torch.tensor([-2.0, -0.5, 0.004, 0.3, 1.27, 3.0], requires_grad=True)
    y = fq(x)
    step = 1.27 / 127
    assert torch.allclose(y, torch.clamp(torch.round(x.detach() / step), -128, 127) * step)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # zero outside [-amax, amax] (clamped), else 1


def _ort(path, optimize=True):
    so = ort.SessionOptions()
    if not optimize:  # every Q, DQ and Conv as written: the graph's own arithmetic, no int8 kernel
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["yolov6n", "yolov7-tiny"])
def test_qat_form_calibration_and_qdq_export_agree(name, tmp_path):
    m = _random(name)
    ref = copy.deepcopy(m).fuse().eval()
    q = fake_quant.prepare(copy.deepcopy(m), reduce_range=True)  # 7-bit weights: int8 kernels exact on every x86 CPU
    assert not any(type(c) is torch.nn.Conv2d for c in q.modules())  # every conv quantized
    assert any(isinstance(c, torch.nn.BatchNorm2d) for c in q.modules())  # conv + BN pairs keep their BN
    if name == "yolov6n":  # RepVGG blocks are merged: int8 sees the deployed 3x3 convolutions
        assert all(b.reparam is not None for b in q.modules() if type(b).__name__ == "RepVGGBlock")
    batches = _batches()
    groups = fake_quant.calibrate(q, batches)
    qs = fake_quant.quantizers(q)
    assert all(float(v.amax) > 0 for v in qs.values())
    assert groups and all(len({float(qs[n].amax) for n in g}) == 1 for g in groups.values())  # one scale per tensor
    x = torch.from_numpy(batches[0])
    with torch.no_grad():
        yq = q.eval()(x)
        fake_quant.set_quant(q, False)
        yf = q(x)
        fake_quant.set_quant(q, True)
        y_ref = ref(x)
    assert torch.allclose(yf, y_ref, rtol=1e-4, atol=1e-3)  # quantizers off: the float model
    assert 0 < float((yq - y_ref).abs().max()) < 0.05 * float(y_ref.abs().max())  # int8: close, not equal
    out = qat.export_qdq(q, tmp_path, 96, m.names)
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    n_relu_q = sum(n.name.endswith("_out_q") for n in proto.graph.node)  # a Q before a ReLU (exact, see qdq_onnx)
    outs = fake_quant.output_quantizers(q)  # a LeakyReLU's conv: its output quantized at a scale of its own
    assert (len(outs) > 0) == (name == "yolov7-tiny") and all(float(v.amax) > 0 for v in outs.values())
    n_out_q = sum(n.op_type == "QuantizeLinear" and n.name.startswith("qat_y") for n in proto.graph.node)
    assert n_out_q == len(outs)
    assert ops.count("QuantizeLinear") - n_relu_q - n_out_q == len(qs) - sum(len(g) - 1 for g in groups.values())
    assert ops.count("Conv") == len(qs)
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_w_int8")]
    assert weights and all(w.min() >= -64 and w.max() <= 63 for w in weights)  # 7-bit
    img = np.zeros((1, 3, 96, 96), np.float32)
    img[:, :, :64] = batches[0]
    with torch.no_grad():
        want = copy.deepcopy(q).fuse().eval()(torch.from_numpy(img)).numpy()
    for optimize in (False, True):  # the graph as written, and as ONNX Runtime runs it (int8 kernels where fused)
        sess = _ort(out, optimize)
        got = sess.run(None, {sess.get_inputs()[0].name: img})[0]
        assert np.abs(got[..., 4:] - want[..., 4:]).max() < 0.02  # scores: the runtime vs the torch simulation
        assert np.abs(got[..., :4] - want[..., :4]).max() < 0.02 * np.abs(want[..., :4]).max()
    # conv -> ReLU -> conv (yolov6n), conv -> LeakyReLU -> conv (yolov7-tiny, with its output quantizers): ONNX
    # Runtime runs most convolutions as int8 QLinearConv (the rest feed the head outputs, a Concat, float)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    fused_ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused_ops.count("QLinearConv") > len(qs) // 2  # yolov6n 31 of 56
    if name == "yolov7-tiny":
        assert fused_ops.count("QLinearConv") >= len(outs) // 2 and "QLinearLeakyRelu" in fused_ops


def test_eight_bit_weights_export_as_trained(tmp_path):
    """Without --reduce-range the weights use the whole int8 range; the graph computes what the torch simulation
    does (checked with ONNX Runtime's graph optimizations off: some CPUs' int8 kernels saturate, see
    ``reduce_range_default``)."""
    m = _random("yolov6n")
    q = fake_quant.prepare(copy.deepcopy(m))
    fake_quant.calibrate(q, _batches(1))
    out = qat.export_qdq(q, tmp_path, 64, m.names)
    proto = onnx.load(str(out))
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_w_int8")]
    assert max(int(np.abs(w).max()) for w in weights) == 127
    x = _batches(1)[0]
    with torch.no_grad():
        want = copy.deepcopy(q).fuse().eval()(torch.from_numpy(x)).numpy()
    sess = _ort(out, optimize=False)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(got[..., 4:] - want[..., 4:]).max() < 0.02


def test_qat_weights_reload_in_their_qat_form(tmp_path):
    q = fake_quant.prepare(_random("yolov6n"), exclude=["head.cls_preds.0"])
    fake_quant.calibrate(q, _batches(1))
    w = save_weights(tmp_path / "q.safetensors", q, {"names": q.names, "imgsz": 96})
    back = load_model(w)[0].eval()
    assert back.qat == {"excluded": ["head.cls_preds.0"], "reduce_range": False, "act_quant": True}
    assert type(back.head.cls_preds[0]) is torch.nn.Conv2d
    assert torch.equal(back.head.cls_preds[1].in_q.amax, q.head.cls_preds[1].in_q.amax)
    x = torch.from_numpy(_batches(1)[0])
    with torch.no_grad():
        assert torch.equal(back(x), q.eval()(x))
    with pytest.raises(ValueError, match="no convolution named 'nope'"):
        fake_quant.prepare(_random("yolov6n"), exclude=["nope"])
    # QAT weights written before the output quantizers existed (no "act_quant" in their metadata) load as they were
    old = fake_quant.prepare(_random("yolov7-tiny"), act_quant=False)
    fake_quant.calibrate(old, _batches(1))
    old.qat.pop("act_quant")
    back = load_model(save_weights(tmp_path / "old.safetensors", old, {"names": old.names, "imgsz": 96}))[0].eval()
    assert not fake_quant.output_quantizers(back)
    with torch.no_grad():
        assert torch.equal(back(x), old.eval()(x))


@pytest.mark.parametrize("name", ["yolov6n", "yolov7-tiny"])
def test_quantize_method_qat_end_to_end(name, tiny_data, tmp_path):
    m = _random(name)
    w = save_weights(tmp_path / "fp32.safetensors", m, {"names": m.names, "imgsz": 64})
    out = tmp_path / "qat"
    assert main(["quantize", "--method", "qat", "--weights", str(w), "--data", str(tiny_data), "--epochs", "1",
                 "--imgsz", "64", "--batch", "8", "--calib", "4", "--workers", "0", "--no-openvino",
                 "--output", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["map"]) >= {"fp32", "qat-onnxruntime"} and rep["method"] == "qat" and rep["distill"] == "cwd"
    rows = (out / "qat_train" / "results.csv").read_text().splitlines()
    assert "train/cwd_loss" in rows[0] and len(rows) == 2  # the distillation term, one epoch
    qmodel = load_model(out / "qat_train" / "weights" / "best.safetensors")[0]
    assert any(isinstance(c, fake_quant.QuantConv2d) for c in qmodel.modules())
    assert onnx.load(rep["onnx"]).graph.node  # the QDQ model is there and readable


@pytest.mark.slow  # ~1-3 min: the mAP-drop ranking validates once per layer (56 of them)
def test_quantize_method_compare_gives_every_row(tiny_data, tmp_path, capsys):
    m = _random("yolov6n")
    w = save_weights(tmp_path / "fp32.safetensors", m, {"names": m.names, "imgsz": 64})
    out = tmp_path / "cmp"
    assert main(["quantize", "--method", "compare", "--weights", str(w), "--data", str(tiny_data), "--epochs", "1",
                 "--imgsz", "64", "--batch", "8", "--calib", "4", "--workers", "0", "--skip", "2", "--no-openvino",
                 "--output", str(out)]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["fp32", "PTQ", "PTQ + skip 2 (output error)", "PTQ + skip 2 (mAP drop)",
                                          "QAT", "QAT + CWD"]
    assert all(0 <= r["mAP50-95 onnxruntime"] <= 1 and r["ms onnxruntime"] > 0 for r in rows)
    assert rows[1]["kept_in_float"] == "" and len(rows[2]["kept_in_float"].split(",")) == 2
    assert "QAT + CWD" in capsys.readouterr().out


def test_qat_recovers_what_ptq_loses_on_an_outlier_channel():
    """One channel 100x larger than the rest: per-tensor int8 of the next conv's input leaves the others a few
    levels, so PTQ is off by ~19% (relative MSE); a few hundred QAT steps (fake quant in the loop, the calibrated
    scales kept) learn weights that work with those levels."""
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        f[0].weight[0] *= 100
        f[0].bias[0] = 5.0
        f[2].weight[:, 0] /= 100

    def data(seed, n=8):
        return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    q = copy.deepcopy(f)
    q[0], q[2] = fake_quant.QuantConv2d.from_conv(q[0]), fake_quant.QuantConv2d.from_conv(q[2])
    fake_quant.calibrate(q, [data(i).numpy() for i in range(4)])
    held_out = data(999, 64)

    @torch.no_grad()
    def rel_err():
        ref = f(held_out)
        return float((q(held_out) - ref).pow(2).mean() / ref.pow(2).mean())

    ptq = rel_err()
    amax = [float(v.amax) for v in fake_quant.quantizers(q).values()]
    opt = torch.optim.Adam(q.parameters(), 1e-3)
    for step in range(300):
        x = data(100 + step)
        with torch.no_grad():
            target = f(x)
        loss = (q(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ptq > 0.1 and rel_err() < 0.3 * ptq
    assert [float(v.amax) for v in fake_quant.quantizers(q).values()] == amax  # training moved weights, not the scales


def test_a_concatenation_is_quantized_with_one_scale(tmp_path):
    """The official graph optimization: the operands of a Concat share one scale. Here a Concat's output has a
    single QuantizeLinear (every conv reading it shares it), so a runtime that moves Q above the Concat gives all
    its operands that one scale, and no requantization sits in between."""
    m = _random("yolov7-tiny")
    q = fake_quant.prepare(copy.deepcopy(m))
    fake_quant.calibrate(q, _batches(1))
    proto = onnx.load(str(qat.export_qdq(q, tmp_path, 64, m.names)))
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    concats = [n for n in proto.graph.node if n.op_type == "Concat"
               and any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], []))]
    assert len(concats) >= 5  # yolov7-tiny's ELAN blocks and SPPCSPC concatenate before a conv
    for n in concats:
        qs = [c for c in consumers[n.output[0]] if c.op_type == "QuantizeLinear"]
        assert len(qs) == 1, f"{n.name}: {len(qs)} quantizers of one concatenation"
