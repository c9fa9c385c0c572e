"""The family-agnostic trainer.

It knows a model only through the contract in docs/ARCHITECTURE.md: ``build_loss(hyp)``,
``default_hyp``, ``stride``, ``fuse()`` and the eval output. One process or torch DDP
(``torchrun --nproc_per_node N -m yoloforge train ...``): rank 0 alone logs, validates and writes.

Nothing is lost: every epoch writes ``weights/last.safetensors`` and ``weights/last.state.pt``
atomically; Ctrl-C writes both at the last optimizer step, and ``--resume`` continues from there
(with ``--deterministic`` bit for bit: the sampler order and augmentations depend only on seed,
epoch and index, and the skipped batches are not drawn again).
"""
from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from yoloforge.config import TrainConfig, load_hyp
from yoloforge.engine import ddp
from yoloforge.engine.ema import ModelEMA, unwrap
from yoloforge.engine.errors import TrainingError
from yoloforge.engine.evaluator import Metrics, evaluate
from yoloforge.engine.hooks import training_hooks
from yoloforge.engine.optim import apply_schedule, build_optimizer, lr_lambda, step_due, warmup_iters
from yoloforge.utils import checkpoint as ckpt
from yoloforge.utils.logging import get_logger
from yoloforge.weights import load_model

LOG = get_logger()


def compile_for_training(model: nn.Module, backend: str = "inductor", device: torch.device | None = None):
    """``--compile BACKEND``: ``torch.compile`` of the training forward; the model, its EMA and the saved weights
    stay the eager module. On CPU, inductor's layout optimization is turned off: it would make the convolutions
    NHWC behind the back of the oneDNN guard (models/base.py), and the compiled step then corrupted the heap
    (benchmarks/train_levers.py); and the guard's layout fix is applied before tracing."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"bad config value compile={backend!r}: use one of {', '.join(sorted(known))}")
    if device is None or device.type == "cpu":
        import torch._inductor.config as inductor_config

        from yoloforge.models.base import apply_onednn_guard

        inductor_config.layout_optimization = False  # process-wide; the oneDNN bug is CPU-only
        apply_onednn_guard(unwrap(model))
    return torch.compile(model, backend=backend)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _sigterm_as_interrupt():
    """SIGTERM (what schedulers, containers and ``kill`` send) handled as Ctrl-C: the trainer saves a resumable
    state and stops. Returns the previous handler (None off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    return signal.signal(signal.SIGTERM, handler)


def next_run_dir(project: str | Path, name: str, exist_ok: bool) -> Path:
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    i = 2
    while (Path(project) / f"{name}{i}").exists():
        i += 1
    return Path(project) / f"{name}{i}"


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(int(v) for v in s["python"]), s["python_pos"]))
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), int(s["numpy_pos"]), 0, 0.0))


