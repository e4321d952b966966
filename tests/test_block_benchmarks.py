"""benchmarks/blocks.py: its rows are labelled with what actually runs, and the script runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

from yolo_attn import registry

SCRIPT = ROOT / "benchmarks" / "blocks.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of this source tree")


def _module():
    spec = importlib.util.spec_from_file_location("bench_blocks", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_say_what_auto_runs_on_each_device():
    """On CPU, auto is the chunked kernel at P4/P3 and fused at P5; on CUDA it is fused, key-augmented for MHSA."""
    mod = _module()
    cpu = {c.name for c in mod.cases("cpu")}
    assert "MHSA P3 80x80 c64 auto (chunked)" in cpu and "MHSA P5 20x20 c256 auto (fused)" in cpu
    assert "CoAt P4 40x40 c128 auto (chunked)" in cpu and "DAttention r=2 P4 40x40 c128 auto (fused)" in cpu
    cuda = {c.name for c in mod.cases("cuda")}  # labels only: nothing runs
    assert "MHSA P3 80x80 c64 auto (fused, key-augmented)" in cuda  # d + H + W = 16 + 160 <= 256
    assert "MHSA P3 80x80 c64 fused (key-augmented)" in cuda and "CoAt P3 80x80 c64 auto (fused)" in cuda
    assert "MHSA P3 80x80 c64 chunked" in cuda and "MHSA P3 80x80 c64 plain" in cuda
    names = [c.name for c in mod.cases("cpu")]
    assert len(names) == len(set(names))
    assert {c.family for c in mod.cases("cpu")} == set(registry.families())  # the comparators too (psa, area)


def test_script_runs():
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--name", "MHSA P5 20x20 c256 plain", "GlobalAttention P5"]
        + ["--iters", "1", "--warmup", "0", "--forward-only", "--no-flops"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| MHSA P5 20x20 c256 plain" in r.stdout and "GlobalAttention P5" in r.stdout
