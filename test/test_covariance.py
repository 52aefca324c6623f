"""The published covariance, the localization metrics and the calibration fit."""
import math

import numpy as np
import pytest
import torch

from spatialoc_ros.core.covariance import (Calibration, MAX_VARIANCE_M2, hypothesis_variance,
                                           mixture_covariance, mixture_weights)
from spatialoc_ros.evaluation.localization import (COVERAGE_TOLERANCE, TARGET_1SIGMA,
                                                   TARGET_2SIGMA, calibration_report,
                                                   candidate_errors, fit_calibration, gaussian_nll,
                                                   localization_recall, mahalanobis_sq,
                                                   published_covariance)


def test_variance_follows_precision_and_cell_size():
    lam = torch.tensor([[0.5, 2.0, 1e-3]], dtype=torch.float64)
    var = hypothesis_variance(lam, torch.full((1, 3), 30.0, dtype=torch.float64), scale=0.01)
    torch.testing.assert_close(var, torch.tensor([[18.0, 4.5, min(9000.0, MAX_VARIANCE_M2)]],
                                                 dtype=torch.float64))


def test_mixture_covariance_is_symmetric_positive_definite_and_widens_with_doubt():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(50, 10, 2, generator=g, dtype=torch.float64) * 40
    var = torch.rand(50, 10, generator=g, dtype=torch.float64) * 10 + 0.1
    scores = torch.randn(50, 10, generator=g, dtype=torch.float64)
    covs = []
    for beta in (64.0, 1.0, 0.0):
        cov = mixture_covariance(pos, var, mixture_weights(scores, beta))
        assert torch.equal(cov, cov.transpose(1, 2)) and torch.isfinite(cov).all()
        assert (torch.linalg.eigvalsh(cov) > 0).all()
        covs.append(torch.linalg.det(cov).median())
    assert covs[0] < covs[1] < covs[2]  # flatter weights over spread-out cells: a larger ellipse
    # one certain hypothesis leaves its own isotropic variance
    w = torch.zeros(50, 10, dtype=torch.float64)
    w[:, 0] = 1
    torch.testing.assert_close(mixture_covariance(pos, var, w),
                               var[:, 0, None, None] * torch.eye(2).double())


