"""The attention core every block family shares: one switch, the SDPA paths, one chunked kernel, one export test.

A layer's forward reads like timm's ``Attention2d``: projections, ``bias = self.rel_pos(q, (H, W), key_points)``,
``out = attend(q, k, v, bias, self.attn_impl)``. What is shared lives here, and the relative-position biases the
families add to the logits live in :mod:`yolo_attn.nn.rel_pos` (as timm keeps ``pos_embed_rel`` apart from its
attention), so that a family file holds its paper's idea and nothing else:

- **One switch**: every attention layer is an :class:`AttentionLayer` with one attribute, ``attn_impl``, in
  :data:`ATTN_IMPLS`; :func:`set_attn_impl` flips it everywhere in a model (timm: ``fused_attn`` and
  ``set_fused_attn()``). ``"plain"`` is the obviously-correct softmax twin the tests compare against, ``"fused"`` is
  ``F.scaled_dot_product_attention`` with the bias as a mask (or folded into q and k, see below), ``"chunked"`` is the
  memory-saving kernel, ``"auto"`` picks (see :func:`resolve_impl`).
- **One chunked kernel** (:func:`chunked_attention`): the forward runs SDPA's fused CPU kernel one chunk of query
  rows at a time, keeping each row's log-sum-exp; the backward recomputes each chunk's probabilities from it and
  never holds an ``N x M`` tensor (PyTorch's CPU SDPA falls back to its ``N x M`` math kernel whenever a mask needs
  a gradient).
- **One export test**: :func:`is_exporting` is True under ONNX export, TorchScript, ``torch.export``,
  ``torch.compile`` and FX tracing; every layer then takes the plain-op path (no Python loop over shapes, no custom
  autograd function), so dynamic height and width stay symbolic.

The chunked kernel's backward, in one place. With logits ``S = q k^T + bias`` (q pre-scaled), ``P = softmax(S)``
row-wise and ``O = P v``, the softmax Jacobian gives (FlashAttention, Dao et al. 2022, Alg. 4; written here from the
math)::

    dV = P^T dO          dP = dO V^T          dS = P * (dP - rowsum(dO * O))
    dQ = dS K            dK = dS^T Q          d(bias) = dS, reduced into the bias's own factors

Each chunk rebuilds its rows of ``P = exp(S - lse)`` from the forward's log-sum-exp (or a softmax where the fused
kernel gave none) and hands its rows of ``dS`` to the bias module, which reduces them straight into its factors
(BoTNet: sums over key columns and rows; CoAtNet: sums over equal offsets; DAT: autograd through its bilinear read).

Precision policy (the same for every path): queries are scaled before the position logits are added; in the plain
and chunked paths logits, bias and softmax run in fp32 for half inputs (fp64 stays fp64) and the output is cast back
to the input dtype; the fused path hands SDPA the bias in the query dtype (its kernels accumulate in fp32).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from yolo_attn.nn.common import check_choice, compute_dtype, no_autocast

# Defined here until 0.2.0: checkpoints pickled then name these classes by this module, so it keeps binding them (and
# ``from yolo_attn.nn.attention import BoTRelPos`` keeps working). New code imports them from yolo_attn.nn.rel_pos.
from yolo_attn.nn.rel_pos import (  # noqa: F401
    BiasChunks,
    BoTRelPos,
    CoAtRelPos,
    DATRelPos,
    RelBias,
    RelPosBias,
    cell_centres,
    rel_index,
)

#: The layers that moved to :mod:`yolo_attn.nn.rel_pos` in 0.2.0, by the path checkpoints pickled before name them.
LEGACY_PATHS = {f"{__name__}.{c.__name__}": c for c in (BoTRelPos, CoAtRelPos, DATRelPos)}

__all__ = [
    "ATTN_IMPLS",
    "AttentionLayer",
    "set_attn_impl",
    "check_impl",
    "resolve_impl",
    "is_exporting",
    "attend",
    "attention_plain",
    "chunked_attention",
    "chunk_len",
]

#: Values of ``attn_impl``: ``"auto"`` (see :func:`resolve_impl`), ``"fused"`` (SDPA), ``"chunked"`` (the
#: memory-saving kernel) and ``"plain"`` (explicit logits and softmax, the twin the tests compare against).
ATTN_IMPLS = ("auto", "fused", "chunked", "plain")

#: Elements of one chunk's logits in the chunked kernel; ``None``: the default of :func:`chunk_len`.
#: Tests set it small to run many chunks.
CHUNK_ELEMS: int | None = None

#: ``"auto"`` chunks (on CPU) only above this many logits, ``B x heads x N x M`` (2^23: 32 MB in fp32). Measured on
#: CPU, fwd+bwd: below it (every block at P5 of a 640 input, DAT at P4 too) one fused call beats the chunk loop.
AUTO_CHUNK_ELEMS = 1 << 23

#: Lowest ONNX opset torch exports ``scaled_dot_product_attention`` at; lower opsets get the plain twin.
SDPA_MIN_OPSET = 14

#: Widest head dimension of CUDA's flash kernels: a low-rank bias is folded into q and k only below it.
KEYAUG_MAX_DIM = 256


# ------------------------------------------------------------------------------------------------- the one switch
def is_exporting() -> bool:
    """True while the model is being exported or compiled: blocks then take their export-friendly path.

    Covers TorchScript-based ONNX export (``torch.onnx.is_in_onnx_export``), TorchScript tracing and scripting,
    ``torch.export`` (``torch.compiler.is_exporting``; under it ``jit.is_tracing`` and ``onnx.is_in_onnx_export``
    are both False), ``torch.compile`` / dynamo (``torch.compiler.is_compiling``) and FX symbolic tracing. The
    export-friendly path has no Python loop over shapes and no custom autograd function, so dynamic sizes stay
    symbolic.

    Examples:
        >>> is_exporting()
        False
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    for name in ("is_exporting", "is_compiling"):
        fn = getattr(compiler, name, None)
        if fn is not None and fn():
            return True
    fx = getattr(torch.fx, "_symbolic_trace", None)
    fx_tracing = getattr(fx, "is_fx_symbolic_tracing", None) or getattr(fx, "is_fx_tracing", None)
    return bool(fx_tracing is not None and fx_tracing())


