"""Insert a registered attention block into an Ultralytics model YAML at a named position.

Ultralytics wires layers by row index (``from``) and matches pretrained weights by ``model.<index>.*``, so adding a
row by hand means renumbering every later reference (ultralytics #16369, #1406, #17870). :func:`make_variant` does the
renumbering and records the map it used under a ``yolo_attn:`` key of the variant. Baseline weights reach the variant
without that record too: :mod:`yolo_attn.transfer` aligns a checkpoint's rows with the model's (the record is one more
piece of evidence), so hand-written YAMLs load pretrained weights the same way.

Positions (the placements described by BoTNet, the DAT post and the YOLO attention write-ups):

- ``backbone``: the last CSP block of the backbone (C2f in YOLOv8, C3k2 in YOLO11, BoTNet's c5 stage) is *replaced*
  by the family's CSP block (BoT3 / DAT3 / CoAt3), keeping its width and repeats: the attention sits inside the
  residual bottlenecks.
- ``sppf_before`` / ``sppf_after``: one block on the SPPF input / output.
- ``neck``: one block after each neck CSP block that feeds the head (``neck_p3``, ``neck_p4``, ``neck_p5`` pick
  one level); everything downstream of that CSP block, including the PAN path, reads the block.
- ``head``: one block on each head input, read by the head only.

Inserted blocks use the ``insert`` role (residual, zero-initialised branch: identity at init), so a variant with
transferred weights computes the baseline's detections before training. Replacement does not preserve function.

Bases: any Ultralytics model YAML (YOLOv3-v10, YOLO11, YOLO12, YOLO26, their seg / pose / obb / cls / semantic / depth
variants, RT-DETR, YOLO-World, YOLOE) or your own. A position the base does not have (no SPPF in YOLO12, no CSP block
in RT-DETR's HGNet backbone, no multi-input head in a classifier) raises :class:`EditError` listing the ones it has
(:func:`available_positions`). Variants are validated with the base's own model class (``WorldModel``, ``YOLOEModel``,
``RTDETRDetectionModel``... see :func:`yolo_attn._compat.model_class_for`).

Which blocks exist is the registry's business (:func:`yolo_attn.registry.families`): a family registered by a plugin
is inserted, generated and named exactly like the package's own.

Examples:
    >>> from yolo_attn.edit import make_variant, variant_name
    >>> d = make_variant("yolov8.yaml", "dat", "neck")
    >>> d["yolo_attn"]["inserted"], [d["head"][i - 10] for i in d["yolo_attn"]["inserted"]][0]
    ([16, 20, 24], [-1, 1, 'DATBlock', [256, 3]])
    >>> variant_name("yolov8.yaml", "dat", "neck")  # save_variant(d, "yolov8-dat-neck.yaml") writes it
    'yolov8-dat-neck'
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_attn import integration, registry
from yolo_attn._compat import cfg_models_root

__all__ = [
    "POSITIONS",
    "BASES",
    "EditError",
    "families",
    "make_variant",
    "save_variant",
    "load_variant",
    "dump_variant",
    "variant_name",
    "available_positions",
    "resolve_block",
    "load_base",
    "generate",
    "available_bases",
    "check_generated",
    "attention_rows",
    "ATTENTION_MODULES",
]

POSITIONS = ("backbone", "sppf_before", "sppf_after", "neck", "head")
#: The bases `yolo-attn generate` writes variants of (those the installed Ultralytics ships: 8.3.65 has no yolo12.yaml
#: or yolo26.yaml). YOLO12 has no SPPF: its variants are the positions it has (backbone, neck, head).
BASES = ("yolov8.yaml", "yolo11.yaml", "yolo26.yaml", "yolo12.yaml")

# Row modules treated as "CSP blocks" (the backbone position replaces the last one of these in the backbone); GELAN's
# RepNCSPELAN4 / ELAN1 (YOLOv9) are CSP blocks too.
CSP_MODULES = frozenset(
    {"C1", "C2", "C2f", "C3", "C3x", "C3Ghost", "C3k2", "C2fCIB", "C3TR", "A2C2f", "RepNCSPELAN4", "ELAN1"}
)
SPPF_MODULES = frozenset({"SPPF", "SPP", "SPPELAN"})
# How a row changes the stride, from its YAML arguments (for the levels of `neck_pN` and of blocks taking a level).
_STRIDED = frozenset({"Conv", "DWConv", "GhostConv", "RepConv", "LightConv", "SCDown", "Conv2"})  # stride: args[2]
_HALVING = frozenset({"ADown", "AConv", "Focus"})
_UPSAMPLING = {"ConvTranspose": 2, "nn.ConvTranspose2d": 1, "DWConvTranspose2d": 1}  # stride: args[2], else this
_NO_C2 = frozenset({"Concat", "nn.Upsample", "Index", "TorchVision"})  # first argument is not an output width


class EditError(ValueError):
    """A variant cannot be made (unknown position, position missing in the base, unknown block...)."""


@dataclass
class _Insert:
    before: int  # old row index the new row goes right in front of (len(rows) = append)
    src: int  # old row index the new row reads
    consumers: frozenset[int] | None  # old rows whose references to `src` now read the new row (None: all later)
    row: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- base YAMLs
def load_base(base: str | Path | dict) -> tuple[dict, str]:
    """Return (model dict, base label) for a path, an Ultralytics model name ("yolov8.yaml") or a dict.

    Ultralytics names are found in the installed ``ultralytics/cfg/models`` tree (a scale letter in the name, as in
    ``yolov8n.yaml``, selects that scale of ``yolov8.yaml``); yolo_attn's own cfg folder is searched too. The label is
    what the variant records as its base: the bare name for packaged YAMLs (machine independent), else the path.
    """
    if isinstance(base, dict):
        d = copy.deepcopy(base)
        label = Path(str(d.pop("yaml_file", "") or "<dict>")).name
        return d, (d.get("yolo_attn") or {}).get("base", label)
    p = Path(base)
    if p.is_file():
        return _read_yaml(p), str(base)
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    m = re.fullmatch(r"(yolo(?:e-)?v?\d+)([nslmx])(.*)(\.ya?ml)", name)
    candidates = [name] + ([m.group(1) + m.group(3) + m.group(4)] if m else [])
    roots = [cfg_models_root(), integration.cfg_dir()]
    for cand in candidates:
        for root in roots:
            hit = _find(root, cand)
            if hit is not None:
                d = _read_yaml(hit)
                if cand != name:  # "yolov8n.yaml" -> yolov8.yaml at scale n
                    d["scale"] = m.group(2)
                return d, name
    raise EditError(
        f"base model YAML {str(base)!r} not found: not a file, and not a model YAML shipped with Ultralytics "
        f"({cfg_models_root()}) or yolo_attn. Use e.g. 'yolov8.yaml', 'yolo11.yaml' or a path."
    )


@functools.lru_cache(maxsize=8)
def _index(root: Path, stamp: float) -> dict[str, Path]:
    """File name -> path of the YAMLs under ``root`` (the first in sorted order). Keyed by the folder's modification
    time, so a file written into it (``yolo-attn generate``) is seen; Ultralytics' own tree does not change."""
    out: dict[str, Path] = {}
    for q in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
        out.setdefault(q.name, q)
    return out


