"""The report reads only the store: tables, deltas against the same-seed baseline, Pareto front, PNG plots, CLI."""

import csv
import dataclasses
import json
import re
import struct
from pathlib import Path

import pytest

from yolo_attn.cli import main
from yolo_attn.report import (
    METRICS,
    ConfigSummary,
    Spread,
    compare,
    load_records,
    pareto_front,
    run_views,
    summarize,
    write_report,
)
from yolo_attn.stats import PairedBootstrap, SeedInterval, Verdict
from yolo_attn.store import STORE_NAME, ResultStore, RunRecord

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
    by = {r.config: r for r in rows}
    assert set(by) == {"yolov8n (baseline)", "bot@sppf_before", "dat@neck"}  # the failed run is not aggregated
    bot = by["bot@sppf_before"]
    assert bot.seeds == 2
    d = bot.delta["map50_95"]
    assert d.values == pytest.approx([0.02, 0.01])  # per seed: 0.32-0.30, 0.35-0.34
    assert d.mean == pytest.approx(0.015) and d.std == pytest.approx(0.00707, abs=1e-4)
    assert by["dat@neck"].gflops.mean == 12.0 and by["dat@neck"].gflops_ultralytics.mean == 10.0


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


# --------------------------------------------------------------------------------------------------- intervals
def _matches_store(folder, seeds=(0, 1, 2), skills=None, data="/d/shapes.yaml", n_images=150, shuffle_ids=False,
                   areas=False, size_skills=None, same=()):  # fmt: skip
    """A store whose runs carry per-image files: simulated validations of one image set (yolo_attn.stats), the
    baseline and each variant with its own noise per seed; each record's mAP is its file's. Without ``areas`` the files
    have no box areas (as format 1); ``size_skills``: family -> (small, medium, large) extra skill; the families in
    ``same`` get the baseline's own files (an identical model)."""
    import numpy as np

    from yolo_attn.stats import Matches, map_scores, synthetic_validation

    skills = skills or {"bot": 0.0, "dat": 1.5}
    S = len(seeds)
    sizes = [(0, 0, 0)] * S + [(size_skills or {}).get(f, (0, 0, 0)) for f in skills for _ in seeds]
    ms = synthetic_validation(n_images, 4, skills=[0.0] * S + [s for s in skills.values() for _ in seeds], seed=3,
                              false_positives_per_image=10, iou_thresholds=np.linspace(0.5, 0.95, 10),
                              size_skills=sizes)  # fmt: skip
    ids = tuple(f"images/val/{i:04d}.png" for i in range(n_images))
    st = ResultStore(folder)
    for j, fam in enumerate(["baseline", *skills]):
        for k, seed in enumerate(seeds):
            m = ms[(0 if fam in same else j) * S + k]
            extra = {"target_area": m.target_area, "pred_area": m.pred_area, "matched_target": m.matched_target}
            m = Matches(m.image, m.conf, m.cls, m.tp, m.target_image, m.target_cls, m.n_images, image_ids=ids,
                        names={0: "circle", 1: "square", 2: "triangle", 3: "star"},
                        **(extra if areas else {}))  # fmt: skip
            if shuffle_ids and fam != "baseline":  # the same images, numbered in another order
                perm = np.random.default_rng(seed).permutation(n_images)
                inv = np.argsort(perm)
                m = dataclasses.replace(m, image=inv[m.image], target_image=inv[m.target_image],
                                        image_ids=tuple(ids[p] for p in perm))  # fmt: skip
            s = map_scores(m)
            base = fam == "baseline"
            name = "yolov8n" if base else f"yolov8n-{fam}-sppf_before"
            key = f"{name}-{data.replace('/', '_')}-{seed}"
            m.save(folder / "tmp.npz")
            arts = st.put_artifacts(key, {"matches.npz": folder / "tmp.npz"})
            st.append(
                _rec(
                    name,
                    seed,
                    s.map50_95,
                    8.7,
                    8.7,
                    None if base else fam,
                    None if base else fam,
                    None if base else "sppf_before",
                    baseline=base,
                    key=key,
                    map50=s.map50,
                    data=data,
                    artifacts=arts,
                )  # fmt: skip
            )
    return folder


