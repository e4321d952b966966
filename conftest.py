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
