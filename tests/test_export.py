"""Deployment: every block family exports through Ultralytics' own exporter and runs in its runtime like PyTorch.

The headline cfgs (YOLOv8 and YOLO11 x BoT, DAT, CoAt) at scale n, exported at 64 px with ``model.export(...)``, run
in their runtime on CPU and are compared with PyTorch eager on the raw detection output (``(1, 4 + nc, anchors)``:
boxes in pixels, class scores in [0, 1]). Tolerances (``np.testing.assert_allclose``): fp32 formats ``atol = rtol =
1e-4`` (the exporter fuses Conv+BN, which moves the last bits); OpenVINO ``half=True`` ``atol = rtol = 2e-2`` (fp16
weights). Dynamic exports are also run at a second size (96x128). ``torch.export.export`` with dynamic height and
width (multiples of 32) matches eager at two sizes (``atol = rtol = 1e-4``).

Default run: one export per format and at least one per family; the full cross product is ``@pytest.mark.slow``.
Also here: each export route takes the blocks' export path (``is_exporting()``), DAT's gather sampler (equal to
``grid_sample`` within 1e-5, ONNX at opset 13 with dynamic axes), and the format rules that run before Ultralytics'
exporter (gather sampler for formats without a reliable GridSample, refusals before any converter runs).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from helpers import export_onnx, skip_unless_ultralytics_onnx, ultralytics_at_least

from yolo_attn import integration, registry
from yolo_attn.export import GRID_SAMPLE_FORMATS, plan_export, prepared_for_export
from yolo_attn.nn import DAT3, BoT3, CoAt3, DATBlock, DAttention, set_sampler
from yolo_attn.nn import attention as attention_mod

FAMILIES = ("bot", "dat", "coat")
# the comparators (Ultralytics' own attention, wrapped: psa, area) on yolov8n's neck, their residual scale moved off 0
integration.register()
COMPARATOR_INSERTS = {sp.cls for sp in registry.specs() if sp.origin and sp.role == "insert"}
COMPARATOR_CFGS = [f"yolov8n-{f}-neck.yaml" for f in registry.families() if registry.family_origin(f)]
CFGS = [f"{base}n-{fam}.yaml" for base in ("yolov8", "yolov11") for fam in FAMILIES] + COMPARATOR_CFGS
IMGSZ = 64
SECOND = (96, 128)  # a second input size for dynamic exports (H != W, not the export size)
FP32 = {"rtol": 1e-4, "atol": 1e-4}
HALF = {"rtol": 2e-2, "atol": 2e-2}

# (cfg, format) pairs of the default run: each format once, each family at least once; the rest is slow
DEFAULT = {
    ("yolov8n-dat.yaml", "onnx-dynamic"),
    ("yolov8n-bot.yaml", "torchscript"),
    ("yolov11n-coat.yaml", "onnx"),
    ("yolov8n-coat.yaml", "openvino"),
    ("yolov11n-dat.yaml", "openvino-half"),
    ("yolov8n-psa-neck.yaml", "openvino"),
    ("yolov8n-area-neck.yaml", "onnx-dynamic"),  # 4 areas at P3 and P4, dynamic token counts
    ("yolov8n-area-neck.yaml", "torchscript"),
}
FORMATS = ("onnx", "onnx-dynamic", "torchscript", "openvino", "openvino-half", "openvino-dynamic")


def _matrix():
    for cfg in CFGS:
        for fmt in FORMATS:
            marks = () if (cfg, fmt) in DEFAULT else (pytest.mark.slow,)
            yield pytest.param(cfg, fmt, marks=marks, id=f"{cfg.removesuffix('.yaml')}-{fmt}")


_MODELS: dict[str, object] = {}


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch, tmp_path):
    """Run each test in its own folder: Ultralytics writes an export next to the model file (a YAML's: the cwd)."""
    monkeypatch.chdir(tmp_path)


def _yolo(cfg: str):
    """One YOLO model per cfg (built seeded, then reused: the exporter works on a deep copy)."""
    from ultralytics import YOLO

    if cfg not in _MODELS:
        torch.manual_seed(0)
        _MODELS[cfg] = YOLO(cfg)
        with torch.no_grad():  # inserted comparators start as the identity: let their attention reach the output
            for m in _MODELS[cfg].model.modules():
                if type(m) in COMPARATOR_INSERTS:
                    m.gamma.fill_(0.5)
    return _MODELS[cfg]


def _eager(cfg: str, x: torch.Tensor) -> np.ndarray:
    net = _yolo(cfg).model.float().eval()
    with torch.no_grad():
        y = net(x)
    return (y[0] if isinstance(y, (list, tuple)) else y).numpy()


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _export(cfg: str, fmt: str) -> Path:
    base, _, variant = fmt.partition("-")
    kw = {"format": base, "imgsz": IMGSZ, "dynamic": variant == "dynamic", "half": variant == "half"}
    if base == "onnx":
        kw["simplify"] = False  # onnxslim is optional; the raw export is what is compared
    return Path(_yolo(cfg).export(**kw))  # into the cwd, the test's tmp_path (_in_tmp)


def _runner(fmt: str, path: Path):
    """A callable ``x (torch, NCHW) -> raw output (numpy)`` running the exported model in its runtime."""
    base = fmt.partition("-")[0]
    if base == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x.numpy()})[0]
    if base == "torchscript":
        ts = torch.jit.load(str(path))

        def run(x):
            with torch.no_grad():
                y = ts(x)
            return (y[0] if isinstance(y, (list, tuple)) else y).numpy()

        return run
    if base == "openvino":
        import openvino as ov

        xml = next(Path(path).glob("*.xml"))
        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda x: compiled(x.numpy())[0]
    raise AssertionError(fmt)


