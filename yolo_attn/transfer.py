"""Pretrained weights for edited models: baseline tensors follow their layer through the variant's index map.

Ultralytics matches checkpoint tensors by name (``model.<row>.<...>``) and shape, so after an inserted row every later
tensor misses its slot ("Transferred 162/419 items", ultralytics #16369, #1406, #17870; YOLOv9 PR #555 proposed a
layer map). :func:`yolo_attn.edit.make_variant` records ``index_map`` (base row -> variant row) under the variant's
``yolo_attn:`` key, which travels inside the model's ``yaml`` dict. Here the checkpoint's keys are renamed through
that map before the usual name-and-shape match; tensors of replaced rows are reported as not transferred, and new
rows keep their initialisation (inserted blocks start as identity, so the variant computes the baseline's output).

Two entry points:

- :func:`transfer` loads and returns a :class:`TransferReport` (counts, and which tensors were new or skipped).
- :func:`reindex_weights` is what the ``BaseModel.load`` hook (:func:`yolo_attn.integration.install_transfer_hook`) calls, so the places
  users already pass weights work unchanged: ``YOLO("cfg/yolov8-dat-sppf_before.yaml").load("yolov8n.pt")`` and
  ``yolo train model=cfg/yolov8-dat-sppf_before.yaml pretrained=yolov8n.pt``. It hands Ultralytics a re-indexed
  *view* of the checkpoint model (the same layer objects placed at their new row numbers), so everything else
  Ultralytics' loader does (class-count changes, first-conv channel fill, names) still applies.

A checkpoint that is itself the same variant (fine-tuning or resuming a variant) is loaded as is; a checkpoint of a
different variant of the same base goes through both maps (its own inverse, then this model's).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_attn._compat import load_checkpoint, unwrap

__all__ = ["TransferReport", "transfer", "record", "layer_map", "remap_state_dict", "reindex_weights"]

LOGGER = logging.getLogger("yolo_attn")
_KEY = re.compile(r"^model\.(\d+)\.(.+)$")


@dataclass
class TransferReport:
    """What a transfer did.

    Attributes:
        transferred: Destination keys that received a checkpoint tensor.
        new: Destination keys that kept their initialisation (no matching checkpoint tensor).
        skipped: Checkpoint keys that were not transferred, with the reason.
        total: Number of tensors in the destination state dict.
        source: Where the weights came from (path or type).
        index_map: The row map used (checkpoint row -> model row), or None when names were matched as they are.
    """

    transferred: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    total: int = 0
    source: str = ""
    index_map: dict[int, int] | None = None

    @property
    def n_transferred(self) -> int:
        return len(self.transferred)

    @property
    def n_new(self) -> int:
        return len(self.new)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def new_layers(self) -> list[int]:
        """Model rows holding tensors that were not transferred."""
        return sorted({int(m.group(1)) for k in self.new if (m := _KEY.match(k))})

    @property
    def skipped_layers(self) -> list[int]:
        """Checkpoint rows holding tensors that were not transferred."""
        return sorted({int(m.group(1)) for k in self.skipped if (m := _KEY.match(k))})

    def summary(self) -> str:
        how = "through the yolo_attn index map" if self.index_map is not None else "by name"
        s = f"Transferred {self.n_transferred}/{self.total} tensors from {self.source or 'weights'} ({how})"
        s += f"; {self.n_new} new" + (f" (layers {_ranges(self.new_layers)})" if self.new else "")
        s += f"; {self.n_skipped} checkpoint tensors not transferred"
        if self.skipped:
            s += f" (layers {_ranges(self.skipped_layers)}: {', '.join(sorted(set(self.skipped.values())))})"
        return s

    __str__ = summary


def _ranges(xs: list[int]) -> str:
    return ", ".join(str(x) for x in xs)


# --------------------------------------------------------------------------------------------------- maps
def _yaml_of(obj: Any) -> dict | None:
    """The model dict of a YOLO object, an Ultralytics model, or a dict itself."""
    if isinstance(obj, Mapping):
        return dict(obj)
    for cand in (obj, getattr(obj, "model", None)):
        y = getattr(cand, "yaml", None)
        if isinstance(y, Mapping):
            return dict(y)
    return None


def record(obj: Any) -> dict | None:
    """The ``yolo_attn`` record of a model / YOLO object / model dict, None for unedited models."""
    y = _yaml_of(obj)
    rec = (y or {}).get("yolo_attn")
    return dict(rec) if isinstance(rec, Mapping) else None


def _imap(rec: Mapping) -> dict[int, int]:
    return {int(k): int(v) for k, v in (rec.get("index_map") or {}).items()}


def _same_layout(a: Mapping, b: Mapping) -> bool:
    keys = ("base", "block", "position", "args", "inserted", "replaced", "previous")
    return _imap(a) == _imap(b) and all(a.get(k) == b.get(k) for k in keys)


def layer_map(dst: Any, src: Any = None) -> dict[int, int] | None:
    """Checkpoint row -> model row for loading ``src`` weights into ``dst`` (None: rows already line up).

    ``dst`` / ``src`` are models, YOLO objects or model dicts. ``src`` None or without a record means the checkpoint is
    the base model.
    """
    d_rec, s_rec = record(dst), record(src) if src is not None else None
    if d_rec is None:
        if s_rec is None:
            return None
        return {v: k for k, v in _imap(s_rec).items()}  # variant weights into its base: the inverse map
    if s_rec is None:
        return _imap(d_rec)
    if _same_layout(d_rec, s_rec):
        return None
    to_base = {v: k for k, v in _imap(s_rec).items()}
    d_map = _imap(d_rec)
    return {s: d_map[b] for s, b in to_base.items() if b in d_map}


def _split(csd: Mapping, lmap: Mapping[int, int] | None) -> tuple[dict, dict[str, str]]:
    """Rename ``model.<i>.*`` keys through ``lmap``; returns (renamed, dropped key -> reason)."""
    if lmap is None:
        return dict(csd), {}
    out, dropped = {}, {}
    for k, v in csd.items():
        m = _KEY.match(k)
        if m is None:
            out[k] = v
        elif int(m.group(1)) in lmap:
            out[f"model.{lmap[int(m.group(1))]}.{m.group(2)}"] = v
        else:
            dropped[k] = "row replaced or removed in the variant"
    return out, dropped


def remap_state_dict(csd: Mapping, model: Any, src: Any = None, index_map: Mapping[int, int] | None = None) -> dict:
    """``csd`` with keys renamed from the checkpoint's row numbers to ``model``'s (tensors of dropped rows removed).

    Args:
        csd: Checkpoint state dict (``model.<row>.<...>`` keys).
        model: The destination (model, YOLO object or model dict) whose ``yolo_attn`` record gives the map.
        src: The checkpoint model (or its yaml dict), to recognise variant checkpoints; None means the base model.
        index_map: Explicit row map, overriding the record.
    """
    lmap = {int(k): int(v) for k, v in index_map.items()} if index_map is not None else layer_map(model, src)
    return _split(csd, lmap)[0]


# --------------------------------------------------------------------------------------------------- loading
def _source(weights: Any) -> tuple[Any, Mapping, str]:
    """(source module or None, its state dict, label) for a path, checkpoint dict, module or state dict."""
    import torch

    if isinstance(weights, (str, Path)):
        model, _ = load_checkpoint(weights)
        return model, model.float().state_dict(), str(weights)
    if isinstance(weights, Mapping):
        cand = weights.get("ema") or weights.get("model")
        if isinstance(cand, torch.nn.Module):
            return cand, cand.float().state_dict(), "checkpoint dict"
        if all(isinstance(v, torch.Tensor) for v in weights.values()):
            return None, weights, "state dict"
        raise TypeError("weights dict is neither an Ultralytics checkpoint (with 'model'/'ema') nor a state dict")
    if isinstance(weights, torch.nn.Module):
        src = unwrap(weights)
        return src, src.float().state_dict(), getattr(src, "pt_path", None) or type(src).__name__
    raise TypeError(f"unsupported weights type {type(weights).__name__}; pass a path, checkpoint dict or module")


def _report(renamed: Mapping, dropped: Mapping, dst_sd: Mapping, source: str, lmap) -> tuple[dict, TransferReport]:
    """(tensors to load, report): name and shape must both match, as in Ultralytics' ``intersect_dicts``."""
    load, skipped = {}, dict(dropped)
    back = {v: k for k, v in (lmap or {}).items()}
    for k, v in renamed.items():
        if k not in dst_sd:
            skipped[_orig_key(k, back)] = "no such tensor in the model"
        elif tuple(v.shape) != tuple(dst_sd[k].shape):
            skipped[_orig_key(k, back)] = "shape differs"
        else:
            load[k] = v
    rep = TransferReport(
        transferred=list(load),
        new=[k for k in dst_sd if k not in load],
        skipped=skipped,
        total=len(dst_sd),
        source=source,
        index_map=dict(lmap) if lmap is not None else None,
    )
    return load, rep


