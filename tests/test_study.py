"""``l1cnn study`` end to end on tiny data: grids, trials, resume, parallel jobs, proximal L1."""

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
from conftest import interruptible, make_images, tiny_config

from l1cnn import config as cfg
from l1cnn import study, train
from l1cnn.cli import main
from l1cnn.errors import ConfigError, RunError
from l1cnn.runs import load_model_file, read_csv, read_json

# Two configurations: the specified (tiny) model, and the same without early stopping.
GRID_TOML = """
[[trial]]
name = "specified"

[[trial]]
name = "fixed"
early_stopping = false
"""
TINY_SET = [
    "--set",
    "conv_filters=[4,8]",
    "--set",
    "dense_units=8",
    "--set",
    "epochs=1",
    "--set",
    "batch_size=16",
    "--set",
    "seed=7",
    "--set",
    "l1_lambda=0.001",
]
TRIAL_IDS = ["specified/seed-7", "specified/seed-8", "fixed/seed-7", "fixed/seed-8"]


def tiny_base() -> cfg.Config:
    """The config TINY_SET gives on the command line."""
    return tiny_config(model={"l1_lambda": 0.001}, train={"epochs": 1})


@pytest.fixture(scope="module")
def data_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study-data")
    x, y = make_images(100, seed=5)
    np.savez(root / "data.npz", x=x, y=y)
    return root / "data.npz"


