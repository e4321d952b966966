"""Typed summaries of a sweep: runs beside their same-seed baseline, configurations aggregated over seeds, and the
statistics of :mod:`yolo_attn.stats` attached to each variant configuration.

Three steps, each returning new frozen objects (nothing is extended in place):

1. :func:`run_views`: every record as a :class:`RunView` (the record, the baseline of the same seed, data, training
   overrides and starting weights, and the differences against it).
2. :func:`summarize`: one :class:`ConfigSummary` per configuration (base model, block, position, arguments,
   comparison group), with a :class:`Spread` over seeds of every scalar the tables and plots show.
3. :func:`compare`: the same summaries with the image interval (:class:`yolo_attn.stats.PairedBootstrap`), the seed
   interval (:class:`yolo_attn.stats.SeedInterval`) and the :class:`yolo_attn.stats.Verdict` of each metric.

Examples:
    >>> from yolo_attn.store import RunRecord
    >>> recs = [RunRecord(f"b{s}", name="yolov8n", status="done", baseline=True, seed=s, map50_95=0.30 + s / 100)
    ...         for s in (0, 1)]
    >>> recs += [RunRecord(f"v{s}", name="yolov8n-bot", status="done", family="bot", block="BoT", position="neck",
    ...                    seed=s, map50_95=0.33 + s / 100) for s in (0, 1)]
    >>> base, bot = summarize(recs)
    >>> base.config, bot.config, bot.seeds, round(bot.delta["map50_95"].mean, 4)
    ('yolov8n (baseline)', 'bot@neck', 2, 0.03)
    >>> compare([base, bot], matches={})[1].unavailable
    'no per-image file'
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from yolo_attn.stats import (
    STRATA,
    Interval,
    Matches,
    PairedBootstrap,
    SeedInterval,
    StratumComparison,
    Verdict,
    map_scores,
    paired_bootstrap,
)
from yolo_attn.stats import seed_interval as _seed_interval
from yolo_attn.stats import verdict as _verdict
from yolo_attn.store import ResultStore, RunRecord

__all__ = [
    "DELTAS",
    "METRICS",
    "ConfigSummary",
    "RunView",
    "Spread",
    "StratumSummary",
    "compare",
    "finite",
    "group",
    "load_matches",
    "load_records",
    "pareto_front",
    "run_views",
    "start",
    "start_label",
    "stem",
    "stratum_scores",
    "summarize",
]

#: The metrics that get intervals and verdicts: record field -> name in tables.
METRICS = {"map50_95": "mAP50-95", "map50": "mAP50"}
NO_FILE = "no per-image file"
NO_BASELINE = "no baseline of the same seed"


def _latency(batch: int) -> Callable[[RunRecord], Any]:
    return lambda r: r.latency_ms.get(batch)


def _peak(batch: int) -> Callable[[RunRecord], Any]:
    return lambda r: r.peak_mb.get(batch)


#: The scalars a run is compared on against its same-seed baseline (name -> how to read it from a record); the
#: names are the columns ``d_<name>`` of ``results.csv``.
DELTAS: dict[str, Callable[[RunRecord], Any]] = {
    "map50_95": lambda r: r.map50_95,
    "map50": lambda r: r.map50,
    "gflops": lambda r: r.gflops,
    "params": lambda r: r.params,
    "latency_ms_b1": _latency(1),
}


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Spread:
    """One scalar of a configuration over its seeds (missing and non-finite values left out).

    Examples:
        >>> s = Spread.of([0.30, None, 0.34])
        >>> s.values, round(s.mean, 2), round(s.std, 4)
        ((0.3, 0.34), 0.32, 0.0283)
        >>> Spread.of([None]).mean is None and Spread.of([1.0]).std is None
        True
    """

    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Iterable[Any]) -> Spread:
        return cls(tuple(x for x in map(finite, values) if x is not None))

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (from 2 values)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class RunView:
    """A run as the report sees it: its record, the baseline it is compared with, and the differences.

    Attributes:
        record: The run's record.
        baseline: The finished baseline of the same seed, data, training overrides and starting weights (the same
            base model when there is one), None for failed runs and runs without one. A baseline is its own.
        deltas: Scalar name (:data:`DELTAS`) -> the run's value minus the baseline's, where both are numbers.
        bootstrap: The run against its own baseline over image resamples (set by :func:`compare`), or why not.
        strata: COCO size stratum (:data:`yolo_attn.stats.STRATA`) -> the run's AP50-95 on the objects of that size
            (set by :func:`compare`; only strata with targets); None when its per-image file is missing or has no box
            areas (format 1).
    """

    record: RunRecord
    baseline: RunRecord | None = None
    deltas: Mapping[str, float] = field(default_factory=dict)
    bootstrap: PairedBootstrap | str | None = None
    strata: Mapping[str, float] | None = None

    @property
    def key(self) -> str:
        return self.record.key

    def image_interval(self, metric: str) -> Interval | None:
        """The 95% (or the level compared at) image interval of the run's own difference, when it has one."""
        b = self.bootstrap
        return getattr(b, metric).interval if isinstance(b, PairedBootstrap) else None


