"""The attention core (yolo_attn/nn/attention.py) and what every registered block owes it.

Proven here: every registered block gives the plain twin's outputs and gradients under every ``attn_impl`` (several
chunks for the chunked kernel, odd and rectangular sizes); ``set_attn_impl`` reaches every attention layer, CSP
blocks' included; the one chunked kernel passes gradcheck in fp64 with each bias module (with and without the fused
kernel's log-sum-exp); every bias module honours the interface the kernel relies on; ``is_exporting`` is True on
every export route; pickles of yolo_attn 0.1.0 are migrated, and position-bias modules pickled under their pre-0.2
path (``yolo_attn.nn.attention``) load, restricted loading included; every block refuses channels < 1; every class a
block pickles is allowed by Ultralytics' restricted loader.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from yolo_attn.nn import attention
from yolo_attn.nn.attention import (
    ATTN_IMPLS,
    AttentionLayer,
    attention_plain,
    chunked_attention,
    is_exporting,
    set_attn_impl,
)
from yolo_attn.nn.rel_pos import BoTRelPos, CoAtRelPos, DATRelPos, RelBias
from yolo_attn.registry import specs

C = 64  # every block builds at this width with its defaults (CoAt3: int(64 * 0.5) = 32 = one head of 32)


def _blocks() -> dict[str, type]:
    import yolo_attn.nn  # noqa: F401  (registers the blocks)

    # the package's own blocks: the comparator families (spec.origin) run Ultralytics' attention, not this core
    return {sp.name: sp.cls for sp in specs() if sp.cls.__module__.startswith("yolo_attn.nn.") and not sp.origin}


def _build(cls: type) -> nn.Module:
    return cls(C, C)


def _perturb(m: nn.Module, seed: int = 0) -> nn.Module:
    """Zero-initialised tensors (residual branches, offset heads, BN gammas) get random values: nothing is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for mod in m.modules():
            if isinstance(mod, AttentionLayer) and getattr(mod, "rel_pos", None) is not None:
                for p in mod.rel_pos.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))  # position terms that matter
    return m


def _run(m: nn.Module, x: torch.Tensor):
    xg = x.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(xg)
    y = y[0] if isinstance(y, tuple) else y  # Classifier (Ultralytics' Classify) returns (probabilities, logits)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), xg.grad, {k: p.grad for k, p in m.named_parameters()}


