"""Scaled-YOLOv4 model-scaling analysis: paper formulas vs measured FLOPs (yoloforge.scaling)."""
import argparse

import pytest

from yoloforge import scaling as S
from yoloforge.families.registry import build_model
from yoloforge.families.yolov4.blocks import BottleneckCSP, BottleneckCSP2, TinyCSPBlock
from yoloforge.utils.flops import count_gflops

KINDS = ("res", "resx", "dark")


def test_table1_coefficients():
    # per layer, per pixel, in units of b^2 (arXiv:2011.08036 Table 1)
    assert S.res_layer(1, 1, 1, 1) == pytest.approx(17 / 16)
    assert S.resx_layer(1, 1, 1, 1) == pytest.approx(137 / 128)
    assert S.dark_layer(1, 1, 1, 1) == pytest.approx(5)
    assert S.csp_res_layer(1, 1, 1, 2) == pytest.approx(3 / 4 + 13 * 2 / 16)
    assert S.csp_resx_layer(1, 1, 1, 2) == pytest.approx(3 / 4 + 73 * 2 / 128)
    assert S.csp_dark_layer(1, 1, 1, 2) == pytest.approx(3 / 4 + 5)
    # asymptotic CSP savings: 23.5 %, 46.7 %, 50.0 % for Res, ResX, Dark
    big = 10 ** 6
    saving = {k: 1 - S.CSP[k](1, 1, 1, big) / S.PLAIN[k](1, 1, 1, big) for k in KINDS}
    assert [round(100 * saving[k], 1) for k in KINDS] == [23.5, 46.7, 50.0]
    # Table 3: Dense / OSA as printed (kernel=1) and with the 3x3 factor
    assert S.dense_layer(1, 1, 8, 2, 3) == 2 * 8 * 3 + 4 * 3
    assert S.osa_layer(1, 1, 8, 2, 3) == 8 * 2 + 4 * 2
    assert S.osa_layer(2, 3, 8, 2, 3, kernel=3) == 9 * 6 * (8 * 2 + 4 * 2)


@pytest.mark.parametrize("whbk", [(8, 8, 64, 1), (12, 10, 64, 3), (6, 6, 128, 2)])
@pytest.mark.parametrize("kind", KINDS)
def test_formula_equals_measured_blocks(kind, whbk):
    w, h, b, k = whbk
    plain = S.measure_macs(S.PlainLayer(kind, b, k), 1, b, h, w)
    csp = S.measure_macs(S.CSPLayer(kind, b, k), 1, b, h, w)
    assert plain == pytest.approx(S.PLAIN[kind](w, h, b, k), rel=1e-12)
    assert csp == pytest.approx(S.CSP[kind](w, h, b, k), rel=1e-12)