def test_intervals_and_verdicts_from_per_image_files(tmp_path):
    """Three seeds: a variant from the baseline's distribution and one clearly better. Intervals over images and
    seeds, verdicts, the detectable difference, per-class changes, CSV columns, LaTeX, whiskers."""
    from yolo_attn.report import load_matches

    store = _matches_store(tmp_path)
    paths = write_report(store, resamples=300)
    md = paths["markdown"].read_text()
    by = {r.config: r for r in paths["summary"]}
    dat, bot = by["dat@sppf_before"], by["bot@sppf_before"]
    assert dat.verdicts["map50_95"].label == "better" and dat.verdicts["map50_95"].note is None
    img, seeds = dat.image_interval("map50_95"), dat.seed_intervals["map50_95"]
    assert 0 < img.low < dat.delta["map50_95"].mean < img.high
    assert 0 < seeds.low and dat.pairs == 3 and dat.n_images == 150
    assert bot.image_interval("map50_95").low < bot.delta["map50_95"].mean < bot.image_interval("map50_95").high
    assert dat.detectable("map50_95") == pytest.approx(max(img.high - img.low, seeds.high - seeds.low) / 2)
    # the statistics are the objects yolo_attn.stats returns, and each run holds its own one-pair comparison
    assert isinstance(dat.bootstrap, PairedBootstrap) and dat.bootstrap.n_pairs == 3
    assert all(isinstance(v, Verdict) for v in dat.verdicts.values()) and set(dat.verdicts) == set(METRICS)
    assert isinstance(seeds, SeedInterval) and seeds.n == 3 and dat.limited_by("map50_95") in ("images", "seeds")
    assert all(isinstance(v.bootstrap, PairedBootstrap) and v.bootstrap.n_pairs == 1 for v in dat.runs)
    assert by["yolov8n (baseline)"].bootstrap is None and not by["yolov8n (baseline)"].verdicts
    # the bootstrap's full-sample difference is the records' mean same-seed difference (the files are the records)
    recs = load_records(store)
    matches, notes = load_matches(store, recs)
    assert len(matches) == 9 and notes == []
    assert re.search(r"\| dat@sppf_before +\| mAP50-95 +\|.*\| better +\|", md) and "95% CI (seeds)" in md
    assert "limited by" in md and "Per class" in md and re.search(r"\| dat@sppf_before +\| star +\|.*higher", md)
    assert "Intervals unavailable" not in md
    runs = list(csv.DictReader(paths["csv"].open()))
    dat0 = next(r for r in runs if r["name"] == "yolov8n-dat-sppf_before" and r["seed"] == "0")
    assert float(dat0["d_map50_95_low"]) < float(dat0["d_map50_95"]) < float(dat0["d_map50_95_high"])
    assert dat0["verdict_map50_95"] == "better" and dat0["config"] == "dat@sppf_before"
    summ = {r["config"]: r for r in csv.DictReader(paths["summary_csv"].open())}
    assert summ["dat@sppf_before"]["verdict_map50"] and float(summ["dat@sppf_before"]["d_map50_95_seed_low"]) > 0
    tex = paths["latex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "dat@sppf\\_before & 3 &" in tex and "(better)" in tex
    assert (store / "report" / "delta_by_position.png").read_bytes()[:8] == PNG


def test_one_seed_verdict_says_training_noise_not_measured(tmp_path):
    store = _matches_store(tmp_path, seeds=(0,))
    md = write_report(store, resamples=200)["markdown"].read_text()
    assert re.search(r"\| bot@sppf_before +\| mAP50-95 +\|.*\(training noise not measured \(1 seed\)\)", md)


def test_images_in_another_order_pair_the_same(tmp_path):
    """Runs that list the same validation images in another order are paired image by image."""
    a = write_report(_matches_store(tmp_path / "a", seeds=(0,)), resamples=200)["summary"]
    b = write_report(_matches_store(tmp_path / "b", seeds=(0,), shuffle_ids=True), resamples=200)["summary"]
    for ra, rb in zip(a, b):
        assert ra.delta["map50_95"].mean == pytest.approx(rb.delta["map50_95"].mean, abs=1e-12), ra.config
        for m in ("map50_95", "map50"):
            ia, ib = ra.image_interval(m), rb.image_interval(m)
            assert (ia is None) == (ib is None) == ra.baseline
            if ia is not None:
                assert (ia.low, ia.high) == pytest.approx((ib.low, ib.high), abs=1e-12), (ra.config, m)


def test_runs_without_per_image_files_have_no_intervals(store):
    """A store written before runs kept their matches: same tables, and the report says what is missing."""
    paths = write_report(store)
    md = paths["markdown"].read_text()
    assert "Intervals unavailable for 6 runs without a per-image file" in md
    assert "- (no per-image file)" in md
    assert paths["summary"][1].unavailable == "no per-image file" and paths["summary"][1].bootstrap is None


def test_two_datasets_have_a_section_each_and_a_combined_table(tmp_path):
    store = _matches_store(tmp_path, seeds=(0,), data="/data/a/shapes.yaml")
    _matches_store(tmp_path, seeds=(0,), data="/data/b/shapes.yaml")
    paths = write_report(store, resamples=200)
    md = paths["markdown"].read_text()
    assert "## a/shapes.yaml" in md and "## b/shapes.yaml" in md
    assert "## All datasets: Δ mAP50-95, 95% CI over images, verdict" in md
    assert re.search(r"\| config +\| a/shapes.yaml +\| b/shapes.yaml +\|", md)
    names = {p.name for p in paths["plots"]}
    assert {"delta_by_position-a_shapes.png", "delta_by_position-b_shapes.png"} <= names
    assert {r["dataset"] for r in csv.DictReader(paths["summary_csv"].open())} == {"a/shapes.yaml", "b/shapes.yaml"}


# --------------------------------------------------------------------------------------------------- typed data
def test_spread_over_seeds():
    s = Spread.of([0.30, None, float("nan"), 0.34, True])  # missing, non-finite and bools are not values
    assert s.values == (0.30, 0.34) and s.mean == pytest.approx(0.32) and s.std == pytest.approx(0.02828, abs=1e-5)
    assert Spread.of([0.3]).std is None and Spread().mean is None


def _typed_records():
    """Baselines of seeds 0 and 1; a variant of seeds 0, 1 and 2 (2 has no baseline); a failed variant run."""
    recs = [
        RunRecord(f"b{s}", name="yolov8n", status="done", baseline=True, base="yolov8n.yaml", seed=s,
                  map50_95=0.30 + s / 100, map50=0.5, params=3_000_000, latency_ms={1: 10.0})
        for s in (0, 1)
    ]  # fmt: skip
    recs += [
        RunRecord(f"v{s}", name="yolov8n-bot-neck", status="done", base="yolov8n.yaml", block="BoT", family="bot",
                  position="neck", seed=s, map50_95=0.33 + s / 50, map50=0.5, params=3_100_000, latency_ms={1: 12.5})
        for s in (0, 1, 2)
    ]  # fmt: skip
    recs.append(RunRecord("f0", name="yolov8n-bot-neck", status="failed", block="BoT", family="bot", seed=0))
    return recs


def test_run_views_pair_each_run_with_its_same_seed_baseline():
    views = {v.key: v for v in run_views(_typed_records())}
    assert views["v1"].baseline.key == "b1" and views["v1"].deltas["map50_95"] == pytest.approx(0.04)
    assert views["v0"].deltas["params"] == 100_000 and views["v0"].deltas["latency_ms_b1"] == pytest.approx(2.5)
    assert views["v2"].baseline is None and not views["v2"].deltas  # no baseline of seed 2
    assert views["f0"].baseline is None and not views["f0"].deltas  # failed runs are not compared
    assert views["b0"].baseline.key == "b0" and views["b0"].deltas["map50_95"] == 0  # a baseline is its own


def test_compare_returns_new_summaries_and_leaves_its_input_alone():
    base, bot = summarize(_typed_records())
    assert isinstance(bot, ConfigSummary) and (base.config, bot.config) == ("yolov8n (baseline)", "bot@neck")
    assert bot.seeds == 3 and bot.seed_list == [0, 1, 2] and bot.delta["map50_95"].values == pytest.approx([0.03, 0.04])
    assert bot.params.mean == 3_100_000 and bot.latency_ms_b1.mean == 12.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        bot.pairs = 1
    base2, bot2 = compare([base, bot], matches={})
    assert base2 is base and bot2 is not bot
    assert bot2.pairs == 2 and bot2.unavailable == "no per-image file" and not bot2.verdicts
    assert bot.pairs is None and bot.unavailable is None  # the input is unchanged
    # a variant whose seeds have no baseline at all
    lone = [r for r in _typed_records() if r.key == "v2"]
    (c,) = compare(summarize(lone), matches={})
    assert c.pairs == 0 and c.unavailable == "no baseline of the same seed"


RESULTS_COLUMNS = (
    "key,name,status,baseline,base,block,family,position,args,seed,map50,map50_95,precision,recall,d_map50_95,"
    "d_map50_95_low,d_map50_95_high,d_map50,d_map50_low,d_map50_high,verdict_map50_95,verdict_map50,params,gflops,"
    "gflops_ultralytics,gflops_imgsz,latency_ms_b1,peak_mb_b1,bench_batch,bench_imgsz,bench_device,imgsz,epochs,"
    "train_s,wall_s,device,data,train,pretrained,error,started,finished,model,inserted,pretrained_run,eval_split,warm_new_blocks,pid,cpu_s,"
    "model_yaml,save_dir,weights,log,fitness,measure_error,fuse_error,latency_ms_b8,peak_mb_b8,baseline_key,"
    "d_gflops,d_params,d_latency_ms_b1,config"
)
SUMMARY_COLUMNS = (
    "dataset,group,config,baseline,seeds,seed_list,pairs,n_images,map50,map50_std,map50_95,map50_95_std,d_map50_95,"
    "d_map50_95_std,d_map50_95_low,d_map50_95_high,d_map50_95_seed_low,d_map50_95_seed_high,d_map50_95_detectable,"
    "d_map50_95_limited_by,verdict_map50_95,verdict_map50_95_note,d_map50,d_map50_std,d_map50_low,d_map50_high,"
    "d_map50_seed_low,d_map50_seed_high,d_map50_detectable,d_map50_limited_by,verdict_map50,verdict_map50_note,"
    "intervals,params,gflops,gflops_ultralytics,gflops_imgsz,latency_ms_b1,data,train,margin,equivalence_map50_95,"
    "equivalence_map50,"
    + "".join(
        f"n_targets_{s},ap_{s}_base,ap_{s},d_ap_{s},d_ap_{s}_low,d_ap_{s}_high,d_ap_{s}_seed_low,d_ap_{s}_seed_high,"
        f"verdict_ap_{s},equivalence_ap_{s},"
        for s in ("small", "medium", "large")
    )
    + "utilisation"
)


def test_csv_column_names_stay_what_users_read(store):
    """The column names of results.csv and summary.csv, as the dict-based report wrote them."""
    paths = write_report(store)
    assert paths["csv"].read_text().splitlines()[0] == RESULTS_COLUMNS
    assert paths["summary_csv"].read_text().splitlines()[0] == SUMMARY_COLUMNS
    rows = {r["key"]: r for r in csv.DictReader(paths["csv"].open())}
    assert rows["yolov8n-bot-sppf_before-1"]["d_params"] == "100000" and rows["broken-0"]["config"] == ""
    assert float(rows["yolov8n-dat-neck-0"]["d_gflops"]) == pytest.approx(3.3)


def test_report_sections_are_one_function_each(store, monkeypatch):
    """A new part of report.md is one function in one list: settings, after each group's table, after the datasets."""
    from yolo_attn.report import write

    monkeypatch.setattr(write, "SETTINGS", [*write.SETTINGS, lambda rep: [f"- split: val ({len(rep.runs)} runs)"]])
    groups = [*write.GROUP_SECTIONS, lambda group: [f"strata of {', '.join(c.config for c in group)}", ""]]
    monkeypatch.setattr(write, "GROUP_SECTIONS", groups)
    monkeypatch.setattr(write, "TAIL_SECTIONS", [*write.TAIL_SECTIONS, lambda rep: ["## Search", "", "screened", ""]])
    md = write_report(store)["markdown"].read_text()
    assert "- split: val (7 runs)" in md and "strata of yolov8n (baseline), bot@sppf_before, dat@neck" in md
    assert md.index("## Per configuration") < md.index("strata of") < md.index("## Per run") < md.index("## Search")


def test_plot_texts_fit_in_their_figures(tmp_path, monkeypatch):
    """Titles, axis labels and the cost plot's panel titles stay inside the figure (the per-position subtitle was cut
    at the right edge), also with a long device name and one insertion point (the narrowest figure)."""
    from yolo_attn.report import plots

    figures = []
    make = plots._figure
    monkeypatch.setattr(plots, "_figure", lambda *a, **kw: figures.append(make(*a, **kw)) or figures[-1])
    recs = []
    for seed in (0, 1, 2):
        kw = dict(status="done", seed=seed, base="yolov8n.yaml", gflops=8.7, gflops_ultralytics=8.7, params=3_000_000,
                  gflops_imgsz=640, bench_device="cuda:0 (NVIDIA H100 80GB HBM3), torch 2.14.1", latency_ms={1: 2.0})  # fmt: skip
        recs.append(RunRecord(f"b{seed}", name="yolov8n", baseline=True, map50_95=0.30 + seed / 100, **kw))
        recs.append(RunRecord(f"v{seed}", name="yolov8n-dat", block="DATBlock", family="dat", position="sppf_before",
                              map50_95=0.33 + seed / 90, **kw))  # fmt: skip
    summary = compare(summarize(recs), matches={})
    drawn = [
        plots.plot_map_vs_gflops(summary, tmp_path / "a.png"),
        plots.plot_delta_by_position(summary, tmp_path / "b.png"),
        plots.plot_cost(summary, tmp_path / "c.png", title="a long dataset name/that/goes/on/shapes-large.yaml"),
    ]
    assert all(p is not None and p.read_bytes()[:8] == PNG for p in drawn) and len(figures) == 3
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        texts = [fig._suptitle] if fig._suptitle is not None else []
        for ax in fig.axes:
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for t in texts:
            if t.get_text():
                box = t.get_window_extent(renderer)
                assert box.x0 >= -1 and box.y0 >= -1, t.get_text()
                assert box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1, t.get_text()


# --------------------------------------------------------------------------------------------------- strata, margin
def test_size_strata_rows_and_columns_are_the_stats_functions(tmp_path):
    """A gain planted on large objects only: per stratum, the report's image interval is the paired bootstrap's (the
    same resamples), its seed interval the t-interval of the per-seed changes of each run's own stratum AP, and the
    verdicts say better for large, no detectable difference for small; in report.md, both CSVs and the LaTeX."""
    from yolo_attn.report import load_matches
    from yolo_attn.stats import map_scores, paired_bootstrap, seed_interval

    store = _matches_store(tmp_path, skills={"big": 0.0}, areas=True, size_skills={"big": (0, 0, 2.5)})
    paths = write_report(store, resamples=300)
    base, big = paths["summary"]
    by = {s.name: s for s in big.strata}
    assert list(by) == ["small", "medium", "large"]
    assert by["large"].verdict.label == "better" and by["small"].verdict.label == "no detectable difference"
    recs = load_records(store)
    matches, _ = load_matches(store, recs)
    pairs = [(v.baseline.key, v.key) for v in big.runs]
    ref = paired_bootstrap([matches[b] for b, _ in pairs], [matches[v] for _, v in pairs], n_resamples=300, seed=0)
    for r, s in zip(ref.strata, big.strata):
        assert (r.name, r.n_targets, r.map50_95.interval) == (s.name, s.n_targets, s.image_interval)
        diffs = [map_scores(matches[v], stratum=s.name).map50_95 - map_scores(matches[b], stratum=s.name).map50_95
                 for b, v in pairs]  # fmt: skip
        want = seed_interval(diffs)
        assert (s.seed_interval.low, s.seed_interval.high) == pytest.approx((want.low, want.high), abs=1e-12)
    md = paths["markdown"].read_text()
    assert "By object size (COCO areas, original pixels" in md and "Size strata unavailable" not in md
    assert re.search(r"\| big@sppf_before +\| large +\| +\d+ \|.*\| better +\|", md)
    summ = {r["config"]: r for r in csv.DictReader(paths["summary_csv"].open())}["big@sppf_before"]
    assert float(summ["d_ap_large_low"]) > 0 and summ["verdict_ap_large"] == "better"
    assert float(summ["d_ap_small_low"]) == pytest.approx(by["small"].image_interval.low)
    assert float(summ["d_ap_large_seed_low"]) == pytest.approx(by["large"].seed_interval.low)
    runs = list(csv.DictReader(paths["csv"].open()))
    for row in runs:
        m = matches[row["key"]]
        for s in ("small", "medium", "large"):
            assert float(row[f"ap50_95_{s}"]) == pytest.approx(map_scores(m, stratum=s).map50_95, abs=1e-12)
    tex = paths["latex"].read_text()
    assert "by object size" in tex and "big@sppf\\_before & large &" in tex


def test_store_without_areas_reports_without_strata_and_says_so(tmp_path):
    store = _matches_store(tmp_path, seeds=(0, 1, 2))  # files without box areas (format 1 and early captures)
    paths = write_report(store, resamples=200)
    md = paths["markdown"].read_text()
    assert "By object size" not in md and "Size strata unavailable for 9 runs" in md and "format 1" in md
    assert all(not c.strata for c in paths["summary"]) and "better" in md
    summ = list(csv.DictReader(paths["summary_csv"].open()))
    assert all(r["d_ap_small"] == "" for r in summ)
    assert "ap50_95_small" not in paths["csv"].read_text().splitlines()[0]


def test_equivalence_margin(tmp_path):
    """Margin 0.005: an identical model is equivalent, a planted loss of about 0.03 is not (nor "not worse"), a large
    gain is "not worse"; the legend explains each verdict; the CLI takes --margin."""
    store = _matches_store(tmp_path, skills={"same": 0.0, "less": -0.1, "dat": 1.5}, same=("same",))
    paths = write_report(store, resamples=200, margin=0.005)
    by = {c.config: c for c in paths["summary"]}
    same, less, dat = by["same@sppf_before"], by["less@sppf_before"], by["dat@sppf_before"]
    assert same.delta["map50_95"].mean == 0 and same.verdicts["map50_95"].equivalence == "equivalent"
    assert -0.05 < less.delta["map50_95"].mean < -0.015 and less.verdicts["map50_95"].equivalence is None
    assert dat.verdicts["map50_95"].equivalence == "not worse"
    md = paths["markdown"].read_text()
    assert re.search(r"\| same@sppf_before +\| mAP50-95 .*\| no detectable difference; equivalent within ±0\.005", md)
    assert re.search(r"\| less@sppf_before +\| mAP50-95 .*; not shown equivalent within ±0\.005", md)
    assert re.search(r"\| dat@sppf_before +\| mAP50-95 .*\| better; not worse than \u22120\.005", md)
    for word in ("**better**", "**no detectable difference**", "**equivalent within ±0.005**", "**not worse than"):
        assert word in md
    summ = {r["config"]: r for r in csv.DictReader(paths["summary_csv"].open())}
    assert summ["same@sppf_before"]["equivalence_map50_95"] == "equivalent within ±0.005"
    assert summ["same@sppf_before"]["margin"] == "0.005" and summ["less@sppf_before"][
        "equivalence_map50_95"
    ].startswith("not shown")
    assert "equivalent within $\\pm$0.005" in paths["latex"].read_text()
    out = tmp_path / "cli"
    assert main(["report", str(store), "--out", str(out), "--resamples", "100", "--margin", "0.005"]) == 0
    assert "equivalent within ±0.005" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="margin must be a positive number"):
        write_report(store, resamples=100, margin=-1)