@dataclass(frozen=True)
class StratumSummary:
    """A variant against its baselines on the objects of one COCO size stratum (small, medium, large).

    Attributes:
        name: ``"small"``, ``"medium"`` or ``"large"`` (COCO's area bounds 32² and 96², original image pixels).
        comparison: The paired bootstrap's comparison for the stratum (targets, both models' mAP, image interval).
        delta: The same-seed differences of the stratum's AP50-95 over seeds (from each run's own per-image file).
        seed_interval: t-interval over those differences (from 3 seeds), else None.
        verdict: From the image interval and the seed interval, as for the overall metric.
    """

    name: str
    comparison: StratumComparison
    delta: Spread
    seed_interval: SeedInterval | None
    verdict: Verdict

    @property
    def n_targets(self) -> int:
        return self.comparison.n_targets

    @property
    def image_interval(self) -> Interval:
        return self.comparison.map50_95.interval


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration (base model, block, position, arguments, comparison group), aggregated over its seeds.

    :func:`summarize` fills the identity, the runs and the spreads; :func:`compare` returns a copy with the
    statistics (variants only).

    Attributes:
        config: Label in tables (``dat@neck``, ``yolov8n (baseline)``, ``bot@neck[4]`` with extra arguments).
        baseline: The configuration is a baseline.
        base: Stem of the base model (``yolov8n``).
        family: Block family (the block's name when the record has no family), None for baselines.
        block: Block name.
        position: Insertion point.
        args: Extra block arguments.
        group: Comparison group: runs are compared only within one (same data, training overrides and start).
        data: Dataset YAML.
        train: Training overrides.
        start: Starting weights: ``run:<key>`` (a run of the store trained them), a file, or None (random init).
        runs: The finished runs, in store order.
        map50 ... train_s: The scalars over seeds.
        bench_batch: The larger benchmark batch when it is not 1 (``latency_bn``, ``peak_bn`` are at it).
        delta: Metric (:data:`METRICS`) -> the same-seed differences over seeds.
        pairs: Same-seed (baseline, variant) pairs compared (variants, after :func:`compare`).
        bootstrap: The paired bootstrap over images of all pairs (None when unavailable).
        seed_intervals: Metric -> t-interval over the same-seed differences (from 3 seeds).
        verdicts: Metric -> verdict (only with a bootstrap).
        unavailable: Why there is no image interval (no per-image file, no baseline, other images...), else None.
        strata: Per COCO size stratum with targets, the comparison, seed interval and verdict (variants whose runs'
            per-image files all carry box areas; else empty).
        margin: The equivalence margin the verdicts were called with (None: no equivalence call).
    """

    config: str
    baseline: bool
    base: str
    family: str | None
    block: str | None
    position: str | None
    args: tuple
    group: str
    data: str | None
    train: Mapping[str, Any]
    start: str | None
    runs: tuple[RunView, ...]
    map50: Spread
    map50_95: Spread
    gflops: Spread
    gflops_ultralytics: Spread
    params: Spread
    latency_ms_b1: Spread
    peak_mb_b1: Spread
    wall_s: Spread
    train_s: Spread
    bench_batch: int | None
    latency_bn: Spread
    peak_bn: Spread
    delta: Mapping[str, Spread]
    pairs: int | None = None
    bootstrap: PairedBootstrap | None = None
    seed_intervals: Mapping[str, SeedInterval] = field(default_factory=dict)
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    unavailable: str | None = None
    strata: tuple[StratumSummary, ...] = ()
    margin: float | None = None

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def seed_list(self) -> list[int | None]:
        return [r.record.seed for r in self.runs]

    @property
    def first(self) -> RunRecord:
        """The first run's record: settings every run of the configuration shares (GFLOPs size, bench device)."""
        return self.runs[0].record

    @property
    def n_images(self) -> int | None:
        return self.bootstrap.n_images if self.bootstrap is not None else None

    @property
    def classes(self) -> tuple:
        """Per-class comparisons (:class:`yolo_attn.stats.ClassComparison`), when the images were compared."""
        return tuple(self.bootstrap.classes) if self.bootstrap is not None else ()

    def image_interval(self, metric: str) -> Interval | None:
        """Interval over image resamples of the mean same-seed difference."""
        return getattr(self.bootstrap, metric).interval if self.bootstrap is not None else None

    def detectable(self, metric: str) -> float | None:
        """The smallest difference this sweep could detect: the half-width of the wider interval."""
        iv = self.image_interval(metric)
        if iv is None:
            return None
        s = self.seed_intervals.get(metric)
        return max(iv.half_width, s.half_width if s is not None else 0.0)

    def limited_by(self, metric: str) -> str | None:
        """``"seeds"`` or ``"images"``: the noise that sets :meth:`detectable`."""
        iv = self.image_interval(metric)
        if iv is None:
            return None
        s = self.seed_intervals.get(metric)
        return "seeds" if s is not None and s.half_width > iv.half_width else "images"


# --------------------------------------------------------------------------------------------------- store
def load_records(store: str | Path) -> list[RunRecord]:
    """Latest record per run from a sweep folder or a ``results.jsonl`` path, in file order."""
    path = ResultStore(store).path
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path} (run `yolo-attn ablate ... --out {path.parent}` first)")
    return list(ResultStore(path).records().values())


