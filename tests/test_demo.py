"""The main job's protocol: a baseline from scratch, then it and every family's variant continued from its weights,
per seed (the training itself is the README's `bash scripts/demo.sh`; a tiny real run is marked slow)."""

import json
from pathlib import Path

import pytest
import yaml

from yolo_attn import demo
from yolo_attn.store import RunRecord


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    """`yolo-attn demo` with the sweep and report stubbed: stage 1 'trains' by writing a weights file."""
    import yolo_attn.executors
    import yolo_attn.report

    calls = []

    def sweep(plan, out, **kw):
        calls.append({"plan": plan, "keys": [r.key for r in plan], **kw})  # keys now: they hash the weights file
        recs = []
        for run in plan:
            w = Path(out) / "runs" / run.key / "best.pt"
            if not w.is_file():
                w.parent.mkdir(parents=True, exist_ok=True)
                w.write_bytes(b"weights of " + run.key.encode())
            recs.append(RunRecord(run.key, name=run.name, status="done", weights=f"runs/{run.key}/best.pt"))
        return recs

    monkeypatch.setattr(yolo_attn.executors, "run_sweep", sweep)
    md = tmp_path / "stub.md"
    md.write_text("stub report")
    stub = {"markdown": md, "csv": md, "plots": []}
    monkeypatch.setattr(yolo_attn.report, "write_report", lambda *a, **kw: calls.append(kw) or stub)
    return calls


def test_demo_protocol(tmp_path, stubbed):
    """Stage 1: yolov8n from scratch (seed 0, the from-scratch recipe). Stage 2, per seed: the baseline continued and
    each family's block inserted at sppf_before, all from stage 1's weights (through the transfer), same recipe."""
    from yolo_attn.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "4", "--n-val", "2"]) == 0
    (start,), stage2 = stubbed[0]["plan"], stubbed[1]["plan"]
    assert start.name == "yolov8n" and start.baseline and start.seed == 0 and start.pretrained is None
    assert start.train == {"epochs": 30, "imgsz": 64, **demo.DEMO_TRAIN} and start.train["mosaic"] == 0
    families = demo.demo_blocks()
    assert families == ["bot", "coat", "dat"]
    assert [(r.block, r.position, r.seed) for r in stage2] == [
        (b, p, s) for s in demo.DEMO_SEEDS for b, p in [(None, None), *((f, "sppf_before") for f in families)]
    ]
    assert len(demo.DEMO_SEEDS) >= 3 and [r.baseline for r in stage2] == [True, False, False, False] * 4
    weights = out / "runs" / start.key / "best.pt"
    assert all(r.pretrained == str(weights) and r.pretrained_run == start.key for r in stage2)
    assert all(r.train == {"epochs": 10, "imgsz": 64, **demo.DEMO_FINETUNE} for r in stage2)
    assert demo.DEMO_FINETUNE["lr0"] < demo.DEMO_TRAIN["lr0"]
    ex = stubbed[0]["executor"]
    assert type(ex).__name__ == "Processes" and ex is stubbed[1]["executor"]  # Ultralytics' output goes to the logs
    assert stubbed[0]["title"].startswith("stage 1/2") and stubbed[1]["title"].startswith("stage 2/2")
    assert stubbed[2]["title"] == (
        "yolo_attn demo: YOLOv8n vs bot / coat / dat at sppf_before, continued from the same baseline (CPU)"
    )
    data = yaml.safe_load(Path(start.data).read_text())
    assert Path(start.data).is_relative_to(out) and len(list((Path(data["path"]) / "images/val").iterdir())) == 2


def test_resumed_demo_keeps_stage_2_and_a_new_baseline_redoes_it(tmp_path, stubbed):
    """Same weights file: the same stage-2 keys (nothing is redone); new weights (stage 1 trained again): new keys."""
    out = tmp_path / "demo"
    demo.run_demo(out, n_train=4, n_val=2, seeds=[0])
    demo.run_demo(out, n_train=4, n_val=2, seeds=[0])
    assert stubbed[1]["keys"] == stubbed[4]["keys"] and len(stubbed[1]["keys"]) == 4
    (out / "runs" / stubbed[0]["plan"][0].key / "best.pt").write_bytes(b"trained again")
    demo.run_demo(out, n_train=4, n_val=2, seeds=[0])
    assert stubbed[6]["keys"] == stubbed[0]["keys"]  # stage 1 itself is the same run
    assert not set(stubbed[1]["keys"]) & set(stubbed[7]["keys"])


def test_demo_stops_when_the_baseline_failed(tmp_path, monkeypatch):
    import yolo_attn.executors

    def sweep(plan, out, **kw):
        return [RunRecord(plan[0].key, status="failed", error="RuntimeError: boom", log="logs/x.log")]

    monkeypatch.setattr(yolo_attn.executors, "run_sweep", sweep)
    with pytest.raises(RuntimeError, match="baseline run failed.*boom"):
        demo.run_demo(tmp_path, n_train=4, n_val=2)


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    """A real (tiny) demo: both stages train, the report has the verdict table, a second call redoes nothing."""
    out = tmp_path / "demo"
    kw = {"epochs": 1, "finetune_epochs": 1, "imgsz": 32, "n_train": 8, "n_val": 8, "seeds": [0], "resamples": 50}
    paths = demo.run_demo(out, devices=["cpu"], **kw)
    md = paths["markdown"].read_text()
    assert "Is it better?" in md and "training noise not measured (1 seed)" in md
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 5 and all(r["status"] == "done" for r in recs), [r.get("error") for r in recs]
    variants = [r for r in recs if r["block"]]
    assert all(r["transfer"]["new"] > 0 and r["transfer"]["skipped"] == 0 for r in variants)  # only the block is new
    assert all(r["artifacts"]["matches"] for r in recs) and all(Path(out / r["log"]).is_file() for r in recs)
    demo.run_demo(out, devices=["cpu"], **kw)
    assert (out / "results.jsonl").read_text().splitlines() == lines