def _onnx_export_opset() -> int | None:
    """Opset of a TorchScript-based ``torch.onnx.export`` in progress, ``None`` when not exporting that way."""
    if not torch.onnx.is_in_onnx_export():
        return None
    for name in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):  # torch >= 2.6, older
        try:
            g = importlib.import_module(name).GLOBALS
        except (ImportError, AttributeError):
            continue
        return g.export_onnx_opset_version if getattr(g, "in_onnx_export", True) else None
    return None


def check_impl(block: str, impl: str) -> str:
    """``impl`` if it is one of :data:`ATTN_IMPLS`, else a ValueError naming ``block``."""
    return check_choice(block, "attn_impl", impl, ATTN_IMPLS)


def resolve_impl(
    impl: str, device: torch.device | str = "cpu", has_bias: bool = True, logits: int | None = None
) -> str:
    """The implementation :func:`attend` runs for ``impl`` (``"auto"`` resolved).

    ``"plain"`` always runs the twin. While :func:`is_exporting`, everything else runs ``"fused"`` with a dense bias
    (``"plain"`` in an ONNX export below opset 14, which has no ``scaled_dot_product_attention``).
    ``"auto"`` runs ``"chunked"`` on CPU when there is a position bias and the ``B x heads x N x M`` logits exceed
    :data:`AUTO_CHUNK_ELEMS` (``logits``; None counts as large): PyTorch's fused CPU kernel takes no gradient for a
    mask and falls back to holding several such tensors, while below that size one fused call costs less than the
    chunk loop. Elsewhere ``"auto"`` runs ``"fused"`` (CUDA's kernels take the bias and its gradient).

    Examples:
        >>> resolve_impl("auto", "cpu"), resolve_impl("auto", "cuda"), resolve_impl("auto", "cpu", logits=1000)
        ('chunked', 'fused', 'fused')
    """
    check_impl("attention", impl)
    if impl == "plain":
        return "plain"
    if is_exporting():  # ONNX has SDPA's pattern (Attention folding) only from opset 14: below, the plain twin
        opset = _onnx_export_opset()
        return "plain" if opset is not None and opset < SDPA_MIN_OPSET else "fused"
    if impl == "auto":
        large = logits is None or logits > AUTO_CHUNK_ELEMS
        return "chunked" if has_bias and large and torch.device(device).type == "cpu" else "fused"
    return impl


