"""What to train: runs, their keys, and plans of bases x blocks x positions x seeds.

A *run* is (model, data, training overrides, seed, optional pretrained weights). The model is either a model YAML /
Ultralytics name used as is (the baseline, or any YAML you name), or a base plus (block, position, args), turned into
a variant by :func:`yolo_attn.edit.make_variant` when the run starts (so an invalid block argument fails that run,
not the plan). Each run's definition is hashed (:attr:`Run.key`): model names, the content of model YAMLs, block,
position, args, data, seed, overrides and the content of the pretrained file. Measurement settings (GFLOPs size,
benchmark batch) are not part of the key. The key is how a store recognises a run, so its definition never changes:
a store written by an earlier version resumes without redoing its runs.

Examples:
    >>> from yolo_attn.plan import make_plan, parse_overrides
    >>> plan = make_plan("shapes.yaml", blocks=["dat"], positions=["sppf_before", "neck"], seeds=[0],
    ...                  train=parse_overrides(["epochs=1", "imgsz=64"]))
    >>> [(r.name, r.baseline) for r in plan]
    [('yolov8n', True), ('yolov8n-dat-sppf_before', False), ('yolov8n-dat-neck', False)]
    >>> plan[1].train, len(plan[1].key)
    ({'epochs': 1, 'imgsz': 64}, 16)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from yolo_attn.store import jsonable

LOGGER = logging.getLogger("yolo_attn")

__all__ = ["Run", "check_eval_splits", "data_splits", "make_plan", "model_dict", "parse_overrides"]

#: The split a run's final validation scores by default (Ultralytics' own choice; ``best.pt`` is always chosen on it).
DEFAULT_EVAL_SPLIT = "val"
#: Split keys a dataset YAML may hold (Ultralytics renames ``validation:`` to ``val:``).
SPLIT_KEYS = ("train", "val", "test", "minival")


def _file_sha(path: str | os.PathLike | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _file_stamp(path: str | os.PathLike | None) -> tuple[int, int, int] | None:
    """(inode, size, modification time in ns) of a file, None when ``path`` is not one (an Ultralytics name)."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def model_dict(model: str) -> dict | None:
    """The model dict Ultralytics would build ``model`` from (file path or name such as ``yolov8n-dat.yaml``)."""
    from yolo_attn._compat import yaml_model_load

    try:
        d = yaml_model_load(model)
    except Exception:  # not a model YAML Ultralytics can find: the key falls back to the file's bytes
        return None
    d.pop("yaml_file", None)
    return d


def _model_sha(model: str) -> str | None:
    d = model_dict(model)
    if d is None:
        return _file_sha(model)
    return hashlib.sha256(json.dumps(jsonable(d), sort_keys=True).encode()).hexdigest()[:16]


def _abspath(p: str | None) -> str | None:
    """Absolute path for an existing file/folder; anything else (an Ultralytics name) unchanged."""
    if p is None:
        return None
    return str(Path(p).resolve()) if Path(p).exists() else str(p)


def parse_overrides(items: Iterable[str]) -> dict:
    """Ultralytics-style ``key=value`` strings -> dict, values typed as the ``yolo`` CLI types them.

    Raises:
        ValueError: A malformed item, or a key Ultralytics does not know (with the closest keys).
    """
    from yolo_attn._compat import DEFAULT_CFG_DICT, smart_value
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


def data_splits(data: str | os.PathLike) -> tuple[Path, tuple[str, ...]]:
    """The dataset YAML ``data`` resolves to, and the splits it names with a value (``train``, ``val``, ``test``...).

    A name that is not a file (``coco8.yaml``) is looked up among Ultralytics' packaged dataset YAMLs, as Ultralytics
    does. A key left empty (``test:`` with nothing after it, as in Ultralytics' ``coco128.yaml``) is no split.

    Raises:
        FileNotFoundError: ``data`` is neither a file nor a packaged dataset YAML.
        ValueError: The file is not a YAML mapping.

    Examples:
        >>> import tempfile
        >>> from yolo_attn.data import make_shapes_dataset
        >>> path, splits = data_splits(make_shapes_dataset(tempfile.mkdtemp(), n_train=1, n_val=1, n_test=1, imgsz=16))
        >>> path.name, splits
        ('shapes.yaml', ('train', 'val', 'test'))
    """
    import yaml

    path = Path(data)
    if not path.is_file():
        from yolo_attn._compat import cfg_models_root

        packaged = cfg_models_root().parent / "datasets" / path.name
        if path.suffix not in (".yaml", ".yml") or not packaged.is_file():
            raise FileNotFoundError(f"dataset YAML {str(data)!r} not found")
        path = packaged
    d = yaml.safe_load(path.read_text())
    if not isinstance(d, dict):
        raise ValueError(f"dataset YAML {path} is not a mapping of keys (train:, val:, names: ...)")
    if "validation" in d and "val" not in d:
        d["val"] = d["validation"]
    return path.resolve(), tuple(k for k in SPLIT_KEYS if d.get(k))


