"""yolo_attn.transfer and the BaseModel.load hook: checkpoint rows are aligned with the model's, no record needed.

Tensor values are compared (not Ultralytics' printed counts), against row maps the tests state themselves: the
``yolo_attn`` record of generated cfgs, and the inserted / replaced rows of hand-written ones. Tests marked
``needs_weights`` use the shared yolov8n.pt (../shared/data/weights) and skip without it; the YOLO11 / YOLO26 cases use
checkpoints made here (tests/checkpoints.py).
"""

import copy
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from checkpoints import build, expected_map, kept_keys, load, misplaced, outputs, randomise, save_checkpoint, shell
from conftest import ROOT, SHARED, subprocess_env
from helpers import ultralytics_at_least

from yolo_attn import integration, registry
from yolo_attn.edit import available_bases, families, load_base, make_variant
from yolo_attn.transfer import WARN_BELOW, TransferReport, align, layer_map, remap_state_dict, transfer

W = SHARED / "weights" / "yolov8n.pt"
CFG = ROOT / "cfg"
needs_weights = pytest.mark.skipif(not W.is_file(), reason=f"{W} not available")
X = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))

# Hand-written cfgs (no record): the rows they add or swap, by hand.
HEADLINE = {
    "yolov8-dat.yaml": {"inserted": [9]},
    "yolov8-bot.yaml": {"replaced": [8]},
    "yolov8-coat.yaml": {"replaced": [6, 7, 8]},
    "yolov11-dat.yaml": {"inserted": [9]},
    "yolov11-bot.yaml": {"replaced": [8]},
    "yolov11-coat.yaml": {"replaced": [6, 7, 8]},
    "yolo26-dat.yaml": {"inserted": [9]},
    "yolo26-bot.yaml": {"replaced": [8]},
    "yolo26-coat.yaml": {"replaced": [6, 7, 8]},
}
BASE_OF = {"yolov8": "yolov8.yaml", "yolov11": "yolo11.yaml", "yolo26": "yolo26.yaml"}

# A YAML a user writes by hand: yolov8 with CoAt after row 4 (P3) and DATBlock after the top-down P4 C2f (row 12),
# rows nobody generated; every later reference renumbered by hand. No yolo_attn record.
USER_YAML = """
nc: 80
scales:
  n: [0.33, 0.25, 1024]
  s: [0.33, 0.50, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, CoAt, [256]] # mine: attention on P3, read by the P3 path of the neck
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 7], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, DATBlock, [512, 4]] # mine: deformable attention on the top-down P4
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 5], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 14], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 10], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]
  - [[17, 20, 23], 1, Detect, [nc]]
"""


@pytest.fixture(scope="module")
def hook(registered):
    was = integration.transfer_hook_installed()
    integration.install_transfer_hook()
    yield
    if not was:
        integration.uninstall_transfer_hook()


@pytest.fixture(scope="module")
def yolov8n():
    if not W.is_file():
        pytest.skip(f"{W} not available")
    return load(W).eval()


@pytest.fixture(scope="module")
def made(registered, tmp_path_factory):
    """Randomised base checkpoints saved like Ultralytics', read back: {"yolo11": model, "yolo26": model}."""
    out = {}
    tmp = tmp_path_factory.mktemp("ckpt")
    for name, base in (("yolov8", "yolov8.yaml"), ("yolov11", "yolo11.yaml"), ("yolo26", "yolo26.yaml")):
        if base not in available_bases([base]):
            continue
        m = randomise(build(load_base(base)[0]), seed=len(out))
        out[name] = load(save_checkpoint(m, tmp / f"{name}n.pt")).eval()
    return out


