"""YOLO26 as a base like YOLOv8 and YOLO11: names, generated and per-block cfgs, scale letters, training, reloading
under Ultralytics' restricted loader, ablation sweeps. Ultralytics 8.3 ships no yolo26.yaml: everything skips there.

The default run trains one YOLO26 variant holding all three families (BoT3 at the backbone, DATBlock before SPPF,
CoAt on the head inputs) and sweeps one variant through ``yolo-attn ablate``; ``-m slow`` trains all 15 generated
variants at scales n and s.
"""

import re
from pathlib import Path

import pytest
import torch
import yaml
from checkpoints import build, randomise, save_checkpoint
from conftest import ROOT

from yolo_attn import edit
from yolo_attn.edit import POSITIONS, make_variant, save_variant

CFG = ROOT / "cfg"
pytestmark = pytest.mark.skipif(
    not edit.available_bases(["yolo26.yaml"]), reason="this Ultralytics ships no yolo26.yaml (8.4 does)"
)
FAMILIES = tuple(edit.families(packaged=True))  # every family the packaged cfg/ holds, the comparators included
GENERATED = [f"yolo26-{f}-{p}.yaml" for f in FAMILIES for p in POSITIONS]


def _train(model, data: str, project: str, name: str) -> Path:
    model.train(
        data=data, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", amp=False, plots=False,
        project=project, name=name, exist_ok=True, verbose=False,
    )  # fmt: skip
    best = Path(project) / name / "weights" / "best.pt"
    assert best.is_file()
    return best


def _reload_restricted(best: Path, blocks: set[str]) -> None:
    """The checkpoint loads under ULTRALYTICS_SAFE_LOAD=1 (weights_only + allow-list) with our blocks inside, and the
    reloaded model runs."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(best), safe_only=True)
    assert {type(m).__name__ for m in ckpt["model"].modules()} >= blocks
    model = YOLO(str(best))
    with torch.no_grad():
        model.model.float().eval()(torch.rand(1, 3, 64, 96))


def test_names_follow_ultralytics_and_the_scale_letter_works(registered):
    from ultralytics import YOLO

    assert edit.variant_name("yolo26.yaml", "dat", "sppf_before") == "yolo26-dat-sppf_before"
    assert sorted(p.name for p in CFG.glob("yolo26-*-*.yaml")) == sorted(GENERATED)
    for name, layers in (("yolo26s-dat-sppf_before.yaml", 25), ("yolo26n-bot.yaml", 24)):  # packaged, from anywhere
        net = YOLO(name).model
        assert net.yaml["scale"] == name[6] and len(net.model) == layers
        assert net.stride.tolist() == [8.0, 16.0, 32.0]
    assert YOLO("yolo26n-coat.yaml").model.model[8].__class__.__name__ == "CoAt"
    assert hasattr(YOLO("yolo26n-dat.yaml").model.model[-1], "one2one_cv2")  # the NMS-free branch stays


def test_attention_already_in_the_base(registered):
    assert edit.attention_rows("yolo26n.yaml") == [(10, "C2PSA")]
    assert edit.attention_rows(str(CFG / "yolo26-dat.yaml")) == [(9, "DATBlock"), (11, "C2PSA")]


def test_one_variant_of_every_family_trains_and_reloads(registered, shapes_data, tmp_runs):
    """BoT3 (backbone), DATBlock (sppf_before) and CoAt (head) in one YOLO26n: trains an epoch, reloads restricted."""
    from ultralytics import YOLO

    d = make_variant(make_variant(make_variant("yolo26.yaml", "bot", "backbone"), "dat", "sppf_before"), "coat", "head")
    assert [p["position"] for p in d["yolo_attn"]["previous"]] == ["backbone", "sppf_before"]
    p = save_variant(d, Path(tmp_runs) / "yolo26n-three.yaml")
    best = _train(YOLO(str(p)), shapes_data, tmp_runs, "three")
    _reload_restricted(best, {"BoT3", "DATBlock", "CoAt"})


def test_ablate_sweeps_a_yolo26_base_with_pretrained_weights(registered, shapes_data, tmp_path, capsys):
    """`yolo-attn ablate --base yolo26n.yaml ... --pretrained <yolo26n checkpoint>`: the variant gets every tensor."""
    from yolo_attn.cli import main
    from yolo_attn.store import ResultStore

    ckpt = save_checkpoint(randomise(build(edit.load_base("yolo26.yaml")[0])), tmp_path / "yolo26n.pt")
    args = ["ablate", "--data", shapes_data, "--base", "yolo26n.yaml", "--blocks", "dat", "--positions", "neck"]
    args += ["--no-baseline", "--pretrained", str(ckpt), "--out", str(tmp_path / "sweep")]
    args += ["--bench-iters", "1", "--bench-warmup", "0", "--bench-batch", "1", "--flops-imgsz", "64"]
    assert main([*args, "--plan-only", "epochs=1"]) == 0
    assert "yolo26n-dat-neck seed=0" in capsys.readouterr().out
    assert main([*args, "epochs=1", "imgsz=64", "batch=4", "workers=0", "amp=False", "val=True"]) == 0
    (rec,) = ResultStore(tmp_path / "sweep").records().values()
    assert rec.status == "done", rec.error
    assert rec.name == "yolo26n-dat-neck" and rec.inserted == [17, 21, 25]
    n_ckpt = len(torch.load(ckpt, weights_only=False)["model"].state_dict())
    # counted on the model the trainer trains, built for the dataset's 3 classes: the class convolutions of both heads
    # (one-to-many and one-to-one, 3 levels, weight and bias: 12 tensors) are sized by the classes; all else arrives
    assert rec.transfer["transferred"] == n_ckpt - 12 and rec.transfer["skipped"] == 12, rec.transfer


def test_rectangular_and_odd_inputs(registered):
    """The variants run on rectangular and odd sizes (the blocks are not sized at construction)."""
    for name in ("yolo26-dat-neck.yaml", "yolo26-coat-head.yaml", "yolo26-bot-backbone.yaml"):
        net = build(yaml.safe_load((CFG / name).read_text()))
        with torch.no_grad():
            for hw in ((192, 320), (224, 160)):
                net(torch.rand(1, 3, *hw))


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("name", GENERATED)
def test_every_yolo26_variant_trains_and_reloads(registered, shapes_data, tmp_runs, name, scale):
    from ultralytics import YOLO

    cfg = Path(tmp_runs) / re.sub(r"^yolo26", f"yolo26{scale}", name)  # the scale letter selects the scale
    cfg.write_text((CFG / name).read_text())
    model = YOLO(str(cfg))
    assert model.model.yaml["scale"] == scale and model.model.stride.tolist() == [8.0, 16.0, 32.0]
    best = _train(model, shapes_data, tmp_runs, cfg.stem)
    block = yaml.safe_load(cfg.read_text())["yolo_attn"]["block"]
    _reload_restricted(best, {block})
