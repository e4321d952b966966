"""Shared fixtures. Tests never touch the network: Ultralytics runs offline (see ../conftest.py), with generated data
and YAML models."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared" / "data"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# Modules here that are not test files: --doctest-modules must not import them at collection (toy_family registers a
# block family on import, which only the tests that ask for it may see).
collect_ignore = ["contract_blocks.py", "helpers.py", "toy_family.py"]


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> str:
    """Dataset YAML of a tiny generated detection set (3 classes, 64 px, 8 train / 4 val)."""
    from yolo_attn.data import make_shapes_dataset

    return str(make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=8, n_val=4, imgsz=64, seed=0))


@pytest.fixture
def tmp_runs(tmp_path) -> str:
    """A fresh ``project=`` folder for Ultralytics runs."""
    d = tmp_path / "runs"
    d.mkdir()
    return str(d)


@pytest.fixture(scope="session")
def registered():
    """yolo_attn registered with Ultralytics for the session (the start-up hook normally does this already)."""
    import yolo_attn

    yolo_attn.register()
    return yolo_attn


def subprocess_env(**extra) -> dict:
    """Environment for child processes: offline, tests importable, nothing slow at start-up."""
    env = dict(os.environ)
    env.update(
        YOLO_OFFLINE="1",
        YOLO_AUTOINSTALL="false",
        PYTHONPATH=os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])]),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env
