"""Quantization-aware training (``yoloforge quantize --method qat``), YOLOv6 paper sec. 2.5 / meituan/YOLOv6
tools/qat (facts in ../shared/FACTS.md sec. 6; the code here is written for yoloforge).

1. :func:`~yoloforge.quant.fake_quant.prepare`: the model in its QAT form. Re-parameterizable blocks (RepVGG, hyper-search), implicit knowledge
   and DropBlock are merged first -- int8 must see the convolutions that will be deployed -- while a conv followed by
   its own BatchNorm keeps the BN unfolded (it trains; folded at export: with per-output-channel symmetric weight
   scales the fold commutes with the weight quantization, so nothing changes). Every ``nn.Conv2d`` not excluded
   becomes a :class:`QuantConv2d`: int8 fake quantization of its input (per tensor, symmetric, ``scale = amax/127``,
   zero point 0) and of its weights (per output channel, symmetric, ``amax`` = the channel's max ``|w|``);
   straight-through estimator, gradient 0 outside ``[-amax, amax]`` (torch's ``fake_quantize_*`` ops). These are the
   places the exported int8 graph quantizes (Conv inputs and weights, as ``yoloforge quantize``'s PTQ). A conv whose
   activation is a LeakyReLU (yolov7-tiny, the darknet tinies) also quantizes its output with a scale of its own
   (:class:`~yoloforge.quant.fake_quant.QuantAct`), so that the exported conv can run as an int8 kernel.
2. :func:`~yoloforge.quant.fake_quant.calibrate`: the activation ``amax`` of every quantizer = the largest ``|x|`` over the calibration
   images (the official "max" calibration of N/T); quantizers that read the same tensor are set to one shared
   value (the official graph optimization: one scale per tensor, so the QDQ graph quantizes it once). A
   concatenation's operands are quantized only as the concatenated tensor at the convolution that reads it, so
   they share that one scale by construction.
3. training: :class:`yoloforge.engine.trainer.Trainer` on the prepared model, with the official QAT recipe
   (configs/repopt/yolov6s_opt_qat.py: 10 epochs, SGD lr0 1e-5, lrf 0.001, momentum 0.937, weight decay 5e-5,
   cosine, no warm-up as engine.py does under ``--quant``, mixup 0); RepOpt models keep their RepOptimizer.
   ``distill="cwd"``: the fp32 model is the teacher -- YOLOv6: the official distillation loss (class KL at T 20,
   DFL KL, channel-wise distillation of the neck maps, cosine decay); YOLOv7 / Scaled-YOLOv4: channel-wise
   distillation of the maps their output convolutions read (weight 10, T 1, the same decay).
4. :func:`export_qdq`: the trained model fused (BN folded, quantizers kept) and exported to ONNX, then explicit
   QuantizeLinear / DequantizeLinear pairs written for every quantized Conv: input 8-bit at the trained scale,
   weights int8 per channel, bias int32 at ``input_scale * weight_scale`` -- the form ONNX Runtime and OpenVINO run
   with int8 kernels (and TensorRT builds from). A conv whose output only passes a ReLU into one quantizer also gets
   that quantizer on its output, before the ReLU (exact, and what ONNX Runtime needs to fuse an int8 QLinearConv);
   a LeakyReLU's conv gets its own output quantizer's Q/DQ (ONNX Runtime: QLinearConv, then QLinearLeakyRelu).
   ``reduce_range``: 7-bit weights for CPUs whose int8 kernels saturate with 8 (:func:`reduce_range_default`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yoloforge.engine.hooks import TeacherHook
from yoloforge.quant.fake_quant import (QMAX, QuantConv2d, calibrate, output_quantizers, prepare, quantizers,
                                        reduce_range_default, set_quant)
from yoloforge.utils.logging import get_logger

LOG = get_logger()

# the official QAT solver (configs/repopt/yolov6s_opt_qat.py) with engine.py's warm-up of 0 under --quant
QAT_HYP = dict(lr0=1e-5, lrf=0.001, momentum=0.937, weight_decay=5e-5, warmup_epochs=0.0, warmup_min_iters=0,
               mixup=0.0, cos_lr=True)


class NeckTap:
    """The maps a model's output convolutions read (YOLOv6: the head's input; anchor heads: each output conv's
    input), captured at every forward: the channel-wise distillation's features for every family."""

    def __init__(self, model: nn.Module):
        from yoloforge.models.anchor_head import AnchorHead

        self.maps: list[torch.Tensor] = []
        head = getattr(model, "head", None)
        self._hooks = [model.register_forward_pre_hook(lambda m, a: self.maps.clear())]
        if isinstance(head, AnchorHead):
            for conv in head.m:
                self._hooks.append(conv.register_forward_pre_hook(lambda m, a: self.maps.append(a[0])))
        elif head is not None:
            self._hooks.append(head.register_forward_pre_hook(lambda m, a: self.maps.extend(a[0])))
        else:
            raise ValueError(f"{getattr(model, 'name', 'model')}: no head to take the neck maps from")


