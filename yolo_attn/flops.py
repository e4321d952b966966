"""GFLOPs counted at the real input size, attention included, next to Ultralytics' own figure.

Why a second count: Ultralytics' ``get_flops`` runs THOP on small proxy inputs (one stride tall, a few strides wide)
and extrapolates to the requested size. Module hooks see convolutions and linears; whether the products an attention
block runs functionally (``@``, ``einsum``, ``F.scaled_dot_product_attention``) are counted, and whether the
extrapolation from a 1xk proxy is right for a cost that is quadratic in the token count, depends on the installed
``ultralytics-thop`` version, and ``grid_sample`` is never counted. Any exception inside it silently gives ``0.0``.

This count runs one forward pass at the real size under ``torch.utils.flop_counter.FlopCounterMode``, which sees
every aten op whatever module or function issued it. Convention (the one papers and Ultralytics use): one
multiply-accumulate = 2 FLOPs. Counted:

- convolutions, ``mm``/``addmm``/``bmm``/``baddbmm`` (so ``nn.Linear``, ``@``, ``matmul`` and ``einsum`` through
  their decompositions) -- FlopCounterMode's own formulas;
- every SDPA kernel: QK^T and PV, ``2 * B * heads * N * M * (d + d_v)`` FLOPs forward (``4 * B * heads * N * M * d``
  when ``d_v = d``), twice that backward. The formulas are registered here for every SDPA overload PyTorch has (CPU
  flash, CUDA flash / memory-efficient / cuDNN, the backend-overridable one, and their backwards), whether or not
  the installed torch's FlopCounterMode knows them: torch 2.14 has none for the CPU flash kernel, which is what SDPA
  runs on CPU, so attention silently counted zero there. One formula per op (ours replaces torch's where both
  exist), and ops that decompose (the plain ``scaled_dot_product_attention`` entry, the math path) are counted
  through the matrix products they run, never twice;
- added here too: ``grid_sample`` (bilinear: 4 taps, 4 MACs = 8 FLOPs per output element; bicubic: 16 taps = 32;
  nearest: 0) and bilinear/bicubic ``interpolate`` (same per-element rule). Nearest upsampling is a copy (0).

Not counted (by either figure's convention for these ops, or O(elements) and a few percent at most): elementwise
ops and activations, normalisation (BatchNorm folds into the conv at deployment; THOP does count unfused BN, which is
why :func:`model_flops` asks Ultralytics for the figure of the *fused* model, the one it prints after training),
softmax, pooling, index and copy ops.

Examples:
    >>> import torch
    >>> from yolo_attn.flops import count_flops
    >>> count_flops(torch.nn.Conv2d(3, 8, 3, padding=1), (1, 3, 8, 8))["gflops"]  # 2 * 8*8*8 * 3*3*3 / 1e9
    2.7648e-05
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from yolo_attn._compat import unwrap

__all__ = ["count_flops", "model_flops", "ultralytics_flops", "FLOP_RULES", "SDPA_FORWARD_OPS", "SDPA_BACKWARD_OPS"]

LOGGER = logging.getLogger(__name__)
aten = torch.ops.aten

# grid_sample interpolation_mode (aten enum): 0 bilinear, 1 nearest, 2 bicubic -> FLOPs per output element
_GRID_SAMPLE_FLOPS = {0: 8, 1: 0, 2: 32}


def _grid_sampler_flops(input_shape, grid_shape, interpolation_mode, *args, out_shape=None, **kwargs) -> int:
    # out: (N, C, Hg, Wg[, Dg]); every output element is a weighted sum of the taps around its sample point
    return _GRID_SAMPLE_FLOPS.get(int(interpolation_mode), 8) * math.prod(out_shape)


def _bilinear_upsample_flops(*args, out_shape=None, **kwargs) -> int:
    return 8 * math.prod(out_shape)


def _bicubic_upsample_flops(*args, out_shape=None, **kwargs) -> int:
    return 32 * math.prod(out_shape)


def _attention_flops(q_shape, k_shape, v_shape) -> int:
    """QK^T and PV of attention over (..., N, d) queries, (..., M, d) keys and (..., M, d_v) values (GQA: q's heads)."""
    *lead, n, d = q_shape
    m, d_v = k_shape[-2], v_shape[-1]
    return 2 * math.prod(lead) * n * m * (d + d_v)


def _sdpa_forward_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: four products of the forward's size
    return 2 * _attention_flops(query, key, value)


#: SDPA kernels (query, key, value first; (B, heads, N, d) layout), forward and backward (grad_out first).
SDPA_FORWARD_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)
SDPA_BACKWARD_OPS = tuple(f"{name}_backward" for name in SDPA_FORWARD_OPS)


