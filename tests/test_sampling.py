"""grid_sample_gather: F.grid_sample's values and gradients from gathers; exports at opset 13 and through torch.export."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yolo_attn.nn.sampling import grid_sample_gather

# (H, W, Ho, Wo): square, rectangular, odd, one row, one column, a single pixel, a 1-pixel output
SIZES = [(6, 6, 4, 4), (5, 9, 7, 3), (1, 11, 2, 5), (13, 1, 5, 2), (1, 1, 3, 2), (17, 8, 1, 1)]
MODES = list(itertools.product([False, True], ["border", "zeros"]))


def _grid(n: int, ho: int, wo: int, spread: float = 1.3, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Random points, about a quarter of them outside [-1, 1] (spread 1.3), plus the exact corners and the centre."""
    g = (torch.rand(n, ho, wo, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1) * spread
    special = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]], dtype=dtype)
    k = min(len(special), ho * wo)
    g.view(n, -1, 2)[:, :k] = special[:k]
    return g


def _reference(x, g, align_corners, padding_mode):
    return F.grid_sample(x, g, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)


@pytest.mark.parametrize("align_corners,padding_mode", MODES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_matches_grid_sample(size, align_corners, padding_mode):
    h, w, ho, wo = size
    x = torch.randn(3, 5, h, w, generator=torch.Generator().manual_seed(1))
    g = _grid(3, ho, wo)
    out = grid_sample_gather(x, g, align_corners=align_corners, padding_mode=padding_mode)
    ref = _reference(x, g, align_corners, padding_mode)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_grid_points_are_exact(align_corners):
    """Points on pixel centres read the pixel itself (the floor/ceil corner case where one weight is 0)."""
    h, w = 4, 7
    x = torch.randn(1, 2, h, w)
    ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    if align_corners:
        gy, gx = ys / (h - 1) * 2 - 1, xs / (w - 1) * 2 - 1
    else:
        gy, gx = (2 * ys + 1) / h - 1, (2 * xs + 1) / w - 1
    g = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # 1, H, W, 2 (x, y)
    torch.testing.assert_close(grid_sample_gather(x, g, align_corners=align_corners), x, atol=1e-6, rtol=0)


def test_half_input_is_sampled_in_fp32_and_returned_in_half():
    x, g = torch.randn(2, 4, 9, 10), _grid(2, 5, 5)
    out = grid_sample_gather(x.half(), g.half())
    assert out.dtype == torch.float16
    ref = _reference(x.half().float(), g.half().float(), False, "border")
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=0)  # only the final rounding to half


@pytest.mark.parametrize("align_corners,padding_mode", MODES)
def test_gradients_match_grid_sample_and_gradcheck(align_corners, padding_mode):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    g = _grid(2, 3, 4, dtype=torch.float64, seed=3)
    g.view(2, -1, 2)[:, :4] += 0.01  # off the corners: clamp and floor are not differentiable exactly there
    g.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda a, b: grid_sample_gather(a, b, align_corners=align_corners, padding_mode=padding_mode), (x, g)
    )
    ours = torch.autograd.grad(grid_sample_gather(x, g, align_corners, padding_mode).sin().sum(), (x, g))
    ref = torch.autograd.grad(_reference(x, g, align_corners, padding_mode).sin().sum(), (x, g))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(padding_mode="reflection"), "padding_mode='reflection'"),
        (dict(grid=torch.zeros(2, 3, 3, 3)), r"grid of shape \(2, 3, 3, 3\)"),
        (dict(grid=torch.zeros(1, 3, 3, 2)), "batch size"),
        (dict(grid=torch.zeros(3, 3, 2)), "3-D grid"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    args = dict(input=torch.zeros(2, 1, 4, 4), grid=torch.zeros(2, 3, 3, 2)) | kwargs
    with pytest.raises(ValueError, match=match):
        grid_sample_gather(**args)


class _Sampler(torch.nn.Module):
    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return grid_sample_gather(x, g, align_corners=self.align_corners)


# Export at one size, run at others: a size frozen into the graph fails or gives wrong values at the second one.
EXPORT_SIZE = ((2, 4, 10, 12), (2, 5, 6, 2))
CHECK_SIZES = [((2, 4, 17, 9), (2, 3, 8, 2)), ((1, 4, 1, 7), (1, 2, 5, 2)), EXPORT_SIZE]


@pytest.mark.parametrize("align_corners", [False, True])
def test_onnx_opset13_dynamic_matches_onnxruntime(align_corners, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    (xs, gs) = EXPORT_SIZE
    path = tmp_path / "sampler.onnx"
    torch.onnx.export(
        _Sampler(align_corners),
        (torch.randn(*xs), _grid(*gs[:3])),
        str(path),
        opset_version=13,  # ONNX GridSample needs 16: this graph must not contain it
        dynamo=False,
        input_names=["x", "g"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "g": {0: "n", 1: "ho", 2: "wo"}, "y": {0: "n", 2: "ho", 3: "wo"}},
    )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GridSample" not in ops, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for i, (xs, gs) in enumerate(CHECK_SIZES):
        x, g = torch.randn(*xs), _grid(*gs[:3], seed=i)
        got = sess.run(None, {"x": x.numpy(), "g": g.numpy()})[0]
        ref = _reference(x, g, align_corners, "border").numpy()
        assert got.shape == ref.shape, xs
        assert np.abs(got - ref).max() < 1e-5, xs


@pytest.mark.parametrize("align_corners", [False, True])
def test_torch_export_dynamic_hw_matches_eager(align_corners):
    from torch.export import Dim

    (xs, gs) = EXPORT_SIZE
    n, size = Dim("n", min=1, max=64), dict(min=1, max=4096)
    dynamic = ({0: n, 2: Dim("h", **size), 3: Dim("w", **size)}, {0: n, 1: Dim("ho", **size), 2: Dim("wo", **size)})
    prog = torch.export.export(
        _Sampler(align_corners), (torch.randn(*xs), _grid(*gs[:3])), dynamic_shapes=dynamic, strict=False
    )
    run = prog.module()
    for i, (xs, gs) in enumerate(CHECK_SIZES):
        x, g = torch.randn(*xs), _grid(*gs[:3], seed=i)
        torch.testing.assert_close(run(x, g), _reference(x, g, align_corners, "border"), atol=1e-5, rtol=0)
