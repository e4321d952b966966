#!/usr/bin/env python
"""Markdown + CSV tables and PNG plots (mAP vs GFLOPs with the Pareto front, per-position change against the
baseline) from a sweep's results store (same as ``yolo-attn report``).

Examples:
    python scripts/report.py out/ablate --print
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone without installing

from yolo_attn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
