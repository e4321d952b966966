"""BoTNet blocks: multi-head self-attention with 2-D relative positions, the Bottleneck Transformer block and BoT3.

Paper: Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani, "Bottleneck Transformers for Visual Recognition", CVPR 2021
(arXiv 2101.11605), Section 3 and Fig. 4. Reference code: the authors' TensorFlow gist
(aravindsrinivas/56359b79f0ce4449bcb04ab4b56a57a2, Apache-2.0); timm's ``BottleneckAttn`` (Apache-2.0) is used
only as a numerical oracle in the tests. This file is written from the paper's equations, not copied.

What differs from the reference code, and why:

- Resolution-free positions. The gist and timm size their relative tables from the feature map known at
  construction (timm asserts it). Here each axis has one table of ``2 * max_rel + 1`` rows indexed by the clipped
  key-minus-query offset, built from the live ``H`` and ``W`` on every call. It is exact up to ``max_rel + 1``
  rows/columns (33 by default: P5 of a 1056 px input) and shares the edge rows beyond, so the 256x256 stride probe,
  rectangular validation (20x15), 1xk FLOPs probes and every export size run with the same parameters.
- Scaling as in the gist: q is multiplied by ``dim_head ** -0.5`` before both the content and the position term
  (timm leaves the position logits unscaled by default).
- The relative embeddings are initialised N(0, dim_head ** -0.5), which is what the gist intends (its
  ``random_normal_initializer(d ** -0.5)`` sets the mean, a documented bug); q, k, v projections N(0, 0.01) as there.
- Attention runs through the shared core (:mod:`yolo_attn.nn.attention`): a chunked kernel (the CPU default), one
  SDPA call with the position terms folded into q and k (the CUDA default), SDPA with a dense mask (the export
  graph) and the plain softmax twin, all exact up to rounding; only the mask and the twin hold an N x N tensor.
- Stride 2 pools with ``ceil_mode=True`` so the output is ``ceil(H / 2)`` like Ultralytics ``Conv(k=3, s=2)``
  (timm floors, which breaks odd maps).
- Convolution + BN + activation uses Ultralytics ``Conv``, so ``fuse()`` folds it and the YAML ``activation:`` applies.

Examples:
    >>> import torch
    >>> from yolo_attn.nn.bot import BoT3
    >>> m = BoT3(64, 64, n=1)
    >>> m(torch.randn(2, 64, 15, 20)).shape
    torch.Size([2, 64, 15, 20])
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from yolo_attn._compat import Classify, Conv
from yolo_attn.nn.attention import AttentionLayer, attend, check_impl
from yolo_attn.nn.common import AttnCSP, check_channels, check_choice, check_int, hidden_width, resolve_heads
from yolo_attn.nn.rel_pos import BoTRelPos
from yolo_attn.registry import AttnTap, Probe, register_block

__all__ = ["MHSA", "BoTBottleneck", "BoT", "BoT3", "BoTStage", "Classifier"]


def _act(act: bool | nn.Module) -> nn.Module:
    """Activation as Ultralytics ``Conv`` resolves it, so a YAML ``activation:`` reaches our BN + act pairs too."""
    if act is True:
        return Conv.default_act
    return act if isinstance(act, nn.Module) else nn.Identity()


@register_block(family="bot", role="layer", bench_levels=(5, 4, 3))
class MHSA(AttentionLayer):
    """Multi-head self-attention over all positions with 2-D relative position logits (BoTNet Fig. 4).

    For query ``i`` at row/column ``(y_i, x_i)`` and key ``j``, with ``q_hat = q * dim_head ** -0.5``:
    ``logit_ij = q_hat_i . k_j + q_hat_i . r_h[c(y_j - y_i)] + q_hat_i . r_w[c(x_j - x_i)]``, softmax over ``j``,
    where ``c`` clips the offset to ``[-max_rel, max_rel]`` (:class:`~yolo_attn.nn.rel_pos.BoTRelPos`). The tables
    are shared by the heads; there is no output projection (the following 1x1 convolution plays that role, as in the
    paper).

    ``attn_impl`` (see :func:`~yolo_attn.nn.attention.set_attn_impl`), all exact up to rounding: ``"chunked"`` runs
    SDPA one band of query rows at a time with a backward that never holds an N x N tensor (the CPU default);
    ``"fused"`` folds the position terms into the dot product, ``[q_hat | a | b] . [k | onehot(y_j) | onehot(x_j)]``,
    and makes one SDPA call without a mask while ``d + H + W <= 256`` (flash attention's head-dim limit; the CUDA
    default), otherwise passes the position logits as an (B, h, N, N) mask, which is also the export graph;
    ``"plain"`` is the softmax twin.

    Args:
        c1: Input channels.
        c2: Output (and attention) channels; ``None`` keeps ``c1``.
        num_heads: Number of heads; must divide ``c2``.
        max_rel: Largest relative offset with its own table row, per axis; exact for maps up to ``max_rel + 1``.
        qkv_bias: Bias in the q, k, v projections (the paper has none).
        attn_impl: One of :data:`~yolo_attn.nn.attention.ATTN_IMPLS`.

    Examples:
        >>> m = MHSA(64, num_heads=4)
        >>> m(torch.randn(2, 64, 25, 31)).shape
        torch.Size([2, 64, 25, 31])
    """

    def __init__(
        self,
        c1: int,
        c2: int | None = None,
        num_heads: int = 4,
        max_rel: int = 32,
        qkv_bias: bool = False,
        attn_impl: str = "auto",
    ):
        super().__init__()
        c2 = c1 if c2 is None else c2
        check_channels("MHSA", c1, c2)
        check_int("MHSA", "max_rel", max_rel, 0, " (offsets beyond it share the edge table row)")
        self.num_heads, self.dim_head = resolve_heads("MHSA", c2, num_heads=num_heads)
        self.scale = self.dim_head**-0.5
        self.attn_impl = check_impl("MHSA", attn_impl)
        self.q = nn.Conv2d(c1, c2, 1, bias=qkv_bias)
        self.k = nn.Conv2d(c1, c2, 1, bias=qkv_bias)
        self.v = nn.Conv2d(c1, c2, 1, bias=qkv_bias)
        self.rel_pos = BoTRelPos(self.dim_head, max_rel)
        for conv in (self.q, self.k, self.v):  # N(0, 0.01) as in the gist
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, dim_head={self.dim_head}, max_rel={self.rel_pos.max_rel}, "
            f"attn_impl={self.attn_impl!r}"
        )

    def _upgrade_state(self) -> None:
        # pickles of yolo_attn 0.1.0 before the attention core (commit a8b5350): the two tables were MHSA's own
        # parameters (rel_pos_bias_h / _w) next to a max_rel attribute
        if "rel_pos_bias_h" in self._parameters:
            pos = BoTRelPos(self.dim_head, self.__dict__.pop("max_rel"))
            pos.bias_h = self._parameters.pop("rel_pos_bias_h")
            pos.bias_w = self._parameters.pop("rel_pos_bias_w")
            self.rel_pos = pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        q = rearrange(self.q(x) * self.scale, "b (h d) y x -> b h (y x) d", h=self.num_heads)  # scaled first
        k = rearrange(self.k(x), "b (h d) y x -> b h (y x) d", h=self.num_heads)
        v = rearrange(self.v(x), "b (h d) y x -> b h (y x) d", h=self.num_heads)
        out = attend(q, k, v, self.rel_pos(q, (height, x.shape[3])), self.attn_impl)
        return rearrange(out, "b h (y x) d -> b (h d) y x", y=height)


class BoTBottleneck(nn.Module):
    """The Bottleneck Transformer block: ResNet's bottleneck with MHSA in place of the 3x3 convolution.

    ``x -> Conv1x1(c1 -> c_) + BN + act -> MHSA(c_) -> [AvgPool 2x2, ceil, if stride 2] -> BN + act
    -> Conv1x1(c_ -> c2) + BN (gamma = 0) -> + shortcut(x) -> [act]``, with ``c_ = int(c2 * e)``.

    The shortcut is the identity when shapes allow, otherwise a strided 1x1 convolution + BN (ReLU on it, as the
    gist optionally does, with ``shortcut_act=True``). The last BN starts at gamma = 0, so the residual branch
    contributes nothing at initialisation: with ``out_act=False`` and an identity shortcut the block is exactly the
    identity. Convolutions use He-normal (fan-in) initialisation as in the paper.

    Args:
        c1: Input channels.
        c2: Output channels.
        stride: 1, or 2 to halve H and W (rounding up) after the attention, as in BoTNet's first c5 block.
        e: Attention width as a fraction of ``c2`` (the paper's 1 / proj_factor = 0.25).
        num_heads: MHSA heads; must divide ``int(c2 * e)``.
        max_rel: MHSA relative table half-size.
        act: Activation (``True``: the Ultralytics default, i.e. the YAML's ``activation:``).
        out_act: Apply the activation after the residual sum (ResNet/BoTNet: yes; YOLO CSP bottlenecks: no).
        shortcut_act: Apply the activation on a projection shortcut.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        stride: int = 1,
        e: float = 0.25,
        num_heads: int = 4,
        max_rel: int = 32,
        act: bool | nn.Module = True,
        out_act: bool = True,
        shortcut_act: bool = False,
    ):
        super().__init__()
        check_channels("BoTBottleneck", c1, c2)
        check_choice("BoTBottleneck", "stride", stride, (1, 2))
        c_ = hidden_width("BoTBottleneck", c2, e)
        resolve_heads("BoTBottleneck", c_, num_heads, what=f"int(c2 * e) = int({c2} * {e})")
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.mhsa = MHSA(c_, c_, num_heads, max_rel)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()
        self.bn = nn.BatchNorm2d(c_)
        self.act = _act(act)
        self.cv2 = Conv(c_, c2, 1, act=False)
        self.shortcut = (
            nn.Identity() if stride == 1 and c1 == c2 else Conv(c1, c2, 1, stride, act=act if shortcut_act else False)
        )
        self.out_act = _act(act) if out_act else nn.Identity()
        for m in (self.cv1, self.cv2, self.shortcut):
            if isinstance(m, Conv):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.cv2.bn.weight)  # residual branch starts at zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.pool(self.mhsa(self.cv1(x)))))
        return self.out_act(self.cv2(y) + self.shortcut(x))


