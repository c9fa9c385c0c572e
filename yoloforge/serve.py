"""``yoloforge serve``: an HTTP API and a browser page around one model (FastAPI + uvicorn).

    GET  /         a page: drop an image (or take a webcam frame), see boxes, labels and scores; conf/iou sliders
    GET  /health   200 {"status": "ok", "model": ..., "backend": ..., "classes": nc}
    POST /predict  multipart field ``file`` (+ optional form fields ``conf``, ``iou``) ->
                   {"detections": [{"box": [x1, y1, x2, y2], "score": s, "class": c, "name": n}, ...],
                    "image": {"width": w, "height": h}, "speed_ms": {"decode", "queue", "pre", "model", "post"}}

Boxes are in the original image's pixels. Requests that arrive together are run as one batch (up to
``max_batch`` images, waiting at most ``max_wait_ms`` for company), each with its own thresholds. Bad input
gets a 4xx with a one-line ``{"error": ...}``: not an image (400), wrong content type (415), a file or an
image bigger than the limits (413), a missing field or a bad threshold (422). Nothing returns a traceback.
"""

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from yoloforge.config import PREDICT_NMS
from yoloforge.utils.logging import get_logger

LOG = get_logger()
PAGE = Path(__file__).with_name("serve_page.html")
IMAGE_TYPES = ("image/", "application/octet-stream")


class RequestError(Exception):
    """A request the client must fix: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> BGR image; refuses what is not an image, and images above ``max_pixels`` before decoding."""
    from yoloforge.data.formats import header_size

    if not data:
        raise RequestError(400, "the uploaded file is empty")
    try:
        hw, _ = header_size(io.BytesIO(data))
    except Exception:  # a header too short to parse: let the decoder say what it is
        hw = None
    if hw and hw[0] * hw[1] > max_pixels:
        raise RequestError(413, f"image is {hw[1]}x{hw[0]} pixels, more than this server's limit of "
                                f"{max_pixels} pixels")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise RequestError(413 if "size" in str(e).lower() else 400,
                           f"image could not be decoded ({str(e).splitlines()[-1].strip() or 'cv2 error'})") from None
    if img is None:
        raise RequestError(400, "not an image, or a corrupt one (JPEG, PNG, BMP, WebP, TIFF are read)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise RequestError(413, f"image is {img.shape[1]}x{img.shape[0]} pixels, more than this server's limit "
                                f"of {max_pixels} pixels")
    return img


def parse_threshold(value, name: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0 or v != v:
        raise RequestError(422, f"{name} must be a number in [0, 1], got {value!r}")
    return v


class Batcher:
    """Collects concurrent requests and runs them through ``predictor.predict_batch`` together, in one worker
    thread (the model is not run concurrently with itself)."""

    def __init__(self, predictor, max_batch: int = 8, max_wait_ms: float = 5.0):
        self.predictor, self.max_batch, self.max_wait = predictor, max(1, int(max_batch)), max_wait_ms / 1e3
        self.queue: asyncio.Queue | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="yoloforge-model")
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # size of every batch run (the tests and /health read it)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, img: np.ndarray, conf: float, iou: float):
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((img, conf, iou, fut, time.perf_counter()))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            t = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.pool, lambda: self.predictor.predict_batch(
                    [b[0] for b in batch], conf=[b[1] for b in batch], iou=[b[2] for b in batch]))
            except Exception as e:  # the model failed: every waiting request gets the message
                LOG.error(f"serve: the model failed on a batch of {len(batch)}: {e.__class__.__name__}: {e}")
                for b in batch:
                    if not b[3].done():
                        b[3].set_exception(e)
                continue
            self.batches.append(len(batch))
            for b, r in zip(batch, results):
                if not b[3].done():
                    r.speed_ms["queue"] = 1e3 * (t - b[4])
                    b[3].set_result(r)


def result_json(r, decode_ms: float) -> dict:
    h, w = r.orig_img.shape[:2]
    dets = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 5), "class": int(c),
             "name": r.names[int(c)] if 0 <= int(c) < len(r.names) else str(int(c))}
            for b, s, c in zip(r.boxes, r.scores, r.classes)]
    speed = {"decode": round(decode_ms, 3), **{k: round(float(v), 3) for k, v in r.speed_ms.items()}}
    return {"detections": dets, "image": {"width": int(w), "height": int(h)}, "speed_ms": speed}