# --------------------------------------------------------------------------------------------------- utilisation
def _use(row, level, ratio, sd, gamma):
    return {"row": row, "block": "BoT", "family": "bot", "level": level, "ratio_mean": ratio, "ratio_std": sd,
            "n_images": 8, "gates": {"bn_gamma": gamma}}  # fmt: skip


def test_utilisation_table_from_records(tmp_path):
    """The records' utilisation per block row over seeds, and the one-line summary in the verdict table."""
    s = ResultStore(tmp_path / STORE_NAME)
    for seed, (r3, r4) in enumerate([(0.02, 0.04), (0.022, 0.04)]):
        s.append(_rec("yolov8n", seed, 0.3, 8.7, 8.7, baseline=True))
        uses = [_use(16, 3, r3, 0.004, 0.01), _use(20, 4, r4, 0.005, 0.02)]
        s.append(_rec("yolov8n-bot-neck", seed, 0.3, 9.0, 9.0, "BoT", "bot", "neck", utilisation=uses))
    paths = write_report(tmp_path)
    md = paths["markdown"].read_text()
    assert "Block use after training" in md
    assert re.search(
        r"\| bot@neck +\| BoT +\| +16 \| P3 +\| +2 \| +2\.1% ± 0\.1% \| +0\.4% \|.*bn_gamma 0\.01 ± 0 ", md
    )
    assert re.search(r"\| bot@neck +\| BoT +\| +20 \| P4 +\| +2 \| +4\.0% ± 0\.0% \|", md)
    assert re.search(r"\| bot@neck +\| mAP50-95 .*\| bot: branch 2\.1% of input at P3, 4\.0% at P4 +\|", md)
    summ = {r["config"]: r for r in csv.DictReader(paths["summary_csv"].open())}
    assert summ["bot@neck"]["utilisation"] == "bot: branch 2.1% of input at P3, 4.0% at P4"
    assert "utilisation" not in paths["csv"].read_text().splitlines()[0]  # nested: summary.csv has the line


