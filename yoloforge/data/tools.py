"""``yoloforge data check`` and ``yoloforge data convert``: look at a dataset without training, and move it
between YOLO txt, COCO json and Pascal VOC.

    yoloforge data check data.yaml [--out runs/data-check] [--imgsz 640] [--hyp yolov6]
    yoloforge data convert data.yaml --to yolo|coco|voc --out DIR [--copy]

``check`` writes, per split, the label report (every problem with its file and line), ``labels_<split>.png``
(class histogram, box centres and sizes), ``train_batch0..2.jpg`` (augmented training mosaics as the trainer
builds them) and ``val_batch0.jpg`` (labelled validation images). ``convert`` writes the images (symbolic
links unless ``--copy``), the labels in the new layout and a data yaml that trains as it is; COCO iscrowd /
VOC difficult boxes stay ignored regions in COCO and VOC and are left out of YOLO txt (which cannot say
"ignore"), with a count.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import yaml

from .formats import DataError, load_data_yaml, scan_dataset

SPLITS = ("train", "val", "test")


def _splits(cfg) -> dict:
    return {s: getattr(cfg, s) for s in SPLITS if getattr(cfg, s)}


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        try:
            os.symlink(Path(src).resolve(), dst)
        except OSError:  # no symlinks here (some Windows setups): copy
            shutil.copy2(src, dst)


def _unique_names(files) -> list[str]:
    """File names for one folder: the original name, prefixed with a counter where two sources collide."""
    seen, out = {}, []
    for f in files:
        n = Path(f).name
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{Path(n).stem}_{k}{Path(n).suffix}")
    return out


def convert(data_yaml, to: str, out, copy: bool = False, verbose: bool = True) -> Path:
    """Write the dataset of ``data_yaml`` in layout ``to`` (yolo, coco, voc) under ``out``; returns its data yaml."""
    from yoloforge.utils.metrics import category_ids_for

    if to not in ("yolo", "coco", "voc"):
        raise ValueError(f"--to must be yolo, coco or voc, got {to!r}")
    cfg = load_data_yaml(data_yaml)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = cfg.names
    doc = {"path": ".", "names": {i: n for i, n in enumerate(names)}}
    dropped = 0
    for split, srcs in _splits(cfg).items():
        scan = scan_dataset(srcs, cfg.nc, cache=False, verbose=False, names=names)
        files = _unique_names(scan.img_files)
        if to == "yolo":
            for f, n, lab, ig, (h, w) in zip(scan.img_files, files, scan.labels, scan.ignore, scan.shapes):
                _place(f, out / "images" / split / n, copy)
                txt = out / "labels" / split / (Path(n).stem + ".txt")
                txt.parent.mkdir(parents=True, exist_ok=True)
                cx, cy = (lab[:, 1] + lab[:, 3]) / 2 / w, (lab[:, 2] + lab[:, 4]) / 2 / h
                bw, bh = (lab[:, 3] - lab[:, 1]) / w, (lab[:, 4] - lab[:, 2]) / h
                txt.write_text("".join(f"{int(c)} {a:.6f} {b:.6f} {d:.6f} {e:.6f}\n"
                                       for c, a, b, d, e in zip(lab[:, 0], cx, cy, bw, bh)))
                dropped += len(ig)
            doc[split] = f"images/{split}"
        elif to == "coco":
            cats = scan.category_ids if scan.category_ids is not None else category_ids_for(names)
            if cats == list(range(len(names))):
                cats = list(range(1, len(names) + 1))  # not COCO's own classes: ids 1..nc (COCO starts at 1)
            images, anns = [], []
            for f, n, lab, ig, (h, w), iid in zip(scan.img_files, files, scan.labels, scan.ignore, scan.shapes,
                                                  scan.image_ids):
                _place(f, out / "images" / split / n, copy)
                images.append({"id": int(iid), "file_name": n, "height": int(h), "width": int(w)})
                for rows, crowd in ((lab, 0), (ig, 1)):
                    for c, x1, y1, x2, y2 in rows.tolist():
                        bw, bh = x2 - x1, y2 - y1
                        anns.append({"id": len(anns) + 1, "image_id": int(iid), "category_id": int(cats[int(c)]),
                                     "bbox": [round(x1, 3), round(y1, 3), round(bw, 3), round(bh, 3)],
                                     "area": round(bw * bh, 3), "iscrowd": crowd})
            j = out / "annotations" / f"instances_{split}.json"
            j.parent.mkdir(parents=True, exist_ok=True)
            j.write_text(json.dumps({"images": images, "annotations": anns,
                                     "categories": [{"id": int(c), "name": n} for c, n in zip(cats, names)]}))
            doc[split] = f"annotations/instances_{split}.json"
        else:
            ids = []
            for f, n, lab, ig, (h, w) in zip(scan.img_files, files, scan.labels, scan.ignore, scan.shapes):
                _place(f, out / "JPEGImages" / n, copy)
                ids.append(Path(n).stem)
                objs = []
                for rows, hard in ((lab, 0), (ig, 1)):
                    for c, x1, y1, x2, y2 in rows.tolist():  # VOC pixels are 1-based
                        objs.append(f"  <object><name>{escape(names[int(c)])}</name><difficult>{hard}</difficult>"
                                    f"<bndbox><xmin>{x1 + 1:.2f}</xmin><ymin>{y1 + 1:.2f}</ymin>"
                                    f"<xmax>{x2 + 1:.2f}</xmax><ymax>{y2 + 1:.2f}</ymax></bndbox></object>\n")
                xml = (f"<annotation>\n  <filename>{escape(n)}</filename>\n  <size><width>{int(w)}</width>"
                       f"<height>{int(h)}</height><depth>3</depth></size>\n{''.join(objs)}</annotation>\n")
                a = out / "Annotations" / (Path(n).stem + ".xml")
                a.parent.mkdir(parents=True, exist_ok=True)
                a.write_text(xml, encoding="utf-8")
            lst = out / "ImageSets" / "Main" / f"{split}.txt"
            lst.parent.mkdir(parents=True, exist_ok=True)
            lst.write_text("".join(i + "\n" for i in ids))
            doc[split] = f"ImageSets/Main/{split}.txt"
        if verbose:
            print(f"{split}: {len(files)} images, {sum(len(x) for x in scan.labels)} boxes -> {out} ({to})")
    if dropped and verbose:
        print(f"note: {dropped} ignored-region boxes (COCO iscrowd / VOC difficult) left out: YOLO txt has no way "
              "to mark them")
    y = out / "data.yaml"
    y.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    if verbose:
        print(f"data yaml: {y}")
    return y


def check(data_yaml, out="runs/data-check", imgsz: int = 640, hyp: str = "yolov6", batch: int = 16,
          seed: int = 0, verbose: bool = True) -> dict:
    """The label report, label plots and sample mosaics of every split, without training; returns a summary."""
    import torch

    from yoloforge.config import load_hyp
    from yoloforge.data.dataset import DetectionDataset
    from yoloforge.data.loader import build_dataloader
    from yoloforge.utils.plots import plot_image_grid, plot_labels

    cfg = load_data_yaml(data_yaml)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hp = load_hyp(hyp) if hyp else None
    summary, lines = {}, [f"data check of {cfg.path} ({cfg.nc} classes)"]
    for split, srcs in _splits(cfg).items():
        train = split == "train"
        try:
            ds = DetectionDataset(srcs, cfg.names, imgsz=imgsz, augment=train, hyp=hp, cache=True, verbose=False,
                                  seed=seed)
        except DataError as e:
            lines.append(f"\n[{split}] unusable: {e}")
            summary[split] = {"error": str(e)}
            continue
        rep = ds.report
        counts = np.bincount(np.concatenate([l[:, 0] for l in ds.labels]).astype(int) if rep.boxes else
                             np.zeros(0, int), minlength=cfg.nc)
        files = {"labels": str(plot_labels(ds.labels, ds.shapes, cfg.names, out / f"labels_{split}.png"))}
        loader = build_dataloader(ds, batch, workers=0, shuffle=train, seed=seed)
        it = iter(loader)
        for k in range(3 if train else 1):
            try:
                imgs, targets, _ = next(it)
            except StopIteration:
                break
            name = f"train_batch{k}.jpg" if train else f"val_batch{k}.jpg"
            files[name] = str(plot_image_grid(imgs, targets=targets, names=cfg.names, path=out / name))
        empty = [cfg.names[c] for c in range(cfg.nc) if counts[c] == 0]
        lines += [f"\n[{split}] {rep.summary()}",
                  "  instances per class: " + ", ".join(f"{n} {int(c)}" for n, c in zip(cfg.names, counts)),
                  *( [f"  classes with no instance: {', '.join(empty[:20])}" + (" ..." if len(empty) > 20 else "")]
                     if empty else []),
                  "  written: " + ", ".join(Path(v).name for v in files.values())]
        summary[split] = {"images": rep.images, "boxes": rep.boxes, "backgrounds": rep.backgrounds,
                          "skipped": rep.skipped_images, "dropped": dict(rep.dropped), "clipped": rep.clipped,
                          "per_class": {n: int(c) for n, c in zip(cfg.names, counts)}, "files": files,
                          "messages": list(rep.messages)}
        del loader, it
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    text = "\n".join(lines)
    (out / "report.txt").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    if verbose:
        print(text)
        print(f"\nreport and plots in {out}")
    return summary


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="check a dataset, or convert it between YOLO txt, COCO json and Pascal VOC")
    s = p.add_subparsers(dest="data_verb", required=True)
    c = s.add_parser("check", help="label report, class histogram, box sizes and sample mosaics, without training")
    c.add_argument("data", help="data yaml")
    c.add_argument("--out", default="runs/data-check", help="where the report and plots go")
    c.add_argument("--imgsz", type=int, default=640, help="image size of the sample mosaics")
    c.add_argument("--hyp", default="yolov6", help="augmentation preset (or yaml) of the training mosaics")
    c.add_argument("--batch", type=int, default=16, help="images per mosaic")
    c.add_argument("--seed", type=int, default=0, help="seed of the augmentations shown")
    v = s.add_parser("convert", help="write the dataset as YOLO txt, COCO json or Pascal VOC")
    v.add_argument("data", help="data yaml")
    v.add_argument("--to", required=True, choices=["yolo", "coco", "voc"], help="target layout")
    v.add_argument("--out", required=True, help="output folder (a data.yaml is written there)")
    v.add_argument("--copy", action="store_true", help="copy the images instead of linking them")


def run(a) -> int:
    if a.data_verb == "check":
        check(a.data, a.out, imgsz=a.imgsz, hyp=a.hyp, batch=a.batch, seed=a.seed)
    else:
        convert(a.data, a.to, a.out, copy=a.copy)
    return 0