def _find(root: Path, name: str) -> Path | None:
    hit = _index(root, root.stat().st_mtime if root.is_dir() else 0.0).get(name)
    return hit if hit is not None and hit.is_file() else None


@functools.lru_cache(maxsize=256)
def _parsed(path: Path, stamp: float) -> dict:
    return yaml.safe_load(path.read_text())


def _read_yaml(path: Path) -> dict:
    """The YAML at ``path`` (parsed once per modification time; the caller gets its own copy)."""
    path = Path(path).resolve()
    return copy.deepcopy(_parsed(path, path.stat().st_mtime))


def _rows(d: dict) -> list[list]:
    return [list(r) for r in (d.get("backbone") or [])] + [list(r) for r in (d.get("head") or [])]


def _froms(f) -> list[int]:
    return list(f) if isinstance(f, (list, tuple)) else [f]


def _abs(i: int, f: int) -> int | None:
    """Absolute row index of reference ``f`` in row ``i`` (None: the model input)."""
    a = i + f if f < 0 else f
    return None if a < 0 else a


def _head_index(rows: list[list]) -> int | None:
    """The output head: the last row, when it reads several rows (Detect, Segment, Pose, OBB...)."""
    if rows and isinstance(rows[-1][0], (list, tuple)) and len(rows[-1][0]) > 1:
        return len(rows) - 1
    return None


