"""Layer-level tests of the CoAtNet family: MBConv, CoAt (relative-attention transformer blocks) and CoAt3.

Sizes cover the stride probe and Ultralytics' odd cases: 1x1 and 1x5 (THOP's one-stride-tall proxies, P5 of tiny
inputs), 15x20 / 80x60 (rectangular validation), 25x31 (odd both ways, stride 2 must give ceil).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_onnx_matches
from torch import nn

from yolo_attn.nn import attention
from yolo_attn.nn.attention import AttentionLayer, set_attn_impl
from yolo_attn.nn.coat import CoAt, CoAt3, CoAtAttention, CoAtBlock, MBConv

SIZES = [(1, 1), (1, 5), (8, 8), (15, 20), (20, 20), (25, 31), (80, 60)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturb(model: nn.Module, std: float = 0.2) -> nn.Module:
    """Give the zero-initialised residual branches random weights, so gradients reach every parameter."""
    for m in model.modules():
        if isinstance(m, CoAtBlock):
            for layer in (m.attn.proj, m.mlp.fc2):
                nn.init.normal_(layer.weight, std=std)
                nn.init.normal_(layer.bias, std=std)
    return model


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def out_size(n: int, stride: int) -> int:
    return math.ceil(n / stride)


def check_step(model: nn.Module, x: torch.Tensor, stride: int, c2: int) -> None:
    """Forward + backward; finite output of the right shape; every parameter got a finite, non-zero gradient.

    One token (a 1x1 map after the stride) is the exception: a softmax over one key is constant, so the relative
    table (and q, k) get an exactly zero gradient there, correctly.
    """
    y = model(x)
    one_token = y.shape[2] * y.shape[3] == 1
    assert y.shape == (x.shape[0], c2, out_size(x.shape[2], stride), out_size(x.shape[3], stride))
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0 or (one_token and "bias_table" in name), f"{name}: all-zero gradient"
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_mbconv_shapes(size, stride, batch):
    m = MBConv(8, 16, stride, se_ratio=0.25)
    # BatchNorm cannot take batch statistics from one value per channel (as for Ultralytics' own Conv): eval there
    m.train(not (batch == 1 and size == (1, 1)))
    x = torch.randn(batch, 8, *size, requires_grad=True)
    check_step(m, x, stride, 16)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_coat_shapes(size, stride, batch):
    n = 1 if size == (80, 60) else 2  # one block at 80x60 (CPU time); two elsewhere, so stacking is covered
    m = perturb(CoAt(8, 16, n, stride, dim_head=8)).train()
    x = torch.randn(batch, 8, *size, requires_grad=True)
    check_step(m, x, stride, 16)


@pytest.mark.parametrize("size", [(1, 5), (15, 20), (25, 31)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_coat3_shapes(size):
    m = perturb(CoAt3(8, 32, 1, dim_head=8)).train()
    x = torch.randn(2, 8, *size, requires_grad=True)
    check_step(m, x, 1, 32)


def test_mbconv_shortcut_forms():
    assert isinstance(MBConv(16, 16).shortcut, nn.Identity)
    assert [type(m) for m in MBConv(16, 16, 2).shortcut] == [nn.AvgPool2d]
    assert [type(m) for m in MBConv(8, 16, 2).shortcut] == [nn.AvgPool2d, nn.Conv2d]
    assert [type(m) for m in MBConv(8, 16, 1).shortcut] == [nn.Conv2d]
    m = MBConv(8, 16, 2, expand_ratio=4, se_ratio=0.25)
    assert m.expand.conv.stride == (2, 2) and m.dw.conv.stride == (1, 1)  # the paper strides the first 1x1
    assert m.expand.conv.out_channels == 64 and m.se.fc1.out_channels == 4  # 4 * c2, SE to c2 / 4


def test_param_count_independent_of_size():
    for m in (MBConv(8, 16, 2), perturb(CoAt(8, 16, 2, 2, dim_head=8)), CoAt3(8, 32, 1, dim_head=8)):
        before = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        n = sum(p.numel() for p in m.parameters())
        m.train()
        for size in [(1, 1), (8, 8), (25, 31)]:
            m(torch.randn(2, 8, *size)).sum().backward()
        with torch.no_grad():
            m.eval()(torch.randn(1, 8, 40, 30))
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == before
        assert sum(p.numel() for p in m.parameters()) == n
    # the table is (2R+1)^2 per head whatever the map: 4 heads, R = 32
    assert CoAt(128, 128, 1).m[0].attn.rel_pos.bias_table.shape == (4, 65, 65)


# ------------------------------------------------------------------------------------------------ identity at init


@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_coat_identity_at_init(drop_path):
    m = CoAt(32, 32, 3, dim_head=16, drop_path=drop_path)
    x = torch.randn(2, 32, 15, 20)
    for train in (False, True):
        m.train(train)
        assert torch.equal(m(x), x)
    assert CoAt(32, 32, 1, 2, dim_head=16)(x).shape == (2, 32, 8, 10)  # stride 2 down-samples (not identity)


# ------------------------------------------------------------------------------------------- fast path vs its twin


@pytest.mark.parametrize(
    "size,stride,chunk_elems",
    [((1, 5), 1, 512), ((8, 8), 2, None), ((15, 20), 1, None), ((25, 31), 1, 512), ((25, 31), 2, None)],
    ids=["1x5-s1-rowchunks", "8x8-s2", "15x20-s1", "25x31-s1-rowchunks", "25x31-s2"],
)
def test_fast_path_equals_twin(monkeypatch, size, stride, chunk_elems):
    """Every implementation agrees with the plain softmax twin: outputs (train and eval) and gradients."""
    monkeypatch.setattr(attention, "CHUNK_ELEMS", chunk_elems)
    m = perturb(CoAt(16, 32, 2, stride, dim_head=16, max_rel=4)).train()  # small R: clipping is exercised
    x = torch.randn(2, 16, *size)
    w = torch.randn(2, 32, out_size(size[0], stride), out_size(size[1], stride))
    results = {}
    for impl in ("plain", "fused", "chunked", "auto"):
        set_attn_impl(m, impl)
        m.zero_grad()
        xg = x.clone().requires_grad_()
        y = m(xg)
        (y * w).sum().backward()
        with torch.no_grad():
            y_eval = m.eval()(x)
        m.train()
        results[impl] = (y.detach(), y_eval, xg.grad, grads(m))
    y2, e2, gx2, g2 = results.pop("plain")
    for impl, (y1, e1, gx1, g1) in results.items():
        torch.testing.assert_close(y1, y2, atol=1e-5, rtol=0, msg=impl)
        torch.testing.assert_close(e1, e2, atol=1e-5, rtol=0, msg=impl)
        torch.testing.assert_close(gx1, gx2, atol=1e-5, rtol=0, msg=impl)
        for name in g1:  # gradients summed over all pixels reach ~1e2: compare at 1e-5 of their scale
            err = (g1[name] - g2[name]).abs().max() / g2[name].abs().max().clamp_min(1.0)
            assert err < 1e-5, (impl, name, err.item())


def test_training_path_never_builds_n_squared(monkeypatch):
    """The chunked kernel keeps every intermediate far below one B x h x N x N tensor (the twin's unit)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MaxNumel(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    MaxNumel.biggest = max(MaxNumel.biggest, t.numel())
            return out

    monkeypatch.setattr(attention, "CHUNK_ELEMS", 1 << 14)
    b, c, h, w = 2, 32, 24, 24
    m = set_attn_impl(perturb(CoAt(c, c, 1, dim_head=16)).train(), "chunked")  # 2 heads
    x = torch.randn(b, c, h, w, requires_grad=True)
    with MaxNumel():
        m(x).sum().backward()
    full = b * 2 * (h * w) ** 2
    assert MaxNumel.biggest < full / 8, (MaxNumel.biggest, full)


# ----------------------------------------------------------------------------------------------- relative bias


def test_rel_bias_matches_direct_offsets():
    """bias[h, (qy,qx), (ky,kx)] = table[h, clip(ky-qy)+R, clip(kx-qx)+R], computed pair by pair."""
    attn = CoAtAttention(8, 8, num_heads=2, max_rel=2)
    height, width, r = 4, 6, 2
    table = attn.rel_pos.bias_table.detach()
    got = attn.rel_pos(None, (height, width)).dense().detach()[0]
    assert got.shape == (2, height * width, height * width)
    want = torch.empty_like(got)
    for qy in range(height):
        for qx in range(width):
            for ky in range(height):
                for kx in range(width):
                    dy, dx = max(-r, min(r, ky - qy)), max(-r, min(r, kx - qx))
                    want[:, qy * width + qx, ky * width + kx] = table[:, dy + r, dx + r]
    assert torch.equal(got, want)


@pytest.mark.parametrize("impl", attention.ATTN_IMPLS)
def test_block_adds_that_bias(impl):
    """The attention's output equals a by-hand softmax(q k^T / sqrt(d) + bias) v with the direct-offset bias."""
    attn = CoAtAttention(8, 16, num_heads=2, max_rel=3, attn_impl=impl).eval()
    nn.init.normal_(attn.proj.weight, std=0.2)
    nn.init.normal_(attn.rel_pos.bias_table, std=1.0)  # large enough to matter
    height, width, r = 5, 7, 3
    x = torch.randn(1, 8, height, width)
    qkv = attn.qkv(x).flatten(2)  # 1, 3*16, N
    q, k, v = (t.reshape(2, 8, -1).transpose(-1, -2) for t in qkv[0].chunk(3))  # heads, N, 8
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[None, :] - ys[:, None]).clamp(-r, r) + r  # key minus query
    dx = (xs[None, :] - xs[:, None]).clamp(-r, r) + r
    bias = attn.rel_pos.bias_table.detach()[:, dy, dx]  # heads, N, N
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(8) + bias
    o = (logits.softmax(-1) @ v).transpose(-1, -2).reshape(1, 16, height, width)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj(o), atol=1e-5, rtol=1e-5)


