"""Cross-check against the COCO evaluation papers cite: the same predictions scored by Ultralytics and by COCOeval.

:func:`coco_check` validates a weights file on a dataset split with Ultralytics (``save_json=True``, so it writes its
predictions as COCO JSON), builds the ground truth as COCO JSON from the split's YOLO label files (image sizes read
from the images, EXIF orientation applied; boxes in original pixels; ``area = w * h``; ``iscrowd = 0``), scores the
predictions with `faster-coco-eval <https://github.com/MiXaiLL76/faster_coco_eval>`_'s ``COCOeval`` (bbox) and returns
:class:`CocoCheck`: COCOeval's mAP50-95, mAP50 and AP for small / medium / large objects next to Ultralytics'
mAP50-95 and mAP50 for the same predictions. Install the extra: ``pip install 'yolo-attn[coco]'``.

What is made equal, so that only the matching rules differ:

- the predictions: one Ultralytics validation (confidence >= ``conf``, 0.001 by default, at most ``max_det`` = 300 per
  image after NMS) gives both Ultralytics' figures and the JSON COCOeval reads;
- detections per image: COCOeval keeps the 100 best-scoring detections per image by default; here its largest
  ``maxDets`` is the validation's ``max_det``, so it scores every prediction Ultralytics scored;
- categories: the ground truth's ``category_id`` is the one Ultralytics writes for the class (class index + 1 for
  datasets that are not COCO's own), read from the validator;
- images: those Ultralytics validated, including images without labels.

What still differs is each tool's own rule: COCOeval matches detections to labels greedily in score order and
averages a step precision envelope at 101 recall points; Ultralytics matches by IoU over the whole image first and
integrates an interpolated curve (8.3 draws it on from the last recall reached to recall 1, crediting recall no
prediction reached; 8.4 stops where COCOeval does); its IoUs are computed in the resized (letterboxed) image, COCOeval's in original
pixels; the JSON rounds boxes to 0.001 px and scores to 1e-5. The README quotes the difference measured on COCO128.

Examples:
    >>> label_boxes(["0 0.5 0.5 0.2 0.4", "1 0.1 0.1 0.3 0.1 0.2 0.3"], width=100, height=50)  # box, then polygon
    [(0, [40.0, 15.0, 20.0, 20.0]), (1, [10.0, 5.0, 20.0, 10.0])]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CocoCheck", "coco_check", "coco_ground_truth", "format_check", "image_size", "label_boxes", "score_coco"]

LOGGER = logging.getLogger("yolo_attn")

#: Metrics of :class:`CocoCheck` printed by :func:`format_check`: (attribute, label, Ultralytics' attribute or None).
_ROWS = (
    ("map50_95", "mAP50-95", "ultralytics_map50_95"),
    ("map50", "mAP50", "ultralytics_map50"),
    ("ap_small", "AP small (< 32² px)", "ours_ap_small"),
    ("ap_medium", "AP medium", "ours_ap_medium"),
    ("ap_large", "AP large (> 96² px)", "ours_ap_large"),
)


@dataclass(frozen=True)
class CocoCheck:
    """One validation scored by faster-coco-eval's COCOeval and by Ultralytics (:func:`coco_check`).

    Attributes:
        weights: The weights validated.
        data: The dataset YAML.
        split: Its split validated.
        imgsz: Validation image size.
        n_images: Images validated (all of them in the ground truth, with or without labels).
        n_labels: Ground-truth boxes.
        n_predictions: Predictions in Ultralytics' JSON (what both scored).
        max_det: Predictions kept per image (Ultralytics' NMS; COCOeval's largest ``maxDets``).
        conf: Confidence threshold of the validation.
        map50_95: COCOeval's AP at IoU 0.50:0.95 (all areas).
        map50: COCOeval's AP at IoU 0.50.
        ap_small: COCOeval's AP50-95 for boxes of area < 32² px (None: no such label).
        ap_medium: ... 32² to 96² px.
        ap_large: ... > 96² px.
        ultralytics_map50_95: Ultralytics' mAP50-95 of the same validation.
        ultralytics_map50: Ultralytics' mAP50.
        ours_ap_small: yolo_attn's AP50-95 of the small stratum from the same validation's per-image matches
            (:mod:`yolo_attn.capture`, :func:`yolo_attn.stats.map_scores` with ``stratum``: Ultralytics' matching and
            AP, COCO's area bounds and ignore rules), what the report's size strata use; None: no such label.
        ours_ap_medium: ... medium.
        ours_ap_large: ... large.
    """

    weights: str
    data: str
    split: str
    imgsz: int
    n_images: int
    n_labels: int
    n_predictions: int
    max_det: int
    conf: float
    map50_95: float
    map50: float
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    ultralytics_map50_95: float
    ultralytics_map50: float
    ours_ap_small: float | None = None
    ours_ap_medium: float | None = None
    ours_ap_large: float | None = None

    @property
    def diff_map50_95(self) -> float:
        """COCOeval minus Ultralytics, mAP50-95."""
        return self.map50_95 - self.ultralytics_map50_95

    @property
    def diff_map50(self) -> float:
        """COCOeval minus Ultralytics, mAP50."""
        return self.map50 - self.ultralytics_map50

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "diff_map50_95": self.diff_map50_95, "diff_map50": self.diff_map50}


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as Ultralytics sees it: EXIF orientation applied (a rotated JPEG swaps them)."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112)  # 5-8: rotated by 90 or 270 degrees
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def label_boxes(lines: Sequence[str], width: int, height: int) -> list[tuple[int, list[float]]]:
    """``(class, [x, y, w, h])`` in pixels (top-left corner) for each YOLO label line, as Ultralytics reads them.

    A line is ``class cx cy w h`` (normalised), or ``class x1 y1 x2 y2 ...``: a polygon, boxed by its extremes. Repeated
    lines count once (Ultralytics drops duplicate labels when it checks a dataset).
    """
    rows = []
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        values = [float(v) for v in parts]
        if len(values) < 5:
            raise ValueError(f"label line {line!r} has {len(values)} numbers; a box needs class cx cy w h")
        cls, rest = int(values[0]), values[1:]
        if len(rest) > 4:  # polygon x1 y1 x2 y2 ...
            xs, ys = rest[0::2], rest[1::2]
            x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
        else:
            cx, cy, w, h = rest
            x0, y0 = cx - w / 2, cy - h / 2
        row = (cls, [x0 * width, y0 * height, w * width, h * height])
        if row not in rows:
            rows.append(row)
    return rows


def coco_ground_truth(
    image_files: Sequence[str | os.PathLike],
    label_files: Sequence[str | os.PathLike],
    class_map: Sequence[int],
    names: dict[int, str] | None = None,
) -> tuple[dict, dict[int | str, int]]:
    """COCO ground truth (``images``, ``annotations``, ``categories``) from YOLO label files.

    Args:
        image_files: The images, in validation order (image ids are 1, 2, ... in this order).
        label_files: Each image's label file (a missing file: no labels).
        class_map: Class index -> ``category_id`` (as in the predictions' JSON).
        names: Class index -> name, for the categories.

    Returns:
        The ground truth, and the ``image_id`` Ultralytics' predictions JSON gives each image (its file stem, as an int
        when numeric) -> its image id here.

    Raises:
        ValueError: Two images share that name (their predictions could not be told apart).
    """
    images, annotations, stems = [], [], {}
    for image_id, (img, lbl) in enumerate(zip(image_files, label_files), 1):
        stem = Path(img).stem
        name = int(stem) if stem.isnumeric() else stem
        if name in stems:
            raise ValueError(f"two images are called {stem!r}: Ultralytics' predictions JSON cannot tell them apart")
        stems[name] = image_id
        width, height = image_size(img)
        images.append({"id": image_id, "file_name": Path(img).name, "width": width, "height": height})
        lines = Path(lbl).read_text().splitlines() if Path(lbl).is_file() else []
        for cls, box in label_boxes(lines, width, height):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(class_map[cls]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    names = names or {}
    categories = [{"id": int(cid), "name": str(names.get(i, i))} for i, cid in enumerate(class_map)]
    return {"images": images, "annotations": annotations, "categories": categories}, stems


def _area_ap(value: float) -> float | None:
    return None if value is None or value < 0 else float(value)  # COCOeval writes -1 for an area without labels


def score_coco(ground_truth: dict, predictions: list[dict], max_det: int = 100) -> dict[str, float | None]:
    """COCOeval (faster-coco-eval, bbox) of ``predictions`` against ``ground_truth``, keeping ``max_det`` per image.

    Returns ``map50_95``, ``map50``, ``ap_small``, ``ap_medium`` and ``ap_large`` (None for an area without labels).

    Examples:
        >>> gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
        ...                        "iscrowd": 0}]}
        >>> r = score_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}])
        >>> r["map50_95"], r["ap_medium"], r["ap_small"]
        (1.0, 1.0, None)
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError("the COCO cross-check needs faster-coco-eval: pip install 'yolo-attn[coco]'") from e

    quiet = LOGGER.debug
    gt = COCO(ground_truth, print_function=quiet)
    dt = gt.loadRes(predictions)
    ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=quiet)
    ev.params.imgIds = sorted(img["id"] for img in ground_truth["images"])
    ev.params.maxDets = sorted({1, 10, int(max_det)})
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats_as_dict
    return {
        "map50_95": max(float(s["AP_all"]), 0.0),
        "map50": max(float(s["AP_50"]), 0.0),
        "ap_small": _area_ap(s.get("AP_small")),
        "ap_medium": _area_ap(s.get("AP_medium")),
        "ap_large": _area_ap(s.get("AP_large")),
    }


