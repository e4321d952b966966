"""The report's tables from typed summaries: Markdown (:func:`yolo_attn.markdown.table`), LaTeX (booktabs) and CSV.

Each Markdown table is a list of :class:`Column` (title, alignment, how to write one cell), so a new column (an
equivalence verdict, the split the numbers come from) is one entry in one list. The CSV columns come from one
function per file (:func:`results_row`, :func:`summary_row`), so their names stay where users read them.

Examples:
    >>> from yolo_attn.report.summary import Spread
    >>> print(render([Column("n", len, "l"), Column("mean", lambda s: pm(Spread.of(s)))], [(0.1, 0.3)]))
    | n |            mean |
    |---|----------------:|
    | 2 | 0.2000 ± 0.1414 |
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from yolo_attn.markdown import table
from yolo_attn.report.summary import METRICS, ConfigSummary, RunView, Spread, StratumSummary, finite, start_label
from yolo_attn.report.utilisation import BlockUseSummary, block_uses, use_line
from yolo_attn.stats import STRATA

__all__ = [
    "Column",
    "class_table",
    "combined_table",
    "latex",
    "strata_table",
    "use_table",
    "pm",
    "render",
    "results_row",
    "runs_table",
    "summary_row",
    "summary_table",
    "verdict_table",
    "write_csv",
]

T = TypeVar("T")
Section = tuple[str, Sequence[ConfigSummary]]  # (dataset label, its summaries)


# --------------------------------------------------------------------------------------------------- cells
def fmt(v: Any, nd: int = 4) -> str:
    """A number with ``nd`` decimals, ``-`` when missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def gflops(v: float | None) -> str:
    """GFLOPs: two decimals, three below 1 (tiny test models)."""
    return fmt(v, 2 if v is None or abs(v) >= 1 else 3)


def pm(s: Spread, nd: int = 4, signed: bool = False, std: bool = True) -> str:
    """``mean ± std`` of a spread (``-`` without values)."""
    if s.mean is None:
        return "-"
    text = f"{s.mean:+.{nd}f}" if signed else f"{s.mean:.{nd}f}"
    return text + (f" ± {s.std:.{nd}f}" if std and s.std is not None else "")


def interval(iv: Any, nd: int = 4) -> str:
    """``[low, high]`` of anything with ``low`` / ``high`` (``-`` for None)."""
    return "-" if iv is None else f"[{iv.low:+.{nd}f}, {iv.high:+.{nd}f}]"


def _params_m(c: ConfigSummary, nd: int) -> str:
    return fmt(c.params.mean / 1e6 if c.params.mean is not None else None, nd)


def equivalence_text(v: Any) -> str | None:
    """With a margin: ``equivalent within ±0.005``, ``not worse than −0.005`` or ``not shown equivalent within
    ±0.005``; None without one."""
    if v is None or v.margin is None:
        return None
    return v.equivalence_text or f"not shown equivalent within ±{v.margin:g}"


def verdict_text(c: ConfigSummary, metric: str, note: bool = True) -> str:
    """The verdict (with its note, and the equivalence call when a margin was given), ``—`` for a baseline, or why
    there is none."""
    return _verdict_cell(c.verdicts.get(metric), c, note)


def _verdict_cell(v: Any, c: ConfigSummary, note: bool = True) -> str:
    if v is None:
        return "—" if c.baseline else f"- ({c.unavailable or 'no interval'})"
    text = f"{v.label} ({v.note})" if note and v.note else v.label
    eq = equivalence_text(v)
    return f"{text}; {eq}" if eq else text


# --------------------------------------------------------------------------------------------------- markdown
@dataclass(frozen=True)
class Column(Generic[T]):
    """One column of a Markdown table: its title, how to write an item's cell, its alignment (``l`` / ``r``)."""

    header: str
    cell: Callable[[T], Any]
    align: str = "r"


def render(columns: Sequence[Column[T]], items: Iterable[T]) -> str:
    """A Markdown table of ``items``, one row each."""
    rows = [[col.cell(x) for col in columns] for x in items]
    return table([col.header for col in columns], rows, align="".join(col.align for col in columns))


