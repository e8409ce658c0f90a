"""The command line end to end: train, evaluate, predict, --help, and bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, write_class_folders

from l1cnn.cli import main

TINY = [
    "--conv-filters",
    "4,8",
    "--dense-units",
    "8",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--quiet",
]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_evaluate_predict_on_class_folders(tmp_path: Path, capsys) -> None:
    data = write_class_folders(tmp_path / "pets", n=60)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", data, "--out", out, "--image-size", "12", *TINY], capsys)
    assert code == 0, err
    assert f"Run:      {out}" in stdout
    assert "classes cat (0) / dog (1, positive, the second in sorted order)" in stdout
    assert "train 42 (cat 21, dog 21)" in stdout and "Test:" in stdout and "roc_auc" in stdout
    config_text = (out / "config.toml").read_text()
    assert "image_size = 12" in config_text and 'positive_class = "dog"' in config_text

    code, stdout, err = run_cli(["evaluate", out, "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == saved["accuracy"] and metrics["n"] == 9

    preds = tmp_path / "preds.csv"
    code, _, err = run_cli(["predict", out, data / "dog", "--output", preds], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 30 and set(rows[0]) == {"path", "probability", "predicted_class"}
    assert {r["predicted_class"] for r in rows} <= {"cat", "dog"}
    code, stdout, _ = run_cli(["predict", out, data / "cat" / "img_000.png"], capsys)
    assert code == 0 and stdout.startswith("path,probability,predicted_class\n")


def test_train_options_reach_the_config(tmp_path: Path, capsys) -> None:
    x, y = make_images(60)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, _, err = run_cli(
        [
            "train",
            tmp_path / "d.npz",
            "--out",
            tmp_path / "r",
            *TINY,
            "--set",
            "l1_lambda=0.002",
            "--positive-class",
            "0",
            "--class-weight",
            "balanced",
            "--seed",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    text = (tmp_path / "r" / "config.toml").read_text()
    for line in (
        "l1_lambda = 0.002",
        'positive_class = "0"',
        'class_weight = "balanced"',
        "seed = 3",
        "conv_filters = [\n    4,\n    8,\n]",
    ):
        assert line in text or line.replace("\n", "").replace("    ", " ") in text.replace(
            "\n", ""
        ).replace("    ", " "), line


def test_help_lists_every_option_with_default(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    text = " ".join(text[text.index("config keys") :].split())  # options, not usage; unwrapped
    for flag, default in (
        ("--l1-lambda", "0.01"),
        ("--dropout-rate", "0.5"),
        ("--learning-rate", "0.001"),
        ("--batch-size", "32"),
        ("--epochs", "100"),
        ("--patience", "5"),
        ("--conv-filters", "32,64"),
        ("--class-weight", "none"),
        ("--image-size", "auto"),
    ):
        assert flag in text
        after = text[text.index(flag) :]
        assert f"(default: {default})" in after[:200], flag


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def good_npz(tmp_path: Path) -> Path:
    x, y = make_images(60)
    np.savez(tmp_path / "good.npz", x=x, y=y)
    return tmp_path / "good.npz"


def _no_run_left(out: Path) -> None:
    assert not out.exists(), f"partial run folder left behind: {list(out.iterdir())}"


def test_missing_data(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", tmp_path / "nope", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "nope", "does not exist")
    _no_run_left(tmp_path / "r")


@pytest.mark.parametrize("n_classes", [0, 1, 3])
def test_wrong_class_folder_count(tmp_path: Path, capsys, n_classes: int) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for i in range(n_classes):
        write_class_folders(root / f"c{i}", n=4, names=("x", "y"))
    for i in range(n_classes):  # flatten: each c{i} holds images directly
        for f in (root / f"c{i}").rglob("*.png"):
            f.rename(root / f"c{i}" / f.name)
    code, _, err = run_cli(["train", root, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "exactly two class folders", f"found {n_classes}")
    _no_run_left(tmp_path / "r")


def test_empty_class(tmp_path: Path, capsys) -> None:
    root = write_class_folders(tmp_path / "d", n=10)
    for f in (root / "cat").iterdir():
        f.unlink()
    code, _, err = run_cli(["train", root, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "cat", "holds no images")
    _no_run_left(tmp_path / "r")


def test_bad_images_listed_then_skipped(tmp_path: Path, capsys) -> None:
    root = write_class_folders(tmp_path / "d", n=40)
    (root / "cat" / "oops.png").write_text("I am text")
    code, _, err = run_cli(["train", root, "--out", tmp_path / "r", *TINY], capsys)
    assert_one_line_error(code, err, "oops.png", "--skip-bad-images")
    _no_run_left(tmp_path / "r")
    code, out, err = run_cli(
        ["train", root, "--out", tmp_path / "r", *TINY, "--skip-bad-images"], capsys
    )
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "data.json").read_text())
    assert len(data["skipped_images"]) == 1 and "oops.png" in data["skipped_images"][0]


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((10, 8, 8)), "y": np.array([0, 2] * 5)}, "labels must be 0 or 1"),
        ({"x": np.zeros((10, 8, 8)), "y": np.ones(10)}, "only one class"),
        ({"x": np.zeros((10, 8, 8)), "y": np.array([0, 1] * 3)}, "10 images but 6 labels"),
        ({"x": np.full((10, 8, 8), np.inf), "y": np.array([0, 1] * 5)}, "NaN or Inf"),
    ],
)
def test_bad_arrays(tmp_path: Path, capsys, arrays: dict, fragment: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    code, _, err = run_cli(["train", tmp_path / "bad.npz", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "bad.npz", fragment)
    _no_run_left(tmp_path / "r")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "nonsense=1"], "unknown config key 'nonsense'"),
        (["--set", "epochs=many"], "'train.epochs' must be int"),
        (["--dropout-rate", "1.5"], "'model.dropout_rate' must be in [0, 1)"),
        (["--l1-lambda", "-1"], "'model.l1_lambda' must be >= 0"),
        (["--image-size", "0"], "'data.image_size' must be >= 1"),
    ],
)
def test_bad_config(tmp_path: Path, capsys, good_npz: Path, args: list[str], fragment: str) -> None:
    code, _, err = run_cli(["train", good_npz, "--out", tmp_path / "r", *args], capsys)
    assert_one_line_error(code, err, fragment)
    _no_run_left(tmp_path / "r")


def test_bad_config_file(tmp_path: Path, capsys, good_npz: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nl1_lambda = 'lots'\n")
    code, _, err = run_cli(["train", good_npz, "--config", bad, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "'model.l1_lambda' must be float")


@pytest.mark.skipif(os.geteuid() == 0 and sys.platform != "linux", reason="needs permissions")
def test_output_folder_not_writable(tmp_path: Path, capsys, good_npz: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "existing.txt").write_text("keep me")
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file can never be created
        target = locked / "existing.txt" / "run"
    else:
        locked.chmod(0o500)
        target = locked / "run"
    code, _, err = run_cli(["train", good_npz, "--out", target, *TINY], capsys)
    assert_one_line_error(code, err, "cannot be")
    assert (locked / "existing.txt").read_text() == "keep me"


def test_evaluate_and_predict_refuse_non_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "notarun").mkdir()
    code, _, err = run_cli(["evaluate", tmp_path / "notarun"], capsys)
    assert_one_line_error(code, err, "notarun", "is not a finished l1cnn run")
    code, _, err = run_cli(["predict", tmp_path / "missing", tmp_path], capsys)
    assert_one_line_error(code, err, "missing", "does not exist")


def test_predict_bad_output_and_inputs(trained_run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["predict", trained_run, tmp_path / "none.png"], capsys)
    assert_one_line_error(code, err, "none.png", "does not exist")
    (tmp_path / "x.png").write_bytes(b"garbage")
    code, _, err = run_cli(
        [
            "predict",
            trained_run,
            tmp_path / "x.png",
            "--output",
            tmp_path / "no" / "such" / "dir" / "p.csv",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "cannot be written")


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "l1cnn"
    if not exe.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    proc = subprocess.run(
        [str(exe), "evaluate", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
