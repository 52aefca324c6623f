"""Model checkpoints as ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (config). No pickles.

The JSON holds whatever the caller passes as ``config`` (by convention:
``architecture`` = constructor keyword arguments, ``classes``,
``training`` = data path, seed, hyper-parameters, and ``metrics``), plus
``date`` and ``git_commit``, which are filled in when absent.

Loading is strict: every tensor the model expects must be in the file with
the same shape, and nothing else may be. A mismatch raises one line of
:class:`~spatialoc_ros.errors.SpatialocError` naming the file, the first
tensor whose shape differs (expected vs found) and the missing and
unexpected keys. Before the check, modules may upgrade an older file's
entries (:func:`upgrade_state`), e.g. drop a parameter removed because it
could never learn.

Resuming a training run (model, optimizer, scheduler, history) is the
trainers' own ``<stage>_last.pt`` (``training/runtime.py``).
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_write, write_json
from ..errors import SpatialocError

PathLike = Union[str, os.PathLike]
FORMAT = "spatialoc-checkpoint-1"


def paths(path_stem: PathLike) -> Tuple[Path, Path]:
    """``stem`` -> (stem.safetensors, stem.json); a stem given with either suffix is accepted."""
    stem = Path(path_stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise SpatialocError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpatialocError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise SpatialocError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _write_tensors(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    # clone(): safetensors refuses tensors that share memory (tied weights, views).
    flat = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))


def _read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpatialocError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SpatialocError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _names(keys, limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _shape(t) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def check_state(expected: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor],
                where: str) -> None:
    """Raise one line if the tensor names or shapes of ``found`` differ from ``expected``."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected
             if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        parts.append(f"tensor {k!r} has shape {_shape(found[k])}, expected "
                     f"{_shape(expected[k])}{more}")
    if missing:
        parts.append(f"missing keys: {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_names(unexpected)}")
    raise SpatialocError(f"{where}: does not match the model: " + "; ".join(parts))


def upgrade_state(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rewrite an older checkpoint's entries for today's modules; returns ``state``.

    * A bias of a Linear that is followed by a BatchNorm1d in a Sequential (such
      biases were removed: BatchNorm cancels them in training) moves into the
      BatchNorm's running mean, which gives the same eval-mode outputs:
      BN(W x + b) with mean m equals BN(W x) with mean m - b.
    * Each submodule with an ``upgrade_state_dict(state, prefix)`` method rewrites
      its own entries (e.g. drops a parameter that was removed).
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                lin, bn = module[i], module[i + 1]
                bias, mean = f"{prefix}{i}.bias", f"{prefix}{i + 1}.running_mean"
                if (isinstance(lin, nn.Linear) and lin.bias is None
                        and isinstance(bn, nn.BatchNorm1d) and bias in state and mean in state):
                    old = state.pop(bias)
                    state[mean] = state[mean] - old.to(state[mean].dtype)
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            upgrade(state, prefix)
    return state


def save_checkpoint(model: nn.Module, path_stem: PathLike, config: Dict[str, Any],
                    dtype: Optional[torch.dtype] = None) -> Tuple[Path, Path]:
    """Write ``model.state_dict()`` and ``config`` (+ date, git commit); returns both paths.

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point *parameters* in that
    type, to halve a shipped file; buffers (normalisation statistics, whose range
    may exceed float16's) stay as they are. Loading casts back to the model's types.
    """
    tensor_path, json_path = paths(path_stem)
    meta = {"format": FORMAT,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git_commit": git_commit()}
    state = model.state_dict()
    if dtype is not None:
        params = {name for name, _ in model.named_parameters()}
        state = {k: v.to(dtype) if k in params and v.is_floating_point() else v
                 for k, v in state.items()}
        meta["stored_dtype"] = str(dtype).replace("torch.", "")
    _write_tensors(tensor_path, state)
    write_json(json_path, {**meta, **config})
    return tensor_path, json_path


def load_config(path_stem: PathLike) -> Dict[str, Any]:
    """The JSON config of a checkpoint."""
    return _read_json(paths(path_stem)[1])


Factory = Callable[[Dict[str, Any]], nn.Module]


def load_checkpoint(model_or_factory: Union[nn.Module, Factory], path_stem: PathLike,
                    map_location: Union[str, torch.device, None] = None
                    ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a checkpoint strictly -> (model, config).

    ``model_or_factory`` is a module to fill, or a callable that builds one
    from the checkpoint's config dict, e.g.
    ``lambda cfg: PointNet2(**cfg["architecture"])``. The model is returned
    in eval mode, moved to ``map_location`` when one is given.
    """
    tensor_path, json_path = paths(path_stem)
    config = _read_json(json_path)
    if isinstance(model_or_factory, nn.Module):
        model = model_or_factory
    else:
        try:
            model = model_or_factory(config)
        except (KeyError, TypeError, ValueError) as e:
            raise SpatialocError(f"{json_path}: cannot build the model from this config "
                                 f"({type(e).__name__}: {e})") from None
    state = upgrade_state(model, _read_tensors(tensor_path))
    check_state(model.state_dict(), state, str(tensor_path))
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise SpatialocError(f"{tensor_path}: tensor {k!r} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
    if map_location is not None:
        model.to(map_location)
    return model.eval(), config