class ChannelWiseLoss:
    """``base`` loss + channel-wise distillation of the neck maps (:class:`NeckTap`) against a teacher's, with
    weight ``cwd_weight`` (official 10) times the cosine decay; items: the base's, then ``cwd``."""

    needs_teacher = True

    def __init__(self, base, student_tap: NeckTap, teacher_tap: NeckTap, epochs: int, cwd_weight: float = 10.0):
        self.base, self.s_tap, self.t_tap = base, student_tap, teacher_tap
        self.epochs, self.cwd_weight = int(epochs), float(cwd_weight)
        self.names = tuple(getattr(base, "names", ())) + ("cwd",)

    def __call__(self, outputs, targets, epoch: int, teacher_outputs):
        from yoloforge.families.yolov6.distill import channel_wise, distill_decay

        loss, items = self.base(outputs, targets, epoch)
        cwd = self.cwd_weight * distill_decay(epoch, self.epochs) * channel_wise(self.s_tap.maps, self.t_tap.maps)
        # the anchor losses return their items' sum times the batch size: the term joins the items in their units
        k = (loss.detach() / items.sum().clamp_min(1e-12)) if float(items.sum()) > 0 else 1.0
        return loss + cwd * k, torch.cat((items, cwd.detach().view(1).to(items.dtype)))


# Activations are written as uint8 with zero point 128: the same grid as the symmetric int8 the model trains with
# (q_u8 = q_s8 + 128, the same scale), in the form ONNX Runtime's x86 int8 kernels take. Written as int8, ONNX Runtime
# converts each Q -> DQ pair to uint8 itself, but only where the Q has one reader: a tensor read by two convolutions
# stayed int8 and those convolutions ran in float (measured: 25 of yolov7-tiny's 58; with uint8 written here 3, its
# output convolutions, which have no quantizer after them).
ACT_ZP = np.array(128, np.uint8)


