"""PSA: Ultralytics' position-sensitive attention (YOLOv10's PSA, YOLO11's C2PSA) as a comparator family.

Not ours: the modules are Ultralytics' own ``C2PSA`` / ``PSABlock`` / ``Attention`` (AGPL-3.0), imported from the
installed Ultralytics through :mod:`yolo_attn._compat` and used unchanged. Papers: Wang et al., "YOLOv10: Real-Time
End-to-End Object Detection", NeurIPS 2024 (arXiv 2405.14458), Section 4.2 ("partial self-attention"); YOLO11 stacks
the same block as C2PSA. The family exists so that ``yolo-attn ablate --blocks bot dat psa`` can ask whether a block
of ours beats the attention Ultralytics already ships, placed at the same row and trained the same way.

What the wrappers add, and only that:

- Row semantics ``(c1, c2, n, e, num_heads, attn_ratio)``: a 1x1 ``Conv`` projects ``c1 -> c2`` first when they
  differ (``C2PSA`` asserts ``c1 == c2``); ``n`` PSA blocks; the attention runs on ``int(c2 * e)`` channels (C2PSA's
  split); ``num_heads`` default ``None`` is Ultralytics 8.4's rule (one head per 64 channels, at least one; 8.3.65
  gives none below 64 channels and fails), a number sets it; the blocks are Ultralytics' ``PSABlock`` either way.
- Identity at insertion (:class:`PSAResidual`): ``y = x + gamma * C2PSA(x)`` with a per-channel ``gamma`` that
  starts at zero. A zero-initialised scale of our own rather than zeroing the last BN of Ultralytics' branch: the
  module stays exactly as Ultralytics builds and initialises it (same parameters, same init, same state-dict keys
  under ``m.``), and nothing depends on which ``Conv`` ends the branch in a given Ultralytics version. YOLO12's own
  ``A2C2f(residual=True)`` scales its branch the same way (it starts at 0.01).
- fp16 safety: Ultralytics' ``Attention`` forms ``(q * scale)^T k`` in the input's dtype, which overflows fp16 for
  large activations; the wrapped module runs in fp32 whenever the input is fp16 or fp16 autocast is on
  (:func:`~yolo_attn.nn.common.fp16_safe`). Cost: under fp16 AMP the comparator's attention runs at fp32 speed; bf16
  and fp32 run as given.
- Export needs nothing more: the modules are plain convolutions, matmuls and a softmax (ONNX, OpenVINO, TorchScript).

With ``n = 1`` ``C2PSA`` has the layers of YOLOv10's ``PSA`` module (``cv1``, split, one attention + FFN, ``cv2``);
C2PSA is what YOLO11 and YOLO26 carry before their head.

Examples:
    >>> import torch
    >>> from yolo_attn.nn.psa import PSAResidual
    >>> m = PSAResidual(128, 128).eval()
    >>> x = torch.randn(1, 128, 6, 10)
    >>> torch.equal(m(x), x)  # identity until training moves gamma
    True
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_attn import _compat
from yolo_attn._compat import Conv
from yolo_attn.nn.common import check_channels, check_int, check_number, fp16_safe, hidden_width, resolve_heads
from yolo_attn.registry import register_block

__all__ = ["PSAResidual", "PSACSP"]

_ORIGIN = f"Ultralytics {_compat.version()} C2PSA / PSABlock / Attention (YOLOv10 PSA, YOLO11 C2PSA)"


def _c2psa(block: str, c: int, n: int, e: float, num_heads: int | None, attn_ratio: float) -> nn.Module:
    """Ultralytics' ``C2PSA(c, c, n, e)``; with ``num_heads`` its blocks are Ultralytics' ``PSABlock`` at that count."""
    check_int(block, "n", n)
    c_ = hidden_width(block, c, e)
    check_number(block, "attn_ratio", attn_ratio, 0.0, 1.0, low_open=True, high_open=False)
    heads = max(c_ // 64, 1) if num_heads is None else num_heads
    _, head_dim = resolve_heads(block, c_, num_heads=heads, what=f"int(c2 * e) = int({c} * {e})")
    if int(head_dim * attn_ratio) < 1:
        raise ValueError(
            f"{block}: key width int(head_dim * attn_ratio) = int({head_dim} * {attn_ratio}) = 0; use fewer heads, a "
            "larger attn_ratio or a larger e"
        )
    # C2PSA fixes heads and attn_ratio (8.3.65: c_ // 64 heads, none below 64 channels), so it is built empty and
    # given its n blocks, Ultralytics' PSABlock, with ours (default: 8.4's max(c_ // 64, 1) and 0.5, i.e. C2PSA's)
    m = _compat.C2PSA(c, c, 0, e)
    m.m = nn.Sequential(*(_compat.PSABlock(c_, attn_ratio=attn_ratio, num_heads=heads) for _ in range(n)))
    return m


@register_block(repeats=True, family="psa", role="insert", bench_levels=(5, 4, 3), origin=_ORIGIN)
class PSAResidual(nn.Module):
    """Ultralytics' ``C2PSA`` (``n`` PSA blocks) in a residual that starts as the identity, to insert anywhere.

    ``y = p + gamma * C2PSA(p)``, ``p = Conv1x1(x)`` when ``c1 != c2`` else ``x``, ``gamma`` per channel, zero at
    initialisation. YAML: ``[-1, 1, PSAResidual, [c2, n, e, num_heads, attn_ratio]]`` (extras optional). Global
    attention, O((H W)^2): P5, or P4 at most.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: PSA blocks.
        e: Attention width as a fraction of ``c2`` (C2PSA's split).
        num_heads: Heads; ``None``: Ultralytics' ``max(int(c2 * e) // 64, 1)``.
        attn_ratio: Query/key width per head as a fraction of the head width (Ultralytics: 0.5).

    Examples:
        >>> PSAResidual(64, 128, n=2)(torch.randn(2, 64, 5, 7)).shape
        torch.Size([2, 128, 5, 7])
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, e: float = 0.5, num_heads: int | None = None, attn_ratio: float = 0.5
    ):
        super().__init__()
        check_channels("PSAResidual", c1, c2)
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.m = _c2psa("PSAResidual", c2, n, e, num_heads, attn_ratio)
        self.gamma = nn.Parameter(torch.zeros(c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x + self.gamma.view(1, -1, 1, 1) * fp16_safe(self.m, x)


@register_block(repeats=True, family="psa", role="csp", bench_levels=(5, 4, 3), origin=_ORIGIN)
class PSACSP(nn.Module):
    """Ultralytics' ``C2PSA`` as a CSP block (the ``backbone`` position replaces the last backbone CSP block with it).

    A 1x1 ``Conv`` projects ``c1 -> c2`` first when they differ. YAML: ``[-1, n, PSACSP, [c2, e, num_heads,
    attn_ratio]]`` (extras optional).

    Args:
        c1: Input channels.
        c2: Output channels.
        n: PSA blocks.
        e: Attention width as a fraction of ``c2``.
        num_heads: Heads; ``None``: Ultralytics' ``max(int(c2 * e) // 64, 1)``.
        attn_ratio: Query/key width per head as a fraction of the head width.

    Examples:
        >>> PSACSP(64, 128, n=2)(torch.randn(2, 64, 5, 7)).shape
        torch.Size([2, 128, 5, 7])
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, e: float = 0.5, num_heads: int | None = None, attn_ratio: float = 0.5
    ):
        super().__init__()
        check_channels("PSACSP", c1, c2)
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.m = _c2psa("PSACSP", c2, n, e, num_heads, attn_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp16_safe(self.m, self.proj(x))
