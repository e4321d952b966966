"""yolo_attn.stats: exact mAP from per-image matches, paired bootstrap, seed intervals, verdicts.

Oracles: Ultralytics' own ``ap_per_class`` (whichever version is installed: 8.4 ends the PR curve at zero precision,
8.3 draws a line to recall 1), and ``reference_ap`` below, a plain per-class loop written from that algorithm that
can follow either convention and an explicit order of predictions.
"""

from __future__ import annotations

import math
import os
import statistics
import sys

import numpy as np
import pytest

from yolo_attn.stats import (
    AP_TAILS,
    Interval,
    Matches,
    SeedInterval,
    detect_ap_tail,
    map_scores,
    paired_bootstrap,
    resample_weights,
    resampled_scores,
    seed_interval,
    synthetic_validation,
    t_quantile,
    verdict,
)

GRID = np.linspace(0, 1, 101)


# ------------------------------------------------------------------------------------------------------- oracles
@pytest.fixture(scope="module")
def ultralytics_ap():
    """Ultralytics' ap_per_class and its AP convention (8.3.65's compute_ap calls np.trapz, gone in numpy 2.4)."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # test-local shim; undone below
        added = True
    else:
        added = False
    from ultralytics.utils.metrics import ap_per_class, compute_ap

    yield ap_per_class, detect_ap_tail(compute_ap)
    if added:
        del np.trapz


def ul_scores(ap_per_class, m: Matches) -> tuple[np.ndarray, np.ndarray]:
    """(ap (C, T), classes) from Ultralytics on the matches as they are."""
    out = ap_per_class(m.tp, m.conf, m.cls, m.target_cls)
    return out[5], out[6]


def reference_ap(tp, conf, pred_cls, target_cls, tail="zero", order=None):
    """AP (C, T) and classes, the slow obvious way: per class, cumulative counts, envelope, np.interp, trapezoid.

    ``order`` (optional, one permutation per threshold) replaces the confidence sort, to test tie orders.
    """
    classes, nt = np.unique(target_cls, return_counts=True)
    T = tp.shape[1]
    ap = np.zeros((len(classes), T))
    for j in range(T):
        o = np.argsort(-conf) if order is None else order[j]
        t, c = tp[o, j], pred_cls[o]
        for ci, cl in enumerate(classes):
            sel = c == cl
            if not sel.any():
                continue
            tpc = np.cumsum(t[sel])
            fpc = np.cumsum(~t[sel])
            recall = tpc / (nt[ci] + 1e-16)
            precision = tpc / (tpc + fpc)
            if tail == "zero":
                mrec = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
                mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
            else:
                mrec = np.concatenate(([0.0], recall, [1.0]))
                mpre = np.concatenate(([1.0], precision, [0.0]))
            mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
            ap[ci, j] = np.trapezoid(np.interp(GRID, mrec, mpre), GRID)
    return ap, classes


def expand(m: Matches, weights) -> Matches:
    """The matches with image i repeated weights[i] times (a physical resample)."""
    w = np.asarray(weights)
    copies = np.repeat(np.arange(m.n_images), w)  # new image -> old image
    new_of = [np.flatnonzero(copies == i) for i in range(m.n_images)]
    p_img, p_idx, t_img, t_idx = [], [], [], []
    for i in range(m.n_images):
        preds, targets = np.flatnonzero(m.image == i), np.flatnonzero(m.target_image == i)
        for new in new_of[i]:
            p_img.append(np.full(len(preds), new)), p_idx.append(preds)
            t_img.append(np.full(len(targets), new)), t_idx.append(targets)
    p = np.concatenate(p_idx).astype(int) if p_idx else np.zeros(0, int)
    t = np.concatenate(t_idx).astype(int) if t_idx else np.zeros(0, int)
    return Matches(
        np.concatenate(p_img) if p_img else p,
        m.conf[p],
        m.cls[p],
        m.tp[p],
        np.concatenate(t_img) if t_img else t,
        m.target_cls[t],
        max(len(copies), 1),
        ap_tail=m.ap_tail,
    )


def random_matches(seed: int, n_images=30, n_classes=6, ties=True, tail="zero", n_thr=10) -> Matches:
    """Small sets with every awkward case: ties between TPs and FPs, a class with targets but no predictions
    (n_classes - 2), predictions of a class without targets (n_classes - 1), images without boxes (with and without
    predictions), few targets per class (recall levels wider than the grid, exact hits of grid points), TP sets
    that are not nested across thresholds."""
    rng = np.random.default_rng(seed)
    t_img, t_cls, p_img, p_conf, p_cls, p_tp = [], [], [], [], [], []
    levels = np.array([0.9, 0.7, 0.5, 0.5, 0.3, 0.1, 0.05], np.float32)
    for i in range(n_images):
        nt = 0 if i % 7 == 3 else rng.poisson(2)
        cls_t = rng.integers(0, n_classes - 1, nt)  # never the last class
        n_p = 0 if i % 11 == 5 else rng.poisson(5)
        cls_p = rng.integers(0, n_classes, n_p)
        cls_p[cls_p == n_classes - 2] = 0  # class n_classes - 2: targets but no predictions
        conf = rng.choice(levels, n_p) if ties else rng.random(n_p).astype(np.float32)
        tp = np.zeros((n_p, n_thr), bool)
        for c in np.unique(cls_p):
            preds = np.flatnonzero(cls_p == c)
            n_target = int((cls_t == c).sum())
            for j in range(n_thr):  # each threshold: a random subset, at most one prediction per target
                k = min(n_target, rng.binomial(len(preds), 0.8 - 0.07 * j))
                tp[rng.choice(preds, k, replace=False), j] = True
        t_img.append(np.full(nt, i)), t_cls.append(cls_t)
        p_img.append(np.full(n_p, i)), p_conf.append(conf), p_cls.append(cls_p), p_tp.append(tp)
    return Matches(
        np.concatenate(p_img),
        np.concatenate(p_conf),
        np.concatenate(p_cls),
        np.concatenate(p_tp),
        np.concatenate(t_img),
        np.concatenate(t_cls),
        n_images,
        iou_thresholds=np.linspace(0.5, 0.95, n_thr),
        ap_tail=tail,
    )


def assert_scores(s, ap, classes, tol):
    np.testing.assert_array_equal(s.classes, classes)
    np.testing.assert_allclose(s.ap, ap, rtol=0, atol=tol)
    assert abs(s.map50 - ap[:, 0].mean()) < tol and abs(s.map50_95 - ap.mean()) < tol


# ------------------------------------------------------------------------------------------- exact full-sample mAP
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_full_sample_equals_ultralytics(ultralytics_ap, seed, ties):
    ap_per_class, tail = ultralytics_ap
    m = random_matches(seed, ties=ties, tail=tail)
    ap, classes = ul_scores(ap_per_class, m)
    # the awkward cases are really there
    assert 5 not in classes and np.any(m.cls == 5) and 4 in classes and not np.any(m.cls == 4)
    assert_scores(map_scores(m), ap, classes, 1e-9)  # sums differ in order only; the envelope offsets cost ~1e-13


@pytest.mark.parametrize("half", [False, True])
def test_full_sample_equals_ultralytics_realistic(ultralytics_ap, half):
    ap_per_class, tail = ultralytics_ap
    for m in synthetic_validation(150, 8, skills=(0.0, 0.5), seed=3, false_positives_per_image=20, half=half,
                                  ap_tail=tail):  # fmt: skip
        ap, classes = ul_scores(ap_per_class, m)
        assert_scores(map_scores(m), ap, classes, 1e-9)


def test_reference_twin_is_ultralytics(ultralytics_ap):
    """The twin below stands for Ultralytics under the convention the installed version does not use."""
    ap_per_class, tail = ultralytics_ap
    for seed in range(3):
        m = random_matches(seed, ties=True)
        ap, classes = ul_scores(ap_per_class, m)
        ref, ref_classes = reference_ap(m.tp, m.conf, m.cls, m.target_cls, tail)
        np.testing.assert_array_equal(ref_classes, classes)
        np.testing.assert_allclose(ref, ap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tail", AP_TAILS)
def test_both_tails_equal_reference(tail):
    for seed in range(4):
        m = random_matches(seed, tail=tail, n_thr=3 if seed % 2 else 10)
        ap, classes = reference_ap(m.tp, m.conf, m.cls, m.target_cls, tail)
        assert_scores(map_scores(m), ap, classes, 1e-9)


def test_exact_grid_hits_and_full_recall():
    """Recall values that land exactly on grid points (4 targets: 0.25, 0.5, ...) and recall 1 at the end."""
    for tail in AP_TAILS:
        tp = np.array([[1], [0], [1], [1], [0], [1], [0]], bool)
        conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], np.float32)
        m = Matches(np.zeros(7), conf, np.zeros(7), tp, np.zeros(4), np.zeros(4), 1, [0.5], ap_tail=tail)
        ap, _ = reference_ap(m.tp, m.conf, m.cls, m.target_cls, tail)
        assert abs(map_scores(m).map50 - ap[0, 0]) < 1e-12


def test_no_targets_and_no_predictions():
    empty = Matches(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 10)), np.zeros(0), np.zeros(0), 3)
    s = map_scores(empty)
    assert s.map50 == s.map50_95 == 0.0 and len(s.classes) == 0  # as Ultralytics: no classes, mAP 0
    fp_only = Matches([0, 1], [0.5, 0.4], [0, 1], np.zeros((2, 10)), [2], [0], 3)
    s = map_scores(fp_only)
    assert s.map50 == 0.0 and s.classes.tolist() == [0]


def test_detect_ap_tail():
    assert detect_ap_tail(lambda r, p: (0.495, None, None)) == "zero"
    assert detect_ap_tail(lambda r, p: (0.75, None, None)) == "interpolate"
    with pytest.raises(ValueError, match="unknown compute_ap convention"):
        detect_ap_tail(lambda r, p: (0.6, None, None))


# ------------------------------------------------------------------------------------------------ weighted = copies
@pytest.mark.parametrize("tail", AP_TAILS)
def test_weights_equal_physical_copies_without_ties(tail):
    """No two predictions share a confidence, so each prediction's copies sit together in any sort: exact."""
    for seed in range(4):
        m = random_matches(seed, ties=False, tail=tail)
        rng = np.random.default_rng(seed)
        rows = [rng.integers(0, 4, m.n_images), resample_weights(m.n_images, 1, seed)[0]]
        for w in rows:
            big = expand(m, w)
            ap, classes = reference_ap(big.tp, big.conf, big.cls, big.target_cls, tail)
            assert_scores(map_scores(m, w), ap, classes, 1e-9)


