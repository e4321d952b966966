"""Block registry: YAML name -> how Ultralytics' ``parse_model`` must call the class.

A registered block gets the row semantics of Ultralytics' built-in blocks:
``[from, n, Block, [c2, *extras]]`` builds ``Block(c1, c2', [n',] *extras)`` where ``c1`` is the input's channel
count, ``c2'`` is ``c2`` width-scaled and capped by ``max_channels`` (as for ``C2f``) and ``n'`` is the depth-scaled
repeat count, passed as the third argument when the block is declared ``repeats=True`` (otherwise Ultralytics makes
``n`` copies). This module is torch-free; :mod:`yolo_attn.integration` reads it and wires it into Ultralytics.

The registry is also the only place that knows which block *families* exist: tooling (insertion, generation, ablation,
benchmarks, the report) asks :func:`families` instead of naming them, so a new family is one file of blocks and one
import line (see :mod:`yolo_attn.nn`).

Examples:
    >>> import torch
    >>> from yolo_attn.registry import get_spec, register_block, unregister_block
    >>> @register_block(repeats=True, family="toy", role="csp")
    ... class ToyCSP(torch.nn.Module):
    ...     def __init__(self, c1, c2, n=1, e=0.5):
    ...         super().__init__()
    ...         self.cv = torch.nn.Conv2d(c1, c2, 1)
    >>> get_spec("ToyCSP").family, families()["toy"]
    ('toy', {'csp': 'ToyCSP'})
    >>> _ = unregister_block("ToyCSP")
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "AttnTap",
    "BlockSpec",
    "Probe",
    "ROLES",
    "families",
    "family_origin",
    "unavailable",
    "register_block",
    "unregister_block",
    "get_spec",
    "specs",
    "block_names",
    "closest",
    "temporary",
]


ROLES = ("insert", "csp", "layer")


@dataclass(frozen=True)
class AttnTap:
    """Where forward hooks can read an attention layer's queries and keys (:mod:`yolo_attn.explain` draws its maps).

    Names only, resolved on the built module, so a family declares this next to its classes without tooling imports.
    The layer is expected to have ``num_heads`` and ``dim_head`` attributes and to scale its logits by
    ``dim_head ** -0.5``; heads are the outer factor of the channels (``(heads, dim_head)``).

    Attributes:
        layer: Class name of the attention layers inside the block (``"MHSA"``).
        q: The layer's submodule whose output is the query projection ``(B, heads * dim_head, H, W)``; the queries
            are its pixels, row-major.
        k: The submodule whose output is the key projection ``(B, heads * dim_head, Hk, Wk)``. A fused projection
            (``q == k``) outputs q, k and v stacked along channels, in that order.
        bias: The position-bias submodule (called once per forward, it returns a
            :class:`~yolo_attn.nn.attention.RelBias`); ``""`` for none (a missing submodule also means none).
        points: A method of the layer that maps the query projection's output to its sampled key points
            ``(B * groups, Hk, Wk, 2)``, normalised ``(x, y)`` (deformable attention); ``""`` when the keys are the
            pixels.
    """

    layer: str
    q: str
    k: str
    bias: str = ""
    points: str = ""


@dataclass(frozen=True)
class Probe:
    """How tooling reads a block from the outside (:mod:`yolo_attn.explain`: utilisation, gates, attention maps).

    Attributes:
        residual: Dotted path of the submodule whose forward is ``y = x + branch(x)``: ``""`` the block itself (an
            insert block), ``"m"`` a CSP block's inner stack of residual attention layers. ``None``: not measured.
        gates: ``(label, parameter-name suffix)`` pairs; the mean absolute value of the block's parameters whose
            name ends with the suffix is reported (BoT: the zero-initialised BN scale, ``"cv2.bn.weight"``).
        attention: The attention layers whose maps can be drawn (empty: the block shows no map).
    """

    residual: str | None = ""
    gates: tuple[tuple[str, str], ...] = ()
    attention: AttnTap | None = None


@dataclass(frozen=True)
class BlockSpec:
    """How a YAML-facing block is built by ``parse_model``, and what tooling needs to know about it.

    Attributes:
        name: The name used in model YAMLs (defaults to the class name).
        cls: The ``nn.Module`` subclass; constructor ``(c1, c2, [n,] *extras)``.
        repeats: The YAML ``n`` is passed as the third constructor argument (like ``C2f``) instead of stacking copies.
        family: Block family for tooling (``"bot"``, ``"dat"``, ``"coat"``...), ``None`` for helpers and test blocks.
        role: ``"insert"`` (residual, starts as identity when c1 == c2: inserted after a row), ``"csp"`` (replaces a
            CSP block such as C2f / C3k2) or ``"layer"`` (anything else).
        takes_level: The block's constructor has a ``level`` parameter, the pyramid level it runs at (3 for P3...),
            which the YAML editor fills in per row (DAT: the key stride follows the level).
        bench_levels: Pyramid levels at which ``yolo-attn bench`` measures the block (empty: not benchmarked).
        probe: How :mod:`yolo_attn.explain` reads the block (:class:`Probe`); None: the generic reading (the
            residual ratio of an ``insert`` block, nothing for the other roles).
        origin: Where the block's module comes from when it is not this package's own idea, e.g. ``"Ultralytics
            8.4.190 C2PSA / PSABlock"`` for the comparator families (the report prints it); ``None``: ours.
        available: The block can be built here. An unavailable block (its module needs a newer Ultralytics) stays
            out of :func:`specs`, :func:`families` and YAML names; :func:`unavailable` says what it needs.
        requires: What an unavailable block needs, e.g. ``"ultralytics>=8.3.78"``.
    """

    name: str
    cls: type
    repeats: bool = False
    family: str | None = None
    role: str = "layer"
    takes_level: bool = False
    bench_levels: tuple[int, ...] = ()
    probe: Probe | None = None
    origin: str | None = None
    available: bool = True
    requires: str | None = None

    def extras(self) -> list[inspect.Parameter]:
        """The constructor parameters a YAML row gives after ``c2`` (``n`` excluded for repeating blocks)."""
        params = [p for p in inspect.signature(self.cls.__init__).parameters.values() if p.name != "self"]
        params = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return params[3 if self.repeats else 2 :]

    def yaml_args(self, c2: int, level: int | None = None, extras: Sequence = ()) -> list:
        """The argument list of a YAML row for this block: ``[c2, *extras]``, with ``level`` at its place.

        For a block that :attr:`takes_level`, ``extras`` are the other extras in order; the ``level`` parameter's
        position is filled with ``level`` (earlier extras the caller did not give get their defaults).

        Examples:
            >>> spec = BlockSpec("X", type("X", (), {"__init__": lambda self, c1, c2, n=1, e=0.5, level=5: None}),
            ...                  repeats=True, takes_level=True)
            >>> spec.yaml_args(256, level=4), spec.yaml_args(256, level=4, extras=[0.25, 2.0])
            ([256, 0.5, 4], [256, 0.25, 4, 2.0])
        """
        extras = list(extras)
        if not self.takes_level or level is None:
            return [c2, *extras]
        names = [p.name for p in self.extras()]
        if "level" not in names:
            raise ValueError(f"{self.name} is registered with takes_level=True but has no 'level' parameter")
        at = names.index("level")
        params = self.extras()
        head = extras[:at] + [params[k].default for k in range(len(extras), at)]
        return [c2, *head, level, *extras[at:]]


_REGISTRY: dict[str, BlockSpec] = {}


def register_block(
    cls: type | None = None,
    *,
    name: str | None = None,
    repeats: bool = False,
    family: str | None = None,
    role: str = "layer",
    takes_level: bool = False,
    bench_levels: Sequence[int] = (),
    probe: Probe | None = None,
    origin: str | None = None,
    available: bool = True,
    requires: str | None = None,
    force: bool = False,
):
    """Register a block class for use in model YAMLs. Usable as ``@register_block`` or ``@register_block(...)``.

    Registering a different class under a name that is already taken is an error unless ``force=True``;
    re-registering the same class is a no-op (module reloads in tests). See :class:`BlockSpec` for the fields.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(map(repr, ROLES))}, got {role!r}")
    if probe is not None and not isinstance(probe, Probe):
        raise ValueError(f"probe must be a registry.Probe, got {type(probe).__name__}")

    def wrap(c: type) -> type:
        key = name or c.__name__
        old = _REGISTRY.get(key)
        if (
            old is not None
            and not force
            and (old.cls.__module__, old.cls.__qualname__) != (c.__module__, c.__qualname__)
        ):
            raise ValueError(
                f"block name {key!r} is already registered to {old.cls.__module__}.{old.cls.__qualname__}; "
                "pass force=True to replace it"
            )
        _REGISTRY[key] = BlockSpec(
            key,
            c,
            repeats,
            family,
            role,
            bool(takes_level),
            tuple(int(x) for x in bench_levels),
            probe,
            origin,
            bool(available),
            requires,
        )
        return c

    return wrap(cls) if cls is not None else wrap


