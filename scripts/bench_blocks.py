#!/usr/bin/env python
"""Benchmark the registered blocks: median latency, peak memory, params and GFLOPs per case, as a Markdown table.

One row per registered block per pyramid level it names (``bench_levels``), at yolo_attn.bench.LEVEL_SHAPES.
Same as ``yolo-attn bench``.

Examples:
    python scripts/bench_blocks.py --family dat --iters 3
    python scripts/bench_blocks.py --device cuda --json out/bench.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone without installing

from yolo_attn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
