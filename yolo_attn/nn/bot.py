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
- Three exact fast paths through ``F.scaled_dot_product_attention`` plus a plain softmax twin (see :class:`MHSA`);
  none of the fast paths holds an N x N tensor in training except ``bias``.
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
import torch.nn.functional as F

from yolo_attn._compat import Classify, Conv
from yolo_attn.nn.common import AttnCSP, attend, check_heads, rel_index
from yolo_attn.registry import register_block

__all__ = ["MHSA", "BoTBottleneck", "BoT", "BoT3", "BoTStage", "Classifier", "set_mhsa_path", "MHSA_PATHS"]

MHSA_PATHS = ("auto", "chunked", "keyaug", "bias", "reference")
_KEYAUG_MAX_DIM = 256  # flash attention's head-dim limit on CUDA; above it the bias path is used
_CHUNK_ELEMS = 1 << 21  # logits per query chunk of the "chunked" path (B * h * rows * N): 8 MB in fp32


def _act(act: bool | nn.Module) -> nn.Module:
    """Activation as Ultralytics ``Conv`` resolves it, so a YAML ``activation:`` reaches our BN + act pairs too."""
    if act is True:
        return Conv.default_act
    return act if isinstance(act, nn.Module) else nn.Identity()


def _check_int(block: str, name: str, value, low: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{block}: {name}={value!r} must be an integer >= {low}{hint}")
    return value


def _check_path(path: str) -> str:
    if path not in MHSA_PATHS:
        raise ValueError(f"MHSA: path={path!r} is not one of {', '.join(MHSA_PATHS)}")
    return path


def _hidden(block: str, c2: int, e: float) -> int:
    if not isinstance(e, (int, float)) or isinstance(e, bool) or e <= 0:
        raise ValueError(f"{block}: e={e!r} must be a positive number (the attention width is int(c2 * e))")
    c_ = int(c2 * e)
    if c_ < 1:
        raise ValueError(f"{block}: int(c2 * e) = int({c2} * {e}) = 0 channels; increase c2 or e")
    return c_


def _row_chunk(q: torch.Tensor) -> int:
    """Query rows per chunk so that one chunk's logits hold about ``_CHUNK_ELEMS`` values (at least one row)."""
    B, h, N, _ = q.shape
    return max(1, _CHUNK_ELEMS // max(B * h * N, 1))


def _flash_cpu(q, k, v, mask):
    """``(out, logsumexp)`` of PyTorch's CPU flash kernel, or None where it is unavailable (then SDPA is used).

    The public ``F.scaled_dot_product_attention`` runs this very kernel for these inputs but drops the log-sum-exp,
    which lets the backward rebuild the probabilities with one ``exp`` instead of a softmax.
    """
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or q.device.type != "cpu":
        return None
    try:
        return op(q, k, v, 0.0, False, attn_mask=mask, scale=1.0)
    except (RuntimeError, TypeError):  # dtype the kernel lacks (fp16 on some builds), changed private signature
        return None


def _rel_attend_chunked(q, k, v, a, b) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA per query chunk with that chunk's (rows x N) position mask ``a[i, y_j] + b[i, x_j]``; no autograd.

    Args:
        q, k, v: Scaled queries, keys, values (B, h, N, d).
        a, b: Row and column position logits (B, h, N, H) and (B, h, N, W).

    Returns:
        The attention output (B, h, N, d) and the log-sum-exp of each query's logits (B, h, N), at least fp32, or
        None where the flash kernel was not available.
    """
    B, h, N, _ = q.shape
    H, W = a.shape[-1], b.shape[-1]
    out = q.new_empty(B, h, N, v.shape[-1])
    lse = q.new_empty(B, h, N, dtype=torch.promote_types(q.dtype, torch.float32))
    step = _row_chunk(q)
    for s in range(0, N, step):
        e = min(N, s + step)
        mask = (a[:, :, s:e, :, None] + b[:, :, s:e, None, :]).reshape(B, h, e - s, H * W)  # rows, N: key row, col
        res = _flash_cpu(q[:, :, s:e], k, v, mask) if lse is not None else None
        if res is None:
            lse = None
            out[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=mask, scale=1.0)
        else:
            out[:, :, s:e], lse[:, :, s:e] = res
    return out, lse


class _RelPosAttention(torch.autograd.Function):
    """``softmax(q k^T + a[i, y_j] + b[i, x_j]) v`` holding only one query chunk of logits at a time, both passes.

    PyTorch's CPU flash kernel takes no gradient for a float mask: with a mask that needs one, SDPA falls back to its
    N x N math kernel (the twin's memory). So the forward runs SDPA per query chunk with a detached chunk of the mask,
    and the backward rebuilds each chunk's probabilities from the saved log-sum-exp and reduces the logit gradient
    straight into ``a`` (summed over key columns) and ``b`` (over key rows), the way flash attention's backward
    handles q, k and v. Gradients are computed in fp32 (fp64 for fp64 inputs) whatever the input dtype.
    """

    @staticmethod
    def forward(ctx, q, k, v, a, b):
        # the private kernel assumes unit stride on the last dim (SDPA checks that, then falls back to math)
        q, k, v, a, b = (t.contiguous() for t in (q, k, v, a, b))
        with torch.no_grad():
            out, lse = _rel_attend_chunked(q, k, v, a, b)
        ctx.save_for_backward(q, k, v, a, b, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, a, b, out, lse = ctx.saved_tensors
        B, h, N, _ = q.shape
        H, W = a.shape[-1], b.shape[-1]
        f32 = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; fp32 and fp64 stay
        qf, kf, vf, gof = q.to(f32), k.to(f32), v.to(f32), grad_out.to(f32)  # no copies in fp32
        delta = (gof * out.to(f32)).sum(-1, keepdim=True)  # B, h, N, 1: rowsum(dO * O) of the softmax backward
        gq, gk, gv = torch.empty_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        ga, gb = a.new_empty(a.shape, dtype=f32), b.new_empty(b.shape, dtype=f32)
        kt, vt = kf.transpose(-1, -2), vf.transpose(-1, -2)
        step = _row_chunk(q)
        for s in range(0, N, step):
            e = min(N, s + step)
            logits = qf[:, :, s:e] @ kt  # B, h, rows, N
            grid = logits.view(B, h, e - s, H, W)  # key index j = (y_j, x_j)
            grid += b[:, :, s:e, None, :]
            if lse is None:
                grid += a[:, :, s:e, :, None]
                p = logits.softmax(-1)
            else:  # P = exp(logit - lse): the saved log-sum-exp folded into the row term, exponentiated in place
                grid += (a[:, :, s:e] - lse[:, :, s:e, None])[..., None]
                p = logits.exp_()
            gv += p.transpose(-1, -2) @ gof[:, :, s:e]
            ds = gof[:, :, s:e] @ vt  # dP
            ds -= delta[:, :, s:e]
            ds *= p  # dS = P * (dP - delta): the gradient of the logits
            grid = ds.view(B, h, e - s, H, W)
            ga[:, :, s:e] = grid.sum(-1)  # a[i, y] was added to the logits of every key in row y
            gb[:, :, s:e] = grid.sum(-2)  # b[i, x] to every key in column x
            gq[:, :, s:e] = ds @ kf
            gk += ds.transpose(-1, -2) @ qf[:, :, s:e]
        return gq.to(q.dtype), gk.to(k.dtype), gv.to(v.dtype), ga.to(a.dtype), gb.to(b.dtype)


@register_block(family="bot", role="layer", bench_levels=(5, 4, 3))
class MHSA(nn.Module):
    """Multi-head self-attention over all positions with 2-D relative position logits (BoTNet Fig. 4).

    For query ``i`` at row/column ``(y_i, x_i)`` and key ``j``, with ``q_hat = q * dim_head ** -0.5``:
    ``logit_ij = q_hat_i . k_j + q_hat_i . r_h[c(y_j - y_i)] + q_hat_i . r_w[c(x_j - x_i)]``, softmax over ``j``,
    where ``c`` clips the offset to ``[-max_rel, max_rel]``. The tables are shared by the heads; there is no output
    projection (the following 1x1 convolution plays that role, as in the paper).

    Execution paths (``path``), all exact up to rounding:

    - ``"keyaug"``: folds the position terms into the dot product, ``q' = [q_hat | a | b]`` and
      ``k' = [k | onehot(y_j) | onehot(x_j)]`` where ``a`` (N x H) and ``b`` (N x W) are the per-row/column position
      logits, then one SDPA call without a mask. No N x N tensor exists (flash/memory-efficient kernels apply on
      CUDA and CPU), at the price of ``d + H + W`` instead of ``d`` multiply-adds per pair.
    - ``"chunked"``: SDPA per chunk of query rows with that chunk's slice of the position mask, and a custom
      backward that rebuilds each chunk's probabilities from the saved log-sum-exp (:class:`_RelPosAttention`).
      Only ``rows x N`` logits exist at a time and the cost stays ``d`` multiply-adds per pair: the CPU path, where
      SDPA gives a float mask that needs a gradient to its N x N math kernel.
    - ``"bias"``: the position logits as an additive (B, h, N, N) float mask for SDPA.
    - ``"reference"``: the plain softmax twin (explicit logits, softmax, product) that the tests compare against.
    - ``"auto"`` (default): ``chunked`` on CPU; elsewhere ``keyaug`` while ``d + H + W <= 256`` (flash
      attention's head-dim limit), otherwise ``bias``; always ``bias`` while tracing for export, where it is the
      smaller graph with fully dynamic H and W.

    Args:
        c1: Input channels.
        c2: Output (and attention) channels; ``None`` keeps ``c1``.
        heads: Number of heads; must divide ``c2``.
        max_rel: Largest relative offset with its own table row, per axis; exact for maps up to ``max_rel + 1``.
        qkv_bias: Bias in the q, k, v projections (the paper has none).
        path: Execution path, see above.

    Examples:
        >>> m = MHSA(64, heads=4)
        >>> m(torch.randn(2, 64, 25, 31)).shape
        torch.Size([2, 64, 25, 31])
    """

    def __init__(
        self,
        c1: int,
        c2: int | None = None,
        heads: int = 4,
        max_rel: int = 32,
        qkv_bias: bool = False,
        path: str = "auto",
    ):
        super().__init__()
        c2 = c1 if c2 is None else c2
        _check_int("MHSA", "c1", c1, 1)
        _check_int("MHSA", "c2", c2, 1)
        _check_int("MHSA", "heads", heads, 1)
        self.max_rel = _check_int("MHSA", "max_rel", max_rel, 0, " (offsets beyond it share the edge table row)")
        self.num_heads, self.dim_head = check_heads("MHSA", c2, num_heads=heads)
        self.scale = self.dim_head**-0.5
        self.path = _check_path(path)
        self.q = nn.Conv2d(c1, c2, 1, bias=qkv_bias)
        self.k = nn.Conv2d(c1, c2, 1, bias=qkv_bias)
        self.v = nn.Conv2d(c1, c2, 1, bias=qkv_bias)
        # Relative embeddings per axis, indexed by clipped offset + max_rel. "bias" in the names is deliberate:
        # Ultralytics' build_optimizer puts parameters whose name contains "bias" in the no-decay group, and
        # position tables are conventionally exempt from weight decay (timm, DAT).
        self.rel_pos_bias_h = nn.Parameter(torch.empty(2 * max_rel + 1, self.dim_head))
        self.rel_pos_bias_w = nn.Parameter(torch.empty(2 * max_rel + 1, self.dim_head))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.q, self.k, self.v):
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.rel_pos_bias_h, std=self.dim_head**-0.5)
        nn.init.normal_(self.rel_pos_bias_w, std=self.dim_head**-0.5)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, dim_head={self.dim_head}, max_rel={self.max_rel}, path={self.path!r}"

    def rel_logits(self, q: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position logits of scaled queries ``q`` (B, h, H*W, d) against every key row and every key column.

        Returns ``a`` (B, h, H, W, H) with ``a[..., y_i, x_i, y_j] = q_i . r_h[c(y_j - y_i)]`` and ``b``
        (B, h, H, W, W) with ``b[..., y_i, x_i, x_j] = q_i . r_w[c(x_j - x_i)]``. Cost O(N (H + W) d); the lookups
        index the small tables, never an N x N tensor.
        """
        B, h, _, d = q.shape
        q = q.reshape(B, h, height, width, d)
        r_h = self.rel_pos_bias_h[rel_index(height, self.max_rel, q.device)].to(q.dtype)  # H(query), H(key), d
        r_w = self.rel_pos_bias_w[rel_index(width, self.max_rel, q.device)].to(q.dtype)  # W(query), W(key), d
        a = q @ r_h.transpose(1, 2)  # (B, h, H, W, d) @ (H, d, H) -> B, h, H, W, H
        b = (q.transpose(2, 3) @ r_w.transpose(1, 2)).transpose(2, 3)  # (B, h, W, H, d) @ (W, d, W) -> B, h, H, W, W
        return a, b

    def resolve_path(self, height: int, width: int, device: torch.device | str = "cpu") -> str:
        """The path ``forward`` takes for an ``height`` x ``width`` map on ``device`` (``"auto"`` resolved)."""
        if self.path != "auto":
            return self.path
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return "bias"
        if torch.device(device).type == "cpu":
            return "chunked"
        return "keyaug" if self.dim_head + height + width <= _KEYAUG_MAX_DIM else "bias"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h, d = self.num_heads, self.dim_head
        q = (self.q(x) * self.scale).reshape(B, h, d, H * W).transpose(-1, -2)  # B, h, N, d (scaled first)
        k = self.k(x).reshape(B, h, d, H * W).transpose(-1, -2)  # B, h, N, d
        v = self.v(x).reshape(B, h, d, H * W).transpose(-1, -2)  # B, h, N, d
        a, b = self.rel_logits(q, H, W)
        path = self.resolve_path(H, W, x.device)
        if path == "keyaug":
            out = self._attend_keyaug(q, k, v, a, b)
        elif path == "chunked":
            out = _RelPosAttention.apply(q, k, v, a.reshape(B, h, H * W, H), b.reshape(B, h, H * W, W))
        else:
            bias = (a.unsqueeze(-1) + b.unsqueeze(-2)).reshape(B, h, H * W, H * W)  # B, h, N, N: a[y_j] + b[x_j]
            out = attend(q, k, v, bias, scale=1.0, fused=path == "bias")
        return out.transpose(-1, -2).reshape(B, h * d, H, W)

    @staticmethod
    def _attend_keyaug(q, k, v, a, b) -> torch.Tensor:
        """SDPA over augmented vectors: [q | a | b] . [k | onehot(y_j) | onehot(x_j)] equals the full logit."""
        B, h, H, W, _ = a.shape
        N, d = H * W, q.shape[-1]
        one_y = torch.eye(H, dtype=q.dtype, device=q.device)[:, None, :].expand(H, W, H).reshape(N, H)  # key row
        one_x = torch.eye(W, dtype=q.dtype, device=q.device)[None, :, :].expand(H, W, W).reshape(N, W)  # key column
        qa = torch.cat([q, a.reshape(B, h, N, H), b.reshape(B, h, N, W)], dim=-1)  # B, h, N, d+H+W
        ka = torch.cat([k, one_y.expand(B, h, N, H), one_x.expand(B, h, N, W)], dim=-1)  # B, h, N, d+H+W
        pad = -(d + H + W) % 8  # aligned head dim for the fused kernels; zero columns change no dot product
        qa, ka = F.pad(qa, (0, pad)), F.pad(ka, (0, pad))
        va = F.pad(v, (0, qa.shape[-1] - d))  # flash kernels want v as wide as q; extra columns sliced off below
        return attend(qa, ka, va, scale=1.0)[..., :d]


def set_mhsa_path(module: nn.Module, path: str) -> nn.Module:
    """Set the execution path of every :class:`MHSA` inside ``module`` (e.g. ``"reference"`` for the twin)."""
    _check_path(path)
    for m in module.modules():
        if isinstance(m, MHSA):
            m.path = path
    return module


class BoTBottleneck(nn.Module):
    """The Bottleneck Transformer block: ResNet's bottleneck with MHSA in place of the 3x3 convolution.

    ``x -> Conv1x1(c1 -> c_) + BN + act -> MHSA(c_) -> [AvgPool 2x2, ceil, if stride 2] -> BN + act
    -> Conv1x1(c_ -> c2) + BN (gamma = 0) -> + shortcut(x) -> [act]``, with ``c_ = int(c2 * expansion)``.

    The shortcut is the identity when shapes allow, otherwise a strided 1x1 convolution + BN (ReLU on it, as the
    gist optionally does, with ``shortcut_act=True``). The last BN starts at gamma = 0, so the residual branch
    contributes nothing at initialisation: with ``out_act=False`` and an identity shortcut the block is exactly the
    identity. Convolutions use He-normal (fan-in) initialisation as in the paper.

    Args:
        c1: Input channels.
        c2: Output channels.
        stride: 1, or 2 to halve H and W (rounding up) after the attention, as in BoTNet's first c5 block.
        expansion: Attention width as a fraction of ``c2`` (the paper's 1 / proj_factor = 0.25).
        heads: MHSA heads; must divide ``int(c2 * expansion)``.
        max_rel: MHSA relative table half-size.
        act: Activation (``True``: the Ultralytics default, i.e. the YAML's ``activation:``).
        out_act: Apply the activation after the residual sum (ResNet/BoTNet: yes; YOLO CSP bottlenecks: no).
        shortcut_act: Apply the activation on a projection shortcut.
        path: MHSA execution path.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        stride: int = 1,
        expansion: float = 0.25,
        heads: int = 4,
        max_rel: int = 32,
        act: bool | nn.Module = True,
        out_act: bool = True,
        shortcut_act: bool = False,
        path: str = "auto",
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"BoTBottleneck: stride={stride!r} must be 1 or 2")
        c_ = _hidden("BoTBottleneck", c2, expansion)
        check_heads(f"BoTBottleneck(c2={c2}, expansion={expansion})", c_, num_heads=heads)
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.mhsa = MHSA(c_, c_, heads, max_rel, path=path)
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


@register_block(repeats=True, family="bot", role="insert", bench_levels=(5, 4, 3))
class BoT(nn.Module):
    """``n`` Bottleneck Transformer blocks to insert anywhere in a YOLO model; identity at initialisation.

    A 1x1 ``Conv`` projects ``c1 -> c2`` first when they differ. Each block is a :class:`BoTBottleneck` with an
    identity shortcut and no activation after the sum (YOLO's residual convention), so with ``c1 == c2`` the whole
    module returns its input exactly until training moves the zero-initialised last BN.

    YAML: ``[-1, n, BoT, [c2, e, heads, max_rel]]`` (extras optional). Global attention costs O((H W)^2): place it at
    P5, or P4 at most.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of blocks.
        e: Attention width as a fraction of ``c2``.
        heads: MHSA heads; must divide ``int(c2 * e)``.
        max_rel: MHSA relative table half-size.

    Examples:
        >>> m = BoT(64, 64).eval()
        >>> x = torch.randn(1, 64, 8, 8)
        >>> torch.equal(m(x), x)
        True
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, heads: int = 4, max_rel: int = 32):
        super().__init__()
        _check_int("BoT", "n", n, 1)
        c_ = _hidden("BoT", c2, e)
        check_heads(f"BoT(c2={c2}, e={e})", c_, num_heads=heads)
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.m = nn.Sequential(
            *(BoTBottleneck(c2, c2, 1, e, heads, max_rel, out_act=False) for _ in range(n)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(self.proj(x))


@register_block(repeats=True, family="bot", role="csp", bench_levels=(5, 4, 3))
class BoT3(AttnCSP):
    """CSP block with ``n`` Bottleneck Transformer blocks (the YOLOv5 community "BoT3", wired correctly).

    ``y = cv3(cat(m(cv1(x)), cv2(x)))`` with ``cv1``, ``cv2``: ``Conv(c1, c_, 1)``, ``cv3``: ``Conv(2 c_, c2, 1)``
    and ``m``: ``n`` x :class:`BoTBottleneck` ``(c_ -> c_)`` with full width (``expansion=1``), identity shortcut and
    no activation after the sum, ``c_ = int(c2 * e)``. Replaces the last backbone CSP block (BoTNet's c5 placement):
    ``[-1, n, BoT3, [c2, e, heads, max_rel]]`` (extras optional).

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of BoT bottlenecks.
        e: Hidden width as a fraction of ``c2``.
        heads: MHSA heads; must divide ``int(c2 * e)`` (YOLOv8n P5: c2 = 256 -> 128 channels -> 4 heads of 32).
        max_rel: MHSA relative table half-size.

    Examples:
        >>> m = BoT3(64, 128, n=2)
        >>> m(torch.randn(2, 64, 20, 15)).shape
        torch.Size([2, 128, 20, 15])
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, heads: int = 4, max_rel: int = 32):
        super().__init__()
        _check_int("BoT3", "n", n, 1)
        c_ = _hidden("BoT3", c2, e)
        check_heads(f"BoT3(c2={c2}, e={e})", c_, num_heads=heads)
        m = nn.Sequential(*(BoTBottleneck(c_, c_, 1, 1.0, heads, max_rel, out_act=False) for _ in range(n)))
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
        heads: MHSA heads; must divide ``int(c2 * e)`` (BoT50: 4 heads of 128).
        e: Bottleneck width as a fraction of ``c2`` (the paper's 1 / 4).
        max_rel: MHSA relative table half-size.

    Examples:
        >>> m = BoTStage(64, 128, n=2, s=2)
        >>> m(torch.randn(2, 64, 15, 15)).shape
        torch.Size([2, 128, 8, 8])
    """

    def __init__(self, c1: int, c2: int, n: int = 3, s: int = 2, heads: int = 4, e: float = 0.25, max_rel: int = 32):
        super().__init__()
        _check_int("BoTStage", "n", n, 1)
        if s not in (1, 2):
            raise ValueError(f"BoTStage: s={s!r} must be 1 or 2")
        c_ = _hidden("BoTStage", c2, e)
        check_heads(f"BoTStage(c2={c2}, e={e})", c_, num_heads=heads)
        self.m = nn.Sequential(
            *(BoTBottleneck(c1 if i == 0 else c2, c2, s if i == 0 else 1, e, heads, max_rel) for i in range(n))
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
        _check_int("Classifier", "c2", c2, 0, " (0: no hidden convolution)")
        _check_int("Classifier", "nc", nc, 1)
        self.conv = Conv(c1, c2, 1) if c2 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(p=0.0, inplace=True)
        self.linear = nn.Linear(c2 or c1, nc)
