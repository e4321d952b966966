"""Latency and peak memory of a block or a whole model, on CPU and on CUDA, with one code path.

What is measured (the same definitions for blocks and for models):

- ``ms``: the median wall time of one step over ``iters`` timed steps, after ``warmup`` untimed steps. A step is a
  forward pass, or a forward plus ``backward()`` of the summed outputs when ``backward=True`` (gradients are reset to
  ``None`` first, so their allocation is part of every step). On CUDA each step is bracketed by
  ``torch.cuda.synchronize()``. ``ms_min`` is the fastest step (a noise-free lower bound on a shared machine).
- ``peak_mb``: the peak of memory allocated *during* one extra (untimed) step, above what was allocated just before
  it, so parameters and the input tensor are excluded while activations, autograd buffers, kernel workspaces and the
  gradients are included. On CUDA this is ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()``
  (after ``reset_peak_memory_stats``). On CPU there is no allocator statistic, so the step runs under
  ``torch.profiler`` with ``profile_memory=True`` and the allocator's ``[memory]`` events (every allocation and free
  of the CPU caching-free allocator, op-internal workspaces included) are summed in time order; the peak of that
  running sum is the figure. If the profiler cannot run (another profiler is active), a ``TorchDispatchMode`` tracker
  that sees the storages of op outputs is used instead (it misses op-internal workspaces, so it reads a little low);
  ``mem_method`` in the result says which one produced the number.

Block benchmark (``yolo-attn bench``): every registered block with :attr:`~yolo_attn.registry.BlockSpec.bench_levels`
is built as a YAML row would build it (``c1 == c2``, one repeat, its ``level`` filled in) at the input shape
:data:`LEVEL_SHAPES` gives each level, by :func:`block_cases`; a fourth family's blocks are measured the moment they
are registered.

Examples:
    >>> import torch
    >>> from yolo_attn.bench import bench_block
    >>> r = bench_block(torch.nn.Conv2d(8, 8, 3, padding=1), (1, 8, 32, 32), iters=3)
    >>> r["mode"], r["shape"], r["ms"] > 0
    ('fwd+bwd', [1, 8, 32, 32], True)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from yolo_attn import registry
from yolo_attn.markdown import table

__all__ = [
    "IMPLS",
    "LEVEL_SHAPES",
    "BenchCase",
    "ModelBench",
    "bench_block",
    "bench_model",
    "bench_table",
    "block_cases",
    "format_table",
    "peak_memory_mb",
    "resolve_device",
    "time_steps",
]

#: Pyramid level -> (B, C, H, W) of the benchmark input: yolov8n's P3/P4/P5 maps at 640, batch 2. The one definition
#: of the benchmark sizes (block specs name their levels, see :attr:`yolo_attn.registry.BlockSpec.bench_levels`).
LEVEL_SHAPES: dict[int, tuple[int, int, int, int]] = {5: (2, 256, 20, 20), 4: (2, 128, 40, 40), 3: (2, 64, 80, 80)}

#: Attention implementations each block case is measured with: row label -> the ``impl`` given to
#: :func:`yolo_attn.nn.attention.set_attn_impl` (None: the block as built, ``attn_impl="auto"``). One row per entry;
#: add e.g. ``"plain": "plain"`` to time the twin next to every block.
IMPLS: dict[str, str | None] = {"default": None}


@dataclass(frozen=True)
class BenchCase:
    """One row of a block benchmark: ``make()`` builds a fresh module that takes one ``shape`` input.

    Attributes:
        name: Row label.
        make: Builds the module (called once per row, so every row starts from a fresh module).
        shape: Input shape ``(B, C, H, W)``.
        family: Block family (for grouping), if any.
        note: What the row measures, in a few words.
        backward: Time forward + backward (None: the table's default).
    """

    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    family: str | None = None
    note: str = ""
    backward: bool | None = None


@dataclass(frozen=True)
class ModelBench:
    """Inference latency and peak memory of a model per batch size (what a run record keeps).

    Attributes:
        device: Where it ran.
        imgsz: ``[h, w]`` of the input.
        latency_ms: Batch -> median forward latency in ms.
        peak_mb: Batch -> peak MB the forward allocates above model and input.
    """

    device: str
    imgsz: list[int]
    latency_ms: dict[int, float]
    peak_mb: dict[int, float]


LOGGER = logging.getLogger(__name__)


def resolve_device(device: str | int | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when present else CPU; ``0`` / ``"0"`` -> ``cuda:0`` (Ultralytics style)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return torch.device(f"cuda:{int(device)}")
    return torch.device(device)


def _make_step(
    module: nn.Module, x: torch.Tensor, backward: bool, autocast: torch.dtype | None = None
) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]

    def forward() -> Any:
        if autocast is None:
            return module(x)
        with torch.autocast(x.device.type, dtype=autocast):
            return module(x)

    def step() -> None:
        if backward:
            for p in params:
                p.grad = None
            # Ultralytics heads return nested lists, tuples and dicts; every floating leaf joins the loss
            outs = [t for t in tree_leaves(forward()) if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if not outs:
                raise ValueError(f"{type(module).__name__} returned no floating tensor to backpropagate through")
            sum(o.float().sum() for o in outs).backward()
        else:
            with torch.no_grad():
                forward()

    return step


@contextlib.contextmanager
def _quiet_stderr_fd() -> Any:
    """Silence fd 2 (kineto prints start/stop lines from C++ that Python cannot intercept); Python errors still raise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_profiler(step: Callable[[], None]) -> float:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr_fd():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        if str(e.device_type()).endswith("CPU"):  # DeviceType.CPU
            current += e.nbytes()
            peak = max(peak, current)
    return peak


class _StorageTracker:
    """Fallback CPU tracker: live bytes of op-output storages, freed through weakref callbacks on the storage."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                        tracker.add(t.untyped_storage())
                return out

        self.mode = _Mode()
        self.current = self.peak = 0
        self.live: set[int] = set()

    def add(self, storage: torch.UntypedStorage) -> None:
        key, n = storage.data_ptr(), storage.nbytes()
        if n == 0 or key in self.live:
            return
        self.live.add(key)
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self.free, key, n)

    def free(self, key: int, n: int) -> None:
        if key in self.live:
            self.live.discard(key)
            self.current -= n


def _cpu_peak_dispatch(step: Callable[[], None]) -> float:
    tracker = _StorageTracker()
    with tracker.mode:
        step()
    return tracker.peak


def peak_memory_mb(step: Callable[[], None], device: torch.device | str = "cpu") -> tuple[float, str]:
    """Run ``step`` once and return (peak MB allocated during it above the starting level, method name)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    if device.type != "cpu":
        return float("nan"), "unsupported"
    try:
        return _cpu_peak_profiler(step) / 2**20, "profiler"
    except RuntimeError as e:  # e.g. "Can't profile while another profiler is running"
        LOGGER.debug("profiler memory measure unavailable (%s); using the dispatch tracker", e)
        return _cpu_peak_dispatch(step) / 2**20, "dispatch"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int = 2, iters: int = 5) -> list[float]:
    """Milliseconds of each of ``iters`` timed calls of ``step``, after ``warmup`` untimed ones (CUDA synchronised)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(max(warmup, 0)):
        step()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_block(
    module: nn.Module,
    input_shape: Sequence[int],
    backward: bool = True,
    warmup: int = 2,
    iters: int = 5,
    device: str | torch.device = "cpu",
    memory: bool = True,
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
) -> dict:
    """Median step latency and peak step memory of ``module`` on a random input of ``input_shape``.

    The module runs in training mode when ``backward`` (a training step) and in eval mode otherwise (inference);
    its original mode is restored afterwards. See the module docstring for exactly what is measured.

    Args:
        module: Any ``nn.Module`` taking one tensor; its outputs may be nested lists/tuples/dicts of tensors.
        input_shape: ``(B, C, H, W)`` (any shape the module accepts).
        backward: Time forward + backward of the summed outputs instead of a no-grad forward.
        warmup: Untimed steps first (allocator warm-up, lazy init, cuDNN autotune).
        iters: Timed steps; the median is reported.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``0`` ... (``"auto"`` picks CUDA when present).
        memory: Also measure peak memory (one extra step).
        dtype: Input and module dtype.
        autocast: Run the forward under ``torch.autocast`` with this dtype (mixed precision, as AMP trains).

    Returns:
        ``{"shape", "device", "mode", "ms", "ms_min", "peak_mb", "mem_method", "params", "iters"}``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    dev = resolve_device(device)
    was_training = module.training
    module = module.to(dev, dtype).train(backward)
    x = torch.randn(*input_shape, device=dev, dtype=dtype)
    step = _make_step(module, x, backward, autocast)
    try:
        times = time_steps(step, dev, warmup, iters)
        peak, method = peak_memory_mb(step, dev) if memory else (float("nan"), "off")
    finally:
        for p in module.parameters():
            p.grad = None
        module.train(was_training)
    return {
        "shape": list(input_shape),
        "device": str(dev),
        "mode": "fwd+bwd" if backward else "fwd",
        "ms": statistics.median(times),
        "ms_min": min(times),
        "peak_mb": peak,
        "mem_method": method,
        "params": sum(p.numel() for p in module.parameters()),
        "iters": iters,
    }


