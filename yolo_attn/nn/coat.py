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
- Attention runs through the shared core (:mod:`yolo_attn.nn.attention`) with the bias module
  :class:`~yolo_attn.nn.rel_pos.CoAtRelPos`: SDPA with the bias as ``attn_mask`` (q pre-scaled, bias cast to q's
  dtype), the plain softmax twin, and on CPU the chunked kernel, which runs SDPA's fused kernel forward in bands of
  query rows and a backward that sums the table gradient over equal offsets directly, never holding an ``N x N``
  tensor (PyTorch's CPU SDPA falls back to its ``N x N`` math kernel whenever the mask needs a gradient).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from timm.layers import ConvMlp, DropPath, LayerNorm2d, SEModule
from torch import nn

from yolo_attn._compat import Conv
from yolo_attn.nn.attention import AttentionLayer, attend, check_impl
from yolo_attn.nn.common import (
    AttnCSP,
    check_channels,
    check_choice,
    check_int,
    check_number,
    hidden_width,
    resolve_heads,
)
from yolo_attn.nn.rel_pos import CoAtRelPos
from yolo_attn.registry import AttnTap, Probe, register_block

__all__ = ["MBConv", "CoAt", "CoAt3", "CoAtBlock", "CoAtAttention"]


def _pool2x() -> nn.Module:
    """2x2 average pooling with ceil: ``ceil(H/2)`` like a stride-2 conv; edge windows average only real pixels."""
    return nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)


def _check_max_rel(block: str, max_rel: int) -> int:
    return check_int(block, "max_rel", max_rel, 1, " (32 covers P5 at 1056 px)")


def _check_stage(block: str, n: int, mlp_ratio: float, max_rel: int, drop_path: float) -> None:
    """The checks CoAt and CoAt3 share, so that a bad YAML extra is reported with the row's own block name."""
    check_int(block, "n", n, 1, " (transformer blocks)")
    check_number(block, "mlp_ratio", mlp_ratio, 0.0, low_open=True)
    _check_max_rel(block, max_rel)
    check_number(block, "drop_path", drop_path, 0.0, 1.0)


