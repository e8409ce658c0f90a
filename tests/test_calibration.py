"""Issue 15: temperature scaling, split-conformal "refer" decisions, Monte Carlo dropout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config
from sklearn.metrics import roc_auc_score

from l1cnn.calibration import (
    REFER,
    abstain_report,
    apply_temperature,
    calibration_scores,
    conformal_threshold,
    decisions,
    fit_temperature,
)
from l1cnn.cli import main
from l1cnn.config import parse_abstain_rule
from l1cnn.errors import ConfigError

# --------------------------------------------------------------------------- pure math


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _overconfident(n: int, seed: int, sharpen: float = 3.0):
    """Labels drawn from sigmoid(z), reported probabilities sigmoid(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    labels = (rng.uniform(size=n) < _sigmoid(z)).astype(int)
    return labels, _sigmoid(sharpen * z)


def test_fitted_temperature_undoes_overconfidence_and_lowers_log_loss():
    labels, probs = _overconfident(4000, seed=1)
    t = fit_temperature(labels, probs)
    assert 2.6 < t < 3.4  # the sharpening was 3
    before = calibration_scores(labels, probs)
    after = calibration_scores(labels, apply_temperature(probs, t))
    assert after["log_loss"] < before["log_loss"] - 0.05
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]
    # An already calibrated model keeps T close to 1.
    labels, probs = _overconfident(4000, seed=2, sharpen=1.0)
    assert 0.9 < fit_temperature(labels, probs) < 1.1


def test_temperature_keeps_rankings_exactly():
    labels, probs = _overconfident(1000, seed=3)
    for t in (0.3, 1.0, 2.5, 10.0):
        scaled = apply_temperature(probs, t)
        if t >= 1:  # (below 1 the sharpest probabilities round to exactly 1.0: ties)
            order = np.argsort(scaled, kind="stable")
            assert np.array_equal(order, np.argsort(probs, kind="stable"))
        assert roc_auc_score(labels, scaled) == pytest.approx(
            roc_auc_score(labels, probs), abs=1e-12
        )
    assert np.array_equal(apply_temperature(probs, 1.0), probs)
    assert np.allclose(apply_temperature(probs, 2.0), _sigmoid(np.log(probs / (1 - probs)) / 2))


def _scores_model(n: int, rng: np.random.Generator, separation: float):
    """A model whose logit is separation * (2y - 1) + noise: higher separation, better model."""
    labels = rng.integers(0, 2, n)
    return labels, _sigmoid(separation * (2 * labels - 1) + rng.normal(0, 1, n))


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_conformal_coverage_holds_over_random_splits(coverage):
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(300):
        val_y, val_p = _scores_model(100, rng, 1.0)
        test_y, test_p = _scores_model(200, rng, 1.0)
        q = conformal_threshold(val_y, val_p, coverage)
        covered.append(abstain_report(test_y, test_p, q, coverage)["coverage"])
    # Mean over 300 splits: standard error about 0.003; allow three of them below the target.
    assert np.mean(covered) >= coverage - 0.01
    # And the finite-sample bound is not wildly conservative either.
    assert np.mean(covered) <= coverage + 0.05


def test_conformal_edge_cases():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.8, 0.4, 0.6])
    assert conformal_threshold(y, p, 1.0) == np.inf  # only both classes cover surely
    assert np.all(decisions(p, np.inf) == REFER)
    assert conformal_threshold(y, p, 0.0) == -np.inf  # empty sets
    assert np.all(decisions(p, -np.inf) == REFER)
    # 4 images, coverage 0.5: the ceil(5 * 0.5) = 3rd smallest score of [0.1, 0.2, 0.4, 0.4]
    assert conformal_threshold(y, p, 0.5) == pytest.approx(0.4)
    # Too few images for the target: refer everything rather than promise too much.
    assert conformal_threshold(y, p, 0.9) == np.inf
    with pytest.raises(ValueError, match="coverage"):
        conformal_threshold(y, p, 1.5)
    # q = 0.4: sets {0}, {1}, {0}, {1}; q = 0.3: 0.4 and 0.6 get the empty set -> refer.
    assert abstain_report(y, p, 0.4, 0.5)["referred"] == 0.0
    report = abstain_report(y, p, 0.3, 0.5)
    assert report["n_decided"] == 2 and report["accuracy_decided"] == 1.0  # 0.1 and 0.8
    assert report["referred"] == 0.5 and report["coverage"] == 0.5


def test_share_referred_falls_as_the_model_gets_better():
    rng = np.random.default_rng(1)
    referred = []
    for separation in (0.5, 1.0, 2.0, 4.0):
        val_y, val_p = _scores_model(2000, rng, separation)
        test_y, test_p = _scores_model(2000, rng, separation)
        q = conformal_threshold(val_y, val_p, 0.95)
        referred.append(abstain_report(test_y, test_p, q, 0.95)["referred"])
    assert referred == sorted(referred, reverse=True) and referred[-1] < 0.05 < referred[0]


