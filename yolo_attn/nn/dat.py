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
  every size; attention through the shared core (:mod:`yolo_attn.nn.attention`) with a plain twin. No attention
  dropout, ``dwc_pe``, ``fixed_pe`` (resolution-locked) or ``log_cpb`` options.
- Sampler switch: ``sampler="grid_sample"`` (default, ``F.grid_sample``) or ``"gather"``
  (:func:`~yolo_attn.nn.sampling.grid_sample_gather`: the same values from floor, clamp, arithmetic and row gathers,
  for runtimes whose ``GridSample`` is missing or unreliable: TensorRT, TF/TFLite through onnx2tf, CoreML, ONNX
  opset < 16). :func:`set_sampler` flips every DAT layer of a model; Ultralytics' exporter does it for those formats
  (:mod:`yolo_attn.export`).
- ONNX: ``GridSample`` needs opset 16; exporting the ``grid_sample`` sampler at a lower opset raises a clear error
  instead of a deep exporter one.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import DropPath, LayerNorm2d

from yolo_attn._compat import Conv
from yolo_attn.nn.attention import AttentionLayer, _onnx_export_opset, attend, check_impl
from yolo_attn.nn.common import (
    AttnCSP,
    check_channels,
    check_choice,
    check_int,
    check_number,
    hidden_width,
    resolve_heads,
)
from yolo_attn.nn.rel_pos import DATRelPos, cell_centres
from yolo_attn.nn.sampling import SAMPLERS, bilinear_sample
from yolo_attn.registry import AttnTap, Probe, register_block