def _rules() -> dict:
    rules = {}
    for names, formula in ((SDPA_FORWARD_OPS, _sdpa_forward_flops), (SDPA_BACKWARD_OPS, _sdpa_backward_flops)):
        for name in names:
            op = getattr(aten, name, None)
            if op is not None:
                rules[op] = formula
    for name in ("grid_sampler_2d", "grid_sampler_3d", "cudnn_grid_sampler", "_grid_sampler_2d_cpu_fallback"):
        op = getattr(aten, name, None)
        if op is not None:
            rules[op] = _grid_sampler_flops
    for name in ("upsample_bilinear2d", "_upsample_bilinear2d_aa", "upsample_linear1d", "upsample_trilinear3d"):
        op = getattr(aten, name, None)
        if op is not None:
            rules[op] = _bilinear_upsample_flops
    for name in ("upsample_bicubic2d", "_upsample_bicubic2d_aa"):
        op = getattr(aten, name, None)
        if op is not None:
            rules[op] = _bicubic_upsample_flops
    return rules


#: Extra FlopCounterMode formulas (aten op -> ``f(*arg_shapes, out_shape=...)``) for ops it does not count itself.
FLOP_RULES = _rules()


def _input_shape(model: nn.Module, shape: int | Sequence[int], batch: int = 1) -> tuple[int, ...]:
    """``640`` -> (1, ch, 640, 640); ``(480, 640)`` -> (1, ch, 480, 640); a 4-tuple is used as is."""
    if isinstance(shape, int):
        shape = (shape, shape)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        ch = getattr(model, "yaml", {}).get("channels", getattr(model, "yaml", {}).get("ch", 3)) or 3
        return (batch, int(ch), *shape)
    return shape


def count_flops(
    model: nn.Module,
    shape: int | Sequence[int] = 640,
    device: str | torch.device | None = None,
    batch: int = 1,
) -> dict:
    """Forward GFLOPs of ``model`` on one input of the real size, attention and ``grid_sample`` included.

    Args:
        model: Any module (an Ultralytics ``YOLO`` wrapper is unwrapped to its ``DetectionModel``).
        shape: Full input shape ``(B, C, H, W)``, or an image size ``640`` / ``(h, w)`` (then batch ``batch`` and
            the model's input channels).
        device: Where to run the counting pass (default: where the model's parameters are).
        batch: Batch for an image-size ``shape``.

    Returns:
        ``{"gflops": total, "by_op": {aten op name: GFLOPs}, "shape": [...]}``; totals are for the whole batch.
    """
    from torch.utils.flop_counter import FlopCounterMode

    net = unwrap(model)
    shape = _input_shape(net, shape, batch)
    p = next(iter(net.parameters()), None)
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    if p is not None and p.device != dev:
        net = copy.deepcopy(net).to(dev)
    x = torch.zeros(shape, device=dev, dtype=dtype)
    was_training = net.training
    net.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=FLOP_RULES)
        with torch.no_grad(), counter:
            net(x)
    finally:
        net.train(was_training)
    by_op = {str(k).removeprefix("aten."): v / 1e9 for k, v in counter.get_flop_counts()["Global"].items()}
    return {"gflops": counter.get_total_flops() / 1e9, "by_op": by_op, "shape": list(shape)}


def ultralytics_flops(model: nn.Module, imgsz: int | Sequence[int] = 640, fuse: bool = True) -> float:
    """Ultralytics' own GFLOPs figure (its ``get_flops``) at ``imgsz``.

    With ``fuse=True`` it is taken on a BN-fused copy, as Ultralytics reports it after training (``0.0`` means its
    profiler failed: it swallows every exception).
    """
    from yolo_attn._compat import get_flops

    net = unwrap(model)
    if fuse and hasattr(net, "fuse"):
        net = copy.deepcopy(net)
        try:
            net = net.fuse(verbose=False)
        except TypeError:  # older signature
            net = net.fuse()
        except Exception as e:  # a block that cannot fuse still gets a figure, unfused
            LOGGER.warning("fuse() failed (%s); Ultralytics GFLOPs taken unfused", e)
    imgsz = list(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz
    return float(get_flops(net, imgsz))


def model_flops(model: nn.Module, imgsz: int | Sequence[int] = 640, device: str | torch.device | None = None) -> dict:
    """Both figures for a detection model: ``{"gflops": ours, "gflops_ultralytics": theirs, "gflops_by_op": {...}}``.

    ``gflops`` is counted at batch 1 and the real ``imgsz`` (see the module docstring for the rules).
    """
    ours = count_flops(model, imgsz, device=device)
    out: dict[str, Any] = {"gflops": ours["gflops"], "gflops_by_op": ours["by_op"]}
    try:
        out["gflops_ultralytics"] = ultralytics_flops(model, imgsz)
    except Exception as e:  # report what we have; the store records the missing figure as None
        LOGGER.warning("Ultralytics GFLOPs unavailable: %s", e)
        out["gflops_ultralytics"] = None
    return out
