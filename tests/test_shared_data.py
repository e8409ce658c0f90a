"""On the real chest X-rays (../shared/data): train, then predict PNGs and score them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from l1cnn import load_data, train
from l1cnn.cli import main
from l1cnn.evaluate import compute_metrics

pytestmark = pytest.mark.shared_data


def test_medmnist_file_loads_as_given(shared_npz: Path) -> None:
    ds = load_data(shared_npz, tiny_config().data, seed=0)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 2428, "val": 270, "test": 468}
    assert ds.image_shape == (28, 28, 1)
    assert ds.counts()["test"] == {"0": 234, "1": 234}
    assert ds.split_origin == {"train": "given", "val": "given", "test": "given"}


def test_predict_on_pngs_reproduces_evaluate(shared_npz: Path, tmp_path: Path, capsys) -> None:
    result = train(
        shared_npz,
        tiny_config(model={"l1_lambda": 0.0001}, train={"epochs": 1}),
        out=tmp_path / "run",
    )
    pngs = tmp_path / "pngs"
    labels = {}
    with np.load(shared_npz) as npz:
        images, y = npz["test_images"], npz["test_labels"].reshape(-1)
    for cls in ("0", "1"):
        (pngs / cls).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, y, strict=True)):
        path = pngs / str(label) / f"test_{i:03d}.png"
        Image.fromarray(image).save(path)
        labels[str(path)] = int(label)

    out_csv = tmp_path / "preds.csv"
    assert main(["predict", str(result.run_dir), str(pngs), "--output", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 468
    scored = compute_metrics(
        [labels[r["path"]] for r in rows], [float(r["probability"]) for r in rows], 0.5
    )
    capsys.readouterr()
    assert main(["evaluate", str(result.run_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert scored["confusion_matrix"] == evaluated["confusion_matrix"]
    assert scored["accuracy"] == evaluated["accuracy"]
    assert scored["roc_auc"] == pytest.approx(evaluated["roc_auc"], abs=1e-4)  # 6-digit CSV
