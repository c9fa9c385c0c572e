"""Hyper-parameter search (``yoloforge tune``) on Optuna: YOLOv4's "optimal hyper-parameters" by a genetic
search (Bochkovskiy et al. 2020, sec. 3.3: GA selection of hyper-parameters), or TPE (the default), CMA-ES, random.

Optuna (a well-kept library) owns the search, the storage and the pruning; yoloforge supplies the objective and the
default search space. A trial trains the model for ``--epochs`` with the sampled values laid over the preset
(``--hyp-override`` semantics) and returns the val fitness of its best epoch, ``0.1 mAP50 + 0.9 mAP50-95`` (as the
YOLO repositories select models); every epoch's fitness is reported, and Optuna's median pruner ends trials that
fall below the median of earlier trials at the same epoch.

The study lives in an Optuna storage (default: SQLite beside the results): running the same command again
continues it until it holds ``--trials`` finished trials; several processes or machines pointing at one storage
share the work; a killed worker's running trial is marked failed by the heartbeat and retried, finished trials are
never lost. ``--jobs K`` starts K worker processes here, with the cores split between them.

Outputs in ``runs/tune/<name>/``: ``best_hyp.yaml`` (the whole preset with the best values, usable as
``train --hyp``), ``trials.csv``, and plots: optimization history, parameter importances, slice plot.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

from yoloforge.utils.logging import get_logger

LOG = get_logger()

# name: (low, high, log). Bounds bracket the official values of every preset (families/<name>/hyp.py) by a wide margin.
COMMON_SPACE = {
    "lr0": (1e-3, 5e-2, True), "lrf": (0.01, 0.5, True), "momentum": (0.8, 0.98, False),
    "weight_decay": (1e-5, 1e-3, True), "warmup_epochs": (0.0, 5.0, False), "warmup_momentum": (0.5, 0.95, False),
    "warmup_bias_lr": (0.0, 0.2, False), "hsv_h": (0.0, 0.05, False), "hsv_s": (0.0, 0.9, False),
    "hsv_v": (0.0, 0.9, False), "translate": (0.0, 0.5, False), "scale": (0.1, 0.9, False), "fliplr": (0.0, 1.0, False),
    "mosaic": (0.0, 1.0, False), "mixup": (0.0, 0.5, False),
}
FAMILY_SPACE = {  # the loss gains of each family's loss
    "yolov6": {"loss_cls": (0.2, 4.0, True), "loss_iou": (0.5, 10.0, True)},
    "anchor": {"box": (0.02, 0.2, True), "cls": (0.1, 4.0, True), "obj": (0.2, 4.0, True)},
}
SAMPLERS = ("tpe", "ga", "cmaes", "random")
# ``--space focused``: the schedule and the three augmentation strengths that matter when a model trains a few epochs
# more. Measured (README "Hyper-parameter search", benchmarks/tune_average.py --parts tune_ft --space focused): 20
# TPE trials of a 6-epoch fine-tune beat the preset beyond its seed spread, where 12 trials over every key did not.
FOCUSED_SPACE = {
    "lr0": (0.005, 0.08, True), "lrf": (0.01, 0.5, True), "momentum": (0.85, 0.98, False),
    "warmup_epochs": (0.0, 2.0, False), "warmup_min_iters": (0.0, 100.0, False), "mosaic": (0.0, 1.0, False),
    "scale": (0.1, 0.9, False), "mixup": (0.0, 0.3, False),
}
NAMED_SPACES = {"focused": FOCUSED_SPACE}


def default_space(hyp: dict) -> dict:
    """The search space for a preset: every key of :data:`COMMON_SPACE` and the family's gains it has."""
    space = dict(COMMON_SPACE)
    space.update(FAMILY_SPACE["yolov6"] if "loss_iou" in hyp else FAMILY_SPACE["anchor"])
    return {k: v for k, v in space.items() if k in hyp}


