"""FLOPs at the real input size: a global MHSA at P3 (80x80 at 640) against a closed-form count, Ultralytics beside it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yolo_attn import integration, registry
from yolo_attn.flops import count_flops, model_flops, ultralytics_flops


def thop_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ultralytics-thop")
    except PackageNotFoundError:
        return "not installed"


class FlopsMHSA(nn.Module):
    """Test-only global multi-head self-attention over all H*W positions (q, k, v from one 1x1 conv, 1x1 out)."""

    def __init__(self, c1: int, c2: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(c1, 3 * c2, 1, bias=False)
        self.proj = nn.Conv2d(c2, c2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # each B, C, N
        q, k, v = (t.unflatten(1, (self.heads, -1)).transpose(-2, -1) for t in (q, k, v))  # B, heads, N, d
        y = F.scaled_dot_product_attention(q, k, v)  # B, heads, N, d
        return self.proj(y.transpose(-2, -1).reshape(b, -1, h, w))


def _with_conv_closed_form(model: nn.Module, fn):
    """Run ``fn()`` while hooks add up, per conv, 2 * out elements * (c_in / groups) * k_h * k_w (live shapes)."""
    total = []

    def hook(m, inp, out):
        total.append(2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return result, sum(total)


def _mhsa_model():
    """yolov8n with the P3 output C2f (row 15, 80x80 at 640) replaced by one global MHSA: indices stay the same."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = yaml_model_load("yolov8n.yaml")
    assert d["head"][15 - len(d["backbone"])][2] == "C2f"
    d["head"][15 - len(d["backbone"])] = [-1, 1, "FlopsMHSA", [256, 4]]
    return DetectionModel(d, ch=3, nc=80, verbose=False)


def test_flops_global_mhsa_at_80x80_matches_closed_form(capsys):
    torch.manual_seed(0)
    with integration.registered():
        with registry.temporary(FlopsMHSA, role="insert"):
            integration.register()  # sync the temporary name into ultralytics.nn.tasks
            model = _mhsa_model()
        integration.register()  # and out again
    attn = model.model[15]
    assert isinstance(attn, FlopsMHSA) and attn.proj.out_channels == 64  # 256 * width 0.25
    n, c = 80 * 80, attn.proj.out_channels
    # one forward pass at 640 serves both counts: the conv hooks fire inside FlopCounterMode's pass
    ours, convs = _with_conv_closed_form(model, lambda: count_flops(model, 640))
    analytic = convs + 4 * n * n * c  # QK^T and PV: N*N*c multiply-adds each, 2 FLOPs per MAC
    ultra = ultralytics_flops(model, 640)

    assert abs(ours["gflops"] * 1e9 - analytic) / analytic < 0.01, (ours, analytic / 1e9)
    # SDPA is counted whether it runs as one kernel or decomposes into bmm (the CPU math path)
    attention = sum(v for k, v in ours["by_op"].items() if k != "convolution")
    assert round(attention * 1e9) == 4 * n * n * c
    assert ours["gflops"] > 19  # the attention alone is 10.5 GFLOPs: no longer "nearly free"
    with capsys.disabled():
        print(
            f"\n[flops] yolov8n + global MHSA at P3 (80x80) @640: analytic {analytic / 1e9:.2f}, "
            f"ours {ours['gflops']:.2f}, Ultralytics (ultralytics-thop {thop_version()}) {ultra:.2f} GFLOPs"
        )