@pytest.fixture
def ul_log():
    """Lines Ultralytics' logger printed during the test (the stock CLI shows that logger)."""
    from yolo_attn._compat import LOGGER

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            msg = record.getMessage().removeprefix("WARNING ⚠️ ")  # 8.4's formatter may have prefixed it already
            lines.append(f"WARNING ⚠️ {msg}" if record.levelno == logging.WARNING else msg)

    h = Keep(level=logging.DEBUG)
    level = LOGGER.level
    LOGGER.addHandler(h)
    LOGGER.setLevel(logging.INFO)
    yield lines
    LOGGER.removeHandler(h)
    LOGGER.setLevel(level)


def _truth(p: Path, n_base: int) -> dict[int, int]:
    """Base row -> model row, as the cfg states it (its record, or the table above for hand-written ones)."""
    d = yaml.safe_load(p.read_text())
    if "yolo_attn" in d:
        return {int(k): int(v) for k, v in d["yolo_attn"]["index_map"].items()}
    return expected_map(n_base, **HEADLINE[p.name])


def _cfgs(family: str) -> list[Path]:
    """The cfgs of a base (``family``: yolov8, yolov11...), less those of block families this Ultralytics lacks."""
    off = set(registry.unavailable())  # area before Ultralytics 8.3.78
    return sorted(
        p
        for p in CFG.glob(f"{family}-*.yaml")
        if re.fullmatch(rf"{family}-[a-z]+(-[a-z_]+)?\.yaml", p.name) and p.name.split("-")[1] not in off
    )


def _check_all(src, family: str):
    """Load ``src`` into every cfg of ``family`` through BaseModel.load: every kept tensor in place, inserted variants
    compute the base's output."""
    n_base = len(src.model)
    files = _cfgs(family)
    # 3 per-block defaults + every family x 5 positions (bot, dat, coat and the comparators psa, area)
    assert len(files) == 3 + 5 * len(families(packaged=True)), [p.name for p in files]
    base_out = outputs(src, X)
    for p in files:
        model = shell(p)
        truth = _truth(p, n_base)
        assert align(src, model).placed == truth, p.name  # the alignment alone finds the rows the cfg states
        model.load(src, verbose=False)  # what YOLO(cfg).load(...) and pretrained= call
        assert not misplaced(src, model, truth), p.name
        assert len(kept_keys(src, truth)) == len(src.state_dict()) - sum(
            len(src.model[i].state_dict()) for i in range(n_base) if i not in truth
        )
        if len(truth) == n_base:  # nothing replaced: blocks start as the identity, the model is the base's
            assert torch.equal(outputs(model, X), base_out), p.name


# --------------------------------------------------------------------------------------------------- the real checkpoint
@needs_weights
def test_yolov8n_into_every_yolov8_cfg(hook, yolov8n):
    """yolov8n.pt into all 28 YOLOv8 cfgs (hand-written and generated): 100% of the tensors of kept rows, values
    compared; every variant with inserted blocks computes yolov8n's output."""
    _check_all(yolov8n, "yolov8")


@needs_weights
def test_yolo_load_logs_one_line_and_adopts_names(hook, yolov8n, ul_log):
    from ultralytics import YOLO

    model = YOLO(str(CFG / "yolov8-dat.yaml")).load(str(W))
    assert not misplaced(yolov8n, model.model, expected_map(23, inserted=[9]))
    assert model.model.names[0] == "person"  # names adopted although the new row kept Ultralytics from doing it
    mine = [line for line in ul_log if line.startswith("yolo_attn:")]
    assert mine == [
        "yolo_attn: yolov8n.pt -> yolov8-dat.yaml: 355/355 checkpoint tensors transferred; 23 rows kept, "
        "new rows 9 DATBlock"
    ]


