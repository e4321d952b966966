"""Shared pieces of the attention blocks: resolution-free relative offsets and the attention kernel.

Every fast path has a plain, obviously-correct twin that the tests compare against (the timm pattern):
``attend(..., fused=True)`` goes through ``F.scaled_dot_product_attention``; ``fused=False`` is a manual softmax.

Nothing here is sized at construction: offsets are built from the live ``H`` and ``W`` on every call, so the 256x256
stride probe, rectangular validation (80x60, 40x30, 20x15), 1xk FLOPs probes and any export size share one set of
weights.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["rel_index", "attend", "attention_reference", "check_heads", "sdpa_backends", "AttnCSP"]


def rel_index(n: int, max_rel: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Clipped key-minus-query offsets along one axis, as table indices.

    Returns a ``(n, n)`` long tensor ``idx[i, j] = clamp(j - i, -max_rel, max_rel) + max_rel``, i.e. an index into
    a table of ``2 * max_rel + 1`` entries. Exact for ``n <= max_rel + 1``; longer distances share the edge bucket.
    Built from ``arange`` on every call (O(n^2) ints, never O(N^2)), so it follows the input size and exports with
    dynamic shapes.
    """
    pos = torch.arange(n, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-max_rel, max_rel) + max_rel


def check_heads(
    block: str, channels: int, num_heads: int | None = None, dim_head: int | None = None
) -> tuple[int, int]:
    """Resolve ``(num_heads, dim_head)`` for ``channels`` and raise a ``ValueError`` that says what would work."""
    if num_heads is None and dim_head is None:
        raise ValueError(f"{block}: give num_heads or dim_head")
    if num_heads is None:
        if dim_head <= 0 or channels % dim_head:
            raise ValueError(
                f"{block}: channels={channels} is not divisible by dim_head={dim_head}; "
                f"choose a dim_head that divides {channels}"
            )
        num_heads = channels // dim_head
    if num_heads <= 0 or channels % num_heads:
        divisors = [h for h in range(1, min(channels, 64) + 1) if channels % h == 0]
        raise ValueError(
            f"{block}: channels={channels} is not divisible by heads={num_heads}; heads must divide the attention "
            f"width (valid heads for {channels}: {divisors})"
        )
    return num_heads, channels // num_heads


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """Plain softmax attention, the twin of :func:`attend`. q: (B, h, N, d), k: (B, h, M, d), v: (B, h, M, dv)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sim = (q * scale) @ k.transpose(-2, -1)  # B, h, N, M
    if bias is not None:
        sim = sim + bias.to(sim.dtype)
    attn = sim.softmax(dim=-1)
    return attn @ v  # B, h, N, dv


_SDPA_BIAS_BACKENDS = None  # set lazily: torch.nn.attention may be missing on old torch


def sdpa_backends():
    """Kernel list used on CUDA when an additive bias is present (see BLOCKS.md 1.2): efficient, then math.

    Flash cannot take a float bias; cuDNN has had bias bugs at our sequence lengths, so it is left out here.
    Returns ``None`` when ``torch.nn.attention`` is not available.
    """
    global _SDPA_BIAS_BACKENDS
    if _SDPA_BIAS_BACKENDS is None:
        try:
            from torch.nn.attention import SDPBackend

            _SDPA_BIAS_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
        except ImportError:  # pragma: no cover - torch < 2.3
            _SDPA_BIAS_BACKENDS = []
    return _SDPA_BIAS_BACKENDS or None


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Attention through ``F.scaled_dot_product_attention`` (``fused=True``) or its plain twin.

    Args:
        q: Queries (B, h, N, d).
        k: Keys (B, h, M, d).
        v: Values (B, h, M, dv).
        bias: Optional additive logits broadcastable to (B, h, N, M); cast to ``q.dtype`` (required by the efficient
            kernel, and avoids cuDNN misreading an fp32 mask with half queries).
        scale: Logit scale; default ``d ** -0.5``. Pass ``1.0`` when q was pre-scaled.
        fused: Use SDPA (True) or the reference softmax (False).
    """
    if not fused:
        return attention_reference(q, k, v, bias, scale)
    if bias is not None:
        bias = bias.to(q.dtype)
    ctx = contextlib.nullcontext()
    if bias is not None and q.is_cuda and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        backends = sdpa_backends()
        if backends:
            from torch.nn.attention import sdpa_kernel

            ctx = sdpa_kernel(backends)
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class AttnCSP(nn.Module):
    """The C3 layout shared by BoT3, DAT3 and CoAt3: ``cv3(cat(m(cv1(x)), cv2(x)))`` with 1x1 Ultralytics ``Conv``.

    Subclasses validate their arguments, then call :meth:`_build` with the hidden width and their attention stack.
    """

    def _build(self, c1: int, c2: int, c_: int, m: nn.Module) -> None:
        from yolo_attn._compat import Conv

        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c1, c_, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))
