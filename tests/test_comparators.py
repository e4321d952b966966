"""The comparator families psa and area: Ultralytics' own attention (C2PSA, YOLO12's A2C2f) wrapped to our contract.

What the wrappers promise beyond the registry-driven tests (test_families, test_fp16, test_transfer, test_yolo26,
test_yolo12, test_export run them like the package's own families): Ultralytics' modules run unchanged; the insert
blocks are the identity after ``YOLO(variant).load(checkpoint)``; fp16 cannot overflow the attention logits; the
FLOPs count sees the attention at its true size (closed forms, within 1%); a family the installed Ultralytics cannot
build is listed unavailable with the version it needs, in one line, and nothing else breaks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from checkpoints import build, randomise, save_checkpoint
from conftest import SHARED

from yolo_attn import _compat, edit, integration, registry
from yolo_attn.flops import count_flops
from yolo_attn.nn.psa import PSACSP, PSAResidual

integration.register()
AREA = "area" in registry.families()
needs_area = pytest.mark.skipif(not AREA, reason="area attention needs Ultralytics >= 8.3.78")
COMPARATORS = [f for f in registry.families() if registry.family_origin(f)]
WEIGHTS = SHARED / "weights" / "yolov8n.pt"


def _area(*args, **kw):
    from yolo_attn.nn.area import AreaCSP, AreaResidual

    return (AreaResidual if kw.pop("insert", True) else AreaCSP)(*args, **kw)


def _perturbed(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Off the identity: gamma 1 and every weight moved, so the attention counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        if hasattr(m, "gamma"):
            m.gamma.fill_(1.0)
    return m.eval()


# ------------------------------------------------------------------------------------------------ provenance
def test_comparators_say_where_their_modules_come_from():
    assert set(COMPARATORS) == {"psa", "area"} if AREA else {"psa"}
    for family in COMPARATORS:
        assert registry.family_origin(family).startswith(f"Ultralytics {_compat.version()} ")
    assert "C2PSA" in registry.family_origin("psa")
    assert registry.family_origin("bot") is None and registry.family_origin("nosuch") is None
    assert type(PSAResidual(64, 64).m) is _compat.C2PSA  # Ultralytics' class itself, not a copy


# ------------------------------------------------------------------------------------------------ availability
def test_an_unavailable_family_is_listed_with_what_it_needs(tmp_path, capsys):
    """A family registered unavailable (area on Ultralytics 8.3.65; here a stand-in) is out of every listing, and
    ``info``, ``insert`` and ``ablate --blocks`` say what it needs in one line."""
    from yolo_attn.cli import main

    class GhostIns(torch.nn.Module):
        def __init__(self, c1, c2, n=1):
            super().__init__()

    register = dict(repeats=True, family="ghost", available=False, requires="ultralytics>=99")
    registry.register_block(GhostIns, role="insert", **register)
    try:
        assert "ghost" not in registry.families() and "GhostIns" not in registry.block_names()
        assert registry.unavailable()["ghost"].startswith("needs ultralytics>=99 (installed: ultralytics ")
        assert main(["info"]) == 0
        out = capsys.readouterr().out
        assert "unavailable: ghost (needs ultralytics>=99" in out and "GhostIns" not in out
        assert main(["insert", "yolov8.yaml", "ghost", "neck", "--no-validate", "-o", "-"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "family 'ghost' is unavailable here: it needs ultralytics>=99" in err
        assert main(["ablate", "--data", "x.yaml", "--blocks", "bot", "ghost", "--plan-only"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'ghost' is unavailable here" in err
        with pytest.raises(KeyError, match="unavailable here"):
            registry.get_spec("GhostIns")
    finally:
        registry.unregister_block("GhostIns")
    assert "ghost" not in registry.unavailable()


def test_area_is_unavailable_exactly_where_ultralytics_lacks_it():
    has = _compat.provides("A2C2f", "AAttn")
    assert ("area" in registry.families()) == has and ("area" in registry.unavailable()) == (not has)
    if not has:
        assert "needs ultralytics>=8.3.78" in registry.unavailable()["area"]
        with pytest.raises(edit.EditError, match="unavailable here: it needs ultralytics>=8.3.78"):
            edit.make_variant("yolov8.yaml", "area", "neck", validate=False)


# ------------------------------------------------------------------------------------------------ the modules
def test_psa_wrappers_are_c2psa_plus_what_the_contract_needs():
    torch.manual_seed(0)
    m = _perturbed(PSAResidual(64, 64))
    x = torch.randn(2, 64, 7, 9)
    with torch.no_grad():
        assert torch.equal(m(x), x + m.gamma.view(1, -1, 1, 1) * m.m(x))
        csp = PSACSP(32, 64, n=2, num_heads=4).eval()
        assert [b.attn.num_heads for b in csp.m.m] == [4, 4] and type(csp.m.m[0]) is _compat.PSABlock
        assert csp(torch.randn(1, 32, 5, 5)).shape == (1, 64, 5, 5)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        PSAResidual(64, 64, num_heads=3)
    with pytest.raises(ValueError, match="e=0"):
        PSACSP(64, 64, e=0)


@needs_area
def test_area_wrappers_run_a2c2f_unchanged_and_take_any_size():
    """At sizes YOLO12 runs (tokens divisible by the area) the wrapper computes Ultralytics' A2C2f with its own area;
    on odd maps it uses the largest area that divides the tokens, where A2C2f itself would fail."""
    from yolo_attn.nn.area import area_for

    torch.manual_seed(0)
    m = _perturbed(_area(64, 64, level=4, insert=False))
    assert m.area == 4 and _area(64, 64, level=5).area == 1 and _area(64, 64, level=3, area=2).area == 2
    ref = _compat.A2C2f(64, 64, 1, True, 4).eval()
    ref.load_state_dict(m.m.state_dict())
    x = torch.randn(2, 64, 8, 12)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
        odd = torch.randn(1, 64, 13, 17)
        with pytest.raises(RuntimeError):
            ref(odd)  # YOLO12's module cannot cut 221 tokens into 4
        ref1 = _compat.A2C2f(64, 64, 1, True, 1).eval()
        ref1.load_state_dict(m.m.state_dict())
        assert area_for(13 * 17, 4) == 1 and torch.equal(m(odd), ref1(odd))
    with pytest.raises(ValueError, match="multiple of 32"):
        _area(48, 48)


# ------------------------------------------------------------------------------------------------ identity
@pytest.mark.parametrize("family", COMPARATORS)
def test_identity_at_insertion_after_load(registered, family, tmp_path):
    """``YOLO(<yolov8n variant>).load(checkpoint)``: every base tensor arrives and the variant computes the base's
    outputs exactly (the inserted blocks start as the identity). yolov8n.pt when ../shared/data has it."""
    from ultralytics import YOLO

    ckpt = WEIGHTS
    if not ckpt.is_file():
        ckpt = save_checkpoint(randomise(build(edit.load_base("yolov8.yaml")[0])), tmp_path / "yolov8n.pt")
    base = YOLO(str(ckpt)).model.float().eval()
    variant = YOLO(f"yolov8n-{family}-neck.yaml").load(str(ckpt)).model.float().eval()
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(variant(x)[0], base(x)[0])


# ------------------------------------------------------------------------------------------------ fp16
def _adversarial(m: torch.nn.Module) -> torch.Tensor:
    """Scale the attention's q, k, v projections 32x (in place) and return an input for which Ultralytics' module,
    run in fp16, forms logits beyond fp16's range (65504)."""
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "qkv"):  # Ultralytics' Attention / AAttn
                mod.qkv.conv.weight.mul_(32)
    return 10 * torch.randn(1, 64, 8, 8, generator=torch.Generator().manual_seed(1))


