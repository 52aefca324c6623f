"""Object and hint encoders: shapes, normalisation, and padding that changes nothing."""
import torch

from spatialoc_ros.networks.hint_encoder import HintEncoder
from spatialoc_ros.networks.masking import masked_max
from spatialoc_ros.networks.object_encoder import ObjectEncoder


def _pad(t, n_slots, value):
    """Pad dim 1 of t to n_slots with ``value``."""
    extra = list(t.shape)
    extra[1] = n_slots - t.shape[1]
    return torch.cat([t, torch.full(extra, value, dtype=t.dtype)], dim=1)


def _cells(n_valid, n_slots, garbage=0.0, seed=0):
    """The same random cells, padded to ``n_slots`` with ``garbage``."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(n_valid), max(n_valid)
    feats = torch.randn(b, n, 32, generator=g)
    colors = torch.rand(b, n, 3, generator=g)
    centers = torch.rand(b, n, 3, generator=g)
    counts = torch.randint(30, 3000, (b, n), generator=g)
    feats, colors, centers = (_pad(t, n_slots, garbage) for t in (feats, colors, centers))
    counts = _pad(counts, n_slots, 7)
    mask = torch.arange(n_slots)[None, :] < torch.tensor(n_valid)[:, None]
    for t in (feats, colors, centers):
        t[~mask] = garbage
    counts[~mask] = 7
    return feats, colors, centers, counts, mask


def test_masked_max_ignores_padding():
    x = torch.tensor([[[1.0], [5.0], [100.0]]])
    assert masked_max(x, torch.tensor([[True, True, False]])).item() == 5.0
    assert masked_max(x, torch.tensor([[False, False, False]])).item() == 0.0


def test_object_encoder_padding_never_changes_a_result():
    torch.manual_seed(0)
    enc = ObjectEncoder(d=16, point_dim=32, hidden=8)
    enc.train()
    enc(*_cells([5, 3], 6))  # a training step's batch statistics, so eval differs from init
    enc.eval()
    with torch.no_grad():
        small = enc(*_cells([5, 3], 5))
        big = enc(*_cells([5, 3], 9, garbage=1e3))
    assert small.shape == (2, 5, 16)
    torch.testing.assert_close(big[:, :5], small, atol=1e-5, rtol=1e-5)
    assert torch.all(big[0, 5:] == 0) and torch.all(big[1, 3:] == 0)


def test_object_encoder_uses_every_stream():
    torch.manual_seed(0)
    enc = ObjectEncoder(d=16, point_dim=32, hidden=8).eval()
    feats, colors, centers, counts, mask = _cells([4], 4)
    with torch.no_grad():
        base = enc(feats, colors, centers, counts, mask)
        for i, changed in enumerate([
            (feats + 1, colors, centers, counts, mask),
            (feats, 1 - colors, centers, counts, mask),
            (feats, colors, centers + 0.5, counts, mask),
            (feats, colors, centers, counts * 3, mask),
        ]):
            assert not torch.allclose(enc(*changed), base), f"stream {i} has no effect"


def _tokens(lengths, width, dt=24, garbage=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = _pad(torch.randn(len(lengths), max(lengths), dt, generator=g), width, garbage)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    tokens[~mask] = garbage
    return tokens, mask


def test_hint_encoder_padding_never_changes_a_result():
    torch.manual_seed(0)
    enc = HintEncoder(token_dim=24, d=16)
    enc.eval()
    tok, tmask = _tokens([4, 6, 3], 6)
    tok_big, tmask_big = _tokens([4, 6, 3], 11, garbage=50.0)
    index = torch.tensor([[0, 1, 2], [2, 0, 0]])
    hmask = torch.tensor([[True, True, True], [True, True, False]])
    index_big = torch.tensor([[0, 1, 2, 0, 0], [2, 0, 1, 1, 2]])
    hmask_big = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    with torch.no_grad():
        h = enc(tok, tmask, index, hmask)
        h_big = enc(tok_big, tmask_big, index_big, hmask_big)
    assert h.shape == (2, 3, 16)
    torch.testing.assert_close(h_big[:, :3], h, atol=1e-5, rtol=1e-5)
    assert torch.all(h[1, 2] == 0) and torch.all(h_big[:, 3:] == 0)


def test_hint_encoder_is_order_aware_and_trains():
    torch.manual_seed(0)
    enc = HintEncoder(token_dim=24, d=16)
    tok, tmask = _tokens([4, 6, 3], 6)
    index = torch.tensor([[0, 1, 2], [2, 1, 0]])
    hmask = torch.ones(2, 3, dtype=torch.bool)
    out = enc(tok, tmask, index, hmask)
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    with torch.no_grad():
        a = enc(tok, tmask, index, hmask)
    assert not torch.allclose(a[0, 2], a[1, 2])  # the LSTM state depends on earlier hints
