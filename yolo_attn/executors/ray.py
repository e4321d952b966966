"""Runs as Ray tasks on a cluster; the driver (:func:`yolo_attn.executors.run_sweep`) keeps the store on its machine.

:class:`RayExecutor` submits every pending run as one Ray task with the resources asked for (``cpus_per_run``,
``gpus_per_run``). A task executes its run in a temporary folder on its node and returns the record and the run's
files: everything :func:`yolo_attn.execute.execute` leaves under the sweep folder for that run (Ultralytics' run folder
with ``results.csv`` and ``args.yaml``, ``models/<variant>.yaml``, ``artifacts/<key>/``) and its log
(``logs/<name>-<key8>.log``, as the local worker processes write it), but not the weights unless asked for
(``weights=True``: ``best.pt``). The executor writes them under the sweep folder where the local executors put them
and points the record's paths there, so results need no shared filesystem. The dataset does: every node must see it
at the driver's path (datasets are not shipped).

Faults: a worker process or node that dies mid-run makes Ray start the run again, at most ``retries`` times; after
that the run's record is ``failed`` with the reason and the sweep goes on. A task that raises (a node whose inputs
differ from the driver's) is not retried: it is a failed record at once. Closing the executor (Ctrl-C in the driver)
cancels every task that has not returned, killing the running ones: those runs have no record, so the next sweep
redoes them.

Before the first run, one probe per node that can hold a run checks that the node imports yolo_attn at the driver's
version and with the driver's sources (by digest: a checkout edited since the release has the same version), and
sees every dataset, model and weights path of the plan; otherwise :class:`RayEnvironmentError` names each node and
what it lacks, and nothing trains. A node that joins later is checked by the task itself. Two ways to pass: the same
installation (image, virtual environment) on every node, or ``ship_package=True``, which ships the driver's yolo_attn
to the nodes through Ray's ``runtime_env`` (``py_modules``); the rest of the stack (torch, Ultralytics) must be on
the nodes either way.

Examples:
    >>> from yolo_attn.executors.ray import RayExecutor
    >>> ex = RayExecutor("auto", cpus_per_run=4, gpus_per_run=0)  # connects when first used, not here
    >>> ex.device, ex.threads
    ('cpu', 4)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_attn.execute import failed_record
from yolo_attn.executors.base import Context
from yolo_attn.plan import Run
from yolo_attn.store import RunRecord

__all__ = ["RayEnvironmentError", "RayExecutor", "source_digest"]

LOGGER = logging.getLogger(__name__)


class RayEnvironmentError(RuntimeError):
    """A node of the Ray cluster cannot execute this sweep; the message names each node and what it lacks."""


def source_digest() -> str:
    """16 hex digits of the SHA-256 of yolo_attn's Python sources (names and contents).

    Same version *and* same code: a checkout edited since its release keeps ``__version__``. Model YAMLs are not in
    it: a run's key covers the YAML it trains.
    """
    import yolo_attn

    root = Path(yolo_attn.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- on the nodes
def _probe(paths: list[str], want: dict) -> dict:
    """What a node lacks. Sent by value (see :meth:`RayExecutor.check`), so it runs where yolo_attn is missing."""
    import importlib
    import socket

    found: dict = {"host": socket.gethostname(), "missing": [], "warnings": []}
    try:
        have = importlib.import_module("yolo_attn").__version__
        digest = source_digest()
    except Exception as e:
        found["missing"].append(f"yolo_attn {want['yolo_attn']} ({type(e).__name__}: {e})")
    else:
        if have != want["yolo_attn"]:
            found["missing"].append(f"yolo_attn {want['yolo_attn']} (the node has {have})")
        elif digest != want["digest"]:
            found["missing"].append(
                f"yolo_attn {have} with the driver's sources (source digest {digest} here, {want['digest']} on the driver)"
            )
    for dist in ("torch", "ultralytics"):  # the module's own version, as the driver's versions() reads it
        try:
            v = str(importlib.import_module(dist).__version__)
        except Exception:
            found["missing"].append(dist)
            continue
        if v != want.get(dist):  # a result may differ; the record's versions say which ran where
            found["warnings"].append(f"{dist} {v} (driver: {want.get(dist)})")
    found["missing"] += [f"{p} (not found)" for p in paths if not os.path.exists(p)]
    return found


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr, Python and C level, into ``path`` (the run's log, as local workers write)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _keep(rel: Path, weights: bool) -> bool:
    """Which of a run's files travel back to the driver: all but the weights (``best.pt`` when asked)."""
    if rel.suffix == ".pt":
        return weights and rel.name == "best.pt"
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def _run_folder(key: str) -> Iterator[Path]:
    """A fresh folder for one run on this node, removed afterwards.

    A worker killed mid-run cannot remove its folder, so each task first removes those of workers no longer alive.
    """
    base = Path(tempfile.gettempdir()) / "yolo_attn-ray"
    work = base / f"{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for old in base.iterdir():
        pid = old.name.rpartition("-")[2]
        if old != work and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):  # others' runs still in it
            base.rmdir()


