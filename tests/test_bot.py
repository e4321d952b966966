"""BoTNet layers: any size, precision and export path; the relative logits and the fast path against oracles."""

import copy
import math

import pytest
import torch
from helpers import assert_onnx_matches
from torch import nn

from yolo_attn.nn.attention import ATTN_IMPLS, resolve_impl, set_attn_impl
from yolo_attn.nn.bot import MHSA, BoT, BoT3, BoTBottleneck, BoTStage
from yolo_attn.registry import get_spec

SIZES = [(1, 1), (1, 5), (8, 8), (15, 20), (20, 20), (25, 31), (80, 60)]


def _blocks():
    """name -> (factory, input channels, output channels, stride); small widths, head dim 8 or 16."""
    return {
        "MHSA": (lambda: MHSA(16, 16, num_heads=2), 16, 16, 1),
        "BoT": (lambda: BoT(16, 16, 2, 1.0, 2), 16, 16, 1),
        "BoT-proj": (lambda: BoT(8, 32, 1, 0.5, 2), 8, 32, 1),
        "BoT3": (lambda: BoT3(16, 32, 1, 0.5, 2), 16, 32, 1),
        "BoTStage": (lambda: BoTStage(16, 32, 2, 2, 2, 0.5), 16, 32, 2),
    }


