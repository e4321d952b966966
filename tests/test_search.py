"""The search (issue 24): screen every block x position once on a short schedule, confirm the kept ones with fresh
seeds, within a budget of runs; resumable and deterministic.

Most tests use a fake executor (no training): each run "validates" as a simulated model of one simulated image set
(:func:`yolo_attn.stats.synthetic_validation`), with a skill per block, so the decisions rest on real per-image
files and the real bootstrap. The planted harmful block is ``WipeHalf`` (tests/contract_blocks.py: zeroes half its
channels), the harmless one ``ContractScale`` (the identity at init). One tiny real search trains with the local
executor.
"""

import functools
import json
from pathlib import Path

import contract_blocks  # noqa: F401  (registers ContractScale and WipeHalf for this process)
import numpy as np
import pytest

from yolo_attn.cli import main
from yolo_attn.plan import Run
from yolo_attn.search import SEARCH_NAME, Budget, Candidate, SearchOutcome, decide, search, search_markdown
from yolo_attn.stats import map_scores, synthetic_validation
from yolo_attn.store import STORE_NAME, ResultStore, RunRecord

SKILL = {None: 0.0, "ContractScale": 0.0, "WipeHalf": -1.5}  # block -> simulated skill (None: the baseline)
BLOCKS, POSITIONS = ["ContractScale", "WipeHalf"], ["sppf_before", "neck", "head"]
SEEDS = [100, 0, 1, 2]  # the screening seed, then the confirmation seeds
TRAIN = {"epochs": 4, "imgsz": 32}
KW = {"blocks": BLOCKS, "positions": POSITIONS, "train": TRAIN, "screen_epochs": 1, "resamples": 200}


@functools.lru_cache(maxsize=1)
def _universe(n_images: int = 200) -> dict:
    """Simulated validations of every run the tests can plan, on one image set, each with its own noise."""
    slots = [(b, p, s, e) for b in (None, *BLOCKS) for p in ([None] if b is None else POSITIONS) for s in SEEDS
             for e in (1, TRAIN["epochs"])]  # fmt: skip
    ms = synthetic_validation(n_images, 4, skills=[SKILL[b] for b, *_ in slots], seed=7, false_positives_per_image=10,
                              iou_thresholds=np.linspace(0.5, 0.95, 10))  # fmt: skip
    return dict(zip(slots, ms))


class FakeExecutor:
    """Yields a finished record per run with simulated per-image matches; ``stop_after`` raises KeyboardInterrupt
    before the run that would exceed it (a kill: that run leaves no record)."""

    def __init__(self, stop_after: int | None = None):
        self.given: list[Run] = []
        self.stop_after = stop_after

    def __call__(self, runs, ctx):
        for run in runs:
            if self.stop_after is not None and len(self.given) >= self.stop_after:
                raise KeyboardInterrupt("killed")
            self.given.append(run)
            ctx.started(run, "fake")
            m = _universe()[(run.block, run.position, run.seed, run.train["epochs"])]
            tmp = ctx.out / "tmp.npz"
            m.save(tmp)
            arts = ResultStore(ctx.out).put_artifacts(run.key, {"matches.npz": tmp})
            s = map_scores(m)
            yield RunRecord(
                run.key, name=run.name, status="done", baseline=run.baseline, base=Path(run.model).name,
                model=run.model, block=run.block, family=run.block, position=run.position, args=run.args,
                seed=run.seed, data=run.data, train=run.train, pretrained=run.pretrained, epochs=run.train["epochs"],
                map50=s.map50, map50_95=s.map50_95, wall_s=1.0, artifacts=arts,
            )  # fmt: skip


def _keys(out: Path) -> list[str]:
    return [json.loads(x)["key"] for x in (out / STORE_NAME).read_text().splitlines() if x.strip()]


def _decisions(o: SearchOutcome) -> list[tuple]:
    return [(c.name, c.decision, c.reason, c.rank, c.low, c.high) for c in o.candidates]


