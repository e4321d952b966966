"""Processes that others start for us see the blocks and the CPUs they were given.

- A single run that spans several GPUs is Ultralytics' own DDP: it writes a temporary script
  (``ultralytics.utils.dist.generate_ddp_file``) and starts it with ``torch.distributed.run``, one fresh interpreter
  per GPU, which imports Ultralytics and builds the model from its YAML without ever importing yolo_attn. The start-up
  hook must register the blocks there. Tested by running the script Ultralytics generates in a fresh interpreter,
  with its last step (``trainer.train()``, which would start DDP) replaced by building the model.
- ``integration.cpu_threads`` holds torch's threads at what a Ray task was given, through Ultralytics'
  device selection.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from yolo_attn.integration import cpu_threads

BUILD = """\
    trainer.setup_model()
    found = sorted({type(m).__name__ for m in trainer.model.modules() if type(m).__module__.startswith("yolo_attn")})
    print("BLOCKS", ",".join(found))
"""


def _hook_installed() -> bool:
    r = subprocess.run(
        [sys.executable, "-c", "import sys; print('_yolo_attn_autoload' in sys.modules)"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    return r.stdout.strip() == "True"


def _ddp_script(tmp_path: Path, data: str) -> Path:
    """The script Ultralytics would start once per GPU for a run of a BoT3 variant, made here without DDP."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import generate_ddp_file

    from yolo_attn.edit import make_variant, save_variant

    if "cloudpickle" in Path(sys.modules["ultralytics.utils.dist"].__file__).read_text():
        pytest.importorskip("cloudpickle", reason="Ultralytics' DDP script pickles the trainer with cloudpickle")
    yaml = save_variant(make_variant("yolov8n.yaml", "bot", "sppf_before"), tmp_path / "yolov8n-bot-sppf_before.yaml")
    trainer = DetectionTrainer(
        overrides={
            "model": str(yaml),
            "data": data,
            "device": "cpu",
            "epochs": 1,
            "imgsz": 32,
            "project": str(tmp_path),
        }
    )
    src = Path(generate_ddp_file(trainer))
    text = src.read_text()
    assert text.count("trainer.train()") == 1, text  # the one step replaced
    script = tmp_path / "ddp_worker.py"
    script.write_text("\n".join(BUILD.rstrip() if "trainer.train()" in line else line for line in text.splitlines()))
    src.unlink()
    return script


def test_ddp_worker_interpreter_sees_the_blocks(tmp_path, shapes_data, registered):
    """Ultralytics' DDP worker script, started as torch.distributed.run starts it, builds a model with our blocks; with
    the start-up hook switched off it cannot (so the hook is what made it work)."""
    if not _hook_installed():
        pytest.skip(
            "the start-up hook is not installed (pip install -e .): nothing registers the blocks in DDP workers"
        )
    script = _ddp_script(tmp_path, shapes_data)
    env = subprocess_env(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1")  # what torch.distributed.run sets per worker

    def start(**extra):
        cmd = [sys.executable, str(script)]
        return subprocess.run(cmd, capture_output=True, text=True, env={**env, **extra}, timeout=300, cwd=tmp_path)

    on = start()
    blocks = next((line.split()[1].split(",") for line in on.stdout.splitlines() if line.startswith("BLOCKS ")), [])
    assert "BoT" in blocks, on.stdout[-2000:] + on.stderr[-3000:]
    off = start(YOLO_ATTN_AUTOLOAD="0")
    assert off.returncode != 0 and "BLOCKS" not in off.stdout, off.stdout[-2000:]


def test_cpu_threads_hold_through_ultralytics_device_selection():
    import torch

    select_device = importlib.import_module("ultralytics.utils.torch_utils").select_device
    before = torch.get_num_threads()
    with cpu_threads(1):
        select_device("cpu", verbose=False)  # sets torch's threads for CPU training
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n >= 1"):
        with cpu_threads(0):
            pass