@pytest.mark.parametrize("hw", [(1, 5), (7, 9), (6, 4)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(_blocks()))
def test_every_block_every_impl_equals_the_twin(monkeypatch, name, hw):
    """fp32, eval mode (BN statistics and drop path out of the way), gradients of a weighted sum: 1e-5."""
    monkeypatch.setattr(attention, "CHUNK_ELEMS", 256)  # several chunks wherever the chunked kernel runs
    torch.manual_seed(0)
    m = _perturb(_build(_blocks()[name])).eval()
    x = torch.randn(2, C, *hw)
    y0, gx0, gp0 = _run(set_attn_impl(m, "plain"), x)
    for impl in ATTN_IMPLS:
        y, gx, gp = _run(set_attn_impl(m, impl), x)
        torch.testing.assert_close(y, y0, atol=1e-5, rtol=1e-5, msg=f"{name} {impl} output")
        torch.testing.assert_close(gx, gx0, atol=1e-5, rtol=1e-5, msg=f"{name} {impl} input gradient")
        for k, g in gp.items():
            if g is None:
                assert gp0[k] is None, k
                continue
            err = (g - gp0[k]).abs().max() / gp0[k].abs().max().clamp_min(1.0)  # sums over pixels reach ~1e2
            assert err < 1e-5, (name, impl, k, err.item())


@pytest.mark.parametrize("name", sorted(_blocks()))
def test_set_attn_impl_reaches_every_attention_layer(name):
    m = _build(_blocks()[name])
    layers = [a for a in m.modules() if isinstance(a, AttentionLayer)]
    if name not in ("MBConv", "Classifier"):  # the two blocks without attention
        assert layers, name
    for impl in ATTN_IMPLS:
        assert set_attn_impl(m, impl) is m
        assert all(a.attn_impl == impl for a in layers)
    with pytest.raises(ValueError, match=r"impl='flash' is not one of 'auto', 'fused', 'chunked', 'plain'"):
        set_attn_impl(m, "flash")


def test_attn_impl_is_a_class_default():
    """Objects unpickled from before the switch have no instance attribute: the class default answers."""
    for cls in (AttentionLayer, *(c for c in _blocks().values() if issubclass(c, AttentionLayer))):
        assert cls.attn_impl == "auto"


# ------------------------------------------------------------------------------------------- the chunked kernel
def _bias_cases(size, b=2, heads=2, seed=0):
    """(name, RelBias with grad-requiring inputs, [inputs to gradcheck]) for each bias module."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    n = h * w
    kw = {"dtype": torch.float64}

    def leaf(*shape):
        return torch.randn(*shape, generator=g, **kw).requires_grad_()

    bot = BoTRelPos(dim_head=3, max_rel=2).double()
    a, bb = leaf(b, heads, h, w, h), leaf(b, heads, w, h, w)  # b transposed, as MHSA computes it
    yield "bot", (lambda a, bb: RelBias(bot, (a, bb.transpose(2, 3)), size)), [a, bb], n
    coat = CoAtRelPos(num_heads=heads, max_rel=2).double()
    table = leaf(heads, 5, 5)
    yield "coat", (lambda t: RelBias(coat, (t,), size)), [table], n
    for kind in ("table", "axial"):
        dat = DATRelPos(num_heads=heads, groups=2, max_rel=2, kind=kind).double()
        keys = (torch.rand(b * 2, 2, 3, 2, generator=g, **kw) * 1.8 - 0.9).requires_grad_()
        tables = [leaf(*t.shape) for t in dat.tables()]

        def make(*args, dat=dat):
            *tabs, kp = args
            f = list(dat.factors(None, size, kp))
            f[: len(tabs)] = tabs
            return RelBias(dat, tuple(f), size)

        yield f"dat-{kind}", make, [*tables, keys], 6


@pytest.mark.parametrize("lse", [True, False], ids=["lse", "softmax"])
@pytest.mark.parametrize("size", [(1, 1), (1, 5), (3, 4), (5, 2)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_chunked_kernel_gradcheck_with_each_bias(monkeypatch, size, lse):
    """fp64 gradcheck of q, k, v and every bias input, many chunks; the output equals the twin's."""
    monkeypatch.setattr(attention, "CHUNK_ELEMS", 8)
    if not lse:
        monkeypatch.setattr(attention, "_flash_cpu", lambda *args: None)
    g = torch.Generator().manual_seed(1)
    for name, make, inputs, m in [*_bias_cases(size), ("none", lambda: None, [], size[0] * size[1])]:
        n = size[0] * size[1]
        q, k = (torch.randn(2, 2, n, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
        k = torch.randn(2, 2, m, 3, generator=g, dtype=torch.float64).requires_grad_()
        v = torch.randn(2, 2, m, 4, generator=g, dtype=torch.float64).requires_grad_()

        def f(q, k, v, *rest, make=make):
            return chunked_attention(q, k, v, make(*rest))

        assert torch.autograd.gradcheck(f, (q, k, v, *inputs), fast_mode=True), name
        bias = make(*inputs)
        ref = attention_plain(q, k, v, None if bias is None else bias.dense())
        torch.testing.assert_close(f(q, k, v, *inputs), ref, msg=name)


def test_chunked_kernel_precision_policy():
    """Half inputs: logits, bias and softmax in fp32, the output cast back; autocast does not reach inside."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 20, 8) for _ in range(3))
    bias = CoAtRelPos(2, 3)(None, (4, 5))
    ref = attention_plain(q, k, v, bias.dense())
    for dtype in (torch.bfloat16, torch.float16):
        out = chunked_attention(q.to(dtype), k.to(dtype), v.to(dtype), bias)
        assert out.dtype == dtype
        assert (out.float() - ref).abs().max() < 2e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qa = q.requires_grad_()
        out = chunked_attention(qa, k, v, bias)
    assert out.dtype == torch.float32  # inputs were fp32: autocast does not lower the kernel's precision
    out.sum().backward()
    assert qa.grad.dtype == torch.float32


# ------------------------------------------------------------------------------------------- bias module interface
@pytest.mark.parametrize("size", [(1, 5), (3, 4), (4, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bias_modules_honour_the_interface(size):
    """dense = expand(all rows); the kernel's chunk helper: mask = dense rows, add_ = + dense - shift, reduce_ +
    grads = autograd of the dense bias; lowrank, where offered, multiplies out to dense."""
    torch.manual_seed(3)
    for name, make, inputs, m in _bias_cases(size):
        bias = make(*inputs)
        dense = bias.dense()
        n = size[0] * size[1]
        assert dense.shape[-2:] == (n, m) and dense.shape[1] == 2, name
        torch.testing.assert_close(bias.pos.expand(bias.factors, size, slice(0, size[0])), dense)
        chunks = bias.pos.chunks([f.detach() for f in bias.factors], size, [f.requires_grad for f in bias.factors])
        q = chunks.quantum
        assert q in (1, size[1]), name
        ds = torch.randn(2, 2, n, m, dtype=torch.float64)
        for s in range(0, n, q * 2):
            sl = slice(s, min(n, s + q * 2))
            torch.testing.assert_close(chunks.mask(sl).expand(2, -1, -1, -1), dense[:, :, sl].expand(2, -1, -1, -1))
            logits = torch.randn(2, 2, sl.stop - sl.start, m, dtype=torch.float64)
            shift = torch.randn(2, 2, sl.stop - sl.start, dtype=torch.float64)
            want = logits + dense[:, :, sl].detach() - shift[..., None]
            chunks.add_(logits, sl, shift)
            torch.testing.assert_close(logits, want, msg=name)
            chunks.reduce_(ds[:, :, sl], sl)
        wanted = [f for f in bias.factors if f.requires_grad]
        want = iter(torch.autograd.grad((dense * ds.sum_to_size(dense.shape)).sum(), wanted))
        for got, f in zip(chunks.grads(), bias.factors):
            if f.requires_grad:
                torch.testing.assert_close(got, next(want), msg=name)
        low = bias.lowrank()
        assert (low is not None) == (name == "bot"), name
        if low is not None:
            torch.testing.assert_close(low[0] @ low[1].transpose(-1, -2), dense)


def test_bias_parameters_are_named_for_the_no_decay_group():
    """Ultralytics' build_optimizer keeps parameters whose name contains "bias" out of weight decay."""
    for pos in (BoTRelPos(8), CoAtRelPos(2), DATRelPos(2, 1), DATRelPos(2, 1, kind="axial")):
        names = [n for n, _ in pos.named_parameters()]
        assert names and all("bias" in n for n in names), names


# ------------------------------------------------------------------------------------------------ export routes
_SEEN: list[bool] = []  # module-level: torch.export restores the attributes of the module it traces


class _Probe(nn.Module):
    def forward(self, x):
        _SEEN.append(is_exporting())
        return x + 1


@pytest.mark.parametrize("route", ["onnx", "jit.trace", "torch.export", "fx", "torch.compile"])
def test_is_exporting_on_every_route(tmp_path, route):
    probe, x = _Probe(), torch.randn(1, 2, 3, 3)
    _SEEN.clear()
    assert not is_exporting()
    if route == "onnx":
        torch.onnx.export(probe, x, str(tmp_path / "p.onnx"), dynamo=False)
    elif route == "jit.trace":
        torch.jit.trace(probe, x, check_trace=False)
    elif route == "torch.export":
        torch.export.export(probe, (x,))
    elif route == "fx":
        torch.fx.symbolic_trace(probe)
    else:
        torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert _SEEN and all(_SEEN), _SEEN
    assert not is_exporting()


# --------------------------------------------------------------------------------------------- old pickles
def _as_v01(m: AttentionLayer, **old_attrs) -> dict:
    """The pickled state of ``m`` as yolo_attn 0.1.0 laid it out before commit a8b5350: tables as the layer's own
    parameters."""
    state = copy.copy(m.__dict__)
    state["_parameters"] = dict(m._parameters)
    state["_modules"] = {k: v for k, v in m._modules.items() if k != "rel_pos"}
    state.pop("rel_pos", None)
    pos = m.rel_pos
    if isinstance(pos, BoTRelPos):
        state["_parameters"].update(rel_pos_bias_h=pos.bias_h, rel_pos_bias_w=pos.bias_w)
        state["max_rel"] = pos.max_rel
    elif isinstance(pos, CoAtRelPos):
        state["_parameters"]["rel_pos_bias_table"] = pos.bias_table
        state["max_rel"] = pos.max_rel
    else:
        kind = getattr(pos, "kind", "none")
        tables = (None, None, None)
        if kind == "table":
            tables = (pos.bias_table, None, None)
        elif kind == "axial":
            tables = (None, pos.bias_h, pos.bias_w)
        state["_parameters"].update(zip(("rel_pos_bias_table", "rel_pos_bias_h", "rel_pos_bias_w"), tables))
    state.pop("attn_impl", None)
    state.update(old_attrs)
    return state


@pytest.mark.parametrize(
    "make,old,impl",
    [
        (lambda: attention_layer("MHSA"), {"path": "reference"}, "plain"),
        (lambda: attention_layer("MHSA"), {"path": "keyaug"}, "fused"),
        (lambda: attention_layer("CoAt"), {"fused": True, "chunk_elems": None}, "auto"),
        (lambda: attention_layer("DAttention"), {"fused": False}, "plain"),
        (lambda: attention_layer("DAttention", pos_bias="axial"), {"fused": True}, "auto"),
        (lambda: attention_layer("DAttention", pos_bias="none"), {"fused": True}, "auto"),
    ],
    ids=["mhsa-reference", "mhsa-keyaug", "coat", "dat-twin", "dat-axial", "dat-none"],
)
def test_v01_pickles_are_migrated(make, old, impl):
    torch.manual_seed(4)
    new = _perturb(make()).eval()
    x = torch.randn(1, new_c1(new), 5, 6)
    legacy = type(new).__new__(type(new))
    legacy.__setstate__(_as_v01(new, **old))
    assert legacy.attn_impl == impl
    assert not {"path", "fused", "chunk_elems"} & set(vars(legacy)) and "max_rel" not in legacy._parameters
    assert list(legacy.state_dict()) == list(new.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(set_attn_impl(legacy, "auto")(x), set_attn_impl(new, "auto")(x))
    again = pickle.loads(pickle.dumps(legacy))  # and the migrated object pickles in the new layout
    assert list(again.state_dict()) == list(new.state_dict())


def _pickled_before_0_2(obj) -> bytes:
    """``torch.save(obj)`` as yolo_attn 0.1.x wrote it: the position-bias classes named by yolo_attn.nn.attention."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save(obj, buf)
    src, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"yolo_attn.nn.rel_pos\n" in data  # protocol 2: GLOBAL opcodes, 'module\nname\n'
                data = data.replace(b"yolo_attn.nn.rel_pos\n", b"yolo_attn.nn.attention\n")
            dst.writestr(info, data)
    return out.getvalue()


@pytest.mark.parametrize("name", ["MHSA", "CoAt", "DAttention"])
def test_position_biases_load_from_their_pre_0_2_path(name, registered):
    """The bias modules moved from yolo_attn.nn.attention to yolo_attn.nn.rel_pos in 0.2.0; a checkpoint pickled
    before names the old path: it loads into the same classes, also under weights_only (restricted) loading."""
    import io

    from yolo_attn.integration import _safe_globals

    torch.manual_seed(5)
    new = _perturb(attention_layer(name)).eval()
    old = _pickled_before_0_2(new)
    assert b"yolo_attn.nn.rel_pos" not in old
    torch_classes = {type(m) for m in new.modules() if type(m).__module__.startswith("torch.")}
    x = torch.randn(1, new_c1(new), 5, 6)
    for weights_only in (False, True):
        with torch.serialization.safe_globals([*_safe_globals(), *torch_classes]):
            loaded = torch.load(io.BytesIO(old), weights_only=weights_only)
        assert type(loaded.rel_pos) is type(new.rel_pos) and type(loaded.rel_pos).__module__ == "yolo_attn.nn.rel_pos"
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), new(x), rtol=0, atol=0)


def attention_layer(name: str, **kw) -> AttentionLayer:
    from yolo_attn.nn import MHSA, CoAtAttention, DAttention

    return {
        "MHSA": lambda: MHSA(16, 16, num_heads=2, **kw),
        "CoAt": lambda: CoAtAttention(16, 16, num_heads=2, **kw),
        "DAttention": lambda: DAttention(16, 16, 4, num_heads=2, **kw),
    }[name]()


def new_c1(m: nn.Module) -> int:
    return next(c for c in m.modules() if isinstance(c, nn.Conv2d)).in_channels


def test_legacy_checkpoint_layers_are_migrated(registered):
    from pathlib import Path

    ckpt = torch.load(Path(__file__).parent / "data" / "legacy-all-blocks.pt", map_location="cpu", weights_only=False)
    layers = [m for m in ckpt["model"].modules() if isinstance(m, AttentionLayer)]
    assert len(layers) >= 6
    for m in layers:
        assert m.attn_impl == "auto" and not {"path", "fused", "chunk_elems"} & set(vars(m))
        assert not any(k.startswith("rel_pos_bias") for k in m.state_dict()), type(m).__name__


# --------------------------------------------------------------------------------------- construction contract
@pytest.mark.parametrize("name", sorted(_blocks()))
def test_every_block_refuses_channels_below_one(name):
    cls = _blocks()[name]
    for c1, c2, arg in ((0, C, "c1"), (C, 0, "c2"), (-3, C, "c1"), (C, -8, "c2")):
        if name == "Classifier" and arg == "c2" and c2 == 0:
            continue  # Classifier's c2 is a hidden width where 0 means none
        with pytest.raises(ValueError, match=rf"{name}: {arg}={c1 if arg == 'c1' else c2} must be an integer >= "):
            cls(c1, c2)


@pytest.mark.parametrize("name", sorted(_blocks()))
def test_every_class_a_block_pickles_is_allowed_by_restricted_loading(name):
    from yolo_attn.integration import _safe_globals

    allowed = set(_safe_globals())
    used = {type(m) for m in _build(_blocks()[name]).modules()}
    missing = [c for c in used if c not in allowed and not c.__module__.startswith("torch.")]
    assert not missing, missing
