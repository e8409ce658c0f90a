"""Print the README's sparsity / ROC-AUC / size table from the runs ``deploy_figures.sh`` made.

Reads each ``<run>/metrics.json`` and every ``<run>-pruned-*/prune.json`` beside it.

    .venv/bin/python benchmarks/prune_table.py [runs/deploy]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(folder: Path, base: str) -> list[str]:
    """Markdown rows: the dense run, then each pruned run of ``base``."""
    pruned = sorted(folder.glob(f"{base}-pruned-*/prune.json"))
    if not pruned:
        return []
    records = [
        (p.parent.name.removeprefix(f"{base}-pruned-"), json.loads(p.read_text())) for p in pruned
    ]
    test = json.loads((folder / base / "metrics.json").read_text())["test"]
    first = records[0][1]
    out = [
        f"| {base} | dense | - | {first['dense_sparsity']['total']['sparsity']:.3f} | "
        f"{test['roc_auc']:.4f} | {test['accuracy']:.4f} | "
        f"{first['model_file']['dense']['gzip_bytes']:,} | 1.00 |"
    ]
    for name, r in records:
        after = r["test_after"]
        out.append(
            f"| {base} | {name} | {r['fine_tune_epochs']} | "
            f"{r['sparsity']['total']['sparsity']:.3f} | {after['roc_auc']:.4f} | "
            f"{after['accuracy']:.4f} | {r['model_file']['pruned']['gzip_bytes']:,} | "
            f"{r['model_file']['gzip_ratio']:.2f} |"
        )
    return out


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/deploy")
    print(
        "| run | pruning | fine-tune epochs | sparsity | test ROC-AUC | test accuracy "
        "| model.keras gzip bytes | vs dense |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for base in ("xray-penalty", "xray-proximal"):
        print("\n".join(rows(folder, base)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