def _skip_unsupported(fmt: str) -> None:
    base = fmt.partition("-")[0]
    if base == "onnx":
        pytest.importorskip("onnxruntime")
        skip_unless_ultralytics_onnx()
    if base == "openvino":
        if importlib.util.find_spec("openvino") is None:
            pytest.skip("openvino is not installed (pip install yolo_attn[export])")
        if not ultralytics_at_least("8.4") and importlib.util.find_spec("openvino.runtime") is None:
            pytest.skip("Ultralytics 8.3.65's OpenVINO export calls openvino.runtime, which OpenVINO 2026 removed")


@pytest.mark.parametrize("cfg,fmt", list(_matrix()))
def test_export_matches_pytorch(registered, cfg, fmt, tmp_path):
    """Exported through ``model.export(format=...)``; the runtime's raw output equals PyTorch eager (FP32 / HALF
    tolerances above) at the export size and, for dynamic exports, at 96x128."""
    _skip_unsupported(fmt)
    run = _runner(fmt, _export(cfg, fmt))
    sizes = [(IMGSZ, IMGSZ)] + ([SECOND] if fmt.endswith("dynamic") else [])
    for h, w in sizes:
        x = _image(h, w)
        ref = _eager(cfg, x)
        got = run(x)
        assert got.shape == ref.shape, (h, w)
        np.testing.assert_allclose(got, ref, **(HALF if fmt.endswith("half") else FP32), err_msg=f"{fmt} at {h}x{w}")


# ------------------------------------------------------------------------------------------------- torch.export
def _torch_export_case(cfg: str):
    marks = () if cfg.startswith("yolov8") and cfg not in COMPARATOR_CFGS else (pytest.mark.slow,)
    return pytest.param(cfg, marks=marks, id=cfg.removesuffix(".yaml"))


@pytest.mark.parametrize("cfg", [_torch_export_case(c) for c in CFGS])
def test_torch_export_dynamic_hw_matches_eager_at_two_sizes(registered, cfg):
    """``torch.export.export`` with dynamic H and W (``32 * Dim``): the program matches eager (FP32 tolerance) at
    64x96 (the example) and 96x64; the route of LiteRT and ExecuTorch."""
    net = copy.deepcopy(_yolo(cfg).model).float().eval()
    for m in net.modules():  # what Ultralytics' exporter does for dynamic=True: anchors from the live size, not cached
        if hasattr(type(m), "dynamic"):
            m.dynamic = True
    h, w = torch.export.Dim("h", min=1, max=40), torch.export.Dim("w", min=1, max=40)
    with torch.no_grad():
        ep = torch.export.export(net, (_image(64, 96),), dynamic_shapes={"x": {2: 32 * h, 3: 32 * w}})
    prog = ep.module()
    for size in ((64, 96), (96, 64)):
        x = _image(*size, seed=1)
        with torch.no_grad():
            got = prog(x)
        got = (got[0] if isinstance(got, (list, tuple)) else got).numpy()
        np.testing.assert_allclose(got, _eager(cfg, x), **FP32, err_msg=f"torch.export at {size}")


# --------------------------------------------------------------------------------------------------- validation
def _val_metrics(model, **kw) -> np.ndarray:
    m = model.val(batch=1, workers=0, plots=False, verbose=False, **kw)
    return np.array([m.box.mp, m.box.mr, m.box.map50, m.box.map])


