"""Does a block help? Paired statistics over validation images and training seeds.

A detector's mAP on one validation set is one draw: other images of the same kind, or another training seed, would
give another number. This module turns a comparison of two runs into an interval and a verdict.

The data is what Ultralytics' final validation already computes and then throws away: for every prediction its image,
confidence, class and true-positive flags at the ten IoU thresholds 0.50:0.05:0.95, and for every image its target
classes (:class:`Matches`, saved per run as a small compressed file). Everything below is computed from it:

- :func:`map_scores`: mAP50 and mAP50-95 (and per-class AP) exactly as Ultralytics' ``ap_per_class`` computes them,
  optionally with a multiplicity per image, i.e. on a bootstrap resample of the images without copying anything.
- :func:`paired_bootstrap`: resample the images once per replicate, score both models on the same resample, and
  report the percentile interval of the difference (overall and per class). Its half-width is the smallest
  difference this validation set can detect.
- :func:`seed_interval`: Student-t interval of same-seed differences, when a configuration has several seeds.
- :func:`verdict`: "better", "worse" or "no detectable difference": the image interval and, from three seeds on,
  the seed interval must both exclude zero on the same side.

How the weighted AP is computed (and why it is exact). Ultralytics sorts predictions by confidence, walks each class's
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

Examples:
    >>> from yolo_attn.stats import map_scores, paired_bootstrap, synthetic_validation, verdict
    >>> base, variant = synthetic_validation(60, 4, skills=(0.0, 0.0), seed=1, false_positives_per_image=5)
    >>> s = map_scores(base)
    >>> 0.0 <= s.map50_95 <= s.map50 <= 1.0
    True
    >>> cmp = paired_bootstrap(base, variant, n_resamples=50, seed=0)
    >>> cmp.map50_95.half_width > 0  # about the smallest difference these 60 images can resolve
    True
    >>> verdict(cmp.map50_95.interval).note
    'training noise not measured (1 seed)'
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

__all__ = [
    "AP_TAILS",
    "IOU_THRESHOLDS",
    "ClassComparison",
    "Interval",
    "MapScores",
    "Matches",
    "MetricComparison",
    "PairedBootstrap",
    "ResampledScores",
    "SeedInterval",
    "Verdict",
    "detect_ap_tail",
    "map_scores",
    "paired_bootstrap",
    "resample_weights",
    "resampled_scores",
    "seed_interval",
    "synthetic_validation",
    "t_quantile",
    "verdict",
]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # Ultralytics' iouv: 0.50:0.05:0.95
AP_TAILS = ("zero", "interpolate")
"""How the precision-recall curve ends after the highest recall reached, i.e. which Ultralytics computed the AP:
``"zero"``: precision drops to 0 there (``compute_ap`` appends a (last recall, 0) sentinel; 8.4.190 has it);
``"interpolate"``: a straight line from the last point to (recall 1, precision 0) (8.3.65 and older).
:func:`detect_ap_tail` tells which one an installed ``compute_ap`` uses."""

FORMAT = "yolo_attn.matches/1"
_EPS = 1e-16  # Ultralytics' eps in recall = tpc / (n_l + eps); it vanishes in float64 for n_l >= 1, as there
_GRID = np.linspace(0.0, 1.0, 101)  # Ultralytics' 101-point COCO recall grid, same construction so same floats
# np.trapezoid(y, _GRID) == sum(y * _TRAPZ); the last grid point (recall 1) always interpolates to precision 0
_TRAPZ = np.zeros(101)
_TRAPZ[:-1] += np.diff(_GRID) / 2
_TRAPZ[1:] += np.diff(_GRID) / 2
# running sums of the weights (and weights * x) over grid points 0 .. k-1: piecewise-linear integrands in closed form
_CUM = np.concatenate([[0.0], np.cumsum(_TRAPZ[:100])])
_CUM_X = np.concatenate([[0.0], np.cumsum((_TRAPZ * _GRID)[:100])])
_CHUNK = 64  # resamples per random stream: results do not depend on batch size or worker count
Label = Literal["better", "worse", "no detectable difference"]


# ----------------------------------------------------------------------------------------------------------- data
def _int_array(a: Any, what: str, ndim: int = 1) -> np.ndarray:
    a = np.asarray(a)
    if a.size == 0:
        a = a.reshape((0,) * ndim if ndim == 1 else (0, *a.shape[1:]))
    if a.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(a == np.round(a)):
            raise ValueError(f"{what} must hold integers, got non-integer values of dtype {a.dtype}")
    return a.astype(np.int32, copy=False)


@dataclass(frozen=True, eq=False)
class Matches:
    """Per-image matching results of one validation: everything mAP is computed from.

    Predictions are kept in the validator's order (image after image, each image's predictions as NMS returned
    them): full-sample scores then sort exactly as Ultralytics sorted, ties included.

    Attributes:
        image: (P,) index of each prediction's image, in ``[0, n_images)``.
        conf: (P,) confidence, float32 as the validator produced it.
        cls: (P,) predicted class.
        tp: (P, T) true positive at each IoU threshold.
        target_image: (G,) image of each ground-truth box.
        target_cls: (G,) class of each ground-truth box.
        n_images: number of validation images, including images without boxes or predictions.
        iou_thresholds: (T,) the IoU thresholds of ``tp``'s columns.
        names: class names by class id, optional.
        image_ids: one identifier per image (e.g. the file name), optional; checked when two runs are paired.
        ap_tail: which Ultralytics AP convention to reproduce (see :data:`AP_TAILS`).
    """

    image: np.ndarray
    conf: np.ndarray
    cls: np.ndarray
    tp: np.ndarray
    target_image: np.ndarray
    target_cls: np.ndarray
    n_images: int
    iou_thresholds: np.ndarray = field(default_factory=lambda: IOU_THRESHOLDS.copy())
    names: dict[int, str] | None = None
    image_ids: tuple[str, ...] | None = None
    ap_tail: str = "zero"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise dtypes once, here
        n = int(self.n_images)
        if n < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        set_(self, "n_images", n)
        image = _int_array(self.image, "image")
        conf = np.asarray(self.conf)
        if conf.dtype != np.float32:
            conf = conf.astype(np.float32)  # the validator's dtype; float64 input is rounded once, consistently
        cls = _int_array(self.cls, "cls")
        tp = np.asarray(self.tp)
        if tp.size == 0:
            tp = tp.reshape(0, len(np.atleast_1d(self.iou_thresholds)))
        if tp.ndim != 2:
            raise ValueError(f"tp must be (predictions, thresholds), got shape {tp.shape}")
        tp = tp.astype(bool, copy=False)
        thr = np.asarray(self.iou_thresholds, dtype=np.float64).reshape(-1)
        if tp.shape[1] != thr.size:
            raise ValueError(f"tp has {tp.shape[1]} threshold columns but iou_thresholds has {thr.size} values")
        if not (len(image) == len(conf) == len(cls) == len(tp)):
            raise ValueError(
                f"per-prediction arrays differ in length: image {len(image)}, conf {len(conf)}, cls {len(cls)}, "
                f"tp {len(tp)}"
            )
        t_image, t_cls = _int_array(self.target_image, "target_image"), _int_array(self.target_cls, "target_cls")
        if len(t_image) != len(t_cls):
            raise ValueError(f"target_image has {len(t_image)} entries but target_cls has {len(t_cls)}")
        for what, a in (("image", image), ("target_image", t_image)):
            if a.size and (a.min() < 0 or a.max() >= n):
                raise ValueError(f"{what} must lie in [0, n_images={n}), got values {a.min()}..{a.max()}")
        for what, a in (("cls", cls), ("target_cls", t_cls)):
            if a.size and a.min() < 0:
                raise ValueError(f"{what} must be >= 0, got {a.min()}")
        if not np.all(np.isfinite(conf)):
            raise ValueError("conf must be finite")
        if self.ap_tail not in AP_TAILS:
            raise ValueError(f"ap_tail must be one of {AP_TAILS}, got {self.ap_tail!r}")
        if self.image_ids is not None:
            ids = tuple(str(i) for i in self.image_ids)
            if len(ids) != n:
                raise ValueError(f"image_ids has {len(ids)} entries, expected n_images={n}")
            set_(self, "image_ids", ids)
        if self.names is not None:
            set_(self, "names", {int(k): str(v) for k, v in dict(self.names).items()})
        _check_tp_counts(image, cls, tp, t_image, t_cls)
        for k, v in (("image", image), ("conf", conf), ("cls", cls), ("tp", tp)):
            set_(self, k, v)
        set_(self, "target_image", t_image)
        set_(self, "target_cls", t_cls)
        set_(self, "iou_thresholds", thr)

    @property
    def n_predictions(self) -> int:
        """Number of predictions."""
        return len(self.conf)

    @classmethod
    def from_images(
        cls,
        tp: Sequence[Any],
        conf: Sequence[Any],
        pred_cls: Sequence[Any],
        target_cls: Sequence[Any],
        **kwargs: Any,
    ) -> Matches:
        """Build from one array per image, as Ultralytics' detection validator collects them.

        Args:
            tp: per image, (p_i, T) true-positive flags.
            conf: per image, (p_i,) confidences.
            pred_cls: per image, (p_i,) predicted classes.
            target_cls: per image, (g_i,) target classes.
            **kwargs: the other :class:`Matches` fields (``iou_thresholds``, ``names``, ``image_ids``, ``ap_tail``).

        Returns:
            The matches, with ``n_images = len(target_cls)``; every image must be listed, even one without boxes
            and predictions (it still counts when images are resampled).
        """
        n = len(target_cls)
        if not (len(tp) == len(conf) == len(pred_cls) == n):
            raise ValueError(
                f"one entry per image expected in each list, got tp {len(tp)}, conf {len(conf)}, "
                f"pred_cls {len(pred_cls)}, target_cls {n}"
            )
        n_thr = len(np.atleast_1d(kwargs.get("iou_thresholds", IOU_THRESHOLDS)))
        counts = [np.asarray(c).reshape(-1).size for c in conf]
        tps = [np.asarray(t, dtype=bool).reshape(-1, n_thr) for t in tp]
        t_counts = [np.asarray(t).reshape(-1).size for t in target_cls]
        return cls(
            image=np.repeat(np.arange(n, dtype=np.int32), counts),
            conf=_cat([np.asarray(c, dtype=np.float32).reshape(-1) for c in conf], np.float32),
            cls=_cat([np.asarray(c).reshape(-1) for c in pred_cls], np.int32),
            tp=np.concatenate(tps, 0) if tps else np.zeros((0, n_thr), bool),
            target_image=np.repeat(np.arange(n, dtype=np.int32), t_counts),
            target_cls=_cat([np.asarray(t).reshape(-1) for t in target_cls], np.int32),
            n_images=n,
            **kwargs,
        )

    # ----------------------------------------------------------------------------------------------- file
    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` atomically (temporary file, then rename): a reader sees the old file or the new one.

        Format ``yolo_attn.matches/1``: a deflate-compressed ``.npz`` (no pickles) with ``format``, ``n_images``,
        ``image`` (int32, P), ``conf`` (float32, P), ``cls`` (int16, or int32 for class ids >= 32768),
        ``tp_bits`` (uint8, P x ceil(T/8): ``np.packbits(tp, axis=1, bitorder="little")``), ``iou_thresholds``
        (float64, T), ``target_image`` (int32, G), ``target_cls`` (like ``cls``), ``ap_tail`` (str), ``names``
        (JSON, or "" for none) and, if known, ``image_ids`` (str, n_images). About 5 bytes per prediction for a
        realistic validation (2.3 MiB for 5000 images with 100 predictions each).

        Returns:
            The path written.
        """
        path = Path(path)
        small = max(int(self.cls.max(initial=0)), int(self.target_cls.max(initial=0))) < 2**15
        cls_dtype = np.int16 if small else np.int32
        arrays = {
            "format": np.array(FORMAT),
            "n_images": np.array(self.n_images, dtype=np.int64),
            "image": self.image,  # runs of equal values: deflate packs them well
            "conf": self.conf,
            "cls": self.cls.astype(cls_dtype),
            "tp_bits": np.packbits(self.tp, axis=1, bitorder="little"),
            "iou_thresholds": self.iou_thresholds,
            "target_image": self.target_image,
            "target_cls": self.target_cls.astype(cls_dtype),
            "ap_tail": np.array(self.ap_tail),
            "names": np.array(json.dumps(self.names) if self.names is not None else ""),
        }
        if self.image_ids is not None:
            arrays["image_ids"] = np.array(self.image_ids)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)  # a file object: numpy appends no ".npz" to the name
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Matches:
        """Read a file written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            fmt = str(z["format"]) if "format" in z.files else None
            if fmt != FORMAT:
                raise ValueError(f"{path} is not a matches file of format {FORMAT!r} (found {fmt!r})")
            thr = z["iou_thresholds"]
            tp = np.unpackbits(z["tp_bits"], axis=1, count=len(thr), bitorder="little").astype(bool)
            names = str(z["names"])
            return cls(
                image=z["image"],
                conf=z["conf"],
                cls=z["cls"],
                tp=tp,
                target_image=z["target_image"],
                target_cls=z["target_cls"],
                n_images=int(z["n_images"]),
                iou_thresholds=thr,
                names={int(k): v for k, v in json.loads(names).items()} if names else None,
                image_ids=tuple(z["image_ids"].tolist()) if "image_ids" in z.files else None,
                ap_tail=str(z["ap_tail"]),
            )


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _check_tp_counts(image: np.ndarray, cls: np.ndarray, tp: np.ndarray, t_image: np.ndarray, t_cls: np.ndarray):
    """A threshold's TPs in an image can not outnumber that image's targets of the class (one match per target).

    Catches the likeliest capture bug, predictions attached to the wrong image index, before it skews a comparison.
    """
    if not tp.any():
        return
    n_cls = int(max(cls.max(initial=0), t_cls.max(initial=0))) + 1
    key_t = t_image.astype(np.int64) * n_cls + t_cls
    key_p = image.astype(np.int64) * n_cls + cls
    uniq, targets = np.unique(key_t, return_counts=True)
    hit = tp.any(1)
    pos = np.searchsorted(uniq, key_p[hit])
    pos_ok = pos < len(uniq)
    found = np.zeros(len(pos), bool)
    found[pos_ok] = uniq[pos[pos_ok]] == key_p[hit][pos_ok]
    if not found.all():
        i = np.flatnonzero(hit)[~found][0]
        raise ValueError(
            f"prediction {i} (image {image[i]}, class {cls[i]}) is a true positive but its image has no target of "
            "that class: are the image indices aligned with the targets?"
        )
    for j in range(tp.shape[1]):
        got = np.bincount(pos[tp[hit, j]], minlength=len(uniq))
        if np.any(got > targets):
            k = int(np.argmax(got > targets))
            raise ValueError(
                f"image {uniq[k] // n_cls}, class {uniq[k] % n_cls}: {got[k]} true positives at IoU threshold index "
                f"{j} but only {targets[k]} targets (each target matches at most one prediction)"
            )


# -------------------------------------------------------------------------------------------------- results
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


@dataclass(frozen=True)
class MetricComparison:
    """One metric of two models (or of paired runs averaged over seeds) on the same images.

    Attributes:
        name: "mAP50", "mAP50-95", "AP50" or "AP50-95".
        base: full-sample value of the baseline.
        variant: full-sample value of the variant.
        delta: ``variant - base``.
        interval: percentile interval of the difference over paired image resamples.
        base_interval: percentile interval of the baseline's value.
        variant_interval: percentile interval of the variant's value.
    """

    name: str
    base: float
    variant: float
    delta: float
    interval: Interval
    base_interval: Interval
    variant_interval: Interval

    @property
    def half_width(self) -> float:
        """Half-width of the difference's interval: about the smallest difference these images can detect."""
        return self.interval.half_width

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a JSON record."""
        return {
            "name": self.name,
            "base": float(self.base),
            "variant": float(self.variant),
            "delta": float(self.delta),
            "interval": self.interval.to_dict(),
            "half_width": float(self.half_width),
            "base_interval": self.base_interval.to_dict(),
            "variant_interval": self.variant_interval.to_dict(),
        }


@dataclass(frozen=True)
class ClassComparison:
    """Per-class AP of the two models: which classes a block helps.

    Attributes:
        cls: class id.
        name: class name, when the matches carry names.
        n_targets: ground-truth boxes of the class in the full set.
        ap50: AP at IoU 0.5.
        ap50_95: AP averaged over the IoU thresholds.
    """

    cls: int
    name: str | None
    n_targets: int
    ap50: MetricComparison
    ap50_95: MetricComparison

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a JSON record."""
        return {
            "cls": self.cls,
            "name": self.name,
            "n_targets": self.n_targets,
            "ap50": self.ap50.to_dict(),
            "ap50_95": self.ap50_95.to_dict(),
        }