def _out_width(rows: list[list], i: int) -> int:
    """The YAML (unscaled) output width of row ``i``, which an inserted block repeats as its ``c2``.

    Width scaling is the same function for every base module, so a block given the producer's YAML width gets the
    producer's scaled width at every scale (``c1 == c2``, the identity-at-init condition).
    """
    f, _, m, args = rows[i]
    if m not in _NO_C2 and not str(m).startswith(("nn.", "torchvision.")) and args and isinstance(args[0], int):
        return args[0]
    raise EditError(f"cannot insert after row {i} {rows[i]!r}: its output width is not its first argument")


def _levels(rows: list[list]) -> list[float]:
    """Stride of every row's output relative to the input, from the YAML alone."""
    s: list[float] = []
    for i, (f, _, m, args) in enumerate(rows):
        fs = _froms(f)
        src = _abs(i, fs[-1] if m == "CBFuse" else fs[0])  # CBFuse resizes to its last input
        st = 1.0 if src is None else s[src]
        if m in _STRIDED and len(args) > 2 and isinstance(args[2], int):
            st *= args[2]
        elif m in _HALVING:
            st *= 2
        elif m == "HGStem":  # RT-DETR's HGNetv2 stem: two stride-2 convolutions
            st *= 4
        elif m == "ResNetLayer" and len(args) > 3:  # [c1, c2, s, is_first, n]: the first one adds a stride-2 pool
            st *= (args[2] if isinstance(args[2], int) else 1) * (2 if args[3] else 1)
        elif m in ("nn.MaxPool2d", "nn.AvgPool2d") and args:
            stride = args[1] if len(args) > 1 and args[1] is not None else args[0]
            st *= stride if isinstance(stride, int) else 1
        elif m in _UPSAMPLING:
            stride = args[2] if len(args) > 2 else _UPSAMPLING[m]
            st /= stride if isinstance(stride, int) and stride > 0 else 1
        elif m == "nn.Upsample" and len(args) > 1 and isinstance(args[1], (int, float)):
            st /= args[1]
        s.append(st)
    return s


def _level_of(stride: float) -> int:
    """Pyramid level of a stride (8 -> 3); raises for strides that are not powers of two."""
    lv = math.log2(stride) if stride > 0 else float("nan")
    if not (lv == lv and abs(lv - round(lv)) < 1e-6):
        raise EditError(f"cannot tell the pyramid level of a row with stride {stride}")
    return round(lv)


def _head_levels(rows: list[list]) -> dict[str, int]:
    """``{"p3": old row index, ...}`` for the head inputs."""
    h = _head_index(rows)
    if h is None:
        return {}
    strides = _levels(rows)
    out = {}
    for k, f in enumerate(_froms(rows[h][0])):
        a = _abs(h, f)
        try:
            level = _level_of(strides[a])
        except EditError:  # a stride the YAML alone does not tell: number the inputs instead
            level = k
        out[f"p{level}"] = a
    return out


def _last_backbone_csp(d: dict, rows: list[list]) -> int | None:
    nb = len(d.get("backbone") or [])
    hits = [i for i in range(nb) if rows[i][2] in CSP_MODULES]
    return hits[-1] if hits else None