def _check_bot(block: str, c1: int, c2: int, n: int, e: float, num_heads: int) -> int:
    """The checks BoT, BoT3 and BoTStage share; returns the attention width ``int(c2 * e)``."""
    check_channels(block, c1, c2)
    check_int(block, "n", n)
    c_ = hidden_width(block, c2, e)
    resolve_heads(block, c_, num_heads, what=f"int(c2 * e) = int({c2} * {e})")
    return c_


# How yolo_attn.explain reads a BoT block: the residual stack m, the zero-initialised BN scales, MHSA's q and k.
_PROBE = Probe("m", (("bn_gamma", "cv2.bn.weight"),), AttnTap("MHSA", q="q", k="k", bias="rel_pos"))


@register_block(repeats=True, family="bot", role="insert", bench_levels=(5, 4, 3), probe=_PROBE)
class BoT(nn.Module):
    """``n`` Bottleneck Transformer blocks to insert anywhere in a YOLO model; identity at initialisation.

    A 1x1 ``Conv`` projects ``c1 -> c2`` first when they differ. Each block is a :class:`BoTBottleneck` with an
    identity shortcut and no activation after the sum (YOLO's residual convention), so with ``c1 == c2`` the whole
    module returns its input exactly until training moves the zero-initialised last BN.

    YAML: ``[-1, n, BoT, [c2, e, num_heads, max_rel]]`` (extras optional). Global attention costs O((H W)^2): place
    it at P5, or P4 at most.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of blocks.
        e: Attention width as a fraction of ``c2``.
        num_heads: MHSA heads; must divide ``int(c2 * e)``.
        max_rel: MHSA relative table half-size.

    Examples:
        >>> m = BoT(64, 64).eval()
        >>> x = torch.randn(1, 64, 8, 8)
        >>> torch.equal(m(x), x)
        True
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, num_heads: int = 4, max_rel: int = 32):
        super().__init__()
        _check_bot("BoT", c1, c2, n, e, num_heads)
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.m = nn.Sequential(
            *(BoTBottleneck(c2, c2, 1, e, num_heads, max_rel, out_act=False) for _ in range(n)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(self.proj(x))


@register_block(repeats=True, family="bot", role="csp", bench_levels=(5, 4, 3), probe=_PROBE)
class BoT3(AttnCSP):
    """CSP block with ``n`` Bottleneck Transformer blocks (the YOLOv5 community "BoT3", wired correctly).

    ``y = cv3(cat(m(cv1(x)), cv2(x)))`` with ``cv1``, ``cv2``: ``Conv(c1, c_, 1)``, ``cv3``: ``Conv(2 c_, c2, 1)``
    and ``m``: ``n`` x :class:`BoTBottleneck` ``(c_ -> c_)`` with full width (``e=1``), identity shortcut and no
    activation after the sum, ``c_ = int(c2 * e)``. Replaces the last backbone CSP block (BoTNet's c5 placement):
    ``[-1, n, BoT3, [c2, e, num_heads, max_rel]]`` (extras optional).

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of BoT bottlenecks.
        e: Hidden width as a fraction of ``c2``.
        num_heads: MHSA heads; must divide ``int(c2 * e)`` (YOLOv8n P5: c2 = 256 -> 128 channels -> 4 heads of 32).
        max_rel: MHSA relative table half-size.

    Examples:
        >>> m = BoT3(64, 128, n=2)
        >>> m(torch.randn(2, 64, 20, 15)).shape
        torch.Size([2, 128, 20, 15])
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, num_heads: int = 4, max_rel: int = 32):
        super().__init__()
        c_ = _check_bot("BoT3", c1, c2, n, e, num_heads)
        m = nn.Sequential(*(BoTBottleneck(c_, c_, 1, 1.0, num_heads, max_rel, out_act=False) for _ in range(n)))
        self._build(c1, c2, c_, m)


