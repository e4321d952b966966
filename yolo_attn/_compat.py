"""Every read of an Ultralytics internal outside :mod:`yolo_attn.integration`, with the version shims in one place.

``integration`` is the one module that *patches* Ultralytics; everything else that needs something from Ultralytics
(its building blocks, model loading, configuration defaults, the FLOPs profiler, the logger...) imports it from here.
If a future Ultralytics moves or renames one of these, this module is the one place to adapt, and
``tests/test_compat.py`` fails with a message naming what is missing instead of the whole package failing to import.
"""

from __future__ import annotations

from ultralytics.nn.modules import Classify, Conv

__all__ = ["Classify", "Conv"]