def _orig_key(k: str, back: Mapping[int, int]) -> str:
    m = _KEY.match(k)
    return f"model.{back[int(m.group(1))]}.{m.group(2)}" if m and int(m.group(1)) in back else k


def transfer(model: Any, weights: Any, index_map: Mapping[int, int] | None = None, verbose: bool = True):
    """Load ``weights`` into ``model`` through the index map and report what moved.

    Args:
        model: A YOLO object or Ultralytics model built from a variant YAML (or any model: no record, no remap).
        weights: Checkpoint path (``yolov8n.pt``), checkpoint dict, model / YOLO object, or state dict.
        index_map: Checkpoint row -> model row; default: from the model's ``yolo_attn`` record (see
            :func:`layer_map`).
        verbose: Log the summary line.

    Returns:
        TransferReport: ``n_transferred`` / ``n_new`` / ``n_skipped``, with the keys.

    Examples:
        >>> from yolo_attn._compat import model_class
        >>> from yolo_attn.edit import load_base, make_variant
        >>> build = model_class("detect")
        >>> base = build({**load_base("yolov8.yaml")[0], "scale": "n"}, verbose=False)  # or YOLO("yolov8n.pt")
        >>> variant = build({**make_variant("yolov8.yaml", "dat", "sppf_before"), "scale": "n"}, verbose=False)
        >>> rep = transfer(variant, base, verbose=False)
        >>> rep.n_transferred == len(base.state_dict()), rep.new_layers  # only the inserted row starts fresh
        (True, [9])
    """
    net = unwrap(model)
    src, csd, label = _source(weights)
    lmap = {int(k): int(v) for k, v in index_map.items()} if index_map is not None else layer_map(net, src)
    renamed, dropped = _split(csd, lmap)
    dst_sd = net.state_dict()
    load, rep = _report(renamed, dropped, dst_sd, label, lmap)
    net.load_state_dict(load, strict=False)
    if verbose:
        LOGGER.info(rep.summary())
    return rep