def coco_check(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "val",
    imgsz: int = 640,
    batch: int = 16,
    device: str = "cpu",
    workers: int = 0,
    keep: str | os.PathLike | None = None,
    callbacks: Mapping[str, Callable[[Any], None]] | None = None,
) -> CocoCheck:
    """Validate ``weights`` on ``data``'s ``split`` with Ultralytics, then score the same predictions with COCOeval.

    Args:
        weights: A trained ``.pt`` file (attention variants included).
        data: Dataset YAML.
        split: Split to validate (``val``, ``test``...).
        imgsz: Validation image size.
        batch: Validation batch size.
        device: Ultralytics device string.
        workers: Dataloader workers.
        keep: Folder that keeps Ultralytics' validation folder (``predictions.json``) and the ground truth
            (``ground_truth.json``); default: a temporary folder, removed afterwards.
        callbacks: More Ultralytics callbacks for the validation (event -> function of the validator).
    """
    import yolo_attn
    from yolo_attn._compat import YOLO, img2label_paths, validator_state
    from yolo_attn.capture import ValidationCapture

    yolo_attn.register()
    seen: dict[str, Any] = {}
    capture = ValidationCapture()
    with tempfile.TemporaryDirectory(prefix="yolo_attn_coco_") as tmp:
        project = Path(keep) if keep is not None else Path(tmp)
        model = YOLO(str(weights))
        model.add_callback("on_val_end", lambda validator: seen.update(validator_state(validator)))
        # the capture first: a caller's callback that wraps the validator's update_metrics too then wraps the
        # capture's, which sees the predictions the caller hands on (what Ultralytics scores)
        model.add_callback("on_val_start", capture.on_val_start)
        for event, fn in (callbacks or {}).items():
            model.add_callback(event, fn)
        metrics = model.val(
            data=str(data),
            split=split,
            imgsz=imgsz,
            batch=batch,
            device=device,
            workers=workers,
            save_json=True,
            plots=False,
            verbose=False,
            project=str(project.resolve()),
            name="val",
            exist_ok=True,
        )
        if not seen.get("im_files") or seen.get("class_map") is None:
            raise RuntimeError(f"the validation of {weights} reported no images or no class map (not a detector?)")
        names = dict(getattr(metrics, "names", None) or model.names)
        labels = img2label_paths(seen["im_files"])
        truth, stems = coco_ground_truth(seen["im_files"], labels, seen["class_map"], names)
        pred_file = seen["save_dir"] / "predictions.json"
        predictions = json.loads(pred_file.read_text()) if pred_file.is_file() else []  # none written: none made
        for p in predictions:  # Ultralytics names an image by its stem (an int when numeric); ours are numbered
            p["image_id"] = stems[p["image_id"]]
        if keep is not None:
            (seen["save_dir"] / "ground_truth.json").write_text(json.dumps(truth))
        max_det = int(seen["max_det"] or 300)
        coco = score_coco(truth, predictions, max_det=max_det)
    return CocoCheck(
        weights=str(weights),
        data=str(data),
        split=split,
        imgsz=int(imgsz),
        n_images=len(truth["images"]),
        n_labels=len(truth["annotations"]),
        n_predictions=len(predictions),
        max_det=max_det,
        conf=float(seen["conf"] if seen["conf"] is not None else 0.001),
        ultralytics_map50_95=float(metrics.box.map),
        ultralytics_map50=float(metrics.box.map50),
        **coco,
        **_our_strata(capture.matches()),
    )


