"""Training callbacks: one small interface, and the loggers built on it (TensorBoard, MLflow).

A callback is any object with some of these methods; the trainer calls them on the main process only::

    class MyCallback(Callback):
        def on_train_start(self, trainer): ...                       # run dir, datasets and model exist
        def on_batch_end(self, trainer, epoch, batch, losses): ...   # losses: {name: mean so far this epoch}
        def on_epoch_end(self, trainer, epoch, row, metrics): ...    # row: what results.csv gets
        def on_train_end(self, trainer, best, metrics): ...          # best weights' path, their val metrics

A hook that wants training to end calls ``trainer.request_stop("why")`` (it ends after the current epoch, the
weights saved as at a normal end); an exception raised in a hook only switches that callback off.

    Detector("yolov6n").train(data="data.yaml", callbacks=[MyCallback()])

``trainer.run_dir``, ``trainer.cfg``, ``trainer.hyp``, ``trainer.iteration`` (batches so far) and
``trainer.optimizer`` are there to read. A callback that raises stops nothing: the error is logged once and
that callback is dropped, so a broken logger never costs a training run. TensorBoard logging is on by
default when the ``tensorboard`` package is installed (``--no-tensorboard`` turns it off); ``--mlflow URI``
adds MLflow (``pip install mlflow-skinny``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from yoloforge.utils.logging import get_logger

LOG = get_logger()
HOOKS = ("on_train_start", "on_batch_end", "on_epoch_end", "on_train_end")


class Callback:
    """Base class with every hook doing nothing; subclass and override what you need."""

    def on_train_start(self, trainer) -> None:
        pass

    def on_batch_end(self, trainer, epoch: int, batch: int, losses: dict) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int, row: dict, metrics) -> None:
        pass

    def on_train_end(self, trainer, best: Path, metrics) -> None:
        pass


class CallbackList:
    """Calls every callback's hook in order; a callback that raises is reported and dropped."""

    def __init__(self, callbacks=()):
        self.items = list(callbacks)

    def __call__(self, hook: str, *args) -> None:
        for cb in list(self.items):
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - a logger must never end a training run
                LOG.warning(f"callback {type(cb).__name__}.{hook} failed ({e.__class__.__name__}: {e}); "
                            "it is switched off for the rest of this run")
                self.items.remove(cb)


def _plots(run_dir: Path) -> list[Path]:
    names = ["results.png", "PR_curve.png", "confusion_matrix.png", "labels.png", "val_batch_pred.png",
             "val_batch_labels.png", "train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg"]
    return [run_dir / n for n in names if (run_dir / n).is_file()]


