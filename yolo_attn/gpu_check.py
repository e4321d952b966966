"""One prepared check of what users train with on a GPU: AMP training, bf16 block speed, training cost per variant.

GPUs come to this project now and then, for minutes; this module is the one command to run the moment one is there
(``yolo-attn gpu-check``, wrapped by ``scripts/gpu_check.sh``). ``--device cpu --quick`` runs every step end to end on
CPU at small sizes; the test suite runs it, so the command cannot rot while no GPU is around. Steps:

1. **gpu tests**: ``pytest -m gpu`` over the checkout's ``tests/`` (skipped, and said so, when there is none).
2. **AMP training**: each headline cfg (``cfg/yolov8-{bot,dat,coat}.yaml``, ``cfg/yolov11-*.yaml``), their
   ``sppf_before`` twins and the two baselines (yolov8n, yolo11n) train on generated data with ``amp=True``; a
   non-finite loss at any batch, or AMP turned off by Ultralytics' AMP check on CUDA, fails the check.
3. **block benchmark**: every registered block at P5/P4/P3 of the check's image size, yolov8n and yolov8s widths,
   under ``torch.autocast(bfloat16)``, forward + backward: time, peak memory, and throughput as a fraction of plain
   flash SDPA's at the same batch, heads, token count and head size (``t_flash / t_block``: the block does more than
   attention, so 1.0 is the ceiling), and which SDPA kernel the block ran (read from the dispatcher, not guessed).
4. **training cost**: images/s of the last epoch and peak memory per variant, next to its baseline.
5. ``<out>/summary.json`` and ``<out>/summary.md``.

Sizes (full / quick): training at 640 / 64 px, 2 / 1 epochs, batch 16 / 4, 64 / 8 images; benchmark at 640 / 128 px,
batch 16 / 2, 10 / 1 timed iterations.

Examples:
    >>> s = Settings.make("cpu", quick=True)
    >>> s.imgsz, s.epochs, s.bench_batch
    (64, 1, 2)
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from yolo_attn import integration, registry
from yolo_attn.bench import resolve_device
from yolo_attn.markdown import table

__all__ = ["BASELINES", "headline", "Settings", "gpu_check", "write_summary"]

#: The bases users start from: the prefix of their headline cfgs in ``cfg/`` -> the baseline (Ultralytics' YAML).
BASELINES = {"yolov8": "yolov8n.yaml", "yolov11": "yolo11n.yaml"}


def headline() -> list[str]:
    """``<base>-<family>`` for every registered family whose headline cfg is packaged (both bases).

    Raises:
        FileNotFoundError: No headline cfg was found at all: the check would train nothing, so it refuses to run.
    """
    integration.register()
    root = integration.cfg_dir()  # cfg/ of a checkout, yolo_attn/cfg inside an installed wheel
    found = [f"{b}-{f}" for b in BASELINES for f in registry.families() if (root / f"{b}-{f}.yaml").is_file()]
    if not found:
        raise FileNotFoundError(
            f"the GPU check found no headline cfg ({', '.join(f'{b}-<family>.yaml' for b in BASELINES)} for the "
            f"families {', '.join(registry.families()) or '(none registered)'}) in {root}, so it would train nothing; "
            "reinstall yolo_attn (the wheel ships them as yolo_attn/cfg) or run it from a checkout"
        )
    return found


#: Channels of P3/P4/P5 at width multiple 1.0 / yolov8n (0.25) and yolov8s (0.5) take a quarter / half.
_WIDTHS = {"yolov8n": {3: 64, 4: 128, 5: 256}, "yolov8s": {3: 128, 4: 256, 5: 512}}


@dataclass(frozen=True)
class Settings:
    """Sizes of one check; :meth:`make` gives the full (GPU) or quick (CPU) ones."""

    device: str
    quick: bool
    imgsz: int
    epochs: int
    batch: int
    n_train: int
    n_val: int
    bench_imgsz: int
    bench_batch: int
    bench_iters: int
    cfgs: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def make(cls, device: str = "0", quick: bool = False) -> Settings:
        cfgs = headline()
        root = integration.cfg_dir()
        twins = () if quick else tuple(f"{c}-sppf_before" for c in cfgs if (root / f"{c}-sppf_before.yaml").is_file())
        return cls(
            device=str(device),
            quick=quick,
            imgsz=64 if quick else 640,
            epochs=1 if quick else 2,
            batch=4 if quick else 16,
            n_train=8 if quick else 64,
            n_val=4 if quick else 16,
            bench_imgsz=128 if quick else 640,
            bench_batch=2 if quick else 16,
            bench_iters=1 if quick else 10,
            cfgs=tuple(cfgs) + twins,
        )


# ------------------------------------------------------------------------------------------------ 1. gpu tests
def _checkout_tests() -> Path | None:
    """The tests of the checkout this package runs from; None for an installed package (the folder beside
    ``site-packages/yolo_attn`` may be another project's ``tests``)."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    return tests if (tests / "test_gpu_check.py").is_file() else None


def run_gpu_tests(tests: Path | None, timeout: float = 300) -> dict:
    """``pytest -m gpu`` over ``tests``: counts of passed / failed / skipped and the failures' names."""
    if tests is None:
        return {"status": "skipped", "reason": "an installed package has no tests (run from a checkout, or --tests)"}
    if not tests.is_dir():
        return {"status": "skipped", "reason": f"no tests folder at {tests} (run from a checkout)"}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(tests)]
        cmd += ["--junitxml", str(xml), "-o", "addopts="]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tests.parent)
        if not xml.exists():
            return {"status": "failed", "reason": f"pytest exited {r.returncode}: {r.stdout[-500:]}{r.stderr[-500:]}"}
        counts, failures, reasons = {"passed": 0, "failed": 0, "skipped": 0}, [], set()
        for case in ET.parse(xml).iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                failures.append(name)
            elif (sk := case.find("skipped")) is not None:
                counts["skipped"] += 1
                reasons.add((sk.get("message") or "").split("\n")[0][:120])
            else:
                counts["passed"] += 1
    status = "failed" if counts["failed"] or r.returncode not in (0, 5) else "ok"
    return {"status": status, **counts, "failures": failures, "skip_reasons": sorted(reasons),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ 2. + 4. training
def _cfg_path(name: str) -> str:
    """``yolov8-bot`` -> the package's cfg file; a baseline name is Ultralytics' own YAML."""
    return name if name.endswith(".yaml") else str(integration.cfg_dir() / f"{name}.yaml")


def train_one(name: str, data: str, s: Settings, out: Path) -> dict:
    """Train ``name`` with AMP asked for; the record of what happened (finite losses, AMP, images/s, memory)."""
    from yolo_attn._compat import YOLO, trainer_state

    dev = resolve_device(s.device)
    seen: dict[str, Any] = {"bad_batches": 0, "first_bad": None, "epoch_s": [], "images": None, "amp": None}

    def on_train_start(trainer: Any) -> None:
        st = trainer_state(trainer)
        seen["amp"], seen["images"] = st["amp"], st["n_train_images"]

    def on_epoch_start(trainer: Any) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seen["t0"] = time.perf_counter()

    def on_batch_end(trainer: Any) -> None:
        st = trainer_state(trainer)
        if st["loss"] is not None and not bool(torch.isfinite(st["loss"].detach()).all()):
            seen["bad_batches"] += 1
            seen["first_bad"] = seen["first_bad"] or f"epoch {st['epoch'] + 1}"

    def on_epoch_end(trainer: Any) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seen["epoch_s"].append(time.perf_counter() - seen["t0"])

    rec: dict[str, Any] = {"cfg": name, "baseline": name in BASELINES.values()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    try:
        model = YOLO(_cfg_path(name))
        for event, fn in (
            ("on_train_start", on_train_start),
            ("on_train_epoch_start", on_epoch_start),
            ("on_train_batch_end", on_batch_end),
            ("on_train_epoch_end", on_epoch_end),
        ):
            model.add_callback(event, fn)
        model.train(
            data=data, epochs=s.epochs, imgsz=s.imgsz, batch=s.batch, device=s.device, amp=True, workers=0,
            project=str(out / "train"), name=Path(name).stem, exist_ok=True, plots=False, verbose=False, seed=0,
        )  # fmt: skip
    except Exception as e:  # one broken cfg must not hide the others
        rec.update(status="failed", reason=f"{type(e).__name__}: {e}"[:500])
        return rec
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    last = seen["epoch_s"][-1] if seen["epoch_s"] else None
    rec["images_per_s"] = round(seen["images"] / last, 2) if last and seen["images"] else None
    rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None
    rec["amp"] = seen["amp"]
    problems = []
    if seen["bad_batches"]:
        problems.append(f"non-finite loss in {seen['bad_batches']} batch(es), first in {seen['first_bad']}")
    if dev.type == "cuda" and not seen["amp"]:
        problems.append("Ultralytics' AMP check turned AMP off (it saw a difference between fp32 and AMP)")
    rec["status"] = "failed" if problems else "ok"
    if problems:
        rec["reason"] = "; ".join(problems)
    elif dev.type != "cuda":
        rec["note"] = "AMP is CUDA-only in Ultralytics: this run trained in fp32 (the fp16 tests cover CPU numerics)"
    return rec


def _with_baselines(rows: list[dict]) -> list[dict]:
    """Each variant's images/s and memory as a ratio of its base's baseline."""
    base = {r["cfg"]: r for r in rows if r.get("baseline")}
    for r in rows:
        if r.get("baseline"):
            continue
        b = base.get(BASELINES.get(r["cfg"].split("-")[0], ""), {})
        if r.get("images_per_s") and b.get("images_per_s"):
            r["slowdown"] = round(b["images_per_s"] / r["images_per_s"], 2)
        if r.get("peak_mem_mb") and b.get("peak_mem_mb"):
            r["memory_ratio"] = round(r["peak_mem_mb"] / b["peak_mem_mb"], 2)
    return rows


# ------------------------------------------------------------------------------------------------ 3. blocks
class _SdpaKernels(TorchDispatchMode):
    """Names of the SDPA aten kernels that ran (forward and backward), read from the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.math = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name:
            self.seen.add(name.lstrip("_"))
        elif name == "_safe_softmax":  # SDPA's math kernel, decomposed (CPU with a mask that needs a gradient)
            self.math = True
        return func(*args, **(kwargs or {}))

    def summary(self) -> str:
        if self.seen:
            return ", ".join(sorted(self.seen))
        return "math (SDPA decomposed: bmm + softmax)" if self.math else "none (explicit softmax or no attention)"


@contextlib.contextmanager
def _attend_shapes() -> Iterator[list]:
    """Record ``(q, k, v)`` shapes of every :func:`yolo_attn.nn.attention.attend` call (every block's softmax)."""
    from yolo_attn.nn import attention

    shapes: list = []
    real = attention.attend
    mods = [m for n, m in sys.modules.items() if n.startswith("yolo_attn.nn") and getattr(m, "attend", None) is real]

    def spy(q, k, v, *args, **kwargs):
        shapes.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return real(q, k, v, *args, **kwargs)

    for m in mods:
        m.attend = spy
    try:
        yield shapes
    finally:
        for m in mods:
            m.attend = real


def _flash_step(shapes: list, dev: torch.device) -> Callable[[], None] | None:
    """fwd+bwd of plain SDPA (flash on CUDA) at the block's attention shapes; None when the block has none."""
    if not shapes:
        return None
    tensors = [
        [torch.randn(s, device=dev, dtype=torch.bfloat16, requires_grad=True) for s in (qs, ks, vs)]
        for qs, ks, vs in shapes
    ]
    ctx: Callable[[], Any] = contextlib.nullcontext
    if dev.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def ctx() -> Any:
            return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])

    def step() -> None:
        with ctx():
            for q, k, v in tensors:
                F.scaled_dot_product_attention(q, k, v).sum().backward()

    return step


def bench_blocks(s: Settings) -> list[dict]:
    """Every registered block with bench levels, at P5/P4/P3 of ``s.bench_imgsz``, both widths, bf16, fwd+bwd."""
    from yolo_attn.bench import _build, _make_step, bench_block, time_steps

    integration.register()
    dev = resolve_device(s.device)
    rows = []
    for sp in [sp for sp in registry.specs() if sp.bench_levels]:
        for width, chans in _WIDTHS.items():
            for level in sorted(sp.bench_levels, reverse=True):
                hw = s.bench_imgsz // 2**level
                shape = (s.bench_batch, chans[level], hw, hw)
                row: dict[str, Any] = {"block": sp.name, "width": width, "level": f"P{level}", "shape": list(shape)}
                try:
                    m = _build(sp, chans[level], level, None).to(dev).train()
                    kernels = _SdpaKernels()
                    with _attend_shapes() as shapes, kernels:  # one traced step: the kernels and attention shapes
                        _make_step(m, torch.randn(shape, device=dev), True, torch.bfloat16)()
                    row["sdpa_kernel"] = kernels.summary()
                    r = bench_block(m, shape, True, 1, s.bench_iters, dev, autocast=torch.bfloat16)
                    row["ms"], row["peak_mem_mb"] = round(r["ms"], 3), round(r["peak_mb"], 1)
                    flash = _flash_step(shapes, dev)
                    if flash is not None:
                        row["flash_ms"] = round(statistics.median(time_steps(flash, dev, 1, s.bench_iters)), 3)
                        row["vs_flash"] = round(row["flash_ms"] / row["ms"], 3)
                        q, k, _ = shapes[0]
                        row["attention"] = f"{len(shapes)}x heads={q[1]} N={q[2]} M={k[2]} d={q[3]}"
                except Exception as e:  # one broken case must not hide the others
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------ 5. summary
def _environment(dev: torch.device) -> dict:
    """The versions every result records (:func:`yolo_attn.execute.versions`), and the device this check ran on."""
    from yolo_attn.execute import versions

    env = {**versions(), "device": str(dev)}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """Markdown table of ``rows`` (dicts) with the given ``(key, title)`` columns; missing values blank."""
    return table([t for _, t in cols], [["" if r.get(k) is None else r[k] for k, _ in cols] for r in rows])


def write_summary(result: dict, out: Path) -> tuple[Path, Path]:
    """``summary.json`` (everything) and ``summary.md`` (a section per step) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    js = out / "summary.json"
    js.write_text(json.dumps(result, indent=1, default=str))
    s = result["settings"]
    lines = [
        f"# yolo-attn gpu-check: {'PASS' if result['ok'] else 'FAIL'}",
        "",
        "- " + ", ".join(f"{k} {v}" for k, v in result["environment"].items()),
        f"- {'quick' if s['quick'] else 'full'} settings: training {s['imgsz']} px, {s['epochs']} epoch(s), batch "
        f"{s['batch']}, {s['n_train']} images, amp=True; blocks at {s['bench_imgsz']} px, batch {s['bench_batch']}, "
        f"bf16 autocast, forward+backward, median of {s['bench_iters']}",
        f"- wall time {result['seconds']:.0f} s",
        "",
        "## 1. gpu-marked tests",
        "",
    ]
    t = result["gpu_tests"]
    if t["status"] == "skipped":
        lines.append(f"skipped: {t['reason']}")
    else:
        lines.append(f"{t['status']}: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")
        lines += [f"- failed: `{f}`" for f in t["failures"]]
        lines += [f"- skipped because: {r}" for r in t["skip_reasons"]]
        if "reason" in t:
            lines.append(t["reason"])
    lines += ["", "## 2. AMP training (every batch's loss finite, AMP kept on)", ""]
    cols = [("cfg", "cfg"), ("status", "status"), ("amp", "AMP"), ("seconds", "s"), ("reason", "why / note")]
    train = [{**r, "reason": r.get("reason") or r.get("note", "")} for r in result["training"]]
    lines += [_table(train, cols), ""]
    lines += ["## 3. Blocks (bf16, forward+backward)", ""]
    lines.append(
        "`vs flash`: time of plain SDPA (flash) at the block's own attention shapes divided by the block's time "
        "(the block also runs its projections and convolutions: 1.0 is the ceiling). `SDPA kernel`: the aten "
        "kernels the dispatcher ran."
    )
    lines.append("")
    cols = [("block", "block"), ("width", "width"), ("level", "level"), ("shape", "input"), ("ms", "ms"),
            ("peak_mem_mb", "peak MB"), ("flash_ms", "flash ms"), ("vs_flash", "vs flash"),
            ("attention", "attention"), ("sdpa_kernel", "SDPA kernel"), ("error", "error")]  # fmt: skip
    lines += [_table(result["blocks"], cols), ""]
    lines += ["## 4. Training cost next to the baseline", ""]
    cols = [("cfg", "cfg"), ("images_per_s", "images/s"), ("slowdown", "x slower than baseline"),
            ("peak_mem_mb", "peak MB"), ("memory_ratio", "x memory")]  # fmt: skip
    lines += [_table(result["training"], cols), ""]
    if result["problems"]:
        lines += ["## Problems", ""] + [f"- {p}" for p in result["problems"]]
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    return js, md


def gpu_check(device: str = "0", quick: bool = False, out: str | Path = "out/gpu", tests: str | Path | None = None):
    """Run every step; returns the result dict (``ok``: no step failed) and writes the two summary files.

    Args:
        device: Ultralytics device string (``0``, ``cuda:1``, ``cpu``).
        quick: Small sizes, fewer steps (what the test suite runs on CPU).
        out: Folder of the summaries (and the training runs).
        tests: The checkout's tests folder for step 1 (default: the checkout's ``tests``; an installed package has
            none, and step 1 then says it skipped).

    Raises:
        FileNotFoundError: No headline cfg was found (an empty plan would pass by checking nothing).
    """
    from yolo_attn.data import make_shapes_dataset

    s = Settings.make(device, quick)
    out = Path(out).resolve()
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, which this torch does not see; pass --device cpu --quick")
    t0 = time.perf_counter()
    tests = Path(tests) if tests else _checkout_tests()
    result: dict[str, Any] = {"settings": asdict(s), "environment": _environment(dev)}
    result["gpu_tests"] = run_gpu_tests(tests)
    data = make_shapes_dataset(out / f"data-{s.imgsz}", n_train=s.n_train, n_val=s.n_val, imgsz=s.imgsz)
    rows = [train_one(c, str(data), s, out) for c in (*BASELINES.values(), *s.cfgs)]
    result["training"] = _with_baselines(rows)
    result["blocks"] = bench_blocks(s)
    problems = []
    if result["gpu_tests"]["status"] == "failed":
        problems.append(f"gpu tests failed: {result['gpu_tests'].get('failures') or result['gpu_tests'].get('reason')}")
    problems += [f"{r['cfg']}: {r['reason']}" for r in rows if r["status"] != "ok"]
    problems += [f"{b['block']} {b['width']} {b['level']}: {b['error']}" for b in result["blocks"] if "error" in b]
    result["problems"], result["ok"] = problems, not problems
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_summary(result, out)
    return result