@pytest.mark.parametrize("text", ["coverage=0", "coverage=1", "coverage=1.5", "cov=0.9", "0.9"])
def test_abstain_rule_outside_open_interval_is_refused(text):
    with pytest.raises(ConfigError, match=r"coverage=X with X in \(0, 1\)"):
        parse_abstain_rule(text)
    assert parse_abstain_rule("coverage=0.95") == 0.95 and parse_abstain_rule("none") is None


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained with train.calibration = temperature."""
    from l1cnn import train

    root = tmp_path_factory.mktemp("calibrated")
    x, y = make_images(160, seed=5)
    data = root / "data.npz"
    np.savez(data, x=x, y=y)
    config = tiny_config(
        model={"l1_lambda": 0.0001}, train={"epochs": 4, "calibration": "temperature"}
    )
    return train(data, config, out=root / "run").run_dir


def test_a_calibrated_run_keeps_its_temperature_and_raw_probabilities(calibrated_run):
    from l1cnn.predict import predict_split, reload_run_data
    from l1cnn.runs import load_run, read_csv

    record = json.loads((calibrated_run / "calibration.json").read_text())
    t = record["temperature"]
    assert t != 1.0 and record["fitted_on"] == "val"
    assert record["after"]["val"]["log_loss"] <= record["before"]["val"]["log_loss"]
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == t
    rows = [r for r in read_csv(calibrated_run / "predictions.csv") if r["split"] == "test"]
    raw = np.array([float(r["uncalibrated_probability"]) for r in rows])
    cal = np.array([float(r["probability"]) for r in rows])
    assert np.allclose(cal, apply_temperature(raw, t), atol=1e-6)
    run = load_run(calibrated_run)
    test = reload_run_data(run).splits["test"]
    keras_raw = predict_split(run.model, test)
    keras_cal = predict_split(run.calibrated_model, test)
    assert np.max(np.abs(keras_cal - apply_temperature(keras_raw, t))) <= 1e-4
    assert roc_auc_score(test.labels, keras_cal) == pytest.approx(
        roc_auc_score(test.labels, keras_raw), abs=1e-12
    )
    assert metrics["test"]["roc_auc"] == pytest.approx(roc_auc_score(test.labels, keras_raw))


def test_evaluate_predict_and_export_give_the_calibrated_probability(calibrated_run, tmp_path):
    from l1cnn.export import ExportOptions, export_run, load_export
    from l1cnn.predict import evaluate_run, predict, predict_split, reload_run_data
    from l1cnn.runs import load_run

    run = load_run(calibrated_run)
    data = reload_run_data(run)
    test = data.splits["test"]
    expected = apply_temperature(predict_split(run.model, test), run.temperature)
    metrics = evaluate_run(calibrated_run)
    assert metrics["temperature"] == run.temperature
    assert metrics["brier"] == pytest.approx(np.mean((expected - test.labels) ** 2), abs=1e-6)
    # evaluate --data keeps it too
    other = tmp_path / "other.npz"
    np.savez(other, x=test.images.astype(np.uint8), y=test.labels)
    assert evaluate_run(calibrated_run, data=other)["brier"] == pytest.approx(
        metrics["brier"], abs=1e-6
    )
    got = predict(calibrated_run, [other])
    assert np.max(np.abs(np.array([p.probability for p in got.predictions]) - expected)) <= 1e-4
    record = export_run(run, ExportOptions("onnx"), out=tmp_path / "onnx")
    assert record["parity"]["passed"] is True and record["temperature"] == run.temperature
    exported = load_export(tmp_path / "onnx").predict(np.asarray(test.images, np.float32))
    assert np.max(np.abs(exported - expected)) <= 1e-4


@pytest.mark.parametrize("fmt", ["savedmodel", "litert"])
def test_savedmodel_and_litert_exports_carry_the_temperature(calibrated_run, tmp_path, fmt):
    from l1cnn.export import ExportOptions, export_run, load_export
    from l1cnn.predict import predict_split, reload_run_data
    from l1cnn.runs import load_run

    if fmt == "litert":
        pytest.importorskip("ai_edge_litert")
    run = load_run(calibrated_run)
    test = reload_run_data(run).splits["test"]
    expected = apply_temperature(predict_split(run.model, test), run.temperature)
    record = export_run(run, ExportOptions(fmt), out=tmp_path / fmt)
    assert record["parity"]["passed"] is True and record["temperature"] == run.temperature
    exported = load_export(tmp_path / fmt).predict(np.asarray(test.images, np.float32))
    assert np.max(np.abs(exported - expected)) <= 1e-4


def test_serve_answers_with_the_calibrated_probability_and_refers(calibrated_run):
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from l1cnn.predict import predict_split, reload_run_data
    from l1cnn.runs import load_run
    from l1cnn.serve import create_app, predictor_for

    run = load_run(calibrated_run)
    test = reload_run_data(run).splits["test"]
    expected = apply_temperature(predict_split(run.model, test), run.temperature)
    client = TestClient(create_app(predictor_for(run, abstain=0.9)))
    answer = client.post("/v1/predict", json={"instances": test.images[:6].tolist()}).json()
    items = answer["predictions"]
    got = np.array([item["probability"] for item in items])
    assert np.max(np.abs(got - expected[:6])) <= 1e-4
    for item in items:
        assert item["decision"] in ("refer", *run.class_names)
        assert (item["decision"] == "refer") == (len(item["label_set"]) != 1)
    described = client.get("/v1/model").json()
    assert described["temperature"] == run.temperature and described["abstain_coverage"] == 0.9
    # Without abstention the answers carry no decision.
    plain = TestClient(create_app(run)).post(
        "/v1/predict", json={"instances": test.images[:2].tolist()}
    )
    assert "decision" not in plain.json()["predictions"][0]


def test_a_pruned_calibrated_run_refits_its_temperature(calibrated_run, tmp_path):
    from l1cnn.config import PruneOptions
    from l1cnn.prune import prune_run
    from l1cnn.runs import load_run, read_csv

    pruned = prune_run(calibrated_run, PruneOptions(sparsity=0.5), out=tmp_path / "pruned")
    record = json.loads((pruned.run_dir / "calibration.json").read_text())
    assert record["after"]["val"]["log_loss"] <= record["before"]["val"]["log_loss"]
    assert load_run(pruned.run_dir).temperature == record["temperature"]
    rows = read_csv(pruned.run_dir / "predictions.csv")
    raw = np.array([float(r["uncalibrated_probability"]) for r in rows])
    cal = np.array([float(r["probability"]) for r in rows])
    assert np.allclose(cal, apply_temperature(raw, record["temperature"]), atol=1e-6)


@pytest.fixture(scope="module")
def calibrated_onnx(calibrated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX export of the calibrated run, beside its test images as a .npz file."""
    pytest.importorskip("onnxruntime")
    from l1cnn.export import ExportOptions, export_run
    from l1cnn.predict import reload_run_data
    from l1cnn.runs import load_run

    root = tmp_path_factory.mktemp("calibrated_onnx")
    run = load_run(calibrated_run)
    test = reload_run_data(run).splits["test"]
    np.savez(root / "test.npz", x=test.images.astype(np.uint8), y=test.labels)
    record = export_run(run, ExportOptions("onnx"), out=root / "onnx")
    assert len(record["conformal_scores"]) == run.metrics["val"]["n"]
    return root / "onnx"


