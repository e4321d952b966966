"""The generated dataset is deterministic, in YOLO format, and readable by Ultralytics."""

import hashlib

import pytest
import yaml

from yolo_attn.data import CLASSES, make_shapes_dataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".png", ".txt"}:
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", n_train=3, n_val=2, imgsz=32, seed=1).parent
    b = make_shapes_dataset(tmp_path / "b", n_train=3, n_val=2, imgsz=32, seed=1).parent
    c = make_shapes_dataset(tmp_path / "c", n_train=3, n_val=2, imgsz=32, seed=2).parent
    assert _digest(a) == _digest(b) != _digest(c)


def test_labels_are_valid_yolo_boxes(tmp_path):
    cfg = make_shapes_dataset(tmp_path, n_train=6, n_val=2, imgsz=48, seed=0)
    d = yaml.safe_load(cfg.read_text())
    assert d["names"] == dict(enumerate(CLASSES)) and d["path"] == str(tmp_path.resolve())
    rows = [line.split() for p in (tmp_path / "labels").rglob("*.txt") for line in p.read_text().splitlines()]
    assert rows
    for r in rows:
        cls, *box = r
        assert int(cls) in range(len(CLASSES)) and len(box) == 4
        cx, cy, w, h = map(float, box)
        assert 0 < w <= 1 and 0 < h <= 1 and 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6
        assert 0 <= cy - h / 2 + 1e-6 and cy + h / 2 <= 1 + 1e-6


def test_ultralytics_reads_it(shapes_data):
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(shapes_data)
    assert info["nc"] == 3 and len(list((__import__("pathlib").Path(info["train"])).glob("*.png"))) == 8


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train=0"):
        make_shapes_dataset(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="imgsz=8"):
        make_shapes_dataset(tmp_path, imgsz=8)