def _wake(model: nn.Module) -> nn.Module:
    """Give the zero-initialised last BNs a non-zero gamma so gradients reach every parameter."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.normal_(1.0, 0.2)
    return model


def _randomise_tables(model: nn.Module, std: float = 0.5) -> nn.Module:
    """Larger relative embeddings than the init, so position errors cannot hide under the content term."""
    for m in model.modules():
        if isinstance(m, MHSA):
            with torch.no_grad():
                m.rel_pos.bias_h.normal_(0, std)
                m.rel_pos.bias_w.normal_(0, std)
    return model


def _out_size(n: int, stride: int) -> int:
    return -(-n // stride)


# every block at every size; the 80x60 map (4800 tokens, the P3 of a 640x480 input) only for the attention layer and
# BoT3 (the wrappers run the same MHSA), to keep the file fast on CPU
CASES = [(n, hw) for n in _blocks() for hw in SIZES if hw != (80, 60) or n in ("MHSA", "BoT3")]


@pytest.mark.parametrize("name,hw", CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
@pytest.mark.parametrize("batch", [1, 2])
def test_forward_backward_any_size(name, hw, batch):
    torch.manual_seed(0)
    make, c1, c2, stride = _blocks()[name]
    model = _wake(make())
    n_params = sum(p.numel() for p in model.parameters())
    keys = list(model.state_dict())
    H, W = hw
    # BatchNorm cannot train on one value per channel; Ultralytics never trains at 1x1 with batch 1 either.
    model.train(batch * H * W > 1)
    x = torch.randn(batch, c1, H, W, requires_grad=True)
    y = model(x)
    assert y.shape == (batch, c2, _out_size(H, stride), _out_size(W, stride))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        if H * W > 1 and "rel_pos" not in pname:  # 1 token: only the offset-0 embedding is used
            assert p.grad.abs().sum() > 0, f"{name}: {pname} got a zero gradient"
    # nothing is sized by the input: same parameters and state before and after any size
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert list(model.state_dict()) == keys


def test_parameter_count_is_size_free():
    m = MHSA(64, 64, num_heads=4, max_rel=32)
    # q, k, v projections + two (2R+1) x d tables, whatever the input
    assert sum(p.numel() for p in m.parameters()) == 3 * 64 * 64 + 2 * 65 * 16
    for hw in [(1, 1), (8, 8), (40, 30), (3, 97)]:
        m(torch.randn(1, 64, *hw))
    assert sum(p.numel() for p in m.parameters()) == 3 * 64 * 64 + 2 * 65 * 16
    assert not list(m.buffers())


def _loop_logits(m: MHSA, x: torch.Tensor) -> torch.Tensor:
    """Paper logits by a direct loop over query and key positions: (B, h, N, N)."""
    B, _, H, W = x.shape
    q, k = (f(x).reshape(B, m.num_heads, m.dim_head, H, W) for f in (m.q, m.k))
    R = m.rel_pos.max_rel
    out = torch.zeros(B, m.num_heads, H * W, H * W, dtype=torch.float64)
    q, k = q.double() / math.sqrt(m.dim_head), k.double()
    rh, rw = m.rel_pos.bias_h.double(), m.rel_pos.bias_w.double()
    for yi in range(H):
        for xi in range(W):
            for yj in range(H):
                for xj in range(W):
                    r = rh[min(max(yj - yi, -R), R) + R] + rw[min(max(xj - xi, -R), R) + R]
                    qi = q[:, :, :, yi, xi]  # B, h, d
                    out[:, :, yi * W + xi, yj * W + xj] = (qi * (k[:, :, :, yj, xj] + r)).sum(-1)
    return out


@pytest.mark.parametrize("hw,max_rel", [((3, 4), 32), ((5, 7), 2), ((1, 6), 1)])
def test_output_matches_loop_oracle(monkeypatch, hw, max_rel):
    """softmax_j(q^.k + q^.r_h + q^.r_w) v_j, q^ = q / sqrt(d) before both terms, offsets clipped at max_rel."""
    torch.manual_seed(1)
    from yolo_attn.nn import attention

    monkeypatch.setattr(attention, "CHUNK_ELEMS", 8)  # many chunks
    m = _randomise_tables(MHSA(16, 16, num_heads=2, max_rel=max_rel)).double()
    x = torch.randn(2, 16, *hw, dtype=torch.float64)
    logits = _loop_logits(m, x)
    v = m.v(x).reshape(2, 2, 8, -1).transpose(-1, -2)  # B, h, N, d
    ref = (logits.softmax(-1) @ v).transpose(-1, -2).reshape(2, 16, *hw)
    for impl in ATTN_IMPLS:
        set_attn_impl(m, impl)
        torch.testing.assert_close(m(x), ref, atol=1e-10, rtol=1e-10, msg=impl)
    # the key-augmented SDPA call that "fused" makes on CUDA, run here on CPU
    B, H, W = 2, *hw
    q = (m.q(x) * m.scale).reshape(B, 2, 8, H * W).transpose(-1, -2)
    k = m.k(x).reshape(B, 2, 8, H * W).transpose(-1, -2)
    out = attention._sdpa_lowrank(q, k, v, *m.rel_pos(q, hw).lowrank())
    torch.testing.assert_close(out.transpose(-1, -2).reshape(2, 16, *hw), ref, atol=1e-10, rtol=1e-10)


def test_rel_logits_match_timm():
    """Position logits equal timm's rel->abs PosEmbedRel where both apply (max_rel >= H - 1, W - 1)."""
    from timm.layers.bottleneck_attn import PosEmbedRel

    torch.manual_seed(2)
    H, W, d, R = 6, 9, 16, 32
    m = _randomise_tables(MHSA(32, 32, num_heads=2, max_rel=R))
    ref = PosEmbedRel((H, W), dim_head=d, scale=1.0)
    with torch.no_grad():  # timm's table covers offsets -(n-1)..(n-1); ours -R..R
        ref.height_rel.copy_(m.rel_pos.bias_h[R - H + 1 : R + H])
        ref.width_rel.copy_(m.rel_pos.bias_w[R - W + 1 : R + W])
    q = torch.randn(2, 2, H, W, d)
    ours = m.rel_pos(q.reshape(2, 2, H * W, d), (H, W)).dense()
    theirs = ref(q.reshape(4, H * W, d)).reshape(2, 2, H * W, H * W)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(1, 5), (8, 8), (15, 20), (25, 31)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", ["chunked", "fused", "auto"])
def test_fast_path_equals_twin(hw, impl):
    """SDPA paths == plain softmax twin, outputs and gradients."""
    torch.manual_seed(3)
    fast = _randomise_tables(MHSA(32, 32, num_heads=4, max_rel=8, attn_impl=impl))
    twin = set_attn_impl(copy.deepcopy(fast), "plain")
    x = torch.randn(2, 32, *hw)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), twin(x2)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=0)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)
    for (n, p1), p2 in zip(fast.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4, msg=n)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("impl,n2", [("auto", False), ("chunked", False), ("fused", True), ("plain", True)])
def test_fast_paths_never_hold_n_by_n(impl, n2):
    """CPU training step at 48x40 (N = 1920): the chunked kernel (auto's choice at this size) never holds a
    (B, h, N, N) tensor; the dense-mask SDPA and the twin do."""
    m = MHSA(32, 32, num_heads=2, attn_impl=impl)
    x = torch.randn(2, 32, 48, 40, requires_grad=True)
    assert resolve_impl("auto", "cpu", True, 2 * 2 * 1920 * 1920) == "chunked"
    with _LargestTensor() as probe:
        m(x).square().mean().backward()
    n_by_n = 2 * 2 * 1920 * 1920
    assert (probe.numel >= n_by_n) == n2, probe.numel