# --------------------------------------------------------------------------------------------------- budget
def test_budget_and_seeds_are_checked_before_any_training(tmp_path):
    ex = FakeExecutor()
    with pytest.raises(
        ValueError, match=r"budget of 14 runs is below the search's minimum of 15.*7 runs.*full grid is 28"
    ):
        search("shapes.yaml", budget=14, out=tmp_path, executor=ex, confirm_seeds=[0, 1, 2, 3], **KW)
    with pytest.raises(ValueError, match="screening seed 0 is among the confirmation seeds"):
        search("shapes.yaml", budget=50, out=tmp_path, executor=ex, screen_seed=0, **KW)
    with pytest.raises(ValueError, match="screen_epochs=4 must lie in"):
        search("shapes.yaml", budget=50, out=tmp_path, executor=ex, **{**KW, "screen_epochs": 4})
    assert ex.given == [] and not (tmp_path / STORE_NAME).exists()
    b = Budget(runs=19, candidates=6, seeds=3)
    assert (b.screening, b.minimum, b.max_kept, b.full_grid) == (7, 13, 3, 21)
    assert Budget(runs=100, candidates=6, seeds=3).max_kept == 6  # never more than there are
    assert main(["search", "--data", "shapes.yaml", "--budget", "3", "--blocks", "WipeHalf", "epochs=4"]) == 2


# --------------------------------------------------------------------------------------------------- decisions
def test_decide_states_its_evidence_and_ranks_by_upper_bound():
    cands = [
        Candidate("worse", "a", "neck", delta=-0.05, low=-0.08, high=-0.03),
        Candidate("best", "a", "head", delta=0.04, low=0.02, high=0.06),
        Candidate("dominated", "b", "neck", delta=0.0, low=-0.01, high=0.01),
        Candidate("noisy", "b", "head", delta=0.05, low=-0.01, high=0.11),  # larger change, lower lower bound
        Candidate("steady", "c", "neck", delta=0.03, low=0.0, high=0.06),
        Candidate("broken", "c", "head", status="failed", error="RuntimeError: boom"),
    ]
    got = {c.name: (c.decision, c.reason, c.rank) for c in decide(cands, max_kept=2)}
    assert got == {
        "worse": ("worse", "worse: interval [-0.0800, -0.0300] below 0", None),
        "dominated": ("dominated", "dominated: upper bound +0.0100 below best's lower bound +0.0200", None),
        "broken": ("failed", "screening run failed: RuntimeError: boom", None),
        "noisy": ("kept", "rank 1: upper bound +0.1100", 1),
        "best": ("kept", "rank 2: upper bound +0.0600", 2),  # ties with steady on the bound, larger change
        "steady": ("over budget", "rank 3: upper bound +0.0600; the budget confirms 2", 3),
    }
    assert [c.decision for c in decide(cands[::-1], 2)][::-1] == [c.decision for c in decide(cands, 2)]  # any order
    assert all(c.decision == "" for c in cands)  # the input is not modified


def test_a_block_pinned_at_zero_is_not_confirmed_before_one_that_may_gain():
    """A block that stayed the identity has the narrowest interval and the highest lower bound; it cannot gain."""
    cands = [
        Candidate("unused", "a", "sppf_before", delta=0.0, low=-0.00001, high=0.00001),
        Candidate("maybe", "b", "neck", delta=0.0018, low=-0.0015, high=0.0059),
    ]
    got = {c.name: (c.decision, c.rank) for c in decide(cands, max_kept=1)}
    assert got == {"maybe": ("kept", 1), "unused": ("over budget", 2)}