def load_matches(store: str | Path, records: Sequence[RunRecord]) -> tuple[dict[str, Matches], list[str]]:
    """The per-image matches of every finished run that has them, and what is wrong with the others.

    A file that does not reproduce the mAP recorded for its run (beyond 1e-6) is still used, and named in the notes.

    Returns:
        (run key -> :class:`yolo_attn.stats.Matches`, notes).
    """
    st = ResultStore(store)
    out, notes = {}, []
    for rec in records:
        if not rec.ok:
            continue
        path = st.artifact_path(rec, "matches")
        if path is None:
            continue
        try:
            m = Matches.load(path)
        except (OSError, ValueError, KeyError) as e:
            notes.append(f"`{rec.name}` (seed {rec.seed}): per-image file {path.name} unreadable ({e})")
            continue
        s = map_scores(m)
        for k, got in (("map50", s.map50), ("map50_95", s.map50_95)):
            want = getattr(rec, k)
            if want is not None and abs(got - want) > 1e-6:
                notes.append(
                    f"`{rec.name}` (seed {rec.seed}): its per-image file gives {METRICS[k]} {got:.6f}, the record "
                    f"{want:.6f}"
                )
        out[rec.key] = m
    return out, notes


# --------------------------------------------------------------------------------------------------- identity
def stem(r: RunRecord) -> str:
    """The base model's name without folder and suffix (``yolov8n``)."""
    return Path(str(r.base or r.model or r.name)).stem


def start(r: RunRecord) -> str | None:
    """The starting weights: the run that trained them (stable when the store moves), else the file."""
    return f"run:{r.pretrained_run}" if r.pretrained_run else r.pretrained


def group(r: RunRecord) -> str:
    """Runs that are comparable: same data, training overrides, starting weights and evaluation split (a variant
    scored on ``test`` is never paired with a baseline scored on ``val``)."""
    return json.dumps([r.data, r.train, start(r), r.eval_split], sort_keys=True, default=str)