def _sppf_index(d: dict, rows: list[list]) -> int | None:
    hits = [i for i, r in enumerate(rows) if r[2] in SPPF_MODULES]
    return hits[-1] if hits else None


def available_positions(base: str | Path | dict) -> list[str]:
    """The positions ``base`` supports, neck levels included (e.g. ``neck_p3``)."""
    d, _ = load_base(base)
    rows = _rows(d)
    out = []
    if _last_backbone_csp(d, rows) is not None:
        out.append("backbone")
    if _sppf_index(d, rows) is not None:
        out += ["sppf_before", "sppf_after"]
    levels = _head_levels(rows)
    if levels:
        out += ["neck", *(f"neck_{k}" for k in levels), "head"]
    return out


# --------------------------------------------------------------------------------------------------- blocks
def families(packaged: bool = False) -> dict[str, dict[str, str]]:
    """``{family: {role: block name}}`` once every block is registered (the package's and ``YOLO_ATTN_PLUGINS``').

    Args:
        packaged: Only families whose blocks are defined in yolo_attn itself (what the packaged ``cfg/`` holds).
    """
    integration.register()
    fams = registry.families()
    if packaged:
        own = {sp.name for sp in registry.specs() if sp.cls.__module__.startswith("yolo_attn.")}
        fams = {f: roles for f, roles in fams.items() if set(roles.values()) <= own}
    return fams


def _choices() -> str:
    fams = families()
    names = [sp.name for sp in registry.specs() if sp.role in ("insert", "csp")]
    off = "".join(f" ({f} unavailable: {why})" for f, why in registry.unavailable().items())
    return (
        f"families: {', '.join(sorted(fams))}{off}; registered insert/csp blocks: {', '.join(sorted(names)) or 'none'}"
    )


def resolve_block(block: str, position: str) -> registry.BlockSpec:
    """The registered block a family name or block name means at ``position``.

    A family ("dat") picks its CSP block for ``backbone`` and its insert block elsewhere. A block name must be a
    registered block with role ``insert`` or ``csp``; ``backbone`` replaces a CSP block, so it needs role ``csp``.
    """
    want = "csp" if position == "backbone" else "insert"
    fams = families()
    missing = registry.unavailable()
    if block in missing:
        raise EditError(
            f"family {block!r} is unavailable here: it {missing[block]}; families: {', '.join(sorted(fams))}"
        )
    if block in fams:
        name = fams[block].get(want)
        if name is None:
            raise EditError(f"family {block!r} has no {want!r} block for position {position!r}; {_choices()}")
        try:
            return registry.get_spec(name)
        except KeyError:
            raise EditError(
                f"family {block!r} means block {name!r} at position {position!r}, but {name!r} is not registered "
                f"(its module failed to import?); {_choices()}"
            ) from None
    try:
        spec = registry.get_spec(block)
    except KeyError as e:
        if "unavailable" in str(e):  # a block of a family this Ultralytics cannot build
            raise EditError(f"{e.args[0]}; {_choices()}") from None
        hint = registry.closest(block, [*fams, *registry.block_names()])
        raise EditError(
            f"block {block!r} is not registered with yolo_attn"
            + (f" (did you mean {' or '.join(hint)}?)" if hint else "")
            + f"; {_choices()}"
        ) from None
    if spec.role not in ("insert", "csp"):
        raise EditError(f"block {block!r} has role {spec.role!r}; positions need role 'insert' or 'csp'; {_choices()}")
    if position == "backbone" and spec.role != "csp":
        csp = fams.get(spec.family or "", {}).get("csp")
        raise EditError(
            f"position 'backbone' replaces the last backbone CSP block and needs a block with role 'csp'; "
            f"{block!r} has role {spec.role!r}" + (f" (use {csp!r} or family {spec.family!r})" if csp else "")
        )
    return spec


def _check_position(position: str) -> None:
    if position in POSITIONS or re.fullmatch(r"neck_p\d+", position):
        return
    raise EditError(f"unknown position {position!r}; valid positions: {', '.join(POSITIONS)} (neck also as neck_pN)")