def test_onnx_val_matches_pytorch_val(registered, shapes_data, tmp_path):
    """``YOLO(<exported onnx>).val`` on generated data equals the PyTorch model's validation: precision, recall,
    mAP50 and mAP50-95 within 0.005 (an untrained yolov8n-dat: small numbers, the same pipeline)."""
    _skip_unsupported("onnx")
    from ultralytics import YOLO

    cfg = "yolov8n-dat.yaml"
    onnx = _export(cfg, "onnx")
    ref = _val_metrics(_yolo(cfg), data=shapes_data, imgsz=IMGSZ, project=str(tmp_path / "pt"))
    got = _val_metrics(YOLO(str(onnx), task="detect"), data=shapes_data, imgsz=IMGSZ, project=str(tmp_path / "ox"))
    np.testing.assert_allclose(got, ref, atol=0.005, rtol=0)


WEIGHTS = SHARED / "weights" / "yolov8n.pt"
COCO = SHARED / "coco128.yaml"


@pytest.mark.slow
@pytest.mark.skipif(not (WEIGHTS.is_file() and COCO.is_file()), reason="needs ../shared/data (yolov8n.pt, coco128)")
@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_onnx_val_map_within_0p005(registered, family, tmp_path):
    """COCO yolov8n weights transferred into yolov8n-<family>-sppf_before (the block inserted before SPPF starts as
    the identity, every stock row gets its weights), validated on coco128 at 320 px from PyTorch and from the exported
    ONNX (dynamic): precision, recall, mAP50 and mAP50-95 within 0.005."""
    _skip_unsupported("onnx")
    from ultralytics import YOLO

    model = YOLO(f"yolov8n-{family}-sppf_before.yaml").load(str(WEIGHTS))
    onnx = model.export(format="onnx", imgsz=320, dynamic=True, simplify=False)
    kw = {"data": str(COCO), "imgsz": 320}
    ref = _val_metrics(model, project=str(tmp_path / "pt"), **kw)
    got = _val_metrics(YOLO(str(onnx), task="detect"), project=str(tmp_path / "ox"), **kw)
    assert ref[3] > 0.05, ref  # a real validation: the pretrained stem and head find objects
    np.testing.assert_allclose(got, ref, atol=0.005, rtol=0)


# ------------------------------------------------------------------------------------- each route takes the path
def _spy(block: torch.nn.Module) -> list[bool]:
    """Record ``is_exporting()`` on entry to the block and to each of its attention layers (forward pre-hooks)."""
    seen: list[bool] = []
    for m in block.modules():
        if m is block or isinstance(m, attention_mod.AttentionLayer):
            m.register_forward_pre_hook(lambda *_: seen.append(attention_mod.is_exporting()))
    return seen


BLOCKS = {
    "bot": lambda: BoT3(32, 32, 1, 0.5, 4),
    "dat": lambda: DAT3(32, 32, 1, 0.5, 5),
    "coat": lambda: CoAt3(32, 32, 1, dim_head=16),
}


