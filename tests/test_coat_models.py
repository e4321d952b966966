"""CoAtNet models through Ultralytics: the shipped YAMLs build at every scale, train, validate with rect batches,
predict at 640x480, run from the ``yolo`` CLI, survive half precision, and CoAtNet-0 has the paper's size.

Model-level promises of the CoAtNet issue, checked through Ultralytics' public API (``YOLO(...)``, the ``yolo`` CLI)
the way a user runs it; the layer-level checks are in ``tests/test_coat.py``. One training run per YAML family: the
YOLOv8 variant trains from Python, the YOLO11 variant from the CLI, and each run's ``best.pt`` is reused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, subprocess_env
from helpers import skip_unless_ultralytics_onnx
from torch import nn

from yolo_attn.nn.coat import CoAt, CoAt3, CoAtAttention, CoAtBlock, MBConv

CFG = ROOT / "cfg"
FAMILIES = ["yolov8", "yolov11"]
TRAIN = dict(epochs=1, imgsz=64, batch=4, workers=0, device="cpu", amp=False, plots=False, val=False, verbose=False)


def _net(model) -> nn.Sequential:
    while not isinstance(model, nn.Sequential):
        model = model.model
    return model


def _wake(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights on the zero-initialised residual branches, so the attention shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CoAtBlock):
                for layer in (m.attn.proj, m.mlp.fc2):
                    layer.weight.copy_(0.1 * torch.randn(layer.weight.shape, generator=g))
    return model


def _check_layout(net: nn.Sequential) -> None:
    """P1-P3 are Ultralytics' convolutions; P4's CSP block is CoAt3; P5 is a CoAt stage (stride 2, then blocks)."""
    assert type(net[6]) is CoAt3 and type(net[7]) is CoAt and type(net[8]) is CoAt
    assert net[7].stride == 2 and net[8].stride == 1
    assert not any(isinstance(m, (CoAt, CoAt3, MBConv)) for m in net[:6])
    for layer in (6, 7, 8):
        for a in layer_attn(net[layer]):
            assert a.dim_head == 32


def layer_attn(module: nn.Module) -> list[CoAtAttention]:
    return [m for m in module.modules() if isinstance(m, CoAtAttention)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale,p5_width,p5_blocks", [("n", 256, 2), ("s", 512, 2)])
def test_detect_yaml_builds(registered, family, scale, p5_width, p5_blocks):
    """YOLO('cfg/<family><scale>-coat.yaml') builds (the 256x256 stride probe runs through P5 = 8x8 attention)."""
    from ultralytics import YOLO

    model = YOLO(str(CFG / f"{family}{scale}-coat.yaml"))
    net = _net(model.model)
    assert model.task == "detect" and model.model.yaml["scale"] == scale
    assert model.model.stride.tolist() == [8.0, 16.0, 32.0]
    _check_layout(net)
    assert net[8].c2 == p5_width and len(layer_attn(net[7])) + len(layer_attn(net[8])) == p5_blocks
    x = torch.randn(1, 3, 96, 160)  # P5 = 3x5: rectangular, odd
    model.model.eval()
    with torch.no_grad():
        y = model.model(x)
    assert torch.isfinite(y[0] if isinstance(y, (list, tuple)) else y).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_all_scales_parse(registered, family):
    """Every scale's widths give whole heads of 32 (n, s, m, l, x), without building the full detector."""
    from ultralytics.nn.tasks import parse_model, yaml_model_load

    for scale in "nsmlx":
        d = yaml_model_load(CFG / f"{family}{scale}-coat.yaml")
        net, _ = parse_model(d, ch=3, verbose=False)
        _check_layout(net)


def _predict_640x480(weights: str) -> None:
    from ultralytics import YOLO

    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    res = YOLO(weights).predict(img, imgsz=640, device="cpu", verbose=False)
    assert len(res) == 1 and res[0].orig_shape == (480, 640)


def _val_rect(weights: str, data: str) -> None:
    from ultralytics import YOLO

    metrics = YOLO(weights).val(data=data, imgsz=64, batch=2, rect=True, workers=0, device="cpu", plots=False)
    assert np.isfinite(metrics.box.map)


def test_yolov8_coat_train_val_predict(registered, shapes_data, tmp_runs):
    """One epoch on generated data from Python, then val(rect=True) and predict at 640x480 with its best.pt."""
    from ultralytics import YOLO

    model = YOLO(str(CFG / "yolov8n-coat.yaml"))
    model.train(data=shapes_data, project=tmp_runs, name="v8", exist_ok=True, **TRAIN)
    best = Path(model.trainer.best)
    assert best.is_file()
    _check_layout(_net(YOLO(str(best)).model))
    _val_rect(str(best), shapes_data)
    _predict_640x480(str(best))
    _export_onnx_dynamic(str(best), Path(tmp_runs))


