"""Checks shared by the block test files (tests/ is on sys.path through conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DYNAMIC_HW = {"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}}


def ultralytics_at_least(version: str) -> bool:
    """The installed Ultralytics is ``version`` or newer (the suite also runs against the oldest supported)."""
    import ultralytics
    from ultralytics.utils.checks import check_version

    return check_version(ultralytics.__version__, f">={version}")


def skip_unless_ultralytics_onnx() -> None:
    """Skip when Ultralytics' own ONNX exporter cannot run here, whatever the model.

    Ultralytics before 8.4 calls ``torch.onnx.export`` without ``dynamo=False``; from torch 2.9 that default is the
    dynamo exporter, which needs ``onnxscript`` (not a dependency of either). Our blocks' export is still tested on
    every version through :func:`export_onnx`.
    """
    import importlib.util

    import pytest
    from ultralytics.utils.checks import check_version

    torch_new = check_version(torch.__version__, ">=2.9")
    if torch_new and not ultralytics_at_least("8.4") and importlib.util.find_spec("onnxscript") is None:
        import ultralytics

        pytest.skip(
            f"Ultralytics {ultralytics.__version__}'s exporter needs onnxscript under torch {torch.__version__}"
        )


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor, opset: int = 17) -> Path:
    """TorchScript-based ONNX export with dynamic batch, height and width (what Ultralytics' exporter uses)."""
    torch.onnx.export(
        model,
        example,
        str(path),
        opset_version=opset,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes=DYNAMIC_HW,
    )
    return Path(path)


def assert_onnx_matches(model: torch.nn.Module, example: torch.Tensor, inputs, path: Path, atol: float = 1e-4) -> None:
    """Export ``model`` at ``example``'s size, then compare onnxruntime with PyTorch on each tensor in ``inputs``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(export_onnx(model, path, example)), providers=["CPUExecutionProvider"])
    for x in inputs:
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"x": x.numpy()})[0]
        assert got.shape == ref.shape, tuple(x.shape)
        err = abs(got - ref).max()
        assert err < atol, (tuple(x.shape), err)


def val_rect_and_predict_640x480(model, block: torch.nn.Module, data: str) -> list[tuple[int, int]]:
    """``val(rect=True)`` on ``data``, then predict one 640x480 image; return the output sizes ``block`` produced."""
    metrics = model.val(data=data, imgsz=64, batch=2, rect=True, workers=0, device="cpu", plots=False, verbose=False)
    assert np.isfinite(metrics.box.map50)
    seen = []
    hook = block.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    try:
        img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        res = model.predict(img, imgsz=640, device="cpu", verbose=False)
    finally:
        hook.remove()
    assert res[0].orig_shape == (480, 640)
    return seen