@dataclass(frozen=True, eq=False)
class PairedBootstrap:
    """Result of :func:`paired_bootstrap`.

    Attributes:
        map50: mAP50 of both models and their difference.
        map50_95: mAP50-95 of both models and their difference.
        classes: per-class comparisons, by class id.
        n_images: validation images.
        n_pairs: (base, variant) run pairs averaged (same-seed pairs), usually 1.
        n_resamples: bootstrap replicates.
        seed: random seed of the resampling.
        deltas: (n_resamples, 2) resampled differences of mAP50 and mAP50-95 (for plots).
    """

    map50: MetricComparison
    map50_95: MetricComparison
    classes: tuple[ClassComparison, ...]
    n_images: int
    n_pairs: int
    n_resamples: int
    seed: int
    deltas: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a JSON record (without the resampled differences)."""
        return {
            "map50": self.map50.to_dict(),
            "map50_95": self.map50_95.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
            "n_images": self.n_images,
            "n_pairs": self.n_pairs,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
        }


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
    """

    label: Label
    note: str | None
    image_interval: Interval
    seed_interval: SeedInterval | None = None

    def __str__(self) -> str:
        return f"{self.label} ({self.note})" if self.note else self.label

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a JSON record."""
        return {
            "label": self.label,
            "note": self.note,
            "image_interval": self.image_interval.to_dict(),
            "seed_interval": self.seed_interval.to_dict() if self.seed_interval else None,
        }


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

    def __init__(self, m: Matches):
        self.n_images = m.n_images
        self.tail = m.ap_tail
        self.classes = np.unique(m.target_cls)
        C, T = len(self.classes), m.tp.shape[1]
        self.C, self.T = C, T
        t_ci = np.searchsorted(self.classes, m.target_cls)
        self.n_targets = np.bincount(t_ci, minlength=C)
        self.targets = _ClassSums(t_ci, m.target_image, C, m.n_images)
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
        self.totals = _ClassSums(pci, img, C, m.n_images)  # every prediction of each class

        # Running total weight up to each key, class by class: predictions after a class's last key are dropped.
        key_pos = np.flatnonzero(ptp.any(1))
        key_ci = pci[key_pos]
        self.K = len(key_pos)
        bounds = np.searchsorted(pci, np.arange(C + 1))
        last = np.zeros(C, np.int64) - 1
        last[key_ci] = key_pos  # key positions ascend, so the last write is each class's last key
        kept = np.zeros(len(pci) + 1, np.int64)
        np.add.at(kept, bounds[:-1][last >= 0], 1)
        np.add.at(kept, last[last >= 0] + 1, -1)
        kept_pos = np.flatnonzero(np.cumsum(kept[:-1]) > 0)
        self.p_image = img[kept_pos].astype(np.intp)
        self.k_at = np.searchsorted(kept_pos, key_pos) + 1  # column in the zero-padded running sum
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
        self.e_seg, self.e_cls = e_seg, e_seg // T
        self.nonempty = self.seg_end > self.seg_start
        self.is_start = np.zeros(self.M, bool)
        self.is_start[self.seg_start[self.nonempty]] = True
        # Suffix maxima must not leak across segments: lift each segment above all later ones (precision <= 1).
        self.seg_off = 2.0 * (S - 1 - np.arange(S))
        self.e_off = self.seg_off[e_seg]
        # Weightings per pass: small data gains from wide passes (fewer numpy calls), large data from narrow ones
        # (a pass's per-entry arrays stay in cache): ~4 for COCO-sized sets (150k entries), 64 for tiny ones.
        self.batch_size = int(np.clip(600_000 // max(self.M, 1), 1, _CHUNK))

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
            end = np.where(total > 0, t_seg / total, 0.0)
            r_end = t_seg / np.repeat(n_eps, T, axis=1)
            slope = (0.0 - end) / (1.0 - r_end)
            c_sum, cx_sum = _CUM[100] - _CUM[n_valid], _CUM_X[100] - _CUM_X[n_valid]
            ap += np.where(n_valid < 100, end * c_sum + slope * (cx_sum - r_end * c_sum), 0.0)
        ap = ap.reshape(B, C, T)
        ap[np.broadcast_to((n == 0)[:, :, None], ap.shape)] = np.nan
        return ap


def _means(ap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mAP50 and mAP50-95 per weighting from (..., C, T) AP, NaN for absent classes (0 when none is present)."""
    k = (~np.isnan(ap[..., 0])).sum(-1)
    a = np.where(np.isnan(ap), 0.0, ap)
    with np.errstate(invalid="ignore", divide="ignore"):
        m50 = np.where(k > 0, a[..., 0].sum(-1) / k, 0.0)
        m = np.where(k > 0, a.mean(-1).sum(-1) / k, 0.0)
    return m50, m


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