def _blocks():
    out = [pytest.param(lambda: PSAResidual(64, 64), id="PSAResidual")]
    if AREA:
        out.append(pytest.param(lambda: _area(64, 64, level=4), id="AreaResidual"))
    return out


@pytest.mark.parametrize("make", _blocks())
def test_fp16_logits_beyond_range_stay_finite(make):
    """Half weights (``.half()``) and fp16 autocast on activations that overflow Ultralytics' fp16 logits: the wrapper
    is finite and within 1e-2 (of the largest magnitude) of an fp64 run; the bare module in fp16 is not finite."""
    torch.manual_seed(0)
    m = _perturbed(make())
    x = _adversarial(m)
    half = copy.deepcopy(m).half()
    with torch.no_grad():
        ref = copy.deepcopy(half).double()(x.half().double())  # the fp16 weights and inputs, computed exactly
        assert not torch.isfinite(half.m(x.half())).all(), "the case does not overflow: make it harder"
        y = half(x.half())
        with torch.autocast("cpu", dtype=torch.float16):
            assert not torch.isfinite(m.m(x)).all()
            z = m(x)
    for out, what in ((y, "half"), (z, "autocast")):
        assert torch.isfinite(out).all(), what
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert y.dtype == torch.float16 and err < 1e-2, err
    ref32 = m(x).double()
    assert ((z.double() - ref32).abs().max() / ref32.abs().max()).item() < 1e-2