__all__ = [
    "DAttention",
    "DATLayer",
    "DATBlock",
    "DAT3",
    "LEVELS",
    "POS_BIAS",
    "GRID_SAMPLE_MIN_OPSET",
    "SAMPLERS",
    "set_sampler",
]

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


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """Half and bfloat16 go to fp32 for coordinates and sampling; fp32 and fp64 stay (tests run in fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


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
class DAttention(AttentionLayer):
    """Deformable multi-head attention (DAT, Xia et al. 2022) with a resolution-free relative position bias.

    ``q = W_q x`` at every pixel; an offset network on ``q`` (per group: depthwise ``k x k`` conv with stride ``r``,
    channel LayerNorm, GELU, bias-free 1x1 to two offsets) moves one reference point per ``r x r`` key cell; ``x`` is
    sampled there (bilinear, fp32), ``k = W_k x~``, ``v = W_v x~``; logits ``q.k / sqrt(d) + bias(displacement)``
    (:class:`~yolo_attn.nn.rel_pos.DATRelPos`); ``y = W_o softmax(.) v``. Groups share the offset network; each
    group's channels are sampled at its own points and the heads of a group use that group's points for the bias.

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
        attn_impl: One of :data:`~yolo_attn.nn.attention.ATTN_IMPLS`.
        sampler: How keys and bias tables are read: ``"grid_sample"`` or ``"gather"`` (same values, no
            ``GridSample`` op; see :func:`set_sampler`).

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
        attn_impl: str = "auto",
        sampler: str = "grid_sample",
    ):
        super().__init__()
        name = type(self).__name__
        check_channels(name, c1, c2)
        self.level = _parse_level(name, level)
        r_default, k_default = LEVELS[self.level]
        self.key_stride = check_int(
            name, "key_stride", r_default if key_stride is None else key_stride, 1, " (1 = every pixel is a key)"
        )
        k = k_default if offset_kernel is None else offset_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"{name}: offset_kernel={k!r} is invalid; use an odd positive int such as {k_default}")
        self.offset_kernel = k
        heads, dim_head = resolve_heads(name, c2, num_heads if num_heads is not None else _default_heads(c2))
        groups = _default_groups(heads) if groups is None else groups
        check_choice(name, "groups", groups, [g for g in range(1, heads + 1) if heads % g == 0])
        check_number(name, "offset_range", offset_range, 0.0, low_open=True, hint=" (2.0 = one key cell)")
        check_choice(name, "pos_bias", pos_bias, POS_BIAS)
        self.max_rel = check_int(name, "max_rel", max_rel, 1, " (the table radius in pixels, e.g. 32)")
        self.num_heads, self.dim_head, self.groups = heads, dim_head, groups
        self.offset_range = float(offset_range)
        self.pos_bias = pos_bias
        self.attn_impl = check_impl(name, attn_impl)
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
        # "bias" in the table names (rel_pos.bias_table ...) on purpose: Ultralytics' optimizer puts them in the
        # no-decay group, as DAT exempts its rpe_table from weight decay.
        self.rel_pos = None if pos_bias == "none" else DATRelPos(heads, groups, self.max_rel, pos_bias)
        self.sampler = sampler

    # Class-level default: a layer pickled before the switch existed (no ``_sampler`` in its state) reads keys with
    # grid_sample, as it was trained.
    _sampler: str = "grid_sample"

    @property
    def sampler(self) -> str:
        """How keys and bias tables are read (one of :data:`SAMPLERS`); setting it sets the bias module's too."""
        return self._sampler

    @sampler.setter
    def sampler(self, value: str) -> None:
        self._sampler = check_choice(type(self).__name__, "sampler", value, SAMPLERS)
        if isinstance(self._modules.get("rel_pos"), DATRelPos):
            self._modules["rel_pos"].sampler = value

    def extra_repr(self) -> str:
        return (
            f"level=P{self.level}, num_heads={self.num_heads}, dim_head={self.dim_head}, groups={self.groups}, "
            f"key_stride={self.key_stride}, offset_kernel={self.offset_kernel}, offset_range={self.offset_range}, "
            f"pos_bias={self.pos_bias!r}, max_rel={self.max_rel}, attn_impl={self.attn_impl!r}, sampler={self.sampler!r}"
        )

    def _upgrade_state(self) -> None:
        # pickles of yolo_attn 0.1.0 before the attention core (commit a8b5350): the tables were DAttention's own
        # parameters, None for the kinds not in use
        old = [self._parameters.pop(k, None) for k in ("rel_pos_bias_table", "rel_pos_bias_h", "rel_pos_bias_w")]
        if "rel_pos" in self._modules or "rel_pos" in self.__dict__:
            return
        if self.pos_bias == "none":
            self.rel_pos = None
            return
        pos = DATRelPos(self.num_heads, self.groups, self.max_rel, self.pos_bias)
        if self.pos_bias == "table":
            pos.bias_table = old[0]
        else:
            pos.bias_h, pos.bias_w = old[1], old[2]
        self.rel_pos = pos
        pos.sampler = self.sampler  # the class default, grid_sample: what the layer was trained with

    def sample_points(self, q: torch.Tensor) -> torch.Tensor:
        """Key positions from the queries: ``(B * G, H_k, W_k, 2)``, fp32, normalised ``(x, y)`` for grid_sample."""
        b, c, h, w = q.shape
        theta = _fp32_or_wider(self.conv_offset(q.reshape(-1, c // self.groups, h, w)))  # B*G, 2, Hk, Wk
        ref_y, hk = cell_centres(theta.shape[-2], theta)
        ref_x, wk = cell_centres(theta.shape[-1], theta)
        py = ref_y[:, None] + theta[:, 0].tanh() * (self.offset_range / hk)  # B*G, Hk, Wk
        px = ref_x[None, :] + theta[:, 1].tanh() * (self.offset_range / wk)
        return torch.stack((px, py), dim=-1).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampler == "grid_sample":
            _check_export_opset(type(self).__name__)
        x = self.proj(x)
        b, c, h, w = x.shape
        q = self.proj_q(x)
        points = self.sample_points(q)  # B*G, Hk, Wk, 2
        xs = bilinear_sample(
            _fp32_or_wider(x.reshape(-1, c // self.groups, h, w)).to(points.dtype), points, False, self.sampler
        )  # B*G, C/G, Hk, Wk
        xs = xs.to(x.dtype).reshape(b, c, xs.shape[-2], xs.shape[-1])
        k = rearrange(self.proj_k(xs), "b (h d) y x -> b h (y x) d", h=self.num_heads)  # B, h, Ns, d
        v = rearrange(self.proj_v(xs), "b (h d) y x -> b h (y x) d", h=self.num_heads)
        q = rearrange(q * self.dim_head**-0.5, "b (h d) y x -> b h (y x) d", h=self.num_heads)  # scaled first
        bias = None if self.rel_pos is None else self.rel_pos(q, (h, w), points)
        out = attend(q, k, v, bias, self.attn_impl)  # B, h, N, d
        return self.proj_out(rearrange(out, "b h (y x) d -> b (h d) y x", y=h))


def set_sampler(model: nn.Module, sampler: str) -> nn.Module:
    """Set ``sampler`` on every DAT attention layer inside ``model`` (its bias tables follow); returns ``model``.

    ``"gather"`` gives the same outputs (within 1e-5) without ONNX ``GridSample``: for TensorRT, TF/TFLite, CoreML
    and ONNX opset < 16. Ultralytics' exporter switches automatically for those formats (:mod:`yolo_attn.export`).

    Examples:
        >>> m = set_sampler(DAT3(64, 64, 1, 0.5, 5), "gather")
        >>> {a.sampler for a in m.modules() if isinstance(a, DAttention)}
        {'gather'}
    """
    check_choice("set_sampler", "sampler", sampler, SAMPLERS)
    for m in model.modules():
        if isinstance(m, DAttention):
            m.sampler = sampler
    return model


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
        _check_layer(type(self).__name__, mlp_ratio, drop_path)
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


def _check_layer(block: str, mlp_ratio: float, drop_path: float) -> None:
    check_number(block, "mlp_ratio", mlp_ratio, 0.0, low_open=True, hint=" (DAT++ uses 4)")
    check_number(block, "drop_path", drop_path, 0.0, 1.0)


def _check_stack(block: str, c1: int, c2: int, n: int, level, mlp_ratio: float, drop_path: float) -> None:
    """The checks DATBlock and DAT3 share, so that a bad YAML extra is reported with the row's own block name."""
    check_channels(block, c1, c2)
    check_int(block, "n", n, 1, " (stacked DAT layers)")
    _parse_level(block, level)
    _check_layer(block, mlp_ratio, drop_path)


def _is_level(value) -> bool:
    """A pyramid level where DAT3 rows of yolo_attn 0.1.0 before commit a8b5350 had it (an int >= 2 or 'P3').

    Never a width ratio, which is at most 1."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool) and value >= 2)


# How yolo_attn.explain reads a DAT block: the residual stack m, the attention's output projection (zero at init in
# DATBlock), q and k projections and the sampled key points.
_PROBE = Probe(
    "m",
    (("attn_out_w", "attn.proj_out.weight"),),
    AttnTap("DAttention", q="proj_q", k="proj_k", bias="rel_pos", points="sample_points"),
)


@register_block(repeats=True, family="dat", role="insert", takes_level=True, bench_levels=(5, 4, 3), probe=_PROBE)
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
        _check_stack(type(self).__name__, c1, c2, n, level, mlp_ratio, drop_path)
        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        kw = dict(
            num_heads=num_heads, groups=groups, key_stride=key_stride, offset_kernel=offset_kernel, pos_bias=pos_bias
        )
        self.m = nn.Sequential(*(DATLayer(c2, level, mlp_ratio, drop_path, zero_init=True, **kw) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(self.proj(x))


@register_block(repeats=True, family="dat", role="csp", takes_level=True, bench_levels=(5, 4, 3), probe=_PROBE)
class DAT3(AttnCSP):
    """CSP block with ``n`` DAT++ layers on the hidden branch (the C3/BoT3 form); replaces a C2f/C3k2.

    ``cv3(cat(m(cv1(x)), cv2(x)))`` with 1x1 ``Conv`` layers and ``c_ = int(c2 * e)`` hidden channels.

    YAML: ``[-1, n, DAT3, [c2, e, level, mlp_ratio, drop_path, num_heads, groups]]`` (extras optional), e.g.
    ``[-1, 3, DAT3, [1024, 0.5, 5]]``: the width ratio first, as in BoT3 and CoAt3. Rows written for yolo_attn
    0.1.0 before commit a8b5350 put the level first (``[1024, 5]``, ``[256, 3, 0.5]``); a level where ``e``
    belongs (an int >= 2 or ``'P3'``; a width ratio is at most 1) is read in that old order, with a ``FutureWarning``, so old YAMLs and the
    YAMLs stored in old checkpoints build the same model.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: DAT++ layers on the hidden branch.
        e: Hidden width ratio in (0, 1].
        level: Feature level (sets the key stride; default P5).
        mlp_ratio: MLP expansion.
        drop_path: Stochastic depth rate.
        num_heads: Heads of the hidden-width attention (default about ``c_ / 32``).
        groups: Offset groups.

    Examples:
        >>> DAT3(256, 256, 1, 0.5, 5)(torch.randn(1, 256, 20, 15)).shape
        torch.Size([1, 256, 20, 15])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        level: int | str = 5,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        num_heads: int | None = None,
        groups: int | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        if _is_level(e):  # the order of yolo_attn 0.1.0 before commit a8b5350: (c1, c2, n, level, e, ...)
            if _is_level(level) and level != 5:
                raise ValueError(
                    f"{name}: e={e!r} and level={level!r} are both pyramid levels; the arguments are "
                    "(c1, c2, n, e, level, ...) with e a width ratio in (0, 1], e.g. DAT3(c1, c2, n, 0.5, 3)"
                )
            warnings.warn(
                f"{name}: e={e!r} is a pyramid level, read in the order of yolo_attn 0.1.0 (before commit a8b5350), "
                f"(c2, level, e, ...); write the row as [c2, e, level, ...], e.g. [{c2}, {0.5 if _is_level(level) else level}, {e}]",
                FutureWarning,
                stacklevel=2,
            )
            e, level = (0.5 if _is_level(level) else level), e
        _check_stack(name, c1, c2, n, level, mlp_ratio, drop_path)
        c_ = hidden_width(name, c2, e, high=1.0)
        kw = dict(num_heads=num_heads, groups=groups)
        m = nn.Sequential(*(DATLayer(c_, level, mlp_ratio, drop_path, zero_init=False, **kw) for _ in range(n)))
        self._build(c1, c2, c_, m)
