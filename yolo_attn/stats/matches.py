"""The per-image match format: what one validation matched, in memory (:class:`Matches`) and on disk (``.npz``).

For every prediction its image, confidence, class and true-positive flags at the IoU thresholds; for every image its
target classes. Format 2 adds what COCO's size strata need: each target's box area, each prediction's own box area
and, per prediction and threshold, which target it matched (see :class:`Matches`). Files of format 1 still load,
without those arrays (:attr:`Matches.has_areas` is False).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AP_TAILS", "FORMAT", "IOU_THRESHOLDS", "Matches", "detect_ap_tail"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # Ultralytics' iouv: 0.50:0.05:0.95
AP_TAILS = ("zero", "interpolate")
"""How the precision-recall curve ends after the highest recall reached, i.e. which Ultralytics computed the AP:
``"zero"``: precision drops to 0 there (``compute_ap`` appends a (last recall, 0) sentinel; 8.4.190 has it);
``"interpolate"``: a straight line from the last point to (recall 1, precision 0) (8.3.65 and older).
:func:`detect_ap_tail` tells which one an installed ``compute_ap`` uses."""

FORMAT = "yolo_attn.matches/2"
_READABLE = ("yolo_attn.matches/1", FORMAT)  # format 1: no areas, no matched targets


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
        target_area: (G,) area ``w * h`` of each ground-truth box in original image pixels (float32), or None.
        pred_area: (P,) area of each prediction's own box in original image pixels (float32), or None.
        matched_target: (P, T) index into the target arrays of the target each prediction matched at each threshold,
            -1 where it is no true positive (int32), or None. The three are given together or not at all (format 1
            files and captures that did not record boxes have none: no size strata then).
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
    target_area: np.ndarray | None = None
    pred_area: np.ndarray | None = None
    matched_target: np.ndarray | None = None

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
        areas = (self.target_area, self.pred_area, self.matched_target)
        if any(a is not None for a in areas):
            if any(a is None for a in areas):
                raise ValueError("target_area, pred_area and matched_target come together: give all three or none")
            t_area, p_area = (
                _area_array(self.target_area, len(t_cls), "target_area"),
                _area_array(self.pred_area, len(cls), "pred_area"),
            )
            matched = _matched_array(self.matched_target, tp, image, cls, t_image, t_cls)
            set_(self, "target_area", t_area)
            set_(self, "pred_area", p_area)
            set_(self, "matched_target", matched)
        for k, v in (("image", image), ("conf", conf), ("cls", cls), ("tp", tp)):
            set_(self, k, v)
        set_(self, "target_image", t_image)
        set_(self, "target_cls", t_cls)
        set_(self, "iou_thresholds", thr)

    @property
    def n_predictions(self) -> int:
        """Number of predictions."""
        return len(self.conf)

    @property
    def has_areas(self) -> bool:
        """Whether the matches carry box areas and matched targets (what size strata need)."""
        return self.target_area is not None

    @classmethod
    def from_images(
        cls,
        tp: Sequence[Any],
        conf: Sequence[Any],
        pred_cls: Sequence[Any],
        target_cls: Sequence[Any],
        *,
        target_area: Sequence[Any] | None = None,
        pred_area: Sequence[Any] | None = None,
        matched_target: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> Matches:
        """Build from one array per image, as Ultralytics' detection validator collects them.

        Args:
            tp: per image, (p_i, T) true-positive flags.
            conf: per image, (p_i,) confidences.
            pred_cls: per image, (p_i,) predicted classes.
            target_cls: per image, (g_i,) target classes.
            target_area: per image, (g_i,) target box areas in original pixels (optional, with the next two).
            pred_area: per image, (p_i,) predicted box areas in original pixels.
            matched_target: per image, (p_i, T) index of the matched target *within that image*, -1 for none.
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
        if target_area is not None or pred_area is not None or matched_target is not None:
            if target_area is None or pred_area is None or matched_target is None:
                raise ValueError("target_area, pred_area and matched_target come together: give all three or none")
            if not (len(target_area) == len(pred_area) == len(matched_target) == n):
                raise ValueError("target_area, pred_area and matched_target need one entry per image")
            offsets = np.concatenate([[0], np.cumsum(t_counts)[:-1]]).astype(np.int64)
            local = [np.asarray(k, dtype=np.int64).reshape(-1, n_thr) for k in matched_target]
            kwargs["matched_target"] = (
                np.concatenate([np.where(k >= 0, k + off, -1) for k, off in zip(local, offsets)], 0)
                if local
                else np.zeros((0, n_thr), np.int32)
            )
            kwargs["target_area"] = _cat([np.asarray(a, dtype=np.float32).reshape(-1) for a in target_area], np.float32)
            kwargs["pred_area"] = _cat([np.asarray(a, dtype=np.float32).reshape(-1) for a in pred_area], np.float32)
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

        Format ``yolo_attn.matches/2`` (written now) adds, when the matches have areas: ``target_area`` (float32,
        G), ``pred_area`` (float32, P) and ``matched_target`` (int32, one entry per true positive in the row-major
        order of ``np.nonzero(tp)``: the index of the target it matched). Files of format 1 still load, without
        areas.

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
        if self.has_areas:
            arrays["target_area"] = self.target_area
            arrays["pred_area"] = self.pred_area
            arrays["matched_target"] = self.matched_target[self.tp]  # only true positives have one
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
            if fmt not in _READABLE:
                raise ValueError(
                    f"{path} is not a matches file of a format this version reads {_READABLE} (found {fmt!r})"
                )
            thr = z["iou_thresholds"]
            tp = np.unpackbits(z["tp_bits"], axis=1, count=len(thr), bitorder="little").astype(bool)
            names = str(z["names"])
            areas = {}
            if "target_area" in z.files:
                matched = np.full(tp.shape, -1, np.int32)
                matched[tp] = z["matched_target"]
                areas = {"target_area": z["target_area"], "pred_area": z["pred_area"], "matched_target": matched}
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
                **areas,
            )


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _area_array(a: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    if len(a) != n:
        raise ValueError(f"{what} has {len(a)} entries, expected {n}")
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0):
        raise ValueError(f"{what} must be finite and >= 0 (box areas in original image pixels)")
    return a


