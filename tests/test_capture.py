"""Per-image matches of a run's final validation: captured from Ultralytics' own validator, kept beside the record,
and equal to Ultralytics' mAP for that run.

Oracle: the mAP50 and mAP50-95 Ultralytics reported for the same validation (``RunRecord.map50`` / ``map50_95``); the
full-sample statistic of the stored matches (:func:`yolo_attn.stats.map_scores`) must equal them to 1e-6 on whichever
Ultralytics is installed (the suite runs on 8.4 and 8.3.65: one entry per image in ``metrics.stats`` vs entries only
for images with predictions or labels in ``validator.stats``).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED

from yolo_attn.capture import ValidationCapture
from yolo_attn.execute import _keep_matches, execute
from yolo_attn.plan import Run
from yolo_attn.stats import Matches, map_scores
from yolo_attn.store import ResultStore

FAST = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 1, "bench_iters": 1, "bench_warmup": 0}
WEIGHTS = SHARED / "weights" / "yolov8n.pt"
COCO = SHARED / "coco128"


def _coco8(root: Path) -> str:
    """The first 8 COCO128 images as a train = val dataset with an absolute path (80 COCO class names)."""
    names = yaml.safe_load((SHARED / "coco128.yaml").read_text())["names"]
    images = sorted((COCO / "images" / "train2017").iterdir())[:8]
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for img in images:
            shutil.copy(img, root / "images" / split / img.name)
            label = COCO / "labels" / "train2017" / f"{img.stem}.txt"
            if label.is_file():
                shutil.copy(label, root / "labels" / split / label.name)
    cfg = {"path": str(root), "train": "images/train", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return str(root / "data.yaml")


def _stored(out: Path, rec) -> Matches:
    path = ResultStore(out).artifact_path(rec, "matches")
    assert path is not None and path.name == "matches.npz", rec.artifacts
    return Matches.load(path)


# ------------------------------------------------------------------------------------------------------ real runs
@pytest.mark.skipif(not (WEIGHTS.is_file() and COCO.is_dir()), reason="needs ../shared/data (yolov8n.pt, coco128)")
def test_final_validation_matches_equal_ultralytics_map(tmp_path):
    """yolov8n.pt continued for one epoch at lr 0 on 8 COCO images: many true positives. The stored matches give
    exactly the mAP50 and mAP50-95 Ultralytics reported for that run's final validation."""
    data = _coco8(tmp_path / "coco8")
    train = {"epochs": 1, "imgsz": 128, "batch": 8, "workers": 0, "optimizer": "SGD", "lr0": 0.0, "warmup_epochs": 0}
    run = Run("yolov8n.yaml", data, train=train, pretrained=str(WEIGHTS))
    rec = execute(run, tmp_path / "sweep", "cpu", FAST)
    assert rec.ok, rec.traceback
    assert rec.transfer["transferred"] == 355 and rec.transfer["new"] == 0  # pretrained loaded (8.3 ignores it alone)
    m = _stored(tmp_path / "sweep", rec)
    assert m.tp[:, 0].sum() >= 10 and rec.map50 > 0.2  # a real validation with true positives
    s = map_scores(m)
    assert abs(s.map50 - rec.map50) < 1e-6 and abs(s.map50_95 - rec.map50_95) < 1e-6, (s.map50, rec.map50)
    assert rec.validation["source"] == "final validation" and rec.validation["map50_95"] == pytest.approx(s.map50_95)
    assert m.n_images == 8 and m.image_ids[0].startswith("images/val/") and m.names[0] == "person"
    assert rec.validation["weights"] == rec.weights and (tmp_path / "sweep" / rec.weights).is_file()


