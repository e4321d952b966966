#!/usr/bin/env python
"""Block benchmarks that compare implementations: the rows behind the blocks' design choices.

``yolo-attn bench`` measures every registered block at its default settings. This script adds the comparisons the
papers and the design argue from, at the P5 / P4 / P3 maps of a 640 input with yolov8n widths
(:data:`yolo_attn.bench.LEVEL_SHAPES`: 20x20 c=256, 40x40 c=128, 80x80 c=64, batch 2):

- every attention implementation (``attn_impl``: auto, fused, chunked, plain) of ``MHSA``, ``CoAt`` and
  ``DAttention``, the ``auto`` row labelled with what it resolves to on the device used (on CUDA, BoTNet's fused
  path folds the position logits into q and k, "key-augmented", while the head stays within 256 channels);
- the CSP / inserted forms (``BoT3``, ``CoAt3``, ``DATBlock``, ``DAT3``) at ``auto`` and at the plain twin;
- ``MBConv`` (CoAtNet's convolution block, the cost the attention stages are compared with);
- DAT's axial position bias against its 2-D table, and DAT with key stride 1 (every pixel a key, what the "DAT for
  YOLOv8" snippets run) against the level's key stride;
- ``GlobalAttention``: plain global multi-head self-attention through SDPA with no position term, the ceiling of
  what any global-attention block can cost (with no mask, SDPA takes its flash kernel, also on CPU).

Examples:
    python benchmarks/blocks.py --name MHSA --iters 3
    python benchmarks/blocks.py --device cuda --json out/blocks.json
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone without installing

import torch  # noqa: E402
from einops import rearrange  # noqa: E402
from torch import nn  # noqa: E402

from yolo_attn import registry  # noqa: E402
from yolo_attn.bench import (  # noqa: E402
    LEVEL_SHAPES,
    BenchCase,
    _build,  # noqa: E402
    bench_table,
    format_table,
    resolve_device,
)
from yolo_attn.nn import (  # noqa: E402
    ATTN_IMPLS,
    DAT3,
    MHSA,
    AttentionLayer,
    BoT3,
    CoAt,
    CoAt3,
    DATBlock,
    DAttention,
    MBConv,
    attend,
    resolve_impl,
    set_attn_impl,
)
from yolo_attn.nn.attention import KEYAUG_MAX_DIM  # noqa: E402

__all__ = ["GlobalAttention", "cases", "main"]


class GlobalAttention(AttentionLayer):
    """Reference global multi-head self-attention: 1x1 q/k/v/out projections, SDPA, no position term."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b (qkv h d) y x -> qkv b h (y x) d", qkv=3, h=self.num_heads).unbind(0)
        q = q * q.shape[-1] ** -0.5
        out = attend(q.contiguous(), k.contiguous(), v.contiguous(), None, self.attn_impl)  # contiguous: CPU flash
        return self.proj(rearrange(out, "b h (y x) d -> b (h d) y x", y=x.shape[2]))


def _with_impl(make, impl: str) -> nn.Module:
    return set_attn_impl(make(), impl)


def _label(impl: str, device: torch.device, shape, num_heads: int, keys: int, lowrank: int | None = None) -> str:
    """``impl``, for ``auto`` with what it runs here, and "key-augmented" where fused folds BoTNet's bias into q, k."""
    b, _, h, w = shape
    run = resolve_impl(impl, device, True, b * num_heads * h * w * keys)
    keyaug = run == "fused" and lowrank is not None and device.type == "cuda" and lowrank + h + w <= KEYAUG_MAX_DIM
    if impl == "auto":
        return f"auto ({run}{', key-augmented' if keyaug else ''})"
    return f"{impl} (key-augmented)" if keyaug else impl


