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
- ``summary.tex``: the summary tables as LaTeX (booktabs), one ``table`` per dataset and group (and one by object
  size when the per-image files carry box areas).
- Per group also: AP50-95 by COCO size stratum with both intervals and verdicts, equivalence within ``margin``, the
  blocks' utilisation (:mod:`~yolo_attn.report.utilisation`), explain figures of each variant beside its baseline
  (:mod:`~yolo_attn.report.explained`, ``explain/<config>/``), and the search section when ``search.json`` exists.
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

Layout: :mod:`~yolo_attn.report.summary` (typed runs and per-configuration summaries holding the statistics),
:mod:`~yolo_attn.report.tables` (Markdown, LaTeX, CSV), :mod:`~yolo_attn.report.plots` (matplotlib's Agg canvas, no
pyplot) and :mod:`~yolo_attn.report.write` (the files and the sections of ``report.md``).

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

from yolo_attn.report.plots import plot_cost, plot_delta_by_position, plot_map_vs_gflops
from yolo_attn.report.summary import (
    METRICS,
    ConfigSummary,
    RunView,
    Spread,
    StratumSummary,
    compare,
    load_matches,
    load_records,
    pareto_front,
    run_views,
    summarize,
)
from yolo_attn.report.write import write_report

__all__ = [
    "METRICS",
    "ConfigSummary",
    "RunView",
    "Spread",
    "StratumSummary",
    "compare",
    "load_matches",
    "load_records",
    "pareto_front",
    "plot_cost",
    "plot_delta_by_position",
    "plot_map_vs_gflops",
    "run_views",
    "summarize",
    "write_report",
]