def _variant(cell: Callable[[ConfigSummary], Any]) -> Callable[[ConfigSummary], Any]:
    """A cell that baselines leave as ``—``."""
    return lambda c: "—" if c.baseline else cell(c)


def summary_columns(summary: Sequence[ConfigSummary]) -> list[Column[ConfigSummary]]:
    """The per-configuration table: accuracy, the change of mAP50-95 with both intervals and the verdict, cost."""
    cols: list[Column[ConfigSummary]] = [
        Column("config", lambda c: c.config, "l"),
        Column("seeds", lambda c: c.seeds),
        Column("mAP50", lambda c: pm(c.map50)),
        Column("mAP50-95", lambda c: pm(c.map50_95)),
        Column("Δ mAP50-95", _variant(lambda c: pm(c.delta["map50_95"], signed=True))),
        Column("95% CI (images)", _variant(lambda c: interval(c.image_interval("map50_95")))),
        Column("95% CI (seeds)", _variant(lambda c: interval(c.seed_intervals.get("map50_95")))),
        Column("verdict", lambda c: verdict_text(c, "map50_95", note=False), "l"),
        Column("params (M)", lambda c: _params_m(c, 3)),
        Column("GFLOPs", lambda c: gflops(c.gflops.mean)),
        Column("GFLOPs (Ultralytics)", lambda c: gflops(c.gflops_ultralytics.mean)),
        Column("latency b1 (ms)", lambda c: fmt(c.latency_ms_b1.mean, 1)),
    ]
    bn = next((c.bench_batch for c in summary if c.bench_batch), None)
    if bn:
        cols += [
            Column(f"latency b{bn} (ms)", lambda c: fmt(c.latency_bn.mean, 1)),
            Column(f"peak MB b{bn}", lambda c: fmt(c.peak_bn.mean, 1)),
        ]
    return cols


def summary_table(summary: Sequence[ConfigSummary]) -> str:
    return render(summary_columns(summary), summary)


def _detectable(c: ConfigSummary, m: str) -> str:
    d = c.detectable(m)
    return f"±{d:.4f}" if d is not None else "-"


#: The verdict table: one row per variant configuration and metric.
VERDICT_COLUMNS: list[Column[tuple[ConfigSummary, str]]] = [
    Column("config", lambda x: x[0].config, "l"),
    Column("metric", lambda x: METRICS[x[1]], "l"),
    Column("Δ (mean ± std over seeds)", lambda x: pm(x[0].delta[x[1]], signed=True)),
    Column("95% CI (images)", lambda x: interval(x[0].image_interval(x[1]))),
    Column("95% CI (seeds)", lambda x: interval(x[0].seed_intervals.get(x[1])) if x[0].seeds >= 3 else "-"),
    Column("detectable", lambda x: _detectable(*x)),
    Column("limited by", lambda x: x[0].limited_by(x[1]) or "-", "l"),
    Column("verdict", lambda x: verdict_text(*x), "l"),
    # where the block's residual branch stood after training (RunRecord.utilisation), once per configuration
    Column(
        "block use (branch / input)",
        lambda x: (use_line(x[0].runs) or "-") if x[1] == next(iter(METRICS)) else "″",
        "l",
    ),
]


def verdict_table(summary: Sequence[ConfigSummary]) -> str:
    return render(VERDICT_COLUMNS, [(c, m) for c in summary if not c.baseline for m in METRICS])


#: The size strata table: one row per variant configuration and COCO size stratum (:class:`StratumSummary`).
STRATUM_COLUMNS: list[Column[tuple[ConfigSummary, StratumSummary]]] = [
    Column("config", lambda x: x[0].config, "l"),
    Column("objects", lambda x: x[1].name, "l"),
    Column("targets", lambda x: x[1].n_targets),
    Column("baseline AP50-95", lambda x: fmt(x[1].comparison.map50_95.base)),
    Column("variant AP50-95", lambda x: fmt(x[1].comparison.map50_95.variant)),
    Column("Δ", lambda x: f"{x[1].comparison.map50_95.delta:+.4f}"),
    Column("95% CI (images)", lambda x: interval(x[1].image_interval)),
    Column("95% CI (seeds)", lambda x: interval(x[1].seed_interval)),
    Column("verdict", lambda x: _verdict_cell(x[1].verdict, x[0]), "l"),
]