def unregister_block(name: str) -> BlockSpec | None:
    """Remove a block from the registry (and return its spec). Call ``integration.register()`` again to sync."""
    return _REGISTRY.pop(name, None)


def get_spec(name: str) -> BlockSpec:
    """Return the spec for ``name`` or raise ``KeyError`` listing the closest registered names (or, for a block
    this installation cannot build, what it needs)."""
    spec = _REGISTRY.get(name)
    if spec is not None and not spec.available:
        raise KeyError(f"block {name!r} is unavailable here: {_needs(spec)}")
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = closest(name)
        raise KeyError(
            f"block {name!r} is not registered with yolo_attn"
            + (f"; did you mean {', '.join(hint)}?" if hint else "")
            + f" Registered blocks: {', '.join(block_names())}"
        ) from None


def specs() -> list[BlockSpec]:
    """All registered specs that can be built here, in registration order (unavailable ones: :func:`unavailable`)."""
    return [sp for sp in _REGISTRY.values() if sp.available]


def families() -> dict[str, dict[str, str]]:
    """``{family: {role: block name}}`` for the ``insert`` and ``csp`` blocks of every registered family.

    This is how tooling learns which families exist (``yolo-attn insert dat ...``, ``generate``, ``ablate --blocks``,
    ``bench``, the report). The first block registered for a (family, role) pair is the one a family name means.
    A family whose blocks the installed Ultralytics cannot build is left out; :func:`unavailable` names it.
    """
    out: dict[str, dict[str, str]] = {}
    for sp in specs():
        if sp.family and sp.role in ("insert", "csp"):
            out.setdefault(sp.family, {}).setdefault(sp.role, sp.name)
    return out