# --------------------------------------------------------------------------------------------------- the load hook
def _reindexed(src, lmap: Mapping[int, int], n_rows: int):
    """A shallow copy of ``src`` whose ``model`` holds src's layers at their new rows (placeholders elsewhere).

    No tensor is copied: the layers are the checkpoint's own objects, so Ultralytics' loader sees a model shaped like
    the variant (state-dict names, ``model[-1]`` is the head) and does everything else as usual.
    """
    import torch

    rows = src.model
    layers = [torch.nn.Identity() for _ in range(n_rows)]
    for s, t in lmap.items():
        if s < len(rows) and 0 <= t < n_rows:
            layers[t] = rows[s]
    view = copy.copy(src)
    view._modules = dict(src._modules)  # the copy must not rebind the original's children
    view.model = torch.nn.Sequential(*layers)
    return view


def reindex_weights(weights: Any, model: Any, verbose: bool = True) -> Any:
    """``weights`` as ``model``'s ``BaseModel.load`` should receive them: re-indexed when the model is a variant.

    Returns ``weights`` itself when no remap applies (unedited model, same-variant checkpoint, or weights that are not
    an Ultralytics model); otherwise a module (or a checkpoint dict with its ``model`` / ``ema`` entries) whose
    state-dict names follow the model's rows. Logs which tensors move and which rows are new, and gives a model
    with placeholder class names the checkpoint's names (as Ultralytics does when all tensors transfer).
    """
    import torch

    if record(model) is None and not _has_record(weights):
        return weights
    src = (weights.get("ema") or weights.get("model")) if isinstance(weights, Mapping) else weights
    if not (isinstance(src, torch.nn.Module) and isinstance(getattr(src, "model", None), torch.nn.Sequential)):
        return weights
    lmap = layer_map(model, src)
    if lmap is None:
        return weights
    n_rows = len(model.model)
    view = _reindexed(src, lmap, n_rows)
    names, src_names = getattr(model, "names", None), getattr(src, "names", None)
    if isinstance(src_names, Mapping) and names == {i: str(i) for i in range(len(src_names))}:
        # Ultralytics adopts the checkpoint's class names only when *every* tensor transfers, which the new rows
        # prevent; the variant of a base is the base's model, so take them here (same class count, YAML placeholders).
        model.names = dict(src_names)
    if verbose:
        renamed, dropped = _split(src.state_dict(), lmap)
        _, rep = _report(renamed, dropped, model.state_dict(), getattr(src, "pt_path", None) or "weights", lmap)
        kept = sum(1 for k in src.state_dict() if (m := _KEY.match(k)) and int(m.group(1)) in lmap)
        rec = record(model) or {}
        what = f"{rec.get('block')} at {rec.get('position')} of {rec.get('base')}" if rec else "the base model"
        msg = f"yolo_attn: pretrained rows remapped for {what}: {rep.n_transferred}/{kept} tensors of kept rows match"
        if rep.new:
            msg += f", new rows {_ranges(rep.new_layers)} ({rep.n_new} tensors) keep their initialisation"
        if rep.skipped:
            msg += f", {rep.n_skipped} checkpoint tensors not transferred (rows {_ranges(rep.skipped_layers)})"
        _log(msg)
    if isinstance(weights, Mapping):
        out = dict(weights)
        for k in ("ema", "model"):
            if out.get(k) is src:
                out[k] = view
        return out
    return view


def _has_record(weights: Any) -> bool:
    src = (weights.get("ema") or weights.get("model")) if isinstance(weights, Mapping) else weights
    return record(src) is not None if src is not None and not isinstance(src, Mapping) else False


def _log(msg: str) -> None:
    from yolo_attn._compat import LOGGER as UL_LOGGER  # the stock CLI shows this logger

    UL_LOGGER.info(msg)
