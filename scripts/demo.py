#!/usr/bin/env python
"""The README's main job: YOLOv8n and its BoT / DAT / CoAt variants trained briefly on CPU on generated data, then
the comparison report (tables + plots). No download; under 10 minutes on 2 CPU cores. Same as ``yolo-attn demo``.

Re-running resumes: finished runs are kept, an interrupted one is redone.

Examples:
    python scripts/demo.py                      # writes out/demo/report.md (+ results.csv, PNG plots)
    python scripts/demo.py --seeds 0 1 2        # spread across seeds in the report (about 3x the time)
    python scripts/demo.py --out /tmp/demo --epochs 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone without installing

from yolo_attn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
