"""CoAtNet blocks: pre-norm MBConv and the relative-attention transformer block, size-free, for Ultralytics YAMLs.

Paper: Z. Dai, H. Liu, Q. V. Le, M. Tan, "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
NeurIPS 2021 (Eq. 3: a per-head scalar ``w[i - j]`` added to the attention logits before the softmax; App. A.1:
pre-norm MBConv and transformer blocks, down-sampling ``Proj(Pool(x)) + Block(Pool(Norm(x)))``).
Reference code read for the math (no code copied): timm 1.0.31 ``timm/models/maxxvit.py`` (``MbConvBlock``,
``TransformerBlock2d``; Apache-2.0) and ``chinhsuanwu/coatnet-pytorch`` (MIT).

What differs from that code:

- Nothing is sized at construction. The relative table has ``(2R+1)^2`` entries per head and is indexed by the
  key-minus-query offsets, clipped to ``[-R, R]``, built from the live ``H`` and ``W`` on every call (exact up to
  ``R + 1`` tokens per axis, R = 32 by default: P5 of a 1056 px input). timm and chinhsuanwu fix the table, and
  chinhsuanwu an ``N^2`` int64 index buffer (328 MB at 80x80), to one input size; any other size crashes.
- Heads follow the width (``c2 / dim_head``, head dim 32 as in the paper) instead of a fixed 256-wide attention.
- Down-sampling pools with ``AvgPool2d(2, 2, ceil_mode=True)`` after the norm (paper order), so stride 2 gives
  ``ceil(H/2)`` like Ultralytics' stride-2 ``Conv``, also for odd sizes and 1-row maps (timm floors: 15 -> 7).
  MBConv strides its first 1x1 convolution, as the paper does.
- ``MBConv`` takes its shortcut through ``Pool`` + 1x1 whenever the shape changes (timm's block needs
  ``in == out`` at stride 1). Its convolution + BN + activation triples are Ultralytics ``Conv`` so ``fuse()`` folds
  the BN; the pre-norm is a plain ``BatchNorm2d`` (it acts on the shortcut's input, nothing to fold it into).
- ``CoAt``'s residual branches end in zero-initialised projections: with ``c1 == c2`` and stride 1 the block is
  exactly the identity at initialisation, so it can be inserted into a trained network.
- Attention runs through ``F.scaled_dot_product_attention`` with the bias as ``attn_mask`` (q pre-scaled, bias cast
  to q's dtype), with a plain softmax twin (``fused=False``) for tests. On CPU, PyTorch's SDPA falls back to its
  N x N math kernel whenever the mask needs a gradient; training on CPU therefore goes through
  :class:`_RelBiasAttention`, which runs SDPA's fused kernel forward in query-row chunks and a chunked backward that
  accumulates the table gradient directly, never holding an ``N x N`` tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import ConvMlp, DropPath, LayerNorm2d, SEModule, trunc_normal_
from torch import nn
from torch.autograd.function import once_differentiable

from yolo_attn._compat import Conv
from yolo_attn.nn.common import AttnCSP, attend, rel_index
from yolo_attn.registry import register_block

__all__ = ["MBConv", "CoAt", "CoAt3", "CoAtBlock", "CoAtAttention", "coat_rel_bias"]


def _pool2x() -> nn.Module:
    """2x2 average pooling with ceil: ``ceil(H/2)`` like a stride-2 conv; edge windows average only real pixels."""
    return nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)


def _check_stride(block: str, stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"{block}: stride={stride!r} is not supported; use 1 or 2")


def _check_range(block: str, name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = (lo < value if lo_open else lo <= value) and value < hi
    if not ok:
        lo_b = "(" if lo_open else "["
        raise ValueError(f"{block}: {name}={value!r} is out of range; use a value in {lo_b}{lo}, {hi})")


def _resolve_heads(block: str, channels: int, dim_head: int, what: str = "c2") -> int:
    """Heads = channels / dim_head, or a ValueError naming the width and the head dims that would work."""
    if not isinstance(dim_head, int) or dim_head <= 0 or channels % dim_head:
        valid = [d for d in (8, 16, 24, 32, 48, 64, 96, 128) if channels % d == 0]
        raise ValueError(
            f"{block}: attention width {what}={channels} is not divisible by dim_head={dim_head!r}; heads are "
            f"derived as width / dim_head, so choose a dim_head that divides {channels} (e.g. {valid or [1]}) or "
            "a width that is a multiple of the head dim"
        )
    return channels // dim_head


def coat_rel_bias(table: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """Gather the 2-D relative bias: ``bias[h, qy, qx, ky, kx] = table[h, iy[qy, ky], ix[qx, kx]]``.

    Args:
        table: Per-head table (h, 2R+1, 2R+1) indexed by (clipped ky - qy, clipped kx - qx).
        iy: Row offset indices (Hq, Hk) from :func:`rel_index` (or a slice of its rows).
        ix: Column offset indices (Wq, Wk).

    Returns:
        A (h, Hq, Wq, Hk, Wk) view; ``.flatten(1, 2).flatten(2)`` gives the (h, Nq, Nk) logits. Columns are gathered
        on the small table first and rows second, two plain gathers of contiguous runs (no N^2 integer index, and
        about twice as fast on CPU as one two-index gather).
    """
    tx = table[:, :, ix].transpose(1, 2)  # h, Wq, 2R+1, Wk
    return tx[:, :, iy].permute(0, 2, 1, 3, 4)  # h, Hq, Wq, Hk, Wk


class _RelBiasAttention(torch.autograd.Function):
    """``softmax(q k^T + bias(table)) v`` with a memory-bounded backward, for training on CPU.

    Forward: SDPA's fused kernel over chunks of query rows, each with its slice of the gathered bias (rows are
    independent, so this is exact). Backward, FlashAttention style, per chunk: recompute ``P`` in fp32, then
    ``dS = P * (dO v^T - rowsum(dO * O))``, ``dq = dS k``, ``dk += dS^T q``, ``dv += P^T dO``; the table gradient is
    ``dS`` summed over the batch and over all query/key pairs that share a clipped offset. Peak extra memory is a few
    chunk-sized tensors (``B x h x rows*W x N``, see :meth:`CoAtAttention._chunk_rows`) instead of the
    ``B x h x N x N`` logits, probabilities and their gradients of the plain path. ``rows`` (query rows per chunk)
    and the map size are plain ints: this path is never traced or exported.
    """

    @staticmethod
    def forward(ctx, q, k, v, table, height: int, width: int, max_rel: int, rows: int):
        b, h, n, _ = q.shape
        rows = max(1, min(height, rows))
        iy = rel_index(height, max_rel, q.device)
        ix = rel_index(width, max_rel, q.device)
        out = q.new_empty(b, h, n, v.shape[-1])
        # Work buffers are allocated once and reused by every chunk: fresh multi-MB tensors cost page faults on each
        # allocation, which on CPU is a good part of the plain path's time.
        work = _ChunkWork(table, rows, height, width, dtype=q.dtype)
        with torch.autocast(q.device.type, enabled=False):
            for y0 in range(0, height, rows):
                y1 = min(height, y0 + rows)
                sl = slice(y0 * width, y1 * width)
                bias = work.bias(iy[y0:y1], ix).flatten(3).flatten(1, 2)[None]  # 1, h, c, N
                out[:, :, sl] = F.scaled_dot_product_attention(q[:, :, sl], k, v, attn_mask=bias, scale=1.0)
        ctx.save_for_backward(q, k, v, table, out)
        ctx.shape = (height, width, max_rel, rows)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, table, out = ctx.saved_tensors
        height, width, max_rel, rows = ctx.shape
        b, h, n, _ = q.shape
        ct = torch.promote_types(q.dtype, torch.float32)  # fp32 (fp64 under gradcheck)
        iy = rel_index(height, max_rel, q.device)
        ix = rel_index(width, max_rel, q.device)
        with torch.autocast(q.device.type, enabled=False):
            qf, kf, vf, gf = (t.to(ct) for t in (q, k, v, grad_out))
            delta = (gf * out.to(ct)).sum(-1, keepdim=True)  # rowsum(P * dP) = dO . O, (B, h, N, 1)
            kt, vt = kf.transpose(-1, -2), vf.transpose(-1, -2)
            dq = torch.empty_like(qf)
            dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
            work = _ChunkWork(table.to(ct), rows, height, width, dtype=ct)
            s_buf = qf.new_empty(b * h * rows * width * n)
            dp_buf = qf.new_empty(b * h * rows * width * n)
            # Table gradient along x without an index tensor: dS summed over the batch goes into a zeroed buffer
            # whose key rows are padded by W-1 zeros on both sides, (h, qy, qx, ky, 3W-2). Read with a qx stride one
            # element longer than stored, position c of row qx is kx = qx + c - (W-1), or a zero pad: summing over
            # qx then gives, for every (qy, ky), the sums over each column offset kx - qx = c - (W-1).
            pw = 3 * width - 2
            pad = qf.new_zeros(h, rows, width, height, pw)
            acc = qf.new_empty(h, height, height, 2 * width - 1)  # h, qy, ky, kx - qx + W - 1
            for y0 in range(0, height, rows):
                y1 = min(height, y0 + rows)
                cy, sl = y1 - y0, slice(y0 * width, y1 * width)
                c = cy * width
                qc, gc = qf[:, :, sl], gf[:, :, sl]
                p = torch.matmul(qc, kt, out=s_buf[: b * h * c * n].view(b, h, c, n))  # logits, then P in place
                p.view(b, h, cy, width, height, width).add_(work.bias(iy[y0:y1], ix, ordered=False))
                p.sub_(p.amax(-1, keepdim=True)).exp_()
                p.mul_(p.sum(-1, keepdim=True).reciprocal_())
                ds = torch.matmul(gc, vt, out=dp_buf[: b * h * c * n].view(b, h, c, n))  # dP, then dS in place
                ds.sub_(delta[:, :, sl]).mul_(p)
                dq[:, :, sl] = ds @ kf
                dk += ds.transpose(-1, -2) @ qc
                dv += p.transpose(-1, -2) @ gc
                region = pad[:, :cy, :, :, width - 1 : 2 * width - 1]  # h, cy, qx, ky, kx
                torch.sum(ds.view(b, h, cy, width, height, width), dim=0, out=region)
                stride = (rows * width * height * pw, width * height * pw, pw, height * pw + 1, 1)
                skew = pad.as_strided((h, cy, height, width, 2 * width - 1), stride)  # h, qy, ky, qx, c
                torch.sum(skew, dim=3, out=acc[:, y0:y1])
            # column offsets kx - qx -> clipped table column, then row offsets (qy, ky) -> clipped table row
            dx = torch.arange(-(width - 1), width, device=q.device).clamp(-max_rel, max_rel) + max_rel
            gx = acc.new_zeros(h, height * height, 2 * max_rel + 1).index_add_(2, dx, acc.flatten(1, 2))
            dtable = acc.new_zeros(h, 2 * max_rel + 1, 2 * max_rel + 1).index_add_(1, iy.flatten(), gx)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dtable.to(table.dtype), None, None, None, None


class _ChunkWork:
    """Reusable buffers that turn the table into the bias of a chunk of query rows, in (h, qy, qx, ky, kx) order."""

    def __init__(self, table: torch.Tensor, rows: int, height: int, width: int, dtype: torch.dtype):
        h = table.shape[0]
        self.height, self.width = height, width
        self.tx = table[:, :, rel_index(width, (table.shape[-1] - 1) // 2, table.device)].to(dtype)  # h, dy, qx, kx
        self.tx = self.tx.transpose(1, 2).contiguous()  # h, qx, dy, kx
        self.gathered = table.new_empty(h * width * rows * height * width, dtype=dtype)
        self.ordered: torch.Tensor | None = None

    def bias(self, iy: torch.Tensor, ix: torch.Tensor, ordered: bool = True) -> torch.Tensor:
        """(h, cy, W, H, W) bias of the query rows whose row offsets are ``iy`` (cy, H).

        ``ordered=False`` returns a permuted view (enough to add it to the logits); ``True`` a contiguous copy (what
        SDPA's ``attn_mask`` needs).
        """
        h, w, cy, hk = self.tx.shape[0], self.width, iy.shape[0], self.height
        g = self.gathered[: h * w * cy * hk * w].view(h, w, cy * hk, w)
        torch.index_select(self.tx, 2, iy.flatten(), out=g)  # h, qx, (qy, ky), kx
        view = g.view(h, w, cy, hk, w).transpose(1, 2)  # h, qy, qx, ky, kx
        if not ordered:
            return view
        if self.ordered is None:
            self.ordered = torch.empty_like(self.gathered)
        return self.ordered[: h * cy * w * hk * w].view(h, cy, w, hk, w).copy_(view)


class CoAtAttention(nn.Module):
    """Multi-head self-attention over all pixels with CoAtNet's relative bias (paper Eq. 3).

    ``logits[i, j] = (q_i / sqrt(d)) . k_j + w[head, clip(ky - qy), clip(kx - qx)]``. q, k, v come from one 1x1 conv
    ``c1 -> 3 * c2`` (the paper's down-sampling block widens inside the attention), followed by a 1x1 output
    projection. The input is expected normalised (and pooled, for stride 2) by :class:`CoAtBlock`.

    Args:
        c1: Input channels.
        c2: Attention width and output channels.
        num_heads: Heads (``c2 / num_heads`` per head).
        max_rel: Offsets are clipped to ``[-max_rel, max_rel]``; the table has ``(2 * max_rel + 1)^2`` entries a head.
        fused: SDPA fast path (True) or the plain softmax twin (False).

    Examples:
        >>> attn = CoAtAttention(64, 64, num_heads=2)
        >>> attn(torch.randn(2, 64, 15, 20)).shape
        torch.Size([2, 64, 15, 20])
    """

    def __init__(self, c1: int, c2: int, num_heads: int, max_rel: int = 32, fused: bool = True):
        super().__init__()
        if not isinstance(max_rel, int) or max_rel < 1:
            raise ValueError(f"CoAtAttention: max_rel={max_rel!r} must be an integer >= 1 (32 covers P5 at 1056 px)")
        self.num_heads, self.dim_head = num_heads, c2 // num_heads
        self.scale = self.dim_head**-0.5
        self.max_rel = max_rel
        self.fused = fused
        self.chunk_elems: int | None = None  # CPU training path: elements per chunk tensor; None = automatic
        self.qkv = nn.Conv2d(c1, 3 * c2, 1)
        self.proj = nn.Conv2d(c2, c2, 1)
        # The name contains "bias" on purpose: Ultralytics' build_optimizer then puts the table in the no-decay group
        # (as timm and DAT exempt their position tables); a decayed table would be pulled towards "no position".
        self.rel_pos_bias_table = nn.Parameter(torch.zeros(num_heads, 2 * max_rel + 1, 2 * max_rel + 1))
        trunc_normal_(self.rel_pos_bias_table, std=0.02)

    def rel_bias(self, height: int, width: int) -> torch.Tensor:
        """The additive logits for an ``height x width`` map: (1, heads, N, N), N = height * width."""
        dev = self.rel_pos_bias_table.device
        iy, ix = rel_index(height, self.max_rel, dev), rel_index(width, self.max_rel, dev)
        return coat_rel_bias(self.rel_pos_bias_table, iy, ix).flatten(1, 2).flatten(2)[None]

    def _chunked(self, q: torch.Tensor) -> bool:
        """Use the chunked CPU training path? Only when a gradient is needed, on CPU, and not while exporting."""
        return (
            self.fused
            and not q.is_cuda
            and torch.is_grad_enabled()
            and (q.requires_grad or self.rel_pos_bias_table.requires_grad)
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export()
        )

    def _chunk_rows(self, b: int, height: int, width: int) -> int:
        """Query rows per chunk of the CPU training path.

        Automatic: a sixteenth of one ``B x h x N x N`` tensor (the twin holds about three of them at its peak; this
        path about five chunk-sized buffers), at least 2^19 elements (small maps: few chunks, little per-op overhead)
        and at most 2^24 (64 MB in fp32).
        """
        per_row = b * self.num_heads * width * height * width
        full = per_row * height
        target = self.chunk_elems or min(1 << 24, max(1 << 19, full // 16))
        return max(1, target // per_row)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        qkv = self.qkv(x).flatten(2).unflatten(1, (3, self.num_heads, self.dim_head))  # B, 3, h, d, N
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # B, h, N, d each
        q = q * self.scale  # scale before the position logits are added
        if self._chunked(q):
            out = _RelBiasAttention.apply(
                q, k, v, self.rel_pos_bias_table, height, width, self.max_rel, self._chunk_rows(b, height, width)
            )
        else:
            out = attend(q, k, v, self.rel_bias(height, width), scale=1.0, fused=self.fused)  # B, h, N, d
        out = out.transpose(-1, -2).reshape(b, -1, height, width)  # B, C, H, W
        return self.proj(out)


class CoAtBlock(nn.Module):
    """One pre-norm transformer block with relative attention (CoAtNet Eq. 3 and App. A.1).

    ``x' = S(x) + DropPath(Attn(Pool(LN(x))))``, ``y = x' + DropPath(FFN(LN(x')))``, FFN = 1x1 -> 4 c2 -> GELU -> 1x1.
    ``S`` is the identity, or ``Conv1x1(Pool(x))`` when the block down-samples or changes width (the pool alone when
    only the size changes). The attention's output projection and the FFN's last 1x1 start at zero, so with
    ``c1 == c2`` and stride 1 the block is the identity at initialisation.

    Args:
        c1: Input channels.
        c2: Output channels (the attention and FFN width).
        num_heads: Attention heads.
        stride: 1, or 2 to down-sample to ``ceil(H/2) x ceil(W/2)``.
        mlp_ratio: FFN hidden width as a multiple of ``c2``.
        max_rel: Relative offset clip (see :class:`CoAtAttention`).
        drop_path: Stochastic depth rate of both residual branches.
        fused: SDPA fast path or the plain twin.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        num_heads: int,
        stride: int = 1,
        mlp_ratio: float = 4.0,
        max_rel: int = 32,
        drop_path: float = 0.0,
        fused: bool = True,
    ):
        super().__init__()
        self.norm1 = LayerNorm2d(c1, eps=1e-5)
        self.pool = _pool2x() if stride == 2 else nn.Identity()
        self.attn = CoAtAttention(c1, c2, num_heads, max_rel=max_rel, fused=fused)
        short = [_pool2x()] if stride == 2 else []
        if c1 != c2:
            short.append(nn.Conv2d(c1, c2, 1))  # the paper's Proj: a linear 1x1 with bias
        self.shortcut = nn.Sequential(*short) if short else nn.Identity()
        self.norm2 = LayerNorm2d(c2, eps=1e-5)
        self.mlp = ConvMlp(c2, int(round(c2 * mlp_ratio)), c2, act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for layer in (self.attn.proj, self.mlp.fc2):  # zero residual branches: identity at init
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.drop_path(self.attn(self.pool(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init_effnet(module: nn.Module) -> None:
    """EfficientNet-style init of every conv: N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups; zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_block(family="coat", role="layer", bench_levels=(5, 4, 3))
class MBConv(nn.Module):
    """Pre-norm inverted bottleneck (CoAtNet App. A.1): ``S(x) + DropPath(Proj(SE(DW(Expand(BN(x))))))``.

    Expand is a 1x1 to ``expand_ratio * c2`` channels (BN, GELU) carrying the stride as in the paper, DW a depthwise
    3x3 (BN, GELU), SE squeezes to ``se_ratio * c2`` (SiLU, sigmoid gate) and Proj a 1x1 with bias back to ``c2``.
    The shortcut is the identity when the shape is kept, else ``Conv1x1(Pool(x))`` (pool only at stride 2, 1x1 only
    when the width changes). Stride 2 gives ``ceil(H/2) x ceil(W/2)`` like Ultralytics' stride-2 ``Conv``.

    YAML: ``[-1, 1, MBConv, [c2, stride, expand_ratio, se_ratio, drop_path]]`` (a row with ``n > 1`` stacks copies,
    so keep the width change and the stride on a row of its own).

    Args:
        c1: Input channels.
        c2: Output channels.
        stride: 1 or 2.
        expand_ratio: Hidden width as a multiple of ``c2`` (4 in the paper).
        se_ratio: Squeeze width as a fraction of ``c2`` (0.25); 0 disables SE.
        drop_path: Stochastic depth rate of the residual branch.

    Examples:
        >>> MBConv(32, 64, 2)(torch.randn(2, 32, 15, 20)).shape
        torch.Size([2, 64, 8, 10])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        stride: int = 1,
        expand_ratio: float = 4.0,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
    ):
        super().__init__()
        _check_stride("MBConv", stride)
        _check_range("MBConv", "expand_ratio", expand_ratio, 0, math.inf, lo_open=True)
        _check_range("MBConv", "se_ratio", se_ratio, 0, 1.0 + 1e-9)
        _check_range("MBConv", "drop_path", drop_path, 0, 1)
        c_mid = max(1, int(round(c2 * expand_ratio)))
        self.c1, self.c2, self.stride = c1, c2, stride
        self.norm = nn.BatchNorm2d(c1)
        self.expand = Conv(c1, c_mid, 1, stride, act=nn.GELU())
        self.dw = Conv(c_mid, c_mid, 3, 1, g=c_mid, act=nn.GELU())
        self.se = (
            SEModule(c_mid, rd_channels=max(1, int(c2 * se_ratio)), act_layer=nn.SiLU)
            if se_ratio > 0
            else nn.Identity()
        )
        self.proj = nn.Conv2d(c_mid, c2, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        short = [_pool2x()] if stride == 2 else []
        if c1 != c2:
            short.append(nn.Conv2d(c1, c2, 1))
        self.shortcut = nn.Sequential(*short) if short else nn.Identity()
        _init_effnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.proj(self.se(self.dw(self.expand(self.norm(x))))))


@register_block(repeats=True, family="coat", role="insert", bench_levels=(5, 4, 3))
class CoAt(nn.Module):
    """A CoAtNet transformer stage: ``n`` pre-norm relative-attention blocks, the first optionally with stride 2.

    Heads are ``c2 / dim_head``. With ``c1 == c2`` and ``stride == 1`` the stage is exactly the identity at
    initialisation (zero-initialised residual branches), so it can be inserted anywhere; otherwise its first block
    projects (and pools) the shortcut as in the paper's down-sampling block.

    YAML: ``[-1, n, CoAt, [c2, stride, dim_head, mlp_ratio, max_rel, drop_path]]``, e.g. ``[-1, 3, CoAt, [1024, 2]]``
    for a P5 stage that replaces a stride-2 ``Conv`` and its ``C2f``.

    Args:
        c1: Input channels.
        c2: Output channels (attention width).
        n: Number of transformer blocks.
        stride: 1, or 2 to down-sample in the first block.
        dim_head: Channels per head (32 in the paper).
        mlp_ratio: FFN hidden width as a multiple of ``c2``.
        max_rel: Relative offsets are clipped to ``[-max_rel, max_rel]`` (exact up to ``max_rel + 1`` tokens a side).
        drop_path: Stochastic depth rate of every residual branch.
        fused: SDPA fast path (True) or the plain softmax twin (False, for tests).

    Examples:
        >>> m = CoAt(64, 64, 2)
        >>> x = torch.randn(1, 64, 15, 20)
        >>> torch.equal(m(x), x)  # identity at init
        True
        >>> CoAt(64, 128, 1, 2)(x).shape
        torch.Size([1, 128, 8, 10])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        stride: int = 1,
        dim_head: int = 32,
        mlp_ratio: float = 4.0,
        max_rel: int = 32,
        drop_path: float = 0.0,
        fused: bool = True,
    ):
        super().__init__()
        _check_stride("CoAt", stride)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"CoAt: n={n!r} blocks; use an integer >= 1")
        heads = _resolve_heads("CoAt", c2, dim_head)
        _check_range("CoAt", "mlp_ratio", mlp_ratio, 0, math.inf, lo_open=True)
        _check_range("CoAt", "drop_path", drop_path, 0, 1)
        if not isinstance(max_rel, int) or max_rel < 1:
            raise ValueError(f"CoAt: max_rel={max_rel!r} must be an integer >= 1 (32 covers P5 at 1056 px)")
        self.c1, self.c2, self.n, self.stride = c1, c2, n, stride
        self.m = nn.Sequential(
            *(
                CoAtBlock(
                    c1 if i == 0 else c2, c2, heads, stride if i == 0 else 1, mlp_ratio, max_rel, drop_path, fused
                )
                for i in range(n)
            )
        )

    @property
    def fused(self) -> bool:
        return all(m.fused for m in self.modules() if isinstance(m, CoAtAttention))

    @fused.setter
    def fused(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, CoAtAttention):
                m.fused = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@register_block(repeats=True, family="coat", role="csp", bench_levels=(5, 4, 3))
class CoAt3(AttnCSP):
    """CSP block with CoAtNet transformer bottlenecks (the C3/BoT3 layout): replaces a backbone C2f / C3k2.

    ``cv3(cat(CoAt(cv1(x)), cv2(x)))`` with 1x1 Ultralytics ``Conv`` branches of width ``c_ = int(c2 * e)`` and ``n``
    transformer blocks (``c_ / dim_head`` heads) on the first branch.

    YAML: ``[-1, n, CoAt3, [c2, e, dim_head, mlp_ratio, max_rel, drop_path]]``, e.g. ``[-1, 3, CoAt3, [1024]]``.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Transformer blocks.
        e: Hidden width ratio; ``int(c2 * e)`` must be divisible by ``dim_head``.
        dim_head: Channels per head.
        mlp_ratio: FFN hidden width of the blocks, as a multiple of ``c_``.
        max_rel: Relative offset clip.
        drop_path: Stochastic depth rate of the blocks.
        fused: SDPA fast path or the plain twin.

    Examples:
        >>> CoAt3(64, 128, 1)(torch.randn(1, 64, 15, 20)).shape
        torch.Size([1, 128, 15, 20])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        dim_head: int = 32,
        mlp_ratio: float = 4.0,
        max_rel: int = 32,
        drop_path: float = 0.0,
        fused: bool = True,
    ):
        super().__init__()
        _check_range("CoAt3", "e", e, 0, 1.0 + 1e-9, lo_open=True)
        c_ = int(c2 * e)
        _resolve_heads("CoAt3", c_, dim_head, what="int(c2 * e)")
        self.c1, self.c2, self.n = c1, c2, n
        self._build(c1, c2, c_, CoAt(c_, c_, n, 1, dim_head, mlp_ratio, max_rel, drop_path, fused))
