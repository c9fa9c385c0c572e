"""Mixed precision (--amp) and channels_last in the trainer: which dtype on which device, fp32 where it matters."""
import pytest
import torch

from yoloforge.cli import build_parser
from yoloforge.config import TrainConfig
from yoloforge.engine.trainer import Trainer, amp_dtype, to_float
from yoloforge.utils.checkpoint import load_state
from yoloforge.utils.cpu import native_bf16_cpu

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_dtype_by_device():
    assert amp_dtype("auto", CUDA) is torch.float16 and amp_dtype(True, CUDA) is torch.float16
    assert amp_dtype("bf16", CUDA) is torch.bfloat16
    assert amp_dtype("off", CUDA) is None and amp_dtype(False, CPU) is None
    assert amp_dtype("auto", CPU) is (torch.bfloat16 if native_bf16_cpu() else None)
    assert amp_dtype("bf16", CPU) is torch.bfloat16  # asked for: even emulated (with a warning)
    assert amp_dtype("auto", torch.device("meta")) is None
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        amp_dtype("fp16", CPU)


def test_amp_config_and_flags():
    assert TrainConfig(amp=True).amp == "auto" and TrainConfig(amp=False).amp == "off"  # older configs / states
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="half")
    p = build_parser()
    assert p.parse_args(["train", "--no-amp"]).amp == "off"
    assert p.parse_args(["train", "--amp", "bf16"]).amp == "bf16"
    assert p.parse_args(["train"]).amp == "auto"
    assert p.parse_args(["train", "--channels-last"]).channels_last is True
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--amp", "half"])


def test_to_float_nested():
    x = (torch.ones(2, dtype=torch.bfloat16), [torch.ones(1, dtype=torch.float16), torch.ones(1, dtype=torch.long)],
         {"a": torch.zeros(1, dtype=torch.bfloat16)}, None)
    y = to_float(x)
    assert y[0].dtype == torch.float32 and y[1][0].dtype == torch.float32 and y[1][1].dtype == torch.long
    assert y[2]["a"].dtype == torch.float32 and y[3] is None


def _float_leaves(o) -> set:
    if isinstance(o, torch.Tensor):
        return {o.dtype} if o.is_floating_point() else set()
    if isinstance(o, (list, tuple)):
        return set().union(*(_float_leaves(v) for v in o)) if o else set()
    return set()


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_training_runs_the_forward_in_bf16_and_the_rest_in_fp32(tiny_data, tmp_path, monkeypatch, channels_last):
    seen, loss_saw = {}, set()
    orig_setup = Trainer._setup

    def setup(self):
        orig_setup(self)
        conv = next(m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels >= 16)

        def conv_hook(mod, inp, out):
            seen.setdefault("conv_out", out.dtype)
            seen.setdefault("conv_in_cl", inp[0].is_contiguous(memory_format=torch.channels_last))

        conv.register_forward_hook(conv_hook)
        loss_fn = self.loss_fn

        class Spy:
            names = loss_fn.names

            def __call__(self, outputs, *a, **k):
                loss_saw.update(_float_leaves(outputs))
                loss_saw.add(("autocast", torch.is_autocast_enabled("cpu")))
                return loss_fn(outputs, *a, **k)

        self.loss_fn = Spy()

    monkeypatch.setattr(Trainer, "_setup", setup)
    cfg = TrainConfig(model="yolov6n", data=str(tiny_data), epochs=1, imgsz=64, batch=4, nbs=4, workers=0,
                      project=str(tmp_path), name="bf16", plots=False, verbose=False, close_mosaic=0, amp="bf16",
                      channels_last=channels_last, seed=1)
    Trainer(cfg).train()
    assert seen["conv_out"] is torch.bfloat16
    assert seen["conv_in_cl"] is channels_last
    assert loss_saw == {torch.float32, ("autocast", False)}  # the loss sees fp32 outputs, autocast off
    state = load_state(tmp_path / "bf16" / "weights" / "last.state.pt")
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)  # fp32 master weights
