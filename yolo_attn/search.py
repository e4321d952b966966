"""Where does a block help, within a budget of runs? Screen every block x position cheaply, confirm the promising ones.

A full ablation trains every candidate (block x position) with every seed on the full schedule. :func:`search` spends
less, in two stages on the same plan, store and executors as ``yolo-attn ablate``:

1. **Screening.** Every candidate trains once (``screen_seed``, ``screen_epochs``) from the same starting weights as
   a *screening baseline* trained with the same schedule and seed. Each candidate is compared with that baseline by a
   paired bootstrap over the validation images (the change in mAP50-95 and its interval). A candidate is dropped only
   on evidence stated per candidate (:func:`decide`): ``worse`` (its interval lies below zero) or ``dominated`` (its
   upper bound lies below the best candidate's lower bound); a failed screening run is dropped with its error. The
   others are ranked and kept as far as the budget allows.
2. **Confirmation.** The kept candidates and the baseline train on the full schedule with ``confirm_seeds`` (which
   must differ from the screening seed). Their verdicts come from the confirmation runs alone, each paired with the
   baseline of the same seed, as the report pairs them: the selection looked at the screening runs only, so it does
   not bias the confirmed intervals (the winner's curse stays in the screening table, which gives no verdicts).

Budget (runs, any length): screening is ``candidates + 1`` runs, confirmation ``(kept + 1) x len(confirm_seeds)``. A
budget below the minimum (screening plus the baseline and one candidate confirmed) stops before any training. The
full grid, what ``yolo-attn ablate`` with the confirmation seeds would train, is ``(candidates + 1) x
len(confirm_seeds)`` runs.

Resumable and deterministic: both stages go through :func:`yolo_attn.executors.run_sweep` (recorded runs are never
redone), and the decisions are a pure function of the stored screening records and their per-image matches (the
bootstrap has a fixed seed), so a killed search re-run with the same arguments makes the same choices and trains only
what is missing. The screening runs have other training overrides (``epochs``) than the confirmation runs, so the
report puts them in a comparison group of their own. The decisions go to ``<out>/search.json``
(:class:`SearchOutcome`); :func:`search_markdown` renders them as the report's search section.

Examples:
    >>> b = Budget(runs=20, candidates=10, seeds=3)
    >>> b.screening, b.minimum, b.max_kept, b.full_grid
    (11, 17, 2, 33)
    >>> Budget(runs=16, candidates=10, seeds=3).check()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: a budget of 16 runs is below the search's minimum of 17: screening 10 candidates + 1 baseline = 11 ...
    >>> c = [Candidate("a", "dat", "neck", delta=-0.05, low=-0.08, high=-0.03),
    ...      Candidate("b", "bot", "neck", delta=0.001, low=-0.02, high=0.02)]
    >>> [(x.decision, x.reason) for x in decide(c, max_kept=2)]
    [('worse', 'worse: interval [-0.0800, -0.0300] below 0'), ('kept', 'rank 1: upper bound +0.0200')]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_attn.markdown import table
from yolo_attn.plan import Run, make_plan
from yolo_attn.store import ResultStore, RunRecord, jsonable

__all__ = [
    "FORMAT",
    "SCREEN_SEED",
    "SEARCH_NAME",
    "Budget",
    "Candidate",
    "Confirmed",
    "Paired",
    "SearchOutcome",
    "compare_runs",
    "decide",
    "search",
    "search_markdown",
]

LOGGER = logging.getLogger(__name__)
SEARCH_NAME = "search.json"
FORMAT = "yolo_attn.search/1"
#: Default screening seed: outside the default confirmation seeds (0, 1, 2), which then match ``ablate --seeds 0 1 2``.
SCREEN_SEED = 100
_BOOT_SEED = 0  # the bootstrap's resampling seed: fixed, so the decisions are a function of the records alone


# --------------------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """How many runs a search may train, and what that buys.

    Attributes:
        runs: The budget (total runs: screening and confirmation).
        candidates: Blocks x positions screened.
        seeds: Confirmation seeds.
    """

    runs: int
    candidates: int
    seeds: int

    @property
    def screening(self) -> int:
        """Runs of the screening stage: every candidate and the baseline, once."""
        return self.candidates + 1

    def confirmation(self, kept: int) -> int:
        """Runs of the confirmation stage with ``kept`` candidates: they and the baseline, once per seed."""
        return (kept + 1) * self.seeds if kept else 0

    @property
    def minimum(self) -> int:
        """The smallest budget that confirms one candidate."""
        return self.screening + self.confirmation(1)

    @property
    def max_kept(self) -> int:
        """Candidates the budget can confirm after screening (at most all of them)."""
        return max(0, min(self.candidates, (self.runs - self.screening) // max(self.seeds, 1) - 1))

    @property
    def full_grid(self) -> int:
        """Runs of the full ablation with the confirmation seeds: every candidate and the baseline, per seed."""
        return (self.candidates + 1) * self.seeds

    def check(self) -> None:
        """Raise a ``ValueError`` with the numbers when the budget cannot confirm a single candidate."""
        if self.candidates < 1:
            raise ValueError("a search needs at least one candidate (block x position); give --blocks and --positions")
        if self.seeds < 1:
            raise ValueError("a search needs at least one confirmation seed (--confirm-seeds 0 1 2)")
        if self.runs < self.minimum:
            raise ValueError(
                f"a budget of {self.runs} runs is below the search's minimum of {self.minimum}: screening "
                f"{self.candidates} candidates + 1 baseline = {self.screening} runs, then the baseline and at least one "
                f"candidate with {self.seeds} confirmation seeds = {self.confirmation(1)} runs (the full grid is "
                f"{self.full_grid} runs)"
            )


# --------------------------------------------------------------------------------------------------- results
@dataclass
class Candidate:
    """One screened candidate: its screening run against the screening baseline, and what the search decided.

    Attributes:
        name: The run's label (``yolov8n-dat-neck``).
        block: Family or block name.
        position: Insertion point.
        args: Extra block arguments.
        key: The screening run's key.
        status: The screening run's status (``done``, ``failed``; ``missing`` without a record).
        error: Why the screening run failed.
        map50_95: Its mAP50-95.
        delta: Change in mAP50-95 against the screening baseline (full validation set).
        low: Lower end of the paired image interval of ``delta``.
        high: Upper end.
        problem: Why there is no interval (no per-image file, other images...).
        decision: ``kept``, ``worse``, ``dominated``, ``failed`` or ``over budget`` (empty before :func:`decide`).
        reason: The evidence for the decision, in words.
        rank: Place among the candidates not dropped (1 = first), by upper bound.
    """

    name: str
    block: str
    position: str
    args: list = field(default_factory=list)
    key: str | None = None
    status: str = "done"
    error: str | None = None
    map50_95: float | None = None
    delta: float | None = None
    low: float | None = None
    high: float | None = None
    problem: str | None = None
    decision: str = ""
    reason: str = ""
    rank: int | None = None

    @property
    def kept(self) -> bool:
        return self.decision == "kept"

    @property
    def dropped(self) -> bool:
        """Dropped on evidence (worse, dominated, failed); ``over budget`` is not dropped, just not confirmed."""
        return self.decision in ("worse", "dominated", "failed")


@dataclass
class Confirmed:
    """A kept candidate's verdict from its confirmation runs alone (each paired with the same-seed baseline).

    Attributes:
        name: The runs' label.
        block: Family or block name.
        position: Insertion point.
        args: Extra block arguments.
        seeds: Seeds with a finished pair (candidate and baseline).
        keys: The candidate's confirmation run keys, one per seed.
        delta: Mean same-seed change in mAP50-95.
        low: Image interval of the mean change (paired bootstrap over the pairs).
        high: Upper end.
        seed_low: Seed interval (Student t over the per-seed changes, from 3 seeds).
        seed_high: Upper end.
        verdict: ``better``, ``worse`` or ``no detectable difference`` (None without an image interval).
        note: What limits the verdict, or why there is none.
    """

    name: str
    block: str
    position: str
    args: list = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    delta: float | None = None
    low: float | None = None
    high: float | None = None
    seed_low: float | None = None
    seed_high: float | None = None
    verdict: str | None = None
    note: str | None = None


@dataclass
class SearchOutcome:
    """What a search screened, dropped, kept and confirmed, and what it cost (``<out>/search.json``).

    Attributes:
        data: Dataset YAML.
        base: Base model.
        pretrained: Starting weights of every run (None: from scratch).
        train: Training overrides of the confirmation runs (the full schedule).
        screen_train: Training overrides of the screening runs.
        screen_seed: Seed of the screening runs.
        confirm_seeds: Seeds of the confirmation runs.
        budget: Runs the search was allowed.
        ci: Confidence level of every interval.
        resamples: Bootstrap replicates of every image interval.
        baseline_key: The screening baseline's run key.
        baseline_map50_95: Its mAP50-95.
        n_images: Validation images behind the screening intervals.
        candidates: Every candidate screened, with its decision.
        confirmed: The kept candidates' confirmed verdicts.
        confirm_baseline_keys: The baseline's confirmation run keys.
        runs_screening: Screening runs with a record (done or failed).
        runs_confirmation: Confirmation runs with a record.
        stage: ``screened`` (decisions made, confirmation pending) or ``confirmed``.
    """

    data: str
    base: str
    pretrained: str | None
    train: dict
    screen_train: dict
    screen_seed: int
    confirm_seeds: list[int]
    budget: int
    ci: float = 0.95
    resamples: int = 1000
    baseline_key: str | None = None
    baseline_map50_95: float | None = None
    n_images: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    confirmed: list[Confirmed] = field(default_factory=list)
    confirm_baseline_keys: list[str] = field(default_factory=list)
    runs_screening: int = 0
    runs_confirmation: int = 0
    stage: str = "screened"

    @property
    def kept(self) -> list[Candidate]:
        """The candidates sent to confirmation, best first."""
        return sorted((c for c in self.candidates if c.kept), key=lambda c: c.rank or 0)

    @property
    def dropped(self) -> list[Candidate]:
        """The candidates dropped on evidence."""
        return [c for c in self.candidates if c.dropped]

    @property
    def runs_spent(self) -> int:
        return self.runs_screening + self.runs_confirmation

    @property
    def full_grid(self) -> int:
        """Runs of the full ablation with the confirmation seeds."""
        return Budget(self.budget, len(self.candidates), len(self.confirm_seeds)).full_grid

    @property
    def screen_epochs(self) -> int | None:
        return self.screen_train.get("epochs")

    @property
    def epochs(self) -> int:
        return _full_epochs(self.train)

    @property
    def epochs_spent(self) -> int:
        """Training epochs of the recorded runs (a screening run is shorter than a confirmation run)."""
        return self.runs_screening * int(self.screen_epochs or 0) + self.runs_confirmation * self.epochs

    @property
    def full_grid_epochs(self) -> int:
        return self.full_grid * self.epochs

    def to_dict(self) -> dict:
        return jsonable({"format": FORMAT, **dataclasses.asdict(self)})

    @classmethod
    def from_dict(cls, d: Mapping) -> SearchOutcome:
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"not a search outcome of format {FORMAT!r} (found {d.get('format')!r})")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["candidates"] = [_from(Candidate, c) for c in kw.get("candidates", [])]
        kw["confirmed"] = [_from(Confirmed, c) for c in kw.get("confirmed", [])]
        return cls(**kw)

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``<out>/search.json`` atomically (whole or the previous one)."""
        path = Path(out) / SEARCH_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, out: str | os.PathLike) -> SearchOutcome | None:
        """The outcome in ``<out>/search.json`` (or that file given directly), None when there is none."""
        p = Path(out)
        path = p if p.suffix == ".json" else p / SEARCH_NAME
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _from(cls: type, d: Mapping) -> Any:
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# --------------------------------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class Paired:
    """A variant against its baseline, over one or several same-seed pairs of runs.

    Attributes:
        pairs: Same-seed pairs compared.
        delta: Mean change in mAP50-95 (from the per-image files when they exist, else the records).
        bootstrap: The paired bootstrap over images (:class:`yolo_attn.stats.PairedBootstrap`), None without files.
        seed_interval: Student-t interval over the per-seed changes (from 3 pairs).
        verdict: The verdict on mAP50-95 (:class:`yolo_attn.stats.Verdict`), None without an image interval.
        problem: Why there is no image interval.
    """

    pairs: int
    delta: float | None
    bootstrap: Any = None
    seed_interval: Any = None
    verdict: Any = None
    problem: str | None = None

    @property
    def interval(self) -> Any:
        """The image interval of the change in mAP50-95 (:class:`yolo_attn.stats.Interval`), or None."""
        return self.bootstrap.map50_95.interval if self.bootstrap is not None else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def compare_runs(
    store: ResultStore,
    bases: Sequence[RunRecord],
    variants: Sequence[RunRecord],
    resamples: int = 1000,
    ci: float = 0.95,
    seed: int = _BOOT_SEED,
) -> Paired:
    """Compare variant runs with baseline runs paired by position (same seed), as the report does.

    The image interval is the paired bootstrap over the validation images of the mean change (every replicate scores
    both runs of each pair on the same resample); from 3 pairs a seed interval joins it and the verdict needs both.

    Args:
        store: The store holding the runs and their per-image files.
        bases: Baseline records, one per pair.
        variants: Variant records, one per pair (same seeds, same order).
        resamples: Bootstrap replicates.
        ci: Confidence level.
        seed: Seed of the resampling.
    """
    from yolo_attn.stats import Matches, paired_bootstrap, seed_interval, verdict

    if len(bases) != len(variants):
        raise ValueError(f"{len(bases)} baseline runs but {len(variants)} variant runs: pair them by seed")
    deltas = [
        v.map50_95 - b.map50_95
        for b, v in zip(bases, variants)
        if _num(b.map50_95) is not None and _num(v.map50_95) is not None
    ]
    n = len(bases)
    if not n:
        return Paired(0, None, problem="no finished pair of runs")
    mean = sum(deltas) / len(deltas) if len(deltas) == n else None
    s_iv = seed_interval(deltas, ci) if len(deltas) == n and n >= 3 else None
    paths = [store.artifact_path(r, "matches") for r in (*bases, *variants)]
    if any(p is None for p in paths):
        lacking = sorted({r.name for r, p in zip((*bases, *variants), paths) if p is None})
        return Paired(n, mean, None, s_iv, None, f"no per-image file for {', '.join(lacking)}")
    try:
        ms = [Matches.load(p) for p in paths]
        boot = paired_bootstrap(ms[:n], ms[n:], n_resamples=resamples, seed=seed, ci=ci)
    except (OSError, ValueError, KeyError) as e:  # unreadable, or not the same validation set
        return Paired(n, mean, None, s_iv, None, f"no image interval: {e}")
    v = verdict(boot.map50_95.interval, s_iv, n_seeds=n if s_iv is not None else min(n, 2))
    return Paired(n, boot.map50_95.delta, boot, s_iv, v, None)


