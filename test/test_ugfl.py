"""The fine stage model (UGFL) and its losses.

Shapes, lambda, masking, object order, K candidates, checkpoints.
"""
import math

import pytest
import torch

from spatialoc_ros.errors import SpatialocError
from spatialoc_ros.networks.checkpoint import load_checkpoint, save_checkpoint
from spatialoc_ros.networks.ugfl import (MAX_PRECISION, MIN_PRECISION, FineConfig, FineModel,
                                         reverse_valid)
from spatialoc_ros.training.fine_losses import fine_loss, regression_loss, ugfl_loss
from spatialoc_ros.training.fine_trainer import permute_objects

TOKEN_DIM, POINT_DIM = 24, 16
SMALL = dict(d=32, token_dim=TOKEN_DIM, point_dim=POINT_DIM)


def model(seed=0, **kw) -> FineModel:
    torch.manual_seed(seed)
    return FineModel(FineConfig(**{**SMALL, **kw}))


def random_cells(lengths, n=None, seed=0) -> dict:
    """CellBank.batch-like inputs.

    len(lengths) cells with that many valid objects each, padded to n.
    """
    g = torch.Generator().manual_seed(seed)
    b, n = len(lengths), n or max(lengths)
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    cells = dict(point_features=torch.randn(b, n, POINT_DIM, generator=g),
                 colors=torch.rand(b, n, 3, generator=g),
                 centers=torch.rand(b, n, 3, generator=g),
                 counts=torch.randint(10, 5000, (b, n), generator=g),
                 mask=mask)
    for k in ("point_features", "colors", "centers"):  # padding slots as a bank stores them
        cells[k][~mask] = 0
    cells["counts"][~mask] = 0
    return cells


def random_text(hint_counts, sentences=8, seed=0) -> dict:
    """text_batch-like inputs: ``sentences`` token rows; query b uses hint_counts[b] of them."""
    g = torch.Generator().manual_seed(seed)
    token_len = torch.randint(3, 9, (sentences,), generator=g)
    token_mask = torch.arange(int(token_len.max()))[None] < token_len[:, None]
    tokens = (torch.randn(sentences, token_mask.shape[1], TOKEN_DIM, generator=g)
              * token_mask.unsqueeze(-1))
    q = max(hint_counts)
    hint_mask = torch.arange(q)[None] < torch.tensor(hint_counts)[:, None]
    hint_index = torch.randint(0, sentences, (len(hint_counts), q), generator=g) * hint_mask
    return dict(tokens=tokens, token_mask=token_mask, hint_index=hint_index, hint_mask=hint_mask)


def pad_more(text: dict, cells: dict, extra: int = 3) -> tuple:
    """The same batch with ``extra`` more hint, token and object slots of garbage, masked out."""
    def grow(x, fill):
        shape = list(x.shape)
        shape[1] = extra
        return torch.cat([x, fill(shape, x)], 1)

    noise = lambda shape, x: torch.randn(shape).to(x.dtype) * 100  # noqa: E731
    false = lambda shape, x: torch.zeros(shape, dtype=torch.bool)  # noqa: E731
    padded_cells = {k: grow(v, false if k == "mask" else noise) for k, v in cells.items()}
    padded_cells["counts"] = padded_cells["counts"].abs()
    padded_text = dict(tokens=grow(text["tokens"], noise),
                       token_mask=grow(text["token_mask"], false),
                       hint_index=grow(text["hint_index"],
                                       lambda s, x: torch.randint(0, len(text["tokens"]), s)),
                       hint_mask=grow(text["hint_mask"], false))
    return padded_text, padded_cells


# --- shapes and lambda ------------------------------------------------------------------------


def test_shapes_and_a_positive_precision():
    m = model().eval()
    out = m(random_text([6, 4, 1]), random_cells([5, 9, 1]))
    assert out.offset.shape == (3, 2) and out.precision.shape == (3,)
    assert (bool((out.precision >= MIN_PRECISION).all())
            and bool(torch.isfinite(out.precision).all()))
    assert torch.equal(out.position, out.offset + 0.5)
    h, hint_mask = m.encode_text(**random_text([6, 4, 1]))
    assert h.shape == (3, 6, 32) and hint_mask.shape == (3, 6)


def test_the_ablation_has_no_precision_branch():
    m = model(precision_head=False).eval()
    out = m(random_text([6, 6]), random_cells([4, 7]))
    assert out.precision is None and out.offset.shape == (2, 2)
    assert not any(k.startswith("precision_mlp") for k in m.state_dict())


