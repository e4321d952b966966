"""The report's explain figures: each variant beside its baseline on the same few validation images (issue 23).

Per variant configuration, the pair of the lowest seed whose two runs both left their trained weights
(``RunRecord.weights``, relative to the store) is drawn by :func:`yolo_attn.explain.explain` (detections, EigenCAM,
each block's own view), baseline on the top row, variant below, at the run's image size, on the first validation
images of its dataset (:func:`yolo_attn.explain.validation_images`: sorted, so every report picks the same ones).
Figures go to ``<report>/explain/<config>/<image>.png``. A configuration without weights (Ray runs without
``--ray-weights``, weights deleted since) gets a note instead; explaining never stops the report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolo_attn.report.summary import ConfigSummary, RunView, stem
from yolo_attn.store import RunRecord

__all__ = ["ExplainFigures", "explain_figures"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainFigures:
    """The explain figures of one variant configuration, or why there are none.

    Attributes:
        config: The configuration's label (``bot@neck``).
        group: Its comparison group.
        seed: The seed of the pair drawn.
        paths: The PNG files (one per image), empty with a note.
        note: Why there are no figures, else None.
    """

    config: str
    group: str
    seed: int | None = None
    paths: tuple[Path, ...] = ()
    note: str | None = None


def _weights(rec: RunRecord, folder: Path) -> Path | None:
    if not rec.weights:
        return None
    p = Path(rec.weights)
    p = p if p.is_absolute() else folder / p
    return p if p.is_file() else None


def _data(data: str | None, folder: Path) -> str | None:
    if not data:
        return None
    for p in (Path(data), folder / data):
        if p.is_file():
            return str(p)
    return data  # a dataset Ultralytics resolves by name (coco128.yaml)


def _model(weights: Path | None, loaded: dict[Path, Any]) -> Any:
    if weights is None:  # _draw is only called for pairs whose two runs have weights
        raise FileNotFoundError("weights missing")
    if weights not in loaded:
        from yolo_attn._compat import YOLO

        loaded[weights] = YOLO(str(weights)).model
    return loaded[weights]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text).strip("_") or "config"


def explain_figures(
    summary: Sequence[ConfigSummary], folder: str | Path, out: str | Path, n_images: int = 4
) -> Mapping[tuple[str, str], ExplainFigures]:
    """Draw every variant configuration's figures; (group, config) -> :class:`ExplainFigures`.

    Args:
        summary: The configurations (variants are drawn; baselines appear in their variants' figures).
        folder: The store folder (records' weights are relative to it).
        out: The report folder; figures go to ``out/explain/<config>/``.
        n_images: Validation images per configuration (0: none, nothing is drawn).
    """
    if n_images <= 0:
        return {}
    folder, out = Path(folder), Path(out)
    result: dict[tuple[str, str], ExplainFigures] = {}
    used: set[str] = set()
    images: dict[str | None, list[Path] | str] = {}
    loaded: dict[Path, Any] = {}  # the baseline of a seed is drawn beside every variant: loaded once
    for c in summary:
        if c.baseline:
            continue
        pairs = sorted(
            (v for v in c.runs if v.baseline is not None), key=lambda v: (v.record.seed is None, v.record.seed or 0)
        )
        pair = next((v for v in pairs if _weights(v.record, folder) and _weights(v.baseline, folder)), None)
        if pair is None:
            why = (
                "no same-seed pair with a baseline"
                if not pairs
                else "no trained weights kept in the store for a same-seed pair (runs on Ray without --ray-weights, or the files were deleted)"
            )
            result[(c.group, c.config)] = ExplainFigures(c.config, c.group, note=why)
            continue
        result[(c.group, c.config)] = _draw(c, pair, folder, out, n_images, used, images, loaded)
    return result


def _draw(
    c: ConfigSummary,
    pair: RunView,
    folder: Path,
    out: Path,
    n_images: int,
    used: set[str],
    images: dict[str | None, list[Path] | str],
    loaded: dict[Path, Any],
) -> ExplainFigures:
    from yolo_attn.explain import explain, validation_images  # torch and Ultralytics: only when there is a figure

    rec, base = pair.record, pair.baseline
    if base is None:  # explain_figures passes pairs only
        raise ValueError(f"{rec.name} has no baseline to draw beside it")
    if c.data not in images:
        try:
            images[c.data] = validation_images(_data(c.data, folder) or "", n_images)
        except Exception as e:  # the dataset moved or is not on this machine: the report goes on
            images[c.data] = f"validation images of {c.data} unavailable ({type(e).__name__}: {e})"
    files = images[c.data]
    if isinstance(files, str):
        return ExplainFigures(c.config, c.group, rec.seed, note=files)
    slug = _slug(c.config)
    k = 2
    while slug in used:
        slug, k = f"{_slug(c.config)}-{k}", k + 1
    used.add(slug)
    imgsz = rec.imgsz or (rec.train or {}).get("imgsz") or 640
    names = [f"{stem(base)} (baseline), seed {base.seed}", f"{c.config}, seed {rec.seed}"]
    try:
        models = [_model(_weights(r, folder), loaded) for r in (base, rec)]
        paths = explain(models, files, out / "explain" / slug, imgsz=int(imgsz), max_images=n_images, names=names)
    except Exception as e:  # a figure is an extra: one that fails is named in the report, which still gets written
        LOGGER.warning("explain figures of %s failed: %s", c.config, e)
        return ExplainFigures(c.config, c.group, rec.seed, note=f"explain failed ({type(e).__name__}: {e})")
    return ExplainFigures(c.config, c.group, rec.seed, tuple(paths))
