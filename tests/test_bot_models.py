"""BoT models through Ultralytics: the shipped YAMLs build at n and s, train, validate with rect batches, predict at
640x480, export to ONNX with dynamic H/W, and BoT50 has the paper's size.

Every model-level promise of the BoTNet issue is checked here through Ultralytics' public API (``YOLO(...)``, the
``yolo`` CLI), the way a user runs it; the layer-level checks are in ``tests/test_bot.py``.
"""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, subprocess_env
from helpers import skip_unless_ultralytics_onnx, ultralytics_at_least, val_rect_and_predict_640x480
from torch import nn

from yolo_attn.nn.bot import MHSA, BoT3, BoTBottleneck, BoTStage, Classifier

CFG = ROOT / "cfg"
STOCK = {"yolov8": "yolov8{}.yaml", "yolov11": "yolo11{}.yaml"}  # Ultralytics' own base of each of our YAMLs
BOT3_LAYER = 8  # the last backbone CSP block, replaced in place: no index moves


def _wake(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move the BoT blocks away from their identity init (non-zero last BN, larger position tables).

    At init the zero last BN hides the attention from the output, so a wrong MHSA would pass an export or
    precision comparison; after this it cannot.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BoTBottleneck):
                m.cv2.bn.weight.copy_(1 + 0.2 * torch.randn(m.cv2.bn.weight.shape, generator=g))
            if isinstance(m, MHSA):
                for t in (m.rel_pos.bias_h, m.rel_pos.bias_w):
                    t.copy_(0.5 * torch.randn(t.shape, generator=g))
                for conv in (m.q, m.k, m.v):
                    conv.weight.mul_(20)  # init std 0.01 -> 0.2: attention far from uniform
    return model


def _bot3(model) -> BoT3:
    """Layer 8 of a ``YOLO`` wrapper or a ``DetectionModel``."""
    while not isinstance(model, nn.Sequential):
        model = model.model
    layer = model[BOT3_LAYER]
    assert isinstance(layer, BoT3), f"layer {BOT3_LAYER} is {type(layer).__name__}"
    return layer


def _tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


@pytest.mark.parametrize("family", ["yolov8", "yolov11"])
@pytest.mark.parametrize("scale,width,dim_head", [("n", 256, 32), ("s", 512, 64)])
def test_detect_yaml_builds_like_stock_except_layer_8(registered, family, scale, width, dim_head):
    """YOLO('cfg/<family><scale>-bot.yaml') builds (stride probe included); only layer 8 differs from Ultralytics'."""
    from ultralytics import YOLO

    model = YOLO(str(CFG / f"{family}{scale}-bot.yaml"))
    net = model.model
    assert model.task == "detect" and net.yaml["scale"] == scale
    assert net.stride.tolist() == [8.0, 16.0, 32.0]  # the 256x256 stride probe ran through BoT3 (P5 = 8x8)
    bot = _bot3(net)
    assert bot.cv3.conv.out_channels == width  # c2 width-scaled like the C2f/C3k2 it replaces
    assert len(bot.m) == 1  # depth-scaled n: yolov8 3 * 0.33, yolo11 2 * 0.5
    assert {(b.mhsa.num_heads, b.mhsa.dim_head) for b in bot.m} == {(4, dim_head)}

    stock = YOLO(STOCK[family].format(scale)).model
    assert len(stock.model) == len(net.model)
    for i, (a, b) in enumerate(zip(stock.model, net.model)):
        if i == BOT3_LAYER:
            continue
        assert type(a) is type(b) and a.f == b.f, i
        assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters()), i