def amp_dtype(mode: str | bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp MODE`` on ``device`` (None: fp32). auto = fp16 on CUDA, bf16 on a CPU that
    computes bf16 natively (AVX512-BF16 / AMX: 1.7x the fp32 step of yolov6n at 320, benchmarks/
    train_levers.py), off on other CPUs (there bf16 is emulated, 0.10x) and other devices."""
    from yoloforge.utils.cpu import native_bf16_cpu

    mode = ("auto" if mode else "off") if isinstance(mode, bool) else mode
    if mode == "off" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16":
        raise ValueError("--amp fp16 is for CUDA; on a CPU use --amp bf16 (or auto)")
    native = native_bf16_cpu()
    if mode == "auto" and not native:
        return None
    if mode == "bf16" and not native:
        LOG.warning("--amp bf16 on a CPU without native bf16 (no AVX512-BF16 / AMX): emulated, about 10x slower than fp32")
    return torch.bfloat16


def to_float(x):
    """``x`` (a tensor, or lists / tuples / dicts of them) with every floating tensor in fp32."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(to_float(v) for v in x)
    if isinstance(x, dict):
        return {k: to_float(v) for k, v in x.items()}
    return x


class Trainer:
    def __init__(self, cfg: TrainConfig | dict, model: nn.Module | None = None, resume_epochs: int | None = None,
                 callbacks=None, hooks=()):
        """``resume_epochs``: with ``cfg.resume``, train up to this many epochs instead of the saved count.
        ``callbacks``: objects with any of the hooks of :class:`yoloforge.engine.callbacks.Callback`, called
        after the default loggers (TensorBoard, MLflow with ``cfg.mlflow``). ``hooks``: training techniques
        (:class:`yoloforge.engine.hooks.TrainHook`) added to, or replacing by name, the ones the run selects."""
        self.cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
        self.given_model = model
        self.given_hooks = list(hooks)
        self.resume_epochs = resume_epochs
        self.user_callbacks = list(callbacks or [])
        from yoloforge.engine.callbacks import CallbackList

        self.callbacks = CallbackList()  # train() adds the default loggers and the user's callbacks
        self._last_step_batch = 0
        self.iteration = 0
        self._saved_at = None  # where the newest state written is from ("epoch 3, batch 5")
        self._saved_step_it = None  # the last optimizer step (global iteration) inside the newest state written
        self.rows: list[dict] = []  # results.csv, kept in the resume state too (a kill never loses a row)
        self._loss_at_step = None  # (sum of batch losses, batches) of this epoch up to the last optimizer step
        self.stop_reason: str | None = None  # set by request_stop()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        resume_state = None
        if cfg.resume:
            resume_state, run_dir = self._find_resume(cfg.resume)
            saved = TrainConfig.from_dict(resume_state["cfg"])
            # resuming keeps the run's config; only the epoch count may be extended
            saved.epochs = max(saved.epochs, self.resume_epochs or 0)
            saved.resume, saved.workers, saved.device = cfg.resume, cfg.workers, cfg.device
            if cfg.data:  # the same data moved elsewhere (or a run started with a relative path)
                saved.data = cfg.data
            elif saved.data and not Path(saved.data).exists():
                raise TrainingError(f"--resume {cfg.resume}: its data yaml {saved.data} is not found from here "
                                    f"({Path.cwd()}); pass --data with the path to it")
            self.cfg = cfg = saved
        if cfg.data and Path(cfg.data).exists():
            cfg.data = str(Path(cfg.data).resolve())  # the state keeps an absolute path: resume works from anywhere
        self.device = ddp.setup(cfg.device)
        self._set_threads()
        self.rank, self.world = ddp.rank(), ddp.world_size()
        if self.device.type == "cuda" and not cfg.deterministic:
            torch.backends.cudnn.benchmark = True  # fastest kernels per input shape (the official scripts too)
        self.main = self.rank == 0
        seed_everything(cfg.seed + self.rank, cfg.deterministic)

        from yoloforge.data.dataset import DetectionDataset
        from yoloforge.data.formats import load_data_yaml
        from yoloforge.data.loader import build_dataloader

        if not cfg.data:
            raise ValueError("no dataset given: pass --data path/to/data.yaml")
        self.data = load_data_yaml(cfg.data)
        self.names = list(self.data.names)
        if not self.data.train:
            raise ValueError(f"{cfg.data}: no 'train' entry")

        self.model = self._build_model()
        max_stride = int(self.model.stride.max())
        if cfg.imgsz % max_stride:
            raise ValueError(f"imgsz {cfg.imgsz} must be a multiple of {max_stride} (the largest stride of "
                             f"{self.model.name})")
        self.hyp = load_hyp(self.model.default_hyp, self.model.name, cfg.hyp or None, cfg.hyp_override)
        self.model.to(self.device)
        if cfg.channels_last:  # in place: the parameters stay the same objects (optimizer, EMA, DDP)
            self.model.to(memory_format=torch.channels_last)

        if cfg.resume:
            self.run_dir = run_dir
        else:
            self.run_dir = next_run_dir(cfg.project, cfg.name, cfg.exist_ok) if self.main else Path(cfg.project) / cfg.name
            self.run_dir = ddp.broadcast_object(self.run_dir)
        self.wdir = self.run_dir / "weights"
        self.csv_path = self.run_dir / "results.csv"
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            for tmp in self.wdir.glob(".*.tmp"):  # half-written files of a run that was killed while saving
                tmp.unlink(missing_ok=True)
            (self.run_dir / "args.yaml").write_text(_yaml_dump({"cfg": cfg.to_dict(), "hyp": self.hyp}))

        verbose = cfg.verbose and self.main
        self.train_ds = DetectionDataset(self.data.train, self.names, imgsz=cfg.imgsz, augment=True, hyp=self.hyp,
                                         cache=cfg.cache or False, seed=cfg.seed, verbose=verbose)
        self.batch = cfg.batch // self.world if self.world > 1 else cfg.batch
        if self.world > 1 and cfg.batch % self.world:
            raise ValueError(f"batch {cfg.batch} is not divisible by the {self.world} DDP processes")
        from yoloforge.data.loader import auto_workers
        from yoloforge.utils.dist import local_world_size

        self.workers = cfg.workers if cfg.workers >= 0 else auto_workers(self.device.type, self.free_cores,
                                                                         local_world_size(self.world))
        self.train_loader = build_dataloader(self.train_ds, self.batch, self.workers, shuffle=bool(self.hyp["shuffle"]),
                                             seed=cfg.seed,
                                             rank=self.rank, world_size=self.world, drop_last=self.world > 1)
        self.val_loader = None
        if self.main and self.data.val:
            val_batch = max(self.batch * 2, 2)  # rectangular batches, as the official train-time test
            self.val_ds = DetectionDataset(self.data.val, self.names, imgsz=cfg.imgsz, augment=False,
                                           seed=cfg.seed, verbose=verbose, stride=max_stride, rect_batch=val_batch)
            self.val_loader = build_dataloader(self.val_ds, val_batch, self.workers, shuffle=False, seed=cfg.seed)

        self.accumulate = max(round(cfg.nbs / cfg.batch), 1)
        self.nominal_accumulate = cfg.nbs / cfg.batch  # the warm-up ramps the accumulation from 1 to this
        self.close_mosaic = cfg.close_mosaic if cfg.close_mosaic >= 0 else int(self.hyp.get("close_mosaic", 0))
        if self.hyp.get("paste_in", 0) and self.main:
            LOG.warning(f"hyp paste_in={self.hyp['paste_in']} is not applied: yolov7's paste-in needs polygon "
                        f"segments, which yoloforge's datasets do not load")
        self.hooks = training_hooks(self, self.given_hooks)
        for h in self.hooks:
            h.prepare(self)
        weight_decay = self.hyp["weight_decay"] * cfg.batch * self.accumulate / cfg.nbs
        opt_cls = next((h.optimizer_cls for h in self.hooks if h.optimizer_cls is not None), torch.optim.SGD)
        self.optimizer = build_optimizer(self.model, self.hyp, weight_decay, cls=opt_cls)
        for h in self.hooks:
            h.attach(self, resume_state)
        self.lf = lr_lambda(self.hyp, cfg.epochs)
        self.loss_fn = self.model.build_loss(self.hyp)
        for h in self.hooks:
            self.loss_fn = h.wrap_loss(self, self.loss_fn)
        if resume_state is None and self.hyp.get("init_fp16_round") and not cfg.weights and self.given_model is None:
            with torch.no_grad():  # yolov7 train.py: model.half().float() before training from scratch
                for t in list(self.model.parameters()) + list(self.model.buffers()):
                    if t.dtype.is_floating_point:
                        t.copy_(t.half().float())
        self.ema = ModelEMA(self.model, self.hyp["ema_decay"], self.hyp["ema_tau"]) if self.main else None
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.use_amp = self.amp_dtype is not None
        # fp16 needs loss scaling; bf16 has fp32's exponent range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda")
        self.start_epoch, self.start_batch, self.best_fitness, self.bad_epochs = 0, 0, -1.0, 0
        self.last_step_it = -1  # global iteration of the last optimizer step (YOLOv6's step rule)
        if resume_state is not None:
            self._load_resume(resume_state)
        if self.world > 1:
            if cfg.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = ddp.wrap(self.model, self.device)
        self.train_forward = self.model
        if cfg.compile:
            if self.main:
                LOG.info(f"torch.compile({cfg.compile}) of the training forward: the first steps compile (a minute "
                         f"or more on CPU for a small model), later ones run the compiled graph")
            self.train_forward = compile_for_training(self.model, cfg.compile, self.device)

    def _set_threads(self) -> None:
        """CPU: ``--threads N``, else (auto) the cores other processes leave free, re-checked every epoch by
        :meth:`_adapt_threads`; fixed where the user fixed them (OMP_NUM_THREADS) or asked for bit-exact reruns."""
        from yoloforge.utils import cpu

        self._core_meter = None
        cpu_auto = (self.device.type == "cpu" and not self.cfg.threads and not self.cfg.deterministic
                    and "OMP_NUM_THREADS" not in os.environ)
        # the free cores (a 0.3 s sample) size the auto threads and the loader of --workers -1
        self.free_cores = cpu.free_threads(cpu.measure_others(0.3)) if cpu_auto or self.cfg.workers < 0 else None
        if self.device.type != "cpu":
            return
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        elif cpu_auto:
            n = self.free_cores
            torch.set_num_threads(n)
            self._core_meter = cpu.CoreMeter()
            if n < cpu.available_cores():
                LOG.info(f"{n} torch thread(s): other processes keep {cpu.available_cores() - n} of the "
                         f"{cpu.available_cores()} cores busy (--threads N fixes the count)")

    def _adapt_threads(self, epoch: int) -> None:
        from yoloforge.utils import cpu

        if self._core_meter is None:
            return
        n = cpu.free_threads(self._core_meter.others())
        if n != torch.get_num_threads():
            LOG.info(f"epoch {epoch + 1}: {n} torch thread(s) for the cores other processes leave free "
                     f"(was {torch.get_num_threads()})")
            torch.set_num_threads(n)

    def _resolve_weights(self, w: str) -> str:
        """``official`` (the model's official release file, its _training one where there is one) or a release
        file name that is not a local file -> the converted weights in the cache (:mod:`yoloforge.hub`)."""
        if not w or Path(w).exists():
            return w
        from yoloforge import hub

        if w != "official" and not hub.is_release_name(w):
            return w  # load_model says it is not found
        name = self.cfg.model if w == "official" else w
        if not self.main:
            ddp.barrier()  # rank 0 downloads first; the others then find it in the cache
        path = str(hub.pretrained(name, training=(w == "official"), verbose=self.main))
        if self.main:
            ddp.barrier()
        return path

    def _build_model(self) -> nn.Module:
        from yoloforge.families.registry import build_model

        cfg, nc = self.cfg, len(self.names)
        weights = self._resolve_weights(cfg.weights)
        if self.given_model is not None or weights:
            model = self.given_model if self.given_model is not None else load_model(weights)[0]
            if self.given_model is None and model.name != cfg.model and self.main:
                LOG.warning(f"--weights {cfg.weights} holds {model.name}; training {model.name}, not --model {cfg.model}")
            if model.nc != nc:
                LOG.info(f"{cfg.weights or model.name}: trained for {model.nc} classes, data has {nc}: "
                         f"re-initializing the class outputs only")
                fresh = build_model(model.name, **dict(model.build_kwargs, nc=nc))
                own = fresh.state_dict()
                fresh.load_state_dict({k: v for k, v in model.state_dict().items()
                                       if k in own and own[k].shape == v.shape}, strict=False)
                model = fresh
        else:
            kw = dict(cfg.model_kw)
            if cfg.training_mode:
                from yoloforge.families import family_of

                if not family_of(cfg.model).training_modes:
                    raise TrainingError(f"--training-mode is a YOLOv6 option; {cfg.model} has no RepVGG blocks")
                kw["training_mode"] = cfg.training_mode
            model = build_model(cfg.model, nc=nc, **kw)
        mode = getattr(getattr(model, "spec", None), "training_mode", None)
        if cfg.training_mode and mode != cfg.training_mode:
            raise TrainingError(f"--training-mode {cfg.training_mode}: the weights {cfg.weights} were trained with "
                                f"training_mode {mode}; fine-tune them in their own mode (leave --training-mode out)")
        if getattr(model, "fused", False):
            raise TrainingError(f"model {model.name} is fused (deploy form) and cannot be trained; start from unfused weights")
        model.names = self.names
        return model

    # ------------------------------------------------------------------ resume
    def _find_resume(self, resume: str):
        p = Path(resume)
        if resume == "auto":
            states = sorted(Path(self.cfg.project).glob("*/weights/last.state.pt"), key=lambda f: f.stat().st_mtime)
            if not states:
                raise TrainingError(f"--resume auto: no weights/last.state.pt under {self.cfg.project}")
            p = states[-1]
        elif p.is_dir():
            p = p / "weights" / "last.state.pt"
        elif p.suffix == ".safetensors":
            p = p.with_name(p.name.replace(".safetensors", ".state.pt"))
        state = ckpt.load_state(p)
        if "optimizer" not in state or "model" not in state:  # (load_state returns a dict or raises)
            raise TrainingError(f"{p}: has no optimizer state, so training cannot be resumed; "
                                f"fine-tune from it instead with --weights")
        ckpt.require_keys(state, p, ("ema", "ema_updates", "epoch", "batch", "best_fitness", "cfg", "rng"))
        if state.get("finished") and (self.resume_epochs or 0) <= int(state["epoch"]):
            raise TrainingError(f"{p}: this run already finished its {state['epoch']} epochs; "
                                f"pass a larger --epochs to continue it, or fine-tune with --weights")
        return state, p.parent.parent

    def _load_resume(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(s["ema"])
            self.ema.updates = int(s["ema_updates"])
        self.start_epoch, self.start_batch = int(s["epoch"]), int(s["batch"])
        self.best_fitness, self.bad_epochs = float(s["best_fitness"]), int(s.get("bad_epochs", 0))
        self.last_step_it = int(s.get("last_step_it", -1))
        self._saved_step_it = self.last_step_it  # the state just read is current until the next step
        self.rows = [dict(r) for r in s.get("rows", [])]
        if "rows" not in s and self.csv_path.is_file():  # a state from before rows were kept in it
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= self.start_epoch]
        if s.get("loss_sum") is not None and self.start_batch:
            self._loss_at_step = (torch.as_tensor(s["loss_sum"]).float(), int(s.get("loss_n", 0)))
        if self.main and self.rows:
            self._write_csv()  # rebuilt from the state: a row a kill kept from results.csv comes back
        if self.rank == 0 and "rng" in s:
            _set_rng_state(s["rng"])
        if self.main:
            LOG.info(f"resuming {self.run_dir} at epoch {self.start_epoch + 1}"
                     + (f", batch {self.start_batch}" if self.start_batch else ""))

    def _save_state(self, epoch: int, batch: int, finished: bool = False) -> None:
        """Write last.safetensors (EMA weights) and last.state.pt at an optimizer-step boundary."""
        if not self.main:
            return
        if not self._weights_finite():  # never overwrite the last good state with inf/NaN weights
            raise TrainingError(f"the weights became non-finite at epoch {epoch + 1} (the loss still finite): "
                                + (f"the last finite weights are kept in {self.wdir / 'last.safetensors'}, from "
                                   f"{self._saved_at}" if self._saved_at else "No finite weights were saved in this run")
                                + "; the learning rate is probably too high (try --hyp-override lr0=...)")
        state = {"model": unwrap(self.model).state_dict(), "ema": self.ema.ema.state_dict(),
                 "ema_updates": self.ema.updates, "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                 "batch": batch, "best_fitness": self.best_fitness, "bad_epochs": self.bad_epochs,
                 "last_step_it": self.last_step_it, "rows": [dict(r) for r in self.rows],
                 "loss_sum": self._loss_at_step[0] if (batch and self._loss_at_step) else None,
                 "loss_n": self._loss_at_step[1] if (batch and self._loss_at_step) else 0,
                 "cfg": self.cfg.to_dict(), "rng": _rng_state(), "finished": finished}
        ckpt.save_state(self.wdir / "last.state.pt", state)
        self._saved_step_it = self.last_step_it
        ckpt.save_weights(self.wdir / "last.safetensors", self.ema.ema, self._meta(epoch))
        self._saved_at = f"epoch {epoch + 1}, batch {batch}" if batch else f"the end of epoch {epoch}"

    def _meta(self, epoch: int, metrics: Metrics | None = None) -> dict:
        m = unwrap(self.model)
        return {"model": m.name, "build_kwargs": m.build_kwargs, "names": self.names, "imgsz": self.cfg.imgsz,
                "epoch": epoch, "hyp": self.hyp, "metrics": metrics.to_dict() if metrics else None}

    # ------------------------------------------------------------------ loop
    def train(self) -> Path:
        from yoloforge.engine.callbacks import CallbackList, default_callbacks

        self._setup()
        cfg = self.cfg
        self.callbacks = CallbackList(default_callbacks(cfg) + self.user_callbacks if self.main else [])
        nb = len(self.train_loader)
        n_warmup = warmup_iters(self.hyp, nb, cfg.epochs)
        if self.main and n_warmup > 0.5 * nb * cfg.epochs:
            LOG.warning(f"the warm-up ({n_warmup} iterations, at least {self.hyp.get('warmup_min_iters')} as in the "
                        f"official recipe) is {100 * n_warmup / (nb * cfg.epochs):.0f}% of this run of {nb * cfg.epochs} "
                        f"iterations; on a small dataset or a short run consider --hyp small-data")
        if self.main:
            LOG.info(f"training {unwrap(self.model).name} on {len(self.train_ds)} images for {cfg.epochs} epochs "
                     f"(batch {cfg.batch}, accumulate {self.accumulate}, imgsz {cfg.imgsz}, {self.device}, "
                     + (f"{str(self.amp_dtype).split('.')[-1]} autocast" if self.use_amp else "fp32")
                     + (f", {self.world} processes" if self.world > 1 else "") + f") -> {self.run_dir}")
            if cfg.plots:
                self._plot_labels()
            self.callbacks("on_train_start", self)
        self.optimizer.zero_grad(set_to_none=True)
        metrics = Metrics()
        epoch = self.start_epoch
        old_term = _sigterm_as_interrupt()
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self._adapt_threads(epoch)
                self._train_epoch(epoch, nb, n_warmup)
                metrics = self._end_epoch(epoch)
                if self._should_stop(epoch):
                    break
        except KeyboardInterrupt:
            if self.main:
                if self._saved_step_it == self.last_step_it and (self.wdir / "last.state.pt").is_file():
                    # no optimizer step since the newest state (e.g. an epoch's end, its val, or the next epoch's
                    # first batch): that state is exact, a new one would only mislabel where the run stands
                    LOG.warning(f"interrupted: the state saved at {self._saved_at} is current; "
                                f"continue with: yoloforge train --resume {self.run_dir}")
                else:
                    self._restore_step_buffers()
                    self._save_state(epoch, self._last_step_batch)
                    LOG.warning(f"interrupted: state saved at epoch {epoch + 1}, batch {self._last_step_batch}; "
                                f"continue with: yoloforge train --resume {self.run_dir}")
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            ddp.cleanup()
        if self.main:
            return self._finish(epoch, metrics)
        return self.wdir / "best.safetensors"

    def _train_epoch(self, epoch: int, nb: int, n_warmup: int) -> None:
        cfg, ds = self.cfg, self.train_ds
        ds.set_epoch(epoch)
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        if self.close_mosaic and epoch >= cfg.epochs - self.close_mosaic and ds.mosaic:
            ds.mosaic = False
            ds.mixup_enabled = False
            if self.main:
                LOG.info(f"epoch {epoch + 1}: closing mosaic and mixup for the last {self.close_mosaic} epochs")
        self.model.train()
        start = self.start_batch if epoch == self.start_epoch else 0
        self._last_step_batch = start
        rule = self.hyp.get("step_rule", "modulo")
        if rule != "epoch":  # the official loops zero the gradients at every epoch start (leftovers are dropped)
            self.optimizer.zero_grad(set_to_none=True)
        self._snapshot_step_buffers()
        carry = self._loss_at_step if (epoch == self.start_epoch and start and self._loss_at_step) else None
        loss_sum, loss_n = (carry[0].clone(), carry[1]) if carry else (None, 0)  # the batches before a resume count
        self._loss_at_step = (loss_sum.clone(), loss_n) if loss_sum is not None else None
        mloss = loss_sum / loss_n if loss_n else None
        pbar = tqdm(enumerate(self.train_loader), total=nb, disable=not (self.main and cfg.verbose),
                    desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True, leave=False)
        t0 = time.time()
        for i, (imgs, targets, _) in pbar:
            if i < start:
                continue  # resumed mid-epoch: these batches already went into the weights
            it = i + nb * epoch
            acc = apply_schedule(self.optimizer, self.hyp, self.lf, epoch, it, n_warmup, nb, self.nominal_accumulate)
            imgs = imgs.to(self.device, non_blocking=True).float().div_(255)
            if self.cfg.channels_last:
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            targets = targets.to(self.device, non_blocking=True)
            for h in self.hooks:
                imgs, targets = h.batch(self, imgs, targets, epoch, i)
            with self._autocast():
                outputs = self.train_forward(imgs)
                extra = tuple(x for h in self.hooks for x in h.loss_inputs(self, imgs))
                with self._loss_precision():
                    if self._loss_fp32:
                        outputs, extra = to_float((outputs, extra))
                    loss, items = self.loss_fn(outputs, targets, epoch, *extra)
            if not torch.isfinite(loss):
                self._abort_nonfinite(epoch, i, items)
            self.scaler.scale(loss).backward()
            if step_due(rule, it, i, nb, acc if rule != "epoch" else self.accumulate, self.last_step_it):
                self._optimizer_step()
                self._last_step_batch = i + 1
                self.last_step_it = it
            loss_sum = items.detach().float().cpu().clone() if loss_sum is None else loss_sum + items.detach().float().cpu()
            loss_n += 1
            mloss = loss_sum / loss_n
            if self._last_step_batch == i + 1:
                self._loss_at_step = (loss_sum.clone(), loss_n)
            self.iteration = it + 1
            if self.main:
                pbar.set_postfix({n: f"{v:.3f}" for n, v in zip(self.loss_fn.names, mloss.tolist())})
                if cfg.plots and epoch == self.start_epoch and i - start < 3:
                    self._plot_train_batch(imgs, targets, i - start)
                self.callbacks("on_batch_end", self, epoch, i, dict(zip(self.loss_fn.names, items.tolist())))
        self.epoch_time = time.time() - t0
        self.epoch_loss = mloss if mloss is not None else torch.zeros(len(self.loss_fn.names))

    @property
    def _loss_fp32(self) -> bool:
        """CPU bf16: the loss and the assigners run in fp32 on fp32 copies of the outputs. On CUDA the loss
        stays under autocast, as in the official training scripts."""
        return self.use_amp and self.device.type == "cpu"

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def _loss_precision(self):
        return torch.autocast(self.device.type, enabled=False) if self._loss_fp32 else contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.hyp.get("grad_clip", 0):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=self.hyp["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        for h in self.hooks:
            h.after_step(self)
        self._snapshot_step_buffers()

    def _snapshot_step_buffers(self) -> None:
        """Keep the BN statistics of the last optimizer step: forwards after it (of batches that will be
        re-run after a resume) must not leak into a saved state."""
        if self.main:
            self._step_buffers = [b.detach().clone() for b in unwrap(self.model).buffers()]

    def _restore_step_buffers(self) -> None:
        saved = getattr(self, "_step_buffers", None)
        if saved is not None:
            with torch.no_grad():
                for b, v in zip(unwrap(self.model).buffers(), saved):
                    b.copy_(v)

    def _weights_finite(self) -> bool:
        sds = [unwrap(self.model).state_dict()] + ([self.ema.ema.state_dict()] if self.ema is not None else [])
        return all(bool(torch.isfinite(t).all()) for sd in sds for t in sd.values() if t.is_floating_point())

    def _abort_nonfinite(self, epoch: int, i: int, items: torch.Tensor) -> None:
        detail = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.loss_fn.names, items.tolist()))
        kept = None
        if self.main and self.ema is not None:
            self._restore_step_buffers()
            if self._weights_finite():
                self._save_state(epoch, self._last_step_batch)
            kept = self._saved_at  # the newest state whose weights (BN statistics included) were all finite
        where = (f"The last finite weights (BN statistics included) are in {self.wdir / 'last.safetensors'}, from "
                 f"{kept}" if kept else "No finite weights were saved in this run")
        msg = (f"non-finite loss at epoch {epoch + 1}, batch {i} ({detail}). {where}. Usual causes: learning rate too "
               f"high for this batch size (try --hyp-override lr0=...), AMP on a GPU without fp16 support (--no-amp), "
               f"or broken labels.")
        raise TrainingError(msg)

    def _end_epoch(self, epoch: int) -> Metrics:
        cfg = self.cfg
        metrics = Metrics()
        if self.main:
            final = epoch + 1 == cfg.epochs
            if self.val_loader is not None and ((epoch + 1) % cfg.val_interval == 0 or final):
                metrics = evaluate(self.ema.ema, self.val_loader, self.names, conf=cfg.conf, iou=cfg.iou,
                                   device=self.device, verbose=cfg.verbose, desc=f"val {epoch + 1}")
                improved = metrics.fitness > self.best_fitness
                self.bad_epochs = 0 if improved else self.bad_epochs + 1
            else:
                improved = self.val_loader is None  # without val data the newest weights are the best
            if improved:
                self.best_fitness = max(metrics.fitness, self.best_fitness)
                ckpt.save_weights(self.wdir / "best.safetensors", self.ema.ema, self._meta(epoch, metrics))
            row = self._epoch_row(epoch, metrics)
            self.rows = [r for r in self.rows if int(r["epoch"]) != epoch + 1] + [row]
            self._save_state(epoch + 1, 0, finished=final)  # the state holds the row before results.csv does
            if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
                ckpt.save_weights(self.wdir / f"epoch{epoch + 1}.safetensors", self.ema.ema, self._meta(epoch, metrics))
            self._log_epoch(epoch, metrics, row)
        ddp.barrier()
        return metrics

    def request_stop(self, reason: str) -> None:
        """End training after this epoch (a callback's way out: a tuner pruning a trial); best weights are saved
        and validated as at a normal end."""
        self.stop_reason = reason

    def _should_stop(self, epoch: int) -> bool:
        patience = bool(self.cfg.patience and self.bad_epochs >= self.cfg.patience)
        stop = (patience or self.stop_reason is not None) if self.main else False
        stop = ddp.broadcast_object(stop)  # every rank leaves the loop together (no DDP hang)
        if stop and self.main:
            LOG.info(f"early stop at epoch {epoch + 1}: " + (f"no improvement for {self.cfg.patience} epochs"
                                                              if patience else str(self.stop_reason)))
        return stop

    def _epoch_row(self, epoch: int, m: Metrics) -> dict:
        names = [f"train/{n}_loss" for n in self.loss_fn.names]
        validated = m.images > 0

        def val(v):  # epochs without validation (--val-interval) leave the metric columns empty
            return round(v, 5) if validated else ""

        return {"epoch": epoch + 1, **{n: round(float(v), 5) for n, v in zip(names, self.epoch_loss.tolist())},
                "metrics/precision": val(m.precision), "metrics/recall": val(m.recall),
                "metrics/mAP50": val(m.map50), "metrics/mAP50-95": val(m.map),
                "lr": round(self.optimizer.param_groups[0]["lr"], 7), "time_s": round(self.epoch_time, 1)}

    def _write_csv(self) -> None:
        """results.csv from ``self.rows``, written whole and atomically."""
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        ckpt.atomic_write_text(self.csv_path, buf.getvalue())

    def _log_epoch(self, epoch: int, m: Metrics, row: dict) -> None:
        validated = m.images > 0
        self._write_csv()
        self.callbacks("on_epoch_end", self, epoch, row, m)
        if self.cfg.verbose:
            loss = " ".join(f"{n}={v:.3f}" for n, v in zip(self.loss_fn.names, self.epoch_loss.tolist()))
            metrics = f"mAP50={m.map50:.3f} mAP50-95={m.map:.3f}" if validated else "(not validated)"
            LOG.info(f"epoch {epoch + 1}/{self.cfg.epochs}  {loss}  {metrics}  ({self.epoch_time:.0f}s)")

    def _plot_labels(self) -> None:
        try:
            from yoloforge.utils.plots import plot_labels

            plot_labels(self.train_ds.labels, self.train_ds.shapes, self.names, self.run_dir / "labels.png")
        except Exception as e:  # a plot never stops training
            LOG.warning(f"label plot skipped: {e}")

    def _finish(self, epoch: int, last: Metrics) -> Path:
        best = self.wdir / "best.safetensors"
        if not best.exists():
            ckpt.save_weights(best, self.ema.ema, self._meta(epoch, last))
        final = last
        if self.val_loader is not None:
            model = load_model(best)[0].to(self.device).fuse()
            final = evaluate(model, self.val_loader, self.names, conf=self.cfg.conf,
                             iou=self.cfg.iou, device=self.device, save_dir=self.run_dir, plots=self.cfg.plots,
                             verbose=self.cfg.verbose, desc="val best")
            LOG.info("best weights on the val split:\n" + final.table())
        if self.cfg.plots:
            try:
                from yoloforge.utils.plots import plot_results

                plot_results(self.csv_path)
                if self.val_loader is not None:
                    self._plot_val_batch(model)
            except Exception as e:
                LOG.warning(f"plots skipped: {e}")
        self.final_metrics = final
        self.callbacks("on_train_end", self, best, final)
        LOG.info(f"results in {self.run_dir} (best: {best})")
        return best

    def _plot_train_batch(self, imgs: torch.Tensor, targets: torch.Tensor, k: int) -> None:
        """train_batch{k}.jpg: the first augmented batches as the model sees them, with their labels."""
        try:
            from yoloforge.utils.plots import plot_image_grid

            plot_image_grid((imgs.detach()[:16] * 255).clamp(0, 255).to(torch.uint8).cpu(),
                            targets=targets[targets[:, 0] < 16].cpu(), names=self.names,
                            path=self.run_dir / f"train_batch{k}.jpg")
        except Exception as e:  # noqa: BLE001 - a plot never stops training
            LOG.warning(f"train batch plot skipped: {e}")

    def _plot_val_batch(self, model: nn.Module) -> None:
        """Predictions of the (fused) best model next to the labels, on the first val batch."""
        from yoloforge.engine.postprocess import PREDICT, postprocess
        from yoloforge.utils.plots import plot_image_grid

        imgs, targets, _ = next(iter(self.val_loader))
        with torch.inference_mode():
            dets = postprocess(model(imgs.to(self.device).float() / 255), PREDICT.conf, PREDICT.iou, PREDICT.max_det)
        plot_image_grid(imgs, dets=dets, names=self.names, path=self.run_dir / "val_batch_pred.png")
        plot_image_grid(imgs, targets=targets, names=self.names, path=self.run_dir / "val_batch_labels.png")


def _yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def train(cfg: TrainConfig | dict, model: nn.Module | None = None) -> Path:
    return Trainer(cfg, model).train()

