"""A fourth family from one file outside the package (tests/toy_family.py) reaches every tool without editing yolo_attn.

In this process the family is imported by a fixture and unregistered afterwards (other tests see only the package's
families); the CLI run imports it the way users' plugins are imported: ``YOLO_ATTN_PLUGINS=toy_family``.
"""

import importlib
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, subprocess_env

from yolo_attn import integration, registry
from yolo_attn.cli import main

TRAIN = ["epochs=1", "imgsz=32", "batch=2", "workers=0"]
FAST = ["--flops-imgsz=64", "--bench-imgsz=32", "--bench-batch=1", "--bench-iters=1", "--bench-warmup=0"]


@pytest.fixture(scope="module")
def toy(registered):
    mod = sys.modules.get("toy_family")
    mod = importlib.reload(mod) if mod else importlib.import_module("toy_family")  # registers (again) on import
    integration.register()  # and puts the names into Ultralytics
    yield mod
    for name in mod.__all__:
        registry.unregister_block(name)
    integration.register()  # and takes them out again


def _rows(d):
    return d["backbone"] + d["head"]


def test_insert_puts_each_level_in_its_place(toy, tmp_path, capsys):
    """`yolo-attn insert` builds (validates) the variants: the toy rows get c1, scaled c2 and n from Ultralytics."""
    out = tmp_path / "v.yaml"
    assert main(["insert", "yolov8.yaml", "toy", "neck", "-o", str(out)]) == 0
    d = yaml.safe_load(out.read_text())
    assert d["yolo_attn"]["family"] == "toy" and d["yolo_attn"]["block"] == "ToyMix"
    # ToyMix(c1, c2, n, k=3, level): the level goes after k's default, per row
    assert [_rows(d)[i][3] for i in d["yolo_attn"]["inserted"]] == [[256, 3, 3], [512, 3, 4], [1024, 3, 5]]
    assert main(["insert", "yolo11.yaml", "toy", "backbone", "-o", str(out)]) == 0
    assert _rows(yaml.safe_load(out.read_text()))[8][2] == "ToyCSP"
    assert main(["info"]) == 0 and "toy" in capsys.readouterr().out.split("families: ")[-1]


def test_generate_writes_the_family(toy, tmp_path):
    assert main(["generate", "--out", str(tmp_path), "--families", "toy", "--no-validate"]) == 0
    from yolo_attn.edit import available_bases, available_positions, variant_name

    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == sorted(
        f"{variant_name(b, 'toy', p)}.yaml"
        for b in available_bases()  # yolov8, yolo11 and (Ultralytics 8.4) yolo26, yolo12
        for p in ("backbone", "sppf_before", "sppf_after", "neck", "head")
        if p in available_positions(b)  # YOLO12 has no SPPF
    )
    assert main(["generate", "--out", str(tmp_path), "--no-validate"]) == 0  # default: every registered family
    assert {"yolov8-toy-neck.yaml", "yolov8-dat-neck.yaml"} <= {p.name for p in tmp_path.glob("*.yaml")}
    assert main(["generate", "--check", "--no-validate"]) == 0  # the packaged cfg/ holds the package's own only


def test_bench_measures_the_family(toy, tmp_path):
    rows_json = tmp_path / "bench.json"
    argv = ["bench", "--family", "toy", "--iters", "1", "--warmup", "0", "--json", str(rows_json)]
    assert main(argv) == 0
    rows = json.loads(rows_json.read_text())
    assert [r["name"].split()[:2] for r in rows] == [["ToyMix", "P5"], ["ToyMix", "P3"], ["ToyCSP", "P5"]]
    assert all(r["family"] == "toy" and r["ms"] > 0 and r["gflops"] > 0 for r in rows)
    assert rows[1]["shape"] == [2, 64, 80, 80]  # LEVEL_SHAPES[3]
    assert main(["bench", "--family", "nosuch"]) == 2


def test_ablate_plan_has_the_family(toy, shapes_data, capsys):
    argv = ["ablate", "--data", shapes_data, "--positions", "sppf_before", "--plan-only", *TRAIN]
    assert main(argv) == 0
    names = [ln.split()[2] for ln in capsys.readouterr().out.splitlines()]
    assert names[0] == "yolov8n" and "yolov8n-toy-sppf_before" in names and "yolov8n-dat-sppf_before" in names


def test_ablate_trains_and_reports_the_family_from_a_plugin(shapes_data, tmp_path):
    """`YOLO_ATTN_PLUGINS=toy_family yolo-attn ablate --blocks toy ... --report`: two real tiny runs, then the report."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "scripts" / "ablate.py"), "--data", shapes_data, "--out", str(out)]
    cmd += ["--blocks", "toy", "--positions", "neck", "--report", "--strict", *FAST, *TRAIN]
    r = subprocess.run(cmd, env=subprocess_env(YOLO_ATTN_PLUGINS="toy_family"), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(x["name"], x["status"]) for x in recs] == [("yolov8n", "done"), ("yolov8n-toy-neck", "done")]
    assert recs[1]["family"] == "toy" and recs[1]["block"] == "ToyMix" and recs[1]["inserted"] == [16, 20, 24]
    md = (out / "report" / "report.md").read_text()
    assert "| toy@neck" in md and "delta_by_position.png" in md
