"""`scripts/gpu_check.sh --device cpu --quick`: the prepared GPU check runs end to end on CPU and fills every section."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import ROOT, subprocess_env

from yolo_attn import registry


def test_quick_cpu_run_fills_every_section(registered, tmp_path):
    out = tmp_path / "gpu"
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, env=subprocess_env(), timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    res = json.loads((out / "summary.json").read_text())
    assert res["ok"] and not res["problems"]
    assert res["settings"]["quick"] and res["environment"]["device"] == "cpu"
    # 1. the gpu-marked tests were collected and (no CUDA) skipped, and the summary says why
    t = res["gpu_tests"]
    assert t["status"] == "ok" and t["skipped"] > 0 and t["failed"] == 0 and t["skip_reasons"]
    # 2. + 4. every headline cfg and both baselines trained, images/s measured, variants compared with their base
    rows = {x["cfg"]: x for x in res["training"]}
    fams = registry.families()
    assert {"bot", "dat", "coat"} <= set(fams)
    # every family with a hand-written headline cfg (ours: bot, dat, coat; the comparators have generated cfgs only)
    from yolo_attn.gpu_check import headline

    assert {f"{b}-{f}" for b in ("yolov8", "yolov11") for f in ("bot", "dat", "coat")} <= set(headline())
    assert set(rows) == {"yolov8n.yaml", "yolo11n.yaml", *headline()}
    assert all(x["status"] == "ok" and x["images_per_s"] > 0 for x in rows.values())
    assert all(x["slowdown"] > 0 for x in rows.values() if not x["baseline"])
    # 3. every benchmarked block at each level and both widths, with its SDPA kernel and the flash ceiling
    specs = [sp for sp in registry.specs() if sp.bench_levels]
    assert len(res["blocks"]) == sum(2 * len(sp.bench_levels) for sp in specs)
    for b in res["blocks"]:
        assert b["ms"] > 0 and b["peak_mem_mb"] >= 0 and b["sdpa_kernel"], b
        # MBConv is the one block without attention; the comparators (Ultralytics' attention) have no flash ceiling
        assert b["block"] == "MBConv" or registry.get_spec(b["block"]).origin or 0 < b["vs_flash"], b
    md = (out / "summary.md").read_text()
    for title in ("gpu-marked tests", "AMP training", "Blocks (bf16", "Training cost"):
        assert f"{title}" in md
    assert "PASS" in md.splitlines()[0]


def test_a_non_finite_loss_fails_the_check(tmp_path, shapes_data, monkeypatch):
    """The loss is read at every batch; one NaN fails the cfg's row with the epoch it happened in."""
    from yolo_attn import _compat, gpu_check

    real = _compat.trainer_state

    def nan_loss(trainer):
        return {**real(trainer), "loss": torch.tensor(float("nan"))}

    monkeypatch.setattr(_compat, "trainer_state", nan_loss)
    s = gpu_check.Settings.make("cpu", quick=True)
    rec = gpu_check.train_one("yolov8n.yaml", shapes_data, s, tmp_path)
    assert rec["status"] == "failed" and "non-finite loss" in rec["reason"] and "epoch 1" in rec["reason"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_every_block_cuda_autocast_is_finite(dtype):
    """Every registered block, every attention implementation, CUDA autocast forward+backward: finite."""
    from yolo_attn.bench import _build
    from yolo_attn.nn.attention import ATTN_IMPLS, set_attn_impl

    for sp in [sp for sp in registry.specs() if sp.bench_levels]:
        for impl in ATTN_IMPLS:
            m = set_attn_impl(_build(sp, 64, 3, None), impl).cuda().train()
            x = torch.randn(2, 64, 40, 40, device="cuda")
            with torch.autocast("cuda", dtype=dtype):
                y = m(x)
            y.float().square().mean().backward()
            assert torch.isfinite(y).all(), (sp.name, impl)
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters()), (sp.name, impl)
