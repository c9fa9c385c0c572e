"""Training-step levers on this CPU, each alone and together, side by side in one run (issue "Training speed").

    python benchmarks/train_levers.py [--model yolov6n] [--imgsz 320] [--batch 8] [--steps 6] [--rounds 2]
                                      [--levers base,channels_last,bf16,channels_last+bf16,compile,
                                                channels_last+compile,bf16+compile,all]

One training step = forward, the model's own loss, backward, SGD step, on fixed augmented batches of the
generated shapes data (the loader is not in the step; ``train_throughput.py`` measures it). Levers:
  channels_last: model and input in NHWC memory format;
  bf16: ``torch.autocast("cpu", torch.bfloat16)`` around the forward, the loss and its assigner in fp32 on
        float outputs (fp32 master weights); fast only on CPUs with native bf16 (AVX512-BF16 / AMX);
  compile: ``torch.compile`` of the model (the default inductor backend); its compile time is printed apart;
  all: the three together.
Rounds alternate the variants (base, lever, base, lever, ...) so machine noise hits them alike; the table gives
the median step time of every variant and its speed relative to ``base``.

Measured with torch 2.13.0+cpu, yolov6n 320 b8, 2 threads. On a 2-core AMD EPYC with AVX512-BF16: base 368 ms/step
(21.7 img/s), channels_last 1.25x, bf16 1.72x, both 2.08x. compile (as ``yoloforge train --compile``: layout
optimization off, see compile_for_training) on an empty inductor cache: fp32 1.09x (1.22x in another run) after
74 s of compiling, but slower than eager in every combination with channels_last or bf16 (0.82-0.92x). On the
AVX2-only EPYC of earlier runs: base 852 ms, bf16 8180 ms (0.10x, emulated: ``--amp auto`` keeps fp32 there);
channels_last crashed there before the oneDNN guard existed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import shapes_data, table

from yoloforge.config import load_hyp
from yoloforge.data.dataset import DetectionDataset
from yoloforge.data.formats import load_data_yaml
from yoloforge.data.loader import build_dataloader
from yoloforge.engine.optim import build_optimizer
from yoloforge.engine.trainer import compile_for_training, to_float
from yoloforge.families.registry import build_model
from yoloforge.utils.cpu import BF16_FLAGS, cpu_flags


class Variant:
    def __init__(self, name: str, model_name: str, nc: int, batches, channels_last: bool, bf16: bool,
                 compile_: bool):
        torch.manual_seed(0)
        self.name, self.batches, self.bf16, self.cl = name, batches, bf16, channels_last
        self.model = build_model(model_name, nc=nc).train()
        hyp = load_hyp(self.model.default_hyp, model_name)
        self.loss_fn = self.model.build_loss(hyp)
        self.opt = build_optimizer(self.model, hyp, hyp["weight_decay"])
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.fwd = self.model
        self.compile_s = 0.0
        if compile_:  # as `yoloforge train --compile`: inductor's layout optimization off (see compile_for_training)
            self.fwd = compile_for_training(self.model)
        self.k = 0
        self.times: list[float] = []
        if compile_:
            t = time.perf_counter()
            self.step()  # the first call compiles
            self.compile_s = time.perf_counter() - t
        self.step()  # warm-up

    def step(self) -> float:
        imgs, targets = self.batches[self.k % len(self.batches)]
        self.k += 1
        t = time.perf_counter()
        x = imgs.contiguous(memory_format=torch.channels_last) if self.cl else imgs
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            out = self.fwd(x)
        loss, _ = self.loss_fn(to_float(out), targets, 10)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov6n")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levers", default="base,bf16", help="of base,channels_last,bf16,channels_last+bf16,compile,all")
    a = ap.parse_args()
    data = load_data_yaml(shapes_data(n_train=64, imgsz=640))
    probe = build_model(a.model, nc=len(data.names))
    hyp = load_hyp(probe.default_hyp, a.model)
    ds = DetectionDataset(data.train, data.names, imgsz=a.imgsz, augment=True, hyp=hyp, verbose=False)
    loader = build_dataloader(ds, a.batch, 0, shuffle=True, seed=0)
    batches = []
    for imgs, targets, _ in loader:
        batches.append((imgs.float() / 255, targets))
        if len(batches) == 4:
            break
    spec = {"base": (False, False, False), "channels_last": (True, False, False), "bf16": (False, True, False),
            "channels_last+bf16": (True, True, False), "compile": (False, False, True),
            "channels_last+compile": (True, False, True), "bf16+compile": (False, True, True), "all": (True, True, True)}
    variants = []
    for name in a.levers.split(","):
        cl, bf, co = spec[name]
        try:
            variants.append(Variant(name, a.model, len(data.names), batches, cl, bf, co))
        except Exception as e:  # noqa: BLE001 - a lever this machine cannot run (e.g. no C compiler for compile)
            print(f"{name}: not measured ({e.__class__.__name__}: {str(e).splitlines()[0][:120]})")
    for _ in range(a.rounds):
        for v in variants:
            for _ in range(a.steps):
                v.times.append(v.step())
    flags = cpu_flags()
    native = sorted(flags & BF16_FLAGS) or ["none"]
    print(f"{a.model} at {a.imgsz}, batch {a.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"native bf16 on this CPU: {', '.join(native)}; {a.rounds} rounds x {a.steps} steps per variant")
    base = next((statistics.median(v.times) for v in variants if v.name == "base"), None)
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        rows.append([v.name, 1e3 * med, a.batch / med, (base / med) if base else "", f"{v.compile_s:.0f} s" if v.compile_s else ""])
    print(table(["lever", "step ms", "img/s", "x base", "compile time"], rows))


if __name__ == "__main__":
    main()
