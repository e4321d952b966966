"""The report's figures from typed summaries: accuracy against compute with the Pareto front, the change per insertion
point with both intervals, and the cost.

matplotlib's Agg canvas is used directly (no pyplot, no global backend change). Titles and axis labels are wrapped at
spaces to the room the figure gives them (measured with the canvas' renderer), so none is cut at an edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yolo_attn.report.summary import ConfigSummary, pareto_front

__all__ = ["plot_cost", "plot_delta_by_position", "plot_map_vs_gflops"]

# Families get colours in the order the summary lists them (the report knows no family names); the baseline is black.
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e"]


def _family_colors(summary: Sequence[ConfigSummary]) -> dict:
    """The same family -> colour map for every plot of a summary (families without a name are grey)."""
    fams = [f for f in dict.fromkeys(c.family for c in summary) if f is not None]
    return {None: "#7f7f7f", **{f: _COLORS[i % len(_COLORS)] for i, f in enumerate(fams)}}


def _figure(w: float = 7.5, h: float = 5.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _wrap(text: str, prop: Any, room: float, renderer: Any) -> str:
    """``text`` with each line broken at spaces so that no line is wider than ``room`` pixels (a longer word stays)."""

    def width(s: str) -> float:
        return renderer.get_text_width_height_descent(s, prop, ismath=False)[0]

    lines = []
    for line in text.replace("\n", " \n ").split(" \n "):
        current = ""
        for word in line.split(" "):
            longer = f"{current} {word}" if current else word
            if current and width(longer) > room:
                lines.append(current)
                current = word
            else:
                current = longer
        lines.append(current)
    return "\n".join(lines)


def _fit(fig: Any, text: str, fontsize: float, share: float = 0.92, vertical: bool = False) -> str:
    """``text`` wrapped to ``share`` of the figure's width (height with ``vertical``) at ``fontsize``."""
    from matplotlib.font_manager import FontProperties

    room = (fig.get_figheight() if vertical else fig.get_figwidth()) * fig.dpi * share
    return _wrap(text, FontProperties(size=fontsize), room, fig.canvas.get_renderer())


def _save(fig: Any, path: Path) -> Path:
    """Lay the figure out, wrap again any title or x label that still crosses a side of the figure, and save it."""
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label)]
    if getattr(fig, "_suptitle", None) is not None:
        texts.append(fig._suptitle)
    crossing = False
    for t in texts:
        box = t.get_window_extent(renderer)
        if t.get_text() and (box.x0 < 0 or box.x1 > fig.bbox.width):
            centre = (box.x0 + box.x1) / 2
            room = 2 * min(centre, fig.bbox.width - centre) - 4
            t.set_text(_wrap(t.get_text(), t.get_fontproperties(), room, renderer))
            crossing = True
    if crossing:
        fig.tight_layout()
    fig.savefig(path)
    return path


def _title(ax: Any, text: str, fontsize: float = 10, share: float = 0.92) -> None:
    ax.set_title(_fit(ax.figure, text, fontsize, share), fontsize=fontsize)


def plot_map_vs_gflops(summary: Sequence[ConfigSummary], path: Path, title: str = "") -> Path | None:
    """mAP50-95 against GFLOPs counted at the real size (filled) and Ultralytics' figure (hollow), Pareto front."""
    pts = [c for c in summary if c.map50_95.mean is not None and c.gflops.mean is not None]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot(111)
    colors = _family_colors(summary)
    for c in pts:
        color = "black" if c.baseline else colors[c.family]
        marker = "*" if c.baseline else "o"
        x, y, ul = c.gflops.mean, c.map50_95.mean, c.gflops_ultralytics.mean
        if ul is not None and abs(ul - x) > 1e-3 * max(x, 1e-9):
            ax.plot([ul, x], [y, y], color=color, lw=0.8, ls=":", alpha=0.7)
            ax.scatter([ul], [y], facecolors="none", edgecolors=color, marker=marker, s=60, zorder=3)
        ax.errorbar(
            x, y, yerr=c.map50_95.std or None, fmt=marker, color=color, ms=14 if c.baseline else 7, capsize=3, zorder=4
        )
        ax.annotate(c.config, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    front = pareto_front([(c.gflops.mean, c.map50_95.mean) for c in pts])
    fx = [pts[i].gflops.mean for i in front]
    fy = [pts[i].map50_95.mean for i in front]
    ax.step(fx, fy, where="post", color="gray", lw=1.2, alpha=0.8, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="gray", lw=1.2, zorder=2)
    ax.scatter([], [], marker="*", color="black", s=120, label="baseline")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="same model, Ultralytics' GFLOPs")
    imgsz = next((c.first.gflops_imgsz for c in pts if c.first.gflops_imgsz), None)
    xlabel = f"GFLOPs at {imgsz or '?'}px, attention included (filled) / Ultralytics' figure (hollow)"
    ax.set_xlabel(_fit(fig, xlabel, 10))
    ax.set_ylabel(_fit(fig, "mAP50-95 (mean over seeds ± std)", 10, vertical=True))
    _title(ax, title or "accuracy vs compute", 12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.15, y=0.15)
    return _save(fig, path)


