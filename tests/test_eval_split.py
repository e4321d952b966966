"""A held-out evaluation split (issue 21): ``best.pt`` is chosen on ``val``, the run's final validation (recorded mAP,
per-image matches) scores ``eval_split``; a dataset without that split stops the sweep before anything trains.

Oracles: Ultralytics' own validation of the run's ``best.pt`` on the split, called directly (the record must equal it
to 1e-6); the dataset YAML's own keys (the error must name the file and the splits it has); the file system (no run
folder after a refused sweep).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import SHARED

from yolo_attn.cli import main
from yolo_attn.data import make_shapes_dataset
from yolo_attn.execute import execute
from yolo_attn.executors import run_sweep
from yolo_attn.plan import Run, data_splits, make_plan
from yolo_attn.stats import Matches, map_scores
from yolo_attn.store import ResultStore, RunRecord

FAST = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 1, "bench_iters": 1, "bench_warmup": 0}
TRAIN = {"epochs": 1, "imgsz": 32, "batch": 2, "workers": 0}
WEIGHTS = SHARED / "weights" / "yolov8n.pt"
COCO = SHARED / "coco128"


def _direct_val(weights: Path, data: str, split: str, imgsz: int, batch: int, project: Path):
    """Ultralytics' validation of ``weights`` on ``split``, called directly (the oracle)."""
    from ultralytics import YOLO

    return YOLO(str(weights)).val(
        data=data, split=split, imgsz=imgsz, batch=batch, workers=0, device="cpu", plots=False, verbose=False,
        project=str(project), name="direct",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the plan
def test_eval_split_joins_the_key_only_when_not_val():
    val = Run("yolov8n.yaml", "shapes.yaml")
    assert Run("yolov8n.yaml", "shapes.yaml", eval_split="val").key == val.key and "eval_split" not in val.definition()
    test = Run("yolov8n.yaml", "shapes.yaml", eval_split="test")
    assert test.key != val.key and test.definition()["eval_split"] == "test"
    plan = make_plan("shapes.yaml", blocks=["dat"], eval_split="test")
    assert [r.eval_split for r in plan] == ["test", "test"] and Run.from_dict(plan[1].to_dict()).key == plan[1].key
    with pytest.raises(ValueError, match="eval_split must be one of train, val, test, minival"):
        Run("yolov8n.yaml", "shapes.yaml", eval_split="holdout")
    with pytest.raises(ValueError, match="give eval_split='test'"):  # 8.4 would choose best.pt on the split
        Run("yolov8n.yaml", "shapes.yaml", train={"split": "test"})


def test_records_without_a_split_read_as_val():
    assert RunRecord.from_dict({"key": "k", "status": "done", "map50_95": 0.3}).eval_split == "val"
    rec = RunRecord("k", status="done", eval_split="test")
    assert RunRecord.from_dict(rec.to_dict()).eval_split == "test"


def test_data_splits_reads_the_yaml(tmp_path):
    (tmp_path / "d.yaml").write_text("train: a\nvalidation: b\ntest:\nnames: {0: x}\n")  # empty test: no split
    path, splits = data_splits(tmp_path / "d.yaml")
    assert path == (tmp_path / "d.yaml").resolve() and splits == ("train", "val")
    assert data_splits("coco8.yaml")[1] == ("train", "val")  # Ultralytics' packaged YAML (its test: is empty)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        data_splits(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------------- refused before training
@pytest.fixture
def two_datasets(tmp_path) -> tuple[str, str]:
    """One generated dataset with a test split, one without."""
    with_test = make_shapes_dataset(tmp_path / "with", n_train=1, n_val=1, n_test=1, imgsz=16)
    without = make_shapes_dataset(tmp_path / "without", n_train=1, n_val=1, imgsz=16)
    return str(with_test), str(without)


def test_sweep_stops_before_training_when_a_dataset_lacks_the_split(tmp_path, two_datasets):
    """Every dataset of the plan is checked before the executor sees a run; nothing is written."""
    with_test, without = two_datasets
    plan = make_plan([with_test, without], bases=[], blocks=[], models=["yolov8n.yaml"], eval_split="test")
    given = []

    def executor(runs, ctx):
        given.extend(runs)
        yield from ()

    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        run_sweep(plan, out, executor=executor)
    msg = str(err.value)
    assert f"{Path(without).resolve()} has no 'test' split (it has: train, val)" in msg, msg
    assert str(Path(with_test).resolve()) not in msg
    assert not given and not out.exists()
    plan_val = make_plan([with_test, without], bases=[], blocks=[], models=["yolov8n.yaml"])  # val: not checked
    assert run_sweep(plan_val, out, executor=executor) == [] and len(given) == 2


def test_cli_says_which_yaml_lacks_the_split(tmp_path, two_datasets, capsys):
    out = tmp_path / "out"
    code = main(["ablate", "--data", two_datasets[1], "--eval-split", "test", "--out", str(out), "epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "has no 'test' split (it has: train, val)" in err and two_datasets[1] in err
    assert not out.exists()


def test_a_run_checks_its_split_before_training(tmp_path, two_datasets):
    """A run executed on its own (a Ray node whose dataset the driver could not read) fails before training."""
    rec = execute(Run("yolov8n.yaml", two_datasets[1], train=TRAIN, eval_split="test"), tmp_path / "out", "cpu", FAST)
    assert rec.status == "failed" and "has no 'test' split" in rec.error and rec.eval_split == "test"
    assert not (tmp_path / "out" / "runs").exists() and rec.train_s is None


# ------------------------------------------------------------------------------------------------- real sweeps
def test_two_split_sweep_scores_the_test_split(tmp_path):
    """A tiny sweep on shapes with separately generated val (4 images) and test (6) splits: the record's figures and
    matches are the test split's, equal to Ultralytics validating best.pt on test directly."""
    data = str(make_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4, n_test=6, imgsz=64))
    out = tmp_path / "sweep"
    plan = make_plan(data, bases=[], blocks=[], models=["yolov8n.yaml"], train=TRAIN, eval_split="test")
    [rec] = run_sweep(plan, out, settings=FAST)
    assert rec.ok, rec.traceback
    assert rec.eval_split == "test" and rec.validation["split"] == "test" and rec.validation["n_images"] == 6
    assert rec.validation["source"] == "validated again" and "trainer_map50_95" in rec.validation
    m = Matches.load(ResultStore(out).artifact_path(rec, "matches"))
    assert m.n_images == 6 and all(i.startswith("images/test/") for i in m.image_ids), m.image_ids
    direct = _direct_val(out / rec.weights, data, "test", 32, 2 * TRAIN["batch"], tmp_path / "direct")
    assert abs(direct.box.map - rec.map50_95) < 1e-6 and abs(direct.box.map50 - rec.map50) < 1e-6
    assert ResultStore(out).records()[rec.key].eval_split == "test"


def _coco_splits(root: Path) -> str:
    """COCO128 images 0-7 as train and val, 8-15 as test (absolute path; 80 COCO class names)."""
    names = yaml.safe_load((SHARED / "coco128.yaml").read_text())["names"]
    images = sorted((COCO / "images" / "train2017").iterdir())
    for split, chosen in (("train", images[:8]), ("val", images[:8]), ("test", images[8:16])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for img in chosen:
            shutil.copy(img, root / "images" / split / img.name)
            label = COCO / "labels" / "train2017" / f"{img.stem}.txt"
            if label.is_file():
                shutil.copy(label, root / "labels" / split / label.name)
    cfg = {"path": str(root), "names": names, "train": "images/train", "val": "images/val", "test": "images/test"}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return str(root / "data.yaml")


@pytest.mark.skipif(not (WEIGHTS.is_file() and COCO.is_dir()), reason="needs ../shared/data (yolov8n.pt, coco128)")
def test_test_numbers_differ_from_val_and_match_a_direct_validation(tmp_path):
    """yolov8n.pt continued for one epoch at lr 0 (so it still detects): chosen on val (COCO128 images 0-7), scored
    on test (images 8-15). The recorded mAP is the test split's: not the trainer's val figure, equal to a direct
    validation of best.pt on test, and reproduced by the stored matches."""
    data = _coco_splits(tmp_path / "coco")
    train = {"epochs": 1, "imgsz": 128, "batch": 8, "workers": 0, "optimizer": "SGD", "lr0": 0.0, "warmup_epochs": 0}
    out = tmp_path / "sweep"
    [rec] = run_sweep([Run("yolov8n.yaml", data, train=train, pretrained=str(WEIGHTS), eval_split="test")], out)
    assert rec.ok, rec.traceback
    val_map = rec.validation["trainer_map50_95"]
    assert rec.map50_95 > 0.05 and val_map > 0.05 and abs(rec.map50_95 - val_map) > 1e-3, (rec.map50_95, val_map)
    direct = _direct_val(out / rec.weights, data, "test", 128, 16, tmp_path / "direct")
    assert abs(direct.box.map - rec.map50_95) < 1e-6 and abs(direct.box.map50 - rec.map50) < 1e-6
    s = map_scores(Matches.load(ResultStore(out).artifact_path(rec, "matches")))
    assert abs(s.map50_95 - rec.map50_95) < 1e-6 and rec.validation["n_images"] == 8
