"""Plans and run keys: stable hashes of what changes the trained model, typed overrides, the ``ablate`` plan CLI."""

import shutil
from pathlib import Path

import contract_blocks  # noqa: F401  (registers ContractScale for this process)
import pytest
import yaml

from yolo_attn.edit import make_variant, save_variant
from yolo_attn.plan import Run, make_plan, parse_overrides

TRAIN = {"epochs": 1, "imgsz": 32, "batch": 2, "workers": 0}


def _variant(tmp_path: Path, gain: float = 1.0, name: str = "yolov8n-scale-sppf_before.yaml") -> str:
    d = make_variant("yolov8n.yaml", "ContractScale", "sppf_before", [gain], validate=False)
    return str(save_variant(d, tmp_path / "models" / name))


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
    with pytest.raises(ValueError, match="same run twice"):
        make_plan(shapes_data, blocks=["dat", "dat"])


def test_key_definition_unchanged():
    """The key of a run the sweep of 8ee2a92 recorded (tests/data/old-store): an old store resumes only while the
    definition hashes to the same value. Ultralytics' yolov8.yaml content is part of it (same in 8.3.65 and 8.4)."""
    run = Run("yolov8n.yaml", "/tmp/yolo_attn_old_store/shapes/shapes.yaml", train=TRAIN, baseline=True)
    assert run.key == "3899a45bd6eb1864", run.definition()


def test_default_blocks_are_every_registered_family(shapes_data):
    from yolo_attn import registry

    plan = make_plan(shapes_data, train=TRAIN)
    assert [r.block for r in plan[1:]] == list(registry.families()) and plan[0].baseline


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


def test_runs_started_from_another_run_are_keyed_by_it(tmp_path, shapes_data):
    """A run continued from weights another run of the store trained: the key names that run and the file's content,
    not its path. Moving the store keeps the key (a resumed sweep finds its runs); new weights (the run was trained
    again) change it (everything continued from it is redone)."""
    weights = tmp_path / "a" / "best.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"trained once")
    run = Run("yolov8n.yaml", shapes_data, "dat", "sppf_before", pretrained=str(weights), pretrained_run="abc")
    moved = tmp_path / "b" / "best.pt"
    moved.parent.mkdir()
    shutil.copy(weights, moved)
    assert Run.from_dict({**run.to_dict(), "pretrained": str(moved)}).key == run.key
    assert Run.from_dict({**run.to_dict(), "pretrained_run": "xyz"}).key != run.key
    plain = Run("yolov8n.yaml", shapes_data, "dat", "sppf_before", pretrained=str(weights))
    assert plain.key != run.key and plain.definition()["pretrained"] == str(weights)  # no run: the path, as before
    key = run.key
    weights.write_bytes(b"trained again")
    assert run.key != key
    with pytest.raises(ValueError, match="needs the weights file"):
        Run("yolov8n.yaml", shapes_data, pretrained_run="abc")


def test_plan_over_several_datasets(tmp_path, shapes_data):
    """--data a b: the whole plan once per dataset, each dataset's runs keyed as in a one-dataset plan."""
    from yolo_attn.data import make_shapes_dataset

    other = str(make_shapes_dataset(tmp_path / "other", n_train=2, n_val=2, imgsz=32, seed=1))
    one = make_plan(shapes_data, blocks=["dat"], seeds=[0, 1], train=TRAIN)
    two = make_plan([shapes_data, other], blocks=["dat"], seeds=[0, 1], train=TRAIN)
    assert [r.key for r in two[: len(one)]] == [r.key for r in one]
    assert [r.data for r in two] == [shapes_data] * 4 + [str(Path(other).resolve())] * 4
    assert len({r.key for r in two}) == 8
    with pytest.raises(ValueError, match="at least one dataset"):
        make_plan([], blocks=["dat"])


def test_key_is_computed_once_while_its_inputs_are_unchanged(shapes_data, monkeypatch):
    """The driver reads a run's key many times: it is hashed once, and again only when a field or file changed."""
    calls = []
    real = Run.definition
    monkeypatch.setattr(Run, "definition", lambda self: calls.append(1) or real(self))
    run = Run("yolov8n.yaml", shapes_data, seed=0, train=dict(TRAIN))
    key = run.key
    assert [run.key for _ in range(15)] == [key] * 15 and len(calls) == 1
    run.seed = 1
    assert run.key != key and len(calls) == 2
    run.train["epochs"] = 2  # a mutable field changed in place counts too
    assert run.key != key and len(calls) == 3
    run.seed, run.train = 0, dict(TRAIN)
    assert run.key == key
    assert "_key" not in run.to_dict() and run == Run("yolov8n.yaml", shapes_data, seed=0, train=dict(TRAIN))
