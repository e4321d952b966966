"""Every model YAML the installed Ultralytics ships, at every position: a variant that builds (with the base's own
model class: WorldModel, YOLOEModel, RTDETRDetectionModel...) and runs, or an EditError listing the valid positions.

Default run: every YAML x every position is either accepted or refused with the list (no build: cheap), and for each
kind of output head (Detect, Segment26, WorldDetect, RTDETRDecoder, Classify...) one YAML with a scale ``n`` builds an
accepted position (positions and families rotate) and runs at 192x320 (the build runs Ultralytics' 256x256 probe). ``-m slow``: every YAML x family x position is
built at its smallest scale and run at 256x256 and 192x320.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from yolo_attn import edit
from yolo_attn._compat import cfg_models_root, model_class_for
from yolo_attn.edit import POSITIONS, EditError, make_variant

YAMLS = sorted(cfg_models_root().rglob("*.yaml"), key=lambda p: p.name)
FAMILIES = tuple(edit.families())  # the registry's: bot, dat, coat and the comparators psa, area (when available)
IDS = [p.stem for p in YAMLS]


def _built_in_the_default_run() -> set[Path]:
    """The first YAML (by name) with a scale ``n`` and an accepted position for each kind of output head."""
    seen: dict[str, Path] = {}
    for p in YAMLS:
        d, _ = edit.load_base(str(p))
        head = (d.get("head") or [[None] * 3])[-1][2]
        if "n" in (d.get("scales") or {}) and edit.available_positions(d) and head not in seen:
            seen[head] = p
    return set(seen.values())


BUILT = _built_in_the_default_run()


def _smallest_scale(d: dict) -> str | None:
    scales = d.get("scales") or {}
    return "n" if "n" in scales else next(iter(scales), None)


def _build_and_run(path: Path, family: str, position: str, sizes) -> None:
    d = make_variant(str(path), family, position, validate=False)
    if d["head"][-1][2] == "RTDETRDecoder" and importlib.util.find_spec("scipy") is None:
        from helpers import ultralytics_at_least

        if not ultralytics_at_least("8.4"):  # 8.3's RT-DETR decoder imports scipy on every forward
            pytest.skip("Ultralytics 8.3's RTDETRDecoder needs scipy, which is not installed")
    dd = {**copy.deepcopy(d), "yaml_file": f"{path.stem}-{family}-{position}"}
    scale = _smallest_scale(d)
    if scale:
        dd["scale"] = scale
    model = model_class_for(d)(dd, verbose=False).eval()
    assert len(model.model) == len(d["backbone"]) + len(d["head"])
    with torch.no_grad():
        for hw in sizes:
            model(torch.rand(1, 3, *hw))


def _refused(path: Path, family: str, position: str, valid: list[str]) -> None:
    with pytest.raises(EditError) as e:
        make_variant(str(path), family, position, validate=False)
    listed = ", ".join(valid) or "none ("
    assert f"valid: {listed}" in str(e.value), str(e.value)


@pytest.mark.parametrize("path", YAMLS, ids=IDS)
def test_every_yaml_accepts_or_lists_the_positions(registered, path):
    valid = edit.available_positions(str(path))
    for k, pos in enumerate(POSITIONS):
        family = FAMILIES[k % len(FAMILIES)]
        if pos in valid:
            d = make_variant(str(path), family, pos, validate=False)
            assert d["yolo_attn"]["inserted"] or d["yolo_attn"]["replaced"]
        else:
            _refused(path, family, pos, valid)
    if path in BUILT:
        i = sorted(BUILT).index(path)
        accepted = [p for p in POSITIONS if p in valid]
        _build_and_run(path, FAMILIES[i % len(FAMILIES)], accepted[i % len(accepted)], [(192, 320)])


def test_families_get_their_levels_and_classes(registered):
    """Levels the YAML alone tells (RT-DETR's HGStem, YOLOv3-tiny's max-pools, YOLOv6's transposed convolutions), and
    the model class a variant is validated with."""
    for name, levels in (
        ("rtdetr-l.yaml", ["neck_p3", "neck_p4", "neck_p5"]),
        ("yolov3-tiny.yaml", ["neck_p4", "neck_p5"]),
        ("yolov6.yaml", ["neck_p3", "neck_p4", "neck_p5"]),
        ("yolov8-p2.yaml", ["neck_p2", "neck_p3", "neck_p4", "neck_p5"]),
    ):
        assert [p for p in edit.available_positions(name) if p.startswith("neck_")] == levels, name
    assert edit.available_positions("rtdetr-l.yaml") == ["neck", "neck_p3", "neck_p4", "neck_p5", "head"]
    d = make_variant("rtdetr-l.yaml", "dat", "neck", validate=False)
    assert [(d["backbone"] + d["head"])[i][3][-1] for i in d["yolo_attn"]["inserted"]] == [3, 4, 5]  # DAT's level
    for name, cls in (("yolov8-world.yaml", "WorldModel"), ("rtdetr-l.yaml", "RTDETRDetectionModel")):
        assert model_class_for(edit.load_base(name)[0]).__name__ == cls
    with pytest.raises(EditError, match=r"valid: none \(it has no CSP block, SPPF layer or multi-input head\)"):
        make_variant("yolov8-cls-resnet50.yaml", "dat", "neck", validate=False)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", YAMLS, ids=IDS)
def test_every_yaml_every_position_builds_and_runs(registered, path, family):
    valid = edit.available_positions(str(path))
    for pos in POSITIONS:
        if pos in valid:
            try:
                _build_and_run(path, family, pos, [(256, 256), (192, 320)])
            except ValueError as e:  # YOLO12's A2C2f: one head per 32 channels (yolov9m's 240-wide rows, P2 at n)
                if not (family == "area" and "must be a multiple of 32" in str(e)):
                    raise
        else:
            _refused(path, family, pos, valid)


def test_report_says_when_a_baseline_has_attention(tmp_path):
    """YOLO11 / YOLO26 carry C2PSA: the report must not let "baseline" read as "no attention"."""
    from yolo_attn.report import write_report
    from yolo_attn.store import ResultStore, RunRecord

    store = ResultStore(tmp_path)
    for i, model in enumerate(("yolo11n.yaml", "yolov8n.yaml")):
        store.append(
            RunRecord(f"k{i}", name=model[:-5], status="done", baseline=True, seed=0, model=model, map50_95=0.3)
        )
    text = write_report(tmp_path)["markdown"].read_text()
    assert "- baseline `yolo11n` already contains attention: C2PSA (row 10)." in text
    assert "`yolov8n` already" not in text
    assert edit.attention_rows("yolov8n.yaml") == [] and edit.attention_rows(
        "yolo12n.yaml" if YOLO12 else "yolo11n.yaml"
    )


YOLO12 = any(p.name == "yolo12.yaml" for p in YAMLS)