def _val_and_predict(best: Path, data: str) -> None:
    """Load a trained checkpoint (also under Ultralytics' restricted loader), validate with rectangular batches,
    predict on a 640x480 image (P5 = 20x15)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    if ultralytics_at_least("8.4"):  # restricted loading arrived in 8.4 (8.3's safe_only swaps classes for stubs)
        ckpt, _ = torch_safe_load(str(best), safe_only=True)  # ULTRALYTICS_SAFE_LOAD=1: weights_only + allow-list
        assert isinstance(_bot3(ckpt["model"]), BoT3)
    model = YOLO(str(best))
    seen = val_rect_and_predict_640x480(model, _bot3(model), data)
    assert seen[-1] == (15, 20)  # rectangular letterbox: 640x480 -> P5 of 20x15, the odd size community code breaks on


def test_yolov11_bot_train_val_predict(registered, shapes_data, tmp_runs):
    from ultralytics import YOLO

    model = YOLO(str(CFG / "yolov11n-bot.yaml"))
    model.train(
        data=shapes_data, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", amp=False, plots=False,
        project=tmp_runs, name="v11", exist_ok=True, verbose=False,
    )  # fmt: skip
    best = Path(tmp_runs) / "v11" / "weights" / "best.pt"
    assert best.is_file()
    _val_and_predict(best, shapes_data)


def test_yolov8_bot_cli_train_then_val_predict(registered, shapes_data, tmp_path):
    """The stock ``yolo`` CLI with the repo YAML (the start-up hook registers the blocks: no import in between)."""
    exe = Path(sys.executable).with_name("yolo")
    r = subprocess.run(
        [
            str(exe), "train", "model=cfg/yolov8-bot.yaml", f"data={shapes_data}", "epochs=1", "imgsz=64", "batch=4",
            "workers=0", "device=cpu", "amp=False", "plots=False", f"project={tmp_path / 'runs'}", "name=v8",
            "exist_ok=True",
        ],
        capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=ROOT,
    )  # fmt: skip
    best = tmp_path / "runs" / "v8" / "weights" / "best.pt"
    assert r.returncode == 0 and best.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    _val_and_predict(best, shapes_data)


def test_onnx_export_dynamic_matches_pytorch_at_other_sizes(registered, tmp_path):
    """Ultralytics' own exporter (opset 17, dynamic=True) at 64x64; ONNX Runtime agrees at 96x160 and 160x96."""
    import onnxruntime as ort
    from ultralytics import YOLO

    src = tmp_path / "yolov8n-bot.yaml"
    src.write_text((CFG / "yolov8-bot.yaml").read_text())
    model = YOLO(str(src))
    _wake(model.model)
    skip_unless_ultralytics_onnx()
    f = model.export(format="onnx", dynamic=True, imgsz=64, opset=17, simplify=False, device="cpu")
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    net = model.model.eval()
    for shape in [(1, 3, 96, 160), (2, 3, 160, 96)]:
        x = torch.rand(shape)
        with torch.no_grad():
            ref = net(x)[0].numpy()  # decoded boxes + class scores, as the exported graph returns them
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3, err_msg=str(shape))


def test_model_fuse_low_precision_and_gradients(registered):
    """fuse() keeps the output; bf16 and (where CPU supports it) fp16 weights run; every parameter gets a gradient."""
    from ultralytics.nn.tasks import DetectionModel

    net = _wake(DetectionModel(str(CFG / "yolov8n-bot.yaml"), ch=3, nc=3, verbose=False)).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref = net(x)[0]
        fused = copy.deepcopy(net).fuse(verbose=False)
        torch.testing.assert_close(fused(x)[0], ref, rtol=1e-3, atol=1e-3)
        for dtype in (torch.bfloat16, torch.float16):
            low = copy.deepcopy(net).to(dtype)  # what model.half() / AutoBackend(fp16) do, without autocast
            try:
                y = low(x.to(dtype))[0].float()
            except RuntimeError as e:
                if dtype is torch.float16 and "not implemented" in str(e):
                    continue  # some fp16 CPU kernels are missing in some torch builds; CUDA is tested below
                raise
            assert torch.isfinite(y).all()
            assert (y - ref).norm() / ref.norm() < 5e-2, dtype

    net.train()
    sum(t.float().sum() for t in _tensors(net(torch.rand(2, 3, 64, 96)))).backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]  # DFL is frozen
    assert not unused  # DDP(find_unused_parameters=False) would fail on any


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_train_step_and_half_inference(registered):
    from ultralytics.nn.tasks import DetectionModel

    net = _wake(DetectionModel(str(CFG / "yolov8n-bot.yaml"), ch=3, nc=3, verbose=False)).cuda()
    x = torch.rand(2, 3, 480, 640, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x)
    sum(t.float().sum() for t in _tensors(out)).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.eval()
    with torch.no_grad():
        ref = net(x)[0]
        y = copy.deepcopy(net).half()(x.half())[0].float()
    assert torch.isfinite(y).all() and (y - ref).norm() / ref.norm() < 2e-2