def _route(route: str, block: torch.nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    if route == "onnx":
        export_onnx(block, tmp_path / "b.onnx", x)
    elif route == "jit.trace":
        torch.jit.trace(block, x, check_trace=False)
    elif route == "torch.export":
        torch.export.export(block, (x,))
    elif route == "fx":
        # FX cannot trace a block that unpacks its input size or calls einops on a Proxy: the forward still sees
        # is_exporting() before it stops, which is what this test checks
        with contextlib.suppress(torch.fx.proxy.TraceError, RuntimeError):
            torch.fx.symbolic_trace(block)
    elif route == "eager":
        block(x)


@pytest.mark.parametrize("route", ["onnx", "jit.trace", "torch.export", "fx", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_export_route_takes_the_export_path(family, route, tmp_path):
    """Under torch.onnx.export, torch.jit.trace, torch.export.export and torch.fx.symbolic_trace the block's forward
    and each attention layer's see ``is_exporting()`` True (so they run the plain-op path); in eager it is False.
    (FX stops inside the block: only the calls it reaches are recorded.)"""
    if route == "onnx":
        pytest.importorskip("onnx")
    block = BLOCKS[family]().eval()
    seen = _spy(block)
    with torch.no_grad():
        _route(route, block, torch.randn(1, 32, 8, 8), tmp_path)
    assert seen, "the block was not called"
    assert all(seen) if route != "eager" else not any(seen), seen


def test_fx_cannot_trace_the_blocks():
    """Why IMX (a torch.fx route) is refused: FX stops at the blocks' size reads. When this test fails, FX can trace
    them and the refusal in yolo_attn.export should be revisited."""
    for make in BLOCKS.values():
        with pytest.raises((torch.fx.proxy.TraceError, RuntimeError)):  # size unpacking, einops, control flow
            torch.fx.symbolic_trace(make().eval())


# ---------------------------------------------------------------------------------------------- the DAT sampler
def test_gather_sampler_equals_grid_sample_in_a_dat_model(registered):
    """A DAT detector with the gather sampler gives grid_sample's outputs within 1e-5, for both bias kinds."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    net = YOLO("yolov8n-dat.yaml").model.eval()
    layers = [m for m in net.modules() if isinstance(m, DAttention)]
    assert layers and {m.sampler for m in layers} == {"grid_sample"}
    for m in net.modules():  # move the blocks off the identity and the reference grid, so sampling matters
        if isinstance(m, DAttention):
            for p in m.parameters():
                torch.nn.init.normal_(p, std=0.05)
    x = _image(64, 96)
    with torch.no_grad():
        ref = net(x)[0]
        got = set_sampler(net, "gather")(x)[0]
    assert {m.sampler for m in layers} == {"gather"}
    assert {m.rel_pos.sampler for m in layers if m.rel_pos is not None} == {"gather"}
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    axial = DAttention(32, 32, level=4, pos_bias="axial").eval()
    for p in axial.parameters():
        torch.nn.init.normal_(p, std=0.1)
    y = torch.randn(2, 32, 12, 9)
    with torch.no_grad():
        ref = axial(y)
        axial.sampler = "gather"
        torch.testing.assert_close(axial(y), ref, atol=1e-5, rtol=0)


def test_gather_sampler_exports_to_onnx_opset_13_with_dynamic_axes(tmp_path):
    """DAT with the gather sampler exports at opset 13 (no GridSample op) and onnxruntime matches PyTorch (1e-4) at
    the export size and at two other sizes; with grid_sample opset 13 is refused."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m = DATBlock(32, 32, 1, 4).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 32, 16, 16)
    with pytest.raises(RuntimeError, match="GridSample needs opset 16"):
        export_onnx(m, tmp_path / "g.onnx", x, opset=13)
    path = export_onnx(set_sampler(m, "gather"), tmp_path / "m.onnx", x, opset=13)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GridSample" not in ops and "Gather" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 32, 16, 16), (2, 32, 12, 20), (1, 32, 7, 5)):
        y = torch.randn(*shape)
        with torch.no_grad():
            ref = m(y).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": y.numpy()})[0], ref, atol=1e-4, rtol=1e-4, err_msg=str(shape))


def test_sampler_is_checked_saved_and_old_pickles_default_to_grid_sample():
    m = DATBlock(32, 32, 1, 5, pos_bias="axial")
    with pytest.raises(ValueError, match="sampler='bilinear' is not one of 'grid_sample', 'gather'"):
        set_sampler(m, "bilinear")
    with pytest.raises(ValueError, match="DAttention: sampler='x'"):
        m.m[0].attn.sampler = "x"
    set_sampler(m, "gather")
    back = pickle.loads(pickle.dumps(m))
    assert back.m[0].attn.sampler == "gather" and back.m[0].attn.rel_pos.sampler == "gather"
    attn = m.m[0].attn
    del attn.__dict__["_sampler"], attn.rel_pos.__dict__["sampler"]  # the state a pickle from before the switch has
    old = pickle.loads(pickle.dumps(m)).m[0].attn
    assert old.sampler == "grid_sample" and old.rel_pos.sampler == "grid_sample"
    assert "sampler='grid_sample'" in repr(old)


# ------------------------------------------------------------------------------------------- the format rules
def test_format_rules():
    """TorchScript/ONNX/OpenVINO keep grid_sample; formats without a reliable GridSample get the gather sampler;
    ONNX below opset 16 with grid_sample and IMX (torch.fx) are refused, naming the format, row, block and alternative.
    """
    m = DATBlock(32, 32, 1, 5)
    for fmt in GRID_SAMPLE_FORMATS:
        assert plan_export(m, fmt).sampler is None
    for fmt in ("engine", "TRT", "tflite", "saved_model", "pb", "edgetpu", "tfjs", "coreml", "mlmodel", "litert"):
        plan = plan_export(m, fmt)
        assert plan.sampler == "gather" and plan.reason, fmt
    assert plan_export(m, "ncnn").reason == "its GridSample support is not checked here"
    assert plan_export(BoT3(32, 32), "engine").sampler is None  # nothing to switch without a DAT layer
    with pytest.raises(ValueError, match=r"opset=13.*GridSample needs opset 16.*set_sampler"):
        plan_export(m, "onnx", opset=13)
    assert plan_export(set_sampler(DATBlock(32, 32), "gather"), "onnx", opset=13).sampler is None
    for block in (BoT3(32, 32), CoAt3(32, 32, dim_head=16)):
        with pytest.raises(ValueError, match=rf"format='imx'.*{type(block).__name__}.*torch.fx.*'onnx' or 'openvino'"):
            plan_export(block, "imx")


def test_prepared_for_export_switches_logs_and_restores(caplog):
    m = DATBlock(32, 32, 2, 4)
    with caplog.at_level(logging.INFO, logger="yolo_attn"), prepared_for_export(m, "engine") as plan:
        assert {a.sampler for a in m.modules() if isinstance(a, DAttention)} == {"gather"}
    assert plan.sampler == "gather"
    assert {a.sampler for a in m.modules() if isinstance(a, DAttention)} == {"grid_sample"}
    lines = [r.getMessage() for r in caplog.records if "gather sampler" in r.getMessage()]
    assert len(lines) == 1 and "format='engine'" in lines[0] and "TensorRT" in lines[0]


class _Stop(Exception):
    pass


def test_ultralytics_exporter_applies_the_rules_before_converting(registered, monkeypatch):
    """Through ``model.export``: format='engine' reaches the converter with every DAT layer on the gather sampler
    (TensorRT itself is stubbed out), the model's own setting comes back afterwards; format='imx' on a BoT model and
    ONNX opset 13 on a grid_sample DAT model are refused before the exporter body runs."""
    from ultralytics import YOLO
    from ultralytics.engine.exporter import Exporter

    from yolo_attn import integration

    assert getattr(Exporter.__call__, "_yolo_attn_orig", None) is not None  # register() installed the hook
    seen = []

    def body(self, model=None, *a, **k):  # stands for the exporter's body (device checks, converters)
        seen.append((self.args.format, {m.sampler for m in model.modules() if isinstance(m, DAttention)}))
        raise _Stop

    monkeypatch.setattr(Exporter, "__call__", body)  # restored (with the real hook) after the test
    integration._install_export_hook()  # the same hook, around the stub body
    dat = YOLO("yolov8n-dat.yaml")
    with pytest.raises(_Stop):
        dat.export(format="engine", imgsz=64, device="cpu")
    assert seen == [("engine", {"gather"})]
    assert {m.sampler for m in dat.model.modules() if isinstance(m, DAttention)} == {"grid_sample"}
    with pytest.raises(ValueError, match="GridSample needs opset 16"):
        dat.export(format="onnx", imgsz=64, opset=13)
    with pytest.raises(ValueError, match=r"format='imx'.*row \d+ \(BoT3\)"):
        YOLO("yolov8n-bot.yaml").export(format="imx", imgsz=64)
    assert len(seen) == 1  # neither refusal reached the exporter body


def test_ultralytics_onnx_opset_13_with_the_gather_sampler(registered, tmp_path):
    """A yolov8n-dat detector switched to the gather sampler exports through Ultralytics at opset 13 with
    ``dynamic=True``; onnxruntime matches PyTorch (FP32 tolerance) at the export size and at 96x128."""
    _skip_unsupported("onnx")
    onnx = pytest.importorskip("onnx")
    if not ultralytics_at_least("8.4") and torch.__version__ >= "2.9":
        pytest.skip(
            "Ultralytics 8.3.65 exports with torch's dynamo exporter here, which writes opset >= 18 whatever is asked"
        )
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n-dat.yaml")
    for m in model.model.modules():  # off the identity, so the sampled keys reach the output
        if isinstance(m, DAttention):
            for p in m.parameters():
                torch.nn.init.normal_(p, std=0.05)
    set_sampler(model.model, "gather")
    path = model.export(format="onnx", imgsz=IMGSZ, opset=13, dynamic=True, simplify=False)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 13 and "GridSample" not in {n.op_type for n in graph.graph.node}
    run = _runner("onnx", Path(path))
    net = model.model.float().eval()
    for h, w in ((IMGSZ, IMGSZ), SECOND):
        x = _image(h, w)
        with torch.no_grad():
            ref = net(x)[0].numpy()
        np.testing.assert_allclose(run(x), ref, **FP32, err_msg=f"{h}x{w}")
