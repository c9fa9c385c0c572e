"""Fuzz the data layer (issue 15): mutated YOLO labels, images, data yamls and COCO jsons. Every variant must end
in a usable scan (problems counted, each message naming its file) or a one-line DataError naming the file:
never another exception, never a hang. Run with -s to see the table of outcomes."""
from __future__ import annotations

import copy
import json
import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from yoloforge.data import formats as F

N_PER_KIND = 90  # 4 kinds: 360 variants
TOKENS = ["0", "1", "-1", "3", "0.5", "1e9", "-1e-9", "nan", "inf", "abc", "", "  ", "\t", "0x10", "1,5", "é", "\x00",
          "99999999999999999999", "0.5.5", "[1]", "{", "#", "\ufeff"]


def _label_text(rng: random.Random) -> str:
    rows = []
    for _ in range(rng.randint(0, 6)):
        k = rng.choice([5, 5, 5, 4, 6, 7, 9, 1, 0])
        vals = [str(rng.randint(0, 3))] + [f"{rng.uniform(-0.2, 1.2):.4f}" for _ in range(k - 1)]
        for _ in range(rng.randint(0, 2)):
            if vals:
                vals[rng.randrange(len(vals))] = rng.choice(TOKENS)
        rows.append(rng.choice([" ", "  ", "\t", ","]).join(vals))
    return rng.choice(["\n", "\r\n"]).join(rows) + rng.choice(["", "\n", "\n\n"])


def _image_bytes(rng: random.Random) -> tuple[bytes, str]:
    h, w = rng.randint(1, 64), rng.randint(1, 64)
    ext = rng.choice([".png", ".jpg", ".bmp"])
    data = cv2.imencode(ext, np.full((h, w, 3), rng.randint(0, 255), np.uint8))[1].tobytes()
    how = rng.choice(["ok", "ok", "truncate", "flip", "empty", "random", "header"])
    if how == "truncate":
        data = data[:rng.randint(1, max(1, len(data) - 1))]
    elif how == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    elif how == "empty":
        data = b""
    elif how == "random":
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    elif how == "header":
        data = data[:26]
    return data, ext


def _yaml_text(rng: random.Random) -> str:
    base = "path: .\ntrain: images\nval: images\nnc: 4\nnames: [a, b, c, d]\n"
    chars = list(base)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["del", "ins", "swap", "line"])
        i = rng.randrange(len(chars))
        if op == "del":
            del chars[i]
        elif op == "ins":
            chars.insert(i, rng.choice(TOKENS + [":", "-", "[", "]", "!!python/object", "&a", "*a", "\n"]))
        elif op == "swap" and len(chars) > 1:
            j = rng.randrange(len(chars))
            chars[i], chars[j] = chars[j], chars[i]
        else:
            chars.insert(i, rng.choice(["\nnc: four\n", "\npath: 5\n", "\ntrain: [[a]]\n", "\nnames: []\n",
                                        "\nnc: 1000000000\n", "\nval: /nonexistent\n", "\nnames: {0: a, 2: b}\n"]))
    return "".join(chars)


