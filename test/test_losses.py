"""Tests of the coarse losses (set similarity, CCL, L_Coarse) and of the retrieval scoring."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spatialoc_ros.core.retrieval import (fused_scores, retrieval_recall, top_k,
                                          zscore)
from spatialoc_ros.training.losses import (CoarseOutputs, ccl_loss, ccl_weights, coarse_loss,
                                           masked_mean, set_similarity)


def prefix_mask(lengths, n):
    """[B, n] bool with the first lengths[b] entries of row b True."""
    return torch.arange(n)[None] < torch.tensor(lengths)[:, None]


def unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def random_outputs(b=5, q=6, n=7, d=8, seed=0, requires_grad=False, spread=None):
    """A paired batch of random unit descriptors with ragged hint and object counts.

    With ``spread``, every vector is a common direction plus ``spread`` times
    noise, except for the last query and cell, which point the other way: the
    negatives are then close relative to the largest distance, so their CCL
    weights fall inside the (0.8, 1) clip range.
    """
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g)

    def u(*shape):
        x = torch.randn(*shape, generator=g)
        if spread is not None:
            x = common + spread * x
            x[-1] = -x[-1]
        return F.normalize(x, dim=-1).requires_grad_(requires_grad)

    t_len = torch.randint(1, q + 1, (b,), generator=g).tolist()
    p_len = torch.randint(1, n + 1, (b,), generator=g).tolist()
    return CoarseOutputs(u(b, d), u(b, d), u(b, q, d), u(b, q, d), prefix_mask(t_len, q),
                         u(b, n, d), u(b, n, d), prefix_mask(p_len, n))


# ---------------------------------------------------------------- set similarity


def test_set_similarity_equals_a_naive_loop_and_ignores_padding():
    torch.manual_seed(0)
    t, p = unit(4, 6, 8), unit(9, 5, 8)
    tmask = prefix_mask([6, 1, 3, 4], 6)
    pmask = prefix_mask([5, 1, 2, 3, 4, 5, 1, 2, 3], 5)
    expected = torch.empty(4, 9)
    for i in range(4):
        for j in range(9):
            hints = t[i][tmask[i]]
            objects = p[j][pmask[j]]
            expected[i, j] = (hints @ objects.t()).max(dim=1).values.mean()
    t_junk, p_junk = t.clone(), p.clone()
    t_junk[~tmask] = 50.0
    p_junk[~pmask] = 50.0
    for chunk in (None, 1, 4):
        got = set_similarity(t_junk, tmask, p_junk, pmask, chunk=chunk)
        torch.testing.assert_close(got, expected)


def test_set_similarity_rejects_empty_sets():
    t, p = unit(2, 3, 4), unit(2, 3, 4)
    with pytest.raises(ValueError):
        set_similarity(t, prefix_mask([3, 3], 3), p, prefix_mask([0, 2], 3))


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, -9.0]]])
    got = masked_mean(x, prefix_mask([2], 3))
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))


# ---------------------------------------------------------------- CCL


def test_ccl_hand_computed_2x2():
    """tau 1, S = [[ln 3, 0], [ln 2, ln 3]], w = [[1, .9], [.8, 1]] indexed [text, cell].

    Texts: p(0 -> cell 1) = 1/4, p(1 -> cell 0) = 2/5. Cells: p(0 -> text 1) = 2/5,
    p(1 -> text 0) = 1/4. Pair (text 0, cell 1) has weight .9, pair (text 1, cell 0) .8:
    L = (.9 ln 4/3 + .8 ln 5/3) / 2 + (.8 ln 5/3 + .9 ln 4/3) / 2.
    """
    s = torch.tensor([[math.log(3), 0.0], [math.log(2), math.log(3)]])
    w = torch.tensor([[1.0, 0.9], [0.8, 1.0]])
    expected = 0.9 * math.log(4 / 3) + 0.8 * math.log(5 / 3)
    assert ccl_loss(s, w, tau=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert ccl_loss(s, None, tau=1.0).item() == pytest.approx(
        math.log(4 / 3) + math.log(5 / 3), rel=1e-6)
    # the temperature divides the scores
    assert ccl_loss(s * 0.05, w).item() == pytest.approx(expected, rel=1e-5)


def test_ccl_pushes_positives_up():
    """dL/dS_ii < 0: raising a matched pair's score always lowers the loss."""
    torch.manual_seed(1)
    s = torch.randn(6, 6).mul(0.3).requires_grad_()
    w = ccl_weights(unit(6, 4), unit(6, 4))
    ccl_loss(s, w).backward()
    assert (s.grad.diagonal() < 0).all()