def _resnet50_rows(d: dict) -> dict:
    """The same YAML with the stock ResNet-50 c5 (Ultralytics ResNetLayer) in place of the BoT stage."""
    d = copy.deepcopy(d)
    d["backbone"][4] = [-1, 1, "ResNetLayer", [1024, 512, 2, False, 3]]
    return d


def test_botnet50_cls_has_paper_size_and_runs_any_size(registered):
    """BoT50 at 1000 classes: 20.8M parameters (paper) within 2%; its ResNet-50 twin has ResNet-50's 25.56M."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import ClassificationModel

    model = YOLO(str(CFG / "botnet50-cls.yaml"))
    net = model.model
    assert model.task == "classify"
    n_bot = sum(p.numel() for p in net.parameters())
    assert abs(n_bot / 20.8e6 - 1) < 0.02, n_bot

    stage, head = net.model[4], net.model[5]
    assert isinstance(stage, BoTStage) and isinstance(head, Classifier)
    assert [b.mhsa.dim_head for b in stage.m] == [128] * 3 and stage.m[0].mhsa.num_heads == 4
    assert isinstance(stage.m[0].pool, nn.AvgPool2d) and isinstance(stage.m[1].pool, nn.Identity)
    assert isinstance(stage.m[0].act, nn.ReLU) and isinstance(stage.m[0].cv1.act, nn.ReLU)  # YAML activation
    assert isinstance(head.conv, nn.Identity) and (head.linear.in_features, head.linear.out_features) == (2048, 1000)

    with open(CFG / "botnet50-cls.yaml") as f:
        resnet = ClassificationModel(_resnet50_rows(yaml.safe_load(f)), verbose=False)
    n_resnet = sum(p.numel() for p in resnet.parameters())
    assert n_resnet == 25_557_032  # torchvision resnet50: the head is ResNet's, not Ultralytics' 1280-channel one

    net.eval()
    with torch.no_grad():
        for hw in [(224, 224), (160, 224), (64, 96)]:  # c5 attends at 14x14, 10x14, 4x6
            probs, logits = net(torch.rand(1, 3, *hw))
            assert probs.shape == (1, 1000) and torch.isfinite(logits).all()
            torch.testing.assert_close(probs.sum(), torch.tensor(1.0))

    ClassificationModel.reshape_outputs(net, 3)  # what the classify trainer does for a 3-class dataset
    assert net.model[-1].linear.out_features == 3


@pytest.mark.slow
def test_botnet50_cls_trains_with_classify_task(registered, tmp_path):
    """One epoch of Ultralytics' classify trainer on a generated 3-class folder dataset, then predict."""
    from PIL import Image
    from ultralytics import YOLO

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
            d = tmp_path / "cls" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(4):
                img = np.clip(rng.normal(colour, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    model = YOLO(str(CFG / "botnet50-cls.yaml"))
    model.train(
        data=str(tmp_path / "cls"), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", amp=False, plots=False,
        project=str(tmp_path / "runs"), name="bot50", exist_ok=True, verbose=False,
    )  # fmt: skip
    best = tmp_path / "runs" / "bot50" / "weights" / "best.pt"
    res = YOLO(str(best)).predict(np.zeros((60, 80, 3), np.uint8), imgsz=64, device="cpu", verbose=False)
    assert res[0].probs.data.shape == (3,)
