"""The weighted-AP engine: mAP exactly as Ultralytics computes it, under many image weightings at once, per size stratum.

- :func:`map_scores`: mAP50 and mAP50-95 (and per-class AP) exactly as Ultralytics' ``ap_per_class`` computes them,
  optionally with a multiplicity per image, i.e. on a bootstrap resample of the images without copying anything,
  and optionally for one COCO size stratum (``stratum="small" | "medium" | "large"``).
- :func:`resampled_scores`: the same for many weightings (one row each).

list accumulating TP and FP counts, and integrates the precision envelope at 101 recall points with ``np.interp``. A
resample with image multiplicities ``w`` repeats each prediction ``w`` times in place. Rather than building that list,
the predictions are sorted once (Ultralytics' own ``np.argsort(-conf)``, then grouped by class keeping that order,
so ties fall exactly as in Ultralytics), and per resample only weighted running sums are taken: total weight up to
each prediction that is a TP at some threshold, weighted TP counts per class and threshold, weighted targets. On the
repeated list, recall moves in steps of ``1/n``; the precision envelope is constant over the ``w`` copies of one TP,
and the FPs between two TPs matter only through their total weight. So the curve ``np.interp`` draws is fixed, level
by level, by the block of copies that reaches the level: the block's envelope (a suffix maximum over blocks) and the
precision just before it. Each block that holds grid points adds their share of the trapezoid sum in closed form
(running sums of the trapezoid weights). Recall and precision are the integer ratios Ultralytics divides, and each
grid point's level comes from the float comparisons ``np.interp`` makes, so weights of one reproduce
``ap_per_class`` to ~1e-13 (summation order), and integer weights reproduce the physically repeated data whenever the
copies of a prediction end up next to each other in the sort (always, unless other predictions tie with it in
confidence; then the result lies between the orders of that tie).

Size strata follow COCOeval's area ranges (:data:`AREA_RANGES`: small below 32², medium from 32² to below 96², large
from 96²) applied to the matches Ultralytics made: a target outside the range is ignored (not counted); a prediction
that is a true positive at a threshold is ignored there when the target it matched is outside the range; a prediction
that matched nothing at a threshold is ignored there when its own box is outside the range (COCOeval ignores
unmatched detections outside the area range). A class without targets in the stratum leaves that stratum's mean, as
in COCOeval (-1 there). Areas are box areas ``w * h`` in original image pixels (COCO counts the annotation's area, a
mask's for its own data; YOLO labels are boxes, so the box area stands in). COCOeval's ranges are closed at both ends
(a box of exactly 32² counts as small and as medium); here they are half-open, so every box has one stratum. The
stratum engine is the same engine: ignored predictions are dropped from its running totals once, at construction,
and a correction per (class, threshold) list adds back the true positives whose own box lies outside the range and
removes the ones whose target does; nothing is rebuilt per resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from yolo_attn.stats.matches import Matches

__all__ = ["AREA_RANGES", "STRATA", "MapScores", "ResampledScores", "map_scores", "resampled_scores"]

STRATA = ("small", "medium", "large")
#: Stratum -> [low, high) box area in original image pixels (COCOeval's areaRng; "all" is every box).
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, math.inf),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}
_EPS = 1e-16  # Ultralytics' eps in recall = tpc / (n_l + eps); it vanishes in float64 for n_l >= 1, as there
_GRID = np.linspace(0.0, 1.0, 101)  # Ultralytics' 101-point COCO recall grid, same construction so same floats
# np.trapezoid(y, _GRID) == sum(y * _TRAPZ); the last grid point (recall 1) always interpolates to precision 0
_TRAPZ = np.zeros(101)
_TRAPZ[:-1] += np.diff(_GRID) / 2
_TRAPZ[1:] += np.diff(_GRID) / 2
# running sums of the weights (and weights * x) over grid points 0 .. k-1: piecewise-linear integrands in closed form
_CUM = np.concatenate([[0.0], np.cumsum(_TRAPZ[:100])])
_CUM_X = np.concatenate([[0.0], np.cumsum((_TRAPZ * _GRID)[:100])])
_MAX_BATCH = 64  # most weightings per pass


@dataclass(frozen=True, eq=False)
class MapScores:
    """mAP of one (possibly weighted) validation set, as Ultralytics reports it.

    Attributes:
        map50: mean over classes of AP at IoU 0.5.
        map50_95: mean over classes and the IoU thresholds.
        classes: (C,) class ids that have targets (Ultralytics' ``ap_class_index``).
        ap: (C, T) AP per class and IoU threshold.
    """

    map50: float
    map50_95: float
    classes: np.ndarray
    ap: np.ndarray

    @property
    def ap50(self) -> np.ndarray:
        """(C,) AP at IoU 0.5 per class."""
        return self.ap[:, 0]

    @property
    def ap50_95(self) -> np.ndarray:
        """(C,) AP averaged over the IoU thresholds, per class."""
        return self.ap.mean(1)


@dataclass(frozen=True, eq=False)
class ResampledScores:
    """Scores of one model under B image weightings (one row each).

    Attributes:
        map50: (B,) mAP50 per weighting.
        map50_95: (B,) mAP50-95 per weighting.
        classes: (C,) class ids with targets in the full set.
        ap: (B, C, T) AP per class and threshold; NaN where a weighting leaves a class without targets
            (Ultralytics would not list that class, so it is not in that weighting's mean).
    """

    map50: np.ndarray
    map50_95: np.ndarray
    classes: np.ndarray
    ap: np.ndarray


# ---------------------------------------------------------------------------------------------------- engine
class _ClassSums:
    """Weighted per-class sums of per-image counts: (class, image, count) triples, summed per weighting."""

    def __init__(self, cls: np.ndarray, image: np.ndarray, n_classes: int, n_images: int):
        pair, cnt = np.unique(cls.astype(np.int64) * n_images + image, return_counts=True)  # sorted by class
        self.image = (pair % n_images).astype(np.intp)
        self.count = cnt.astype(np.int32)
        # columns of the zero-padded running sum: before the first triple, then after each class's last one
        self.ends = np.concatenate([[0], np.searchsorted(pair // n_images, np.arange(n_classes), side="right")])

    def __call__(self, W: np.ndarray) -> np.ndarray:
        """(B, C) sums for weights W (B, n_images)."""
        cs = np.zeros((W.shape[0], len(self.image) + 1), np.int64)
        np.cumsum(np.take(W, self.image, axis=1) * self.count, axis=1, out=cs[:, 1:])
        return np.diff(np.take(cs, self.ends, axis=1), axis=1)


class _Engine:
    """One model's matches, sorted once, scored under many image weightings.

    Vocabulary: predictions are sorted by class, then as Ultralytics orders them. A *key* is a prediction that is a
    TP at some threshold; an *entry* is a (key, threshold) pair where it is a TP; a *segment* is one (class,
    threshold) list of entries. Only keys move recall, so the other predictions count through running totals, and
    those after a class's last key only through the class total (for the "interpolate" tail). Arrays per weighting
    are laid out (B, ...) so that running sums run along contiguous memory.
    """

    def __init__(self, m: Matches, stratum: str | None = None):
        self.n_images = m.n_images
        self.tail = m.ap_tail
        self.classes = np.unique(m.target_cls)  # in a stratum too: a class without targets there scores NaN
        C, T = len(self.classes), m.tp.shape[1]
        self.C, self.T = C, T
        t_ci = np.searchsorted(self.classes, m.target_cls)
        t_in = np.ones(len(t_ci), bool) if stratum is None else _in_range(m, stratum, "target_area")
        self.n_targets = np.bincount(t_ci[t_in], minlength=C)
        self.targets = _ClassSums(t_ci[t_in], m.target_image[t_in], C, m.n_images)
        self.pred_per_image = np.bincount(m.image, minlength=m.n_images).astype(np.int64)

        # Ultralytics' order (same call on the same float32 array, so ties fall the same way), then by class.
        order = np.argsort(-m.conf)
        ci = np.searchsorted(self.classes, m.cls)
        known = np.zeros(len(ci), bool)
        if C:
            known = (ci < C) & (self.classes[np.minimum(ci, C - 1)] == m.cls)
        order = order[known[order]]  # predictions of classes without targets never enter the mean
        order = order[np.argsort(ci[order], kind="stable")]
        img, pci, ptp = m.image[order], ci[order], m.tp[order]
        # A stratum counts a prediction in the running totals when its own box is in range (`own`) and takes as TPs
        # the entries whose matched target is (`hit`); the TP entries where the two disagree are corrected below.
        if stratum is None:
            own, hit = np.ones(len(pci), bool), ptp
        else:
            own = _in_range(m, stratum, "pred_area")[order]
            hit = ptp & t_in[np.maximum(m.matched_target[order], 0)]
        self.totals = _ClassSums(pci[own], img[own], C, m.n_images)  # every counted prediction of each class

        # Running total weight up to each key, class by class: predictions after a class's last key are dropped.
        key_pos = np.flatnonzero(hit.any(1))
        key_ci = pci[key_pos]
        self.K = len(key_pos)
        bounds = np.searchsorted(pci, np.arange(C + 1))
        last = np.zeros(C, np.int64) - 1
        last[key_ci] = key_pos  # key positions ascend, so the last write is each class's last key
        kept = np.zeros(len(pci) + 1, np.int64)
        np.add.at(kept, bounds[:-1][last >= 0], 1)
        np.add.at(kept, last[last >= 0] + 1, -1)
        kept_pos = np.flatnonzero((np.cumsum(kept[:-1]) > 0) & own)
        self.p_image = img[kept_pos].astype(np.intp)
        self.k_at = np.searchsorted(kept_pos, key_pos, side="right")  # column through the key (if it is kept)
        self.k_from = np.searchsorted(kept_pos, bounds[key_ci])  # column just before the key's class starts
        self.k_image = img[key_pos].astype(np.intp)

        # Entries grouped by segment s = class * T + threshold, keys in order inside.
        k_idx, j_idx = np.nonzero(ptp[key_pos])
        seg = key_ci[k_idx].astype(np.int64) * T + j_idx
        e_order = np.argsort(seg, kind="stable")
        self.e_key, e_seg = k_idx[e_order].astype(np.intp), seg[e_order]
        self.M = len(self.e_key)
        S = C * T
        self.seg_start = np.searchsorted(e_seg, np.arange(S))
        self.seg_end = np.searchsorted(e_seg, np.arange(S), side="right")
        self.e_base = self.seg_start[e_seg]  # column in the zero-padded running TP sum

        # Stratum corrections, per segment in key order: +1 for a TP whose own box is out of range (counted, but not
        # in the running total), -1 for a prediction in the running total that is a TP of an out-of-range target
        # (ignored at that threshold). Each entry adds those up to its own position; the tail needs the whole sum.
        cp, cj = np.nonzero(ptp & (hit != own[:, None]))
        P1 = len(pci) + 1
        c_key = (pci[cp].astype(np.int64) * T + cj) * P1 + cp
        c_order = np.argsort(c_key, kind="stable")
        c_key = c_key[c_order]
        self.n_corr = len(c_key)
        self.c_image = img[cp[c_order]].astype(np.intp)
        self.c_sign = np.where(hit[cp, cj], 1, -1).astype(np.int32)[c_order]
        self.c_at = np.searchsorted(c_key, e_seg * P1 + key_pos[self.e_key], side="right")
        self.c_from = np.searchsorted(c_key, e_seg * P1)
        self.c_seg = np.searchsorted(c_key, np.arange(C * T + 1) * P1)  # segment s: columns c_seg[s] .. c_seg[s+1]
        self.e_seg, self.e_cls = e_seg, e_seg // T
        self.nonempty = self.seg_end > self.seg_start
        self.is_start = np.zeros(self.M, bool)
        self.is_start[self.seg_start[self.nonempty]] = True
        # Suffix maxima must not leak across segments: lift each segment above all later ones (precision <= 1).
        self.seg_off = 2.0 * (S - 1 - np.arange(S))
        self.e_off = self.seg_off[e_seg]
        # Weightings per pass: small data gains from wide passes (fewer numpy calls), large data from narrow ones
        # (a pass's per-entry arrays stay in cache): ~4 for COCO-sized sets (150k entries), 64 for tiny ones.
        self.batch_size = int(np.clip(600_000 // max(self.M, 1), 1, _MAX_BATCH))

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """AP per class and threshold, (B, C, T), for weights (B, n_images); NaN where a class has no targets."""
        if np.any(weights @ self.pred_per_image >= 2**31):
            raise ValueError("weights so large that weighted prediction counts overflow int32")
        W = np.ascontiguousarray(weights, dtype=np.int32)
        if self.C == 0:
            return np.zeros((len(W), 0, self.T))
        with np.errstate(divide="ignore", invalid="ignore"):  # the tail's slope where recall reaches 1: masked
            return self._scores(W)

    def _scores(self, W: np.ndarray) -> np.ndarray:
        B, C, T, M = W.shape[0], self.C, self.T, self.M
        S = C * T

        def take(
            a: np.ndarray, idx: np.ndarray
        ) -> np.ndarray:  # columns: np.take is several times faster than a[:, idx]
            return np.take(a, idx, axis=1)

        n = self.targets(W)  # (B, C) weighted targets
        n_eps = n + _EPS

        # Total weight up to and including each key, within its class.
        run = np.zeros((B, len(self.p_image) + 1), np.int32)
        np.cumsum(take(W, self.p_image), axis=1, dtype=np.int32, out=run[:, 1:])
        ca = take(run, self.k_at) - take(run, self.k_from)  # (B, K)
        wk = take(W, self.k_image)

        # Per entry: weight, running weight, weighted TPs through its block, precision at the block's end.
        we, cae = take(wk, self.e_key), take(ca, self.e_key)  # (B, M)
        corr = None
        if self.n_corr:  # a stratum: TPs counted or ignored against their own box's range
            corr = np.zeros((B, self.n_corr + 1), np.int32)
            np.cumsum(take(W, self.c_image) * self.c_sign, axis=1, dtype=np.int32, out=corr[:, 1:])
            cae = cae + take(corr, self.c_at) - take(corr, self.c_from)
        hi = np.zeros((B, M + 1), np.int32)
        np.cumsum(we, axis=1, dtype=np.int32, out=hi[:, 1:])
        hi = hi[:, 1:] - take(hi, self.e_base)
        q = hi / np.maximum(cae, 1)  # a weightless entry repeats the precision of the point before it: harmless
        q += self.e_off
        # Precision envelope of each block = suffix maximum within the segment; non-negative doubles order like
        # their bit patterns, and numpy's integer maximum.accumulate is several times faster than the float one.
        env = np.empty((B, M), np.int64)
        np.maximum.accumulate(q.view(np.int64)[:, ::-1], axis=1, out=env[:, ::-1])  # env stays contiguous
        env = env.view(np.float64)

        # Weighted TPs per segment: the highest recall level reached.
        t_seg = np.zeros((B, S), np.int64)
        t_seg[:, self.nonempty] = take(hi, self.seg_end[self.nonempty] - 1)

        # Level of grid point k: the smallest L with L / n > x_k, so x_k lies in [(L-1)/n, L/n).
        x = _GRID[:100]  # the value at recall 1 is always 0 (last sentinel)
        xn = x * n_eps[:, :, None]  # (B, C, 100)
        lev = np.floor(xn) + 1
        lev -= (lev - 1) / n_eps[:, :, None] > x
        lev += lev / n_eps[:, :, None] <= x
        # below[h]: grid points whose level is <= h, one small table per (weighting, class) for h = 0 .. n + 1
        # (a class without targets puts its levels, all 1, in its slot n + 1 = 1, which is never read).
        size = (n + 2).ravel()
        base = np.zeros(B * C, np.int64)
        np.cumsum(size[:-1], out=base[1:])
        cum = np.cumsum(np.bincount((base.reshape(B, C, 1) + lev.astype(np.int64)).ravel(), minlength=size.sum()))
        below = (cum - np.repeat(np.concatenate([[0], cum])[base], size)).astype(np.int8)  # 0..100: stays in cache
        base = base.reshape(B, C)  # intp: numpy gathers fastest with intp indices

        # Block e holds levels lo+1 .. hi, so it serves the grid points k in [below[lo], below[hi]): at those with
        # level lo+1, np.interp runs from the envelope just before the block, max(r, v), to the block's envelope v;
        # at the others it is flat at v. Only blocks that serve some grid point matter.
        cnt = np.take(below, take(base, self.e_cls) + hi)
        starts = self.seg_start[self.nonempty]
        serving = np.empty(cnt.shape, bool)
        np.greater(cnt[:, 1:], cnt[:, :-1], out=serving[:, 1:])
        serving[:, starts] = cnt[:, starts] > 0  # a segment's first entry follows nothing
        serve = np.flatnonzero(serving)
        sb, se = np.divmod(serve, M)
        seg_e, bc = self.e_seg[se], sb * C + self.e_cls[se]  # segment, (weighting, class)
        cnt = cnt.ravel()
        k0 = np.where(self.is_start[se], 0, cnt[serve - 1]).astype(np.intp)  # first grid point served
        k2 = cnt[serve].astype(np.intp)  # one past the last
        w_e = we.ravel()[serve]
        lo = hi.ravel()[serve] - w_e
        before = cae.ravel()[serve] - w_e  # weighted predictions before the block
        k1 = np.take(below, np.take(base, bc) + lo + 1).astype(np.intp)  # one past the last grid point at level lo+1
        v = env.ravel()[serve] - self.seg_off[seg_e]
        r = np.where(before > 0, lo / np.maximum(before, 1), 1.0)  # precision before the block; none: sentinel (0, 1)
        # sum over the served points of c_k * y_k, y_k = v + (max(r, v) - v) * (lo + 1 - x_k * n) on level lo+1
        first = (lo + 1) * (_CUM[k1] - _CUM[k0]) - n_eps.ravel()[bc] * (_CUM_X[k1] - _CUM_X[k0])
        part = v * (_CUM[k2] - _CUM[k0]) + np.maximum(r - v, 0.0) * first
        ap = np.bincount(sb * S + seg_e, part, minlength=B * S).astype(np.float64).reshape(B, S)
        n_valid = below[base[:, :, None] + t_seg.reshape(B, C, T)].reshape(B, S)  # grid points under the top recall

        # Past the highest recall: 0, or a line from the class's last point to (1, 0), integrated in closed form.
        if self.tail == "interpolate":
            total = np.repeat(self.totals(W), T, axis=1)  # (B, S)
            if corr is not None:
                total += np.diff(take(corr, self.c_seg), axis=1)
            end = np.where(total > 0, t_seg / total, 0.0)
            r_end = t_seg / np.repeat(n_eps, T, axis=1)
            slope = (0.0 - end) / (1.0 - r_end)
            c_sum, cx_sum = _CUM[100] - _CUM[n_valid], _CUM_X[100] - _CUM_X[n_valid]
            ap += np.where(n_valid < 100, end * c_sum + slope * (cx_sum - r_end * c_sum), 0.0)
        ap = ap.reshape(B, C, T)
        ap[np.broadcast_to((n == 0)[:, :, None], ap.shape)] = np.nan
        return ap


def _means(ap: np.ndarray, empty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """mAP50 and mAP50-95 per weighting from (..., C, T) AP, NaN for absent classes (``empty`` when none is)."""
    k = (~np.isnan(ap[..., 0])).sum(-1)
    a = np.where(np.isnan(ap), 0.0, ap)
    with np.errstate(invalid="ignore", divide="ignore"):
        m50 = np.where(k > 0, a[..., 0].sum(-1) / k, empty)
        m = np.where(k > 0, a.mean(-1).sum(-1) / k, empty)
    return m50, m


def _in_range(m: Matches, stratum: str, what: str) -> np.ndarray:
    """Which targets (``what="target_area"``) or predictions (``"pred_area"``) lie in the stratum's area range."""
    low, high = AREA_RANGES[stratum]
    area = getattr(m, what)
    return (area >= low) & (area < high)


def _check_stratum(m: Matches, stratum: str | None) -> None:
    if stratum is None:
        return
    if stratum not in AREA_RANGES:
        raise ValueError(f"stratum must be None or one of {', '.join(AREA_RANGES)}, got {stratum!r}")
    if not m.has_areas:
        raise ValueError(
            f"no areas in these matches, so no {stratum!r} stratum: they were saved as yolo_attn.matches/1 or "
            "captured without boxes; validate the run again with this version to get size strata"
        )


def _check_weights(weights: Any, n_images: int) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim not in (1, 2) or w.shape[-1] != n_images:
        raise ValueError(f"weights must be (n_images={n_images},) or (B, {n_images}), got shape {w.shape}")
    if w.size and not np.issubdtype(w.dtype, np.integer):
        if not np.all(np.isfinite(w)) or not np.all(w == np.round(w)):
            raise ValueError("weights must be whole multiplicities per image (a resample repeats images)")
    if w.size and w.min() < 0:
        raise ValueError(f"weights must be >= 0, got {w.min()}")
    if w.size and w.max() > 2**31 // max(n_images, 1):
        raise ValueError(f"weights up to {w.max()} overflow the int32 counts; use smaller multiplicities")
    return w.astype(np.int64).reshape(-1, n_images)


def map_scores(matches: Matches, weights: Any = None, *, stratum: str | None = None) -> MapScores:
    """mAP50, mAP50-95 and per-class AP, as Ultralytics' ``ap_per_class`` gives them.

    Args:
        matches: one validation's matches.
        weights: optional (n_images,) whole multiplicity per image (e.g. a bootstrap resample); the result equals
            scoring the data with each image repeated that many times. None means every image once.
        stratum: None for all objects, or a COCO size stratum ("small", "medium", "large"; "all" is every box
            through the stratum rules and equals None exactly): the matches must have areas (see the module notes).

    Returns:
        The scores; ``classes`` are those with targets under the weights (in the stratum).

    Examples:
        >>> from yolo_attn.stats import map_scores, synthetic_validation
        >>> m = synthetic_validation(40, 3, skills=(0.0,), seed=0)[0]
        >>> map_scores(m, stratum="all").map50_95 == map_scores(m).map50_95
        True
        >>> 0 <= map_scores(m, stratum="large").map50_95 <= 1
        True
    """
    w = np.ones((1, matches.n_images), np.int64) if weights is None else _check_weights(weights, matches.n_images)
    if w.shape[0] != 1:
        raise ValueError(f"map_scores takes one weighting, got {w.shape[0]}; use resampled_scores for several")
    _check_stratum(matches, stratum)
    eng = _Engine(matches, stratum)
    ap = eng.scores(w)[0]
    m50, m = _means(ap)
    present = ~np.isnan(ap[:, 0])
    return MapScores(float(m50), float(m), eng.classes[present], ap[present])


def resampled_scores(
    matches: Matches, weights: Any, *, batch_size: int | None = None, stratum: str | None = None
) -> ResampledScores:
    """Scores of one model under many image weightings at once.

    Args:
        matches: one validation's matches.
        weights: (B, n_images) whole multiplicities, one row per weighting (see :func:`resample_weights`).
        batch_size: weightings scored together (None: sized to the data; results do not depend on it).
        stratum: None, or a size stratum as in :func:`map_scores`.

    Returns:
        mAP per weighting and per-class AP (NaN where a class has no targets under that weighting).
    """
    w = _check_weights(weights, matches.n_images)
    _check_stratum(matches, stratum)
    eng = _Engine(matches, stratum)
    step = batch_size or eng.batch_size
    ap = np.concatenate([eng.scores(w[i : i + step]) for i in range(0, len(w), step)])
    m50, m = _means(ap)
    return ResampledScores(m50, m, eng.classes, ap)
