"""Layer-level tests of the DAT family: DAttention, DATBlock, DAT3 (yolo_attn/nn/dat.py).

What is proven here: any input size works (including 1-row maps and 1-cell key grids) with finite values and
gradients; parameter count does not depend on the input; fp32, bf16 autocast and pure half/bf16 run; SDPA equals the
plain twin; an inserted DATBlock is exactly the identity; with zero offsets the layer equals attention over features
pooled on the reference grid computed independently; offsets are bounded and learn; the position bias is defined in
pixels; dynamic ONNX export matches onnxruntime at other sizes, and opset < 16 is refused with a clear message.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_onnx_matches, export_onnx

from yolo_attn.nn.attention import ATTN_IMPLS, set_attn_impl
from yolo_attn.nn.dat import DAT3, LEVELS, POS_BIAS, DATBlock, DATLayer, DAttention

SIZES = [(1, 1), (1, 5), (8, 8), (15, 20), (20, 20), (25, 31), (80, 60)]


def _perturb(m: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every zero-initialised tensor (offset head, residual outputs) random values, so nothing is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def _dattn(level=3, **kw):
    return DAttention(32, 32, level, num_heads=4, groups=2, **kw)


def _makers():
    # Small widths; heads/groups > 1 so that the group and head bookkeeping is exercised.
    return {
        "DAttention-P3": lambda: _dattn(3),
        "DAttention-P3-axial": lambda: _dattn(3, pos_bias="axial"),
        "DAttention-P5": lambda: _dattn(5),
        "DATBlock-proj": lambda: DATBlock(32, 16, 2, 3, 2.0, 0.1, 2),
        "DAT3": lambda: DAT3(32, 32, 1, 0.5, 3),
    }


def _heavy(name: str, size) -> bool:
    # key stride 1 at 80x60 is global attention over 4800 pixels: legal, but not a unit test
    return name == "DAttention-P5" and size[0] * size[1] > 1000


@pytest.mark.parametrize("name", list(_makers()))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_any_size_forward_backward(name, size):
    if _heavy(name, size):
        pytest.skip("global-size attention, covered at smaller sizes")
    torch.manual_seed(0)
    m = _perturb(_makers()[name]()).train()
    n_params = sum(p.numel() for p in m.parameters())
    for b in (1, 2):
        m.train(b * size[0] * size[1] > 1)  # BatchNorm (in the 1x1 Convs) cannot train on a single value
        x = torch.randn(b, 32, *size, requires_grad=True)
        y = m(x)
        assert y.shape[0] == b and y.shape[2:] == x.shape[2:]
        assert torch.isfinite(y).all()
        m.zero_grad(set_to_none=True)
        (y.square().mean()).backward()
        assert torch.isfinite(x.grad).all()
        for pname, p in m.named_parameters():
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), pname
    assert sum(p.numel() for p in m.parameters()) == n_params  # nothing sized from the input


def test_parameter_count_is_size_free_and_p5_budget():
    shapes = {}
    for size in [(8, 8), (20, 15), (1, 7)]:
        m = DAttention(256, 256, 5)
        m(torch.randn(1, 256, *size))
        shapes[size] = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert len({tuple(sorted(s.items())) for s in shapes.values()}) == 1
    # yolov8n's P5 (c=256): one DAttention adds fewer than 0.3M parameters (the snippets add ~2.4M)
    counts = {pb: sum(p.numel() for p in DAttention(256, 256, 5, pos_bias=pb).parameters()) for pb in POS_BIAS}
    # 4 x (256*256 + 256) projections + offset net (64*9+64 dw conv, 2*64 LayerNorm, 2*64 1x1) + tables
    assert counts == {"axial": 264_064 + 2 * 8 * 65, "table": 264_064 + 8 * 65 * 65, "none": 264_064}
    assert max(counts.values()) < 300_000


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_datblock_is_identity_at_init(mode):
    torch.manual_seed(0)
    m = DATBlock(64, 64, 2, 4, drop_path=0.2)
    m.train(mode == "train")
    for size in [(16, 12), (1, 5), (9, 9)]:
        x = torch.randn(2, 64, *size)
        assert torch.equal(m(x), x)
    # with c1 != c2 it is the projection, then identity
    m = DATBlock(32, 64, 1, 3).train(mode == "train")
    x = torch.randn(2, 32, 10, 6)
    if mode == "eval":
        assert torch.equal(m(x), m.proj(x))


def test_all_parameters_learn():
    """Once the zero-initialised layers are non-zero, every parameter gets a non-zero gradient."""
    torch.manual_seed(0)
    for m in (_perturb(DATBlock(32, 32, 1, 3)), _perturb(_dattn(4)), DAT3(32, 64, 2, 0.5, 4)):
        _perturb(m)
        m(torch.randn(2, 32, 12, 10)).square().mean().backward()
        dead = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, dead


def test_offset_network_gets_gradients_from_the_start():
    torch.manual_seed(0)
    m = _dattn(3)
    assert not m.conv_offset[-1].weight.any()  # zero init: training starts on the reference grid
    m(torch.randn(2, 32, 16, 12)).square().mean().backward()
    assert m.conv_offset[-1].weight.grad.abs().sum() > 0  # through grid_sample (keys) and the position bias
    m.zero_grad()
    _perturb(m)
    m(torch.randn(2, 32, 16, 12)).square().mean().backward()
    for k, p in m.conv_offset.named_parameters():
        assert p.grad.abs().sum() > 0, k


def _bilinear_table(table: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, r_max: int) -> torch.Tensor:
    """table (h, T, T) read at pixel displacements (..., ) with clipping: independent of grid_sample."""
    t = 2 * r_max

    def split(d):
        c = (d + r_max).clamp(0, t)
        f = c.floor().long().clamp(max=t - 1)
        return f, c - f

    fy, wy = split(dy)
    fx, wx = split(dx)
    out = 0
    for ay, wgt_y in ((0, 1 - wy), (1, wy)):
        for ax, wgt_x in ((0, 1 - wx), (1, wx)):
            out = out + table[:, fy + ay, fx + ax] * (wgt_y * wgt_x)
    return out  # h, ...


def _linear_table(table: torch.Tensor, d: torch.Tensor, r_max: int) -> torch.Tensor:
    """table (h, T) read linearly at pixel displacements d (...) with clipping -> (h, ...)."""
    c = (d + r_max).clamp(0, 2 * r_max)
    f = c.floor().long().clamp(max=2 * r_max - 1)
    return table[:, f] * (1 - (c - f)) + table[:, f + 1] * (c - f)


def _pooled_reference(m: DAttention, x: torch.Tensor, r: int) -> torch.Tensor:
    """DAttention with zero offsets, written from the paper without grid_sample: attention over pooled keys."""
    b, c, h, w = x.shape
    if r == 1:
        pooled = x
    elif r == 2:
        pooled = F.avg_pool2d(x, 2)  # bilinear at the centre of a 2x2 cell = its mean
    else:
        assert r % 2 == 1
        pooled = x[:, :, r // 2 :: r, r // 2 :: r]  # odd cell: its centre is a pixel
    hk, wk = pooled.shape[-2:]
    heads, d = m.num_heads, m.dim_head
    q = m.proj_q(x).reshape(b, heads, d, h * w)
    k = m.proj_k(pooled).reshape(b, heads, d, hk * wk)
    v = m.proj_v(pooled).reshape(b, heads, d, hk * wk)
    # pixel positions: queries at integer pixels, keys at cell centres j*r + (r-1)/2
    qy, qx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ky, kx = torch.meshgrid(torch.arange(hk) * r + (r - 1) / 2, torch.arange(wk) * r + (r - 1) / 2, indexing="ij")
    dy = ky.reshape(1, -1).double() - qy.reshape(-1, 1).double()  # N, Ns
    dx = kx.reshape(1, -1).double() - qx.reshape(-1, 1).double()
    if m.pos_bias == "table":
        bias = _bilinear_table(m.rel_pos.bias_table.double(), dy, dx, m.max_rel)  # heads, N, Ns
    else:  # axial: a(dy) + b(dx), the same read on a one-row table
        bias = _linear_table(m.rel_pos.bias_h.double(), dy, m.max_rel)
        bias = bias + _linear_table(m.rel_pos.bias_w.double(), dx, m.max_rel)
    logits = torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d) + bias
    out = torch.einsum("bhnm,bhdm->bhdn", logits.softmax(-1), v).reshape(b, c, h, w)
    return m.proj_out(out)


@pytest.mark.parametrize("pos_bias", ["table", "axial"])
@pytest.mark.parametrize(
    "r,size,max_rel", [(1, (5, 7), 32), (2, (8, 6), 32), (3, (9, 12), 32), (2, (12, 10), 3), (1, (1, 6), 2)]
)
def test_zero_offsets_equal_attention_over_pooled_features(monkeypatch, r, size, max_rel, pos_bias):
    from yolo_attn.nn import attention

    monkeypatch.setattr(attention, "CHUNK_ELEMS", 64)  # many chunks
    torch.manual_seed(r)
    m = DAttention(32, 32, 5, 4, 2, r, 3, pos_bias=pos_bias, max_rel=max_rel).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("rel_pos."):
                p.normal_(std=1.0)  # make the position term matter
        for p in m.conv_offset[:-1].parameters():
            p.normal_()
    assert not m.conv_offset[-1].weight.any()  # offsets are exactly zero
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    for impl in ATTN_IMPLS:
        m.attn_impl = impl
        torch.testing.assert_close(m(x), _pooled_reference(m, x, r), atol=1e-10, rtol=1e-9, msg=impl)


def test_reference_points_are_cell_centres_and_offsets_bounded():
    m = DAttention(16, 16, 2, offset_range=2.0)  # key stride 8
    q = torch.randn(1, 16, 80, 60)
    pts = m.sample_points(q)  # B*G, Hk, Wk, 2 (x, y), normalised
    assert pts.shape == (1, 10, 8, 2)  # ceil(80/8) x ceil(60/8)
    py_px = (pts[0, :, 0, 1] + 1) * 80 / 2 - 0.5
    torch.testing.assert_close(py_px, torch.arange(10) * 8 + 3.5)  # 3.5 ... 75.5, not the stretched 4.4 ... 83.4
    px_px = (pts[0, 0, :, 0] + 1) * 60 / 2 - 0.5
    torch.testing.assert_close(px_px, (torch.arange(8) + 0.5) * 60 / 8 - 0.5)  # ceil grid: cells of 7.5 px
    # 1-cell key grid: the centre, no division by zero
    assert torch.equal(m.sample_points(torch.randn(1, 16, 1, 5)), torch.zeros(1, 1, 1, 2))
    # saturated offsets move a point at most s/2 key cells (s * tanh / Hk in normalised units)
    with torch.no_grad():
        m.conv_offset[-1].weight.fill_(50.0)
    moved = m.sample_points(q) - pts
    assert (moved[..., 1].abs() <= 2.0 / 10 + 1e-6).all() and (moved[..., 0].abs() <= 2.0 / 8 + 1e-6).all()
    assert moved.abs().max() > 0.1
    assert pts.abs().max() <= 1


@pytest.mark.parametrize("pos_bias", ["table", "axial"])
def test_position_bias_is_defined_in_pixels(pos_bias):
    """The same pixel displacement gives the same logit at any map size (no fraction-of-map table)."""
    m = DAttention(16, 16, 5, num_heads=2, groups=1, pos_bias=pos_bias)
    with torch.no_grad():
        for p in m.rel_pos.parameters():
            p.normal_()
    if pos_bias == "table":
        table = m.rel_pos.bias_table
    else:
        table = m.rel_pos.bias_h[:, :, None] + m.rel_pos.bias_w[:, None, :]  # the 2-D table it stands for
    biases = []
    for h, w in [(8, 8), (16, 12), (5, 30)]:
        pts = m.sample_points(torch.randn(1, 16, h, w))
        bias = m.rel_pos(None, (h, w), pts).dense().reshape(1, 2, h, w, h, w)
        biases.append(bias[0, :, 2, 3, 4, 1])  # query (2, 3) -> key (4, 1): displacement (+2, -2) px
        torch.testing.assert_close(bias[0, :, 2, 3, 2, 3], table[:, 32, 32])  # zero displacement
    torch.testing.assert_close(biases[0], table[:, 34, 30])
    torch.testing.assert_close(biases[1], biases[0])
    torch.testing.assert_close(biases[2], biases[0])


@pytest.mark.parametrize("name", list(_makers()))
def test_every_impl_equals_twin(monkeypatch, name):
    """Outputs and gradients of every implementation against the plain twin (several chunks for the chunked one)."""
    from yolo_attn.nn import attention

    monkeypatch.setattr(attention, "CHUNK_ELEMS", 4096)
    torch.manual_seed(0)
    m = _perturb(_makers()[name]()).eval()  # no drop-path draws, BN without batch statistics: only attention differs
    x = torch.randn(2, 32, 15, 20)
    results = {}
    for impl in ATTN_IMPLS:
        set_attn_impl(m, impl)
        m.zero_grad()
        xg = x.clone().requires_grad_()
        y = m(xg)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results[impl] = (y.detach(), xg.grad, {k: p.grad.clone() for k, p in m.named_parameters()})
    y2, gx2, g2 = results.pop("plain")
    for impl, (y1, gx1, g1) in results.items():
        torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5, msg=impl)
        torch.testing.assert_close(gx1, gx2, atol=1e-5, rtol=1e-4, msg=impl)
        for k in g1:  # parameter gradients summed over all pixels reach ~1e2: compare at 1e-5 of their scale
            err = (g1[k] - g2[k]).abs().max() / g2[k].abs().max().clamp_min(1.0)
            assert err < 1e-5, (impl, k, err.item())


@pytest.mark.parametrize("name", list(_makers()))
def test_bf16_autocast_and_low_precision_weights(name):
    torch.manual_seed(0)
    m = _perturb(_makers()[name]()).train()
    x = torch.randn(2, 32, 12, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()  # deterministic (drop path) for the accuracy check
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    assert (y.float() - ref).norm() / ref.norm() < 0.02
    # pure low precision, no autocast: what model.half() / EMA checkpoints do (fp32 grids inside)
    for dtype in (torch.bfloat16, torch.float16):
        mm = _perturb(_makers()[name]()).eval().to(dtype)
        with torch.no_grad():
            y = mm(x[:1, :, :7, :5].to(dtype))  # CPU half kernels are slow: a small map is enough
        assert y.dtype == dtype and torch.isfinite(y).all()


def test_pos_bias_none_and_repr():
    m = DAttention(32, 32, 4, pos_bias="none")
    assert m.rel_pos is None and not any("rel_pos" in k for k in m.state_dict())
    assert m(torch.randn(1, 32, 7, 9)).shape == (1, 32, 7, 9)
    text = repr(_dattn(3))
    assert "key_stride=4" in text and "offset_kernel=7" in text and "groups=2" in text and "'table'" in text
    assert "attn_impl='auto'" in text


def test_defaults_follow_the_feature_level():
    for level, (r, k) in LEVELS.items():
        m = DAttention(64, 64, level)
        assert (m.key_stride, m.offset_kernel, m.conv_offset[0].stride[0]) == (r, k, r)
    assert DAttention(64, 64, "P3").key_stride == 4
    m = DAttention(256, 256)  # P5 by default; ~32-channel heads, ~2 heads per group
    assert (m.num_heads, m.dim_head, m.groups, m.key_stride) == (8, 32, 4, 1)
    m = DAttention(104, 104)  # 104 // 32 = 3 does not divide 104: rounded down to a divisor
    assert 104 % m.num_heads == 0 and m.num_heads % m.groups == 0


def test_table_is_kept_out_of_weight_decay():
    # Ultralytics' build_optimizer sends names containing "bias" to the no-decay group, as DAT intends
    for pos_bias, n_tables in (("table", 1), ("axial", 2)):
        m = DAttention(32, 32, 3, pos_bias=pos_bias)
        names = [k for k, p in m.named_parameters() if p.dim() > 1 and "rel_pos" in k]
        assert len(names) == n_tables and all("bias" in k for k in names), names


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: DAttention(32, 32, 7), "level=7"),
        (lambda: DAttention(32, 32, "P9"), "level='P9'"),
        (lambda: DAttention(32, 32, 3, num_heads=3), "num_heads=3"),
        (lambda: DAttention(32, 32, 3, num_heads=4, groups=3), r"groups=3 is not one of 1, 2, 4"),
        (lambda: DAttention(32, 32, 3, offset_kernel=4), "offset_kernel=4"),
        (lambda: DAttention(32, 32, 3, key_stride=0), "key_stride=0"),
        (lambda: DAttention(32, 32, 3, offset_range=0), "offset_range=0"),
        (lambda: DAttention(32, 32, 3, pos_bias="rpe"), "pos_bias='rpe'.*table.*axial"),
        (lambda: DAttention(32, 0, 3), "DAttention: c2=0"),
        (lambda: DATBlock(32, 32, 0), "DATBlock: n=0"),
        (lambda: DATBlock(32, 32, 1, 3, mlp_ratio=0), "DATBlock: mlp_ratio=0"),
        (lambda: DATBlock(32, 32, 1, 7), r"DATBlock: level=7 .*\[2, 3, 4, 5, 6\]"),
        (lambda: DATBlock(0, 32), "DATBlock: c1=0"),
        (lambda: DAT3(32, 32, 1, True), "DAT3: e=True"),  # e.g. a C2f row's `shortcut` left in the args
        (lambda: DAT3(32, 32, 1, 0.0), "DAT3: e=0.0"),
        (lambda: DAT3(32, 32, 1, 0.5, 9), "DAT3: level=9"),
        (lambda: DAT3(32, 32, 1, 3, 4), "DAT3: e=3 and level=4 are both pyramid levels"),
        (lambda: DAT3(32, 0), "DAT3: c2=0"),
        (lambda: DATLayer(32, 3, drop_path=1.0), "drop_path=1.0"),
    ],
)
def test_invalid_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", ["DAttention-P3", "DAttention-P3-axial", "DATBlock-proj"])
def test_onnx_dynamic_hw_matches_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    m = _perturb(_makers()[name](), std=0.3).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, DAttention):
                mod.conv_offset[-1].weight.normal_(std=0.5)  # real deformation, not the reference grid
    inputs = [torch.randn(*shape) for shape in [(2, 32, 15, 24), (1, 32, 1, 6), (1, 32, 37, 29)]]
    assert_onnx_matches(m, torch.randn(1, 32, 20, 20), inputs, tmp_path / f"{name}.onnx")


def test_onnx_opset_below_16_is_refused(tmp_path):
    m = DATBlock(32, 32, 1, 3).eval()
    with pytest.raises(RuntimeError, match="GridSample needs opset 16.*opset 15"):
        export_onnx(m, tmp_path / "m15.onnx", torch.randn(1, 32, 16, 16), opset=15)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_and_autocast():
    torch.manual_seed(0)
    for name, make in _makers().items():
        m = _perturb(make()).cuda()
        x = torch.randn(2, 32, 40, 30, device="cuda")
        ref = m(x)
        with torch.autocast("cuda", dtype=torch.float16):
            y = m(x)
        assert torch.isfinite(y).all(), name
        y.float().square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters()), name
        assert ((y.float() - ref).norm() / ref.norm()) < 0.02, name
        mh = m.half().eval()
        with torch.no_grad():
            yh = mh(x.half())
        assert yh.dtype == torch.float16 and torch.isfinite(yh).all(), name
        assert ((yh.float() - ref).norm() / ref.norm()) < 0.02, name


@pytest.mark.parametrize(
    "args,e,level",
    [((1024, 1, 5), 0.5, 5), ((256, 1, 3, 0.25), 0.25, 3), ((256, 1, "P4", 1), 1, 4), ((256, 2, 3), 0.5, 3)],
    ids=["[1024, 5]", "[256, 3, 0.25]", "[256, P4, 1]", "n=2 [256, 3]"],
)
def test_dat3_rows_in_the_old_order_build_the_same_block(args, e, level):
    """DAT3 rows of yolo_attn 0.1.0 before commit a8b5350, ``[c2, level, e, ...]``, are read in that order with a
    FutureWarning."""
    c2, n, *extras = args
    with pytest.warns(FutureWarning, match=r"DAT3: e=.* is a pyramid level.*\[c2, e, level"):
        old = DAT3(64, c2, n, *extras)
    new = DAT3(64, c2, n, e, level)
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}
    attn = [m for m in old.modules() if isinstance(m, DAttention)]
    assert len(attn) == n and all(a.level == level for a in attn)
    assert old.cv1.conv.out_channels == int(c2 * e)


def test_dat3_new_order_does_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = DAT3(64, 128, 1, 0.25, "P3")
    assert m.cv1.conv.out_channels == 32 and m.m[0].attn.level == 3