# --------------------------------------------------------------------------------------------------- editing
def _plan(d: dict, rows: list[list], spec: registry.BlockSpec, position: str, args: list, n: int | None):
    """(inserts, replacements {old index: new row}) for ``position``."""
    label = d.get("yaml_file") or "the base"
    valid = available_positions(d)

    def missing(what: str) -> EditError:
        choices = ", ".join(valid) or "none (it has no CSP block, SPPF layer or multi-input head)"
        return EditError(f"position {position!r} needs {what}, which {label} does not have; valid: {choices}")

    strides = _levels(rows)

    def block_args(width: int, at: int) -> list:
        """``[c2, *args]``; a block that takes a ``level`` gets the row's pyramid level at its place too."""
        return spec.yaml_args(width, _level_of(strides[at]) if spec.takes_level else None, args)

    def block_row(src: int, frm: int = -1) -> list:
        return [frm, 1 if n is None else n, spec.name, block_args(_out_width(rows, src), src)]

    if position == "backbone":
        i = _last_backbone_csp(d, rows)
        if i is None:
            raise missing(f"a CSP block ({', '.join(sorted(CSP_MODULES))}) in its backbone")
        f, reps, _, old_args = rows[i]
        return [], {i: [f, reps if n is None else n, spec.name, block_args(_out_width(rows, i), i)]}
    if position in ("sppf_before", "sppf_after"):
        s = _sppf_index(d, rows)
        if s is None:
            raise missing(f"an SPPF layer ({', '.join(sorted(SPPF_MODULES))})")
        if position == "sppf_after":
            return [_Insert(s + 1, s, None, block_row(s))], {}
        src = _abs(s, _froms(rows[s][0])[0])
        if src is None:
            raise missing("an SPPF layer that reads an earlier row")
        return [_Insert(s, src, frozenset({s}), block_row(src))], {}
    levels = _head_levels(rows)
    if not levels:
        raise missing("an output head reading several rows (Detect, Segment, Pose, OBB)")
    h = _head_index(rows)
    if position == "head":
        return [_Insert(h, a, frozenset({h}), block_row(a, a)) for a in levels.values()], {}
    # neck / neck_pN: after each CSP block feeding the head; everything downstream reads the block
    picked = levels if position == "neck" else {position[5:]: levels.get(position[5:])}
    if None in picked.values():
        raise missing(f"a head input at level {position[5:]}")
    inserts = []
    for a in picked.values():
        inserts.append(_Insert(a + 1, a, None, block_row(a)))
    return inserts, {}


def _apply(d: dict, rows: list[list], inserts: list[_Insert], replaced: dict[int, list]):
    """Build the new row list; returns (backbone rows, head rows, index_map, inserted new indices)."""
    nb = len(d.get("backbone") or [])
    plan: list[tuple[str, int]] = []
    for i in range(len(rows) + 1):
        plan += [("ins", k) for k, ins in enumerate(inserts) if ins.before == i]
        if i < len(rows):
            plan.append(("old", i))
    new_of = {item: j for j, item in enumerate(plan)}

    def target(i_old: int, a: int) -> int:
        """New index that row ``i_old`` must read for its reference to old row ``a``."""
        for k, ins in enumerate(inserts):
            if ins.src == a and ins.before <= i_old and (ins.consumers is None or i_old in ins.consumers):
                return new_of[("ins", k)]
        return new_of[("old", a)]

    def encode(j: int, t: int, relative: bool) -> int:
        return -1 if relative and t == j - 1 else t

    new_rows, sections = [], []
    for j, (kind, x) in enumerate(plan):
        if kind == "old":
            f, reps, m, a = replaced.get(x, rows[x])
            fs = []
            for ref in _froms(f):
                src = _abs(x, ref)
                fs.append(ref if src is None else encode(j, target(x, src), ref < 0))
            row = [fs if isinstance(f, (list, tuple)) else fs[0], reps, m, copy.deepcopy(a)]
            sections.append("backbone" if x < nb else "head")
        else:
            ins = inserts[x]
            row = copy.deepcopy(ins.row)
            row[0] = encode(j, new_of[("old", ins.src)], True)
            sections.append(sections[-1] if sections else "backbone")
        new_rows.append(row)
    index_map = {i: new_of[("old", i)] for i in range(len(rows)) if i not in replaced}
    inserted = [new_of[("ins", k)] for k in range(len(inserts))]
    backbone = [r for r, s in zip(new_rows, sections) if s == "backbone"]
    head = [r for r, s in zip(new_rows, sections) if s == "head"]
    return backbone, head, index_map, sorted(inserted)