class CoAtAttention(AttentionLayer):
    """Multi-head self-attention over all pixels with CoAtNet's relative bias (paper Eq. 3).

    ``logits[i, j] = (q_i / sqrt(d)) . k_j + w[head, clip(ky - qy), clip(kx - qx)]``
    (:class:`~yolo_attn.nn.rel_pos.CoAtRelPos`). q, k, v come from one 1x1 conv ``c1 -> 3 * c2`` (the paper's
    down-sampling block widens inside the attention), followed by a 1x1 output projection. The input is expected
    normalised (and pooled, for stride 2) by :class:`CoAtBlock`.

    Args:
        c1: Input channels.
        c2: Attention width and output channels.
        num_heads: Heads (``c2 / num_heads`` per head).
        max_rel: Offsets are clipped to ``[-max_rel, max_rel]``; the table has ``(2 * max_rel + 1)^2`` entries a head.
        attn_impl: One of :data:`~yolo_attn.nn.attention.ATTN_IMPLS`.

    Examples:
        >>> attn = CoAtAttention(64, 64, num_heads=2)
        >>> attn(torch.randn(2, 64, 15, 20)).shape
        torch.Size([2, 64, 15, 20])
    """

    def __init__(self, c1: int, c2: int, num_heads: int, max_rel: int = 32, attn_impl: str = "auto"):
        super().__init__()
        check_channels("CoAtAttention", c1, c2)
        _check_max_rel("CoAtAttention", max_rel)
        self.num_heads, self.dim_head = resolve_heads("CoAtAttention", c2, num_heads=num_heads)
        self.scale = self.dim_head**-0.5
        self.attn_impl = check_impl("CoAtAttention", attn_impl)
        self.qkv = nn.Conv2d(c1, 3 * c2, 1)
        self.proj = nn.Conv2d(c2, c2, 1)
        # The parameter name contains "bias" on purpose: Ultralytics' build_optimizer then puts the table in the
        # no-decay group (as timm and DAT exempt their position tables); a decayed table drifts to "no position".
        self.rel_pos = CoAtRelPos(num_heads, max_rel)

    def _upgrade_state(self) -> None:
        # pickles of yolo_attn 0.1.0 before the attention core (commit a8b5350): the table was CoAtAttention's own
        # parameter next to a max_rel attribute
        if "rel_pos_bias_table" in self._parameters:
            table = self._parameters.pop("rel_pos_bias_table")
            pos = CoAtRelPos(table.shape[0], self.__dict__.pop("max_rel"))
            pos.bias_table = table
            self.rel_pos = pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        qkv = rearrange(self.qkv(x), "b (qkv h d) y x -> qkv b h (y x) d", qkv=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)
        q = q * self.scale  # scale before the position logits are added
        out = attend(q, k, v, self.rel_pos(q, (height, x.shape[3])), self.attn_impl)
        return self.proj(rearrange(out, "b h (y x) d -> b (h d) y x", y=height))


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
    ):
        super().__init__()
        check_choice("CoAtBlock", "stride", stride, (1, 2))
        check_number("CoAtBlock", "mlp_ratio", mlp_ratio, 0.0, low_open=True)
        check_number("CoAtBlock", "drop_path", drop_path, 0.0, 1.0)
        self.norm1 = LayerNorm2d(c1, eps=1e-5)
        self.pool = _pool2x() if stride == 2 else nn.Identity()
        self.attn = CoAtAttention(c1, c2, num_heads, max_rel=max_rel)
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
        check_channels("MBConv", c1, c2)
        check_choice("MBConv", "stride", stride, (1, 2))
        check_number("MBConv", "expand_ratio", expand_ratio, 0.0, low_open=True)
        check_number("MBConv", "se_ratio", se_ratio, 0.0, 1.0, high_open=False)
        check_number("MBConv", "drop_path", drop_path, 0.0, 1.0)
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


# How yolo_attn.explain reads a CoAt block: the residual stack m, the zero-initialised output projections of the
# attention and the FFN, and the attention's fused qkv projection.
_PROBE = Probe(
    "m",
    (("attn_out_w", "attn.proj.weight"), ("ffn_out_w", "mlp.fc2.weight")),
    AttnTap("CoAtAttention", q="qkv", k="qkv", bias="rel_pos"),
)


@register_block(repeats=True, family="coat", role="insert", bench_levels=(5, 4, 3), probe=_PROBE)
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
    ):
        super().__init__()
        check_channels("CoAt", c1, c2)
        check_choice("CoAt", "stride", stride, (1, 2))
        num_heads, _ = resolve_heads("CoAt", c2, dim_head=dim_head)
        _check_stage("CoAt", n, mlp_ratio, max_rel, drop_path)
        self.c1, self.c2, self.n, self.stride = c1, c2, n, stride
        self.m = nn.Sequential(
            *(
                CoAtBlock(c1 if i == 0 else c2, c2, num_heads, stride if i == 0 else 1, mlp_ratio, max_rel, drop_path)
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@register_block(repeats=True, family="coat", role="csp", bench_levels=(5, 4, 3), probe=_PROBE)
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
    ):
        super().__init__()
        check_channels("CoAt3", c1, c2)
        c_ = hidden_width("CoAt3", c2, e, high=1.0)
        resolve_heads("CoAt3", c_, dim_head=dim_head, what=f"int(c2 * e) = int({c2} * {e})")
        _check_stage("CoAt3", n, mlp_ratio, max_rel, drop_path)
        self.c1, self.c2, self.n = c1, c2, n
        self._build(c1, c2, c_, CoAt(c_, c_, n, 1, dim_head, mlp_ratio, max_rel, drop_path))
