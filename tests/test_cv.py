"""Grouped splits and ``l1cnn cv``: folds partition train+val, groups never span splits or folds,
bad folds/groups are refused in one line, and cross-validation end to end (tiny, on digits)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images

from l1cnn import stats
from l1cnn.cli import main
from l1cnn.config import DataConfig, load_config
from l1cnn.data import load_data
from l1cnn.errors import ConfigError, DataError
from l1cnn.runs import read_csv, read_json


def _patient(image_id: str) -> str:
    """The group the tests' pattern ``img_(\\d\\d)`` gives: two digits of the file number."""
    return Path(image_id).name[4:6]


def _groups_of(split) -> set[str]:
    return {_patient(i) for i in split.ids}


def test_folds_partition_train_and_val_and_leave_the_test_split_out(npz_file: Path) -> None:
    held: list[str] = []
    for fold in (1, 2, 3, 4):
        data = load_data(npz_file, DataConfig(folds=4, fold=fold), seed=5)
        splits = data.splits
        ids = [set(splits[n].ids) for n in ("train", "val", "test")]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert sum(map(len, ids)) == 100  # train 80 + val 20; the given test 20 stays out
        assert not any(i.startswith("test:") for s in ids for i in s)
        assert set(np.unique(splits["test"].labels)) == {0, 1}  # stratified
        assert "test split (20 images) left out" in data.split_origin["test"]
        held += splits["test"].ids
    assert len(held) == len(set(held)) == 100  # every image of train+val held out exactly once
    again = load_data(npz_file, DataConfig(folds=4, fold=2), seed=5)
    assert again.fingerprint() == load_data(npz_file, DataConfig(folds=4, fold=2), 5).fingerprint()
    other_seed = load_data(npz_file, DataConfig(folds=4, fold=2), seed=6)
    assert other_seed.splits["test"].ids != again.splits["test"].ids


@pytest.fixture
def patients(tmp_path: Path) -> Path:
    """60 PNGs named img_000..img_059 in two class folders; 'patient' = the first two digits,
    so each of the 6 patients has images of both classes."""
    from PIL import Image

    root = tmp_path / "patients"
    images, labels = make_images(60)
    for name in ("healthy", "sick"):
        (root / name).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img[..., 0]).save(root / ("healthy", "sick")[label] / f"img_{i:03d}.png")
    return root


