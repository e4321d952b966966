"""Intervals and verdicts: the Student-t interval over training seeds, the verdict, and equivalence within a margin.

- :class:`Interval` (a percentile interval over image resamples, from :mod:`yolo_attn.stats.bootstrap`) and
  :class:`SeedInterval` (:func:`seed_interval`: mean and Student-t interval of same-seed differences, with a
  hand-written :func:`t_quantile` so the statistics need numpy only).
- :func:`verdict`: "better", "worse" or "no detectable difference": the image interval and, from three seeds on, the
  seed interval must both exclude zero on the same side. Given a ``margin``, it also says whether the difference is
  "equivalent" (both intervals inside ``[-margin, +margin]``) or "not worse" (both above ``-margin``).

Examples:
    >>> from yolo_attn.stats import Interval, verdict
    >>> v = verdict(Interval(-0.002, 0.003), margin=0.005)
    >>> v.label, v.equivalence, v.equivalence_text
    ('no detectable difference', 'equivalent', 'equivalent within ±0.005')
    >>> verdict(Interval(-0.004, 0.02), margin=0.005).equivalence_text
    'not worse than −0.005'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "Equivalence",
    "Interval",
    "Label",
    "SeedInterval",
    "Verdict",
    "seed_interval",
    "t_quantile",
    "verdict",
]

Label = Literal["better", "worse", "no detectable difference"]
Equivalence = Literal["equivalent", "not worse"]


# ------------------------------------------------------------------------------------------------------ intervals
class _Bounds:
    """What an interval with ``low`` and ``high`` says about a difference (shared by both interval types)."""

    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width: differences much smaller than this are beyond what the data resolves."""
        return (self.high - self.low) / 2

    @property
    def side(self) -> int:
        """+1 when the interval lies above zero, -1 below, 0 when it contains zero."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


@dataclass(frozen=True)
class Interval(_Bounds):
    """A two-sided interval at confidence ``level``."""

    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        """Plain floats, for a JSON record."""
        return {"low": float(self.low), "high": float(self.high), "level": float(self.level)}


@dataclass(frozen=True)
class SeedInterval(_Bounds):
    """Mean and Student-t interval of paired (same-seed) differences.

    Attributes:
        mean: mean difference.
        std: sample standard deviation (n - 1 in the denominator).
        n: number of seeds.
        low: lower end of the interval.
        high: upper end of the interval.
        level: confidence level.
    """

    mean: float
    std: float
    n: int
    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        """Plain values, for a JSON record."""
        return {k: float(getattr(self, k)) for k in ("mean", "std", "low", "high", "level")} | {"n": self.n}


@dataclass(frozen=True)
class Verdict:
    """Whether a variant is better than its baseline, with the evidence it rests on.

    Attributes:
        label: "better", "worse" or "no detectable difference".
        note: what limits the verdict (e.g. training noise not measured with fewer than 3 seeds), or None.
        image_interval: interval of the difference over image resamples.
        seed_interval: interval of the difference over seeds, when there were at least 3.
        margin: the equivalence margin asked for (a difference in the metric's units), or None.
        equivalence: with a margin: "equivalent" when every interval the verdict uses lies inside
            ``[-margin, +margin]``, "not worse" when they all lie at or above ``-margin`` but not all inside; else None.
    """

    label: Label
    note: str | None
    image_interval: Interval
    seed_interval: SeedInterval | None = None
    margin: float | None = None
    equivalence: Equivalence | None = None

    def __str__(self) -> str:
        return f"{self.label} ({self.note})" if self.note else self.label

    @property
    def equivalence_text(self) -> str | None:
        """One line for the equivalence call ("equivalent within ±0.005", "not worse than −0.005"), or None."""
        if self.margin is None or self.equivalence is None:
            return None
        if self.equivalence == "equivalent":
            return f"equivalent within ±{self.margin:g}"
        return f"not worse than \u2212{self.margin:g}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a JSON record."""
        return {
            "label": self.label,
            "note": self.note,
            "image_interval": self.image_interval.to_dict(),
            "seed_interval": self.seed_interval.to_dict() if self.seed_interval else None,
            "margin": self.margin,
            "equivalence": self.equivalence,
        }


# ------------------------------------------------------------------------------------------------ seeds, verdict
def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz), x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - _betainc(b, a, 1.0 - x)
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(ln_front) * f / a


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (what ``scipy.stats.t.ppf(p, df)`` returns).

    Args:
        p: probability in (0, 1).
        df: degrees of freedom, > 0.

    Returns:
        t with P(T <= t) = p, to about 1e-12 relative.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df == 1:  # Cauchy
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):  # bisection: slow but sure, the CDF is monotone
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * hi:
            break
    return (lo + hi) / 2