def test_attention_not_saturated_at_init():
    """q is scaled: at init (C = 256, 20x20) the attention is near-uniform, unlike the unscaled community copies."""
    torch.manual_seed(4)
    m = MHSA(256, 256, num_heads=4)
    x = torch.randn(1, 256, 20, 20)
    with torch.no_grad():
        B, _, H, W = x.shape
        q = (m.q(x) * m.scale).reshape(B, 4, 64, H * W).transpose(-1, -2)  # B, h, N, d
        k = m.k(x).reshape(B, 4, 64, H * W)  # B, h, d, N
        logits = q @ k + m.rel_pos(q, (H, W)).dense()
        p = logits.softmax(-1)
    assert p.max(-1).values.mean() < 0.05  # uniform: 1/400; the unscaled copies reach ~0.6
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    assert entropy > 0.9 * math.log(H * W)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_insert_block_is_identity_at_init(mode):
    torch.manual_seed(5)
    m = BoT(32, 32, 2, 0.5, 4)
    m.train(mode == "train")
    for hw in [(1, 5), (15, 20), (8, 8)]:
        x = torch.randn(2, 32, *hw)
        assert torch.equal(m(x), x)
    single = BoTBottleneck(32, 32, 1, 0.5, 4, out_act=False).train(mode == "train")
    x = torch.randn(2, 32, 9, 7)
    assert torch.equal(single(x), x)
    assert BoT(16, 32, 1, 0.5, 4)(torch.randn(1, 16, 5, 6)).shape == (1, 32, 5, 6)  # projects first


def test_stride2_rounds_up_like_conv():
    m = BoTBottleneck(16, 32, 2, 0.5, 2).eval()
    for (H, W), (h, w) in {(15, 20): (8, 10), (1, 5): (1, 3), (1, 1): (1, 1), (7, 7): (4, 4)}.items():
        assert m(torch.randn(1, 16, H, W)).shape == (1, 32, h, w)


def test_bottleneck_paper_structure():
    """Three nonlinearities, BN after MHSA, projection shortcut only when the shape changes, last BN gamma = 0."""
    m = BoTBottleneck(64, 256, stride=2, e=0.25, num_heads=4, act=nn.ReLU())
    assert isinstance(m.cv1.act, nn.ReLU) and isinstance(m.act, nn.ReLU) and isinstance(m.out_act, nn.ReLU)
    assert isinstance(m.bn, nn.BatchNorm2d) and m.mhsa.v.out_channels == 64 and m.mhsa.dim_head == 16
    assert m.shortcut.conv.stride == (2, 2) and isinstance(m.shortcut.act, nn.Identity)
    assert torch.count_nonzero(m.cv2.bn.weight) == 0
    assert isinstance(BoTBottleneck(64, 64, 1, 0.25, 4).shortcut, nn.Identity)
    assert isinstance(BoTBottleneck(64, 64, 1, 0.25, 4, shortcut_act=True).shortcut, nn.Identity)
    assert isinstance(BoTBottleneck(32, 64, 1, 0.25, 4, shortcut_act=True).shortcut.act, nn.SiLU)