def test_group_pattern_keeps_each_patient_in_one_split_and_one_fold(patients: Path) -> None:
    config = DataConfig(group_pattern=r"img_(\d\d)", val_fraction=0.2, test_fraction=0.2)
    data = load_data(patients, config, seed=3)
    groups = [_groups_of(data.splits[n]) for n in ("train", "val", "test")]
    assert all(groups) and not (groups[0] & groups[1] or groups[0] & groups[2])
    assert not groups[1] & groups[2]
    assert data.split_origin["test"] == "grouped"
    held: list[set[str]] = []
    for fold in (1, 2, 3):
        data = load_data(patients, DataConfig(group_pattern=r"img_(\d\d)", folds=3, fold=fold), 3)
        parts = [_groups_of(data.splits[n]) for n in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        held.append(parts[2])
    assert sorted(g for part in held for g in part) == ["00", "01", "02", "03", "04", "05"]


def test_groups_file_gives_the_same_grouping_and_its_errors(patients: Path, tmp_path: Path) -> None:
    ids = sorted(str(p.relative_to(patients).as_posix()) for p in patients.rglob("*.png"))
    good = tmp_path / "groups.csv"
    good.write_text("id,group\n" + "".join(f"{i},p{_patient(i)}\n" for i in ids))
    by_file = load_data(patients, DataConfig(groups=str(good), folds=3, fold=2), seed=3)
    by_pattern = load_data(patients, DataConfig(group_pattern=r"img_(\d\d)", folds=3, fold=2), 3)
    assert by_file.split_ids() == by_pattern.split_ids()

    missing = tmp_path / "missing.csv"
    missing.write_text("".join(f"{i},g\n" for i in ids[:-2]))
    with pytest.raises(DataError, match=r"misses 2 of 60 images \(sick/img_057.png, sick/img_059"):
        load_data(patients, DataConfig(groups=str(missing)), seed=3)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("".join(f"{i},g\n" for i in [*ids, "cat/x.png"]))
    with pytest.raises(DataError, match=r"names 1 image\(s\) not in the data \(cat/x.png\)"):
        load_data(patients, DataConfig(groups=str(unknown)), seed=3)
    with pytest.raises(DataError, match="groups file '.*nope.csv' does not exist"):
        load_data(patients, DataConfig(groups=str(tmp_path / "nope.csv")), seed=3)
    with pytest.raises(DataError, match=r"group pattern 'patient\\d' matches no file names"):
        load_data(patients, DataConfig(group_pattern=r"patient\d"), seed=3)


def test_folds_beyond_the_smallest_class_or_group_count_are_refused(patients: Path) -> None:
    with pytest.raises(DataError, match=r"--folds 7 is more than the smaller class has groups \(6"):
        load_data(patients, DataConfig(group_pattern=r"img_(\d\d)", folds=7, fold=1), seed=3)
    with pytest.raises(DataError, match=r"--folds 31 is more than the smaller class has images"):
        load_data(patients, DataConfig(folds=31, fold=1), seed=3)
    with pytest.raises(ConfigError, match=r"'data.folds' \(--folds\) must be >= 2, got 1"):
        load_config(overrides=["folds=1"])
    with pytest.raises(ConfigError, match="data.groups or data.group_pattern, not both"):
        load_config(overrides=["groups='a.csv'", "group_pattern='x'"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_config(overrides=["group_pattern='('"])


def test_a_group_across_given_splits_is_refused(tmp_path: Path) -> None:
    from conftest import write_class_folders

    root = tmp_path / "given"
    write_class_folders(root / "train", n=20)
    write_class_folders(root / "val", n=10)  # img_000..img_009 again: same "patients"
    with pytest.raises(DataError, match=r"group '0' has images in both the train and the val"):
        load_data(root, DataConfig(group_pattern=r"img_0(\d)"), seed=1)


def test_cv_refuses_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, patients: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv"
    cases = [
        (["--folds", "1"], "error: config key 'data.folds' (--folds) must be >= 2, got 1"),
        (["--folds", "31"], "error: --folds 31 is more than the smaller class has images (30)"),
        (["--group-pattern", "zzz"], "error: group pattern 'zzz' matches no file names"),
        (["--fold", "2", "--folds", "3"], "error: cv trains every fold itself: leave out --fold"),
        (["--groups", str(tmp_path / "no.csv")], f"error: groups file '{tmp_path / 'no.csv'}'"),
    ]
    for extra, message in cases:
        assert main(["cv", str(patients), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err
    assert not out.exists()


def test_train_and_cv_share_the_grouping_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "cv"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--groups FILE" in text and "--group-pattern REGEX" in text and "--folds K" in text


@pytest.mark.slow
def test_cv_end_to_end_on_digits_resumes_and_summarizes(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    argv = ["cv", "digits", "--folds", "3", "--out", str(out), "--conv-filters", "4,8"]
    argv += ["--dense-units", "8", "--epochs", "1", "--batch-size", "64", "--tensorboard=false"]
    assert main(argv) == 0
    rows = read_csv(out / "results.csv")
    assert [r["fold"] for r in rows] == ["1", "2", "3"]
    for i in (1, 2, 3):
        assert (out / "folds" / f"fold-{i}" / "model.keras").exists()
        saved = (out / "folds" / f"fold-{i}" / "config.toml").read_text()
        assert f"fold = {i}" in saved and "folds = 3" in saved
    oof = read_csv(out / "oof_predictions.csv")
    assert len(oof) == len({r["id"] for r in oof}) == 1797  # every digit scored once
    info = read_json(out / "cv.json")
    aucs = [float(r["test_roc_auc"]) for r in rows]
    expected = stats.summarize(aucs)
    assert math.isclose(info["summary"]["test_roc_auc"]["mean"], float(np.mean(aucs)))
    assert math.isclose(info["summary"]["test_roc_auc"]["ci_low"], expected.ci_low)
    assert info["pooled_oof"]["n"] == 1797
    page = (out / "cv.html").read_text()
    assert "Cross-validation (3 folds)" in page and "cv_folds.png" in page
    assert (out / "cv_folds.png").stat().st_size > 1000
    before = (out / "folds" / "fold-2" / "model.keras").stat().st_mtime_ns
    assert main(argv) == 0  # rerun: every fold kept
    assert (out / "folds" / "fold-2" / "model.keras").stat().st_mtime_ns == before
    assert read_csv(out / "results.csv") == rows


def test_train_with_a_group_pattern_records_a_grouped_split(patients: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", str(patients), "--out", str(out), "--group-pattern", r"img_(\d\d)"]
    argv += ["--conv-filters", "2,2", "--dense-units", "4", "--epochs", "1", "--tensorboard=false"]
    argv += ["--val-fraction", "0.2", "--test-fraction", "0.2"]
    assert main(argv) == 0
    split = read_json(out / "split.json")
    groups = [{_patient(i) for i in split[n]} for n in ("train", "val", "test")]
    assert all(groups) and not (
        groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]
    )
    assert read_json(out / "data.json")["split_origin"]["test"] == "grouped"
    assert 'group_pattern = "img_(\\\\d\\\\d)"' in (out / "config.toml").read_text()
