"""The attention core every block family shares: position biases, one chunked kernel, one switch, one export test.

A layer's forward reads like timm's ``Attention2d``: projections, ``bias = self.rel_pos(q, (H, W), key_points)``,
``out = attend(q, k, v, bias, self.attn_impl)``. What is shared lives here so that a family file holds its paper's
idea and nothing else:

- **Relative-position biases** are small modules with one interface (timm's ``rel_pos_cls`` pattern):
  :class:`BoTRelPos` (BoTNet: query-dependent row and column embeddings, ``q_i . r_h[dy] + q_i . r_w[dx]``),
  :class:`CoAtRelPos` (CoAtNet Eq. 3: a per-head table ``w[h, dy, dx]``) and :class:`DATRelPos` (DAT: a continuous
  bias read bilinearly at deformed key points, 2-D table or axial). Calling one returns a :class:`RelBias`, the bias
  in factored form; :meth:`RelBias.dense` builds the ``(B, heads, N, M)`` logits, and the chunked kernel asks the
  bias module for one chunk of query rows at a time. Every table is indexed by clipped offsets built from the live
  ``H`` and ``W``: nothing is sized at construction.
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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import trunc_normal_
from torch import nn
from torch.autograd.function import once_differentiable

from yolo_attn.nn.common import check_choice
from yolo_attn.nn.sampling import bilinear_sample

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
    "RelBias",
    "RelPosBias",
    "BiasChunks",
    "BoTRelPos",
    "CoAtRelPos",
    "DATRelPos",
    "rel_index",
    "cell_centres",
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


# Old pickles name their implementation differently: MHSA had ``path``, DAttention and CoAtAttention ``fused``.
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


# ------------------------------------------------------------------------------------------------ shared helpers
def rel_index(n: int, max_rel: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Clipped key-minus-query offsets along one axis, as table indices.

    Returns a ``(n, n)`` long tensor ``idx[i, j] = clamp(j - i, -max_rel, max_rel) + max_rel``, an index into a table
    of ``2 * max_rel + 1`` entries. Exact for ``n <= max_rel + 1``; longer distances share the edge bucket. Built from
    ``arange`` on every call (O(n^2) ints, never O(N^2)), so it follows the input size and exports with dynamic shapes.

    Examples:
        >>> rel_index(3, 1)
        tensor([[1, 2, 2],
                [0, 1, 2],
                [0, 0, 1]])
    """
    pos = torch.arange(n, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-max_rel, max_rel) + max_rel


