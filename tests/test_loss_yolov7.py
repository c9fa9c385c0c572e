"""YOLOv7 loss: gains, a hand-computed value, empty images, batch scaling, aux head, fallback, P6."""
import math

from pathlib import Path

import pytest
import torch

from yoloforge.config import HYP_PRESETS
from yoloforge.families.yolov7.loss import YOLOv7Loss, level_balance, scaled_gains

P5 = HYP_PRESETS["p5"]
ANCHORS = torch.tensor([[[12, 16], [19, 36], [40, 28]], [[36, 75], [76, 55], [72, 146]],
                        [[142, 110], [192, 243], [459, 401]]], dtype=torch.float32)
STRIDES = [8, 16, 32]
TARGETS = torch.tensor([[0, 1, 10, 20, 50, 60], [0, 2, 60, 60, 120, 100], [1, 0, 5, 5, 30, 40],
                        [1, 1, 64, 30, 80, 50]])


def _preds(bs=2, size=128, nc=3, seed=0, strides=STRIDES, grad=True):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, size // s, size // s, 5 + nc, generator=g) * 0.5).requires_grad_(grad)
            for s in strides]


def test_gains_and_balance():
    g = scaled_gains(P5, 3, 80, 640 * 640)
    assert g == pytest.approx(dict(box=0.05, cls=0.3, obj=0.7))
    g = scaled_gains(P5, 4, 20, 1280 * 1280)
    assert g == pytest.approx(dict(box=0.05 * 0.75, cls=0.3 * 0.25 * 0.75, obj=0.7 * 4 * 0.75))
    assert level_balance(3) == [4.0, 1.0, 0.4]
    assert level_balance(4) == [4.0, 1.0, 0.25, 0.06]
    assert level_balance(5) == [4.0, 1.0, 0.25, 0.06, 0.02]


@pytest.mark.parametrize("ota", [1, 0])
def test_hand_computed_value(ota):
    # 64x64 input: grids 8, 4, 2. Only level 0 anchor 0 (16x16) passes the ratio test for a 16x16 gt
    # centred on cell (gi 3, gj 4); all-zero logits decode exactly to that box (CIoU 1 -> box loss 0),
    # and every BCE on a zero logit is log 2 whatever the target.
    anchors = torch.tensor([[[16, 16], [80, 80], [200, 200]], [[90, 90], [100, 100], [120, 120]],
                            [[200, 200], [300, 300], [400, 400]]], dtype=torch.float32)
    nc, bs = 2, 2
    preds = [torch.zeros(bs, 3, n, n, 5 + nc, requires_grad=True) for n in (8, 4, 2)]
    t = torch.tensor([[0, 0, 20, 28, 36, 44]], dtype=torch.float32)
    loss = YOLOv7Loss(nc, anchors, STRIDES, dict(P5, loss_ota=ota))
    total, items = loss(dict(main=preds, aux=None), t, 0)
    g = scaled_gains(P5, 3, nc, 64 * 64)
    ln2 = math.log(2)
    expect = torch.tensor([0.0, g["obj"] * 5.4 * ln2, g["cls"] * ln2])
    assert torch.allclose(items, expect, atol=1e-6)
    assert total.item() == pytest.approx(bs * expect.sum().item(), rel=1e-6)
    total.backward()
    # the positive's objectness target is its IoU (1.0): gradient sigmoid(0) - 1 there
    gobj = preds[0].grad[0, 0, 4, 3, 4]
    assert gobj.item() == pytest.approx(bs * g["obj"] * 4.0 * (0.5 - 1.0) / (bs * 3 * 8 * 8), rel=1e-5)


def test_empty_targets_finite():
    loss = YOLOv7Loss(3, ANCHORS, STRIDES, P5)
    preds = _preds()
    total, items = loss(dict(main=preds, aux=None), torch.zeros(0, 6), 0)
    assert torch.isfinite(total) and items[0] == 0 and items[2] == 0 and items[1] > 0
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)
    # one image with targets, one without
    total, _ = loss(dict(main=_preds(), aux=None), TARGETS[:2], 0)
    assert torch.isfinite(total)
    aux_loss = YOLOv7Loss(3, ANCHORS, STRIDES, P5, aux=True)
    total, items = aux_loss(dict(main=_preds(), aux=_preds(seed=1)), torch.zeros(0, 6), 0)
    assert torch.isfinite(total) and items[0] == 0