# --------------------------------------------------------------------------------------------------- the search
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A search run without interruption: (outcome, executor, out)."""
    out, ex = tmp_path_factory.mktemp("reference"), FakeExecutor()
    return search("shapes.yaml", budget=19, out=out, executor=ex, **KW), ex, out


def test_planted_harmful_candidate_is_dropped_and_never_confirmed(reference):
    """Two blocks at three positions: WipeHalf (harmful) is dropped on its interval at every position, the three
    ContractScale candidates are confirmed with seeds 0 1 2 and found no different; 19 runs (the full grid: 21)."""
    from yolo_attn.report import compare, load_matches, load_records, summarize

    o, ex, tmp_path = reference
    by = {(c.block, c.position): c for c in o.candidates}
    for p in POSITIONS:
        c = by[("WipeHalf", p)]
        assert (
            c.decision == "worse"
            and c.high < 0
            and c.reason == f"worse: interval [{c.low:+.4f}, {c.high:+.4f}] below 0"
        )
    assert [c.name for c in o.kept] == [c.name for c in o.confirmed] and len(o.kept) == 3
    assert {c.block for c in o.kept} == {"ContractScale"} and all(c.low < 0 < c.high for c in o.kept)
    assert [c.verdict for c in o.confirmed] == ["no detectable difference"] * 3
    assert all(c.seeds == [0, 1, 2] and c.seed_low is not None for c in o.confirmed)
    confirmation = [r for r in ex.given if r.seed != 100]
    assert confirmation and not any(r.block == "WipeHalf" for r in confirmation)  # confirmation never sees it
    assert all(r.train == TRAIN for r in confirmation) and all(r.train["epochs"] == 1 for r in ex.given[:7])
    assert len(set(_keys(tmp_path))) == len(_keys(tmp_path)) == o.runs_spent == 19 <= o.budget
    assert (o.runs_screening, o.runs_confirmation, o.full_grid) == (7, 12, 21)
    assert (o.epochs_spent, o.full_grid_epochs) == (7 * 1 + 12 * 4, 21 * 4)

    # the file holds the same outcome; the Markdown section says what was dropped and why, and what it cost
    assert SearchOutcome.load(tmp_path).to_dict() == o.to_dict()
    md = "\n".join(search_markdown(o))
    assert "| worse" in md and "below 0" in md and "Dropped: `yolov8n-wipehalf-sppf_before` (worse)" in md
    assert md.count("no detectable difference") == 3 and "Runs: 19 spent (7 screening, 12 confirmation)" in md
    assert "the full grid (6 candidates + baseline) x 3 seeds is 21 runs" in md

    # the report keeps screening (epochs=1) and confirmation (epochs=4) runs in separate groups, and its usual pairing
    # over the confirmation runs gives the search's confirmed intervals
    recs = load_records(tmp_path)
    summary = summarize(recs)
    groups = {tuple(sorted(c.seed_list)): c.group for c in summary if c.baseline}
    assert set(groups) == {(100,), (0, 1, 2)} and groups[(100,)] != groups[(0, 1, 2)]
    summary = compare(summary, load_matches(tmp_path, recs)[0], resamples=200)
    rows = {c.config: c for c in summary if not c.baseline and c.group == groups[(0, 1, 2)]}
    assert sorted(rows) == [f"ContractScale@{p}" for p in sorted(POSITIONS)]
    for c in o.confirmed:
        row = rows[f"ContractScale@{c.position}"]
        iv = row.image_interval("map50_95")
        assert (iv.low, iv.high, row.verdicts["map50_95"].label) == (c.low, c.high, c.verdict)


def test_budget_limits_the_kept_candidates(tmp_path):
    o = search("shapes.yaml", budget=16, out=tmp_path, executor=FakeExecutor(), **KW)  # room for 2 of 3
    assert [c.decision for c in sorted(o.candidates, key=lambda c: c.rank or 99)].count("kept") == 2
    (over,) = [c for c in o.candidates if c.decision == "over budget"]
    assert over.reason.endswith("the budget confirms 2") and over.rank == 3 and not over.dropped
    assert o.runs_spent == len(_keys(tmp_path)) == 7 + 3 * 3 <= 16


def test_kill_and_resume_make_the_same_decisions_and_redo_nothing(tmp_path, reference):
    """Killed during screening, then during confirmation: each re-run trains only runs without a record and ends with
    the decisions of an uninterrupted search."""
    ref = reference[0]
    out = tmp_path / "killed"
    first = FakeExecutor(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        search("shapes.yaml", budget=19, out=out, executor=first, **KW)
    assert len(_keys(out)) == 3 and not (out / SEARCH_NAME).exists()
    second = FakeExecutor(stop_after=6)  # the 4 screening runs left, then 2 of the confirmation runs
    with pytest.raises(KeyboardInterrupt):
        search("shapes.yaml", budget=19, out=out, executor=second, **KW)
    screened = SearchOutcome.load(out)
    assert screened.stage == "screened" and _decisions(screened) == _decisions(ref)
    third = FakeExecutor()
    o = search("shapes.yaml", budget=19, out=out, executor=third, **KW)
    given = [r.key for ex in (first, second, third) for r in ex.given]
    assert len(given) == len(set(given)) == 19 and sorted(given) == sorted(_keys(out))  # nothing redone
    assert _decisions(o) == _decisions(ref) and o.to_dict() == ref.to_dict()
    again = FakeExecutor()
    assert search("shapes.yaml", budget=19, out=out, executor=again, **KW).to_dict() == ref.to_dict()
    assert again.given == []


# --------------------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def pretrained(shapes_data, tmp_path_factory):
    """A baseline trained once (1 epoch) whose weights every search run starts from."""
    from yolo_attn.execute import execute

    out = tmp_path_factory.mktemp("start")
    rec = execute(Run("yolov8n.yaml", shapes_data, train=REAL_TRAIN | {"epochs": 1}), out, "cpu", FAST)
    assert rec.ok, rec.error
    return str(out / rec.weights)


REAL_TRAIN = {"epochs": 2, "imgsz": 32, "batch": 2, "workers": 0}
FAST = {"flops_imgsz": 64, "bench_imgsz": 32, "bench_batch": 1, "bench_iters": 1, "bench_warmup": 0}


def test_tiny_real_search_end_to_end(tmp_path, shapes_data, pretrained, capsys):
    """`yolo-attn search` with the local executor: 2 candidates screened (1 epoch), 1 confirmed with seed 0 (2
    epochs), 5 runs for a budget of 5; search.json written; the same command again trains nothing."""
    out = tmp_path / "search"
    argv = ["search", "--data", shapes_data, "--blocks", *BLOCKS, "--positions", "sppf_before", "--budget", "5",
            "--screen-epochs", "1", "--confirm-seeds", "0", "--pretrained", pretrained, "--out", str(out),
            "--resamples", "50", *(f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()),
            *(f"{k}={v}" for k, v in REAL_TRAIN.items())]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Search: where does a block help?" in printed and "Runs: 5 spent (3 screening, 2 confirmation)" in printed
    lines = (out / STORE_NAME).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 5 and all(r["status"] == "done" for r in recs), [r.get("error") for r in recs]
    assert all(r["pretrained"] == str(Path(pretrained).resolve()) for r in recs)
    assert sorted(r["epochs"] for r in recs) == [1, 1, 1, 2, 2]
    o = SearchOutcome.load(out)
    assert o.stage == "confirmed" and o.runs_spent == 5 == o.budget and o.full_grid == 3 and o.n_images == 4
    assert len(o.kept) == 1 and len(o.confirmed) == 1 and o.confirmed[0].seeds == [0]
    assert all(c.low is not None for c in o.candidates if c.decision != "failed")
    assert main(argv) == 0
    assert (out / STORE_NAME).read_text().splitlines() == lines  # resumed: nothing trained again
    assert _decisions(SearchOutcome.load(out)) == _decisions(o)
