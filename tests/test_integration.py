"""The registration contract: row semantics, idempotence, undo, errors, start-up hook, CLI and checkpoints.

Marked ``contract``. scripts/test.sh runs the whole suite against the oldest supported Ultralytics too.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, subprocess_env

import yolo_attn
from yolo_attn import integration, registry

pytestmark = pytest.mark.contract

import contract_blocks  # noqa: E402,F401  (registers ContractScale / ContractCSP)

SCALES = {"n": [0.33, 0.25, 1024], "s": [0.33, 0.50, 1024], "l": [1.00, 1.00, 512]}


def _yaml(rows_backbone, rows_head=None, **extra):
    d = {"nc": 3, "scales": SCALES, "backbone": rows_backbone, "head": rows_head or []}
    d.update(extra)
    return d


def _detect_yaml():
    """A small detector made of the contract blocks, with a Detect head (3 levels)."""
    return _yaml(
        [
            [-1, 1, "Conv", [64, 3, 2]],  # 0 P1/2
            [-1, 1, "Conv", [128, 3, 2]],  # 1 P2/4
            [-1, 3, "ContractCSP", [128]],  # 2
            [-1, 1, "Conv", [256, 3, 2]],  # 3 P3/8
            [-1, 1, "ContractScale", [256]],  # 4
            [-1, 1, "Conv", [512, 3, 2]],  # 5 P4/16
            [-1, 2, "ContractCSP", [512]],  # 6
            [-1, 1, "Conv", [1024, 3, 2]],  # 7 P5/32
            [-1, 1, "ContractScale", [1024, 0.5]],  # 8
        ],
        [[[4, 6, 8], 1, "Detect", ["nc"]]],
    )


@pytest.fixture
def fresh():
    """Start and end each test unregistered, whatever the start-up hook did."""
    from ultralytics.nn.modules import Conv

    was, act = integration.is_registered(), Conv.default_act
    integration.unregister()
    yield
    integration.unregister()
    Conv.default_act = act  # Ultralytics < 8.4 leaks a YAML's `activation:` (YOLOv6) while we are unregistered
    if was:
        integration.register()


def _build(d, scale="n"):
    from ultralytics.nn.tasks import DetectionModel

    d = dict(d, scale=scale)
    return DetectionModel(d, ch=3, nc=3, verbose=False)


def test_row_semantics_match_builtin_blocks(fresh):
    """c1 injected, c2 width-scaled and capped like C2f, n depth-scaled and passed as the third argument."""
    yolo_attn.register()
    from ultralytics.utils.ops import make_divisible

    for scale, (depth, width, max_ch) in SCALES.items():
        m = _build(_detect_yaml(), scale)
        csp, sc, csp2, sc2 = m.model[2], m.model[4], m.model[6], m.model[8]

        def c(v, width=width, max_ch=max_ch):
            return make_divisible(min(v, max_ch) * width, 8)

        assert (csp.c1, csp.c2, csp.n) == (c(128), c(128), max(round(3 * depth), 1)), scale
        assert (csp2.c1, csp2.c2, csp2.n) == (c(512), c(512), max(round(2 * depth), 1)), scale
        assert (sc.c1, sc.c2, sc.gain) == (c(256), c(256), 1.0)
        assert (sc2.c1, sc2.c2, sc2.gain) == (c(1024), c(1024), 0.5)
        assert isinstance(csp, contract_blocks.ContractCSP)  # one module with n inside, not n copies
        out = m(torch.zeros(1, 3, 64, 96))
        assert out is not None


def test_non_repeating_block_is_stacked_n_times(fresh):
    yolo_attn.register()
    d = _yaml([[-1, 1, "Conv", [64, 3, 2]], [-1, 3, "ContractScale", [64]]], [[[0, 1, 1], 1, "Detect", ["nc"]]])
    m = _build(d, "l")  # depth 1.0 -> 3 copies, as Ultralytics does for blocks without a repeat argument
    assert isinstance(m.model[1], torch.nn.Sequential) and len(m.model[1]) == 3


def test_register_is_idempotent_and_undoable(fresh):
    import ultralytics.nn.tasks as tasks

    orig_parse, orig_check = tasks.parse_model, tasks.check_yaml
    assert "frozenset" not in vars(tasks) and not hasattr(tasks, "ContractCSP")
    yolo_attn.register()
    hook = tasks.frozenset
    yolo_attn.register()
    assert tasks.frozenset is hook and tasks.parse_model._yolo_attn_orig is orig_parse
    assert tasks.ContractCSP is contract_blocks.ContractCSP
    yolo_attn.unregister()
    assert "frozenset" not in vars(tasks) and not hasattr(tasks, "ContractCSP")
    assert tasks.parse_model is orig_parse and tasks.check_yaml is orig_check
    with pytest.raises(KeyError, match="ContractCSP"):  # Ultralytics' own error again: nothing of ours is left
        _build(_detect_yaml())


def test_blocks_registered_later_are_picked_up(fresh):
    yolo_attn.register()

    class LateBlock(contract_blocks.ContractScale):
        pass

    with registry.temporary(LateBlock):
        yolo_attn.register()
        m = _build(_yaml([[-1, 1, "LateBlock", [64]]], [[[0, 0, 0], 1, "Detect", ["nc"]]]))
        assert isinstance(m.model[0], LateBlock) and m.model[0].c2 == 16
    yolo_attn.register()
    import ultralytics.nn.tasks as tasks

    assert not hasattr(tasks, "LateBlock")


def test_never_replaces_an_ultralytics_name(fresh):
    class C2f(torch.nn.Module):
        pass

    C2f.__module__ = "somewhere_else"
    with registry.temporary(C2f):
        with pytest.raises(integration.IntegrationError, match="already defined by Ultralytics"):
            yolo_attn.register()
    assert not integration.is_registered()
    import ultralytics.nn.tasks as tasks

    assert "frozenset" not in vars(tasks)


def test_probe_failure_undoes_everything_and_names_version(fresh, monkeypatch):
    import ultralytics
    import ultralytics.nn.tasks as tasks

    monkeypatch.setattr(integration._SetHook, "__call__", lambda self, *a: self.prev(*a))  # semantics not applied
    with pytest.raises(integration.IntegrationError, match=f"Ultralytics {ultralytics.__version__}"):
        yolo_attn.register()
    assert not integration.is_registered() and "frozenset" not in vars(tasks)
    assert not hasattr(tasks, "ContractCSP") and not hasattr(tasks.parse_model, "_yolo_attn_orig")


def _shipped_detection_yamls():
    import ultralytics

    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    out = []
    for p in sorted(root.rglob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        head = d.get("head") or []
        if head and head[-1][2] == "Detect":
            out.append(p)
    return out


def test_every_shipped_detection_yaml_builds_unchanged(fresh):
    """With the plugin registered, Ultralytics' own detection YAMLs give the same layers and parameter counts."""
    from ultralytics.nn.tasks import DetectionModel

    paths = _shipped_detection_yamls()
    assert len(paths) > 10

    def signature():
        sig = {}
        for p in paths:
            m = DetectionModel(str(p), ch=3, nc=80, verbose=False)
            sig[p.name] = ([type(x).__name__ for x in m.model], sum(t.numel() for t in m.parameters()))
        return sig

    torch.manual_seed(0)
    plain = signature()
    yolo_attn.register()
    assert signature() == plain


