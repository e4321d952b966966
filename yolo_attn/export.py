"""Which export formats each block family can take, decided before Ultralytics' exporter converts anything.

Ultralytics' ``Exporter`` is wrapped (:mod:`yolo_attn.integration`) so that :func:`prepared_for_export` runs first:

- Formats tested here with ``F.grid_sample`` (:data:`GRID_SAMPLE_FORMATS`: TorchScript, ONNX at opset >= 16,
  OpenVINO) export DAT as it is.
- Every other format gets DAT's gather sampler (:func:`~yolo_attn.nn.dat.set_sampler`, same outputs within 1e-5, no
  ``GridSample`` op) for the duration of the export, with one log line: TensorRT has silently miscompiled
  deformable-attention ``GridSample``; TF/TFLite/Edge TPU/TF.js (onnx2tf or LiteRT) and legacy CoreML have no
  ``GridSample``; the NPU toolchains and the remaining converters are not checked here, and gathers are the ops
  every one of them supports. The model's own setting is restored afterwards.
- ONNX at an explicit ``opset < 16`` with the ``grid_sample`` sampler is refused (``GridSample`` does not exist
  there); :func:`~yolo_attn.nn.dat.set_sampler` ``(model, "gather")`` exports at any opset.
- IMX (Sony IMX500) quantises through ``torch.fx`` symbolic tracing, which cannot trace a block that reads its input
  size (``b, c, h, w = x.shape``): every attention block here. Such a model is refused with the row and block named.

Refusals are ``ValueError`` raised before any converter runs, naming the format, the row and block, and what to use
instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from yolo_attn import registry
from yolo_attn.nn.dat import GRID_SAMPLE_MIN_OPSET, DAttention

__all__ = [
    "GRID_SAMPLE_FORMATS",
    "GATHER_REASONS",
    "ExportPlan",
    "canonical_format",
    "plan_export",
    "prepared_for_export",
]

LOGGER = logging.getLogger("yolo_attn")

#: Formats whose runtime runs ``GridSample`` and that are checked against PyTorch here (tests/test_export.py).
GRID_SAMPLE_FORMATS = frozenset({"torchscript", "onnx", "openvino"})

#: Why DAT switches to the gather sampler for a format (formats not listed and not in GRID_SAMPLE_FORMATS: "untested").
GATHER_REASONS: dict[str, str] = {
    "engine": "TensorRT has miscompiled deformable-attention GridSample (wrong outputs, no error)",
    "coreml": "CoreML has GridSample (resample) only in ML programs for iOS 16+",
    "mlmodel": "legacy CoreML (neural network) has no GridSample",
    "saved_model": "TensorFlow has no GridSample (onnx2tf decomposes it approximately)",
    "pb": "TensorFlow has no GridSample (onnx2tf decomposes it approximately)",
    "tflite": "TFLite has no GridSample op",
    "litert": "LiteRT has no GridSample op",
    "edgetpu": "the Edge TPU has no GridSample op",
    "tfjs": "TF.js has no GridSample op",
}

# Ultralytics' format aliases (8.3.65 and 8.4), so the rules see the format the exporter will run
_ALIASES = {
    "tensorrt": "engine",
    "trt": "engine",
    "mlpackage": "coreml",
    "mlprogram": "coreml",
    "apple": "coreml",
    "ios": "coreml",
    "huawei": "ascend",
    "cann": "ascend",
    "om": "ascend",
    "vitis": "xilinx",
    "vitisai": "xilinx",
    "versal": "xilinx",
}

#: Formats converted by tracing the model with ``torch.fx`` (a block that cannot be FX-traced cannot go there).
FX_FORMATS = frozenset({"imx"})


def canonical_format(fmt: str) -> str:
    """Ultralytics' format argument with its aliases resolved (``"trt"`` -> ``"engine"``), lower case.

    Examples:
        >>> canonical_format("TRT"), canonical_format("onnx")
        ('engine', 'onnx')
    """
    f = str(fmt).lower()
    return _ALIASES.get(f, f)


@dataclass
class ExportPlan:
    """What :func:`plan_export` decided for one model and format.

    Attributes:
        format: The canonical format.
        sampler: The DAT sampler to export with (``None``: the model has no DAT layer or keeps its own setting).
        reason: Why the sampler is switched (empty when it is not).
        rows: ``(row, block)`` of each layer whose sampler is switched.
    """

    format: str
    sampler: str | None = None
    reason: str = ""
    rows: list[tuple[int | str, str]] = field(default_factory=list)


def _rows(model: nn.Module) -> Iterator[tuple[int | str, str, nn.Module]]:
    """``(row index, block name, module)`` of each top-level layer (Ultralytics' ``model.model``), or the model."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, (nn.Sequential, nn.ModuleList)):
        yield "-", type(model).__name__, model
        return
    for j, layer in enumerate(layers):
        yield getattr(layer, "i", j), type(layer).__name__, layer


def _fx_failure(block: nn.Module) -> str | None:
    """Why ``torch.fx.symbolic_trace`` cannot trace ``block`` (None: it can)."""
    try:
        torch.fx.symbolic_trace(block)
    except Exception as e:  # FX raises TraceError, TypeError, RuntimeError ... depending on what it meets
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def plan_export(model: nn.Module, fmt: str, opset: int | None = None) -> ExportPlan:
    """Decide how ``model`` exports to ``fmt``; raise a ValueError when it cannot.

    Args:
        model: The model to export (an Ultralytics ``DetectionModel`` or any module).
        fmt: Ultralytics' format argument (aliases accepted).
        opset: The ONNX opset asked for (``None``: the exporter's default, >= 16 on supported versions).

    Raises:
        ValueError: The format cannot run a block of this model: names the format, the row and block, the reason and
            the alternative.

    Examples:
        >>> from yolo_attn.nn import DATBlock
        >>> plan_export(DATBlock(32, 32), "engine").sampler
        'gather'
        >>> plan_export(DATBlock(32, 32), "onnx").sampler is None
        True
    """
    f = canonical_format(fmt)
    plan = ExportPlan(f)
    if f in FX_FORMATS:
        ours = {sp.cls for sp in registry.specs()}
        for i, name, layer in _rows(model):
            for m in layer.modules():
                if type(m) in ours and (why := _fx_failure(m)) is not None:
                    raise ValueError(
                        f"format={fmt!r}: row {i} ({name}) holds {type(m).__name__}, which the {f} converter cannot "
                        f"take: it traces the model with torch.fx, and FX cannot trace this block ({why}). Export to "
                        "'onnx' or 'openvino' instead (tested), or remove the block for this target."
                    )
    dat = [(i, name) for i, name, layer in _rows(model) if any(isinstance(m, DAttention) for m in layer.modules())]
    if not dat:
        return plan
    samplers = {m.sampler for m in model.modules() if isinstance(m, DAttention)}
    if f == "onnx" and opset is not None and opset < GRID_SAMPLE_MIN_OPSET and "grid_sample" in samplers:
        i, name = dat[0]
        raise ValueError(
            f"format='onnx', opset={opset}: row {i} ({name}) samples with grid_sample, and ONNX GridSample needs "
            f"opset {GRID_SAMPLE_MIN_OPSET} or higher. Export with opset>={GRID_SAMPLE_MIN_OPSET} (e.g. opset=17), "
            "or switch DAT to the gather sampler first (yolo_attn.nn.set_sampler(model.model, 'gather'); same "
            "outputs, any opset)."
        )
    if f not in GRID_SAMPLE_FORMATS and samplers != {"gather"}:
        plan.sampler = "gather"
        plan.reason = GATHER_REASONS.get(f, "its GridSample support is not checked here")
        plan.rows = dat
    return plan


@contextlib.contextmanager
def prepared_for_export(model: nn.Module, fmt: str, opset: int | None = None) -> Iterator[ExportPlan]:
    """Apply :func:`plan_export` to ``model`` for the ``with`` body and restore every DAT layer's sampler after.

    Raises:
        ValueError: As :func:`plan_export`, before the body runs.
    """
    plan = plan_export(model, fmt, opset)
    before = [(m, m.sampler) for m in model.modules() if isinstance(m, DAttention)]
    if plan.sampler is not None:
        for m, _ in before:
            m.sampler = plan.sampler
        where = ", ".join(f"{i} ({name})" for i, name in plan.rows)
        LOGGER.info(
            f"yolo_attn: format={plan.format!r}: DAT rows {where} export with the gather sampler ({plan.reason})"
        )
    try:
        yield plan
    finally:
        for m, s in before:
            m.sampler = s