def strata_table(summary: Sequence[ConfigSummary]) -> str | None:
    """AP50-95 per COCO size stratum of every variant with strata (None when none has them)."""
    rows = [(c, s) for c in summary if not c.baseline for s in c.strata]
    return render(STRATUM_COLUMNS, rows) if rows else None


def _pct(s: Spread, std: bool = True) -> str:
    """A ratio's spread in percent (``2.1% ± 0.3%``)."""
    if s.mean is None:
        return "-"
    return f"{100 * s.mean:.1f}%" + (f" ± {100 * s.std:.1f}%" if std and s.std is not None else "")


def _gates(u: BlockUseSummary) -> str:
    """Gates with three significant digits: a zero-initialised projection's mean |w| is often 1e-5 (0.000 with a fixed
    number of decimals would read as "never moved" next to a branch at 10%)."""

    def g3(s: Spread) -> str:
        return f"{s.mean:.3g}" + (f" ± {s.std:.2g}" if s.std is not None else "")

    return ", ".join(f"{k} {g3(v)}" for k, v in u.gates.items() if v.mean is not None) or "-"


#: The utilisation table: one row per configuration and block row (:class:`BlockUseSummary`).
USE_COLUMNS: list[Column[tuple[ConfigSummary, BlockUseSummary]]] = [
    Column("config", lambda x: x[0].config, "l"),
    Column("block", lambda x: x[1].block, "l"),
    Column("row", lambda x: "-" if x[1].row is None else x[1].row),
    Column("level", lambda x: "-" if x[1].level is None else f"P{x[1].level}", "l"),
    Column("seeds", lambda x: x[1].seeds),
    Column("branch / input (mean ± sd over seeds)", lambda x: _pct(x[1].ratio)),
    Column("sd over images", lambda x: _pct(x[1].image_sd, std=False)),
    Column("images", lambda x: x[1].n_images),
    Column("gates (mean ± sd over seeds)", lambda x: _gates(x[1]), "l"),
]


def use_table(summary: Sequence[ConfigSummary]) -> str | None:
    """Per configuration and block row: how much the block's branch contributes, and its gates (None: no records)."""
    rows = [(c, u) for c in summary for u in block_uses(c.runs)]
    return render(USE_COLUMNS, rows) if rows else None


#: The per-class table: one row per configuration and class (:class:`yolo_attn.stats.ClassComparison`).
CLASS_COLUMNS: list[Column[tuple[ConfigSummary, Any]]] = [
    Column("config", lambda x: x[0].config, "l"),
    Column("class", lambda x: x[1].name if x[1].name is not None else str(x[1].cls), "l"),
    Column("boxes", lambda x: x[1].n_targets),
    Column("baseline AP50-95", lambda x: fmt(x[1].ap50_95.base)),
    Column("variant AP50-95", lambda x: fmt(x[1].ap50_95.variant)),
    Column("Δ", lambda x: f"{x[1].ap50_95.delta:+.4f}"),
    Column("95% CI (images)", lambda x: interval(x[1].ap50_95.interval)),
    Column("excludes 0", lambda x: {1: "higher", -1: "lower", 0: ""}[x[1].ap50_95.interval.side], "l"),
]


def class_table(summary: Sequence[ConfigSummary], top: int = 10) -> str | None:
    """Per-class AP50-95 changes (image intervals), the ``top`` largest |Δ| per configuration (all when few)."""
    rows = [(c, k) for c in summary for k in sorted(c.classes, key=lambda k: -abs(k.ap50_95.delta))[:top]]
    return render(CLASS_COLUMNS, rows) if rows else None


def _run_delta(v: RunView) -> str:
    d = v.deltas.get("map50_95")
    return f"{d:+.4f}" if d is not None else "-"


