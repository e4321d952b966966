"""DAT models through Ultralytics: cfg/yolov8-dat.yaml and cfg/yolov11-dat.yaml build at n and s, start as the stock
model (the inserted DATBlock is the identity), train one epoch, validate with rectangular batches, predict at 640x480,
run from the stock ``yolo`` CLI, survive half precision and export to ONNX (dynamic H/W; opset < 16 refused).

Layer-level checks are in ``tests/test_dat.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, subprocess_env
from helpers import skip_unless_ultralytics_onnx, val_rect_and_predict_640x480
from torch import nn

from yolo_attn.nn.dat import DATBlock, DAttention

CFG = ROOT / "cfg"
STOCK = {"yolov8": "yolov8{}.yaml", "yolov11": "yolo11{}.yaml"}  # Ultralytics' base of each YAML
DAT_ROW = 9  # the DATBlock sits right before SPPF; every later row moved down by one


def _layers(model) -> nn.Sequential:
    while not isinstance(model, nn.Sequential):
        model = model.model
    return model


def _dat(model) -> DATBlock:
    layer = _layers(model)[DAT_ROW]
    assert isinstance(layer, DATBlock), f"layer {DAT_ROW} is {type(layer).__name__}"
    return layer


def _wake(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Give the DAT blocks' zero-initialised layers random values, so the attention reaches the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DATBlock):
                for p in m.parameters():
                    if not p.any():
                        p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _first(out) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("family", ["yolov8", "yolov11"])
@pytest.mark.parametrize("scale,width,heads", [("n", 256, 8), ("s", 512, 16)])
def test_yaml_builds_and_starts_as_the_stock_model(registered, family, scale, width, heads):
    from ultralytics import YOLO

    model = YOLO(str(CFG / f"{family}{scale}-dat.yaml"))
    net = model.model
    assert model.task == "detect" and net.yaml["scale"] == scale
    assert net.stride.tolist() == [8.0, 16.0, 32.0]  # the 256x256 stride probe ran through the block (P5 = 8x8)
    dat = _dat(net)
    attn = dat.m[0].attn
    assert len(dat.m) == 1 and isinstance(dat.proj, nn.Identity)  # n = 1, c1 == c2: no projection
    assert (attn.proj_q.in_channels, attn.num_heads, attn.key_stride, attn.level) == (width, heads, 1, 5)

    # Same rows as Ultralytics' model plus one; with the stock weights copied over, the outputs are identical
    stock = YOLO(STOCK[family].format(scale)).model
    ours, theirs = _layers(net), _layers(stock)
    assert len(ours) == len(theirs) + 1
    state = {}
    for k, v in stock.state_dict().items():
        i = int(k.split(".")[1])
        state[k.replace(f"model.{i}.", f"model.{i + (i >= DAT_ROW)}.", 1)] = v
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(f"model.{DAT_ROW}.") for k in missing)
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(_first(net.eval()(x)), _first(stock.eval()(x)), rtol=0, atol=1e-5)


def _val_predict_export(best: Path, data: str, tmp_path: Path) -> None:
    """Load a trained checkpoint: val(rect=True), predict at 640x480, ONNX export (dynamic H/W) and opset 15 refusal."""
    from ultralytics import YOLO

    model = YOLO(str(best))
    assert isinstance(_dat(model), DATBlock)
    seen = val_rect_and_predict_640x480(model, _dat(model), data)
    assert seen[-1] == (15, 20)  # rectangular letterbox: P5 of 15x20, the odd size community code breaks on

    ort = pytest.importorskip("onnxruntime")
    skip_unless_ultralytics_onnx()
    f = YOLO(str(best)).export(format="onnx", dynamic=True, imgsz=64, opset=17, simplify=False)
    net = YOLO(str(best)).model.float().eval()  # one epoch moved the block off the identity
    assert any(p.abs().sum() > 0 for p in _dat(net).m[0].attn.proj_out.parameters())
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 96, 128)  # not the export size
    with torch.no_grad():
        ref = _first(net.fuse()(x)).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)
    with pytest.raises(Exception, match="GridSample needs opset 16"):
        YOLO(str(best)).export(format="onnx", imgsz=64, opset=15, simplify=False)


def test_yolov8_dat_train_val_predict_export(registered, shapes_data, tmp_runs, tmp_path):
    from ultralytics import YOLO

    model = YOLO(str(CFG / "yolov8n-dat.yaml"))
    model.train(
        data=shapes_data, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", amp=False, plots=False,
        project=tmp_runs, name="v8", exist_ok=True, verbose=False,
    )  # fmt: skip
    best = Path(tmp_runs) / "v8" / "weights" / "best.pt"
    assert best.is_file()
    _val_predict_export(best, shapes_data, tmp_path)


def test_yolov11_dat_from_the_stock_cli(registered, shapes_data, tmp_path):
    """`yolo train model=cfg/yolov11n-dat.yaml`: the start-up hook finds DATBlock with no import; then val/predict."""
    exe = Path(sys.executable).with_name("yolo")
    r = subprocess.run(
        [
            str(exe), "train", f"model={CFG / 'yolov11n-dat.yaml'}", f"data={shapes_data}", "imgsz=64", "epochs=1",
            "batch=4", "workers=0", "device=cpu", "amp=False", "plots=False", f"project={tmp_path / 'runs'}",
            "name=v11", "exist_ok=True",
        ],
        capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=ROOT,
    )  # fmt: skip
    best = tmp_path / "runs" / "v11" / "weights" / "best.pt"
    assert r.returncode == 0 and best.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    _val_predict_export(best, shapes_data, tmp_path)


def test_half_and_bfloat16_models(registered):
    """model.half() (predict/val with half=True, EMA checkpoints) and bf16 weights run the DAT rows on CPU."""
    from ultralytics import YOLO

    net = _wake(YOLO(str(CFG / "yolov8n-dat.yaml")).model).eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        ref = _first(net(x))
        for dtype in (torch.float16, torch.bfloat16):
            out = _first(net.to(dtype)(x.to(dtype)))
            assert out.dtype == dtype and torch.isfinite(out).all()
            assert ((out.float() - ref).norm() / ref.norm()) < 0.05, dtype
            net.float()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_predict_and_amp_training_step(registered):
    from ultralytics import YOLO

    net = _wake(YOLO(str(CFG / "yolov11n-dat.yaml")).model).cuda()
    x = torch.rand(2, 3, 640, 480, device="cuda")
    with torch.no_grad():
        ref = _first(net.eval()(x))
        with torch.autocast("cuda", dtype=torch.float16):
            amp = _first(net(x))
        half = _first(net.half()(x.half()))
    for out in (amp, half):
        assert torch.isfinite(out).all() and ((out.float() - ref).norm() / ref.norm()) < 0.02
    net.float().train()
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x)
    sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out])).backward()
    grads = [p.grad for m in net.modules() if isinstance(m, DAttention) for p in m.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_dat_argument_in_a_yaml_names_row_and_fix(registered):
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    d = yaml.safe_load((CFG / "yolov8-dat.yaml").read_text())
    d["backbone"][DAT_ROW] = [-1, 1, "DATBlock", [1024, 7]]  # level 7 does not exist
    d["scale"] = "n"
    with pytest.raises(ValueError, match=r"row 9.*DATBlock.*level=7.*\[2, 3, 4, 5, 6\]"):
        DetectionModel(d, verbose=False)
