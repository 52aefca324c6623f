"""Tests of the plain-PyTorch Mamba-2 mixer (spatialoc_ros.networks.mamba)."""
import math

import pytest
import torch
import torch.nn.functional as F

from spatialoc_ros.networks.mamba import Mamba2, make_mamba2

SMALL = dict(d_state=8, headdim=4, expand=2)  # d_model 16 -> d_inner 32, 8 heads


def expected_mamba_ssm_state_dict(d_model, d_state=128, d_conv=4, expand=4, headdim=64,
                                  ngroups=1):
    """Key -> shape of mamba_ssm's Mamba2 state_dict, from its size formulas."""
    d_inner = expand * d_model
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    return {
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def randomise(module, seed=0):
    """Move parameters away from their initial values so every term matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            if name == "dt_bias":
                param.copy_(noise * 0.7 - 0.5)  # dt around 0.2 .. 1.2
            elif name == "A_log":
                param.copy_(torch.rand(param.shape, generator=gen) * 1.5 - 1.0)  # A in -(0.4..1.6)
            elif name in ("D", "norm.weight", "conv1d.bias"):
                param.add_(noise * 0.3)


def reference_forward(m, u):
    """The Mamba-2 recurrence evaluated one step and one head at a time."""
    b, length, _ = u.shape
    d_inner, G, N, H, P = m.d_inner, m.ngroups, m.d_state, m.nheads, m.headdim
    k = m.conv1d.weight.shape[-1]
    proj = u @ m.in_proj.weight.T
    z, xbc_in, dt_raw = proj[..., :d_inner], proj[..., d_inner:-H], proj[..., -H:]
    w = m.conv1d.weight[:, 0, :]                                  # [channels, k]
    A = -torch.exp(m.A_log)
    D = m.D.view(H, P) if m.D_has_hdim else m.D.unsqueeze(-1).expand(H, P)
    state = torch.zeros(b, H, P, N, dtype=u.dtype)
    outputs = []
    for t in range(length):
        acc = m.conv1d.bias.expand(b, -1).clone()
        for j in range(k):  # tap j multiplies the input k-1-j steps back
            s = t - (k - 1) + j
            if s >= 0:
                acc = acc + w[:, j] * xbc_in[:, s]
        xbc = F.silu(acc)
        x = xbc[:, :d_inner].reshape(b, H, P)
        Bt = xbc[:, d_inner:d_inner + G * N].reshape(b, G, N)
        Ct = xbc[:, d_inner + G * N:].reshape(b, G, N)
        dt = F.softplus(dt_raw[:, t] + m.dt_bias)                  # [b, H]
        y = torch.zeros(b, H, P, dtype=u.dtype)
        new_state = torch.zeros_like(state)
        for h in range(H):
            g = h // (H // G)
            decay = torch.exp(dt[:, h] * A[h])[:, None, None]
            new_state[:, h] = (decay * state[:, h]
                               + dt[:, h, None, None] * x[:, h, :, None] * Bt[:, g, None, :])
            y[:, h] = (new_state[:, h] * Ct[:, g, None, :]).sum(-1) + D[h] * x[:, h]
        state = new_state
        y = y.reshape(b, d_inner)
        zt = z[:, t]
        if m.rmsnorm:
            if not m.norm_before_gate:
                y = y * F.silu(zt)
            grp = y.reshape(b, G, d_inner // G)
            y = (grp / torch.sqrt(grp.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(b, d_inner)
            y = y * m.norm.weight
            if m.norm_before_gate:
                y = y * F.silu(zt)
        else:
            y = y * F.silu(zt)
        outputs.append(y @ m.out_proj.weight.T)
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("d_model, rows, channels, heads", [(256, 2320, 1280, 16),
                                                            (128, 1288, 768, 8)])
def test_state_dict_matches_mamba_ssm_names_and_shapes(d_model, rows, channels, heads):
    m = Mamba2(d_model)
    expected = expected_mamba_ssm_state_dict(d_model)
    assert expected["in_proj.weight"] == (rows, d_model)
    assert expected["conv1d.bias"] == (channels,)
    assert expected["A_log"] == (heads,)
    got = {key: tuple(value.shape) for key, value in m.state_dict().items()}
    assert list(got) == list(expected)  # same keys, in mamba_ssm's registration order
    assert got == expected
    assert m.in_proj.bias is None and m.out_proj.bias is None
    # A state_dict of this layout loads strictly.
    Mamba2(d_model).load_state_dict(m.state_dict(), strict=True)


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba2(256)
    dt = F.softplus(m.dt_bias)
    assert torch.all(dt >= 0.001 * (1 - 1e-5)) and torch.all(dt <= 0.1 * (1 + 1e-5))
    A = torch.exp(m.A_log)
    assert torch.all(A >= 1 - 1e-5) and torch.all(A <= 16 + 1e-4)
    assert torch.equal(m.D, torch.ones(16)) and torch.equal(m.norm.weight, torch.ones(1024))
    assert all(p._no_weight_decay for p in (m.dt_bias, m.A_log, m.D))
    assert m.conv1d.groups == 1280 and m.conv1d.padding == (3,)


@pytest.mark.parametrize("kwargs, length", [
    ({}, 9),
    ({"ngroups": 2}, 9),
    ({"chunk_size": 4}, 11),            # several chunks, the last one padded
    ({"chunk_size": 4, "ngroups": 4}, 8),
    ({"norm_before_gate": True}, 7),
    ({"rmsnorm": False}, 7),
    ({"D_has_hdim": True, "d_conv": 3}, 6),
])
def test_scan_matches_step_by_step_reference(kwargs, length):
    torch.manual_seed(1)
    m = Mamba2(16, **{**SMALL, **kwargs})
    randomise(m)
    u = torch.randn(3, length, 16)
    with torch.no_grad():
        out, ref = m(u), reference_forward(m, u)
    assert out.shape == (3, length, 16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_float64_matches_reference_tightly():
    torch.manual_seed(2)
    m = Mamba2(16, chunk_size=3, **SMALL).double()
    randomise(m)
    u = torch.randn(2, 10, 16, dtype=torch.float64)
    with torch.no_grad():
        out = m(u)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, reference_forward(m, u), atol=1e-10, rtol=1e-10)


def test_causal():
    torch.manual_seed(3)
    m = Mamba2(16, **SMALL)
    randomise(m)
    u = torch.randn(2, 12, 16)
    changed = u.clone()
    changed[:, 5] += torch.randn(2, 16) * 3
    with torch.no_grad():
        a, b = m(u), m(changed)
    assert torch.equal(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().amax(-1).min() > 1e-4  # later outputs do change


def test_end_padding_does_not_affect_valid_positions():
    torch.manual_seed(4)
    m = Mamba2(32, d_state=16, headdim=8)
    randomise(m)
    full, short = torch.randn(10, 32), torch.randn(6, 32)
    batch = torch.stack([full, torch.cat([short, 100 * torch.randn(4, 32)])])
    mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    with torch.no_grad():
        out = m(batch, mask)
        alone_full, alone_short = m(full[None])[0], m(short[None])[0]
    torch.testing.assert_close(out[0], alone_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :6], alone_short, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1, 6:], torch.zeros(4, 32))


def test_start_padding_is_exact_too():
    """A reversed end-padded sequence (as in a backward pass over a set) pads at the start."""
    torch.manual_seed(5)
    m = Mamba2(32, d_state=16, headdim=8)
    randomise(m)
    short = torch.randn(5, 32)
    padded = torch.cat([50 * torch.randn(3, 32), short])[None]
    mask = torch.tensor([[False] * 3 + [True] * 5])
    with torch.no_grad():
        out = m(padded, mask)[0]
        alone = m(short[None])[0]
    torch.testing.assert_close(out[3:], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:3], torch.zeros(3, 32))


def test_all_true_mask_equals_no_mask():
    torch.manual_seed(6)
    m = Mamba2(16, **SMALL)
    u = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert torch.equal(m(u, torch.ones(2, 7, dtype=torch.bool)), m(u))


def test_gradients_reach_every_parameter():
    torch.manual_seed(7)
    m = Mamba2(32, d_state=16, headdim=8, chunk_size=4)
    u = torch.randn(3, 9, 32, requires_grad=True)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    m(u, mask).square().sum().backward()
    for name, param in m.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert torch.equal(u.grad[1, 6:], torch.zeros(3, 32))  # padded inputs get no gradient


def test_A_stays_negative():
    torch.manual_seed(8)
    m = Mamba2(16, **SMALL)
    with torch.no_grad():
        m.A_log[:2] = torch.tensor([-30.0, 8.0])  # A about -1e-13 and -3000
    opt = torch.optim.Adam(m.parameters(), lr=0.5)  # moves each A_log by up to 0.5 a step
    u = torch.randn(2, 6, 16)
    for _ in range(5):
        opt.zero_grad()
        m(u).sum().backward()
        opt.step()
        assert torch.all(m.A < 0)
    assert torch.isfinite(m(u)).all()


def test_make_mamba2_falls_back_to_plain_pytorch():
    m = make_mamba2(128, prefer_fused=not torch.cuda.is_available())
    if isinstance(m, Mamba2):
        assert m.expand == 4 and m.nheads == 8
    m = make_mamba2(128, prefer_fused=False)
    assert isinstance(m, Mamba2) and m.expand == 4


def test_matches_fused_mamba_ssm():
    pytest.importorskip("mamba_ssm")
    if not torch.cuda.is_available():
        pytest.skip("the fused mamba_ssm kernels need CUDA")
    torch.manual_seed(9)
    fused = make_mamba2(128, prefer_fused=True)
    assert not isinstance(fused, Mamba2)
    torch.manual_seed(9)
    ours = Mamba2(128)
    for key, value in ours.state_dict().items():  # same initialisation, draw for draw
        torch.testing.assert_close(value, fused.state_dict()[key], atol=0, rtol=0)
    randomise(ours)
    fused, ours = fused.cuda(), ours.cuda()
    fused.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(4, 16, 128, device="cuda")
    mask = torch.ones(4, 16, dtype=torch.bool, device="cuda")
    mask[2, 9:] = False
    with torch.no_grad():
        a, b = fused(u, mask), ours(u, mask)
    scale = b.abs().amax()
    assert math.isfinite(scale.item())
    torch.testing.assert_close(a, b, atol=2e-3 * scale.item(), rtol=2e-3)
