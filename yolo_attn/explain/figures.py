"""``yolo-attn explain``: one PNG per image with models side by side: detections, EigenCAM, each block's own view.

Per model (a row of the figure), from one forward pass per image with hooks attached (:mod:`.probe`):

- **detections**: Ultralytics' NMS of the model's raw output, boxes and class names;
- **CAM**: EigenCAM (the ``grad-cam`` library; gradient-free, so it suits detectors) of a chosen layer, by default the
  last row before the detection head, overlaid on the image;
- **one panel per registered block**: for dense attention (BoT/MHSA, CoAt), the attention of the query at each
  detection's centre (the 12 most confident) (the image centre when there is none), averaged over heads, upsampled to the image and combined
  by maximum (each query's map scaled to peak at 1); for deformable attention (DAT), the reference points (white)
  and the learned sampling points (one colour per offset group) drawn on the image with the offsets between them.
  A block whose family declares no map shows its utilisation only.

Titles name the weights, the block, its YAML row and pyramid level, and its utilisation on that image. Figures are
written with matplotlib's Agg backend (no display) at ``panel`` pixels per panel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from yolo_attn import _compat
from yolo_attn.explain.probe import AttentionCapture, Block, BlockUse, LayerView, find_blocks, measure_utilisation

__all__ = ["explain", "load_images", "image_files", "validation_images", "eigencam", "detect", "data_utilisation"]

LOGGER = logging.getLogger(__name__)
PAD = 114  # Ultralytics' letterbox grey
MAX_DRAWN = 12  # most confident detections drawn (and used as attention queries) per model and image


def image_files(source: str | Path | Sequence[str | Path], max_images: int | None = None) -> list[Path]:
    """Image files of ``source`` (a file, a folder, a glob, or a list of those), sorted, at most ``max_images``."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    suffixes = {f".{s}" for s in _compat.IMG_FORMATS}
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in suffixes)
        elif p.is_file():
            out.append(p)
        else:
            hits = sorted(q for q in Path().glob(str(item)) if q.suffix.lower() in suffixes) if str(item) else []
            if not hits:
                raise FileNotFoundError(f"no image found at {item!r}; give an image file, a folder or a glob")
            out += hits
    if not out:
        raise FileNotFoundError(f"no images in {source!r} (suffixes: {', '.join(sorted(suffixes))})")
    return out[:max_images] if max_images else out


def validation_images(data: str | Path, n: int = 8) -> list[Path]:
    """The first ``n`` validation images of a dataset YAML, sorted by path (a deterministic choice)."""
    d = _compat.check_det_dataset(str(data))
    val = d.get("val") or d.get("test")
    paths = val if isinstance(val, list) else [val]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.suffix == ".txt":
            base = p.parent
            files += [base / line.strip() for line in p.read_text().splitlines() if line.strip()]
        else:
            files += image_files(p)
    return sorted(files)[:n]


def load_images(files: Sequence[str | Path], imgsz: int = 640) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Letterboxed ``(B, 3, imgsz, imgsz)`` RGB batch in [0, 1] and the letterboxed uint8 images (for drawing).

    Each image is scaled so its longer side is ``imgsz`` and padded with grey (bottom / right) to a square, the
    input Ultralytics' validator gives a model with ``rect=False``.
    """
    arrays = []
    for f in files:
        im = Image.open(f).convert("RGB")
        r = imgsz / max(im.size)
        im = im.resize((max(1, round(im.width * r)), max(1, round(im.height * r))), Image.BILINEAR)
        canvas = np.full((imgsz, imgsz, 3), PAD, np.uint8)
        canvas[: im.height, : im.width] = np.asarray(im)
        arrays.append(canvas)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return batch, arrays


def data_utilisation(model: Any, data: str | Path, imgsz: int = 640, n: int = 8) -> list[BlockUse]:
    """:func:`~yolo_attn.explain.measure_utilisation` on the first ``n`` validation images of a dataset YAML.

    What a run records after its final validation (``RunRecord.utilisation``). A model without registered blocks
    gives ``[]`` without reading any image.
    """
    if not find_blocks(model):
        return []
    x, _ = load_images(validation_images(data, n), imgsz)
    return measure_utilisation(model, x)


class _RawOutput(nn.Module):
    """The detector with its first output only (the tensor grad-cam expects; eval models return a tuple)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y[0] if isinstance(y, (list, tuple)) else y


#: What the CAM panel says when the ``grad-cam`` library is not installed (the rest of the figure is drawn).
NO_CAM = "EigenCAM needs the grad-cam library:\npip install 'yolo-attn[explain]'"


def eigencam(net: nn.Module, x: torch.Tensor, layer: nn.Module) -> np.ndarray | None:
    """EigenCAM (``pytorch_grad_cam``) of ``layer`` for the batch ``x``: ``(B, H, W)`` in [0, 1] at the input size;
    None when the ``grad-cam`` library is not installed (figures then say so in the CAM panel)."""
    try:
        from pytorch_grad_cam import EigenCAM
    except ImportError:
        LOGGER.warning("explain: the grad-cam library is not installed, figures go without EigenCAM (%s)", NO_CAM)
        return None

    cam = EigenCAM(_RawOutput(net), target_layers=[layer])
    try:
        with torch.no_grad():
            return cam(x, targets=None)
    finally:
        cam.activations_and_grads.release()


