#!/usr/bin/env python
"""Ablation across insertion points: train a plan of runs into a resumable results store (same as ``yolo-attn ablate``).

Re-running the same command skips finished runs and redoes interrupted ones; failed runs are recorded with their
error. Training overrides are Ultralytics ``key=value`` pairs, passed to ``model.train()``.

Examples:
    python scripts/ablate.py --data data/shapes.yaml --blocks bot dat coat --positions sppf_before neck \\
        --seeds 0 1 --out out/ablate epochs=5 imgsz=128 batch=8 workers=0 --report
    python scripts/ablate.py --data ../shared/data/coco128.yaml --pretrained ../shared/data/weights/yolov8n.pt \\
        --out out/coco128 epochs=3 imgsz=320 --devices 0 1
    python scripts/ablate.py --data a.yaml b.yaml --blocks dat --seeds 0 1 2 --out out/two epochs=5   # per dataset
"""

if __name__ == "__main__":
    from _cli import run  # scripts/_cli.py

    run("ablate")