#: The per-run table: every run of the store, failed ones too.
RUN_COLUMNS: list[Column[RunView]] = [
    Column("run", lambda v: v.record.name, "l"),
    Column("seed", lambda v: v.record.seed),
    Column("status", lambda v: v.record.status, "l"),
    Column("mAP50", lambda v: fmt(finite(v.record.map50))),
    Column("mAP50-95", lambda v: fmt(finite(v.record.map50_95))),
    Column("Δ mAP50-95", lambda v: "—" if v.record.baseline else _run_delta(v)),
    Column("95% CI (images)", lambda v: "—" if v.record.baseline else interval(v.image_interval("map50_95"))),
    Column("GFLOPs", lambda v: gflops(finite(v.record.gflops))),
    Column("GFLOPs (UL)", lambda v: gflops(finite(v.record.gflops_ultralytics))),
    Column("wall (s)", lambda v: fmt(finite(v.record.wall_s), 0)),
    Column("key", lambda v: str(v.record.key)[:8], "l"),
]


def runs_table(runs: Sequence[RunView]) -> str:
    return render(RUN_COLUMNS, runs)


def combined_table(sections: Sequence[Section]) -> str | None:
    """Configurations x datasets: Δ mAP50-95, its image interval and the verdict in each."""
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for label, summary in sections:
        several = len({c.group for c in summary if not c.baseline}) > 1
        for c in summary:
            if c.baseline:
                continue
            name = c.config + (f" ({start_label(c.start)})" if several else "")
            cells[name][label] = (
                f"{pm(c.delta['map50_95'], signed=True, std=False)} {interval(c.image_interval('map50_95'))} "
                f"{verdict_text(c, 'map50_95', note=False)}"
            )
    if not cells:
        return None
    labels = [label for label, _ in sections]
    rows = [[name, *(row.get(label, "-") for label in labels)] for name, row in cells.items()]
    return table(["config", *labels], rows, align="l" * (len(labels) + 1))


# --------------------------------------------------------------------------------------------------- latex
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _tex(s: Any) -> str:
    return (
        "".join(_TEX.get(ch, ch) for ch in str(s))
        .replace("±", r"$\pm$")
        .replace("Δ", r"$\Delta$")
        .replace("\u2212", "$-$")
    )


def _tex_row(c: ConfigSummary) -> str:
    if c.baseline:
        delta, iv = "--", "--"
    else:
        delta = _tex(pm(c.delta["map50_95"], signed=True, std=False))
        i = c.image_interval("map50_95")
        iv = f"$[{i.low:+.4f}, {i.high:+.4f}]$" if i is not None else "--"
        v = c.verdicts.get("map50_95")
        eq = equivalence_text(v)
        iv += f" ({_tex(v.label if v is not None else 'n/a')}{_tex('; ' + eq) if eq else ''})"
    return (
        f"{_tex(c.config)} & {c.seeds} & {_tex(pm(c.map50_95))} & {delta} & {iv} & {_params_m(c, 2)} & "
        f"{_tex(gflops(c.gflops.mean))} \\\\"
    )


def latex(sections: Sequence[tuple[str, str | None, Sequence[ConfigSummary]]]) -> str:
    """booktabs tables of the summaries, one per (dataset, group label, summaries)."""
    out = ["% yolo_attn report: summary tables. Needs \\usepackage{booktabs}.", ""]
    for label, group, summary in sections:
        caption = f"{label}" + (f", {group}" if group else "")
        out += [
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{lrrrlrr}",
            r"\toprule",
            r"Model & Seeds & mAP50-95 & $\Delta$ & 95\% CI & Params (M) & GFLOPs \\",
            r"\midrule",
            *(_tex_row(c) for c in summary),
            r"\bottomrule",
            r"\end{tabular}",
            f"\\caption{{{_tex(caption)}: mAP50-95 (mean $\\pm$ std over seeds), change against the same-seed "
            r"baseline with its 95\% paired-bootstrap interval over validation images, and the verdict.}",
            r"\end{table}",
            "",
        ]
        out += _tex_strata(caption, summary)
    return "\n".join(out)


