"""Make the loss-parity fixtures of tests/test_parity_losses.py by running the OFFICIAL loss code.

Not part of the test suite and not importable without the official repositories. Run it in a
separate venv (torch 2.14.1 + torchvision 0.29.1) with a checkout of each official repository:

    python tests/parity/make_loss_fixtures.py --family yolov7 --repo path/to/WongKinYiu/yolov7
    python tests/parity/make_loss_fixtures.py --family yolov6 --repo path/to/meituan/YOLOv6@0.2.0
    python tests/parity/make_loss_fixtures.py --family yolov6-distill --repo path/to/meituan/YOLOv6@0.2.0
    python tests/parity/make_loss_fixtures.py --family sy4-large --repo path/to/ScaledYOLOv4@yolov4-large
    python tests/parity/make_loss_fixtures.py --family sy4-csp --repo path/to/ScaledYOLOv4@yolov4-csp

(one process per family: the repositories share top-level package names such as ``utils``). Each case
writes ``tests/fixtures/parity/<case>.pt``: the raw head outputs, the targets (yoloforge's
``[batch, cls, x1, y1, x2, y2]`` pixels), the official total, its components and the gradient of the
total with respect to every raw output. Only these tensors are committed, never the official code.

The batch (4 images, square, a power-of-two size so that normalizing coordinates is exact):
image 0 crowded (six boxes whose centres share a few cells: duplicate candidates), image 1 tiny and
mid-size boxes, image 2 boxes on the borders and corners, image 3 no target.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def batch_targets(imgsz: int, nc: int) -> torch.Tensor:
    """(T, 6) [batch, cls, x1, y1, x2, y2] pixels on a quarter-pixel grid."""
    s = imgsz / 256.0
    rows = [
        # image 0: crowded, centres within a few stride-8 / stride-16 cells
        (0, 0, 60, 60, 100, 92), (0, 1, 64, 58, 96, 100), (0, 2, 70, 66, 90, 86), (0, 3 % nc, 40, 40, 124, 120),
        (0, 1, 66.25, 62.5, 78.75, 77.5), (0, 0, 52, 70, 110, 84),
        # image 1: tiny boxes and mid-size ones
        (1, 2, 30, 30, 33, 34.5), (1, 1, 150.5, 40.25, 154.75, 42.5), (1, 0, 200, 200, 203, 206),
        (1, 3 % nc, 100, 120, 164, 200), (1, 2, 10, 180, 58, 236),
        # image 2: on the borders and in the corners
        (2, 0, 0, 0, 24, 30), (2, 1, 230, 0, 256, 40), (2, 2, 0, 220, 50, 256), (2, 3 % nc, 210, 200, 256, 256),
        (2, 0, 0, 96, 256, 160), (2, 1, 120, 0, 136, 256),
        # image 3: no target
    ]
    t = torch.tensor(rows, dtype=torch.float64)
    t[:, 2:] *= s
    return t.float()


def to_normalized_xywh(t: torch.Tensor, imgsz: int) -> torch.Tensor:
    xy = (t[:, 2:4] + t[:, 4:6]) / 2 / imgsz
    wh = (t[:, 4:6] - t[:, 2:4]) / imgsz
    return torch.cat((t[:, :2], xy, wh), 1)


def anchor_raw(shapes, na: int, no: int, seed: int, bs: int = 4):
    """Raw anchor-head outputs (B, na, H, W, no): offsets near the cell, sizes near the anchor."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in shapes:
        p = torch.randn(bs, na, h, w, no, generator=g) * 0.6
        p[..., 4] -= 2.0  # objectness mostly low
        out.append(p)
    return out


def save(case: str, **items) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(items, OUT / f"{case}.pt")
    tot = items["total"]
    print(f"{case}: total {float(tot):.6g} components {[round(float(v), 6) for v in items['components']]}")


# ---------------------------------------------------------------------------------------------- yolov7
YOLOV7_CASES = {
    # case: (hyp file, anchors, strides, aux)
    "yolov7-tiny_ota": ("hyp.scratch.tiny.yaml", [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                                                  [116, 90, 156, 198, 373, 326]], [8, 16, 32], False),
    "yolov7_ota": ("hyp.scratch.p5.yaml", [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146],
                                           [142, 110, 192, 243, 459, 401]], [8, 16, 32], False),
    "yolov7-w6_auxota": ("hyp.scratch.p6.yaml", [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137],
                                                 [140, 301, 303, 264, 238, 542], [436, 615, 739, 380, 925, 792]],
                         [8, 16, 32, 64], True),
}


