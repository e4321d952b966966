"""The run record (one finished training run, typed) and the append-only results store that holds them.

Store (``<folder>/results.jsonl``): one JSON line per finished run. Lines are appended under an exclusive ``flock``
with a single ``write`` + ``fsync``; a line torn by a crash mid-write is ignored on reading and fenced off by a newline
before the next append. The latest line of a key wins; :meth:`ResultStore.compact` rewrites the file atomically with
one line per key. Runs may leave files next to their record in ``<folder>/artifacts/<key>/``
(:meth:`ResultStore.artifacts_dir`), listed in :attr:`RunRecord.artifacts` (``matches``: the per-image matches of the
run's final validation, :class:`yolo_attn.stats.Matches`). :meth:`ResultStore.put_artifacts` is the one writer (each
file atomically, before the record is appended: a crash in between leaves files without a record, and the run is
redone); :func:`artifact_bytes` reads a record's files back as bytes, for an executor that ships them from a worker
machine to its driver.

Reading is tolerant: lines yolo_attn 0.1.0 wrote before its typed run record (flat ``latency_ms_b8`` keys, no
``schema``; ``tests/data/old-store`` is one, from commit 8ee2a92) load into the same
:class:`RunRecord`, and keys this version does not know are kept in :attr:`RunRecord.extra` and written back.

Examples:
    >>> import tempfile
    >>> store = ResultStore(tempfile.mkdtemp())
    >>> store.append(RunRecord("3899a45bd6eb1864", name="yolov8n", status="done", seed=0, latency_ms={1: 14.9}))
    >>> rec = store.records()["3899a45bd6eb1864"]
    >>> rec.name, rec.ok, rec.flat()["latency_ms_b1"]
    ('yolov8n', True, 14.9)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STORE_NAME", "SCHEMA", "RunRecord", "ResultStore", "artifact_bytes", "jsonable"]

STORE_NAME = "results.jsonl"
#: Version of the record layout written by :meth:`RunRecord.to_dict` (lines without one are version 1).
SCHEMA = 2

# Version 1 wrote one key per timed batch: latency_ms_b1, peak_mb_b8...
_PER_BATCH = re.compile(r"^(latency_ms|peak_mb)_b(\d+)$")


def jsonable(v: Any) -> Any:
    """``v`` with paths as strings, tuples as lists, NaN as None and numpy / torch scalars as Python numbers."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and v != v:
        return None
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return v.item()
    return v