def _tex_strata(caption: str, summary: Sequence[ConfigSummary]) -> list[str]:
    """The group's size strata as a booktabs table (nothing when no variant has strata)."""
    rows = []
    for c in summary:
        for s in c.strata if not c.baseline else ():
            m, iv, si = s.comparison.map50_95, s.image_interval, s.seed_interval
            seeds = f"$[{si.low:+.4f}, {si.high:+.4f}]$" if si is not None else "--"
            rows.append(
                f"{_tex(c.config)} & {s.name} & {s.n_targets} & {m.base:.4f} & {m.variant:.4f} & ${m.delta:+.4f}$ & "
                f"$[{iv.low:+.4f}, {iv.high:+.4f}]$ & {seeds} & {_tex(_verdict_cell(s.verdict, c))} \\\\"
            )
    if not rows:
        return []
    return [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{llrrrrlll}",
        r"\toprule",
        r"Model & Objects & Targets & Base AP & Variant AP & $\Delta$ & 95\% CI (images) & 95\% CI (seeds) & Verdict \\",
        r"\midrule",
        *rows,
        r"\bottomrule",
        r"\end{tabular}",
        f"\\caption{{{_tex(caption)}, by object size (COCO areas below $32^2$, $32^2$ to $96^2$, from $96^2$ "
        r"original pixels): AP50-95 of baseline and variant, the change with its intervals over images and seeds, "
        r"and the verdict.}",
        r"\end{table}",
        "",
    ]


# --------------------------------------------------------------------------------------------------- csv
#: ``results.csv`` starts with these columns; every other scalar field of the records follows, then what the report
#: adds (``baseline_key``, ``d_<scalar>``, ``config``).
RESULTS_FIRST = [
    "key", "name", "status", "baseline", "base", "block", "family", "position", "args", "seed", "map50", "map50_95",
    "precision", "recall", "d_map50_95", "d_map50_95_low", "d_map50_95_high", "d_map50", "d_map50_low",
    "d_map50_high", "verdict_map50_95", "verdict_map50", "params", "gflops", "gflops_ultralytics", "gflops_imgsz",
    "latency_ms_b1", "peak_mb_b1", "bench_batch", "bench_imgsz", "bench_device", "imgsz", "epochs", "train_s",
    "wall_s", "device", "data", "train", "pretrained", "error", "started", "finished",
]  # fmt: skip
#: Record fields too large or nested for a CSV cell.
RESULTS_SKIP = {"traceback", "versions", "gflops_by_op", "validation", "transfer", "artifacts", "utilisation"}


def results_row(run: RunView, config: ConfigSummary | None) -> dict[str, Any]:
    """One ``results.csv`` row: the record's fields (one level), its same-seed change with the image interval, and its
    configuration's label and verdicts. Keys the report adds are present only when they have a value."""
    added: dict[str, Any] = {"baseline_key": run.baseline.key if run.baseline is not None else None}
    added.update({f"d_{name}": d for name, d in run.deltas.items()})
    for m in METRICS:
        iv = run.image_interval(m)
        added[f"d_{m}_low"], added[f"d_{m}_high"] = (iv.low, iv.high) if iv is not None else (None, None)
    if config is not None:
        for m in METRICS:
            v = config.verdicts.get(m)
            added[f"verdict_{m}"] = v.label if v is not None else None
        added["config"] = config.config
    for name, ap in (run.strata or {}).items():  # the run's own AP50-95 per COCO size stratum
        added[f"ap50_95_{name}"] = ap
    row = run.record.flat()
    row.update({k: v for k, v in added.items() if v is not None})
    return row


def _low(iv: Any) -> float | None:
    return iv.low if iv is not None else None


def _high(iv: Any) -> float | None:
    return iv.high if iv is not None else None


