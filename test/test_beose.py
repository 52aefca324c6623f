"""Tests of BEOSE, Gaussian Aggregation and the text scene graph.

Modules: spatialoc_ros.networks.beose and spatialoc_ros.networks.text_graph.
"""

import pytest
import torch
import torch.nn.functional as F

from spatialoc_ros.networks.beose import (BEOSE, GaussianAggregation, ObjectRelationEncoder,
                                          pair_affine)
from spatialoc_ros.networks.text_graph import TextSceneGraph

D = 16
GA_MODES = ["gaussian", "maxpool"]
OBJECT_VARIANTS = [(False, "gaussian"), (False, "maxpool"), (True, "gaussian"), (True, "maxpool")]


def lengths_mask(lengths, n):
    """[len(lengths), n] bool mask with the first lengths[i] slots of row i valid."""
    return torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def padded_batch(cells, n, gen):
    """Stack per-cell tensors [1, n_i, ...] into [B, n, ...] with random garbage in the padding."""
    out = []
    for cell in cells:
        garbage = 5 * torch.randn((1, n) + cell.shape[2:], generator=gen, dtype=cell.dtype)
        garbage[:, :cell.shape[1]] = cell
        out.append(garbage)
    return torch.cat(out)


def padded_edges(cells, n, gen):
    """Stack per-cell edges [1, n_i, n_i, D] into [B, n, n, D], garbage outside the valid block."""
    out = []
    for cell in cells:
        k = cell.shape[1]
        garbage = 5 * torch.randn((1, n, n) + cell.shape[3:], generator=gen, dtype=cell.dtype)
        garbage[:, :k, :k] = cell
        out.append(garbage)
    return torch.cat(out)


