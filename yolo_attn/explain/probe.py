"""Reading blocks from the outside: which rows hold a registered block, how much each is used, what it attends to.

Everything here observes through forward hooks (and reads parameters); nothing changes a module or its output. What
to read is declared by each family through the registry (:class:`yolo_attn.registry.Probe` on ``register_block``),
so this module names no family.

Utilisation of a block (:func:`measure_utilisation`) is measured at the submodule its probe names as residual
(``Probe.residual``): for ``y = x + branch(x)`` the per-image ratio ``||y - x|| / ||x||`` (Frobenius norms over
channels and pixels). The package's families name ``m``, the stack of residual attention layers: in an insert block
(BoT, CoAt, DATBlock) that is the whole block after its optional input projection; in a CSP block (BoT3, CoAt3, DAT3)
it is the hidden branch ``m(cv1(x))``, so the ratio says how far the stack moves the features it receives. The branch
is everything the stack adds: attention, and for CoAt / DAT also the MLP (and DAT's local conv). A registered
``insert`` block without a probe gets the same ratio at the block itself; anything else is reported as not measured.

Gates are the learned values that switch a branch on: the mean ``|value|`` of the parameters a probe names (BoT: the
zero-initialised BN scale ``cv2.bn.weight``; CoAt, DAT: the zero-initialised output projections), and, for
deformable attention (a probe whose tap has ``points``), the distance of the sampled key points from their reference
points in pixels of the feature map the block runs on (mean and max over points and images).

Attention maps (:class:`AttentionCapture`) are recomputed from the q and k projections (and the position bias module's
output) captured during one forward: ``softmax(q_n . k_j * dim_head ** -0.5 + bias_nj)`` over the keys ``j`` for the
one query row ``n`` asked for, in fp32.

Examples:
    >>> import torch
    >>> from yolo_attn.nn import BoT
    >>> uses = measure_utilisation(BoT(32, 32), torch.rand(2, 32, 8, 8))
    >>> uses[0].block, uses[0].ratio_mean, uses[0].gates
    ('BoT', 0.0, {'bn_gamma': 0.0})
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from yolo_attn import registry
from yolo_attn._compat import unwrap

__all__ = [
    "Block",
    "BlockUse",
    "AttentionCapture",
    "LayerView",
    "find_blocks",
    "measure_utilisation",
]


@dataclass(frozen=True)
class Block:
    """A registered block found in a model.

    Attributes:
        module: The block.
        spec: Its registry entry.
        row: YAML row index (Ultralytics' ``.i``), None for a bare block.
    """

    module: nn.Module
    spec: registry.BlockSpec
    row: int | None

    @property
    def probe(self) -> registry.Probe | None:
        """The family's probe, or the generic one (the block itself as the residual) for an insert block."""
        if self.spec.probe is not None:
            return self.spec.probe
        return registry.Probe("") if self.spec.role == "insert" else None

    def residual(self) -> nn.Module | None:
        """The submodule measured as ``y = x + branch(x)``, None when not measured."""
        probe = self.probe
        if probe is None or probe.residual is None:
            return None
        return self.module.get_submodule(probe.residual) if probe.residual else self.module

    def attention_layers(self) -> list[nn.Module]:
        """The block's attention layers its probe can read (in forward order)."""
        probe = self.probe
        tap = probe.attention if probe else None
        if tap is None:
            return []
        return [m for m in self.module.modules() if type(m).__name__ == tap.layer]


@dataclass(frozen=True)
class BlockUse:
    """How much one block was used on some images.

    Attributes:
        row: YAML row of the block (None for a bare block).
        block: Registered block name (``BoT``).
        family: Its family (``bot``).
        level: Pyramid level its attention runs at (3 = stride 8), from the feature map it saw.
        ratio_mean: Mean over images of ``||branch|| / ||input||`` (see the module docstring); None: not measured.
        ratio_std: Standard deviation over images (0 for one image).
        n_images: Images measured.
        gates: Learned gate values (``bn_gamma``: mean |BN scale|; ``offset_px_mean`` / ``offset_px_max``: DAT's
            sampling offsets in feature-map pixels...).
        measured_at: Dotted path of the measured submodule inside the block (``""``: the block itself).
        note: Why the ratio is missing, when it is.
    """

    row: int | None
    block: str
    family: str | None
    level: int | None
    ratio_mean: float | None
    ratio_std: float | None
    n_images: int
    gates: dict[str, float] = field(default_factory=dict)
    measured_at: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the run record keeps these)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockUse:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (records of later versions)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def label(self) -> str:
        """One line for tables and figure titles, e.g. ``bot row 16 P3: branch 2.1% of input``.

        Examples:
            >>> BlockUse(16, "BoT", "bot", 3, 0.021, 0.004, 8).label()
            'bot row 16 P3: branch 2.1% (sd 0.4%) of input'
        """
        where = f"{self.family or self.block} row {self.row}" + (f" P{self.level}" if self.level is not None else "")
        if self.ratio_mean is None:
            return f"{where}: not measured" + (f" ({self.note})" if self.note else "")
        return f"{where}: branch {100 * self.ratio_mean:.1f}% (sd {100 * (self.ratio_std or 0):.1f}%) of input"