class TensorBoardLogger(Callback):
    """Event files in ``<run>/tensorboard``: losses per optimizer step and per epoch, lr of every parameter
    group, the validation metrics, the PR curve (IoU 0.5, all classes) of the best weights, and the plots
    (sample predictions and labels, confusion matrix, results) as images."""

    def __init__(self, log_dir: str | Path | None = None, every: int = 1):
        self.log_dir, self.every, self.writer = log_dir, max(1, int(every)), None

    def on_train_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(self.log_dir or trainer.run_dir / "tensorboard")
        self.writer = SummaryWriter(str(self.log_dir))
        hp = {k: v for k, v in {**trainer.hyp, "model": trainer.cfg.model, "imgsz": trainer.cfg.imgsz,
                                "batch": trainer.cfg.batch, "epochs": trainer.cfg.epochs}.items()
              if isinstance(v, (int, float, str, bool))}
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(hp.items())), 0)

    def on_batch_end(self, trainer, epoch, batch, losses) -> None:
        step = trainer.iteration
        if step % self.every == 0:
            for k, v in losses.items():
                self.writer.add_scalar(f"train_step/{k}_loss", v, step)

    def on_epoch_end(self, trainer, epoch, row, metrics) -> None:
        e = epoch + 1
        for k, v in row.items():
            if k in ("epoch", "time_s", "lr") or v == "":
                continue
            self.writer.add_scalar(k, float(v), e)
        for i, g in enumerate(trainer.optimizer.param_groups):
            self.writer.add_scalar(f"lr/pg{i}", g["lr"], e)
        self.writer.add_scalar("time/epoch_s", float(row.get("time_s", 0)), e)
        self.writer.flush()

    def on_train_end(self, trainer, best, metrics) -> None:
        import cv2

        pr = getattr(metrics, "pr", None) or {}
        if pr.get("tp") is not None and len(pr["tp"]):
            tp, fp, fn = (np.asarray(pr[k], np.float64) for k in ("tp", "fp", "fn"))
            prec = tp / np.maximum(tp + fp, 1)
            rec = tp / np.maximum(tp + fn, 1)
            self.writer.add_pr_curve_raw("PR/all classes, IoU 0.5", tp, fp, np.zeros_like(tp), fn, prec, rec,
                                         global_step=trainer.cfg.epochs, num_thresholds=len(tp))
        for p in _plots(trainer.run_dir):
            img = cv2.imread(str(p))
            if img is not None:
                self.writer.add_image(f"plots/{p.stem}", img[:, :, ::-1].copy(), trainer.cfg.epochs, dataformats="HWC")
        if metrics is not None and getattr(metrics, "images", 0):
            self.writer.add_scalar("best/mAP50-95", metrics.map, trainer.cfg.epochs)
            self.writer.add_scalar("best/mAP50", metrics.map50, trainer.cfg.epochs)
        self.writer.close()


class MLflowLogger(Callback):
    """Params (config and hyp), per-epoch metrics, and at the end the best weights and the plots as artifacts,
    to the MLflow tracking server or store at ``uri`` (``http://host:5000``, ``sqlite:///path/mlflow.db``)."""

    def __init__(self, uri: str, experiment: str = "yoloforge"):
        try:
            import mlflow
        except ImportError:
            raise ValueError(f"--mlflow {uri}: needs the mlflow package (pip install mlflow-skinny)") from None
        self.mlflow, self.uri, self.experiment, self.run = mlflow, uri, experiment, None

    def on_train_start(self, trainer) -> None:
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            # a local sqlite store keeps its artifacts beside the database (MLflow's default is ./mlruns in
            # whatever directory the training runs from); a server decides for itself
            loc = None
            if self.uri.startswith("sqlite:///"):
                loc = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            mlflow.create_experiment(self.experiment, artifact_location=loc)
        mlflow.set_experiment(self.experiment)
        self.run = mlflow.start_run(run_name=trainer.run_dir.name)
        params = {**{f"hyp.{k}": v for k, v in trainer.hyp.items()},
                  **{k: getattr(trainer.cfg, k) for k in ("model", "data", "epochs", "imgsz", "batch", "nbs", "seed")}}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def on_epoch_end(self, trainer, epoch, row, metrics) -> None:
        vals = {k.replace(":", "_"): float(v) for k, v in row.items() if k != "epoch" and v != ""}
        self.mlflow.log_metrics(vals, step=epoch + 1)

    def on_train_end(self, trainer, best, metrics) -> None:
        if Path(best).is_file():
            self.mlflow.log_artifact(str(best), "weights")
        for p in _plots(trainer.run_dir):
            self.mlflow.log_artifact(str(p), "plots")
        if (trainer.run_dir / "results.csv").is_file():
            self.mlflow.log_artifact(str(trainer.run_dir / "results.csv"))
        self.mlflow.end_run()


def default_callbacks(cfg) -> list:
    """The loggers a run gets without asking: TensorBoard where the package is installed, MLflow with a URI."""
    out = []
    if getattr(cfg, "tensorboard", True):
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401

            out.append(TensorBoardLogger())
        except ImportError:
            pass
    if getattr(cfg, "mlflow", ""):
        out.append(MLflowLogger(cfg.mlflow))
    return out
