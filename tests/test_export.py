"""Exports (SavedModel, ONNX, LiteRT): each runs in its own runtime and answers like the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import l1cnn
from l1cnn.cli import main
from l1cnn.errors import ConfigError, ModelError, RunError
from l1cnn.export import (
    FLOAT_TOLERANCE,
    ExportOptions,
    compare_predictions,
    export_run,
    load_export,
    predict_export,
)
from l1cnn.predict import predict, predict_split, reload_run_data
from l1cnn.runs import file_sha256, load_run


@pytest.fixture(scope="module")
def run(trained_run: Path):
    return load_run(trained_run)


@pytest.fixture(scope="module")
def test_split(run):
    return reload_run_data(run).splits["test"]


@pytest.fixture(scope="module")
def keras_probs(run, test_split) -> np.ndarray:
    return predict_split(run.model, test_split)


def _check_record(record: dict, fmt: str, quantize: str | None = None) -> dict:
    on_disk = json.loads((Path(record["path"]) / "export.json").read_text())
    assert on_disk["format"] == fmt and on_disk["quantize"] == quantize
    assert on_disk["class_names"] == ["0", "1"] and on_disk["image_shape"] == [12, 12, 1]
    parity = on_disk["parity"]
    assert parity["n"] == 18
    assert set(parity) >= {"max_abs_diff", "class_agreement", "roc_auc_keras", "roc_auc_export"}
    return parity


def test_savedmodel_takes_uint8_and_carries_classes_and_threshold(
    run, test_split, keras_probs, tmp_path
):
    import tensorflow as tf

    record = export_run(run, ExportOptions("savedmodel"), out=tmp_path / "sm")
    parity = _check_record(record, "savedmodel")
    assert parity["passed"] is True and parity["max_abs_diff"] <= FLOAT_TOLERANCE
    assert parity["class_agreement"] == 1.0
    # The folder is a TF Serving model base path: version 1 holds the SavedModel.
    assert (tmp_path / "sm" / "1" / "saved_model.pb").exists()
    assert (
        json.loads((tmp_path / "sm" / "1" / "assets.extra" / "l1cnn.json").read_text())["threshold"]
        == run.threshold
    )
    loaded = tf.saved_model.load(str(tmp_path / "sm" / "1"))
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1]["pixels"].dtype == tf.uint8
    out = serve(pixels=tf.constant(test_split.images))
    np.testing.assert_allclose(out["probability"].numpy(), keras_probs, atol=FLOAT_TOLERANCE)
    expected = np.where(keras_probs >= run.threshold, b"1", b"0")
    assert list(out["predicted_class"].numpy()) == list(expected)
    np.testing.assert_allclose(out["threshold"].numpy(), run.threshold)
    meta = loaded.signatures["metadata"]()
    assert [n.decode() for n in meta["class_names"].numpy()] == run.class_names
    assert list(meta["image_shape"].numpy()) == [12, 12, 1]
    # `predict` through the export folder answers like `predict` through the run.
    source = Path(run.info["source"])
    via_export = predict_export(tmp_path / "sm", [source]).predictions
    via_run = predict(run, [source]).predictions
    assert [p.id for p in via_export] == [p.id for p in via_run]
    assert (
        max(abs(a.probability - b.probability) for a, b in zip(via_export, via_run, strict=True))
        <= 1e-4
    )


def test_onnx_runs_in_onnxruntime_like_keras(run, test_split, keras_probs, tmp_path):
    import onnxruntime as ort

    record = export_run(run, ExportOptions("onnx"), out=tmp_path / "onnx")
    parity = _check_record(record, "onnx")
    assert parity["passed"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # the staging folder was renamed
    session = ort.InferenceSession(
        str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (inp,) = session.get_inputs()
    assert inp.name == "pixels" and inp.shape[1:] == [12, 12, 1]
    got = session.run(None, {"pixels": test_split.images.astype(np.float32)})[0].reshape(-1)
    assert np.abs(got - keras_probs).max() <= FLOAT_TOLERANCE


def test_litert_runs_in_ai_edge_litert_like_keras(run, test_split, keras_probs, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    record = export_run(run, ExportOptions("litert"), out=tmp_path / "tfl")
    parity = _check_record(record, "litert")
    assert parity["passed"] is True
    runner = Interpreter(model_path=str(tmp_path / "tfl" / "model.tflite")).get_signature_runner()
    (out,) = runner(pixels=test_split.images.astype(np.float32)).values()
    assert np.abs(out.reshape(-1) - keras_probs).max() <= FLOAT_TOLERANCE


@pytest.mark.slow
def test_litert_quantized_exports_are_smaller_and_close(run, tmp_path):
    base = export_run(run, ExportOptions("litert"), out=tmp_path / "f32")
    half = export_run(run, ExportOptions("litert", "float16"), out=tmp_path / "f16")
    int8 = export_run(run, ExportOptions("litert", "int8"), out=tmp_path / "i8")
    for record, quantize in ((half, "float16"), (int8, "int8")):
        parity = _check_record(record, "litert", quantize)
        assert parity["tolerance"] is None and parity["passed"] is None  # reported, not judged
        assert parity["max_abs_diff"] < 0.05
    # The tiny model's weights are a small part of a tiny file, so only "smaller" is certain.
    assert half["size_bytes"] < base["size_bytes"]
    assert int8["size_bytes"] < half["size_bytes"]


def test_compare_predictions_judges_float_exports_by_tolerance():
    labels = np.array([0, 1, 0, 1])
    ref = np.array([0.1, 0.9, 0.2, 0.8], np.float32)
    same = compare_predictions(labels, ref, ref + 5e-5, 0.5, FLOAT_TOLERANCE)
    assert same["passed"] is True and same["class_agreement"] == 1.0
    off = compare_predictions(labels, ref, np.array([0.1, 0.15, 0.2, 0.8]), 0.5, FLOAT_TOLERANCE)
    assert off["passed"] is False and off["class_agreement"] == 0.75
    assert off["max_abs_diff"] == pytest.approx(0.75)
    assert off["roc_auc_keras"] == 1.0 and off["roc_auc_export"] == 0.75
    assert compare_predictions(labels, ref, ref + 0.2, 0.5, None)["passed"] is None
    with pytest.raises(ModelError, match="NaN"):
        compare_predictions(labels, ref, np.array([0.1, np.nan, 0.2, 0.8]), 0.5, 1e-4)


def test_bad_options_are_refused_with_clear_errors():
    with pytest.raises(ConfigError, match="litert only"):
        ExportOptions("onnx", "int8")
    with pytest.raises(ConfigError, match="export format must be one of"):
        ExportOptions("tfjs")
    with pytest.raises(ConfigError, match="--quantize must be one of"):
        ExportOptions("litert", "int4")


def test_export_refuses_to_clobber_folders(run, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists; use --overwrite"):
        export_run(run, ExportOptions("onnx"), out=other)
    with pytest.raises(RunError, match="not an l1cnn export folder"):
        export_run(run, ExportOptions("onnx"), out=other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_cli_export_then_predict_through_the_export(trained_run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(trained_run), "--format", "litert", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Parity on" in printed and "passed" in printed and "class agreement 1.0000" in printed
    data = Path(load_run(trained_run).info["source"])
    assert main(["predict", str(out), str(data), "--output", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    via_run = predict(trained_run, [data]).predictions
    assert len(rows) == len(via_run) == 120
    for row, want in zip(rows, via_run, strict=True):
        path, prob, cls = row.split(",")
        assert path == want.id and cls == want.predicted_class
        assert abs(float(prob) - want.probability) <= 1e-4
    # An existing export folder is not replaced silently.
    assert main(["export", str(trained_run), "--format", "litert", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_export_that_failed_parity_is_refused(run, tmp_path):
    record = export_run(run, ExportOptions("onnx"), out=tmp_path / "onnx")
    folder = tmp_path / "broken"
    shutil.copytree(record["path"], folder)
    info = json.loads((folder / "export.json").read_text())
    info["parity"]["passed"] = False
    (folder / "export.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="failed its parity check"):
        load_export(folder)
    with pytest.raises(RunError, match="not an l1cnn export folder"):
        predict_export(tmp_path, [folder])


# Predicts with the CLI, then serves the same export in-process and posts one image; prints the
# CSV, the served probability and the top-level modules loaded, as JSON on the last line.
NO_TF_SCRIPT = """
import json, sys
import numpy as np
from fastapi.testclient import TestClient
from l1cnn.cli import main
from l1cnn.serve import create_app
export, image, csv_path = sys.argv[1:]
code = main(["predict", export, image, "--output", csv_path])
pixels = np.load(image)["x"][:1]
client = TestClient(create_app(export))
served = client.post("/v1/predict", json={"instances": pixels.tolist()})
metrics = client.get("/metrics").text
print(json.dumps({"code": code, "status": served.status_code, "served": served.json(),
                  "metrics": metrics, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_export_folders_predict_and_serve_without_tensorflow(run, test_split, tmp_path, fmt):
    record = export_run(run, ExportOptions(fmt), out=tmp_path / fmt)
    image = tmp_path / "one.npz"
    np.savez(image, x=test_split.images[:2], y=test_split.labels[:2])
    env = dict(os.environ, PYTHONPATH=str(Path(l1cnn.__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", NO_TF_SCRIPT, record["path"], str(image), str(tmp_path / "p.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["status"] == 200
    assert not {"tensorflow", "keras", "sklearn"} & set(report["modules"])
    want = predict_split(run.model, test_split)[:2]
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in rows] == pytest.approx(want, abs=1e-4)
    served = report["served"]["predictions"][0]["probability"]
    assert served == pytest.approx(float(want[0]), abs=1e-4)
    # /metrics of an export: the source run and the sha256 of the file actually served.
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        s.name: s for f in text_string_to_metric_families(report["metrics"]) for s in f.samples
    }
    info = samples["l1cnn_model_info"].labels
    artifact = Path(record["path"]) / record["artifact"]
    assert info["run"] == run.path.name and info["model_format"] == fmt
    assert info["model_sha256"] == file_sha256(artifact)
    predicted = report["served"]["predictions"][0]["class"]
    counts = {
        s.labels["class_name"]: s.value
        for f in text_string_to_metric_families(report["metrics"])
        for s in f.samples
        if s.name == "l1cnn_images_predicted_total"
    }
    assert counts == {n: float(n == predicted) for n in run.class_names}