def test_multiplied_by_batch_size():
    loss = YOLOv7Loss(3, ANCHORS, STRIDES, P5)
    preds = _preds(grad=False)
    total, items = loss(preds, TARGETS, 0)
    twice = [torch.cat((p, p)) for p in preds]
    t2 = torch.cat((TARGETS, TARGETS + torch.tensor([2.0, 0, 0, 0, 0, 0])))
    total2, items2 = loss(twice, t2, 0)
    assert torch.allclose(items, items2, rtol=1e-5)  # per-image means unchanged
    assert total2.item() == pytest.approx(2 * total.item(), rel=1e-5)
    assert total.item() == pytest.approx(2 * items.sum().item(), rel=1e-6)


def test_loss_decreases_when_optimizing_predictions():
    loss = YOLOv7Loss(3, ANCHORS, STRIDES, P5)
    preds = _preds()
    opt = torch.optim.Adam(preds, lr=0.1)
    first = None
    for _ in range(25):
        total, items = loss(dict(main=preds, aux=None), TARGETS, 0)
        first = (total.item(), items) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.4 * first[0]
    assert (items < 0.6 * first[1]).all()  # box, obj and cls all went down


def test_aux_branch_adds_weighted_coarse_loss():
    main, aux = _preds(seed=0), _preds(seed=1)
    # with the aux head the lead head's k sums the top 20 IoUs (official ComputeLossAuxOTA): the same here
    base_loss = YOLOv7Loss(3, ANCHORS, STRIDES, dict(P5, lead_topk=20))
    base, base_items = base_loss(dict(main=main, aux=None), TARGETS, 0)
    base.backward()
    main_grad = [p.grad.clone() for p in main]
    for p in main:
        p.grad = None
    diffs = {}
    for w in (0.25, 0.5):
        lw = YOLOv7Loss(3, ANCHORS, STRIDES, dict(P5, aux_weight=w), aux=True)
        total, items = lw(dict(main=main, aux=aux), TARGETS, 0)
        diffs[w] = total.item() - base.item()
    assert diffs[0.25] > 0 and diffs[0.5] == pytest.approx(2 * diffs[0.25], rel=1e-5)
    # the difference is 0.25 x the aux head's own loss with the coarse, lead-guided assignment
    lw = YOLOv7Loss(3, ANCHORS, STRIDES, P5, aux=True)
    coarse = lw.assigner(main, TARGETS, coarse=True)
    box_s, obj_s, cls_s, n_pos, n_cells = lw.head_sums(aux, coarse, TARGETS)
    g = scaled_gains(P5, 3, 3, 128 * 128)
    aux_items = torch.stack((g["box"] * (box_s / n_pos.clamp(min=1)).sum(),
                             g["obj"] * (torch.tensor([4.0, 1.0, 0.4]) * obj_s / n_cells).sum(),
                             g["cls"] * (cls_s / (3 * n_pos).clamp(min=1)).sum()))
    assert diffs[0.25] == pytest.approx(2 * 0.25 * aux_items.sum().item(), rel=1e-4)
    # the aux branch sends no gradient to the lead head (the assignment is not differentiated)
    total, _ = lw(dict(main=main, aux=aux), TARGETS, 0)
    total.backward()
    assert all(torch.allclose(a.grad, b) for a, b in zip(main, main_grad))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aux)


def test_aux_flag_must_match_outputs():
    with pytest.raises(ValueError, match="aux"):
        YOLOv7Loss(3, ANCHORS, STRIDES, P5)(dict(main=_preds(), aux=_preds()), TARGETS, 0)
    with pytest.raises(ValueError, match="aux"):
        YOLOv7Loss(3, ANCHORS, STRIDES, P5, aux=True)(dict(main=_preds(), aux=None), TARGETS, 0)