def _mutate_json(rng: random.Random, d):
    """Change one random node of the json: delete it, give it another type, or an odd value."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])

    walk(d, [])
    path = rng.choice(paths[1:])
    parent = d
    for p in path[:-1]:
        parent = parent[p]
    new = rng.choice([None, "x", -1, 0, 1.5, [], {}, [1, 2, 3], "../../etc/passwd", 10 ** 12, True, "DELETE"])
    if new == "DELETE":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    else:
        parent[path[-1]] = new
    return d


def _coco(rng: random.Random, root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), np.full((40, 50, 3), 80, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 50, "height": 40})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 0})
    d = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    for _ in range(rng.randint(1, 3)):
        d = _mutate_json(rng, copy.deepcopy(d))
    j = root / "annotations" / "instances_train.json"
    j.parent.mkdir(parents=True, exist_ok=True)
    j.write_text(json.dumps(d) if rng.random() > 0.05 else json.dumps(d)[:-3])
    return j


def _outcome(fn, files, seen: set) -> str:
    try:
        r = fn()
    except F.DataError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert any(str(f) in msg for f in files), f"error does not name the file: {msg}"
        seen.add(msg.split(": ", 1)[-1][:25])
        return "DataError naming the file"
    rep = getattr(r, "report", None)
    if rep is not None and rep.messages:
        seen.update(rep.dropped)
        seen.update(m.rsplit(": ", 1)[-1][:25] for m in rep.messages)
        assert all(any(str(f) in m for f in files) or str(files[0].parent) in m for m in rep.messages if m), \
            rep.messages
        return "usable, problems counted"
    return "usable, clean"


@pytest.mark.parametrize("kind", ["labels", "images", "yaml", "coco"])
def test_fuzz_never_a_traceback(kind, tmp_path):
    rng = random.Random(f"yoloforge-fuzz-{kind}")
    table, seen = Counter(), set()
    for n in range(N_PER_KIND):
        root = tmp_path / f"{n}"
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        if kind == "labels":
            for k in range(3):
                cv2.imwrite(str(root / "images" / f"{k}.png"), np.full((32, 32, 3), 50 * k, np.uint8))
                (root / "labels" / f"{k}.txt").write_text(_label_text(rng), encoding="utf-8")
            files = [root / "images"]
            out = _outcome(lambda: F.scan_dataset(root / "images", 4, cache=False, verbose=False), files, seen)
        elif kind == "images":
            for k in range(3):
                data, ext = _image_bytes(rng)
                (root / "images" / f"{k}{ext}").write_bytes(data)
                (root / "labels" / f"{k}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
            files = [root / "images"]
            out = _outcome(lambda: F.scan_dataset(root / "images", 4, cache=False, verbose=False), files, seen)
        elif kind == "yaml":
            cv2.imwrite(str(root / "images" / "a.png"), np.full((32, 32, 3), 9, np.uint8))
            y = root / "data.yaml"
            y.write_text(_yaml_text(rng), encoding="utf-8")
            files = [y]
            out = _outcome(lambda: F.load_data_yaml(y), files, seen)
        else:
            j = _coco(rng, root)
            files = [j]
            out = _outcome(lambda: F.scan_dataset(j, 1, cache=False, verbose=False), files, seen)
        table[out] += 1
    print(f"\n{kind}: {N_PER_KIND} variants: " + ", ".join(f"{k} {v}" for k, v in sorted(table.items())))
    assert sum(table.values()) == N_PER_KIND
    assert len(seen) >= 3, seen  # the generator reaches several kinds of problem


@pytest.mark.slow
def test_fuzz_cli_train_exits_0_or_2_without_traceback(tmp_path):
    """The CLI-level version: `yoloforge train` (1 epoch at 32 px) on mutated datasets and yamls, in a
    subprocess each: exit 0, or exit 2 with one line on stderr; never a traceback."""
    import subprocess
    import sys

    rng = random.Random("yoloforge-fuzz-cli")
    table = Counter()
    for n in range(24):
        root = tmp_path / f"{n}"
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        for k in range(4):
            data, ext = _image_bytes(rng) if n % 2 else (cv2.imencode(".png", np.full((40, 40, 3), 60 * k, np.uint8))[1].tobytes(), ".png")
            (root / "images" / f"{k}{ext}").write_bytes(data)
            (root / "labels" / f"{k}.txt").write_text(_label_text(rng))
        y = root / "data.yaml"
        y.write_text(_yaml_text(rng) if n % 3 == 0 else "path: .\ntrain: images\nval: images\nnames: [a, b, c, d]\n")
        p = subprocess.run([sys.executable, "-m", "yoloforge", "train", "--model", "yolov6n", "--data", str(y),
                            "--epochs", "1", "--imgsz", "32", "--batch", "2", "--workers", "0", "--project",
                            str(root / "runs"), "--no-plots", "--no-verbose", "--no-tensorboard"],
                           capture_output=True, text=True, timeout=300)
        assert "Traceback" not in p.stderr, p.stderr[-2000:]
        assert p.returncode in (0, 2), (p.returncode, p.stderr[-2000:])
        if p.returncode == 2:
            assert p.stderr.strip().splitlines()[-1].startswith("yoloforge train: error:")
        table[p.returncode] += 1
    print(f"\nCLI train on 24 mutated datasets: exit codes {dict(table)}")
