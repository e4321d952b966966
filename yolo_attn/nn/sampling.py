"""Bilinear sampling from gathers: ``F.grid_sample`` for runtimes that lack or mishandle ONNX ``GridSample``.

DAT reads its keys/values (``align_corners=False``) and its position-bias tables (``align_corners=True``) with
``F.grid_sample``, bilinear, border padding. ONNX has ``GridSample`` only from opset 16, and converters that do
accept it are unreliable (TensorRT, TensorFlow/TFLite through onnx2tf, CoreML). :func:`grid_sample_gather` computes
the same values from operations every runtime has: ``floor``, ``clamp``, arithmetic and one row gather
(``index_select``, ONNX ``Gather`` on axis 0, opset 1). It is exact up to rounding (sums of four products in another
order) and has the same gradients w.r.t. ``input`` and ``grid``.

Export notes: no Python arithmetic turns a size into a constant. Sizes enter only as multipliers of tensors, so a
TorchScript trace keeps them as ``Shape`` ops (the tracer hands out sizes as 0-dim tensors) and ``torch.export``
keeps them symbolic; no branch depends on a size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["grid_sample_gather", "bilinear_sample", "PADDING_MODES", "SAMPLERS"]

PADDING_MODES = ("border", "zeros")

#: Values of DAT's ``sampler`` switch: ``"grid_sample"`` (``F.grid_sample``; ONNX ``GridSample``, opset >= 16) or
#: ``"gather"`` (:func:`grid_sample_gather`: the same values from ops every runtime has).
SAMPLERS = ("grid_sample", "gather")


def _unnormalise(coord: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Grid coordinate in ``[-1, 1]`` -> pixel coordinate, as ``grid_sample`` maps it."""
    if align_corners:
        return (coord + 1) * ((size - 1) * 0.5)  # -1, 1 -> centres of the first and last pixel
    return ((coord + 1) * size - 1) * 0.5  # -1, 1 -> outer edges of the first and last pixel


def _corners(p: torch.Tensor, size, border: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Low/high integer neighbours of pixel coordinates ``p`` and their weights along one axis.

    Border padding clamps the coordinate into ``[0, size - 1]`` first (``grid_sample`` clips coordinates, so outside
    points take the edge value and get no gradient). Zero padding keeps the coordinate and zeroes the weight of a
    neighbour that falls outside. Indices are clamped afterwards in both modes so that every gather is in range.
    """
    last = p.new_ones(()) * (size - 1)  # a tensor bound: a traced size stays a Shape op, not a constant
    if border:
        p = torch.minimum(p.clamp(min=0), last)
    p0 = p.floor()
    w1 = p - p0  # the gradient w.r.t. the coordinate flows through the weights only
    w0 = 1 - w1
    p1 = p0 + 1
    if not border:
        w0 = w0 * ((p0 >= 0) & (p0 <= last)).to(w0.dtype)
        w1 = w1 * ((p1 >= 0) & (p1 <= last)).to(w1.dtype)
    # clamped in floating point, then cast: integer Clip/Min are the ops converters support least
    i0 = torch.minimum(p0.clamp(min=0), last).long()
    i1 = torch.minimum(p1.clamp(min=0), last).long()
    return i0, i1, w0, w1


def grid_sample_gather(
    input: torch.Tensor, grid: torch.Tensor, align_corners: bool = False, padding_mode: str = "border"
) -> torch.Tensor:
    """Bilinear ``F.grid_sample`` from gathers, floor, clamp and arithmetic (no ``GridSample`` op).

    Args:
        input: Values to sample, (N, C, H, W).
        grid: Sampling points (N, Ho, Wo, 2) in ``[-1, 1]``, ``(x, y)`` order as for ``F.grid_sample``; points outside
            are padded according to ``padding_mode``.
        align_corners: As for ``F.grid_sample``: ``True`` maps -1/1 to the centres of the corner pixels, ``False``
            to their outer edges.
        padding_mode: ``"border"`` (edge values) or ``"zeros"``.

    Returns:
        (N, C, Ho, Wo) in ``input``'s dtype. Coordinates, weights and the weighted sum are computed in fp32 (fp64
        when either argument is fp64), whatever the input dtype.

    Examples:
        >>> import torch.nn.functional as F
        >>> x, g = torch.randn(2, 3, 5, 7), torch.rand(2, 4, 6, 2) * 2.4 - 1.2
        >>> ref = F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)
        >>> torch.allclose(grid_sample_gather(x, g), ref, atol=1e-5)
        True
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"grid_sample_gather: padding_mode={padding_mode!r} is not supported; use one of {PADDING_MODES}"
        )
    if input.dim() != 4 or grid.dim() != 4:
        raise ValueError(
            f"grid_sample_gather: input must be (N, C, H, W) and grid (N, Ho, Wo, 2), got {input.dim()}-D input and "
            f"{grid.dim()}-D grid"
        )
    if not torch.jit.is_tracing():  # a traced size is a tensor: comparing it would freeze the trace at this size
        if grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
            raise ValueError(
                f"grid_sample_gather: grid of shape {tuple(grid.shape)} does not fit input of shape "
                f"{tuple(input.shape)}; the grid must be (N, Ho, Wo, 2) with the input's batch size N"
            )
    ct = torch.float64 if torch.float64 in (input.dtype, grid.dtype) else torch.float32
    n, c, h, w = input.shape
    ho, wo = grid.shape[1], grid.shape[2]
    g = grid.to(ct).reshape(n, -1, 2)  # N, L, 2 with L = Ho * Wo
    border = padding_mode == "border"
    x0, x1, wx0, wx1 = _corners(_unnormalise(g[..., 0], w, align_corners), w, border)  # N, L each
    y0, y1, wy0, wy1 = _corners(_unnormalise(g[..., 1], h, align_corners), h, border)
    # Rows of the channels-last input, (N*H*W, C): each corner is one plain gather of whole C-vectors (ONNX Gather,
    # TFLite GATHER), weighted and accumulated one corner at a time (a stacked (N, L, 4, C) sum is several times
    # slower on CPU when C is small, as for DAT's bias tables)
    rows = input.to(ct).permute(0, 2, 3, 1).reshape(-1, c)  # N*H*W, C
    base = torch.arange(n, device=input.device)[:, None] * (h * w)  # N, 1: offset of each image

    def corner(iy: torch.Tensor, ix: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rows.index_select(0, (iy * w + ix + base).reshape(-1)) * weight.reshape(-1, 1)  # N*L, C

    out = corner(y0, x0, wy0 * wx0) + corner(y0, x1, wy0 * wx1) + corner(y1, x0, wy1 * wx0) + corner(y1, x1, wy1 * wx1)
    return out.reshape(n, ho, wo, c).permute(0, 3, 1, 2).to(input.dtype)


def bilinear_sample(
    input: torch.Tensor, grid: torch.Tensor, align_corners: bool, sampler: str = "grid_sample"
) -> torch.Tensor:
    """Bilinear sampling with border padding through the implementation ``sampler`` names (one of :data:`SAMPLERS`).

    Examples:
        >>> x, g = torch.randn(1, 2, 4, 4), torch.rand(1, 3, 3, 2) * 2 - 1
        >>> torch.allclose(bilinear_sample(x, g, False, "gather"), bilinear_sample(x, g, False), atol=1e-6)
        True
    """
    if sampler == "gather":
        return grid_sample_gather(input, grid, align_corners=align_corners, padding_mode="border")
    if sampler != "grid_sample":
        raise ValueError(f"bilinear_sample: sampler={sampler!r} is not one of {', '.join(map(repr, SAMPLERS))}")
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="border", align_corners=align_corners)