def plot_delta_by_position(summary: Sequence[ConfigSummary], path: Path, title: str = "") -> Path | None:
    """Change of mAP50-95 against the same-seed baseline per insertion point and family: bars the mean over seeds,
    dots each seed, black whiskers the image interval, grey whiskers the seed interval (from 3 seeds)."""
    rows = [c for c in summary if not c.baseline and c.delta["map50_95"].mean is not None]
    if not rows:
        return None
    positions = list(dict.fromkeys(c.position or c.config for c in rows))
    families = list(dict.fromkeys(c.family for c in rows))
    fig = _figure(max(6.0, 1.6 * len(positions) + 2), 4.8)
    ax = fig.add_subplot(111)
    colors = _family_colors(summary)
    labelled: set = set()
    for i, pos in enumerate(positions):
        here = sorted((c for c in rows if (c.position or c.config) == pos), key=lambda c: families.index(c.family))
        width = 0.8 / len(here)
        for j, c in enumerate(here):
            fam, delta = c.family, c.delta["map50_95"]
            x, d = i - 0.4 + width * (j + 0.5), delta.mean
            ax.bar(
                x, d, width * 0.9, color=colors[fam], alpha=0.75, label=None if fam in labelled else (fam or "other")
            )
            labelled.add(fam)
            # whiskers: the image interval (black) and, from 3 seeds, the seed interval (grey, beside it)
            for dx, iv, color in (
                (0.0, c.image_interval("map50_95"), "black"),
                (width * 0.22, c.seed_intervals.get("map50_95"), "#888888"),
            ):
                if iv is not None:
                    yerr = [[max(d - iv.low, 0.0)], [max(iv.high - d, 0.0)]]
                    ax.errorbar(x + dx, d, yerr=yerr, fmt="none", ecolor=color, capsize=3, lw=1.2, zorder=4)
            ax.scatter([x] * len(delta.values), delta.values, color="black", s=10, zorder=3)
            if sum(q.family == fam for q in here) > 1:  # same family twice here: different args, say which
                ax.annotate(c.config, (x, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7,
                            rotation=90)  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(positions)))
    ax.set_xticklabels(positions, rotation=0)
    ax.set_ylabel(_fit(fig, "Δ mAP50-95 vs baseline (same seed)", 10, vertical=True))
    nseeds = max(c.seeds for c in rows)
    drawn = [
        what
        for what, has in (
            ("images (black)", any(c.image_interval("map50_95") is not None for c in rows)),
            ("seeds (grey)", any(c.seed_intervals.get("map50_95") is not None for c in rows)),
        )
        if has
    ]
    whiskers = "bars: mean, dots: seeds" + (f"\nwhiskers: 95% CI over {' and '.join(drawn)}" if drawn else "")
    _title(
        ax, title or f"change against the baseline per insertion point ({nseeds} seed{'s' * (nseeds > 1)})\n{whiskers}"
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="block", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    return _save(fig, path)


def plot_cost(summary: Sequence[ConfigSummary], path: Path, title: str = "") -> Path | None:
    """GFLOPs (counted and Ultralytics'), parameters and batch-1 latency per configuration."""
    rows = [c for c in summary if c.gflops.mean is not None]
    if not rows:
        return None
    fig = _figure(max(7.0, 1.1 * len(rows) + 3), 4.6)
    axes = fig.subplots(1, 3)
    x = list(range(len(rows)))
    family_colors = _family_colors(summary)
    colors = ["black" if c.baseline else family_colors[c.family] for c in rows]
    ax = axes[0]
    ax.bar([i - 0.2 for i in x], [c.gflops.mean for c in rows], 0.4, color=colors, label="counted (attention incl.)")
    ax.bar([i + 0.2 for i in x], [c.gflops_ultralytics.mean or 0 for c in rows], 0.4, color=colors, alpha=0.35,
           hatch="//", label="Ultralytics")  # fmt: skip
    imgsz = next((c.first.gflops_imgsz for c in rows if c.first.gflops_imgsz), None)
    _title(ax, f"GFLOPs at {imgsz or '?'}px", 10, share=0.3)
    top = max(max(c.gflops.mean, c.gflops_ultralytics.mean or 0) for c in rows)
    ax.set_ylim(0, top * 1.35 or 1.0)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper center")
    axes[1].bar(x, [(c.params.mean or 0) / 1e6 for c in rows], color=colors)
    _title(axes[1], "parameters (M)", 10, share=0.3)
    axes[2].bar(x, [c.latency_ms_b1.mean or 0 for c in rows], color=colors)
    dev = next((c.first.bench_device for c in rows if c.first.bench_device), "")
    _title(axes[2], f"latency batch 1 (ms{', ' + dev if dev else ''})", 10, share=0.3)
    for a in axes:
        a.set_xticks(x)
        a.set_xticklabels([c.config for c in rows], rotation=45, ha="right", fontsize=7)
        a.grid(axis="y", alpha=0.3)
    fig.suptitle(_fit(fig, title or "what it costs", 11), fontsize=11)
    return _save(fig, path)
