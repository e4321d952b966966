#!/usr/bin/env bash
# The README's test command. Works on a fresh machine with Python 3.9+ and pip:
#   1. creates .venv (first run downloads torch & co, a few minutes) and installs yolo_attn editable with [dev,ray,export];
#   2. runs ruff (lint and format check) and the test suite: tests/ and the docstring examples of yolo_attn/ (fast
#      tests; `-m slow` ones need minutes or ../shared/data and are skipped by default);
#   3. runs the suite again, less the Ray executor's tests, against the OLDEST supported Ultralytics (8.3.65), installed
#      without dependencies into .venv-ul8.3.65 and put first on PYTHONPATH (it reuses the venv's torch). Where 8.3.65
#      lacks a feature the test needs (restricted checkpoint loading; its own ONNX exporter under torch >= 2.9) the test
#      says so and skips.
# Extra arguments go to both pytest runs, e.g. `bash scripts/test.sh -k bot -x`.
set -euo pipefail
source "$(dirname "$0")/env.sh"

status=0
.venv/bin/ruff check . || status=$?
.venv/bin/ruff format --check . || status=$?
.venv/bin/python -m pytest "$@" || status=$?

OLD=8.3.65
if [ "${YOLO_ATTN_SKIP_OLD:-0}" != "1" ]; then
  if [ ! -f ".venv-ul$OLD/ultralytics/__init__.py" ]; then
    # 8.3.65 also reads results with pandas (8.4 does not); pandas' own deps are already in the venv.
    .venv/bin/python -m pip install -q --no-deps --target ".venv-ul$OLD" "ultralytics==$OLD" pandas pytz
  fi
  echo "=== the suite again, against ultralytics $OLD (without the Ray executor's tests) ==="
  # The `ray` tests exercise our executor on a local Ray instance, not Ultralytics: the first pass has run them. The
  # -m below repeats pyproject's default selection (a -m given here replaces it) and adds `not ray`.
  PYTHONPATH="$PWD/.venv-ul$OLD" .venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not gpu and not ray" \
    "$@" || status=$?
fi
exit $status
