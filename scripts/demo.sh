#!/usr/bin/env bash
# The README's main job. Works on a fresh machine with Python 3.9+ and pip: creates .venv if needed, installs
# yolo_attn, then runs scripts/demo.py (generated dataset; YOLOv8n trained once, then it and each attention family's
# variant continued from its weights over 4 seeds, on CPU; report with intervals, verdicts and plots in out/demo/).
# Extra arguments go to scripts/demo.py (--seeds 0 1 2 3, --out DIR, --finetune-epochs N ...).
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec .venv/bin/python scripts/demo.py "$@"
