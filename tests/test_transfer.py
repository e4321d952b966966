"""yolo_attn.transfer and the BaseModel.load hook: baseline weights follow their rows into every variant.

Tests marked with ``needs_weights`` use the shared yolov8n.pt (../shared/data/weights) and skip without it.
"""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SHARED, subprocess_env

from yolo_attn import integration
from yolo_attn.edit import make_variant
from yolo_attn.transfer import TransferReport, layer_map, remap_state_dict, transfer

W = SHARED / "weights" / "yolov8n.pt"
CFG = ROOT / "cfg"
needs_weights = pytest.mark.skipif(not W.is_file(), reason=f"{W} not available")


def _shell(d: dict, scale: str = "n"):
    """An Ultralytics ``BaseModel`` built by the parser alone (no stride probe: cheap); same state-dict layout and
    ``load`` as a ``DetectionModel``."""
    from ultralytics.nn.tasks import BaseModel, parse_model

    class Shell(BaseModel):
        def __init__(self):
            super().__init__()
            self.yaml = copy.deepcopy(d)
            self.model, self.save = parse_model({**copy.deepcopy(d), "scale": scale}, ch=3, verbose=False)
            self.names = {i: str(i) for i in range(d["nc"])}

    return Shell()


@pytest.fixture(scope="module")
def hook(registered):
    was = integration.transfer_hook_installed()
    integration.install_transfer_hook()
    yield
    if not was:
        integration.uninstall_transfer_hook()


@pytest.fixture(scope="module")
def yolov8n():
    if not W.is_file():
        pytest.skip(f"{W} not available")
    from yolo_attn._compat import load_checkpoint

    return load_checkpoint(W)[0]


def _rows_of(key: str) -> int:
    return int(key.split(".")[1])


def test_remap_state_dict_and_layer_map():
    rec = {
        "base": "b.yaml",
        "block": "X",
        "position": "p",
        "args": [],
        "index_map": {0: 0, 1: 2, 3: 3},
        "inserted": [1],
        "replaced": [2],
    }
    dst = {"yolo_attn": rec}
    csd = {"model.0.w": 0, "model.1.w": 1, "model.2.w": 2, "model.3.bn.b": 3, "extra": 4}
    assert remap_state_dict(csd, dst) == {"model.0.w": 0, "model.2.w": 1, "model.3.bn.b": 3, "extra": 4}
    assert remap_state_dict(csd, {}, index_map={1: 0}) == {"model.0.w": 1, "extra": 4}
    assert layer_map({}) is None  # plain model, plain checkpoint: names as they are
    assert layer_map(dst) == {0: 0, 1: 2, 3: 3}  # base checkpoint into a variant
    assert layer_map(dst, copy.deepcopy(dst)) is None  # the same variant (fine-tuning, resuming)
    assert layer_map({}, dst) == {0: 0, 2: 1, 3: 3}  # variant weights back into the base
    other = {"yolo_attn": {**rec, "position": "q", "index_map": {0: 1, 1: 2, 3: 4}}}
    assert layer_map(dst, other) == {1: 0, 2: 2, 4: 3}  # another variant of the same base: through the base


@needs_weights
def test_every_yolov8_variant_gets_every_kept_tensor(registered, yolov8n):
    """yolov8n.pt into each generated YOLOv8 variant: all 355 tensors of kept rows move (331 when row 8 is replaced,
    whose 24 tensors are reported as not transferred); only the new rows' tensors are new."""
    src = yolov8n.state_dict()
    files = sorted(CFG.glob("yolov8-*-*.yaml"))
    assert len(files) == 15
    for p in files:
        d = yaml.safe_load(p.read_text())
        rec = d["yolo_attn"]
        model = _shell(d)
        rep = transfer(model, yolov8n, verbose=False)
        assert isinstance(rep, TransferReport)
        kept = [k for k in src if _rows_of(k) in rec["index_map"]]
        assert rep.n_transferred == len(kept) == (331 if rec["replaced"] else 355), p.name
        assert set(rep.skipped) == {k for k in src if _rows_of(k) in rec["replaced"]}, p.name
        assert all(v == "row replaced or removed in the variant" for v in rep.skipped.values())
        new_rows = set(range(len(model.model))) - set(rec["index_map"].values())
        assert rep.new and {_rows_of(k) for k in rep.new} == new_rows, p.name
        assert rep.n_transferred + rep.n_new == rep.total == len(model.state_dict())
        dst = model.state_dict()
        for k in kept:  # the tensors themselves, under their new row numbers
            i = _rows_of(k)
            assert torch.equal(dst[k.replace(f"model.{i}.", f"model.{rec['index_map'][i]}.", 1)], src[k]), k
        assert "through the yolo_attn index map" in rep.summary()


