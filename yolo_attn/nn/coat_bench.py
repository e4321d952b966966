"""Benchmark rows of the CoAtNet family for ``scripts/bench_blocks.py`` (see :func:`yolo_attn.bench.collect_cases`).

MBConv and one CoAt transformer block (SDPA fast path and its plain softmax twin) at the P5 / P4 / P3 maps of a 640
input with yolov8n widths (20x20 c=256, 40x40 c=128, 80x80 c=64), batch 2. The CoAt rows run one block at
``c1 == c2`` and stride 1 (the inserted form); head dim 32, so 8 / 4 / 2 heads.

Examples:
    >>> from yolo_attn.nn.coat_bench import bench_cases
    >>> [c["name"] for c in bench_cases()][:3]
    ['MBConv P5 20x20 c256', 'CoAt fast P5 20x20 c256', 'CoAt twin P5 20x20 c256']
"""

from __future__ import annotations

from functools import partial

from torch import nn

from yolo_attn.nn.coat import CoAt, MBConv

__all__ = ["bench_cases", "LEVELS"]

#: (level, H, W, channels) at a 640 input with yolov8n widths.
LEVELS = (("P5", 20, 20, 256), ("P4", 40, 40, 128), ("P3", 80, 80, 64))


# CPU training: SDPA forward in query-row chunks + chunked backward; CUDA: SDPA with the bias as attn_mask
_FAST_NOTE = "SDPA, chunked CPU backward"


def _coat(c: int, fused: bool) -> nn.Module:
    return CoAt(c, c, 1, fused=fused)


def bench_cases(batch: int = 2) -> list[dict]:
    """``[{"name", "make", "shape"}]``: MBConv, CoAt fast and CoAt twin at each level."""
    cases = []
    for level, h, w, c in LEVELS:
        tag = f"{level} {h}x{w} c{c}"
        shape = (batch, c, h, w)
        cases.append({"name": f"MBConv {tag}", "make": partial(MBConv, c, c), "shape": shape, "note": "expand 4, SE"})
        cases.append({"name": f"CoAt fast {tag}", "make": partial(_coat, c, True), "shape": shape, "note": _FAST_NOTE})
        cases.append(
            {"name": f"CoAt twin {tag}", "make": partial(_coat, c, False), "shape": shape, "note": "plain softmax"}
        )
    return cases