# --------------------------------------------------------------------------------------------------- explain, search
def test_explain_figures_without_weights_get_a_note(store):
    paths = write_report(store)
    md = paths["markdown"].read_text()
    assert "- `bot@sppf_before`: no figures, no trained weights kept in the store" in md and paths["explain"] == []
    assert not (store / "report" / "explain").exists()
    assert "What the blocks look at" not in write_report(store, explain_images=0)["markdown"].read_text()


def test_explain_figures_written_and_linked(tmp_path, registered, shapes_data):
    """A tiny store with weights (untrained, saved the way Ultralytics saves them): one figure per image and variant,
    baseline above the variant, at the run's size, linked from report.md."""
    from yolo_attn._compat import YOLO
    from yolo_attn.edit import make_variant, save_variant

    (tmp_path / "w").mkdir()
    YOLO("yolov8n.yaml").save(tmp_path / "w" / "base.pt")
    cfg = save_variant(make_variant("yolov8n.yaml", "bot", "sppf_before"), tmp_path / "yolov8n-bot-sppf_before.yaml")
    YOLO(str(cfg)).save(tmp_path / "w" / "bot.pt")
    s = ResultStore(tmp_path / STORE_NAME)
    for seed in (1, 0):
        s.append(_rec("yolov8n", seed, 0.3, 8.7, 8.7, baseline=True, data=shapes_data, imgsz=64, weights="w/base.pt"))
        s.append(_rec("yolov8n-bot-sppf_before", seed, 0.3, 9.0, 9.0, "BoT", "bot", "sppf_before", data=shapes_data,
                      imgsz=64, weights="w/bot.pt"))  # fmt: skip
    paths = write_report(tmp_path, explain_images=2)
    figs = paths["explain"]
    assert [p.relative_to(tmp_path / "report").as_posix() for p in figs] == [
        f"explain/bot_sppf_before/{p.stem}.png"
        for p in sorted((Path(shapes_data).parent / "images" / "val").glob("*"))[:2]
    ]
    for p in figs:
        head = p.read_bytes()[:24]
        assert head[:8] == PNG and struct.unpack(">II", head[16:24]) == (3 * 320, 2 * 320)  # 2 rows, 1 block
    md = paths["markdown"].read_text()
    assert "`bot@sppf_before` (seed 0):" in md  # the lowest seed
    assert all(f"]({p.relative_to(tmp_path / 'report').as_posix()})" in md for p in figs)