@dataclass
class RunRecord:
    """What one run was and what it gave. Written by :func:`yolo_attn.execute.execute`, read by the report.

    Attributes:
        key: The run's key (:attr:`yolo_attn.plan.Run.key`): a hash of everything that changes the trained model.
        name: Readable label (``yolov8n-dat-sppf_before``).
        status: ``"done"`` (trained and validated) or ``"failed"`` (see ``error``); ``"running"`` only while built.
        baseline: The run is the reference the report compares runs of the same base and seed against.
        base: File name of the model or base model (``yolov8n.yaml``).
        model: The run's model as given (name or path).
        block: Registered block inserted or used (``DATBlock``; ``"A+B"`` for a YAML using several).
        family: The block's family (``dat``).
        position: Insertion point (``sppf_before``).
        args: Extra block arguments after ``c2``.
        inserted: Row indices of the inserted blocks in the variant.
        seed: Training seed.
        data: Dataset YAML.
        train: Training overrides given to ``model.train``.
        pretrained: Weights transferred before training.
        pretrained_run: Key of the run that trained ``pretrained`` (a run of the same store), if one did.
        eval_split: Dataset split the final validation scored: the recorded mAP, precision, recall and per-image
            matches are this split's (``best.pt`` is chosen on ``val`` whatever it is). Records written before the
            field existed read as ``"val"``.
        warm_new_blocks: Epochs that trained only the inserted blocks before the run's schedule (0: none).
        device: Device the run trained on.
        pid: Process that executed the run.
        started: Local start time, ``YYYY-mm-ddTHH:MM:SS``.
        finished: Local end time.
        wall_s: Seconds from start to end (training, validation and measurements).
        train_s: Seconds inside ``model.train``.
        cpu_s: CPU seconds the executing process spent on the run (all its threads; on a busy machine a better
            measure of the work than ``wall_s``).
        versions: Versions of everything that can change a result (:func:`yolo_attn.execute.versions`).
        model_yaml: The model YAML trained (the generated variant for insertions).
        save_dir: Ultralytics' run folder.
        weights: The trained weights the final validation scored (``best.pt``), relative to the store folder when
            inside it.
        log: The run's full output (worker processes), relative to the store folder when inside it.
        transfer: Tensor counts of the pretrained transfer (``transferred``, ``new``, ``skipped``).
        epochs: Epochs trained.
        imgsz: Training image size.
        map50: Box mAP at IoU 0.5 of the final validation.
        map50_95: Box mAP at IoU 0.5:0.95.
        precision: Mean precision.
        recall: Mean recall.
        fitness: Ultralytics' fitness.
        validation: Where the per-image matches (artifact ``matches``) come from and what they give: ``source``
            (``"final validation"``: captured while Ultralytics validated ``weights`` at the end of training, the
            validation whose figures are recorded above; ``"validated again"``: a second validation of ``weights``,
            e.g. after DDP training), ``n_images``, ``n_predictions``, ``ap_tail``, and ``map50`` / ``map50_95``
            recomputed from the matches (equal to the recorded ones); or ``error`` when they could not be kept.
        utilisation: How much each registered block was used after training, on a few validation images (the first
            8, sorted): :meth:`yolo_attn.explain.BlockUse.to_dict` per block (``row``, ``block``, ``family``,
            ``level``, ``ratio_mean``, ``ratio_std``, ``n_images``, ``gates``...); empty for runs without blocks and
            for records written before it existed.
            e.g. after DDP training or on an ``eval_split`` other than ``val``, with the settings of Ultralytics'
            final validation), ``split``, ``n_images``, ``n_predictions``, ``ap_tail``, and ``map50`` / ``map50_95``
            recomputed from the matches (equal to the recorded ones); after a second validation the trainer's own
            final-validation figures (on ``val``) as ``trainer_map50``, ``trainer_map50_95``...; or ``error`` when
            the matches could not be kept.
        params: Parameter count.
        gflops: GFLOPs counted at ``gflops_imgsz``, attention included (:func:`yolo_attn.flops.count_flops`).
        gflops_ultralytics: Ultralytics' own figure for the fused model at the same size.
        gflops_imgsz: Image size of both GFLOPs figures.
        gflops_by_op: Our count split by aten op.
        bench_device: Device of the latency / memory measurement.
        bench_imgsz: ``[h, w]`` of the latency / memory input.
        bench_batch: The larger batch timed next to batch 1.
        latency_ms: Batch -> median forward latency (ms) of the fused model.
        peak_mb: Batch -> peak memory (MB) the forward allocates above model and input.
        error: Why the run failed (``Type: message``).
        traceback: The failure's traceback (tail).
        measure_error: Why a measurement after training failed (the run still counts as done).
        fuse_error: Why BN fusion failed (latency was then taken unfused).
        artifacts: Files the run left next to its record: name -> path relative to the store folder
            (``matches``: the final validation's per-image matches, :class:`yolo_attn.stats.Matches`).
        extra: Keys this version does not know (kept and written back unchanged).
    """

    key: str
    name: str = ""
    status: str = "running"
    baseline: bool = False
    base: str | None = None
    model: str | None = None
    block: str | None = None
    family: str | None = None
    position: str | None = None
    args: list = field(default_factory=list)
    inserted: list[int] | None = None
    seed: int | None = None
    data: str | None = None
    train: dict = field(default_factory=dict)
    pretrained: str | None = None
    pretrained_run: str | None = None
    eval_split: str = "val"
    warm_new_blocks: int = 0
    # where and when
    device: str | None = None
    pid: int | None = None
    started: str | None = None
    finished: str | None = None
    wall_s: float | None = None
    train_s: float | None = None
    cpu_s: float | None = None
    versions: dict = field(default_factory=dict)
    # what was trained
    model_yaml: str | None = None
    save_dir: str | None = None
    weights: str | None = None
    log: str | None = None
    transfer: dict | None = None
    epochs: int | None = None
    imgsz: int | None = None
    # accuracy
    map50: float | None = None
    map50_95: float | None = None
    precision: float | None = None
    recall: float | None = None
    fitness: float | None = None
    validation: dict | None = None
    utilisation: list[dict] = field(default_factory=list)
    # cost
    params: int | None = None
    gflops: float | None = None
    gflops_ultralytics: float | None = None
    gflops_imgsz: int | None = None
    gflops_by_op: dict = field(default_factory=dict)
    bench_device: str | None = None
    bench_imgsz: list[int] | None = None
    bench_batch: int | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)
    peak_mb: dict[int, float] = field(default_factory=dict)
    # problems
    error: str | None = None
    traceback: str | None = None
    measure_error: str | None = None
    fuse_error: str | None = None
    # files next to the record, and keys from other versions
    artifacts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The run trained and validated."""
        return self.status == "done"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        """A record from a store line of any version (unknown keys go to :attr:`extra`)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw: dict[str, Any] = {"extra": dict(d.get("extra") or {})}
        per_batch: dict[str, dict[int, float]] = {"latency_ms": {}, "peak_mb": {}}
        for k, v in d.items():
            m = _PER_BATCH.match(k)
            if m:
                per_batch[m.group(1)][int(m.group(2))] = v
            elif k in known:
                kw[k] = v
            elif k not in ("extra", "schema"):
                kw["extra"][k] = v
        for name, old in per_batch.items():
            kw[name] = {**old, **{int(b): v for b, v in (kw.get(name) or {}).items()}}
        for name in ("args", "train", "versions", "gflops_by_op", "artifacts", "utilisation"):
            if kw.get(name) is None:
                kw.pop(name, None)  # null in the line: the field's empty default
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The store line: every field (batch keys as strings), unknown keys back at the top level, the schema."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["latency_ms"] = {str(b): v for b, v in sorted(self.latency_ms.items())}
        d["peak_mb"] = {str(b): v for b, v in sorted(self.peak_mb.items())}
        return jsonable({"schema": SCHEMA, **self.extra, **d})

    def flat(self) -> dict[str, Any]:
        """One level of scalars and lists for tables: ``latency_ms_b<batch>`` / ``peak_mb_b<batch>`` per batch."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra, latency, peak = d.pop("extra"), d.pop("latency_ms"), d.pop("peak_mb")
        d.update({k: v for k, v in extra.items() if k not in d})
        for b in sorted({*latency, *peak}):
            d[f"latency_ms_b{b}"] = latency.get(b)
            d[f"peak_mb_b{b}"] = peak.get(b)
        return d


def _write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a part (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def artifact_bytes(record: RunRecord, folder: str | os.PathLike) -> dict[str, bytes]:
    """The files ``record`` lists in :attr:`RunRecord.artifacts`, read from the store folder ``folder``: file name ->
    bytes, what :meth:`ResultStore.put_artifacts` takes (to ship a run's files from a worker to the driver)."""
    out = {}
    for rel in (record.artifacts or {}).values():
        p = Path(rel) if Path(rel).is_absolute() else Path(folder) / rel
        out[p.name] = p.read_bytes()
    return out


class ResultStore:
    """Append-only JSONL store of :class:`RunRecord`, safe for several processes appending at once (POSIX ``flock``).

    Args:
        path: The store file (``*.jsonl``) or the folder holding ``results.jsonl``.
    """

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        self.path = p if p.suffix == ".jsonl" else p / STORE_NAME
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.bad_lines = 0

    @property
    def folder(self) -> Path:
        return self.path.parent

    def artifacts_dir(self, key: str) -> Path:
        """``<folder>/artifacts/<key>``: where a run keeps files beside its record (not created here)."""
        return self.folder / "artifacts" / key

    def put_artifacts(self, key: str, files: Mapping[str, bytes | os.PathLike | str]) -> dict[str, str]:
        """Write a run's files into :meth:`artifacts_dir`, each atomically; return them as :attr:`RunRecord.artifacts`.

        Call it before appending the run's record: a crash in between leaves files without a record, and the run is
        redone (its files rewritten). This is the one place artifacts are written, whoever executed the run: a remote
        executor ships the bytes back (:func:`artifact_bytes`) and its driver calls this.

        Args:
            key: The run's key.
            files: File name (``matches.npz``) -> its bytes, or a path to copy from.

        Returns:
            Artifact name (the file name's stem, ``matches``) -> path relative to the store folder.
        """
        folder = self.artifacts_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, content in files.items():
            if Path(name).name != name or name.startswith("."):
                raise ValueError(f"artifact file name {name!r} must be a plain file name (no folders, no leading dot)")
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            _write_atomic(folder / name, data)
            out[Path(name).stem] = (folder / name).relative_to(self.folder).as_posix()
        return out

    def artifact_path(self, record: RunRecord, name: str) -> Path | None:
        """The file of ``record``'s artifact ``name`` in this store, None when the record lists none or it is gone."""
        rel = (record.artifacts or {}).get(name)
        if not rel:
            return None
        p = Path(rel) if Path(rel).is_absolute() else self.folder / rel
        return p if p.is_file() else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lf:
            try:
                import fcntl

                fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows: single writer assumed
                pass
            yield

    def append(self, record: RunRecord | Mapping[str, Any]) -> None:
        """Write one record as one line: a single ``write`` on an ``O_APPEND`` descriptor, then ``fsync``."""
        if not isinstance(record, RunRecord):
            record = RunRecord.from_dict(record)
        line = json.dumps(record.to_dict(), default=str) + "\n"
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

    def lines(self) -> list[RunRecord]:
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
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                out.append(RunRecord.from_dict(rec))
            else:
                self.bad_lines += 1
        return out

    def records(self) -> dict[str, RunRecord]:
        """The latest record per run key, in the order keys first appear."""
        return {r.key: r for r in self.lines()}

    def compact(self) -> None:
        """Rewrite the store with one (the latest) record per key, atomically (temp file + ``os.replace``)."""
        with self._locked():
            recs = list(self.records().values())
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                for r in recs:
                    f.write(json.dumps(r.to_dict(), default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
