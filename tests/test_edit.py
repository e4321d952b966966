"""yolo_attn.edit: positions, index remapping, records, errors, generated cfg/ files, CLI.

The remapping tests use two stand-in blocks registered here (a zero-initialised residual block and a small CSP
block), so they test the editor independently of the real attention blocks; the cfg/ tests use the real ones.
"""

import contextlib
import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from yolo_attn import _compat, edit, integration, registry
from yolo_attn.edit import POSITIONS, EditError, make_variant, save_variant, variant_name

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg"
GENERATED = re.compile(r"(yolov8|yolov11|yolo26|yolo12)-([a-z]+)-(backbone|sppf_before|sppf_after|neck|head)\.yaml")
PACKAGED = {  # what the package's blocks register (the editor itself reads it from the registry)
    "bot": {"insert": "BoT", "csp": "BoT3"},
    "dat": {"insert": "DATBlock", "csp": "DAT3"},
    "coat": {"insert": "CoAt", "csp": "CoAt3"},
    "psa": {"insert": "PSAResidual", "csp": "PSACSP"},  # comparators: Ultralytics' modules, wrapped
    **({"area": {"insert": "AreaResidual", "csp": "AreaCSP"}} if _compat.provides("A2C2f", "AAttn") else {}),
}
BASES = {"yolov8.yaml": 23, "yolo11.yaml": 24, "yolo26.yaml": 24, "yolo12.yaml": 22}  # rows of the stock YAMLs
HERE = edit.available_bases(BASES)  # 8.3.65 ships no yolo26.yaml or yolo12.yaml
FAM = "edtest"


