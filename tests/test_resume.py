"""Issue 6: per-epoch backups, ``train --resume``, the run-folder lock, and kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config

from l1cnn import backup, runs
from l1cnn.cli import main
from l1cnn.config import dumps_config
from l1cnn.errors import DataError, RunError
from l1cnn.loop import make_early_stopping
from l1cnn.model import build_model, compile_model
from l1cnn.train import resume, train

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _history_without_time(rows: list[dict]) -> list[dict]:
    """History rows as numbers, minus the wall-clock seconds (which differ between runs)."""
    return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in rows]


def _unfinished_copy(trained_run: Path, dest: Path) -> Path:
    """A copy of a finished run as a kill in epoch 1 leaves it: status running, no results."""
    run = Path(shutil.copytree(trained_run, dest))
    for name in ("model.keras", "metrics.json", "history.csv", "predictions.csv"):
        (run / name).unlink(missing_ok=True)
    info = json.loads((run / "run.json").read_text())
    info["status"] = "running"
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_backup_round_trip_is_exact_and_atomic(tmp_path: Path) -> None:
    config = tiny_config()
    model = compile_model(build_model(config.model, (12, 12, 1)), config)
    model.optimizer.build(model.trainable_variables)
    for variable in [*model.optimizer.variables, *backup.rng_variables(model)]:
        variable.assign(np.full(variable.shape, 3, variable.dtype))
    stopper = make_early_stopping(config)
    stopper.best, stopper.best_epoch, stopper.wait = 0.25, 2, 1
    stopper.best_weights = [w * 2 for w in model.get_weights()]
    history = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    backup.save(tmp_path, backup.capture(model, model.optimizer, history, stopper))
    assert [p.name for p in tmp_path.iterdir()] == ["backup.npz"]  # no temporary file left

    fresh = compile_model(build_model(config.model, (12, 12, 1)), config)
    fresh_stopper = make_early_stopping(config)
    state = backup.load(tmp_path)
    assert state is not None and state.epoch == 2 and state.history == history
    backup.restore(state, fresh, fresh.optimizer, fresh_stopper)
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    rng = backup.rng_variables(fresh)
    assert len(rng) == 2 and all(np.array(v).tolist() == [3, 3] for v in rng)  # two Dropouts
    assert (fresh_stopper.best, fresh_stopper.best_epoch, fresh_stopper.wait) == (0.25, 2, 1)
    np.testing.assert_array_equal(fresh_stopper.best_weights[0], stopper.best_weights[0])

    bigger = compile_model(
        build_model(tiny_config(model={"dense_units": 9}).model, (12, 12, 1)), config
    )
    with pytest.raises(RunError, match="does not fit the run's model"):
        backup.restore(state, bigger, bigger.optimizer, None)
    (tmp_path / "backup.npz").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(RunError, match="backup .* cannot be read"):
        backup.load(tmp_path)


def test_finished_run_is_left_alone(trained_run: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert resume(run) is None
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "nothing to resume" in out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / "backup.npz").exists() and not (run / "train.lock").exists()


@pytest.mark.slow
def test_resume_after_a_kill_in_epoch_one_equals_the_uninterrupted_run(
    trained_run: Path, tmp_path: Path
) -> None:
    # Killed before the first backup: resume starts over and, being seeded and deterministic,
    # reproduces the uninterrupted run exactly.
    run = _unfinished_copy(trained_run, tmp_path / "run")
    (run / ".backup.npz.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half")  # killed mid-write
    (run / ".model.k1ll3d.keras").write_bytes(b"PK\x03\x04 half")
    result = resume(run)
    assert result is not None and result.status in ("completed", "early_stopped")
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    expected = _history_without_time(runs.read_csv(trained_run / "history.csv"))
    assert _history_without_time(runs.read_csv(run / "history.csv")) == expected
    assert json.loads((run / "metrics.json").read_text()) == json.loads(
        (trained_run / "metrics.json").read_text()
    )
    info = json.loads((run / "run.json").read_text())
    assert info["resumed"][0]["from_epoch"] == 0 and info["status"] == result.status
    assert info["model_sha256"] == runs.file_sha256(run / "model.keras")
    assert not (run / "backup.npz").exists() and not (run / "train.lock").exists()


def test_resume_refuses_changed_data(trained_run: Path, tmp_path: Path, capsys) -> None:
    run = _unfinished_copy(trained_run, tmp_path / "run")
    data = json.loads((run / "data.json").read_text())
    data["fingerprint"] = "0" * 64
    (run / "data.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="has changed since run"):
        resume(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--resume", "{missing}"], "not an l1cnn run folder"),
        (["train", "--resume", "{run}", "digits"], "drop DATA"),
        (["train", "--resume", "{run}", "--epochs", "3"], "drop --epochs"),
        (["train"], "train needs DATA"),
    ],
)
def test_resume_argument_errors(
    trained_run: Path, tmp_path: Path, capsys, args: list[str], fragment: str
) -> None:
    args = [a.format(missing=tmp_path / "nope", run=trained_run) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err


def _hold_lock_in_another_process(run: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from l1cnn.runs import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, env=ENV, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_second_trainer_is_refused_and_stale_lock_is_taken_over(
    trained_run: Path, tmp_path: Path, capsys
) -> None:
    run = _unfinished_copy(trained_run, tmp_path / "run")
    holder = _hold_lock_in_another_process(run)
    try:
        assert (run / "train.lock").read_text().strip() == str(holder.pid)
        with pytest.raises(RunError, match=f"another process \\(PID {holder.pid}"):
            resume(run)
        assert main(["train", "--resume", str(run)]) == 2
        assert f"PID {holder.pid}" in capsys.readouterr().err
        # --overwrite must not delete a run that is being trained either
        assert main(["train", "digits", "--out", str(run), "--overwrite"]) == 2
        assert "another process" in capsys.readouterr().err and (run / "config.toml").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock file (with its PID) is stale and is taken
    # over (the kill-and-resume test below does the same through a real resume).
    assert (run / "train.lock").read_text().strip() == str(holder.pid)
    with runs.RunLock(run):
        assert (run / "train.lock").read_text().strip() == str(os.getpid())
    assert not (run / "train.lock").exists()


def test_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    with runs.RunLock(tmp_path):
        assert (tmp_path / "train.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunError, match="being trained by another process"):
            runs.RunLock(tmp_path).acquire()
    assert not (tmp_path / "train.lock").exists()
    runs.RunLock(tmp_path).acquire().release()  # free again


def _wait_for_backup(run: Path, epoch: int, proc: subprocess.Popen, timeout: float) -> int:
    """Poll until the backup of ``epoch`` (or later) exists; returns the epoch found."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"trainer exited early with {proc.returncode}: {proc.stderr.read()}")
        state = backup.load(run) if (run / "backup.npz").exists() else None
        if state is not None and state.epoch >= epoch:
            return state.epoch
        time.sleep(0.01)
    pytest.fail(f"no backup of epoch {epoch} after {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    # Enough images that an epoch lasts a fraction of a second, so the kill lands mid-epoch.
    x, y = make_images(1600, seed=5)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    config = tiny_config(train={"epochs": 8, "patience": 10, "seed": 11})
    config_file = tmp_path / "config.toml"
    config_file.write_text(dumps_config(config))
    command = [
        sys.executable,
        "-m",
        "l1cnn.cli",
        "train",
        str(data),
        "--config",
        str(config_file),
        "--quiet",
    ]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*command, "--out", str(killed)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_backup(killed, 2, proc, timeout=240)
        time.sleep(0.05)  # into the next epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "running" and not (killed / "model.keras").exists()
    assert (killed / "train.lock").exists()  # left behind by the dead trainer: stale
    saved = backup.load(killed)  # whole: the old backup or the new one, never half
    assert saved is not None and 2 <= saved.epoch < 8

    resumed = subprocess.run(
        [sys.executable, "-m", "l1cnn.cli", "train", "--resume", str(killed), "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr

    straight = train(data, config, out=tmp_path / "straight").run_dir  # uninterrupted

    history = runs.read_csv(killed / "history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, 9))  # none lost or repeated
    # Exact equality: seeded, TensorFlow op determinism, per-epoch shuffle seeds and restored
    # dropout generator state make the resumed run bit-identical to the uninterrupted one.
    assert _history_without_time(history) == _history_without_time(
        runs.read_csv(straight / "history.csv")
    )
    assert json.loads((killed / "metrics.json").read_text()) == json.loads(
        (straight / "metrics.json").read_text()
    )
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"][0]["from_epoch"] == saved.epoch
    assert not (killed / "backup.npz").exists() and not (killed / "train.lock").exists()
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")]  # no temp files
