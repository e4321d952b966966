"""Executing a plan into a results store: the driver (:func:`run_sweep`) and the executors it hands runs to.

The driver owns the store (``<out>/results.jsonl``, :class:`yolo_attn.store.ResultStore`): it skips runs that have a
record, gives the others to an executor (:mod:`yolo_attn.executors.base` says what an executor is;
:mod:`yolo_attn.executors.local` has this machine's, :mod:`yolo_attn.executors.ray` a Ray cluster's), appends each record the executor yields, and logs progress
lines with an ETA. A run is recorded only when it has finished, so:

- re-running the same plan skips every key already in the store (``retry_failed=True`` redoes failed ones; the store
  is then compacted atomically to one record per key);
- a run that was interrupted (Ctrl-C, ``kill -9``, power) left no record and is redone; Ctrl-C (``KeyboardInterrupt``)
  leaves :func:`run_sweep` as :class:`SweepInterrupted`, which says how many runs are recorded (the CLI prints that
  one line and exits with status 130);
- a run that raises is recorded as failed with its message and the sweep goes on.

``<out>/plan.json`` holds the plan and measurement settings (for reading; nothing loads it back), and
``<out>/running/<key>.json`` marks runs in progress (informational; a stale marker from a killed sweep is simply
overwritten).

Examples:
    >>> import tempfile
    >>> from yolo_attn.executors import run_sweep
    >>> from yolo_attn.plan import Run
    >>> from yolo_attn.store import RunRecord
    >>> def dry_run(runs, ctx):  # any executor: runs in, records out (this one trains nothing)
    ...     for run in runs:
    ...         yield RunRecord(run.key, name=run.name, status="failed", error="dry run")
    >>> out = tempfile.mkdtemp()
    >>> [r.error for r in run_sweep([Run("yolov8n.yaml", "shapes.yaml")], out, executor=dry_run)]
    ['dry run']
    >>> len(run_sweep([Run("yolov8n.yaml", "shapes.yaml")], out, executor=dry_run))  # recorded: not run again
    1
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from yolo_attn.execute import Measure
from yolo_attn.executors.base import Context, Executor
from yolo_attn.executors.local import local_executor
from yolo_attn.plan import Run, check_eval_splits
from yolo_attn.store import ResultStore, RunRecord

__all__ = ["Context", "Executor", "PLAN_NAME", "SweepInterrupted", "run_sweep"]

LOGGER = logging.getLogger(__name__)
PLAN_NAME = "plan.json"


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Progress:
    """Index / total / ETA lines, printed through Ultralytics' LOGGER between its training output.

    The ETA scales by epochs: each pending run is expected to take the mean fixed time (outside ``model.train``) and
    the mean training seconds per epoch of the runs finished so far (those of earlier sweeps into the same store
    until one of this sweep finishes) times its epochs; the sum is spread over the executor's slots.
    """

    def __init__(self, plan: Sequence[Run], slots: int, prior: Sequence[RunRecord]):
        self.index = {r.key: i for i, r in enumerate(plan, 1)}
        self.total, self.slots = len(plan), max(slots, 1)
        self.done: list[RunRecord] = []
        self.prior = [r for r in prior if r.ok and r.wall_s]
        self.pending: dict[str, int | None] = {}  # key -> epochs (None: unknown)

    @property
    def left(self) -> int:
        return len(self.pending)

    def expect(self, runs: Sequence[Run]) -> None:
        """The runs this sweep will execute."""
        self.pending = {r.key: _epochs(r.train.get("epochs")) for r in runs}

    def eta(self) -> str:
        recs = [r for r in self.done if r.wall_s] or self.prior
        if not self.pending:
            return "0m00s"
        if not recs:
            return "?"
        # a run takes its fixed part (set-up, final validation, measurements) plus training time per epoch
        timed = [r for r in recs if r.epochs and r.train_s is not None]
        mean = sum(r.wall_s for r in recs) / len(recs)
        if timed:
            rate = sum(r.train_s / r.epochs for r in timed) / len(timed)
            fixed = sum(max(r.wall_s - r.train_s, 0.0) for r in timed) / len(timed)
        total = sum(fixed + rate * e if timed and e is not None else mean for e in self.pending.values())
        return _fmt_s(total / self.slots)

    def say(self, msg: str) -> None:
        from yolo_attn._compat import LOGGER as UL_LOGGER  # has a handler and honours YOLO_VERBOSE

        UL_LOGGER.info(msg)

    def started(self, run: Run, device: str) -> None:
        self.say(f"[{self.index[run.key]}/{self.total}] {run.name} (seed {run.seed}) on {device} | ETA {self.eta()}")

    def finished(self, rec: RunRecord) -> None:
        self.pending.pop(rec.key, None)
        self.done.append(rec)
        if rec.ok:
            gflops = rec.gflops if rec.gflops is not None else float("nan")
            m = rec.map50_95 if rec.map50_95 is not None else float("nan")
            what = f"done in {_fmt_s(rec.wall_s or 0)}: mAP50-95 {m:.4f}, {gflops:.2f} GFLOPs"
        else:
            what = f"FAILED after {_fmt_s(rec.wall_s or 0)}: {rec.error or '?'}"
        i = self.index.get(rec.key, "?")
        self.say(f"[{i}/{self.total}] {rec.name} (seed {rec.seed}) {what} | {self.left} left, ETA {self.eta()}")


def _epochs(v: object) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def _devices(devices: Sequence[str] | str | None) -> list[str]:
    if devices is None:
        import torch

        return ["0" if torch.cuda.is_available() else "cpu"]
    if isinstance(devices, str):
        devices = re.split(r"[;\s]+", devices)
    return [d.strip() for d in devices if d.strip()]


def _save_plan(out: Path, plan: Sequence[Run], settings: Measure) -> None:
    out.mkdir(parents=True, exist_ok=True)
    blob = {"settings": settings.to_dict(), "runs": [{"key": r.key, **r.to_dict()} for r in plan]}
    tmp = out / (PLAN_NAME + ".tmp")
    tmp.write_text(json.dumps(blob, indent=1))
    os.replace(tmp, out / PLAN_NAME)


def _marker(out: Path, key: str) -> Path:
    return out / "running" / f"{key}.json"


def _mark(out: Path, run: Run, device: str) -> None:
    p = _marker(out, run.key)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"key": run.key, "name": run.name, "device": device, "pid": os.getpid(), "t": time.time()}))


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep; the store keeps every run that finished, and the same sweep resumes from it.

    A ``KeyboardInterrupt`` (code that catches that still catches this); ``str()`` is the line to show the user.

    Attributes:
        recorded: Runs of the plan that have a record in the store (earlier sweeps' included).
        total: Runs in the plan.
        out: The sweep's folder.

    Examples:
        >>> print(SweepInterrupted(3, 8, "out/ablate"))
        interrupted: 3 of 8 runs recorded in out/ablate; run the same command again to resume
    """

    def __init__(self, recorded: int, total: int, out: str | os.PathLike):
        super().__init__(recorded, total, str(out))
        self.recorded, self.total, self.out = recorded, total, str(out)

    def __str__(self) -> str:
        return (
            f"interrupted: {self.recorded} of {self.total} runs recorded in {self.out}; "
            "run the same command again to resume"
        )