def map_scores(matches: Matches, weights: Any = None) -> MapScores:
    """mAP50, mAP50-95 and per-class AP, as Ultralytics' ``ap_per_class`` gives them.

    Args:
        matches: one validation's matches.
        weights: optional (n_images,) whole multiplicity per image (e.g. a bootstrap resample); the result equals
            scoring the data with each image repeated that many times. None means every image once.

    Returns:
        The scores; ``classes`` are those with targets under the weights.
    """
    w = np.ones((1, matches.n_images), np.int64) if weights is None else _check_weights(weights, matches.n_images)
    if w.shape[0] != 1:
        raise ValueError(f"map_scores takes one weighting, got {w.shape[0]}; use resampled_scores for several")
    eng = _Engine(matches)
    ap = eng.scores(w)[0]
    m50, m = _means(ap)
    present = ~np.isnan(ap[:, 0])
    return MapScores(float(m50), float(m), eng.classes[present], ap[present])


def resampled_scores(matches: Matches, weights: Any, *, batch_size: int | None = None) -> ResampledScores:
    """Scores of one model under many image weightings at once.

    Args:
        matches: one validation's matches.
        weights: (B, n_images) whole multiplicities, one row per weighting (see :func:`resample_weights`).
        batch_size: weightings scored together (None: sized to the data; results do not depend on it).

    Returns:
        mAP per weighting and per-class AP (NaN where a class has no targets under that weighting).
    """
    w = _check_weights(weights, matches.n_images)
    eng = _Engine(matches)
    step = batch_size or eng.batch_size
    ap = np.concatenate([eng.scores(w[i : i + step]) for i in range(0, len(w), step)])
    m50, m = _means(ap)
    return ResampledScores(m50, m, eng.classes, ap)


