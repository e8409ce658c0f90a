"""Issue 16: ``make demo`` tells the whole story: collapse, a working l1_lambda, one comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from l1cnn.config import load_config
from l1cnn.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_trains_both_runs_and_compares_them(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", load_config(ROOT / "configs" / "default.toml"))
    page = result.compare.read_text()
    assert result.compare == tmp_path / "demo" / "compare.html"
    assert "specified" in page and "l1-0.001" in page  # both runs, by name
    assert result.specified.name == "specified" and result.working.name == "l1-0.001"
    lines = (tmp_path / "demo" / "summary.txt").read_text().splitlines()
    assert lines == result.summary and len(lines) == 3
    assert "l1_lambda=0.01: collapsed" in lines[0]
    assert "l1_lambda=0.001: learned" in lines[1]
    assert lines[2].startswith("Why: at 0.01 ")
    for run in (result.specified, result.working):
        assert (run / "report.html").is_file() and any((run / "tensorboard").iterdir())