@pytest.fixture(scope="module")
def serial_study(data_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-configuration x 2-seed study run once through the CLI (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("study")
    grid = root / "grid.toml"
    grid.write_text(GRID_TOML)
    code = main(
        [
            "study",
            str(data_npz),
            "--preset",
            str(grid),
            "--seeds",
            "2",
            "--epochs-without-early-stopping",
            "2",
            "--out",
            str(root / "study"),
            *TINY_SET,
        ]
    )
    assert code == 0
    return root / "study"


def _copy(study_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(study_dir, out)
    return out


def _run_json_bytes(out: Path) -> dict[str, bytes]:
    return {t: (out / "trials" / t / "run.json").read_bytes() for t in TRIAL_IDS}


# ----------------------------------------------------------------------------- grids


def test_ablation_is_the_full_factorial_with_the_specified_model_first() -> None:
    base = cfg.Config()
    grid = study.preset_grid("ablation", base)
    assert [g.name for g in grid] == [
        "l1-dropout-es",
        "l1-dropout",
        "l1-es",
        "l1",
        "dropout-es",
        "dropout",
        "es",
        "none",
    ]
    configs = {g.name: study.trial_config(base, g, 40, 42) for g in grid}
    spec = configs["l1-dropout-es"]
    assert (spec.model, spec.train) == (base.model, base.train)
    none = configs["none"]
    assert (none.model.l1_lambda, none.model.dropout_rate) == (0.0, 0.0)
    assert (none.train.early_stopping, none.train.epochs) == (False, 40)
    assert configs["l1-dropout"].train.epochs == 40 and configs["l1-es"].train.epochs == 100


def test_plan_all_dedupes_configurations_and_names_the_reference(tmp_path: Path) -> None:
    base = cfg.Config()
    trials, reference = study.plan_trials(base, study.preset_grid("all", base), 2, 20, tmp_path)
    names = list(dict.fromkeys(t.name for t in trials))
    # 8 ablation cells + l1 in {1e-5, 1e-4, 1e-3, 3e-2} + dropout in {0.25, 0.7}
    assert len(names) == 14 and len(trials) == 28
    assert reference == "l1-dropout-es"
    assert "l1=0.01" not in names and "l1=0" not in names and "dropout=0.5" not in names
    assert {t.seed for t in trials} == {42, 43}
    first = trials[0]
    assert first.run_dir == tmp_path / "trials" / "l1-dropout-es" / "seed-42"
    assert first.config.train.seed == 42 and trials[1].config.train.seed == 43


def test_sweep_reference_follows_the_base_config(tmp_path: Path) -> None:
    base = cfg.Config()
    _, reference = study.plan_trials(base, study.preset_grid("l1-sweep", base), 1, 5, tmp_path)
    assert reference == "l1=0.01"
    base = cfg.replace(cfg.Config(), model={"l1_lambda": 0.002})  # not a sweep value
    trials, reference = study.plan_trials(base, study.preset_grid("l1-sweep", base), 1, 5, tmp_path)
    assert reference == "specified" and trials[0].name == "specified"
    assert len(trials) == 7


def test_toml_preset_and_its_errors(tmp_path: Path) -> None:
    base = cfg.Config()
    good = tmp_path / "grid.toml"
    good.write_text('[[trial]]\nname = "a"\nl1_lambda = 0.001\nl1_mode = "proximal"\n')
    (entry,) = study.preset_grid(str(good), base)
    config = study.trial_config(base, entry, 10, 3)
    assert (config.model.l1_lambda, config.model.l1_mode, config.train.seed) == (
        0.001,
        "proximal",
        3,
    )

    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text('[[trial]]\nname = "x"\nl1_lamda = 0.1\n')
    with pytest.raises(ConfigError, match="trial 'x': unknown config key 'l1_lamda'"):
        study.plan_trials(base, study.preset_grid(str(bad_key), base), 1, 5, tmp_path)
    no_name = tmp_path / "no_name.toml"
    no_name.write_text("[[trial]]\nl1_lambda = 0.1\n")
    with pytest.raises(ConfigError, match="trial 1 needs a name"):
        study.preset_grid(str(no_name), base)
    empty = tmp_path / "empty.toml"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"one or more \[\[trial\]\] tables"):
        study.preset_grid(str(empty), base)
    dup = tmp_path / "dup.toml"
    dup.write_text('[[trial]]\nname = "a"\n\n[[trial]]\nname = "a"\ndropout_rate = 0.1\n')
    with pytest.raises(ConfigError, match="two different trials are named 'a'"):
        study.plan_trials(base, study.preset_grid(str(dup), base), 1, 5, tmp_path)
    with pytest.raises(ConfigError, match="unknown preset 'ablations'"):
        study.preset_grid("ablations", base)


def test_cli_refuses_bad_input_before_creating_anything(
    tmp_path: Path, data_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    assert main(["study", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("does not exist")
    assert main(["study", str(data_npz), "--jobs", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --jobs must be >= 1, got 0"
    assert main(["study", str(data_npz), "--seeds", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1, got 0"
    assert main(["study", str(data_npz), "--preset", "nope", "--out", str(out)]) == 2
    assert "error: unknown preset 'nope'" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- sparsity


@pytest.mark.slow
def test_proximal_mode_gives_exact_zeros_and_penalty_mode_does_not(
    npz_file: Path, tmp_path: Path
) -> None:
    fractions = {}
    for mode in ("penalty", "proximal"):
        config = tiny_config(
            model={"l1_lambda": 2.0, "l1_mode": mode}, train={"epochs": 3, "early_stopping": False}
        )
        result = train(npz_file, config, out=tmp_path / mode)
        fractions[mode] = study.sparsity(load_model_file(result.run_dir / "model.keras"))
    # threshold per step = learning_rate * l1_lambda = 2e-3: weights that reach it become 0.0;
    # the penalty's (RMSprop) steps only make weights oscillate around zero.
    assert fractions["proximal"]["exact_zero_all"] > 0.05
    assert fractions["proximal"]["exact_zero_conv2"] > 0
    assert fractions["penalty"]["exact_zero_all"] == 0.0
    for layer in ("conv1", "conv2", "dense", "output"):
        assert (
            fractions["proximal"][f"near_zero_{layer}"]
            >= fractions["proximal"][f"exact_zero_{layer}"]
        )


def test_sparsity_counts_known_weights() -> None:
    from l1cnn.model import build_model, regularized_kernels

    model = build_model(cfg.ModelConfig(conv_filters=(2, 2), dense_units=2), (8, 8, 1))
    kernels = {k.path.split("/")[0]: k for k in regularized_kernels(model)}
    for kernel in kernels.values():
        kernel.assign(np.ones(kernel.shape, "float32"))
    conv1 = kernels["conv1"]  # 3*3*1*2 = 18 weights: 9 exact zeros, 3 near zero
    w = np.ones(conv1.shape, "float32").reshape(-1)
    w[:9], w[9:12] = 0.0, 5e-4
    conv1.assign(w.reshape(conv1.shape))
    result = study.sparsity(model)
    assert result["exact_zero_conv1"] == pytest.approx(9 / 18)
    assert result["near_zero_conv1"] == pytest.approx(12 / 18)
    assert result["exact_zero_dense"] == 0.0
    total = sum(int(np.prod(k.shape)) for k in kernels.values())
    assert result["exact_zero_all"] == pytest.approx(9 / total)
    assert result["near_zero_all"] == pytest.approx(12 / total)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_study_end_to_end_writes_results_and_report(serial_study: Path) -> None:
    out = serial_study
    rows = read_csv(out / "results.csv")
    assert [(r["configuration"], r["seed"]) for r in rows] == [
        ("specified", "7"),
        ("specified", "8"),
        ("fixed", "7"),
        ("fixed", "8"),
    ]
    for row in rows:
        assert row["status"] in ("completed", "early_stopped")
        acc = {s: float(row[f"{s}_accuracy"]) for s in ("train", "test")}
        assert float(row["gap_accuracy"]) == pytest.approx(acc["train"] - acc["test"])
        assert 0.0 <= float(row["near_zero_all"]) <= 1.0
        assert float(row["test_roc_auc"]) > 0.5  # the toy problem is learnable
        metrics = read_json(out / row["run_dir"] / "metrics.json")
        assert float(row["test_loss"]) == pytest.approx(metrics["test"]["loss"])
    assert {r["epochs_run"] for r in rows if r["configuration"] == "fixed"} == {"2"}
    assert {r["epochs_run"] for r in rows if r["configuration"] == "specified"} == {"1"}
    assert {r["early_stopping"] for r in rows} == {"True", "False"}
    # same seed, same split: every trial of a seed has the same data fingerprint
    prints = {(r["seed"], read_json(out / r["run_dir"] / "data.json")["fingerprint"]) for r in rows}
    assert len(prints) == 2
    for run in ("specified/seed-7", "fixed/seed-8"):  # ordinary run folders
        assert (out / "trials" / run / "model.keras").exists()
        assert (out / "trials" / run / "history.csv").exists()
    summary = (out / "summary.md").read_text()
    assert "| specified | specified model | 2 |" in summary
    assert "| fixed | without early stopping (2 fixed epochs) | 2 |" in summary
    assert "## Verdict" in summary and "Turning early stopping off ('fixed')" in summary
    for png in ("metrics.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (out / "study.html").read_text()
    meta = read_json(out / "study.json")
    assert meta["reference"] == "specified" and meta["configurations"] == ["specified", "fixed"]


@pytest.mark.slow
def test_rerun_skips_finished_trials_and_redoes_an_interrupted_one(
    serial_study: Path, data_npz: Path, tmp_path: Path
) -> None:
    out = _copy(serial_study, tmp_path)
    grid = str(tmp_path / "grid.toml")
    Path(grid).write_text(GRID_TOML)
    base = tiny_base()
    before = _run_json_bytes(out)

    other = tmp_path / "other.npz"
    x, y = make_images(100, seed=6)
    np.savez(other, x=x, y=y)
    with pytest.raises(RunError, match="holds a study of other data"):
        study.run_study(other, base, out, preset=grid, n_seeds=2, fixed_epochs=2)

    again = study.run_study(data_npz, base, out, preset=grid, n_seeds=2, fixed_epochs=2)
    assert again.trained == [] and sorted(again.skipped) == sorted(TRIAL_IDS)
    assert _run_json_bytes(out) == before

    # A kill mid-trial leaves run.json "running" and no metrics.json.
    victim = out / "trials" / "fixed" / "seed-8"
    info = read_json(victim / "run.json")
    (victim / "run.json").write_text(json.dumps({**info, "status": "running"}))
    (victim / "metrics.json").unlink()
    assert not study.is_finished(
        study.Trial(
            "fixed",
            8,
            study.trial_config(base, study.GridEntry("fixed", (("early_stopping", False),)), 2, 8),
            victim,
        )
    )
    progress: list[dict] = []
    resumed = study.run_study(
        data_npz, base, out, preset=grid, n_seeds=2, fixed_epochs=2, on_progress=progress.append
    )
    assert resumed.trained == ["fixed/seed-8"]
    assert [(p["done"], p["total"], p["trial"]) for p in progress] == [
        (3, 4, None),
        (4, 4, "fixed"),
    ]
    after = _run_json_bytes(out)
    assert {t for t in TRIAL_IDS if after[t] != before[t]} == {"fixed/seed-8"}
    assert read_json(victim / "run.json")["status"] == "completed"
    assert len(read_csv(out / "results.csv")) == 4

    # A changed setting makes the trials it changes unfinished, and only those.
    changed = study.run_study(data_npz, base, out, preset=grid, n_seeds=2, fixed_epochs=3)
    assert sorted(changed.trained) == ["fixed/seed-7", "fixed/seed-8"]
    rows = read_csv(out / "results.csv")
    assert {r["epochs_run"] for r in rows if r["configuration"] == "fixed"} == {"3"}


@pytest.mark.slow
def test_report_only_summarizes_finished_trials_without_training(
    serial_study: Path, data_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(serial_study, tmp_path)
    shutil.rmtree(out / "trials" / "specified" / "seed-8")
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_TOML)
    code = main(
        [
            "study",
            str(data_npz),
            "--preset",
            str(grid),
            "--seeds",
            "2",
            "--epochs-without-early-stopping",
            "2",
            "--out",
            str(out),
            "--report-only",
            *TINY_SET,
        ]
    )
    assert code == 0
    assert "Trials:   3 of 4 finished: 0 trained now" in capsys.readouterr().out
    assert not (out / "trials" / "specified" / "seed-8").exists()
    assert len(read_csv(out / "results.csv")) == 3
    assert "Finished trials: 3 of 4." in (out / "summary.md").read_text()


@pytest.mark.slow
def test_parallel_jobs_match_the_serial_study(
    serial_study: Path, data_npz: Path, tmp_path: Path
) -> None:
    # One configuration x 2 seeds in 2 worker processes (one trial each) keeps this test short.
    grid = tmp_path / "grid.toml"
    grid.write_text('[[trial]]\nname = "specified"\n')
    progress: list[dict] = []
    result = study.run_study(
        data_npz,
        tiny_base(),
        tmp_path / "par",
        preset=str(grid),
        n_seeds=2,
        jobs=2,
        fixed_epochs=2,
        on_progress=progress.append,
    )
    assert sorted(result.trained) == ["specified/seed-7", "specified/seed-8"]
    assert [p["done"] for p in progress] == [0, 1, 2]
    serial = {(r["configuration"], r["seed"]): r for r in read_csv(serial_study / "results.csv")}
    parallel = {
        (r["configuration"], r["seed"]): r for r in read_csv(tmp_path / "par" / "results.csv")
    }
    assert set(parallel) == {("specified", "7"), ("specified", "8")}
    for key, row in parallel.items():
        # same seeds, same splits, deterministic ops: the same results in worker processes
        for col in ("test_loss", "train_loss", "test_roc_auc", "near_zero_all"):
            assert float(row[col]) == pytest.approx(float(serial[key][col]), abs=1e-4), (key, col)


@pytest.mark.slow
def test_ctrl_c_stops_the_study_keeps_finished_trials_and_summarizes_them(
    data_npz: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[[trial]]\nname = "quick"\n\n[[trial]]\nname = "long"\nearly_stopping = false\n'
    )
    out = tmp_path / "study"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [
        sys.executable,
        "-m",
        "l1cnn.cli",
        "study",
        str(data_npz),
        "--preset",
        str(grid),
        "--seeds",
        "1",
        "--epochs-without-early-stopping",
        "100000",
        "--out",
        str(out),
        *TINY_SET,
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible
    )
    long_run = out / "trials" / "long" / "seed-7"
    deadline = time.time() + 120
    # wait until the long trial has finished an epoch (its backup exists): the signal then
    # lands inside its training, whatever the machine's load
    while not (long_run / "backup.npz").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == "error: interrupted"
    assert b"Traceback" not in stderr
    assert read_json(long_run / "run.json")["status"] == "interrupted"
    rows = read_csv(out / "results.csv")
    assert [r["configuration"] for r in rows] == ["quick"]
    assert "Finished trials: 1 of 2." in (out / "summary.md").read_text()


def test_trials_keep_their_augment_schedule_and_image_size(tmp_path: Path) -> None:
    """Grid entries that change only [augment], [data] or a train key stay trials of their own."""
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(
        '[[trial]]\nname = "base"\n\n[[trial]]\nname = "aug"\nrotation = 0.05\n'
        "horizontal_flip = true\n"
        '\n[[trial]]\nname = "big"\nimage_size = 96\n\n[[trial]]\nname = "plateau"\n'
        'lr_schedule = "plateau"\n'
    )
    base = cfg.Config()
    trials, reference = study.plan_trials(
        base, study.preset_grid(str(grid_file), base), 1, 5, tmp_path
    )
    by_name = {t.name: t.config for t in trials}
    assert reference == "base" and list(by_name) == ["base", "aug", "big", "plateau"]
    assert by_name["aug"].augment.rotation == 0.05 and by_name["aug"].augment.horizontal_flip
    assert by_name["base"].augment == cfg.AugmentConfig()
    assert by_name["big"].data.image_size == 96 and by_name["base"].data.image_size is None
    assert by_name["plateau"].train.lr_schedule == "plateau"
    assert study.augment_text(by_name["aug"]) == "horizontal_flip rotation=0.05"
    from l1cnn.reporting.study_stats import describe_change

    def settings(name: str) -> dict:
        c = by_name[name]
        return {
            "l1_lambda": 0.01,
            "l1_mode": "penalty",
            "dropout_rate": 0.5,
            "early_stopping": True,
            "epochs": 100,
            "image_size": str(c.data.image_size or ""),
            "lr_schedule": c.train.lr_schedule,
            "sampling": "none",
            "augment": study.augment_text(c),
        }

    assert describe_change(settings("aug"), settings("base")) == (
        "augment: horizontal_flip rotation=0.05"
    )
    assert describe_change(settings("big"), settings("base")) == "image_size=96"
