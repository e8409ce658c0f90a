"""Plots, explanations, report.html/report.md, compare, and re-choosing a run's threshold."""

from __future__ import annotations

import ast
import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config

from l1cnn import load_run, train
from l1cnn.cli import main
from l1cnn.errors import ConfigError, RunError
from l1cnn.evaluate import choose_threshold, compute_metrics
from l1cnn.explain import WEIGHT_EDGES, confidently_wrong, explain, weight_histograms
from l1cnn.predict import predict_split, reload_run_data
from l1cnn.reporting import PLOTS_DIR, read_run_files, write_comparison, write_report
from l1cnn.rethreshold import rechoose_threshold, save_threshold, stored_predictions
from l1cnn.runs import read_csv, write_csv

ALL_PLOTS = {
    "learning_curves",
    "roc",
    "pr",
    "confusion",
    "reliability",
    "probabilities",
    "threshold",
    "weights",
    "wrong",
    "saliency",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


def test_train_writes_a_self_contained_report(trained_run: Path) -> None:
    page = (trained_run / "report.html").read_text(encoding="utf-8")
    sources = _img_sources(page)
    assert len(sources) == len(ALL_PLOTS)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from anywhere
    assert {p.stem for p in (trained_run / PLOTS_DIR).glob("*.png")} == ALL_PLOTS
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert f"{metrics['test']['accuracy']:.3f}" in page
    lo, hi = metrics["test"]["ci"]["roc_auc"]
    assert f"[{lo:.3f}, {hi:.3f}]" in page
    for label in ("Balanced accuracy", "Specificity", "MCC", "Brier score", "ECE", "PR-AUC"):
        assert label in page


def test_markdown_report_names_the_same_figures(trained_run: Path) -> None:
    md = (trained_run / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(p).stem for p in linked} == ALL_PLOTS
    assert all((trained_run / p).is_file() for p in linked)
    assert "| Accuracy |" in md and "```toml" in md


def test_metrics_json_has_the_full_metric_set(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["threshold"] == {"rule": "0.5", "value": 0.5, "note": None}
    for split in ("train", "val", "test"):
        m = metrics[split]
        for key in ("balanced_accuracy", "specificity", "mcc", "brier", "ece"):
            assert isinstance(m[key], float), (split, key)
        assert m["ci"]["n_resamples"] == 1000 and len(m["ci"]["accuracy"]) == 2


def _source(module: str) -> Path:
    """The file of an l1cnn module or package (``__init__.py``); may not exist."""
    base = SRC / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _module_level_imports(module: str) -> set[str]:
    """Modules imported at module level by ``module`` and, recursively, by the l1cnn ones."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _source(name)
        for node in ast.parse(path.read_text()).body:  # top level only: lazy imports are fine
            found = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for mod in found:
                if mod not in seen:
                    seen.add(mod)
                    if mod.startswith("l1cnn.") and _source(mod).exists():
                        todo.append(mod)
    return seen


@pytest.mark.parametrize("module", ["l1cnn.reporting", "l1cnn.rethreshold", "l1cnn.evaluate"])
def test_report_side_imports_no_tensorflow(module: str) -> None:
    imported = _module_level_imports(module)
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras")}
    assert "l1cnn.explain" not in imported and "l1cnn.train" not in imported


def test_reporting_imports_matplotlib_only_to_draw_and_nothing_above_it() -> None:
    imported = _module_level_imports("l1cnn.reporting")
    assert "l1cnn.reporting.study_report" in imported  # the walk reached the whole package
    assert not {m for m in imported if m.split(".")[0] == "matplotlib"}
    assert not imported & {"l1cnn.train", "l1cnn.prune", "l1cnn.study", "l1cnn.cli"}


def test_explanation_arrays_match_the_model_and_data(trained_run: Path) -> None:
    run = load_run(trained_run)
    test = reload_run_data(run).splits["test"]
    probs = predict_split(run.model, test)
    exp = explain(run.model, test, probs, 0.5, n_wrong=5, n_saliency=2)
    kernels = [layer.kernel for layer in run.model.layers if hasattr(layer, "kernel")]
    assert exp.layer_names == ["conv1", "conv2", "dense", "output"]
    sizes = [int(np.prod(k.shape)) for k in kernels]
    assert exp.layer_sizes.tolist() == sizes
    assert exp.weight_counts.sum(axis=1).tolist() == sizes  # every weight in some bin
    dense = np.abs(np.asarray(kernels[2]))
    assert exp.near_zero_fraction[2] == pytest.approx(float(np.mean(dense < 1e-3)))
    top = exp.weight_edges[-2]  # the last bin holds |w| from here up
    assert exp.weight_counts[2, -1] == int(np.sum(dense >= top))
    wrong_calls = (probs >= 0.5) != (test.labels == 1)
    assert len(exp.wrong_images) == min(5, int(wrong_calls.sum()))
    assert all(
        ((p >= 0.5) != (y == 1)) for p, y in zip(exp.wrong_probs, exp.wrong_labels, strict=True)
    )
    assert exp.saliency_maps.shape == (len(exp.saliency_images), 12, 12)
    assert exp.saliency_maps.min() >= 0 and exp.saliency_maps.max() <= 1
    assert exp.saliency_correct[:2].all()


def test_weight_histograms_count_every_weight() -> None:
    sizes, near, counts = weight_histograms([np.array([0.0, 1e-9, 5e-4, 0.5, 20.0]), np.zeros(0)])
    assert sizes.tolist() == [5, 0] and near[0] == pytest.approx(3 / 5) and near[1] == 0.0
    assert counts[0, 0] == 2 and counts[0, -1] == 1 and counts[0].sum() == 5  # clipped ends
    assert counts[1].sum() == 0 and counts.shape[1] == len(WEIGHT_EDGES) - 1


def test_confidently_wrong_orders_by_confidence() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    probs = np.array([0.9, 0.1, 0.6, 0.8, 0.2, 0.45])  # wrong: 0 (.4), 1 (.4), 2 (.1), 5 (.05)
    assert confidently_wrong(labels, probs, 0.5, 3).tolist() == [0, 1, 2]
    assert confidently_wrong(labels, probs, 0.05, 10).tolist() == [0, 2, 4]  # all called positive


def test_report_without_explanation_says_so(run_copy: Path) -> None:
    (run_copy / "explain.npz").unlink()
    shutil.rmtree(run_copy / PLOTS_DIR)
    page = write_report(run_copy).read_text(encoding="utf-8")
    assert len(_img_sources(page)) == 7 and "No <code>explain.npz</code>" in page
    assert not (run_copy / PLOTS_DIR / "weights.png").exists()


def test_cli_report_regenerates_report_and_explanation(run_copy: Path, capsys) -> None:
    for name in ("report.html", "report.md", "explain.npz"):
        (run_copy / name).unlink()
    shutil.rmtree(run_copy / PLOTS_DIR)
    assert main(["report", str(run_copy)]) == 0
    assert f"Report:   {run_copy / 'report.html'}" in capsys.readouterr().out
    assert (run_copy / "explain.npz").is_file() and (run_copy / "report.md").is_file()
    assert len(_img_sources((run_copy / "report.html").read_text())) == len(ALL_PLOTS)


def test_cli_report_without_the_data_still_writes_the_rest(run_copy: Path, capsys) -> None:
    (run_copy / "explain.npz").unlink()
    info = json.loads((run_copy / "run.json").read_text())
    info["source"] = str(run_copy / "moved-away.npz")  # the data is gone
    (run_copy / "run.json").write_text(json.dumps(info))
    assert main(["report", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: explain.npz not recomputed") and "moved-away.npz" in err
    assert "leaves out weights" in err and err.count("\n") == 1
    assert len(_img_sources((run_copy / "report.html").read_text())) == len(ALL_PLOTS) - 3


def test_cli_report_refuses_a_non_run(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a finished l1cnn run" in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_compare_two_real_runs(trained_run: Path, tmp_path: Path, capsys) -> None:
    x, y = make_images(120, seed=3)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    other = train(
        tmp_path / "d.npz",
        tiny_config(model={"l1_lambda": 0.0}, train={"epochs": 1}),
        out=tmp_path / "other",
    ).run_dir
    out = tmp_path / "cmp.html"
    assert main(["compare", str(trained_run), str(other), "--out", str(out)]) == 0
    assert f"Compare:  {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert len(_img_sources(page)) == 2 and "<script" not in page.lower()
    # config differences: l1_lambda and epochs differ, batch_size does not
    assert "model.l1_lambda" in page and "train.epochs" in page and "train.batch_size" not in page
    other_auc = json.loads((other / "metrics.json").read_text())["test"]["roc_auc"]
    assert f"{other_auc:.3f}" in page


def test_compare_refuses_bad_input(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="at least two"):
        write_comparison([trained_run], tmp_path / "c.html")
    with pytest.raises(RunError, match="does not exist"):
        write_comparison([trained_run, trained_run], tmp_path / "missing" / "c.html")
    with pytest.raises(RunError, match="not a finished l1cnn run"):
        write_comparison([trained_run, tmp_path], tmp_path / "c.html")


def _rewrite_predictions(run: Path, split: str, change) -> None:
    rows = read_csv(run / "predictions.csv")
    for row in rows:
        if row["split"] == split:
            row["probability"] = f"{change(float(row['probability']), int(row['label'])):.8f}"
    write_csv(run / "predictions.csv", rows, ["split", "id", "label", "probability"])


def test_threshold_is_chosen_on_validation_predictions_only(run_copy: Path) -> None:
    val_y, val_p = stored_predictions(run_copy)["val"]
    for rule in ("f1", "youden", "recall=0.9", "precision=0.8"):
        assert rechoose_threshold(run_copy, rule)["value"] == choose_threshold(rule, val_y, val_p)
    before = rechoose_threshold(run_copy, "youden")["value"]
    # Scrambling the test probabilities changes nothing ...
    _rewrite_predictions(run_copy, "test", lambda p, y: 1.0 - p)
    assert rechoose_threshold(run_copy, "youden")["value"] == before
    # ... while validation probabilities that separate the classes at 0.3/0.7 move it.
    _rewrite_predictions(run_copy, "val", lambda p, y: 0.7 if y else 0.3)
    assert rechoose_threshold(run_copy, "youden")["value"] == pytest.approx(0.7)


def test_evaluate_threshold_rule_without_save_changes_nothing(run_copy: Path, capsys) -> None:
    metrics_before = (run_copy / "metrics.json").read_text()
    assert main(["evaluate", str(run_copy), "--threshold", "recall=0.9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    val_y, val_p = stored_predictions(run_copy)["val"]
    expected = choose_threshold("recall=0.9", val_y, val_p)
    assert out["threshold"] == pytest.approx(expected)
    assert out["threshold_choice"]["rule"] == "recall=0.9"
    test_y, test_p = stored_predictions(run_copy)["test"]
    assert out["accuracy"] == pytest.approx(
        compute_metrics(test_y, test_p, expected)["accuracy"], abs=1e-6
    )
    assert (run_copy / "metrics.json").read_text() == metrics_before


def test_evaluate_threshold_save_makes_it_the_runs(run_copy: Path, capsys) -> None:
    assert main(["evaluate", str(run_copy), "--threshold", "youden", "--save"]) == 0
    text = capsys.readouterr().out
    assert "saved as the run's threshold" in text
    run = load_run(run_copy)
    val_y, val_p = stored_predictions(run_copy)["val"]
    value = choose_threshold("youden", val_y, val_p)
    assert run.threshold == pytest.approx(value)  # predict uses run.threshold
    assert run.metrics["threshold"]["rule"] == "youden"
    assert "--save" in run.metrics["threshold"]["changed_by"]
    for split in ("train", "val", "test"):
        assert run.metrics[split]["threshold"] == pytest.approx(value)
    test_y, test_p = stored_predictions(run_copy)["test"]
    assert run.metrics["test"]["f1"] == pytest.approx(compute_metrics(test_y, test_p, value)["f1"])
    page = (run_copy / "report.html").read_text()
    assert "rule youden" in page
    assert read_run_files(run_copy).threshold == pytest.approx(value)


def test_save_threshold_refuses_a_bad_rule_and_writes_nothing(run_copy: Path) -> None:
    before = (run_copy / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="train.threshold"):
        save_threshold(run_copy, "recall=2")
    assert (run_copy / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "bogus"], "must be a number in [0, 1] or one of f1"),
        (["--save"], "--save needs --threshold"),
    ],
)
def test_evaluate_bad_threshold_is_one_line(run_copy: Path, capsys, argv, message) -> None:
    assert main(["evaluate", str(run_copy), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_threshold_rule_fails_before_training(tmp_path: Path, capsys) -> None:
    x, y = make_images(40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "never"
    assert (
        main(
            [
                "train",
                str(tmp_path / "d.npz"),
                "--threshold",
                "recall=1.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "needs a target in (0, 1]" in capsys.readouterr().err
    assert not out.exists()