def detect(raw: Any, conf: float = 0.25, iou: float = 0.7) -> list[torch.Tensor]:
    """NMS of a detector's raw output: per image an ``(n, 6)`` tensor ``x1, y1, x2, y2, conf, cls``."""
    pred = raw[0] if isinstance(raw, (list, tuple)) else raw
    return [d.detach().cpu() for d in _compat.non_max_suppression(pred, conf, iou)]


@dataclass
class _ModelView:
    """Everything one model contributes to the figure of one image."""

    name: str
    names: dict
    dets: torch.Tensor
    cam: np.ndarray | None
    blocks: list[tuple[Block, BlockUse, LayerView | None]]


def _load(weights: str | Path | nn.Module) -> tuple[str, nn.Module]:
    if isinstance(weights, nn.Module):
        return type(weights).__name__, _compat.unwrap(weights)
    model = _compat.YOLO(str(weights))
    return Path(str(weights)).name, _compat.unwrap(model)


def _cam_layer(net: nn.Module, cam_layer: int | None) -> nn.Module:
    rows = net.model
    i = len(rows) - 2 if cam_layer is None else cam_layer
    if not -len(rows) <= i < len(rows):
        raise ValueError(f"cam_layer={cam_layer} is not a row of this model (0..{len(rows) - 1})")
    return rows[i]


def _views(net: nn.Module, name: str, x: torch.Tensor, cam_layer: int | None, conf: float) -> list[_ModelView]:
    """One forward per image with the taps on (detections, maps, utilisation), then EigenCAM."""
    blocks = find_blocks(net)
    net.eval()
    p = next(net.parameters())
    x = x.to(device=p.device, dtype=p.dtype)
    out = []
    cams = eigencam(net, x, _cam_layer(net, cam_layer))
    for b in range(x.shape[0]):
        with AttentionCapture(blocks) as cap, torch.no_grad():
            raw = net(x[b : b + 1])
        uses = measure_utilisation(net, x[b : b + 1])
        layers = [blk.attention_layers() for blk in blocks]
        views = [cap.views.get(ls[-1]) if ls else None for ls in layers]  # the deepest attention layer of a block
        names = getattr(net, "names", None) or {}
        cam = cams[b] if cams is not None else None
        out.append(_ModelView(name, names, detect(raw, conf)[0], cam, list(zip(blocks, uses, views))))
    return out


def _centres(dets: torch.Tensor, hw: tuple[int, int]) -> list[tuple[float, float]]:
    """Fractional ``(fy, fx)`` of each detection's centre; the image centre when there is none."""
    if len(dets) == 0:
        return [(0.5, 0.5)]
    dets = dets[:MAX_DRAWN]
    cx = ((dets[:, 0] + dets[:, 2]) / 2 / hw[1]).clamp(0, 1)
    cy = ((dets[:, 1] + dets[:, 3]) / 2 / hw[0]).clamp(0, 1)
    return list(zip(cy.tolist(), cx.tolist()))


