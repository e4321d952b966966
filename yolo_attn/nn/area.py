"""Area attention: YOLO12's ``A2C2f`` / ``ABlock`` / ``AAttn`` from Ultralytics (>= 8.3.78) as a comparator family.

Not ours: the modules are Ultralytics' own (AGPL-3.0), imported from the installed Ultralytics through
:mod:`yolo_attn._compat` and used unchanged. Paper: Tian, Ye, Doermann, "YOLOv12: Attention-Centric Real-Time Object
Detectors" (arXiv 2502.12524), Section 3.2: the token sequence (row-major) is cut into ``area`` equal segments and
attention runs within each, so the cost is ``1 / area`` of global attention; a 7x7 depthwise convolution on the values
is the position term. YOLO12 uses ``area = 4`` at P4 and ``1`` (global) at P5. With an older Ultralytics the family is
registered unavailable (``yolo-attn info`` says what it needs) and nothing else changes.

What the wrappers add, and only that:

- Row semantics ``(c1, c2, n, e, level, area, mlp_ratio)``: a 1x1 ``Conv`` projects ``c1 -> c2`` first when they
  differ; ``n`` A2C2f units (two ABlocks each, as in YOLO12); attention width ``int(c2 * e)``, a multiple of 32
  (A2C2f's head width: one head per 32 channels). ``area`` ``None`` follows YOLO12 by pyramid level: 4 below P5, 1
  at P5 (the YAML editor fills ``level`` per row).
- Any input size: ``AAttn`` needs the token count ``H * W`` divisible by ``area`` (YOLO12 itself fails otherwise).
  Each call uses the largest ``a <= area`` that divides it, which is ``area`` for every size YOLO12 runs at (inputs
  are multiples of 32) and fewer, longer segments on odd maps. Exported graphs use ``area`` as YOLO12's do.
- Identity at insertion (:class:`AreaResidual`): ``y = x + gamma * A2C2f(x)``, ``gamma`` per channel and zero at
  initialisation: Ultralytics' module stays exactly as built and initialised, and this is A2C2f's own
  ``residual=True`` form (its gamma starts at 0.01) started at 0 (see :mod:`yolo_attn.nn.psa`).
- fp16 safety: ``AAttn`` forms ``(q * scale)^T k`` in the input's dtype (fp16 overflows for large activations); the
  wrapped module runs in fp32 when the input is fp16 or fp16 autocast is on (:func:`~yolo_attn.nn.common.fp16_safe`).

Examples:
    >>> import torch
    >>> from yolo_attn.nn.area import AreaResidual
    >>> m = AreaResidual(64, 64, level=4).eval()  # 4 areas, as YOLO12 at P4
    >>> x = torch.randn(1, 64, 8, 12)
    >>> torch.equal(m(x), x)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_attn import _compat
from yolo_attn._compat import Conv
from yolo_attn.nn.attention import is_exporting
from yolo_attn.nn.common import check_channels, check_int, check_number, fp16_safe, hidden_width
from yolo_attn.registry import register_block

__all__ = ["AreaResidual", "AreaCSP", "area_for"]

AVAILABLE = _compat.provides("A2C2f", "AAttn")
_SPEC = {
    "origin": f"Ultralytics {_compat.version()} A2C2f / ABlock / AAttn (YOLO12 area attention)",
    "available": AVAILABLE,
    "requires": f"ultralytics>={_compat.OPTIONAL_NAMES['A2C2f'][1]}",
    "takes_level": True,
    "bench_levels": (5, 4, 3),
    "repeats": True,
    "family": "area",
}


def area_for(tokens: int, area: int) -> int:
    """The largest ``a <= area`` dividing ``tokens``: the segments ``AAttn`` can cut this map into.

    Examples:
        >>> area_for(80 * 80, 4), area_for(13 * 17, 4), area_for(10 * 15, 4)
        (4, 1, 3)
    """
    a = max(1, min(area, tokens))
    while tokens % a:
        a -= 1
    return a


class _AreaBase(nn.Module):
    def _build(self, block: str, c1: int, c2: int, n: int, e: float, level: int, area: int | None, mlp_ratio: float):
        check_channels(block, c1, c2)
        check_int(block, "n", n)
        check_int(block, "level", level, 1, " (the pyramid level: 3 for P3 ...)")
        c_ = hidden_width(block, c2, e)
        if c_ % 32:
            raise ValueError(
                f"{block}: attention width int(c2 * e) = int({c2} * {e}) = {c_} must be a multiple of 32 (YOLO12's "
                "A2C2f uses one head per 32 channels); choose e or c2 accordingly"
            )
        self.area = check_int(block, "area", (4 if level < 5 else 1) if area is None else area)
        check_number(block, "mlp_ratio", mlp_ratio, 0.0, low_open=True)
        if int(c_ * mlp_ratio) < 1:
            raise ValueError(f"{block}: mlp_ratio={mlp_ratio} gives an MLP of 0 channels; use a larger one")
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.m = _compat.A2C2f(c2, c2, n, True, self.area, False, mlp_ratio, e)

    def extra_repr(self) -> str:
        return f"area={self.area}"

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        # an exported graph cuts the map into `area` segments as YOLO12's does (sizes stay symbolic, no size loop)
        a = self.area if is_exporting() else area_for(x.shape[2] * x.shape[3], self.area)
        for mod in self.m.modules():  # AAttn reads its area on every call
            if isinstance(mod, _compat.AAttn):
                mod.area = a
        return fp16_safe(self.m, x)


@register_block(role="insert", **_SPEC)
class AreaResidual(_AreaBase):
    """YOLO12's ``A2C2f`` (``n`` x two area-attention ``ABlock``) in a residual that starts as the identity.

    ``y = p + gamma * A2C2f(p)``, ``p = Conv1x1(x)`` when ``c1 != c2`` else ``x``, ``gamma`` per channel, zero at
    initialisation. YAML: ``[-1, 1, AreaResidual, [c2, e, level, area, mlp_ratio]]`` (the editor fills ``level``).

    Args:
        c1: Input channels.
        c2: Output channels.
        n: A2C2f units of two ABlocks each.
        e: Attention width as a fraction of ``c2``; ``int(c2 * e)`` must be a multiple of 32.
        level: Pyramid level of the row (3 for P3...), which sets the default ``area``.
        area: Segments the token sequence is cut into; ``None``: 4 below P5, 1 at P5 (YOLO12).
        mlp_ratio: Hidden width of each ABlock's MLP as a multiple of the attention width (A2C2f: 2.0).

    Examples:
        >>> AreaResidual(64, 128, level=3)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 128, 8, 8])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        level: int = 5,
        area: int | None = None,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        self._build("AreaResidual", c1, c2, n, e, level, area, mlp_ratio)
        self.gamma = nn.Parameter(torch.zeros(c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x + self.gamma.view(1, -1, 1, 1) * self._attend(x)


@register_block(role="csp", **_SPEC)
class AreaCSP(_AreaBase):
    """YOLO12's ``A2C2f`` (area attention) as a CSP block; a 1x1 ``Conv`` projects ``c1 -> c2`` first when they differ.

    YAML: ``[-1, n, AreaCSP, [c2, e, level, area, mlp_ratio]]``. Arguments as :class:`AreaResidual`.

    Examples:
        >>> AreaCSP(64, 128, n=2, level=5)(torch.randn(2, 64, 5, 7)).shape
        torch.Size([2, 128, 5, 7])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        level: int = 5,
        area: int | None = None,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        self._build("AreaCSP", c1, c2, n, e, level, area, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(self.proj(x))