def resample_weights(n_images: int, n_resamples: int, seed: int = 0, *, start: int = 0) -> np.ndarray:
    """Bootstrap resamples of the images as multiplicities: row b says how often each image was drawn.

    Each block of 64 rows comes from its own random stream (``seed``, block index), so row b is the same whatever
    ``start``, batch size or worker count produced it.

    Args:
        n_images: images in the validation set.
        n_resamples: rows to return.
        seed: random seed.
        start: index of the first row (to produce a long sequence in parts).

    Returns:
        (n_resamples, n_images) int32 multiplicities; each row sums to ``n_images``.
    """
    if n_images < 1 or n_resamples < 0 or start < 0:
        raise ValueError(f"need n_images >= 1, n_resamples >= 0, start >= 0, got {n_images}, {n_resamples}, {start}")
    rows = []
    for block in range(start // _CHUNK, (start + n_resamples + _CHUNK - 1) // _CHUNK):
        rng = np.random.default_rng([seed, block])
        draws = rng.integers(0, n_images, size=(_CHUNK, n_images))
        counts = np.bincount((draws + n_images * np.arange(_CHUNK)[:, None]).ravel(), minlength=_CHUNK * n_images)
        rows.append(counts.reshape(_CHUNK, n_images).astype(np.int32))
    if not rows:
        return np.zeros((0, n_images), np.int32)
    out = np.concatenate(rows)
    off = start - (start // _CHUNK) * _CHUNK
    return out[off : off + n_resamples]


# ------------------------------------------------------------------------------------------------- bootstrap
def _as_runs(x: Matches | Sequence[Matches], what: str) -> list[Matches]:
    runs = [x] if isinstance(x, Matches) else list(x)
    if not runs or not all(isinstance(r, Matches) for r in runs):
        raise ValueError(f"{what} must be a Matches or a non-empty sequence of Matches")
    return runs


def _check_paired(runs: list[Matches]) -> None:
    """All runs must score the same images with the same targets, else resampling them together is meaningless."""
    ref = runs[0]
    ref_t = np.lexsort((ref.target_cls, ref.target_image))
    for i, r in enumerate(runs[1:], 1):
        if r.n_images != ref.n_images:
            raise ValueError(f"run {i} has n_images={r.n_images}, run 0 has {ref.n_images}: not the same images")
        if ref.image_ids is not None and r.image_ids is not None and r.image_ids != ref.image_ids:
            k = next(k for k, (a, b) in enumerate(zip(ref.image_ids, r.image_ids)) if a != b)
            raise ValueError(f"run {i} lists image {k} as {r.image_ids[k]!r}, run 0 as {ref.image_ids[k]!r}")
        t = np.lexsort((r.target_cls, r.target_image))
        if len(t) != len(ref_t) or not (
            np.array_equal(r.target_image[t], ref.target_image[ref_t])
            and np.array_equal(r.target_cls[t], ref.target_cls[ref_t])
        ):
            raise ValueError(f"run {i} has other targets than run 0: not the same validation set")
        if not np.allclose(r.iou_thresholds, ref.iou_thresholds):
            raise ValueError(f"run {i} uses IoU thresholds {r.iou_thresholds}, run 0 {ref.iou_thresholds}")
        if r.ap_tail != ref.ap_tail:
            raise ValueError(f"run {i} uses ap_tail={r.ap_tail!r}, run 0 {ref.ap_tail!r}: different AP definitions")


_WORKER_ENGINES: list[_Engine] = []


def _init_worker(engines: list[_Engine]) -> None:
    global _WORKER_ENGINES
    _WORKER_ENGINES = engines


def _score_block(
    engines: list[_Engine], n_images: int, seed: int, start: int, size: int, batch: int | None
) -> np.ndarray:
    """(size, runs, C, T) AP for resamples ``start .. start+size``."""
    w = resample_weights(n_images, size, seed, start=start)
    out = []
    for eng in engines:
        step = batch or eng.batch_size
        out.append(np.concatenate([eng.scores(w[i : i + step]) for i in range(0, size, step)]))
    return np.stack(out, 1)


def _worker_block(args: tuple[int, int, int, int, int | None]) -> np.ndarray:
    return _score_block(_WORKER_ENGINES, *args)


def _intervals(samples: np.ndarray, ci: float) -> np.ndarray:
    """(2, K) percentile interval ends of each column of (B, K) samples, ignoring NaN (0 for all-NaN columns)."""
    out = np.zeros((2, samples.shape[1]))
    ok = ~np.all(np.isnan(samples), axis=0)
    if ok.any():
        # Hyndman-Fan type 8 ("median_unbiased"): with a few hundred resamples, linear interpolation between order
        # statistics pulls tail quantiles inward (93% coverage from 100 resamples at 95% nominal); type 8 does not.
        q = [50 * (1 - ci), 50 * (1 + ci)]
        out[:, ok] = np.nanpercentile(samples[:, ok], q, axis=0, method="median_unbiased")
    return out


def paired_bootstrap(
    base: Matches | Sequence[Matches],
    variant: Matches | Sequence[Matches],
    n_resamples: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    *,
    workers: int = 1,
    batch_size: int | None = None,
) -> PairedBootstrap:
    """Percentile intervals of the mAP difference between two models validated on the same images.

    Every replicate draws the images with replacement once and scores both models on that same draw, so what the
    two share (hard images are hard for both) cancels in the difference. With several same-seed pairs (lists of
    equal length), each replicate's difference is the mean over the pairs.

    Args:
        base: the baseline's matches, or one per seed.
        variant: the variant's matches, or one per seed (paired with ``base`` by position).
        n_resamples: bootstrap replicates.
        seed: random seed of the resampling; the same seed gives the same result with any ``workers``.
        ci: confidence level of the intervals.
        workers: processes to spread the replicates over (1: in this process).
        batch_size: replicates scored together in one pass (None: sized to the data, up to 64; no effect on results).

    Returns:
        Full-sample values, differences and intervals for mAP50, mAP50-95 and every class's AP.
    """
    bases, variants = _as_runs(base, "base"), _as_runs(variant, "variant")
    if len(bases) != len(variants):
        raise ValueError(f"{len(bases)} base runs but {len(variants)} variant runs: pair them by seed")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    if workers < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"workers and batch_size must be >= 1, got {workers} and {batch_size}")
    runs = bases + variants
    _check_paired(runs)
    engines = [_Engine(r) for r in runs]
    n_images, P = runs[0].n_images, len(bases)
    full = np.stack([e.scores(np.ones((1, n_images), np.int64))[0] for e in engines])  # (runs, C, T)

    blocks = [(s, min(_CHUNK, n_resamples - s)) for s in range(0, n_resamples, _CHUNK)]
    if workers == 1 or len(blocks) == 1:
        parts = [_score_block(engines, n_images, seed, s, k, batch_size) for s, k in blocks]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(engines,)) as pool:
            parts = list(pool.map(_worker_block, [(n_images, seed, s, k, batch_size) for s, k in blocks]))
    boot = np.concatenate(parts)  # (B, runs, C, T)

    # Every quantity as (full (runs,), resampled (B, runs)): mAP50, mAP50-95, then AP50 and AP50-95 per class.
    m50_full, m_full = _means(full)
    m50_boot, m_boot = _means(boot)
    fulls = [m50_full, m_full, *full[:, :, 0].T, *full.mean(2).T]
    boots = [m50_boot, m_boot, *np.moveaxis(boot[:, :, :, 0], 2, 0), *np.moveaxis(boot.mean(3), 2, 0)]
    # average each side over the seed pairs, then take the difference; one vectorised percentile call for all
    b_full = np.array([f[:P].mean() for f in fulls])
    v_full = np.array([f[P:].mean() for f in fulls])
    b_boot = np.stack([x[:, :P].mean(1) for x in boots], 1)  # (B, K)
    v_boot = np.stack([x[:, P:].mean(1) for x in boots], 1)
    ends = [_intervals(a, ci) for a in (v_boot - b_boot, b_boot, v_boot)]

    def comparison(name: str, i: int) -> MetricComparison:
        lo_hi = [Interval(float(e[0, i]), float(e[1, i]), ci) for e in ends]
        return MetricComparison(name, float(b_full[i]), float(v_full[i]), float(v_full[i] - b_full[i]), *lo_hi)

    eng = engines[0]
    C = len(eng.classes)
    names = runs[0].names or {}
    classes = tuple(
        ClassComparison(
            int(c),
            names.get(int(c)),
            int(eng.n_targets[i]),
            comparison("AP50", 2 + i),
            comparison("AP50-95", 2 + C + i),
        )
        for i, c in enumerate(eng.classes)
    )
    cmp50, cmp = comparison("mAP50", 0), comparison("mAP50-95", 1)
    deltas = (v_boot - b_boot)[:, :2]
    return PairedBootstrap(cmp50, cmp, classes, n_images, P, n_resamples, seed, deltas)


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


