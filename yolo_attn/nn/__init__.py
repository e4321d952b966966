"""Attention blocks for Ultralytics YAMLs. Importing this package registers every block in :mod:`yolo_attn.registry`."""

from yolo_attn.nn import bot, coat, dat  # noqa: F401  (import registers the blocks)
from yolo_attn.nn.bot import *  # noqa: F401,F403
from yolo_attn.nn.coat import *  # noqa: F401,F403
from yolo_attn.nn.dat import *  # noqa: F401,F403

__all__ = [*bot.__all__, *dat.__all__, *coat.__all__]
