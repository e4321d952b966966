"""Checkpoints made here (no pretrained YOLO11/YOLO26 weights exist offline) and the checks that tensors arrived.

A checkpoint is a base model built from its YAML, randomised (weights and BatchNorm statistics, so a tensor that
arrived is told from one that was initialised), and saved the way Ultralytics saves one (half-precision model plus the
training metadata), then read back with Ultralytics' own loader.
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Mapping
from pathlib import Path

import torch

_KEY = re.compile(r"^model\.(\d+)\.(.+)$")


def shell(d: dict | str | Path, scale: str = "n", nc: int | None = None):
    """An Ultralytics ``BaseModel`` built by the parser alone (no stride probe: cheap). Same state-dict layout, ``load``
    and forward as the task model; the head's strides are set so inference decodes boxes as a built model would.
    ``d``: a model dict or a YAML path (its name becomes ``yaml_file``, as Ultralytics records it)."""
    import yaml
    from ultralytics.nn.tasks import BaseModel, parse_model
    from ultralytics.utils.torch_utils import initialize_weights

    if isinstance(d, (str, Path)):
        d = {**yaml.safe_load(Path(d).read_text()), "yaml_file": Path(d).name}
    d = copy.deepcopy(d)
    if nc is not None:
        d["nc"] = nc

    class Shell(BaseModel):
        def __init__(self):
            super().__init__()
            self.yaml = copy.deepcopy(d)
            self.model, self.save = parse_model({**copy.deepcopy(d), "scale": scale}, ch=3, verbose=False)
            self.names = {i: str(i) for i in range(d["nc"])}
            initialize_weights(self)  # BatchNorm eps / momentum as in every built model
            head = self.model[-1]
            if hasattr(head, "stride") and hasattr(head, "nl"):
                head.stride = torch.tensor([2.0 ** (3 + k) for k in range(head.nl)])

    return Shell().eval()


def build(d: dict, scale: str = "n"):
    """The model Ultralytics builds from ``d`` (its own class: DetectionModel, WorldModel...), in eval mode."""
    from yolo_attn._compat import model_class_for

    return model_class_for(d)({**copy.deepcopy(d), "scale": scale}, verbose=False).eval()


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating tensor drawn at random (variances positive), in place; returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=g)
            t.copy_(0.5 + r if k.endswith("running_var") else (r - 0.5) * 0.2)
    return model


def save_checkpoint(model: torch.nn.Module, path: str | Path, names: Mapping[int, str] | None = None) -> Path:
    """Save ``model`` as an Ultralytics training run does (half-precision copy under ``model``, with metadata)."""
    import ultralytics

    m = copy.deepcopy(model).half()
    m.names = dict(names or getattr(model, "names", {}) or {})
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": m,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": {},
        "date": datetime.datetime.now().isoformat(),
        "version": ultralytics.__version__,
    }
    path = Path(path)
    torch.save(ckpt, path)
    return path


def load(path: str | Path) -> torch.nn.Module:
    """The checkpoint's model, read with Ultralytics' loader (float, eval)."""
    from yolo_attn._compat import load_checkpoint

    return load_checkpoint(path)[0]


def expected_map(n_base: int, inserted=(), replaced=()) -> dict[int, int]:
    """Base row -> model row when ``inserted`` model rows were added and ``replaced`` base rows swapped in place."""
    slots = [j for j in range(n_base + len(inserted)) if j not in set(inserted)]
    return {i: j for i, j in enumerate(slots) if i not in set(replaced)}


def misplaced(src: torch.nn.Module, dst: torch.nn.Module, index_map: Mapping[int, int]) -> list[str]:
    """Checkpoint keys of mapped rows whose tensor is not, value for value, at its place in ``dst`` (empty: all are)."""
    have = dst.state_dict()
    bad = []
    for k, v in src.state_dict().items():
        m = _KEY.match(k)
        if m is None or int(m.group(1)) not in index_map:
            continue
        t = have.get(f"model.{index_map[int(m.group(1))]}.{m.group(2)}")
        if t is None or t.shape != v.shape or not torch.equal(t.float(), v.float()):
            bad.append(k)
    return bad


def kept_keys(src: torch.nn.Module, index_map: Mapping[int, int]) -> list[str]:
    """Checkpoint keys of the rows ``index_map`` keeps."""
    return [k for k in src.state_dict() if (m := _KEY.match(k)) and int(m.group(1)) in index_map]


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first output tensor of an eval forward pass."""
    with torch.no_grad():
        y = model.eval()(x)
    while isinstance(y, (list, tuple)):
        y = y[0]
    if isinstance(y, dict):
        y = next(iter(y.values()))
    return y
