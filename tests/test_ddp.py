"""torch DDP on CPU (gloo): one step over 2 processes equals one step of one process on the global batch,
and `torchrun -m yoloforge train` trains with only rank 0 writing."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from helpers import spawn_isolated

from yoloforge.config import load_hyp

GLOBAL_BATCH = 4
IMGSZ = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(GLOBAL_BATCH, 3, IMGSZ, IMGSZ, generator=g)
    rows = []
    for b in range(GLOBAL_BATCH):
        for j in range(b + 1):  # a different number of objects per image
            xy = torch.rand(2, generator=g) * 30
            wh = 8 + torch.rand(2, generator=g) * 24
            rows.append([b, (b + j) % 3, xy[0], xy[1], (xy[0] + wh[0]).clamp(max=63), (xy[1] + wh[1]).clamp(max=63)])
    return imgs, torch.tensor(rows, dtype=torch.float32)


def _model():
    from yoloforge.families.registry import build_model

    torch.manual_seed(1)
    m = build_model("yolov6n", nc=3)
    with torch.no_grad():  # the head's predictors start at 0; make gradients reach every layer
        for p in m.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.01)
    m.train()
    for mod in m.modules():  # BN statistics frozen for the comparison
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    return m


def _step(model, imgs, targets, epoch):
    loss_fn = (model.module if hasattr(model, "module") else model).build_loss(load_hyp("yolov6"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss, _ = loss_fn(model(imgs), targets, epoch)
    loss.backward()
    opt.step()


def _worker(rank, world, port, out, epoch):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    imgs, targets = _batch()
    per = GLOBAL_BATCH // world
    mine = targets[(targets[:, 0] >= rank * per) & (targets[:, 0] < (rank + 1) * per)].clone()
    mine[:, 0] -= rank * per
    model = torch.nn.parallel.DistributedDataParallel(_model())
    _step(model, imgs[rank * per:(rank + 1) * per], mine, epoch)
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.destroy_process_group()


def test_ddp_step_equals_single_process(tmp_path):
    imgs, targets = _batch()
    for epoch in (0, 10):  # the ATSS warm-up epochs and the TAL epochs
        single = _model()
        _step(single, imgs, targets, epoch)
        out = tmp_path / f"ddp{epoch}.pt"
        spawn_isolated("test_ddp", "_worker", (2, _free_port(), str(out), epoch))
        ddp = torch.load(out, weights_only=True)
        ref = single.state_dict()
        moved = 0
        for k, v in ref.items():
            if v.is_floating_point():
                assert torch.allclose(v, ddp[k], rtol=1e-4, atol=1e-6), k
        init = _model().state_dict()
        moved = sum(not torch.equal(init[k], ref[k]) for k in ref if ref[k].is_floating_point())
        assert moved > 50  # the step really changed the weights


def test_torchrun_train_only_rank0_writes(tiny_data, tmp_path):
    project = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "yoloforge", "train", "--model", "yolov6n", "--data", str(tiny_data), "--epochs", "1",
           "--imgsz", "64", "--batch", "8", "--workers", "0", "--project", str(project), "--name", "ddp",
           "--no-plots", "--no-verbose"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.name for p in project.iterdir())
    assert runs == ["ddp"]  # rank 1 made no run directory of its own
    files = sorted(str(p.relative_to(project / "ddp")) for p in (project / "ddp").rglob("*") if p.is_file())
    assert "weights/best.safetensors" in files and "weights/last.state.pt" in files
    assert not [f for f in files if f.endswith(".tmp")]
    rows = (project / "ddp" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # one header, one epoch: written once, not once per rank
    assert Path(project / "ddp" / "args.yaml").read_text().count("model: yolov6n") == 1
