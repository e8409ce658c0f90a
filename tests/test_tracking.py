"""MLflow tracking (``--mlflow``): logged to a real SQLite tracking store, read back through
MLflow's own client; a bad or unreachable store warns once and never costs the run."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from l1cnn.cli import main
from l1cnn.runs import file_sha256, read_csv, read_json
from l1cnn.tracking import MlflowTarget, log_runs, resolve_target

mlflow = pytest.importorskip("mlflow", reason="the l1cnn[mlflow] extra is not installed")
pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy and alembic")

TINY = ["--set", "conv_filters=[4,8]", "--set", "dense_units=8", "--set", "batch_size=16"]
TINY += ["--set", "seed=7", "--set", "l1_lambda=0.001", "--quiet"]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store; MLflow puts artifacts in ./mlruns, so the test runs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def data_npz(tmp_path: Path) -> Path:
    x, y = make_images(80, seed=4)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return tmp_path / "data.npz"


def _runs(uri: str, experiment: str = "l1cnn") -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_train_logs_params_epochs_metrics_and_files(store, data_npz, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", str(data_npz), "--out", str(out), "--set", "epochs=3", *TINY]
    assert main([*argv, "--mlflow", store, "--mlflow-experiment", "tiny"]) == 0
    assert "warning: MLflow" not in capsys.readouterr().err
    (run,) = _runs(store, "tiny")
    client = mlflow.MlflowClient(tracking_uri=store)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["l1cnn.run_dir"] == str(out.resolve())
    assert run.data.tags["l1cnn.status"] == read_json(out / "run.json")["status"]
    # The resolved config, including what the data decided (image size, channels).
    params = run.data.params
    assert params["model.conv_filters"] == "[4, 8]" and params["train.seed"] == "7"
    assert params["data.image_size"] == "12" and params["data.channels"] == "1"
    # One value per epoch per history column, equal to history.csv.
    history = read_csv(out / "history.csv")
    for name in ("loss", "val_loss", "accuracy", "l1_penalty"):
        logged = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in logged] == [1, 2, 3]
        assert [m.value for m in logged] == pytest.approx([float(r[name]) for r in history])
    metrics = read_json(out / "metrics.json")
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["val/roc_auc"] == pytest.approx(metrics["val"]["roc_auc"])
    assert run.data.metrics["threshold"] == pytest.approx(metrics["threshold"]["value"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.keras", "report.html", "report.md", "metrics.json", "config.toml"} <= names
    model = Path(client.download_artifacts(run.info.run_id, "model.keras", str(tmp_path)))
    assert file_sha256(model) == read_json(out / "run.json")["model_sha256"]


def test_unreachable_or_bad_store_warns_once_and_keeps_the_run(data_npz, tmp_path, capsys):
    out = tmp_path / "run"
    unreachable = f"http://127.0.0.1:{_closed_port()}"
    argv = ["train", str(data_npz), "--out", str(out), "--set", "epochs=2", *TINY]
    assert main([*argv, "--mlflow", unreachable]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and unreachable in warnings[0], captured.err
    assert "Traceback" not in captured.err and "Test:" in captured.out
    info = read_json(out / "run.json")
    assert info["status"] == "completed" and (out / "model.keras").is_file()
    # A URI no MLflow store understands: the same one line, from the function studies use.
    said: list[str] = []
    assert log_runs(MlflowTarget("nope://where"), "study", [out], warn=said.append) is None
    assert len(said) == 1 and "nope://where" in said[0]


def test_epochs_the_callback_did_not_see_are_logged_from_history(store, trained_run, tmp_path):
    from l1cnn.runs import read_run_config
    from l1cnn.tracking import TrainTracking

    run = Path(shutil.copytree(trained_run, tmp_path / "stopped"))
    history = read_csv(run / "history.csv")
    with TrainTracking(MlflowTarget(store)) as tracking:
        tracking.start(read_run_config(run), run, read_json(run / "run.json"))
        (logger,) = tracking.callbacks
        logger.on_epoch_end(1, {k: float(v) for k, v in history[0].items()})
        # A callback before it stopped training: epochs 2 and 3 never reach it.
    (logged,) = _runs(store)
    steps = mlflow.MlflowClient(tracking_uri=store).get_metric_history(logged.info.run_id, "loss")
    assert [m.step for m in steps] == [1, 2, 3]
    assert [m.value for m in steps] == pytest.approx([float(r["loss"]) for r in history])


def test_target_from_the_flag_or_the_environment(store):
    assert resolve_target(None, environ={}) is None
    env = {"MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": "team"}
    assert resolve_target(None, environ=env) == MlflowTarget(store, "team")
    assert resolve_target("off", environ=env) is None  # the flag wins, and can turn it off
    assert resolve_target("sqlite:///other.db", "mine", env) == MlflowTarget(
        "sqlite:///other.db", "mine"
    )


def test_log_runs_makes_a_parent_with_one_child_per_run_folder(store, trained_run, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(trained_run, second)
    results = tmp_path / "results.csv"
    results.write_text("configuration,test_accuracy\na,0.5\n")
    parent = log_runs(
        MlflowTarget(store, "search"),
        "search-1",
        {"a/seed-7": trained_run, "b/seed-7": second},
        params={"space": "l1_lambda"},
        metrics={"best_val_roc_auc": 0.75},
        artifacts=[results],
    )
    assert parent is not None
    client = mlflow.MlflowClient(tracking_uri=store)
    logged = {r.info.run_name: r for r in _runs(store, "search")}
    assert set(logged) == {"search-1", "a/seed-7", "b/seed-7"}
    top = logged["search-1"]
    assert top.info.run_id == parent and top.data.params == {"space": "l1_lambda"}
    assert top.data.metrics == {"best_val_roc_auc": 0.75}
    assert [a.path for a in client.list_artifacts(parent)] == ["results.csv"]
    history = read_csv(trained_run / "history.csv")
    for name in ("a/seed-7", "b/seed-7"):
        child = logged[name]
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.info.status == "FINISHED"
        steps = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.value for m in steps] == pytest.approx([float(r["val_loss"]) for r in history])
        assert "model.keras" in {a.path for a in client.list_artifacts(child.info.run_id)}


@pytest.mark.slow  # trains one trial in a subprocess
def test_study_cli_logs_a_parent_run_with_its_trials(store, data_npz, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('[[trial]]\nname = "specified"\n')
    out = tmp_path / "study"
    argv = ["study", str(data_npz), "--preset", str(grid), "--seeds", "1", "--out", str(out)]
    assert main([*argv, *TINY[:-1], "--set", "epochs=1", "--mlflow", store]) == 0
    assert "MLflow:   run " in capsys.readouterr().out
    logged = {r.info.run_name: r for r in _runs(store)}
    assert set(logged) == {"study", "specified/seed-7"}
    child = logged["specified/seed-7"]
    assert child.data.tags["mlflow.parentRunId"] == logged["study"].info.run_id
    assert logged["study"].data.params["preset"] == str(grid)
    assert child.data.params["model.l1_lambda"] == "0.001"


def test_train_without_mlflow_imports_no_mlflow(data_npz, tmp_path):
    import subprocess

    script = (
        "import sys; from l1cnn.cli import main; "
        f"code = main(['train', {str(data_npz)!r}, '--out', {str(tmp_path / 'r')!r}, "
        "'--set', 'epochs=1', '--set', 'conv_filters=[4,8]', '--set', 'dense_units=8', "
        "'--quiet']); print(code, 'mlflow' in sys.modules)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stderr


@pytest.mark.slow  # a trainer in a subprocess, killed, then resumed
def test_resumed_run_logs_its_whole_history_once(store, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from l1cnn import backup

    x, y = make_images(1600, seed=5)
    np.savez(tmp_path / "big.npz", x=x, y=y)
    run = tmp_path / "killed"
    argv = ["train", str(tmp_path / "big.npz"), "--out", str(run), *TINY, "--set", "epochs=6"]
    argv += ["--set", "patience=10", "--mlflow", store]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "l1cnn.cli", *argv], env=env, cwd=tmp_path, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            state = backup.load(run) if (run / "backup.npz").exists() else None
            if state is not None and state.epoch >= 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the trainer finished before it was killed"
    assert main(["train", "--resume", str(run), "--quiet", "--mlflow", store]) == 0
    killed, resumed = _runs(store)
    assert killed.info.run_name == resumed.info.run_name == "killed"
    assert resumed.info.status == "FINISHED"
    client = mlflow.MlflowClient(tracking_uri=store)
    logged = client.get_metric_history(resumed.info.run_id, "val_loss")
    history = read_csv(run / "history.csv")
    assert [m.step for m in logged] == list(range(1, len(history) + 1))  # each epoch once
    assert [m.value for m in logged] == pytest.approx([float(r["val_loss"]) for r in history])