@pytest.mark.parametrize("bias", [1e6, -1e6])
def test_precision_stays_finite_and_bounded_for_extreme_inputs(bias):
    m = model().eval()
    cells = random_cells([3, 8])
    cells["point_features"] *= 1e4
    cells["centers"] *= 1e3
    text = random_text([6, 2])
    text["tokens"] *= 1e4
    with torch.no_grad():
        m.precision_mlp[-1].bias.fill_(bias)
    lam = m(text, cells).precision
    assert bool(torch.isfinite(lam).all())
    assert bool(((lam >= MIN_PRECISION) & (lam <= MAX_PRECISION)).all())
    assert torch.allclose(lam, torch.full_like(lam, MAX_PRECISION if bias > 0 else MIN_PRECISION))


# --- masking, candidates ----------------------------------------------------------------------


def test_padding_objects_hints_and_tokens_never_change_the_output():
    m = model().eval()
    text, cells = random_text([6, 3, 1, 5]), random_cells([4, 1, 9, 6])
    with torch.no_grad():
        out = m(text, cells)
        padded = m(*pad_more(text, cells))
        alone = [m({**text, "hint_index": text["hint_index"][b:b + 1],
                    "hint_mask": text["hint_mask"][b:b + 1]},
                   {k: v[b:b + 1, :int(cells["mask"][b].sum())] for k, v in cells.items()})
                 for b in range(4)]
    assert torch.allclose(out.offset, padded.offset, atol=1e-5)
    assert torch.allclose(out.precision, padded.precision, atol=1e-5)
    assert torch.allclose(out.offset, torch.cat([a.offset for a in alone]), atol=1e-5)
    assert torch.allclose(out.precision, torch.cat([a.precision for a in alone]), atol=1e-5)


def test_padding_never_changes_training_mode_statistics():
    """BatchNorm layers in training mode see the valid rows only (dropout off to compare)."""
    m = model()
    for module in m.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    with torch.no_grad():  # the offset head starts at zero: without weights offsets say nothing
        torch.nn.init.normal_(m.offset_head[-1].weight, std=0.5)
    text, cells = random_text([6, 3, 2]), random_cells([4, 2, 7])
    out = m(text, cells)
    padded = m(*pad_more(text, cells))
    assert out.offset.abs().max() > 0.05  # far from the all-zero output of a blank head
    assert torch.allclose(out.offset, padded.offset, atol=1e-5)
    assert torch.allclose(out.precision, padded.precision, rtol=1e-4)


def test_one_query_against_k_cells_equals_k_separate_calls():
    m = model().eval()
    text = random_text([6], sentences=6)
    lengths = [3, 8, 1, 5, 6]
    cells = random_cells(lengths)
    k = len(lengths)
    repeated = {**text, "hint_index": text["hint_index"].repeat(k, 1),
                "hint_mask": text["hint_mask"].repeat(k, 1)}
    with torch.no_grad():
        together = m(repeated, cells)
        separate = [m(text, {key: v[i:i + 1, :lengths[i]] for key, v in cells.items()})
                    for i in range(k)]
    assert torch.allclose(together.offset, torch.cat([s.offset for s in separate]), atol=1e-5)
    assert torch.allclose(together.precision, torch.cat([s.precision for s in separate]),
                          atol=1e-5)


def test_reverse_valid_reverses_the_prefix_only_and_is_its_own_inverse():
    x = torch.arange(10.0).view(2, 5, 1)
    lengths = torch.tensor([3, 5])
    r = reverse_valid(x, lengths)
    assert r[0, :, 0].tolist() == [2, 1, 0, 3, 4] and r[1, :, 0].tolist() == [9, 8, 7, 6, 5]
    assert torch.equal(reverse_valid(r, lengths), x)


def test_invalid_masks_are_refused():
    m = model().eval()
    cells = random_cells([3, 4])
    cells["mask"] = cells["mask"].flip(1)  # padding first
    with pytest.raises(ValueError, match="padding at the end"):
        m(random_text([6, 6]), cells)


# --- object order -----------------------------------------------------------------------------