def find_blocks(model: Any) -> list[Block]:
    """The registered blocks of a family in ``model`` (an Ultralytics model, ``YOLO`` object or a bare block).

    For an Ultralytics model these are its YAML rows whose class is registered with a family; a bare registered
    block is returned as itself (row None).
    """
    net = unwrap(model)
    by_cls = {sp.cls: sp for sp in registry.specs() if sp.family}
    rows = getattr(net, "model", None)
    if isinstance(rows, nn.Sequential):
        return [Block(m, by_cls[type(m)], getattr(m, "i", i)) for i, m in enumerate(rows) if type(m) in by_cls]
    return [Block(net, by_cls[type(net)], None)] if type(net) in by_cls else []


def _level(image_hw: Sequence[int], feature_hw: Sequence[int]) -> int | None:
    """Pyramid level of a feature map of an image (640 / 80 = 8 -> 3); None when the ratio is not a power of two."""
    if not feature_hw or not feature_hw[0]:
        return None
    lv = math.log2(image_hw[0] / feature_hw[0])
    return round(lv) if abs(lv - round(lv)) < 0.2 else None


def _ref_points(hk: int, wk: int, like: torch.Tensor) -> torch.Tensor:
    """Key-cell centres ``(Hk, Wk, 2)``, normalised ``(x, y)`` (``align_corners=False``), as DAT places them."""
    y = (2 * torch.arange(hk, dtype=like.dtype, device=like.device) + 1) / hk - 1
    x = (2 * torch.arange(wk, dtype=like.dtype, device=like.device) + 1) / wk - 1
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)