# --------------------------------------------------------------------------------------------------- decisions
def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def decide(candidates: Sequence[Candidate], max_kept: int) -> list[Candidate]:
    """The screening decisions: which candidates are dropped (and on what evidence), which are confirmed.

    A pure function of the screening results (so a re-run decides the same). In this order:

    1. ``failed``: the screening run did not finish (its error is the evidence).
    2. ``worse``: the paired image interval of the change lies below zero.
    3. ``dominated``: the upper bound lies below the lower bound of the best candidate (the highest lower bound among
       those not dropped yet): the two intervals do not overlap, so the screen itself says the best one is better.
    4. The rest are ranked by their **upper bound** (then the point change, then the name, so ties are settled the
       same way every time), and the first ``max_kept`` are ``kept``; the others are ``over budget`` (not dropped
       on evidence, only not confirmed). The upper bound, the most the screen allows a candidate to gain, rather than
       the lower bound or the point change: screening looks for the cells worth confirming, and a cell is worth it
       when a gain is still possible. A block the screen pins at zero (one that stayed the identity gives the
       interval [-0.0000, +0.0000]) has the highest lower bound of all and cannot turn out better; ranked by the lower
       bound it would take the budget first (seen on the demo data: the three blocks before SPPF at 64 px, whose 2x2
       maps left them unused). A noisy candidate's wide interval does rank it up, which is what confirmation is
       for: its verdict comes from fresh seeds, never from the screen. Candidates without an interval (no
       per-image file) rank after those with one, by their change.

    Args:
        candidates: Screened candidates (``status``, ``delta``, ``low``, ``high`` filled in).
        max_kept: How many the budget confirms.

    Returns:
        The same candidates (copies, in the given order) with ``decision``, ``reason`` and ``rank``.
    """
    out = [dataclasses.replace(c, decision="", reason="", rank=None) for c in candidates]
    for c in out:
        if c.status != "done":
            c.decision, c.reason = "failed", f"screening run {c.status}: {c.error or 'no record'}"
        elif c.high is not None and c.high < 0:
            c.decision, c.reason = "worse", f"worse: interval [{c.low:+.4f}, {c.high:+.4f}] below 0"
    with_iv = [c for c in out if not c.decision and c.low is not None]
    if with_iv:
        best = max(with_iv, key=lambda c: (c.low, c.name))  # the highest lower bound: what the screen is surest of
        for c in with_iv:
            if c.high < best.low:
                c.decision = "dominated"
                c.reason = f"dominated: upper bound {c.high:+.4f} below {best.name}'s lower bound {best.low:+.4f}"
    rest = sorted((c for c in out if not c.decision), key=_order)
    for i, c in enumerate(rest, 1):
        c.rank = i
        by = (
            f"upper bound {c.high:+.4f}"
            if c.high is not None
            else f"change {_f(c.delta)} ({c.problem or 'no interval'})"
        )
        if i <= max_kept:
            c.decision, c.reason = "kept", f"rank {i}: {by}"
        else:
            c.decision, c.reason = "over budget", f"rank {i}: {by}; the budget confirms {max_kept}"
    return out