# ------------------------------------------------------------------------------------------------ FLOPs
def _psa_closed_form(c: int, n_tok: int, n: int = 1, e: float = 0.5) -> int:
    """C2PSA(c, c, n, e) at ``n_tok`` tokens: cv1, cv2 and per PSABlock qkv, q^T k, v attn^T, pe (3x3 dw), proj, FFN."""
    c_ = int(c * e)
    heads = max(c_ // 64, 1)
    head_dim = c_ // heads
    key_dim = int(head_dim * 0.5)
    per = c_ * (c_ + 2 * key_dim * heads) + heads * n_tok * (key_dim + head_dim) + 9 * c_ + c_ * c_ + 4 * c_ * c_
    return 2 * n_tok * (2 * c * c_ + 2 * c_ * c + n * per)


def _area_closed_form(c: int, n_tok: int, area: int, n: int = 1, e: float = 0.5, mlp_ratio: float = 2.0) -> int:
    """A2C2f(c, c, n, a2=True, area, e=e): cv1, cv2 and per ABlock qkv, attention within each of ``area`` segments
    (q^T k and v attn^T: 2 * c_ * n_tok / area MACs per token), pe (7x7 dw), proj, MLP."""
    c_ = int(c * e)
    hid = int(c_ * mlp_ratio)
    per = 3 * c_ * c_ + 2 * c_ * n_tok // area + 49 * c_ + c_ * c_ + 2 * c_ * hid
    return 2 * n_tok * (c * c_ + (1 + n) * c_ * c + 2 * n * per)


def _cases():
    out = [
        pytest.param(lambda: PSAResidual(128, 128), lambda t: _psa_closed_form(128, t), id="PSAResidual"),
        pytest.param(lambda: PSACSP(256, 256, 2), lambda t: _psa_closed_form(256, t, 2), id="PSACSP-n2"),
    ]
    if AREA:
        out += [
            pytest.param(lambda: _area(64, 64, level=4), lambda t: _area_closed_form(64, t, 4), id="AreaResidual"),
            pytest.param(
                lambda: _area(128, 128, 2, level=5, insert=False),
                lambda t: _area_closed_form(128, t, 1, 2),
                id="AreaCSP-n2",
            ),
        ]
    return out


@pytest.mark.parametrize(("make", "closed"), _cases())
def test_block_flops_equal_closed_form(make, closed):
    m = make().eval()
    h, w = 16, 20
    got = count_flops(m, (1, m.m.cv1.conv.in_channels, h, w))["gflops"] * 1e9
    want = closed(h * w)
    assert abs(got - want) / want < 0.01, (got, want)


@pytest.mark.parametrize("family", COMPARATORS)
def test_model_flops_count_the_attention_at_its_true_size(registered, family):
    """`yolo-attn flops` of yolov8n-<family>-neck at 320 px: variant minus base is the three inserted blocks' closed
    forms at P3 40x40, P4 20x20, P5 10x10 (within 1%); Ultralytics' 1xk proxy extrapolation cannot see N^2."""
    from ultralytics import YOLO

    base = count_flops(YOLO("yolov8n.yaml").model, 320)["gflops"]
    got = count_flops(YOLO(f"yolov8n-{family}-neck.yaml").model, 320)["gflops"] - base
    levels = ((64, 40), (128, 20), (256, 10))  # yolov8n's neck widths and map sizes at 320
    if family == "psa":
        want = sum(_psa_closed_form(c, s * s) for c, s in levels)
    else:
        want = sum(_area_closed_form(c, s * s, 4 if lv < 5 else 1) for (c, s), lv in zip(levels, (3, 4, 5)))
    assert abs(got * 1e9 - want) / want < 0.01, (got, want / 1e9)
