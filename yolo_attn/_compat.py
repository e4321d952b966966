"""Every read of an Ultralytics internal, and the version shims, in one place. Never patches Ultralytics.

The Ultralytics boundary (the same rule opens :mod:`yolo_attn.integration`; ``tests/test_architecture.py`` checks it):

- :mod:`yolo_attn.integration` INSTALLS: every patch of Ultralytics (names and hooks in ``ultralytics.nn.tasks``,
  the wrapped ``parse_model`` / ``check_yaml`` / ``BaseModel.load`` / ``Exporter.__call__``, safe globals, the
  thread count held through ``select_device``), each one undone by ``unregister`` or on leaving its context.
- ``_compat`` (this module) READS: Ultralytics' building blocks, model classes, model and checkpoint loading,
  configuration defaults, the FLOPs profiler, the logger... and holds the version shims (:func:`version`, the one
  version function; :func:`restore_numpy_trapz`). It never assigns anything on an Ultralytics module, class or
  function.
- Nothing else in yolo_attn imports ``ultralytics``: it imports what it needs from here.

Names are resolved on first use, so importing this module is cheap and a name a future Ultralytics moved fails where it
is used, with a message naming it and the installed version. :func:`check` resolves them all and lists what is missing
(``tests/test_architecture.py`` asserts the list is empty).

Examples:
    >>> from yolo_attn import _compat
    >>> _compat.check()  # names this package reads from the installed Ultralytics that it lacks
    []
    >>> _compat.model_class("detect").__name__
    'DetectionModel'
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazily resolved names below are, for readers and type checkers
    import torch
    from ultralytics import YOLO
    from ultralytics.cfg import DEFAULT_CFG_DICT, smart_value
    from ultralytics.engine.model import Model
    from ultralytics.nn.modules import Classify, Conv
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import get_flops

__all__ = [
    "Classify",
    "Conv",
    "DEFAULT_CFG_DICT",
    "LOGGER",
    "Model",
    "TASK_MODELS",
    "ValidationCapture",
    "YOLO",
    "ap_tail",
    "cfg_models_root",
    "check",
    "get_flops",
    "guess_model_task",
    "load_checkpoint",
    "model_class",
    "model_class_for",
    "restore_numpy_trapz",
    "smart_value",
    "trainer_state",
    "unwrap",
    "version",
    "warn",
    "yaml_model_load",
]

SUPPORTED = "ultralytics>=8.3.65,<8.5"

#: Name here -> ``module:attribute`` in Ultralytics (8.3.65 and 8.4 agree on all of these).
_NAMES = {
    "Classify": "ultralytics.nn.modules:Classify",  # nn/ subclasses it (BoTNet's classification head)
    "Conv": "ultralytics.nn.modules:Conv",  # conv + BN + act, so fuse() and initialize_weights treat ours as theirs
    "DEFAULT_CFG_DICT": "ultralytics.cfg:DEFAULT_CFG_DICT",  # the training keys `key=value` overrides may name
    "LOGGER": "ultralytics.utils:LOGGER",  # has a handler and honours YOLO_VERBOSE, like the training lines
    "Model": "ultralytics.engine.model:Model",  # the YOLO wrapper's base class
    "YOLO": "ultralytics:YOLO",
    "get_flops": "ultralytics.utils.torch_utils:get_flops",
    "guess_model_task": "ultralytics.nn.tasks:guess_model_task",
    "smart_value": "ultralytics.cfg:smart_value",  # types "3" / "0.01" / "True" as the yolo CLI does
    "yaml_model_load": "ultralytics.nn.tasks:yaml_model_load",
}

#: Ultralytics task -> model class in ``ultralytics.nn.tasks``.
TASK_MODELS = {
    "detect": "DetectionModel",
    "segment": "SegmentationModel",
    "pose": "PoseModel",
    "obb": "OBBModel",
    "classify": "ClassificationModel",
}

#: Tasks whose model class only newer Ultralytics has (8.4: semantic segmentation, depth).
NEWER_TASK_MODELS = {"semantic": "SemanticSegmentationModel", "depth": "DepthModel"}

#: Output heads that need their own model class rather than their task's (open-vocabulary heads read text embeddings,
#: RT-DETR's decoder has its own loss and forward).
HEAD_MODELS = {
    "WorldDetect": "WorldModel",
    "YOLOEDetect": "YOLOEModel",
    "YOLOESegment": "YOLOESegModel",
    "YOLOESegment26": "YOLOESegModel",
    "RTDETRDecoder": "RTDETRDetectionModel",
}

# The checkpoint loader was renamed: 8.4 has ``load_checkpoint``, 8.3 ``attempt_load_one_weight``.
_CHECKPOINT_LOADERS = ("load_checkpoint", "attempt_load_one_weight")


def version() -> str:
    """The installed Ultralytics version (without importing it when it is not imported yet)."""
    mod = sys.modules.get("ultralytics")
    found = getattr(mod, "__version__", None)
    if found is None:
        from importlib.metadata import version as dist_version

        found = dist_version("ultralytics")
    return str(found)


def restore_numpy_trapz() -> None:
    """Give numpy >= 2.4 back ``np.trapz`` (the old name of ``np.trapezoid``) for Ultralytics < 8.4's metrics.

    Ultralytics 8.3.x integrates the precision-recall curve with ``np.trapz``, which numpy 2.4 removed: every validation
    that finds a true positive then raises AttributeError inside Ultralytics. Both names compute the same integral,
    so the alias is restored (numpy only; idempotent; nothing of Ultralytics changes) when the installed numpy lacks
    it. A version shim between two dependencies, so it lives here with the reads that depend on it (``compute_ap``:
    see ``ap_tail``); :func:`yolo_attn.register` calls it for training and validation.
    """
    import numpy as np

    if not hasattr(np, "trapz") and hasattr(np, "trapezoid"):
        np.trapz = np.trapezoid


def _missing(what: str, why: Exception | str) -> ImportError:
    return ImportError(
        f"yolo_attn needs {what} from Ultralytics, which the installed {version()} does not provide ({why}); "
        f"supported: {SUPPORTED}"
    )


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise _missing(f"{module}.{attr}", e) from e


def __getattr__(name: str) -> Any:
    target = _NAMES.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _resolve(target)
    globals()[name] = value  # resolved once
    return value


def warn(msg: str) -> None:
    """Log ``msg`` as a warning through Ultralytics' logger, with its ``WARNING ⚠️`` prefix exactly once.

    8.4 adds the prefix in its log formatter; 8.3 writes it into each message.
    """
    logger = __getattr__("LOGGER")
    prefixed = any(type(h.formatter).__name__ == "PrefixFormatter" for h in logger.handlers)
    logger.warning(msg if prefixed else f"WARNING ⚠️ {msg}")


def model_class(task: str = "detect") -> type:
    """The Ultralytics model class for ``task`` (``"detect"`` -> ``DetectionModel``...)."""
    known = {**TASK_MODELS, **NEWER_TASK_MODELS}
    if task not in known:
        raise ValueError(f"task must be one of {', '.join(known)}, got {task!r}")
    return _resolve(f"ultralytics.nn.tasks:{known[task]}")


def model_class_for(d: dict) -> type:
    """The Ultralytics model class that builds model dict ``d``: its head's own class, else its task's.

    Examples:
        >>> from yolo_attn.edit import load_base
        >>> [model_class_for(load_base(m)[0]).__name__ for m in ("yolov8-world.yaml", "yolov8-pose.yaml")]
        ['WorldModel', 'PoseModel']
    """
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    head = rows[-1][2] if rows and len(rows[-1]) > 2 else None
    if head in HEAD_MODELS:
        return _resolve(f"ultralytics.nn.tasks:{HEAD_MODELS[head]}")
    task = __getattr__("guess_model_task")(d)
    if task is None:
        raise ValueError(f"cannot tell the task of a model whose output head is {head!r}")
    return model_class(task)


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """``(model, checkpoint dict)`` of an Ultralytics ``.pt`` file, with Ultralytics' own loader."""
    tasks = importlib.import_module("ultralytics.nn.tasks")
    for name in _CHECKPOINT_LOADERS:
        loader = getattr(tasks, name, None)
        if loader is not None:
            return loader(str(path))
    raise _missing(f"a checkpoint loader ({' or '.join(_CHECKPOINT_LOADERS)}) in ultralytics.nn.tasks", "none found")


