"""fp16 safety, checked on CPU: what AMP training (autocast fp16) and half-precision inference (``model.half()``) do.

Tolerances (stated once, used below): a block's fp16 output is within 1e-2 of its fp32 output, relative to the
output's largest magnitude (measured on torch 2.14.1 CPU over every case here: at most 3.7e-3, DAttention at 8x8); a model's within 5e-2 (a dozen fp16
layers in a row). The adversarial core case compares against an fp64 computation from the same fp16 inputs, to
2e-3 of the values' largest magnitude: only the precision of the computation is tested, not the rounding of the
inputs.

Every attention block reaches its softmax through :func:`yolo_attn.nn.attention.attend` (checked below with a spy),
so the adversarial case on ``attend``, for every implementation and every position-bias module, covers every block:
queries whose *unscaled* dot products with the keys exceed fp16's range (65504), which a block that computed
``(q k^T) * scale`` in fp16 turns into inf and then NaN. The last test shows the check catches exactly that.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils._pytree import tree_leaves

from yolo_attn import integration, registry
from yolo_attn.bench import _build
from yolo_attn.nn import attention
from yolo_attn.nn.attention import ATTN_IMPLS, AttentionLayer, attend, set_attn_impl
from yolo_attn.nn.rel_pos import BoTRelPos, CoAtRelPos, DATRelPos

FP16_MAX = torch.finfo(torch.float16).max
BLOCK_TOL, MODEL_TOL, CORE_TOL = 1e-2, 5e-2, 2e-3
C = 64  # channels: CoAt3 needs int(c2 * e) divisible by its head size 32
SIZES = [(13, 17), (8, 8)]  # odd and even; both levels' strides divide neither exactly

integration.register()
SPECS = [sp for sp in registry.specs() if sp.family]  # the package's blocks (and plugins'), not the Classifier head


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def _block(spec: registry.BlockSpec, impl: str, c: int = C) -> torch.nn.Module:
    torch.manual_seed(0)
    m = _build(spec, c, min(spec.bench_levels or (5,)), None)
    set_attn_impl(m, impl)
    with torch.no_grad():  # inserted blocks start as identity: perturb so the attention branch counts
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def _impls(spec) -> list[str]:
    """Every implementation for blocks with attention; one run for blocks without (MBConv)."""
    m = _build(spec, C, min(spec.bench_levels or (5,)), None)
    return list(ATTN_IMPLS) if any(isinstance(x, AttentionLayer) for x in m.modules()) else ["auto"]


CASES = [pytest.param(sp, impl, id=f"{sp.name}-{impl}") for sp in SPECS for impl in _impls(sp)]


@pytest.mark.parametrize(("spec", "impl"), CASES)
def test_block_autocast_fp16_forward_backward(spec, impl):
    """Under ``torch.autocast("cpu", float16)``: forward close to fp32 at every size, backward finite."""
    m = _block(spec, impl)
    for h, w in SIZES:
        x = torch.randn(2, C, h, w)
        m.eval()
        with torch.no_grad():
            ref = _first(m(x))
            with torch.autocast("cpu", dtype=torch.float16):
                y = _first(m(x))
        assert torch.isfinite(y).all(), f"{spec.name} ({impl}) at {h}x{w}: non-finite output under fp16 autocast"
        assert _rel(y, ref) < BLOCK_TOL, f"{spec.name} ({impl}) at {h}x{w}: {_rel(y, ref):.2e} from fp32"
        m.train()
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = _first(m(x))
        out.float().square().mean().backward()
        for name, p in m.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"{spec.name} ({impl}): grad of {name} not finite"


@pytest.mark.parametrize(("spec", "impl"), CASES)
def test_block_half_weights(spec, impl):
    """``.half()`` weights and inputs, no autocast (Ultralytics' ``half=True`` predict/val): finite, close, fp16 out."""
    m = _block(spec, impl).eval()
    half = copy.deepcopy(m).half()
    for h, w in SIZES:
        x = torch.randn(2, C, h, w)
        with torch.no_grad():
            ref, y = _first(m(x)), _first(half(x.half()))
        assert y.dtype == torch.float16
        assert torch.isfinite(y).all(), f"{spec.name} ({impl}) at {h}x{w}: non-finite output with half weights"
        assert _rel(y, ref) < BLOCK_TOL, f"{spec.name} ({impl}) at {h}x{w}: {_rel(y, ref):.2e} from fp32"


@pytest.mark.parametrize(
    "cfg", ["yolov8-bot", "yolov8-dat", "yolov8-coat", "yolov11-bot", "yolov11-dat", "yolov11-coat"]
)
def test_headline_model_fp16(registered, cfg):
    """A headline cfg at scale n: autocast forward+backward finite, ``.half()`` inference close to fp32."""
    from conftest import ROOT
    from ultralytics import YOLO

    net = YOLO(str(ROOT / "cfg" / f"{cfg}.yaml")).model  # scale n
    torch.manual_seed(0)
    x = torch.rand(1, 3, 96, 128)
    net.train()
    with torch.autocast("cpu", dtype=torch.float16):
        out = net(x)
    loss = sum(o.float().square().mean() for o in tree_leaves(out) if torch.is_tensor(o))  # 8.4: a dict, 8.3: a list
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        ref = _first(net(x))
        y = _first(copy.deepcopy(net).half()(x.half()))
    assert torch.isfinite(y).all() and _rel(y, ref) < MODEL_TOL, f"{cfg}: {_rel(y, ref):.2e} from fp32"


# ------------------------------------------------------------------------------------------ the adversarial case
def _bias(kind: str | None, q: torch.Tensor, size: tuple[int, int]):
    heads, d = q.shape[1], q.shape[-1]
    torch.manual_seed(1)
    if kind is None:
        return None
    pos = {"bot": lambda: BoTRelPos(d, max_rel=8), "coat": lambda: CoAtRelPos(heads, max_rel=8)}.get(kind)
    pos = pos() if pos else DATRelPos(heads, max_rel=8)
    with torch.no_grad():
        for p in pos.parameters():
            p.normal_(0, 1.0 / math.sqrt(d))  # a bias of order one: lost if added to logits of 1e4 in fp16
    key_points = None
    if kind == "dat":
        h, w = size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        key_points = torch.stack([xs, ys], -1).expand(q.shape[0], h, w, 2)  # keys on the query grid
    return pos(q, size, key_points)


def _adversarial(seed: int = 0, d: int = 32, size=(6, 7)):
    """fp16 q (scaled), k, v whose unscaled dot products exceed fp16's range, and the scale."""
    g = torch.Generator().manual_seed(seed)
    n = size[0] * size[1]
    scale = d**-0.5
    q_raw = 60 * torch.randn(2, 2, n, d, generator=g).sign()  # |q . k| up to d * 60 * 60 = 115200
    k = 60 * torch.randn(2, 2, n, d, generator=g).sign()
    k[..., 0, :] = q_raw[..., 0, :]  # at least one pair at the top of the range
    v = torch.randn(2, 2, n, d, generator=g)
    assert (q_raw @ k.transpose(-2, -1)).abs().max() > FP16_MAX
    return (q_raw * scale).half(), k.half(), v.half(), scale


def _reference(q, k, v, bias) -> torch.Tensor:
    logits = q.double() @ k.double().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.dense().double()
    return logits.softmax(-1) @ v.double()


def _check(fn, kind: str | None, autocast: bool) -> str | None:
    """None when ``fn(q, k, v, bias)`` is finite and within CORE_TOL of fp64 on the adversarial inputs; else why."""
    q, k, v, _ = _adversarial()
    bias = _bias(kind, q.float(), (6, 7))
    with torch.no_grad():
        ctx = torch.autocast("cpu", dtype=torch.float16) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            out = fn(q, k, v, bias)
        ref = _reference(q, k, v, bias)
    if not torch.isfinite(out).all():
        return "non-finite output"
    err = (out.double() - ref).abs().max().item() / ref.abs().max().item()
    return None if err < CORE_TOL else f"{err:.2e} from fp64"


@pytest.mark.parametrize("autocast", [False, True], ids=["half", "autocast"])
@pytest.mark.parametrize("kind", [None, "bot", "coat", "dat"])
@pytest.mark.parametrize("impl", ATTN_IMPLS)
def test_attend_survives_logits_beyond_fp16(impl, kind, autocast, monkeypatch):
    """Unscaled q . k beyond 65504 and a bias of order one: every implementation is finite and keeps the bias."""
    monkeypatch.setattr(attention, "CHUNK_ELEMS", 64)  # several chunks in the chunked kernel
    problem = _check(lambda q, k, v, b: attend(q, k, v, b, impl), kind, autocast)
    assert problem is None, f"attend(impl={impl!r}, bias={kind}): {problem}"


def test_the_adversarial_case_catches_fp16_logits():
    """Negative control: logits computed in fp16 before scaling overflow; logits in fp16 after it lose the bias."""

    def unscaled_fp16(q, k, v, bias):
        d = q.shape[-1]
        s = ((q * math.sqrt(d)) @ k.transpose(-2, -1)) * d**-0.5  # fp16 product: inf
        return (s + (0 if bias is None else bias.dense().half())).softmax(-1) @ v

    def scaled_fp16(q, k, v, bias):  # q pre-scaled, but logits and bias added in fp16 (|logit| ~ 2e4, ulp 16)
        return ((q @ k.transpose(-2, -1)) + bias.dense().half()).softmax(-1) @ v

    assert _check(unscaled_fp16, None, autocast=False) == "non-finite output"
    assert _check(scaled_fp16, "coat", autocast=False) is not None


@pytest.mark.parametrize("spec", [sp for sp in SPECS if _impls(sp) == list(ATTN_IMPLS)], ids=lambda sp: sp.name)
def test_every_attention_block_softmaxes_through_attend(spec):
    """The spy that makes the core case cover the blocks: each attention block's forward calls ``attend``."""
    from yolo_attn.gpu_check import _attend_shapes  # the spy the GPU check reads attention shapes with

    with torch.no_grad(), _attend_shapes() as calls:
        _block(spec, "auto").eval()(torch.randn(1, C, 8, 8))
    assert calls, f"{spec.name} computed attention without attention.attend: the fp16 core case does not cover it"
