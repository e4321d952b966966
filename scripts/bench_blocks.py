#!/usr/bin/env python
"""Benchmark the registered blocks: median latency, peak memory, params and GFLOPs per case, as a Markdown table.

One row per registered block per pyramid level it names (``bench_levels``), at yolo_attn.bench.LEVEL_SHAPES.
Same as ``yolo-attn bench``.

Examples:
    python scripts/bench_blocks.py --family dat --iters 3
    python scripts/bench_blocks.py --device cuda --json out/bench.json
"""

if __name__ == "__main__":
    from _cli import run  # scripts/_cli.py

    run("bench")
