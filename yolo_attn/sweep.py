"""Ablation runner: a plan of training runs -> a resumable, append-only results store.

A *run* is (model, data, training overrides, seed, optional pretrained weights). The model is either a model YAML /
Ultralytics name used as is (the baseline, or any YAML you name), or a base plus (block, position, args), turned into
a variant by :func:`yolo_attn.edit.make_variant` when the run starts (so an invalid block argument fails that run,
not the plan). Each run's definition is hashed (:attr:`Run.key`): model names, the content of model YAML files, block,
position, args, data, seed, overrides and the content of the pretrained file. Measurement settings (GFLOPs size,
benchmark batch) are not part of the key.

Store (``<out>/results.jsonl``): one JSON line per finished run, ``status`` ``"done"`` or ``"failed"`` (with
``error`` and ``traceback``). Lines are appended under an exclusive ``flock`` with a single ``write`` + ``fsync``; a
line torn by a crash mid-write is ignored on reading and fenced off by a newline before the next append. A run is
recorded only when it has finished, so:

- re-running the same command skips every key already in the store (``retry_failed=True`` redoes failed ones; the
  store is then compacted atomically to one record per key);
- a run that was interrupted (Ctrl-C, ``kill -9``, power) left no record and is redone;
- a run that raises is recorded as failed with its message and the sweep goes on.

``<out>/plan.json`` holds the plan (worker processes read it), ``<out>/running/<key>.json`` marks runs in progress
(informational; a stale marker from a killed sweep is simply overwritten), ``<out>/runs/`` holds Ultralytics' run
folders, ``<out>/models/`` the generated variant YAMLs and ``<out>/logs/`` the output of worker processes.

Devices: with one device runs execute one after the other in this process. With several (``devices=["0", "1"]``, or
``["cpu", "cpu"]``), each run executes in its own worker process, one run per device at a time; multi-GPU training
of a single run is Ultralytics' DDP (``device=0,1`` as one entry).

Examples:
    >>> from yolo_attn.sweep import make_plan, run_sweep
    >>> plan = make_plan("shapes.yaml", bases=["yolov8n.yaml"], blocks=["dat"], positions=["sppf_before"],
    ...                  seeds=[0], train={"epochs": 1, "imgsz": 64})
    >>> records = run_sweep(plan, "out/ablate")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Run",
    "ResultStore",
    "make_plan",
    "parse_overrides",
    "run_sweep",
    "execute",
    "versions",
    "run_demo",
    "STORE_NAME",
    "PLAN_NAME",
]

LOGGER = logging.getLogger("yolo_attn.sweep")
STORE_NAME = "results.jsonl"
PLAN_NAME = "plan.json"

#: Measurement settings used when a sweep does not give its own.
DEFAULT_SETTINGS = {
    "flops_imgsz": 640,  # GFLOPs (ours and Ultralytics') at this size; 640 is what papers and Ultralytics quote
    "bench_imgsz": None,  # latency / memory input size; None = the training imgsz
    "bench_batch": 8,  # the larger batch timed next to batch 1
    "bench_iters": 5,
    "bench_warmup": 2,
}


# --------------------------------------------------------------------------------------------------- helpers
def _file_sha(path: str | os.PathLike | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _model_dict(model: str) -> dict | None:
    """The model dict Ultralytics would build ``model`` from (file path or name such as ``yolov8n-dat.yaml``)."""
    try:
        from ultralytics.nn.tasks import yaml_model_load

        d = yaml_model_load(model)
    except Exception:
        return None
    d.pop("yaml_file", None)
    return d


def _model_sha(model: str) -> str | None:
    d = _model_dict(model)
    if d is None:
        return _file_sha(model)
    return hashlib.sha256(json.dumps(_jsonable(d), sort_keys=True).encode()).hexdigest()[:16]


def _abspath(p: str | None) -> str | None:
    """Absolute path for an existing file/folder; anything else (an Ultralytics name) unchanged."""
    if p is None:
        return None
    return str(Path(p).resolve()) if Path(p).exists() else str(p)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and v != v:
        return None
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return v.item()
    return v


def parse_overrides(items: Iterable[str]) -> dict:
    """Ultralytics-style ``key=value`` strings -> dict, values typed as the ``yolo`` CLI types them.

    Raises ``ValueError`` for a malformed item or a key Ultralytics does not know (with the closest keys).
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT, smart_value

    from yolo_attn.registry import closest

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"training override {item!r} is not key=value (e.g. epochs=3 imgsz=320)")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in DEFAULT_CFG_DICT:
            hint = closest(k, list(DEFAULT_CFG_DICT))
            raise ValueError(
                f"unknown training override {k!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
            )
        out[k] = smart_value(v.strip())
    return out


