"""``yoloforge benchmark``: format parsing, statistics and the markdown table (fast, no real timing)."""
from __future__ import annotations

import argparse

import pytest

from yoloforge import bench


def test_parse_formats_aliases_and_order():
    assert bench.parse_formats("torch, ORT,ov,engine,onnx") == ["torch", "onnx", "openvino", "tensorrt"]
    with pytest.raises(ValueError, match="unknown format"):
        bench.parse_formats("torch,tflite")
    with pytest.raises(ValueError, match="empty"):
        bench.parse_formats(" , ")


def test_stats_percentiles_and_throughput():
    ts = [0.010, 0.020, 0.030, 0.040, 0.100]  # seconds per call
    p50, p90, ips = bench.stats(ts, batch=8)
    assert p50 == pytest.approx(30.0)
    assert p90 == pytest.approx(76.0)  # numpy linear interpolation between 40 and 100 ms
    assert ips == pytest.approx(8 / 0.030)
    assert all(v != v for v in bench.stats([], 1))  # all NaN when nothing ran


def test_format_table_rows_and_skips():
    rows = [bench.Row("torch (fused)", "torch 2.x cpu", "2", times={1: [0.1, 0.1, 0.3], 4: [0.2, 0.2]},
                      map=0.1234, map50=0.25),
            bench.Row("onnx", "onnxruntime", "2", times={1: [0.05], 4: [0.1]}, note="fp32 | dynamic"),
            bench.Row("tensorrt", skipped="RuntimeError: needs a CUDA GPU")]
    text = bench.format_table(rows, batch=4)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[:1] + lines[2:])
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:6] == ["format", "runtime", "threads", "b1 p50 ms", "b1 p90 ms", "b1 img/s"]
    assert head[6:9] == ["b4 p50 ms", "b4 p90 ms", "b4 img/s"]
    n = len(head)
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(c) == n for c in cells)  # a '|' inside a note must not add a column
    torch_row = dict(zip(head, cells[0]))
    assert torch_row["b1 p50 ms"] == "100.0" and torch_row["b1 img/s"] == "10.0"
    assert torch_row["b4 img/s"] == "20.0" and torch_row["mAP50-95"] == "0.123" and torch_row["mAP50"] == "0.250"
    assert dict(zip(head, cells[1]))["mAP50"] == "-"
    trt = dict(zip(head, cells[2]))
    assert trt["b1 p50 ms"] == "-" and trt["note"].startswith("skipped: RuntimeError: needs a CUDA GPU")


def test_measure_round_robin_excludes_warmup():
    calls = []
    fns = {"a": lambda x: calls.append(("a", x.shape[0])), "b": lambda x: calls.append(("b", x.shape[0]))}
    out = bench.measure(fns, [1, 2], imgsz=32, runs=3, warmup=2)
    assert {k: {b: len(v) for b, v in d.items()} for k, d in out.items()} == {"a": {1: 3, 2: 3}, "b": {1: 3, 2: 3}}
    assert len(calls) == 2 * 2 * 5
    assert [c[0] for c in calls[:4]] == ["a", "b", "b", "a"]  # the start rotates each round


def test_run_parser_and_skipped_rows(tmp_path, monkeypatch, capsys):
    ap = argparse.ArgumentParser()
    bench.add_parser(ap.add_subparsers(dest="verb"))
    a = ap.parse_args(["benchmark", "--imgsz", "64", "--runs", "1", "--warmup", "0", "--batch", "2",
                       "--formats", "torch,tensorrt"])
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda prefix="": str(tmp_path))
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "| torch (fused) |" in out
    assert "| tensorrt |" in out and "skipped: RuntimeError: needs a CUDA GPU" in out
    with pytest.raises(ValueError, match="multiple of 32"):
        bench.run(ap.parse_args(["benchmark", "--imgsz", "100"]))
