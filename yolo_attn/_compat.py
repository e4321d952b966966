"""Every read of an Ultralytics internal, and the version shims, in one place. Never patches Ultralytics.

The Ultralytics boundary (the same rule opens :mod:`yolo_attn.integration`; ``tests/test_architecture.py`` checks it):

- :mod:`yolo_attn.integration` INSTALLS: every patch of Ultralytics (names and hooks in ``ultralytics.nn.tasks``,
  the wrapped ``parse_model`` / ``check_yaml`` / ``BaseModel.load`` / ``Exporter.__call__``, safe globals, the
  thread count held through ``select_device``), each one undone by ``unregister`` or on leaving its context.
- ``_compat`` (this module) READS: Ultralytics' building blocks, model classes, model and checkpoint loading,
  configuration defaults, the FLOPs profiler, the logger... and holds the version shims (:func:`version`, the one
  version function; :func:`restore_numpy_trapz`). It never assigns anything on an Ultralytics module, class or
  function.
- Nothing else in yolo_attn imports ``ultralytics``: it imports what it needs from here. Two modules write on an
  Ultralytics *instance* they are handed or build, never on a module or class: :mod:`yolo_attn.capture` wraps
  ``update_metrics`` of the one validator its ``on_val_start`` callback receives, and the ``psa`` family gives the
  ``C2PSA`` it builds blocks with explicit head counts (the test lists exactly these).

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
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths
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
    "YOLO",
    "cfg_models_root",
    "check",
    "IMG_FORMATS",
    "check_det_dataset",
    "final_validation_args",
    "get_flops",
    "guess_model_task",
    "img2label_paths",
    "load_checkpoint",
    "model_class",
    "model_class_for",
    "non_max_suppression",
    "restore_numpy_trapz",
    "smart_value",
    "trainer_state",
    "unwrap",
    "validator_state",
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
    "img2label_paths": "ultralytics.data.utils:img2label_paths",  # images/x.jpg -> labels/x.txt, as datasets read
    "smart_value": "ultralytics.cfg:smart_value",  # types "3" / "0.01" / "True" as the yolo CLI does
    "yaml_model_load": "ultralytics.nn.tasks:yaml_model_load",
    "check_det_dataset": "ultralytics.data.utils:check_det_dataset",  # a data YAML -> its resolved split paths
    "IMG_FORMATS": "ultralytics.data.utils:IMG_FORMATS",  # image file suffixes Ultralytics reads
    "C2PSA": "ultralytics.nn.modules.block:C2PSA",  # psa family: Ultralytics' own attention, wrapped (nn/psa.py)
    "PSABlock": "ultralytics.nn.modules.block:PSABlock",
}

#: Names only newer Ultralytics has: name -> (``module:attribute``, first version with it). :func:`provides` tells
#: whether they are here; :func:`check` does not count them missing (the family needing them is listed unavailable).
OPTIONAL_NAMES = {
    "A2C2f": ("ultralytics.nn.modules.block:A2C2f", "8.3.78"),  # area family: YOLO12's area attention (nn/area.py)
    "AAttn": ("ultralytics.nn.modules.block:AAttn", "8.3.78"),
}


def provides(*names: str) -> bool:
    """Whether the installed Ultralytics has every one of the :data:`OPTIONAL_NAMES` given."""
    try:
        for name in names:
            _resolve(OPTIONAL_NAMES[name][0])
    except ImportError:
        return False
    return True


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

# NMS moved: 8.4 has ``ultralytics.utils.nms``, 8.3 ``ultralytics.utils.ops`` (same name and arguments).
_NMS_MODULES = ("ultralytics.utils.nms", "ultralytics.utils.ops")


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
    target = _NAMES.get(name) or OPTIONAL_NAMES.get(name, (None,))[0]
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


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.7, **kw) -> list:
    """Ultralytics' NMS of raw detection outputs: one ``(n, 6)`` tensor ``x1, y1, x2, y2, conf, cls`` per image."""
    for name in _NMS_MODULES:
        try:
            fn = importlib.import_module(name).non_max_suppression
        except (ImportError, AttributeError):
            continue
        return fn(prediction, conf_thres, iou_thres, **kw)
    raise _missing(f"non_max_suppression in {' or '.join(_NMS_MODULES)}", "none found")


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