def test_weights_equal_ultralytics_on_copies(ultralytics_ap):
    ap_per_class, tail = ultralytics_ap
    m = random_matches(7, ties=False, tail=tail)
    w = resample_weights(m.n_images, 1, 3)[0]
    ap, classes = ul_scores(ap_per_class, expand(m, w))
    assert_scores(map_scores(m, w), ap, classes, 1e-9)


@pytest.mark.parametrize("tail", AP_TAILS)
def test_weights_with_ties_lie_between_tie_orders(tail):
    """With ties, copies of different tied predictions may interleave in a physical sort, and AP depends on the
    order inside a tie. Moving a TP ahead of a tied FP never lowers the precision envelope, so every order gives
    an AP between "FPs first" and "TPs first" in each tie; the weighted AP (copies kept together) must too."""
    for seed in range(4):
        m = random_matches(seed, ties=True, tail=tail)
        w = resample_weights(m.n_images, 1, seed)[0]
        big = expand(m, w)
        T = big.tp.shape[1]
        tp_first = [np.lexsort((~big.tp[:, j], -big.conf)) for j in range(T)]
        fp_first = [np.lexsort((big.tp[:, j], -big.conf)) for j in range(T)]
        hi, _ = reference_ap(big.tp, big.conf, big.cls, big.target_cls, tail, order=tp_first)
        lo, _ = reference_ap(big.tp, big.conf, big.cls, big.target_cls, tail, order=fp_first)
        s = map_scores(m, w)
        assert np.all(lo - 1e-12 <= s.ap) and np.all(s.ap <= hi + 1e-12)
        assert np.any(hi - lo > 1e-3)  # the ties matter here, so the check has teeth