class EdRes(nn.Module):
    """Stand-in insert block: x + zero-initialised conv branch (exactly the identity at init when c1 == c2)."""

    def __init__(self, c1, c2, k=3):
        super().__init__()
        from ultralytics.nn.modules import Conv

        self.proj = Conv(c1, c2, 1) if c1 != c2 else nn.Identity()
        self.cv = Conv(c2, c2, k)
        self.out = nn.Conv2d(c2, c2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        x = self.proj(x)
        return x + self.out(self.cv(x))


class EdCSP(nn.Module):
    """Stand-in CSP block: cv3(cat(m(cv1(x)), cv2(x))) with EdRes bottlenecks."""

    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        from ultralytics.nn.modules import Conv

        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_, 1), Conv(c1, c_, 1), Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(EdRes(c_, c_) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class EdLevel(EdRes):
    """Stand-in insert block taking its pyramid level after another extra: ``(c1, c2, k, level)``."""

    def __init__(self, c1, c2, k=3, level=5):
        super().__init__(c1, c2, k)
        self.level = level


class EdLayer(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.cv = nn.Conv2d(c1, c2, 1)

    def forward(self, x):
        return self.cv(x)


@pytest.fixture(scope="module")
def standins(registered):
    with contextlib.ExitStack() as stack:
        stack.enter_context(registry.temporary(EdRes, family=FAM, role="insert"))
        stack.enter_context(registry.temporary(EdCSP, repeats=True, family=FAM, role="csp"))
        stack.enter_context(registry.temporary(EdLayer, family=FAM, role="layer"))
        stack.enter_context(registry.temporary(EdLevel, role="insert", takes_level=True))
        integration.register()  # puts the stand-ins into Ultralytics' namespace
        yield FAM
    integration.register()  # and takes them out again


def _rows(d):
    return [list(r) for r in d["backbone"]] + [list(r) for r in d["head"]]


def _sources(rows, i):
    f = rows[i][0]
    return [(i + x if x < 0 else x) for x in (f if isinstance(f, list) else [f])]


def _check_wiring(base_rows, d):
    """Every kept row reads what it read in the base (through the map, or through a block inserted on that edge)."""
    rec, rows = d["yolo_attn"], _rows(d)
    imap, inserted = rec["index_map"], set(rec["inserted"])
    assert len(rows) == len(base_rows) + len(inserted)
    assert sorted(imap) == [i for i in range(len(base_rows)) if i not in rec["replaced"]]
    new_slots = set(range(len(rows))) - set(imap.values())
    assert inserted <= new_slots and len(new_slots - inserted) == len(rec["replaced"])
    for i, j in imap.items():
        assert rows[j][1:] == base_rows[i][1:], f"row {i} -> {j} changed"
        for sb, sn in zip(_sources(base_rows, i), _sources(rows, j)):
            if sb < 0:  # the model input
                assert sn < 0
            elif sb in rec["replaced"]:  # reads the replacement, which sits in the replaced row's slot
                assert sn in new_slots - inserted
            elif sn != imap.get(sb):
                assert sn in inserted and _sources(rows, sn) == [imap[sb]], (i, j, sb, sn)
    for k in inserted:  # an inserted block reads a kept row
        assert _sources(rows, k)[0] in imap.values()


def _layers(d, scale="n") -> int:
    """Layer count of ``d`` built by Ultralytics' parser (construction only, no forward: cheap)."""
    from ultralytics.nn.tasks import parse_model

    model, _ = parse_model({**copy.deepcopy(d), "scale": scale}, ch=3, verbose=False)
    return len(model)


@pytest.mark.parametrize("base", list(BASES))
def test_every_position_builds_and_remaps(standins, base):
    if base not in HERE:
        pytest.skip(f"this Ultralytics does not ship {base}")
    """All positions (neck levels too) build, add the right rows and keep every base edge."""
    base_rows = _rows(edit.load_base(base)[0])
    assert len(base_rows) == BASES[base]
    sppf = [] if base == "yolo12.yaml" else ["sppf_before", "sppf_after"]  # YOLO12 has no SPPF
    assert edit.available_positions(base) == [
        "backbone",
        *sppf,
        "neck",
        "neck_p3",
        "neck_p4",
        "neck_p5",
        "head",
    ]
    expect_inserted = {"backbone": 0, "sppf_before": 1, "sppf_after": 1, "neck": 3, "head": 3}
    for pos in edit.available_positions(base):
        d = make_variant(base, standins, pos, validate=pos == (sppf or ["neck"])[0])  # full build + stride probe
        assert _layers(d) == BASES[base] + len(d["yolo_attn"]["inserted"])
        rec = d["yolo_attn"]
        assert rec["base"] == base and rec["position"] == pos and rec["family"] == FAM
        assert len(rec["inserted"]) == expect_inserted.get(pos, 1)
        assert rec["block"] == ("EdCSP" if pos == "backbone" else "EdRes")
        _check_wiring(base_rows, d)


def test_positions_in_detail(standins):
    v8 = _rows(edit.load_base("yolov8.yaml")[0])
    # backbone: the last backbone C2f (row 8) becomes the CSP block, same width and repeats, nothing shifts
    d = make_variant("yolov8.yaml", standins, "backbone", validate=False)
    assert d["yolo_attn"]["replaced"] == [8] and d["yolo_attn"]["inserted"] == []
    assert _rows(d)[8] == [-1, 3, "EdCSP", [1024]] and _rows(d)[:8] == v8[:8] and _rows(d)[9:] == v8[9:]
    # sppf_before / sppf_after: one row around SPPF; the P5 Concat follows SPPF's new index (or the block after it)
    d = make_variant("yolov8.yaml", standins, "sppf_before", validate=False)
    assert _rows(d)[9] == [-1, 1, "EdRes", [1024]] and _rows(d)[10][2] == "SPPF"
    assert _rows(d)[21][0] == [-1, 10] and _rows(d)[-1][0] == [16, 19, 22]
    d = make_variant("yolov8.yaml", standins, "sppf_after", validate=False)
    assert _rows(d)[10] == [-1, 1, "EdRes", [1024]] and _rows(d)[21][0] == [-1, 10]
    # neck: a block after each C2f feeding Detect; the PAN path and Detect read the blocks
    d = make_variant("yolov8.yaml", standins, "neck", validate=False)
    assert d["yolo_attn"]["inserted"] == [16, 20, 24] and _rows(d)[-1][0] == [16, 20, 24]
    assert [_rows(d)[i][3] for i in (16, 20, 24)] == [[256], [512], [1024]]
    assert _rows(d)[18][0] == [-1, 12]  # the P4 skip still reads the top-down C2f (12), not a block
    d = make_variant("yolov8.yaml", standins, "neck_p4", validate=False)
    assert d["yolo_attn"]["inserted"] == [19] and _rows(d)[-1][0] == [15, 19, 22]
    # head: blocks read the neck outputs and only Detect reads the blocks
    d = make_variant("yolov8.yaml", standins, "head", validate=False)
    assert _rows(d)[22:] == [
        [15, 1, "EdRes", [256]],
        [18, 1, "EdRes", [512]],
        [21, 1, "EdRes", [1024]],
        [[22, 23, 24], 1, "Detect", ["nc"]],
    ]
    assert _rows(d)[:22] == v8[:22]
    # args follow c2; n overrides the repeats
    d = make_variant("yolov8.yaml", standins, "sppf_after", [5], n=2, validate=False)
    assert _rows(d)[10] == [-1, 2, "EdRes", [1024, 5]] and d["yolo_attn"]["args"] == [5]


def test_dat_gets_its_level_per_row(registered):
    d = make_variant("yolov8.yaml", "dat", "neck", validate=False)
    assert [_rows(d)[i][3] for i in d["yolo_attn"]["inserted"]] == [[256, 3], [512, 4], [1024, 5]]
    d = make_variant("yolo11.yaml", "dat", "backbone", [0.5], validate=False)
    assert _rows(d)[8] == [-1, 2, "DAT3", [1024, 0.5, 5]]  # DAT3(c1, c2, n, e, level): the level at its place
    d = make_variant("yolo11.yaml", "dat", "backbone", validate=False)
    assert _rows(d)[8] == [-1, 2, "DAT3", [1024, 0.5, 5]]  # e left out: its default fills the place


def test_level_goes_to_the_level_parameter(standins):
    """A block registered with takes_level gets each row's level at its ``level`` parameter, after other extras."""
    d = make_variant("yolov8.yaml", "EdLevel", "neck")
    assert [_rows(d)[i][3] for i in d["yolo_attn"]["inserted"]] == [[256, 3, 3], [512, 3, 4], [1024, 3, 5]]
    d = make_variant("yolov8.yaml", "EdLevel", "head", [5], validate=False)
    assert [_rows(d)[i][3] for i in d["yolo_attn"]["inserted"]] == [[256, 5, 3], [512, 5, 4], [1024, 5, 5]]


def test_inserted_blocks_preserve_function(standins, scale="n"):
    """Inserted identity blocks + transferred weights = the baseline's output, bit for bit."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_attn.transfer import transfer

    torch.manual_seed(0)
    base = DetectionModel({**edit.load_base("yolov8.yaml")[0], "scale": scale}, verbose=False).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        y0 = base(x)[0]
    for pos in ("sppf_before", "neck", "head"):
        d = make_variant("yolov8.yaml", standins, pos, validate=False)
        m = DetectionModel({**d, "scale": scale}, verbose=False)
        rep = transfer(m, base, verbose=False)
        assert rep.n_transferred == len(base.state_dict()) and rep.n_skipped == 0
        with torch.no_grad():
            assert torch.equal(m.eval()(x)[0], y0), pos


def test_variant_of_variant_composes_the_record(standins):
    d1 = make_variant("yolov8.yaml", standins, "sppf_before", validate=False)
    d2 = make_variant(d1, standins, "head", validate=False)
    assert _layers(d2) == 23 + 4
    rec = d2["yolo_attn"]
    assert rec["base"] == "yolov8.yaml" and rec["position"] == "head"
    assert rec["previous"] == [{"block": "EdRes", "family": FAM, "position": "sppf_before", "args": []}]
    assert rec["inserted"] == [9, 23, 24, 25]
    assert rec["index_map"] == {**{i: i for i in range(9)}, **{i: i + 1 for i in range(9, 22)}, 22: 26}
    _check_wiring(_rows(edit.load_base("yolov8.yaml")[0]), d2)


def test_save_is_readable_and_round_trips(standins, tmp_path):
    d = make_variant("yolov8.yaml", standins, "neck", validate=False)
    p = save_variant(d, tmp_path / "sub" / "v.yaml")
    text = p.read_text()
    assert "  - [-1, 1, EdRes, [256]]" in text and "inserted by yolo_attn" in text and "base row 22" in text
    assert yaml.safe_load(text) == d
    assert edit.load_variant(p) == d


def test_variant_names():
    assert variant_name("yolov8.yaml", "dat", "sppf_before") == "yolov8-dat-sppf_before"
    assert variant_name("yolo11.yaml", "bot", "neck") == "yolov11-bot-neck"  # the name this package gave first
    assert variant_name("yolo11s-seg.yaml", "bot", "neck") == "yolov11s-seg-bot-neck"
    assert variant_name("/x/yolov8-p2.yaml", "DATBlock", "head") == "yolov8-p2-datblock-head"
    assert variant_name("yolo26.yaml", "dat", "sppf_before") == "yolo26-dat-sppf_before"  # Ultralytics' spelling
    assert variant_name("yolo26n.yaml", "coat", "neck") == "yolo26n-coat-neck"  # the scale letter stays readable
    assert variant_name("yoloe-26-seg.yaml", "dat", "head") == "yoloe-26-seg-dat-head"
    assert variant_name("yolo12.yaml", "bot", "neck") == "yolo12-bot-neck"


def test_bad_input_lists_the_choices(standins):
    with pytest.raises(EditError, match="unknown position 'middle'.*backbone, sppf_before, sppf_after, neck, head"):
        make_variant("yolov8.yaml", "dat", "middle")
    with pytest.raises(ValueError, match="needs an SPPF layer.*does not have; valid: backbone"):
        make_variant("yolov8-cls.yaml", "dat", "sppf_before")
    with pytest.raises(EditError, match="needs an output head"):
        make_variant("yolov8-cls.yaml", "dat", "head")
    with pytest.raises(EditError, match="head input at level p6.*valid: .*neck_p3, neck_p4, neck_p5"):
        make_variant("yolov8.yaml", "dat", "neck_p6")
    with pytest.raises(EditError, match=r"'DATblok' is not registered.*did you mean DATBlock.*families: .*bot, coat"):
        make_variant("yolov8.yaml", "DATblok", "neck")
    with pytest.raises(EditError, match="role 'layer'"):
        make_variant("yolov8.yaml", "EdLayer", "neck")
    with pytest.raises(EditError, match="needs a block with role 'csp'.*use 'DAT3' or family 'dat'"):
        make_variant("yolov8.yaml", "DATBlock", "backbone")
    with pytest.raises(EditError, match="not found"):
        make_variant("nonexistent-model.yaml", "dat", "neck")
    no_sppf = copy.deepcopy(edit.load_base("yolov8.yaml")[0])
    no_sppf["backbone"][9] = [-1, 1, "Conv", [1024, 1, 1]]
    with pytest.raises(EditError, match="needs an SPPF layer"):
        make_variant(no_sppf, standins, "sppf_after")
    assert edit.available_positions(no_sppf) == ["backbone", "neck", "neck_p3", "neck_p4", "neck_p5", "head"]


def test_scaled_base_name_and_families(standins):
    d, label = edit.load_base("yolov8s.yaml")
    assert d["scale"] == "s" and label == "yolov8s.yaml" and len(_rows(d)) == 23
    assert edit.families(packaged=True) == PACKAGED  # the package's blocks registered with these families and roles
    assert edit.families()[FAM] == {"insert": "EdRes", "csp": "EdCSP"}  # and any other registered family


def _generated_files():
    return sorted(p for p in CFG.glob("*.yaml") if GENERATED.fullmatch(p.name))


def test_checked_in_cfgs_equal_the_generator(registered):
    files = _generated_files()
    # yolo26, yolo12 and area files too, whatever is installed: 5 families; YOLO12 has no SPPF (3 positions)
    assert len(files) == 5 * (3 * len(POSITIONS) + 3)
    assert edit.check_generated(CFG) == [], "run: yolo-attn generate"


def test_checked_in_cfgs_build(registered):
    """Every generated variant is constructed at scales n and s with the base's layer count plus the inserted blocks."""
    for p in _generated_files():
        d = yaml.safe_load(p.read_text())
        if d["yolo_attn"]["base"] not in HERE or d["yolo_attn"]["family"] in registry.unavailable():
            continue
        want = BASES[d["yolo_attn"]["base"]] + len(d["yolo_attn"]["inserted"])
        assert _layers(d, "n") == want and _layers(d, "s") == want, p.name


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["n", "s"])
def test_checked_in_cfgs_build_and_run(registered, scale):
    """The full build (stride probe forward included) of every generated variant at scales n and s."""
    from ultralytics.nn.tasks import DetectionModel

    for p in _generated_files():
        d = yaml.safe_load(p.read_text())
        if d["yolo_attn"]["base"] not in HERE or d["yolo_attn"]["family"] in registry.unavailable():
            continue
        m = DetectionModel({**d, "scale": scale, "yaml_file": p.name}, verbose=False)
        assert len(m.model) == BASES[d["yolo_attn"]["base"]] + len(d["yolo_attn"]["inserted"]), p.name
        assert m.stride.tolist() == [8.0, 16.0, 32.0], p.name


def test_cli_insert_and_generate_check(standins, tmp_path, capsys):
    from yolo_attn.cli import main

    out = tmp_path / "v.yaml"
    assert main(["insert", "yolov8.yaml", FAM, "neck_p5", "--args", "[5]", "-o", str(out)]) == 0
    d = yaml.safe_load(out.read_text())
    assert d["yolo_attn"]["inserted"] == [22] and _rows(d)[22] == [-1, 1, "EdRes", [1024, 5]]
    assert "inserted rows [22]" in capsys.readouterr().out
    assert main(["insert", "yolov8.yaml", FAM, "head", "--no-validate", "-o", "-"]) == 0
    assert "inserted by yolo_attn" in capsys.readouterr().out
    assert main(["generate", "--check", "--no-validate", "--out", str(tmp_path), "--families", "dat"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert main(["generate", "--check", "--no-validate", "--out", str(CFG), "--families", "bot", "dat", "coat"]) == 0
    assert main(["insert", "yolov8.yaml", "DATblok", "neck"]) == 2 and "did you mean" in capsys.readouterr().err