def test_yaml_activation_stays_with_its_model(fresh):
    """A YAML's ``activation:`` sets the act of that model only (Ultralytics < 8.4 leaked it process-wide)."""
    from ultralytics.nn.modules import Conv

    yolo_attn.register()
    before = type(Conv.default_act)
    relu = _build(dict(_detect_yaml(), activation="nn.ReLU()"))
    assert isinstance(relu.model[0].act, torch.nn.ReLU)
    assert isinstance(relu.model[2].cv1.act, torch.nn.ReLU)  # registered blocks follow the YAML's activation too
    assert type(Conv.default_act) is before
    plain = _build(_detect_yaml())
    assert isinstance(plain.model[0].act, before) and not isinstance(plain.model[0].act, torch.nn.ReLU)


def test_unknown_block_names_row_and_suggests(fresh):
    yolo_attn.register()
    d = _detect_yaml()
    d["backbone"][4] = [-1, 1, "ContractScal", [256]]
    with pytest.raises(ValueError) as e:
        _build(d)
    msg = str(e.value)
    assert "row 4" in msg and "unknown block 'ContractScal'" in msg and "Did you mean ContractScale" in msg
    assert "ContractCSP" in msg  # the registered blocks are listed


def test_bad_block_arguments_name_row_block_and_value(fresh):
    yolo_attn.register()
    d = _detect_yaml()
    d["backbone"][8] = [-1, 1, "ContractScale", [1024, -2.0]]
    with pytest.raises(ValueError) as e:
        _build(d)
    msg = str(e.value)
    assert "row 8" in msg and "ContractScale" in msg and "gain must be > 0, got -2.0" in msg


def test_packaged_yaml_lookup_with_scale_letter(fresh, tmp_path, monkeypatch):
    """YOLO('yolov8s-<variant>.yaml') from any directory finds the packaged copy and honours the scale letter."""
    from ultralytics import YOLO

    pkg = tmp_path / "pkgcfg"
    pkg.mkdir()
    (pkg / "yolov8-contract.yaml").write_text(yaml.safe_dump(_detect_yaml()))
    monkeypatch.setattr(integration, "cfg_dir", lambda: pkg)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    yolo_attn.register()
    m = YOLO("yolov8s-contract.yaml")
    assert m.model.yaml["scale"] == "s" and m.model.model[4].c2 == 128  # 256 * 0.50
    m = YOLO("yolov8n-contract.yaml")
    assert m.model.model[4].c2 == 64  # 256 * 0.25