def test_flops_baseline_agrees_with_ultralytics():
    """Plain convolutions: both figures agree (fused model, 2 FLOPs per MAC), so any gap on a variant is attention."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", ch=3, nc=80, verbose=False)
    r = model_flops(model, 320)
    assert r["gflops_ultralytics"] > 0
    assert abs(r["gflops"] - r["gflops_ultralytics"]) / r["gflops"] < 0.01, r


def test_flops_rules_grid_sample_and_bilinear():
    class Sampler(nn.Module):
        def forward(self, x):
            grid = torch.zeros(x.shape[0], 5, 7, 2)
            a = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
            b = F.grid_sample(x, grid, mode="nearest", align_corners=False)
            c = F.interpolate(x, scale_factor=2, mode="bilinear")
            return a, b, c

    r = count_flops(Sampler(), (2, 3, 8, 8))
    assert r["by_op"]["grid_sampler_2d"] * 1e9 == 8 * 2 * 3 * 5 * 7  # nearest adds nothing
    assert r["by_op"]["upsample_bilinear2d"] * 1e9 == 8 * 2 * 3 * 16 * 16


def test_flops_matmul_and_einsum_counted():
    class Products(nn.Module):
        def forward(self, x):  # x: B, N, d
            return x @ x.transpose(1, 2), torch.einsum("bnd,bmd->bnm", x, x)

    r = count_flops(Products(), (2, 16, 8))
    assert r["gflops"] * 1e9 == 2 * (2 * 2 * 16 * 16 * 8)


# --- closed forms per family, on whatever torch is installed --------------------------------------------------------
def _attention_closed_form(model: nn.Module, fn):
    """Run ``fn()`` while hooks add, per attention layer, 4 * B * N * M * (heads * dim_head) from the live shapes.

    N is the number of queries (every pixel of the layer's input), M the number of keys: every pixel for BoTNet's
    MHSA, CoAtNet's attention and Ultralytics' own C2PSA ``Attention`` (YOLO11), one per key cell
    (``ceil(H / r) x ceil(W / r)``) for DAT.
    """
    from ultralytics.nn.modules.block import Attention

    from yolo_attn.nn import MHSA, CoAtAttention, DAttention

    total = []

    def hook(m, inp, out):
        b, _, h, w = inp[0].shape
        n = h * w
        keys = n
        if isinstance(m, Attention):  # QK^T over key_dim, PV over head_dim
            total.append(2 * b * n * n * m.num_heads * (m.key_dim + m.head_dim))
            return
        if isinstance(m, DAttention):
            r = m.key_stride
            keys = -(-h // r) * -(-w // r)
        total.append(4 * b * n * keys * m.num_heads * m.dim_head)

    kinds = (MHSA, DAttention, CoAtAttention, Attention)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return result, sum(total)


def _extras_closed_form(model: nn.Module, fn):
    """Products besides QK^T / PV that the blocks run: MHSA's position logits, DAT's bilinear sampling."""
    from yolo_attn.nn import MHSA, DAttention

    total = []

    def hook(m, inp, out):
        b, _, h, w = inp[0].shape
        if isinstance(m, MHSA):  # q . r_h for every key row and q . r_w for every key column
            total.append(2 * b * h * w * (h + w) * m.num_heads * m.dim_head)
        else:  # keys/values sampled at Hk x Wk points (8 FLOPs per output element), bias table read at N x M points
            r = m.key_stride
            keys = -(-h // r) * -(-w // r)
            total.append(8 * b * m.proj_q.out_channels * keys)
            if m.pos_bias == "table":
                total.append(8 * b * m.num_heads * h * w * keys)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (MHSA, DAttention))]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return result, sum(total)


def _family_attention_layers():
    from yolo_attn.nn import MHSA, CoAt, DAttention

    return {
        "bot": lambda: MHSA(64, 64, num_heads=4),
        "dat": lambda: DAttention(64, 64, level=4),
        "coat": lambda: CoAt(64, 64),
    }


@pytest.mark.parametrize("family", ["bot", "dat", "coat"])
def test_attention_flops_equal_closed_form(family):
    """One layer per family, CPU: our count is exactly convolutions + 4 B N M d + the family's extra products."""
    torch.manual_seed(0)
    layer = _family_attention_layers()[family]().eval()
    shape = (2, 64, 10, 12)
    run = lambda: count_flops(layer, shape)  # noqa: E731
    ((ours, convs), attention), extras = (
        _extras_closed_form(layer, lambda: _attention_closed_form(layer, lambda: _with_conv_closed_form(layer, run))),
    )[0]
    assert attention > 0
    assert round(ours["gflops"] * 1e9) == convs + attention + extras, (ours["by_op"], convs, attention, extras)


@pytest.mark.parametrize(
    "op", ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention"]
)
def test_every_sdpa_kernel_has_a_formula(op):
    """Formulas are registered for the SDPA overloads whether or not the installed torch's FlopCounterMode has one."""
    from yolo_attn.flops import FLOP_RULES, SDPA_BACKWARD_OPS, SDPA_FORWARD_OPS

    assert op in SDPA_FORWARD_OPS and f"{op}_backward" in SDPA_BACKWARD_OPS
    packet = getattr(torch.ops.aten, op)
    assert packet in FLOP_RULES
    # the formula: QK^T and PV of (B, h, N, d) x (B, h, M, d)
    assert FLOP_RULES[packet]((2, 4, 10, 8), (2, 4, 6, 8), (2, 4, 6, 8), out_shape=None) == 4 * 2 * 4 * 10 * 6 * 8


def test_private_cpu_flash_kernel_is_counted():
    """The kernel SDPA runs on CPU (torch 2.14 has no formula for it) counts QK^T and PV, once."""
    q = torch.randn(2, 4, 30, 16)

    class Flash(nn.Module):
        def forward(self, x):
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(x, x, x, 0.0, False)[0]

    class Public(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    for module in (Flash(), Public()):
        r = count_flops(module, tuple(q.shape))
        assert round(r["gflops"] * 1e9) == 4 * 2 * 4 * 30 * 30 * 16, r


HEADLINE = ["yolov8-bot.yaml", "yolov8-dat.yaml", "yolov8-coat.yaml", "yolov11-bot.yaml", "yolov11-dat.yaml"]


@pytest.mark.parametrize("cfg", [*HEADLINE, "yolov11-coat.yaml"])
def test_headline_cfg_flops_within_one_percent_of_closed_form(registered, cfg, capsys):
    """`yolo-attn flops` of each headline cfg at 640 (scale n) is within 1% of convolutions + 4 N M d per attention."""
    from pathlib import Path

    from ultralytics import YOLO

    model = YOLO(str(Path(__file__).resolve().parents[1] / "cfg" / cfg)).model.eval()
    run = lambda: count_flops(model, 640)  # noqa: E731
    (ours, convs), attention = _attention_closed_form(model, lambda: _with_conv_closed_form(model, run))
    closed = convs + attention
    assert attention > 0
    assert abs(ours["gflops"] * 1e9 - closed) / closed < 0.01, (ours["gflops"], closed / 1e9)
    with capsys.disabled():
        print(
            f"\n[flops] {cfg} (n) @640: closed form {closed / 1e9:.3f} (attention {attention / 1e9:.3f}), "
            f"ours {ours['gflops']:.3f}, Ultralytics {ultralytics_flops(model, 640):.3f} GFLOPs"
        )
