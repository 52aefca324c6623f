"""Tests of the global descriptors: FAE (cells) and GlobalTextEncoder (text)."""
import math

import pytest
import torch
import torch.nn.functional as F

from spatialoc_ros.networks.fae import FAE, high_index_filter
from spatialoc_ros.networks.global_text import GlobalTextEncoder

D = 256


def prefix_mask(lengths, n):
    """[B, n] bool with the first lengths[b] entries of row b True."""
    return torch.arange(n)[None] < torch.tensor(lengths)[:, None]


def cosine(d, f):
    """cos(2 pi f t / d), t = 0..d-1: a real signal with DFT bins f and d - f only."""
    return torch.cos(2 * math.pi * f * torch.arange(d, dtype=torch.float64) / d)


# ---------------------------------------------------------------- FAE


@pytest.mark.parametrize("ablate", [False, True])
def test_fae_shapes_unit_norm_and_every_parameter_trained(ablate):
    torch.manual_seed(0)
    fae = FAE(D, ablate=ablate).train()
    x = F.normalize(torch.randn(3, 28, D), dim=-1)
    mask = prefix_mask([28, 5, 1], 28)
    out = fae(x, mask)
    assert out.shape == (3, D)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert fae.encode(x, mask).shape == (3, 28, D)
    out.sum().backward()
    unused = [n for n, p in fae.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused


def test_fae_parameter_inventory():
    """Appendix B: 3 x Linear(256), MHA(256, 2), MHA(256, 4), BiGRU(256), TEL(512, 4, 256)."""
    mha = 4 * D * D + 4 * D
    tel512 = (4 * 512 * 512 + 4 * 512) + (512 * 256 + 256 + 256 * 512 + 512) + 4 * 512
    gru = 2 * 3 * (2 * D * D + 2 * D)
    assert sum(p.numel() for p in FAE(D).parameters()) == 3 * (D * D + D) + 2 * mha + gru + tel512
    tel256 = mha + (D * 512 + 512 + 512 * D + D) + 4 * D
    assert sum(p.numel() for p in FAE(D, ablate=True).parameters()) == 2 * tel256
    assert FAE(D).tel.activation is F.gelu
    assert FAE(D).attn.num_heads == 2 and FAE(D).reattn.num_heads == 4


@pytest.mark.parametrize("ablate", [False, True])
def test_fae_padding_never_changes_a_cell(ablate):
    """A cell alone and unpadded gives the descriptor it gets padded with garbage in a batch."""
    torch.manual_seed(1)
    fae = FAE(D, ablate=ablate).eval()
    lengths = [5, 28, 1, 13]
    x = F.normalize(torch.randn(4, 28, D), dim=-1)
    mask = prefix_mask(lengths, 28)
    batch = x.clone()
    batch[~mask] = torch.randn(int((~mask).sum()), D) * 1e3
    with torch.no_grad():
        together = fae(batch, mask)
        for i, n in enumerate(lengths):
            alone = fae(x[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)


def test_fae_rejects_masks_it_cannot_honour():
    fae = FAE(16).eval()
    x = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="first"):
        fae(x, torch.tensor([[True, False, True, False], [True, True, True, True]]))
    with pytest.raises(ValueError, match="at least one"):
        fae(x, prefix_mask([0, 4], 4))


def test_high_index_mask_keeps_half_a_low_band():
    """Bins >= floor(0.7 * 256) = 179 are frequencies -77..-1.

    So Re(IFFT) is 1/2 x the band |f| in 1..77; DC and 78..128 are dropped (the mask
    1[m >= 0.7T] of arXiv 2601.03579 §3.3, Eq. (12); see spatialoc_ros/networks/fae.py).
    """
    for f in (1, 10, 77):
        torch.testing.assert_close(high_index_filter(cosine(D, f)), 0.5 * cosine(D, f))
    for f in (0, 78, 100, 128):
        torch.testing.assert_close(high_index_filter(cosine(D, f)),
                                   torch.zeros(D, dtype=torch.float64))


def test_fae_branches_follow_the_code():
    """Projections zeroed (u_k = x): nu1 = |FFT x| + x, nu2 = Re + Im + x, nu3 as above."""
    fae = FAE(D).double()
    with torch.no_grad():
        for proj in fae.proj:
            proj.weight.zero_()
            proj.bias.zero_()
    low, high = cosine(D, 10), cosine(D, 100)
    x = torch.stack([low, high, torch.randn(D, dtype=torch.float64)]).view(1, 3, D)
    nu1, nu2, nu3 = fae.branches(x)
    z = torch.fft.fft(x, dim=-1)
    torch.testing.assert_close(nu1, z.abs() + x)
    torch.testing.assert_close(nu2, z.real + z.imag + x)
    torch.testing.assert_close(nu3[0, 0], 1.5 * low)      # kept at half amplitude, plus x
    torch.testing.assert_close(nu3[0, 1], high)           # a true high frequency: dropped


# ---------------------------------------------------------------- global text


def test_global_text_shapes_unit_norm_and_mamba_config():
    torch.manual_seed(2)
    enc = GlobalTextEncoder(D).train()
    h = torch.randn(3, 6, D)
    out = enc(h, prefix_mask([6, 2, 1], 6))
    assert out.shape == (3, D)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    # Mamba2(256): d_state 128, expand 4, headdim 64 -> in_proj 2320 x 256, 16 heads
    # (see spatialoc_ros/networks/mamba.py)
    assert tuple(enc.mamba.in_proj.weight.shape) == (2320, D)
    assert enc.mamba.nheads == 16
    assert enc.tel.linear1.out_features == 4 * D and enc.tel.self_attn.num_heads == 4
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_global_text_single_residual():
    """Q_glo = L2(max TEL(Mamba2(H))): no second residual around the TEL.

    See spatialoc_ros/networks/global_text.py.
    """
    torch.manual_seed(3)
    enc = GlobalTextEncoder(32).eval()
    h = torch.randn(2, 6, 32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        expected = F.normalize(enc.tel(enc.mamba(h, mask)).amax(1), dim=-1)
        torch.testing.assert_close(enc(h, mask), expected)


def test_global_text_padding_never_changes_a_query():
    """1..12 hints: a query alone equals the same query padded with garbage in a batch."""
    torch.manual_seed(4)
    enc = GlobalTextEncoder(D).eval()
    lengths = [3, 12, 1, 6, 9]
    h = torch.randn(5, 12, D)
    mask = prefix_mask(lengths, 12)
    batch = h.clone()
    batch[~mask] = torch.randn(int((~mask).sum()), D) * 1e3
    with torch.no_grad():
        together = enc(batch, mask)
        for i, n in enumerate(lengths):
            alone = enc(h[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)
