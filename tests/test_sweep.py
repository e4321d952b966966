"""The ablation runner: hashed plan, atomic store, a real kill + resume, failures recorded, device fan-out.

Runs train tiny models (imgsz 32, 1 epoch, batch 2, CPU) on the generated ``shapes_data`` set. The variants are built
from the test-only ``ContractScale`` block (tests/contract_blocks.py), so these tests do not depend on the attention
blocks; worker processes load it through ``YOLO_ATTN_PLUGINS``.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import contract_blocks  # noqa: F401  (registers ContractScale for this process)
import pytest
import yaml
from conftest import ROOT, subprocess_env

from yolo_attn.edit import make_variant, save_variant
from yolo_attn.sweep import STORE_NAME, ResultStore, Run, make_plan, parse_overrides, run_sweep

TRAIN = {"epochs": 1, "imgsz": 32, "batch": 2, "workers": 0}
FAST = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 1, "bench_iters": 1, "bench_warmup": 0}
CLI_FAST = [
    "--flops-imgsz",
    "64",
    "--bench-imgsz",
    "32",
    "--bench-batch",
    "1",
    "--bench-iters",
    "1",
    "--bench-warmup",
    "0",
]


def _variant(tmp_path: Path, gain: float = 1.0, name: str = "yolov8n-scale-sppf_before.yaml") -> str:
    """A variant YAML written by the test: yolov8n + ContractScale before SPPF (scale n from the file name)."""
    d = make_variant("yolov8n.yaml", "ContractScale", "sppf_before", [gain], validate=False)
    return str(save_variant(d, tmp_path / "models" / name))


def _store_lines(out: Path) -> list[dict]:
    p = out / STORE_NAME
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


# --------------------------------------------------------------------------------------------------- plan / store
def test_plan_keys_names_and_overrides(tmp_path, shapes_data):
    plan = make_plan(shapes_data, blocks=["bot", "dat"], positions=["sppf_before", "neck"], seeds=[0, 1], train=TRAIN)
    assert len(plan) == 2 * (1 + 2 * 2)
    assert [r.name for r in plan[:3]] == ["yolov8n", "yolov8n-bot-sppf_before", "yolov8n-bot-neck"]
    assert plan[0].baseline and not plan[1].baseline
    assert len({r.key for r in plan}) == len(plan)
    again = make_plan(shapes_data, blocks=["bot", "dat"], positions=["sppf_before", "neck"], seeds=[0, 1], train=TRAIN)
    assert [r.key for r in again] == [r.key for r in plan]  # stable across processes: a resumed sweep finds its runs
    assert Run.from_dict(plan[3].to_dict()).key == plan[3].key
    assert make_plan(shapes_data, blocks=[], train={**TRAIN, "epochs": 2})[0].key != plan[0].key
    # a model YAML's content is part of the key, not just its name
    a = Run(_variant(tmp_path, 1.0, "yolov8n-a.yaml"), shapes_data)
    key = a.key
    d = yaml.safe_load(Path(a.model).read_text())
    row = next(r for r in d["backbone"] + d["head"] if r[2] == "ContractScale")
    row[3][1] = 0.5
    save_variant(d, a.model)
    assert Run(a.model, shapes_data).key != key

    assert parse_overrides(["epochs=3", "lr0=0.01", "cos_lr=True", "imgsz=320"]) == {
        "epochs": 3,
        "lr0": 0.01,
        "cos_lr": True,
        "imgsz": 320,
    }
    with pytest.raises(ValueError, match="did you mean epochs"):
        parse_overrides(["epoch=3"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="Run field"):
        Run("yolov8n.yaml", shapes_data, train={"seed": 1})


def test_ablate_cli_plan(shapes_data, capsys):
    """key=value overrides are taken wherever they stand, typed, and part of the keys; --plan-only trains nothing."""
    from yolo_attn.cli import main

    argv = [
        "ablate",
        "--data",
        shapes_data,
        "--blocks",
        "bot",
        "dat",
        "epochs=2",
        "--positions",
        "neck_p5",
        "--seeds",
        "0",
        "1",
        "imgsz=64",
        "--plan-only",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and "yolov8n (baseline)" not in lines[1] and "(baseline)" in lines[0]
    plan = make_plan(
        shapes_data, blocks=["bot", "dat"], positions=["neck_p5"], seeds=[0, 1], train={"epochs": 2, "imgsz": 64}
    )
    assert [ln.split()[1] for ln in lines] == [r.key for r in plan]
    assert main(["ablate", "--data", shapes_data, "epoch=2", "--plan-only"]) == 2
    assert "did you mean epochs" in capsys.readouterr().err


def test_demo_plan_recipe_and_seeds(tmp_path, monkeypatch):
    """`yolo-attn demo --seeds 0 1`: baseline + the three default variants per seed, on generated data, with the
    demo's recipe (mosaic off, see sweep.DEMO_TRAIN); the sweep and report are stubbed, nothing trains."""
    import yolo_attn.report
    import yolo_attn.sweep as sweep
    from yolo_attn.cli import main

    seen = {}
    monkeypatch.setattr(sweep, "run_sweep", lambda plan, out, **kw: seen.update(plan=plan, out=Path(out)))
    md = tmp_path / "stub.md"
    md.write_text("stub report")
    monkeypatch.setattr(yolo_attn.report, "write_report", lambda *a, **kw: {"markdown": md, "csv": md, "plots": []})
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--n-train", "4", "--n-val", "2"]) == 0
    plan = seen["plan"]
    assert [(r.name, r.seed) for r in plan] == [
        (n, s) for s in (0, 1) for n in ("yolov8n", "yolov8n-bot", "yolov8n-dat", "yolov8n-coat")
    ]
    assert [r.baseline for r in plan] == [True, False, False, False] * 2
    assert all(r.train["mosaic"] == 0 and r.train["epochs"] == 30 and r.train["imgsz"] == 64 for r in plan)
    data = yaml.safe_load(Path(plan[0].data).read_text())
    assert (
        Path(plan[0].data).is_relative_to(tmp_path) and len(list((Path(data["path"]) / "images/train").iterdir())) == 4
    )