def _order(c: Candidate) -> tuple:
    """Best first: an interval, the higher upper bound, the larger change, then the name (ties settle the same way)."""
    high = -c.high if c.high is not None else 0.0
    return (c.high is None, high, -c.delta if c.delta is not None else math.inf, c.name)


# --------------------------------------------------------------------------------------------------- the search
def _full_epochs(train: Mapping) -> int:
    if "epochs" in train:
        return int(train["epochs"])
    from yolo_attn._compat import DEFAULT_CFG_DICT

    return int(DEFAULT_CFG_DICT["epochs"])


def _records_of(store: ResultStore, keys: Sequence[str]) -> dict[str, RunRecord]:
    have = store.records()
    return {k: have[k] for k in keys if k in have}


def _screened(
    store: ResultStore,
    plan: Sequence[tuple[Run, str]],
    base_rec: RunRecord,
    recs: Mapping[str, RunRecord],
    resamples: int,
    ci: float,
) -> tuple[list[Candidate], int | None]:
    out, n_images = [], None
    for run, key in plan:
        rec = recs.get(key)
        c = Candidate(run.name, run.block, run.position, list(run.args), key)
        if rec is None or not rec.ok:
            c.status = "missing" if rec is None else rec.status
            c.error = None if rec is None else rec.error
        else:
            c.map50_95 = _num(rec.map50_95)
            p = compare_runs(store, [base_rec], [rec], resamples, ci)
            c.delta, c.problem = p.delta, p.problem
            if p.interval is not None:
                c.low, c.high = p.interval.low, p.interval.high
                n_images = p.bootstrap.n_images
        out.append(c)
    return out, n_images