@needs_weights
def test_yolo_load_goes_through_the_map(hook, yolov8n):
    """YOLO(variant).load('yolov8n.pt'): all kept tensors arrive and the variant predicts exactly like yolov8n."""
    from ultralytics import YOLO

    model = YOLO(str(CFG / "yolov8-coat-sppf_after.yaml")).load(str(W))
    net = model.model.eval()
    src, dst = yolov8n.state_dict(), net.state_dict()
    imap = net.yaml["yolo_attn"]["index_map"]
    for k, v in src.items():
        i = _rows_of(k)
        assert torch.equal(dst[k.replace(f"model.{i}.", f"model.{imap[i]}.", 1)], v), k
    assert net.names[0] == "person"  # names adopted although the new rows kept Ultralytics from doing it
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(net(x)[0], yolov8n.eval()(x)[0])


def test_same_variant_checkpoint_loads_as_is(hook):
    """Fine-tuning or resuming a variant: no remap, every tensor (the new block's too) loads by name."""
    d = make_variant("yolov8.yaml", "coat", "head", validate=False)
    a = _shell(d)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    b = _shell(d)
    b.load({"model": a}, verbose=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    c = _shell(make_variant("yolov8.yaml", "coat", "sppf_after", validate=False))
    rep = transfer(c, a, verbose=False)  # another variant of the same base: through the base rows
    assert rep.n_transferred == 355 and rep.new_layers == [10] and rep.skipped_layers == [22, 23, 24]


def test_hook_install_uninstall_is_clean(registered):
    from ultralytics.nn.tasks import BaseModel

    was = integration.transfer_hook_installed()
    integration.uninstall_transfer_hook()
    orig = BaseModel.__dict__["load"]
    assert not integration.transfer_hook_installed() and not hasattr(orig, "_yolo_attn_orig")
    d = make_variant("yolov8.yaml", "bot", "sppf_before", validate=False)
    from yolo_attn.edit import load_base

    src, m = _shell(load_base("yolov8.yaml")[0]), _shell(d)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.load(src, verbose=False)  # plain Ultralytics: rows from 9 on are shifted, so their tensors do not match
    assert torch.equal(m.state_dict()["model.10.cv1.conv.weight"], before["model.10.cv1.conv.weight"])
    integration.install_transfer_hook()
    integration.install_transfer_hook()  # idempotent
    assert integration.transfer_hook_installed() and BaseModel.__dict__["load"]._yolo_attn_orig is orig
    m.load(src, verbose=False)
    assert torch.equal(m.state_dict()["model.10.cv1.conv.weight"], src.state_dict()["model.9.cv1.conv.weight"])
    if not was:
        integration.uninstall_transfer_hook()
        assert BaseModel.__dict__["load"] is orig


@pytest.mark.slow
@needs_weights
def test_stock_cli_pretrained_transfers_all_baseline_tensors(shapes_data, tmp_path):
    """`yolo train model=<variant>.yaml pretrained=yolov8n.pt`: the log shows all 355 tensors of kept rows moved."""
    data = yaml.safe_load(Path(shapes_data).read_text())
    data["names"] = {i: data["names"].get(i, f"class{i}") for i in range(80)}  # COCO's class count: full head
    (tmp_path / "data80.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "yolo_attn_test_hook.py").write_text(
        "from yolo_attn import integration\nintegration.install_transfer_hook()\n"
    )
    env = subprocess_env(YOLO_ATTN_PLUGINS="yolo_attn_test_hook", YOLO_VERBOSE="true")
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    cmd = [
        str(Path(sys.executable).with_name("yolo")),
        "train",
        f"model={CFG / 'yolov8-dat-sppf_before.yaml'}",
        f"pretrained={W}",
        f"data={tmp_path / 'data80.yaml'}",
        "epochs=1",
        "imgsz=64",
        "batch=4",
        "workers=0",
        "val=False",
        "plots=False",
        f"project={tmp_path / 'runs'}",
        "name=t",
        "exist_ok=True",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "355/355 tensors of kept rows match, new rows 9" in log, log[-3000:]
    assert re.search(r"Transferred 355/\d+ items from pretrained weights", log), log[-3000:]