def _matched_array(
    matched: Any, tp: np.ndarray, image: np.ndarray, cls: np.ndarray, t_image: np.ndarray, t_cls: np.ndarray
) -> np.ndarray:
    """Check the matched-target indices: one exactly where a prediction is a TP, a target of its image and class,
    and no target matched twice at one threshold."""
    k = np.asarray(matched)
    if k.size == 0:
        k = k.reshape(tp.shape) if tp.size == 0 else k
    if k.shape != tp.shape:
        raise ValueError(f"matched_target must have the shape of tp {tp.shape}, got {k.shape}")
    k = _int_array(k, "matched_target", ndim=2)
    if not np.array_equal(k >= 0, tp):
        p, j = np.argwhere((k >= 0) != tp)[0]
        raise ValueError(
            f"prediction {p}, threshold index {j}: matched_target is {k[p, j]} but tp is {bool(tp[p, j])} "
            "(a matched target exactly where a prediction is a true positive)"
        )
    p, j = np.nonzero(tp)
    t = k[p, j]
    if t.size and t.max() >= len(t_cls):
        raise ValueError(f"matched_target points at target {t.max()}, but there are {len(t_cls)} targets")
    bad = (t_image[t] != image[p]) | (t_cls[t] != cls[p])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"prediction {p[i]} (image {image[p[i]]}, class {cls[p[i]]}) matched target {t[i]} of image "
            f"{t_image[t[i]]}, class {t_cls[t[i]]}: a match pairs a prediction with a target of its image and class"
        )
    pairs = t.astype(np.int64) * tp.shape[1] + j
    if len(np.unique(pairs)) != len(pairs):
        raise ValueError(
            "a target is matched by two predictions at one IoU threshold (each target matches at most one)"
        )
    return k.astype(np.int32, copy=False)


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