def _summary_columns() -> list[tuple[str, Callable[[str, ConfigSummary], Any]]]:
    """The columns of ``summary.csv``: name, and its value from (dataset label, configuration)."""
    cols: list[tuple[str, Callable[[str, ConfigSummary], Any]]] = [
        ("dataset", lambda label, c: label),
        ("group", lambda _, c: start_label(c.start)),
        ("config", lambda _, c: c.config),
        ("baseline", lambda _, c: c.baseline),
        ("seeds", lambda _, c: c.seeds),
        ("seed_list", lambda _, c: c.seed_list),
        ("pairs", lambda _, c: c.pairs),
        ("n_images", lambda _, c: c.n_images),
        ("map50", lambda _, c: c.map50.mean),
        ("map50_std", lambda _, c: c.map50.std),
        ("map50_95", lambda _, c: c.map50_95.mean),
        ("map50_95_std", lambda _, c: c.map50_95.std),
    ]
    for m in METRICS:

        def verdict(c: ConfigSummary, m: str = m) -> Any:
            return c.verdicts.get(m)

        cols += [
            (f"d_{m}", lambda _, c, m=m: c.delta[m].mean),
            (f"d_{m}_std", lambda _, c, m=m: c.delta[m].std),
            (f"d_{m}_low", lambda _, c, m=m: _low(c.image_interval(m))),
            (f"d_{m}_high", lambda _, c, m=m: _high(c.image_interval(m))),
            (f"d_{m}_seed_low", lambda _, c, m=m: _low(c.seed_intervals.get(m))),
            (f"d_{m}_seed_high", lambda _, c, m=m: _high(c.seed_intervals.get(m))),
            (f"d_{m}_detectable", lambda _, c, m=m: c.detectable(m)),
            (f"d_{m}_limited_by", lambda _, c, m=m: c.limited_by(m)),
            (f"verdict_{m}", lambda _, c, v=verdict: v(c).label if v(c) is not None else None),
            (f"verdict_{m}_note", lambda _, c, v=verdict: v(c).note if v(c) is not None else None),
        ]
    cols += [
        ("intervals", lambda _, c: c.unavailable),
        ("params", lambda _, c: c.params.mean),
        ("gflops", lambda _, c: c.gflops.mean),
        ("gflops_ultralytics", lambda _, c: c.gflops_ultralytics.mean),
        ("gflops_imgsz", lambda _, c: c.first.gflops_imgsz),
        ("latency_ms_b1", lambda _, c: c.latency_ms_b1.mean),
        ("data", lambda _, c: c.data),
        ("train", lambda _, c: c.train),
        ("margin", lambda _, c: c.margin),
    ]
    cols += [(f"equivalence_{m}", lambda _, c, m=m: equivalence_text(c.verdicts.get(m))) for m in METRICS]
    for name in STRATA:  # per COCO size stratum: the AP50-95 of both sides, the change, both intervals, the verdict

        def get(c: ConfigSummary, name: str = name) -> StratumSummary | None:
            return next((s for s in c.strata if s.name == name), None)

        cols += [
            (f"n_targets_{name}", lambda _, c, g=get: g(c).n_targets if g(c) else None),
            (f"ap_{name}_base", lambda _, c, g=get: g(c).comparison.map50_95.base if g(c) else None),
            (f"ap_{name}", lambda _, c, g=get: g(c).comparison.map50_95.variant if g(c) else None),
            (f"d_ap_{name}", lambda _, c, g=get: g(c).comparison.map50_95.delta if g(c) else None),
            (f"d_ap_{name}_low", lambda _, c, g=get: g(c).image_interval.low if g(c) else None),
            (f"d_ap_{name}_high", lambda _, c, g=get: g(c).image_interval.high if g(c) else None),
            (f"d_ap_{name}_seed_low", lambda _, c, g=get: _low(g(c).seed_interval) if g(c) else None),
            (f"d_ap_{name}_seed_high", lambda _, c, g=get: _high(g(c).seed_interval) if g(c) else None),
            (f"verdict_ap_{name}", lambda _, c, g=get: g(c).verdict.label if g(c) else None),
            (f"equivalence_ap_{name}", lambda _, c, g=get: equivalence_text(g(c).verdict) if g(c) else None),
        ]
    return cols + [("utilisation", lambda _, c: use_line(c.runs) or None)]


#: ``summary.csv``: one row per configuration and dataset.
SUMMARY_COLUMNS = _summary_columns()


def summary_row(label: str, c: ConfigSummary) -> dict[str, Any]:
    """One ``summary.csv`` row (the same columns, :data:`SUMMARY_COLUMNS`, for every configuration)."""
    return {name: get(label, c) for name, get in SUMMARY_COLUMNS}


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, first: Sequence[str] = (), skip: Iterable[str] = ()):
    """``rows`` as CSV: the ``first`` columns, then every other key in the order rows name them (except ``skip`` and
    keys whose only values are dicts); lists and dicts as JSON, None as an empty cell."""
    cols, skip = list(first), set(skip)
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and k not in skip and not isinstance(v, dict)]
    keep = set(cols)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items() if k in keep})
