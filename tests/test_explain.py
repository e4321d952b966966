"""yolo_attn.explain: utilisation, attention maps from hooks, DAT sampling points, figures, the record field, the CLI
and the warm-up remedy's key (issue 23)."""

import math
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import yolo_attn
from yolo_attn.explain import AttentionCapture, BlockUse, find_blocks, measure_utilisation
from yolo_attn.nn import BoT, CoAt, DATBlock, set_attn_impl


def _perturbed(m: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter moved away from its (identity) initialisation, so maps and branches are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def _only_view(block: nn.Module, x: torch.Tensor):
    [found] = find_blocks(block)
    with AttentionCapture([found]) as cap, torch.no_grad():
        block(x)
    [layer] = found.attention_layers()
    return layer, cap.views[layer]


@pytest.mark.parametrize(
    "make", [lambda: BoT(32, 32), lambda: CoAt(32, 32, 1, dim_head=16), lambda: DATBlock(32, 32, 1, 4)]
)
def test_maps_are_probability_rows(make):
    _, view = _only_view(_perturbed(make()), torch.randn(2, 32, 7, 9))
    for b in (0, 1):
        for fy, fx in ((0.0, 0.0), (0.5, 0.7), (0.99, 0.99)):
            p = view.probs(b, fy, fx)
            assert p.shape[-1] == view.k.shape[2] and (p >= 0).all()
            torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0], dtype=p.dtype))


@pytest.mark.parametrize(
    "make", [lambda: BoT(32, 32), lambda: CoAt(32, 32, 1, dim_head=16), lambda: DATBlock(32, 32, 1, 4)]
)
def test_recomputed_rows_are_the_layers_own_attention(make):
    """P (from the hooks) times the layer's values gives the layer's attention output at that query."""
    block = _perturbed(make())
    [found] = find_blocks(block)
    [layer] = found.attention_layers()
    set_attn_impl(block, "plain")
    seen = {}
    v_mod = {"MHSA": "v", "CoAtAttention": "qkv", "DAttention": "proj_v"}[type(layer).__name__]
    out_mod = {"MHSA": None, "CoAtAttention": "proj", "DAttention": "proj_out"}[type(layer).__name__]
    hooks = [layer.get_submodule(v_mod).register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))]
    if out_mod:  # the attention output before the output projection is that projection's input
        hooks.append(layer.get_submodule(out_mod).register_forward_hook(lambda m, i, o: seen.__setitem__("o", i[0])))
    else:
        hooks.append(layer.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o)))
    x = torch.randn(1, 32, 6, 5)
    with AttentionCapture([found]) as cap, torch.no_grad():
        block(x)
    for h in hooks:
        h.remove()
    view = cap.views[layer]
    h, d = layer.num_heads, layer.dim_head
    v = seen["v"][:, -h * d :] if v_mod == "qkv" else seen["v"]
    v = v.reshape(1, h, d, -1).transpose(-1, -2)  # 1, h, M, d
    y, xq = 4, 3
    p = view.probs(0, (y + 0.5) / 6, (xq + 0.5) / 5)  # h, M
    want = seen["o"][0, :, y, xq].reshape(h, d)
    torch.testing.assert_close(torch.einsum("hm,hmd->hd", p, v[0]), want, atol=1e-5, rtol=1e-4)


def test_planted_key_gets_the_peak():
    """q of the query and k of one planted pixel are set to align; the map peaks at that pixel."""
    block = BoT(8, 8, e=1.0, num_heads=1).eval()
    layer = block.m[0].mhsa
    with torch.no_grad():
        block.m[0].cv1.conv.weight.copy_(torch.eye(8)[:, :, None, None])  # pass x through (BN in eval ~ identity)
        block.m[0].cv1.bn.weight.fill_(1)
        for conv in (layer.q, layer.k):
            conv.weight.zero_()
        layer.q.weight[2, 0] = 10.0  # channel 0 (the query pixel) -> q along 2
        layer.k.weight[2, 1] = 10.0  # channel 1 (the planted pixel) -> k along 2
        layer.rel_pos.bias_h.zero_()
        layer.rel_pos.bias_w.zero_()
    x = torch.zeros(1, 8, 5, 6)
    x[0, 0, 1, 1] = 3.0  # the query at row 1, column 1
    x[0, 1, 3, 4] = 3.0  # the planted key at row 3, column 4
    [found] = find_blocks(block)
    with AttentionCapture([found]) as cap, torch.no_grad():
        block(x)
    p = cap.views[layer].probs(0, 1.5 / 5, 1.5 / 6)[0]
    assert int(p.argmax()) == 3 * 6 + 4 and p.max() > 0.9