def test_registration_and_names():
    assert get_spec("MHSA").role == "layer" and not get_spec("MHSA").repeats
    assert get_spec("BoT").role == "insert" and get_spec("BoT").repeats
    assert get_spec("BoT3").role == "csp" and get_spec("BoT3").repeats
    assert get_spec("BoTStage").role == "layer" and get_spec("BoTStage").repeats
    assert {get_spec(n).family for n in ("MHSA", "BoT", "BoT3", "BoTStage")} == {"bot"}
    # tables go to Ultralytics' no-decay group (parameter names containing "bias")
    names = [n for n, _ in BoT3(64, 64, 1).named_parameters() if "rel" in n]
    assert names and all("bias" in n for n in names)
    assert set(BoT3(64, 64, 1).m[0].mhsa.state_dict()) == {
        "q.weight",
        "k.weight",
        "v.weight",
        "rel_pos.bias_h",
        "rel_pos.bias_w",
    }


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: MHSA(30, 30, num_heads=4), r"MHSA: .* 30 .*num_heads=4.*valid num_heads for 30: \[1, 2, 3, 5, 6"),
        (lambda: MHSA(32, 32, num_heads=0), r"MHSA: num_heads=0"),
        (lambda: MHSA(32, 32, attn_impl="flash"), r"attn_impl='flash' .*'auto', 'fused', 'chunked', 'plain'"),
        (lambda: MHSA(32, 32, max_rel=-1), r"MHSA: max_rel=-1"),
        (lambda: MHSA(0, 32), r"MHSA: c1=0 must be an integer >= 1"),
        (lambda: BoT3(64, 100, 1, 0.5, 4), r"BoT3: .*int\(100 \* 0.5\) = 50 .*num_heads=4.*valid num_heads for 50"),
        (lambda: BoT3(64, 64, 0), r"BoT3: n=0"),
        (lambda: BoT3(64, 64, 1, 0), r"BoT3: e=0"),
        (lambda: BoT3(64, -8), r"BoT3: c2=-8 must be an integer >= 1"),
        (lambda: BoT(64, 64, 1, 0.5, 3), r"BoT: .*int\(64 \* 0.5\) = 32 .*num_heads=3"),
        (lambda: BoTStage(64, 128, 3, 3), r"BoTStage: s=3 is not one of 1, 2"),
        (lambda: BoTStage(64, 100, 3, 2, 4, 0.25), r"BoTStage: .*int\(100 \* 0.25\) = 25 .*num_heads=4"),
        (lambda: BoTBottleneck(64, 64, 3), r"BoTBottleneck: stride=3 is not one of 1, 2"),
    ],
)
def test_invalid_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", ["MHSA", "BoT3", "BoTStage"])
def test_bf16_autocast_cpu(name):
    torch.manual_seed(6)
    make, c1, _, _ = _blocks()[name]
    model = _wake(make())
    x = torch.randn(2, c1, 15, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x.requires_grad_())
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # accuracy in eval mode: train-mode BN divides by the batch std of a near-constant attention output at init,
    # which magnifies any rounding
    model.eval()
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert (y.float() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pure_low_precision_cpu(dtype):
    """``model.half()`` / ``.to(bfloat16)`` without autocast (Ultralytics' half predict/val, EMA checkpoints)."""
    torch.manual_seed(7)
    model = _wake(BoT3(16, 32, 1, 0.5, 2)).eval()
    x = torch.randn(1, 16, 15, 20)
    ref = model(x)
    low = copy.deepcopy(model).to(dtype)
    assert all(p.dtype == dtype for p in low.parameters())
    try:
        y = low(x.to(dtype))
    except RuntimeError as e:  # some fp16 CPU kernels may be missing in a torch build
        if dtype is torch.float16 and "not implemented" in str(e):
            pytest.skip(f"fp16 on CPU: {e}")
        raise
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert (y.float() - ref).norm() / ref.norm() < 5e-2


def _onnx_roundtrip(model, export_hw, check_hws, tmp_path, c1):
    inputs = [torch.randn(b, c1, *hw) for b, hw in check_hws]
    assert_onnx_matches(model.eval(), torch.randn(1, c1, *export_hw), inputs, tmp_path / "m.onnx")


@pytest.mark.parametrize("impl", ["auto", "chunked", "plain"])  # every impl but plain exports the dense-mask SDPA
def test_onnx_dynamic_bot3(tmp_path, impl):
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), _randomise_tables(_wake(BoT3(32, 32, 2, 0.5, 2, 4))), nn.Conv2d(32, 8, 1)
    )
    set_attn_impl(model, impl)
    _onnx_roundtrip(model, (20, 20), [(1, (15, 24)), (2, (1, 6)), (1, (33, 9))], tmp_path, 8)


def test_onnx_dynamic_stride2_stage(tmp_path):
    torch.manual_seed(9)
    model = _randomise_tables(_wake(BoTStage(16, 32, 2, 2, 2, 0.5)))
    _onnx_roundtrip(model, (16, 16), [(1, (15, 24)), (1, (1, 7))], tmp_path, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["fused", "chunked"])
def test_cuda_half_and_autocast(impl):
    torch.manual_seed(10)
    model = _wake(BoT3(64, 64, 1, 0.5, 4)).cuda()
    set_attn_impl(model, impl)
    twin = set_attn_impl(copy.deepcopy(model), "plain")
    for hw in [(1, 5), (20, 20), (40, 30), (25, 31), (20, 240)]:  # 20x240: too wide to fold into q and k
        x = torch.randn(2, 64, *hw, device="cuda")
        with torch.no_grad():
            ref = twin(x)
            torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.float16):
            y = model(x)
        y.float().square().mean().backward()
        assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in model.parameters())
        half = copy.deepcopy(model).half().eval()
        with torch.no_grad():
            y = half(x.half())
        assert torch.isfinite(y).all() and (y.float() - ref).norm() / ref.norm() < 2e-2