def test_resampled_scores_batch_independent():
    m = random_matches(2)
    w = resample_weights(m.n_images, 20, 5)
    a, b = resampled_scores(m, w, batch_size=1), resampled_scores(m, w, batch_size=7)
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.map50_95, b.map50_95)
    for i in (0, 13):  # rows agree with the one-weighting function
        s = map_scores(m, w[i])
        assert s.map50_95 == a.map50_95[i] and np.array_equal(s.ap, a.ap[i][~np.isnan(a.ap[i][:, 0])])


def test_weights_validation():
    m = random_matches(0)
    for bad, msg in [
        (np.ones(m.n_images + 1), "weights must be"),
        (np.full(m.n_images, 0.5), "whole multiplicities"),
        (-np.ones(m.n_images), ">= 0"),
        (np.ones((2, m.n_images)), "one weighting"),
    ]:
        with pytest.raises(ValueError, match=msg):
            map_scores(m, bad)


def test_resample_weights():
    w = resample_weights(50, 130, seed=4)
    assert w.shape == (130, 50) and np.all(w.sum(1) == 50)
    np.testing.assert_array_equal(resample_weights(50, 30, seed=4, start=100), w[100:])  # same rows in parts
    assert not np.array_equal(resample_weights(50, 5, seed=5), w[:5])