def unwrap(model: Any) -> torch.nn.Module:
    """The ``nn.Module`` (``DetectionModel``...) inside an Ultralytics ``YOLO`` object; a module unchanged.

    Raises:
        TypeError: ``model`` is neither.
    """
    import torch

    # ``Model`` is itself an nn.Module, so test it first; a model object exists only once its module is imported.
    engine = sys.modules.get("ultralytics.engine.model")
    if engine is not None and isinstance(model, engine.Model):
        return model.model
    if isinstance(model, torch.nn.Module):
        return model
    raise TypeError(f"expected an nn.Module or an Ultralytics YOLO object, got {type(model).__name__}")


def trainer_state(trainer: Any) -> dict:
    """What a callback reads from an Ultralytics trainer: ``amp`` (kept on?), ``loss`` (this batch's, a tensor or
    None), ``epoch`` (0-based) and ``n_train_images``; missing attributes read as None."""
    loader = getattr(trainer, "train_loader", None)
    dataset = getattr(loader, "dataset", None)
    return {
        "amp": getattr(trainer, "amp", None),
        "loss": getattr(trainer, "loss", None),
        "epoch": getattr(trainer, "epoch", None),
        "n_train_images": len(dataset) if dataset is not None else None,
    }


def cfg_models_root() -> Path:
    """The ``cfg/models`` folder of the installed Ultralytics (its model YAMLs: ``v8/yolov8.yaml``...)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.origin:
        raise _missing("the ultralytics package", "not installed")
    return Path(spec.origin).resolve().parent / "cfg" / "models"


def check() -> list[str]:
    """What this package reads from Ultralytics that the installed version lacks (empty: everything is there)."""
    problems = []
    for name, target in _NAMES.items():
        try:
            _resolve(target)
        except ImportError as e:
            problems.append(f"{name}: {e}")
    for task in TASK_MODELS:
        try:
            model_class(task)
        except ImportError as e:
            problems.append(f"model class for {task!r}: {e}")
    tasks = importlib.import_module("ultralytics.nn.tasks")
    if not any(hasattr(tasks, n) for n in _CHECKPOINT_LOADERS):
        problems.append(f"checkpoint loader: none of {', '.join(_CHECKPOINT_LOADERS)} in ultralytics.nn.tasks")
    if not hasattr(importlib.import_module("ultralytics.utils.torch_utils"), "NUM_THREADS"):
        problems.append("NUM_THREADS (integration.cpu_threads): not in ultralytics.utils.torch_utils")
    root = cfg_models_root()
    if not (root / "v8" / "yolov8.yaml").is_file():
        problems.append(f"model YAMLs: {root}/v8/yolov8.yaml not found")
    problems += _check_validation_capture()
    return problems


# ------------------------------------------------------------------------------------ validation matches (issue 13)
# What Ultralytics' detection validator matched, image by image, kept for paired statistics (yolo_attn.stats). The
# validator computes it on every validation and throws it away once mAP is computed; ``ValidationCapture`` wraps the
# validator's own ``update_metrics`` (present in 8.3.65 and 8.4) and copies out the entries it appended, so the
# matching itself is always Ultralytics'. Where the entries live differs:
# - 8.4: ``validator.metrics.stats`` (a dict of lists: tp, conf, pred_cls, target_cls, target_img), one entry per
#   image, numpy arrays; ``get_stats`` clears them, so an ``on_val_end`` callback would be too late.
# - 8.3.65: ``validator.stats`` (same keys), torch tensors on the device, and no entry for an image with neither
#   predictions nor labels (such an image still counts in a resample of the images).


def _stat_lists(validator: Any) -> dict:
    """The validator's per-image stat lists (see above), wherever this Ultralytics keeps them."""
    for holder in (getattr(validator, "metrics", None), validator):
        stats = getattr(holder, "stats", None)
        if isinstance(stats, dict) and isinstance(stats.get("tp"), list):
            return stats
    raise _missing("the detection validator's per-image stat lists (metrics.stats or stats)", "not found")


