"""COCO size strata and equivalence margins in yolo_attn.stats (issue 21), on matches with known truth.

Oracle: ``reference_stratum_ap`` below, the slow obvious twin of the stratum rules: per IoU threshold, physically
drop the targets outside the area range, the true positives whose matched target is outside it and the unmatched
predictions whose own box is outside it, then compute Ultralytics' AP on what is left (the same loop as
tests/test_stats.py's ``reference_ap``, which is checked there against Ultralytics' own ``ap_per_class``).
"""

from __future__ import annotations

import numpy as np
import pytest

from yolo_attn.stats import (
    AP_TAILS,
    AREA_RANGES,
    STRATA,
    Interval,
    Matches,
    SeedInterval,
    map_scores,
    paired_bootstrap,
    resample_weights,
    resampled_scores,
    synthetic_validation,
    verdict,
)

GRID = np.linspace(0, 1, 101)
BOUNDS = [1.0, 1023.99, 1024.0, 1024.01, 9215.99, 9216.0, 9216.01, 50_000.0]  # at and around 32² and 96²


# ------------------------------------------------------------------------------------------------------- oracles
def _ap(t: np.ndarray, n_targets: int, tail: str) -> float:
    """Ultralytics' AP of one class's list of TP flags (in confidence order) against ``n_targets`` targets."""
    if not len(t):
        return 0.0
    tpc, fpc = np.cumsum(t), np.cumsum(~t)
    recall, precision = tpc / (n_targets + 1e-16), tpc / (tpc + fpc)
    if tail == "zero":
        mrec = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
        mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    else:
        mrec, mpre = np.concatenate(([0.0], recall, [1.0])), np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(np.trapezoid(np.interp(GRID, mrec, mpre), GRID))


def reference_stratum_ap(m: Matches, stratum: str) -> tuple[np.ndarray, np.ndarray]:
    """(ap (C, T), classes) of the classes with targets in the stratum, by physically filtering per threshold."""
    low, high = AREA_RANGES[stratum]
    t_in = (m.target_area >= low) & (m.target_area < high)
    own_in = (m.pred_area >= low) & (m.pred_area < high)
    classes = np.unique(m.target_cls[t_in])
    order = np.argsort(-m.conf)  # Ultralytics sorts the whole list; filtering keeps that order
    ap = np.zeros((len(classes), m.tp.shape[1]))
    for j in range(m.tp.shape[1]):
        hit = m.tp[:, j] & t_in[np.maximum(m.matched_target[:, j], 0)]
        counted = hit | (~m.tp[:, j] & own_in)
        for ci, c in enumerate(classes):
            keep = order[(m.cls[order] == c) & counted[order]]
            ap[ci, j] = _ap(hit[keep], int(((m.target_cls == c) & t_in).sum()), m.ap_tail)
    return ap, classes


