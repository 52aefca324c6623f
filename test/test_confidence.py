"""The answer's probability of being right, its reliability measures and the far term."""
import math

import numpy as np
import pytest
import torch

from spatialoc_ros.core.confidence import (FEATURES, ProbabilityModel, answer_features,
                                           hypothesis_probabilities, inflate_covariance)
from spatialoc_ros.core.covariance import Calibration
from spatialoc_ros.evaluation.confidence_fit import (Answers, auroc, expected_calibration_error,
                                                     fit_far_variance, fit_logistic,
                                                     fit_probability, reliability)
from spatialoc_ros.evaluation.localization import TARGET_2SIGMA, mahalanobis_sq


def test_auroc_counts_ordered_pairs_and_halves_ties():
    right = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), right) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), right) == 0.0
    # pairs (right, wrong): (0.9, 0.5) win, (0.9, 0.1) win, (0.5, 0.5) tie, (0.5, 0.1) win
    assert auroc(torch.tensor([0.9, 0.5, 0.5, 0.1]), right) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc(torch.tensor([0.3, 0.4]), torch.tensor([True, True])))


def test_expected_calibration_error_by_hand():
    # bin [0.2, 0.3): p 0.25 twice, one right -> gap 0.25 over half the answers;
    # bin [0.9, 1.0]: p 0.95 twice, both right -> gap 0.05 over the other half
    p = torch.tensor([0.25, 0.25, 0.95, 0.95])
    right = torch.tensor([True, False, True, True])
    assert expected_calibration_error(p, right) == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    assert expected_calibration_error(torch.tensor([1.0, 0.0]),
                                      torch.tensor([True, False])) == pytest.approx(0.0)


def test_a_logistic_fit_recovers_a_known_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    logit = 2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5
    y = torch.rand(20_000, generator=g, dtype=torch.float64) < torch.sigmoid(logit)
    w, b, mean, std = fit_logistic(x, y, l2=0.0)
    # weights are per standardised feature: back to raw units
    raw = w / std
    # 20,000 samples: the standard error of each weight is about 0.03
    assert raw.tolist() == pytest.approx([2.0, -1.0], abs=0.15)
    assert b - float((w * mean / std).sum()) == pytest.approx(0.5, abs=0.1)


def test_a_fitted_model_is_calibrated_on_its_own_data():
    g = torch.Generator().manual_seed(1)
    n = 8000
    feats = torch.randn(n, len(FEATURES), generator=g, dtype=torch.float64)
    y = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(1.5 * feats[:, 1])
    answers = Answers(feats, y, torch.zeros(n, 2, dtype=torch.float64),
                      torch.eye(2, dtype=torch.float64).repeat(n, 1, 1),
                      torch.full((n,), 1000.0))
    model = fit_probability(answers)
    p = model.probability(feats)
    r = reliability(p, y)
    # a logistic model fitted by maximum likelihood with an intercept matches the mean exactly
    # (up to the ridge); binning noise of 8,000 answers in 10 bins stays under 0.03
    assert abs(r["mean_probability"] - r["right_share"]) < 0.01
    assert r["ece"] < 0.03 and r["auroc"] > 0.75
    back = ProbabilityModel.from_dict(model.to_dict())
    assert torch.allclose(back.probability(feats), p)


def test_the_far_term_reaches_the_two_sigma_target():
    g = torch.Generator().manual_seed(2)
    n = 4000
    # right answers: errors of the unit Gaussian the covariance says; wrong ones: 50 to 1000 m
    right = torch.rand(n, generator=g) < 0.7
    err = torch.randn(n, 2, generator=g, dtype=torch.float64)
    far = 50.0 + 950.0 * torch.rand(int((~right).sum()), 1, generator=g, dtype=torch.float64)
    err[~right] = far * torch.nn.functional.normalize(err[~right], dim=1)
    cov = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
    answers = Answers(torch.zeros(n, len(FEATURES), dtype=torch.float64), right, err, cov,
                      torch.full((n,), 1000.0))
    p = torch.where(right, 0.95, 0.05).double()
    v = fit_far_variance(answers, p)
    inflated = inflate_covariance(cov, p, v)
    covered = float((mahalanobis_sq(err, inflated) <= 4).double().mean())
    # the smallest V_far with coverage >= the target: one answer (1/n) above it at most
    assert TARGET_2SIGMA <= covered < TARGET_2SIGMA + 2 / n
    # a doubtful answer's ellipse grows 19 times more than a sure one's: (1 - 0.05) / (1 - 0.95)
    grow_doubtful = float(inflated[~right][0, 0, 0]) - 1.0
    grow_sure = float(inflated[right][0, 0, 0]) - 1.0
    assert grow_doubtful == pytest.approx(19 * grow_sure)


def test_inflate_keeps_sure_answers_and_widens_doubtful_ones():
    cov = torch.tensor([[[4.0, 1.0], [1.0, 9.0]]] * 2, dtype=torch.float64)
    out = inflate_covariance(cov, torch.tensor([1.0, 0.25]), 100.0)
    assert torch.equal(out[0], cov[0])
    assert torch.allclose(out[1], cov[1] + 75.0 * torch.eye(2, dtype=torch.float64))


