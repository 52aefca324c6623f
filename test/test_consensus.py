"""Consensus of overlapping cells.

Order, fused position, scenes kept apart, the fit, and its storage.
"""
import torch

from spatialoc_ros.core.consensus import consensus_order, fit_consensus, mean_shift
from spatialoc_ros.core.covariance import Calibration, mixture_covariance


def cluster_and_decoy():
    """One query: a lone top-scored cell far away, then three cells agreeing near (100, 100)."""
    pos = torch.tensor([[[500.0, 500.0], [98.0, 100.0], [102.0, 100.0], [100.0, 103.0],
                         [300.0, 0.0]]], dtype=torch.float64)
    scores = torch.tensor([[3.0, 2.8, 2.7, 2.6, 1.0]], dtype=torch.float64)
    return pos, scores


def test_agreeing_cells_outrank_a_lone_best_score_and_their_mean_is_the_answer():
    pos, scores = cluster_and_decoy()
    order, fused, agreeing = consensus_order(pos, scores, beta=0.5, bandwidth=10.0)
    assert sorted(order[0].tolist()) == list(range(5))
    assert agreeing[0].tolist() == [3, 1, 1, 3, 3]
    assert order[0, 0] == 1  # the best-scored cell of the agreeing group leads
    assert torch.linalg.norm(fused[0, 0] - torch.tensor([100.0, 101.0], dtype=torch.float64)) < 1.0
    # the lone cell next, at its own place
    assert order[0, 1] == 0 and torch.equal(fused[0, 1], pos[0, 0])
    # the group's other members come after every group's leader, each at its own position
    assert order[0, 2:].tolist() == [4, 2, 3]
    assert torch.equal(fused[0, 3], pos[0, 2]) and torch.equal(fused[0, 4], pos[0, 3])


def test_no_bandwidth_is_the_retrieval_order_and_a_sharp_beta_trusts_the_score():
    pos, scores = cluster_and_decoy()
    order, fused, agreeing = consensus_order(pos, scores, beta=1.0, bandwidth=0.0)
    assert (order[0].tolist() == [0, 1, 2, 3, 4] and torch.equal(fused, pos)
            and (agreeing == 1).all())
    order, _, _ = consensus_order(pos, scores, beta=50.0, bandwidth=10.0)
    assert order[0, 0] == 0


def test_cells_of_different_scenes_never_agree():
    pos, scores = cluster_and_decoy()
    scene = torch.tensor([[0, 0, 1, 2, 0]])  # same coordinates, but three different world frames
    order, fused, agreeing = consensus_order(pos, scores, beta=0.5, bandwidth=10.0, scene=scene)
    assert order[0].tolist() == [0, 1, 2, 3, 4] and (agreeing == 1).all()
    torch.testing.assert_close(fused, pos, rtol=0.0, atol=1e-6)


def test_mean_shift_stops_at_the_weighted_mode():
    pos = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [50.0, 0.0]]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    modes, support = mean_shift(pos, w, 5.0, torch.zeros(1, 3, dtype=torch.long))
    assert (abs(float(modes[0, 0, 0]) - float(modes[0, 1, 0])) < 1e-2
            and 0.0 < float(modes[0, 0, 0]) < 0.5)
    assert abs(float(modes[0, 2, 0]) - 50.0) < 1e-6
    assert support[0, 0] > support[0, 2]


def synthetic_queries(decoy_share: float, n: int = 400, seed: int = 0):
    """Queries with a cluster of 4 cells around the truth.

    The top-scored cell is a decoy in some.
    """
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1000
    pos = truth[:, None] + torch.randn(n, 8, 2, generator=g, dtype=torch.float64) * 3
    # scattered wrong cells
    pos[:, 4:] = torch.rand(n, 4, 2, generator=g, dtype=torch.float64) * 1000
    scores = torch.tensor([2.0, 1.9, 1.8, 1.7, 1.0, 0.9, 0.8, 0.7],
                          dtype=torch.float64).repeat(n, 1)
    decoy = torch.rand(n, generator=g) < decoy_share
    pos[decoy, 0] = torch.rand(int(decoy.sum()), 2, generator=g, dtype=torch.float64) * 1000
    return pos, scores, truth


def test_fit_finds_the_consensus_when_the_top_cell_is_often_a_decoy_and_keeps_retrieval_when_not():
    scene = torch.zeros(400, 8, dtype=torch.long)
    same = torch.ones(400, 8, dtype=torch.bool)
    pos, scores, truth = synthetic_queries(0.4)
    beta, h, value = fit_consensus(pos, scores, scene, truth, same)
    assert h > 0 and value > 0.9
    base = float(((pos[:, 0] - truth).norm(dim=-1) <= 10).double().mean())
    assert base < 0.7
    # a lone exact top cell and a cluster elsewhere: the consensus would move away from the truth
    pos = torch.rand(400, 8, 2, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64) * 1000
    pos[:, 1:4] = pos[:, 1:2] + torch.randn(400, 3, 2, dtype=torch.float64)
    truth = pos[:, 0].clone()
    assert fit_consensus(pos, scores, scene, truth, same)[:2] == (0.0, 0.0)


def test_calibration_files_without_a_consensus_load_as_retrieval_order():
    old = Calibration.from_dict({"scale": 0.02, "beta": 4.0, "fitted_on": "val: 10 queries"})
    assert old.consensus_bandwidth_m == 0.0
    new = Calibration(0.02, 4.0, "val", 0.5, 10.0)
    assert Calibration.from_dict(new.to_dict()) == new


def test_mixture_covariance_about_a_given_centre():
    pos = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]], dtype=torch.float64)
    var = torch.tensor([[4.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    cov = mixture_covariance(pos, var, w,
                             centre=torch.tensor([[5.0, 0.0]], dtype=torch.float64))[0]
    torch.testing.assert_close(cov, torch.tensor([[2.5 + 25.0, 0.0], [0.0, 2.5]],
                                                 dtype=torch.float64))
