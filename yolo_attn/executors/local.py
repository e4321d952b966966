"""Executors on this machine: runs one after the other in this process, or one worker process per device.

- :class:`Inline` executes each run in this process on one device.
- :class:`Processes` executes each run in its own worker process, at most one run per device entry at a time
  (``["0", "1"]``: two GPUs; ``["cpu", "cpu"]``: two CPU runs side by side). Multi-GPU training of a *single* run is
  Ultralytics' DDP: give ``"0,1"`` as one entry. A worker gets its run on stdin, writes its output to
  ``<out>/logs/<name>-<key>.log`` and its record to a file next to it, which the executor reads back and yields; a
  worker that dies without one (killed, out of memory) yields a failed record with the log's tail. Interrupting the
  executor terminates its workers: their runs have no record and are redone by the next sweep.

Worker entry point: ``python -m yolo_attn.executors.local worker --out <out> --device <device> --record <file>``.

Examples:
    >>> from yolo_attn.executors.local import local_executor
    >>> ex = local_executor(["cpu", "cpu"])
    >>> type(ex).__name__, ex.slots, ex.where
    ('Processes', 2, 'cpu, cpu')
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from yolo_attn.execute import Measure, execute, failed_record
from yolo_attn.executors.base import Context
from yolo_attn.plan import Run
from yolo_attn.store import RunRecord

__all__ = ["Inline", "Processes", "local_executor", "worker_main"]


@dataclass
class Inline:
    """Execute runs one after the other in this process, on ``device``."""

    device: str = "cpu"
    slots: int = 1

    @property
    def where(self) -> str:
        return self.device

    def __call__(self, runs: Sequence[Run], ctx: Context) -> Iterator[RunRecord]:
        for run in runs:
            ctx.started(run, self.device)
            yield execute(run, ctx.out, self.device, ctx.settings)


def _worker_env() -> dict[str, str]:
    """Workers must import this very yolo_attn, installed or not (a fresh clone run through scripts/)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _worker_command(out: Path, device: str, record: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "yolo_attn.executors.local",
        "worker",
        "--out",
        str(out),
        "--device",
        device,
        "--record",
        str(record),
    ]


@dataclass
class _Job:
    run: Run
    device: str
    slot: int
    proc: subprocess.Popen
    log: Path
    record: Path
    t0: float = field(default_factory=time.time)


@dataclass
class Processes:
    """Execute each run in its own worker process, one run per entry of ``devices`` at a time."""

    devices: Sequence[str]
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        self.devices = list(self.devices)
        if not self.devices:
            raise ValueError("Processes needs at least one device, got none")

    @property
    def slots(self) -> int:
        return len(self.devices)

    @property
    def where(self) -> str:
        return ", ".join(self.devices)

    def _start(self, run: Run, slot: int, ctx: Context) -> _Job:
        logs = ctx.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stem = f"{run.name}-{run.key[:8]}"
        log, record = logs / f"{stem}.log", logs / f"{stem}.record.json"
        record.unlink(missing_ok=True)
        device = self.devices[slot]
        ctx.started(run, device)
        with open(log, "w") as f:
            proc = subprocess.Popen(
                _worker_command(ctx.out, device, record),
                stdin=subprocess.PIPE,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=_worker_env(),
                text=True,
            )
        job = {"run": run.to_dict(), "key": run.key, "settings": ctx.settings.to_dict()}
        with contextlib.suppress(BrokenPipeError):  # a worker that died at once is reported below
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
        return _Job(run, device, slot, proc, log, record)

    def _finish(self, job: _Job) -> RunRecord:
        rec = None
        if job.record.is_file():
            with contextlib.suppress(ValueError):
                rec = RunRecord.from_dict(json.loads(job.record.read_text()))
            job.record.unlink(missing_ok=True)
        if rec is None or rec.key != job.run.key or rec.pid != job.proc.pid:
            tail = job.log.read_text()[-2000:] if job.log.is_file() else ""
            error = f"worker process exited with code {job.proc.returncode} without a record"
            rec = failed_record(job.run, job.device, error, tail, time.time() - job.t0)
        rec.log = f"logs/{job.log.name}"  # relative to the store folder (the log lies in <out>/logs/)
        return rec

    def __call__(self, runs: Sequence[Run], ctx: Context) -> Iterator[RunRecord]:
        queue = list(runs)
        free = list(range(len(self.devices)))  # slot indices (a device may be listed twice, e.g. cpu, cpu)
        active: list[_Job] = []
        try:
            while queue or active:
                while queue and free:
                    active.append(self._start(queue.pop(0), free.pop(0), ctx))
                time.sleep(self.poll_s)
                for job in [j for j in active if j.proc.poll() is not None]:
                    active.remove(job)
                    free.append(job.slot)
                    yield self._finish(job)
        finally:  # interrupted: stop our workers; their runs stay unrecorded and are redone next time
            for job in active:
                with contextlib.suppress(Exception):
                    job.proc.terminate()
                    job.proc.wait(timeout=30)


def local_executor(devices: Sequence[str]) -> Inline | Processes:
    """One device: :class:`Inline`; several: :class:`Processes`."""
    devices = list(devices)
    return Inline(devices[0]) if len(devices) == 1 else Processes(devices)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process: execute the run given on stdin and write its record to ``--record``."""
    p = argparse.ArgumentParser(prog="python -m yolo_attn.executors.local")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="execute one run read from stdin (started by Processes)")
    w.add_argument("--out", required=True)
    w.add_argument("--device", required=True)
    w.add_argument("--record", required=True)
    a = p.parse_args(argv)
    job = json.loads(sys.stdin.read())
    run = Run.from_dict(job["run"])
    if run.key != job["key"]:
        raise SystemExit(f"run {job['key']} hashes to {run.key} here: its inputs changed since the plan was made")
    rec = execute(run, Path(a.out), a.device, Measure.of(job.get("settings")))
    record = Path(a.record)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(rec.to_dict(), default=str))
    os.replace(tmp, record)  # whole or absent: the executor never reads half a record
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