def run_yolov7(repo: Path, imgsz: int = 128, nc: int = 4) -> None:
    import yaml
    from utils.loss import ComputeLossAuxOTA, ComputeLossOTA

    for case, (hyp_file, anchors, strides, aux) in YOLOV7_CASES.items():
        hyp = yaml.safe_load((repo / "data" / hyp_file).read_text())
        hyp_raw = dict(hyp)
        nl = len(strides)
        hyp["box"] *= 3.0 / nl  # train.py's run-time scaling
        hyp["cls"] *= nc / 80.0 * 3.0 / nl
        hyp["obj"] *= (imgsz / 640) ** 2 * 3.0 / nl
        det = nn.Module()
        det.na, det.nc, det.nl = 3, nc, nl
        det.stride = torch.tensor(strides, dtype=torch.float32)
        det.anchors = torch.tensor(anchors, dtype=torch.float32).view(nl, 3, 2) / det.stride.view(-1, 1, 1)
        model = nn.Module()
        model.dummy = nn.Parameter(torch.zeros(1))
        model.model = [det]
        model.hyp, model.gr, model.nc = hyp, 1.0, nc
        loss_fn = (ComputeLossAuxOTA if aux else ComputeLossOTA)(model)
        shapes = [(imgsz // s, imgsz // s) for s in strides]
        for epoch_case, seed in (("", 0),):
            main = anchor_raw(shapes, 3, 5 + nc, seed=1 + len(case))
            auxo = anchor_raw(shapes, 3, 5 + nc, seed=100 + len(case)) if aux else []
            raw = [p.clone().requires_grad_(True) for p in main + auxo]
            targets = batch_targets(imgsz, nc)
            imgs = torch.zeros(4, 3, imgsz, imgsz)
            total, items = loss_fn(raw, to_normalized_xywh(targets, imgsz), imgs)
            total.backward()
            save(case + epoch_case, family="yolov7", main=[p.detach() for p in main], aux=[p.detach() for p in auxo],
                 targets=targets, imgsz=imgsz, nc=nc, anchors=torch.tensor(anchors, dtype=torch.float32),
                 strides=strides, hyp=hyp_raw, total=total.detach().reshape(()),
                 components=items[:3].detach(), grad_main=[p.grad[:] for p in raw[:nl]],
                 grad_aux=[p.grad[:] for p in raw[nl:]], source=f"WongKinYiu/yolov7 utils/loss.py "
                 f"{'ComputeLossAuxOTA' if aux else 'ComputeLossOTA'}, data/{hyp_file}")


# ---------------------------------------------------------------------------------------------- yolov6
YOLOV6_CASES = {
    # case: (iou_type, use_dfl, reg_max, epoch)  -- yolov6n: SIoU, no DFL; yolov6m: GIoU + DFL 16
    "yolov6n_atss": ("siou", False, 0, 0),
    "yolov6n_tal": ("siou", False, 0, 10),
    "yolov6m_atss": ("giou", True, 16, 0),
    "yolov6m_tal": ("giou", True, 16, 10),
}


def yolov6_outputs(seed: int, imgsz: int, strides, nc: int, use_dfl: bool, reg_max: int):
    """(generator, level shapes, cls logits, reg) of a 4-image batch: raw YOLOv6 head outputs, gradients on."""
    shapes = [(imgsz // s, imgsz // s) for s in strides]
    n = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(seed)
    cls_logits = (torch.randn(4, n, nc, generator=g) * 1.5 - 2.0).requires_grad_(True)
    if use_dfl:
        reg = (torch.randn(4, n, 4 * (reg_max + 1), generator=g) * 1.5).requires_grad_(True)
    else:  # ltrb distances in stride units, mostly positive
        reg = (torch.rand(4, n, 4, generator=g) * 4.0 + 0.2).requires_grad_(True)
    return g, shapes, cls_logits, reg


def run_yolov6(repo: Path, imgsz: int = 128, nc: int = 4) -> None:
    import yolov6.models.loss as official

    for case, (iou_type, use_dfl, reg_max, epoch) in YOLOV6_CASES.items():
        strides = [8, 16, 32]
        # loss.py calls .cuda() on its sub-modules; on CPU they are plain modules
        with _no_cuda():
            loss_fn = official.ComputeLoss(fpn_strides=strides, num_classes=nc, ori_img_size=imgsz, warmup_epoch=4,
                                           use_dfl=use_dfl, reg_max=reg_max, iou_type=iou_type)
        g, shapes, cls_logits, reg = yolov6_outputs(7 + len(case), imgsz, strides, nc, use_dfl, reg_max)
        feats = [torch.zeros(4, 8, h, w) for h, w in shapes]
        targets = batch_targets(imgsz, nc)
        total, items = loss_fn((feats, cls_logits.sigmoid(), reg), to_normalized_xywh(targets, imgsz), epoch)
        total.backward()
        save(case, family="yolov6", cls_logits=cls_logits.detach(), reg=reg.detach(), shapes=shapes, targets=targets,
             imgsz=imgsz, nc=nc, strides=strides, iou_type=iou_type, use_dfl=use_dfl, reg_max=reg_max, epoch=epoch,
             total=total.detach().reshape(()), components=items.detach(), grad_cls=cls_logits.grad,
             grad_reg=reg.grad, source="meituan/YOLOv6@0.2.0 yolov6/models/loss.py ComputeLoss")


YOLOV6_DISTILL_CASES = {
    # case: (iou_type, use_dfl, reg_max, epoch, max_epoch, temperature, distill_feat, distill_weight)
    "yolov6n_distill_tal": ("siou", False, 0, 10, 40, 20, False, {"class": 1.0, "dfl": 1.0}),
    "yolov6m_distill_atss": ("giou", True, 16, 0, 40, 20, False, {"class": 1.0, "dfl": 1.0}),
    "yolov6m_distill_tal_cwd": ("giou", True, 16, 13, 40, 5, True, {"class": 2.0, "dfl": 1.0}),
}


def run_yolov6_distill(repo: Path, imgsz: int = 128, nc: int = 4) -> None:
    """The official distillation loss on a student's and a teacher's raw outputs (teacher = the student's
    outputs plus noise, so that the KL terms are not 0) and random neck maps for the channel-wise term."""
    import yolov6.models.loss_distill as official

    for case, (iou_type, use_dfl, reg_max, epoch, max_epoch, temp, feat, dw) in YOLOV6_DISTILL_CASES.items():
        strides = [8, 16, 32]
        with _no_cuda():
            loss_fn = official.ComputeLoss(fpn_strides=strides, num_classes=nc, ori_img_size=imgsz, warmup_epoch=4,
                                           use_dfl=use_dfl, reg_max=reg_max, iou_type=iou_type, distill_feat=feat,
                                           distill_weight=dw)
        g, shapes, cls_logits, reg = yolov6_outputs(11 + len(case), imgsz, strides, nc, use_dfl, reg_max)
        if use_dfl:
            t_reg = reg.detach() + torch.randn(reg.shape, generator=g) * 2.0
        else:
            t_reg = reg.detach() * (1 + 0.2 * torch.rand(reg.shape, generator=g))
        t_cls = cls_logits.detach() + torch.randn(cls_logits.shape, generator=g) * 2.0
        s_maps = [(torch.randn(4, 8, h, w, generator=g)).requires_grad_(True) for h, w in shapes]
        t_maps = [m.detach() + torch.randn(m.shape, generator=g) for m in s_maps]
        targets = batch_targets(imgsz, nc)
        total, items = loss_fn((s_maps, cls_logits.sigmoid(), reg), (t_maps, t_cls.sigmoid(), t_reg), s_maps, t_maps,
                               to_normalized_xywh(targets, imgsz), epoch, max_epoch, temp)
        total.backward()
        save(case, family="yolov6-distill", cls_logits=cls_logits.detach(), reg=reg.detach(), t_cls=t_cls,
             t_reg=t_reg, s_maps=[m.detach() for m in s_maps], t_maps=t_maps, shapes=shapes, targets=targets,
             imgsz=imgsz, nc=nc, strides=strides, iou_type=iou_type, use_dfl=use_dfl, reg_max=reg_max, epoch=epoch,
             max_epoch=max_epoch, temperature=temp, distill_feat=feat, distill_weight=dw,
             total=total.detach().reshape(()), components=items.detach(), grad_cls=cls_logits.grad,
             grad_reg=reg.grad, grad_maps=[m.grad if m.grad is not None else torch.zeros_like(m) for m in s_maps],
             source="meituan/YOLOv6@0.2.0 yolov6/models/loss_distill.py ComputeLoss")


class _no_cuda:
    def __enter__(self):
        self.saved = nn.Module.cuda
        nn.Module.cuda = lambda m, *a, **k: m

    def __exit__(self, *exc):
        nn.Module.cuda = self.saved


# ---------------------------------------------------------------------------------------- ScaledYOLOv4
SY4_CASES = {
    # yolov4-large branch (models/yolov4-p5.yaml anchors, data/hyp.scratch.yaml)
    "sy4-large_p5": ("large", [[13, 17, 31, 25, 24, 51, 61, 45], [48, 102, 119, 96, 97, 189, 217, 184],
                               [171, 384, 324, 451, 616, 618, 800, 800]], [8, 16, 32]),
    # yolov4-csp branch (models/yolov4-csp.cfg anchors, data/hyp.scratch.yaml)
    "sy4-csp": ("csp", [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]],
                [8, 16, 32]),
}


def run_sy4(repo: Path, branch: str, imgsz: int = 128, nc: int = 4) -> None:
    import yaml

    for case, (kind, anchors, strides) in SY4_CASES.items():
        if kind != branch:
            continue
        hyp = yaml.safe_load((repo / "data" / "hyp.scratch.yaml").read_text())
        hyp_raw = dict(hyp)
        hyp["cls"] *= nc / 80.0  # train.py
        nl = len(strides)
        na = len(anchors[0]) // 2
        stride_t = torch.tensor(strides, dtype=torch.float32)
        grid_anchors = torch.tensor(anchors, dtype=torch.float32).view(nl, na, 2) / stride_t.view(-1, 1, 1)
        if kind == "large":
            from utils.general import compute_loss

            det = SimpleNamespace(na=na, nl=nl, anchors=grid_anchors, stride=stride_t)
            model = SimpleNamespace(model=[det], hyp=hyp, gr=1.0, nc=nc)
        else:
            from utils.loss import compute_loss

            layers = [SimpleNamespace(anchor_vec=grid_anchors[i]) for i in range(nl)]
            model = SimpleNamespace(yolo_layers=list(range(nl)), module_list=layers, hyp=hyp, gr=1.0, nc=nc)
        shapes = [(imgsz // s, imgsz // s) for s in strides]
        main = anchor_raw(shapes, na, 5 + nc, seed=31 + len(case))
        raw = [p.clone().requires_grad_(True) for p in main]
        targets = batch_targets(imgsz, nc)
        total, items = compute_loss(raw, to_normalized_xywh(targets, imgsz), model)
        total.backward()
        save(case, family="sy4", branch=kind, main=main, targets=targets, imgsz=imgsz, nc=nc,
             anchors=torch.tensor(anchors, dtype=torch.float32), strides=strides, hyp=hyp_raw,
             total=total.detach().reshape(()), components=items[:3].detach(), grad_main=[p.grad for p in raw],
             source=f"WongKinYiu/ScaledYOLOv4@yolov4-{kind} "
                    f"{'utils/general.py' if kind == 'large' else 'utils/loss.py'} compute_loss, data/hyp.scratch.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=["yolov7", "yolov6", "yolov6-distill", "sy4-large",
                                                               "sy4-csp"])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of the official repository")
    args = ap.parse_args()
    repo = args.repo.resolve()
    sys.path[:0] = [str(repo)]  # the real torchvision of this venv, no stubs needed
    os.chdir(repo)
    torch.manual_seed(0)
    if args.family == "yolov7":
        run_yolov7(repo)
    elif args.family == "yolov6":
        run_yolov6(repo)
    elif args.family == "yolov6-distill":
        run_yolov6_distill(repo)
    else:
        run_sy4(repo, args.family.split("-")[1])


if __name__ == "__main__":
    main()