_IntervalLike = Union[Interval, MetricComparison]


def verdict(image_ci: _IntervalLike, seed_ci: SeedInterval | None = None, n_seeds: int = 1) -> Verdict:
    """Call a variant "better", "worse" or "no detectable difference" than its baseline.

    Both sources of noise must agree: the image interval (from :func:`paired_bootstrap`) and, with 3 or more seeds,
    the seed interval (from :func:`seed_interval`) must both exclude zero on the same side. With fewer seeds the
    verdict rests on the images alone and says so in its note.

    Args:
        image_ci: the difference's interval over image resamples (or the :class:`MetricComparison` holding it).
        seed_ci: the difference's interval over seeds; needed when ``n_seeds >= 3``.
        n_seeds: number of same-seed pairs behind the comparison.

    Returns:
        The verdict with its note and the intervals it used.
    """
    iv = image_ci.interval if isinstance(image_ci, MetricComparison) else image_ci
    if not isinstance(iv, Interval):
        raise ValueError(f"image_ci must be an Interval or a MetricComparison, got {type(image_ci).__name__}")
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    labels: dict[int, Label] = {1: "better", -1: "worse", 0: "no detectable difference"}
    if n_seeds < 3:
        note = f"training noise not measured ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
        return Verdict(labels[iv.side], note, iv, None)
    if seed_ci is None:
        raise ValueError(f"with n_seeds={n_seeds} (>= 3) the seed interval is needed: pass seed_ci=seed_interval(...)")
    if seed_ci.n != n_seeds:
        raise ValueError(f"seed_ci was computed from {seed_ci.n} seeds but n_seeds={n_seeds}")
    if iv.side == seed_ci.side:
        return Verdict(labels[iv.side], None, iv, seed_ci)
    which = "image" if iv.side else "seed"
    note = f"only the {which} interval excludes zero" if iv.side * seed_ci.side == 0 else "the intervals disagree"
    return Verdict("no detectable difference", note, iv, seed_ci)