def create_app(weights, *, conf: float = PREDICT_NMS.conf, iou: float = PREDICT_NMS.iou, imgsz: int | None = None, backend: str = "auto",
               device: str = "", max_batch: int = 8, max_wait_ms: float = 5.0, max_bytes: int = 32 << 20,
               max_pixels: int = 8192 * 8192, detector=None):
    """The ASGI app serving ``weights`` (any file :class:`yoloforge.Detector` opens, or an open ``detector``)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as e:
        raise RuntimeError(f"yoloforge serve needs FastAPI and uvicorn: pip install 'yoloforge[serve]' ({e})") from None
    from contextlib import asynccontextmanager

    from yoloforge.api import Detector

    det = detector if detector is not None else Detector(str(weights), device=device)
    pred = det.predictor(imgsz=imgsz, conf=conf, iou=iou, backend=backend)
    batcher = Batcher(pred, max_batch, max_wait_ms)
    info = {"status": "ok", "model": det.meta.get("model") or getattr(det.model, "name", "?"),
            "weights": Path(str(weights)).name if weights else None, "backend": type(pred.model).__name__,
            "classes": len(pred.names), "names": pred.names, "imgsz": pred.imgsz, "conf": conf, "iou": iou,
            "max_batch": batcher.max_batch}

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="yoloforge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.batcher = batcher

    def error(status: int, msg: str):
        return JSONResponse({"error": msg}, status_code=status)

    @app.exception_handler(RequestError)
    async def _req_error(request, e: RequestError):
        return error(e.status, e.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ())[1:]) or 'request'}: {err.get('msg')}" for err in e.errors()]
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):  # no traceback leaves the server
        LOG.error(f"serve: {request.url.path}: {e.__class__.__name__}: {e}")
        return error(500, f"internal error ({e.__class__.__name__}); the server log has the details")

    @app.get("/health")
    async def health():
        return {**info, "batches": len(batcher.batches)}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.post("/predict")
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise RequestError(415, f"send the image as multipart/form-data with a field 'file' (got content "
                                    f"type {ctype or 'none'!r})")
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > max_bytes + 65536:
            raise RequestError(413, f"request of {int(size)} bytes is over this server's limit of {max_bytes} bytes")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:
            raise RequestError(400, f"malformed multipart body ({e.__class__.__name__}: {e})") from None
        f = form.get("file")
        if f is None or isinstance(f, str):
            raise RequestError(422, "file: missing (send the image in a multipart field named 'file')")
        ftype = (f.content_type or "").lower()
        if ftype and not ftype.startswith(IMAGE_TYPES):
            raise RequestError(415, f"file: expected an image (image/jpeg, image/png, ...), got {ftype!r}")
        c = parse_threshold(form.get("conf"), "conf", conf)
        u = parse_threshold(form.get("iou"), "iou", iou)
        data = await f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RequestError(413, f"file is over this server's limit of {max_bytes} bytes")
        t = time.perf_counter()
        img = decode_image(data, max_pixels)
        decode_ms = 1e3 * (time.perf_counter() - t)
        r = await batcher.submit(img, c, u)
        return result_json(r, decode_ms)

    return app


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API + browser page for a model (FastAPI + uvicorn)")
    p.add_argument("--weights", required=True, help="yoloforge .safetensors, an export, or an official checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--conf", type=float, default=PREDICT_NMS.conf, help="default confidence threshold (a request may set its own)")
    p.add_argument("--iou", type=float, default=PREDICT_NMS.iou, help="default NMS IoU threshold (a request may set its own)")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the training size)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="auto: on a CPU the fastest installed runtime")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 or a GPU index")
    p.add_argument("--max-batch", type=int, default=8, help="concurrent requests run as one batch, at most this many")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with")
    p.add_argument("--max-mb", type=float, default=32.0, help="largest upload accepted, in MiB")


def run(a) -> int:
    try:
        import uvicorn
    except ImportError as e:
        raise RuntimeError(f"yoloforge serve needs FastAPI and uvicorn: pip install 'yoloforge[serve]' ({e})") from None
    app = create_app(a.weights, conf=a.conf, iou=a.iou, imgsz=a.imgsz, backend=a.backend, device=a.device,
                     max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, max_bytes=int(a.max_mb * (1 << 20)))
    print(f"yoloforge serve: http://{a.host}:{a.port}/ (page), POST /predict, GET /health, /docs; Ctrl-C stops")
    uvicorn.run(app, host=a.host, port=a.port, log_level="info")
    return 0
