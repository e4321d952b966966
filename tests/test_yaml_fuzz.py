"""YAML fuzz: mutated rows of the shipped cfgs either build and run, or fail with an error that names the row.

Each case takes one detection cfg from cfg/ (scale n), picks one row and mutates one thing: the module (another
registered block, a stock module, a name that does not exist, a non-string), the repeats (0, negative, fractional,
huge, a string), one argument (wrong type, zero, negative, huge, a string), the argument list (empty, missing or extra
arguments, not a list) or the ``from`` index (out of range, a string, a list with a bad entry). The promise checked
for every case: building the model either succeeds and a forward pass runs, or raises ``ValueError`` / ``TypeError``
/ ``KeyError`` whose message contains ``row <i>``; never a ``RuntimeError`` from inside a layer, a hang (each case
runs under an alarm) or a crashed interpreter.

The cases are drawn from a fixed seed. ``REGRESSIONS`` holds mutations that once broke the promise, as explicit rows
so that they stay meaningful when the generator changes. A wider run: ``pytest -m slow tests/test_yaml_fuzz.py``.
"""

from __future__ import annotations

import copy
import random
import re
import signal
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CFGS = sorted(p for p in (ROOT / "cfg").glob("yolo*.yaml"))
N_DEFAULT = 300  # cases in the default run (about 30 s on 2 cores)
N_SLOW = 3000
HUGE = 10**9
CASE_SECONDS = 60  # a case that runs longer is a hang

_BAD_VALUES = [0, -1, -64, HUGE, 2.5, -0.5, "abc", None, True, [], [1, 2], {"a": 1}]
_MODULES = ["Conv", "C2f", "C3k2", "SPPF", "Concat", "nn.Upsample", "Detect", "Bottleneck", "NotABlock", 42, None]


def _rows(d: dict) -> list:
    return d["backbone"] + d["head"]


def _load(path: Path) -> dict:
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load(str(path))
    d["scale"] = "n"
    return d


def mutate(d: dict, rng: random.Random, blocks: list[str]) -> tuple[dict, int, str]:
    """One mutation of one row of ``d`` (a deep copy); returns (model dict, row index, description)."""
    d = copy.deepcopy(d)
    rows = _rows(d)
    i = rng.randrange(len(rows) - 1)  # the head row (Detect) is mutated only through its inputs
    row = rows[i]
    kind = rng.choice(["module", "repeats", "arg", "args", "from"])
    if kind == "module":
        row[2] = rng.choice(blocks + _MODULES)
    elif kind == "repeats":
        row[1] = rng.choice([0, -1, 2, 3, 1.5, HUGE, "x", None])
    elif kind == "arg" and row[3]:
        row[3][rng.randrange(len(row[3]))] = copy.deepcopy(rng.choice(_BAD_VALUES))
    elif kind in ("arg", "args"):
        how = rng.choice(["empty", "drop", "extra", "extra", "not a list"])
        if how == "empty":
            row[3] = []
        elif how == "drop" and row[3]:
            row[3] = row[3][:-1]
        elif how == "extra":
            row[3] = [*row[3], copy.deepcopy(rng.choice(_BAD_VALUES + [7, 0.25]))]
        else:
            row[3] = rng.choice([7, "abc", None])
    else:
        row[0] = rng.choice([rng.randint(-40, 40), "abc", None, [-1, 99], [-1, -40], [-1]])
    rows[i] = row
    return d, i, f"{kind}: row {i} -> {row!r}"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"case ran longer than {CASE_SECONDS} s")