def load_space(path: str | Path, hyp: dict) -> dict:
    """A named space (:data:`NAMED_SPACES`, its keys the preset has) or a user's yaml: ``key: [low, high]``,
    ``key: [low, high, log]`` or ``key: {choices: [...]}`` per line."""
    if str(path) in NAMED_SPACES and not Path(path).is_file():
        return {k: v for k, v in NAMED_SPACES[str(path)].items() if k in hyp}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--space {p}: file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValueError(f"{p}{f':{mark.line + 1}' if mark else ''}: not valid YAML") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"--space {p}: a mapping of hyper-parameter: [low, high(, log)] is needed")
    lines = {str(k): i + 1 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines())
             for k in raw if line.lstrip().startswith(f"{k}:")}
    space = {}
    for k, v in raw.items():
        where = f"{p}:{lines.get(str(k), '?')}"
        if k not in hyp:
            raise ValueError(f"{where}: {k!r} is not a hyper-parameter of this preset (known: {', '.join(sorted(hyp))})")
        if isinstance(v, dict) and isinstance(v.get("choices"), list) and v["choices"]:
            space[k] = ("choices", v["choices"])
        elif isinstance(v, list) and len(v) in (2, 3) and all(isinstance(x, (int, float)) for x in v[:2]):
            lo, hi = float(v[0]), float(v[1])
            log = len(v) == 3 and str(v[2]).lower() in ("log", "true", "1")
            if not lo < hi or (log and lo <= 0):
                raise ValueError(f"{where}: {k}: need low < high (and low > 0 for log), got {v}")
            space[k] = (lo, hi, log)
        else:
            raise ValueError(f"{where}: {k}: expected [low, high], [low, high, log] or {{choices: [...]}}, got {v!r}")
    return space


def suggest(trial, space: dict) -> dict:
    out = {}
    for k, spec in space.items():
        if spec[0] == "choices":
            out[k] = trial.suggest_categorical(k, spec[1])
        else:
            lo, hi, log = spec
            out[k] = trial.suggest_float(k, lo, hi, log=log)
    return out


def preset_params(space: dict, base: dict) -> dict:
    """The preset's own values in the search space's terms (clipped into a range; a choice not offered is left to
    the sampler): the study's first trial, so a short study can only return the preset or something that scored
    better. Measured why (benchmarks/tune_average.py, fine-tuning part): 12 TPE trials over the 17-dimension default
    space never came near the preset (best 0.491 vs the preset's 0.527-0.546 val fitness)."""
    out = {}
    for k, spec in space.items():
        v = base.get(k)
        if v is None or isinstance(v, bool):
            continue
        if spec[0] == "choices":
            if v in spec[1]:
                out[k] = v
        else:
            out[k] = min(max(float(v), spec[0]), spec[1])
    return out


def make_sampler(kind: str, seed: int, trials: int = 20):
    import optuna

    if kind == "tpe":  # Optuna's default 10 random start-up trials would leave a short study random: a third of it
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)))
    if kind == "ga":  # Optuna's genetic algorithm (selection, crossover, mutation over generations)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)  # needs the `cmaes` package
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--sampler {kind!r}: one of {', '.join(SAMPLERS)}")


def open_study(storage: str, name: str, sampler, attempts: int = 8):
    """Create or load the study. Workers starting together on a new SQLite file race to create its tables; the
    loser retries after a short random wait."""
    import inspect
    import random
    import time
    import warnings

    import optuna
    from optuna import storages

    # heartbeat: a worker killed mid-trial leaves a RUNNING trial; once its heartbeat is older than the grace
    # period, the next worker marks it failed and enqueues its parameters again. Finished trials are never touched.
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    # the keyword was renamed in Optuna 4.9 (failed_trial_callback still works there, with a FutureWarning)
    callback_kw = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback"
                   in inspect.signature(storages.RDBStorage.__init__).parameters else "failed_trial_callback")
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    for k in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = storages.RDBStorage(storage, heartbeat_interval=10, grace_period=30,
                                          **{callback_kw: retry(max_retry=2)},
                                          engine_kwargs={"connect_args": {"timeout": 60}}
                                          if storage.startswith("sqlite") else None)
            return optuna.create_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner,
                                       direction="maximize", load_if_exists=True)
        except Exception as e:  # noqa: BLE001 - sqlalchemy / optuna storage errors of the creation race
            if k == attempts - 1 or type(e).__module__.split(".")[0] not in ("sqlalchemy", "optuna"):
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