def start_label(start: str | None, names: Mapping[str, str] | None = None) -> str:
    """``random init``, ``from yolov8n.pt`` or ``from run 1a2b3c4d (name)``."""
    if not start:
        return "random init"
    if start.startswith("run:"):
        key = start[4:]
        name = (names or {}).get(key)
        return f"from run {key[:8]}" + (f" ({name})" if name else "")
    return f"from {Path(start).name}"


def _config_label(r: RunRecord) -> str:
    if r.baseline:
        return f"{stem(r)} (baseline)"
    if r.position and r.block:
        extra = r.args or []
        label = f"{r.family or r.block}@{r.position}" + (f"[{','.join(map(str, extra))}]" if extra else "")
        return label + (f"+warm{r.warm_new_blocks}" if r.warm_new_blocks else "")
    return stem(r)


def _as_record(r: RunRecord | Mapping) -> RunRecord:
    return r if isinstance(r, RunRecord) else RunRecord.from_dict(r)


# --------------------------------------------------------------------------------------------------- steps
def run_views(records: Iterable[RunRecord | Mapping]) -> list[RunView]:
    """Every record (failed ones too) with its same-seed baseline and the differences against it."""
    recs = [_as_record(r) for r in records]
    bases: dict[tuple, RunRecord] = {}
    for r in recs:
        if r.baseline and r.ok:
            bases[(group(r), r.seed, stem(r))] = r
            bases.setdefault((group(r), r.seed, None), r)
    out = []
    for r in recs:
        b = (bases.get((group(r), r.seed, stem(r))) or bases.get((group(r), r.seed, None))) if r.ok else None
        if b is None:
            out.append(RunView(r))
            continue
        deltas = {}
        for name, get in DELTAS.items():
            mine, theirs = get(r), get(b)
            if finite(mine) is not None and finite(theirs) is not None:
                deltas[name] = mine - theirs
        out.append(RunView(r, b, deltas))
    return out


def summarize(records: Iterable[RunRecord | Mapping | RunView]) -> list[ConfigSummary]:
    """One summary per configuration (base model, block, position, args, comparison group), aggregated over seeds.

    Only finished runs are aggregated. Groups appear in the order the store first names them, the baseline first in
    each, then by family, position and label. :func:`compare` adds the statistics.
    """
    items = list(records)
    views = items if all(isinstance(v, RunView) for v in items) else run_views(items)
    by_config: dict[tuple, list[RunView]] = defaultdict(list)
    for v in views:
        r = v.record
        if r.ok:
            ident = (
                group(r),
                stem(r),
                bool(r.baseline),
                r.family or r.block,
                r.position,
                json.dumps(r.args or []),
                r.warm_new_blocks,
            )
            by_config[ident].append(v)
    out = [_summary(ident[0], tuple(vs)) for ident, vs in by_config.items()]
    order = list(dict.fromkeys(group(v.record) for v in views))  # failed runs count: the store's order of groups
    out.sort(key=lambda c: (order.index(c.group), not c.baseline, c.family or "", c.position or "", c.config))
    return out


