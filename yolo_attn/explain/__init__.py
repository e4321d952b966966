"""Why a block helps or not: how much each inserted block is used, and figures of what it looks at (issue 23).

- :func:`measure_utilisation` -> one :class:`BlockUse` per registered block of a model: the ratio of its residual
  branch's output to its input over some images, plus the learned gates (see :mod:`yolo_attn.explain.probe`).
- :func:`explain` -> one PNG per image, models side by side: detections, EigenCAM, each block's attention map or
  DAT's sampling points (see :mod:`yolo_attn.explain.figures`); ``yolo-attn explain`` on the command line.

Everything reads the model through forward hooks; families say what to read through the registry
(:class:`yolo_attn.registry.Probe`).
"""

from yolo_attn.explain.figures import (
    data_utilisation,
    detect,
    eigencam,
    explain,
    image_files,
    load_images,
    validation_images,
)
from yolo_attn.explain.probe import AttentionCapture, Block, BlockUse, LayerView, find_blocks, measure_utilisation

__all__ = [
    "AttentionCapture",
    "Block",
    "BlockUse",
    "LayerView",
    "data_utilisation",
    "detect",
    "eigencam",
    "explain",
    "find_blocks",
    "image_files",
    "load_images",
    "measure_utilisation",
    "validation_images",
]
