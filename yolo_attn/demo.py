"""The project's main job (``yolo-attn demo``, ``scripts/demo.sh``): YOLOv8n against its attention variants.

Protocol: a generated dataset (:func:`yolo_attn.data.make_shapes_dataset`, nothing downloaded), the YOLOv8n baseline
and the headline variant of every registered family that ships one (``cfg/yolov8-<family>.yaml``: BoT, DAT, CoAt),
all at scale n from random init, trained briefly on CPU with one recipe, then the report. Resumable like any sweep:
re-running keeps finished runs.

Examples:
    >>> from yolo_attn.demo import DEMO, demo_models
    >>> demo_models()
    ['yolov8n.yaml', 'yolov8n-bot.yaml', 'yolov8n-coat.yaml', 'yolov8n-dat.yaml']
    >>> DEMO["epochs"], DEMO["imgsz"]
    (30, 64)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from yolo_attn.execute import Measure
from yolo_attn.plan import Run, make_plan

__all__ = ["DEMO", "DEMO_TRAIN", "demo_models", "demo_plan", "run_demo"]

#: The README main job's defaults, sized to finish in under 10 minutes on 2 CPU cores (about 1 CPU-minute of training
#: per model). Mosaic is off: at 64 px a 2x2 mosaic shrinks the shapes to a few pixels for all but the last
#: ``close_mosaic`` epochs, and from scratch in 30 epochs whether a run learned at all then became a matter of the
#: initialisation (yolov8n at seed 0: mAP50-95 0.09, one warm-up setting later 0.004; attention variants 0.003-0.09
#: with a changed init order alone). Without mosaic, yolov8n at seeds 0/1/2 reached 0.149/0.157/0.194 and every
#: variant learned, so the table compares blocks rather than luck. SGD at lr0=0.02 without warm-up; no per-epoch
#: validation (the final one is kept). One seed by default (``--seeds 0 1 2`` for spread, about 3x the time).
DEMO = {"epochs": 30, "imgsz": 64, "n_train": 256, "n_val": 32}
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


def demo_models() -> list[str]:
    """The baseline, then the headline variant at scale n of each registered family that has one, by family name."""
    from yolo_attn.edit import families
    from yolo_attn.integration import cfg_dir

    # "yolov8n-bot.yaml": Ultralytics takes scale n from the name and finds the packaged yolov8-bot.yaml
    have = [f for f in sorted(families()) if (cfg_dir() / f"yolov8-{f}.yaml").is_file()]
    return ["yolov8n.yaml", *(f"yolov8n-{f}.yaml" for f in have)]


def demo_plan(
    out: str | os.PathLike,
    epochs: int | None = None,
    imgsz: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    seeds: Sequence[int] = (0,),
) -> tuple[list[Run], Measure]:
    """Generate the demo's dataset under ``<out>/data`` and return its plan and measurement settings."""
    from yolo_attn.data import make_shapes_dataset

    given = {"epochs": epochs, "imgsz": imgsz, "n_train": n_train, "n_val": n_val}
    cfg = {**DEMO, **{k: v for k, v in given.items() if v}}
    data = make_shapes_dataset(
        Path(out) / "data" / "shapes", n_train=cfg["n_train"], n_val=cfg["n_val"], imgsz=cfg["imgsz"], seed=0
    )
    train = {"epochs": cfg["epochs"], "imgsz": cfg["imgsz"], **DEMO_TRAIN}
    plan = make_plan(str(data), bases=[], blocks=[], models=demo_models(), train=train, seeds=seeds)
    return plan, Measure(bench_imgsz=cfg["imgsz"])


def run_demo(
    out: str | os.PathLike = "out/demo",
    epochs: int | None = None,
    imgsz: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    devices: Sequence[str] | str | None = None,
    settings: Mapping | None = None,
    seeds: Sequence[int] = (0,),
) -> dict:
    """The main job: generated data -> baseline + variants -> ``<out>/report.md`` (+ CSV, PNGs); returns the paths.

    Everything runs offline: the dataset is generated, models are built from YAML (random init).
    """
    from yolo_attn.executors import run_sweep
    from yolo_attn.report import write_report

    plan, measure = demo_plan(out, epochs=epochs, imgsz=imgsz, n_train=n_train, n_val=n_val, seeds=seeds)
    run_sweep(plan, out, devices=devices or "cpu", settings={**measure.to_dict(), **(settings or {})})
    variants = " / ".join(r.name.split("-", 1)[1] for r in plan if not r.baseline and r.seed == plan[0].seed)
    return write_report(out, out=out, title=f"yolo_attn demo: YOLOv8n vs {variants} on generated shapes (CPU)")
