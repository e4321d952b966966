"""The built wheel (not the editable checkout): start-up hook at the site-packages root, model YAMLs inside, and the
GPU check finds them there (and refuses to run, exit status 2, when they are missing instead of checking nothing).

CI installs the project editable; this test builds the wheel users get from ``pip install .``, installs it into a
private folder and starts an interpreter that sees only that copy (``-S``: no site-packages ``.pth`` files of the
test environment run, so the editable install's hook cannot do the work for it).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, subprocess_env

pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling (in the [dev] extra)")

CHECK = r"""
import site, sys
site.addsitedir(sys.argv[1])            # processes yolo_attn.pth, as a real site-packages would
sys.path.append(sys.argv[2])            # the dependencies, without running their folder's .pth files
import ultralytics.nn.tasks as tasks     # the start-up hook registers right after this module executes
import yolo_attn
assert yolo_attn.__file__.startswith(sys.argv[1]), yolo_attn.__file__
from yolo_attn import integration
assert integration.is_registered() and "BoT3" in vars(tasks)
from ultralytics import YOLO
net = YOLO("yolov8s-dat.yaml").model     # found inside the wheel from a folder without cfg/
from pathlib import Path
from yolo_attn import gpu_check
plan = gpu_check.Settings.make("cpu", quick=True).cfgs   # the GPU check's training plan, from the wheel's cfg/
assert len(plan) >= 6 and all(Path(gpu_check._cfg_path(c)).is_file() for c in plan), plan
assert all(gpu_check._cfg_path(c).startswith(sys.argv[1]) for c in plan), plan
assert gpu_check._checkout_tests() is None               # no checkout here: step 1 skips (and says why)
print("OK", type(net.model[9]).__name__, net.yaml["scale"], net.model[0].conv.out_channels)
"""


def test_wheel_registers_from_its_own_copy(tmp_path):
    dist, site_dir, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True)
    (wheel,) = dist.glob("yolo_attn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"_yolo_attn_autoload.py", "yolo_attn.pth", "yolo_attn/cfg/yolov8-bot.yaml", "yolo_attn/nn/dat.py"} <= names
    assert not any(n.startswith("tests/") for n in names)

    subprocess.run([*pip, "install", "--no-deps", "--target", str(site_dir), str(wheel)], check=True)
    deps = sysconfig.get_paths()["purelib"]
    env = subprocess_env(YOLO_ATTN_AUTOLOAD="1")
    # a checkout on PYTHONPATH (how the suite runs a working tree) would shadow the wheel; other entries (an older
    # Ultralytics put first) stay
    paths = env["PYTHONPATH"].split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if not (Path(p) / "yolo_attn" / "__init__.py").is_file())
    r = subprocess.run(
        [sys.executable, "-S", "-c", CHECK, str(site_dir), deps],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-4:] == ["OK", "DATBlock", "s", "32"], r.stdout

    # Without its model YAMLs the GPU check's plan is empty: it must fail loudly before training anything.
    shutil.rmtree(site_dir / "yolo_attn" / "cfg")
    gpu = (
        "import site, sys; site.addsitedir(sys.argv[1]); sys.path.append(sys.argv[2]); from yolo_attn.cli import main; "
        "sys.exit(main(['gpu-check', '--device', 'cpu', '--quick', '--out', sys.argv[3]]))"
    )
    out = work / "gpu"
    r = subprocess.run(
        [sys.executable, "-S", "-c", gpu, str(site_dir), deps, str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-3000:])
    assert "yolo-attn gpu-check: error: the GPU check found no headline cfg" in r.stderr, r.stderr[-3000:]
    assert "would train nothing" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # nothing trained, no summary claiming a pass
