"""FLOPs at the real input size: a global MHSA at P3 (80x80 at 640) against a closed-form count, Ultralytics beside it."""

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
