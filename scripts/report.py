#!/usr/bin/env python
"""Markdown, CSV and LaTeX tables and PNG plots from a sweep's results store (same as ``yolo-attn report``): per
configuration the change against the same-seed baseline with 95% intervals over images and seeds and a verdict,
per-class changes, mAP vs GFLOPs with the Pareto front, per-position changes with interval whiskers.

Examples:
    python scripts/report.py out/ablate --print
"""

if __name__ == "__main__":
    from _cli import run  # scripts/_cli.py

    run("report")
