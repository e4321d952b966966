# Sourced by scripts/demo.sh and scripts/test.sh: go to the repo root, set the offline environment, and make sure
# .venv exists with yolo_attn installed editable, with its dev, ray and export extras (first run downloads torch & co, a few
# minutes).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# [ray]: the Ray executor's tests run on a local Ray instance (CPU); [export]: OpenVINO and onnxslim for tests/test_export.py
.venv/bin/python -m pip install -q -e ".[dev,ray,export]"