def test_every_run_keeps_its_matches_and_ddp_runs_validate_again(tmp_path, shapes_data):
    """A tiny run on generated shapes: its matches are stored beside the record (atomically, in
    ``artifacts/<key>/``) and reproduce its recorded mAP. Without a capture (DDP trains in subprocesses the callback
    does not reach), ``best.pt`` is validated again and the record's figures come from that validation."""
    out = tmp_path / "sweep"
    run = Run("yolov8n.yaml", shapes_data, train={"epochs": 1, "imgsz": 32, "batch": 2, "workers": 0})
    rec = execute(run, out, "cpu", FAST)
    assert rec.ok, rec.traceback
    m = _stored(out, rec)
    assert rec.artifacts == {"matches": f"artifacts/{run.key}/matches.npz"}
    assert m.n_images == 4 and len(set(m.image_ids)) == 4 and m.ap_tail == rec.validation["ap_tail"]
    s = map_scores(m)
    assert abs(s.map50 - rec.map50) < 1e-6 and abs(s.map50_95 - rec.map50_95) < 1e-6
    assert not [p for p in (out / "artifacts" / run.key).iterdir() if p.name != "matches.npz"]  # no temp files

    trainer = SimpleNamespace(best=out / rec.weights, args=SimpleNamespace(batch=2, workers=0))
    again = copy.deepcopy(rec)
    again.artifacts, again.validation = {}, None
    _keep_matches(run, again, ValidationCapture(), trainer, out, "cpu")
    assert again.validation["source"] == "validated again" and "trainer_map50_95" in again.validation
    s2 = map_scores(_stored(out, again))
    assert abs(s2.map50_95 - again.map50_95) < 1e-6 and abs(s2.map50 - again.map50) < 1e-6


@pytest.mark.slow
def test_matches_equal_ultralytics_map_after_learning_from_scratch(tmp_path):
    """Offline (no shared data): a from-scratch run on generated shapes that learns enough for true positives."""
    from yolo_attn.data import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n_train=128, n_val=32, imgsz=64, seed=0)
    train = {"epochs": 20, "imgsz": 64, "batch": 16, "workers": 0, "optimizer": "SGD", "lr0": 0.02}
    rec = execute(Run("yolov8n.yaml", str(data), train={**train, "warmup_epochs": 0, "mosaic": 0.0}), tmp_path, "cpu")
    assert rec.ok, rec.traceback
    m = _stored(tmp_path, rec)
    assert m.tp[:, 0].any() and rec.map50 > 0
    s = map_scores(m)
    assert abs(s.map50 - rec.map50) < 1e-6 and abs(s.map50_95 - rec.map50_95) < 1e-6


# ------------------------------------------------------------------------------------------------------ the capture
class _FakeValidator:
    """What ValidationCapture reads of a detection validator, with a stand-in ``update_metrics`` that appends entries
    the way Ultralytics 8.4 (every image, numpy) or 8.3.65 (images with predictions or labels, torch) does."""

    def __init__(self, layout: str):
        self.layout, self.training, self.iouv = layout, False, torch.linspace(0.5, 0.95, 10)
        self.data, self.names = {"path": "/data/set"}, {0: "a", 1: "b"}
        lists = {k: [] for k in ("tp", "conf", "pred_cls", "target_cls", "target_img")}
        if layout == "8.4":
            self.metrics = SimpleNamespace(stats=lists, names=self.names)
        else:
            self.metrics, self.stats = SimpleNamespace(), lists

    def _process_batch(self, *a):  # marks a detection validator
        return None

    def update_metrics(self, preds, batch):
        stats = self.metrics.stats if self.layout == "8.4" else self.stats
        for si, p in enumerate(preds):
            n = len(p["cls"]) if isinstance(p, dict) else len(p)
            t_cls = batch["cls"][batch["batch_idx"] == si].reshape(-1)
            if self.layout == "8.3" and n == 0 and len(t_cls) == 0:
                continue  # 8.3.65 keeps nothing for an image without predictions and labels
            conf = p["conf"] if isinstance(p, dict) else p[:, 4]
            cls = p["cls"] if isinstance(p, dict) else p[:, 5]
            tp = np.zeros((n, 10), bool)
            tp[: min(n, len(t_cls)), :3] = True  # the first predictions match, at the loose thresholds
            stats["tp"].append(tp if self.layout == "8.4" else torch.as_tensor(tp))
            stats["conf"].append(conf.numpy() if self.layout == "8.4" else conf)
            stats["pred_cls"].append(cls.numpy() if self.layout == "8.4" else cls)
            stats["target_cls"].append(t_cls.numpy() if self.layout == "8.4" else t_cls)
            stats["target_img"].append(np.unique(t_cls.numpy()))