def test_plain_assignment_fallback_differs_from_ota():
    preds = _preds(grad=False)
    ota, _ = YOLOv7Loss(3, ANCHORS, STRIDES, P5)(preds, TARGETS, 0)
    plain_loss = YOLOv7Loss(3, ANCHORS, STRIDES, dict(P5, loss_ota=0))
    plain, items = plain_loss(preds, TARGETS, 0)
    assert torch.isfinite(plain) and not torch.isclose(plain, ota)
    pos = plain_loss.assigner(preds, TARGETS, ota=False)
    assert pos.n == plain_loss.assigner.candidates(preds, TARGETS).n


def test_p6_four_levels_with_aux():
    anchors6 = torch.tensor([[[19, 27], [44, 40], [38, 94]], [[96, 68], [86, 152], [180, 137]],
                             [[140, 301], [303, 264], [238, 542]], [[436, 615], [739, 380], [925, 792]]],
                            dtype=torch.float32)
    strides = [8, 16, 32, 64]
    loss = YOLOv7Loss(3, anchors6, strides, HYP_PRESETS["p6"], aux=True)
    assert loss.balance == [4.0, 1.0, 0.25, 0.06]
    main, aux = _preds(size=256, strides=strides), _preds(size=256, strides=strides, seed=1)
    t = torch.tensor([[0, 0, 10, 10, 60, 70], [1, 1, 0, 0, 250, 240], [1, 2, 100, 100, 140, 200]])
    total, items = loss(dict(main=main, aux=aux), t, 0)
    assert torch.isfinite(total) and (items > 0).all() and items.shape == (3,)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in main + aux)


# ---- DDP: averaged per-rank gradients equal the single-process gradient on the global batch --------
def _ddp_worker(rank, world, port, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    main, aux = _preds(bs=4, seed=0), _preds(bs=4, seed=1)
    per = 4 // world
    lo, hi = rank * per, (rank + 1) * per
    mine = [p.detach()[lo:hi].clone().requires_grad_(True) for p in main + aux]
    t = _DDP_TARGETS[(_DDP_TARGETS[:, 0] >= lo) & (_DDP_TARGETS[:, 0] < hi)].clone()
    t[:, 0] -= lo
    loss = YOLOv7Loss(3, ANCHORS, STRIDES, P5, aux=True)
    total, _ = loss(dict(main=mine[:3], aux=mine[3:]), t, 0)
    total.backward()
    # The predictions stand for the output of shared weights: each rank's slice gets the gradient of its
    # own loss, and DDP divides the sum over ranks by the world size.
    gathered = [None] * world
    dist.all_gather_object(gathered, [p.grad / world for p in mine])
    if rank == 0:
        torch.save([torch.cat([gathered[r][i] for r in range(world)]) for i in range(len(mine))], out)
    dist.destroy_process_group()


# image 0 has 3 gts, image 1 none, image 2 one, image 3 two: uneven positive counts per rank
_DDP_TARGETS = torch.tensor([[0, 1, 10, 20, 50, 60], [0, 2, 60, 60, 120, 100], [0, 0, 5, 5, 30, 40],
                             [2, 1, 64, 30, 80, 50], [3, 0, 20, 20, 100, 110], [3, 2, 40, 8, 56, 30]])


def _reference_grads(out):
    main, aux = _preds(bs=4, seed=0), _preds(bs=4, seed=1)
    loss = YOLOv7Loss(3, ANCHORS, STRIDES, P5, aux=True)
    total, _ = loss(dict(main=main, aux=aux), _DDP_TARGETS, 0)
    total.backward()
    torch.save([p.grad for p in main + aux], out)


def test_ddp_gradient_equals_global_batch(tmp_path):
    """Both sides run in fresh interpreters (see helpers.spawn_isolated). The one-process suite used to die
    here (SIGSEGV when the child exited): OpenVINO's signal-stack bug, see tests/test_openvino_core.py."""
    import socket
    import subprocess
    import sys

    from helpers import spawn_isolated

    ref = tmp_path / "ref.pt"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_loss_yolov7 import _reference_grads; _reference_grads({str(ref)!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grads.pt"
    spawn_isolated("test_loss_yolov7", "_ddp_worker", (2, port, str(out)))
    single, ddp = torch.load(ref, weights_only=True), torch.load(out, weights_only=True)
    assert len(single) == len(ddp) == 6
    for g1, g2 in zip(single, ddp):
        assert g1.abs().sum() > 0
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7)