class _Pruning:
    """Reports each validated epoch's fitness to the trial; stops the training when Optuna prunes it."""

    def __init__(self, trial):
        self.trial, self.pruned = trial, False

    def on_epoch_end(self, trainer, epoch, row, metrics):
        if metrics.images == 0:
            return
        self.trial.report(float(metrics.fitness), epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.request_stop(f"trial {self.trial.number} pruned (below the median of earlier trials)")


def objective(a, space: dict, out: Path):
    import optuna

    from yoloforge.config import TrainConfig
    from yoloforge.engine.trainer import Trainer

    def run(trial) -> float:
        params = suggest(trial, space)
        cfg = TrainConfig(model=a.model, data=a.data, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, nbs=a.nbs or a.batch,
                          workers=a.workers, project=str(out / "trials"), name=f"trial{trial.number}", exist_ok=True,
                          hyp=a.hyp, hyp_override=params, seed=a.seed, close_mosaic=a.close_mosaic, weights=a.weights,
                          plots=False, verbose=False, tensorboard=False, device=a.device)
        cb = _Pruning(trial)
        tr = Trainer(cfg, callbacks=[cb])
        tr.train()
        fitness = float(tr.final_metrics.fitness)
        trial.set_user_attr("mAP50-95", float(tr.final_metrics.map))
        trial.set_user_attr("mAP50", float(tr.final_metrics.map50))
        if cb.pruned:
            raise optuna.TrialPruned()
        return fitness
    return run


def write_results(study, space: dict, base_hyp: dict, out: Path) -> dict:
    """best_hyp.yaml, trials.csv and the plots; returns the best trial's params ({} without a finished trial)."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = sorted(space)
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "fitness", "mAP50-95", "mAP50", "seconds", *keys])
        for t in study.trials:
            secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            w.writerow([t.number, t.state.name, t.value if t.value is not None else "", t.user_attrs.get("mAP50-95", ""),
                        t.user_attrs.get("mAP50", ""), secs, *[t.params.get(k, "") for k in keys]])
    if not done:
        return {}
    best = study.best_trial
    hyp = dict(base_hyp, **best.params)
    header = (f"# yoloforge tune: best of {len(done)} finished trials (trial {best.number}, fitness {best.value:.5f})\n"
              f"# use it with: yoloforge train --hyp {out / 'best_hyp.yaml'}\n")
    from yoloforge.utils.checkpoint import atomic_write_text

    atomic_write_text(out / "best_hyp.yaml", header + yaml.safe_dump(hyp, sort_keys=True))
    _plots(study, out, len(done))
    return dict(best.params)


def _plots(study, out: Path, n_done: int) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = {"optimization_history.png": ovm.plot_optimization_history, "slice.png": ovm.plot_slice}
    if n_done >= 2:
        plots["param_importances.png"] = ovm.plot_param_importances
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 - a plot never costs the results
            LOG.warning(f"tune plot {name} skipped: {e}")


def _open(a, worker: int = 0):
    """(study, space, base hyp, output folder) of this command's study."""
    from yoloforge.config import load_hyp
    from yoloforge.families.registry import build_model

    out = Path(a.project) / a.name
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(a.model, nc=1)
    base = load_hyp(model.default_hyp, model.name, a.hyp or None)
    space = load_space(a.space, base) if a.space else default_space(base)
    study = open_study(a.storage or f"sqlite:///{(out / 'tune.db').resolve()}", a.study_name or a.name,
                       make_sampler(a.sampler, a.seed + worker, a.trials))
    return study, space, base, out


def run_worker(a):
    """One worker: trials until the study holds ``--trials`` finished (complete or pruned) ones; returns what
    :func:`_open` returns."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened = study, space, base, out = _open(a, int(os.environ.get("YOLOFORGE_TUNE_WORKER", "0")))
    if a.start_from_preset and not study.trials:  # a worker joining a study that has begun enqueues nothing
        study.enqueue_trial(preset_params(space, base), skip_if_exists=True)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=states)) < a.trials:
        study.optimize(objective(a, space, out), callbacks=[optuna.study.MaxTrialsCallback(a.trials, states=states)],
                       gc_after_trial=True, show_progress_bar=False)
    return opened


def run(a) -> int:
    if a.trials < 1 or a.epochs < 1 or a.jobs < 1:
        raise ValueError("--trials, --epochs and --jobs must be >= 1")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise RuntimeError("yoloforge tune runs on Optuna: pip install 'yoloforge[tune]' (or pip install optuna)") from None
    if a.jobs > 1:  # K processes on this machine, each with its share of the cores
        threads = max((os.cpu_count() or 1) // a.jobs, 1)
        procs = [subprocess.Popen(_worker_argv(a), env=dict(os.environ, YOLOFORGE_TUNE_WORKER=str(k),
                                                              OMP_NUM_THREADS=str(threads)))
                 for k in range(a.jobs)]
        codes = [p.wait() for p in procs]
        if any(codes):
            LOG.warning(f"tune workers ended with codes {codes}; the finished trials are in the study")
        study, space, base, out = _open(a)
    else:
        study, space, base, out = run_worker(a)
    best = write_results(study, space, base, out)
    print(f"study {study.study_name}: {len(study.trials)} trials; best {best or 'none finished'}")
    print(f"results in {out} (best_hyp.yaml, trials.csv, optimization_history.png, param_importances.png, slice.png)")
    return 0


def _worker_argv(a) -> list[str]:
    args = [sys.executable, "-m", "yoloforge", "tune", "--model", a.model, "--data", a.data, "--trials", str(a.trials),
            "--epochs", str(a.epochs), "--imgsz", str(a.imgsz), "--batch", str(a.batch), "--nbs", str(a.nbs),
            "--workers", str(a.workers), "--sampler", a.sampler, "--seed", str(a.seed), "--project", a.project,
            "--name", a.name, "--jobs", "1", "--hyp", a.hyp, "--device", a.device,
            "--close-mosaic", str(a.close_mosaic), "--start-from-preset" if a.start_from_preset else
            "--no-start-from-preset"]
    for flag, v in (("--space", a.space), ("--storage", a.storage), ("--study-name", a.study_name),
                    ("--weights", a.weights)):
        if v:
            args += [flag, v]
    return args


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search on Optuna (TPE, genetic, CMA-ES, random), resumable and "
                                    "shared through its storage")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--data", required=True, help="data yaml (its val split scores the trials)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of each trial")
    p.add_argument("--imgsz", type=int, default=320, help="image size of each trial")
    p.add_argument("--batch", type=int, default=16, help="batch size of each trial")
    p.add_argument("--nbs", type=int, default=0, help="nominal batch size (0: the batch size, no accumulation)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes per trial")
    p.add_argument("--close-mosaic", type=int, default=-1, help="last epochs of each trial without mosaic/mixup (-1: "
                                                                "the preset's; YOLOv6's 15 would cover a short trial)")
    p.add_argument("--weights", default="", help="start every trial from these weights (tunes a fine-tune: the usual "
                                                 "case, and short trials then score more than their noise)")
    p.add_argument("--hyp", default="", help="the preset or yaml the sampled values are laid over (default: the model's)")
    p.add_argument("--start-from-preset", action=argparse.BooleanOptionalAction, default=True,
                   help="the first trial trains the preset's own values (the study then never returns worse)")
    p.add_argument("--space", default="", help="yaml search space: key: [low, high] | [low, high, log] | {choices: [..]}, "
                                               "or 'focused' (lr0, lrf, momentum, warm-up, mosaic, scale, mixup: for "
                                               "short studies) (default: lr, momentum, decay, warm-up, loss gains, "
                                               "augmentation)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe, ga (genetic, YOLOv4's evolution), "
                                                                       "cmaes (needs the cmaes package) or random")
    p.add_argument("--storage", default="", help="Optuna storage URL shared by workers (default: "
                                                 "sqlite:///<project>/<name>/tune.db)")
    p.add_argument("--study-name", default="", help="study name in the storage (default: --name)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (cores split between them)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every trial; sampler seed (+ worker index)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--project", default="runs/tune", help="parent folder")
    p.add_argument("--name", default="exp", help="folder of this study under --project (reused: the study continues)")