def _batch_and_preds(layout: str):
    """Three images: 2 predictions + 2 labels; nothing at all; 1 prediction and no label."""
    boxes = [
        torch.tensor([[0, 0, 9, 9, 0.9, 1], [1, 1, 8, 8, 0.4, 1]]),
        torch.zeros(0, 6),
        torch.tensor([[0, 0, 5, 5, 0.7, 0]]),
    ]
    preds = [{"conf": b[:, 4], "cls": b[:, 5]} for b in boxes] if layout == "8.4" else boxes
    batch = {
        "batch_idx": torch.tensor([0.0, 0.0]),
        "cls": torch.tensor([[1.0], [1.0]]),
        "im_file": ["/data/set/images/val/a.png", "/data/set/images/val/b.png", "/elsewhere/c.png"],
    }
    return preds, batch


@pytest.mark.parametrize("layout", ["8.4", "8.3"])
def test_capture_maps_entries_to_images_in_both_layouts(layout):
    """Entries land on their images, an image without predictions and labels included (8.3.65 adds no entry for it,
    but it still counts when images are resampled); training validations are not captured."""
    v = _FakeValidator(layout)
    cap = ValidationCapture(areas=False)  # the stand-in has no boxes
    v.training = True
    cap.on_val_start(v)
    assert not cap.captured and "update_metrics" not in vars(v)  # per-epoch validations are not the final one
    v.training = False
    cap.on_val_start(v)
    preds, batch = _batch_and_preds(layout)
    v.update_metrics(preds, batch)
    m = cap.matches()
    assert m.n_images == 3 and m.image_ids == ("images/val/a.png", "images/val/b.png", "/elsewhere/c.png")
    assert m.image.tolist() == [0, 0, 2] and m.target_image.tolist() == [0, 0] and m.target_cls.tolist() == [1, 1]
    assert m.conf.tolist() == pytest.approx([0.9, 0.4, 0.7]) and m.tp[:, 0].tolist() == [True, True, False]
    assert m.names == {0: "a", 1: "b"} and m.iou_thresholds[0] == pytest.approx(0.5)
    assert map_scores(m).map50 > 0.99  # class 1: both TPs first (0.995 or 1 by the AP convention); 0 has no targets


def test_capture_refuses_entries_it_cannot_place():
    v = _FakeValidator("8.3")
    cap = ValidationCapture(areas=False)
    cap.on_val_start(v)
    preds, batch = _batch_and_preds("8.3")
    v.stats["tp"].append(torch.zeros(0, 10, dtype=torch.bool))  # one entry for three images, two of which count
    with pytest.raises(RuntimeError, match="cannot tell which image each belongs to"):
        cap._take(v.stats, 0, preds, batch)


# ------------------------------------------------------------------------------------------- areas and pairing
def _letterbox_set(root: Path) -> str:
    """One 128 x 96 image (landscape: validation at imgsz 64 letterboxes it) with one 40 x 30 px box of class 0."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img = np.full((96, 128, 3), 40, np.uint8)
    img[20:50, 30:70] = 220  # x 30..70, y 20..50
    Image.fromarray(img).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text(f"0 {50 / 128:.6f} {35 / 96:.6f} {40 / 128:.6f} {30 / 96:.6f}\n")
    cfg = {"path": str(root), "train": "images", "val": "images", "names": {0: "box"}}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return str(root / "data.yaml")


def test_areas_are_in_original_pixels_for_a_letterboxed_image(tmp_path):
    """Validated at imgsz 64, the 128 x 96 image is scaled by 1/2 and padded: the 40 x 30 box is 300 px² in the
    letterboxed image and must come out as 1200 px² (COCO counts areas in the original image)."""
    import yolo_attn
    from yolo_attn._compat import YOLO

    yolo_attn.register()
    cap = ValidationCapture()
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_val_start", cap.on_val_start)
    model.val(data=_letterbox_set(tmp_path / "lb"), imgsz=64, batch=1, workers=0, plots=False, verbose=False,
              device="cpu", project=str(tmp_path / "runs"))  # fmt: skip
    m = cap.matches()
    assert cap.error is None and m.has_areas and m.n_images == 1
    assert m.target_area.tolist() == pytest.approx([1200.0], rel=1e-3)
    assert np.all(m.pred_area <= 128 * 96 + 1e-3)  # predictions are clipped to the original image
    assert map_scores(m, stratum="medium").classes.tolist() == [0] and len(map_scores(m, stratum="small").classes) == 0


@pytest.mark.skipif(not (WEIGHTS.is_file() and COCO.is_dir()), reason="needs ../shared/data (yolov8n.pt, coco128)")
def test_recomputed_pairs_agree_with_the_validator_on_real_detections(tmp_path):
    """yolov8n.pt on 8 COCO images (many true positives, letterboxed to 160): the capture's recomputed TPs equal the
    validator's image by image (else matches() raises), every TP points at a target of its class, the areas lie
    inside the original images, and the "all" stratum gives Ultralytics' mAP."""
    import yolo_attn
    from yolo_attn._compat import YOLO

    yolo_attn.register()
    cap = ValidationCapture()
    model = YOLO(str(WEIGHTS))
    model.add_callback("on_val_start", cap.on_val_start)
    vm = model.val(data=_coco8(tmp_path / "coco8"), imgsz=160, batch=4, workers=0, plots=False, verbose=False,
                   device="cpu", project=str(tmp_path / "runs"))  # fmt: skip
    m = cap.matches()
    assert cap.error is None and m.has_areas and m.tp[:, 0].sum() >= 10
    p, j = np.nonzero(m.tp)
    assert np.array_equal(m.target_cls[m.matched_target[p, j]], m.cls[p])
    assert m.target_area.max() <= 640 * 640 and m.target_area.min() > 0
    s = map_scores(m, stratum="all")
    assert abs(s.map50_95 - vm.box.map) < 1e-6 and abs(s.map50 - vm.box.map50) < 1e-6
    assert sum(len(map_scores(m, stratum=k).classes) > 0 for k in ("small", "medium", "large")) >= 2


