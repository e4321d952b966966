#!/usr/bin/env bash
# The README's main job. Works on a fresh machine with Python 3.9+ and pip: creates .venv if needed, installs
# yolo_attn, then runs scripts/demo.py (generated dataset, YOLOv8n baseline vs three attention variants on CPU,
# report with plots in out/demo/). Extra arguments go to scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e ".[dev]"
exec .venv/bin/python scripts/demo.py "$@"