def test_every_hypothesis_gets_a_share_that_sums_to_one():
    weights = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    probs = hypothesis_probabilities(torch.tensor([0.9, 0.3]), weights)
    assert torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))
    assert probs[0, 0] == pytest.approx(0.9) and probs[1, 0] == pytest.approx(0.3)
    assert probs[1, 2] == pytest.approx(0.7 * 0.75)


def test_answer_features_by_hand():
    scores = torch.tensor([[5.0, 4.0, 3.0]], dtype=torch.float64)
    positions = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [100.0, 0.0]]], dtype=torch.float64)
    scene = torch.tensor([[0, 0, 0]])
    f = answer_features(scores, positions, scene, torch.tensor([[4.0, 1.0, 1.0]]),
                        torch.tensor([[2, 1, 1]]), torch.tensor([0.5]), 1000)
    named = dict(zip(FEATURES, f[0].tolist()))
    assert named["score"] == 5.0
    assert named["margin"] == 2.0  # the 5 m neighbour agrees; the one 100 m away is elsewhere
    assert named["agreeing"] == pytest.approx(math.log(3.0))
    assert named["log_precision"] == pytest.approx(math.log(4.0))
    assert named["evidence"] == 0.5 and named["log_cells"] == pytest.approx(3.0)
    # another scene is elsewhere however close its coordinates
    f2 = answer_features(scores, positions, torch.tensor([[0, 1, 0]]), torch.ones(1, 3),
                         torch.ones(1, 3, dtype=torch.long), torch.ones(1), 10)
    assert dict(zip(FEATURES, f2[0].tolist()))["margin"] == 1.0


def test_the_calibration_file_round_trips_the_model():
    model = ProbabilityModel([0.1] * len(FEATURES), -0.2, [0.0] * len(FEATURES),
                             [1.0] * len(FEATURES), far_variance_m2=2500.0, fitted_on="val")
    cal = Calibration(2.0, 1.0, "val", probability=model.to_dict())
    back = Calibration.from_dict(cal.to_dict())
    assert ProbabilityModel.from_dict(back.probability).to_dict() == model.to_dict()
    assert Calibration.from_dict(Calibration(2.0, 1.0).to_dict()).probability is None
    bad = dict(model.to_dict(), features=["score"])
    with pytest.raises(ValueError, match="fit it again"):
        ProbabilityModel.from_dict(bad)


def test_auroc_matches_a_pairwise_count_on_random_data():
    rng = np.random.default_rng(3)
    p = torch.from_numpy(rng.integers(0, 20, 300) / 20.0)  # many ties
    right = torch.from_numpy(rng.random(300) < 0.5)
    pos, neg = p[right].numpy(), p[~right].numpy()
    pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    assert auroc(p, right) == pytest.approx(pairs / (len(pos) * len(neg)))


def right_and_far_answers(n: int, seed: int, scale: float):
    """(answers, features, right, errors): 80 % right answers with Gaussian errors of std 3 m
    per axis, the others 100-1,000 m away; a unit mixture covariance at calibration ``scale``
    and a margin feature that tells right from wrong."""
    g = torch.Generator().manual_seed(seed)
    right = torch.rand(n, generator=g) < 0.8
    err = 3.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    far = 100.0 + 900.0 * torch.rand(int((~right).sum()), 1, generator=g, dtype=torch.float64)
    err[~right] = far * torch.nn.functional.normalize(err[~right], dim=1)
    feats = torch.zeros(n, len(FEATURES), dtype=torch.float64)
    feats[:, 1] = right.double() * 4.0 - 2.0  # a margin that tells right from wrong
    answers = Answers(feats, right, err, torch.eye(2, dtype=torch.float64).repeat(n, 1, 1),
                      torch.full((n,), 1e3), iso=torch.ones(n, dtype=torch.float64), scale=scale)
    return answers, feats, right, err


def test_a_joint_scale_fit_hits_both_coverage_targets():
    """Right answers with errors 3 times wider than their unit fine variance, wrong ones far:
    the scale must grow to about 9 while V_far covers the wrong ones."""
    from spatialoc_ros.evaluation.confidence_fit import fit_scale_and_far_variance
    from spatialoc_ros.evaluation.localization import TARGET_1SIGMA

    answers, feats, right, err = right_and_far_answers(6000, seed=4, scale=1.0)
    n, eye = len(right), torch.eye(2, dtype=torch.float64)
    # cov_at: the isotropic part scales, nothing else
    assert torch.allclose(answers.cov_at(4.0), 4.0 * eye.repeat(n, 1, 1))
    model = fit_probability(answers)
    scale = fit_scale_and_far_variance(answers, model)
    assert 6.0 < scale < 13.0  # 9 in exact arithmetic, on a grid of 10**0.05 steps
    p = model.probability(feats)
    d2 = mahalanobis_sq(err, inflate_covariance(answers.cov_at(scale), p,
                                                model.far_variance_m2, model.far_power))
    assert model.far_power > 1.0  # sure right answers must keep their own ellipses
    assert abs(float((d2 <= 1).double().mean()) - TARGET_1SIGMA) < 0.03
    assert abs(float((d2 <= 4).double().mean()) - TARGET_2SIGMA) < 0.03