def make_variant(
    base: str | Path | dict,
    block: str,
    position: str,
    args: Sequence[Any] | None = None,
    *,
    n: int | None = None,
    validate: bool = True,
) -> dict:
    """Return the model dict of ``base`` with ``block`` at ``position``, every reference remapped.

    Args:
        base: Path to a model YAML, an Ultralytics model name ("yolov8.yaml", "yolo11.yaml") or a model dict.
        block: A registered family (``yolo-attn info`` lists them) or a block name with role ``insert`` or ``csp``.
        position: One of :data:`POSITIONS`, or ``neck_p3`` / ``neck_p4`` / ``neck_p5`` for one neck level.
        args: Extra block arguments after ``c2`` (the YAML row gets ``[c2, *args]``). Blocks registered with
            ``takes_level`` (DATBlock, DAT3: key stride per pyramid level) get each row's level filled in at the
            ``level`` parameter's place (:meth:`~yolo_attn.registry.BlockSpec.yaml_args`), so ``neck`` gives P3, P4
            and P5 their own settings.
        n: YAML repeats of the new rows (default 1 for inserted blocks, the replaced block's repeats for ``backbone``).
        validate: Build the variant (scale n, or the base's scale) and check its layer count.

    Returns:
        The variant's model dict; its ``yolo_attn`` key records base, block, position, args, ``index_map`` (old row
        index -> new, for kept rows), ``inserted`` (new indices of added rows) and ``replaced`` (old indices).

    Raises:
        EditError: (a ``ValueError``) unknown position or block, or a position the base does not have; the message
            lists the valid choices.
    """
    _check_position(position)
    d, label = load_base(base)
    prior = d.pop("yolo_attn", None)  # base is itself a variant: the new record maps from *its* base
    d.pop("yaml_file", None)
    rows = _rows(d)
    spec = resolve_block(block, position)
    args = list(args or [])
    inserts, replaced = _plan({**d, "yaml_file": label}, rows, spec, position, args, n)
    backbone, head, index_map, inserted = _apply(d, rows, inserts, replaced)
    out = {k: v for k, v in d.items() if k not in ("backbone", "head")}
    out["backbone"], out["head"] = backbone, head
    rec = {
        "base": label,
        "block": spec.name,
        "family": spec.family,
        "position": position,
        "args": args,
        "index_map": index_map,
        "inserted": inserted,
        "replaced": sorted(replaced),
    }
    if prior:
        rec = _compose(prior, rec)
    out["yolo_attn"] = rec
    if validate:
        _validate(out, len(rows) + len(inserted))
    return out


def _compose(prior: dict, rec: dict) -> dict:
    """Record of an edit applied to a variant, expressed against the original base (so transfer still works)."""
    m = rec["index_map"]
    inv_prior = {int(v): int(k) for k, v in prior["index_map"].items()}
    index_map = {int(k): m[int(v)] for k, v in prior["index_map"].items() if int(v) in m}
    inserted = sorted({m[int(x)] for x in prior.get("inserted", []) if int(x) in m} | set(rec["inserted"]))
    replaced = sorted(set(prior.get("replaced", [])) | {inv_prior[x] for x in rec["replaced"] if x in inv_prior})
    earlier = [*prior.get("previous", []), {k: prior[k] for k in ("block", "family", "position", "args")}]
    return {
        **rec,
        "base": prior["base"],
        "index_map": index_map,
        "inserted": inserted,
        "replaced": replaced,
        "previous": earlier,
    }