def versions() -> dict:
    """Versions of everything that can change a result."""
    import torch
    import ultralytics

    import yolo_attn

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "yolo_attn": yolo_attn.__version__,
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        out["thop"] = version("ultralytics-thop")
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# --------------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass
class Run:
    """One planned training run.

    Attributes:
        model: Base model: Ultralytics name (``yolov8n.yaml``) or YAML path. Trained as is when ``block`` is None.
        data: Dataset YAML.
        block: Family (``bot``/``dat``/``coat``) or registered block name to insert; None for a plain model run.
        position: Insertion point (see :data:`yolo_attn.edit.POSITIONS`).
        args: Extra block arguments after ``c2``.
        seed: Training seed (Ultralytics ``seed=``).
        train: Training overrides passed to ``model.train(**train)``.
        pretrained: Weights transferred into the model before training (through the variant's index map).
        baseline: This run is the reference the report compares variants of the same base against.
        name: Readable label (derived when empty).
    """

    model: str
    data: str
    block: str | None = None
    position: str | None = None
    args: list = dataclasses.field(default_factory=list)
    seed: int = 0
    train: dict = dataclasses.field(default_factory=dict)
    pretrained: str | None = None
    baseline: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.args = list(self.args or [])
        self.train = dict(self.train or {})
        for k in ("seed", "data", "pretrained"):
            if k in self.train:
                raise ValueError(f"give {k!r} as a Run field, not as a training override")
        if (self.block is None) != (self.position is None):
            raise ValueError(f"block and position go together (got block={self.block!r}, position={self.position!r})")
        if not self.name:
            self.name = self.label()

    def label(self) -> str:
        stem = Path(str(self.model)).stem
        if self.block is None:
            return stem
        from yolo_attn.edit import variant_name

        name = variant_name(Path(str(self.model)).name, self.block, self.position)
        if self.args:
            name += "[" + ",".join(str(a) for a in self.args) + "]"
        return name

    def definition(self) -> dict:
        """What the key hashes: everything that changes the trained model (not its name, not the measurements)."""
        return {
            "model": str(self.model),
            "model_sha": _model_sha(self.model),  # content, not name: editing a YAML makes a new run
            "block": self.block,
            "position": self.position,
            "args": _jsonable(self.args),
            "data": str(self.data),
            "seed": int(self.seed),
            "train": _jsonable(dict(sorted(self.train.items()))),
            "pretrained": self.pretrained,
            "pretrained_sha": _file_sha(self.pretrained),
        }

    @property
    def key(self) -> str:
        blob = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping) -> Run:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def make_plan(
    data: str,
    bases: Sequence[str] = ("yolov8n.yaml",),
    blocks: Sequence[str] = ("bot", "dat", "coat"),
    positions: Sequence[str] = ("sppf_before",),
    seeds: Sequence[int] = (0,),
    train: Mapping | None = None,
    pretrained: str | None = None,
    baseline: bool = True,
    block_args: Mapping[str, Sequence] | None = None,
    models: Sequence[str] = (),
) -> list[Run]:
    """bases x (baseline + blocks x positions) x seeds, in that order (a seed's runs together), plus ``models``.

    Args:
        data: Dataset YAML (made absolute when it exists).
        bases: Base models (Ultralytics names or YAML paths).
        blocks: Families or registered block names.
        positions: Insertion points.
        seeds: One run of everything per seed.
        train: Ultralytics training overrides (``{"epochs": 3, "imgsz": 320}``).
        pretrained: Checkpoint transferred into every run (``yolov8n.pt``), baseline included.
        baseline: Include each base trained as is (the report's reference).
        block_args: Extra block arguments per block name (``{"dat": [8]}``).
        models: Extra model YAMLs trained as they are (no insertion). With no ``bases``, the first of them is the
            baseline (when ``baseline`` is true).
    """
    data = _abspath(data)
    pretrained = _abspath(pretrained)
    train = dict(train or {})
    block_args = dict(block_args or {})
    plan = []
    for seed in seeds:
        for base in bases:
            base = _abspath(base)
            if baseline:
                plan.append(Run(base, data, seed=seed, train=train, pretrained=pretrained, baseline=True))
            for block in blocks:
                for pos in positions:
                    args = list(block_args.get(block, []))
                    plan.append(Run(base, data, block, pos, args, seed=seed, train=train, pretrained=pretrained))
        for j, m in enumerate(models):
            is_base = baseline and not bases and j == 0
            plan.append(Run(_abspath(m), data, seed=seed, train=train, pretrained=pretrained, baseline=is_base))
    keys = [r.key for r in plan]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        names = sorted({r.name for r in plan if r.key in dup})
        raise ValueError(f"the plan holds the same run twice: {', '.join(names)}")
    return plan