def randomise(module, seed=0, scale=0.3):
    """Move every parameter away from its initial value (biases included) so every term matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return module


def check_outputs(out, mask):
    """Unit norm at valid slots, exact zeros at padded slots, no NaN."""
    assert torch.isfinite(out).all()
    norms = out.norm(dim=-1)
    assert torch.allclose(norms[mask], torch.ones_like(norms[mask]), atol=1e-5)
    assert (out[~mask] == 0).all()


# ---------------------------------------------------------------- pair features


def test_pair_affine_equals_concatenated_linear():
    gen = torch.Generator().manual_seed(0)
    B, N, De, Dout = 3, 7, 5, 6
    nodes = torch.randn(B, N, D, generator=gen, dtype=torch.float64)
    edges = torch.randn(B, N, N, De, generator=gen, dtype=torch.float64)
    for with_edges in (True, False):
        lin = torch.nn.Linear(2 * D + (De if with_edges else 0), Dout).double()
        pairs = [nodes.unsqueeze(2).expand(B, N, N, D), nodes.unsqueeze(1).expand(B, N, N, D)]
        if with_edges:
            pairs.append(edges)
        naive = lin(torch.cat(pairs, dim=-1))
        fast = pair_affine(lin.weight, lin.bias, nodes, edges if with_edges else None)
        assert fast.shape == (B, N, N, Dout)
        assert torch.allclose(fast, naive, atol=1e-12)


def naive_beose(module, x, centroids, mask):
    """BEOSE (spatialoc_ros/networks/beose.py) written literally.

    Concatenation, P0, P1 = ctrl(P0), Bézier with P2 = P0.
    """
    B, N, d = x.shape
    node_mask = mask.unsqueeze(-1).to(x.dtype)
    edge_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)).unsqueeze(-1).to(x.dtype)
    r = module.geo(centroids.unsqueeze(2) - centroids.unsqueeze(1)) * edge_mask
    t = torch.sigmoid(module.beta)
    for _ in range(module.iterations):
        x_new = module.lstm(x)[0] * node_mask
        pairs = [x.unsqueeze(2).expand(B, N, N, d), x.unsqueeze(1).expand(B, N, N, d), r]
        cat = torch.cat(pairs, -1)
        p0 = module.fuse(cat)
        p1 = module.ctrl(p0)
        p2 = p0
        e_hat = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        r = torch.tanh(e_hat) * edge_mask
        x = x_new
    return x, r


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_beose_equals_literal_formulation(dtype, atol):
    torch.manual_seed(0)
    module = randomise(BEOSE(D, iterations=3)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, D, generator=gen, dtype=dtype)
    c = torch.rand(3, 7, 3, generator=gen, dtype=dtype)
    mask = lengths_mask([7, 4, 1], 7)
    nodes, edges = module(x, c, mask)
    ref_nodes, ref_edges = naive_beose(module, x, c, mask)
    assert torch.allclose(nodes, ref_nodes, atol=atol)
    assert torch.allclose(edges, ref_edges, atol=atol)


def test_beose_ablated_equals_single_fuse_pass():
    torch.manual_seed(0)
    module = randomise(BEOSE(D, ablate=True)).double()
    gen = torch.Generator().manual_seed(2)
    B, N = 3, 7
    x = torch.randn(B, N, D, generator=gen, dtype=torch.float64)
    c = torch.rand(B, N, 3, generator=gen, dtype=torch.float64)
    mask = lengths_mask([7, 2, 5], N)
    edge_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)).unsqueeze(-1).double()
    cat = torch.cat([x.unsqueeze(2).expand(B, N, N, D), x.unsqueeze(1).expand(B, N, N, D),
                     module.geo(c.unsqueeze(2) - c.unsqueeze(1))], -1)
    nodes, edges = module(x, c, mask)
    assert torch.allclose(edges, module.fuse(cat) * edge_mask, atol=1e-12)
    assert torch.allclose(nodes, module.node_proj(x) * mask.unsqueeze(-1), atol=1e-12)


def naive_text_graph(module, hints, mask):
    """The text graph of spatialoc_ros/networks/text_graph.py, literally, with concatenations."""
    B, Q, d = hints.shape
    node_mask = mask.unsqueeze(-1).to(hints.dtype)
    edge_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)).unsqueeze(-1).to(hints.dtype)
    t, r = hints, None
    for _ in range(module.iterations):
        t_new = torch.tanh(module.go(t)) * node_mask
        pair = torch.cat([t.unsqueeze(2).expand(B, Q, Q, d), t.unsqueeze(1).expand(B, Q, Q, d)],
                         -1)
        if r is None:
            r = module.rel(pair)
        r = torch.tanh(module.gr(torch.cat([pair, r], -1))) * edge_mask
        t = t_new
    rel = module.ga(r, mask)
    return F.normalize(t, dim=-1) * node_mask, F.normalize(rel, dim=-1) * node_mask


def test_text_graph_equals_literal_formulation():
    torch.manual_seed(0)
    module = randomise(TextSceneGraph(D)).double().eval()
    gen = torch.Generator().manual_seed(3)
    hints = torch.randn(3, 12, D, generator=gen, dtype=torch.float64)
    mask = lengths_mask([12, 6, 1], 12)
    for got, want in zip(module(hints, mask), naive_text_graph(module, hints, mask)):
        assert torch.allclose(got, want, atol=1e-10)


# ---------------------------------------------------------------- Gaussian Aggregation


def test_ga_softmax_runs_over_the_summed_axis_n():
    """v_m = sum_n (0.5 softmax_n(e) + 0.5 softmax_n(mean_k mu(e)))_mn * e_mn over valid n."""
    torch.manual_seed(0)
    ga = GaussianAggregation(2, mode="gaussian").double().eval().requires_grad_(False)
    with torch.no_grad():
        ga.esa.weight.copy_(torch.eye(2))
        ga.esa.bias.zero_()
        ga.mu.weight.copy_(torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.0, 0.7]]))
    e = torch.tensor([[[[0.3, -1.0], [2.0, 0.5], [9.0, 9.0]],
                       [[-0.7, 1.5], [0.1, 0.2], [9.0, 9.0]],
                       [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    out = ga(e, mask)

    expected = torch.zeros(1, 3, 2, dtype=torch.float64)
    valid = [0, 1]
    for m in valid:
        z = [float((ga.mu.weight @ e[0, m, n]).mean()) for n in valid]
        gauss = torch.softmax(torch.tensor(z, dtype=torch.float64), 0)
        for k in range(2):
            base = torch.softmax(e[0, m, valid, k], 0)
            expected[0, m, k] = sum((0.5 * base[i] + 0.5 * gauss[i]) * e[0, m, n, k]
                                    for i, n in enumerate(valid))
    assert torch.allclose(out, expected, atol=1e-12)

    # the code's axis (softmax over m, sum over n) gives something else here
    wrong = (torch.softmax(e[:, :2, :2], dim=1) * e[:, :2, :2]).sum(2)
    assert not torch.allclose(out[:, :2], 0.5 * wrong + 0.5 * expected[:, :2], atol=1e-3)


def test_ga_maxpool_is_masked_max_over_n():
    ga = GaussianAggregation(2, mode="maxpool").double()
    with torch.no_grad():
        ga.esa.weight.copy_(torch.eye(2))
        ga.esa.bias.zero_()
    gen = torch.Generator().manual_seed(4)
    e = torch.randn(2, 4, 4, 2, generator=gen, dtype=torch.float64)
    e[..., 3, :] = 100.0  # padded n must never win
    mask = lengths_mask([3, 3], 4)
    out = ga(e, mask)
    assert torch.equal(out[:, :3], e[:, :3, :3].amax(2))
    assert (out[:, 3] == 0).all()
    assert not hasattr(ga, "mu") and not hasattr(ga, "logvar")


def test_ga_noise_only_in_training():
    torch.manual_seed(0)
    ga = randomise(GaussianAggregation(D))
    gen = torch.Generator().manual_seed(5)
    e = torch.randn(3, 7, 7, D, generator=gen)
    mask = lengths_mask([7, 5, 2], 7)
    ga.eval()
    assert torch.equal(ga(e, mask), ga(e, mask))
    ga.train()
    a, b = ga(e, mask), ga(e, mask)
    assert not torch.allclose(a, b)
    assert torch.equal(a[~mask], b[~mask])  # padded rows stay 0
    maxpool = GaussianAggregation(D, mode="maxpool").train()
    assert torch.equal(maxpool(e, mask), maxpool(e, mask))


@pytest.mark.parametrize("mode", GA_MODES)
def test_ga_single_valid_empty_cell_and_one_slot(mode):
    torch.manual_seed(0)
    ga = randomise(GaussianAggregation(D, mode=mode)).train()
    gen = torch.Generator().manual_seed(6)
    e = torch.randn(3, 5, 5, D, generator=gen, requires_grad=True)
    mask = lengths_mask([1, 0, 5], 5)
    out = ga(e, mask)
    out.pow(2).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(e.grad).all()
    assert (out[1] == 0).all() and (out[0, 1:] == 0).all()
    # one valid n: the weights are 1, v_0 = esa(e_00)
    assert torch.allclose(out[0, 0], ga.esa(e[0, 0, 0]), atol=1e-6)
    single = ga(torch.randn(2, 1, 1, D, generator=gen), torch.tensor([[True], [False]]))
    assert torch.isfinite(single).all() and (single[1] == 0).all()


@pytest.mark.parametrize("mode", GA_MODES)
def test_ga_padding_never_changes_a_result(mode):
    torch.manual_seed(0)
    ga = randomise(GaussianAggregation(D, mode=mode)).eval()
    gen = torch.Generator().manual_seed(7)
    lengths = [7, 3, 1]
    cells = [torch.randn(1, k, k, D, generator=gen) for k in lengths]
    batch = padded_edges(cells, 10, gen)
    out = ga(batch, lengths_mask(lengths, 10))
    for i, (cell, k) in enumerate(zip(cells, lengths)):
        alone = ga(cell, torch.ones(1, k, dtype=torch.bool))
        assert torch.allclose(out[i, :k], alone[0], atol=1e-5)
        assert (out[i, k:] == 0).all()


# ---------------------------------------------------------------- object side


@pytest.mark.parametrize("ablate,ga_mode", OBJECT_VARIANTS)
def test_object_encoder_shapes_norms_and_padding(ablate, ga_mode):
    torch.manual_seed(0)
    enc = randomise(ObjectRelationEncoder(D, ablate_beose=ablate, ga_mode=ga_mode)).eval()
    gen = torch.Generator().manual_seed(8)
    lengths = [7, 4, 1]
    xs = [torch.randn(1, k, D, generator=gen) for k in lengths]
    cs = [torch.rand(1, k, 3, generator=gen) for k in lengths]
    mask = lengths_mask(lengths, 11)
    obj, rel = enc(padded_batch(xs, 11, gen), padded_batch(cs, 11, gen), mask)
    assert obj.shape == rel.shape == (3, 11, D)
    check_outputs(obj, mask)
    check_outputs(rel, mask)
    for i, k in enumerate(lengths):
        obj1, rel1 = enc(xs[i], cs[i], torch.ones(1, k, dtype=torch.bool))
        assert torch.allclose(obj[i, :k], obj1[0], atol=1e-5)
        assert torch.allclose(rel[i, :k], rel1[0], atol=1e-5)


@pytest.mark.parametrize("ablate", [False, True])
def test_beose_padding_never_changes_nodes_or_edges(ablate):
    torch.manual_seed(0)
    beose = randomise(BEOSE(D, ablate=ablate))
    gen = torch.Generator().manual_seed(11)
    lengths = [7, 3, 1]
    xs = [torch.randn(1, k, D, generator=gen) for k in lengths]
    cs = [torch.rand(1, k, 3, generator=gen) for k in lengths]
    mask = lengths_mask(lengths, 9)
    nodes, edges = beose(padded_batch(xs, 9, gen), padded_batch(cs, 9, gen), mask)
    for i, k in enumerate(lengths):
        nodes1, edges1 = beose(xs[i], cs[i], torch.ones(1, k, dtype=torch.bool))
        assert torch.allclose(nodes[i, :k], nodes1[0], atol=1e-5)
        assert torch.allclose(edges[i, :k, :k], edges1[0], atol=1e-5)
        assert (nodes[i, k:] == 0).all()
        assert (edges[i, k:] == 0).all() and (edges[i, :, k:] == 0).all()


def test_object_encoder_full_size_shapes():
    torch.manual_seed(0)
    enc = ObjectRelationEncoder(256).eval()
    mask = lengths_mask([28, 10, 3, 17], 28)
    obj, rel = enc(torch.randn(4, 28, 256), torch.rand(4, 28, 3), mask)
    assert obj.shape == rel.shape == (4, 28, 256)
    check_outputs(obj, mask)
    check_outputs(rel, mask)


def test_object_encoder_empty_cell_and_single_object():
    torch.manual_seed(0)
    enc = randomise(ObjectRelationEncoder(D)).train()
    x = torch.randn(2, 1, D, requires_grad=True)
    mask = torch.tensor([[True], [False]])
    obj, rel = enc(x, torch.rand(2, 1, 3), mask)
    (obj.sum() + rel.sum()).backward()
    assert torch.isfinite(x.grad).all()
    check_outputs(obj, mask)
    check_outputs(rel, mask)


def test_beose_rejects_padding_before_a_valid_slot():
    enc = BEOSE(D)
    with pytest.raises(ValueError, match="first"):
        enc(torch.randn(1, 3, D), torch.rand(1, 3, 3), torch.tensor([[True, False, True]]))


def test_beose_parameters():
    full = dict(BEOSE(D).named_parameters())
    assert full["beta"].shape == () and full["beta"].item() == 0.5
    assert {"geo.weight", "fuse.weight", "ctrl.weight", "lstm.weight_ih_l0"} <= set(full)
    assert full["fuse.weight"].shape == (D, 3 * D)
    ablated = dict(BEOSE(D, ablate=True).named_parameters())
    assert set(ablated) == {"geo.weight", "geo.bias", "fuse.weight", "fuse.bias",
                            "node_proj.weight", "node_proj.bias"}
    with pytest.raises(ValueError):
        GaussianAggregation(D, mode="mean")


def assert_all_parameters_get_gradients(module):
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("ablate,ga_mode", OBJECT_VARIANTS)
def test_object_encoder_gradients_reach_every_parameter(ablate, ga_mode):
    torch.manual_seed(0)
    enc = randomise(ObjectRelationEncoder(D, ablate_beose=ablate, ga_mode=ga_mode)).train()
    mask = lengths_mask([7, 5, 2], 7)
    obj, rel = enc(torch.randn(3, 7, D), torch.rand(3, 7, 3), mask)
    target = torch.randn(2, 3, 7, D)
    ((obj * target[0]).sum() + (rel * target[1]).sum()).backward()
    assert_all_parameters_get_gradients(enc)


# ---------------------------------------------------------------- text side


@pytest.mark.parametrize("ga_mode", GA_MODES)
def test_text_graph_shapes_norms_and_padding(ga_mode):
    torch.manual_seed(0)
    graph = randomise(TextSceneGraph(D, ga_mode=ga_mode)).eval()
    gen = torch.Generator().manual_seed(9)
    lengths = [12, 6, 1]
    hints = [torch.randn(1, k, D, generator=gen) for k in lengths]
    mask = lengths_mask(lengths, 12)
    obj, rel = graph(padded_batch(hints, 12, gen), mask)
    assert obj.shape == rel.shape == (3, 12, D)
    check_outputs(obj, mask)
    check_outputs(rel, mask)
    for i, k in enumerate(lengths):
        obj1, rel1 = graph(hints[i], torch.ones(1, k, dtype=torch.bool))
        assert torch.allclose(obj[i, :k], obj1[0], atol=1e-5)
        assert torch.allclose(rel[i, :k], rel1[0], atol=1e-5)


def test_text_graph_padding_need_not_be_trailing():
    torch.manual_seed(0)
    graph = randomise(TextSceneGraph(D)).eval()
    gen = torch.Generator().manual_seed(10)
    hints = torch.randn(1, 4, D, generator=gen)
    spread = torch.randn(1, 7, D, generator=gen)
    slots = [0, 3, 4, 6]
    spread[0, slots] = hints[0]
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[0, slots] = True
    obj, rel = graph(spread, mask)
    obj1, rel1 = graph(hints, torch.ones(1, 4, dtype=torch.bool))
    assert torch.allclose(obj[0, slots], obj1[0], atol=1e-5)
    assert torch.allclose(rel[0, slots], rel1[0], atol=1e-5)
    check_outputs(obj, mask)


@pytest.mark.parametrize("ga_mode", GA_MODES)
def test_text_graph_gradients_reach_every_parameter(ga_mode):
    torch.manual_seed(0)
    graph = randomise(TextSceneGraph(D, ga_mode=ga_mode)).train()
    mask = lengths_mask([6, 3, 12], 12)
    obj, rel = graph(torch.randn(3, 12, D), mask)
    target = torch.randn(2, 3, 12, D)
    ((obj * target[0]).sum() + (rel * target[1]).sum()).backward()
    assert_all_parameters_get_gradients(graph)


def test_text_graph_full_size_shapes():
    graph = TextSceneGraph(256).eval()
    mask = lengths_mask([6, 1, 12, 9], 12)
    obj, rel = graph(torch.randn(4, 12, 256), mask)
    assert obj.shape == rel.shape == (4, 12, 256)
    check_outputs(obj, mask)
    check_outputs(rel, mask)


def test_ga_checkpoints_with_the_old_inert_mu_bias_load_and_answer_the_same(tmp_path):
    """mu once had a bias; it shifted every logit of softmax_n by one constant, so it was inert
    (its gradient is zero in exact arithmetic) and was removed. Old files still load."""
    from safetensors.torch import load_file, save_file

    from spatialoc_ros.networks.beose import GA_COMPONENTS
    from spatialoc_ros.networks.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    ga = randomise(GaussianAggregation(D)).eval()
    assert "mu.bias" not in dict(ga.named_parameters())
    save_checkpoint(ga, tmp_path / "ga", {"architecture": {}})
    state = load_file(str(tmp_path / "ga.safetensors"))
    state["mu.bias"] = torch.randn(GA_COMPONENTS)  # what an older checkpoint holds
    save_file(state, str(tmp_path / "ga.safetensors"))
    back, _ = load_checkpoint(GaussianAggregation(D), tmp_path / "ga")
    edges, mask = torch.randn(2, 5, 5, D), lengths_mask([5, 3], 5)
    with torch.no_grad():
        want = ga(edges, mask)
        # the old model: the same weights and the bias added to every logit of the softmax over n
        old = GaussianAggregation(D).eval()
        old.load_state_dict(ga.state_dict())
        old.mu = torch.nn.Linear(D, GA_COMPONENTS)
        old.mu.weight.copy_(ga.mu.weight)
        old.mu.bias.copy_(state["mu.bias"])
        torch.testing.assert_close(back(edges, mask), want)
        # softmax(x + c) = softmax(x) in exact arithmetic; float32 rounding of x + c is all
        # that differs
        torch.testing.assert_close(old(edges, mask), want, rtol=1e-5, atol=1e-6)
