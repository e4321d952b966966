"""DAT blocks: deformable attention (``DAttention``), the DAT++ block (``DATBlock``) and a CSP form (``DAT3``).

Papers:
    Xia, Pan, Song, Li, Huang. "Vision Transformer with Deformable Attention". CVPR 2022.
    Xia, Pan, Song, Li, Huang. "DAT++: Spatially Dynamic Vision Transformer with Deformable Attention". arXiv
    2309.01430, 2023.
Reference code: ``LeapLabTHU/DAT`` (Apache-2.0), ``models/dat_blocks.py::DAttentionBaseline`` and
``models/dat.py::TransformerStage``. This file re-derives the math from the papers and shares no code with it.

Each query attends to ``H_k x W_k`` keys sampled (``grid_sample``, fp32) at learned offsets from a coarse grid of
reference points, one key per ``r x r`` cell (key stride ``r``). What differs from the reference code and from the
"DAT for YOLOv8" snippets copied from it:

- Reference points are key-cell centres, ``u_j = (2j + 1) / H_k - 1`` (``align_corners=False``): exact for every
  ``H``, ``W``, no NaN at ``H = 1`` and no division by zero at ``H_k = 1``. The reference code stretches the grid
  (``linspace(0.5, H_k - 0.5) / (H_k - 1)``) so its last row lies outside the map.
- The relative position bias is resolution-free: a function of the key-minus-query displacement in feature pixels
  (clipped at ``R``), read bilinearly because deformed keys sit off the pixel grid. By default (``"table"``, the
  paper's form) one ``(2R + 1)^2`` table per head, read at ``H W x N_s`` points. The reference scales its table to
  the map (a fraction of the map, sized by ``q_size`` at construction, anisotropic on rectangular maps); the snippets
  size it from the channel count (millions of parameters). ``pos_bias="axial"`` (not in the paper) is a row table
  plus a column table, ``a_h(dy) + b_h(dx)`` (any sum of a row and a column term, e.g. an L1 distance decay), read at
  ``(H + W) x N_s`` points: measured at P3 (80x80, c=64, batch 2, CPU forward+backward) the layer runs about 1.5x
  faster with 20% less memory.
- Offsets are ``s * tanh(theta) / H_k`` (DAT v1: at most ``s / 2`` key cells) with the last 1x1 of the offset network
  zero-initialised, so training starts on the reference grid. The DAT++ release's unbounded offsets are not offered.
- Key stride and offset kernel follow the feature level (DAT++-T stages mapped by stride: P2 r=8 k=9, P3 r=4 k=7,
  P4 r=2 k=5, P5 r=1 k=3), so every level of a 640 input samples a 20x20 key grid; heads ~ C / 32, groups ~ heads / 2.
  The snippets use key stride 1 (full ``N x N`` attention) and 8 heads everywhere.
- Numerics and export: coordinates, grids and sampling in fp32; table and bias cast at use (no fp32 constant meets a
  half tensor); no in-place ops; no einsum; normalisers derived from tensors so that a dynamic ONNX export is exact at
  every size; attention through SDPA with a plain twin (``fused=False``). No attention dropout, ``dwc_pe``,
  ``fixed_pe`` (resolution-locked) or ``log_cpb`` options.
- ONNX: ``GridSample`` needs opset 16; exporting at a lower opset raises a clear error instead of a deep exporter one.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_

from yolo_attn._compat import Conv
from yolo_attn.nn.common import AttnCSP, attend, check_heads
from yolo_attn.registry import register_block

__all__ = ["DAttention", "DATLayer", "DATBlock", "DAT3", "LEVELS", "POS_BIAS", "GRID_SAMPLE_MIN_OPSET"]

# Feature level (P-level, stride 2**level) -> (key stride r, offset kernel k). DAT++-T stages 1-4 run at strides 4..32
# with r = 8/4/2/1 and k = 9/7/5/3; P6 (stride 64) reuses the P5 setting.
LEVELS: dict[int, tuple[int, int]] = {2: (8, 9), 3: (4, 7), 4: (2, 5), 5: (1, 3), 6: (1, 3)}
POS_BIAS = ("table", "axial", "none")
GRID_SAMPLE_MIN_OPSET = 16


def _parse_level(block: str, level) -> int:
    """Accept 3, '3' or 'P3'; raise a ValueError listing the valid levels otherwise."""
    value = level
    if isinstance(value, str):
        s = value.strip().upper().removeprefix("P")
        value = int(s) if s.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or value not in LEVELS:
        raise ValueError(
            f"{block}: level={level!r} is not a supported feature level; use one of {sorted(LEVELS)} "
            "(or 'P3', 'P4', ...): the pyramid level the block runs at, which sets the default key stride and offset "
            f"kernel {dict(sorted(LEVELS.items()))}"
        )
    return value


def _default_heads(channels: int, dim_head: int = 32) -> int:
    """About ``channels / dim_head`` heads (DAT++ uses 32-channel heads), rounded down to a divisor of channels."""
    h = max(1, channels // dim_head)
    while channels % h:
        h -= 1
    return h


def _default_groups(heads: int) -> int:
    """About two heads per offset group (DAT++-T), rounded down to a divisor of heads."""
    g = max(1, heads // 2)
    while heads % g:
        g -= 1
    return g


def _positive_int(block: str, name: str, value, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{block}: {name}={value!r} is invalid; {hint}")
    return value


def _centres(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised centres of ``n`` cells along an axis (``align_corners=False``) and ``n`` as a tensor.

    The count comes from the tensor (not Python arithmetic on the shape) so that a dynamic ONNX export computes it
    at run time instead of freezing the export size into a constant.
    """
    i = torch.arange(n, device=like.device, dtype=torch.float32).to(like.dtype)  # like: fp32 (fp64 in tests)
    n_t = torch.ones_like(i).sum()
    return (2 * i + 1) / n_t - 1, n_t


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """Half and bfloat16 go to fp32 for coordinates and sampling; fp32 and fp64 stay (tests run in fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


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


# torch.onnx's own error type (a RuntimeError), so callers that catch exporter errors catch this one too
_ExportError = getattr(getattr(torch.onnx, "errors", None), "OnnxExporterError", RuntimeError)


def _check_export_opset(block: str) -> None:
    opset = _onnx_export_opset()
    if opset is not None and opset < GRID_SAMPLE_MIN_OPSET:
        raise _ExportError(
            f"{block}: ONNX GridSample needs opset {GRID_SAMPLE_MIN_OPSET} or higher, but the export uses opset "
            f"{opset}. Export with opset_version>={GRID_SAMPLE_MIN_OPSET} (Ultralytics: model.export(format='onnx', "
            f"opset=17)); targets without GridSample cannot run DAT blocks."
        )


@register_block(family="dat", role="layer", takes_level=True, bench_levels=(5, 4, 3))
class DAttention(nn.Module):
    """Deformable multi-head attention (DAT, Xia et al. 2022) with a resolution-free relative position bias.

    ``q = W_q x`` at every pixel; an offset network on ``q`` (per group: depthwise ``k x k`` conv with stride ``r``,
    channel LayerNorm, GELU, bias-free 1x1 to two offsets) moves one reference point per ``r x r`` key cell; ``x`` is
    sampled there (bilinear, fp32), ``k = W_k x~``, ``v = W_v x~``; logits ``q.k / sqrt(d) + bias(displacement)``;
    ``y = W_o softmax(.) v``. Groups share the offset network; each group's channels are sampled at its own points
    and the heads of a group use that group's points for the bias.

    Args:
        c1: Input channels.
        c2: Output channels (and attention width). When ``c1 != c2`` the input is first projected by a 1x1 ``Conv``.
        level: Feature level the layer runs at (2..6 or 'P3' ...); sets the default ``key_stride``/``offset_kernel``.
        num_heads: Attention heads; default about ``c2 / 32``.
        groups: Offset groups (must divide ``num_heads``); default about ``num_heads / 2``.
        key_stride: Key cell size ``r`` in feature pixels (``ceil(H / r) x ceil(W / r)`` keys); default per level.
        offset_kernel: Odd kernel size of the offset network's depthwise conv; default per level.
        offset_range: ``s > 0``: offsets are bounded by ``s / 2`` key cells (``s * tanh / H_k`` in normalised units).
        pos_bias: Relative position bias in feature pixels: ``"table"`` (the paper's 2-D table), ``"axial"`` (row
            table + column table, about 1.5x faster at P3) or ``"none"``.
        max_rel: Table radius ``R`` in feature pixels; displacements beyond it share the edge entry.
        fused: Use ``F.scaled_dot_product_attention`` (True) or the plain softmax twin (False).

    Examples:
        >>> m = DAttention(64, 64, level=3)  # P3: key stride 4, 7x7 offset kernel
        >>> m(torch.randn(2, 64, 80, 60)).shape
        torch.Size([2, 64, 80, 60])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        level: int | str = 5,
        num_heads: int | None = None,
        groups: int | None = None,
        key_stride: int | None = None,
        offset_kernel: int | None = None,
        offset_range: float = 2.0,
        pos_bias: str = "table",
        max_rel: int = 32,
        fused: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        _positive_int(name, "c1", c1, "input channels must be a positive int")
        _positive_int(name, "c2", c2, "output channels must be a positive int")
        self.level = _parse_level(name, level)
        r_default, k_default = LEVELS[self.level]
        self.key_stride = _positive_int(
            name, "key_stride", r_default if key_stride is None else key_stride, "use a positive int (1 = every pixel)"
        )
        k = k_default if offset_kernel is None else offset_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"{name}: offset_kernel={k!r} is invalid; use an odd positive int such as {k_default}")
        self.offset_kernel = k
        heads, dim_head = check_heads(name, c2, num_heads if num_heads is not None else _default_heads(c2))
        if groups is None:
            groups = _default_groups(heads)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or heads % groups:
            valid = [g for g in range(1, heads + 1) if heads % g == 0]
            raise ValueError(f"{name}: groups={groups!r} must divide num_heads={heads}; valid groups: {valid}")
        if isinstance(offset_range, bool) or not isinstance(offset_range, (int, float)) or not offset_range > 0:
            raise ValueError(f"{name}: offset_range={offset_range!r} must be a positive number (2.0 = one key cell)")
        if pos_bias not in POS_BIAS:
            raise ValueError(f"{name}: pos_bias={pos_bias!r} is not supported; choose one of {POS_BIAS}")
        self.max_rel = _positive_int(name, "max_rel", max_rel, "use a positive int table radius in pixels, e.g. 32")
        self.num_heads, self.dim_head, self.groups = heads, dim_head, groups
        self.offset_range = float(offset_range)
        self.pos_bias = pos_bias
        self.fused = fused
        cg = c2 // groups

        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.proj_q = nn.Conv2d(c2, c2, 1)
        self.proj_k = nn.Conv2d(c2, c2, 1)
        self.proj_v = nn.Conv2d(c2, c2, 1)
        self.proj_out = nn.Conv2d(c2, c2, 1)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, k, self.key_stride, k // 2, groups=cg),  # odd k: ceil(H / r) key rows
            LayerNorm2d(cg, eps=1e-5),
            nn.GELU(),
            nn.Conv2d(cg, 2, 1, bias=False),  # no bias (paper 3.2): points are not pushed all one way
        )
        nn.init.zeros_(self.conv_offset[-1].weight)  # start on the reference grid
        # "bias" in the table names on purpose: Ultralytics' optimizer puts them in the no-decay group, as DAT exempts
        # its rpe_table from weight decay.
        t = 2 * self.max_rel + 1
        self.rel_pos_bias_table = nn.Parameter(torch.zeros(heads, t, t)) if pos_bias == "table" else None
        self.rel_pos_bias_h = nn.Parameter(torch.zeros(heads, t)) if pos_bias == "axial" else None
        self.rel_pos_bias_w = nn.Parameter(torch.zeros(heads, t)) if pos_bias == "axial" else None
        for table in (self.rel_pos_bias_table, self.rel_pos_bias_h, self.rel_pos_bias_w):
            if table is not None:
                trunc_normal_(table, std=0.01)

    def extra_repr(self) -> str:
        return (
            f"level=P{self.level}, heads={self.num_heads}, dim_head={self.dim_head}, groups={self.groups}, "
            f"key_stride={self.key_stride}, offset_kernel={self.offset_kernel}, offset_range={self.offset_range}, "
            f"pos_bias={self.pos_bias!r}, max_rel={self.max_rel}, fused={self.fused}"
        )

    def sample_points(self, q: torch.Tensor) -> torch.Tensor:
        """Key positions from the queries: ``(B * G, H_k, W_k, 2)`` fp32, normalised, ``(x, y)`` as grid_sample wants."""
        b, c, h, w = q.shape
        theta = _fp32_or_wider(self.conv_offset(q.reshape(-1, c // self.groups, h, w)))  # B*G, 2, Hk, Wk
        ref_y, hk = _centres(theta.shape[-2], theta)
        ref_x, wk = _centres(theta.shape[-1], theta)
        py = ref_y[:, None] + theta[:, 0].tanh() * (self.offset_range / hk)  # B*G, Hk, Wk
        px = ref_x[None, :] + theta[:, 1].tanh() * (self.offset_range / wk)
        return torch.stack((px, py), dim=-1).clamp(-1, 1)

    def position_bias(self, points: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor | None:
        """Relative position logits ``(B, heads, H*W, N_s)`` for key ``points`` ``(B*G, H_k, W_k, 2)``, or ``None``.

        Tables are indexed by the key-minus-query displacement in feature pixels (``normalised * size / 2``), scaled
        so that +-R pixels land on their edges (``align_corners=True``); border padding clips longer displacements.
        Deformed keys sit off the pixel grid, so the tables are read bilinearly (``grid_sample``, fp32).
        """
        if self.pos_bias == "none":
            return None
        qy, hq = _centres(h, points)
        qx, wq = _centres(w, points)
        to_table = torch.stack((wq, hq)) / (2 * self.max_rel)  # normalised -> table units: x * size / 2 / R
        pts = points.flatten(1, 2) * to_table  # B*G, Ns, 2
        if self.pos_bias == "axial":
            # a_h(dy) + b_h(dx): two 1-D reads of size (H + W) x Ns, then one broadcast add
            dy = pts[:, None, :, 1] - (qy * to_table[1])[None, :, None]  # B*G, H, Ns
            dx = pts[:, None, :, 0] - (qx * to_table[0])[None, :, None]  # B*G, W, Ns
            by = self._read_table_1d(self.rel_pos_bias_h, dy, b)  # B*G, h/G, H, Ns
            bx = self._read_table_1d(self.rel_pos_bias_w, dx, b)  # B*G, h/G, W, Ns
            bias = by[:, :, :, None, :] + bx[:, :, None, :, :]  # B*G, h/G, H, W, Ns
            return bias.reshape(b, self.num_heads, -1, bias.shape[-1])
        qyy = (qy[:, None] + torch.zeros_like(qx)[None, :]).flatten()  # N, row-major like the queries
        qxx = (torch.zeros_like(qy)[:, None] + qx[None, :]).flatten()  # N
        queries = torch.stack((qxx, qyy), dim=-1) * to_table  # N, 2 (x, y)
        grid = pts[:, None] - queries[:, None]  # B*G, N, Ns, 2 (scaled first: one op on the big tensor)
        table = self.rel_pos_bias_table.to(grid.dtype)  # heads, 2R+1, 2R+1; fp32 even after .half()
        table = table.reshape(self.groups, -1, table.shape[-2], table.shape[-1]).repeat(b, 1, 1, 1)  # B*G, h/G, T, T
        bias = F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True)  # B*G, h/G, N, Ns
        return bias.reshape(b, self.num_heads, bias.shape[-2], bias.shape[-1])

    def _read_table_1d(self, table: torch.Tensor, coords: torch.Tensor, b: int) -> torch.Tensor:
        """Linear read of ``table`` (heads, T) at ``coords`` (B*G, L, Ns) in [-1, 1] table units -> (B*G, h/G, L, Ns)."""
        table = table.to(coords.dtype).reshape(self.groups, -1, 1, table.shape[-1]).repeat(b, 1, 1, 1)  # B*G, h/G, 1, T
        grid = torch.stack((coords, torch.zeros_like(coords)), dim=-1)  # B*G, L, Ns, 2 (x = table index, y = 0)
        return F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_export_opset(type(self).__name__)
        x = self.proj(x)
        b, c, h, w = x.shape
        q = self.proj_q(x)
        points = self.sample_points(q)  # B*G, Hk, Wk, 2
        xs = F.grid_sample(
            _fp32_or_wider(x.reshape(-1, c // self.groups, h, w)).to(points.dtype),
            points,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )  # B*G, C/G, Hk, Wk
        xs = xs.to(x.dtype).reshape(b, c, xs.shape[-2], xs.shape[-1])
        k = self.proj_k(xs).reshape(b, self.num_heads, self.dim_head, -1).transpose(-1, -2)  # B, h, Ns, d
        v = self.proj_v(xs).reshape(b, self.num_heads, self.dim_head, -1).transpose(-1, -2)  # B, h, Ns, d
        q = q.reshape(b, self.num_heads, self.dim_head, -1).transpose(-1, -2)  # B, h, N, d
        bias = self.position_bias(points, b, h, w)  # B, h, N, Ns (fp32) or None
        out = attend(q, k, v, bias, fused=self.fused)  # B, h, N, d
        return self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class DWConvMlp(nn.Module):
    """DAT++ MLP: 1x1 expand, + depthwise 3x3 residual, GELU, 1x1 project (``TransformerMLPWithConv``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(self.act(x + self.dwc(x)))


class DATLayer(nn.Module):
    """One DAT++ block at fixed width (``TransformerStage`` with a deformable-attention stage spec).

    ``x + LPU(x)``, then ``x + DropPath(DAttention(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``, where LPU is a
    depthwise 3x3 conv and LN a channel LayerNorm. With ``zero_init`` the last layer of each residual branch starts
    at zero, so the layer is exactly the identity until training moves it.

    Args:
        dim: Channels.
        level: Feature level (sets the attention's key stride and offset kernel).
        mlp_ratio: MLP expansion (4 in DAT++).
        drop_path: Stochastic depth rate of the two residual branches.
        zero_init: Zero-initialise the LPU, the attention's output projection and the MLP's last 1x1.
        **attn_kwargs: Passed to :class:`DAttention` (``num_heads``, ``groups``, ``key_stride`` ...).
    """

    def __init__(
        self,
        dim: int,
        level: int | str = 5,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        zero_init: bool = True,
        **attn_kwargs,
    ):
        super().__init__()
        name = type(self).__name__
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ValueError(f"{name}: mlp_ratio={mlp_ratio!r} must be a positive number (DAT++ uses 4)")
        if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0 <= drop_path < 1:
            raise ValueError(f"{name}: drop_path={drop_path!r} must be in [0, 1)")
        self.lpu = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-5)
        self.attn = DAttention(dim, dim, level, **attn_kwargs)
        self.norm2 = LayerNorm2d(dim, eps=1e-5)
        self.mlp = DWConvMlp(dim, max(1, round(dim * mlp_ratio)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if zero_init:
            for conv in (self.lpu, self.attn.proj_out, self.mlp.fc2):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lpu(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _check_n(block: str, n) -> int:
    return _positive_int(block, "n", n, "the number of stacked DAT layers must be a positive int")


@register_block(repeats=True, family="dat", role="insert", takes_level=True, bench_levels=(5, 4, 3))
class DATBlock(nn.Module):
    """``n`` DAT++ blocks, for insertion anywhere in a YOLO model: exactly the identity at init when ``c1 == c2``.

    YAML: ``[-1, n, DATBlock, [c2, level, ...]]`` (``level`` 3/4/5 = P3/P4/P5 sets the key stride; default 5).

    Args:
        c1: Input channels.
        c2: Output channels; when ``c1 != c2`` a 1x1 ``Conv`` projects first (then it is not the identity).
        n: Stacked DAT++ blocks.
        level: Feature level: 2..6 or 'P3' ... (P3 key stride 4, P4 2, P5 1).
        mlp_ratio: MLP expansion.
        drop_path: Stochastic depth rate.
        num_heads: Heads (default about ``c2 / 32``).
        groups: Offset groups (default about ``num_heads / 2``).
        key_stride: Override the level's key stride.
        offset_kernel: Override the level's offset kernel (odd).
        pos_bias: ``"table"`` (the paper's 2-D table), ``"axial"`` (two 1-D tables, faster) or ``"none"``.

    Examples:
        >>> m = DATBlock(128, 128, 2, 4).eval()
        >>> x = torch.randn(1, 128, 40, 30)
        >>> torch.equal(m(x), x)
        True
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        level: int | str = 5,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        num_heads: int | None = None,
        groups: int | None = None,
        key_stride: int | None = None,
        offset_kernel: int | None = None,
        pos_bias: str = "table",
    ):
        super().__init__()
        n = _check_n(type(self).__name__, n)
        _positive_int(type(self).__name__, "c1", c1, "input channels must be a positive int")
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        kw = dict(
            num_heads=num_heads, groups=groups, key_stride=key_stride, offset_kernel=offset_kernel, pos_bias=pos_bias
        )
        self.m = nn.Sequential(*(DATLayer(c2, level, mlp_ratio, drop_path, zero_init=True, **kw) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(self.proj(x))


@register_block(repeats=True, family="dat", role="csp", takes_level=True, bench_levels=(5, 4, 3))
class DAT3(AttnCSP):
    """CSP block with ``n`` DAT++ layers on the hidden branch (the C3/BoT3 form); replaces a C2f/C3k2.

    ``cv3(cat(m(cv1(x)), cv2(x)))`` with 1x1 ``Conv`` layers and ``c_ = int(c2 * e)`` hidden channels.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: DAT++ layers on the hidden branch.
        level: Feature level (sets the key stride; default P5).
        e: Hidden width ratio.
        mlp_ratio: MLP expansion.
        drop_path: Stochastic depth rate.
        num_heads: Heads of the hidden-width attention (default about ``c_ / 32``).
        groups: Offset groups.

    Examples:
        >>> DAT3(256, 256, 1, 5)(torch.randn(1, 256, 20, 15)).shape
        torch.Size([1, 256, 20, 15])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        level: int | str = 5,
        e: float = 0.5,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        num_heads: int | None = None,
        groups: int | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        n = _check_n(name, n)
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1 or int(c2 * e) < 1:
            raise ValueError(
                f"{name}: e={e!r} must be a ratio in (0, 1] leaving at least one hidden channel of c2={c2}"
            )
        c_ = int(c2 * e)
        kw = dict(num_heads=num_heads, groups=groups)
        m = nn.Sequential(*(DATLayer(c_, level, mlp_ratio, drop_path, zero_init=False, **kw) for _ in range(n)))
        self._build(c1, c2, c_, m)