def _confirmed(
    store: ResultStore,
    kept: Sequence[Candidate],
    bases: Mapping[int, str],
    variants: Mapping[tuple[str, int], str],
    resamples: int,
    ci: float,
) -> list[Confirmed]:
    recs = store.records()
    out = []
    for c in kept:
        conf = Confirmed(c.name, c.block, c.position, list(c.args))
        pairs = []
        for seed, b_key in bases.items():
            v_key = variants[(c.key, seed)]
            conf.keys.append(v_key)
            b, v = recs.get(b_key), recs.get(v_key)
            if b is not None and v is not None and b.ok and v.ok:
                pairs.append((seed, b, v))
        conf.seeds = [s for s, _, _ in pairs]
        p = compare_runs(store, [b for _, b, _ in pairs], [v for _, _, v in pairs], resamples, ci)
        conf.delta = p.delta
        if p.interval is not None:
            conf.low, conf.high = p.interval.low, p.interval.high
        if p.seed_interval is not None:
            conf.seed_low, conf.seed_high = p.seed_interval.low, p.seed_interval.high
        if p.verdict is not None:
            conf.verdict, conf.note = p.verdict.label, p.verdict.note
        else:
            conf.note = p.problem
        if len(pairs) < len(bases):
            missing = sorted(set(bases) - set(conf.seeds))
            conf.note = "; ".join(filter(None, [conf.note, f"no finished pair for seed(s) {missing}"]))
        out.append(conf)
    return out


