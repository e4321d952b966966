#!/usr/bin/env python
"""Screen every block x position on a short schedule, confirm the best within a budget of runs (``yolo-attn search``).

Re-running the same command skips finished runs and makes the same choices; the decisions go to ``<out>/search.json``.

Examples:
    python scripts/search.py --data ../shared/data/coco128.yaml --pretrained ../shared/data/weights/yolov8n.pt \\
        --blocks bot dat coat --positions sppf_before neck head --budget 26 --screen-epochs 3 --out out/search \\
        epochs=12 imgsz=320
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone without installing

from yolo_attn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
