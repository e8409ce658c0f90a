"""Issue 6: models from elsewhere (sha256, Keras safe mode), divergence, read-only run folders."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import make_images, tiny_config, unprivileged

from l1cnn import backup, load_run, runs
from l1cnn.cli import main
from l1cnn.data import Split, make_tf_dataset
from l1cnn.errors import ModelError, RunError
from l1cnn.loop import EpochCallback, FitData, StepSettings, fit
from l1cnn.model import build_model, compile_model
from l1cnn.train import resume, train


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str, status: int = 2) -> None:
    assert code == status, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and fragment in err, err


def _copy(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest))


def _record_sha(run: Path) -> None:
    """Make run.json vouch for the current model.keras, so only safe mode stands in the way."""
    info = json.loads((run / "run.json").read_text())
    info["model_sha256"] = runs.file_sha256(run / "model.keras")
    (run / "run.json").write_text(json.dumps(info))


def test_run_records_the_model_sha256(trained_run: Path) -> None:
    info = json.loads((trained_run / "run.json").read_text())
    assert len(info["model_sha256"]) == 64
    assert info["model_sha256"] == runs.file_sha256(trained_run / "model.keras")
    assert load_run(trained_run).model is not None


def test_swapped_or_truncated_model_is_refused(trained_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(trained_run, tmp_path / "run")
    other = runs.load_model_file(run / "model.keras")
    other.set_weights([w + 0.5 for w in other.get_weights()])  # a valid, different model
    runs.save_model_atomic(other, run / "model.keras")
    with pytest.raises(ModelError, match="does not match run.json .* replaced or corrupted"):
        load_run(run)
    code, _, err = run_cli(["evaluate", run], capsys)
    assert_one_line_error(code, err, "does not match run.json")
    code, _, err = run_cli(["predict", run, tmp_path], capsys)
    assert_one_line_error(code, err, "does not match run.json")

    good = (trained_run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="does not match run.json"):
        load_run(run)
    _record_sha(run)  # even when run.json is changed to match, a broken file is named
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_run(run)


def _lambda_model(path: Path, marker: Path) -> None:
    """A real .keras file whose Lambda layer creates ``marker`` whenever it is called."""
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Lambda(lambda t, m=str(marker): (open(m, "w").close(), t)[1], name="evil")(
        inputs
    )
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model called it once


def _with_function(source: Path, dest: Path, function: dict) -> None:
    """Copy a .keras archive, pointing its Lambda layer at another function (config.json only)."""
    with zipfile.ZipFile(source) as z:
        items = {name: z.read(name) for name in z.namelist()}
    config = json.loads(items["config.json"])
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            layer["config"]["function"] = function
    items["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dest, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)


def _function(module: str, name: str) -> dict:
    return {
        "module": module,
        "class_name": "function",
        "config": name,
        "registered_name": "function",
    }


@pytest.mark.parametrize(
    "payload",
    [
        "lambda",  # Python bytecode in a Lambda layer (CVE-2024-3660)
        "keras.config",  # turn safe mode off from inside the file (CVE-2025-9906)
        "os.system",  # a function from an arbitrary module (CVE-2025-1550)
    ],
)
def test_models_that_could_run_code_are_refused(
    trained_run: Path, tmp_path: Path, capsys, payload: str
) -> None:
    from keras.src.saving import serialization_lib

    run = _copy(trained_run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "lambda.keras"
    _lambda_model(crafted, marker)
    if payload == "lambda":
        shutil.copy(crafted, run / "model.keras")
    elif payload == "keras.config":
        _with_function(
            crafted, run / "model.keras", _function("keras.config", "enable_unsafe_deserialization")
        )
    else:
        _with_function(crafted, run / "model.keras", _function("os", "system"))
    _record_sha(run)
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_run(run)
    for args in (["evaluate", run], ["predict", run, tmp_path]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, "cannot be loaded safely")
    assert not marker.exists()
    assert serialization_lib.in_safe_mode() is not False  # safe mode was not switched off


def test_absurd_learning_rate_stops_in_epoch_one_with_nothing_half_written(
    npz_file: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            npz_file,
            "--out",
            run,
            "--quiet",
            "--conv-filters",
            "4,8",
            "--dense-units",
            "8",
            "--epochs",
            "3",
            "--learning-rate",
            "1e12",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "NaN or infinite in epoch 1", status=1)
    assert "no model was saved" in err and "lower learning_rate" in err
    # The records, and the TensorBoard folder (made before training to check it is writable),
    # which holds no epoch: nothing of the failed epoch was written.
    assert sorted(p.name for p in run.iterdir()) == [
        "config.toml",
        "data.json",
        "run.json",
        "split.json",
        "tensorboard",
    ]
    from l1cnn.tensorboard_log import logged_values

    assert not logged_values(run / "tensorboard")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "diverged" and "epoch 1" in info["message"]
    code, _, err = run_cli(["evaluate", run], capsys)
    assert_one_line_error(code, err, "not a finished l1cnn run")
    code, out, _ = run_cli(["train", "--resume", run], capsys)
    assert code == 0 and "already finished" in out


def test_divergence_after_good_epochs_keeps_the_last_good_weights() -> None:
    # Real training whose third epoch meets non-finite pixels: the loop must stop, name the
    # epoch, and hand back exactly the weights of epoch 2.
    config = tiny_config()
    keras.utils.set_random_seed(3)
    model = compile_model(build_model(config.model, (12, 12, 1)), config)
    x, y = make_images(64, seed=1)
    good = Split(x, y, [str(i) for i in range(64)])
    poisoned = Split(
        np.where(np.arange(64)[:, None, None, None] == 5, np.inf, x.astype(np.float32)), y, good.ids
    )
    after: dict[int, list[np.ndarray]] = {}

    def epoch_data(epoch: int):
        return make_tf_dataset(poisoned if epoch == 3 else good, 16, shuffle=True, seed=epoch)

    class KeepWeights(EpochCallback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            after[epoch] = model.get_weights()

    result = fit(
        model,
        FitData(epoch_data, make_tf_dataset(good, 64), y),
        StepSettings(0.01, "penalty", 0.001),
        epochs=5,
        early_stopping=None,
        callbacks=[KeepWeights()],
    )
    assert result.status == "diverged" and "epoch 3" in result.message
    assert [h["epoch"] for h in result.history] == [1, 2] and result.best_epoch == 2
    for now, then in zip(model.get_weights(), after[2], strict=True):
        np.testing.assert_array_equal(now, then)
        assert np.all(np.isfinite(now))


def _make_read_only_after_first_backup(run: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        if (run / "backup.npz").exists():
            run.chmod(0o555)
            return
        time.sleep(0.002)


@pytest.mark.slow
def test_run_folder_turning_read_only_mid_training(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="l1cnn-readonly-"))  # reachable by 'nobody' too
    try:
        base.chmod(0o777)
        x, y = make_images(1200, seed=2)
        data = base / "data.npz"
        np.savez(data, x=x, y=y)
        data.chmod(0o644)
        run = base / "run"
        stop = threading.Event()
        watcher = threading.Thread(target=_make_read_only_after_first_backup, args=(run, stop))
        config = tiny_config(train={"epochs": 6, "patience": 6})
        with unprivileged():
            watcher.start()
            try:
                with pytest.raises(RunError) as caught:
                    train(data, config, out=run)
            finally:
                stop.set()
                watcher.join()
            message = str(caught.value)
            assert "\n" not in message and "Permission denied" in message
            assert f"--resume {run}" in message
            # Everything written before is intact: records, and the backup of a finished epoch.
            state = backup.load(run)
            assert state is not None and 1 <= state.epoch < 6
            assert f"backup of epoch {state.epoch + 1}" in message
            info = json.loads((run / "run.json").read_text())
            assert info["status"] == "running" and not (run / "model.keras").exists()
            assert runs.read_run_config(run).train == config.train
            assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
            # Fixed: the run resumes from where it stood (the stale lock file is taken over).
            run.chmod(0o755)
            result = resume(run)
        assert result is not None and result.epochs_run > state.epoch
        assert json.loads((run / "run.json").read_text())["resumed"][0]["from_epoch"] == state.epoch
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
