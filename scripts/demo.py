#!/usr/bin/env python
"""The README's main job: YOLOv8n trained once on generated data, then it and its BoT / DAT / CoAt variants (each block
inserted before SPPF, starting from the trained baseline's weights) continued over 3 seeds on CPU, then the report:
intervals over images and seeds, a verdict per variant, plots. No download; about 10 minutes on 2 CPU cores. Same as
``yolo-attn demo``.

Re-running resumes: finished runs are kept, an interrupted one is redone.

Examples:
    python scripts/demo.py                      # writes out/demo/report.md (+ results.csv, summary.tex, PNG plots)
    python scripts/demo.py --seeds 0 1 2 3 4    # more seeds: narrower seed intervals (about 1.5 min per seed more)
    python scripts/demo.py --out /tmp/demo --epochs 3 --finetune-epochs 1
"""

if __name__ == "__main__":
    from _cli import run  # scripts/_cli.py

    run("demo")
