"""Report of an ablation: does a block help, by how much, and could the sweep have told? Read from the store only.

Input: a results store (:class:`yolo_attn.store.ResultStore`, ``<out>/results.jsonl``) and the per-image matches its
runs left beside their records (artifact ``matches``, :class:`yolo_attn.stats.Matches`); nothing else is read (no
Ultralytics run folder, no model), except each baseline's model YAML, when it can still be found, to say whether the
baseline already contains attention (YOLO11 / YOLO26 have C2PSA). Outputs (default ``<out>/report/``):

- ``report.md``: settings and environment; per dataset (one section each) and comparison group (same training
  overrides and starting weights): the summary table (mean and spread over seeds, change against the baseline of the
  same seed, its 95% intervals and the verdict, cost), the verdicts for mAP50 and mAP50-95 with the smallest
  difference the sweep could detect, the classes that changed most; with several datasets, a table of verdicts
  across them; every run; runs without a per-image file; failed runs.
- ``results.csv``: one row per run, every scalar field of the record, plus its change against the same-seed baseline
  with the image interval (``d_map50_95_low`` / ``_high``...) and its configuration's verdicts.
- ``summary.csv``: one row per configuration: means, spreads, intervals, verdicts, cost.
- ``summary.tex``: the summary tables as LaTeX (booktabs), one ``table`` per dataset and group.
- Plots, per dataset (suffixed with the dataset's name when there are several): ``map_vs_gflops.png`` (mAP50-95
  against GFLOPs counted at the real size, Pareto front, Ultralytics' own GFLOPs as hollow markers),
  ``delta_by_position.png`` (change against the baseline per insertion point and family: bars the mean over seeds,
  dots each seed, black whiskers the 95% image interval, grey whiskers the 95% seed interval from 3 seeds on) and
  ``cost.png``.

Statistics (:mod:`yolo_attn.stats`): each variant is compared with the baseline of the same seed, data and training
group. The *image interval* is the percentile interval of the paired bootstrap over validation images (each resample
scores both models on the same images, the difference averaged over the seed pairs); the *seed interval* is the
Student-t interval of the per-seed differences (from 3 seeds). The verdict is "better" or "worse" only when both
exclude zero on the same side; with fewer than 3 seeds it rests on the images and says that training noise was not
measured. The smallest detectable difference is the half-width of the wider interval. Runs without a per-image file
(stores written before it existed) get no image interval; the report says which.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend change).

Examples:
    >>> import tempfile
    >>> from yolo_attn.report import write_report
    >>> from yolo_attn.store import ResultStore, RunRecord
    >>> folder = tempfile.mkdtemp()
    >>> ResultStore(folder).append(RunRecord("k0", name="yolov8n", status="done", baseline=True, seed=0,
    ...                                      map50_95=0.3, gflops=8.7, gflops_ultralytics=8.7))
    >>> paths = write_report(folder)
    >>> paths["markdown"].name, [p.name for p in paths["plots"]]
    ('report.md', ['map_vs_gflops.png', 'cost.png'])
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from yolo_attn.markdown import table
from yolo_attn.store import ResultStore, RunRecord

__all__ = ["METRICS", "compare", "load_matches", "load_records", "pareto_front", "summarize", "write_report"]

#: The metrics that get intervals and verdicts: record field -> name in tables.
METRICS = {"map50_95": "mAP50-95", "map50": "mAP50"}
_NO_FILE = "no per-image file"


# --------------------------------------------------------------------------------------------------- data
def load_records(store: str | Path) -> list[RunRecord]:
    """Latest record per run from a sweep folder or a ``results.jsonl`` path, in file order."""
    path = ResultStore(store).path
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path} (run `yolo-attn ablate ... --out {path.parent}` first)")
    return list(ResultStore(path).records().values())


def _flat(r: RunRecord | Mapping) -> dict:
    """A record as one level of keys (``latency_ms_b1``...), whichever form it came in."""
    return (r if isinstance(r, RunRecord) else RunRecord.from_dict(r)).flat()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _config_label(r: Mapping) -> str:
    if r.get("baseline"):
        return f"{_stem(r)} (baseline)"
    if r.get("position") and r.get("block"):
        fam = r.get("family") or r.get("block")
        extra = r.get("args") or []
        return f"{fam}@{r['position']}" + (f"[{','.join(map(str, extra))}]" if extra else "")
    return _stem(r)


def _stem(r: Mapping) -> str:
    return Path(str(r.get("base") or r.get("model") or r.get("name"))).stem


def _start(r: Mapping) -> str | None:
    """The starting weights: the run that trained them (stable when the store moves), else the file."""
    return f"run:{r['pretrained_run']}" if r.get("pretrained_run") else r.get("pretrained")


def _group(r: Mapping) -> str:
    """Runs that are comparable: same data, training overrides and starting weights."""
    return json.dumps([r.get("data"), r.get("train"), _start(r)], sort_keys=True, default=str)


def _baselines(records: Sequence[Mapping]) -> dict[tuple, Mapping]:
    out = {}
    for r in records:
        if r.get("baseline") and r.get("status") == "done":
            out[(_group(r), r.get("seed"), _stem(r))] = r
            out.setdefault((_group(r), r.get("seed"), None), r)
    return out


def _baseline_of(r: Mapping, bases: Mapping[tuple, Mapping]) -> Mapping | None:
    g, s = _group(r), r.get("seed")
    return bases.get((g, s, _stem(r))) or bases.get((g, s, None))


def _with_deltas(records: Sequence[RunRecord | Mapping]) -> list[dict]:
    records = [_flat(r) for r in records]
    bases = _baselines(records)
    out = []
    for r in records:
        b = _baseline_of(r, bases)
        if b is not None and r.get("status") == "done":
            r["baseline_key"] = b.get("key")
            for k in ("map50_95", "map50", "gflops", "params", "latency_ms_b1"):
                if _num(r.get(k)) is not None and _num(b.get(k)) is not None:
                    r[f"d_{k}"] = r[k] - b[k]
        out.append(r)
    return out


def _mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


def summarize(records: Sequence[RunRecord | Mapping]) -> list[dict]:
    """One row per configuration (base model, block, position, args, comparison group), aggregated over seeds.

    Each row keeps its runs (``runs``, with their change against the same-seed baseline); :func:`compare` adds the
    intervals and verdicts.
    """
    rows = _with_deltas(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("status") != "done":
            continue
        key = (
            _group(r),
            _stem(r),
            bool(r.get("baseline")),
            r.get("family") or r.get("block"),
            r.get("position"),
            json.dumps(r.get("args") or []),
        )
        groups[key].append(r)
    out = []
    for key, rs in groups.items():
        first = rs[0]
        row = {
            "config": _config_label(first),
            "baseline": bool(first.get("baseline")),
            "base": _stem(first),
            "family": first.get("family") or first.get("block"),
            "block": first.get("block"),
            "position": first.get("position"),
            "seeds": len(rs),
            "seed_list": [r.get("seed") for r in rs],
            "group": key[0],
            "data": first.get("data"),
            "train": first.get("train"),
            "start": _start(first),
            "gflops_imgsz": first.get("gflops_imgsz"),
            "bench_device": first.get("bench_device"),
            "bench_imgsz": first.get("bench_imgsz"),
            "runs": rs,
        }
        for k in (
            "map50",
            "map50_95",
            "d_map50",
            "d_map50_95",
            "gflops",
            "gflops_ultralytics",
            "params",
            "latency_ms_b1",
            "peak_mb_b1",
            "wall_s",
            "train_s",
        ):
            vals = [_num(r.get(k)) for r in rs]
            row[k] = _mean(vals)
            row[f"{k}_std"] = _std(vals)
            row[f"{k}_all"] = [v for v in vals if v is not None]
        bb = first.get("bench_batch")
        if bb and bb != 1:
            row["bench_batch"] = bb
            row["latency_ms_bN"] = _mean([_num(r.get(f"latency_ms_b{bb}")) for r in rs])
            row["peak_mb_bN"] = _mean([_num(r.get(f"peak_mb_b{bb}")) for r in rs])
        out.append(row)
    order = list(dict.fromkeys(_group(r) for r in rows))  # groups as they first appear in the store
    out.sort(
        key=lambda r: (order.index(r["group"]), not r["baseline"], r["family"] or "", r["position"] or "", r["config"])
    )
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower or equal cost with higher accuracy (cost, accuracy)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# --------------------------------------------------------------------------------------------------- statistics
def load_matches(store: str | Path, records: Sequence[RunRecord]) -> tuple[dict[str, Any], list[str]]:
    """The per-image matches of every finished run that has them, and what is wrong with the others.

    A file that does not reproduce the mAP recorded for its run (beyond 1e-6) is still used, and named in the notes.

    Returns:
        (run key -> :class:`yolo_attn.stats.Matches`, notes).
    """
    from yolo_attn.stats import Matches, map_scores

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


def _reindexed(m: Any, ids: tuple[str, ...] | None) -> Any:
    """``m`` with its images numbered as ``ids`` lists them (same images, other order), or None if the sets differ.

    Only image numbers change; predictions keep their order, so full-sample scores still sort exactly as the
    validator did.
    """
    import numpy as np

    from yolo_attn.stats import Matches

    if ids is None or m.image_ids is None or m.image_ids == ids:
        return m
    pos = {k: i for i, k in enumerate(ids)}
    if len(pos) != len(ids) or sorted(m.image_ids) != sorted(ids):
        return None
    new = np.array([pos[k] for k in m.image_ids], dtype=np.int32)
    return Matches(
        new[m.image], m.conf, m.cls, m.tp, new[m.target_image], m.target_cls, m.n_images, m.iou_thresholds, m.names,
        ids, m.ap_tail,
    )  # fmt: skip


def _paired(bases: Sequence[Any], variants: Sequence[Any]) -> tuple[list, list] | str:
    """Both lists on the first baseline's image numbering, or why they can not be paired."""
    ids = bases[0].image_ids
    b = [_reindexed(m, ids) for m in bases]
    v = [_reindexed(m, ids) for m in variants]
    if any(x is None for x in b + v):
        return "the runs validated different images"
    return b, v