# --------------------------------------------------------------------------------------------------- store
class ResultStore:
    """Append-only JSONL results store, safe for several processes appending at once (POSIX ``flock``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.bad_lines = 0

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lf:
            try:
                import fcntl

                fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows: single writer assumed
                pass
            yield

    def append(self, record: Mapping) -> None:
        """Write one record as one line: a single ``write`` on an ``O_APPEND`` descriptor, then ``fsync``."""
        line = json.dumps(_jsonable(record), sort_keys=False, default=str) + "\n"
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size:  # a torn last line (killed mid-write) must not swallow this record
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            line = "\n" + line
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def lines(self) -> list[dict]:
        """Every well-formed record in file order (torn or foreign lines are counted in ``bad_lines``)."""
        self.bad_lines = 0
        if not self.path.is_file():
            return []
        out = []
        for raw in self.path.read_text().splitlines():
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                self.bad_lines += 1
                continue
            if isinstance(rec, dict) and "key" in rec:
                out.append(rec)
            else:
                self.bad_lines += 1
        return out

    def records(self) -> dict[str, dict]:
        """The latest record per run key."""
        return {r["key"]: r for r in self.lines()}

    def compact(self) -> None:
        """Rewrite the store with one (the latest) record per key, atomically (temp file + ``os.replace``)."""
        with self._locked():
            recs = list(self.records().values())
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                for r in recs:
                    f.write(json.dumps(r, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------------------- one run
def _metrics(metrics: Any, trainer: Any) -> dict:
    out = {}
    box = getattr(metrics, "box", None)
    if box is not None:
        out.update(map50=float(box.map50), map50_95=float(box.map), precision=float(box.mp), recall=float(box.mr))
        out["fitness"] = float(getattr(metrics, "fitness", float("nan")))
    else:  # DDP: metrics come back through the trainer's last validation
        m = getattr(trainer, "metrics", {}) or {}
        out.update(map50=m.get("metrics/mAP50(B)"), map50_95=m.get("metrics/mAP50-95(B)"))
        out.update(precision=m.get("metrics/precision(B)"), recall=m.get("metrics/recall(B)"))
    return out


def _blocks_in(d: Mapping) -> dict:
    """Block names and family of the registered blocks a hand-written model YAML uses (no ``yolo_attn`` record)."""
    from yolo_attn import registry

    fam = {sp.name: sp.family for sp in registry.specs() if sp.family}
    names = [r[2] for r in [*(d.get("backbone") or []), *(d.get("head") or [])] if len(r) > 2 and r[2] in fam]
    names = list(dict.fromkeys(names))
    return {"block": "+".join(names), "family": fam[names[0]]} if names else {}


def _variant_yaml(run: Run, out: Path) -> tuple[str, dict]:
    from yolo_attn.edit import make_variant, save_variant

    d = make_variant(run.model, run.block, run.position, run.args)
    # Ultralytics reads the scale from the file name ("yolov8n-..." -> n) and first tries the name with the scale
    # letter removed ("yolov8-dat-sppf_before.yaml"), which yolo_attn's packaged cfg/ would answer with a different
    # model; the key suffix keeps that lookup from matching anything.
    path = out / "models" / f"{run.name}-{run.key[:8]}.yaml"
    save_variant(d, path)
    return str(path), d["yolo_attn"]


def _measure(net: Any, rec: dict, settings: Mapping, device: str) -> None:
    """Both GFLOPs figures, then latency / peak memory of the BN-fused model, into ``rec``."""
    from yolo_attn.bench import bench_model, resolve_device
    from yolo_attn.flops import model_flops

    fl = model_flops(net, settings["flops_imgsz"], device="cpu")
    rec.update(gflops=fl["gflops"], gflops_ultralytics=fl["gflops_ultralytics"], gflops_imgsz=settings["flops_imgsz"])
    rec["gflops_by_op"] = fl["gflops_by_op"]
    fused = net
    if hasattr(net, "fuse"):
        try:
            fused = net.fuse(verbose=False)
        except Exception as e:  # latency of the unfused model is still a figure; say so
            rec["fuse_error"] = f"{type(e).__name__}: {e}"
    rec.update(
        bench_model(
            fused,
            settings["bench_imgsz"] or rec["imgsz"],
            batches=sorted({1, int(settings["bench_batch"])}),
            device=resolve_device(str(device).split(",")[0] or "cpu"),
            warmup=settings["bench_warmup"],
            iters=settings["bench_iters"],
        )
    )
    rec["bench_batch"] = settings["bench_batch"]


def execute(run: Run, out: str | os.PathLike, device: str = "cpu", settings: Mapping | None = None) -> dict:
    """Train and measure one run; never raises for a failure of the run itself (the record says ``failed``)."""
    import torch

    out = Path(out)
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    t0 = time.time()
    rec: dict[str, Any] = {
        "key": run.key,
        "name": run.name,
        "status": "running",
        "baseline": run.baseline,
        "base": Path(str(run.model)).name,
        "model": str(run.model),
        "block": run.block,
        "family": run.block.lower() if run.block and run.block.lower() in ("bot", "dat", "coat") else None,
        "position": run.position,
        "args": run.args,
        "seed": run.seed,
        "data": run.data,
        "train": run.train,
        "pretrained": run.pretrained,
        "device": str(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pid": os.getpid(),
        "versions": versions(),
    }
    try:
        from ultralytics import YOLO

        import yolo_attn

        yolo_attn.register()
        model_path = str(run.model)
        if run.block is not None:
            model_path, record = _variant_yaml(run, out)
            rec.update(family=record.get("family"), block=record.get("block"), inserted=record.get("inserted"))
        else:  # a YAML named directly may itself be a generated variant: report its block and position
            d = _model_dict(model_path) or {}
            record = d.get("yolo_attn") or _blocks_in(d)
            rec.update({k: record[k] for k in ("block", "family", "position", "inserted") if record.get(k)})
        rec["model_yaml"] = model_path
        if run.pretrained:
            from yolo_attn.transfer import transfer

            rep = transfer(YOLO(model_path).model, run.pretrained, verbose=False)
            rec["transfer"] = {"transferred": rep.n_transferred, "new": rep.n_new, "skipped": rep.n_skipped}
        model = YOLO(model_path)
        train = {"plots": False, **run.train}
        t_train = time.time()
        metrics = model.train(
            data=run.data,
            seed=run.seed,
            device=device,
            project=str((out / "runs").resolve()),
            name=f"{run.name}-{run.key[:8]}",
            exist_ok=True,
            pretrained=run.pretrained or False,
            **train,
        )
        rec["train_s"] = time.time() - t_train
        rec.update(_metrics(metrics, model.trainer))
        rec["save_dir"] = str(getattr(model.trainer, "save_dir", ""))
        rec["epochs"] = getattr(model.trainer, "epochs", run.train.get("epochs"))
        imgsz = getattr(model.trainer.args, "imgsz", run.train.get("imgsz", 640))
        rec["imgsz"] = int(max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz)

        net = copy.deepcopy(model.model).float().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        rec["params"] = sum(p.numel() for p in net.parameters())
        rec["status"] = "done"  # trained and validated; a measurement failure below is recorded, not fatal
        try:
            _measure(net, rec, settings, device)
        except Exception as e:
            rec["measure_error"] = f"{type(e).__name__}: {e}"

    except Exception as e:  # the run failed; the sweep goes on
        rec["status"] = "failed"
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc()[-4000:]
    finally:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    rec["wall_s"] = time.time() - t0
    rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return rec


# --------------------------------------------------------------------------------------------------- the sweep
def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Progress:
    """Index / total / ETA lines, printed through Ultralytics' LOGGER between its training output."""

    def __init__(self, total: int, workers: int, prior_durations: list[float]):
        self.total, self.workers = total, max(workers, 1)
        self.durations: list[float] = []
        self.prior = prior_durations

    def eta(self, remaining: int) -> str:
        ds = self.durations or self.prior
        if not ds or remaining <= 0:
            return "?" if remaining > 0 else "0m00s"
        return _fmt_s(sum(ds) / len(ds) * remaining / self.workers)

    def say(self, msg: str) -> None:
        from ultralytics.utils import LOGGER as UL  # has a handler and honours YOLO_VERBOSE, like the training lines

        UL.info(msg)


