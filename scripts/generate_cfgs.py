#!/usr/bin/env python
"""Regenerate the checked-in variant YAMLs cfg/yolov8-<family>-<position>.yaml and cfg/yolov11-<family>-<position>.yaml.

Every (base, family, position) of the package's own families is built (validated) and written; ``--check`` writes
nothing and exits 1 when a checked-in file differs from what the generator produces (tests/test_edit.py runs the same
check).
Same as ``yolo-attn generate``.

Examples:
    python scripts/generate_cfgs.py
    python scripts/generate_cfgs.py --check
"""

if __name__ == "__main__":
    from _cli import run  # scripts/_cli.py

    run("generate")