def _validate(d: dict, want: int) -> None:
    """Build the variant; its layer count must be the base's plus the inserted rows."""
    import torch

    from yolo_attn._compat import model_class_for

    integration.register()
    dd = copy.deepcopy(d)
    dd.setdefault("scale", next(iter(dd.get("scales") or {"n": 0})))
    dd.setdefault("yaml_file", f"<yolo_attn variant of {d['yolo_attn']['base']}>")
    with torch.no_grad():
        model = model_class_for(d)(dd, ch=dd.get("ch", 3), verbose=False)
    if len(model.model) != want:
        raise EditError(f"variant built with {len(model.model)} layers, expected {want}")


# --------------------------------------------------------------------------------------------------- files
def variant_name(base: str | Path | dict, family: str, position: str) -> str:
    """File stem of a variant: the base's stem, the family, the position (``yolo26-dat-sppf_before``).

    A scale letter in the base name stays where Ultralytics reads it (``yolo26n.yaml`` -> ``yolo26n-dat-...``). YOLO11
    variants keep the name this package gave them first, ``yolov11-...``; every other base keeps Ultralytics' spelling.
    """
    if isinstance(base, dict):
        base = base.get("yaml_file") or "model"
    stem = Path(str(base)).stem
    stem = re.sub(r"^yolo11(?=[nslmx]?(-|$))", "yolov11", stem)
    return f"{stem}-{family.lower()}-{position}"


def _scalar(v) -> str:
    """One YAML flow scalar/collection; plain words stay unquoted when they read back as the same string."""
    if isinstance(v, str):
        return v if re.fullmatch(r"[A-Za-z_][\w.\-]*", v) and yaml.safe_load(v) == v else json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_scalar(x)}" for k, x in v.items()) + "}"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _row_comments(d: dict) -> list[str]:
    rec = d.get("yolo_attn") or {}
    inv = {v: k for k, v in (rec.get("index_map") or {}).items()}
    inserted = set(rec.get("inserted") or [])
    replaced = set(rec.get("replaced") or [])
    rows = _rows(d)
    strides = _levels(rows)
    head = _head_index(rows)
    out = []
    for j in range(len(rows)):
        st = strides[j]
        pow2 = st >= 1 and float(st).is_integer() and int(st) & (int(st) - 1) == 0
        lvl = f" P{round(math.log2(st))}/{int(st)}" if pow2 and j != head else ""
        if j in inserted:
            note = "inserted by yolo_attn"
        elif j not in inv:
            old = sorted(replaced)
            note = f"replaces base row {old[0]}" if len(old) == 1 else "new"
        else:
            note = "" if inv[j] == j else f"base row {inv[j]}"
        out.append(f"# {j}{lvl}" + (f", {note}" if note else ""))
    return out


def dump_variant(d: dict) -> str:
    """The variant as readable YAML text: one flow-style row per line, indexed, then the ``yolo_attn`` record."""
    rec = d.get("yolo_attn") or {}
    lines = []
    if rec:
        lines += [
            f"# Ultralytics {rec.get('base')} with {rec.get('block')} at position '{rec.get('position')}'.",
            "# Generated by yolo_attn.edit (`yolo-attn generate` / scripts/generate_cfgs.py): edit the generator, not "
            "this file.",
            "# Checkpoints of the base load with model.load() or pretrained=: yolo_attn.transfer aligns their rows with",
            "# these rows; the yolo_attn record at the end (base row -> row) is one more piece of evidence.",
            "",
        ]
    special = ("backbone", "head", "yolo_attn", "yaml_file")
    for k, v in d.items():
        if k in special:
            continue
        if isinstance(v, dict):
            lines.append(f"{k}:")
            lines += [f"  {_scalar(kk)}: {_scalar(vv)}" for kk, vv in v.items()]
        else:
            lines.append(f"{k}: {_scalar(v)}")
    comments = _row_comments(d)
    nb = len(d.get("backbone") or [])
    for sec, rows, off in (("backbone", d.get("backbone") or [], 0), ("head", d.get("head") or [], nb)):
        lines += ["", f"{sec}:"]
        body = [f"  - {_scalar(list(r))}" for r in rows]
        width = max((len(b) for b in body), default=0) + 1
        lines += [b.ljust(width) + comments[off + i] for i, b in enumerate(body)]
    if rec:
        lines += ["", "yolo_attn:"]
        lines += [f"  {k}: {_scalar(v)}" for k, v in rec.items()]
    return "\n".join(lines) + "\n"


