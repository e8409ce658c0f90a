"""Predict on new images and evaluate saved runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l1cnn import evaluate_run, load_run, predict
from l1cnn.errors import DataError, RunError
from l1cnn.evaluate import compute_metrics
from l1cnn.predict import reload_run_data


def _write_test_pngs(run_dir: Path, folder: Path) -> dict[str, int]:
    """The run's test images as PNG files; returns file name -> label."""
    dataset = reload_run_data(load_run(run_dir))
    test = dataset.splits["test"]
    labels = {}
    folder.mkdir(parents=True)
    for image, label, image_id in zip(test.images, test.labels, test.ids, strict=True):
        name = image_id.replace(":", "_") + ".png"
        Image.fromarray(image[..., 0]).save(folder / name)
        labels[name] = int(label)
    return labels


def test_predict_on_pngs_reproduces_evaluate(trained_run: Path, tmp_path: Path) -> None:
    labels = _write_test_pngs(trained_run, tmp_path / "pngs")
    result = predict(trained_run, [tmp_path / "pngs"])
    assert len(result.predictions) == len(labels) and not result.skipped
    y = [labels[Path(p.id).name] for p in result.predictions]
    probs = [p.probability for p in result.predictions]
    from_csv = compute_metrics(y, probs, result.threshold)
    evaluated = evaluate_run(trained_run)
    for key in ("accuracy", "f1", "roc_auc", "pr_auc", "confusion_matrix"):
        assert from_csv[key] == evaluated[key]
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert evaluated["roc_auc"] == pytest.approx(saved["roc_auc"])
    for p in result.predictions:
        assert p.predicted_class == ("1" if p.probability >= 0.5 else "0")


def test_predict_npz_and_files_keep_input_order(trained_run: Path, tmp_path: Path) -> None:
    labels = _write_test_pngs(trained_run, tmp_path / "pngs")
    files = sorted((tmp_path / "pngs").iterdir())[:3]
    result = predict(trained_run, [files[2], files[0], files[1]])
    assert [Path(p.id).name for p in result.predictions] == [
        files[2].name,
        files[0].name,
        files[1].name,
    ]
    x = np.stack([np.asarray(Image.open(f)) for f in files])
    np.savez(tmp_path / "few.npz", x=x, y=np.array([labels[f.name] for f in files]))
    from_npz = predict(trained_run, [tmp_path / "few.npz"])
    np.testing.assert_allclose(
        [p.probability for p in from_npz.predictions],
        [p.probability for p in predict(trained_run, files).predictions],
        atol=1e-7,
    )


def test_predict_resizes_other_sizes_and_colour(trained_run: Path, tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "big_colour.jpg")
    result = predict(trained_run, [tmp_path / "big_colour.jpg"])
    assert len(result.predictions) == 1 and 0 <= result.predictions[0].probability <= 1


def test_predict_bad_images(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(folder / "ok.png")
    (folder / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="1 bad image"):
        predict(trained_run, [folder])
    result = predict(trained_run, [folder], skip_bad_images=True)
    assert [Path(p.id).name for p in result.predictions] == ["ok.png"]
    assert len(result.skipped) == 1 and "bad.png" in result.skipped[0]
    with pytest.raises(DataError, match="does not exist"):
        predict(trained_run, [tmp_path / "missing.png"])


def test_predict_many_images_in_chunks(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1100):  # more than two chunks of 512
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    result = predict(trained_run, [folder])
    assert len(result.predictions) == 1100


def test_evaluate_on_other_data(trained_run: Path, tmp_path: Path) -> None:
    labels = _write_test_pngs(trained_run, tmp_path / "pngs")
    files = sorted((tmp_path / "pngs").iterdir())
    x = np.stack([np.asarray(Image.open(f)) for f in files])
    y = np.array([labels[f.name] for f in files])
    np.savez(tmp_path / "other.npz", x=x, y=y)
    metrics = evaluate_run(trained_run, data=tmp_path / "other.npz")
    assert metrics["evaluated_on"] == "all images" and metrics["n"] == len(files)
    assert metrics["roc_auc"] == pytest.approx(evaluate_run(trained_run)["roc_auc"])


def test_evaluate_detects_changed_data(trained_run: Path, tmp_path: Path) -> None:
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    source = Path(json.loads((trained_run / "run.json").read_text())["source"])
    changed = tmp_path / "changed.npz"
    with np.load(source) as npz:
        x, y = npz["x"].copy(), npz["y"]
    x[0] = 255 - x[0]
    np.savez(changed, x=x, y=y)
    info = json.loads((run_copy / "run.json").read_text())
    info["source"] = str(changed)
    (run_copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="has changed since run"):
        evaluate_run(run_copy)


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="is not a finished l1cnn run"):
        load_run(tmp_path / "empty")