@torch.no_grad()  # a relative-position bias read from its parameters would otherwise carry a graph
def dense_map(view: LayerView, centres: Sequence[tuple[float, float]], hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Maximum over queries of each query's head-averaged attention map (scaled to peak 1), upsampled to ``hw``, and
    how peaked the maps are: the mean over queries of the largest weight times the key count (1 = uniform)."""
    maps, peaks = [], []
    for fy, fx in centres:
        p = view.probs(0, fy, fx).mean(0).reshape(1, 1, *view.key_size)
        peaks.append(float(p.max()) * p.numel())
        maps.append(p / p.max().clamp_min(1e-12))
    m = torch.cat(maps).amax(0, keepdim=True)
    return F.interpolate(m.float(), size=hw, mode="bilinear", align_corners=False)[0, 0].numpy(), sum(peaks) / len(
        peaks
    )


def _panel_title(model: str, use: BlockUse) -> str:
    ratio = "not measured" if use.ratio_mean is None else f"branch {100 * use.ratio_mean:.1f}% of input"
    lv = f" P{use.level}" if use.level is not None else ""
    return f"{model}\n{use.block} row {use.row}{lv}: {ratio}"


def _draw_dets(ax, view: _ModelView) -> None:
    from matplotlib.patches import Rectangle

    for x1, y1, x2, y2, c, k in view.dets[:MAX_DRAWN].tolist():  # NMS sorts by confidence
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec="lime"))
        label = view.names.get(int(k), str(int(k))) if isinstance(view.names, dict) else str(int(k))
        ax.text(x1, y1, f"{label} {c:.2f}", color="black", fontsize=7, va="top", backgroundcolor="lime", clip_on=True)


def _figure(image: np.ndarray, views: list[_ModelView], path: Path, panel: int) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    hw = image.shape[:2]
    ncols = 2 + max((len(v.blocks) for v in views), default=0)
    dpi = 100
    fig = Figure(figsize=(ncols * panel / dpi, len(views) * panel / dpi), dpi=dpi)
    axes = fig.subplots(len(views), ncols, squeeze=False)
    for r, v in enumerate(views):
        for ax in axes[r]:
            ax.axis("off")
        ax = axes[r][0]
        ax.imshow(image)
        _draw_dets(ax, v)
        shown = f" ({MAX_DRAWN} drawn)" if len(v.dets) > MAX_DRAWN else ""
        ax.set_title(f"{v.name}\n{len(v.dets)} detections{shown}", fontsize=8)
        ax = axes[r][1]
        ax.imshow(image)
        if v.cam is not None:
            ax.imshow(v.cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        else:
            ax.text(0.5, 0.5, NO_CAM, ha="center", va="center", fontsize=7, transform=ax.transAxes, wrap=True)
        ax.set_title(f"{v.name}\nEigenCAM", fontsize=8)
        centres = _centres(v.dets, hw)
        if not v.blocks and ncols > 2:
            axes[r][2].text(0.5, 0.5, "no registered blocks", ha="center", va="center", fontsize=9)
        for c, (_, use, lv) in enumerate(v.blocks, start=2):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_title(_panel_title(v.name, use), fontsize=8)
            if lv is None:
                continue
            pix = lv.key_pixels(0, hw)
            if pix is None:
                heat, peak = dense_map(lv, centres, hw)
                ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
                ax.plot([fx * hw[1] for _, fx in centres], [fy * hw[0] for fy, _ in centres], "c*", ms=9)
                ax.set_title(
                    f"{_panel_title(v.name, use)}\nattention at the stars, peak {peak:.1f}x uniform", fontsize=8
                )
            else:
                _draw_points(ax, *pix)
                ax.set_title(f"{_panel_title(v.name, use)}\nwhite: reference points, colour: sampled", fontsize=8)
    title = 48 / panel  # three title lines of 8 pt above every row, as a fraction of a panel
    fig.subplots_adjust(
        left=0.005, right=0.995, bottom=0.005, top=1 - title / len(views), wspace=0.02, hspace=title / (1 - title)
    )
    fig.savefig(path, dpi=dpi)
    return path


def _draw_points(ax, ref: torch.Tensor, pts: torch.Tensor) -> None:
    """Reference points (white) and sampled points (one colour per group) with the offsets between them."""
    colours = ["red", "cyan", "yellow", "magenta", "orange", "lime"]
    r = ref[0].reshape(-1, 2).numpy()
    ax.scatter(r[:, 0], r[:, 1], s=6, c="white", linewidths=0)
    for g in range(pts.shape[0]):
        p = pts[g].reshape(-1, 2).numpy()
        rg = ref[g].reshape(-1, 2).numpy()
        col = colours[g % len(colours)]
        ax.plot(np.stack([rg[:, 0], p[:, 0]]), np.stack([rg[:, 1], p[:, 1]]), color=col, lw=0.6, alpha=0.7)
        ax.scatter(p[:, 0], p[:, 1], s=8, c=col, linewidths=0)


def explain(
    weights: Sequence[str | Path | nn.Module],
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    imgsz: int = 640,
    max_images: int | None = 4,
    cam_layer: int | None = None,
    conf: float = 0.25,
    panel: int = 320,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Write one PNG per image of ``source`` with the models of ``weights`` side by side (one row each).

    Args:
        weights: Checkpoints (``best.pt``), model YAMLs (random weights) or built models.
        source: Image file, folder, glob, or a list of them (sorted; the first ``max_images``).
        out: Folder for the PNGs (``<image stem>.png``).
        imgsz: Letterbox size (the model's input).
        max_images: At most this many images (None: all).
        cam_layer: Row whose output EigenCAM explains (default: the last row before the detection head).
        conf: Detection confidence threshold.
        panel: Pixels per panel (a figure is ``(2 + blocks) * panel`` wide and ``models * panel`` high).
        names: One title per model (default: the weights' file name, or the model's class).

    Returns:
        The written PNG paths, in image order. The models' outputs are unchanged (hooks only observe).
    """
    if not weights:
        raise ValueError("explain needs at least one weights file or model")
    if names is not None and len(names) != len(weights):
        raise ValueError(f"names gives {len(names)} titles for {len(weights)} models: give one per model or none")
    files = image_files(source, max_images)
    x, arrays = load_images(files, imgsz)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_model = []
    for i, w in enumerate(weights):
        name, net = _load(w)
        per_model.append(_views(net, names[i] if names is not None else name, x, cam_layer, conf))
    paths = []
    for i, f in enumerate(files):
        paths.append(_figure(arrays[i], [views[i] for views in per_model], out / f"{Path(f).stem}.png", panel))
    LOGGER.info("explain: %d figures in %s", len(paths), out)
    return paths