def _our_strata(matches: Any) -> dict[str, float | None]:
    """AP50-95 per size stratum from the captured matches (None for a stratum without labels)."""
    from yolo_attn.stats import STRATA, map_scores

    out: dict[str, float | None] = {}
    for s in STRATA:
        scores = map_scores(matches, stratum=s) if matches is not None else None
        out[f"ours_ap_{s}"] = float(scores.map50_95) if scores is not None and len(scores.classes) else None
    return out


def format_check(result: CocoCheck) -> str:
    """A Markdown table: each metric from faster-coco-eval and from Ultralytics (the size strata: yolo_attn's, from the
    same validation's matches), and their difference."""
    from yolo_attn.markdown import table

    rows = []
    for attr, label, ours in _ROWS:
        v = getattr(result, attr)
        u = getattr(result, ours) if ours else None
        rows.append(
            [
                label,
                "n/a" if v is None else f"{v:.4f}",
                "-" if u is None else f"{u:.4f}",
                "-" if u is None or v is None else f"{v - u:+.4f}",
            ]
        )
    head = (
        f"{result.weights} on {result.data} ({result.split}, {result.n_images} images, {result.n_labels} labels), "
        f"imgsz {result.imgsz}: {result.n_predictions} predictions (conf >= {result.conf:g}, <= {result.max_det} per "
        f"image), scored by both\n\n"
    )
    return head + table(["metric", "faster-coco-eval", "Ultralytics / yolo_attn strata", "difference"], rows)