@needs_weights
def test_training_path_with_another_class_count(hook, yolov8n, shapes_data, ul_log):
    """What `yolo train model=<cfg> pretrained=yolov8n.pt data=<3 classes>` runs (trainer.setup_model): every tensor
    outside the class branch arrives, the head line names the class change, no warning."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    for name, truth in (("yolov8-coat.yaml", expected_map(23, replaced=[6, 7, 8])), ("yolov8-dat-neck.yaml", None)):
        cfg = CFG / name
        trainer = DetectionTrainer(
            overrides={"model": str(cfg), "data": shapes_data, "pretrained": str(W), "device": "cpu", "plots": False}
        )
        trainer.setup_model()
        truth = truth or _truth(cfg, 23)
        bad = misplaced(yolov8n, trainer.model, truth)
        assert bad and all(re.fullmatch(r"model\.22\.cv3\.\d\.\d\..+", k) for k in bad), bad  # the class branch only
    mine = [line for line in ul_log if "yolo_attn:" in line]
    assert len(mine) == 2 and all("(classes 80 -> 3)" in line and "WARNING" not in line for line in mine), mine


@needs_weights
def test_a_user_yaml_with_two_blocks_at_new_rows(hook, yolov8n, tmp_path):
    """Two blocks inserted by hand at rows the generator never uses, no record: every kept tensor arrives and the
    model computes yolov8n's output (both blocks start as the identity)."""
    from ultralytics import YOLO

    p = tmp_path / "mine.yaml"
    p.write_text(USER_YAML)
    model = YOLO(str(p)).load(str(W))
    truth = expected_map(23, inserted=[5, 14])
    assert not misplaced(yolov8n, model.model, truth)
    assert len(kept_keys(yolov8n, truth)) == len(yolov8n.state_dict()) == 355
    assert torch.equal(outputs(model.model, X), outputs(yolov8n, X))
    rep = transfer(YOLO(str(p)).model, yolov8n, verbose=False)
    assert rep.new_rows == [5, 14] and rep.dropped_rows == [] and rep.n_transferred == 355 and rep.ok


@needs_weights
def test_replaced_rows_are_reported(registered, yolov8n):
    rep = transfer(shell(CFG / "yolov8-coat.yaml"), yolov8n, verbose=False)
    assert rep.dropped_rows == [6, 7, 8] and rep.new_rows == [6, 7, 8] and rep.ok
    assert set(rep.skipped) == {k for k in yolov8n.state_dict() if int(k.split(".")[1]) in (6, 7, 8)}
    assert set(rep.skipped.values()) == {"row replaced or removed in the model"}
    assert rep.n_transferred == 355 - len(rep.skipped)
    assert "checkpoint rows not used 6 C2f, 7 Conv, 8 C2f" in rep.summary()


@needs_weights
def test_another_scale_warns_with_the_shapes(hook, yolov8n, ul_log):
    """yolov8n.pt into a scale-s model: nothing is moved (no stray biases) and the warning says why, with numbers."""
    model = shell(CFG / "yolov8-dat.yaml", scale="s")
    model.yaml["scale"] = "s"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load(yolov8n)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not even a bias
    (warn,) = [line for line in ul_log if "yolo_attn:" in line]
    assert warn.startswith("WARNING ⚠️ yolo_attn: yolov8n.pt -> yolov8-dat.yaml: 0/355 checkpoint tensors transferred")
    assert "Only 0/355 (0%) of the tensors in this model's Ultralytics rows" in warn
    assert "row 0 Conv conv.weight: (16, 3, 3, 3) in the checkpoint, (32, 3, 3, 3) in the model" in warn
    assert "the checkpoint is depth 0.33, width 0.25, the model scale s (depth 0.33, width 0.5)" in warn


@needs_weights
def test_another_base_warns(registered, yolov8n):
    rep = transfer(shell(CFG / "yolov11-dat-neck.yaml"), yolov8n, verbose=False)
    assert not rep.ok and rep.coverage < WARN_BELOW
    got, total = rep.own
    s = rep.summary()
    assert f"Only {got}/{total} ({100 * got / total:.0f}%)" in s
    assert "Model rows 2 C3k2, 4 C3k2, 6 C3k2, 8 C3k2, 10 C2PSA" in s and "(another base model?)" in s


