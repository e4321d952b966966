"""The executor interface: pending runs in, finished records out; the driver (:func:`yolo_attn.executors.run_sweep`)
owns the store.

An executor is any callable ``executor(runs, ctx) -> Iterable[RunRecord]`` that executes every run it is given and
yields one record per run as each finishes (in any order), a failed record when a run could not execute. It must not
write the store: the driver appends what it yields, so a store has exactly one writer whatever runs the runs (this
process, worker processes, a cluster). It calls ``ctx.started(run, device)`` when a run begins, so the driver can say
so and mark it in progress. Optional attributes: ``slots`` (runs executing at once, for the ETA; default 1) and
``where`` (a few words for the progress line, e.g. ``"cpu, cpu"``).

Examples:
    >>> from yolo_attn.executors.base import Context
    >>> from yolo_attn.store import RunRecord
    >>> def dry_run(runs, ctx):  # an executor that trains nothing
    ...     for run in runs:
    ...         ctx.started(run, "nowhere")
    ...         yield RunRecord(run.key, name=run.name, status="failed", error="dry run")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from yolo_attn.execute import Measure
from yolo_attn.plan import Run
from yolo_attn.store import RunRecord

__all__ = ["Context", "Executor"]


def _ignore(run: Run, device: str) -> None:
    return None


@dataclass
class Context:
    """What every executor gets besides the runs.

    Attributes:
        out: The sweep folder (run folders, variant YAMLs and logs go below it).
        settings: Measurements after training.
        started: Call as ``started(run, device)`` when a run begins.
    """

    out: Path
    settings: Measure
    started: Callable[[Run, str], None] = _ignore


class Executor(Protocol):
    """Executes runs and yields their records (see the module docstring)."""

    def __call__(self, runs: Sequence[Run], ctx: Context) -> Iterable[RunRecord]: ...