def test_store_torn_line_and_compact(tmp_path):
    store = ResultStore(tmp_path / STORE_NAME)
    store.append({"key": "a", "status": "done", "v": 1})
    with open(store.path, "a") as f:
        f.write('{"key": "b", "status": "do')  # a crash mid-write
    store.append({"key": "c", "status": "failed"})
    store.append({"key": "a", "status": "done", "v": 2})
    assert list(store.records()) == ["a", "c"] and store.records()["a"]["v"] == 2
    assert store.bad_lines == 1
    store.compact()
    assert [r["key"] for r in _store_lines(tmp_path)] == ["a", "c"]


# --------------------------------------------------------------------------------------------------- runs
def test_failed_run_is_recorded_and_sweep_continues(tmp_path, shapes_data):
    out = tmp_path / "sweep"
    bad = Run("yolov8n.yaml", shapes_data, "ContractScale", "sppf_before", [-1.0], train=TRAIN)  # gain must be > 0
    good = Run(_variant(tmp_path), shapes_data, train=TRAIN, baseline=True)
    recs = run_sweep([bad, good], out, settings=FAST)
    assert [r["status"] for r in recs] == ["failed", "done"]
    assert "gain must be > 0" in recs[0]["error"] and "ValueError" in recs[0]["error"]
    assert recs[0]["traceback"]
    g = recs[1]
    assert g["map50_95"] is not None and g["params"] > 0 and g["gflops"] > 0 and g["gflops_ultralytics"] > 0
    assert g["latency_ms_b1"] > 0 and g["peak_mb_b1"] > 0 and g["versions"]["torch"]
    assert g["position"] == "sppf_before" and g["block"] == "ContractScale"  # read from the YAML's record
    # re-running skips both (a failure is kept unless asked); retry_failed redoes it and keeps one record per key
    before = _store_lines(out)
    assert run_sweep([bad, good], out, settings=FAST) == recs and _store_lines(out) == before
    again = run_sweep([bad, good], out, settings=FAST, retry_failed=True)
    assert again[0]["status"] == "failed" and again[0]["started"] >= recs[0]["started"]
    assert sorted(r["key"] for r in _store_lines(out)) == sorted([bad.key, good.key])


def test_kill_mid_sweep_then_resume(tmp_path, shapes_data):
    """SIGKILL the runner while run 2 of 2 trains; the same command then finishes without repeating run 1."""
    out = tmp_path / "sweep"
    models = ["yolov8n.yaml", _variant(tmp_path, 1.0, "yolov8n-a.yaml")]
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "ablate.py"),
        "--data",
        shapes_data,
        "--out",
        str(out),
        "--models",
        *models,
        *CLI_FAST,
        *(f"{k}={v}" for k, v in TRAIN.items()),
    ]
    env = subprocess_env(YOLO_ATTN_PLUGINS="contract_blocks", YOLO_VERBOSE="True")

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            lines = _store_lines(out)
            running = list((out / "running").glob("*.json")) if (out / "running").is_dir() else []
            if len(lines) == 1 and any(json.loads(p.read_text())["key"] != lines[0]["key"] for p in running):
                break  # run 1 recorded, run 2 in progress
            time.sleep(0.2)
        assert proc.poll() is None, "runner ended before it could be interrupted:\n" + proc.stdout.read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    first = _store_lines(out)
    assert len(first) == 1 and first[0]["status"] == "done" and first[0]["name"] == "yolov8n"

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[1/2] yolov8n (seed 0): done earlier, skipped" in r.stdout + r.stderr
    final = _store_lines(out)
    plan = json.loads((out / "plan.json").read_text())["runs"]
    assert [x["key"] for x in final] == [p["key"] for p in plan]  # exactly one record per planned run, in order
    assert final[0] == first[0]  # run 1 was not repeated
    assert all(x["status"] == "done" for x in final)
    assert final[1]["pid"] != first[0]["pid"]  # the interrupted run 2 was redone by the second call


@pytest.mark.slow
def test_fan_out_one_run_per_device(tmp_path, shapes_data, monkeypatch):
    """Two device slots (cpu, cpu): runs execute in parallel worker processes and land in one store."""
    out = tmp_path / "sweep"
    plan = make_plan(shapes_data, bases=[], blocks=[], models=["yolov8n.yaml", _variant(tmp_path)], train=TRAIN)
    monkeypatch.setenv("YOLO_ATTN_PLUGINS", "contract_blocks")  # the workers load the test block too
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    recs = run_sweep(plan, out, devices=["cpu", "cpu"], settings=FAST)
    assert [r["status"] for r in recs] == ["done", "done"], [r.get("error") for r in recs]
    pids = {r["pid"] for r in recs}
    assert len(pids) == 2 and os.getpid() not in pids
    a, b = recs
    assert a["started"] <= b["finished"] and b["started"] <= a["finished"]  # overlapping: they ran at the same time
    assert (out / "logs").is_dir() and len(list((out / "logs").glob("*.log"))) == 2
