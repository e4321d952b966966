"""Report of an ablation: Markdown and CSV tables and PNG plots, read from the results store only.

Input: a results store (:class:`yolo_attn.store.ResultStore`, ``<out>/results.jsonl``); nothing else is read (no
Ultralytics run folder, no model), except each baseline's model YAML, when it can still be found, to say whether the
baseline already contains attention (YOLO11 / YOLO26 have C2PSA). Outputs (default ``<out>/report/``):

- ``report.md``: settings and environment, a table per configuration (mean and spread over seeds, change of
  mAP50-95 against the baseline of the same seed), a table per run, failed runs with their error, the plots.
- ``results.csv``: one row per run, every scalar field of the record.
- ``map_vs_gflops.png``: mAP50-95 against GFLOPs counted at the real size (attention included), the Pareto front,
  the baseline marked, and Ultralytics' own GFLOPs figure as a hollow marker joined to ours, so the gap is visible.
- ``delta_by_position.png``: per insertion point and block family, the change of mAP50-95 against the baseline (bars:
  mean over seeds; dots: each seed; whiskers: min-max spread across seeds).
- ``cost.png``: GFLOPs (both figures), parameters and batch-1 latency per configuration.

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

__all__ = ["load_records", "summarize", "pareto_front", "write_report"]


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


def _group(r: Mapping) -> str:
    """Runs that are comparable: same data, training overrides and pretrained weights."""
    return json.dumps([r.get("data"), r.get("train"), r.get("pretrained")], sort_keys=True, default=str)


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
    """One row per configuration (base model, block, position, args, comparison group), aggregated over seeds."""
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
            "gflops_imgsz": first.get("gflops_imgsz"),
            "bench_device": first.get("bench_device"),
            "bench_imgsz": first.get("bench_imgsz"),
        }
        for k in (
            "map50",
            "map50_95",
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
    out.sort(key=lambda r: (r["group"], not r["baseline"], r["family"] or "", r["position"] or "", r["config"]))
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


def _summary_table(summary: Sequence[Mapping]) -> str:
    anyn = next((r.get("bench_batch") for r in summary if r.get("bench_batch")), None)
    header = [
        "config",
        "seeds",
        "mAP50",
        "mAP50-95",
        "Δ mAP50-95",
        "params (M)",
        "GFLOPs",
        "GFLOPs (Ultralytics)",
        "latency b1 (ms)",
    ]
    if anyn:
        header += [f"latency b{anyn} (ms)", f"peak MB b{anyn}"]
    rows = []
    for r in summary:
        row = [
            r["config"],
            r["seeds"],
            _pm(r["map50"], r["map50_std"]),
            _pm(r["map50_95"], r["map50_95_std"]),
            "—" if r["baseline"] else _pm(r["d_map50_95"], r["d_map50_95_std"], signed=True),
            _f(r["params"] / 1e6 if r["params"] is not None else None, 3),
            _g(r["gflops"]),
            _g(r["gflops_ultralytics"]),
            _f(r["latency_ms_b1"], 1),
        ]
        if anyn:
            row += [_f(r.get("latency_ms_bN"), 1), _f(r.get("peak_mb_bN"), 1)]
        rows.append(row)
    return table(header, rows)


def _runs_table(rows: Sequence[Mapping]) -> str:
    header = ["run", "seed", "status", "mAP50", "mAP50-95", "Δ mAP50-95", "GFLOPs", "GFLOPs (UL)", "wall (s)", "key"]
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
                _g(_num(r.get("gflops"))),
                _g(_num(r.get("gflops_ultralytics"))),
                _f(_num(r.get("wall_s")), 0),
                str(r.get("key"))[:8],
            ]
        )
    return table(header, body, align="lrlrrrrrrl")


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


def _write_csv(rows: Sequence[Mapping], path: Path) -> None:
    cols = list(_CSV_FIRST)
    for r in rows:
        for k, v in r.items():
            if k not in cols and k not in ("traceback", "versions", "gflops_by_op") and not isinstance(v, dict):
                cols.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items() if k in cols})


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
            vals = r["d_map50_95_all"]
            lo, hi = min(vals), max(vals)
            label = None if fam in labelled else (fam or "other")
            ax.bar(x, r["d_map50_95"], width * 0.9, color=colors[fam], alpha=0.75, label=label)
            labelled.add(fam)
            if len(vals) > 1:  # spread across seeds: min-max whisker, each seed a dot
                ax.errorbar(
                    x,
                    r["d_map50_95"],
                    yerr=[[r["d_map50_95"] - lo], [hi - r["d_map50_95"]]],
                    fmt="none",
                    ecolor="black",
                    capsize=3,
                    lw=1,
                )
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
    ax.set_title(title or f"change against the baseline per insertion point ({nseeds} seed{'s' * (nseeds > 1)})")
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


def _settings_lines(records: Sequence[Mapping]) -> list[str]:
    done = [r for r in records if r.get("status") == "done"] or list(records)
    first = done[0] if done else {}
    lines = []
    trains = {json.dumps(r.get("train"), sort_keys=True) for r in records}
    datas = {str(r.get("data")) for r in records}
    lines.append(f"- data: {', '.join(f'`{d}`' for d in sorted(datas))}")
    lines.append(f"- training overrides: {', '.join(f'`{t}`' for t in sorted(trains))}")
    pre = {r.get("pretrained") for r in records}
    lines.append(f"- pretrained: {', '.join(str(p) if p else 'none (random init)' for p in pre)}")
    lines.append(f"- seeds: {sorted({r.get('seed') for r in records})}")
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


def write_report(store: str | Path, out: str | Path | None = None, title: str | None = None) -> dict:
    """Write ``report.md``, ``results.csv`` and the PNG plots for the store; return their paths.

    Args:
        store: Sweep output folder or its ``results.jsonl``.
        out: Report folder (default ``<sweep folder>/report``).
        title: Report title.
    """
    path = ResultStore(store).path
    records = [_flat(r) for r in load_records(path)]
    out = Path(out) if out else path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = _with_deltas(records)
    summary = summarize(records)
    title = title or f"yolo_attn ablation: {path.parent.name}"

    csv_path = out / "results.csv"
    _write_csv(rows, csv_path)
    plots = [
        p
        for p in (
            plot_map_vs_gflops(summary, out / "map_vs_gflops.png"),
            plot_delta_by_position(summary, out / "delta_by_position.png"),
            plot_cost(summary, out / "cost.png"),
        )
        if p is not None
    ]

    n_done = sum(r.get("status") == "done" for r in records)
    failed = [r for r in records if r.get("status") != "done"]
    md = [f"# {title}", ""]
    md.append(f"{len(records)} runs in `{path}`: {n_done} done, {len(failed)} failed.")
    md.append("")
    md += _settings_lines(records)
    md += ["", "## Per configuration", ""]
    md.append(
        "Mean ± standard deviation over seeds; Δ is against the baseline trained with the same seed, data and settings."
    )
    md += ["", _summary_table(summary) if summary else "_no finished runs_", ""]
    for p in plots:
        md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Per run", "", _runs_table(rows), ""]
    if failed:
        md += ["## Failed runs", ""]
        for r in failed:
            md.append(f"- `{r.get('name')}` (seed {r.get('seed')}, key {str(r.get('key'))[:8]}): {r.get('error')}")
        md.append("")
    odd = [r for r in records if r.get("measure_error") or r.get("fuse_error")]
    if odd:
        md += ["## Measurement problems", ""]
        for r in odd:
            md.append(f"- `{r.get('name')}` (seed {r.get('seed')}): {r.get('measure_error') or r.get('fuse_error')}")
        md.append("")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))
    return {"markdown": md_path, "csv": csv_path, "plots": plots, "summary": summary}
