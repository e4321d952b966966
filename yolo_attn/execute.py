"""One run: build the model (inserting the block), transfer pretrained weights, train, validate, measure.

:func:`execute` turns a :class:`yolo_attn.plan.Run` into a :class:`yolo_attn.store.RunRecord` and never raises for a
failure of the run itself: a run that raises is returned with ``status="failed"``, its error and traceback, so a sweep
goes on. The variant YAML goes to ``<out>/models/``, Ultralytics' run folder to ``<out>/runs/``.

Measurements after training (:class:`Measure`, not part of the run's key): GFLOPs at ``flops_imgsz`` counted by
:func:`yolo_attn.flops.model_flops` (attention included) next to Ultralytics' figure, and the latency / peak memory of
the BN-fused model at batch 1 and ``bench_batch`` (:func:`yolo_attn.bench.bench_model`). A failing measurement is
recorded in ``measure_error``; the run still counts as done.

Files a run keeps beside its record (per-image validation matches for paired statistics, say) belong in
``ResultStore(out).artifacts_dir(run.key)`` and are listed in :attr:`yolo_attn.store.RunRecord.artifacts` (paths
relative to ``out``), so the report and statistics find them from the store alone.

Examples:
    >>> import tempfile
    >>> from yolo_attn.execute import Measure, execute
    >>> from yolo_attn.plan import Run
    >>> rec = execute(Run("no-such-model.yaml", "shapes.yaml"), tempfile.mkdtemp())  # fails fast, does not raise
    >>> rec.status, rec.error
    ('failed', "FileNotFoundError: 'no-such-model.yaml' does not exist")
    >>> Measure(bench_imgsz=64).bench_batch
    8
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import platform
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolo_attn.plan import DEFAULT_EVAL_SPLIT, Run, check_eval_splits, model_dict
from yolo_attn.store import ResultStore, RunRecord

__all__ = ["Measure", "execute", "failed_record", "versions"]

LOGGER = logging.getLogger("yolo_attn")


@dataclass(frozen=True)
class Measure:
    """How a finished run is measured. The one place these defaults live (the CLI options and the demo use them).

    Attributes:
        flops_imgsz: GFLOPs (ours and Ultralytics') at this size; 640 is what papers and Ultralytics quote.
        bench_imgsz: Latency / memory input size; None = the training imgsz.
        bench_batch: The larger batch timed next to batch 1.
        bench_iters: Timed forward passes (the median is recorded).
        bench_warmup: Untimed forward passes first.
    """

    flops_imgsz: int = 640
    bench_imgsz: int | None = None
    bench_batch: int = 8
    bench_iters: int = 5
    bench_warmup: int = 2

    @classmethod
    def of(cls, settings: Measure | Mapping[str, Any] | None) -> Measure:
        """``settings`` as a :class:`Measure` (a mapping may give some fields; None gives the defaults)."""
        if isinstance(settings, Measure):
            return settings
        settings = dict(settings or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ValueError(f"unknown measurement setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def versions() -> dict[str, str]:
    """Versions of everything that can change a result: the one place they are collected.

    Every run record keeps them (:attr:`yolo_attn.store.RunRecord.versions`); the GPU check's summary and the Ray
    executor's node check (what the nodes must match) read them from here too. Values are plain strings.

    Examples:
        >>> from yolo_attn import _compat
        >>> v = versions()
        >>> {"python", "torch", "ultralytics", "yolo_attn", "platform"} <= set(v), v["ultralytics"] == _compat.version()
        (True, True)
    """
    import torch

    import yolo_attn
    from yolo_attn import _compat

    out = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "ultralytics": _compat.version(),
        "yolo_attn": yolo_attn.__version__,
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        out["thop"] = version("ultralytics-thop")
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _record(run: Run, device: str) -> RunRecord:
    """The record of ``run`` before anything ran: what it is, where and when it started."""
    return RunRecord(
        key=run.key,
        name=run.name,
        status="running",
        baseline=run.baseline,
        base=Path(str(run.model)).name,
        model=str(run.model),
        block=run.block,
        position=run.position,
        args=list(run.args),
        seed=run.seed,
        data=run.data,
        train=dict(run.train),
        pretrained=run.pretrained,
        pretrained_run=run.pretrained_run,
        eval_split=run.eval_split,
        warm_new_blocks=run.warm_new_blocks,
        device=str(device),
        started=_now(),
        pid=os.getpid(),
    )


def failed_record(run: Run, device: str, error: str, trace: str = "", wall_s: float = 0.0) -> RunRecord:
    """The record of a run that failed outside :func:`execute` (e.g. its worker process died)."""
    rec = _record(run, device)
    rec.status, rec.error, rec.traceback, rec.wall_s, rec.finished = "failed", error, trace, wall_s, _now()
    return rec


def _family(block: str | None) -> str | None:
    from yolo_attn import registry

    if block is None:
        return None
    if block in registry.families():
        return block
    return registry.get_spec(block).family if block in registry.block_names() else None


def _metrics(metrics: Any, trainer: Any) -> dict[str, float | None]:
    box = getattr(metrics, "box", None)
    if box is not None:
        return {
            "map50": float(box.map50),
            "map50_95": float(box.map),
            "precision": float(box.mp),
            "recall": float(box.mr),
            "fitness": float(getattr(metrics, "fitness", float("nan"))),
        }
    m = getattr(trainer, "metrics", {}) or {}  # DDP: metrics come back through the trainer's last validation
    return {
        "map50": m.get("metrics/mAP50(B)"),
        "map50_95": m.get("metrics/mAP50-95(B)"),
        "precision": m.get("metrics/precision(B)"),
        "recall": m.get("metrics/recall(B)"),
    }


def _blocks_in(d: Mapping) -> dict[str, str]:
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


def _measure(net: Any, rec: RunRecord, settings: Measure, device: str) -> None:
    """Both GFLOPs figures, then latency / peak memory of the BN-fused model, into ``rec``."""
    from yolo_attn.bench import bench_model, resolve_device
    from yolo_attn.flops import model_flops

    fl = model_flops(net, settings.flops_imgsz, device="cpu")
    rec.gflops, rec.gflops_ultralytics, rec.gflops_imgsz = fl["gflops"], fl["gflops_ultralytics"], settings.flops_imgsz
    rec.gflops_by_op = fl["gflops_by_op"]
    fused = net
    if hasattr(net, "fuse"):
        try:
            fused = net.fuse(verbose=False)
        except Exception as e:  # latency of the unfused model is still a figure; say so
            rec.fuse_error = f"{type(e).__name__}: {e}"
    b = bench_model(
        fused,
        settings.bench_imgsz or rec.imgsz,
        batches=sorted({1, int(settings.bench_batch)}),
        device=resolve_device(str(device).split(",")[0] or "cpu"),
        warmup=settings.bench_warmup,
        iters=settings.bench_iters,
    )
    rec.bench_device, rec.bench_imgsz, rec.latency_ms, rec.peak_mb = b.device, b.imgsz, b.latency_ms, b.peak_mb
    rec.bench_batch = settings.bench_batch


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (the store moves as a whole), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return str(path)


def _pretrained_loader(weights: str, rec: RunRecord) -> tuple[Any, Any]:
    """Trainer callbacks (start, end of the training set-up) that make sure ``weights`` start the training.

    Ultralytics 8.3 ignores ``pretrained=<file>`` when the model was built from a YAML: its ``Model.train`` hands
    the trainer a fresh model (built for the dataset's classes) and ``setup_model`` then skips the weights. Its
    set-up starts with that model in hand, so the first callback loads the weights into it, through the variant's
    index map. 8.4 calls that callback before any model exists and loads the weights itself (through the same map,
    by the load hook); the second callback then only counts what transferred, on a copy. Counts go to
    ``rec.transfer``.
    """
    import torch

    from yolo_attn.transfer import transfer

    def note(rep: Any) -> None:
        rec.transfer = {"transferred": rep.n_transferred, "new": rep.n_new, "skipped": rep.n_skipped}

    def load(trainer: Any) -> None:
        if isinstance(getattr(trainer, "model", None), torch.nn.Module):
            note(transfer(trainer.model, weights, verbose=False))

    def count(trainer: Any) -> None:
        if rec.transfer is None and isinstance(getattr(trainer, "model", None), torch.nn.Module):
            note(transfer(copy.deepcopy(trainer.model), weights, verbose=False))

    return load, count


def _warm_stage(run: Run, rec: RunRecord, model_path: str, out: Path, device: str) -> str:
    """Train only the rows holding registered blocks for ``run.warm_new_blocks`` epochs, every other row frozen with
    Ultralytics' ``freeze`` (frozen rows' BN statistics still follow the data, as under any ``freeze``); returns the
    weights it ends with (``last.pt``), which the run's own schedule then starts from. The pretrained transfer of
    this stage is the one ``rec.transfer`` counts."""
    from yolo_attn._compat import YOLO
    from yolo_attn.explain import find_blocks

    model = YOLO(model_path)
    rows = {b.row for b in find_blocks(model)}
    if not rows:
        raise ValueError(f"warm_new_blocks={run.warm_new_blocks}: {model_path} holds no registered block to train")
    if run.pretrained:
        load, count = _pretrained_loader(run.pretrained, rec)
        model.add_callback("on_pretrain_routine_start", load)
        model.add_callback("on_pretrain_routine_end", count)
    frozen = [i for i in range(len(model.model.model)) if i not in rows]
    _train(model, run, out, device, run.pretrained, "-warm", epochs=run.warm_new_blocks, freeze=frozen)
    return str(model.trainer.last)


def _train(model: Any, run: Run, out: Path, device: str, pretrained: str | None, suffix: str = "", **over: Any) -> Any:
    """``model.train`` with the run's data, seed and overrides, into ``<out>/runs/<name>-<key[:8]><suffix>``."""
    return model.train(
        data=run.data,
        seed=run.seed,
        device=device,
        project=str((out / "runs").resolve()),
        name=f"{run.name}-{run.key[:8]}{suffix}",
        exist_ok=True,
        pretrained=pretrained or False,
        **{"plots": False, **run.train, **over},
    )


def _validate_best(run: Run, rec: RunRecord, trainer: Any, out: Path, device: str) -> tuple[Any, dict]:
    """Validate ``best.pt`` on ``run.eval_split`` with the settings of Ultralytics' final validation, capture active.

    The record's mAP, precision and recall then come from this validation; returns its capture and the figures the
    record held before (the trainer's, as ``trainer_map50``...).
    """
    from yolo_attn._compat import YOLO, final_validation_args
    from yolo_attn.capture import ValidationCapture

    best = Path(getattr(trainer, "best", "") or "")
    if not best.is_file():
        raise RuntimeError(f"there is no best.pt to validate on {run.eval_split!r}")
    capture = ValidationCapture()
    model = YOLO(str(best))
    model.add_callback("on_val_start", capture.on_val_start)
    settings = {"imgsz": rec.imgsz, **final_validation_args(trainer)}
    vm = model.val(
        data=run.data,
        split=run.eval_split,
        device=str(device).split(",")[0],
        project=str((out / "runs").resolve()),
        name=f"{run.name}-{run.key[:8]}-{run.eval_split}",
        exist_ok=True,
        plots=False,
        verbose=False,
        **settings,
    )
    trained = {f"trainer_{k}": getattr(rec, k) for k in ("map50", "map50_95", "precision", "recall")}
    for k, v in _metrics(vm, None).items():
        setattr(rec, k, v)
    return capture, trained


def _keep_matches(
    run: Run, rec: RunRecord, capture: Any, trainer: Any, out: Path, device: str, trained: dict | None = None
) -> None:
    """Store the final validation's per-image matches as the run's ``matches`` artifact and describe them.

    They come from the validation that produced the recorded mAP (Ultralytics' final validation of ``best.pt``, or
    the validation of ``best.pt`` on ``run.eval_split`` that :func:`_validate_best` ran, whose record figures it
    replaced by ``trained``), so the two agree. A DDP run, whose training subprocesses the capture does not reach,
    validates ``best.pt`` again (with the settings of its final validation, on the first device); the record's mAP,
    precision and recall then come from that validation too, and the trainer's figures are kept in
    ``rec.validation`` (``trainer_map50``...).
    """
    import tempfile

    from yolo_attn.stats import map_scores

    source = "final validation" if trained is None else "validated again"
    matches = capture.matches()
    if matches is None and trained is None:
        capture, trained = _validate_best(run, rec, trainer, out, device)
        matches, source = capture.matches(), "validated again"
    if matches is None:
        raise RuntimeError(f"the validation of best.pt on {run.eval_split!r} was not captured")
    scores = map_scores(matches)
    with tempfile.TemporaryDirectory() as tmp:
        rec.artifacts.update(ResultStore(out).put_artifacts(run.key, {"matches.npz": matches.save(Path(tmp) / "m")}))
    rec.validation = {
        "source": source,
        "split": run.eval_split,
        "weights": rec.weights,
        "n_images": matches.n_images,
        "n_predictions": matches.n_predictions,
        "ap_tail": matches.ap_tail,
        "map50": scores.map50,
        "map50_95": scores.map50_95,
        **(trained or {}),
    }
    for k in ("map50", "map50_95"):
        got, want = rec.validation[k], getattr(rec, k)
        if want is not None and abs(got - want) > 1e-6:
            LOGGER.warning("%s: the per-image matches give %s %.6f, Ultralytics reported %.6f", run.name, k, got, want)


def execute(
    run: Run, out: str | os.PathLike, device: str = "cpu", settings: Measure | Mapping | None = None
) -> RunRecord:
    """Train and measure one run; never raises for a failure of the run itself (the record says ``failed``).

    Args:
        run: What to train.
        out: Sweep folder (``models/`` and ``runs/`` are written below it).
        device: Ultralytics device string (``cpu``, ``0``, ``0,1`` for DDP).
        settings: Measurements after training (default :class:`Measure`).
    """
    import torch

    out = Path(out)
    settings = Measure.of(settings)
    t0, c0 = time.time(), time.process_time()
    rec = _record(run, device)
    rec.versions = versions()
    try:
        import yolo_attn
        from yolo_attn._compat import YOLO
        from yolo_attn.capture import ValidationCapture

        yolo_attn.register()
        if run.eval_split != DEFAULT_EVAL_SPLIT:  # before training: a missing split must not cost a training run
            check_eval_splits([run])
        rec.family = _family(run.block)
        model_path = str(run.model)
        if run.block is not None:
            model_path, made = _variant_yaml(run, out)
            rec.family, rec.block, rec.inserted = made.get("family"), made.get("block"), made.get("inserted")
        else:  # a YAML named directly may itself be a generated variant: report its block and position
            d = model_dict(model_path) or {}
            made = d.get("yolo_attn") or _blocks_in(d)
            for k in ("block", "family", "position", "inserted"):
                if made.get(k):
                    setattr(rec, k, made[k])
        rec.model_yaml = model_path
        pretrained = _warm_stage(run, rec, model_path, out, device) if run.warm_new_blocks else run.pretrained
        model = YOLO(model_path)
        if pretrained:  # after a warm stage its weights start the schedule; rec.transfer keeps the first transfer
            load, count = _pretrained_loader(pretrained, RunRecord(run.key) if run.warm_new_blocks else rec)
            model.add_callback("on_pretrain_routine_start", load)
            model.add_callback("on_pretrain_routine_end", count)
        capture = ValidationCapture()  # the final validation's per-image matches, for paired statistics
        if run.eval_split == DEFAULT_EVAL_SPLIT:  # else best.pt is validated on the split after training
            model.add_callback("on_val_start", capture.on_val_start)
        t_train = time.time()
        metrics = _train(model, run, out, device, pretrained)
        rec.train_s = time.time() - t_train
        for k, v in _metrics(metrics, model.trainer).items():
            setattr(rec, k, v)
        rec.save_dir = str(getattr(model.trainer, "save_dir", ""))
        best = Path(getattr(model.trainer, "best", "") or "")
        rec.weights = _relative(best, out) if best.is_file() else None
        rec.epochs = getattr(model.trainer, "epochs", run.train.get("epochs"))
        imgsz = getattr(model.trainer.args, "imgsz", run.train.get("imgsz", 640))
        rec.imgsz = int(max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz)
        trained = None
        if run.eval_split != DEFAULT_EVAL_SPLIT:  # failing here fails the run: its figures would be val's
            capture, trained = _validate_best(run, rec, model.trainer, out, device)
        try:
            _keep_matches(run, rec, capture, model.trainer, out, device, trained)
        except Exception as e:  # the run still counts; the report says its intervals are unavailable
            rec.validation = {"error": f"{type(e).__name__}: {e}"}

        net = copy.deepcopy(model.model).float().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        rec.params = sum(p.numel() for p in net.parameters())
        try:  # how much each block was used (issue 23); before _measure's BN fusion folds BoT's gates away
            from yolo_attn.explain import data_utilisation

            rec.utilisation = [u.to_dict() for u in data_utilisation(net, run.data, rec.imgsz)]
        except Exception as e:
            rec.measure_error = f"utilisation: {type(e).__name__}: {e}"
        rec.status = "done"  # trained and validated; a measurement failure below is recorded, not fatal
        try:
            _measure(net, rec, settings, device)
        except Exception as e:
            rec.measure_error = f"{type(e).__name__}: {e}"
    except Exception as e:  # the run failed; the sweep goes on
        rec.status = "failed"
        rec.error = f"{type(e).__name__}: {e}"
        rec.traceback = traceback.format_exc()[-4000:]
    finally:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    rec.wall_s, rec.cpu_s = time.time() - t0, time.process_time() - c0
    rec.finished = _now()
    return rec