def qdq_onnx(fp32_onnx: str | Path, out_path: str | Path, act_amax: dict[str, float], meta: dict | None = None,
             w_qmax: int = QMAX, out_amax: dict[str, float] | None = None) -> Path:
    """Write explicit QDQ into an exported fp32 ONNX: for each Conv of a module in ``act_amax`` (fused-model module
    name -> input amax), int8 input at ``amax/127``, int8 per-channel weights (max scaling to ``w_qmax``: 127, or
    63 for 7-bit weights) and int32 bias; for each in ``out_amax`` (module name -> output amax: a
    :class:`~yoloforge.quant.fake_quant.QuantAct`'s), a Q/DQ pair on the Conv's output at ``amax/127``."""
    import onnx
    from onnx import helper, numpy_helper

    from yoloforge.export.onnx import atomic_write, read_onnx_meta, set_meta
    from yoloforge.quant.ptq import conv_node_names

    nodes = conv_node_names(fp32_onnx)
    out_amax = out_amax or {}
    missing = [n for n in (*act_amax, *out_amax) if n not in nodes]
    if missing:
        raise ValueError(f"{fp32_onnx}: no Conv for the quantized module {missing[0]!r}")
    md = dict(read_onnx_meta(fp32_onnx), **(meta or {}))
    proto = onnx.load(str(fp32_onnx))
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    by_name = {n.name: n for n in g.node}
    new_inits, pairs, seen_inputs = [], {}, {}
    for module, amax in act_amax.items():
        node = by_name[nodes[module]]
        x_scale = np.float32(max(amax, 1e-12) / QMAX)
        key = (node.input[0], float(x_scale))
        if key not in seen_inputs:  # one Q/DQ pair per (tensor, scale)
            k = len(seen_inputs)
            s_name, z_name, q_name, dq_name = f"qat_x{k}_scale", f"qat_x{k}_zp", f"qat_x{k}_q", f"qat_x{k}_dq"
            new_inits += [numpy_helper.from_array(np.array(x_scale, np.float32), s_name),
                          numpy_helper.from_array(ACT_ZP, z_name)]
            pairs.setdefault(node.input[0], []).append(
                (helper.make_node("QuantizeLinear", [node.input[0], s_name, z_name], [q_name], name=q_name),
                 helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_name], name=dq_name)))
            seen_inputs[key] = dq_name
        node.input[0] = seen_inputs[key]
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        amax_w = np.abs(w.reshape(w.shape[0], -1)).max(1)
        w_scale = np.where(amax_w > 0, amax_w / w_qmax, 1.0).astype(np.float32)
        wq = np.clip(np.rint(w / w_scale.reshape(-1, 1, 1, 1)), -w_qmax - 1, w_qmax).astype(np.int8)
        base = f"{node.name}_w"  # per node: the exporter may share one initializer between convs
        new_inits += [numpy_helper.from_array(wq, base + "_int8"), numpy_helper.from_array(w_scale, base + "_scale"),
                      numpy_helper.from_array(np.zeros(w.shape[0], np.int8), base + "_zp")]
        deq = [helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zp"], [base + "_dq"],
                                name=base + "_dq", axis=0)]
        node.input[1] = base + "_dq"
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            b_scale = (np.float64(x_scale) * w_scale).astype(np.float32)
            bq = np.clip(np.rint(b / b_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            bn = f"{node.name}_b"
            new_inits += [numpy_helper.from_array(bq, bn + "_int32"), numpy_helper.from_array(b_scale, bn + "_scale"),
                          numpy_helper.from_array(np.zeros(w.shape[0], np.int32), bn + "_zp")]
            deq.append(helper.make_node("DequantizeLinear", [bn + "_int32", bn + "_scale", bn + "_zp"], [bn + "_dq"],
                                        name=bn + "_dq", axis=0))
            node.input[2] = bn + "_dq"
        pairs.setdefault(("weights", node.name), []).append(tuple(deq))
    for k, (module, amax) in enumerate(out_amax.items()):
        node = by_name[nodes[module]]
        y, name = node.output[0], f"qat_y{k}"
        new_inits += [numpy_helper.from_array(np.array(np.float32(max(amax, 1e-12) / QMAX), np.float32), name + "_scale"),
                      numpy_helper.from_array(ACT_ZP, name + "_zp")]
        for reader in g.node:  # every reader of the conv's output reads the dequantized tensor
            for i, t in enumerate(reader.input):
                if t == y:
                    reader.input[i] = name + "_dq"
        pairs[("output", node.name)] = [(
            helper.make_node("QuantizeLinear", [y, name + "_scale", name + "_zp"], [name + "_q"], name=name + "_q"),
            helper.make_node("DequantizeLinear", [name + "_q", name + "_scale", name + "_zp"], [name + "_dq"],
                             name=name + "_dq"))]
    nodes = list(g.node) + [n for groups in pairs.values() for grp in groups for n in grp]
    nodes += _quantize_before_relu(nodes)
    order = _topological(nodes, {i.name for i in g.input} | set(inits) | {t.name for t in new_inits})
    used = {i for n in order for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(order)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    onnx.checker.check_model(proto)
    set_meta(proto, dict(md, int8=True, qat=True, int8_quantized_layers=len(act_amax),
                         int8_quantized_outputs=len(out_amax), weight_bits=8 if w_qmax == QMAX else 7))
    return atomic_write(Path(out_path), lambda p: onnx.save(proto, p))


def _quantize_before_relu(nodes: list) -> list:
    """Q/DQ pairs on the output of every Conv whose only reader is a ReLU whose only reader is one (zero point 0)
    QuantizeLinear, with that Q's scale; returns the new nodes (the graph is rewired in place).

    Exact: with zero point 0, ``Q(relu(y)) = relu(Q(y))`` (rounding and ``max(., 0)`` commute; both clip at 127),
    and the ReLU then maps the grid onto itself, so the second Q is the identity. But ONNX Runtime only turns
    ``DQ -> Conv -> Q`` into an int8 convolution (QLinearConv): without a Q on the conv's output it runs the conv in
    float on dequantized tensors, slower than the fp32 model (measured 10.4 vs 6.0 ms for yolov6n at 160)."""
    from onnx import helper

    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    new = []
    for conv in [n for n in nodes if n.op_type == "Conv"]:
        relu = readers.get(conv.output[0], [])
        if len(relu) != 1 or relu[0].op_type != "Relu":
            continue
        q = readers.get(relu[0].output[0], [])
        if len(q) != 1 or q[0].op_type != "QuantizeLinear" or not q[0].input[1].startswith("qat_x"):
            continue
        scale, zp = q[0].input[1], q[0].input[2]
        name = f"{conv.name}_out"
        new += [helper.make_node("QuantizeLinear", [conv.output[0], scale, zp], [name + "_q"], name=name + "_q"),
                helper.make_node("DequantizeLinear", [name + "_q", scale, zp], [name + "_dq"], name=name + "_dq")]
        relu[0].input[0] = name + "_dq"
    return new


def _topological(nodes: list, available: set[str]) -> list:
    """``nodes`` ordered so that every input is produced before it is read (ONNX requires it)."""
    ready, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError(f"QDQ graph: node {rest[0].name} reads a tensor nothing produces")
        for n in done:
            ready.update(n.output)
        order += done
        pending = rest
    return order


def export_qdq(model: nn.Module, out_dir: str | Path, imgsz: int, names, meta: dict | None = None) -> Path:
    """The QAT model (prepared, trained) -> ``out_dir/model_qat_int8.onnx`` (explicit QDQ)."""
    from yoloforge.export.onnx import export_onnx

    out_dir = Path(out_dir)
    fused = copy.deepcopy(model).cpu().fuse().eval()
    amax = {n: float(q.amax) for n, q in quantizers(fused).items() if float(q.amax) > 0}
    out_amax = {n: float(q.amax) for n, q in output_quantizers(fused).items() if float(q.amax) > 0}
    w_qmax = {m.w_qmax for m in fused.modules() if isinstance(m, QuantConv2d)} or {QMAX}
    if len(w_qmax) > 1:
        raise ValueError(f"QAT model with mixed weight ranges {sorted(w_qmax)}")
    set_quant(fused, False)
    fp32 = export_onnx(fused, out_dir / "model_qat_fp32.onnx", imgsz=imgsz, dynamic=True, names=names, meta=meta)
    return qdq_onnx(fp32, out_dir / "model_qat_int8.onnx", amax, meta, w_qmax.pop(), out_amax)


class ChannelWiseHook(TeacherHook):
    """QAT's teacher for the families without a distillation loss of their own: the fp32 model teaches by
    channel-wise distillation of the neck maps. It replaces the trainer's "distill" hook; a YOLOv6 student keeps
    that hook (the official distillation loss: class, DFL and, with ``distill_feat``, CWD)."""

    def distill_loss(self, tr, loss_fn, teacher):
        if tr.main:
            LOG.info(f"QAT with channel-wise distillation of the neck maps from {tr.cfg.teacher}")
        return ChannelWiseLoss(loss_fn, NeckTap(tr.model), NeckTap(teacher), tr.cfg.epochs,
                               float(tr.hyp.get("distill_cwd", 10.0)))


def qat(weights: str | Path, data: str | Path, out_dir: str | Path, epochs: int = 10, imgsz: int | None = None,
        batch: int = 16, workers: int = 2, distill: str = "cwd", n_calib: int = 128, exclude=(), scales: str = "",
        hyp_override: dict | None = None, seed: int = 0, device: str = "", reduce_range: bool | None = None,
        verbose: bool = True) -> tuple[Path, Path]:
    """Calibrate, train and export (module docstring); returns (QAT weights ``.safetensors``, QDQ ``.onnx``).
    ``reduce_range`` None: 7-bit weights where this CPU needs them (:func:`reduce_range_default`)."""
    from yoloforge.config import TrainConfig
    from yoloforge.export.runtime import max_stride
    from yoloforge.families import family_of
    from yoloforge.quant.ptq import _torch_weights, calibration_batches
    from yoloforge.weights import load_model

    if distill not in ("cwd", "none"):
        raise ValueError(f"--distill {distill!r}: cwd (the fp32 model teaches, official) or none")
    weights = Path(weights)
    src, meta = _torch_weights(weights)
    if getattr(src, "fused", False):
        raise ValueError(f"{weights}: QAT needs the unfused training weights (.safetensors or an official checkpoint)")
    imgsz = int(imgsz or meta.get("imgsz") or 640)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if reduce_range is None:
        reduce_range = reduce_range_default(device)
    model = prepare(copy.deepcopy(src).cpu(), exclude, reduce_range)
    family = family_of(model.name)
    batches = calibration_batches(data, imgsz, n_calib, stride=max_stride(model), verbose=verbose)
    groups = calibrate(model, batches)
    if verbose:
        LOG.info(f"QAT: {len(quantizers(model))} quantized convolutions calibrated on {len(batches)} images "
                 f"({len(groups)} tensors read by several of them share one scale)"
                 + ("; 7-bit weights: this CPU's int8 kernels would saturate with 8 (--no-reduce-range: 8 bits)"
                    if reduce_range else ""))
    if not scales and getattr(getattr(model, "spec", None), "training_mode", "") == "repopt":
        scales = _run_scales(weights)
    cfg = TrainConfig(model=model.name, data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, nbs=batch,
                      workers=workers, project=str(out_dir), name="qat_train", exist_ok=True, seed=seed, device=device,
                      hyp_override=dict(QAT_HYP, **family.qat_hyp, **(hyp_override or {})), plots=False, verbose=verbose,
                      tensorboard=False, scales=scales, teacher=str(weights) if distill == "cwd" else "",
                      amp="off",  # fp32: the fake-quant grid and the convs must simulate the int8 graph, not bf16
                      distill=distill == "cwd", distill_feat=distill == "cwd")
    from yoloforge.engine.trainer import Trainer

    cwd = distill == "cwd" and not family.distill_loss  # YOLOv6: the trainer's own distillation (CWD included)
    trainer = Trainer(cfg, model=model, hooks=[ChannelWiseHook()] if cwd else [])
    best = trainer.train()
    qmodel = load_model(best)[0]
    onnx_path = export_qdq(qmodel, out_dir, imgsz, src.names, meta={"source_weights": weights.name,
                                                                     "calib_images": len(batches)})
    return best, onnx_path


def _run_scales(weights: Path) -> str:
    """The ``--scales`` a RepOpt run was trained with (its args.yaml), for the QAT RepOptimizer's masks."""
    import yaml

    args = weights.parent.parent / "args.yaml"
    if args.is_file():
        s = (yaml.safe_load(args.read_text()) or {}).get("cfg", {}).get("scales", "")
        if s and Path(s).is_file():
            return s
    raise ValueError(f"{weights}: a RepOpt model trains with its RepOptimizer during QAT; pass --scales (the "
                     f"hyper-search weights it was trained with)")


def quantize_qat(weights: str | Path, data: str | Path, out_dir: str | Path | None = None, imgsz: int | None = None,
                 n_calib: int = 128, skip: int = 0, exclude=(), rank: str = "output", epochs: int = 10,
                 distill: str = "cwd", scales: str = "", batch: int = 16, workers: int = 2, openvino: bool = True,
                 evaluate: bool = True, hyp_override: dict | None = None, reduce_range: bool | None = None,
                 verbose: bool = True):
    """``yoloforge quantize --method qat``: optional sensitivity ranking (``--skip K`` layers stay float), QAT,
    the QDQ ONNX (+ OpenVINO IR) and the mAP of fp32 vs the int8 model; ``report.json``; returns a QuantReport."""
    import json
    from dataclasses import asdict

    from yoloforge.export.runtime import max_stride
    from yoloforge.quant.ptq import QuantReport, _compare_map, _torch_weights, calibration_batches, rank_layers

    weights = Path(weights)
    out_dir = Path(out_dir) if out_dir else weights.parent / f"{weights.stem}_qat"
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = QuantReport(method="qat", distill=distill)
    excluded = list(exclude)
    src, meta = _torch_weights(weights)
    fused = src.deployed().cpu()
    size = int(imgsz or meta.get("imgsz") or 640)
    if skip:
        batches = calibration_batches(data, size, n_calib, stride=max_stride(fused), verbose=False)
        excluded = rank_layers(rep, fused, data, batches, out_dir, skip, excluded, rank, size, batch, verbose)
    if reduce_range is None:  # decided here (the same rule qat() applies) so that the report can say it
        reduce_range = reduce_range_default()
    rep.weight_bits = 7 if reduce_range else 8
    best, onnx_path = qat(weights, data, out_dir, epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                          distill=distill, n_calib=n_calib, exclude=excluded, scales=scales, hyp_override=hyp_override,
                          reduce_range=reduce_range, verbose=verbose)
    rep.weights, rep.onnx, rep.excluded, rep.calib_images = str(best), str(onnx_path), excluded, n_calib
    if openvino:
        from yoloforge.export.openvino import onnx_to_openvino

        rep.openvino = str(onnx_to_openvino(onnx_path, out_dir / "model_qat_int8_openvino"))
    if evaluate:
        rep.map = _compare_map(fused, data, [("qat-onnxruntime", onnx_path)]
                               + ([("qat-openvino", Path(rep.openvino))] if rep.openvino else []), size, batch)
    (out_dir / "report.json").write_text(json.dumps(asdict(rep), indent=1))
    return rep