def cell_centres(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised centres of ``n`` cells along an axis (``align_corners=False``) and ``n`` as a tensor.

    The count comes from a tensor (not Python arithmetic on the shape), so a dynamic ONNX export computes it at run
    time instead of freezing the export size into a constant.

    Examples:
        >>> cell_centres(4, torch.zeros(1))[0]
        tensor([-0.7500, -0.2500,  0.2500,  0.7500])
    """
    i = torch.arange(n, device=like.device, dtype=torch.float32).to(like.dtype)  # like: fp32 (fp64 in tests)
    n_t = torch.ones_like(i).sum()
    return (2 * i + 1) / n_t - 1, n_t


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16 / bf16 -> fp32 for logits, bias and softmax; fp32 and fp64 stay."""
    return torch.promote_types(dtype, torch.float32)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Leave autocast for a region that picks its own precision; a no-op when autocast is off (nothing to trace)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------- position-bias modules
class RelBias:
    """One call's relative-position bias in factored form: what :class:`RelPosBias` modules return.

    Attributes:
        pos: The module that made it (it knows how to expand and reduce its factors).
        factors: The tensors the bias is a function of; autograd reaches the module's parameters through them.
        size: ``(H, W)`` of the query grid; queries are the row-major pixels, ``N = H * W``.
    """

    __slots__ = ("pos", "factors", "size")

    def __init__(self, pos: RelPosBias, factors: tuple[torch.Tensor, ...], size: tuple[int, int]):
        self.pos, self.factors, self.size = pos, tuple(factors), size

    def dense(self) -> torch.Tensor:
        """The logits to add, ``(B or 1, heads, N, M)``, differentiable in the factors."""
        return self.pos.expand(self.factors, self.size)

    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(U, V)`` with ``bias[i, j] = U_i . V_j`` when the bias has that form (BoTNet), else ``None``."""
        return self.pos.lowrank(self.factors, self.size)


class RelPosBias(nn.Module):
    """Interface of the relative-position bias modules (timm's ``rel_pos_cls``), and the generic chunk plumbing.

    A subclass defines :meth:`factors` (the tensors the bias is made from for one input) and :meth:`expand` (the bias
    of a band of query rows from them). It may override :meth:`chunks` with a faster way to add a chunk of the bias
    to logits and to reduce that chunk's ``dS`` into its factors, and :meth:`lowrank` when the bias is a product.
    """

    def forward(self, q: torch.Tensor | None, size: tuple[int, int], key_points: torch.Tensor | None = None) -> RelBias:
        """The bias of one call.

        Args:
            q: Scaled queries ``(B, heads, N, d)`` (used by query-dependent biases; may be None for the others).
            size: ``(H, W)`` of the query grid.
            key_points: Key positions ``(B * groups, Hk, Wk, 2)``, normalised ``(x, y)`` in [-1, 1], for biases read
                at sampled keys (DAT); None when the keys are the query pixels.
        """
        return RelBias(self, self.factors(q, size, key_points), size)

    def factors(
        self, q: torch.Tensor | None, size: tuple[int, int], key_points: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def expand(self, factors: Sequence[torch.Tensor], size: tuple[int, int], rows: slice | None = None) -> torch.Tensor:
        """Bias of the queries in image rows ``rows`` (all rows: None), ``(B or 1, heads, len(rows) * W, M)``."""
        raise NotImplementedError

    def lowrank(self, factors: Sequence[torch.Tensor], size: tuple[int, int]):
        """``(U, V)`` with ``bias = U V^T`` (U: (B, heads, N, r), V broadcastable to (B, heads, M, r)), or None."""
        return None

    def chunks(self, factors: Sequence[torch.Tensor], size: tuple[int, int], needs_grad: Sequence[bool]) -> BiasChunks:
        """The per-call helper the chunked kernel uses (generic: expand, and autograd through it for the backward)."""
        return BiasChunks(self, factors, size, needs_grad)


class BiasChunks:
    """A bias seen one chunk of queries at a time, for the chunked kernel (the generic version, by autograd).

    Chunks are query slices ``sl`` whose bounds are multiples of :attr:`quantum` (the generic version expands whole
    image rows: ``quantum = W``). The kernel calls :meth:`mask` in the forward; in the backward, for each chunk,
    :meth:`add_` (the chunk's bias into the recomputed logits) then :meth:`reduce_` (that chunk's ``dS`` into the
    factor gradients), and finally :meth:`grads`. Factors arrive in the kernel's compute dtype.
    """

    def __init__(
        self, pos: RelPosBias, factors: Sequence[torch.Tensor], size: tuple[int, int], needs_grad: Sequence[bool]
    ):
        self.pos, self.factors, self.size = pos, tuple(factors), size
        self.quantum = size[1]
        self.needs_grad = [bool(n) and f.is_floating_point() for f, n in zip(self.factors, needs_grad)]
        # contiguous whatever the factor's layout, so that chunk helpers may write through flattened views
        self._grads = [
            torch.zeros_like(f, memory_format=torch.contiguous_format) if n else None
            for f, n in zip(self.factors, self.needs_grad)
        ]
        self._graph: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def _rows(self, sl: slice) -> slice:
        return slice(sl.start // self.size[1], sl.stop // self.size[1])

    def mask(self, sl: slice) -> torch.Tensor:
        """The chunk's bias as an SDPA mask ``(B or 1, heads, c, M)``."""
        with torch.no_grad():
            return self.pos.expand(self.factors, self.size, self._rows(sl))

    def add_(self, logits: torch.Tensor, sl: slice, shift: torch.Tensor | None = None) -> None:
        """``logits += bias[sl] - shift[..., None]`` in place (``shift``: each query's log-sum-exp, or None)."""
        if any(self.needs_grad):
            with torch.enable_grad():  # the kernel's backward runs without grad; this chunk's read is differentiated
                leaves = [f.detach().requires_grad_(n) for f, n in zip(self.factors, self.needs_grad)]
                bias = self.pos.expand(leaves, self.size, self._rows(sl))
            self._graph = (leaves, bias)
            logits += bias.detach()
        else:
            logits += self.mask(sl)
        if shift is not None:
            logits -= shift[..., None]

    def reduce_(self, ds: torch.Tensor, sl: slice) -> None:
        """Accumulate the chunk's logit gradient ``ds`` into the factor gradients (after :meth:`add_` of ``sl``)."""
        if self._graph is None:
            return
        leaves, bias = self._graph
        self._graph = None
        wanted = [f for f in leaves if f.requires_grad]
        got = torch.autograd.grad(bias, wanted, ds.sum_to_size(bias.shape))
        for acc, g in zip((a for a in self._grads if a is not None), got):
            acc += g

    def grads(self) -> list[torch.Tensor | None]:
        """Gradient of each factor (None where none was needed)."""
        return self._grads


class BoTRelPos(RelPosBias):
    """BoTNet's relative position logits: ``logit[i, j] += q_i . r_h[c(y_j - y_i)] + q_i . r_w[c(x_j - x_i)]``.

    One table of ``2 * max_rel + 1`` embeddings per axis, indexed by the clipped key-minus-query offset ``c(.)``
    (exact up to ``max_rel + 1`` rows / columns, edge rows shared beyond); q is the scaled query, as in the authors'
    gist. Factors: ``a = q . r_h`` ``(B, h, N, H)`` against every key row and ``b = q . r_w`` ``(B, h, N, W)``
    against every key column, O(N (H + W) d), kept as ``(B, h, H, W, H)`` and ``(B, h, H, W, W)`` (flattening the
    second, a transposed product, would put a stride guard into a dynamic ``torch.export``); the bias is
    ``a[i, y_j] + b[i, x_j]``, which is also the product
    ``[a | b] . [onehot(y_j) | onehot(x_j)]`` (see :meth:`lowrank`). Tables start N(0, dim_head ** -0.5) (what the
    gist intends). "bias" is in the parameter names so that Ultralytics' optimizer keeps them out of weight decay,
    as position tables conventionally are.

    Args:
        dim_head: Channels per head.
        max_rel: Offsets are clipped to ``[-max_rel, max_rel]``.

    Examples:
        >>> pos = BoTRelPos(dim_head=8, max_rel=4)
        >>> pos(torch.randn(2, 3, 5 * 7, 8), (5, 7)).dense().shape
        torch.Size([2, 3, 35, 35])
    """

    def __init__(self, dim_head: int, max_rel: int = 32):
        super().__init__()
        self.max_rel = max_rel
        self.bias_h = nn.Parameter(torch.empty(2 * max_rel + 1, dim_head))
        self.bias_w = nn.Parameter(torch.empty(2 * max_rel + 1, dim_head))
        nn.init.normal_(self.bias_h, std=dim_head**-0.5)
        nn.init.normal_(self.bias_w, std=dim_head**-0.5)

    def factors(self, q, size, key_points=None):
        height, width = size
        ct = _compute_dtype(q.dtype)
        with _no_autocast(q.device.type):
            q = q.to(ct).unflatten(2, (height, width))  # B, h, H, W, d
            r_h = self.bias_h[rel_index(height, self.max_rel, q.device)].to(ct)  # H (query), H (key), d
            r_w = self.bias_w[rel_index(width, self.max_rel, q.device)].to(ct)  # W (query), W (key), d
            a = q @ r_h.transpose(1, 2)  # (B, h, H, W, d) @ (H, d, H) -> B, h, H, W, H
            b = (q.transpose(2, 3) @ r_w.transpose(1, 2)).transpose(2, 3)  # (B, h, W, H, d) @ (W, d, W) -> .., W
        return a, b  # B, h, H, W, H and B, h, H, W, W

    def expand(self, factors, size, rows=None):
        a, b = factors
        if rows is not None:
            a, b = a[:, :, rows], b[:, :, rows]
        return (a[..., :, None] + b[..., None, :]).flatten(2, 3).flatten(-2)  # B, h, c, N: key j = (y_j, x_j)

    def lowrank(self, factors, size):
        a, b = (t.flatten(2, 3) for t in factors)  # B, h, N, H and B, h, N, W
        height, width = size
        eye_y = torch.eye(height, dtype=a.dtype, device=a.device)
        eye_x = torch.eye(width, dtype=a.dtype, device=a.device)
        one_y = eye_y[:, None, :].expand(height, width, height).flatten(0, 1)  # N, H: row of key j
        one_x = eye_x[None, :, :].expand(height, width, width).flatten(0, 1)  # N, W: column of key j
        return torch.cat([a, b], dim=-1), torch.cat([one_y, one_x], dim=-1)

    def chunks(self, factors, size, needs_grad):
        return _BoTChunks(self, factors, size, needs_grad)


class _BoTChunks(BiasChunks):
    """BoTNet's bias a chunk at a time (any query slice): two broadcasts, dS summed over key columns / rows."""

    def __init__(self, pos, factors, size, needs_grad):
        super().__init__(pos, factors, size, needs_grad)
        self.quantum = 1
        self.flat = [t.flatten(2, 3) for t in self.factors]  # B, h, N, H and B, h, N, W (b: a copy)

    def mask(self, sl):
        a, b = (t[:, :, sl] for t in self.flat)
        return (a[..., :, None] + b[..., None, :]).flatten(-2)

    def add_(self, logits, sl, shift=None):
        a, b = (t[:, :, sl] for t in self.flat)
        grid = logits.unflatten(-1, self.size)  # B, h, c, H, W: key j = (y_j, x_j)
        grid += b[..., None, :]
        a = a if shift is None else a - shift[..., None]  # the shift rides on the (smaller) row term
        grid += a[..., None]

    def reduce_(self, ds, sl):
        grid = ds.unflatten(-1, self.size)
        ga, gb = (None if g is None else g.flatten(2, 3) for g in self._grads)  # views: the grads are contiguous
        if ga is not None:
            ga[:, :, sl] = grid.sum(-1)  # a[i, y] was added to the logits of every key in row y
        if gb is not None:
            gb[:, :, sl] = grid.sum(-2)  # b[i, x] to every key in column x


def _gather_2d(table: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """``bias[h, qy, qx, ky, kx] = table[h, iy[qy, ky], ix[qx, kx]]`` as a (h, Hq, Wq, Hk, Wk) view.

    Columns are gathered on the small table first and rows second: two plain gathers of contiguous runs (no N^2
    integer index, and about twice as fast on CPU as one two-index gather).
    """
    tx = table[:, :, ix].transpose(1, 2)  # h, Wq, 2R+1, Wk
    return tx[:, :, iy].permute(0, 2, 1, 3, 4)  # h, Hq, Wq, Hk, Wk


class CoAtRelPos(RelPosBias):
    """CoAtNet's relative bias (Eq. 3): ``logit[i, j] += w[head, c(y_j - y_i), c(x_j - x_i)]``.

    One ``(2R + 1)^2`` table per head, indexed by clipped key-minus-query offsets built from the live size (exact up
    to ``R + 1`` tokens a side). Initialised with a truncated normal, std 0.02 (timm). The factor is the table
    itself; the bias has no batch dimension.

    Args:
        num_heads: Attention heads.
        max_rel: Offsets are clipped to ``[-max_rel, max_rel]``.

    Examples:
        >>> pos = CoAtRelPos(num_heads=2, max_rel=3)
        >>> pos(None, (4, 6)).dense().shape
        torch.Size([1, 2, 24, 24])
    """

    def __init__(self, num_heads: int, max_rel: int = 32):
        super().__init__()
        self.max_rel = max_rel
        self.bias_table = nn.Parameter(torch.zeros(num_heads, 2 * max_rel + 1, 2 * max_rel + 1))
        trunc_normal_(self.bias_table, std=0.02)

    def factors(self, q, size, key_points=None):
        return (self.bias_table,)

    def expand(self, factors, size, rows=None):
        (table,) = factors
        iy = rel_index(size[0], self.max_rel, table.device)
        ix = rel_index(size[1], self.max_rel, table.device)
        bias = _gather_2d(table, iy if rows is None else iy[rows], ix)  # h, c_y, W, H, W
        return rearrange(bias, "h qy qx ky kx -> 1 h (qy qx) (ky kx)")

    def chunks(self, factors, size, needs_grad):
        return _CoAtChunks(self, factors, size, needs_grad)


class _CoAtChunks(BiasChunks):
    """CoAtNet's bias a chunk of whole image rows at a time, from reused buffers; dS summed over equal offsets.

    Buffers are allocated once per call and reused by every chunk: fresh multi-MB tensors cost page faults on each
    allocation, which on CPU is a good part of the plain path's time.
    """

    def __init__(self, pos, factors, size, needs_grad):
        super().__init__(pos, factors, size, needs_grad)
        (table,) = self.factors
        height, width = size
        self.iy = rel_index(height, pos.max_rel, table.device)
        ix = rel_index(width, pos.max_rel, table.device)
        self.tx = table[:, :, ix].transpose(1, 2).contiguous()  # h, qx, dy, kx
        self.gathered = self.ordered = self.pad = self.acc = None

    def _bias(self, rows: slice) -> torch.Tensor:
        """(h, cy, W, H, W) bias of the image rows ``rows``, a permuted view of a reused buffer."""
        h, width, height = self.tx.shape[0], self.size[1], self.size[0]
        cy = rows.stop - rows.start
        n = h * width * cy * height * width
        if self.gathered is None or self.gathered.numel() < n:
            self.gathered = self.tx.new_empty(n)
        g = self.gathered[:n].view(h, width, cy * height, width)
        torch.index_select(self.tx, 2, self.iy[rows].flatten(), out=g)  # h, qx, (qy, ky), kx
        return g.view(h, width, cy, height, width).transpose(1, 2)  # h, qy, qx, ky, kx

    def mask(self, sl):
        view = self._bias(self._rows(sl))
        if self.ordered is None or self.ordered.numel() < view.numel():
            self.ordered = torch.empty_like(self.gathered)
        out = self.ordered[: view.numel()].view(view.shape).copy_(view)  # SDPA wants the mask contiguous
        return rearrange(out, "h qy qx ky kx -> 1 h (qy qx) (ky kx)")

    def add_(self, logits, sl, shift=None):
        b, h = logits.shape[:2]
        height, width = self.size
        rows = self._rows(sl)
        logits.view(b, h, rows.stop - rows.start, width, height, width).add_(self._bias(rows))
        if shift is not None:
            logits -= shift[..., None]

    def reduce_(self, ds, sl):
        # Table gradient along x without an index tensor: dS summed over the batch goes into a zeroed buffer whose key
        # rows are padded by W-1 zeros on both sides, (h, qy, qx, ky, 3W-2). Read with a qx stride one element longer
        # than stored, position c of row qx is kx = qx + c - (W-1), or a zero pad: summing over qx then gives, for
        # every (qy, ky), the sums over each column offset kx - qx = c - (W-1). Rows of offsets are reduced in grads().
        if not self.needs_grad[0]:
            return
        rows = self._rows(sl)
        b, h = ds.shape[:2]
        height, width = self.size
        cy, pw = rows.stop - rows.start, 3 * width - 2
        if self.pad is None:  # the first chunk is the largest
            self.pad = ds.new_zeros(h, cy, width, height, pw)
            self.acc = ds.new_empty(h, height, height, 2 * width - 1)  # h, qy, ky, kx - qx + W - 1
        rows_max = self.pad.shape[1]
        region = self.pad[:, :cy, :, :, width - 1 : 2 * width - 1]  # h, cy, qx, ky, kx
        torch.sum(ds.view(b, h, cy, width, height, width), dim=0, out=region)
        stride = (rows_max * width * height * pw, width * height * pw, pw, height * pw + 1, 1)
        skew = self.pad.as_strided((h, cy, height, width, 2 * width - 1), stride)  # h, qy, ky, qx, c
        torch.sum(skew, dim=3, out=self.acc[:, rows])

    def grads(self):
        if not self.needs_grad[0] or self.acc is None:
            return self._grads
        acc, max_rel = self.acc, self.pos.max_rel
        height, width = self.size
        t = 2 * max_rel + 1
        # column offsets kx - qx -> clipped table column, then row offsets (qy, ky) -> clipped table row
        dx = torch.arange(-(width - 1), width, device=acc.device).clamp(-max_rel, max_rel) + max_rel
        gx = acc.new_zeros(acc.shape[0], height * height, t).index_add_(2, dx, acc.flatten(1, 2))
        return [acc.new_zeros(acc.shape[0], t, t).index_add_(1, self.iy.flatten(), gx)]


class DATRelPos(RelPosBias):
    """DAT's relative position bias, a function of the key-minus-query displacement in feature pixels.

    Deformed keys sit off the pixel grid, so the table is read bilinearly (``grid_sample`` or its gather twin,
    ``sampler``; fp32). Displacements are
    in pixels (``normalised * size / 2``) and scaled so that +-R pixels land on the table's edges
    (``align_corners=True``); border padding clips longer ones. ``kind="table"`` is the paper's per-head
    ``(2R + 1)^2`` table read at ``N x N_s`` points; ``kind="axial"`` (not in the paper) a row table plus a column
    table, ``a_h(dy) + b_h(dx)``, read at ``(H + W) x N_s`` points. The heads of an offset group share its points.

    Factors: the table(s), the key points in table units ``(B * groups, N_s, 2)`` and the query coordinates in table
    units, ``(H,)`` and ``(W,)``.

    Args:
        num_heads: Attention heads.
        groups: Offset groups (divides ``num_heads``).
        max_rel: Table radius R in feature pixels.
        kind: ``"table"`` or ``"axial"``.

    Examples:
        >>> pos = DATRelPos(num_heads=4, groups=2, max_rel=8)
        >>> keys = torch.rand(2 * 2, 3, 3, 2) * 2 - 1  # B * groups, Hk, Wk, (x, y)
        >>> pos(None, (6, 5), keys).dense().shape
        torch.Size([2, 4, 30, 9])
    """

    #: How the tables are read, one of :data:`~yolo_attn.nn.sampling.SAMPLERS`; the owning ``DAttention`` sets it
    #: (a class-level default, so pickles made before the switch have it).
    sampler: str = "grid_sample"

    def __init__(self, num_heads: int, groups: int = 1, max_rel: int = 32, kind: str = "table"):
        super().__init__()
        check_choice("DATRelPos", "kind", kind, ("table", "axial"))
        self.num_heads, self.groups, self.max_rel, self.kind = num_heads, groups, max_rel, kind
        t = 2 * max_rel + 1
        if kind == "table":
            self.bias_table = nn.Parameter(torch.zeros(num_heads, t, t))
        else:
            self.bias_h = nn.Parameter(torch.zeros(num_heads, t))
            self.bias_w = nn.Parameter(torch.zeros(num_heads, t))
        for p in self.parameters():
            trunc_normal_(p, std=0.01)

    def tables(self) -> tuple[torch.Tensor, ...]:
        return (self.bias_table,) if self.kind == "table" else (self.bias_h, self.bias_w)

    def factors(self, q, size, key_points=None):
        qy, hq = cell_centres(size[0], key_points)
        qx, wq = cell_centres(size[1], key_points)
        to_table = torch.stack((wq, hq)) / (2 * self.max_rel)  # normalised -> table units: x * size / 2 / R
        pts = key_points.flatten(1, 2) * to_table  # B*G, Ns, 2 (scaled first: one op on the small tensors)
        return (*self.tables(), pts, qy * to_table[1], qx * to_table[0])

    def _heads(self, bias: torch.Tensor) -> torch.Tensor:
        """(B*G, h/G, ...) -> (B, heads, ...): head = group * (heads / G) + index in the group."""
        return bias.unflatten(0, (-1, self.groups)).flatten(1, 2)

    def _group_tables(self, table: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(heads, *T) -> (B*G, h/G, *T) in ``like``'s dtype (fp32 even after ``.half()``)."""
        table = table.to(like.dtype).unflatten(0, (self.groups, -1))
        return table.repeat(like.shape[0] // self.groups, *([1] * (table.dim() - 1)))

    def expand(self, factors, size, rows=None):
        if self.kind == "table":
            table, pts, qy, qx = factors
            qy = qy if rows is None else qy[rows]
            qyy = (qy[:, None] + torch.zeros_like(qx)[None, :]).flatten()  # c, row-major like the queries
            qxx = (torch.zeros_like(qy)[:, None] + qx[None, :]).flatten()
            grid = pts[:, None] - torch.stack((qxx, qyy), dim=-1)[:, None]  # B*G, c, Ns, 2
            bias = bilinear_sample(self._group_tables(table, grid), grid, True, self.sampler)  # B*G, h/G, c, Ns
            return self._heads(bias)
        bias_h, bias_w, pts, qy, qx = factors
        qy = qy if rows is None else qy[rows]
        by = self._read_1d(bias_h, pts[:, None, :, 1] - qy[None, :, None])  # B*G, h/G, cy, Ns
        bx = self._read_1d(bias_w, pts[:, None, :, 0] - qx[None, :, None])  # B*G, h/G, W, Ns
        return self._heads((by[:, :, :, None, :] + bx[:, :, None, :, :]).flatten(2, 3))  # B, heads, c, Ns

    def _read_1d(self, table: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Linear read of ``table`` (heads, T) at ``coords`` (B*G, L, Ns), in [-1, 1] table units: (B*G, h/G, L, Ns)."""
        grid = torch.stack((coords, torch.zeros_like(coords)), dim=-1)  # x = table index, y = 0
        table = self._group_tables(table[:, None, :], coords)  # B*G, h/G, 1, T
        return bilinear_sample(table, grid, True, self.sampler)


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
    ct = _compute_dtype(q.dtype)
    with _no_autocast(q.device.type):
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
        ct = _compute_dtype(q.dtype)
        with _no_autocast(q.device.type):
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
        with _no_autocast(qc.device.type):
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
        >>> q, k, v = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
        >>> bias = CoAtRelPos(num_heads=2, max_rel=2)(q, (3, 4))
        >>> torch.allclose(chunked_attention(q, k, v, bias), attention_plain(q, k, v, bias.dense()), atol=1e-5)
        True
    """
    if bias is None:
        return _ChunkedAttention.apply(q, k, v, None, None)
    return _ChunkedAttention.apply(q, k, v, bias.pos, bias.size, *bias.factors)
