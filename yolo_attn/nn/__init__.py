"""Attention blocks for Ultralytics YAMLs. Importing this package registers every block in :mod:`yolo_attn.registry`.

A block family is one file here, whose ``@register_block`` lines are its registration, plus its name in ``_FILES``;
:mod:`yolo_attn.nn.attention` is the core the families share and :mod:`yolo_attn.nn.rel_pos` their
relative-position biases. Every public name of those files is importable from
here (``from yolo_attn.nn import BoT3, set_attn_impl``).
"""

import importlib

_FILES = ("attention", "rel_pos", "bot", "coat", "dat", "psa", "area")  # importing a family file registers its blocks
_PUBLIC = tuple(importlib.import_module(f"{__name__}.{name}") for name in _FILES)
__all__ = [name for module in _PUBLIC for name in module.__all__]


def __getattr__(name: str):
    for module in _PUBLIC:
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
