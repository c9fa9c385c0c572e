"""Official pretrained weights by name: the release files of the seeds' repositories, downloaded once,
verified, converted with the safe converter and cached.

    Detector("yolov7-tiny", pretrained=True)
    yoloforge train --model yolov7 --weights official        # yolov7_training.pt, the file the README fine-tunes
    yoloforge train --model yolov6s --weights yolov6s.pt     # a release file by its name
    yoloforge weights list | yoloforge weights get yolov7-tiny

Files go to ``$YOLOFORGE_HOME/weights`` (default: ``$XDG_CACHE_HOME/yoloforge`` or ``~/.cache/yoloforge``).
A download is written to ``<file>.part`` and continued with an HTTP Range request after an interruption; it is
checked against the server's length, and against the sha256 below where one is known. Where the release
does not publish a hash, the first verified download's sha256 is recorded in ``index.json`` and every later
use is checked against it (a changed or damaged cache file is re-downloaded, never silently loaded). The
converted ``.safetensors`` is cached beside it. ``YOLOFORGE_WEIGHTS_URL`` replaces every release URL's
directory with a mirror of the same file names (an offline copy, a proxy; the tests use a local server).

Sizes are the ones the release pages and READMEs state (approximate, in MB); None where no source here
states one. ScaledYOLOv4's yolov4-p5/p6/p7 ``.pt`` files are published on Google Drive only, behind a
confirmation page: they cannot be fetched by name; download them yourself and pass the path.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from yoloforge.utils.logging import get_logger

LOG = get_logger()

V7 = "https://github.com/WongKinYiu/yolov7/releases/download/v0.1/"  # yolov7 README, tables and "Transfer learning"
V6 = "https://github.com/meituan/YOLOv6/releases/download/0.2.0/"  # YOLOv6 0.2.0 README, "Benchmark" table
DK4 = "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/"  # AlexeyAB/darknet README
DKCFG = "https://raw.githubusercontent.com/AlexeyAB/darknet/master/cfg/"


@dataclass(frozen=True)
class Asset:
    file: str
    url: str
    model: str  # yoloforge model it converts to
    size_mb: float | None = None  # as the source states it (approximate)
    sha256: str | None = None  # where the release publishes one
    cfg: str | None = None  # darknet: the cfg file name (downloaded from DKCFG)
    source: str = ""  # where the size comes from


def _v7(model: str, training: bool = False, size=None, src="") -> Asset:
    f = f"{model}{'_training' if training else ''}.pt"
    return Asset(f, V7 + f, model, size, source=src)


ASSETS: dict[str, Asset] = {a.file: a for a in [
    _v7("yolov7"), _v7("yolov7", True), _v7("yolov7x"), _v7("yolov7x", True),
    _v7("yolov7-w6"), _v7("yolov7-w6", True), _v7("yolov7-e6"), _v7("yolov7-e6", True),
    _v7("yolov7-d6"), _v7("yolov7-d6", True), _v7("yolov7-e6e"), _v7("yolov7-e6e", True),
    _v7("yolov7-tiny", size=12.6, src="WongKinYiu/yolov7 issue 901 (maintainer: 'the official v7 tiny model is 12.6MB')"),
    *[Asset(f"{m}.pt", V6 + f"{m}.pt", m.replace("_", "-")) for m in
      ("yolov6n", "yolov6t", "yolov6s", "yolov6m", "yolov6l", "yolov6l_relu")],
    Asset("yolov4-tiny.weights", DK4 + "yolov4-tiny.weights", "yolov4-tiny", 23.1, cfg="yolov4-tiny.cfg",
          source="AlexeyAB/darknet README, pre-trained models: 23.1 MB"),
    Asset("yolov4-csp.weights", DK4 + "yolov4-csp.weights", "yolov4-csp", 202.0, cfg="yolov4-csp.cfg",
          source="AlexeyAB/darknet README, pre-trained models: 202 MB"),
]}

NOT_DOWNLOADABLE = {m: "ScaledYOLOv4 publishes yolov4-p5/p6/p7 .pt on Google Drive only (see its README); download it "
                       "yourself and pass the path" for m in ("yolov4-p5", "yolov4-p6", "yolov4-p7")}


def home() -> Path:
    h = os.environ.get("YOLOFORGE_HOME")
    if h:
        return Path(h).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yoloforge"


def asset_for(name: str, training: bool = False) -> Asset:
    """The release file of a model name (``yolov7-tiny``) or file name (``yolov7_training.pt``). ``training``:
    prefer the ``_training`` file (the one the official README fine-tunes from: it has the auxiliary head)."""
    n = str(name).strip()
    if n in ASSETS:
        return ASSETS[n]
    if n in NOT_DOWNLOADABLE:
        raise ValueError(f"{n}: no downloadable official weights: {NOT_DOWNLOADABLE[n]}")
    cands = [a for a in ASSETS.values() if a.model == n]
    if not cands:
        known = ", ".join(sorted({a.model for a in ASSETS.values()}))
        raise ValueError(f"{n}: no official weights known by that name; known models: {known} "
                         f"(or a file name such as yolov7_training.pt; `yoloforge weights list`)")
    train = [a for a in cands if a.file.endswith("_training.pt")]
    plain = [a for a in cands if not a.file.endswith("_training.pt")]
    return (train or plain)[0] if training else (plain or train)[0]


def is_release_name(s: str) -> bool:
    return str(s) in ASSETS


def _url(url: str) -> str:
    base = os.environ.get("YOLOFORGE_WEIGHTS_URL")
    return f"{base.rstrip('/')}/{url.rsplit('/', 1)[1]}" if base else url


def _index_path() -> Path:
    return home() / "weights" / "index.json"


def _index() -> dict:
    try:
        return json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}


def _record(file: str, info: dict) -> None:
    from yoloforge.utils.checkpoint import atomic_write_text

    idx = _index()
    idx[file] = info
    atomic_write_text(_index_path(), json.dumps(idx, indent=1, sort_keys=True))


class DownloadError(OSError):
    """A download that failed; the message is one line and says what to do."""


def download(url: str, dest: Path, sha256: str | None = None, retries: int = 3, timeout: float = 30.0,
             verbose: bool = True) -> Path:
    """``url`` -> ``dest``, through ``dest.part``: continued with a Range request after a broken connection (also
    across runs), checked against the server's length and ``sha256``; ``dest`` appears only when complete."""
    from tqdm import tqdm

    from yoloforge.convert.official import sha256 as sha256_of

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total = None
    last_err = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "yoloforge", **({"Range": f"bytes={have}-"} if have else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status = getattr(r, "status", 200)
                if have and status == 206:
                    cr = r.headers.get("Content-Range", "")  # bytes a-b/total
                    total = int(cr.rsplit("/", 1)[1]) if "/" in cr and cr.rsplit("/", 1)[1].isdigit() else None
                    mode = "ab"
                else:  # the server ignored the range (or a fresh start): from byte 0
                    have, mode = 0, "wb"
                    n = r.headers.get("Content-Length")
                    total = int(n) if n and n.isdigit() else None
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=dest.name, disable=not verbose, leave=False) as bar:
                    while True:
                        chunk = r.read(1 << 16)
                        if not chunk:
                            break
                        f.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # asked past the end: the part may already be whole
                total = have
            elif e.code in (404, 410):
                raise DownloadError(f"{url}: not found (HTTP {e.code})") from None
            else:
                last_err = f"HTTP {e.code} {e.reason}"
                time.sleep(min(2 ** attempt, 8) * 0.1)
                continue
        except (urllib.error.URLError, OSError, TimeoutError) as e:  # offline, refused, reset mid-body
            reason = getattr(e, "reason", e)
            last_err = f"{e.__class__.__name__}: {reason}"
            if part.exists() and part.stat().st_size > have:
                continue  # progress was made: continue from there at once
            time.sleep(min(2 ** attempt, 8) * 0.1)
            continue
        size = part.stat().st_size
        if total is not None and size != total:
            last_err = f"got {size} of {total} bytes"
            continue
        if sha256 and (got := sha256_of(part)) != sha256:
            part.unlink()
            raise DownloadError(f"{url}: sha256 {got[:16]}... is not the published {sha256[:16]}...; the file "
                                "was removed, try again")
        os.replace(part, dest)
        return dest
    raise DownloadError(f"cannot download {url} ({last_err}); offline? Download it yourself and pass its path, or "
                        f"set YOLOFORGE_WEIGHTS_URL to a mirror holding {dest.name}"
                        + (f" ({part.stat().st_size} bytes kept in {part}; the next try continues)" if part.exists() else ""))


