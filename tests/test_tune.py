"""Issue 13: ``l1cnn tune`` on Optuna: space, pruning, two objectives, shared storages.

The storages are real: SQLite files, and a throwaway PostgreSQL cluster started by a fixture
from the server binaries (Debian's ``postgresql`` package; the PostgreSQL tests skip only where
they are absent). Trials train the tiny network on the bundled digits for 2-3 epochs.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

import l1cnn
from l1cnn.cli import main
from l1cnn.config import Config, load_config
from l1cnn.errors import ConfigError

optuna = pytest.importorskip("optuna", reason="l1cnn tune needs the [tune] extra (optuna)")

SRC = str(Path(l1cnn.__file__).resolve().parents[1])
TINY = [
    "--set",
    "model.conv_filters=[4, 8]",
    "--dense-units",
    "8",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--tensorboard",
    "false",
    "--seed",
    "7",
]
SMALL_SPACE = """
[l1_lambda]
low = 1e-5
high = 0.1
log = true
zero = true

[dropout_rate]
low = 0.0
high = 0.6
"""


def space_file(tmp_path: Path, text: str = SMALL_SPACE, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read_trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def one_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


# ------------------------------------------------------------------------- space, bad input


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[l1_lambdaa]\nlow = 0.0\nhigh = 1.0\n", "unknown parameter 'l1_lambdaa'"),
        ("[dropout_rate]\nlow = 0.5\nhigh = 0.5\n", "empty range: low 0.5 is not below high 0.5"),
        ("[batch_size]\nchoices = []\n", "choices must be a non-empty list"),
        ("[learning_rate]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "log = true, so low must be > 0"),
        ("[dropout_rate]\nlow = 0.0\nhigh = 0.7\nstep = 2\n", "unknown setting(s) ['step']"),
        ("[seed]\nlow = 1\nhigh = 9\n", "'seed' cannot be searched"),
        ("[dropout_rate]\nlow = 0.0\nhigh = 1.5\n", "'model.dropout_rate' must be in [0, 1)"),
        ("[learning_rate]\nlow = 0.01\nhigh = 0.1\n", "must hold the specified configuration"),
        ("[dropout_rate\n", "not valid TOML"),
    ],
)
def test_bad_space_file_is_one_error_line(
    text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["tune", "digits", "--space", str(space_file(tmp_path, text)), "--out", str(out)]
    assert main(args) == 2
    one_error(capsys, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--objective", "val_auc"], "unknown objective val_auc"),
        (["--objective", "sparsity"], "sparsity alone"),
        (["--objective", "sparsity,val_roc_auc"], "a validation metric then sparsity"),
        (["--within", "-1"], "--within must be >= 0"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--trials", "-2"], "--trials must be >= 0"),
        (["--heartbeat", "0"], "--heartbeat must be > 0"),
    ],
)
def test_bad_options_are_one_error_line(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", "digits", *args, "--out", str(tmp_path / "out")]) == 2
    one_error(capsys, fragment)


def test_unreachable_storage_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://someone:secret@127.0.0.1:{port}/tune"
    out = tmp_path / "out"
    assert main(["tune", "digits", "--storage", url, "--out", str(out), *TINY]) == 2
    line = one_error(capsys, "cannot open storage 'postgresql://someone:***@127.0.0.1")
    assert "secret" not in line
    assert not out.exists()


def test_default_space_holds_the_specified_configuration_and_widens_for_it() -> None:
    from l1cnn.tune_space import default_space, specified_params

    base = Config()
    space = {p.name: p for p in default_space(base, ["val_roc_auc"])}
    assert set(space) == {"l1_lambda", "dropout_rate", "learning_rate", "batch_size"}
    assert space["l1_lambda"].log and space["l1_lambda"].zero
    assert space["l1_lambda"].low <= 0.01 <= space["l1_lambda"].high
    params = specified_params(list(space.values()), base)
    assert params == {
        "l1_lambda": 0.01,
        "l1_lambda_zero": False,
        "dropout_rate": 0.5,
        "learning_rate": 0.001,
        "batch_size": 32,
    }
    odd = load_config(None, ["train.learning_rate=0.5", "train.batch_size=24"])
    widened = {p.name: p for p in default_space(odd, ["val_roc_auc", "sparsity"])}
    assert widened["learning_rate"].high == 0.5
    assert 24 in widened["batch_size"].choices
    assert widened["l1_mode"].choices == ("penalty", "proximal")  # sparsity needs proximal L1


def test_objectives_parse() -> None:
    from l1cnn.tune_space import parse_objectives

    assert parse_objectives("val_roc_auc") == ["val_roc_auc"]
    assert parse_objectives("val_loss, sparsity") == ["val_loss", "sparsity"]
    with pytest.raises(ConfigError, match="unknown objective"):
        parse_objectives("accuracy")


# --------------------------------------------------------------------- the pruning callback


class _Trial:
    """The two calls the callback makes, recorded (a real optuna trial is used below too)."""

    def __init__(self, prune: bool) -> None:
        self.reported: list[tuple[float, int]] = []
        self.prune = prune

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


def test_pruning_callback_prunes_a_trial_below_the_median_of_a_real_study() -> None:
    from l1cnn.loop import StopTraining
    from l1cnn.tune import TrialPruning

    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    good = study.ask()
    for epoch in (1, 2):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    labels = np.array([0, 1] * 10)
    strong = study.ask()  # separates the classes: ROC-AUC 1.0 > median 0.9, goes on
    pruning = TrialPruning(strong, labels, "val_roc_auc", report=True)
    pruning.on_validation(1, np.where(labels == 1, 0.6, 0.4))
    pruning.on_epoch_end(1, {"val_data_loss": 0.5})
    assert not strong.should_prune()
    weak = study.ask()  # ROC-AUC well below 0.9 at epoch 1: pruned
    pruning = TrialPruning(weak, labels, "val_roc_auc", report=True)
    noisy = np.random.default_rng(0).random(20) * 0.2 + np.where(labels == 1, 0.45, 0.5)
    pruning.on_validation(1, noisy)
    with pytest.raises(StopTraining) as stop:
        pruning.on_epoch_end(1, {"val_data_loss": 0.7})
    assert stop.value.status == "pruned"
    assert "worse than the median" in stop.value.message
    assert study.trials[1].intermediate_values == {1: 1.0}
    assert study.trials[2].intermediate_values[1] < 0.9


def test_pruning_callback_prunes_a_collapsed_trial_after_two_epochs_without_reporting() -> None:
    from l1cnn.loop import StopTraining
    from l1cnn.tune import COLLAPSE_PATIENCE, TrialPruning

    labels = np.array([0, 1] * 10)
    trial = _Trial(prune=False)
    pruning = TrialPruning(trial, labels, "val_roc_auc", report=False)  # two objectives
    constant = np.full(20, 0.5)
    pruning.on_validation(1, constant)
    pruning.on_epoch_end(1, {"val_data_loss": 0.69})
    assert COLLAPSE_PATIENCE == 2
    pruning.on_validation(2, constant)
    with pytest.raises(StopTraining, match="collapsed 2 epochs in a row") as stop:
        pruning.on_epoch_end(2, {"val_data_loss": 0.69})
    assert stop.value.status == "pruned"
    assert trial.reported == []  # multi-objective: nothing reported to Optuna


def test_pruned_is_a_final_status() -> None:
    from l1cnn import runs

    assert "pruned" in runs.FINAL_STATUSES  # resume leaves a pruned trial alone


# -------------------------------------------------------------------- searches on digits


@pytest.mark.slow
def test_search_writes_trials_best_config_and_page_and_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "search"
    space = space_file(tmp_path)
    args = ["tune", "digits", "--trials", "3", "--space", str(space), "--out", str(out), *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trial 0: " in printed and "Chosen:" in printed and "(chosen only)" in printed
    rows = read_trials(out)
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["specified"] == "True"
    assert float(rows[0]["l1_lambda"]) == 0.01 and float(rows[0]["dropout_rate"]) == 0.5
    for row in rows:
        run = Path(row["run_dir"])
        assert run.parent == out / "trials"
        info = json.loads((run / "run.json").read_text())
        assert info["status"] in ("completed", "early_stopped", "pruned", "collapsed")
        assert (run / "history.csv").exists() and (run / "report.html").exists()
    meta = json.loads((out / "tune.json").read_text())
    finished = [r for r in rows if r["state"] == "complete"]
    best = max(finished, key=lambda r: float(r["val_roc_auc"]))
    assert meta["chosen"] == int(best["number"]) and meta["specified"] == 0
    assert meta["epochs_total"] == sum(int(r["epochs_run"]) for r in rows)
    chosen = load_config(out / "best.toml")  # `l1cnn train --config` reads it
    assert chosen.model.dropout_rate == pytest.approx(float(best["dropout_rate"]))
    assert chosen.model.l1_lambda == pytest.approx(float(best["l1_lambda"]))
    assert chosen.model.conv_filters == (4, 8) and chosen.train.epochs == 2  # the base kept
    page = (out / "tune.html").read_text()
    assert "Specified vs chosen" in page and "Test metrics of the chosen configuration" in page
    assert "Optimization history" in page and "Slices" in page
    started = {
        r["number"]: json.loads((Path(r["run_dir"]) / "run.json").read_text())["started"]
        for r in rows
    }

    # The same command again trains nothing; a larger --trials adds trials, never repeats one.
    assert main(args) == 0
    assert "trial " not in capsys.readouterr().out.split("Trials:")[0].split("trials in all")[1]
    assert len(read_trials(out)) == 3
    args[args.index("--trials") + 1] = "4"
    assert main(args) == 0
    rows = read_trials(out)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    for r in rows[:3]:
        info = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        assert info["started"] == started[r["number"]]  # not retrained


@pytest.mark.slow
def test_a_hopeless_specified_model_is_pruned_and_keeps_its_history(tmp_path: Path) -> None:
    out = tmp_path / "search"
    space = space_file(tmp_path, "[l1_lambda]\nlow = 1e-5\nhigh = 3.0\nlog = true\n")
    args = ["tune", "digits", "--trials", "1", "--space", str(space), "--out", str(out)]
    # l1_lambda = 3 collapses the network in its first epochs: pruned before the fifth.
    assert main([*args, *TINY, "--l1-lambda", "3", "--epochs", "5", "--patience", "5"]) == 0
    (row,) = read_trials(out)
    assert row["state"] == "pruned" and row["status"] == "pruned"
    assert "collapsed 2 epochs in a row" in row["message"]
    run = Path(row["run_dir"])
    assert json.loads((run / "run.json").read_text())["status"] == "pruned"
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    epochs = [int(h["epoch"]) for h in history]  # the epochs it trained, not the 5 asked for
    assert epochs == list(range(1, len(epochs) + 1)) and 2 <= len(epochs) < 5
    assert f"pruned after epoch {len(epochs)}: collapsed" in row["message"]
    meta = json.loads((out / "tune.json").read_text())
    assert meta["chosen"] is None and meta["specified"] == 0
    assert not (out / "best.toml").exists()


@pytest.mark.slow
def test_two_objectives_choose_the_sparsest_within_x_of_the_best(tmp_path: Path) -> None:
    out = tmp_path / "pareto"
    space = space_file(
        tmp_path,
        SMALL_SPACE + '\n[l1_mode]\nchoices = ["penalty", "proximal"]\n',
    )
    args = [
        "tune", "digits", "--objective", "val_roc_auc,sparsity", "--within", "0.05",
        "--trials", "4", "--space", str(space), "--out", str(out), *TINY,
    ]  # fmt: skip
    assert main(args) == 0
    rows = [r for r in read_trials(out) if r["state"] == "complete"]
    meta = json.loads((out / "tune.json").read_text())
    assert meta["objectives"] == ["val_roc_auc", "sparsity"]
    assert rows and set(meta["pareto"]) <= {int(r["number"]) for r in rows}
    best_auc = max(float(r["val_roc_auc"]) for r in rows)
    near = [r for r in rows if float(r["val_roc_auc"]) >= best_auc - 0.05 - 1e-12]
    chosen = next(r for r in rows if int(r["number"]) == meta["chosen"])
    assert chosen in near
    assert float(chosen["sparsity"]) == max(float(r["sparsity"]) for r in near)
    assert meta["chosen"] in meta["pareto"]
    assert "Pareto front" in (out / "tune.html").read_text()


def test_a_storage_holding_another_data_sets_study_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # --trials 0 sets the study up and trains nothing
    assert main(["tune", "digits", "--trials", "0", "--storage", storage,
                 "--out", str(tmp_path / "a"), *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    x, y = make_images(60)
    np.savez(tmp_path / "other.npz", x=x, y=y)
    assert main(["tune", str(tmp_path / "other.npz"), "--trials", "1", "--storage", storage,
                 "--out", str(tmp_path / "b"), *TINY]) == 2  # fmt: skip
    one_error(capsys, "searches other data (digits)", "use another --name")
    assert main(["tune", "digits", "--trials", "1", "--storage", storage, "--l1-lambda", "0.001",
                 "--out", str(tmp_path / "c"), *TINY]) == 2  # fmt: skip
    one_error(capsys, "was started with another base configuration")


# ------------------------------------------------------------------- several processes


def _tune_process(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    cmd = [sys.executable, "-m", "l1cnn.cli", "tune", "digits", *args, *TINY]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _study_table(storage: str, name: str = "tune") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _check_shared_search(storage: str, outs: list[Path], n: int) -> list[dict[str, str]]:
    """Every trial once: n counted trials numbered uniquely, each with one run folder."""
    trials = [t for t in _study_table(storage) if not t.user_attrs.get("surplus")]
    live = [t for t in trials if t.state.name != "FAIL"]
    assert len(live) == n, [(t.number, t.state.name) for t in trials]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in live)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    folders = [p.name for out in outs for p in (out / "trials").iterdir()]
    for t in live:  # each counted trial trained once, in one of the workers' folders
        assert folders.count(f"trial-{t.number:04d}") == 1, folders
    rows = read_trials(outs[0])  # the page and table, written from either machine
    assert [int(r["number"]) for r in rows] == numbers
    return rows


@pytest.mark.slow
def test_two_processes_share_one_sqlite_search(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    space = space_file(tmp_path)
    outs = [tmp_path / "w0", tmp_path / "w1"]
    procs = [
        _tune_process(
            ["--trials", "5", "--storage", storage, "--space", str(space), "--out", str(out)],
            tmp_path / f"{out.name}.log",
        )  # fmt: skip
        for out in outs
    ]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{out.name}.log").read_text()
    rows = _check_shared_search(storage, outs, 5)
    assert sum(r["specified"] == "True" for r in rows) == 1
    meta = json.loads((outs[0] / "tune.json").read_text())
    finished = [r for r in rows if r["state"] == "complete"]
    assert meta["chosen"] == int(max(finished, key=lambda r: float(r["val_roc_auc"]))["number"])


@pytest.mark.slow
def test_jobs_runs_worker_processes_on_one_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "jobs"
    space = space_file(tmp_path)
    args = ["tune", "digits", "--jobs", "2", "--trials", "3", "--space", str(space)]
    assert main([*args, "--out", str(out), *TINY]) == 0
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    _check_shared_search(storage, [out], 3)


# ------------------------------------------------------------- PostgreSQL, for real


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields a database URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg) is missing")
    root = Path(tempfile.mkdtemp(prefix="l1cnn-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as a plain user
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", user, "--"] if shutil.which("runuser") else ["su", user, "-c"]
    data, port = root / "data", _free_port()

    def run(cmd: list[str]) -> None:
        full = as_user + [" ".join(cmd)] if as_user[:1] == ["su"] else as_user + cmd
        done = subprocess.run(full, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=50"
    run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"])
    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _reset(url: str) -> None:
    """An empty database for the next test (the cluster is shared by the session)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.mark.slow