def test_ccl_is_exact_when_a_negative_takes_all_the_mass():
    """-log(1 - p) with 1 - p below float precision: finite, ~ the logit gap, with a gradient."""
    s = torch.tensor([[0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    loss = ccl_loss(s, tau=0.01)                   # row 0: p(cell 1) = 1 - e^-100
    assert loss.item() == pytest.approx(100.0 / 2 + 2 * math.log(2) / 2 + 100 / 2, rel=1e-3)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 1] > 0


def test_ccl_weights_hand_computed_and_not_detached():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0], [0.28, 0.96]])
    # distances [[0, 1.2], [sqrt 2, sqrt .08]], divided by the largest (sqrt 2)
    d = torch.tensor([[0.0, 1.2], [math.sqrt(2.0), math.sqrt(0.08)]]) / math.sqrt(2.0)
    expected = (1 - d + 1e-6).sqrt().clamp(0.8, 1.0)
    w = ccl_weights(a, b)
    torch.testing.assert_close(w, expected)
    assert w[0, 0].item() == 1.0                               # (1 + 1e-6)^0.5 clipped to 1
    assert w[0, 1].item() == pytest.approx(0.8)                # sqrt(.151) = .39, clipped
    assert w[1, 1].item() == pytest.approx(math.sqrt(0.8), rel=1e-5)   # d = .2: inside the clip
    w[1, 1].backward()                                         # gradients reach the features
    assert a.grad is not None and a.grad.abs().sum() > 0


# ---------------------------------------------------------------- L_Coarse


def test_global_terms_weight_the_self_terms():
    out = random_outputs(seed=2)
    q, p = out.q_glo, out.p_glo
    cross = ccl_loss(q @ p.t(), ccl_weights(q, p))
    qq = ccl_loss(q @ q.t(), ccl_weights(q, q))
    pp = ccl_loss(p @ p.t(), ccl_weights(p, p))
    assert qq > 0 and pp > 0
    kw = dict(use_is=False, use_io=False)
    total, parts = coarse_loss(out, **kw)
    torch.testing.assert_close(total, cross + qq + pp)
    total, parts = coarse_loss(out, global_terms=(1, 0, 0), **kw)
    torch.testing.assert_close(total, cross)
    assert set(parts) == {"global_cross", "global", "total"}
    total, parts = coarse_loss(out, global_terms=(1, 0, 1), **kw)
    torch.testing.assert_close(total, cross + pp)
    assert set(parts) == {"global_cross", "global_pp", "global", "total"}


def test_switched_off_terms_carry_no_gradient():
    out = random_outputs(seed=3, requires_grad=True)
    total, parts = coarse_loss(out, use_is=False, use_io=True, global_terms=(0, 0, 1))
    total.backward()
    assert out.q_glo.grad is None                    # only (P, P) of L_Global is on
    assert out.p_glo.grad.abs().sum() > 0
    assert out.t_rel.grad is None and out.p_rel.grad is None        # L_IS off
    assert out.t_obj.grad.abs().sum() > 0
    assert set(parts) == {"global_pp", "global", "io", "total"}
    with pytest.raises(ValueError):
        coarse_loss(out, use_is=False, use_io=False, use_global=False)


def test_set_losses_use_their_own_features_and_ignore_padding():
    """L_IS on the relation sets, weights from their masked means; padding never matters."""
    out = random_outputs(seed=4, spread=0.3)
    w = ccl_weights(masked_mean(out.t_rel, out.t_mask), masked_mean(out.p_rel, out.p_mask))
    off = ~torch.eye(5, dtype=torch.bool)
    assert ((w[off] > 0.8) & (w[off] < 1.0)).sum() >= 5     # the weights are not all clipped
    rel = ccl_loss(set_similarity(out.t_rel, out.t_mask, out.p_rel, out.p_mask), w)
    total, parts = coarse_loss(out, use_io=False, use_global=False)
    torch.testing.assert_close(total, rel)
    _, parts_io = coarse_loss(out, use_is=False, use_global=False)
    assert not torch.isclose(parts_io["io"], parts["is"])
    junk = CoarseOutputs(**vars(out))
    junk.p_rel = out.p_rel.clone()
    junk.p_rel[~out.p_mask] = 7.0
    junk.t_rel = out.t_rel.clone()
    junk.t_rel[~out.t_mask] = -7.0
    torch.testing.assert_close(coarse_loss(junk, use_io=False, use_global=False)[0], rel)


class TinyCoarse(nn.Module):
    """Linear encoders for each descriptor: the smallest model that L_Coarse can train."""

    def __init__(self, d_in=12, d=8):
        super().__init__()
        self.enc = nn.ModuleDict({k: nn.Linear(d_in, d) for k in
                                  ("t_obj", "p_obj", "t_rel", "p_rel", "q_glo", "p_glo")})

    def forward(self, hints, tmask, objects, pmask):
        e = {k: F.normalize(m(hints if k[0] in "tq" else objects), dim=-1)
             for k, m in self.enc.items()}
        return CoarseOutputs(q_glo=F.normalize(masked_mean(e["q_glo"], tmask), dim=-1),
                             p_glo=F.normalize(masked_mean(e["p_glo"], pmask), dim=-1),
                             t_obj=e["t_obj"], t_rel=e["t_rel"], t_mask=tmask,
                             p_obj=e["p_obj"], p_rel=e["p_rel"], p_mask=pmask)


