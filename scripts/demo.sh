#!/usr/bin/env bash
# The README's main job. Works on a fresh machine with Python 3.9+ and pip: creates .venv if needed, installs
# yolo_attn, then runs scripts/demo.py (generated dataset, YOLOv8n baseline vs three attention variants on CPU,
# report with plots in out/demo/). Extra arguments go to scripts/demo.py.
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec .venv/bin/python scripts/demo.py "$@"