def test_postgres_worker_killed_mid_trial_the_other_finishes(
    postgres_url: str, tmp_path: Path
) -> None:
    _reset(postgres_url)
    space = space_file(tmp_path)
    outs = [tmp_path / "victim", tmp_path / "survivor"]
    common = ["--trials", "5", "--storage", postgres_url, "--space", str(space),
              "--heartbeat", "1", "--epochs", "3"]  # fmt: skip
    victim = _tune_process([*common, "--out", str(outs[0])], tmp_path / "victim.log")
    # Kill the victim in the middle of a trial: once its first run has backed up an epoch.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        backups = list((outs[0] / "trials").glob("trial-*/backup.npz"))
        if backups or victim.poll() is not None:
            break
        time.sleep(0.2)
    assert victim.poll() is None, (tmp_path / "victim.log").read_text()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = [t for t in _study_table(postgres_url) if t.state.name == "RUNNING"]
    assert len(killed) == 1  # its trial is left running, heartbeat stopped
    survivor = _tune_process([*common, "--out", str(outs[1])], tmp_path / "survivor.log")
    assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()
    trials = _study_table(postgres_url)
    lost = next(t for t in trials if t.number == killed[0].number)
    assert lost.state.name == "FAIL"  # failed by the heartbeat check, then retried once
    retry = [
        t for t in trials if (t.system_attrs.get("retry_history") or [None])[-1] == lost.number
    ]
    assert len(retry) == 1 and retry[0].state.name in ("COMPLETE", "PRUNED")
    assert retry[0].params == lost.params
    rows = _check_shared_search(postgres_url, [outs[1], outs[0]], 5)
    lost_row = next(r for r in rows if int(r["number"]) == lost.number)
    assert f"retried as trial {retry[0].number}" in lost_row["message"]


@pytest.mark.slow
def test_postgres_two_workers_share_one_search(postgres_url: str, tmp_path: Path) -> None:
    _reset(postgres_url)
    space = space_file(tmp_path)
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        _tune_process(
            ["--trials", "5", "--storage", postgres_url, "--space", str(space), "--out", str(out)],
            tmp_path / f"{out.name}.log",
        )  # fmt: skip
        for out in outs
    ]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{out.name}.log").read_text()
    rows = _check_shared_search(postgres_url, outs, 5)
    assert {r["host"] for r in rows} == {socket.gethostname()}
    assert sum(r["specified"] == "True" for r in rows) == 1