# --------------------------------------------------------------------------------------------------- made checkpoints
def test_yolov11_checkpoint_into_every_yolov11_cfg(hook, made):
    _check_all(made["yolov11"], "yolov11")


def test_yolo26_checkpoint_into_every_yolo26_cfg(hook, made):
    if "yolo26" not in made:
        pytest.skip("this Ultralytics ships no yolo26.yaml (8.4 does)")
    _check_all(made["yolo26"], "yolo26")


def test_variant_to_variant_and_back_to_the_base(hook):
    """A trained variant's checkpoint into another variant (its block dropped, the other's new) and into the base."""
    a_d = make_variant("yolov8.yaml", "dat", "sppf_before", validate=False)
    b_d = make_variant("yolov8.yaml", "coat", "neck", validate=False)
    src = randomise(shell(a_d), seed=3)
    to_base = {i: i - (i > 9) for i in range(24) if i != 9}  # a's rows -> base rows
    b_map = {int(k): int(v) for k, v in b_d["yolo_attn"]["index_map"].items()}
    for d, truth in ((b_d, {s: b_map[b] for s, b in to_base.items()}), (load_base("yolov8.yaml")[0], to_base)):
        for strip in (False, True):  # with and without records: the alignment does not need them
            dd = {k: v for k, v in d.items() if not (strip and k == "yolo_attn")}
            s = copy.deepcopy(src)
            if strip:
                s.yaml.pop("yolo_attn", None)
            m = shell(dd)
            m.load(s, verbose=False)
            assert not misplaced(src, m, truth) and len(truth) == 23
            rep = transfer(shell(dd), s, verbose=False)
            assert rep.dropped_rows == [9] and rep.ok
    same = shell(a_d)
    same.load(src, verbose=False)  # fine-tuning or resuming a variant: everything, the block too
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in src.state_dict().items())


def test_identical_rows_follow_the_record(registered):
    """A copy of row 2 inserted right after it: two equally good alignments. The record, when there is one, says
    which row is new; without it the earlier row keeps the weights."""
    base_d = load_base("yolov8.yaml")[0]
    src = randomise(shell(base_d), seed=5)
    d = copy.deepcopy(base_d)
    d["backbone"].insert(3, [-1, 3, "C2f", [128, True]])  # the same module, arguments and shapes as row 2
    for r in d["head"]:
        if isinstance(r[0], list):
            r[0] = [f + 1 if f >= 3 else f for f in r[0]]
    assert align(src, shell(d)).new == [3]
    d["yolo_attn"] = {"base": "yolov8.yaml", "index_map": expected_map(23, inserted=[2])}
    assert align(src, shell(d)).new == [2]


def test_state_dict_and_explicit_map(registered):
    """A bare state dict (no layers, no YAML) still aligns by tensor shapes; an explicit map overrides."""
    base = randomise(shell(load_base("yolov8.yaml")[0]), seed=1)
    d = make_variant("yolov8.yaml", "bot", "head", validate=False)
    rep = transfer(shell(d), base.state_dict(), verbose=False)
    assert rep.n_transferred == len(base.state_dict()) and rep.new_rows == [22, 23, 24]
    m = shell(d)
    rep = transfer(m, base, index_map={0: 0})
    assert rep.n_transferred == len(base.model[0].state_dict()) and not rep.ok
    assert remap_state_dict({"model.1.w": 1, "model.2.w": 2, "x": 3}, {1: 5}) == {"model.5.w": 1, "x": 3}
    assert layer_map(shell(load_base("yolov8.yaml")[0]), base) is None  # same rows: names as they are
    assert layer_map(shell(d), base) == expected_map(23, inserted=[22, 23, 24])


def test_transfer_report(registered):
    base = randomise(shell(load_base("yolov8.yaml")[0]), seed=2)
    rep = transfer(shell(make_variant("yolov8.yaml", "dat", "sppf_before", validate=False)), base, verbose=False)
    assert isinstance(rep, TransferReport) and rep.ok and rep.coverage == 1.0
    assert rep.n_transferred + rep.n_new == rep.total and rep.n_skipped == 0 and rep.new_layers == [9]
    assert rep.summary().endswith("23 rows kept, new rows 9 DATBlock")