def margins(out):
    """Mean matched score minus mean unmatched score, for each of the three scores."""
    scores = {"global": out.q_glo @ out.p_glo.t(),
              "object": set_similarity(out.t_obj, out.t_mask, out.p_obj, out.p_mask),
              "relation": set_similarity(out.t_rel, out.t_mask, out.p_rel, out.p_mask)}
    eye = torch.eye(out.q_glo.shape[0], dtype=torch.bool)
    return {k: (s[eye].mean() - s[~eye].mean()).item() for k, s in scores.items()}


def test_training_raises_matched_scores_and_lowers_the_loss():
    """A few Adam steps on L_Coarse: the loss falls, matched pairs pull ahead of negatives."""
    torch.manual_seed(5)
    b, q, n, d_in = 12, 4, 6, 12
    objects = torch.randn(b, n, d_in)
    pmask = prefix_mask(torch.randint(q, n + 1, (b,)).tolist(), n)
    hints = objects[:, :q] + 0.3 * torch.randn(b, q, d_in)          # hints describe objects
    tmask = prefix_mask(torch.randint(1, q + 1, (b,)).tolist(), q)
    model = TinyCoarse(d_in)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        before_loss = coarse_loss(model(hints, tmask, objects, pmask))[0].item()
        before = margins(model(hints, tmask, objects, pmask))
    for _ in range(40):
        opt.zero_grad()
        coarse_loss(model(hints, tmask, objects, pmask))[0].backward()
        opt.step()
    with torch.no_grad():
        after_loss = coarse_loss(model(hints, tmask, objects, pmask))[0].item()
        after = margins(model(hints, tmask, objects, pmask))
    assert after_loss < 0.5 * before_loss
    for k in before:
        assert after[k] > before[k] + 0.2, (k, before[k], after[k])


# ---------------------------------------------------------------- retrieval


def test_zscore_uses_the_population_std_and_guards_constant_rows():
    got = zscore(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    r = math.sqrt(1.5)
    torch.testing.assert_close(got, torch.tensor([[-r, 0.0, r], [0.0, 0.0, 0.0]]))


def test_fused_scores_hand_example():
    """One query, three cells (D = 2): s1 = (1, 0, -1), s2 = (0, 1, 0), s3 = (.6, .6, .6)."""
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    query = CoarseOutputs(q_glo=torch.tensor([e1]), t_obj=torch.tensor([[e1]]),
                          t_rel=torch.tensor([[[0.6, 0.8]]]), t_mask=torch.tensor([[True]]))
    gallery = CoarseOutputs(
        p_glo=torch.tensor([e1, e2, [-1.0, 0.0]]),
        p_obj=torch.tensor([[e2, e2], [e1, e2], [e2, e1]]),         # cell 2's e1 is padding
        p_rel=torch.tensor([[e1, e2], [e1, e1], [e1, [5.0, 5.0]]]),  # s3 = .6: std 0 -> z 0
        p_mask=torch.tensor([[True, False], [True, True], [True, False]]))
    r = math.sqrt(1.5)
    z1 = torch.tensor([r, 0.0, -r])
    z2 = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(2.0)
    torch.testing.assert_close(fused_scores(query, gallery)[0], z1 + z2)
    torch.testing.assert_close(fused_scores(query, gallery, use=("global",))[0], z1)
    torch.testing.assert_close(fused_scores(query, gallery, use=("object",))[0], z2)
    # the Global variant needs no instance-level features at all
    glo = fused_scores(CoarseOutputs(q_glo=query.q_glo), CoarseOutputs(p_glo=gallery.p_glo),
                       use=("global",))
    torch.testing.assert_close(glo[0], z1)
    with pytest.raises(ValueError):
        fused_scores(query, gallery, use=("global", "gaussian"))


def test_top_k_and_recall_on_a_toy_case():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7],
                           [0.8, 0.1, 0.2, 0.3],
                           [0.0, 0.1, 0.2, 0.3]])
    ids = top_k(scores, 3)
    assert ids.tolist() == [[1, 3, 2], [0, 3, 2], [3, 2, 1]]
    assert top_k(scores, 10).shape == (3, 4)
    recall = retrieval_recall(ids, torch.tensor([3, 0, 0]), ks=(1, 2, 3))
    assert recall == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3})
    several = retrieval_recall(ids, torch.tensor([[1, -1], [2, 3], [0, -1]]), ks=(1, 2, 3))
    assert several == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3})
