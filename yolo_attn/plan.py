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
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from yolo_attn.store import jsonable

__all__ = ["Run", "make_plan", "model_dict", "parse_overrides"]


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

    def __post_init__(self) -> None:
        self.args = list(self.args or [])
        self.train = dict(self.train or {})
        for k in ("seed", "data", "pretrained"):
            if k in self.train:
                raise ValueError(f"give {k!r} as a Run field, not as a training override")
        if (self.block is None) != (self.position is None):
            raise ValueError(f"block and position go together (got block={self.block!r}, position={self.position!r})")
        if self.pretrained_run is not None and not self.pretrained:
            raise ValueError(f"pretrained_run={self.pretrained_run!r} needs the weights file it trained as pretrained")
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
        return name

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

    Raises:
        ValueError: The plan holds the same run twice.
    """
    if blocks is None:
        from yolo_attn.edit import families

        blocks = list(families())
    datasets = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not datasets:
        raise ValueError("make_plan needs at least one dataset YAML, got none")
    pretrained = _abspath(pretrained)
    train = dict(train or {})
    block_args = dict(block_args or {})
    common = {"train": train, "pretrained": pretrained, "pretrained_run": pretrained_run}
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
                        plan.append(Run(base, data, block, pos, args, seed=seed, **common))
            for j, m in enumerate(models):
                is_base = baseline and not bases and j == 0
                plan.append(Run(_abspath(m), data, seed=seed, baseline=is_base, **common))
    keys = [r.key for r in plan]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        names = sorted({r.name for r in plan if r.key in dup})
        raise ValueError(f"the plan holds the same run twice: {', '.join(names)}")
    return plan