# --------------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_of_a_model_against_itself():
    m = random_matches(1)
    r = paired_bootstrap(m, m, n_resamples=40, seed=0)
    for c in (r.map50, r.map50_95):
        assert c.delta == 0 and c.interval.low == c.interval.high == 0
        assert c.base_interval.low <= c.base <= c.base_interval.high
    assert all(c.ap50.delta == 0 and c.ap50.interval.half_width == 0 for c in r.classes)
    assert [c.cls for c in r.classes] == map_scores(m).classes.tolist()
    assert r.deltas.shape == (40, 2) and r.to_dict()["map50_95"]["half_width"] == 0


def test_bootstrap_full_sample_values_and_seed_pairs():
    b0, v0 = synthetic_validation(80, 4, skills=(0.0, 0.3), seed=0, false_positives_per_image=8)
    b1, v1 = synthetic_validation(80, 4, skills=(0.1, 0.2), seed=0, false_positives_per_image=8)  # same images
    one = paired_bootstrap(b0, v0, n_resamples=30)
    assert one.map50_95.base == pytest.approx(map_scores(b0).map50_95, abs=1e-12)
    assert one.map50_95.delta == pytest.approx(map_scores(v0).map50_95 - map_scores(b0).map50_95, abs=1e-12)
    two = paired_bootstrap([b0, b1], [v0, v1], n_resamples=30)
    d = [map_scores(v).map50 - map_scores(b).map50 for b, v in ((b0, v0), (b1, v1))]
    assert two.n_pairs == 2 and two.map50.delta == pytest.approx(np.mean(d), abs=1e-12)