def test_rel_bias_translation_invariant_and_clipped():
    attn = CoAtAttention(8, 8, num_heads=1, max_rel=2)
    b = attn.rel_pos(None, (1, 9)).dense().detach()[0, 0]  # 1 x 9 map: bias depends on kx - qx only
    assert torch.equal(b[0, 1], b[4, 5]) and torch.equal(b[2, 0], b[8, 6])
    assert torch.equal(b[0, 2], b[0, 8])  # offsets 2 and 8 share the clipped edge bucket


# ------------------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("kind", ["mbconv", "coat", "coat-stride2", "coat3"])
def test_bf16_autocast_finite(kind):
    make = {
        "mbconv": lambda: MBConv(16, 32, 2),
        "coat": lambda: perturb(CoAt(16, 32, 2, dim_head=16)),
        "coat-stride2": lambda: perturb(CoAt(16, 32, 2, 2, dim_head=16)),
        "coat3": lambda: perturb(CoAt3(16, 64, 1, dim_head=16)),
    }[kind]
    m = make().train()
    x = torch.randn(2, 16, 15, 20)
    ref = m(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 5e-2, rel


@pytest.mark.parametrize("train", [False, True])
def test_pure_bf16_forward(train):
    m = nn.Sequential(MBConv(16, 32, 2), perturb(CoAt(32, 32, 2, dim_head=16))).to(torch.bfloat16).train(train)
    x = torch.randn(2, 16, 15, 21, dtype=torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 32, 8, 11) and torch.isfinite(y).all()
    if train:
        y.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_and_amp():
    m = perturb(CoAt(64, 64, 2, dim_head=32)).cuda().train()
    x = torch.randn(2, 64, 25, 31, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = m(x)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    ref = m.float().eval()(x)
    half = m.half().eval()(x.half())
    assert torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 5e-2 * ref.abs().max()


# ----------------------------------------------------------------------------------------------------------- ONNX


def test_onnx_dynamic_hw(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = nn.Sequential(
        MBConv(8, 16, 2),
        CoAt(16, 32, 1, 2, dim_head=16),
        CoAt(32, 32, 2, dim_head=16),
        CoAt3(32, 32, 1, dim_head=16),
    )
    perturb(model)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    inputs = [torch.randn(*shape) for shape in [(2, 8, 30, 48), (1, 8, 2, 12), (1, 8, 25, 31)]]
    assert_onnx_matches(model.eval(), torch.randn(1, 8, 40, 40), inputs, tmp_path / "coat.onnx")


# ----------------------------------------------------------------------------------------------- API and errors


def test_registered():
    from yolo_attn.registry import get_spec

    assert (get_spec("MBConv").role, get_spec("MBConv").repeats, get_spec("MBConv").family) == ("layer", False, "coat")
    assert (get_spec("CoAt").role, get_spec("CoAt").repeats, get_spec("CoAt").family) == ("insert", True, "coat")
    assert (get_spec("CoAt3").role, get_spec("CoAt3").repeats, get_spec("CoAt3").family) == ("csp", True, "coat")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: MBConv(8, 16, 3), r"MBConv: stride=3 is not one of 1, 2"),
        (lambda: MBConv(8, 16, 1, 0), r"MBConv: expand_ratio=0 is out of range; use a number in \(0.0, inf\)"),
        (lambda: MBConv(8, 16, 1, 4, 1.5), r"se_ratio=1.5 .*\[0.0, 1.0\]"),
        (lambda: MBConv(0, 16), r"MBConv: c1=0"),
        (lambda: CoAt(8, 64, 1, 4), r"CoAt: stride=4"),
        (lambda: CoAt(8, 64, 0), r"CoAt: n=0"),
        (lambda: CoAt(8, 80, 1, 1, 32), r"CoAt: attention width c2 = 80 is not divisible by dim_head=32.*\[8, 16\]"),
        (lambda: CoAt(8, 64, 1, 1, 32, 0.0), r"CoAt: mlp_ratio=0.0"),
        (lambda: CoAt(8, 64, 1, 1, 32, 4.0, 0), r"CoAt: max_rel=0"),
        (lambda: CoAt(8, 64, 1, 1, 32, 4.0, 32, 1.0), r"CoAt: drop_path=1.0"),
        (lambda: CoAt3(8, 96, 1), r"CoAt3: .*int\(96 \* 0.5\) = 48 is not divisible by dim_head=32"),
        (lambda: CoAt3(8, 64, 1, 0.0), r"CoAt3: e=0.0"),
        (lambda: CoAt3(8, 64, 0), r"CoAt3: n=0"),
        (lambda: CoAt3(8, -3), r"CoAt3: c2=-3 must be an integer >= 1"),  # the fuzz row [-1, 3, CoAt3, [-3]]
    ],
)
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_table_in_no_decay_group():
    """Ultralytics' build_optimizer puts the relative table with the biases (no weight decay), on purpose."""
    from ultralytics.engine.trainer import BaseTrainer

    model = nn.Sequential(CoAt(32, 32, 1, dim_head=16), MBConv(32, 32))
    opt = BaseTrainer.build_optimizer(SimpleNamespace(args=SimpleNamespace()), model, name="SGD", lr=0.01)
    names = ("bias", "weight", "bn")  # Ultralytics < 8.4 adds the groups in this order without naming them
    group = {g.get("param_group", names[i]): {id(p) for p in g["params"]} for i, g in enumerate(opt.param_groups)}
    attn = model[0].m[0].attn
    assert id(attn.rel_pos.bias_table) in group["bias"]
    assert id(model[0].m[0].norm1.weight) in group["bn"]  # LayerNorm2d weights: no decay either
    assert id(attn.qkv.weight) in group["weight"]


def test_set_attn_impl_reaches_the_csp_blocks_layers():
    m = CoAt3(8, 64, 2)
    layers = [a for a in m.modules() if isinstance(a, AttentionLayer)]
    assert len(layers) == 2 and all(isinstance(a, CoAtAttention) and a.attn_impl == "auto" for a in layers)
    assert set_attn_impl(m, "plain") is m
    assert {a.attn_impl for a in layers} == {"plain"}