def seed_interval(deltas: Sequence[float], ci: float = 0.95) -> SeedInterval:
    """Mean and Student-t interval of same-seed differences (variant minus baseline, one per seed).

    Args:
        deltas: one difference per seed; at least 2.
        ci: confidence level.

    Returns:
        The mean, sample standard deviation and t-interval.
    """
    d = np.asarray(deltas, dtype=np.float64).reshape(-1)
    if len(d) < 2:
        raise ValueError(f"a seed interval needs at least 2 paired differences, got {len(d)}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"deltas must be finite, got {d.tolist()}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile((1 + ci) / 2, len(d) - 1) * std / math.sqrt(len(d))
    return SeedInterval(mean, std, len(d), mean - half, mean + half, ci)


def verdict(
    image_ci: Any, seed_ci: SeedInterval | None = None, n_seeds: int = 1, *, margin: float | None = None
) -> Verdict:
    """Call a variant "better", "worse" or "no detectable difference" than its baseline.

    Both sources of noise must agree: the image interval (from :func:`~yolo_attn.stats.paired_bootstrap`) and, with 3
    or more seeds, the seed interval (from :func:`seed_interval`) must both exclude zero on the same side. With fewer
    seeds the verdict rests on the images alone and says so in its note.

    With a ``margin``, the verdict also says whether the difference is small enough not to matter: "equivalent" when
    the image interval and (from 3 seeds on) the seed interval both lie inside ``[-margin, +margin]``, "not worse"
    when both lie at or above ``-margin`` (and not both inside). ``label`` does not depend on the margin.

    Args:
        image_ci: the difference's interval over image resamples, an :class:`Interval` (or the
            :class:`~yolo_attn.stats.MetricComparison` holding it as ``interval``).
        seed_ci: the difference's interval over seeds; needed when ``n_seeds >= 3``.
        n_seeds: number of same-seed pairs behind the comparison.
        margin: the difference that does not matter to the user, > 0, in the metric's units (None: no equivalence).

    Returns:
        The verdict with its note and the intervals it used.
    """
    iv = image_ci if isinstance(image_ci, Interval) else getattr(image_ci, "interval", None)
    if not isinstance(iv, Interval):
        raise ValueError(f"image_ci must be an Interval or a MetricComparison, got {type(image_ci).__name__}")
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number (a difference in the metric's units), got {margin}")
    labels: dict[int, Label] = {1: "better", -1: "worse", 0: "no detectable difference"}
    if n_seeds < 3:
        note = f"training noise not measured ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
        return Verdict(labels[iv.side], note, iv, None, margin, _equivalence([iv], margin))
    if seed_ci is None:
        raise ValueError(f"with n_seeds={n_seeds} (>= 3) the seed interval is needed: pass seed_ci=seed_interval(...)")
    if seed_ci.n != n_seeds:
        raise ValueError(f"seed_ci was computed from {seed_ci.n} seeds but n_seeds={n_seeds}")
    eq = _equivalence([iv, seed_ci], margin)
    if iv.side == seed_ci.side:
        return Verdict(labels[iv.side], None, iv, seed_ci, margin, eq)
    which = "image" if iv.side else "seed"
    note = f"only the {which} interval excludes zero" if iv.side * seed_ci.side == 0 else "the intervals disagree"
    return Verdict("no detectable difference", note, iv, seed_ci, margin, eq)


def _equivalence(intervals: list[_Bounds], margin: float | None) -> Equivalence | None:
    if margin is None:
        return None
    if all(-margin <= i.low and i.high <= margin for i in intervals):
        return "equivalent"
    if all(i.low >= -margin for i in intervals):
        return "not worse"
    return None