def _save_plan(out: Path, plan: Sequence[Run], settings: Mapping) -> None:
    out.mkdir(parents=True, exist_ok=True)
    blob = {"settings": dict(settings), "runs": [{"key": r.key, **r.to_dict()} for r in plan]}
    tmp = out / (PLAN_NAME + ".tmp")
    tmp.write_text(json.dumps(blob, indent=1))
    os.replace(tmp, out / PLAN_NAME)


def _mark(out: Path, run: Run, device: str) -> Path:
    d = out / "running"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{run.key}.json"
    p.write_text(json.dumps({"key": run.key, "name": run.name, "device": device, "pid": os.getpid(), "t": time.time()}))
    return p


def run_sweep(
    plan: Sequence[Run],
    out: str | os.PathLike,
    devices: Sequence[str] | str | None = None,
    retry_failed: bool = False,
    settings: Mapping | None = None,
    max_runs: int | None = None,
) -> list[dict]:
    """Execute every run of ``plan`` that has no record in ``<out>/results.jsonl`` yet; return the plan's records.

    Args:
        plan: Runs, e.g. from :func:`make_plan`.
        out: Output folder (store, plan, Ultralytics runs, variant YAMLs, logs).
        devices: ``"cpu"``, ``"0"``, ``["0", "1"]`` or ``"0;1"``. Several entries: one run per device at a time,
            each in its own worker process. Default: ``"cpu"``, or ``"0"`` when CUDA is present.
        retry_failed: Redo runs recorded as failed (the store keeps only the newest record per run).
        settings: Measurement settings (see :data:`DEFAULT_SETTINGS`).
        max_runs: Execute at most this many runs in this call (the rest stay pending for the next call).

    Returns:
        The store's record for each planned run that has one, in plan order.
    """
    out = Path(out)
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    if devices is None:
        import torch

        devices = ["0" if torch.cuda.is_available() else "cpu"]
    elif isinstance(devices, str):
        devices = [d.strip() for d in re.split(r"[;\s]+", devices) if d.strip()]
    store = ResultStore(out / STORE_NAME)
    _save_plan(out, plan, settings)
    have = store.records()
    if store.bad_lines:
        LOGGER.warning("%s: ignored %d torn/unreadable line(s)", store.path, store.bad_lines)
    pending = []
    total = len(plan)
    prior = [r.get("wall_s", 0.0) for r in have.values() if r.get("status") == "done"]
    prog = _Progress(total, len(devices), prior)
    for i, run in enumerate(plan, 1):
        r = have.get(run.key)
        if r is not None and (r.get("status") == "done" or (r.get("status") == "failed" and not retry_failed)):
            prog.say(f"[{i}/{total}] {run.name} (seed {run.seed}): {r['status']} earlier, skipped")
            continue
        pending.append((i, run))
    if max_runs is not None:
        pending = pending[:max_runs]
    if not pending:
        prog.say(f"sweep {out}: all {total} runs have records")
    else:
        prog.say(f"sweep {out}: {len(pending)} of {total} runs to execute on {', '.join(devices)}")
        if len(devices) == 1:
            _run_inline(pending, out, devices[0], settings, store, prog)
        else:
            _run_workers(pending, out, devices, settings, store, prog)
    recs = store.records()
    if len(store.lines()) != len(recs):
        store.compact()
    return [recs[r.key] for r in plan if r.key in recs]


