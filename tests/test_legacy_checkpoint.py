"""Checkpoints saved by an earlier yolo_attn keep loading: same predictions, and training from them rebuilds the model.

``tests/data/legacy-all-blocks.pt`` was trained (1 epoch, generated data) and saved by yolo_attn 0.1.0 (commit 8ee2a92,
before the architecture redesign) from ``tests/data/legacy-all-blocks.yaml``, which uses every block (MBConv, DAT3,
CoAt3, BoT3, BoT, DATBlock, CoAt, MHSA, DAttention); its parameters were then perturbed so that no zero-initialised
branch is the identity. ``legacy-all-blocks-outputs.pt`` holds that version's raw predictions on two inputs drawn from
a fixed seed. A checkpoint pickles the block objects themselves, so renaming an attribute, a submodule or an
argument without a migration breaks every model users trained before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"
CKPT = DATA / "legacy-all-blocks.pt"
SIZES = [(64, 64), (96, 160)]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {f"{h}x{w}": torch.rand(1, 3, h, w, generator=g) for h, w in SIZES}


def test_legacy_checkpoint_predicts_as_when_saved(registered):
    from ultralytics import YOLO

    net = YOLO(str(CKPT)).model.float().eval()
    expected = torch.load(DATA / "legacy-all-blocks-outputs.pt")
    for key, x in _inputs().items():
        with torch.no_grad():
            y = net(x)
        y = y[0] if isinstance(y, (list, tuple)) else y
        torch.testing.assert_close(y, expected[key], rtol=1e-4, atol=1e-4, msg=f"input {key}")


def test_legacy_checkpoint_yaml_rebuilds_the_same_model(registered):
    """Training from a .pt builds a new model from the checkpoint's YAML and loads the weights into it."""
    from ultralytics.nn.tasks import DetectionModel

    ckpt = torch.load(CKPT, map_location="cpu", weights_only=False)
    old = ckpt["model"]
    new = DetectionModel(old.yaml, ch=3, nc=old.yaml["nc"], verbose=False)
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert {k: tuple(v.shape) for k, v in old_sd.items()} == {k: tuple(v.shape) for k, v in new_sd.items()}
    new.load_state_dict({k: v.float() for k, v in old_sd.items()})
    new.eval()
    ref = old.float().eval()
    for key, x in _inputs().items():
        with torch.no_grad():
            a, b = ref(x), new(x)
        a, b = (t[0] if isinstance(t, (list, tuple)) else t for t in (a, b))
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=f"input {key}")


@pytest.mark.parametrize("safe", ["0", "1"])
def test_legacy_checkpoint_loads_in_a_fresh_process(tmp_path, safe):
    """The stock loader in a new interpreter (start-up hook only), also under Ultralytics' restricted loader (8.4)."""
    import subprocess
    import sys

    from conftest import subprocess_env

    code = (
        f"from ultralytics import YOLO; import torch; m = YOLO(r'{CKPT}'); "
        "y = m.model.float().eval()(torch.zeros(1, 3, 64, 64)); print('ok', type(y).__name__)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(ULTRALYTICS_SAFE_LOAD=safe),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
