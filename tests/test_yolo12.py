"""YOLO12 as a base like YOLOv8, YOLO11 and YOLO26: names, generated cfgs, scale letters, training, reloading under
Ultralytics' restricted loader. Ultralytics ships yolo12.yaml from 8.3.78: everything skips before (8.3.65).

YOLO12 has no SPPF, so its variants are the positions it has (backbone, neck, head) and ``sppf_before`` is refused
with that list. It is built on area attention already (A2C2f at P4 and P5): the report's baseline note says so. The
default run trains one YOLO12n variant holding both comparators (PSACSP at the backbone, AreaResidual on the neck)
and BoT on the head inputs; ``-m slow`` trains every generated YOLO12 variant at scales n and s.
"""

import re
from pathlib import Path

import pytest
import torch
import yaml
from checkpoints import build
from conftest import ROOT
from test_yolo26 import _reload_restricted, _train

from yolo_attn import edit
from yolo_attn.edit import EditError, make_variant, save_variant

CFG = ROOT / "cfg"
pytestmark = pytest.mark.skipif(
    not edit.available_bases(["yolo12.yaml"]), reason="this Ultralytics ships no yolo12.yaml (8.3.78 and later do)"
)
POSITIONS = ("backbone", "neck", "head")
FAMILIES = tuple(edit.families(packaged=True))
GENERATED = [f"yolo12-{f}-{p}.yaml" for f in FAMILIES for p in POSITIONS]


def test_names_positions_and_the_scale_letter(registered):
    from ultralytics import YOLO

    assert edit.variant_name("yolo12.yaml", "area", "neck") == "yolo12-area-neck"
    assert sorted(p.name for p in CFG.glob("yolo12-*-*.yaml")) == sorted(GENERATED)
    assert edit.available_positions("yolo12.yaml") == ["backbone", "neck", "neck_p3", "neck_p4", "neck_p5", "head"]
    with pytest.raises(EditError, match="needs an SPPF layer.*valid: backbone, neck, neck_p3"):
        make_variant("yolo12.yaml", "psa", "sppf_before", validate=False)
    net = YOLO("yolo12s-psa-neck.yaml").model  # packaged, from anywhere; s from the name
    assert net.yaml["scale"] == "s" and len(net.model) == 22 + 3
    assert net.stride.tolist() == [8.0, 16.0, 32.0]


def test_attention_already_in_the_base(registered):
    assert edit.attention_rows("yolo12n.yaml") == [
        (6, "A2C2f"),
        (8, "A2C2f"),
        (11, "A2C2f"),
        (14, "A2C2f"),
        (17, "A2C2f"),
    ]


def test_comparators_and_ours_in_one_yolo12_train_and_reload(registered, shapes_data, tmp_runs):
    """PSACSP (backbone), AreaResidual (neck) and BoT (head) in one YOLO12n: one epoch, reload restricted."""
    from ultralytics import YOLO

    d = make_variant(make_variant(make_variant("yolo12.yaml", "psa", "backbone"), "area", "neck"), "bot", "head")
    p = save_variant(d, Path(tmp_runs) / "yolo12n-three.yaml")
    best = _train(YOLO(str(p)), shapes_data, tmp_runs, "three")
    _reload_restricted(best, {"PSACSP", "AreaResidual", "BoT"})


def test_rectangular_and_odd_inputs(registered):
    for name in ("yolo12-area-neck.yaml", "yolo12-psa-head.yaml", "yolo12-area-backbone.yaml"):
        net = build(yaml.safe_load((CFG / name).read_text()))
        with torch.no_grad():
            for hw in ((192, 320), (224, 160)):
                net(torch.rand(1, 3, *hw))


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("name", GENERATED)
def test_every_yolo12_variant_trains_and_reloads(registered, shapes_data, tmp_runs, name, scale):
    from ultralytics import YOLO

    cfg = Path(tmp_runs) / re.sub(r"^yolo12", f"yolo12{scale}", name)
    cfg.write_text((CFG / name).read_text())
    model = YOLO(str(cfg))
    assert model.model.yaml["scale"] == scale
    best = _train(model, shapes_data, tmp_runs, cfg.stem)
    _reload_restricted(best, {yaml.safe_load(cfg.read_text())["yolo_attn"]["block"]})
