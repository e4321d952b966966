"""The project's main job (``yolo-attn demo``, ``scripts/demo.sh``): does an attention block help YOLOv8n?

Protocol (the one we recommend for any comparison of blocks, here at a size that fits a laptop CPU):

1. **Baseline first.** YOLOv8n trains from scratch on a generated dataset (:func:`yolo_attn.data.make_shapes_dataset`,
   nothing downloaded): one run, seed 0.
2. **Every variant starts where the baseline is.** Each registered family's block is inserted at ``sppf_before``
   (:func:`yolo_attn.edit.make_variant`) and the trained baseline's weights are transferred through the variant's
   index map (:mod:`yolo_attn.transfer`). Inserted blocks start as the identity, so at step 0 each variant computes
   exactly the baseline's output. The baseline itself continues too, with the same recipe, so the only difference
   between the two arms is the block.
3. **Same seeds, paired.** Each seed trains the continued baseline and every variant for the same epochs; the report
   compares each variant with the baseline of the same seed on the same validation images: paired bootstrap over
   images, a t-interval over seeds, and a verdict ("better", "worse", "no detectable difference") with the smallest
   difference the sweep could have detected.

From scratch, whether a tiny run on a CPU learns at all is a matter of the initialisation (yolov8n-coat gave 0.0817 on
one CPU and 0.0135 on another with the same code and seed), so one such run says nothing about a block. Starting
every variant from the same trained baseline removes that knife's edge; seeds and images measure what noise is left.

Runs execute in worker processes (Ultralytics' per-epoch output goes to ``<out>/logs/<run>.log``; the console shows
the sweep's own progress lines with an ETA), two at a time on a machine with two or more cores (Ultralytics trains
on CPU with ``cpu_count - 1`` threads, one on a 2-core machine). Resumable: re-running keeps finished runs; the
continued runs are keyed by the baseline run's key and its weights' content, so they are redone only when the
baseline is (see :attr:`yolo_attn.plan.Run.pretrained_run`).

Examples:
    >>> from yolo_attn.demo import DEMO, DEMO_SEEDS, demo_blocks
    >>> demo_blocks()
    ['bot', 'coat', 'dat']
    >>> DEMO["epochs"], DEMO["finetune_epochs"], DEMO["imgsz"], DEMO_SEEDS
    (30, 10, 64, (0, 1, 2, 3))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from yolo_attn.execute import Measure
from yolo_attn.plan import Run, make_plan
from yolo_attn.store import ResultStore, RunRecord

__all__ = [
    "DEMO",
    "DEMO_FINETUNE",
    "DEMO_POSITION",
    "DEMO_SEEDS",
    "DEMO_TRAIN",
    "baseline_run",
    "demo_blocks",
    "demo_data",
    "finetune_plan",
    "run_demo",
]

#: Sizes of the main job, chosen to finish in about 10 minutes on 2 quiet CPU cores (measured in CPU seconds on a
#: busy machine: stage 1 about 90, each continued run about 45 with its worker's start-up; the 16 continued runs of 4
#: seeds run two at a time; measured end to end: 14 min 26 s, 697 CPU s, with the test suite running beside it; the report with strata and explain figures included). 400 validation images: validation is cheap at 64 px (about 3 s
#: per run) and with 200 the image interval was as wide as the seed interval.
DEMO = {"epochs": 30, "finetune_epochs": 10, "imgsz": 64, "n_train": 256, "n_val": 400}
#: Seeds of the continued runs: three is the fewest that give a seed interval (the verdict needs one); four fit the
#: budget and shrink the seed interval by a third (Student's t at 3 degrees of freedom instead of 2).
DEMO_SEEDS = (0, 1, 2, 3)
#: Where the blocks go: an inserted position (identity at init); the hand-written headline cfgs replace rows.
DEMO_POSITION = "sppf_before"
#: Stage 1 recipe. Mosaic is off: at 64 px a 2x2 mosaic shrinks the shapes to a few pixels for all but the last
#: ``close_mosaic`` epochs, and from scratch whether a run learned at all then became a matter of the initialisation.
#: SGD at lr0=0.02 without warm-up; no per-epoch validation (the final one is kept).
DEMO_TRAIN = {
    "batch": 16,
    "workers": 0,
    "optimizer": "SGD",
    "lr0": 0.02,
    "warmup_epochs": 0,
    "mosaic": 0.0,
    "val": False,
    "plots": False,
}
#: Stage 2 recipe (baseline and variants alike): the same, at half the learning rate, continuing trained weights.
DEMO_FINETUNE = {**DEMO_TRAIN, "lr0": 0.01}


def demo_blocks() -> list[str]:
    """The block families the demo compares: every registered one (the package's, and ``YOLO_ATTN_PLUGINS``') except
    the comparators built from Ultralytics' own modules (psa, area), which would add a third to the demo's time; the
    README shows the ablation that compares them."""
    from yolo_attn import registry
    from yolo_attn.edit import families

    return sorted(f for f in families() if registry.family_origin(f) is None)


def demo_data(out: str | os.PathLike, imgsz: int, n_train: int, n_val: int) -> str:
    """Generate (or rewrite, identically) the demo's dataset under ``<out>/data/``; return its YAML.

    The folder is named after the sizes: a run's key holds the dataset's path, so other sizes are other runs.
    """
    from yolo_attn.data import make_shapes_dataset

    root = Path(out) / "data" / f"shapes-{imgsz}px-{n_train}-{n_val}"
    return str(make_shapes_dataset(root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=0))


def baseline_run(data: str, epochs: int, imgsz: int, base: str = "yolov8n.yaml") -> Run:
    """Stage 1: the baseline trained from scratch (seed 0)."""
    train = {"epochs": epochs, "imgsz": imgsz, **DEMO_TRAIN}
    return make_plan(data, bases=[base], blocks=[], seeds=[0], train=train)[0]


def finetune_plan(
    data: str,
    start: Run,
    weights: str | os.PathLike,
    epochs: int,
    imgsz: int,
    seeds: Sequence[int] = DEMO_SEEDS,
    blocks: Sequence[str] | None = None,
    position: str = DEMO_POSITION,
) -> list[Run]:
    """Stage 2: per seed, the baseline continued and each block's variant, all from ``start``'s trained weights.

    Args:
        data: Dataset YAML.
        start: The stage-1 run whose weights everything continues from.
        weights: Its trained weights (``best.pt``).
        epochs: Epochs of every continued run.
        imgsz: Training size.
        seeds: One baseline and one variant of each block per seed.
        blocks: Families (default :func:`demo_blocks`).
        position: Insertion point of every block.
    """
    train = {"epochs": epochs, "imgsz": imgsz, **DEMO_FINETUNE}
    return make_plan(
        data,
        bases=[str(start.model)],
        blocks=demo_blocks() if blocks is None else list(blocks),
        positions=[position],
        seeds=seeds,
        train=train,
        pretrained=str(weights),
        pretrained_run=start.key,
    )


def _slots(devices: Sequence[str] | str | None) -> list[str]:
    if devices:
        return [d for chunk in ([devices] if isinstance(devices, str) else devices) for d in chunk.split() if d]
    # Ultralytics trains on CPU with cpu_count - 1 threads (one on 2 cores): two runs side by side use both cores.
    return ["cpu", "cpu"] if (os.cpu_count() or 1) >= 2 else ["cpu"]


def _weights(out: Path, rec: RunRecord) -> Path:
    if not rec.ok:
        raise RuntimeError(f"the baseline run failed, so nothing can continue from it: {rec.error} (see {rec.log})")
    p = Path(rec.weights or "")
    p = p if p.is_absolute() else out / p
    if not p.is_file():
        raise FileNotFoundError(
            f"the baseline's trained weights {p} are gone; delete its record from {ResultStore(out).path} (or the "
            "whole folder) to train it again"
        )
    return p


def run_demo(
    out: str | os.PathLike = "out/demo",
    epochs: int | None = None,
    finetune_epochs: int | None = None,
    imgsz: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    devices: Sequence[str] | str | None = None,
    settings: Mapping | None = None,
    seeds: Sequence[int] | None = None,
    resamples: int = 2000,
) -> dict:
    """The main job: generated data -> baseline -> continued baseline and variants per seed -> report.

    Everything runs offline (the dataset is generated, models are built from YAML) in worker processes.

    Args:
        out: Output folder: the store, runs, logs and ``report.md`` (+ CSV, LaTeX, PNGs).
        epochs: Stage-1 epochs (default ``DEMO["epochs"]``).
        finetune_epochs: Epochs of every continued run (default ``DEMO["finetune_epochs"]``).
        imgsz: Image size of the data and the training.
        n_train: Generated training images.
        n_val: Generated validation images.
        devices: One run per entry at a time (default: two CPU slots on 2+ cores).
        settings: Measurement settings (:class:`yolo_attn.execute.Measure` fields).
        seeds: Seeds of the continued runs (default :data:`DEMO_SEEDS`).
        resamples: Bootstrap replicates in the report.

    Returns:
        The report's paths (:func:`yolo_attn.report.write_report`).
    """
    from yolo_attn.executors import run_sweep
    from yolo_attn.executors.local import Processes
    from yolo_attn.report import write_report

    given = {"epochs": epochs, "finetune_epochs": finetune_epochs, "imgsz": imgsz, "n_train": n_train, "n_val": n_val}
    cfg = {**DEMO, **{k: v for k, v in given.items() if v}}
    seeds = DEMO_SEEDS if seeds is None else tuple(seeds)
    out = Path(out)
    data = demo_data(out, cfg["imgsz"], cfg["n_train"], cfg["n_val"])
    measure = {**Measure(bench_imgsz=cfg["imgsz"]).to_dict(), **(settings or {})}
    executor = Processes(_slots(devices))  # worker processes: Ultralytics' output goes to <out>/logs, not the console

    start = baseline_run(data, cfg["epochs"], cfg["imgsz"])
    (rec,) = run_sweep([start], out, settings=measure, executor=executor, title="stage 1/2, baseline from scratch")
    plan = finetune_plan(data, start, _weights(out, rec), cfg["finetune_epochs"], cfg["imgsz"], seeds)
    blocks = " / ".join(dict.fromkeys(r.block for r in plan if r.block))
    run_sweep(plan, out, settings=measure, executor=executor, title=f"stage 2/2, baseline and {blocks} continued")
    title = f"yolo_attn demo: YOLOv8n vs {blocks} at {DEMO_POSITION}, continued from the same baseline (CPU)"
    return write_report(out, out=out, title=title, resamples=resamples)
