"""Experiment logging (issue 14, part 3): TensorBoard event files read back with the tensorboard package,
user callbacks, MLflow to a local file store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yoloforge import Detector
from yoloforge.engine.callbacks import Callback
from yoloforge.engine.evaluator import pr_counts


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.run_dir.name))

    def on_batch_end(self, trainer, epoch, batch, losses):
        self.calls.append(("batch", epoch, batch, sorted(losses)))

    def on_epoch_end(self, trainer, epoch, row, metrics):
        self.calls.append(("epoch", epoch, row["epoch"], row["metrics/mAP50"]))

    def on_train_end(self, trainer, best, metrics):
        self.calls.append(("end", Path(best).name))


class Broken(Callback):
    def on_epoch_end(self, trainer, epoch, row, metrics):
        raise RuntimeError("my logger is broken")


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    pytest.importorskip("tensorboard", reason="tensorboard (a dev dependency) writes and reads the event files")
    rec = Recorder()
    project = tmp_path_factory.mktemp("cb")
    best = Detector("yolov6n", nc=3).train(data=str(tiny_data), epochs=2, imgsz=64, batch=8, workers=0,
                                            project=str(project), name="r", close_mosaic=0, verbose=False,
                                            callbacks=[Broken(), rec])
    return project / "r", rec, best


def test_user_callbacks_get_every_hook_and_a_broken_one_costs_nothing(run):
    run_dir, rec, best = run
    assert best.is_file()
    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 2
    assert kinds.count("batch") == 2 * 2  # 16 images / batch 8, two epochs
    assert [c[2] for c in rec.calls if c[0] == "epoch"] == [1, 2]
    assert rec.calls[1][3] == ["cls", "dfl", "iou"] or len(rec.calls[1][3]) >= 2


def test_tensorboard_events_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = run
    ev = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert ev, "no event file"
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    assert {"metrics/mAP50", "metrics/mAP50-95", "lr/pg0", "lr/pg1", "lr/pg2"} <= scalars, scalars
    loss_tags = [t for t in scalars if t.startswith("train/") and t.endswith("_loss")]
    assert loss_tags and all(len(acc.Scalars(t)) == 2 for t in loss_tags)  # one value per epoch
    step = [t for t in scalars if t.startswith("train_step/")]
    assert step and len(acc.Scalars(step[0])) == 4  # one per batch
    assert [e.step for e in acc.Scalars("metrics/mAP50")] == [1, 2]
    csv_map = [float(l.split(",")[6]) for l in (run_dir / "results.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose([e.value for e in acc.Scalars("metrics/mAP50")], csv_map, atol=1e-5)
    images = set(tags["images"])
    assert {"plots/val_batch_pred", "plots/PR_curve", "plots/confusion_matrix", "plots/train_batch0"} <= images, images
    assert any("PR" in t for t in tags["tensors"]), tags["tensors"]  # the pr_curve plugin stores a tensor
    assert (run_dir / "train_batch0.jpg").is_file()


def test_pr_counts():
    tp = np.array([1, 0, 1, 1, 0], bool)
    sc = np.array([0.9, 0.8, 0.6, 0.3, 0.1])
    c = pr_counts(tp, sc, n_gt=4, points=11)
    k = list(np.round(c["thresholds"], 1)).index(0.5)
    assert c["tp"][k] == 2 and c["fp"][k] == 1 and c["fn"][k] == 2  # scores >= 0.5: 0.9, 0.8, 0.6
    assert c["tp"][0] == 3 and c["fp"][0] == 2 and c["tp"][-1] == 0


def test_mlflow_sqlite_store(tiny_data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is optional (pip install mlflow-skinny)")
    pytest.importorskip("sqlalchemy", reason="MLflow's sqlite store needs sqlalchemy")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # artifacts go beside the database, never into the working directory
    Detector("yolov6n", nc=3).train(data=str(tiny_data), epochs=1, imgsz=64, batch=8, workers=0, plots=False,
                                    project=str(tmp_path), name="m", verbose=False, tensorboard=False, mlflow=uri)
    assert mlflow.active_run() is None
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("yoloforge").experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.data.params["model"] == "yolov6n" and r.data.params["hyp.lr0"] == "0.02"
    assert "metrics/mAP50" in r.data.metrics and "train/iou_loss" in r.data.metrics
    arts = client.list_artifacts(r.info.run_id, "weights")
    assert [Path(a.path).name for a in arts] == ["best.safetensors"]
    assert {"results.csv"} <= {Path(a.path).name for a in client.list_artifacts(r.info.run_id)}
    assert list(cwd.iterdir()) == [] and list((tmp_path / "mlartifacts").rglob("best.safetensors"))