def test_repo_blocks_closed_forms():
    w, h = 10, 8
    for b, k in ((64, 1), (64, 3), (128, 2)):
        assert S.measure_macs(BottleneckCSP(b, b, k), 1, b, h, w) == S.bottleneck_csp_macs(w, h, b, k)
        assert S.measure_macs(BottleneckCSP2(b, b // 2, k), 1, b, h, w) == S.bottleneck_csp2_macs(w, h, b // 2, k)
    # YOLOv4-tiny block: 3x3 base conv + CSPOSANet PCB (g = b/2, k = 2)
    c1, b = 64, 128
    want = 9 * c1 * b * w * h + S.csposa_pcb_layer(w, h, b, b // 2, 2)
    assert S.measure_macs(TinyCSPBlock(c1, b), 1, c1, h, w) == want


def test_size_doubling_quadruples_flops():
    for f in (*S.PLAIN.values(), *S.CSP.values()):
        assert f(40, 40, 64, 3) == pytest.approx(4 * f(20, 20, 64, 3))
        assert f(20, 20, 128, 3) == pytest.approx(4 * f(20, 20, 64, 3))  # width^2
    for kind in KINDS:
        assert S.PLAIN[kind](20, 20, 64, 6) == pytest.approx(2 * S.PLAIN[kind](20, 20, 64, 3))  # depth^1
        blk = S.CSPLayer(kind, 64, 2)
        assert S.measure_macs(blk, 1, 64, 16, 16) == 4 * S.measure_macs(blk, 1, 64, 8, 8)
    m = build_model("yolov4-tiny")
    assert count_gflops(m, 512) == pytest.approx(4 * count_gflops(m, 256), rel=1e-9)


def test_csp_cheaper_for_paper_parameters():
    # CSPDarknet53 stage depths 1-2-8-8-4; YOLOv4-large 1-3-15-15-7
    for k in (1, 2, 3, 4, 7, 8, 15):
        assert S.csp_dark_layer(40, 40, 256, k) < S.dark_layer(40, 40, 256, k)
        # the repo's CSP stage (9/4 overhead) also beats k plain Darknet units
        assert S.bottleneck_csp_macs(40, 40, 256, k) < S.dark_layer(40, 40, 256, k)
    for kind in KINDS:
        for k in (4, 7, 8, 15):
            assert S.CSP[kind](40, 40, 256, k) < S.PLAIN[kind](40, 40, 256, k)
        assert (S.measure_macs(S.CSPLayer(kind, 64, 4), 1, 64, 8, 8)
                < S.measure_macs(S.PlainLayer(kind, 64, 4), 1, 64, 8, 8))


@pytest.fixture(scope="module")
def v4csp():
    model = build_model("yolov4-csp")
    return model, S.stage_table(model, 256)


@pytest.mark.parametrize("name,imgsz", [("yolov4-csp", 256), ("yolov4-tiny", 320), ("yolov7-tiny", 256)])
def test_stage_table_sums_to_total(name, imgsz, v4csp):
    model = v4csp[0] if name == "yolov4-csp" else build_model(name)
    t = v4csp[1] if name == "yolov4-csp" else S.stage_table(model, imgsz)
    total = count_gflops(model, imgsz)
    assert t["total"] == pytest.approx(total, rel=1e-9)
    assert sum(r["measured"] for r in t["rows"]) == pytest.approx(total, rel=0.01)
    for r in t["rows"]:
        if r["exact"] is not None:  # closed form of the implemented layout is exact
            assert r["measured"] == pytest.approx(r["exact"], rel=1e-9), r["name"]


def test_yolov4_csp_stages_recognized(v4csp):
    rows = {r["name"]: r for r in v4csp[1]["rows"]}
    assert rows["backbone.stages.0"]["kind"] == "Dark" and rows["backbone.stages.0"]["depth"] == 1
    assert [rows[f"backbone.stages.{i}"]["depth"] for i in range(1, 5)] == [2, 8, 8, 4]
    assert rows["backbone.stages.0"]["formula"] == pytest.approx(rows["backbone.stages.0"]["measured"])
    for i in range(1, 5):  # paper's 3/4 CSP term vs this code's 9/4: measured a little above the formula
        r = rows[f"backbone.stages.{i}"]
        assert r["kind"] == "CSP-Dark" and 1.0 < r["measured"] / r["formula"] < 1.2
    assert rows["neck.spp"]["formula"] is None and rows["neck.spp"]["measured"] > 0


def _cli(*argv):
    ap = argparse.ArgumentParser()
    S.add_parser(ap.add_subparsers(dest="verb"))
    return S.run(ap.parse_args(["scale", *argv]))


def test_cli(capsys):
    assert _cli() == 0
    out = capsys.readouterr().out
    assert "-23.5%" in out and "-46.7%" in out and "-50.0%" in out and "CSP-dark" in out
    assert _cli("--model", "yolov4-tiny", "--imgsz", "256") == 0
    out = capsys.readouterr().out
    assert "CSPOSA-PCB" in out and "total" in out
    assert _cli("--model", "yolov4-tiny", "--imgsz", "256,512") == 0
    assert "4.000" in capsys.readouterr().out
    assert _cli("--model", "yolov4-tiny", "--width", "0.5,1") == 2