def _task(run_d: dict, key: str, device: str, threads: int, settings: dict, want: dict, weights: bool, events: Any):
    """One run on a node: check the node, say it started, execute in a temporary folder, return record + files."""
    import ray

    import yolo_attn
    from yolo_attn.execute import execute
    from yolo_attn.integration import cpu_threads

    where = f"{ray.util.get_node_ip_address()}:{device}"
    if yolo_attn.__version__ != want["yolo_attn"] or source_digest() != want["digest"]:  # a node that joined late
        raise RuntimeError(
            f"node {where} has yolo_attn {yolo_attn.__version__} (sources {source_digest()}), the driver "
            f"{want['yolo_attn']} ({want['digest']})"
        )
    run = Run.from_dict(run_d)
    if run.key != key:
        raise RuntimeError(
            f"run {run.name} hashes to {run.key} on node {where}, {key} on the driver: its inputs differ"
        )
    # synchronous, so that the driver hears of the start before it can see the result
    ray.get(events.started.remote(key, where))
    with _run_folder(key) as work:
        log = work / "logs" / f"{run.name}-{run.key[:8]}.log"
        log.parent.mkdir()
        with _output_to(log), cpu_threads(threads):
            rec = execute(run, work, device, settings)
        files = {}
        for p in sorted(work.rglob("*")):
            rel = p.relative_to(work)
            if p.is_file() and _keep(rel, weights):
                files[rel.as_posix()] = p.read_bytes()
    return {"record": rec, "files": files, "workdir": [str(work), str(work.resolve())]}


def _events_actor() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Events:
        """Tasks report their start here and the driver drains it (Ray has no start callback of its own)."""

        def __init__(self) -> None:
            self.items: list[tuple[str, str]] = []

        def started(self, key: str, where: str) -> None:
            self.items.append((key, where))

        def drain(self) -> list[tuple[str, str]]:
            items, self.items = self.items, []
            return items

    return Events


def _relocate(v: Any, old: Sequence[str], new: str) -> Any:
    """``v`` with every string under one of the ``old`` folders moved under ``new`` (lists and dicts walked)."""
    if isinstance(v, str):
        for o in old:
            if v == o or v.startswith(o + os.sep):
                return new + v[len(o) :]
        return v
    if isinstance(v, list):
        return [_relocate(x, old, new) for x in v]
    if isinstance(v, dict):
        return {k: _relocate(x, old, new) for k, x in v.items()}
    return v


def _stage_package(into: Path) -> str:
    """A copy of this yolo_attn (sources and model YAMLs) for ``runtime_env={"py_modules": [...]}``."""
    import yolo_attn
    from yolo_attn.integration import cfg_dir

    src = Path(yolo_attn.__file__).resolve().parent
    dst = into / "yolo_attn"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (dst / "cfg").is_dir():  # a source checkout keeps cfg/ beside the package; the wheel has it inside
        shutil.copytree(cfg_dir(), dst / "cfg")
    return str(dst)