@register_block(repeats=True, family="bot", role="layer")
class BoTStage(nn.Module):
    """A BoTNet stage for classification backbones: ``n`` BoT blocks as in BoTNet-50's c5.

    The first block changes channels and applies ``s`` (2x2 average pooling after the attention, projection
    shortcut); every block has bottleneck width ``int(c2 * e)`` and the activation after the residual sum, i.e. the
    three nonlinearities of the paper. ``[-1, 3, BoTStage, [2048, 2]]`` after ResNet-50's c4 gives BoT50.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of blocks (BoT50: 3).
        s: Stride of the first block, 1 or 2.
        num_heads: MHSA heads; must divide ``int(c2 * e)`` (BoT50: 4 heads of 128).
        e: Bottleneck width as a fraction of ``c2`` (the paper's 1 / 4).
        max_rel: MHSA relative table half-size.

    Examples:
        >>> m = BoTStage(64, 128, n=2, s=2)
        >>> m(torch.randn(2, 64, 15, 15)).shape
        torch.Size([2, 128, 8, 8])
    """

    def __init__(
        self, c1: int, c2: int, n: int = 3, s: int = 2, num_heads: int = 4, e: float = 0.25, max_rel: int = 32
    ):
        super().__init__()
        check_choice("BoTStage", "s", s, (1, 2))
        _check_bot("BoTStage", c1, c2, n, e, num_heads)
        self.m = nn.Sequential(
            *(BoTBottleneck(c1 if i == 0 else c2, c2, s if i == 0 else 1, e, num_heads, max_rel) for i in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@register_block(role="layer")
class Classifier(Classify):
    """Classification head: optional 1x1 ``Conv`` to ``c2`` channels, global average pooling, dropout, linear.

    ``c2 = 0`` gives ResNet's (and BoTNet's) head, pooling + ``Linear(c1, nc)``; Ultralytics' ``Classify`` always
    adds a 1x1 convolution to 1280 channels (3.9M parameters after a 2048-channel backbone, against 2.0M for
    ResNet-50's fc). It is a ``Classify``, so Ultralytics' classify task, class-count reshaping, export and predict
    treat it as theirs, and its name lets ``YOLO("...yaml")`` detect the classify task. YAML:
    ``[-1, 1, Classifier, [0, nc]]``; the hidden width comes first because Ultralytics width-scales that argument
    (0 stays 0) while ``nc`` must pass unscaled.

    Args:
        c1: Input channels.
        c2: Hidden width of the 1x1 convolution, 0 for none.
        nc: Number of classes.
    """

    def __init__(self, c1: int, c2: int = 0, nc: int = 1000):
        nn.Module.__init__(self)  # Classify.__init__ would build its fixed 1280-channel conv
        check_int("Classifier", "c1", c1, 1, " (input channels)")
        check_int("Classifier", "c2", c2, 0, " (0: no hidden convolution)")
        check_int("Classifier", "nc", nc, 1)
        self.conv = Conv(c1, c2, 1) if c2 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(p=0.0, inplace=True)
        self.linear = nn.Linear(c2 or c1, nc)
