"""Writes the report's files: ``report.md`` assembled from sections, ``results.csv``, ``summary.csv``,
``summary.tex`` and the plots, all from the typed summaries of :mod:`yolo_attn.report.summary`.

The Markdown document is three lists of small functions, each returning its lines (empty when it has nothing to
say): :data:`SETTINGS` (the bullet list under the title), :data:`GROUP_SECTIONS` (after each comparison group's
summary table, when the group has variants) and :data:`TAIL_SECTIONS` (after the datasets). A new part of the report
(per-stratum rows, a per-run utilisation table, a search section, a provenance line per comparator family, the split
the numbers come from) is one function added to one of them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_attn.report import tables
from yolo_attn.report.explained import ExplainFigures, explain_figures
from yolo_attn.report.plots import plot_cost, plot_delta_by_position, plot_map_vs_gflops
from yolo_attn.report.summary import (
    ConfigSummary,
    RunView,
    compare,
    load_matches,
    load_records,
    run_views,
    start,
    start_label,
    stem,
    summarize,
)
from yolo_attn.store import ResultStore, RunRecord

__all__ = ["GROUP_SECTIONS", "REPORT_GROUP_SECTIONS", "SETTINGS", "TAIL_SECTIONS", "Report", "write_report"]


@dataclass(frozen=True)
class Report:
    """Everything a section of ``report.md`` may read.

    Attributes:
        path: The store file.
        records: Every record, in store order.
        runs: Every run with its baseline, differences and image interval (failed runs too), in store order.
        summary: Every configuration with its statistics, all datasets.
        datasets: (dataset label, its configurations), in order.
        notes: Problems with per-image files.
        with_matches: Keys of the runs that have per-image matches.
        resamples: Bootstrap replicates.
        ci: Confidence level.
        margin: Equivalence margin of the verdicts (None: no equivalence call).
        figures: (group, config) -> the variant's explain figures or why there are none.
        search: The search's outcome (``<store folder>/search.json``, :class:`yolo_attn.search.SearchOutcome`), if any.
    """

    path: Path
    records: Sequence[RunRecord]
    runs: Sequence[RunView]
    summary: Sequence[ConfigSummary]
    datasets: Sequence[tuple[str, Sequence[ConfigSummary]]]
    notes: Sequence[str]
    with_matches: frozenset
    resamples: int
    ci: float
    margin: float | None = None
    figures: Mapping[tuple[str, str], ExplainFigures] = field(default_factory=dict)
    search: Any = None

    @property
    def names(self) -> dict[str, str]:
        return {r.key: r.name for r in self.records}

    @property
    def first(self) -> RunRecord | None:
        """The first finished record (else the first record): the settings the sweep shares."""
        done = [r for r in self.records if r.ok] or list(self.records)
        return done[0] if done else None


# --------------------------------------------------------------------------------------------------- settings
def _setup_lines(rep: Report) -> list[str]:
    recs = rep.records
    trains = {json.dumps(r.train, sort_keys=True) for r in recs}
    starts = []
    for p in dict.fromkeys(start(r) for r in recs):
        if p and p.startswith("run:"):
            src = next((r for r in recs if r.key == p[4:]), None)
            starts.append(f"{start_label(p, rep.names)}: `{(src.weights if src else None) or '?'}`")
        else:
            starts.append(str(p) if p else "none (random init)")
    return [
        f"- data: {', '.join(f'`{d}`' for d in sorted({str(r.data) for r in recs}))}",
        f"- training overrides: {', '.join(f'`{t}`' for t in sorted(trains))}",
        f"- pretrained: {', '.join(starts)}",
        f"- seeds: {sorted({r.seed for r in recs}, key=str)}",
    ]


def _split_line(rep: Report) -> list[str]:
    """Which split every number comes from (``--eval-split``)."""
    splits = sorted({r.eval_split for r in rep.records})
    if splits == ["val"]:
        return [
            "- evaluation split: every mAP, per-image match, interval and verdict comes from each run's final "
            "validation on `val`, the split `best.pt` was chosen on (`--eval-split test` scores a held-out split)"
        ]
    return [
        f"- evaluation split: every mAP, per-image match, interval and verdict comes from each run's final validation "
        f"on {' / '.join(f'`{s}`' for s in splits)} (each group's heading names its split); training and the choice "
        "of `best.pt` used `val`"
    ]


def _statistics_line(rep: Report) -> list[str]:
    return [
        f"- statistics: {rep.ci:.0%} intervals of the change against the baseline of the same seed, data and starting "
        f"weights. Images: paired percentile bootstrap over the validation images ({rep.resamples} resamples, both "
        "models scored on each resample, the difference averaged over the seed pairs), from the per-image matches of "
        "each run's final validation. Seeds: Student-t over the per-seed differences (from 3 seeds). Verdict: "
        '"better" / "worse" when both intervals exclude zero on the same side, else "no detectable '
        'difference"; "detectable" is the half-width of the wider interval (smaller true changes are lost in the '
        "noise: add images when the images limit it, seeds when the seeds do)"
    ]


def _attention_in_baselines(rep: Report) -> list[str]:
    """One line per baseline whose model already has attention inside (YOLO11 / YOLO26's C2PSA...).

    The store names each baseline's model YAML; a YAML that cannot be found any more is left out.
    """
    from yolo_attn.edit import attention_rows

    lines, seen = [], set()
    for r in rep.records:
        model = r.model_yaml or r.model
        if not r.baseline or not model or model in seen:
            continue
        seen.add(model)
        try:
            rows = attention_rows(str(model))
        except Exception:  # moved or deleted since the run; the rest of the report does not need it
            continue
        if rows:
            where = ", ".join(f"{m} (row {i})" for i, m in rows)
            lines.append(
                f'- baseline `{stem(r)}` already contains attention: {where}. Here "baseline" means the base model '
                "without yolo_attn blocks, not a model without attention."
            )
    return lines


def _comparator_lines(rep: Report) -> list[str]:
    """One line per comparator family (Ultralytics' own attention, wrapped): where its module comes from."""
    from yolo_attn.edit import families
    from yolo_attn.registry import family_origin

    lines, fams = [], {r.family for r in rep.records if r.family}
    if fams:
        families()  # every block registered (the package's and plugins'), so the registry knows their origins
    for fam in sorted(fams):
        origin = family_origin(fam)
        if origin:
            trained = sorted({str((r.versions or {}).get("ultralytics")) for r in rep.records if r.family == fam})
            lines.append(
                f"- comparator `{fam}`: not this package's block but {origin}, in a residual that starts as the "
                f"identity (runs trained with Ultralytics {', '.join(trained)})"
            )
    return lines


def _measurement_lines(rep: Report) -> list[str]:
    first, lines = rep.first, []
    if first is None:
        return lines
    if first.gflops_imgsz:
        lines.append(
            f"- GFLOPs: counted at {first.gflops_imgsz}x{first.gflops_imgsz}, batch 1, by one forward pass under "
            "FlopCounterMode (convolutions, matmul/einsum/SDPA and grid_sample; 2 FLOPs per multiply-add), next to "
            "Ultralytics' `get_flops` on the fused model"
        )
    if first.bench_device:
        bb = first.bench_batch
        lines.append(
            f"- latency / peak memory: fused model, eval-mode forward, median of the timed passes after warm-up, "
            f"at {first.bench_imgsz} on `{first.bench_device}`, batch 1{f' and {bb}' if bb else ''}; "
            "peak memory is what the forward allocates above the model and input"
        )
    v = first.versions or {}
    if v:
        lines.append(
            "- environment: "
            + ", ".join(f"{k} {v[k]}" for k in ("yolo_attn", "ultralytics", "torch", "thop", "python", "gpu") if k in v)
        )
    return lines


def _verdict_legend(rep: Report) -> list[str]:
    m = f"±{rep.margin:g}" if rep.margin is not None else "±M"
    low = f"\u2212{rep.margin:g}" if rep.margin is not None else "\u2212M"
    given = "" if rep.margin is not None else " (with `--margin M`; not asked for here)"
    return [
        "- verdicts:",
        "  - **better** / **worse**: the image interval and (from 3 seeds) the seed interval both exclude zero on that "
        "side",
        "  - **no detectable difference**: not both; the change may exist but is below what this sweep resolves "
        '(see "detectable")',
        f"  - **equivalent within {m}**{given}: both intervals lie inside [{low}, +{m[1:]}]: any change is smaller "
        "than the margin",
        f"  - **not worse than {low}**{given}: both intervals lie above {low}, not both inside the margin",
    ]


#: The bullet list under the title, in order.
SETTINGS: list[Callable[[Report], list[str]]] = [
    _setup_lines,
    _split_line,
    _statistics_line,
    _verdict_legend,
    _attention_in_baselines,
    _comparator_lines,
    _measurement_lines,
]


# --------------------------------------------------------------------------------------------------- per group
def _verdict_section(group: Sequence[ConfigSummary]) -> list[str]:
    return [
        "Is it better? Verdict per metric, and the smallest difference this sweep could detect:",
        "",
        tables.verdict_table(group),
        "",
    ]


def _class_section(group: Sequence[ConfigSummary]) -> list[str]:
    ct = tables.class_table(group)
    if not ct:
        return []
    return [
        "Per class (the largest changes of AP50-95 first; intervals over images, not corrected for the number of "
        "classes: each excludes zero by chance one time in twenty):",
        "",
        ct,
        "",
    ]


def _strata_section(group: Sequence[ConfigSummary]) -> list[str]:
    st = tables.strata_table(group)
    lacking = [f"`{v.record.name}` (seed {v.record.seed})" for c in group for v in c.runs if v.strata is None]
    md = []
    if st:
        md += [
            "By object size (COCO areas, original pixels: small below 32², medium 32² to 96², large from 96²; boxes "
            "of resized validation images are scaled back to the original image). AP50-95 per stratum, its change "
            "with the image interval (paired bootstrap, same resamples as the overall metric) and the seed interval "
            "of the per-seed changes; not corrected for the three strata:",
            "",
            st,
            "",
        ]
    if lacking and (st or all(c.unavailable != "no per-image file" for c in group if not c.baseline)):
        md += [
            f"Size strata unavailable for {len(lacking)} run{'s' * (len(lacking) > 1)}: their per-image files carry "
            "no box areas (format 1, written before yolo_attn.matches/2) or are missing: " + ", ".join(lacking) + ".",
            "",
        ]
    return md


def _use_section(group: Sequence[ConfigSummary]) -> list[str]:
    ut = tables.use_table(group)
    if not ut:
        return []
    return [
        "Block use after training (`RunRecord.utilisation`, on the first validation images): the norm of each "
        "block's residual branch as a share of its input's (near 0%: the block stayed the identity and was not used), "
        "and its learned gates:",
        "",
        ut,
        "",
    ]


#: What follows a comparison group's summary table when the group has variants, in order.
GROUP_SECTIONS: list[Callable[[Sequence[ConfigSummary]], list[str]]] = [
    _verdict_section,
    _strata_section,
    _use_section,
    _class_section,
]


def _explain_section(rep: Report, group: Sequence[ConfigSummary]) -> list[str]:
    figs = [rep.figures[(c.group, c.config)] for c in group if (c.group, c.config) in rep.figures]
    if not figs:
        return []
    md = [
        "What the blocks look at (`yolo-attn explain`): per variant, the baseline (top row) and the variant (bottom) "
        "of the same seed on the same validation images: detections, EigenCAM, and each block's attention at the "
        "detections (DAT: its sampling points).",
        "",
    ]
    for f in figs:
        if f.note:
            md += [f"- `{f.config}`: no figures, {f.note}.", ""]
            continue
        md += [f"`{f.config}` (seed {f.seed}):", ""]
        md += [f"![{f.config}: {p.stem}]({p.relative_to(p.parents[2]).as_posix()})" for p in f.paths] + [""]
    return md


#: Like :data:`GROUP_SECTIONS`, for sections that read the whole report too (files it wrote: the explain figures).
REPORT_GROUP_SECTIONS: list[Callable[[Report, Sequence[ConfigSummary]], list[str]]] = [_explain_section]


# --------------------------------------------------------------------------------------------------- tail
def _combined_section(rep: Report) -> list[str]:
    combined = tables.combined_table(rep.datasets) if len(rep.datasets) > 1 else None
    return ["## All datasets: Δ mAP50-95, 95% CI over images, verdict", "", combined, ""] if combined else []


def _runs_section(rep: Report) -> list[str]:
    return ["## Per run", "", tables.runs_table(rep.runs), ""]


def _intervals_section(rep: Report) -> list[str]:
    lacking = [r for r in rep.records if r.ok and r.key not in rep.with_matches]
    if not lacking and not rep.notes:
        return []
    md = ["## Intervals", ""]
    if lacking:
        md.append(
            f"Intervals unavailable for {len(lacking)} run{'s' * (len(lacking) > 1)} without a per-image file "
            "(written before runs kept their final validation's matches, or the capture failed): "
            + ", ".join(f"`{r.name}` (seed {r.seed})" for r in lacking)
            + "."
        )
    return md + [f"- {n}" for n in rep.notes] + [""]


def _failed_section(rep: Report) -> list[str]:
    failed = [r for r in rep.records if not r.ok]
    if not failed:
        return []
    md = ["## Failed runs", ""]
    for r in failed:
        log = f" (log: `{r.log}`)" if r.log else ""
        md.append(f"- `{r.name}` (seed {r.seed}, key {str(r.key)[:8]}): {r.error}{log}")
    return md + [""]


def _measurement_section(rep: Report) -> list[str]:
    odd = [r for r in rep.records if r.measure_error or r.fuse_error]
    if not odd:
        return []
    return ["## Measurement problems", ""] + [f"- `{r.name}` (seed {r.seed}): {r.measure_error or r.fuse_error}" for r in odd] + [""]  # fmt: skip


def _search_section(rep: Report) -> list[str]:
    if rep.search is None:
        return []
    from yolo_attn.search import search_markdown

    return search_markdown(rep.search)


#: What follows the datasets' sections, in order.
TAIL_SECTIONS: list[Callable[[Report], list[str]]] = [
    _combined_section,
    _search_section,
    _runs_section,
    _intervals_section,
    _failed_section,
    _measurement_section,
]


# --------------------------------------------------------------------------------------------------- datasets
def _dataset_labels(datas: Sequence[str | None]) -> dict[str | None, str]:
    """Short distinct names: the shortest tail of each path that tells them apart (``a/shapes.yaml``)."""
    uniq = list(dict.fromkeys(datas))
    parts = {d: Path(str(d)).parts or (str(d),) for d in uniq}
    for k in range(1, max((len(p) for p in parts.values()), default=1) + 1):
        labels = {d: "/".join(p[-k:]) for d, p in parts.items()}
        if len(set(labels.values())) == len(labels):
            return labels
    return {d: str(d) for d in uniq}


def _group_label(summary: Sequence[ConfigSummary], group: str, names: dict[str, str]) -> str:
    """Starting weights, and the training overrides that differ from the dataset's other groups."""
    mine = next(c for c in summary if c.group == group)
    others = [c.train or {} for c in summary if c.group != group]
    train = mine.train or {}
    differ = {k: v for k, v in train.items() if any(o.get(k) != v for o in others)}
    text = start_label(mine.start, names)
    split = mine.runs[0].record.eval_split if mine.runs else "val"
    text += f", scored on {split}" if split != "val" else ""
    return text + (", " + " ".join(f"{k}={v}" for k, v in differ.items()) if differ else "")


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in label.replace(".yaml", "")).strip("_")


def _dataset_section(
    rep: Report, data: str | None, label: str, summary: Sequence[ConfigSummary], out: Path
) -> tuple[list[str], list[tuple[str, str | None, Sequence[ConfigSummary]]], list[Path]]:
    """One dataset's Markdown, its LaTeX tables (label, group label, summaries) and its plots."""
    several = len(rep.datasets) > 1
    groups = list(dict.fromkeys(c.group for c in summary))
    md = [f"## {label}" if several else "## Per configuration", ""]
    if several:
        md += [f"Dataset `{data}`.", ""]
    md += [
        "Mean ± standard deviation over seeds; Δ is against the baseline trained with the same seed, data and "
        "starting weights; 95% intervals of Δ over validation images (paired bootstrap) and over seeds (t, from "
        "3 seeds).",
        "",
    ]
    tex = []
    for g in groups:
        in_group = [c for c in summary if c.group == g]
        glabel = _group_label(summary, g, rep.names) if len(groups) > 1 else None
        if glabel:
            md += [f"### {glabel}", ""]
        md += [tables.summary_table(in_group), ""]
        tex.append((label, glabel, in_group))
        if any(not c.baseline for c in in_group):
            for section in GROUP_SECTIONS:
                md += section(in_group)
            for rsection in REPORT_GROUP_SECTIONS:
                md += rsection(rep, in_group)
    compared = {c.group for c in summary if not c.baseline}
    with_variants = [c for c in summary if c.group in compared] or list(summary)
    tag = f"-{_slug(label)}" if several else ""
    plots = []
    for p in (
        plot_map_vs_gflops(with_variants, out / f"map_vs_gflops{tag}.png", title=label if several else ""),
        plot_delta_by_position(summary, out / f"delta_by_position{tag}.png"),
        plot_cost(with_variants, out / f"cost{tag}.png", title=label if several else ""),
    ):
        if p is not None:
            plots.append(p)
            md += [f"![{p.stem}]({p.name})", ""]
    return md, tex, plots


# --------------------------------------------------------------------------------------------------- files
def write_report(
    store: str | Path,
    out: str | Path | None = None,
    title: str | None = None,
    resamples: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    margin: float | None = None,
    explain_images: int = 4,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.csv``, ``summary.csv``, ``summary.tex`` and the PNG plots; return their paths.

    Args:
        store: Sweep output folder or its ``results.jsonl``.
        out: Report folder (default ``<sweep folder>/report``).
        title: Report title.
        resamples: Bootstrap replicates per comparison.
        ci: Confidence level of the intervals and verdicts.
        seed: Seed of the bootstrap resampling (same seed, same intervals).
        margin: Equivalence margin (e.g. 0.005 mAP50-95): verdicts also say "equivalent within ±margin" or "not
            worse than −margin" when both intervals allow it (None: no equivalence call).
        explain_images: Validation images of the explain figure drawn per variant beside its baseline (0: none).

    Returns:
        ``markdown``, ``csv``, ``summary_csv``, ``latex`` (paths), ``plots`` (paths), ``summary`` (the
        :class:`~yolo_attn.report.summary.ConfigSummary` of every configuration with its statistics, all datasets),
        ``explain`` (paths of the explain figures).
    """
    path = ResultStore(store).path
    records = load_records(path)
    matches, notes = load_matches(path.parent, records)
    out = Path(out) if out else path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    views = run_views(records)
    summary = compare(summarize(views), matches, resamples=resamples, ci=ci, seed=seed, margin=margin)
    owner = {v.key: c for c in summary for v in c.runs}
    compared = {v.key: v for c in summary for v in c.runs}
    runs = [compared.get(v.key, v) for v in views]  # with their image intervals, failed runs too

    labels = _dataset_labels([c.data for c in summary])
    by_data: dict[str | None, list[ConfigSummary]] = defaultdict(list)
    for c in summary:
        by_data[c.data].append(c)
    rep = Report(
        path=path,
        records=records,
        runs=runs,
        summary=summary,
        datasets=[(labels[d], cs) for d, cs in by_data.items()],
        notes=notes,
        with_matches=frozenset(matches),
        resamples=resamples,
        ci=ci,
        margin=margin,
        figures=explain_figures(summary, path.parent, out, explain_images),
        search=_search(path.parent),
    )

    body: list[str] = []
    tex: list[tuple[str, str | None, Sequence[ConfigSummary]]] = []
    plots: list[Path] = []
    for data, cs in by_data.items():
        md, t, p = _dataset_section(rep, data, labels[data], cs, out)
        body.append("\n".join(md))
        tex += t
        plots += p

    csv_path, summary_csv, tex_path = out / "results.csv", out / "summary.csv", out / "summary.tex"
    tables.write_csv([tables.results_row(v, owner.get(v.key)) for v in runs], csv_path, tables.RESULTS_FIRST,
                     tables.RESULTS_SKIP)  # fmt: skip
    summary_rows = [tables.summary_row(label, c) for label, cs in rep.datasets for c in cs]
    tables.write_csv(summary_rows, summary_csv, [name for name, _ in tables.SUMMARY_COLUMNS])
    tex_path.write_text(tables.latex(tex))

    n_done = sum(r.ok for r in records)
    md = [f"# {title or f'yolo_attn ablation: {path.parent.name}'}", ""]
    md += [f"{len(records)} runs in `{path}`: {n_done} done, {len(records) - n_done} failed.", ""]
    for lines in SETTINGS:
        md += lines(rep)
    md.append("")
    md += body if body else ["## Per configuration", "", "_no finished runs_", ""]
    for section in TAIL_SECTIONS:
        md += section(rep)
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))
    return {
        "markdown": md_path,
        "csv": csv_path,
        "summary_csv": summary_csv,
        "latex": tex_path,
        "plots": plots,
        "summary": summary,
        "explain": [p for f in rep.figures.values() for p in f.paths],
    }


def _search(folder: Path) -> Any:
    """The search's outcome when the store holds one (``search.json``), else None."""
    if not (folder / "search.json").is_file():
        return None
    from yolo_attn.search import SearchOutcome  # plan, edit...: only for stores a search wrote

    return SearchOutcome.load(folder)