def bench_model(
    model: nn.Module,
    imgsz: int | Sequence[int] = 640,
    batches: Iterable[int] = (1, 8),
    device: str | torch.device = "cpu",
    warmup: int = 2,
    iters: int = 5,
    channels: int = 3,
) -> ModelBench:
    """Inference latency and peak memory of a detection model at several batch sizes (forward only, eval mode).

    Accepts an Ultralytics ``YOLO`` wrapper or its ``DetectionModel``.
    """
    from yolo_attn._compat import unwrap

    net = unwrap(model)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    latency, peak = {}, {}
    for b in batches:
        r = bench_block(net, (b, channels, h, w), backward=False, warmup=warmup, iters=iters, device=device)
        latency[int(b)], peak[int(b)] = r["ms"], r["peak_mb"]
    return ModelBench(str(resolve_device(device)), [h, w], latency, peak)


def bench_table(
    cases: Iterable[BenchCase],
    backward: bool = True,
    warmup: int = 2,
    iters: int = 5,
    device: str | torch.device = "cpu",
    flops: bool = True,
) -> list[dict]:
    """Benchmark every case; one row per case: its ``name``, ``family``, ``note``, then :func:`bench_block`'s keys.

    A case that fails to build or run gives a row with an ``"error"`` text instead of stopping the table. With
    ``flops=True`` the forward GFLOPs at the case's shape (counted by :func:`yolo_attn.flops.count_flops`, attention
    included) are added as ``gflops``.
    """
    from yolo_attn.flops import count_flops

    rows = []
    for case in cases:
        row: dict[str, Any] = {"name": case.name, "family": case.family, "note": case.note, "shape": list(case.shape)}
        try:
            module = case.make()
            mode = backward if case.backward is None else case.backward
            row.update(bench_block(module, case.shape, backward=mode, warmup=warmup, iters=iters, device=device))
            if flops:
                row["gflops"] = count_flops(module, case.shape, device=device)["gflops"]
        except Exception as e:  # one broken case must not hide the others
            row["error"] = f"{type(e).__name__}: {e}"
            LOGGER.warning("bench case %s failed: %s", case.name, row["error"])
        rows.append(row)
    return rows