def _summary(group_key: str, views: tuple[RunView, ...]) -> ConfigSummary:
    recs = [v.record for v in views]
    first = recs[0]

    def over(get: Callable[[RunRecord], Any]) -> Spread:
        return Spread.of(get(r) for r in recs)

    bb = first.bench_batch if first.bench_batch and first.bench_batch != 1 else None
    return ConfigSummary(
        config=_config_label(first),
        baseline=bool(first.baseline),
        base=stem(first),
        family=first.family or first.block,
        block=first.block,
        position=first.position,
        args=tuple(first.args or ()),
        group=group_key,
        data=first.data,
        train=first.train,
        start=start(first),
        runs=views,
        map50=over(lambda r: r.map50),
        map50_95=over(lambda r: r.map50_95),
        gflops=over(lambda r: r.gflops),
        gflops_ultralytics=over(lambda r: r.gflops_ultralytics),
        params=over(lambda r: r.params),
        latency_ms_b1=over(_latency(1)),
        peak_mb_b1=over(_peak(1)),
        wall_s=over(lambda r: r.wall_s),
        train_s=over(lambda r: r.train_s),
        bench_batch=bb,
        latency_bn=over(_latency(bb)) if bb else Spread(),
        peak_bn=over(_peak(bb)) if bb else Spread(),
        delta={m: Spread.of(v.deltas.get(m) for v in views) for m in METRICS},
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower or equal cost with higher accuracy (cost, accuracy).

    Examples:
        >>> pareto_front([(1.0, 0.3), (2.0, 0.2), (2.0, 0.35), (3.0, 0.34), (4.0, 0.5)])
        [0, 2, 4]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# --------------------------------------------------------------------------------------------------- statistics
def _reindexed(m: Matches, ids: tuple[str, ...] | None) -> Matches | None:
    """``m`` with its images numbered as ``ids`` lists them (same images, other order), or None if the sets differ.

    Only image numbers change; predictions keep their order, so full-sample scores still sort exactly as the
    validator did.
    """
    import numpy as np

    if ids is None or m.image_ids is None or m.image_ids == ids:
        return m
    pos = {k: i for i, k in enumerate(ids)}
    if len(pos) != len(ids) or sorted(m.image_ids) != sorted(ids):
        return None
    new = np.array([pos[k] for k in m.image_ids], dtype=np.int32)
    return dataclasses.replace(m, image=new[m.image], target_image=new[m.target_image], image_ids=ids)


def _bootstrap(
    bases: Sequence[Matches], variants: Sequence[Matches], resamples: int, ci: float, seed: int
) -> PairedBootstrap | str:
    """The paired bootstrap of the runs on the first baseline's image numbering (with the size strata when every file
    has box areas), or why they can not be paired."""
    ids = bases[0].image_ids
    b = [_reindexed(m, ids) for m in bases]
    v = [_reindexed(m, ids) for m in variants]
    if any(x is None for x in b + v):
        return "the runs validated different images"
    try:
        return paired_bootstrap(b, v, n_resamples=resamples, seed=seed, ci=ci, strata=True)
    except ValueError as e:  # other targets, thresholds or AP conventions: not the same validation
        return str(e)


def stratum_scores(matches: Matches) -> dict[str, float] | None:
    """AP50-95 per COCO size stratum that has targets (:func:`yolo_attn.stats.map_scores` with ``stratum=``), or
    None when the file has no box areas (format 1).

    Examples:
        >>> from yolo_attn.stats import synthetic_validation
        >>> m = synthetic_validation(30, 3, skills=(0.0,), seed=0)[0]
        >>> sorted(stratum_scores(m)) == ["large", "medium", "small"]
        True
    """
    if not matches.has_areas:
        return None
    out = {}
    for name in STRATA:
        s = map_scores(matches, stratum=name)
        if len(s.classes):
            out[name] = s.map50_95
    return out


def compare(
    summary: Sequence[ConfigSummary],
    matches: Mapping[str, Matches],
    resamples: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    margin: float | None = None,
) -> list[ConfigSummary]:
    """The summaries with their statistics: each variant against the baselines of the same seeds.

    Per variant configuration: the paired bootstrap over images of all its same-seed pairs (each run also against its
    own baseline, :attr:`RunView.bootstrap`), per metric (:data:`METRICS`) the t-interval over seeds (from 3 seeds)
    and the verdict (:func:`yolo_attn.stats.verdict`, when the images could be compared), or why the image interval
    is unavailable. When every run's per-image file carries box areas, the same per COCO size stratum
    (:class:`StratumSummary`: the bootstrap's stratum interval, and a seed interval of the per-seed differences of the
    runs' own stratum AP50-95). Every run gets its stratum AP50-95 (:attr:`RunView.strata`); baselines are otherwise
    returned as they are (the same objects when their runs have no strata).

    Args:
        summary: Summaries of :func:`summarize`.
        matches: Run key -> :class:`yolo_attn.stats.Matches` (:func:`load_matches`).
        resamples: Bootstrap replicates.
        ci: Confidence level of every interval.
        seed: Seed of the bootstrap resampling.
        margin: Equivalence margin of the verdicts (a difference of the metric, e.g. 0.005 mAP50-95), None: none.
    """
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number (a difference of mAP, e.g. 0.005), got {margin}")
    strata = {k: stratum_scores(m) for k, m in matches.items()}
    out = []
    for c in summary:
        if c.baseline:  # as it is, unless its runs have stratum APs to hold
            if any(strata.get(v.key) is not None for v in c.runs):
                c = dataclasses.replace(c, runs=tuple(dataclasses.replace(v, strata=strata.get(v.key)) for v in c.runs))
            out.append(c)
            continue
        runs = tuple(dataclasses.replace(v, strata=strata.get(v.key)) for v in c.runs)
        out.append(
            _compared(dataclasses.replace(c, runs=runs, margin=margin), matches, strata, resamples, ci, seed, margin)
        )
    return out


def _n_seeds(s_iv: SeedInterval | None, n: int) -> int:
    """What :func:`yolo_attn.stats.verdict` is told: the seeds behind a seed interval, else fewer than 3."""
    return n if s_iv is not None else min(n, 2) or 1


def _compared(
    c: ConfigSummary,
    matches: Mapping[str, Matches],
    strata: Mapping[str, Mapping[str, float] | None],
    resamples: int,
    ci: float,
    seed: int,
    margin: float | None,
) -> ConfigSummary:
    pairs = [v for v in c.runs if v.baseline is not None]
    if not pairs:
        return dataclasses.replace(c, pairs=0, unavailable=NO_BASELINE)
    seeds = {}
    for m in METRICS:
        d = c.delta[m].values
        if len(d) >= 3:
            seeds[m] = _seed_interval(d, ci)
    runs, boot = c.runs, None
    if any(k not in matches for v in pairs for k in (v.key, v.baseline.key)):
        boot = NO_FILE
    else:
        one: dict[str, PairedBootstrap | str] = {
            v.key: _bootstrap([matches[v.baseline.key]], [matches[v.key]], resamples, ci, seed) for v in pairs
        }
        runs = tuple(dataclasses.replace(v, bootstrap=one[v.key]) if v.key in one else v for v in c.runs)
        if len(pairs) == 1:
            boot = one[pairs[0].key]
        else:
            boot = _bootstrap([matches[v.baseline.key] for v in pairs], [matches[v.key] for v in pairs],
                              resamples, ci, seed)  # fmt: skip
    if isinstance(boot, str):
        return dataclasses.replace(c, runs=runs, pairs=len(pairs), seed_intervals=seeds, unavailable=boot)
    verdicts = {}
    for m in METRICS:
        s_iv, n = seeds.get(m), len(c.delta[m].values)
        verdicts[m] = _verdict(getattr(boot, m).interval, s_iv, n_seeds=_n_seeds(s_iv, n), margin=margin)
    by_size = tuple(_stratum(s, pairs, strata, ci, margin) for s in boot.strata)
    return dataclasses.replace(
        c, runs=runs, pairs=len(pairs), bootstrap=boot, seed_intervals=seeds, verdicts=verdicts, strata=by_size
    )


def _stratum(
    s: StratumComparison,
    pairs: Sequence[RunView],
    strata: Mapping[str, Mapping[str, float] | None],
    ci: float,
    margin: float | None,
) -> StratumSummary:
    """One stratum: the bootstrap's image interval, and the seed interval of the same-seed differences of the runs'
    own stratum AP50-95 (paired by seed like the overall metric)."""
    diffs = []
    for v in pairs:
        mine, theirs = strata.get(v.key) or {}, strata.get(v.baseline.key) or {}
        if s.name in mine and s.name in theirs:
            diffs.append(mine[s.name] - theirs[s.name])
    spread = Spread.of(diffs)
    s_iv = _seed_interval(spread.values, ci) if len(spread.values) >= 3 else None
    n = len(spread.values)
    v = _verdict(s.map50_95.interval, s_iv, n_seeds=_n_seeds(s_iv, n), margin=margin)
    return StratumSummary(s.name, s, spread, s_iv, v)
