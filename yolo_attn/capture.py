"""The capture of a detection validation's per-image matches, for the paired statistics (:mod:`yolo_attn.stats`).

Ultralytics' detection validator computes, image by image, which prediction is a true positive at which IoU
threshold, and throws it away once mAP is computed. :class:`ValidationCapture` wraps the validator's own
``update_metrics`` (present in 8.3.65 and 8.4) on that one validator instance and copies out the entries it appended,
so the matching itself is always Ultralytics'. Where the entries live differs:

- 8.4: ``validator.metrics.stats`` (a dict of lists: tp, conf, pred_cls, target_cls, target_img), one entry per
  image, numpy arrays; ``get_stats`` clears them, so an ``on_val_end`` callback would be too late.
- 8.3.65: ``validator.stats`` (same keys), torch tensors on the device, and no entry for an image with neither
  predictions nor labels (such an image still counts in a resample of the images).

For COCO's size strata it also records each target's and each prediction's box area in original image pixels and
which target each true positive matched. The validator does not expose that pairing, so it is recomputed once per
image from the same boxes with Ultralytics' own ``box_iou`` and the same rule as the installed ``match_predictions``
(8.4: each prediction in confidence order takes its best unclaimed target; 8.3: the older sort-and-unique rule),
which is told apart by asking the validator's ``match_predictions`` about a case where the two rules differ. The
recomputed true positives must equal the validator's, image by image, or :meth:`ValidationCapture.matches` raises.
Boxes: 8.4 matches in the letterboxed image and its areas are scaled back to the original image with Ultralytics'
``scale_boxes`` (as its COCO JSON export does); 8.3.65 already matches in original pixels.

This module reads Ultralytics only through :mod:`yolo_attn._compat` and builds :class:`yolo_attn.stats.Matches`;
:func:`check` lists what it needs that the installed Ultralytics lacks (``tests/test_architecture.py`` asserts none).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from yolo_attn import _compat
from yolo_attn.stats.matches import IOU_THRESHOLDS, Matches, detect_ap_tail

__all__ = ["ValidationCapture", "ap_tail", "check"]

#: What the capture reads of Ultralytics, resolved through ``_compat`` on use.
_READS = {
    "DetectionValidator": "ultralytics.models.yolo.detect:DetectionValidator",
    "box_iou": "ultralytics.utils.metrics:box_iou",
    "compute_ap": "ultralytics.utils.metrics:compute_ap",
    "scale_boxes": "ultralytics.utils.ops:scale_boxes",
}
_VALIDATOR_METHODS = ("update_metrics", "_process_batch", "_prepare_batch", "_prepare_pred", "match_predictions")


def _read(name: str) -> Any:
    return _compat._resolve(_READS[name])


def _stat_lists(validator: Any) -> dict:
    """The validator's per-image stat lists (see above), wherever this Ultralytics keeps them."""
    for holder in (getattr(validator, "metrics", None), validator):
        stats = getattr(holder, "stats", None)
        if isinstance(stats, dict) and isinstance(stats.get("tp"), list):
            return stats
    raise _compat._missing("the detection validator's per-image stat lists (metrics.stats or stats)", "not found")


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (8.3.65 keeps them on the device)
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _n_predictions(pred: Any) -> int:
    """Predictions of one image: a dict with ``cls`` (8.4) or an (n, 6) tensor (8.3.65)."""
    return len(pred["cls"]) if isinstance(pred, dict) else len(pred)


# ------------------------------------------------------------------------------------------- who matched whom
def _pair_greedy(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(D, T) matched target per detection and threshold (-1: none), 8.4's rule: detections in confidence order,
    each taking its best still unclaimed target (``iou``: targets x detections, zero across classes)."""
    T = len(thresholds)
    out = np.full((iou.shape[1], T), -1, np.int64)
    claimed = np.zeros((iou.shape[0], T), bool)
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(claimed, 0, iou[:, j, None])
        k = available.argmax(0)
        hit = available[k, range(T)] >= thresholds
        out[j] = np.where(hit, k, -1)
        claimed[k, range(T)] |= hit
    return out


def _pair_legacy(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The same, 8.3's rule: all pairs above the threshold by IoU, one per detection, then one per target."""
    out = np.full((iou.shape[1], len(thresholds)), -1, np.int64)
    for i, threshold in enumerate(thresholds.tolist()):
        pairs = np.array(np.nonzero(iou >= threshold)).T
        if pairs.shape[0] > 1:
            pairs = pairs[iou[pairs[:, 0], pairs[:, 1]].argsort()[::-1]]
            pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
            pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        out[pairs[:, 1], i] = pairs[:, 0]
    return out


_RULES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"greedy": _pair_greedy, "legacy": _pair_legacy}


