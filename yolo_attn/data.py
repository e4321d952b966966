"""A tiny, deterministic detection dataset in Ultralytics' real format: coloured shapes on textured backgrounds.

The tests and the README demo train on it, so nothing ever downloads. Same seed, same bytes: images are PNG
(lossless), drawn with PIL from a seeded NumPy generator.

Examples:
    >>> import tempfile
    >>> from yolo_attn.data import make_shapes_dataset
    >>> yaml_path = make_shapes_dataset(tempfile.mkdtemp(), n_train=4, n_val=2, imgsz=32)
    >>> yaml_path.name, len(list((yaml_path.parent / "images" / "train").glob("*.png")))
    ('shapes.yaml', 4)
    >>> # then: yolo train model=cfg/yolov8-bot.yaml data=<yaml_path> imgsz=32
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "make_shapes_dataset"]

CLASSES = ("circle", "square", "triangle")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour gradient + stripes + noise, so the detector cannot key on a flat background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, 3)
    grad = rng.uniform(-60, 60, (2, 3))
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    freq, angle = rng.uniform(4, 14), rng.uniform(0, math.pi)
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    img += stripes[..., None] * rng.uniform(5, 25)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, cls: int, box: tuple[float, float, float, float], colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if cls == 0:
        draw.ellipse(box, fill=colour)
    elif cls == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _make_image(rng: np.random.Generator, size: int, max_objects: int) -> tuple[Image.Image, list[str]]:
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    labels, boxes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):  # avoid heavy overlap so every label stays visible
            w = h = float(rng.uniform(0.18, 0.45) * size)
            if rng.random() < 0.5:
                w *= float(rng.uniform(0.7, 1.3))
            x0, y0 = float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw(draw, cls, box, colour)
        boxes.append(box)
        cx, cy = (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size
        labels.append(f"{cls} {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}")
    return img, labels


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_shapes_dataset(
    root: str | Path,
    n_train: int = 16,
    n_val: int = 8,
    imgsz: int = 64,
    seed: int = 0,
    max_objects: int = 3,
    n_test: int = 0,
) -> Path:
    """Write ``root/images/{train,val}``, ``root/labels/{train,val}`` and ``root/shapes.yaml``; return the YAML path.

    Re-running with the same arguments rewrites identical files. The dataset YAML has an absolute ``path:`` so it
    works from any working directory. ``n_test`` > 0 adds a held-out ``test`` split (``images/test``, ``test:`` in the
    YAML), drawn after the other two, so train and val are the same images with or without it.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need at least one train and one val image, got n_train={n_train}, n_val={n_val}")
    if n_test < 0:
        raise ValueError(f"n_test must be 0 (no test split) or more, got {n_test}")
    if imgsz < 16:
        raise ValueError(f"imgsz={imgsz} is too small to draw shapes; use 16 or more")
    root = Path(root).resolve()
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        if not count:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = _make_image(rng, imgsz, max_objects)
            img.save(root / "images" / split / f"{split}_{i:04d}.png")
            (root / "labels" / split / f"{split}_{i:04d}.txt").write_text("\n".join(labels) + "\n")
    cfg = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        **({"test": "images/test"} if n_test else {}),
        "names": dict(enumerate(CLASSES)),
    }
    out = root / "shapes.yaml"
    out.write_text(
        "# Generated by yolo_attn.data.make_shapes_dataset: coloured shapes on textured backgrounds.\n"
        + yaml.safe_dump(cfg, sort_keys=False)
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """``python data/make_shapes.py [root] --train N --val N [--test N] --imgsz S --seed S``: write the set, print its
    YAML."""
    import argparse

    p = argparse.ArgumentParser(description="Generate the tiny shapes detection dataset (YOLO format).")
    p.add_argument("root", nargs="?", default="datasets/shapes")
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--val", type=int, default=16)
    p.add_argument("--test", type=int, default=0, help="images of a held-out test split (0: none)")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(make_shapes_dataset(a.root, a.train, a.val, a.imgsz, a.seed, n_test=a.test))


if __name__ == "__main__":
    main()
