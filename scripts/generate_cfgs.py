#!/usr/bin/env python
"""Regenerate the checked-in variant YAMLs cfg/yolov8-<family>-<position>.yaml and cfg/yolov11-<family>-<position>.yaml.

Every (base, family, position) of yolo_attn.edit is built (validated) and written; ``--check`` writes nothing and exits
1 when a checked-in file differs from what the generator produces (tests/test_edit.py runs the same check).
Same as ``yolo-attn generate``.

Examples:
    python scripts/generate_cfgs.py
    python scripts/generate_cfgs.py --check
"""

import argparse
import sys

from yolo_attn.edit import add_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="generate_cfgs.py")
    add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["generate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