def _matching_rule(match_predictions: Callable, iouv: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The pairing rule that reproduces ``match_predictions``: asked about two targets and two detections of one
    class where the rules disagree (8.4 gives the second detection the second target, 8.3 leaves it unmatched)."""
    import torch

    iou = torch.tensor([[0.6, 0.9], [0.0, 0.7]])
    got = _numpy(match_predictions(torch.zeros(2), torch.zeros(2), iou)).astype(bool)
    thresholds = _numpy(iouv)
    for rule in _RULES.values():
        if np.array_equal(rule(iou.numpy(), thresholds) >= 0, got):
            return rule
    raise RuntimeError(
        f"Ultralytics {_compat.version()}: match_predictions follows neither known rule ({', '.join(_RULES)}); "
        "the size strata cannot tell which target a prediction matched"
    )


def _area(boxes: Any) -> np.ndarray:
    b = _numpy(boxes).reshape(-1, 4).astype(np.float32)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


# --------------------------------------------------------------------------------------------------- the capture
class ValidationCapture:
    """Keeps the per-image matching results of a detection validation (see :class:`yolo_attn.stats.Matches`).

    Register :meth:`on_val_start` as an ``on_val_start`` callback of a YOLO object before ``train`` or ``val``: the
    first validation that is not part of a training epoch is captured (during ``train`` that is the final validation
    of ``best.pt``, whose figures ``train`` returns). Nothing is captured when training runs in DDP subprocesses,
    which do not see the callback: :attr:`captured` stays False.

    Args:
        areas: Also record box areas and matched targets (what size strata need; see the module notes).

    Attributes:
        captured: A validation was captured (complete once it returned).
        images: Per image: (file, tp (n, T) bool, conf (n,), pred_cls (n,), target_cls (g,)), then with ``areas``
            (target areas (g,), prediction areas (n,), matched target within the image (n, T), -1 for none).
        root: The dataset root the image ids are made relative to.
        names: Class names of the validated model.
        error: Why the areas could not be captured (then :meth:`matches` raises), or None.
    """

    def __init__(self, areas: bool = True) -> None:
        self.areas = areas
        self.captured = False
        self.images: list[tuple] = []
        self.root: str | None = None
        self.names: dict | None = None
        self.iou_thresholds: Any = None
        self.error: str | None = None
        self._rule: Callable | None = None

    def on_val_start(self, validator: Any) -> None:
        """The callback: wrap this validator's ``update_metrics`` unless the validation is part of training."""
        if self.captured or getattr(validator, "training", False):
            return
        if not hasattr(validator, "_process_batch"):  # not a detection validator (classification...)
            return
        self.captured = True
        self.images, self.error = [], None
        data = getattr(validator, "data", None) or {}
        self.root = str(data.get("path")) if data.get("path") else None
        iouv = getattr(validator, "iouv", None)
        self.iou_thresholds = _numpy(iouv).astype("float64") if iouv is not None else None
        if self.areas:
            try:
                missing = [m for m in _VALIDATOR_METHODS if not callable(getattr(validator, m, None))]
                if missing or iouv is None:
                    raise RuntimeError(f"the validator lacks {', '.join(missing) or 'iouv'}")
                self._rule = _matching_rule(validator.match_predictions, iouv)
            except Exception as e:
                self.error = f"box areas not captured: {type(e).__name__}: {e}"
        original = validator.update_metrics

        def update_metrics(preds: Any, batch: dict) -> None:
            stats = _stat_lists(validator)
            n0 = len(stats["tp"])
            original(preds, batch)
            boxes = None
            if self.areas and self.error is None:
                try:
                    boxes = self._boxes(validator, preds, batch)
                except Exception as e:  # keep the validation going; matches() reports it
                    self.error = f"box areas not captured: {type(e).__name__}: {e}"
            self._take(stats, n0, preds, batch, boxes)
            if self.names is None:
                names = getattr(validator, "names", None) or getattr(getattr(validator, "metrics", None), "names", None)
                self.names = dict(names) if names else None

        validator.update_metrics = update_metrics  # this instance only: the class and other validators are untouched

    def _boxes(self, validator: Any, preds: Any, batch: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image of the batch: target areas, prediction areas (original pixels), matched target per threshold."""
        box_iou, scale_boxes = _read("box_iou"), _read("scale_boxes")
        thresholds = _numpy(validator.iouv)
        out = []
        for si, pred in enumerate(preds):
            pb = validator._prepare_batch(si, batch)
            t_cls = pb["cls"]
            if isinstance(pred, dict):  # 8.4: matched in the letterboxed image; areas scaled back to the original
                t_box, p_box, p_cls = pb["bboxes"], pred["bboxes"], pred["cls"]

                def native(b: Any, pb: dict = pb) -> Any:
                    return (
                        scale_boxes(pb["imgsz"], b.clone(), pb["ori_shape"], ratio_pad=pb["ratio_pad"]) if len(b) else b
                    )

                t_nat, p_nat = native(t_box), native(p_box)
            else:  # 8.3.65: targets and predictions are matched in original pixels already
                predn = validator._prepare_pred(pred, pb) if len(pred) else pred
                t_box, p_box, p_cls = pb["bbox"], predn[:, :4], predn[:, 5]
                t_nat, p_nat = t_box, p_box
            matched = np.full((len(p_cls), len(thresholds)), -1, np.int64)
            if len(t_cls) and len(p_cls):
                iou = box_iou(t_box, p_box) * (t_cls[:, None] == p_cls)  # as match_predictions: zero across classes
                matched = self._rule(_numpy(iou), thresholds)
            out.append((_area(t_nat), _area(p_nat), matched))
        return out

    def _take(self, stats: dict, n0: int, preds: Any, batch: dict, boxes: list | None = None) -> None:
        new = len(stats["tp"]) - n0
        bi = _numpy(batch["batch_idx"]).reshape(-1)
        has_entry = [_n_predictions(p) > 0 or bool((bi == si).sum()) for si, p in enumerate(preds)]
        if new == len(preds):  # one entry per image (8.4)
            has_entry = [True] * len(preds)
        elif new != sum(has_entry):
            raise RuntimeError(
                f"Ultralytics {_compat.version()}: the validator added {new} stat entries for {len(preds)} images "
                f"({sum(has_entry)} with predictions or labels); cannot tell which image each belongs to"
            )
        k = n0
        for si, entry in enumerate(has_entry):
            file = str(batch["im_file"][si])
            if entry:
                tp, conf, cls, tcls = (_numpy(stats[key][k]) for key in ("tp", "conf", "pred_cls", "target_cls"))
                k += 1
            else:
                n_thr = len(self.iou_thresholds) if self.iou_thresholds is not None else 10
                tp, conf, cls, tcls = np.zeros((0, n_thr), bool), np.zeros(0), np.zeros(0), np.zeros(0)
            image = (file, tp.astype(bool), conf.reshape(-1), cls.reshape(-1), tcls.reshape(-1))
            if boxes is not None and self.error is None:
                t_area, p_area, matched = boxes[si]
                if matched.shape != image[1].shape or not np.array_equal(matched >= 0, image[1]):
                    self.error = (
                        f"box areas not captured: the true positives recomputed for {file} differ from the "
                        f"validator's (Ultralytics {_compat.version()}: has its matching changed?)"
                    )
                image += (t_area, p_area, matched)
            self.images.append(image)

    def image_ids(self) -> list[str]:
        """Each image's file, relative to the dataset root when it lies inside it."""
        out = []
        for file, *_ in self.images:
            p = Path(file)
            if self.root:
                try:
                    p = p.resolve().relative_to(Path(self.root).resolve())
                except ValueError:
                    pass
            out.append(p.as_posix())
        return out

    def matches(self) -> Matches | None:
        """The captured validation as :class:`yolo_attn.stats.Matches` (None when nothing was captured).

        Raises:
            RuntimeError: the areas were asked for but could not be captured (:attr:`error` says why).
        """
        if not self.captured or not self.images:
            return None
        if self.areas and self.error is not None:
            raise RuntimeError(self.error)
        columns = list(zip(*self.images))
        areas = {}
        if self.areas:
            areas = {"target_area": columns[5], "pred_area": columns[6], "matched_target": columns[7]}
        thr = self.iou_thresholds if self.iou_thresholds is not None else IOU_THRESHOLDS
        return Matches.from_images(
            list(columns[1]),
            list(columns[2]),
            list(columns[3]),
            list(columns[4]),
            iou_thresholds=thr,
            names=self.names,
            image_ids=self.image_ids(),
            ap_tail=ap_tail(),
            **areas,
        )


def ap_tail() -> str:
    """How the installed Ultralytics ends the precision-recall curve (:data:`yolo_attn.stats.AP_TAILS`)."""
    _compat.restore_numpy_trapz()  # 8.3's compute_ap calls np.trapz, which numpy 2.4 removed
    try:
        return detect_ap_tail(_read("compute_ap"))
    except AttributeError as e:
        raise RuntimeError(
            f"Ultralytics {_compat.version()}'s compute_ap failed ({e}): call yolo_attn.register() first"
        ) from e


def check() -> list[str]:
    """What the capture reads of the installed Ultralytics that it lacks (empty: everything is there), including
    whether its ``match_predictions`` follows a pairing rule the capture knows."""
    problems = []
    try:
        validator = _read("DetectionValidator")
        for attr in _VALIDATOR_METHODS:
            if not callable(getattr(validator, attr, None)):
                problems.append(f"DetectionValidator.{attr}: missing in Ultralytics {_compat.version()}")
        for name in ("box_iou", "compute_ap", "scale_boxes"):
            _read(name)
    except ImportError as e:
        return [*problems, f"validation capture: {e}"]
    if not problems:
        import torch

        probe = type("Probe", (), {"iouv": torch.linspace(0.5, 0.95, 10)})()
        try:
            _matching_rule(lambda *a: validator.match_predictions(probe, *a), probe.iouv)
        except RuntimeError as e:
            problems.append(str(e))
    return problems
