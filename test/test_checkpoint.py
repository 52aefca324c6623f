"""Checkpoints: safetensors + JSON round trips and one-line errors for files that do not fit."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spatialoc_ros.errors import SpatialocError
from spatialoc_ros.networks.checkpoint import load_checkpoint, load_config, paths, save_checkpoint
from spatialoc_ros.networks.pointnet import PointNet2


def small_model(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, 2))


def saved(tmp_path, model=None):
    model = model or small_model()
    save_checkpoint(model, tmp_path / "m", {"architecture": {"width": 4}, "metrics": {"acc": 0.5}})
    return tmp_path / "m"


def one_line_error(call) -> str:
    with pytest.raises(SpatialocError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_pointnet_round_trip_gives_equal_outputs(tmp_path):
    torch.manual_seed(0)
    model = PointNet2()
    xyz, rgb = torch.rand(2, 256, 3), torch.rand(2, 256, 3)
    with torch.no_grad():
        model.train()(xyz, rgb)  # move the BatchNorm running statistics
        expected = model.eval()(xyz, rgb)
    tensors, config_path = save_checkpoint(model, tmp_path / "pointnet",
                                           {"architecture": model.config(), "classes": ["a"]})
    assert tensors.name == "pointnet.safetensors" and config_path.name == "pointnet.json"
    loaded, config = load_checkpoint(lambda cfg: PointNet2(**cfg["architecture"]),
                                     tmp_path / "pointnet")
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(xyz, rgb), expected, rtol=0, atol=0)
    assert config["classes"] == ["a"] and config["architecture"] == model.config()
    assert config["date"] and "git_commit" in config
    assert json.loads(config_path.read_text()) == config
    assert tensors.stat().st_size < 8e6


def test_loading_into_a_given_module_and_by_either_file_name(tmp_path):
    stem = saved(tmp_path)
    for name in (stem, f"{stem}.safetensors", f"{stem}.json"):
        model, config = load_checkpoint(small_model(), name)
        assert config["metrics"] == {"acc": 0.5}
    assert load_config(stem)["architecture"] == {"width": 4}
    assert paths(f"{stem}.json") == paths(stem)


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
    message = one_line_error(lambda: load_checkpoint(small_model(width=5), saved(tmp_path)))
    assert "'0.weight'" in message and "[4, 3]" in message and "[5, 3]" in message
    assert "m.safetensors" in message
    pointnet = tmp_path / "p"
    save_checkpoint(PointNet2(), pointnet, {"architecture": PointNet2().config()})
    message = one_line_error(lambda: load_checkpoint(PointNet2(num_classes=5), pointnet))
    assert "tensor 'head.weight' has shape [21, 256], expected [5, 256]" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    stem = saved(tmp_path)
    tensors = load_file(paths(stem)[0])
    del tensors["3.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, paths(stem)[0])
    message = one_line_error(lambda: load_checkpoint(small_model(), stem))
    assert "missing keys: 3.bias" in message and "unexpected keys: extra.weight" in message


def test_broken_files_are_named(tmp_path):
    stem = saved(tmp_path)
    paths(stem)[0].write_bytes(b"not safetensors")
    assert "m.safetensors" in one_line_error(lambda: load_checkpoint(small_model(), stem))
    paths(stem)[1].write_text("{broken")
    assert "m.json" in one_line_error(lambda: load_checkpoint(small_model(), stem))
    assert "file not found" in one_line_error(
        lambda: load_checkpoint(small_model(), tmp_path / "nothing"))


def test_non_finite_weights_are_refused(tmp_path):
    model = small_model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    message = one_line_error(lambda: load_checkpoint(small_model(), saved(tmp_path, model)))
    assert "'0.weight'" in message and "NaN" in message


def test_factory_errors_are_one_line(tmp_path):
    message = one_line_error(
        lambda: load_checkpoint(lambda cfg: PointNet2(**cfg["nope"]), saved(tmp_path)))
    assert "m.json" in message and "nope" in message


def test_float16_storage_keeps_buffers_and_loads_into_float32(tmp_path):
    model = small_model(width=64)
    with torch.no_grad():
        model[1].running_var.fill_(1e6)  # beyond float16's range: buffers must stay float32
        model[1].running_mean.normal_()
    save_checkpoint(model, tmp_path / "half", {"architecture": {}}, dtype=torch.float16)
    save_checkpoint(model, tmp_path / "full", {"architecture": {}})
    stored = load_file(str(tmp_path / "half.safetensors"))
    assert (stored["0.weight"].dtype == torch.float16
            and stored["1.running_var"].dtype == torch.float32)
    assert load_config(tmp_path / "half")["stored_dtype"] == "float16"
    half_size = (tmp_path / "half.safetensors").stat().st_size
    assert half_size < 0.7 * (tmp_path / "full.safetensors").stat().st_size
    loaded, _ = load_checkpoint(small_model(width=64), tmp_path / "half")
    assert loaded[0].weight.dtype == torch.float32
    torch.testing.assert_close(loaded[0].weight, model[0].weight, rtol=1e-3, atol=1e-4)
    assert torch.equal(loaded[1].running_var, model[1].running_var)
