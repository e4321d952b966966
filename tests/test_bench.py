"""Latency / peak-memory measurement: real figures, sensible failure handling, the generic block cases, the table and
the script."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, subprocess_env
from torch import nn

from yolo_attn import bench, registry
from yolo_attn.bench import BenchCase


class Double(nn.Module):
    """Allocates exactly one output the size of its input (and nothing else) per forward."""

    def forward(self, x):
        return x * 2


def test_cpu_peak_memory_is_a_real_measure():
    """1 MiB input -> the forward step allocates exactly one 1 MiB output: both CPU methods must see it."""
    x = torch.zeros(1, 1, 512, 512)  # 1 MiB of fp32
    step = bench._make_step(Double(), x, backward=False)
    mb, method = bench.peak_memory_mb(step, "cpu")
    assert method == "profiler"
    assert mb == pytest.approx(1.0, rel=0.05)
    assert bench._cpu_peak_dispatch(step) / 2**20 == pytest.approx(1.0, rel=0.05)


def test_cpu_peak_memory_grows_with_batch_and_backward():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    small = bench.bench_block(conv, (1, 8, 64, 64), backward=False, warmup=1, iters=1)
    big = bench.bench_block(conv, (4, 8, 64, 64), backward=False, warmup=1, iters=1)
    train = bench.bench_block(conv, (4, 8, 64, 64), backward=True, warmup=1, iters=1)
    out_mb = 4 * 16 * 64 * 64 * 4 / 2**20  # the batch-4 output alone
    assert big["peak_mb"] >= out_mb * 0.95 > small["peak_mb"]
    assert train["peak_mb"] > big["peak_mb"]  # the backward keeps grads and the output's gradient alive
    assert train["mode"] == "fwd+bwd" and big["mode"] == "fwd"


def test_bench_block_result_and_mode_restored():
    m = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    r = bench.bench_block(m, (2, 4, 16, 16), backward=True, warmup=1, iters=3)
    assert {"shape", "device", "mode", "ms", "ms_min", "peak_mb", "mem_method", "params", "iters"} <= set(r)
    assert r["ms"] >= r["ms_min"] > 0 and r["params"] == sum(p.numel() for p in m.parameters())
    assert not m.training and all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match="iters"):
        bench.bench_block(m, (1, 4, 8, 8), iters=0)


def test_bench_table_records_failures_and_formats():
    cases = [
        BenchCase("conv", lambda: nn.Conv2d(8, 8, 3, padding=1), (1, 8, 16, 16)),
        BenchCase("broken", lambda: nn.Conv2d(3, 8, 3), (1, 8, 16, 16)),  # wrong channels
    ]
    rows = bench.bench_table(cases, warmup=1, iters=2)
    assert [r["name"] for r in rows] == ["conv", "broken"]
    assert "error" not in rows[0] and rows[0]["gflops"] == pytest.approx(2 * 8 * 16 * 16 * 8 * 9 / 1e9)
    assert "RuntimeError" in rows[1]["error"]
    table = bench.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| block") and "peak MB" in lines[0] and "family" not in lines[0] and len(lines) == 4
    assert "1x8x16x16" in lines[2] and lines[1].split("|")[4].endswith(":")  # params: right-aligned


def test_bench_model_yolo_batches():
    from yolo_attn._compat import model_class

    model = model_class("detect")("yolov8n.yaml", ch=3, nc=3, verbose=False)
    r = bench.bench_model(model, 64, batches=(1, 2), warmup=1, iters=2)
    assert r.imgsz == [64, 64] and r.device == "cpu"
    assert r.latency_ms[1] > 0 and r.latency_ms[2] > 0 and r.peak_mb[2] > 0


def test_block_cases_cover_every_registered_block(registered):
    """Every registered block that names bench levels gets a case per level (and attention implementation), built
    as a YAML row builds it; the smallest level runs (shape preserved: c1 == c2)."""
    cases = bench.block_cases()
    want = [(sp.name, lv) for sp in registry.specs() if sp.bench_levels for lv in sp.bench_levels]
    assert len(want) >= 9 and len(cases) == len(want) * len(bench.IMPLS)
    assert [(c.name.split()[0], int(c.name.split()[1][1:])) for c in cases[:: len(bench.IMPLS)]] == want
    for case in cases:
        assert case.shape == bench.LEVEL_SHAPES[int(case.name.split()[1][1:])] and case.family
        if case.shape == bench.LEVEL_SHAPES[5]:
            with torch.no_grad():
                assert case.make().eval()(torch.randn(1, *case.shape[1:])).shape == (1, *case.shape[1:]), case.name
    assert {c.name.split()[0] for c in bench.block_cases(["dat"])} == {"DAttention", "DATBlock", "DAT3"}
    assert {c.name.split()[0] for c in bench.block_cases(names=["bot3"])} == {"BoT3"}
    with pytest.raises(ValueError, match="no benchmarked blocks in family 'nope'|no benchmarked blocks in family nope"):
        bench.block_cases(["nope"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_peak_memory():
    x_mb = 4.0
    step = bench._make_step(Double().cuda(), torch.zeros(1, 1, 1024, 1024, device="cuda"), backward=False)
    mb, method = bench.peak_memory_mb(step, "cuda")
    assert method == "cuda_max_allocated" and mb == pytest.approx(x_mb, rel=0.05)


def test_bench_blocks_script_runs():
    """scripts/bench_blocks.py end to end, one cheap block (no attention), inference only."""
    args = ["--name", "MBConv", "--iters", "1", "--warmup", "0", "--forward-only", "--no-flops"]
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_blocks.py"), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| family | block") and len(lines) == 1 + 3  # header, then P5, P4, P3
    assert all("MBConv" in ln and "fwd" in ln for ln in lines[1:])