def area_matches(seed: int, n_images: int = 25, ties: bool = True, tail: str = "zero", n_thr: int = 10) -> Matches:
    """Small sets with areas at and around the bounds: every object may be detected (right or wrong class, TP at
    the thresholds its IoU passes, its box a little larger or smaller than the target's, sometimes across a bound)
    and get a duplicate; background FPs of all sizes; ties in confidence when ``ties``."""
    rng = np.random.default_rng(seed)
    thr = np.linspace(0.5, 0.95, n_thr)
    levels = np.array([0.9, 0.7, 0.5, 0.5, 0.3, 0.1], np.float32)
    t_img, t_cls, t_area = [], [], []
    p_img, p_conf, p_cls, p_tp, p_area, p_match = [], [], [], [], [], []
    for i in range(n_images):
        nt = 0 if i % 6 == 2 else rng.poisson(3)
        first = len(t_cls)
        for g in range(nt):
            c = int(rng.integers(0, 4))
            area = float(rng.choice(BOUNDS)) if rng.random() < 0.5 else float(np.exp(rng.uniform(2, 11)))
            t_img.append(i), t_cls.append(c), t_area.append(area)
            for duplicate in (False, True):
                if rng.random() > (0.3 if duplicate else 0.75):
                    continue
                cls = c if rng.random() < 0.9 else int(rng.integers(0, 5))
                iou = rng.uniform(0.3, 1.0)
                tp = (iou >= thr) & (cls == c) & (not duplicate)
                p_img.append(i), p_cls.append(cls), p_tp.append(tp)
                p_match.append(np.where(tp, first + g, -1))
                p_area.append(area * float(rng.choice([1.0, 0.9, 1.1, 0.5, 2.0])))
                p_conf.append(rng.choice(levels) if ties else rng.random())
        for _ in range(rng.poisson(3)):
            p_img.append(i), p_cls.append(int(rng.integers(0, 5))), p_tp.append(np.zeros(n_thr, bool))
            p_match.append(np.full(n_thr, -1)), p_area.append(float(rng.choice(BOUNDS)))
            p_conf.append(rng.choice(levels) if ties else rng.random())
    P = len(p_img)
    return Matches(
        np.array(p_img), np.array(p_conf, np.float32), np.array(p_cls), np.array(p_tp).reshape(P, n_thr),
        np.array(t_img), np.array(t_cls), n_images, thr, ap_tail=tail, target_area=np.array(t_area),
        pred_area=np.array(p_area), matched_target=np.array(p_match).reshape(P, n_thr),
    )  # fmt: skip