def detect_ap_tail(compute_ap: Callable[[np.ndarray, np.ndarray], Any]) -> str:
    """Which end of the precision-recall curve an Ultralytics ``compute_ap`` uses (see :data:`AP_TAILS`).

    Args:
        compute_ap: ``ultralytics.utils.metrics.compute_ap`` of the running Ultralytics.

    Returns:
        "zero" or "interpolate".
    """
    ap = float(compute_ap(np.array([0.5]), np.array([1.0]))[0])  # one TP, two targets: 0.495 or 0.75
    if abs(ap - 0.495) < 1e-6:
        return "zero"
    if abs(ap - 0.75) < 1e-6:
        return "interpolate"
    raise ValueError(f"unknown compute_ap convention: recall [0.5] at precision [1.0] gave AP {ap}")


# ------------------------------------------------------------------------------------------------- synthetic
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def synthetic_validation(
    n_images: int = 500,
    n_classes: int = 20,
    *,
    skills: Sequence[float] = (0.0, 0.0),
    seed: int = 0,
    boxes_per_image: float = 7.0,
    false_positives_per_image: float = 90.0,
    max_det: int = 300,
    conf_threshold: float = 0.001,
    half: bool = False,
    iou_thresholds: Sequence[float] = tuple(IOU_THRESHOLDS),
    ap_tail: str = "zero",
) -> tuple[Matches, ...]:
    """Validation matches of several simulated models on one simulated image set, for tests and benchmarks.

    The images (boxes, classes, how hard each object is) are drawn once; each model then detects them with its
    own independent noise, so models share what real models share (hard images are hard for all) and differ by
    chance and by ``skills``. Equal skills mean two models from the same distribution.

    Per object: detected with probability ``sigmoid(1.2 + skill - difficulty)``; confidence higher for easy objects;
    5% get a wrong class; box IoU ``1 - 0.7 * sigmoid(-(0.9 + 0.9 * skill - 0.3 * difficulty + noise))`` decides
    the thresholds at which it is a TP; a quarter also get a lower-confidence duplicate (FP). Per image, a Poisson
    number of background FPs, mostly at very low confidence; then the confidence threshold and ``max_det``.

    Args:
        n_images: validation images.
        n_classes: classes (frequencies fall off like COCO's, class 0 the most common).
        skills: one entry per model; higher finds and localises more objects.
        seed: random seed (the images come from it, each model's noise from it and its position).
        boxes_per_image: mean ground-truth boxes per image (2% of images have none).
        false_positives_per_image: mean background predictions per image.
        max_det: most predictions kept per image.
        conf_threshold: predictions below this confidence are dropped.
        half: round confidences to float16 first, as half-precision validation does (many ties).
        iou_thresholds: thresholds of the TP columns (fewer make small simulations cheaper).
        ap_tail: AP convention the matches declare.

    Returns:
        One :class:`Matches` per entry of ``skills``.
    """
    rng = np.random.default_rng([seed, 0])
    N, C = int(n_images), int(n_classes)
    freq = 1.0 / (np.arange(C) + 1.0) ** 0.8
    freq /= freq.sum()
    nb = rng.poisson(boxes_per_image, N)
    nb[rng.random(N) < 0.02] = 0
    t_img = np.repeat(np.arange(N), nb)
    t_cls = rng.choice(C, size=len(t_img), p=freq)
    difficulty = rng.normal(0, 1, len(t_img)) + rng.normal(0, 0.5, N)[t_img]
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    out = []
    for i, skill in enumerate(skills):
        r = np.random.default_rng([seed, 1 + i])
        G = len(t_img)
        logit = 1.2 + skill - difficulty
        det = r.random(G) < _sigmoid(logit)
        conf_obj = _sigmoid(logit + r.normal(0, 1, G))
        wrong = r.random(G) < 0.05
        cls_obj = np.where(wrong, (t_cls + r.integers(1, max(C, 2), G)) % C, t_cls)
        iou = 1 - 0.7 * _sigmoid(-(0.9 + 0.9 * skill - 0.3 * difficulty + r.normal(0, 1, G)))
        tp_obj = (iou[:, None] >= thr[None, :]) & (cls_obj == t_cls)[:, None]
        dup = det & (r.random(G) < 0.25)
        nfp = r.poisson(false_positives_per_image, N)
        fp_img = np.repeat(np.arange(N), nfp)
        low = r.random(len(fp_img)) < 0.95
        fp_conf = np.where(low, r.beta(0.5, 20, len(fp_img)), r.beta(2, 3, len(fp_img)))
        fp_cls = np.where(r.random(len(fp_img)) < 0.7, r.choice(C, len(fp_img), p=freq), r.integers(0, C, len(fp_img)))
        image = np.concatenate([t_img[det], t_img[dup], fp_img])
        conf = np.concatenate([conf_obj[det], conf_obj[dup] * r.uniform(0.05, 0.5, dup.sum()), fp_conf])
        cls = np.concatenate([cls_obj[det], cls_obj[dup], fp_cls])
        tp = np.concatenate([tp_obj[det], np.zeros((dup.sum() + len(fp_img), len(thr)), bool)])
        conf = conf.astype(np.float16 if half else np.float32).astype(np.float32)
        keep = conf >= conf_threshold
        image, conf, cls, tp = image[keep], conf[keep], cls[keep], tp[keep]
        order = np.lexsort((-conf, image))  # per image, by confidence, as NMS returns them
        image, conf, cls, tp = image[order], conf[order], cls[order], tp[order]
        rank = np.arange(len(image)) - np.searchsorted(image, image)  # position inside its image
        keep = rank < max_det
        out.append(
            Matches(
                image[keep], conf[keep], cls[keep], tp[keep], t_img, t_cls, N, thr.copy(), None, None, ap_tail=ap_tail
            )
        )
    return tuple(out)
