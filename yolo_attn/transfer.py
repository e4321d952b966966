"""Pretrained weights for any model YAML: the checkpoint's rows are aligned with the model's, tensors follow their row.

Ultralytics matches checkpoint tensors by name (``model.<row>.<...>``) and shape, so after an inserted row every later
tensor misses its slot ("Transferred 150/381 items", ultralytics #16369, #1406, #17870). Every Ultralytics checkpoint
carries its model (layers with their ``from`` indices) and the YAML dict it was built from, so the rows can be
aligned instead of numbered:

1. **Rows.** Each row is described by its class name, its YAML arguments (unscaled, as written), its ``from`` sources
   and the shapes of its tensors. Two rows *correspond* when class and arguments agree (the output head may differ in
   its arguments: class count, extras); they are *the same* when their tensors also have equal names and shapes (the
   arguments after scaling agree).
2. **Alignment.** A longest common subsequence over the two row lists, weighted by the number of parameters of the
   rows that are the same (corresponding rows of another shape weigh little, so shapes decide), keeps the rows in
   order. A ``yolo_attn:`` record (written by :func:`yolo_attn.edit.make_variant`) adds a small bonus to the pairs it
   predicts, which settles ties between identical rows; it is evidence, not a requirement.
3. **Graph.** Every pair must read corresponding inputs: a row's sources are followed back through rows without a
   partner (inserted or replaced rows, on either side) to the nearest paired row. A pair that fails is forbidden and
   the alignment is redone until every pair passes.

Tensors move only through pairs that are the same, plus the first row and the output head when they correspond
(there Ultralytics' own loader adapts input channels and a new class count). Corresponding rows of another shape (a
checkpoint of another scale) keep their initialisation rather than receive a few biases; the log says so.

Entry points:

- :func:`load_aligned` is what the ``BaseModel.load`` hook (:func:`yolo_attn.integration.install_transfer_hook`)
  calls, so ``YOLO(cfg).load("yolov8n.pt")``, ``pretrained=`` and ``model.train(pretrained=...)`` all align. It hands
  Ultralytics a re-indexed *view* of the checkpoint model (:func:`reindex_weights`: the checkpoint's own layers at
  their new row numbers), lets it load as usual, then compares the tensors and logs one line (a warning when less
  than :data:`WARN_BELOW` of the model's Ultralytics rows received their tensors).
- :func:`transfer` loads directly and returns a :class:`TransferReport`.
- :func:`align` / :func:`layer_map` give the row map alone.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_attn import registry
from yolo_attn._compat import load_checkpoint, unwrap

__all__ = [
    "WARN_BELOW",
    "Row",
    "Alignment",
    "TransferReport",
    "rows_of",
    "align",
    "layer_map",
    "remap_state_dict",
    "transfer",
    "reindex_weights",
    "load_aligned",
    "record",
]

LOGGER = logging.getLogger("yolo_attn")
_KEY = re.compile(r"^model\.(\d+)\.(.+)$")

#: The log line becomes a warning when less than this share of the tensors of the model's own (not yolo_attn) rows
#: received a checkpoint tensor.
WARN_BELOW = 0.9

# A pair's weight: rows that are the same weigh 2 + their parameter count, corresponding rows of another shape 1; a
# pair the yolo_attn record predicts gets _HINT on top (less than any real difference, so it only settles ties).
_SAME, _SHAPE, _HINT = 2.0, 1.0, 0.5


# --------------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    """What the alignment knows about one row of a model.

    Attributes:
        index: Row number.
        name: Class name of the layer (``Conv``); None when unknown (a bare state dict).
        args: YAML arguments as written (unscaled); None when the model carries no YAML.
        sources: Absolute row numbers the row reads (None for the model input); None when unknown.
        shapes: Tensor name inside the row -> shape.
        numel: Parameter and buffer elements of the row.
    """

    index: int
    name: str | None
    args: Any
    sources: tuple[int | None, ...] | None
    shapes: dict[str, tuple[int, ...]]
    numel: int


def _norm(x: Any) -> Any:
    """YAML arguments in one spelling (tuples as lists), for comparison."""
    if isinstance(x, (list, tuple)):
        return [_norm(v) for v in x]
    return x


def _yaml_rows(y: Mapping | None) -> list | None:
    if not isinstance(y, Mapping) or not isinstance(y.get("backbone"), list):
        return None
    return list(y.get("backbone") or []) + list(y.get("head") or [])


def _absolute(i: int, f: Any) -> tuple[int | None, ...]:
    refs = f if isinstance(f, (list, tuple)) else [f]
    out = []
    for r in refs:
        a = i + r if r < 0 else r
        out.append(None if a < 0 else a)
    return tuple(out)


def rows_of(obj: Any) -> list[Row]:
    """The rows of an Ultralytics model (a ``YOLO`` object, a ``BaseModel``) or of a state dict.

    From a model, every row has its class, ``from`` sources, tensors and (when the model carries its YAML) arguments.
    A state dict gives tensors only, grouped by the ``model.<row>.`` prefix.
    """
    import torch

    if isinstance(obj, Mapping):  # a state dict
        by_row: dict[int, dict] = {}
        for k, v in obj.items():
            m = _KEY.match(k)
            if m and isinstance(v, torch.Tensor):
                by_row.setdefault(int(m.group(1)), {})[m.group(2)] = v
        n = max(by_row, default=-1) + 1
        return [
            Row(
                i,
                None,
                None,
                None,
                {k: tuple(v.shape) for k, v in by_row.get(i, {}).items()},
                sum(v.numel() for v in by_row.get(i, {}).values()),
            )
            for i in range(n)
        ]
    net = unwrap(obj)
    layers = net.model
    yrows = _yaml_rows(getattr(net, "yaml", None))
    if yrows is not None and len(yrows) != len(layers):
        yrows = None
    out = []
    for i, layer in enumerate(layers):
        sd = layer.state_dict()
        f = getattr(layer, "f", None)
        out.append(
            Row(
                i,
                type(layer).__name__,
                _norm(yrows[i][3]) if yrows is not None and len(yrows[i]) > 3 else None,
                _absolute(i, f) if isinstance(f, (int, list, tuple)) else None,
                {k: tuple(v.shape) for k, v in sd.items()},
                sum(v.numel() for v in sd.values()),
            )
        )
    return out


# --------------------------------------------------------------------------------------------------- alignment
@dataclass
class Alignment:
    """How the checkpoint's rows line up with the model's.

    Attributes:
        pairs: Checkpoint row -> model row, for every pair of corresponding rows.
        placed: The pairs whose tensors are handed over (rows that are the same; the first row and the output head
            when they correspond).
        mismatched: Pairs that correspond but differ in tensor shapes (another scale): ``(checkpoint row, model row,
            tensor, checkpoint shape, model shape)`` for the first differing tensor of each.
        dropped: Checkpoint rows without a partner (replaced or removed in the model).
        new: Model rows without a partner (inserted or replaced).
        src_rows: The checkpoint's rows.
        dst_rows: The model's rows.
    """

    pairs: dict[int, int]
    placed: dict[int, int]
    mismatched: list[tuple[int, int, str, tuple, tuple]]
    dropped: list[int]
    new: list[int]
    src_rows: list[Row] = field(repr=False, default_factory=list)
    dst_rows: list[Row] = field(repr=False, default_factory=list)

    @property
    def identity(self) -> bool:
        """Every row of both sides is placed at its own number."""
        n = len(self.src_rows)
        return n == len(self.dst_rows) and self.placed == {i: i for i in range(n)}


def _kind(s: Row, d: Row, first: bool, head: bool) -> str | None:
    """``same`` | ``head`` | ``first`` | ``shape`` for corresponding rows, None when the rows do not correspond."""
    if s.name is not None and d.name is not None and s.name != d.name:
        return None
    args_agree = head or s.args is None or d.args is None or s.args == d.args
    if not args_agree:
        return None
    if s.shapes == d.shapes:
        return "same"
    if head and s.shapes.keys() == d.shapes.keys():
        return "head"  # class count or head extras differ: Ultralytics' loader keeps what fits
    if first and s.shapes.keys() == d.shapes.keys():
        differ = [k for k in s.shapes if s.shapes[k] != d.shapes[k]]
        if all(len(s.shapes[k]) > 1 and _but_dim1(s.shapes[k]) == _but_dim1(d.shapes[k]) for k in differ):
            return "first"  # input channels differ: Ultralytics fills the first convolution
    return "shape"


def _but_dim1(shape: tuple) -> tuple:
    return shape[:1] + shape[2:]


def _weight(kind: str, s: Row) -> float:
    return _SAME + s.numel if kind in ("same", "head", "first") else _SHAPE


def _lcs(S: list[Row], D: list[Row], kinds: dict, hint: Mapping[int, int], forbidden: set) -> dict[int, int]:
    """Monotone pairing of maximal weight (ties: the earliest partner)."""
    n, m = len(S), len(D)

    def w(i: int, j: int) -> float:
        k = kinds.get((i, j))
        if k is None or (i, j) in forbidden:
            return -1.0
        return _weight(k, S[i]) + (_HINT if hint.get(i) == j else 0.0)

    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            c = max(best[i + 1][j], best[i][j + 1])
            wij = w(i, j)
            if wij >= 0:
                c = max(c, wij + best[i + 1][j + 1])
            best[i][j] = c
    pairs, i, j = {}, 0, 0
    while i < n and j < m:
        wij = w(i, j)
        if wij >= 0 and best[i][j] == wij + best[i + 1][j + 1]:
            pairs[i] = j
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1
    return pairs


def _resolver(
    rows: list[Row], partner: Mapping[int, int], side: str, opaque: frozenset = frozenset()
) -> Callable[[int | None], Any]:
    """Maps a source row to the paired row it stands for (its partner's number on the model side).

    Rows without a partner are transparent: a single-input one stands for its input. A multi-input one cannot be
    followed and stands for itself (which equals nothing on the other side).
    """
    memo: dict[int, Any] = {}

    def resolve(r: int | None) -> Any:
        if r is None:
            return "input"
        if r in memo:
            return memo[r]
        if r in partner:
            out = ("row", partner[r])
        elif r in opaque:
            out = (side, r)
        elif r < len(rows) and rows[r].sources is not None and len(rows[r].sources) == 1:
            memo[r] = (side, r)  # guards against cycles in broken input
            out = resolve(rows[r].sources[0])
        else:
            out = (side, r)
        memo[r] = out
        return out

    return resolve


def _first_bad_pair(S: list[Row], D: list[Row], pairs: Mapping[int, int]) -> tuple[int, int] | None:
    """The earliest pair whose inputs do not correspond (None: the graph agrees)."""
    rs = _resolver(S, pairs, "checkpoint")
    rd = _resolver(D, {j: j for j in pairs.values()}, "model")
    for i, j in sorted(pairs.items(), key=lambda p: p[1]):
        fs, fd = S[i].sources, D[j].sources
        if fs is None or fd is None:
            continue
        if len(fs) != len(fd) or any(rs(a) != rd(b) for a, b in zip(fs, fd)):
            return i, j
    return None


def _fed_by_placed(S: list[Row], pairs: Mapping[int, int], kinds: Mapping, i: int) -> bool:
    """Every input of checkpoint row ``i`` comes (through rows without a partner) from a row that is the same."""
    same = {a: b for a, b in pairs.items() if kinds[(a, b)] != "shape"}
    resolve = _resolver(S, same, "checkpoint", frozenset(pairs) - frozenset(same))
    return all(resolve(a) == "input" or resolve(a)[0] == "row" for a in S[i].sources or ())


def align(src: Any, dst: Any, hint: Mapping[int, int] | None = None) -> Alignment:
    """Align the rows of checkpoint ``src`` with those of model ``dst``.

    Args:
        src: The checkpoint's model, a ``YOLO`` object, a state dict, or a list of :class:`Row`.
        dst: The model (same choices).
        hint: Checkpoint row -> model row pairs to prefer among equally good alignments (default: what the
            ``yolo_attn`` records of the two models predict, see :func:`record`).

    Examples:
        >>> from yolo_attn._compat import model_class
        >>> from yolo_attn.edit import load_base, make_variant
        >>> build = model_class("detect")
        >>> base = build({**load_base("yolov8.yaml")[0], "scale": "n"}, verbose=False)
        >>> d = make_variant("yolov8.yaml", "dat", "neck")
        >>> record = d.pop("yolo_attn")  # without the record, the alignment alone finds the inserted rows
        >>> a = align(base, build({**d, "scale": "n"}, verbose=False))
        >>> a.new, a.dropped, a.placed[15], a.placed[22]
        ([16, 20, 24], [], 15, 25)
    """
    if hint is None and not isinstance(src, (list, Mapping)) and not isinstance(dst, (list, Mapping)):
        hint = _record_hint(dst, src)
    S = src if isinstance(src, list) else rows_of(src)
    D = dst if isinstance(dst, list) else rows_of(dst)
    hint = dict(hint or {})
    kinds = {}
    for i, s in enumerate(S):
        for j, d in enumerate(D):
            k = _kind(s, d, i == 0 and j == 0, i == len(S) - 1 and j == len(D) - 1)
            if k is not None:
                kinds[(i, j)] = k
    forbidden: set = set()
    while True:
        pairs = _lcs(S, D, kinds, hint, forbidden)
        bad = _first_bad_pair(S, D, pairs)
        if bad is None:
            break
        forbidden.add(bad)
    for i, j in pairs.items():
        if kinds[(i, j)] == "head" and not _fed_by_placed(S, pairs, kinds, i):
            kinds[(i, j)] = "shape"  # a head on a neck of another shape would only receive a few biases
    placed = {i: j for i, j in pairs.items() if kinds[(i, j)] != "shape"}
    mismatched = []
    for i, j in pairs.items():
        if kinds[(i, j)] == "shape":
            s, d = S[i].shapes, D[j].shapes
            k = next((k for k in s if d.get(k) != s[k]), next(iter(d), ""))
            mismatched.append((i, j, k, s.get(k, ()), d.get(k, ())))
    return Alignment(
        pairs=pairs,
        placed=placed,
        mismatched=mismatched,
        dropped=[i for i in range(len(S)) if i not in pairs and S[i].shapes],
        new=[j for j in range(len(D)) if j not in set(pairs.values())],
        src_rows=S,
        dst_rows=D,
    )


# --------------------------------------------------------------------------------------------------- the record
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
    """The ``yolo_attn`` record of a model / YOLO object / model dict, None for models yolo_attn did not edit."""
    rec = (_yaml_of(obj) or {}).get("yolo_attn")
    return dict(rec) if isinstance(rec, Mapping) else None


def _imap(rec: Mapping) -> dict[int, int]:
    return {int(k): int(v) for k, v in (rec.get("index_map") or {}).items()}


def _record_hint(dst: Any, src: Any) -> dict[int, int]:
    """Checkpoint row -> model row as the records of both sides predict it (empty: no prediction)."""
    d_rec, s_rec = record(dst), record(src)
    if d_rec is None and s_rec is None:
        return {}
    if d_rec is None:  # variant weights into its base
        return {v: k for k, v in _imap(s_rec).items()}
    if s_rec is None:  # base weights into a variant
        return _imap(d_rec)
    if d_rec.get("base") != s_rec.get("base"):
        return {}
    to_base = {v: k for k, v in _imap(s_rec).items()}  # two variants of one base: through the base rows
    d_map = _imap(d_rec)
    return {s: d_map[b] for s, b in to_base.items() if b in d_map}


def layer_map(dst: Any, src: Any) -> dict[int, int] | None:
    """Checkpoint row -> model row through which ``src``'s tensors load into ``dst`` (None: the rows line up as is)."""
    a = align(src, dst)
    return None if a.identity else dict(a.placed)


def remap_state_dict(csd: Mapping, index_map: Mapping[int, int]) -> dict:
    """``csd`` with ``model.<row>.`` keys renamed through ``index_map``; rows it does not list are left out."""
    out = {}
    for k, v in csd.items():
        m = _KEY.match(k)
        if m is None:
            out[k] = v
        elif int(m.group(1)) in index_map:
            out[f"model.{index_map[int(m.group(1))]}.{m.group(2)}"] = v
    return out


# --------------------------------------------------------------------------------------------------- the report
@dataclass
class TransferReport:
    """What a transfer did, measured on the loaded model (tensor values compared, not names counted).

    Attributes:
        transferred: Model keys that hold their checkpoint tensor.
        new: Model keys that kept their initialisation.
        skipped: Checkpoint keys that were not transferred, with the reason.
        total: Number of tensors in the model's state dict.
        source: Where the weights came from.
        target: The model's YAML name.
        index_map: Checkpoint row -> model row of the rows whose tensors were handed over.
        kept_rows: Checkpoint row -> model row of every pair of corresponding rows.
        dropped_rows: Checkpoint rows with tensors and no partner in the model (replaced or removed).
        mismatched: Corresponding rows whose tensors differ in shape (see :attr:`Alignment.mismatched`).
        own: ``(received, total)`` tensors of the model's rows that are not yolo_attn blocks (the rows a checkpoint
            of the model's base is expected to fill), the output head left out when the class count differs.
        head: ``(received, total)`` tensors of the output head when its class count differs from the checkpoint's.
        classes: ``(checkpoint, model)`` class counts when they differ.
        scales: ``(checkpoint, model)`` scale descriptions.
        rows: Model row -> class name (for the messages).
        src_names: Checkpoint row -> class name.
    """

    transferred: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    total: int = 0
    source: str = ""
    target: str = ""
    index_map: dict[int, int] = field(default_factory=dict)
    kept_rows: dict[int, int] = field(default_factory=dict)
    dropped_rows: list[int] = field(default_factory=list)
    mismatched: list[tuple] = field(default_factory=list)
    own: tuple[int, int] = (0, 0)
    head: tuple[int, int] | None = None
    classes: tuple[int, int] | None = None
    scales: tuple[str, str] = ("", "")
    rows: dict[int, str] = field(default_factory=dict)
    src_names: dict[int, str] = field(default_factory=dict)

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
    def n_source(self) -> int:
        """Tensors in the checkpoint (its ``model.<row>.`` tensors)."""
        return self.n_transferred + self.n_skipped

    @property
    def new_layers(self) -> list[int]:
        """Model rows holding tensors that were not transferred."""
        return sorted({int(m.group(1)) for k in self.new if (m := _KEY.match(k))})

    @property
    def skipped_layers(self) -> list[int]:
        """Checkpoint rows holding tensors that were not transferred."""
        return sorted({int(m.group(1)) for k in self.skipped if (m := _KEY.match(k))})

    @property
    def new_rows(self) -> list[int]:
        """Model rows without a partner in the checkpoint (inserted or replaced)."""
        paired = set(self.kept_rows.values())
        return [j for j in sorted(self.rows) if j not in paired]

    @property
    def coverage(self) -> float:
        """Share of the tensors of the model's own rows that received a checkpoint tensor (1.0 when there are none)."""
        got, total = self.own
        return got / total if total else (1.0 if self.n_transferred else 0.0)

    @property
    def ok(self) -> bool:
        """At least :data:`WARN_BELOW` of the model's own rows got their tensors."""
        return self.coverage >= WARN_BELOW

    def summary(self) -> str:
        """One line: tensors transferred, rows kept / new / dropped; what went wrong when :attr:`ok` is false."""
        src = self.source or "weights"
        dst = f" -> {self.target}" if self.target else ""
        kept = len(self.kept_rows)
        s = (
            f"yolo_attn: {src}{dst}: {self.n_transferred}/{self.n_source} checkpoint tensors transferred; "
            f"{kept} rows kept"
        )
        if self.new_rows:
            s += f", new rows {_rows(self.new_rows, self.rows)}"
        if self.dropped_rows:
            s += f", checkpoint rows not used {_rows(self.dropped_rows, self.src_names)}"
        if self.classes is not None and self.head is not None:
            s += f"; head {self.head[0]}/{self.head[1]} tensors (classes {self.classes[0]} -> {self.classes[1]})"
        if self.ok:
            return s
        got, total = self.own
        s += (
            f". Only {got}/{total} ({100 * self.coverage:.0f}%) of the tensors in this model's Ultralytics rows (all "
            f"but yolo_attn blocks) came from the checkpoint, less than {100 * WARN_BELOW:.0f}%."
        )
        if self.mismatched:
            i, j, k, a, b = self.mismatched[0]
            s += (
                f" Shapes do not match in {len(self.mismatched)} rows of the same module and arguments (row {j} "
                f"{self.rows.get(j, '')} {k}: {tuple(a)} in the checkpoint, {tuple(b)} in the model)"
            )
            if self.scales[0] != self.scales[1]:
                s += f": the checkpoint is {self.scales[0]}, the model {self.scales[1]}"
            s += "; those rows keep their initialisation."
        lost = [j for j in self.new_rows if self.rows.get(j) and not _is_ours(self.rows[j])]
        if lost:
            s += f" Model rows {_rows(lost, self.rows)} have no counterpart in the checkpoint (another base model?)."
        return s + " Check that the checkpoint was trained on this model's base and scale."

    __str__ = summary


def _rows(rows: Sequence[int], names: Mapping[int, str], limit: int = 12) -> str:
    items = [f"{r} {names[r]}" if names.get(r) else str(r) for r in rows]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _is_ours(name: str) -> bool:
    """A yolo_attn block (registered), which a checkpoint of the base cannot hold."""
    return name in registry.block_names()


def _scale(y: Mapping | None) -> str:
    if not isinstance(y, Mapping):
        return "of unknown scale"
    scales, scale = y.get("scales"), y.get("scale")
    if isinstance(scales, Mapping) and scales:
        assumed = scale not in scales
        scale = next(iter(scales)) if assumed else scale  # what parse_model assumes
        d, w, _ = (list(scales[scale]) + [None] * 3)[:3]
        return f"scale {scale}{' (assumed)' * assumed} (depth {d}, width {w})"
    if "depth_multiple" in y or "width_multiple" in y:
        return f"depth {y.get('depth_multiple', 1.0)}, width {y.get('width_multiple', 1.0)}"
    return "of unknown scale"


def _nc(net: Any) -> int | None:
    head = net.model[-1] if hasattr(net, "model") and len(net.model) else None
    nc = getattr(head, "nc", None)
    return int(nc) if isinstance(nc, int) else None


def _label(obj: Any, fallback: str, weights: bool = True) -> str:
    """The file a model came from: its checkpoint (``weights``), else the YAML it was built from."""
    cands = [getattr(obj, "pt_path", None) if weights else None, (_yaml_of(obj) or {}).get("yaml_file")]
    for cand in cands:
        if cand:
            return Path(str(cand)).name
    return fallback


def _measure(a: Alignment, src: Any, net: Any, csd: Mapping, source: str) -> TransferReport:
    """Compare the loaded model's tensors with the checkpoint's, through the alignment."""
    import torch

    dst_sd = net.state_dict()
    transferred, skipped, matched = [], {}, set()
    for k, v in csd.items():
        m = _KEY.match(k)
        if m is None:
            t = k
        else:
            i = int(m.group(1))
            if i not in a.pairs:
                skipped[k] = "row replaced or removed in the model"
                continue
            if i not in a.placed:
                skipped[k] = "row of another shape (scale)"
                continue
            t = f"model.{a.placed[i]}.{m.group(2)}"
        have = dst_sd.get(t)
        if have is None:
            skipped[k] = "no such tensor in the model"
        elif tuple(have.shape) != tuple(v.shape):
            skipped[k] = "shape differs"
        elif not torch.equal(have.detach().cpu().float(), v.detach().cpu().float()):
            skipped[k] = "not loaded"
        else:
            transferred.append(t)
            matched.add(t)
    names = {r.index: r.name or "" for r in a.dst_rows}
    src_names = {r.index: r.name or "" for r in a.src_rows}
    nc_src, nc_dst = _nc(src) if src is not None else None, _nc(net)
    classes = (nc_src, nc_dst) if nc_src is not None and nc_dst is not None and nc_src != nc_dst else None
    head_row = len(a.dst_rows) - 1
    own_got = own_total = head_got = head_total = 0
    for k in dst_sd:
        m = _KEY.match(k)
        if m is None:
            continue
        j = int(m.group(1))
        if _is_ours(names.get(j, "")):
            continue
        if classes is not None and j == head_row:
            head_total += 1
            head_got += k in matched
        else:
            own_total += 1
            own_got += k in matched
    return TransferReport(
        transferred=transferred,
        new=[k for k in dst_sd if k not in matched],
        skipped=skipped,
        total=len(dst_sd),
        source=source,
        target=_label(net, "", weights=False),
        index_map=dict(a.placed),
        kept_rows=dict(a.pairs),
        dropped_rows=list(a.dropped),
        mismatched=list(a.mismatched),
        own=(own_got, own_total),
        head=(head_got, head_total) if classes is not None else None,
        classes=classes,
        scales=(_scale(_yaml_of(src)) if src is not None else "", _scale(_yaml_of(net))),
        rows=names,
        src_names=src_names,
    )


def _log(rep: TransferReport) -> None:
    from yolo_attn import _compat  # Ultralytics' logger: the stock CLI shows it

    if rep.ok:
        _compat.LOGGER.info(rep.summary())
    else:
        _compat.warn(rep.summary())


# --------------------------------------------------------------------------------------------------- loading
def _source(weights: Any) -> tuple[Any, Mapping, str]:
    """(checkpoint model or None, its state dict, label) for a path, checkpoint dict, module or state dict."""
    import torch

    if isinstance(weights, (str, Path)):
        model, _ = load_checkpoint(weights)
        return model, model.float().state_dict(), Path(str(weights)).name
    if isinstance(weights, Mapping):
        cand = weights.get("ema") or weights.get("model")
        if isinstance(cand, torch.nn.Module):
            return cand, cand.float().state_dict(), _label(cand, "checkpoint dict")
        if all(isinstance(v, torch.Tensor) for v in weights.values()):
            return None, weights, "state dict"
        raise TypeError("weights dict is neither an Ultralytics checkpoint (with 'model'/'ema') nor a state dict")
    if isinstance(weights, torch.nn.Module):
        src = unwrap(weights)
        return src, src.float().state_dict(), _label(src, type(src).__name__)
    raise TypeError(f"unsupported weights type {type(weights).__name__}; pass a path, checkpoint dict or module")


def _is_rows_model(m: Any) -> bool:
    import torch

    return isinstance(m, torch.nn.Module) and isinstance(getattr(m, "model", None), torch.nn.Sequential)


def transfer(model: Any, weights: Any, index_map: Mapping[int, int] | None = None, verbose: bool = True):
    """Load ``weights`` into ``model`` through the row alignment and report what moved.

    Args:
        model: A YOLO object or Ultralytics model (any YAML: generated, hand-written, a base).
        weights: Checkpoint path (``yolov8n.pt``), checkpoint dict, model / YOLO object, or state dict.
        index_map: Checkpoint row -> model row, used instead of the alignment.
        verbose: Log the summary line (a warning when little transferred).

    Returns:
        TransferReport: counts, keys, kept / new / dropped rows.

    Examples:
        >>> from yolo_attn._compat import model_class
        >>> from yolo_attn.edit import load_base, make_variant
        >>> build = model_class("detect")
        >>> base = build({**load_base("yolov8.yaml")[0], "scale": "n"}, verbose=False)  # or YOLO("yolov8n.pt")
        >>> variant = build({**make_variant("yolov8.yaml", "dat", "sppf_before"), "scale": "n"}, verbose=False)
        >>> rep = transfer(variant, base, verbose=False)
        >>> rep.n_transferred == len(base.state_dict()), rep.new_rows, rep.ok  # only the inserted row starts fresh
        (True, [9], True)
    """
    net = unwrap(model)
    src, csd, label = _source(weights)
    a = align(src if src is not None else dict(csd), net)
    if index_map is not None:
        im = {int(k): int(v) for k, v in index_map.items()}
        a.pairs, a.placed, a.mismatched = dict(im), dict(im), []
        a.dropped = [r.index for r in a.src_rows if r.index not in im and r.shapes]
        a.new = [r.index for r in a.dst_rows if r.index not in set(im.values())]
    dst_sd = net.state_dict()
    load = {k: v for k, v in remap_state_dict(csd, a.placed).items() if k in dst_sd and v.shape == dst_sd[k].shape}
    net.load_state_dict(load, strict=False)
    rep = _measure(a, src, net, csd, label)
    if verbose:
        _log(rep)
    return rep


def _reindexed(src: Any, placed: Mapping[int, int], n_rows: int) -> Any:
    """A shallow copy of ``src`` whose ``model`` holds src's placed layers at their new rows (placeholders elsewhere).

    No tensor is copied: the layers are the checkpoint's own objects, so Ultralytics' loader sees a model shaped like
    the target (state-dict names, ``model[-1]`` is the head) and does everything else as usual.
    """
    import torch

    rows = src.model
    layers = [torch.nn.Identity() for _ in range(n_rows)]
    for s, t in placed.items():
        if s < len(rows) and 0 <= t < n_rows:
            layers[t] = rows[s]
    view = copy.copy(src)
    view._modules = dict(src._modules)  # the copy must not rebind the original's children
    view.model = torch.nn.Sequential(*layers)
    if callable(getattr(src, "is_fused", None)):
        view.is_fused = src.is_fused  # counted on the placeholders, a sparse view would look fused to Ultralytics
    return view


def _plan(weights: Any, model: Any) -> tuple[Any, Alignment | None, Any]:
    """(weights to hand Ultralytics, the alignment or None, the checkpoint model or None)."""
    src = (weights.get("ema") or weights.get("model")) if isinstance(weights, Mapping) else weights
    if not (_is_rows_model(src) and _is_rows_model(model)):
        return weights, None, None
    a = align(src, model)
    if a.identity:
        return weights, a, src
    view = _reindexed(src, a.placed, len(model.model))
    names, src_names = getattr(model, "names", None), getattr(src, "names", None)
    if (
        isinstance(src_names, Mapping)
        and names == {i: str(i) for i in range(len(src_names))}
        and len(a.placed) == len(a.src_rows)
    ):
        # Ultralytics adopts the checkpoint's class names only when *every* tensor transfers, which new rows prevent;
        # a model that keeps every checkpoint row is the checkpoint's model (same class count, YAML placeholders).
        model.names = dict(src_names)
    if isinstance(weights, Mapping):
        out = dict(weights)
        for k in ("ema", "model"):
            if out.get(k) is src:
                out[k] = view
        return out, a, src
    return view, a, src


def reindex_weights(weights: Any, model: Any, verbose: bool = False) -> Any:
    """``weights`` as ``model``'s ``BaseModel.load`` should receive them: the checkpoint's rows at the model's numbers.

    Returns ``weights`` itself when the rows already line up (or the weights are not an Ultralytics model); otherwise
    a view of the checkpoint model (or a checkpoint dict holding it) whose state-dict names follow the model's rows,
    with the rows that have no place (or another shape) left out. ``verbose`` logs the planned alignment.
    """
    out, a, src = _plan(weights, model)
    if verbose and a is not None:
        LOGGER.info(
            f"yolo_attn: checkpoint rows -> model rows {a.placed}; new rows {a.new}; checkpoint rows not used "
            f"{a.dropped}; rows of another shape {[m[1] for m in a.mismatched]}"
        )
    return out


def load_aligned(model: Any, weights: Any, load: Callable[[Any], Any], verbose: bool = True) -> Any:
    """Load ``weights`` into ``model`` with ``load`` (Ultralytics' ``BaseModel.load``) after aligning the rows.

    The ``BaseModel.load`` hook calls this. After ``load`` ran, the model's tensors are compared with the
    checkpoint's and one line is logged (a warning below :data:`WARN_BELOW`, see :class:`TransferReport`).
    Returns what ``load`` returns.
    """
    given, a, src = _plan(weights, model)
    out = load(given)
    if a is not None and verbose:
        _log(_measure(a, src, model, src.state_dict(), _label(src, "weights")))
    return out