def save_variant(d: dict, path: str | Path) -> Path:
    """Write ``d`` as readable YAML to ``path`` (folders created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump_variant(d))
    return p


def load_variant(path: str | Path) -> dict:
    """The model dict of a variant YAML (its ``yolo_attn`` record included)."""
    return yaml.safe_load(Path(path).read_text())


def generate(
    out_dir: str | Path,
    bases: Iterable[str] = BASES,
    blocks: Iterable[str] | None = None,
    positions: Iterable[str] = POSITIONS,
    validate: bool = True,
) -> list[Path]:
    """Write every (base, block, position) variant to ``out_dir`` as ``<variant_name>.yaml``; returns the paths.

    ``blocks`` are families or block names (default: every registered family). Bases the installed Ultralytics does
    not ship (``yolo26.yaml`` before 8.4) are left out, and so are positions a base does not have (YOLO12's SPPF).
    """
    paths = []
    for base in available_bases(bases):
        have = available_positions(base)
        for block in list(families()) if blocks is None else blocks:
            for pos in [p for p in positions if p in have]:
                d = make_variant(base, block, pos, validate=validate)
                paths.append(save_variant(d, Path(out_dir) / f"{variant_name(base, block, pos)}.yaml"))
    return paths


#: Ultralytics modules with attention inside (YOLO11 / YOLO26's C2PSA, YOLOv10's PSA, YOLO12's area attention,
#: RT-DETR's AIFI, YOLO-World's text attention...): a base holding one is not an attention-free baseline.
ATTENTION_MODULES = frozenset(
    {"C2PSA", "C2fPSA", "PSA", "A2C2f", "C3TR", "TransformerBlock", "AIFI", "C2fAttn", "ImagePoolingAttn"}
)


def attention_rows(model: str | Path | dict) -> list[tuple[int, str]]:
    """``(row, module)`` of every row of ``model`` with attention inside (Ultralytics' own or a registered block).

    Examples:
        >>> attention_rows("yolo11n.yaml"), attention_rows("yolov8n.yaml")
        ([(10, 'C2PSA')], [])
    """
    d, _ = load_base(model)
    ours = set(registry.block_names())
    return [(i, r[2]) for i, r in enumerate(_rows(d)) if r[2] in ATTENTION_MODULES or r[2] in ours]


def available_bases(bases: Iterable[str] = BASES) -> list[str]:
    """The ``bases`` that can be loaded here (Ultralytics names the installed version ships, or existing files)."""
    out = []
    for b in bases:
        try:
            load_base(b)
        except EditError:
            continue
        out.append(b)
    return out


def check_generated(cfg: str | Path, validate: bool = False, blocks: Iterable[str] | None = None) -> list[str]:
    """Names of generated variant files in ``cfg`` that are missing or differ from what the generator writes.

    ``blocks`` default: the package's own families (what the packaged ``cfg/`` holds).
    """
    import tempfile

    blocks = list(families(packaged=True)) if blocks is None else list(blocks)
    with tempfile.TemporaryDirectory() as tmp:
        bad = []
        for p in generate(tmp, blocks=blocks, validate=validate):
            have = Path(cfg) / p.name
            if not have.is_file() or have.read_text() != p.read_text():
                bad.append(p.name)
        return bad