def cases(device: str | torch.device = "cpu") -> list[BenchCase]:
    """The comparison rows, labelled for ``device`` (what ``auto`` resolves to depends on it)."""
    device = resolve_device(device)
    rows: list[BenchCase] = []

    def add(family: str, name: str, make, shape, note: str = "") -> None:
        rows.append(BenchCase(name=name, make=make, shape=shape, family=family, note=note))

    for level, shape in LEVEL_SHAPES.items():
        _, c, h, w = shape
        tag = f"P{level} {h}x{w} c{c}"
        # BoTNet: 4 heads; BoT3 runs them at half width
        for impl in ATTN_IMPLS:
            label = _label(impl, device, shape, 4, h * w, lowrank=c // 4)
            add("bot", f"MHSA {tag} {label}", partial(_with_impl, partial(MHSA, c, c), impl), shape)
        for impl in ("auto", "plain"):
            label = _label(impl, device, shape, 4, h * w)
            add("bot", f"BoT3 {tag} {label}", partial(_with_impl, partial(BoT3, c, c), impl), shape)
        # CoAtNet: heads of 32 channels
        add("coat", f"MBConv {tag}", partial(MBConv, c, c), shape, "expand 4, SE")
        for impl in ATTN_IMPLS:
            label = _label(impl, device, shape, c // 32, h * w)
            add("coat", f"CoAt {tag} {label}", partial(_with_impl, partial(CoAt, c, c, 1), impl), shape)
        for impl in ("auto", "plain"):
            label = _label(impl, device, shape, c // 64, h * w)
            add("coat", f"CoAt3 {tag} {label}", partial(_with_impl, partial(CoAt3, c, c, 1), impl), shape)
        # DAT: the level's key stride (a 20x20 key grid at every level of a 640 input)
        probe = DAttention(c, c, level)
        r, heads = probe.key_stride, probe.num_heads
        keys = -(-h // r) * -(-w // r)
        for impl in ATTN_IMPLS:
            label = _label(impl, device, shape, heads, keys)
            make = partial(_with_impl, partial(DAttention, c, c, level), impl)
            add("dat", f"DAttention r={r} {tag} {label}", make, shape)
        add("dat", f"DAttention r={r} axial {tag}", partial(DAttention, c, c, level, pos_bias="axial"), shape)
        if r != 1:
            add("dat", f"DAttention r=1 (global) {tag}", partial(DAttention, c, c, level, key_stride=1), shape)
        add("dat", f"GlobalAttention {tag}", partial(GlobalAttention, c, heads), shape, "SDPA, no position term")
        for impl in ("auto", "plain"):
            label = _label(impl, device, shape, heads, keys)
            add("dat", f"DATBlock {tag} {label}", partial(_with_impl, partial(DATBlock, c, c, 1, level), impl), shape)
        for impl in ("auto", "plain"):
            label = _label(impl, device, shape, max(1, heads // 2), keys)
            make = partial(_with_impl, partial(DAT3, c, c, 1, 0.5, level), impl)
            add("dat", f"DAT3 {tag} {label}", make, shape)
        # the comparators: Ultralytics' own attention (registry families with an origin), as a YAML row builds them
        for sp in registry.specs():
            if sp.family and sp.origin and level in sp.bench_levels:
                add(sp.family, f"{sp.name} {tag}", partial(_build, sp, c, level, None), shape, "Ultralytics' module")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, 0, ... (default cpu)")
    p.add_argument("--family", nargs="*", help="only these families (bot, dat, coat)")
    p.add_argument("--name", nargs="*", help="only rows whose name contains one of these")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--forward-only", action="store_true", help="time inference instead of a training step")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--list", action="store_true", help="print the row names and exit")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = [
        c
        for c in cases(a.device)
        if (not a.family or c.family in a.family) and (not a.name or any(n in c.name for n in a.name))
    ]
    if a.list:
        print("\n".join(c.name for c in rows))
        return 0
    table = bench_table(
        rows,
        backward=not a.forward_only,
        warmup=a.warmup,
        iters=a.iters,
        device=a.device,
        flops=not a.no_flops,
    )
    print(format_table(table))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(table, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
