"""Issue 16: TensorBoard event files of a run, read back with TensorBoard's own reader."""

from __future__ import annotations

import importlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config

from l1cnn.cli import main
from l1cnn.runs import read_csv
from l1cnn.train import resume, train

pytest.importorskip("tensorboard")
import tensorflow as tf  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

SCALAR_TAGS = {
    "loss/train",
    "loss/train_data",
    "loss/train_l1",
    "loss/val",
    "loss/val_data",
    "accuracy/train",
    "accuracy/val",
    "roc_auc/val",
    "learning_rate",
}


def _events_in(folder: Path) -> EventAccumulator:
    """TensorBoard's own reader over one event folder (tf.summary writes tensors)."""
    return EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()


def _events(run_dir: Path) -> EventAccumulator:
    return _events_in(run_dir / "tensorboard")


def _tags(acc: EventAccumulator, plugin: str) -> set[str]:
    tags = acc.Tags()["tensors"]
    return {t for t in tags if acc.SummaryMetadata(t).plugin_data.plugin_name == plugin}


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Tensors(tag)]


def _values(acc: EventAccumulator, tag: str) -> list[float]:
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    x, y = make_images(120, seed=3)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def test_run_logs_every_epoch_once_and_the_report_figures(data: Path, tmp_path: Path) -> None:
    config = tiny_config(model={"l1_lambda": 0.001}, train={"epochs": 3, "early_stopping": False})
    result = train(data, config, out=tmp_path / "run")
    acc = _events(result.run_dir)
    scalars = _tags(acc, "scalars")
    assert SCALAR_TAGS <= scalars
    layers = [t.split("/")[1] for t in scalars if t.endswith("/exact_zero")]
    assert len(layers) == 4  # two Conv2D, two Dense
    assert all(f"sparsity/{name}/below_1e-3" in scalars for name in layers)
    for tag in scalars | _tags(acc, "histograms"):
        assert _steps(acc, tag) == [1, 2, 3], tag
    assert any(t.startswith("weights/") and t.endswith("kernel") for t in _tags(acc, "histograms"))
    figures = {"report/learning_curves", "report/roc", "report/confusion"}
    assert figures <= _tags(acc, "images")
    assert all(_steps(acc, tag) == [3] for tag in figures)
    # The scalars are the history's values (float32 in the event file).
    history = read_csv(result.run_dir / "history.csv")
    logged = _values(acc, "loss/train_l1")
    np.testing.assert_allclose(logged, [float(r["l1_penalty"]) for r in history], rtol=1e-6)
    assert _values(acc, "learning_rate") == pytest.approx([0.001] * 3)
    # The shares of small and zero weights are fractions.
    assert all(0 <= v <= 1 for t in scalars if t.startswith("sparsity/") for v in _values(acc, t))


def test_tensorboard_false_writes_no_events(data: Path, tmp_path: Path) -> None:
    config = tiny_config(train={"epochs": 1, "tensorboard": False})
    result = train(data, config, out=tmp_path / "run")
    assert not (result.run_dir / "tensorboard").exists()


@pytest.mark.slow
def test_resume_appends_without_duplicating_epochs(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C after epoch 2 is backed up (status "interrupted"), then --resume.
    train_module = importlib.import_module("l1cnn.train")  # l1cnn.train is also a function
    original = train_module._Backup.on_epoch_end

    def interrupt_after_two(self, epoch: int, logs: dict) -> None:
        original(self, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt

    config = tiny_config(train={"epochs": 4, "early_stopping": False})
    with monkeypatch.context() as patch:
        patch.setattr(train_module._Backup, "on_epoch_end", interrupt_after_two)
        first = train(data, config, out=tmp_path / "a")
    assert first.status == "interrupted"
    assert _steps(_events(first.run_dir), "loss/train") == [1, 2]
    # A copy whose events are ahead of its backup (killed between the two): it retrains from
    # epoch 1 and must not log epochs 1-2 again.
    ahead = Path(shutil.copytree(first.run_dir, tmp_path / "b"))
    (ahead / "backup.npz").unlink()

    for run in (first.run_dir, ahead):
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        acc = _events(run)
        for tag in _tags(acc, "scalars") | _tags(acc, "histograms"):
            assert _steps(acc, tag) == [1, 2, 3, 4], (run.name, tag)
        # The interrupted run's report figures, then the finished run's: one each.
        assert Counter(_steps(acc, "report/roc")) == {2: 1, 4: 1}
    values = [_values(_events(r), "loss/val") for r in (first.run_dir, ahead)]
    assert values[0] == values[1]  # the retrained epochs equal the logged ones
    assert resume(first.run_dir) is None


def test_unwritable_tensorboard_folder_is_one_error_line_before_training(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unfinished run (as a kill leaves it) whose tensorboard/ is a file: resume refuses.
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    for name in ("model.keras", "metrics.json", "history.csv", "predictions.csv"):
        (run / name).unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").write_text("not a folder")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2  # bad run folder
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "TensorBoard folder" in err and "Traceback" not in err
    assert not (run / "model.keras").exists() and not (run / "history.csv").exists()


def test_study_writes_hparams_sessions_for_its_trials(tmp_path: Path) -> None:
    from l1cnn import study

    x, y = make_images(100, seed=5)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    grid = tmp_path / "grid.toml"
    grid.write_text('[[trial]]\nname = "specified"\n\n[[trial]]\nname = "no-l1"\nl1_lambda = 0.0\n')
    base = tiny_config(model={"l1_lambda": 0.001}, train={"epochs": 1})
    out = tmp_path / "study"
    result = study.run_study(tmp_path / "data.npz", base, out, preset=str(grid), n_seeds=1)
    assert len(result.rows) == 2

    root = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "_hparams_/experiment" in root.Tags()["tensors"]
    experiment = root.SummaryMetadata("_hparams_/experiment").plugin_data
    assert experiment.plugin_name == "hparams"
    for row in result.rows:
        session = out / "tensorboard" / row["configuration"] / f"seed-{row['seed']}"
        acc = _events_in(session)
        assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
        info = HParamsPluginData.FromString(
            acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        ).session_start_info
        assert info.hparams["l1_lambda"].number_value == row["l1_lambda"]
        assert info.hparams["configuration"].string_value == row["configuration"]
        assert _values(acc, "test_roc_auc") == pytest.approx([row["test_roc_auc"]])
    # Rewritten whole when the study is summarized again: no duplicate sessions.
    study.run_study(tmp_path / "data.npz", base, out, preset=str(grid), n_seeds=1)
    acc = _events_in(out / "tensorboard" / "no-l1" / "seed-7")
    assert _steps(acc, "test_roc_auc") == [1]


def test_histogram_buckets_count_every_finite_weight_once():
    from l1cnn.tensorboard_log import histogram_buckets

    values = np.random.default_rng(0).normal(size=(9, 7)).astype(np.float32)
    values[0, 0], values[1, 1] = np.nan, np.inf
    buckets = histogram_buckets(values)
    assert buckets.shape == (30, 3)
    assert buckets[:, 2].sum() == values.size - 2
    finite = values[np.isfinite(values)]
    assert buckets[0, 0] == pytest.approx(finite.min()) and buckets[-1, 1] == pytest.approx(
        finite.max()
    )
    assert np.all(buckets[1:, 0] == buckets[:-1, 1])  # edges meet
    assert histogram_buckets(np.zeros(5)).tolist() == [[0.0, 0.0, 5.0]]
    assert histogram_buckets(np.array([np.nan])) is None
