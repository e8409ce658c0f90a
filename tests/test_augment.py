"""Issue 14: augmentation of training batches, seeded per (seed, epoch), never in the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config

from l1cnn import augment, backup, runs
from l1cnn.cli import main
from l1cnn.config import AugmentConfig, config_from_dict
from l1cnn.data import Split, make_tf_dataset
from l1cnn.errors import ConfigError
from l1cnn.train import resume, train

EVERYTHING = {
    "horizontal_flip": True,
    "vertical_flip": True,
    "rotation": 0.1,
    "zoom": 0.1,
    "translation": 0.1,
    "contrast": 0.2,
    "brightness": 0.1,
}


def _epoch_pixels(config: AugmentConfig, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_images(40, seed=1)
    ds = make_tf_dataset(Split(x, y, [str(i) for i in range(40)]), 16)
    batches = list(augment.augment_dataset(ds, config, seed, epoch))
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate(
        [b[1].numpy() for b in batches]
    )


def test_augmentation_is_seeded_by_seed_and_epoch() -> None:
    config = AugmentConfig(**EVERYTHING)
    x, y = make_images(40, seed=1)
    a, labels = _epoch_pixels(config, 3, 1)
    assert np.array_equal(labels, y)  # labels untouched
    assert not np.array_equal(a, x.astype(np.float32))  # pixels changed
    assert a.min() >= 0 and a.max() <= 255
    assert np.array_equal(a, _epoch_pixels(config, 3, 1)[0])  # same (seed, epoch): same images
    assert not np.array_equal(a, _epoch_pixels(config, 3, 2)[0])  # a new epoch: new draws
    assert not np.array_equal(a, _epoch_pixels(config, 4, 1)[0])
    off, _ = _epoch_pixels(AugmentConfig(), 3, 1)
    assert np.array_equal(off, x.astype(np.float32))  # off by default: the pipeline as it was


def test_bad_augmentation_settings_are_refused(npz_file: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'augment.shear'"):
        config_from_dict({"augment": {"shear": 0.1}})
    with pytest.raises(ConfigError, match="'augment.rotation' must be in \\[0, 0.5\\]"):
        config_from_dict({"augment": {"rotation": 0.7}})
    with pytest.raises(ConfigError, match="'augment.horizontal_flip' must be bool"):
        config_from_dict({"augment": {"horizontal_flip": "yes"}})
    for setting, message in (
        ("augment.zoom=1.5", "'augment.zoom' must be in [0, 1)"),
        ("augment.brightness=-0.1", "'augment.brightness' must be in [0, 1]"),
        ("augment.mixup=0.2", "unknown config key 'augment.mixup'"),
    ):
        out = tmp_path / "never"
        assert main(["train", str(npz_file), "--set", setting, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
        assert not out.exists()


def test_augmented_run_resumes_bit_identically(
    npz_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(train={"epochs": 4, "stop_on_collapse": False}, augment=EVERYTHING)
    straight = train(npz_file, config, out=tmp_path / "straight")
    plain = train(npz_file, tiny_config(train={"epochs": 4}), out=tmp_path / "plain")
    assert [h["loss"] for h in straight.history] != [h["loss"] for h in plain.history]
    # the grid is in the run folder and the report; the model holds no augmentation layer
    assert (straight.run_dir / augment.SAMPLES_FILE).stat().st_size > 1000
    assert "Augmented training samples" in (straight.run_dir / "report.html").read_text()
    assert not (plain.run_dir / augment.SAMPLES_FILE).exists()
    from l1cnn import load_run

    layers = [type(layer).__name__ for layer in load_run(straight.run_dir).model.layers]
    assert not any(name.startswith("Random") for name in layers)

    real_save = backup.save

    def save_then_interrupt(run_dir, state):  # noqa: ANN001, ANN202
        path = real_save(run_dir, state)
        if state.epoch == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(backup, "save", save_then_interrupt)
    run = tmp_path / "killed"
    assert train(npz_file, config, out=run).status == "interrupted"
    monkeypatch.undo()
    resumed = resume(run)
    assert resumed is not None and resumed.epochs_run == 4
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    assert resumed.metrics["test"] == straight.metrics["test"]
    saved = runs.read_run_config(run)
    assert saved.augment == config.augment
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