def _bootstrap(bases: list, variants: list, resamples: int, ci: float, seed: int) -> Any:
    from yolo_attn.stats import paired_bootstrap

    pair = _paired(bases, variants)
    if isinstance(pair, str):
        return pair
    try:
        return paired_bootstrap(pair[0], pair[1], n_resamples=resamples, seed=seed, ci=ci)
    except ValueError as e:  # other targets, thresholds or AP conventions: not the same validation
        return str(e)


def compare(
    summary: Sequence[dict],
    matches: Mapping[str, Any],
    resamples: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """Add intervals and verdicts to the variant rows of ``summary`` (and their runs), in place.

    Per variant configuration and metric (:data:`METRICS`): ``d_<m>_low`` / ``_high`` (image interval of the mean
    same-seed difference), ``d_<m>_seed_low`` / ``_high`` (t-interval over seeds, from 3 seeds),
    ``d_<m>_detectable`` (half-width of the wider interval) and ``d_<m>_limited_by`` ("images" or "seeds"),
    ``verdict_<m>`` and ``verdict_<m>_note``; ``classes`` (per-class comparisons) and ``intervals`` (None, or why the
    image interval is unavailable). Each run gets its own ``d_<m>_low`` / ``_high`` (one pair).

    Args:
        summary: Rows of :func:`summarize`.
        matches: Run key -> :class:`yolo_attn.stats.Matches` (:func:`load_matches`).
        resamples: Bootstrap replicates.
        ci: Confidence level of every interval.
        seed: Seed of the bootstrap resampling.
    """
    from yolo_attn.stats import seed_interval, verdict

    by_key = {r["key"]: r for row in summary for r in row["runs"]}
    for row in summary:
        if row["baseline"]:
            continue
        pairs = [(by_key.get(r.get("baseline_key")), r) for r in row["runs"]]
        pairs = [(b, v) for b, v in pairs if b is not None]
        row["pairs"] = len(pairs)
        if not pairs:
            row["intervals"] = "no baseline of the same seed"
            continue
        lacking = [x for b, v in pairs for x in (b, v) if x["key"] not in matches]
        boot = None
        if lacking:
            row["intervals"] = _NO_FILE
        else:
            for b, v in pairs:  # each run against its own baseline, for results.csv
                one = _bootstrap([matches[b["key"]]], [matches[v["key"]]], resamples, ci, seed)
                for m in METRICS:
                    if not isinstance(one, str):
                        iv = getattr(one, m).interval
                        v[f"d_{m}_low"], v[f"d_{m}_high"] = iv.low, iv.high
            if len(pairs) == 1:
                boot = one
            else:
                boot = _bootstrap([matches[b["key"]] for b, _ in pairs], [matches[v["key"]] for _, v in pairs],
                                  resamples, ci, seed)  # fmt: skip
            row["intervals"] = boot if isinstance(boot, str) else None
            boot = None if isinstance(boot, str) else boot
        row["classes"] = list(boot.classes) if boot is not None else []
        row["n_images"] = boot.n_images if boot is not None else None
        for m in METRICS:
            deltas = [v[m] - b[m] for b, v in pairs if _num(v.get(m)) is not None and _num(b.get(m)) is not None]
            s_iv = seed_interval(deltas, ci) if len(deltas) >= 3 else None
            if s_iv is not None:
                row[f"d_{m}_seed_low"], row[f"d_{m}_seed_high"] = s_iv.low, s_iv.high
            if boot is None:
                continue
            cmp = getattr(boot, m)
            row[f"d_{m}_low"], row[f"d_{m}_high"] = cmp.interval.low, cmp.interval.high
            v_ = verdict(cmp.interval, s_iv, n_seeds=len(deltas) if s_iv is not None else min(len(deltas), 2) or 1)
            row[f"verdict_{m}"], row[f"verdict_{m}_note"] = v_.label, v_.note
            half, seed_half = cmp.interval.half_width, s_iv.half_width if s_iv is not None else 0.0
            row[f"d_{m}_detectable"] = max(half, seed_half)
            row[f"d_{m}_limited_by"] = "seeds" if seed_half > half else "images"
            for r in row["runs"]:
                r[f"verdict_{m}"] = v_.label


# --------------------------------------------------------------------------------------------------- tables
def _f(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _g(v: float | None) -> str:
    """GFLOPs: two decimals, three below 1 (tiny test models)."""
    return _f(v, 2 if v is None or abs(v) >= 1 else 3)


def _pm(mean: float | None, std: float | None, nd: int = 4, signed: bool = False) -> str:
    if mean is None:
        return "-"
    s = f"{mean:+.{nd}f}" if signed else f"{mean:.{nd}f}"
    return s + (f" ± {std:.{nd}f}" if std is not None else "")


def _iv(lo: float | None, hi: float | None, nd: int = 4) -> str:
    return "-" if lo is None or hi is None else f"[{lo:+.{nd}f}, {hi:+.{nd}f}]"


def _verdict(r: Mapping, m: str, note: bool = True) -> str:
    label = r.get(f"verdict_{m}")
    if label is None:
        return "—" if r.get("baseline") else f"- ({r.get('intervals') or 'no interval'})"
    return f"{label} ({r[f'verdict_{m}_note']})" if note and r.get(f"verdict_{m}_note") else label


def _summary_table(summary: Sequence[Mapping]) -> str:
    anyn = next((r.get("bench_batch") for r in summary if r.get("bench_batch")), None)
    header = [
        "config",
        "seeds",
        "mAP50",
        "mAP50-95",
        "Δ mAP50-95",
        "95% CI (images)",
        "95% CI (seeds)",
        "verdict",
        "params (M)",
        "GFLOPs",
        "GFLOPs (Ultralytics)",
        "latency b1 (ms)",
    ]
    if anyn:
        header += [f"latency b{anyn} (ms)", f"peak MB b{anyn}"]
    rows = []
    for r in summary:
        base = r["baseline"]
        row = [
            r["config"],
            r["seeds"],
            _pm(r["map50"], r["map50_std"]),
            _pm(r["map50_95"], r["map50_95_std"]),
            "—" if base else _pm(r["d_map50_95"], r["d_map50_95_std"], signed=True),
            "—" if base else _iv(r.get("d_map50_95_low"), r.get("d_map50_95_high")),
            "—" if base else _iv(r.get("d_map50_95_seed_low"), r.get("d_map50_95_seed_high")),
            _verdict(r, "map50_95", note=False),
            _f(r["params"] / 1e6 if r["params"] is not None else None, 3),
            _g(r["gflops"]),
            _g(r["gflops_ultralytics"]),
            _f(r["latency_ms_b1"], 1),
        ]
        if anyn:
            row += [_f(r.get("latency_ms_bN"), 1), _f(r.get("peak_mb_bN"), 1)]
        rows.append(row)
    return table(header, rows, align="lr" + "r" * 5 + "l" + "r" * (len(header) - 8))


def _verdict_table(summary: Sequence[Mapping]) -> str:
    header = [
        "config",
        "metric",
        "Δ (mean ± std over seeds)",
        "95% CI (images)",
        "95% CI (seeds)",
        "detectable",
        "limited by",
        "verdict",
    ]
    rows = []
    for r in summary:
        if r["baseline"]:
            continue
        for m, name in METRICS.items():
            det = r.get(f"d_{m}_detectable")
            rows.append(
                [
                    r["config"],
                    name,
                    _pm(r.get(f"d_{m}"), r.get(f"d_{m}_std"), signed=True),
                    _iv(r.get(f"d_{m}_low"), r.get(f"d_{m}_high")),
                    _iv(r.get(f"d_{m}_seed_low"), r.get(f"d_{m}_seed_high")) if r["seeds"] >= 3 else "-",
                    f"±{det:.4f}" if det is not None else "-",
                    r.get(f"d_{m}_limited_by") or "-",
                    _verdict(r, m),
                ]
            )
    return table(header, rows, align="llrrrrll")


def _class_table(summary: Sequence[Mapping], top: int = 10) -> str | None:
    """Per-class AP50-95 changes (image intervals), the ``top`` largest |Δ| per configuration (all when few)."""
    rows = []
    for r in summary:
        cls = sorted(r.get("classes") or [], key=lambda c: -abs(c.ap50_95.delta))
        for c in cls[:top]:
            iv = c.ap50_95.interval
            rows.append(
                [
                    r["config"],
                    c.name if c.name is not None else str(c.cls),
                    c.n_targets,
                    _f(c.ap50_95.base),
                    _f(c.ap50_95.variant),
                    f"{c.ap50_95.delta:+.4f}",
                    _iv(iv.low, iv.high),
                    {1: "higher", -1: "lower", 0: ""}[iv.side],
                ]
            )
    if not rows:
        return None
    header = ["config", "class", "boxes", "baseline AP50-95", "variant AP50-95", "Δ", "95% CI (images)", "excludes 0"]
    return table(header, rows, align="llrrrrrl")


def _runs_table(rows: Sequence[Mapping]) -> str:
    header = [
        "run",
        "seed",
        "status",
        "mAP50",
        "mAP50-95",
        "Δ mAP50-95",
        "95% CI (images)",
        "GFLOPs",
        "GFLOPs (UL)",
        "wall (s)",
        "key",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r.get("name"),
                r.get("seed"),
                r.get("status"),
                _f(_num(r.get("map50"))),
                _f(_num(r.get("map50_95"))),
                "—" if r.get("baseline") else (f"{r['d_map50_95']:+.4f}" if r.get("d_map50_95") is not None else "-"),
                "—" if r.get("baseline") else _iv(r.get("d_map50_95_low"), r.get("d_map50_95_high")),
                _g(_num(r.get("gflops"))),
                _g(_num(r.get("gflops_ultralytics"))),
                _f(_num(r.get("wall_s")), 0),
                str(r.get("key"))[:8],
            ]
        )
    return table(header, body, align="lrlrrrrrrrl")


def _combined_table(sections: Sequence[tuple[str, Sequence[Mapping]]]) -> str | None:
    """Configurations x datasets: Δ mAP50-95, its image interval and the verdict in each."""
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for label, summary in sections:
        several = len({r["group"] for r in summary if not r["baseline"]}) > 1
        for r in summary:
            if r["baseline"]:
                continue
            name = r["config"] + (f" ({_start_label(r['start'])})" if several else "")
            d = r.get("d_map50_95")
            cells[name][label] = (
                f"{_pm(d, None, signed=True)} {_iv(r.get('d_map50_95_low'), r.get('d_map50_95_high'))} "
                f"{_verdict(r, 'map50_95', note=False)}"
            )
    if not cells:
        return None
    labels = [label for label, _ in sections]
    rows = [[name, *(row.get(label, "-") for label in labels)] for name, row in cells.items()]
    return table(["config", *labels], rows, align="l" * (len(labels) + 1))


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _tex(s: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s)).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def _latex(sections: Sequence[tuple[str, str | None, Sequence[Mapping]]]) -> str:
    """booktabs tables of the summaries, one per dataset and group."""
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
        ]
        for r in summary:
            if r["baseline"]:
                delta, iv = "--", "--"
            else:
                delta = _tex(_pm(r["d_map50_95"], None, signed=True))
                lo, hi = r.get("d_map50_95_low"), r.get("d_map50_95_high")
                iv = f"$[{lo:+.4f}, {hi:+.4f}]$" if lo is not None and hi is not None else "--"
                iv += f" ({_tex(r.get('verdict_map50_95') or 'n/a')})"
            params = _f(r["params"] / 1e6 if r["params"] is not None else None, 2)
            out.append(
                f"{_tex(r['config'])} & {r['seeds']} & {_tex(_pm(r['map50_95'], r['map50_95_std']))} & {delta} & "
                f"{iv} & {params} & {_tex(_g(r['gflops']))} \\\\"
            )
        out += [
            r"\bottomrule",
            r"\end{tabular}",
            f"\\caption{{{_tex(caption)}: mAP50-95 (mean $\\pm$ std over seeds), change against the same-seed "
            r"baseline with its 95\% paired-bootstrap interval over validation images, and the verdict.}",
            r"\end{table}",
            "",
        ]
    return "\n".join(out)