# Pickles of yolo_attn 0.1.0 before commit a8b5350 name their implementation differently: MHSA had ``path``,
# DAttention and CoAtAttention ``fused``.
_LEGACY_PATH = {"auto": "auto", "chunked": "chunked", "keyaug": "fused", "bias": "fused", "reference": "plain"}


class AttentionLayer(nn.Module):
    """Base class of every attention layer: the ``attn_impl`` switch and the upgrade of pickles made before it.

    ``attn_impl`` is a class-level default too, so an object unpickled from a checkpoint that predates the switch
    has it. Subclasses migrate their own older state in :meth:`_upgrade_state`, which runs on unpickling.
    """

    attn_impl: str = "auto"

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "path" in self.__dict__:  # MHSA before the switch
            self.attn_impl = _LEGACY_PATH.get(self.__dict__.pop("path"), "auto")
        if "fused" in self.__dict__:  # DAttention / CoAtAttention before the switch
            self.attn_impl = "auto" if self.__dict__.pop("fused") else "plain"
        self.__dict__.pop("chunk_elems", None)  # CoAtAttention's private chunk size: one policy now (chunk_len)
        self._upgrade_state()

    def _upgrade_state(self) -> None:
        """Bring a layer unpickled from an older version to the current layout (position tables -> ``rel_pos``)."""


def set_attn_impl(model: nn.Module, impl: str) -> nn.Module:
    """Set ``attn_impl`` on every attention layer inside ``model`` (CSP blocks' inner layers included).

    Examples:
        >>> from yolo_attn.nn import CoAt3
        >>> m = set_attn_impl(CoAt3(32, 64, 1, dim_head=16), "plain")
        >>> {a.attn_impl for a in m.modules() if isinstance(a, AttentionLayer)}
        {'plain'}
    """
    check_impl("set_attn_impl", impl)
    for m in model.modules():
        if isinstance(m, AttentionLayer):
            m.attn_impl = impl
    return model


# ----------------------------------------------------------------------------------------------------- attention
def attention_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None):
    """The twin: ``softmax(q k^T + bias) v`` written out (q pre-scaled), in fp32 for half inputs.

    Args:
        q: Scaled queries (B, h, N, d).
        k: Keys (B, h, M, d).
        v: Values (B, h, M, dv).
        bias: Additive logits broadcastable to (B, h, N, M), or None.

    Examples:
        >>> q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
        >>> torch.allclose(attention_plain(q, k, v), F.scaled_dot_product_attention(q, k, v, scale=1.0), atol=1e-6)
        True
    """
    ct = compute_dtype(q.dtype)
    with no_autocast(q.device.type):
        sim = q.to(ct) @ k.to(ct).transpose(-2, -1)  # B, h, N, M
        if bias is not None:
            sim = sim + bias.to(ct)
        return (sim.softmax(dim=-1) @ v.to(ct)).to(q.dtype)  # B, h, N, dv


_SDPA_BIAS_BACKENDS = None  # set lazily


def _sdpa_bias_backends():
    """CUDA kernels to use with an additive bias: efficient, flash, math (cuDNN has had bias bugs at our lengths)."""
    global _SDPA_BIAS_BACKENDS
    if _SDPA_BIAS_BACKENDS is None:
        from torch.nn.attention import SDPBackend

        _SDPA_BIAS_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    return _SDPA_BIAS_BACKENDS


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SDPA with pre-scaled q; the bias in q's dtype (the efficient kernel requires it)."""
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    bias = bias.to(q.dtype)
    ctx = contextlib.nullcontext()
    if q.is_cuda and not is_exporting():
        from torch.nn.attention import sdpa_kernel

        ctx = sdpa_kernel(_sdpa_bias_backends())
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


