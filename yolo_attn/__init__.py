"""yolo_attn: attention blocks (BoTNet, DAT, CoAtNet) as first-class Ultralytics YOLO modules.

Installing the package is enough for the stock ``yolo`` CLI (a start-up hook calls :func:`register` when
``ultralytics.nn.tasks`` is imported). From Python, ``import yolo_attn`` does the same explicitly.

Examples:
    >>> import yolo_attn
    >>> from ultralytics import YOLO
    >>> model = YOLO("yolov8n-bot.yaml")
"""

__version__ = "0.2.0"

from yolo_attn.integration import register, registered, unregister  # noqa: E402
from yolo_attn.registry import register_block  # noqa: E402

__all__ = ["__version__", "register", "unregister", "registered", "register_block"]


def __getattr__(name):
    # Blocks resolve lazily (``yolo_attn.BoT3``) so that ``import yolo_attn`` stays cheap until a block is needed.
    if name.startswith("_") or name == "nn":  # let `import yolo_attn.nn` resolve through sys.modules while importing
        raise AttributeError(f"module 'yolo_attn' has no attribute {name!r}")
    import importlib

    _nn = importlib.import_module("yolo_attn.nn")
    if name in _nn.__all__:
        return getattr(_nn, name)
    raise AttributeError(f"module 'yolo_attn' has no attribute {name!r}")