def _done_line(i: int, total: int, rec: Mapping, prog: _Progress, remaining: int) -> str:
    if rec.get("status") == "done":
        what = f"done in {_fmt_s(rec.get('wall_s', 0))}: mAP50-95 {rec.get('map50_95', float('nan')):.4f}, " + (
            f"{rec.get('gflops', float('nan')):.2f} GFLOPs"
        )
    else:
        what = f"FAILED after {_fmt_s(rec.get('wall_s', 0))}: {rec.get('error', '?')}"
    return (
        f"[{i}/{total}] {rec.get('name')} (seed {rec.get('seed')}) {what} | {remaining} left, ETA {prog.eta(remaining)}"
    )


def _run_inline(pending, out: Path, device: str, settings, store: ResultStore, prog: _Progress) -> None:
    for n, (i, run) in enumerate(pending):
        remaining = len(pending) - n
        prog.say(f"[{i}/{prog.total}] {run.name} (seed {run.seed}) on {device} | ETA {prog.eta(remaining)}")
        marker = _mark(out, run, device)
        rec = execute(run, out, device, settings)
        store.append(rec)
        marker.unlink(missing_ok=True)
        prog.durations.append(rec["wall_s"])
        prog.say(_done_line(i, prog.total, rec, prog, remaining - 1))


