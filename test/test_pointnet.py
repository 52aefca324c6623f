"""PointNet++ object encoder.

Sampling and grouping, shapes, invariances, object batches, training.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spatialoc_ros.data.constants import CLASS_NAMES
from spatialoc_ros.data.schema import Cell, Object3d
from spatialoc_ros.errors import SpatialocError
from spatialoc_ros.networks import pointnet as P
from spatialoc_ros.networks.checkpoint import load_config, paths
from spatialoc_ros.training import objects as training_objects
from spatialoc_ros.training import pointnet_trainer as T


def blob(rng, n=256, spread=0.1, offset=(0.5, 0.5, 0.5)):
    """One object-like point set: float32 xyz [n, 3] around ``offset``, rgb [n, 3]."""
    xyz = rng.normal(size=(n, 3)) * spread + np.array(offset)
    return (torch.tensor(xyz, dtype=torch.float32),
            torch.tensor(rng.random((n, 3)), dtype=torch.float32))


def batch(rng, b=2, n=256):
    pairs = [blob(rng, n, offset=rng.random(3)) for _ in range(b)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def reference_fps(pos, m):
    """Plain one-set FPS, starting at the point farthest from the centroid."""
    pos = pos.double()
    first = int(((pos - pos.mean(0)) ** 2).sum(1).argmax())
    picked, dist = [first], ((pos - pos[first]) ** 2).sum(1)
    for _ in range(m - 1):
        nxt = int(dist.argmax())
        picked.append(nxt)
        dist = torch.minimum(dist, ((pos - pos[nxt]) ** 2).sum(1))
    return picked


# --- farthest-point sampling and ball query -------------------------------------------------


def test_fps_picks_the_farthest_point_each_time():
    pos = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0]]])
    # centroid x = 3.25: 10 is farthest; then 0 (farthest from 10); then 2 (min distance 2 beats 1)
    assert P.farthest_point_sample(pos, 3).tolist() == [[3, 0, 2]]


def test_fps_matches_a_plain_implementation_for_every_set_of_a_batch():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(5, 64, 3, generator=g)
    idx = P.farthest_point_sample(pos, 20)
    assert idx.shape == (5, 20)
    for b in range(5):
        assert idx[b].tolist() == reference_fps(pos[b], 20)
        assert len(set(idx[b].tolist())) == 20  # distinct while distinct points remain


def test_ball_query_respects_radius_cap_and_pads_with_the_nearest():
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(2, 200, 3, generator=g)
    pos[0, :100] = 0.5 + 0.01 * torch.rand(100, 3, generator=g)  # dense cluster: > 64 in the ball
    centres = pos[:, :8]
    radius, k = 0.2, 64
    idx = P.ball_query(pos, centres, radius, k)
    assert idx.shape == (2, 8, k)
    d = (P.gather_points(pos, idx) - centres.unsqueeze(2)).norm(dim=-1)
    assert bool((d <= radius + 1e-6).all())
    for b in range(2):
        for i in range(8):
            all_d = (pos[b] - centres[b, i]).norm(dim=-1)
            inside = int((all_d <= radius).sum())
            row = idx[b, i].tolist()
            assert len(set(row)) == min(inside, k)
            assert row[0] == i  # the nearest neighbour is the centre itself
            if inside < k:  # empty slots repeat the first neighbour
                assert row[inside:] == [row[0]] * (k - inside)
            else:  # capped: the k closest are kept
                assert d[b, i].max() <= all_d.sort().values[k - 1] + 1e-6
    assert len(set(idx[0, 0].tolist())) == k  # the cluster is capped at 64


def test_ball_query_with_fewer_points_than_the_cap():
    pos = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [5, 0, 0]]])
    idx = P.ball_query(pos, pos[:, :1], 0.2, 64)
    assert idx.tolist() == [[[0, 1, 0]]]  # 3 slots (N < 64): two inside, one padded


def test_ball_query_from_picked_centres_keeps_the_same_neighbours_unordered():
    """The serving path (centre indices given, no sort) selects the same neighbour set per centre
    as the sorted one, and its empty slots repeat the centre itself."""
    g = torch.Generator().manual_seed(3)
    for n, k in ((200, 64), (64, 64), (40, 64)):  # more points than slots, as many, fewer
        pos = torch.rand(3, n, 3, generator=g)
        picks = P.farthest_point_sample(pos, n // 2)
        centres = P.gather_points(pos, picks)
        ordered = P.ball_query(pos, centres, 0.3, k)
        unordered = P.ball_query(pos, centres, 0.3, k, picks)
        assert unordered.shape == ordered.shape
        for b in range(3):
            for i in range(n // 2):
                assert set(unordered[b, i].tolist()) == set(ordered[b, i].tolist())
                # every slot is inside the ball; those left empty hold the centre itself
                row = unordered[b, i].tolist()
                inside = int(((pos[b] - centres[b, i]).square().sum(-1) <= 0.09).sum())
                slots = len(row)
                assert row.count(int(picks[b, i])) == 1 + max(0, slots - inside)


def test_squared_distances_equal_the_literal_formula():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 7, 3, generator=g), torch.randn(2, 11, 3, generator=g)
    literal = (a.unsqueeze(2) - b.unsqueeze(1)).square().sum(-1)
    # the same three squares summed in the same order: equal up to float32 rounding
    assert torch.allclose(P.squared_distances(a, b), literal, rtol=1e-6, atol=1e-6)


# --- the encoder -------------------------------------------------------------------------------


def test_encoder_shapes():
    model = P.PointNet2().eval()
    xyz, rgb = batch(np.random.default_rng(0), b=3)
    x, pos = model.sa1(rgb, xyz)
    assert x.shape == (3, 128, 64) and pos.shape == (3, 128, 3)
    x, pos = model.sa2(x, pos)
    assert x.shape == (3, 64, 128) and pos.shape == (3, 64, 3)
    x, pos = model.sa3(x, pos)
    assert x.shape == (3, 32, 256) and pos.shape == (3, 32, 3)
    with torch.no_grad():
        assert model.features(xyz, rgb).shape == (3, P.FEATURE_DIM)
        assert model(xyz, rgb).shape == (3, len(CLASS_NAMES))
    with pytest.raises(ValueError, match=r"\[B, P, 3\]"):
        model.features(xyz[0], rgb[0])


def naive_set_abstraction(sa, x, pos):
    """SA written literally: MLP on concatenated messages, then max over neighbours."""
    centres = P.gather_points(pos, P.farthest_point_sample(pos, pos.shape[1] // 2))
    idx = P.ball_query(pos, centres, sa.radius, sa.max_neighbours)
    msg = torch.cat([P.gather_points(x, idx), P.gather_points(pos, idx) - centres.unsqueeze(2)],
                    dim=-1)
    B, M, K, C = msg.shape
    return sa.mlp(msg.reshape(-1, C)).view(B, M, K, -1).amax(dim=2)


@pytest.mark.parametrize("training", [True, False])
def test_split_first_layer_equals_the_literal_message_mlp(training):
    torch.manual_seed(0)
    sa = P.SetAbstraction([3 + 3, 32, 64], 0.5, 0.2, 64).double().train(training)
    for m in sa.modules():  # non-trivial BatchNorm, negative scales included
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.data.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1)
    xyz, rgb = batch(np.random.default_rng(2), b=2)
    fast, _ = sa(rgb.double(), xyz.double())
    slow = naive_set_abstraction(sa, rgb.double(), xyz.double())
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


def test_output_does_not_depend_on_point_order_in_eval_mode():
    torch.manual_seed(0)
    model = P.PointNet2()
    model.train()
    xyz, rgb = batch(np.random.default_rng(3), b=4)
    with torch.no_grad():
        model(xyz, rgb)  # non-trivial BatchNorm running statistics
        model.eval()
        ref = model.features(xyz, rgb)
        perm = torch.randperm(xyz.shape[1])
        torch.testing.assert_close(model.features(xyz[:, perm], rgb[:, perm]), ref,
                                   rtol=1e-4, atol=1e-5)
        # repeated points, as sampling with replacement gives them: still order-free
        obj = Object3d(0, 7, "pole", np.random.default_rng(4).random((40, 3)) * 0.05,
                       np.random.default_rng(5).random((40, 3)).astype(np.float32))
        xyz2, rgb2 = training_objects.objects_to_batch([obj], rng=6)
        perm = torch.randperm(xyz2.shape[1])
        out = model.features(torch.cat([xyz2, xyz2[:, perm]]), torch.cat([rgb2, rgb2[:, perm]]))
        torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-5)


def test_use_color_false_ignores_colours():
    model = P.PointNet2(use_color=False).eval()
    xyz, rgb = batch(np.random.default_rng(7), b=2)
    with torch.no_grad():
        torch.testing.assert_close(model(xyz, rgb), model(xyz, torch.rand_like(rgb)))


# --- object samples and sets ------------------------------------------------------------------


def make_object(rng, n, label="lamp", instance=1):
    return Object3d(0, instance, label, rng.random((n, 3)), rng.random((n, 3)).astype(np.float32))


def test_sample_object_draws_exactly_256_of_its_points_and_is_seeded():
    obj = make_object(np.random.default_rng(0), 30)
    xyz, rgb = training_objects.sample_object(obj, rng=1)
    assert (xyz.shape == rgb.shape == (training_objects.NUM_POINTS, 3)
            and xyz.dtype == rgb.dtype == np.float32)
    rows = {tuple(r) for r in obj.xyz.astype(np.float32)}
    assert all(tuple(r) in rows for r in xyz)
    assert len({tuple(r) for r in xyz}) <= 30  # with replacement
    np.testing.assert_array_equal(xyz, training_objects.sample_object(obj, rng=1)[0])
    assert not np.array_equal(xyz, training_objects.sample_object(obj, rng=2)[0])
    # None = seed 0
    np.testing.assert_array_equal(training_objects.sample_object(obj)[0],
                                  training_objects.sample_object(obj, rng=0)[0])


def test_object_set_samples_points_of_the_right_object():
    rng = np.random.default_rng(0)
    objs = [make_object(rng, n, label=CLASS_NAMES[i], instance=i)
            for i, n in enumerate([5, 300, 17])]
    s = training_objects.ObjectSet.concat([training_objects.ObjectSet.from_objects(objs[:2]),
                                           training_objects.ObjectSet.from_objects(objs[2:])])
    assert len(s) == 3 and s.offsets.tolist() == [0, 5, 305, 322]
    xyz, rgb, labels = s.sample([2, 0, 1, 2], 64, rng=3)
    assert xyz.shape == (4, 64, 3) and labels.tolist() == [2, 0, 1, 2]
    for row, i in zip(range(4), [2, 0, 1, 2]):
        allowed = {tuple(r) for r in objs[i].xyz.astype(np.float32)}
        assert all(tuple(p) in allowed for p in xyz[row].numpy())
    assert s.class_counts()[:3].tolist() == [1, 1, 1]


def test_unique_objects_drop_repeats_of_one_object_across_cells():
    rng = np.random.default_rng(0)
    a, b = make_object(rng, 40, instance=1), make_object(rng, 50, instance=2)
    crop = make_object(rng, 30, label="road", instance=2)  # same instance, other point count
    cells = [Cell("0010_00000", "0010", np.zeros(6), 30.0, [a, b]),
             Cell("0010_00001", "0010", np.zeros(6), 30.0, [a, crop, Object3d.padding(rng)])]
    objs, keys = training_objects.unique_objects(cells, "0010")
    assert keys == [("0010", 1, 40), ("0010", 2, 50), ("0010", 2, 30)]
    assert objs == [a, b, crop]


def test_gather_objects_of_a_split(tiny_dataset):
    s = training_objects.gather_objects(tiny_dataset, "val")
    assert len(s) > 0 and len(set(s.keys)) == len(s)
    assert s.labels.min() >= 0 and s.labels.max() < len(CLASS_NAMES)
    assert s.xyz.dtype == np.float32 and s.offsets[-1] == len(s.xyz)
    with pytest.raises(SpatialocError, match="unknown split"):
        training_objects.gather_objects(tiny_dataset, "dev")


# --- training -------------------------------------------------------------------------------


def test_a_few_training_steps_reduce_the_loss(tiny_dataset):
    torch.manual_seed(0)
    objs = training_objects.gather_objects(tiny_dataset, "train")
    ids = np.random.default_rng(0).choice(len(objs), 6, replace=False)
    model = P.PointNet2().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(6):
        xyz, rgb, y = objs.sample(ids, rng=step)
        loss = F.cross_entropy(model(xyz, rgb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


RUN = dict(epochs=2, batch_size=4, lr=1e-3, seed=0, device="cpu", max_objects=8, progress=False,
           max_eval_objects=8)


def test_training_writes_the_best_checkpoint_with_metrics(tiny_dataset, tmp_path, capsys):
    paths(tmp_path / "pointnet_last")[1].write_text("{}")  # an earlier version's resume file
    metrics = T.train_pointnet(tiny_dataset, tmp_path, **{**RUN, "epochs": 1})
    assert "earlier resume format, not read; training starts afresh" in capsys.readouterr().out
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["val_accuracy"] <= 1
    assert set(metrics["val_per_class"]) == set(CLASS_NAMES)
    config = load_config(tmp_path / "pointnet")
    assert config["architecture"] == P.PointNet2().config()
    assert config["classes"] == CLASS_NAMES
    assert config["training"]["seed"] == 0
    assert config["training"]["data"].endswith(tiny_dataset.name)
    assert config["metrics"]["test"]["objects"] == 8 and config["date"]
    assert list(config["metrics"]["history"][0]) == [
        "epoch", "loss", "train_accuracy", "val_accuracy", "val_mean_class_accuracy", "objects",
        "train_s"]
    assert (tmp_path / "pointnet_last.pt").exists()
    json.dumps(config, allow_nan=False)


def saved_run(out):
    """What OUT/pointnet_last.pt holds: (run state, model weights)."""
    saved = torch.load(out / "pointnet_last.pt", weights_only=True)
    return json.loads(saved["state"]), saved["model"]


def untimed(history):
    return [{k: v for k, v in record.items() if k != "train_s"} for record in history]


# Two batches of two objects per epoch: the smallest run that has an epoch 2 to resume into.
SMALL_RUN = {**RUN, "batch_size": 2, "max_objects": 4, "max_eval_objects": 4}


def test_a_run_interrupted_after_epoch_1_resumes_to_the_uninterrupted_state(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    straight = T.train_pointnet(tiny_dataset, tmp_path / "a", **SMALL_RUN)

    evaluate, calls = T.evaluate, []

    def crash_on_second_validation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(T, "evaluate", crash_on_second_validation)
    with pytest.raises(KeyboardInterrupt):
        T.train_pointnet(tiny_dataset, tmp_path / "b", **SMALL_RUN)
    assert saved_run(tmp_path / "b")[0]["epoch"] == 1
    monkeypatch.setattr(T, "evaluate", evaluate)
    capsys.readouterr()
    resumed = T.train_pointnet(tiny_dataset, tmp_path / "b", **{**SMALL_RUN, "progress": True})
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert resumed == {**straight, "weights": resumed["weights"]}

    state_a, weights_a = saved_run(tmp_path / "a")
    state_b, weights_b = saved_run(tmp_path / "b")
    assert [h["epoch"] for h in state_b["history"]] == [1, 2] and state_b["epoch"] == 2
    assert untimed(state_b["history"]) == untimed(state_a["history"])
    assert (state_b["best"], state_b["best_epoch"]) == (state_a["best"], state_a["best_epoch"])
    assert state_b["training"] == state_a["training"]
    best_a, best_b = (load_config(tmp_path / d / "pointnet")["metrics"] for d in "ab")
    best_a["history"], best_b["history"] = untimed(best_a["history"]), untimed(best_b["history"])
    assert best_b == best_a
    # Exact: epoch 2 starts in both runs from the same float32 weights and Adam moments (saved
    # and loaded bit for bit), draws from the same generator ([seed, 0, epoch]) and runs the same
    # CPU operations in the same order in one process, so no rounding can differ.
    assert weights_b.keys() == weights_a.keys()
    for k in weights_a:
        torch.testing.assert_close(weights_b[k], weights_a[k], rtol=0, atol=0)

    with pytest.raises(SpatialocError, match="batch_size=2, not 8"):
        T.train_pointnet(tiny_dataset, tmp_path / "b", **{**SMALL_RUN, "batch_size": 8})
