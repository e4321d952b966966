"""A fourth block family, "toy", from one file outside the package: all a user writes to add a family.

Importing it registers an insert block and a CSP block; ``YOLO_ATTN_PLUGINS=toy_family`` makes the CLI and worker
processes import it (tests/ is on PYTHONPATH there). Nothing in yolo_attn names this family: insertion, generation,
ablation, benchmarks and the report learn it from the registry. Tiny on purpose (tests train it): plain convolutions.
"""

import torch
from torch import nn

from yolo_attn.registry import register_block

__all__ = ["ToyMix", "ToyCSP"]


@register_block(repeats=True, family="toy", role="insert", takes_level=True, bench_levels=(5, 3))
class ToyMix(nn.Module):
    """``x`` plus a zero-initialised depthwise branch (the identity at init when ``c1 == c2``).

    ``level`` comes after ``k`` on purpose: the YAML editor must put each row's pyramid level at the ``level``
    parameter's place, not first. The kernel grows on coarse levels, as an attention window would.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, k: int = 3, level: int = 5):
        super().__init__()
        if level not in (3, 4, 5):
            raise ValueError(f"ToyMix: level must be 3, 4 or 5, got {level}")
        self.level, k = level, k + 2 * (level - 3)
        self.proj = nn.Conv2d(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.mix = nn.Sequential(*(nn.Conv2d(c2, c2, k, padding=k // 2, groups=c2) for _ in range(n)))
        self.out = nn.Conv2d(c2, c2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x + self.out(self.mix(x))


@register_block(repeats=True, family="toy", role="csp", bench_levels=(5,))
class ToyCSP(nn.Module):
    """CSP layout around ``n`` ToyMix blocks: replaces a C2f / C3k2."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        c_ = max(int(c2 * e), 1)
        self.cv1, self.cv2 = nn.Conv2d(c1, c_, 1), nn.Conv2d(c1, c_, 1)
        self.m = ToyMix(c_, c_, n)
        self.cv3 = nn.Conv2d(2 * c_, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))
