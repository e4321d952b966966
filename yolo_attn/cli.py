"""``yolo-attn`` console script: ``ablate``, ``report``, ``cocoeval``, ``demo``, ``bench``, ``flops``, ``insert``,
``generate``, ``info``.

Every sub-command is a thin wrapper over a library function; ``scripts/*.py`` call :func:`main` the same way. Block
families are whatever the registry holds (the package's, and those of modules named in ``YOLO_ATTN_PLUGINS``).

Shell examples::

    yolo-attn demo                                   # the README's main job (generated data, CPU, ~10 min)
    yolo-attn ablate --data shapes.yaml --blocks bot dat --positions sppf_before neck --seeds 0 1 2 epochs=3 imgsz=128
    yolo-attn ablate --data a.yaml b.yaml --blocks dat epochs=3   # every configuration on each dataset
    yolo-attn ablate --data /shared/shapes.yaml --ray auto --gpus-per-run 1 epochs=3   # the same plan on a Ray cluster
    yolo-attn ablate --data shapes.yaml --eval-split test epochs=3   # best.pt chosen on val, scored on test
    yolo-attn report out/ablate                      # tables with 95% intervals and verdicts, CSV, LaTeX, plots
    yolo-attn cocoeval best.pt --data coco128.yaml --imgsz 640     # faster-coco-eval next to Ultralytics' mAP
    yolo-attn flops cfg/yolov8-dat-sppf_before.yaml --imgsz 640
    yolo-attn gpu-check --device 0                   # scripts/gpu_check.sh: the prepared GPU check
    yolo-attn insert yolov8.yaml dat sppf_before -o my-variant.yaml
    yolo-attn explain base.pt variant.pt --source val/images --out figs   # detections, CAM, attention maps

Examples:
    >>> from yolo_attn.cli import main
    >>> main(["ablate", "--data", "shapes.yaml", "--blocks", "dat", "--plan-only", "epochs=1"])  # doctest: +ELLIPSIS
      1/2 ... yolov8n seed=0 (baseline)
      2/2 ... yolov8n-dat-sppf_before seed=0
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


# --------------------------------------------------------------------------------------------------- bench
def _cmd_bench(a: argparse.Namespace) -> int:
    from yolo_attn.bench import bench_table, block_cases, format_table

    cases = block_cases(a.family, a.name)
    if not cases:
        print("no registered block matches (yolo-attn info lists them)", file=sys.stderr)
        return 1
    given = {k: v for k, v in (("warmup", a.warmup), ("iters", a.iters)) if v is not None}  # else bench's defaults
    rows = bench_table(cases, backward=not a.forward_only, device=a.device, flops=not a.no_flops, **given)
    print(format_table(rows))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


# --------------------------------------------------------------------------------------------------- gpu-check
def _cmd_gpu_check(a: argparse.Namespace) -> int:
    from yolo_attn.gpu_check import gpu_check

    result = gpu_check(a.device, quick=a.quick, out=a.out, tests=a.tests)
    print((Path(a.out) / "summary.md").read_text())
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------------------------------------- flops
def _cmd_flops(a: argparse.Namespace) -> int:
    import yolo_attn
    from yolo_attn._compat import YOLO
    from yolo_attn.flops import model_flops

    yolo_attn.register()
    imgsz = a.imgsz[0] if len(a.imgsz) == 1 else a.imgsz
    for m in a.model:
        r = model_flops(YOLO(m), imgsz)
        ops = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["gflops_by_op"].items(), key=lambda kv: -kv[1]))
        ul = r["gflops_ultralytics"]
        print(
            f"{m} @ {imgsz}: {r['gflops']:.2f} GFLOPs counted ({ops}); Ultralytics: {ul if ul is None else f'{ul:.2f}'}"
        )
    return 0


# --------------------------------------------------------------------------------------------------- ablate
def _measure(a: argparse.Namespace):
    from yolo_attn.execute import Measure

    return Measure(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Measure)})


def _sweep_executor(a: argparse.Namespace) -> tuple[list[str] | None, object, tuple[type, ...]]:
    """``ablate`` / ``search``: the local devices, or a Ray executor (with the errors that mean "no usable cluster")."""
    devices = [d for chunk in a.devices for d in chunk.split(";") if d] if a.devices else None
    if a.ray is None:
        return devices, None, ()
    if devices:
        raise ValueError("--devices is for this machine's devices; with --ray give --gpus-per-run / --cpus-per-run")
    from yolo_attn.executors.ray import RayEnvironmentError, RayExecutor

    # options only ``ablate`` has (search keeps the executor's defaults)
    extra = {k: getattr(a, f"ray_{k}") for k in ("retries", "weights", "ship_package") if hasattr(a, f"ray_{k}")}
    executor = RayExecutor(a.ray or None, cpus_per_run=a.cpus_per_run, gpus_per_run=a.gpus_per_run, **extra)
    return devices, executor, (ImportError, RayEnvironmentError)


def _cmd_ablate(a: argparse.Namespace) -> int:
    import yaml

    from yolo_attn.executors import run_sweep
    from yolo_attn.plan import make_plan, parse_overrides

    train = parse_overrides(a.overrides)
    block_args = {}
    for item in a.block_args or []:
        name, _, val = item.partition(":")
        v = yaml.safe_load(val) if val else []
        block_args[name] = v if isinstance(v, list) else [v]
    plan = make_plan(
        a.data,
        bases=a.base if a.base is not None else ([] if a.models else ["yolov8n.yaml"]),
        blocks=a.blocks,
        positions=a.positions,
        seeds=a.seeds,
        train=train,
        pretrained=a.pretrained,
        baseline=not a.no_baseline,
        block_args=block_args,
        models=a.models or [],
        warm_new_blocks=a.warm_new_blocks,
        eval_split=a.eval_split,
    )
    if a.plan_only:
        for i, r in enumerate(plan, 1):
            print(f"{i:3d}/{len(plan)} {r.key} {r.name} seed={r.seed}{' (baseline)' if r.baseline else ''}")
        return 0
    devices, executor, cluster_errors = _sweep_executor(a)
    try:
        recs = run_sweep(
            plan, a.out, devices=devices, retry_failed=a.retry_failed, settings=_measure(a), executor=executor
        )
    except cluster_errors as e:  # no Ray, or a node that cannot run the sweep: the message says what to do
        print(f"yolo-attn ablate: error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in recs if not r.ok]
    print(
        f"{len(recs) - len(failed)}/{len(plan)} runs done, {len(failed)} failed; store: {Path(a.out) / 'results.jsonl'}"
    )
    if a.report:
        from yolo_attn.report import write_report

        paths = write_report(a.out, resamples=a.resamples, margin=a.margin)
        print(f"report: {paths['markdown']}")
    return 1 if failed and a.strict else 0


# --------------------------------------------------------------------------------------------------- search
def _cmd_search(a: argparse.Namespace) -> int:
    import yaml

    from yolo_attn.plan import parse_overrides
    from yolo_attn.search import SCREEN_SEED, search, search_markdown

    block_args = {}
    for item in a.block_args or []:
        name, _, val = item.partition(":")
        v = yaml.safe_load(val) if val else []
        block_args[name] = v if isinstance(v, list) else [v]
    devices, executor, cluster_errors = _sweep_executor(a)
    try:
        outcome = search(
            a.data,
            budget=a.budget,
            blocks=a.blocks,
            positions=a.positions,
            base=a.base,
            train=parse_overrides(a.overrides),
            screen_epochs=a.screen_epochs,
            screen_seed=SCREEN_SEED if a.screen_seed is None else a.screen_seed,
            confirm_seeds=a.confirm_seeds,
            pretrained=a.pretrained,
            block_args=block_args,
            out=a.out,
            devices=devices,
            executor=executor,
            retry_failed=a.retry_failed,
            settings=_measure(a),
            resamples=a.resamples,
        )
    except cluster_errors as e:  # no Ray, or a node that cannot run the sweep: the message says what to do
        print(f"yolo-attn search: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(search_markdown(outcome)))
    print(
        f"decisions: {Path(a.out) / 'search.json'}; store: {Path(a.out) / 'results.jsonl'} (yolo-attn report {a.out})"
    )
    return 0


# --------------------------------------------------------------------------------------------------- report
def _cmd_report(a: argparse.Namespace) -> int:
    from yolo_attn.report import write_report

    paths = write_report(a.store, out=a.out, title=a.title, resamples=a.resamples, ci=a.ci, margin=a.margin,
                         explain_images=a.explain_images)  # fmt: skip
    print(f"markdown: {paths['markdown']}\ncsv: {paths['csv']}, {paths['summary_csv']}\nlatex: {paths['latex']}")
    for q in paths["plots"]:
        print(f"plot: {q}")
    if a.print:
        print(Path(paths["markdown"]).read_text())
    return 0


# --------------------------------------------------------------------------------------------------- cocoeval
def _cmd_cocoeval(a: argparse.Namespace) -> int:
    from yolo_attn.cocoeval import coco_check, format_check

    result = coco_check(
        a.weights, a.data, split=a.split, imgsz=a.imgsz, batch=a.batch, device=a.device, workers=a.workers, keep=a.keep
    )
    print(format_check(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result.to_dict(), indent=1))
    return 0


# --------------------------------------------------------------------------------------------------- demo
def _cmd_demo(a: argparse.Namespace) -> int:
    from yolo_attn.demo import run_demo

    paths = run_demo(
        a.out,
        epochs=a.epochs,
        finetune_epochs=a.finetune_epochs,
        imgsz=a.imgsz,
        n_train=a.n_train,
        n_val=a.n_val,
        devices=a.devices,
        seeds=a.seeds,
        resamples=a.resamples,
    )
    print(Path(paths["markdown"]).read_text())
    print(f"\nreport: {paths['markdown']}  csv: {paths['csv']}  plots: {', '.join(map(str, paths['plots']))}")
    return 0


# --------------------------------------------------------------------------------------------------- explain
def _cmd_explain(a: argparse.Namespace) -> int:
    from yolo_attn.explain import explain

    paths = explain(
        a.weights, a.source, a.out, imgsz=a.imgsz, max_images=a.max_images or None, cam_layer=a.cam_layer, conf=a.conf
    )
    for q in paths:
        print(f"figure: {q}")
    return 0


def _add_explain_parser(sub) -> None:
    e = sub.add_parser("explain", help="figures per image, models side by side: detections, CAM, each block's map")
    e.add_argument("weights", nargs="+", help="trained weights (.pt) or model YAMLs, one figure row each")
    e.add_argument("--source", required=True, help="image file, folder or glob")
    e.add_argument("--out", required=True, help="output folder for the PNGs")
    e.add_argument("--imgsz", type=int, default=640, help="letterbox size")
    e.add_argument("--max-images", type=int, default=4, help="first N images of the source, sorted (0: all)")
    e.add_argument("--cam-layer", type=int, default=None, help="row EigenCAM explains (default: the row before Detect)")
    e.add_argument("--conf", type=float, default=0.25, help="detection confidence threshold")
    e.set_defaults(func=_cmd_explain)


# --------------------------------------------------------------------------------------------------- insert / generate
def _cmd_insert(a: argparse.Namespace) -> int:
    import yaml

    from yolo_attn.edit import dump_variant, make_variant, save_variant, variant_name

    args = yaml.safe_load(a.args) if a.args else []
    args = args if isinstance(args, list) else [args]
    d = make_variant(a.base, a.block, a.position, args, n=a.n, validate=not a.no_validate)
    if a.output == "-":
        print(dump_variant(d), end="")
        return 0
    out = save_variant(d, a.output or f"{variant_name(a.base, a.block, a.position)}.yaml")
    rec = d["yolo_attn"]
    rows = len(d.get("backbone") or []) + len(d.get("head") or [])
    print(f"wrote {out} ({rows} layers; inserted rows {rec['inserted']}, replaced base rows {rec['replaced']})")
    return 0


def _cmd_generate(a: argparse.Namespace) -> int:
    from yolo_attn.edit import check_generated, families, generate
    from yolo_attn.integration import cfg_dir

    out = Path(a.out) if a.out else cfg_dir()
    # the packaged cfg/ holds the package's own families; any other folder gets every registered family
    blocks = a.families or list(families(packaged=a.out is None))
    if a.check:
        bad = check_generated(out, validate=not a.no_validate, blocks=blocks)
        print("generated variants are up to date" if not bad else f"out of date in {out}: {', '.join(bad)}")
        return 1 if bad else 0
    paths = generate(out, blocks=blocks, validate=not a.no_validate)
    print(f"wrote {len(paths)} variants to {out}")
    return 0


# --------------------------------------------------------------------------------------------------- info
def _cmd_info(a: argparse.Namespace) -> int:
    from yolo_attn import registry
    from yolo_attn.edit import POSITIONS, families
    from yolo_attn.execute import versions

    fams = families()  # registers the package's blocks and YOLO_ATTN_PLUGINS'
    for k, v in versions().items():
        print(f"{k:12s} {v}")
    print("blocks:")
    for sp in registry.specs():
        if sp.name.startswith("_"):
            continue
        where = f"; wraps {sp.origin}" if sp.origin else ""
        print(f"  {sp.name:12s} family={sp.family} role={sp.role} repeats={sp.repeats} ({sp.cls.__module__}{where})")
    print(f"positions: {', '.join(POSITIONS)} (neck_p3/neck_p4/neck_p5 for one level)")
    print(f"families: {', '.join(fams)}")
    for family, why in registry.unavailable().items():
        print(f"unavailable: {family} ({why})")
    return 0


# --------------------------------------------------------------------------------------------------- parser
def _add_measure_args(p: argparse.ArgumentParser) -> None:
    from yolo_attn.execute import Measure

    m = Measure()
    g = p.add_argument_group("measurements (not part of a run's key)")
    g.add_argument("--flops-imgsz", type=int, default=m.flops_imgsz, help="GFLOPs (ours and Ultralytics') at this size")
    g.add_argument("--bench-imgsz", type=int, default=m.bench_imgsz, help="latency/memory size (default: train imgsz)")
    g.add_argument("--bench-batch", type=int, default=m.bench_batch, help="larger batch timed next to batch 1")
    g.add_argument("--bench-iters", type=int, default=m.bench_iters, help="timed forward passes (median reported)")
    g.add_argument("--bench-warmup", type=int, default=m.bench_warmup, help="untimed forward passes first")


def _parser() -> argparse.ArgumentParser:
    from yolo_attn.plan import SPLIT_KEYS

    p = argparse.ArgumentParser(
        prog="yolo-attn",
        description="yolo_attn: attention blocks for Ultralytics YOLO, and the tools to measure what they cost and give.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")

    s = sub.add_parser("ablate", help="train a plan of base x block x position x seed runs into a resumable store")
    s.add_argument("overrides", nargs="*", help="Ultralytics training overrides, key=value (epochs=3 imgsz=320 ...)")
    s.add_argument("--data", nargs="+", required=True, help="dataset YAML(s): the whole plan runs on each")
    s.add_argument("--out", default="runs/yolo_attn/ablate", help="output folder (store, runs, report)")
    s.add_argument("--base", nargs="+", default=None, help="base models (default yolov8n.yaml)")
    s.add_argument("--blocks", nargs="*", default=None, help="families or block names (default: every family)")
    s.add_argument("--positions", nargs="*", default=["sppf_before"], help="insertion points (edit.POSITIONS)")
    s.add_argument("--seeds", nargs="+", type=int, default=[0])
    s.add_argument(
        "--models", nargs="+", default=None, help="model YAMLs trained as they are (first = baseline when no --base)"
    )
    s.add_argument(
        "--block-args",
        nargs="*",
        default=None,
        metavar="BLOCK:[ARGS]",
        help="extra block arguments after c2, e.g. dat:[8] (a YAML list)",
    )
    s.add_argument("--pretrained", default=None, help="weights transferred into every run (e.g. yolov8n.pt)")
    s.add_argument("--no-baseline", action="store_true", help="leave the unmodified base out")
    s.add_argument(
        "--warm-new-blocks",
        type=int,
        default=0,
        metavar="E",
        help="first E epochs train only the inserted blocks (the rest frozen), then the normal schedule",
    )
    s.add_argument(
        "--eval-split",
        default="val",
        choices=SPLIT_KEYS,
        help="split of each run's final validation (recorded mAP, per-image matches); best.pt is chosen on val",
    )
    s.add_argument("--devices", nargs="+", default=None, help="one run per device at a time: cpu | 0 | 0 1 | cpu cpu")
    s.add_argument("--retry-failed", action="store_true", help="redo runs recorded as failed")
    g = s.add_argument_group("on a Ray cluster (pip install 'yolo-attn[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run each run as a Ray task: auto | host:6379 | ray://host:10001; no ADDRESS: RAY_ADDRESS, a cluster "
        "started on this machine, else a local one",
    )
    g.add_argument("--cpus-per-run", type=float, default=1, help="CPUs Ray reserves per run (its torch threads)")
    g.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run (default: 1 if the cluster has any)")
    g.add_argument("--ray-retries", type=int, default=2, help="restarts of a run whose worker or node died")
    g.add_argument("--ray-weights", action="store_true", help="bring each run's best.pt back too")
    g.add_argument(
        "--ray-ship-package", action="store_true", help="send this yolo_attn to the nodes (runtime_env py_modules)"
    )
    s.add_argument("--plan-only", action="store_true", help="print the plan (keys, names) and exit")
    s.add_argument("--report", action="store_true", help="write the report when the sweep ends")
    s.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates of the report's intervals")
    s.add_argument("--margin", type=float, default=None, help="with --report: equivalence margin (e.g. 0.005 mAP)")
    s.add_argument("--strict", action="store_true", help="exit 1 when a run failed")
    _add_measure_args(s)
    s.set_defaults(func=_cmd_ablate)

    q = sub.add_parser("search", help="screen every block x position on a short schedule, confirm the best in a budget")
    q.add_argument("overrides", nargs="*", help="training overrides of the full schedule, key=value (epochs=30 ...)")
    q.add_argument("--data", required=True, help="dataset YAML")
    q.add_argument("--budget", type=int, required=True, help="total runs: screening + confirmation")
    q.add_argument("--blocks", nargs="*", default=None, help="families or block names (default: every family)")
    q.add_argument("--positions", nargs="*", default=None, help="insertion points (default: all of edit.POSITIONS)")
    q.add_argument("--base", default="yolov8n.yaml", help="base model (default yolov8n.yaml)")
    q.add_argument("--screen-epochs", type=int, default=None, help="epochs of a screening run (default: epochs / 4)")
    q.add_argument("--screen-seed", type=int, default=None, help="seed of the screening runs (default 100)")
    q.add_argument("--confirm-seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the confirmation runs")
    q.add_argument("--pretrained", default=None, help="weights every run starts from (e.g. yolov8n.pt)")
    q.add_argument("--block-args", nargs="*", default=None, metavar="BLOCK:[ARGS]", help="e.g. dat:[8] (a YAML list)")
    q.add_argument("--out", default="runs/yolo_attn/search", help="output folder (store, runs, search.json)")
    q.add_argument("--devices", nargs="+", default=None, help="one run per device at a time: cpu | 0 | 0 1 | cpu cpu")
    q.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", help="run each run as a Ray task")
    q.add_argument("--cpus-per-run", type=float, default=1, help="CPUs Ray reserves per run")
    q.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run on Ray")
    q.add_argument("--retry-failed", action="store_true", help="redo runs recorded as failed")
    q.add_argument("--resamples", type=int, default=1000, help="bootstrap replicates of every interval")
    _add_measure_args(q)
    q.set_defaults(func=_cmd_search)

    r = sub.add_parser("report", help="Markdown + CSV tables and PNG plots from a results store")
    r.add_argument("store", help="sweep output folder or its results.jsonl")
    r.add_argument("--out", default=None, help="report folder (default: <store folder>/report)")
    r.add_argument("--title", default=None)
    r.add_argument("--print", action="store_true", help="print the Markdown report")
    r.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates per comparison")
    r.add_argument("--ci", type=float, default=0.95, help="confidence level of the intervals and verdicts")
    r.add_argument("--margin", type=float, default=None, help="equivalence margin, e.g. 0.005 (mAP; default: none)")
    r.add_argument("--explain-images", type=int, default=4, help="images of each variant's explain figure (0: none)")
    r.set_defaults(func=_cmd_report)

    e = sub.add_parser(
        "cocoeval", help="score one validation with faster-coco-eval's COCOeval next to Ultralytics (mAP, APs/APm/APl)"
    )
    e.add_argument("weights", help="trained .pt file")
    e.add_argument("--data", required=True, help="dataset YAML")
    e.add_argument("--split", default="val", help="split to validate (default val)")
    e.add_argument("--imgsz", type=int, default=640)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--device", default="cpu")
    e.add_argument("--workers", type=int, default=0)
    e.add_argument("--keep", default=None, help="folder that keeps predictions.json and ground_truth.json")
    e.add_argument("--json", default=None, help="also write the result to this JSON file")
    e.set_defaults(func=_cmd_cocoeval)

    d = sub.add_parser(
        "demo", help="the README main job: a baseline, then it and each family's variant continued, per seed (CPU)"
    )
    d.add_argument("--out", default="out/demo", help="output folder; the report is <out>/report.md")
    d.add_argument("--epochs", type=int, default=None, help="epochs of the baseline from scratch (default: the demo's)")
    d.add_argument("--finetune-epochs", type=int, default=None, help="epochs of every continued run")
    d.add_argument("--imgsz", type=int, default=None)
    d.add_argument("--n-train", type=int, default=None)
    d.add_argument("--n-val", type=int, default=None)
    d.add_argument("--devices", nargs="+", default=None, help="one run per entry at a time (default: cpu cpu)")
    d.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds of the continued runs (default: 0 1 2 3; 3+ for verdicts)",
    )
    d.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates of the report's intervals")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="latency / peak memory / GFLOPs of every registered block at its bench levels")
    b.add_argument("--family", nargs="+", default=None, help="only these families (default: all)")
    b.add_argument("--name", nargs="+", default=None, help="only blocks whose name contains one of these")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, 0, auto")
    b.add_argument("--iters", type=int, default=None, help="timed steps, median reported (default: bench_block's)")
    b.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: bench_block's)")
    b.add_argument("--forward-only", action="store_true", help="time inference (no_grad forward) instead of fwd+bwd")
    b.add_argument("--no-flops", action="store_true", help="skip the GFLOPs column")
    b.add_argument("--json", default=None, help="also write the rows to this JSON file")
    b.set_defaults(func=_cmd_bench)

    c = sub.add_parser("gpu-check", help="the prepared GPU check: AMP training, bf16 block speed, training cost")
    c.add_argument("--device", default="0", help="Ultralytics device (default 0); cpu with --quick runs it on CPU")
    c.add_argument("--quick", action="store_true", help="small sizes, fewer steps (the test suite's CPU run)")
    c.add_argument("--out", default="out/gpu", help="folder of summary.json / summary.md (default out/gpu)")
    c.add_argument("--tests", default=None, help="tests folder for the gpu-marked tests (default: the checkout's)")
    c.set_defaults(func=_cmd_gpu_check)

    f = sub.add_parser("flops", help="GFLOPs at the real size (attention included) next to Ultralytics' figure")
    f.add_argument("model", nargs="+", help="model YAMLs or .pt files")
    f.add_argument("--imgsz", type=int, nargs="+", default=[640], help="640 or H W")
    f.set_defaults(func=_cmd_flops)

    n = sub.add_parser("insert", help="insert an attention block into a model YAML at a named position")
    n.add_argument("base", help="base model YAML: path or Ultralytics name (yolov8.yaml, yolo11.yaml)")
    n.add_argument("block", help="registered family (yolo-attn info lists them) or block name")
    n.add_argument("position", help="backbone, sppf_before, sppf_after, neck, head (or neck_p3/neck_p4/neck_p5)")
    n.add_argument("--args", default="", help="extra block arguments after c2, as a YAML list, e.g. '[8, 2]'")
    n.add_argument("-n", type=int, default=None, help="YAML repeats of the new rows")
    n.add_argument("-o", "--output", default=None, help="output YAML (default: <variant name>.yaml; '-' = stdout)")
    n.add_argument("--no-validate", action="store_true", help="skip building the variant")
    n.set_defaults(func=_cmd_insert)

    g = sub.add_parser("generate", help="write every base x family x position variant (the cfg/ folder)")
    g.add_argument("--out", default=None, help="output folder (default: yolo_attn's cfg folder, its own families)")
    g.add_argument("--families", nargs="+", default=None, help="families or block names (default: all registered)")
    g.add_argument("--check", action="store_true", help="do not write; exit 1 if the files differ from the generator")
    g.add_argument("--no-validate", action="store_true", help="skip building each variant")
    g.set_defaults(func=_cmd_generate)

    _add_explain_parser(sub)

    i = sub.add_parser("info", help="versions, registered blocks, positions")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``yolo-attn`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = []
    cmd = next((c for c in ("ablate", "search") if c in argv), None)
    if cmd:  # key=value tokens are training overrides wherever they stand (after --blocks ... too)
        cut = argv.index(cmd) + 1
        overrides = [t for t in argv[cut:] if re.match(r"^[A-Za-z_]\w*=", t)]
        argv = argv[:cut] + [t for t in argv[cut:] if not re.match(r"^[A-Za-z_]\w*=", t)]
    args = _parser().parse_args(argv)
    if overrides:
        args.overrides = overrides + list(args.overrides)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as e:  # user errors: one line, not a traceback
        if args.verbose:
            raise
        print(f"yolo-attn {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line (a sweep says what it recorded), the shell's status for SIGINT
        if args.verbose:
            raise
        from yolo_attn.executors import SweepInterrupted

        print(e if isinstance(e, SweepInterrupted) else f"yolo-attn {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
