"""Benchmark rows of the BoTNet family for ``scripts/bench_blocks.py`` (see :func:`yolo_attn.bench.collect_cases`).

Rows at P5 / P4 / P3 of a 640 input with yolov8n widths (20x20 c=256, 40x40 c=128, 80x80 c=64), batch 2, 4 heads:

- ``MHSA P<l> fast (<path>)``: the default ``path="auto"``, with the path it resolves to on this machine (CPU:
  ``chunked``; CUDA: ``keyaug`` at these sizes).
- ``MHSA P<l> keyaug``: one SDPA call over key-augmented vectors (no N x N tensor, d + H + W wide dot products).
- ``MHSA P<l> bias``: SDPA with the position logits as an (B, h, N, N) float mask.
- ``MHSA P<l> twin``: the plain softmax twin (explicit logits, softmax, product).
- ``BoT3 P<l> fast`` / ``BoT3 P<l> twin``: the CSP block with one BoT bottleneck (attention width c/2, head dim c/8),
  as it replaces the last backbone CSP block.
"""

from __future__ import annotations

from yolo_attn.nn.bot import MHSA, BoT3, set_mhsa_path

__all__ = ["bench_cases", "LEVEL_SHAPES"]

# level -> (B, C, H, W) of yolov8n's P3/P4/P5 maps at 640, batch 2
LEVEL_SHAPES = {5: (2, 256, 20, 20), 4: (2, 128, 40, 40), 3: (2, 64, 80, 80)}


def bench_cases() -> list[dict]:
    """Rows for the block benchmark: ``{"name", "make", "shape"}`` (``make()`` builds a fresh module)."""
    cases = []
    for level, shape in LEVEL_SHAPES.items():
        _, c, h, w = shape
        tag = f"P{level} {h}x{w} c={c}"
        auto = MHSA(c, c).resolve_path(h, w)
        others = [(p, p) for p in ("keyaug", "bias") if p != auto]
        for label, path in ((f"fast ({auto})", "auto"), *others, ("twin", "reference")):
            cases.append(
                {"name": f"MHSA {tag} {label}", "make": lambda c=c, p=path: MHSA(c, c, path=p), "shape": shape}
            )
        for label, path in (("fast", "auto"), ("twin", "reference")):
            cases.append(
                {
                    "name": f"BoT3 {tag} {label}",
                    "make": lambda c=c, p=path: set_mhsa_path(BoT3(c, c), p),
                    "shape": shape,
                }
            )
    return cases