def _run_workers(pending, out: Path, devices: Sequence[str], settings, store: ResultStore, prog: _Progress) -> None:
    """One worker process per run, at most one per device at a time; a worker that dies unrecorded is recorded."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    queue = list(pending)
    free = list(range(len(devices)))  # slot indices (a device may be listed twice, e.g. cpu,cpu)
    active: dict[int, tuple] = {}  # slot -> (proc, i, run, t0, log file)
    left = len(queue)
    try:
        while queue or active:
            while queue and free:
                slot = free.pop(0)
                i, run = queue.pop(0)
                dev = devices[slot]
                prog.say(f"[{i}/{prog.total}] {run.name} (seed {run.seed}) on {dev} | ETA {prog.eta(left)}")
                _mark(out, run, dev)
                log = open(out / "logs" / f"{run.name}-{run.key[:8]}.log", "w")
                cmd = [sys.executable, "-m", "yolo_attn.sweep", "worker", str(out), run.key, dev]
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_worker_env())
                active[slot] = (proc, i, run, time.time(), log)
            time.sleep(0.5)
            for slot, (proc, i, run, t0, log) in list(active.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del active[slot]
                free.append(slot)
                left -= 1
                rec = store.records().get(run.key)
                if rec is None or rec.get("finished") is None or rec.get("pid") != proc.pid:
                    tail = Path(log.name).read_text()[-2000:] if Path(log.name).is_file() else ""
                    rec = {
                        "key": run.key,
                        "name": run.name,
                        "status": "failed",
                        "baseline": run.baseline,
                        "base": Path(str(run.model)).name,
                        "block": run.block,
                        "position": run.position,
                        "seed": run.seed,
                        "device": devices[slot],
                        "error": f"worker process exited with code {proc.returncode} without a record",
                        "traceback": tail,
                        "wall_s": time.time() - t0,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }
                    store.append(rec)
                (out / "running" / f"{run.key}.json").unlink(missing_ok=True)
                prog.durations.append(rec.get("wall_s", time.time() - t0))
                prog.say(_done_line(i, prog.total, rec, prog, left))
    finally:  # interrupted: stop our workers, their runs stay unrecorded and are redone next time
        for proc, *_rest in active.values():
            with contextlib.suppress(Exception):
                proc.terminate()
                proc.wait(timeout=30)


def _worker_env() -> dict:
    """Workers must import this very yolo_attn, installed or not (a fresh clone run through scripts/)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _worker(out: str, key: str, device: str) -> int:
    """Entry point of a worker process: execute one run of ``<out>/plan.json`` and append its record."""
    out_p = Path(out)
    blob = json.loads((out_p / PLAN_NAME).read_text())
    runs = {r["key"]: r for r in blob["runs"]}
    run = Run.from_dict(runs[key])
    if run.key != key:
        raise SystemExit(f"plan entry {key} hashes to {run.key}: inputs changed since the plan was written")
    rec = execute(run, out_p, device, blob.get("settings"))
    ResultStore(out_p / STORE_NAME).append(rec)
    return 0


