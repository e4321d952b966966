"""Benchmark: paired bootstrap of two models on a COCO-sized synthetic validation set.

The target (issue 13): 2000 paired resamples of a 5000-image, 80-class validation with about 100 predictions per
image (most of them low-confidence false positives, confidence threshold 0.001, at most 300 per image) in under 30 s
on a 2-core machine, and a matches file under 20 MB per run.

Reports, for each worker count: wall time, CPU time of this process and of its worker processes, and the time per
resample and model; plus the file size and the save/load times. Timings vary with whatever else runs on the machine:
repeat (``--repeat``) and read the minimum.

Usage:
    python benchmarks/bootstrap.py                      # the target case, 1 and 2 workers
    python benchmarks/bootstrap.py --images 500 --resamples 200 --workers 1
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolo_attn.stats import Matches, map_scores, paired_bootstrap, synthetic_validation  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--boxes", type=float, default=7.3, help="mean ground-truth boxes per image (COCO: 7.3)")
    p.add_argument("--fp", type=float, default=110.0, help="mean background predictions per image")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=None, help="resamples per pass (default: sized to the data)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--half", action="store_true", help="float16 confidences (ties), as half-precision validation")
    p.add_argument("--no-strata", action="store_true", help="skip the size strata (small, medium, large)")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    base, variant = synthetic_validation(
        a.images, a.classes, skills=(0.0, 0.1), seed=0, boxes_per_image=a.boxes, false_positives_per_image=a.fp,
        half=a.half,
    )  # fmt: skip
    per_image = np.bincount(base.image, minlength=base.n_images)
    print(
        f"data: {a.images} images, {a.classes} classes, {len(base.target_cls)} boxes, "
        f"{base.n_predictions} predictions ({per_image.mean():.1f}/image, max {per_image.max()}), "
        f"{base.tp[:, 0].sum()} TP@0.5; generated in {time.perf_counter() - t0:.1f} s"
    )

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "matches.npz"
        t0 = time.perf_counter()
        base.save(path)
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = Matches.load(path)
        t_load = time.perf_counter() - t0
        size = os.path.getsize(path)
    print(
        f"file: {size / 2**20:.2f} MiB ({size / base.n_predictions:.1f} B/prediction); save {t_save:.2f} s, load {t_load:.2f} s"
    )
    t0 = time.process_time()
    s = map_scores(loaded)
    print(f"full-sample scores: mAP50 {s.map50:.4f}, mAP50-95 {s.map50_95:.4f} in {time.process_time() - t0:.2f} s CPU")

    print(
        f"paired bootstrap, {a.resamples} resamples, batch {a.batch or 'auto'}, strata {not a.no_strata}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for workers in a.workers:
        for _ in range(a.repeat):
            w0, c0, k0 = time.perf_counter(), time.process_time(), children_cpu()
            r = paired_bootstrap(
                base, variant, a.resamples, seed=0, workers=workers, batch_size=a.batch, strata=not a.no_strata
            )
            wall, cpu, kids = time.perf_counter() - w0, time.process_time() - c0, children_cpu() - k0
            per = (cpu + kids) / (2 * a.resamples) * 1000
            print(
                f"  workers {workers}: wall {wall:6.1f} s, CPU {cpu:6.1f} s here + {kids:6.1f} s in workers "
                f"({per:.2f} ms CPU per resample and model); mAP50-95 delta {r.map50_95.delta:+.4f} "
                f"[{r.map50_95.interval.low:+.4f}, {r.map50_95.interval.high:+.4f}]"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
