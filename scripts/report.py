#!/usr/bin/env python
"""Markdown, CSV and LaTeX tables and PNG plots from a sweep's results store (same as ``yolo-attn report``): per
configuration the change against the same-seed baseline with 95% intervals over images and seeds and a verdict,
per-class changes, mAP vs GFLOPs with the Pareto front, per-position changes with interval whiskers.

Examples:
    python scripts/report.py out/ablate --print
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone without installing

from yolo_attn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
