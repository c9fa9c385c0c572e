"""``yoloforge train --compile``: torch.compile of the training forward, the eager module saved.

The fast tests trace with dynamo's ``eager`` backend (no code generation: seconds), which runs the same aten ops
as eager mode, so the run must equal an eager one bit for bit. The slow test compiles with inductor (minutes on
this CPU) in channels_last + bf16 under glibc's checking allocator: inductor must leave the oneDNN guard in place
(models/base.py), which it does not with its layout optimization on.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from yoloforge.cli import build_parser
from yoloforge.config import TrainConfig
from yoloforge.engine.trainer import Trainer, compile_for_training
from yoloforge.models.base import _standard_strides, onednn_risky
from yoloforge.families.registry import build_model
from yoloforge.utils.checkpoint import load_state


def test_compile_flag_and_config():
    p = build_parser()
    assert p.parse_args(["train"]).compile == ""
    assert p.parse_args(["train", "--compile"]).compile == "inductor"
    assert p.parse_args(["train", "--compile", "aot_eager"]).compile == "aot_eager"
    assert TrainConfig(compile=True).compile == "inductor" and TrainConfig(compile=False).compile == ""
    with pytest.raises(ValueError, match="compile='nope'"):
        compile_for_training(build_model("yolov6n", nc=2), "nope")


def test_compile_makes_the_risky_convolutions_nchw_before_tracing():
    m = build_model("yolov6n", nc=2).train().to(memory_format=torch.channels_last)
    risky = [c for c in m.modules() if onednn_risky(c)]
    assert risky and not any(_standard_strides(c.weight) for c in risky)  # 1x1 with 3 input channels: NHWC strides
    compile_for_training(m, "eager")
    assert all(_standard_strides(c.weight) and c._yf_layout_guard for c in risky)


def _run(tiny_data, tmp_path, name, **kw):
    cfg = dict(model="yolov6n", data=str(tiny_data), epochs=2, imgsz=64, batch=8, nbs=8, workers=0, threads=1,
               deterministic=True, amp="off", plots=False, verbose=False, tensorboard=False, val_interval=2,
               project=str(tmp_path), name=name, exist_ok=True)
    t = Trainer(TrainConfig(**dict(cfg, **kw)))
    t.train()
    return t


def test_compiled_training_equals_eager_and_saves_the_eager_module(tiny_data, tmp_path):
    before = torch.get_num_threads()
    try:
        eager = _run(tiny_data, tmp_path, "eager")
        comp = _run(tiny_data, tmp_path, "compiled", compile="eager", channels_last=True)
        plain_cl = _run(tiny_data, tmp_path, "cl", channels_last=True)
    finally:
        torch.set_num_threads(before)
    assert isinstance(comp.train_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert comp.train_forward._orig_mod is comp.model and eager.train_forward is eager.model
    state = load_state(comp.wdir / "last.state.pt")
    keys = list(state["model"])
    assert keys and not any("_orig_mod" in k for k in keys)  # the checkpoint holds the eager module
    assert keys == list(load_state(eager.wdir / "last.state.pt")["model"])
    # dynamo's eager backend runs the eager ops: the same losses and weights as channels_last without compile
    assert torch.equal(comp.epoch_loss, plain_cl.epoch_loss)
    for a, b in zip(comp.model.state_dict().values(), plain_cl.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.allclose(comp.epoch_loss, eager.epoch_loss, rtol=1e-3)  # NCHW vs NHWC: rounding only
    assert comp.iteration == eager.iteration == 4


@pytest.mark.slow
def test_inductor_training_in_channels_last_bf16_keeps_the_heap_intact(tiny_data, tmp_path):
    """Compiles for real (2-4 min on 2 cores, less with a warm inductor cache). Under MALLOC_CHECK_=3 a heap
    overflow aborts the process; with the layout optimization on it did (train_levers.py, "free(): invalid next
    size")."""
    script = textwrap.dedent(f"""
        import torch
        from yoloforge.config import TrainConfig
        from yoloforge.engine.trainer import Trainer
        common = dict(model="yolov6n", data={str(tiny_data)!r}, epochs=1, imgsz=96, batch=8, nbs=8, workers=0,
                      deterministic=True, amp="bf16", channels_last=True, plots=False, verbose=False,
                      tensorboard=False, val_interval=9, project={str(tmp_path)!r}, exist_ok=True)
        runs = {{c: Trainer(TrainConfig(**common, name=c or "eager", compile=c)) for c in ("", "inductor")}}
        for t in runs.values():
            t.train()
        a, b = runs[""].epoch_loss, runs["inductor"].epoch_loss
        print("LOSS", a.tolist(), b.tolist())
        assert torch.allclose(a, b, rtol=0.05), (a, b)
        assert all(torch.isfinite(p).all() for p in runs["inductor"].model.parameters())
    """)
    env = dict(os.environ, LD_PRELOAD="libc_malloc_debug.so.0", MALLOC_CHECK_="3")
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "LOSS" in r.stdout
