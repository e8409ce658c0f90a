"""Data-parallel training (l1cnn.distribute) with real worker processes on loopback, and shards.

The multi-process tests start ``l1cnn train ... --strategy multi-worker`` twice with free
loopback ports (or once with the CPU split into two logical devices for ``mirrored``) on the
bundled digits, and compare with a single process: the only guarantee that Keras 3 layers and
optimizers train correctly under tf.distribute (nothing upstream tests them there).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import l1cnn
from l1cnn.cli import main
from l1cnn.config import Config
from l1cnn.distribute import (
    ClusterOptions,
    Single,
    cluster_from_tf_config,
    parse_workers,
    setup,
    shard_rows,
    tf_config,
)
from l1cnn.errors import ConfigError
from l1cnn.inference import shard_bounds

SRC = str(Path(l1cnn.__file__).resolve().parents[1])
# Tiny and deterministic: dropout off, every epoch trained, no TensorBoard (faster).
TINY = [
    "--set", "model.conv_filters=[4,8]", "--set", "model.dense_units=8",
    "--batch-size", "32", "--set", "train.seed=7", "--set", "train.early_stopping=false",
    "--set", "train.tensorboard=false", "--quiet",
]  # fmt: skip
NO_DROPOUT = ["--set", "model.dropout_rate=0"]
BOUND_S = 300  # a worker still running after this has hung: the test fails


# --------------------------------------------------------------------------- fast: pure logic


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_shard_rows_are_disjoint_complete_and_balanced(n: int, parts: int) -> None:
    bounds = [shard_rows(n, k, parts) for k in range(parts)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[k][1] == bounds[k + 1][0] for k in range(parts - 1))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(0, 5000), st.integers(1, 50))
def test_predict_shards_concatenate_to_everything(total: int, n: int) -> None:
    items = list(range(total))
    joined = [i for k in range(1, n + 1) for i in items[slice(*shard_bounds(total, k, n))]]
    assert joined == items


def test_tf_config_from_workers_and_back() -> None:
    workers = parse_workers("localhost:1234, 10.0.0.2:2222")
    assert workers == ("localhost:1234", "10.0.0.2:2222")
    cluster = cluster_from_tf_config(json.dumps(tf_config(workers, 1)))
    assert cluster.workers == workers and cluster.index == 1 and not cluster.is_chief
    # Kubeflow's TFJob form: a chief job comes first, so worker 0 is replica group 1.
    spec = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, "task": {"type": "chief"}}
    spec["task"]["index"] = 0
    assert cluster_from_tf_config(json.dumps(spec)).is_chief
    spec["task"] = {"type": "worker", "index": 0}
    assert cluster_from_tf_config(json.dumps(spec)).index == 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "set TF_CONFIG"),
        ("{not json", "not valid"),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "chief and worker"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not in"),
    ],
)
def test_bad_tf_config_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        cluster_from_tf_config(text)


@pytest.mark.parametrize(
    ("text", "fragment"), [("a:1,a:1", "twice"), ("nohost", "not host:port"), (",", "needs")]
)
def test_bad_workers_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_workers(text)


def test_strategy_none_is_the_single_process_path() -> None:
    single = setup("none", ClusterOptions())
    assert isinstance(single, Single) and single.is_chief and single.num_replicas == 1
    assert single.step_factory() is l1cnn.loop.make_train_steps
    assert Config().train.strategy == "none"
    with pytest.raises(ConfigError, match="needs --strategy multi-worker"):
        setup("none", ClusterOptions(workers=("a:1",), worker_index=0))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--strategy", "multi-worker", "--workers", "a:1,b:2", "--worker-index", "0"], "--out"),
        (["--strategy", "multi-worker", "--workers", "a:1,b:2", "--out", "x"], "--worker-index"),
        (["--workers", "a:1,b:2", "--worker-index", "0", "--out", "x"], "multi-worker"),
        (["--strategy", "ring"], "strategy"),
        (["--shard", "1/2"], "unrecognized"),
    ],
)
def test_cli_refuses_bad_cluster_options(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    try:
        code = main(["train", "digits", *args])
    except SystemExit as exc:  # argparse's own refusals exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]


def test_predict_shards_write_one_machines_csv(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import make_images

    x, _ = make_images(23, seed=5)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=x[..., 0])
    assert main(["predict", str(trained_run), str(inputs), "--output", tmp_path / "all.csv"]) == 0
    rows = []
    for k in (1, 2, 3):
        out = tmp_path / f"part{k}.csv"
        assert (
            main(["predict", str(trained_run), str(inputs), "--shard", f"{k}/3", "--output", out])
            == 0
        )
        with out.open() as f:
            part = list(csv.reader(f))
        assert part[0] == ["path", "probability", "predicted_class"]
        assert 7 <= len(part) - 1 <= 8  # 23 inputs in three balanced slices
        rows += part[1:]
    with (tmp_path / "all.csv").open() as f:
        assert rows == list(csv.reader(f))[1:]
    with pytest.raises(SystemExit) as refused:  # argparse refuses it (one line, exit 2)
        main(["predict", str(trained_run), str(inputs), "--shard", "4/3"])
    assert refused.value.code == 2 and "1 <= K <= N" in capsys.readouterr().err


# --------------------------------------------------------------------------- slow: processes


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(tmp: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TF_CONFIG", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user gets
    if tmp is not None:  # where a non-chief worker keeps its temporary run folder
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
    return env


def _start_workers(
    tmp_path: Path, out: Path, args: list[str], per_worker: dict[int, list[str]] | None = None
) -> list[subprocess.Popen]:
    """Two ``l1cnn train`` workers on free loopback ports (args[0] is DATA or --resume RUN)."""
    workers = ",".join(f"localhost:{p}" for p in _free_ports(2))
    procs = []
    for index in (1, 0):  # the chief last: it waits for the other either way
        cmd = [sys.executable, "-m", "l1cnn.cli", "train", *args]
        cmd += [
            "--workers",
            workers,
            "--worker-index",
            str(index),
            *(per_worker or {}).get(index, []),
        ]
        if "--resume" not in args:
            cmd += ["--strategy", "multi-worker", "--out", str(out)]
        procs.append(
            subprocess.Popen(
                cmd,
                env=_env(tmp_path / f"tmp{index}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs[::-1]  # [chief, worker 1]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    deadline = time.monotonic() + BOUND_S
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"a worker hung for more than {BOUND_S} s")
        results.append((proc.returncode, out, err))
    return results


def _single(tmp_path: Path, extra: list[str]) -> Path:
    out = tmp_path / "single"
    code = main(["train", "digits", *TINY, *extra, "--out", out])
    assert code == 0
    return out


def _history(run: Path) -> list[dict[str, float]]:
    with (run / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _assert_same_training(run: Path, reference: Path) -> None:
    """History within 1e-4 relative, every epoch, and saved weights within 1e-4."""
    import keras

    got, want = _history(run), _history(reference)
    assert [h["epoch"] for h in got] == [h["epoch"] for h in want]
    for key in ("loss", "data_loss", "l1_penalty", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in got], [h[key] for h in want], rtol=1e-4)
    a = keras.saving.load_model(run / "model.keras", compile=False).get_weights()
    b = keras.saving.load_model(reference / "model.keras", compile=False).get_weights()
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_workers_train_exactly_as_one_process(tmp_path: Path) -> None:
    epochs = ["--epochs", "3"]
    out = tmp_path / "run"
    procs = _start_workers(tmp_path, out, ["digits", *TINY, *NO_DROPOUT, *epochs])
    (c0, o0, e0), (c1, o1, e1) = _finish(procs)
    assert c0 == 0 and c1 == 0, e0 + e1
    assert "Traceback" not in e0 + e1
    # The chief wrote the run folder; the other worker's temporary folder is gone.
    assert (out / "report.html").is_file() and (out / "model.keras").is_file()
    assert list((tmp_path / "tmp1").iterdir()) == []
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and "--worker-index" in run["command"]
    _assert_same_training(out, _single(tmp_path, [*NO_DROPOUT, *epochs]))


@pytest.mark.slow
def test_two_workers_with_dropout_learn(tmp_path: Path) -> None:
    out = tmp_path / "run"
    procs = _start_workers(tmp_path, out, ["digits", *TINY, "--epochs", "3"])
    (c0, _, e0), (c1, _, e1) = _finish(procs)
    assert c0 == 0 and c1 == 0, e0 + e1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] > 0.6  # chance is 0.5
    assert len(_history(out)) == 3


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from l1cnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("l1_mode", ["penalty", "proximal"])
def test_mirrored_over_two_logical_devices_trains_as_one_process(
    tmp_path: Path, l1_mode: str
) -> None:
    out = tmp_path / "mirrored"
    # l1 penalty well above zero: a penalty added per replica would show in loss and weights;
    # proximal: the kernels are soft-thresholded once per step, not once per replica.
    extra = [*NO_DROPOUT, "--epochs", "3", "--set", "model.l1_lambda=0.001"]
    extra += ["--set", f"model.l1_mode={l1_mode}"]
    args = ["train", "digits", *TINY, *extra, "--strategy", "mirrored", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "run.json").read_text())["distributed"]["replicas"] == 2
    reference = _single(tmp_path, extra)
    assert _history(reference)[0]["l1_penalty"] > 0.1 * _history(reference)[0]["loss"]
    _assert_same_training(out, reference)


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_and_both_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["digits", *TINY, *NO_DROPOUT, "--epochs", "12", "--collective-timeout", "8"]
    chief, worker = _start_workers(tmp_path, out, args)
    deadline = time.monotonic() + BOUND_S
    while not (out / "backup.npz").exists():  # epoch 1 finished
        assert chief.poll() is None and time.monotonic() < deadline, chief.stderr.read()
        time.sleep(0.2)
    time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = time.monotonic()
    ((code, _, err),) = _finish([chief])
    assert time.monotonic() - killed < 120  # 8 s timeout: the health check, then the exit
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and err.strip().splitlines() == errors, err  # one line, nothing else
    assert "worker 1 (localhost:" in errors[0] and "was lost" in errors[0], err
    assert f"l1cnn train --resume {out}" in errors[0]
    stopped_at = json.loads((out / "run.json").read_text())
    assert stopped_at["status"] == "running"  # not finished: resumable
    procs = _start_workers(tmp_path, out, ["--resume", str(out), "--quiet"])
    (c0, _, e0), (c1, _, e1) = _finish(procs)
    assert c0 == 0 and c1 == 0, e0 + e1
    assert [int(h["epoch"]) for h in _history(out)] == list(range(1, 13))
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def _two_npz(tmp_path: Path) -> tuple[Path, Path]:
    """Two readable .npz files of different images (different fingerprints)."""
    from conftest import make_images

    paths = tmp_path / "a.npz", tmp_path / "b.npz"
    for seed, path in enumerate(paths):
        x, y = make_images(120, seed=seed)
        np.savez(path, x=x, y=y)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("what", ["config", "data fingerprint"])
def test_workers_that_disagree_are_refused_before_training(tmp_path: Path, what: str) -> None:
    out = tmp_path / "run"
    a, b = _two_npz(tmp_path)
    workers = ",".join(f"localhost:{p}" for p in _free_ports(2))
    cmds = []
    for index in (0, 1):
        data = b if what == "data fingerprint" and index == 1 else a
        cmd = [sys.executable, "-m", "l1cnn.cli", "train", str(data), *TINY, "--epochs", "1"]
        cmd += ["--strategy", "multi-worker", "--workers", workers, "--worker-index", str(index)]
        cmd += ["--out", str(out)]
        if what == "config" and index == 1:
            cmd += ["--learning-rate", "0.01"]
        cmds.append(cmd)
    procs = [
        subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    for code, _, err in _finish(procs):
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and err.strip().splitlines() == errors, err  # one line only
        assert "worker 1 (localhost:" in errors[0] and f"different {what}" in errors[0]
    assert not (out / "backup.npz").exists() and not (out / "model.keras").exists()


@pytest.mark.slow
def test_a_worker_that_cannot_read_the_data_is_refused(tmp_path: Path) -> None:
    good, bad = _two_npz(tmp_path)
    bad.write_bytes(b"not an npz file")
    # Worker 1 has an unreadable copy of the data: both refuse before training, naming it.
    workers = ",".join(f"localhost:{p}" for p in _free_ports(2))
    cmds = [
        [sys.executable, "-m", "l1cnn.cli", "train", str(data), *TINY, "--epochs", "1",
         "--strategy", "multi-worker", "--workers", workers, "--worker-index", str(i),
         "--out", str(tmp_path / "run2")]
        for i, data in ((0, good), (1, bad))
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    (c0, _, e0), (c1, _, e1) = _finish(procs)
    assert c0 == 2 and e0.strip().splitlines() == [
        f"error: worker 1 ({workers.split(',')[1]}) cannot read the data; nothing trained"
    ], e0
    assert c1 == 2 and len(e1.strip().splitlines()) == 1 and e1.startswith("error: "), e1
    assert not (tmp_path / "run2" / "model.keras").exists()


@pytest.mark.slow
def test_a_worker_that_never_joins_ends_the_wait(tmp_path: Path) -> None:
    workers = ",".join(f"localhost:{p}" for p in _free_ports(2))
    cmd = [sys.executable, "-m", "l1cnn.cli", "train", "digits", *TINY, "--epochs", "1"]
    cmd += ["--strategy", "multi-worker", "--workers", workers, "--worker-index", "0"]
    cmd += ["--out", str(tmp_path / "run"), "--join-timeout", "5"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=BOUND_S)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    # TensorFlow blocks, holding the GIL, until every worker registers: l1cnn's watchdog
    # process writes the error and ends the worker with SIGKILL.
    assert proc.returncode == -signal.SIGKILL and len(errors) == 1, proc.stderr
    assert "not every worker joined within 5 s" in errors[0] and "worker 1" in errors[0]