def _fit_a_few_steps(m: FineModel, steps: int = 25) -> None:
    """Train on random cells whose target (the mean object centre) ignores the object order."""
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    import numpy as np

    rng = np.random.default_rng(0)
    for step in range(steps):
        lengths = torch.randint(2, 12, (16,), generator=gen).tolist()
        cells, text = random_cells(lengths, seed=step), random_text([6] * 16, seed=step)
        target = ((cells["centers"][..., :2] * cells["mask"].unsqueeze(-1)).sum(1)
                  / cells["mask"].sum(1, keepdim=True))
        out = m(text, permute_objects(cells, rng))
        loss = fine_loss(out.offset, out.precision, target - 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()


def order_sensitivity(m: FineModel, trials: int = 4) -> float:
    """Mean change of the offset when a cell's valid objects are permuted, relative to the mean
    change between different cells under the same query (0 = order-free)."""
    import numpy as np

    rng = np.random.default_rng(5)
    m.eval()
    lengths = [4, 7, 10, 12, 3, 9, 6, 11]
    text = random_text([6] * len(lengths), seed=99)
    cells = random_cells(lengths, seed=99)
    with torch.no_grad():
        base = m(text, cells).offset
        moved = torch.stack([m(text, permute_objects(cells, rng)).offset for _ in range(trials)])
        others = m(text, {k: v.roll(1, 0) for k, v in cells.items()}).offset
    return float((moved - base).norm(dim=-1).mean() / (others - base).norm(dim=-1).mean())


def test_permuting_objects_changes_the_prediction_little():
    m = model(seed=3)
    _fit_a_few_steps(m)
    sensitivity = order_sensitivity(m)
    print(f"UGFL object-order sensitivity (permuted / other cell): {sensitivity:.3f}")
    assert sensitivity < 0.5


# --- losses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [0.02, 0.2, 1.5])
def test_ugfl_loss_optimum_is_lambda_star_equal_error_to_the_minus_half(error):
    """arXiv 2601.03579 §3.4, Eq. (16): for a fixed L1 error e, lambda e + 1/lambda.

    Its argmin over lambda is e^(-1/2), its minimum 2 sqrt(e).
    """
    offset, target = torch.tensor([[error * 0.25, -error * 0.75]]), torch.zeros(1, 2)
    lambdas = torch.logspace(-3, 3, 20001)
    losses = torch.stack([ugfl_loss(offset, lam.view(1), target) for lam in lambdas[::20]])
    best = lambdas[::20][int(losses.argmin())]
    assert math.isclose(float(best), error ** -0.5, rel_tol=0.02)
    assert math.isclose(float(losses.min()), 2 * math.sqrt(error), rel_tol=1e-3)
    # the gradient (lambda not detached) points toward lambda*, from both sides
    for start, sign in ((0.5 * error ** -0.5, -1), (2.0 * error ** -0.5, 1)):
        lam = torch.tensor([start], requires_grad=True)
        ugfl_loss(offset, lam, target).backward()
        assert sign * float(lam.grad) > 0


def test_gradient_descent_on_lambda_reaches_lambda_star():
    error = 0.1
    raw = torch.zeros(1, requires_grad=True)  # lambda = softplus(raw) + 1e-3, as the model's head
    opt = torch.optim.Adam([raw], lr=0.05)
    offset, target = torch.tensor([[0.04, 0.06]]), torch.zeros(1, 2)
    for _ in range(600):
        lam = torch.nn.functional.softplus(raw) + MIN_PRECISION
        loss = ugfl_loss(offset, lam, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isclose(float(lam.detach()), error ** -0.5, rel_tol=0.01)


def test_regression_loss_is_five_times_mse_and_fine_loss_dispatches():
    offset, target = torch.tensor([[0.1, -0.2], [0.0, 0.3]]), torch.zeros(2, 2)
    expected = 5 * (0.01 + 0.04 + 0.0 + 0.09) / 4
    assert math.isclose(float(regression_loss(offset, target)), expected, rel_tol=1e-6)
    assert float(fine_loss(offset, None, target)) == float(regression_loss(offset, target))
    lam = torch.tensor([2.0, 4.0])
    expected = ((2 * 0.3 + 0.5) + (4 * 0.3 + 0.25)) / 2
    assert math.isclose(float(fine_loss(offset, lam, target)), expected, rel_tol=1e-6)


@pytest.mark.parametrize("precision_head", [True, False])
def test_loss_decreases_on_a_fixed_batch(precision_head):
    m = model(seed=1, precision_head=precision_head)
    text, cells = random_text([6] * 8, seed=4), random_cells([3, 5, 7, 9, 4, 6, 8, 2], seed=4)
    target = torch.rand(8, 2, generator=torch.Generator().manual_seed(4)) * 0.6 - 0.3
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        out = m(text, cells)
        loss = fine_loss(out.offset, out.precision, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


# --- checkpoints ------------------------------------------------------------------------------


def test_state_round_trips_through_a_checkpoint(tmp_path):
    m = model(seed=2)
    _ = m(random_text([6, 6]), random_cells([4, 6]))  # move BatchNorm running statistics
    m.eval()
    stem = tmp_path / "fine"
    save_checkpoint(m, stem, {"kind": "fine", "architecture": m.cfg.to_dict()})
    loaded, config = load_checkpoint(lambda c: FineModel(FineConfig.from_dict(c["architecture"])),
                                     stem)
    assert config["kind"] == "fine" and loaded.cfg == m.cfg
    text, cells = random_text([6, 3]), random_cells([5, 2])
    with torch.no_grad():
        a, b = m(text, cells), loaded(text, cells)
    assert torch.equal(a.offset, b.offset) and torch.equal(a.precision, b.precision)
    with pytest.raises(SpatialocError, match="unexpected keys: precision_mlp"):
        load_checkpoint(model(precision_head=False), stem)
