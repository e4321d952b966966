"""The report reads only the store: tables, deltas against the same-seed baseline, Pareto front, PNG plots, CLI."""

import csv
import json

import pytest

from yolo_attn.cli import main
from yolo_attn.report import pareto_front, summarize, write_report
from yolo_attn.store import STORE_NAME, ResultStore

PNG = b"\x89PNG\r\n\x1a\n"
TRAIN = {"epochs": 1, "imgsz": 32}


def _rec(name, seed, m, gflops, ul, block=None, family=None, position=None, baseline=False, **kw):
    """A store line as the sweep of 8ee2a92 wrote them (flat per-batch keys): the store reads both layouts."""
    r = {
        "key": f"{name}-{seed}",
        "name": name,
        "status": "done",
        "baseline": baseline,
        "base": "yolov8n.yaml",
        "block": block,
        "family": family,
        "position": position,
        "args": [],
        "seed": seed,
        "data": "/d/shapes.yaml",
        "train": TRAIN,
        "pretrained": None,
        "map50": m + 0.1,
        "map50_95": m,
        "params": 3_000_000 + (0 if baseline else 100_000),
        "gflops": gflops,
        "gflops_ultralytics": ul,
        "gflops_imgsz": 640,
        "latency_ms_b1": 10.0 + gflops,
        "latency_ms_b8": 50.0 + gflops,
        "peak_mb_b1": 1.0,
        "peak_mb_b8": 8.0,
        "bench_batch": 8,
        "bench_device": "cpu",
        "bench_imgsz": [32, 32],
        "wall_s": 12.0,
        "versions": {"torch": "x", "ultralytics": "y", "yolo_attn": "z"},
    }
    r.update(kw)
    return r


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / STORE_NAME)
    for seed, (b, bot, dat) in enumerate([(0.30, 0.32, 0.29), (0.34, 0.35, 0.33)]):
        s.append(_rec("yolov8n", seed, b, 8.7, 8.7, baseline=True))
        s.append(_rec("yolov8n-bot-sppf_before", seed, bot, 9.5, 9.0, "BoT", "bot", "sppf_before"))
        s.append(_rec("yolov8n-dat-neck", seed, dat, 12.0, 10.0, "DATBlock", "dat", "neck"))
    s.append(
        {
            "key": "broken-0",
            "name": "yolov8n-coat-head",
            "status": "failed",
            "seed": 0,
            "block": "CoAt",
            "position": "head",
            "error": "ValueError: CoAt: heads=3 does not divide 64",
            "wall_s": 1.0,
        }
    )
    return tmp_path


def test_pareto_front():
    pts = [(1.0, 0.3), (2.0, 0.2), (2.0, 0.35), (3.0, 0.34), (4.0, 0.5)]
    assert pareto_front(pts) == [0, 2, 4]


def test_summary_deltas_against_same_seed_baseline(store):
    rows = summarize(list(ResultStore(store / STORE_NAME).records().values()))
    by = {r["config"]: r for r in rows}
    assert set(by) == {"yolov8n (baseline)", "bot@sppf_before", "dat@neck"}  # the failed run is not aggregated
    bot = by["bot@sppf_before"]
    assert bot["seeds"] == 2
    assert bot["d_map50_95_all"] == pytest.approx([0.02, 0.01])  # per seed: 0.32-0.30, 0.35-0.34
    assert bot["d_map50_95"] == pytest.approx(0.015) and bot["d_map50_95_std"] == pytest.approx(0.00707, abs=1e-4)
    assert by["dat@neck"]["gflops"] == 12.0 and by["dat@neck"]["gflops_ultralytics"] == 10.0


def test_write_report_files(store):
    paths = write_report(store)
    md = paths["markdown"].read_text()
    assert paths["markdown"].parent == store / "report"
    assert "| bot@sppf_before" in md and "+0.0150 ± 0.0071" in md
    assert "| yolov8n (baseline)" in md and "GFLOPs (Ultralytics)" in md
    assert "## Failed runs" in md and "heads=3 does not divide 64" in md
    assert "7 runs" in md and "6 done, 1 failed" in md
    assert len(paths["plots"]) >= 2
    names = {p.name for p in paths["plots"]}
    assert {"map_vs_gflops.png", "delta_by_position.png"} <= names
    for p in paths["plots"]:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
        assert f"]({p.name})" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 7 and {"map50_95", "gflops", "gflops_ultralytics", "d_map50_95", "error"} <= set(rows[0])
    assert json.loads(rows[0]["train"]) == TRAIN


def test_report_cli_and_missing_store(store, tmp_path, capsys):
    assert main(["report", str(store / STORE_NAME), "--out", str(tmp_path / "rep"), "--print"]) == 0
    out = capsys.readouterr().out
    assert "markdown:" in out and "| dat@neck" in out
    assert (tmp_path / "rep" / "report.md").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no results store" in capsys.readouterr().err