def test_mixture_covariance_by_hand():
    pos = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]], dtype=torch.float64)
    var = torch.tensor([[4.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    cov = mixture_covariance(pos, var, w)[0]
    torch.testing.assert_close(cov, torch.tensor([[0.75 * 4 + 0.25 * 1 + 0.25 * 100, 0.0],
                                                  [0.0, 0.75 * 4 + 0.25 * 1]],
                                                 dtype=torch.float64))


def test_localization_recall_counts_other_scenes_as_misses():
    pos = torch.tensor([[[3.0, 0.0], [0.5, 0.0]], [[20.0, 0.0], [9.0, 0.0]]], dtype=torch.float64)
    same = torch.tensor([[True, False], [True, True]])
    err = candidate_errors(pos, same, torch.zeros(2, 2, dtype=torch.float64))
    assert math.isinf(err[0, 1])
    rec = localization_recall(err, ks=(1, 2), thresholds=(5, 10))
    assert rec == {"1": {"5": 0.5, "10": 0.5}, "2": {"5": 0.5, "10": 1.0}}


def test_mahalanobis_and_nll_of_a_known_gaussian():
    cov = torch.tensor([[[4.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    e = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    assert float(mahalanobis_sq(e, cov)) == 2.0
    want = 0.5 * 2.0 + math.log(2 * math.pi) + 0.5 * math.log(4.0)
    assert abs(float(gaussian_nll(e, cov)) - want) < 1e-12


def test_an_answer_in_another_scene_lies_outside_every_ellipse():
    """Its error has no meaning in the query's frame (frames of different scenes overlap): it
    counts outside, however wide the ellipse, and stays out of the mean NLL."""
    from spatialoc_ros.evaluation.localization import elsewhere_errors

    cov = torch.tensor([[[4.0, 1.0], [1.0, 9.0]]] * 3, dtype=torch.float64) * 1e6  # huge
    truth_minus_answer = torch.tensor([[1.0, 2.0], [0.5, -0.5], [3.0, 0.0]], dtype=torch.float64)
    same = torch.tensor([True, False, True])
    err = elsewhere_errors(truth_minus_answer, same)
    assert torch.isinf(err[1]).all() and torch.equal(err[[0, 2]], truth_minus_answer[[0, 2]])
    d2 = mahalanobis_sq(err, cov)
    assert math.isinf(d2[1]) and bool(torch.isfinite(d2[[0, 2]]).all())
    rep = calibration_report(err, cov)
    assert rep["within_1sigma"] == pytest.approx(2 / 3) and rep["within_2sigma"] == \
        pytest.approx(2 / 3)
    assert rep["elsewhere"] == pytest.approx(1 / 3)
    assert rep["nll"] == pytest.approx(float(gaussian_nll(err[[0, 2]], cov[[0, 2]]).mean()))
    assert elsewhere_errors(truth_minus_answer, None) is truth_minus_answer


def test_calibrated_gaussian_errors_give_the_textbook_coverage():
    g = torch.Generator().manual_seed(1)
    n = 20000
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 5 + 1
    err = torch.randn(n, 2, generator=g, dtype=torch.float64) * sigma[:, None]
    rep = calibration_report(err, sigma[:, None, None] ** 2 * torch.eye(2).double())
    assert (abs(rep["within_1sigma"] - TARGET_1SIGMA) < 0.015
            and abs(rep["within_2sigma"] - TARGET_2SIGMA) < 0.015)


def test_fit_recovers_the_scale_of_overconfident_precisions():
    """Errors drawn with variance 9 x what 1/lambda claims.

    The fit finds scale near 9 / 900 (cells of 30 m).
    """
    g = torch.Generator().manual_seed(2)
    b, k = 4000, 3
    lam = torch.rand(b, k, generator=g, dtype=torch.float64) * 4 + 0.5
    size = torch.full((b, k), 30.0, dtype=torch.float64)
    true_var = 9.0 * 900.0 / lam[:, 0] * 1e-2
    truth = torch.zeros(b, 2, dtype=torch.float64)
    pos = torch.zeros(b, k, 2, dtype=torch.float64)
    pos[:, 0] = torch.randn(b, 2, generator=g, dtype=torch.float64) * true_var.sqrt()[:, None]
    pos[:, 1:] = pos[:, :1] + 500.0  # far-away alternatives with very low scores
    scores = torch.tensor([10.0, -10.0, -10.0], dtype=torch.float64).expand(b, k)
    cal, rep = fit_calibration(pos, scores, lam, size, truth, fitted_on="synthetic")
    assert abs(math.log10(cal.scale) - math.log10(0.09)) < 0.15
    assert (abs(rep["within_1sigma"] - TARGET_1SIGMA) < 0.03
            and abs(rep["within_2sigma"] - TARGET_2SIGMA) < 0.03)
    back = Calibration.from_dict(cal.to_dict())
    assert back == cal
    cov = published_covariance(pos, scores, lam, size, back)
    assert (torch.linalg.eigvalsh(cov) > 0).all()
    assert np.isfinite(cov.numpy()).all()


def test_fit_prefers_the_likelihood_when_coverage_cannot_tell_betas_apart():
    """One query in eight picked a wrong cell 150 m away.

    Its runner-up, at the truth, scores a little lower.

    A sharp mixture (large beta) leaves those errors far outside small ellipses yet
    matches the coverage targets at least as well as a softer one; within the
    coverage tolerance the fit must take the softer mixture, whose likelihood is
    far better.
    """
    g = torch.Generator().manual_seed(3)
    b, k = 4000, 2
    lam = torch.full((b, k), 2.0, dtype=torch.float64)
    size = torch.full((b, k), 30.0, dtype=torch.float64)
    truth = torch.zeros(b, 2, dtype=torch.float64)
    pos = torch.zeros(b, k, 2, dtype=torch.float64)
    # right answers: uniform in a 6 m disc
    r = 6.0 * torch.rand(b, generator=g, dtype=torch.float64).sqrt()
    a = 2 * math.pi * torch.rand(b, generator=g, dtype=torch.float64)
    pos[:, 0, 0], pos[:, 0, 1] = r * torch.cos(a), r * torch.sin(a)
    pos[:, 1] = 400.0
    scores = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(b, 1)
    wrong = torch.arange(b) % 8 == 0
    pos[wrong, 1] = pos[wrong, 0]
    pos[wrong, 0] = 150.0
    scores[wrong, 1] = 1.0 - 1.5 * torch.rand(int(wrong.sum()), generator=g, dtype=torch.float64)
    cal, rep = fit_calibration(pos, scores, lam, size, truth)
    assert abs(rep["within_1sigma"] - TARGET_1SIGMA) <= COVERAGE_TOLERANCE
    assert abs(rep["within_2sigma"] - TARGET_2SIGMA) <= COVERAGE_TOLERANCE
    sharp = min(calibration_report(truth - pos[:, 0], published_covariance(
        pos, scores, lam, size, Calibration(10 ** ls, 64.0)))["nll"]
        for ls in np.arange(-4, 1, 0.1))
    assert cal.beta < 64.0
    assert rep["nll"] < sharp - 1.0