def test_search_section_when_the_store_has_a_search(store):
    from yolo_attn.search import Candidate, SearchOutcome

    assert "## Search" not in write_report(store)["markdown"].read_text()
    o = SearchOutcome("/d/shapes.yaml", "yolov8n.yaml", None, {"epochs": 4}, {"epochs": 1}, 100, [0, 1, 2], 19,
                      candidates=[Candidate("yolov8n-bot-neck", "bot", "neck", decision="worse", reason="worse: below 0")])  # fmt: skip
    o.save(store)
    md = write_report(store)["markdown"].read_text()
    assert "## Search: where does a block help?" in md and "worse: below 0" in md
    assert md.index("## Search") < md.index("## Per run")


def test_runs_scored_on_another_split_are_compared_apart_and_named(tmp_path):
    """--eval-split: a variant scored on test is never paired with a baseline scored on val; the report names the split."""
    s = ResultStore(tmp_path / STORE_NAME)
    for seed in (0, 1):
        s.append(_rec("yolov8n", seed, 0.30, 8.7, 8.7, baseline=True))  # scored on val
        s.append(_rec("yolov8n", seed, 0.20, 8.7, 8.7, baseline=True, key=f"t-b{seed}", eval_split="test"))
        s.append(
            _rec("yolov8n-bot-neck", seed, 0.25, 9.5, 9.0, "BoT", "bot", "neck", key=f"t-v{seed}", eval_split="test")
        )
    summary = summarize(load_records(tmp_path))
    bot = next(c for c in summary if c.family == "bot")
    assert bot.delta["map50_95"].mean == pytest.approx(0.05)  # against the test baseline (0.20), not val's 0.30
    text = write_report(tmp_path, explain_images=0)["markdown"].read_text()
    assert "final validation on `test` / `val`" in text
    assert "scored on test" in text


