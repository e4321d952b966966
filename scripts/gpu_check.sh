#!/usr/bin/env bash
# The prepared GPU check (issue 16): run it the moment a GPU is there, then quote out/gpu/summary.md.
#   bash scripts/gpu_check.sh                      # device 0, full sizes (about 8 minutes on one modern GPU)
#   bash scripts/gpu_check.sh --device cpu --quick # every step on CPU at small sizes (the test suite runs this)
# Creates .venv like the other scripts when there is none; arguments go to `yolo-attn gpu-check`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec .venv/bin/python -m yolo_attn.cli gpu-check "$@"