def test_bootstrap_deterministic_across_workers_and_batches():
    b, v = synthetic_validation(60, 3, skills=(0.0, 0.2), seed=2, false_positives_per_image=6)
    a = paired_bootstrap(b, v, n_resamples=70, seed=9, batch_size=16)
    c = paired_bootstrap(b, v, n_resamples=70, seed=9, batch_size=5, workers=2)
    np.testing.assert_array_equal(a.deltas, c.deltas)
    assert a.to_dict() == c.to_dict()


def test_bootstrap_checks_pairing():
    m = random_matches(0)
    other_images = random_matches(0, n_images=31)
    other_targets = random_matches(1)
    with pytest.raises(ValueError, match="not the same images"):
        paired_bootstrap(m, other_images, 10)
    with pytest.raises(ValueError, match="other targets"):
        paired_bootstrap(m, other_targets, 10)
    with pytest.raises(ValueError, match="different AP definitions"):
        paired_bootstrap(m, random_matches(0, tail="interpolate"), 10)
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_bootstrap([m, m], [m], 10)
    ids = [f"{i}.jpg" for i in range(m.n_images)]
    renamed = ids[:3] + ["x.jpg"] + ids[4:]
    a, b = (Matches(**{**_fields(m), "image_ids": i}) for i in (ids, renamed))
    with pytest.raises(ValueError, match="lists image 3 as 'x.jpg'"):
        paired_bootstrap(a, b, 10)


def _fields(m: Matches) -> dict:
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


def _sweep_coverage(n_sweeps, n_images, n_classes, n_resamples, thresholds, seed0):
    """Share of sweeps whose mAP50-95 interval covers 0 when both models come from one distribution.

    Each sweep draws new images, then two models of equal skill with independent detection noise on them (paired:
    they share the images and how hard each object is). The true difference is 0.
    """
    covered = 0
    for i in range(n_sweeps):
        b, v = synthetic_validation(n_images, n_classes, skills=(0.0, 0.0), seed=seed0 + i, boxes_per_image=4,
                                    false_positives_per_image=8, iou_thresholds=thresholds)  # fmt: skip
        r = paired_bootstrap(b, v, n_resamples, seed=i, batch_size=n_resamples)
        covered += r.map50_95.interval.side == 0
    return covered / n_sweeps


def test_coverage_same_distribution_fast():
    """200 small sweeps (one IoU threshold, 64 resamples: cheap). Measured over 1000 such sweeps: 93.8% +- 0.8%
    coverage at 95% nominal. The bounds catch real miscalibration: too narrow (e.g. resampling predictions instead
    of images, 200 sweeps below 90% has probability < 1% here) or too wide (e.g. unpaired resampling, ~100%)."""
    coverage = _sweep_coverage(200, 200, 2, 64, [0.5], seed0=1000)
    assert 0.90 <= coverage <= 0.985, coverage


@pytest.mark.slow
def test_coverage_same_distribution():
    """The full promise: 200 sweeps of 500 images, 5 classes, all ten IoU thresholds, 500 resamples (minutes)."""
    coverage = _sweep_coverage(200, 500, 5, 500, np.linspace(0.5, 0.95, 10), seed0=2000)
    assert coverage >= 0.93, coverage


@pytest.mark.parametrize("sign", [1, -1])
def test_planted_gain_and_loss_are_detected(sign):
    """A variant about 0.03 mAP50-95 better (or worse) on 500 images."""
    b, v = synthetic_validation(500, 20, skills=(0.0, 0.14 * sign), seed=4, false_positives_per_image=30)
    r = paired_bootstrap(b, v, n_resamples=200, seed=0)
    # planted: 0.030 on average over 4000-image sets; 500 images scatter it by about 0.006 (1 sd)
    assert 0.012 < sign * r.map50_95.delta < 0.048
    assert verdict(r.map50_95).label == ("better" if sign > 0 else "worse")