def check_eval_splits(runs: Iterable[Run]) -> None:
    """Raise before anything trains when a run's dataset lacks its :attr:`Run.eval_split`.

    Runs scored on ``val`` are not checked (Ultralytics requires ``val:`` of every dataset and says so itself). A
    dataset YAML this machine cannot read (a Ray cluster's node-local path) is left to the run, which checks again on
    its node before training.

    Raises:
        ValueError: The message names each dataset YAML without its split and the splits it has.
    """
    problems, seen = [], set()
    for run in runs:
        if run.eval_split == DEFAULT_EVAL_SPLIT or (run.data, run.eval_split) in seen:
            continue
        seen.add((run.data, run.eval_split))
        try:
            path, splits = data_splits(run.data)
        except FileNotFoundError as e:
            LOGGER.warning("%s; its %r split is checked when its runs start", e, run.eval_split)
            continue
        if run.eval_split not in splits:
            problems.append(f"{path} has no {run.eval_split!r} split (it has: {', '.join(splits) or 'none'})")
    if problems:
        raise ValueError(
            "cannot score the final validation on the requested split: "
            + "; ".join(problems)
            + ". Add the split to the dataset YAML (e.g. test: images/test) or choose one it has (--eval-split)"
        )


@dataclasses.dataclass
class Run:
    """One planned training run.

    Attributes:
        model: Base model: Ultralytics name (``yolov8n.yaml``) or YAML path. Trained as is when ``block`` is None.
        data: Dataset YAML.
        block: Family (``bot``, ``dat``...) or registered block name to insert; None for a plain model run.
        position: Insertion point (see :data:`yolo_attn.edit.POSITIONS`).
        args: Extra block arguments after ``c2``.
        seed: Training seed (Ultralytics ``seed=``).
        train: Training overrides passed to ``model.train(**train)``.
        pretrained: Weights transferred into the model before training (through the variant's index map).
        baseline: This run is the reference the report compares variants of the same base against.
        name: Readable label (derived when empty).
        pretrained_run: Key of the run (in the same store) that trained ``pretrained``. The key then names that run
            and the file's content instead of its path: moving the store keeps the key, retraining that run (new
            weights) changes it.
        warm_new_blocks: Epochs that train only the inserted blocks (every other row frozen with Ultralytics'
            ``freeze``) before the run's own schedule starts from those weights; 0: none. Part of the key (only
            when non-zero) and of the name (``+warm3``).
        eval_split: Dataset split of the run's final validation (its recorded mAP and per-image matches). Training
            and the choice of ``best.pt`` stay on ``val``; ``"test"`` reports on images nothing was chosen on.
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
    pretrained_run: str | None = None
    warm_new_blocks: int = 0
    eval_split: str = DEFAULT_EVAL_SPLIT

    def __post_init__(self) -> None:
        self.args = list(self.args or [])
        self.train = dict(self.train or {})
        for k in ("seed", "data", "pretrained"):
            if k in self.train:
                raise ValueError(f"give {k!r} as a Run field, not as a training override")
        if "split" in self.train:  # Ultralytics 8.4 would choose best.pt on that split
            raise ValueError(
                f"split={self.train['split']!r} as a training override would change the split best.pt is chosen on; "
                f"give eval_split={self.train['split']!r} (--eval-split) to score the final validation on it instead"
            )
        if (self.block is None) != (self.position is None):
            raise ValueError(f"block and position go together (got block={self.block!r}, position={self.position!r})")
        if self.pretrained_run is not None and not self.pretrained:
            raise ValueError(f"pretrained_run={self.pretrained_run!r} needs the weights file it trained as pretrained")
        if (
            isinstance(self.warm_new_blocks, bool)
            or not isinstance(self.warm_new_blocks, int)
            or self.warm_new_blocks < 0
        ):
            raise ValueError(f"warm_new_blocks={self.warm_new_blocks!r} must be an integer >= 0 (epochs)")
        if self.warm_new_blocks and self.block is None:
            raise ValueError("warm_new_blocks needs inserted blocks (a block and a position) to train first")
        if self.eval_split not in SPLIT_KEYS:
            raise ValueError(f"eval_split must be one of {', '.join(SPLIT_KEYS)}, got {self.eval_split!r}")
        if not self.name:
            self.name = self.label()

    def label(self) -> str:
        """``yolov8n`` for a plain model, ``yolov8n-dat-neck[8]`` for a block at a position (with its args)."""
        stem = Path(str(self.model)).stem
        if self.block is None:
            return stem
        from yolo_attn.edit import variant_name

        name = variant_name(Path(str(self.model)).name, self.block, self.position)
        if self.args:
            name += "[" + ",".join(str(a) for a in self.args) + "]"
        return name + (f"+warm{self.warm_new_blocks}" if self.warm_new_blocks else "")

    def definition(self) -> dict:
        """What the key hashes: everything that changes the trained model (not its name, not the measurements)."""
        d = {
            "model": str(self.model),
            "model_sha": _model_sha(self.model),  # content, not name: editing a YAML makes a new run
            "block": self.block,
            "position": self.position,
            "args": jsonable(self.args),
            "data": str(self.data),
            "seed": int(self.seed),
            "train": jsonable(dict(sorted(self.train.items()))),
            "pretrained": self.pretrained,
            "pretrained_sha": _file_sha(self.pretrained),
        }
        if self.pretrained_run is not None:  # only then: keys of runs without one are what they always were
            d["pretrained"] = f"run:{self.pretrained_run}"
        if self.warm_new_blocks:  # likewise
            d["warm_new_blocks"] = int(self.warm_new_blocks)
        if self.eval_split != DEFAULT_EVAL_SPLIT:  # likewise: runs scored on val keep their keys
            d["eval_split"] = self.eval_split
        return d

    @property
    def key(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`definition` (the store's identity of this run).

        Computed once and kept while nothing it hashes changes: the fields (compared by value) and the model YAML and
        pretrained files (compared by size and modification time; their content is what is hashed). The driver asks
        for the key many times per run, and :meth:`definition` parses the YAML and hashes the weights.
        """
        stamp = (repr(dataclasses.astuple(self)), _file_stamp(self.model), _file_stamp(self.pretrained))
        cached = self.__dict__.get("_key")
        if cached is None or cached[0] != stamp:
            blob = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
            cached = (stamp, hashlib.sha256(blob.encode()).hexdigest()[:16])
            self.__dict__["_key"] = cached  # not a dataclass field: never in to_dict(), ==, or repr
        return cached[1]

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping) -> Run:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def make_plan(
    data: str | Sequence[str],
    bases: Sequence[str] = ("yolov8n.yaml",),
    blocks: Sequence[str] | None = None,
    positions: Sequence[str] = ("sppf_before",),
    seeds: Sequence[int] = (0,),
    train: Mapping | None = None,
    pretrained: str | None = None,
    baseline: bool = True,
    block_args: Mapping[str, Sequence] | None = None,
    models: Sequence[str] = (),
    pretrained_run: str | None = None,
    warm_new_blocks: int = 0,
    eval_split: str = DEFAULT_EVAL_SPLIT,
) -> list[Run]:
    """datasets x seeds x bases x (baseline + blocks x positions), in that order (a seed's runs together), plus
    ``models``.

    Args:
        data: Dataset YAML (made absolute when it exists), or several: the whole plan is repeated for each.
        bases: Base models (Ultralytics names or YAML paths).
        blocks: Families or registered block names (default: every registered family).
        positions: Insertion points.
        seeds: One run of everything per seed.
        train: Ultralytics training overrides (``{"epochs": 3, "imgsz": 320}``).
        pretrained: Checkpoint transferred into every run (``yolov8n.pt``), baseline included.
        baseline: Include each base trained as is (the report's reference).
        block_args: Extra block arguments per block name (``{"dat": [8]}``).
        models: Extra model YAMLs trained as they are (no insertion). With no ``bases``, the first of them is the
            baseline (when ``baseline`` is true).
        pretrained_run: Key of the run that trained ``pretrained`` (see :attr:`Run.pretrained_run`).
        warm_new_blocks: Epochs training only the inserted blocks before each variant's schedule (see
            :attr:`Run.warm_new_blocks`); baselines and ``models`` train as usual.
        eval_split: Split every run's final validation scores (see :attr:`Run.eval_split`); :func:`check_eval_splits`
            (called by the sweep before anything trains) checks that each dataset has it.

    Raises:
        ValueError: The plan holds the same run twice.
    """
    from yolo_attn import registry
    from yolo_attn.edit import families

    fams = families()  # registers the package's blocks (and plugins'), so the registry knows the unavailable ones
    blocks = list(fams) if blocks is None else list(blocks)
    missing = {b: why for b, why in registry.unavailable().items() if b in blocks}
    if missing:
        raise ValueError("; ".join(f"family {b!r} is unavailable here: it {why}" for b, why in missing.items()))
    datasets = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not datasets:
        raise ValueError("make_plan needs at least one dataset YAML, got none")
    pretrained = _abspath(pretrained)
    train = dict(train or {})
    block_args = dict(block_args or {})
    common = {"train": train, "pretrained": pretrained, "pretrained_run": pretrained_run, "eval_split": eval_split}
    plan = []
    for data in map(_abspath, datasets):
        for seed in seeds:
            for base in bases:
                base = _abspath(base)
                if baseline:
                    plan.append(Run(base, data, seed=seed, baseline=True, **common))
                for block in blocks:
                    for pos in positions:
                        args = list(block_args.get(block, []))
                        plan.append(
                            Run(base, data, block, pos, args, seed=seed, warm_new_blocks=warm_new_blocks, **common)
                        )
            for j, m in enumerate(models):
                is_base = baseline and not bases and j == 0
                plan.append(Run(_abspath(m), data, seed=seed, baseline=is_base, **common))
    keys = [r.key for r in plan]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        names = sorted({r.name for r in plan if r.key in dup})
        raise ValueError(f"the plan holds the same run twice: {', '.join(names)}")
    return plan
