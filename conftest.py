"""Test environment for the whole repository (tests/ and the doctests of yolo_attn/), set before anything imports
Ultralytics: offline, quiet, a private settings folder, the Agg plot backend."""

import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# A private settings folder: the two tested Ultralytics versions disagree on settings.json keys, and tests must not
# depend on (or rewrite) the user's settings.
os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="yolo_attn_cfg_")


def _area_attention_available() -> bool:
    try:
        from yolo_attn import _compat

        return _compat.provides("A2C2f", "AAttn")
    except Exception:  # any trouble here shows in the tests themselves
        return True


# The doctests of the `area` family build YOLO12's area attention, which Ultralytics < 8.3.78 lacks (the family is
# then registered as unavailable, and its tests skip with the reason).
collect_ignore = [] if _area_attention_available() else ["yolo_attn/nn/area.py"]
