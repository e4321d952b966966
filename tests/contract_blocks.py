"""Test-only blocks that exercise the registration contract, and a harmful one for the search (not part of the package).

Imported by child processes through ``YOLO_ATTN_PLUGINS=contract_blocks`` (tests/ is on PYTHONPATH there).
"""

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from yolo_attn.registry import register_block


@register_block(role="insert")
class ContractScale(nn.Module):
    """Channel-preserving block: identity plus a zero-initialised 1x1 branch (projects first when c1 != c2)."""

    def __init__(self, c1: int, c2: int, gain: float = 1.0):
        super().__init__()
        if gain <= 0:
            raise ValueError(f"ContractScale: gain must be > 0, got {gain}")
        self.c1, self.c2, self.gain = c1, c2, gain
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.branch = nn.Conv2d(c2, c2, 1)
        nn.init.zeros_(self.branch.weight)
        nn.init.zeros_(self.branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x + self.gain * self.branch(x)


@register_block(repeats=True, role="csp")
class ContractCSP(nn.Module):
    """CSP-style block with repeats: two 1x1 branches, n 3x3 convs on one, concat, 1x1."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        if not 0 < e <= 1:
            raise ValueError(f"ContractCSP: expansion e must be in (0, 1], got {e}")
        c_ = max(int(c2 * e), 1)
        self.c1, self.c2, self.n = c1, c2, n
        self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(c1, c_, 1)
        self.m = nn.Sequential(*(Conv(c_, c_, 3) for _ in range(n)))
        self.cv3 = Conv(2 * c_, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register_block(role="insert")
class WipeHalf(nn.Module):
    """A harmful block on purpose (the planted candidate of the search tests): zeroes the first half of its channels."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.register_buffer("keep", (torch.arange(c2) >= c2 // 2).float().view(1, c2, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.keep