def test_answers_round_trip_through_their_cache_file(tmp_path):
    from spatialoc_ros.evaluation.confidence_fit import _load_answers, _save_answers

    n = 5
    answers = Answers(torch.randn(n, len(FEATURES), dtype=torch.float64),
                      torch.tensor([True, False, True, True, False]),
                      torch.randn(n, 2, dtype=torch.float64),
                      torch.eye(2, dtype=torch.float64).repeat(n, 1, 1),
                      torch.full((n,), 4139.0), torch.rand(n, dtype=torch.float64), 0.0125)
    _save_answers(tmp_path / "a.safetensors", answers)
    back = _load_answers(tmp_path / "a.safetensors")
    for name in ("features", "right", "err_xy", "cov", "cells", "iso"):
        assert torch.equal(getattr(back, name), getattr(answers, name))
    assert back.scale == 0.0125
    assert _load_answers(tmp_path / "missing.safetensors") is None


def test_the_coverage_frontier_says_whether_both_targets_can_be_met():
    """Reachable: Gaussian right answers, far wrong ones told apart by their margin. Not
    reachable: the same errors with a margin that says nothing, so no far term can pick the
    wrong answers out, and a 1-sigma share of 39.3 % caps the 2-sigma share."""
    from spatialoc_ros.evaluation.confidence_fit import coverage_frontier

    answers, feats, right, _ = right_and_far_answers(2000, seed=5, scale=9.0)
    n, g = len(right), torch.Generator().manual_seed(6)
    grid = dict(log_scales=[x / 10 for x in range(-10, 11)], powers=(1.0, 8.0),
                log_variances=[x / 2 for x in range(0, 14)])  # coarse: enough to tell
    told = coverage_frontier(answers, fit_probability(answers), **grid)
    assert told["best_2sigma_at_1sigma_target"] > 0.84
    assert told["best_1sigma_at_2sigma_target"] < 0.42
    blind = feats.clone()
    blind[:, 1] = torch.randn(n, generator=g, dtype=torch.float64)
    answers.features = blind
    untold = coverage_frontier(answers, fit_probability(answers), **grid)
    # about one p for all: every answer gets the same isotropic variance v, and the right
    # answers' share 0.8 (1 - e^(-v/18)) <= 0.403 inside 1 sigma caps v/18 at 0.70, so 2 sigma
    # holds at most 0.8 (1 - e^-2.8) = 0.75 (the wrong ones are 100 m off or more)
    assert untold["best_2sigma_at_1sigma_target"] < 0.82
    assert not untold["best_1sigma_at_2sigma_target"] < 0.45


def test_cautious_coverage_holds_the_2_sigma_share_where_both_cannot_be_met():
    """The blind margin of the frontier test: no covariance holds both shares. The balanced fit
    misses both a little and is over-confident for the wrong answers (2 sigma near 0.75, see
    the frontier test); the cautious fit holds 86.5 % inside 2 sigma at every gallery size and
    pays with wider ellipses for the right answers (more than 39.3 % inside 1 sigma)."""
    from spatialoc_ros.evaluation.confidence_fit import fit_scale_and_far_variance

    answers, feats, right, err = right_and_far_answers(1200, seed=8, scale=9.0)
    g = torch.Generator().manual_seed(9)
    answers.features = feats.clone()
    answers.features[:, 1] = torch.randn(len(right), generator=g, dtype=torch.float64)
    answers.cells = torch.where(torch.arange(len(right)) % 2 == 0, 1e3, 1e4)  # two sizes
    grid = dict(log_scales=[x / 10 for x in range(-10, 11)], powers=(1.0, 8.0),
                log_variances=[x / 4 for x in range(0, 28)])

    def shares(objective):
        model = fit_probability(answers)
        scale = fit_scale_and_far_variance(answers, model, objective=objective, **grid)
        cov = inflate_covariance(answers.cov_at(scale), model.probability(answers.features),
                                 model.far_variance_m2, model.far_power)
        d2 = mahalanobis_sq(err, cov)
        return [(float((d2[at] <= 1).double().mean()), float((d2[at] <= 4).double().mean()))
                for at in (answers.cells == 1e3, answers.cells == 1e4)]

    for inside1, inside2 in shares("cautious"):
        assert inside2 >= TARGET_2SIGMA  # held at each size, as the fit demands
        assert inside1 > 0.5  # the price: far above 39.3 %
    assert min(inside2 for _, inside2 in shares("balanced")) < 0.82
    with pytest.raises(ValueError, match="objective"):
        fit_scale_and_far_variance(answers, fit_probability(answers), objective="bold", **grid)
