"""The results store: typed records, torn lines, compaction, and stores written by the old sweep.py.

``tests/data/old-store/results.jsonl`` was written by ``yolo_attn.sweep`` at commit 8ee2a92 (a 1-epoch yolov8n run at
imgsz 32 on a generated set, and a run of a missing model that failed), with:
``scripts/ablate.py --data /tmp/yolo_attn_old_store/shapes/shapes.yaml --out <out> --models yolov8n.yaml
missing-model.yaml --flops-imgsz 64 --bench-imgsz 32 --bench-batch 2 --bench-iters 1 --bench-warmup 0 epochs=1 imgsz=32
batch=2 workers=0``.
"""

import json
import shutil

import pytest
from conftest import TESTS

from yolo_attn.store import STORE_NAME, ResultStore, RunRecord

OLD = TESTS / "data" / "old-store" / STORE_NAME
OLD_DATA = "/tmp/yolo_attn_old_store/shapes/shapes.yaml"  # the data path in the old runs' keys (need not exist)
OLD_TRAIN = {"epochs": 1, "imgsz": 32, "batch": 2, "workers": 0}


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_store_torn_line_and_compact(tmp_path):
    store = ResultStore(tmp_path)
    assert store.path == tmp_path / STORE_NAME
    store.append({"key": "a", "status": "done", "v": 1})
    with open(store.path, "a") as f:
        f.write('{"key": "b", "status": "do')  # a crash mid-write
    store.append(RunRecord("c", status="failed"))
    store.append({"key": "a", "status": "done", "v": 2})
    assert list(store.records()) == ["a", "c"] and store.records()["a"].extra["v"] == 2
    assert store.bad_lines == 1
    store.compact()
    assert [r["key"] for r in _lines(store.path)] == ["a", "c"]
    assert store.artifacts_dir("a") == tmp_path / "artifacts" / "a"


def test_record_round_trip_keeps_unknown_keys():
    rec = RunRecord("k", name="n", status="done", latency_ms={1: 2.0, 8: 9.5}, peak_mb={1: 0.5}, extra={"future": [1]})
    line = json.loads(json.dumps(rec.to_dict()))
    assert line["schema"] == 2 and line["future"] == [1] and line["latency_ms"] == {"1": 2.0, "8": 9.5}
    assert RunRecord.from_dict(line) == rec
    flat = rec.flat()
    assert flat["latency_ms_b8"] == 9.5 and flat["peak_mb_b8"] is None and flat["future"] == [1]
    assert "latency_ms" not in flat and "extra" not in flat


def test_old_store_lines_load_as_records():
    recs = ResultStore(OLD).records()
    assert list(recs) == ["3899a45bd6eb1864", "8f1ed36e47f0f3fe"]
    done, failed = recs.values()
    assert done.ok and done.baseline and done.name == "yolov8n" and done.train == OLD_TRAIN
    assert done.latency_ms.keys() == {1, 2} and done.peak_mb[2] > 0 and done.bench_batch == 2  # from latency_ms_b2...
    assert done.gflops > 0 and done.params == 3011433 and done.versions["ultralytics"] and not done.extra
    assert failed.status == "failed" and "missing-model.yaml" in failed.error and failed.traceback


def test_old_store_report(tmp_path):
    """The new report reads a store the old sweep wrote (tables, CSV, plots) and says its runs have no intervals."""
    from yolo_attn.report import write_report

    shutil.copy(OLD, tmp_path / STORE_NAME)
    paths = write_report(tmp_path)
    md = paths["markdown"].read_text()
    assert "2 runs" in md and "1 done, 1 failed" in md and "| yolov8n (baseline)" in md
    assert "latency b2 (ms)" in md and "missing-model.yaml' does not exist" in md
    assert {p.name for p in paths["plots"]} == {"map_vs_gflops.png", "cost.png"}
    assert "Intervals unavailable for 1 run without a per-image file" in md and "`yolov8n` (seed 0)" in md
    rows = paths["csv"].read_text().splitlines()
    assert len(rows) == 3 and "latency_ms_b2" in rows[0].split(",")


@pytest.mark.parametrize("retry", [False, True])
def test_old_store_resumes_without_redoing_runs(tmp_path, retry):
    """The same plan against the old store: nothing is executed again; --retry-failed redoes only the failed run."""
    from yolo_attn.executors import run_sweep
    from yolo_attn.plan import make_plan

    shutil.copy(OLD, tmp_path / STORE_NAME)
    before = (tmp_path / STORE_NAME).read_text()
    plan = make_plan(OLD_DATA, bases=[], blocks=[], models=["yolov8n.yaml", "missing-model.yaml"], train=OLD_TRAIN)
    assert [r.key for r in plan] == ["3899a45bd6eb1864", "8f1ed36e47f0f3fe"]
    recs = run_sweep(plan, tmp_path, devices="cpu", retry_failed=retry)
    assert [r.key for r in recs] == [r.key for r in plan]
    old = ResultStore(OLD).records()
    assert recs[0] == old["3899a45bd6eb1864"]  # the trained run is kept as it was
    if not retry:
        assert (tmp_path / STORE_NAME).read_text() == before  # nothing executed, nothing written
        assert recs[1] == old["8f1ed36e47f0f3fe"]
    else:  # the failed run was executed again (it fails again, at once) and the store compacted to one line per key
        assert recs[1].status == "failed" and recs[1].started != old["8f1ed36e47f0f3fe"].started
        assert [x["key"] for x in _lines(tmp_path / STORE_NAME)] == [r.key for r in plan]


def test_artifacts_written_atomically_and_shipped_as_bytes(tmp_path):
    """put_artifacts is the one writer of a run's files (a remote executor's driver calls it with the bytes its
    worker shipped back); artifact_bytes reads them for shipping; artifact_path finds them from the record."""
    from yolo_attn.store import artifact_bytes

    worker = ResultStore(tmp_path / "worker")
    src = tmp_path / "matches.tmp"
    src.write_bytes(b"npz bytes")
    rec = RunRecord("k1", status="done", artifacts=worker.put_artifacts("k1", {"matches.npz": src, "log.txt": b"hi"}))
    assert rec.artifacts == {"matches": "artifacts/k1/matches.npz", "log": "artifacts/k1/log.txt"}
    assert sorted(p.name for p in worker.artifacts_dir("k1").iterdir()) == ["log.txt", "matches.npz"]  # no temp files
    shipped = artifact_bytes(rec, worker.folder)
    assert shipped == {"matches.npz": b"npz bytes", "log.txt": b"hi"}

    driver = ResultStore(tmp_path / "driver")
    rec.artifacts = driver.put_artifacts(rec.key, shipped)
    driver.append(rec)
    back = driver.records()["k1"]
    assert driver.artifact_path(back, "matches").read_bytes() == b"npz bytes"
    assert driver.artifact_path(back, "nothing") is None and driver.artifact_path(RunRecord("k2"), "matches") is None
    for bad in ("../x.npz", "sub/x.npz", ".hidden"):
        with pytest.raises(ValueError, match="plain file name"):
            driver.put_artifacts("k1", {bad: b""})


def test_new_record_fields_round_trip():
    rec = RunRecord(
        "k",
        status="done",
        pretrained_run="abc",
        weights="runs/x/weights/best.pt",
        log="logs/x.log",
        cpu_s=12.5,
        validation={"source": "final validation", "map50": 0.5},
    )
    assert RunRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert RunRecord.from_dict({"key": "old"}).validation is None  # lines of earlier versions: fields empty