def test_hook_install_uninstall_is_clean(registered):
    from ultralytics.nn.tasks import BaseModel

    was = integration.transfer_hook_installed()
    integration.uninstall_transfer_hook()
    orig = BaseModel.__dict__["load"]
    assert not integration.transfer_hook_installed() and not hasattr(orig, "_yolo_attn_orig")
    d = make_variant("yolov8.yaml", "bot", "sppf_before", validate=False)
    src, m = randomise(shell(load_base("yolov8.yaml")[0])), shell(d)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.load(src, verbose=False)  # plain Ultralytics: rows from 9 on are shifted, so their tensors do not match
    assert torch.equal(m.state_dict()["model.10.cv1.conv.weight"], before["model.10.cv1.conv.weight"])
    integration.install_transfer_hook()
    integration.install_transfer_hook()  # idempotent
    assert integration.transfer_hook_installed() and BaseModel.__dict__["load"]._yolo_attn_orig is orig
    m.load(src, verbose=False)
    assert torch.equal(m.state_dict()["model.10.cv1.conv.weight"], src.state_dict()["model.9.cv1.conv.weight"])
    if not was:
        integration.uninstall_transfer_hook()
        assert BaseModel.__dict__["load"] is orig


# --------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
@needs_weights
def test_training_path_every_yolov8_cfg(hook, yolov8n, tmp_path):
    """trainer.setup_model (what `yolo train pretrained=` runs) for all 28 YOLOv8 cfgs, 80 classes: 100% of kept rows."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    data = _data80(tmp_path)
    for p in _cfgs("yolov8"):
        trainer = DetectionTrainer(
            overrides={"model": str(p), "data": data, "pretrained": str(W), "device": "cpu", "plots": False}
        )
        trainer.setup_model()
        assert not misplaced(yolov8n, trainer.model, _truth(p, 23)), p.name


def _data80(tmp_path: Path) -> str:
    """A dataset YAML with COCO's 80 classes (so the head keeps its class branch), over the generated images."""
    from yolo_attn.data import make_shapes_dataset

    src = make_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4, imgsz=64, seed=0)
    data = yaml.safe_load(Path(src).read_text())
    data["names"] = {i: data["names"].get(i, f"class{i}") for i in range(80)}
    (tmp_path / "data80.yaml").write_text(yaml.safe_dump(data))
    return str(tmp_path / "data80.yaml")


@pytest.mark.slow
@needs_weights
@pytest.mark.parametrize("cfg", ["yolov8-dat.yaml", "yolov8-coat.yaml", "yolov8-bot-neck.yaml"])
def test_stock_cli_pretrained_logs_the_transfer(tmp_path, cfg):
    """`yolo train model=<cfg> pretrained=yolov8n.pt`: the stock CLI prints our line, 100% of kept rows."""
    data = _data80(tmp_path)
    env = subprocess_env(YOLO_VERBOSE="true")
    cmd = [
        str(Path(sys.executable).with_name("yolo")),
        "train",
        f"model={CFG / cfg}",
        f"pretrained={W}",
        f"data={data}",
        "epochs=1",
        "imgsz=64",
        "batch=4",
        "workers=0",
        "val=False",
        "plots=False",
        f"project={tmp_path / 'runs'}",
        "name=t",
        "exist_ok=True",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    kept = 355 - {"yolov8-coat.yaml": 66}.get(cfg, 0)
    assert f"yolo_attn: yolov8n.pt -> {cfg}: {kept}/355 checkpoint tensors transferred" in log, log[-3000:]
    assert "WARNING ⚠️ yolo_attn" not in log
    assert ultralytics_at_least("8.3") and re.search(rf"Transferred {kept}/\d+ items from pretrained weights", log)
