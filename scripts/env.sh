# Sourced by scripts/demo.sh and scripts/test.sh: go to the repo root, set the offline environment, and make sure
# .venv exists with yolo_attn installed editable, with its dev and ray extras (first run downloads torch & co, a few
# minutes).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# [ray]: the Ray executor's tests run on a local Ray instance (CPU)
.venv/bin/python -m pip install -q -e ".[dev,ray]"
