"""How much each inserted block was used, over the seeds of a configuration, from the run records (issue 23).

Every finished run records one :class:`yolo_attn.explain.BlockUse` per registered block (``RunRecord.utilisation``:
the ratio of the block's residual branch output to its input on a few validation images, and its learned gates).
:func:`block_uses` gathers them per block row over a configuration's seeds (:class:`BlockUseSummary`) and
:func:`use_line` writes the one line the verdict table shows (``branch 2.1% of input at P3, 4.0% at P4``), so "no
detectable difference" comes with whether the block was used at all.

The typed :class:`~yolo_attn.explain.BlockUse` is read lazily: importing it loads torch, which a report of a store
without blocks does not need.

Examples:
    >>> from yolo_attn.report.summary import RunView
    >>> from yolo_attn.store import RunRecord
    >>> use = {"row": 9, "block": "BoT", "family": "bot", "level": 5, "ratio_mean": 0.02, "ratio_std": 0.004,
    ...        "n_images": 8, "gates": {"bn_gamma": 0.01}}
    >>> runs = [RunView(RunRecord(f"k{s}", status="done", seed=s, utilisation=[{**use, "ratio_mean": r}]))
    ...         for s, r in ((0, 0.02), (1, 0.04))]
    >>> (u,) = block_uses(runs)
    >>> u.row, u.level, round(u.ratio.mean, 3), u.seeds
    (9, 5, 0.03, 2)
    >>> use_line(runs)
    'bot: branch 3.0% of input at P5'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from yolo_attn.report.summary import RunView, Spread

__all__ = ["BlockUseSummary", "block_uses", "use_line"]


@dataclass(frozen=True)
class BlockUseSummary:
    """One block row of a configuration over its seeds.

    Attributes:
        row: YAML row of the block (None for a bare block).
        block: Registered block name.
        family: Its family.
        level: Pyramid level of its attention (3 = stride 8), None when not known.
        ratio: Per seed, the mean over images of ``||branch|| / ||input||``.
        image_sd: Per seed, the standard deviation of that ratio over images.
        n_images: Images measured per run (the largest over the seeds).
        gates: Gate name -> its value per seed (``bn_gamma``, ``offset_px_mean``...).
        notes: Why a seed's ratio is missing, where it is.
    """

    row: int | None
    block: str
    family: str | None
    level: int | None
    ratio: Spread
    image_sd: Spread
    n_images: int
    gates: Mapping[str, Spread] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def seeds(self) -> int:
        return len(self.ratio.values)


def block_uses(runs: Sequence[RunView]) -> list[BlockUseSummary]:
    """The blocks of ``runs`` (a configuration's runs), one per block row, over the runs that measured them."""
    recorded = [u for v in runs for u in (v.record.utilisation or [])]
    if not recorded:
        return []
    from yolo_attn.explain.probe import BlockUse  # typed, but loads torch: only when there is something to read

    by_row: dict[tuple, list] = defaultdict(list)
    for v in runs:
        for d in v.record.utilisation or []:
            u = BlockUse.from_dict(d)
            by_row[(u.row, u.block)].append(u)
    out = []
    for (row, block), uses in sorted(by_row.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1])):
        names = list(dict.fromkeys(k for u in uses for k in (u.gates or {})))
        out.append(
            BlockUseSummary(
                row=row,
                block=block,
                family=uses[0].family,
                level=next((u.level for u in uses if u.level is not None), None),
                ratio=Spread.of(u.ratio_mean for u in uses),
                image_sd=Spread.of(u.ratio_std for u in uses),
                n_images=max((u.n_images for u in uses), default=0),
                gates={k: Spread.of((u.gates or {}).get(k) for u in uses) for k in names},
                notes=tuple(dict.fromkeys(u.note for u in uses if u.ratio_mean is None and u.note)),
            )
        )
    return out


def use_line(runs: Sequence[RunView]) -> str:
    """One line per configuration: ``bot: branch 2.1% of input at P3, 4.0% at P4`` (mean over seeds), ``""``
    without recorded blocks."""
    uses = block_uses(runs)
    if not uses:
        return ""
    parts = []
    for i, u in enumerate(uses):
        where = f"P{u.level}" if u.level is not None else f"row {u.row}"
        of = " of input" if i == 0 else ""
        parts.append(
            f"{100 * u.ratio.mean:.1f}%{of} at {where}" if u.ratio.mean is not None else f"not measured at {where}"
        )
    family = "/".join(dict.fromkeys(u.family or u.block for u in uses))
    return f"{family}: branch " + ", ".join(parts)