def search(
    data: str,
    *,
    budget: int,
    blocks: Sequence[str] | None = None,
    positions: Sequence[str] | None = None,
    base: str = "yolov8n.yaml",
    train: Mapping | None = None,
    screen_epochs: int | None = None,
    screen_seed: int = SCREEN_SEED,
    confirm_seeds: Sequence[int] = (0, 1, 2),
    pretrained: str | None = None,
    block_args: Mapping[str, Sequence] | None = None,
    out: str | os.PathLike = "runs/yolo_attn/search",
    devices: Sequence[str] | str | None = None,
    executor: Any = None,
    retry_failed: bool = False,
    settings: Any = None,
    resamples: int = 1000,
    ci: float = 0.95,
) -> SearchOutcome:
    """Screen every block x position once on a short schedule, confirm the best within ``budget`` runs.

    Args:
        data: Dataset YAML.
        budget: Total runs (screening and confirmation; see :class:`Budget`). Below the minimum: ``ValueError``
            before any training.
        blocks: Families or block names (default: every registered family).
        positions: Insertion points (default: all of :data:`yolo_attn.edit.POSITIONS`).
        base: Base model.
        train: Training overrides of the full schedule (``{"epochs": 30, "imgsz": 320}``); the confirmation runs
            train with them, the screening runs with ``epochs`` replaced by ``screen_epochs``.
        screen_epochs: Epochs of a screening run; fewer than the full schedule's (default: a quarter of them, at
            least 1). Equal schedules would put screening and confirmation runs in one comparison group of the report,
            and the selected screening run into its confirmed verdict.
        screen_seed: Seed of every screening run.
        confirm_seeds: Seeds of the confirmation runs; none may be ``screen_seed``.
        pretrained: Weights every run starts from (``yolov8n.pt``); None: every run from scratch.
        block_args: Extra block arguments per block name (``{"dat": [8]}``).
        out: Output folder: the store, runs, logs and ``search.json`` (``yolo-attn report OUT`` reads it).
        devices: Local devices (see :func:`yolo_attn.executors.run_sweep`).
        executor: Any executor (default: the local one of ``devices``).
        retry_failed: Redo runs recorded as failed.
        settings: Measurement settings (:class:`yolo_attn.execute.Measure` or some of its fields).
        resamples: Bootstrap replicates of every image interval.
        ci: Confidence level of every interval (screening drops and confirmed verdicts).

    Returns:
        The outcome (also written to ``<out>/search.json``).

    Raises:
        ValueError: Bad seeds, schedule or budget (before anything trains).
        RuntimeError: The screening baseline failed (nothing can be screened against it).
    """
    from yolo_attn.edit import POSITIONS
    from yolo_attn.executors import run_sweep

    train = dict(train or {})
    confirm_seeds = [int(s) for s in confirm_seeds]
    if len(set(confirm_seeds)) != len(confirm_seeds):
        raise ValueError(f"confirmation seeds must be distinct, got {confirm_seeds}")
    if int(screen_seed) in confirm_seeds:
        raise ValueError(
            f"the screening seed {screen_seed} is among the confirmation seeds {confirm_seeds}: confirmation needs fresh "
            "seeds, or the run that won the screen would vote in its own verdict; give another --screen-seed"
        )
    epochs = _full_epochs(train)
    if screen_epochs is None:
        screen_epochs = max(1, epochs // 4)
    if not 1 <= int(screen_epochs) < epochs:
        raise ValueError(
            f"screen_epochs={screen_epochs} must lie in [1, {epochs - 1}], below the full schedule's epochs={epochs}: "
            "screening is the short schedule (give a larger epochs=, or a smaller --screen-epochs)"
        )
    if not 0 < ci < 1 or resamples < 2:
        raise ValueError(f"ci must lie in (0, 1) and resamples be >= 2, got ci={ci}, resamples={resamples}")
    screen_train = {**train, "epochs": int(screen_epochs)}
    plan = make_plan(
        data,
        bases=[base],
        blocks=blocks,
        positions=list(positions or POSITIONS),
        seeds=[int(screen_seed)],
        train=screen_train,
        pretrained=pretrained,
        block_args=block_args,
    )
    keys = [r.key for r in plan]  # a key hashes the model's YAML: computed once per run
    base_run, base_key, cand_runs = plan[0], keys[0], list(zip(plan[1:], keys[1:]))
    b = Budget(int(budget), len(cand_runs), len(confirm_seeds))
    b.check()
    out = Path(out)
    store = ResultStore(out)
    kw = {"devices": devices, "retry_failed": retry_failed, "settings": settings, "executor": executor}

    run_sweep(plan, out, title=f"search 1/2, screening {len(cand_runs)} candidates ({screen_epochs} epochs)", **kw)
    recs = _records_of(store, keys)
    base_rec = recs.get(base_key)
    if base_rec is None or not base_rec.ok:
        why = base_rec.error if base_rec is not None else "no record"
        raise RuntimeError(f"the screening baseline run failed ({why}); nothing can be screened against it")
    screened, n_images = _screened(store, cand_runs, base_rec, recs, resamples, ci)
    outcome = SearchOutcome(
        data=base_run.data,
        base=base_run.model,
        pretrained=base_run.pretrained,
        train=train,
        screen_train=screen_train,
        screen_seed=int(screen_seed),
        confirm_seeds=confirm_seeds,
        budget=int(budget),
        ci=ci,
        resamples=resamples,
        baseline_key=base_key,
        baseline_map50_95=_num(base_rec.map50_95),
        n_images=n_images,
        candidates=decide(screened, b.max_kept),
        runs_screening=len(recs),
    )
    for c in outcome.candidates:
        LOGGER.info("search: %s %s (%s)", c.name, c.decision, c.reason)
    outcome.save(out)

    kept = outcome.kept
    by_key = {k: r for r, k in cand_runs}
    confirm = []  # per seed: the baseline, then the kept candidates best first
    bases, variants = {}, {}
    for seed in confirm_seeds if kept else []:
        confirm.append(dataclasses.replace(base_run, seed=seed, train=train, name=""))
        bases[seed] = confirm[-1].key
        for c in kept:
            confirm.append(dataclasses.replace(by_key[c.key], seed=seed, train=train, name=""))
            variants[(c.key, seed)] = confirm[-1].key
    if len(plan) + len(confirm) > b.runs:  # Budget.max_kept guarantees it; a change there must not overspend
        raise RuntimeError(f"search planned {len(plan) + len(confirm)} runs, over its budget of {b.runs}")
    if confirm:
        names = ", ".join(c.name for c in kept)
        run_sweep(confirm, out, title=f"search 2/2, confirming {names} with seeds {confirm_seeds}", **kw)
    outcome.confirm_baseline_keys = list(bases.values())
    outcome.runs_confirmation = len(_records_of(store, [*bases.values(), *variants.values()]))
    outcome.confirmed = _confirmed(store, kept, bases, variants, resamples, ci)
    outcome.stage = "confirmed"
    outcome.save(out)
    return outcome


# --------------------------------------------------------------------------------------------------- markdown
def _iv(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"[{lo:+.4f}, {hi:+.4f}]"


def _n(k: int | None, what: str) -> str:
    return f"{k} {what}{'' if k == 1 else 's'}"


def _m(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def search_markdown(outcome: SearchOutcome, heading: str = "##") -> list[str]:
    """The report's search section as Markdown lines: what was screened, what was dropped and why, the confirmed
    table with intervals and verdicts, and the runs spent against the full grid.

    Args:
        outcome: The search's outcome (:meth:`SearchOutcome.load` reads ``<out>/search.json``).
        heading: Markdown heading of the section (its subsections get one level more).
    """
    o = outcome
    pct = f"{o.ci:.0%}"
    start = f"`{Path(o.pretrained).name}`" if o.pretrained else "scratch"
    n_img = f"{o.n_images} validation images" if o.n_images else "the validation images"
    lines = [
        f"{heading} Search: where does a block help?",
        "",
        f"Screened {len(o.candidates)} candidates (block x position) on `{Path(o.base).name}`: each trained once "
        f"(seed {o.screen_seed}, {_n(o.screen_epochs, 'epoch')}, from {start}) next to a baseline trained the same way, and "
        f"compared with it by a paired bootstrap over {n_img} ({o.resamples} resamples, {pct} interval of the change "
        "in mAP50-95). A candidate is dropped only on evidence: **worse** (its interval lies below 0), **dominated** "
        "(its upper bound lies below the best candidate's lower bound), or **failed**. The others are ranked by their "
        "upper bound (the most the screen allows them to gain) and confirmed as far as the budget allows. Screening intervals are not verdicts: the best of "
        "many short runs looks better than it is, so the verdicts below come from the confirmation runs alone.",
        "",
    ]
    rows = [["-", f"{Path(o.base).stem} (baseline)", _m(o.baseline_map50_95), "-", "-", "-", ""]]
    order = sorted(o.candidates, key=lambda c: (c.rank is None, c.rank or 0, c.name))
    for c in order:
        rows.append([c.rank or "-", c.name, _m(c.map50_95), _f(c.delta), _iv(c.low, c.high), c.decision, c.reason])
    lines += [table(["rank", "candidate", "mAP50-95", "Δ mAP50-95", f"{pct} interval", "decision", "evidence"],
                    rows, align="rlrrrll"), ""]  # fmt: skip
    dropped = o.dropped
    if dropped:
        lines += [f"Dropped: {', '.join(f'`{c.name}` ({c.decision})' for c in dropped)}.", ""]
    sub = heading + "#"
    seeds = ", ".join(map(str, o.confirm_seeds))
    lines += [
        f"{sub} Confirmed (seeds {seeds}, {_n(o.epochs, 'epoch')}, each against the baseline of the same seed)",
        "",
    ]
    if o.stage != "confirmed":
        lines += ["Confirmation has not finished (re-run the same `yolo-attn search` command to resume).", ""]
    elif not o.confirmed:
        lines += ["No candidate was left to confirm.", ""]
    else:
        rows = [
            [c.name, len(c.seeds), _f(c.delta), _iv(c.low, c.high), _iv(c.seed_low, c.seed_high), c.verdict or "-",
             c.note or ""]
            for c in o.confirmed
        ]  # fmt: skip
        header = ["candidate", "seeds", "Δ mAP50-95", "image interval", "seed interval", "verdict", "note"]
        lines += [table(header, rows, align="lrrrrll"), ""]
    lines += [
        f"Runs: {o.runs_spent} spent ({o.runs_screening} screening, {o.runs_confirmation} confirmation) of a budget of "
        f"{o.budget}; the full grid ({len(o.candidates)} candidates + baseline) x {len(o.confirm_seeds)} seeds is "
        f"{o.full_grid} runs. Epochs trained: {o.epochs_spent} of the full grid's {o.full_grid_epochs}.",
        "",
    ]
    return lines