def test_local_yaml_is_never_shadowed_by_packaged_copy(fresh, tmp_path, monkeypatch):
    """A user's own yolov8n-contract.yaml / yolov8-contract.yaml wins over a packaged file of the same model name."""
    from ultralytics import YOLO

    pkg = tmp_path / "pkgcfg"
    pkg.mkdir()
    (pkg / "yolov8-contract.yaml").write_text(yaml.safe_dump(_detect_yaml()))
    local = _detect_yaml()
    local["backbone"][8] = [-1, 1, "ContractScale", [1024, 0.25]]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(integration, "cfg_dir", lambda: pkg)
    monkeypatch.chdir(work)
    yolo_attn.register()
    for name in ("yolov8n-contract.yaml", "yolov8-contract.yaml"):
        (work / name).write_text(yaml.safe_dump(local))
        assert YOLO(name).model.model[8].gain == 0.25, name
        (work / name).unlink()
    assert YOLO("yolov8n-contract.yaml").model.model[8].gain == 0.5  # no local file: the packaged copy


def test_repo_cfg_lookup_from_any_directory(tmp_path, monkeypatch, registered):
    from yolo_attn.registry import unavailable

    missing = unavailable()  # families this Ultralytics cannot build (area on 8.3.65)
    files = [f for f in sorted(integration.cfg_dir().glob("yolov8-*.yaml")) if f.stem.split("-")[1] not in missing]
    if not files:
        pytest.skip("no packaged model YAMLs yet")
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    name = files[0].name.replace("yolov8-", "yolov8n-")
    assert YOLO(name).model.yaml["scale"] == "n"


def _run(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(**env), timeout=300, cwd=ROOT
    )


def test_import_ultralytics_alone_sees_blocks_and_switch_turns_it_off():
    code = "import ultralytics.nn.tasks as t; print('SEEN', hasattr(t, 'ContractCSP'), 'frozenset' in vars(t))"
    on = _run(code, YOLO_ATTN_PLUGINS="contract_blocks")
    assert "SEEN True True" in on.stdout, on.stderr
    off = _run(code, YOLO_ATTN_PLUGINS="contract_blocks", YOLO_ATTN_AUTOLOAD="0")
    assert "SEEN False False" in off.stdout, off.stderr


def test_startup_imports_no_torch_and_failure_is_one_warning():
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, env=subprocess_env()
    )
    mods = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line]
    assert "_yolo_attn_autoload" in mods, "start-up hook not installed (pip install -e . ?)"
    assert not any(m == "torch" or m.startswith("torch.") for m in mods)
    assert not any(m.startswith(("yolo_attn", "ultralytics")) for m in mods)
    bad = _run("import ultralytics.nn.tasks; print('ALIVE')", YOLO_ATTN_PLUGINS="no_such_plugin_module")
    assert "ALIVE" in bad.stdout
    warnings = [line for line in bad.stderr.splitlines() if "yolo_attn" in line]
    assert len(warnings) == 1 and "not registered" in warnings[0] and "no_such_plugin_module" in warnings[0]


def _yolo(*args, **env):
    exe = Path(sys.executable).with_name("yolo")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=subprocess_env(**env), timeout=600, cwd=ROOT
    )


def test_stock_cli_train_then_val_in_fresh_processes(shapes_data, tmp_path):
    cfg = tmp_path / "yolov8-contract.yaml"
    cfg.write_text(yaml.safe_dump(_detect_yaml()))
    r = _yolo(
        "train",
        f"model={cfg}",
        f"data={shapes_data}",
        "imgsz=64",
        "epochs=1",
        "batch=4",
        "workers=0",
        "device=cpu",
        "amp=False",
        "plots=False",
        f"project={tmp_path / 'runs'}",
        "name=contract",
        "exist_ok=True",
        YOLO_ATTN_PLUGINS="contract_blocks",
    )
    best = tmp_path / "runs" / "contract" / "weights" / "best.pt"
    assert r.returncode == 0 and best.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    for safe in ("0", "1"):
        v = _yolo(
            "val",
            f"model={best}",
            f"data={shapes_data}",
            "imgsz=64",
            "batch=4",
            "workers=0",
            "device=cpu",
            "plots=False",
            f"project={tmp_path / 'val'}",
            YOLO_ATTN_PLUGINS="contract_blocks",
            ULTRALYTICS_SAFE_LOAD=safe,
            YOLO_VERBOSE="true",
        )
        assert v.returncode == 0 and "all" in v.stdout + v.stderr, (safe, v.stdout[-3000:], v.stderr[-3000:])
    py = _run(
        f"from ultralytics import YOLO; m = YOLO(r'{best}'); print('TYPE', type(m.model.model[2]).__name__)",
        YOLO_ATTN_PLUGINS="contract_blocks",
        ULTRALYTICS_SAFE_LOAD="1",
    )
    assert "TYPE ContractCSP" in py.stdout, py.stderr[-3000:]


@pytest.mark.contract
def test_ultralytics_metrics_run_on_the_installed_numpy(registered):
    """Ultralytics 8.3.x integrates AP with ``np.trapz``, gone in numpy 2.4: any validation with a TP crashed there."""
    import numpy as np
    from ultralytics.utils.metrics import compute_ap

    ap, _, _ = compute_ap(np.array([0.5]), np.array([1.0]))
    assert 0 < ap <= 1
