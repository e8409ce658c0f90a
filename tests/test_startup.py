"""Issue 17: --help and every error found without a model answer without importing heavy libraries.

Each case runs the CLI in a fresh interpreter and lists ``sys.modules`` at the end, so the test
holds without timing anything: none of TensorFlow, Keras, matplotlib, scikit-learn or SciPy may
have been imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import l1cnn

HEAVY = ("tensorflow", "keras", "matplotlib", "sklearn", "scipy", "mlflow", "optuna", "sqlalchemy")
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "export",
    "prune",
    "serve",
    "study",
    "report",
    "compare",
    "calibrate",
    "tune",
)
SRC = str(Path(l1cnn.__file__).resolve().parents[1])

# Runs main(argv) and prints, as the last stdout line, its exit status and the modules loaded.
SCRIPT = """
import json, sys
from l1cnn.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def run_fresh(args: list[str], code: str = SCRIPT) -> tuple[int, str, str, set[str]]:
    """(exit status, stdout before the report, stderr, top-level modules loaded)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    stdout, _, last = done.stdout.rstrip("\n").rpartition("\n")
    report = json.loads(last)
    return report["code"], stdout, done.stderr, {m.split(".")[0] for m in report["modules"]}


def assert_light(modules: set[str]) -> None:
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_help_of_the_command_and_of_every_subcommand_is_light() -> None:
    code, out, err, modules = run_fresh(["--help"])
    assert code == 0 and err == ""
    for name in COMMANDS:
        assert name in out
    assert_light(modules)
    for name in COMMANDS:
        code, out, err, modules = run_fresh([name, "--help"])
        assert code == 0 and err == "", name
        assert out.startswith(f"usage: l1cnn {name}"), out[:80]
        assert_light(modules)


def test_train_help_still_lists_config_keys_with_defaults() -> None:
    _, out, _, _ = run_fresh(["train", "--help"])
    text = " ".join(out.split())
    assert "--l1-lambda FLOAT L1 strength on every Conv2D and Dense kernel (default: 0.01)" in text
    assert "--conv-filters N,N,..." in text and "(default: 32,64)" in text
    _, out, _, _ = run_fresh(["study", "--help"])  # study takes the same config options
    assert "--l1-lambda" in out and "--set KEY=VALUE" in out and "--config FILE" in out


def _one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "digits", "--nope"], ["unrecognized arguments: --nope", "l1cnn train --help"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["prune", "RUN", "--sparsity", "lots"], ["--sparsity: invalid float value: 'lots'"]),
        (["prune", "RUN", "--sparsity", "0.5", "--min-magnitude", "1"], ["not allowed with"]),
        (["prune", "RUN", "--sparsity", "2"], ["--sparsity must be in [0, 1), got 2.0"]),
        (["prune", "RUN"], ["exactly one of --sparsity or --min-magnitude"]),
        (["export", "RUN", "--format", "litert", "--quantize", "int4"], ["invalid choice"]),
        (["export", "RUN", "--format", "onnx", "--quantize", "int8"], ["--format litert only"]),
        (["serve", "RUN", "--max-batch", "0"], ["serve limit max_batch must be >= 1, got 0"]),
        (["train", "digits", "--set", "nope=1"], ["unknown config key 'nope'"]),
        (["train", "digits", "--epochs", "many"], ["'train.epochs' must be int"]),
        (["study", "digits", "--dropout-rate", "2"], ["'model.dropout_rate' must be in [0, 1)"]),
        (["train", "digits", "--threshold", "recall=2"], ["needs a target in (0, 1]"]),
        (["train", "digits", "--threshold", "best"], ["'train.threshold' must be a number"]),
        (["evaluate", "RUN", "--save"], ["--save needs --threshold RULE"]),
        (["serve", "RUN", "--abstain", "coverage=1"], ["'--abstain' must be none or coverage=X"]),
        (["train", "digits", "--abstain", "0.9"], ["'train.abstain' must be none or coverage=X"]),
        (["train", "digits", "--calibration", "platt"], ["invalid choice: 'platt'"]),
        (["tune", "digits", "--objective", "auc"], ["unknown objective auc"]),
        (["tune", "digits", "--space", "MISSING.toml"], ["space file 'MISSING.toml' cannot"]),
    ],
)
def test_bad_options_answer_in_one_line_without_heavy_imports(
    args: list[str], fragments: list[str], tmp_path: Path
) -> None:
    code, out, err, modules = run_fresh([tmp_path / "run" if a == "RUN" else a for a in args])
    assert code == 2 and out == ""
    _one_line_error(err, *fragments)
    assert_light(modules)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "MISSING", "--out", "OUT"], "data path '{MISSING}' does not exist"),
        (["study", "MISSING", "--out", "OUT"], "data path '{MISSING}' does not exist"),
        (["train", "MISSING", "--config", "MISSING"], "config file '{MISSING}' does not exist"),
        (["evaluate", "MISSING"], "run folder '{MISSING}' does not exist"),
        (["evaluate", "MISSING", "--threshold", "f1"], "run folder '{MISSING}' does not exist"),
        (["predict", "MISSING", "x.png"], "run folder '{MISSING}' does not exist"),
        (["predict", "HERE", "MISSING"], "input '{MISSING}' does not exist"),
        (["predict", "HERE", "x.png", "--output", "MISSING/p.csv"], "cannot be written"),
        (["export", "MISSING", "--format", "onnx"], "run folder '{MISSING}' does not exist"),
        (["prune", "MISSING", "--sparsity", "0.5"], "run folder '{MISSING}' does not exist"),
        (["serve", "MISSING"], "run folder '{MISSING}' does not exist"),
        (["report", "MISSING"], "run folder '{MISSING}' does not exist"),
        (["calibrate", "MISSING"], "run folder '{MISSING}' does not exist"),
        (["report", "HERE"], "is not a finished l1cnn run"),
    ],
)
def test_missing_paths_answer_in_one_line_without_heavy_imports(
    args: list[str], fragment: str, tmp_path: Path
) -> None:
    missing, here = tmp_path / "missing", tmp_path / "here"
    here.mkdir()
    (here / "x.png").write_bytes(b"not read: the run is checked first")
    names = {"MISSING": str(missing), "HERE": str(here), "OUT": str(tmp_path / "out")}
    argv = [names.get(a, a.replace("MISSING", str(missing))) for a in args]
    code, out, err, modules = run_fresh(argv)
    assert code == 2 and out == ""
    _one_line_error(err, fragment.format(MISSING=missing))
    assert_light(modules)
    assert not (tmp_path / "out").exists()


def test_tensorflow_imported_later_still_starts_quietly() -> None:
    code = (
        "import os, sys, l1cnn\n"
        "assert 'tensorflow' not in sys.modules\n"
        "import keras\n"  # imports TensorFlow, its backend
        "print('\\n' + __import__('json').dumps({'code': [os.environ.get('TF_ENABLE_ONEDNN_OPTS'),"
        " os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'tensorflow' in sys.modules],"
        " 'modules': []}))\n"
    )
    env_keys = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", "L1CNN_TF_LOGS")
    saved = {k: os.environ.pop(k) for k in env_keys if k in os.environ}
    try:
        result, _, err, _ = run_fresh([], code)
    finally:
        os.environ.update(saved)
    assert result == ["1", "2", True]
    assert err == "", err  # TensorFlow's native start-up notes went to /dev/null
