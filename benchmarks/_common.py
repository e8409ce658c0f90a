"""What every benchmark records: the machine it ran on, and its own section of RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def machine() -> str:
    """CPU model (from ``lscpu``) and core count."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in lscpu.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def replace_section(path: Path, marker: str, text: str) -> None:
    """Put ``text`` in place of the section starting with ``marker``; keep every other section.

    A section runs from its ``## `` heading to the next one; a new section goes at the end.
    """
    previous = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if marker in previous:
        before, _, rest = previous.partition(marker)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        if after:
            path.write_text(before + text.rstrip() + "\n\n" + after)
            return
        previous = before
    path.write_text(previous.rstrip() + "\n\n" + text)