def test_dat_points_are_the_hand_computation():
    """A planted constant offset theta = (a, b) moves every key cell centre by tanh(theta) * s / (Hk, Wk)."""
    block = DATBlock(32, 32, 1, 5, groups=1, num_heads=2).eval()  # P5: key stride 1, one key per pixel
    attn = block.m[0].attn
    a, b = 0.4, -0.7  # theta_y, theta_x
    planted = nn.Conv2d(32, 2, 1, bias=True)
    with torch.no_grad():
        planted.weight.zero_()
        planted.bias.copy_(torch.tensor([a, b]))
    attn.conv_offset[-1] = planted
    h, w, img = 4, 5, (128, 160)  # a 4x5 map of a 128x160 image: stride 32
    [found] = find_blocks(block)
    with AttentionCapture([found]) as cap, torch.no_grad():
        block(torch.randn(1, 32, h, w))
    ref, pts = cap.views[attn].key_pixels(0, img)
    s = attn.offset_range
    dist = []
    for i in range(h):
        for j in range(w):
            cx, cy = (j + 0.5) * 32, (i + 0.5) * 32  # cell centre in image pixels
            px = cx + math.tanh(b) * s / w * img[1] / 2  # offset: tanh(theta) * s / Wk normalised, size / 2 per unit
            py = cy + math.tanh(a) * s / h * img[0] / 2
            px, py = min(max(px, 0), img[1]), min(max(py, 0), img[0])  # DAT clamps points into the map
            torch.testing.assert_close(ref[0, i, j], torch.tensor([cx, cy]))
            torch.testing.assert_close(pts[0, i, j], torch.tensor([px, py]), atol=1e-3, rtol=1e-5)
            dist.append(math.hypot(px - cx, py - cy) / 32)  # in pixels of the 4x5 feature map
    use = measure_utilisation(block, torch.randn(1, 32, h, w))[0]
    assert use.gates["offset_px_mean"] == pytest.approx(sum(dist) / len(dist), rel=1e-4)
    assert use.gates["offset_px_max"] == pytest.approx(max(dist), rel=1e-4)


def test_fresh_block_is_unused_then_used_when_perturbed():
    x = torch.randn(3, 32, 6, 6)
    for make in (lambda: BoT(32, 32), lambda: CoAt(32, 32, 1, dim_head=16), lambda: DATBlock(32, 32, 1, 4)):
        fresh = measure_utilisation(make(), x)[0]
        assert fresh.ratio_mean == 0.0 and fresh.n_images == 3
        used = measure_utilisation(_perturbed(make()), x)[0]
        assert used.ratio_mean > 0 and used.ratio_std >= 0
    bot = BoT(32, 32)
    with torch.no_grad():
        bot.m[0].cv2.bn.weight.fill_(0.5)  # only the gate moves
    use = measure_utilisation(bot, x)[0]
    assert use.ratio_mean > 0 and use.gates == {"bn_gamma": 0.5}


def test_explain_leaves_outputs_unchanged(registered, tmp_path, shapes_data):
    from yolo_attn._compat import YOLO
    from yolo_attn.edit import make_variant, save_variant
    from yolo_attn.explain import explain

    cfg = save_variant(make_variant("yolov8n.yaml", "bot", "sppf_before"), tmp_path / "yolov8n-bot-sppf_before.yaml")
    net = _perturbed(YOLO(str(cfg)).model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)[0].clone()
    images = sorted((Path(shapes_data).parent / "images" / "val").glob("*.png"))[:1]
    explain([net], images, tmp_path / "figs", imgsz=64)
    with torch.no_grad():
        after = net(x)[0]
    assert torch.equal(before, after)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_figures_are_pngs_of_the_stated_size(registered, tmp_path, shapes_data):
    from yolo_attn.edit import make_variant, save_variant
    from yolo_attn.explain import explain

    a = save_variant(make_variant("yolov8n.yaml", "bot", "neck"), tmp_path / "yolov8n-bot-neck.yaml")  # 3 blocks
    b = save_variant(make_variant("yolov8n.yaml", "dat", "sppf_before"), tmp_path / "yolov8n-dat-sppf_before.yaml")
    val = Path(shapes_data).parent / "images" / "val"
    paths = explain([str(a), str(b)], val, tmp_path / "figs", imgsz=64, max_images=2, panel=200)
    assert [p.name for p in paths] == [f.name for f in sorted(val.glob("*.png"))[:2]]
    for p in paths:
        assert _png_size(p) == ((2 + 3) * 200, 2 * 200)  # widest row: detections, CAM, 3 blocks; one row per model


def test_cli_writes_figures(registered, tmp_path, shapes_data):
    from yolo_attn.cli import main

    val = Path(shapes_data).parent / "images" / "val"
    out = tmp_path / "figs"
    assert (
        main(["explain", "yolov8n.yaml", "--source", str(val), "--out", str(out), "--imgsz", "64", "--max-images", "1"])
        == 0
    )
    [png] = sorted(out.glob("*.png"))
    assert _png_size(png) == (2 * 320, 320)  # a model without blocks: detections and CAM