def test_pairing_rule_reproduces_the_installed_match_predictions():
    """The rule the capture picks gives exactly the installed validator's TP flags on random IoU matrices (ties and
    IoUs right at the thresholds included), whichever Ultralytics is installed."""
    from yolo_attn import capture

    validator = capture._read("DetectionValidator")
    probe = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    rule = capture._matching_rule(lambda *a: validator.match_predictions(probe, *a), probe.iouv)
    rng = np.random.default_rng(0)
    for _ in range(300):
        n_t, n_d = rng.integers(1, 6, 2)
        iou = torch.tensor(
            rng.choice([0.0, 0.3, 0.5, 0.55, 0.7, 0.9, 0.95, rng.random()], (n_t, n_d)), dtype=torch.float32
        )
        t_cls, p_cls = torch.tensor(rng.integers(0, 2, n_t)), torch.tensor(rng.integers(0, 2, n_d))
        want = validator.match_predictions(probe, p_cls, t_cls, iou).numpy()
        pairs = rule((iou * (t_cls[:, None] == p_cls)).numpy(), probe.iouv.numpy())
        assert np.array_equal(pairs >= 0, want)
        hit = pairs >= 0
        assert np.all(t_cls.numpy()[pairs[hit]] == np.broadcast_to(p_cls.numpy()[:, None], pairs.shape)[hit])
        for k in range(pairs.shape[1]):  # one detection per target and threshold
            taken = pairs[:, k][pairs[:, k] >= 0]
            assert len(np.unique(taken)) == len(taken)


def test_capture_fails_loudly_without_boxes_or_with_other_true_positives():
    """Areas asked for: a validator without the box methods, or recomputed TPs that differ from the validator's,
    make matches() raise (the run's record then says why) instead of writing wrong strata."""
    v = _FakeValidator("8.4")
    cap = ValidationCapture()
    cap.on_val_start(v)
    preds, batch = _batch_and_preds("8.4")
    v.update_metrics(preds, batch)
    with pytest.raises(RuntimeError, match="box areas not captured: .*lacks"):
        cap.matches()
    v = _FakeValidator("8.4")
    cap = ValidationCapture()
    cap.on_val_start(v)
    cap.error = None  # as if the validator had the box methods
    stats = v.metrics.stats
    type(v).update_metrics(v, preds, batch)  # the stand-in's own update (not the wrapper): 3 entries
    none = [(np.zeros(0, np.float32), np.zeros(n, np.float32), np.full((n, 10), -1)) for n in (2, 0, 1)]
    cap._take(stats, 0, preds, batch, none)  # the stand-in marks 2 TPs in image 0; "recomputed": none
    with pytest.raises(RuntimeError, match="differ from the validator's"):
        cap.matches()
