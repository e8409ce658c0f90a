"""Reports as one family: the run report, the comparison page and the study report share one
page template, one set of table and number formats and one way to draw figures.

Reads plain data (run folders' files, study results rows); imports no TensorFlow, and no
matplotlib until a figure is drawn. A new page is a small module: build parts with
:func:`heading`, :func:`section`, :func:`html_table` and :func:`figure_grid`, then
:func:`write_page`.
"""

from l1cnn.reporting.compare import write_comparison
from l1cnn.reporting.figures import Plot, new_figure, png_bytes
from l1cnn.reporting.page import (
    figure_grid,
    figure_html,
    heading,
    html_table,
    md_table,
    section,
    write_page,
)
from l1cnn.reporting.run_files import EXPLAIN_FILE, RunFiles, read_run_files
from l1cnn.reporting.run_report import PLOTS_DIR, REPORT_HTML, REPORT_MD, write_report
from l1cnn.reporting.study_report import write_study_report

__all__ = [
    "EXPLAIN_FILE",
    "PLOTS_DIR",
    "REPORT_HTML",
    "REPORT_MD",
    "Plot",
    "RunFiles",
    "figure_grid",
    "figure_html",
    "heading",
    "html_table",
    "md_table",
    "new_figure",
    "png_bytes",
    "read_run_files",
    "section",
    "write_comparison",
    "write_page",
    "write_report",
    "write_study_report",
]
