"""The main job's plan and protocol (the training itself is the README's `bash scripts/demo.sh`)."""

from pathlib import Path

import yaml

from yolo_attn import demo


def test_demo_plan_recipe_and_seeds(tmp_path, monkeypatch):
    """`yolo-attn demo --seeds 0 1`: baseline + each family's headline variant per seed, on generated data, with the
    demo's recipe (mosaic off, see demo.DEMO_TRAIN); the sweep and report are stubbed, nothing trains."""
    import yolo_attn.executors
    import yolo_attn.report
    from yolo_attn.cli import main

    seen = {}
    monkeypatch.setattr(yolo_attn.executors, "run_sweep", lambda plan, out, **kw: seen.update(plan=plan, **kw))
    md = tmp_path / "stub.md"
    md.write_text("stub report")
    stub = {"markdown": md, "csv": md, "plots": []}
    monkeypatch.setattr(yolo_attn.report, "write_report", lambda *a, **kw: seen.update(title=kw["title"]) or stub)
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--n-train", "4", "--n-val", "2"]) == 0
    plan = seen["plan"]
    assert [(r.name, r.seed) for r in plan] == [
        (n, s) for s in (0, 1) for n in ("yolov8n", "yolov8n-bot", "yolov8n-coat", "yolov8n-dat")
    ]
    assert [r.baseline for r in plan] == [True, False, False, False] * 2
    assert all(r.train["mosaic"] == 0 and r.train["epochs"] == 30 and r.train["imgsz"] == 64 for r in plan)
    assert seen["devices"] == "cpu" and seen["settings"]["bench_imgsz"] == 64 and seen["settings"]["flops_imgsz"] == 640
    assert seen["title"] == "yolo_attn demo: YOLOv8n vs bot / coat / dat on generated shapes (CPU)"
    data = yaml.safe_load(Path(plan[0].data).read_text())
    assert (
        Path(plan[0].data).is_relative_to(tmp_path) and len(list((Path(data["path"]) / "images/train").iterdir())) == 4
    )


def test_demo_models_are_packaged_cfgs(registered):
    from yolo_attn.integration import cfg_dir

    models = demo.demo_models()
    assert models[0] == "yolov8n.yaml" and len(models) == 4
    assert all((cfg_dir() / m.replace("yolov8n-", "yolov8-")).is_file() for m in models[1:])