def _needs(spec: BlockSpec) -> str:
    from yolo_attn._compat import version  # torch-free, reads the installed version lazily

    return f"needs {spec.requires or 'a newer Ultralytics'} (installed: ultralytics {version()})"


def unavailable() -> dict[str, str]:
    """``{family or block name: what it needs}`` for registered blocks this installation cannot build.

    Tooling prints it in one line where it lists families (``yolo-attn info``) and where a user names one (``insert``,
    ``ablate --blocks``), e.g. ``{"area": "needs ultralytics>=8.3.78 (installed: ultralytics 8.3.65)"}``.
    """
    out: dict[str, str] = {}
    for sp in _REGISTRY.values():
        if not sp.available:
            out.setdefault(sp.family or sp.name, _needs(sp))
    return out


def family_origin(family: str) -> str | None:
    """Where a family's modules come from when they are not this package's (``"Ultralytics 8.4.190 C2PSA /
    PSABlock"``), for the report's line on each comparator; ``None`` for the package's own families and unknown ones.

    Examples:
        >>> family_origin("bot") is None
        True
    """
    return next((sp.origin for sp in _REGISTRY.values() if sp.family == family and sp.origin), None)


def block_names() -> list[str]:
    """All registered names that can be built here, sorted."""
    return sorted(sp.name for sp in specs())


def closest(name: str, candidates: list[str] | None = None, n: int = 3) -> list[str]:
    """Registered names closest to ``name`` (case-insensitive), best first."""
    pool = candidates if candidates is not None else block_names()
    lower = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.4)
    return [lower[h] for h in hits]


@contextlib.contextmanager
def temporary(*classes: type, repeats: bool = False, **kwargs) -> Iterator[None]:
    """Register classes for the duration of a ``with`` block (tests)."""
    added = []
    for c in classes:
        if c.__name__ not in _REGISTRY:
            register_block(c, repeats=repeats, **kwargs)
            added.append(c.__name__)
    try:
        yield
    finally:
        for n in added:
            _REGISTRY.pop(n, None)
