"""Block registry: YAML name -> how Ultralytics' ``parse_model`` must call the class.

A registered block gets the row semantics of Ultralytics' built-in blocks:
``[from, n, Block, [c2, *extras]]`` builds ``Block(c1, c2', [n',] *extras)`` where ``c1`` is the input's channel
count, ``c2'`` is ``c2`` width-scaled and capped by ``max_channels`` (as for ``C2f``) and ``n'`` is the depth-scaled
repeat count, passed as the third argument when the block is declared ``repeats=True`` (otherwise Ultralytics makes
``n`` copies). This module is torch-free; :mod:`yolo_attn.integration` reads it and wires it into Ultralytics.

Examples:
    >>> from yolo_attn.registry import register_block
    >>> @register_block(repeats=True)
    ... class MyCSP(torch.nn.Module):
    ...     def __init__(self, c1, c2, n=1): ...
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "BlockSpec",
    "register_block",
    "unregister_block",
    "get_spec",
    "specs",
    "block_names",
    "closest",
    "temporary",
]


@dataclass(frozen=True)
class BlockSpec:
    """How a YAML-facing block is built by ``parse_model``.

    Attributes:
        name: The name used in model YAMLs (defaults to the class name).
        cls: The ``nn.Module`` subclass; constructor ``(c1, c2, [n,] *extras)``.
        repeats: The YAML ``n`` is passed as the third constructor argument (like ``C2f``) instead of stacking copies.
        family: Block family for tooling (``"bot"``, ``"dat"``, ``"coat"``), ``None`` for helpers and test blocks.
        role: ``"insert"`` (residual, starts as identity when c1 == c2), ``"csp"`` (replaces a CSP block) or ``"layer"``.
    """

    name: str
    cls: type
    repeats: bool = False
    family: str | None = None
    role: str = "layer"


_REGISTRY: dict[str, BlockSpec] = {}


def register_block(
    cls: type | None = None,
    *,
    name: str | None = None,
    repeats: bool = False,
    family: str | None = None,
    role: str = "layer",
    force: bool = False,
):
    """Register a block class for use in model YAMLs. Usable as ``@register_block`` or ``@register_block(...)``.

    Registering a different class under a name that is already taken is an error unless ``force=True``;
    re-registering the same class is a no-op (module reloads in tests).
    """
    if role not in {"insert", "csp", "layer"}:
        raise ValueError(f"role must be 'insert', 'csp' or 'layer', got {role!r}")

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
        _REGISTRY[key] = BlockSpec(key, c, repeats, family, role)
        return c

    return wrap(cls) if cls is not None else wrap


def unregister_block(name: str) -> BlockSpec | None:
    """Remove a block from the registry (and return its spec). Call ``integration.register()`` again to sync."""
    return _REGISTRY.pop(name, None)


def get_spec(name: str) -> BlockSpec:
    """Return the spec for ``name`` or raise ``KeyError`` listing the closest registered names."""
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
    """All registered specs, in registration order."""
    return list(_REGISTRY.values())


def block_names() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


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
