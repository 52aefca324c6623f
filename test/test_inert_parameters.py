"""Parameters that could never learn were removed, and checkpoints that still hold them load and
answer as before.

Each removed parameter is zero-gradient in exact arithmetic: a Linear bias before a training-mode
BatchNorm (the batch mean cancels it), the key bias of an attention (q . b shifts every logit of a
query's softmax by one constant), and the shift of the hint encoder's last LayerNorm (it passes
through the max over tokens into proj's BatchNorm). An older file's values move into the
BatchNorm running means, which gives the same eval-mode outputs in exact arithmetic.
"""
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spatialoc_ros.networks.checkpoint import load_checkpoint, save_checkpoint
from spatialoc_ros.networks.hint_encoder import HintEncoder
from spatialoc_ros.networks.object_encoder import ObjectEncoder
from spatialoc_ros.networks.pointnet import PointNet2, fold_batchnorm

D = 16


def randomise(module, seed=0):
    """Away from the initial values, running statistics included, so every term matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("running_var"):  # a variance stays positive
                t.mul_(torch.exp(0.3 * torch.randn(t.shape, generator=gen)))
            elif name.endswith("running_mean") or t in set(module.parameters()):
                t.add_(0.3 * torch.randn(t.shape, generator=gen))
    return module


def old_style(module, state):
    """The module as it was: a bias on every Linear before a BatchNorm, the attention key bias
    and the learnable LayerNorm shift, with the values of ``state``."""
    for name, sub in list(module.named_modules()):
        if isinstance(sub, nn.Sequential):
            for i in range(len(sub) - 1):
                if isinstance(sub[i], nn.Linear) and isinstance(sub[i + 1], nn.BatchNorm1d):
                    sub[i].bias = nn.Parameter(state[f"{name}.{i}.bias"].clone())
        if name.endswith("relation"):
            sub.k.bias = nn.Parameter(state[f"{name}.k.bias"].clone())
        if name == "intra.norm2" or name.endswith(".intra.norm2"):
            del sub.bias
            sub.bias = nn.Parameter(state[f"{name}.bias"].clone())
    return module


def with_inert_values(state, module, seed=1):
    """``state`` plus random values for every removed parameter, as an older file holds them."""
    gen = torch.Generator().manual_seed(seed)
    old = dict(state)
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Sequential):
            for i in range(len(sub) - 1):
                if isinstance(sub[i], nn.Linear) and isinstance(sub[i + 1], nn.BatchNorm1d):
                    old[f"{name}.{i}.bias"] = torch.randn(sub[i].out_features, generator=gen)
        if name.endswith("relation"):
            old[f"{name}.k.bias"] = torch.randn(sub.k.out_features, generator=gen)
        if name == "intra.norm2":
            old[f"{name}.bias"] = torch.randn(sub.weight.shape, generator=gen)
    return old


def assert_old_file_answers_the_same(tmp_path, make, inputs, run=lambda m, x: m(*x)):
    torch.manual_seed(0)
    new = randomise(make()).eval()
    save_checkpoint(new, tmp_path / "m", {"architecture": {}})
    old_state = with_inert_values(load_file(str(tmp_path / "m.safetensors")), new)
    save_file(old_state, str(tmp_path / "m.safetensors"))  # what an older checkpoint holds
    loaded, _ = load_checkpoint(make(), tmp_path / "m")
    old = old_style(make(), old_state)
    old.load_state_dict(old_state)
    with torch.no_grad():
        want, got = run(old.eval(), inputs), run(loaded, inputs)
    # equal in exact arithmetic; float32 rounding of the moved means is all that differs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(run(new, inputs), want, atol=1e-3)  # the inert values mattered


def test_object_encoder(tmp_path):
    gen = torch.Generator().manual_seed(2)
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
    inputs = (torch.randn(2, 7, 8, generator=gen), torch.rand(2, 7, 3, generator=gen),
              torch.rand(2, 7, 3, generator=gen), torch.randint(1, 900, (2, 7), generator=gen),
              mask)
    assert_old_file_answers_the_same(tmp_path, lambda: ObjectEncoder(D, point_dim=8, hidden=8),
                                     inputs)


def test_hint_encoder(tmp_path):
    gen = torch.Generator().manual_seed(3)
    tokens, token_mask = torch.randn(3, 5, 8, generator=gen), torch.ones(3, 5, dtype=torch.bool)
    token_mask[1, 3:] = False
    inputs = (tokens, token_mask, torch.tensor([[0, 1], [2, 0]]), torch.tensor([[True, True],
                                                                                [True, False]]))
    assert_old_file_answers_the_same(tmp_path, lambda: HintEncoder(8, D, heads=2), inputs)


def test_pointnet_features(tmp_path):
    gen = torch.Generator().manual_seed(4)
    xyz, rgb = torch.rand(2, 64, 3, generator=gen), torch.rand(2, 64, 3, generator=gen)
    assert_old_file_answers_the_same(tmp_path, lambda: PointNet2(max_neighbours=4), (xyz, rgb),
                                     run=lambda m, x: m.features(*x))
    # the folded inference copy gives the same features without the biases
    net = randomise(PointNet2(max_neighbours=4)).eval()
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net).features(xyz, rgb), net.features(xyz, rgb),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, inputs", [
    (lambda: ObjectEncoder(D, point_dim=8, hidden=8),
     lambda g: (torch.randn(3, 6, 8, generator=g), torch.rand(3, 6, 3, generator=g),
                torch.rand(3, 6, 3, generator=g), torch.randint(1, 900, (3, 6), generator=g),
                torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 3 + [False] * 3]))),
    (lambda: HintEncoder(8, D, heads=2),
     lambda g: (torch.randn(4, 5, 8, generator=g), torch.ones(4, 5, dtype=torch.bool),
                torch.tensor([[0, 1, 2], [3, 1, 0]]), torch.ones(2, 3, dtype=torch.bool))),
], ids=["object_encoder", "hint_encoder"])
def test_every_parameter_gets_a_gradient(make, inputs):
    """In float64, where an exactly-zero gradient cannot hide behind rounding noise: the
    smallest parameter's gradient is far above float64 rounding of the largest."""
    torch.manual_seed(0)
    module = randomise(make()).double().train()
    for m in module.modules():  # dropout off: the same function on every run
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    gen = torch.Generator().manual_seed(5)
    args = [a.double() if a.is_floating_point() else a for a in inputs(gen)]
    out = module(*args)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(6),
                       dtype=out.dtype)).sum().backward()
    sizes = {n: float(p.grad.abs().max()) for n, p in module.named_parameters()}
    largest = max(sizes.values())
    dead = [n for n, s in sizes.items() if s <= 1e-9 * largest]
    assert not dead, dead
