"""Does a block help? Paired statistics over validation images and training seeds.

A detector's mAP on one validation set is one draw: other images of the same kind, or another training seed, would
give another number. This package turns a comparison of two runs into an interval and a verdict.

The data is what Ultralytics' final validation already computes and then throws away: for every prediction its image,
confidence, class and true-positive flags at the ten IoU thresholds 0.50:0.05:0.95, and for every image its target
classes; since format 2 also box areas and which target each true positive matched, for COCO's size strata
(:class:`Matches`, saved per run as a small compressed file). Everything below is computed from it, numpy only:

- :mod:`~yolo_attn.stats.matches`: the format and its file (:class:`Matches`).
- :mod:`~yolo_attn.stats.engine`: :func:`map_scores`, mAP50 and mAP50-95 (and per-class AP) exactly as Ultralytics'
  ``ap_per_class`` computes them, optionally with a multiplicity per image (a bootstrap resample, without copying
  anything) and per size stratum (small, medium, large objects, COCO's area bounds).
- :mod:`~yolo_attn.stats.bootstrap`: :func:`paired_bootstrap`, resample the images once per replicate, score both
  models on the same resample, and report the percentile interval of the difference (overall, per class, per size
  stratum). Its half-width is the smallest difference this validation set can detect.
- :mod:`~yolo_attn.stats.intervals`: :func:`seed_interval` (Student-t interval of same-seed differences) and
  :func:`verdict`: "better", "worse" or "no detectable difference" (the image interval and, from three seeds on, the
  seed interval must both exclude zero on the same side), and with a margin "equivalent" or "not worse".
- :mod:`~yolo_attn.stats.synthetic`: :func:`synthetic_validation`, simulated models with known truth.

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
    >>> [s.name for s in cmp.strata]  # per size stratum, on the same resamples
    ['small', 'medium', 'large']
"""

from yolo_attn.stats.bootstrap import (
    ClassComparison,
    MetricComparison,
    PairedBootstrap,
    StratumComparison,
    paired_bootstrap,
    resample_weights,
)
from yolo_attn.stats.engine import AREA_RANGES, STRATA, MapScores, ResampledScores, map_scores, resampled_scores
from yolo_attn.stats.intervals import (
    Equivalence,
    Interval,
    Label,
    SeedInterval,
    Verdict,
    seed_interval,
    t_quantile,
    verdict,
)
from yolo_attn.stats.matches import AP_TAILS, FORMAT, IOU_THRESHOLDS, Matches, detect_ap_tail
from yolo_attn.stats.synthetic import synthetic_validation

__all__ = [
    "AP_TAILS",
    "AREA_RANGES",
    "FORMAT",
    "IOU_THRESHOLDS",
    "STRATA",
    "ClassComparison",
    "Equivalence",
    "Interval",
    "Label",
    "MapScores",
    "Matches",
    "MetricComparison",
    "PairedBootstrap",
    "ResampledScores",
    "SeedInterval",
    "StratumComparison",
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