def check_case(d: dict, what: str) -> str:
    """Build ``d`` and run it, or check the error; returns "built" or "refused" (raises AssertionError otherwise)."""
    from ultralytics.nn.tasks import DetectionModel

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        try:
            model = DetectionModel(copy.deepcopy(d), ch=3, verbose=False)
        except (ValueError, TypeError, KeyError) as e:
            assert re.search(r"\brow \d+\b", str(e)), f"{what}: {type(e).__name__} does not name the row: {e}"
            return "refused"
        except _Hang:
            raise AssertionError(f"{what}: the build hung") from None
        except Exception as e:
            raise AssertionError(f"{what}: {type(e).__name__} instead of a row-naming ValueError: {e}") from e
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, 128, 128))
        except Exception as e:
            raise AssertionError(
                f"{what}: built, but the forward pass at 128x128 failed: {type(e).__name__}: {e}"
            ) from e
        return "built"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _cases(n: int, seed: int = 0):
    import yolo_attn
    from yolo_attn import registry

    yolo_attn.register()
    blocks = [sp.name for sp in registry.specs() if not sp.name.startswith("_")]
    bases = [_load(p) for p in CFGS]
    rng = random.Random(seed)
    for _ in range(n):
        k = rng.randrange(len(bases))
        d, _, what = mutate(bases[k], rng, blocks)
        yield d, f"{CFGS[k].name} {what}"


# Mutations that once ended in an error without the row, or in a crash: (cfg, row index, mutated row).
REGRESSIONS = [
    ("yolov8-dat.yaml", 9, [-1, 1, "DATBlock", []]),  # IndexError from parse_model
    ("yolov8-coat.yaml", 8, [-1, 3, "CoAt3", [-3]]),  # ZeroDivisionError inside the constructor
    ("yolov8-bot.yaml", 12, [[-1, 6], 1, "Concat", [1]]),  # RuntimeError on the stride probe (P5 + P4 sizes)
    ("yolov8-dat.yaml", 4, [-1, 2, "Conv", [128, 3, 2]]),  # non-repeating module stacked with c1 != c2
    ("yolov8-bot.yaml", 8, [-1, HUGE, "BoT3", [1024]]),  # 10**9 repeats: would hang
]


def test_fuzz_rows_build_or_name_the_row(registered):
    outcomes = {"built": 0, "refused": 0}
    for d, what in _cases(N_DEFAULT):
        outcomes[check_case(d, what)] += 1
    # both branches are exercised, not only refusals
    assert outcomes["built"] > N_DEFAULT // 10 and outcomes["refused"] > N_DEFAULT // 10, outcomes


@pytest.mark.parametrize("cfg,i,row", REGRESSIONS, ids=[f"{c}-row{i}" for c, i, _ in REGRESSIONS])
def test_fuzz_regressions(registered, cfg, i, row):
    d = _load(ROOT / "cfg" / cfg)
    rows = _rows(d)
    nb = len(d["backbone"])
    (d["backbone"] if i < nb else d["head"])[i if i < nb else i - nb] = copy.deepcopy(row)
    assert rows  # the cfg has rows
    check_case(d, f"{cfg} row {i} -> {row!r}")


@pytest.mark.slow
def test_fuzz_rows_wide(registered):
    for d, what in _cases(N_SLOW, seed=1):
        check_case(d, what)


@pytest.mark.parametrize("block", ["MHSA", "DAttention"])
def test_non_repeating_block_that_cannot_chain_names_row_and_fix(registered, block):
    """``[-1, 3, MHSA, [512]]`` right after a Concat at scale x: three copies expecting 1280 channels each."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = yaml_model_load("yolov8x.yaml")
    assert d["head"][1][2] == "Concat" and d["head"][2] == [-1, 3, "C2f", [512]]
    d["head"][2] = [-1, 3, block, [512]]
    with pytest.raises(ValueError) as e:
        DetectionModel(d, verbose=False)
    msg = str(e.value)
    assert f"row 12 [-1, 3, '{block}', [512]]" in msg
    assert "c1=1280" in msg and "c2=640" in msg and "n=1" in msg
    csp = {"MHSA": "BoT3", "DAttention": "DAT3"}[block]
    assert csp in msg  # the family's CSP block is the fix that keeps n
    d["head"][2] = [-1, 1, block, [512]]  # n=1 builds
    DetectionModel(d, verbose=False)
