"""Magnitude pruning: exact zeros, fixed through fine-tuning, a new run, a smaller gzip file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from l1cnn.cli import main
from l1cnn.errors import ConfigError, RunError
from l1cnn.prune import (
    PruneOptions,
    gzip_size,
    layer_sparsity,
    magnitude_mask,
    prune_run,
)
from l1cnn.runs import load_run


def test_magnitude_mask_by_fraction_and_by_threshold():
    kernel = np.array([[0.5, -0.01], [0.2, -0.3], [0.0, 0.05]], np.float32)
    keep = magnitude_mask(kernel, PruneOptions(sparsity=0.5))
    assert keep.shape == kernel.shape and keep.sum() == 3
    np.testing.assert_array_equal(keep, np.abs(kernel) >= 0.2)
    keep = magnitude_mask(kernel, PruneOptions(min_magnitude=0.04))
    np.testing.assert_array_equal(keep, np.abs(kernel) >= 0.04)
    # Ties are broken so that exactly floor(sparsity * n) weights go.
    assert magnitude_mask(np.zeros((10,)), PruneOptions(sparsity=0.35)).sum() == 7


def test_bad_prune_options_are_refused():
    with pytest.raises(ConfigError, match="exactly one of --sparsity or --min-magnitude"):
        PruneOptions()
    with pytest.raises(ConfigError, match="exactly one"):
        PruneOptions(sparsity=0.5, min_magnitude=1e-3)
    with pytest.raises(ConfigError, match=r"--sparsity must be in \[0, 1\)"):
        PruneOptions(sparsity=1.0)
    with pytest.raises(ConfigError, match="--min-magnitude must be > 0"):
        PruneOptions(min_magnitude=0)
    with pytest.raises(ConfigError, match="--fine-tune-epochs must be >= 0"):
        PruneOptions(sparsity=0.5, fine_tune_epochs=-1)


def test_prune_without_fine_tuning_writes_a_smaller_run(trained_run, tmp_path):
    result = prune_run(trained_run, PruneOptions(sparsity=0.9), out=tmp_path / "pruned")
    run = load_run(result.run_dir)  # a complete run folder, loadable like any other
    sparsity = layer_sparsity(run.model)
    for name in ("conv1", "conv2", "dense", "output"):
        n = sparsity[name]["weights"]
        assert sparsity[name]["zeros"] >= int(np.floor(0.9 * n))
    record = json.loads((result.run_dir / "prune.json").read_text())
    assert record["sparsity"]["total"]["sparsity"] == pytest.approx(sparsity["total"]["sparsity"])
    assert record["dense_sparsity"]["total"]["sparsity"] < 0.5
    sizes = record["model_file"]
    assert sizes["pruned"]["gzip_bytes"] < sizes["dense"]["gzip_bytes"]
    assert sizes["gzip_ratio"] == pytest.approx(
        sizes["pruned"]["gzip_bytes"] / sizes["dense"]["gzip_bytes"]
    )
    # The saved model file itself compresses better than the source run's dense weights.
    assert gzip_size(result.run_dir / "model.keras") == sizes["pruned"]["gzip_bytes"]
    before, after = record["test_before"], record["test_after"]
    assert record["test_change"]["roc_auc"] == pytest.approx(after["roc_auc"] - before["roc_auc"])
    assert run.metrics["test"]["roc_auc"] == pytest.approx(after["roc_auc"])
    assert run.info["pruned_from"] == str(trained_run) and run.info["status"] == "completed"
    assert "no fine-tuning" in run.info["message"] and run.info["model_sha256"]
    assert (result.run_dir / "report.html").exists()
    # The source run is untouched.
    assert layer_sparsity(load_run(trained_run).model)["total"]["sparsity"] < 0.5


@pytest.mark.slow
def test_fine_tuning_keeps_the_zeros_fixed(trained_run, tmp_path):
    dense = load_run(trained_run).model
    options = PruneOptions(min_magnitude=0.05, fine_tune_epochs=2)
    result = prune_run(trained_run, options, out=tmp_path / "ft")
    run = load_run(result.run_dir)
    history = (result.run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # header + two fine-tuning epochs
    changed = False
    for layer in ("conv1", "conv2", "dense", "output"):
        before = keras.ops.convert_to_numpy(dense.get_layer(layer).kernel)
        after = keras.ops.convert_to_numpy(run.model.get_layer(layer).kernel)
        pruned = np.abs(before) < 0.05
        assert np.all(after[pruned] == 0), layer  # zeros stayed zero through training
        assert not np.any(np.signbit(after[pruned])), layer  # +0.0, which gzip likes
        changed |= not np.allclose(after[~pruned], before[~pruned])
    assert changed  # the surviving weights did train
    assert run.info["epochs_run"] == 2 and "fine-tuned" in run.info["message"]
    # No optimizer state is saved: the file holds what inference needs, as the size claims.
    with zipfile.ZipFile(result.run_dir / "model.keras") as z:
        assert not json.loads(z.read("config.json")).get("compile_config")
    sizes = result.record["model_file"]
    assert sizes["pruned"]["bytes"] < 1.1 * sizes["dense"]["bytes"]
    # Seeded: the same command gives the same fine-tuned weights.
    again = load_run(prune_run(trained_run, options, out=tmp_path / "ft2").run_dir)
    for w1, w2 in zip(run.model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)


def test_cli_prune_and_its_errors(trained_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prune", str(trained_run), "--sparsity", "0.8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sparsity" in printed and "gzip" in printed and "ROC-AUC" in printed
    assert (out / "prune.json").exists()
    assert main(["prune", str(trained_run), "--sparsity", "0.8", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prune", str(trained_run), "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --sparsity or --min-magnitude" in capsys.readouterr().err
    with pytest.raises(RunError, match="its own folder"):
        prune_run(trained_run, PruneOptions(sparsity=0.5), out=Path(trained_run), overwrite=True)
