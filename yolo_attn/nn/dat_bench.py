"""Benchmark rows of the DAT family for ``scripts/bench_blocks.py`` (see :func:`yolo_attn.bench.collect_cases`).

Rows at P5 / P4 / P3 of a 640 input with yolov8n widths (20x20 c=256, 40x40 c=128, 80x80 c=64), batch 2:

- ``DAttention P<l>``: the layer with its default key stride for that level (P5 r=1, P4 r=2, P3 r=4): 400 keys.
- ``DAttention P<l> twin``: the same with the plain softmax instead of SDPA.
- ``DAttention P<l> axial``: the same with the separable position bias (row + column tables) instead of the 2-D one.
- ``DAttention P<l> r=1 (global)``: key stride 1, i.e. every pixel is a key (what the "DAT for YOLOv8" snippets run):
  deformable attention degenerated to global attention with the same offset network and position bias.
- ``GlobalAttention P<l>``: plain global multi-head self-attention through SDPA at the same width and heads, with no
  position term: with no mask, SDPA takes its flash kernel (also on CPU) and never materialises the N x N logits.
- ``DATBlock P<l>``: the whole DAT++ block (LPU + DAttention + MLP) as inserted in YOLO models.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from yolo_attn.nn.common import attend
from yolo_attn.nn.dat import DATBlock, DAttention, _default_heads

__all__ = ["bench_cases", "GlobalAttention", "LEVEL_SHAPES"]

# level -> (B, C, H, W) of yolov8n's P3/P4/P5 maps at 640, batch 2
LEVEL_SHAPES = {5: (2, 256, 20, 20), 4: (2, 128, 40, 40), 3: (2, 64, 80, 80)}


class GlobalAttention(nn.Module):
    """Reference global multi-head self-attention (1x1 q/k/v/out projections, SDPA, no position term)."""

    def __init__(self, dim: int, num_heads: int | None = None):
        super().__init__()
        self.num_heads = num_heads or _default_heads(dim)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.num_heads, c // self.num_heads, -1).transpose(-1, -2)
        q, k, v = qkv.contiguous().unbind(1)  # B, h, N, d; contiguous rows let CPU SDPA take its flash kernel
        out = attend(q, k, v)  # B, h, N, d
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def bench_cases() -> list[dict]:
    """Rows for the block benchmark: ``{"name", "make", "shape"}`` (``make()`` builds a fresh module)."""
    cases = []
    for level, shape in LEVEL_SHAPES.items():
        c, tag = shape[1], f"P{level} {shape[2]}x{shape[3]} c={shape[1]}"
        r = DAttention(c, c, level).key_stride
        cases.append(
            {"name": f"DAttention r={r} {tag}", "make": lambda c=c, lv=level: DAttention(c, c, lv), "shape": shape}
        )
        cases.append(
            {
                "name": f"DAttention r={r} twin {tag}",
                "make": lambda c=c, lv=level: DAttention(c, c, lv, fused=False),
                "shape": shape,
            }
        )
        cases.append(
            {
                "name": f"DAttention r={r} axial {tag}",
                "make": lambda c=c, lv=level: DAttention(c, c, lv, pos_bias="axial"),
                "shape": shape,
            }
        )
        if r != 1:
            cases.append(
                {
                    "name": f"DAttention r=1 (global) {tag}",
                    "make": lambda c=c, lv=level: DAttention(c, c, lv, key_stride=1),
                    "shape": shape,
                }
            )
        cases.append({"name": f"GlobalAttention {tag}", "make": lambda c=c: GlobalAttention(c), "shape": shape})
        cases.append({"name": f"DATBlock {tag}", "make": lambda c=c, lv=level: DATBlock(c, c, 1, lv), "shape": shape})
    return cases
