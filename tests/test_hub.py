"""Official pretrained weights by name (issue 14, part 1), against a local HTTP server on 127.0.0.1 that serves
the committed official-format fixtures under the official release file names: download, resume after a broken
connection, verification, conversion, the cache, and the one-line offline error."""
from __future__ import annotations

import lzma
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from yoloforge import Detector, hub
from yoloforge.cli import main

FIX = Path(__file__).parent / "fixtures" / "convert"


class Server:
    """Range-capable file server; ``drop[name] = n`` sends only n bytes of the next full response, then cuts."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.drop, self.log, self.ranges = files, {}, [], True
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                srv.log.append((name, self.headers.get("Range")))
                data = srv.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and srv.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = srv.drop.pop(name, None)
                self.wfile.write(body[:cut] if cut is not None else body)
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/releases"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(tmp_path, monkeypatch):
    files = {"yolov7-tiny.pt": lzma.decompress((FIX / "yolov7-tiny_train.pt.xz").read_bytes()),
             "yolov6n.pt": lzma.decompress((FIX / "yolov6n_train.pt.xz").read_bytes()),
             "yolov4-tiny.weights": lzma.decompress((FIX / "yolov4-tiny.weights.xz").read_bytes()),
             "yolov4-tiny.cfg": (FIX / "yolov4-tiny.cfg").read_bytes()}
    s = Server(files)
    monkeypatch.setenv("YOLOFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YOLOFORGE_WEIGHTS_URL", s.url)
    yield s
    s.close()


def test_registry_names_and_urls():
    a = hub.asset_for("yolov7")
    assert a.file == "yolov7.pt" and a.url == "https://github.com/WongKinYiu/yolov7/releases/download/v0.1/yolov7.pt"
    assert hub.asset_for("yolov7", training=True).file == "yolov7_training.pt"
    assert hub.asset_for("yolov7-tiny", training=True).file == "yolov7-tiny.pt"  # no _training file for tiny
    assert hub.asset_for("yolov6l-relu").url.endswith("/0.2.0/yolov6l_relu.pt")
    assert hub.asset_for("yolov4-csp.weights").cfg == "yolov4-csp.cfg"
    with pytest.raises(ValueError, match="Google Drive"):
        hub.asset_for("yolov4-p5")
    with pytest.raises(ValueError, match="no official weights known"):
        hub.asset_for("yolov9")
    from yoloforge.families.registry import list_models

    assert {a.model for a in hub.ASSETS.values()} <= set(list_models())


def test_pretrained_by_name_downloads_converts_and_caches(server):
    d = Detector("yolov7-tiny", pretrained=True)
    assert d.model.name == "yolov7-tiny" and d.weights.suffix == ".safetensors"
    home = Path(hub.home()) / "weights"
    assert (home / "yolov7-tiny.pt").is_file() and (home / "yolov7-tiny.safetensors").is_file()
    # the same weights as converting the official file directly
    ref = Detector(str(home / "yolov7-tiny.pt"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(d.model.eval()(x), ref.model.eval()(x))
    n = len(server.log)
    Detector("yolov7-tiny", pretrained=True)  # cached: no request
    assert len(server.log) == n
    idx = hub._index()["yolov7-tiny.pt"]
    assert idx["bytes"] == len(server.files["yolov7-tiny.pt"]) and len(idx["sha256"]) == 64


def test_download_resumes_after_a_broken_connection(server):
    server.drop["yolov6n.pt"] = 300_000
    p, _, _ = hub.fetch("yolov6n", verbose=False)
    assert p.read_bytes() == server.files["yolov6n.pt"]
    ranges = [r for n, r in server.log if n == "yolov6n.pt"]
    assert ranges[0] is None and ranges[1] == "bytes=300000-"  # continued, not restarted
    assert not p.with_name(p.name + ".part").exists()


def test_server_without_ranges_restarts_and_damaged_cache_is_refetched(server):
    server.ranges = False
    server.drop["yolov6n.pt"] = 1000
    p, _, _ = hub.fetch("yolov6n", verbose=False)
    assert p.read_bytes() == server.files["yolov6n.pt"]
    with open(p, "r+b") as f:  # a flipped byte in the cache
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0xFF]))
    p2, _, _ = hub.fetch("yolov6n", verbose=False)
    assert p2.read_bytes() == server.files["yolov6n.pt"]


def test_published_sha256_is_checked(server, monkeypatch):
    a = hub.ASSETS["yolov6n.pt"]
    monkeypatch.setitem(hub.ASSETS, "yolov6n.pt", hub.Asset(a.file, a.url, a.model, sha256="0" * 64))
    with pytest.raises(hub.DownloadError, match="is not the published"):
        hub.fetch("yolov6n.pt", verbose=False)
    assert not (Path(hub.home()) / "weights" / "yolov6n.pt").exists()


def test_darknet_by_name_fetches_its_cfg(server):
    d = Detector("yolov4-tiny", pretrained=True)
    assert d.model.name == "yolov4-tiny"
    assert (Path(hub.home()) / "weights" / "yolov4-tiny.cfg").is_file()


def test_train_weights_official_and_by_file_name(server, tiny_data, tmp_path):
    for w in ("official", "yolov6n.pt"):
        rc = main(["train", "--model", "yolov6n", "--data", str(tiny_data), "--weights", w, "--epochs", "1",
                   "--imgsz", "64", "--batch", "8", "--workers", "0", "--project", str(tmp_path), "--name", w,
                   "--no-plots", "--no-verbose", "--no-tensorboard"])
        assert rc == 0
        assert (tmp_path / w / "weights" / "best.safetensors").is_file()


def test_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("YOLOFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YOLOFORGE_WEIGHTS_URL", "http://127.0.0.1:9/nothing")  # port 9: connection refused
    rc = main(["weights", "get", "yolov7-tiny"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot download" in err and "offline?" in err
    assert "Traceback" not in err
