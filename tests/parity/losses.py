"""yoloforge's side of the loss-parity cases (fixtures made by tests/parity/make_loss_fixtures.py).

``compare(case, overrides)`` runs yoloforge's loss on the raw outputs and targets of a fixture with the
hyper-parameters of the preset named after the official file (plus ``overrides``) and returns the
official and yoloforge totals, components and gradients. Used by tests/test_parity_losses.py and by
``python -m tests.parity.losses`` (prints the parity table).
"""
from __future__ import annotations

from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
CASES = ("yolov7-tiny_ota", "yolov7_ota", "yolov7-w6_auxota", "yolov6n_atss", "yolov6n_tal", "yolov6m_atss",
         "yolov6m_tal", "sy4-large_p5", "sy4-csp")
# the yoloforge preset (and model name for its variant values) named after each official file
PRESET = {"yolov7-tiny_ota": ("tiny", "yolov7-tiny"), "yolov7_ota": ("p5", "yolov7"),
          "yolov7-w6_auxota": ("p6", "yolov7-w6"), "yolov6n_atss": ("yolov6", "yolov6n"),
          "yolov6n_tal": ("yolov6", "yolov6n"), "yolov6m_atss": ("yolov6", "yolov6m"),
          "yolov6m_tal": ("yolov6", "yolov6m"), "sy4-large_p5": ("yolov4", "yolov4-p5"),
          "sy4-csp": ("yolov4", "yolov4-csp")}


def load(case: str) -> dict:
    return torch.load(FIXTURES / f"{case}.pt", weights_only=True)


def _rel_grad(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """max |ours - official| / max |official| over every raw output."""
    num = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    den = max(float(b.abs().max()) for b in theirs)
    return num / max(den, 1e-30)


def compare(case: str, overrides: dict | None = None) -> dict:
    from yoloforge.config import load_hyp

    f = load(case)
    preset, model = PRESET[case]
    hyp = load_hyp(preset, model, overrides=overrides)
    if f["family"] == "yolov6":
        from yoloforge.families.yolov6.loss import YOLOv6Loss

        loss_fn = YOLOv6Loss(f["nc"], f["strides"], reg_max=f["reg_max"], use_dfl=f["use_dfl"], iou_type=f["iou_type"],
                             warmup_epochs=hyp["atss_warmup_epochs"], hyp=hyp)
        cls_logits = f["cls_logits"].clone().requires_grad_(True)
        reg = f["reg"].clone().requires_grad_(True)
        feats = [torch.zeros(1, 1, h, w) for h, w in f["shapes"]]
        total, items = loss_fn((feats, cls_logits, reg), f["targets"], f["epoch"])
        total.backward()
        ours, theirs = [cls_logits.grad, reg.grad], [f["grad_cls"], f["grad_reg"]]
        comps = items
    else:
        raw = [p.clone().requires_grad_(True) for p in f["main"]]
        aux = [p.clone().requires_grad_(True) for p in f.get("aux", [])]
        if f["family"] == "yolov7":
            from yoloforge.families.yolov7.loss import YOLOv7Loss

            loss_fn = YOLOv7Loss(f["nc"], f["anchors"], f["strides"], hyp, aux=bool(aux))
            total, items = loss_fn({"main": raw, "aux": aux or None}, f["targets"])
            # the official components are the gained per-image terms (box, obj, cls)
        else:
            from yoloforge.families.yolov4.loss import YOLOv4Loss

            loss_fn = YOLOv4Loss(f["nc"], f["anchors"], f["strides"], hyp)
            total, items = loss_fn({"main": raw, "aux": None}, f["targets"])
        total.backward()
        ours = [p.grad for p in raw + aux]
        theirs = list(f["grad_main"]) + list(f.get("grad_aux", []))
        comps = items
    off_total, our_total = float(f["total"]), float(total.detach())
    return dict(case=case, official=off_total, ours=our_total, rel_total=abs(our_total - off_total) / abs(off_total),
                official_components=f["components"].tolist(), components=comps.tolist(),
                rel_components=max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(comps.tolist(),
                                                                                    f["components"].tolist())),
                rel_grad=_rel_grad(ours, theirs))


def table(overrides: dict | None = None) -> str:
    rows = ["| case | official total | yoloforge total | rel. diff total | max rel. diff component | grad diff |",
            "|---|---|---|---|---|---|"]
    for case in CASES:
        try:
            r = compare(case, overrides)
            rows.append(f"| {case} | {r['official']:.6g} | {r['ours']:.6g} | {r['rel_total']:.2e} | "
                        f"{r['rel_components']:.2e} | {r['rel_grad']:.2e} |")
        except Exception as e:  # the table reports, it does not stop
            rows.append(f"| {case} | error: {type(e).__name__}: {e} | | | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    over = dict(kv.split("=", 1) for kv in sys.argv[1:])
    from yoloforge.config import parse_value

    print(table({k: parse_value(v) for k, v in over.items()} or None))