def _sdpa_lowrank(q, k, v, u, w) -> torch.Tensor:
    """SDPA over augmented vectors, ``[q | U] . [k | V] = q . k + bias``: no mask, no N x M tensor ("key-augmented")."""
    d, r = q.shape[-1], u.shape[-1]
    qa = torch.cat([q, u.to(q.dtype)], dim=-1)  # B, h, N, d + r
    ka = torch.cat([k, w.to(k.dtype).expand(*k.shape[:-1], r)], dim=-1)  # B, h, M, d + r
    pad = -(d + r) % 8  # aligned head dim for the fused kernels; zero columns change no dot product
    qa, ka = F.pad(qa, (0, pad)), F.pad(ka, (0, pad))
    va = F.pad(v, (0, qa.shape[-1] - v.shape[-1]))  # flash kernels want v as wide as q; the extra columns are dropped
    return F.scaled_dot_product_attention(qa, ka, va, scale=1.0)[..., : v.shape[-1]]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: RelBias | None = None, impl: str = "auto"
) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` through the implementation ``impl`` selects (see :func:`resolve_impl`).

    ``"fused"`` on CUDA folds a low-rank bias (BoTNet's) into q and k while the widened head fits the flash kernels
    (``d + r <= 256``): one SDPA call without a mask and without an N x M tensor. Otherwise, and while exporting, it
    passes the dense bias as SDPA's mask.

    Args:
        q: Queries (B, h, N, d), already multiplied by the logit scale.
        k: Keys (B, h, M, d).
        v: Values (B, h, M, dv).
        bias: The position bias from a :class:`RelPosBias` module, or None.
        impl: One of :data:`ATTN_IMPLS`.

    Examples:
        >>> from yolo_attn.nn.rel_pos import CoAtRelPos
        >>> q, k, v = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
        >>> bias = CoAtRelPos(num_heads=2, max_rel=2)(q, (3, 4))
        >>> out = {i: attend(q, k, v, bias, i) for i in ATTN_IMPLS}
        >>> all(torch.allclose(o, out["plain"], atol=1e-5) for o in out.values())
        True
    """
    logits = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] if not is_exporting() else None
    impl = resolve_impl(impl, q.device, bias is not None, logits)
    if impl == "plain":
        return attention_plain(q, k, v, None if bias is None else bias.dense())
    if impl == "chunked":
        return chunked_attention(q, k, v, bias)
    if bias is None:
        return _sdpa(q, k, v, None)
    lowrank = bias.lowrank() if q.is_cuda and not is_exporting() else None
    if lowrank is not None and q.shape[-1] + lowrank[0].shape[-1] <= KEYAUG_MAX_DIM:
        return _sdpa_lowrank(q, k, v, *lowrank)
    return _sdpa(q, k, v, bias.dense())


# ------------------------------------------------------------------------------------------- the chunked kernel
def chunk_len(n: int, row_elems: int, quantum: int = 1, budget: int | None = None) -> int:
    """Queries per chunk of the chunked kernel: one chunk's logits hold about ``budget`` elements.

    ``row_elems`` is what one query costs, ``B * heads * M``; ``quantum`` the granularity the bias needs (1, or the
    map width ``W`` for a bias computed per image row); at least one quantum, at most ``n``. The default budget is
    :data:`CHUNK_ELEMS` when set, else 2^21 elements (8 MB of fp32 logits: the chunk and its probabilities stay
    close to the cache; larger chunks measured slower on CPU, and the total work does not depend on it).

    Examples:
        >>> chunk_len(6400, 2 * 4 * 6400)  # MHSA at P3 of a 640 input, batch 2, 4 heads: 40 query rows a chunk
        40
        >>> chunk_len(6400, 2 * 4 * 6400, quantum=80)  # a bias that needs whole image rows of 80 pixels
        80
    """
    budget = budget or CHUNK_ELEMS or 1 << 21
    per = budget // max(row_elems, 1) // quantum * quantum
    return max(quantum, min(n, per))


def _flash_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """``(out, logsumexp)`` of PyTorch's CPU flash kernel, or None where it is unavailable (SDPA is used instead).

    The public SDPA runs this very kernel for these inputs but drops the log-sum-exp, which lets the backward rebuild
    the probabilities with one ``exp`` instead of a softmax.
    """
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or q.device.type != "cpu":
        return None
    try:
        return op(q, k, v, 0.0, False, attn_mask=mask, scale=1.0)
    except (RuntimeError, TypeError):  # a dtype the kernel lacks, or a changed private signature
        return None


class _ChunkedAttention(torch.autograd.Function):
    """``softmax(q k^T + bias) v`` holding one chunk of query rows' logits at a time, in both passes.

    Inputs: q, k, v, the bias module (or None), the query grid size, then the bias factors (tensors, so that autograd
    hands their gradients on). See the module docstring for the backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, pos, size, *factors):
        ct = compute_dtype(q.dtype)
        with no_autocast(q.device.type):
            # the private kernel assumes unit stride on the last dim (SDPA checks that, then falls back to math)
            qc, kc, vc = (t.to(ct).contiguous() for t in (q, k, v))
            fc = tuple(f.to(ct) if f.is_floating_point() else f for f in factors)
            plan = None if pos is None else pos.chunks(fc, size, [False] * len(fc))
            b, h, n, _ = qc.shape
            step = chunk_len(n, b * h * kc.shape[-2], 1 if plan is None else plan.quantum)
            out = qc.new_empty(b, h, n, vc.shape[-1])
            lse = qc.new_empty(b, h, n)
            for s in range(0, n, step):
                e = min(n, s + step)
                mask = None if plan is None else plan.mask(slice(s, e))
                res = _flash_cpu(qc[:, :, s:e], kc, vc, mask) if lse is not None else None
                if res is None:
                    lse = None
                    out[:, :, s:e] = F.scaled_dot_product_attention(qc[:, :, s:e], kc, vc, attn_mask=mask, scale=1.0)
                else:
                    out[:, :, s:e], lse[:, :, s:e] = res
        ctx.pos, ctx.size, ctx.dtypes = pos, size, (q.dtype, k.dtype, v.dtype)
        ctx.save_for_backward(qc, kc, vc, out, lse, *fc)
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        qc, kc, vc, out, lse, *fc = ctx.saved_tensors
        pos = ctx.pos
        with no_autocast(qc.device.type):
            plan = None if pos is None else pos.chunks(fc, ctx.size, ctx.needs_input_grad[5:])
            go = grad_out.to(qc.dtype)
            delta = (go * out).sum(-1)  # B, h, N: rowsum(dO * O) of the softmax backward
            b, h, n, _ = qc.shape
            m = kc.shape[-2]
            dq, dk, dv = torch.empty_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
            kt, vt = kc.transpose(-1, -2), vc.transpose(-1, -2)
            step = chunk_len(n, b * h * m, 1 if plan is None else plan.quantum)
            s_buf = qc.new_empty(b * h * step * m)  # reused by every chunk (no page faults per chunk)
            p_buf = qc.new_empty(b * h * step * m)
            for s in range(0, n, step):
                e = min(n, s + step)
                qs, gs = qc[:, :, s:e], go[:, :, s:e]
                c = e - s
                p = torch.matmul(qs, kt, out=s_buf[: b * h * c * m].view(b, h, c, m))  # logits, then P in place
                shift = None if lse is None else lse[:, :, s:e]
                if plan is not None:
                    plan.add_(p, slice(s, e), shift)
                elif shift is not None:
                    p -= shift[..., None]
                if lse is not None:  # P = exp(S - lse)
                    p.exp_()
                else:
                    p.sub_(p.amax(-1, keepdim=True)).exp_()
                    p.mul_(p.sum(-1, keepdim=True).reciprocal_())
                dv += p.transpose(-1, -2) @ gs
                ds = torch.matmul(gs, vt, out=p_buf[: b * h * c * m].view(b, h, c, m))  # dP, then dS in place
                ds.sub_(delta[:, :, s:e, None]).mul_(p)  # dS = P * (dP - delta)
                dq[:, :, s:e] = ds @ kc
                dk += ds.transpose(-1, -2) @ qs
                if plan is not None:
                    plan.reduce_(ds, slice(s, e))
            fgrads = [] if plan is None else plan.grads()
        dtypes = ctx.dtypes
        return (
            dq.to(dtypes[0]),
            dk.to(dtypes[1]),
            dv.to(dtypes[2]),
            None,
            None,
            *(None if g is None else g.to(f.dtype) for g, f in zip(fgrads, fc)),
        )


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: RelBias | None = None) -> torch.Tensor:
    """The memory-saving kernel: exact attention that never holds a ``B x h x N x M`` tensor, in either pass.

    Chunks are bands of queries sized by :func:`chunk_len` (whole image rows where the bias needs them). q must be
    pre-scaled; half inputs are computed in fp32 and the output cast back. Not for export (a Python loop over the
    size): :func:`attend` never calls it while :func:`is_exporting`.

    Examples:
        >>> from yolo_attn.nn.rel_pos import CoAtRelPos
        >>> q, k, v = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
        >>> bias = CoAtRelPos(num_heads=2, max_rel=2)(q, (3, 4))
        >>> torch.allclose(chunked_attention(q, k, v, bias), attention_plain(q, k, v, bias.dense()), atol=1e-5)
        True
    """
    if bias is None:
        return _ChunkedAttention.apply(q, k, v, None, None)
    return _ChunkedAttention.apply(q, k, v, bias.pos, bias.size, *bias.factors)
