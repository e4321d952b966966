"""Simulated validations with known truth, for tests and benchmarks: several models detecting one image set.

:func:`synthetic_validation` draws images, boxes (with COCO-like box areas), classes and how hard each object is
once, then lets each model detect them with its own noise and skill, optionally a skill that depends on the object's
size stratum (to plant a gain on large objects only, say).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from yolo_attn.stats.engine import AREA_RANGES, STRATA
from yolo_attn.stats.matches import IOU_THRESHOLDS, Matches

__all__ = ["synthetic_validation"]


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
    size_skills: Sequence[Sequence[float]] | None = None,
) -> tuple[Matches, ...]:
    """Validation matches of several simulated models on one simulated image set, for tests and benchmarks.

    The images (boxes, classes, box areas, how hard each object is) are drawn once; each model then detects them
    with its own independent noise, so models share what real models share (hard images are hard for all) and differ
    by chance and by ``skills``. Equal skills mean two models from the same distribution.

    Per object: detected with probability ``sigmoid(1.2 + skill - difficulty)``; confidence higher for easy objects;
    5% get a wrong class; box IoU ``1 - 0.7 * sigmoid(-(0.9 + 0.9 * skill - 0.3 * difficulty + noise))`` decides
    the thresholds at which it is a TP; a quarter also get a lower-confidence duplicate (FP). Per image, a Poisson
    number of background FPs, mostly at very low confidence; then the confidence threshold and ``max_det``.
    Box areas are log-normal, about COCO's mix (41% small, 34% medium, 25% large); a detection's box is its
    object's area times a small random factor, a background FP's area is drawn like an object's. The areas come
    from streams of their own, so the rest is what it was before areas existed.

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
        size_skills: per model, extra skill on (small, medium, large) objects, added to its ``skills`` entry for
            the objects of that stratum (None: none), e.g. ``((0, 0, 0), (0, 0, 0.8))`` plants a gain on large ones.

    Returns:
        One :class:`Matches` per entry of ``skills``, with target and prediction areas and matched targets.
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
    G = len(t_img)
    t_area = _areas(np.random.default_rng([seed, 0, 1]), G)
    t_stratum = np.zeros(G, np.intp)
    for k, name in enumerate(STRATA):
        low, high = AREA_RANGES[name]
        t_stratum[(t_area >= low) & (t_area < high)] = k
    if size_skills is not None and len(size_skills) != len(skills):
        raise ValueError(f"size_skills needs one (small, medium, large) entry per model: {len(skills)}")
    out = []
    for i, skill in enumerate(skills):
        r = np.random.default_rng([seed, 1 + i])
        ra = np.random.default_rng([seed, 1 + i, 1])  # areas: a stream of their own
        extra = 0.0
        if size_skills is not None:
            per_size = np.asarray(size_skills[i], dtype=np.float64).reshape(-1)
            if per_size.size != len(STRATA):
                raise ValueError(f"size_skills[{i}] must hold 3 values (small, medium, large), got {per_size.size}")
            extra = per_size[t_stratum]
        model_skill = skill + extra
        logit = 1.2 + model_skill - difficulty
        det = r.random(G) < _sigmoid(logit)
        conf_obj = _sigmoid(logit + r.normal(0, 1, G))
        wrong = r.random(G) < 0.05
        cls_obj = np.where(wrong, (t_cls + r.integers(1, max(C, 2), G)) % C, t_cls)
        iou = 1 - 0.7 * _sigmoid(-(0.9 + 0.9 * model_skill - 0.3 * difficulty + r.normal(0, 1, G)))
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
        obj = np.flatnonzero(det)
        matched = np.concatenate(
            [np.where(tp_obj[det], obj[:, None], -1), np.full((dup.sum() + len(fp_img), len(thr)), -1)]
        )
        p_area = np.concatenate(
            [
                t_area[det] * np.exp(ra.normal(0, 0.15, det.sum())),
                t_area[dup] * np.exp(ra.normal(0, 0.3, dup.sum())),
                _areas(ra, len(fp_img)),
            ]
        )
        conf = conf.astype(np.float16 if half else np.float32).astype(np.float32)
        keep = conf >= conf_threshold
        image, conf, cls, tp, matched, p_area = (a[keep] for a in (image, conf, cls, tp, matched, p_area))
        order = np.lexsort((-conf, image))  # per image, by confidence, as NMS returns them
        image, conf, cls, tp, matched, p_area = (a[order] for a in (image, conf, cls, tp, matched, p_area))
        rank = np.arange(len(image)) - np.searchsorted(image, image)  # position inside its image
        keep = rank < max_det
        out.append(
            Matches(
                image[keep],
                conf[keep],
                cls[keep],
                tp[keep],
                t_img,
                t_cls,
                N,
                thr.copy(),
                None,
                None,
                ap_tail,
                t_area,
                p_area[keep],
                matched[keep],
            )  # fmt: skip
        )
    return tuple(out)


def _areas(rng: np.random.Generator, n: int) -> np.ndarray:
    """Box areas in pixels, log-normal: about 41% below 32², 34% from 32² to 96², 25% above (COCO's val mix)."""
    return np.clip(np.exp(rng.normal(7.49, 2.44, n)), 4.0, 640.0 * 640.0).astype(np.float32)
