"""DetectionDataset + loader: boxes follow pixels end to end, determinism, close-mosaic, workers, DDP."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yoloforge.data.dataset import DetectionDataset
from yoloforge.data.loader import build_dataloader, collate
from yoloforge.utils.boxes import unletterbox_boxes

try:
    from test_augment import background, check_follow, hue_bgr
except ImportError:  # tests run as a package
    from tests.test_augment import background, check_follow, hue_bgr

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"  # ../shared beside the repo
SHAPES = [(120, 200), (200, 120), (150, 150), (90, 160), (160, 100), (140, 180), (100, 100), (130, 90)]
NAMES = [f"hue{k}" for k in range(9)]
NO_COLOUR = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


@pytest.fixture(scope="module")
def hue_dir(tmp_path_factory):
    """8 PNG images of various sizes; image k holds one rectangle of hue k labelled class k."""
    root = tmp_path_factory.mktemp("hue")
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(SHAPES):
        img = background(rng, h, w)
        bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
        x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y1:y1 + bh, x1:x1 + bw] = hue_bgr(k)
        (root / "images").mkdir(exist_ok=True), (root / "labels").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{k}.png"), img)
        (root / "labels" / f"{k}.txt").write_text(
            f"{k} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}\n")
    return root / "images"


def to_bgr(t):
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0)[:, :, ::-1])


def test_val_mode_letterbox_follows_and_inverts(hue_dir, tmp_path):
    ds = DetectionDataset(hue_dir, NAMES, imgsz=128, cache_dir=tmp_path, verbose=False)
    assert len(ds) == 8 and ds.shapes.tolist() == [list(s) for s in SHAPES] and not ds.mosaic
    for i in range(len(ds)):
        img, lab, meta = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 128, 128)
        assert lab.dtype == torch.float32 and lab.shape == (1, 5)
        assert meta["path"] == ds.img_files[i] and meta["orig_shape"] == SHAPES[i]
        check_follow(to_bgr(img), lab.numpy(), tol=1.5)
        cx, cy = ((lab[0, 1] + lab[0, 3]) / 2).int(), ((lab[0, 2] + lab[0, 4]) / 2).int()
        assert tuple(img[:, cy, cx].tolist()) == hue_bgr(i)[::-1]  # RGB channel order
        back = unletterbox_boxes(lab[:, 1:].numpy(), meta["ratio_pad"], meta["orig_shape"])
        np.testing.assert_allclose(back, ds.labels[i][:, 1:], atol=0.01)


def test_rect_val_batches_follow_and_invert(hue_dir, tmp_path):
    """Rectangular validation: images sorted by h/w, batches of 3 share one stride-multiple rectangle
    (landscape: h < w, portrait: h > w, mixed: square), pixels and boxes follow, boxes invert exactly."""
    ds = DetectionDataset(hue_dir, NAMES, imgsz=128, cache_dir=tmp_path, verbose=False, stride=32, rect_batch=3)
    ar = ds.shapes[:, 0] / ds.shapes[:, 1]
    assert (np.diff(ar) >= 0).all() and sorted(map(tuple, ds.shapes.tolist())) == sorted(SHAPES)
    # h/w sorted: 0.5625 0.6 0.778 | 1 1 1.444 | 1.6 1.667 -> sides ceil(128 * r / 32 + 0.5) * 32 with r the
    # batch's largest h/w (landscape: h), 1 (mixed: square), 1 / smallest h/w (portrait: w)
    assert ds.batch_shapes.tolist() == [[128, 160], [160, 160], [160, 96]]
    loader = build_dataloader(ds, 3, workers=0, shuffle=False)
    k = 0
    for imgs, targets, metas in loader:
        assert tuple(imgs.shape[2:]) == tuple(ds.batch_shapes[k])
        for j, meta in enumerate(metas):
            i = 3 * k + j
            cls = int(ds.labels[i][0, 0])
            lab = targets[targets[:, 0] == j][:, 1:]
            assert meta["path"] == ds.img_files[i] and int(lab[0, 0]) == cls
            (rx, ry), (px, py) = meta["ratio_pad"]
            h0, w0 = meta["orig_shape"]
            assert max(h0, w0) * max(rx, ry) == pytest.approx(128, abs=1) and rx == pytest.approx(ry, rel=0.02)
            check_follow(to_bgr(imgs[j]), lab.numpy(), tol=1.5)
            cx, cy = ((lab[0, 1] + lab[0, 3]) / 2).int(), ((lab[0, 2] + lab[0, 4]) / 2).int()
            assert tuple(imgs[j][:, cy, cx].tolist()) == hue_bgr(cls)[::-1]
            back = unletterbox_boxes(lab[:, 1:].numpy(), meta["ratio_pad"], meta["orig_shape"])
            np.testing.assert_allclose(back, ds.labels[i][:, 1:], atol=0.01)
        k += 1
    assert k == 3
    with pytest.raises(ValueError, match="rect_batch"):
        ds.make_rect(0)


def test_thread_loader_gives_the_dataloaders_batches(hue_dir, tmp_path, monkeypatch):
    """Threads (used once OpenVINO / ONNX Runtime are loaded: no fork under their thread pools) give the
    same batches in the same order as worker processes, for rectangular val and augmented training."""
    from yoloforge.data.loader import ThreadLoader

    for kw, bs in ((dict(rect_batch=3), 3), (dict(augment=True, hyp=NO_COLOUR), 4)):
        ds = DetectionDataset(hue_dir, NAMES, imgsz=128, cache_dir=tmp_path, verbose=False, **kw)
        shuffle = ds.augment
        procs = build_dataloader(ds, bs, workers=2, shuffle=shuffle, seed=3, threads=False)
        threads = build_dataloader(ds, bs, workers=2, shuffle=shuffle, seed=3, threads=True)
        assert isinstance(threads, ThreadLoader) and len(threads) == len(procs) == -(-8 // bs)
        for epoch in (0, 1):
            procs.sampler.set_epoch(epoch)
            threads.sampler.set_epoch(epoch)
            got = list(threads)
            assert len(got) == len(procs)
            for (ia, ta, ma), (ib, tb, mb) in zip(procs, got):
                assert torch.equal(ia, ib) and torch.equal(ta, tb) and [m["path"] for m in ma] == [m["path"] for m in mb]
    import onnxruntime  # noqa: F401  (its presence switches the default to threads)
    assert isinstance(build_dataloader(ds, 4, workers=2, shuffle=False), ThreadLoader)


def test_train_mode_boxes_follow_pixels(hue_dir, tmp_path):
    hyp = dict(NO_COLOUR, degrees=10, shear=2, mosaic=1.0, mixup=0.3, flipud=0.5)
    ds = DetectionDataset(hue_dir, NAMES, imgsz=128, augment=True, hyp=hyp, cache_dir=tmp_path, verbose=False)
    loaded = []
    orig = ds._load_pair
    ds._load_pair = lambda i: (loaded.append(int(i)), orig(i))[1]
    compared = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            loaded.clear()
            img, lab, meta = ds[i]
            assert img.shape == (3, 128, 128)
            lab = lab.numpy()
            assert (lab[:, 1:] >= 0).all() and (lab[:, 1:] <= 128).all()
            assert ((lab[:, 3] > lab[:, 1]) & (lab[:, 4] > lab[:, 2])).all()
            ious = [((np.minimum(l[3], lab[:, 3]) - np.maximum(l[1], lab[:, 1])).clip(0) *
                     (np.minimum(l[4], lab[:, 4]) - np.maximum(l[2], lab[:, 2])).clip(0)) for l in lab]
            ks = [int(l[0]) for j, l in enumerate(lab) if loaded.count(int(l[0])) == 1
                  and np.delete(ious[j], j).max(initial=0) == 0]
            compared += check_follow(to_bgr(img), lab, ks=ks, tol=3, isolate=True)
    assert compared >= 20


def test_determinism_epochs_and_close_mosaic(hue_dir, tmp_path):
    hyp = dict(NO_COLOUR, translate=0.0, scale=0.0, fliplr=0.0, mosaic=1.0)
    ds = DetectionDataset(hue_dir, NAMES, imgsz=256, augment=True, hyp=hyp, seed=3, cache_dir=tmp_path,
                          verbose=False)
    a, b = ds[2], ds[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ds[(2, 0, True, False)][0], a[0])
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a[0])
    ds.mosaic = False  # close mosaic: no-op affine -> the validation letterbox exactly (images < imgsz)
    val = DetectionDataset(hue_dir, NAMES, imgsz=256, cache_dir=tmp_path, verbose=False)
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], val[i][0]) and torch.allclose(ds[i][1], val[i][1])


def test_loader_workers_reproducible_and_follow_main_process_state(hue_dir, tmp_path):
    hyp = dict(degrees=5, mosaic=1.0, mixup=0.2)

    def batches(workers, epochs=(0, 1), close_at=1):
        ds = DetectionDataset(hue_dir, NAMES, imgsz=96, augment=True, hyp=hyp, cache_dir=tmp_path, verbose=False)
        dl = build_dataloader(ds, 3, workers, shuffle=True, seed=7, threads=False)  # worker processes
        out = []
        for e in epochs:
            dl.sampler.set_epoch(e)
            ds.mosaic = e < close_at
            out += [b[:2] for b in dl]
        return out, dl

    w0, dl0 = batches(0)
    w2, dl2 = batches(2)
    assert dl0.num_workers == 0 and dl2.num_workers == 2 and dl2.persistent_workers
    assert len(w0) == len(w2) == 6
    for (i0, t0), (i2, t2) in zip(w0, w2):
        assert torch.equal(i0, i2) and torch.equal(t0, t2)
    assert not torch.equal(w0[0][0], w0[3][0])  # epochs differ
    w_open, _ = batches(0, epochs=(0, 1), close_at=99)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(w0[3:], w_open[3:]))  # mosaic switch took effect


def test_collate_targets():
    batch = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor([[1, 0, 0, 2, 2.]]), {"p": 0}),
             (torch.ones(3, 8, 8, dtype=torch.uint8), torch.zeros((0, 5)), {"p": 1}),
             (torch.ones(3, 8, 8, dtype=torch.uint8), torch.tensor([[2, 1, 1, 3, 3.], [0, 0, 0, 1, 1]]), {"p": 2})]
    imgs, t, metas = collate(batch)
    assert imgs.shape == (3, 3, 8, 8) and imgs.dtype == torch.uint8
    assert t.shape == (3, 6) and t.dtype == torch.float32 and t[:, 0].tolist() == [0, 2, 2]
    assert t[1].tolist() == [2, 2, 1, 1, 3, 3] and [m["p"] for m in metas] == [0, 1, 2]


def test_distributed_sampler_shards(hue_dir, tmp_path):
    ds = DetectionDataset(hue_dir, NAMES, imgsz=64, cache_dir=tmp_path, verbose=False)
    seen = []
    for rank in range(2):
        dl = build_dataloader(ds, 2, 0, shuffle=True, seed=0, rank=rank, world_size=2, drop_last=True)
        seen.append([m["path"] for _, _, metas in dl for m in metas])
    assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(ds.img_files)


def test_ram_cache_matches_disk(hue_dir, tmp_path, capsys):
    hyp = dict(mosaic=1.0)
    disk = DetectionDataset(hue_dir, NAMES, imgsz=96, augment=True, hyp=hyp, cache_dir=tmp_path, verbose=False)
    ram = DetectionDataset(hue_dir, NAMES, imgsz=96, augment=True, hyp=hyp, cache="ram", cache_dir=tmp_path)
    assert "RAM cache: 8 images" in capsys.readouterr().out and ram._ram is not None
    for i in range(len(disk)):
        assert torch.equal(disk[i][0], ram[i][0]) and torch.equal(disk[i][1], ram[i][1])


@pytest.mark.skipif(not COCO128.is_dir(), reason="coco128 sample data is only in the shared dev checkout")
def test_coco128_dataset(tmp_path):
    from yoloforge.data.formats import load_data_yaml
    c = load_data_yaml(COCO128 / "data.yaml")
    val = DetectionDataset(c.val, c.names, imgsz=320, cache_dir=tmp_path, verbose=False)
    tr = DetectionDataset(c.train, c.names, imgsz=320, augment=True, cache_dir=tmp_path, verbose=False)
    imgs, t, metas = collate([val[i] for i in range(4)] + [tr[i] for i in range(4)])
    assert imgs.shape == (8, 3, 320, 320) and len(t) > 10
    assert (t[:, 2:] >= 0).all() and (t[:, 2:] <= 320).all() and (t[:, 1] < 80).all()
    for i in range(4):
        back = unletterbox_boxes(val[i][1][:, 1:].numpy(), metas[i]["ratio_pad"], metas[i]["orig_shape"])
        assert np.abs(back - val.labels[i][:, 1:]).max() < 0.05