# --------------------------------------------------------------------------------------------------- the demo
#: The README main job's defaults, sized to finish in under 10 minutes on 2 CPU cores (about 1 CPU-minute of training
#: per model). Mosaic is off: at 64 px a 2x2 mosaic shrinks the shapes to a few pixels for all but the last
#: ``close_mosaic`` epochs, and from scratch in 30 epochs whether a run learned at all then became a matter of the
#: initialisation (yolov8n at seed 0: mAP50-95 0.09, one warm-up setting later 0.004; attention variants 0.003-0.09
#: with a changed init order alone). Without mosaic, yolov8n at seeds 0/1/2 reached 0.149/0.157/0.194 and every
#: variant learned, so the table compares blocks rather than luck. SGD at lr0=0.02 without warm-up; no per-epoch
#: validation (the final one is kept). One seed by default (``--seeds 0 1 2`` for spread, about 3x the time).
DEMO = {"epochs": 30, "imgsz": 64, "n_train": 256, "n_val": 32, "position": "sppf_before"}
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
    """Baseline + the three default variants (``cfg/yolov8-{bot,dat,coat}.yaml``) at scale n, when they exist."""
    from yolo_attn.integration import cfg_dir

    fams = ("bot", "dat", "coat")
    if all((cfg_dir() / f"yolov8-{f}.yaml").is_file() for f in fams):
        # "yolov8n-bot.yaml": Ultralytics takes scale n from the name and finds the packaged yolov8-bot.yaml
        return ["yolov8n.yaml", *(f"yolov8n-{f}.yaml" for f in fams)]
    return []


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
    """The project's main job: generated data -> baseline + BoT/DAT/CoAt variants -> ``<out>/report.md`` (+ CSV, PNGs).

    Everything runs offline: the dataset is generated (:func:`yolo_attn.data.make_shapes_dataset`), models are built
    from YAML (random init). Resumable like any sweep: re-running keeps finished runs.
    """
    from yolo_attn.data import make_shapes_dataset
    from yolo_attn.report import write_report

    cfg = {**DEMO, **{k: v for k, v in dict(epochs=epochs, imgsz=imgsz, n_train=n_train, n_val=n_val).items() if v}}
    out = Path(out)
    data = make_shapes_dataset(
        out / "data" / "shapes", n_train=cfg["n_train"], n_val=cfg["n_val"], imgsz=cfg["imgsz"], seed=0
    )
    train = {"epochs": cfg["epochs"], "imgsz": cfg["imgsz"], **DEMO_TRAIN}
    models = demo_models()
    if models:
        plan = make_plan(str(data), bases=[], blocks=[], models=models, train=train, seeds=seeds)
    else:  # default variants not generated yet: insert each family at the demo position
        plan = make_plan(str(data), bases=["yolov8n.yaml"], positions=[cfg["position"]], train=train, seeds=seeds)
    meas = {"flops_imgsz": 640, "bench_imgsz": cfg["imgsz"], "bench_batch": 8, "bench_iters": 5, "bench_warmup": 2}
    run_sweep(plan, out, devices=devices or "cpu", settings={**meas, **(settings or {})})
    return write_report(out, out=out, title="yolo_attn demo: YOLOv8n vs BoT / DAT / CoAt on generated shapes (CPU)")


if __name__ == "__main__":  # python -m yolo_attn.sweep worker <out> <key> <device>
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        sys.exit(_worker(*sys.argv[2:]))
    sys.exit("usage: python -m yolo_attn.sweep worker <out> <key> <device> (use `yolo-attn ablate` for sweeps)")