def _numpy(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor (8.3.65 keeps them on the device)
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _n_predictions(pred: Any) -> int:
    """Predictions of one image: a dict with ``cls`` (8.4) or an (n, 6) tensor (8.3.65)."""
    return len(pred["cls"]) if isinstance(pred, dict) else len(pred)


class ValidationCapture:
    """Keeps the per-image matching results of a detection validation (see :class:`yolo_attn.stats.Matches`).

    Register :meth:`on_val_start` as an ``on_val_start`` callback of a YOLO object before ``train`` or ``val``: the
    first validation that is not part of a training epoch is captured (during ``train`` that is the final validation
    of ``best.pt``, whose figures ``train`` returns). Nothing is captured when training runs in DDP subprocesses,
    which do not see the callback: :attr:`captured` stays False.

    Attributes:
        captured: A validation was captured (complete once it returned).
        images: Per image: (file, tp (n, T) bool, conf (n,), pred_cls (n,), target_cls (g,)).
        root: The dataset root the image ids are made relative to.
        names: Class names of the validated model.
    """

    def __init__(self) -> None:
        self.captured = False
        self.images: list[tuple[str, Any, Any, Any, Any]] = []
        self.root: str | None = None
        self.names: dict | None = None
        self.iou_thresholds: Any = None

    def on_val_start(self, validator: Any) -> None:
        """The callback: wrap this validator's ``update_metrics`` unless the validation is part of training."""
        if self.captured or getattr(validator, "training", False):
            return
        if not hasattr(validator, "_process_batch"):  # not a detection validator (classification...)
            return
        self.captured = True
        self.images = []
        data = getattr(validator, "data", None) or {}
        self.root = str(data.get("path")) if data.get("path") else None
        iouv = getattr(validator, "iouv", None)
        self.iou_thresholds = _numpy(iouv).astype("float64") if iouv is not None else None
        original = validator.update_metrics

        def update_metrics(preds: Any, batch: dict) -> None:
            stats = _stat_lists(validator)
            n0 = len(stats["tp"])
            original(preds, batch)
            self._take(stats, n0, preds, batch)
            if self.names is None:
                names = getattr(validator, "names", None) or getattr(getattr(validator, "metrics", None), "names", None)
                self.names = dict(names) if names else None

        validator.update_metrics = update_metrics  # this instance only: the class and other validators are untouched

    def _take(self, stats: dict, n0: int, preds: Any, batch: dict) -> None:
        import numpy as np

        new = len(stats["tp"]) - n0
        bi = _numpy(batch["batch_idx"]).reshape(-1)
        has_entry = [_n_predictions(p) > 0 or bool((bi == si).sum()) for si, p in enumerate(preds)]
        if new == len(preds):  # one entry per image (8.4)
            has_entry = [True] * len(preds)
        elif new != sum(has_entry):
            raise RuntimeError(
                f"Ultralytics {version()}: the validator added {new} stat entries for {len(preds)} images "
                f"({sum(has_entry)} with predictions or labels); cannot tell which image each belongs to"
            )
        k = n0
        for si, entry in enumerate(has_entry):
            file = str(batch["im_file"][si])
            if entry:
                tp, conf, cls, tcls = (_numpy(stats[key][k]) for key in ("tp", "conf", "pred_cls", "target_cls"))
                k += 1
            else:
                n_thr = len(self.iou_thresholds) if self.iou_thresholds is not None else 10
                tp, conf, cls, tcls = np.zeros((0, n_thr), bool), np.zeros(0), np.zeros(0), np.zeros(0)
            self.images.append((file, tp.astype(bool), conf.reshape(-1), cls.reshape(-1), tcls.reshape(-1)))

    def image_ids(self) -> list[str]:
        """Each image's file, relative to the dataset root when it lies inside it."""
        out = []
        for file, *_ in self.images:
            p = Path(file)
            if self.root:
                try:
                    p = p.resolve().relative_to(Path(self.root).resolve())
                except ValueError:
                    pass
            out.append(p.as_posix())
        return out

    def matches(self) -> Any:
        """The captured validation as :class:`yolo_attn.stats.Matches` (None when nothing was captured)."""
        from yolo_attn.stats import IOU_THRESHOLDS, Matches

        if not self.captured or not self.images:
            return None
        _, tp, conf, cls, tcls = zip(*self.images)
        thr = self.iou_thresholds if self.iou_thresholds is not None else IOU_THRESHOLDS
        return Matches.from_images(
            list(tp),
            list(conf),
            list(cls),
            list(tcls),
            iou_thresholds=thr,
            names=self.names,
            image_ids=self.image_ids(),
            ap_tail=ap_tail(),
        )


def ap_tail() -> str:
    """How the installed Ultralytics ends the precision-recall curve (:data:`yolo_attn.stats.AP_TAILS`)."""
    from yolo_attn.stats import detect_ap_tail

    compute_ap = _resolve("ultralytics.utils.metrics:compute_ap")
    restore_numpy_trapz()  # 8.3's compute_ap calls np.trapz, which numpy 2.4 removed
    try:
        return detect_ap_tail(compute_ap)
    except AttributeError as e:  # 8.3's compute_ap calls np.trapz, which numpy 2.4 removed; register() restores it
        raise RuntimeError(f"Ultralytics {version()}'s compute_ap failed ({e}): call yolo_attn.register() first") from e


def _check_validation_capture() -> list[str]:
    """What :class:`ValidationCapture` and :func:`ap_tail` read, as :func:`check` reports it."""
    problems = []
    try:
        validator = _resolve("ultralytics.models.yolo.detect:DetectionValidator")
        for attr in ("update_metrics", "_process_batch"):
            if not callable(getattr(validator, attr, None)):
                problems.append(f"DetectionValidator.{attr}: missing in Ultralytics {version()}")
        _resolve("ultralytics.utils.metrics:compute_ap")
    except ImportError as e:
        problems.append(f"validation capture: {e}")
    return problems