@dataclass
class LayerView:
    """What one attention layer computed in the last forward (batch element ``b`` is image ``b``).

    Attributes:
        q: Queries ``(B, heads, N, d)``, unscaled; ``N = H * W`` row-major.
        k: Keys ``(B, heads, M, d)``.
        size: ``(H, W)`` of the query grid.
        key_size: ``(Hk, Wk)`` of the key grid.
        scale: Logit scale.
        bias: The position bias (a ``RelBias``), or None.
        points: Sampled key points ``(B * groups, Hk, Wk, 2)``, normalised ``(x, y)``, or None (keys are the pixels).
        groups: Offset groups (heads of a group share its points).
    """

    q: torch.Tensor
    k: torch.Tensor
    size: tuple[int, int]
    key_size: tuple[int, int]
    scale: float
    bias: Any = None
    points: torch.Tensor | None = None
    groups: int = 1

    def probs(self, b: int, fy: float, fx: float) -> torch.Tensor:
        """Attention of the query at fractional position ``(fy, fx)`` (0..1 of the map) of image ``b``: ``(heads, M)``.

        ``softmax(q_n . k_j * scale + bias_nj)`` over keys ``j``, in fp32 (fp64 stays), for the one query row.
        """
        h, w = self.size
        y, x = min(int(fy * h), h - 1), min(int(fx * w), w - 1)
        n = y * w + x
        ct = torch.promote_types(self.q.dtype, torch.float32)
        logits = torch.einsum("hd,hmd->hm", self.q[b, :, n].to(ct) * self.scale, self.k[b].to(ct))
        if self.bias is not None:
            logits = logits + self._bias_row(b, y, x, n).to(ct)
        return logits.softmax(-1)

    def _bias_row(self, b: int, y: int, x: int, n: int) -> torch.Tensor:
        """The bias of query ``n`` (image row ``y``, column ``x``) over the keys, ``(heads, M)``."""
        bias = self.bias
        try:  # one image row of queries from the bias module (never the whole N x M)
            rows = bias.pos.expand(bias.factors, bias.size, slice(y, y + 1))  # B or 1, heads, W, M
            return rows[min(b, rows.shape[0] - 1), :, x]
        except (AttributeError, TypeError):  # a bias object of another shape: its dense form
            dense = bias.dense()
            return dense[min(b, dense.shape[0] - 1), :, n]

    def key_pixels(self, b: int, image_hw: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(reference, sampled)`` key points of image ``b`` in image pixels ``(groups, Hk, Wk, 2)`` as ``(x, y)``.

        Normalised coordinates map to image pixels as ``(p + 1) / 2 * size`` (``align_corners=False``: -1 and 1 are
        the outer edges of the map, which covers the whole image). None when the keys are the pixels.
        """
        if self.points is None:
            return None
        pts = self.points.unflatten(0, (-1, self.groups))[b].float()  # groups, Hk, Wk, 2
        ref = _ref_points(pts.shape[1], pts.shape[2], pts).expand_as(pts)
        size = torch.tensor([image_hw[1], image_hw[0]], dtype=pts.dtype)
        return (ref + 1) / 2 * size, (pts + 1) / 2 * size


class AttentionCapture:
    """Forward hooks that keep what each tapped attention layer of ``blocks`` computed in the latest forward.

    Use as a context manager; :attr:`views` maps each attention layer to its :class:`LayerView` after a forward.
    The hooks only read: outputs are never replaced.
    """

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)
        self.views: dict[nn.Module, LayerView] = {}
        self._parts: dict[nn.Module, dict[str, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> AttentionCapture:
        for blk in self.blocks:
            tap = blk.probe.attention if blk.probe else None
            for layer in blk.attention_layers():
                self._attach(layer, tap)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _attach(self, layer: nn.Module, tap: registry.AttnTap) -> None:
        parts = self._parts.setdefault(layer, {})

        def on_q(mod, inputs, out):
            parts["q_out"] = out.detach()
            if tap.points:
                with torch.no_grad():
                    parts["points"] = getattr(layer, tap.points)(out).detach()
            if tap.q == tap.k:
                parts["k_out"] = out.detach()

        def on_k(mod, inputs, out):
            parts["k_out"] = out.detach()

        def on_bias(mod, inputs, out):
            parts["bias"] = out

        def on_layer(mod, inputs, out):  # the layer finished: assemble its view
            self.views[layer] = self._view(layer, tap, parts)

        self._handles.append(layer.get_submodule(tap.q).register_forward_hook(on_q))
        if tap.k != tap.q:
            self._handles.append(layer.get_submodule(tap.k).register_forward_hook(on_k))
        bias_mod = getattr(layer, tap.bias, None) if tap.bias else None
        if isinstance(bias_mod, nn.Module):
            self._handles.append(bias_mod.register_forward_hook(on_bias))
        self._handles.append(layer.register_forward_hook(on_layer))

    @staticmethod
    def _view(layer: nn.Module, tap: registry.AttnTap, parts: dict[str, Any]) -> LayerView:
        heads, dim_head = layer.num_heads, layer.dim_head
        q_out, k_out = parts["q_out"], parts["k_out"]
        if tap.q == tap.k:  # one projection: q, k, v stacked along channels
            q_out, k_out = q_out[:, : heads * dim_head], k_out[:, heads * dim_head : 2 * heads * dim_head]
        q = rearrange(q_out, "b (h d) y x -> b h (y x) d", h=heads)
        k = rearrange(k_out, "b (h d) y x -> b h (y x) d", h=heads)
        return LayerView(
            q=q,
            k=k,
            size=(q_out.shape[2], q_out.shape[3]),
            key_size=(k_out.shape[2], k_out.shape[3]),
            scale=dim_head**-0.5,
            bias=parts.get("bias"),
            points=parts.get("points"),
            groups=int(getattr(layer, "groups", 1)),
        )


@contextlib.contextmanager
def _residual_ratios(blocks: Sequence[Block]) -> Iterator[dict[int, dict[str, list]]]:
    """Hooks collecting per-image ``||y - x|| / ||x||`` (and the input size) at each block's residual module."""
    out: dict[int, dict[str, list]] = {}
    handles = []
    for j, blk in enumerate(blocks):
        rec = out.setdefault(j, {"ratios": [], "hw": None, "note": "", "offsets": []})
        mod = blk.residual()
        if mod is None:
            rec["note"] = "the family declares no residual to measure"
            handles.append(blk.module.register_forward_hook(_size_hook(rec)))
            continue

        def hook(m, inputs, y, rec=rec):
            x = inputs[0]
            rec["hw"] = tuple(x.shape[-2:])
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                rec["note"] = "its output shape differs from its input (not a residual here)"
                return
            dx = (y.detach().double() - x.detach().double()).flatten(1).norm(dim=1)
            rec["ratios"] += (dx / x.detach().double().flatten(1).norm(dim=1).clamp_min(1e-12)).tolist()

        handles.append(mod.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def _size_hook(rec: dict):
    def hook(m, inputs, y):
        rec["hw"] = tuple(inputs[0].shape[-2:])

    return hook


def _gates(blk: Block) -> dict[str, float]:
    """Mean |value| of the parameters each of the probe's gates names (absent ones, e.g. after BN fusion, skipped)."""
    probe = blk.probe
    out = {}
    for label, suffix in probe.gates if probe else ():
        vals = [p.detach().abs().flatten() for n, p in blk.module.named_parameters() if n.endswith(suffix)]
        if vals:
            out[label] = float(torch.cat(vals).double().mean())
    return out


def measure_utilisation(model: Any, images: torch.Tensor, batch: int = 8) -> list[BlockUse]:
    """How much each registered block of ``model`` is used on ``images`` (see the module docstring).

    Args:
        model: Ultralytics model / ``YOLO`` object, or a bare registered block.
        images: ``(B, C, H, W)`` input batch (for a detector: RGB in [0, 1], e.g. from
            :func:`yolo_attn.explain.load_images`).
        batch: Images per forward pass.

    Returns:
        One :class:`BlockUse` per block, in row order. The model's mode is kept; the forward runs in eval mode
        without gradients.
    """
    net = unwrap(model)
    blocks = find_blocks(net)
    if not blocks:
        return []
    was_training = net.training
    net.eval()
    offsets: dict[int, list[torch.Tensor]] = {j: [] for j in range(len(blocks))}
    try:
        with _residual_ratios(blocks) as recs, AttentionCapture(blocks) as cap, torch.no_grad():
            p = next(net.parameters(), None)
            for s in range(0, images.shape[0], batch):
                x = images[s : s + batch]
                if p is not None:
                    x = x.to(device=p.device, dtype=p.dtype)
                net(x)
                for j, blk in enumerate(blocks):
                    for layer in blk.attention_layers():
                        view = cap.views.get(layer)
                        if view is not None and view.points is not None:
                            offsets[j].append(_offset_px(view))
    finally:
        net.train(was_training)
    uses = []
    for j, blk in enumerate(blocks):
        rec = recs[j]
        r = torch.tensor(rec["ratios"], dtype=torch.float64)
        gates = _gates(blk)
        if offsets[j]:
            o = torch.cat(offsets[j])
            gates.update(offset_px_mean=float(o.mean()), offset_px_max=float(o.max()))
        uses.append(
            BlockUse(
                row=blk.row,
                block=blk.spec.name,
                family=blk.spec.family,
                level=_level(images.shape[-2:], rec["hw"]) if rec["hw"] and blk.row is not None else None,
                ratio_mean=float(r.mean()) if len(r) else None,
                ratio_std=float(r.std(unbiased=False)) if len(r) else None,
                n_images=len(r) if len(r) else int(images.shape[0]),
                gates=gates,
                measured_at=None if blk.residual() is None else blk.probe.residual,
                note="" if len(r) else rec["note"],
            )
        )
    return uses


def _offset_px(view: LayerView) -> torch.Tensor:
    """Distances of the sampled key points from their reference points, in pixels of the query map (flat)."""
    pts = view.points.double()  # B*G, Hk, Wk, 2
    ref = _ref_points(pts.shape[1], pts.shape[2], pts)
    h, w = view.size
    d = (pts - ref) * torch.tensor([w / 2, h / 2], dtype=pts.dtype)  # normalised -> pixels: size / 2 per unit
    return d.norm(dim=-1).flatten()
