"""One weights folder: PointNet++, coarse and fine stages, text encoder and calibration, checked
together.

A folder such as ``models/`` holds ``pointnet``, ``coarse`` and ``fine``
(``.safetensors`` + ``.json`` each, :mod:`~spatialoc_ros.networks.checkpoint`)
and optionally ``calibration.json``. :meth:`WeightsBundle.load` names every
missing file before any slow work, loads each part once and checks once that
they belong together: the coarse and fine stages were trained on the features
of this PointNet++ (digest of its bytes) and with the same text encoder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import SpatialocError
from .covariance import Calibration
from .frozen_inputs import load_pointnet

CALIBRATION_FILE = "calibration.json"
STAGES = ("coarse", "pointnet", "fine")  # the order missing files are reported in
_TRAIN_HINT = {"pointnet": "spatialoc train pointnet", "coarse": "spatialoc train coarse",
               "fine": "spatialoc train fine"}


def check_files(folder, stages: Sequence[str] = STAGES) -> None:
    """One clear error for the first stage whose weights file is missing in ``folder``."""
    for name in stages:
        path = Path(folder) / f"{name}.safetensors"
        if not path.exists():
            raise SpatialocError(f"{Path(folder) / name}.safetensors: no {name} weights in "
                                 f"{folder} (train them with `{_TRAIN_HINT[name]}`)")


def load_calibration(weights) -> Calibration:
    """``weights/calibration.json`` if present (written by ``spatialoc eval
    --fit-calibration``)."""
    path = Path(weights) / CALIBRATION_FILE
    if not path.exists():
        return Calibration()
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise SpatialocError(f"{path}: not a calibration file ({exc})") from None


def load_coarse_model(weights, device="cpu"):
    """(CoarseModel in eval mode, its config) of ``weights/coarse``."""
    from ..networks.checkpoint import load_checkpoint
    from ..networks.coarse import CoarseConfig, CoarseModel

    stem = Path(weights) / "coarse"
    check_files(weights, ("coarse",))
    model, config = load_checkpoint(
        lambda cfg: CoarseModel(CoarseConfig.from_dict(cfg["architecture"])), stem)
    return model.to(device).eval(), config


def load_fine_model(weights, coarse_config: dict, device="cpu"):
    """The fine model of ``weights/fine``, checked against the coarse stage it will follow."""
    from ..networks.checkpoint import load_checkpoint
    from ..networks.ugfl import FineConfig, FineModel

    stem = Path(weights) / "fine"
    check_files(weights, ("fine",))
    model, config = load_checkpoint(
        lambda cfg: FineModel(FineConfig.from_dict(cfg["architecture"])), stem)
    if config.get("text_encoder") != coarse_config.get("text_encoder"):
        raise SpatialocError(f"{stem}.json: the fine stage was trained with text encoder "
                             f"{config.get('text_encoder')!r}, the coarse stage with "
                             f"{coarse_config.get('text_encoder')!r}")
    digest = config.get("pointnet", {}).get("digest")
    if digest and digest != coarse_config.get("pointnet", {}).get("digest"):
        raise SpatialocError(f"{stem}.json: the fine stage was trained on other PointNet++ "
                             f"features (digest {digest}) than the coarse stage")
    return model.to(device).eval(), config


@dataclass
class WeightsBundle:
    """Every model of one weights folder, loaded once and checked to belong together."""

    folder: Path
    device: torch.device
    pointnet: torch.nn.Module  # frozen, eval mode
    pointnet_info: dict  # weights path, digest of its bytes, metrics
    coarse: torch.nn.Module  # CoarseModel, eval mode
    coarse_config: dict
    # FineModel, eval mode; None when loaded without the fine stage
    fine: Optional[torch.nn.Module]
    fine_config: Optional[dict]
    calibration: Calibration
    _text_encoder: object = field(default=None, repr=False)

    @classmethod
    def load(cls, folder, device="cpu", fine: bool = True) -> "WeightsBundle":
        """Load ``folder``'s models onto ``device``; ``fine=False`` for retrieval-only folders."""
        folder = Path(folder)
        check_files(folder, STAGES if fine else STAGES[:2])
        device = torch.device(device)
        coarse, coarse_config = load_coarse_model(folder, device)
        pointnet, info = load_pointnet(str(folder / "pointnet"))
        trained_with = coarse_config.get("pointnet", {}).get("digest")
        if trained_with and trained_with != info["digest"]:
            raise SpatialocError(f"{folder}/pointnet.safetensors is not the PointNet++ the coarse "
                                 f"model was trained with (digest {info['digest']}, expected "
                                 f"{trained_with})")
        fine_model, fine_config = (load_fine_model(folder, coarse_config, device) if fine
                                   else (None, None))
        return cls(folder, device, pointnet, info, coarse, coarse_config, fine_model, fine_config,
                   load_calibration(folder))

    @property
    def coarse_weights(self) -> Path:
        return self.folder / "coarse.safetensors"

    @property
    def score_terms(self):
        return list(self.coarse_config["score_terms"])

    @property
    def max_objects(self) -> int:
        return int(self.coarse.cfg.max_objects)

    @property
    def seed(self) -> int:
        """The sampling seed the coarse stage was trained with (its cell banks use it too)."""
        return int(self.coarse_config.get("training", {}).get("seed", 0))

    @property
    def text_encoder_spec(self) -> str:
        return self.coarse_config["text_encoder"]

    def text_encoder(self):
        """The frozen text encoder both stages were trained with (loaded on first use)."""
        if self._text_encoder is None:
            from ..networks.text_encoder import FrozenTextEncoder

            self._text_encoder = FrozenTextEncoder(self.text_encoder_spec)
        return self._text_encoder