def expand(m: Matches, weights) -> Matches:
    """The matches with image i repeated weights[i] times (a physical resample), areas and matches carried along."""
    p_idx, p_img, t_idx, t_img = [], [], [], []
    new = 0
    for i in range(m.n_images):
        preds, targets = np.flatnonzero(m.image == i), np.flatnonzero(m.target_image == i)
        for _ in range(int(weights[i])):
            p_idx += preds.tolist()
            p_img += [new] * len(preds)  # noqa: E702
            t_idx += targets.tolist()
            t_img += [new] * len(targets)  # noqa: E702
            new += 1
    p, t = np.array(p_idx, int), np.array(t_idx, int)
    # target k of the original, copy number n -> its position in the new target list
    where = {}
    for pos, (k, im) in enumerate(zip(t, t_img)):
        where[(int(k), im)] = pos
    matched = np.array([[where[(int(k), im)] if k >= 0 else -1 for k in row] for row, im in
                        zip(m.matched_target[p], p_img)]).reshape(len(p), -1)  # fmt: skip
    return Matches(
        np.array(p_img, int), m.conf[p], m.cls[p], m.tp[p], np.array(t_img, int), m.target_cls[t], max(new, 1),
        m.iou_thresholds, ap_tail=m.ap_tail, target_area=m.target_area[t], pred_area=m.pred_area[p],
        matched_target=matched,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the rules
def _one_box_each(areas, pred_areas=None) -> Matches:
    """Image i holds one target of class i with area ``areas[i]`` and one perfect prediction of it."""
    n = len(areas)
    return Matches(
        np.arange(n), np.full(n, 0.9), np.arange(n), np.ones((n, 1), bool), np.arange(n), np.arange(n), n, [0.5],
        target_area=areas, pred_area=areas if pred_areas is None else pred_areas, matched_target=np.arange(n)[:, None],
    )  # fmt: skip


def test_strata_assign_boxes_at_the_bounds():
    """COCO's bounds as half-open ranges: 32² and 96² exactly are medium and large; a hair below is the stratum
    below. Each box is its own class, so the classes a stratum scores are the boxes it holds."""
    m = _one_box_each(BOUNDS)
    got = {s: map_scores(m, stratum=s).classes.tolist() for s in STRATA}
    assert got == {"small": [0, 1], "medium": [2, 3, 4], "large": [5, 6, 7]}
    assert all(map_scores(m, stratum=s).map50 == pytest.approx(1.0, abs=0.006) for s in STRATA)
    # what decides is the target's area: a TP whose own box lies in another stratum still counts where its target is
    swapped = _one_box_each(BOUNDS, pred_areas=BOUNDS[::-1])
    assert {s: map_scores(swapped, stratum=s).classes.tolist() for s in STRATA} == got
    assert map_scores(swapped, stratum="small").map50 == map_scores(m, stratum="small").map50


def test_ignored_predictions_follow_cocoeval():
    """One small target (area 500, class 0) found by a TP at confidence 0.5; a higher-confidence FP of class 0 is
    ignored in the small stratum when its own box is medium, and counts against precision when its box is small.
    The same TP, matched to a large target instead, is ignored in the small stratum (it is no FP there)."""

    def two(fp_area, target_area=500.0):  # FP (conf 0.9), TP (conf 0.5); second target (large) only for matching
        return Matches([0, 0], [0.9, 0.5], [0, 0], [[False], [True]], [0, 0], [0, 0], 1, [0.5],
                       target_area=[500.0, 20_000.0], pred_area=[fp_area, 500.0],
                       matched_target=[[-1], [0 if target_area == 500.0 else 1]])  # fmt: skip

    ignored, counted = map_scores(two(5_000.0), stratum="small"), map_scores(two(400.0), stratum="small")
    assert ignored.map50 > 0.99 and 0.49 < counted.map50 < 0.51  # precision 1, or 1/2 at recall 1
    to_large = map_scores(two(400.0, target_area=20_000.0), stratum="small")  # small target unfound, FP counted
    assert to_large.map50 == 0.0 and to_large.classes.tolist() == [0]
    assert map_scores(two(400.0, target_area=20_000.0), stratum="large").map50 > 0.99  # FP of 400 px²: ignored


@pytest.mark.parametrize("tail", AP_TAILS)
@pytest.mark.parametrize("ties", [True, False])
def test_strata_equal_the_brute_force_twin(tail, ties):
    for seed in range(4):
        m = area_matches(seed, ties=ties, tail=tail, n_thr=3 if seed % 2 else 10)
        for s in ("all", *STRATA):
            ap, classes = reference_stratum_ap(m, s)
            got = map_scores(m, stratum=s)
            np.testing.assert_array_equal(got.classes, classes)
            np.testing.assert_allclose(got.ap, ap, rtol=0, atol=1e-9, err_msg=f"{s}, seed {seed}")
            if len(classes):
                assert got.map50_95 == pytest.approx(ap.mean(), abs=1e-9)


def test_weighted_strata_equal_physical_copies():
    """Integer weights (a resample) equal the physically repeated images, stratum by stratum (no ties)."""
    m = area_matches(7, n_images=20, ties=False, n_thr=4)
    w = resample_weights(m.n_images, 3, seed=1)
    for s in STRATA:
        r = resampled_scores(m, w, stratum=s, batch_size=2)
        for b in range(3):
            ap, classes = reference_stratum_ap(expand(m, w[b]), s)
            present = ~np.isnan(r.ap[b, :, 0])
            np.testing.assert_array_equal(r.classes[present], classes)
            np.testing.assert_allclose(r.ap[b][present], ap, rtol=0, atol=1e-9)


def test_all_stratum_is_the_overall_score_exactly():
    """With weights of one, "all" through the stratum path gives today's overall numbers bit for bit."""
    for m in (area_matches(3), *synthetic_validation(60, 5, skills=(0.0, 0.3), seed=2, false_positives_per_image=8)):
        a, b = map_scores(m, stratum="all"), map_scores(m)
        assert a.map50 == b.map50 and a.map50_95 == b.map50_95 and np.array_equal(a.ap, b.ap)


# ------------------------------------------------------------------------------------------------ bootstrap, verdicts
def test_planted_gain_on_large_objects_only():
    """Equal models but for extra skill on large objects: large is "better", small shows no detectable difference."""
    b, v = synthetic_validation(
        300, 8, skills=(0.0, 0.0), size_skills=((0, 0, 0), (0, 0, 0.6)), seed=0, false_positives_per_image=10
    )
    r = paired_bootstrap(b, v, n_resamples=150, seed=0)
    by = {s.name: s for s in r.strata}
    assert list(by) == list(STRATA) and sum(s.n_targets for s in r.strata) == len(b.target_cls)
    assert verdict(by["large"].map50_95).label == "better" and by["large"].map50_95.delta > 0.05
    assert verdict(by["small"].map50_95).label == "no detectable difference"
    for s in STRATA:  # full-sample values are the stratum scores of each model
        assert by[s].map50_95.base == pytest.approx(map_scores(b, stratum=s).map50_95, abs=1e-12)
        assert by[s].map50_95.variant == pytest.approx(map_scores(v, stratum=s).map50_95, abs=1e-12)
    assert r.to_dict()["strata"][2]["name"] == "large"
    plain = paired_bootstrap(b, v, n_resamples=150, seed=0, strata=False)  # strata change nothing else
    assert plain.strata == () and np.array_equal(plain.deltas, r.deltas) and plain.map50_95 == r.map50_95


def test_equivalence_of_one_model_and_not_of_a_planted_change():
    """One model validated twice (full and half-precision confidences: numerical noise only) is "equivalent within
    ±0.005"; a planted change of about ±0.03 is not (a gain is "not worse than −0.005", a loss neither)."""
    full, up = synthetic_validation(500, 20, skills=(0.0, 0.14), seed=4, false_positives_per_image=30)
    half, down = synthetic_validation(500, 20, skills=(0.0, -0.14), seed=4, false_positives_per_image=30, half=True)
    changed = (up, down)
    same = verdict(paired_bootstrap(full, half, n_resamples=100, strata=False).map50_95, margin=0.005)
    assert same.equivalence == "equivalent" and same.equivalence_text == "equivalent within ±0.005"
    gain, loss = (verdict(paired_bootstrap(full, c, 100, strata=False).map50_95, margin=0.005) for c in changed)
    assert gain.label == "better" and gain.equivalence == "not worse"
    assert gain.equivalence_text == "not worse than \u22120.005"
    assert loss.equivalence is None and loss.equivalence_text is None and loss.image_interval.high < 0.005


def test_equivalence_rules():
    inside, above, wide = Interval(-0.004, 0.003), Interval(-0.004, 0.03), Interval(-0.02, 0.01)
    s_in, s_out = SeedInterval(0, 0.001, 3, -0.002, 0.002), SeedInterval(0, 0.01, 3, -0.01, 0.01)
    assert verdict(inside, margin=0.005).equivalence == "equivalent"
    assert verdict(above, margin=0.005).equivalence == "not worse"
    assert verdict(wide, margin=0.005).equivalence is None
    assert verdict(inside).equivalence is None and verdict(inside).margin is None  # off by default
    assert verdict(inside, s_in, 3, margin=0.005).equivalence == "equivalent"
    assert verdict(inside, s_out, 3, margin=0.005).equivalence is None  # the seed interval must fit too
    assert verdict(Interval(-0.005, 0.005), margin=0.005).equivalence == "equivalent"  # the margin is inclusive
    assert verdict(above, margin=0.005).label == verdict(above).label  # the label does not depend on the margin
    d = verdict(inside, margin=0.005).to_dict()
    assert d["margin"] == 0.005 and d["equivalence"] == "equivalent"
    for bad in (0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="margin must be a positive number"):
            verdict(inside, margin=bad)


# ---------------------------------------------------------------------------------------------------- the file
def _fields(m: Matches) -> dict:
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


def test_format_2_round_trip(tmp_path):
    m = area_matches(1)
    back = Matches.load(m.save(tmp_path / "m.npz"))
    for k, v in _fields(m).items():
        got = getattr(back, k)
        assert np.array_equal(got, v) if isinstance(v, np.ndarray) else got == v, k
        if isinstance(v, np.ndarray):
            assert got.dtype == v.dtype, k
    with np.load(tmp_path / "m.npz") as z:
        assert str(z["format"]) == "yolo_attn.matches/2" and len(z["matched_target"]) == m.tp.sum()


def test_format_1_files_load_without_strata(tmp_path):
    """A file written before areas existed: loads, scores, bootstraps without strata, and says why there are none."""
    m = synthetic_validation(30, 3, skills=(0.0,), seed=0)[0]
    old = Matches(**{**_fields(m), "target_area": None, "pred_area": None, "matched_target": None})
    path = old.save(tmp_path / "v1.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    assert not {"target_area", "pred_area", "matched_target"} & set(arrays)
    np.savez_compressed(path, **{**arrays, "format": np.array("yolo_attn.matches/1")})  # as 0.1 wrote it
    back = Matches.load(path)
    assert not back.has_areas and back.target_area is None
    assert map_scores(back).map50_95 == map_scores(m).map50_95
    with pytest.raises(ValueError, match="no areas in these matches"):
        map_scores(back, stratum="small")
    assert paired_bootstrap(back, back, 10).strata == ()
    assert paired_bootstrap(back, m, 10).strata == ()  # one side without areas: no strata
    np.savez_compressed(path, **{**arrays, "format": np.array("yolo_attn.matches/9")})
    with pytest.raises(ValueError, match="not a matches file of a format this version reads"):
        Matches.load(path)


def test_area_fields_are_checked():
    ok = dict(image=[0, 0], conf=[0.9, 0.8], cls=[0, 0], tp=[[True], [False]], target_image=[0], target_cls=[0],
              n_images=1, iou_thresholds=[0.5], target_area=[100.0], pred_area=[90.0, 5.0],
              matched_target=[[0], [-1]])  # fmt: skip
    assert Matches(**ok).has_areas
    for change, msg in [
        ({"pred_area": None}, "come together"),
        ({"target_area": [100.0, 2.0]}, "target_area has 2 entries"),
        ({"pred_area": [1.0, -1.0]}, "finite and >= 0"),
        ({"matched_target": [[0], [0]]}, "exactly where a prediction is a true positive"),
        ({"matched_target": [[-1], [-1]]}, "exactly where a prediction is a true positive"),
        ({"matched_target": [[0, 0], [-1, -1]]}, "shape of tp"),
        ({"cls": [1, 0], "target_cls": [1]}, None),  # consistent: fine
    ]:
        if msg is None:
            Matches(**{**ok, **change})
            continue
        with pytest.raises(ValueError, match=msg):
            Matches(**{**ok, **change})
    two = {**ok, "target_image": [0, 0], "target_cls": [0, 1], "target_area": [100.0, 100.0]}
    with pytest.raises(ValueError, match="a target of its image and class"):
        Matches(**{**two, "matched_target": [[1], [-1]]})
    twice = {**two, "target_cls": [0, 0], "tp": [[True], [True]], "matched_target": [[0], [0]]}
    with pytest.raises(ValueError, match="matched by two predictions"):
        Matches(**twice)


def test_from_images_takes_local_target_indices():
    """Per image, the matched target is an index into that image's targets; the matches hold global indices."""
    m = Matches.from_images(
        [np.zeros((0, 1), bool), [[True], [False]]], [[], [0.9, 0.1]], [[], [1, 1]], [[0], [2, 1]],
        iou_thresholds=[0.5], target_area=[[10.0], [20.0, 2000.0]], pred_area=[[], [2100.0, 3.0]],
        matched_target=[np.zeros((0, 1)), [[1], [-1]]],
    )  # fmt: skip
    assert m.matched_target[:, 0].tolist() == [2, -1] and m.target_cls[2] == 1 and m.target_area[2] == 2000.0
    assert map_scores(m, stratum="medium").classes.tolist() == [1] and map_scores(m, stratum="small").map50 == 0.0