def fetch(name: str, training: bool = False, verbose: bool = True) -> tuple[Path, Path | None, Asset]:
    """Download (or find in the cache) the release file of ``name``; returns (path, darknet cfg path, asset)."""
    from yoloforge.convert.official import sha256 as sha256_of

    a = asset_for(name, training)
    d = home() / "weights"
    dest = d / a.file
    rec = _index().get(a.file, {})
    if dest.is_file():
        want = a.sha256 or rec.get("sha256")
        if want and sha256_of(dest) != want:
            LOG.warning(f"{dest}: its sha256 is not the one recorded when it was downloaded; downloading it again")
            dest.unlink()
    if not dest.is_file():
        if verbose:
            size = f", about {a.size_mb:g} MB" if a.size_mb else ""
            LOG.info(f"downloading {a.file} ({a.model}{size}) from {_url(a.url)} to {d}")
        download(_url(a.url), dest, a.sha256, verbose=verbose)
        if a.size_mb and not os.environ.get("YOLOFORGE_WEIGHTS_URL"):
            mb = dest.stat().st_size / 1e6
            if abs(mb - a.size_mb) > 0.1 * a.size_mb:
                dest.unlink()
                raise DownloadError(f"{a.url}: {mb:.1f} MB, but the release states {a.size_mb:g} MB; removed")
        _record(a.file, {"sha256": sha256_of(dest), "bytes": dest.stat().st_size, "url": _url(a.url),
                         "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    cfg = None
    if a.cfg:
        cfg = d / a.cfg
        if not cfg.is_file():
            download(_url(DKCFG + a.cfg), cfg, verbose=verbose)
    return dest, cfg, a


def pretrained(name: str, training: bool = False, verbose: bool = True) -> Path:
    """The converted yoloforge ``.safetensors`` of an official release (downloaded and converted once)."""
    from yoloforge.convert.official import convert, sha256 as sha256_of, summary
    from yoloforge.utils.checkpoint import read_weights

    src, cfg, a = fetch(name, training, verbose)
    out = src.with_suffix(".safetensors")
    digest = _index().get(a.file, {}).get("sha256")
    if out.is_file():
        try:
            meta = read_weights(out)[1]
            if meta.get("source", {}).get("sha256") == (digest or sha256_of(src)):
                if verbose:
                    LOG.info(f"pretrained {a.model}: {a.file} (cached, converted: {out})")
                return out
        except Exception:  # noqa: BLE001 - a damaged cache entry is converted again
            pass
    model, meta = convert(src, out, cfg=cfg, verbose=False)
    if verbose:
        LOG.info(f"pretrained {a.model}: {a.file} from {_url(a.url)}\n{summary(meta)}\n  written    : {out}")
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="official pretrained weights: list them, or download and convert one")
    s = p.add_subparsers(dest="weights_verb", required=True)
    s.add_parser("list", help="the release files known by name, with their URL, size and cache state")
    g = s.add_parser("get", help="download (resumable), verify and convert one; prints the .safetensors path")
    g.add_argument("name", help="a model name (yolov7-tiny) or a release file name (yolov7_training.pt)")
    g.add_argument("--training", action="store_true", help="the _training file where there is one (aux head)")


def run(a) -> int:
    if a.weights_verb == "list":
        d = home() / "weights"
        idx = _index()
        print(f"cache: {d}")
        for f, x in ASSETS.items():
            size = f"{x.size_mb:g} MB" if x.size_mb else "size not stated"
            got = "cached" if (d / f).is_file() else ""
            sha = idx.get(f, {}).get("sha256", x.sha256 or "")
            print(f"  {f:24s} {x.model:14s} {size:16s} {got:7s} {x.url}" + (f"  sha256 {sha[:16]}..." if sha else ""))
        for m, why in NOT_DOWNLOADABLE.items():
            print(f"  {m}: {why}")
        return 0
    print(pretrained(a.name, training=a.training))
    return 0