def test_a_comparator_family_is_named_with_where_its_module_comes_from(tmp_path):
    s = ResultStore(tmp_path / STORE_NAME)
    s.append(_rec("yolov8n", 0, 0.30, 8.7, 8.7, baseline=True))
    s.append(_rec("yolov8n-psa-neck", 0, 0.31, 9.0, 9.0, "PSAResidual", "psa", "neck"))
    text = write_report(tmp_path, explain_images=0)["markdown"].read_text()
    line = next(x for x in text.splitlines() if x.startswith("- comparator `psa`"))
    assert "Ultralytics" in line and "PSA" in line and "trained with Ultralytics y" in line  # the record's version
    assert "comparator `bot`" not in text


def test_a_warm_started_variant_is_its_own_configuration(tmp_path):
    """--warm-new-blocks: the same block and position with and without the warm stage are compared apart."""
    s = ResultStore(tmp_path / STORE_NAME)
    for seed in (0, 1):
        s.append(_rec("yolov8n", seed, 0.30, 8.7, 8.7, baseline=True))
        s.append(_rec("yolov8n-bot-neck", seed, 0.31, 9.5, 9.0, "BoT", "bot", "neck"))
        s.append(_rec("yolov8n-bot-neck+warm2", seed, 0.33, 9.5, 9.0, "BoT", "bot", "neck", warm_new_blocks=2))
    by = {c.config: c for c in summarize(load_records(tmp_path))}
    assert by["bot@neck"].delta["map50_95"].mean == pytest.approx(0.01)
    assert by["bot@neck+warm2"].delta["map50_95"].mean == pytest.approx(0.03)