# ------------------------------------------------------------------------------------------- seeds and verdicts
@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.9995])
def test_t_quantile_closed_forms(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)
    a = 4 * p * (1 - p)  # df = 4 has a closed form too (not special-cased in the code)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    assert t_quantile(p, 4) == pytest.approx(2 * math.sqrt(q - 1), rel=1e-9)
    assert t_quantile(1 - p, 4) == pytest.approx(-2 * math.sqrt(q - 1), rel=1e-9)
    assert t_quantile(p, 1e7) == pytest.approx(statistics.NormalDist().inv_cdf(p), rel=1e-5)


@pytest.mark.parametrize(
    "p, df, table",  # printed two-sided tables, three decimals
    [(0.975, 3, 3.182), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 30, 2.042), (0.95, 7, 1.895), (0.995, 9, 3.250)],
)
def test_t_quantile_tables(p, df, table):
    assert abs(t_quantile(p, df) - table) < 5e-4


def test_t_quantile_inverts_the_density():
    """Integrate the t density (Simpson) up to the quantile: an independent check of the inverse."""
    for p, df in [(0.975, 3), (0.9, 6.5), (0.99, 17)]:
        t = t_quantile(p, df)
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        xs = np.linspace(0, t, 20001)
        f = c * (1 + xs**2 / df) ** (-(df + 1) / 2)
        area = (xs[1] - xs[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
        assert 0.5 + area == pytest.approx(p, abs=1e-10)
    with pytest.raises(ValueError, match="p must lie"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must be"):
        t_quantile(0.9, 0)


def test_seed_interval():
    s = seed_interval([0.01, 0.02, 0.03])
    assert s.mean == pytest.approx(0.02) and s.std == pytest.approx(0.01) and s.n == 3
    half = 4.302652729749464 * 0.01 / math.sqrt(3)  # t(0.975, 2)
    assert (s.low, s.high) == pytest.approx((0.02 - half, 0.02 + half))
    assert seed_interval([0.01, 0.02, 0.03], ci=0.9).half_width < s.half_width
    for bad in ([0.1], [0.1, float("nan")]):
        with pytest.raises(ValueError):
            seed_interval(bad)


def test_verdict_rules():
    up, down, zero = Interval(0.01, 0.03), Interval(-0.03, -0.01), Interval(-0.01, 0.02)
    s_up, s_down, s_zero = (SeedInterval(0, 0, 3, lo, hi) for lo, hi in [(0.005, 0.02), (-0.02, -0.001), (-0.1, 0.1)])
    one = verdict(up)
    assert one.label == "better" and one.note == "training noise not measured (1 seed)"
    assert str(one) == "better (training noise not measured (1 seed))"
    assert verdict(down, n_seeds=2).note == "training noise not measured (2 seeds)"
    assert verdict(down).label == "worse" and verdict(zero).label == "no detectable difference"
    assert verdict(Interval(0.0, 0.02)).label == "no detectable difference"  # touching zero is not excluding it
    assert verdict(up, s_up, 3) == type(one)("better", None, up, s_up)
    assert verdict(down, s_down, 3).label == "worse"
    assert verdict(up, s_zero, 3).label == "no detectable difference"
    assert verdict(up, s_zero, 3).note == "only the image interval excludes zero"
    assert verdict(zero, s_up, 3).note == "only the seed interval excludes zero"
    assert verdict(up, s_down, 3).note == "the intervals disagree"
    with pytest.raises(ValueError, match="seed interval is needed"):
        verdict(up, None, 3)
    with pytest.raises(ValueError, match="computed from 3 seeds but n_seeds=4"):
        verdict(up, s_up, 4)
    with pytest.raises(ValueError, match="n_seeds must be"):
        verdict(up, n_seeds=0)
    m = random_matches(0)
    cmp = paired_bootstrap(m, m, 10).map50  # a MetricComparison is accepted for its interval
    assert verdict(cmp).label == "no detectable difference" and verdict(cmp).to_dict()["seed_interval"] is None


# ------------------------------------------------------------------------------------------------- data and file
def test_save_load_round_trip(tmp_path):
    m = synthetic_validation(40, 5, skills=(0.0,), seed=1)[0]
    m = Matches(**{**_fields(m), "names": {0: "person", 3: "car"}, "image_ids": [f"im{i}.jpg" for i in range(40)]})
    path = m.save(tmp_path / "sub" / "run.matches.npz")
    back = Matches.load(path)
    for k, v in _fields(m).items():
        got = getattr(back, k)
        assert np.array_equal(got, v) if isinstance(v, np.ndarray) else got == v, k
        if isinstance(v, np.ndarray):
            assert got.dtype == v.dtype, k
    assert [p.name for p in path.parent.iterdir()] == ["run.matches.npz"]  # no temporary file left
    assert os.path.getsize(path) / m.n_predictions < 40  # 20 MB for 500k predictions is 42 B each
    odd = random_matches(0, n_thr=3, tail="interpolate")  # threshold bits that do not fill a byte
    back = Matches.load(odd.save(tmp_path / "odd.npz"))
    assert np.array_equal(back.tp, odd.tp) and back.ap_tail == "interpolate" and back.names is None


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    old = random_matches(0)
    old.save(path)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        random_matches(1).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["run.npz"]
    monkeypatch.undo()
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a matches file"):
        Matches.load(tmp_path / "other.npz")


def test_from_images_like_the_validator():
    """One array per image, as Ultralytics' DetectionValidator collects them (np.zeros(0) for no predictions)."""
    m = random_matches(3)
    per = lambda a, key: [a[key == i] for i in range(m.n_images)]  # noqa: E731
    conf = [c if len(c) else np.zeros(0) for c in per(m.conf, m.image)]
    built = Matches.from_images(per(m.tp, m.image), conf, per(m.cls, m.image), per(m.target_cls, m.target_image))
    for k in ("image", "conf", "cls", "tp", "target_image", "target_cls", "n_images"):
        assert np.array_equal(getattr(built, k), getattr(m, k)), k
    with pytest.raises(ValueError, match="one entry per image"):
        Matches.from_images([], [], [], [np.zeros(0)])


def test_matches_validation():
    ok = dict(image=[0, 1], conf=[0.9, 0.8], cls=[0, 0], tp=np.ones((2, 10), bool), target_image=[0, 1],
              target_cls=[0, 0], n_images=2)  # fmt: skip
    Matches(**ok)
    for change, msg in [
        ({"target_image": [0, 0]}, "aligned with the targets"),
        ({"image": [0, 0], "target_image": [0, 1]}, "each target matches at most one"),
        ({"image": [0, 2]}, r"image must lie in \[0, n_images=2\)"),
        ({"conf": [0.9]}, "differ in length"),
        ({"tp": np.ones((2, 3), bool)}, "3 threshold columns"),
        ({"cls": [0.5, 0]}, "must hold integers"),
        ({"n_images": 0}, "n_images must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Matches(**{**ok, **change})
    with pytest.raises(ValueError, match="ap_tail must be one of"):
        Matches(**ok, ap_tail="linear")
    with pytest.raises(ValueError, match="image_ids has 1 entries"):
        Matches(**ok, image_ids=["a"])


def test_stats_needs_numpy_only():
    """The statistics import nothing but the standard library, numpy and each other (the capture lives elsewhere)."""
    import ast
    from pathlib import Path

    import yolo_attn.stats as st

    files = sorted(Path(st.__file__).parent.glob("*.py"))
    assert {f.stem for f in files} >= {"__init__", "matches", "engine", "bootstrap", "intervals", "synthetic"}
    for f in files:
        tree = ast.parse(f.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        outside = {n for n in names if not n.startswith("yolo_attn.stats.")}
        assert {n.split(".")[0] for n in outside} - sys.stdlib_module_names - {"__future__"} <= {"numpy"}, f.name
        assert len(f.read_text().splitlines()) <= 600, f"{f.name}: split it (one concern per module)"