def _export_onnx_dynamic(weights: str, tmp: Path) -> None:
    """Ultralytics' ONNX export with dynamic H/W; ONNX Runtime agrees with PyTorch at another size (96x128)."""
    ort = pytest.importorskip("onnxruntime")
    from ultralytics import YOLO

    model = YOLO(weights)
    skip_unless_ultralytics_onnx()
    f = model.export(format="onnx", dynamic=True, imgsz=64, simplify=False, device="cpu")
    net = model.model.float().eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        want = net(x)
    want = (want[0] if isinstance(want, (list, tuple)) else want).numpy()
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == want.shape
    assert abs(got - want).max() < 1e-3 * max(1.0, abs(want).max())


def test_yolov11_coat_cli_train_val_predict(registered, shapes_data, tmp_runs):
    """The stock `yolo` CLI trains the YAML with no import (start-up hook); then val(rect=True) and predict."""
    yolo = Path(sys.executable).with_name("yolo")
    args = [f"{k}={v}" for k, v in TRAIN.items()]
    cmd = [str(yolo), "train", f"model={CFG / 'yolov11n-coat.yaml'}", f"data={shapes_data}", f"project={tmp_runs}"]
    cmd += ["name=v11", "exist_ok=True", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=tmp_runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = Path(tmp_runs) / "v11" / "weights" / "best.pt"
    assert best.is_file(), proc.stdout[-2000:]
    _val_rect(str(best), shapes_data)
    _predict_640x480(str(best))


def test_half_and_bf16(registered):
    """model.half() (what AutoBackend and EMA checkpoints do) constructs; bf16 forward on CPU is finite."""
    from ultralytics import YOLO

    net = _wake(YOLO(str(CFG / "yolov8n-coat.yaml")).model).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = net(x)[0]
        half = net.half()
        assert all(p.dtype == torch.float16 for p in half.parameters())
        y = net.to(torch.bfloat16)(x.to(torch.bfloat16))[0]
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_fuse_keeps_output(registered):
    """fuse() folds the BN of every Ultralytics Conv inside MBConv/CoAt3 and leaves the output unchanged."""
    from ultralytics import YOLO

    net = _wake(YOLO(str(CFG / "yolov11n-coat.yaml")).model).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref = net(x)[0]
        y = net.fuse(verbose=False)(x)[0]
    assert not any(hasattr(m, "bn") for m in _net(net)[6].modules() if type(m).__name__ == "Conv")
    torch.testing.assert_close(y, ref, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_half_predict(registered, family):
    from ultralytics import YOLO

    net = _wake(YOLO(str(CFG / f"{family}n-coat.yaml")).model).cuda().eval()
    x = torch.randn(2, 3, 480, 640, device="cuda")
    with torch.no_grad():
        ref = net(x)[0]
        y = net.half()(x.half())[0]
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_coatnet0_size(registered):
    """CoAtNet-0 at nc=1000: parameters within 5% of the paper's 25M, MACs at 224 within 10% of its 4.2G."""
    from ultralytics import YOLO

    from yolo_attn.flops import count_flops

    model = YOLO(str(CFG / "coatnet0-cls.yaml"))
    assert model.task == "classify"
    net = model.model.eval()
    params = sum(p.numel() for p in net.parameters())
    assert abs(params / 25e6 - 1) < 0.05, params
    flops = count_flops(net, (1, 3, 224, 224))  # yolo_attn's counter: SDPA (QK^T and PV) whatever kernel ran
    macs = flops["gflops"] * 1e9 / 2
    assert abs(macs / 4.2e9 - 1) < 0.10, macs
    attention = sum(v for k, v in flops["by_op"].items() if k in ("bmm", "mm") or "scaled_dot_product" in k)
    assert attention > 0  # attention really was counted
    stages = [m for m in net.model if isinstance(m, CoAt)]
    assert [len(s.m) for s in stages] == [5, 2] and [s.c2 for s in stages] == [384, 768]
    assert [layer_attn(s)[0].num_heads for s in stages] == [12, 24]
    with torch.no_grad():  # resolution-free: another size with the same weights
        out = net(torch.randn(1, 3, 256, 192))
    assert (out[0] if isinstance(out, (list, tuple)) else out).shape[-1] == 1000


def test_yaml_error_names_row(registered):
    """A CoAt row whose width is not a multiple of the head dim fails with the row and the fix."""
    from ultralytics.nn.tasks import parse_model

    d = {"nc": 1, "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "CoAt", [40, 2]]], "head": []}
    with pytest.raises(ValueError, match=r"row 1.*CoAt.*c2 = 40 is not divisible by dim_head=32"):
        parse_model(d, ch=3, verbose=False)