def _interruptible(sweep):
    """``sweep(plan, out, ...)`` with a ``KeyboardInterrupt`` turned into :class:`SweepInterrupted` (read from the
    store after the executor has stopped its workers)."""

    @functools.wraps(sweep)
    def run(plan: Sequence[Run], out: str | os.PathLike, *args, **kwargs):
        try:
            return sweep(plan, out, *args, **kwargs)
        except SweepInterrupted:
            raise
        except KeyboardInterrupt:
            recs = ResultStore(Path(out)).records()
            raise SweepInterrupted(sum(r.key in recs for r in plan), len(plan), out) from None

    return run


@_interruptible
def run_sweep(
    plan: Sequence[Run],
    out: str | os.PathLike,
    devices: Sequence[str] | str | None = None,
    retry_failed: bool = False,
    settings: Measure | Mapping | None = None,
    max_runs: int | None = None,
    executor: Executor | None = None,
    title: str | None = None,
) -> list[RunRecord]:
    """Execute every run of ``plan`` that has no record in ``<out>/results.jsonl`` yet; return the plan's records.

    Args:
        plan: Runs, e.g. from :func:`yolo_attn.plan.make_plan`.
        out: Output folder (store, plan, Ultralytics runs, variant YAMLs, logs).
        devices: ``"cpu"``, ``"0"``, ``["0", "1"]`` or ``"0;1"`` for the local executor. Several entries: one run per
            device at a time, each in its own worker process. Default: ``"cpu"``, or ``"0"`` when CUDA is present.
        retry_failed: Redo runs recorded as failed (the store keeps only the newest record per run).
        settings: Measurement settings (:class:`yolo_attn.execute.Measure` or some of its fields).
        max_runs: Execute at most this many runs in this call (the rest stay pending for the next call).
        executor: What executes the runs (default: :func:`yolo_attn.executors.local.local_executor` of ``devices``).
        title: What the first progress line calls this sweep (default: ``sweep <out>``).

    Returns:
        The store's record for each planned run that has one, in plan order.

    Raises:
        ValueError: A dataset lacks the split its runs are scored on (:attr:`yolo_attn.plan.Run.eval_split`); raised
            before anything is written or trained.
        SweepInterrupted: Ctrl-C; the runs recorded so far stay, the next call with the same plan resumes.
    """
    check_eval_splits(plan)  # every dataset of the plan, before the first run trains (whichever executor)
    out = Path(out)
    settings = Measure.of(settings)
    if executor is None:
        executor = local_executor(_devices(devices))
    store = ResultStore(out)
    _save_plan(out, plan, settings)
    have = store.records()
    if store.bad_lines:
        LOGGER.warning("%s: ignored %d torn/unreadable line(s)", store.path, store.bad_lines)
    prog = _Progress(plan, 1, list(have.values()))
    pending = []
    for run in plan:
        r = have.get(run.key)
        if r is not None and (r.ok or (r.status == "failed" and not retry_failed)):
            prog.say(f"[{prog.index[run.key]}/{prog.total}] {run.name} (seed {run.seed}): {r.status} earlier, skipped")
            continue
        pending.append(run)
    pending = pending[:max_runs] if max_runs is not None else pending
    prog.expect(pending)
    what = f"{title}: " if title else f"sweep {out}: "
    if not pending:
        prog.say(f"{what}all {prog.total} runs have records")
    else:
        # read only now: a cluster executor connects to learn them, which a store with nothing to do must not start
        prog.slots = max(getattr(executor, "slots", 1), 1)
        where = getattr(executor, "where", type(executor).__name__)
        prog.say(f"{what}{len(pending)} of {prog.total} runs to execute on {where} | ETA {prog.eta()}")

        def started(run: Run, device: str) -> None:
            _mark(out, run, device)
            prog.started(run, device)

        ctx = Context(out=out, settings=settings, started=started)
        wanted = {r.key for r in pending}
        records = iter(executor(pending, ctx))
        try:
            for rec in records:
                if rec.key not in wanted:
                    raise RuntimeError(
                        f"executor {executor!r} yielded a record for run {rec.key}, not one it was given"
                    )
                store.append(rec)
                _marker(out, rec.key).unlink(missing_ok=True)
                prog.finished(rec)
        finally:  # a generator executor stops its workers when closed, whatever ended the loop
            close = getattr(records, "close", None)
            if close is not None:
                close()
    recs = store.records()
    if len(store.lines()) != len(recs):
        store.compact()
    return [recs[r.key] for r in plan if r.key in recs]
