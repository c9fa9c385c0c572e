"""The one-process test-suite SIGSEGV: OpenVINO's CPU plugin and the alternate signal stack.

OpenVINO 2026.4's CPU plugin (``SigAltStackSetup`` in the intel_cpu plugin) mmaps an alternate signal stack for
the thread that creates it and, when released, restores the one it found only if its own is still current, then
unmaps its own. Two ``ov.Core`` objects released in creation order leave the thread's alternate stack pointing
at unmapped memory. CPython installs every Python-level signal handler with SA_ONSTACK, so the next handled
signal (Ctrl-C, SIGTERM, or the SIGCHLD torch's DataLoader listens for) makes the kernel fail to build the
handler's frame and kill the process with SIGSEGV, in whatever the main thread was doing (``poll`` of
``subprocess.run`` in the test suite, so faulthandler printed nothing). Reproducer (no yoloforge)::

    import gc, signal, openvino as ov
    signal.signal(signal.SIGUSR1, lambda *a: None)
    a = ov.Core(); a.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    b = ov.Core(); b.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    del a; gc.collect(); del b; gc.collect()
    signal.raise_signal(signal.SIGUSR1)      # SIGSEGV (rc 139); releasing b first is fine

yoloforge opens one Core per process (``yoloforge.export.openvino.openvino_core``) and never releases it.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")

BARE = """
import gc, signal, openvino as ov
signal.signal(signal.SIGUSR1, lambda *a: print("handler ran", flush=True))
a = ov.Core(); a.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
b = ov.Core(); b.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
del a; gc.collect(); del b; gc.collect()
signal.raise_signal(signal.SIGUSR1)
print("survived", flush=True)
"""

OURS = """
import gc, signal, sys
from pathlib import Path
from yoloforge.export.openvino import export_openvino
from yoloforge.export.runtime import OpenVINOBackend, native_bf16
from yoloforge.families.registry import build_model
signal.signal(signal.SIGUSR1, lambda *a: print("handler ran", flush=True))
ir = export_openvino(build_model("yolov6n", nc=2).eval(), Path(sys.argv[1]) / "ir", imgsz=64)
native_bf16()
a = OpenVINOBackend(ir)
native_bf16()
b = OpenVINOBackend(ir, precision="auto")
del a; gc.collect(); del b; gc.collect()   # released in creation order: the pattern that breaks bare Cores
signal.raise_signal(signal.SIGUSR1)
print("survived", flush=True)
"""


def test_backends_released_in_creation_order_keep_signals_working(tmp_path):
    # cwd: where a core dump of the crashing reproducer would land (never the checkout)
    bare = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    print(f"bare OpenVINO reproducer: rc {bare.returncode}" + (" (SIGSEGV: the plugin bug is present)"
                                                              if bare.returncode == -11 else ""))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(OURS), str(tmp_path)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.split() == ["handler", "ran", "survived"]


def test_one_core_per_process():
    from yoloforge.export.openvino import openvino_core

    assert openvino_core() is openvino_core()