def validator_state(validator: Any) -> dict:
    """What an ``on_val_end`` callback reads from a detection validator: ``im_files`` (the images validated, in
    order), ``class_map`` (class index -> the ``category_id`` its COCO JSON writes), ``max_det`` and ``conf`` (the
    NMS settings it ran with) and ``save_dir`` (where ``predictions.json`` went); missing attributes read as None."""
    args = getattr(validator, "args", None)
    dataset = getattr(getattr(validator, "dataloader", None), "dataset", None)
    class_map = getattr(validator, "class_map", None)
    save_dir = getattr(validator, "save_dir", None)
    return {
        "im_files": list(getattr(dataset, "im_files", None) or []) or None,
        "class_map": [int(c) for c in class_map] if class_map is not None else None,
        "max_det": getattr(args, "max_det", None),
        "conf": getattr(args, "conf", None),
        "save_dir": Path(save_dir) if save_dir is not None else None,
    }


#: Validation settings that change what a validation scores; :func:`final_validation_args` copies those the trainer's
#: validator held (``rect`` is left out: Ultralytics validates rectangular batches unless an exported model forbids it).
_VAL_SETTINGS = (
    "imgsz",
    "conf",
    "iou",
    "max_det",
    "single_cls",
    "classes",
    "agnostic_nms",
    "augment",
    "half",  # 8.3: the trainer's validator runs fp16 after AMP training on a GPU, its final validation too
    "quantize",  # 8.4's name for the same
    "dnn",
    "nms",
    "channels_last",
    "fraction",
)


def final_validation_args(trainer: Any) -> dict:
    """Keyword arguments that make ``YOLO(best.pt).val(data=..., split=..., **them)`` validate the way ``trainer``'s
    final validation of ``best.pt`` did, on whichever split is named.

    Ultralytics' final validation runs the trainer's own validator (arguments copied from the training arguments, then
    adjusted during training: fp16 after AMP training on a GPU) over the trainer's validation loader (twice the
    training batch, rectangular batches). Here: those validator settings that change the scores, the loader's batch
    size (rectangular batches depend on it), and the workers. A trainer without them (a DDP run's, whose validator
    lived in its subprocess) gives its training arguments and its training batch size.
    """
    validator = getattr(trainer, "validator", None)
    args = getattr(validator, "args", None) or getattr(trainer, "args", None)
    known = __getattr__("DEFAULT_CFG_DICT")
    out = {k: getattr(args, k) for k in _VAL_SETTINGS if k in known and hasattr(args, k)}
    loader = getattr(validator, "dataloader", None) or getattr(trainer, "test_loader", None)
    batch = getattr(loader, "batch_size", None) or getattr(args, "batch", None)
    if batch is not None:
        out["batch"] = int(batch)
    if hasattr(args, "workers"):
        out["workers"] = args.workers
    return out


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
    if not any(
        importlib.util.find_spec(n) and hasattr(importlib.import_module(n), "non_max_suppression") for n in _NMS_MODULES
    ):
        problems.append(f"non_max_suppression: not in {' or '.join(_NMS_MODULES)}")
    if not hasattr(importlib.import_module("ultralytics.utils.torch_utils"), "NUM_THREADS"):
        problems.append("NUM_THREADS (integration.cpu_threads): not in ultralytics.utils.torch_utils")
    root = cfg_models_root()
    if not (root / "v8" / "yolov8.yaml").is_file():
        problems.append(f"model YAMLs: {root}/v8/yolov8.yaml not found")
    return problems