def test_an_export_refers_like_its_run_and_refuses_mc_dropout(
    calibrated_run, calibrated_onnx, tmp_path, capsys
):
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from l1cnn.exported import predict_export
    from l1cnn.predict import predict, reload_run_data
    from l1cnn.runs import load_run
    from l1cnn.serve import create_app, predictor_for

    run = load_run(calibrated_run)
    test = reload_run_data(run).splits["test"]
    images = calibrated_onnx.parent / "test.npz"
    for coverage in (0.8, 0.95):
        from_run = predict(run, [images], abstain=coverage).predictions
        from_export = predict_export(calibrated_onnx, [images], abstain=coverage).predictions
        # Same decisions, except where the two probabilities straddle the conformal threshold.
        same = [a.decision == b.decision for a, b in zip(from_run, from_export, strict=True)]
        assert np.mean(same) >= 0.95
        assert all(p.decision in ("refer", *run.class_names) for p in from_export)
    served = TestClient(create_app(predictor_for(calibrated_onnx, abstain=0.9)))
    item = served.post("/v1/predict", json={"instances": test.images[:1].tolist()}).json()
    assert item["predictions"][0]["decision"] in ("refer", *run.class_names)
    assert served.get("/v1/model").json()["temperature"] == run.temperature
    argv = ["predict", str(calibrated_onnx), str(images), "--mc-samples", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --mc-samples needs a run folder")


# Predicts on the export with --abstain, in a fresh interpreter; the last line lists the modules.
NO_TF_SCRIPT = """
import json, sys
from l1cnn.cli import main
code = main(["predict", *sys.argv[1:]])
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_an_export_refers_without_tensorflow_scipy_or_sklearn(calibrated_onnx, tmp_path):
    import os
    import subprocess
    import sys

    import l1cnn

    out = tmp_path / "p.csv"
    args = [str(calibrated_onnx), str(calibrated_onnx.parent / "test.npz"), "--output", str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(l1cnn.__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", NO_TF_SCRIPT, *args, "--abstain", "coverage=0.9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert not {"tensorflow", "keras", "sklearn", "scipy"} & set(report["modules"])
    lines = out.read_text().splitlines()
    assert lines[0] == "path,probability,predicted_class,decision,label_set"
    assert {line.split(",")[3] for line in lines[1:]} <= {"refer", "0", "1"}


@pytest.mark.slow
def test_resume_refits_the_same_temperature(calibrated_run, tmp_path):
    from l1cnn.train import resume

    run = Path(shutil.copytree(calibrated_run, tmp_path / "run"))
    for name in ("model.keras", "metrics.json", "history.csv", "predictions.csv"):
        (run / name).unlink()
    (run / "calibration.json").unlink()
    info = json.loads((run / "run.json").read_text())
    info["status"] = "running"
    (run / "run.json").write_text(json.dumps(info))
    resume(run)
    before = json.loads((calibrated_run / "calibration.json").read_text())
    after = json.loads((run / "calibration.json").read_text())
    assert after == before


def test_calibrate_command_on_a_finished_run(trained_run, tmp_path, capsys):
    from l1cnn.runs import load_run

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    assert main(["calibrate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "ECE" in out and "log loss" in out
    record = json.loads((run / "calibration.json").read_text())
    assert record["fitted_by"] == f"l1cnn calibrate {run}"
    assert record["after"]["val"]["log_loss"] <= record["before"]["val"]["log_loss"]
    assert load_run(run).temperature == record["temperature"]
    # Calibrating again refits from the model's own probabilities: same temperature.
    assert main(["calibrate", str(run)]) == 0
    assert json.loads((run / "calibration.json").read_text())["temperature"] == pytest.approx(
        record["temperature"]
    )
    assert (run / "report.html").exists()


def test_evaluate_and_predict_with_abstain(trained_run, tmp_path, capsys):
    assert main(["evaluate", str(trained_run), "--abstain", "coverage=0.9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["abstain"]
    assert report["target_coverage"] == 0.9 and 0 <= report["referred"] <= 1
    assert len(report["coverage_ci"]) == 2
    csv_path = tmp_path / "p.csv"
    from l1cnn.runs import load_run

    source = load_run(trained_run).info["source"]
    assert main(["predict", str(trained_run), source, "--abstain", "coverage=0.9",
                 "--output", str(csv_path)]) == 0  # fmt: skip
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "path,probability,predicted_class,decision,label_set"
    for line in lines[1:]:
        decision, label_set = line.split(",")[3:5]
        assert (decision == "refer") == (len(label_set.split("|")) != 1 or label_set == "")


# --------------------------------------------------------------------------- MC dropout


def test_mc_dropout_is_seeded_and_zero_dropout_gives_zero_std(trained_run, tmp_path):
    from l1cnn import train
    from l1cnn.predict import predict
    from l1cnn.runs import load_run

    source = load_run(trained_run).info["source"]
    a = predict(trained_run, [source], mc_samples=8, mc_seed=1).predictions
    b = predict(trained_run, [source], mc_samples=8, mc_seed=1).predictions
    c = predict(trained_run, [source], mc_samples=8, mc_seed=2).predictions
    assert [(p.probability, p.std) for p in a] == [(p.probability, p.std) for p in b]
    assert [p.probability for p in a] != [p.probability for p in c]
    assert max(p.std for p in a) > 0
    config = tiny_config(model={"dropout_rate": 0.0}, train={"epochs": 1})
    plain = train(source, config, out=tmp_path / "nodrop").run_dir
    got = predict(plain, [source], mc_samples=4).predictions
    det = predict(plain, [source]).predictions
    assert all(p.std == 0.0 for p in got)
    assert np.allclose([p.probability for p in got], [p.probability for p in det], atol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["evaluate", "RUN", "--abstain", "coverage=1.2"], "coverage=X with X in (0, 1)"),
        (["predict", "RUN", "SRC", "--abstain", "coverage=0"], "coverage=X with X in (0, 1)"),
        (["predict", "RUN", "SRC", "--mc-samples", "0"], "--mc-samples must be >= 1, got 0"),
    ],
)
def test_bad_options_get_one_error_line(trained_run, argv, fragment, capsys):
    from l1cnn.runs import load_run

    source = load_run(trained_run).info["source"]
    argv = [str(trained_run) if a == "RUN" else source if a == "SRC" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0]


def test_calibrating_a_run_without_validation_predictions_is_refused(trained_run, tmp_path, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (run / "predictions.csv").unlink()
    assert main(["calibrate", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "validation predictions" in err[0]
    assert not (run / "calibration.json").exists()
