"""Which convolution shapes of a model does oneDNN get wrong in channels_last training? (the guard of models/base.py)

    python benchmarks/onednn_sweep.py [--models yolov6n,yolov7-tiny,...] [--imgsz 160] [--batch 4]

oneDNN 3.12 (torch 2.13 CPU) writes out of bounds in the weight gradient of some channels_last convolutions
(tests/test_onednn_guard.py). The damage shows only later, so this runs every distinct convolution of each model
(in/out channels, kernel, stride, padding, dilation, groups and the input size met at ``--imgsz``), bare, without
the guard: NHWC input and weight, forward + backward three times, one child process per shape under glibc's
checking allocator (``LD_PRELOAD=libc_malloc_debug.so.0 MALLOC_CHECK_=3``), which aborts at the first corrupt
free (often only when the child exits, so a child runs one shape). Prints one row per model: shapes run, shapes that crashed, and whether ``onednn_risky`` (the guard's
rule) flags every crashing shape and nothing else. This decides whether ``--channels-last`` can be a default.

Measured with torch 2.13.0 CPU on a 2-core AMD EPYC with AVX512 (160 px, 192 for P6, batch 4; 490 shapes, 12
models): yolov6n/t/s/m each have one crashing shape, the RepVGG stem's 1x1 branch (3->16, 3->32 ... k1 s2 at
160x160), and the guard flags exactly it; yolov6l (a CSP stem), yolov7-tiny, yolov7, yolov7x, yolov7-w6
(ReOrg + 3x3), yolov4-csp, yolov4-p5 and yolov4-tiny have none.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from _common import table

from yoloforge.models.base import onednn_risky
from yoloforge.families.registry import build_model

CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
c = json.loads(sys.argv[1])
conv = torch.nn.Conv2d(c["cin"], c["cout"], c["k"], c["s"], c["p"], c["d"], c["g"], bias=False)
conv = conv.to(memory_format=torch.channels_last)
x = torch.randn(c["b"], c["cin"], c["h"], c["w"]).to(memory_format=torch.channels_last).requires_grad_()
for _ in range(3):
    conv(x).sum().backward()
"""


def conv_shapes(name: str, imgsz: int, batch: int) -> list[dict]:
    m = build_model(name, nc=80).train()
    seen, hooks = {}, []

    def hook(conv, args):
        x = args[0]
        key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
               conv.groups, tuple(x.shape[-2:]))
        seen.setdefault(key, conv)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_pre_hook(hook))
    stride = int(m.stride.max())
    size = -(-imgsz // stride) * stride  # P6 models need multiples of 64
    with torch.no_grad():
        m(torch.zeros(1, 3, size, size))
    out = []
    for i, ((cin, cout, k, s, p, d, g, hw), conv) in enumerate(seen.items()):
        if not isinstance(p, tuple):  # padding="same" and the like: the module's own string
            continue
        out.append(dict(id=i, cin=cin, cout=cout, k=list(k), s=list(s), p=list(p), d=list(d), g=g, h=hw[0], w=hw[1],
                        b=batch, risky=onednn_risky(conv)))
    return out


def run_shapes(shapes: list[dict], jobs: int = 2) -> set[int]:
    """The ids of the shapes whose child process died (abort or SIGSEGV). One child per shape: the checking
    allocator often notices the damage only when the process frees everything at exit."""
    from concurrent.futures import ThreadPoolExecutor

    env = dict(os.environ, LD_PRELOAD="libc_malloc_debug.so.0", MALLOC_CHECK_="3")

    def died(c) -> bool:
        return subprocess.run([sys.executable, "-c", CHILD, json.dumps(c)], capture_output=True, env=env).returncode != 0
    with ThreadPoolExecutor(jobs) as ex:
        return {c["id"] for c, bad in zip(shapes, ex.map(died, shapes)) if bad}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov6n,yolov6s,yolov6m,yolov6l,yolov7-tiny,yolov7,yolov7x,yolov7-w6,"
                                        "yolov4-csp,yolov4-p5,yolov4-tiny")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    print(f"torch {torch.__version__}; {a.imgsz} px (rounded up to each model's stride), batch {a.batch}, NHWC "
          f"forward + backward x3 under MALLOC_CHECK_=3, one process per shape")
    rows = []
    for name in a.models.split(","):
        t = time.time()
        shapes = conv_shapes(name, a.imgsz, a.batch)
        crashed = run_shapes(shapes)
        flagged = {c["id"] for c in shapes if c["risky"]}
        desc = [f"{c['cin']}->{c['cout']} k{c['k'][0]} s{c['s'][0]} at {c['h']}x{c['w']}" for c in shapes
                if c["id"] in crashed]
        rows.append([name, len(shapes), len(crashed), "yes" if crashed <= flagged else "NO", len(flagged - crashed),
                     "; ".join(desc) or "-", f"{time.time() - t:.0f}"])
        print(f"{name}: {len(shapes)} shapes, crashed {sorted(crashed)}, flagged {sorted(flagged)}", flush=True)
    print(table(["model", "conv shapes", "crashed", "all crashes guarded", "guarded, no crash", "crashing shapes",
                 "s"], rows))


if __name__ == "__main__":
    main()