_CSV_FIRST = [
    "key",
    "name",
    "status",
    "baseline",
    "base",
    "block",
    "family",
    "position",
    "args",
    "seed",
    "map50",
    "map50_95",
    "precision",
    "recall",
    "d_map50_95",
    "d_map50_95_low",
    "d_map50_95_high",
    "d_map50",
    "d_map50_low",
    "d_map50_high",
    "verdict_map50_95",
    "verdict_map50",
    "params",
    "gflops",
    "gflops_ultralytics",
    "gflops_imgsz",
    "latency_ms_b1",
    "peak_mb_b1",
    "bench_batch",
    "bench_imgsz",
    "bench_device",
    "imgsz",
    "epochs",
    "train_s",
    "wall_s",
    "device",
    "data",
    "train",
    "pretrained",
    "error",
    "started",
    "finished",
]
_CSV_SKIP = {"traceback", "versions", "gflops_by_op", "validation", "transfer", "artifacts"}


def _write_csv(rows: Sequence[Mapping], path: Path) -> None:
    cols = list(_CSV_FIRST)
    for r in rows:
        for k, v in r.items():
            if k not in cols and k not in _CSV_SKIP and not isinstance(v, dict):
                cols.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items() if k in cols})


def _write_summary_csv(sections: Sequence[tuple[str, Sequence[Mapping]]], path: Path) -> None:
    cols = ["dataset", "group", "config", "baseline", "seeds", "seed_list", "pairs", "n_images"]
    for k in ("map50", "map50_95"):
        cols += [k, f"{k}_std"]
    for m in METRICS:
        cols += [f"d_{m}", f"d_{m}_std", f"d_{m}_low", f"d_{m}_high", f"d_{m}_seed_low", f"d_{m}_seed_high"]
        cols += [f"d_{m}_detectable", f"d_{m}_limited_by", f"verdict_{m}", f"verdict_{m}_note"]
    cols += ["intervals", "params", "gflops", "gflops_ultralytics", "gflops_imgsz", "latency_ms_b1", "data", "train"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for label, summary in sections:
            for r in summary:
                row = {"dataset": label, **r, "group": _start_label(r["start"]), "intervals": r.get("intervals")}
                w.writerow(
                    {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items() if k in cols}
                )


# --------------------------------------------------------------------------------------------------- plots
# Families get colours in the order the summary lists them (the report knows no family names); the baseline is black.
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e"]


def _family_colors(summary: Sequence[Mapping]) -> dict:
    """The same family -> colour map for every plot of a summary (families without a name are grey)."""
    fams = [f for f in dict.fromkeys(r["family"] for r in summary) if f is not None]
    return {None: "#7f7f7f", **{f: _COLORS[i % len(_COLORS)] for i, f in enumerate(fams)}}


def _figure(w: float = 7.5, h: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_map_vs_gflops(summary: Sequence[Mapping], path: Path, title: str = "") -> Path | None:
    pts = [r for r in summary if r["map50_95"] is not None and r["gflops"] is not None]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot(111)
    colors = _family_colors(summary)
    for r in pts:
        c = "black" if r["baseline"] else colors[r["family"]]
        marker = "*" if r["baseline"] else "o"
        ul = r.get("gflops_ultralytics")
        if ul is not None and abs(ul - r["gflops"]) > 1e-3 * max(r["gflops"], 1e-9):
            ax.plot([ul, r["gflops"]], [r["map50_95"], r["map50_95"]], color=c, lw=0.8, ls=":", alpha=0.7)
            ax.scatter([ul], [r["map50_95"]], facecolors="none", edgecolors=c, marker=marker, s=60, zorder=3)
        ax.errorbar(
            r["gflops"],
            r["map50_95"],
            yerr=r["map50_95_std"] or None,
            fmt=marker,
            color=c,
            ms=14 if r["baseline"] else 7,
            capsize=3,
            zorder=4,
        )
        ax.annotate(r["config"], (r["gflops"], r["map50_95"]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    front = pareto_front([(r["gflops"], r["map50_95"]) for r in pts])
    fx = [pts[i]["gflops"] for i in front]
    fy = [pts[i]["map50_95"] for i in front]
    ax.step(fx, fy, where="post", color="gray", lw=1.2, alpha=0.8, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="gray", lw=1.2, zorder=2)
    ax.scatter([], [], marker="*", color="black", s=120, label="baseline")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="same model, Ultralytics' GFLOPs")
    imgsz = next((r.get("gflops_imgsz") for r in pts if r.get("gflops_imgsz")), None)
    ax.set_xlabel(f"GFLOPs at {imgsz or '?'}px, attention included (filled) / Ultralytics' figure (hollow)")
    ax.set_ylabel("mAP50-95 (mean over seeds ± std)")
    ax.set_title(title or "accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_delta_by_position(summary: Sequence[Mapping], path: Path, title: str = "") -> Path | None:
    rows = [r for r in summary if not r["baseline"] and r["d_map50_95"] is not None]
    if not rows:
        return None
    positions = list(dict.fromkeys(r["position"] or r["config"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig = _figure(max(6.0, 1.6 * len(positions) + 2), 4.8)
    ax = fig.add_subplot(111)
    colors = _family_colors(summary)
    labelled: set = set()
    for i, pos in enumerate(positions):
        here = sorted(
            (r for r in rows if (r["position"] or r["config"]) == pos), key=lambda r: families.index(r["family"])
        )
        width = 0.8 / len(here)
        for j, r in enumerate(here):
            fam = r["family"]
            x = i - 0.4 + width * (j + 0.5)
            vals, d = r["d_map50_95_all"], r["d_map50_95"]
            label = None if fam in labelled else (fam or "other")
            ax.bar(x, d, width * 0.9, color=colors[fam], alpha=0.75, label=label)
            labelled.add(fam)
            # whiskers: the 95% image interval (black) and, from 3 seeds, the 95% seed interval (grey, beside it)
            for dx, lo, hi, color in (
                (0.0, r.get("d_map50_95_low"), r.get("d_map50_95_high"), "black"),
                (width * 0.22, r.get("d_map50_95_seed_low"), r.get("d_map50_95_seed_high"), "#888888"),
            ):
                if lo is not None and hi is not None:
                    yerr = [[max(d - lo, 0.0)], [max(hi - d, 0.0)]]
                    ax.errorbar(x + dx, d, yerr=yerr, fmt="none", ecolor=color, capsize=3, lw=1.2, zorder=4)
            ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
            if sum(q["family"] == fam for q in here) > 1:  # same family twice here: different args, say which
                ax.annotate(
                    r["config"], (x, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6, rotation=90
                )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(positions)))
    ax.set_xticklabels(positions, rotation=0)
    ax.set_ylabel("Δ mAP50-95 vs baseline (same seed)")
    nseeds = max(r["seeds"] for r in rows)
    whiskers = "bars: mean, dots: seeds, whiskers: 95% CI over images (black)" + (
        " and seeds (grey)" if any(r.get("d_map50_95_seed_low") is not None for r in rows) else ""
    )
    ax.set_title(
        title or f"change against the baseline per insertion point ({nseeds} seed{'s' * (nseeds > 1)})\n{whiskers}",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="block", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_cost(summary: Sequence[Mapping], path: Path, title: str = "") -> Path | None:
    rows = [r for r in summary if r["gflops"] is not None]
    if not rows:
        return None
    labels = [r["config"] for r in rows]
    fig = _figure(max(7.0, 1.1 * len(rows) + 3), 4.6)
    axes = fig.subplots(1, 3)
    x = list(range(len(rows)))
    family_colors = _family_colors(summary)
    colors = ["black" if r["baseline"] else family_colors[r["family"]] for r in rows]
    ax = axes[0]
    ax.bar([i - 0.2 for i in x], [r["gflops"] for r in rows], 0.4, color=colors, label="counted (attention incl.)")
    ax.bar(
        [i + 0.2 for i in x],
        [r["gflops_ultralytics"] or 0 for r in rows],
        0.4,
        color=colors,
        alpha=0.35,
        hatch="//",
        label="Ultralytics",
    )
    imgsz = next((r.get("gflops_imgsz") for r in rows if r.get("gflops_imgsz")), None)
    ax.set_title(f"GFLOPs at {imgsz or '?'}px", fontsize=10)
    ax.legend(fontsize=7)
    axes[1].bar(x, [(r["params"] or 0) / 1e6 for r in rows], color=colors)
    axes[1].set_title("parameters (M)", fontsize=10)
    axes[2].bar(x, [r["latency_ms_b1"] or 0 for r in rows], color=colors)
    dev = next((r.get("bench_device") for r in rows if r.get("bench_device")), "")
    axes[2].set_title(f"latency batch 1 (ms{', ' + dev if dev else ''})", fontsize=10)
    for a in axes:
        a.set_xticks(x)
        a.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        a.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "what it costs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------------- report
def _attention_in_baselines(records: Sequence[Mapping]) -> list[str]:
    """One line per baseline whose model already has attention inside (YOLO11 / YOLO26's C2PSA...).

    The store names each baseline's model YAML; a YAML that cannot be found any more is left out.
    """
    from yolo_attn.edit import attention_rows

    lines, seen = [], set()
    for r in records:
        model = r.get("model_yaml") or r.get("model")
        if not r.get("baseline") or not model or model in seen:
            continue
        seen.add(model)
        try:
            rows = attention_rows(str(model))
        except Exception:  # moved or deleted since the run; the rest of the report does not need it
            continue
        if rows:
            where = ", ".join(f"{m} (row {i})" for i, m in rows)
            lines.append(
                f'- baseline `{_stem(r)}` already contains attention: {where}. Here "baseline" means the base model '
                "without yolo_attn blocks, not a model without attention."
            )
    return lines


def _dataset_labels(datas: Sequence[str | None]) -> dict[str | None, str]:
    """Short distinct names: the shortest tail of each path that tells them apart (``a/shapes.yaml``)."""
    uniq = list(dict.fromkeys(datas))
    parts = {d: Path(str(d)).parts or (str(d),) for d in uniq}
    for k in range(1, max((len(p) for p in parts.values()), default=1) + 1):
        labels = {d: "/".join(p[-k:]) for d, p in parts.items()}
        if len(set(labels.values())) == len(labels):
            return labels
    return {d: str(d) for d in uniq}


def _start_label(start: str | None, names: Mapping[str, str] | None = None) -> str:
    if not start:
        return "random init"
    if start.startswith("run:"):
        key = start[4:]
        name = (names or {}).get(key)
        return f"from run {key[:8]}" + (f" ({name})" if name else "")
    return f"from {Path(start).name}"


def _group_label(summary: Sequence[Mapping], group: str, names: Mapping[str, str]) -> str:
    """Starting weights, and the training overrides that differ from the dataset's other groups."""
    mine = next(r for r in summary if r["group"] == group)
    others = [r["train"] or {} for r in summary if r["group"] != group]
    train = mine["train"] or {}
    differ = {k: v for k, v in train.items() if any(o.get(k) != v for o in others)}
    text = _start_label(mine["start"], names)
    return text + (", " + " ".join(f"{k}={v}" for k, v in differ.items()) if differ else "")


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in label.replace(".yaml", "")).strip("_")


def _settings_lines(records: Sequence[Mapping], resamples: int, ci: float) -> list[str]:
    done = [r for r in records if r.get("status") == "done"] or list(records)
    first = done[0] if done else {}
    lines = []
    trains = {json.dumps(r.get("train"), sort_keys=True) for r in records}
    datas = {str(r.get("data")) for r in records}
    lines.append(f"- data: {', '.join(f'`{d}`' for d in sorted(datas))}")
    lines.append(f"- training overrides: {', '.join(f'`{t}`' for t in sorted(trains))}")
    pre = dict.fromkeys(_start(r) for r in records)
    names = {r.get("key"): r.get("name") for r in records}
    starts = []
    for p in pre:
        if p and p.startswith("run:"):
            src = next((r for r in records if r.get("key") == p[4:]), {})
            starts.append(f"{_start_label(p, names)}: `{src.get('weights') or '?'}`")
        else:
            starts.append(str(p) if p else "none (random init)")
    lines.append(f"- pretrained: {', '.join(starts)}")
    lines.append(f"- seeds: {sorted({r.get('seed') for r in records}, key=str)}")
    lines.append(
        f"- statistics: {ci:.0%} intervals of the change against the baseline of the same seed, data and starting "
        f"weights. Images: paired percentile bootstrap over the validation images ({resamples} resamples, both models "
        "scored on each resample, the difference averaged over the seed pairs), from the per-image matches of each "
        "run's final validation. Seeds: Student-t over the per-seed differences (from 3 seeds). Verdict: "
        '"better" / "worse" when both intervals exclude zero on the same side, else "no detectable '
        'difference"; "detectable" is the half-width of the wider interval (smaller true changes are lost in the '
        "noise: add images when the images limit it, seeds when the seeds do)"
    )
    lines += _attention_in_baselines(records)
    if first.get("gflops_imgsz"):
        lines.append(
            f"- GFLOPs: counted at {first['gflops_imgsz']}x{first['gflops_imgsz']}, batch 1, by one forward pass under "
            "FlopCounterMode (convolutions, matmul/einsum/SDPA and grid_sample; 2 FLOPs per multiply-add), next to "
            "Ultralytics' `get_flops` on the fused model"
        )
    if first.get("bench_device"):
        bb = first.get("bench_batch")
        lines.append(
            f"- latency / peak memory: fused model, eval-mode forward, median of the timed passes after warm-up, "
            f"at {first.get('bench_imgsz')} on `{first['bench_device']}`, batch 1{f' and {bb}' if bb else ''}; "
            "peak memory is what the forward allocates above the model and input"
        )
    v = first.get("versions") or {}
    if v:
        lines.append(
            "- environment: "
            + ", ".join(f"{k} {v[k]}" for k in ("yolo_attn", "ultralytics", "torch", "thop", "python", "gpu") if k in v)
        )
    return lines


def write_report(
    store: str | Path,
    out: str | Path | None = None,
    title: str | None = None,
    resamples: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """Write ``report.md``, ``results.csv``, ``summary.csv``, ``summary.tex`` and the PNG plots; return their paths.

    Args:
        store: Sweep output folder or its ``results.jsonl``.
        out: Report folder (default ``<sweep folder>/report``).
        title: Report title.
        resamples: Bootstrap replicates per comparison.
        ci: Confidence level of the intervals and verdicts.
        seed: Seed of the bootstrap resampling (same seed, same intervals).

    Returns:
        ``markdown``, ``csv``, ``summary_csv``, ``latex`` (paths), ``plots`` (paths), ``summary`` (rows with
        intervals and verdicts, all datasets).
    """
    path = ResultStore(store).path
    recs = load_records(path)
    records = [_flat(r) for r in recs]
    matches, notes = load_matches(path.parent, recs)
    out = Path(out) if out else path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    compare(summary, matches, resamples=resamples, ci=ci, seed=seed)
    rows = {r["key"]: r for row in summary for r in row["runs"]}
    rows = [rows.get(r["key"], r) for r in _with_deltas(records)]  # runs with their intervals, failed ones too
    for row in summary:
        for r in row["runs"]:
            r["config"] = row["config"]
    title = title or f"yolo_attn ablation: {path.parent.name}"
    names = {r.get("key"): r.get("name") for r in records}

    labels = _dataset_labels([r["data"] for r in summary])
    by_data: dict[str | None, list[dict]] = defaultdict(list)
    for r in summary:
        by_data[r["data"]].append(r)
    several = len(by_data) > 1

    plots: list[Path] = []
    md_sections: list[str] = []
    tex_sections: list[tuple[str, str | None, Sequence[Mapping]]] = []
    for data, rows_d in by_data.items():
        label = labels[data]
        groups = list(dict.fromkeys(r["group"] for r in rows_d))
        md = [f"## {label}" if several else "## Per configuration", ""]
        if several:
            md += [f"Dataset `{data}`.", ""]
        md.append(
            "Mean ± standard deviation over seeds; Δ is against the baseline trained with the same seed, data and "
            "starting weights; 95% intervals of Δ over validation images (paired bootstrap) and over seeds (t, from "
            "3 seeds)."
        )
        md.append("")
        for g in groups:
            rg = [r for r in rows_d if r["group"] == g]
            glabel = _group_label(rows_d, g, names) if len(groups) > 1 else None
            if glabel:
                md += [f"### {glabel}", ""]
            md += [_summary_table(rg), ""]
            tex_sections.append((label, glabel, rg))
            if any(not r["baseline"] for r in rg):
                md += ["Is it better? Verdict per metric, and the smallest difference this sweep could detect:", ""]
                md += [_verdict_table(rg), ""]
                ct = _class_table(rg)
                if ct:
                    md += [
                        "Per class (the largest changes of AP50-95 first; intervals over images, not corrected for "
                        "the number of classes: each excludes zero by chance one time in twenty):",
                        "",
                        ct,
                        "",
                    ]
        with_variants = [r for r in rows_d if r["group"] in {q["group"] for q in rows_d if not q["baseline"]}]
        tag = f"-{_slug(label)}" if several else ""
        for p in (
            plot_map_vs_gflops(
                with_variants or rows_d, out / f"map_vs_gflops{tag}.png", title=label if several else ""
            ),
            plot_delta_by_position(rows_d, out / f"delta_by_position{tag}.png"),
            plot_cost(with_variants or rows_d, out / f"cost{tag}.png", title=label if several else ""),
        ):
            if p is not None:
                plots.append(p)
                md += [f"![{p.stem}]({p.name})", ""]
        md_sections.append("\n".join(md))

    csv_path = out / "results.csv"
    _write_csv(rows, csv_path)
    sections = [(labels[d], rs) for d, rs in by_data.items()]
    summary_csv = out / "summary.csv"
    _write_summary_csv(sections, summary_csv)
    tex_path = out / "summary.tex"
    tex_path.write_text(_latex(tex_sections))

    n_done = sum(r.get("status") == "done" for r in records)
    failed = [r for r in records if r.get("status") != "done"]
    md = [f"# {title}", ""]
    md.append(f"{len(records)} runs in `{path}`: {n_done} done, {len(failed)} failed.")
    md.append("")
    md += _settings_lines(records, resamples, ci)
    md.append("")
    md += md_sections if md_sections else ["## Per configuration", "", "_no finished runs_", ""]
    if several:
        combined = _combined_table(sections)
        if combined:
            md += ["## All datasets: Δ mAP50-95, 95% CI over images, verdict", "", combined, ""]
    md += ["## Per run", "", _runs_table(rows), ""]
    lacking = [r for r in records if r.get("status") == "done" and r.get("key") not in matches]
    if lacking or notes:
        md += ["## Intervals", ""]
        if lacking:
            md.append(
                f"Intervals unavailable for {len(lacking)} run{'s' * (len(lacking) > 1)} without a per-image file "
                "(written before runs kept their final validation's matches, or the capture failed): "
                + ", ".join(f"`{r.get('name')}` (seed {r.get('seed')})" for r in lacking)
                + "."
            )
        md += [f"- {n}" for n in notes]
        md.append("")
    if failed:
        md += ["## Failed runs", ""]
        for r in failed:
            log = f" (log: `{r['log']}`)" if r.get("log") else ""
            md.append(f"- `{r.get('name')}` (seed {r.get('seed')}, key {str(r.get('key'))[:8]}): {r.get('error')}{log}")
        md.append("")
    odd = [r for r in records if r.get("measure_error") or r.get("fuse_error")]
    if odd:
        md += ["## Measurement problems", ""]
        for r in odd:
            md.append(f"- `{r.get('name')}` (seed {r.get('seed')}): {r.get('measure_error') or r.get('fuse_error')}")
        md.append("")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))
    return {
        "markdown": md_path,
        "csv": csv_path,
        "summary_csv": summary_csv,
        "latex": tex_path,
        "plots": plots,
        "summary": summary,
    }