# --------------------------------------------------------------------------------------------------- on the driver
@dataclass
class RayExecutor:
    """Execute runs as Ray tasks (see the module docstring).

    Attributes:
        address: Ray address: ``"auto"`` or ``"host:6379"`` (a cluster this machine belongs to), ``"ray://host:10001"``
            (Ray Client), or None: ``ray.init()``'s own discovery (``RAY_ADDRESS``, a cluster started on this machine
            with ``ray start``, else a new local instance that ends with the sweep).
        cpus_per_run: CPUs Ray reserves for each run; CPU training uses that many torch threads.
        gpus_per_run: GPUs per run; None: 1 when the cluster has GPUs, else 0. A run gets ``device="0"`` (``"0,1"``
            for 2: Ultralytics' DDP inside the task), the GPUs Ray assigned it; a fraction shares a GPU.
        retries: How many times Ray starts a run again whose worker process or node died.
        weights: Bring each run's ``best.pt`` back too (else only the files the report reads).
        ship_package: Send the driver's yolo_attn to the nodes (``runtime_env`` ``py_modules``).
        runtime_env: Ray ``runtime_env`` of the job (``env_vars``, ``py_modules``...); needs this executor to connect.
        init: More ``ray.init`` arguments (``num_cpus``, ``object_store_memory``... for a local instance).
        check_timeout_s: How long a node may take to answer the environment check.
    """

    address: str | None = None
    cpus_per_run: float = 1
    gpus_per_run: float | None = None
    retries: int = 2
    weights: bool = False
    ship_package: bool = False
    runtime_env: Mapping | None = None
    init: Mapping = field(default_factory=dict)
    check_timeout_s: float = 600.0
    _owns_ray: bool = field(default=False, init=False, repr=False)
    _slots: int | None = field(default=None, init=False, repr=False)
    _stage: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cpus_per_run < 0 or (self.gpus_per_run is not None and self.gpus_per_run < 0):
            raise ValueError(
                f"cpus_per_run and gpus_per_run must be >= 0, got {self.cpus_per_run} and {self.gpus_per_run}"
            )
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    # -- connection
    def connect(self) -> None:
        """Connect to (or start) Ray once; resolve ``gpus_per_run``."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a sweep must not try to phone home (offline nodes)
        try:
            import ray
        except ImportError as e:
            raise ImportError(f"the Ray executor needs Ray: pip install 'yolo-attn[ray]' ({e})") from e
        if self._owns_ray and ray.is_initialized():
            return
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING, **self.init}
            # job level: Ray uploads local py_modules only for the job (ray.init), not for single tasks
            ray.init(address=self.address or None, runtime_env=self._runtime_env(), **kw)
            self._owns_ray = True
        elif self.runtime_env or self.ship_package:
            raise ValueError(
                "runtime_env and ship_package apply to the whole Ray job: connect with this executor (no ray.init "
                "before it), or give runtime_env to your own ray.init"
            )
        if self.gpus_per_run is None:
            self.gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) else 0

    def close(self) -> None:
        """Disconnect from Ray when this executor connected (a local instance it started stops with it)."""
        import ray

        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        if self._stage:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    def _nodes(self) -> list[dict]:
        """Alive nodes big enough for one run."""
        import ray

        c, g = self.cpus_per_run, self.gpus_per_run or 0
        return [
            n
            for n in ray.nodes()
            if n["Alive"] and n["Resources"].get("CPU", 0) >= c and n["Resources"].get("GPU", 0) >= g
        ]

    @property
    def slots(self) -> int:
        """Runs the cluster's alive nodes hold at once (connects on first use)."""
        if self._slots is None:
            self.connect()
            per = []
            for n in self._nodes():
                r = n["Resources"]
                k = [int(r.get("CPU", 0) // self.cpus_per_run)] if self.cpus_per_run else []
                k += [int(r.get("GPU", 0) // self.gpus_per_run)] if self.gpus_per_run else []
                per.append(min(k) if k else 1)
            self._slots = max(sum(per), 1)
        return self._slots

    @property
    def where(self) -> str:
        return f"Ray ({self.slots} at a time, {self.cpus_per_run:g} CPU + {self.gpus_per_run or 0:g} GPU per run)"

    @property
    def device(self) -> str:
        """The Ultralytics device of a run: Ray sets ``CUDA_VISIBLE_DEVICES`` to its GPUs, so they are 0..n-1."""
        g = self.gpus_per_run or 0
        return ",".join(str(i) for i in range(max(1, int(g)))) if g > 0 else "cpu"

    @property
    def threads(self) -> int:
        """torch CPU threads of a run: its CPUs (Ultralytics would take min(8, the machine's CPUs - 1))."""
        return max(1, int(self.cpus_per_run))

    def _runtime_env(self) -> dict | None:
        env = dict(self.runtime_env or {})
        if self.ship_package:
            if self._stage is None:
                self._stage = tempfile.mkdtemp(prefix="yolo_attn-ship-")
                _stage_package(Path(self._stage))
            env["py_modules"] = [*env.get("py_modules", []), str(Path(self._stage) / "yolo_attn")]
        return env or None

    # -- environment check
    @staticmethod
    def want() -> dict:
        """What every node must match: yolo_attn's version and source digest (torch / Ultralytics: warnings)."""
        from yolo_attn.execute import versions

        have = versions()
        return {
            "yolo_attn": have["yolo_attn"],
            "digest": source_digest(),
            "torch": have["torch"],
            "ultralytics": have["ultralytics"],
        }

    @staticmethod
    def paths(runs: Sequence[Run]) -> list[str]:
        """The absolute paths the runs read: dataset YAMLs and their ``path:`` folder, model YAMLs, weights."""
        import yaml

        out = set()
        for r in runs:
            for p in (r.data, r.model, r.pretrained):
                if p and os.path.isabs(str(p)):
                    out.add(str(p))
            if r.data and os.path.isabs(r.data) and os.path.isfile(r.data):
                with contextlib.suppress(Exception):
                    root = (yaml.safe_load(Path(r.data).read_text()) or {}).get("path")
                    if isinstance(root, str) and os.path.isabs(root):
                        out.add(root)
        return sorted(out)

    def check(self, runs: Sequence[Run]) -> list[dict]:
        """Probe each node that can hold a run; return what each found.

        Raises:
            RayEnvironmentError: A node lacks yolo_attn at the driver's version, a path of the plan, or answered not;
                or no node is big enough for one run.
        """
        import ray
        from ray import cloudpickle
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.connect()
        nodes = self._nodes()
        if not nodes:
            have = "; ".join(
                f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
                for n in ray.nodes()
                if n["Alive"]
            )
            raise RayEnvironmentError(
                f"no node of the Ray cluster has {self.cpus_per_run:g} CPU and {self.gpus_per_run or 0:g} GPU for one "
                f"run (nodes: {have or 'none'}); lower --cpus-per-run / --gpus-per-run"
            )
        paths, want = self.paths(runs), self.want()
        probe = ray.remote(_probe)
        # Ray pickles a function when first called: by value, so that a node without yolo_attn can run the probe
        module = sys.modules[__name__]
        cloudpickle.register_pickle_by_value(module)
        try:
            refs = [
                (
                    n,
                    probe.options(
                        num_cpus=0,
                        max_retries=0,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                    ).remote(paths, want),
                )
                for n in nodes
            ]
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        problems, found = [], []
        for n, ref in refs:
            name = f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})"
            try:
                res = ray.get(ref, timeout=self.check_timeout_s)
            except ray.exceptions.GetTimeoutError:
                problems.append(f"{name}: no answer in {self.check_timeout_s:g} s")
                continue
            except ray.exceptions.RayError as e:  # a runtime_env it cannot set up (pip offline), a worker crash
                last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                problems.append(f"{name}: {type(e).__name__}: {last[:300]}")
                continue
            found.append({"node": name, **res})
            if res["missing"]:
                problems.append(f"{name} [{res['host']}] lacks " + "; ".join(res["missing"]))
            for w in res["warnings"]:
                LOGGER.warning("%s [%s] has %s", name, res["host"], w)
        if problems:
            raise RayEnvironmentError(
                "the Ray cluster cannot execute this sweep:\n  " + "\n  ".join(problems) + "\nEvery node needs "
                "yolo_attn as the driver has it and the dataset at the same path: run the same image or virtual "
                "environment on every node, or ship yolo_attn with the sweep (--ray-ship-package); datasets are not "
                "shipped."
            )
        return found

    # -- the executor
    def __call__(self, runs: Sequence[Run], ctx: Context) -> Iterator[RunRecord]:
        import ray

        try:
            self.check(runs)
            want, settings = self.want(), ctx.settings.to_dict()
            events = _events_actor().remote()
            # A GPU run gets a fresh worker process (its CUDA context and cached memory go with it); CPU runs reuse
            # warm workers, as the inline executor reuses its process (no torch/Ultralytics import per run).
            task = ray.remote(max_calls=1 if self.gpus_per_run else 0)(_task)
            opts = {
                "num_cpus": self.cpus_per_run,
                "num_gpus": self.gpus_per_run or 0,
                "max_retries": self.retries,
                "retry_exceptions": False,  # a task raises only when its node is wrong: retrying will not help
            }
            pending: dict[Any, tuple[Run, float]] = {}
            for run in runs:
                ref = task.options(name=f"run:{run.name}-{run.key[:8]}", **opts).remote(
                    run.to_dict(), run.key, self.device, self.threads, settings, want, self.weights, events
                )
                pending[ref] = (run, time.time())
            by_key = {run.key: run for run, _ in pending.values()}
            done: set[str] = set()
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                    with contextlib.suppress(ray.exceptions.RayError):
                        for key, where in ray.get(events.drain.remote(), timeout=30):
                            if key not in done:  # a retried run says so again
                                ctx.started(by_key[key], where)
                    for ref in ready:
                        run, t0 = pending.pop(ref)
                        done.add(run.key)
                        yield self._collect(ref, run, t0, ctx.out)
            finally:  # closed early (Ctrl-C, an error in the driver): stop what has not returned
                self._cancel(list(pending))
                with contextlib.suppress(Exception):
                    ray.kill(events)
        finally:
            self.close()

    @staticmethod
    def _cancel(refs: list, wait_s: float = 30.0) -> list:
        """Cancel ``refs``, killing the workers of running ones; wait until Ray says they ended; return those left."""
        import ray

        t_end = time.time() + wait_s
        while refs and time.time() < t_end:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            # a cancelled task ends with TaskCancelledError (or with its result, when it had just finished)
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=min(5.0, max(t_end - time.time(), 0.1)))
        return refs

    def _collect(self, ref: Any, run: Run, t0: float, out: Path) -> RunRecord:
        """The record of a finished task, its files written under ``out``; a failed record when the task failed."""
        import ray

        try:
            res = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # raised in the task (its node's inputs differ): not retried
            cause = e.cause if e.cause is not None else e
            return failed_record(run, self.device, f"{type(cause).__name__}: {cause}", str(e)[-4000:], time.time() - t0)
        except ray.exceptions.RayError as e:  # worker or node lost after the retries, killed for memory...
            first = (str(e).strip().splitlines() or [""])[0]
            why = f"{type(e).__name__} (after {self.retries} retries): {first}"
            return failed_record(run, self.device, why, str(e)[-4000:], time.time() - t0)
        for rel, blob in res["files"].items():
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".part")
            tmp.write_bytes(blob)
            os.replace(tmp, dst)
        rec: RunRecord = res["record"]
        here = str(out.resolve())
        for f in rec.__dataclass_fields__:  # the node's temporary folder -> where its files are now
            setattr(rec, f, _relocate(getattr(rec, f), res["workdir"], here))
        return rec