def test_figures_without_the_grad_cam_library_say_how_to_get_it(registered, tmp_path, shapes_data, monkeypatch, caplog):
    """grad-cam is an extra: without it the figure is still drawn, its CAM panel names the install."""
    import sys

    from yolo_attn.explain import explain, figures

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as when it is not installed
    val = Path(shapes_data).parent / "images" / "val"
    x = torch.zeros(1, 3, 64, 64)
    assert figures.eigencam(torch.nn.Identity(), x, torch.nn.Identity()) is None
    [png] = explain(["yolov8n.yaml"], val, tmp_path / "figs", imgsz=64, max_images=1)
    assert _png_size(png) == (2 * 320, 320)
    assert "grad-cam" in caplog.text


def test_utilisation_round_trips_in_the_record():
    from yolo_attn.store import RunRecord

    use = BlockUse(16, "BoT", "bot", 3, 0.021, 0.004, 8, {"bn_gamma": 0.01}, "m")
    rec = RunRecord("k", utilisation=[use.to_dict()])
    back = RunRecord.from_dict(rec.to_dict())
    assert [BlockUse.from_dict(d) for d in back.utilisation] == [use]
    old = rec.to_dict()
    del old["utilisation"]
    assert RunRecord.from_dict(old).utilisation == []  # records written before the field load


def test_identity_after_insert_and_transfer(registered, tmp_path):
    """BoT inserted into yolov8n and loaded from a checkpoint of yolov8n: exactly unused (ratio 0) before training."""
    from yolo_attn._compat import YOLO
    from yolo_attn.edit import make_variant, save_variant
    from yolo_attn.transfer import transfer

    base = YOLO("yolov8n.yaml")
    ckpt = tmp_path / "base.pt"
    torch.save({"model": base.model, "train_args": {}}, ckpt)
    cfg = save_variant(make_variant("yolov8n.yaml", "bot", "neck"), tmp_path / "yolov8n-bot-neck.yaml")
    variant = YOLO(str(cfg))
    rep = transfer(variant.model, str(ckpt), verbose=False)
    assert rep.n_transferred > 0
    uses = measure_utilisation(variant, torch.rand(2, 3, 64, 64))
    assert [(u.row, u.level, u.ratio_mean) for u in uses] == [(16, 3, 0.0), (20, 4, 0.0), (24, 5, 0.0)]


def test_warm_new_blocks_key_only_when_non_zero():
    from yolo_attn.plan import make_plan

    plain = make_plan("shapes.yaml", blocks=["bot"], train={"epochs": 1})
    warm = make_plan("shapes.yaml", blocks=["bot"], train={"epochs": 1}, warm_new_blocks=2)
    zero = make_plan("shapes.yaml", blocks=["bot"], train={"epochs": 1}, warm_new_blocks=0)
    assert [r.key for r in zero] == [r.key for r in plain]
    assert warm[0].key == plain[0].key and warm[0].warm_new_blocks == 0  # the baseline trains as usual
    assert warm[1].key != plain[1].key and warm[1].name == plain[1].name + "+warm2"
    assert "warm_new_blocks" not in plain[1].definition()
    with pytest.raises(ValueError, match="warm_new_blocks"):
        make_plan("shapes.yaml", blocks=["bot"], warm_new_blocks=-1)


def test_families_declare_probes():
    """Every family's insert and csp block says how to read it (a new family without one still gets the generic ratio)."""
    from yolo_attn import registry

    yolo_attn.register()
    for fam, roles in registry.families().items():
        for name in roles.values():
            sp = registry.get_spec(name)
            if fam in ("bot", "coat", "dat"):
                assert sp.probe is not None and sp.probe.attention is not None, name


def test_run_records_utilisation_after_a_warm_stage(registered, tmp_path, shapes_data):
    """One tiny run with --warm-new-blocks 1: the blocks train first (everything else frozen), the run then trains as
    usual, and its record carries the utilisation of the inserted block."""
    from yolo_attn.execute import execute
    from yolo_attn.plan import Run

    train = {"epochs": 1, "imgsz": 64, "batch": 2, "workers": 0}
    fast = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 1, "bench_iters": 1, "bench_warmup": 0}
    run = Run("yolov8n.yaml", shapes_data, "bot", "sppf_before", train=train, warm_new_blocks=1)
    rec = execute(run, tmp_path / "sweep", "cpu", fast)
    assert rec.status == "done", rec.error
    assert rec.measure_error is None and rec.name.endswith("+warm1")
    [use] = [BlockUse.from_dict(d) for d in rec.utilisation]
    assert use.block == "BoT" and use.row == 9 and use.level == 5 and use.n_images == 4
    assert use.ratio_mean is not None and use.ratio_mean > 0  # trained away from the identity
    warm = next((tmp_path / "sweep" / "runs").glob("*-warm"))
    assert (warm / "weights" / "last.pt").is_file()
