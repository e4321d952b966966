"""The one wrapper behind ``scripts/<command>.py``: run ``yolo-attn <command>`` from a fresh clone, installed or not.

Each of those scripts is its docstring plus ``run("<command>")``; the command's code lives in :mod:`yolo_attn.cli`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: str) -> None:
    """Exit with ``yolo-attn <command> <this script's arguments>``, importing yolo_attn from this checkout."""
    sys.path.insert(0, str(ROOT))
    from yolo_attn.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