def _with_impl(module: nn.Module, impl: str | None) -> nn.Module:
    """``module`` switched to attention implementation ``impl`` (None: as built). See :data:`IMPLS`."""
    if impl is None:
        return module
    from yolo_attn.nn.attention import set_attn_impl

    set_attn_impl(module, impl)
    return module


def _build(spec: registry.BlockSpec, channels: int, level: int, impl: str | None) -> nn.Module:
    """The block as the YAML row ``[-1, 1, <name>, [channels]]`` at pyramid level ``level`` builds it (c1 == c2)."""
    c2, *extras = spec.yaml_args(channels, level)
    repeats = [1] if spec.repeats else []
    return _with_impl(spec.cls(channels, c2, *repeats, *extras), impl)


def block_cases(families: Iterable[str] | None = None, names: Iterable[str] | None = None) -> list[BenchCase]:
    """A case per registered block with bench levels, per level, per entry of :data:`IMPLS`.

    Args:
        families: Only blocks of these families (default: every block that names bench levels).
        names: Only blocks whose name contains one of these (case-insensitive).

    Raises:
        ValueError: An unknown family, or a block naming a level :data:`LEVEL_SHAPES` does not have.
    """
    from yolo_attn import integration

    integration.register()  # the package's blocks and YOLO_ATTN_PLUGINS'
    specs = [sp for sp in registry.specs() if sp.bench_levels]
    if families is not None:
        families = list(families)
        known = sorted({sp.family for sp in specs if sp.family})
        unknown = [f for f in families if f not in known]
        if unknown:
            raise ValueError(f"no benchmarked blocks in family {', '.join(unknown)}; families: {', '.join(known)}")
        specs = [sp for sp in specs if sp.family in families]
    if names is not None:
        wanted = [n.lower() for n in names]
        specs = [sp for sp in specs if any(n in sp.name.lower() for n in wanted)]
    cases = []
    for sp in specs:
        for level in sp.bench_levels:
            if level not in LEVEL_SHAPES:
                raise ValueError(f"{sp.name} names bench level {level}; LEVEL_SHAPES has {sorted(LEVEL_SHAPES)}")
            shape = LEVEL_SHAPES[level]
            _, c, h, w = shape
            for label, impl in IMPLS.items():
                cases.append(
                    BenchCase(
                        name=f"{sp.name} P{level} {h}x{w} c={c} {label}",
                        make=functools.partial(_build, sp, c, level, impl),
                        shape=shape,
                        family=sp.family,
                        note=f"{sp.role} block, attention: {label}",
                    )
                )
    return cases


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(i) for i in v)
    return str(v)


_COLUMNS = [
    ("family", "family"),
    ("name", "block"),
    ("shape", "input"),
    ("mode", "step"),
    ("params", "params"),
    ("gflops", "GFLOPs"),
    ("ms", "median ms"),
    ("ms_min", "min ms"),
    ("peak_mb", "peak MB"),
    ("device", "device"),
    ("error", "error"),
]


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] | None = None) -> str:
    """A Markdown table of ``rows`` (``bench_table`` output by default); columns nobody filled are dropped."""
    cols = [c for c in (columns or _COLUMNS) if any(r.get(c[0]) not in (None, "") for r in rows)]
    if not cols:
        return ""
    numeric = [all(_is_num(r.get(k)) for r in rows if r.get(k) is not None) for k, _ in cols]
    cells = [[_fmt(r.get(k)) for k, _ in cols] for r in rows]
    return table([h for _, h in cols], cells, align="".join("r" if n else "l" for n in numeric))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
