"""Relative-position biases of the three families, as small modules with one interface (timm's ``rel_pos_cls``).

Papers: BoTNet (Srinivas et al., "Bottleneck Transformers for Visual Recognition", CVPR 2021, and the authors'
relative-logits gist), CoAtNet (Dai et al., "CoAtNet: Marrying Convolution and Attention for All Data Sizes", NeurIPS
2021, Eq. 3) and DAT (Xia et al., "Vision Transformer with Deformable Attention", CVPR 2022; DAT++ 2023). The split
follows timm (``timm/layers/pos_embed_rel.py``, Apache-2.0), which keeps relative-position biases apart from
attention; the code is written from the papers, and unlike timm's nothing is sized at construction.

- :class:`BoTRelPos` (BoTNet: query-dependent row and column embeddings, ``q_i . r_h[dy] + q_i . r_w[dx]``),
  :class:`CoAtRelPos` (CoAtNet Eq. 3: a per-head table ``w[h, dy, dx]``) and :class:`DATRelPos` (DAT: a continuous
  bias read bilinearly at deformed key points, 2-D table or axial).
- Calling one, ``self.rel_pos(q, (H, W), key_points)``, returns a :class:`RelBias`, the bias in factored form;
  :meth:`RelBias.dense` builds the ``(B, heads, N, M)`` logits and :meth:`RelBias.lowrank` gives ``(U, V)`` where the
  bias is a product (BoTNet's). The chunked kernel of :mod:`yolo_attn.nn.attention` asks the module for a
  :class:`BiasChunks`, one band of query rows at a time, forward (the chunk's mask) and backward (that chunk's ``dS``
  reduced straight into the factors: BoTNet sums over key columns and rows, CoAtNet over equal offsets, DAT by
  autograd through its bilinear read).
- Every table is indexed by clipped offsets built from the live ``H`` and ``W`` (:func:`rel_index`,
  :func:`cell_centres`): the 256x256 stride probe, 640 training, rect validation and any export size use the same
  weights.

These classes were defined in :mod:`yolo_attn.nn.attention` until 0.2.0; checkpoints pickled then name them there,
which is why that module still binds every one of them (and :mod:`yolo_attn.integration` allows both paths under
Ultralytics' restricted loader).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from torch import nn

from yolo_attn.nn.common import check_choice, compute_dtype, no_autocast
from yolo_attn.nn.sampling import bilinear_sample

__all__ = [
    "RelBias",
    "RelPosBias",
    "BiasChunks",
    "BoTRelPos",
    "CoAtRelPos",
    "DATRelPos",
    "rel_index",
    "cell_centres",
]


# ----------------------------------------------------------------------------------------------- offsets and grids
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
        ct = compute_dtype(q.dtype)
        with no_autocast(q.device.type):
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
